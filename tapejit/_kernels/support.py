"""Kernel drivers' building blocks: workspaces, loading points, seeds, guards.

The drivers (``point.py``, ``batch.py``) call these and the sweeps. Conventions of every
driver:

* ``prog`` is the packed int32 program (layout and field names in ``tapejit/_program.py``);
* a chunk workspace ``W`` is ``(n_slots, chunk)``: points innermost;
* ``P`` (parameters), ``WT`` (output weights) and ``V`` (directions) have a leading axis
  of 1 (the same for every point) or ``n_points``;
* batched drivers take ``t, nt`` and evaluate chunks ``t, t + nt, ...`` with a workspace
  of their own: the runtime calls them from ``nt`` threads at once (they release
  the GIL), or once with ``0, 1``;
* ``*_point`` drivers evaluate one point with scalar sweeps (no chunk loops);
* guards (recorded branch decisions) are checked after each forward sweep: batched
  drivers write ``valid[p]`` (1: every guard holds at point ``p``), point drivers return
  the number of failed guards, except ``value_grad_point`` which returns the value and
  signals a failed guard by returning NaN with a NaN gradient (no extra argument on the
  optimizer's hot path; the caller re-checks only when it sees NaN).
"""

from typing import TYPE_CHECKING

import numpy as np
from numba.core import types as _types
from numba.extending import overload as _overload

from tapejit._kernels.njit import njit
from tapejit._program import (
    AT_GUARDS,
    AT_INPUTS,
    AT_OUTPUTS,
    AT_PARAMS,
    AT_RESIDENT,
    FIRST_ADJOINT,
    GUARD,
    GUARD_OUTCOME,
    GUARD_SLOT,
    MAX_ARITY,
    N_CONSTS,
    N_GUARDS,
    N_INPUTS,
    N_OUTPUTS,
    N_PARAMS,
    N_RESIDENT,
    N_SLOTS,
    RUN,
    RUN_START,
    RUN_STOP,
)

if TYPE_CHECKING:
    from tapejit._kernels.generated import forward_partials_chunk, forward_tangent_chunk

# --- kernel source ---

@njit(cache=True, nogil=True)
def _fill_fixed(prog, consts, P, W):
    # Resident constants and point-independent parameters: written once per workspace
    # (per-point parameters are loaded with each chunk, all of them).
    nc = prog[N_CONSTS]
    o = prog[AT_RESIDENT]
    for z in range(prog[N_RESIDENT]):
        for s in range(prog[o + RUN * z + RUN_START], prog[o + RUN * z + RUN_STOP]):
            if s < nc:
                v = consts[s]
            elif P.shape[0] == 1:
                v = P[0, s - nc]
            else:
                continue
            w = W[s]
            for p in range(W.shape[1]):
                w[p] = v


# Chunk rows are copied through 1-D views (``W[s]``, ``X[p0 : p0 + m, j]``) indexed by
# the loop counter: Numba then needs no negative-index check per element, and the loops
# run faster than with two-index element access.
@njit(cache=True, nogil=True)
def _rows_in(prog, o, k, X, W, p0, m):
    # Column j of the points X[p0 : p0 + m] into row prog[o + j] of W, for j < k.
    for j in range(k):
        w = W[prog[o + j]]
        x = X[p0 : p0 + m, j]
        for p in range(m):
            w[p] = x[p]


@njit(cache=True, nogil=True)
def _rows_out(prog, o, k, W, Y, p0, m):
    # Row prog[o + j] of W into column j of Y[p0 : p0 + m], for j < k.
    for j in range(k):
        w = W[prog[o + j]]
        y = Y[p0 : p0 + m, j]
        for p in range(m):
            y[p] = w[p]


@njit(cache=True, nogil=True)
def _load(prog, X, P, W, p0, m):
    _rows_in(prog, prog[AT_INPUTS], prog[N_INPUTS], X, W, p0, m)
    if P.shape[0] > 1:
        _rows_in(prog, prog[AT_PARAMS], prog[N_PARAMS], P, W, p0, m)


@njit(cache=True, nogil=True)
def _store_outputs(prog, W, Y, p0, m):
    _rows_out(prog, prog[AT_OUTPUTS], prog[N_OUTPUTS], W, Y, p0, m)


@njit(cache=True, nogil=True)
def _zero_adjoints(prog, A, m):
    for s in range(prog[FIRST_ADJOINT], prog[N_SLOTS]):
        a = A[s]
        for p in range(m):
            a[p] = 0.0


@njit(cache=True, nogil=True)
def _seed(prog, WT, A, p0, m):
    o = prog[AT_OUTPUTS]
    for k in range(prog[N_OUTPUTS]):
        a = A[prog[o + k]]
        if WT.shape[0] == 1:
            wk = WT[0, k]
            for p in range(m):
                a[p] += wk
        else:
            wt = WT[p0 : p0 + m, k]
            for p in range(m):
                a[p] += wt[p]


@njit(cache=True, nogil=True)
def _store_grad(prog, A, G, p0, m):
    _rows_out(prog, prog[AT_INPUTS], prog[N_INPUTS], A, G, p0, m)


@njit(cache=True, nogil=True)
def _check_guards(prog, W, valid, p0, m):
    v = valid[p0 : p0 + m]
    for p in range(m):
        v[p] = 1
    o = prog[AT_GUARDS]
    for q in range(prog[N_GUARDS]):
        w = W[prog[o + GUARD * q + GUARD_SLOT]]
        want = prog[o + GUARD * q + GUARD_OUTCOME] != 0
        # Branch-free: where points take mixed branches an ``if`` here mispredicts at
        # every other point, which costs more than the sweep of a small tape.
        for p in range(m):
            v[p] &= (w[p] != 0.0) == want


@njit(cache=True, nogil=True)
def _reverse_workspaces(prog, consts, P, chunk):
    # Values (constants and fixed parameters filled in), adjoints, stored partials.
    W = np.empty((prog[N_SLOTS], chunk))
    _fill_fixed(prog, consts, P, W)
    return W, np.empty((prog[N_SLOTS], chunk)), np.empty(
        (MAX_ARITY * (prog[N_SLOTS] - prog[FIRST_ADJOINT] - prog[N_INPUTS]), chunk))


def _params64(P):
    # The parameters as the sweeps take them (compiled: the overload below).
    return np.asarray(P, dtype=np.float64)


@_overload(_params64)
def _params64_typed(P):
    # float64 parameters as they are; float32 ones (a Float32Tape's) as float64, so that
    # its drivers run the float64 sweeps and family routines (one compilation for both).
    # A sweep reads parameters from P only where they are shared (one row: family
    # operands, ``_family_operand``); per-point ones are in the workspace, and of those
    # only the number of rows counts.
    if P.dtype == _types.float64:
        return lambda P: P
    if P.ndim == 1:
        return lambda P: P.astype(np.float64)

    def as_float64(P):
        if P.shape[0] == 1:
            return P.astype(np.float64)
        return np.empty((P.shape[0], 0))

    return as_float64


@njit(cache=True, nogil=True)
def _forward_stored(prog, consts, X, P, PS, W, D, Y, valid, p0, m):
    # One chunk's values and stored partials; its outputs and guard checks written. PS:
    # the parameters as the sweeps take them (_params64(P)).
    _load(prog, X, P, W, p0, m)
    forward_partials_chunk(prog, consts, PS, W, D, m)
    _check_guards(prog, W, valid, p0, m)
    _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True)
def _tangent_workspaces(prog, consts, P, nv, chunk):
    # Values (constants and fixed parameters filled in), tangents (zero for those),
    # scratch partials.
    W = np.empty((prog[N_SLOTS], chunk))
    T = np.empty((prog[N_SLOTS], nv, chunk))
    _fill_fixed(prog, consts, P, W)
    _zero_low_tangents(prog, T)
    return W, T, np.empty((MAX_ARITY, chunk))


@njit(cache=True, nogil=True)
def _forward_tangents(prog, consts, X, P, V, W, T, D, Y, valid, p0, m):
    # One chunk's values and tangents; its outputs and guard checks written.
    _load(prog, X, P, W, p0, m)
    _seed_tangents(prog, V, T, p0, m)
    forward_tangent_chunk(prog, consts, P, W, T, D, V.shape[1], m)
    _check_guards(prog, W, valid, p0, m)
    _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True)
def _point_failed_guards(prog, W):
    failed = 0
    o = prog[AT_GUARDS]
    for q in range(prog[N_GUARDS]):
        g = o + GUARD * q
        if (W[prog[g + GUARD_SLOT]] != 0.0) != (prog[g + GUARD_OUTCOME] != 0):
            failed += 1
    return failed


@njit(cache=True, nogil=True)
def _zero_low_tangents(prog, T):
    # Constants and parameters have zero tangent; instructions never write these rows.
    # Per-point parameters are all in the workspace; else only the resident ones are
    # (no sweep reads the others' tangents).
    lo = prog[N_CONSTS] + prog[N_PARAMS]
    for s in range(lo, prog[FIRST_ADJOINT]):
        for d in range(T.shape[1]):
            for p in range(T.shape[2]):
                T[s, d, p] = 0.0
    o = prog[AT_RESIDENT]
    for z in range(prog[N_RESIDENT]):
        for s in range(prog[o + RUN * z + RUN_START], prog[o + RUN * z + RUN_STOP]):
            for d in range(T.shape[1]):
                for p in range(T.shape[2]):
                    T[s, d, p] = 0.0


@njit(cache=True, nogil=True)
def _seed_tangents(prog, V, T, p0, m):
    o = prog[AT_INPUTS]
    for j in range(prog[N_INPUTS]):
        s = prog[o + j]
        for d in range(V.shape[1]):
            t = T[s, d]
            if V.shape[0] == 1:
                vd = V[0, d, j]
                for p in range(m):
                    t[p] = vd
            else:
                v = V[p0 : p0 + m, d, j]
                for p in range(m):
                    t[p] = v[p]
