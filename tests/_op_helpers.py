"""What the per-op tests of ``test_ops.py`` and ``test_second_order.py`` share: how an op
of the table is reached from user code, recorded, sampled and compared with numpy.

Everything here is read from the op table (``tapejit._ops``): the route by which traced
code reaches the op (``op.trace``, else its numpy reference), the sampling intervals
(``op.domain``), the edge cases planted among the samples (``op.edges``) and the
distance to kinks (``op.kink``). A new op needs no entry here.
"""

from __future__ import annotations

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
