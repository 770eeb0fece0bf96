"""Adding an elementwise op is one row of the op table (issue 18).

A copy of the ``tapejit`` package gets one more row in ``_ops.py`` and nothing else;
``tests/_new_op_check.py`` then records user code that calls the new op's numpy ufunc,
evaluates it in every sweep, saves and loads it and displays it, in a subprocess that
imports the copy, after ``tapejit compile`` of the copy (which must leave the check nothing
to compile).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tapejit

# Compiles the kernels of a copy of the package in a cache of its own (see tests/conftest.py).
pytestmark = pytest.mark.compiles

#: The row added to the copy's table, exactly as a maintainer would write it: a ufunc
#: (scipy.special's ``powm1``, ``x**y - 1``) that the table does not have yet, so the
#: tracer reaches it through the table.
ROW = '''\
    Op(120, "powm1", 2, "math.expm1(b * math.log(a))",
       ("b * (r + 1.0) / a", "(r + 1.0) * math.log(a)"),
       ("b * (b - 1.0) * (r + 1.0) / (a * a)",
        "(r + 1.0) * (1.0 + b * math.log(a)) / a",
        "(r + 1.0) * math.log(a) ** 2"),
       ScipySpecial("powm1"), ((0.5, 3.0), (-2.0, 2.0))),
'''


#: The kinds of call of ``_new_op_check.py``: one point and batched, values, gradients,
#: tangents, Jacobians both ways, Hessians (``tapejit._warmup.STEPS``).
STEPS_OF_THE_CHECK = ("forward, one point", "forward, batched", "gradient, one point",
                      "gradient, batched", "jvp, batched", "jacobian, batched",
                      "hessian, one point", "hessian, batched")


@pytest.mark.slow  # the new row changes the generated kernels: a cold compile of them all
def test_a_new_elementwise_op_is_one_table_row(tmp_path):
    shutil.copytree(Path(tapejit.__file__).parent, tmp_path / "tapejit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ops = tmp_path / "tapejit" / "_ops.py"
    text = ops.read_text()
    end = "\n]\n\n#: All ops"
    assert text.count(end) == 1, "the table's end moved; adjust this test"
    ops.write_text(text.replace(end, "\n" + ROW + end[1:]))
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           "TAPEJIT_CACHE_DIR": str(tmp_path / "cache"),
           "TAPEJIT_KERNELS": "optimized"}  # also where the suite runs on the generic tier
    # `tapejit compile` of the copy fills its cache on both cores with the kinds of call the
    # check makes (every sweep the code generator writes per op; not the families'
    # routines, float32 or tapes too long for a chunk): the check then compiles nothing
    only = [arg for step in STEPS_OF_THE_CHECK for arg in ("--only", step)]
    warm = subprocess.run([sys.executable, "-m", "tapejit", "compile", "--jobs", "2", *only],
                          env=env, capture_output=True, text=True, timeout=3000, cwd=tmp_path)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "kernels ready" in warm.stderr, warm.stderr
    check = Path(__file__).with_name("_new_op_check.py")
    env.pop("TAPEJIT_QUIET", None)
    run = subprocess.run([sys.executable, str(check), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=3000, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ok"), run.stdout
    assert "compiling its interpreters" not in run.stderr, run.stderr
