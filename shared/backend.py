"""The backend contract, written once: what every `impl_*` package provides, with the same names.

`impl_numpy`, `impl_torch` and `impl_jax` each satisfy :class:`Backend` (a test checks every
installed one with `isinstance`, and the parity suite checks that they compute the same thing).
Arrays cross the boundary as numpy: token ids int (any integer dtype), parameters and logits in
the spec's dtype (float32 or float64). Canonical parameter names and layouts: shared.params.

Every entry point checks its input before any state changes (shared.checks; a batch too small
for BatchNorm: ModelSpec.check_train_batch), so a rejected input leaves the model bitwise
unchanged. Source: docs/design.md, "Backend interface".
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import TrainConfig
from .spec import ModelSpec

Model = Any   # the framework's own model object (numpy Sequential, nn.Sequential, nnx.Sequential)


class Optimizer(Protocol):
    """The framework's own optimizer built from a TrainConfig: hand-written in numpy,
    torch.optim in torch, optax inside an nnx.Optimizer in JAX.

    Attributes:
        t: steps taken (int); the learning-rate schedule's position.
        lr: learning rate of the next step (float).
    """
    t: int
    lr: float


@runtime_checkable
class Backend(Protocol):
    """The functions (and the Optimizer class) of one backend package.

    Errors every backend raises: ValueError for token ids outside [0, vocab_size), contexts not
    of shape (B, block_size), targets not of shape (B,), a train-mode batch too small for
    BatchNorm (fewer than 2 values per channel), sequence_* calls on a model without convolution
    or with ill-shaped sequences, targets or mask (shared.checks.check_sequences); shared.params.ParamError for parameters that do
    not fit the spec; shared.checks.Float64Unavailable for a float64 model the framework cannot
    give.
    """
    NAME: str

    def build_model(self, spec: ModelSpec) -> Model:
        """A model of `spec`'s layers (layer k is spec.layers[k]) in spec.dtype, train mode,
        placeholder weights (load canonical ones with load_params)."""

    def load_params(self, model: Model, params: dict[str, np.ndarray]) -> None:
        """Copy canonical parameters (shared.params names and shapes, spec dtype) into the model."""

    def export_params(self, model: Model) -> dict[str, np.ndarray]:
        """Canonical parameters (numpy copies), BatchNorm running stats included, in spec order."""

    def forward(self, model: Model, X: np.ndarray, train: bool = False) -> np.ndarray:
        """Logits (B, vocab_size) for X (B, block_size) int; train mode updates running stats."""

    def layer_outputs(self, model: Model, X: np.ndarray, train: bool = False) -> list[np.ndarray]:
        """Every layer's output for X, in order (the last is the logits)."""

    def cross_entropy(self, logits, Y):
        """Mean cross-entropy of logits (B, vocab_size) against int targets Y (B,), in the
        framework's own arrays (numpy also returns dloss/dlogits: it has no autograd)."""

    def loss_and_grads(self, model: Model, X: np.ndarray, Y: np.ndarray,
                       masks: list[np.ndarray] | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """Loss of a train-mode forward and the gradient of every trainable parameter, by
        canonical name, in the canonical layout. `masks`: None (no dropout), or one inverted-
        dropout mask per Tanh layer, of its output's shape (shared.stream.DropoutStream.masks;
        checked by shared.checks.check_masks), multiplying that Tanh's output."""

    def sequence_forward(self, model: Model, X: np.ndarray, train: bool = False,
                         mask: np.ndarray | None = None) -> np.ndarray:
        """Conv models only (issue 14): logits (B, L, vocab_size) at every position of whole
        sequences X (B, L + block_size - 1) (shared.stream.name_batch); train mode weighs each
        BatchNorm1d node by the windows of mask (B, L) bool that use it
        (shared.spec.window_counts) and updates the running stats."""

    def sequence_cross_entropy(self, logits, Y, mask):
        """Mean cross-entropy of logits (B, L, V) over the real targets (mask True) of Y (B, L),
        in the framework's own arrays (numpy also returns dloss/dlogits)."""

    def sequence_loss_and_grads(self, model: Model, X: np.ndarray, Y: np.ndarray,
                                mask: np.ndarray | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """Masked loss of a train-mode sequence_forward and the gradient of every trainable
        parameter by canonical name: equal to loss_and_grads of the hierarchical model on every
        window of the sequences."""

    def Optimizer(self, model: Model, cfg: TrainConfig) -> Optimizer:
        """The framework's optimizer over the model's trainable parameters, following cfg:
        SGD or AdamW (decay on shared.params.is_decayed parameters only), on lr_at's schedule.
        Its state_dict()/load_state_dict() hold {"t"} and, for AdamW, exp_avg.<name> and
        exp_avg_sq.<name> in the canonical layout."""

    def train_step(self, model: Model, opt: Optimizer, X: np.ndarray, Y: np.ndarray,
                   masks: list[np.ndarray] | None = None) -> float:
        """One optimisation step on X (B, block_size), Y (B,) with this step's dropout masks
        (as loss_and_grads); returns the minibatch loss."""

    def sequence_train_step(self, model: Model, opt: Optimizer, X: np.ndarray, Y: np.ndarray,
                            mask: np.ndarray | None = None) -> float:
        """One optimisation step of a conv model on whole sequences X (B, L + block_size - 1),
        Y (B, L), mask (B, L) bool (shared.stream.NameBatchStream); returns the masked mean loss."""

    def evaluate(self, model: Model, X: np.ndarray, Y: np.ndarray) -> float:
        """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss)."""

    def sample(self, model: Model, uniforms: np.ndarray) -> list[list[int]]:
        """len(uniforms) names drawn in eval mode with shared.stream.sample_tokens' inverse-CDF
        draws from `uniforms` (n, max_len) float64; token lists without the end token."""

    def fast_unsupported(self, spec: ModelSpec) -> str | None:
        """Why fast_train_steps cannot train `spec` (one line naming the option and the way out),
        or None when it can; asked before a run folder is written."""

    def fast_train_steps(self, model: Model, opt: Optimizer, Xs: np.ndarray, Ys: np.ndarray,
                         masks: list[np.ndarray] | None = None) -> np.ndarray:
        """k steps on the fastest honest path: Xs (k, B, block_size), Ys (k, B), masks None or
        one (k, *Tanh output shape) array per Tanh layer (shared.stream.DropoutStream.take);
        returns the k losses (k,) float64, equal to k train_step calls (bitwise or to float
        rounding)."""
