"""Kernel routines of the ``loop`` family: a body sub-program run ``length`` times
(``tapejit.scan`` and ``tapejit.fori_loop``, recorded by ``tapejit/_loop.py``).

Attributes, in order: ``(body, length, n_carry, n_x, n_closure, n_y, every)``. Operands:
``a`` the initial carry (``n_carry``), ``b`` the per-step inputs ``xs`` stacked step by
step (``length * n_x``), ``c`` the closure: the enclosing program's values the body reads
(``n_closure``). The body program has the inputs ``[carry | x | closure]``, no
parameters, and the outputs ``[next carry | y]`` (validated with the tape:
``_fam_loop.body_check``). The result is::

    status (1) | checkpoints (n_ck * n_carry) | final carry (n_carry) | ys (length * n_y)

``status`` is 0.0, or NaN at a point where a guard of the body failed at some step; the
whole result of such a point is then NaN, and the recorder guards ``status``. The
checkpoints are the carries after steps ``every, 2 every, ...`` below ``length``:
``n_ck = (length - 1) // every``. The reverse and second-order routines rebuild one
segment of ``every`` steps at a time from its checkpoint (values, and tangents from the
result's tangents), then run the body's reverse sweep step by step backwards: their memory
is ``every`` carries per point besides the body's own workspace, and each step's forward
values are computed twice in all (three times with ``every > 1``). At one point the
reverse of a body with a scalar program, and the second-order routine of any body, keep
instead the body's workspace (and tangents) of every step of a segment (``every`` of
them, up to ``LOOP_KEPT_VALUES`` floats), so their steps run forward twice in all; the
reverse once in all for a one-point gradient (``value_grad_point``), whose
workspace has room past the program's slots where the forward keeps every step's
workspace for the reverse (``_loop_kept``; the tape sizes that room, up to
``LOOP_KEPT_VALUES`` floats for all its loops: ``_fam_loop.kept_floats``).

Every routine runs the body with the chunk sweeps over the ``m`` points of the call. Values
and gradients at one point take the body's scalar program when it has one (a body of
scalar instructions; ``_loop_forward_one``, ``_loop_reverse_one``), else the point sweeps,
as tangents and second order at one point do; a body's own families and loops dispatch
as in any program.
"""

from typing import TYPE_CHECKING

import numpy as np

from tapejit._kernels.constants import (
    EDGE_COLUMNS,
    EDGE_FROMS,
    EDGE_SOURCES,
    EDGE_TARGETS,
    LOOP_BODY,
    LOOP_CARRY,
    LOOP_CLOSURE,
    LOOP_EVERY,
    LOOP_LENGTH,
    LOOP_X,
    LOOP_Y,
    N_SECOND,
    SP_EDGES,
    SP_HEADER,
    SP_ROW,
    SP_ROWS,
    SP_STORED,
    SRC_A,
    SRC_CONST,
    SRC_R,
    SRC_STORED,
    SRC_ZERO,
)
from tapejit._kernels.njit import njit
from tapejit._kernels.plan import _zero_planned, reverse_plan
from tapejit._kernels.reverse import (
    reverse_edges,
    reverse_stored_chunk,
    reverse_stored_point_sweep,
)
from tapejit._kernels.support import _fill_fixed, _zero_low_tangents
from tapejit._program import (
    ARG_A,
    AT_ATTRS,
    AT_CODE,
    AT_GUARDS,
    AT_INPUTS,
    AT_OUTPUTS,
    AT_SUBPROGRAMS,
    ATTR,
    FIRST_ADJOINT,
    FIRST_FAMILY,
    GUARD,
    GUARD_OUTCOME,
    GUARD_SLOT,
    MAX_ARITY,
    N_CONSTS,
    N_GUARDS,
    N_INPUTS,
    N_INSTR,
    N_OUTPUTS,
    N_SLOTS,
    N_SUBPROGRAMS,
    OPCODE,
    ROW,
    SIZE,
    SUB_AT,
    SUB_CONSTS,
    SUB_LEN,
    SUBPROGRAM,
)

if TYPE_CHECKING:
    from tapejit._kernels.generated import (
        _PCNT,
        _PCONST,
        _PIDX,
        _PSRC,
        forward_chunk,
        forward_partials_chunk,
        forward_partials_point_sweep,
        forward_point_sweep,
        forward_scalar_sweep,
        forward_tangent_chunk,
        forward_tangent_point_sweep,
        reverse_hvp_chunk,
        reverse_hvp_point_sweep,
    )

# --- kernel source ---

#: Floats of a loop body's workspaces the reverse at one point keeps for one segment of
#: steps (``_loop_reverse_one``), and the most the one-point value-and-gradient driver
#: keeps of every step of a tape's loops (``_loop_kept``; ``_fam_loop.kept_floats``):
#: 32 MB.
LOOP_KEPT_VALUES = 1 << 22

@njit(cache=True, nogil=True)
def _loop_body_at(prog, at):
    # The body program of the loop with attributes at, and where its constants start.
    e = prog[AT_SUBPROGRAMS] + SUBPROGRAM * at[LOOP_BODY]
    s0 = prog[e + SUB_AT]
    return prog[s0 : s0 + prog[e + SUB_LEN]], prog[e + SUB_CONSTS]


@njit(cache=True, nogil=True)
def _loop_body(prog, consts, at):
    # The body program and its constants.
    bp, c0 = _loop_body_at(prog, at)
    return bp, consts[c0 : c0 + bp[N_CONSTS]]


@njit(cache=True, nogil=True)
def _loop_is_scalar(bp):
    # Whether body bp has a scalar program: instructions, every one elementwise of size
    # 1, and no sub-programs (_scalar_program.is_scalar).
    if bp[N_INSTR] == 0 or bp[N_SUBPROGRAMS] > 0:
        return False
    for i in range(bp[N_INSTR]):
        k = bp[AT_CODE] + ROW * i
        if bp[k + SIZE] != 1 or bp[k + OPCODE] >= FIRST_FAMILY:
            return False
    return True


#: The last float of a loop's kept steps once its forward has written them all
#: (_loop_forward_one); the reverse that takes them sets it back to 0.0.
_KEPT_READY = 1.0


@njit(cache=True, nogil=True)
def _loop_kept_floats(prog, k):
    # Floats that keeping every step's workspace of the loop at row k takes at most
    # (each step: the body's slots, a bound on its stored partials, the 1.0; then the
    # float that says they are there), or 0 for a body without a scalar program
    # (_loop_is_scalar) or more than LOOP_KEPT_VALUES (_fam_loop.kept_floats computes
    # the same).
    at = prog[prog[AT_ATTRS] + prog[k + ATTR] :]
    bp, _ = _loop_body_at(prog, at)
    if not _loop_is_scalar(bp):
        return np.int64(0)
    step = np.int64(bp[N_SLOTS]) + MAX_ARITY * np.int64(bp[N_INSTR]) + 1
    size = np.int64(at[LOOP_LENGTH]) * step + 1
    return size if size <= LOOP_KEPT_VALUES else np.int64(0)


@njit(cache=True, nogil=True)
def _loop_kept(prog, k, WO):
    # Where the loop at row k keeps every step's workspace from its forward to its
    # reverse at one point: its region of the rows of the enclosing workspace WO past the
    # program's slots, which only value_grad_point offers (point.py: every other driver's
    # workspace ends at the program's slots, and a chunk's has one row per slot). The
    # program's loops, in order, each take kept_floats (_loop_kept_floats) while the
    # total stays within LOOP_KEPT_VALUES; empty when this one has none, or no room.
    n = np.int64(prog[N_SLOTS])
    none = np.empty(0)
    if WO.shape[1] != 1 or WO.shape[0] <= n:
        return none
    room = min(np.int64(WO.shape[0]) - n, np.int64(LOOP_KEPT_VALUES))
    code = prog[k + OPCODE]
    off = np.int64(0)
    for i in range((k - prog[AT_CODE]) // ROW + 1):
        q = prog[AT_CODE] + ROW * i
        if prog[q + OPCODE] != code:
            continue
        size = _loop_kept_floats(prog, q)
        fits = size > 0 and off + size <= LOOP_KEPT_VALUES
        if q == k:
            if not fits or off + size > room:
                return none
            return WO.reshape(WO.shape[0])[n + off : n + off + size]
        if fits:
            off += size
    return none


@njit(cache=True, nogil=True)
def _loop_sizes(at):
    # (length, n_carry, n_x, n_closure, n_y, every, n_ck, first ys row)
    n, nc, nx, nk, ny, every = (np.int64(at[LOOP_LENGTH]), np.int64(at[LOOP_CARRY]),
                                np.int64(at[LOOP_X]), np.int64(at[LOOP_CLOSURE]),
                                np.int64(at[LOOP_Y]), np.int64(at[LOOP_EVERY]))
    nck = (n - 1) // every if n > 0 else np.int64(0)
    return n, nc, nx, nk, ny, every, nck, 1 + (nck + 1) * nc


@njit(cache=True, nogil=True)
def _loop_row(w, x, j, m):
    # Row j of operand block x (one column: the same at every point) into w[:m].
    if x.shape[1] == 1:
        v = x[j, 0]
        for p in range(m):
            w[p] = v
    else:
        src = x[j]
        for p in range(m):
            w[p] = src[p]


@njit(cache=True, nogil=True)
def _loop_rows_in(bp, W, first, x, x0, k, m):
    # Rows x0 .. x0 + k - 1 of block x into the body inputs first .. first + k - 1.
    o = bp[AT_INPUTS] + first
    for j in range(k):
        _loop_row(W[bp[o + j]], x, x0 + j, m)


# Rows go through 1-D views (as in support.py): indexing rows element by element
# (X[i, p]) measured slower at one point (docs: performance).
@njit(cache=True, nogil=True)
def _loop_copy(dst, src, m):
    for p in range(m):
        dst[p] = src[p]


@njit(cache=True, nogil=True)
def _loop_add(dst, src, m):
    for p in range(m):
        dst[p] += src[p]


@njit(cache=True, nogil=True)
def _loop_guards(bp, W, ok, m):
    # ok[p] stays 1 while every guard of the body holds at point p.
    o = bp[AT_GUARDS]
    for q in range(bp[N_GUARDS]):
        w = W[bp[o + GUARD * q + GUARD_SLOT]]
        want = bp[o + GUARD * q + GUARD_OUTCOME] != 0
        for p in range(m):
            ok[p] &= (w[p] != 0.0) == want


@njit(cache=True, nogil=True)
def _loop_carry_out(bp, W, C, nc, m):
    # The body's next carry (its first nc outputs) into C (nc, >= m).
    o = bp[AT_OUTPUTS]
    for j in range(nc):
        _loop_copy(C[j], W[bp[o + j]], m)


@njit(cache=True, nogil=True)
def _loop_carry_in(bp, W, C, nc, m):
    o = bp[AT_INPUTS]
    for j in range(nc):
        _loop_copy(W[bp[o + j]], C[j], m)


@njit(cache=True, nogil=True)
def _loop_outputs(bp, W, r, first, k, o0, m):
    # Body outputs o0 .. o0 + k - 1 into result rows first .. first + k - 1.
    o = bp[AT_OUTPUTS] + o0
    for j in range(k):
        _loop_copy(r[first + j], W[bp[o + j]], m)


@njit(cache=True, nogil=True)
def _loop_status(r, ok, m):
    # Status 0.0; a point where a guard failed gets NaN in its whole result.
    for p in range(m):
        r[0, p] = 0.0
        if not ok[p]:
            for i in range(r.shape[0]):
                r[i, p] = np.nan


@njit(cache=True, nogil=True)
def _loop_workspace(bp, bc, m):
    # Values of the body over m points, constants filled in; no parameters.
    P = np.empty((1, 0))
    W = np.empty((bp[N_SLOTS], m))
    _fill_fixed(bp, bc, P, W)
    return P, W


@njit(cache=True, nogil=True)
def _loop_scalar(bp):
    # The scalar program of a body of scalar instructions (rows and reverse edges, and the
    # edges' factors), as _scalar_program.scalar_program derives it for a tape (the same
    # arrays: tests/test_loop.py), here from the op table's partial-source tables; empty
    # for any other body.
    n = bp[N_INSTR]
    if not _loop_is_scalar(bp):
        return np.empty(0, np.int32), np.empty(0)
    nd = bp[FIRST_ADJOINT]
    nf = nd + bp[N_INPUTS]
    ns = np.int64(bp[N_SLOTS])
    q = np.empty(n, np.int64)  # each instruction's first stored partial
    stored = np.int64(0)
    for i in range(n):
        q[i] = ns + stored
        stored += _PCNT[bp[bp[AT_CODE] + ROW * i + OPCODE]]
    one = ns + stored
    # The edges, instructions backwards and each one's operands in order.
    tg = np.empty(MAX_ARITY * n, np.int64)
    fr = np.empty(MAX_ARITY * n, np.int64)
    so = np.empty(MAX_ARITY * n, np.int64)
    fa = np.empty(MAX_ARITY * n)
    ne = 0
    for i in range(n - 1, -1, -1):
        k = bp[AT_CODE] + ROW * i
        op = bp[k + OPCODE]
        for j in range(MAX_ARITY):
            key = MAX_ARITY * op + j
            src = _PSRC[key]
            arg = bp[k + ARG_A + j]
            if src == SRC_ZERO or arg < nd:
                continue
            tg[ne] = arg
            fr[ne] = nf + i
            fa[ne] = _PCONST[key]
            if src == SRC_STORED:
                so[ne] = q[i] + _PIDX[key]
            elif src == SRC_CONST:
                so[ne] = one
            elif src == SRC_R:
                so[ne] = nf + i
            else:
                so[ne] = bp[k + ARG_A + src - SRC_A]
            ne += 1
    # Edges that only copy an adjoint (partial +1 into a result that one edge reads and
    # no output is) are dropped; the edges of that result read the adjoint copied.
    readers = np.zeros(ns, np.int64)
    for e in range(ne):
        readers[tg[e]] += 1
    output = np.zeros(ns, np.bool_)
    for j in range(bp[N_OUTPUTS]):
        output[bp[bp[AT_OUTPUTS] + j]] = True
    alias = np.arange(ns)
    copy = np.zeros(ne, np.bool_)
    for e in range(ne):
        t = tg[e]
        if so[e] == one and fa[e] == 1.0 and t >= nf and readers[t] == 1 and not output[t]:
            copy[e] = True
            alias[t] = fr[e]
    changed = True
    while changed:  # chains of copies: each adjoint is read where the last one is
        changed = False
        for s in range(ns):
            if alias[alias[s]] != alias[s]:
                alias[s] = alias[alias[s]]
                changed = True
    kept = ne - np.sum(copy)
    S = np.zeros(SP_HEADER + SP_ROW * n + EDGE_COLUMNS * kept, np.int32)
    S[SP_ROWS], S[SP_EDGES], S[SP_STORED] = n, kept, stored
    for i in range(n):
        k = bp[AT_CODE] + ROW * i
        r = SP_HEADER + SP_ROW * i
        S[r] = bp[k + OPCODE]
        for j in range(MAX_ARITY):
            S[r + 1 + j] = bp[k + ARG_A + j]
    F = np.empty(kept)
    c0 = SP_HEADER + SP_ROW * n
    x = 0
    for e in range(ne):
        if not copy[e]:
            S[c0 + EDGE_TARGETS * kept + x] = tg[e]
            S[c0 + EDGE_FROMS * kept + x] = alias[fr[e]]
            S[c0 + EDGE_SOURCES * kept + x] = so[e]
            F[x] = fa[e]
            x += 1
    return S, F


# At one point the body runs its scalar program when it has one (a body of scalar
# instructions: _loop_forward_one, _loop_reverse_one), else the point sweeps (on flat
# views of the one-column workspaces): the chunk sweeps' loops over points cost more than
# the work there.
@njit(cache=True, nogil=True)
def _loop_one_space(bp, bc, S):
    # The flat workspace of a scalar program: the body's slots (constants filled in), its
    # stored partials, a 1.0.
    V = np.empty((bp[N_SLOTS] + S[SP_STORED] + 1, 1))
    _fill_fixed(bp, bc, np.empty((1, 0)), V[: bp[N_SLOTS]])
    V[V.shape[0] - 1, 0] = 1.0
    return V.reshape(V.size)


@njit(cache=True, nogil=True)
def _loop_one_step(bp, S, V, C, b, t, nc, nx):
    # One step at one point: carry C and the step's inputs into the body, its values.
    ii = bp[AT_INPUTS]
    for j in range(nc):
        V[bp[ii + j]] = C[j]
    for j in range(nx):
        V[bp[ii + nc + j]] = b[t * nx + j, 0]
    forward_scalar_sweep(S, V, bp[FIRST_ADJOINT] + bp[N_INPUTS], bp[N_SLOTS])


@njit(cache=True, nogil=True)
def _loop_one_carry(bp, V, C, nc):
    # The body's next carry (its first nc outputs) into C.
    oo = bp[AT_OUTPUTS]
    for j in range(nc):
        C[j] = V[bp[oo + j]]


@njit(cache=True, nogil=True)
def _loop_forward_one(bp, bc, S, K, a, b, c, r, n, nc, nx, nk, ny, every, nck, y0):
    # loop_forward at one point through the body's scalar program, every row of the
    # body's workspace a slot of a flat V (row views cost more than this work): the same
    # operations, so the same bits. Whether every guard held. With K (_loop_kept), step
    # t runs on a workspace of its own, K[t * vs : (t + 1) * vs], kept for
    # _loop_reverse_one, and K's last float then says they are all there (_KEPT_READY);
    # else every step on one. The steps are written out here: calls per step cost more
    # than their work.
    V0 = _loop_one_space(bp, bc, S)
    vs = V0.size
    keep = K.size > 0
    ii = bp[AT_INPUTS]
    oo = bp[AT_OUTPUTS]
    nd = bp[FIRST_ADJOINT]  # the body's constants; no parameters
    nf = nd + bp[N_INPUTS]
    kk = ii + nc + nx  # the closure's input slots
    guards = bp[N_GUARDS] > 0
    C = np.empty(nc)
    for j in range(nc):
        C[j] = a[j, 0]
    for j in range(nk):
        V0[bp[kk + j]] = c[j, 0]  # the body never writes its inputs
    ok = np.ones(1, np.bool_)
    if keep:
        K[K.size - 1] = 0.0
    step = 0  # t + 1 modulo every
    for t in range(n):
        V = K[t * vs : (t + 1) * vs] if keep else V0
        if keep:
            for s in range(nd):
                V[s] = V0[s]
            for j in range(nk):
                V[bp[kk + j]] = V0[bp[kk + j]]
            V[vs - 1] = 1.0
        for j in range(nc):
            V[bp[ii + j]] = C[j]
        for j in range(nx):
            V[bp[ii + nc + j]] = b[t * nx + j, 0]
        forward_scalar_sweep(S, V, nf, bp[N_SLOTS])
        if guards:
            _loop_guards(bp, V.reshape((vs, 1)), ok, 1)
        for j in range(ny):
            r[y0 + t * ny + j, 0] = V[bp[oo + nc + j]]
        for j in range(nc):
            C[j] = V[bp[oo + j]]
        step += 1
        if step == every:
            step = 0
            if t + 1 < n:
                for j in range(nc):
                    r[1 + ((t + 1) // every - 1) * nc + j, 0] = C[j]
    for j in range(nc):
        r[1 + nck * nc + j, 0] = C[j]
    if keep:
        K[K.size - 1] = _KEPT_READY
    return ok[0]


@njit(cache=True, nogil=True)
def _loop_reverse_one(bp, bc, S, F, K, a, b, c, r, gr, ga, gb, gc, da, db, dc, n, nc, nx, nk,
                      ny, every, nck, y0):
    # loop_reverse at one point through the body's scalar program and its reverse edges
    # (as value_grad_scalar), on flat workspaces V and adjoints A: the same operations,
    # so the same bits. Where _loop_forward_one kept every step in K, the reverse runs
    # over those: no step runs forward again (and K's last float is cleared: a second
    # reverse with no forward before it would rebuild its segments). Else each segment's
    # steps run forward once, each on a workspace of its own, and back over those (when
    # they fit in LOOP_KEPT_VALUES), else forward twice: for the carries, then each step
    # again before its reverse.
    V = _loop_one_space(bp, bc, S)
    vs = V.size
    A = np.empty(bp[N_SLOTS])
    ii = bp[AT_INPUTS]
    oo = bp[AT_OUTPUTS]
    built = K.size > 0 and K[K.size - 1] == _KEPT_READY
    length = max(n, 1) if built else every  # of a segment; all the steps when kept
    seg = np.empty((min(length, max(n, 1)), nc))
    gcar = np.empty(nc)
    gclo = np.zeros(nk)
    for j in range(nc):
        gcar[j] = gr[1 + nck * nc + j, 0]
    for j in range(nk):
        V[bp[ii + nc + nx + j]] = c[j, 0]
    span = seg.shape[0]
    keep = built or (span > 1 and span * vs <= LOOP_KEPT_VALUES)
    if built:
        K[K.size - 1] = 0.0
        VS = K[: n * vs].reshape((n, vs))
    else:
        VS = np.empty((span if keep else 0, vs))
        for k in range(VS.shape[0]):
            VS[k] = V  # the fixed values: constants, the closure, the 1.0
    step = (n - 1) % every  # t modulo every, counted down
    for s in range((n + length - 1) // length - 1, -1, -1):
        t0 = s * length
        t1 = min(t0 + length, n)
        if not built:
            for j in range(nc):  # the segment's carries, from its checkpoint (or a)
                seg[0, j] = a[j, 0] if s == 0 else r[1 + (s - 1) * nc + j, 0]
            for t in range(t0, t1 if keep else t1 - 1):
                Vt = VS[t - t0] if keep else V
                _loop_one_step(bp, S, Vt, seg[t - t0], b, t, nc, nx)
                if t < t1 - 1:
                    _loop_one_carry(bp, Vt, seg[t - t0 + 1], nc)
        for t in range(t1 - 1, t0 - 1, -1):
            if keep:
                Vt = VS[t - t0]
            else:
                Vt = V
                _loop_one_step(bp, S, V, seg[t - t0], b, t, nc, nx)
            A[:] = 0.0
            for j in range(nc):
                A[bp[oo + j]] += gcar[j]
            for j in range(ny):
                A[bp[oo + nc + j]] += gr[y0 + t * ny + j, 0]
            reverse_edges(S, F, Vt, A)
            for j in range(nc):
                gcar[j] = A[bp[ii + j]]
            if db:
                for j in range(nx):
                    gb[t * nx + j, 0] += A[bp[ii + nc + j]]
            if dc:
                for j in range(nk):
                    gclo[j] += A[bp[ii + nc + nx + j]]
            if step == 0:
                step = every
                if t > 0:  # the checkpoint of this carry is a result too
                    for j in range(nc):
                        gcar[j] += gr[1 + (t // every - 1) * nc + j, 0]
            step -= 1
    if da:
        for j in range(nc):
            ga[j, 0] += gcar[j]
    if dc:
        for j in range(nk):
            gc[j, 0] += gclo[j]


@njit(cache=True, nogil=True)
def _loop_values(bp, bc, P, W, m):
    if m == 1:
        forward_point_sweep(bp, bc, P[0], W.reshape(W.shape[0]))
    else:
        forward_chunk(bp, bc, P, W, m)


@njit(cache=True, nogil=True)
def _loop_partials(bp, bc, P, W, D, m):
    # Values and stored partials; the end offset in D of the point sweep's (else 0).
    if m == 1:
        return forward_partials_point_sweep(bp, bc, P[0], W.reshape(W.shape[0]),
                                            D.reshape(D.shape[0]))
    forward_partials_chunk(bp, bc, P, W, D, m)
    return 0


@njit(cache=True, nogil=True)
def _loop_adjoints(bp, R, bc, P, W, A, D, q, m):
    if m == 1:
        reverse_stored_point_sweep(bp, R, bc, P[0], W.reshape(W.shape[0]),
                                   A.reshape(A.shape[0]), D.reshape(D.shape[0]), q)
    else:
        reverse_stored_chunk(bp, R, bc, P, W, A, D, m)


@njit(cache=True, nogil=True)
def loop_forward(prog, consts, at, row, WO, a, b, c, r, m):
    # row: the instruction's row in prog; WO: the enclosing workspace (_loop_kept)
    bp, bc = _loop_body(prog, consts, at)
    n, nc, nx, nk, ny, every, nck, y0 = _loop_sizes(at)
    ok = np.ones(m, np.bool_)
    S, _ = _loop_scalar(bp) if m == 1 else (np.empty(0, np.int32), np.empty(0))
    if S.size:
        ok[0] = _loop_forward_one(bp, bc, S, _loop_kept(prog, row, WO), a, b, c, r, n, nc,
                                  nx, nk, ny, every, nck, y0)
        _loop_status(r, ok, m)
        return
    P, W = _loop_workspace(bp, bc, m)
    C = np.empty((nc, m))
    _loop_rows_in(bp, W, 0, a, 0, nc, m)
    _loop_rows_in(bp, W, nc + nx, c, 0, nk, m)  # the body never writes its inputs
    for t in range(n):
        _loop_rows_in(bp, W, nc, b, t * nx, nx, m)
        _loop_values(bp, bc, P, W, m)
        _loop_guards(bp, W, ok, m)
        _loop_outputs(bp, W, r, y0 + t * ny, ny, nc, m)
        _loop_carry_out(bp, W, C, nc, m)
        _loop_carry_in(bp, W, C, nc, m)
        if (t + 1) % every == 0 and t + 1 < n:
            for j in range(nc):
                _loop_copy(r[1 + ((t + 1) // every - 1) * nc + j], C[j], m)
    for j in range(nc):
        _loop_copy(r[1 + nck * nc + j], W[bp[bp[AT_INPUTS] + j]], m)
    _loop_status(r, ok, m)


@njit(cache=True, nogil=True)
def _loop_segment(bp, bc, P, W, b, r, a, s, every, n, nc, nx, seg, m):
    # The carries of segment s (steps s*every .. ) into seg[0 .. len - 1]: the first
    # from its checkpoint (or a), the others by the body's forward sweep.
    t0 = s * every
    t1 = min(t0 + every, n)
    if s == 0:
        for j in range(nc):
            _loop_row(seg[0, j], a, j, m)
    else:
        for j in range(nc):
            _loop_copy(seg[0, j], r[1 + (s - 1) * nc + j], m)
    for t in range(t0, t1 - 1):
        _loop_carry_in(bp, W, seg[t - t0], nc, m)
        _loop_rows_in(bp, W, nc, b, t * nx, nx, m)
        _loop_values(bp, bc, P, W, m)
        _loop_carry_out(bp, W, seg[t - t0 + 1], nc, m)
    return t0, t1


@njit(cache=True, nogil=True)
def loop_reverse(prog, consts, at, row, WO, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    if da == 0 and db == 0 and dc == 0:
        return
    bp, bc = _loop_body(prog, consts, at)
    n, nc, nx, nk, ny, every, nck, y0 = _loop_sizes(at)
    S, F = _loop_scalar(bp) if m == 1 else (np.empty(0, np.int32), np.empty(0))
    if S.size:
        _loop_reverse_one(bp, bc, S, F, _loop_kept(prog, row, WO), a, b, c, r, gr, ga, gb,
                          gc, da, db, dc, n, nc, nx, nk, ny, every, nck, y0)
        return
    P, W = _loop_workspace(bp, bc, m)
    R = reverse_plan(bp)
    A = np.empty((bp[N_SLOTS], m))
    D = np.empty((MAX_ARITY * (bp[N_SLOTS] - bp[FIRST_ADJOINT] - bp[N_INPUTS]), m))
    seg = np.empty((min(every, max(n, 1)), nc, m))
    gcar = np.empty((nc, m))
    gclo = np.zeros((nk, m))
    for j in range(nc):
        _loop_copy(gcar[j], gr[1 + nck * nc + j], m)
    _loop_rows_in(bp, W, nc + nx, c, 0, nk, m)
    ii = bp[AT_INPUTS]
    oo = bp[AT_OUTPUTS]
    q = 0
    for s in range((n + every - 1) // every - 1, -1, -1):
        t0, t1 = _loop_segment(bp, bc, P, W, b, r, a, s, every, n, nc, nx, seg, m)
        for t in range(t1 - 1, t0 - 1, -1):
            _loop_carry_in(bp, W, seg[t - t0], nc, m)
            _loop_rows_in(bp, W, nc, b, t * nx, nx, m)
            q = _loop_partials(bp, bc, P, W, D, m)
            _zero_planned(bp, R, A)
            for j in range(nc):
                _loop_add(A[bp[oo + j]], gcar[j], m)
            for j in range(ny):
                _loop_add(A[bp[oo + nc + j]], gr[y0 + t * ny + j], m)
            _loop_adjoints(bp, R, bc, P, W, A, D, q, m)
            for j in range(nc):
                _loop_copy(gcar[j], A[bp[ii + j]], m)
            if db:
                for j in range(nx):
                    _loop_add(gb[t * nx + j], A[bp[ii + nc + j]], m)
            if dc:
                for j in range(nk):
                    _loop_add(gclo[j], A[bp[ii + nc + nx + j]], m)
            if t > 0 and t % every == 0:  # the checkpoint of this carry is a result too
                for j in range(nc):
                    _loop_add(gcar[j], gr[1 + (t // every - 1) * nc + j], m)
    if da:
        for j in range(nc):
            _loop_add(ga[j], gcar[j], m)
    if dc:
        for j in range(nk):
            _loop_add(gc[j], gclo[j], m)


@njit(cache=True, nogil=True)
def _loop_tangent_row(t, x, j, nv, m, active):
    # Tangents of row j of an operand block ((len, nv, w), or none: zero) into t (nv, m).
    for d in range(nv):
        td = t[d]
        if not active:
            for p in range(m):
                td[p] = 0.0
        elif x.shape[2] == 1:
            v = x[j, d, 0]
            for p in range(m):
                td[p] = v
        else:
            src = x[j, d]
            for p in range(m):
                td[p] = src[p]


@njit(cache=True, nogil=True)
def _loop_tangents_in(bp, T, first, x, x0, k, nv, m, active):
    o = bp[AT_INPUTS] + first
    for j in range(k):
        _loop_tangent_row(T[bp[o + j]], x, x0 + j, nv, m, active)


@njit(cache=True, nogil=True)
def _loop_copy2(dst, src, nv, m):
    for d in range(nv):
        _loop_copy(dst[d], src[d], m)


@njit(cache=True, nogil=True)
def _loop_add2(dst, src, nv, m):
    for d in range(nv):
        _loop_add(dst[d], src[d], m)


@njit(cache=True, nogil=True)
def _loop_tangent_space(bp, bc, nv, m):
    P, W = _loop_workspace(bp, bc, m)
    T = np.empty((bp[N_SLOTS], nv, m))
    _zero_low_tangents(bp, T)
    return P, W, T, np.empty((MAX_ARITY, m))


@njit(cache=True, nogil=True)
def _loop_tangents(bp, bc, P, W, T, D, nv, m):
    # The body's values and tangents; at one point through the point sweep, on flat
    # views of the one-column workspaces (as _loop_values).
    if m == 1:
        forward_tangent_point_sweep(bp, bc, P[0], W.reshape(W.shape[0]),
                                    T.reshape((T.shape[0], nv)), nv)
    else:
        forward_tangent_chunk(bp, bc, P, W, T, D, nv, m)


@njit(cache=True, nogil=True)
def _loop_second_adjoints(bp, bc, P, W, T, A, Ad, D, S, nv, m):
    # The body's adjoints and their tangents; at one point through the point sweep.
    if m == 1:
        reverse_hvp_point_sweep(bp, bc, P[0], W.reshape(W.shape[0]),
                                T.reshape((T.shape[0], nv)), A.reshape(A.shape[0]),
                                Ad.reshape((Ad.shape[0], nv)), nv)
    else:
        reverse_hvp_chunk(bp, bc, P, W, T, A, Ad, D, S, nv, m)


@njit(cache=True, nogil=True)
def _loop_step_tangents(bp, bc, P, W, T, D, b, tb, db, t, nc, nx, nv, m):
    _loop_rows_in(bp, W, nc, b, t * nx, nx, m)
    _loop_tangents_in(bp, T, nc, tb, t * nx, nx, nv, m, db)
    _loop_tangents(bp, bc, P, W, T, D, nv, m)


@njit(cache=True, nogil=True)
def _loop_carry_tangents(bp, W, T, C, TC, nc, nv, m, into_body):
    # Carry values and tangents between the body (inputs if into_body, else outputs) and
    # C (nc, m), TC (nc, nv, m).
    o = bp[AT_INPUTS] if into_body else bp[AT_OUTPUTS]
    for j in range(nc):
        s = bp[o + j]
        if into_body:
            _loop_copy(W[s], C[j], m)
            _loop_copy2(T[s], TC[j], nv, m)
        else:
            _loop_copy(C[j], W[s], m)
            _loop_copy2(TC[j], T[s], nv, m)


@njit(cache=True, nogil=True)
def loop_tangent(prog, consts, at, row, WO, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    bp, bc = _loop_body(prog, consts, at)
    n, nc, nx, nk, ny, every, nck, y0 = _loop_sizes(at)
    nv = tr.shape[1]
    P, W, T, D = _loop_tangent_space(bp, bc, nv, m)
    ok = np.ones(m, np.bool_)
    C = np.empty((nc, m))
    TC = np.empty((nc, nv, m))
    _loop_rows_in(bp, W, 0, a, 0, nc, m)
    _loop_tangents_in(bp, T, 0, ta, 0, nc, nv, m, da)
    _loop_rows_in(bp, W, nc + nx, c, 0, nk, m)
    _loop_tangents_in(bp, T, nc + nx, tc, 0, nk, nv, m, dc)
    oo = bp[AT_OUTPUTS]
    for t in range(n):
        _loop_step_tangents(bp, bc, P, W, T, D, b, tb, db, t, nc, nx, nv, m)
        _loop_guards(bp, W, ok, m)
        for j in range(ny):
            _loop_copy(r[y0 + t * ny + j], W[bp[oo + nc + j]], m)
            _loop_copy2(tr[y0 + t * ny + j], T[bp[oo + nc + j]], nv, m)
        _loop_carry_tangents(bp, W, T, C, TC, nc, nv, m, False)
        _loop_carry_tangents(bp, W, T, C, TC, nc, nv, m, True)
        if (t + 1) % every == 0 and t + 1 < n:
            k = 1 + ((t + 1) // every - 1) * nc
            for j in range(nc):
                _loop_copy(r[k + j], C[j], m)
                _loop_copy2(tr[k + j], TC[j], nv, m)
    ii = bp[AT_INPUTS]
    for j in range(nc):
        _loop_copy(r[1 + nck * nc + j], W[bp[ii + j]], m)
        _loop_copy2(tr[1 + nck * nc + j], T[bp[ii + j]], nv, m)
    for d in range(nv):
        for p in range(m):
            tr[0, d, p] = 0.0
    _loop_status(r, ok, m)


@njit(cache=True, nogil=True)
def loop_second(prog, consts, at, row, WO, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc,
                gda, gdb, gdc, da, db, dc, m):
    if da == 0 and db == 0 and dc == 0:
        return
    bp, bc = _loop_body(prog, consts, at)
    n, nc, nx, nk, ny, every, nck, y0 = _loop_sizes(at)
    nv = tr.shape[1]
    P, W, T, D = _loop_tangent_space(bp, bc, nv, m)
    A = np.empty((bp[N_SLOTS], m))
    Ad = np.empty((bp[N_SLOTS], nv, m))
    S = np.empty((N_SECOND, m))
    span = min(every, max(n, 1))
    seg = np.empty((span, nc, m))
    tseg = np.empty((span, nc, nv, m))
    gcar = np.empty((nc, m))
    gdcar = np.empty((nc, nv, m))
    gclo = np.zeros((nk, m))
    gdclo = np.zeros((nk, nv, m))
    for j in range(nc):
        _loop_copy(gcar[j], gr[1 + nck * nc + j], m)
        _loop_copy2(gdcar[j], gdr[1 + nck * nc + j], nv, m)
    _loop_rows_in(bp, W, nc + nx, c, 0, nk, m)
    _loop_tangents_in(bp, T, nc + nx, tc, 0, nk, nv, m, dc)
    ii = bp[AT_INPUTS]
    oo = bp[AT_OUTPUTS]
    nd = bp[FIRST_ADJOINT]
    # At one point each step of a segment keeps its values and tangents from the
    # segment's rebuild, when they fit: its reverse then reads them instead of running
    # the step forward again (as _loop_reverse_one does).
    keep = m == 1 and span > 1 and span * bp[N_SLOTS] * (1 + nv) <= LOOP_KEPT_VALUES
    KW = np.empty((span if keep else 0, bp[N_SLOTS], m))
    KT = np.empty((span if keep else 0, bp[N_SLOTS], nv, m))
    for k in range(KW.shape[0]):
        KW[k] = W  # the fixed values and tangents: constants, the closure
        KT[k] = T
    for s in range((n + every - 1) // every - 1, -1, -1):
        t0 = s * every
        t1 = min(t0 + every, n)
        for j in range(nc):  # the segment's first carry: a, or its checkpoint
            if s == 0:
                _loop_row(seg[0, j], a, j, m)
                _loop_tangent_row(tseg[0, j], ta, j, nv, m, da)
            else:
                _loop_copy(seg[0, j], r[1 + (s - 1) * nc + j], m)
                _loop_copy2(tseg[0, j], tr[1 + (s - 1) * nc + j], nv, m)
        for t in range(t0, t1 - 1):
            Wt, Tt = (KW[t - t0], KT[t - t0]) if keep else (W, T)
            _loop_carry_tangents(bp, Wt, Tt, seg[t - t0], tseg[t - t0], nc, nv, m, True)
            _loop_step_tangents(bp, bc, P, Wt, Tt, D, b, tb, db, t, nc, nx, nv, m)
            _loop_carry_tangents(bp, Wt, Tt, seg[t - t0 + 1], tseg[t - t0 + 1], nc, nv, m,
                                 False)
        for t in range(t1 - 1, t0 - 1, -1):
            Wt, Tt = (KW[t - t0], KT[t - t0]) if keep else (W, T)
            if not keep or t == t1 - 1:  # the segment's last step: not run yet
                _loop_carry_tangents(bp, Wt, Tt, seg[t - t0], tseg[t - t0], nc, nv, m,
                                     True)
                _loop_step_tangents(bp, bc, P, Wt, Tt, D, b, tb, db, t, nc, nx, nv, m)
            for z in range(nd, bp[N_SLOTS]):
                for p in range(m):
                    A[z, p] = 0.0
                for d in range(nv):
                    for p in range(m):
                        Ad[z, d, p] = 0.0
            for j in range(nc):
                _loop_add(A[bp[oo + j]], gcar[j], m)
                _loop_add2(Ad[bp[oo + j]], gdcar[j], nv, m)
            for j in range(ny):
                _loop_add(A[bp[oo + nc + j]], gr[y0 + t * ny + j], m)
                _loop_add2(Ad[bp[oo + nc + j]], gdr[y0 + t * ny + j], nv, m)
            _loop_second_adjoints(bp, bc, P, Wt, Tt, A, Ad, D, S, nv, m)
            for j in range(nc):
                _loop_copy(gcar[j], A[bp[ii + j]], m)
                _loop_copy2(gdcar[j], Ad[bp[ii + j]], nv, m)
            if db:
                for j in range(nx):
                    _loop_add(gb[t * nx + j], A[bp[ii + nc + j]], m)
                    _loop_add2(gdb[t * nx + j], Ad[bp[ii + nc + j]], nv, m)
            if dc:
                for j in range(nk):
                    _loop_add(gclo[j], A[bp[ii + nc + nx + j]], m)
                    _loop_add2(gdclo[j], Ad[bp[ii + nc + nx + j]], nv, m)
            if t > 0 and t % every == 0:
                k = 1 + (t // every - 1) * nc
                for j in range(nc):
                    _loop_add(gcar[j], gr[k + j], m)
                    _loop_add2(gdcar[j], gdr[k + j], nv, m)
    if da:
        for j in range(nc):
            _loop_add(ga[j], gcar[j], m)
            _loop_add2(gda[j], gdcar[j], nv, m)
    if dc:
        for j in range(nk):
            _loop_add(gc[j], gclo[j], m)
            _loop_add2(gdc[j], gdclo[j], nv, m)
