"""One-point gradients and values of tapes of scalar instructions over their scalar
program (``tapejit/_scalar_program.py``, ``value_grad_scalar`` and ``forward_scalar``):
the same bits as ``value_grad_point`` and ``forward_point``, for every op of the table
at its sampled points and edge cases, and for chained programs with repeated operands,
parameters and guards.
"""

from __future__ import annotations

import numpy as np
import pytest
from _op_helpers import BY_NAME, OP_NAMES, sample, tape_of

import tapejit
from tapejit._program import FAMILIES
from tapejit._tape import install_for_tests, scalar_program_of

# The optimised kernels' two drivers against each other (the generic tier has one).
pytestmark = pytest.mark.kernels


def _bits(a) -> np.ndarray:
    return np.atleast_1d(np.asarray(a, dtype=np.float64)).view(np.uint64)


def _both(tape, x, params=None):
    """value_and_grad and forward at one point through the scalar program, then through
    value_grad_point and forward_point."""
    got = []
    for scalar in (True, False):
        install_for_tests(tape, scalar=scalar)
        v, g, ok = tape.value_and_grad(x, params, check="mask")
        y, ok_y = tape.forward(x, params, check="mask")
        got.append((np.float64(v), g.copy(), ok, y, ok_y))
    install_for_tests(tape, scalar=True)
    return got


def _assert_same(got):
    (v1, g1, ok1, y1, oky1), (v0, g0, ok0, y0, oky0) = got
    assert ok1 == ok0 and oky1 == oky0
    for a, b in ((v1, v0), (g1, g0), (y1, y0)):
        np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_same_bits(name):
    tape = tape_of(name)
    if any(code in FAMILIES for code in np.unique(tape.opcodes)):
        pytest.skip("recorded as an instruction family: no scalar program")
    assert scalar_program_of(tape) is not None, "a tape of one scalar op has a scalar program"
    X = sample(BY_NAME[name], 24, seed=11)
    with np.errstate(invalid="ignore"):  # non-finite and zero operands
        X[:3] = X[3:6] * np.array([np.inf, 0.0, np.nan])[:, None]
    for x in X:
        _assert_same(_both(tape, np.ascontiguousarray(x)))


def test_chained_program_with_params_and_repeats():
    def f(x, p):
        a, b, c = x[0], x[1], x[2]
        for k in range(30):
            a = np.sin(a * a) + b / (1.5 + np.cos(c)) * p[0]
            b = np.tanh(b - a) * p[1] + np.exp(-np.square(c)) + a * a
            c = np.where(a > b, c * 0.9, c + 0.01) if k % 3 else np.hypot(c, a) - p[0]
        return a * b - c

    rng = np.random.default_rng(3)
    x0 = rng.normal(size=3)
    tape = tapejit.record(f, x0, np.array([0.7, 1.3]), argnums=0)
    assert scalar_program_of(tape) is not None
    for _ in range(20):
        _assert_same(_both(tape, rng.normal(size=3), rng.uniform(0.5, 1.5, 2)))


def test_guard_failure_gives_nan_as_before():
    def f(x):
        s = x[0]
        for _ in range(5):
            s = np.sin(s) * x[1] + s
        if s > 0.0:
            return s * s
        return -s

    tape = tapejit.record(f, np.array([0.5, 1.0]))
    assert scalar_program_of(tape) is not None
    off = np.array([-0.5, 1.0])  # the other branch
    got = _both(tape, off)
    _assert_same(got)
    assert not got[0][2] and np.isnan(got[0][1]).all()
    with pytest.raises(tapejit.BranchError):
        tape.value_and_grad(off)
    _assert_same(_both(tape, np.array([0.4, 0.9])))


def test_block_and_family_tapes_have_none():
    blocks = tapejit.record(lambda x: np.sin(x) * x, np.ones(3))
    sums = tapejit.record(lambda x: np.sum(x * x), np.ones(3))
    assert scalar_program_of(blocks) is None and scalar_program_of(sums) is None


def _huge(x):
    # about 17,600 scalar instructions: more slots than a batch chunk holds for two
    # points, so batched calls go one point at a time; a guard at the end
    a, b = x[0], x[1]
    for _ in range(2200):
        a = np.sin(a) * b + 0.1 * a
        b = 0.9 * b + 0.01 * a * a
    if x[0] > 0.3:
        return a + b
    return a - b


def test_few_points_of_a_huge_tape_take_the_scalar_program():
    from tapejit._kernels.runtime import POINTWISE_SLOTS
    from tapejit._program import Program
    from tapejit._segments import POINT_BY_POINT_BELOW

    tape = tapejit.record(_huge, np.array([0.5, 0.7]))
    assert Program.from_tape(tape).n_slots > POINTWISE_SLOTS
    assert scalar_program_of(tape) is not None
    X = np.random.default_rng(3).uniform(0.35, 0.9, (POINT_BY_POINT_BELOW - 1, 2))
    X[4, 0] = 0.2  # the other branch
    got = tape.value_and_grad(X, check="mask")
    J, okj = tape.jacobian(X, check="mask")
    install_for_tests(tape, scalar=False)  # the point-by-point batch driver
    want = tape.value_and_grad(X, check="mask")
    install_for_tests(tape, scalar=True)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(okj, want[2])
    assert not got[2][4] and got[2].sum() == len(X) - 1
    for a, b in ((got[0], want[0]), (got[1], want[1]), (J[:, 0, :], want[1])):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    v1, g1 = tape.value_and_grad(X[0])
    np.testing.assert_array_equal(_bits(tape.jacobian(X[0])[0]), _bits(g1))
    np.testing.assert_array_equal(_bits(got[1][0]), _bits(g1))
    np.testing.assert_array_equal(_bits(got[0][0]), _bits(v1))
    with pytest.raises(tapejit.BranchError):
        tape.value_and_grad(X[:6])
    with pytest.raises(tapejit.BranchError):
        tape.jacobian(X[:6])


def test_tangents_and_hvps_of_a_huge_tape_at_few_points_are_the_batch_kernels_bits(
        monkeypatch):
    import tapejit._tape as tape_module

    tape = tapejit.record(_huge, np.array([0.5, 0.7]))
    rng = np.random.default_rng(4)
    X = rng.uniform(0.35, 0.9, (5, 2))
    X[3, 0] = 0.2  # the other branch
    V = rng.normal(size=X.shape)
    got = (*tape.jvp(X, V, check="mask"), *tape.hvp(X, V, check="mask"),
           *tape.jacobian(X, mode="forward", check="mask"))
    monkeypatch.setattr(tape_module, "POINT_BY_POINT_JVP_BELOW", 0)  # the batch kernels
    monkeypatch.setattr(tape, "_chunk_for", lambda *args: 2)
    want = (*tape.jvp(X, V, check="mask"), *tape.hvp(X, V, check="mask"),
            *tape.jacobian(X, mode="forward", check="mask"))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    ok = tape.jvp(X, V, check="mask")[-1]
    assert not ok[3] and ok.sum() == len(X) - 1
    with pytest.raises(tapejit.BranchError):
        tape.hvp(X, V)
