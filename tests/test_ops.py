"""Table-driven tests of every op in ``tapejit.OPS``.

Each op is reached the way user code reaches it (its numpy reference called on traced
values, or ``op.trace``), recorded once, and evaluated at points sampled from
``op.domain`` with the op's edge cases planted (``tests/_op_helpers.py`` reads all of it
from the table):

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

* values against ``op.numpy`` (a few ulp; ops flagged ``EXACT`` bitwise),
  batched (parallel and serial drivers) and one point at a time;
* gradients and Jacobians against central differences of ``op.numpy``, away from kinks;
* the documented conventions at kinks and singular points, and NaN/inf propagation.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _op_helpers import (
    BY_NAME,
    OP_NAMES,
    away_from_kinks,
    fixed_operands,
    reference,
    sample,
    spec,
    tape_of,
)

import tapejit
from tapejit import OPS
from tapejit._ops import (
    BY_CODE,
    COMPARISON,
    EXACT,
    ORDER_OPERAND,
    PIECEWISE,
    ZERO_DERIVATIVE,
)

N_POINTS = 1000


@pytest.mark.parametrize(("alias", "name"),
                         [(u, op.name) for op in OPS for u in op.aliases])
def test_every_alias_records_its_op(alias, name):
    arity = BY_NAME[name].arity
    tape = tapejit.record(lambda *a: alias(*a), *([0.5] * arity))
    assert [BY_CODE[int(c)].name for c in tape.opcodes] == [name]
    X = sample(BY_NAME[name], 50, 0)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(tape.forward(X), alias(*X.T), rtol=1e-14)


# ---------------------------------------------------------------------------------------
# completeness
# ---------------------------------------------------------------------------------------
def test_every_op_is_reached_by_its_spec():
    """Each op is reached from user code by calling its numpy reference on traced values
    (or ``op.trace``): an op the tracer cannot reach that way fails here."""
    unreached = []
    for op in OPS:
        try:
            tape = tape_of(op.name)
        except Exception as exc:  # reported below, per op
            unreached.append(f"{op.name}: {type(exc).__name__}: {exc}")
            continue
        if tape.opcodes.tolist().count(op.code) != 1 or len(tape) > 2:
            unreached.append(f"{op.name}: recorded {tape.listing()}")
    assert not unreached, (
        "ops that traced code does not reach through op.numpy; give them op.trace in "
        "tapejit/_ops.py:\n" + "\n".join(unreached)
    )


@pytest.mark.parametrize("name", OP_NAMES)
def test_spec_reaches_its_op(name):
    op = BY_NAME[name]
    tape = tape_of(name)
    assert op.code in tape.opcodes.tolist(), tape.listing()
    assert tape.n_inputs == op.arity
    assert tape.n_outputs == 1


def test_op_table_is_consistent():
    codes = [op.code for op in OPS]
    assert codes == sorted(codes)
    assert len(set(codes)) == len(codes)
    assert len(set(OP_NAMES)) == len(OP_NAMES)
    for op in OPS:
        assert len(op.domain) == op.arity, op.name
        for lo, hi in op.domain:
            assert lo < hi, op.name
        assert len(op.partials) == op.arity, op.name
        if op.kink is not None:  # the tests avoid kinks only of ops that have them
            assert PIECEWISE in op.flags, op.name


def test_samples_plant_edge_cases_and_kinks_are_found():
    """The samplers of the table do what the tests rely on: ties, bounds and integer
    conditions are present, and away_from_kinks drops exactly the rows near a kink."""
    X = sample(BY_NAME["maximum"], 70, 0)
    assert np.sum(X[:, 0] == X[:, 1]) == 10
    assert len(away_from_kinks(BY_NAME["maximum"], X)) == 60
    X = sample(BY_NAME["clip"], 70, 0)
    assert np.sum((X[:, 0] == X[:, 1]) | (X[:, 0] == X[:, 2])) == 20
    assert set(sample(BY_NAME["where"], 50, 0)[:, 0].tolist()) == {0.0, 1.0}
    X = np.array([[0.5], [1.0005], [-2.0], [0.0001]])
    np.testing.assert_array_equal(away_from_kinks(BY_NAME["floor"], X), X[:1])
    np.testing.assert_array_equal(away_from_kinks(BY_NAME["abs"], X), X[:3])
    assert away_from_kinks(BY_NAME["sin"], X) is X


# ---------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OP_NAMES)
def test_value_batched_matches_numpy(name, rng_seed):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = sample(op, N_POINTS, rng_seed)
    ref = reference(op, X)
    got = tape.forward(X)
    assert got.shape == (N_POINTS,)
    assert got.dtype == np.float64
    if EXACT in op.flags:
        np.testing.assert_array_equal(got, ref)
    else:
        # 1e-13 relative, or a couple of ulps of the operands where the result cancels
        # (logaddexp(a, b) near 0 with a ~ -b: numpy's own error there is that large)
        tol = np.maximum(1e-13 * np.abs(ref), 2 * np.max(np.spacing(np.abs(X)), axis=1))
        ok = (got == ref) | (np.abs(got - ref) <= tol) | (np.isnan(got) & np.isnan(ref))
        assert ok.all(), (X[~ok][:3], got[~ok][:3], ref[~ok][:3])
    # a small batch takes the serial driver; it must give the same bits
    np.testing.assert_array_equal(tape.forward(X[:7]), got[:7])


@pytest.mark.parametrize("name", OP_NAMES)
def test_value_single_points_match_batched(name, rng_seed):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = sample(op, 40, rng_seed + 1)
    batched = tape.forward(X)
    ref = reference(op, X)
    for i, x in enumerate(X):
        v = tape.forward(x)
        assert isinstance(v, float)
        assert v == batched[i], (x, v, batched[i])
        np.testing.assert_allclose(v, ref[i], rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", [n for n in OP_NAMES if COMPARISON in BY_NAME[n].flags])
def test_comparison_values_are_exact_truth_values(name):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = np.array([[1.0, 2.0], [2.0, 1.0], [1.5, 1.5], [-0.0, 0.0], [-3.0, -3.0],
                  [np.nan, 1.0], [np.inf, -np.inf], [-np.inf, np.nan]])[:, : op.arity]
    got = tape.forward(X)
    np.testing.assert_array_equal(got, op.numpy(*X.T).astype(np.float64))
    assert set(got.tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OP_NAMES)
def test_gradient_matches_central_differences(name, rng_seed, central_diff):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = away_from_kinks(op, sample(op, N_POINTS, rng_seed + 2))
    assert len(X) > N_POINTS // 2
    v, g = tape.value_and_grad(X)
    np.testing.assert_array_equal(v, tape.forward(X))
    assert g.shape == X.shape
    if ZERO_DERIVATIVE in op.flags:
        np.testing.assert_array_equal(g, np.zeros_like(X))
        return
    fixed = fixed_operands(op)  # where's condition: no derivative
    fd = central_diff(lambda Z: reference(op, Z), X, fixed=fixed)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g[:, list(fixed)], 0.0)


@pytest.mark.parametrize("name", OP_NAMES)
def test_gradient_single_points_match_batched(name, rng_seed):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = away_from_kinks(op, sample(op, 60, rng_seed + 3))
    vb, gb = tape.value_and_grad(X)
    for i, x in enumerate(X):
        v, g = tape.value_and_grad(x)
        assert isinstance(v, float)
        assert v == vb[i]
        np.testing.assert_array_equal(g, gb[i])
        np.testing.assert_array_equal(tape.gradient(x), gb[i])


@pytest.mark.parametrize("name", OP_NAMES)
def test_jacobian_and_vjp_agree_with_gradient(name, rng_seed):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = sample(op, N_POINTS, rng_seed + 4)
    _, g = tape.value_and_grad(X)
    J = tape.jacobian(X)
    assert J.shape == (N_POINTS, 1, op.arity)
    np.testing.assert_array_equal(J[:, 0, :], g)
    y, gv = tape.vjp(X, np.array([2.0]))
    np.testing.assert_array_equal(y[:, 0], tape.forward(X))
    np.testing.assert_array_equal(gv, 2.0 * g)
    j1 = tape.jacobian(X[5])
    assert j1.shape == (1, op.arity)
    np.testing.assert_array_equal(j1[0], g[5])


# ---------------------------------------------------------------------------------------
# alternative spellings reach the same op
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("f", "name"),
    [
        (lambda a: a**2, "square"),
        (lambda a: a**2.0, "square"),
        (lambda a: a**3.0, "pow"),
        (lambda a: 2.0**a, "pow"),
        (lambda a: abs(a), "abs"),
        (lambda a: np.fabs(a), "abs"),
        (lambda a: np.negative(a), "neg"),
        (lambda a: np.true_divide(1.0, a), "div"),
        (lambda a: 1.0 / a, "div"),
        (lambda a: np.add(a, 1.0), "add"),
        (lambda a: 3.0 - a, "sub"),
        (lambda a: a // 1.0, "floor_divide"),
        (lambda a: 2.5 // a, "floor_divide"),
        (lambda a: a % 0.3, "mod"),
        (lambda a: 2.5 % a, "mod"),
        (lambda a: np.mod(a, 0.3), "mod"),
        (lambda a: np.float_power(a, 1.5), "pow"),
        (lambda a: np.conj(a), "conjugate"),
        (lambda a: np.round(a), "rint"),
        (lambda a: np.around(a, 1), "rint"),
        (lambda a: np.fix(a), "trunc"),
        (lambda a: np.clip(a, 0.0, None), "maximum"),
        (lambda a: np.clip(a, None, 0.0), "minimum"),
        (lambda a: np.where(a < 0.0, a, 2.0 * a), "less"),
    ],
)
def test_alternative_spellings(f, name):
    tape = tapejit.record(f, 0.7)
    assert BY_NAME[name].code in tape.opcodes.tolist(), tape.listing()
    x = np.linspace(0.3, 2.5, 9)
    with np.errstate(all="ignore"):
        ref = np.array([f(v) for v in x], dtype=np.float64)
    np.testing.assert_allclose(tape.forward(x[:, None]), ref, rtol=1e-14)


def test_positive_records_nothing():
    tape = tapejit.record(lambda a: +np.positive(a), 1.0)
    assert len(tape) == 0
    assert tape.forward(np.array([3.5])) == 3.5
    np.testing.assert_array_equal(tape.gradient(np.array([3.5])), [1.0])


# ---------------------------------------------------------------------------------------
# documented conventions at kinks and singular points
# ---------------------------------------------------------------------------------------
def _vg(f, *point):
    """Record ``f`` at ``point``; value and gradient there, one point and batched."""
    tape = tapejit.record(f, *([1.0] * len(point)))
    x = np.array(point, dtype=np.float64)
    v, g = tape.value_and_grad(x)
    vb, gb = tape.value_and_grad(np.tile(x, (3, 1)))
    np.testing.assert_array_equal(vb, [v] * 3)
    np.testing.assert_array_equal(gb, np.tile(g, (3, 1)))
    return v, g


def test_pow_zero_base_fractional_exponent_has_zero_derivative():
    v, g = _vg(lambda a, b: a**b, 0.0, 1.875)
    assert v == 0.0
    np.testing.assert_array_equal(g, [0.0, 0.0])  # not NaN


def test_pow_constant_fractional_exponent_at_zero():
    v, g = _vg(lambda a: a**1.875, 0.0)
    assert v == 0.0
    np.testing.assert_array_equal(g, [0.0])


@pytest.mark.parametrize("y", [0.5, 1.0, 2.0, 3.25])
def test_pow_zero_base_derivative_in_exponent_is_zero(y):
    v, g = _vg(lambda e: 0.0**e, y)
    assert v == 0.0
    np.testing.assert_array_equal(g, [0.0])


def test_pow_zero_exponent_derivative_in_base_is_zero():
    v, g = _vg(lambda a, b: a**b, 0.0, 0.0)
    assert v == 1.0
    assert g[0] == 0.0
    v, g = _vg(lambda a, b: a**b, 2.0, 0.0)
    assert v == 1.0
    assert g[0] == 0.0
    assert g[1] == pytest.approx(np.log(2.0), rel=1e-15)


@pytest.mark.parametrize(
    ("name", "point", "value", "deriv"),
    [
        ("sqrt", 0.0, 0.0, np.inf),
        ("cbrt", 0.0, 0.0, np.inf),
        ("log", 0.0, -np.inf, np.inf),
        ("log2", 0.0, -np.inf, np.inf),
        ("log10", 0.0, -np.inf, np.inf),
        ("log1p", -1.0, -np.inf, np.inf),
        ("arcsin", 1.0, np.pi / 2, np.inf),
        ("arcsin", -1.0, -np.pi / 2, np.inf),
        ("arccos", 1.0, 0.0, -np.inf),
        ("arctanh", 1.0, np.inf, np.inf),
        ("arccosh", 1.0, 0.0, np.inf),
        ("reciprocal", 0.0, np.inf, -np.inf),
    ],
)
def test_true_infinite_derivative_at_singular_point(name, point, value, deriv):
    v, g = _vg(spec(BY_NAME[name]), point)
    assert v == value
    assert g[0] == deriv


def test_sqrt_derivative_is_infinite_at_zero():
    tape = tapejit.record(np.sqrt, 1.0)
    v, g = tape.value_and_grad(np.array([0.0]))
    assert v == 0.0
    assert g[0] == np.inf


def test_abs_derivative_is_zero_at_zero():
    v, g = _vg(np.abs, 0.0)
    assert v == 0.0
    np.testing.assert_array_equal(g, [0.0])
    assert _vg(np.abs, -2.0)[1][0] == -1.0
    assert _vg(np.abs, 2.0)[1][0] == 1.0


@pytest.mark.parametrize("fn", [np.maximum, np.minimum])
def test_max_min_tie_split_half_half(fn):
    v, g = _vg(fn, 1.25, 1.25)
    assert v == 1.25
    np.testing.assert_array_equal(g, [0.5, 0.5])


@pytest.mark.parametrize("fn", [np.maximum, np.minimum])
def test_max_min_of_same_value_has_derivative_one(fn):
    v, g = _vg(lambda x: fn(x, x), -0.75)
    assert v == -0.75
    np.testing.assert_array_equal(g, [1.0])


def test_maximum_and_minimum_away_from_tie():
    np.testing.assert_array_equal(_vg(np.maximum, 2.0, 1.0)[1], [1.0, 0.0])
    np.testing.assert_array_equal(_vg(np.maximum, 1.0, 2.0)[1], [0.0, 1.0])
    np.testing.assert_array_equal(_vg(np.minimum, 2.0, 1.0)[1], [0.0, 1.0])
    np.testing.assert_array_equal(_vg(np.minimum, 1.0, 2.0)[1], [1.0, 0.0])


@pytest.mark.parametrize(("x", "deriv"), [(0.0, 0.5), (1.5, 1.0), (-1.5, 0.0)])
def test_relu_derivative(x, deriv):
    v, g = _vg(lambda t: np.maximum(0.0, t), x)
    assert v == max(0.0, x)
    assert g[0] == deriv


@pytest.mark.parametrize(
    ("point", "value", "grad"),
    [
        ((0.0, -1.0, 1.0), 0.0, (1.0, 0.0, 0.0)),  # inside
        ((-1.0, -1.0, 1.0), -1.0, (1.0, 0.0, 0.0)),  # x == lo: closed interval
        ((1.0, -1.0, 1.0), 1.0, (1.0, 0.0, 0.0)),  # x == hi: closed interval
        ((-2.0, -1.0, 1.0), -1.0, (0.0, 1.0, 0.0)),  # below: d/dlo
        ((2.0, -1.0, 1.0), 1.0, (0.0, 0.0, 1.0)),  # above: d/dhi
        ((0.0, 1.0, -1.0), -1.0, (0.0, 0.0, 1.0)),  # lo > hi: numpy returns hi
        ((-2.0, 1.0, -1.0), -1.0, (0.0, 0.0, 1.0)),  # lo > hi and x < lo
        ((0.5, 0.5, 0.5), 0.5, (1.0, 0.0, 0.0)),  # lo == hi == x
    ],
)
def test_clip_conventions(point, value, grad):
    v, g = _vg(np.clip, *point)
    assert v == np.clip(*point) == value
    np.testing.assert_array_equal(g, grad)


def test_clip_with_constant_bounds():
    tape = tapejit.record(lambda x: np.clip(x, -1.0, 1.0), 0.0)
    X = np.array([[-2.0], [-1.0], [0.3], [1.0], [2.0]])
    np.testing.assert_array_equal(tape.forward(X), np.clip(X[:, 0], -1.0, 1.0))
    np.testing.assert_array_equal(tape.gradient(X)[:, 0], [0.0, 1.0, 1.0, 1.0, 0.0])


def test_hypot_at_origin():
    v, g = _vg(np.hypot, 0.0, 0.0)
    assert v == 0.0
    np.testing.assert_array_equal(g, [0.0, 0.0])
    v, g = _vg(np.hypot, 3.0, 4.0)
    assert v == 5.0
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-15)


@pytest.mark.parametrize("x", [0.0, -0.0, -1.0, -1e-300, -np.inf])
def test_where_guarded_log_has_exactly_zero_gradient(x):
    v, g = _vg(lambda t: np.where(t > 0, np.log(t), 0.0), x)
    assert v == 0.0
    assert g[0] == 0.0  # exactly zero, not NaN


@pytest.mark.parametrize("x", [0.0, -4.0])
def test_where_guarded_sqrt_has_exactly_zero_gradient(x):
    v, g = _vg(lambda t: np.where(t > 0, np.sqrt(t), 0.0), x)
    assert v == 0.0
    assert g[0] == 0.0


def test_where_guarded_log_taken_branch():
    v, g = _vg(lambda t: np.where(t > 0, np.log(t), 0.0), 2.0)
    assert v == np.log(2.0)
    assert g[0] == 0.5


def test_stop_gradient_has_zero_derivative():
    v, g = _vg(lambda x: tapejit.stop_gradient(x * x * x) + 2.0 * x, 1.5)
    assert v == pytest.approx(1.5**3 + 3.0, rel=1e-15)
    np.testing.assert_array_equal(g, [2.0])
    v, g = _vg(lambda x: tapejit.stop_gradient(x), 1.5)
    assert v == 1.5
    np.testing.assert_array_equal(g, [0.0])


def test_stop_gradient_of_constant_is_identity():
    assert tapejit.stop_gradient(2.5) == 2.5
    a = np.arange(3.0)
    assert tapejit.stop_gradient(a) is a


@pytest.mark.parametrize("name", ["sign", "floor", "ceil"])
def test_zero_derivative_ops_at_jumps(name):
    for x in (0.0, 1.0, -2.0):
        v, g = _vg(spec(BY_NAME[name]), x)
        assert v == BY_NAME[name].numpy(x)
        assert g[0] == 0.0


# ---------------------------------------------------------------------------------------
# NaN and inf
# ---------------------------------------------------------------------------------------
SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf, np.nan]


def special_points(op) -> np.ndarray:
    """Every combination of :data:`SPECIALS` as operands; a derivative order
    (``ORDER_OPERAND``) takes the orders among them (0, -0 and 1), any other order
    giving NaN (``tests/test_special.py``)."""
    first = [v for v in SPECIALS if v in (0.0, 1.0)] if ORDER_OPERAND in op.flags \
        else SPECIALS
    return np.array(list(itertools.product(first, *[SPECIALS] * (op.arity - 1))),
                    dtype=np.float64)


def assert_like_numpy(got, ref) -> None:
    """NaN, infinities and zeros exactly where numpy has them; other values within
    4 ulp: numpy's SIMD builds (AVX-512 machines) evaluate some ufuncs (``expm1``,
    ``arccos``, ``arctanh``, ...) with its own vector code, whose last bit may differ from
    the C library the kernels call."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    exact = ~np.isfinite(ref) | (ref == 0)
    np.testing.assert_array_equal(got[exact], ref[exact])  # NaN == NaN, 0.0 == -0.0
    np.testing.assert_array_max_ulp(got[~exact], ref[~exact], maxulp=4)


@pytest.mark.parametrize("name", OP_NAMES)
def test_nan_and_inf_values_propagate_like_numpy(name):
    op = BY_NAME[name]
    tape = tape_of(name)
    X = special_points(op)
    ref = reference(op, X)
    assert_like_numpy(tape.forward(X), ref)
    for i in range(0, len(X), max(1, len(X) // 40)):
        assert_like_numpy(tape.forward(X[i]), ref[i])


@pytest.mark.parametrize("name", OP_NAMES)
def test_value_and_grad_at_special_points_runs_and_keeps_values(name):
    """The NaN policy: a sweep never fails; values equal forward() even where the
    derivative is infinite or NaN."""
    op = BY_NAME[name]
    tape = tape_of(name)
    X = special_points(op)
    ref = reference(op, X)
    v, g = tape.value_and_grad(X)
    assert_like_numpy(v, ref)
    np.testing.assert_array_equal(v, tape.forward(X))  # the same kernels' values
    assert g.shape == X.shape
    for i in range(0, len(X), max(1, len(X) // 40)):
        vi, gi = tape.value_and_grad(X[i])
        assert_like_numpy(vi, ref[i])
        np.testing.assert_array_equal(gi, g[i])
    if ZERO_DERIVATIVE in op.flags:
        np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_untaken_branch_with_nonfinite_partial_gives_zero(bad):
    # The untaken branch sqrt(x) * x has NaN/inf partials at x = bad; they must not
    # leak into the gradient (azmul): d/dx = 1 from the taken branch.
    f = lambda x, c: np.where(c > 0, x, np.sqrt(x) * x)  # noqa: E731
    tape = tapejit.record(f, 1.0, 1.0)
    v, g = tape.value_and_grad(np.array([bad, 1.0]))
    np.testing.assert_array_equal(v, bad)
    np.testing.assert_array_equal(g, [1.0, 0.0])
