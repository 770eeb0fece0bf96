"""Optimization passes over a tape, and tape statistics.

:func:`simplify` (behind :meth:`Tape.simplify`) runs any of three passes, in the order
given, and returns a new valid canonical :class:`~tapejit.Tape` (results consecutive from
``n_fixed`` in instruction order, operands strictly earlier, parameter and input slots
fixed; slots are renumbered after instructions are removed):

``"fold"``
    Constant folding: an instruction whose operands are all constants (or results folded
    before it) becomes constants. The values are computed by the tape's own Numba
    forward kernel running the tape's own instructions, so they are bit for bit what
    evaluating the original tape computes (the op's numpy reference can differ from the
    kernels in the last bit for transcendental functions). Instructions with a guarded
    result are kept, so the guard still refers to a result slot. The recorder already
    folds while recording; this pass matters for hand-built or transformed tapes.
``"cse"``
    Common subexpression elimination by hash-consing ``(opcode, operands)`` in one
    forward pass; a block instruction's operands are compared element by element.
    Constants with the same bits count as the same operand. The operands of ops that are
    commutative *bit for bit* are sorted first: ``add``, ``mul``, ``hypot``,
    ``logaddexp``, ``equal``, ``not_equal``. ``maximum`` and ``minimum`` are commutative
    but not bit for bit (``maximum(0.0, -0.0)`` is ``0.0``, ``maximum(-0.0, 0.0)`` is
    ``-0.0``), so their operand order is kept.
``"dce"``
    Dead code elimination: instructions none of whose results reaches an output or a
    guard are removed, and so are constants no one reads.

Block instructions (one op over ``size`` elements, operands read with strides) are
kept whole: a pass removes or merges whole instructions, and never one whose slots are
read by a multi-element operand of a kept instruction unless renumbering keeps that
operand an evenly strided run of slots (checked after each pass, which otherwise backs
off for those instructions).

Instruction family instructions (a matrix product, a factorization) are opaque nodes:
DCE keeps one when any of its results is live, and then all of its operand blocks
``ARG_k .. ARG_k + STRIDE_k - 1``; CSE merges two with the same opcode, attribute values
and operand blocks (slot for slot, after earlier merges); fold never folds one (nor what
reads it). Each operand block must stay whole: renumbering has to map it to consecutive
slots, else the pass backs off as for strided blocks.

Loops (``tapejit.scan``, ``tapejit.fori_loop``) are such instructions too: DCE removes a
loop none of whose results is live, and keeps one whose status element is guarded (a
body with guards), so a point that takes another branch inside the body still raises or
is masked; CSE merges two loops with the same attributes and operands whose bodies are
equal (the same packed program and constant bits, so the same body recorded twice
counts). Each pass also runs on every body first, recursively for nested loops, with its
interface fixed: the same inputs ``[carry | x | closure]``, outputs ``[next carry | y]``
and guards, so the loop's attributes stay as they are; dead code, repeated
subexpressions and constant subexpressions inside a body go as in any program. Bodies no
instruction runs any more are dropped and the others renumbered, in order (the ``body``
attribute); a body's constants stay one range of the pool (rebuilt as ``[bodies'
constants | the program's own]`` when a body's constants change). Fold computes the
values inside a body as anywhere: the kernels of the tier that runs the tape, whose
per-op code the loops run the bodies with too, so they are the bits an evaluation gives.

Guarantees: every pass leaves the values of the outputs (and the guard decisions) bit for
bit as they were, with one IEEE caveat for CSE (when both operands of a commutative op
are NaN, which NaN payload propagates may change; the result is NaN either way).
Derivatives of fold and DCE are bit for bit unchanged. CSE merges nodes, so the adjoints
the merged copies received separately are summed before being multiplied by the local
partials: derivatives are the same numbers mathematically but may differ in the last
bits (``(a + b) * d`` against ``a * d + b * d``).

Slot compaction (reusing the slots of dead values in the forward sweeps) is not a pass
over the tape but a derived program each tape builds for itself: see ``_slot_reuse``.

Not done (out of scope for now): algebraic simplification (``x * 1``, ``x + 0``), which is not
bit-exact in general (``-0.0 + 0.0``); merging scalar instructions into blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ._ops import BY_CODE, OPS, SWAPPABLE
from ._program import (
    ARITY,
    FAMILIES,
    FIRST_FAMILY,
    GUARD,
    GUARD_SLOT,
    LAST_OPCODE,
    MAX_ARITY,
    N_SLOTS,
    Program,
    Subprogram,
)
from ._slot_reuse import compact
from ._tape import Tape, forward_program, kernel_arrays, packed, reverse_plan

#: Opcodes whose two operands may be swapped without changing a bit of the value or of
#: any derivative: IEEE addition and multiplication, and ops built symmetrically.
BIT_COMMUTATIVE = frozenset(op.code for op in OPS if SWAPPABLE in op.flags)
#: The passes, in their default order.
PASSES = ("fold", "cse", "dce")


def _family(p: Program) -> np.ndarray:
    """Per instruction: is it of an instruction family?"""
    return p.opcodes >= FIRST_FAMILY


def _body_attrs(p: Program) -> tuple[np.ndarray, np.ndarray]:
    """``inst, pos``: for each attribute that names a sub-program (``Family.bodies``), its
    instruction and its index in ``p.attrs``."""
    inst, pos = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    at = p.attr_offsets
    for code, family in FAMILIES.items():
        if not family.bodies:
            continue
        which = np.flatnonzero(p.opcodes == code)
        for body in family.bodies:
            inst.append(which)
            pos.append(at[which] + family.attrs.index(body))
    return np.concatenate(inst), np.concatenate(pos)


def _body_instructions(p: Program) -> int:
    """Instructions of the sub-programs of ``p``, nested ones included."""
    return sum(len(s.program) + _body_instructions(s.program) for s in p.subprograms)


def _pinned(p: Program, keep: np.ndarray) -> np.ndarray:
    """Mask over the constants: the pool ranges of the sub-programs that the instructions
    ``keep`` run (they must stay, whole and in order)."""
    pinned = np.zeros(p.n_consts, dtype=bool)
    if not p.subprograms:
        return pinned
    inst, pos = _body_attrs(p)
    for j in np.unique(p.attrs[pos[keep[inst]]]).tolist():
        sub = p.subprograms[j]
        pinned[sub.consts_at : sub.consts_at + sub.program.n_consts] = True
    return pinned


def _reads(p: Program) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lo, hi, reads``, each ``(n, MAX_ARITY)``: the first and last slot each operand
    reads, and which operands read any. A family operand is the whole block ``ARG_k ..
    ARG_k + STRIDE_k - 1``; an elementwise one spans its elements."""
    fam = _family(p)[:, None]
    last = p.args + (p.sizes[:, None] - 1) * p.strides
    lo = np.where(fam, p.args, np.minimum(p.args, last))
    hi = np.where(fam, p.args + p.strides - 1, np.maximum(p.args, last))
    return lo, hi, p.used() & ~(fam & (p.strides == 0))


def _blocks(p: Program, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``lo, hi`` of the operands of the instructions ``which`` that read more than one
    slot in a fixed pattern: strided elementwise blocks and family operand blocks."""
    lo, hi, reads = _reads(p)
    sel = reads & which[:, None] & (hi > lo)
    return lo[sel], hi[sel]


def _cover(n_slots: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bool mask of the slots inside any range ``lo[j]..hi[j]``."""
    diff = np.zeros(n_slots + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi + 1, -1)
    return np.cumsum(diff[:-1]) > 0


def _any_in(mask: np.ndarray, p: Program) -> np.ndarray:
    """Per instruction: does ``mask`` hold for any of its result slots?"""
    c = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    r = p.results
    return c[r + p.sizes] > c[r]


def _tape(p: Program, like: Tape, **kwargs: Any) -> Tape:
    """``p`` as a tape with ``like``'s shapes and name (checked again, as every tape is)."""
    kwargs = {"input_shapes": like.input_shapes, "output_shapes": like.output_shapes,
              "name": like.name, **kwargs}
    return Tape(**p.arrays(), **kwargs)


def _result_map(p: Program, keep: np.ndarray, nc_new: int) -> np.ndarray:
    """Old slot -> new slot for the parameters, inputs and kept results (others -1)."""
    M = np.full(p.n_slots, -1, dtype=np.int64)
    shift = nc_new - p.n_consts
    M[p.n_consts : p.n_fixed] = np.arange(p.n_consts, p.n_fixed) + shift
    kept_elems = np.repeat(keep, p.sizes)
    M[p.n_fixed + np.flatnonzero(kept_elems)] = (
        p.n_fixed + shift + np.arange(int(np.count_nonzero(kept_elems)))
    )
    return M


def _bad_spans(p: Program, M: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Slots inside multi-element operands of kept instructions that ``M`` would not map
    to an evenly strided run with the same stride (mask over old slots)."""
    bad = np.zeros(p.n_slots, dtype=bool)
    # a family operand block must map to consecutive slots, as a whole
    lo, hi, reads = _reads(p)
    for i, k in zip(*np.nonzero(reads & (keep & _family(p))[:, None] & (hi > lo)),
                    strict=True):
        block = M[lo[i, k] : hi[i, k] + 1]
        if block[0] < 0 or not np.array_equal(block, block[0] + np.arange(len(block))):
            bad[lo[i, k] : hi[i, k] + 1] = True
    sel = keep & (p.sizes > 1) & ~_family(p)
    if not sel.any():
        return bad
    inst, e, slots = p.elements()
    m = sel[inst]
    inst, e, slots = inst[m], e[m], slots[m]
    for k in range(MAX_ARITY):
        s = p.strides[inst, k]
        a = p.args[inst, k]
        chk = (ARITY[p.opcodes[inst]] > k) & (s != 0)
        wrong = chk & ((M[slots[:, k]] < 0) | (M[slots[:, k]] != M[a] + e * s))
        if wrong.any():
            i = np.unique(inst[wrong])
            last = p.args[i, k] + (p.sizes[i] - 1) * p.strides[i, k]
            lo, hi = np.minimum(p.args[i, k], last), np.maximum(p.args[i, k], last)
            bad |= _cover(p.n_slots, lo, hi)
    return bad


def _relabel(p: Program, M: np.ndarray, keep: np.ndarray, consts: np.ndarray,
             subs: Sequence[Subprogram] | None = None) -> Program:
    """Keep the instructions ``keep``; every old slot ``s`` now reads new slot ``M[s]``.

    ``subs``: the sub-program table in the new pool ``consts`` (by default ``p``'s, each
    one's constants moved by ``M``, which must keep them whole). Sub-programs no kept
    instruction runs are dropped and the others renumbered, in order."""
    _, _, reads = _reads(p)
    args = np.where(reads[keep], M[p.args[keep]], 0)  # an empty family operand reads slot 0
    guards = p.guards.copy()
    guards[:, GUARD_SLOT] = M[guards[:, GUARD_SLOT]]
    if subs is None:  # an empty range may sit anywhere in the pool: put it at 0
        subs = [Subprogram(s.program, int(M[s.consts_at]) if s.program.n_consts else 0)
                for s in p.subprograms]
    new_attrs = p.attrs
    if len(subs):
        inst, pos = _body_attrs(p)
        named = p.attrs[pos[keep[inst]]]
        run = np.unique(named)
        index = np.full(len(subs), -1, dtype=np.int64)
        index[run] = np.arange(len(run))
        new_attrs = p.attrs.copy()
        new_attrs[pos[keep[inst]]] = index[named]
        subs = [subs[j] for j in run.tolist()]
    attrs, attr_at = _kept_attrs(replace(p, attrs=new_attrs), keep)
    return Program(p.opcodes[keep], args, p.sizes[keep], p.strides[keep], consts, p.n_params,
                   p.n_inputs, M[p.outputs], guards, attrs, attr_at, tuple(subs))


def _with_bodies(p: Program, bodies: Sequence[Program]) -> Program:
    """``p`` with each sub-program replaced by the one in ``bodies`` (same interface).

    When a body's constants changed, the pool is rebuilt as ``[the bodies' constants, in
    table order | the constants outside them or read by p itself, in order]`` and the slots
    renumbered; constants read by a multi-element operand keep their whole span, so every
    operand stays an evenly strided run."""
    subs = p.subprograms
    if all(np.array_equal(b.consts.view(np.int64), s.program.consts.view(np.int64))
           for b, s in zip(bodies, subs, strict=True)):
        return replace(p, subprograms=tuple(Subprogram(b, s.consts_at)
                                            for b, s in zip(bodies, subs, strict=True)))
    nc = p.n_consts
    own = np.ones(nc, dtype=bool)
    for sub in subs:
        own[sub.consts_at : sub.consts_at + sub.program.n_consts] = False
    lo, hi, reads = _reads(p)
    own |= _cover(p.n_slots, lo[reads], hi[reads])[:nc]
    own[p.outputs[p.outputs < nc]] = True
    starts = np.cumsum([0] + [b.n_consts for b in bodies])
    consts = np.concatenate([*(b.consts for b in bodies), p.consts[own]])
    M = np.full(p.n_slots, -1, dtype=np.int64)
    M[np.flatnonzero(own)] = starts[-1] + np.arange(int(np.count_nonzero(own)))
    M[nc:] = np.arange(nc, p.n_slots) + len(consts) - nc
    keep = np.ones(len(p.opcodes), dtype=bool)
    if _bad_spans(p, M, keep).any():  # pragma: no cover - spans are kept whole
        raise AssertionError("rebuilding the pool would break a strided operand")
    return _relabel(p, M, keep, consts, [Subprogram(b, int(at)) for b, at in
                                         zip(bodies, starts[:-1], strict=True)])


def _kept_attrs(p: Program, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The attribute section and offsets of the instructions ``keep`` (every attribute
    must be read by an instruction, so the removed ones' go)."""
    if p.attr_at is None:
        return p.attrs, None
    count = np.zeros(len(p.opcodes), dtype=np.int64)
    for code, family in FAMILIES.items():
        count[p.opcodes == code] = len(family.attrs)
    count = count[keep]
    at = p.attr_at[keep]
    idx = np.repeat(at, count) + np.arange(int(count.sum())) - np.repeat(
        np.cumsum(count) - count, count)
    offsets = np.where(count > 0, np.cumsum(count) - count, 0)
    return p.attrs[idx], offsets


# ---------------------------------------------------------------------------------------
# fold
# ---------------------------------------------------------------------------------------
def _columns(p: Program) -> tuple[list[int], ...]:
    """Flat Python lists (no per-instruction containers, so no garbage-collector churn):
    arity, sizes, first result, and the three operand columns."""
    return (p.arity().tolist(), p.sizes.tolist(), p.results.tolist(),
            p.args[:, 0].tolist(), p.args[:, 1].tolist(), p.args[:, 2].tolist())


def _span(p: Program, i: int, j: int) -> list[int]:
    """Operand slots of column ``j`` of block instruction ``i``, element by element."""
    return (p.args[i, j] + p.strides[i, j] * np.arange(p.sizes[i])).tolist()


def _foldable(p: Program, blocked: np.ndarray) -> np.ndarray:
    """Instructions whose operands are all constants or results of such instructions."""
    n = len(p.opcodes)
    fold = np.zeros(n, dtype=bool)
    ar, sizes, res, c0, c1, c2 = _columns(p)
    ic = [True] * p.n_consts + [False] * (p.n_slots - p.n_consts)
    blk = blocked.tolist()
    for i in range(n):
        if blk[i]:
            continue
        k, sz = ar[i], sizes[i]
        if sz == 1:
            ok = ic[c0[i]] and (k < 2 or ic[c1[i]]) and (k < 3 or ic[c2[i]])
        else:
            ok = all(ic[s] for j in range(k) for s in _span(p, i, j))
        if ok:
            fold[i] = True
            r = res[i]
            ic[r : r + sz] = [True] * sz
    return fold


def _fold_values(p: Program, slots: np.ndarray) -> np.ndarray | None:
    """Values of constant ``slots``, computed by the kernels running this very program
    (at an arbitrary point: these slots depend on constants only); for a loop body, the
    same per-op code that the loop runs it with, on either tier."""
    # Without the guards (they need not hold at this point) and what the slots do not
    # need (no loop: nothing that reads one is folded).
    q = _dce(replace(p, outputs=slots, guards=np.zeros((0, GUARD), dtype=np.int64)))
    try:
        values = np.empty(len(slots))
        Tape(**q.arrays()).forward(np.zeros(q.n_inputs),
                                   np.zeros(q.n_params) if q.n_params else None, out=values)
        return values
    except ArithmeticError:  # kernels raising (e.g. ZeroDivisionError): fold nothing
        return None


def _fold(p: Program) -> Program:
    n, nc = len(p.opcodes), p.n_consts
    if n == 0:
        return p
    guarded = np.zeros(p.n_slots, dtype=bool)
    guarded[p.guards[:, GUARD_SLOT]] = True
    blocked = _any_in(guarded, p) | _family(p)  # family instructions stay instructions
    bits: np.ndarray | None = None  # value bits of every slot the first round folds
    pool0 = {b: k for k, b in reversed(list(enumerate(p.consts.view(np.int64).tolist())))}
    while True:
        fold = _foldable(p, blocked)
        if not fold.any():
            return p
        keep = ~fold
        # Folded values must not be read by a multi-element operand of a kept
        # instruction: constants are deduplicated, which would break its stride.
        lo, hi = _blocks(p, keep)
        covered = _any_in(_cover(p.n_slots, lo, hi), p) & fold
        if covered.any():
            blocked |= covered
            continue
        fold_elems = np.repeat(fold, p.sizes)
        folded_slots = p.n_fixed + np.flatnonzero(fold_elems)
        if bits is None:  # later rounds fold a subset of the first
            values = _fold_values(p, folded_slots)
            if values is None:
                return p
            bits = np.zeros(p.n_slots, dtype=np.int64)
            bits[folded_slots] = values.view(np.int64)
        # New constants, reusing pool entries with the same bits.
        pool = dict(pool0)
        new_bits: list[int] = []
        const_slot = np.empty(len(folded_slots), dtype=np.int64)
        for j, b in enumerate(bits[folded_slots].tolist()):
            k = pool.get(b)
            if k is None:
                k = pool[b] = nc + len(new_bits)
                new_bits.append(b)
            const_slot[j] = k
        consts = np.concatenate([p.consts, np.array(new_bits, dtype=np.int64).view(np.float64)])
        M = _result_map(p, keep, len(consts))
        M[:nc] = np.arange(nc)
        M[folded_slots] = const_slot
        if not _bad_spans(p, M, keep).any():
            return _relabel(p, M, keep, consts)
        # A kept strided run crosses from the constants into the parameters or inputs,
        # so the pool cannot grow: fold only what needs no new constant.
        needs_new = np.zeros(p.n_slots, dtype=bool)
        needs_new[folded_slots[const_slot >= nc]] = True
        more = _any_in(needs_new, p) & fold
        if not more.any():  # pragma: no cover - nothing else moves
            return p
        blocked |= more


# ---------------------------------------------------------------------------------------
# cse
# ---------------------------------------------------------------------------------------
def _const_reps(consts: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """For each constant, the first constant with the same bits (itself if blocked)."""
    if len(consts) == 0:
        return np.zeros(0, dtype=np.int64)
    bits = consts.view(np.int64)
    _, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
    rep = first[inverse.reshape(-1)].astype(np.int64)
    return np.where(blocked, np.arange(len(consts)), rep)


def _cse_once(p: Program, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One hash-consing pass: ``(duplicate instructions, canonical slot of each slot)``."""
    n, nc = len(p.opcodes), p.n_consts
    canon = list(range(p.n_slots))
    canon[:nc] = _const_reps(p.consts, blocked[:nc]).tolist()
    seen: dict[object, int] = {}
    dup = np.zeros(n, dtype=bool)
    no_elim = _any_in(blocked, p).tolist()
    ops = p.opcodes.tolist()
    ar, sizes, res, c0, c1, c2 = _columns(p)
    swap = BIT_COMMUTATIVE
    S = p.n_slots + 1
    fam = _family_keys(p)
    for i in range(n):
        op, k, sz = ops[i], ar[i], sizes[i]
        key: object
        if i in fam:  # equal attributes and equal operand blocks
            key = (op, sz, fam[i], *(_block_key(canon, a, n_a) for a, n_a in zip(
                p.args[i, :k].tolist(), p.strides[i, :k].tolist(), strict=True)))
        elif sz == 1:
            a0 = canon[c0[i]]
            a1 = canon[c1[i]] if k > 1 else 0
            a2 = canon[c2[i]] if k > 2 else 0
            if a1 < a0 and op in swap:
                a0, a1 = a1, a0
            key = ((op * S + a0) * S + a1) * S + a2  # an int: no tuple to allocate
        else:
            parts: list[tuple] = []
            for j in range(MAX_ARITY):
                if j >= k:
                    parts.append((0, 0, 0))
                    continue
                el = [canon[s] for s in _span(p, i, j)]
                d = el[1] - el[0]
                if all(el[e] == el[0] + e * d for e in range(2, sz)):
                    parts.append((0, el[0], d))  # an evenly strided run
                else:
                    parts.append((1, tuple(el)))
            if op in swap and parts[1] < parts[0]:
                parts[0], parts[1] = parts[1], parts[0]
            key = (op, sz, *parts)
        r = seen.get(key)
        if r is None:
            seen[key] = res[i]
        elif not no_elim[i]:
            canon[res[i] : res[i] + sz] = range(r, r + sz)
            dup[i] = True
    return dup, np.array(canon, dtype=np.int64)


def _family_keys(p: Program) -> dict[int, tuple[int, ...]]:
    """Attribute values of each family instruction, by instruction; an attribute naming a
    sub-program names the first one equal to it (the same packed program and constant
    bits), so loops over equal bodies compare equal."""
    out = {}
    at = p.attr_offsets
    attrs = p.attrs
    if p.subprograms:
        first: dict[tuple[bytes, bytes], int] = {}
        same = np.array([first.setdefault((prog.tobytes(), consts.view(np.int64).tobytes()), j)
                         for j, (prog, consts) in enumerate(s.program.pack()
                                                           for s in p.subprograms)])
        _, pos = _body_attrs(p)
        attrs = attrs.copy()
        attrs[pos] = same[attrs[pos]]
    for i in np.flatnonzero(_family(p)).tolist():
        count = len(FAMILIES[int(p.opcodes[i])].attrs)
        out[i] = tuple(attrs[at[i] : at[i] + count].tolist())
    return out


def _block_key(canon: list[int], a: int, length: int) -> tuple:
    """A family operand block ``a .. a + length - 1`` as its slots' representatives:
    ``(0, first, length)`` when they are consecutive, else all of them."""
    el = canon[a : a + length]
    if all(s == el[0] + e for e, s in enumerate(el)):
        return (0, el[0] if length else 0, length)
    return (1, tuple(el))


def _cse(p: Program) -> Program:
    nc = p.n_consts
    blocked = np.zeros(p.n_slots, dtype=bool)
    while True:
        dup, canon = _cse_once(p, blocked)
        if not dup.any() and np.array_equal(canon[:nc], np.arange(nc)):
            return p
        keep = ~dup
        M = _result_map(p, keep, nc)
        M[:nc] = np.arange(nc)
        M = M[canon]  # every slot reads its representative's new slot
        bad = _bad_spans(p, M, keep)
        if not bad.any():
            return _relabel(p, M, keep, p.consts, p.subprograms)  # the pool stays
        if not (bad & ~blocked).any():
            return p
        blocked |= bad


# ---------------------------------------------------------------------------------------
# dce
# ---------------------------------------------------------------------------------------
def _live(p: Program) -> np.ndarray:
    """Slots an output or a guard depends on. A multi-element operand of a live
    instruction makes its whole slot range live (so renumbering keeps it strided)."""
    live = [False] * p.n_slots
    for s in p.outputs.tolist() + p.guards[:, GUARD_SLOT].tolist():
        live[s] = True
    ar, sizes, res, c0, c1, c2 = _columns(p)
    fam = _family(p).tolist()
    first, last, reads = (x.tolist() for x in _reads(p))
    for i in range(len(ar) - 1, -1, -1):
        r, sz = res[i], sizes[i]
        if fam[i]:  # opaque: any live result makes its whole operand blocks live
            if any(live[r : r + sz]):
                for j in range(ar[i]):
                    if reads[i][j]:
                        a, z = first[i][j], last[i][j]
                        live[a : z + 1] = [True] * (z - a + 1)
            continue
        if sz == 1:
            if live[r]:
                k = ar[i]
                live[c0[i]] = True
                if k > 1:
                    live[c1[i]] = True
                    if k > 2:
                        live[c2[i]] = True
            continue
        if not any(live[r : r + sz]):
            continue
        for j in range(ar[i]):
            st = int(p.strides[i, j])
            a = int(p.args[i, j])
            lo, hi = sorted((a, a + (sz - 1) * st))
            live[lo : hi + 1] = [True] * (hi - lo + 1)
    return np.array(live, dtype=bool)


def _dce(p: Program) -> Program:
    nc = p.n_consts
    live = _live(p)
    keep = _any_in(live, p)
    const_keep = live[:nc] | _pinned(p, keep)
    if keep.all() and const_keep.all():
        return p
    nc_new = int(np.count_nonzero(const_keep))
    M = _result_map(p, keep, nc_new)
    M[np.flatnonzero(const_keep)] = np.arange(nc_new)
    if _bad_spans(p, M, keep).any():  # pragma: no cover - live ranges prevent it
        raise AssertionError("dce would break a strided operand")
    return _relabel(p, M, keep, p.consts[const_keep])


def guard_slice(tape: Tape) -> Tape | None:
    """The part of ``tape`` its guards depend on: a tape with the same inputs,
    parameters and guards, whose one output is the first guard's comparison. Evaluating
    it tells which points take the recorded branches at a fraction of a full sweep's
    cost. ``None`` for a tape without guards."""
    p = Program.from_tape(tape)
    if not len(p.guards):
        return None
    q = _dce(replace(p, outputs=p.guards[:1, GUARD_SLOT]))
    return _tape(q, tape, output_shapes=((),), name=f"guards of {tape.name}")


_RUN: dict[str, Callable[[Program], Program]] = {"fold": _fold, "cse": _cse, "dce": _dce}


def _run(name: str, p: Program) -> Program:
    """Pass ``name`` over each sub-program of ``p`` (recursively; their inputs, outputs
    and guards stay), then over ``p`` itself."""
    if p.subprograms:
        p = _with_bodies(p, [_run(name, s.program) for s in p.subprograms])
    return _RUN[name](p)


def simplify(
    tape: Tape, passes: Iterable[str] = PASSES, *, report: bool = False
) -> Tape | tuple[Tape, list[dict[str, Any]]]:
    """Run optimization passes on a tape; each leaves the output values bit for bit.

    Parameters
    ----------
    tape : Tape
    passes : iterable of {"fold", "cse", "dce"}
        Passes to run, in this order (a pass may be repeated). See the module docstring
        of ``tapejit._passes`` for what each does and guarantees.
    report : bool
        Also return one dict per pass run: ``pass``, ``instructions_before``,
        ``instructions_after``, ``elements_before``, ``elements_after`` (result slots),
        ``consts_before``, ``consts_after`` (of the tape's own program),
        ``body_instructions_before``, ``body_instructions_after`` (of its loop bodies,
        nested ones included), ``seconds``.

    Returns
    -------
    Tape or (Tape, list of dict)
        A new tape with the same inputs, parameters, outputs, shapes, name and guards.

    Notes
    -----
    The optimized tape still has one slot per constant, input, parameter and instruction
    element; its forward sweeps reuse the slots of dead values on their own (``_slot_reuse``).

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> from tapejit._passes import simplify
    >>> tape = tapejit.record(lambda x, y: np.sin(x) * y + y * np.sin(x), 1.0, 2.0)
    >>> len(tape), len(simplify(tape))
    (5, 3)
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"simplify needs a tapejit.Tape; got {type(tape).__name__}")
    names = [passes] if isinstance(passes, str) else list(passes)
    for name in names:
        if name not in _RUN:
            raise ValueError(f"unknown pass {name!r}; the passes are {', '.join(PASSES)}")
    p = Program.from_tape(tape)
    log = []
    for name in names:
        t0 = time.perf_counter()
        q = _run(name, p)
        log.append({
            "pass": name,
            "instructions_before": len(p.opcodes),
            "instructions_after": len(q.opcodes),
            "elements_before": int(p.sizes.sum()),
            "elements_after": int(q.sizes.sum()),
            "consts_before": p.n_consts,
            "consts_after": q.n_consts,
            "body_instructions_before": _body_instructions(p),
            "body_instructions_after": _body_instructions(q),
            "seconds": time.perf_counter() - t0,
        })
        p = q
    out = _tape(p, tape)
    return (out, log) if report else out


# ---------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------
def _peak_live(p: Program) -> int:
    """Peak number of simultaneously live variable values (inputs, parameters, results)
    over a forward sweep: a value lives from the instruction that defines it to its last
    use (outputs and guarded values to the end); an instruction's operands and results
    are live together; inputs and parameters are defined before the first instruction."""
    n, nc, nf = len(p.opcodes), p.n_consts, p.n_fixed
    last = np.full(p.n_slots, -1, dtype=np.int64)
    inst, _, slots = p.elements()
    if len(inst):
        used = p.used()[inst] & ~_family(p)[inst, None]
        step = np.broadcast_to(inst[:, None], slots.shape)
        np.maximum.at(last, slots[used], step[used])
    lo, hi, reads = _reads(p)
    for i, k in zip(*np.nonzero(reads & _family(p)[:, None]), strict=True):
        block = last[lo[i, k] : hi[i, k] + 1]  # a family reads its operand blocks whole
        np.maximum(block, i, out=block)
    last[p.outputs] = n
    last[p.guards[:, GUARD_SLOT]] = n
    define = np.full(p.n_slots, -1, dtype=np.int64)
    define[nf:] = inst
    var = slice(nc, p.n_slots)
    start = define[var] + 1  # steps -1..n shifted to 0..n+1
    end = np.maximum(define[var], last[var]) + 1
    diff = np.zeros(n + 3, dtype=np.int64)
    np.add.at(diff, start, 1)
    np.add.at(diff, end + 1, -1)
    return int(np.cumsum(diff).max(initial=0))


def _compact_slots(tape: Tape) -> int:
    prog, n_slots, _ = forward_program(tape)
    return (n_slots if prog is not kernel_arrays(tape)[0]
            else int(compact(packed(tape)[0])[N_SLOTS]))


def _op_name(code: int) -> str:
    return BY_CODE[code].name if code in BY_CODE else FAMILIES[code].name


def stats(tape: Tape) -> dict[str, Any]:
    """Size and shape of a tape.

    Returns
    -------
    dict
        ``name``; counts ``n_instructions``, ``n_blocks`` (instructions over more than
        one element), ``n_elements`` (result slots), ``n_consts``, ``n_inputs``,
        ``n_params``, ``n_outputs``, ``n_guards``, ``n_slots``; ``op_counts`` (op name ->
        instructions, most frequent first) and ``op_elements`` (op name -> elements);
        ``bytes`` (``program``: the packed int32 program, ``consts``, ``derived``: what
        the tape derives from its program on first use and keeps, the slot-compacted
        forward program when it uses one and the reverse plan; ``total``);
        ``workspace_bytes_per_point`` (one float64 per slot: a forward sweep's
        workspace); ``peak_live`` (most variable values alive at once in a forward
        sweep, from their last uses: what a slot-reusing allocator would need besides
        the constants); ``compact_slots`` (slots of the slot-compacted forward program,
        see ``tapejit._slot_reuse``: the forward and tangent sweeps use it when it has at most
        3/4 of ``n_slots``); ``dead_instructions`` (instructions reaching no output or guard,
        which the ``"dce"`` pass removes); ``n_subprograms`` (loop bodies) and
        ``body_instructions`` (their instructions, nested bodies' included). Apart from
        these two, the counts are of the tape's own program: a loop is one instruction.
    """
    p = Program.from_tape(tape)
    counts = np.bincount(p.opcodes, minlength=LAST_OPCODE + 1)
    elems = np.bincount(p.opcodes, weights=p.sizes, minlength=LAST_OPCODE + 1).astype(np.int64)
    order = np.argsort(-elems, kind="stable")
    prog_bytes = int(packed(tape)[0].nbytes)
    const_bytes = int(tape.consts.nbytes)
    fwd = forward_program(tape)[0]
    own = fwd is kernel_arrays(tape)[0]
    derived = int(reverse_plan(tape).nbytes) + (0 if own else int(fwd.nbytes))
    return {
        "name": tape.name,
        "n_instructions": len(p.opcodes),
        "n_blocks": int(np.count_nonzero(p.sizes > 1)),
        "n_elements": int(p.sizes.sum()),
        "n_consts": p.n_consts,
        "n_inputs": p.n_inputs,
        "n_params": p.n_params,
        "n_outputs": len(p.outputs),
        "n_guards": len(p.guards),
        "n_slots": p.n_slots,
        "op_counts": {_op_name(int(c)): int(counts[c]) for c in order if counts[c]},
        "op_elements": {_op_name(int(c)): int(elems[c]) for c in order if counts[c]},
        "bytes": {"program": prog_bytes, "consts": const_bytes, "derived": derived,
                  "total": prog_bytes + const_bytes + derived},
        "workspace_bytes_per_point": 8 * p.n_slots,
        "peak_live": _peak_live(p),
        "compact_slots": _compact_slots(tape),
        "dead_instructions": int(len(p.opcodes) - np.count_nonzero(_any_in(_live(p), p))),
        "n_subprograms": len(p.subprograms),
        "body_instructions": _body_instructions(p),
    }


def format_stats(s: dict[str, Any]) -> str:
    """:func:`stats` as readable lines."""
    ops = ", ".join(
        f"{k} {v}" + (f" ({s['op_elements'][k]} elements)" if s["op_elements"][k] != v else "")
        for k, v in s["op_counts"].items()
    ) or "-"
    return "\n".join([
        f"instructions {s['n_instructions']} ({s['n_blocks']} blocks, {s['n_elements']} "
        f"elements), constants {s['n_consts']}, inputs {s['n_inputs']}, parameters "
        f"{s['n_params']}, outputs {s['n_outputs']}, guards {s['n_guards']}, slots "
        f"{s['n_slots']}",
        f"ops: {ops}",
        f"memory: program {s['bytes']['program']} B, constants {s['bytes']['consts']} B, "
        f"derived programs {s['bytes']['derived']} B; "
        f"workspace {s['workspace_bytes_per_point']} B per point",
        f"peak live values {s['peak_live']}; slots after compaction {s['compact_slots']}; "
        f"dead instructions {s['dead_instructions']}",
    ] + ([f"loop bodies {s['n_subprograms']} ({s['body_instructions']} instructions)"]
         if s["n_subprograms"] else []))


__all__ = ["BIT_COMMUTATIVE", "PASSES", "format_stats", "simplify", "stats"]
