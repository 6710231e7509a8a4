"""The house rules of docs/design.md ("Layout"), read from the source with `ast`:

- import rules: `shared` imports no framework, no backend and not the application; an `impl_*`
  imports only `shared`, its own framework and itself; only makemore.registry imports a backend;
- parallel structure: the three backends have the same files, and in each parallel file the same
  public names (classes, functions, constants) in the same order.
"""
import ast
from pathlib import Path

import pytest

from helpers import ROOT

IMPLS = ["impl_numpy", "impl_torch", "impl_jax"]
PARALLEL_FILES = ["__init__.py", "layers.py", "model.py", "train.py", "fast.py", "diagnostics.py"]
FRAMEWORKS = {"impl_numpy": {"threadpoolctl"}, "impl_torch": {"torch"},
              "impl_jax": {"jax", "flax", "optax"}}
# what any package may import: the standard library and the base dependencies
BASE = {"numpy", "safetensors"}
APP_ONLY = {"matplotlib", "tqdm", "pygments"}   # plots, progress, the side-by-side page: the application's
LAYER_CLASSES = ["Embedding", "FlattenConsecutive", "Linear", "CausalConv1d", "BatchNorm1d", "Tanh", "Gate", "Dropout",
                 "Sequential"]


def imports(path: Path) -> set[str]:
    """Top-level package names imported anywhere in the file (absolute imports only)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def importlib_targets(path: Path) -> bool:
    """True if the file calls importlib.import_module (a backend could hide behind it)."""
    return "import_module" in path.read_text()


def public_names(path: Path) -> list[str]:
    """Public top-level classes, functions and assigned names, in file order."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.append(node.name)
        elif isinstance(node, ast.Assign):
            out += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append(node.target.id)
    return [n for n in out if not n.startswith("_")]


@pytest.mark.parametrize("path", sorted((ROOT / "shared").glob("*.py")), ids=lambda p: p.name)
def test_shared_imports_no_framework_backend_or_app(path):
    bad = imports(path) & ({"torch", "jax", "flax", "optax", "makemore", *IMPLS} | APP_ONLY)
    assert not bad, f"shared/{path.name} imports {sorted(bad)}: shared is the framework-free core"
    assert not importlib_targets(path), f"shared/{path.name} loads modules dynamically"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_backend_imports_only_shared_and_its_framework(impl):
    others = {"torch", "jax", "flax", "optax", "threadpoolctl"} - FRAMEWORKS[impl]
    for path in sorted((ROOT / impl).glob("*.py")):
        bad = imports(path) & (others | {"makemore", *IMPLS} - {impl} | APP_ONLY)
        assert not bad, f"{impl}/{path.name} imports {sorted(bad)}"


def test_only_the_registry_loads_a_backend():
    for path in sorted((ROOT / "makemore").glob("*.py")):
        bad = imports(path) & set(IMPLS)
        assert not bad, f"makemore/{path.name} imports {sorted(bad)}: load backends through makemore.registry"
    assert "import_module" in (ROOT / "makemore" / "registry.py").read_text()


@pytest.mark.parametrize("impl", IMPLS)
def test_the_backends_have_the_same_files(impl):
    files = sorted(p.name for p in (ROOT / impl).glob("*.py"))
    assert files == sorted(PARALLEL_FILES), f"{impl} has {files}, the parallel set is {sorted(PARALLEL_FILES)}"


@pytest.mark.parametrize("filename", PARALLEL_FILES)
def test_parallel_files_have_the_same_public_names_in_the_same_order(filename):
    names = {impl: public_names(ROOT / impl / filename) for impl in IMPLS}
    ref = names["impl_torch"]
    for impl, got in names.items():
        assert got == ref, (f"{impl}/{filename} defines {got}; impl_torch/{filename} defines {ref}: "
                            "one name per role, in the same order, in all three")


def test_layer_classes_are_the_lecture_names():
    for impl in IMPLS:
        assert public_names(ROOT / impl / "layers.py") == LAYER_CLASSES, impl


def test_design_notes_are_in_the_repository():
    design = ROOT / "docs" / "design.md"
    assert design.is_file()
    text = design.read_text()
    for heading in ("## Layout", "## The data", "## The model spec", "## Determinism contract",
                    "## Backend interface", "## CLI"):
        assert heading in text, heading
    for path in ROOT.glob("*/*.py"):
        if path.parts[-2] in ("shared", "makemore", *IMPLS):
            text = path.read_text().replace("docs/design.md", "")
            assert "DESIGN.md" not in text, f"{path} cites DESIGN.md: point to docs/design.md"
