"""The worked examples of the seed articles (/work/shared/seeds), with their numbers.

000  ReLU cost (y - max(0, w*x + b))^2 at y=5, w=2, x=1, b=1.
001  y = ln(x1) + x1*x2 - sin(x2) at (2, 5), forward and reverse mode tables.
002  f(x, y) = 3 x^2 y; y = x + x^2; y = sin(x^2); y = sin(x + x^2).
003  f(x) = 3x, g(x) = sin x, h(x) = exp(x) + 1/x; the sine fit L(omega) over 200 soft
     unit tests, minimized by gradient descent at omega = 1.5.
004  (d2l) y = 2 x.x; non-scalar backward via weights; detach; Python control flow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tapejit

# ---------------------------------------------------------------------------------------
# 001: y = ln(x1) + x1*x2 - sin(x2)
# ---------------------------------------------------------------------------------------
SEED001_VALUE = 11.652071455223084
SEED001_GRAD = (5.5, 1.7163378145367738)  # (1/x1 + x2, x1 - cos x2)


def f001(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def test_seed001_value_and_gradient_at_2_5():
    tape = tapejit.record(f001, 2.0, 5.0)
    v, g = tape.value_and_grad(np.array([2.0, 5.0]))
    assert v == pytest.approx(SEED001_VALUE, rel=1e-15, abs=0)
    np.testing.assert_allclose(g, SEED001_GRAD, rtol=1e-15, atol=0)
    assert tape.forward(np.array([2.0, 5.0])) == v
    # the article's reverse sweep visits ln, mul, sin, add, sub: 5 instructions
    assert len(tape) == 5


def test_seed001_intermediate_reference_values():
    # the article's table: v1 = ln 2, v2 = 10, v3 = sin 5, v4 = v1 + v2, v5 = v4 - v3
    assert math.log(2.0) + 10.0 - math.sin(5.0) == pytest.approx(SEED001_VALUE, rel=1e-15)
    assert 2.0 - math.cos(5.0) == pytest.approx(SEED001_GRAD[1], rel=1e-15)


def test_seed001_forward_mode_column_is_the_gradient_column():
    # forward mode: one pass per input gives one column of the (1 x 2) Jacobian
    tape = tapejit.record(f001, 2.0, 5.0)
    J = tape.jacobian(np.array([2.0, 5.0]))
    assert J.shape == (1, 2)
    np.testing.assert_allclose(J[0], SEED001_GRAD, rtol=1e-15)


def test_seed001_vector_argument_and_transforms():
    tape = tapejit.record(lambda x: np.log(x[0]) + x[0] * x[1] - np.sin(x[1]), np.zeros(2))
    v, g = tape.value_and_grad(np.array([2.0, 5.0]))
    assert v == pytest.approx(SEED001_VALUE, rel=1e-15)
    np.testing.assert_allclose(g, SEED001_GRAD, rtol=1e-15)

    vg = tapejit.value_and_grad(f001, argnums=(0, 1))
    v, (g1, g2) = vg(2.0, 5.0)
    assert v == pytest.approx(SEED001_VALUE, rel=1e-15)
    assert g1 == pytest.approx(5.5, rel=1e-15)
    assert g2 == pytest.approx(SEED001_GRAD[1], rel=1e-15)
    assert tapejit.grad(f001)(2.0, 5.0) == pytest.approx(5.5, rel=1e-15)


def test_seed001_many_points():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(0.1, 5.0, 5000), rng.uniform(-5.0, 5.0, 5000)])
    tape = tapejit.record(f001, 2.0, 5.0)
    v, g = tape.value_and_grad(X)
    x1, x2 = X.T
    np.testing.assert_allclose(v, f001(x1, x2), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g[:, 0], 1.0 / x1 + x2, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(g[:, 1], x1 - np.cos(x2), rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------
# 000: the ReLU cost
# ---------------------------------------------------------------------------------------
def relu_cost(y, w, x, b):
    return (y - np.maximum(0.0, w * x + b)) ** 2


def test_seed000_relu_cost_at_article_point():
    tape = tapejit.record(relu_cost, 5.0, 2.0, 1.0, 1.0)
    v, g = tape.value_and_grad(np.array([5.0, 2.0, 1.0, 1.0]))
    assert v == 4.0
    # d/dy, d/dw, d/dx, d/db
    np.testing.assert_array_equal(g, [4.0, -4.0, -8.0, -4.0])


def test_seed000_relu_cost_inactive_unit():
    # w*x + b < 0: the ReLU outputs 0 (slope 0), only y gets a derivative (2y)
    tape = tapejit.record(relu_cost, 5.0, 2.0, 1.0, 1.0)
    v, g = tape.value_and_grad(np.array([5.0, -2.0, 1.0, 1.0]))
    assert v == 25.0
    np.testing.assert_array_equal(g, [10.0, 0.0, 0.0, 0.0])


def test_seed000_relu_cost_at_the_kink_uses_half_slope():
    # the article: "the slope is undefined when x = 0"; tapejit's convention is 1/2
    tape = tapejit.record(relu_cost, 5.0, 2.0, 1.0, 1.0)
    v, g = tape.value_and_grad(np.array([5.0, 1.0, 1.0, -1.0]))
    assert v == 25.0
    # dL/du = -2 (y - 0) = -10, relu'(0) = 1/2 -> -5 times d(wx+b)
    np.testing.assert_array_equal(g, [10.0, -5.0, -5.0, -5.0])


def test_seed000_relu_cost_batched_matches_formula():
    rng = np.random.default_rng(0)
    P = rng.uniform(-3.0, 3.0, size=(4000, 4))
    y, w, x, b = P.T
    u = w * x + b
    keep = np.abs(u) > 1e-9
    P, y, w, x, b, u = P[keep], y[keep], w[keep], x[keep], b[keep], u[keep]
    tape = tapejit.record(relu_cost, 5.0, 2.0, 1.0, 1.0)
    v, g = tape.value_and_grad(P)
    r = np.maximum(0.0, u)
    active = (u > 0).astype(float)
    np.testing.assert_allclose(v, (y - r) ** 2, rtol=1e-15, atol=0)
    dr = -2.0 * (y - r) * active
    expect = np.column_stack([2.0 * (y - r), dr * x, dr * w, dr])
    np.testing.assert_allclose(g, expect, rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------------------------------
# 002: partial derivatives and the multivariable chain rule
# ---------------------------------------------------------------------------------------
X002 = np.linspace(-2.0, 2.0, 41)


def test_seed002_partials_of_3x2y():
    tape = tapejit.record(lambda x, y: 3.0 * x**2 * y, 1.0, 1.0)
    rng = np.random.default_rng(2)
    P = rng.uniform(-3.0, 3.0, size=(1000, 2))
    x, y = P.T
    v, g = tape.value_and_grad(P)
    np.testing.assert_allclose(v, 3.0 * x**2 * y, rtol=1e-15)
    np.testing.assert_allclose(g, np.column_stack([6.0 * x * y, 3.0 * x**2]), rtol=1e-15)
    v, g = tape.value_and_grad(np.array([2.0, 3.0]))
    assert v == 36.0
    np.testing.assert_array_equal(g, [36.0, 12.0])


def test_seed002_x_plus_x_squared_sums_both_paths():
    tape = tapejit.record(lambda x: x + x**2, 1.0)
    assert len(tape) == 2  # square, add: x reaches the output along two paths
    g = tape.gradient(X002[:, None])[:, 0]
    np.testing.assert_array_equal(g, 1.0 + 2.0 * X002)  # not 2x
    assert tape.gradient(np.array([3.0]))[0] == 7.0


def test_seed002_sin_of_x_squared():
    tape = tapejit.record(lambda x: np.sin(x**2), 1.0)
    g = tape.gradient(X002[:, None])[:, 0]
    np.testing.assert_allclose(g, 2.0 * X002 * np.cos(X002**2), rtol=1e-14, atol=1e-15)


def test_seed002_sin_of_x_plus_x_squared():
    tape = tapejit.record(lambda x: np.sin(x + x**2), 1.0)
    v, g = tape.value_and_grad(X002[:, None])
    np.testing.assert_allclose(v, np.sin(X002 + X002**2), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(
        g[:, 0], np.cos(X002 + X002**2) * (1.0 + 2.0 * X002), rtol=1e-14, atol=1e-15
    )


# ---------------------------------------------------------------------------------------
# 003: differentiating code; the sine fit
# ---------------------------------------------------------------------------------------
X003 = np.linspace(0.25, 4.0, 16)


@pytest.mark.parametrize(
    ("f", "fprime"),
    [
        (lambda x: 3.0 * x, lambda x: np.full_like(x, 3.0)),
        (lambda x: np.sin(x), np.cos),
        (lambda x: np.exp(x) + 1.0 / x, lambda x: np.exp(x) - 1.0 / x**2),
    ],
    ids=["3x", "sin", "exp_plus_reciprocal"],
)
def test_seed003_derivative_of_code_is_code_of_derivative(f, fprime):
    tape = tapejit.record(f, 1.0)
    v, g = tape.value_and_grad(X003[:, None])
    np.testing.assert_allclose(v, f(X003), rtol=1e-15)
    np.testing.assert_allclose(g[:, 0], fprime(X003), rtol=1e-14)


def _sine_fit_data():
    xs = np.linspace(-3.0, 3.0, 200)  # 200 soft unit tests
    return xs, np.sin(1.5 * xs)


def sine_loss(omega, xs, ys):
    return np.sum((np.sin(omega * xs) - ys) ** 2)


def test_seed003_sine_fit_loss_and_gradient():
    xs, ys = _sine_fit_data()
    tape = tapejit.record(sine_loss, 1.0, xs, ys, argnums=0)
    assert tape.n_inputs == 1
    assert tape.n_params == 400
    params = np.concatenate([xs, ys])
    for omega in (0.75, 1.0, 2.25, 1.3):
        v, g = tape.value_and_grad(np.array([omega]), params=params)
        r = np.sin(omega * xs) - ys
        assert v == pytest.approx(np.sum(r**2), rel=1e-13)
        assert g[0] == pytest.approx(np.sum(2.0 * r * np.cos(omega * xs) * xs), rel=1e-12)
    v, g = tape.value_and_grad(np.array([1.5]), params=params)
    assert v == pytest.approx(0.0, abs=1e-25)
    assert abs(g[0]) < 1e-12


def test_seed003_sine_fit_loss_curve_has_its_minimum_at_1_5():
    xs, ys = _sine_fit_data()
    tape = tapejit.record(sine_loss, 1.0, xs, ys, argnums=0)
    omegas = np.linspace(0.5, 2.5, 401)
    L = tape.forward(omegas[:, None], params=np.concatenate([xs, ys]))
    assert L.shape == omegas.shape
    assert omegas[np.argmin(L)] == pytest.approx(1.5, abs=1e-12)
    # the article's four tries: 1.5 is the best of them
    tries = {w: L[np.argmin(np.abs(omegas - w))] for w in (0.75, 2.25, 1.0, 1.5)}
    assert min(tries, key=tries.get) == 1.5


def test_seed003_gradient_descent_finds_omega():
    xs, ys = _sine_fit_data()
    tape = tapejit.record(sine_loss, 1.0, xs, ys, argnums=0)
    params = np.concatenate([xs, ys])
    omega = np.array([1.4])
    g = np.empty(1)
    for _ in range(200):
        _v, _ = tape.value_and_grad(omega, params=params, out=(None, g))
        omega = omega - 1e-3 * g  # epsilon * f'
    assert omega[0] == pytest.approx(1.5, abs=1e-9)


# ---------------------------------------------------------------------------------------
# 004 (d2l): vector examples, non-scalar backward, detach, control flow
# ---------------------------------------------------------------------------------------
X004 = np.arange(4.0)


def test_seed004_two_x_dot_x():
    tape = tapejit.record(lambda x: 2.0 * np.dot(x, x), X004)
    v, g = tape.value_and_grad(X004)
    assert v == 28.0
    np.testing.assert_array_equal(g, [0.0, 4.0, 8.0, 12.0])  # 4x
    np.testing.assert_array_equal(g, 4.0 * X004)
    np.testing.assert_array_equal(tapejit.grad(lambda x: 2.0 * np.dot(x, x))(X004), 4 * X004)


def test_seed004_sum_gradient_is_ones():
    tape = tapejit.record(lambda x: np.sum(x), X004)
    np.testing.assert_array_equal(tape.gradient(X004), np.ones(4))


def test_seed004_non_scalar_backward_via_vjp():
    tape = tapejit.record(lambda x: x * x, X004)
    assert tape.n_outputs == 4
    y, g = tape.vjp(X004, np.ones(4))  # y.sum().backward()
    np.testing.assert_array_equal(y, X004**2)
    np.testing.assert_array_equal(g, 2.0 * X004)
    w = np.array([0.5, -1.0, 2.0, 3.0])
    y, g = tape.vjp(X004, w)
    np.testing.assert_array_equal(g, 2.0 * X004 * w)
    np.testing.assert_array_equal(tape.jacobian(X004), np.diag(2.0 * X004))


def test_seed004_non_scalar_backward_batched_weights():
    tape = tapejit.record(lambda x: x * x, X004)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 4))
    W = rng.normal(size=(50, 4))
    y, g = tape.vjp(X, W)
    np.testing.assert_array_equal(y, X * X)
    np.testing.assert_allclose(g, 2.0 * X * W, rtol=1e-15)


def test_seed004_detach():
    def z_of(x):
        y = x * x
        u = tapejit.stop_gradient(y)
        return np.sum(u * x)

    tape = tapejit.record(z_of, X004)
    v, g = tape.value_and_grad(X004)
    assert v == np.sum(X004**3)
    np.testing.assert_array_equal(g, X004 * X004)  # dz/dx = u, not 3x^2
    # the un-detached y still differentiates normally: d(sum y)/dx = 2x
    tape_y = tapejit.record(lambda x: np.sum(x * x), X004)
    np.testing.assert_array_equal(tape_y.gradient(X004), 2.0 * X004)


def _d2l_f(a):
    b = a * 2
    while np.linalg.norm(b) < 1000:
        b = b * 2
    if np.sum(b) > 0:
        c = b
    else:
        c = 100 * b
    return c


@pytest.mark.parametrize("a", [0.7, -0.3, 1.3e-3, -25.0, 600.0])
def test_seed004_python_control_flow_gradient(a):
    # d2l: f is piecewise linear in a, so a.grad == f(a) / a, whatever branch is taken
    d = _d2l_f(a)
    g = tapejit.grad(_d2l_f)(a)
    assert g == pytest.approx(d / a, rel=1e-15)
    v, g2 = tapejit.value_and_grad(_d2l_f)(a)
    assert v == d
    assert g2 == g


def test_seed004_python_control_flow_records_guards():
    tape = tapejit.record(_d2l_f, 0.7)
    assert tape.n_guards >= 2  # the loop condition each time round, and the `if`
    assert tape.forward(np.array([0.7])) == _d2l_f(0.7)
    assert tape.forward(np.array([0.8])) == _d2l_f(0.8)  # same branches
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([-0.7]))  # the `if` goes the other way
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([7.0]))  # fewer loop iterations


def test_seed004_control_flow_rewritten_branch_free():
    # the `if` part written with np.where records fine; the gradient is d/a as in d2l
    def f(a):
        b = a * 2048.0
        return np.where(np.sum(b) > 0, b, 100.0 * b)

    tape = tapejit.record(f, 1.0)
    for a in (0.7, -0.3):
        v = tape.forward(np.array([a]))
        d = f(np.float64(a))
        assert v == d
        assert tape.gradient(np.array([a]))[0] == pytest.approx(d / a, rel=1e-15)
