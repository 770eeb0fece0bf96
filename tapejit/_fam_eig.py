"""The Python side of the ``eigh``, ``svd`` and ``qr`` instruction families.

For each family: its attributes and sizes, a check of attribute values, a numpy
reference at one point, and the recording of the numpy functions it implements
(``np.linalg.eigh``, ``eigvalsh``, ``svd``, ``qr``). The recording functions take the
recording call ``emit_family(name, operands, attrs, shape)`` as their first argument
(operands flattened in C order; it returns a tracer); untraced calls are plain numpy.
The kernel routines are in ``tapejit/_kernels/fam_eig.py``.

Attributes
----------
eigh: ``(n, lower, vectors)``; operand ``a`` n x n, of which only the triangle named
by ``lower`` (1: ``UPLO='L'``, 0: ``'U'``) is read; result: the n eigenvalues
(ascending) then, with ``vectors == 1``, the n x n eigenvectors (columns), as numpy
returns them. ``vectors == 0`` is ``eigvalsh``.
svd: ``(m, n, full_matrices, compute_uv)``; operand ``a`` m x n; result ``U`` (m x k),
``S`` (k), ``Vh`` (k x n), ``k = min(m, n)``, or ``S`` alone with ``compute_uv == 0``.
``full_matrices == 1`` only with ``m == n`` (the extra columns of a rectangular matrix's
full ``U`` or ``V`` are not unique, so they have no derivative).
qr: ``(m, n)``, ``m >= n``; operand ``a`` m x n; result ``Q`` (m x n) then ``R`` (n x n),
numpy's ``mode='reduced'``.

Derivatives are those of the returned factors, with LAPACK's choice of signs (of the
eigenvectors, the singular vectors and R's diagonal): the same choice at nearby
points, so the derivative of that choice. The kernels and the references run the same
LAPACK routines as numpy (``syevd``, ``gesdd``, ``geqrf``/``orgqr``), from scipy's
LAPACK, so the signs are numpy's, except for ``eigh(a, UPLO='U')``: it is computed as
``eigh`` of the lower triangle of ``a.T`` (the same matrix), whose eigenvectors may
differ from numpy's ``'U'`` ones in sign. Where eigenvalues or singular values are
repeated the eigenvector/singular-vector derivatives do not exist: the kernels give
inf/NaN there, never a finite guess; gradients of the eigenvalues or singular values
alone (``eigvalsh``, ``compute_uv=False``, or only the values of ``eigh``/``svd`` used)
stay finite and exact wherever the function of them is differentiable.

A factorization that fails (non-finite input) gives NaN for the whole result, in the
references as in the kernels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from tapejit._errors import TracingError
from tapejit._program import (
    MAX_FAMILY_SIZE,
    EmitFamily,
    Family,
    attr_columns,
    sizes_by_row,
)
from tapejit._tracer import Tracer, emit_family

# -- attributes and sizes ----------------------------------------------------------------

def _flags_bad(v: np.ndarray) -> np.ndarray:
    return np.any((v != 0) & (v != 1), axis=1)


def eigh_check(values: np.ndarray) -> np.ndarray:
    """Bad rows of ``eigh`` attributes ``(n, lower, vectors)``."""
    v = attr_columns(values)
    n = v[:, 0]
    return (n < 0) | (n * n + n > MAX_FAMILY_SIZE) | _flags_bad(v[:, 1:3])


def svd_check(values: np.ndarray) -> np.ndarray:
    """Bad rows of ``svd`` attributes ``(m, n, full_matrices, compute_uv)``: a negative
    or too large size, a flag other than 0 or 1, or full matrices of a non-square one."""
    v = attr_columns(values)
    m, n = v[:, 0], v[:, 1]
    k = np.minimum(m, n)
    bad = (m < 0) | (n < 0) | (m * n > MAX_FAMILY_SIZE) | (m * k + k + k * n > MAX_FAMILY_SIZE)
    return bad | _flags_bad(v[:, 2:4]) | ((v[:, 2] == 1) & (v[:, 3] == 1) & (m != n))


def qr_check(values: np.ndarray) -> np.ndarray:
    """Bad rows of ``qr`` attributes ``(m, n)``: sizes out of range or ``m < n``."""
    v = attr_columns(values)
    m, n = v[:, 0], v[:, 1]
    return (n < 0) | (m < n) | (m * n + n * n > MAX_FAMILY_SIZE)


def eigh_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size and operand length of ``eigh``."""
    n, _, vectors = attrs
    return n + (n * n if vectors else 0), n * n


def svd_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size and operand length of ``svd``."""
    m, n, _, uv = attrs
    k = min(m, n)
    return (m * k + k + k * n) if uv else k, m * n


def qr_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size and operand length of ``qr``."""
    m, n = attrs
    return m * n + n * n, m * n


# -- numpy references at one point -------------------------------------------------------
def eigh_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                   c: Any = None) -> np.ndarray:
    """Eigenvalues (then eigenvectors) flattened; NaN if the input is not finite."""
    from scipy.linalg import eigh

    n, lower, vectors = attrs
    mat = np.asarray(a, np.float64).reshape(n, n)
    size = eigh_sizes(attrs)[0]
    if n == 0:
        return np.zeros(0)
    # the symmetric matrix of the read triangle, its lower triangle to LAPACK's syevd as
    # the kernels do (scipy's LAPACK: the kernels' own, so the same eigenvector signs)
    low = np.tril(mat) if lower else np.triu(mat).T
    if not np.all(np.isfinite(low)):
        return np.full(size, np.nan)
    w, v = eigh(low, lower=True, driver="evd", check_finite=False)
    return np.concatenate([w, v.ravel()]) if vectors else w


def svd_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                  c: Any = None) -> np.ndarray:
    """``U, S, Vh`` (reduced) or ``S`` flattened; NaN if the input is not finite."""
    m, n, _, uv = attrs
    mat = np.asarray(a, np.float64).reshape(m, n)
    size = svd_sizes(attrs)[0]
    if min(m, n) == 0:
        return np.zeros(size)
    if not np.all(np.isfinite(mat)):
        return np.full(size, np.nan)
    # scipy's LAPACK (gesdd), the kernels' own
    from scipy.linalg import LinAlgError, svd

    try:
        u, s, vh = svd(mat, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except LinAlgError:
        return np.full(size, np.nan)
    if not uv:
        return s
    return np.concatenate([u.ravel(), s, vh.ravel()])


def qr_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                 c: Any = None) -> np.ndarray:
    """``Q, R`` (reduced) flattened; NaN if the input is not finite."""
    m, n = attrs
    mat = np.asarray(a, np.float64).reshape(m, n)
    if n == 0:
        return np.zeros(0)
    if not np.all(np.isfinite(mat)):
        return np.full(m * n + n * n, np.nan)
    from scipy.linalg import qr  # scipy's LAPACK (geqrf, orgqr), the kernels' own

    q, r = qr(mat, mode="economic", check_finite=False)
    return np.concatenate([q.ravel(), r.ravel()])


# -- reverse rules as traced numpy (nested differentiation, ``tapejit/_nested.py``) ------
def eigh_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """The kernels' rule: ``Abar = V X V^T``, ``X = diag(wbar) + F o (V^T Vbar)``,
    ``F_ij = 1 / (w_j - w_i)`` (0 where the numerator is 0; a gap within rounding of 0
    is 0: inf/NaN), folded onto the triangle that is read. Without eigenvectors
    (``eigvalsh``) they are recorded first (one more ``eigh`` of the same matrix)."""
    n, lower, vectors = (int(v) for v in attrs)
    if n == 0:
        return (None,)
    g = np.reshape(cotangent, -1)
    if vectors:
        both = np.reshape(result, -1)
    else:
        both = emit_family("eigh", [np.reshape(operands[0], -1)], (n, lower, 1),
                           (n + n * n,))
    w, V = both[:n], np.reshape(both[n:], (n, n))
    eye = np.eye(n, dtype=bool)
    X = np.broadcast_to(g[:n], (n, n))
    if vectors:
        num = V.T @ np.reshape(g[n:], (n, n))
        X = np.where(eye, X, _ratio(num, w[None, :] - w[:, None], _tiny(w, 1)))
    else:
        X = np.where(eye, X, 0.0)
    Z = V @ X @ V.T
    off = np.tril(np.ones((n, n), dtype=bool), -1) if lower else np.triu(
        np.ones((n, n), dtype=bool), 1)
    return (np.reshape(np.where(off, Z + Z.T, np.where(eye, Z, 0.0)), -1),)


def _ratio(num: Any, den: Any, tiny: Any) -> Any:
    """``num / den`` with the kernels' convention (``_eig_ratio``): 0 where ``num`` is 0,
    a ``den`` within ``tiny`` of 0 counted as 0 (inf/NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num == 0.0, 0.0, num / np.where(np.abs(den) <= tiny, 0.0, den))


def _tiny(x: Any, power: int) -> Any:
    """The kernels' ``_eig_tiny``: differences this small are rounding noise."""
    return 10.0 * np.shape(x)[0] * np.finfo(np.float64).eps * np.max(np.abs(x)) ** power


def svd_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """Townsend's rule, as the kernels: ``Abar = U X Vh + (I - U U^T) Ubar S^-1 Vh +
    U S^-1 Vhbar (I - V V^T)``, ``X = (F o (J - J^T)) S + diag(sbar) + S (F o (L -
    L^T))``, ``J = U^T Ubar``, ``L = Vh Vhbar^T``, ``F_ij = 1 / (s_j^2 - s_i^2)``.
    Without singular vectors (``compute_uv=False``) they are recorded first, and only
    ``U diag(sbar) Vh`` remains (the kernels add the projection terms, 0 there, which
    are NaN where a rectangular matrix has a zero singular value)."""
    m, n, full, uv = (int(v) for v in attrs)
    k = min(m, n)
    if k == 0:
        return (None,)
    g = np.reshape(cotangent, -1)
    parts = np.reshape(result, -1) if uv else emit_family(
        "svd", [np.reshape(operands[0], -1)], (m, n, full, 1), (m * k + k + k * n,))
    U = np.reshape(parts[: m * k], (m, k))
    s = parts[m * k : m * k + k]
    Vh = np.reshape(parts[m * k + k :], (k, n))
    eye = np.eye(k, dtype=bool)
    X = np.broadcast_to(g[m * k : m * k + k] if uv else g, (k, k))
    if not uv:
        return (np.reshape(U @ np.where(eye, X, 0.0) @ Vh, -1),)
    Ub, Vhb = np.reshape(g[: m * k], (m, k)), np.reshape(g[m * k + k :], (k, n))
    J, L = U.T @ Ub, Vh @ Vhb.T
    num = (J - J.T) * s[None, :] + s[:, None] * (L - L.T)
    X = np.where(eye, X, _ratio(num, s[None, :] ** 2 - s[:, None] ** 2, _tiny(s, 2)))
    Z = U @ X @ Vh
    if m > k or n > k:
        with np.errstate(divide="ignore"):
            inv = np.where(np.abs(s) > np.sqrt(_tiny(s, 2)), 1.0 / s, np.inf)
        if m > k:
            Z = Z + ((Ub - U @ J) * inv[None, :]) @ Vh
        if n > k:
            Z = Z + U @ ((Vhb - L.T @ Vh) * inv[:, None])
    return (np.reshape(Z, -1),)


def qr_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """The kernels' rule: ``M = R Rbar^T - Qbar^T Q``, ``Abar = (Qbar + Q copyltu(M))
    R^-T`` (a diagonal entry of ``R`` within rounding of 0 counted as 0: inf/NaN)."""
    from tapejit._fam_chol import record_solve_triangular

    m, n = (int(v) for v in attrs)
    if n == 0:
        return (None,)
    parts, g = np.reshape(result, -1), np.reshape(cotangent, -1)
    Q, R = np.reshape(parts[: m * n], (m, n)), np.reshape(parts[m * n :], (n, n))
    Qb, Rb = np.reshape(g[: m * n], (m, n)), np.reshape(g[m * n :], (n, n))
    M = R @ Rb.T - Qb.T @ Q
    low = np.tril(np.ones((n, n), dtype=bool))
    B = Qb + Q @ np.where(low, M, M.T)
    d = np.diagonal(R)
    eye = np.eye(n, dtype=bool)
    R0 = np.where(eye, np.where(np.abs(R) <= np.sqrt(_tiny(d, 2)), 0.0, R), R)
    # X R0^T = B, i.e. R0 X^T = B^T (upper triangular)
    Xt = record_solve_triangular(emit_family, R0, B.T, trans=0, lower=False)
    return (np.reshape(Xt.T, -1),)


def _eig(name: str, opcode: int, attrs: tuple[str, ...], check, sizes, reference,
         failure: str, vjp=None) -> Family:
    return Family(name, opcode, 1, attrs, check=check,
                  sizes=sizes_by_row(sizes), kernel="fam_eig", reference=reference,
                  failure=failure, blas=True, vjp=vjp)


#: The families of this module.
EIG_FAMILIES = (
    _eig("eigh", 137, ("n", "lower", "vectors"), eigh_check, eigh_sizes, eigh_reference,
         "Eigenvalues did not converge (or a non-finite matrix)", eigh_vjp),
    _eig("svd", 138, ("m", "n", "full_matrices", "compute_uv"), svd_check, svd_sizes,
         svd_reference, "SVD did not converge (or a non-finite matrix)", svd_vjp),
    _eig("qr", 139, ("m", "n"), qr_check, qr_sizes, qr_reference,
         "QR of a non-finite matrix", qr_vjp),
)


# -- recording ---------------------------------------------------------------------------
class EighResult(NamedTuple):
    """``(eigenvalues, eigenvectors)``, as ``numpy.linalg.eigh`` returns them."""

    eigenvalues: Any
    eigenvectors: Any


class SVDResult(NamedTuple):
    """``(U, S, Vh)``, as ``numpy.linalg.svd`` returns them."""

    U: Any
    S: Any
    Vh: Any


class QRResult(NamedTuple):
    """``(Q, R)``, as ``numpy.linalg.qr`` returns them."""

    Q: Any
    R: Any


def _traced(x: Any) -> bool:
    return isinstance(x, Tracer)


def _matrices(a: Any, what: str) -> tuple[int, int]:
    if not _traced(a) and np.asarray(a).dtype.kind not in "biuf":
        raise TracingError(f"numpy.linalg.{what} of an array of dtype "
                           f"{np.asarray(a).dtype} cannot be traced; expected real numbers")
    if a.ndim < 2:
        raise np.linalg.LinAlgError(f"{a.ndim}-dimensional array given. Array must be at "
                                    "least two-dimensional")
    return int(a.shape[-2]), int(a.shape[-1])


def _each(a: Any, size: int, one: Callable[[Any], Any]) -> Any:
    # one(matrix) -> flat result of `size`, for every matrix of the stack a (one
    # instruction each), stacked as (*batch, size); np.stack records no arithmetic.
    batch = tuple(a.shape[:-2])
    if not batch:
        return one(a)
    if 0 in batch:
        return np.zeros((*batch, size))
    parts = [one(a[idx]) for idx in itertools.product(*(range(s) for s in batch))]
    return np.stack(parts).reshape((*batch, size))


def _flat(x: Any) -> Any:
    return x.reshape(-1)


def _eigh_values(emit_family: EmitFamily, a: Any, uplo: str, vectors: bool,
                 what: str) -> tuple[Any, Any]:
    rows, n = _matrices(a, what)
    if rows != n:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    if uplo not in ("L", "U"):
        raise ValueError("UPLO argument must be 'L' or 'U'")
    attrs = (n, int(uplo == "L"), int(vectors))
    size = eigh_sizes(attrs)[0]
    res = _each(a, size, lambda x: emit_family("eigh", [_flat(x)], attrs, (size,)))
    w = res[..., :n]
    if not vectors:
        return w, None
    return w, res[..., n:].reshape((*tuple(a.shape[:-2]), n, n))


def record_eigh(emit_family: EmitFamily, a: Any, UPLO: str = "L") -> EighResult:
    """``numpy.linalg.eigh(a, UPLO)`` of ``(..., n, n)``, one instruction per matrix.

    Only the triangle named by ``UPLO`` is read (numpy's behaviour): the derivatives with
    respect to the other one are zero. The eigenvector derivatives are those of the
    vectors LAPACK returns (its signs); with repeated eigenvalues they are inf/NaN.
    """
    if not _traced(a):
        return np.linalg.eigh(a, UPLO=UPLO)
    w, v = _eigh_values(emit_family, a, UPLO, True, "eigh")
    return EighResult(w, v)


def record_eigvalsh(emit_family: EmitFamily, a: Any, UPLO: str = "L") -> Any:
    """``numpy.linalg.eigvalsh(a, UPLO)``: exact gradients even at repeated eigenvalues
    (for functions of them that are differentiable there)."""
    if not _traced(a):
        return np.linalg.eigvalsh(a, UPLO=UPLO)
    return _eigh_values(emit_family, a, UPLO, False, "eigvalsh")[0]


def record_svd(emit_family: EmitFamily, a: Any, full_matrices: bool = True,
               compute_uv: bool = True, hermitian: bool = False) -> Any:
    """``numpy.linalg.svd`` (same arguments) of ``(..., m, n)``, one instruction per matrix.

    ``full_matrices=True`` (numpy's default) is traced for square matrices only, where it
    is the reduced decomposition; ``hermitian=True`` only with ``compute_uv=False`` (the
    singular values of the symmetric matrix with ``a``'s lower triangle, as numpy reads
    it). Singular vectors are LAPACK's (its signs); with repeated singular values, or
    zero ones of a rectangular matrix, their derivatives are inf/NaN.
    """
    if not _traced(a):
        return np.linalg.svd(a, full_matrices=full_matrices, compute_uv=compute_uv,
                             hermitian=hermitian)
    m, n = _matrices(a, "svd")
    if hermitian:
        if compute_uv:
            raise TracingError(
                "numpy.linalg.svd(..., hermitian=True) cannot be traced with "
                "compute_uv=True (numpy sorts eigenvectors by |eigenvalue|); use "
                "np.linalg.eigh, or hermitian=False")
        if m != n:
            raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
        low = np.tril(np.ones((n, n), dtype=bool))
        a = np.where(low, a, np.swapaxes(a, -1, -2))
    if compute_uv and full_matrices and m != n:
        raise TracingError(
            f"numpy.linalg.svd of a {m} x {n} matrix with full_matrices=True cannot be "
            "traced: the extra columns of U or V are not unique, so they have no "
            "derivative; pass full_matrices=False")
    k = min(m, n)
    attrs = (m, n, int(bool(full_matrices) and m == n), int(bool(compute_uv)))
    size = svd_sizes(attrs)[0]
    res = _each(a, size, lambda x: emit_family("svd", [_flat(x)], attrs, (size,)))
    if not compute_uv:
        return res
    batch = tuple(a.shape[:-2])
    u = res[..., : m * k].reshape((*batch, m, k))
    s = res[..., m * k: m * k + k]
    vh = res[..., m * k + k:].reshape((*batch, k, n))
    return SVDResult(u, s, vh)


def record_qr(emit_family: EmitFamily, a: Any, mode: str = "reduced") -> Any:
    """``numpy.linalg.qr(a, mode)`` of ``(..., m, n)`` with ``m >= n``, one instruction per
    matrix: ``mode`` ``'reduced'`` (``QRResult``), ``'r'`` (R only), or ``'complete'``
    of a square matrix (the same). R's diagonal signs are LAPACK's; a rank-deficient
    matrix gives inf/NaN derivatives."""
    if not _traced(a):
        return np.linalg.qr(a, mode=mode)
    m, n = _matrices(a, "qr")
    if mode not in ("reduced", "r", "complete"):
        raise TracingError(f"numpy.linalg.qr(..., mode={mode!r}) cannot be traced; use "
                           "mode='reduced'")
    if m < n:
        raise TracingError(f"numpy.linalg.qr of a {m} x {n} matrix (fewer rows than "
                           "columns) cannot be traced; qr(a.T) records")
    if mode == "complete" and m != n:
        raise TracingError("numpy.linalg.qr(..., mode='complete') of a non-square matrix "
                           "cannot be traced: the extra columns of Q are not unique; use "
                           "mode='reduced'")
    attrs = (m, n)
    size = qr_sizes(attrs)[0]
    res = _each(a, size, lambda x: emit_family("qr", [_flat(x)], attrs, (size,)))
    batch = tuple(a.shape[:-2])
    r = res[..., m * n:].reshape((*batch, n, n))
    if mode == "r":
        return r
    return QRResult(res[..., : m * n].reshape((*batch, m, n)), r)
