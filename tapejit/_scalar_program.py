"""The scalar program of a tape of scalar instructions: the one-point gradient's
register-style encoding.

Long tapes of scalar code (time steps, recursions, unrolled iterations) are all scalar
instructions, and at one point their sweeps cost what decoding and dispatching each
instruction costs. For such a tape (every instruction of size 1, no instruction
families), :func:`scalar_program` derives once an ``int32`` array (layout:
``tapejit/_kernels/constants.py``, ``SP_*``):

* a row of four ints per instruction, its opcode and operand slots (instruction ``i``
  writes slot ``nf + i``), which ``forward_scalar_sweep`` runs, storing the partials
  that the op table marks ``"stored"`` one after another past the slots;
* the reverse sweep as *edges*, one per operand with a partial and an adjoint, in the
  order ``reverse_stored_point_sweep`` adds them (instructions backwards, operands in
  order), as columns ``target``, ``from`` and ``source``, with a float64 array of their
  factors beside: ``A[target] += azmul(A[from], factor * V[source])``, where ``source``
  is a slot (a ``"value"`` partial), a stored partial, or the 1.0 after them (a
  ``"constant"`` partial, whose constant is the factor).

``value_grad_scalar`` (``tapejit/_kernels/point.py``) runs both: the same bits as
``value_grad_point``, several times faster on long tapes (docs: performance).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ._kernels.constants import (
    EDGE_COLUMNS,
    EDGE_FROMS,
    EDGE_SOURCES,
    EDGE_TARGETS,
    N_OPCODES,
    SP_EDGES,
    SP_HEADER,
    SP_ROW,
    SP_ROWS,
    SP_STORED,
)
from ._ops import OPS
from ._program import (
    ARG_A,
    FIRST_ADJOINT,
    FIRST_FAMILY,
    MAX_ARITY,
    N_INSTR,
    N_SLOTS,
    N_SUBPROGRAMS,
    OPCODE,
    SIZE,
    code_of,
    first_result,
    outputs_of,
    subprograms_of,
)

#: Where a partial is, per ``MAX_ARITY * opcode + operand`` (:func:`_tables`).
_ZERO, _STORED, _CONSTANT, _OPERAND, _RESULT = range(5)


@cache
def _tables() -> tuple[np.ndarray, ...]:
    """From the op table, by ``MAX_ARITY * opcode + k``: where partial ``k`` is, the
    operand whose value it reads, which of the op's stored partials it is, and its
    constant or factor; and per opcode, how many partials its forward sweep stores."""
    where = np.full(MAX_ARITY * N_OPCODES, _ZERO, np.int64)
    operand = np.zeros(MAX_ARITY * N_OPCODES, np.int64)
    index = np.zeros(MAX_ARITY * N_OPCODES, np.int64)
    factor = np.zeros(MAX_ARITY * N_OPCODES)
    count = np.zeros(N_OPCODES, np.int64)
    for op in OPS:
        for k, ps in enumerate(op.partial_sources):
            key = MAX_ARITY * op.code + k
            factor[key] = ps.factor
            if ps.kind == "stored":
                where[key], index[key] = _STORED, count[op.code]
                count[op.code] += 1
            elif ps.kind == "constant":
                where[key] = _CONSTANT
            elif ps.kind == "value":
                where[key] = _RESULT if ps.operand == "r" else _OPERAND
                operand[key] = "abc".index(ps.operand) if ps.operand != "r" else 0
    return where, operand, index, factor, count


def _forward(live: np.ndarray, targets: np.ndarray, froms: np.ndarray, source: np.ndarray,
             factor: np.ndarray, one: int, nf: int, prog: np.ndarray) -> np.ndarray:
    """Drop the edges that only copy an adjoint, rewriting ``froms`` in place.

    An edge of partial +1 (``add``'s operands, for one) into the result of an
    instruction that nothing else reads and that is no output makes that result's
    adjoint a copy of another's: the copy is ``0.0 + azmul(g, 1.0)``, which is ``g``
    itself (an adjoint sum is never ``-0.0``). The edges of that instruction's own
    operands then read ``g`` where it is, as the reverse plan's forwarded operands do.
    Returns the edges kept."""
    slots = int(prog[N_SLOTS])
    readers = np.bincount(targets[live], minlength=slots)
    outs = outputs_of(prog)
    copy = (live & (source == one) & (factor == 1.0) & (targets >= nf)
            & (readers[targets] == 1))
    copy &= ~np.isin(targets, outs)
    alias = np.arange(slots)
    alias[targets[copy]] = froms[copy]
    while True:  # chains of copies: each result's adjoint is read where the last one is
        nxt = alias[alias]
        if np.array_equal(nxt, alias):
            break
        alias = nxt
    froms[:] = alias[froms]
    return live & ~copy


def is_scalar(prog: np.ndarray) -> bool:
    """Whether packed program ``prog`` has a scalar program: instructions, every one
    elementwise of size 1, and no sub-programs."""
    if int(prog[N_INSTR]) == 0 or int(prog[N_SUBPROGRAMS]):
        return False
    code = code_of(prog)
    return bool((code[:, SIZE] == 1).all() and (code[:, OPCODE] < FIRST_FAMILY).all())


def scalar_bodies(prog: np.ndarray) -> bool:
    """Whether packed program ``prog`` has loops and every loop body has a scalar program,
    which the loop routines run at one point (``_kernels/fam_loop.py``)."""
    bodies = subprograms_of(prog)
    return len(bodies) > 0 and all(is_scalar(prog[at : at + length])
                                   for at, length, _ in bodies.tolist())


def scalar_program(prog: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The scalar program of packed program ``prog`` (validated) and its edges'
    factors, or None unless every instruction is elementwise of size 1 and there are no
    sub-programs (:func:`is_scalar`)."""
    if not is_scalar(prog):
        return None
    n = int(prog[N_INSTR])
    code = code_of(prog).astype(np.int64)
    ops = code[:, OPCODE]
    where, operand, index, factor, count = _tables()
    nd, nf, n_slots = int(prog[FIRST_ADJOINT]), first_result(prog), int(prog[N_SLOTS])
    args = code[:, ARG_A : ARG_A + MAX_ARITY]  # unused operands: slot 0, never read
    stored = count[ops]
    q = n_slots + np.concatenate([[0], np.cumsum(stored)[:-1]])  # each one's first
    one = n_slots + int(stored.sum())
    keys = MAX_ARITY * ops[:, None] + np.arange(MAX_ARITY)
    w = where[keys]
    result = np.broadcast_to((nf + np.arange(n))[:, None], keys.shape)
    source = np.select(
        [w == _STORED, w == _CONSTANT, w == _OPERAND, w == _RESULT],
        [q[:, None] + index[keys], np.full_like(keys, one),
         np.take_along_axis(args, operand[keys], axis=1), result], 0)
    live = (w != _ZERO) & (args >= nd)
    # Instructions backwards, each one's operands in order.
    live, targets, froms, source, keys = (a[::-1].ravel() for a in (live, args, result,
                                                                     source, keys))
    live = _forward(live, targets, froms, source, factor[keys], one, nf, prog)
    columns = np.zeros((EDGE_COLUMNS, int(live.sum())), np.int64)
    columns[EDGE_TARGETS] = targets[live]
    columns[EDGE_FROMS] = froms[live]
    columns[EDGE_SOURCES] = source[live]
    rows = np.zeros((n, SP_ROW), np.int64)
    rows[:, 0] = ops
    rows[:, 1:] = args
    header = np.zeros(SP_HEADER, np.int64)
    header[SP_ROWS], header[SP_EDGES], header[SP_STORED] = n, columns.shape[1], stored.sum()
    out = np.concatenate([header, rows.ravel(), columns.ravel()])
    if out.max() >= 2**31:
        return None  # does not fit int32: the general sweeps run it
    return out.astype(np.int32), factor[keys[live]]
