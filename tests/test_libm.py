"""tapejit's own ``sin``, ``cos``, ``log``, ``exp``, ``expm1``, ``log1p`` and ``tanh``
(``tapejit/_kernels/libm.py``), and ``logaddexp`` built on them, through the kernels.

* Accuracy: below :data:`MAX_ULP` against long-double references, on the batched
  (vectorized) path, over typical, wide, tiny, subnormal and near-multiple-of-pi/2
  arguments (the reduction's hard cases);
* special values as numpy gives them: signed zeros, infinities, NaN, negative and zero
  logarithms, subnormals, arguments on both sides of the reduction's limit and far
  beyond it (libm there);
* any double (hypothesis, the whole range with infinities and NaN): numpy's result, or
  its neighbour, batched and one point alike;
* every sweep gives the same bits: batched rows (vectorized loop plus the fix-up of
  large arguments, in some chunks and not others) against one point at a time, for
  values, gradients, tangents and Hessian-vector products.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapejit
from tapejit._kernels import libm
from tapejit._kernels.cache import load_kernels
from tapejit._kernels.reference import LIBM_NUMPY as NUMPY
from tapejit._ops import BY_NAME, TWINS

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

#: Largest error accepted, in units in the last place of the true result (measured
#: 0.78 for sin and cos, 0.85 for log: fdlibm's bound for its log is one ulp; 0.86 for
#: exp, 0.83 for expm1, 0.82 for log1p).
MAX_ULP = 1.0
#: tanh's (measured 1.06 just above |x| = 0.7, where exp's own error passes into
#: 1 - 2 / (exp(2|x|) + 1); fdlibm's tanh, which numpy calls on most machines, reaches
#: 2.2).
MAX_ULP_TANH = 1.15
L = np.longdouble
LONG_DOUBLE_OK = np.finfo(L).nmant >= 63  # x86 extended or quad: a reference to 2**-63

rng = np.random.default_rng(20261202)
N = 200_000
TRIG_SETS = {
    "pi": rng.uniform(-np.pi, np.pi, N),
    "hundred": rng.uniform(-100.0, 100.0, N),
    "limit": rng.uniform(-1.6e6, 1.6e6, N),
    "magnitudes": np.exp(rng.uniform(np.log(1e-12), np.log(1.6e6), N)) * rng.choice([-1, 1], N),
    # x near k pi/2: the result (or its cosine partner) is tiny, relative error is the test
    "near_k_pi_2": np.arange(1, 20_001) * (np.pi / 2),
}
LOG_SETS = {
    "octave": rng.uniform(0.5, 2.0, N),
    "near_one": 1.0 + rng.uniform(-1e-3, 1e-3, N),
    "normal_range": np.exp(rng.uniform(np.log(1e-307), np.log(1e308), N)),
    "subnormal": rng.uniform(5e-324, 2.2e-308, N),
}


def _signed(lo: float, hi: float) -> np.ndarray:
    """Magnitudes log-uniform in ``[lo, hi]``, either sign."""
    return np.exp(rng.uniform(np.log(lo), np.log(hi), N)) * rng.choice([-1, 1], N)


EXP_SETS = {
    "exp": {"unit": rng.uniform(-1, 1, N), "wide": rng.uniform(-745, 709.78, N),
            "subnormal_results": rng.uniform(-745.13, -708.4, N),
            "magnitudes": _signed(1e-300, 700.0)},
    "expm1": {"unit": rng.uniform(-1, 1, N), "reductions": rng.uniform(-40, 40, N),
              "wide": rng.uniform(-50, 709.78, N), "magnitudes": _signed(1e-300, 700.0)},
    "tanh": {"unit": rng.uniform(-1, 1, N), "wide": rng.uniform(-25, 25, N),
             "magnitudes": _signed(1e-300, 30.0)},
    "log1p": {"unit": rng.uniform(-0.5, 0.5, N), "negative": rng.uniform(-1, 0, N),
              "octave_edges": rng.uniform(-0.3, 0.42, N),
              "wide": np.exp(rng.uniform(np.log(1e-300), np.log(1e308), N)),
              "magnitudes": _signed(1e-300, 1e-3)},
}


def _ulp_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in units of the last place of ``ref`` (as a float64)."""
    _, e = np.frexp(ref)
    ulp = np.ldexp(L(1), np.maximum(e.astype(np.int64) - 53, -1074))
    return np.abs((got.astype(L) - ref) / ulp).astype(np.float64)


def _tape(name: str):
    return tapejit.record(getattr(np, name), 1.0)


@pytest.mark.skipif(not LONG_DOUBLE_OK, reason="long double is not more precise here")
@pytest.mark.parametrize(
    "name, case",
    [(f, c) for f in ("sin", "cos") for c in TRIG_SETS] + [("log", c) for c in LOG_SETS],
)
def test_accuracy_below_max_ulp(name, case):
    x = (TRIG_SETS if name != "log" else LOG_SETS)[case]
    got = _tape(name).forward(x[:, None])
    err = _ulp_error(got, getattr(np, name)(x.astype(L)))
    worst = int(np.argmax(err))
    assert err[worst] < MAX_ULP, f"{name}({x[worst]!r}) = {got[worst]!r}: {err[worst]:.3f} ulp"
    # and numpy (nearly correctly rounded) agrees to the last bit almost everywhere
    assert np.mean(got != getattr(np, name)(x)) < 0.1


@pytest.mark.skipif(not LONG_DOUBLE_OK, reason="long double is not more precise here")
@pytest.mark.parametrize("name, case", [(f, c) for f, sets in EXP_SETS.items() for c in sets])
def test_exp_family_accuracy(name, case):
    x = EXP_SETS[name][case]
    got = _tape(name).forward(x[:, None])
    with np.errstate(all="ignore"):
        err = _ulp_error(got, getattr(np, name)(x.astype(L)))
    worst = int(np.argmax(err))
    bound = MAX_ULP_TANH if name == "tanh" else MAX_ULP
    assert err[worst] < bound, f"{name}({x[worst]!r}) = {got[worst]!r}: {err[worst]:.3f} ulp"
    assert np.mean(got != getattr(np, name)(x)) < 0.25


def test_logaddexp_as_numpy():
    # numpy's formula (max + log1p(exp(-|a - b|))) with tapejit's exp and log1p: where
    # the result cancels to near zero both are far from the true result, so the
    # comparison is with numpy's, to an ulp of the larger operand.
    r = np.random.default_rng(7)
    a, b = r.uniform(-40, 40, (2, N))
    b[::5] = a[::5] + r.normal(0, 1e-3, len(a[::5]))
    got = tapejit.record(lambda x: np.logaddexp(x[0], x[1]), np.zeros(2)).forward(
        np.column_stack([a, b]))
    ref = np.logaddexp(a, b)
    scale = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    assert np.all(np.abs(got - ref) <= 2 * scale)
    assert np.mean(got != ref) < 0.05


SPECIAL = np.array([
    0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.2250738585072014e-308,
    2.225073858507201e-308, 1e-300, -1e-300, 7.450580596923828e-09, 2.0 ** -27 * 1.5,
    1.0, -1.0, 0.5, 2.0, math.pi, -math.pi, math.pi / 2, math.pi / 4, 1e22, -1e22,
    1.6e6, np.nextafter(1.6e6, np.inf), -np.nextafter(1.6e6, np.inf), 1e300, 1.7976931348623157e308,
    np.nextafter(1.0, 0.0), np.nextafter(1.0, 2.0), 0.7071067811865476, 1.4142135623730951,
    # exp, expm1, tanh and log1p: overflow and underflow limits, subnormal results, the
    # reductions' edges, tanh's and expm1's shortcuts, log1p at and beyond -1
    709.782712893384, 709.7827128933841, -745.1332191019411, -745.1332191019412, -708.4,
    -744.0, 22.0, -22.0, 22.000000000000004, 38.81622314453125, -38.81622314453125, -38.9,
    2.0 ** -28, -(2.0 ** -28), 2.0 ** -29, 2.0 ** -54, 2.0 ** -55, -0.9999999999999999,
    -1.0000000000000002, 0.34657359027997264, -0.34657359027997264, 1.0397207708399179,
    13.862943611198906, 38.816242111356935, 0.41421356237309503, -0.2928932188134524,
])


OWN = ["sin", "cos", "log", "exp", "expm1", "log1p", "tanh"]


@pytest.mark.parametrize("name", OWN)
def test_special_values_as_numpy(name):
    with np.errstate(all="ignore"):
        ref = getattr(np, name)(SPECIAL)
        tape = _tape(name)
        batched = tape.forward(SPECIAL[:, None])
        points = np.array([tape.forward(np.array([v])) for v in SPECIAL])
    for got in (batched, points):
        same_nan = np.isnan(got) == np.isnan(ref)
        assert same_nan.all(), SPECIAL[~same_nan]
        ok = ~np.isnan(ref)
        # infinities, zeros and their signs exactly; finite values within an ulp
        assert np.array_equal(np.signbit(got[ok]), np.signbit(ref[ok])), SPECIAL[ok]
        assert np.array_equal(np.isinf(got[ok]), np.isinf(ref[ok]))
        fin = ok & np.isfinite(ref)
        np.testing.assert_array_max_ulp(got[fin], ref[fin], maxulp=1)
    assert np.array_equal(batched, points, equal_nan=True)
    # beyond the reduction's limit the C library computes the value: numpy's bits
    big = (np.abs(SPECIAL) > 1.6e6) & (name in ("sin", "cos", "log"))
    assert np.array_equal(batched[big], ref[big], equal_nan=True)


_TAPES = {}


def _cached_tape(name: str):
    if name not in _TAPES:
        _TAPES[name] = _tape(name)
    return _TAPES[name]


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.floats(width=64), min_size=1, max_size=40))
def test_any_double_as_numpy_within_an_ulp(xs):
    x = np.array(xs)
    for name in OWN:
        tape = _cached_tape(name)
        with np.errstate(all="ignore"):
            ref = getattr(np, name)(x)
            got = tape.forward(x[:, None])
            one = np.array([tape.forward(v) for v in x[:3, None]])
        assert np.array_equal(one, got[:3], equal_nan=True)
        assert np.array_equal(np.isnan(got), np.isnan(ref)), x
        fin = np.isfinite(ref)
        assert np.array_equal(got[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
        np.testing.assert_array_max_ulp(got[fin], ref[fin], maxulp=2 if name == "tanh" else 1)


def _mixed_points(n: int) -> np.ndarray:
    """Points of f below whose trig arguments are beyond the reduction's limit in a few
    chunks only (so the fix-up loop runs in some chunks and not in others)."""
    r = np.random.default_rng(5)
    X = np.column_stack([r.uniform(-4, 4, n), r.uniform(-4, 4, n), r.uniform(0.1, 5, n)])
    big = r.choice(n, 7, replace=False)
    X[big, 0] = r.uniform(1.6e6, 1e9, 7) * r.choice([-1, 1], 7)
    X[big[:3], 1] = np.array([1e22, -3e7, 1.6000000000000002e6])
    X[r.choice(n, 5, replace=False), 1] = np.nan
    return X


def f(x):
    return np.sin(x[0]) * np.cos(x[1]) + np.log(x[2]) * np.sin(x[1])


def test_every_sweep_same_bits_batched_and_one_point():
    X = _mixed_points(5000)
    V = np.random.default_rng(6).normal(size=X.shape)
    tape = tapejit.record(f, np.ones(3))
    y, g = tape.value_and_grad(X)
    fw = tape.forward(X)
    jv = tape.jvp(X, V)
    hv = tape.hvp(X, V)
    for i in range(0, len(X), 7):
        x, v = X[i], V[i]
        yi, gi = tape.value_and_grad(x)
        assert np.array_equal([yi, fw[i], tape.forward(x)], [y[i]] * 3, equal_nan=True), i
        assert np.array_equal(gi, g[i], equal_nan=True), i
        assert np.array_equal(tape.jvp(x, v), jv[i], equal_nan=True), i
        assert np.array_equal(tape.hvp(x, v), hv[i], equal_nan=True), i
    # and the numbers are f's: numpy's value, the analytic gradient
    ok = ~np.isnan(X).any(axis=1)
    x0, x1, x2 = X[ok].T
    np.testing.assert_allclose(y[ok], np.sin(x0) * np.cos(x1) + np.log(x2) * np.sin(x1),
                               rtol=1e-13, atol=1e-15)
    grad = np.column_stack([np.cos(x0) * np.cos(x1),
                            -np.sin(x0) * np.sin(x1) + np.log(x2) * np.cos(x1),
                            np.sin(x1) / x2])
    np.testing.assert_allclose(g[ok], grad, rtol=1e-12, atol=1e-14)
    assert np.isnan(y[~ok]).all()


def test_tanh_series_is_its_taylor_series_rounded():
    # the coefficients of x**(2n - 1), n = 2..24: 2**2n (2**2n - 1) B_2n / (2n)!, with
    # the Bernoulli numbers from their recurrence, exactly, then rounded once
    bern = [Fraction(1)]
    for m in range(1, 51):
        bern.append(-sum(math.comb(m + 1, k) * bern[k] for k in range(m)) / (m + 1))
    want = tuple(float(Fraction(4**n * (4**n - 1)) * bern[2 * n] / math.factorial(2 * n))
                 for n in range(2, 25))
    assert libm._TANH_TAYLOR == want
    # the terms left out (alternating and falling: below the first of them) are below
    # 2e-17 of tanh, 0.15 ulp, at the series' end
    n, x = 25, libm._TANH_SERIES_MAX
    left = abs(Fraction(4**n * (4**n - 1)) * bern[2 * n] / math.factorial(2 * n))
    assert float(left) * x ** (2 * n - 1) / math.tanh(x) < 2e-17


def test_helpers_with_twins_are_defined_and_used_by_the_table():
    K = load_kernels()
    for name, (twin, guard) in TWINS.items():
        assert callable(getattr(K, name)) and callable(getattr(K, twin))
        assert "{x}" in guard
    used = {h for op in (BY_NAME[name] for name in OWN)
            for h in NUMPY if h + "(" in op.value + " ".join(op.partials)}
    assert used == set(NUMPY)
    # the twin agrees with its helper inside the range, the helper goes to libm outside
    for x in (0.3, -2.5, 1.5e6):
        assert K._sin_near(x) == K._sin(x) and K._cos_near(x) == K._cos(x)
    assert K._sin(1e22) == math.sin(1e22) and K._cos(-1e22) == math.cos(-1e22)


def test_reference_helpers_are_the_kernel_helpers():
    # The reference interpreter's helpers are the kernel files' own functions as Python
    # (no copy of their source): same results as the compiled ones, NaN and ties included.
    from tapejit._kernels.reference import reference_namespace

    K = load_kernels()
    ns = reference_namespace(math)
    args = [(x, y, z) for x in (-2.0, -0.0, 0.0, 0.5, math.nan, math.inf)
            for y in (-1.0, 0.0, 0.5) for z in (0.25, math.nan)]
    for x, y, z in args:
        for name, got in (("_sign", (x,)), ("_maximum", (x, y)), ("_minimum", (x, y)),
                          ("_clip", (x, y, z)), ("_logaddexp", (x, y)), ("_azmul", (x, y))):
            want = getattr(K, name)(*got)
            assert np.array_equal(ns[name](*got), want, equal_nan=True), (name, got)
    assert ns["_sin"] is np.sin and ns["math"] is math


def g(x):
    return (np.tanh(x[0]) * np.exp(x[1]) + np.expm1(x[1]) * np.log1p(x[2])
            + np.logaddexp(x[0], x[1]) + np.logaddexp(0.0, x[2]))


def test_exp_family_same_bits_batched_and_one_point():
    r = np.random.default_rng(8)
    X = np.column_stack([r.uniform(-30, 30, 3000), r.uniform(-5, 5, 3000),
                         r.uniform(-0.9, 40, 3000)])
    X[::97, 0] = X[::97, 1]  # logaddexp's tie
    X[::101, 1] = r.uniform(-800, 720, len(X[::101]))  # exp's limits
    X[::89, 2] = np.nan
    V = r.normal(size=X.shape)
    tape = tapejit.record(g, np.ones(3))
    with np.errstate(all="ignore"):
        y, gr = tape.value_and_grad(X)
        jv, hv = tape.jvp(X, V), tape.hvp(X, V)
        for i in range(0, len(X), 11):
            yi, gi = tape.value_and_grad(X[i])
            assert np.array_equal([yi, tape.forward(X[i])], [y[i]] * 2, equal_nan=True), i
            assert np.array_equal(gi, gr[i], equal_nan=True), i
            assert np.array_equal(tape.jvp(X[i], V[i]), jv[i], equal_nan=True), i
            assert np.array_equal(tape.hvp(X[i], V[i]), hv[i], equal_nan=True), i
    ok = np.isfinite(y)
    x0, x1, x2 = X[ok].T
    np.testing.assert_allclose(y[ok], g(X[ok].T), rtol=1e-13, atol=1e-13)
    s0 = 1 / (1 + np.exp(x1 - x0))
    grad = np.column_stack([(1 - np.tanh(x0) ** 2) * np.exp(x1) + s0,
                            np.tanh(x0) * np.exp(x1) + np.exp(x1) * np.log1p(x2) + 1 - s0,
                            np.expm1(x1) / (1 + x2) + 1 / (1 + np.exp(-x2))])
    np.testing.assert_allclose(gr[ok], grad, rtol=1e-12, atol=1e-12)


#: The op fingerprints of tapejit before its own exp, expm1, log1p and tanh (libm's then).
FINGERPRINTS_BEFORE = {"exp": "08052c06abcb5090", "expm1": "2423e4d5441b226f",
                       "log1p": "bda409a33233a373", "tanh": "7497e2fe82c65e17",
                       "logaddexp": "3c7052ece3e2bc43"}


def test_own_functions_keep_the_fingerprints_of_the_calls_they_replaced():
    import dataclasses

    from tapejit._ops import REPLACED_CALLS, op_fingerprint

    # tape files that use these ops, saved before, still load
    assert {n: op_fingerprint(BY_NAME[n]) for n in FINGERPRINTS_BEFORE} == FINGERPRINTS_BEFORE
    for name in ("exp", "expm1", "log1p", "tanh"):
        op = BY_NAME[name]
        assert op.value == f"_{name}(a)" and REPLACED_CALLS[f"_{name}"] == f"math.{name}"
        # the replaced call hashes as the own function; another formula does not
        same = dataclasses.replace(op, value=f"math.{name}(a)")
        assert op_fingerprint(same) == op_fingerprint(op)
        assert op_fingerprint(dataclasses.replace(op, value="_sin(a)")) != op_fingerprint(op)
