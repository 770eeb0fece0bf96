"""Truth reductions, polynomials, interpolation, integration, differences, ufunc methods
and reductions with ``where=`` on traced values (``tapejit/_numpy_misc.py``, the ufunc
methods of ``tapejit/_numpy_funcs.py``): values against numpy, derivatives in every
sweep against central differences."""

import numpy as np
import pytest
from _numpy_fn_check import check_all_sweeps, check_hessian

import tapejit
from tapejit import BranchError, TracingError

RNG = np.random.default_rng(22)
X0 = RNG.standard_normal(12)
X = X0 + 0.3 * RNG.standard_normal((4, 12))
W4 = np.array([1, 0, 1, 1], dtype=bool)
XP = np.array([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])
FP = np.array([1.0, 3.0, -2.0, 0.5, 0.25, 1.0])


def m(x):
    return x.reshape(3, 4)


CASES = {
    "all_where": lambda x: np.where(np.all(m(x) > -3.0, axis=0), x[:4], x[4:8] ** 2),
    "any_where": lambda x: np.where(np.any(m(x) > 5.0, axis=1, keepdims=True), m(x), -m(x)),
    "all_any_where": lambda x: (np.all(m(x) > 0.0, axis=1, where=W4) * x[:3]
                                + np.any(m(x) > 1.0, where=m(X0 < 0)) * x[3]),
    "ptp": lambda x: np.ptp(m(x), axis=1) + np.ptp(x),
    "polyval": lambda x: np.polyval(x[:4], x[4:]),
    "polyval_constant_coefficients": lambda x: np.polyval([1.0, -2.0, 3.0, 0.5], x),
    "interp_traced_fp": lambda x: np.interp(np.linspace(-1, 6, 9), np.arange(6.0), x[:6]),
    "interp_traced_xp_fp": lambda x: np.interp([0.5, 1.7, 3.1], np.cumsum(np.exp(x[:6])),
                                               x[6:]),
    "trapezoid": lambda x: np.trapezoid(m(x), axis=0),
    "trapezoid_dx": lambda x: np.trapezoid(m(x), dx=0.3),
    "trapezoid_x": lambda x: np.trapezoid(x[:6], x=np.cumsum(np.exp(x[6:]))),
    "gradient": lambda x: np.gradient(x),
    "gradient_spacing": lambda x: np.gradient(x, 0.25),
    "gradient_coordinates": lambda x: np.stack(np.gradient(m(x), 0.5, [0.0, 1.0, 3.0, 3.5])),
    "gradient_edge2": lambda x: np.stack(np.gradient(m(x), [0.0, 0.1, 0.4], 2.0,
                                                     edge_order=2)),
    "gradient_axis": lambda x: np.gradient(m(x), axis=1, edge_order=2),
    "subtract_outer": lambda x: np.subtract.outer(x[:3], m(x)[:2, :2]),
    "multiply_outer": lambda x: np.multiply.outer(x[:4], x[4:7]),
    "arctan2_outer": lambda x: np.arctan2.outer(x[:3], x[3:6]),
    "logaddexp_reduce": lambda x: np.logaddexp.reduce(m(x), axis=1),
    "logaddexp_reduce_all": lambda x: np.logaddexp.reduce(x, axis=None, initial=0.5),
    "logaddexp_reduce_where": lambda x: np.logaddexp.reduce(m(x), axis=1, where=W4,
                                                            keepdims=True),
    "add_reduce": lambda x: np.add.reduce(m(x), axis=0) * np.multiply.reduce(x[:5]),
    "max_reduce": lambda x: np.maximum.reduce(m(x), axis=1) - np.minimum.reduce(m(x))[:3],
    "add_accumulate": lambda x: np.add.accumulate(m(x), axis=1),
    "multiply_accumulate": lambda x: np.multiply.accumulate(x),
    "maximum_accumulate": lambda x: np.maximum.accumulate(x) * np.arange(12.0),
    "minimum_accumulate": lambda x: np.minimum.accumulate(m(x), axis=0),
    "logaddexp_accumulate": lambda x: np.logaddexp.accumulate(m(x), axis=1),
    "sum_where": lambda x: np.sum(m(x), axis=1, where=W4),
    "prod_where": lambda x: np.prod(m(x), axis=0, where=m(X0 > 0)),
    "mean_where": lambda x: np.mean(m(x), axis=1, where=W4),
    "max_where": lambda x: np.max(m(x), axis=0, where=W4[:3, None], initial=-1.0),
    "min_where": lambda x: np.min(m(x), where=m(X0 > 0), initial=5.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_and_derivatives(name, central_diff):
    rtol = 1e-12 if "logaddexp_reduce" in name or "where" in name else 1e-13
    guarded = name == "interp_traced_xp_fp"  # near X0: the same intervals
    points = X0 + 1e-3 * (X - X0) if guarded else X
    tape = check_all_sweeps(central_diff, CASES[name], X0, points, rtol=rtol)
    assert tape.n_guards == (1 if guarded else 0)


def test_hessian(central_diff):
    def f(x):
        return np.concatenate([np.polyval(x[:3], x[3:6]), np.gradient(x ** 3),
                               [np.trapezoid(x ** 2, x=np.cumsum(np.exp(x)))],
                               np.logaddexp.reduce(m(x), axis=0),
                               np.interp([0.3, 2.2], np.arange(6.0), x[:6] ** 2)])

    check_hessian(central_diff, f, X0, X)


# -- np.all / np.any: traced truth values ---------------------------------------------
def test_if_all_records_one_guard():
    def f(x):
        return np.sum(x ** 2) if np.all(x > 0) else np.sum(x)

    pos = np.abs(X0) + 0.1
    tape = tapejit.record(f, pos)
    assert tape.n_guards == 1
    np.testing.assert_allclose(tape.forward(pos + 1.0), np.sum((pos + 1.0) ** 2))
    with pytest.raises(BranchError):
        tape.forward(X0)
    tape = tapejit.record(lambda x: x[0] if np.any(x > 2.0) else -x[0], X0)
    assert tape.n_guards == 1 and tape.forward(X0) == -X0[0]
    with pytest.raises(BranchError):
        tape.forward(X0 + 5.0)


def test_all_any_values_match_numpy():
    arrays = [X0, np.zeros(12), np.r_[np.zeros(11), np.nan], np.r_[1.0, np.zeros(11)]]
    for a in arrays:
        for fn in (np.all, np.any):
            for axis, keepdims in ((None, False), (0, False), (1, True)):
                tape = tapejit.record(
                    lambda x, fn=fn, axis=axis, keep=keepdims: fn(m(x), axis=axis,
                                                                  keepdims=keep) * 1.0, a)
                want = fn(m(a), axis=axis, keepdims=keepdims)
                np.testing.assert_array_equal(tape.forward(a), np.ravel(want) * 1.0)


# -- interp with traced x: the interval is guarded -------------------------------------
def test_interp_traced_x_in_every_interval(central_diff):
    """Elements below, inside each interval, on a knot, on the last knot and above."""
    x0 = np.array([-4.0, -2.0, -1.0, 0.2, 0.7, 3.0, 4.0, 5.5])
    f = lambda x: np.interp(x, XP, FP, left=-7.0)  # noqa: E731
    near = x0 + np.where(np.isin(x0, XP), 0.0, 1e-3 * RNG.standard_normal((3, 8)))
    tape = tapejit.record(f, x0)
    assert tape.n_guards == 1
    P = np.vstack([x0, near])
    np.testing.assert_array_equal(tape.forward(P), [f(p) for p in P])
    off = np.array([not np.isin(v, XP) for v in x0])  # away from knots: differentiable
    J = central_diff(lambda Q: np.array([f(q) for q in Q]), P)
    got = tape.jacobian(P)
    np.testing.assert_allclose(got[:, off][:, :, off], J[:, off][:, :, off], atol=1e-7)
    on = np.flatnonzero(np.isin(x0, XP[:-1]))  # on an inner knot: the right slope
    for k in on:
        j = np.searchsorted(XP, x0[k])
        slope = (FP[j + 1] - FP[j]) / (XP[j + 1] - XP[j])
        assert got[0, k, k] == slope
    moved = x0.copy()
    moved[3] = 0.6  # into the next interval
    with pytest.raises(BranchError):
        tape.forward(moved)
    moved = x0.copy()
    moved[6] = 3.9999  # below the last knot
    with pytest.raises(BranchError):
        tape.forward(moved)


def test_interp_errors():
    with pytest.raises(TracingError, match="period"):
        tapejit.record(lambda x: np.interp(x, XP, FP, period=2.0), X0)
    with pytest.raises(TracingError, match="NaN"):
        tapejit.record(lambda x: np.interp(x, XP, FP), np.r_[X0, np.nan])


# -- error texts -------------------------------------------------------------------------
@pytest.mark.parametrize("f", [
    lambda x: np.sum(x, where=x > 0),
    lambda x: np.sum(np.ones(12), where=x > 0),
    lambda x: np.logaddexp.reduce(x, where=x > 0),
    lambda x: np.max(x, where=x > 0, initial=0.0),
])
def test_traced_where_mask_is_refused_in_words(f):
    with pytest.raises(TracingError, match="where= mask must be a constant") as info:
        tapejit.record(f, X0)
    assert "Tracer(" not in str(info.value)


def test_unsupported_ufunc_method_names_the_supported_ones():
    with pytest.raises(TracingError, match="accumulate can be traced for add, ") as info:
        tapejit.record(lambda x: np.subtract.accumulate(x), X0)
    assert "Tracer(" not in str(info.value)
