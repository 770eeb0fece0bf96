"""Issue #20's first-hour list as a regression test.

Every snippet of the issue records with numpy's values and derivatives that agree with
central differences, or fails with the message the docs promise. The snippets are
written as a new user from JAX or autograd writes them.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sp
from _numpy_fn_check import fd_jacobian

import tapejit
from tapejit import TracingError

X = np.array([0.31, 0.57, 0.83, 0.44])  # no ties of round(x, 1), no kinks nearby
M = np.array([[0.9, 0.2, 0.4], [0.1, 0.7, 0.35], [0.6, 0.15, 0.5]])


def _same_as_numpy(f, x: np.ndarray) -> None:
    """``f`` records; the tape's values are numpy's at ``x`` and at a second point, and
    its Jacobian agrees with central differences there."""
    tape = tapejit.record(f, x)
    for point in (x, x * 1.1 + 0.01):
        want = np.ravel(np.asarray(f(point), dtype=np.float64))
        np.testing.assert_allclose(np.ravel(tape.forward(point.ravel())), want, rtol=1e-13,
                                   atol=1e-15)
        np.testing.assert_allclose(tape.jacobian(point.ravel()).reshape(want.size, -1),
                                   fd_jacobian(f, point), rtol=1e-6, atol=1e-8)


# -- idioms ----------------------------------------------------------------------------------
IDIOMS = {
    "np.array of traced": lambda x: np.array([x[0] * np.sin(x[1]), x[0] * np.cos(x[1])]),
    "np.asarray": lambda x: np.asarray(x) * 2.0,
    "np.r_": lambda x: np.r_[x, 2.0 * x[:2]],
    "np.c_": lambda x: np.c_[x, x**2],
    "np.linspace traced ends": lambda x: np.linspace(x[0], x[1], 5) * x[2],
    "int index": lambda x: np.arange(1.0, 5.0)[int(3 * x[0] + 0.5)] * x[1],
    "fill zeros_like": lambda x: _filled(x),
    "x.clip": lambda x: x.clip(0.4, 0.7),
    "x.swapaxes": lambda x: x.reshape(2, 2).swapaxes(0, 1),
    "x.repeat": lambda x: x.repeat(2),
    "x.diagonal": lambda x: x.reshape(2, 2).diagonal(),
    "x.std": lambda x: x.std(),
    "x.var": lambda x: x.var(),
    "x.round": lambda x: x.round(1) * x,
    "round()": lambda x: round(x[0] * 10.0) * x[1],
    "x.any guard": lambda x: x * 2.0 if (x > 0.5).any() else x,
    "x.all guard": lambda x: x * 2.0 if (x > 0).all() else x,
    "np.all guard": lambda x: x * 2.0 if np.all(x > 0) else x,
    "x.argmax index": lambda x: x[x.argmax()] * x[0],
    "x.flat": lambda x: x.flat[2] * x.flat[1],
    "x.real": lambda x: x.real * 2.0,
    "empty slice": lambda x: np.concatenate([x[:0] * 2.0, x]),
}


def _filled(x):
    y = np.zeros_like(x, shape=(3,))
    y[0] = x[0] ** 2
    y[1] = x[1] * x[2]
    return y


@pytest.mark.parametrize("name", list(IDIOMS))
def test_idiom_records(name):
    _same_as_numpy(IDIOMS[name], X)


def test_np_zeros_fill_says_what_to_write():
    def f(x):
        y = np.zeros(3)
        y[0] = x[0] ** 2
        return y

    with pytest.raises(TracingError, match=r"np\.zeros_like\(x, shape=\(3,\)\)"):
        tapejit.record(f, X)


def test_zero_size_recording():
    tape = tapejit.record(lambda x: x[:0] * 2.0, np.ones(3))
    assert tape.forward(np.ones(3)).shape == (0,)


# -- functions the issue listed as refused ----------------------------------------------
ELEMENTWISE = {
    "mod": lambda x: np.mod(x, 0.25), "remainder": lambda x: np.remainder(x, 0.25),
    "fmod": lambda x: np.fmod(x, 0.25), "floor_divide": lambda x: np.floor_divide(x, 0.25) * x,
    "%": lambda x: x % 0.25, "//": lambda x: (x // 0.25) * x,
    "fmax": lambda x: np.fmax(x, 0.5), "fmin": lambda x: np.fmin(x, 0.5),
    "logaddexp2": lambda x: np.logaddexp2(x, 0.5), "sinc": np.sinc,
    "heaviside": lambda x: np.heaviside(x - 0.5, 0.5) * x,
    "float_power": lambda x: np.float_power(x, 2.5),
    "round": lambda x: np.round(x, 1) * x, "trunc": lambda x: np.trunc(4 * x) * x,
    "nan_to_num": lambda x: np.nan_to_num(np.log(x - 0.3)),
    "isnan": lambda x: np.isnan(np.log(x - 0.5)) * x, "isfinite": lambda x: np.isfinite(x) * x,
    "real": lambda x: np.real(x) * 2.0, "imag": lambda x: np.imag(x) + x,
    "conj": lambda x: np.conj(x) * x, "angle": lambda x: np.angle(x - 0.5) + x,
}
SHAPE = {
    "split": lambda x: np.split(x, 2)[1] * 2.0, "array_split": lambda x: np.array_split(x, 3)[0],
    "hsplit": lambda x: np.hsplit(x, 2)[0], "vsplit": lambda x: np.vsplit(x.reshape(2, 2), 2)[1],
    "dsplit": lambda x: np.dsplit(x.reshape(1, 2, 2), 2)[0],
    "rollaxis": lambda x: np.rollaxis(x.reshape(2, 2), 1), "atleast_3d": np.atleast_3d,
    "rot90": lambda x: np.rot90(x.reshape(2, 2)), "flipud": np.flipud,
    "fliplr": lambda x: np.fliplr(x.reshape(2, 2)), "diag from vector": np.diag,
    "diag of matrix": lambda x: np.diag(x.reshape(2, 2)), "pad": lambda x: np.pad(x, 2),
    "take": lambda x: np.take(x, [3, 0, 0]), "meshgrid": lambda x: np.meshgrid(x, x[:2])[0],
    "constant mask": lambda x: x[np.array([True, False, True, True])],
}
ORDERING = {
    "sort": np.sort, "partition": lambda x: np.partition(x, 1), "median": np.median,
    "percentile": lambda x: np.percentile(x, 30.0),
    "argmax index": lambda x: x[np.argmax(x)], "argmin index": lambda x: x[np.argmin(x)],
    "select": lambda x: np.select([x < 0.4, x < 0.7], [x, 2 * x], 3 * x),
}
OTHER = {
    "polyval": lambda x: np.polyval(x, 0.7), "interp": lambda x: np.interp(x, [0.0, 0.5, 1.0],
                                                                         [1.0, 3.0, 2.0]),
    "trapezoid": lambda x: np.trapezoid(x**2), "gradient": np.gradient,
    "ufunc.outer": lambda x: np.multiply.outer(x, x[:2]),
    "logaddexp.reduce": lambda x: np.logaddexp.reduce(x),
    "sum where": lambda x: np.sum(x, where=np.array([True, False, True, True])),
}
SPECIAL = {
    "expit": sp.expit, "logit": sp.logit, "erf": sp.erf, "erfc": sp.erfc,
    "gammaln": lambda x: sp.gammaln(x + 1.0), "digamma": lambda x: sp.digamma(x + 1.0),
    "xlogy": lambda x: sp.xlogy(x, x + 1.0),
}


@pytest.mark.parametrize("table, name", [(t, n) for t in ("ELEMENTWISE", "SHAPE", "ORDERING",
                                                           "OTHER", "SPECIAL")
                                          for n in globals()[t]])
def test_listed_function_records(table, name):
    _same_as_numpy(globals()[table][name], X)


@pytest.mark.parametrize("name", ["logsumexp", "softmax", "log_softmax"])
def test_scipy_special_python_functions_name_the_tapejit_equivalent(name):
    import tapejit.special

    with pytest.raises(TracingError, match=rf"scipy\.special\.{name}.*tapejit\.special\.{name}"):
        tapejit.record(getattr(sp, name), X)
    _same_as_numpy(getattr(tapejit.special, name), X)


# -- transforms -----------------------------------------------------------------------------
def test_keyword_arguments_and_has_aux():
    def g(x, scale=2.0):
        return scale * np.sum(x**2)

    np.testing.assert_allclose(tapejit.grad(g)(X, scale=3.0), 6.0 * X, rtol=1e-15)
    tape = tapejit.record(g, X, scale=3.0)
    assert float(tape.forward(X, params=[3.0])) == pytest.approx(g(X, 3.0), rel=1e-15)
    g_aux, aux = tapejit.grad(lambda x: (np.sum(x**2), x), has_aux=True)(X)
    np.testing.assert_array_equal(g_aux, 2 * X)
    np.testing.assert_array_equal(aux, X)


def test_params_with_the_recorded_structure():
    Xd, yd = M[:, :2], M[:, 2]
    tape = tapejit.record(lambda w, A, y: np.sum((A @ w - y) ** 2), np.ones(2), Xd, yd,
                          argnums=0)
    w = np.array([0.5, -0.25])
    assert float(tape.forward(w, params=(Xd, yd))) == pytest.approx(
        np.sum((Xd @ w - yd) ** 2), rel=1e-14)


def test_nested_grad():
    def inner(y):
        return np.sum(y**3)

    outer = tapejit.grad(lambda x: np.sum(tapejit.grad(inner)(x) ** 2))
    np.testing.assert_allclose(outer(X), 4 * 9 * X**3, rtol=1e-13)  # d/dx sum (3x^2)^2


# -- error text ------------------------------------------------------------------------------
def test_unsupported_function_names_a_rewrite():
    with pytest.raises(TracingError, match=r"numpy\.unique.*Instead: np\.sort"):
        tapejit.record(np.unique, X)


def test_reduction_where_message_has_no_internal_names():
    with pytest.raises(TracingError) as info:
        tapejit.record(lambda x: np.sum(x, where=x > 0.4), X)
    assert "Tracer" not in str(info.value)


def test_multistart_success_means_converged():
    from tapejit.optimize import multistart

    res = multistart(lambda x: np.sum((x - 1.0) ** 2), np.zeros((3, 2)), steps=3)
    assert not res.success and "maximum number of steps" in res.message
