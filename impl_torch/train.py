"""Training, evaluation and sampling the PyTorch way: torch.optim.SGD stepped by an LR scheduler,
model.train()/model.eval(), torch.no_grad() for evaluation and sampling."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shared.stream import sample_tokens
from shared.trainer import TrainConfig, lr_at

from .model import _tokens


def make_optimizer(model, cfg: TrainConfig):
    """(torch.optim.SGD, LambdaLR) with the lecture's step schedule (lr, then lr_final from
    cfg.decay_step). The base lr is 1.0 so the scheduled lr is exactly lr_at(step):
    0.1 * 0.1 is not 0.01 in floating point."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(cfg, step))
    return opt, sched


def train_step(model, opt, X, Y) -> float:
    """One SGD step on a minibatch (X (B, block_size) int64, Y (B,) int64); returns the loss."""
    optimizer, scheduler = opt
    model.train()
    logits = model(_tokens(model, X))
    loss = F.cross_entropy(logits, torch.from_numpy(Y))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


@torch.no_grad()
def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss)."""
    model.eval()
    loss = F.cross_entropy(model(_tokens(model, X)), torch.from_numpy(np.asarray(Y, dtype=np.int64)))
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
