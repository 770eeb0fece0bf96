"""Checks that keep the documentation in ``docs/`` true to the code.

* The op listing is generated from ``tapejit.OPS``: every op and opcode appears.
* The examples of every page under ``docs/`` (tutorials included) run: the ``>>>``
  examples give the output shown, and the ``.. code-block:: python`` blocks run without
  error, in page order and in one namespace per page. A block preceded by the comment
  ``.. doc-test: requires MODULE`` is left out where MODULE is not installed, and one
  preceded by ``.. doc-test: skip (reason)`` is never run.
* Every page is in a toctree; every tutorial has examples.
* The API reference documents every public name of ``tapejit``, ``tapejit.optimize``
  and ``tapejit.dask``.
* The performance page includes the committed table written by
  ``asv_bench/compare_peers.py --rst``, and the table is well formed.
* The repository map of the internals page names every module under ``tapejit/``.
* A full Sphinx build with warnings as errors (only where Sphinx is installed).

None of these but the last needs Sphinx: they read the files directly.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tapejit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Pages whose examples must exist (besides every tutorial).
PAGES_WITH_EXAMPLES = ("getting_started.rst", "ops.rst", "scale_out.rst")
#: Folders of ``docs/`` that hold no pages of their own (build output, included tables).
NOT_PAGES = ("_build", "_generated", "_include")


def _pages() -> list[str]:
    """Every page of the documentation, as a path relative to ``docs/`` (posix)."""
    return sorted(
        p.relative_to(DOCS).as_posix()
        for p in DOCS.rglob("*.rst")
        if not set(p.relative_to(DOCS).parts[:-1]) & set(NOT_PAGES)
    )


_CODE_BLOCK = re.compile(r"^( *)\.\. code-block:: python[ \t]*\n", re.MULTILINE)
_MARKER = re.compile(
    r"^ *\.\. doc-test: (skip|requires [\w.]+)\b[^\n]*\n(?:[ \t]*\n)*\Z", re.MULTILINE
)


def _code_blocks(text: str):
    """``(line number, source, marker)`` of each ``.. code-block:: python`` of a page.

    The marker is the ``.. doc-test: ...`` comment right before the block, if any.
    """
    for m in _CODE_BLOCK.finditer(text):
        indent = len(m.group(1))
        lines = text[m.end():].split("\n")
        i = 0  # skip the directive's options (":caption: ...") and the blank line
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1
        body = []
        for line in lines[i:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        if not any(x.strip() for x in body):
            continue  # an empty block: nothing to run (Sphinx warns about it anyway)
        width = min(len(x) - len(x.lstrip()) for x in body if x.strip())
        source = "\n".join(x[width:] for x in body).strip("\n") + "\n"
        marker = _MARKER.search(text[: m.start()])
        yield text.count("\n", 0, m.start()), source, marker.group(1) if marker else None


def _page_doctest(page: str, globs: dict) -> tuple[doctest.DocTest, list[str]]:
    """The page's ``>>>`` examples and python code blocks as one doctest, in page order."""
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    examples = doctest.DocTestParser().get_examples(text, name=page)
    skipped = []
    for lineno, source, marker in _code_blocks(text):
        if marker == "skip":
            skipped.append(f"line {lineno + 1}: skip")
            continue
        if marker is not None:
            module = marker.split()[1]
            if importlib.util.find_spec(module.split(".")[0]) is None:
                skipped.append(f"line {lineno + 1}: {module} not installed")
                continue
        # doctest compiles an example as one interactive statement; a block is a module
        where = f"docs/{page}, code block at line {lineno + 1}"
        code = f"exec(compile({source!r}, {where!r}, 'exec'))"
        examples.append(doctest.Example(code, "", lineno=lineno))
    examples.sort(key=lambda e: e.lineno)
    return doctest.DocTest(examples, globs, page, str(path), 0, text), skipped


def _gen_ops():
    spec = importlib.util.spec_from_file_location("_tapejit_docs_gen_ops", DOCS / "_gen_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_ops_lists_every_op():
    text = _gen_ops().render_ops()
    for op in tapejit.OPS:
        assert f"``{op.name}``" in text, op.name
        # the opcode heads the row of its op
        assert f"   * - {op.code}\n     - ``{op.name}``\n" in text, (op.code, op.name)
        assert f"``{op.value}``" in text, op.name
        for partial in op.partials:
            assert f"``{partial}``" in text, (op.name, partial)
        if op.doc:
            assert op.doc in text, op.name


def test_render_ops_lists_supported_numpy_functions():
    from tapejit._numpy_funcs import supported_functions

    text = _gen_ops().render_ops()
    for name in supported_functions():
        assert f"``{name}``" in text, name


def test_write_ops_keeps_an_unchanged_file(tmp_path):
    gen = _gen_ops()
    target = tmp_path / "_generated" / "ops.rst"
    assert gen.write_ops(target) is True
    assert target.read_text(encoding="utf-8") == gen.render_ops()
    assert gen.write_ops(target) is False


def test_ops_page_includes_the_generated_listing():
    assert ".. include:: _generated/ops.rst" in (DOCS / "ops.rst").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", _pages())
def test_examples_of_page_run(page, tmp_path, monkeypatch):
    # Files the examples write go to a scratch folder; a subprocess they start (the CLI)
    # must still import this working tree's tapejit.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    test, _skipped = _page_doctest(page, {"__name__": "__docs__"})
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    report = io.StringIO()
    result = runner.run(test, out=report.write, clear_globs=True)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples failed in docs/{page}:\n"
        + report.getvalue()
    )
    if page in PAGES_WITH_EXAMPLES or (
        page.startswith("tutorials/") and page != "tutorials/index.rst"
    ):
        assert result.attempted > 0, f"{page} lost its examples"


def test_code_blocks_are_found():
    text = (
        "Intro.\n\n.. code-block:: python\n\n   a = 1\n\n   b = a + 1\n\nText.\n\n"
        ".. doc-test: requires no_such_module_xyz\n\n"
        "  .. code-block:: python\n     :caption: c\n\n     import no_such_module_xyz\n"
        "\n.. code-block:: python\n\n   raise SystemExit\n"
    )
    blocks = list(_code_blocks(text))
    assert [(n, src, mark) for n, src, mark in blocks] == [
        (2, "a = 1\n\nb = a + 1\n", None),
        (12, "import no_such_module_xyz\n", "requires no_such_module_xyz"),
        (17, "raise SystemExit\n", None),
    ]


def test_a_failing_code_block_fails_its_page(tmp_path, monkeypatch):
    page = tmp_path / "broken.rst"
    page.write_text(
        "T\n=\n\n>>> 1 + 1\n2\n\n.. code-block:: python\n\n   x = 1 / 0\n\n"
        ".. doc-test: requires no_such_module_xyz\n\n.. code-block:: python\n\n"
        "   import no_such_module_xyz\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    test, skipped = _page_doctest("broken.rst", {})
    assert len(test.examples) == 2 and len(skipped) == 1
    runner = doctest.DocTestRunner(verbose=False)
    assert runner.run(test, out=lambda s: None).failed == 1


def _toctree_entries(page: Path) -> set[str]:
    """The entries of the toctrees of a page, as paths relative to ``docs/``."""
    entries = set()
    text = page.read_text(encoding="utf-8")
    for block in re.finditer(r"^\.\. toctree::\n((?:[ \t]+.*\n|[ \t]*\n)*)", text, re.M):
        for line in block.group(1).splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                target = (page.parent / line).relative_to(DOCS).as_posix()
                entries.add(target)
    return entries


def test_every_page_is_in_the_toctree():
    pages = {p[: -len(".rst")] for p in _pages()}
    listed = set()
    for page in pages:
        listed |= _toctree_entries(DOCS / f"{page}.rst")
    assert listed <= pages, f"toctree entries without a page: {listed - pages}"
    assert pages - listed == {"index"}, f"pages in no toctree: {pages - listed - {'index'}}"
    # and every page is reachable from the root
    reached, todo = set(), ["index"]
    while todo:
        page = todo.pop()
        if page not in reached:
            reached.add(page)
            todo.extend(_toctree_entries(DOCS / f"{page}.rst"))
    assert reached == pages, f"not reachable from index.rst: {pages - reached}"


def _public_names() -> list[str]:
    """Qualified public names: ``tapejit.__all__``, ``tapejit.optimize.__all__``,
    ``tapejit.dask.__all__`` (read from the source: Dask need not be installed)."""
    names = [f"tapejit.{n}" for n in tapejit.__all__]
    names += [f"tapejit.optimize.{n}" for n in tapejit.optimize.__all__]
    tree = ast.parse((ROOT / "tapejit" / "dask.py").read_text(encoding="utf-8"))
    dask_all = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    )
    names += ["tapejit.dask"] + [f"tapejit.dask.{n}" for n in dask_all]
    return names


def test_api_reference_documents_every_public_name():
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:\w+):: (tapejit[\w.]*)\s*$", text, re.M))
    missing = [n for n in _public_names() if n not in documented]
    assert not missing, f"docs/api.rst does not document {missing}"
    assert {"tapejit.share", "tapejit.SharedTape", "tapejit.evaluate_file",
            "tapejit.load"} <= documented


PERF_TABLE = DOCS / "_include" / "performance_table.rst"


def test_performance_page_includes_the_generated_table():
    page = (DOCS / "performance.rst").read_text(encoding="utf-8")
    assert ".. include:: _include/performance_table.rst" in page
    table = PERF_TABLE.read_text(encoding="utf-8")
    assert "asv_bench/compare_peers.py" in table  # says where it comes from
    assert ".. list-table::" in table
    rows = re.findall(r"^   \* - (.*)$", table, re.M)
    workloads = rows[1:]
    assert rows[0] == "workload" and len(workloads) >= 6
    for name in ("seed value_and_grad", "rosen2", "rosen_ext", "record", "sinfit"):
        assert any(name in w for w in workloads), name


def test_compare_peers_rst_writer(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "_tapejit_compare_peers", ROOT / "asv_bench" / "compare_peers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = module.Row("demo workload, 1 point")
    row.cells = {"tapejit": module.Timing(2e-6, 1e-6, 10, 3), "hand numba": None,
                 "jax": "n/a: not installed", "casadi": module.Timing(4e-6, 4e-6, 10, 3),
                 "autograd": None}
    row.notes.append("a note with `code` and *stars*")
    row.paired = 1.25  # the interleaved tapejit / hand numba ratio, a column of its own
    text = module.rst_report([row], ["- python 3", "- cpu: x"], quick=True, seconds=1.5,
                             command="python asv_bench/compare_peers.py --quick")
    assert ".. list-table::" in text and "   * - demo workload, 1 point\n" in text
    assert "     - 2 µs\n" in text and "     - 0.5\n" in text  # time, tapejit / casadi
    assert "n/a: not installed" in text
    assert "     - tapejit / hand numba, interleaved\n" in text and "     - 1.25\n" in text
    assert "1 point: a note with ``code`` and \\*stars\\*\n" in text
    assert "python asv_bench/compare_peers.py --quick" in text


def test_repository_map_names_every_module():
    text = (DOCS / "internals.rst").read_text(encoding="utf-8")
    start = text.index(".. _repository-map:")
    repo_map = text[start:]
    modules = sorted((ROOT / "tapejit").rglob("*.py"))
    assert modules
    missing = [
        str(m.relative_to(ROOT).as_posix())
        for m in modules
        if f"``{m.relative_to(ROOT).as_posix()}``" not in repo_map
    ]
    assert not missing, f"docs/internals.rst repository map does not mention {missing}"


def test_the_program_header_table_is_the_program_formats():
    from tapejit import _program

    text = (DOCS / "internals.rst").read_text(encoding="utf-8")
    table = text[text.index(".. list-table:: Header of the packed program"):]
    table = table[: table.index("\n\n", table.index("* - Index"))]
    rows = re.findall(r"\* - (\d+)\n\s+- ``(\w+)``", table)
    assert len(rows) == _program.HEADER
    assert {name: int(i) for i, name in rows} == {
        name: getattr(_program, name) for _, name in rows}


def test_repository_map_names_only_paths_that_exist():
    text = (DOCS / "internals.rst").read_text(encoding="utf-8")
    rows = text[text.index(".. _repository-map:"):].split("   * - ")[2:]
    named = [m for row in rows for m in re.findall(r"``([^`]+)``", row.split("\n     - ")[0])]
    assert len(named) > 40
    gone = [n for n in named if not list(ROOT.glob(n.rstrip("/")))]
    assert not gone, f"docs/internals.rst repository map names paths that do not exist: {gone}"


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "html" / "ops.html").exists()
