"""Kernel routines of the LU families: ``solve``, ``inv``, ``det`` and ``slogdet``.

Operands and results use the family layout of the instruction kernels: ``(len, w)``
blocks, one column per point, a matrix stored row-major down the first axis. Two ways to
factor a matrix, chosen per call:

- *batched*: matrices of a small order (``n <= LU_BATCHED_MAX``) are factored by
  Gaussian elimination with partial pivoting, per-point ones all together with the loop
  over points innermost (it vectorizes; row swaps are branch-free selects for the same
  reason), a shared one (``w == 1``: the same for every point) once, its factors then
  applied to every point's right-hand sides;
- *LAPACK*, through Numba's ``np.linalg``, for larger ones: a shared matrix in one solve
  over every point's columns, per-point ones one solve per point.

A singular matrix never raises inside a kernel. An exactly zero pivot (batched) or
LAPACK's singular-matrix error makes every entry of that point's solution NaN, so
``solve`` and ``inv`` give NaN results and every gradient through them is NaN. ``det``
gives 0 there and ``slogdet`` gives ``(0, -inf)``, as numpy does; ``slogdet``'s
derivatives are then NaN, and so are ``det``'s for ``n >= 4``; for ``n <= 3`` ``det``
uses the closed-form cofactors, the exact gradient at any matrix. A non-finite input
matrix on the LAPACK path gives NaN too (LAPACK refuses it).
"""

import numpy as np

from tapejit._kernels.njit import njit

# --- kernel source ---

# Per-point matrices up to this order are factored together over the points; larger
# ones one at a time by LAPACK.
LU_BATCHED_MAX = 16

# Products at one point with at least this many multiply-adds go to BLAS.
LU_BLAS_MIN = 4096


@njit(cache=True, nogil=True)
def _lu_factor(a, trans, n, m):
    # Prepares solves with A (trans == 0) or A^T at the first m points. Returns
    # (F, piv, sing, det, batched). Batched: F (n*n, m) holds each point's LU factors
    # (unit L below the diagonal), piv[c, p] the row swapped with row c at step c, sing
    # whether a pivot was exactly zero, det the determinant. LAPACK: F is a copy of the
    # (transposed) matrix, (n*n, 1) when shared; piv, sing and det are empty.
    wa = a.shape[1]
    batched = n <= LU_BATCHED_MAX
    cols = m if wa > 1 else 1
    F = np.empty((n * n, cols), a.dtype)
    for i in range(n):
        for j in range(n):
            src = j * n + i if trans else i * n + j
            if wa > 1:
                for p in range(cols):
                    F[i * n + j, p] = a[src, p]
            else:
                v = a[src, 0]
                for p in range(cols):
                    F[i * n + j, p] = v
    if not batched:
        return (F, np.empty((0, 1), np.int64), np.empty(0, np.bool_),
                np.empty(0, a.dtype), False)
    m = cols  # a shared matrix is factored once
    piv = np.empty((n, m), np.int64)
    sing = np.zeros(m, np.bool_)
    det = np.ones(m, a.dtype)
    best = np.empty(m, a.dtype)
    # Loops over the points innermost on row views, with selects instead of branches:
    # they vectorize.
    for c in range(n):
        pc = piv[c]
        fcc = F[c * n + c]
        for p in range(m):
            best[p] = abs(fcc[p])
            pc[p] = c
        for r in range(c + 1, n):
            frc = F[r * n + c]
            for p in range(m):
                v = abs(frc[p])
                gt = v > best[p]
                best[p] = v if gt else best[p]
                pc[p] = r if gt else pc[p]
        # Whole rows swap (LAPACK's convention), so the stored L matches P A = L U.
        for r in range(c + 1, n):
            for j in range(n):
                x = F[c * n + j]
                y = F[r * n + j]
                for p in range(m):
                    s = pc[p] == r
                    xp = x[p]
                    yp = y[p]
                    x[p] = yp if s else xp
                    y[p] = xp if s else yp
            for p in range(m):
                det[p] = -det[p] if pc[p] == r else det[p]
        for p in range(m):
            u = fcc[p]
            det[p] *= u
            sing[p] |= u == 0
            # A zero pivot has zeros below it: skip the column (as LAPACK's getrf
            # does) so later pivots and det stay finite.
            best[p] = 1 / u if u != 0 else 0
        for r in range(c + 1, n):
            frc = F[r * n + c]
            for p in range(m):
                frc[p] *= best[p]
            for j in range(c + 1, n):
                x = F[c * n + j]
                y = F[r * n + j]
                for p in range(m):
                    y[p] -= frc[p] * x[p]
    return F, piv, sing, det, True


@njit(cache=True, nogil=True)
def _lu_lapack_solve(A2, B2):
    # LAPACK's solve, or NaN where it refuses (singular or non-finite A or B).
    try:
        return np.linalg.solve(A2, B2)
    except Exception:  # Numba catches no narrower class
        return np.full(B2.shape, np.nan, B2.dtype)


@njit(cache=True, nogil=True)
def _lu_apply_shared(F, piv, sing, Y, n, q, m):
    # _lu_apply with one factorization (F, piv: one column) for all m points.
    if sing[0]:
        for i in range(n * q):
            for p in range(m):
                Y[i, p] = np.nan
        return
    for c in range(n):
        ip = piv[c, 0]
        if ip != c:
            for j in range(q):
                x = Y[c * q + j]
                y = Y[ip * q + j]
                for p in range(m):
                    t = x[p]
                    x[p] = y[p]
                    y[p] = t
    for c in range(n):
        for r in range(c + 1, n):
            f = F[r * n + c, 0]
            for j in range(q):
                x = Y[c * q + j]
                y = Y[r * q + j]
                for p in range(m):
                    y[p] -= f * x[p]
    for c in range(n - 1, -1, -1):
        u = 1 / F[c * n + c, 0]
        for j in range(q):
            x = Y[c * q + j]
            for p in range(m):
                x[p] *= u
        for r in range(c):
            f = F[r * n + c, 0]
            for j in range(q):
                x = Y[c * q + j]
                y = Y[r * q + j]
                for p in range(m):
                    y[p] -= f * x[p]


@njit(cache=True, nogil=True)
def _lu_apply(f, Y, n, q, m):
    # Solves in place at the first m points: Y (n*q, >= m) holds q right-hand sides
    # per point (row i*q + j: row i, column j) and becomes the solution.
    F, piv, sing, _, batched = f
    if q == 0 or n == 0:
        return
    if batched and F.shape[1] == 1 and m > 1:
        _lu_apply_shared(F, piv, sing, Y, n, q, m)
        return
    if batched:
        for c in range(n):
            pc = piv[c]
            for r in range(c + 1, n):
                for j in range(q):
                    x = Y[c * q + j]
                    y = Y[r * q + j]
                    for p in range(m):
                        s = pc[p] == r
                        xp = x[p]
                        yp = y[p]
                        x[p] = yp if s else xp
                        y[p] = xp if s else yp
        for c in range(n):
            for r in range(c + 1, n):
                frc = F[r * n + c]
                for j in range(q):
                    x = Y[c * q + j]
                    y = Y[r * q + j]
                    for p in range(m):
                        y[p] -= frc[p] * x[p]
        inv = np.empty(m, Y.dtype)
        for c in range(n - 1, -1, -1):
            fcc = F[c * n + c]
            for p in range(m):
                inv[p] = 1 / fcc[p]
            for j in range(q):
                x = Y[c * q + j]
                for p in range(m):
                    x[p] *= inv[p]
            for r in range(c):
                frc = F[r * n + c]
                for j in range(q):
                    x = Y[c * q + j]
                    y = Y[r * q + j]
                    for p in range(m):
                        y[p] -= frc[p] * x[p]
        for p in range(m):
            if sing[p]:
                for i in range(n * q):
                    Y[i, p] = np.nan
        return
    A2 = np.empty((n, n), Y.dtype)
    if F.shape[1] == 1:
        # One matrix for all points: one solve over every point's columns.
        for i in range(n):
            for j in range(n):
                A2[i, j] = F[i * n + j, 0]
        # LAPACK refuses a non-finite right-hand side: solve the other points with
        # zeros in its place, so one point's NaN cannot spoil the rest.
        bad = np.zeros(m, np.bool_)
        B2 = np.empty((n, q * m), Y.dtype)
        for i in range(n):
            for j in range(q):
                for p in range(m):
                    v = Y[i * q + j, p]
                    bad[p] |= not np.isfinite(v)
                    B2[i, j * m + p] = v
        for i in range(n):
            for j in range(q):
                for p in range(m):
                    if bad[p]:
                        B2[i, j * m + p] = 0
        X2 = _lu_lapack_solve(A2, B2)
        for i in range(n):
            for j in range(q):
                for p in range(m):
                    Y[i * q + j, p] = np.nan if bad[p] else X2[i, j * m + p]
        return
    B2 = np.empty((n, q), Y.dtype)
    for p in range(m):
        for i in range(n):
            for j in range(n):
                A2[i, j] = F[i * n + j, p]
            for j in range(q):
                B2[i, j] = Y[i * q + j, p]
        X2 = _lu_lapack_solve(A2, B2)
        for i in range(n):
            for j in range(q):
                Y[i * q + j, p] = X2[i, j]


@njit(cache=True, nogil=True, inline="always")
def _lu_swap(s, x, y):
    # (y, x) where s, else (x, y): a row swap as selects.
    return (y if s else x), (x if s else y)


@njit(cache=True, nogil=True)
def _lu3_solve(a, trans, y, m):
    # _lu_apply(_lu_factor(a, trans, 3, m), y, 3, 1, m) for one right-hand side per
    # point, a per-point matrix (or m == 1): the same pivot choices and operations in
    # the same order, so the same bits, each point's elimination in registers and one
    # pass over the points. Row views, selects for the row swaps and each pivot's
    # reciprocal taken once: the loop over the points vectorizes.
    i01, i02, i12 = (3, 6, 7) if trans else (1, 2, 5)
    i10, i20, i21 = (1, 2, 5) if trans else (3, 6, 7)
    a00, a01, a02 = a[0], a[i01], a[i02]
    a10, a11, a12 = a[i10], a[4], a[i12]
    a20, a21, a22 = a[i20], a[i21], a[8]
    y0v, y1v, y2v = y[0], y[1], y[2]
    for p in range(m):
        r00, r01, r02 = a00[p], a01[p], a02[p]
        r10, r11, r12 = a10[p], a11[p], a12[p]
        r20, r21, r22 = a20[p], a21[p], a22[p]
        y0, y1, y2 = y0v[p], y1v[p], y2v[p]
        # column 0: the first largest |entry| is the pivot; its row swaps with row 0
        s1 = abs(r10) > abs(r00)
        s2 = abs(r20) > (abs(r10) if s1 else abs(r00))
        s1 = s1 and not s2  # at most one swap
        r00, r10 = _lu_swap(s1, r00, r10)
        r01, r11 = _lu_swap(s1, r01, r11)
        r02, r12 = _lu_swap(s1, r02, r12)
        y0, y1 = _lu_swap(s1, y0, y1)
        r00, r20 = _lu_swap(s2, r00, r20)
        r01, r21 = _lu_swap(s2, r01, r21)
        r02, r22 = _lu_swap(s2, r02, r22)
        y0, y2 = _lu_swap(s2, y0, y2)
        sing = r00 == 0
        inv0 = 1 / r00
        f = 0.0 if sing else inv0
        r10 *= f
        r20 *= f
        r11 -= r10 * r01
        r12 -= r10 * r02
        r21 -= r20 * r01
        r22 -= r20 * r02
        # column 1
        s = abs(r21) > abs(r11)
        r10, r20 = _lu_swap(s, r10, r20)
        r11, r21 = _lu_swap(s, r11, r21)
        r12, r22 = _lu_swap(s, r12, r22)
        y1, y2 = _lu_swap(s, y1, y2)
        sing |= r11 == 0
        inv1 = 1 / r11
        r21 *= 0.0 if r11 == 0 else inv1
        r22 -= r21 * r12
        sing |= r22 == 0
        # substitutions
        y1 -= r10 * y0
        y2 -= r20 * y0
        y2 -= r21 * y1
        y2 *= 1 / r22
        y0 -= r02 * y2
        y1 -= r12 * y2
        y1 *= inv1
        y0 -= r01 * y1
        y0 *= inv0
        y0v[p] = np.nan if sing else y0
        y1v[p] = np.nan if sing else y1
        y2v[p] = np.nan if sing else y2


@njit(cache=True, nogil=True)
def _lu_solve(a, trans, Y, n, q, m):
    # Y = op(A)^{-1} Y in place at the first m points (op(A) = A^T when trans). One
    # right-hand side of a 3x3 float64 system per point takes the unrolled elimination.
    if n == 3 and q == 1 and Y.itemsize == 8 and (a.shape[1] > 1 or m == 1):
        _lu3_solve(a, trans, Y, m)
        return
    _lu_apply(_lu_factor(a, trans, n, m), Y, n, q, m)


@njit(cache=True, nogil=True)
def _lu_gemm(alpha, P, tp, Q, tq, out, n1, n2, n3, m):
    # out[i*n3 + j, p] += alpha * (op(P) @ op(Q))[i, j] at the first m points, op(P)
    # n1 x n2 (P^T when tp, P stored n2 x n1), op(Q) n2 x n3 (likewise).
    if n1 == 0 or n3 == 0 or n2 == 0:
        return
    if m == 1 and n1 * n2 * n3 >= LU_BLAS_MIN:
        P2 = np.empty((n1, n2), out.dtype)
        Q2 = np.empty((n2, n3), out.dtype)
        for i in range(n1):
            for t in range(n2):
                P2[i, t] = P[t * n1 + i, 0] if tp else P[i * n2 + t, 0]
        for t in range(n2):
            for j in range(n3):
                Q2[t, j] = Q[j * n2 + t, 0] if tq else Q[t * n3 + j, 0]
        R2 = np.dot(P2, Q2)
        for i in range(n1):
            for j in range(n3):
                out[i * n3 + j, 0] += alpha * R2[i, j]
        return
    for i in range(n1):
        for j in range(n3):
            o = out[i * n3 + j]
            for t in range(n2):
                x = P[t * n1 + i] if tp else P[i * n2 + t]
                y = Q[j * n2 + t] if tq else Q[t * n3 + j]
                for p in range(m):
                    o[p] += alpha * x[p] * y[p]


@njit(cache=True, nogil=True)
def _lu_identity(n, m, dtype_of):
    # n x n identity at m points, in the family layout.
    Y = np.zeros((n * n, m), dtype_of.dtype)
    for i in range(n):
        for p in range(m):
            Y[i * n + i, p] = 1
    return Y


@njit(cache=True, nogil=True)
def _lu_inv_t(a, n, m, dtype_of):
    # A^{-T} at the first m points (NaN where A is singular).
    Z = _lu_identity(n, m, dtype_of)
    _lu_apply(_lu_factor(a, 1, n, m), Z, n, n, m)
    return Z


# -- solve: X = A^{-1} B, attrs (n, k) ---------------------------------------------------

@njit(cache=True, nogil=True)
def _lu_rhs_into(b, r, n, k, m):
    # r = B at the first m points (one column of b: shared).
    wb = b.shape[1]
    for i in range(n * k):
        for p in range(m):
            r[i, p] = b[i, p if wb > 1 else 0]


@njit(cache=True, nogil=True)
def _lu_solve_into(a, b, r, n, k, m):
    # r = A^{-1} B at the first m points; returns the factorization for more solves.
    _lu_rhs_into(b, r, n, k, m)
    f = _lu_factor(a, 0, n, m)
    _lu_apply(f, r, n, k, m)
    return f


@njit(cache=True, nogil=True)
def solve_forward(at, a, b, c, r, m):
    n = np.int64(at[0])
    k = np.int64(at[1])
    _lu_rhs_into(b, r, n, k, m)
    _lu_solve(a, False, r, n, k, m)


@njit(cache=True, nogil=True)
def solve_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    # S = A^{-T} G; B gets S, A gets -S X^T.
    n = np.int64(at[0])
    k = np.int64(at[1])
    if (da == 0 and db == 0) or k == 0:
        return
    S = np.empty((n * k, m), r.dtype)
    for i in range(n * k):
        for p in range(m):
            S[i, p] = gr[i, p]
    _lu_solve(a, True, S, n, k, m)
    if db:
        for i in range(n * k):
            for p in range(m):
                gb[i, p] += S[i, p]
    if da:
        _lu_gemm(-1.0, S, False, r, True, ga, n, k, n, m)


@njit(cache=True, nogil=True)
def solve_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    # Xdot = A^{-1} (Bdot - Adot X), all directions in one solve.
    n = np.int64(at[0])
    k = np.int64(at[1])
    nv = tr.shape[1]
    f = _lu_solve_into(a, b, r, n, k, m)
    q = nv * k
    T = np.zeros((n * q, m), r.dtype)
    for i in range(n):
        for v in range(nv):
            for j in range(k):
                o = i * q + v * k + j
                if db:
                    for p in range(m):
                        T[o, p] = tb[i * k + j, v, p]
                if da:
                    for t in range(n):
                        for p in range(m):
                            T[o, p] -= ta[i * n + t, v, p] * r[t * k + j, p]
    _lu_apply(f, T, n, q, m)
    for i in range(n):
        for v in range(nv):
            for j in range(k):
                for p in range(m):
                    tr[i * k + j, v, p] = T[i * q + v * k + j, p]


@njit(cache=True, nogil=True)
def solve_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
                 da, db, dc, m):
    # S = A^{-T} G and its tangent Sdot = A^{-T} (Gdot - Adot^T S);
    # B: S and Sdot; A: -S X^T and -(Sdot X^T + S Xdot^T).
    n = np.int64(at[0])
    k = np.int64(at[1])
    nv = gdr.shape[1]
    if (da == 0 and db == 0) or k == 0:
        return
    f = _lu_factor(a, 1, n, m)
    S = np.empty((n * k, m), r.dtype)
    for i in range(n * k):
        for p in range(m):
            S[i, p] = gr[i, p]
    _lu_apply(f, S, n, k, m)
    q = nv * k
    T = np.empty((n * q, m), r.dtype)
    for i in range(n):
        for v in range(nv):
            for j in range(k):
                for p in range(m):
                    T[i * q + v * k + j, p] = gdr[i * k + j, v, p]
    if da:
        # T -= Adot^T S, direction by direction.
        for v in range(nv):
            for i in range(n):
                for j in range(k):
                    o = i * q + v * k + j
                    for t in range(n):
                        for p in range(m):
                            T[o, p] -= ta[t * n + i, v, p] * S[t * k + j, p]
    _lu_apply(f, T, n, q, m)
    if db:
        for i in range(n * k):
            for p in range(m):
                gb[i, p] += S[i, p]
        for i in range(n):
            for v in range(nv):
                for j in range(k):
                    for p in range(m):
                        gdb[i * k + j, v, p] += T[i * q + v * k + j, p]
    if da:
        _lu_gemm(-1.0, S, False, r, True, ga, n, k, n, m)
        Tv = np.empty((n * k, m), r.dtype)
        for v in range(nv):
            for i in range(n):
                for j in range(k):
                    for p in range(m):
                        Tv[i * k + j, p] = T[i * q + v * k + j, p]
            _lu_gemm(-1.0, Tv, False, r, True, gda[:, v, :], n, k, n, m)
            _lu_gemm(-1.0, S, False, tr[:, v, :], True, gda[:, v, :], n, k, n, m)


# -- inv: R = A^{-1}, attrs (n,) ---------------------------------------------------------

@njit(cache=True, nogil=True)
def _lu_inv_into(a, r, n, m):
    mm = m if a.shape[1] > 1 else 1
    for i in range(n * n):
        for p in range(mm):
            r[i, p] = 0
    for i in range(n):
        for p in range(mm):
            r[i * n + i, p] = 1
    _lu_apply(_lu_factor(a, 0, n, mm), r, n, n, mm)
    for i in range(n * n):
        for p in range(mm, m):
            r[i, p] = r[i, 0]


@njit(cache=True, nogil=True)
def inv_forward(at, a, b, c, r, m):
    _lu_inv_into(a, r, np.int64(at[0]), m)


@njit(cache=True, nogil=True)
def inv_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    # Abar = -R^T G R^T.
    n = np.int64(at[0])
    if da == 0 or n == 0:
        return
    H = np.zeros((n * n, m), r.dtype)
    _lu_gemm(1.0, r, True, gr, False, H, n, n, n, m)
    _lu_gemm(-1.0, H, False, r, True, ga, n, n, n, m)


@njit(cache=True, nogil=True)
def inv_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    # Rdot = -R Adot R.
    n = np.int64(at[0])
    nv = tr.shape[1]
    _lu_inv_into(a, r, n, m)
    for i in range(n * n):
        for v in range(nv):
            for p in range(m):
                tr[i, v, p] = 0
    if da == 0 or n == 0:
        return
    H = np.empty((n * n, m), r.dtype)
    for v in range(nv):
        H[:, :] = 0
        _lu_gemm(1.0, r, False, ta[:, v, :], False, H, n, n, n, m)
        _lu_gemm(-1.0, H, False, r, False, tr[:, v, :], n, n, n, m)


@njit(cache=True, nogil=True)
def inv_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
               da, db, dc, m):
    # Abar = -R^T G R^T = -H R^T with H = R^T G, K = G R^T; its tangent
    # -(Rdot^T K + R^T Gdot R^T + H Rdot^T).
    n = np.int64(at[0])
    nv = gdr.shape[1]
    if da == 0 or n == 0:
        return
    H = np.zeros((n * n, m), r.dtype)
    K = np.zeros((n * n, m), r.dtype)
    _lu_gemm(1.0, r, True, gr, False, H, n, n, n, m)
    _lu_gemm(1.0, gr, False, r, True, K, n, n, n, m)
    _lu_gemm(-1.0, H, False, r, True, ga, n, n, n, m)
    T = np.empty((n * n, m), r.dtype)
    for v in range(nv):
        g = gda[:, v, :]
        _lu_gemm(-1.0, tr[:, v, :], True, K, False, g, n, n, n, m)
        _lu_gemm(-1.0, H, False, tr[:, v, :], True, g, n, n, n, m)
        T[:, :] = 0
        _lu_gemm(1.0, r, True, gdr[:, v, :], False, T, n, n, n, m)
        _lu_gemm(-1.0, T, False, r, True, g, n, n, n, m)


# -- det: attrs (n,) ---------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _lu_cofactors(a, n, m):
    # C[i, j] = d det / d A[i, j] in closed form (n <= 3), exact at any matrix.
    C = np.empty((n * n, m), a.dtype)
    if n == 1:
        for p in range(m):
            C[0, p] = 1
    elif n == 2:
        for p in range(m):
            C[0, p] = a[3, p]
            C[1, p] = -a[2, p]
            C[2, p] = -a[1, p]
            C[3, p] = a[0, p]
    elif n == 3:
        # Cyclic indices give the signed cofactors of a 3 x 3 matrix directly.
        for i in range(3):
            i1 = 3 * ((i + 1) % 3)
            i2 = 3 * ((i + 2) % 3)
            for j in range(3):
                j1 = (j + 1) % 3
                j2 = (j + 2) % 3
                for p in range(m):
                    C[i * 3 + j, p] = (a[i1 + j1, p] * a[i2 + j2, p]
                                       - a[i1 + j2, p] * a[i2 + j1, p])
    return C


@njit(cache=True, nogil=True)
def _lu_cofactors_dot(a, t, n, m):
    # The derivative of _lu_cofactors in direction t.
    D = np.zeros((n * n, m), a.dtype)
    if n == 2:
        for p in range(m):
            D[0, p] = t[3, p]
            D[1, p] = -t[2, p]
            D[2, p] = -t[1, p]
            D[3, p] = t[0, p]
    elif n == 3:
        for i in range(3):
            i1 = 3 * ((i + 1) % 3)
            i2 = 3 * ((i + 2) % 3)
            for j in range(3):
                j1 = (j + 1) % 3
                j2 = (j + 2) % 3
                for p in range(m):
                    D[i * 3 + j, p] = (t[i1 + j1, p] * a[i2 + j2, p]
                                       + a[i1 + j1, p] * t[i2 + j2, p]
                                       - t[i1 + j2, p] * a[i2 + j1, p]
                                       - a[i1 + j2, p] * t[i2 + j1, p])
    return D


@njit(cache=True, nogil=True)
def _lu_det_lapack(a, n, p, want_log):
    # LAPACK's (sign, log|det|) or (det, 0) of point p; NaN where it refuses the input.
    A2 = np.empty((n, n), a.dtype)
    for i in range(n):
        for j in range(n):
            A2[i, j] = a[i * n + j, p]
    try:
        if want_log:
            s, la = np.linalg.slogdet(A2)
            return float(s), float(la)
        return float(np.linalg.det(A2)), 0.0
    except Exception:  # Numba catches no narrower class
        return np.nan, np.nan


@njit(cache=True, nogil=True)
def _lu_logdet_into(a, r, n, m, want_log):
    # det (want_log False) into r[0], or sign and log|det| into r[0], r[1].
    mm = m if a.shape[1] > 1 else 1
    if n <= 3 and not want_log:
        C = _lu_cofactors(a, n, mm)
        for p in range(mm):
            s = 1.0 if n == 0 else 0.0
            for j in range(n):
                s += a[j, p] * C[j, p]
            r[0, p] = s
    elif n <= LU_BATCHED_MAX:
        F, piv, _, det, _ = _lu_factor(a, 0, n, mm)
        for p in range(mm):
            if want_log:
                s = 1.0
                la = 0.0
                for c in range(n):
                    u = F[c * n + c, p]
                    s = -s if piv[c, p] != c else s
                    s = -s if u < 0 else (0.0 if u == 0 else s)
                    la += np.log(abs(u))
                r[0, p] = s
                r[1, p] = la
            else:
                r[0, p] = det[p]
    else:
        for p in range(mm):
            s, la = _lu_det_lapack(a, n, p, want_log)
            r[0, p] = s
            if want_log:
                r[1, p] = la
    for i in range(2 if want_log else 1):
        for p in range(mm, m):
            r[i, p] = r[i, 0]


@njit(cache=True, nogil=True)
def _lu_det_grad(a, r, n, m):
    # d det / dA: closed-form cofactors for n <= 3; det * A^{-T} beyond (NaN when
    # singular: A^{-T} is NaN there).
    if n <= 3:
        return _lu_cofactors(a, n, m)
    Z = _lu_inv_t(a, n, m, r)
    for i in range(n * n):
        for p in range(m):
            Z[i, p] *= r[0, p]
    return Z


@njit(cache=True, nogil=True)
def det_forward(at, a, b, c, r, m):
    _lu_logdet_into(a, r, np.int64(at[0]), m, False)


@njit(cache=True, nogil=True)
def det_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    n = np.int64(at[0])
    if da == 0 or n == 0:
        return
    C = _lu_det_grad(a, r, n, m)
    for i in range(n * n):
        for p in range(m):
            ga[i, p] += gr[0, p] * C[i, p]


@njit(cache=True, nogil=True)
def det_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    n = np.int64(at[0])
    nv = tr.shape[1]
    _lu_logdet_into(a, r, n, m, False)
    for v in range(nv):
        for p in range(m):
            tr[0, v, p] = 0
    if da == 0 or n == 0:
        return
    C = _lu_det_grad(a, r, n, m)
    for v in range(nv):
        for i in range(n * n):
            for p in range(m):
                tr[0, v, p] += C[i, p] * ta[i, v, p]


@njit(cache=True, nogil=True)
def det_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
               da, db, dc, m):
    # A: g C, tangent gdot C + g Cdot. Beyond n = 3, C = det Z with Z = A^{-T}:
    # Cdot = detdot Z - det Z Adot^T Z.
    n = np.int64(at[0])
    nv = gdr.shape[1]
    if da == 0 or n == 0:
        return
    C = _lu_det_grad(a, r, n, m)
    for i in range(n * n):
        for p in range(m):
            ga[i, p] += gr[0, p] * C[i, p]
    Z = np.empty((0, m), r.dtype)
    if n > 3:
        Z = _lu_inv_t(a, n, m, r)
    H = np.empty((n * n, m), r.dtype)
    for v in range(nv):
        g = gda[:, v, :]
        for i in range(n * n):
            for p in range(m):
                g[i, p] += gdr[0, v, p] * C[i, p]
        if n <= 3:
            D = _lu_cofactors_dot(a, ta[:, v, :], n, m)
            for i in range(n * n):
                for p in range(m):
                    g[i, p] += gr[0, p] * D[i, p]
            continue
        H[:, :] = 0
        _lu_gemm(1.0, Z, False, ta[:, v, :], True, H, n, n, n, m)
        for i in range(n * n):
            for p in range(m):
                g[i, p] += gr[0, p] * tr[0, v, p] * Z[i, p]
        # H <- -det g * H, then g += H Z.
        for i in range(n * n):
            for p in range(m):
                H[i, p] *= -gr[0, p] * r[0, p]
        _lu_gemm(1.0, H, False, Z, False, g, n, n, n, m)


# -- slogdet: (sign, log|det|), attrs (n,) -----------------------------------------------

@njit(cache=True, nogil=True)
def slogdet_forward(at, a, b, c, r, m):
    _lu_logdet_into(a, r, np.int64(at[0]), m, True)


@njit(cache=True, nogil=True)
def slogdet_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    # The sign has a zero derivative; d log|det| = tr(A^{-1} dA): A gets g Z, Z = A^{-T}.
    n = np.int64(at[0])
    if da == 0 or n == 0:
        return
    Z = _lu_inv_t(a, n, m, r)
    for i in range(n * n):
        for p in range(m):
            ga[i, p] += gr[1, p] * Z[i, p]


@njit(cache=True, nogil=True)
def slogdet_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    n = np.int64(at[0])
    nv = tr.shape[1]
    _lu_logdet_into(a, r, n, m, True)
    for v in range(nv):
        for p in range(m):
            tr[0, v, p] = 0
            tr[1, v, p] = 0
    if da == 0 or n == 0:
        return
    Z = _lu_inv_t(a, n, m, r)
    for v in range(nv):
        for i in range(n * n):
            for p in range(m):
                tr[1, v, p] += Z[i, p] * ta[i, v, p]


@njit(cache=True, nogil=True)
def slogdet_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
                   da, db, dc, m):
    # A: g Z, tangent gdot Z - g Z Adot^T Z.
    n = np.int64(at[0])
    nv = gdr.shape[1]
    if da == 0 or n == 0:
        return
    Z = _lu_inv_t(a, n, m, r)
    for i in range(n * n):
        for p in range(m):
            ga[i, p] += gr[1, p] * Z[i, p]
    H = np.empty((n * n, m), r.dtype)
    for v in range(nv):
        g = gda[:, v, :]
        for i in range(n * n):
            for p in range(m):
                g[i, p] += gdr[1, v, p] * Z[i, p]
        H[:, :] = 0
        _lu_gemm(1.0, Z, False, ta[:, v, :], True, H, n, n, n, m)
        for i in range(n * n):
            for p in range(m):
                H[i, p] *= -gr[1, p]
        _lu_gemm(1.0, H, False, Z, False, g, n, n, n, m)
