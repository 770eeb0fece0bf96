"""Function transforms with a per-function, branch-aware tape cache.

``grad``, ``value_and_grad``, ``jacobian``, ``hessian``, ``hvp`` and ``jvp`` all go through
one :class:`TapeCache` per function object, so the transforms of ``f`` share recordings.

How a call is served:

1. The *signature* of the call is the shapes of its array arguments, the values of its
   static arguments and ``argnums``. Arguments in ``argnums`` are differentiated; other
   float/array arguments become tape *parameters* (their values change from call to
   call without re-recording); Python ints, bools, strings and other hashable objects are
   *static*: passed to ``f`` as they are and part of the signature.
2. The cached tapes of that signature (one per branch pattern seen: the outcomes of the
   Python ``if``/``while`` decisions on traced values) are tried, most recently used
   first. Each evaluation checks the tape's guards at every point.
3. Points that fail the guards of every cached tape are re-recorded at the first such
   point, and the new tape joins the cache. With ``batched=True`` the points of one call
   are split this way by branch; each group is evaluated on its own tape in one sweep and
   the results are put back in order.

The cache holds at most :attr:`TapeCache.max_tapes` tapes (least recently used are
dropped). ``f.tape_cache`` of a transformed function shows its tapes and counters; a
:class:`RecordingWarning` is issued once when a function re-records on most calls.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _nested
from ._errors import TracingError
from ._passes import guard_slice
from ._record import bind_call, is_array_like, normalize_argnums, record
from ._tape import Tape, evaluate_keep_failed
from ._tracer import Tracer

#: Most tapes kept per function (all signatures and branches together).
MAX_TAPES = 64
#: A single call may record at most this many new branches before giving up.
MAX_NEW_BRANCHES_PER_CALL = 256


class RecordingWarning(UserWarning):
    """A function re-records a tape on most calls: its tapes are rarely reused."""


class Call:
    """One call's arguments, split into inputs, parameters and static values."""

    def __init__(self, f: Callable[..., Any], args: tuple, kwargs: dict,
                 argnums: int | Sequence[int], batched: bool) -> None:
        self.target, args, n_pos = bind_call(f, args, kwargs)
        nums = normalize_argnums(argnums, n_pos)
        names = tuple(kwargs)
        self.nums = nums
        self.args = args
        self.batched = batched
        self.static: dict[int, Any] = {}
        self.arrays: list[np.ndarray | None] = []
        key: list[Any] = [nums, batched, names]
        n_points = None
        for i, a in enumerate(args):
            what = f"argument {i}" if i < n_pos else f"keyword argument {names[i - n_pos]!r}"
            if i in nums or is_array_like(a):
                arr = np.asarray(a)
                if arr.dtype.kind not in "iuf" or isinstance(a, bool):
                    raise TypeError(
                        f"{what} must be a real number or array of real numbers; "
                        f"got {type(a).__name__}" + (f" of dtype {arr.dtype}" if arr.ndim else "")
                    )
                arr = arr.astype(np.float64, copy=False)
                if batched and (i in nums or arr.ndim > 0):
                    if arr.ndim == 0:
                        raise ValueError(
                            f"batched=True: {what} needs a leading points axis"
                        )
                    if n_points is None:
                        n_points = arr.shape[0]
                    elif arr.shape[0] != n_points:
                        raise ValueError(
                            f"batched=True: {what} has {arr.shape[0]} points, "
                            f"expected {n_points}"
                        )
                self.arrays.append(arr)
                key.append(("a", arr.shape[1:] if batched and arr.ndim else arr.shape))
            else:
                try:
                    hash(a)
                except TypeError:
                    raise TypeError(
                        f"{what} ({type(a).__name__}) is neither an array nor hashable; "
                        "non-array arguments are static and must be hashable"
                    ) from None
                self.static[i] = a
                self.arrays.append(None)
                key.append(("s", type(a), a))
        self.key = tuple(key)
        self.n_points = n_points
        self.param_pos = [i for i, a in enumerate(self.arrays) if a is not None and i not in nums]

    def per_point(self, i: int) -> bool:
        """Whether array argument ``i`` carries a points axis."""
        return self.batched and self.arrays[i].ndim > 0

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the differentiated arguments at one point."""
        return tuple(self.arrays[i].shape[1:] if self.batched else self.arrays[i].shape
                     for i in self.nums)

    def flat(self, positions: list[int]) -> np.ndarray | None:
        """Flat values of the arguments at ``positions``: ``(k,)`` or ``(n_points, k)``."""
        if not positions:
            return None
        if not self.batched:
            parts = [np.ravel(self.arrays[i]) for i in positions]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        n = self.n_points
        parts = [
            self.arrays[i].reshape(n, -1) if self.per_point(i)
            else np.broadcast_to(self.arrays[i].reshape(1, -1), (n, self.arrays[i].size))
            for i in positions
        ]
        return np.ascontiguousarray(np.concatenate(parts, axis=1))

    def args_at(self, k: int) -> tuple:
        """The arguments of point ``k`` of a batch (all arguments when not batched)."""
        if not self.batched:
            return self.args
        return tuple(
            self.arrays[i][k] if self.arrays[i] is not None and self.per_point(i) else a
            for i, a in enumerate(self.args)
        )


class TapeCache:
    """Tapes of one function, keyed by call signature and branch pattern (LRU).

    Attributes
    ----------
    max_tapes : int
        Capacity; the least recently used tape is dropped beyond it.
    n_calls, n_records : int
        Calls served and tapes recorded so far.
    """

    def __init__(self, f: Callable[..., Any], max_tapes: int = MAX_TAPES) -> None:
        # A weak reference: the cache is the value of a WeakKeyDictionary keyed by f, so a
        # strong one would keep f (and every tape) alive for good. The transformed
        # functions hold f strongly while they live.
        try:
            self._f = weakref.ref(f)
        except TypeError:
            self._f = lambda: f
        self.max_tapes = max_tapes
        self._tapes: OrderedDict[tuple, Tape] = OrderedDict()
        self._slices: dict[tuple, Tape | None] = {}  # guard-only tapes, by key
        self.n_calls = 0
        self.n_records = 0
        self._warned = False
        #: Called with each new tape (``has_aux`` keeps the structure of ``aux`` by tape).
        self.on_record: Callable[[Tape], None] | None = None

    @property
    def f(self) -> Callable[..., Any]:
        """The function whose tapes these are."""
        return self._f()

    def __len__(self) -> int:
        return len(self._tapes)

    @property
    def tapes(self) -> list[Tape]:
        """The cached tapes, least recently used first."""
        return list(self._tapes.values())

    def __repr__(self) -> str:
        return (
            f"<TapeCache of {getattr(self.f, '__name__', self.f)!r}: {len(self)} tapes, "
            f"{self.n_records} recordings in {self.n_calls} calls>"
        )

    def _record(self, call: Call, k: int) -> tuple[tuple, Tape]:
        tape = record(call.target, *call.args_at(k), argnums=call.nums, static=call.static)
        if self.on_record is not None:
            self.on_record(tape)
        branch = tuple(map(tuple, tape.guards[:, 1:].tolist()))
        key = (call.key, len(tape), branch)
        self.n_records += 1
        if (
            not self._warned
            and self.n_calls >= 20
            and self.n_records > 0.5 * self.n_calls
        ):
            self._warned = True
            warnings.warn(
                f"{getattr(self.f, '__name__', 'function')} re-recorded {self.n_records} "
                f"tapes in {self.n_calls} calls: its Python control flow takes new branches "
                "at most points, so tapes are rarely reused. Branch-free code (np.where, "
                "np.maximum, np.clip) records one tape for all points.",
                RecordingWarning,
                stacklevel=_caller_level(),
            )
        self._tapes[key] = tape
        while len(self._tapes) > self.max_tapes:
            self._slices.pop(self._tapes.popitem(last=False)[0], None)
        return key, tape

    def _holds(self, key: tuple, tape: Tape, x: np.ndarray, p: np.ndarray | None) -> np.ndarray:
        """Per point of ``x``: does it take the branches ``tape`` recorded?"""
        if key not in self._slices:
            self._slices[key] = guard_slice(tape)
        sl = self._slices[key]
        if sl is None:
            return np.ones(x.shape[0], dtype=bool)
        return sl.forward(x, p, check="mask")[1]

    def evaluate(
        self, call: Call, method: Callable[[Tape, Any, Any, Any], tuple]
    ) -> tuple[Tape, tuple]:
        """Serve ``method(tape, x, params, rows) -> (*results, valid)`` for the call.

        ``rows`` is ``None`` (all points) or the indices into the batch of the points
        ``x`` holds, for methods with per-point extras (``hvp``'s directions).

        Results of a batch are assembled in point order from as many tapes as the
        points' branches need. Returns the last tape used and the results.
        """
        self.n_calls += 1
        x = call.flat(list(call.nums))
        p = call.flat(call.param_pos)
        if not call.batched:
            for key in [k for k in reversed(self._tapes) if k[0] == call.key]:
                tape = self._tapes[key]
                *res, ok = method(tape, x, p, None)
                if ok:
                    self._tapes.move_to_end(key)
                    return tape, tuple(res)
            key, tape = self._record(call, 0)
            *res, ok = method(tape, x, p, None)
            if not ok:
                raise RuntimeError(_INCONSISTENT)
            return tape, tuple(res)
        return self._evaluate_batch(call, method, x, p)

    def _evaluate_batch(self, call: Call, method, x, p) -> tuple[Tape, tuple]:
        n = call.n_points
        remaining = np.arange(n)
        out: list[np.ndarray] | None = None
        tape = None

        def take(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
            """Rows ``idx`` of per-point ``a`` (all of ``a`` if that is every point)."""
            if a is None or a.shape[0] != n or idx.size == n:
                return a
            return a.take(idx, axis=0)

        def serve(tape: Tape, idx: np.ndarray) -> np.ndarray:
            nonlocal out
            full = idx.size == n
            *res, ok = method(tape, take(x, idx), take(p, idx), None if full else idx)
            if out is None and full:  # the first sweep's arrays become the results;
                out = list(res)  # rows of failed points are overwritten later
            else:
                if out is None:
                    out = [np.empty((n, *np.shape(r)[1:])) for r in res]
                if ok.all():
                    for o, r in zip(out, res, strict=True):
                        o[idx] = r
                else:
                    rows = np.flatnonzero(ok)
                    sel = idx.take(rows)
                    for o, r in zip(out, res, strict=True):
                        o[sel] = r.take(rows, axis=0)
            return _where_not(idx, ok)

        keys = [k for k in reversed(self._tapes) if k[0] == call.key]
        for key in keys:
            if remaining.size == 0:
                break
            tape = self._tapes[key]
            if key is not keys[-1]:
                # Several branch patterns seen: a guard-only sweep sorts the points, so
                # each point gets one full sweep, with the tape of its own branches (the
                # last tape takes the rest directly: few points are left for a new one).
                ok = self._holds(key, tape, take(x, remaining), take(p, remaining))
                if not ok.any():
                    continue
                self._tapes.move_to_end(key)
                left = serve(tape, remaining.take(np.flatnonzero(ok)))
                remaining = _where_not(remaining, ok)
                if left.size:
                    remaining = np.union1d(remaining, left)
                continue
            before = remaining.size
            remaining = serve(tape, remaining)
            if remaining.size < before:
                self._tapes.move_to_end(key)
        new = 0
        while remaining.size:
            if new == MAX_NEW_BRANCHES_PER_CALL:
                raise RuntimeError(
                    f"{remaining.size} points still take branches not seen after recording "
                    f"{new} new tapes in this call; write the branching part with np.where"
                )
            first = remaining[0]
            key, tape = self._record(call, int(first))
            new += 1
            remaining = serve(tape, remaining)
            if remaining.size and remaining[0] == first:
                raise RuntimeError(_INCONSISTENT)
        if out is None:  # zero points: shapes from a tape evaluated on nothing
            tape = tape or (self._tapes[next(reversed(self._tapes))] if self._tapes else None)
            if tape is None:
                raise ValueError("cannot record a function from an empty batch of points")
            *res, _ = method(tape, x, p, None)
            out = list(res)
        return tape, tuple(out)


def _where_not(idx: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``idx[~ok]``; ``take`` of the positions is several times faster than boolean
    indexing when the mask is mixed (it has no data-dependent branch)."""
    return idx.take(np.flatnonzero(~ok))


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside tapejit (the user's call)."""
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


_INCONSISTENT = (
    "a tape recorded at a point does not hold at that same point: a branch decision "
    "compares values that the recorder (numpy) and the kernels (Numba) round differently. "
    "Write that comparison with np.where, or move it away from exact ties."
)

_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tape_cache(f: Callable[..., Any]) -> TapeCache:
    """The tape cache shared by all transforms of ``f``."""
    try:
        cache = _CACHES.get(f)
    except TypeError:  # not weak-referenceable: a private cache
        return TapeCache(f)
    if cache is None:
        cache = _CACHES[f] = TapeCache(f)
    return cache


def _split(g: np.ndarray, shapes: tuple, single: bool, batched: bool,
           between: tuple[int, ...] = ()) -> Any:
    """Split flat derivatives ``(..., n)`` into the differentiated arguments' shapes.

    ``between``: axes kept between the points axis and the argument's (a Jacobian's
    output shape).
    """
    lead = g.shape[:1] if batched else ()
    offs = _offsets(shapes)
    parts = []
    for s, o, e in zip(shapes, offs[:-1], offs[1:], strict=True):
        part = g[..., o:e].reshape(lead + between + s)
        parts.append(float(part) if part.shape == () else part)
    return parts[0] if single else tuple(parts)


def _out_shape(tape: Tape) -> tuple[int, ...]:
    shapes = tape.output_shapes
    return shapes[0] if len(shapes) == 1 else (tape.n_outputs,)


def _transform(f: Callable[..., Any], cache: TapeCache | None = None) -> Callable:
    """Attach the shared cache and metadata to a transformed function."""

    def deco(wrapped: Callable) -> Callable:
        functools.update_wrapper(wrapped, f)
        wrapped.tape_cache = cache or tape_cache(f)  # type: ignore[attr-defined]
        return wrapped

    return deco


def _one_output(tape: Tape, what: str, f: Callable[..., Any]) -> None:
    """A transform's check that ``f`` returned one scalar, naming ``has_aux``."""
    if tape.n_outputs == 1:
        return
    name, shapes = getattr(f, "__name__", "f"), list(tape.output_shapes)
    if len(shapes) == 1:
        got = f"an array of shape {shapes[0]}; for a vector function use jacobian"
    else:
        got = (f"{len(shapes)} values (shapes {shapes}); if it returns (output, auxiliary "
               "data), pass has_aux=True")
    raise ValueError(f"{what} needs {name} to return one scalar; it returned {got}")


def _not_traced_sparse(what: str) -> TracingError:
    """The error for ``sparse=True`` inside a recording."""
    return TracingError(f"{what}(..., sparse=True) inside a recording: a sparse matrix "
                        "cannot be a traced value. Use sparse=False there (the dense "
                        "derivative is recorded), or take the sparse derivative of the "
                        "recorded tape outside it.")


def _sparse_evaluate(cache: TapeCache, call: Call,
                     derivative: Callable[[Tape, Any, Any], tuple]) -> tuple[Tape, Any, tuple]:
    """Serve ``derivative(tape, x, params) -> (sparse result, *per-point results, valid)``
    (a ``csr_array`` at one point, a ``SparseStack`` for many) through ``cache``.

    Each tape (one per branch) has its own pattern and colouring, computed on its first
    sparse call and kept with it, so the cache's assembly, which fills arrays of one shape
    point by point, sees only which evaluation served each point and its row there; the
    sparse results stay aside and are put together here, a batch over the union of the
    patterns of the tapes that served it. Returns the last tape used, the sparse result
    and the other results."""
    served: list = []

    def method(tape: Tape, x, p, rows):
        m, *rest, ok = derivative(tape, x, p)
        served.append(m)
        k = len(served) - 1
        if not call.batched:
            return k, *rest, ok
        n = np.shape(ok)[0]  # the assembly fills float64 arrays: small ints stay exact
        return np.full(n, float(k)), np.arange(n, dtype=np.float64), *rest, ok

    tape, res = cache.evaluate(call, method)
    if not call.batched:
        return tape, served[res[0]], res[1:]
    from ._colouring import gather_stacks  # imports scipy.sparse: on first use

    which, rows, *rest = res
    return tape, gather_stacks(served, which.astype(np.intp), rows.astype(np.intp)), tuple(rest)


def _offsets(shapes: tuple) -> list[int]:
    """Where each differentiated argument's flat values start, and the end."""
    return np.concatenate([[0], np.cumsum([int(np.prod(s, dtype=np.int64))
                                           for s in shapes])]).astype(int).tolist()


class _Aux:
    """``f`` that returns ``(output, aux)``, recorded as one tape whose outputs are the
    output followed by the array leaves of ``aux`` (tuples, lists and dicts of arrays;
    other leaves are kept as they are). The structure is kept per tape."""

    def __init__(self, f: Callable[..., Any]) -> None:
        self.f = f
        self.__name__ = getattr(f, "__name__", "f")
        try:
            self.__signature__ = inspect.signature(f)
        except (TypeError, ValueError):
            pass
        self.trees: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._last: tuple | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> tuple:
        res = self.f(*args, **kwargs)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(
                f"has_aux=True: {self.__name__} must return a pair (output, aux); got "
                f"{type(res).__name__}" + (f" of {len(res)}" if isinstance(res, tuple) else "")
            )
        out, aux = res
        leaves: list = []
        self._last = (np.shape(out), _tree_flatten(aux, leaves))
        return (out, *leaves)

    def adopt(self, tape: Tape) -> None:
        self.trees[tape] = self._last

    def output_shape(self, tape: Tape) -> tuple[int, ...]:
        return self.trees[tape][0]

    def aux(self, tape: Tape, y: np.ndarray, batched: bool) -> Any:
        """The aux of outputs ``y`` (``(n_outputs,)``, or per point when batched)."""
        shape, tree = self.trees[tape]
        rest = y[..., int(np.prod(shape, dtype=np.int64)):]
        return _tree_build(tree, iter(_split(rest, tape.output_shapes[1:], False, batched)))


def _is_leaf(v: Any) -> bool:
    return isinstance(v, Tracer | np.ndarray | float | int | np.number) and not isinstance(
        v, bool)


def _tree_flatten(v: Any, leaves: list) -> Any:
    """The structure of ``v`` with its array leaves moved to ``leaves``."""
    if _is_leaf(v):
        leaves.append(v)
        return ("leaf",)
    if isinstance(v, tuple | list):
        return (type(v), [_tree_flatten(c, leaves) for c in v])
    if isinstance(v, dict):
        return (dict, list(v), [_tree_flatten(c, leaves) for c in v.values()])
    return ("const", v)


def _tree_build(tree: tuple, leaves: Any) -> Any:
    kind = tree[0]
    if kind == "leaf":
        return next(leaves)
    if kind == "const":
        return tree[1]
    if kind is dict:
        return {k: _tree_build(c, leaves) for k, c in zip(tree[1], tree[2], strict=True)}
    return kind(_tree_build(c, leaves) for c in tree[1])


def _aux_cache(f: Callable[..., Any], has_aux: bool) -> tuple[Callable, _Aux | None,
                                                              TapeCache]:
    """The function a transform records, its ``_Aux`` (``has_aux``) and its tape cache."""
    if not has_aux:
        return f, None, tape_cache(f)
    aux = _Aux(f)
    cache = TapeCache(aux)
    cache.on_record = aux.adopt
    return aux, aux, cache


def _vjp_first(tape: Tape, x, p, rows):
    """Outputs and the gradient of output 0 (``has_aux``: the others are aux)."""
    w = np.zeros(tape.n_outputs)
    w[0] = 1.0
    return tape.vjp(x, w, params=p, check="mask")


def value_and_grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, *, batched: bool = False,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, Any]]:
    """Transform ``f`` into a function returning ``(f(*args), gradient)``.

    Parameters
    ----------
    f : callable
        Function with one scalar output. It may branch on its inputs with Python
        ``if``/``while``: each branch pattern gets its own tape (module docstring).
    argnums : int or sequence of int
        Positional arguments to differentiate with respect to. The gradient has their
        shapes (a tuple when ``argnums`` is a sequence). Keyword arguments are passed
        to ``f``; numbers and arrays among them are tape parameters, never
        differentiated.
    batched : bool
        If true, every array argument carries a leading points axis and the call
        evaluates all points at once (split by branch where ``f`` branches); Python
        floats stay fixed for all points.
    has_aux : bool
        ``f`` returns ``(output, aux)``: differentiate ``output`` and return ``aux``
        (arrays, numbers, or tuples, lists and dicts of them) as computed, as JAX does.

    Returns
    -------
    callable
        ``g(*args, **kwargs) -> (value, gradient)``, or ``((value, aux), gradient)``
        with ``has_aux``; ``g.tape_cache`` shows its tapes.
    """
    target, aux, cache = _aux_cache(f, has_aux)
    single = isinstance(argnums, int | np.integer)

    def method(tape: Tape, x, p, rows):
        _one_output(tape, "value_and_grad", f)
        return evaluate_keep_failed(tape, "value_and_grad", x, params=p)

    def method_aux(tape: Tape, x, p, rows):
        if aux.output_shape(tape) not in ((), (1,)):
            raise ValueError(f"value_and_grad needs the output of {aux.__name__} to be a "
                             f"scalar; it has shape {aux.output_shape(tape)}")
        return _vjp_first(tape, x, p, rows)

    @_transform(f, cache)
    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if _nested.traced(args, kwargs, f=f):  # inside a recording: record the gradient there
            return _nested.value_and_grad(f, argnums, args, batched, kwargs=kwargs,
                                          has_aux=has_aux)
        call = Call(target, args, kwargs, argnums, batched)
        if aux is None:
            _, (v, g) = cache.evaluate(call, method)
            return v, _split(g, call.shapes(), single, batched)
        tape, (y, g) = cache.evaluate(call, method_aux)
        v = y[..., 0] if batched else float(y[0])
        return (v, aux.aux(tape, y, batched)), _split(g, call.shapes(), single, batched)

    return wrapped


def grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, *, batched: bool = False,
    has_aux: bool = False,
) -> Callable[..., Any]:
    """Transform ``f`` into a function returning its gradient.

    Parameters
    ----------
    f : callable
        Function with one scalar output (Python control flow allowed).
    argnums : int or sequence of int
        Positional arguments to differentiate with respect to (keyword arguments are
        passed to ``f``, never differentiated).
    batched : bool
        Leading points axis on every array argument (see :func:`value_and_grad`).
    has_aux : bool
        ``f`` returns ``(output, aux)``: the result is ``(gradient, aux)``.

    Returns
    -------
    callable
        ``g(*args, **kwargs) -> gradient`` (a tuple when ``argnums`` is a sequence).

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> g = tapejit.grad(lambda x: 2.0 * np.dot(x, x))
    >>> g(np.array([1.0, 2.0, 3.0])).tolist()
    [4.0, 8.0, 12.0]
    """
    vg = value_and_grad(f, argnums, batched=batched, has_aux=has_aux)

    @_transform(f, vg.tape_cache)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _nested.traced(args, kwargs, f=f):  # inside a recording: record the gradient there
            return _nested.grad(f, argnums, args, batched, kwargs=kwargs, has_aux=has_aux)
        v, g = vg(*args, **kwargs)
        return (g, v[1]) if has_aux else g

    return wrapped


def jacobian(
    f: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    mode: str = "auto",
    *,
    batched: bool = False,
    has_aux: bool = False,
    sparse: bool = False,
) -> Callable[..., Any]:
    """Transform ``f`` into a function returning its Jacobian.

    Parameters
    ----------
    f : callable
        Function returning an array (or a tuple of arrays, flattened in order).
    argnums : int or sequence of int
        Arguments to differentiate with respect to.
    mode : {"auto", "forward", "reverse"}
        See :meth:`Tape.jacobian`.
    batched : bool
        Leading points axis on every array argument (see :func:`value_and_grad`).
    has_aux : bool
        ``f`` returns ``(output, aux)``: the result is ``(jacobian of output, aux)``.
    sparse : bool
        Compute only the nonzeros, as :meth:`Tape.jacobian` with ``sparse=True``: each
        cached tape (one per branch of ``f``) reads its pattern and colours it on its
        first sparse call and keeps both, so later calls on that branch only sweep.

    Returns
    -------
    callable
        ``J(*args, **kwargs)``: for one output array of shape ``so`` and an argument of
        shape ``si`` the block has shape ``so + si`` (a tuple of blocks for a sequence
        ``argnums``; a leading points axis when batched). With ``sparse=True`` each
        block is a ``scipy.sparse.csr_array`` of shape ``(so.size, si.size)`` (the
        output and the argument flattened in C order), with the pattern of the branch
        the point takes; batched, a :class:`~tapejit.SparseStack` over the union of the
        patterns of the branches the points take (an entry outside a point's own pattern
        is zero there).
    """
    target, aux, cache = _aux_cache(f, has_aux)
    single = isinstance(argnums, int | np.integer)

    def method(tape: Tape, x, p, rows):
        return evaluate_keep_failed(tape, "jacobian", x, params=p, mode=mode)

    def method_aux(tape: Tape, x, p, rows):
        y, ok = tape.forward(x, params=p, check="mask")
        J, _ = evaluate_keep_failed(tape, "jacobian", x, params=p, mode=mode)
        return y, J, ok

    def sparse_jacobian(tape: Tape, x, p):
        J, ok = tape.jacobian(x, params=p, mode=mode, check="mask", sparse=True)
        if aux is None:
            return J, ok
        return J, tape.forward(x, params=p, check="mask")[0], ok

    @_transform(f, cache)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _nested.traced(args, kwargs, f=f):  # inside a recording: record the Jacobian there
            if sparse:
                raise _not_traced_sparse("jacobian")
            return _nested.jacobian(f, argnums, args, batched, kwargs=kwargs, has_aux=has_aux)
        call = Call(target, args, kwargs, argnums, batched)
        if sparse:
            from ._colouring import sparse_block  # imports scipy.sparse: on first use

            tape, J, rest = _sparse_evaluate(cache, call, sparse_jacobian)
            k = J.shape[0] if aux is None else int(np.prod(aux.output_shape(tape),
                                                             dtype=np.int64))
            if single and k == J.shape[0]:  # the whole matrix
                out = J
            else:
                offs = _offsets(call.shapes())
                out = tuple(sparse_block(J, slice(0, k), slice(offs[i], offs[i + 1]))
                            for i in range(len(offs) - 1))
                out = out[0] if single else out
            return out if aux is None else (out, aux.aux(tape, rest[0], batched))
        if aux is None:
            tape, (J,) = cache.evaluate(call, method)
            return _split(J, call.shapes(), single, batched, _out_shape(tape))
        tape, (y, J) = cache.evaluate(call, method_aux)
        so = aux.output_shape(tape)
        k = int(np.prod(so, dtype=np.int64))
        return (_split(J[..., :k, :], call.shapes(), single, batched, so),
                aux.aux(tape, y, batched))

    return wrapped


def hessian(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, *, batched: bool = False,
    sparse: bool = False,
) -> Callable[..., Any]:
    """Transform a scalar function ``f`` into a function returning its Hessian.

    Parameters
    ----------
    f : callable
        Function with one scalar output.
    argnums : int or sequence of int
        Arguments to differentiate with respect to.
    batched : bool
        Leading points axis on every array argument (see :func:`value_and_grad`).
    sparse : bool
        Compute only the nonzeros, as :meth:`Tape.hessian` with ``sparse=True``: each
        cached tape (one per branch of ``f``) reads its pattern and colours it on its
        first sparse call and keeps both, so later calls on that branch only sweep.

    Returns
    -------
    callable
        ``H(*args)``: shape ``si + si`` for one argument of shape ``si``; for a sequence
        ``argnums`` a tuple of tuples of blocks ``H[i][j]`` of shape ``si + sj``.
        Exactly symmetric. With ``sparse=True`` each block is a
        ``scipy.sparse.csr_array`` of shape ``(si.size, sj.size)`` (the arguments
        flattened in C order), with the pattern of the branch the point takes; batched,
        a :class:`~tapejit.SparseStack` over the union of the patterns of the branches
        the points take (an entry outside a point's own pattern is zero there).
    """
    cache = tape_cache(f)
    single = isinstance(argnums, int | np.integer)

    def method(tape: Tape, x, p, rows):
        _one_output(tape, "hessian", f)
        return evaluate_keep_failed(tape, "hessian", x, params=p)

    def sparse_hessian(tape: Tape, x, p):
        _one_output(tape, "hessian", f)
        return tape.hessian(x, params=p, check="mask", sparse=True)

    @_transform(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _nested.traced(args, kwargs, f=f):  # inside a recording: record the Hessian there
            if sparse:
                raise _not_traced_sparse("hessian")
            return _nested.hessian(f, argnums, args, batched, kwargs=kwargs)
        call = Call(f, args, kwargs, argnums, batched)
        shapes = call.shapes()
        offs = _offsets(shapes)
        if sparse:
            from ._colouring import sparse_block  # imports scipy.sparse: on first use

            _, H, _ = _sparse_evaluate(cache, call, sparse_hessian)
            if single:
                return H
            return tuple(tuple(sparse_block(H, slice(offs[i], offs[i + 1]),
                                            slice(offs[j], offs[j + 1]))
                               for j in range(len(shapes)))
                         for i in range(len(shapes)))
        _, (H,) = cache.evaluate(call, method)
        lead = H.shape[:1] if batched else ()
        blocks = tuple(
            tuple(
                H[..., offs[i] : offs[i + 1], offs[j] : offs[j + 1]].reshape(
                    lead + shapes[i] + shapes[j]
                )
                for j in range(len(shapes))
            )
            for i in range(len(shapes))
        )
        return blocks[0][0] if single else blocks

    return wrapped


def hvp(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, *, batched: bool = False
) -> Callable[..., Any]:
    """Transform a scalar function ``f`` into ``h(*args, v=...)`` returning ``H v``.

    Parameters
    ----------
    f : callable
        Function with one scalar output.
    argnums : int or sequence of int
        Arguments to differentiate with respect to; ``v`` is shaped like them (a tuple for
        a sequence ``argnums``), and so is the result.
    batched : bool
        Leading points axis on every array argument and on ``v``.

    Returns
    -------
    callable
        ``h(*args, v=...)``: Hessian-vector product by one forward-over-reverse sweep.
    """
    cache = tape_cache(f)
    single = isinstance(argnums, int | np.integer)

    @_transform(f)
    def wrapped(*args: Any, v: Any, **kwargs: Any) -> Any:
        if _nested.traced((*args, v), kwargs, f=f):  # inside a recording: record H v there
            return _nested.hvp(f, argnums, args, v, batched, kwargs=kwargs)
        call = Call(f, args, kwargs, argnums, batched)
        vs = (v,) if single else tuple(v)
        want = tuple((call.n_points, *s) if batched else s for s in call.shapes())
        if tuple(np.shape(a) for a in vs) != want:
            raise ValueError(f"v must match the shapes of the differentiated arguments {want}")
        lead = (call.n_points,) if batched else ()
        V = np.concatenate([np.asarray(a, dtype=np.float64).reshape(*lead, -1) for a in vs],
                           axis=-1)

        def method(tape: Tape, x, p, rows):
            _one_output(tape, "hvp", f)
            return evaluate_keep_failed(tape, "hvp", x, V if rows is None else V[rows],
                                        params=p)

        _, (hv,) = cache.evaluate(call, method)
        return _split(hv, call.shapes(), single, batched)

    return wrapped


def jvp(f: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any]) -> tuple:
    """Evaluate ``f(*primals)`` and its directional derivative along ``tangents``.

    Forward mode (one tangent sweep over the cached tape of ``f``), as in JAX.

    Parameters
    ----------
    f : callable
        Function of the primal arguments (all differentiated).
    primals, tangents : sequence
        Arguments and matching tangent directions of the same shapes.

    Returns
    -------
    (outputs, output_tangents)
        Shaped like ``f``'s output (flattened to one vector when ``f`` returns a tuple).
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if _nested.traced((*primals, *tangents), f=f):  # inside a recording: record it
        return _nested.jvp(f, primals, tangents)
    if len(primals) != len(tangents) or any(
        np.shape(a) != np.shape(t) for a, t in zip(primals, tangents, strict=True)
    ):
        raise ValueError("primals and tangents must have the same structure and shapes")
    call = Call(f, primals, {}, tuple(range(len(primals))), False)
    v = np.concatenate([np.ravel(np.asarray(t, dtype=np.float64)) for t in tangents])

    def method(tape: Tape, x, p, rows):
        y, ok = tape.forward(x, params=p, check="mask")
        ty = tape.jvp(x, v, params=p, check="mask")[0]
        return y, ty, ok

    tape, (y, ty) = tape_cache(f).evaluate(call, method)
    so = _out_shape(tape)
    return np.asarray(y, dtype=np.float64).reshape(so), np.asarray(ty).reshape(so)
