"""Tapes as building blocks: calling a tape on numbers and inside another recording, and
the entry points for the user's own Numba code (``jit_value_and_grad``, ``jit_value``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import tapejit

RNG = np.random.default_rng(7)


def _same_tape(composed, direct, X, params=None, same_listing=True):
    """Composed and directly recorded tapes give bitwise equal values and gradients (and
    the same instructions, unless an inner family operand had to be copied into one
    block again: the copies are exact)."""
    if same_listing:
        assert (composed.listing(None).split(":", 1)[1]
                == direct.listing(None).split(":", 1)[1])
    v1, g1 = composed.value_and_grad(X, params)
    v2, g2 = direct.value_and_grad(X, params)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(g1, g2)


# -- inner functions and the outer functions that use them -----------------------------------
def g_elementwise(v):
    return np.sin(v) * v + np.cumsum(v) ** 2


def g_matrix(v):
    M = v.reshape(3, 4)
    W = np.arange(12.0).reshape(4, 3) / 7.0
    return np.tanh(M @ W).sum(axis=0) + np.max(M, axis=1) * np.exp(-M[:, ::2].sum(axis=1))


def g_gather(v):
    idx = np.array([3, 0, 2, 2, 1])
    return np.where(v[idx] > 0.1, v[idx] ** 3, -v[idx]) * np.array([1.0, 2, 3, 4, 5])


CASES = {
    # name: (inner function, inner argument shape, outer function of (inner, x), n_x)
    "elementwise": (g_elementwise, (3,), lambda g, x: np.sum(g(x[:3] * 2)) + x[3], 4),
    "matrix": (g_matrix, (12,), lambda g, x: np.sum(g(x[::-1] + x[0]) ** 2), 12),
    "gather": (g_gather, (4,), lambda g, x: np.prod(g(np.sqrt(x * x + 1.0))), 4),
    "broadcast": (g_elementwise, (3,), lambda g, x: np.sum(g(x[0] * np.ones(3))), 2),
    "partly_constant": (
        g_matrix, (12,),
        lambda g, x: np.sum(g(np.concatenate([x, np.linspace(0.0, 1.0, 9)]))), 3,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_composed_equals_directly_recorded(name):
    g, shape, outer, n = CASES[name]
    inner = tapejit.record(g, np.full(shape, 0.3))
    composed = tapejit.record(lambda x: outer(inner, x), np.full(n, 0.5))
    direct = tapejit.record(lambda x: outer(g, x), np.full(n, 0.5))
    assert composed.n_inputs == direct.n_inputs == n
    X = RNG.uniform(0.2, 1.5, size=(7, n))
    # partly constant: the inner tape's copy of a strided reduce operand is re-emitted
    # as an elementwise copy whose constant elements fold, so it is copied once more
    same = name != "partly_constant"
    _same_tape(composed, direct, X, same_listing=same)
    _same_tape(composed, direct, X[0], same_listing=same)


def test_several_arguments_and_outputs():
    def g(a, b):
        return a * b[0], np.sum(b ** 2) - a[1]

    inner = tapejit.record(g, np.zeros(2), np.zeros((2, 2)))
    assert inner.input_shapes == ((2,), (2, 2))

    def outer(h, x):
        u, s = h(x[:2], x[2:].reshape(2, 2))
        return np.sum(u * u) + s * x[0]

    composed = tapejit.record(lambda x: outer(inner, x), np.ones(6))
    direct = tapejit.record(lambda x: outer(g, x), np.ones(6))
    _same_tape(composed, direct, RNG.normal(size=(5, 6)))


def test_calls_follow_the_tapes_shape_attributes():
    # a call keeps the shapes it takes and returns while those attributes are the same
    # objects; replacing one is seen by the next call
    tape = tapejit.record(lambda x: x * 2.0, np.zeros((2, 2)))
    assert tape(np.ones((2, 2))).shape == (2, 2)
    tape.output_shapes = ((4,),)
    assert tape(np.ones((2, 2))).shape == (4,)
    tape.input_shapes = ((4,),)
    np.testing.assert_array_equal(tape(np.arange(4.0)), 2.0 * np.arange(4.0))


def test_nested_two_levels():
    def g1(v):
        return np.exp(-v) * np.cos(v)

    def g2(h, w):
        return np.sum(h(w[1:] - w[:-1]) ** 2) + np.log1p(w[0] ** 2)

    def g3(h, x):
        return g2(h, x[:5]) * g2(h, x[3:]) + x[2]

    t1 = tapejit.record(g1, np.zeros(4))
    t2 = tapejit.record(lambda w: g2(t1, w), np.zeros(5))
    composed = tapejit.record(lambda x: t2(x[:5]) * t2(x[3:]) + x[2], np.ones(8))
    direct = tapejit.record(lambda x: g3(g1, x), np.ones(8))
    _same_tape(composed, direct, RNG.normal(size=(6, 8)))


def test_tape_with_params():
    def model(w, data):
        return np.sum((w[0] * np.sin(w[1] * data[0]) - data[1]) ** 2)

    data = RNG.normal(size=(2, 5))
    inner = tapejit.record(model, np.ones(2), data, argnums=0)
    assert inner.n_params == 10

    # fixed data: the parameters become constants of the outer tape
    composed = tapejit.record(lambda w: inner(w * 2.0, params=data) + w[0], np.ones(2))
    direct = tapejit.record(lambda w: model(w * 2.0, data) + w[0], np.ones(2))
    _same_tape(composed, direct, RNG.normal(size=(4, 2)))

    # traced data: parameters of the inner tape can be parameters of the outer one
    composed = tapejit.record(lambda w, d: inner(w, params=d), np.ones(2), data, argnums=0)
    direct = tapejit.record(model, np.ones(2), data, argnums=0)
    _same_tape(composed, direct, RNG.normal(size=(4, 2)), data.ravel())

    # and traced inputs of the outer tape can feed the inner tape's parameters
    composed = tapejit.record(lambda w: inner(w[:2], params=w[2:]), np.ones(12))
    v, g = composed.value_and_grad(np.concatenate([[1.5, 0.7], data.ravel()]))
    v2, g2 = tapejit.value_and_grad(model, argnums=(0, 1))(np.array([1.5, 0.7]), data)
    np.testing.assert_allclose(v, v2, rtol=1e-14)
    np.testing.assert_allclose(g, np.concatenate([g2[0], g2[1].ravel()]), rtol=1e-13)


def _branchy(v):
    if v[0] > 0.0:
        return np.sum(v ** 2)
    return np.sum(np.abs(v))


def test_guards_carry_over():
    inner = tapejit.record(_branchy, np.array([1.0, 2.0]))
    assert inner.n_guards == 1
    composed = tapejit.record(lambda x: inner(x - 1.0) * x[1], np.array([3.0, 1.0]))
    assert composed.n_guards == 1
    direct = tapejit.record(lambda x: _branchy(x - 1.0) * x[1], np.array([3.0, 1.0]))
    X = np.array([[3.0, 1.0], [2.0, -1.0]])
    _same_tape(composed, direct, X)
    # a point whose inner argument takes the other branch is still detected
    with pytest.raises(tapejit.BranchError):
        composed.forward(np.array([0.5, 1.0]))
    _, valid = composed.forward(np.array([[2.0, 1.0], [0.5, 1.0]]), check="mask")
    assert valid.tolist() == [True, False]
    # recording the outer function where the inner branch does not hold
    with pytest.raises(tapejit.BranchError):
        tapejit.record(lambda x: inner(x - 1.0), np.array([0.5, 1.0]))
    # a guard decided by constants in the outer recording: checked, not recorded
    t = tapejit.record(lambda x: inner(np.stack([np.float64(2.0), x[0]])), np.ones(1))
    assert t.n_guards == 0
    assert t.forward(np.array([3.0])) == 13.0
    with pytest.raises(tapejit.BranchError):
        tapejit.record(lambda x: inner(np.stack([np.float64(-2.0), x[0]])), np.ones(1))


def test_truth_values_stay_truth_values():
    inner = tapejit.record(lambda v: (v[0] > v[1], v * 2.0), np.array([2.0, 1.0]))

    def outer(h, x):
        c, y = h(x)
        return np.sum(y) if c else -x[0]

    composed = tapejit.record(lambda x: outer(inner, x), np.array([3.0, 1.0]))
    direct = tapejit.record(lambda x: outer(lambda v: (v[0] > v[1], v * 2.0), x),
                            np.array([3.0, 1.0]))
    assert composed.n_guards == direct.n_guards == 1
    _same_tape(composed, direct, np.array([[3.0, 1.0], [4.0, 2.0]]))


def test_transforms_record_through_a_tape():
    inner = tapejit.record(g_elementwise, np.zeros(3))
    grad = tapejit.grad(lambda x: np.sum(inner(x) ** 2))
    direct = tapejit.grad(lambda x: np.sum(g_elementwise(x) ** 2))
    x = np.array([0.1, -0.4, 0.8])
    np.testing.assert_array_equal(grad(x), direct(x))


# -- calling on numbers ------------------------------------------------------------------------
def test_call_on_numbers_equals_forward():
    inner = tapejit.record(g_matrix, np.zeros(12))
    x = RNG.normal(size=12)
    np.testing.assert_array_equal(inner(x), inner.forward(x))
    np.testing.assert_array_equal(inner(x), g_matrix(x))

    scalar = tapejit.record(lambda a, b: a * np.sum(b), 1.0, np.zeros((2, 2)))
    out = scalar(2.0, np.ones((2, 2)))
    assert isinstance(out, float) and out == 8.0

    two = tapejit.record(lambda a: (a.T * 2.0, np.sum(a)), np.zeros((2, 3)))
    a = np.arange(6.0).reshape(2, 3)
    u, s = two(a)
    np.testing.assert_array_equal(u, a.T * 2.0)
    assert s == 15.0

    model = tapejit.record(lambda w, d: np.sum(w * d), np.ones(3), np.ones(3), argnums=0)
    assert model(np.ones(3), params=[1.0, 2.0, 3.0]) == 6.0
    with pytest.raises(tapejit.BranchError):
        tapejit.record(_branchy, np.ones(2))(np.array([-1.0, 0.0]))


def test_calls_on_one_float_vector_equal_the_general_path():
    # tape(x) with x a float64 vector of the recorded shape and one number out skips the
    # tracer lookup and the second validation (as forward does for such an x): the same
    # results and errors as every other way in
    tape = tapejit.record(lambda x: np.sum(np.sin(x) * x), np.zeros(5))
    x = RNG.normal(size=5)
    want = tape.forward(x[None])[0]  # the batched path
    assert tape(x) == want and type(tape(x)) is float
    assert tape(list(x)) == want  # through the general path
    wide = np.repeat(x, 2)
    assert tape(wide[::2]) == want  # not contiguous: forward's general path
    assert tape(x.astype(np.float32)) == tape(x.astype(np.float32).astype(np.float64))
    assert tape(np.arange(5)) == tape(np.arange(5.0))
    with pytest.raises(ValueError, match=r"must have shape \(5,\); got \(4,\)"):
        tape(np.ones(4))
    with pytest.raises(TypeError, match="real numbers"):
        tape(np.array(["a"] * 5))
    branchy = tapejit.record(_branchy, np.ones(2))
    assert branchy(np.array([1.0, 2.0])) == branchy.forward(np.array([[1.0, 2.0]]))[0]
    with pytest.raises(tapejit.BranchError):
        branchy(np.array([-1.0, 0.0]))


def test_tape_from_arrays_takes_a_vector():
    base = tapejit.record(lambda x: (np.sum(x[:2]), x[2] * x[0]), np.zeros(3))
    bare = tapejit.Tape(base.opcodes, base.args, base.consts, base.inputs, base.params,
                        base.outputs, sizes=base.sizes, strides=base.strides,
                        attrs=base.attrs, attr_offsets=base.attr_offsets)
    out = bare(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(out, [3.0, 3.0])
    composed = tapejit.record(lambda x: np.sum(bare(x * x)), np.ones(3))
    assert composed.forward(np.array([1.0, 2.0, 3.0])) == 5.0 + 9.0


@pytest.mark.parametrize("call, match", [
    (lambda t: t(np.ones(3)), r"takes 2 argument\(s\) of shape\(s\) \(3,\), \(\); got 1"),
    (lambda t: t(np.ones(3), 1.0, 2.0), r"takes 2 argument\(s\).*got 3"),
    (lambda t: t(np.ones(4), 1.0), r"argument 0 of tape 'f' must have shape \(3,\); got \(4,\)"),
    (lambda t: t(np.ones(3), np.ones(1)), r"argument 1 .* shape \(\); got \(1,\)"),
    (lambda t: tapejit.record(lambda x: t(x, x[0]), np.ones(2)), r"shape \(3,\); got \(2,\)"),
    (lambda t: tapejit.record(lambda x: t(x), np.ones(3)), r"takes 2 argument"),
])
def test_bad_arguments(call, match):
    def f(a, b):
        return np.sum(a) * b

    t = tapejit.record(f, np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=match):
        call(t)


def test_bad_params():
    t = tapejit.record(lambda w, d: np.sum(w * d), np.ones(3), np.ones(3), argnums=0)
    with pytest.raises(ValueError, match="3 parameters"):
        t(np.ones(3))
    with pytest.raises(ValueError, match="3 parameters; got params of shape"):
        t(np.ones(3), params=np.ones(2))
    with pytest.raises(ValueError, match="3 parameters; got params of shape"):
        tapejit.record(lambda x: t(x, params=x[:2]), np.ones(3))


# -- Numba entry points ------------------------------------------------------------------------
_DESCEND = '''
def _descend(args, x, steps, lr):
    """A user's gradient descent in Numba: value and gradient from the tape."""
    g = np.empty_like(x)
    values = np.empty(steps)
    for k in range(steps):
        values[k] = tapejit.jit_value_and_grad(args, x, g)
        x -= lr * g
    return values, tapejit.jit_value(args, x)
'''
exec(_DESCEND)
# The user's Numba code calls the optimised kernels: it compiles them wherever they are not
# in the cache yet (on the generic tier too), so these run with the tests of the kernels.
_NUMBA_ENTRY_POINTS = pytest.mark.kernels
# Not cached here: a cache in tests/__pycache__ would go stale whenever the kernels change
# (the cross-process tests below cache a copy in a temporary directory instead).
_descend = numba.njit(_descend)  # noqa: F821 (defined by the exec)


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@_NUMBA_ENTRY_POINTS
def test_jit_gradient_descent_matches_value_and_grad():
    tape = tapejit.record(_rosen, np.zeros(4))
    args = tape.jit_args()
    x = np.full(4, 0.5)
    values, last = _descend(args, x, 200, 1e-3)
    # the same loop in Python over tape.value_and_grad, bit for bit
    y = np.full(4, 0.5)
    for k in range(200):
        v, g = tape.value_and_grad(y)
        assert values[k] == v
        y -= 1e-3 * g
    np.testing.assert_array_equal(x, y)
    assert last == tape.forward(y)
    assert values[-1] < values[0]
    # from Python, the same functions
    g = np.empty(4)
    assert tapejit.jit_value_and_grad(args, y, g) == tape.value_and_grad(y)[0]
    np.testing.assert_array_equal(g, tape.gradient(y))
    assert tapejit.jit_value(args, y) == tape.forward(y)


@_NUMBA_ENTRY_POINTS
def test_numba_entry_points_call_the_kernels_the_tapes_use():
    """A bundle's program is read-only, the tapes' is not: the entry points pass it typed
    as the tapes do, in compiled code and from Python, so they run the kernels the cache
    already holds instead of compiling read-only variants of them (a minute each)."""
    from tapejit._kernels.runtime import kernels

    tape = tapejit.record(lambda x, p: np.sum(np.sin(x) * x) * p[0], np.ones(3), np.ones(1),
                          argnums=0)
    x, p = np.array([0.5, 1.0, 2.0]), np.array([1.5])
    v0, g0 = tape.value_and_grad(x, p)
    y0 = tape.forward(x, p)
    module = kernels().module
    before = {n: set(getattr(module, n).signatures) for n in ("value_grad_point", "forward_point")}

    @numba.njit
    def both(args, x, g):
        return tapejit.jit_value_and_grad(args, x, g), tapejit.jit_value(args, x)

    g = np.empty(3)
    args = tape.jit_args(params=p)
    assert both(args, x, g) == (v0, y0)
    np.testing.assert_array_equal(g, g0)
    g = np.empty(3)  # from Python too
    assert (tapejit.jit_value_and_grad(args, x, g), tapejit.jit_value(args, x)) == (v0, y0)
    np.testing.assert_array_equal(g, g0)
    assert not args.prog.flags.writeable and not args.consts.flags.writeable
    after = {n: set(getattr(module, n).signatures) for n in before}
    assert after == before


@_NUMBA_ENTRY_POINTS
def test_jit_params_guards_and_errors():
    data = np.array([0.5, 1.5, -1.0])
    model = tapejit.record(lambda w, d: np.sum((w[0] * d - w[1]) ** 2), np.ones(2), data,
                           argnums=0)
    args = model.jit_args(params=data)
    values, _ = _descend(args, np.zeros(2), 3, 0.0)
    assert values[0] == model.forward(np.zeros(2), params=data)
    args.params[:] = 2 * data  # parameters may be changed in place
    values, _ = _descend(args, np.ones(2), 1, 0.0)
    assert values[0] == model.forward(np.ones(2), params=2 * data)

    branchy = tapejit.record(_branchy, np.ones(2))
    values, last = _descend(branchy.jit_args(), np.array([-1.0, 1.0]), 1, 0.1)
    assert np.isnan(values[0]) and np.isnan(last)  # left the recorded branch

    with pytest.raises(ValueError, match="n_inputs"):
        _descend(args, np.zeros(3), 1, 0.1)
    with pytest.raises(ValueError, match="n_inputs"):
        tapejit.jit_value_and_grad(args, np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="3 parameters"):
        model.jit_args()
    with pytest.raises(ValueError, match="params must have 3 values"):
        model.jit_args(params=np.ones(2))
    two = tapejit.record(lambda x: x * 2.0, np.ones(2))
    with pytest.raises(ValueError, match="one output"):
        _descend(two.jit_args(), np.zeros(2), 1, 0.1)
    with pytest.raises(TypeError, match="JitArgs"):
        tapejit.jit_value(tuple(args), np.zeros(2))
    assert not args.prog.flags.writeable and not args.consts.flags.writeable
    # a bundle for other kernels (as a function cached against an older op table sees)
    other = args._replace(stamp=args.stamp + 1)
    with pytest.raises(RuntimeError, match="other tapejit kernels"):
        _descend(other, np.zeros(2), 1, 0.1)
    with pytest.raises(RuntimeError, match="other tapejit kernels"):
        tapejit.jit_value(other, np.zeros(2))


def _user_module(tmp_path) -> None:
    """A user's module with a ``cache=True`` function calling the entry points."""
    (tmp_path / "user_descend.py").write_text(
        "import numba\nimport numpy as np\nimport tapejit\n" + _DESCEND
        + "\n_descend = numba.njit(cache=True)(_descend)\n")


def _run_user(tmp_path, head: str = ""):
    here = os.path.dirname(os.path.abspath(__file__))
    script = (
        "import json, sys, numpy as np\n"
        f"sys.path[:0] = [{str(tmp_path)!r}, {here!r}]\n"
        "import tapejit, test_compose as t\n" + head +
        "from user_descend import _descend\n"
        "tape = tapejit.record(t._rosen, np.zeros(4))\n"
        "x = np.full(4, 0.5)\n"
        "try:\n"
        "    values, last = _descend(tape.jit_args(), x, 5, 1e-3)\n"
        "except RuntimeError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
        "else:\n"
        "    print(json.dumps([values.tolist(), sum(_descend.stats.cache_hits.values())]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(here)}
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


@_NUMBA_ENTRY_POINTS
def test_jit_entry_point_is_cached_across_processes(tmp_path):
    """A user's ``cache=True`` function that calls the entry point loads from Numba's cache
    in a fresh process (the kernels come from the dynamically generated module)."""
    _user_module(tmp_path)
    runs = [_run_user(tmp_path) for _ in range(2)]
    assert runs[1][1] >= 1  # the second process at least loads it from the cache
    assert runs[0][0] == runs[1][0]
    tape = tapejit.record(_rosen, np.zeros(4))
    assert runs[1][0][0] == tape.forward(np.full(4, 0.5))


@_NUMBA_ENTRY_POINTS
def test_jit_function_cached_against_other_kernels_raises(tmp_path):
    """A user's function cached against other kernels (here: another stamp, as after an
    op-table change) loads and raises the clear error, never runs them."""
    _user_module(tmp_path)
    head = "tapejit._jit_api.kernel_stamp = lambda: 12345\n"
    assert _run_user(tmp_path, head)[1] == 0  # compiled and cached with that stamp
    assert "other tapejit kernels" in _run_user(tmp_path)


def test_kernel_modules_of_other_kernels_import(tmp_path):
    """Loading such a cached function imports the kernel module it was compiled against:
    one that is no longer in the cache directory imports as an empty stand-in (its stamp
    check then raises), not as ModuleNotFoundError."""
    script = (
        "import importlib, tapejit\n"
        "m = importlib.import_module('tapejit_kernels_' + '0' * 16)\n"
        "print(m._tapejit_stand_in)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.split()[-1] == "True"
