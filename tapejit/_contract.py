"""Contractions recorded as ``matmul`` family instructions: ``@``, ``matmul``, ``dot``,
``vdot``, ``inner``, ``tensordot`` and ``einsum``.

Every contraction becomes a (batched) matrix product of two operand blocks: the axes are
permuted and merged first, which costs nothing on a traced value (its id array is
permuted; the recorder copies an operand into one block only when its ids are not one
already, and passes a transposed block as such). A contraction between data and a traced
value is therefore one instruction over the whole data, whatever its size.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from ._errors import TracingError
from ._tracer import Tracer, emit, emit_family, ids_of, recorder_of


def _arr(x: Any) -> Any:
    """A tracer as it is, anything else as a float64 array."""
    return x if isinstance(x, Tracer) else np.asarray(x, dtype=np.float64)


def _block_trans(x: Any) -> tuple[Any, int]:
    """``(operand, trans)``: a traced matrix stack whose ids are one block when read
    with its last two axes swapped is passed that way (``trans=1``), not copied."""
    if isinstance(x, Tracer) and x.ndim >= 2:
        rec = recorder_of([x])
        ids = ids_of(x)
        if not rec.block(ids.ravel()):
            swapped = np.swapaxes(ids, -1, -2)
            if rec.block(swapped.ravel()):
                return Tracer(rec, swapped), 1
    return x, 0


def _batch_operand(x: Any, bshape: tuple, count: int) -> tuple[Any, int]:
    """A stack of matrices as one matrix (broadcast over the batch, flag 0) or ``count``
    (flag 1)."""
    rows, cols = x.shape[-2:]
    if int(np.prod(x.shape[:-2], dtype=np.int64)) == 1:
        return x.reshape(rows, cols), 0
    if tuple(x.shape[:-2]) != tuple(bshape):
        x = np.broadcast_to(x, (*bshape, rows, cols)) if not isinstance(x, Tracer) else (
            Tracer(recorder_of([x]), np.broadcast_to(ids_of(x), (*bshape, rows, cols))))
    return x.reshape(count, rows, cols), 1


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` with numpy's rules (1-D operands promoted, stacks broadcast)."""
    a, b = _arr(a), _arr(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions")
    va, vb = a.ndim == 1, b.ndim == 1
    A = a.reshape(1, a.shape[0]) if va else a
    B = b.reshape(b.shape[0], 1) if vb else b
    bshape = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    m, k = A.shape[-2:]
    k2, n = B.shape[-2:]
    if k != k2:
        raise ValueError(f"matmul: Input operand 1 has a mismatch in its core dimension 0, "
                         f"with gufunc signature (n?,k),(k,m?)->(n?,m?) (size {k2} is "
                         f"different from {k})")
    shape = (*bshape, m, n)
    out_shape = shape[:-2] + ((m,) if not va else ()) + ((n,) if not vb else ())
    count = int(np.prod(bshape, dtype=np.int64))
    if count * m * n == 0 or k == 0:
        return np.zeros(out_shape)
    if recorder_of([A, B]) is None:
        return np.matmul(A, B).reshape(out_shape)
    A, ba = _batch_operand(A, bshape, count)
    B, bb = _batch_operand(B, bshape, count)
    A, ta = _block_trans(A)
    B, tb = _block_trans(B)
    attrs = (count, m, k, n, ba, bb, ta, tb)
    return emit_family("matmul", [A, B], attrs, shape).reshape(out_shape)


def tensordot(a: Any, b: Any, axes: Any = 2) -> Any:
    """``np.tensordot``: the summed axes merged into one, as one matrix product."""
    a, b = _arr(a), _arr(b)
    if isinstance(axes, int | np.integer):
        n = int(axes)
        if n < 0 or n > min(a.ndim, b.ndim):
            raise ValueError("tensordot: axes exceeds the operands' dimensions")
        ax_a, ax_b = list(range(a.ndim - n, a.ndim)), list(range(n))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, int | np.integer) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, int | np.integer) else list(ax_b)
    ax_a = [int(x) % a.ndim for x in ax_a] if a.ndim else []
    ax_b = [int(x) % b.ndim for x in ax_b] if b.ndim else []
    if len(ax_a) != len(ax_b) or any(a.shape[i] != b.shape[j]
                                       for i, j in zip(ax_a, ax_b, strict=True)):
        raise ValueError("shape-mismatch for sum")
    free_a = [i for i in range(a.ndim) if i not in ax_a]
    free_b = [j for j in range(b.ndim) if j not in ax_b]
    m = int(np.prod([a.shape[i] for i in free_a], dtype=np.int64))
    k = int(np.prod([a.shape[i] for i in ax_a], dtype=np.int64))
    n = int(np.prod([b.shape[j] for j in free_b], dtype=np.int64))
    A = a.transpose(free_a + ax_a).reshape(m, k)
    B = b.transpose(ax_b + free_b).reshape(k, n)
    shape = tuple(a.shape[i] for i in free_a) + tuple(b.shape[j] for j in free_b)
    return matmul(A, B).reshape(shape)


def dot(a: Any, b: Any) -> Any:
    """``np.dot``: a product with a scalar, else a sum over ``a``'s last axis and ``b``'s
    second-to-last (its only one for 1-D)."""
    a, b = _arr(a), _arr(b)
    if a.ndim == 0 or b.ndim == 0:
        return emit("mul", a, b)
    return tensordot(a, b, axes=([-1], [0 if b.ndim == 1 else -2]))


def inner(a: Any, b: Any) -> Any:
    """``np.inner``: a sum over the last axes."""
    a, b = _arr(a), _arr(b)
    if a.ndim == 0 or b.ndim == 0:
        return emit("mul", a, b)
    return tensordot(a, b, axes=([-1], [-1]))


def vdot(a: Any, b: Any) -> Any:
    """``np.vdot`` of real arrays: the flattened dot product."""
    return dot(_arr(a).reshape(-1), _arr(b).reshape(-1))


# -- einsum -----------------------------------------------------------------------------
def _parse(subscripts: str, operands: list) -> tuple[list[str], str]:
    """Input subscripts (ellipses expanded to letters) and the output's."""
    s = subscripts.replace(" ", "")
    ins, arrow, out = s.partition("->")
    parts = ins.split(",")
    if len(parts) != len(operands):
        raise ValueError("einsum: more operands provided than subscripts, or fewer")
    used = set(s) - set(".,->")
    spare = [c for c in string.ascii_letters if c not in used]
    n_ell = max((x.ndim - len(p.replace("...", "")) for p, x in zip(parts, operands,
                                                                     strict=True)
                 if "..." in p), default=0)
    ell = "".join(spare[:n_ell])
    subs = []
    for p, x in zip(parts, operands, strict=True):
        if "..." in p:
            k = x.ndim - len(p.replace("...", ""))
            p = p.replace("...", ell[n_ell - k :] if k else "")
        if len(p) != x.ndim:
            raise ValueError(f"einsum: operand has {x.ndim} dimensions, subscripts {p!r}")
        subs.append(p)
    if arrow:
        out = out.replace("...", ell)
    else:
        letters = "".join(subs)
        out = ell + "".join(sorted(c for c in set(letters) - set(ell)
                                   if letters.count(c) == 1))
    return subs, out


def _diagonals(x: Any, s: str) -> tuple[Any, str]:
    """Repeated letters of one operand: their diagonal (a view of the ids)."""
    while len(set(s)) < len(s):
        c = next(c for c in s if s.count(c) > 1)
        i = s.index(c)
        j = s.index(c, i + 1)
        x = (Tracer(recorder_of([x]), np.diagonal(ids_of(x), 0, i, j))
             if isinstance(x, Tracer) else np.diagonal(x, 0, i, j))
        s = s[:i] + s[i + 1 : j] + s[j + 1 :] + c
    return x, s


def _sum_out(x: Any, s: str, keep: set) -> tuple[Any, str]:
    """Sum the axes whose letters no later step needs."""
    axes = tuple(i for i, c in enumerate(s) if c not in keep)
    if not axes:
        return x, s
    return np.sum(x, axis=axes), "".join(c for c in s if c in keep)


def _pair(x: Any, sx: str, y: Any, sy: str, keep: set) -> tuple[Any, str]:
    """Contract two operands over their shared letters not in ``keep``."""
    batch = [c for c in sx if c in sy and c in keep]
    con = [c for c in sx if c in sy and c not in keep]
    fa = [c for c in sx if c not in sy]
    fb = [c for c in sy if c not in sx]
    size = {**dict(zip(sy, y.shape, strict=True)), **dict(zip(sx, x.shape, strict=True))}
    for c in batch + con:  # size-1 axes broadcast against the other operand
        size[c] = max(x.shape[sx.index(c)], y.shape[sy.index(c)])
    x = _broadcast(x, sx, size)
    y = _broadcast(y, sy, size)
    nb, nfa, nfb, nk = (int(np.prod([size[c] for c in g], dtype=np.int64))
                        for g in (batch, fa, fb, con))
    X = x.transpose([sx.index(c) for c in batch + fa + con]).reshape(nb, nfa, nk)
    Y = y.transpose([sy.index(c) for c in batch + con + fb]).reshape(nb, nk, nfb)
    r = matmul(X, Y).reshape(tuple(size[c] for c in batch + fa + fb))
    return r, "".join(batch + fa + fb)


def _broadcast(x: Any, s: str, size: dict) -> Any:
    shape = tuple(size[c] for c in s)
    if tuple(x.shape) == shape:
        return x
    if isinstance(x, Tracer):
        return Tracer(recorder_of([x]), np.broadcast_to(ids_of(x), shape))
    return np.broadcast_to(x, shape)


def einsum(subscripts: Any, *operands: Any, optimize: Any = False, **kwargs: Any) -> Any:
    """``np.einsum`` with subscripts: diagonals and single-operand sums first, then
    pairwise contractions (numpy's ``einsum_path`` order when ``optimize`` asks for
    one), each one matrix product."""
    for key in ("out", "dtype", "order", "casting"):
        if kwargs.get(key) not in (None, "K", "safe"):
            raise TracingError(f"numpy.einsum(..., {key}=...) cannot be traced")
    if not isinstance(subscripts, str):
        raise TracingError("numpy.einsum with sublists (the interleaved form) cannot be "
                           "traced; pass the subscripts as a string")
    ops = [_arr(x) for x in operands]
    subs, out = _parse(subscripts, ops)
    if len(set(out)) < len(out) or set(out) - set("".join(subs)):
        raise ValueError(f"einsum: invalid output subscripts {out!r}")
    items = [_diagonals(x, s) for x, s in zip(ops, subs, strict=True)]
    pairs: list[tuple[int, int]] = []
    if optimize not in (False, None) and len(items) > 2:
        path, _ = np.einsum_path(subscripts, *(np.zeros(x.shape) for x in ops),
                                 optimize=optimize)
        pairs = [tuple(p) for p in path[1:]]
    while len(items) > 1:
        i, j = pairs.pop(0) if pairs else (0, 1)
        i, j = sorted((i, j))
        rest = [s for n, (_, s) in enumerate(items) if n not in (i, j)]
        keep = set(out).union(*map(set, rest))
        (x, sx), (y, sy) = items[i], items[j]
        x, sx = _sum_out(x, sx, keep | set(sy))
        y, sy = _sum_out(y, sy, keep | set(sx))
        r = _pair(x, sx, y, sy, keep)
        items = [it for n, it in enumerate(items) if n not in (i, j)] + [r]
    x, s = items[0]
    x, s = _sum_out(x, s, set(out))
    return x.transpose([s.index(c) for c in out]) if s != out else x
