"""`makemore diagnose`: the network-health statistics and plots of lecture Part 3, for any backend.

Source: Karpathy, "Building makemore Part 3: Activations & Gradients, BatchNorm"
(makemore_part3_bn.ipynb): viz #1 forward-pass activation statistics (1:26:51), viz #2 backward-pass
gradient statistics (1:30:54), viz #3 parameter gradient statistics and grad:data ratio (1:36:15),
viz #4 update:data ratio over time (1:39:55).

Each backend gathers the raw arrays its own way (`impl_X/diagnostics.py`: torch hooks, nnx
sow/perturb, numpy's stored forward/backward values); everything here is framework-free numpy and
matplotlib. Standard deviations are the unbiased ones (ddof=1), as torch's `Tensor.std()` used in
the lecture.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

from shared.params import param_shapes
from shared.spec import ACTIVATIONS
from .registry import get_backend
from shared.stream import BatchStream
from shared.config import TrainConfig, lr_at
from .trainer import train

SATURATION = 0.97   # |tanh| above this counts as saturated (lecture: t.abs() > 0.97)
BINS = 100          # histogram bins (torch.histogram's default in the lecture)
PNGS = {"activations": "activations.png", "activation_grads": "activation_grads.png",
        "weight_grads": "weight_grads.png", "update_data": "update_data.png"}
STYLES = {"numpy": "-", "torch": "--", "jax": ":"}   # one line style per backend in overlays


# ---------------------------------------------------------------- statistics (numpy only)

def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def tanh_stats(t) -> dict:
    """Mean, std (ddof=1) and saturation % (share of |t| > 0.97, in percent) of a Tanh output
    (any shape, any float dtype; mean and std in float64, the threshold in t's dtype).
    Lecture Part 3 at 1:26:51."""
    t = np.asarray(t)
    # compare in the array's own dtype, as torch does (float32(0.97) > 0.97 in float64)
    sat = float((np.abs(t) > np.asarray(SATURATION, dtype=t.dtype)).mean() * 100.0)
    t = _f64(t)
    return {"mean": float(t.mean()), "std": float(t.std(ddof=1)), "saturated_pct": sat}


def grad_stats(g) -> dict:
    """Mean and std (ddof=1) of the gradient of a Tanh output (float64). Lecture at 1:30:54."""
    g = _f64(g)
    return {"mean": float(g.mean()), "std": float(g.std(ddof=1))}


def weight_grad_stats(grad, param) -> dict:
    """Gradient statistics of a 2-D parameter: shape, grad mean, grad std and the grad:data ratio
    std(grad) / std(param) (both ddof=1, float64). Lecture at 1:36:15."""
    g, p = _f64(grad), _f64(param)
    return {"shape": list(np.shape(param)), "grad_mean": float(g.mean()), "grad_std": float(g.std(ddof=1)),
            "grad_data_ratio": float(g.std(ddof=1) / p.std(ddof=1))}


def update_data_ratio(before, after) -> float:
    """log10(std(update) / std(param)) for one optimizer step, update = before - after (what the
    optimizer really applied: lr * grad for SGD), param = after (as the lecture, which measures
    after `p.data += -lr * p.grad`). Differences are taken in float64. Lecture at 1:39:55."""
    b, a = _f64(before), _f64(after)
    return float(np.log10((b - a).std(ddof=1) / a.std(ddof=1)))


def density(x, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram as the lecture plots it (torch.histogram(t, density=True)): returns
    (bin centres, densities), each (bins,) float64; the densities integrate to 1."""
    hy, hx = np.histogram(_f64(x), bins=bins, density=True)
    return (hx[:-1] + hx[1:]) / 2, hy


def weight_names(spec) -> list[str]:
    """Canonical names of the 2-D parameters (embedding and Linear weights): the lecture's
    `p.ndim == 2` filter."""
    return [k for k, s in param_shapes(spec, buffers=False).items() if len(s) == 2]


def summarize(diag: dict, params: dict, spec) -> dict:
    """The statistics of one backend's `collect` result, by layer and parameter name.

    Arguments:
        diag: {"loss", "activations": {i: array}, "activation_grads": {i: array}, "grads": {name:
            array}} from impl_X.diagnostics.collect, i the canonical layer number
            (spec.layer_ids(): the position, except in a conv model).
        params: canonical parameters (for the grad:data ratio).
    Returns:
        {"loss": float, "tanh": {str(i): tanh_stats + "kind" (Tanh or gate)}, "tanh_grad": {str(i): grad_stats},
         "weights": {name: weight_grad_stats}} (JSON-ready).
    Raises:
        ValueError if the backend missed a Tanh layer or a gradient.
    """
    ids = spec.layer_ids()   # canonical layer numbers, as the parameters' (a conv model: wavenet's)
    kinds = {ids[i]: ACTIVATIONS[l.kind] for i, l in enumerate(spec.layers) if l.kind in ACTIVATIONS}
    tanh = list(kinds)   # the Tanh and gate layers, in order
    for key in ("activations", "activation_grads"):
        if sorted(diag[key]) != tanh:
            raise ValueError(f"diagnostics recorded {key} for layers {sorted(diag[key])}, the spec "
                             f"has Tanh/gate layers {tanh}: a hook did not fire")
    missing = [k for k in weight_names(spec) if k not in diag["grads"]]
    if missing:
        raise ValueError(f"diagnostics have no gradient for {missing}")
    return {"loss": float(diag["loss"]),
            "tanh": {str(i): {**tanh_stats(diag["activations"][i]), "kind": kinds[i]} for i in tanh},
            "tanh_grad": {str(i): grad_stats(diag["activation_grads"][i]) for i in tanh},
            "weights": {k: weight_grad_stats(diag["grads"][k], params[k]) for k in weight_names(spec)}}


# ---------------------------------------------------------------- one backend: train, then look

def diagnostics_module(backend: str):
    """The backend's diagnostics module (impl_X.diagnostics). Raises BackendError if the backend
    is unknown or not installed, ValueError if it has no diagnostics yet."""
    pkg = get_backend(backend)
    try:
        return importlib.import_module(f"{pkg.__name__}.diagnostics")
    except ModuleNotFoundError as e:
        if e.name == f"{pkg.__name__}.diagnostics":
            raise ValueError(f"backend {backend!r} has no diagnostics module ({e.name})") from e
        raise


def run_backend(backend: str, spec, cfg: TrainConfig, data, params: dict | None = None,
                progress: bool = False) -> dict:
    """Train `cfg.steps` steps with makemore.trainer.train, recording the update:data ratio of every
    2-D parameter after each step, then run the backend's `collect` once on the trained weights
    with the batch the run would use next (step cfg.steps of the shared batch stream).

    Returns:
        {"backend", "losses": (steps,) float64, "update_data": {name: (steps,) float64 log10},
         "diag": collect's dict, "params": canonical parameters after `collect`,
         "stats": summarize(...) plus "update_data" (per-step lists) and "loss_last"}.
    """
    B = get_backend(backend)
    D = diagnostics_module(backend)
    names = weight_names(spec)
    ud = {k: [] for k in names}
    state = {}

    def weights(model):
        p = B.export_params(model)
        return {k: p[k] for k in names}

    def on_start(model, opt):
        state["model"], state["prev"] = model, weights(model)

    def on_step(step, loss):
        now = weights(state["model"])
        for k in names:
            ud[k].append(update_data_ratio(state["prev"][k], now[k]))
        state["prev"] = now

    res = train(backend, spec, cfg, data, evaluate=False, n_samples=0, params=params,
                on_start=on_start, step_callback=on_step, progress=progress)
    Xtr, Ytr = data.train
    ix = BatchStream(cfg.seed, len(Xtr), cfg.batch_size).take(cfg.steps + 1)[-1]
    diag = D.collect(res.model, Xtr[ix], Ytr[ix])
    # Tanh layers by canonical number, as the weights are named: for wavenet-conv the hierarchical
    # model's (its Tanh at position 3 is wavenet's layer 4, after 2.weight and 3.gamma)
    ids = spec.layer_ids()
    for key in ("activations", "activation_grads"):
        diag[key] = {ids[i]: v for i, v in diag[key].items()}
    final = B.export_params(res.model)
    stats = summarize(diag, final, spec)
    ud = {k: np.asarray(v, dtype=np.float64) for k, v in ud.items()}
    stats["loss_last"] = float(res.losses[-1]) if len(res.losses) else None
    stats["update_data"] = {k: [float(x) for x in v] for k, v in ud.items()}
    return {"backend": backend, "losses": res.losses, "update_data": ud, "diag": diag,
            "params": final, "stats": stats}


# ---------------------------------------------------------------- plots (matplotlib, Agg)

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(backend: str, runs: dict) -> str:
    return STYLES.get(backend, "-") if len(runs) > 1 else "-"


def _legends(ax, labels: list[str], backends: list[str]) -> None:
    """Colour = layer/parameter, line style = backend (two legends when overlaying)."""
    from matplotlib.lines import Line2D
    first = ax.legend([Line2D([], [], color=f"C{j % 10}") for j in range(len(labels))], labels,
                      loc="upper right", fontsize=8)
    if len(backends) > 1:
        ax.add_artist(first)
        ax.legend([Line2D([], [], color="k", ls=STYLES.get(b, "-")) for b in backends], backends,
                  loc="upper left", fontsize=8, title="backend")


def _coincide_note(ax, curves: dict) -> None:
    """With several backends, say on the plot whether their lines coincide (and by how much they
    differ at most), since identical curves hide each other whatever the line style."""
    if len(curves) < 2:
        return
    ref = next(iter(curves.values()))
    worst = 0.0
    for other in curves.values():
        for a, b in zip(ref, other):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape == b.shape and a.size:
                worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300)))
    text = (f"{', '.join(curves)} coincide: their lines lie on top of each other "
            f"(largest relative difference {worst:.1e})" if worst < 1e-3 else
            f"{', '.join(curves)} differ (largest relative difference {worst:.1e})")
    ax.text(0.5, 0.97, text, transform=ax.transAxes, ha="center", va="top", fontsize=9,
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.7"))


def _hist_figure(runs: dict, key: str, path: Path, title: str, saturation: bool) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(20, 4))
    labels, curves = [], {}
    for b, run in runs.items():
        labels, curves[b] = [], []
        for j, (i, t) in enumerate(sorted(run["diag"][key].items())):
            x, y = density(t)
            ax.plot(x, y, color=f"C{j % 10}", ls=_style(b, runs))
            curves[b].append(y)
            s = run["stats"]["tanh" if saturation else "tanh_grad"][str(i)]
            extra = f", saturated {s['saturated_pct']:.2f}%" if saturation else ""
            kind = run["stats"]["tanh"][str(i)].get("kind", "Tanh")
            labels.append(f"layer {i} ({kind}): mean {s['mean']:+.2g}, std {s['std']:.2g}{extra}")
    if saturation:   # the lecture's saturation threshold, |t| > 0.97
        for v in (-SATURATION, SATURATION):
            ax.axvline(v, color="0.5", ls=":", lw=1)
        ax.text(SATURATION, ax.get_ylim()[1] * 0.5, f" |t| > {SATURATION}:\n saturated", fontsize=8,
                color="0.3", ha="left")
    _legends(ax, labels, list(runs))
    _coincide_note(ax, curves)
    ax.set_xlabel("Tanh output t" if saturation else "d loss / d t (t: Tanh output)")
    ax.set_ylabel("density")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_activations(runs: dict, path) -> Path:
    """Density histogram of every Tanh output, one colour per layer, one line style per backend."""
    return _hist_figure(runs, "activations", Path(path), "activation distribution (Tanh outputs)", True)


def plot_activation_grads(runs: dict, path) -> Path:
    """Density histogram of d loss / d Tanh output per layer."""
    return _hist_figure(runs, "activation_grads", Path(path),
                        "gradient distribution (d loss / d Tanh output)", False)


def plot_weight_grads(runs: dict, path) -> Path:
    """Density histogram of the gradient of every 2-D parameter, labelled with its grad:data ratio."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(20, 4))
    labels, curves = [], {}
    for b, run in runs.items():
        labels, curves[b] = [], []
        for j, (k, s) in enumerate(run["stats"]["weights"].items()):
            x, y = density(run["diag"]["grads"][k])
            ax.plot(x, y, color=f"C{j % 10}", ls=_style(b, runs))
            curves[b].append(y)
            labels.append(f"{k} {tuple(s['shape'])}: grad std {s['grad_std']:.2e}, "
                          f"grad:data {s['grad_data_ratio']:.2e}")
    _legends(ax, labels, list(runs))
    _coincide_note(ax, curves)
    ax.set_xlabel("gradient value (d loss / d weight)")
    ax.set_ylabel("density")
    ax.set_title("weights gradient distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def plot_update_data(runs: dict, path) -> Path:
    """log10(update:data) over the steps, one line per 2-D parameter, black reference at -3."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(20, 4))
    labels, steps, curves = [], 1, {}
    for b, run in runs.items():
        labels, curves[b] = list(run["update_data"]), []
        for j, (k, v) in enumerate(run["update_data"].items()):
            ax.plot(np.arange(len(v)), v, color=f"C{j % 10}", ls=_style(b, runs), lw=1)
            curves[b].append(v)
            steps = max(steps, len(v))
    ax.plot([0, steps], [-3, -3], "k", lw=1.5)  # the lecture's "about 1e-3" guide
    ax.text(steps, -3, "1e-3: the lecture's rule of thumb ", ha="right", va="bottom", fontsize=8)
    _legends(ax, labels, list(runs))
    _coincide_note(ax, curves)
    ax.set_xlabel("step")
    ax.set_ylabel("log10(std(update) / std(param))")
    ax.set_title("update:data ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------- table and CLI

def stats_table(stats: dict) -> str:
    """Markdown table, one row per (layer or parameter, statistic), one column per backend.
    `stats` is stats.json's "backends" mapping."""
    from .report import markdown_table
    backends = list(stats)
    first = stats[backends[0]]
    rows = [["loss (collect batch)", ""] + [stats[b]["loss"] for b in backends]]
    for i in first["tanh"]:
        kind = first["tanh"][i].get("kind", "Tanh")
        for s in ("mean", "std", "saturated_pct"):
            rows.append([f"layer {i} {kind} out", s] + [stats[b]["tanh"][i][s] for b in backends])
        for s in ("mean", "std"):
            rows.append([f"layer {i} {kind} grad", s] + [stats[b]["tanh_grad"][i][s] for b in backends])
    for k in first["weights"]:
        for s in ("grad_mean", "grad_std", "grad_data_ratio"):
            rows.append([f"{k} {tuple(first['weights'][k]['shape'])}", s]
                        + [stats[b]["weights"][k][s] for b in backends])
        rows.append([k, "log10 update:data (last step)"]
                    + [stats[b]["update_data"][k][-1] if stats[b]["update_data"][k] else float("nan")
                       for b in backends])
    return markdown_table(["layer / parameter", "statistic"] + backends, rows)


def diagnose(backends: list[str], spec, cfg: TrainConfig, data, out_dir, progress: bool = False) -> dict:
    """Run every backend (same weights, same batches), write the four PNGs, stats.json and
    stats.md into `out_dir`; returns {"runs": {backend: run}, "stats": stats.json dict,
    "paths": {name: Path}}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {b: run_backend(b, spec, cfg, data, progress=progress) for b in backends}
    stats = {"preset": spec.name, "dtype": spec.dtype, "bn_convention": spec.batchnorm.convention,
             "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
             "lr": [lr_at(cfg, 0), cfg.lr_final], "lr_decay_step": cfg.decay_step,
             "saturation_threshold": SATURATION, "std": "unbiased (ddof=1)",
             "update_data": "log10(std(param_before - param_after) / std(param_after)) per step",
             "backends": {b: r["stats"] for b, r in runs.items()}}
    paths = {k: out / v for k, v in PNGS.items()}
    plot_activations(runs, paths["activations"])
    plot_activation_grads(runs, paths["activation_grads"])
    plot_weight_grads(runs, paths["weight_grads"])
    plot_update_data(runs, paths["update_data"])
    paths["stats"] = out / "stats.json"
    tmp = paths["stats"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    tmp.replace(paths["stats"])
    paths["table"] = out / "stats.md"
    paths["table"].write_text(stats_table(stats["backends"]) + "\n")
    return {"runs": runs, "stats": stats, "paths": paths}
