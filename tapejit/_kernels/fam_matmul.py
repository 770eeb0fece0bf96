"""The ``matmul`` instruction family: batched matrix products through BLAS.

Attributes ``(batch, m, k, n, batch_a, batch_b, trans_a, trans_b)``: the result is
``batch`` products ``A_t @ B_t`` of ``(m, k)`` by ``(k, n)`` matrices, C order. Operand
``a`` holds ``batch`` matrices if ``batch_a`` else one (broadcast over the batch), each
stored ``(m, k)``, or ``(k, m)`` (its transpose) if ``trans_a``; likewise ``b``.
Conventions (operand and workspace layouts, the four rules): ``tapejit/_program.py``
``Family`` and the docs' internals page. An operand of one column is the same at every
point (data), so its product with a chunk of points is one matrix product over all their
columns (``_mm``), not one per point.
"""

import numpy as np

from tapejit._kernels.njit import njit

# --- kernel source ---


@njit(cache=True, nogil=True)
def _mm_put(c, t, acc):
    # c (+)= t, both C-contiguous of one size.
    cf = c.reshape(c.size)
    tf = t.reshape(t.size)
    if acc:
        for e in range(cf.size):
            cf[e] += tf[e]
    else:
        for e in range(cf.size):
            cf[e] = tf[e]


@njit(cache=True, nogil=True)
def _mm_shared(am, bm, c, acc, w):
    # Both operands the same at every point: one product, written to every column.
    t = np.dot(am, bm)
    if w == 1:
        # one point: c and t hold the same elements in the same order (a flat copy, not
        # one row view per element)
        _mm_put(c, t, acc)
        return
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            row = c[i * t.shape[1] + j]
            v = t[i, j]
            if acc:
                for p in range(w):
                    row[p] += v
            else:
                for p in range(w):
                    row[p] = v


@njit(cache=True, nogil=True)
def _mm_rows(x, rows, cols, trans, w):
    # x (rows * cols, w) as (rows, cols * w): one matrix of every point, transposed into
    # place (a copy) when stored (cols, rows).
    if not trans:
        return np.ascontiguousarray(x).reshape((rows, cols * w))
    out = np.empty((rows, cols * w))
    for i in range(rows):
        for j in range(cols):
            src = x[j * rows + i]
            for p in range(w):
                out[i, j * w + p] = src[p]
    return out


@njit(cache=True, nogil=True)
def _mm_left(am, b, tb, c, m, k, n, acc, w):
    # A the same at every point: one product over every point's columns,
    # (m, k) @ (k, n * w).
    _mm_put(c, np.dot(am, _mm_rows(b, k, n, tb, w)), acc)


@njit(cache=True, nogil=True)
def _mm_right(bt, a, ta, c, m, k, n, acc, w):
    # B the same at every point: row i of C at every point, (n, w) = B^T (n, k) @ A[i].
    ar = _mm_rows(a, m, k, ta, w)
    for i in range(m):
        _mm_put(c[i * n : (i + 1) * n], np.dot(bt, ar[i].reshape((k, w))), acc)


@njit(cache=True, nogil=True)
def _mm(a, ta, b, tb, c, m, k, n, acc, w):
    # c (+)= A @ B for one product: a, b, c are (len, w_x) blocks of one matrix each
    # (w_x == 1: the same for every point); ta, tb: stored transposed. c has w columns.
    # Each layout gets its own call, so BLAS reads transposed data in place.
    sa = a.shape[1] == 1
    sb = b.shape[1] == 1
    if sa and sb:
        if ta and tb:
            _mm_shared(a.reshape((k, m)).T, b.reshape((n, k)).T, c, acc, w)
        elif ta:
            _mm_shared(a.reshape((k, m)).T, b.reshape((k, n)), c, acc, w)
        elif tb:
            _mm_shared(a.reshape((m, k)), b.reshape((n, k)).T, c, acc, w)
        else:
            _mm_shared(a.reshape((m, k)), b.reshape((k, n)), c, acc, w)
    elif sa:
        if ta:
            _mm_left(a.reshape((k, m)).T, b, tb, c, m, k, n, acc, w)
        else:
            _mm_left(a.reshape((m, k)), b, tb, c, m, k, n, acc, w)
    elif sb:
        if tb:
            _mm_right(b.reshape((n, k)), a, ta, c, m, k, n, acc, w)
        else:
            _mm_right(b.reshape((k, n)).T, a, ta, c, m, k, n, acc, w)
    else:
        # per-point matrices: the point loop innermost
        for i in range(m):
            for j in range(n):
                row = c[i * n + j]
                if not acc:
                    for p in range(w):
                        row[p] = 0.0
                for q in range(k):
                    ra = a[q * m + i] if ta else a[i * k + q]
                    rb = b[j * k + q] if tb else b[q * n + j]
                    for p in range(w):
                        row[p] += ra[p] * rb[p]


@njit(cache=True, nogil=True)
def _mm_shape(at):
    # (m, k, n) as int64 (attributes are int32; shapes mixing the two do not type).
    return np.int64(at[1]), np.int64(at[2]), np.int64(at[3])


@njit(cache=True, nogil=True)
def _mm_batch(at, a, ta, b, tb, c, shape, acc, w):
    # Every product of the batch; shape (m, k, n) of the product computed, ``at`` the
    # instruction's attributes (batch and broadcast flags).
    m, k, n = shape
    for t in range(at[0]):
        oa = t * m * k if at[4] else 0
        ob = t * k * n if at[5] else 0
        _mm(a[oa : oa + m * k], ta, b[ob : ob + k * n], tb, c[t * m * n : (t + 1) * m * n],
            m, k, n, acc, w)


@njit(cache=True, nogil=True)
def _mm_vjp(at, a, b, gr, ga, gb, da, db, w):
    # ga += gr @ B^T, gb += A^T @ gr, batch by batch (a broadcast operand sums over it).
    m, k, n = _mm_shape(at)
    for t in range(at[0]):
        oa = t * m * k if at[4] else 0
        ob = t * k * n if at[5] else 0
        g = gr[t * m * n : (t + 1) * m * n]
        if da:
            # A (m, k) stored as (k, m) when trans_a: its adjoint is stored the same way
            if at[6]:
                _mm(b[ob : ob + k * n], at[7] != 0, g, 1, ga[oa : oa + m * k], k, n, m,
                    True, w)
            else:
                _mm(g, 0, b[ob : ob + k * n], at[7] == 0, ga[oa : oa + m * k], m, n, k,
                    True, w)
        if db:
            if at[7]:
                _mm(g, 1, a[oa : oa + m * k], at[6] != 0, gb[ob : ob + k * n], n, m, k,
                    True, w)
            else:
                _mm(a[oa : oa + m * k], at[6] == 0, g, 0, gb[ob : ob + k * n], k, m, n,
                    True, w)


@njit(cache=True, nogil=True)
def _mm_direction(t, d):
    # Direction d of tangent rows (len, nv, w) as a contiguous (len, w) block.
    return np.ascontiguousarray(t[:, d, :])


@njit(cache=True, nogil=True)
def matmul_forward(at, a, b, c, r, m):
    _mm_batch(at, a, at[6] != 0, b, at[7] != 0, r, _mm_shape(at), False,
              r.shape[1])


@njit(cache=True, nogil=True)
def matmul_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    _mm_vjp(at, a, b, gr, ga, gb, da, db, r.shape[1])


@njit(cache=True, nogil=True)
def matmul_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    w = r.shape[1]
    shape = _mm_shape(at)
    _mm_batch(at, a, at[6] != 0, b, at[7] != 0, r, shape, False, w)
    for d in range(tr.shape[1]):
        out = np.zeros((tr.shape[0], w))
        if da:
            _mm_batch(at, _mm_direction(ta, d), at[6] != 0, b, at[7] != 0, out, shape,
                      True, w)
        if db:
            _mm_batch(at, a, at[6] != 0, _mm_direction(tb, d), at[7] != 0, out, shape,
                      True, w)
        tr[:, d, :] = out


@njit(cache=True, nogil=True)
def matmul_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc, da,
                  db, dc, m):
    w = r.shape[1]
    _mm_vjp(at, a, b, gr, ga, gb, da, db, w)
    for d in range(gdr.shape[1]):
        sa = np.zeros((gda.shape[0], w)) if da else ga[:0]
        sb = np.zeros((gdb.shape[0], w)) if db else gb[:0]
        # the vjp of the result adjoint's tangent, at the same operands
        _mm_vjp(at, a, b, _mm_direction(gdr, d), sa, sb, da, db, w)
        # plus the vjp's own tangent: gr against the other operand's tangent
        if da and db:
            _mm_vjp(at, _mm_direction(ta, d), _mm_direction(tb, d), gr, sa, sb, 1, 1, w)
        if da:
            gda[:, d, :] += sa
        if db:
            gdb[:, d, :] += sb
