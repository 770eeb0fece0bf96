"""Kernel routines of the axis-reduction families ``reduce`` and ``scan``.

Both read one operand ``a`` laid out as ``(outer, n, inner)`` in C order and work along
the middle axis: ``reduce`` writes ``(outer, inner)`` (a sum, product, maximum or
minimum), ``scan`` writes ``(outer, n, inner)`` (a running sum or product). Attributes of
both, in order: ``(kind, outer, n, inner)``.

Every routine walks *lanes*: the independent sequences along the reduced axis. With many
points (``w > 1``) the lanes of one ``(o, i)`` pair are the points (contiguous columns);
at one point (or for a shared operand) the lanes of one ``o`` are the ``inner`` elements.
Lanes go innermost, in tiles, so the loops vectorize. Views come from ``as_strided`` on
the operand blocks (the sizes were validated against the attributes before any routine
runs); the loops go through one row of lanes at a time, taken with
``np.ascontiguousarray`` (``_red_row``): a view typed contiguous, which the compiler
vectorizes, when the lanes are adjacent (columns of a block always are), else a copy
that ``_red_put`` stores back after writing. Sums over many points skip all of that:
they index the rows of the operand block directly (``_red_sum_points``,
``_red_spread_points``), in the same order, because for a short axis the views and tiles
cost several times the additions.

Sums are pairwise, in one order at one point and over many (so the same bits): blocks
of 128 elements (the last may be shorter), each summed as numpy sums one, with eight
accumulators (element ``k`` of a block into accumulator ``k % 8``, combined as
``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then the elements past the last
multiple of eight one after the other; a block of fewer than eight: one after the
other from its first element), and the block sums combined as a balanced binary tree
(a binary counter). Their rounding error grows with ``log n`` like numpy's. No rule
divides by an element: products and their derivatives use prefix and suffix products,
so zeros are exact.
``max``/``min`` send the adjoint to the *first* extreme element of each lane (numpy's
``argmax``; a NaN counts as the extreme, as in ``np.max``).
"""

import numpy as np

from tapejit._kernels.constants import (
    RED_MAX,
    RED_PROD,
    RED_SUM,
    SCAN_CUMPROD,
    SCAN_CUMSUM,
)
from tapejit._kernels.njit import njit

# --- kernel source ---

# Lanes per tile, and the depth of the pairwise stack (block counts below 2**60).
_RED_TILE = 256
_RED_LEVELS = 64
# A sum's blocks: elements per block, and accumulators in a block (the code writes the
# tree of eight out).
_RED_BLOCK = 128
_RED_ACC = 8
# Elements of a product rule's prefix temporary (n x lanes) before lanes are narrowed.
_RED_PREFIX_CAP = 1 << 20


@njit(cache=True, nogil=True)
def _red_view(x, outer, n, inner):
    # A (len, w) block as (outer, n, inner, w).
    s0, s1 = x.strides
    outer, n, inner = np.int64(outer), np.int64(n), np.int64(inner)
    return np.lib.stride_tricks.as_strided(
        x, shape=(outer, n, inner, np.int64(x.shape[1])),
        strides=(n * inner * s0, inner * s0, np.int64(s0), np.int64(s1)))


@njit(cache=True, nogil=True)
def _red_lanes(x4, o, g, wide, m):
    # The (n, lanes) matrix of task (o, g): the points of element g, or all inner elements.
    if wide:
        return x4[o, :, g, :m]
    return x4[o, :, :, 0]


@njit(cache=True, nogil=True)
def _red_ntasks(outer, inner, wide, m, tile):
    lanes = m if wide else inner
    groups = inner if wide else 1
    return outer * groups * ((lanes + tile - 1) // tile), groups, (lanes + tile - 1) // tile


@njit(cache=True, nogil=True)
def _red_task(t, groups, ntiles, tile, lanes):
    # Task t -> (o, g, first lane, end lane).
    o = t // (groups * ntiles)
    rest = t - o * groups * ntiles
    g = rest // ntiles
    l0 = (rest - g * ntiles) * tile
    return o, g, l0, min(l0 + tile, lanes)


@njit(cache=True, nogil=True)
def _red_tile(n, prefix, lanes):
    # Lanes per tile (no more than there are, so temporaries stay small); a rule with an
    # (n, lanes) prefix temporary narrows it for long axes.
    tile = min(_RED_TILE, lanes)
    if prefix:
        tile = min(tile, _RED_PREFIX_CAP // max(n, 1))
    return max(tile, 1)


@njit(cache=True, nogil=True)
def _red_spread(r, m):
    # A shared operand's result (column 0) for every point.
    if r.shape[1] > 1:
        for j in range(r.shape[0]):
            for p in range(1, m):
                r[j, p] = r[j, 0]


# -- sums --------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _red_block(x, b0, b1, s, r):
    # s[q] = the sum of rows b0 .. b1 - 1 of x in lane q, in a block's order (the
    # module's docstring), r: _RED_ACC rows of scratch.
    lanes = s.shape[0]
    if b1 - b0 < _RED_ACC:
        row = _red_row(x, b0)
        for q in range(lanes):
            s[q] = row[q]
        for k in range(b0 + 1, b1):
            row = _red_row(x, k)
            for q in range(lanes):
                s[q] += row[q]
        return
    for j in range(_RED_ACC):
        row = _red_row(x, b0 + j)
        rj = r[j]
        for q in range(lanes):
            rj[q] = row[q]
    k = b0 + _RED_ACC
    while k + _RED_ACC <= b1:
        for j in range(_RED_ACC):
            row = _red_row(x, k + j)
            rj = r[j]
            for q in range(lanes):
                rj[q] += row[q]
        k += _RED_ACC
    for q in range(lanes):
        s[q] = (((r[0, q] + r[1, q]) + (r[2, q] + r[3, q]))
                + ((r[4, q] + r[5, q]) + (r[6, q] + r[7, q])))
    for kk in range(k, b1):
        row = _red_row(x, kk)
        for q in range(lanes):
            s[q] += row[q]


@njit(cache=True, nogil=True)
def _red_psum(x, out, st):
    # out[q] = sum over k of x[k, q], pairwise per lane (the module's docstring), lanes
    # innermost; st: _RED_ACC + _RED_LEVELS rows of scratch, the accumulators of a block
    # and the stack of block sums.
    n, lanes = x.shape
    if n == 0:
        out[:] = 0
        return
    if lanes == 1:
        _red_psum1(x, out, st)
        return
    r = st[:_RED_ACC]
    stack = st[_RED_ACC:]
    top = 0
    nb = 0
    for b0 in range(0, n, _RED_BLOCK):
        _red_block(x, b0, min(b0 + _RED_BLOCK, n), stack[top, :lanes], r)
        nb += 1
        top = _red_pushed(stack, top + 1, nb, lanes)
    _red_unwind(stack, top, out, lanes)


@njit(cache=True, nogil=True)
def _red_pushed(st, top, nb, lanes):
    # Block nb (counting from 1) was just put on the stack st below row top: merge the
    # top two rows while they hold equally many blocks (a binary counter). The new top.
    c = nb
    while c % 2 == 0:
        top -= 1
        for q in range(lanes):
            st[top - 1, q] += st[top, q]
        c //= 2
    return top


@njit(cache=True, nogil=True)
def _red_unwind(st, top, out, lanes):
    # out = the sum of the stack's rows below top, from the top down.
    for q in range(lanes):
        out[q] = st[top - 1, q]
    for j in range(top - 2, -1, -1):
        for q in range(lanes):
            out[q] += st[j, q]


@njit(cache=True, nogil=True)
def _red_psum1(x, out, st):
    # _red_psum of one lane, in the same order, on scalars (a view per row, as in
    # _red_row, would cost more than the addition it feeds). A block's eight
    # accumulators are eight scalars, which the compiler keeps in vector registers.
    xc = x[:, 0]
    n = xc.shape[0]
    stack = st[_RED_ACC:]
    top = 0
    nb = 0
    for b0 in range(0, n, _RED_BLOCK):
        b1 = min(b0 + _RED_BLOCK, n)
        if b1 - b0 < _RED_ACC:
            s = xc[b0]
            for k in range(b0 + 1, b1):
                s += xc[k]
        else:  # _RED_ACC == 8 accumulators, written out
            r0, r1, r2, r3 = xc[b0], xc[b0 + 1], xc[b0 + 2], xc[b0 + 3]
            r4, r5, r6, r7 = xc[b0 + 4], xc[b0 + 5], xc[b0 + 6], xc[b0 + 7]
            k = b0 + 8
            while k + 8 <= b1:
                r0 += xc[k]
                r1 += xc[k + 1]
                r2 += xc[k + 2]
                r3 += xc[k + 3]
                r4 += xc[k + 4]
                r5 += xc[k + 5]
                r6 += xc[k + 6]
                r7 += xc[k + 7]
                k += 8
            s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
            for kk in range(k, b1):
                s += xc[kk]
        stack[top, 0] = s
        nb += 1
        top = _red_pushed(stack, top + 1, nb, 1)
    _red_unwind(stack, top, out, 1)


@njit(cache=True, nogil=True)
def _red_row(x, k):
    # Row k of a lane matrix typed as contiguous, so that loops over it vectorize: a
    # view when its lanes are adjacent (always, for columns of a block), else a copy
    # (for reading only).
    return np.ascontiguousarray(x[k])


@njit(cache=True, nogil=True)
def _red_put(x, k, row):
    # After writing through row = _red_row(x, k): store it back if it was a copy.
    if x.strides[1] != x.itemsize:
        x[k, :] = row


@njit(cache=True, nogil=True)
def _red_add_rows(g, v):
    # g[k, q] += v[q] for every row k.
    if g.shape[1] == 1:  # one lane: a loop the compiler sees as one sequence
        v0 = v[0]
        col = g[:, 0]
        if col.strides[0] == col.itemsize:
            col = np.ascontiguousarray(col)  # a view, typed contiguous: it vectorizes
            for k in range(col.shape[0]):
                col[k] += v0
            return
        for k in range(g.shape[0]):
            g[k, 0] += v0
        return
    vc = np.ascontiguousarray(v)
    for k in range(g.shape[0]):
        row = _red_row(g, k)
        for q in range(g.shape[1]):
            row[q] += vc[q]
        _red_put(g, k, row)


# A sum over the axis with the points as its lanes (a wide operand) walks the rows of the
# workspace directly: the views, tiles and scratch of the general walk cost several times
# the additions when the axis is short (a per-point norm or sum of a few elements).
@njit(cache=True, nogil=True)
def _red_block_points(x, base, step, b0, b1, s, r, m):
    # _red_block over rows base + k * step of x (k = b0 .. b1 - 1), the first m points.
    if b1 - b0 < _RED_ACC:
        i = base + b0 * step
        for p in range(m):
            s[p] = x[i, p]
        for k in range(b0 + 1, b1):
            i = base + k * step
            for p in range(m):
                s[p] += x[i, p]
        return
    for j in range(_RED_ACC):
        i = base + (b0 + j) * step
        rj = r[j]
        for p in range(m):
            rj[p] = x[i, p]
    k = b0 + _RED_ACC
    while k + _RED_ACC <= b1:
        for j in range(_RED_ACC):
            i = base + (k + j) * step
            rj = r[j]
            for p in range(m):
                rj[p] += x[i, p]
        k += _RED_ACC
    for p in range(m):
        s[p] = (((r[0, p] + r[1, p]) + (r[2, p] + r[3, p]))
                + ((r[4, p] + r[5, p]) + (r[6, p] + r[7, p])))
    for kk in range(k, b1):
        i = base + kk * step
        for p in range(m):
            s[p] += x[i, p]


@njit(cache=True, nogil=True)
def _red_sum_points(x, out, outer, n, inner, m):
    # _red_psum of every (o, i) pair's lanes, its blocks and tree in the same order (the
    # same bits), over the first m points of the rows of x and out.
    rows = 0 if n < _RED_ACC else _RED_ACC + (_RED_LEVELS if n > _RED_BLOCK else 0)
    st = np.empty((rows, m), out.dtype)
    r = st[:_RED_ACC]
    stack = st[_RED_ACC:]
    for o in range(outer):
        for g in range(inner):
            j = o * inner + g
            if n == 0:
                for p in range(m):
                    out[j, p] = 0
                continue
            base = o * n * inner + g
            if n <= _RED_BLOCK:  # one block: its sum straight into out
                _red_block_points(x, base, inner, 0, n, out[j], r, m)
                continue
            top = 0
            nb = 0
            for b0 in range(0, n, _RED_BLOCK):
                _red_block_points(x, base, inner, b0, min(b0 + _RED_BLOCK, n), stack[top],
                                  r, m)
                nb += 1
                top = _red_pushed(stack, top + 1, nb, m)
            _red_unwind(stack, top, out[j], m)


@njit(cache=True, nogil=True)
def _red_spread_points(gx, gout, outer, n, inner, m):
    # _red_add_rows of every (o, i) pair's lanes: each element of the axis gains its
    # lane's adjoint, over the first m points.
    for o in range(outer):
        for g in range(inner):
            j = o * inner + g
            for k in range(n):
                i = (o * n + k) * inner + g
                for p in range(m):
                    gx[i, p] += gout[j, p]


# -- products ----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _red_pprod(x, out, acc):
    n, lanes = x.shape
    acc[:] = 1
    if lanes == 1:  # no view per row (see _red_psum1)
        for k in range(n):
            acc[0] *= x[k, 0]
    else:
        for k in range(n):
            row = _red_row(x, k)
            for q in range(lanes):
                acc[q] *= row[q]
    out[:] = acc


@njit(cache=True, nogil=True)
def _red_prefix(x, pre):
    # pre[k, q]: the product of x[:k, q] (exclusive prefix).
    n, lanes = x.shape
    if n == 0:
        return
    pre[0, :] = 1
    if lanes == 1:  # no view per row (see _red_psum1)
        for k in range(1, n):
            pre[k, 0] = pre[k - 1, 0] * x[k - 1, 0]
        return
    for k in range(1, n):
        row, pp, pk = _red_row(x, k - 1), _red_row(pre, k - 1), _red_row(pre, k)
        for q in range(lanes):
            pk[q] = pp[q] * row[q]


@njit(cache=True, nogil=True)
def _red_prod_vjp(x, pre, suf, gr, g):
    # g[k] += gr * (product of the others) = gr * pre[k] * (suffix after k).
    n, lanes = x.shape
    suf[:] = 1
    if lanes == 1:  # no view per row (see _red_psum1)
        for k in range(n - 1, -1, -1):
            g[k, 0] += gr[0] * pre[k, 0] * suf[0]
            suf[0] *= x[k, 0]
        return
    grc = np.ascontiguousarray(gr)
    for k in range(n - 1, -1, -1):
        xk, pk, gk = _red_row(x, k), _red_row(pre, k), _red_row(g, k)
        for q in range(lanes):
            gk[q] += grc[q] * pk[q] * suf[q]
            suf[q] *= xk[q]
        _red_put(g, k, gk)


@njit(cache=True, nogil=True)
def _red_prod_jvp(x, t, out, dout):
    # Value and tangent of the product by the product rule, element by element.
    n, lanes = x.shape
    out[:] = 1
    dout[:] = 0
    for k in range(n):
        for q in range(lanes):
            dout[q] = dout[q] * x[k, q] + out[q] * t[k, q]
            out[q] *= x[k, q]


@njit(cache=True, nogil=True)
def _red_prod_second(x, t, pre, dpre, suf, dsuf, gr, gdr, gd):
    # gd[k] += gdr * E_k + gr * dE_k, E_k = pre[k] * suf_k (the product of the others),
    # with dpre and dsuf the tangents of the prefix and suffix products.
    n, lanes = x.shape
    for q in range(lanes):
        dpre[0, q] = 0
    for k in range(1, n):
        for q in range(lanes):
            dpre[k, q] = dpre[k - 1, q] * x[k - 1, q] + pre[k - 1, q] * t[k - 1, q]
    suf[:] = 1
    dsuf[:] = 0
    for k in range(n - 1, -1, -1):
        for q in range(lanes):
            e = pre[k, q] * suf[q]
            de = dpre[k, q] * suf[q] + pre[k, q] * dsuf[q]
            gd[k, q] += gdr[q] * e + gr[q] * de
            dsuf[q] = dsuf[q] * x[k, q] + suf[q] * t[k, q]
            suf[q] *= x[k, q]


# -- extremes ----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _red_arg(x, is_max, best, idx):
    # Per lane the first extreme element (a NaN beats numbers; the first NaN wins).
    n, lanes = x.shape
    if lanes == 1:  # no view per row (see _red_psum1)
        best[0] = x[0, 0]
        idx[0] = 0
        for k in range(1, n):
            v = x[k, 0]
            better = v > best[0] if is_max else v < best[0]
            if better or (v != v and best[0] == best[0]):
                best[0] = v
                idx[0] = k
        return
    row = _red_row(x, 0)
    for q in range(lanes):
        best[q] = row[q]
        idx[q] = 0
    for k in range(1, n):
        row = _red_row(x, k)
        for q in range(lanes):
            v = row[q]
            better = v > best[q] if is_max else v < best[q]
            if better or (v != v and best[q] == best[q]):
                best[q] = v
                idx[q] = k


@njit(cache=True, nogil=True)
def _red_gather_add(g, idx, v):
    # g[idx[q], q] += v[q]
    for q in range(idx.shape[0]):
        g[idx[q], q] += v[q]


# -- the reduce family -------------------------------------------------------------------
@njit(cache=True, nogil=True)
def reduce_forward(at, a, b, c, r, m):
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    if kind == RED_SUM and wide:
        _red_sum_points(a, r, outer, n, inner, m)
        return
    x4 = _red_view(a, outer, n, inner)
    r4 = _red_view(r, outer, 1, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, False, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    st = np.empty((_RED_ACC + _RED_LEVELS, tile), r.dtype)
    best = np.empty(tile, r.dtype)
    idx = np.empty(tile, np.int64)
    for t in range(nt):
        o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
        x = _red_lanes(x4, o, g, wide, m)[:, l0:l1]
        out = _red_lanes(r4, o, g, wide, m)[0, l0:l1]
        if kind == RED_SUM:
            _red_psum(x, out, st)
        elif kind == RED_PROD:
            _red_pprod(x, out, best[: l1 - l0])
        elif n > 0:
            _red_arg(x, kind == RED_MAX, best, idx)
            out[:] = best[: l1 - l0]
        else:  # refused by the attribute check; never left unwritten
            out[:] = np.nan
    if not wide:
        _red_spread(r, m)


@njit(cache=True, nogil=True)
def reduce_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    if da == 0:
        return
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    if kind == RED_SUM and wide:
        _red_spread_points(ga, gr, outer, n, inner, m)
        return
    x4 = _red_view(a, outer, n, inner)
    g4 = _red_view(ga, outer, n, inner)
    gr4 = _red_view(gr, outer, 1, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, kind == RED_PROD, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    pre = np.empty((n if kind == RED_PROD else 0, tile), r.dtype)
    suf = np.empty(tile, r.dtype)
    best = np.empty(tile, r.dtype)
    idx = np.empty(tile, np.int64)
    for t in range(nt):
        o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
        x = _red_lanes(x4, o, g, wide, m)[:, l0:l1]
        gx = _red_lanes(g4, o, g, wide, m)[:, l0:l1]
        gout = _red_lanes(gr4, o, g, wide, m)[0, l0:l1]
        w = l1 - l0
        if kind == RED_SUM:
            _red_add_rows(gx, gout)
        elif kind == RED_PROD:
            _red_prefix(x, pre[:, :w])
            _red_prod_vjp(x, pre[:, :w], suf[:w], gout, gx)
        elif n > 0:
            _red_arg(x, kind == RED_MAX, best, idx)
            _red_gather_add(gx, idx[:w], gout)


@njit(cache=True, nogil=True)
def reduce_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    reduce_forward(at, a, b, c, r, m)
    nv = tr.shape[1]
    if da == 0:
        tr[:] = 0
        return
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    if kind == RED_SUM and wide:
        for v in range(nv):
            _red_sum_points(ta[:, v, :], tr[:, v, :], outer, n, inner, m)
        return
    x4 = _red_view(a, outer, n, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, False, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    st = np.empty((_RED_ACC + _RED_LEVELS, tile), r.dtype)
    val = np.empty(tile, r.dtype)
    idx = np.empty(tile, np.int64)
    for v in range(nv):
        t4 = _red_view(ta[:, v, :], outer, n, inner)
        tr4 = _red_view(tr[:, v, :], outer, 1, inner)
        for t in range(nt):
            o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
            x = _red_lanes(x4, o, g, wide, m)[:, l0:l1]
            tx = _red_lanes(t4, o, g, wide, m)[:, l0:l1]
            tout = _red_lanes(tr4, o, g, wide, m)[0, l0:l1]
            w = l1 - l0
            if kind == RED_SUM:
                _red_psum(tx, tout, st)
            elif kind == RED_PROD:
                _red_prod_jvp(x, tx, val[:w], tout)
            elif n > 0:
                _red_arg(x, kind == RED_MAX, val, idx)
                for q in range(w):
                    tout[q] = tx[idx[q], q]


@njit(cache=True, nogil=True)
def reduce_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
                  da, db, dc, m):
    if da == 0:
        return
    reduce_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m)
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    if kind == RED_SUM and wide:
        for v in range(gdr.shape[1]):
            _red_spread_points(gda[:, v, :], gdr[:, v, :], outer, n, inner, m)
        return
    x4 = _red_view(a, outer, n, inner)
    gr4 = _red_view(gr, outer, 1, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, kind == RED_PROD, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    npre = n if kind == RED_PROD else 0
    pre = np.empty((npre, tile), r.dtype)
    dpre = np.empty((npre, tile), r.dtype)
    suf = np.empty(tile, r.dtype)
    dsuf = np.empty(tile, r.dtype)
    best = np.empty(tile, r.dtype)
    idx = np.empty(tile, np.int64)
    for v in range(gdr.shape[1]):
        t4 = _red_view(ta[:, v, :], outer, n, inner)
        gd4 = _red_view(gda[:, v, :], outer, n, inner)
        gdr4 = _red_view(gdr[:, v, :], outer, 1, inner)
        for t in range(nt):
            o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
            gdx = _red_lanes(gd4, o, g, wide, m)[:, l0:l1]
            gdout = _red_lanes(gdr4, o, g, wide, m)[0, l0:l1]
            w = l1 - l0
            if kind == RED_SUM:
                _red_add_rows(gdx, gdout)
                continue
            x = _red_lanes(x4, o, g, wide, m)[:, l0:l1]
            if kind == RED_PROD:
                tx = _red_lanes(t4, o, g, wide, m)[:, l0:l1]
                gout = _red_lanes(gr4, o, g, wide, m)[0, l0:l1]
                _red_prefix(x, pre[:, :w])
                _red_prod_second(x, tx, pre[:, :w], dpre[:, :w], suf[:w], dsuf[:w], gout,
                                 gdout, gdx)
            elif n > 0:
                _red_arg(x, kind == RED_MAX, best, idx)
                _red_gather_add(gdx, idx[:w], gdout)


# -- the scan family ---------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _scan_run(x, y, is_prod, acc):
    # y = running sum or product of x along rows (acc: the running values).
    n, lanes = x.shape
    if n == 0:
        return
    acc[:lanes] = x[0, :]
    y[0, :] = x[0, :]
    for k in range(1, n):
        xk, yk = _red_row(x, k), _red_row(y, k)
        if is_prod:
            for q in range(lanes):
                acc[q] *= xk[q]
                yk[q] = acc[q]
        else:
            for q in range(lanes):
                acc[q] += xk[q]
                yk[q] = acc[q]
        _red_put(y, k, yk)


@njit(cache=True, nogil=True)
def _scan_rsum_add(gy, gx, acc):
    # gx[k] += sum of gy[k:], the vjp of a running sum.
    n, lanes = gy.shape
    acc[:] = 0
    for k in range(n - 1, -1, -1):
        gyk, gxk = _red_row(gy, k), _red_row(gx, k)
        for q in range(lanes):
            acc[q] += gyk[q]
            gxk[q] += acc[q]
        _red_put(gx, k, gxk)


@njit(cache=True, nogil=True)
def _scan_prod_vjp(x, y, gy, gx, acc):
    # y = cumprod(x). gx[k] += y[k-1] * T_k with T_k = gy[k] + x[k+1] * T_{k+1}: the sum
    # over j >= k of gy[j] times the product of x[k+1..j] (no division by x[k]).
    n, lanes = x.shape
    if n == 0:
        return
    acc[:lanes] = gy[n - 1, :]
    for k in range(n - 1, -1, -1):
        gyk, gxk = _red_row(gy, k), _red_row(gx, k)
        if k < n - 1:
            xn = _red_row(x, k + 1)
            for q in range(lanes):
                acc[q] = gyk[q] + xn[q] * acc[q]
        if k > 0:
            yp = _red_row(y, k - 1)
            for q in range(lanes):
                gxk[q] += acc[q] * yp[q]
        else:
            for q in range(lanes):
                gxk[q] += acc[q]
        _red_put(gx, k, gxk)


@njit(cache=True, nogil=True)
def _scan_prod_jvp(x, y, t, ty):
    # Tangent of y = cumprod(x) by the product rule.
    n, lanes = x.shape
    if n == 0:
        return
    for q in range(lanes):
        ty[0, q] = t[0, q]
    for k in range(1, n):
        for q in range(lanes):
            ty[k, q] = ty[k - 1, q] * x[k, q] + y[k - 1, q] * t[k, q]


@njit(cache=True, nogil=True)
def _scan_prod_second(x, y, t, ty, gy, gdy, gd, acc, dacc):
    # Tangent of _scan_prod_vjp: T and its tangent dT run backwards together, and
    # gd[k] += y[k-1] * dT_k + ty[k-1] * T_k.
    n, lanes = x.shape
    for k in range(n - 1, -1, -1):
        for q in range(lanes):
            if k == n - 1:
                acc[q] = gy[k, q]
                dacc[q] = gdy[k, q]
            else:
                dacc[q] = gdy[k, q] + t[k + 1, q] * acc[q] + x[k + 1, q] * dacc[q]
                acc[q] = gy[k, q] + x[k + 1, q] * acc[q]
            if k > 0:
                gd[k, q] += y[k - 1, q] * dacc[q] + ty[k - 1, q] * acc[q]
            else:
                gd[k, q] += dacc[q]


@njit(cache=True, nogil=True)
def scan_forward(at, a, b, c, r, m):
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    x4 = _red_view(a, outer, n, inner)
    r4 = _red_view(r, outer, n, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, False, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    acc = np.empty(tile, r.dtype)
    for t in range(nt):
        o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
        _scan_run(_red_lanes(x4, o, g, wide, m)[:, l0:l1],
                  _red_lanes(r4, o, g, wide, m)[:, l0:l1], kind == SCAN_CUMPROD, acc)
    if not wide:
        _red_spread(r, m)


@njit(cache=True, nogil=True)
def scan_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m):
    if da == 0:
        return
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    x4 = _red_view(a, outer, n, inner)
    r4 = _red_view(r, outer, n, inner)
    g4 = _red_view(ga, outer, n, inner)
    gr4 = _red_view(gr, outer, n, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, False, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    acc = np.empty(tile, r.dtype)
    for t in range(nt):
        o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
        gy = _red_lanes(gr4, o, g, wide, m)[:, l0:l1]
        gx = _red_lanes(g4, o, g, wide, m)[:, l0:l1]
        if kind == SCAN_CUMSUM:
            _scan_rsum_add(gy, gx, acc[: l1 - l0])
        else:
            _scan_prod_vjp(_red_lanes(x4, o, g, wide, m)[:, l0:l1],
                           _red_lanes(r4, o, g, wide, m)[:, l0:l1], gy, gx, acc)


@njit(cache=True, nogil=True)
def scan_tangent(at, a, b, c, r, ta, tb, tc, tr, da, db, dc, m):
    scan_forward(at, a, b, c, r, m)
    if da == 0:
        tr[:] = 0
        return
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    x4 = _red_view(a, outer, n, inner)
    r4 = _red_view(r, outer, n, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, False, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    acc = np.empty(tile, r.dtype)
    for v in range(tr.shape[1]):
        t4 = _red_view(ta[:, v, :], outer, n, inner)
        tr4 = _red_view(tr[:, v, :], outer, n, inner)
        for t in range(nt):
            o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
            tx = _red_lanes(t4, o, g, wide, m)[:, l0:l1]
            ty = _red_lanes(tr4, o, g, wide, m)[:, l0:l1]
            if kind == SCAN_CUMSUM:
                _scan_run(tx, ty, False, acc)
            else:
                _scan_prod_jvp(_red_lanes(x4, o, g, wide, m)[:, l0:l1],
                               _red_lanes(r4, o, g, wide, m)[:, l0:l1], tx, ty)


@njit(cache=True, nogil=True)
def scan_second(at, a, b, c, r, ta, tb, tc, tr, gr, gdr, ga, gb, gc, gda, gdb, gdc,
                da, db, dc, m):
    if da == 0:
        return
    scan_reverse(at, a, b, c, r, gr, ga, gb, gc, da, db, dc, m)
    kind, outer, n, inner = at[0], np.int64(at[1]), np.int64(at[2]), np.int64(at[3])
    wide = a.shape[1] > 1
    x4 = _red_view(a, outer, n, inner)
    r4 = _red_view(r, outer, n, inner)
    gr4 = _red_view(gr, outer, n, inner)
    lanes = m if wide else inner
    tile = _red_tile(n, False, lanes)
    nt, groups, ntiles = _red_ntasks(outer, inner, wide, m, tile)
    acc = np.empty(tile, r.dtype)
    dacc = np.empty(tile, r.dtype)
    for v in range(gdr.shape[1]):
        t4 = _red_view(ta[:, v, :], outer, n, inner)
        tr4 = _red_view(tr[:, v, :], outer, n, inner)
        gdr4 = _red_view(gdr[:, v, :], outer, n, inner)
        gd4 = _red_view(gda[:, v, :], outer, n, inner)
        for t in range(nt):
            o, g, l0, l1 = _red_task(t, groups, ntiles, tile, lanes)
            gdy = _red_lanes(gdr4, o, g, wide, m)[:, l0:l1]
            gdx = _red_lanes(gd4, o, g, wide, m)[:, l0:l1]
            if kind == SCAN_CUMSUM:
                _scan_rsum_add(gdy, gdx, acc[: l1 - l0])
            else:
                _scan_prod_second(
                    _red_lanes(x4, o, g, wide, m)[:, l0:l1],
                    _red_lanes(r4, o, g, wide, m)[:, l0:l1],
                    _red_lanes(t4, o, g, wide, m)[:, l0:l1],
                    _red_lanes(tr4, o, g, wide, m)[:, l0:l1],
                    _red_lanes(gr4, o, g, wide, m)[:, l0:l1], gdy, gdx, acc, dacc)
