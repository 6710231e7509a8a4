"""The framework-free core the three backends stand on: data and vocab (data), model spec and
presets (spec), training config and schedules (config), canonical parameters (params),
checkpoints (checkpoint), batch and sampling streams (stream), input checks (checks), FLOP
counts (flops), thread policy (threads) and the backend contract (backend, a typing.Protocol).

It imports no framework, no backend (`impl_*`) and not the application (`makemore`); a test
enforces it (docs/design.md, "Layout").
"""
