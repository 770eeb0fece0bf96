"""The optimization passes on loop tapes (``tapejit._passes`` over ``tapejit.scan`` and
``tapejit.fori_loop`` tapes).

* Recorded loops whose bodies hold dead code and repeated subexpressions, read ``xs`` and
  closure values, nest, or branch (guards), and a hand-built body with constant
  subexpressions: every pass and the full pipeline leave the values bit for bit (one point
  and batched), fold and DCE every derivative too (value and gradient, Jacobian-vector
  and Hessian-vector products, one point and batched), CSE the derivatives up to
  rounding; a point that takes another branch inside a body still raises and is masked.
* The instruction counts drop by what is dead, repeated or constant, in the tape's own
  program and in each body; loops no output needs are removed unless a guard reads
  them, equal loops are merged, bodies no loop runs are dropped and the others
  renumbered.
* Fold computes a body's constants on the kernels that run loops (also under
  ``TAPEJIT_KERNELS=generic``); a simplified loop tape survives saving, loading and
  pickling.

Loop tapes run on the optimised kernels only, hence the marker.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from _op_helpers import same_bits

import tapejit
from tapejit import BranchError
from tapejit._fam_loop import LOOP, LOOP_ATTRS
from tapejit._ops import BY_NAME
from tapejit._passes import PASSES, format_stats, guard_slice, simplify, stats
from tapejit._program import Program
from tapejit._show import instruction_tape

pytestmark = pytest.mark.kernels

PIPELINES = [("fold",), ("cse",), ("dce",), PASSES]
BODY = LOOP_ATTRS.index("body")
RNG = np.random.default_rng(3)
XS = RNG.normal(size=(6, 2)) * 0.3


def evaluations(tape, X):
    """Values, value and gradient, jvp and hvp, at the points ``X`` and at ``X[0]``."""
    V = np.random.default_rng(0).normal(size=X.shape)
    out = {}
    for name, x, v in (("batched", X, V), ("point", X[0], V[0])):
        out[f"forward {name}"] = tape.forward(x)
        out[f"value {name}"], out[f"grad {name}"] = tape.value_and_grad(x)
        out[f"jvp {name}"] = tape.jvp(x, v)
        out[f"hvp {name}"] = tape.hvp(x, v)
    return out


def check_same(tape, opt, X, pipeline):
    """``opt`` gives ``tape``'s values bit for bit, and its derivatives bit for bit too
    unless CSE ran (then to rounding: merged adjoints are summed before multiplying)."""
    before, after = evaluations(tape, X), evaluations(opt, X)
    for k in before:
        if "forward" in k or "value" in k or "cse" not in pipeline:
            assert same_bits(before[k], after[k]), (k, tape.listing(None), opt.listing(None))
        else:
            np.testing.assert_allclose(after[k], before[k], rtol=1e-13, atol=1e-14)


def body_sizes(tape) -> list[int]:
    """Instructions of each sub-program of ``tape``, in table order."""
    return [len(s.program) for s in tape.subprograms]


# ---------------------------------------------------------------------------------------
# recorded loops
# ---------------------------------------------------------------------------------------
def _step(c, x, p):
    """A body with a dead value, a repeated product and a repeated sine."""
    a, b = c
    unused = np.exp(a) * x[1]  # noqa: F841 - dead code of the body
    a2 = np.sin(p[0]) * a + b * x[0]
    b2 = a * np.sin(p[0]) + x[0] * b - x[1] * p[1]
    return (a2, b2 * 0.5), a2 * b2


def scans(p):
    """Two scans of the same body over ``xs`` (inputs) and a closure (``p``), a third
    no output needs, and dead code outside them."""
    xs = p[2:].reshape(6, 2)
    (a, _), ys = tapejit.scan(lambda c, x: _step(c, x, p), (p[0], p[1]), xs)
    (_, b2), ys2 = tapejit.scan(lambda c, x: _step(c, x, p), (p[0], p[1]), xs)
    tapejit.scan(lambda c, x: _step(c, x, p), (p[1], p[0]), xs)  # dead, no guard
    unused = np.cosh(p[0]) + np.sin(p[1])  # noqa: F841
    return a + b2 + np.sum(ys * ys2)


P0 = np.concatenate([[0.4, -0.3], XS.ravel()])
PTS = P0 + RNG.normal(size=(4, P0.size)) * 0.1


@pytest.mark.parametrize("pipeline", PIPELINES, ids="-".join)
def test_scans_with_dead_code_and_repeats(pipeline):
    tape = tapejit.record(scans, P0)
    opt = simplify(tape, pipeline)
    check_same(tape, opt, PTS, pipeline)


def test_scans_shrink_by_the_expected_counts():
    tape = tapejit.record(scans, P0)
    assert len(tape) == 11 and body_sizes(tape) == [14] * 3
    s = stats(tape)
    assert (s["n_subprograms"], s["body_instructions"], s["op_counts"]["loop"]) == (3, 42, 3)
    opt, rep = simplify(tape, report=True)
    counts = {r["pass"]: (r["instructions_before"], r["instructions_after"],
                          r["body_instructions_before"], r["body_instructions_after"])
              for r in rep}
    # cse: the second loop merges into the first (equal bodies and operands), its body
    # goes, and in each body the repeated sine, its product, x[0] * b and their sum
    # (4 of 14); dce: the third loop with the product that made its carry, cosh, sin and
    # their sum, and in the body that is left exp(a) * x[1]
    assert counts == {"fold": (11, 11, 42, 42), "cse": (11, 10, 42, 20),
                      "dce": (10, 5, 20, 8)}
    assert body_sizes(opt) == [8]
    assert list(opt.attrs[opt.attr_offsets[opt.opcodes == LOOP.opcode] + BODY]) == [0]
    assert "exp" not in opt.listing(None) and "cosh" not in opt.listing(None)
    s = stats(opt)
    assert (s["n_subprograms"], s["body_instructions"], s["op_counts"]["loop"]) == (1, 8, 1)
    assert s["dead_instructions"] == 0
    assert "loop bodies 1 (8 instructions)" in format_stats(s)


def _inner(c, p):
    def body(i, v):
        dead = np.tanh(v) * i  # noqa: F841
        return np.sin(v) * p[0] + p[1] * i + np.sin(v) * p[0] * 0.0

    return tapejit.fori_loop(0, 3, body, c)


def nested(p):
    """A scan whose body runs a loop (with dead code and repeats) and a dead loop."""
    def body(c, x):
        tapejit.fori_loop(0, 2, lambda i, v: v * x, c)  # dead inside the body
        return _inner(c, p) + x, c * c

    c, ys = tapejit.scan(body, 0.2, p[2:6])
    return c + np.sum(ys)


@pytest.mark.parametrize("pipeline", PIPELINES, ids="-".join)
def test_nested_loops(pipeline):
    p0 = np.array([0.8, 0.1, 0.3, -0.2, 0.5, 0.05])
    tape = tapejit.record(nested, p0)
    opt = simplify(tape, pipeline)
    check_same(tape, opt, p0 + RNG.normal(size=(3, 6)) * 0.1, pipeline)


def test_nested_loops_shrink_inside_the_inner_body():
    p0 = np.array([0.8, 0.1, 0.3, -0.2, 0.5, 0.05])
    tape = tapejit.record(nested, p0)
    (outer,) = tape.subprograms
    assert len(outer.program) == 4  # the dead loop, _inner's, the carry and the y
    assert [len(s.program) for s in outer.program.subprograms] == [1, 10]
    opt = simplify(tape)
    assert len(opt) == len(tape)
    (outer,) = opt.subprograms
    assert len(outer.program) == 3
    # the dead loop went, _inner's is renumbered to 0; in its body tanh and its product
    # (dead), the second sine and its product (repeated)
    (inner,) = outer.program.subprograms
    assert len(inner.program) == 6
    assert stats(tape)["body_instructions"] == 15 and stats(opt)["body_instructions"] == 9
    assert "body=0, length=3" in opt.listing(None)


_OPS = (lambda a, b, d: a * b, lambda a, b, d: b + a * 0.75,
        lambda a, b, d: np.sin(a) * d, lambda a, b, d: a * a - b,
        lambda a, b, d: np.exp(-a * a), lambda a, b, d: np.where(d > 0.5, a, b))
_SWAPPED = (lambda a, b, d: b * a, lambda a, b, d: a * 0.75 + b, *_OPS[2:])


def random_scan(seed: int):
    """A random scan over scalar carries, per-step inputs and a closure (slices of ``x``)
    whose body computes more values than it returns (dead code) and repeats some of them
    (operands swapped where that gives the same bits); and its number of inputs."""
    plan = np.random.default_rng(seed)
    nc, nx, nk, ny = (int(v) for v in plan.integers([1, 0, 0, 0], [4, 3, 3, 3]))
    length = int(plan.integers(1, 6))
    n_ops = nc + ny + int(plan.integers(2, 8))
    ops = [int(v) for v in plan.integers(0, 6, size=n_ops)]
    picks = [tuple(int(v) for v in plan.integers(0, 1 << 20, size=3)) for _ in ops]
    again = [int(v) for v in plan.integers(0, 1 << 20, size=n_ops)]
    outs = [int(v) for v in plan.integers(0, 1 << 20, size=nc + ny)]

    def step(c, xt, p):
        vals = list(c) + [xt[j] for j in range(nx)] + [p[j] for j in range(nk)]
        n_in = len(vals)
        for op, (i, j, k), r in zip(ops, picks, again, strict=True):
            a, b, d = vals[i % len(vals)], vals[j % len(vals)], vals[k % len(vals)]
            vals.append(_OPS[op](a, b, d))
            if r % 3 == 0:  # the same again, operands swapped where that keeps the bits
                vals.append(_SWAPPED[op](a, b, d))
        made = vals[n_in:]
        out = [made[o % len(made)] for o in outs]
        return tuple(out[:nc]), (tuple(out[nc:]) if ny else None)

    def f(x):
        c0 = tuple(x[j] for j in range(nc))
        xs = x[nc : nc + length * nx].reshape(length, nx) if nx else None
        p = x[nc + length * nx :]
        c, ys = tapejit.scan(lambda c, xt: step(c, xt, p), c0, xs,
                             length=None if nx else length)
        return sum(ci * ci for ci in c) + (sum(np.sum(y * y) for y in ys) if ny else 0.0)

    return f, nc + length * nx + nk


@pytest.mark.parametrize("seed", range(16))
def test_random_bodies(seed):
    f, n = random_scan(seed)
    x0 = np.random.default_rng(seed).uniform(0.2, 0.9, n)
    tape = tapejit.record(f, x0)
    X = x0 + np.random.default_rng(seed + 1).normal(size=(3, n)) * 0.05
    pipeline = PIPELINES[seed % len(PIPELINES)]
    opt = simplify(tape, pipeline)
    assert stats(opt)["body_instructions"] <= stats(tape)["body_instructions"]
    check_same(tape, opt, X, pipeline)


# ---------------------------------------------------------------------------------------
# guards
# ---------------------------------------------------------------------------------------
def _branchy_body(x):
    def body(c, _):
        unused = np.exp(c) + np.exp(c)  # noqa: F841
        if c > 0:  # a guard of the body, checked at every step
            return c * 0.5 + x * x + x * x, None
        return c - 1.0, None

    return body


def branchy(v):
    x = v[0]
    c, _ = tapejit.scan(_branchy_body(x), x, length=5)
    tapejit.scan(_branchy_body(v[1]), v[1], length=5)  # dead but guarded: stays
    tapejit.scan(lambda c, _: (c * v[1], None), x, length=5)  # dead, no guard: goes
    return c * v[1]


@pytest.mark.parametrize("pipeline", PIPELINES, ids="-".join)
def test_guards_in_bodies_keep_their_meaning(pipeline):
    v0 = np.array([1.0, 2.0])
    tape = tapejit.record(branchy, v0)
    assert tape.n_guards == 2
    opt = simplify(tape, pipeline)
    assert opt.n_guards == 2
    check_same(tape, opt, v0 + RNG.uniform(0, 0.5, (4, 2)), pipeline)
    # x = -0.1 fails at the first step of the first loop, v[1] = -0.1 of the second
    for bad in ([-0.1, 2.0], [1.0, -0.1]):
        with pytest.raises(BranchError):
            opt.forward(np.array(bad))
    X = np.array([[1.0, 2.0], [-0.1, 2.0], [1.0, -0.1], [0.5, 0.7]])
    for method in ("forward", "value_and_grad"):
        want, got = (getattr(t, method)(X, check="mask") for t in (tape, opt))
        assert want[-1].tolist() == got[-1].tolist() == [True, False, False, True]
        for a, b in zip(want[:-1], got[:-1], strict=True):
            assert same_bits(a, b)


def test_a_dead_loop_goes_unless_its_status_is_guarded():
    v0 = np.array([1.0, 2.0])
    tape = tapejit.record(branchy, v0)
    assert stats(tape)["op_counts"]["loop"] == 3
    opt = simplify(tape, ["dce"])
    assert stats(opt)["op_counts"]["loop"] == 2
    bodies = [s.program for s in opt.subprograms]
    assert all(len(b.guards) == 1 for b in bodies)
    assert len(opt.subprograms) == 2
    assert list(opt.attrs[opt.attr_offsets[opt.opcodes == LOOP.opcode] + BODY]) == [0, 1]
    # the body's dead exp(c) + exp(c) went: three instructions of each
    assert body_sizes(opt) == [n - 3 for n in body_sizes(tape)[:2]]
    assert body_sizes(simplify(tape)) == [n - 4 for n in body_sizes(tape)[:2]]


def test_the_guard_slice_of_a_loop_tape_drops_what_no_guard_reads():
    v0 = np.array([1.0, 2.0])
    tape = tapejit.record(branchy, v0)
    sliced = guard_slice(tape)
    assert stats(sliced)["op_counts"]["loop"] == 2 and sliced.n_guards == 2
    X = np.array([[1.0, 2.0], [-0.1, 2.0], [1.0, -0.1]])
    assert sliced.forward(X, check="mask")[1].tolist() == [True, False, False]


# ---------------------------------------------------------------------------------------
# constant subexpressions in a body (hand-built: the recorder folds them while recording)
# ---------------------------------------------------------------------------------------
_LENGTH = 5
_ATTRS = {"body": 0, "length": _LENGTH, "n_carry": 1, "n_x": 1, "n_closure": 1, "n_y": 1,
          "every": 2}


def _folding_body() -> Program:
    """Inputs ``[c | x | k]`` (slots 2, 3, 4 after the constants 2.0 and 3.0); the next
    carry ``(c sin(2 * 3) + x) k`` and the output ``sin(2 * 3) x``, with ``2 * 3``,
    ``sin`` of it twice and a dead ``exp(2)`` that depend on constants only."""
    op = {k: BY_NAME[k].code for k in ("mul", "sin", "add", "exp")}
    code = [("mul", 0, 1), ("sin", 5, 0), ("mul", 2, 6), ("add", 7, 3), ("mul", 8, 4),
            ("exp", 0, 0), ("sin", 5, 0), ("mul", 11, 3)]
    args = np.array([[a, b, 0] for _, a, b in code])
    return Program(np.array([op[c[0]] for c in code]), args, np.ones(len(code), int),
                   np.zeros((len(code), 3), int), np.array([2.0, 3.0]), 0, 3,
                   np.array([9, 12]), np.zeros((0, 2), int))


def folding_tape():
    """A recording that calls a one-instruction loop tape over the body above."""
    values = tuple(_ATTRS[k] for k in LOOP_ATTRS)
    size = int(LOOP.sizes(np.array([values]))[0, 0])
    inner = instruction_tape(LOOP, values, [1, _LENGTH, 1], size, _folding_body())

    def f(v):
        out = inner(v)
        return np.sum(out[-_LENGTH:] ** 2) + out[-_LENGTH - 1]

    return tapejit.record(f, np.linspace(0.1, 0.7, 2 + _LENGTH))


@pytest.mark.parametrize("pipeline", PIPELINES, ids="-".join)
def test_constant_subexpressions_in_a_body(pipeline):
    tape = folding_tape()
    opt = simplify(tape, pipeline)
    X = np.linspace(0.1, 0.7, 7) + RNG.normal(size=(3, 7)) * 0.1
    check_same(tape, opt, X, pipeline)


def test_fold_turns_a_body_s_constant_part_into_constants():
    tape = folding_tape()
    (body,) = tape.subprograms
    assert len(body.program) == 8
    opt = simplify(tape, ["fold"])
    (folded,) = opt.subprograms
    # 2 * 3, both sines and exp(2) are constants now (one pool entry for the sines)
    assert len(folded.program) == 4
    assert folded.program.consts.tolist()[:2] == [2.0, 3.0]
    assert len(folded.program.consts) == 5
    pool = opt.consts[folded.consts_at : folded.consts_at + 5]
    assert same_bits(pool, folded.program.consts)
    # and dce drops exp(2) and the constants nothing reads any more
    (kept,) = simplify(tape).subprograms
    assert len(kept.program) == 4 and len(kept.program.consts) == 1
    assert stats(simplify(tape))["body_instructions"] == 4


def test_fold_computes_a_body_s_constants_as_the_loop_does():
    """Under the generic tier too: there ``sin`` is numpy's, an ulp away from the kernels'
    on some arguments, and the loop runs its body with it as well."""
    script = """if True:
        import numpy as np
        from tapejit._fam_loop import LOOP, LOOP_ATTRS
        from tapejit._ops import BY_NAME
        from tapejit._passes import simplify
        from tapejit._program import Program
        from tapejit._show import instruction_tape
        n = 64
        consts = np.linspace(0.5, 40.0, n)
        # a body returning sin(consts), a block over the constants: all of it folds
        body = Program(np.array([BY_NAME["sin"].code]), np.zeros((1, 3), int),
                       np.array([n]), np.array([[1, 0, 0]]), consts, 0, 1,
                       n + 1 + np.arange(n), np.zeros((0, 2), int))
        attrs = {"body": 0, "length": 1, "n_carry": 0, "n_x": 0, "n_closure": 1,
                 "n_y": n, "every": 1}
        tape = instruction_tape(LOOP, tuple(attrs[k] for k in LOOP_ATTRS), [0, 0, 1],
                                1 + n, body)
        want = tape.forward(np.ones(1))[1:]  # not numpy's sin on some of these
        (sub,) = simplify(tape, ["fold"]).subprograms
        assert len(sub.program) == 0
        assert np.array_equal(sub.program.consts[sub.program.outputs].view(np.int64),
                              want.view(np.int64))
        print("ok")
    """
    env = dict(os.environ, TAPEJIT_KERNELS="generic")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


# ---------------------------------------------------------------------------------------
# keeping a simplified loop tape
# ---------------------------------------------------------------------------------------
def test_a_simplified_loop_tape_saves_loads_and_pickles(tmp_path):
    for tape in (tapejit.record(scans, P0), folding_tape(),
                 tapejit.record(nested, np.array([0.8, 0.1, 0.3, -0.2, 0.5, 0.05]))):
        opt = simplify(tape)
        opt.save(tmp_path / "loop.tape")
        loaded = tapejit.load(tmp_path / "loop.tape")
        back = pickle.loads(pickle.dumps(opt))
        assert loaded.listing(None) == opt.listing(None) == back.listing(None)
        x = np.linspace(0.1, 0.7, opt.n_inputs)
        want = opt.value_and_grad(x)
        for other in (loaded, back):
            got = other.value_and_grad(x)
            assert same_bits(got[0], want[0]) and same_bits(got[1], want[1])


def test_simplifying_again_changes_nothing():
    for tape in (tapejit.record(scans, P0), folding_tape(),
                 tapejit.record(branchy, np.array([1.0, 2.0]))):
        once = simplify(tape)
        assert simplify(once).listing(None) == once.listing(None)
