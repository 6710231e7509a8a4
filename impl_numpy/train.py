"""Training, evaluation and sampling written out in numpy: hand-written SGD and AdamW on the
lecture's step schedule or warm-up + cosine (no optimizer library), train/eval mode flags,
chunked evaluation.

The plain path a learner reads; the fastest honest path is fast.py."""
from __future__ import annotations

import contextlib
import math

import numpy as np
from threadpoolctl import ThreadpoolController

from shared.stream import sample_tokens
from shared.threads import step_threads
from shared.checks import check_sequences, check_state
from shared.config import ADAM_BETAS, ADAM_EPS, TrainConfig, lr_at
from shared.params import is_decayed
from shared.spec import window_counts


from .model import _masks, _sequence_logits, _targets, _tokens, cross_entropy, sequence_cross_entropy

_EVAL_CHUNK = 8192  # rows per eval forward: the layers keep their activations, so bound the memory


# numpy needs BLAS threads said (threadpoolctl: the standard way to set them from Python); how
# many is decided in shared.threads for numpy and torch alike.
_BLAS = ThreadpoolController()


def _warm_up_blas() -> None:
    """Run one 512x512 float32 GEMM (about 270 MFLOP, about 10 ms); this module runs it once,
    when imported.

    Measured on the 2-core AMD EPYC this project is developed on: until a process has run one
    GEMM of about this size, numpy's OpenBLAS ran the step's small float32 products
    ((64, 256) @ (256, 128)) 3.5x slower (about 10 against 33 GFLOP/s on one thread), whatever
    the thread count, and stayed that slow through thousands of calls; float64 was not affected.
    One larger GEMM first makes every later one fast (a 256x256 one is not enough). The cause is
    inside the BLAS (no page faults are taken); the warm-up is cheap enough to do on any machine.
    It took the plain numpy step from 2.9 to 2.4 ms (wavenet, batch 32). torch's MKL showed a
    smaller effect in a bare loop of GEMMs (1.7x) but none on torch's training steps.
    """
    a = np.ones((512, 512), dtype=np.float32)
    a @ a


_warm_up_blas()  # at import: every numpy path (train, fast, evaluate, sample, forward) gets it


@contextlib.contextmanager
def threads_for(batch_size: int):
    """Run the block with shared.threads.step_threads(batch_size) BLAS threads (1 at batch <= 64
    unless MAKEMORE_THREADS says otherwise), or the BLAS's own setting when that is None.

    Raises ValueError for a malformed MAKEMORE_THREADS (shared.threads.step_threads)."""
    n = step_threads(batch_size)
    if n is None:
        yield
        return
    with _BLAS.limit(limits=n, user_api="blas"):
        yield


# torch.optim and optax own their updates; numpy writes SGD out by hand.
class Optimizer:
    """The training config's optimizer, hand-written (numpy has no optimizer library), on
    shared.config.lr_at's schedule. The step count t is kept here (as in torch's Optimizer;
    optax keeps it in its state).

    "sgd": `p -= lr * grad` (Part 5's `p.data += -lr * p.grad`). "adamw" (Loshchilov & Hutter
    2019, as torch.optim.AdamW computes it, in the same order, step t counted from 1):
        p *= 1 - lr * weight_decay                  (only where shared.params.is_decayed)
        m += (1 - b1) * (g - m)                     (torch's exp_avg.lerp_(g, 1 - b1))
        v = b2 * v + (1 - b2) * g * g
        p -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)
    b1, b2 = shared.config.ADAM_BETAS, eps = ADAM_EPS; m, v start at zero, in the params' dtype.

    Attributes:
        t: steps taken (int); the schedule's position.
        params: {canonical name: (layer, field)}: the gradient is read from layer.grads[field]
            after backward.
        exp_avg, exp_avg_sq: AdamW's m and v, {canonical name: array} ({} for SGD).
    """

    def __init__(self, model, cfg: TrainConfig):
        self.cfg, self.t = cfg, 0
        self.params = {f"{i}.{k}": (l, k) for i, l in zip(model.ids, model) for k in l.parameters()}
        adamw = cfg.optimizer == "adamw"
        self.exp_avg = {n: np.zeros_like(getattr(l, k)) for n, (l, k) in self.params.items()} if adamw else {}
        self.exp_avg_sq = {n: np.zeros_like(a) for n, a in self.exp_avg.items()}

    @property
    def lr(self) -> float:
        """The learning rate of the next step (shared.config.lr_at)."""
        return lr_at(self.cfg, self.t)

    def update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        """Apply this step's update to parameter `name` (its array p, in place) from its gradient
        g at learning rate lr; the step being taken is t + 1 (t advances once all are updated)."""
        if self.cfg.optimizer == "sgd":
            p -= lr * g   # in place: the layer keeps the same array object
            return
        (b1, b2), t = ADAM_BETAS, self.t + 1
        if self.cfg.weight_decay and is_decayed(name):
            p *= 1 - lr * self.cfg.weight_decay   # decoupled: the decay does not pass through m, v
        m, v = self.exp_avg[name], self.exp_avg_sq[name]
        m += (1 - b1) * (g - m)
        v *= b2
        v += (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + ADAM_EPS
        p -= (lr / (1 - b1 ** t)) * (m / denom)

    def step(self) -> None:
        """Apply every layer's gradient (from the last backward) and advance t."""
        lr = self.lr  # a Python float: numpy keeps the parameters' dtype (NEP 50)
        for name, (layer, k) in self.params.items():
            self.update(name, getattr(layer, k), layer.grads[k], lr)
        self.t += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state in canonical form (for a resumable checkpoint): "t" int64 (),
        and for AdamW the moments exp_avg.<name>, exp_avg_sq.<name> (copies, canonical layout
        and the params' dtype); plain SGD keeps no momenta."""
        return {"t": np.array(self.t, dtype=np.int64),
                **{f"exp_avg.{n}": a.copy() for n, a in self.exp_avg.items()},
                **{f"exp_avg_sq.{n}": a.copy() for n, a in self.exp_avg_sq.items()}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned. Raises ValueError (shared.checks.check_state)
        for entries that do not fit (missing, unexpected, of another shape)."""
        want = self.state_dict()
        state = check_state(state, list(want), shapes={k: v.shape for k, v in want.items() if k != "t"})
        for n in self.exp_avg:
            self.exp_avg[n][...] = state[f"exp_avg.{n}"]
            self.exp_avg_sq[n][...] = state[f"exp_avg_sq.{n}"]
        self.t = int(np.asarray(state["t"]).reshape(()))  # safetensors stores () as (1,)


def train_step(model, opt: Optimizer, X, Y, masks=None) -> float:
    """One optimizer step on a minibatch (X (B, block_size) int64, Y (B,) int64); returns the loss.

    `masks`: None, or this step's dropout masks (one per Tanh layer, each of its output's shape,
    shared.stream.DropoutStream.masks). Raises ValueError (token ids, target shape, a batch too
    small for BatchNorm, masks) before any state changes."""
    model.train()
    X = _tokens(model, X, train=True)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    masks = _masks(model, masks, len(X))
    with threads_for(len(X)):
        loss, dlogits = cross_entropy(model(X, masks), Y)
        model.backward(dlogits)
        opt.step()
    return loss


def sequence_train_step(model, opt: Optimizer, X, Y, mask=None) -> float:
    """One SGD step on whole sequences of a conv model (issue 14): X (B, L + block_size - 1),
    Y (B, L), mask (B, L) bool (shared.stream.NameBatchStream); returns the mean loss over the
    real targets. Raises ValueError (shared.checks.check_sequences) before any state changes."""
    X, Y, mask = check_sequences(model.spec, X, Y, mask, train=True)
    model.train()
    with threads_for(len(X)):   # rows: names, as the CLI reads --batch-size
        logits = _sequence_logits(model, X.astype(np.int64, copy=False), window_counts(model.spec, mask))
        loss, dlogits = sequence_cross_entropy(logits, Y.astype(np.int64, copy=False), mask)
        model.backward(dlogits.reshape(model.out.shape))
        opt.step()
    return loss


def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss), computed in
    chunks of _EVAL_CHUNK rows (rows are independent in eval mode) and summed in float64."""
    model.eval()
    X = _tokens(model, X)
    Y = _targets(model, Y, len(X))
    total = 0.0
    for i in range(0, len(X), _EVAL_CHUNK):
        loss, _ = cross_entropy(model(X[i:i + _EVAL_CHUNK]), Y[i:i + _EVAL_CHUNK])
        total += loss * len(Y[i:i + _EVAL_CHUNK])
    model.train()
    return total / len(X)


def sample(model, uniforms: np.ndarray) -> list[list[int]]:
    """Sample len(uniforms) names in eval mode with the shared inverse-CDF draws; token lists
    without the end token."""
    model.eval()
    with threads_for(len(uniforms)):
        out = sample_tokens(lambda ctx: model(ctx), len(uniforms), model.spec.block_size, uniforms)
    model.train()
    return out
