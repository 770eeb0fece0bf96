"""What the per-op tests of ``test_ops.py`` and ``test_second_order.py`` share: how an op
of the table is reached from user code, recorded, sampled and compared with numpy.

Everything here is read from the op table (``tapejit._ops``): the route by which traced
code reaches the op (``op.trace``, else its numpy reference), the sampling intervals
(``op.domain``), the edge cases planted among the samples (``op.edges``) and the
distance to kinks (``op.kink``). A new op needs no entry here.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import numpy as np

import tapejit
from tapejit import OPS, Op

BY_NAME = {op.name: op for op in OPS}
OP_NAMES = [op.name for op in OPS]

_TAPES: dict[str, tapejit.Tape] = {}


def spec(op: Op) -> Callable[..., object]:
    """How user code reaches ``op``: its numpy reference called on traced values, or
    ``op.trace`` where that does not reach it."""
    return op.trace or op.numpy


def tape_of(name: str) -> tapejit.Tape:
    """The spec of op ``name`` recorded on scalar operands, once per session."""
    if name not in _TAPES:
        op = BY_NAME[name]
        _TAPES[name] = tapejit.record(spec(op), *([0.5] * op.arity))
    return _TAPES[name]


def reference(op: Op, X: np.ndarray) -> np.ndarray:
    """``op.numpy`` at the points ``X`` (one row per point), as float64."""
    with np.errstate(all="ignore"):
        return np.asarray(op.numpy(*X.T), dtype=np.float64)


def sample(op: Op, n: int, seed: int) -> np.ndarray:
    """``n`` points from ``op.domain``, with the op's edge cases (``op.edges``: exact
    ties, bounds, integer conditions) planted in some of them."""
    rng = np.random.default_rng([seed, op.code])
    X = np.column_stack([rng.uniform(lo, hi, n) for lo, hi in op.domain])
    if op.edges is not None:
        op.edges(X)
    return X


def away_from_kinks(op: Op, X: np.ndarray, gap: float = 1e-3) -> np.ndarray:
    """Rows of ``X`` at least ``gap`` away from every kink or jump of ``op``."""
    if op.kink is None:
        return X
    return X[op.kink(*X.T) > gap]


def fixed_operands(op: Op) -> tuple[int, ...]:
    """Operands with an identically zero partial (``where``'s condition): finite
    differences hold them fixed, and their derivative must be exactly 0."""
    return tuple(k for k, p in enumerate(op.partials) if p == "0.0")


#: The Python of the peer tools (JAX, autograd), an independent reference for derivative
#: conventions; tests that need it are skipped where it is not installed.
PEERS_PYTHON = os.environ.get("TAPEJIT_PEERS_PYTHON", "/work/venv-peers/bin/python")


def jax_gradients(expr: str, points: np.ndarray, module: str = "jnp") -> np.ndarray:
    """JAX's gradient of ``lambda *x: <expr>`` (in ``jnp`` or ``jax.scipy.special``
    as ``jss``, float64) at each row of ``points``, computed by the peers' Python in a
    subprocess; the test is skipped where that Python or JAX is missing."""
    import pytest

    if not os.path.exists(PEERS_PYTHON):
        pytest.skip(f"no peer Python at {PEERS_PYTHON} (TAPEJIT_PEERS_PYTHON)")
    n = points.shape[1]
    args = ", ".join(f"x{i}" for i in range(n))
    script = (
        "import json, sys\n"
        "import jax\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "import jax.numpy as jnp\n"
        "import jax.scipy.special as jss\n"
        f"f = lambda {args}: {expr}\n"
        f"g = jax.grad(f, argnums=tuple(range({n})))\n"
        "pts = json.loads(sys.stdin.read())\n"
        "print(json.dumps([[float(v) for v in g(*p)] for p in pts]))\n"
    )
    run = subprocess.run([PEERS_PYTHON, "-c", script], input=json.dumps(points.tolist()),
                         capture_output=True, text=True, timeout=600,
                         env={"PATH": os.environ.get("PATH", ""), "JAX_PLATFORMS": "cpu"})
    if run.returncode != 0:
        if "No module named 'jax'" in run.stderr:
            pytest.skip("JAX is not installed in the peer Python")
        raise RuntimeError(run.stderr)
    return np.array(json.loads(run.stdout.strip().splitlines()[-1]), dtype=np.float64)


def same_bits(a, b) -> bool:
    """Bit for bit, except that any NaN equals any NaN (payloads may differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    m = ~np.isnan(a)
    return bool(np.array_equal(a[m].view(np.uint64), b[m].view(np.uint64)))
