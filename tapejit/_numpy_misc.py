"""Other numpy functions on tracers: truth reductions, polynomials, interpolation,
integration and differences.

``all``/``any`` return traced truth values (1.0/0.0), so ``if np.all(x > 0):`` records one
guard and ``np.where(np.any(...), a, b)`` none. ``interp`` with traced ``x`` records the
interval each element fell in at the recording point as one guard; ``polyval``,
``trapezoid`` and ``gradient`` are numpy's own formulas, op for op, so their values are
numpy's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from . import _numpy_order as order
from ._errors import TracingError
from ._numpy_funcs import implements
from ._tracer import Tracer, emit, ids_of, is_traced, lift, recorder_of


def _no_out(name: str, out: Any) -> None:
    if out is not None:
        raise TracingError(f"numpy.{name}(..., out=...) cannot be traced; assign the "
                           "result instead")


# -- truth reductions --------------------------------------------------------------------
def _truth_reduce(biggest: bool, name: str):
    def impl(a, axis=None, out=None, keepdims=False, *, where=np._NoValue):
        _no_out(name, out)
        rec = recorder_of([a])
        truth = emit("not_equal", a, 0.0)  # 1.0 where numpy reads True (NaN included)
        kw = {} if where is np._NoValue else {"where": where,
                                               "initial": 0.0 if biggest else 1.0}
        r = (np.max if biggest else np.min)(truth, axis=axis, keepdims=keepdims, **kw)
        if not isinstance(r, Tracer):  # folded to constants
            return np.asarray(r) != 0.0
        return Tracer(rec, ids_of(r), truth=True)

    return impl


implements(np.all)(_truth_reduce(False, "all"))
implements(np.any)(_truth_reduce(True, "any"))


@implements(np.ptp)
def _ptp(a, axis=None, out=None, keepdims=False):
    """numpy's ``max - min`` (each extreme's adjoint to its first occurrence)."""
    _no_out("ptp", out)
    return np.subtract(np.max(a, axis=axis, keepdims=keepdims),
                       np.min(a, axis=axis, keepdims=keepdims))


# -- polynomials -------------------------------------------------------------------------
@implements(np.polyval)
def _polyval(p, x):
    """Horner's scheme as numpy runs it (``y = y * x + c`` from a zero ``y``)."""
    if isinstance(p, np.poly1d) or isinstance(x, np.poly1d):
        raise TracingError("numpy.polyval with a poly1d cannot be traced; pass the "
                           "coefficients as an array")
    if not isinstance(p, Tracer):
        p = np.asarray(p, dtype=np.float64) if not is_traced(p) else p
    if not isinstance(x, Tracer):
        x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x)
    for pv in p:
        y = y * x + pv
    return y


# -- interpolation -----------------------------------------------------------------------
@implements(np.interp)
def _interp(x, xp, fp, left=None, right=None, period=None):
    """numpy's piecewise-linear interpolation, ``slope * (x - xp[j]) + fp[j]`` with
    ``slope = (fp[j+1] - fp[j]) / (xp[j+1] - xp[j])``.

    The interval ``j`` of each element of ``x`` is the one at the recording point; where
    ``x`` or ``xp`` is traced it is guarded (``xp[j] <= x < xp[j+1]``, ``x < xp[0]``,
    ``x > xp[-1]`` or ``x == xp[-1]``), so a point where an element changes interval is
    caught. At a knot the derivative is the right interval's.
    """
    if period is not None:
        raise TracingError("numpy.interp(..., period=...) cannot be traced; reduce x "
                           "into one period with np.mod first")
    rec = recorder_of([x, xp, fp, left, right])
    xi, xpi, fpi = (lift(rec, v) for v in (x, xp, fp))
    if xpi.ndim != 1 or fpi.ndim != 1:
        raise ValueError("object too deep for desired array")
    if xpi.size != fpi.size:
        raise ValueError("fp and xp are not of the same length.")
    if xpi.size == 0:
        raise ValueError("array of sample points is empty")
    xv, xpv = rec.values(xi), rec.values(xpi)
    if np.isnan(xv).any() or np.isnan(xpv).any():
        raise TracingError("numpy.interp at a NaN (in x or xp at the recording point) "
                           "cannot be traced; record at a point without NaN")
    n = xpv.size
    X, XP, FP = Tracer(rec, xi), Tracer(rec, xpi), Tracer(rec, fpi)
    lo = FP[0] if left is None else left
    hi = FP[-1] if right is None else right
    # numpy's order of tests: above the last knot, below the first, on the last, inside
    above = xv > xpv[-1]
    below = (xv < xpv[0]) & ~above
    last = (xv == xpv[-1]) & ~(above | below)
    inner = ~(above | below | last)
    res = np.where(below, lo, np.where(above, hi, FP[-1]))
    if inner.any():
        # numpy's binary search: the j with xp[j] <= x < xp[j+1]
        j = np.clip(np.searchsorted(xpv, xv, side="right") - 1, 0, n - 2)
        slope = (FP[j + 1] - FP[j]) / (XP[j + 1] - XP[j])
        res = np.where(inner, slope * (X - XP[j]) + FP[j], res)
    if (xi >= 0).any() or (xpi >= 0).any():
        case = np.where(above, emit("greater", X, XP[-1]),
                        np.where(below, emit("less", X, XP[0]),
                                 emit("equal", X, XP[-1])))
        conds = [case]
        if inner.any():
            case = np.where(inner, emit("greater_equal", X, XP[j]), case)
            conds = [case, np.where(inner, emit("less", X, XP[j + 1]), 1.0)]
        order.guard_all(rec, conds, "numpy.interp")
    return res


# -- integration and differences ---------------------------------------------------------
@implements(np.trapezoid)
def _trapezoid(y, x=None, dx=1.0, axis=-1):
    """numpy's formula: ``sum(d * (y[1:] + y[:-1]) / 2)`` along ``axis``."""
    nd = np.ndim(y)
    if x is None:
        d = dx
    elif np.ndim(x) == 1:
        d = np.diff(x)
        shape = [1] * nd
        shape[axis] = np.shape(d)[0]
        d = np.reshape(d, shape)
    else:
        d = np.diff(x, axis=axis)
    s1 = [slice(None)] * nd
    s2 = [slice(None)] * nd
    s1[axis] = slice(1, None)
    s2[axis] = slice(None, -1)
    return np.sum(d * (y[tuple(s1)] + y[tuple(s2)]) / 2.0, axis=axis)


@implements(np.gradient)
def _gradient(f, *varargs, axis=None, edge_order=1):
    """numpy's ``gradient`` (second-order interior differences; one-sided edges of order
    ``edge_order``), with constant spacing: scalars or coordinate arrays."""
    if any(is_traced(v) for v in varargs):
        raise TracingError("numpy.gradient's spacing must be constant (a number or "
                           "coordinates that do not depend on the inputs)")
    rec = recorder_of([f])
    f = Tracer(rec, lift(rec, f))
    N = f.ndim
    axes = tuple(range(N)) if axis is None else normalize_axis_tuple(axis, N)
    n = len(varargs)
    if n == 0:
        dx = [1.0] * len(axes)
    elif n == 1 and np.ndim(varargs[0]) == 0:
        dx = list(varargs) * len(axes)
    elif n == len(axes):
        dx = list(varargs)
        for i, distances in enumerate(dx):
            distances = np.asarray(distances)
            if distances.ndim == 0:
                continue
            if distances.ndim != 1:
                raise ValueError("distances must be either scalars or 1d")
            if len(distances) != f.shape[axes[i]]:
                raise ValueError("when 1d, distances must match the length of the "
                                 "corresponding dimension")
            diffx = np.diff(distances.astype(np.float64))
            dx[i] = diffx[0] if (diffx == diffx[0]).all() else diffx
    else:
        raise TypeError("invalid number of arguments")
    if edge_order > 2:
        raise ValueError("'edge_order' greater than 2 not supported")
    outvals = []
    for ax, ax_dx in zip(axes, dx, strict=True):
        if f.shape[ax] < edge_order + 1:
            raise ValueError("Shape of array too small to calculate a numerical gradient, "
                             "at least (edge_order + 1) elements are required.")
        outvals.append(_gradient_axis(f, ax, ax_dx, edge_order))
    return outvals[0] if len(axes) == 1 else tuple(outvals)


def _gradient_axis(f: Tracer, axis: int, ax_dx: Any, edge_order: int) -> Tracer:
    N = f.ndim

    def at(*items):  # f indexed along axis
        return tuple(items[0] if d == axis else slice(None) for d in range(N))

    out = np.zeros_like(f)
    uniform = np.ndim(ax_dx) == 0
    if uniform:
        out[at(slice(1, -1))] = (f[at(slice(2, None))] - f[at(slice(None, -2))]) / (
            2.0 * ax_dx)
    else:
        dx1, dx2 = ax_dx[0:-1], ax_dx[1:]
        a = -(dx2) / (dx1 * (dx1 + dx2))
        b = (dx2 - dx1) / (dx1 * dx2)
        c = dx1 / (dx2 * (dx1 + dx2))
        shape = np.ones(N, dtype=int)
        shape[axis] = -1
        a, b, c = a.reshape(shape), b.reshape(shape), c.reshape(shape)
        out[at(slice(1, -1))] = (a * f[at(slice(None, -2))] + b * f[at(slice(1, -1))]
                                 + c * f[at(slice(2, None))])
    if edge_order == 1:
        dx_0 = ax_dx if uniform else ax_dx[0]
        out[at(0)] = (f[at(1)] - f[at(0)]) / dx_0
        dx_n = ax_dx if uniform else ax_dx[-1]
        out[at(-1)] = (f[at(-1)] - f[at(-2)]) / dx_n
        return out
    if uniform:
        a, b, c = -1.5 / ax_dx, 2.0 / ax_dx, -0.5 / ax_dx
    else:
        dx1, dx2 = ax_dx[0], ax_dx[1]
        a = -(2.0 * dx1 + dx2) / (dx1 * (dx1 + dx2))
        b = (dx1 + dx2) / (dx1 * dx2)
        c = -dx1 / (dx2 * (dx1 + dx2))
    out[at(0)] = a * f[at(0)] + b * f[at(1)] + c * f[at(2)]
    if uniform:
        a, b, c = 0.5 / ax_dx, -2.0 / ax_dx, 1.5 / ax_dx
    else:
        dx1, dx2 = ax_dx[-2], ax_dx[-1]
        a = dx2 / (dx1 * (dx1 + dx2))
        b = -(dx2 + dx1) / (dx1 * dx2)
        c = (2.0 * dx2 + dx1) / (dx2 * (dx1 + dx2))
    out[at(-1)] = a * f[at(-3)] + b * f[at(-2)] + c * f[at(-1)]
    return out
