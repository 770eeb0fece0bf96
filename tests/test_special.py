"""scipy.special on traced values: its ufuncs (ops of the table) and ``tapejit.special``.

* ``expit``, ``logit``, ``erf``, ``erfc``, ``gammaln``, ``digamma``, ``xlogy``,
  ``xlog1py``: values against scipy over wide ranges (stated tolerances), gradients
  against JAX's ``jax.scipy.special`` (skipped where the peers' Python is missing) and
  central differences, and second derivatives against scipy's ``polygamma`` and closed
  forms, one point and batched;
* ``tapejit.special.logsumexp`` (``axis``, ``b``, ``keepdims``, ``return_sign``),
  ``softmax``, ``log_softmax``: values against scipy, gradients and Hessians against
  closed forms, JAX and differences; no guard, so one tape serves points whose maximum
  sits elsewhere;
* ``tapejit.special.polygamma`` at orders 0 to 6 against scipy's, and its derivative
  (the next order);
* the error for a scipy.special ufunc tapejit does not record names scipy.special;
* ``import tapejit`` and differentiating numpy code do not import scipy.special, and
  its ufuncs record when the user imports it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sps
from _op_helpers import jax_gradients

import tapejit
from tapejit import special

RNG = np.random.default_rng(20)


def _tape(fn, arity=1):
    return tapejit.record(fn, *([0.5] * arity))


def _check_batched_equals_points(tape, X):
    v, g = tape.value_and_grad(X)
    H = tape.hessian(X)
    for i in range(0, len(X), max(1, len(X) // 7)):
        vi, gi = tape.value_and_grad(X[i])
        assert vi == v[i] or (np.isnan(vi) and np.isnan(v[i]))
        np.testing.assert_array_equal(gi, g[i])
        np.testing.assert_array_equal(tape.hessian(X[i]), H[i])
    return v, g, H


# ---------------------------------------------------------------------------------------
# the ufuncs: values
# ---------------------------------------------------------------------------------------
UNARY = [
    # function, sample range, relative tolerance of the value against scipy
    (sps.expit, (-40.0, 40.0), 0.0),  # scipy's formula with the C library's exp: same bits
    (sps.logit, (0.0, 1.0), 0.0),  # scipy's formula, the same bits
    (sps.erf, (-6.0, 6.0), 1e-15),  # the C library's erf; scipy has its own (cephes)
    (sps.erfc, (-6.0, 26.0), 1e-13),  # down to 1e-295: 6e-14 apart there
    (sps.digamma, (0.01, 60.0), 0.0),  # cephes' psi, ported: the same bits for x > 0
]


@pytest.mark.parametrize(("fn", "lims", "rtol"), UNARY, ids=lambda v: getattr(v, "__name__", ""))
def test_unary_values_match_scipy(fn, lims, rtol):
    tape = _tape(fn)
    x = np.concatenate([RNG.uniform(*lims, 3000), [0.0, -0.0, np.inf, -np.inf, np.nan]])
    got, ref = tape.forward(x[:, None]), fn(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    if rtol == 0.0:
        np.testing.assert_array_equal(got[ok], ref[ok])
    else:
        np.testing.assert_allclose(got[ok], ref[ok], rtol=rtol, atol=0)


def test_gammaln_values_match_scipy():
    tape = _tape(sps.gammaln)
    x = np.concatenate([RNG.uniform(0.001, 100.0, 3000), RNG.uniform(-20.0, 0.0, 1000),
                        [1.0, 2.0, 0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 1e300]])
    got, ref = tape.forward(x[:, None]), sps.gammaln(x)
    np.testing.assert_array_equal(got[~np.isfinite(ref)], ref[~np.isfinite(ref)])
    ok = np.isfinite(ref)
    # the C library's lgamma against cephes': relative 1e-14, absolute 1e-15 near zeros
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-14, atol=1e-15)


def test_digamma_negative_arguments_and_poles():
    tape = _tape(sps.digamma)
    x = np.concatenate([RNG.uniform(-30.0, 0.0, 3000), -np.arange(0.0, 12.0),
                        [-0.0, 1e-300, -1e-300, 1e17, 1e300]])
    got, ref = tape.forward(x[:, None]), sps.digamma(x)
    np.testing.assert_array_equal(got[~np.isfinite(ref)], ref[~np.isfinite(ref)])
    # scipy evaluates near its negative root -0.504 by a series around it; elsewhere both
    # are cephes' psi
    ok = np.isfinite(ref) & (np.abs(x + 0.504083) > 0.3)
    np.testing.assert_array_equal(got[ok], ref[ok])
    near = np.isfinite(ref) & ~ok
    np.testing.assert_allclose(got[near], ref[near], rtol=0, atol=5e-15)


@pytest.mark.parametrize("fn", [sps.xlogy, sps.xlog1py])
def test_xlogy_values_match_scipy(fn):
    tape = _tape(fn, 2)
    special_values = [0.0, -0.0, 1.0, -1.0, -2.0, 0.5, np.inf, -np.inf, np.nan]
    X = np.array([(a, b) for a in special_values for b in special_values])
    X = np.vstack([X, np.column_stack([RNG.uniform(-5, 5, 2000), RNG.uniform(-1, 9, 2000)])])
    X[::5, 0] = 0.0
    with np.errstate(all="ignore"):
        ref = fn(X[:, 0], X[:, 1])
    got = tape.forward(X)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-15, atol=0)  # scipy's own log1p


# ---------------------------------------------------------------------------------------
# the ufuncs: derivatives
# ---------------------------------------------------------------------------------------
def test_digamma_derivatives_are_polygamma():
    tape = _tape(sps.digamma)
    x = np.concatenate([RNG.uniform(0.001, 50.0, 2000), [1.0, 2.0, 10.0, 19.5, 20.0, 1e6],
                        RNG.uniform(-20.0, 0.0, 500)])
    x = x[np.abs(x - np.round(x)) > 1e-3 * (x < 0)]  # not at the poles
    _, g, H = _check_batched_equals_points(tape, x[:, None])
    tri, tetra = sps.polygamma(1, x), sps.polygamma(2, x)
    # trigamma: tapejit's own series, within 2e-15 of scipy's relative
    np.testing.assert_allclose(g[:, 0], tri, rtol=2e-15)
    pos = x > 0
    # tetragamma: 1e-14 relative for x > 0; for x < 0 it crosses zero (the reflection's
    # cancellation), held to the scale of its terms
    np.testing.assert_allclose(H[pos, 0, 0], tetra[pos], rtol=1e-14)
    np.testing.assert_allclose(H[~pos, 0, 0], tetra[~pos], rtol=1e-12,
                               atol=1e-13 * np.max(np.abs(tetra[~pos])))


def test_gammaln_derivatives_are_digamma_and_trigamma():
    tape = _tape(sps.gammaln)
    x = np.concatenate([RNG.uniform(0.01, 40.0, 1000), [1.0, 2.0, 1.4616321449683623],
                        RNG.uniform(-9.9, -0.1, 300)])
    x = x[np.abs(x - np.round(x)) > 1e-3 * (x < 0)]
    _, g, H = _check_batched_equals_points(tape, x[:, None])
    np.testing.assert_allclose(g[:, 0], sps.digamma(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(H[:, 0, 0], sps.polygamma(1, x), rtol=2e-15)


@pytest.mark.parametrize(
    ("fn", "jax_expr", "lims"),
    [
        # JAX's r (1 - r) loses digits above 6 (test_expit_derivatives_keep_precision_...)
        (sps.expit, "jss.expit(x0)", (-6.0, 6.0)),
        (sps.logit, "jss.logit(x0)", (0.01, 0.99)),
        (sps.erf, "jss.erf(x0)", (-4.0, 4.0)),
        (sps.erfc, "jss.erfc(x0)", (-4.0, 4.0)),
        (sps.gammaln, "jss.gammaln(x0)", (0.05, 30.0)),
        (sps.digamma, "jss.digamma(x0)", (0.05, 30.0)),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_unary_gradients_agree_with_jax_and_differences(fn, jax_expr, lims, central_diff):
    tape = _tape(fn)
    x = RNG.uniform(*lims, size=(60, 1))
    _, g, H = _check_batched_equals_points(tape, x)
    np.testing.assert_allclose(g, central_diff(lambda Z: fn(Z[:, 0]), x, h=1e-7),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(H[:, 0, :], central_diff(tape.gradient, x, h=1e-7)[:, 0, :],
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(g, jax_gradients(jax_expr, x), rtol=1e-12, atol=1e-300)


@pytest.mark.kernels  # the same bits one point and batched, a property of the kernels
def test_expit_derivatives_keep_precision_in_the_tails():
    tape = _tape(sps.expit)
    x = np.array([-700.0, -40.0, -1.0, 0.0, 1.0, 40.0, 700.0])
    g = tape.gradient(x[:, None])[:, 0]
    H = tape.hessian(x[:, None])[:, 0, 0]
    e = np.exp(-np.abs(x))
    np.testing.assert_allclose(g, e / (1 + e) ** 2, rtol=1e-15)  # not 0 at x = 40
    assert g[5] > 0.0 and g[1] == g[5]
    np.testing.assert_allclose(H, -np.sign(x) * e * (1 - e) / (1 + e) ** 3, rtol=1e-14)


@pytest.mark.parametrize(("fn", "expr"), [(sps.xlogy, "jss.xlogy(x0, x1)"),
                                          (sps.xlog1py, "jss.xlog1py(x0, x1)")])
def test_xlogy_derivatives_and_the_zero_convention(fn, expr, central_diff):
    tape = _tape(fn, 2)
    X = np.column_stack([RNG.uniform(-3, 3, 50), RNG.uniform(0.2, 4.0, 50)])
    X[::5, 0] = 0.0
    _, g, H = _check_batched_equals_points(tape, X)
    np.testing.assert_allclose(g, central_diff(lambda Z: fn(Z[:, 0], Z[:, 1]), X, h=1e-7),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g, jax_gradients(expr, X), rtol=1e-14)
    log = np.log if fn is sps.xlogy else np.log1p
    shift = 0.0 if fn is sps.xlogy else 1.0
    y = X[:, 1] + shift
    np.testing.assert_allclose(H, np.stack([
        np.column_stack([0.0 * y, 1.0 / y]), np.column_stack([1.0 / y, -X[:, 0] / y**2])],
        axis=1), rtol=1e-15)
    # at a = 0: the value is 0 for every b, so d/db is 0, also at b = 0 (JAX: NaN there)
    v, g0 = tape.value_and_grad(np.array([0.0, -shift]))
    assert v == 0.0
    assert g0[1] == 0.0
    assert g0[0] == log(-shift) == -np.inf  # the true derivative in a at b = 0 (-1)


def test_unsupported_scipy_ufunc_names_scipy_special():
    with pytest.raises(tapejit.TracingError, match=r"scipy\.special\.ndtr\b") as info:
        tapejit.record(lambda x: sps.ndtr(x), 0.5)
    assert "numpy.ndtr" not in str(info.value)
    with pytest.raises(tapejit.TracingError, match=r"numpy\.frexp\b"):
        tapejit.record(lambda x: np.frexp(x)[0], 0.5)


# ---------------------------------------------------------------------------------------
# scipy.special is imported by the user, not by tapejit
# ---------------------------------------------------------------------------------------
_LAZY_SCIPY = r"""
import sys
import numpy as np, tapejit
from tapejit._tracer import Tracer

tape = tapejit.record(lambda x: np.sum(np.sin(x) ** 2), np.ones(3))
tape.value_and_grad(np.ones(3))
tape.listing(), tapejit.supported_functions(), dir(tapejit.special), Tracer.erf
assert "scipy.special" not in sys.modules, "tapejit imported scipy.special"

import scipy.special  # first use in this process, after tapejit's import
x = np.array([0.3, 1.7, 2.5])
f = lambda x: np.sum(scipy.special.erf(x) * x + scipy.special.gammaln(x))
tape = tapejit.record(f, x)
names = [op.name for op in tapejit.OPS if op.code in tape.opcodes.tolist()]
v, g = tape.value_and_grad(x)
t = tapejit.record(lambda x: x[0].erf() + x[1].psi(), x)  # numpy's object-loop methods
from tapejit.special import erf, psi
print(repr((names, float(v), g.tolist(), float(t.forward(x)), erf is scipy.special.erf,
            psi is scipy.special.digamma)))
"""


def test_scipy_special_is_imported_at_its_first_use_only():
    # a fresh process: scipy.special is imported here, by this module
    res = subprocess.run([sys.executable, "-c", _LAZY_SCIPY], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TAPEJIT_QUIET": "1"})
    assert res.returncode == 0, res.stderr
    names, v, g, t, same_erf, same_psi = eval(res.stdout.strip().splitlines()[-1])
    x = np.array([0.3, 1.7, 2.5])
    assert {"erf", "gammaln"} <= set(names)
    assert v == pytest.approx(np.sum(sps.erf(x) * x + sps.gammaln(x)), rel=1e-14)
    np.testing.assert_allclose(
        g, sps.erf(x) + x * 2.0 / np.sqrt(np.pi) * np.exp(-x * x) + sps.digamma(x),
        rtol=1e-13)
    assert t == pytest.approx(sps.erf(0.3) + sps.digamma(1.7), rel=1e-15)
    assert same_erf and same_psi


def test_scipy_references_are_named_as_their_ufuncs():
    # names derived from a row before scipy.special is imported (object-loop methods,
    # supported_functions) are those of the ufunc
    from tapejit._ops import ScipySpecial

    refs = [u for op in tapejit.OPS for u in (op.numpy, *op.aliases)
            if isinstance(u, ScipySpecial)]
    assert refs
    for ref in refs:
        func = ref.resolve()
        assert func is getattr(sps, ref.name)
        assert not isinstance(func, np.ufunc) or func.__name__ == ref.name, ref


# ---------------------------------------------------------------------------------------
# polygamma: every order, digamma's and gammaln's derivatives
# ---------------------------------------------------------------------------------------
def test_polygamma_values_match_scipy_at_every_order():
    tape = tapejit.record(special.polygamma, 1.0, 0.5)
    x = np.concatenate([RNG.uniform(0.001, 60.0, 2000), [1.0, 2.0, 20.0, 1e6],
                        RNG.uniform(-15.0, 0.0, 500)])
    x = x[np.abs(x - np.round(x)) > 1e-3 * (x < 0)]  # not at the poles
    pos = x > 0
    for n in range(7):
        got, ref = tape.forward(np.column_stack([np.full(x.size, float(n)), x])), \
            sps.polygamma(n, x)
        # for x > 0 the shifted asymptotic series, within a few ulp of scipy's zeta; for
        # x < 0 the reflection, held to the scale of its terms as it crosses zero
        np.testing.assert_allclose(got[pos], ref[pos], rtol=3e-15 * max(1, n), atol=0)
        np.testing.assert_allclose(got[~pos], ref[~pos], rtol=1e-12,
                                   atol=2e-15 * np.max(np.abs(ref[~pos])))
    # orders that are not non-negative integers give NaN, as scipy
    bad = tape.forward(np.array([[1.5, 2.0], [-1.0, 2.0], [np.nan, 2.0], [np.inf, 2.0],
                                 [171.0, 2.0], [1e18, 2.0]]))  # above 170 too: no huge loop
    assert np.isnan(bad).all() and np.isnan(sps.polygamma(np.array([1.5, -1.0]), 2.0)).all()
    # poles at x = 0, -1, -2, ... and -inf: scipy's (-1)**(n + 1) inf; 0 at inf
    P = np.array([[n, x] for n in (1.0, 2.0, 3.0) for x in (-2.0, -0.0, 0.0, -np.inf)])
    np.testing.assert_array_equal(tape.forward(P), sps.polygamma(P[:, 0], P[:, 1]))
    assert tape.forward(np.array([[1.0, np.inf], [2.0, np.inf]])).tolist() == [0.0, 0.0]


def test_polygamma_derivative_is_the_next_order(central_diff):
    tape = tapejit.record(special.polygamma, 2.0, 0.5)
    X = np.column_stack([np.floor(RNG.uniform(0.0, 5.0, 200)), RNG.uniform(0.2, 8.0, 200)])
    _, g, H = _check_batched_equals_points(tape, X)
    np.testing.assert_array_equal(g[:, 0], 0.0)  # none in the order
    np.testing.assert_allclose(g[:, 1], sps.polygamma(X[:, 0] + 1, X[:, 1]), rtol=5e-15)
    np.testing.assert_allclose(H[:, 1, 1], sps.polygamma(X[:, 0] + 2, X[:, 1]), rtol=1e-14)
    np.testing.assert_allclose(
        g[:, 1], central_diff(lambda Z: sps.polygamma(Z[:, 0], Z[:, 1]), X, fixed=(0,))[:, 1],
        rtol=1e-6)


def test_scipy_polygamma_names_tapejit_special():
    with pytest.raises(tapejit.TracingError, match=r"tapejit\.special\.polygamma"):
        tapejit.record(lambda x: sps.polygamma(1, x), 0.5)


# ---------------------------------------------------------------------------------------
# tapejit.special: logsumexp, softmax, log_softmax
# ---------------------------------------------------------------------------------------
def test_elementwise_functions_are_reexported():
    for name in ("expit", "logit", "erf", "erfc", "gammaln", "digamma", "psi", "xlogy",
                 "xlog1py"):
        assert getattr(special, name) is getattr(sps, name)
    tape = tapejit.record(lambda x: special.expit(x) + special.gammaln(x), 1.5)
    assert tape.forward(np.array([1.5])) == pytest.approx(sps.expit(1.5) + sps.gammaln(1.5),
                                                          rel=1e-15)


ARRAYS = [
    np.array([1.0, 2.0, 3.0]),
    np.array([0.0, -40.0]),  # a dominant term: scipy's log1p keeps the 4e-18
    np.array([5.0, 5.0, 1.0]),  # a tie at the maximum
    np.array([np.inf, 1.0]),
    np.array([-np.inf, -np.inf]),
    np.array([np.nan, 1.0]),
    np.array([800.0, -800.0, 799.0]),
]


@pytest.mark.parametrize("a", ARRAYS, ids=range(len(ARRAYS)))
def test_logsumexp_values_match_scipy(a):
    tape = tapejit.record(special.logsumexp, a)
    ref = sps.logsumexp(a)
    got = tape.forward(a)
    assert got == pytest.approx(ref, rel=4e-16, nan_ok=True) or got == ref
    assert special.logsumexp(a) == pytest.approx(ref, rel=4e-16, nan_ok=True) or \
        special.logsumexp(a) == ref  # plain arrays too


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_axis_and_keepdims(axis, keepdims):
    a = RNG.normal(size=(3, 4, 2)) * 20
    tape = tapejit.record(lambda x: special.logsumexp(x, axis=axis, keepdims=keepdims),
                          np.zeros(a.shape))
    ref = sps.logsumexp(a, axis=axis, keepdims=keepdims)
    assert np.shape(special.logsumexp(a, axis=axis, keepdims=keepdims)) == np.shape(ref)
    got = tape.forward(a.ravel())  # a tape's inputs and outputs are flat
    np.testing.assert_allclose(got, np.ravel(ref), rtol=1e-15)
    X = np.stack([a.ravel(), -a.ravel(), 0.5 * a.ravel()])
    np.testing.assert_allclose(tape.forward(X), np.stack(
        [np.ravel(sps.logsumexp(s * a, axis=axis, keepdims=keepdims)) for s in (1, -1, 0.5)]
    ).reshape(3, -1).squeeze(), rtol=1e-15)


def test_logsumexp_with_weights_and_sign():
    a = np.array([1.0, 2.0, 0.5, 3.0])
    b = np.array([1.0, -3.0, 0.0, 0.5])
    # constant weights, a zero weight ignoring an infinite element (as scipy)
    a_inf = a.copy()
    a_inf[2] = np.inf
    tape = tapejit.record(lambda x: special.logsumexp(x, b=b), a)
    np.testing.assert_allclose(tape.forward(a_inf), sps.logsumexp(a_inf, b=b), rtol=1e-15)
    tape = tapejit.record(lambda x: np.stack(special.logsumexp(x, b=b, return_sign=True)), a)
    np.testing.assert_allclose(tape.forward(a_inf), sps.logsumexp(a_inf, b=b, return_sign=True),
                               rtol=1e-15)
    # traced weights: value and gradient in both
    tape = tapejit.record(lambda x, w: special.logsumexp(x, b=w, return_sign=True)[0], a, b)
    X = np.concatenate([a, np.abs(b) + 0.1])
    v, g = tape.value_and_grad(X)
    w = np.abs(b) + 0.1
    assert v == pytest.approx(sps.logsumexp(a, b=w), rel=1e-15)
    s = np.sum(w * np.exp(a))
    np.testing.assert_allclose(g, np.concatenate([w * np.exp(a) / s, np.exp(a) / s]),
                               rtol=1e-14)
    # negative sum: NaN without return_sign, the sign with it (scipy's)
    neg = tapejit.record(lambda x: special.logsumexp(x, b=-np.ones(4)), a)
    assert np.isnan(neg.forward(a))
    signed = tapejit.record(lambda x: np.stack(special.logsumexp(x, b=-np.ones(4),
                                                                 return_sign=True)), a)
    np.testing.assert_allclose(signed.forward(a), sps.logsumexp(a, b=-np.ones(4),
                                                                return_sign=True), rtol=1e-15)


def test_logsumexp_gradient_hessian_without_guards(central_diff):
    n = 4
    tape = tapejit.record(special.logsumexp, np.zeros(n))
    X = RNG.normal(size=(200, n)) * 5
    X[:3] = [[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, -1.0, 0.0], [800.0, 0.0, 0.0, 0.0]]  # ties
    _, g, H = _check_batched_equals_points(tape, X)  # the maximum moves: no BranchError
    P = np.exp(X - sps.logsumexp(X, axis=1, keepdims=True))
    np.testing.assert_allclose(g, P, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(H, np.einsum("ni,ij->nij", P, np.eye(n)) -
                               np.einsum("ni,nj->nij", P, P), rtol=1e-13, atol=2e-15)
    np.testing.assert_allclose(g[3:], central_diff(lambda Z: sps.logsumexp(Z, axis=1), X[3:]),
                               rtol=1e-6, atol=1e-9)
    expr = "jss.logsumexp(jnp.stack([x0, x1, x2, x3]))"
    np.testing.assert_allclose(g[:20], jax_gradients(expr, X[:20]), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_softmax_and_log_softmax(axis, central_diff):
    shape = (2, 3)
    f = tapejit.record(lambda x: special.softmax(x.reshape(shape), axis=axis).ravel(),
                       np.zeros(6))
    lf = tapejit.record(lambda x: special.log_softmax(x.reshape(shape), axis=axis).ravel(),
                        np.zeros(6))
    X = RNG.normal(size=(30, 6)) * 10
    X[0] = 2.0  # every element tied
    ref = np.array([sps.softmax(x.reshape(shape), axis=axis).ravel() for x in X])
    lref = np.array([sps.log_softmax(x.reshape(shape), axis=axis).ravel() for x in X])
    np.testing.assert_allclose(f.forward(X), ref, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(lf.forward(X), lref, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(f.forward(X[4]), f.forward(X)[4])
    J = f.jacobian(X)
    np.testing.assert_allclose(J, central_diff(
        lambda Z: np.array([sps.softmax(z.reshape(shape), axis=axis).ravel() for z in Z]), X),
        rtol=1e-5, atol=1e-8)
    LJ = lf.jacobian(X)
    np.testing.assert_allclose(LJ, central_diff(
        lambda Z: np.array([sps.log_softmax(z.reshape(shape), axis=axis).ravel() for z in Z]),
        X), rtol=1e-5, atol=1e-7)
    # log_softmax's Jacobian is I - softmax within each group: softmax's is diag(p) - p p^T
    np.testing.assert_allclose(J, np.einsum("nij,ni->nij", LJ, ref), rtol=1e-13, atol=1e-15)


def test_log_softmax_is_finite_where_softmax_underflows():
    x = np.array([0.0, -1000.0, 1000.0])
    tape = tapejit.record(special.log_softmax, x)
    np.testing.assert_allclose(tape.forward(x), sps.log_softmax(x), rtol=1e-15)
    np.testing.assert_allclose(tape.jacobian(x), np.eye(3) - sps.softmax(x)[None, :],
                               atol=1e-300)
