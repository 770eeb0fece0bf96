"""SciPy's linear algebra that tapejit records: ``solve_triangular``, ``cho_factor``,
``cho_solve`` and ``expm``, with SciPy's arguments.

numpy's functions dispatch on traced values by themselves (``np.linalg.solve`` inside a
recorded function is recorded); SciPy's do not: they convert their arguments to arrays,
which a traced value refuses. Call these instead. On arrays that are not traced they
call SciPy itself.

Examples
--------
>>> import numpy as np, tapejit
>>> from tapejit.linalg import cho_factor, cho_solve
>>> def nll(y, K):
...     c = cho_factor(K, lower=True)
...     return 0.5 * y @ cho_solve(c, y) + np.sum(np.log(np.diagonal(c[0])))
>>> tape = tapejit.record(nll, np.ones(2), np.eye(2) * 2.0, argnums=0)
>>> float(tape.value_and_grad(np.ones(2), np.eye(2).ravel() * 2.0)[0])
1.1931471805599454
"""

from __future__ import annotations

from typing import Any

from . import _fam_chol as _chol
from . import _linalg_compose as _compose
from ._tracer import emit_family as _emit


def solve_triangular(a: Any, b: Any, trans: Any = 0, lower: bool = False,
                     unit_diagonal: bool = False, overwrite_b: bool = False,
                     check_finite: bool = True) -> Any:
    """``scipy.linalg.solve_triangular``: solve ``op(a) x = b`` reading one triangle of
    ``a``; its derivatives with respect to the other triangle are zero.

    Parameters
    ----------
    a : (n, n) array_like or traced
    b : (n,) or (n, k) array_like or traced
    trans : {0, 1, 2, 'N', 'T', 'C'}
    lower, unit_diagonal, overwrite_b, check_finite : bool
        As SciPy's (``overwrite_b`` has no effect while recording, ``check_finite``
        applies to untraced calls).

    Returns
    -------
    ndarray or traced value
    """
    return _chol.record_solve_triangular(_emit, a, b, trans=trans, lower=lower,
                                         unit_diagonal=unit_diagonal,
                                         overwrite_b=overwrite_b, check_finite=check_finite)


def cho_factor(a: Any, lower: bool = False, overwrite_a: bool = False,
               check_finite: bool = True) -> tuple[Any, bool]:
    """``scipy.linalg.cho_factor``: ``(c, lower)``, the Cholesky factor in the triangle
    ``lower`` names (the other triangle holds zeros while recording, where SciPy leaves
    arbitrary values).

    Returns
    -------
    tuple
        ``(c, lower)`` for :func:`cho_solve`.
    """
    return _chol.record_cho_factor(_emit, a, lower=lower, overwrite_a=overwrite_a,
                                   check_finite=check_finite)


def cho_solve(c_and_lower: tuple[Any, bool], b: Any, overwrite_b: bool = False,
              check_finite: bool = True) -> Any:
    """``scipy.linalg.cho_solve``: solve ``a x = b`` from :func:`cho_factor`'s result, as
    two triangular solves.

    Returns
    -------
    ndarray or traced value
    """
    return _chol.record_cho_solve(_emit, c_and_lower, b, overwrite_b=overwrite_b,
                                  check_finite=check_finite)


def expm(a: Any) -> Any:
    """``scipy.linalg.expm`` of one square matrix: scaling and squaring with a Pade 13
    approximant (matrix products and one solve), the number of squarings recorded as a
    guard.

    Returns
    -------
    ndarray or traced value
    """
    return _compose.expm(a)


__all__ = ["cho_factor", "cho_solve", "expm", "solve_triangular"]
