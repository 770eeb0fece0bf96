"""Bad and unusual inputs to the Tape API: every error is raised with a message naming
what was wrong; unusual-but-valid inputs (ints, views, read-only, empty) give the same
results as the plain case."""

from __future__ import annotations

import numpy as np
import pytest

import tapejit


def f2(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


@pytest.fixture(scope="module")
def tape():
    return tapejit.record(f2, 2.0, 5.0)


@pytest.fixture(scope="module")
def tape_multi():
    return tapejit.record(lambda x: (x[0] * x[1], np.sin(x[2]), x[0] + x[2]), np.zeros(3))


@pytest.fixture(scope="module")
def tape_params():
    return tapejit.record(lambda x, p: p[0] * np.sin(x) + p[1], 1.0, np.zeros(2), argnums=0)


X = np.array([[2.0, 5.0], [1.5, -1.0], [0.5, 0.25], [3.0, 2.0]])


# ---------------------------------------------------------------------------------------
# shapes and counts
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [np.zeros(3), np.zeros(1), np.zeros((4, 3)), np.zeros((4, 1)), np.zeros((2, 2, 2)),
     np.zeros((2, 0)), np.float64(2.0)],
    ids=["1d-3", "1d-1", "2d-3cols", "2d-1col", "3d", "2d-0cols", "0d"],
)
@pytest.mark.parametrize("method", ["forward", "value_and_grad", "gradient", "jacobian"])
def test_wrong_shape_raises(tape, bad, method):
    msg = r"x must have shape \(2,\) for one point or \(n_points, 2\)"
    with pytest.raises(ValueError, match=msg):
        getattr(tape, method)(bad)


def test_wrong_shape_message_names_the_shape_given(tape):
    with pytest.raises(ValueError, match=r"got shape \(4, 3\)"):
        tape.forward(np.zeros((4, 3)))


def test_wrong_shape_for_vjp(tape):
    with pytest.raises(ValueError, match=r"x must have shape"):
        tape.vjp(np.zeros(3), np.ones(1))
    with pytest.raises(ValueError, match=r"w must have shape \(1,\)"):
        tape.vjp(X, np.ones(2))
    with pytest.raises(ValueError, match=r"w must have shape \(1,\) or \(4, 1\)"):
        tape.vjp(X, np.ones((3, 1)))


def test_one_input_tape_accepts_scalar_and_column():
    t = tapejit.record(np.sin, 1.0)
    assert t.forward(0.5) == np.sin(0.5)
    assert t.forward([0.5]) == np.sin(0.5)
    np.testing.assert_array_equal(t.forward(np.array([[0.5], [1.0]])), np.sin([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"x must have shape \(1,\)"):
        t.forward(np.array([0.5, 1.0, 2.0]))  # three inputs, not three points


# ---------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------
def test_integer_inputs_are_converted(tape):
    Xi = np.array([[2, 5], [1, 3]], dtype=np.int64)
    np.testing.assert_array_equal(tape.forward(Xi), tape.forward(Xi.astype(float)))
    v, g = tape.value_and_grad(Xi)
    v2, g2 = tape.value_and_grad(Xi.astype(float))
    np.testing.assert_array_equal(v, v2)
    np.testing.assert_array_equal(g, g2)
    assert g.dtype == np.float64
    for dt in (np.int32, np.uint8, np.int16):
        np.testing.assert_array_equal(tape.forward(np.array([2, 5], dtype=dt)),
                                      tape.forward(np.array([2.0, 5.0])))
    assert tape.forward([2, 5]) == tape.forward(np.array([2.0, 5.0]))


def test_float32_inputs_are_converted(tape):
    x32 = np.array([2.0, 5.0], dtype=np.float32)
    assert tape.forward(x32) == tape.forward(np.array([2.0, 5.0]))


@pytest.mark.parametrize(
    ("bad", "dtype_text"),
    [
        (np.array([2.0 + 1j, 5.0]), "complex128"),
        (np.array([2.0, 5.0], dtype=object), "object"),
        (np.array(["2.0", "5.0"]), "<U3"),
        (np.array([True, False]), "bool"),
        (["a", "b"], "<U1"),
    ],
    ids=["complex", "object", "str", "bool", "list-of-str"],
)
@pytest.mark.parametrize("method", ["forward", "value_and_grad", "jacobian"])
def test_bad_dtypes_raise_type_error(tape, bad, dtype_text, method):
    with pytest.raises(TypeError, match=rf"x must hold real numbers.*got dtype {dtype_text}"):
        getattr(tape, method)(bad)


def test_bad_dtype_in_vjp_weights(tape):
    with pytest.raises(TypeError, match=r"w must hold real numbers.*complex"):
        tape.vjp(np.array([2.0, 5.0]), np.array([1j]))


def test_ragged_input_raises_type_error(tape):
    with pytest.raises((TypeError, ValueError), match=r"x must|inhomogeneous"):
        tape.forward([[1.0, 2.0], [3.0]])


def test_record_rejects_bad_argument_dtypes():
    with pytest.raises(TypeError, match=r"argument 0 .*complex"):
        tapejit.record(np.sin, 1.0 + 2.0j)
    with pytest.raises(TypeError, match=r"argument 1 .*bool"):
        tapejit.record(lambda a, b: a * b, 1.0, True)
    with pytest.raises(TypeError, match=r"argument 0 .*str"):
        tapejit.record(np.sin, "1.0")


def test_record_accepts_integer_arguments():
    tape = tapejit.record(lambda a, b: a * b, 2, np.arange(3))
    assert tape.n_inputs == 4
    np.testing.assert_array_equal(tape.forward(np.array([2.0, 1.0, 2.0, 3.0])), [2.0, 4.0, 6.0])


# ---------------------------------------------------------------------------------------
# NaN and inf
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "point",
    [(np.nan, 5.0), (2.0, np.nan), (np.inf, 5.0), (2.0, np.inf), (-1.0, 5.0), (0.0, 5.0),
     (-np.inf, 1.0), (np.inf, -np.inf)],
)
def test_nan_and_inf_propagate_as_numpy(tape, point):
    x = np.array(point)
    with np.errstate(all="ignore"):
        ref = f2(*x)
    np.testing.assert_array_equal(tape.forward(x), ref)
    batched = tape.forward(np.vstack([x, X]))
    np.testing.assert_array_equal(batched[0], ref)
    np.testing.assert_array_equal(batched[1:], tape.forward(X))  # other rows unaffected


def test_nan_in_one_point_does_not_touch_the_others(tape):
    Xn = np.vstack([X, [[np.nan, np.nan]], X])
    v, g = tape.value_and_grad(Xn)
    assert np.isnan(v[4])
    v0, g0 = tape.value_and_grad(X)
    np.testing.assert_array_equal(v[:4], v0)
    np.testing.assert_array_equal(v[5:], v0)
    np.testing.assert_array_equal(g[:4], g0)
    np.testing.assert_array_equal(g[5:], g0)


# ---------------------------------------------------------------------------------------
# empty point sets
# ---------------------------------------------------------------------------------------
def test_zero_points(tape, tape_multi, tape_params):
    E = np.empty((0, 2))
    y = tape.forward(E)
    assert y.shape == (0,) and y.dtype == np.float64
    v, g = tape.value_and_grad(E)
    assert v.shape == (0,) and g.shape == (0, 2)
    assert tape.gradient(E).shape == (0, 2)
    assert tape.jacobian(E).shape == (0, 1, 2)
    yv, gv = tape.vjp(E, np.ones(1))
    assert yv.shape == (0, 1) and gv.shape == (0, 2)
    E3 = np.empty((0, 3))
    assert tape_multi.forward(E3).shape == (0, 3)
    assert tape_multi.jacobian(E3).shape == (0, 3, 3)
    assert tape_params.forward(np.empty((0, 1)), params=np.ones(2)).shape == (0,)
    assert tape_params.forward(np.empty((0, 1)), params=np.ones((0, 2))).shape == (0,)


def test_zero_points_from_empty_list(tape):
    with pytest.raises(ValueError, match=r"x must have shape"):
        tape.forward([])  # shape (0,): not a point set


# ---------------------------------------------------------------------------------------
# memory layout
# ---------------------------------------------------------------------------------------
def test_non_contiguous_inputs_give_same_results(tape):
    base = np.zeros((4, 5))
    base[:, 1] = X[:, 0]
    base[:, 3] = X[:, 1]
    view = base[:, 1::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(tape.forward(view), tape.forward(X))
    v, g = tape.value_and_grad(view)
    v0, g0 = tape.value_and_grad(X)
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_array_equal(g, g0)
    F = np.asfortranarray(X)
    np.testing.assert_array_equal(tape.forward(F), tape.forward(X))
    rev = X[::-1]
    np.testing.assert_array_equal(tape.forward(rev), tape.forward(X)[::-1])
    one = base[0, 1::2]
    assert tape.forward(one) == tape.forward(X[0])


def test_read_only_inputs_give_same_results(tape, tape_params):
    ro = X.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(tape.forward(ro), tape.forward(X))
    _v, g = tape.value_and_grad(ro)
    np.testing.assert_array_equal(g, tape.gradient(X))
    p = np.array([2.0, -1.0])
    p.flags.writeable = False
    x1 = np.array([[0.3], [0.7]])
    np.testing.assert_array_equal(
        tape_params.forward(x1, params=p), tape_params.forward(x1, params=p.copy())
    )
    assert not ro.flags.writeable  # the caller's array is untouched
    np.testing.assert_array_equal(ro, X)


def test_inputs_are_not_modified(tape):
    x = X.copy()
    tape.value_and_grad(x)
    tape.jacobian(x)
    tape.vjp(x, np.ones(1))
    np.testing.assert_array_equal(x, X)


# ---------------------------------------------------------------------------------------
# out= buffers
# ---------------------------------------------------------------------------------------
def test_out_buffers_are_filled_and_returned(tape):
    y = np.empty(4)
    r = tape.forward(X, out=y)
    assert r is y or np.shares_memory(r, y)
    np.testing.assert_array_equal(y, tape.forward(X))
    vb, gb = np.empty(4), np.empty((4, 2))
    _v, g = tape.value_and_grad(X, out=(vb, gb))
    assert g is gb
    np.testing.assert_array_equal(vb, tape.forward(X))
    np.testing.assert_array_equal(gb, tape.gradient(X))
    J = np.empty((4, 1, 2))
    assert tape.jacobian(X, out=J) is J
    np.testing.assert_array_equal(J[:, 0, :], gb)
    g1 = np.empty(2)
    tape.gradient(X[0], out=g1)
    np.testing.assert_array_equal(g1, gb[0])
    y1 = np.empty(1)  # one point, one output: the buffer is returned instead of a float
    r1 = tape.forward(X[0], out=y1)
    assert r1 is y1
    assert y1[0] == tape.forward(X[0])


@pytest.mark.parametrize(
    ("out", "exc", "msg"),
    [
        (np.empty(3), ValueError, r"out must have shape \(4,\); got \(3,\)"),
        (np.empty((4, 1)), ValueError, r"out must have shape \(4,\)"),
        (np.empty(4, dtype=np.float32), TypeError, r"out must be a float64 numpy array"),
        (np.empty(4, dtype=np.int64), TypeError, r"out must be a float64"),
        ([0.0] * 4, TypeError, r"out must be a float64 numpy array"),
        (np.empty(8)[::2], ValueError, r"out must be C-contiguous and writeable"),
    ],
    ids=["short", "2d", "float32", "int64", "list", "strided"],
)
def test_bad_forward_out_buffer(tape, out, exc, msg):
    with pytest.raises(exc, match=msg):
        tape.forward(X, out=out)


def test_read_only_out_buffer_raises(tape):
    y = np.empty(4)
    y.flags.writeable = False
    with pytest.raises(ValueError, match=r"out must be C-contiguous and writeable"):
        tape.forward(X, out=y)


def test_bad_grad_buffers(tape):
    with pytest.raises(ValueError, match=r"grad buffer must have shape \(4, 2\)"):
        tape.value_and_grad(X, out=(None, np.empty((4, 3))))
    with pytest.raises(ValueError, match=r"value buffer must have shape \(4,\)"):
        tape.value_and_grad(X, out=(np.empty(5), np.empty((4, 2))))
    with pytest.raises(TypeError, match=r"grad buffer must be a float64"):
        tape.value_and_grad(X, out=(None, np.empty((4, 2), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"grad buffer must have shape \(2,\)"):
        tape.gradient(X[0], out=np.empty(3))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 1, 2\)"):
        tape.jacobian(X, out=np.empty((4, 2)))
    with pytest.raises(ValueError, match=r"vjp buffer must have shape \(4, 2\)"):
        tape.vjp(X, np.ones(1), out=(None, np.empty((4, 1))))
    with pytest.raises(ValueError, match=r"outputs buffer must have shape \(4, 1\)"):
        tape.vjp(X, np.ones(1), out=(np.empty(4), None))


def test_failed_call_does_not_write_out_buffer(tape):
    y = np.full(3, 7.0)
    with pytest.raises(ValueError):
        tape.forward(X, out=y)
    np.testing.assert_array_equal(y, 7.0)


# ---------------------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------------------
def test_params_missing_raises(tape_params):
    msg = r"this tape has 2 parameters: pass params= of shape \(2,\)"
    with pytest.raises(ValueError, match=msg):
        tape_params.forward(np.array([0.5]))
    with pytest.raises(ValueError, match=r"2 parameters"):
        tape_params.value_and_grad(np.array([[0.5], [0.7]]))
    with pytest.raises(ValueError, match=r"2 parameters"):
        tape_params.jacobian(np.array([0.5]))
    with pytest.raises(ValueError, match=r"2 parameters"):
        tape_params.vjp(np.array([0.5]), np.ones(1))


@pytest.mark.parametrize(
    ("x", "params", "msg"),
    [
        (np.array([0.5]), np.ones(3),
         r"params must have shape \(2,\) for one point or \(n_points, 2\)"),
        (np.array([0.5]), np.ones(1), r"params must have shape \(2,\)"),
        (np.array([[0.5], [0.7]]), np.ones((3, 2)), r"params has 3 rows but x has 2 points"),
        (np.array([[0.5], [0.7]]), np.ones((2, 3)), r"params must have shape"),
        (np.array([[0.5], [0.7]]), np.ones((2, 2, 1)), r"params must have shape"),
    ],
    ids=["1d-long", "1d-short", "rows", "cols", "3d"],
)
def test_params_wrong_shape_raises(tape_params, x, params, msg):
    with pytest.raises(ValueError, match=msg):
        tape_params.forward(x, params=params)
    with pytest.raises(ValueError, match=msg):
        tape_params.value_and_grad(x, params=params)


def test_params_one_row_for_one_point(tape_params):
    x = np.array([0.5])
    a = tape_params.forward(x, params=np.array([2.0, 1.0]))
    b = tape_params.forward(x, params=np.array([[2.0, 1.0]]))
    assert float(np.squeeze(b)) == a == 2.0 * np.sin(0.5) + 1.0
    with pytest.raises(ValueError, match=r"params has 2 rows but x has 1 points"):
        tape_params.forward(x, params=np.ones((2, 2)))


def test_params_bad_dtype_raises(tape_params):
    with pytest.raises(TypeError, match=r"params must hold real numbers.*complex"):
        tape_params.forward(np.array([0.5]), params=np.array([1j, 2.0]))
    with pytest.raises(TypeError, match=r"params must hold real numbers.*bool"):
        tape_params.forward(np.array([0.5]), params=np.array([True, False]))


def test_params_given_to_a_tape_without_params(tape):
    # an empty parameter vector is fine; a non-empty one names the expected shape
    assert tape.forward(np.array([2.0, 5.0]), params=np.empty(0)) == tape.forward(
        np.array([2.0, 5.0])
    )
    with pytest.raises(ValueError, match=r"params must have shape \(0,\)"):
        tape.forward(np.array([2.0, 5.0]), params=np.ones(2))


def test_params_values_used(tape_params):
    x = np.array([[0.5], [1.0]])
    np.testing.assert_allclose(
        tape_params.forward(x, params=[2.0, 1.0]), 2.0 * np.sin(x[:, 0]) + 1.0, rtol=1e-15
    )
    np.testing.assert_allclose(
        tape_params.gradient(x, params=[[2.0, 1.0], [3.0, 0.0]])[:, 0],
        [2.0 * np.cos(0.5), 3.0 * np.cos(1.0)],
        rtol=1e-15,
    )
    ints = tape_params.forward(np.array([0.5]), params=np.array([2, 1]))
    assert ints == tape_params.forward(np.array([0.5]), params=np.array([2.0, 1.0]))


# ---------------------------------------------------------------------------------------
# multi-output tapes
# ---------------------------------------------------------------------------------------
def test_value_and_grad_on_multi_output_tape_raises(tape_multi):
    x = np.array([1.0, 2.0, 3.0])
    msg = r"value_and_grad needs a tape with one output; this tape has 3"
    with pytest.raises(ValueError, match=msg):
        tape_multi.value_and_grad(x)
    with pytest.raises(ValueError, match=r"one output.*vjp\(\)|jacobian\(\)"):
        tape_multi.value_and_grad(np.tile(x, (5, 1)))
    with pytest.raises(ValueError, match=r"one output"):
        tape_multi.gradient(x)


def test_multi_output_tape_forward_shapes(tape_multi):
    x = np.array([1.0, 2.0, 3.0])
    y = tape_multi.forward(x)
    assert y.shape == (3,)
    np.testing.assert_allclose(y, [2.0, np.sin(3.0), 4.0], rtol=1e-15)
    assert tape_multi.forward(np.tile(x, (5, 1))).shape == (5, 3)
    assert tape_multi.jacobian(x).shape == (3, 3)


def test_record_with_bad_argnums():
    with pytest.raises(ValueError, match=r"argnums entry 2 is not an argument index for 2 args"):
        tapejit.record(f2, 1.0, 2.0, argnums=2)
    with pytest.raises(ValueError, match=r"argnums .* repeats an argument"):
        tapejit.record(f2, 1.0, 2.0, argnums=(0, -2))
    with pytest.raises(ValueError, match=r"argnums entry '0'"):
        tapejit.record(f2, 1.0, 2.0, argnums=("0",))


def test_record_bad_output_type():
    with pytest.raises(TypeError, match=r"output 1 of the recorded function is str"):
        tapejit.record(lambda x: (x, "label"), 1.0)
    with pytest.raises(TypeError, match=r"output 0 of the recorded function is NoneType"):
        tapejit.record(lambda x: None, 1.0)
