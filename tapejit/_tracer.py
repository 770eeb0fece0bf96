"""The tracing stand-in: an array of node ids that numpy code can operate on.

A :class:`Tracer` behaves like a float64 ndarray inside the user's function. Python
operators and numpy ufuncs map to ops of the op table (``__array_ufunc__``); numpy
functions map to implementations in ``_numpy_funcs.py`` (``__array_function__``). Anything
that would silently turn a traced value into a constant (``float()``, ``bool()``, using it
as an index, ``np.asarray``) raises a :class:`~tapejit.TracingError` naming what to write
instead.

Where numpy would give a float64 *scalar* (an element of an array, arithmetic on scalars
and 0-d arrays), tracing gives a :class:`ScalarTracer`: it holds one id and its value at
the recording point, and records each operation through the recorder's scalar path
(appends to flat buffers, no numpy call), so scalar Python code records about twenty
times faster than through numpy's array machinery, into the same tape. Scalars and
arrays mix freely: a scalar meeting an array records as a 0-d traced array.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import TracingError
from ._ops import BY_NAME, COMPARISON, OPS, Op, ScipySpecial
from ._tape_builder import Recorder

#: numpy ufunc -> op, derived from the op table's numpy references and aliases. The ufuncs
#: of scipy.special join it when the tracer first needs them (:func:`op_of_ufunc`).
UFUNC_OPS: dict[np.ufunc, Op] = {
    u: op for op in OPS for u in (op.numpy, *op.aliases) if isinstance(u, np.ufunc)}
#: The references of the table that name a function of scipy.special, with their ops.
SCIPY_REFERENCES: tuple[tuple[ScipySpecial, Op], ...] = tuple(
    (u, op) for op in OPS for u in (op.numpy, *op.aliases) if isinstance(u, ScipySpecial))
_scipy_mapped = False  # SCIPY_REFERENCES' ufuncs are in UFUNC_OPS


def map_scipy_ufuncs() -> None:
    """Add the ufuncs of :data:`SCIPY_REFERENCES` to :data:`UFUNC_OPS`, importing
    scipy.special if it is not yet."""
    global _scipy_mapped
    for ref, op in SCIPY_REFERENCES:
        UFUNC_OPS[ref.resolve()] = op  # threads that race here add the same entries
    _scipy_mapped = True  # only once all are in


def op_of_ufunc(ufunc: np.ufunc) -> Op | None:
    """The op that ``ufunc`` records, or None.

    A ufunc not in :data:`UFUNC_OPS` yet may be scipy.special's: where the user has
    imported scipy.special (as anyone must who calls one of its ufuncs), its ufuncs of the
    table are mapped now, once, and ``import tapejit`` alone never imports it.
    """
    op = UFUNC_OPS.get(ufunc)
    if op is None and not _scipy_mapped and "scipy.special" in sys.modules:
        map_scipy_ufuncs()
        op = UFUNC_OPS.get(ufunc)
    return op


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
        # what a user sees printing a value inside the function being recorded
        return f"<traced float64 array, shape {self.shape}>"

    def _view(self, ids: Any) -> Tracer:
        if not isinstance(ids, np.ndarray):  # numpy gave a scalar: so does tracing
            node = int(ids)
            return ScalarTracer(self._rec, node, self._rec.value(node), self._truth)
        return Tracer(self._rec, ids, self._truth)

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
        rec = self._rec
        if not self._truth:
            # inside a loop body the comparison may be recorded by the body's recorder
            t = emit("not_equal", self, 0.0)
            rec, node = t._rec, int(t._ids.reshape(-1)[0])
            if node < 0:
                return bool(rec.values(np.array(node)) != 0.0)
        return rec.guard(node)

    def _no_convert(self, what: str) -> TracingError:
        return TracingError(
            f"{what} of a traced value would freeze it as a constant and drop its "
            "derivative. Keep it traced: use numpy functions (np.sin, not math.sin), and "
            "for an array filled by assignment start from traced values (y = "
            "np.zeros_like(x, shape=(3,)), then y[0] = ...): a float array such as "
            "np.zeros(3) cannot hold them."
        )

    def __float__(self) -> float:
        raise self._no_convert("float()")

    def __int__(self) -> int:
        """``int(x)``: the integer at the recording point, with guards that ``x`` stays
        where truncation gives that integer (like a branch: a point that truncates to
        another integer is caught, never given this one)."""
        if self._ids.size != 1:
            raise TypeError("only a traced array of one element can be converted to int")
        value = self._rec.value(int(self._ids.reshape(-1)[0]))
        if not np.isfinite(value):
            raise ValueError(f"cannot convert the traced value {value} to an integer")
        k = int(value)
        # the interval that truncates to k: [k, k+1) above 0, (k-1, k] below, (-1, 1) at 0
        bool(binary("greater" if k <= 0 else "greater_equal", self, k - 1 if k <= 0 else k))
        bool(binary("less" if k >= 0 else "less_equal", self, k + 1 if k >= 0 else k))
        return k

    def __complex__(self) -> complex:
        raise self._no_convert("complex()")

    def __index__(self) -> int:
        raise TracingError(
            "a traced value was used as an index or size; use int(x) for an index that "
            "the tape guards, np.where to select, or a constant index"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """An object array of traced scalars, so ``np.array([r * np.sin(t), r])`` and
        ``np.asarray(x)`` work as in JAX and autograd code.

        Arithmetic on such an array records element by element, and a traced operand
        or a returned result turns it back into a traced array. A float dtype, or a
        SciPy function converting its argument, raises instead (it would freeze the value).
        """
        if dtype is not None and np.dtype(dtype) != np.dtype(object):
            err = self._no_convert(f"converting to a numpy array of dtype {np.dtype(dtype)}")
            err.args = (err.args[0] + " (numpy's np.mean/np.var of an object array built with "
                        "np.array([...]) do this: build it with np.stack([...]) instead.)",)
            raise err
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".")[0] == "scipy":
            raise _scipy_conversion(caller)
        ids = self._ids
        out = np.empty(ids.shape, dtype=object)
        for k in np.ndindex(ids.shape):
            out[k] = self._view(ids[k])
        return out

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

    def fill(self, value: Any) -> None:
        self._ids[...] = lift(self._rec, value)

    def sort(self, axis: int = -1, **kw: Any) -> None:
        """In place, like ``ndarray.sort``."""
        self._ids[...] = np.sort(self, axis=axis, **kw)._ids

    @property
    def flat(self) -> _Flat:
        return _Flat(self)

    @property
    def real(self) -> Tracer:
        return self

    @property
    def imag(self) -> Any:
        return np.zeros_like(self)

    def conj(self) -> Tracer:
        return self

    conjugate = conj

    def __round__(self, ndigits: int | None = None) -> Any:
        return np.round(self, ndigits or 0)


#: ndarray methods that are the numpy function of the same meaning (``x.clip(0, 1)`` is
#: ``np.clip(x, 0, 1)``): each becomes a method that calls it.
_ARRAY_METHODS: dict[str, Any] = {
    "sum": np.sum, "prod": np.prod, "mean": np.mean, "var": np.var, "std": np.std,
    "max": np.max, "min": np.min, "ptp": np.ptp, "all": np.all, "any": np.any,
    "argmax": np.argmax, "argmin": np.argmin, "argsort": np.argsort,
    "cumsum": np.cumsum, "cumprod": np.cumprod, "dot": np.dot, "clip": np.clip,
    "round": np.round, "swapaxes": np.swapaxes, "repeat": np.repeat,
    "diagonal": np.diagonal, "take": np.take, "trace": np.trace, "nonzero": np.nonzero,
}


def _method_of(fn: Any) -> Any:
    def method(self: Tracer, *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    method.__name__ = fn.__name__
    method.__doc__ = f"``np.{fn.__name__}`` of the traced array."
    return method


def _object_loop_method(ufunc: np.ufunc | ScipySpecial) -> Any:
    """numpy's loop for object arrays calls a method named like the ufunc on each element
    (``np.sin(a)`` calls ``a[i].sin()``): on a traced scalar it records the ufunc. A
    :class:`ScipySpecial` is resolved at the call."""

    def method(self: Tracer, *others: Any) -> Any:
        return ufunc(self, *others)

    method.__name__ = ufunc.name if isinstance(ufunc, ScipySpecial) else ufunc.__name__
    return method


for _name, _fn in _ARRAY_METHODS.items():
    setattr(Tracer, _name, _method_of(_fn))


class _Flat:
    """``x.flat`` of a traced array: C-order indexing that reads and assigns through."""

    def __init__(self, t: Tracer) -> None:
        self._t = t

    def __len__(self) -> int:
        return self._t.size

    def __getitem__(self, key: Any) -> Tracer:
        _check_key(key)
        return self._t._view(self._t._ids.flat[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_key(key)
        self._t._ids.flat[key] = lift(self._t._rec, value)

    def __iter__(self):
        return iter(self._t.ravel())


#: Whether each opcode's result is a truth value (1.0/0.0), from the table's flags.
_TRUTH: tuple[bool, ...] = tuple(
    any(op.code == code and COMPARISON in op.flags for op in OPS) for code in range(128))


def _mixed() -> TracingError:
    return TracingError("values from two different recordings were combined")


class Body:
    """A loop body being recorded (``tapejit/_loop.py``): its recorder, the recorder it
    is nested in, and how a traced value of that enclosing recording becomes one of the
    body's (``capture(tracer) -> tracer``: the body's closure)."""

    __slots__ = ("capture", "parent", "rec")

    def __init__(self, rec: Recorder, parent: Recorder | None,
                 capture: Callable[[Tracer], Tracer]) -> None:
        self.rec, self.parent, self.capture = rec, parent, capture


class _Thread(threading.local):
    """What this thread is recording: each thread records its own loop bodies (tapes are
    recorded, and on the generic tier differentiated, from many threads at once)."""

    def __init__(self) -> None:
        self.bodies: list[Body] = []


_THREAD = _Thread()
_BODIES_LOCK = threading.Lock()
# Loop bodies being recorded in any thread: while it is 0, the checks on every traced
# operation cost one test of a global, not a thread-local lookup.
_ANY_BODIES = 0


def bodies() -> list[Body]:
    """The loop bodies this thread is recording, innermost last (:func:`enter_body`).
    While one is, every operation on traced values records into the innermost body, and
    a value of an enclosing recording is captured into it first (:func:`adopt`)."""
    return _THREAD.bodies if _ANY_BODIES else []


def enter_body(body: Body) -> None:
    """Record into ``body`` from now on in this thread (until :func:`leave_body`)."""
    global _ANY_BODIES
    with _BODIES_LOCK:
        _ANY_BODIES += 1
    _THREAD.bodies.append(body)


def leave_body() -> Body:
    """Stop recording into this thread's innermost body; return it."""
    global _ANY_BODIES
    body = _THREAD.bodies.pop()
    with _BODIES_LOCK:
        _ANY_BODIES -= 1
    return body


def adopt(value: Tracer, level: int = -1) -> Tracer:
    """``value``, a tracer of the recording enclosing loop body ``bodies()[level]`` (or
    of one around that), as a traced value of that body."""
    stack = _THREAD.bodies
    body = stack[level]
    if value._rec is body.rec:
        return value
    depth = level % len(stack)
    if body.parent is None and depth == 0:  # the first traced value the body meets
        body.parent = value._rec
    if value._rec is not body.parent and depth > 0:
        value = adopt(value, depth - 1)
    if value._rec is not body.parent:
        raise _mixed()
    return body.capture(value)


def _binary(op: Op, x: Any, y: Any) -> Any:
    """``op`` on a traced scalar and another operand: the scalar path for a traced scalar
    or a Python number, :func:`emit` for anything else (arrays, numpy scalars, ...)."""
    tx, ty = type(x), type(y)
    stack = _ANY_BODIES and _THREAD.bodies
    if stack and any(type(v) is ScalarTracer and v._rec is not stack[-1].rec
                     for v in (x, y)):
        return emit(op.name, x, y)  # a value from outside a loop body: captured first
    try:
        if tx is ScalarTracer:
            rec, a, av = x._rec, x._id, x._val
            if ty is ScalarTracer:
                if y._rec is not rec:
                    raise _mixed()
                b, bv = y._id, y._val
            elif ty is float or ty is int:
                bv = float(y)
                b = rec.scalar_const(bv)
            else:
                return emit(op.name, x, y)
        elif tx is float or tx is int:  # y is the traced scalar, x is pooled first
            rec = y._rec
            av = float(x)
            a = rec.scalar_const(av)
            b, bv = y._id, y._val
        else:
            return emit(op.name, x, y)
    except OverflowError:  # an int beyond float64: lift's error
        return emit(op.name, x, y)
    node, value = rec.scalar2(op, a, av, b, bv)
    return ScalarTracer(rec, node, value, _TRUTH[op.code])


def _unary(op: Op, x: ScalarTracer) -> ScalarTracer:
    stack = _ANY_BODIES and _THREAD.bodies
    if stack and x._rec is not stack[-1].rec:
        return emit(op.name, x)
    node, value = x._rec.scalar1(op, x._id, x._val)
    return ScalarTracer(x._rec, node, value, _TRUTH[op.code])


_ADD, _SUB, _MUL, _DIV = BY_NAME["add"], BY_NAME["sub"], BY_NAME["mul"], BY_NAME["div"]
_NEG, _ABS, _NE = BY_NAME["neg"], BY_NAME["abs"], BY_NAME["not_equal"]
_LT, _LE, _GT, _GE, _EQ = (BY_NAME[n] for n in (
    "less", "less_equal", "greater", "greater_equal", "equal"))
_FLOORDIV, _MOD = BY_NAME["floor_divide"], BY_NAME["mod"]
#: The ufuncs a traced scalar records directly (those of the op table with no rule of
#: their own in ``_numpy_funcs``), filled at the first ufunc on a traced scalar.
_scalar_ufuncs: dict[np.ufunc, Op] = {}


class ScalarTracer(Tracer):
    """A traced float64 scalar during :func:`tapejit.record`: an element of a traced
    array, or the result of arithmetic on traced scalars (where numpy gives a float64
    scalar).

    It holds its one id and its value at the recording point. Its operators and numpy
    ufuncs record through the recorder's scalar path, the same instructions as the
    array path records for one element; anything else sees it as a 0-d traced array.
    Immutable, like numpy's scalars. Not created by users.
    """

    __slots__ = ("_id", "_val")

    def __init__(self, rec: Recorder, node: int, value: float, truth: bool = False) -> None:
        self._rec = rec
        self._id = node
        self._val = value
        self._truth = truth

    @property
    def _ids(self) -> np.ndarray:  # type: ignore[override]
        return np.array(self._id, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    @property
    def ndim(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "<traced float64 scalar>"

    def __bool__(self) -> bool:
        """A Python branch on a traced scalar: decided at the recording point and
        recorded as a guard, exactly as :meth:`Tracer.__bool__`."""
        if self._id < 0:  # a constant: an ordinary Python branch
            return self._val != 0.0
        t = self if self._truth else _binary(_NE, self, 0.0)
        if t._id < 0:
            return t._val != 0.0
        return self._rec.guard_outcome(t._id, t._val != 0.0)

    def _immutable(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a traced scalar cannot be assigned into (as a numpy float64 "
                        "cannot); build an array, e.g. np.zeros_like(x, shape=(3,))")

    __setitem__ = fill = sort = _immutable

    @property
    def flat(self) -> _Flat:
        return _Flat(Tracer(self._rec, self._ids))  # assigning into it changes a copy

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any):
        if not _scalar_ufuncs:
            # lazy: _numpy_funcs builds on this module (an import circle)
            from ._numpy_funcs import ufuncs_with_rules

            rules = ufuncs_with_rules()
            _scalar_ufuncs.update({u: op for u, op in UFUNC_OPS.items() if u not in rules})
        op = _scalar_ufuncs.get(ufunc) if method == "__call__" and not kwargs else None
        if op is None:
            return super().__array_ufunc__(ufunc, method, *inputs, **kwargs)
        if len(inputs) == 1:  # np.sin(x): only x
            return _unary(op, self)
        if len(inputs) == 2:
            return _binary(op, *inputs)
        return emit(op.name, *inputs)

    def __add__(self, o):
        return _binary(_ADD, self, o)

    def __radd__(self, o):
        return _binary(_ADD, o, self)

    def __sub__(self, o):
        return _binary(_SUB, self, o)

    def __rsub__(self, o):
        return _binary(_SUB, o, self)

    def __mul__(self, o):
        return _binary(_MUL, self, o)

    def __rmul__(self, o):
        return _binary(_MUL, o, self)

    def __truediv__(self, o):
        return _binary(_DIV, self, o)

    def __rtruediv__(self, o):
        return _binary(_DIV, o, self)

    def __floordiv__(self, o):
        return _binary(_FLOORDIV, self, o)

    def __rfloordiv__(self, o):
        return _binary(_FLOORDIV, o, self)

    def __mod__(self, o):
        return _binary(_MOD, self, o)

    def __rmod__(self, o):
        return _binary(_MOD, o, self)

    def __neg__(self):
        return _unary(_NEG, self)

    def __abs__(self):
        return _unary(_ABS, self)

    def __lt__(self, o):
        return _binary(_LT, self, o)

    def __le__(self, o):
        return _binary(_LE, self, o)

    def __gt__(self, o):
        return _binary(_GT, self, o)

    def __ge__(self, o):
        return _binary(_GE, self, o)

    def __eq__(self, o):  # type: ignore[override]
        return _binary(_EQ, self, o)

    def __ne__(self, o):  # type: ignore[override]
        return _binary(_NE, self, o)

    __hash__ = None  # comparisons are traced, so tracers are not hashable


def _scipy_conversion(module: str) -> TracingError:
    """The error for a SciPy function converting a traced value with ``np.asarray``:
    it names the function (from the SciPy frames on the stack) and tapejit's own, where
    one exists."""
    frame, names = sys._getframe(2), []
    while frame is not None and frame.f_globals.get("__name__", "").startswith("scipy"):
        names.append((frame.f_code.co_name, frame.f_globals["__name__"]))
        # a decorator's wrapper converts before the function runs: it holds the function
        names += [(v.__name__, v.__module__) for v in frame.f_locals.values()
                  if callable(v) and str(getattr(v, "__module__", "")).startswith("scipy")
                  and isinstance(getattr(v, "__name__", None), str)]
        frame = frame.f_back
    ours = {}
    for mod in ("tapejit.special", "tapejit.linalg"):
        try:
            ours[mod] = importlib.import_module(mod)
        except ImportError:
            continue
    public = [(n, m) for n, m in reversed(names) if not n.startswith(("_", "<"))
              and n not in ("wrapper", "inner", "decorated")]
    name, module = public[0] if public else (names[-1] if names else ("", module))
    instead = ""
    for n, m in reversed(names):
        hit = next((o for o, mod in ours.items() if hasattr(mod, n)), None)
        if hit:
            name, module = n, m
            instead = f" Use {hit}.{n} (same arguments) instead."
            break
    where = ".".join(p for p in module.split(".") if not p.startswith("_"))
    where = f"{where}.{name}" if name else where
    return TracingError(
        f"{where} converts its arguments to plain numpy arrays, which would freeze a traced "
        f"value as a constant.{instead or ' Write it with numpy functions instead.'} "
        "SciPy's ufuncs (scipy.special.erf, expit, ...) record directly."
    )


def _check_key(key: Any) -> None:
    parts = key if isinstance(key, tuple) else (key,)
    for k in parts:
        if isinstance(k, Tracer):
            raise TracingError(
                "a traced value was used as an index; indices must not depend on the "
                "inputs (use np.where, or index with constants)"
            )


def is_traced(value: Any) -> bool:
    """A traced value, or a list or tuple holding one (at any depth)."""
    return isinstance(value, Tracer) or (isinstance(value, list | tuple)
                                         and any(is_traced(v) for v in value))


def recording_of(t: Tracer) -> Recorder:
    """The recorder a tracer belongs to (whatever loop body is being recorded)."""
    return t._rec


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
            elif v._rec is not rec and not bodies():
                raise _mixed()
    stack = bodies()
    if rec is not None and stack:
        return stack[-1].rec  # lift captures values from outside the body
    return rec


def lift(rec: Recorder, value: Any) -> np.ndarray:
    """Ids of a tracer, or of a numeric constant (a number or an array of numbers)."""
    if isinstance(value, Tracer):
        if value._rec is not rec:
            stack = bodies()
            if stack and rec is stack[-1].rec:
                return adopt(value)._ids
            raise _mixed()
        return value._ids
    if isinstance(value, list | tuple) and is_traced(value):
        # lazy: _numpy_funcs builds on this module (an import circle)
        from ._numpy_funcs import stack

        return stack(list(value))._ids
    arr = np.asarray(value)
    if arr.dtype == object:  # np.array([...]) of traced values (Tracer.__array__)
        ids = np.empty(arr.shape, dtype=np.int64)
        for k in np.ndindex(arr.shape):
            item = arr[k]
            if not isinstance(item, Tracer | int | float | np.integer | np.floating) or \
                    isinstance(item, bool):
                raise TracingError(
                    f"an object array holds {type(item).__name__} at index {k}; expected "
                    "traced values and numbers only (an element never assigned is None)"
                )
            ids[k] = lift(rec, item)
        return ids
    if arr.dtype.kind not in "biuf":
        raise TracingError(
            f"cannot combine a traced value with {type(value).__name__} of dtype {arr.dtype}; "
            "expected a real number or an array of real numbers"
        )
    return rec.const(arr.astype(np.float64))


def emit(name: str, *values: Any) -> Any:
    """Apply op ``name`` elementwise with numpy broadcasting; constants fold. Where every
    operand is a scalar (a traced scalar or 0-d array, or a number), the result is a
    :class:`ScalarTracer`, recorded through the scalar path."""
    rec = recorder_of(values)
    op = BY_NAME[name]
    if rec is None:  # no tracer involved: plain numpy
        with np.errstate(all="ignore"):
            return op.numpy(*values)
    operands = _scalar_operands(rec, values)
    if operands is not None:
        node, value = rec.scalar(op, *operands)
        return ScalarTracer(rec, node, value, _TRUTH[op.code])
    ids = rec.emit(op, *(lift(rec, v) for v in values))
    return Tracer(rec, ids, COMPARISON in op.flags)


#: Numbers a traced scalar combines with on the scalar path (bool is an int).
_NUMBERS = (float, int, np.floating, np.integer, np.bool_)


def _scalar_operands(rec: Recorder, values: tuple) -> tuple[list[int], list[float]] | None:
    """The ids and values of ``values`` where every one is a scalar (a traced scalar or
    0-d array, a real number or 0-d array of one), constants pooled in order as
    :func:`lift` pools them; None where any is not."""
    for v in values:
        if isinstance(v, Tracer):
            if type(v) is not ScalarTracer and v._ids.ndim:
                return None
        elif not (isinstance(v, _NUMBERS) or (isinstance(v, np.ndarray) and v.ndim == 0
                  and v.dtype.kind in "biuf")):
            return None
    ids, vals = [], []
    if bodies():  # values from outside a loop body, as the body's
        values = tuple(adopt(v) if isinstance(v, Tracer) else v for v in values)
    for v in values:
        if type(v) is ScalarTracer:
            ids.append(v._id)
            vals.append(v._val)
        elif isinstance(v, Tracer):
            node = int(v._ids)
            ids.append(node)
            vals.append(rec.value(node))
        else:
            try:
                x = float(v)
            except OverflowError:  # an int beyond float64: lift's error
                return None
            ids.append(rec.scalar_const(x))
            vals.append(x)
    return ids, vals


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


for _ufunc in UFUNC_OPS:
    if not hasattr(Tracer, _ufunc.__name__):
        setattr(Tracer, _ufunc.__name__, _object_loop_method(_ufunc))
# scipy.special's by the name in the table (the ufunc's), without importing it
for _ref, _ in SCIPY_REFERENCES:
    if not hasattr(Tracer, _ref.name):
        setattr(Tracer, _ref.name, _object_loop_method(_ref))
