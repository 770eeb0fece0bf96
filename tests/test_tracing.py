"""Tracing numpy code: supported functions give numpy's values and central-difference
derivatives; constants fold; unsupported functions, control flow and conversions raise
errors that say what to write instead."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import tapejit
from tapejit import TracingError
from tapejit._program import FAMILIES

RNG = np.random.default_rng(99)


def _flatten(args):
    return np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in args])


def _unflatten(row, shapes):
    out, o = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        part = row[o : o + n].reshape(s)
        out.append(float(part) if s == () else part)
        o += n
    return out


def _flat_output(result):
    items = result if isinstance(result, tuple | list) else (result,)
    return np.concatenate([np.ravel(np.asarray(r, dtype=np.float64)) for r in items])


def check(f, args, central_diff, n_points=5, scale=1.0, positive=False, rtol=1e-13):
    """Record ``f(*args)``; compare values with numpy and Jacobians with central
    differences at ``n_points`` random points; return the tape."""
    shapes = [np.shape(a) for a in args]
    tape = tapejit.record(f, *args)
    n_in = sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
    assert tape.n_inputs == n_in
    X = RNG.uniform(-1.0, 1.0, size=(n_points, n_in)) * scale
    if positive:
        X = np.abs(X) + 0.1
    X[0] = _flatten(args)

    def ref(Z):
        return np.array([_flat_output(f(*_unflatten(z, shapes))) for z in Z])

    R = ref(X)
    Y = tape.forward(X).reshape(n_points, -1)
    assert Y.shape == R.shape
    np.testing.assert_allclose(Y, R, rtol=rtol, atol=1e-14)
    J = tape.jacobian(X)
    assert J.shape == (n_points, tape.n_outputs, n_in)
    np.testing.assert_allclose(J, central_diff(ref, X), rtol=1e-6, atol=1e-7)
    # One point at a time: the same bits, except after an instruction whose family calls
    # BLAS or LAPACK (Family.blas; docs: accuracy of values): the last bits of a sum.
    blas = any(FAMILIES[op].blas for op in tape.opcodes.tolist() if op in FAMILIES)
    for i in range(n_points):
        one = np.ravel(tape.forward(X[i]))
        if blas:
            np.testing.assert_allclose(one, Y[i], rtol=1e-14, atol=1e-15 * np.abs(Y[i]).max())
        else:
            np.testing.assert_array_equal(one, Y[i])
    if tape.n_outputs == 1:
        _v, g = tape.value_and_grad(X)
        np.testing.assert_array_equal(g, J[:, 0, :])
    return tape


A23 = RNG.uniform(-1, 1, (2, 3))
A34 = RNG.uniform(-1, 1, (3, 4))
V3 = RNG.uniform(-1, 1, 3)
V4 = RNG.uniform(-1, 1, 4)
C32 = RNG.uniform(-1, 1, (3, 2))  # a constant matrix

CASES = {
    # reductions
    "sum_all": (lambda a: np.sum(a), (A34,)),
    "sum_axis0": (lambda a: np.sum(a, axis=0), (A34,)),
    "sum_axis1_keepdims": (lambda a: np.sum(a, axis=1, keepdims=True), (A34,)),
    "sum_axis_neg": (lambda a: np.sum(a, axis=-1), (A34,)),
    "sum_axis_tuple": (lambda a: np.sum(a, axis=(0, 1)), (A34,)),
    "sum_method": (lambda a: a.sum(axis=0), (A34,)),
    "ufunc_reduce": (lambda a: np.add.reduce(a, axis=1), (A34,)),
    "prod_all": (lambda a: np.prod(a), (A23,)),
    "prod_axis1": (lambda a: np.prod(a, axis=1, keepdims=True), (A34,)),
    "mean_all": (lambda a: np.mean(a), (A34,)),
    "mean_axis0_keepdims": (lambda a: np.mean(a, axis=0, keepdims=True), (A34,)),
    "mean_method": (lambda a: a.mean(axis=1), (A34,)),
    "max_all": (lambda a: np.max(a), (A34,)),
    "max_axis1": (lambda a: np.max(a, axis=1), (A34,)),
    "amax_keepdims": (lambda a: np.amax(a, axis=0, keepdims=True), (A34,)),
    "min_axis0": (lambda a: np.min(a, axis=0), (A34,)),
    "min_method": (lambda a: a.min(), (A34,)),
    "maximum_reduce": (lambda a: np.maximum.reduce(a, axis=0), (A34,)),
    # products
    "dot_vectors": (lambda a, b: np.dot(a, b), (V3, V3 + 0.5)),
    "matmul_vectors": (lambda a, b: a @ b, (V4, V4)),
    "matvec": (lambda m, v: m @ v, (A34, V4)),
    "vecmat": (lambda v, m: v @ m, (V3, A34)),
    "matmat": (lambda m, n: np.matmul(m, n), (A23, A34)),
    "dot_matmat": (lambda m, n: np.dot(m, n), (A23, A34)),
    "const_mat_times_vec": (lambda v: C32.T @ v, (V3,)),
    "vec_times_const_mat": (lambda v: np.dot(v, C32), (V3,)),
    "dot_scalar": (lambda a, s: np.dot(a, s), (V3, 1.5)),
    "outer": (lambda a, b: np.outer(a, b), (V3, V4)),
    "inner": (lambda a, b: np.inner(a, b), (V3, V3)),
    "vdot": (lambda a, b: np.vdot(a, b), (A23, A23.T.copy().T)),
    "trace": (lambda m: np.trace(m @ m.T), (A23,)),
    # selection and clipping
    "where": (lambda a: np.where(a > 0.2, a**2, -a), (V4,)),
    "where_const_mask": (lambda a: np.where(np.array([1, 0, 1, 0]), a, 2.0 * a), (V4,)),
    "where_and_or": (lambda a: np.where((a > -0.5) & (a < 0.5), a, 0.0)
                     + np.where((a < -0.5) | (a > 0.5), 2.0 * a, 0.0), (V4,)),
    "where_not": (lambda a: np.where(~(a > 0.0), a, 3.0 * a), (V4,)),
    "maximum": (lambda a, b: np.maximum(a, 0.3 * b), (V4, V4[::-1].copy())),
    "minimum_scalar": (lambda a: np.minimum(a, 0.1), (V4,)),
    "clip": (lambda a: np.clip(a, -0.5, 0.5), (V4,)),
    "clip_kw": (lambda a: np.clip(a, min=-0.4, max=0.6), (V4,)),
    "abs_sign": (lambda a: np.abs(a) * np.sign(a + 3.0), (V4,)),
    # shape manipulation
    "concatenate": (lambda a, b: np.concatenate([a, 2.0 * b, np.ones(2)]), (V3, V4)),
    "concatenate_axis1": (lambda m, n: np.concatenate([m, n.T], axis=1), (A23, C32 * 1.0)),
    "stack": (lambda a, b: np.stack([a, b[:3]], axis=1), (V3, V4)),
    "hstack_vstack": (lambda a: np.vstack([np.hstack([a, a]), np.hstack([a, 1.0 - a])]), (V3,)),
    "stack_scalars": (lambda a: np.stack([a[0] * a[1], a[2], 1.0]), (V3,)),
    "slicing": (lambda m: m[1:, ::2] * m[:-1, 1::2], (A34,)),
    "slicing_negative_step": (lambda a: a[::-1] - a, (V4,)),
    "ellipsis": (lambda m: m[..., 0] + m[..., -1], (A34,)),
    "fancy_indexing": (lambda a: a[[0, 2, 2, 1]] * a[np.array([3, 3, 0, 1])], (V4,)),
    "boolean_mask": (lambda a: a[np.array([True, False, True, True])] ** 2, (V4,)),
    "fancy_2d": (lambda m: m[[0, 1, 1], [3, 0, 0]], (A23 @ A34,)),
    "newaxis_broadcast": (lambda a, b: a[:, None] * b[None, :], (V3, V4)),
    "broadcast_const": (lambda m: m * np.arange(4.0) + np.array([[1.0], [2.0], [3.0]]), (A34,)),
    "broadcast_scalar_arg": (lambda m, s: m * s + s, (A23, 0.7)),
    "reshape_transpose": (lambda m: m.reshape(4, 3).T @ np.ones(4), (A34,)),
    "np_reshape_transpose": (lambda m: np.transpose(np.reshape(m, (2, 6))), (A34,)),
    "ravel_flatten_T": (lambda m: m.T.ravel() + m.flatten()[::-1], (A23,)),
    "swapaxes_squeeze": (lambda m: np.squeeze(np.swapaxes(m[None], 1, 2)), (A23,)),
    "expand_flip_roll": (lambda a: np.roll(np.flip(np.expand_dims(a, 0), 1), 1, axis=1), (V4,)),
    "tile_repeat": (lambda a: np.tile(a, 2) * np.repeat(a, 2), (V3,)),
    "triu_diagonal": (lambda m: np.triu(m @ m.T) + np.diagonal(m @ m.T), (A23,)),
    "broadcast_to": (lambda a: np.broadcast_to(a, (2, 3)) * np.arange(6.0).reshape(2, 3), (V3,)),
    "append": (lambda a: np.append(a, a[0] * 2.0), (V3,)),
    # scans and differences
    "cumsum": (lambda a: np.cumsum(a), (V4,)),
    "cumsum_long": (lambda a: np.cumsum(np.concatenate([a, a, a])), (V4,)),
    "cumsum_axis1": (lambda m: np.cumsum(m, axis=1), (A34,)),
    "cumsum_axis0_method": (lambda m: m.cumsum(axis=0), (A34,)),
    "diff": (lambda a: np.diff(a), (V4,)),
    "diff_n2": (lambda a: np.diff(a, n=2), (V4,)),
    "diff_axis0": (lambda m: np.diff(m, axis=0), (A34,)),
    # norms
    "norm_vector": (lambda a: np.linalg.norm(a), (V4,)),
    "norm_fro": (lambda m: np.linalg.norm(m), (A23,)),
    "norm_axis1": (lambda m: np.linalg.norm(m, axis=1), (A34,)),
    "norm_ord2_vector": (lambda a: np.linalg.norm(a, ord=2), (V3,)),
    # in-place assignment
    "zeros_like_fill": (None, (V4,)),
    "ones_like_full_like": (lambda a: np.ones_like(a) * a + np.full_like(a, 2.5), (V3,)),
    "setitem_slice_add": (None, (A23,)),
    # ufuncs of several kinds
    "ufunc_mix": (lambda a, b: np.hypot(a, b) + np.arctan2(a, b + 3.0) + np.logaddexp(a, b)
                  + np.deg2rad(a) + np.rad2deg(b), (V3, V3[::-1].copy())),
    "floordiv_mod": (lambda a: (a * 3.7) % 1.3 + a // 0.7, (V4 + 0.05,)),
    "rpow": (lambda a: 2.0**a + a**3 + np.power(np.abs(a) + 0.5, a), (V3,)),
}


def _zeros_like_fill(a):
    z = np.zeros_like(a)
    z[0] = a[1] * 2.0
    z[1:] = a[:-1] ** 2
    z[-1] += a[0]
    return z


def _setitem_slice_add(m):
    out = np.zeros_like(m)
    out[:, 1:] = m[:, :-1] * m[:, 1:]
    out[1] = out[1] + np.sin(m[0])
    return out


CASES["zeros_like_fill"] = (_zeros_like_fill, (V4,))
CASES["setitem_slice_add"] = (_setitem_slice_add, (A23,))

# reductions of products can be large relative to their inputs; a few ulp more
_RTOL = {"prod_all": 1e-12, "cumsum_long": 1e-12, "trace": 1e-12, "matmat": 1e-12,
         "dot_matmat": 1e-12, "ufunc_mix": 1e-12, "rpow": 1e-12, "floordiv_mod": 1e-12}


@pytest.mark.parametrize("name", sorted(CASES))
def test_supported_function_values_and_derivatives(name, central_diff):
    f, args = CASES[name]
    check(f, args, central_diff, rtol=_RTOL.get(name, 1e-13))


@pytest.mark.parametrize(
    ("fn", "numpy_fn"),
    [
        (lambda m: np.triu(m), np.triu),
        (lambda m: np.tril(m), np.tril),
        (lambda m: np.triu(m, 1), lambda a: np.triu(a, 1)),
        (lambda m: np.tril(m, -1), lambda a: np.tril(a, -1)),
    ],
    ids=["triu", "tril", "triu-1", "tril-minus1"],
)
def test_triu_tril_fill_with_zeros(fn, numpy_fn):
    # the zeroed triangle must be the constant 0, not the first input
    m = np.array([[5.0, 1.0, 2.0], [3.0, 4.0, 6.0], [7.0, 8.0, 9.0]])
    tape = tapejit.record(fn, np.zeros((3, 3)))
    np.testing.assert_array_equal(tape.forward(m.ravel()), numpy_fn(m).ravel())
    J = tape.jacobian(m.ravel())
    np.testing.assert_array_equal(J, np.diag(numpy_fn(np.ones((3, 3))).ravel()))


@pytest.mark.parametrize(
    ("fn", "expect"),
    [
        (lambda m: np.add.reduce(m, axis=1), lambda a: a.sum(axis=1)),
        (lambda m: np.add.reduce(m, 0), lambda a: a.sum(axis=0)),
        (lambda m: np.multiply.reduce(m, axis=-1), lambda a: a.prod(axis=-1)),
        (lambda m: np.maximum.reduce(m, axis=None), lambda a: a.max()),
        (lambda m: np.minimum.reduce(m, axis=0, keepdims=True), lambda a: a.min(0, keepdims=True)),
    ],
    ids=["add-axis1", "add-positional-axis", "multiply-axis-1", "maximum-none", "minimum-keepdims"],
)
def test_ufunc_reduce_with_axis(fn, expect):
    m = np.array([[0.5, -1.0, 2.0], [3.0, 0.25, -6.0]])
    tape = tapejit.record(fn, np.zeros((2, 3)))
    np.testing.assert_array_equal(np.ravel(tape.forward(m.ravel())), np.ravel(expect(m)))


def test_ufunc_reduce_default_axis():
    m = np.array([[0.5, -1.0, 2.0], [3.0, 0.25, -6.0]])
    tape = tapejit.record(lambda a: np.add.reduce(a), np.zeros((2, 3)))
    np.testing.assert_array_equal(tape.forward(m.ravel()), m.sum(axis=0))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 12, 33])
def test_cumsum_lengths(n):
    tape = tapejit.record(lambda a: np.cumsum(a), np.zeros(n))
    x = np.linspace(-1.0, 2.0, n)
    np.testing.assert_allclose(tape.forward(x), np.cumsum(x), rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(tape.jacobian(x), np.tril(np.ones((n, n))))


def test_assigning_a_row_that_mixes_constants_and_variables():
    def f(m):
        out = np.zeros_like(m)
        out[:, 1:] = m[:, :-1] * m[:, 1:]  # out[1] is [0.0 (constant), v, v]
        out[1] = out[1] + m[0]
        return out

    m = np.arange(1.0, 7.0).reshape(2, 3)
    tape = tapejit.record(f, np.zeros((2, 3)))
    np.testing.assert_array_equal(tape.forward(m.ravel()), f(m).ravel())


def test_floordiv_mod_derivatives():
    # derivative of a % b is 1 in a away from jumps; of a // b is 0
    tape = tapejit.record(lambda a: a % 1.3 + a // 0.7, 1.0)
    for x in (0.2, 1.0, 2.9):
        v, g = tape.value_and_grad(np.array([x]))
        assert v == pytest.approx(x % 1.3 + x // 0.7, rel=1e-15)
        assert g[0] == 1.0


def test_max_and_min_send_a_tie_s_derivative_to_the_first_extreme_element():
    # numpy's argmax choice (docs: internals, the reduce family); a subgradient
    tape = tapejit.record(lambda a: np.max(a), np.zeros(2))
    np.testing.assert_array_equal(tape.gradient(np.array([1.0, 1.0])), [1.0, 0.0])
    tape = tapejit.record(lambda a: np.min(a), np.zeros(3))
    np.testing.assert_array_equal(tape.gradient(np.array([3.0, 2.0, 2.0])), [0.0, 1.0, 0.0])


def test_empty_reductions():
    tape = tapejit.record(lambda a: a[0] + np.sum(a[1:1]) + np.prod(a[2:2]), np.zeros(2))
    assert tape.forward(np.array([3.0, 4.0])) == 4.0  # 3 + 0 + 1
    with pytest.raises(ValueError, match="zero-size array"):
        tapejit.record(lambda a: np.max(a[1:1]), np.zeros(2))


# ---------------------------------------------------------------------------------------
# constants are folded
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("f", "arg", "n_instr"),
    [
        (lambda x: x * np.sin(2.0), 1.0, 1),
        (lambda x: x * (2.0 * 3.0 + np.exp(1.0)), 1.0, 1),
        (lambda x: np.sin(x) * np.cos(np.float64(0.5)) + np.pi, 1.0, 3),
        (lambda x: x[0] + np.sum(np.ones_like(x) * 3.0), np.zeros(3), 1),
        (lambda x: x[1] * np.sum(np.arange(5.0) ** 2), np.zeros(2), 1),
        (lambda x: np.sum(np.full_like(x, 0.5) * np.cos(1.0)) + x[2], np.zeros(4), 1),
        (lambda x: np.sin(np.full_like(x, 0.5)) + np.cos(np.float64(1.0)), np.zeros(2), 0),
        (lambda x: x, 1.0, 0),
        (lambda x: np.reshape(x, (2, 2)).T[0], np.zeros(4), 0),
    ],
    ids=["sin-const", "expr-const", "three-ops", "sum-ones", "sum-arange", "full-like",
         "all-const", "identity", "index-only"],
)
def test_constants_never_become_tape_variables(f, arg, n_instr):
    tape = tapejit.record(f, arg)
    assert len(tape) == n_instr, tape.listing()
    assert tape.n_inputs == np.size(arg)
    x = np.atleast_1d(np.asarray(arg, dtype=float)) + 0.3
    ref = np.ravel(np.asarray(f(x if np.ndim(arg) else float(x[0])), dtype=float))
    np.testing.assert_allclose(np.ravel(tape.forward(x)), ref, rtol=1e-15)


@pytest.mark.parametrize(
    ("f", "n_elementwise"),
    [
        (lambda x: np.exp(np.zeros(3)) * x, 3),
        (lambda x: x + np.where(np.zeros_like(x) > 1.0, 5.0, 2.0), 3),
        (lambda x: x * np.arange(3.0) + 1.0, 6),
    ],
    ids=["exp-zeros", "where-const-mask", "arange"],
)
def test_constant_arrays_add_no_instructions_of_their_own(f, n_elementwise):
    # at most one instruction per element of the variable computation (fewer if the tape
    # groups elementwise runs); none for the constant subexpressions
    tape = tapejit.record(f, np.zeros(3))
    assert 1 <= len(tape) <= n_elementwise, tape.listing()
    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(tape.forward(x), f(x), rtol=1e-15)


def test_same_subexpression_twice_is_correct():
    tape = tapejit.record(lambda x: x[1:] - x[1:] + x[:2] * x[:2], np.zeros(3))
    x = np.array([0.5, -1.5, 2.0])
    np.testing.assert_array_equal(tape.forward(x), x[:2] ** 2)
    np.testing.assert_array_equal(tape.jacobian(x), [[1.0, 0.0, 0.0], [0.0, -3.0, 0.0]])


def test_constant_output_has_zero_gradient():
    tape = tapejit.record(lambda x: np.sin(3.0) + 0.0 * 1.0, 1.0)
    assert len(tape) == 0
    v, g = tape.value_and_grad(np.array([7.0]))
    assert v == np.sin(3.0)
    np.testing.assert_array_equal(g, [0.0])
    vb, gb = tape.value_and_grad(np.array([[7.0], [8.0]]))
    np.testing.assert_array_equal(vb, [np.sin(3.0)] * 2)
    np.testing.assert_array_equal(gb, 0.0)


def test_constant_slots_hold_their_values():
    tape = tapejit.record(lambda x: x * 2.5 + 0.75, 1.0)
    assert set(tape.consts.tolist()) >= {2.5, 0.75}
    assert not tape.consts.flags.writeable
    assert tape.forward(np.array([2.0])) == 5.75


# ---------------------------------------------------------------------------------------
# unsupported functions and conversions
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("f", "arg", "qualname"),
    [
        (lambda x: np.sort_complex(x), np.zeros(3), "numpy.sort_complex"),
        (lambda x: np.fft.fft(x), np.zeros(4), "numpy.fft.fft"),
        (lambda x: np.linalg.eig(x.reshape(2, 2)), np.zeros(4), "numpy.linalg.eig"),
        (lambda x: np.linalg.cond(x.reshape(2, 2)), np.zeros(4), "numpy.linalg.cond"),
        (lambda x: np.nanmedian(x), np.zeros(3), "numpy.nanmedian"),
        (lambda x: np.nancumsum(x), np.zeros(3), "numpy.nancumsum"),
        (lambda x: np.nextafter(x, 2.0), np.zeros(3), "numpy.nextafter"),
        (lambda x: np.nanargmax(x), np.zeros(3), "numpy.nanargmax"),
    ],
    ids=["sort_complex", "fft", "eig", "cond", "nanmedian", "nancumsum", "nextafter-ufunc",
         "nanargmax"],
)
def test_unsupported_numpy_function_raises_naming_it(f, arg, qualname):
    pattern = "cannot trace " + re.escape(qualname) + r"\b"
    with pytest.raises(TracingError, match=pattern) as ei:
        tapejit.record(f, arg)
    assert isinstance(ei.value, TypeError)
    assert "tapejit.supported_functions() lists what records" in str(ei.value)


def test_error_types():
    assert issubclass(TracingError, TypeError)
    assert issubclass(tapejit.BranchError, ValueError)


def test_ufunc_methods_other_than_reduce_raise():
    with pytest.raises(TracingError, match=r"numpy\.subtract\.accumulate cannot be traced"):
        tapejit.record(lambda x: np.subtract.accumulate(x), np.zeros(3))
    with pytest.raises(TracingError, match=r"numpy\.exp\(\.\.\., out=\.\.\.\) cannot be traced"):
        tapejit.record(lambda x: np.exp(x, out=np.empty(3)), np.zeros(3))
    with pytest.raises(TracingError, match=r"numpy\.sum\(\.\.\., out=\.\.\.\)"):
        tapejit.record(lambda x: np.sum(x, out=np.empty(())), np.zeros(3))


# ---------------------------------------------------------------------------------------
# Python control flow on traced values: recorded as guards, checked at every point
# ---------------------------------------------------------------------------------------
def _if_positive(x):
    if x > 0:
        return 3.0 * x
    return -x


def _while_loop(x):
    while x < 10.0:
        x = x * 2.0
    return x


def _and(x):
    if (x > 0) and (x < 1):
        return x * x
    return x


def _builtin_max(x):
    return max(x, 0.5) * 2.0


def test_if_records_a_guard_and_checks_it():
    tape = tapejit.record(_if_positive, 1.0)
    assert tape.n_guards == 1
    assert tape.guards.tolist()[0][1] == 1  # outcome True was recorded
    assert "1 guards" in repr(tape)
    assert "guard v0 is True" in tape.listing()
    good = np.array([[0.5], [2.0], [1e-300]])
    np.testing.assert_array_equal(tape.forward(good), 3.0 * good[:, 0])
    np.testing.assert_array_equal(tape.gradient(good)[:, 0], 3.0)
    assert tape.forward(np.array([0.25])) == 0.75


@pytest.mark.parametrize("method", ["forward", "value_and_grad", "gradient", "jacobian"])
def test_points_leaving_the_recorded_branch_raise_branch_error(method):
    tape = tapejit.record(_if_positive, 1.0)
    X = np.array([[0.5], [-1.0], [2.0], [0.0]])
    with pytest.raises(tapejit.BranchError,
                       match=r"2 of 4 point\(s\) left the branches recorded in tape "
                             r"'_if_positive' \(1 guard\(s\)\)") as ei:
        getattr(tape, method)(X)
    assert ei.value.n_invalid == 2 and ei.value.n_points == 4
    assert "check='mask'" in str(ei.value)
    with pytest.raises(tapejit.BranchError, match=r"1 of 1 point"):
        getattr(tape, method)(np.array([-1.0]))


def test_check_mask_gives_nan_and_validity():
    tape = tapejit.record(_if_positive, 1.0)
    X = np.array([[0.5], [-1.0], [2.0]])
    y, ok = tape.forward(X, check="mask")
    np.testing.assert_array_equal(ok, [True, False, True])
    np.testing.assert_array_equal(y, [1.5, np.nan, 6.0])
    v, g, ok = tape.value_and_grad(X, check="mask")
    np.testing.assert_array_equal(v, [1.5, np.nan, 6.0])
    np.testing.assert_array_equal(g[:, 0], [3.0, np.nan, 3.0])
    np.testing.assert_array_equal(ok, [True, False, True])
    y1, ok1 = tape.forward(np.array([-2.0]), check="mask")
    assert np.isnan(y1)
    assert isinstance(ok1, bool | np.bool_) and not ok1
    y1, ok1 = tape.forward(np.array([2.0]), check="mask")
    assert y1 == 6.0 and bool(ok1)
    with pytest.raises(ValueError, match=r"check must be 'raise' or 'mask'; got 'ignore'"):
        tape.forward(X, check="ignore")


def test_branch_free_code_records_no_guard():
    tape = tapejit.record(lambda x: np.where(x > 0, 3.0 * x, -x), 1.0)
    assert tape.n_guards == 0
    X = np.array([[0.5], [-1.0]])
    np.testing.assert_array_equal(tape.forward(X), [1.5, 1.0])
    np.testing.assert_array_equal(tape.gradient(X)[:, 0], [3.0, -1.0])
    _y, ok = tape.forward(X, check="mask")
    np.testing.assert_array_equal(ok, [True, True])


@pytest.mark.parametrize(
    ("f", "rec_at", "good", "bad"),
    [
        (_while_loop, 1.0, [1.2, 0.7, 1.0], [1.5, 0.6, 3.0, -1.0]),  # 4 doublings, then stop
        (_and, 0.5, [0.1, 0.9], [1.5, -0.5]),
        (_builtin_max, 1.0, [0.75, 3.0], [0.25, -2.0]),
    ],
    ids=["while", "and", "builtin-max"],
)
def test_loops_and_boolean_operators_record_guards(f, rec_at, good, bad):
    tape = tapejit.record(f, rec_at)
    assert tape.n_guards >= 1
    G = np.array(good)[:, None]
    np.testing.assert_allclose(tape.forward(G), [f(float(v)) for v in good], rtol=1e-15)
    for v in bad:
        with pytest.raises(tapejit.BranchError):
            tape.forward(np.array([v]))


def test_truth_value_of_traced_array_is_ambiguous():
    def f(x):
        if x > 0:
            return x
        return -x

    with pytest.raises(ValueError, match=r"truth value of a traced array with more than one "
                                         r"element is ambiguous"):
        tapejit.record(f, np.zeros(3))


def test_branch_on_constant_records_no_guard():
    def f(x):
        c = np.ones_like(x) * 2.0
        if c[0] > 1.0:  # depends on no input: an ordinary Python branch
            return x * c
        return x

    tape = tapejit.record(f, np.zeros(2))
    assert tape.n_guards == 0
    np.testing.assert_array_equal(tape.forward(np.array([1.0, -3.0])), [2.0, -6.0])


@pytest.mark.parametrize(
    ("f", "msg"),
    [
        (lambda x: float(x), r"float\(\) of a traced value"),
        (lambda x: math.sin(x), r"float\(\).*np\.sin, not math\.sin"),
        (lambda x: math.exp(x) + x, r"float\(\)"),
        (lambda x: np.asarray(x, dtype=float), r"numpy array of dtype float64"),
        (lambda x: np.array([x, x], dtype=np.float64), r"float64"),
        (lambda x: x.item(), r"item\(\)"),
        (lambda x: x.tolist(), r"tolist\(\)"),
        (lambda x: x.astype(int), r"astype\(int64\)"),
    ],
    ids=["float", "math.sin", "math.exp", "asarray-float", "array-float", "item", "tolist",
         "astype-int"],
)
def test_conversions_raise_tracing_error(f, msg):
    with pytest.raises(TracingError, match=msg):
        tapejit.record(f, 1.0)


@pytest.mark.parametrize(
    "f",
    [
        lambda x: np.arange(4.0)[x[0]],
        lambda x: [1.0, 2.0, 3.0][x[0]],
        lambda x: x[x[1]],
        lambda x: x[1:x[0]],
        lambda x: np.zeros(3)[x[0]:],
        lambda x: range(x[0]),
    ],
    ids=["ndarray-index", "list-index", "self-index", "slice-stop", "ndarray-slice", "range"],
)
def test_traced_value_as_index_raises(f):
    with pytest.raises(TracingError, match=r"index|np\.asarray"):
        tapejit.record(f, np.array([1.0, 2.0, 0.0]))


def test_escaped_tracer_cannot_be_used_after_recording():
    leaked = []

    def f(x):
        leaked.append(x)
        return x * 2.0

    tapejit.record(f, 1.0)
    with pytest.raises(RuntimeError, match=r"recording has finished"):
        leaked[0] + 1.0


def test_mixing_two_recordings_raises():
    leaked = []

    def first(x):
        leaked.append(x)
        return x * 2.0

    def second(y):
        return y + leaked[0]

    with pytest.raises(TracingError, match=r"two different recordings"):
        tapejit.record(first, 1.0)
        tapejit.record(second, 1.0)


def test_non_numeric_operand_raises():
    with pytest.raises(TracingError, match=r"cannot combine a traced value with str"):
        tapejit.record(lambda x: x + "a", 1.0)


# ---------------------------------------------------------------------------------------
# outputs, listing, repr
# ---------------------------------------------------------------------------------------
def test_tuple_outputs_flatten_in_order(central_diff):
    def f(x, y):
        return x[0] * y, np.sin(x), (x[1:] * 2.0).reshape(2, 1), 4.0

    tape = tapejit.record(f, np.zeros(3), 0.0)
    assert tape.n_outputs == 1 + 3 + 2 + 1
    assert tape.output_shapes == ((), (3,), (2, 1), ())
    assert tape.input_shapes == ((3,), ())
    x = np.array([0.3, -1.2, 2.0, 0.5])
    y = tape.forward(x)
    expect = np.concatenate([[0.3 * 0.5], np.sin(x[:3]), x[1:3] * 2.0, [4.0]])
    np.testing.assert_allclose(y, expect, rtol=1e-15)
    J = tape.jacobian(x)
    assert J.shape == (7, 4)
    np.testing.assert_allclose(J[0], [0.5, 0.0, 0.0, 0.3], rtol=1e-15)
    np.testing.assert_allclose(J[1:4, :3], np.diag(np.cos(x[:3])), rtol=1e-15)
    np.testing.assert_array_equal(J[4:6, 1:3], 2.0 * np.eye(2))
    np.testing.assert_array_equal(J[6], 0.0)


def test_list_output_is_flattened_too():
    tape = tapejit.record(lambda x: [x[1], x[0]], np.zeros(2))
    np.testing.assert_array_equal(tape.forward(np.array([1.0, 2.0])), [2.0, 1.0])


def test_output_may_repeat_an_input():
    tape = tapejit.record(lambda x: (x, x * 3.0, x), 1.0)
    np.testing.assert_array_equal(tape.jacobian(np.array([2.0])), [[1.0], [3.0], [1.0]])
    y, g = tape.vjp(np.array([2.0]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(y, [2.0, 6.0, 2.0])
    np.testing.assert_array_equal(g, [5.0])


def test_listing_and_repr():
    def model(x, p):
        return np.sin(x[0]) * p + x[1] ** 2

    tape = tapejit.record(model, np.zeros(2), 1.0, argnums=0)
    r = repr(tape)
    assert "'model'" in r
    assert f"{len(tape)} instructions" in r
    assert "2 inputs" in r and "1 params" in r and "1 outputs" in r
    listing = tape.listing()
    lines = listing.splitlines()
    assert lines[0] == r
    assert len(lines) == len(tape) + 2
    assert "= sin(x0)" in listing
    assert "= square(x1)" in listing
    assert "p0" in listing
    assert lines[-1].strip().startswith("return v")
    short = tape.listing(limit=1)
    assert f"... {len(tape) - 1} more" in short
    assert len(short.splitlines()) == 4
    assert len(tape.listing(limit=None).splitlines()) == len(tape) + 2


def test_listing_names_runs_of_outputs_once():
    # A tape that returns blocks lists each run of consecutive slots as one item, as
    # the instructions' blocks are, not one name per element.
    tape = tapejit.record(lambda x: np.concatenate([x ** 2, x[:1] * 2.0, x, x[:2]]),
                          np.ones(5))
    assert tape.listing().splitlines()[-1] == "  return v0..v5, x0..x4, x0, x1"


def test_listing_shows_constants():
    tape = tapejit.record(lambda x: 2.5 * x, 1.0)
    assert "mul(2.5, x0)" in tape.listing()


def test_opcodes_and_args_are_read_only():
    tape = tapejit.record(lambda x: np.sin(x) * x, 1.0)
    assert tape.opcodes.tolist() == [18, 3]
    with pytest.raises(ValueError):
        tape.opcodes[0] = 19
    with pytest.raises(ValueError):
        tape.args[0, 0] = 0


# ---------------------------------------------------------------------------------------
# var and std: numpy's two passes over recorded ops
# ---------------------------------------------------------------------------------------
_SPREADS = [{}, {"axis": 0}, {"axis": 1, "ddof": 1}, {"axis": (0, 1), "keepdims": True},
            {"axis": -1, "correction": 1}, {"ddof": 2}]


@pytest.mark.parametrize("fn", [np.var, np.std])
@pytest.mark.parametrize("kw", _SPREADS)
def test_var_and_std_match_numpy_and_central_differences(fn, kw, central_diff):
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=(3, 4))
    shape = np.shape(fn(x0, **kw))
    w = np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)  # weights each result differently
    tape = tapejit.record(lambda a: np.sum(fn(a, **kw) * w), x0)
    X = rng.normal(size=(5, 12))

    def ref(points):
        return np.array([np.sum(fn(p.reshape(3, 4), **kw) * w) for p in points])

    value, grad = tape.value_and_grad(X)
    np.testing.assert_allclose(value, ref(X), rtol=1e-13)
    np.testing.assert_allclose(grad, central_diff(ref, X), rtol=1e-6, atol=1e-8)


def test_var_and_std_methods_and_their_refusals():
    x0 = np.array([1.0, 2.0, 4.0])
    assert tapejit.record(lambda a: a.std(), x0).forward(x0) == np.std(x0)
    assert tapejit.record(lambda a: a.var(ddof=1), x0).forward(x0) == np.var(x0, ddof=1)
    with pytest.raises(TracingError, match="mean="):
        tapejit.record(lambda a: np.var(a, mean=np.mean(a)), x0)
    with pytest.raises(ValueError, match="ddof and correction"):
        tapejit.record(lambda a: np.var(a, ddof=1, correction=1), x0)


def test_std_of_a_constant_input_has_a_zero_gradient():
    # sqrt's infinite derivative at 0 meets exactly zero deviations: zero, never NaN (azmul)
    value, grad = tapejit.record(np.std, np.ones(3)).value_and_grad(np.full(3, 2.0))
    assert value == 0.0 and np.array_equal(grad, np.zeros(3))
