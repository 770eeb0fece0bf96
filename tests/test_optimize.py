"""tapejit.optimize: scipy drivers with tape derivatives, and batched multistart."""

from __future__ import annotations

import doctest
import sys
import warnings

import numpy as np
import pytest

import tapejit
import tapejit.optimize as topt
from tapejit._transforms import tape_cache
from tapejit.optimize import least_squares, minimize, multistart

# ---------------------------------------------------------------------------------------
# test functions
# ---------------------------------------------------------------------------------------


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def wood(x):
    return (
        100.0 * (x[0] ** 2 - x[1]) ** 2
        + (x[0] - 1.0) ** 2
        + (x[2] - 1.0) ** 2
        + 90.0 * (x[2] ** 2 - x[3]) ** 2
        + 10.1 * ((x[1] - 1.0) ** 2 + (x[3] - 1.0) ** 2)
        + 19.8 * (x[1] - 1.0) * (x[3] - 1.0)
    )


ROSEN2_X0 = np.array([-1.2, 1.0])
WOOD_X0 = np.array([-3.0, -1.0, -3.0, -1.0])


def rosen100_x0():
    x0 = np.full(100, 1.0)
    x0[::2] = -1.2
    return x0


def convex(x):
    """Strictly convex everywhere (positive-definite Hessian), minimum at x = 0.5."""
    d = x - 0.5
    return np.sum(np.exp(d) - d) + 0.5 * np.sum((x[1:] - x[:-1]) ** 2)


# ---------------------------------------------------------------------------------------
# minimize
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def so():
    return pytest.importorskip("scipy.optimize")


def test_minimize_rosenbrock_2d(so):
    res = minimize(rosen, ROSEN2_X0)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-5)
    assert res.x.shape == (2,)
    assert res.jac.shape == (2,)
    fd = so.minimize(rosen, ROSEN2_X0, method="BFGS")
    assert fd.nfev > 2 * res.nfev  # n + 1 = 3 values per finite-difference gradient


def test_minimize_wood_4d(so):
    res = minimize(wood, WOOD_X0)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, [1.0, 1.0, 1.0, 1.0], atol=1e-5)
    assert res.fun == pytest.approx(0.0, abs=1e-10)
    fd = so.minimize(wood, WOOD_X0, method="BFGS")
    assert fd.nfev > 3 * res.nfev


@pytest.mark.parametrize(
    "method",
    # BFGS updates a dense 100 x 100 inverse Hessian: BLAS-bound, and slow on a loaded
    # machine when OpenBLAS threads contend for the cores
    ["L-BFGS-B", pytest.param("BFGS", marks=pytest.mark.slow)],
)
def test_minimize_rosenbrock_100d(method):
    pytest.importorskip("scipy.optimize")
    res = minimize(rosen, rosen100_x0(), method=method, tol=1e-12)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(100), atol=1e-5)
    # one fused sweep gives both the value and the gradient
    assert res.njev == res.nfev
    assert res.nhev == 0


def test_minimize_100d_far_fewer_evaluations_than_finite_differences(so):
    # Same BFGS, same number of iterations: scipy's finite differences spend n + 1 = 101
    # values per gradient, the tape one fused sweep. (Iterations capped to keep the
    # finite-difference run short; BFGS on 100 unknowns is BLAS-bound.)
    x0 = rosen100_x0()
    opts = {"maxiter": 60}
    res = minimize(rosen, x0, method="BFGS", options=opts)
    fd = so.minimize(rosen, x0, method="BFGS", jac=None, options=opts)
    assert res.nit == fd.nit == 60
    assert fd.nfev > 5 * res.nfev, (fd.nfev, res.nfev)
    assert res.fun < 0.1 * rosen(x0)


def test_minimize_matches_scipy_with_the_exact_gradient(so):
    # The tape gradient equals scipy's hand-written rosen_der to rounding, so BFGS takes
    # the same path. (A gradient buffer reused across calls would not: BFGS keeps the
    # previous gradient and forms g_new - g_old.)
    x0 = rosen100_x0()[:20]
    res = minimize(rosen, x0)
    ref = so.minimize(so.rosen, x0, jac=so.rosen_der, method="BFGS")
    assert res.success, res.message
    assert res.nit <= 1.2 * ref.nit + 5, (res.nit, ref.nit)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-5)


def test_minimize_counts_match_a_hand_counted_run(so):
    tape = res_tape = minimize(rosen, ROSEN2_X0).tape
    calls = {"vg": 0}

    def fused(x):
        calls["vg"] += 1
        return tape.value_and_grad(x)

    ref = so.minimize(fused, ROSEN2_X0, jac=True, method="BFGS")
    res = minimize(rosen, ROSEN2_X0)
    assert res.tape is res_tape
    assert res.nfev == calls["vg"] == ref.nfev
    assert res.nit == ref.nit


@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg", "trust-krylov", "trust-constr"])
def test_minimize_second_order_with_hessp(method):
    pytest.importorskip("scipy.optimize")
    with warnings.catch_warnings():
        # scipy warns when it is handed derivatives the method does not use
        warnings.filterwarnings("error", message=".*does not use")
        res = minimize(rosen, ROSEN2_X0, method=method, tol=1e-8, options={"maxiter": 2000})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-4)
    assert res.nhev > 0


@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg"])
def test_minimize_second_order_100d(method):
    pytest.importorskip("scipy.optimize")
    res = minimize(rosen, rosen100_x0(), method=method, tol=1e-10, options={"maxiter": 5000})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(100), atol=1e-4)


@pytest.mark.parametrize("method", ["trust-exact", "dogleg", "trust-ncg", "trust-krylov"])
def test_minimize_with_full_hessian(method):
    pytest.importorskip("scipy.optimize")
    hess = None if method in ("trust-exact", "dogleg") else "hess"
    x0 = np.linspace(-2.0, 3.0, 6)
    res = minimize(convex, x0, method=method, hess=hess, tol=1e-7)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.full(6, 0.5), atol=1e-6)
    assert res.nhev > 0


def test_minimize_hessp_rejected_for_a_method_that_needs_the_matrix():
    pytest.importorskip("scipy.optimize")
    with pytest.raises(ValueError, match="Hessian matrix"):
        minimize(convex, np.zeros(3), method="trust-exact", hess="hessp")


def test_minimize_hess_false_leaves_scipy_its_default(so):
    res = minimize(rosen, ROSEN2_X0, method="Newton-CG", hess=False, tol=1e-10)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-4)
    assert res.nhev == 0


def test_minimize_derivative_free_method_gets_values_only():
    pytest.importorskip("scipy.optimize")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*does not use")
        res = minimize(rosen, ROSEN2_X0, method="Nelder-Mead",
                       options={"xatol": 1e-8, "fatol": 1e-12})
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-5)
    assert res.nfev > 0
    assert res.njev == 0


def test_minimize_bounds_pass_through(so):
    res = minimize(rosen, np.array([0.0, 0.0]), method="L-BFGS-B", bounds=[(-2, 0.5), (-2, 2)])
    assert res.success, res.message
    np.testing.assert_allclose(res.x, [0.5, 0.25], atol=1e-5)


def test_minimize_x0_of_any_shape():
    pytest.importorskip("scipy.optimize")
    target = np.arange(6.0).reshape(2, 3)

    def f(m):
        return np.sum((m - target) ** 2) + np.sum((m[0] - m[1]) ** 4)

    res = minimize(f, np.zeros((2, 3)))
    assert res.x.shape == (2, 3)
    assert res.jac.shape == (2, 3)
    assert res.success, res.message

    def g(w):  # a scalar x0
        return (w - 2.0) ** 2 + np.cos(w)

    res = minimize(g, 1.0)
    assert res.x.shape == ()
    assert float(res.x) == pytest.approx(2.0 + 0.5 * np.sin(float(res.x)), abs=1e-7)


def test_minimize_int_x0_is_promoted():
    pytest.importorskip("scipy.optimize")
    res = minimize(lambda x: np.sum((x - 0.25) ** 2), np.array([3, -4]))
    np.testing.assert_allclose(res.x, [0.25, 0.25], atol=1e-7)


def test_minimize_args_are_tape_parameters_not_rerecorded():
    pytest.importorskip("scipy.optimize")
    traced = {"n": 0}

    def f(x, a, centers):
        traced["n"] += 1  # runs only while recording
        return np.sum((x - a * centers) ** 2) + 0.1 * np.sum(x**4)

    centers = np.array([1.0, -2.0, 0.5])
    r1 = minimize(f, np.zeros(3), args=(1.0, centers))
    r2 = minimize(f, np.zeros(3), args=(2.0, centers))
    r3 = minimize(f, np.zeros(3), args=(0.5, -centers))
    assert traced["n"] == 1
    assert tape_cache(f).n_records == 1
    assert r1.tape is r2.tape is r3.tape
    assert r1.tape.n_params == 4  # a and the 3 centers, not differentiated
    for res, a, c in ((r1, 1.0, centers), (r2, 2.0, centers), (r3, 0.5, -centers)):
        assert res.success, res.message
        # stationarity: 2 (x - a c) + 0.4 x^3 = 0
        np.testing.assert_allclose(2.0 * (res.x - a * c) + 0.4 * res.x**3, 0.0, atol=1e-5)
    assert not np.allclose(r1.x, r2.x)


def test_minimize_shares_tapes_with_the_transforms():
    pytest.importorskip("scipy.optimize")
    import tapejit

    def f(x):
        return np.sum(np.cosh(x - 0.3))

    tapejit.grad(f)(np.zeros(4))
    minimize(f, np.ones(4))
    assert tape_cache(f).n_records == 1


def test_minimize_static_arg_records_per_value():
    pytest.importorskip("scipy.optimize")

    def f(x, power):
        return np.sum((x - 1.0) ** power)

    minimize(f, np.zeros(2), args=(2,))
    minimize(f, np.zeros(2), args=(4,))
    minimize(f, np.zeros(2), args=(2,))
    assert tape_cache(f).n_records == 2


def test_minimize_follows_python_branches():
    pytest.importorskip("scipy.optimize")

    def huber(x, c):  # a Python branch on a traced value: one tape per branch taken
        r = x[0] - c
        if r * r < 1.0:
            h = 0.5 * r * r
        else:
            h = np.abs(r) - 0.5
        return h + 0.5 * (x[1] - 2.0) ** 2

    res = minimize(huber, np.array([5.0, 0.0]), args=(1.0,), tol=1e-10)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, [1.0, 2.0], atol=1e-6)
    assert tape_cache(huber).n_records == 2  # started on |r| >= 1, ended on |r| < 1


def test_minimize_rejects_vector_output_and_jac():
    pytest.importorskip("scipy.optimize")
    with pytest.raises(ValueError, match="single number"):
        minimize(lambda x: x**2, np.zeros(3))
    with pytest.raises(TypeError, match="jac"):
        minimize(rosen, ROSEN2_X0, jac=True)
    with pytest.raises(TypeError, match="hessp"):
        minimize(rosen, ROSEN2_X0, method="Newton-CG", hessp=lambda x, p: p)


def test_scipy_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ImportError, match=r"pip install tapejit\[opt\]"):
        minimize(rosen, ROSEN2_X0)
    with pytest.raises(ImportError, match=r"pip install tapejit\[opt\]"):
        least_squares(lambda x: x - 1.0, np.zeros(2))
    # multistart needs no scipy
    res = multistart(lambda x: np.sum((x - 1.0) ** 2), np.zeros((4, 2)), steps=50, lr=0.1,
                     method="gd")
    assert res.fun < 1e-6


# ---------------------------------------------------------------------------------------
# least_squares
# ---------------------------------------------------------------------------------------


def exp_model_residuals(p, t, y):
    a, b, c = p[0], p[1], p[2]
    return a * np.exp(-b * t) + c - y


def test_least_squares_recovers_exponential_decay():
    pytest.importorskip("scipy.optimize")
    t = np.linspace(0.0, 5.0, 80)
    true = np.array([2.5, 1.3, 0.4])
    y = true[0] * np.exp(-true[1] * t) + true[2]
    res = least_squares(exp_model_residuals, np.array([1.0, 0.5, 0.0]), args=(t, y))
    assert res.success, res.message
    np.testing.assert_allclose(res.x, true, rtol=1e-8)
    assert res.fun.shape == (80,)
    assert res.jac.shape == (80, 3)
    assert res.njev > 0
    # the Jacobian at the solution, analytically
    a, b = res.x[0], res.x[1]
    J = np.column_stack([np.exp(-b * t), -a * t * np.exp(-b * t), np.ones_like(t)])
    np.testing.assert_allclose(res.jac, J, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_least_squares_methods(method):
    pytest.importorskip("scipy.optimize")
    t = np.linspace(0.0, 5.0, 40)
    y = 2.0 * np.exp(-0.7 * t) - 0.1
    res = least_squares(exp_model_residuals, np.array([1.0, 1.0, 0.0]), args=(t, y),
                        method=method)
    np.testing.assert_allclose(res.x, [2.0, 0.7, -0.1], rtol=1e-7, atol=1e-9)


def sine_residuals(w, xs, ys):
    return np.sin(w * xs) - ys


def test_least_squares_seed003_sine_fit():
    pytest.importorskip("scipy.optimize")
    # seed 003: 200 soft unit tests of y = sin(omega x), omega = 1.5; start near it
    xs = np.linspace(-3.0, 3.0, 200)
    ys = np.sin(1.5 * xs)
    res = least_squares(sine_residuals, 1.4, args=(xs, ys))
    assert res.success, res.message
    assert res.x.shape == ()
    assert float(res.x) == pytest.approx(1.5, abs=1e-10)
    assert res.cost == pytest.approx(0.0, abs=1e-20)
    assert res.tape.n_params == 400
    # new data of the same shapes: same tape, new answer
    res2 = least_squares(sine_residuals, 1.2, args=(xs, np.sin(1.25 * xs)))
    assert float(res2.x) == pytest.approx(1.25, abs=1e-10)
    assert res2.tape is res.tape
    assert tape_cache(sine_residuals).n_records == 1


def test_least_squares_robust_loss_and_bounds():
    pytest.importorskip("scipy.optimize")
    t = np.linspace(0.0, 5.0, 60)
    y = 2.0 * np.exp(-0.7 * t) + 0.3
    y[::10] += 5.0  # outliers
    res = least_squares(exp_model_residuals, np.array([1.0, 1.0, 0.0]), args=(t, y),
                        loss="soft_l1", f_scale=0.1, bounds=([0, 0, -1], [10, 10, 1]))
    np.testing.assert_allclose(res.x, [2.0, 0.7, 0.3], atol=0.05)


def test_least_squares_multi_output_shapes_and_tuple():
    pytest.importorskip("scipy.optimize")

    def r(p):  # a tuple of arrays, flattened in order; p has shape (2, 2)
        return p - np.eye(2), 0.1 * (p[0, 0] - p[1, 1])

    res = least_squares(r, np.zeros((2, 2)))
    assert res.x.shape == (2, 2)
    np.testing.assert_allclose(res.x, np.eye(2), atol=1e-8)
    assert res.fun.shape == (5,)


def test_least_squares_rejects_jac():
    pytest.importorskip("scipy.optimize")
    with pytest.raises(TypeError, match="jac"):
        least_squares(lambda x: x - 1.0, np.zeros(2), jac="3-point")


# ---------------------------------------------------------------------------------------
# multistart
# ---------------------------------------------------------------------------------------


def wells1d(x):
    """Many wells on a tilted parabola; global minimum near x = -0.48."""
    return 0.05 * (x + 1.0) ** 2 + np.sin(3.0 * x) + 0.3 * np.cos(7.0 * x)


def wells2d(x):
    """A 2-D egg crate in a bowl centred away from the origin."""
    return (
        0.1 * np.sum((x - np.array([1.7, -0.9])) ** 2)
        - np.cos(2.5 * x[0]) * np.cos(2.0 * x[1])
        + 0.2 * np.sin(3.0 * x[0] + x[1])
    )


def _grid_min(f, lo, hi, n, dim):
    g = np.linspace(lo, hi, n)
    if dim == 1:
        vals = np.array([f(v) for v in g])
        return g[np.argmin(vals)], vals.min()
    G0, G1 = np.meshgrid(g, g, indexing="ij")
    vals = (
        0.1 * ((G0 - 1.7) ** 2 + (G1 + 0.9) ** 2)
        - np.cos(2.5 * G0) * np.cos(2.0 * G1)
        + 0.2 * np.sin(3.0 * G0 + G1)
    )
    k = np.unravel_index(np.argmin(vals), vals.shape)
    return np.array([g[k[0]], g[k[1]]]), vals[k]


def test_multistart_finds_the_global_minimum_1d():
    x_grid, f_grid = _grid_min(wells1d, -10.0, 10.0, 200001, 1)
    x0s = np.linspace(-10.0, 10.0, 64)
    res = multistart(wells1d, x0s, steps=1000, lr=0.05)
    assert res.xs.shape == (64,)
    assert res.funs.shape == (64,)
    assert res.x.shape == ()
    assert res.fun <= f_grid + 1e-9
    assert float(res.x) == pytest.approx(x_grid, abs=1e-3)
    # the problem is multimodal: many starts end in other wells
    assert np.sum(res.funs > f_grid + 0.1) > 10
    assert res.nit == 1000
    assert res.nfev == 1001
    assert res.history.shape == (1001,)
    assert np.all(np.diff(res.history) <= 0.0)
    assert res.history[-1] == res.fun
    # the step limit stopped it, so not a success in scipy's sense
    assert not res.success and res.status == 1 and "maximum number of steps" in res.message


def test_multistart_finds_the_global_minimum_2d():
    x_grid, f_grid = _grid_min(wells2d, -6.0, 6.0, 2401, 2)
    rng = np.random.default_rng(3)
    x0s = rng.uniform(-6.0, 6.0, size=(64, 2))
    res = multistart(wells2d, x0s, steps=1500, lr=0.03)
    assert res.xs.shape == (64, 2)
    assert res.x.shape == (2,)
    assert res.fun <= f_grid + 1e-6
    np.testing.assert_allclose(res.x, x_grid, atol=1e-2)
    assert np.sum(res.funs > f_grid + 0.1) > 10
    # the best value is also the value of f at the reported point
    assert res.fun == pytest.approx(float(wells2d(res.x)), rel=1e-12, abs=1e-12)


def test_multistart_gd_is_exact_gradient_descent():
    x0s = np.array([[1.0, -2.0], [0.5, 3.0], [-4.0, 0.25]])
    a = np.array([1.0, 3.0])
    res = multistart(lambda x: np.sum(a * x**2), x0s, method="gd", steps=25, lr=0.1)
    # x_{k+1} = x_k - lr * 2 a x_k
    np.testing.assert_allclose(res.xs, x0s * (1.0 - 0.2 * a) ** 25, rtol=1e-12)
    np.testing.assert_allclose(res.funs, np.sum(a * res.xs**2, axis=1), rtol=1e-12)


def test_multistart_adam_matches_a_reference_loop():
    def f(x, c):
        return np.sum((x - c) ** 2 * (1.0 + 0.5 * np.sin(x)))

    def grad(x, c):
        return 2 * (x - c) * (1 + 0.5 * np.sin(x)) + (x - c) ** 2 * 0.5 * np.cos(x)

    c = np.array([0.3, -1.0, 2.0])
    rng = np.random.default_rng(0)
    x0s = rng.normal(size=(5, 3))
    res = multistart(f, x0s, steps=40, lr=0.05, args=(c,))
    for k in range(5):  # Adam by the textbook, one start at a time
        x, m, v = x0s[k].copy(), np.zeros(3), np.zeros(3)
        for t in range(1, 41):
            g = grad(x, c)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            x = x - 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        np.testing.assert_allclose(res.xs[k], x, rtol=1e-11, atol=1e-12)


def test_multistart_tol_stops_converged_starts():
    x0s = np.linspace(-3.0, 3.0, 16)[:, None] * np.ones((1, 2))
    res = multistart(lambda x: np.sum((x - 1.0) ** 2), x0s, method="gd", lr=0.1,
                     steps=10000, tol=1e-8)
    assert res.converged.all()
    assert res.nit < 10000
    assert "converged" in res.message
    assert res.success and res.status == 0
    np.testing.assert_allclose(res.xs, 1.0, atol=1e-8)
    res = multistart(lambda x: np.sum((x - 1.0) ** 2), x0s, method="gd", lr=0.1, steps=5,
                     tol=1e-8)
    assert res.converged.sum() == 1  # the start at 1.0 only
    assert res.nit == 5
    assert not res.success and res.status == 1


def test_multistart_starts_on_different_python_branches():
    def f(x):  # continuous at 0; starts on the right slide across into the left branch
        if x > 0.0:
            return (x + 0.5) ** 2
        return (x + 2.0) ** 2 - 3.75

    x0s = np.linspace(-4.0, 4.0, 64)
    res = multistart(f, x0s, method="gd", steps=400, lr=0.05)
    np.testing.assert_allclose(res.xs, -2.0, atol=1e-8)
    assert res.fun == pytest.approx(-3.75, abs=1e-12)
    assert tape_cache(f).n_records == 2
    # a mixed batch, served branch by branch: the first sweep's values are f's
    res0 = multistart(f, x0s, steps=0)
    np.testing.assert_allclose(res0.funs, [f(float(x)) for x in x0s], rtol=1e-15)


def test_multistart_args_are_parameters_shared_by_all_starts():
    traced = {"n": 0}

    def f(x, center, scale):
        traced["n"] += 1
        return scale * np.sum((x - center) ** 2)

    x0s = np.random.default_rng(1).normal(size=(8, 3))
    for center in (np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 0.5])):
        res = multistart(f, x0s, steps=2000, lr=0.05, args=(center, 0.5))
        np.testing.assert_allclose(res.x, center, atol=1e-3)
    assert traced["n"] == 1
    assert tape_cache(f).n_records == 1


def test_multistart_matrix_shaped_points_and_one_start():
    target = np.array([[1.0, 2.0], [3.0, 4.0]])
    res = multistart(lambda m: np.sum((m - target) ** 2), np.zeros((1, 2, 2)), method="gd",
                     steps=200, lr=0.1)
    assert res.xs.shape == (1, 2, 2)
    assert res.x.shape == (2, 2)
    np.testing.assert_allclose(res.x, target, atol=1e-8)


def test_multistart_zero_steps_evaluates_the_starts():
    x0s = np.array([[0.0], [2.0], [1.5]])
    res = multistart(lambda x: np.sum((x - 1.4) ** 2), x0s, steps=0)
    assert res.nit == 0
    assert res.nfev == 1
    np.testing.assert_allclose(res.funs, [1.96, 0.36, 0.01])
    assert float(res.x[0]) == 1.5
    np.testing.assert_array_equal(res.xs, x0s)


def test_multistart_diverging_starts_do_not_hide_the_best():
    def f(x):
        return np.sum(np.log(x) ** 2)  # nan for x < 0

    x0s = np.array([[-1.0], [2.0], [0.5]])
    with np.errstate(all="ignore"):
        res = multistart(f, x0s, steps=300, lr=0.05)
    assert np.isnan(res.funs[0])
    assert res.fun == pytest.approx(0.0, abs=1e-5)
    assert res.status == 1  # finite best value; the step limit ended the run


def test_multistart_does_not_modify_x0s():
    x0s = np.linspace(-1.0, 1.0, 6)
    copy = x0s.copy()
    multistart(lambda x: (x - 0.1) ** 2, x0s, steps=10)
    np.testing.assert_array_equal(x0s, copy)


def test_multistart_validation():
    f = lambda x: np.sum(x**2)  # noqa: E731
    with pytest.raises(ValueError, match="method"):
        multistart(f, np.zeros((2, 2)), method="lbfgs")
    with pytest.raises(ValueError, match="steps"):
        multistart(f, np.zeros((2, 2)), steps=-1)
    with pytest.raises(ValueError, match="lr"):
        multistart(f, np.zeros((2, 2)), lr=0.0)
    with pytest.raises(ValueError, match="n_starts"):
        multistart(f, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="single number"):
        multistart(lambda x: x**2, np.zeros((2, 3)))


def test_result_attributes():
    res = multistart(lambda x: (x - 0.1) ** 2, np.zeros(3), steps=3)
    assert res.fun == res["fun"]
    assert "fun=" in repr(res)
    with pytest.raises(AttributeError):
        _ = res.nope


def test_module_docstring_examples():
    pytest.importorskip("scipy.optimize")
    result = doctest.testmod(topt, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_tape_optimize_is_a_deprecated_spelling_of_simplify():
    # tapejit.optimize is the optimizers' module; the tape passes are Tape.simplify.
    tape = tapejit.record(lambda x: np.sum(np.exp(x) * 1.0 + np.exp(x)), np.zeros(3))
    with pytest.warns(DeprecationWarning, match=r"Tape\.simplify\(\)"):
        old, old_report = tape.optimize(report=True)
    new, new_report = tape.simplify(report=True)
    assert old.listing(None) == new.listing(None)
    assert len(new) < len(tape)
    assert [r["instructions_after"] for r in old_report] == [
        r["instructions_after"] for r in new_report
    ]
