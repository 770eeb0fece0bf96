"""numpy's shape functions on tracers: splitting, rotating, padding, gathering, grids.

All of them are index arithmetic on the tracers' id arrays and record nothing, except
``linspace`` (a few elementwise ops on the traced endpoints) and ``select`` with traced
conditions (``where`` ops). Positions that numpy fills with a number (the zeros around
``diag``, a constant ``pad``) hold constants of the pool, never the id of a variable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import TracingError
from ._numpy_funcs import implements
from ._tracer import Tracer, ids_of, is_traced, lift, recorder_of


def _tracers(rec, arrays) -> list[Tracer]:
    return [Tracer(rec, np.asarray(a)) for a in arrays]


def _constant_int(value: Any, what: str) -> Any:
    """``value`` as it is; a traced value raises (an index or size must be a constant)."""
    if is_traced(value):
        raise TracingError(f"{what} must not depend on the inputs: pass constant "
                           "integers (indices are not differentiable)")
    return value


# -- one array in, one array out: the id array transformed ------------------------------
def _same(fn: Callable) -> Callable:
    def impl(x, *args, **kwargs):
        rec = recorder_of([x])
        return Tracer(rec, np.asarray(fn(lift(rec, x), *args, **kwargs)))

    return impl


for _f in (np.rollaxis, np.rot90, np.flipud, np.fliplr):
    implements(_f)(_same(_f))


@implements(np.atleast_3d)
def _atleast_3d(*arys):
    rec = recorder_of(arys)
    out = _tracers(rec, [np.atleast_3d(lift(rec, a)) for a in arys])
    return out[0] if len(out) == 1 else tuple(out)


# -- one array in, a list out -----------------------------------------------------------
def _listing(fn: Callable) -> Callable:
    def impl(ary, indices_or_sections, *args, **kwargs):
        rec = recorder_of([ary])
        parts = fn(lift(rec, ary), _constant_int(indices_or_sections, "split points"),
                   *args, **kwargs)
        return _tracers(rec, parts)

    return impl


for _f in (np.split, np.array_split, np.hsplit, np.vsplit, np.dsplit):
    implements(_f)(_listing(_f))


@implements(np.broadcast_arrays)
def _broadcast_arrays(*args, subok=False):
    rec = recorder_of(args)
    return tuple(_tracers(rec, np.broadcast_arrays(*(lift(rec, a) for a in args))))


@implements(np.meshgrid)
def _meshgrid(*xi, copy=True, sparse=False, indexing="xy"):
    rec = recorder_of(xi)
    grids = np.meshgrid(*(lift(rec, x) for x in xi), copy=True, sparse=sparse,
                        indexing=indexing)
    return tuple(_tracers(rec, grids))


# -- gathers with constant indices ------------------------------------------------------
@implements(np.take)
def _take(a, indices, axis=None, out=None, mode="raise"):
    if out is not None:
        raise TracingError("numpy.take(..., out=...) cannot be traced; assign the result "
                           "instead")
    rec = recorder_of([a])
    idx = _constant_int(indices, "numpy.take's indices")
    return Tracer(rec, np.asarray(np.take(lift(rec, a), idx, axis=axis, mode=mode)))


@implements(np.take_along_axis)
def _take_along_axis(arr, indices, axis=-1):
    rec = recorder_of([arr])
    idx = _constant_int(indices, "numpy.take_along_axis's indices")
    return Tracer(rec, np.take_along_axis(lift(rec, arr), np.asarray(idx), axis=axis))


# -- arrays with constant fill ----------------------------------------------------------
@implements(np.diag)
def _diag(v, k=0):
    rec = recorder_of([v])
    ids = lift(rec, v)
    if ids.ndim != 1:  # a diagonal read out of a matrix: ids only
        return Tracer(rec, np.diag(ids, k))
    # A matrix with v on diagonal k: position p of v where the 1-based map holds p + 1.
    where = np.diag(np.arange(1, ids.size + 1), k)
    zero = rec.const(np.zeros(()))
    return Tracer(rec, np.where(where > 0, ids[where - 1], zero))


@implements(np.diagflat)
def _diagflat(v, k=0):
    return _diag(np.ravel(v), k)


@implements(np.pad)
def _pad(array, pad_width, mode="constant", **kwargs):
    rec = recorder_of([array])
    ids = lift(rec, array)
    width = _constant_int(pad_width, "numpy.pad's pad_width")
    if callable(mode) or mode not in ("constant", "edge", "reflect", "symmetric", "wrap"):
        raise TracingError(
            f"numpy.pad with mode={mode!r} cannot be traced; modes 'constant', 'edge', "
            "'reflect', 'symmetric' and 'wrap' can (compose np.max/np.mean etc. with "
            "np.concatenate for the statistics modes)")
    if mode != "constant":  # copies of elements: ids only
        return Tracer(rec, np.pad(ids, width, mode=mode, **kwargs))
    fill = kwargs.pop("constant_values", 0)
    if kwargs:
        raise TypeError(f"unsupported keyword arguments for mode 'constant': {set(kwargs)}")
    # Which positions are padding, then what goes there: constants of the pool, or the
    # id of a traced scalar fill value.
    inside = np.pad(np.ones(ids.shape, dtype=bool), width, mode="constant")
    if isinstance(fill, Tracer):
        if fill.size != 1:
            raise TracingError("numpy.pad's constant_values may be one traced scalar, or "
                               "constants (a number or per-axis (before, after) numbers)")
        around = np.broadcast_to(ids_of(fill).reshape(()), inside.shape)
    else:
        _constant_int(fill, "numpy.pad's constant_values, when not one traced scalar,")
        around = rec.const(np.pad(np.zeros(ids.shape), width, mode="constant",
                                  constant_values=fill))
    inner = np.pad(ids, width, mode="constant")  # the padded ids are replaced below
    return Tracer(rec, np.where(inside, inner, around))


# -- computed arrays -------------------------------------------------------------------
@implements(np.linspace)
def _linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0,
              *, device=None):
    """numpy's formula: ``start + i * step`` with ``step = (stop - start) / div``, the last
    point ``stop`` itself when ``endpoint``. (numpy computes ``i / div * delta`` instead
    where ``step`` underflows to 0 for a nonzero ``delta``; tapejit keeps one formula.)"""
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        raise TracingError(f"numpy.linspace(..., dtype={dtype!r}) cannot be traced: traced "
                           "values are floats")
    num = int(_constant_int(num, "numpy.linspace's num"))
    if num < 0:
        raise ValueError(f"Number of samples, {num}, must be non-negative.")
    div = (num - 1) if endpoint else num
    rec = recorder_of([start, stop])
    a, b = np.broadcast_arrays(lift(rec, start), lift(rec, stop))
    start, stop = Tracer(rec, a), Tracer(rec, b)
    delta = stop - start
    i = np.arange(num, dtype=np.float64).reshape((-1,) + (1,) * delta.ndim)
    if div > 0:
        step = delta / div
        y = i * step + start
    else:
        step = np.nan
        y = i * delta + start
    if endpoint and num > 1:
        y[-1, ...] = stop
    if axis != 0:
        y = np.moveaxis(y, 0, axis)
    return (y, step) if retstep else y


@implements(np.select)
def _select(condlist, choicelist, default=0):
    condlist, choicelist = list(condlist), list(choicelist)
    if len(condlist) != len(choicelist):
        raise ValueError("list of cases must be same length as list of conditions")
    if not condlist:
        raise ValueError("select with an empty condition list is not possible")
    # numpy's rule: the first true condition wins, so apply them from the last one.
    result = default
    for cond, choice in zip(reversed(condlist), reversed(choicelist), strict=True):
        if not isinstance(cond, Tracer) and np.asarray(cond).dtype != np.bool_:
            raise TypeError(f"invalid entry in condlist: should be boolean ndarray, not "
                            f"{np.asarray(cond).dtype}")
        result = np.where(cond, choice, result)
    rec = recorder_of([*condlist, *choicelist, default])
    shape = np.broadcast_shapes(*(np.shape(v) for v in (*condlist, *choicelist, default)))
    if rec is None:
        return np.broadcast_to(result, shape).copy()
    return Tracer(rec, np.broadcast_to(lift(rec, result), shape).copy())

