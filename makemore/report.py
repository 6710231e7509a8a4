"""Plots and tables (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def chunk_size(steps: int) -> int:
    """Steps averaged per point: 1,000 as in the lecture, finer for short runs (>= 100 points)."""
    return max(1, min(1000, steps // 100))


def smoothed_log10(losses: np.ndarray, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The lecture's plot data: log10(loss) averaged over consecutive chunks of `chunk` steps.

    Returns (x, y): x the step at the chunk's end, y the mean log10 loss of the chunk. A trailing
    partial chunk is dropped (the lecture's `.view(-1, 1000).mean(1)`).
    """
    losses = np.asarray(losses, dtype=np.float64)
    chunk = chunk or chunk_size(len(losses))
    n = len(losses) // chunk
    y = np.log10(losses[:n * chunk]).reshape(n, chunk).mean(axis=1)
    x = (np.arange(n) + 1) * chunk
    return x, y


def plot_loss(curves: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Write a PNG of the smoothed log10 loss, one line per curve name."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        if len(losses) == 0:
            continue
        x, y = smoothed_log10(losses)
        ax.plot(x, y, label=f"{name}")
        ax.set_ylabel(f"log10 loss (mean of {chunk_size(len(losses))} steps)")
    ax.set_xlabel("step")
    ax.set_title(title)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; floats are printed with 6 significant digits."""
    def fmt(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
