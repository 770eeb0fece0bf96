"""Test functions for nested differentiation (``tests/test_nested.py``), written once for
any numpy-like module ``xp``: tapejit traces them with numpy, and
``make_nested_reference.py`` differentiates them with JAX (``jax.numpy``) for the
reference values in ``nested_reference.npz``.

Most are Moré-Garbow-Hillstrom test problems (ACM TOMS 7, 1981) as sums of squared
residuals; the others exercise matrix products, reductions, scans, every linear
algebra family and a Python branch.
"""

from __future__ import annotations

import numpy as np


def _squares(xp, r):
    return xp.sum(xp.stack(r) ** 2)


def rosenbrock(x, xp):
    """Extended Rosenbrock, n = 4."""
    return xp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def powell_singular(x, xp):
    return _squares(xp, [x[0] + 10.0 * x[1], np.sqrt(5.0) * (x[2] - x[3]),
                         (x[1] - 2.0 * x[2]) ** 2, np.sqrt(10.0) * (x[0] - x[3]) ** 2])


def wood(x, xp):
    return (100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2
            + 90.0 * (x[3] - x[2] ** 2) ** 2 + (1.0 - x[2]) ** 2
            + 10.1 * ((x[1] - 1.0) ** 2 + (x[3] - 1.0) ** 2)
            + 19.8 * (x[1] - 1.0) * (x[3] - 1.0))


def brown_badly_scaled(x, xp):
    return _squares(xp, [x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def helical_valley(x, xp):
    theta = xp.arctan2(x[1], x[0]) / (2.0 * np.pi)
    return _squares(xp, [10.0 * (x[2] - 10.0 * theta),
                         10.0 * (xp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0), x[2]])


def beale(x, xp):
    y = np.array([1.5, 2.25, 2.625])
    i = np.arange(1.0, 4.0)
    return xp.sum((y - x[0] * (1.0 - x[1] ** i)) ** 2)


def freudenstein_roth(x, xp):
    return _squares(xp, [-13.0 + x[0] + ((5.0 - x[1]) * x[1] - 2.0) * x[1],
                         -29.0 + x[0] + ((x[1] + 1.0) * x[1] - 14.0) * x[1]])


def box_3d(x, xp):
    t = 0.1 * np.arange(1.0, 6.0)
    return xp.sum((xp.exp(-t * x[0]) - xp.exp(-t * x[1])
                   - x[2] * (np.exp(-t) - np.exp(-10.0 * t))) ** 2)


_A = np.array([[0.5, -1.0, 0.25], [1.5, 0.2, -0.7], [-0.3, 0.8, 1.1], [0.9, -0.4, 0.6]])


def matmul_reduce(x, xp):
    """A product, sums, a maximum, a product, a cumulative sum and a cumulative product."""
    y = _A @ x
    return (xp.sum(xp.tanh(y) ** 2) + xp.log(xp.sum(xp.exp(y))) + xp.max(y)
            + 0.1 * xp.prod(x) + xp.sum(xp.cumsum(x) ** 2) / 3.0
            + xp.sum(xp.cumprod(x)) + xp.mean(xp.exp(x) * x))


_B = np.array([[2.0, 0.5, 0.1], [0.3, 1.5, -0.2], [0.1, 0.4, 1.8]])


def linalg(x, xp):
    """``solve`` (a vector and a matrix right-hand side), ``inv``, ``det`` (3 x 3 by
    cofactors and 4 x 4 by the inverse) and ``slogdet`` of matrices depending on ``x``."""
    M = _B + 0.3 * xp.outer(x, x[::-1])
    v = xp.concatenate([x, x[:1]])
    M4 = 2.0 * np.eye(4) + 0.3 * xp.outer(v, v[::-1])
    return (xp.sum(xp.linalg.solve(M, xp.sin(x)) ** 2)
            + xp.sum(xp.linalg.solve(M, M[:, :2] * x[0]))
            + xp.sum(xp.linalg.inv(M) * x) + xp.linalg.det(M) * x[1]
            + xp.linalg.det(M4) + xp.linalg.slogdet(M)[1] * x[2])


def _solve_triangular(xp):
    if xp is np:
        from tapejit.linalg import solve_triangular
    else:  # JAX, for the reference values
        from jax.scipy.linalg import solve_triangular
    return solve_triangular


def cholesky(x, xp):
    """``cholesky`` and ``solve_triangular`` (lower, upper, transposed, unit diagonal)
    of a symmetric positive definite matrix depending on ``x``."""
    st = _solve_triangular(xp)
    M = _B @ _B.T + 0.3 * xp.outer(x, x) + np.eye(3) * x[0] ** 2
    L = xp.linalg.cholesky(M)
    W = np.arange(9.0).reshape(3, 3) / 5.0
    return (xp.sum(L * W) + xp.sum(st(L, xp.sin(x), lower=True) ** 2)
            + xp.sum(st(M, xp.stack([x, x ** 2], axis=1), trans=1, lower=False,
                        unit_diagonal=True))
            + xp.sum(st(L.T, x, lower=False) ** 2))


def eigh(x, xp):
    """Eigenvalues (``eigvalsh``) and sign-independent functions of eigenvectors
    (``eigh``) of a symmetric matrix depending on ``x``."""
    S = _B + _B.T + xp.outer(x, xp.sin(x)) + xp.outer(xp.sin(x), x)
    w, V = xp.linalg.eigh(S)
    return (xp.sum(xp.linalg.eigvalsh(S) ** 3) + xp.sum(V[:, 0] ** 2 * x)
            + xp.sum(xp.abs(V[0])) + w[-1] * x[1])


_C = np.array([[2.0, 0.5, 0.1], [0.3, 1.5, -0.2], [0.1, 0.4, 1.8], [0.7, -0.2, 0.3]])


def svd_qr(x, xp):
    """Singular values, sign-independent functions of singular vectors (a tall and a
    wide matrix) and of the QR factors of a matrix depending on ``x``."""
    A = _C + 0.3 * xp.outer(xp.concatenate([x, x[:1]]), xp.sin(x))
    W = np.arange(12.0).reshape(4, 3) / 6.0
    U, _, Vh = xp.linalg.svd(A, full_matrices=False)
    _, s2, Vh2 = xp.linalg.svd(A.T, full_matrices=False)
    Q, R = xp.linalg.qr(A)
    return (xp.sum(xp.linalg.svd(A, compute_uv=False) ** 3) + xp.sum(U ** 2 * W)
            + xp.sum(Vh ** 2 * x) + xp.sum(Vh2 ** 2 * W.T) + s2[0] * x[2]
            + xp.sum(Q ** 2 * W) + xp.sum(R ** 2 * x))


def branch_positive(x, xp):
    return xp.sum(x ** 3) / 3.0 + x[0] * x[1] * xp.exp(x[2])


def branch_negative(x, xp):
    return xp.sum(xp.sin(x)) * x[2] + x[0] ** 4


def branchy(x, xp):
    """A Python branch on a traced value (a guard of the tape)."""
    if xp.sum(x) > 0.0:
        return branch_positive(x, xp)
    return branch_negative(x, xp)


#: name -> (function, points: the first is the MGH starting point where there is one)
PROBLEMS = {
    "rosenbrock": (rosenbrock, [[-1.2, 1.0, -1.2, 1.0], [1.0, 1.0, 1.0, 1.0],
                                [0.3, -0.5, 0.8, 1.7]]),
    "powell_singular": (powell_singular, [[3.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0],
                                          [0.7, 0.2, -1.3, 0.4]]),
    "wood": (wood, [[-3.0, -1.0, -3.0, -1.0], [1.0, 1.0, 1.0, 1.0], [0.4, 1.9, -0.6, 0.3]]),
    "brown_badly_scaled": (brown_badly_scaled, [[1.0, 1.0], [1e6, 2e-6], [3.0, -0.5]]),
    "helical_valley": (helical_valley, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0],
                                        [0.6, -0.8, 0.3]]),
    "beale": (beale, [[1.0, 1.0], [3.0, 0.5], [-0.4, 1.3]]),
    "freudenstein_roth": (freudenstein_roth, [[0.5, -2.0], [5.0, 4.0], [1.1, 0.3]]),
    "box_3d": (box_3d, [[0.0, 10.0, 20.0], [1.0, 10.0, 1.0], [2.5, 4.0, -0.7]]),
    "matmul_reduce": (matmul_reduce, [[0.3, -0.7, 1.1], [1.2, 0.4, -0.9],
                                      [-0.5, 0.25, 0.6]]),
    "linalg": (linalg, [[0.4, -0.3, 0.8], [1.0, 0.5, -0.6], [-0.2, 0.9, 0.3]]),
    "cholesky": (cholesky, [[0.4, -0.3, 0.8], [1.0, 0.5, -0.6], [-0.2, 0.9, 0.3]]),
    "eigh": (eigh, [[0.4, -0.3, 0.8], [1.0, 0.5, -0.6], [-0.2, 0.9, 0.3]]),
    "svd_qr": (svd_qr, [[0.4, -0.3, 0.8], [1.0, 0.5, -0.6], [-0.2, 0.9, 0.3]]),
    "branch_positive": (branch_positive, [[0.3, -0.7, 1.1], [1.2, 0.4, -0.9],
                                          [0.5, 0.25, 0.6]]),
    "branch_negative": (branch_negative, [[-0.3, -0.7, 0.1], [-1.2, 0.4, -0.9],
                                          [0.5, -2.25, 0.6]]),
}


def penalty_data() -> tuple[np.ndarray, np.ndarray]:
    """A small logistic regression: data ``X`` (20, 3) and labels ``y`` (+-1)."""
    rng = np.random.default_rng(20)
    X = rng.standard_normal((20, 3))
    y = np.where(X @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.standard_normal(20) > 0, 1.0, -1.0)
    return X, y


def logistic_loss(w, xp):
    X, y = penalty_data()
    return xp.mean(xp.log1p(xp.exp(-y * (X @ w)))) + 0.005 * xp.sum(w ** 2)


#: The gradient-norm penalty's weight and step, and its starting point.
PENALTY_LAMBDA, PENALTY_STEP = 0.5, 0.5
PENALTY_W0 = [0.1, -0.2, 0.3]
