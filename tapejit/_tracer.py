"""The tracing stand-in: an array of node ids that numpy code can operate on.

A :class:`Tracer` behaves like a float64 ndarray inside the user's function. Python
operators and numpy ufuncs map to ops of the op table (``__array_ufunc__``); numpy
functions map to implementations in ``_numpy_funcs.py`` (``__array_function__``). Anything
that would silently turn a traced value into a constant (``float()``, ``bool()``, using it
as an index, ``np.asarray``) raises a :class:`~tapejit.TracingError` naming what to write
instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import TracingError
from ._ops import BY_NAME, COMPARISON, OPS, Op
from ._tape_builder import Recorder

#: numpy ufunc -> op, derived from the op table's numpy references and aliases.
UFUNC_OPS: dict[np.ufunc, Op] = {
    u: op for op in OPS for u in (op.numpy, *op.aliases) if isinstance(u, np.ufunc)}


class Tracer:
    """A traced float64 array (or scalar) during :func:`tapejit.record`.

    Not created by users; the function being recorded receives tracers in place of its
    arguments.
    """

    __slots__ = ("_ids", "_rec", "_truth")
    __array_priority__ = 1000.0
    __hash__ = None  # comparisons are traced, so tracers are not hashable

    def __init__(self, rec: Recorder, ids: np.ndarray, truth: bool = False) -> None:
        self._rec = rec
        self._ids = ids
        self._truth = truth  # values are 1.0/0.0 from a comparison

    # -- array attributes ----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._ids.shape

    @property
    def ndim(self) -> int:
        return self._ids.ndim

    @property
    def size(self) -> int:
        return self._ids.size

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    @property
    def T(self) -> Tracer:
        return self._view(self._ids.T)

    def __len__(self) -> int:
        if self._ids.ndim == 0:
            raise TypeError("len() of a traced scalar")
        return len(self._ids)

    def __iter__(self):
        if self._ids.ndim == 0:
            raise TypeError("iteration over a traced scalar")
        for row in self._ids:
            yield self._view(row)

    def __repr__(self) -> str:
        return f"Tracer(shape={self.shape})"

    def _view(self, ids: Any) -> Tracer:
        return Tracer(self._rec, np.asarray(ids), self._truth)

    # -- conversions that would lose the trace -------------------------------------------
    def __bool__(self) -> bool:
        """Decide a Python branch at the recording point and record it as a guard.

        The tape then holds the comparison and the outcome seen; every evaluation checks
        it at every point, so a point that would take another branch is never given this
        branch's values (see :meth:`Tape.forward`). ``np.where``, ``np.maximum``,
        ``np.abs`` and ``np.clip`` need no guard.
        """
        if self._ids.size != 1:
            raise ValueError(
                "The truth value of a traced array with more than one element is ambiguous. "
                "Use np.all()/np.any() outside the traced code, or np.where to select."
            )
        node = int(self._ids.reshape(-1)[0])
        if node < 0:  # a constant: an ordinary Python branch
            return bool(self._rec.values(np.array(node)) != 0.0)
        if not self._truth:
            node = int(emit("not_equal", self, 0.0)._ids.reshape(-1)[0])
            if node < 0:
                return bool(self._rec.values(np.array(node)) != 0.0)
        return self._rec.guard(node)

    def _no_convert(self, what: str) -> TracingError:
        return TracingError(
            f"{what} of a traced value would freeze it as a constant and drop its "
            "derivative. Keep it an array: use numpy functions (np.sin, not math.sin), "
            "np.stack/np.concatenate instead of np.array([...]), and np.zeros_like(x) "
            "for an array you fill by assignment."
        )

    def __float__(self) -> float:
        raise self._no_convert("float()")

    def __int__(self) -> int:
        raise self._no_convert("int()")

    def __complex__(self) -> complex:
        raise self._no_convert("complex()")

    def __index__(self) -> int:
        raise TracingError(
            "a traced value was used as an index or size; indices must not depend on the "
            "inputs (use np.where or a constant index)"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        err = self._no_convert("converting to a numpy array (np.asarray/np.array)")
        err.args = (err.args[0] + " SciPy functions convert their arguments so: for "
                    "scipy.linalg's solve_triangular, cho_factor, cho_solve and expm use "
                    "tapejit.linalg's (same arguments).",)
        raise err

    def item(self, *args: Any) -> float:
        raise self._no_convert("item()")

    def tolist(self) -> list:
        raise self._no_convert("tolist()")

    # -- indexing ------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Tracer:
        _check_key(key)
        return self._view(self._ids[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_key(key)
        self._ids[key] = lift(self._rec, value)

    # -- numpy protocols -----------------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any):
        # lazy: _numpy_funcs builds on this module (an import circle)
        from ._numpy_funcs import apply_ufunc

        return apply_ufunc(self._rec, ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        # lazy: _numpy_funcs builds on this module (an import circle)
        from ._numpy_funcs import FUNCTIONS, unsupported

        impl = FUNCTIONS.get(func)
        if impl is None:
            raise unsupported(func)
        return impl(*args, **kwargs)

    # -- operators -----------------------------------------------------------------------
    def __add__(self, o):
        return binary("add", self, o)

    def __radd__(self, o):
        return binary("add", o, self)

    def __sub__(self, o):
        return binary("sub", self, o)

    def __rsub__(self, o):
        return binary("sub", o, self)

    def __mul__(self, o):
        return binary("mul", self, o)

    def __rmul__(self, o):
        return binary("mul", o, self)

    def __truediv__(self, o):
        return binary("div", self, o)

    def __rtruediv__(self, o):
        return binary("div", o, self)

    def __pow__(self, o):
        return power(self, o)

    def __rpow__(self, o):
        return power(o, self)

    # numpy's floor_divide and remainder (npy_divmod), not floor(a / b): 1.0 // 0.1 is 9.0
    def __floordiv__(self, o):
        return binary("floor_divide", self, o)

    def __rfloordiv__(self, o):
        return binary("floor_divide", o, self)

    def __mod__(self, o):
        return binary("mod", self, o)

    def __rmod__(self, o):
        return binary("mod", o, self)

    def __divmod__(self, o):
        return binary("floor_divide", self, o), binary("mod", self, o)

    def __rdivmod__(self, o):
        return binary("floor_divide", o, self), binary("mod", o, self)

    def __neg__(self):
        return unary("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return unary("abs", self)

    def __lt__(self, o):
        return binary("less", self, o)

    def __le__(self, o):
        return binary("less_equal", self, o)

    def __gt__(self, o):
        return binary("greater", self, o)

    def __ge__(self, o):
        return binary("greater_equal", self, o)

    def __eq__(self, o):  # type: ignore[override]
        return binary("equal", self, o)

    def __ne__(self, o):  # type: ignore[override]
        return binary("not_equal", self, o)

    def __and__(self, o):
        return logical("and", self, o)

    __rand__ = __and__

    def __or__(self, o):
        return logical("or", self, o)

    __ror__ = __or__

    def __invert__(self):
        return logical("not", self)

    def __matmul__(self, o):
        # lazy: _numpy_funcs builds on this module (an import circle)
        from ._numpy_funcs import matmul

        return matmul(self, o)

    def __rmatmul__(self, o):
        # lazy: _numpy_funcs builds on this module (an import circle)
        from ._numpy_funcs import matmul

        return matmul(o, self)

    # -- ndarray methods -----------------------------------------------------------------
    def reshape(self, *shape: Any, order: str = "C") -> Tracer:
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return self._view(self._ids.reshape(shape, order=order))

    def ravel(self, order: str = "C") -> Tracer:
        return self._view(self._ids.ravel(order=order))

    def flatten(self, order: str = "C") -> Tracer:
        return self._view(self._ids.flatten(order=order))

    def transpose(self, *axes: Any) -> Tracer:
        return self._view(self._ids.transpose(*axes))

    def squeeze(self, axis: Any = None) -> Tracer:
        return self._view(self._ids.squeeze(axis))

    def copy(self) -> Tracer:
        return self._view(self._ids.copy())

    def astype(self, dtype: Any, **kwargs: Any) -> Tracer:
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise self._no_convert(f"astype({np.dtype(dtype)})")
        return self

    def sum(self, axis=None, keepdims=False, **kw):
        return np.sum(self, axis=axis, keepdims=keepdims, **kw)

    def prod(self, axis=None, keepdims=False, **kw):
        return np.prod(self, axis=axis, keepdims=keepdims, **kw)

    def mean(self, axis=None, keepdims=False, **kw):
        return np.mean(self, axis=axis, keepdims=keepdims, **kw)

    def var(self, axis=None, keepdims=False, **kw):
        return np.var(self, axis=axis, keepdims=keepdims, **kw)

    def std(self, axis=None, keepdims=False, **kw):
        return np.std(self, axis=axis, keepdims=keepdims, **kw)

    def max(self, axis=None, keepdims=False, **kw):
        return np.max(self, axis=axis, keepdims=keepdims, **kw)

    def min(self, axis=None, keepdims=False, **kw):
        return np.min(self, axis=axis, keepdims=keepdims, **kw)

    def dot(self, o):
        return np.dot(self, o)

    def cumsum(self, axis=None):
        return np.cumsum(self, axis=axis)


def _check_key(key: Any) -> None:
    parts = key if isinstance(key, tuple) else (key,)
    for k in parts:
        if isinstance(k, Tracer):
            raise TracingError(
                "a traced value was used as an index; indices must not depend on the "
                "inputs (use np.where, or index with constants)"
            )


def ids_of(t: Tracer) -> np.ndarray:
    """The node ids of a tracer, an int array shaped like the traced array (negative ids
    are constants of the recorder's pool)."""
    return t._ids


def recorder_of(values: Any) -> Recorder | None:
    """The recorder of the first tracer among ``values``; error if two recordings mix."""
    rec = None
    for v in values:
        if isinstance(v, Tracer):
            if rec is None:
                rec = v._rec
            elif v._rec is not rec:
                raise TracingError("values from two different recordings were combined")
    return rec


def lift(rec: Recorder, value: Any) -> np.ndarray:
    """Ids of a tracer, or of a numeric constant (a number or an array of numbers)."""
    if isinstance(value, Tracer):
        if value._rec is not rec:
            raise TracingError("values from two different recordings were combined")
        return value._ids
    if isinstance(value, list | tuple) and any(isinstance(v, Tracer) for v in value):
        # lazy: _numpy_funcs builds on this module (an import circle)
        from ._numpy_funcs import stack

        return stack(list(value))._ids
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TracingError(
            f"cannot combine a traced value with {type(value).__name__} of dtype {arr.dtype}; "
            "expected a real number or an array of real numbers"
        )
    return rec.const(arr.astype(np.float64))


def emit(name: str, *values: Any) -> Any:
    """Apply op ``name`` elementwise with numpy broadcasting; constants fold."""
    rec = recorder_of(values)
    op = BY_NAME[name]
    if rec is None:  # no tracer involved: plain numpy
        with np.errstate(all="ignore"):
            return op.numpy(*values)
    ids = rec.emit(op, *(lift(rec, v) for v in values))
    return Tracer(rec, ids, COMPARISON in op.flags)


def emit_family(name: str, operands: list, attrs: tuple[int, ...], shape: tuple) -> Any:
    """Record one instruction of family ``name`` over whole operands (tracers or arrays,
    read flat in C order) with integer ``attrs``; the result has ``shape``. Without a
    tracer among the operands, the family's numpy rule computes a plain array."""
    # lazy: the families' modules read the op table through _program (import order)
    from ._families import BY_NAME as FAMILY

    family = FAMILY[name]
    rec = recorder_of(operands)
    attrs = tuple(int(v) for v in attrs)
    if rec is None:
        flat = [np.asarray(o, dtype=np.float64).ravel() for o in operands]
        return np.asarray(family.reference(attrs, *flat)).reshape(shape)
    ids = rec.emit_family(family, [lift(rec, o) for o in operands], attrs)
    return Tracer(rec, ids.reshape(shape))


def unary(name: str, x: Any) -> Any:
    return emit(name, x)


def binary(name: str, x: Any, y: Any) -> Any:
    return emit(name, x, y)


def power(x: Any, y: Any) -> Any:
    """``x ** y``; a constant exponent 2 records ``square``."""
    if not isinstance(y, Tracer) and np.ndim(y) == 0 and float(y) == 2.0:
        return emit("square", x)
    return emit("pow", x, y)


def _truth(x: Any) -> Any:
    if isinstance(x, Tracer):
        return x if x._truth else emit("not_equal", x, 0.0)
    return np.asarray(x) != 0


def logical(kind: str, x: Any, y: Any = None) -> Any:
    """``&``, ``|`` and ``~`` on traced truth values (1.0/0.0), recorded branch-free."""
    if kind == "not":
        return emit("equal", _truth(x), 0.0)
    a, b = _truth(x), _truth(y)
    r = emit("mul" if kind == "and" else "maximum", a, b)
    if isinstance(r, Tracer):
        r._truth = True
    return r
