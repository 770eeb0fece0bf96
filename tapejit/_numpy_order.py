"""Ordering on tracers: sorting networks for sorted values, guards for integer answers.

``sort``, ``partition``, ``median`` and ``percentile``/``quantile`` record a **sorting
network** (Batcher's odd-even merge sort) of ``minimum``/``maximum`` ops: every layer of
disjoint compare-exchange pairs is two vectorized emissions over all pairs (and all other
axes). The network sorts at every point, so the tape gives the sorted values at points
whose order differs from the recording point's, and records no guard. Derivatives follow
the ``minimum``/``maximum`` ops: at a tie each compared operand gets 1/2. NaN: both
outputs of a comparison with a NaN are NaN, and in a sorting network every input reaches
every output, so a NaN anywhere makes the whole sorted row NaN. ``median`` and
``percentile`` are then NaN as numpy's are; ``sort`` and ``partition`` sort NaN as
``+inf`` and then turn the last ``count(NaN)`` places NaN, which is numpy's order (NaN
last, after ``+inf``), still without a guard.

``argmax``, ``argmin`` and ``argsort`` return integers, which have no derivative. They
return the answer seen at the recording point as a constant and record **one guard**: the
comparisons that make that answer numpy's (first occurrence for ties), so an evaluation
at a point where the answer differs fails its guard (:class:`~tapejit.BranchError`, or
masked with ``check="mask"``) instead of reusing a wrong index.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from ._errors import TracingError
from ._numpy_funcs import implements
from ._tracer import Tracer, emit, ids_of, is_traced, lift, recorder_of

#: Longest axis sorted by a network: n = 4096 is 78 layers and about 150 000
#: compare-exchange pairs (300 000 instructions' elements per sorted row).
MAX_SORT = 4096


# -- the network -------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def network(n: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Layers ``(lo, hi)`` of Batcher's odd-even merge sort of ``n`` elements.

    Built for the next power of two with the missing elements taken as ``+inf``: a pair
    that reaches one of them never exchanges, so it is dropped. In each layer the pairs are
    disjoint and ``lo < hi``; after the exchange ``lo`` holds the minimum.
    """
    size = 1 << max(n - 1, 0).bit_length()
    layers = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            j = np.arange(k % p, size - k, 2 * k)
            i = np.arange(k)
            lo = (j[:, None] + i[None, :]).ravel()
            hi = lo + k
            keep = (lo // (2 * p) == hi // (2 * p)) & (hi < n)
            if keep.any():
                layers.append((lo[keep], hi[keep]))
            k //= 2
        p *= 2
    return tuple(layers)


def _check_length(n: int, what: str) -> None:
    if n > MAX_SORT:
        raise TracingError(
            f"{what} along an axis of {n} elements cannot be traced: tapejit sorts with a "
            f"network of O(n log^2 n) comparisons, limited to {MAX_SORT} elements per "
            "sorted axis. Sort the data before the traced function (if its order does not "
            "depend on the inputs), or split the axis.")


def _sorted_last(ids: np.ndarray, rec) -> np.ndarray:
    """Ids of the rows of ``ids`` (sorted along the last axis) through the network."""
    ids = np.array(ids)
    for lo, hi in network(ids.shape[-1]):
        a, b = ids[..., lo], ids[..., hi]
        ids[..., lo] = ids_of(emit("minimum", Tracer(rec, a), Tracer(rec, b)))
        ids[..., hi] = ids_of(emit("maximum", Tracer(rec, a), Tracer(rec, b)))
    return ids


def _sort_along(x: Any, axis: int | None, what: str) -> tuple[Tracer, int]:
    """``x`` sorted along ``axis`` (flattened for None), and the normalized axis."""
    rec = recorder_of([x])
    ids = lift(rec, x)
    if axis is None:
        ids, axis = ids.ravel(), 0
    axis = normalize_axis_index(axis, ids.ndim)
    _check_length(ids.shape[axis], what)
    moved = np.moveaxis(ids, axis, -1)
    return Tracer(rec, np.moveaxis(_sorted_last(moved, rec), -1, axis)), axis


def _check_kind(name: str, kind: Any, order: Any = None) -> None:
    if order is not None:
        raise TracingError(f"numpy.{name}(..., order=...) is for structured arrays and "
                           "cannot be traced")
    if kind not in (None, "quicksort", "mergesort", "heapsort", "stable", "introselect"):
        raise ValueError(f"{name} kind must be one of 'quicksort', 'heapsort', 'stable' "
                         f"(got {kind!r})")


def _sort_nan_last(a: Any, axis: int | None, what: str) -> tuple[Tracer, int]:
    """numpy's sort order with NaN last, branch-free: NaN sorts as ``+inf`` through the
    network, then the last ``count(NaN)`` places of each row become NaN (real ``+inf``
    values sort before the placeholders, so they keep their places)."""
    rec = recorder_of([a])
    x = Tracer(rec, lift(rec, a))
    if axis is None:
        x, axis = x.ravel(), 0
    nan = np.isnan(x)
    s, ax = _sort_along(np.where(nan, np.inf, x), axis, what)
    n = s.shape[ax]
    place = np.arange(n).reshape([n if d == ax else 1 for d in range(s.ndim)])
    return np.where(place >= n - np.sum(nan, axis=ax, keepdims=True), np.nan, s), ax


@implements(np.sort)
def _sort(a, axis=-1, kind=None, order=None, *, stable=None):
    _check_kind("sort", kind, order)
    return _sort_nan_last(a, axis, "numpy.sort")[0]


@implements(np.partition)
def _partition(a, kth, axis=-1, kind="introselect", order=None):
    """The whole axis sorted: a valid partition for every ``kth`` (numpy leaves the order
    inside each part unspecified; here it is sorted)."""
    _check_kind("partition", kind, order)
    if isinstance(kth, Tracer):
        raise TracingError("numpy.partition's kth must be constant integers")
    s, ax = _sort_nan_last(a, axis, "numpy.partition")
    n = s.shape[ax]
    for k in np.ravel(kth):
        if not -n <= int(k) < n:
            raise ValueError(f"kth(={int(k)}) out of bounds ({n})")
    return s


# -- quantiles ---------------------------------------------------------------------------
def _rows(ids: np.ndarray, axis: Any) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """``ids``, the normalized reduced ``axes`` and ``ids`` with those axes merged last."""
    axes = tuple(range(ids.ndim)) if axis is None else normalize_axis_tuple(axis, ids.ndim)
    kept = [d for d in range(ids.ndim) if d not in axes]
    rows = np.transpose(ids, kept + list(axes))
    return ids, axes, rows.reshape((*rows.shape[:len(kept)], -1))


def _lerp(a: Any, b: Any, t: float) -> Any:
    """numpy's ``_lerp`` with a constant weight: the form it uses for ``t >= 0.5``."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def _quantiles(a: Any, q: np.ndarray, axis: Any, method: str, keepdims: bool,
               what: str) -> Any:
    """Quantiles ``q`` (constant, in [0, 1]) of ``a``: numpy's linear method on the sorted
    values, whose sort is the network; ``q``'s shape first, as numpy's."""
    if method != "linear":
        raise TracingError(f"{what}(..., method={method!r}) cannot be traced; the default "
                           "method='linear' can")
    if np.any((q < 0) | (q > 1)) or np.isnan(q).any():
        raise ValueError("Quantiles must be in the range [0, 1]")
    rec = recorder_of([a])
    ids, axes, rows = _rows(lift(rec, a), axis)
    n = rows.shape[-1]
    if n == 0:
        raise TracingError(f"{what} of an empty axis cannot be traced (numpy returns NaN)")
    _check_length(n, what)
    srt = Tracer(rec, _sorted_last(rows, rec))
    out = []
    for qv in q.ravel().tolist():
        virtual = (n - 1) * qv  # numpy's virtual index of the linear method
        prev = math.floor(virtual)
        nxt = prev + 1
        if virtual >= n - 1:
            prev = nxt = -1
        gamma = virtual - prev
        out.append(_lerp(srt[..., prev], srt[..., nxt], gamma))
    res = Tracer(rec, np.stack([ids_of(r) if isinstance(r, Tracer) else lift(rec, r)
                                for r in out]).reshape(q.shape + rows.shape[:-1]))
    if keepdims:
        res = res.reshape(q.shape + tuple(1 if d in axes else s
                                          for d, s in enumerate(ids.shape)))
    return res


def _no_out(name: str, out: Any) -> None:
    if out is not None:
        raise TracingError(f"numpy.{name}(..., out=...) cannot be traced; assign the "
                           "result instead")


@implements(np.quantile)
def _quantile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
              keepdims=False, *, weights=None, interpolation=None):
    _no_out("quantile", out)
    if weights is not None or interpolation is not None:
        raise TracingError("numpy.quantile with weights= or interpolation= cannot be "
                           "traced; use method='linear' without weights")
    qv = np.asarray(_const_q(q, "numpy.quantile"), dtype=np.float64)
    return _quantiles(a, qv, axis, method, keepdims, "numpy.quantile")


@implements(np.percentile)
def _percentile(a, q, axis=None, out=None, overwrite_input=False, method="linear",
                keepdims=False, *, weights=None, interpolation=None):
    _no_out("percentile", out)
    if weights is not None or interpolation is not None:
        raise TracingError("numpy.percentile with weights= or interpolation= cannot be "
                           "traced; use method='linear' without weights")
    qv = np.true_divide(np.asarray(_const_q(q, "numpy.percentile"), dtype=np.float64), 100)
    return _quantiles(a, qv, axis, method, keepdims, "numpy.percentile")


@implements(np.median)
def _median(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    """numpy's median: the middle element, or the mean of the two middle ones."""
    _no_out("median", out)
    rec = recorder_of([a])
    ids, axes, rows = _rows(lift(rec, a), axis)
    n = rows.shape[-1]
    if n == 0:
        raise TracingError("numpy.median of an empty axis cannot be traced (numpy returns "
                           "NaN)")
    _check_length(n, "numpy.median")
    srt = Tracer(rec, _sorted_last(rows, rec))
    h = n // 2
    res = srt[..., h] if n % 2 else (srt[..., h - 1] + srt[..., h]) / 2.0
    if keepdims:
        res = res.reshape(tuple(1 if d in axes else s for d, s in enumerate(ids.shape)))
    return res


def _const_q(q: Any, what: str) -> Any:
    if is_traced(q):
        raise TracingError(f"{what}'s q must be a constant: which elements are "
                           "interpolated depends on it")
    return q


# -- integer answers: guards -------------------------------------------------------------
def guard_all(rec, conds: list[Tracer], what: str) -> None:
    """One guard: every comparison in ``conds`` (1.0/0.0) holds."""
    flat = [ids_of(c).ravel() for c in conds if isinstance(c, Tracer)]
    flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    var = flat[flat >= 0]
    if var.size == 0:
        return
    allc = np.min(Tracer(rec, var))
    node = int(ids_of(allc).reshape(-1)[0])
    if not rec.guard(node):  # the comparisons were built from the recorded answer
        raise AssertionError(f"{what}: its guard does not hold at the recording point")


def _arg_extreme(a: Any, axis: Any, keepdims: bool, out: Any, biggest: bool) -> Any:
    name = "argmax" if biggest else "argmin"
    if out is not None:
        raise TracingError(f"numpy.{name}(..., out=...) cannot be traced")
    rec = recorder_of([a])
    ids = lift(rec, a)
    flat_axis = axis is None
    if flat_axis:
        ids, ax = ids.ravel(), 0
    else:
        ax = normalize_axis_index(axis, ids.ndim)
    rows = np.moveaxis(ids, ax, -1)
    vals = rec.values(rows)
    best = (np.argmax if biggest else np.argmin)(vals, axis=-1)
    n = rows.shape[-1]
    j = np.arange(n)
    pick = np.take_along_axis(rows, best[..., None], axis=-1)
    x, xi = Tracer(rec, rows), Tracer(rec, np.broadcast_to(pick, rows.shape))
    isnan = np.isnan(np.take_along_axis(vals, best[..., None], axis=-1))
    # Without NaN: strictly better than every earlier element, at least as good as every
    # later one (numpy's first occurrence). At a NaN (numpy's answer is the first NaN):
    # it is NaN, and every earlier element is not.
    strict = emit("greater" if biggest else "less", xi, x)
    loose = emit("greater_equal" if biggest else "less_equal", xi, x)
    ok = np.where(j < best[..., None], strict, loose)
    if isnan.any():
        at = j == best[..., None]
        ok_nan = np.where(j < best[..., None], emit("equal", x, x),
                          np.where(at, emit("not_equal", xi, xi), 1.0))
        ok = np.where(isnan, ok_nan, ok)
    guard_all(rec, [ok], f"numpy.{name}")
    if flat_axis:
        return np.intp(best) if not keepdims else np.full((1,) * np.ndim(a), best)
    return np.expand_dims(best, ax) if keepdims else best


@implements(np.argmax)
def _argmax(a, axis=None, out=None, *, keepdims=False):
    return _arg_extreme(a, axis, keepdims, out, True)


@implements(np.argmin)
def _argmin(a, axis=None, out=None, *, keepdims=False):
    return _arg_extreme(a, axis, keepdims, out, False)


@implements(np.argsort)
def _argsort(a, axis=-1, kind=None, order=None, *, stable=None):
    """The stable order seen at the recording point (a valid answer for every ``kind``:
    numpy leaves the order of ties open except for ``stable``), guarded by comparisons of
    neighbours in it: ``<=`` where their indices ascend, ``<`` where they do not."""
    _check_kind("argsort", kind, order)
    rec = recorder_of([a])
    ids = lift(rec, a)
    if axis is None:
        ids, axis = ids.ravel(), 0
    ax = normalize_axis_index(axis, ids.ndim)
    rows = np.moveaxis(ids, ax, -1)
    vals = rec.values(rows)
    if np.isnan(vals).any():
        raise TracingError("numpy.argsort of values with NaN at the recording point cannot "
                           "be traced; record at a point without NaN")
    perm = np.argsort(vals, axis=-1, kind="stable")
    if rows.shape[-1] > 1:
        srt = np.take_along_axis(rows, perm, axis=-1)
        left, right = Tracer(rec, srt[..., :-1]), Tracer(rec, srt[..., 1:])
        ascending = perm[..., :-1] < perm[..., 1:]
        ok = np.where(ascending, emit("less_equal", left, right), emit("less", left, right))
        guard_all(rec, [ok], "numpy.argsort")
    return np.moveaxis(perm, -1, ax)
