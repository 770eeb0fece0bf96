"""The kernel module is assembled from ordinary files under ``tapejit/_kernels``.

Each kernel file's code below its marker line reaches the generated module verbatim; the
generated sweeps and the kernel files name the program's fields (no ``prog[6]``); the
partial sources of the reverse sweeps are derived from the table's expressions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tapejit._kernels.codegen import SWEEPS, generate_source, kernel_code
from tapejit._kernels.sources import MARKER, kernel_body, kernel_path
from tapejit._ops import BY_NAME, OPS, PartialSource, partial_source

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

FILES = ("njit", "scalar", "libm", "plan", "reverse", "support", "point", "batch")


def test_every_kernel_file_is_in_the_module_below_its_marker():
    source = generate_source()
    for name in FILES:
        text = kernel_path(name).read_text()
        _, body = text.split(MARKER + "\n")
        assert kernel_body(name) == body
        assert body.strip() in source, name
    # the imports above the markers are for tools: the module defines each name once
    for fn in ("reverse_stored_chunk", "_azmul", "value_grad_point", "forward_chunk"):
        assert len(re.findall(rf"^def {fn}\(", source, re.M)) == 1, fn


def test_no_bare_program_index_in_the_kernels():
    source = generate_source()
    assert not re.findall(r"prog\[[^\]]*\b\d+\b[^\]]*\]", source)
    assert "N_INSTR = 6" in source and "SRC_CONST = 2" in source


def test_partial_sources_are_derived_from_the_expressions():
    assert BY_NAME["mul"].partial_sources == (PartialSource("value", "b"),
                                              PartialSource("value", "a"))
    assert BY_NAME["sub"].partial_sources == (PartialSource("constant", factor=1.0),
                                              PartialSource("constant", factor=-1.0))
    assert BY_NAME["square"].partial_sources == (PartialSource("value", "a", 2.0),)
    assert BY_NAME["exp"].partial_sources == (PartialSource("value", "r"),)
    assert BY_NAME["sin"].partial_sources == (PartialSource("stored"),)
    assert BY_NAME["sign"].partial_sources == (PartialSource("zero", factor=0.0),)
    assert partial_source("-2.5 * c") == PartialSource("value", "c", -2.5)
    assert partial_source("a * b").kind == "stored"
    for op in OPS:
        assert len(op.partial_sources) == op.arity


def test_kernel_code_of_each_sweep():
    for sweep in SWEEPS:
        text = kernel_code("mul", sweep)
        assert text.startswith("# "), sweep
    assert "wr[p] = a * b" in kernel_code("mul", "forward")
    assert "if op == 3:  # mul" in kernel_code("mul", "forward_point")
    reverse = kernel_code("mul", "reverse")
    assert "no per-op code" in reverse and "def reverse_stored_chunk(" in reverse
    assert "d/da = b: the value of b" in reverse
    assert "all its partials are zero" in kernel_code("sign", "hvp")
    with pytest.raises(ValueError, match="the ops are: add, sub, mul"):
        kernel_code("mull", "forward")
    with pytest.raises(ValueError, match="the sweeps are: forward, forward_point"):
        kernel_code("mul", "backward")


def test_the_module_is_imported_from_its_bytecode_also_where_python_writes_none(tmp_path):
    """The generated module is long: a process that compiled its source at every start
    (``PYTHONDONTWRITEBYTECODE``, as in many containers) would pay for it at every start."""
    script = ("import importlib.util, sys\n"
              "from tapejit._kernels.cache import load_kernels\n"
              "assert sys.dont_write_bytecode\n"
              "m = load_kernels()\n"
              "print(importlib.util.cache_from_source(m.__file__))\n")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TAPEJIT_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    pyc = Path(out[0])
    assert pyc.is_file() and tmp_path in pyc.parents
    stamp = pyc.stat().st_mtime_ns
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    assert pyc.stat().st_mtime_ns == stamp  # read, not written again


def test_a_warm_process_imports_the_module_its_files_generated_without_generating(tmp_path):
    """The first process records which module the package's files generate; the next one
    imports it without generating the source. A record whose module is missing (or is
    not a digest) is ignored and written anew."""
    script = ("import sys\n"
              "from tapejit._kernels import cache\n"
              "if sys.argv[1] == 'warm':\n"
              "    def refuse():\n"
              "        raise AssertionError('generated again')\n"
              "    cache.generate_source = refuse\n"
              "print(cache.load_kernels().__name__)\n")
    env = {**os.environ, "TAPEJIT_CACHE_DIR": str(tmp_path)}

    def run(how):
        return subprocess.run([sys.executable, "-c", script, how], env=env,
                              capture_output=True, text=True, check=True).stdout.strip()

    name = run("cold")
    (record,) = (tmp_path / "sources").iterdir()
    assert name == f"tapejit_kernels_{record.read_text().strip()}"
    assert run("warm") == name
    for stale in ("0123456789abcdef\n", "../../etc\n"):
        record.write_text(stale)
        assert run("cold") == name
        assert record.read_text() == name.rsplit("_", 1)[1] + "\n"
    record.write_text("0123456789abcdef\n")
    with pytest.raises(subprocess.CalledProcessError):  # a record of no module is not used
        run("warm")


def test_the_inputs_key_follows_every_file_of_the_package(tmp_path, monkeypatch):
    from tapejit._kernels import cache

    (tmp_path / "_kernels").mkdir()
    (tmp_path / "_ops.py").write_text("OPS = ()\n")
    (tmp_path / "_kernels" / "scalar.py").write_text("x = 1\n")
    monkeypatch.setattr(cache, "_PACKAGE", tmp_path)
    keys = {cache._inputs_key()}
    (tmp_path / "_kernels" / "scalar.py").write_text("x = 2\n")
    keys.add(cache._inputs_key())
    (tmp_path / "_kernels" / "libm.py").write_text("")
    keys.add(cache._inputs_key())
    assert len(keys) == 3
