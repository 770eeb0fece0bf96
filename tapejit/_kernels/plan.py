"""The reverse plan of a program (``reverse_plan``), and the sweeps' checked access to it.

A tape derives its plan once; the reverse sweeps (``reverse.py``) read it.
"""

from typing import TYPE_CHECKING

import numpy as np

from tapejit._kernels.constants import SRC_CONST, SRC_ZERO
from tapejit._kernels.njit import njit
from tapejit._program import (
    ARG_A,
    AT_CODE,
    AT_OUTPUTS,
    FIRST_ADJOINT,
    FIRST_FAMILY,
    MAX_ARITY,
    N_INPUTS,
    N_INSTR,
    N_OUTPUTS,
    N_SLOTS,
    PLAN_ASSIGN,
    PLAN_FORWARD,
    RESULT,
    ROW_INTS,
    SIZE,
    STRIDE_A,
)

if TYPE_CHECKING:
    from tapejit._kernels.generated import _PCONST, _PSRC

# --- kernel source ---

@njit(cache=True, nogil=True)
def reverse_plan(prog):
    # The reverse plan of a program, derived once per tape; int32, four sections:
    #
    # R[i], bit k: operand k of instruction i *assigns* its adjoints in the reverse
    # sweeps instead of adding to them, because it is their first write (sweeps run the
    # instructions backwards): every slot it writes is differentiable (>= nd), not yet
    # written by a later instruction or as an output's seed, written once in the block
    # (no broadcast), and written by no other operand of the instruction (the chunk and
    # the point sweeps order one instruction's writes differently).
    # R[i], bit 3 + k: operand k is *forwarded*: its partial is 1, it is the whole result
    # range of one instruction p, element for element, and nothing else reads those
    # adjoints (no other operand, no output). Their adjoints then equal instruction i's,
    # so the sweeps skip the copy and p reads i's adjoints instead of its own (an add of
    # two intermediates costs nothing in reverse).
    # R[ni] = nz, then nz ranges [lo, hi): the slots whose first write is not an
    # assignment (outputs, inputs no one reads, unread results, overlapping operands),
    # the only adjoints a reverse sweep must zero first. For most tapes that is a few
    # slots instead of all of them.
    # Then ni entries: the slot where instruction i's result adjoints are (its own first
    # result slot unless it feeds a forwarded operand).
    n = prog[N_SLOTS]
    nd = prog[FIRST_ADJOINT]
    nf = nd + prog[N_INPUTS]
    ni = prog[N_INSTR]
    # Per slot: 1 once written (2: first by an assignment, or never read); the
    # instruction and operand that last touched it.
    state = np.zeros(n, np.int64)
    stamp = np.empty(n, np.int64)
    for s in range(n):
        stamp[s] = -1
    owner = np.zeros(n, np.int64)
    # Per slot: adjoint readers (operands with a partial, outputs); the instruction whose
    # result range starts there.
    reads = np.zeros(n, np.int64)
    first = np.empty(n, np.int64)
    for s in range(n):
        first[s] = -1
    ok = np.zeros(MAX_ARITY, np.int64)
    fw = np.zeros(MAX_ARITY, np.int64)
    R = np.zeros(ni + 1, np.int64)
    G = np.empty(ni, np.int64)
    o = prog[AT_OUTPUTS]
    for k in range(prog[N_OUTPUTS]):
        state[prog[o + k]] = 1
        reads[prog[o + k]] += 1
    for i in range(ni):
        r = prog[AT_CODE] + prog[ROW_INTS] * i
        op = prog[r]
        m = prog[r + SIZE]
        G[i] = prog[r + RESULT]
        if m > 0:
            first[prog[r + RESULT]] = i
        if op >= FIRST_FAMILY:  # a family reads each operand block once
            for k in range(MAX_ARITY):
                for e in range(prog[r + STRIDE_A + k]):
                    reads[prog[r + ARG_A + k] + e] += 1
            continue
        for k in range(MAX_ARITY):
            if _PSRC[MAX_ARITY * op + k] != SRC_ZERO:
                for e in range(m):
                    reads[prog[r + ARG_A + k] + e * prog[r + STRIDE_A + k]] += 1
    for i in range(ni - 1, -1, -1):
        r = prog[AT_CODE] + prog[ROW_INTS] * i
        op = prog[r]
        m = prog[r + SIZE]
        if op >= FIRST_FAMILY:
            # Family rules add into their operands' adjoints: no plan bits, and the
            # first write to those slots is an addition (they are zeroed first).
            for k in range(MAX_ARITY):
                for e in range(prog[r + STRIDE_A + k]):
                    s = prog[r + ARG_A + k] + e
                    if s >= nd and state[s] == 0:
                        state[s] = 1
            R[i] = 0
            continue
        for k in range(MAX_ARITY):
            fw[k] = 0
            i0 = prog[r + ARG_A + k]
            # a constant partial of exactly 1
            if (_PSRC[MAX_ARITY * op + k] != SRC_CONST or _PCONST[MAX_ARITY * op + k] != 1.0
                    or i0 < nf or (m > 1 and prog[r + STRIDE_A + k] != 1) or first[i0] < 0):
                continue
            p = first[i0]
            if prog[prog[AT_CODE] + prog[ROW_INTS] * p + SIZE] != m:
                continue
            fw[k] = 1
            for e in range(m):
                if reads[i0 + e] != 1:
                    fw[k] = 0
            if fw[k] == 1:
                G[p] = G[i]  # decided before p is reached: G[i] is final
                for e in range(m):
                    state[i0 + e] = 2  # never read: not zeroed
        for k in range(MAX_ARITY):
            ok[k] = 0
            if _PSRC[MAX_ARITY * op + k] == SRC_ZERO or fw[k] == 1:
                continue
            i0 = prog[r + ARG_A + k]
            s0 = prog[r + STRIDE_A + k]
            ok[k] = 1 if m == 1 or s0 != 0 else 0
            for e in range(m):
                s = i0 + e * s0
                if s < nd or state[s] != 0:
                    ok[k] = 0
                if stamp[s] == i and owner[s] != k:
                    ok[k] = 0
                    ok[owner[s]] = 0
                stamp[s] = i
                owner[s] = k
        f = 0
        for k in range(MAX_ARITY):
            if _PSRC[MAX_ARITY * op + k] == SRC_ZERO:
                continue
            f |= fw[k] << (PLAN_FORWARD + k)
            if fw[k] == 1:
                continue
            f |= ok[k] << (PLAN_ASSIGN + k)
            i0 = prog[r + ARG_A + k]
            s0 = prog[r + STRIDE_A + k]
            for e in range(m):
                s = i0 + e * s0
                if s >= nd and state[s] == 0:
                    state[s] = 1 + ok[k]
        R[i] = f
    nz = 0
    for s in range(nd, n):
        if state[s] != 2 and (s == nd or state[s - 1] == 2):
            nz += 1
    Z = np.empty(2 * ni + 1 + 2 * nz, np.int32)
    for i in range(ni):  # a loop: slice assignment costs seconds of compile
        Z[i] = R[i]
    Z[ni] = nz
    z = ni + 1
    for s in range(nd, n):
        if state[s] != 2:
            if s == nd or state[s - 1] == 2:
                Z[z] = s
            if s == n - 1 or state[s + 1] == 2:
                Z[z + 1] = s + 1
                z += 2
    for i in range(ni):
        Z[z + i] = G[i]
    return Z


@njit(cache=True, nogil=True)
def _check_plan(prog, R):
    # A plan from another program could index outside A: the drivers check its size, and
    # the sweeps check each adjoint slot they read from it (_plan_slot).
    ni = prog[N_INSTR]
    if R.shape[0] <= ni or R.shape[0] != 2 * ni + 1 + 2 * R[ni]:
        raise ValueError("the reverse plan does not belong to this program")


@njit(cache=True, nogil=True)
def _plan_slots(prog, R):
    # Offset in the plan of its last section, the instructions' adjoint slots.
    return prog[N_INSTR] + 1 + 2 * R[prog[N_INSTR]]


@njit(cache=True, nogil=True)
def _plan_slot(prog, R, j, n):
    # Entry j of the plan (where an instruction's n result adjoints are), checked: the
    # plan is data.
    g = R[j]
    if g < prog[FIRST_ADJOINT] or g + n > prog[N_SLOTS]:
        raise ValueError("the reverse plan does not belong to this program")
    return g


@njit(cache=True, nogil=True)
def _zero_planned(prog, R, A):
    # The adjoints (rows of A, or entries for one point) the reverse plan does not
    # assign, clamped to the workspace.
    ni = prog[N_INSTR]
    for z in range(R[ni]):
        A[max(R[ni + 1 + 2 * z], prog[FIRST_ADJOINT]) : min(R[ni + 2 + 2 * z], prog[N_SLOTS])] = 0.0
