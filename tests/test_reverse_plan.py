"""The reverse plan (``reverse_plan`` in ``_drivers.py``): first writes assign adjoints.

* On random programs (hand-built tapes with blocks, strides, broadcasts, repeated and
  overlapping operands, constants and outputs anywhere; recorded ones) every reverse
  result is bit for bit what zeroing every adjoint and adding gives (a plan that assigns
  nothing), in all reverse drivers: chunks, one point, point by point, Jacobians.
* A symbolic replay of both sweeps' write orders shows each assigning write is the
  first one to its slot, and every adjoint read before any assignment is zeroed.
* Array code needs almost no zeroing; a plan that does not fit its program is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_passes import programs as built_programs
from test_passes import same_bits
from test_random_programs import programs as recorded_programs

import tapejit
from tapejit._kernels.runtime import chunk_of, kernels
from tapejit._program import (
    ARG_A,
    ARITY,
    FIRST_ADJOINT,
    MAX_ARITY,
    N_SLOTS,
    OPCODE,
    PLAN_ASSIGN,
    PLAN_FORWARD,
    RESULT,
    SIZE,
    STRIDE_A,
    code_of,
    inputs_of,
    outputs_of,
)
from tapejit._tape import install_for_tests, kernel_arrays, packed, reverse_plan

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels


def _psrc() -> np.ndarray:
    return kernels().module._PSRC


def _code(tape) -> np.ndarray:
    return code_of(packed(tape)[0]).astype(np.int64)


def zero_all_plan(tape) -> np.ndarray:
    """The plan that assigns and forwards nothing and zeroes every adjoint (the sweeps'
    old way): every instruction's adjoints in its own result slots."""
    prog = packed(tape)[0]
    ni, nd, n = len(tape), int(prog[FIRST_ADJOINT]), int(prog[N_SLOTS])
    ranges = [1, nd, n] if n > nd else [0]
    return np.array([0] * ni + ranges + list(_code(tape)[:, RESULT]), np.int32)


def adjoint_slots(tape) -> np.ndarray:
    """Per instruction, where the plan keeps its result adjoints."""
    plan, ni = reverse_plan(tape), len(tape)
    return plan[ni + 1 + 2 * plan[ni] :]


def reverse_results(tape, X, P, W):
    """Every reverse driver's results: chunks, one point, point by point, Jacobian."""
    out = {}
    with np.errstate(all="ignore"):
        out["vjp"] = tape.vjp(X, W, P, check="mask")[:2]
        out["jac"] = tape.jacobian(X, P, mode="reverse", check="mask")[0]
        if tape.n_outputs == 1:
            out["point"] = tape.value_and_grad(X[0], P, check="mask")[:2]
        install_for_tests(tape, chunk=1)  # huge-tape path: vjp_points
        try:
            out["points"] = tape.vjp(X, W, P, check="mask")[:2]
        finally:
            install_for_tests(tape, chunk=chunk_of(tape.n_slots))
    return out


def assert_plan_changes_no_bit(tape, X, P, W):
    planned = reverse_results(tape, X, P, W)
    install_for_tests(tape, plan=zero_all_plan(tape))
    plain = reverse_results(tape, X, P, W)
    for key, got in planned.items():
        for a, b in zip(got, plain[key], strict=True):
            assert same_bits(a, b), key


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=built_programs(max_instr=30), seed=st.integers(0, 2**32 - 1))
def test_hand_built_programs(case, seed):
    tape, X, P = case
    W = np.random.default_rng(seed).choice([0.0, 1.0, -2.0, 0.5], (X.shape[0], tape.n_outputs))
    check_symbolically(tape)
    assert_plan_changes_no_bit(tape, X, P, W)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=recorded_programs(n_params=1, max_outputs=2), seed=st.integers(0, 2**32 - 1))
def test_recorded_programs(prog, seed):
    rng = np.random.default_rng(seed)
    tape = prog.record()
    X = rng.uniform(-2.0, 2.0, (3, tape.n_inputs))
    P = rng.uniform(-1.0, 1.0, tape.n_params) if tape.n_params else None
    check_symbolically(tape)
    assert_plan_changes_no_bit(tape, X, P, rng.normal(size=(3, tape.n_outputs)))


def check_symbolically(tape) -> None:
    """Replay the writes of the chunk sweep (element-major within an instruction) and
    of the point sweep (operand-major) on slot names. A forwarded operand must be a
    whole result range, of partial 1, whose producer reads the consumer's adjoints,
    and nothing else may touch those adjoints."""
    prog, plan = packed(tape)[0], reverse_plan(tape)
    n, nd, ni = int(prog[N_SLOTS]), int(prog[FIRST_ADJOINT]), len(tape)
    zeroed = np.zeros(n, bool)
    for z in range(plan[ni]):
        zeroed[plan[ni + 1 + 2 * z] : plan[ni + 2 + 2 * z]] = True
    code = _code(tape)
    where = adjoint_slots(tape)
    module = kernels().module
    writes = _psrc()[MAX_ARITY * code[:, OPCODE : OPCODE + 1] + np.arange(MAX_ARITY)] != 0
    outputs = outputs_of(prog)
    forwarded = np.zeros(n, bool)
    for i in range(ni):
        for k in range(MAX_ARITY):
            if not plan[i] >> (PLAN_FORWARD + k) & 1:
                continue
            op, s0, m = code[i, OPCODE], code[i, ARG_A + k], code[i, SIZE]
            q = MAX_ARITY * op + k
            assert module._PSRC[q] == 2 and module._PCONST[q] == 1.0
            assert m == 1 or code[i, STRIDE_A + k] == 1
            (p,) = np.flatnonzero((code[:, RESULT] == s0) & (code[:, SIZE] == m))[-1:]
            assert p < i and where[p] == where[i], f"instruction {i} operand {k}"
            assert not forwarded[s0 : s0 + m].any()
            forwarded[s0 : s0 + m] = True
    assert not forwarded[outputs].any(), "an output's adjoint is forwarded"
    for element_major in (True, False):
        ready = zeroed.copy()  # holds a sum that may be added to
        ready[:nd] = True  # never written
        assert ready[outputs].all(), "outputs are seeded by adding"
        for i in range(ni - 1, -1, -1):
            op, g, m = code[i, OPCODE], where[i], code[i, SIZE]
            assert ready[g : g + m].all(), f"instruction {i} reads unready adjoints"
            e = np.arange(m)
            order = [(k, j) for j in e for k in range(MAX_ARITY)] if element_major else [
                (k, j) for k in range(MAX_ARITY) for j in e]
            for k, j in order:
                s = code[i, ARG_A + k] + j * code[i, STRIDE_A + k]
                if (k >= ARITY[op] or not writes[i, k] or s < nd
                        or plan[i] >> (PLAN_FORWARD + k) & 1):
                    continue
                assert not forwarded[s], f"instruction {i} writes a forwarded adjoint"
                if plan[i] >> (PLAN_ASSIGN + k) & 1:
                    assert not ready[s], f"instruction {i} operand {k} assigns over a sum"
                else:
                    assert ready[s], f"instruction {i} operand {k} adds to an unzeroed slot"
                ready[s] = True
        ins = inputs_of(prog)
        assert ready[ins].all(), "a gradient is read from an unzeroed adjoint"


def test_array_code_zeroes_almost_nothing():
    tape = tapejit.record(
        lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2), np.ones(50)
    )
    plan, ni = reverse_plan(tape), len(tape)
    ranges = plan[ni + 1 : ni + 1 + 2 * plan[ni]].reshape(-1, 2)
    # the output, x[-1], and the 49 terms the sum instruction reads (a family routine
    # adds into its operands' adjoints, so they are zeroed first)
    assert int((ranges[:, 1] - ranges[:, 0]).sum()) <= 2 + 49
    check_symbolically(tape)
    x = np.linspace(-1.0, 2.0, 50)
    g = tape.value_and_grad(x)[1]
    install_for_tests(tape, plan=zero_all_plan(tape))
    assert same_bits(tape.value_and_grad(x)[1], g)


def test_a_plan_that_does_not_fit_is_refused():
    tape = tapejit.record(lambda x: np.sin(x[0]) * x[1], np.ones(2))
    K = kernels()
    g = np.empty(2)
    for bad in (np.zeros(0, np.int32), np.zeros(len(tape), np.int32),
                np.append(reverse_plan(tape), 7).astype(np.int32)):
        with pytest.raises(ValueError, match="reverse plan"):
            K.value_grad_point(kernel_arrays(tape)[0], bad, kernel_arrays(tape)[1],
                               np.ones(2), np.zeros(0), g, np.zeros(0))


def test_an_underflowing_first_contribution_keeps_the_sign_zeroing_gave():
    # d/dx of (x * y) * z is y * z, which underflows to -0.0 here: assigned as 0.0 + it,
    # the same +0.0 as zeroing and adding (bit for bit, one point and batched).
    tape = tapejit.record(lambda x, y, z: (x * y) * z, 1.0, 1.0, 1.0)
    X = np.array([[1.0, -1e-200, 1e-200]])
    planned = reverse_results(tape, X, None, np.ones((1, 1)))
    assert np.signbit(planned["point"][1][0]) == np.signbit(0.0 + (-1e-200 * 1e-200))
    install_for_tests(tape, plan=zero_all_plan(tape))
    plain = reverse_results(tape, X, None, np.ones((1, 1)))
    for key, got in planned.items():
        for a, b in zip(got, plain[key], strict=True):
            assert same_bits(a, b), key
