"""Checks that keep the documentation in ``docs/`` true to the code.

* The op listing is generated from ``tapejit.OPS``: every op and opcode appears.
* The ``>>>`` examples of the pages run and give the output shown.
* The repository map of the internals page names every module under ``tapejit/``.
* A full Sphinx build with warnings as errors (only where Sphinx is installed).

None of these but the last needs Sphinx: they read the files directly.
"""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import tapejit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Pages whose examples must exist (each has at least one ``>>>`` example).
PAGES_WITH_EXAMPLES = ("getting_started.rst", "ops.rst")


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


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_doctests_of_page_pass(page):
    result = doctest.testfile(
        str(DOCS / page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
        report=True,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page}"
    if page in PAGES_WITH_EXAMPLES:
        assert result.attempted > 0, f"{page} lost its examples"


def test_every_page_is_in_the_toctree():
    index = (DOCS / "index.rst").read_text(encoding="utf-8")
    for page in DOCS.glob("*.rst"):
        if page.stem != "index":
            assert f"   {page.stem}\n" in index, page.name


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
