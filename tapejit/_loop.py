"""Loops recorded once: :func:`scan` and :func:`fori_loop`.

The body function is traced once, into a recorder of its own, and becomes a sub-program
of the tape; one ``loop`` instruction (``_fam_loop.py``, routines in
``_kernels/fam_loop.py``) runs it ``length`` times in every sweep. So the tape and the
recording time do not grow with the trip count.

The body's inputs are its carried values, the step's slice of ``xs``, and its *closure*:
the traced values of the enclosing recording it reads (its parameters, say). Those are
found by tracing: while a body is recorded, every operation records into the body
(``_tracer.bodies()``, this thread's), and a value of the enclosing recording it meets is
captured. The body is traced twice: first with captured values as constants, to learn
which values the closure holds (their ids, in order); then with one input per such
value. Nothing is recorded into the enclosing recording until the loop instruction
itself.

A Python branch on a traced value inside the body records a guard of the body, checked
at every step of every evaluation: a step that would take the other branch makes the
point fail like any guard (``BranchError``, or NaN with ``check="mask"``).

A derivative recorded inside a recording (``tapejit.grad`` of a function with a loop,
nested differentiation) goes through the loop family's reverse rule
(``_fam_loop.loop_vjp``): new loops, never the steps unrolled, which keep every step's
carry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import TracingError
from ._fam_loop import LOOP, result_layout
from ._program import Program
from ._tape_builder import Recorder
from ._tracer import (
    Body,
    ScalarTracer,
    Tracer,
    bodies,
    enter_body,
    ids_of,
    leave_body,
    lift,
    recorder_of,
    recording_of,
)

# -- trees of values (tuples, lists, dicts and None, as JAX's pytrees) ------------------
_LEAF = object()


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    if isinstance(tree, tuple | list):
        parts = [_flatten(t) for t in tree]
        return [x for p in parts for x in p[0]], (type(tree), [p[1] for p in parts])
    if isinstance(tree, dict):
        keys = list(tree)
        parts = [_flatten(tree[k]) for k in keys]
        return [x for p in parts for x in p[0]], (dict, keys, [p[1] for p in parts])
    if tree is None:
        return [], None
    return [tree], _LEAF


def _unflatten(spec: Any, leaves: list[Any]) -> Any:
    it = iter(leaves)

    def build(s: Any) -> Any:
        if s is _LEAF:
            return next(it)
        if s is None:
            return None
        if s[0] is dict:
            return {k: build(c) for k, c in zip(s[1], s[2], strict=True)}
        kind, children = s
        items = [build(c) for c in children]
        return kind(*items) if hasattr(kind, "_fields") else kind(items)

    return build(spec)


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(leaf.shape) if isinstance(leaf, Tracer) else np.shape(leaf)


# -- tracing the body ------------------------------------------------------------------
class _Closure:
    """The values of the enclosing recording a body reads: element ids there, in the
    order first met, and (second trace) the body's input leaf of each."""

    def __init__(self, parent: Recorder | None) -> None:
        self.parent = parent
        self.index: dict[int, int] = {}  # enclosing id -> position
        self.leaves: np.ndarray | None = None  # the body's leaf ids (second trace)

    def capture(self, rec: Recorder, t: Tracer) -> Tracer:
        parent = self.parent = recording_of(t)
        ids = ids_of(t)
        vals = parent.values(ids)
        out = np.empty(ids.shape, dtype=np.int64)
        flat, dst = ids.ravel(), out.reshape(-1)
        for e, node in enumerate(flat.tolist()):
            if node < 0:  # a constant of the enclosing recording stays a constant
                dst[e] = int(rec.const(np.array(vals.flat[e]))[()])
                continue
            k = self.index.get(node)
            if self.leaves is None:  # first trace: note it, use its value
                if k is None:
                    self.index[node] = len(self.index)
                dst[e] = int(rec.const(np.array(vals.flat[e]))[()])
            elif k is None:
                raise TracingError(
                    "the loop body read a value of the enclosing function the second time "
                    "it was traced that it did not read the first time: a scan body must "
                    "do the same thing every time it is called")
            else:
                dst[e] = int(self.leaves[k])
        return _leaf_tracer(rec, out, out.shape)


def _leaf_tracer(rec: Recorder, ids: np.ndarray, shape: tuple[int, ...]) -> Tracer:
    ids = ids.reshape(shape)
    if ids.ndim == 0:
        node = int(ids)
        return ScalarTracer(rec, node, rec.value(node))
    return Tracer(rec, ids)


def _trace_body(f: Callable, carry: list[np.ndarray], c_spec: Any, xs0: list[np.ndarray],
                x_spec: Any, closure: _Closure) -> tuple[Recorder, list, list, Any, list]:
    """Trace ``f(carry, x)`` once in a new recorder: its carry and x leaves, its closure
    leaves (second trace), its flat outputs (ids) and y spec and shapes."""
    rec = Recorder()
    c_ids = [rec.leaves(v) for v in carry]
    x_ids = [rec.leaves(v) for v in xs0]
    if closure.leaves is not None:
        vals = closure.parent.values(np.array(list(closure.index), dtype=np.int64))
        closure.leaves = rec.leaves(vals).reshape(-1)
    body = Body(rec, closure.parent, lambda t: closure.capture(rec, t))
    enter_body(body)
    try:
        c_in = _unflatten(c_spec, [_leaf_tracer(rec, i, v.shape) for i, v in
                                   zip(c_ids, carry, strict=True)])
        x_in = _unflatten(x_spec, [_leaf_tracer(rec, i, v.shape) for i, v in
                                   zip(x_ids, xs0, strict=True)])
        out = f(c_in, x_in)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise TracingError("a scan body returns a pair (carry, y); got "
                               f"{type(out).__name__}")
        new_carry, y = out
        nc_leaves, nc_spec = _flatten(new_carry)
        if nc_spec != c_spec or [_shape(v) for v in nc_leaves] != [v.shape for v in carry]:
            raise TracingError(
                "a scan body must return a carry of the structure and shapes it was given: "
                f"given {[v.shape for v in carry]}, returned "
                f"{[_shape(v) for v in nc_leaves]}")
        y_leaves, y_spec = _flatten(y)
        outs = [lift(rec, v).reshape(-1) for v in nc_leaves + y_leaves]
        y_shapes = [_shape(v) for v in y_leaves]
    finally:
        leave_body()
        closure.parent = body.parent if closure.parent is None else closure.parent
    return rec, c_ids + x_ids, outs, y_spec, y_shapes


def _values(rec: Recorder | None, leaves: list[Any]) -> list[np.ndarray]:
    out = []
    for v in leaves:
        if isinstance(v, Tracer):
            owner = recording_of(v) if rec is None else rec
            out.append(owner.values(lift(owner, v)).reshape(_shape(v)))
        else:
            arr = np.asarray(v)
            if arr.dtype.kind not in "biuf":
                raise TracingError(f"scan carries and xs hold numbers; got {arr.dtype}")
            out.append(arr.astype(np.float64))
    return out


def _every(checkpoint: int | str | None, length: int) -> int:
    if checkpoint is None:  # about sqrt(length) checkpoints of about sqrt(length) steps
        return max(1, math.isqrt(max(length - 1, 0)) + 1)
    if checkpoint == "all":
        return 1
    if isinstance(checkpoint, int | np.integer) and not isinstance(checkpoint, bool) \
            and checkpoint >= 1:
        return int(checkpoint)
    raise ValueError(f"checkpoint must be None, 'all' or a number of steps >= 1; got "
                     f"{checkpoint!r}")


def _loop_values(body: Program, attrs: tuple[int, ...], a: np.ndarray, b: np.ndarray,
                 c: np.ndarray) -> np.ndarray:
    """The result of a loop with attribute values ``attrs`` at the recording point, by
    the kernels themselves (the values every evaluation gives): a tape of the one
    instruction."""
    from ._show import instruction_tape  # lazy: _show builds on the tape

    size = int(LOOP.sizes(np.array([attrs]))[0, 0])
    tape = instruction_tape(LOOP, attrs, [a.size, b.size, c.size], size, body)
    return np.asarray(tape.forward(np.concatenate([a, b, c])), dtype=np.float64).reshape(-1)


def emit_loop(rec: Recorder, body: Program, operands: list[np.ndarray],
              attrs: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Record a loop instruction into ``rec``: its ``body``, operand ids (made blocks)
    and attribute values ``attrs`` (the body's index aside: it becomes the next entry
    of ``rec``'s sub-program table). Returns the result ids and values (the kernels').
    Also how a loop tape is inlined into another recording (``_compose.py``)."""
    blocks = [rec.block_of(o) for o in operands]
    values = _loop_values(body, attrs, *(rec.values(o) for o in blocks))
    at = LOOP.attrs.index("body")
    return rec.emit_with_body(LOOP, body, blocks, tuple(attrs[:at]) + tuple(attrs[at + 1 :]),
                              values), values


def scan(f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any = None,
         length: int | None = None, *, checkpoint: int | str | None = None
         ) -> tuple[Any, Any]:
    """Loop ``f`` over the leading axis of ``xs``, carrying a state: recorded once.

    The semantics of ``jax.lax.scan``::

        def scan(f, init, xs, length=None):
            carry, ys = init, []
            for x in xs:          # or range(length) with xs None
                carry, y = f(carry, x)
                ys.append(y)
            return carry, np.stack(ys)

    Inside :func:`tapejit.record` (and everything built on it), the body is recorded
    once as a sub-program of the tape, with one instruction that runs it ``length``
    times in every sweep: the tape and its recording time do not grow with the trip
    count, and a 10\\ :sup:`5`-step integrator is a short tape. Outside a recording it
    runs the Python loop above.

    Parameters
    ----------
    f : callable
        ``f(carry, x) -> (carry, y)``. The carry must come back with the structure and
        shapes it was given; ``y`` may be any structure of arrays (or None).
    init : array_like, or tuple, list or dict of them
        The initial carry (floats; traced values of the recording or constants).
    xs : array_like, or tuple, list or dict of them, optional
        Per-step inputs, stacked along their first axis (all of one length).
    length : int, optional
        The trip count; required when ``xs`` is None, else it must match.
    checkpoint : None, 'all' or int, optional
        What the reverse and second-order sweeps keep of the carries: ``'all'`` (every
        step's), or one every ``k`` steps, recomputing the steps between (twice the
        forward work of those steps, ``k`` carries of scratch memory). The default is
        one every about ``sqrt(length)`` steps: the tape's workspace then holds about
        ``2 sqrt(length)`` carries per point, which keeps its chunks of points wide.

    Returns
    -------
    carry, ys
        The final carry and the stacked ``y`` (leading axis ``length``).

    Notes
    -----
    ``f`` is traced twice (it must do the same each time) and must not record into the
    enclosing function's arrays. A Python branch on a traced value inside ``f`` becomes a
    guard checked at every step of every evaluation. Values of the enclosing function
    that ``f`` reads (parameters, say) become inputs of the body: they are differentiated
    like the carry.

    The transforms called inside a recording differentiate through the loop to any
    order (``grad(grad(f))``, a loss containing ``grad(f)``): the derivative is recorded
    as new loops, whose size does not depend on ``length``, but which store every
    step's carry (``length`` times the carry's size per point) where the tape's own
    derivative sweeps keep only the checkpoints.

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> def f(x):
    ...     def step(c, _):
    ...         return c * x + 1.0, None
    ...     c, _ = tapejit.scan(step, 0.0, length=3)   # ((0 x + 1) x + 1) x + 1
    ...     return c
    >>> tape = tapejit.record(f, 2.0)
    >>> len(tape) <= 3, float(tape.forward(np.array([2.0])))
    (True, 7.0)
    """
    c_leaves, c_spec = _flatten(init)
    x_leaves, x_spec = _flatten(xs)
    lengths = {_shape(v)[0] if _shape(v) else None for v in x_leaves}
    if None in lengths:
        raise ValueError("every xs array needs a leading axis (the steps)")
    if len(lengths) > 1:
        raise ValueError(f"xs arrays have different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else length
    if n is None:
        raise ValueError("scan needs xs or length")
    if length is not None and int(length) != n:
        raise ValueError(f"length={length} does not match the {n} steps of xs")
    n = int(n)
    if n < 0:
        raise ValueError(f"length must be >= 0; got {n}")
    stack = bodies()
    parent = stack[-1].rec if stack else recorder_of(c_leaves + x_leaves)
    carry = _values(parent, c_leaves)
    x_all = _values(parent, x_leaves)
    xs0 = [v[0] if n else np.zeros(v.shape[1:]) for v in x_all]
    closure = _Closure(parent)
    _trace_body(f, carry, c_spec, xs0, x_spec, closure)
    if closure.parent is None:  # nothing traced: the Python loop
        return _python_scan(f, init, xs, n)
    parent = closure.parent
    closure.leaves = np.empty(0, np.int64)
    rec, leaves, outs, y_spec, y_shapes = _trace_body(f, carry, c_spec, xs0, x_spec, closure)
    nc = sum(v.size for v in carry)
    nx = sum(v[0].size for v in x_all) if n else sum(v.size for v in xs0)
    nk = len(closure.index)
    ny = sum(math.prod(s) for s in y_shapes)
    body_prog = rec.finalize(np.concatenate([np.ravel(i) for i in leaves] + [closure.leaves])
                             .astype(np.int64), np.empty(0, np.int64),
                             np.concatenate(outs).astype(np.int64) if outs else
                             np.empty(0, np.int64))
    every = _every(checkpoint, n)
    named = {"body": 0, "length": n, "n_carry": nc, "n_x": nx, "n_closure": nk, "n_y": ny,
             "every": every}
    attrs = tuple(named[k] for k in LOOP.attrs)

    def ids(leaf: Any) -> np.ndarray:
        return lift(parent, leaf) if isinstance(leaf, Tracer) else parent.const(
            np.asarray(leaf, np.float64))

    a = np.concatenate([ids(v).reshape(-1) for v in c_leaves] + [np.empty(0, np.int64)])
    b = (np.concatenate([ids(v).reshape(n, -1) for v in x_leaves], axis=1).reshape(-1)
         if x_leaves and n else np.empty(0, np.int64))
    c = np.array(list(closure.index), dtype=np.int64)
    result, values = emit_loop(parent, body_prog, [a, b, c], attrs)
    if np.isnan(values[0]):
        raise TracingError(
            "a Python branch inside the scan body goes another way at some step than at "
            "the first step, where the body was recorded; one body runs every step, so "
            "select with np.where (or np.maximum, np.abs, ...) instead of if/else")
    if len(body_prog.guards):
        parent.guard_finite(result[:1])
    _, carry0, ys0 = result_layout(n, nc, ny, every)
    out_c, k = [], carry0
    for v in carry:
        out_c.append(_leaf_tracer(parent, result[k : k + v.size], v.shape))
        k += v.size
    ys = result[ys0:].reshape(n, ny)
    out_y, k = [], 0
    for s in y_shapes:
        size = math.prod(s)
        out_y.append(Tracer(parent, ys[:, k : k + size].reshape((n, *s))))
        k += size
    return _unflatten(c_spec, out_c), _unflatten(y_spec, out_y)


def _python_scan(f: Callable, init: Any, xs: Any, n: int) -> tuple[Any, Any]:
    x_leaves, x_spec = _flatten(xs)
    carry, ys = init, []
    for t in range(n):
        carry, y = f(carry, _unflatten(x_spec, [np.asarray(v)[t] for v in x_leaves]))
        ys.append(_flatten(y))
    if not ys:
        return carry, None
    spec = ys[0][1]
    stacked = [np.stack([np.asarray(y[0][j]) for y in ys]) for j in range(len(ys[0][0]))]
    return carry, _unflatten(spec, stacked)


def fori_loop(lower: int, upper: int, body_fun: Callable[[Any, Any], Any], init_val: Any,
              *, checkpoint: int | str | None = None) -> Any:
    """``val = body_fun(i, val)`` for ``i`` from ``lower`` to ``upper - 1``: recorded
    once, as :func:`scan` (the semantics of ``jax.lax.fori_loop``).

    Parameters
    ----------
    lower, upper : int
        The trip count is ``upper - lower`` (none if negative).
    body_fun : callable
        ``body_fun(i, val) -> val``; ``i`` is the step's index as a traced float (use it
        in arithmetic; it cannot index an array).
    init_val : array_like, or tuple, list or dict of them
        The initial value.
    checkpoint : None, 'all' or int, optional
        As for :func:`scan`.

    Returns
    -------
    The final value.

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> tape = tapejit.record(lambda x: tapejit.fori_loop(0, 10, lambda i, v: v * x, 1.0), 1.5)
    >>> round(float(tape.value_and_grad(np.array([1.5]))[1][0]), 6)  # d x^10/dx = 10 x^9
    384.433594
    """
    lower, upper = int(lower), int(upper)
    steps = np.arange(lower, max(lower, upper), dtype=np.float64)
    val, _ = scan(lambda v, i: (body_fun(i, v), None), init_val, steps,
                  checkpoint=checkpoint)
    return val
