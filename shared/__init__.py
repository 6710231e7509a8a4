"""Framework-free core of makemore-ports: data and vocab, model spec, canonical parameters and
checkpoints, batch stream, backend registry, training driver, CLI, reports and plots.

Nothing in this package imports torch, jax or flax; the backends (`impl_numpy`, `impl_torch`,
`impl_jax`) are imported only on request through :func:`shared.registry.get_backend`.
"""
