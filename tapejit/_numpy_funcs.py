"""numpy functions on tracers: ufuncs via the op table, array functions implemented here.

Every implementation works on the id arrays of the tracers (index arithmetic) and emits
instructions in bulk; reductions are pairwise trees (``log2 n`` vectorized emissions).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from . import _contract
from . import _fam_chol as chol
from . import _fam_eig as eig
from . import _fam_lu as lu
from . import _fam_reduce as red
from . import _linalg_compose as compose
from ._errors import TracingError
from ._ops import ScipySpecial
from ._rewrites import rewrite_for
from ._tape_builder import Recorder
from ._tracer import (
    SCIPY_REFERENCES,
    UFUNC_OPS,
    Tracer,
    emit,
    emit_family,
    ids_of,
    lift,
    logical,
    op_of_ufunc,
    power,
    recorder_of,
)

FUNCTIONS: dict[Callable, Callable] = {}

_LOGICAL = {np.logical_and: "and", np.logical_or: "or", np.logical_not: "not"}


def implements(*funcs: Callable) -> Callable:
    """Register the decorated function as the traced implementation of ``funcs``."""

    def deco(impl: Callable) -> Callable:
        for f in funcs:
            FUNCTIONS[f] = impl
        return impl

    return deco


def public_name(func: Callable) -> str:
    """``numpy.sin``, ``numpy.linalg.solve``, ``scipy.special.erf``: where a user finds
    ``func`` (also an op's :class:`~tapejit._ops.ScipySpecial`, not imported yet)."""
    if isinstance(func, ScipySpecial):
        return f"scipy.special.{func.name}"
    short = getattr(func, "__name__", repr(func))
    mod = getattr(func, "__module__", None) or "numpy"
    if isinstance(func, np.ufunc):
        # ufuncs have no __module__: name the namespace that exports this one
        special = sys.modules.get("scipy.special")
        if getattr(np, short, None) is not func and getattr(special, short, None) is func:
            mod = "scipy.special"
    public = ".".join(p for p in mod.split(".") if not p.startswith("_")) or "numpy"
    return f"{public}.{short}"


def unsupported(func: Callable) -> TracingError:
    """Error for a numpy function (or a ufunc of numpy's or scipy.special's) tapejit does
    not trace: why, and what to write instead where there is a rewrite."""
    hint = rewrite_for(func)
    return TracingError(
        f"tapejit cannot trace {public_name(func)}: "
        + (f"{hint}." if hint else "it has no recording (yet).")
        + " tapejit.supported_functions() lists what records."
    )


def supported_functions() -> list[str]:
    """The numpy and scipy.special functions and ufuncs that record on traced values.

    Generated from what the tracer dispatches: the ufuncs of the op table, the ufuncs
    with rules of their own and the implemented numpy functions.

    Returns
    -------
    list of str
        Sorted public names, such as ``"numpy.sin"``, ``"numpy.linalg.solve"`` and
        ``"scipy.special.erf"``.
    """
    # scipy.special's by the names in the table: listing them does not import scipy
    funcs = [*UFUNC_OPS, *_UFUNC_RULES, *FUNCTIONS, *(ref for ref, _ in SCIPY_REFERENCES)]
    return sorted({public_name(f) for f in funcs})


# -- ufuncs ------------------------------------------------------------------------------
def apply_ufunc(rec: Recorder, ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict):
    out = kwargs.pop("out", None)
    if out is not None and not all(o is None for o in out):
        raise TracingError(
            f"numpy.{ufunc.__name__}(..., out=...) cannot be traced; assign the result instead"
        )
    if method == "reduce" and ufunc in _REDUCERS:
        return _REDUCERS[ufunc](*inputs, **kwargs)
    if method == "accumulate" and ufunc in _ACCUMULATORS:
        return _accumulate(ufunc, *inputs, **kwargs)
    if method == "outer":
        # a.shape + b.shape: the first operand's ids get b.ndim trailing axes
        a, b = inputs
        a = np.reshape(a, np.shape(a) + (1,) * np.ndim(b))
        return apply_ufunc(rec, ufunc, "__call__", (a, b), kwargs)
    kwargs.pop("casting", None)
    dtype = kwargs.pop("dtype", None)
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        raise TracingError(f"numpy.{ufunc.__name__} with dtype={dtype} cannot be traced")
    if kwargs:
        raise TracingError(
            f"numpy.{ufunc.__name__} with keyword(s) {sorted(kwargs)} cannot be traced"
        )
    if method != "__call__":
        which = {"reduce": _REDUCERS, "accumulate": _ACCUMULATORS}.get(method)
        hint = (f"; numpy.<ufunc>.{method} can be traced for "
                + ", ".join(sorted(u.__name__ for u in which))) if which else ""
        raise TracingError(f"numpy.{ufunc.__name__}.{method} cannot be traced{hint}")
    rule = _UFUNC_RULES.get(ufunc)
    if rule is not None:
        return rule(*inputs)
    op = op_of_ufunc(ufunc)
    if op is None:
        raise unsupported(ufunc)
    return emit(op.name, *inputs)


def _to_radians(x: Any) -> Any:
    return emit("mul", x, np.pi / 180.0)


def _to_degrees(x: Any) -> Any:
    return emit("mul", x, 180.0 / np.pi)


#: ufuncs recorded by a rule of their own rather than by one op of the table.
_UFUNC_RULES: dict[np.ufunc, Callable] = {
    np.power: power,
    np.matmul: lambda a, b: matmul(a, b),
    np.positive: lambda a: a,
    np.divmod: lambda a, b: (emit("floor_divide", a, b), emit("mod", a, b)),
    np.deg2rad: _to_radians, np.radians: _to_radians,
    np.rad2deg: _to_degrees, np.degrees: _to_degrees,
    **{u: (lambda kind: lambda *a: logical(kind, *a))(k) for u, k in _LOGICAL.items()},
}


def ufuncs_with_rules() -> frozenset[np.ufunc]:
    """The ufuncs recorded by a rule of their own, not by the op that the table maps
    them to (``np.power`` of a constant 2 is ``square``)."""
    return frozenset(_UFUNC_RULES)


# -- reductions (reduce and scan family instructions: _fam_reduce.py) --------------------
def _no_out(name: str, out: Any, dtype: Any = None) -> None:
    if out is not None:
        raise TracingError(f"numpy.{name}(..., out=...) cannot be traced; assign the result "
                           "instead")
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
        raise TracingError(f"numpy.{name}(..., dtype={dtype!r}) cannot be traced: traced "
                           "values are floats")


@implements(np.sum)
def _sum(x, axis=None, dtype=None, out=None, keepdims=False, initial=np._NoValue,
         where=np._NoValue):
    _no_out("sum", out, dtype)
    r = red.record_sum(emit_family, x, axis=axis, keepdims=keepdims,
                       where=None if where is np._NoValue else where)
    return r if initial is np._NoValue else emit("add", r, float(initial))


@implements(np.prod)
def _prod(x, axis=None, dtype=None, out=None, keepdims=False, initial=np._NoValue,
          where=np._NoValue):
    _no_out("prod", out, dtype)
    r = red.record_prod(emit_family, x, axis=axis, keepdims=keepdims,
                        where=None if where is np._NoValue else where)
    return r if initial is np._NoValue else emit("mul", r, float(initial))


def _extreme(record: Callable, name: str) -> Callable:
    def impl(x, axis=None, out=None, keepdims=False, initial=np._NoValue, where=np._NoValue):
        _no_out(name, out)
        kw = {} if initial is np._NoValue else {"initial": initial}
        if where is not np._NoValue:
            kw["where"] = where
        return record(emit_family, x, axis=axis, keepdims=keepdims, **kw)

    return impl


_max = implements(np.max, np.amax)(_extreme(red.record_max, "max"))
_min = implements(np.min, np.amin)(_extreme(red.record_min, "min"))


@implements(np.mean)
def _mean(x, axis=None, dtype=None, out=None, keepdims=False, where=np._NoValue):
    _no_out("mean", out, dtype)
    return red.record_mean(emit_family, x, axis=axis, keepdims=keepdims,
                           where=None if where is np._NoValue else where)


def _moment(record: Callable, name: str) -> Callable:
    def impl(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False, where=np._NoValue,
             mean=np._NoValue, correction=np._NoValue):
        _no_out(name, out, dtype)
        if mean is not np._NoValue:
            raise TracingError(f"numpy.{name}(..., mean=...) cannot be traced: leave mean "
                               "out")
        kw = {} if correction is np._NoValue else {"correction": correction}
        return record(emit_family, x, axis=axis, ddof=ddof, keepdims=keepdims,
                      where=None if where is np._NoValue else where, **kw)

    return impl


_var = implements(np.var)(_moment(red.record_var, "var"))
_std = implements(np.std)(_moment(red.record_std, "std"))


@implements(np.average)
def _average(x, axis=None, weights=None, returned=False, *, keepdims=np._NoValue):
    return red.record_average(emit_family, x, axis=axis, weights=weights, returned=returned,
                              keepdims=False if keepdims is np._NoValue else keepdims)


@implements(np.cumsum)
def _cumsum(x, axis=None, dtype=None, out=None):
    _no_out("cumsum", out, dtype)
    return red.record_cumsum(emit_family, x, axis=axis)


@implements(np.cumprod)
def _cumprod(x, axis=None, dtype=None, out=None):
    _no_out("cumprod", out, dtype)
    return red.record_cumprod(emit_family, x, axis=axis)


def _constant_mask(where: Any, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(where, Tracer):
        raise TracingError("a reduction's where= mask must be a constant boolean array, "
                           "not a traced value (use np.where to select instead)")
    return np.broadcast_to(np.asarray(where, dtype=bool), shape)


def _logaddexp_reduce(x, axis=0, dtype=None, out=None, keepdims=False,
                      initial=np._NoValue, where=True):
    """``np.logaddexp.reduce``: a pairwise tree of ``logaddexp`` emissions (``log2 n`` of
    them) over the reduced axes moved last; masked-out elements are ``-inf``, its
    identity. numpy reduces left to right, so values may differ in the last bits."""
    _no_out("logaddexp.reduce", out, dtype)
    rec = recorder_of([x])
    ids = lift(rec, x)
    axes = tuple(range(ids.ndim)) if axis is None else normalize_axis_tuple(axis, ids.ndim)
    kept = [d for d in range(ids.ndim) if d not in axes]
    if where is not True:
        x = np.where(_constant_mask(where, ids.shape), x, -np.inf)
        ids = lift(rec, x)
    rows = np.transpose(ids, kept + list(axes))
    rows = rows.reshape((*rows.shape[:len(kept)], -1))
    if rows.shape[-1] == 0 and initial is np._NoValue:
        raise ValueError("zero-size array to reduction operation logaddexp which has no "
                         "identity")
    r = Tracer(rec, rows)
    while r.shape[-1] > 1:
        h = r.shape[-1] // 2
        pair = emit("logaddexp", r[..., :h], r[..., h : 2 * h])
        r = np.concatenate([pair, r[..., 2 * h :]], axis=-1) if r.shape[-1] % 2 else pair
    r = r[..., 0] if r.shape[-1] else Tracer(rec, rec.const(np.full(r.shape[:-1], -np.inf)))
    if initial is not np._NoValue:
        r = emit("logaddexp", r, float(initial))
    if keepdims:
        r = np.reshape(r, tuple(1 if d in axes else s for d, s in enumerate(ids.shape)))
    return r


_REDUCERS = {
    np.add: lambda x, axis=0, **kw: _sum(x, axis=axis, **kw),
    np.multiply: lambda x, axis=0, **kw: _prod(x, axis=axis, **kw),
    np.maximum: lambda x, axis=0, **kw: _max(x, axis=axis, **kw),
    np.minimum: lambda x, axis=0, **kw: _min(x, axis=axis, **kw),
    np.logaddexp: _logaddexp_reduce,
}

#: ufunc.accumulate: ``scan`` instructions for sums and products; ``maximum``/``minimum``
#: as log2 n doubling steps (exact in any order); ``logaddexp`` left to right as numpy
#: computes it (n emissions, numpy's bits).
_ACCUMULATORS = {np.add: "cumsum", np.multiply: "cumprod", np.maximum: "doubling",
                 np.minimum: "doubling", np.logaddexp: "sequential"}


def _accumulate(ufunc: np.ufunc, x, axis=0, dtype=None, out=None):
    _no_out(f"{ufunc.__name__}.accumulate", out, dtype)
    if axis is None:
        raise TypeError("accumulate does not allow multiple axes")
    how = _ACCUMULATORS[ufunc]
    if how == "cumsum":
        return red.record_cumsum(emit_family, x, axis=axis)
    if how == "cumprod":
        return red.record_cumprod(emit_family, x, axis=axis)
    rec = recorder_of([x])
    ids = np.moveaxis(lift(rec, x), axis, -1).copy()
    op = UFUNC_OPS[ufunc].name
    n = ids.shape[-1]
    if how == "doubling":  # Hillis-Steele: after step s each holds the extreme of 2s
        s = 1
        while s < n:
            ids[..., s:] = ids_of(emit(op, Tracer(rec, ids[..., s:]),
                                       Tracer(rec, ids[..., :-s])))
            s *= 2
    else:
        for k in range(1, n):
            ids[..., k] = ids_of(emit(op, Tracer(rec, ids[..., k - 1]),
                                      Tracer(rec, ids[..., k])))
    return Tracer(rec, np.moveaxis(ids, -1, axis))


# -- products (matmul family instructions: _contract.py) ---------------------------------
matmul = _contract.matmul


@implements(np.dot)
def _dot(a, b, out=None):
    if out is not None:
        raise TracingError("numpy.dot(..., out=...) cannot be traced")
    return _contract.dot(a, b)


@implements(np.vdot)
def _vdot(a, b):
    return _contract.vdot(a, b)


@implements(np.inner)
def _inner(a, b):
    return _contract.inner(a, b)


@implements(np.tensordot)
def _tensordot(a, b, axes=2):
    return _contract.tensordot(a, b, axes)


@implements(np.linalg.solve)
def _solve(a, b):
    # A Cholesky factor (or its transpose) is triangular by construction: two triangular
    # solves' worth of work instead of an LU factorization, and the same derivatives
    # (the factor's other triangle is constant zero).
    tri = _cholesky_factor(a)
    if tri is not None and np.ndim(b) in (1, 2):
        factor, trans = tri
        return chol.record_solve_triangular(emit_family, factor, b, trans=trans, lower=True)
    return lu.record_solve(emit_family, a, b)


def _cholesky_factor(a: Any) -> tuple[Tracer, int] | None:
    """``(L, trans)`` when ``a`` is a recorded Cholesky factor ``L`` (``trans`` 0) or its
    transpose (``trans`` 1), else ``None``."""
    if not isinstance(a, Tracer) or a.ndim != 2:
        return None
    rec = recorder_of([a])
    ids = ids_of(a)
    for trans, view in ((0, ids), (1, ids.T)):
        if rec.produced_by(np.ascontiguousarray(view).ravel()) == "cholesky":
            return Tracer(rec, np.ascontiguousarray(view)), trans
    return None


@implements(np.linalg.inv)
def _inv(a):
    return lu.record_inv(emit_family, a)


@implements(np.linalg.det)
def _det(a):
    return lu.record_det(emit_family, a)


@implements(np.linalg.slogdet)
def _slogdet(a):
    return lu.record_slogdet(emit_family, a)


@implements(np.linalg.cholesky)
def _cholesky(a, /, *, upper=False):
    return chol.record_cholesky(emit_family, a, upper=upper)


@implements(np.einsum)
def _einsum(*operands, **kwargs):
    return _contract.einsum(*operands, **kwargs)


@implements(np.outer)
def _outer(a, b, out=None):
    return emit("mul", np.ravel(a)[:, None], np.ravel(b)[None, :])


@implements(np.linalg.norm)
def _norm(x, ord=None, axis=None, keepdims=False):
    return compose.norm(x, ord=ord, axis=axis, keepdims=keepdims)


@implements(np.linalg.pinv)
def _pinv(a, rcond=None, hermitian=False, **kwargs):
    return compose.pinv(a, rcond=rcond, hermitian=hermitian, **kwargs)


@implements(np.linalg.lstsq)
def _lstsq(a, b, rcond=None):
    return compose.lstsq(a, b, rcond=rcond)


@implements(np.linalg.matrix_power)
def _matrix_power(a, n):
    return compose.matrix_power(a, n)


@implements(np.cross)
def _cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    return compose.cross(a, b, axisa=axisa, axisb=axisb, axisc=axisc, axis=axis)


@implements(np.kron)
def _kron(a, b):
    return compose.kron(a, b)


@implements(np.linalg.eigh)
def _eigh(a, UPLO="L"):
    return eig.record_eigh(emit_family, a, UPLO=UPLO)


@implements(np.linalg.eigvalsh)
def _eigvalsh(a, UPLO="L"):
    return eig.record_eigvalsh(emit_family, a, UPLO=UPLO)


@implements(np.linalg.svd)
def _svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    return eig.record_svd(emit_family, a, full_matrices=full_matrices, compute_uv=compute_uv,
                          hermitian=hermitian)


@implements(np.linalg.qr)
def _qr(a, mode="reduced"):
    return eig.record_qr(emit_family, a, mode=mode)


# -- selection and clipping --------------------------------------------------------------
@implements(np.where)
def _where(cond, a=None, b=None):
    if a is None or b is None:
        raise TracingError("numpy.where(cond) with one argument returns indices; not traceable")
    if not isinstance(cond, Tracer):  # constant mask: pick ids, record nothing
        rec = recorder_of([a, b])
        ia, ib = np.broadcast_arrays(lift(rec, a), lift(rec, b))
        return Tracer(rec, np.where(np.asarray(cond) != 0, ia, ib))
    return emit("where", cond, a, b)


@implements(np.clip)
def _clip(x, a_min=None, a_max=None, out=None, **kw):
    if out is not None:
        raise TracingError("numpy.clip(..., out=...) cannot be traced")
    lo = kw.pop("min", a_min)
    hi = kw.pop("max", a_max)
    if lo is None and hi is None:
        raise ValueError("One of max or min must be given")
    if lo is None:
        return emit("minimum", x, hi)
    if hi is None:
        return emit("maximum", x, lo)
    return emit("clip", x, lo, hi)


# -- shape manipulation ------------------------------------------------------------------
def _ids(x: Any) -> np.ndarray:
    return ids_of(x) if isinstance(x, Tracer) else np.asarray(x)


def _shape_fn(fn: Callable) -> Callable:
    """Lift a numpy shape function to tracers by applying it to the id array."""

    def impl(x, *args, **kwargs):
        rec = recorder_of([x])
        return Tracer(rec, np.asarray(fn(lift(rec, x), *args, **kwargs)))

    return impl


for _f in (
    np.reshape, np.ravel, np.transpose, np.squeeze, np.expand_dims, np.atleast_1d,
    np.atleast_2d, np.broadcast_to, np.swapaxes, np.moveaxis, np.flip, np.roll, np.tile,
    np.repeat, np.diagonal, np.copy,
):
    FUNCTIONS[_f] = _shape_fn(_f)


def _triangle(fn: Callable) -> Callable:
    """np.triu/np.tril: the cleared triangle holds the constant 0.0, not an id."""

    def impl(m, k=0):
        rec = recorder_of([m])
        ids = lift(rec, m)
        keep = fn(np.ones(ids.shape[-2:], dtype=bool), k)
        return Tracer(rec, np.where(keep, ids, rec.const(np.zeros(()))))

    return impl


FUNCTIONS[np.triu] = _triangle(np.triu)
FUNCTIONS[np.tril] = _triangle(np.tril)


def _seq_fn(fn: Callable) -> Callable:
    def impl(arrays, *args, **kwargs):
        arrays = list(arrays)
        rec = recorder_of(arrays)
        return Tracer(rec, np.asarray(fn([lift(rec, a) for a in arrays], *args, **kwargs)))

    return impl


for _f in (np.concatenate, np.stack, np.hstack, np.vstack, np.column_stack, np.append):
    FUNCTIONS[_f] = _seq_fn(_f)
FUNCTIONS[np.append] = lambda arr, values, axis=None: FUNCTIONS[np.concatenate](
    [np.ravel(arr) if axis is None else arr, np.ravel(values) if axis is None else values],
    axis=0 if axis is None else axis,
)


def stack(values: list) -> Tracer:
    """np.stack of a list of tracers and numbers (used for lists mixed into arithmetic)."""
    return FUNCTIONS[np.stack](values)


@implements(np.diff)
def _diff(x, n=1, axis=-1):
    for _ in range(n):
        ids = _ids(x)
        sl1 = [slice(None)] * ids.ndim
        sl0 = [slice(None)] * ids.ndim
        sl1[axis] = slice(1, None)
        sl0[axis] = slice(None, -1)
        x = x[tuple(sl1)] - x[tuple(sl0)]
    return x


@implements(np.trace)
def _trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    _no_out("trace", out, dtype)
    return compose.trace(a, offset=offset, axis1=axis1, axis2=axis2)


def _const_like(fill: float | None) -> Callable:
    def impl(x, *args, **kwargs):
        shape = kwargs.get("shape") or np.shape(_ids(x))
        rec = recorder_of([x, *args])
        value = args[0] if fill is None else fill
        if isinstance(value, Tracer):
            return Tracer(rec, np.broadcast_to(ids_of(value), shape).copy())
        return Tracer(rec, rec.const(np.full(shape, value, dtype=np.float64)))

    return impl


FUNCTIONS[np.zeros_like] = _const_like(0.0)
FUNCTIONS[np.ones_like] = _const_like(1.0)
FUNCTIONS[np.empty_like] = _const_like(0.0)
FUNCTIONS[np.full_like] = _const_like(None)
FUNCTIONS[np.shape] = lambda x: _ids(x).shape
FUNCTIONS[np.ndim] = lambda x: _ids(x).ndim
FUNCTIONS[np.size] = lambda x, axis=None: np.size(_ids(x), axis)
FUNCTIONS[np.result_type] = lambda *a: np.result_type(
    *[np.float64 if isinstance(v, Tracer) else v for v in a]
)


# The other families of numpy functions register into FUNCTIONS when imported (they build
# on implements and the helpers above).
from . import (  # noqa: E402, F401
    _numpy_elementwise,
    _numpy_misc,
    _numpy_order,
    _numpy_shape,
)
