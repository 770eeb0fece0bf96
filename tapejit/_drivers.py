"""Numba source of the kernel drivers: workspaces, chunking, threads, entry points.

The sweeps themselves (``forward_chunk``, ``reverse_stored_chunk``, ...) are generated
from the op table by ``_codegen.py``; the drivers here call them. This is source text,
not code: ``_codegen.generate_source`` puts it into the one generated module, so Numba's
cache of every kernel is keyed on the whole source, table included.

Conventions shared with ``_tape.py``:

* ``prog`` is the packed int32 program (header documented in ``_tape.py``);
* a chunk workspace ``W`` is ``(n_slots, chunk)``: points innermost;
* ``P`` (parameters), ``WT`` (output weights) and ``V`` (directions) have a leading axis
  of 1 (the same for every point) or ``n_points``;
* batched drivers take ``t, nt`` and evaluate chunks ``t, t + nt, ...`` with a workspace
  of their own: ``_tape._run_batch`` calls them from ``nt`` threads at once (they release
  the GIL), or once with ``0, 1``;
* ``*_point`` drivers evaluate one point with scalar sweeps (no chunk loops);
* guards (recorded branch decisions) are checked after each forward sweep: batched
  drivers write ``valid[p]`` (1: every guard holds at point ``p``), point drivers return
  the number of failed guards, except ``value_grad_point`` which returns the value and
  signals a failed guard by returning NaN with a NaN gradient (no extra argument on the
  optimizer's hot path; the caller re-checks only when it sees NaN).
"""

SUPPORT = '''
@njit(cache=True, nogil=True)
def _fill_fixed(prog, consts, P, W):
    # Constants and point-independent parameters: written once per workspace.
    for s in range(prog[1]):
        for p in range(W.shape[1]):
            W[s, p] = consts[s]
    if P.shape[0] == 1:
        o = prog[8]
        for j in range(prog[4]):
            s = prog[o + j]
            for p in range(W.shape[1]):
                W[s, p] = P[0, j]


# Chunk rows are copied through 1-D views (``W[s]``, ``X[p0 : p0 + m, j]``) indexed by
# the loop counter: Numba then needs no negative-index check per element, and the loops
# run twice as fast as with two-index element access.
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
    _rows_in(prog, prog[7], prog[3], X, W, p0, m)
    if P.shape[0] > 1:
        _rows_in(prog, prog[8], prog[4], P, W, p0, m)


@njit(cache=True, nogil=True)
def _store_outputs(prog, W, Y, p0, m):
    _rows_out(prog, prog[9], prog[5], W, Y, p0, m)


@njit(cache=True, nogil=True)
def _zero_adjoints(prog, A, m):
    for s in range(prog[2], prog[0]):
        a = A[s]
        for p in range(m):
            a[p] = 0.0


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
    n = prog[0]
    nd = prog[2]
    nf = nd + prog[3]
    ni = prog[6]
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
    ok = np.zeros(3, np.int64)
    fw = np.zeros(3, np.int64)
    R = np.zeros(ni + 1, np.int64)
    G = np.empty(ni, np.int64)
    o = prog[9]
    for k in range(prog[5]):
        state[prog[o + k]] = 1
        reads[prog[o + k]] += 1
    for i in range(ni):
        r = prog[10] + prog[11] * i
        op = prog[r]
        m = prog[r + 5]
        G[i] = prog[r + 1]
        if m > 0:
            first[prog[r + 1]] = i
        for k in range(3):
            if _PSRC[3 * op + k] != 0:
                for e in range(m):
                    reads[prog[r + 2 + k] + e * prog[r + 6 + k]] += 1
    for i in range(ni - 1, -1, -1):
        r = prog[10] + prog[11] * i
        op = prog[r]
        m = prog[r + 5]
        for k in range(3):
            fw[k] = 0
            i0 = prog[r + 2 + k]
            # _PSRC 2: a constant partial (_SRC_CONST in _codegen.py), here exactly 1
            if (_PSRC[3 * op + k] != 2 or _PCONST[3 * op + k] != 1.0 or i0 < nf
                    or (m > 1 and prog[r + 6 + k] != 1) or first[i0] < 0):
                continue
            p = first[i0]
            if prog[prog[10] + prog[11] * p + 5] != m:
                continue
            fw[k] = 1
            for e in range(m):
                if reads[i0 + e] != 1:
                    fw[k] = 0
            if fw[k] == 1:
                G[p] = G[i]  # decided before p is reached: G[i] is final
                for e in range(m):
                    state[i0 + e] = 2  # never read: not zeroed
        for k in range(3):
            ok[k] = 0
            if _PSRC[3 * op + k] == 0 or fw[k] == 1:
                continue
            i0 = prog[r + 2 + k]
            s0 = prog[r + 6 + k]
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
        for k in range(3):
            if _PSRC[3 * op + k] == 0:
                continue
            f |= fw[k] << (3 + k)
            if fw[k] == 1:
                continue
            f |= ok[k] << k
            i0 = prog[r + 2 + k]
            s0 = prog[r + 6 + k]
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
    ni = prog[6]
    if R.shape[0] <= ni or R.shape[0] != 2 * ni + 1 + 2 * R[ni]:
        raise ValueError("the reverse plan does not belong to this program")


@njit(cache=True, nogil=True)
def _plan_slots(prog, R):
    # Offset in the plan of its last section, the instructions' adjoint slots.
    return prog[6] + 1 + 2 * R[prog[6]]


@njit(cache=True, nogil=True)
def _plan_slot(prog, R, j, n):
    # Entry j of the plan (where an instruction's n result adjoints are), checked: the
    # plan is data.
    g = R[j]
    if g < prog[2] or g + n > prog[0]:
        raise ValueError("the reverse plan does not belong to this program")
    return g


@njit(cache=True, nogil=True)
def _zero_planned(prog, R, A):
    # The adjoints (rows of A, or entries for one point) the reverse plan does not
    # assign, clamped to the workspace.
    ni = prog[6]
    for z in range(R[ni]):
        A[max(R[ni + 1 + 2 * z], prog[2]) : min(R[ni + 2 + 2 * z], prog[0])] = 0.0


@njit(cache=True, nogil=True)
def _seed(prog, WT, A, p0, m):
    o = prog[9]
    for k in range(prog[5]):
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
    _rows_out(prog, prog[7], prog[3], A, G, p0, m)


@njit(cache=True, nogil=True)
def _check_guards(prog, W, valid, p0, m):
    v = valid[p0 : p0 + m]
    for p in range(m):
        v[p] = 1
    o = prog[13]
    for q in range(prog[12]):
        w = W[prog[o + 2 * q]]
        want = prog[o + 2 * q + 1] != 0
        # Branch-free: where points take mixed branches an ``if`` here mispredicts at
        # every other point (30x slower than the sweep of a small tape).
        for p in range(m):
            v[p] &= (w[p] != 0.0) == want


@njit(cache=True, nogil=True)
def _reverse_workspaces(prog, consts, P, chunk):
    # Values (constants and fixed parameters filled in), adjoints, stored partials.
    W = np.empty((prog[0], chunk))
    _fill_fixed(prog, consts, P, W)
    return W, np.empty((prog[0], chunk)), np.empty((3 * (prog[0] - prog[2] - prog[3]), chunk))


@njit(cache=True, nogil=True)
def _forward_stored(prog, X, P, W, D, Y, valid, p0, m):
    # One chunk's values and stored partials; its outputs and guard checks written.
    _load(prog, X, P, W, p0, m)
    forward_partials_chunk(prog, W, D, m)
    _check_guards(prog, W, valid, p0, m)
    _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True)
def _tangent_workspaces(prog, consts, P, nv, chunk):
    # Values (constants and fixed parameters filled in), tangents (zero for those),
    # scratch partials.
    W = np.empty((prog[0], chunk))
    T = np.empty((prog[0], nv, chunk))
    _fill_fixed(prog, consts, P, W)
    _zero_low_tangents(prog, T)
    return W, T, np.empty((3, chunk))


@njit(cache=True, nogil=True)
def _forward_tangents(prog, X, P, V, W, T, D, Y, valid, p0, m):
    # One chunk's values and tangents; its outputs and guard checks written.
    _load(prog, X, P, W, p0, m)
    _seed_tangents(prog, V, T, p0, m)
    forward_tangent_chunk(prog, W, T, D, V.shape[1], m)
    _check_guards(prog, W, valid, p0, m)
    _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True)
def _point_failed_guards(prog, W):
    failed = 0
    o = prog[13]
    for q in range(prog[12]):
        if (W[prog[o + 2 * q]] != 0.0) != (prog[o + 2 * q + 1] != 0):
            failed += 1
    return failed


@njit(cache=True, nogil=True)
def _zero_low_tangents(prog, T):
    # Constants and parameters have zero tangent; instructions never write these rows.
    for s in range(prog[2]):
        for d in range(T.shape[1]):
            for p in range(T.shape[2]):
                T[s, d, p] = 0.0


@njit(cache=True, nogil=True)
def _seed_tangents(prog, V, T, p0, m):
    o = prog[7]
    for j in range(prog[3]):
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
'''

POINT = '''
@njit(cache=True, nogil=True)
def _point_workspace(prog, consts, x, P, WS):
    # WS: a caller's reusable buffer (large tapes), else allocate here.
    return _fill_values(prog, consts, x, P, WS[: prog[0]] if WS.size >= prog[0]
                        else np.empty(prog[0]))


@njit(cache=True, nogil=True)
def _fill_values(prog, consts, x, P, W):
    # Every program keeps constants, parameters and inputs in slots 0, 1, ... in that
    # order (validated), so this is three copies.
    nc = prog[1]
    nd = prog[2]
    w = W[:nc]
    for s in range(nc):
        w[s] = consts[s]
    w = W[nc:nd]
    for j in range(nd - nc):
        w[j] = P[j]
    w = W[nd : nd + prog[3]]
    for j in range(prog[3]):
        w[j] = x[j]
    return W


@njit(cache=True, nogil=True)
def _point_tangents(prog, V, T):
    # Constants and parameters get zero tangents, inputs the directions; the sweep
    # writes every result row.
    for s in range(prog[2]):
        for d in range(V.shape[0]):
            T[s, d] = 0.0
    o = prog[7]
    for d in range(V.shape[0]):
        for j in range(prog[3]):
            T[prog[o + j], d] = V[d, j]


@njit(cache=True, nogil=True)
def _fill_point(prog, consts, X, P, q, W):
    _fill_values(prog, consts, X[q], P[0 if P.shape[0] == 1 else q], W)


@njit(cache=True, nogil=True)
def _point_guards_valid(prog, W, valid, q):
    valid[q] = 1 if _point_failed_guards(prog, W) == 0 else 0


@njit(cache=True, nogil=True)
def forward_points(prog, consts, X, P, Y, valid, chunk, t, nt):
    # Huge tapes: one point at a time through the scalar sweep (its block fast paths
    # beat chunk rows of one point); points t, t + nt, ...
    W = np.empty(prog[0])
    o = prog[9]
    for q in range(t, X.shape[0], nt):
        _fill_point(prog, consts, X, P, q, W)
        forward_point_sweep(prog, W)
        _point_guards_valid(prog, W, valid, q)
        for k in range(prog[5]):
            Y[q, k] = W[prog[o + k]]


@njit(cache=True, nogil=True)
def vjp_points(prog, R, consts, X, P, WT, Y, G, valid, chunk, t, nt):
    _check_plan(prog, R)
    n = prog[0]
    nd = prog[2]
    W = np.empty(n)
    A = np.empty(n)
    D = np.empty(3 * (n - nd - prog[3]))
    oo = prog[9]
    for q in range(t, X.shape[0], nt):
        _fill_point(prog, consts, X, P, q, W)
        end = forward_partials_point_sweep(prog, W, D)
        _point_guards_valid(prog, W, valid, q)
        _zero_planned(prog, R, A)
        r = 0 if WT.shape[0] == 1 else q
        for k in range(prog[5]):
            s = prog[oo + k]
            Y[q, k] = W[s]
            A[s] += WT[r, k]
        reverse_stored_point_sweep(prog, R, W, A, D, end)
        gq = G[q]
        a = A[nd : nd + prog[3]]
        for j in range(prog[3]):
            gq[j] = a[j]


@njit(cache=True, nogil=True)
def forward_point(prog, consts, x, P, y, WS):
    W = _point_workspace(prog, consts, x, P, WS)
    forward_point_sweep(prog, W)
    o = prog[9]
    for k in range(prog[5]):
        y[k] = W[prog[o + k]]
    return _point_failed_guards(prog, W)


@njit(cache=True, nogil=True)
def value_grad_point(prog, R, consts, x, P, g, WS):
    # WS: a caller's reusable buffer of at least ``size`` floats (large tapes), else the
    # workspaces are allocated here: values W, adjoints A, stored partials D. R: the
    # tape's reverse plan.
    _check_plan(prog, R)
    n = prog[0]
    nd = prog[2]
    size = 5 * n - 3 * (nd + prog[3])
    buf = WS if WS.size >= size else np.empty(size)
    W = buf[:n]
    A = buf[n : 2 * n]
    D = buf[2 * n : size]
    _fill_values(prog, consts, x, P, W)
    end = forward_partials_point_sweep(prog, W, D)
    if prog[12] > 0 and _point_failed_guards(prog, W) > 0:
        for j in range(prog[3]):
            g[j] = np.nan
        return np.nan
    _zero_planned(prog, R, A)
    out = prog[prog[9]]
    A[out] = 1.0
    reverse_stored_point_sweep(prog, R, W, A, D, end)
    a = A[nd : nd + prog[3]]
    for j in range(prog[3]):
        g[j] = a[j]
    return W[out]


@njit(cache=True, nogil=True)
def jvp_point(prog, consts, x, P, V, y, TY):
    W = _point_workspace(prog, consts, x, P, P[:0])
    T = np.empty((prog[0], V.shape[0]))
    _point_tangents(prog, V, T)
    forward_tangent_point_sweep(prog, W, T, V.shape[0])
    o = prog[9]
    for k in range(prog[5]):
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
    n = prog[0]
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
    forward_tangent_point_sweep(prog, W, T, nv)
    out = prog[prog[9]]
    A[out] = 1.0
    reverse_hvp_point_sweep(prog, W, T, A, Ad, nv)
    o = prog[7]
    for j in range(prog[3]):
        s = prog[o + j]
        g[j] = A[s]
        for d in range(nv):
            HV[d, j] = Ad[s, d]
    return _point_failed_guards(prog, W)
'''

# Batched kernels: ``(..., chunk, t, nt)`` evaluates chunks ``t, t + nt, ...`` of the points
# with a workspace of its own, so ``nt`` threads calling it with ``t = 0 .. nt-1`` share the
# points (the caller's threads: no ``prange``, whose kernels compile twice as long).
BATCH = '''
@njit(cache=True, nogil=True)
def forward_batch(prog, consts, X, P, Y, valid, chunk, t, nt):
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    W = np.empty((prog[0], chunk))
    _fill_fixed(prog, consts, P, W)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _load(prog, X, P, W, p0, m)
        forward_chunk(prog, W, m)
        _check_guards(prog, W, valid, p0, m)
        _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True)
def vjp_batch(prog, R, consts, X, P, WT, Y, G, valid, chunk, t, nt):
    _check_plan(prog, R)
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    W, A, D = _reverse_workspaces(prog, consts, P, chunk)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_stored(prog, X, P, W, D, Y, valid, p0, m)
        _zero_planned(prog, R, A)
        _seed(prog, WT, A, p0, m)
        reverse_stored_chunk(prog, R, W, A, D, m)
        _store_grad(prog, A, G, p0, m)


@njit(cache=True, nogil=True)
def jacrev_batch(prog, R, consts, X, P, Y, J, valid, chunk, t, nt):
    _check_plan(prog, R)
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    oo = prog[9]
    oi = prog[7]
    W, A, D = _reverse_workspaces(prog, consts, P, chunk)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_stored(prog, X, P, W, D, Y, valid, p0, m)
        for k in range(prog[5]):
            _zero_planned(prog, R, A)
            a = A[prog[oo + k]]
            for p in range(m):
                a[p] += 1.0
            reverse_stored_chunk(prog, R, W, A, D, m)
            for j in range(prog[3]):
                a = A[prog[oi + j]]
                jk = J[p0 : p0 + m, k, j]
                for p in range(m):
                    jk[p] = a[p]


@njit(cache=True, nogil=True)
def jvp_batch(prog, consts, X, P, V, Y, TY, valid, chunk, t, nt):
    n = X.shape[0]
    nv = V.shape[1]
    nchunks = (n + chunk - 1) // chunk
    oo = prog[9]
    W, T, D = _tangent_workspaces(prog, consts, P, nv, chunk)
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_tangents(prog, X, P, V, W, T, D, Y, valid, p0, m)
        for k in range(prog[5]):
            s = prog[oo + k]
            for d in range(nv):
                t = T[s, d]
                ty = TY[p0 : p0 + m, k, d]
                for p in range(m):
                    ty[p] = t[p]


@njit(cache=True, nogil=True)
def hvp_batch(prog, consts, X, P, V, Y, G, HV, valid, chunk, t, nt):
    n = X.shape[0]
    nv = V.shape[1]
    nchunks = (n + chunk - 1) // chunk
    oi = prog[7]
    out = prog[prog[9]]
    W, T, D = _tangent_workspaces(prog, consts, P, nv, chunk)
    A = np.empty((prog[0], chunk))
    Ad = np.empty((prog[0], nv, chunk))
    S = np.empty((6, chunk))
    for c in range(t, nchunks, nt):
        p0 = c * chunk
        m = min(chunk, n - p0)
        _forward_tangents(prog, X, P, V, W, T, D, Y, valid, p0, m)
        _zero_adjoints(prog, A, m)
        for s in range(prog[2], prog[0]):
            for d in range(nv):
                ad = Ad[s, d]
                for p in range(m):
                    ad[p] = 0.0
        a = A[out]
        for p in range(m):
            a[p] += 1.0
        reverse_hvp_chunk(prog, W, T, A, Ad, D, S, nv, m)
        _store_grad(prog, A, G, p0, m)
        for j in range(prog[3]):
            s = prog[oi + j]
            for d in range(nv):
                ad = Ad[s, d]
                hv = HV[p0 : p0 + m, d, j]
                for p in range(m):
                    hv[p] = ad[p]
'''
