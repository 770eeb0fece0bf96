"""What the numpy-function tests (``test_numpy_shape.py``, ``test_numpy_order.py``,
``test_numpy_misc.py``) share: one check of a recorded function in every sweep.

:func:`check_all_sweeps` records ``f`` at ``x0`` and compares, at ``x0`` and at more
points: the values with numpy's (``f`` on plain arrays), the Jacobian (one point and
batched), ``J v`` (jvp) and ``w J`` (vjp) with central differences of numpy's ``f``.
:func:`check_hessian` compares the Hessian of a scalar function of ``f`` with central
differences of its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import tapejit


def numpy_values(f: Callable, X: np.ndarray) -> np.ndarray:
    """``f`` (plain numpy) at each row of ``X``, flattened: ``(n_points, n_outputs)``."""
    return np.array([np.ravel(np.asarray(f(x), dtype=np.float64)) for x in X])


def check_all_sweeps(central_diff: Callable, f: Callable, x0: np.ndarray, X: np.ndarray,
                     *, rtol: float = 1e-13, drtol: float = 1e-6, seed: int = 0) -> tapejit.Tape:
    """Values and first derivatives of ``record(f, x0)`` at ``x0`` and the rows of ``X``
    (which must lie on the recorded branches); ``central_diff`` is the fixture's helper."""
    tape = tapejit.record(f, x0)
    P = np.vstack([x0, X])
    want = numpy_values(f, P)
    got = np.asarray(tape.forward(P)).reshape(want.shape)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
    for k, p in enumerate(P[:2]):  # one point at a time
        np.testing.assert_allclose(np.ravel(tape.forward(p)), want[k], rtol=rtol,
                                   atol=rtol * scale)
    J = central_diff(lambda Q: numpy_values(f, Q), P)  # (points, outputs, inputs)
    J = J.reshape(len(P), want.shape[1], P.shape[1])
    jscale = max(1.0, float(np.max(np.abs(J))))
    tol = {"rtol": drtol, "atol": drtol * jscale}
    np.testing.assert_allclose(np.asarray(tape.jacobian(P)).reshape(J.shape), J, **tol)
    np.testing.assert_allclose(np.asarray(tape.jacobian(P[0])).reshape(J.shape[1:]), J[0],
                               **tol)
    rng = np.random.default_rng(seed)
    V = rng.standard_normal(P.shape)
    W = rng.standard_normal((len(P), want.shape[1]))
    jv = np.asarray(tape.jvp(P, V)).reshape(len(P), -1)
    np.testing.assert_allclose(jv, np.einsum("poi,pi->po", J, V), **tol)
    np.testing.assert_allclose(np.ravel(tape.jvp(P[0], V[0])), J[0] @ V[0], **tol)
    if want.shape[1] == 1:
        wj = np.asarray(tape.gradient(P)).reshape(P.shape) * W
        np.testing.assert_allclose(np.ravel(tape.gradient(P[0])), J[0, 0], **tol)
    else:
        wj = tape.vjp(P, W)[1]
        np.testing.assert_allclose(tape.vjp(P[0], W[0])[1], W[0] @ J[0], **tol)
    np.testing.assert_allclose(wj, np.einsum("po,poi->pi", W, J), **tol)
    return tape


def check_hessian(central_diff: Callable, f: Callable, x0: np.ndarray, X: np.ndarray,
                  *, drtol: float = 1e-5, seed: int = 1) -> None:
    """Hessian (one point and batched) and hvp of ``s(x) = sum(w * sin(f(x)))`` against
    central differences of its gradient (itself checked against differences of numpy's
    values at the same points)."""
    m = np.size(np.asarray(f(x0)))
    w = np.random.default_rng(seed).standard_normal(m)

    def s(x):
        return np.sum(w * np.sin(np.ravel(f(x))))

    tape = tapejit.record(s, x0)
    P = np.vstack([x0, X])
    G = np.asarray(tape.gradient(P))
    np.testing.assert_allclose(G, central_diff(lambda Q: numpy_values(s, Q)[:, 0], P),
                               rtol=1e-6, atol=1e-6 * max(1.0, float(np.max(np.abs(G)))))
    H = central_diff(lambda Q: np.asarray(tape.gradient(Q)), P, h=1e-5)
    tol = {"rtol": drtol, "atol": drtol * max(1.0, float(np.max(np.abs(H))))}
    np.testing.assert_allclose(tape.hessian(P), H, **tol)
    np.testing.assert_allclose(tape.hessian(P[0]), H[0], **tol)
    v = np.random.default_rng(seed + 1).standard_normal(P.shape)
    np.testing.assert_allclose(tape.hvp(P, v), np.einsum("pij,pj->pi", H, v), **tol)


def fd_jacobian(f: Callable, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a one-point function ``f`` (any output shape) at ``x`` (any
    shape): ``(output size, x.size)``."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        plus = np.ravel(f((x.ravel() + e).reshape(x.shape)))
        minus = np.ravel(f((x.ravel() - e).reshape(x.shape)))
        cols.append((plus - minus) / (2 * h))
    return np.stack(cols, axis=-1)
