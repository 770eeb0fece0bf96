"""Nested differentiation: the transforms called on traced values, inside a recording.

When ``grad`` (``value_and_grad``, ``jacobian``, ``hessian``, ``hvp``, ``jvp``) of
``_transforms.py`` is called while a function is being recorded, its arguments are
tracers of that outer recording. It then emits the derivative computation as ordinary
instructions of the outer tape, so the derivative is itself differentiable again, to any
order (``grad(grad(f))``, a loss that contains a gradient, third derivatives):

1. each differentiated argument is copied into fresh nodes (:meth:`Recorder.copy
   <tapejit._tape_builder.Recorder.copy>`, one exact ``* 1.0``): the variables to
   differentiate with respect to are then distinct from every value ``f`` reads from its
   closure (no perturbation confusion: ``grad(lambda z: z * x)(x)`` is ``x``), even when
   the argument repeats an element or holds constants;
2. ``f`` is called on them; its instructions (and guards: a branch taken inside ``f`` is
   a guard of the outer tape like any other) are recorded into the outer recording
   after a :meth:`~tapejit._tape_builder.Recorder.mark`;
3. the window of instructions since the mark (:meth:`~tapejit._tape_builder.Recorder.
   instructions_since`) is walked backwards, and the adjoint of each instruction is
   emitted as traced numpy arithmetic on the outer recording:

   * an elementwise op's adjoint comes from the op table alone: each ``partials``
     expression of ``tapejit/_ops.py`` is evaluated on tracers of the instruction's
     operands and result, the way the pure-numpy reference interpreter (``_show.py``)
     evaluates it on numbers (a conditional expression becomes ``np.where``, ``and``/
     ``or``/``not`` the traced ``&``/``|``/``~``, ``math.f`` the numpy ufunc, a scalar
     helper the op whose value it is). The adjoint times the partial is the table's
     ``azmul`` op, the sweeps' NaN policy (zero where either factor is zero) with the
     product rule as its derivative, so the next order is right where a factor is 0;
   * a family instruction's adjoint is its ``Family.vjp`` rule (in its ``_fam_*.py``
     module), traced numpy such as products for ``matmul``, solves with the
     transpose for ``solve`` and, for a ``loop``, new loops whose body is the
     :func:`vjp` of the loop's body; a family without one raises
     :class:`~tapejit.TracingError` naming it;

   only instructions between the differentiated arguments and the outputs are walked
   (activity analysis), and repeated operand ids (broadcasts) have their contributions
   summed by one reduction per multiplicity.

``vjp`` (for the loop family's rule) walks once with the given seed; ``jacobian`` walks
once per output element, ``hessian`` once for the gradient and then
once per input element, ``hvp`` twice, ``jvp`` twice (the transpose of a reverse walk).
The cost in tape length is in ``docs/composition.rst``.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._errors import TracingError
from ._ops import BY_NAME, OPS, ZERO_DERIVATIVE, Op, math_to_numpy, partial_source
from ._record import normalize_argnums
from ._tape_builder import Instruction, Mark, Recorder
from ._tracer import Tracer, emit, lift, recorder_of

_I64 = np.int64
_NONE = np.iinfo(np.int64).min  # a node without an adjoint (yet)


# -- the op table's partials as traced numpy ----------------------------------------------
class _Selects(ast.NodeTransformer):
    """Rewrite a scalar expression to work elementwise on arrays: ``x if c else y`` ->
    ``_where(c, x, y)``, ``and``/``or``/``not`` -> ``_and``/``_or``/``_not``, a chained
    comparison -> ``_and`` of its links."""

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        return _call("_where", node.test, node.body, node.orelse)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        return _chain("_and" if isinstance(node.op, ast.And) else "_or", node.values)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return _call("_not", node.operand) if isinstance(node.op, ast.Not) else node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        lefts = [node.left, *node.comparators[:-1]]
        return _chain("_and", [ast.Compare(left, [op], [right]) for left, op, right
                               in zip(lefts, node.ops, node.comparators, strict=True)])


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


def _chain(name: str, values: list[ast.expr]) -> ast.expr:
    out = values[0]
    for v in values[1:]:
        out = _call(name, out, v)
    return out


def _helper_ops() -> dict[str, Op]:
    """Scalar helper -> the op whose value is that helper of its operands
    (``_sign(a)`` is ``sign``, ``_maximum(a, b)`` is ``maximum``): the helpers' traced
    twins, derived from the table."""
    out = {}
    for op in OPS:
        m = re.fullmatch(r"(_\w+)\((.*)\)", op.value)
        if m and m[2] == ", ".join("abc"[: op.arity]):
            out[m[1]] = op
    return out


class _TracedMath:
    """``math`` as numpy's ufuncs, which reach the ops on tracers (``math.asin`` is
    ``np.arcsin``, named by the table's :func:`~tapejit._ops.math_to_numpy`)."""

    _RENAME = math_to_numpy()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(np, self._RENAME.get(name, name), None)
        if not isinstance(fn, np.ufunc):
            raise AttributeError(f"math.{name}")
        return fn


_NAMESPACE: dict[str, Any] = {
    "math": _TracedMath(), "np": np, "abs": abs,
    "_where": np.where, "_and": lambda x, y: x & y, "_or": lambda x, y: x | y,
    "_not": lambda x: ~x,
    **{name: functools.partial(emit, op.name) for name, op in _helper_ops().items()},
}


@functools.cache
def _partial_code(op_name: str, k: int):
    expr = BY_NAME[op_name].partials[k].strip()
    tree = ast.fix_missing_locations(_Selects().visit(ast.parse(expr, mode="eval")))
    return compile(tree, f"<{op_name} partial {k}>", "eval")


def traced_partial(op: Op, k: int, operands: Sequence[Any], result: Any) -> Any:
    """Op ``op``'s partial with respect to operand ``k``, evaluated on (traced) arrays of
    its operands and result, as the table's expression says."""
    names = dict(zip("abc", operands, strict=False), r=result)
    try:
        return eval(_partial_code(op.name, k), _NAMESPACE, names)
    except (NameError, AttributeError) as err:
        raise TracingError(
            f"nested differentiation through {op.name} is not supported yet: its partial "
            f"{op.partials[k]!r} uses {err}, which has no traced counterpart. Record the "
            "inner derivative with a tape instead (tapejit.record(...).gradient)."
        ) from None


# -- the reverse walk ------------------------------------------------------------------------
class _Adjoints:
    """Adjoint ids of the nodes of a window of instructions ``[lo, hi)`` and of the
    differentiated inputs (flat ids recorded before the window), with which of them
    depend on the inputs."""

    def __init__(self, rec: Recorder, lo: int, hi: int, inputs: np.ndarray) -> None:
        self.rec, self.lo, self.hi = rec, lo, hi
        self.n_window = hi - lo
        self.order = np.argsort(inputs, kind="stable")
        self.inputs = inputs[self.order]
        self.ids = np.full(self.n_window + inputs.size, _NONE, dtype=_I64)
        self.active = np.zeros(self.ids.size, dtype=bool)
        self.active[self.n_window :] = True

    def index(self, ids: np.ndarray) -> np.ndarray:
        """Position of each id among the window's nodes and the inputs; -1 for any
        other node or constant."""
        ids = np.asarray(ids, dtype=_I64).ravel()
        out = np.full(ids.size, -1, dtype=_I64)
        w = (ids >= self.lo) & (ids < self.hi)
        out[w] = ids[w] - self.lo
        if self.inputs.size:
            pos = np.minimum(np.searchsorted(self.inputs, ids), self.inputs.size - 1)
            hit = ~w & (self.inputs[pos] == ids)
            out[hit] = self.n_window + self.order[pos[hit]]
        return out

    def is_active(self, idx: np.ndarray) -> np.ndarray:
        return (idx >= 0) & self.active[np.maximum(idx, 0)]

    def add(self, idx: np.ndarray, contrib: np.ndarray) -> None:
        """Accumulate adjoint contributions (ids) into positions ``idx`` (may repeat)."""
        if idx.size == 0:
            return
        if np.unique(idx).size != idx.size:
            idx, contrib = self._combine(idx, contrib)
        cur = self.ids[idx]
        new = cur == _NONE
        if new.all():
            self.ids[idx] = contrib
        elif not new.any() or new.sum() < contrib.size // 2:
            # Adding 0 to the few new ones keeps the sums one block (a mix of sums and
            # plain contributions would split every later emission into scalars).
            cur = np.where(new, self.rec.const(np.zeros(1))[0], cur)
            self.ids[idx] = _emit_runs(self.rec, "add", cur, contrib)
        else:
            old = ~new
            self.ids[idx[new]] = contrib[new]
            self.ids[idx[old]] = _emit_runs(self.rec, "add", cur[old], contrib[old])

    def _combine(self, idx: np.ndarray, contrib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One contribution per position: those to the same position summed, one
        reduction per number of contributions (a broadcast operand has one number)."""
        order = np.argsort(idx, kind="stable")
        idx, contrib = idx[order], contrib[order]
        uniq, start, counts = np.unique(idx, return_index=True, return_counts=True)
        out_idx, out_ids = [], []
        for k in np.unique(counts).tolist():
            m = counts == k
            rows = contrib[start[m][:, None] + np.arange(k)]
            out_idx.append(uniq[m])
            out_ids.append(rows[:, 0] if k == 1 else np.ravel(
                lift(self.rec, np.sum(Tracer(self.rec, rows), axis=1))))
        return np.concatenate(out_idx), np.concatenate(out_ids)

    def of_inputs(self) -> np.ndarray:
        """Adjoint ids of the inputs, in the order given (constant 0 where none)."""
        got = np.empty(self.inputs.size, dtype=_I64)
        got[self.order] = self.ids[self.n_window :]
        none = got == _NONE
        if none.any():
            got[none] = self.rec.const(np.zeros(int(none.sum())))
        return got


class _Window:
    """The instructions recorded since a mark, ready to be walked backwards (possibly
    several times, with different seeds) towards the given inputs."""

    def __init__(self, rec: Recorder, mark: Mark, inputs: list[np.ndarray]) -> None:
        self.rec = rec
        self.lo = mark.nodes
        self.instructions = rec.instructions_since(mark)
        self.hi = rec.mark().nodes
        self.inputs = inputs
        self.flat_inputs = (np.concatenate([np.ravel(i) for i in inputs]) if inputs
                            else np.empty(0, _I64))
        probe = self._adjoints()
        for ins in self.instructions:  # which results depend on the inputs
            if ins.op is not None and ZERO_DERIVATIVE in ins.op.flags:
                continue
            ri = ins.results - self.lo
            if ins.op is None:
                if any(probe.is_active(probe.index(o)).any() for o in ins.operands):
                    probe.active[ri] = True
                continue
            act = np.zeros(ri.size, dtype=bool)
            for k, o in enumerate(ins.operands):
                if partial_source(ins.op.partials[k]).kind != "zero":
                    act |= probe.is_active(probe.index(o))
            probe.active[ri] = act
        self.active = probe.active

    def _adjoints(self) -> _Adjoints:
        return _Adjoints(self.rec, self.lo, self.hi, self.flat_inputs)

    def pullback(self, outputs: np.ndarray, seed: np.ndarray) -> list[np.ndarray]:
        """Adjoint ids of each input (shaped like it) for output ids ``outputs`` with
        adjoint ids ``seed`` (same size): the vector-Jacobian product, recorded."""
        adj = self._adjoints()
        adj.active = self.active.copy()
        idx = adj.index(outputs)
        keep = adj.is_active(idx)
        adj.add(idx[keep], np.ravel(seed)[keep])
        for ins in reversed(self.instructions):
            ri = ins.results - self.lo
            has = adj.ids[ri] != _NONE
            if not has.any():
                continue
            if ins.op is not None:
                self._op_step(adj, ins, has)
            else:
                self._family_step(adj, ins, has)
        flat = adj.of_inputs()
        out, k = [], 0
        for i in self.inputs:
            g = flat[k : k + i.size]
            if g.size >= 8 and (g >= 0).any() and not self.rec.block(g):
                # sums gathered from several emissions: copied into one block (a few
                # exact "* 1.0"), so the code that reads the derivative is blocks too
                g = _emit_runs(self.rec, "mul", g, self.rec.const(np.ones(g.size)))
            out.append(g.reshape(i.shape))
            k += i.size
        return out

    def _op_step(self, adj: _Adjoints, ins: Instruction, has: np.ndarray) -> None:
        rec, op = self.rec, ins.op
        adjoint = adj.ids[ins.results - self.lo]
        for k, operand in enumerate(ins.operands):
            src = partial_source(op.partials[k])
            if src.kind == "zero":
                continue
            target = adj.index(operand)
            want = has & adj.is_active(target)
            if not want.any():
                continue
            e = slice(None) if want.all() else np.flatnonzero(want)
            a = adjoint[e]
            if src.kind == "constant":
                contrib = _scaled(rec, a, src.factor)
            else:
                p = traced_partial(op, k, [_operand(rec, o[e]) for o in ins.operands],
                                   Tracer(rec, ins.results[e]))
                contrib = _times(rec, a, p)
            adj.add(target[e], contrib)

    def _family_step(self, adj: _Adjoints, ins: Instruction, has: np.ndarray) -> None:
        rec, fam = self.rec, ins.family
        targets = [adj.index(o) for o in ins.operands]
        needed = tuple(bool(adj.is_active(t).any()) for t in targets)
        if not any(needed):
            return
        if fam.vjp is None:
            raise TracingError(
                f"nested differentiation through {fam.name} (a grad, jacobian, hessian, "
                "hvp or jvp of a function that calls it, inside a recorded function) is "
                "not supported yet. Differentiate that function once, outside the "
                "recording (tapejit.hessian, or tape.hessian of its tape)."
            )
        g = adj.ids[ins.results - self.lo]
        if not has.all():
            g = np.where(has, g, rec.const(np.zeros(1))[0])
        cots = fam.vjp(ins.attrs, [Tracer(rec, o) for o in ins.operands],
                       Tracer(rec, ins.results), Tracer(rec, g), needed)
        for t, need, d in zip(targets, needed, cots, strict=True):
            if need and d is not None:
                want = adj.is_active(t)
                d = np.broadcast_to(np.ravel(lift(rec, d)), t.shape)
                adj.add(t[want], d[want])


def _operand(rec: Recorder, ids: np.ndarray) -> Any:
    """An operand for a partial's expression: its values where it is all constants (so
    ``b == 0.0`` selects at recording time and ``a ** (b - 1.0)`` with ``b = 3`` is a
    ``square``, as if the user had written the numbers), else a tracer."""
    return rec.values(ids) if (ids < 0).all() else Tracer(rec, ids)


def _emit_runs(rec: Recorder, name: str, *operands: np.ndarray) -> np.ndarray:
    """Op ``name`` on flat operand ids, one emission per run where every operand's ids
    advance by a constant step: each run is one block instruction (one emission over
    ids with a jump somewhere would be one scalar instruction per element), and the
    results are consecutive all the same."""
    n = operands[0].size
    if n > 2:
        d = np.diff(np.stack(operands), axis=1)
        change = np.flatnonzero((d[:, 1:] != d[:, :-1]).any(axis=0)) + 2
        if 0 < change.size < n // 4:
            # a run ends at j + 1 where the step into j + 1 differs from the one before
            cuts = [0, *change.tolist(), n]
            parts = [lift(rec, emit(name, *(Tracer(rec, o[a:b]) for o in operands)))
                     for a, b in itertools.pairwise(cuts) if b > a]
            return np.concatenate(parts)
    return lift(rec, emit(name, *(Tracer(rec, o) for o in operands)))


def _scaled(rec: Recorder, adjoint: np.ndarray, factor: float) -> np.ndarray:
    """Adjoint ids times a constant partial (never 0: those are skipped)."""
    if factor == 1.0:
        return adjoint
    a = Tracer(rec, adjoint)
    return lift(rec, -a if factor == -1.0 else a * factor)


def _times(rec: Recorder, adjoint: np.ndarray, partial: Any) -> np.ndarray:
    """``azmul(adjoint, partial)`` as ids; just the partial where the adjoint is the
    constant 1 (a gradient's seed)."""
    p = np.broadcast_to(lift(rec, partial), adjoint.shape)
    if (adjoint < 0).all() and (rec.values(adjoint) == 1.0).all():
        return np.array(p)
    return _emit_runs(rec, "azmul", adjoint, np.array(p))


# -- the transforms on traced arguments ------------------------------------------------------
def _tracers(values: Any) -> list[Tracer]:
    """The tracers among ``values`` and the items of list or tuple values."""
    out = []
    for a in values:
        if isinstance(a, Tracer):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(v for v in a if isinstance(v, Tracer))
    return out


def _closure(f: Any) -> list[Any]:
    """The values ``f`` closes over (``lambda z: z * w`` inside a recording: ``w``)."""
    cells = getattr(f, "__closure__", None) or ()
    out = []
    for c in cells:
        try:
            out.append(c.cell_contents)
        except ValueError:  # an empty cell
            pass
    return out


def traced(args: Sequence[Any], kwargs: dict[str, Any] | None = None,
           f: Any = None) -> bool:
    """Whether an argument (or an item of a list or tuple argument), a keyword argument
    or a value ``f`` closes over is traced: the transform is then called inside a
    recording and records its derivative there."""
    return bool(_tracers((*args, *(kwargs or {}).values(), *_closure(f))))


class _Inner:
    """``f`` called on fresh copies of its differentiated arguments, recorded after a
    mark of the outer recording."""

    def __init__(self, what: str, f: Callable[..., Any], args: Sequence[Any],
                 argnums: int | Sequence[int] | None, batched: bool = False,
                 kwargs: dict[str, Any] | None = None, has_aux: bool = False) -> None:
        if batched:
            raise TracingError(
                f"{what}(..., batched=True) was called inside a recorded function; there "
                f"each call is one point: use {what}(f) without batched=True, and "
                "evaluate the outer tape on a batch of points instead.")
        self.single = argnums is None or isinstance(argnums, int | np.integer)
        nums = normalize_argnums(argnums, len(args))
        kwargs = kwargs or {}
        rec = recorder_of(_tracers((*args, *kwargs.values(), *_closure(f))))
        call = list(args)
        self.inputs = []
        for i in nums:
            fresh = rec.copy(lift(rec, args[i]))
            call[i] = Tracer(rec, fresh.copy())  # f may assign into its argument
            self.inputs.append(fresh)
        self.rec = rec
        self.mark = rec.mark()
        out = f(*call, **kwargs)  # keyword arguments are not differentiated
        self.aux = None
        if has_aux:
            if not (isinstance(out, tuple | list) and len(out) == 2):
                raise ValueError(f"{what}(..., has_aux=True) needs a function returning a "
                                 "pair (output, auxiliary data)")
            out, self.aux = out
        self.out = out
        items = list(out) if isinstance(out, tuple | list) else [out]
        self.out_ids = (np.concatenate([np.ravel(lift(rec, v)) for v in items]) if items
                        else np.empty(0, _I64))
        shapes = [np.shape(lift(rec, v)) for v in items]
        self.out_shape = shapes[0] if len(shapes) == 1 else (self.out_ids.size,)

    def window(self, mark: Mark | None = None, inputs: list[np.ndarray] | None = None
               ) -> _Window:
        return _Window(self.rec, mark or self.mark, self.inputs if inputs is None else inputs)

    def scalar(self, what: str) -> None:
        if self.out_ids.size != 1:
            raise ValueError(f"{what} needs a function with one scalar output; this one "
                             f"returned {self.out_ids.size} values. Use jacobian().")

    def grad_ids(self) -> list[np.ndarray]:
        return self.window().pullback(self.out_ids, self.rec.const(np.ones(1)))

    def wrap(self, parts: list[np.ndarray]) -> Any:
        ts = [Tracer(self.rec, p) for p in parts]
        return ts[0] if self.single else tuple(ts)


def value_and_grad(f: Callable[..., Any], argnums: Any, args: Sequence[Any],
                   batched: bool = False, kwargs: dict[str, Any] | None = None,
                   has_aux: bool = False) -> tuple[Any, Any]:
    """``value_and_grad(f, argnums)(*args)`` on traced ``args``, recorded; with
    ``has_aux``, ``((value, aux), gradient)`` as JAX returns it."""
    inner = _Inner("value_and_grad", f, args, argnums, batched, kwargs, has_aux)
    inner.scalar("value_and_grad")
    g = inner.wrap(inner.grad_ids())
    return ((inner.out, inner.aux), g) if has_aux else (inner.out, g)


def grad(f: Callable[..., Any], argnums: Any, args: Sequence[Any],
         batched: bool = False, kwargs: dict[str, Any] | None = None,
         has_aux: bool = False) -> Any:
    """``grad(f, argnums)(*args)`` on traced ``args``, recorded; with ``has_aux``,
    ``(gradient, aux)``."""
    inner = _Inner("grad", f, args, argnums, batched, kwargs, has_aux)
    inner.scalar("grad")
    g = inner.wrap(inner.grad_ids())
    return (g, inner.aux) if has_aux else g


def _rows(window: _Window, outputs: np.ndarray, one: np.ndarray) -> list[np.ndarray]:
    """The Jacobian of ``outputs`` by rows: one reverse walk per output element;
    per input, ids shaped ``(n_outputs, *input shape)``."""
    rows = [window.pullback(outputs[j : j + 1], one) for j in range(outputs.size)]
    return [np.stack([r[i] for r in rows]) if rows else
            np.empty((0, *window.inputs[i].shape), _I64) for i in range(len(window.inputs))]


def jacobian(f: Callable[..., Any], argnums: Any, args: Sequence[Any],
             batched: bool = False, kwargs: dict[str, Any] | None = None,
             has_aux: bool = False) -> Any:
    """``jacobian(f, argnums)(*args)`` on traced ``args``, recorded (one reverse walk
    per output element); with ``has_aux``, ``(jacobian, aux)``."""
    inner = _Inner("jacobian", f, args, argnums, batched, kwargs, has_aux)
    blocks = _rows(inner.window(), inner.out_ids, inner.rec.const(np.ones(1)))
    J = inner.wrap([b.reshape(inner.out_shape + i.shape)
                    for b, i in zip(blocks, inner.inputs, strict=True)])
    return (J, inner.aux) if has_aux else J


def hessian(f: Callable[..., Any], argnums: Any, args: Sequence[Any],
            batched: bool = False, kwargs: dict[str, Any] | None = None) -> Any:
    """``hessian(f, argnums)(*args)`` on traced ``args``, recorded: the gradient, then
    its Jacobian (one reverse walk per input element)."""
    inner = _Inner("hessian", f, args, argnums, batched, kwargs)
    inner.scalar("hessian")
    g = np.concatenate([np.ravel(p) for p in inner.grad_ids()])
    blocks = _rows(inner.window(), g, inner.rec.const(np.ones(1)))  # (n, shape_j)
    offs = np.cumsum([0] + [i.size for i in inner.inputs])
    H = [[Tracer(inner.rec, blocks[j][offs[i] : offs[i + 1]].reshape(
        inner.inputs[i].shape + inner.inputs[j].shape)) for j in range(len(blocks))]
         for i in range(len(blocks))]
    return H[0][0] if inner.single else tuple(tuple(row) for row in H)


def hvp(f: Callable[..., Any], argnums: Any, args: Sequence[Any], v: Any,
        batched: bool = False, kwargs: dict[str, Any] | None = None) -> Any:
    """``hvp(f, argnums)(*args, v=v)`` on traced ``args`` (or ``v``), recorded: the
    gradient, then the gradient of its inner product with ``v``."""
    inner = _Inner("hvp", f, args, argnums, batched, kwargs)
    inner.scalar("hvp")
    vs = (v,) if inner.single else tuple(v)
    if len(vs) != len(inner.inputs) or any(
            np.shape(a) != i.shape for a, i in zip(vs, inner.inputs, strict=True)):
        raise ValueError("v must match the shapes of the differentiated arguments "
                         f"{tuple(i.shape for i in inner.inputs)}")
    rec = inner.rec
    dot = _total(np.sum(Tracer(rec, g) * a) for g, a in zip(inner.grad_ids(), vs, strict=True))
    return inner.wrap(inner.window().pullback(np.ravel(lift(rec, dot)), rec.const(np.ones(1))))


def vjp(f: Callable[..., Any], primals: Sequence[Any], cotangent: Any) -> tuple[Any, tuple]:
    """``f(*primals)`` on traced values and its vector-Jacobian product with
    ``cotangent`` (one value per element of the outputs, flattened in order), recorded:
    ``(outputs, cotangents of the primals)``. Elements of ``cotangent`` that are the
    constant 0 seed nothing (so nothing is recorded for the outputs they weigh). The
    loop family's reverse rule (``_fam_loop.loop_vjp``) runs this on its body."""
    inner = _Inner("vjp", f, tuple(primals), tuple(range(len(primals))))
    rec = inner.rec
    seed = np.ravel(lift(rec, cotangent))
    if seed.size != inner.out_ids.size:
        raise ValueError(f"the cotangent has {seed.size} elements; the outputs "
                         f"{inner.out_ids.size}")
    zero = seed < 0
    zero[zero] = rec.values(seed[zero]) == 0.0
    cots = inner.window().pullback(inner.out_ids[~zero], seed[~zero])
    return inner.out, tuple(Tracer(rec, c) for c in cots)


def _total(terms: Any) -> Any:
    return functools.reduce(lambda x, y: x + y, terms)


def jvp(f: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any]) -> tuple:
    """``jvp(f, primals, tangents)`` on traced values, recorded: the reverse walk with a
    seed ``u`` (fresh nodes holding 0) gives ``J^T u``; the reverse walk of its inner
    product with the tangents, with respect to ``u``, gives ``J t``."""
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents) or any(
        np.shape(a) != np.shape(t) for a, t in zip(primals, tangents, strict=True)
    ):
        raise ValueError("primals and tangents must have the same structure and shapes")
    inner = _Inner("jvp", f, primals, tuple(range(len(primals))))
    rec = inner.rec
    u = rec.copy(rec.const(np.zeros(inner.out_ids.size)))
    after_u = rec.mark()
    w = inner.window().pullback(inner.out_ids, u)
    dot = _total(np.sum(Tracer(rec, g) * t) for g, t in zip(w, tangents, strict=True))
    jt = inner.window(after_u, [u]).pullback(np.ravel(lift(rec, dot)), rec.const(np.ones(1)))
    ty = Tracer(rec, jt[0].reshape(inner.out_shape))
    y = Tracer(rec, inner.out_ids.reshape(inner.out_shape))
    return y, ty
