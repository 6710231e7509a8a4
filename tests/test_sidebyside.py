"""`makemore sidebyside` (makemore/sidebyside.py): the page holds every concept of every parallel
file in three columns, each code block is exactly the current source of its object (read here
independently with `ast`), nothing is missing, the committed docs/sidebyside.html is current, and
headless Chromium lays the columns out side by side at 1600 px and stacked at 600 px.
"""
import ast
import html
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import ROOT
from makemore import cli
from makemore.sidebyside import (CHAPTERS, LECTURE, MODULE, SideBySideError, build_rows, missing_cells,
                                 render, write_page)

IMPLS = ["impl_numpy", "impl_torch", "impl_jax"]
FILES = ["layers.py", "model.py", "train.py", "fast.py", "diagnostics.py"]
COMMITTED = ROOT / "docs" / "sidebyside.html"


# --- an independent reading of the source, and of the page ---

def source_objects(path: Path) -> dict[str, str]:
    """Top-level non-import statements of a file -> their exact source: the comment lines directly
    above, decorators, the statement, a comment trailing its last line; named by the defined
    names, "__doc__" for the module docstring, the first line for other statements."""
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    tree = ast.parse(text)
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        top = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        k = top - 1
        while k >= 1 and lines[k - 1].startswith("#"):
            k -= 1
        code = "\n".join(lines[k:node.end_lineno - 1] + [lines[node.end_lineno - 1][:node.end_col_offset]])
        if lines[node.end_lineno - 1][node.end_col_offset:].lstrip().startswith("#"):
            code = "\n".join(lines[k:node.end_lineno])
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign):
            names = [node.target.id]
        elif i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            names = ["__doc__"]
        else:   # a statement run at import: named by its first line
            names = [ast.get_source_segment(text, node).splitlines()[0]]
        for n in names:
            out.setdefault(n, code)
    return out


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def classes(self) -> set:
        return set((self.attrs.get("class") or "").split())

    def text(self, skip=lambda n: False) -> str:
        return "".join(c if isinstance(c, str) else ("" if skip(c) else c.text(skip)) for c in self.children)

    def find(self, pred):
        for c in self.children:
            if isinstance(c, Node):
                if pred(c):
                    yield c
                yield from c.find(pred)


class TreeBuilder(HTMLParser):
    """html.parser -> a tree of Node (void elements closed at once)."""
    VOID = {"meta", "br", "hr", "img", "link", "input", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in self.VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        assert n is not None and n is self.cur, f"</{tag}> closes <{self.cur.tag}>: the HTML is not well nested"
        self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(text: str) -> Node:
    b = TreeBuilder()
    b.feed(text)
    b.close()
    assert b.cur is b.root, f"<{b.cur.tag}> is never closed"
    return b.root


def code_text(block: Node) -> str:
    """The text of a code block's <code>, without Pygments' line numbers."""
    (code,) = list(block.find(lambda n: n.tag == "code"))
    return code.text(skip=lambda n: "linenos" in n.classes)


@pytest.fixture(scope="module")
def page():
    """(rows, HTML, parsed tree) of the page as docs/sidebyside.html would be now (links relative
    to docs/)."""
    rows = build_rows(ROOT)
    text = render(rows, COMMITTED, ROOT)
    return rows, text, parse(text)


# --- the page against the source ---

def test_every_concept_has_a_row_of_three_cells_with_the_current_source(page):
    _, text, tree = page
    rows = list(tree.find(lambda n: n.tag == "section" and "concept" in n.classes))
    seen = {(r.attrs["data-file"], r.attrs["data-concept"]) for r in rows}
    for fname in FILES:
        objs = {impl: source_objects(ROOT / impl / fname) for impl in IMPLS}
        public = {n for o in objs.values() for n in o if not n.startswith("_")}
        shared_private = set.intersection(*({n for n in o if n.startswith("_") and n != "__doc__"}
                                            for o in objs.values()))
        expected = {(fname, n) for n in public | shared_private} | {(fname, MODULE)}
        got = {s for s in seen if s[0] == fname}
        assert got == expected, f"{fname}: rows {sorted(got - expected)} extra, {sorted(expected - got)} absent"
    for r in rows:
        cells = [c for c in r.children if isinstance(c, Node) and "cells" in c.classes]
        assert len(cells) == 1, r.attrs["id"]
        cols = [c for c in cells[0].children if isinstance(c, Node)]
        assert [c.attrs.get("data-backend") for c in cols] == IMPLS, r.attrs["id"]
    # every code block is the exact source of its object, and every object is on the page once
    shown = {}
    for block in tree.find(lambda n: "code" in n.classes and n.tag == "div"):
        path, name = block.attrs["data-path"], block.attrs["data-name"]
        if name == "# comment":   # a stand-alone comment block: the lines at data-start
            first = int(block.attrs["data-start"])
            got = code_text(block)
            assert got == "\n".join((ROOT / path).read_text().splitlines()[first - 1:][:got.count("\n")]) + "\n"
            assert got.strip() and all(l.startswith("#") for l in got.splitlines()), (path, first)
            continue
        expected = source_objects(ROOT / path)
        assert name in expected, f"{path}: {name} is on the page but not in the source"
        assert code_text(block) == expected[name] + "\n", f"{path}: {name} differs from the source"
        first = int(block.attrs["data-start"])
        assert (ROOT / path).read_text().splitlines()[first - 1] == expected[name].splitlines()[0]
        assert (path, name) not in shown, f"{path}: {name} shown twice"
        shown[(path, name)] = True
    for impl in IMPLS:
        for fname in FILES:
            for name in source_objects(ROOT / impl / fname):
                assert (f"{impl}/{fname}", name) in shown, f"{impl}/{fname}: {name} is not on the page"


def test_no_cell_is_missing_for_the_current_source(page):
    rows, text, tree = page
    assert missing_cells(rows) == [], f"missing cells: {missing_cells(rows)}"
    assert not list(tree.find(lambda n: "missing" in n.classes))
    concepts = {r.name for r in rows}
    for name in ("Embedding", "FlattenConsecutive", "Linear", "BatchNorm1d", "Tanh", "Sequential",
                 "build_model", "load_params", "export_params", "forward", "cross_entropy",
                 "loss_and_grads", "Optimizer", "train_step", "evaluate", "sample",
                 "fast_train_steps", "tanh_layers", "record_tanh", "collect"):
        assert name in concepts, name


def test_notes_are_the_comments_that_say_what_differs(page):
    rows, text, tree = page
    rows = {(r.file, r.name): r for r in rows}
    linear = {c.backend: c.block.note for c in rows[("layers.py", "Linear")].cells}
    assert "(fan_out, fan_in)" in linear["impl_torch"] and "transposes" in linear["impl_torch"]
    assert linear["impl_jax"].startswith("Flax ships Linear with `kernel` (fan_in, fan_out)")
    seq = {c.backend: c.block.note for c in rows[("layers.py", "Sequential")].cells}
    assert seq["impl_torch"].startswith("torch ships Sequential")
    # the comment directly above wins over the first full-line comment inside
    bn = {c.backend: c.block.note for c in rows[("layers.py", "BatchNorm1d")].cells}
    assert bn["impl_jax"].startswith("Flax ships nnx.BatchNorm") and bn["impl_torch"].startswith("torch ships nn.BatchNorm1d")
    row = next(tree.find(lambda n: n.tag == "section" and n.attrs.get("id") == "c-layers-Linear"))
    notes = [n.text() for n in row.find(lambda n: "note" in n.classes)]
    assert len(notes) == 3 and "(fan_out, fan_in)" in notes[1], notes


def test_links_name_the_file_and_line_of_the_definition(page):
    rows, text, tree = page
    heads = list(tree.find(lambda n: "cellhead" in n.classes))
    assert len(heads) == 3 * len(rows)
    for head in heads:
        (a,) = list(head.find(lambda n: n.tag == "a"))
        href, label = a.attrs["href"], a.text()
        m = re.fullmatch(r"\.\./(impl_\w+/\w+\.py)#L(\d+)", href)
        assert m, href
        assert label == f"{m[1]}:{m[2]}", (href, label)
    for r in rows:
        for c in r.cells:
            line = (ROOT / c.block.path).read_text().splitlines()[c.block.line - 1]
            if r.name == MODULE:
                assert line.startswith('"""'), c.block.path
            else:
                assert re.match(rf"(class |def |async def )?{re.escape(r.name)}\b", line), (c.block.path, line)


def test_every_concept_names_its_lecture_source(page):
    rows, text, tree = page
    unreferenced = [r.name for r in rows if r.name not in LECTURE]
    assert unreferenced == [], f"add these to LECTURE in makemore/sidebyside.py: {unreferenced}"
    for name, refs in LECTURE.items():
        for ref in refs:
            assert isinstance(ref, tuple) or ref in CHAPTERS, f"LECTURE[{name!r}]: no chapter {ref!r}"
            if isinstance(ref, tuple):
                assert (ROOT / ref[1]).is_file(), ref
    emb = next(r for r in tree.find(lambda n: n.attrs.get("id") == "c-layers-Embedding"))
    refs = [a.attrs["href"] for a in emb.find(lambda n: n.tag == "a" and "youtube" in n.attrs.get("href", ""))]
    assert "https://www.youtube.com/watch?v=TCH_1BHY58I&t=739s" in refs  # Part 2 at 12:19


def test_the_page_is_self_contained_and_deterministic(page):
    rows, text, tree = page
    assert not list(tree.find(lambda n: n.tag in ("script", "link", "img", "iframe")))
    assert not list(tree.find(lambda n: "src" in n.attrs))
    assert "@import" not in text and "url(" not in text
    toc = [a.attrs["href"][1:] for a in next(tree.find(lambda n: n.tag == "nav")).find(lambda n: n.tag == "a")]
    ids = {n.attrs["id"] for n in tree.find(lambda n: "id" in n.attrs)}
    assert set(toc) <= ids and {r.anchor for r in rows if r.name != MODULE} <= set(toc)
    assert 'id="c-layers-Embedding"' in text and text.endswith("</html>\n")


def test_the_committed_copy_is_what_the_source_makes_now(page):
    # also the determinism check: the committed copy was made by another process
    assert COMMITTED.is_file(), "docs/sidebyside.html is missing: run makemore sidebyside --out docs/sidebyside.html"
    assert COMMITTED.read_text() == page[1], ("docs/sidebyside.html is out of date with impl_*/: "
                                          "run makemore sidebyside --out docs/sidebyside.html and commit it")


# --- a fake source tree ---

def fake_tree(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


LAYERS = '''"""layers"""

# what differs here
Foo = object
Bar = object


def _helper():
    return 1


@staticmethod
def baz(x):  # not a note: trailing
    """doc"""
    # inside: the note
    return x
'''


def test_a_definition_one_backend_lacks_is_reported_missing(tmp_path):
    root = fake_tree(tmp_path, {
        "impl_numpy/layers.py": LAYERS,
        "impl_torch/layers.py": LAYERS,
        "impl_jax/layers.py": LAYERS.replace("Bar = object\n", ""),
    })
    pg = write_page(tmp_path / "out" / "p.html", root)
    assert pg.missing == (("impl_jax/layers.py", "Bar"),)
    tree = parse(pg.path.read_text())
    (cell,) = list(tree.find(lambda n: "missing" in n.classes))
    assert "missing" in cell.text() and "impl_jax/layers.py" in cell.text() and "Bar" in cell.text()
    assert cell.parent.attrs["data-backend"] == "impl_jax"
    assert cell.parent.parent.parent.attrs["data-concept"] == "Bar"
    # a whole missing file is missing cells too
    (root / "impl_torch" / "layers.py").unlink()
    pg = write_page(tmp_path / "p2.html", root)
    assert {m for m in pg.missing if m[0] == "impl_torch/layers.py"} == {
        ("impl_torch/layers.py", n) for n in (MODULE, "Foo", "Bar", "baz")}


def test_notes_helpers_and_decorators_from_a_fake_source(tmp_path):
    root = fake_tree(tmp_path, {f"{impl}/layers.py": LAYERS for impl in IMPLS})
    rows = build_rows(root)
    by = {r.name: r.cells[0] for r in rows}
    assert list(by) == [MODULE, "Foo", "Bar", "_helper", "baz"]   # private, but in all three: a concept
    assert by["Foo"].block.note == "what differs here" and by["Foo"].block.code.startswith("# what differs")
    assert by["Bar"].block.note == "what differs here"    # a run of one-line assignments shares it
    assert by["baz"].block.code.startswith("@staticmethod\ndef baz(x):  # not a note")
    assert by["baz"].block.note == "inside: the note" and by["baz"].block.line == 13
    assert by[MODULE].block.code == '"""layers"""'
    # a private name only numpy has is a helper, shown with the next concept of numpy's file
    root2 = fake_tree(tmp_path / "b", {"impl_numpy/layers.py": LAYERS,
                                       **{f"{i}/layers.py": LAYERS.replace("def _helper():\n    return 1\n", "")
                                          for i in IMPLS[1:]}})
    rows = build_rows(root2)
    cells = {r.name: r.cells for r in rows}
    assert "_helper" not in cells
    assert [b.name for b in cells["baz"][0].extras] == ["_helper"] and cells["baz"][1].extras == ()


def test_unparseable_source_names_the_file(tmp_path):
    root = fake_tree(tmp_path, {"impl_numpy/layers.py": "def f(:\n", "impl_torch/layers.py": LAYERS})
    with pytest.raises(SideBySideError, match=r"impl_numpy/layers\.py:1: cannot parse"):
        build_rows(root)
    with pytest.raises(SideBySideError, match="none of impl_numpy"):
        build_rows(tmp_path / "nothing")


def test_cli_writes_the_page_and_refuses_abbreviations(tmp_path, capsys):
    out = tmp_path / "deep" / "page.html"
    assert cli.main(["sidebyside", "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}: " in capsys.readouterr().out
    assert 'id="c-fast-fast_train_steps"' in out.read_text() and not out.with_name("page.html.tmp").exists()
    assert cli.main(["sidebyside", "--out", str(tmp_path)]) == 2   # a folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a folder; give a file name" in err, err
    with pytest.raises(SystemExit) as e:
        cli.main(["sidebyside", "--ou", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --ou" in err, err


# --- headless Chromium: the layout a learner sees ---

MEASURE = """<script>
(function () {
  var rows = [];
  document.querySelectorAll('.cells').forEach(function (r) {
    var cells = [];
    for (var i = 0; i < r.children.length; i++) {
      var b = r.children[i].getBoundingClientRect();
      cells.push([b.left, b.top + window.scrollY, b.width, b.height]);
    }
    rows.push({id: r.parentElement.id, cells: cells});
  });
  var res = {innerWidth: window.innerWidth, clientWidth: document.documentElement.clientWidth,
             scrollWidth: document.documentElement.scrollWidth, rows: rows};
  var out = document.createElement('pre');
  out.id = 'layout-result';
  out.textContent = JSON.stringify(res);
  document.body.appendChild(out);
})();
</script>
"""
COLOURS = {"impl_numpy": (0x4d, 0x77, 0xcf), "impl_torch": (0xee, 0x4c, 0x2c), "impl_jax": (0x0f, 0x9d, 0x58)}


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed, and CI must run the browser test: .ci/run installs "
                        "it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")
    return exe


def browser(exe: str, profile: Path, width: int, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--force-device-scale-factor=1", "--no-first-run", f"--user-data-dir={profile}",
                             f"--window-size={width},1200", *extra, url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def layout(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}"
    m = re.search(r'<pre id="layout-result">(.*?)</pre>', out, re.S)
    assert m, "the measuring script wrote no result into the DOM"
    return json.loads(html.unescape(m[1]))


def test_chromium_columns_side_by_side_at_1600px_and_stacked_at_600px(tmp_path, page):
    exe = chromium()
    t0 = time.perf_counter()
    rows, text, _ = page
    # the page plus a script that measures the cells (appended at the end: the layout above is the
    # page's own; the page itself has no script)
    measured = tmp_path / "measured.html"
    measured.write_text(text.replace("</body>", MEASURE + "</body>"))
    shot = tmp_path / "shot.png"
    # two browsers at once: 1600 px (DOM and a screenshot) and 600 px (DOM)
    procs = [browser(exe, tmp_path / "p1", 1600, measured.as_uri(), "--dump-dom", f"--screenshot={shot}"),
             browser(exe, tmp_path / "p2", 600, measured.as_uri(), "--dump-dom")]
    wide, narrow = layout(procs[0]), layout(procs[1])
    assert shot.is_file(), "chromium wrote no screenshot"
    n_rows = len(rows)

    assert wide["innerWidth"] == 1600 and len(wide["rows"]) == n_rows
    assert wide["scrollWidth"] <= wide["clientWidth"], f"page overflows at 1600 px: {wide['scrollWidth']}"
    for r in wide["rows"]:
        (l0, t0_, w0, _), (l1, t1, w1, _), (l2, t2, w2, _) = r["cells"]
        assert abs(t0_ - t1) < 1 and abs(t1 - t2) < 1, f"{r['id']}: the three cells do not share a row"
        assert l0 + w0 <= l1 and l1 + w1 <= l2 and l2 + w2 <= wide["clientWidth"], r
        assert min(w0, w1, w2) > 400, r

    assert narrow["innerWidth"] == 600 and len(narrow["rows"]) == n_rows
    assert narrow["scrollWidth"] <= narrow["clientWidth"], f"page overflows at 600 px: {narrow['scrollWidth']}"
    for r in narrow["rows"]:
        cells = r["cells"]
        for (la, ta, wa, ha), (lb, tb, wb, hb) in zip(cells, cells[1:]):
            assert tb >= ta + ha - 1 and abs(la - lb) < 1 and abs(wa - wb) < 1, f"{r['id']}: not stacked"

    # the pixels: in the screenshot, a row's three coloured top bars lie side by side on one line
    import matplotlib.image as mpimg
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1200, 1600), img.shape
    row = next(r for r in wide["rows"] if r["cells"][0][1] + 6 < 1200)
    y = int(row["cells"][0][1] + 3)
    for impl, (left, top, width, _) in zip(IMPLS, row["cells"]):
        xs = slice(int(left) + 8, int(left + width) - 8)
        colour = (img[y, xs] * 255).round()
        assert (abs(colour - COLOURS[impl]) <= 3).all(), f"{impl}'s column bar is not at y={y}, x={xs}"
    gap = int(row["cells"][0][0] + row["cells"][0][2] + 3)
    assert (img[y, gap] > 0.95).all(), "no gap between the first two columns"
    print(f"chromium layout check: {time.perf_counter() - t0:.1f} s")
