"""Training, evaluation and sampling the PyTorch way: torch.optim.SGD or torch.optim.AdamW,
model.train()/model.eval(), torch.no_grad() for evaluation and sampling.

The plain path a learner reads; the fastest honest path is fast.py."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from shared.checks import check_sequences, check_state
from shared.config import ADAM_BETAS, ADAM_EPS, TrainConfig, lr_at
from shared.params import is_decayed
from shared.spec import window_counts
from shared.stream import sample_tokens
from shared.threads import step_threads


from .model import (_canonical, _from_torch, _masks, _sequence_logits, _targets, _to_torch, _tokens, cross_entropy,
                    sequence_cross_entropy)


@contextlib.contextmanager
def threads_for(batch_size: int):
    """Run the block with shared.threads.step_threads(batch_size) intra-op threads (1 at batch
    <= 64 unless MAKEMORE_THREADS says otherwise), or torch's own setting when that is None.

    Raises ValueError for a malformed MAKEMORE_THREADS (shared.threads.step_threads)."""
    n = step_threads(batch_size)
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# torch.optim.SGD does the update; the step count and lr live here, as in numpy (optax: in its state).
class Optimizer:
    """The training config's torch.optim optimizer over the model's parameters, with the step
    count t kept here (as numpy's Optimizer; optax keeps it in its state).

    "sgd": torch.optim.SGD. "adamw": torch.optim.AdamW (Loshchilov & Hutter 2019) with betas
    shared.config.ADAM_BETAS, eps ADAM_EPS, in two param groups: the weight matrices and the
    embedding (shared.params.is_decayed) with cfg.weight_decay, the biases and BatchNorm
    gamma/beta with none. Its update (torch docs, AdamW; single-tensor on CPU), step t from 1:
    p *= 1 - lr * wd; m.lerp_(g, 1 - b1); v = b2 * v + (1 - b2) * g * g;
    p -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps).

    The lr is written into the param groups before each step (as nanoGPT does) from
    shared.config.lr_at, exactly "0.1, then 0.01" or the warm-up + cosine: an LRScheduler would
    keep the step count in its own internals, which the fused path (fast.py) and a resume
    would have to reach into (torch.optim.Optimizer's docs allow changing group["lr"] between
    steps: it is read at every step).

    Attributes:
        t: steps taken (int); the schedule's position.
        optimizer: the torch.optim.SGD or torch.optim.AdamW.
        params: {canonical name: (parameter, layer kind)} of the trainable parameters (the kind
            says how torch lays it out: model._to_torch / model._from_torch).
    """

    def __init__(self, model, cfg: TrainConfig):
        self.cfg, self.t = cfg, 0
        self.params = {name: v for name, v in _canonical(model).items() if v[0].requires_grad}
        if cfg.optimizer == "sgd":
            # fused: one kernel for every parameter's update (64 us a step here, 88 us for the
            # default per-parameter loop; PyTorch docs, torch.optim "Algorithms")
            self.optimizer = torch.optim.SGD(model.parameters(), lr=lr_at(cfg, 0), fused=True)
        else:
            decay = [p for name, (p, _) in self.params.items() if is_decayed(name)]
            rest = [p for name, (p, _) in self.params.items() if not is_decayed(name)]
            self.optimizer = torch.optim.AdamW(
                [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                lr=lr_at(cfg, 0), betas=ADAM_BETAS, eps=ADAM_EPS)

    @property
    def lr(self) -> float:
        """The learning rate of the next step (shared.config.lr_at)."""
        return lr_at(self.cfg, self.t)

    def step(self) -> None:
        """Apply the gradients in the parameters' .grad at the scheduled lr and advance t."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.step()
        self.t += 1

    def _moments(self) -> dict[str, dict[str, torch.Tensor]]:
        """AdamW's {"exp_avg"/"exp_avg_sq": {canonical name: the state tensor}} in torch's
        layout, created (zeros, step t) where torch.optim has none yet (before the first step:
        it creates its state lazily); {} for SGD."""
        if self.cfg.optimizer == "sgd":
            return {}
        for p, _ in self.params.values():
            st = self.optimizer.state[p]
            if not st:   # as AdamW's own lazy init (torch.optim.adam.Adam._init_group)
                st.update(step=torch.tensor(float(self.t), dtype=torch.float32),
                          exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                          exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        return {s: {name: self.optimizer.state[p][s] for name, (p, _) in self.params.items()}
                for s in ("exp_avg", "exp_avg_sq")}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state in canonical form (for a resumable checkpoint): "t" int64 (),
        and for AdamW the moments exp_avg.<name>, exp_avg_sq.<name> (numpy copies in the
        canonical layout: Linear and conv weights laid out back from torch's); plain SGD keeps
        no momenta."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for s, tensors in self._moments().items():
            for name, v in tensors.items():
                out[f"{s}.{name}"] = _from_torch(v, self.params[name][1]).detach().numpy().copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (into torch.optim's own state: AdamW's step,
        exp_avg, exp_avg_sq per parameter). Raises ValueError (shared.checks.check_state) for
        entries that do not fit (missing, unexpected, of another shape)."""
        want = self.state_dict()
        state = check_state(state, list(want), shapes={k: v.shape for k, v in want.items() if k != "t"})
        self.t = int(np.asarray(state["t"]).reshape(()))  # safetensors stores () as (1,)
        with torch.no_grad():
            for s, tensors in self._moments().items():
                for name, v in tensors.items():
                    a = _to_torch(state[f"{s}.{name}"], self.params[name][1], tuple(v.shape))
                    v.copy_(torch.from_numpy(np.ascontiguousarray(a)))
            for p, _ in self.params.values():
                if "step" in self.optimizer.state[p]:
                    self.optimizer.state[p]["step"].fill_(float(self.t))


def train_step(model, opt: Optimizer, X, Y, masks=None) -> float:
    """One optimizer step on a minibatch (X (B, block_size) int64, Y (B,) int64); returns the loss.

    `masks`: None, or this step's dropout masks (one per Tanh layer, each of its output's shape,
    shared.stream.DropoutStream.masks). Raises ValueError (token ids, target shape, a batch too
    small for BatchNorm, masks) before any state changes. Threads: threads_for (1 at batch <= 64
    unless MAKEMORE_THREADS says otherwise)."""
    if not model.training:  # model.train() sets every module's flag: ~50 us a step, 3% of it
        model.train()
    X = _tokens(model, X, train=True)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    masks = _masks(model, masks, len(X))
    with threads_for(len(X)):   # one thread at batch <= 64 (shared.threads), as numpy's step
        loss = cross_entropy(model(X, masks), Y)
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def sequence_train_step(model, opt: Optimizer, X, Y, mask=None) -> float:
    """One SGD step on whole sequences of a conv model (issue 14): X (B, L + block_size - 1),
    Y (B, L), mask (B, L) bool (shared.stream.NameBatchStream); returns the mean loss over the
    real targets. Raises ValueError (shared.checks.check_sequences) before any state changes."""
    X, Y, mask = check_sequences(model.spec, X, Y, mask, train=True)
    model.train()
    logits = _sequence_logits(model, torch.from_numpy(X.astype(np.int64, copy=False)),
                              window_counts(model.spec, mask))
    loss = sequence_cross_entropy(logits, torch.from_numpy(Y.astype(np.int64, copy=False)),
                                  torch.from_numpy(mask))
    opt.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss)."""
    model.eval()
    X = _tokens(model, X)
    loss = cross_entropy(model(X), _targets(model, Y, len(X)))
    model.train()
    return loss.item()


@torch.no_grad()
def sample(model, uniforms: np.ndarray) -> list[list[int]]:
    """Sample len(uniforms) names in eval mode with the shared inverse-CDF draws; token lists
    without the end token."""
    model.eval()
    out = sample_tokens(lambda ctx: model(torch.from_numpy(ctx)).numpy(), len(uniforms),
                        model.spec.block_size, uniforms)
    model.train()
    return out
