"""Calling a tape: evaluate it on numbers, or inline it into another recording.

``tape(*args, params=None)`` (:meth:`Tape.__call__ <tapejit.Tape.__call__>`) takes one
argument per recorded (differentiated) argument, shaped as when recorded, and returns the
outputs shaped as the recorded function returned them. On plain numbers it is
:meth:`~tapejit.Tape.forward` with the arguments flattened and the outputs unflattened.

On traced values (inside :func:`tapejit.record`) it *inlines* the tape into the active
recording, so recorded tapes are building blocks of larger functions:

* the tape's slots are mapped to ids of the outer recording: its constants to outer
  constants, its inputs and parameters to the ids of the given values, and each
  instruction's results to the ids of its re-emission;
* every instruction is re-emitted through :meth:`Recorder.emit
  <tapejit._tape_builder.Recorder.emit>`: a block instruction as one emission over its
  strided operand ids (so it stays a block), a 2-D emission that the tape split into
  row blocks as one emission per row, and a run of independent scalar instructions of one
  op as one emission (as the single non-affine emission they usually came from). The
  outer recorder folds elements whose operands are all constants there, and finalizes the
  emissions into instructions exactly as if the tape's function had been traced in place:
  the composed tape computes the same values and, block structure permitting, the same
  gradients bit for bit;
* every guard (recorded branch decision) of the tape becomes a guard of the outer
  recording on the mapped comparison, with the tape's outcome, so the outer tape still
  detects a point that leaves the inner tape's branch. A guard that does not hold at the
  outer recording point raises :class:`~tapejit.BranchError` at once: the tape has no
  values for that branch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._errors import BranchError
from ._ops import BY_CODE, COMPARISON, OPS
from ._program import FAMILIES, LAST_OPCODE
from ._tape_builder import Recorder
from ._tracer import Tracer, lift, recorder_of

_I64 = np.int64
_IS_COMPARISON = np.zeros(LAST_OPCODE + 1, dtype=bool)
_IS_COMPARISON[[op.code for op in OPS if COMPARISON in op.flags]] = True


def input_shapes(tape) -> tuple[tuple[int, ...], ...]:
    """Shapes of the arguments a call takes: the recorded ones, else one flat vector."""
    shapes = tuple(tuple(s) for s in tape.input_shapes)
    if sum(math.prod(s) for s in shapes) == tape.n_inputs and (
        shapes or not tape.n_inputs
    ):
        return shapes
    return ((tape.n_inputs,),)


def output_shapes(tape) -> tuple[tuple[int, ...], ...]:
    """Shapes of the outputs a call returns: the recorded ones, else a number or a vector."""
    shapes = tuple(tuple(s) for s in tape.output_shapes)
    if shapes and sum(math.prod(s) for s in shapes) == tape.n_outputs:
        return shapes
    return ((),) if tape.n_outputs == 1 else ((tape.n_outputs,),)


def _name(tape) -> str:
    return f"tape {tape.name!r}" if tape.name else "the tape"


def _unflatten(flat: Any, shapes: tuple[tuple[int, ...], ...], wrap) -> Any:
    """Split a flat output vector by ``shapes``: one output as itself, several as a tuple."""
    outs, k = [], 0
    for s in shapes:
        n = math.prod(s)
        outs.append(wrap(flat[k : k + n].reshape(s)))
        k += n
    return outs[0] if len(outs) == 1 else tuple(outs)


def _recorder(values: list) -> Recorder | None:
    """The recording any of ``values`` (or the items of a list among them) belongs to."""
    flat = []
    for v in values:
        flat.extend(v if isinstance(v, list | tuple) else (v,))
    return recorder_of(flat)


def call_shapes(tape) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """``(input_shapes(tape), output_shapes(tape))``, which a tape keeps for its calls."""
    return input_shapes(tape), output_shapes(tape)


def call_tape(tape, args: tuple, params: Any, shapes: tuple) -> Any:
    """``tape(*args, params=params)``: evaluate, or inline into the active recording.
    ``shapes``: :func:`call_shapes` of the tape."""
    shapes, out_shapes = shapes
    if len(args) != len(shapes):
        raise ValueError(
            f"{_name(tape)} takes {len(shapes)} argument(s) of shape(s) "
            f"{', '.join(map(str, shapes)) or 'none'}; got {len(args)}"
        )
    if params is None and tape.n_params:
        raise ValueError(
            f"{_name(tape)} has {tape.n_params} parameters: pass params= with "
            f"{tape.n_params} values (the non-differentiated arguments, flattened)"
        )
    rec = _recorder([*args, params])
    if rec is None:
        return _evaluate(tape, args, params, shapes, out_shapes)
    return _inline(rec, tape, args, params, shapes, out_shapes)


def _check_shape(tape, i: int, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(
            f"argument {i} of {_name(tape)} must have shape {tuple(want)}; got {tuple(got)}"
        )


def _evaluate(tape, args: tuple, params: Any, shapes: tuple, out_shapes: tuple) -> Any:
    flat = []
    for i, (a, s) in enumerate(zip(args, shapes, strict=True)):
        arr = np.asarray(a)
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"argument {i} of {_name(tape)} must hold real numbers; got dtype {arr.dtype}"
            )
        _check_shape(tape, i, arr.shape, s)
        flat.append(arr.astype(np.float64, copy=False).reshape(-1))
    # one argument needs no concatenation (forward copies nothing it is given either)
    x = flat[0] if len(flat) == 1 else np.concatenate(flat) if flat else np.empty(0)
    if params is not None:
        params = _flat_params(tape, np.asarray(params, dtype=np.float64))
    y = tape.forward(x, params)
    if out_shapes == ((),):
        return y  # one number: forward's float
    return _unflatten(np.atleast_1d(y), out_shapes, lambda a: float(a) if a.ndim == 0 else a)


def _flat_params(tape, p):
    if p.size != tape.n_params:
        raise ValueError(
            f"{_name(tape)} has {tape.n_params} parameters; got params of shape {p.shape}"
        )
    return p.reshape(-1)


def _inline(rec: Recorder, tape, args: tuple, params: Any, shapes: tuple,
            out_shapes: tuple) -> Any:
    m = np.empty(tape.n_slots, dtype=_I64)  # tape slot -> outer id
    nc = len(tape.consts)
    if nc:
        m[:nc] = rec.const(np.asarray(tape.consts))
    if tape.n_params:
        m[tape.params] = _flat_params(tape, lift(rec, params))
    ids = []
    for i, (a, s) in enumerate(zip(args, shapes, strict=True)):
        a_ids = lift(rec, a)
        _check_shape(tape, i, a_ids.shape, s)
        ids.append(a_ids.ravel())
    if ids:
        m[tape.inputs] = np.concatenate(ids)
    _emit_all(rec, tape, m)
    bad = 0
    for slot, outcome in tape.guards.tolist():
        node = int(m[slot])
        if node < 0:  # decided by constants here: no guard needed, but it must hold
            bad += bool(rec.values(np.array([node]))[0] != 0.0) != bool(outcome)
        else:
            bad += rec.guard(node) != bool(outcome)
    if bad:
        raise BranchError(1, 1, tape)
    truth = _comparison_results(tape)
    outs, k = [], 0
    for shape in out_shapes:
        n = math.prod(shape)
        ids = m[tape.outputs[k : k + n]].reshape(shape)
        outs.append(Tracer(rec, ids, bool(truth[k : k + n].all())))
        k += n
    return outs[0] if len(outs) == 1 else tuple(outs)


def _comparison_results(tape) -> np.ndarray:
    """Whether each output is the result of a comparison (a truth value, 1.0 or 0.0)."""
    outs = tape.outputs.astype(_I64)
    first = tape.results.astype(_I64)
    k = np.searchsorted(first, outs, side="right") - 1  # the instruction writing it
    truth = np.zeros(outs.size, dtype=bool)
    inst = k >= 0
    truth[inst] = _IS_COMPARISON[tape.opcodes[k[inst]]]
    return truth


def _emit_all(rec: Recorder, tape, m: np.ndarray) -> None:
    """Re-emit every instruction of ``tape`` into ``rec``, filling the slot map ``m``.

    A run of instructions of one op and one size, none reading another's result, whose
    operands are not affine over the whole run (else the tape would have made one block
    of them), is re-emitted as one emission of shape ``(run, size)``: the scalar
    instructions or row blocks that one non-affine emission was split into. The outer
    recorder then folds and splits that emission as it would the original one.
    """
    n_instr = len(tape)
    if not n_instr:
        return
    codes = tape.opcodes.tolist()
    res = tape.results.tolist()
    sizes = tape.sizes.tolist()
    A = tape.args.astype(_I64)
    ST = tape.strides.astype(_I64)
    last = A + ST * (tape.sizes.astype(_I64)[:, None] - 1)
    top = np.maximum(A, last).max(axis=1).tolist()  # unused operands are 0
    attrs, at = tape.attrs.tolist(), tape.attr_offsets.tolist()
    i = 0
    while i < n_instr:
        if codes[i] in FAMILIES:  # operand blocks and attributes, as recorded
            family = FAMILIES[codes[i]]
            blocks = [m[A[i, k] : A[i, k] + ST[i, k]] for k in range(family.arity)]
            values = tuple(attrs[at[i] : at[i] + len(family.attrs)])
            if family.bodies:  # a loop: its body goes along (a family reference has none)
                from ._loop import emit_loop

                body = tape.subprograms[values[family.attrs.index(family.bodies[0])]]
                ids, _ = emit_loop(rec, body.program, blocks, values)
            else:
                ids = rec.emit_family(family, blocks, values)
            m[res[i] : res[i] + sizes[i]] = ids
            i += 1
            continue
        op = BY_CODE[codes[i]]
        n = sizes[i]
        j = i + 1
        while j < n_instr and codes[j] == codes[i] and sizes[j] == n and top[j] < res[i]:
            j += 1
        if j > i + 1 and _affine(A[i:j, : op.arity], ST[i:j, : op.arity], n):
            j = i + 1
        e = np.arange(n, dtype=_I64)
        operands = []
        for k in range(op.arity):
            a, st = A[i:j, k], ST[i:j, k]
            if j == i + 1 and st[0] == 0:
                operands.append(np.broadcast_to(m[a[0]], (n,)))
            else:
                ids = m[a[:, None] + st[:, None] * e]
                operands.append(ids.reshape(-1) if n == 1 else ids.reshape(-1, n))
        ids = rec.emit(op, *operands)
        m[res[i] : res[i] + (j - i) * n] = ids.reshape(-1)
        i = j


def _affine(a: np.ndarray, st: np.ndarray, n: int) -> bool:
    """Whether rows of ``n`` elements, operand ``k`` of row ``r`` at ``a[r, k] +
    e * st[r, k]``, are affine over all the rows together (one block)."""
    if n == 1:
        d = np.diff(a, axis=0)
        return bool((d == d[0]).all())
    return bool((st == st[0]).all() and (np.diff(a, axis=0) == n * st[0]).all())
