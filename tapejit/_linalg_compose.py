"""numpy and scipy linear-algebra functions composed of other numpy calls.

Each function here has the signature of the numpy/scipy function it stands in for and
is written only with numpy calls on its operands (``np.linalg.svd``, ``eigh``,
``solve``, ``inv``, ``@``, reductions, elementwise ufuncs, ``np.where``, shape
functions). Given plain arrays it computes numpy's (scipy's) values; given tracers the
same code records those calls, so each of these needs no derivative rules of its own.

Value-dependent choices are written so that they record correctly:

- thresholds on singular values (``pinv``, ``lstsq``) select with ``np.where``, which
  records branch-free (the reciprocal of a discarded value is never formed, so it
  cannot spoil a gradient with ``0 * inf``);
- a choice of shapes or of a number of steps (``lstsq``'s residuals exist only at full
  rank; ``expm``'s number of squarings) is a Python ``if`` on a traced comparison,
  which records a guard: a point that would choose differently is refused, never given
  this choice's values.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from tapejit._tracer import Tracer

#: The 1-norm bound of Higham's Pade 13 approximant (Higham 2005, Table 2.3).
_THETA_13 = 5.371920351148152

#: Higham's Pade 13 coefficients b_0 .. b_13.
_PADE_13 = (64764752532480000.0, 32382376266240000.0, 7771770303897600.0,
            1187353796428800.0, 129060195264000.0, 10559470521600.0, 670442572800.0,
            33522128640.0, 1323241920.0, 40840800.0, 960960.0, 16380.0, 182.0, 1.0)

_UNSET = object()


def _array(x: Any) -> Any:
    # Plain inputs become float arrays (numpy's linalg does so); tracers stay.
    if isinstance(x, Tracer):
        return x
    arr = np.asarray(x)
    return arr.astype(np.float64) if arr.dtype.kind in "biu" else arr


def _square_stack(a: Any) -> int:
    if a.ndim < 2:
        raise np.linalg.LinAlgError(f"{a.ndim}-dimensional array given. Array must be at "
                                    "least two-dimensional")
    if a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    return int(a.shape[-1])


def _transpose_last(x: Any) -> Any:
    return np.swapaxes(x, -1, -2)


def _reciprocal_above(s: Any, cutoff: Any) -> Any:
    # 1 / s where |s| > cutoff, else 0, branch-free and with finite derivatives.
    large = np.abs(s) > cutoff
    return np.where(large, 1.0 / np.where(large, s, 1.0), 0.0)


def pinv(a: Any, rcond: Any = None, hermitian: bool = False, *, rtol: Any = _UNSET) -> Any:
    """``numpy.linalg.pinv``: ``V diag(1/s) U^T`` over the singular values above
    ``rcond * max(s)`` (with ``hermitian``: ``V diag(1/w) V^T`` from ``eigh``).

    Its derivatives are those of the SVD (of ``eigh``): inf/NaN when singular values
    are repeated or, for a rectangular matrix, zero.
    """
    a = _array(a)
    if rcond is None:
        if rtol is _UNSET:
            rcond = 1e-15
        elif rtol is None:
            rcond = max(a.shape[-2:]) * np.finfo(np.float64).eps
        else:
            rcond = rtol
    elif rtol is not _UNSET:
        raise ValueError("`rtol` and `rcond` can't be both set.")
    rcond = np.asarray(rcond)
    m, n = a.shape[-2:]
    if m == 0 or n == 0:
        return np.zeros((*a.shape[:-2], n, m))
    if hermitian:
        s, u = np.linalg.eigh(a)
        vt = _transpose_last(u)
    else:
        u, s, vt = np.linalg.svd(a, full_matrices=False)
    cutoff = rcond[..., np.newaxis] * np.max(np.abs(s), axis=-1, keepdims=True)
    inv = _reciprocal_above(s, cutoff)
    return _transpose_last(vt) @ (inv[..., np.newaxis] * _transpose_last(u))


def lstsq(a: Any, b: Any, rcond: Any = None) -> tuple[Any, Any, Any, Any]:
    """``numpy.linalg.lstsq``: ``(x, residuals, rank, s)``, by the SVD of ``a``.

    Singular values at most ``rcond * max(s)`` are discarded, as LAPACK's ``gelsd``
    does (``rcond < 0``: machine precision). ``rank`` counts the others (traced: a
    traced count). ``residuals`` are the squared column norms of ``b - a x`` when
    ``rank == n < m``, else empty; traced, that condition is a guard.
    """
    a = _array(a)
    b = _array(b)
    if a.ndim != 2 or b.ndim not in (1, 2):
        raise np.linalg.LinAlgError(f"{min(a.ndim, b.ndim)}-dimensional array given. "
                                    "Array must be two-dimensional")
    m, n = a.shape
    if b.shape[0] != m:
        raise np.linalg.LinAlgError("Incompatible dimensions")
    eps = np.finfo(np.float64).eps
    if rcond is None:
        rcond = eps * max(n, m)
    elif rcond < 0:
        rcond = eps
    b2 = b[:, np.newaxis] if b.ndim == 1 else b
    k = min(m, n)
    if k == 0:
        x = np.zeros((n, b2.shape[1]))
        s = np.zeros(0)
        rank = 0
    else:
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        inv = _reciprocal_above(s, rcond * np.max(s))
        x = vt.T @ (inv[:, np.newaxis] * (u.T @ b2))
        rank = np.sum(np.where(s > rcond * np.max(s), 1.0, 0.0))
        if not isinstance(rank, Tracer):
            rank = np.int32(rank)
    if m > n and rank == n:
        resid = b2 - a @ x
        residuals = np.sum(resid * resid, axis=0)
    else:
        residuals = np.zeros(0)
    return (x[:, 0] if b.ndim == 1 else x), residuals, rank, s


def _vector_norm(x: Any, ord: Any, axis: int, keepdims: bool) -> Any:
    if ord == np.inf:
        return np.max(np.abs(x), axis=axis, keepdims=keepdims)
    if ord == -np.inf:
        return np.min(np.abs(x), axis=axis, keepdims=keepdims)
    if ord == 0:
        return np.sum(np.where(x != 0, 1.0, 0.0), axis=axis, keepdims=keepdims)
    if ord == 1:
        return np.sum(np.abs(x), axis=axis, keepdims=keepdims)
    if ord is None or ord == 2:
        return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims))
    if isinstance(ord, str):
        raise ValueError(f"Invalid norm order '{ord}' for vectors")
    return np.sum(np.abs(x) ** ord, axis=axis, keepdims=keepdims) ** (1.0 / ord)


def _singular_values(x: Any, row: int, col: int) -> Any:
    return np.linalg.svd(np.moveaxis(x, (row, col), (-2, -1)), compute_uv=False)


def _matrix_norm(x: Any, ord: Any, row: int, col: int) -> Any:
    if ord == 2:
        return np.max(_singular_values(x, row, col), axis=-1)
    if ord == -2:
        return np.min(_singular_values(x, row, col), axis=-1)
    if ord == 1:
        return np.max(np.sum(np.abs(x), axis=row), axis=col - 1 if col > row else col)
    if ord == np.inf:
        return np.max(np.sum(np.abs(x), axis=col), axis=row - 1 if row > col else row)
    if ord == -1:
        return np.min(np.sum(np.abs(x), axis=row), axis=col - 1 if col > row else col)
    if ord == -np.inf:
        return np.min(np.sum(np.abs(x), axis=col), axis=row - 1 if row > col else row)
    if ord in (None, "fro", "f"):
        return np.sqrt(np.sum(np.square(x), axis=(row, col)))
    if ord == "nuc":
        return np.sum(_singular_values(x, row, col), axis=-1)
    raise ValueError("Invalid norm order for matrices.")


def norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Any:
    """``numpy.linalg.norm`` for every ``ord`` numpy accepts, with ``axis`` and
    ``keepdims``: vector norms by reductions, the matrix 2-norm, -2-norm and nuclear
    norm by the singular values (``np.linalg.svd(..., compute_uv=False)``)."""
    x = _array(x)
    nd = x.ndim
    if axis is None:
        if ord is None or (ord in ("f", "fro") and nd == 2) or (ord == 2 and nd == 1):
            ret = np.sqrt(np.sum(np.square(x)))
            return ret.reshape((1,) * nd) if keepdims else ret
        axis = tuple(range(nd))
    elif not isinstance(axis, tuple):
        axis = (operator.index(axis),)
    if len(axis) == 1:
        return _vector_norm(x, ord, axis[0], keepdims)
    if len(axis) != 2:
        raise ValueError("Improper number of dimensions to norm.")
    row, col = (operator.index(v) % nd for v in axis)
    if row == col:
        raise ValueError("Duplicate axes given.")
    ret = _matrix_norm(x, ord, row, col)
    if keepdims:
        shape = list(x.shape)
        shape[row] = 1
        shape[col] = 1
        ret = ret.reshape(tuple(shape))
    return ret


def matrix_power(a: Any, n: int) -> Any:
    """``numpy.linalg.matrix_power``: repeated squaring with ``@`` (numpy's order of
    products); a negative power of ``inv(a)``."""
    a = _array(a)
    size = _square_stack(a)
    try:
        n = operator.index(n)
    except TypeError as e:
        raise TypeError("exponent must be an integer") from e
    if n == 0:
        return np.broadcast_to(np.eye(size), a.shape).copy()
    if n < 0:
        a = np.linalg.inv(a)
        n = -n
    if n == 1:
        return a
    if n == 2:
        return a @ a
    if n == 3:
        return (a @ a) @ a
    z = result = None
    while n > 0:
        z = a if z is None else z @ z
        n, bit = divmod(n, 2)
        if bit:
            result = z if result is None else result @ z
    return result


def expm(a: Any) -> Any:
    """``scipy.linalg.expm`` of ``(..., n, n)``: scaling and squaring with Higham's Pade 13
    approximant (the order scipy uses for all but small norms; the values agree to
    rounding). The number of squarings ``s`` comes from the largest 1-norm of the
    stack; traced, each comparison that decides it records a guard."""
    a = _array(a)
    size = _square_stack(a)
    if size == 0 or a.size == 0:
        return np.zeros(a.shape)
    norm1 = np.max(np.sum(np.abs(a), axis=-2))
    s = 0
    # (the bound keeps 2.0**s finite: an infinite norm gives NaN, not a endless loop)
    while s < 1023 and norm1 > _THETA_13 * 2.0**s:
        s += 1
    a = a * 2.0**-s
    b = _PADE_13
    eye = np.eye(size)
    a2 = a @ a
    a4 = a2 @ a2
    a6 = a2 @ a4
    u = a @ (a6 @ (b[13] * a6 + b[11] * a4 + b[9] * a2)
             + b[7] * a6 + b[5] * a4 + b[3] * a2 + b[1] * eye)
    v = (a6 @ (b[12] * a6 + b[10] * a4 + b[8] * a2)
         + b[6] * a6 + b[4] * a4 + b[2] * a2 + b[0] * eye)
    r = np.linalg.solve(v - u, v + u)
    for _ in range(s):
        r = r @ r
    return r


def cross(a: Any, b: Any, axisa: int = -1, axisb: int = -1, axisc: int = -1,
          axis: int | None = None) -> Any:
    """``numpy.cross`` of 3- (or 2-) component vectors along the given axes, by its
    componentwise formula (numpy's products in numpy's order)."""
    if axis is not None:
        axisa = axisb = axisc = axis
    a = np.moveaxis(_array(a), axisa, -1)
    b = np.moveaxis(_array(b), axisb, -1)
    if a.shape[-1] not in (2, 3) or b.shape[-1] not in (2, 3):
        raise ValueError("incompatible dimensions for cross product\n(dimension must be "
                         "2 or 3)")
    a0, a1 = a[..., 0], a[..., 1]
    b0, b1 = b[..., 0], b[..., 1]
    cp2 = a0 * b1 - a1 * b0
    if a.shape[-1] == 2 and b.shape[-1] == 2:
        return cp2
    if a.shape[-1] == 3 and b.shape[-1] == 3:
        a2, b2 = a[..., 2], b[..., 2]
        cp0 = a1 * b2 - a2 * b1
        cp1 = a2 * b0 - a0 * b2
    elif a.shape[-1] == 2:
        b2 = b[..., 2]
        cp0 = a1 * b2
        cp1 = -(a0 * b2)
    else:
        a2 = a[..., 2]
        cp0 = -(a2 * b1)
        cp1 = a2 * b0
    cp = np.stack([cp0, cp1, cp2], axis=-1)
    return np.moveaxis(cp, -1, axisc)


def kron(a: Any, b: Any) -> Any:
    """``numpy.kron``: the outer product of the two arrays with their axes interleaved,
    then merged pairwise."""
    a = _array(a)
    b = _array(b)
    nd = max(a.ndim, b.ndim)
    a = a.reshape((1,) * (nd - a.ndim) + tuple(a.shape))
    b = b.reshape((1,) * (nd - b.ndim) + tuple(b.shape))
    inter_a = tuple(v for d in a.shape for v in (d, 1))
    inter_b = tuple(v for d in b.shape for v in (1, d))
    out = a.reshape(inter_a) * b.reshape(inter_b)
    return out.reshape(tuple(da * db for da, db in zip(a.shape, b.shape, strict=True)))


def trace(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype: Any = None,
          out: Any = None) -> Any:
    """``numpy.trace``: the sum of ``np.diagonal(a, offset, axis1, axis2)``."""
    if out is not None:
        raise TypeError("trace(..., out=...) is not supported while recording")
    return np.sum(np.diagonal(_array(a), offset, axis1, axis2), axis=-1)
