"""Kernel routines of the ``eigh``, ``svd`` and ``qr`` instruction families.

They follow the family calling convention (``docs``: instruction families): operands
and results are ``(len, w)`` blocks, a matrix stored row-major down the first axis.
Every routine works one point at a time: it gathers the point's matrix into a
contiguous temporary, factors it with LAPACK (Numba's ``np.linalg``) and applies the
rules with BLAS products (``np.dot``). A factorization that fails (non-finite input, no
convergence) gives NaN for all of that point's results, never an exception.

eigh, attrs ``(n, lower, vectors)``: the symmetric matrix whose triangle named by
``lower`` (1: lower, numpy's ``UPLO='L'``; 0: upper) is that of ``a``; the other
triangle is never read and gets zero adjoints. ``r`` = the n eigenvalues (ascending),
then with ``vectors == 1`` the n x n eigenvectors (C order, the columns are the vectors,
their signs LAPACK's, as numpy returns them); ``vectors == 0`` is ``eigvalsh``.

svd, attrs ``(m, n, full_matrices, compute_uv)``: ``a`` is m x n, ``k = min(m, n)``;
``r`` = U (m x k), s (k, descending), Vh (k x n) with ``compute_uv == 1``, else s only.
``full_matrices == 1`` is valid only when ``m == n`` (then it is the same result).

qr, attrs ``(m, n)``, ``m >= n``: numpy's ``mode='reduced'``: ``r`` = Q (m x n), then
R (n x n, upper triangular, its diagonal's signs LAPACK's).

Repeated eigenvalues or singular values: the rules divide by their differences. A term
whose numerator is exactly zero (with its tangent, in ``second``) counts as zero, so
results that are not used (zero adjoints, e.g. only the eigenvalues of ``eigh`` used)
cost nothing; any other term with equal values is inf/NaN: a derivative that does not
exist gives non-finite values, never a finite guess. Values closer than rounding
(``10 n eps`` relative to the largest) count as equal, as do singular values (and R's
diagonal entries) that close to zero where the rules divide by them. The eigenvalue part of the
reverse rule (``V diag(wbar) V^T``) has no such division: gradients of functions of the
eigenvalues (``eigvalsh``, ``svd`` with ``compute_uv == 0``) stay finite and exact
whenever the function is differentiable (its adjoint is equal within a repeated group);
their second-order rules do divide, and are non-finite at repeated values.
"""

import numpy as np

from tapejit._kernels.njit import njit

# --- kernel source ---


@njit(cache=True, nogil=True)
def _eig_col(src, p):
    # The column of point p: 0 for an operand shared by all points.
    return 0 if src.shape[1] == 1 else p


@njit(cache=True, nogil=True)
def _eig_get(src, off, rows, cols, p):
    # Point p's rows x cols matrix starting at element off of src, contiguous.
    q = _eig_col(src, p)
    out = np.empty((rows, cols), src.dtype)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = src[off + i * cols + j, q]
    return out


@njit(cache=True, nogil=True)
def _eig_vec(src, off, size, p):
    q = _eig_col(src, p)
    out = np.empty(size, src.dtype)
    for i in range(size):
        out[i] = src[off + i, q]
    return out


@njit(cache=True, nogil=True)
def _eig_put(dst, off, x, p):
    # dst[off:off + x.size, p] = x (row-major)
    if x.ndim == 1:
        for i in range(x.shape[0]):
            dst[off + i, p] = x[i]
        return
    cols = x.shape[1]
    for i in range(x.shape[0]):
        for j in range(cols):
            dst[off + i * cols + j, p] = x[i, j]


@njit(cache=True, nogil=True)
def _eig_add(dst, x, p):
    # dst[:, p] += x (a matrix, row-major)
    cols = x.shape[1]
    for i in range(x.shape[0]):
        for j in range(cols):
            dst[i * cols + j, p] += x[i, j]


@njit(cache=True, nogil=True)
def _eig_spread(dst, m):
    # Copies column 0 to columns 1..m-1 (a result shared by all points).
    for i in range(dst.shape[0]):
        for p in range(1, m):
            dst[i, p] = dst[i, 0]


@njit(cache=True, nogil=True)
def _eig_dot(a, b):
    # a @ b through BLAS; BLAS refuses empty dimensions.
    if a.shape[0] == 0 or a.shape[1] == 0 or b.shape[1] == 0:
        return np.zeros((a.shape[0], b.shape[1]), a.dtype)
    return np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))


@njit(cache=True, nogil=True)
def _eig_tiny(x, power):
    # Differences of eigenvalues (power 1) or of squared singular values (power 2) at
    # most this large are rounding noise: the values count as equal (a finite quotient
    # by them would be noise, 1e15 and more, not a derivative).
    big = 0.0
    for i in range(x.shape[0]):
        big = max(big, abs(np.float64(x[i])))
    eps = np.float64(np.spacing(np.ones(1, x.dtype))[0])
    return 10.0 * x.shape[0] * eps * big ** power


@njit(cache=True, nogil=True)
def _eig_ratio(num, dnum, den, dden, tiny):
    # num / den and its tangent, with the convention of the module docstring: an
    # exactly zero numerator and numerator tangent give 0 whatever the denominator;
    # a denominator within rounding (tiny) of zero is zero (inf/NaN).
    if num == 0.0 and dnum == 0.0:
        return 0.0, 0.0
    if abs(den) <= tiny:
        den = 0.0
    q = np.float64(num) / den
    return q, (np.float64(dnum) - q * dden) / den


@njit(cache=True, nogil=True)
def _eig_diag_add(x, d):
    for i in range(d.shape[0]):
        x[i, i] += d[i]


# -- eigh -----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _eigh_sym(src, n, lower, p):
    # The symmetric matrix of point p whose read triangle is src's.
    q = _eig_col(src, p)
    out = np.empty((n, n), src.dtype)
    for i in range(n):
        for j in range(i + 1):
            v = src[i * n + j, q] if lower else src[j * n + i, q]
            out[i, j] = v
            out[j, i] = v
    return out


@njit(cache=True, nogil=True)
def _eigh_fold(dst, z, n, lower, p):
    # dst[:, p] += the adjoint of the read triangle, given the adjoint z of the full
    # symmetric matrix: z_ij + z_ji off the diagonal, z_ii on it, nothing elsewhere.
    for i in range(n):
        for j in range(i):
            q = i * n + j if lower else j * n + i
            dst[q, p] += z[i, j] + z[j, i]
        dst[i * n + i, p] += z[i, i]


@njit(cache=True, nogil=True)
def _eigh_point(s):
    # Eigenvalues and eigenvectors (C order) of the symmetric s; NaN when LAPACK fails.
    n = s.shape[0]
    w = np.full(n, np.nan, s.dtype)
    v = np.full((n, n), np.nan, s.dtype)
    try:
        w2, v2 = np.linalg.eigh(s)
        w[:] = w2
        v[:, :] = v2
    except Exception:  # non-finite input or no convergence: NaN
        pass
    return w, v


@njit(cache=True, nogil=True)
def _eigh_jvp(w, v, ad):
    # wdot = diag(K), Vdot = V (F o K), K = V^T Adot V, F_ij = 1 / (w_j - w_i).
    n = w.shape[0]
    tiny = _eig_tiny(w, 1)
    k = _eig_dot(_eig_dot(v.T, ad), v)
    wd = np.empty(n, w.dtype)
    om = np.zeros((n, n), w.dtype)
    for i in range(n):
        wd[i] = k[i, i]
        for j in range(n):
            if i != j:
                om[i, j] = _eig_ratio(k[i, j], 0.0, w[j] - w[i], 0.0, tiny)[0]
    return wd, _eig_dot(v, om)


@njit(cache=True, nogil=True)
def _eigh_inner(w, v, wb, vb):
    # X = diag(wbar) + F o (V^T Vbar): Abar = V X V^T.
    n = w.shape[0]
    tiny = _eig_tiny(w, 1)
    nb = _eig_dot(v.T, vb)
    x = np.zeros((n, n), w.dtype)
    for i in range(n):
        for j in range(n):
            if i != j:
                x[i, j] = _eig_ratio(nb[i, j], 0.0, w[j] - w[i], 0.0, tiny)[0]
        x[i, i] = wb[i]
    return x, nb


@njit(cache=True, nogil=True)
def _eigh_vjp(w, v, wb, vb):
    x, _ = _eigh_inner(w, v, wb, vb)
    return _eig_dot(_eig_dot(v, x), v.T)


@njit(cache=True, nogil=True)
def _eigh_vjp_dot(w, v, wd, vd, wb, vb, wbd, vbd):
    # The tangent of Z = V X V^T: Vd X V^T + V X Vd^T + V Xd V^T.
    n = w.shape[0]
    tiny = _eig_tiny(w, 1)
    x, nb = _eigh_inner(w, v, wb, vb)
    nbd = _eig_dot(vd.T, vb) + _eig_dot(v.T, vbd)
    xd = np.zeros((n, n), w.dtype)
    for i in range(n):
        for j in range(n):
            if i != j:
                xd[i, j] = _eig_ratio(nb[i, j], nbd[i, j], w[j] - w[i], wd[j] - wd[i],
                                      tiny)[1]
        xd[i, i] = wbd[i]
    vx = _eig_dot(v, x)
    zd = _eig_dot(_eig_dot(vd, x), v.T) + _eig_dot(vx, vd.T)
    return zd + _eig_dot(_eig_dot(v, xd), v.T)


@njit(cache=True, nogil=True)
def _eigh_result(at, r, p):
    # Eigenvalues and eigenvectors of point p from the forward result.
    n = np.int64(at[0])
    return _eig_vec(r, 0, n, p), _eig_get(r, n, n, n, p)


@njit(cache=True, nogil=True)
def eigh_forward(at, a, b, c, r, m):
    n, lower, vectors = np.int64(at[0]), at[1] != 0, at[2] != 0
    if r.shape[0] == 0:
        return
    mm = 1 if a.shape[1] == 1 else m
    for p in range(mm):
        w, v = _eigh_point(_eigh_sym(a, n, lower, p))
        _eig_put(r, 0, w, p)
        if vectors:
            _eig_put(r, n, v, p)
    if mm < m:
        _eig_spread(r, m)


@njit(cache=True, nogil=True)
def eigh_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    n, lower, vectors = np.int64(at[0]), at[1] != 0, at[2] != 0
    if not da or n == 0:
        return
    for p in range(m):
        wb = _eig_vec(gr, 0, n, p)
        if vectors:
            w, v = _eigh_result(at, r, p)
            vb = _eig_get(gr, n, n, n, p)
        else:
            w, v = _eigh_point(_eigh_sym(a, n, lower, p))
            vb = np.zeros((n, n), r.dtype)
        _eigh_fold(ga, _eigh_vjp(w, v, wb, vb), n, lower, p)


@njit(cache=True, nogil=True)
def eigh_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    n, lower, vectors = np.int64(at[0]), at[1] != 0, at[2] != 0
    eigh_forward(at, a, b, c, r, m)
    if r.shape[0] == 0:
        return
    if not da:
        tr[:, :, :m] = 0.0
        return
    for p in range(m):
        w, v = _eigh_point(_eigh_sym(a, n, lower, p))
        for t in range(tr.shape[1]):
            wd, vd = _eigh_jvp(w, v, _eigh_sym(ta[:, t, :], n, lower, p))
            _eig_put(tr[:, t, :], 0, wd, p)
            if vectors:
                _eig_put(tr[:, t, :], n, vd, p)


@njit(cache=True, nogil=True)
def eigh_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
                da, db, dc, m):
    n, lower, vectors = np.int64(at[0]), at[1] != 0, at[2] != 0
    if not da or n == 0:
        return
    for p in range(m):
        wb = _eig_vec(gr, 0, n, p)
        if vectors:
            w, v = _eigh_result(at, r, p)
            vb = _eig_get(gr, n, n, n, p)
        else:
            w, v = _eigh_point(_eigh_sym(a, n, lower, p))
            vb = np.zeros((n, n), r.dtype)
        _eigh_fold(ga, _eigh_vjp(w, v, wb, vb), n, lower, p)
        for t in range(gdr.shape[1]):
            wbd = _eig_vec(gdr[:, t, :], 0, n, p)
            if vectors:
                wd = _eig_vec(tr[:, t, :], 0, n, p)
                vd = _eig_get(tr[:, t, :], n, n, n, p)
                vbd = _eig_get(gdr[:, t, :], n, n, n, p)
            else:
                wd, vd = _eigh_jvp(w, v, _eigh_sym(ta[:, t, :], n, lower, p))
                vbd = np.zeros((n, n), r.dtype)
            zd = _eigh_vjp_dot(w, v, wd, vd, wb, vb, wbd, vbd)
            _eigh_fold(gda[:, t, :], zd, n, lower, p)


# -- svd ------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _svd_point(x):
    # U (m x k), s, Vh (k x n) of x, C order; NaN when LAPACK fails.
    m, n = x.shape
    k = min(m, n)
    u = np.full((m, k), np.nan, x.dtype)
    s = np.full(k, np.nan, x.dtype)
    vh = np.full((k, n), np.nan, x.dtype)
    if k == 0:
        return u, s, vh
    try:
        u2, s2, vh2 = np.linalg.svd(x, full_matrices=False)
        u[:, :] = u2
        s[:] = s2
        vh[:, :] = vh2
    except Exception:  # non-finite input or no convergence: NaN
        pass
    return u, s, vh


@njit(cache=True, nogil=True)
def _svd_inv(s):
    # 1 / s, inf for singular values within rounding of zero (a rectangular matrix's
    # projection terms have no derivative there).
    tiny = np.sqrt(_eig_tiny(s, 2))
    out = np.empty_like(s)
    for i in range(s.shape[0]):
        out[i] = 1.0 / s[i] if abs(s[i]) > tiny else np.inf
    return out


@njit(cache=True, nogil=True)
def _svd_jvp(u, s, vh, ad):
    # Townsend's rules: P = U^T Adot V, sdot = diag(P),
    # Udot = U (F o (P S + S P^T)) + (I - U U^T) Adot V S^-1,
    # Vdot = V (F o (S P + P^T S)) + (I - V V^T) Adot^T U S^-1, F_ij = 1/(s_j^2 - s_i^2).
    m, k = u.shape
    n = vh.shape[1]
    av = _eig_dot(ad, vh.T)
    pm = _eig_dot(u.T, av)
    tiny = _eig_tiny(s, 2)
    sd = np.empty(k, s.dtype)
    ou = np.zeros((k, k), s.dtype)
    ov = np.zeros((k, k), s.dtype)
    for i in range(k):
        sd[i] = pm[i, i]
        for j in range(k):
            if i != j:
                den = s[j] * s[j] - s[i] * s[i]
                ou[i, j] = _eig_ratio(pm[i, j] * s[j] + s[i] * pm[j, i], 0.0, den, 0.0,
                                      tiny)[0]
                ov[i, j] = _eig_ratio(s[i] * pm[i, j] + pm[j, i] * s[j], 0.0, den, 0.0,
                                      tiny)[0]
    ud = _eig_dot(u, ou)
    vd = _eig_dot(vh.T, ov)
    dinv = _svd_inv(s).reshape((1, k))
    if m > k:
        ud += (av - _eig_dot(u, pm)) * dinv
    if n > k:
        vd += (_eig_dot(ad.T, u) - _eig_dot(vh.T, pm.T)) * dinv
    return sd, ud, np.ascontiguousarray(vd.T)


@njit(cache=True, nogil=True)
def _svd_inner(s, j, ll, jd, lld, sd, sb, sbd):
    # X = (F o Ja) S + diag(sbar) + S (F o La) (Ja = J - J^T, La = L - L^T) and its
    # tangent Xd, given J, L and their tangents jd, lld (zeros when not needed).
    k = s.shape[0]
    tiny = _eig_tiny(s, 2)
    x = np.zeros((k, k), s.dtype)
    xd = np.zeros((k, k), s.dtype)
    for i in range(k):
        for q in range(k):
            if i == q:
                continue
            ja = j[i, q] - j[q, i]
            la = ll[i, q] - ll[q, i]
            jda = jd[i, q] - jd[q, i]
            lda = lld[i, q] - lld[q, i]
            num = ja * s[q] + s[i] * la
            dnum = jda * s[q] + ja * sd[q] + sd[i] * la + s[i] * lda
            den = s[q] * s[q] - s[i] * s[i]
            dden = 2.0 * (s[q] * sd[q] - s[i] * sd[i])
            x[i, q], xd[i, q] = _eig_ratio(num, dnum, den, dden, tiny)
        x[i, i] = sb[i]
        xd[i, i] = sbd[i]
    return x, xd


@njit(cache=True, nogil=True)
def _svd_vjp(u, s, vh, ub, sb, vhb):
    # Abar = U X Vh + (I - U U^T) Ubar S^-1 Vh + U S^-1 Vhbar (I - V V^T)
    # (Townsend, "Differentiating the singular value decomposition").
    m, k = u.shape
    n = vh.shape[1]
    j = _eig_dot(u.T, ub)
    ll = _eig_dot(vh, vhb.T)
    zero = np.zeros((k, k), s.dtype)
    x, _ = _svd_inner(s, j, ll, zero, zero, np.zeros(k, s.dtype), sb, sb)
    z = _eig_dot(_eig_dot(u, x), vh)
    dinv = _svd_inv(s)
    if m > k:
        z += _eig_dot((ub - _eig_dot(u, j)) * dinv.reshape((1, k)), vh)
    if n > k:
        z += _eig_dot(u, (vhb - _eig_dot(ll.T, vh)) * dinv.reshape((k, 1)))
    return z


@njit(cache=True, nogil=True)
def _svd_vjp_dot(u, s, vh, ud, sd, vhd, ub, sb, vhb, ubd, sbd, vhbd):
    # The tangent of _svd_vjp's Z along (U, s, Vh) -> (Ud, sd, Vhd) and the adjoints
    # -> their tangents.
    m, k = u.shape
    n = vh.shape[1]
    j = _eig_dot(u.T, ub)
    ll = _eig_dot(vh, vhb.T)
    jd = _eig_dot(ud.T, ub) + _eig_dot(u.T, ubd)
    lld = _eig_dot(vhd, vhb.T) + _eig_dot(vh, vhbd.T)
    x, xd = _svd_inner(s, j, ll, jd, lld, sd, sb, sbd)
    ux = _eig_dot(u, x)
    zd = (_eig_dot(_eig_dot(ud, x), vh) + _eig_dot(_eig_dot(u, xd), vh)
          + _eig_dot(ux, vhd))
    dinv = _svd_inv(s)
    ddinv = -sd * dinv * dinv
    if m > k:
        # (Ubar - U J) D Vh
        e = ub - _eig_dot(u, j)
        ed = ubd - _eig_dot(ud, j) - _eig_dot(u, jd)
        zd += _eig_dot(ed * dinv.reshape((1, k)) + e * ddinv.reshape((1, k)), vh)
        zd += _eig_dot(e * dinv.reshape((1, k)), vhd)
    if n > k:
        # U D (Vhbar - L^T Vh)
        e = vhb - _eig_dot(ll.T, vh)
        ed = vhbd - _eig_dot(lld.T, vh) - _eig_dot(ll.T, vhd)
        zd += _eig_dot(ud, e * dinv.reshape((k, 1)))
        zd += _eig_dot(u, ed * dinv.reshape((k, 1)) + e * ddinv.reshape((k, 1)))
    return zd


@njit(cache=True, nogil=True)
def _svd_parts(at, src, p):
    # U, s, Vh of point p from a result block (compute_uv == 1).
    mr, nc = np.int64(at[0]), np.int64(at[1])
    k = min(mr, nc)
    return (_eig_get(src, 0, mr, k, p), _eig_vec(src, mr * k, k, p),
            _eig_get(src, mr * k + k, k, nc, p))


@njit(cache=True, nogil=True)
def _svd_adjoints(at, gr, p):
    # Ubar, sbar, Vhbar of point p (zeros for U and Vh with compute_uv == 0).
    mr, nc, uv = np.int64(at[0]), np.int64(at[1]), at[3] != 0
    k = min(mr, nc)
    if uv:
        return _svd_parts(at, gr, p)
    return (np.zeros((mr, k), gr.dtype), _eig_vec(gr, 0, k, p),
            np.zeros((k, nc), gr.dtype))


@njit(cache=True, nogil=True)
def _svd_store(dst, u, s, vh, uv, p):
    if uv:
        _eig_put(dst, 0, u, p)
        _eig_put(dst, u.size, s, p)
        _eig_put(dst, u.size + s.size, vh, p)
    else:
        _eig_put(dst, 0, s, p)


@njit(cache=True, nogil=True)
def svd_forward(at, a, b, c, r, m):
    mr, nc, uv = np.int64(at[0]), np.int64(at[1]), at[3] != 0
    if r.shape[0] == 0:
        return
    mm = 1 if a.shape[1] == 1 else m
    for p in range(mm):
        u, s, vh = _svd_point(_eig_get(a, 0, mr, nc, p))
        _svd_store(r, u, s, vh, uv, p)
    if mm < m:
        _eig_spread(r, m)


@njit(cache=True, nogil=True)
def svd_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    mr, nc, uv = np.int64(at[0]), np.int64(at[1]), at[3] != 0
    if not da or r.shape[0] == 0:
        return
    for p in range(m):
        if uv:
            u, s, vh = _svd_parts(at, r, p)
        else:
            u, s, vh = _svd_point(_eig_get(a, 0, mr, nc, p))
        ub, sb, vhb = _svd_adjoints(at, gr, p)
        _eig_add(ga, _svd_vjp(u, s, vh, ub, sb, vhb), p)


@njit(cache=True, nogil=True)
def svd_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    mr, nc, uv = np.int64(at[0]), np.int64(at[1]), at[3] != 0
    svd_forward(at, a, b, c, r, m)
    if r.shape[0] == 0:
        return
    if not da:
        tr[:, :, :m] = 0.0
        return
    for p in range(m):
        if uv:
            u, s, vh = _svd_parts(at, r, p)
        else:
            u, s, vh = _svd_point(_eig_get(a, 0, mr, nc, p))
        for t in range(tr.shape[1]):
            sd, ud, vhd = _svd_jvp(u, s, vh, _eig_get(ta[:, t, :], 0, mr, nc, p))
            _svd_store(tr[:, t, :], ud, sd, vhd, uv, p)


@njit(cache=True, nogil=True)
def svd_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
               da, db, dc, m):
    mr, nc, uv = np.int64(at[0]), np.int64(at[1]), at[3] != 0
    if not da or r.shape[0] == 0:
        return
    for p in range(m):
        if uv:
            u, s, vh = _svd_parts(at, r, p)
        else:
            u, s, vh = _svd_point(_eig_get(a, 0, mr, nc, p))
        ub, sb, vhb = _svd_adjoints(at, gr, p)
        _eig_add(ga, _svd_vjp(u, s, vh, ub, sb, vhb), p)
        for t in range(gdr.shape[1]):
            if uv:
                ud, sd, vhd = _svd_parts(at, tr[:, t, :], p)
            else:
                sd, ud, vhd = _svd_jvp(u, s, vh, _eig_get(ta[:, t, :], 0, mr, nc, p))
            ubd, sbd, vhbd = _svd_adjoints(at, gdr[:, t, :], p)
            zd = _svd_vjp_dot(u, s, vh, ud, sd, vhd, ub, sb, vhb, ubd, sbd, vhbd)
            _eig_add(gda[:, t, :], zd, p)


# -- qr -------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _qr_point(x):
    # Q (m x n) and R (n x n) of x (m >= n), C order; NaN when LAPACK fails.
    m, n = x.shape
    q = np.full((m, n), np.nan, x.dtype)
    rr = np.full((n, n), np.nan, x.dtype)
    if n == 0:
        return q, rr
    try:
        q2, r2 = np.linalg.qr(x)
        q[:, :] = q2
        rr[:, :] = r2
    except Exception:  # non-finite input or no convergence: NaN
        pass
    return q, rr


@njit(cache=True, nogil=True)
def _qr_rdiv(bm, rr, trans):
    # X with X R = B (trans: X R^T = B), R upper triangular, by substitution along
    # each row of B; a zero on R's diagonal gives inf/NaN.
    rows, n = bm.shape
    x = bm.copy()
    diag = np.empty(n, rr.dtype)
    for i in range(n):
        diag[i] = rr[i, i]
    # a diagonal entry within rounding of zero: rank deficient, no derivative (inf/NaN)
    tiny = np.sqrt(_eig_tiny(diag, 2))
    for i in range(n):
        if abs(diag[i]) <= tiny:
            diag[i] = 0.0
    if not trans:
        # column j: x_j = (b_j - sum_{i<j} x_i R_ij) / R_jj
        for j in range(n):
            for i in range(j):
                c = rr[i, j]
                for q in range(rows):
                    x[q, j] -= x[q, i] * c
            d = diag[j]
            for q in range(rows):
                x[q, j] /= d
        return x
    # x_i = (b_i - sum_{j>i} R_ij x_j) / R_ii
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            c = rr[i, j]
            for q in range(rows):
                x[q, i] -= x[q, j] * c
        d = diag[i]
        for q in range(rows):
            x[q, i] /= d
    return x


@njit(cache=True, nogil=True)
def _qr_copyltu(x):
    # The symmetric matrix with x's lower triangle.
    n = x.shape[0]
    out = np.empty_like(x)
    for i in range(n):
        for j in range(i + 1):
            out[i, j] = x[i, j]
            out[j, i] = x[i, j]
    return out


@njit(cache=True, nogil=True)
def _qr_jvp(q, rr, ad):
    # X = Adot R^-1, C = Q^T X, Omega = tril(C, -1) - tril(C, -1)^T (Q^T Qdot):
    # Rdot = (C - Omega) R, Qdot = X - Q (C - Omega).
    n = rr.shape[0]
    x = _qr_rdiv(ad, rr, False)
    cm = _eig_dot(q.T, x)
    for i in range(n):
        for j in range(i):
            cm[j, i] += cm[i, j]
            cm[i, j] = 0.0
    return x - _eig_dot(q, cm), _eig_dot(cm, rr)


@njit(cache=True, nogil=True)
def _qr_vjp(q, rr, qb, rb):
    # M = R Rbar^T - Qbar^T Q, Abar = (Qbar + Q copyltu(M)) R^-T.
    mm = _eig_dot(rr, rb.T) - _eig_dot(qb.T, q)
    return _qr_rdiv(qb + _eig_dot(q, _qr_copyltu(mm)), rr, True), mm


@njit(cache=True, nogil=True)
def _qr_vjp_dot(q, rr, qd, rd, qb, rb, qbd, rbd):
    # Abar R^T = B: Abar_dot = (Bdot - Abar Rdot^T) R^-T, with
    # Bdot = Qbar_dot + Qdot copyltu(M) + Q copyltu(Mdot).
    z, mm = _qr_vjp(q, rr, qb, rb)
    md = (_eig_dot(rd, rb.T) + _eig_dot(rr, rbd.T) - _eig_dot(qbd.T, q)
          - _eig_dot(qb.T, qd))
    bd = qbd + _eig_dot(qd, _qr_copyltu(mm)) + _eig_dot(q, _qr_copyltu(md))
    return z, _qr_rdiv(bd - _eig_dot(z, rd.T), rr, True)


@njit(cache=True, nogil=True)
def _qr_parts(at, src, p):
    mr, nc = np.int64(at[0]), np.int64(at[1])
    return _eig_get(src, 0, mr, nc, p), _eig_get(src, mr * nc, nc, nc, p)


@njit(cache=True, nogil=True)
def qr_forward(at, a, b, c, r, m):
    mr, nc = np.int64(at[0]), np.int64(at[1])
    if r.shape[0] == 0:
        return
    mm = 1 if a.shape[1] == 1 else m
    for p in range(mm):
        q, rr = _qr_point(_eig_get(a, 0, mr, nc, p))
        _eig_put(r, 0, q, p)
        _eig_put(r, mr * nc, rr, p)
    if mm < m:
        _eig_spread(r, m)


@njit(cache=True, nogil=True)
def qr_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    if not da or r.shape[0] == 0:
        return
    for p in range(m):
        q, rr = _qr_parts(at, r, p)
        qb, rb = _qr_parts(at, gr, p)
        _eig_add(ga, _qr_vjp(q, rr, qb, rb)[0], p)


@njit(cache=True, nogil=True)
def qr_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    mr, nc = np.int64(at[0]), np.int64(at[1])
    qr_forward(at, a, b, c, r, m)
    if r.shape[0] == 0:
        return
    if not da:
        tr[:, :, :m] = 0.0
        return
    for p in range(m):
        q, rr = _qr_parts(at, r, p)
        for t in range(tr.shape[1]):
            qd, rd = _qr_jvp(q, rr, _eig_get(ta[:, t, :], 0, mr, nc, p))
            _eig_put(tr[:, t, :], 0, qd, p)
            _eig_put(tr[:, t, :], mr * nc, rd, p)


@njit(cache=True, nogil=True)
def qr_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
              da, db, dc, m):
    if not da or r.shape[0] == 0:
        return
    for p in range(m):
        q, rr = _qr_parts(at, r, p)
        qb, rb = _qr_parts(at, gr, p)
        _eig_add(ga, _qr_vjp(q, rr, qb, rb)[0], p)
        for t in range(gdr.shape[1]):
            qd, rd = _qr_parts(at, tr[:, t, :], p)
            qbd, rbd = _qr_parts(at, gdr[:, t, :], p)
            _eig_add(gda[:, t, :], _qr_vjp_dot(q, rr, qd, rd, qb, rb, qbd, rbd)[1], p)
