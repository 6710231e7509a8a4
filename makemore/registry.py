"""Backend registry: imports a backend only when asked, so numpy and torch work without JAX.

Every backend package (`impl_numpy`, `impl_torch`, `impl_jax`) provides the contract
shared.backend.Backend (docs/design.md, "Backend interface"): build_model, load_params,
export_params, forward, layer_outputs, cross_entropy, loss_and_grads (model.py), Optimizer,
train_step, evaluate, sample (train.py) and fast_train_steps (fast.py). This is the only module
that imports a backend.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

BACKENDS = {"numpy": "impl_numpy", "torch": "impl_torch", "jax": "impl_jax"}
# from a checkout (the project is not on PyPI); torch pinned to its CPU build (pyproject.toml)
EXTRAS = {"numpy": "pip install -e .", "torch": "pip install 'torch==2.13.0' -e '.[torch]'",
          "jax": "pip install -e '.[jax]'"}
REQUIRES = {"numpy": [], "torch": ["torch"], "jax": ["jax", "flax", "optax"]}


class BackendError(ValueError):
    """Unknown backend, or one whose framework is not installed."""


def get_backend(name: str) -> ModuleType:
    """Import and return the backend package `name` ('numpy', 'torch' or 'jax').

    Raises:
        BackendError: unknown name, or its framework is missing (says which extra to install).
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    for mod in REQUIRES[name]:
        if importlib.util.find_spec(mod) is None:
            raise BackendError(f"backend {name!r} needs {mod}, which is not installed; "
                               f"install it from the checkout with: {EXTRAS[name]}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as e:
        raise BackendError(f"backend {name!r} could not be imported ({e}); "
                           f"install it from the checkout with: {EXTRAS[name]}") from e


def available_backends() -> list[str]:
    """Names of the backends whose frameworks are installed and whose package exists."""
    out = []
    for name, pkg in BACKENDS.items():
        if importlib.util.find_spec(pkg) is None:
            continue
        if all(importlib.util.find_spec(m) is not None for m in REQUIRES[name]):
            out.append(name)
    return out
