"""Batched kernel drivers: ``(..., chunk, t, nt)`` evaluates chunks ``t, t + nt, ...``.

Each call has a workspace of its own, so ``nt`` threads calling it with
``t = 0 .. nt-1`` share the points (the caller's threads: no ``prange``, whose kernels
compile twice as long). Conventions: ``support.py``.
"""

from typing import TYPE_CHECKING

import numpy as np

from tapejit._kernels.constants import N_SECOND
from tapejit._kernels.njit import njit
from tapejit._kernels.plan import _check_plan, _zero_planned
from tapejit._kernels.reverse import reverse_stored_chunk
from tapejit._kernels.support import (
    _check_guards,
    _fill_fixed,
    _forward_stored,
    _forward_tangents,
    _load,
    _params64,
    _reverse_workspaces,
    _seed,
    _store_grad,
    _store_outputs,
    _tangent_workspaces,
    _zero_adjoints,
)
from tapejit._program import (
    AT_INPUTS,
    AT_OUTPUTS,
    FIRST_ADJOINT,
    N_INPUTS,
    N_OUTPUTS,
    N_SLOTS,
)

if TYPE_CHECKING:
    from tapejit._kernels.generated import forward_chunk, reverse_hvp_chunk

# --- kernel source ---

@njit(cache=True, nogil=True)
def forward_batch(prog, consts, X, P, Y, valid, chunk, t, nt):
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    W = np.empty((prog[N_SLOTS], chunk))
    _fill_fixed(prog, consts, P, W)
    PS = _params64(P)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _load(prog, X, P, W, p0, m)
        forward_chunk(prog, consts, PS, W, m)
        _check_guards(prog, W, valid, p0, m)
        _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True)
def vjp_batch(prog, R, consts, X, P, WT, Y, G, valid, chunk, t, nt):
    _check_plan(prog, R)
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    W, A, D = _reverse_workspaces(prog, consts, P, chunk)
    PS = _params64(P)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_stored(prog, consts, X, P, PS, W, D, Y, valid, p0, m)
        _zero_planned(prog, R, A)
        _seed(prog, WT, A, p0, m)
        reverse_stored_chunk(prog, R, consts, PS, W, A, D, m)
        _store_grad(prog, A, G, p0, m)


@njit(cache=True, nogil=True)
def jacrev_batch(prog, R, consts, X, P, Y, J, valid, chunk, t, nt):
    _check_plan(prog, R)
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    oo = prog[AT_OUTPUTS]
    oi = prog[AT_INPUTS]
    W, A, D = _reverse_workspaces(prog, consts, P, chunk)
    PS = _params64(P)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_stored(prog, consts, X, P, PS, W, D, Y, valid, p0, m)
        for k in range(prog[N_OUTPUTS]):
            _zero_planned(prog, R, A)
            a = A[prog[oo + k]]
            for p in range(m):
                a[p] += 1.0
            reverse_stored_chunk(prog, R, consts, PS, W, A, D, m)
            for j in range(prog[N_INPUTS]):
                a = A[prog[oi + j]]
                jk = J[p0 : p0 + m, k, j]
                for p in range(m):
                    jk[p] = a[p]


@njit(cache=True, nogil=True)
def _directions_out(S, s, Y, p0, m):
    # The direction rows of slot s (S[s, d], points innermost) into Y[p0 : p0 + m, d].
    for d in range(S.shape[1]):
        src = S[s, d]
        dst = Y[p0 : p0 + m, d]
        for p in range(m):
            dst[p] = src[p]


@njit(cache=True, nogil=True)
def jvp_batch(prog, consts, X, P, V, Y, TY, valid, chunk, t, nt):
    n = X.shape[0]
    nv = V.shape[1]
    nchunks = (n + chunk - 1) // chunk
    oo = prog[AT_OUTPUTS]
    W, T, D = _tangent_workspaces(prog, consts, P, nv, chunk)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_tangents(prog, consts, X, P, V, W, T, D, Y, valid, p0, m)
        for k in range(prog[N_OUTPUTS]):
            _directions_out(T, prog[oo + k], TY[:, k, :], p0, m)


@njit(cache=True, nogil=True)
def hvp_batch(prog, consts, X, P, V, Y, G, HV, valid, chunk, t, nt):
    n = X.shape[0]
    nv = V.shape[1]
    nchunks = (n + chunk - 1) // chunk
    oi = prog[AT_INPUTS]
    out = prog[prog[AT_OUTPUTS]]
    W, T, D = _tangent_workspaces(prog, consts, P, nv, chunk)
    A = np.empty((prog[N_SLOTS], chunk))
    Ad = np.empty((prog[N_SLOTS], nv, chunk))
    S = np.empty((N_SECOND, chunk))
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_tangents(prog, consts, X, P, V, W, T, D, Y, valid, p0, m)
        _zero_adjoints(prog, A, m)
        for s in range(prog[FIRST_ADJOINT], prog[N_SLOTS]):
            for d in range(nv):
                ad = Ad[s, d]
                for p in range(m):
                    ad[p] = 0.0
        a = A[out]
        for p in range(m):
            a[p] += 1.0
        reverse_hvp_chunk(prog, consts, P, W, T, A, Ad, D, S, nv, m)
        _store_grad(prog, A, G, p0, m)
        for j in range(prog[N_INPUTS]):
            _directions_out(Ad, prog[oi + j], HV[:, :, j], p0, m)
