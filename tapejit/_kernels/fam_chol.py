"""Kernel routines of the ``cholesky`` and ``solve_triangular`` instruction families.

Both follow the family calling convention (``docs``: instruction families): operands
and results are ``(len, w)`` blocks, a matrix stored row-major down the first axis.

Every routine copies its operands into contiguous temporaries of shape ``(rows, mm)``
(``mm``: the points it computes, 1 for an operand shared by all points) and works on
those with a few primitives (``_chol_trsm``, ``_chol_mm``, ``_chol_factor``). Each
primitive has two paths: with one column, the temporary is viewed as a matrix and the
work goes to LAPACK/BLAS (``np.linalg.cholesky``, ``np.dot``) or a blocked substitution;
with several, a loop over the elements with the points innermost (it vectorizes over
points, which is what many small matrices need). A triangular matrix shared by all
points against per-point right-hand sides is one solve with ``k * m`` right-hand sides.

cholesky, attrs ``(n,)``: ``r = L``, the lower factor of the symmetric matrix whose
lower triangle is ``a`` (the strict upper triangle of ``a`` is never read, as in
``np.linalg.cholesky``); zeros above the diagonal. A matrix that is not positive
definite (or has NaN) gives NaN for all of its ``L``, never an exception.

solve_triangular, attrs ``(n, k, lower, trans, unit_diagonal)``: ``r = X`` with
``op(A) X = B``, ``A = a`` (n x n, only the triangle named by ``lower`` read, and not its
diagonal with ``unit_diagonal``), ``op(A) = A`` for ``trans == 0`` and ``A^T`` for 1,
``B = b`` (n x k), as ``scipy.linalg.solve_triangular``. A zero on the diagonal gives
NaN for all of that point's ``X``, never an exception.

Both give NaN for the whole result of a point where they fail, so checking one element
of the result tells a failed point (the recorder's guard does that).
"""

import numpy as np

from tapejit._kernels.njit import njit

# --- kernel source ---

# Block rows of the blocked substitution: the updates between blocks go to gemm.
_CHOL_NB = 64


@njit(cache=True, nogil=True)
def _chol_take(src, rows, m):
    # A contiguous (rows, m) copy of the first m points of src (one column: shared).
    out = np.empty((rows, m), src.dtype)
    if m == 1:
        for i in range(rows):
            out[i, 0] = src[i, 0]
        return out
    one = src.shape[1] == 1
    for i in range(rows):
        for p in range(m):
            out[i, p] = src[i, 0 if one else p]
    return out


@njit(cache=True, nogil=True)
def _chol_tri(src, n, m, lower, diag):
    # The triangle (lower or upper) of the n x n matrices of src, zero elsewhere;
    # diag 0: src's diagonal, 1: ones (a unit diagonal), 2: zeros (its tangent).
    out = np.zeros((n * n, m), src.dtype)
    one = src.shape[1] == 1
    if m == 1:
        for i in range(n):
            lo = 0 if lower else i
            hi = i + 1 if lower else n
            for j in range(lo, hi):
                out[i * n + j, 0] = src[i * n + j, 0]
            if diag != 0:
                out[i * n + i, 0] = 1.0 if diag == 1 else 0.0
        return out
    for i in range(n):
        lo = 0 if lower else i
        hi = i + 1 if lower else n
        for j in range(lo, hi):
            q = i * n + j
            if i == j and diag != 0:
                v = 1.0 if diag == 1 else 0.0
                for p in range(m):
                    out[q, p] = v
            else:
                for p in range(m):
                    out[q, p] = src[q, 0 if one else p]
    return out


@njit(cache=True, nogil=True)
def _chol_sym(src, n, m):
    # The symmetric matrices whose lower triangles are those of src.
    out = np.empty((n * n, m), src.dtype)
    one = src.shape[1] == 1
    for i in range(n):
        for j in range(i + 1):
            for p in range(m):
                v = src[i * n + j, 0 if one else p]
                out[i * n + j, p] = v
                out[j * n + i, p] = v
    return out


@njit(cache=True, nogil=True)
def _chol_transpose(x, n1, n2):
    # The transposes of the n1 x n2 matrices of x.
    m = x.shape[1]
    out = np.empty((n2 * n1, m), x.dtype)
    for i in range(n1):
        for j in range(n2):
            for p in range(m):
                out[j * n1 + i, p] = x[i * n2 + j, p]
    return out


@njit(cache=True, nogil=True)
def _chol_phi(x, n):
    # In place: the lower triangle with the diagonal halved (Murray's Phi).
    m = x.shape[1]
    for i in range(n):
        for p in range(m):
            x[i * n + i, p] *= 0.5
        for j in range(i + 1, n):
            for p in range(m):
                x[i * n + j, p] = 0.0


@njit(cache=True, nogil=True)
def _chol_store(dst, x, m):
    # dst[:, p] = x[:, p] for the m points (x with one column: the same for all).
    if m == 1:
        for i in range(x.shape[0]):
            dst[i, 0] = x[i, 0]
        return
    one = x.shape[1] == 1
    for i in range(x.shape[0]):
        for p in range(m):
            dst[i, p] = x[i, 0 if one else p]


@njit(cache=True, nogil=True)
def _chol_add(dst, x, m, sign):
    # dst += sign * x over the m points.
    for i in range(x.shape[0]):
        for p in range(m):
            dst[i, p] += sign * x[i, p]


@njit(cache=True, nogil=True)
def _chol_sub_tri(dst, x, n, m, lower, strict):
    # dst -= the triangle of x that the operand's matrix reads (strict: no diagonal).
    for i in range(n):
        lo = 0 if lower else i
        hi = i + 1 if lower else n
        for j in range(lo, hi):
            if strict and i == j:
                continue
            q = i * n + j
            for p in range(m):
                dst[q, p] -= x[q, p]


@njit(cache=True, nogil=True)
def _chol_fold(dst, z, n, m):
    # dst += the adjoint of the lower triangle that a symmetric matrix is read from,
    # given the adjoint z of the full matrix: z_ij + z_ji below the diagonal, z_ii on
    # it, nothing above (those entries are never read).
    for i in range(n):
        for j in range(i):
            for p in range(m):
                dst[i * n + j, p] += z[i * n + j, p] + z[j * n + i, p]
        for p in range(m):
            dst[i * n + i, p] += z[i * n + i, p]


@njit(cache=True, nogil=True)
def _chol_mm(a, ta, b, tb, n1, n2, n3):
    # op(A) @ op(B) for each point: op(A) is n1 x n2 (A stored n2 x n1 when ta),
    # op(B) is n2 x n3 (B stored n3 x n2 when tb). a and b have the same columns.
    m = a.shape[1]
    if m == 1:
        if n1 == 0 or n2 == 0 or n3 == 0:
            return np.zeros((n1 * n3, 1), a.dtype)
        if ta and tb:
            c2 = np.dot(a.reshape((n2, n1)).T, b.reshape((n3, n2)).T)
        elif ta:
            c2 = np.dot(a.reshape((n2, n1)).T, b.reshape((n2, n3)))
        elif tb:
            c2 = np.dot(a.reshape((n1, n2)), b.reshape((n3, n2)).T)
        else:
            c2 = np.dot(a.reshape((n1, n2)), b.reshape((n2, n3)))
        return c2.reshape((n1 * n3, 1))
    out = np.zeros((n1 * n3, m), a.dtype)
    for i in range(n1):
        for j in range(n3):
            q = i * n3 + j
            for s in range(n2):
                qa = s * n1 + i if ta else i * n2 + s
                qb = j * n2 + s if tb else s * n3 + j
                for p in range(m):
                    out[q, p] += a[qa, p] * b[qb, p]
    return out


@njit(cache=True, nogil=True)
def _chol_block(t2, x2, s, e, fwd, tr):
    # Substitution within the diagonal block [s, e) of op(T) X = X (in place), T an
    # n x n triangular matrix (op(T) = T^T when tr; op(T) lower when fwd), the other
    # blocks' contributions already subtracted. Rows of T are read contiguously: as
    # dot products when op(T) = T, as axpy updates when op(T) = T^T.
    kc = x2.shape[1]
    for step in range(e - s):
        i = s + step if fwd else e - 1 - step
        lo = s if fwd else i + 1
        hi = i if fwd else e
        if not tr:
            for j in range(lo, hi):
                c = t2[i, j]
                for q in range(kc):
                    x2[i, q] -= c * x2[j, q]
            d = t2[i, i]
            for q in range(kc):
                x2[i, q] /= d
        else:
            # column i of op(T) is row i of T: finish x_i, then update the rest
            d = t2[i, i]
            for q in range(kc):
                x2[i, q] /= d
            lo2 = i + 1 if fwd else s
            hi2 = e if fwd else i
            for j in range(lo2, hi2):
                c = t2[i, j]
                for q in range(kc):
                    x2[j, q] -= c * x2[i, q]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _chol_rowdot(ti, xv, lo, hi):
    # sum of ti[j] * xv[j] over [lo, hi); reassociation lets it vectorize (no
    # assumption about NaN or inf)
    acc = 0.0
    for j in range(lo, hi):
        acc += ti[j] * xv[j]
    return acc


@njit(cache=True, nogil=True)
def _chol_trsv(t2, xv, fwd, tr):
    # op(T) x = x in place for one vector x (contiguous): row dot products when
    # op(T) = T, axpy updates along rows of T when op(T) = T^T.
    n = t2.shape[0]
    if not tr:
        # one loop per direction: a loop-invariant range lets the dot product vectorize
        if fwd:
            for i in range(n):
                xv[i] = (xv[i] - _chol_rowdot(t2[i], xv, 0, i)) / t2[i, i]
        else:
            for i in range(n - 1, -1, -1):
                xv[i] = (xv[i] - _chol_rowdot(t2[i], xv, i + 1, n)) / t2[i, i]
        return
    for step in range(n):
        i = step if fwd else n - 1 - step
        ti = t2[i]
        xv[i] /= ti[i]
        xi = xv[i]
        lo = i + 1 if fwd else 0
        hi = n if fwd else i
        for j in range(lo, hi):
            xv[j] -= ti[j] * xi


@njit(cache=True, nogil=True)
def _chol_trsm_dense(t2, x2, lower, tr):
    # op(T) X = X in place for one n x n matrix T and an n x kc block X.
    n = t2.shape[0]
    kc = x2.shape[1]
    fwd = lower != tr
    if kc == 1:
        _chol_trsv(t2, x2.reshape(n), fwd, tr)
        return
    if kc < 8 or n <= _CHOL_NB:
        _chol_block(t2, x2, 0, n, fwd, tr)
        return
    nblocks = (n + _CHOL_NB - 1) // _CHOL_NB
    for blk in range(nblocks):
        if fwd:
            s = blk * _CHOL_NB
            e = min(s + _CHOL_NB, n)
            lo, hi = 0, s
        else:
            e = n - blk * _CHOL_NB
            s = max(e - _CHOL_NB, 0)
            lo, hi = e, n
        if hi > lo:
            if tr:
                tb = np.ascontiguousarray(t2[lo:hi, s:e].T)
            else:
                tb = np.ascontiguousarray(t2[s:e, lo:hi])
            x2[s:e] -= np.dot(tb, x2[lo:hi])
        _chol_block(t2, x2, s, e, fwd, tr)


@njit(cache=True, nogil=True)
def _chol_trsm(t, x, n, k, lower, tr):
    # op(T) X = X in place, for each point: t (n*n, 1 or m) triangular with its
    # diagonal, x (n*k, m). One column of t: one dense solve with k*m right-hand sides.
    m = x.shape[1]
    if n == 0 or k == 0 or m == 0:
        return
    if t.shape[1] == 1:
        _chol_trsm_dense(t.reshape((n, n)), x.reshape((n, k * m)), lower, tr)
        return
    fwd = lower != tr
    for step in range(n):
        i = step if fwd else n - 1 - step
        lo = 0 if fwd else i + 1
        hi = i if fwd else n
        for j in range(lo, hi):
            qt = j * n + i if tr else i * n + j
            for c in range(k):
                for p in range(m):
                    x[i * k + c, p] -= t[qt, p] * x[j * k + c, p]
        for c in range(k):
            for p in range(m):
                x[i * k + c, p] /= t[i * n + i, p]


@njit(cache=True, nogil=True)
def _chol_factor(a, n):
    # The Cholesky factors of the symmetric matrices whose lower triangles are in a
    # (n*n, mm); NaN for all of a factor whose matrix is not positive definite.
    m = a.shape[1]
    if m == 1:
        # LAPACK's "not positive definite" arrives as an exception: NaN instead
        try:
            return np.linalg.cholesky(a.reshape((n, n))).reshape((n * n, 1))
        except Exception:
            return np.full((n * n, 1), np.nan, a.dtype)
    out = np.zeros((n * n, m), a.dtype)
    bad = np.zeros(m, np.bool_)
    acc = np.empty(m, a.dtype)
    for j in range(n):
        for p in range(m):
            acc[p] = a[j * n + j, p]
        for s in range(j):
            for p in range(m):
                acc[p] -= out[j * n + s, p] * out[j * n + s, p]
        for p in range(m):
            ok = acc[p] > 0.0
            bad[p] |= not ok
            out[j * n + j, p] = np.sqrt(acc[p]) if ok else np.nan
        for i in range(j + 1, n):
            for p in range(m):
                acc[p] = a[i * n + j, p]
            for s in range(j):
                for p in range(m):
                    acc[p] -= out[i * n + s, p] * out[j * n + s, p]
            for p in range(m):
                out[i * n + j, p] = acc[p] / out[j * n + j, p]
    for p in range(m):
        if bad[p]:
            for q in range(n * n):
                out[q, p] = np.nan
    return out


# -- cholesky ---------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _chol_points(a, m):
    # The points to compute: 1 when the operand is shared by all.
    return 1 if a.shape[1] == 1 else m


@njit(cache=True, nogil=True)
def cholesky_forward(at, a, b, c, r, m):
    n = np.int64(at[0])
    mm = _chol_points(a, m)
    _chol_store(r, _chol_factor(_chol_tri(a, n, mm, True, 0), n), m)


@njit(cache=True, nogil=True)
def _chol_lt_lower(lf, g, n):
    # Phi(L^T G) for lower triangular L and G (zero above the diagonal). At one point
    # only its lower triangle is formed, by blocks of rows: block I needs L's rows and
    # G's rows from I on and G's columns up to I's end, a third of the full product.
    m = lf.shape[1]
    if m > 1 or n <= _CHOL_NB:
        y = _chol_mm(lf, True, g, False, n, n, n)
        _chol_phi(y, n)
        return y
    l2 = lf.reshape((n, n))
    g2 = g.reshape((n, n))
    y2 = np.zeros((n, n), lf.dtype)
    for i0 in range(0, n, _CHOL_NB):
        i1 = min(i0 + _CHOL_NB, n)
        lt = np.ascontiguousarray(l2[i0:, i0:i1].T)
        gb = np.ascontiguousarray(g2[i0:, :i1])
        y2[i0:i1, :i1] = np.dot(lt, gb)
    y = y2.reshape((n * n, 1))
    _chol_phi(y, n)
    return y


@njit(cache=True, nogil=True)
def _chol_rev_parts(n, lf, g):
    # Y = L^{-T} P and Z = S^T, S = L^{-T} P L^{-1}, P = Phi(L^T tril(G)).
    y = _chol_lt_lower(lf, g, n)
    _chol_trsm(lf, y, n, n, True, True)
    z = _chol_transpose(y, n, n)
    _chol_trsm(lf, z, n, n, True, True)
    return y, z


@njit(cache=True, nogil=True)
def _chol_rev_blocked(l2, g2):
    # In place, for one n x n matrix: g2 (L's adjoint, lower triangle, zeros above)
    # becomes the adjoint of A's lower triangle (L = chol(A)). Block columns [j0, j1)
    # are taken from the last. In the left-looking blocked factorization each is
    # D = chol(A_D - R R^T) and C = (A_C - B R^T) D^{-T}: D and C its diagonal block and
    # the rows below it, R and B the same rows left of the block. Reversing those steps
    # is gemm work (about 2/3 n^3 multiply-adds, half of the whole-matrix rule's), and
    # each diagonal block takes the whole-matrix rule on its own.
    n = l2.shape[0]
    j1 = n
    while j1 > 0:
        j0 = max(j1 - _CHOL_NB, 0)
        k = j1 - j0
        dm = np.ascontiguousarray(l2[j0:j1, j0:j1])
        if j1 < n:
            # Mbar = Cbar D^{-1}, as its transpose D^{-T} Cbar^T
            mt = np.ascontiguousarray(g2[j1:, j0:j1].T)
            _chol_trsm_dense(dm, mt, True, True)
            g2[j1:, j0:j1] = mt.T
            g2[j0:j1, j0:j1] -= np.dot(mt, np.ascontiguousarray(l2[j1:, j0:j1]))
            if j0 > 0:
                g2[j1:, :j0] -= np.dot(np.ascontiguousarray(mt.T),
                                       np.ascontiguousarray(l2[j0:j1, :j0]))
                g2[j0:j1, :j0] -= np.dot(mt, np.ascontiguousarray(l2[j1:, :j0]))
        dbar = np.zeros((k * k, 1), l2.dtype)
        for i in range(k):
            for j in range(i + 1):
                dbar[i * k + j, 0] = g2[j0 + i, j0 + j]
        _, z = _chol_rev_parts(k, dm.reshape((k * k, 1)), dbar)
        nlow = np.zeros((k * k, 1), l2.dtype)
        _chol_fold(nlow, z, k, 1)
        n2 = nlow.reshape((k, k))
        g2[j0:j1, j0:j1] = n2
        if j0 > 0:
            g2[j0:j1, :j0] -= np.dot(n2 + n2.T, np.ascontiguousarray(l2[j0:j1, :j0]))
        j1 = j0


@njit(cache=True, nogil=True)
def cholesky_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    if not da:
        return
    n = np.int64(at[0])
    if m == 1 and n > _CHOL_NB:
        l2 = _chol_take(r, n * n, 1).reshape((n, n))
        g2 = _chol_tri(gr, n, 1, True, 0).reshape((n, n))
        _chol_rev_blocked(l2, g2)
        for i in range(n):
            for j in range(i + 1):
                ga[i * n + j, 0] += g2[i, j]
        return
    lf = _chol_take(r, n * n, m)
    _, z = _chol_rev_parts(n, lf, _chol_tri(gr, n, m, True, 0))
    _chol_fold(ga, z, n, m)


@njit(cache=True, nogil=True)
def cholesky_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    n = np.int64(at[0])
    mm = _chol_points(a, m)
    lf = _chol_factor(_chol_tri(a, n, mm, True, 0), n)
    _chol_store(r, lf, m)
    for v in range(tr.shape[1]):
        if not da:
            for q in range(n * n):
                for p in range(m):
                    tr[q, v, p] = 0.0
            continue
        # Ldot = L Phi(L^{-1} Adot L^{-T})
        zt = _chol_sym(ta[:, v, :], n, mm)
        _chol_trsm(lf, zt, n, n, True, False)
        mt = _chol_transpose(zt, n, n)
        _chol_trsm(lf, mt, n, n, True, False)
        _chol_phi(mt, n)
        _chol_store(tr[:, v, :], _chol_mm(lf, False, mt, False, n, n, n), m)


@njit(cache=True, nogil=True)
def cholesky_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
                    da, db, dc, m):
    if not da:
        return
    n = np.int64(at[0])
    lf = _chol_take(r, n * n, m)
    g = _chol_tri(gr, n, m, True, 0)
    y, z = _chol_rev_parts(n, lf, g)
    _chol_fold(ga, z, n, m)
    # L^T S, with S = Z^T
    lts = _chol_mm(lf, True, _chol_transpose(z, n, n), False, n, n, n)
    for v in range(tr.shape[1]):
        # Sdot = L^{-T} Q L^{-1}, Q = Pdot - Ldot^T Y - (L^T S) Ldot,
        # Pdot = Phi(Ldot^T tril(G) + L^T tril(Gdot))
        ld = _chol_tri(tr[:, v, :], n, m, True, 0)
        pd = _chol_mm(ld, True, g, False, n, n, n)
        gd = _chol_tri(gdr[:, v, :], n, m, True, 0)
        _chol_add(pd, _chol_mm(lf, True, gd, False, n, n, n), m, 1.0)
        _chol_phi(pd, n)
        q = pd
        _chol_add(q, _chol_mm(ld, True, y, False, n, n, n), m, -1.0)
        _chol_add(q, _chol_mm(lts, False, ld, False, n, n, n), m, -1.0)
        _chol_trsm(lf, q, n, n, True, True)
        zq = _chol_transpose(q, n, n)
        _chol_trsm(lf, zq, n, n, True, True)
        _chol_fold(gda[:, v, :], zq, n, m)


# -- solve_triangular -------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _st_matrix(at, a, m):
    # The triangle of A that is read (ones on a unit diagonal), one column if shared.
    return _chol_tri(a, np.int64(at[0]), _chol_points(a, m), at[2] != 0, 1 if at[4] != 0 else 0)


@njit(cache=True, nogil=True)
def _st_outer(g, x, n, k, trn):
    # G X^T (X G^T for trans): minus the adjoint of A, given the adjoint G of B.
    if trn:
        return _chol_mm(x, False, g, True, n, k, n)
    return _chol_mm(g, False, x, True, n, k, n)


@njit(cache=True, nogil=True)
def _st_singular(t, x, n):
    # NaN for all of X at each point whose A has a zero on its diagonal (the solve
    # leaves inf/NaN only below or above it).
    for p in range(x.shape[1]):
        q = 0 if t.shape[1] == 1 else p
        for i in range(n):
            if t[i * n + i, q] == 0.0:
                x[:, p] = np.nan
                break


@njit(cache=True, nogil=True)
def solve_triangular_forward(at, a, b, c, r, m):
    n, k = np.int64(at[0]), np.int64(at[1])
    t = _st_matrix(at, a, m)
    x = _chol_take(b, n * k, _chol_points(b, m) if t.shape[1] == 1 else m)
    _chol_trsm(t, x, n, k, at[2] != 0, at[3] != 0)
    _st_singular(t, x, n)
    _chol_store(r, x, m)


@njit(cache=True, nogil=True)
def solve_triangular_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    if not (da or db):
        return
    n, k = np.int64(at[0]), np.int64(at[1])
    lower, trn, unit = at[2] != 0, at[3] != 0, at[4] != 0
    # B's adjoint G = op(A)^{-T} (r's adjoint); A's: minus the read part of G X^T
    g = _chol_take(gr, n * k, m)
    _chol_trsm(_st_matrix(at, a, m), g, n, k, lower, not trn)
    if db:
        _chol_add(gb, g, m, 1.0)
    if da:
        x = _chol_take(r, n * k, m)
        _chol_sub_tri(ga, _st_outer(g, x, n, k, trn), n, m, lower, unit)


@njit(cache=True, nogil=True)
def solve_triangular_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    n, k = np.int64(at[0]), np.int64(at[1])
    lower, trn, unit = at[2] != 0, at[3] != 0, at[4] != 0
    t = _st_matrix(at, a, m)
    x = _chol_take(b, n * k, _chol_points(b, m) if t.shape[1] == 1 else m)
    _chol_trsm(t, x, n, k, lower, trn)
    _st_singular(t, x, n)
    _chol_store(r, x, m)
    for v in range(tr.shape[1]):
        # Xdot = op(A)^{-1} (Bdot - op(Adot) X)
        if db:
            rhs = _chol_take(tb[:, v, :], n * k, m)
        else:
            rhs = np.zeros((n * k, m), r.dtype)
        if da:
            ad = _chol_tri(ta[:, v, :], n, m, lower, 2 if unit else 0)
            _chol_add(rhs, _chol_mm(ad, trn, x, False, n, n, k), m, -1.0)
        if da or db:
            _chol_trsm(t, rhs, n, k, lower, trn)
        _chol_store(tr[:, v, :], rhs, m)


@njit(cache=True, nogil=True)
def solve_triangular_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda,
                            gdb, gdc, da, db, dc, m):
    if not (da or db):
        return
    n, k = np.int64(at[0]), np.int64(at[1])
    lower, trn, unit = at[2] != 0, at[3] != 0, at[4] != 0
    t = _st_matrix(at, a, m)
    x = _chol_take(r, n * k, m)
    g = _chol_take(gr, n * k, m)
    _chol_trsm(t, g, n, k, lower, not trn)
    if db:
        _chol_add(gb, g, m, 1.0)
    if da:
        _chol_sub_tri(ga, _st_outer(g, x, n, k, trn), n, m, lower, unit)
    for v in range(gdr.shape[1]):
        # Gdot = op(A)^{-T} (gr's tangent - op(Adot)^T G); A's adjoint's tangent:
        # minus the read part of Gdot X^T + G Xdot^T
        gd = _chol_take(gdr[:, v, :], n * k, m)
        if da:
            ad = _chol_tri(ta[:, v, :], n, m, lower, 2 if unit else 0)
            _chol_add(gd, _chol_mm(ad, not trn, g, False, n, n, k), m, -1.0)
        _chol_trsm(t, gd, n, k, lower, not trn)
        if db:
            _chol_add(gdb[:, v, :], gd, m, 1.0)
        if da:
            outer = _st_outer(gd, x, n, k, trn)
            _chol_add(outer, _st_outer(g, _chol_take(tr[:, v, :], n * k, m), n, k, trn),
                      m, 1.0)
            _chol_sub_tri(gda[:, v, :], outer, n, m, lower, unit)
