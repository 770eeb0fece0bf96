"""Second-order and forward-mode derivatives (issue 4): jvp, vjp, jacobian modes, hvp,
hessian, on the Tape and through the transforms.

* Per op of ``tapejit.OPS`` (parametrized from the table; each op is reached through its
  numpy reference ``op.numpy`` or ``op.trace``, the way user code reaches it, and sampled
  by ``tests/_op_helpers.py`` from the table): the tangent sweep agrees
  with the adjoint sweep (``w @ (J v) == v @ (J^T w)``), forward-mode Jacobians equal
  reverse-mode ones, and Hessians agree with central differences of the tape's own
  gradient; plus the documented conventions at edge points (``pow(0, y)``, ``abs`` at 0,
  ``maximum`` ties, ``hypot`` at the origin, ``np.where``-guarded singularities).
* Closed-form Hessians: the seed examples and the extended Rosenbrock function.
* Structural properties: exact symmetry of Hessians, ``hvp == hessian @ v``, batched
  results bitwise equal to point-by-point ones, multi-output vjp, ``stop_gradient``.
* The transforms ``tapejit.jvp/jacobian/hessian/hvp`` against the Tape methods, sharing
  one tape cache with ``tapejit.grad``.
* Hypothesis: random small programs (own generator, smooth and piecewise ops).
"""

from __future__ import annotations

import numpy as np
import pytest
from _op_helpers import (
    BY_NAME,
    OP_NAMES,
    away_from_kinks,
    fixed_operands,
    same_bits,
    sample,
    spec,
    tape_of,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tapejit
from tapejit import OPS
from tapejit._ops import (
    FAST_BLOCK,
    FAST_BROADCAST,
    LINEAR,
    ORDER_OPERAND,
    PIECEWISE,
    ZERO_DERIVATIVE,
)

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

N_POINTS = 400


def assert_close_scaled(got, ref, rtol, axis_points=0):
    """``|got - ref| <= rtol * (|ref| + 1 + max |ref| of the same point)``: entries that
    cancel to about zero are held to the scale of their point, not to themselves."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if ref.size == 0:
        return
    n = ref.shape[axis_points] if ref.ndim else 1
    scale = 1.0 + np.max(np.abs(ref.reshape(n, -1)), axis=1)
    scale = scale.reshape((n,) + (1,) * max(ref.ndim - 1, 0)) if ref.ndim else scale[0]
    err = np.abs(got - ref)
    ok = err <= rtol * (np.abs(ref) + scale)
    assert np.all(ok), (
        f"max err {np.max(err)}; got {got[~ok][:4]} ref {ref[~ok][:4]}"
    )


# ---------------------------------------------------------------------------------------
# per op: tangent vs adjoint, forward vs reverse Jacobian, Hessian vs differences
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OP_NAMES)
def test_tangent_equals_adjoint(name, rng_seed):
    """``w (J v) == v . (J^T w)``: the tangent sweep and the adjoint sweep agree."""
    op = BY_NAME[name]
    tape = tape_of(name)
    X = sample(op, N_POINTS, rng_seed)
    rng = np.random.default_rng([rng_seed, op.code, 1])
    V = rng.normal(size=X.shape)
    w = rng.normal(size=(N_POINTS, 1))
    jv = tape.jvp(X, V)
    assert jv.shape == (N_POINTS,)
    y, vjp = tape.vjp(X, w)
    np.testing.assert_array_equal(y[:, 0], tape.forward(X))
    lhs = w[:, 0] * jv
    rhs = np.sum(V * vjp, axis=1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12 * np.max(np.abs(rhs)))
    # one direction for every point == that direction repeated per point
    v1 = V[0]
    np.testing.assert_array_equal(tape.jvp(X, v1), tape.jvp(X, np.tile(v1, (N_POINTS, 1))))
    if ZERO_DERIVATIVE in op.flags:
        np.testing.assert_array_equal(jv, 0.0)
        np.testing.assert_array_equal(vjp, 0.0)


@pytest.mark.parametrize("name", OP_NAMES)
def test_jacobian_forward_equals_reverse(name, rng_seed):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = sample(op, N_POINTS, rng_seed + 1)
    Jf = tape.jacobian(X, mode="forward")
    Jr = tape.jacobian(X, mode="reverse")
    assert Jf.shape == Jr.shape == (N_POINTS, 1, op.arity)
    # one op: every entry is the op's partial itself in both modes
    np.testing.assert_array_equal(Jf, Jr)
    np.testing.assert_array_equal(tape.jacobian(X), Jr)  # auto: reverse (1 output)
    np.testing.assert_array_equal(Jr[:, 0, :], tape.gradient(X))
    for i in (0, 3, N_POINTS - 1):
        np.testing.assert_array_equal(tape.jacobian(X[i], mode="forward"), Jf[i])
        np.testing.assert_array_equal(tape.jacobian(X[i], mode="reverse"), Jr[i])


@pytest.mark.parametrize("name", OP_NAMES)
def test_hessian_matches_differences_of_gradient(name, rng_seed, central_diff):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = away_from_kinks(op, sample(op, N_POINTS, rng_seed + 2))
    assert len(X) > N_POINTS // 2
    H = tape.hessian(X)
    assert H.shape == (len(X), op.arity, op.arity)
    if ZERO_DERIVATIVE in op.flags or LINEAR in op.flags or PIECEWISE in op.flags:
        # linear pieces: the Hessian is exactly zero (never -0.0 vs NaN games)
        np.testing.assert_array_equal(H, 0.0)
        return
    fd = central_diff(tape.gradient, X, fixed=fixed_operands(op))  # (n, k, j) = d g_k / d x_j
    assert_close_scaled(H, fd, rtol=1e-6)
    np.testing.assert_array_equal(H, H.transpose(0, 2, 1))


@pytest.mark.parametrize("name", OP_NAMES)
def test_hvp_and_batched_second_order_per_point(name, rng_seed):
    """``hvp == hessian @ v``; batched hessian/hvp/jvp bitwise equal to one point."""
    op = BY_NAME[name]
    tape = tape_of(name)
    X = sample(op, 64, rng_seed + 3)
    V = np.random.default_rng([rng_seed, op.code, 3]).normal(size=X.shape)
    H = tape.hessian(X)
    HV = tape.hvp(X, V)
    assert HV.shape == X.shape
    with np.errstate(invalid="ignore"):
        ref = np.einsum("nij,nj->ni", H, V)
    assert_close_scaled(HV, ref, rtol=1e-12)
    JV = tape.jvp(X, V)
    for i in range(0, 64, 5):
        np.testing.assert_array_equal(tape.hessian(X[i]), H[i])
        np.testing.assert_array_equal(tape.hvp(X[i], V[i]), HV[i])
        assert tape.jvp(X[i], V[i]) == JV[i]


def _block_modes(op):
    """The operand layouts of the one-point block fast paths (from the op's flags):
    every operand a contiguous block, or (``FAST_BROADCAST``) one of two a scalar."""
    if op.arity == 2 and FAST_BROADCAST in op.flags:
        return ["vv", "sv", "vs"]
    return ["v" * op.arity]


BLOCK_CASES = [(op.name, mode) for op in OPS if FAST_BLOCK in op.flags
               for mode in _block_modes(op)]


@pytest.mark.parametrize("name, mode", BLOCK_CASES)
def test_blocks_of_several_directions_at_one_point_give_the_bits_of_many_points(name, mode):
    """A one-point forward Jacobian and Hessian carry every input's direction in one
    sweep over a block instruction of a ``FAST_BLOCK`` op, in each operand layout its
    one-direction fast paths take; the batched sweeps run the chunk's element loop.
    The same results."""
    op, width = BY_NAME[name], 7

    def f(x):
        return spec(op)(*(x[k * width] if m == "s" else x[k * width : (k + 1) * width]
                          for k, m in enumerate(mode)))

    S = sample(op, 4 * width, seed=11)  # per point, its operands' blocks one after another
    X = np.stack([S[q * width : (q + 1) * width].T.ravel() for q in range(4)])
    block = tapejit.record(f, X[0])
    assert op.code in block.opcodes[block.sizes == width], block.listing()
    loss = tapejit.record(lambda x: np.sum(f(x) ** 2), X[0])
    J, H = block.jacobian(X, mode="forward"), loss.hessian(X)
    for q in range(4):
        # equal values (a zero tangent's sign aside: one point's neg gives -0.0, its
        # element loop negating, the batched element loop 0.0 - 0.0)
        np.testing.assert_array_equal(block.jacobian(X[q], mode="forward"), J[q])
        assert same_bits(loss.hessian(X[q]), H[q]), q


MULTI_ARY = [op.name for op in OPS if op.arity > 1]


@pytest.mark.parametrize("name", MULTI_ARY)
def test_same_variable_in_every_operand(name, rng_seed, central_diff):
    """``op(x, x[, x])``: the Hessian sums every entry of the op's Hessian (the cross
    second partials counted twice), and agrees with differences of the gradient. (Not
    for an op whose first operand is a derivative order: ``polygamma(x, x)`` is NaN at
    any ``x`` that is not an order.)"""
    op = BY_NAME[name]
    if ORDER_OPERAND in op.flags:
        pytest.skip("the first operand is a derivative order")
    lo = max(d[0] for d in op.domain)
    hi = min(d[1] for d in op.domain)
    if lo >= hi:  # clip's bounds do not overlap; clip(x, x, x) == x anywhere
        lo, hi = op.domain[0]
    x = np.random.default_rng([rng_seed, op.code, 5]).uniform(lo, hi, size=(200, 1))
    f = spec(op)
    tape = tapejit.record(lambda t: f(*([t] * op.arity)), 0.5 * (lo + hi))
    H = tape.hessian(x)[:, 0, 0]
    H_full = tape_of(name).hessian(np.tile(x, (1, op.arity)))
    np.testing.assert_allclose(H, H_full.sum(axis=(1, 2)), rtol=1e-13, atol=1e-13)
    if PIECEWISE not in op.flags:  # op(x, x) of a piecewise op sits on its kink
        assert_close_scaled(H, central_diff(tape.gradient, x)[:, 0, 0], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# documented conventions at edge points
# ---------------------------------------------------------------------------------------
def _hess(f, *point):
    """Record ``f``; its Hessian at ``point``, checked equal one point and batched."""
    tape = tapejit.record(f, *([1.0] * len(point)))
    x = np.array(point, dtype=np.float64)
    H = tape.hessian(x)
    Hb = tape.hessian(np.tile(x, (3, 1)))
    for h in Hb:
        np.testing.assert_array_equal(h, H)
    return H


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ((0.0, 2.0), [[2.0, 0.0], [0.0, 0.0]]),  # a^2: d2/da2 = 2; cross and bb -> 0
        ((0.0, 3.0), [[0.0, 0.0], [0.0, 0.0]]),
        # a^1 at a == 0: d2/da db = a^(b-1) (1 + b ln a) -> -inf (the nested derivative)
        ((0.0, 1.0), [[0.0, -np.inf], [-np.inf, 0.0]]),
        ((2.0, 0.0), [[0.0, 0.5], [0.5, np.log(2.0) ** 2]]),  # a^0: no a-curvature
        ((2.0, 3.0), [[12.0, 4.0 * (1.0 + 3.0 * np.log(2.0))],
                      [4.0 * (1.0 + 3.0 * np.log(2.0)), 8.0 * np.log(2.0) ** 2]]),
    ],
)
def test_pow_hessian_at_zero_base_and_zero_exponent(point, expected):
    H = _hess(lambda a, b: np.power(a, b), *point)
    assert not np.isnan(H).any()
    np.testing.assert_allclose(H, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("y", [0.5, 1.0, 2.0, 3.25])
def test_pow_zero_constant_base_has_zero_hessian(y):
    H = _hess(lambda e: 0.0**e, y)
    np.testing.assert_array_equal(H, [[0.0]])


def test_pow_constant_exponent_at_zero():
    np.testing.assert_array_equal(_hess(lambda a: a**2.5, 0.0), [[0.0]])
    np.testing.assert_array_equal(_hess(lambda a: a**3.0, 0.0), [[0.0]])
    # a^1.875: the true second derivative at 0 is +inf (like sqrt's derivative at 0)
    np.testing.assert_array_equal(_hess(lambda a: a**1.875, 0.0), [[np.inf]])


@pytest.mark.parametrize(
    ("f", "x", "h"),
    [
        (np.sqrt, 0.0, -np.inf),
        (np.log, 0.0, -np.inf),
        (np.reciprocal, 0.0, np.inf),
    ],
)
def test_true_infinite_second_derivative(f, x, h):
    np.testing.assert_array_equal(_hess(f, x), [[h]])


def test_abs_has_zero_hessian_at_zero():
    np.testing.assert_array_equal(_hess(np.abs, 0.0), [[0.0]])
    np.testing.assert_array_equal(_hess(np.abs, -1.5), [[0.0]])
    # |x| x has second derivative 2 sign(x): 0 at 0
    f = lambda x: np.abs(x) * x  # noqa: E731
    np.testing.assert_array_equal(_hess(f, 0.0), [[0.0]])
    np.testing.assert_array_equal(_hess(f, 2.0), [[2.0]])
    np.testing.assert_array_equal(_hess(f, -2.0), [[-2.0]])


@pytest.mark.parametrize("fn", [np.maximum, np.minimum])
def test_max_min_ties_in_the_hessian(fn):
    np.testing.assert_array_equal(_hess(fn, 1.25, 1.25), np.zeros((2, 2)))
    np.testing.assert_array_equal(_hess(lambda x: fn(x, x) * x, -0.75), [[2.0]])
    # at a tie each operand gets half the adjoint, so half of x^2's curvature survives
    np.testing.assert_array_equal(_hess(lambda x, y: fn(x * x, y), 1.0, 1.0),
                                  [[1.0, 0.0], [0.0, 0.0]])
    # away from the tie: x^2's curvature where x^2 is selected, none where y is
    for x2, y in ((3.0, 1.0), (1.0, 3.0)):
        selected = (x2 > y) == (fn is np.maximum)
        expected = [[2.0, 0.0], [0.0, 0.0]] if selected else np.zeros((2, 2))
        np.testing.assert_array_equal(_hess(lambda x, y: fn(x * x, y), np.sqrt(x2), y),
                                      expected)


def test_hypot_and_clip_edges():
    np.testing.assert_array_equal(_hess(np.hypot, 0.0, 0.0), np.zeros((2, 2)))
    H = _hess(np.hypot, 3.0, 4.0)  # [[b^2, -ab], [-ab, a^2]] / r^3
    np.testing.assert_allclose(H, np.array([[16.0, -12.0], [-12.0, 9.0]]) / 125.0, rtol=1e-15)
    for point in ((-1.0, -1.0, 1.0), (1.0, -1.0, 1.0), (0.0, -1.0, 1.0), (2.0, -1.0, 1.0)):
        np.testing.assert_array_equal(_hess(np.clip, *point), np.zeros((3, 3)))


@pytest.mark.parametrize("x", [0.0, -0.0, -1.0, -1e-300])
def test_where_guarded_singularities_have_zero_hessian(x):
    np.testing.assert_array_equal(
        _hess(lambda t: np.where(t > 0, np.log(t), 0.0), x), [[0.0]])
    np.testing.assert_array_equal(
        _hess(lambda t: np.where(t > 0, np.sqrt(t) * t, t * t), x), [[2.0]])
    tape = tapejit.record(lambda t: np.where(t > 0, np.log(t), 0.0), 1.0)
    assert tape.hvp(np.array([x]), np.array([1.0]))[0] == 0.0
    assert tape.jvp(np.array([x]), np.array([1.0])) == 0.0


# ---------------------------------------------------------------------------------------
# closed-form Hessians
# ---------------------------------------------------------------------------------------
def test_seed001_hessian():
    tape = tapejit.record(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
    H = tape.hessian(np.array([2.0, 5.0]))
    np.testing.assert_allclose(H, [[-0.25, 1.0], [1.0, np.sin(5.0)]], rtol=1e-15, atol=0)
    assert tapejit.hessian(lambda x: np.log(x[0]) + x[0] * x[1] - np.sin(x[1]))(
        np.array([2.0, 5.0])
    ) == pytest.approx(H, rel=1e-15)


def test_seed002_hessian_of_3x2y():
    tape = tapejit.record(lambda x, y: 3.0 * x**2 * y, 1.0, 1.0)
    rng = np.random.default_rng(2)
    X = rng.uniform(-3.0, 3.0, size=(100, 2))
    H = tape.hessian(X)
    x, y = X.T
    ref = np.stack([np.stack([6.0 * y, 6.0 * x], -1), np.stack([6.0 * x, 0.0 * x], -1)], 1)
    np.testing.assert_allclose(H, ref, rtol=1e-15, atol=0)


def test_seed004_hessian_of_two_x_dot_x():
    tape = tapejit.record(lambda x: 2.0 * np.dot(x, x), np.zeros(4))
    X = np.random.default_rng(4).normal(size=(20, 4))
    np.testing.assert_array_equal(tape.hessian(X), np.broadcast_to(4.0 * np.eye(4), (20, 4, 4)))
    np.testing.assert_array_equal(tape.hessian(np.arange(4.0)), 4.0 * np.eye(4))
    np.testing.assert_array_equal(tape.hvp(np.arange(4.0), np.ones(4)), 4.0 * np.ones(4))


def rosen_ext(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosen_hessian(x: np.ndarray) -> np.ndarray:
    n = len(x)
    H = np.zeros((n, n))
    i = np.arange(n - 1)
    H[i, i] += 1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0
    H[i + 1, i + 1] += 200.0
    H[i, i + 1] = H[i + 1, i] = -400.0 * x[:-1]
    return H


@pytest.mark.parametrize("n", [5, 50])
def test_extended_rosenbrock_hessian(n):
    tape = tapejit.record(rosen_ext, np.ones(n))
    rng = np.random.default_rng(n)
    X = rng.uniform(-1.5, 1.5, size=(7, n))
    H = tape.hessian(X)
    assert H.shape == (7, n, n)
    for i in range(7):
        ref = rosen_hessian(X[i])
        assert_close_scaled(H[i][None], ref[None], rtol=1e-14)
        np.testing.assert_array_equal(H[i][np.abs(ref) == 0.0], 0.0)  # the sparsity
        np.testing.assert_array_equal(tape.hessian(X[i]), H[i])
        np.testing.assert_array_equal(H[i], H[i].T)
    # at the minimum (all ones)
    np.testing.assert_allclose(tape.hessian(np.ones(n)), rosen_hessian(np.ones(n)), rtol=1e-15)
    v = rng.normal(size=n)
    assert_close_scaled(tape.hvp(X[0], v)[None], (rosen_hessian(X[0]) @ v)[None], rtol=1e-13)


@pytest.mark.parametrize("n", [1000, 3000])
def test_large_tape_hvp_and_batched_points(n):
    # n = 3000: more slots than a chunked batch allows, so batches go one point at a time
    tape = tapejit.record(rosen_ext, np.ones(n))
    rng = np.random.default_rng(n)
    X = rng.uniform(-1.5, 1.5, size=(6, n))
    V = rng.normal(size=(6, n))
    HV = tape.hvp(X, V)
    JV = tape.jvp(X, V)
    G = tape.gradient(X)
    for i in range(6):
        H = rosen_hessian(X[i])
        assert_close_scaled(HV[i][None], (H @ V[i])[None], rtol=1e-13)
        np.testing.assert_array_equal(tape.hvp(X[i], V[i]), HV[i])
        assert tape.jvp(X[i], V[i]) == JV[i]
        np.testing.assert_allclose(JV[i], G[i] @ V[i], rtol=1e-12)


def test_long_tape_of_blocks_batches_hvps_point_by_point(monkeypatch):
    # rosen_ext at n = 1000: blocks of 999 elements, hvp chunks of two points. The
    # one-point kernel runs at each point instead (several times faster): the same bits
    # as the batched kernel, which a zero bound forces.
    import tapejit._tape as tape_module

    tape = tapejit.record(rosen_ext, np.ones(1000))
    rng = np.random.default_rng(4)
    X = rng.uniform(-1.5, 1.5, size=(9, 1000))
    V = rng.normal(size=(9, 1000))
    kernels = []
    run = tape_module.run_batch
    monkeypatch.setattr(tape_module, "run_batch",
                        lambda ks, kernel, *args: kernels.append(kernel) or run(ks, kernel, *args))
    HV = tape.hvp(X, V)
    assert "hvp_batch" not in kernels
    monkeypatch.setattr(tape_module, "BLOCK_POINTWISE_HVP_CHUNK", 0)
    np.testing.assert_array_equal(tape.hvp(X, V), HV)
    assert "hvp_batch" in kernels
    assert_close_scaled(HV[:1], (rosen_hessian(X[0]) @ V[0])[None], rtol=1e-13)


def test_second_order_with_parameters():
    def f(x, p):
        return np.sum(np.sin(x * p[0]) * p[1]) + x[0] * x[1] * p[2]

    tape = tapejit.record(f, np.ones(3), np.ones(3), argnums=0)
    rng = np.random.default_rng(12)
    X, P, V = rng.normal(size=(100, 3)), rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    H = tape.hessian(X, params=P)
    HV = tape.hvp(X, V, params=P)
    JV = tape.jvp(X, V, params=P)
    for i in range(0, 100, 9):
        x, p = X[i], P[i]
        ref = np.diag(-np.sin(x * p[0]) * p[0] ** 2 * p[1])
        ref[0, 1] = ref[1, 0] = p[2]
        np.testing.assert_allclose(H[i], ref, rtol=1e-14, atol=1e-15)
        np.testing.assert_array_equal(tape.hessian(x, params=p), H[i])
        np.testing.assert_array_equal(tape.hvp(x, V[i], params=p), HV[i])
        assert tape.jvp(x, V[i], params=p) == JV[i]
    # one parameter row for every point == the row repeated, bitwise
    np.testing.assert_array_equal(tape.hessian(X, params=P[0]),
                                  tape.hessian(X, params=np.tile(P[0], (100, 1))))
    np.testing.assert_array_equal(tape.hvp(X, V, params=P[0]),
                                  tape.hvp(X, V, params=np.tile(P[0], (100, 1))))


# ---------------------------------------------------------------------------------------
# structural properties
# ---------------------------------------------------------------------------------------
def mixed(x):
    """A 6-input function with every kind of cross term."""
    return (np.sum(np.sin(x[:3]) * x[3:] ** 2) + np.exp(0.3 * x[0] * x[5])
            + np.log1p(np.sum(x * x)) + np.arctan2(x[1], 2.0 + x[2] ** 2)
            + np.hypot(x[4], x[0] + 1.0) * np.tanh(x[2]))


def test_hessian_is_exactly_symmetric_and_hvp_matches():
    tape = tapejit.record(mixed, np.ones(6))
    X = np.random.default_rng(6).uniform(-1.5, 1.5, size=(300, 6))
    H = tape.hessian(X)
    np.testing.assert_array_equal(H, H.transpose(0, 2, 1))
    assert not np.array_equal(H, np.zeros_like(H))
    V = np.random.default_rng(7).normal(size=X.shape)
    assert_close_scaled(tape.hvp(X, V), np.einsum("nij,nj->ni", H, V), rtol=1e-12)
    v = V[0]  # one direction for all points
    assert_close_scaled(tape.hvp(X, v), H @ v, rtol=1e-12)
    # hvp along the unit vectors gives the Hessian's columns before symmetrizing
    for j in range(6):
        e = np.zeros(6)
        e[j] = 1.0
        assert_close_scaled(tape.hvp(X, e), H[:, :, j], rtol=1e-12)


def test_hessian_against_differences_of_gradient(central_diff):
    tape = tapejit.record(mixed, np.ones(6))
    X = np.random.default_rng(8).uniform(-1.5, 1.5, size=(200, 6))
    assert_close_scaled(tape.hessian(X), central_diff(tape.gradient, X), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 17, 40, 300, 1000])
def test_batched_second_order_equals_point_by_point(n):
    tape = tapejit.record(mixed, np.ones(6))
    rng = np.random.default_rng(n)
    X = rng.uniform(-1.5, 1.5, size=(n, 6))
    V = rng.normal(size=(n, 6))
    H, HV, JV = tape.hessian(X), tape.hvp(X, V), tape.jvp(X, V)
    J = tape.jacobian(X, mode="forward")
    assert H.shape == (n, 6, 6) and HV.shape == (n, 6) and JV.shape == (n,)
    for i in np.unique(np.linspace(0, n - 1, 12).astype(int)):
        np.testing.assert_array_equal(tape.hessian(X[i]), H[i])
        np.testing.assert_array_equal(tape.hvp(X[i], V[i]), HV[i])
        assert tape.jvp(X[i], V[i]) == JV[i]
        np.testing.assert_array_equal(tape.jacobian(X[i], mode="forward"), J[i])
    # any sub-batch (other chunk alignment, serial or parallel driver): the same bits
    if n > 20:
        np.testing.assert_array_equal(tape.hessian(X[3:n - 2]), H[3:n - 2])
        np.testing.assert_array_equal(tape.hvp(X[5:], V[5:]), HV[5:])


def test_hessian_with_more_inputs_than_one_direction_block():
    # 40 inputs: the Hessian's directions are carried in several blocks
    def f(x):
        return np.sum(np.sin(x) * np.roll(x, 3)) + np.sum(x) ** 2 * 0.01

    tape = tapejit.record(f, np.ones(40))
    X = np.random.default_rng(40).normal(size=(30, 40))
    H = tape.hessian(X)
    np.testing.assert_array_equal(H, H.transpose(0, 2, 1))
    for i in (0, 17, 29):
        np.testing.assert_array_equal(tape.hessian(X[i]), H[i])
        cols = np.stack([tape.hvp(X[i], e) for e in np.eye(40)], axis=1)
        assert_close_scaled(H[i][None], ((cols + cols.T) / 2)[None], rtol=1e-14)


def test_multi_output_vjp_weights_and_sum_of_outputs():
    def f(x):
        return x**2 * np.sin(x), np.exp(x[0]) * x[1:]

    tape = tapejit.record(f, np.ones(3))
    assert tape.n_outputs == 5
    rng = np.random.default_rng(44)
    X = rng.normal(size=(50, 3))
    J = tape.jacobian(X)
    np.testing.assert_allclose(J, tape.jacobian(X, mode="forward"), rtol=1e-15, atol=0)
    assert tape.jacobian(X, mode="auto").shape == (50, 5, 3)
    # y.sum().backward(): w = ones is the gradient of the sum of the outputs
    _, g_sum = tape.vjp(X, np.ones(5))
    sum_tape = tapejit.record(lambda x: np.sum(np.concatenate([t for t in f(x)])), np.ones(3))
    np.testing.assert_allclose(g_sum, sum_tape.gradient(X), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(g_sum, J.sum(axis=1), rtol=1e-14, atol=1e-14)
    # weights: per point and one row for all
    W = rng.normal(size=(50, 5))
    y, gw = tape.vjp(X, W)
    np.testing.assert_array_equal(y, tape.forward(X))
    np.testing.assert_allclose(gw, np.einsum("nk,nkj->nj", W, J), rtol=1e-13, atol=1e-13)
    # tangent vs adjoint with several outputs: w . (J v) == v . (J^T w)
    V = rng.normal(size=(50, 3))
    JV = tape.jvp(X, V)
    assert JV.shape == (50, 5)
    np.testing.assert_allclose(np.sum(W * JV, 1), np.sum(V * gw, 1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one output"):
        tape.hessian(X)
    with pytest.raises(ValueError, match="one output"):
        tape.hvp(X, V)


def test_stop_gradient_in_second_order():
    def z_of(x):
        u = tapejit.stop_gradient(x * x)
        return u * x

    tape = tapejit.record(z_of, 1.0)
    X = np.linspace(-2.0, 2.0, 9)[:, None]
    np.testing.assert_array_equal(tape.gradient(X)[:, 0], X[:, 0] ** 2)  # dz/dx = u
    np.testing.assert_array_equal(tape.jvp(X, np.ones(1)), X[:, 0] ** 2)
    np.testing.assert_array_equal(tape.hessian(X), np.zeros((9, 1, 1)))
    np.testing.assert_array_equal(tape.hvp(X, np.ones(1)), np.zeros((9, 1)))
    # without the detach: d2(x^3)/dx2 = 6x
    plain = tapejit.record(lambda x: (x * x) * x, 1.0)
    np.testing.assert_allclose(plain.hessian(X)[:, 0, 0], 6.0 * X[:, 0], rtol=1e-15)
    # a vector version through the transforms
    def zv(x):
        return np.sum(tapejit.stop_gradient(x * x) * x)

    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_array_equal(tapejit.grad(zv)(x), x * x)
    np.testing.assert_array_equal(tapejit.hessian(zv)(x), np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------
# transforms: agree with the Tape methods and share the tape cache
# ---------------------------------------------------------------------------------------
def test_transforms_agree_with_tape_methods_and_share_the_cache():
    def f(x):
        return mixed(x)

    x = np.array([0.3, -0.2, 0.9, 1.1, -0.7, 0.4])
    v = np.array([1.0, 0.5, -0.25, 2.0, 0.0, -1.0])
    g = tapejit.grad(f)
    hes, hv, jac = tapejit.hessian(f), tapejit.hvp(f), tapejit.jacobian(f)
    assert g.tape_cache is hes.tape_cache is hv.tape_cache is jac.tape_cache
    gx = g(x)
    assert g.tape_cache.n_records == 1
    (tape,) = g.tape_cache.tapes
    np.testing.assert_array_equal(gx, tape.gradient(x))
    np.testing.assert_array_equal(hes(x), tape.hessian(x))
    np.testing.assert_array_equal(hv(x, v=v), tape.hvp(x, v))
    Jx = jac(x)
    assert Jx.shape == (6,)  # scalar output, one argument of shape (6,)
    np.testing.assert_array_equal(Jx, tape.jacobian(x)[0])
    y, ty = tapejit.jvp(f, (x,), (v,))
    assert y == tape.forward(x)
    assert ty == tape.jvp(x, v)
    np.testing.assert_array_equal(tapejit.jacobian(f, mode="forward")(x),
                                  tape.jacobian(x, mode="forward")[0])
    assert g.tape_cache.n_records == 1
    assert len(g.tape_cache) == 1
    assert g.tape_cache.n_calls >= 6


def test_batched_transforms_agree_with_tape_methods():
    def f(x):
        return mixed(x)

    X = np.random.default_rng(9).uniform(-1.0, 1.0, size=(500, 6))
    V = np.random.default_rng(10).normal(size=(500, 6))
    H = tapejit.hessian(f, batched=True)(X)
    HV = tapejit.hvp(f, batched=True)(X, v=V)
    J = tapejit.jacobian(f, batched=True)(X)
    vg = tapejit.value_and_grad(f, batched=True)
    cache = vg.tape_cache
    assert cache.n_records == 1
    (tape,) = cache.tapes
    np.testing.assert_array_equal(H, tape.hessian(X))
    np.testing.assert_array_equal(HV, tape.hvp(X, V))
    np.testing.assert_array_equal(J, tape.jacobian(X)[:, 0, :])
    _, gr = vg(X)
    np.testing.assert_array_equal(gr, tape.gradient(X))
    assert cache.n_records == 1


def test_transforms_with_several_arguments():
    def f(a, b, s):
        return np.sum(a * a * b) + s * np.sum(np.sin(b)) * a[0]

    a, b = np.array([0.5, -1.0]), np.array([[1.0, 2.0], [0.3, -0.4]])
    s = 0.7
    H = tapejit.hessian(f, argnums=(0, 1))(a, b, s)
    assert H[0][0].shape == (2, 2) and H[0][1].shape == (2, 2, 2)
    assert H[1][0].shape == (2, 2, 2) and H[1][1].shape == (2, 2, 2, 2)
    tape = tapejit.record(f, a, b, s, argnums=(0, 1))
    full = tape.hessian(np.concatenate([a, b.ravel()]), params=np.array([s]))
    np.testing.assert_array_equal(H[0][0], full[:2, :2])
    np.testing.assert_array_equal(H[0][1].reshape(2, 4), full[:2, 2:])
    np.testing.assert_array_equal(H[1][0].reshape(4, 2), full[2:, :2])
    np.testing.assert_array_equal(H[1][1].reshape(4, 4), full[2:, 2:])
    va, vb = np.array([1.0, 0.0]), np.ones((2, 2))
    hva, hvb = tapejit.hvp(f, argnums=(0, 1))(a, b, s, v=(va, vb))
    ref = full @ np.concatenate([va, vb.ravel()])
    np.testing.assert_allclose(hva, ref[:2], rtol=1e-14)
    np.testing.assert_allclose(hvb.ravel(), ref[2:], rtol=1e-14)
    # jvp over two primals (the parameter s is closed over)
    y, ty = tapejit.jvp(lambda a, b: f(a, b, s), (a, b), (va, vb))
    J = tape.jacobian(np.concatenate([a, b.ravel()]), params=np.array([s]))
    assert y == pytest.approx(f(a, b, s), rel=1e-15)
    assert ty == pytest.approx(float(J[0] @ np.concatenate([va, vb.ravel()])), rel=1e-14)


def test_batched_transforms_with_several_arguments():
    def f(a, b):
        return np.sum(a * a) * b + np.sin(b) * a[0]

    rng = np.random.default_rng(13)
    A, B = rng.normal(size=(70, 2)), rng.normal(size=70)
    H = tapejit.hessian(f, argnums=(0, 1), batched=True)(A, B)
    assert [[h.shape for h in row] for row in H] == [[(70, 2, 2), (70, 2)], [(70, 2), (70,)]]
    full = tapejit.record(f, np.ones(2), 1.0).hessian(np.column_stack([A, B]))
    np.testing.assert_array_equal(H[0][0], full[:, :2, :2])
    np.testing.assert_array_equal(H[0][1], full[:, :2, 2])
    np.testing.assert_array_equal(H[1][0], full[:, 2, :2])
    np.testing.assert_array_equal(H[1][1], full[:, 2, 2])
    Va, Vb = rng.normal(size=(70, 2)), rng.normal(size=70)
    ha, hb = tapejit.hvp(f, argnums=(0, 1), batched=True)(A, B, v=(Va, Vb))
    ref = np.einsum("nij,nj->ni", full, np.column_stack([Va, Vb]))
    assert_close_scaled(np.column_stack([ha, hb]), ref, rtol=1e-13)


def test_transform_jacobian_of_vector_function_both_modes():
    def f(x):
        return np.stack([x[0] * x[1], np.sin(x[2]), x[0] ** 2, np.exp(x[1]) * x[2]])

    x = np.array([0.4, -0.3, 1.2])
    Jf = tapejit.jacobian(f, mode="forward")(x)
    Jr = tapejit.jacobian(f, mode="reverse")(x)
    assert Jf.shape == (4, 3)
    np.testing.assert_allclose(Jf, Jr, rtol=1e-15)
    y, ty = tapejit.jvp(f, (x,), (np.array([1.0, 2.0, 3.0]),))
    np.testing.assert_allclose(ty, Jr @ [1.0, 2.0, 3.0], rtol=1e-14)
    assert y.shape == (4,)
    assert tapejit.jacobian(f).tape_cache.n_records == 1


# ---------------------------------------------------------------------------------------
# hypothesis: random small programs
# ---------------------------------------------------------------------------------------
UNARY = {
    "sin": lambda u: np.sin(u),
    "cos": lambda u: np.cos(u),
    "tanh": lambda u: np.tanh(u),
    "exp_tanh": lambda u: np.exp(np.tanh(u)),
    "log_1_plus_sq": lambda u: np.log(1.0 + u * u),
    "sqrt_1_plus_sq": lambda u: np.sqrt(1.0 + np.square(u)),
    "square": lambda u: np.square(u),
    "neg": lambda u: -u,
    "recip_pos": lambda u: 1.0 / (2.0 + np.cos(u)),
    "pow_pos": lambda u: np.power(1.5 + np.sin(u), 2.5),
    "abs": lambda u: np.abs(u),
    "arctan": lambda u: np.arctan(u),
    "stop": lambda u: tapejit.stop_gradient(u) * u,
}
BINARY = {
    "add": lambda u, v: u + v,
    "sub": lambda u, v: u - v,
    "mul": lambda u, v: u * v,
    "div_pos": lambda u, v: u / (1.0 + v * v),
    "maximum": lambda u, v: np.maximum(u, v),
    "hypot": lambda u, v: np.hypot(u, v + 0.5),
    "logaddexp": lambda u, v: np.logaddexp(u, v),
    "pow_var": lambda u, v: np.power(1.0 + u * u, np.tanh(v)),
    "where": lambda u, v: np.where(u > v, u * v, np.sin(v)),
}
PROGRAM_OPS = sorted(UNARY) + sorted(BINARY)


@st.composite
def programs(draw, max_outputs=1):
    """``(n_inputs, ops, outputs)``: a random DAG over the inputs; each op reads earlier
    nodes (leaning to recent ones so programs are deep as well as wide)."""
    k = draw(st.integers(1, 4))
    n_ops = draw(st.integers(1, 10))
    ops = []
    for i in range(n_ops):
        name = draw(st.sampled_from(PROGRAM_OPS))
        avail = k + i
        args = tuple(
            draw(st.one_of(st.integers(0, avail - 1), st.integers(max(0, avail - 2), avail - 1)))
            for _ in range(1 if name in UNARY else 2)
        )
        ops.append((name, args))
    last = k + n_ops - 1
    n_out = draw(st.integers(1, max_outputs))
    outputs = (last, *(draw(st.integers(0, last)) for _ in range(n_out - 1)))
    return k, tuple(ops), outputs


def program_function(prog):
    k, ops, outputs = prog

    def f(x):
        nodes = [x[i] for i in range(k)]
        for name, args in ops:
            fn = UNARY.get(name) or BINARY[name]
            nodes.append(fn(*(nodes[a] for a in args)))
        outs = [nodes[o] for o in outputs]
        return outs[0] if len(outs) == 1 else np.stack(outs)

    return f


def draw_points(data, n, k):
    seed = data.draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).uniform(-2.0, 2.0, size=(n, k)), seed


def tame(tape, X):
    with np.errstate(all="ignore"):
        y = tape.forward(X)
    return np.all(np.isfinite(y)) and np.max(np.abs(y), initial=0.0) < 1e6


@settings(max_examples=150)
@given(prog=programs(max_outputs=3), n=st.sampled_from([1, 3, 40, 300]), data=st.data())
def test_random_programs_tangent_vs_adjoint(prog, n, data):
    tape = tapejit.record(program_function(prog), np.zeros(prog[0]))
    X, seed = draw_points(data, n, prog[0])
    assume(tame(tape, X))
    rng = np.random.default_rng(seed + 1)
    m = tape.n_outputs
    V, W = rng.normal(size=X.shape), rng.normal(size=(n, m))
    JV = np.asarray(tape.jvp(X, V)).reshape(n, m)
    _, WJ = tape.vjp(X, W)
    lhs, rhs = np.sum(W * JV, axis=1), np.sum(V * WJ, axis=1)
    terms = np.abs(W * JV).sum(axis=1) + np.abs(V * WJ).sum(axis=1)
    # Absolute floor: a derivative that cancels inside the tape (v / v) rounds to ~1e-17
    # on one side and to 0 on the other, with no large term to be relative to.
    assert np.all(np.abs(lhs - rhs) <= 1e-12 * terms + 1e-15), (lhs, rhs)
    Jf = tape.jacobian(X, mode="forward")
    Jr = tape.jacobian(X, mode="reverse")
    assert_close_scaled(Jf, Jr, rtol=1e-13)
    for i in range(0, n, max(1, n // 8)):
        np.testing.assert_array_equal(np.reshape(tape.jvp(X[i], V[i]), m), JV[i])
        np.testing.assert_array_equal(tape.jacobian(X[i], mode="forward"), Jf[i])
        np.testing.assert_array_equal(tape.jacobian(X[i], mode="reverse"), Jr[i])


@settings(max_examples=200)
@given(prog=programs(), n=st.sampled_from([1, 3, 40, 300]), data=st.data())
def test_random_programs_hessian(prog, n, data):
    f = program_function(prog)
    k = prog[0]
    tape = tapejit.record(f, np.zeros(k))
    X, seed = draw_points(data, n, k)
    assume(tame(tape, X))
    H = tape.hessian(X)
    assert H.shape == (n, k, k)
    np.testing.assert_array_equal(H, H.transpose(0, 2, 1))  # exactly symmetric
    V = np.random.default_rng(seed + 2).normal(size=X.shape)
    HV = tape.hvp(X, V)
    with np.errstate(invalid="ignore"):
        ref = np.einsum("nij,nj->ni", H, V)
    fin = np.isfinite(ref).all(axis=1)
    assert_close_scaled(HV[fin], ref[fin], rtol=1e-11)
    for i in range(0, n, max(1, n // 8)):
        np.testing.assert_array_equal(tape.hessian(X[i]), H[i])
        np.testing.assert_array_equal(tape.hvp(X[i], V[i]), HV[i])


@settings(max_examples=100)
@given(prog=programs(), data=st.data())
def test_random_smooth_programs_hessian_vs_differences(prog, data):
    """Where the program is smooth around the point, the Hessian agrees with central
    differences of the tape's gradient (points near a kink are skipped: their
    differences straddle it)."""
    # stop_gradient makes the derivative differ from the function's differences on purpose
    assume(all(name != "stop" for name, _ in prog[1]))
    f = program_function(prog)
    k = prog[0]
    tape = tapejit.record(f, np.zeros(k))
    X, _ = draw_points(data, 30, k)
    assume(tame(tape, X))
    H = tape.hessian(X)
    # the gradient's differences at two step sizes agree where no kink is near
    h1 = _gradient_differences(tape, X, 1e-5)
    h2 = _gradient_differences(tape, X, 2e-5)
    scale = 1.0 + np.max(np.abs(h1.reshape(30, -1)), axis=1)[:, None, None]
    smooth = np.all(np.abs(h1 - h2) <= 1e-6 * scale, axis=(1, 2)) & np.isfinite(H).all((1, 2))
    assume(smooth.sum() >= 10)
    assert_close_scaled(H[smooth], h1[smooth], rtol=1e-5)


def _gradient_differences(tape, X, h):
    n, k = X.shape
    out = np.empty((n, k, k))
    with np.errstate(all="ignore"):
        for j in range(k):
            Xp, Xm = X.copy(), X.copy()
            Xp[:, j] += h
            Xm[:, j] -= h
            dx = Xp[:, j] - Xm[:, j]
            out[:, :, j] = (tape.gradient(Xp) - tape.gradient(Xm)) / dx[:, None]
    return out
