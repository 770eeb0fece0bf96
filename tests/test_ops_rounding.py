"""numpy's division, rounding, NaN-test and NaN-ignoring functions on traced values.

The table-driven tests (``test_ops.py``, ``test_second_order.py``) cover every op of the
table at sampled points; here, per family, the things they do not:

* ``%``, ``//`` and ``divmod`` record numpy's ``remainder``/``floor_divide`` (npy_divmod),
  bit for bit, where ``floor(a / b)`` differs (``1.0 // 0.1`` is 9.0), and the derivative
  there is the true one (finite differences);
* ``np.round``/``np.around`` with ``decimals`` (numpy's multiply, rint, divide),
  ``np.fix``, ``np.nan_to_num`` with its keywords, ``np.real``/``imag``/``conj``/``angle``
  on real input, bit for bit;
* the derivative conventions at kinks and jumps against JAX's (skipped where the peers'
  Python is not installed) and against the values stated in docs/ops;
* ``isnan``/``isfinite``/``isinf``/``signbit`` as guards.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _op_helpers import jax_gradients

import tapejit

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -2.5, 0.1, 3.0, np.inf, -np.inf, np.nan]


def _grid(n_args: int) -> np.ndarray:
    return np.array(list(itertools.product(SPECIALS, repeat=n_args)), dtype=np.float64)


def _divisions(seed: int) -> np.ndarray:
    """Points where ``floor(a / b)`` and numpy's quotient differ, exact multiples, both
    signs, and random points."""
    rng = np.random.default_rng(seed)
    hard = [(1.0, 0.1), (-1.0, 0.1), (1.0, -0.1), (0.3, 0.1), (0.7, 0.1), (5.0, 0.5),
            (-5.0, 0.5), (1e16, 3.0), (-1e-300, 1.0), (1e-300, -1.0), (6.0, 0.2)]
    a = rng.uniform(-10, 10, 2000)
    b = rng.uniform(0.05, 3.0, 2000) * rng.choice([-1.0, 1.0], 2000)
    return np.vstack([hard, np.column_stack([a, b]), _grid(2)])


def _assert_bits(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------------
# the operators: numpy's values, not floor(a / b)
# ---------------------------------------------------------------------------------------
def test_floor_division_operators_give_numpy_values_where_floor_of_quotient_differs():
    # the regression: // recorded floor(a / b) and % recorded a - floor(a / b) * b
    tape = tapejit.record(lambda a, b: np.stack([a // b, a % b]), 1.0, 1.0)
    np.testing.assert_array_equal(tape.forward(np.array([1.0, 0.1])), [9.0, 1.0 % 0.1])
    assert np.floor(1.0 / 0.1) == 10.0  # what the old recording gave
    X = _divisions(0)
    with np.errstate(all="ignore"):
        ref = np.stack([X[:, 0] // X[:, 1], X[:, 0] % X[:, 1]], axis=1)
    _assert_bits(tape.forward(X), ref)
    for i in range(0, len(X), 97):  # one point at a time: the same bits
        _assert_bits(tape.forward(X[i]), ref[i])


@pytest.mark.parametrize(
    ("f", "ref"),
    [
        (lambda a, b: divmod(a, b), lambda a, b: np.divmod(a, b)),
        (lambda a, b: divmod(2.5, b) + divmod(a, 0.3),
         lambda a, b: np.divmod(2.5, b) + np.divmod(a, 0.3)),
        (lambda a, b: (3.0 % b, 3.0 // b, a % 0.1, a // 0.1),
         lambda a, b: (3.0 % b, 3.0 // b, a % 0.1, a // 0.1)),
        (lambda a, b: (np.remainder(a, b), np.fmod(a, b), np.floor_divide(a, b)),
         lambda a, b: (np.remainder(a, b), np.fmod(a, b), np.floor_divide(a, b))),
    ],
    ids=["divmod", "divmod-constants", "reflected", "ufuncs"],
)
def test_division_spellings_match_numpy_bitwise(f, ref):
    tape = tapejit.record(lambda a, b: np.stack(f(a, b)), 1.0, 0.7)
    X = _divisions(1)
    with np.errstate(all="ignore"):
        expected = np.stack(ref(X[:, 0], X[:, 1]), axis=1)
    _assert_bits(tape.forward(X), expected)


def test_mod_derivative_is_minus_numpy_quotient_and_matches_differences(central_diff):
    tape = tapejit.record(lambda a, b: a % b, 1.0, 1.0)
    X = _divisions(2)
    X = X[np.all(np.isfinite(X), axis=1) & (X[:, 1] != 0.0)]
    with np.errstate(all="ignore"):
        q = np.floor_divide(X[:, 0], X[:, 1])
    g = tape.gradient(X)
    np.testing.assert_array_equal(g[:, 0], 1.0)
    np.testing.assert_array_equal(g[:, 1], -q)
    # the true derivative at 1.0 % 0.1 = 1.0 - 9 * 0.1 (JAX says -10 there)
    np.testing.assert_array_equal(tape.gradient(np.array([1.0, 0.1])), [1.0, -9.0])
    # away from jumps: central differences
    far = np.abs(X[:, 0] - X[:, 1] * np.round(X[:, 0] / X[:, 1])) > 1e-3 * np.abs(X[:, 1])
    far &= np.abs(X).max(axis=1) < 1e6
    fd = central_diff(lambda Z: np.remainder(Z[:, 0], Z[:, 1]), X[far], h=1e-8)
    np.testing.assert_allclose(g[far], fd, rtol=1e-5, atol=1e-5)


def test_fmod_derivative_is_minus_truncated_quotient(central_diff):
    tape = tapejit.record(np.fmod, 1.0, 1.0)
    X = _divisions(3)
    X = X[np.all(np.isfinite(X), axis=1) & (X[:, 1] != 0.0) & (np.abs(X[:, 0]) < 1e6)]
    n = (X[:, 0] - np.fmod(X[:, 0], X[:, 1])) / X[:, 1]
    g = tape.gradient(X)
    np.testing.assert_array_equal(g[:, 0], 1.0)
    np.testing.assert_array_equal(g[:, 1], -np.rint(n))
    far = np.abs(X[:, 0] - X[:, 1] * np.round(X[:, 0] / X[:, 1])) > 1e-3 * np.abs(X[:, 1])
    fd = central_diff(lambda Z: np.fmod(Z[:, 0], Z[:, 1]), X[far], h=1e-8)
    np.testing.assert_allclose(g[far], fd, rtol=1e-5, atol=1e-5)


def test_division_family_derivatives_agree_with_jax_away_from_rounding_cases():
    pts = np.array([[2.5, 1.0], [-2.5, 1.0], [2.5, -1.0], [3.0, 1.0], [-3.0, 1.0],
                    [7.3, 0.7], [-7.3, 0.7], [0.2, 3.0], [-0.2, 3.0]])
    for f, expr in [(np.remainder, "jnp.remainder(x0, x1)"), (np.fmod, "jnp.fmod(x0, x1)"),
                    (np.floor_divide, "jnp.floor_divide(x0, x1)")]:
        tape = tapejit.record(f, 1.0, 1.0)
        np.testing.assert_array_equal(tape.gradient(pts), jax_gradients(expr, pts), f.__name__)


# ---------------------------------------------------------------------------------------
# rounding
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("decimals", [0, 1, 2, 3, 8, 9, 12, -1, -2, -10])
@pytest.mark.parametrize("fn", [np.round, np.around])
def test_round_with_decimals_matches_numpy_bitwise(fn, decimals):
    tape = tapejit.record(lambda x: fn(x, decimals), np.zeros(4))
    rng = np.random.default_rng(decimals + 20)
    X = (rng.normal(size=(300, 4)) * 10.0 ** rng.uniform(-4, 12, size=(300, 4)))
    X[:3] = [[0.5, 1.5, 2.5, -0.5], [0.125, 0.375, 1.005, 2.675], [np.inf, -np.inf, np.nan,
                                                                   -0.0]]
    _assert_bits(tape.forward(X), fn(X, decimals))
    _assert_bits(tape.forward(X[1]), fn(X[1], decimals))
    np.testing.assert_array_equal(tape.jacobian(X[5]), np.zeros((4, 4)))  # derivative 0


def test_rint_trunc_fix_values_and_zero_derivatives():
    tape = tapejit.record(lambda x: np.stack([np.rint(x), np.trunc(x), np.fix(x)]), 1.0)
    x = np.array([-2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 2.7, -2.7, np.inf, np.nan])
    _assert_bits(tape.forward(x[:, None]), np.stack([np.rint(x), np.trunc(x), np.fix(x)], 1))
    J = tape.jacobian(x[:, None])
    np.testing.assert_array_equal(J, 0.0)
    g = jax_gradients("jnp.round(x0) + jnp.trunc(x0) + jnp.rint(x0)", x[:8, None])
    np.testing.assert_array_equal(J[:8, :, 0].sum(axis=1), g[:, 0])


# ---------------------------------------------------------------------------------------
# NaN tests, NaN-ignoring extremes, nan_to_num
# ---------------------------------------------------------------------------------------
def test_nan_tests_record_guards():
    def f(x):
        if np.isnan(x):
            return 0.0 * x
        if np.isinf(x) or not np.isfinite(x):
            return 1.0 + 0.0 * x
        return 2.0 * x

    tape = tapejit.record(f, 1.5)
    assert tape.forward(np.array([3.0])) == 6.0
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([np.nan]))
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([np.inf]))
    nan_tape = tapejit.record(f, np.nan)
    assert nan_tape.forward(np.array([np.nan])) != nan_tape.forward(np.array([np.nan]))
    with pytest.raises(tapejit.BranchError):
        nan_tape.forward(np.array([1.0]))


def test_signbit_separates_signed_zeros():
    tape = tapejit.record(np.signbit, 1.0)
    x = np.array([-0.0, 0.0, -1.0, 1.0, -np.inf, np.inf, np.nan, -np.nan])
    np.testing.assert_array_equal(tape.forward(x[:, None]), np.signbit(x).astype(float))


@pytest.mark.parametrize("fn", [np.fmax, np.fmin])
def test_fmax_fmin_ignore_nan_and_follow_jax_at_ties(fn):
    tape = tapejit.record(fn, 1.0, 1.0)
    X = _grid(2)
    # equal up to the sign of a zero: at fmax(0.0, -0.0) numpy's scalar loop returns a,
    # its SIMD loops b
    np.testing.assert_array_equal(tape.forward(X), fn(X[:, 0], X[:, 1]))
    pts = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0], [np.nan, 1.0], [1.0, np.nan],
                    [-0.5, -0.5]])
    np.testing.assert_array_equal(
        tape.gradient(pts), jax_gradients(f"jnp.{fn.__name__}(x0, x1)", pts))
    # as docs/ops states: to the operand returned, to b at a tie
    np.testing.assert_array_equal(tape.gradient(pts[:2]), [[0.0, 1.0], [1.0 * (fn is np.fmax),
                                                                        1.0 * (fn is np.fmin)]])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"nan": 7.0}, {"posinf": 1e10, "neginf": -3.0}, {"nan": -1.0, "posinf": 2.0},
     {"copy": False}],
)
def test_nan_to_num_values_and_derivatives(kwargs):
    tape = tapejit.record(lambda x: np.nan_to_num(x, **kwargs), np.zeros(6))
    x = np.array([np.nan, np.inf, -np.inf, 2.5, -0.0, -1e308])
    _assert_bits(tape.forward(x), np.nan_to_num(x.copy(), **kwargs))  # copy=False: in place
    np.testing.assert_array_equal(np.diag(tape.jacobian(x)), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = jax_gradients(f"jnp.sum(jnp.nan_to_num(jnp.stack([{', '.join(f'x{i}' for i in range(6))}]),"
                      f" **{kwargs!r}))".replace("'copy': False", ""), x[None, :])
    np.testing.assert_array_equal(np.diag(tape.jacobian(x)), g[0])


def test_heaviside_conventions_match_jax():
    tape = tapejit.record(np.heaviside, 1.0, 0.5)
    X = _grid(2)
    _assert_bits(tape.forward(X), np.heaviside(X[:, 0], X[:, 1]))
    pts = np.array([[0.0, 0.5], [-0.0, 0.3], [1.0, 0.5], [-1.0, 0.5]])
    g = tape.gradient(pts)
    np.testing.assert_array_equal(g, [[0.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(g, jax_gradients("jnp.heaviside(x0, x1)", pts))


def test_copysign_values_and_derivative():
    tape = tapejit.record(np.copysign, 1.0, 1.0)
    X = _grid(2)
    _assert_bits(tape.forward(X), np.copysign(X[:, 0], X[:, 1]))
    pts = np.array([[2.0, -1.0], [-2.0, 1.0], [0.0, 1.0], [0.0, -1.0], [3.0, 2.0],
                    [-3.0, -2.0]])
    np.testing.assert_array_equal(tape.gradient(pts),
                                  jax_gradients("jnp.copysign(x0, x1)", pts))


# ---------------------------------------------------------------------------------------
# real input: real, imag, conj, angle; float_power; logaddexp2; sinc
# ---------------------------------------------------------------------------------------
def test_complex_helpers_on_real_input():
    def f(x):
        return np.stack([np.real(x), np.imag(x), np.conj(x), np.conjugate(x), np.angle(x),
                         np.angle(x, deg=True)])

    tape = tapejit.record(f, 1.0)
    x = np.array([2.0, -2.0, 0.0, -0.0, np.inf, -np.inf, np.nan])
    _assert_bits(tape.forward(x[:, None]), np.stack(
        [np.real(x), np.imag(x), np.conj(x), np.conjugate(x), np.angle(x),
         np.angle(x, deg=True)], axis=1))
    J = tape.jacobian(np.array([[2.0], [-2.0], [0.0]]))[:, :, 0]
    np.testing.assert_array_equal(J, [[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]] * 3)


def test_float_power_is_pow():
    tape = tapejit.record(np.float_power, 1.0, 1.0)
    X = np.column_stack([np.linspace(0.1, 4.0, 50), np.linspace(-3.0, 3.0, 50)])
    ref = np.float_power(X[:, 0], X[:, 1])
    np.testing.assert_allclose(tape.forward(X), ref, rtol=1e-15)
    np.testing.assert_allclose(tape.gradient(X), np.column_stack(
        [X[:, 1] * X[:, 0] ** (X[:, 1] - 1), ref * np.log(X[:, 0])]), rtol=1e-13)


def test_logaddexp2_against_jax_and_closed_form_hessian():
    tape = tapejit.record(np.logaddexp2, 1.0, 1.0)
    X = _grid(2)
    with np.errstate(all="ignore"):
        ref = np.logaddexp2(X[:, 0], X[:, 1])
    np.testing.assert_array_equal(np.isnan(tape.forward(X)), np.isnan(ref))
    ok = np.isfinite(ref)
    np.testing.assert_allclose(tape.forward(X)[ok], ref[ok], rtol=1e-15)
    pts = np.array([[1.0, 1.0], [0.3, -2.0], [-5.0, 4.0], [30.0, -30.0]])
    np.testing.assert_allclose(tape.gradient(pts), jax_gradients("jnp.logaddexp2(x0, x1)", pts),
                               rtol=1e-14)
    r = np.logaddexp2(pts[:, 0], pts[:, 1])
    p, q = np.exp2(pts[:, 0] - r), np.exp2(pts[:, 1] - r)  # q, not 1 - p: 2**-60 at [30, -30]
    H = np.log(2.0) * np.stack([np.column_stack([p * q, -p * q]),
                                np.column_stack([-p * q, p * q])], axis=1)
    np.testing.assert_allclose(tape.hessian(pts), H, rtol=1e-9, atol=1e-300)


def test_sinc_value_derivatives_at_and_near_zero():
    tape = tapejit.record(np.sinc, 0.5)
    x = np.array([0.0, -0.0, 1e-12, 1e-5, -0.01, 0.3, 1 / np.pi, 0.32, -2.5, 7.0])
    np.testing.assert_allclose(tape.forward(x[:, None]), np.sinc(x), rtol=2e-16)
    assert tape.forward(np.array([0.0])) == 1.0
    g = tape.gradient(x[:, None])[:, 0]
    # JAX's rule loses digits near 0 (0 at 1e-12, 2e-7 off at 1e-5, 5e-13 at 0.01): JAX
    # from 0.2 on, the Taylor series below
    big = np.abs(x) >= 0.2
    np.testing.assert_allclose(g[big], jax_gradients("jnp.sinc(x0)", x[big, None])[:, 0],
                               rtol=1e-13)
    y = np.pi * x[~big]
    series = np.pi * (-y / 3 + y**3 / 30 - y**5 / 840 + y**7 / 45360)
    np.testing.assert_allclose(g[~big], series, rtol=1e-15, atol=0)
    H = tape.hessian(x[:, None])[:, 0, 0]
    y = np.pi * x[1:]  # the closed form away from 0 (1e-12 and 1e-5 in the series branch)
    closed = np.where(np.abs(y) > 0.5,
                      np.pi**2 * ((2 - y**2) * np.sin(y) - 2 * y * np.cos(y)) / y**3,
                      np.pi**2 * (-1 / 3 + y**2 / 10 - y**4 / 168))
    np.testing.assert_allclose(H[1:], closed, rtol=1e-12)
    assert H[0] == pytest.approx(-np.pi**2 / 3, rel=1e-15)
    assert g[0] == 0.0


def test_np_divmod_records_floor_divide_and_remainder():
    # np.divmod's two results: numpy's floor_divide and remainder, bit for bit
    tape = tapejit.record(lambda a: np.stack(np.divmod(a, 0.1)), 1.0)
    _assert_bits(tape.forward(np.array([1.0])), np.array(np.divmod(1.0, 0.1)))
    np.testing.assert_array_equal(tape.jacobian(np.array([1.0])), [[0.0], [1.0]])


def test_sinc_derivatives_of_every_tested_order_then_nan():
    """sinc's n-th derivative (op ``sinc_derivative``, the partial of sinc at every
    order) against the series at 0, pi**n (-1)**(n/2) / (n + 1) for even n and 0 for
    odd n, up to its maximum order 16; above it, NaN, never a number that has lost its
    digits."""
    op = tapejit.OPS[[o.name for o in tapejit.OPS].index("sinc_derivative")]
    tape = tapejit.record(op.trace, 1.0, 0.5)
    n = np.arange(18.0)
    got = tape.forward(np.column_stack([n, np.zeros_like(n)]))
    at_zero = np.where(n % 2 == 0, np.pi**n * (-1.0) ** (n // 2) / (n + 1), 0.0)
    np.testing.assert_allclose(got[:17], at_zero[:17], rtol=1e-14, atol=0)
    assert np.isnan(got[17])
