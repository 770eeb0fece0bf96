"""The axis-reduction families ``reduce`` and ``scan``: references, checks, recording.

Both families read one operand laid out as ``(outer, n, inner)`` (C order) and work
along the middle axis; attributes ``(kind, outer, n, inner)``:

- ``reduce``: result ``(outer, inner)``; ``kind`` is :data:`SUM` (pairwise summation,
  like numpy's), :data:`PROD`, :data:`MAX` or :data:`MIN` (the adjoint goes to the first
  extreme element, numpy's ``argmax`` choice).
- ``scan``: result ``(outer, n, inner)``; ``kind`` is :data:`CUMSUM` or :data:`CUMPROD`.

The kernel routines are in ``tapejit/_kernels/fam_reduce.py``. This module holds the
numpy references (one point, float64), the attribute checks and sizes, and the recording
of numpy's reductions: each ``record_*`` function takes the recording call
``emit_family(name, operands, attrs, shape)`` first, maps the reduced axes onto the
``(outer, n, inner)`` layout (a transposed view of the traced array when the axes are not
adjacent), and composes ``mean``, ``var``, ``std`` and ``average`` from ``reduce`` and
elementwise arithmetic on its results. A ``where=`` mask must be a constant: masked-out
elements are replaced by the reduction's identity before the instruction (a selection of
ids; they get no adjoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from ._errors import TracingError
from ._kernels.constants import (
    RED_MAX,
    RED_MIN,
    RED_PROD,
    RED_SUM,
    SCAN_CUMPROD,
    SCAN_CUMSUM,
)
from ._program import MAX_FAMILY_SIZE, EmitFamily, Family
from ._tracer import Tracer

SUM, PROD, MAX, MIN = RED_SUM, RED_PROD, RED_MAX, RED_MIN
CUMSUM, CUMPROD = SCAN_CUMSUM, SCAN_CUMPROD

#: Attribute names of both families, in order.
ATTRS = ("kind", "outer", "n", "inner")

_NAMES = {MAX: "maximum", MIN: "minimum"}


# -- references, sizes and checks -------------------------------------------------------
def reduce_points(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                  c: Any = None) -> np.ndarray:
    """The ``reduce`` results at many points: ``a (outer*n*inner, points)`` to
    ``(outer*inner, points)`` float64."""
    kind, outer, n, inner = attrs
    a = np.asarray(a, dtype=np.float64)
    # the reduced axis last and contiguous: numpy's pairwise sum, the same at any count
    # of points
    x = np.ascontiguousarray(a.reshape(outer, n, inner, a.shape[1]).transpose(0, 2, 3, 1))
    fn = {SUM: np.sum, PROD: np.prod, MAX: np.max, MIN: np.min}[kind]
    return fn(x, axis=-1).reshape(outer * inner, a.shape[1])


def reduce_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                     c: Any = None) -> np.ndarray:
    """The ``reduce`` result at one point: flat ``(outer*inner,)`` float64."""
    return reduce_points(attrs, np.reshape(a, (-1, 1)))[:, 0]


def scan_points(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                c: Any = None) -> np.ndarray:
    """The ``scan`` results at many points: ``(outer*n*inner, points)`` float64."""
    kind, outer, n, inner = attrs
    a = np.asarray(a, dtype=np.float64)
    x = a.reshape(outer, n, inner, a.shape[1])
    fn = {CUMSUM: np.cumsum, CUMPROD: np.cumprod}[kind]
    return fn(x, axis=1).reshape(outer * n * inner, a.shape[1])


def scan_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                   c: Any = None) -> np.ndarray:
    """The ``scan`` result at one point: flat ``(outer*n*inner,)`` float64."""
    return scan_points(attrs, np.reshape(a, (-1, 1)))[:, 0]


def _columns(values: np.ndarray) -> tuple[np.ndarray, ...]:
    v = np.asarray(values, dtype=np.int64).reshape(-1, len(ATTRS))
    return tuple(v.T)


def _bad_shape(outer: np.ndarray, n: np.ndarray, inner: np.ndarray) -> np.ndarray:
    # Negative or more than MAX_FAMILY_SIZE elements; each factor is below 2**31, so the
    # products are formed in int64 only once the first is known to be small.
    bad = (outer < 0) | (n < 0) | (inner < 0)
    on = np.where(bad, 0, outer * n)
    bad |= on > MAX_FAMILY_SIZE
    bad |= np.where(bad, 0, on) * np.where(bad, 0, inner) > MAX_FAMILY_SIZE
    return bad


def reduce_check(values: np.ndarray) -> np.ndarray:
    """Bad mask of ``reduce`` attribute rows ``(kind, outer, n, inner)``.

    Bad: an unknown kind, a negative or too large shape, and a maximum or minimum over
    an empty axis (numpy raises: no identity).
    """
    kind, outer, n, inner = _columns(values)
    bad = ~np.isin(kind, (SUM, PROD, MAX, MIN)) | _bad_shape(outer, n, inner)
    bad |= np.isin(kind, (MAX, MIN)) & (n == 0) & (outer * inner != 0)
    return bad


def scan_check(values: np.ndarray) -> np.ndarray:
    """Bad mask of ``scan`` attribute rows ``(kind, outer, n, inner)``."""
    kind, outer, n, inner = _columns(values)
    return ~np.isin(kind, (CUMSUM, CUMPROD)) | _bad_shape(outer, n, inner)


def reduce_sizes(values: np.ndarray) -> np.ndarray:
    """``Family.sizes`` of (checked) ``reduce`` rows: the result, then the operand."""
    _, outer, n, inner = _columns(values)
    return np.stack([outer * inner, outer * n * inner], axis=1)


def scan_sizes(values: np.ndarray) -> np.ndarray:
    """``Family.sizes`` of (checked) ``scan`` rows: the result, then the operand."""
    _, outer, n, inner = _columns(values)
    return np.stack([outer * n * inner, outer * n * inner], axis=1)


# -- reverse rules as traced numpy (nested differentiation, ``tapejit/_nested.py``) ------
def _shift(x: Any, fill: float, forward: bool) -> Any:
    """``x`` (``(outer, n, inner)``) moved one place along the middle axis, ``fill``
    entering: the exclusive prefix (``forward``) or suffix of a scan."""
    pad = np.full((np.shape(x)[0], 1, np.shape(x)[2]), fill)
    return (np.concatenate([pad, x[:, :-1]], axis=1) if forward
            else np.concatenate([x[:, 1:], pad], axis=1))


def reduce_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """``reduce``'s reverse rule as traced numpy, the kernels' rules: a sum broadcasts
    the cotangent (no instruction); a product multiplies it by the product of the other
    elements (prefix times suffix products, no division, exact at zeros); a maximum or
    minimum sends it to the first extreme element (a NaN counts as the extreme)."""
    kind, outer, n, inner = (int(v) for v in attrs)
    G = np.reshape(cotangent, (outer, 1, inner))
    full = (outer, n, inner)
    if kind == SUM or n == 0:
        return (np.reshape(np.broadcast_to(G, full), -1),)
    x = np.reshape(operands[0], full)
    if kind == PROD:
        before = _shift(np.cumprod(x, axis=1), 1.0, True)
        after = _shift(np.flip(np.cumprod(np.flip(x, 1), axis=1), 1), 1.0, False)
        return (np.reshape(G * (before * after), -1),)
    r = np.reshape(result, (outer, 1, inner))
    hit = (x == r) | ((x != x) & (r != r))
    first = hit & (np.cumsum(hit * 1.0, axis=1) == 1.0)
    return (np.reshape(np.where(first, np.broadcast_to(G, full), 0.0), -1),)


def scan_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """``scan``'s reverse rule as traced numpy: a cumulative sum's is the reversed
    cumulative sum of the cotangent; a cumulative product's is the kernels' backward
    recurrence ``t[i] = g[i] + x[i+1] t[i+1]``, ``xbar[i] = y[i-1] t[i]`` (no division),
    one elementwise step per element of the scanned axis."""
    kind, outer, n, inner = (int(v) for v in attrs)
    full = (outer, n, inner)
    G = np.reshape(cotangent, full)
    if kind == CUMSUM or n == 0:
        return (np.reshape(np.flip(np.cumsum(np.flip(G, 1), axis=1), 1), -1),)
    x = np.reshape(operands[0], full)
    before = _shift(np.reshape(result, full), 1.0, True)
    t = G[:, n - 1]
    out = [before[:, n - 1] * t]
    for i in range(n - 2, -1, -1):
        t = G[:, i] + x[:, i + 1] * t
        out.append(before[:, i] * t)
    return (np.reshape(np.stack(out[::-1], axis=1), -1),)


_SUM_POINTS = "before sums over many points walked the workspace rows: the same results"
_SUM_BLOCKS = ("before sums added blocks of 8 elements one after the other: the same sums, "
               "rounded in another order (the last bits)")
REDUCE = Family("reduce", 129, 1, ATTRS, check=reduce_check,
                sizes=reduce_sizes, kernel="fam_reduce", reference=reduce_reference,
                points_reference=reduce_points, vjp=reduce_vjp,
                equivalent={"28f452b6f53ab3d7": _SUM_POINTS, "f70ff80e0796d437": _SUM_BLOCKS})
SCAN = Family("scan", 130, 1, ATTRS, check=scan_check,
              sizes=scan_sizes, kernel="fam_reduce", reference=scan_reference,
              points_reference=scan_points, vjp=scan_vjp,
              equivalent={"c8d55b1bbe24c42f": _SUM_POINTS,
                          "a5086bbca4ec33bd": "before the kernel file's sums (not the scans) "
                                              "added blocks of 8 one after the other: the "
                                              "same results"})


# -- recording ---------------------------------------------------------------------------

def _operand(x: Any) -> Any:
    return x if isinstance(x, Tracer) else np.asarray(x, dtype=np.float64)


def _axes(ndim: int, axis: Any) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(normalize_axis_tuple(axis, ndim)))


def _mask(where: Any, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(where, Tracer):
        raise TracingError("a reduction's where= mask must be a constant boolean array, "
                           "not a traced value (use np.where to select instead)")
    mask = np.asarray(where)
    if mask.dtype != np.bool_:
        raise TypeError(f"where= must be a boolean array, not of dtype {mask.dtype}")
    return np.broadcast_to(mask, shape)


def _reduce(emit_family: EmitFamily, kind: int, x: Any, axes: tuple[int, ...],
            keepdims: bool) -> Any:
    """``reduce`` of ``x`` over the (sorted, normalized) ``axes``: one instruction."""
    shape = np.shape(x)
    kept = [d for d in range(len(shape)) if d not in axes]
    out_shape = tuple(shape[d] for d in kept)
    n = math.prod(shape[d] for d in axes)
    if not axes or axes[-1] - axes[0] == len(axes) - 1:
        # Adjacent axes: the array as it is, (before, axes, after).
        a0 = axes[0] if axes else len(shape)
        outer = math.prod(shape[:a0])
        inner = math.prod(shape[a0 + len(axes):])
        flat = np.reshape(x, -1)
    else:
        # Kept axes first: a transposed view (ids, not instructions).
        outer, inner = math.prod(out_shape), 1
        flat = np.reshape(np.transpose(x, kept + list(axes)), -1)
    if kind in _NAMES and n == 0 and outer * inner != 0:
        raise ValueError(
            f"zero-size array to reduction operation {_NAMES[kind]} which has no identity")
    if n == 1:  # one element: it is its own sum, product, max and min (records nothing)
        r = np.reshape(np.transpose(x, kept + list(axes)), out_shape)
    else:
        r = emit_family("reduce", [flat], (kind, outer, n, inner), out_shape)
    if keepdims:
        r = np.reshape(r, tuple(1 if d in axes else s for d, s in enumerate(shape)))
    return r


def _masked(x: Any, where: Any, fill: float) -> Any:
    if where is None:
        return x
    return np.where(_mask(where, np.shape(x)), x, fill)


def _count(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool,
           where: Any) -> Any:
    # Elements per result: a number, or an array for a mask.
    if where is None:
        return math.prod(shape[d] for d in axes)
    return np.sum(_mask(where, shape), axis=axes, keepdims=keepdims)


def record_sum(emit_family: EmitFamily, x: Any, axis: Any = None, keepdims: bool = False,
               where: Any = None, initial: Any = None) -> Any:
    """``np.sum`` (also ``x.sum``, ``np.add.reduce``): one pairwise ``reduce``."""
    x = _operand(x)
    axes = _axes(np.ndim(x), axis)
    r = _reduce(emit_family, SUM, _masked(x, where, 0.0), axes, keepdims)
    return r if initial is None else r + initial


def record_prod(emit_family: EmitFamily, x: Any, axis: Any = None, keepdims: bool = False,
                where: Any = None, initial: Any = None) -> Any:
    """``np.prod`` (also ``np.multiply.reduce``)."""
    x = _operand(x)
    axes = _axes(np.ndim(x), axis)
    r = _reduce(emit_family, PROD, _masked(x, where, 1.0), axes, keepdims)
    return r if initial is None else r * initial


def _extreme(emit_family: EmitFamily, kind: int, x: Any, axis: Any, keepdims: bool,
             where: Any, initial: Any) -> Any:
    x = _operand(x)
    axes = _axes(np.ndim(x), axis)
    pick = np.maximum if kind == MAX else np.minimum
    if where is not None:
        if initial is None:
            raise ValueError(f"reduction operation '{_NAMES[kind]}' does not have an "
                             "identity, so to use a where mask one has to specify 'initial'")
        x = _masked(x, where, -np.inf if kind == MAX else np.inf)
    shape = np.shape(x)
    if initial is not None and math.prod(shape[d] for d in axes) == 0:
        # Nothing to compare: the initial value, a constant.
        out = [1 if d in axes else s for d, s in enumerate(shape) if keepdims or d not in axes]
        return np.full(tuple(out), float(initial))
    r = _reduce(emit_family, kind, x, axes, keepdims)
    return r if initial is None else pick(r, initial)


def record_max(emit_family: EmitFamily, x: Any, axis: Any = None, keepdims: bool = False,
               where: Any = None, initial: Any = None) -> Any:
    """``np.max``/``np.amax`` (also ``np.maximum.reduce``); ``where=`` needs ``initial``."""
    return _extreme(emit_family, MAX, x, axis, keepdims, where, initial)


def record_min(emit_family: EmitFamily, x: Any, axis: Any = None, keepdims: bool = False,
               where: Any = None, initial: Any = None) -> Any:
    """``np.min``/``np.amin`` (also ``np.minimum.reduce``); ``where=`` needs ``initial``."""
    return _extreme(emit_family, MIN, x, axis, keepdims, where, initial)


def record_mean(emit_family: EmitFamily, x: Any, axis: Any = None, keepdims: bool = False,
                where: Any = None) -> Any:
    """``np.mean``: the sum over the count (of selected elements with ``where=``)."""
    x = _operand(x)
    axes = _axes(np.ndim(x), axis)
    s = record_sum(emit_family, x, axis=axes, keepdims=keepdims, where=where)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s / _count(np.shape(x), axes, keepdims, where)


def record_var(emit_family: EmitFamily, x: Any, axis: Any = None, ddof: float = 0,
               keepdims: bool = False, where: Any = None, correction: Any = None) -> Any:
    """``np.var``: numpy's two passes (the mean, then the mean squared deviation over
    ``max(count - ddof, 0)``); ``correction`` is the Array API name of ``ddof``."""
    if correction is not None:
        if ddof != 0:
            raise ValueError("ddof and correction can't be provided simultaneously.")
        ddof = correction
    x = _operand(x)
    axes = _axes(np.ndim(x), axis)
    dev = x - record_mean(emit_family, x, axis=axes, keepdims=True, where=where)
    s = record_sum(emit_family, dev * dev, axis=axes, keepdims=keepdims, where=where)
    count = np.maximum(_count(np.shape(x), axes, keepdims, where) - ddof, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s / count


def record_std(emit_family: EmitFamily, x: Any, axis: Any = None, ddof: float = 0,
               keepdims: bool = False, where: Any = None, correction: Any = None) -> Any:
    """``np.std``: the square root of :func:`record_var`."""
    return np.sqrt(record_var(emit_family, x, axis=axis, ddof=ddof, keepdims=keepdims,
                              where=where, correction=correction))


def record_average(emit_family: EmitFamily, x: Any, axis: Any = None, weights: Any = None,
                   returned: bool = False, keepdims: bool = False) -> Any:
    """``np.average``: ``sum(x * w) / sum(w)`` (weights constant or traced).

    Weights of another shape than ``x`` are 1-D along ``axis`` (or shaped like the
    ``axis`` tuple's axes), as numpy requires; constant weights summing to zero raise
    ``ZeroDivisionError`` as in numpy.
    """
    x = _operand(x)
    shape = np.shape(x)
    if weights is None:
        avg = record_mean(emit_family, x, axis=axis, keepdims=keepdims)
        scl = np.float64(math.prod(shape) / max(math.prod(np.shape(avg)), 1))
    else:
        wgt = _operand(weights)
        if np.shape(wgt) != shape:
            if axis is None:
                raise TypeError("Axis must be specified when shapes of a and weights differ.")
            given = normalize_axis_tuple(axis, len(shape))
            if np.ndim(wgt) != len(given):
                raise TypeError("Shape of weights must be consistent with shape of a along "
                                "specified axis.")
            if np.shape(wgt) != tuple(shape[d] for d in given):
                raise ValueError("Shape of weights must be consistent with shape of a "
                                 "along specified axis.")
            wgt = np.transpose(wgt, np.argsort(given))
            wgt = np.reshape(wgt, tuple(s if d in given else 1 for d, s in enumerate(shape)))
        if isinstance(wgt, Tracer):
            scl = record_sum(emit_family, wgt, axis=axis, keepdims=keepdims)
        else:
            scl = np.sum(wgt, axis=axis, keepdims=keepdims)
            if np.any(scl == 0.0):
                raise ZeroDivisionError("Weights sum to zero, can't be normalized")
        avg = record_sum(emit_family, x * wgt, axis=axis, keepdims=keepdims) / scl
    if not returned:
        return avg
    if np.shape(scl) != np.shape(avg):
        scl = np.broadcast_to(scl, np.shape(avg))
    return avg, scl


def _scan(emit_family: EmitFamily, kind: int, x: Any, axis: Any) -> Any:
    x = _operand(x)
    if axis is None:
        flat = np.reshape(x, -1)
        size = math.prod(np.shape(x))
        return emit_family("scan", [flat], (kind, 1, size, 1), (size,))
    shape = np.shape(x)
    ax = normalize_axis_index(axis, len(shape))
    attrs = (kind, math.prod(shape[:ax]), shape[ax], math.prod(shape[ax + 1:]))
    return emit_family("scan", [np.reshape(x, -1)], attrs, shape)


def record_cumsum(emit_family: EmitFamily, x: Any, axis: Any = None) -> Any:
    """``np.cumsum`` (flattened without ``axis``): one ``scan``."""
    return _scan(emit_family, CUMSUM, x, axis)


def record_cumprod(emit_family: EmitFamily, x: Any, axis: Any = None) -> Any:
    """``np.cumprod`` (flattened without ``axis``): one ``scan``; no division in its rules."""
    return _scan(emit_family, CUMPROD, x, axis)


#: numpy function -> its recording function (``emit_family`` first).
RECORDERS: dict[Callable, Callable] = {
    np.sum: record_sum, np.prod: record_prod, np.max: record_max, np.amax: record_max,
    np.min: record_min, np.amin: record_min, np.mean: record_mean, np.var: record_var,
    np.std: record_std, np.average: record_average, np.cumsum: record_cumsum,
    np.cumprod: record_cumprod,
}
