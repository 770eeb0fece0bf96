"""One-point kernel drivers: one point at a time through the scalar sweeps (no chunk loops).

Point drivers return the number of failed guards, except ``value_grad_point``, which
returns the value and signals a failed guard by returning NaN with a NaN gradient (no
extra argument on the optimizer's hot path; the caller re-checks only when it sees NaN).
``forward_points``, ``vjp_points`` and ``jacrev_points`` take many points, for huge tapes
and tapes of blocks too long for wide chunks, where the scalar sweep's block loops beat
chunk rows of a few points. Conventions: ``support.py``.
"""

from typing import TYPE_CHECKING

import numpy as np

from tapejit._kernels.constants import (
    EDGE_COLUMNS,
    SP_EDGES,
    SP_HEADER,
    SP_ROW,
    SP_ROWS,
    SP_STORED,
)
from tapejit._kernels.njit import njit
from tapejit._kernels.plan import _check_plan, _zero_planned
from tapejit._kernels.reverse import reverse_edges, reverse_stored_point_sweep
from tapejit._kernels.support import _params64, _point_failed_guards
from tapejit._program import (
    AT_OUTPUTS,
    AT_RESIDENT,
    FIRST_ADJOINT,
    MAX_ARITY,
    N_CONSTS,
    N_GUARDS,
    N_INPUTS,
    N_INSTR,
    N_OUTPUTS,
    N_RESIDENT,
    N_SLOTS,
    N_SUBPROGRAMS,
    RUN,
    RUN_START,
    RUN_STOP,
)

if TYPE_CHECKING:
    from tapejit._kernels.generated import (
        forward_partials_point_sweep,
        forward_point_sweep,
        forward_scalar_sweep,
        forward_tangent_point_sweep,
        reverse_hvp_point_sweep,
    )

# --- kernel source ---

@njit(cache=True, nogil=True)
def _point_workspace(prog, consts, x, P, WS):
    # WS: a caller's reusable buffer (large tapes), else allocate here.
    return _fill_values(prog, consts, x, P, WS[: prog[N_SLOTS]] if WS.size >= prog[N_SLOTS]
                        else np.empty(prog[N_SLOTS]))


@njit(cache=True, nogil=True)
def _fill_values(prog, consts, x, P, W):
    # Every program keeps constants, parameters and inputs in slots 0, 1, ... in that
    # order (validated): the resident runs of constants and parameters, then the inputs.
    nc = prog[N_CONSTS]
    nd = prog[FIRST_ADJOINT]
    o = prog[AT_RESIDENT]
    for z in range(prog[N_RESIDENT]):
        lo = prog[o + RUN * z + RUN_START]
        hi = prog[o + RUN * z + RUN_STOP]
        w = W[lo:hi]
        if hi <= nc:
            c = consts[lo:hi]
        elif lo >= nc:
            c = P[lo - nc : hi - nc]
        else:
            c = consts[lo:hi]  # a run across both: only its constants here
            w = W[lo:nc]
            for s in range(nc - lo):
                w[s] = c[s]
            c = P[: hi - nc]
            w = W[nc:hi]
        for s in range(w.size):
            w[s] = c[s]
    w = W[nd : nd + prog[N_INPUTS]]
    for j in range(prog[N_INPUTS]):
        w[j] = x[j]
    return W


@njit(cache=True, nogil=True)
def _point_tangents(prog, V, T):
    # Resident constants and parameters get zero tangents (no sweep reads the others'),
    # inputs the directions; the sweep writes every result row. The inputs are slots
    # nd, nd + 1, ... (validated, as _fill_values takes them): rows, not a gather.
    o = prog[AT_RESIDENT]
    for z in range(prog[N_RESIDENT]):
        T[prog[o + RUN * z + RUN_START] : prog[o + RUN * z + RUN_STOP]] = 0.0
    nd = prog[FIRST_ADJOINT]
    t = T[nd : nd + prog[N_INPUTS]]
    if V.shape[0] == 1:
        t1 = t.reshape(t.size)
        v = V[0]
        for j in range(t1.size):
            t1[j] = v[j]
        return
    for j in range(t.shape[0]):
        for d in range(V.shape[0]):
            t[j, d] = V[d, j]


@njit(cache=True, nogil=True)
def _point_guards_valid(prog, W, valid, q):
    valid[q] = 1 if _point_failed_guards(prog, W) == 0 else 0


@njit(cache=True, nogil=True)
def forward_points(prog, consts, X, P, Y, valid, chunk, t, nt):
    # Huge tapes: one point at a time through the scalar sweep (its block fast paths
    # beat chunk rows of one point); points t, t + nt, ...
    W = np.empty(prog[N_SLOTS])
    o = prog[AT_OUTPUTS]
    for q in range(t, X.shape[0], nt):
        pq = _params64(P[0 if P.shape[0] == 1 else q])  # float32 ones as float64
        _fill_values(prog, consts, X[q], pq, W)
        forward_point_sweep(prog, consts, pq, W)
        _point_guards_valid(prog, W, valid, q)
        for k in range(prog[N_OUTPUTS]):
            Y[q, k] = W[prog[o + k]]


@njit(cache=True, nogil=True)
def _reverse_point_workspaces(prog, R):
    # One point's values W, adjoints A and stored partials D, for reverse sweeps with
    # the plan R (checked against the program).
    _check_plan(prog, R)
    n = prog[N_SLOTS]
    return (np.empty(n), np.empty(n),
            np.empty(MAX_ARITY * (n - prog[FIRST_ADJOINT] - prog[N_INPUTS])))


@njit(cache=True, nogil=True)
def _forward_partials_at(prog, consts, X, P, W, D, valid, q):
    # Point q's values and stored partials, its guards into valid[q]; returns its
    # parameters and where its reverse sweep starts.
    pq = _params64(P[0 if P.shape[0] == 1 else q])  # float32 ones as float64
    _fill_values(prog, consts, X[q], pq, W)
    end = forward_partials_point_sweep(prog, consts, pq, W, D)
    _point_guards_valid(prog, W, valid, q)
    return pq, end


@njit(cache=True, nogil=True)
def vjp_points(prog, R, consts, X, P, WT, Y, G, valid, chunk, t, nt):
    nd = prog[FIRST_ADJOINT]
    W, A, D = _reverse_point_workspaces(prog, R)
    oo = prog[AT_OUTPUTS]
    for q in range(t, X.shape[0], nt):
        pq, end = _forward_partials_at(prog, consts, X, P, W, D, valid, q)
        _zero_planned(prog, R, A)
        r = 0 if WT.shape[0] == 1 else q
        for k in range(prog[N_OUTPUTS]):
            s = prog[oo + k]
            Y[q, k] = W[s]
            A[s] += WT[r, k]
        reverse_stored_point_sweep(prog, R, consts, pq, W, A, D, end)
        gq = G[q]
        a = A[nd : nd + prog[N_INPUTS]]
        for j in range(prog[N_INPUTS]):
            gq[j] = a[j]


@njit(cache=True, nogil=True)
def jacrev_points(prog, R, consts, X, P, Y, J, valid, chunk, t, nt):
    # jacrev_batch one point at a time: one forward sweep a point, one reverse sweep an
    # output.
    nd = prog[FIRST_ADJOINT]
    W, A, D = _reverse_point_workspaces(prog, R)
    oo = prog[AT_OUTPUTS]
    for q in range(t, X.shape[0], nt):
        pq, end = _forward_partials_at(prog, consts, X, P, W, D, valid, q)
        for k in range(prog[N_OUTPUTS]):
            Y[q, k] = W[prog[oo + k]]
        for k in range(prog[N_OUTPUTS]):
            _zero_planned(prog, R, A)
            A[prog[oo + k]] += 1.0
            reverse_stored_point_sweep(prog, R, consts, pq, W, A, D, end)
            jk = J[q, k]
            for j in range(prog[N_INPUTS]):
                jk[j] = A[nd + j]


@njit(cache=True, nogil=True)
def forward_point(prog, consts, x, P, y, WS):
    W = _point_workspace(prog, consts, x, P, WS)
    forward_point_sweep(prog, consts, P, W)
    o = prog[AT_OUTPUTS]
    for k in range(prog[N_OUTPUTS]):
        y[k] = W[prog[o + k]]
    return _point_failed_guards(prog, W)


@njit(cache=True, nogil=True)
def _check_scalar_program(prog, S, ne):
    # S is derived from prog by the tape (_scalar_program.py); one from another program
    # could index outside the workspace. ne: the edges the caller's factors cover.
    if (S.shape[0] < SP_HEADER or S[SP_ROWS] != prog[N_INSTR] or S[SP_EDGES] != ne
            or S.shape[0] != SP_HEADER + SP_ROW * S[SP_ROWS] + EDGE_COLUMNS * S[SP_EDGES]
            or S[SP_STORED] < 0 or S[SP_STORED] > MAX_ARITY * S[SP_ROWS]):
        raise ValueError("the scalar program does not belong to this program")


@njit(cache=True, nogil=True)
def forward_scalar(prog, S, consts, x, P, y, WS):
    # forward_point of a tape of scalar instructions, over its scalar program S (the
    # tape's own program, not the slot-compacted one): the same bits.
    _check_scalar_program(prog, S, S[SP_EDGES])
    n = prog[N_SLOTS]
    nv = n + S[SP_STORED] + 1
    V = WS[:nv] if WS.size >= nv else np.empty(nv)
    W = V[:n]
    _fill_values(prog, consts, x, P, W)
    forward_scalar_sweep(S, V, prog[FIRST_ADJOINT] + prog[N_INPUTS], n)
    o = prog[AT_OUTPUTS]
    for k in range(prog[N_OUTPUTS]):
        y[k] = W[prog[o + k]]
    return _point_failed_guards(prog, W)


@njit(cache=True, nogil=True)
def value_grad_scalar(prog, S, F, consts, x, P, g, WS):
    # value_grad_point of a tape of scalar instructions, over its scalar program S and
    # its edges' factors F: the same bits. Workspace: values V (the slots, the stored
    # partials, a 1.0), adjoints A.
    _check_scalar_program(prog, S, F.shape[0])
    n = prog[N_SLOTS]
    nv = n + S[SP_STORED] + 1
    buf = WS if WS.size >= nv + n else np.empty(nv + n)
    V = buf[:nv]
    A = buf[nv : nv + n]
    W = V[:n]
    _fill_values(prog, consts, x, P, W)
    V[nv - 1] = 1.0
    forward_scalar_sweep(S, V, prog[FIRST_ADJOINT] + prog[N_INPUTS], n)
    if prog[N_GUARDS] > 0 and _point_failed_guards(prog, W) > 0:
        for j in range(prog[N_INPUTS]):
            g[j] = np.nan
        return np.nan
    for s in range(n):
        A[s] = 0.0
    out = prog[prog[AT_OUTPUTS]]
    A[out] = 1.0
    reverse_edges(S, F, V, A)
    nd = prog[FIRST_ADJOINT]
    for j in range(prog[N_INPUTS]):
        g[j] = A[nd + j]
    return W[out]


@njit(cache=True, nogil=True)
def value_grad_point(prog, R, consts, x, P, g, WS):
    # WS: a caller's reusable buffer of at least ``size`` floats (large tapes, tapes
    # with loops), else the workspaces are allocated here: values W, adjoints A, stored
    # partials D. R: the tape's reverse plan. A program with loops gets the rest of WS as
    # rows of W past its slots, where its loops keep their steps from the forward sweep
    # to the reverse (fam_loop.py: _loop_kept).
    _check_plan(prog, R)
    n = prog[N_SLOTS]
    nd = prog[FIRST_ADJOINT]
    size = 2 * n + MAX_ARITY * (n - nd - prog[N_INPUTS])
    buf = WS if WS.size >= size else np.empty(size)
    kept = buf.size - size if prog[N_SUBPROGRAMS] > 0 else 0
    W = buf[: n + kept]
    A = buf[n + kept : 2 * n + kept]
    D = buf[2 * n + kept : size + kept]
    _fill_values(prog, consts, x, P, W)
    end = forward_partials_point_sweep(prog, consts, P, W, D)
    if prog[N_GUARDS] > 0 and _point_failed_guards(prog, W) > 0:
        for j in range(prog[N_INPUTS]):
            g[j] = np.nan
        return np.nan
    _zero_planned(prog, R, A)
    out = prog[prog[AT_OUTPUTS]]
    A[out] = 1.0
    reverse_stored_point_sweep(prog, R, consts, P, W, A, D, end)
    a = A[nd : nd + prog[N_INPUTS]]
    for j in range(prog[N_INPUTS]):
        g[j] = a[j]
    return W[out]


@njit(cache=True, nogil=True)
def jvp_point(prog, consts, x, P, V, y, TY):
    W = _point_workspace(prog, consts, x, P, P[:0])
    T = np.empty((prog[N_SLOTS], V.shape[0]))
    _point_tangents(prog, V, T)
    forward_tangent_point_sweep(prog, consts, P, W, T, V.shape[0])
    o = prog[AT_OUTPUTS]
    for k in range(prog[N_OUTPUTS]):
        s = prog[o + k]
        y[k] = W[s]
        for d in range(V.shape[0]):
            TY[k, d] = T[s, d]
    return _point_failed_guards(prog, W)


@njit(cache=True, nogil=True)
def hvp_point(prog, consts, x, P, V, g, HV, WS):
    # WS: a caller's reusable buffer of (2 + 2 nv) floats per slot (large tapes), or
    # too small and the arrays are allocated here.
    nv = V.shape[0]
    n = prog[N_SLOTS]
    W = _point_workspace(prog, consts, x, P, WS)
    if WS.size >= (2 + 2 * nv) * n:
        A = WS[n : 2 * n]
        T = WS[2 * n : (2 + nv) * n].reshape(n, nv)
        Ad = WS[(2 + nv) * n : (2 + 2 * nv) * n].reshape(n, nv)
        A[:] = 0.0
        Ad[:] = 0.0
    else:
        A = np.zeros(n)
        T = np.empty((n, nv))
        Ad = np.zeros((n, nv))
    _point_tangents(prog, V, T)
    forward_tangent_point_sweep(prog, consts, P, W, T, nv)
    out = prog[prog[AT_OUTPUTS]]
    A[out] = 1.0
    reverse_hvp_point_sweep(prog, consts, P, W, T, A, Ad, nv)
    nd = prog[FIRST_ADJOINT]
    a = A[nd : nd + prog[N_INPUTS]]
    ad = Ad[nd : nd + prog[N_INPUTS]]
    for j in range(a.size):
        g[j] = a[j]
    if nv == 1:
        ad1 = ad.reshape(ad.size)
        h = HV[0]
        for j in range(ad1.size):
            h[j] = ad1[j]
    else:
        for j in range(a.size):
            for d in range(nv):
                HV[d, j] = ad[j, d]
    return _point_failed_guards(prog, W)
