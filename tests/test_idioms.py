"""The idioms JAX and autograd users write, recorded as they are (issue #20).

``np.array([...])`` of traced values, ``np.asarray``, filling an array, ``int(x)`` as an
index, ndarray methods, empty arrays, keyword arguments through ``record`` and every
transform, ``has_aux`` and structured ``params=``. Every case compares numbers: values
with numpy, derivatives with analytic ones or central differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from _numpy_fn_check import fd_jacobian

import tapejit
from tapejit import BranchError, TracingError

X3 = np.array([0.3, 0.5, 0.7])


# -- np.array / np.asarray of traced values -----------------------------------------------
def polar(x):
    r, t = x[0], x[1]
    return np.array([r * np.cos(t), r * np.sin(t)])


def test_np_array_of_traced_scalars_is_the_output():
    x = np.array([1.5, 0.4])
    tape = tapejit.record(polar, x)
    np.testing.assert_array_equal(tape.forward(x), polar(x))
    r, t = x
    J = np.array([[np.cos(t), -r * np.sin(t)], [np.sin(t), r * np.cos(t)]])
    np.testing.assert_allclose(tape.jacobian(x), J, rtol=1e-15, atol=1e-15)
    X = np.array([[1.5, 0.4], [2.0, -1.0], [0.5, 3.0]])
    np.testing.assert_array_equal(tape.forward(X), np.array([polar(p) for p in X]))
    np.testing.assert_allclose(tapejit.jacobian(polar)(np.array([2.0, -1.0])),
                               fd_jacobian(polar, np.array([2.0, -1.0])), atol=1e-8)


def test_np_asarray_then_numpy_code():
    def f(x):
        x = np.asarray(x)  # autograd-style first line
        v = np.exp(x) * 2.0 + np.arctan2(x, 1.0 + x * x)  # object loops call x[i].exp()
        return np.sum(v**2)

    def ref(x):
        v = np.exp(x) * 2.0 + np.arctan2(x, 1.0 + x * x)
        return np.sum(v**2)

    v, g = tapejit.value_and_grad(f)(X3)
    assert v == pytest.approx(ref(X3), rel=1e-14)
    np.testing.assert_allclose(g, fd_jacobian(ref, X3)[0], rtol=1e-7)


def test_np_array_mixed_with_traced_arrays_and_constants():
    def f(x):
        v = np.array([x[0] ** 2, 1.0, x[2]])  # numbers and traced scalars
        m = np.array([x, 2.0 * x])  # rows of traced arrays: an object (2, 3) array
        return m @ v + np.r_[x[:1], x[1:]][:2]

    def ref(x):
        v = np.array([x[0] ** 2, 1.0, x[2]])
        return np.array([x, 2.0 * x]) @ v + x[:2]

    tape = tapejit.record(f, X3)
    np.testing.assert_allclose(tape.forward(X3), ref(X3), rtol=1e-15)
    np.testing.assert_allclose(tape.jacobian(X3), fd_jacobian(ref, X3), rtol=1e-7)


def test_float_dtype_conversion_still_refused():
    with pytest.raises(TracingError, match="dtype float64"):
        tapejit.record(lambda x: np.asarray(x, dtype=np.float64), X3)


def test_scipy_conversion_names_tapejit_replacement():
    import scipy.linalg

    L = np.tril(np.ones((3, 3))) + np.eye(3)
    with pytest.raises(TracingError, match=r"scipy\.linalg\.solve_triangular.*"
                                           r"tapejit\.linalg\.solve_triangular"):
        tapejit.record(lambda b: scipy.linalg.solve_triangular(L, b, lower=True), X3)


# -- filling arrays -----------------------------------------------------------------------
def test_filling_a_float_array_says_what_to_write():
    def f(x):
        y = np.zeros(3)
        y[0] = x[0] ** 2
        return y

    with pytest.raises(TracingError, match=r"np\.zeros_like\(x, shape=\(3,\)\)"):
        tapejit.record(f, X3)


def test_filling_a_traced_array_records():
    def f(x):
        y = np.zeros_like(x, shape=(3,))
        y[0] = x[0] ** 2
        y[2] = x[1] * x[2]
        y.flat[1] = np.sin(x[0])
        return y

    tape = tapejit.record(f, X3)
    a, b, c = X3
    np.testing.assert_array_equal(tape.forward(X3), [a * a, np.sin(a), b * c])
    np.testing.assert_allclose(
        tape.jacobian(X3), [[2 * a, 0, 0], [np.cos(a), 0, 0], [0, c, b]], rtol=1e-15)


# -- int(x) as an index: guarded ------------------------------------------------------------
def test_int_of_traced_value_is_guarded():
    table = np.array([10.0, 20.0, 30.0, 40.0])

    def f(x):
        return table[int(x[0])] * x[1]

    tape = tapejit.record(f, np.array([1.5, 2.0]))
    assert tape.n_guards == 2
    assert float(tape.forward(np.array([1.9, 3.0]))) == 60.0
    np.testing.assert_array_equal(tape.gradient(np.array([1.2, 3.0])), [0.0, 20.0])
    with pytest.raises(BranchError):
        tape.forward(np.array([2.0, 3.0]))  # int() gives 2 there
    with pytest.raises(BranchError):
        tape.forward(np.array([0.99, 3.0]))
    g = tapejit.grad(f)
    for x0, want in ((2.5, 30.0), (0.2, 10.0), (3.0, 40.0)):
        np.testing.assert_array_equal(g(np.array([x0, 1.0])), [0.0, want])


def test_int_of_negative_and_zero_truncates_like_python():
    for x0 in (-1.5, -0.5, 0.5, -2.0):
        tape = tapejit.record(lambda x: x * int(x), x0)
        assert float(tape.forward(np.array([x0]))) == x0 * int(x0)
        inside = x0 + (0.25 if x0 > 0 or x0 == int(x0) else -0.25) * np.sign(x0)
        if int(inside) == int(x0):
            assert float(tape.forward(np.array([inside]))) == inside * int(x0)


# -- ndarray methods and Python builtins ---------------------------------------------------
@pytest.mark.parametrize(
    ("method", "reference"),
    [
        (lambda m: m.clip(0.2, 0.65), lambda m: np.clip(m, 0.2, 0.65)),
        (lambda m: m.swapaxes(0, 1), lambda m: np.swapaxes(m, 0, 1)),
        (lambda m: m.repeat(2, axis=0), lambda m: np.repeat(m, 2, axis=0)),
        (lambda m: m.diagonal(), np.diagonal),
        (lambda m: m.std(axis=0), lambda m: np.std(m, axis=0)),
        (lambda m: m.var(), np.var),
        (lambda m: m.cumprod(axis=1), lambda m: np.cumprod(m, axis=1)),
        (lambda m: m.take([2, 0], axis=1), lambda m: np.take(m, [2, 0], axis=1)),
        (lambda m: m.trace(), np.trace),
        (lambda m: m.real + 0.0 * m.imag + m.conj(), lambda m: 2.0 * m),
        (lambda m: np.stack(list(m.flat)), np.ravel),
    ],
    ids=["clip", "swapaxes", "repeat", "diagonal", "std", "var", "cumprod", "take", "trace",
         "real-imag-conj", "flat"],
)
def test_array_methods(method, reference):
    m0 = np.array([[0.1, 0.5, 0.9], [0.3, 0.7, 0.4], [0.8, 0.25, 0.6]])
    tape = tapejit.record(method, m0)
    np.testing.assert_allclose(tape.forward(m0.ravel()), np.ravel(reference(m0)), rtol=1e-14)
    np.testing.assert_allclose(tape.jacobian(m0.ravel()),
                               fd_jacobian(lambda v: reference(v.reshape(3, 3)), m0.ravel()),
                               rtol=1e-6, atol=1e-8)


# -- empty arrays ---------------------------------------------------------------------------
def test_empty_arrays_record():
    tape = tapejit.record(lambda x: x[:0] * 2.0, np.ones(3))
    assert tape.output_shapes == ((0,),)
    assert tape.forward(np.array([1.0, 2.0, 3.0])).shape == (0,)
    assert tape.jacobian(np.ones(3)).shape == (0, 3)
    tape = tapejit.record(lambda x: np.sum(x[3:] ** 2) + x[0], np.ones(3))
    assert tape.value_and_grad(np.array([2.0, 5.0, 7.0])) == (2.0, pytest.approx([1, 0, 0]))
    tape = tapejit.record(lambda x, e: np.sum(x) + np.sum(e * e), np.ones(2), np.ones(0))
    v, g = tape.value_and_grad(np.array([1.0, 2.0]))
    assert v == 3.0
    np.testing.assert_array_equal(g, [1.0, 1.0])


# -- keyword arguments ----------------------------------------------------------------------
def loss(x, scale=2.0, *, shift=0.0, mode="sq"):
    d = x - shift
    return scale * np.sum(d * d if mode == "sq" else np.abs(d))


def test_keyword_arguments_through_transforms():
    for kw, ref in (({}, 2.0 * 2 * X3), ({"scale": 3.0}, 3.0 * 2 * X3),
                    ({"shift": 0.1, "scale": 0.5}, 0.5 * 2 * (X3 - 0.1)),
                    ({"mode": "abs", "shift": 1.0}, -2.0 * np.ones(3))):
        np.testing.assert_allclose(tapejit.grad(loss)(X3, **kw), ref, rtol=1e-15)
        v, g = tapejit.value_and_grad(loss)(X3, **kw)
        assert v == pytest.approx(loss(X3, **kw), rel=1e-15)
        np.testing.assert_allclose(g, ref, rtol=1e-15)
    H = tapejit.hessian(loss)(X3, scale=3.0, shift=0.2)
    np.testing.assert_allclose(H, 6.0 * np.eye(3), rtol=1e-15)
    hv = tapejit.hvp(loss)(X3, v=np.ones(3), scale=0.5)
    np.testing.assert_allclose(hv, np.ones(3), rtol=1e-15)
    J = tapejit.jacobian(lambda x, *, k: k * x**2)(X3, k=4.0)
    np.testing.assert_allclose(J, np.diag(8.0 * X3), rtol=1e-15)
    Xb = np.stack([X3, 2 * X3])
    np.testing.assert_allclose(tapejit.grad(loss, batched=True)(Xb, shift=0.5),
                               2.0 * 2 * (Xb - 0.5), rtol=1e-15)


def test_keyword_values_are_parameters_not_recorded_constants():
    def loss2(x, scale=2.0, *, shift=0.0):
        return loss(x, scale, shift=shift)

    g = tapejit.grad(loss2)
    g(X3, scale=3.0)
    g(X3, scale=5.0)
    assert g.tape_cache.n_records == 1  # a float keyword is a parameter of one tape
    np.testing.assert_allclose(g(X3, scale=5.0), 10.0 * X3, rtol=1e-15)
    tape = tapejit.record(loss, X3, scale=3.0, shift=0.25)
    assert (tape.n_inputs, tape.n_params) == (3, 2)
    v, gr = tape.value_and_grad(X3, params=[1.0, 0.0])
    assert v == pytest.approx(np.sum(X3**2), rel=1e-15)
    np.testing.assert_allclose(gr, 2 * X3, rtol=1e-15)


def test_wrong_keyword_names_the_function():
    with pytest.raises(TypeError, match=r"loss\(\).*'scal'"):
        tapejit.grad(loss)(X3, scal=3.0)
    with pytest.raises(TypeError, match=r"loss\(\).*'scal'"):
        tapejit.record(loss, X3, scal=3.0)


# -- has_aux ------------------------------------------------------------------------------------
def with_aux(x):
    r = x * x
    return np.sum(r), {"r": r, "mean": np.mean(x), "tag": "ok", "pair": (x[0], 2.0)}


def test_has_aux_grad_and_value_and_grad():
    g, aux = tapejit.grad(with_aux, has_aux=True)(X3)
    np.testing.assert_array_equal(g, 2 * X3)
    np.testing.assert_array_equal(aux["r"], X3 * X3)
    assert aux["mean"] == pytest.approx(np.mean(X3), rel=1e-15)
    assert aux["tag"] == "ok" and aux["pair"] == (X3[0], 2.0)
    (v, aux), g = tapejit.value_and_grad(with_aux, has_aux=True)(X3)
    assert v == pytest.approx(np.sum(X3 * X3), rel=1e-15)
    np.testing.assert_array_equal(g, 2 * X3)
    Xb = np.stack([X3, 3 * X3])
    g, aux = tapejit.grad(with_aux, has_aux=True, batched=True)(Xb)
    np.testing.assert_array_equal(g, 2 * Xb)
    np.testing.assert_array_equal(aux["r"], Xb * Xb)
    np.testing.assert_allclose(aux["mean"], Xb.mean(axis=1), rtol=1e-15)


def test_has_aux_jacobian():
    J, aux = tapejit.jacobian(lambda x: (x**3, np.sum(x)), has_aux=True)(X3)
    np.testing.assert_allclose(J, np.diag(3 * X3**2), rtol=1e-15)
    assert aux == pytest.approx(np.sum(X3), rel=1e-15)


def test_has_aux_errors_say_what_is_wrong():
    with pytest.raises(TypeError, match=r"has_aux=True: .* must return a pair"):
        tapejit.grad(lambda x: np.sum(x), has_aux=True)(X3)
    with pytest.raises(ValueError, match="pass has_aux=True"):
        tapejit.grad(lambda x: (np.sum(x), x))(X3)


# -- params= with the structure of the recorded arguments -------------------------------------
def test_params_as_the_recorded_arguments():
    rng = np.random.default_rng(0)
    X, y = rng.random((5, 2)), rng.random(5)

    def f(w, X, y):
        return np.sum((X @ w - y) ** 2)

    tape = tapejit.record(f, np.ones(2), X, y, argnums=0)
    w = np.array([0.5, -1.0])
    v, g = tape.value_and_grad(w, params=(X, y))
    assert v == pytest.approx(f(w, X, y), rel=1e-14)
    np.testing.assert_allclose(g, 2 * X.T @ (X @ w - y), rtol=1e-13)
    X2 = rng.random((5, 2))
    assert float(tape.forward(w, params=[X2, y])) == pytest.approx(f(w, X2, y), rel=1e-14)
    with pytest.raises(ValueError, match=r"15 parameter values in all.*\[10, 3\]"):
        tape.forward(w, params=(X, y[:3]))


# -- unsupported functions name a rewrite ----------------------------------------------------
def test_rewrites_are_for_functions_that_do_not_record():
    from tapejit._rewrites import REWRITES, SUBMODULE_REWRITES

    supported = set(tapejit.supported_functions())
    for name in REWRITES:
        assert callable(getattr(np, name)), name
        assert f"numpy.{name}" not in supported, f"{name} records now: drop its rewrite"
    for sub, name in SUBMODULE_REWRITES:
        assert f"numpy.{sub}.{name}" not in supported, name


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: np.unique(x), r"numpy\.unique: its result's shape depends on the values"
                                 r".*Instead: np\.sort"),
        (lambda x: np.nonzero(x > 0.4), r"numpy\.nonzero.*Instead: np\.where"),
        (lambda x: np.linalg.eig(x.reshape(1, 3) * x.reshape(3, 1)),
         r"numpy\.linalg\.eig:.*Instead: np\.linalg\.eigh"),
        (lambda x: np.fft.fft(x), r"numpy\.fft\.fft:.*no FFT"),
        (lambda x: np.count_nonzero(x), r"Instead: np\.sum\(x != 0\)"),
    ],
    ids=["unique", "nonzero", "eig", "fft", "count_nonzero"],
)
def test_unsupported_functions_name_their_rewrite(call, match):
    with pytest.raises(TracingError, match=match) as info:
        tapejit.record(call, X3)
    assert "supported_functions()" in str(info.value)


def test_supported_functions_lists_what_records():
    names = tapejit.supported_functions()
    assert names == sorted(set(names))
    for name in ("numpy.sin", "numpy.linalg.solve", "numpy.sort", "numpy.power",
                 "numpy.logical_and", "scipy.special.erf", "numpy.split"):
        assert name in names, name
    assert not any(n.startswith("numpy.fft") for n in names)
