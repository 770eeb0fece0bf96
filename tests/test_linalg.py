"""numpy.linalg recorded as family instructions, end to end through tapes.

The routines themselves are tested at 1e-10 against numpy and high-order differences in
``test_family_*.py``; here every function is recorded by a user's function and checked
through the tape's sweeps (value against numpy, gradient against central differences,
Hessian against differences of the tape's gradient, many points against one), and the
failure cases: a singular or not positive definite matrix is a clear error when
recording and a refused (or masked) point when evaluating.
"""

import numpy as np
import pytest

import tapejit

RNG = np.random.default_rng(7)
N = 3


def _spd(z):
    A = z[: N * N].reshape(N, N)
    return A @ A.T + N * np.eye(N)


def _gen(z):
    return z[: N * N].reshape(N, N) + 4.0 * np.eye(N)


CASES = {
    "solve": lambda z: np.sum(np.sin(np.linalg.solve(_gen(z), z[N * N :]))),
    "solve_matrix_rhs": lambda z: np.sum(np.linalg.solve(_gen(z), np.outer(z[N * N :],
                                                                          z[:2])) ** 2),
    "inv": lambda z: np.sum(np.cos(np.linalg.inv(_gen(z)))),
    "det": lambda z: np.linalg.det(_gen(z)),
    "slogdet": lambda z: np.linalg.slogdet(_gen(z))[1],
    "cholesky": lambda z: np.sum(np.sin(np.linalg.cholesky(_spd(z)))),
    "cholesky_logdet": lambda z: 2.0 * np.sum(np.log(np.diagonal(np.linalg.cholesky(_spd(z))))),
    "cholesky_solve": lambda z: np.sum(np.linalg.solve(np.linalg.cholesky(_spd(z)),
                                                       z[N * N :]) ** 2),
    "eigh": lambda z: np.sum(np.linalg.eigh(_spd(z))[0] ** 2) + np.sum(
        np.linalg.eigh(_spd(z))[1][:, 0] ** 4),
    "eigvalsh": lambda z: np.sum(np.sin(np.linalg.eigvalsh(_spd(z)))),
    "svd": lambda z: np.sum(np.linalg.svd(_gen(z), compute_uv=False) ** 3),
    "svd_vectors": lambda z: np.sum(np.linalg.svd(_gen(z))[0][:, 0] ** 4),
    "qr": lambda z: np.sum(np.linalg.qr(_gen(z))[1] ** 2) + np.sum(np.linalg.qr(_gen(z))[0]),
    "pinv": lambda z: np.sum(np.linalg.pinv(_gen(z)) ** 2),
    "lstsq": lambda z: np.sum(np.linalg.lstsq(_gen(z)[:, :2], z[N * N :], rcond=None)[0] ** 2),
    "norm_fro": lambda z: np.linalg.norm(_gen(z)),
    "norm_2": lambda z: np.linalg.norm(_gen(z), 2),
    "norm_nuc": lambda z: np.linalg.norm(_gen(z), "nuc"),
    "norm_1": lambda z: np.linalg.norm(_gen(z), 1),
    "norm_vec_3": lambda z: np.linalg.norm(z, 3),
    "matrix_power": lambda z: np.sum(np.linalg.matrix_power(_gen(z) / 4.0, 3)),
    "matrix_power_neg": lambda z: np.sum(np.linalg.matrix_power(_gen(z), -2)),
    "cross": lambda z: np.sum(np.cross(z[:3], z[3:6]) ** 2),
    "kron": lambda z: np.sum(np.sin(np.kron(z[:2], z[2:6].reshape(2, 2)))),
    "trace": lambda z: np.trace(_gen(z) @ _gen(z)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_linalg_function_through_a_tape(name):
    f = CASES[name]
    z = 0.3 * RNG.normal(size=N * N + N)
    tape = tapejit.record(f, z)
    assert any(int(op) >= 128 for op in tape.opcodes)
    v, g = tape.value_and_grad(z)
    assert v == pytest.approx(float(f(z)), rel=1e-12, abs=1e-12)
    eps = 1e-6
    gn = np.array([(f(z + eps * e) - f(z - eps * e)) / (2 * eps) for e in np.eye(z.size)])
    np.testing.assert_allclose(g, gn, rtol=1e-6, atol=1e-7)
    H = tape.hessian(z)
    d = 1e-5
    Hn = np.array([(tape.value_and_grad(z + d * e)[1] - tape.value_and_grad(z - d * e)[1])
                   / (2 * d) for e in np.eye(z.size)])
    np.testing.assert_allclose(H, Hn, rtol=1e-5, atol=1e-6)
    Z = z + 0.01 * RNG.normal(size=(3, z.size))
    V, G = tape.value_and_grad(Z)
    HB = tape.hessian(Z)
    for i in range(3):
        vi, gi = tape.value_and_grad(Z[i])
        assert V[i] == pytest.approx(vi, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(G[i], gi, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(HB[i], tape.hessian(Z[i]), rtol=1e-8, atol=1e-9)


def test_solve_with_a_cholesky_factor_records_triangular_solves():
    tape = tapejit.record(CASES["cholesky_solve"], RNG.normal(size=N * N + N))
    text = tape.listing()
    assert "solve_triangular[" in text and "= solve[" not in text


def test_singular_matrix_when_recording_is_numpys_error():
    with pytest.raises(np.linalg.LinAlgError, match="Singular matrix"):
        tapejit.record(lambda z: np.linalg.solve(z.reshape(2, 2), np.ones(2)),
                       np.array([1.0, 2.0, 2.0, 4.0]))
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        tapejit.record(lambda z: np.linalg.cholesky(z.reshape(2, 2)),
                       np.array([1.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize("fn, bad", [
    (lambda z: np.sum(np.linalg.solve(z.reshape(2, 2), np.ones(2))), [1.0, 2.0, 2.0, 4.0]),
    (lambda z: np.sum(np.linalg.inv(z.reshape(2, 2))), [1.0, 2.0, 2.0, 4.0]),
    (lambda z: np.sum(np.linalg.cholesky(z.reshape(2, 2))), [1.0, 2.0, 2.0, 1.0]),
    # a zero last on the diagonal: the solve's first element alone would be finite
    (lambda z: np.sum(tapejit.linalg.solve_triangular(z.reshape(2, 2), np.ones(2),
                                                      lower=True)), [1.0, 0.0, 2.0, 0.0]),
])
def test_a_failing_matrix_point_is_refused_or_masked_never_silent(fn, bad):
    good = np.array([2.0, 0.5, 0.5, 3.0])
    tape = tapejit.record(fn, good)
    with pytest.raises(tapejit.BranchError, match="singular or not positive definite"):
        tape.value_and_grad(np.array(bad))
    X = np.stack([good, np.array(bad), good + 0.1])
    with pytest.raises(tapejit.BranchError):
        tape.value_and_grad(X)
    v, g, valid = tape.value_and_grad(X, check="mask")
    assert valid.tolist() == [True, False, True]
    assert np.isnan(v[1]) and np.isnan(g[1]).all()
    assert np.isfinite(v[[0, 2]]).all() and np.isfinite(g[[0, 2]]).all()
    v0, g0 = tape.value_and_grad(good)
    assert v[0] == v0 and np.array_equal(g[0], g0)


def test_cholesky_reads_the_lower_triangle_only():
    A = _spd(RNG.normal(size=N * N + N))
    A[0, 2] += 5.0  # not symmetric: numpy ignores the upper triangle
    f = lambda a: np.sum(np.linalg.cholesky(a.reshape(N, N)) ** 3)  # noqa: E731
    tape = tapejit.record(f, A.ravel())
    g = tape.value_and_grad(A.ravel())[1].reshape(N, N)
    assert np.all(g[np.triu_indices(N, 1)] == 0.0)
    eps = 1e-6
    e = np.zeros(N * N)
    e[N] = 1.0  # A[1, 0]
    gn = (f(A.ravel() + eps * e) - f(A.ravel() - eps * e)) / (2 * eps)
    assert g[1, 0] == pytest.approx(gn, rel=1e-6)


def test_eigvalsh_gradient_is_exact_at_a_repeated_eigenvalue():
    # d/dA sum(eigvalsh(A)) = d trace(A)/dA = I, even where eigenvalues repeat
    tape = tapejit.record(lambda a: np.sum(np.linalg.eigvalsh(a.reshape(2, 2))), np.eye(2).ravel())
    np.testing.assert_allclose(tape.value_and_grad(np.eye(2).ravel())[1], [1.0, 0.0, 0.0, 1.0],
                               atol=1e-14)


def test_eigenvector_gradient_at_a_repeated_eigenvalue_is_not_finite():
    f = lambda a: np.sum(np.linalg.eigh(a.reshape(3, 3))[1][:, 0] ** 4)  # noqa: E731
    Q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
    tape = tapejit.record(f, (Q @ np.diag([1.0, 2.0, 3.0]) @ Q.T).ravel())
    repeated = (Q @ np.diag([1.0, 1.0, 3.0]) @ Q.T).ravel()  # a rotated, repeated pair
    g = tape.value_and_grad(repeated)[1]
    assert not np.isfinite(g).all()  # undefined there: never a finite garbage number


def test_scipy_functions_from_tapejit_linalg():
    import scipy.linalg as sl

    from tapejit.linalg import cho_factor, cho_solve, expm, solve_triangular

    def f(z, solve_tri, factor, solve, exp):
        K = _spd(z)
        c = factor(K, lower=True)
        r = solve(c, z[N * N :])
        L = np.tril(K) + np.eye(N)
        t = solve_tri(L, z[N * N :], lower=True)
        return r @ r + np.sum(t ** 2) + np.sum(exp(0.1 * _gen(z)))

    z = 0.3 * RNG.normal(size=N * N + N)
    ours = lambda z: f(z, solve_triangular, cho_factor, cho_solve, expm)  # noqa: E731
    want = f(z, sl.solve_triangular, sl.cho_factor, sl.cho_solve, sl.expm)
    assert ours(z) == pytest.approx(want, rel=1e-12)  # untraced: SciPy's own values
    tape = tapejit.record(ours, z)
    v, g = tape.value_and_grad(z)
    assert v == pytest.approx(want, rel=1e-11)
    eps = 1e-6
    gn = np.array([(ours(z + eps * e) - ours(z - eps * e)) / (2 * eps) for e in np.eye(z.size)])
    np.testing.assert_allclose(g, gn, rtol=1e-6, atol=1e-7)


def test_scipy_on_a_traced_value_names_tapejit_linalg():
    import scipy.linalg as sl

    with pytest.raises(tapejit.TracingError, match=r"tapejit\.linalg"):
        tapejit.record(lambda z: sl.solve_triangular(z.reshape(2, 2), np.ones(2)),
                       np.array([1.0, 0.0, 1.0, 1.0]))
