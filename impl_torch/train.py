"""Training, evaluation and sampling the PyTorch way: torch.optim.SGD, model.train()/model.eval(),
torch.no_grad() for evaluation and sampling.

The plain path a learner reads; the fastest honest path is fast.py."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from shared.config import TrainConfig, lr_at
from shared.stream import sample_tokens
from shared.threads import step_threads

from .model import _targets, _tokens, cross_entropy


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


class Optimizer:
    """torch.optim.SGD over the model's parameters on the lecture's step schedule, with the step
    count t kept here (as numpy's Optimizer; optax keeps it in its state).

    The lr is written into the param group before each step (as nanoGPT does) from
    shared.config.lr_at, exactly "0.1, then 0.01": an LRScheduler would keep the step count in
    its own internals, which the fused path (fast.py) and a resume would have to reach into.

    Attributes:
        t: steps taken (int); the schedule's position.
        optimizer: the torch.optim.SGD.
    """

    def __init__(self, model, cfg: TrainConfig):
        self.cfg, self.t = cfg, 0
        # fused: one kernel for every parameter's update (64 us a step here, 88 us for the
        # default per-parameter loop; PyTorch docs, torch.optim "Algorithms")
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr_at(cfg, 0), fused=True)

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


def train_step(model, opt: Optimizer, X, Y) -> float:
    """One SGD step on a minibatch (X (B, block_size) int64, Y (B,) int64); returns the loss.
    Threads: threads_for (1 at batch <= 64 unless MAKEMORE_THREADS says otherwise).

    Raises ValueError (token ids, target shape, a batch too small for BatchNorm) before any
    state changes."""
    model.spec.check_train_batch(len(X))
    if not model.training:  # model.train() sets every module's flag: ~50 us a step, 3% of it
        model.train()
    X = _tokens(model, X)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    with threads_for(len(X)):
        loss = cross_entropy(model(X), Y)
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
