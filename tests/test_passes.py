"""Optimization passes and statistics (``tapejit._passes``).

* On random programs (hand-built tapes over every op, with block instructions, repeated
  subexpressions, constant subexpressions, dead code, guards) every pass and the full
  pipeline leave the output values bit for bit (NaN payloads aside) and the guard
  decisions as they were; fold and DCE leave every derivative the same number, CSE the
  same up to rounding. The optimized tape is a valid canonical tape (it went through the
  Tape constructor) and never has more instructions.
* Recorded functions with repeated subexpressions and dead code get smaller by the
  expected counts; a hand-built tape with constant subexpressions folds.
* The swap of operands that CSE does is exact: the ops it treats as commutative give the
  same bits both ways on special values, and maximum/minimum (excluded) do not.
* ``stats`` fields, including peak live values on tapes where it is known.
"""

from __future__ import annotations

import numpy as np
import pytest
from _op_helpers import same_bits
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import tapejit
from tapejit import Tape
from tapejit._ops import BY_NAME, COMMUTATIVE, OPS
from tapejit._passes import BIT_COMMUTATIVE, PASSES, format_stats, simplify, stats
from tapejit._tape import packed, reverse_plan

PIPELINES = [("fold",), ("cse",), ("dce",), PASSES, ("dce", "cse", "fold", "dce")]
_CONSTS = [0.0, -0.0, 1.0, 2.0, 0.5, -1.5, 3.0, np.inf, np.nan, 1e-300]


# ---------------------------------------------------------------------------------------
# random programs
# ---------------------------------------------------------------------------------------
@st.composite
def programs(draw, max_instr: int = 24):
    """A valid hand-built tape (as constructor arguments) and its evaluation points."""
    n_in = draw(st.integers(1, 3))
    n_par = draw(st.integers(0, 2))
    consts = draw(st.lists(st.sampled_from(_CONSTS) | st.floats(-4, 4), max_size=5))
    nc = len(consts)
    n_fixed = nc + n_par + n_in
    n = draw(st.integers(0, max_instr))
    ops, args, sizes, strides = [], [], [], []
    res = n_fixed
    for _ in range(n):
        if ops and draw(st.integers(0, 3)) == 0:  # repeat an earlier instruction
            j = draw(st.integers(0, len(ops) - 1))
            a, s = list(args[j]), list(strides[j])
            if ops[j] in BIT_COMMUTATIVE | {BY_NAME["maximum"].code} and draw(st.booleans()):
                a[0], a[1], s[0], s[1] = a[1], a[0], s[1], s[0]
            ops.append(ops[j])
            args.append(a)
            sizes.append(sizes[j])
            strides.append(s)
            res += sizes[j]
            continue
        op = draw(st.sampled_from(OPS))
        size = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))
        a, s = [0, 0, 0], [0, 0, 0]
        for k in range(op.arity):
            stride = draw(st.sampled_from([0, 1, 1, 2, -1])) if size > 1 else 0
            span = (size - 1) * abs(stride)
            if span > res - 1:
                stride, span = 0, 0
            if nc and draw(st.integers(0, 3)) == 0 and span <= nc - 1:  # constants
                lo = draw(st.integers(0, nc - 1 - span))
            else:
                lo = draw(st.integers(0, res - 1 - span))
            a[k] = lo + span if stride < 0 else lo
            s[k] = stride
        ops.append(op.code)
        args.append(a)
        sizes.append(size)
        strides.append(s)
        res += size
    n_slots = res
    outputs = draw(st.lists(st.integers(0, n_slots - 1), min_size=1, max_size=3))
    guards = []
    if n and draw(st.booleans()):
        g = draw(st.integers(n_fixed, n_slots - 1))
        guards.append((g, draw(st.integers(0, 1))))
    X = np.array(draw(st.lists(
        st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5]) | st.floats(-3, 3),
                 min_size=n_in, max_size=n_in), min_size=1, max_size=4)))
    P = np.array(draw(st.lists(st.floats(-2, 2), min_size=n_par, max_size=n_par)))
    tape = Tape(
        np.array(ops, dtype=np.int64), np.array(args, dtype=np.int64).reshape(-1, 3),
        np.array(consts, dtype=np.float64), nc + n_par + np.arange(n_in),
        nc + np.arange(n_par), np.array(outputs),
        guards=np.array(guards, dtype=np.int64).reshape(-1, 2),
        sizes=np.array(sizes, dtype=np.int64),
        strides=np.array(strides, dtype=np.int64).reshape(-1, 3),
    )
    return tape, X, (P if n_par else None)


def same_numbers(a, b) -> bool:
    """Equal as numbers (``-0.0 == 0.0``), NaN where NaN."""
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))


def close(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    fin = np.isfinite(a) & np.isfinite(b)
    return bool(np.allclose(a[fin], b[fin], rtol=1e-9, atol=1e-12))


def evaluations(tape, X, P):
    """Values (with the guard mask), Jacobians both ways, vjp with ones, and Hessians."""
    out = {}
    with np.errstate(all="ignore"):
        out["forward"] = tape.forward(X, P, check="mask")
        out["jac_fwd"] = tape.jacobian(X, P, mode="forward", check="mask")[0]
        out["jac_rev"] = tape.jacobian(X, P, mode="reverse", check="mask")[0]
        out["vjp"] = tape.vjp(X, np.ones(tape.n_outputs), P, check="mask")[1]
        if tape.n_outputs == 1:
            out["hessian"] = tape.hessian(X, P, check="mask")[0]
            out["point_grad"] = tape.gradient(X[0], P, check="mask")[0]
    return out


def _evaluate_or_reject(tape, X, P):
    try:
        return evaluations(tape, X, P)
    except ZeroDivisionError:
        # The kernels raise on a float division by zero (Numba's Python error model)
        # instead of returning inf: not what these tests are about.
        reject()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(), pipeline=st.sampled_from(PIPELINES))
def test_passes_keep_results(prog, pipeline):
    tape, X, P = prog
    before = _evaluate_or_reject(tape, X, P)
    opt, report = simplify(tape, pipeline, report=True)
    assert len(opt) <= len(tape)
    assert [r["pass"] for r in report] == list(pipeline)
    for r in report:
        assert r["instructions_after"] <= r["instructions_before"]
    assert report[0]["instructions_before"] == len(tape)
    assert report[-1]["instructions_after"] == len(opt)
    assert (opt.n_inputs, opt.n_params, opt.n_outputs, opt.n_guards) == (
        tape.n_inputs, tape.n_params, tape.n_outputs, tape.n_guards)
    after = evaluations(opt, X, P)
    (y0, ok0), (y1, ok1) = before["forward"], after["forward"]
    assert np.array_equal(ok0, ok1)
    assert same_bits(y0, y1), (tape.listing(None), opt.listing(None))
    exact = "cse" not in pipeline
    for k in before:
        if k == "forward":
            continue
        if exact:
            assert same_numbers(before[k], after[k]), (k, tape.listing(None), opt.listing(None))
        else:
            assert close(before[k], after[k]), (k, tape.listing(None), opt.listing(None))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs())
def test_repeated_optimization_converges_and_output_is_canonical(prog):
    """Passes can enable each other (DCE can free a value that a dead block read, which
    fold may then fold), so optimizing again may shrink a tape further; it settles."""
    tape, X, P = prog
    _evaluate_or_reject(tape, X, P)  # fold backs off where the kernels raise
    sizes = [len(tape)]
    t = tape
    for _ in range(6):
        t = simplify(t)
        sizes.append(len(t))
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == sizes[-2] == sizes[-3]
    # canonical: rebuilding from the public arrays gives the same tape
    again = Tape(t.opcodes, t.args, t.consts, t.inputs, t.params, t.outputs,
                 guards=t.guards, sizes=t.sizes, strides=t.strides)
    assert again.listing(None) == t.listing(None)


# ---------------------------------------------------------------------------------------
# what each pass removes
# ---------------------------------------------------------------------------------------
def repeated(x, y):
    a = np.sin(x) * y
    b = y * np.sin(x)  # the same, operands swapped
    unused = np.exp(x) + np.cosh(y)  # dead code  # noqa: F841
    return a + b + np.cos(x * y) + np.cos(y * x)


def test_cse_and_dce_shrink_a_recorded_function():
    tape = tapejit.record(repeated, 1.0, 2.0)
    assert len(tape) == 14
    opt, rep = simplify(tape, report=True)
    counts = {r["pass"]: (r["instructions_before"], r["instructions_after"]) for r in rep}
    assert counts == {"fold": (14, 14), "cse": (14, 10), "dce": (10, 7)}
    assert stats(opt)["op_counts"] == {"add": 3, "mul": 2, "sin": 1, "cos": 1}
    X = np.random.default_rng(0).uniform(-2, 2, (300, 2))
    assert same_bits(tape.forward(X), opt.forward(X))
    np.testing.assert_allclose(opt.gradient(X), tape.gradient(X), rtol=1e-14, atol=1e-15)


def test_cse_merges_block_instructions():
    def f(x):
        return np.sum(np.sin(x) * x) + np.sum(x * np.sin(x))

    tape = tapejit.record(f, np.ones(7))
    assert stats(tape)["n_blocks"] > 0
    opt = simplify(tape, ["cse", "dce"])
    assert len(opt) < len(tape) / 2 + 1
    assert stats(opt)["n_elements"] < stats(tape)["n_elements"] / 2 + 1
    X = np.random.default_rng(1).normal(size=(50, 7))
    assert same_bits(tape.forward(X), opt.forward(X))


def test_fold_a_hand_built_tape():
    c = BY_NAME
    # consts [2, 3]; x0 at slot 2; v0 = 2*3, v1 = sin(v0), v2 = x0 + v1, v3 = 3*2, v4 = v2 + v3
    tape = Tape(
        np.array([c["mul"].code, c["sin"].code, c["add"].code, c["mul"].code, c["add"].code]),
        np.array([[0, 1, 0], [3, 0, 0], [2, 4, 0], [1, 0, 0], [5, 6, 0]]),
        np.array([2.0, 3.0]), np.array([2]), np.zeros(0, int), np.array([7]),
    )
    opt, rep = simplify(tape, ["fold"], report=True)
    assert len(opt) == 2 and rep[0]["consts_after"] == 4  # 6.0 once, sin(6.0)
    assert opt.consts[:2].tolist() == [2.0, 3.0] and opt.consts[2] == 6.0
    assert opt.consts[3] == pytest.approx(np.sin(6.0), rel=1e-15)
    assert simplify(opt, ["dce"]).consts.tolist() == opt.consts[2:].tolist()
    X = np.linspace(-3, 3, 11)[:, None]
    assert same_bits(tape.forward(X), opt.forward(X))
    assert "= add(x0, " in opt.listing()


def test_fold_keeps_guarded_instructions_and_dce_keeps_guards():
    c = BY_NAME
    # v0 = greater(c0, c1) is guarded (and otherwise dead); v1 = x0 * c0 is the output
    tape = Tape(
        np.array([c["greater"].code, c["mul"].code]), np.array([[0, 1, 0], [2, 0, 0]]),
        np.array([2.0, 1.0]), np.array([2]), np.zeros(0, int), np.array([4]),
        guards=np.array([[3, 1]]),
    )
    opt = simplify(tape)
    assert opt.n_guards == 1 and len(opt) == 2
    assert opt.listing().count("greater") == 1
    assert opt.forward(np.array([1.5])) == 3.0
    # the guard now fails everywhere
    bad = Tape(tape.opcodes, tape.args, tape.consts, tape.inputs, tape.params, tape.outputs,
               guards=np.array([[3, 0]]))
    with pytest.raises(tapejit.BranchError):
        simplify(bad).forward(np.array([1.5]))


def test_fold_of_a_recorded_tape_changes_nothing():
    tape = tapejit.record(repeated, 1.0, 2.0)
    opt = simplify(tape, ["fold"])
    assert opt.listing(None) == tape.listing(None)


def test_dce_drops_dead_code_and_unused_constants():
    full = tapejit.record(lambda x: (x * 3.0, np.exp(x) + 7.0), 1.0)
    assert sorted(full.consts.tolist()) == [3.0, 7.0]
    first = Tape(full.opcodes, full.args, full.consts, full.inputs, full.params,
                 full.outputs[:1])
    opt = simplify(first, ["dce"])
    assert len(opt) == 1 and opt.consts.tolist() == [3.0]
    assert opt.forward(np.array([2.5])) == 7.5
    # nothing left but the input
    ident = Tape(full.opcodes, full.args, full.consts, full.inputs, full.params, full.inputs)
    opt = simplify(ident, ["dce"])
    assert len(opt) == 0 and len(opt.consts) == 0
    assert opt.forward(np.array([2.5])) == 2.5


def test_unknown_pass_and_bad_argument():
    tape = tapejit.record(repeated, 1.0, 2.0)
    with pytest.raises(ValueError, match="unknown pass 'inline'"):
        simplify(tape, ["inline"])
    with pytest.raises(TypeError, match=r"needs a tapejit\.Tape"):
        simplify("tape")
    assert len(simplify(tape, "dce")) == 11  # exp, cosh and their sum
    assert simplify(tape, ()).listing(None) == tape.listing(None)


# ---------------------------------------------------------------------------------------
# the commutative swap is exact
# ---------------------------------------------------------------------------------------
_SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -3.25, np.inf, -np.inf, 1e-310, -1e-310,
                     1e308, np.nan, 0.1, 7.0])


def _both_orders(op):
    tape = Tape(np.array([op.code, op.code]), np.array([[0, 1, 0], [1, 0, 0]]),
                np.zeros(0), np.array([0, 1]), np.zeros(0, int), np.array([2, 3]))
    a, b = np.meshgrid(_SPECIAL, _SPECIAL)
    X = np.stack([a.ravel(), b.ravel()], axis=1)
    with np.errstate(all="ignore"):
        Y = tape.forward(X)
        J = tape.jacobian(X)
    return Y, J


@pytest.mark.parametrize("op", [op for op in OPS if COMMUTATIVE in op.flags],
                         ids=lambda op: op.name)  # the same ids in every xdist worker
def test_commutative_swap(op):
    Y, J = _both_orders(op)
    if op.code in BIT_COMMUTATIVE:
        assert same_bits(Y[:, 0], Y[:, 1])
        assert same_numbers(J[:, 0], J[:, 1])
    else:  # maximum, minimum: not bit for bit on signed zeros
        assert op.name in ("maximum", "minimum")
        assert not same_bits(Y[:, 0], Y[:, 1])


# ---------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------
def test_stats_of_the_seed():
    tape = tapejit.record(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
    s = stats(tape)
    assert s["n_instructions"] == 5 and s["n_elements"] == 5 and s["n_blocks"] == 0
    assert (s["n_inputs"], s["n_params"], s["n_outputs"], s["n_consts"]) == (2, 0, 1, 0)
    assert s["n_slots"] == 7 and s["workspace_bytes_per_point"] == 56
    assert s["op_counts"] == {"log": 1, "mul": 1, "add": 1, "sin": 1, "sub": 1}
    assert s["bytes"]["program"] == packed(tape)[0].nbytes and s["bytes"]["consts"] == 0
    assert s["bytes"]["derived"] == reverse_plan(tape).nbytes  # too short to compact
    assert s["bytes"]["total"] == s["bytes"]["program"] + s["bytes"]["derived"]
    # x1, x2 live; then log (x1, x2, v0), mul (x1 dead after: x2, v0, v1), ...: at most 4
    assert s["peak_live"] == 4
    assert s["dead_instructions"] == 0
    text = format_stats(s)
    assert "instructions 5" in text and "peak live values 4" in text


def test_peak_live_of_a_chain_and_a_fan():
    chain = tapejit.record(lambda x: np.sin(np.sin(np.sin(np.sin(x)))), 1.0)
    assert stats(chain)["peak_live"] == 2
    fan = tapejit.record(lambda x: (np.sin(x), np.cos(x), np.exp(x), np.tanh(x)), 1.0)
    assert stats(fan)["peak_live"] == 5  # x and every result (all outputs)
    tree = tapejit.record(lambda a, b, c, d: (a * b) + (c * d), 1.0, 2.0, 3.0, 4.0)
    assert stats(tree)["peak_live"] == 5  # a*b is kept while c*d is computed


def test_stats_counts_blocks_and_dead_code():
    tape = tapejit.record(lambda x: np.sum(np.sin(x) * x), np.ones(8))
    s = stats(tape)
    assert s["n_blocks"] >= 2 and s["n_elements"] > s["n_instructions"]
    assert s["op_elements"]["sin"] == 8 and s["op_counts"]["sin"] == 1
    tape = tapejit.record(repeated, 1.0, 2.0)
    assert stats(tape)["dead_instructions"] == 3  # exp, cosh and their sum
