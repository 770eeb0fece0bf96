"""Checks that keep the documentation in ``docs/`` true to the code.

* The op listing is generated from ``tapejit.OPS``: every op and opcode appears, and
  the build puts it into ``ops.rst`` as Sphinx reads it (no file is written).
* The examples of every page under ``docs/`` (tutorials included) run: the ``>>>``
  examples give the output shown, and the ``.. code-block:: python`` blocks run without
  error, in page order and in one namespace per page; no example output names a private
  module (a traceback shows ``tapejit.BranchError: ...``, the public name). A block
  preceded by the comment
  ``.. doc-test: requires MODULE`` is left out where MODULE is not installed, and one
  preceded by ``.. doc-test: skip (reason)`` is never run.
* Every page is in a toctree; every tutorial has examples.
* The API reference documents every public name of ``tapejit``, ``tapejit.optimize``
  and ``tapejit.dask``.
* The performance page includes the committed table written by
  ``asv_bench/compare_peers.py --rst``, and the table is well formed.
* The repository map of the internals page names every module under ``tapejit/``.
* A full Sphinx build with warnings as errors (only where Sphinx is installed), which
  writes nothing under ``docs/``; and its pages seen in a headless browser (only where
  Chromium and the ``playwright`` package are installed): math rendered, nothing wider
  than the text column unless it scrolls.

None of these but the last two need Sphinx: they read the files directly.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


#: A name inside a private module of tapejit, as a traceback or a repr shows it.
_PRIVATE_NAME = re.compile(r"\btapejit(?:\.\w+)*\._\w+\.(\w+)")


def _as_public(text: str) -> str:
    """``text`` with ``tapejit._errors.BranchError`` read as ``tapejit.BranchError`` where
    the public name is the same object (it is what the pages show)."""

    def public(m: re.Match) -> str:
        name = m.group(1)
        return f"tapejit.{name}" if hasattr(tapejit, name) else m.group(0)

    return _PRIVATE_NAME.sub(public, text)


class _PublicNamesChecker(doctest.OutputChecker):
    """Compares an example's output after :func:`_as_public`: a raised
    ``tapejit._errors.TracingError`` matches the page's ``tapejit.TracingError: ...``
    line, message included (``IGNORE_EXCEPTION_DETAIL`` would skip the message)."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return super().check_output(want, _as_public(got), optionflags)


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
    from tapejit import supported_functions

    text = _gen_ops().render_ops()
    for name in supported_functions():
        assert f"``{name}``" in text, name


def _conf():
    """``docs/conf.py`` as a module (it imports ``_gen_ops`` and tapejit, not Sphinx)."""
    spec = importlib.util.spec_from_file_location("_tapejit_docs_conf", DOCS / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_reads_the_op_listing_into_the_ops_page():
    conf = _conf()
    text = (DOCS / "ops.rst").read_text(encoding="utf-8")
    source = [text]
    conf._insert_ops_listing(None, "ops", source)
    assert conf.OPS_INCLUDE not in source[0]
    assert source[0] == text.replace(conf.OPS_INCLUDE, _gen_ops().render_ops())
    other = [text]
    conf._insert_ops_listing(None, "api", other)
    assert other == [text]  # only the ops page
    with pytest.raises(RuntimeError, match="lost the line"):
        conf._insert_ops_listing(None, "ops", ["Ops\n===\n"])


def test_ops_page_includes_the_generated_listing():
    assert ".. include:: _generated/ops.rst" in (DOCS / "ops.rst").read_text(encoding="utf-8")


#: What marks a page's examples as running the optimised kernels, compiled in the test's
#: process wherever they are not cached yet (on the generic tier too): a user's
#: ``@numba.njit`` code calling them.
_NEEDS_KERNELS = ("@numba.njit",)


def _pages_marked() -> list:
    """:func:`_pages`, those that need the optimised kernels (:data:`_NEEDS_KERNELS`)
    marked ``kernels``."""
    def needs(page: str) -> bool:
        text = (DOCS / page).read_text(encoding="utf-8")
        return any(k in text for k in _NEEDS_KERNELS)

    return [pytest.param(page, marks=pytest.mark.kernels) if needs(page) else page
            for page in _pages()]


@pytest.mark.parametrize("page", _pages_marked())
def test_examples_of_page_run(page, tmp_path, monkeypatch):
    # Files the examples write go to a scratch folder; a subprocess they start (the CLI)
    # must still import this working tree's tapejit.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    test, _skipped = _page_doctest(page, {"__name__": "__docs__"})
    runner = doctest.DocTestRunner(
        checker=_PublicNamesChecker(),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
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


@pytest.mark.parametrize("page", _pages())
def test_example_output_names_no_private_module(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    shown = [
        (e.lineno + 1, line)
        for e in doctest.DocTestParser().get_examples(text, name=page)
        for line in e.want.splitlines()
        if _PRIVATE_NAME.search(line) or "tapejit._" in line
    ]
    assert not shown, (
        f"docs/{page} shows private module paths in example output (write the public "
        f"name, e.g. 'tapejit.BranchError: ...' after 'Traceback ...' and '...'): {shown}"
    )


def test_docstring_example_output_names_no_private_module():
    # the API page shows the public objects' docstrings, examples included
    finder = doctest.DocTestFinder(recurse=True)
    shown = []
    for module in (tapejit, tapejit.optimize):
        for name in module.__all__:
            for test in finder.find(getattr(module, name), f"{module.__name__}.{name}"):
                shown += [(test.name, e.want) for e in test.examples
                          if _PRIVATE_NAME.search(e.want) or "tapejit._" in e.want]
    assert not shown, f"docstring examples show private module paths: {shown}"


def test_a_private_exception_name_matches_the_public_one_shown():
    checker = _PublicNamesChecker()
    flags = doctest.ELLIPSIS
    got = "tapejit._errors.TracingError: float() of a traced value\n"
    assert checker.check_output("tapejit.TracingError: float() ...\n", got, flags)
    assert not checker.check_output("tapejit.TracingError: int() ...\n", got, flags)
    assert not checker.check_output("tapejit.BranchError: float() ...\n", got, flags)
    # a private name with no public twin stays as it is
    assert _as_public("tapejit._ops.COMPATIBLE_FINGERPRINTS") == (
        "tapejit._ops.COMPATIBLE_FINGERPRINTS")


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
    assert not re.search(r"/tmp/|/work/|/home/|[A-Z]:\\", table), "a local path leaked"
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
    machine = ["- python 3", "- cpu: x", "- numpy 2.4, tapejit 0.1.0 (/tmp/scratch/tapejit)"]
    args = module.argparse.Namespace(quick=True, no_peers=False, only="seed_point,rosen2",
                                     out="/tmp/scratch/report.md", json="/tmp/scratch/t.json",
                                     rst="/tmp/scratch/table.rst")
    command = module.rst_command(args)
    assert command == ("python asv_bench/compare_peers.py --quick --only seed_point,rosen2 "
                       "--rst docs/_include/performance_table.rst")
    text = module.rst_report([row], machine, quick=True, seconds=1.5, command=command)
    # no path of the machine that ran it: not the scratch files, not where tapejit lay
    assert "/tmp/" not in text and "tapejit 0.1.0\n" in text
    assert ".. code-block:: text\n" in text and "   :class: perf-table\n" in text
    assert ".. list-table::" in text and "   * - demo workload, 1 point\n" in text
    assert "     - 2 µs\n" in text and "     - 0.5\n" in text  # time, tapejit / casadi
    assert "n/a: not installed" in text
    assert "     - tapejit / hand numba, interleaved\n" in text and "     - 1.25\n" in text
    assert "1 point: a note with ``code`` and \\*stars\\*\n" in text
    assert f"``{command}``" in text


@pytest.mark.parametrize("command", ["", "inspect", "eval", "demo", "compile", "kernels"])
def test_cli_help_names_only_what_exists(command):
    from tapejit import _cli

    proc = subprocess.run([sys.executable, "-m", "tapejit", *command.split(), "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    named = re.findall(r"\b(tapejit|Tape|tape)\.(\w+)", text)
    missing = [f"{owner}.{name}" for owner, name in named
               if not hasattr(tapejit if owner == "tapejit" else tapejit.Tape, name)]
    assert not missing, f"tapejit {command} --help names {missing}, which do not exist"
    assert "``" not in text  # plain text, not reStructuredText
    if command in ("inspect", "eval"):
        assert "Tape.save" in text and _cli.EXIT_TAPE == 2 and "exit 2" in text


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


def _tree_state(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (ignored ones included), with its mtime."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """The HTML docs built once into a scratch folder: the Sphinx run, the folder, and
    the state of ``docs/`` before and after the build."""
    for module in ("sphinx", "numpydoc", "latex2mathml"):
        pytest.importorskip(module, reason=f"{module} is not installed (the docs extra)")
    out = tmp_path_factory.mktemp("docs_build")
    before = _tree_state(DOCS)
    # as a user runs it: Python free to write bytecode beside the modules it imports
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    return SimpleNamespace(proc=proc, html=out / "html", out=out, before=before,
                           after=_tree_state(DOCS))


def test_sphinx_build_has_no_warnings(built_docs):
    assert built_docs.proc.returncode == 0, built_docs.proc.stdout + built_docs.proc.stderr
    ops = (built_docs.html / "ops.html").read_text(encoding="utf-8")
    # the listing rendered from the op table is in the page (read in at build time)
    assert all(f"<span class=\"pre\">{op.name}</span>" in ops for op in tapejit.OPS)
    # math is MathML in the page: no script, nothing fetched when it is viewed
    page = (built_docs.html / "tutorials" / "hessians.html").read_text(encoding="utf-8")
    assert page.count("<math ") >= 5 and "mathjax" not in page.lower()
    # defaults as the source writes them: load(..., max_bytes=MAX_BYTES), not 4294967296
    api = (built_docs.html / "api.html").read_text(encoding="utf-8")
    assert ">MAX_BYTES<" in api and str(1 << 32) not in api


def test_sphinx_build_writes_nothing_into_the_source_tree(built_docs):
    assert built_docs.proc.returncode == 0, built_docs.proc.stderr
    before, after = built_docs.before, built_docs.after
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    touched = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or touched), (
        f"sphinx-build changed docs/: added {added}, removed {removed}, modified {touched}"
    )


#: Pages whose screenshots the browser test keeps: math (inline and display), wide
#: code, the performance table and the generated op table. It measures every page.
SCREENSHOT_PAGES = ("performance.html", "getting_started.html", "tutorials/hessians.html",
                    "ops.html")
#: A table far wider than the column, added to a page to see the style make it scroll.
_ADD_WIDE_TABLE = """() => {
  const t = document.createElement('table');
  t.className = 'docutils';
  t.innerHTML = '<tr><td style="white-space: nowrap">' + 'wide '.repeat(400) + '</td></tr>';
  document.querySelector('div.body').appendChild(t);
}"""
#: What a page looks like in the browser, measured in the page (see the test below).
_MEASURE = r"""() => {
  const column = document.querySelector('div.body').getBoundingClientRect();
  const prose = document.querySelector('div.body').cloneNode(true);
  prose.querySelectorAll('pre, code, math, script, style').forEach(e => e.remove());
  const scroller = (el) => {
    for (let e = el; e && !e.matches('div.body'); e = e.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) return e;
    }
    return null;
  };
  const boxes = [...document.querySelectorAll('div.body pre, div.body table')].map(el => {
    const s = scroller(el);
    return {what: el.tagName.toLowerCase() + ': ' + el.innerText.trim().slice(0, 50),
            scroll: el.scrollWidth, room: el.parentElement.clientWidth,
            right: el.getBoundingClientRect().right,
            scroller_right: s ? s.getBoundingClientRect().right : null,
            scroller_fits: s ? s.scrollWidth >= el.scrollWidth - 1 : false};
  });
  return {
    column_right: column.right,
    page_scroll: document.documentElement.scrollWidth, window: window.innerWidth,
    raw_tex: prose.textContent.match(/\\[()\[\]]|\$\$|\\(frac|sum|ln|sin|mathbf|partial)\b/g),
    math: [...document.querySelectorAll('math')].map(m => {
      const r = m.getBoundingClientRect();
      return {display: getComputedStyle(m).display, width: r.width, height: r.height};
    }),
    boxes: boxes,
  };
}"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


def test_pages_render_in_a_browser_at_1280x800(built_docs):
    # Full-page screenshots of SCREENSHOT_PAGES stay in pytest's temporary folder
    # (.../docs_build0/screenshots/), to look at.
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed")
    chromium = _chromium()
    assert built_docs.proc.returncode == 0, built_docs.proc.stderr
    shots = built_docs.out / "screenshots"
    shots.mkdir()
    found = {}
    with sync_api.sync_playwright() as pw:
        # the flags keep a headless Chromium from reaching for the network at all
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for path in sorted(built_docs.html.rglob("*.html")):
                name = path.relative_to(built_docs.html).as_posix()
                page.goto(path.as_uri())
                found[name] = page.evaluate(_MEASURE)
                if name in SCREENSHOT_PAGES:
                    png = shots / name.replace("/", "_").replace(".html", ".png")
                    page.screenshot(path=str(png), full_page=True)
            page.goto((built_docs.html / "performance.html").as_uri())
            page.evaluate(_ADD_WIDE_TABLE)
            found["performance.html, a wide table added"] = page.evaluate(_MEASURE)
        finally:
            browser.close()
    assert len(found) > len(_pages())  # every page (and the index pages Sphinx adds)
    for name, m in found.items():
        assert not m["raw_tex"], f"{name} shows TeX source: {m['raw_tex']}"
        # MathML laid out as math (Chromium's "math" display types), with a size
        for el in m["math"]:
            assert "math" in el["display"] and el["width"] > 0 and el["height"] > 0, (name, el)
        # nothing runs past the text column; what is wider scrolls in a box that does not
        assert m["page_scroll"] <= m["window"], f"{name} scrolls sideways as a whole"
        for box in m["boxes"]:
            fits = box["scroll"] <= box["room"] and box["right"] <= m["column_right"] + 1
            scrolls = (box["scroller_right"] is not None and box["scroller_fits"]
                       and box["scroller_right"] <= m["column_right"] + 1)
            assert fits or scrolls, f"{name}: cut off at the text column: {box}"
    math_pages = ("performance.html", "getting_started.html", "tutorials/hessians.html")
    assert all(len(found[p]["math"]) >= 5 for p in math_pages), {
        p: len(found[p]["math"]) for p in math_pages}
    # the check saw what it is for: the performance table, a code block wider than the
    # column, and a table wider than the column (added), each scrolling in its own box
    assert any(b["what"].startswith("table: Median time per call")
               for b in found["performance.html"]["boxes"])
    wide = [b["what"] for m in found.values() for b in m["boxes"] if b["scroll"] > b["room"]]
    assert any(w.startswith("pre") for w in wide)
    assert any(w.startswith("table: wide") for w in wide)
