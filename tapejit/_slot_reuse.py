"""Slot compaction: a forward program whose workspace follows the live values.

A tape gives every instruction element its own slot, so a sweep's workspace grows with
the tape's length. The reverse sweeps need that (they index values, partials and
adjoints by result slot), but a forward-only sweep reads each value only until its last
use. :func:`compact` derives from a packed program a second packed program with the same
instructions, in the same order, over renumbered result slots that are reused once the
values in them are dead. It runs only in the forward-only kernels (``forward_point``,
``forward_batch_*``) and the tangent kernels (``jvp_point``, ``jvp_batch_*``), which read
nothing but values and tangents of operands; every instruction computes exactly what
it computed before, from the same operand values, so results are bit for bit the same.

How slots are assigned:

* constants, parameters and inputs keep their slots (the drivers fill them by slot);
* a *unit* is a run of consecutive instructions whose results must keep their relative
  slots: one instruction, or several when a strided block operand reads across the
  results of more than one instruction (the operand keeps its stride, so the run moves
  as a whole). A family instruction reads each operand as one contiguous block
  ``ARG .. ARG + length - 1`` (and writes its ``SIZE`` results as one): a block across
  the results of several instructions joins them the same way. A run read together
  with constants, parameters or inputs stays where it is, directly after them, for the
  whole sweep;
* a unit is live from its first instruction to the last instruction reading any of its
  slots; outputs and guarded values live to the end; a unit no one reads is live only
  while it is written;
* units get slot ranges in instruction order from a free-range allocator (ranges binned
  by size class, split on allocation, merged with free neighbours on release, the top
  of the used space shrinking when its last range is freed). A unit is released only
  after its last reading instruction, so a result never shares a slot with an operand
  of the same instruction: results are written element by element while operands are
  read (a family routine writes its results while it reads its operand blocks), and no
  kernel would survive that aliasing.

The derived program has the packed format of ``_program.py`` with ``N_SLOTS`` lowered
(attributes and sub-programs unchanged: nested programs have workspaces of their own), but
it is not in SSA order, so ``_validate.check_tape_arrays`` does not apply to it;
:func:`check_compact` checks it against the original instead (same instructions,
inputs, parameters and header, every index a kernel can touch inside the workspace)
before a kernel ever sees it.
"""

from __future__ import annotations

import numba
import numpy as np

from ._program import (
    ARG_A,
    AT_ATTRS,
    AT_OUTPUTS,
    ATTR,
    FIRST_FAMILY,
    GUARD_OUTCOME,
    GUARD_SLOT,
    HEADER,
    LAST_OPCODE,
    MAX_ARITY,
    N_SLOTS,
    OPCODE,
    RESULT,
    SIZE,
    STRIDE_A,
    arities,
    code_of,
    first_result,
    guards_of,
    outputs_of,
)
from ._validate import TapeFormatError

#: Free ranges (of more than one slot) the allocator keeps track of at most.
_MAX_FREE = 256


def _arity_table() -> np.ndarray:
    """Operands of every opcode, the registered families' included."""
    return arities(np.arange(LAST_OPCODE + 1))


@numba.njit(cache=True, nogil=True, inline="always")
def _last_read(code: np.ndarray, i: int, k: int) -> int:
    """Last slot operand ``k`` of instruction ``i`` reads from its ``ARG`` on, in the
    direction of its stride: a family operand is the block ``ARG .. ARG + length - 1``
    (an empty one: ``ARG``, read by no one), an elementwise one its last element."""
    a = code[i, ARG_A + k]
    st = code[i, STRIDE_A + k]
    if code[i, OPCODE] >= FIRST_FAMILY:
        return a + st - 1 if st > 0 else a
    return a + (code[i, SIZE] - 1) * st


@numba.njit(cache=True, nogil=True)
def _allocate(first: np.ndarray, end: np.ndarray, size: np.ndarray,
              by_end: np.ndarray) -> tuple[np.ndarray, int]:
    """Start of each unit's range in the compact result space, and that space's size.

    Units come in instruction order (``first`` increasing); unit ``u`` is released
    before unit ``v`` is placed when ``end[u] < first[v]``; ``by_end`` orders the units
    by ``end``. Working memory is proportional to the number of units, not of slots:
    free single slots are a stack, free longer ranges a short list (best fit, merged with
    free neighbours; beyond ``_MAX_FREE`` ranges a released range is not reused).
    """
    nu = first.size
    start = np.empty(nu, dtype=np.int64)
    stack = np.empty(nu, dtype=np.int64)  # free single slots
    ns = 0
    fs = np.empty(_MAX_FREE, dtype=np.int64)  # free ranges: start, length
    fl = np.empty(_MAX_FREE, dtype=np.int64)
    nfree = 0
    top = 0
    high = 0
    j = 0
    for u in range(nu):
        # Release the units whose last reader came before this unit's first instruction.
        while j < nu and end[by_end[j]] < first[u]:
            v = by_end[j]
            j += 1
            s, k = start[v], size[v]
            if k == 1:
                if s == top - 1:
                    top = s
                else:
                    stack[ns] = s
                    ns += 1
                continue
            r = 0
            while r < nfree:  # merge with free neighbours
                if fs[r] + fl[r] == s or fs[r] == s + k:
                    s = min(s, fs[r])
                    k += fl[r]
                    nfree -= 1
                    fs[r], fl[r] = fs[nfree], fl[nfree]
                else:
                    r += 1
            if s + k == top:
                top = s
            elif nfree < _MAX_FREE:
                fs[nfree], fl[nfree] = s, k
                nfree += 1
        # Place this unit: a free single slot, else the smallest free range that fits,
        # else the top of the used space (extending a free range that ends there).
        k = size[u]
        if k == 1 and ns > 0:
            ns -= 1
            start[u] = stack[ns]
            continue
        best = -1
        for r in range(nfree):
            if fl[r] >= k and (best < 0 or fl[r] < fl[best]):
                best = r
        if best >= 0:
            start[u] = fs[best]
            fs[best] += k
            fl[best] -= k
            if fl[best] == 0:
                nfree -= 1
                fs[best], fl[best] = fs[nfree], fl[nfree]
            continue
        s = top
        for r in range(nfree):
            if fs[r] + fl[r] == top:
                s = fs[r]
                nfree -= 1
                fs[r], fl[r] = fs[nfree], fl[nfree]
                break
        start[u] = s
        top = s + k
        high = max(high, top)
    return start, high


def _decode(prog: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Header, code rows ``(n_instr, ROW)``, output slots and guard rows (views)."""
    return prog[:HEADER], code_of(prog), outputs_of(prog), guards_of(prog)


@numba.njit(cache=True, nogil=True)
def _owners(code: np.ndarray, nf: int) -> tuple[np.ndarray, np.ndarray]:
    """First result slot of each instruction, and the instruction of each result slot
    when there are few slots per instruction (else empty: found by bisection)."""
    n = code.shape[0]
    res = code[:, RESULT].astype(np.int64)
    n_el = res[n - 1] + code[n - 1, SIZE] - nf
    owner = np.empty(n_el if n_el <= 4 * n else 0, dtype=np.int32)
    if owner.size:
        for i in range(n):
            for e in range(code[i, SIZE]):
                owner[res[i] - nf + e] = i
    return res, owner


@numba.njit(cache=True, nogil=True, inline="always")
def _instr(res: np.ndarray, owner: np.ndarray, nf: int, slot: int) -> int:
    """Instruction whose results hold the result slot ``slot``."""
    if owner.size:
        return owner[slot - nf]
    return np.searchsorted(res, slot, side="right") - 1


@numba.njit(cache=True, nogil=True)
def _plan(code: np.ndarray, nf: int, arity: np.ndarray, keep: np.ndarray) -> tuple:
    """Units and their lifetimes (see the module docstring).

    Returns the unit of each instruction, and per unit its first instruction, the
    instruction after which it is dead (``n``: never), its first slot and its size.
    """
    n = code.shape[0]
    res, owner = _owners(code, nf)
    joins = np.zeros(n + 1, dtype=np.int64)
    pin = -1
    for i in range(n):
        for k in range(arity[code[i, OPCODE]]):
            a = code[i, ARG_A + k]
            z = _last_read(code, i, k)
            lo, hi = min(a, z), max(a, z)
            if hi < nf or lo == hi:
                continue
            q = _instr(res, owner, nf, hi)
            if lo < nf:  # read together with fixed slots: stays after them
                pin = max(pin, q)
            else:
                p = _instr(res, owner, nf, lo)
                joins[p] += 1
                joins[q] -= 1
    if pin >= 0:
        joins[0] += 1
        joins[pin] -= 1
    unit = np.empty(n, dtype=np.int64)
    u = -1
    run = 0
    joined = False
    for i in range(n):
        if not joined:
            u += 1
        unit[i] = u
        run += joins[i]
        joined = run > 0
    nu = u + 1
    first = np.empty(nu, dtype=np.int64)
    end = np.empty(nu, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        first[unit[i]] = i
    for u in range(nu):
        end[u] = first[u + 1] - 1 if u + 1 < nu else n - 1
    slot = res[first]
    size = np.empty(nu, dtype=np.int64)
    for u in range(nu):
        size[u] = res[end[u]] + code[end[u], SIZE] - slot[u]
    for i in range(n):
        for k in range(arity[code[i, OPCODE]]):
            a = code[i, ARG_A + k]
            if a >= nf:
                u = unit[_instr(res, owner, nf, a)]
                end[u] = max(end[u], i)
    for s in keep:
        if s >= nf:
            end[unit[_instr(res, owner, nf, s)]] = n
    if pin >= 0:
        end[0] = n
    return unit, first, end, slot, size


@numba.njit(cache=True, nogil=True)
def _remap(code: np.ndarray, new: np.ndarray, nf: int, arity: np.ndarray,
           shift: np.ndarray, slots: np.ndarray) -> None:
    """Move result rows and operands of ``code`` into ``new``, and ``slots`` in place,
    every result slot by the shift of the instruction writing it."""
    res, owner = _owners(code, nf)
    for i in range(code.shape[0]):
        new[i, RESULT] = code[i, RESULT] + shift[i]
        for k in range(arity[code[i, OPCODE]]):
            a = code[i, ARG_A + k]
            if a >= nf:
                new[i, ARG_A + k] = a + shift[_instr(res, owner, nf, a)]
    for j in range(slots.size):
        if slots[j] >= nf:
            slots[j] += shift[_instr(res, owner, nf, slots[j])]


def compact(prog: np.ndarray) -> np.ndarray:
    """The forward program of a validated packed program, with its result slots reused.

    Parameters
    ----------
    prog : ndarray
        A packed int32 program (see ``_program.py``) that passed ``Program.unpack`` or
        was packed from a checked program.

    Returns
    -------
    ndarray
        A new packed int32 program with the same instructions in the same order and
        ``prog[N_SLOTS]`` at most the original's, checked by
        :func:`check_compact`. For forward and tangent sweeps only.
    """
    _, code, outs, guards = _decode(prog)
    nf = first_result(prog)
    out = np.array(prog, dtype=np.int32)
    if len(code) == 0:
        return out
    arity = _arity_table()
    keep = np.concatenate([outs, guards[:, GUARD_SLOT]]).astype(np.int64)
    unit, first, end, slot, size = _plan(code, nf, arity, keep)
    start, high = _allocate(first, end, size, np.argsort(end, kind="stable"))
    shift = (start + nf - slot)[unit]
    _, new, new_outs, new_guards = _decode(out)
    slots = keep.copy()
    _remap(code, new, nf, arity, shift, slots)
    new_outs[:] = slots[: len(outs)]
    new_guards[:, GUARD_SLOT] = slots[len(outs) :]
    out[N_SLOTS] = nf + high
    check_compact(prog, out)
    return out


@numba.njit(cache=True, nogil=True)
def _outside(code: np.ndarray, nf: int, n_slots: int, arity: np.ndarray) -> int:
    """First instruction that writes outside ``nf..n_slots - 1`` or reads outside
    ``0..n_slots - 1`` (``-1``: none)."""
    for i in range(code.shape[0]):
        m = code[i, SIZE] - 1
        r = code[i, RESULT]
        if r < nf or r + m >= n_slots:
            return i
        for k in range(MAX_ARITY):
            a = code[i, ARG_A + k]
            if k >= arity[code[i, OPCODE]]:
                if a != 0:
                    return i
                continue
            z = _last_read(code, i, k)
            if min(a, z) < 0 or max(a, z) >= n_slots:
                return i
    return -1


def check_compact(prog: np.ndarray, comp: np.ndarray) -> None:
    """Check that ``comp`` is the validated program ``prog`` with only slots renumbered,
    and that every slot a kernel can read or write is inside its ``comp[N_SLOTS]`` slots.

    It does not check that the renumbering keeps the values (the tests do, by
    simulating the sweep); it is what keeps a bug there from becoming a memory error.

    Raises
    ------
    TapeFormatError
        On any difference a kernel could not run safely.
    """
    if comp.dtype != np.int32 or comp.shape != prog.shape or comp.ndim != 1:
        raise TapeFormatError("a compact program has the layout of its original")
    h, code, _, guards = _decode(prog)
    hc, new, outs, new_guards = _decode(comp)
    n_slots, nf = int(hc[N_SLOTS]), first_result(prog)
    others = np.arange(HEADER) != N_SLOTS  # every header field but the slot count
    if (
        not np.array_equal(h[others], hc[others])
        or not nf <= n_slots <= h[N_SLOTS]
        or not np.array_equal(prog[HEADER : h[AT_OUTPUTS]], comp[HEADER : h[AT_OUTPUTS]])
        or not np.array_equal(code[:, OPCODE], new[:, OPCODE])
        or not np.array_equal(code[:, SIZE], new[:, SIZE])
        or not np.array_equal(code[:, STRIDE_A : STRIDE_A + MAX_ARITY],
                              new[:, STRIDE_A : STRIDE_A + MAX_ARITY])
        or not np.array_equal(code[:, ATTR], new[:, ATTR])
        or not np.array_equal(guards[:, GUARD_OUTCOME], new_guards[:, GUARD_OUTCOME])
        or not np.array_equal(prog[h[AT_ATTRS] :], comp[h[AT_ATTRS] :])
    ):
        raise TapeFormatError("a compact program must keep its original's instructions")
    i = _outside(new, nf, n_slots, _arity_table())
    if i >= 0:
        raise TapeFormatError(f"compact program: instruction {i} reaches outside its "
                              f"{n_slots} slots")
    for s in (outs, new_guards[:, GUARD_SLOT]):
        if s.size and (s.min() < 0 or s.max() >= n_slots):
            raise TapeFormatError("a compact program's outputs or guards are out of range")


__all__ = ["check_compact", "compact"]
