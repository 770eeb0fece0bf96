"""Loops recorded once (``tapejit.scan``, ``tapejit.fori_loop``; ``tapejit/_loop.py``, the
``loop`` family's routines in ``tapejit/_kernels/fam_loop.py``).

A loop tape is checked against the tape of the same function unrolled in Python: values
bit for bit (the body runs the same instructions in the same order), and every sweep
(gradients, Jacobian-vector products, Hessians), batched and at one point, with each
checkpoint schedule. Adjoints of values the body reads from outside (its closure) sum
one step's terms at a time rather than in one long sum, so those agree to rounding.

These tests check the loop family's kernel routines, hence the marker; the generic tier's
loops are checked against them in ``tests/test_tiers.py``.
"""

from __future__ import annotations

import dataclasses
import io
import pickle

import numpy as np
import pytest

import tapejit
from tapejit import BranchError, TapeFormatError, TracingError
from tapejit._ops import BY_NAME

pytestmark = pytest.mark.kernels

RNG = np.random.default_rng(7)
XS = RNG.normal(size=(7, 2)) * 0.1
P0 = np.array([0.3, 0.05])


def _step(c, x, p):
    a, b = c
    a2 = np.sin(a) * b + p[0] * a + x[0]
    b2 = 0.9 * b + p[1] * a * a - x[1]
    return (a2, b2), a2 * b2


def _scanned(p, xs, checkpoint=None):
    (a, b), ys = tapejit.scan(lambda c, x: _step(c, x, p), (p[0], 0.5), xs,
                              checkpoint=checkpoint)
    return a + b + np.sum(ys * ys)


def _unrolled(p, xs):
    c, ys = (p[0], 0.5), []
    for t in range(xs.shape[0]):
        c, y = _step(c, xs[t], p)
        ys.append(y)
    return c[0] + c[1] + np.sum(np.stack(ys) ** 2)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("checkpoint", [None, "all", 2, 3, 7, 50])
def test_scan_matches_the_unrolled_tape_in_every_sweep(checkpoint):
    loop = tapejit.record(lambda p: _scanned(p, XS, checkpoint), P0)
    flat = tapejit.record(lambda p: _unrolled(p, XS), P0)
    assert len(loop) < 10 < len(flat)
    P = P0 + RNG.normal(size=(5, 2)) * 0.1
    np.testing.assert_array_equal(loop.forward(P), flat.forward(P))
    for x in (P, P[0]):
        v, g = loop.value_and_grad(x)
        vu, gu = flat.value_and_grad(x)
        np.testing.assert_array_equal(v, vu)
        _close(g, gu)
        _close(loop.hessian(x), flat.hessian(x))
    V = RNG.normal(size=(5, 2))
    np.testing.assert_array_equal(loop.jvp(P, V)[1], flat.jvp(P, V)[1])


@pytest.mark.parametrize("checkpoint", [None, 3])
def test_one_point_tangents_and_second_order_give_the_bits_of_many_points(checkpoint):
    # At one point the body's tangent and second-order steps run the point sweeps, over
    # many points the chunk sweeps: the same operations, so the same bits.
    loop = tapejit.record(lambda p: _scanned(p, XS, checkpoint), P0)
    P = P0 + RNG.normal(size=(4, 2)) * 0.1
    V = RNG.normal(size=(4, 2))
    ty, hv, H = loop.jvp(P, V), loop.hvp(P, V), loop.hessian(P)
    for q in range(len(P)):
        assert np.float64(loop.jvp(P[q], V[q])).tobytes() == ty[q].tobytes()
        assert loop.hvp(P[q], V[q]).tobytes() == hv[q].tobytes()
        assert loop.hessian(P[q]).tobytes() == H[q].tobytes()


def test_a_segment_too_long_to_keep_gives_the_bits_of_one_kept():
    # At one point the reverse keeps the body's workspace of every step of a segment, up
    # to LOOP_KEPT_VALUES floats (_kernels/fam_loop.py); one segment of 400,000 steps is
    # more, and each step runs forward again before its reverse: the same operations.
    xs = RNG.normal(size=(400_000, 2)) * 0.01
    kept = tapejit.record(lambda p: _scanned(p, xs), P0)
    whole = tapejit.record(lambda p: _scanned(p, xs, xs.shape[0]), P0)
    (v, g), (vw, gw) = kept.value_and_grad(P0), whole.value_and_grad(P0)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    np.testing.assert_array_equal(v, vw)
    np.testing.assert_array_equal(g, gw)


def test_per_step_inputs_are_differentiated_bit_for_bit():
    # xs as inputs: their adjoints come from one step each, in the unrolled order
    loop = tapejit.record(lambda p, xs: _scanned(p, xs), P0, XS)
    flat = tapejit.record(_unrolled, P0, XS)
    x = np.concatenate([P0, XS.ravel()])
    g, gu = loop.value_and_grad(x)[1], flat.value_and_grad(x)[1]
    np.testing.assert_array_equal(g[2:], gu[2:])
    _close(g, gu)
    _close(loop.hessian(x), flat.hessian(x))


def test_trees_of_carries_inputs_and_outputs():
    def f(x):
        def body(c, xs):
            s = c["s"] + xs["u"] * c["v"][0]
            v = c["v"] * xs["w"]
            return {"s": s, "v": v}, (s, v * 2.0)

        xs = {"u": np.arange(4.0), "w": np.linspace(0.5, 1.5, 8).reshape(4, 2)}
        c, (ss, vs) = tapejit.scan(body, {"s": x[0], "v": x[1:]}, xs)
        assert ss.shape == (4,) and vs.shape == (4, 2)
        return c["s"] + np.sum(c["v"]) + np.sum(ss) + np.sum(vs * vs)

    def plain(x):
        s, v, total = x[0], x[1:], 0.0
        w = np.linspace(0.5, 1.5, 8).reshape(4, 2)
        for t in range(4):
            s = s + t * v[0]
            v = v * w[t]
            total = total + s + np.sum((v * 2.0) ** 2)
        return s + np.sum(v) + total

    x0 = np.array([0.5, 1.0, -2.0])
    loop, flat = tapejit.record(f, x0), tapejit.record(plain, x0)
    _close(loop.forward(x0), flat.forward(x0))
    _close(loop.value_and_grad(x0)[1], flat.value_and_grad(x0)[1])


def test_parameters_and_closed_over_values():
    # the body reads a parameter (not differentiated) and an input (differentiated)
    def f(x, k):
        c, _ = tapejit.scan(lambda c, _: (c * x[0] + k, None), x[1], length=5)
        return c

    loop = tapejit.record(f, np.array([0.9, 1.0]), 0.5, argnums=0)
    X = np.array([[0.9, 1.0], [1.1, -2.0]])
    for k in (0.5, 2.0):
        c = X[:, 1].copy()
        for _ in range(5):
            c = c * X[:, 0] + k
        _close(loop.forward(X, params=[k]), c)
    g = loop.value_and_grad(np.array([0.9, 1.0]), params=[0.5])[1]
    h = 1e-6
    fd = [(loop.forward(np.array([0.9, 1.0]) + h * e, params=[0.5])
           - loop.forward(np.array([0.9, 1.0]) - h * e, params=[0.5])) / (2 * h)
          for e in np.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-7)


def test_fori_loop_power():
    tape = tapejit.record(lambda x: tapejit.fori_loop(0, 10, lambda i, v: v * x, 1.0), 1.5)
    x = np.array([1.5])
    _close(tape.forward(x), 1.5**10)
    _close(tape.value_and_grad(x)[1], [10 * 1.5**9])
    _close(tape.hessian(x), [[90 * 1.5**8]])


def test_fori_loop_index_is_the_step():
    tape = tapejit.record(lambda x: tapejit.fori_loop(2, 6, lambda i, v: v + i * x, 0.0), 1.0)
    _close(tape.value_and_grad(np.array([3.0]))[1], [2 + 3 + 4 + 5])


def test_nested_loops_match_the_unrolled_tape():
    def inner(c, p):
        return tapejit.fori_loop(0, 3, lambda i, v: np.sin(v) * p[0] + p[1] * i, c)

    def loop_f(p):
        c, ys = tapejit.scan(lambda c, _: (inner(c, p), c * c), 0.2, length=4)
        return c + np.sum(ys)

    def flat_f(p):
        c, total = 0.2, 0.0
        for _ in range(4):
            total = total + c * c
            for i in range(3):
                c = np.sin(c) * p[0] + p[1] * i
        return c + total

    p0 = np.array([0.8, 0.1])
    loop, flat = tapejit.record(loop_f, p0), tapejit.record(flat_f, p0)
    P = p0 + RNG.normal(size=(3, 2)) * 0.1
    _close(loop.forward(P), flat.forward(P))
    _close(loop.value_and_grad(P)[1], flat.value_and_grad(P)[1])
    _close(loop.hessian(P[0]), flat.hessian(P[0]))


def _branchy(x):
    def body(c, _):
        if c > 0:  # a guard of the body, checked at every step
            return c * 0.5 + x, None
        return c - 1.0, None

    c, _ = tapejit.scan(body, x, length=6)
    return c


def test_guards_inside_the_body_are_checked_at_every_step():
    tape = tapejit.record(_branchy, 1.0)
    assert tape.n_guards == 1
    _close(tape.forward(np.array([2.0])), _python_branchy(2.0))
    # x = -0.1: c > 0 fails at the first step
    with pytest.raises(BranchError):
        tape.forward(np.array([-0.1]))
    out, valid = tape.forward(np.array([[2.0], [-0.1]]), check="mask")
    assert valid.tolist() == [True, False]
    assert out[0] == _python_branchy(2.0) and np.isnan(out[1])


def _python_branchy(x):
    c = x
    for _ in range(6):
        c = c * 0.5 + x if c > 0 else c - 1.0
    return c


def test_a_branch_that_changes_while_recording_is_refused():
    def f(x):
        def body(c, _):
            return (c - 1.0 if c > 0 else c + 1.0), None
        return tapejit.scan(body, x, length=5)[0]

    with pytest.raises(TracingError, match=r"np\.where"):
        tapejit.record(f, 1.5)


def test_outside_a_recording_scan_is_a_python_loop():
    c, ys = tapejit.scan(lambda c, x: (c + x, c * x), 1.0, np.arange(4.0))
    assert c == 7.0
    np.testing.assert_array_equal(ys, [0.0, 1.0, 4.0, 12.0])
    assert tapejit.fori_loop(0, 3, lambda i, v: v * 2.0, 1.0) == 8.0


def test_zero_steps():
    tape = tapejit.record(lambda x: tapejit.scan(lambda c, _: (c * x, None), x + 1.0,
                                                 length=0)[0], 2.0)
    v, g = tape.value_and_grad(np.array([3.0]))
    assert v == 4.0 and g.tolist() == [1.0]


@pytest.mark.parametrize("body, message", [
    (lambda c, x: c, "pair"),
    (lambda c, x: ((c, c), None), "structure and shapes"),
])
def test_bodies_that_break_the_contract(body, message):
    with pytest.raises(TracingError, match=message):
        tapejit.record(lambda x: tapejit.scan(body, x, length=2)[0], 1.0)


def test_bad_lengths():
    with pytest.raises(ValueError, match="xs or length"):
        tapejit.scan(lambda c, x: (c, None), 1.0)
    with pytest.raises(ValueError, match="different lengths"):
        tapejit.scan(lambda c, x: (c, None), 1.0, (np.zeros(2), np.zeros(3)))
    with pytest.raises(ValueError, match="does not match"):
        tapejit.scan(lambda c, x: (c, None), 1.0, np.zeros(2), length=3)
    with pytest.raises(ValueError, match="checkpoint"):
        tapejit.record(lambda x: tapejit.scan(lambda c, _: (c, None), x, length=2,
                                              checkpoint=0)[0], 1.0)


def _nested_loops(p):
    inner = lambda c: tapejit.fori_loop(0, 3, lambda i, v: np.cos(v) * p[0] + i, c)  # noqa: E731
    return tapejit.scan(lambda c, x: (inner(c) + x, c), p[1], np.arange(4.0))[0]


def test_pickles_and_files_keep_loops(tmp_path):
    for f in (lambda p: _scanned(p, XS, 3), _nested_loops):
        tape = tapejit.record(f, P0)
        back = pickle.loads(pickle.dumps(tape))
        tape.save(tmp_path / "loop.tape")
        loaded = tapejit.load(tmp_path / "loop.tape")
        P = P0 + RNG.normal(size=(3, 2)) * 0.1
        want = tape.value_and_grad(P)
        for other in (back, loaded):
            assert len(other.subprograms) == 1
            got = other.value_and_grad(P)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def _members(tape) -> dict:
    buf = io.BytesIO()
    tape.save(buf)
    buf.seek(0)
    with np.load(buf) as z:
        return {k: z[k] for k in z.files}


def _load(members: dict, **limits):
    buf = io.BytesIO()
    np.savez(buf, **members)
    buf.seek(0)
    return tapejit.load(buf, **limits)


def test_files_with_bad_subprograms_are_refused():
    members = _members(tapejit.record(lambda p: _scanned(p, XS, 3), P0))
    assert int(members["format_version"]) == 4
    _load(members)  # as written: loads
    table = members["subprogram_table"]
    bad = {
        "does not follow": {"subprogram_table": np.add(table, [[0, 5, 0]], dtype="<i4")},
        "outside the pool": {"subprogram_table": np.add(table, [[0, 0, 10**6]],
                                                        dtype="<i4")},
        "after the last": {"subprograms": np.concatenate([members["subprograms"],
                                                          np.zeros(2, "<i4")])},
        "is empty": {"subprogram_table": table[:0]},
    }
    for message, change in bad.items():
        with pytest.raises(TapeFormatError, match=message):
            _load({**members, **change})
    cut = members["subprograms"].copy()
    cut[3] += 1  # a header count of the body: its layout no longer adds up
    with pytest.raises(TapeFormatError, match="sub-program 0"):
        _load({**members, "subprograms": cut})
    # the body's ops must be listed with their definitions
    keep = members["op_codes"] != BY_NAME["sin"].code
    with pytest.raises(TapeFormatError, match="do not list"):
        _load({**members, **{k: members[k][keep] for k in ("op_codes", "op_names",
                                                           "op_hashes")}})
    with pytest.raises(TapeFormatError, match="max_instructions"):
        _load(members, max_instructions=len(members["opcodes"]) + 3)


def test_a_body_that_does_not_fit_its_loop_is_refused():
    tape = tapejit.record(lambda p: _scanned(p, XS), P0)
    (sub,) = tape.subprograms
    body = sub.program
    # the same body, one output short: the loop would read past its outputs
    short = dataclasses.replace(body, outputs=body.outputs[:-1])
    arrays = dict(opcodes=tape.opcodes, args=tape.args, consts=tape.consts,
                  inputs=tape.inputs, params=tape.params, outputs=tape.outputs,
                  guards=tape.guards, sizes=tape.sizes, strides=tape.strides,
                  attrs=tape.attrs, attr_offsets=tape.attr_offsets)
    tapejit.Tape(**arrays, subprograms=(sub,))  # as recorded: accepted
    with pytest.raises(TapeFormatError, match="outputs"):
        tapejit.Tape(**arrays, subprograms=(type(sub)(short, sub.consts_at),))


def _carry_only(x):
    # no closure: every adjoint is one step's sum, as in the unrolled tape
    def body(c, _):
        a, b = c
        return (np.sin(a) * b + 0.1 * a, 0.9 * b + 0.01 * a * a - np.exp(-a) * 0.5), None
    (a, b), _ = tapejit.scan(body, (x[0], x[1]), length=50)
    return a * b


def _carry_only_unrolled(x):
    a, b = x[0], x[1]
    for _ in range(50):
        a, b = np.sin(a) * b + 0.1 * a, 0.9 * b + 0.01 * a * a - np.exp(-a) * 0.5
    return a * b


def test_one_point_gradient_of_a_scalar_body_is_bit_for_bit():
    # at one point the body runs its scalar program, the unrolled tape its own
    x = np.array([0.5, 1.2])
    loop, flat = tapejit.record(_carry_only, x), tapejit.record(_carry_only_unrolled, x)
    for p in (x, np.array([-0.3, 2.0])):
        v, g = loop.value_and_grad(p)
        vu, gu = flat.value_and_grad(p)
        np.testing.assert_array_equal(np.array([v, *g]), np.array([vu, *gu]))


def _two_loops(p):
    # two loops with scalar bodies, the second reading the first's ys, checkpoints of 4
    (a, b), ys = tapejit.scan(lambda c, x: _step(c, x, p), (p[0], 0.5), XS, checkpoint=4)
    c, _ = tapejit.scan(lambda c, y: (np.sin(c) * p[1] + y, None), a * b, ys, checkpoint=4)
    return c + np.sum(ys)


def _two_loops_unrolled(p):
    c, ys = (p[0], 0.5), []
    for t in range(XS.shape[0]):
        c, y = _step(c, XS[t], p)
        ys.append(y)
    d = c[0] * c[1]
    for y in ys:
        d = np.sin(d) * p[1] + y
    return d + np.sum(np.stack(ys))


def test_one_point_gradient_keeps_every_step_for_the_reverse():
    # value_grad_point hands a tape with loops the rest of its workspace as rows past its
    # slots (as much as _fam_loop.kept_floats, which the tape's workspace holds), where
    # each loop with a scalar body keeps every step's workspace from its forward to its
    # reverse (_loop_kept): no step runs forward again. The same bits as without that
    # room (each segment from its checkpoint), whatever the workspace held before.
    from tapejit._fam_loop import kept_floats
    from tapejit._kernels.runtime import kernels
    from tapejit._tape import kernel_arrays, point_floats, reverse_plan

    tape = tapejit.record(_two_loops, P0)
    prog, consts = kernel_arrays(tape)
    kept = kept_floats(prog)
    assert kept > 0
    run = kernels().module.value_grad_point
    n = tape.n_slots
    base = point_floats(tape) - kept
    P = np.empty(0)
    g0, g1, g2, g3 = (np.empty(2) for _ in range(4))
    for x in (P0, P0 + 0.1, P0 - 0.2):
        v0 = run(prog, reverse_plan(tape), consts, x, P, g0, np.empty(base))  # no room
        ws = np.full(base + kept, np.nan)
        v1 = run(prog, reverse_plan(tape), consts, x, P, g1, ws)
        assert np.isfinite(ws[n : n + kept]).any()  # the steps were kept there
        assert ws[n + kept - 1] == 0.0  # the last loop's flag: its room ends there, taken
        v2 = run(prog, reverse_plan(tape), consts, P0 + 0.3, P, g2, ws)  # ws reused
        v3 = run(prog, reverse_plan(tape), consts, x, P, g3, ws)
        assert np.isfinite(v2) and np.isfinite(g2).all()
        assert len({np.float64(v).tobytes() for v in (v0, v1, v3)}) == 1
        assert g0.tobytes() == g1.tobytes() == g3.tobytes()
    # the tape's one-point call takes the room its workspace has
    g = tape.value_and_grad(P0)[1]
    run(prog, reverse_plan(tape), consts, P0, P, g0, np.empty(base))
    assert g.tobytes() == g0.tobytes()
    _close(g, tapejit.record(_two_loops_unrolled, P0).value_and_grad(P0)[1])


def test_loops_too_long_to_keep_are_not_offered_room():
    # kept_floats counts a loop only while the total stays within LOOP_KEPT_VALUES
    from tapejit._fam_loop import kept_floats
    from tapejit._kernels.fam_loop import LOOP_KEPT_VALUES
    from tapejit._tape import kernel_arrays

    short = tapejit.record(lambda p: _scanned(p, XS), P0)
    per_step = kept_floats(kernel_arrays(short)[0]) // XS.shape[0]
    assert per_step > 0
    n = LOOP_KEPT_VALUES // per_step + 1
    xs = np.zeros((n, 2))
    assert kept_floats(kernel_arrays(tapejit.record(lambda p: _scanned(p, xs), P0))[0]) == 0
    block = tapejit.record(lambda x: tapejit.scan(lambda c, _: (np.sin(c), None), x,
                                                  length=2)[0], np.ones(8))
    assert kept_floats(kernel_arrays(block)[0]) == 0  # no scalar body


def test_the_kernels_derive_a_body_scalar_program_as_the_tape_does():
    # _loop_scalar (kernel side, run inside the loop routines) against
    # _scalar_program.scalar_program; called here on its own, it compiles on its own (a
    # few seconds): the one way to compare the two derivations array for array.
    from tapejit._kernels.runtime import kernels
    from tapejit._scalar_program import scalar_program

    derive = kernels().module._loop_scalar
    for f, x in ((_carry_only, np.array([0.5, 1.2])), (lambda p: _scanned(p, XS), P0),
                 (_branchy, 1.0)):
        (sub,) = tapejit.record(f, x).subprograms
        prog, _ = sub.program.pack()
        S, F = derive(prog)
        want = scalar_program(prog)
        assert want is not None
        np.testing.assert_array_equal(S, want[0])
        np.testing.assert_array_equal(F, want[1])
    # a body of block instructions has none
    block = tapejit.record(lambda x: tapejit.scan(lambda c, _: (np.sin(c), None), x,
                                                  length=2)[0], np.ones(8))
    assert derive(block.subprograms[0].program.pack()[0])[0].size == 0


def test_a_loop_tape_inlined_into_another_recording():
    inner = tapejit.record(lambda p: _scanned(p, XS, 3), P0)
    outer = tapejit.record(lambda p: inner(p) * 2.0 + p[0], P0)
    P = P0 + RNG.normal(size=(4, 2)) * 0.1
    v, g = outer.value_and_grad(P)
    vi, gi = inner.value_and_grad(P)
    np.testing.assert_array_equal(v, vi * 2.0 + P[:, 0])
    _close(g, gi * 2.0 + [1.0, 0.0])


def test_transforms_and_nested_differentiation():
    def f(x):
        return tapejit.scan(lambda c, _: (np.sin(c) * x[0] + x[1], None), x[0], length=4)[0]

    x = np.array([0.5, 0.2])
    tape = tapejit.record(f, x)
    _close(tapejit.grad(f)(x), tape.value_and_grad(x)[1])
    _close(tapejit.hessian(f)(x), tape.hessian(x))
    inner = tapejit.record(lambda x: tapejit.grad(f)(x)[0], x)  # a derivative as a tape
    _close(inner.forward(x), tape.value_and_grad(x)[1][0])


# -- nested differentiation (the loop family's reverse rule, _fam_loop.loop_vjp) -------------
def _nested_cases():
    """(loop function, the same unrolled, point): ys and per-step inputs, a closure, nested
    loops, a carry-only loop, fori_loop."""
    def fori(p):
        return tapejit.fori_loop(0, 6, lambda i, v: np.sin(v) * p[0] + p[1] * i, p[1])

    def fori_flat(p):
        v = p[1]
        for i in range(6):
            v = np.sin(v) * p[0] + p[1] * i
        return v

    def nested(p):
        return _nested_loops(p) * p[0]

    def nested_flat(p):
        c = p[1]
        for x in range(4):
            for i in range(3):
                c = np.cos(c) * p[0] + i
            c = c + x
        return c * p[0]

    return {
        "xs and ys": (lambda p: _scanned(p, XS, 3), lambda p: _unrolled(p, XS), P0),
        "all checkpoints": (lambda p: _scanned(p, XS, "all"), lambda p: _unrolled(p, XS),
                            P0),
        "carry only": (_carry_only, _carry_only_unrolled, np.array([0.5, 1.2])),
        "fori_loop": (fori, fori_flat, np.array([0.7, 0.2])),
        "nested loops": (nested, nested_flat, np.array([0.8, 0.1])),
    }


@pytest.mark.parametrize("case", list(_nested_cases()))
def test_nested_differentiation_of_loops(case, central_diff):
    """Derivatives recorded inside a recording, through new loops: ``grad(grad(f))``,
    the Hessian as ``jacobian(grad(f))``, and a loss that contains ``grad(f)``, against
    the unrolled function's tapes and central differences. The derivative tapes do not
    grow with the trip count."""
    f, flat, x = _nested_cases()[case]
    grad, jacobian = tapejit.grad, tapejit.jacobian
    H = tapejit.record(flat, x).hessian(x)
    gg = tapejit.record(lambda p: grad(lambda q: grad(f)(q)[0])(p), x)
    _close(gg.forward(x), H[0])
    jg = tapejit.record(lambda p: jacobian(grad(f))(p), x)
    _close(jg.forward(x).reshape(2, 2), H)
    hess = tapejit.record(lambda p: tapejit.hessian(f)(p), x)
    _close(hess.forward(x).reshape(2, 2), H)

    def loss(f):
        return lambda p: f(p) + np.sum(grad(f)(p) ** 2)

    tape, tape_flat = tapejit.record(loss(f), x), tapejit.record(loss(flat), x)
    X = x + RNG.normal(size=(3, 2)) * 0.05
    v, g = tape.value_and_grad(X)
    vu, gu = tape_flat.value_and_grad(X)
    _close(v, vu)
    _close(g, gu)
    np.testing.assert_allclose(g, central_diff(tape.forward, X), rtol=1e-6, atol=1e-8)
    _close(tape.hessian(x), tape_flat.hessian(x))  # third derivatives of f


def test_nested_derivative_tapes_do_not_grow_with_the_trip_count():
    def hessian_tape(steps):
        xs = np.linspace(-0.1, 0.1, 2 * steps).reshape(steps, 2)
        return tapejit.record(lambda p: tapejit.hessian(lambda q: _scanned(q, xs))(p), P0)

    assert len(hessian_tape(5)) == len(hessian_tape(40))


def test_nested_differentiation_keeps_the_bodys_guards():
    # the derivative's loops replay the body with its guard: checked at every step
    x = np.array([1.0])
    g = tapejit.record(lambda p: tapejit.grad(lambda q: _branchy(q[0]))(p), x)
    d = 1.0  # c <- c / 2 + x six times from c = x
    for _ in range(6):
        d = d / 2 + 1.0
    _close(g.forward(x), [d])
    with pytest.raises(BranchError):
        g.forward(np.array([-0.1]))
    out, ok = g.forward(np.array([[2.0], [-0.1]]), check="mask")
    assert ok.tolist() == [True, False] and np.isnan(out[1]).all()


def test_the_reverse_rule_on_every_result_element():
    """The rule's cotangents of every operand for cotangents of every result element,
    checkpoints included (which a recorded loop's own reverse sweep reads), against the
    kernels' reverse sweep of the loop instruction alone."""
    from tapejit._fam_loop import LOOP
    from tapejit._show import instruction_tape

    loop = tapejit.record(lambda p, xs: _scanned(p, xs, 2), P0, XS)
    i = int(np.flatnonzero(loop.opcodes == LOOP.opcode)[0])
    at = int(loop.attr_offsets[i])
    attrs = tuple(int(v) for v in loop.attrs[at : at + len(LOOP.attrs)])
    alone = instruction_tape(LOOP, attrs, [int(v) for v in loop.strides[i]],
                             int(loop.sizes[i]), loop.subprograms[0].program)
    x = np.concatenate([[P0[0], 0.5], XS.ravel(), P0])  # carry, xs, closure
    w = RNG.normal(size=alone.n_outputs)
    rule = tapejit.record(lambda z: tapejit.grad(lambda u: np.dot(w, alone(u)))(z), x)
    _close(rule.forward(x), alone.vjp(x, w)[1])


def test_listing_shows_the_body_once_and_the_table_its_values():
    def f(x):
        c, ys = tapejit.scan(lambda c, _: (np.sin(c) * x[0] + x[1], c * 2.0), x[0], length=5)
        return c + np.sum(ys)

    x = np.array([0.5, 0.2])
    tape = tapejit.record(f, x)
    text = tape.listing()
    assert "length=5" in text and text.count("sin(") == 1
    assert "    |   v0 = sin(x0)" in text
    sweep = tape.table(x)
    assert "loop[body=0, length=5" in str(sweep)
    v, g = tape.value_and_grad(x)
    assert f"{v:.6g}" in str(sweep) and f"{g[0]:.6g}" in str(sweep)


def test_float32_tapes_run_loops():
    tape = tapejit.record(lambda p: _scanned(p, XS), P0)
    P = P0 + RNG.normal(size=(6, 2)) * 0.1
    v32, g32 = tape.astype(np.float32).value_and_grad(P.astype(np.float32))
    v, g = tape.value_and_grad(P)
    np.testing.assert_allclose(v32, v, rtol=1e-6)
    np.testing.assert_allclose(g32, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("record", [_carry_only, _branchy], ids=["carry", "guarded"])
def test_few_points_of_loops_with_scalar_bodies_run_one_point_at_a_time(record,
                                                                       monkeypatch):
    # Below LOOP_POINT_BY_POINT_BELOW points the gradients (and below
    # LOOP_FORWARD_POINT_BY_POINT_BELOW the values) take the one-point kernel at each
    # point, where the body runs its scalar program, instead of chunk sweeps over a few
    # points per step: the same bits and the same guard checks as the batched sweeps.
    from tapejit import _tape
    from tapejit._segments import LOOP_POINT_BY_POINT_BELOW

    n_in = 2 if record is _carry_only else 1
    tape = tapejit.record(record, np.ones(n_in) if n_in == 2 else 1.0)
    X = np.random.default_rng(5).uniform(0.3, 1.5, (LOOP_POINT_BY_POINT_BELOW - 1, n_in))
    X[3] = -0.1  # _branchy: the other branch at its first step
    calls = []
    gradient_at = _tape.Tape._gradient_at
    monkeypatch.setattr(_tape.Tape, "_gradient_at",
                        lambda self, *a: calls.append(1) or gradient_at(self, *a))
    v, g, ok = tape.value_and_grad(X, check="mask")
    assert len(calls) == len(X)
    monkeypatch.setattr(_tape, "LOOP_POINT_BY_POINT_BELOW", 0)  # the batched sweeps
    v0, g0, ok0 = tape.value_and_grad(X, check="mask")
    assert len(calls) == len(X)
    np.testing.assert_array_equal(ok, ok0)
    assert ok.all() == (record is _carry_only)
    assert v.tobytes() == v0.tobytes() and g.tobytes() == g0.tobytes()
    # values alone, below LOOP_FORWARD_POINT_BY_POINT_BELOW points
    parts = []
    in_parts = _tape.in_parts
    monkeypatch.setattr(_tape, "in_parts", lambda n, *a: parts.append(n) or in_parts(n, *a))
    Xf = X[: _tape.LOOP_FORWARD_POINT_BY_POINT_BELOW - 1]
    y, oky = tape.forward(Xf, check="mask")
    assert parts == [len(Xf)]
    monkeypatch.setattr(_tape, "LOOP_FORWARD_POINT_BY_POINT_BELOW", 0)
    y0, oky0 = tape.forward(Xf, check="mask")
    assert parts == [len(Xf)]
    np.testing.assert_array_equal(oky, oky0)
    np.testing.assert_array_equal(oky, ok[: len(Xf)])
    assert y.tobytes() == y0.tobytes() and y.tobytes() == v[: len(Xf)].tobytes()
