"""The Python side of the ``cholesky`` and ``solve_triangular`` instruction families.

For each family: a numpy reference of one point (flat float64 operands), the result
size and a check of attribute values; and the recording of the numpy/scipy functions
built on them (``np.linalg.cholesky``, ``scipy.linalg.solve_triangular``,
``cho_factor``, ``cho_solve``), written against the recording call
``emit_family(name, operands, attrs, shape)``. The kernel routines are in
``tapejit/_kernels/fam_chol.py``.

Attributes
----------
cholesky: ``(n,)``; operand ``a``: n x n (its lower triangle is read), result: L,
n x n, lower triangular.
solve_triangular: ``(n, k, lower, trans, unit_diagonal)``; operands ``a`` (n x n) and
``b`` (n x k); result X (n x k) with ``op(A) X = B`` (``trans`` 0: ``A``, 1: ``A^T``).

A matrix that is not positive definite gives NaN for all of its factor (kernels and
reference alike); a triangular matrix with a zero on its diagonal gives non-finite
values (the reference: NaN). Neither raises inside a sweep: the boundary decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._program import MAX_FAMILY_SIZE, EmitFamily, Family, attr_columns
from ._tracer import Tracer, emit_family

#: Larger n would overflow the int32 slot arithmetic of an n x n operand.
_MAX_N = 46340


# -- references, sizes and checks -----------------------------------------------------
def cholesky_reference(attrs: tuple[int, ...], a: np.ndarray, b: np.ndarray | None = None,
                       c: np.ndarray | None = None) -> np.ndarray:
    """L of one point (flat, row-major); NaN everywhere when not positive definite."""
    (n,) = attrs
    mat = np.tril(np.asarray(a, np.float64).reshape(n, n))
    try:
        return np.linalg.cholesky(mat).ravel()
    except np.linalg.LinAlgError:
        return np.full(n * n, np.nan)


def solve_triangular_reference(attrs: tuple[int, ...], a: np.ndarray, b: np.ndarray,
                               c: np.ndarray | None = None) -> np.ndarray:
    """X of one point (flat, row-major); NaN everywhere when ``A`` is singular."""
    from scipy.linalg import LinAlgError, solve_triangular

    n, k, lower, trans, unit = attrs
    mat = np.asarray(a, np.float64).reshape(n, n)
    rhs = np.asarray(b, np.float64).reshape(n, k)
    try:
        return solve_triangular(mat, rhs, trans=trans, lower=bool(lower),
                                unit_diagonal=bool(unit), check_finite=False).ravel()
    except LinAlgError:
        return np.full(n * k, np.nan)


def cholesky_sizes(values: np.ndarray) -> np.ndarray:
    """``Family.sizes``: the result and the operand are ``n * n``."""
    n = attr_columns(values)[:, 0]
    return np.stack([n * n, n * n], axis=1)


def solve_triangular_sizes(values: np.ndarray) -> np.ndarray:
    """``Family.sizes``: the result ``n * k``, operands ``n * n`` and ``n * k``."""
    v = attr_columns(values)
    n, k = v[:, 0], v[:, 1]
    return np.stack([n * k, n * n, n * k], axis=1)


def cholesky_check(values: np.ndarray) -> np.ndarray:
    """The rows of ``(m, 1)`` attribute values that are invalid (``n`` out of range)."""
    n = attr_columns(values)[:, 0]
    return (n < 0) | (n > _MAX_N)


def solve_triangular_check(values: np.ndarray) -> np.ndarray:
    """The rows of ``(m, 5)`` attribute values that are invalid: a size out of range,
    or a flag (``lower``, ``trans``, ``unit_diagonal``) other than 0 or 1."""
    v = attr_columns(values)
    n, k = v[:, 0], v[:, 1]
    bad = (n < 0) | (n > _MAX_N) | (k < 0) | (n * k > MAX_FAMILY_SIZE)
    return bad | np.any((v[:, 2:5] != 0) & (v[:, 2:5] != 1), axis=1)


# -- reverse rules as traced numpy (nested differentiation, ``tapejit/_nested.py``) ------
# The kernels' rules, built from the same primitives (triangular solves and products),
# recorded as these families again.

def _tri_solve(a: Any, b: Any, trans: int, lower: int, unit: int) -> Any:
    return record_solve_triangular(emit_family, a, b, trans=trans, lower=bool(lower),
                                   unit_diagonal=bool(unit))


def cholesky_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """Murray's rule: ``S = L^-T Phi(L^T tril(G)) L^-1``, folded onto the lower triangle
    that the symmetric matrix is read from (``s_ij + s_ji`` below the diagonal,
    ``s_ii`` on it, 0 above), as the kernels do."""
    (n,) = (int(v) for v in attrs)
    if n == 0:
        return (None,)
    low = np.tril(np.ones((n, n), dtype=bool))
    eye = np.eye(n, dtype=bool)
    L = np.reshape(result, (n, n))
    G = np.where(low, np.reshape(cotangent, (n, n)), 0.0)
    M = L.T @ G
    P = np.where(eye, 0.5 * M, np.where(low, M, 0.0))
    Y = _tri_solve(L, P, 1, 1, 0)  # L^-T P
    Z = _tri_solve(L, Y.T, 1, 1, 0)  # (Y L^-1)^T = S^T
    return (np.reshape(np.where(low & ~eye, Z + Z.T, np.where(eye, Z, 0.0)), -1),)


def solve_triangular_vjp(attrs, operands, result, cotangent, needed=(True, True)) -> tuple:
    """``Bbar = op(A)^-T Xbar``; ``Abar = -Bbar X^T`` (``-X Bbar^T`` for ``op(A) =
    A^T``) on the triangle that is read, 0 elsewhere."""
    n, k, lower, trans, unit = (int(v) for v in attrs)
    A = np.reshape(operands[0], (n, n))
    X = np.reshape(result, (n, k))
    b_bar = _tri_solve(A, np.reshape(cotangent, (n, k)), 1 - trans, lower, unit)
    a_bar = None
    if needed[0]:
        D = -(X @ b_bar.T) if trans else -(b_bar @ X.T)
        read = (np.tril(np.ones((n, n), dtype=bool), -unit) if lower
                else np.triu(np.ones((n, n), dtype=bool), unit))
        a_bar = np.reshape(np.where(read, D, 0.0), -1)
    return a_bar, (np.reshape(b_bar, -1) if needed[1] else None)


CHOLESKY = Family("cholesky", 135, 1, ("n",), check=cholesky_check, sizes=cholesky_sizes,
                  kernel="fam_chol", reference=cholesky_reference,
                  failure="Matrix is not positive definite", blas=True,
                  vjp=cholesky_vjp)
SOLVE_TRIANGULAR = Family(
    "solve_triangular", 136, 2, ("n", "k", "lower", "trans", "unit_diagonal"),
    check=solve_triangular_check,
    sizes=solve_triangular_sizes, kernel="fam_chol", reference=solve_triangular_reference,
    failure="Singular triangular matrix (a zero on its diagonal)", blas=True,
    vjp=solve_triangular_vjp)


# -- recording --------------------------------------------------------------------------
def _traced(*values: Any) -> bool:
    return any(isinstance(v, Tracer) for v in values)


def _square(a: Any, what: str) -> int:
    if np.ndim(a) != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what}: expected a square matrix (2-D), got shape "
                         f"{np.shape(a)}")
    if not isinstance(a, Tracer) and np.iscomplexobj(a):
        raise TypeError(f"{what}: complex matrices are not supported while recording")
    return int(a.shape[0])


def _flat(x: Any) -> Any:
    return x.reshape(-1) if isinstance(x, Tracer) else np.asarray(x).reshape(-1)


def record_cholesky(emit_family: EmitFamily, a: Any, *, upper: bool = False) -> Any:
    """``np.linalg.cholesky(a, upper=upper)`` of one n x n matrix, as one instruction.

    Only the lower triangle of ``a`` is read (numpy's behaviour), so the derivatives
    with respect to its strict upper triangle are zero. ``upper=True`` returns ``L.T``.
    A stack of matrices (more than 2 dimensions) is refused while recording.
    """
    if not _traced(a):
        return np.linalg.cholesky(a, upper=upper)
    n = _square(a, "np.linalg.cholesky")
    low = emit_family("cholesky", (_flat(a),), (n,), (n, n))
    return low.T if upper else low


def _trans_flag(trans: Any) -> int:
    codes = {0: 0, 1: 1, 2: 1, "N": 0, "T": 1, "C": 1}
    key = trans.upper() if isinstance(trans, str) else trans
    if key not in codes:
        raise ValueError(f"solve_triangular: trans must be 0, 1, 2, 'N', 'T' or 'C', "
                         f"not {trans!r}")
    return codes[key]


def record_solve_triangular(emit_family: EmitFamily, a: Any, b: Any, trans: Any = 0,
                            lower: bool = False, unit_diagonal: bool = False,
                            overwrite_b: bool = False, check_finite: bool = True) -> Any:
    """``scipy.linalg.solve_triangular`` (same arguments), as one instruction.

    Only the triangle named by ``lower`` is read (and not the diagonal with
    ``unit_diagonal``); the derivatives with respect to the other entries are zero.
    ``b`` is a vector (n,) or a matrix (n, k). ``overwrite_b`` has no effect while
    recording and ``check_finite`` applies to untraced calls only.
    """
    if not _traced(a, b):
        from scipy.linalg import solve_triangular

        return solve_triangular(a, b, trans=trans, lower=lower,
                                unit_diagonal=unit_diagonal, overwrite_b=overwrite_b,
                                check_finite=check_finite)
    n = _square(a, "solve_triangular")
    if np.ndim(b) not in (1, 2) or b.shape[0] != n:
        raise ValueError(f"solve_triangular: shapes of a {tuple(a.shape)} and b "
                         f"{tuple(np.shape(b))} are incompatible")
    if not isinstance(b, Tracer) and np.iscomplexobj(b):
        raise TypeError("solve_triangular: complex right-hand sides are not supported "
                        "while recording")
    k = 1 if np.ndim(b) == 1 else int(b.shape[1])
    attrs = (n, k, int(bool(lower)), _trans_flag(trans), int(bool(unit_diagonal)))
    return emit_family("solve_triangular", (_flat(a), _flat(b)), attrs, tuple(b.shape))


def record_cho_factor(emit_family: EmitFamily, a: Any, lower: bool = False,
                      overwrite_a: bool = False, check_finite: bool = True) -> tuple[Any, bool]:
    """``scipy.linalg.cho_factor`` (same arguments): ``(c, lower)``.

    ``c`` holds the factor in the triangle named by ``lower`` (read from that triangle
    of ``a``, as LAPACK does) and zeros in the other one, where scipy leaves the entries
    of ``a`` (documented as arbitrary; ``cho_solve`` never reads them).
    """
    if not _traced(a):
        from scipy.linalg import cho_factor

        return cho_factor(a, lower=lower, overwrite_a=overwrite_a,
                          check_finite=check_finite)
    if lower:
        return record_cholesky(emit_family, a), True
    # U of the upper triangle of a is L.T of the lower triangle of a.T
    return record_cholesky(emit_family, a.T).T, False


def record_cho_solve(emit_family: EmitFamily, c_and_lower: tuple[Any, bool], b: Any,
                     overwrite_b: bool = False, check_finite: bool = True) -> Any:
    """``scipy.linalg.cho_solve`` (same arguments), as two triangular solves."""
    c, lower = c_and_lower
    if not _traced(c, b):
        from scipy.linalg import cho_solve

        return cho_solve((c, lower), b, overwrite_b=overwrite_b,
                         check_finite=check_finite)
    if lower:
        y = record_solve_triangular(emit_family, c, b, trans=0, lower=True)
        return record_solve_triangular(emit_family, c, y, trans=1, lower=True)
    y = record_solve_triangular(emit_family, c, b, trans=1, lower=False)
    return record_solve_triangular(emit_family, c, y, trans=0, lower=False)
