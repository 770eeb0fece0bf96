"""Elementwise numpy functions that are not ufuncs, composed of op-table ops.

``np.round``/``np.around`` (numpy's own algorithm: multiply, ``rint``, divide),
``np.fix``, ``np.nan_to_num``, ``np.real``, ``np.imag``, ``np.angle`` (real input) and
``np.sinc``. Each composition gives numpy's values bit for bit; the derivative
conventions are those of the ops used (``rint`` and ``trunc`` have derivative 0,
``where`` gives the untaken operand an exactly zero adjoint), stated in docs/ops.

Registered into ``_numpy_funcs.FUNCTIONS``, which imports this module at its end.
:data:`UFUNC_COMPOSITIONS` holds ``np.divmod``, a ufunc with two results: no single op.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import TracingError
from ._numpy_funcs import implements
from ._tracer import emit


def _no_out(name: str, out: Any) -> None:
    if out is not None:
        raise TracingError(f"numpy.{name}(..., out=...) cannot be traced; assign the result "
                           "instead")


def _power_of_ten(n: int) -> float:
    """numpy's ``power_of_ten`` (``multiarray/calculation.c``): the same float for every
    ``n``, so that :func:`_round` gives numpy's bits."""
    if n < 9:
        return float(10**n)
    ret = 1e9
    for _ in range(n - 9):
        ret *= 10.0
    return ret


@implements(np.round, np.around)
def _round(a, decimals=0, out=None):
    _no_out("round", out)
    decimals = operator.index(decimals)
    if decimals == 0:
        return emit("rint", a)
    f = _power_of_ten(abs(decimals))
    if decimals > 0:
        return emit("div", emit("rint", emit("mul", a, f)), f)
    return emit("mul", emit("rint", emit("div", a, f)), f)


@implements(np.fix)
def _fix(x, out=None):
    _no_out("fix", out)
    return emit("trunc", x)


@implements(np.nan_to_num)
def _nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    big = np.finfo(np.float64).max
    posinf = big if posinf is None else float(posinf)
    neginf = -big if neginf is None else float(neginf)
    other = emit("where", emit("isnan", x), float(nan),
                 emit("where", emit("greater", x, 0.0), posinf, neginf))
    return emit("where", emit("isfinite", x), x, other)


@implements(np.real)
def _real(val):
    return val


@implements(np.imag)
def _imag(val):
    return np.zeros_like(val)


@implements(np.angle)
def _angle(z, deg=False):
    # numpy's arctan2(imag, real): 0 or pi (NaN for NaN), derivative 0
    a = emit("arctan2", 0.0, emit("stop_gradient", z))
    return emit("mul", a, 180.0 / np.pi) if deg else a


@implements(np.sinc)
def _sinc(x):
    return emit("sinc", x)


def _divmod(x1, x2):
    return emit("floor_divide", x1, x2), emit("mod", x1, x2)


#: ufuncs recorded as more than one op, by the function recording them: ``np.divmod``.
UFUNC_COMPOSITIONS: dict[np.ufunc, Callable] = {np.divmod: _divmod}
