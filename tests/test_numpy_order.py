"""Ordering on traced values (``tapejit/_numpy_order.py``): sorting networks give numpy's
sorted values at every point (no guard), ``argmax``/``argmin``/``argsort`` are guarded;
derivatives in every sweep against central differences."""

import itertools

import numpy as np
import pytest
from _numpy_fn_check import check_all_sweeps, check_hessian

import tapejit
from tapejit import BranchError, TracingError
from tapejit._numpy_order import MAX_SORT, network

RNG = np.random.default_rng(21)
X0 = RNG.standard_normal(12)
X = RNG.standard_normal((5, 12))  # other orders than X0's


def m(x):
    return x.reshape(3, 4)


def _sorted_in_place(a):
    a = a.copy()
    a.sort(axis=0)
    return a


SORTED = {
    "sort": lambda x: np.sort(x) * np.arange(1.0, 13.0),
    "sort_axis0": lambda x: np.sort(m(x), axis=0) ** 2,
    "sort_axis1": lambda x: np.sort(m(x), axis=-1) * np.arange(12.0).reshape(3, 4),
    "sort_none": lambda x: np.sort(m(x), axis=None) * np.arange(12.0),
    "sort_stable": lambda x: np.sort(x[:7], kind="stable"),
    "sort_method": lambda x: _sorted_in_place(m(x)),
    "partition_kth": lambda x: np.partition(x, 4)[4] + np.partition(m(x), (0, 3), axis=1)[:, 3],
    "median_even": lambda x: np.median(x),
    "median_odd": lambda x: np.median(x[:11]),
    "median_axis": lambda x: (np.median(m(x), axis=1)
                              * np.median(m(x), axis=0, keepdims=True)[0, :3]),
    "median_axes": lambda x: np.median(x.reshape(2, 3, 2), axis=(0, 2)),
    "percentile": lambda x: np.percentile(x, [0, 10, 50, 77.7, 100]),
    "quantile_axis": lambda x: np.quantile(m(x), [0.3, 0.62], axis=1, keepdims=True),
    "quantile_scalar": lambda x: np.quantile(x, 0.9) * np.quantile(m(x), 0.25, axis=0),
}


@pytest.mark.parametrize("name", list(SORTED))
def test_sorted_values_and_derivatives_at_every_order(name, central_diff):
    """The tape, recorded at X0, gives numpy's values and derivatives at points sorted
    in other orders, and records no guard."""
    tape = check_all_sweeps(central_diff, SORTED[name], X0, X)
    assert tape.n_guards == 0


def test_sort_hessian(central_diff):
    def f(x):
        return np.concatenate([np.sort(x) * x, np.percentile(m(x), [20, 70], axis=0).ravel(),
                               [np.median(x ** 2)]])

    check_hessian(central_diff, f, X0, X)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 31, 64, 100])
def test_network_sorts_every_input(n):
    """Batcher's network with the missing elements as +inf: every 0/1 input (the 0-1
    principle) for small n, random permutations with ties for larger ones; pairs of a
    layer are disjoint."""
    layers = network(n)
    if n <= 13:
        data = np.array(list(itertools.product([0, 1], repeat=n)), dtype=float)
    else:
        data = np.floor(RNG.uniform(0, n / 3, (500, n)))
    y = data.copy()
    for lo, hi in layers:
        assert len(np.unique(np.concatenate([lo, hi]))) == 2 * lo.size
        a, b = y[:, lo].copy(), y[:, hi].copy()
        y[:, lo], y[:, hi] = np.minimum(a, b), np.maximum(a, b)
    np.testing.assert_array_equal(y, np.sort(data, axis=1))


def test_ties_split_the_derivative():
    """At a tie each compared element gets 1/2 (the min/max ops' convention)."""
    tape = tapejit.record(lambda x: np.sort(x), np.array([2.0, 1.0, 3.0]))
    J = tape.jacobian(np.array([1.0, 1.0, 3.0]))
    np.testing.assert_array_equal(J, [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(tape.forward(np.array([3.0, 1.0, 2.0])), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("n", [2, 5, 8, 13])
def test_nan_sorts_last_as_in_numpy(n):
    """np.sort puts NaN last, after +inf, as numpy does (no guard: the NaN count decides
    per point); median and percentile are NaN, as numpy's."""
    sort = tapejit.record(lambda x: np.sort(x), np.arange(float(n)))
    part = tapejit.record(lambda x: np.partition(x, 0), np.arange(float(n)))
    med = tapejit.record(lambda x: np.r_[np.median(x), np.percentile(x, [5, 60])],
                         np.arange(float(n)))
    assert sort.n_guards == 0
    for k in range(n):
        x = RNG.standard_normal(n)
        x[k] = np.nan
        x[(k + 1) % n] = np.inf if n > 2 else x[(k + 1) % n]
        if n > 4:
            x[(k + 3) % n] = np.nan
        np.testing.assert_array_equal(sort.forward(x), np.sort(x))
        np.testing.assert_array_equal(part.forward(x), np.sort(x))
        np.testing.assert_array_equal(med.forward(x), np.r_[np.median(x),
                                                            np.percentile(x, [5, 60])])
    X = RNG.standard_normal((6, n))
    X[::2, 0] = np.nan
    np.testing.assert_array_equal(sort.forward(X), np.sort(X, axis=1))
    g = sort.vjp(X[1], np.arange(1.0, n + 1))[1]  # no NaN in row 1: the plain network
    np.testing.assert_array_equal(g, np.arange(1.0, n + 1)[np.argsort(np.argsort(X[1]))])


def test_long_axis_is_refused_with_the_limit():
    with pytest.raises(TracingError, match=f"limited to {MAX_SORT}") as info:
        tapejit.record(lambda x: np.sort(x), np.zeros(MAX_SORT + 1))
    assert "Tracer(" not in str(info.value)


@pytest.mark.parametrize("method", ["nearest", "hazen"])
def test_other_quantile_methods_refused(method):
    with pytest.raises(TracingError, match="method='linear'"):
        tapejit.record(lambda x: np.quantile(x, 0.3, method=method), X0)


# -- argmax, argmin, argsort: guards ----------------------------------------------------
ARG = {
    "argmax": (lambda x: x[np.argmax(x)] * x[0], lambda x: np.argmax(x)),
    "argmin_axis": (lambda x: np.take_along_axis(m(x), np.argmin(m(x), axis=1)[:, None], 1),
                    lambda x: np.argmin(m(x), axis=1)),
    "argmax_keepdims": (
        lambda x: np.take_along_axis(m(x), np.argmax(m(x), 0, keepdims=True), 0),
        lambda x: np.argmax(m(x), 0, keepdims=True)),
    "argsort": (lambda x: x[np.argsort(x)] * np.arange(12.0), lambda x: np.argsort(x)),
    "argsort_axis": (lambda x: np.take_along_axis(m(x), np.argsort(m(x), axis=0), 0) ** 2,
                     lambda x: np.argsort(m(x), axis=0)),
    "method": (lambda x: x[x.argmax()] - x[x.argmin()], lambda x: (x.argmax(), x.argmin())),
}


@pytest.mark.parametrize("name", list(ARG))
def test_integer_answers_are_guarded(name, central_diff):
    f, index = ARG[name]
    # within 1e-4 of X0 (its closest pair is 3e-3 apart): the same answer as at X0
    near = X0 + 1e-4 * np.random.default_rng(5).uniform(-1.0, 1.0, (4, 12))
    tape = check_all_sweeps(central_diff, f, X0, near)
    assert tape.n_guards == (2 if name == "method" else 1)  # one per integer answer
    same = np.array([np.array_equal(index(p), index(X0)) for p in X])
    assert not same.all()
    _, ok = tape.forward(X, check="mask")
    np.testing.assert_array_equal(ok, same)
    with pytest.raises(BranchError):
        tape.forward(X[~same][0])


def test_argmax_first_occurrence_and_nan():
    """numpy's first occurrence: a tie moving the answer to an earlier element is caught;
    a NaN recorded as the answer holds only while it is the first NaN."""
    tape = tapejit.record(lambda x: x * 0.0 + np.argmax(x), np.array([1.0, 3.0, 3.0]))
    assert tape.forward(np.array([0.0, 5.0, 5.0]))[0] == 1.0
    with pytest.raises(BranchError):
        tape.forward(np.array([5.0, 5.0, 5.0]))  # now 0
    tape = tapejit.record(lambda x: x * 0.0 + np.argmax(x), np.array([1.0, 3.0, 2.0]))
    with pytest.raises(BranchError):
        tape.forward(np.array([1.0, 3.0, np.nan]))  # numpy: 2
    nan = tapejit.record(lambda x: x[0] * 0.0 + np.argmax(x), np.array([1.0, np.nan, 2.0]))
    assert nan.forward(np.array([7.0, np.nan, 9.0])) == 1.0
    with pytest.raises(BranchError):
        nan.forward(np.array([np.nan, np.nan, 9.0]))
    with pytest.raises(BranchError):
        nan.forward(np.array([1.0, 2.0, 9.0]))
