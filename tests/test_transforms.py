"""``tapejit.grad`` and ``tapejit.value_and_grad``: argnums, argument kinds, tape reuse.

Every test defines its own function, so the per-function tape caches do not interact.
"""

from __future__ import annotations

import numpy as np
import pytest

import tapejit


def _fd_scalar(f, x, h=1e-6):
    """Central differences of a scalar function of one array (or float) argument."""
    x = np.asarray(x, dtype=np.float64)
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[idx]))
        xp, xm = x.copy(), x.copy()
        xp[idx] += step
        xm[idx] -= step
        g[idx] = (f(xp) - f(xm)) / (xp[idx] - xm[idx])
    return g


# ---------------------------------------------------------------------------------------
# argnums
# ---------------------------------------------------------------------------------------
def test_grad_argnums_int_default_zero():
    def f(x, y):
        return np.sum(x**2 * y)

    x, y = np.array([1.0, -2.0, 3.0]), np.array([0.5, 1.5, -1.0])
    g = tapejit.grad(f)(x, y)
    assert isinstance(g, np.ndarray) and g.shape == (3,)
    np.testing.assert_allclose(g, 2.0 * x * y, rtol=1e-15)
    gy = tapejit.grad(f, argnums=1)(x, y)
    np.testing.assert_allclose(gy, x**2, rtol=1e-15)


def test_grad_argnums_tuple():
    def f(x, s, m):
        return np.sum(np.sin(x) * s) + np.sum(m @ x)

    x = np.array([0.3, -0.7])
    m = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    gx, gs, gm = tapejit.grad(f, argnums=(0, 1, 2))(x, 1.5, m)
    assert gx.shape == (2,) and gm.shape == (3, 2)
    assert isinstance(gs, float)
    np.testing.assert_allclose(gx, 1.5 * np.cos(x) + m.sum(axis=0), rtol=1e-15)
    assert gs == pytest.approx(np.sum(np.sin(x)), rel=1e-15)
    np.testing.assert_allclose(gm, np.tile(x, (3, 1)), rtol=1e-15)
    # order follows argnums
    gm2, gx2 = tapejit.grad(f, argnums=(2, 0))(x, 1.5, m)
    np.testing.assert_array_equal(gm2, gm)
    np.testing.assert_array_equal(gx2, gx)
    # a one-element tuple still gives a tuple
    (only,) = tapejit.grad(f, argnums=(1,))(x, 1.5, m)
    assert only == gs


def test_negative_argnums():
    def f(a, b):
        return a * b**3

    assert tapejit.grad(f, argnums=-1)(2.0, 3.0) == pytest.approx(54.0, rel=1e-15)


def test_value_and_grad_returns_value_and_gradient():
    def f(x):
        return np.log(np.sum(np.exp(x)))

    x = np.array([0.1, 0.2, -0.4, 1.0])
    v, g = tapejit.value_and_grad(f)(x)
    assert isinstance(v, float)
    assert v == pytest.approx(np.log(np.sum(np.exp(x))), rel=1e-15)
    np.testing.assert_allclose(g, np.exp(x) / np.sum(np.exp(x)), rtol=1e-14)
    np.testing.assert_allclose(g, _fd_scalar(f, x), rtol=1e-7)


def test_value_and_grad_argnums_tuple_scalars():
    def f(a, b):
        return a * b**2 + np.sin(a)

    v, (ga, gb) = tapejit.value_and_grad(f, argnums=(0, 1))(2.0, 3.0)
    assert v == pytest.approx(18.0 + np.sin(2.0), rel=1e-15)
    assert ga == pytest.approx(9.0 + np.cos(2.0), rel=1e-15)
    assert gb == 12.0
    assert isinstance(ga, float) and isinstance(gb, float)


def test_scalar_and_array_arguments():
    def f(s, m):
        return s * np.sum(m * m)

    m = np.arange(6.0).reshape(2, 3)
    assert tapejit.grad(f)(2.0, m) == pytest.approx(np.sum(m * m), rel=1e-15)
    gm = tapejit.grad(f, argnums=1)(2.0, m)
    assert gm.shape == (2, 3)
    np.testing.assert_array_equal(gm, 4.0 * m)


def test_integer_and_list_arguments_are_differentiated_as_floats():
    def f(x):
        return np.sum(x**2)

    g = tapejit.grad(f)
    assert g(3) == 6.0
    np.testing.assert_array_equal(g([1, 2]), [2.0, 4.0])
    np.testing.assert_array_equal(g([1.5, 2.5]), [3.0, 5.0])


def test_bad_argnums_raise():
    def f(a, b):
        return a * b

    with pytest.raises(ValueError, match=r"argnums entry 2 is not an argument index for 2 args"):
        tapejit.grad(f, argnums=2)(1.0, 2.0)
    with pytest.raises(ValueError, match=r"repeats an argument"):
        tapejit.grad(f, argnums=(0, 0))(1.0, 2.0)


def test_multi_output_function_raises():
    def f(x):
        return x * 2.0

    msg = r"value_and_grad needs f to return one scalar; it returned an array of shape \(3,\)"
    with pytest.raises(ValueError, match=msg):
        tapejit.grad(f)(np.ones(3))


def test_bad_argument_types_raise():
    def f(x, opts):
        return np.sum(x)

    with pytest.raises(TypeError, match=r"argument 1 \(dict\) is neither an array nor hashable"):
        tapejit.grad(f)(np.ones(2), {"a": 1})
    with pytest.raises(TypeError, match=r"argument 0 .*complex"):
        tapejit.grad(f)(np.ones(2) * 1j, None)


def test_wraps_the_function():
    def my_loss(x):
        """Docstring of my_loss."""
        return np.sum(x)

    g = tapejit.grad(my_loss)
    vg = tapejit.value_and_grad(my_loss)
    assert g.__name__ == "my_loss" and vg.__name__ == "my_loss"
    assert g.__doc__ == "Docstring of my_loss."


# ---------------------------------------------------------------------------------------
# tape reuse
# ---------------------------------------------------------------------------------------
def test_tape_reused_for_same_shapes():
    def f(x):
        return np.sum(np.sin(x) * x)

    g = tapejit.grad(f)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.normal(size=4)
        np.testing.assert_allclose(g(x), np.cos(x) * x + np.sin(x), rtol=1e-14)
    assert g.tape_cache.n_records == 1
    x6 = rng.normal(size=6)
    np.testing.assert_allclose(g(x6), np.cos(x6) * x6 + np.sin(x6), rtol=1e-14)
    assert g.tape_cache.n_records == 2
    g(rng.normal(size=4))  # the first shape again: its tape is still cached
    g(rng.normal(size=6))
    assert g.tape_cache.n_records == 2
    g(rng.normal(size=(2, 3)))  # same size, new shape
    assert g.tape_cache.n_records == 3
    g(0.5)  # a scalar
    assert g.tape_cache.n_records == 4


def test_tape_cache_records_each_signature_once_across_transforms():
    def f(x):
        return np.sum(x**3)

    g = tapejit.grad(f)
    vg = tapejit.value_and_grad(f)
    x = np.array([1.0, 2.0])
    np.testing.assert_array_equal(g(x), [3.0, 12.0])
    v, gx = vg(x)
    assert v == 9.0
    np.testing.assert_array_equal(gx, [3.0, 12.0])
    assert g.tape_cache is vg.tape_cache
    assert g.tape_cache.n_records == 1


def test_different_argnums_record_different_tapes():
    def f(a, b):
        return a * np.sin(b)

    ga = tapejit.grad(f, argnums=0)
    gb = tapejit.grad(f, argnums=1)
    assert ga(2.0, 0.5) == pytest.approx(np.sin(0.5), rel=1e-15)
    assert gb(2.0, 0.5) == pytest.approx(2.0 * np.cos(0.5), rel=1e-15)
    assert ga(3.0, 0.25) == pytest.approx(np.sin(0.25), rel=1e-15)
    assert gb(3.0, 0.25) == pytest.approx(3.0 * np.cos(0.25), rel=1e-15)
    assert ga.tape_cache.n_records == 2  # one per argnums, shared cache


# ---------------------------------------------------------------------------------------
# parameters: non-differentiated float/array arguments
# ---------------------------------------------------------------------------------------
def test_float_and_array_arguments_become_params():
    def loss(w, xs, ys, scale):
        return scale * np.sum((np.sin(w * xs) - ys) ** 2)

    vg = tapejit.value_and_grad(loss)
    rng = np.random.default_rng(5)
    for k in range(4):
        xs = rng.uniform(-2, 2, 20)
        ys = rng.uniform(-1, 1, 20)
        w = 0.5 + 0.3 * k
        scale = 1.0 + k
        v, g = vg(w, xs, ys, scale)
        r = np.sin(w * xs) - ys
        assert v == pytest.approx(scale * np.sum(r**2), rel=1e-13)
        assert g == pytest.approx(scale * np.sum(2.0 * r * np.cos(w * xs) * xs), rel=1e-12)
    assert vg.tape_cache.n_records == 1
    (tape,) = vg.tape_cache.tapes
    assert tape.n_inputs == 1
    assert tape.n_params == 20 + 20 + 1


def test_param_values_are_not_frozen_at_record_time():
    def f(x, a):
        return np.sum(a * x**2)

    g = tapejit.grad(f)
    x = np.array([1.0, 2.0])
    np.testing.assert_array_equal(g(x, np.array([1.0, 1.0])), [2.0, 4.0])
    np.testing.assert_array_equal(g(x, np.array([3.0, -1.0])), [6.0, -4.0])
    np.testing.assert_array_equal(g(x, 0.5), [1.0, 2.0])  # new shape of a: new tape
    assert g.tape_cache.n_records == 2


def test_integer_array_param():
    def f(x, counts):
        return np.sum(x * counts)

    g = tapejit.grad(f)
    np.testing.assert_array_equal(g(np.ones(3), np.array([1, 2, 3])), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(g(np.ones(3), np.array([4, 5, 6])), [4.0, 5.0, 6.0])
    assert g.tape_cache.n_records == 1


# ---------------------------------------------------------------------------------------
# static arguments: ints, bools, strings, None
# ---------------------------------------------------------------------------------------
def test_static_int_argument():
    def f(x, n):
        return np.sum(x**n)

    g = tapejit.grad(f)
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(g(x, 3), 3.0 * x**2, rtol=1e-15)
    np.testing.assert_allclose(g(x * 2, 3), 3.0 * (2 * x) ** 2, rtol=1e-15)
    assert g.tape_cache.n_records == 1
    np.testing.assert_allclose(g(x, 4), 4.0 * x**3, rtol=1e-15)  # new static value
    assert g.tape_cache.n_records == 2
    np.testing.assert_allclose(g(x, 3), 3.0 * x**2, rtol=1e-15)
    assert g.tape_cache.n_records == 2


def test_static_int_drives_python_control_flow():
    def f(x, n_steps):
        y = x
        for _ in range(n_steps):  # a loop over a static int is fine
            y = np.sin(y)
        return np.sum(y)

    g = tapejit.grad(f)
    x = np.array([0.4, -0.2])
    np.testing.assert_allclose(g(x, 1), np.cos(x), rtol=1e-15)
    np.testing.assert_allclose(g(x, 2), np.cos(np.sin(x)) * np.cos(x), rtol=1e-15)


def test_static_string_bool_and_none_arguments():
    def f(x, kind, squared, extra):
        y = np.sin(x) if kind == "sin" else np.cos(x)
        if squared:
            y = y * y
        if extra is not None:
            y = y + extra
        return np.sum(y)

    g = tapejit.grad(f)
    x = np.array([0.3, 0.9])
    np.testing.assert_allclose(g(x, "sin", False, None), np.cos(x), rtol=1e-15)
    np.testing.assert_allclose(g(x, "cos", False, None), -np.sin(x), rtol=1e-15)
    np.testing.assert_allclose(g(x, "sin", True, None), 2 * np.sin(x) * np.cos(x), rtol=1e-15)
    np.testing.assert_allclose(g(x, "sin", False, 2.0), np.cos(x), rtol=1e-15)
    assert g.tape_cache.n_records == 4


def test_float_versus_int_argument_kinds():
    def f(x, a):
        return np.sum(x) * a

    g = tapejit.grad(f)
    x = np.ones(2)
    np.testing.assert_array_equal(g(x, 2.0), [2.0, 2.0])  # float: a parameter
    np.testing.assert_array_equal(g(x, 3.0), [3.0, 3.0])
    assert g.tape_cache.n_records == 1
    np.testing.assert_array_equal(g(x, 2), [2.0, 2.0])  # int: static
    assert g.tape_cache.n_records == 2


def test_grad_matches_central_differences_for_a_generic_function():
    def f(w, x):
        h = np.tanh(x @ w[:6].reshape(3, 2) + w[6:8])
        return np.sum((h @ w[8:10] - 0.3) ** 2) + 0.01 * np.sum(w * w)

    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 3))
    g = tapejit.grad(f)
    for _ in range(3):
        w = rng.normal(size=10)
        np.testing.assert_allclose(g(w, x), _fd_scalar(lambda v: f(v, x), w), rtol=1e-6, atol=1e-8)
    assert g.tape_cache.n_records == 1


def test_bad_dtypes_rejected_also_when_the_tape_is_cached():
    # record() refuses complex, bool and str arguments; a later call with the same shape
    # must not slip them through by casting to float64 (imaginary part dropped, "1" -> 1.0)
    def f(x):
        return np.sum(x * x)

    g = tapejit.grad(f)
    np.testing.assert_array_equal(g(np.ones(2)), [2.0, 2.0])
    with pytest.raises(TypeError, match=r"argument 0 .*complex"):
        g(np.array([1.0 + 1.0j, 1.0]))
    with pytest.raises(TypeError, match=r"argument 0 .*bool"):
        g(np.array([True, False]))
    with pytest.raises(TypeError, match=r"argument 0 .*(str|<U)"):
        g(np.array(["1.0", "2.0"]))


# ---------------------------------------------------------------------------------------
# Python branches: one tape per branch pattern, reused
# ---------------------------------------------------------------------------------------
def test_branching_function_records_one_tape_per_branch():
    def f(x):
        if x[0] > 0:
            return np.sum(x**2)
        return np.sum(np.sin(x))

    g = tapejit.grad(f)
    xp, xn = np.array([1.0, 2.0]), np.array([-1.0, 2.0])
    np.testing.assert_array_equal(g(xp), 2.0 * xp)
    np.testing.assert_allclose(g(xn), np.cos(xn), rtol=1e-15)
    assert g.tape_cache.n_records == 2
    for _ in range(3):
        np.testing.assert_array_equal(g(xp * 3.0), 6.0 * xp)
        np.testing.assert_allclose(g(xn * 2.0), np.cos(2.0 * xn), rtol=1e-15)
    assert g.tape_cache.n_records == 2
    assert len(g.tape_cache) == 2


def test_batched_grad_splits_points_by_branch():
    def f(x):
        if x[0] > 0:
            return np.sum(x**2)
        return np.sum(np.sin(x))

    g = tapejit.grad(f, batched=True)
    rng = np.random.default_rng(9)
    X = rng.uniform(-1.0, 1.0, size=(200, 2))
    G = g(X)
    assert G.shape == (200, 2)
    pos = X[:, 0] > 0
    np.testing.assert_array_equal(G[pos], 2.0 * X[pos])
    np.testing.assert_allclose(G[~pos], np.cos(X[~pos]), rtol=1e-15)
    assert g.tape_cache.n_records == 2


def test_batched_value_and_grad_without_branches():
    def f(x, scale):
        return scale * np.sum(np.sin(x))

    vg = tapejit.value_and_grad(f, batched=True)
    X = np.random.default_rng(10).normal(size=(50, 3))
    v, g = vg(X, 2.0)  # a Python float: fixed for all points
    np.testing.assert_allclose(v, 2.0 * np.sin(X).sum(axis=1), rtol=1e-14)
    np.testing.assert_allclose(g, 2.0 * np.cos(X), rtol=1e-15)
    assert vg.tape_cache.n_records == 1
