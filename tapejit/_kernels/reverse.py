"""The reverse sweeps after the forward-partials sweeps: no per-op code at all.

Each operand ``k`` of an instruction gains the result's adjoint times its local partial,
found where ``_PSRC[MAX_ARITY * op + k]`` says (``Op.partial_sources`` of the op table):
stored in ``D`` by the forward-partials sweep, a constant ``_PCONST``, or a value already
in the workspace ``W`` (an operand or the result) times the factor ``_PCONST``. ``R`` is
the tape's reverse plan (``reverse_plan`` in ``plan.py``): bit ``PLAN_ASSIGN + k`` of
``R[i]`` makes operand ``k`` of instruction ``i`` assign its adjoints instead of adding to
them, bit ``PLAN_FORWARD + k`` skips a forwarded operand, and instruction ``i`` reads its
result adjoints where the plan says (``_plan_slot``).

Every product is taken with ``_azmul`` (zero times anything is zero), except a constant
partial of +-1 (add, sub, neg), which is a plain add or subtract (``azmul(g, +-1)``
differs only in a zero's sign). A first write (``new``) assigns ``0.0 + x``: the zero's
sign that zeroing and adding gave. Each case is its own loop, so that it vectorizes.
"""

from typing import TYPE_CHECKING

from tapejit._kernels.constants import (
    EDGE_FROMS,
    EDGE_SOURCES,
    EDGE_TARGETS,
    SP_EDGES,
    SP_HEADER,
    SP_ROW,
    SP_ROWS,
    SRC_A,
    SRC_B,
    SRC_C,
    SRC_CONST,
    SRC_STORED,
    SRC_ZERO,
)
from tapejit._kernels.njit import njit
from tapejit._kernels.plan import _plan_slot, _plan_slots
from tapejit._kernels.scalar import _azmul
from tapejit._program import (
    ARG_A,
    ARG_B,
    ARG_C,
    AT_CODE,
    FIRST_ADJOINT,
    FIRST_FAMILY,
    MAX_ARITY,
    N_INPUTS,
    N_INSTR,
    OPCODE,
    PLAN_ASSIGN,
    PLAN_FORWARD,
    RESULT,
    ROW,
    SIZE,
    STRIDE_A,
    STRIDE_B,
    STRIDE_C,
)

if TYPE_CHECKING:
    from tapejit._kernels.generated import _PCNT, _PCONST, _PIDX, _PSRC, _family_reverse

# --- kernel source ---

@njit(cache=True, nogil=True, inline="always")
def _gain_times(ga, gr, d, n, new):
    # ga[e] gains gr[e] times the factor d, for e < n.
    if new:
        for e in range(n):
            ga[e] = 0.0 + _azmul(gr[e], d)
    else:
        for e in range(n):
            ga[e] += _azmul(gr[e], d)


@njit(cache=True, nogil=True, inline="always")
def _gain_constant(ga, gr, dc, n, new):
    # ga[e] gains gr[e] times the constant partial dc, for e < n.
    if dc == 1.0:
        if new:
            for e in range(n):
                ga[e] = 0.0 + gr[e]
        else:
            for e in range(n):
                ga[e] += gr[e]
    elif dc == -1.0:
        if new:
            for e in range(n):
                ga[e] = 0.0 + -gr[e]
        else:
            for e in range(n):
                ga[e] += -gr[e]
    else:
        _gain_times(ga, gr, dc, n, new)


@njit(cache=True, nogil=True, inline="always")
def _gain_scaled(ga, gr, dc, dk, n, new):
    # ga[e] gains gr[e] times dc * dk[e], for e < n.
    if new:
        for e in range(n):
            ga[e] = 0.0 + _azmul(gr[e], dc * dk[e])
    else:
        for e in range(n):
            ga[e] += _azmul(gr[e], dc * dk[e])


@njit(cache=True, nogil=True)
def _scale(g, dc):
    # A constant partial; +-1 (add, sub, neg) is a plain add, as in the batched sweep.
    if dc == 1.0:
        return g
    if dc == -1.0:
        return -g
    return _azmul(g, dc)


@njit(cache=True, nogil=True)
def _back_block(A, W, D, gr, i0, s0, n, nd, src, dc, base, j0, sj, new):
    # One operand of a block: A[i0 + e * s0] gains gr[e] times its partial, which is the
    # constant dc (SRC_CONST), or dc times D[base + e] (stored) or W[j0 + e * sj].
    # ``new`` (from the reverse plan): this is the adjoints' first write, they were not
    # zeroed, so it assigns.
    if s0 == 1 and i0 >= nd and (src == SRC_CONST or src == SRC_STORED or sj == 0 or sj == 1):
        ga = A[i0 : i0 + n]
        if src == SRC_CONST:
            _gain_constant(ga, gr, dc, n, new)
        elif src != SRC_STORED and sj == 0:
            _gain_times(ga, gr, dc * W[j0], n, new)
        else:
            dk = D[base : base + n] if src == SRC_STORED else W[j0 : j0 + n]
            _gain_scaled(ga, gr, dc, dk, n, new)
        return
    if (s0 == 1 and i0 + n <= nd) or (s0 == 0 and i0 < nd):
        return  # constants and parameters: no adjoints
    if s0 == 0 and i0 >= nd:  # a broadcast operand collects the sum over the block
        t = 0.0
        for e in range(n):
            if src == SRC_CONST:
                t += _scale(gr[e], dc)
            else:
                t += _azmul(gr[e], dc * (D[base + e] if src == SRC_STORED else W[j0 + e * sj]))
        A[i0] = (0.0 if new else A[i0]) + t
        return
    for e in range(n):
        j = i0 + e * s0
        if j >= nd:
            if src == SRC_CONST:
                v = _scale(gr[e], dc)
            else:
                v = _azmul(gr[e], dc * (D[base + e] if src == SRC_STORED
                                        else W[j0 + e * sj]))
            A[j] = (0.0 if new else A[j]) + v


@njit(cache=True, nogil=True)
def _row(prog, i):
    # Instruction i: opcode, first result slot, operand slots, size, operand strides.
    k = prog[AT_CODE] + ROW * i
    return (prog[k + OPCODE], prog[k + RESULT], prog[k + ARG_A], prog[k + ARG_B],
            prog[k + ARG_C], prog[k + SIZE], prog[k + STRIDE_A], prog[k + STRIDE_B],
            prog[k + STRIDE_C])


@njit(cache=True, nogil=True)
def _value_slot(src, a, b, c, r):
    # Of an operand's (a, b, c) or the result's (r) slot or stride: the one a partial
    # found in the workspace (src SRC_A .. SRC_R) reads.
    if src == SRC_A:
        return a
    if src == SRC_B:
        return b
    if src == SRC_C:
        return c
    return r


@njit(cache=True, nogil=True)
def reverse_stored_chunk(prog, R, consts, P, W, A, D, m):
    # After forward_partials_chunk: D[MAX_ARITY * (s - nf) + k] holds the stored partial
    # of result slot s with respect to its operand k.
    # The operand loop is written out here rather than in helpers inlined by Numba:
    # IR-inlined helpers taking arrays made both reverse sweeps slower (docs: performance).
    nd = prog[FIRST_ADJOINT]
    nf = prog[FIRST_ADJOINT] + prog[N_INPUTS]
    go = _plan_slots(prog, R)
    for i in range(prog[N_INSTR] - 1, -1, -1):
        op, ir, ia, ib, ic, n, sa, sb, sc = _row(prog, i)
        fl = R[i]
        g0 = _plan_slot(prog, R, go + i, n)
        if op >= FIRST_FAMILY:
            _family_reverse(prog, prog[AT_CODE] + ROW * i, consts, P, W, A, g0, m)
            continue
        for e in range(n):
            jr = ir + e
            gr = A[g0 + e]
            q = MAX_ARITY * (jr - nf)
            ja = ia + e * sa
            jb = ib + e * sb
            jc = ic + e * sc
            for k in range(MAX_ARITY):
                j = ja if k == 0 else (jb if k == 1 else jc)
                src = _PSRC[MAX_ARITY * op + k]
                if src == SRC_ZERO or j < nd or (fl >> (PLAN_FORWARD + k)) & 1:
                    continue
                ga = A[j]
                new = (fl >> (PLAN_ASSIGN + k)) & 1
                dc = _PCONST[MAX_ARITY * op + k]  # the constant, or a factor (2.0: square)
                if src == SRC_CONST and dc == 1.0:
                    if new:
                        for p in range(m):
                            ga[p] = 0.0 + gr[p]
                    else:
                        for p in range(m):
                            ga[p] += gr[p]
                elif src == SRC_CONST and dc == -1.0:
                    if new:
                        for p in range(m):
                            ga[p] = 0.0 + -gr[p]
                    else:
                        for p in range(m):
                            ga[p] += -gr[p]
                elif src == SRC_CONST:
                    if new:
                        for p in range(m):
                            ga[p] = 0.0 + _azmul(gr[p], dc)
                    else:
                        for p in range(m):
                            ga[p] += _azmul(gr[p], dc)
                else:
                    dk = D[q + k] if src == SRC_STORED else W[_value_slot(src, ja, jb, jc, jr)]
                    if new:
                        for p in range(m):
                            ga[p] = 0.0 + _azmul(gr[p], dc * dk[p])
                    else:
                        for p in range(m):
                            ga[p] += _azmul(gr[p], dc * dk[p])


@njit(cache=True, nogil=True)
def reverse_stored_point_sweep(prog, R, consts, P, W, A, D, q):
    # After forward_partials_point_sweep, which returned q: D is packed, an instruction's
    # stored partials take n floats each, in instruction order; this walks back from q.
    # Contiguous and broadcast operands of a block run in loops that vectorize
    # (_back_block).
    nd = prog[FIRST_ADJOINT]
    go = _plan_slots(prog, R)
    for i in range(prog[N_INSTR] - 1, -1, -1):
        op, ir, ia, ib, ic, n, sa, sb, sc = _row(prog, i)
        q -= _PCNT[op] * n
        fl = R[i]
        g0 = _plan_slot(prog, R, go + i, n)
        if op >= FIRST_FAMILY:
            _family_reverse(prog, prog[AT_CODE] + ROW * i, consts, P.reshape((1, P.size)),
                            W.reshape((W.size, 1)), A.reshape((A.size, 1)), g0, 1)
        elif n == 1:
            g = A[g0]
            if g == 0.0 and fl == 0:
                continue
            for k in range(MAX_ARITY):
                j = ia if k == 0 else (ib if k == 1 else ic)
                src = _PSRC[MAX_ARITY * op + k]
                if src != SRC_ZERO and j >= nd and not (fl >> (PLAN_FORWARD + k)) & 1:
                    if src == SRC_CONST:
                        d = _scale(g, _PCONST[MAX_ARITY * op + k])
                    else:
                        d = (D[q + _PIDX[MAX_ARITY * op + k]] if src == SRC_STORED
                             else W[_value_slot(src, ia, ib, ic, ir)])
                        d = _azmul(g, _PCONST[MAX_ARITY * op + k] * d)
                    A[j] = (0.0 if (fl >> (PLAN_ASSIGN + k)) & 1 else A[j]) + d
        else:
            gr = A[g0 : g0 + n]
            for k in range(MAX_ARITY):
                src = _PSRC[MAX_ARITY * op + k]
                if src != SRC_ZERO and not (fl >> (PLAN_FORWARD + k)) & 1:
                    j0 = _value_slot(src, ia, ib, ic, ir)
                    sj = _value_slot(src, sa, sb, sc, 1)
                    i0, s0 = (ia, sa) if k == 0 else ((ib, sb) if k == 1 else (ic, sc))
                    _back_block(A, W, D, gr, i0, s0, n, nd, src, _PCONST[MAX_ARITY * op + k],
                                q + _PIDX[MAX_ARITY * op + k] * n, j0, sj,
                                (fl >> (PLAN_ASSIGN + k)) & 1)


@njit(cache=True, nogil=True)
def reverse_edges(S, F, V, A):
    # After forward_scalar_sweep, over zeroed adjoints A but the outputs' seeds: the
    # reverse sweep of a scalar program as a list of edges, with nothing to decode or
    # dispatch. An edge is one operand of one instruction: the operand's adjoint gains
    # the result's times its partial, F[e] (the op table's constant or factor) times a
    # value, as reverse_stored_point_sweep adds it (in the same order; its assignments
    # and forwarded adjoints are additions to zero here: the same bits, since an adjoint
    # sum is never -0.0). A constant partial is _scale's, as there: +-1 a plain add or
    # subtract (negating a NaN adjoint flips its sign bit, multiplying it by -1.0 does
    # not). Columns, not rows, and the factors beside them: measured faster.
    ne = S[SP_EDGES]
    e0 = SP_HEADER + SP_ROW * S[SP_ROWS]
    targets = S[e0 + EDGE_TARGETS * ne : e0 + (EDGE_TARGETS + 1) * ne]
    froms = S[e0 + EDGE_FROMS * ne : e0 + (EDGE_FROMS + 1) * ne]
    sources = S[e0 + EDGE_SOURCES * ne : e0 + (EDGE_SOURCES + 1) * ne]
    one = V.shape[0] - 1
    for e in range(ne):
        s = sources[e]
        g = A[froms[e]]
        A[targets[e]] += _scale(g, F[e]) if s == one else _azmul(g, F[e] * V[s])
