"""`makemore sidebyside`: the three backends on one page, one row per concept, in aligned columns.

What it reads: the source text of the parallel files of the backends,
`impl_numpy/`, `impl_torch/` and `impl_jax/` `{layers,model,train,fast,diagnostics}.py` (and any
other parallel file but `__init__.py`, after those), parsed with :mod:`ast`. Nothing is imported:
only makemore.registry loads a backend (tests/test_layout.py), and the page must be made on a
machine without torch or JAX.

What it finds: every top-level class, function and assignment (`Embedding = nn.Embedding`) of each
file, its source (ast.get_source_segment) with its decorators, the comment lines directly above it
and a comment trailing its last line. A *concept* is a name that is public in some backend or
defined in all three; it gets a row, and a backend that lacks it shows "missing" in its cell. A
private name only some backends define (a helper, such as JAX's jitted `_forward`) is shown in the
cell of the next concept of its file, the one it serves; the module docstring, comment blocks that
stand alone and top-level statements (`_warm_up_blas()`) make the file's first row. Each block
carries its *note*: the comment lines directly above it (or above the run of one-line assignments
it belongs to, e.g. `Tanh = nn.Tanh` / `Sequential = nn.Sequential`), else its first full-line
comment inside: in this project that is where the code says what the frameworks do differently.

What it writes: one self-contained static HTML page (inline CSS, Pygments' highlighting as
embedded CSS classes, no script, nothing fetched at view time): a table of contents, then per
file and concept the lecture's time stamps (:data:`LECTURE`) and three columns, numpy | PyTorch |
JAX/Flax, side by side from 1000 px wide and stacked below. Each cell links to its file and line
(relative to the page, `../impl_torch/layers.py#L17`, and printed as `impl_torch/layers.py:17`).
The page is deterministic (no time stamps; file, source and table order only): docs/sidebyside.html
is a committed copy that tests/test_sidebyside.py compares with what the current source makes.

Errors: :class:`SideBySideError` (a ValueError) for a file that cannot be read or parsed, or a root
without any backend; OSError from writing the page.
"""
from __future__ import annotations

import ast
import errno
import html
import io
import os
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "runs/sidebyside.html"
# (package, column title, short label), in column order
BACKENDS = (("impl_numpy", "numpy", "numpy"), ("impl_torch", "PyTorch", "torch"),
            ("impl_jax", "JAX / Flax nnx / Optax", "jax"))
# the parallel files in reading order (README "How to read it"); others follow, sorted
FILES = ("layers.py", "model.py", "train.py", "fast.py", "diagnostics.py")
FILE_TITLES = {
    "layers.py": "the layers of Part 5",
    "model.py": "the model: build, parameters in and out, forward, loss and gradients",
    "train.py": "the plain path: optimizer, training step, evaluation, sampling",
    "fast.py": "the fastest honest path",
    "diagnostics.py": "diagnostics: looking inside a training step (Part 3)",
}
MODULE = "(module)"   # the row of a file's docstring, stand-alone comments and statements


class SideBySideError(ValueError):
    """A backend file could not be read or parsed, or the root holds no backend."""


# --- The lecture: videos and chapter time stamps (those of the videos' own chapter lists) ---

# part -> (notebook, YouTube video id, title)
PARTS = {
    2: ("makemore_part2_mlp.ipynb", "TCH_1BHY58I", "Building makemore Part 2: MLP"),
    3: ("makemore_part3_bn.ipynb", "P6sfmUTpUmc", "Building makemore Part 3: Activations & Gradients, BatchNorm"),
    4: ("makemore_part4_backprop.ipynb", "q8SA3rM6ckI", "Building makemore Part 4: Becoming a Backprop Ninja"),
    5: ("makemore_part5_cnn1.ipynb", "t3YJ5hKiMQ0", "Building makemore Part 5: Building a WaveNet"),
}
# chapter key -> (part, time stamp, chapter)
CHAPTERS = {
    "p2-dataset": (2, "9:03", "building the dataset"),
    "p2-embedding": (2, "12:19", "implementing the embedding lookup table"),
    "p2-hidden": (2, "18:35", "implementing the hidden layer"),
    "p2-cross-entropy": (2, "32:49", "F.cross_entropy"),
    "p2-training": (2, "37:56", "the training loop"),
    "p2-splits": (2, "53:20", "training, validation and test splits"),
    "p2-sampling": (2, "1:13:24", "sampling from the model"),
    "p3-batchnorm": (3, "40:40", "batch normalization"),
    "p3-pytorchify": (3, "1:18:35", "PyTorch-ifying the code"),
    "p3-visualise": (3, "1:26:51", "visualisations: activations, gradients, update:data ratios"),
    "p4-ex1": (4, "13:01", "exercise 1: backprop through the whole thing, one tensor at a time"),
    "p4-bessel": (4, "1:05:17", "Bessel's correction in BatchNorm"),
    "p4-ex2": (4, "1:26:31", "exercise 2: the cross-entropy backward in one step"),
    "p4-ex3": (4, "1:36:37", "exercise 3: the BatchNorm backward in one step"),
    "p4-ex4": (4, "1:50:02", "exercise 4: putting it all together (training with the manual backward)"),
    "p5-pytorchify": (5, "9:16", "pytorchifying our code: layers, containers, torch.nn"),
    "p5-wavenet": (5, "21:36", "implementing WaveNet (FlattenConsecutive)"),
    "p5-bn-bug": (5, "38:50", "fixing the BatchNorm1d bug (3-D input)"),
    "p5-scaling": (5, "46:07", "scaling up our WaveNet"),
    "p5-harness": (5, "46:58", "experimental harness"),
    "p5-dilated": (5, "47:44", "WaveNet with dilated causal convolutions"),
    "p5-torch-nn": (5, "51:34", "torch.nn"),
}
# concept -> where it comes from: chapter keys, or ("project", path, what) for what the lecture
# does not have. A concept without an entry shows "no lecture reference yet" (a test asks for one).
_SEQ = ("project", "docs/design.md", "Whole-sequence training (the convolutional WaveNet, issue 14)")
LECTURE: dict[str, tuple] = {
    MODULE: (),
    "Embedding": ("p2-embedding", "p4-ex1", "p5-pytorchify", "p5-torch-nn"),
    "FlattenConsecutive": ("p5-wavenet",),
    "Linear": ("p2-hidden", "p3-pytorchify", "p4-ex1", "p5-torch-nn"),
    "CausalConv1d": ("p5-dilated",),
    "BatchNorm1d": ("p3-batchnorm", "p4-bessel", "p4-ex3", "p5-bn-bug"),
    "Tanh": ("p2-hidden", "p3-pytorchify", "p4-ex1"),
    "Gate": ("p5-wavenet", ("project", "shared/spec.py", "gated activation units, tanh(a) * sigmoid(b) "
                            "(van den Oord et al. 2016, WaveNet, eq. 2; issue 13)")),
    "Dropout": (("project", "shared/stream.py", "DropoutStream: the same masks for every backend "
                 "(inverted dropout, Srivastava et al. 2014)"),),
    "Sequential": ("p5-pytorchify", "p5-torch-nn"),
    "_masks": (("project", "shared/stream.py", "DropoutStream: the step's masks, one per Tanh/Gate"),),
    "DTYPES": (("project", "docs/design.md", "Precision and parity: float32 and float64"),),
    "build_model": ("p5-pytorchify", "p5-wavenet", "p5-scaling",
                    ("project", "docs/design.md", "The model spec (one, shared)")),
    "_canonical": (("project", "docs/design.md", "Canonical parameters: one name and layout for all three"),),
    "load_params": (("project", "docs/design.md", "Canonical parameters, checkpoints and run state"),),
    "export_params": (("project", "docs/design.md", "Canonical parameters, checkpoints and run state"),),
    "_tokens": (("project", "shared/checks.py", "input checks: a rejected input leaves the model unchanged"),),
    "_targets": (("project", "shared/checks.py", "input checks: a rejected input leaves the model unchanged"),),
    "forward": ("p2-hidden", "p5-pytorchify"),
    "layer_outputs": ("p3-pytorchify", "p3-visualise"),
    "cross_entropy": ("p2-cross-entropy", "p4-ex2"),
    "loss_and_grads": ("p4-ex1", "p4-ex4"),
    "_sequence_logits": ("p5-dilated", _SEQ),
    "sequence_forward": ("p5-dilated", _SEQ),
    "sequence_cross_entropy": ("p2-cross-entropy", _SEQ),
    "sequence_loss_and_grads": ("p5-dilated", _SEQ),
    "threads_for": (("project", "shared/threads.py", "thread policy for the numpy and torch steps"),),
    "Optimizer": ("p2-training",),
    "train_step": ("p2-training", "p4-ex4"),
    "sequence_train_step": ("p5-dilated", _SEQ),
    "evaluate": ("p2-splits",),
    "sample": ("p2-sampling",),
    "_CACHE": (("project", "docs/design.md", "Layout: the fast step cached per optimizer in fast.py's _CACHE"),),
    "_fast_step_for": (("project", "docs/design.md", "Layout: the fast step cached per optimizer in fast.py's _CACHE"),),
    "fast_train_steps": ("p4-ex4", ("project", "docs/design.md", "Layout: the fastest honest path in fast.py")),
    "fast_unsupported": (("project", "docs/design.md", "Layout: the fastest honest path in fast.py"),),
    "tanh_layers": ("p3-visualise",),
    "record_tanh": ("p3-pytorchify", "p3-visualise"),
    "collect": ("p3-visualise",),
}


# --- Reading the source ---

@dataclass(frozen=True)
class Block:
    """One piece of a backend's source, shown as one highlighted code block.

    Attributes:
        name: the defined name; for a module row block "__doc__", "# comment" or the statement.
        kind: "definition", "docstring", "comment" or "statement".
        path: the file, posix, relative to the root ("impl_torch/layers.py").
        start: line number (1-based) of the first line of `code`.
        line: the line of the definition itself (`class`, `def`, the assignment), after its comment
            and decorators; `start` for the other kinds.
        code: the exact source text (no trailing newline).
        note: the comment that goes with it (see the module docstring), '' if none.
    """
    name: str
    kind: str
    path: str
    start: int
    line: int
    code: str
    note: str = ""


def _comment_text(lines: list[str]) -> str:
    return " ".join(l.strip().lstrip("#").strip() for l in lines).strip()


def _first_inner_comment(segment: str) -> str:
    # the first block of full-line comments inside a definition (tokenize: never a '#' in a string)
    out, last = [], None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(segment).readline):
            if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                if out and tok.start[0] != last + 1:
                    break
                out.append(tok.string)
                last = tok.start[0]
            elif out and tok.type not in (tokenize.NL, tokenize.COMMENT):
                break
    except (tokenize.TokenError, SyntaxError):
        pass
    return _comment_text(out)


def _targets_of(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    names = []
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    for t in targets:
        for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
            if isinstance(e, ast.Name):
                names.append(e.id)
    return names


def read_blocks(root: Path, path: str) -> tuple[list[Block], list[Block]] | None:
    """Parse one backend file: (definitions in file order, the file's module-row blocks).

    Arguments:
        root: the project root; path: the file relative to it, posix ("impl_jax/model.py").
    Returns:
        None if the file does not exist. Otherwise every top-level class, function and
        assignment as a Block of kind "definition" (a name defined twice: the first), and the
        module docstring, stand-alone comment blocks and top-level statements that are neither
        imports nor definitions, in file order.
    Raises:
        SideBySideError: the file cannot be read, decoded or parsed (names the file and line).
    """
    file = root / path
    if not file.is_file():
        return None
    try:
        source = file.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise SideBySideError(f"{path}:{e.lineno}: cannot parse: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SideBySideError(f"{path}: cannot read: {e}") from None
    lines = source.splitlines()
    defs, module, seen = [], [], set()
    owned = set()          # lines that belong to a block (comment above, decorators, body)
    notes_by_end = {}      # end line of a one-line assignment -> its note (for the next one)
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        first = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno
        above = []
        j = first - 1                      # 1-based line just above
        while j >= 1 and lines[j - 1].startswith("#"):
            above.insert(0, lines[j - 1])
            j -= 1
        bare = segment = ast.get_source_segment(source, node)
        if first < node.lineno:            # decorators: whole lines above the def
            segment = "\n".join(lines[first - 1:node.lineno - 1]) + "\n" + segment
        tail = lines[node.end_lineno - 1][node.end_col_offset:]
        if tail.strip().startswith("#"):   # a comment trailing the last line belongs to it
            segment += tail
        start = first - len(above)
        code = "\n".join(above + [segment])
        names = _targets_of(node)
        is_doc = (i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                  and isinstance(node.value.value, str))
        owned.update(range(start, node.end_lineno + 1))
        if names:
            note = _comment_text(above)
            if not note and isinstance(node, (ast.Assign, ast.AnnAssign)):
                note = notes_by_end.get(first - 1, "")   # a run of one-line assignments shares one
            if not note:
                note = _first_inner_comment(segment)
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.lineno == node.end_lineno:
                notes_by_end[node.end_lineno] = note
            for name in names:
                if name not in seen:
                    seen.add(name)
                    defs.append(Block(name, "definition", path, start, node.lineno, code, note))
        else:
            kind = "docstring" if is_doc else "statement"
            name = "__doc__" if is_doc else bare.splitlines()[0]
            module.append(Block(name, kind, path, start, start, code, _comment_text(above)))
    # comment blocks that stand alone (not directly above a block, not inside one)
    n, run = len(lines), []
    for k in range(1, n + 2):
        text = lines[k - 1] if k <= n else ""
        if k <= n and text.startswith("#") and k not in owned:
            run.append(k)
            continue
        if run:
            module.append(Block("# comment", "comment", path, run[0], run[0],
                                "\n".join(lines[r - 1] for r in run)))
            run = []
    module.sort(key=lambda b: b.start)
    return defs, module


# --- Matching the backends ---

@dataclass(frozen=True)
class Cell:
    """One backend's column of a row.

    Attributes:
        backend: the package ("impl_jax").
        block: the concept's definition; None where the backend lacks it ("missing"). In a
            file's module row, the module docstring (None: the file or its docstring is missing).
        extras: blocks shown below it: the backend's own private helpers that precede the next
            concept in the file, or (module row) stand-alone comments and statements.
    """
    backend: str
    block: Block | None
    extras: tuple[Block, ...] = ()


@dataclass(frozen=True)
class Row:
    """One concept of one parallel file, with a cell per backend in column order."""
    file: str
    name: str
    cells: tuple[Cell, ...]

    @property
    def anchor(self) -> str:
        """The row's HTML id: "c-layers-Embedding", "c-model-module"."""
        name = "module" if self.name == MODULE else self.name
        return f"c-{self.file.removesuffix('.py')}-{name}"


def _merge(orders: list[list[str]]) -> list[str]:
    # one order of the union: names new to a later list go right after their predecessor there
    out: list[str] = []
    for order in orders:
        pos = 0
        for name in order:
            if name in out:
                pos = out.index(name) + 1
            else:
                out.insert(pos, name)
                pos += 1
    return out


def parallel_files(root: Path) -> list[str]:
    """The parallel file names: FILES first, then any other `*.py` of a backend but `__init__.py`,
    sorted. Raises SideBySideError if the root holds none of the backend packages."""
    dirs = [root / pkg for pkg, _, _ in BACKENDS if (root / pkg).is_dir()]
    if not dirs:
        raise SideBySideError(f"{root} has none of {', '.join(p for p, _, _ in BACKENDS)}: "
                              "run from the project root")
    others = sorted({p.name for d in dirs for p in d.glob("*.py")} - set(FILES) - {"__init__.py"})
    return list(FILES) + others


def build_rows(root: Path = ROOT) -> list[Row]:
    """Every row of the page, per file in :func:`parallel_files` order: the module row, then
    the concepts in the files' order (the union of the backends' orders).

    Raises SideBySideError (see :func:`read_blocks`, :func:`parallel_files`)."""
    rows = []
    for fname in parallel_files(root):
        parsed = {pkg: read_blocks(root, f"{pkg}/{fname}") for pkg, _, _ in BACKENDS}
        if all(p is None for p in parsed.values()):
            continue
        defs = {pkg: {b.name: b for b in p[0]} if p else {} for pkg, p in parsed.items()}
        order = _merge([[b.name for b in p[0]] if p else [] for p in parsed.values()])
        concepts = [n for n in order if not n.startswith("_") or all(n in d for d in defs.values())]
        extras = {pkg: {n: [] for n in [MODULE, *concepts]} for pkg in defs}
        for pkg, p in parsed.items():
            if p is None:
                continue
            extras[pkg][MODULE] = [b for b in p[1] if b.kind != "docstring"]
            mine = [b for b in p[0] if b.name in concepts]
            for b in p[0]:
                if b.name in concepts:
                    continue
                # a helper serves the next concept of its file (else the last one, else the module row)
                host = next((c for c in mine if c.start > b.start), mine[-1] if mine else None)
                extras[pkg][host.name if host else MODULE].append(b)
        module_cells = tuple(Cell(pkg, next((b for b in p[1] if b.kind == "docstring"), None) if p else None,
                                  tuple(extras[pkg][MODULE])) for pkg, p in parsed.items())
        rows.append(Row(fname, MODULE, module_cells))
        for n in concepts:
            rows.append(Row(fname, n, tuple(Cell(pkg, defs[pkg].get(n), tuple(extras[pkg][n]))
                                            for pkg in defs)))
    return rows


# --- Writing the page ---

_CSS = """
:root { --numpy: #4d77cf; --torch: #ee4c2c; --jax: #0f9d58; --ink: #1d1d1f; --muted: #666; }
* { box-sizing: border-box; }
body { margin: 0; padding: 0 16px 40px; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #fff; }
header { padding: 16px 0 4px; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 30px 0 4px; padding-top: 8px; border-top: 2px solid #ccc; }
h3 { font-size: 16px; margin: 20px 0 2px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
a { color: #1558b0; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.92em; }
.intro { max-width: 100ch; margin: 4px 0; }
nav#toc { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 4px 18px;
          margin: 10px 0; padding: 8px 12px; background: #f4f5f7; border-radius: 6px; font-size: 13.5px; }
nav#toc .file { font-weight: 600; margin-top: 2px; }
nav#toc ul { margin: 0; padding-left: 16px; }
nav#toc li { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.colheads { position: sticky; top: 0; z-index: 2; display: grid; grid-template-columns: repeat(3, minmax(0, 1fr));
            gap: 12px; background: #fff; padding: 6px 0; border-bottom: 1px solid #ddd; font-weight: 600; }
.colheads div { padding: 2px 8px; border-left: 6px solid; }
.refs { margin: 2px 0 6px; padding-left: 18px; font-size: 13.5px; color: var(--muted); }
.cells { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 12px; align-items: start; }
.cell { min-width: 0; border: 1px solid #d8dbe0; border-top: 6px solid; border-radius: 4px; padding: 0 0 4px;
        background: #fcfcfd; }
.cell-numpy, .colheads .h-numpy { border-top-color: var(--numpy); border-left-color: var(--numpy); }
.cell-torch, .colheads .h-torch { border-top-color: var(--torch); border-left-color: var(--torch); }
.cell-jax, .colheads .h-jax { border-top-color: var(--jax); border-left-color: var(--jax); }
.colheads div { border-top: 0; }
.cellhead { padding: 4px 8px; font-size: 13px; display: flex; flex-wrap: wrap; gap: 4px 10px; }
.cellhead .backend { font-weight: 600; }
.block { margin: 0 6px 6px; }
.blockhead { font-size: 12.5px; color: var(--muted); margin: 6px 2px 2px; }
.note { margin: 2px 0 4px; padding: 5px 8px; background: #fff7d6; border-left: 4px solid #e0b400;
        font-size: 13.5px; }
.note.none { background: transparent; border-left-color: #ddd; color: #999; font-style: italic; }
.missing { margin: 8px; padding: 10px; background: #fde7e7; border: 2px dashed #c62828; color: #8e0000;
           font-weight: 600; }
details.extras { margin: 4px 6px; }
details.extras > summary { cursor: pointer; font-size: 13px; color: var(--muted); }
.highlight { border-radius: 3px; }
.highlight pre { margin: 0; padding: 6px 8px; font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace;
                 white-space: pre-wrap; overflow-wrap: anywhere; }
.highlight span.linenos { color: #aaa; padding: 0 8px 0 0; user-select: none; }
@media (max-width: 1000px) {
  .cells { grid-template-columns: minmax(0, 1fr); }
  .colheads { display: none; }
}
"""


_LABELS = {"comment": "comment", "statement": "statement run at import", "docstring": "docstring"}


def _rel(target: str, page_dir: Path, root: Path) -> str:
    return Path(os.path.relpath(root / target, page_dir)).as_posix()


def _inline(text: str) -> str:
    # escape, then `code` spans
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _ref_html(ref, page_dir: Path, root: Path) -> str:
    if isinstance(ref, tuple):
        _, path, what = ref
        return (f'not in the lecture: <a href="{html.escape(_rel(path, page_dir, root))}">'
                f'{html.escape(path)}</a>, {html.escape(what)}')
    part, stamp, chapter = CHAPTERS[ref]
    notebook, video, title = PARTS[part]
    secs = 0
    for x in stamp.split(":"):
        secs = secs * 60 + int(x)
    return (f'<a href="https://www.youtube.com/watch?v={video}&amp;t={secs}s">Part {part} at {stamp}</a>: '
            f'{html.escape(chapter)} (<span title="{html.escape(title)}">{html.escape(notebook)}</span>)')


def _block_html(b: Block, formatter_cls, lexer, page_dir: Path, root: Path, label: str | None) -> str:
    out = ['<div class="block">']
    if label is not None:
        href = f"{_rel(b.path, page_dir, root)}#L{b.line}"
        out.append(f'<div class="blockhead">{label} <a href="{html.escape(href)}">{b.path}:{b.line}</a></div>')
    if b.kind == "definition" and label is None:   # a concept's own block; helpers show their code only
        out.append(f'<p class="note">{_inline(b.note)}</p>' if b.note
                   else '<p class="note none">no comment in the source</p>')
    from pygments import highlight
    code = highlight(b.code, lexer, formatter_cls(linenos="inline", linenostart=b.start, wrapcode=True))
    out.append(f'<div class="code" data-name="{html.escape(b.name)}" data-path="{b.path}" '
               f'data-start="{b.start}">{code}</div></div>')
    return "".join(out)


def render(rows: list[Row], out: Path, root: Path = ROOT) -> str:
    """The page for `rows` as an HTML string; links are relative to `out`'s folder.

    Deterministic: the same rows, out path and Pygments version give the same bytes."""
    import pygments
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    lexer = PythonLexer()
    page_dir = Path(os.path.abspath(out)).parent
    root = Path(os.path.abspath(root))
    titles = {pkg: (title, short) for pkg, title, short in BACKENDS}
    missing = [(c.backend, r) for r in rows for c in r.cells if c.block is None]
    p = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
         '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
         f'<meta name="generator" content="makemore sidebyside (Pygments {pygments.__version__})">\n'
         '<title>makemore side by side: numpy | PyTorch | JAX/Flax</title>\n<style>',
         _CSS, HtmlFormatter(style="default").get_style_defs(".highlight"), "\n</style>\n</head>\n<body>\n"]
    p.append('<header><h1>makemore side by side: numpy | PyTorch | JAX / Flax nnx / Optax</h1>\n'
             '<p class="intro">Each row is one concept of Karpathy\'s makemore (Part 2 MLP to Part 5 '
             'WaveNet), with the lecture\'s time stamps, and the code of each backend beside the '
             'others. The yellow line is the comment the code carries there: most say what that '
             'framework does differently. Helpers only one backend needs sit below the concept they '
             'serve. Links open the file at the line.</p>\n'
             '<p class="intro">Generated from the source by <code>makemore sidebyside --out '
             'docs/sidebyside.html</code> (makemore/sidebyside.py); do not edit it by hand.'
             + (f' <strong>{len(missing)} cell(s) missing.</strong>' if missing else '') + '</p></header>\n')
    p.append('<nav id="toc" aria-label="contents">')
    for fname in dict.fromkeys(r.file for r in rows):
        p.append(f'<div><div class="file"><a href="#f-{fname.removesuffix(".py")}">{fname}</a></div><ul>')
        for r in rows:
            if r.file == fname and r.name != MODULE:
                p.append(f'<li><a href="#{r.anchor}">{html.escape(r.name)}</a></li>')
        p.append('</ul></div>')
    p.append('</nav>\n<div class="colheads">' + "".join(
        f'<div class="h-{short}">{html.escape(title)}</div>' for title, short in titles.values()) + '</div>\n<main>\n')
    current = None
    for r in rows:
        if r.file != current:
            if current is not None:
                p.append('</section>\n')
            current = r.file
            p.append(f'<section class="file" id="f-{r.file.removesuffix(".py")}"><h2>{r.file}: '
                     f'{html.escape(FILE_TITLES.get(r.file, "a parallel file"))}</h2>\n')
        is_module = r.name == MODULE
        p.append(f'<section class="concept" id="{r.anchor}" data-concept="{html.escape(r.name)}" data-file="{r.file}">')
        p.append(f'<h3><a href="#{r.anchor}">{"about " + r.file if is_module else html.escape(r.name)}</a></h3>')
        refs = LECTURE.get(r.name)
        if refs is None:
            p.append('<ul class="refs"><li>no lecture reference yet: add one to LECTURE in '
                     'makemore/sidebyside.py</li></ul>')
        elif refs:
            p.append('<ul class="refs">' + "".join(f"<li>{_ref_html(x, page_dir, root)}</li>" for x in refs) + '</ul>')
        p.append('<div class="cells">')
        for c in r.cells:
            title, short = titles[c.backend]
            path = f"{c.backend}/{r.file}"
            p.append(f'<div class="cell cell-{short}" data-backend="{c.backend}">')
            head = f'<span class="backend">{html.escape(title)}</span>'
            if c.block is not None:
                href = f"{_rel(c.block.path, page_dir, root)}#L{c.block.line}"
                head += f' <a href="{html.escape(href)}">{c.block.path}:{c.block.line}</a>'
            p.append(f'<div class="cellhead">{head}</div>')
            if c.block is None:
                what = "no module docstring" if is_module and (root / path).is_file() else \
                    f"no file {path}" if not (root / path).is_file() else f"no <code>{html.escape(r.name)}</code> in {path}"
                p.append(f'<p class="missing">missing: {what}</p>')
            else:
                p.append(_block_html(c.block, HtmlFormatter, lexer, page_dir, root, None))
            if c.extras:
                names = ", ".join(html.escape(b.name) if b.kind == "definition" else _LABELS[b.kind]
                                  for b in c.extras)
                kind = "also in this file" if is_module else "helpers only this backend has"
                p.append(f'<details class="extras" open><summary>{kind}: {names}</summary>')
                for b in c.extras:
                    label = _LABELS.get(b.kind) or f"<code>{html.escape(b.name)}</code>"
                    p.append(_block_html(b, HtmlFormatter, lexer, page_dir, root, label))
                p.append('</details>')
            p.append('</div>')
        p.append('</div></section>\n')
    if current is not None:
        p.append('</section>\n')
    p.append('</main>\n</body>\n</html>\n')
    return "".join(p)


@dataclass(frozen=True)
class Page:
    """What :func:`write_page` wrote.

    Attributes:
        path: the HTML file; rows: every row, in page order.
        missing: (file, name) of every missing cell, e.g. ("impl_jax/layers.py", "Tanh").
        unreferenced: concepts without a LECTURE entry.
    """
    path: Path
    rows: tuple[Row, ...]
    missing: tuple[tuple[str, str], ...] = field(default=())
    unreferenced: tuple[str, ...] = field(default=())


def missing_cells(rows: list[Row]) -> list[tuple[str, str]]:
    """(file, concept) of every cell without a block, e.g. ("impl_jax/layers.py", "Tanh")."""
    return [(f"{c.backend}/{r.file}", r.name) for r in rows for c in r.cells if c.block is None]


def write_page(out: str | os.PathLike = DEFAULT_OUT, root: str | os.PathLike = ROOT) -> Page:
    """Read the backends under `root`, write the page to `out` (folders made as needed; written
    to a temporary file, then renamed) and say what it holds.

    Raises:
        SideBySideError: a backend file cannot be read or parsed, or `root` holds no backend.
        OSError: `out` cannot be written (e.g. it is a folder).
    """
    out, root = Path(out), Path(root)
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"a folder; give a file name such as {out / 'sidebyside.html'}",
                                str(out))
    rows = build_rows(root)
    text = render(rows, out, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return Page(out, tuple(rows), tuple(missing_cells(rows)),
                tuple(dict.fromkeys(r.name for r in rows if r.name not in LECTURE)))
