"""Sparsity patterns of loops (``tapejit.scan``, ``tapejit.fori_loop``): the loop rule of
``tapejit/_sparsity.py`` composes the body's dependencies and nonlinear interactions step
by step, so a loop tape's patterns equal those of the same function unrolled in Python,
and contain every nonzero of its dense derivatives.

Each case is written once over a ``scan`` and a ``fori_loop``, and run with tapejit's
(one loop instruction, with several checkpoint schedules) and with Python loops (the
unrolled tape). Loop tapes run on the optimised kernels only (recording one evaluates its
loop), hence the marker.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import tapejit
from tapejit import _sparsity
from tapejit._fam_loop import LOOP
from tapejit._program import Program

pytestmark = pytest.mark.kernels


def unrolled_scan(f, init, xs=None, length=None):
    """``tapejit.scan``'s semantics as a Python loop (records every step)."""
    n = length if xs is None else len(xs)
    carry, ys = init, []
    for t in range(n):
        carry, y = f(carry, None if xs is None else xs[t])
        ys.append(y)
    if not ys or ys[0] is None:
        return carry, None
    if isinstance(ys[0], tuple):
        return carry, tuple(np.stack(y) for y in zip(*ys, strict=True))
    return carry, np.stack(ys)


def unrolled_fori(lower, upper, body, val):
    for i in range(lower, upper):
        val = body(float(i), val)
    return val


def flat(*parts):
    return np.concatenate([np.reshape(p, -1) for p in parts if p is not None])


# ---------------------------------------------------------------------------------------
# the cases: f(x, scan, fori) -> a vector
# ---------------------------------------------------------------------------------------
def some_carries_couple(x, scan, fori):
    # a and b couple (a * b), b is linear, d reads the step's x, e is on its own
    def step(c, xt):
        a, b, d, e = c
        return (a * b, b + 0.5, np.sin(d) + xt, 2.0 * e), d * xt

    (a, b, d, e), ys = scan(step, (x[0], x[1], x[2], x[3]), x[4:8])
    return flat(a, b, d, e, ys)


def rows_of_xs(x, scan, fori):
    # ys of step t read row t of xs and the carry
    def step(c, xt):
        return c * 0.9 + xt[::-1], xt[0] * xt[1] + c[0] * c[0]

    c, ys = scan(step, x[:2], x[2:10].reshape(4, 2))
    return flat(c, ys)


def closure(x, scan, fori):
    # the body reads x[0], x[1] from outside; x[3] only after the loop
    p = x[:2]

    def step(c, _):
        return c * p[0] + p[1] * p[1], c * p[1]

    c, ys = scan(step, x[2], length=5)
    return flat(c * x[3], ys)


def guarded(x, scan, fori):
    def step(c, xt):
        if c > 0:  # taken at every step of the points used here
            return c * 0.5 + x[0] * c, c * xt
        return c - 1.0, c

    c, ys = scan(step, x[1], x[2:5])
    return flat(c, ys)


def no_steps(x, scan, fori):
    c, _ = scan(lambda c, _: ((c[0] * c[1], c[1]), None), (x[0], x[1]), length=0)
    d, ys = scan(lambda c, xt: (c * xt[0], c + xt[1]), x[2], np.zeros((0, 2)))
    return flat(c[0] * x[1], c[1], d, x[3], ys)


def one_step(x, scan, fori):
    c, ys = scan(lambda c, xt: (c * xt + c[::-1], np.sum(c * c) * xt[0]), x[:2], x[2:4][None])
    return flat(c, ys)


def fed_onwards(x, scan, fori):
    # the loop's results go through more elementwise code
    (a, b), ys = scan(lambda c, xt: ((c[0] + xt * c[1], c[1] * 0.9), c[0] * c[0]),
                      (x[0], x[1]), x[2:5])
    return flat(np.sin(a) * x[5], b * b + x[6], ys[::-1] * x[4], np.exp(ys[0]))


def chain(x, scan, fori):
    # carry the previous element: a banded (tridiagonal) Hessian
    _, ys = scan(lambda c, xt: (xt, (xt - c) ** 2 * np.cos(xt)), x[0], x[1:])
    return flat(ys)


def fori_vector(x, scan, fori):
    def body(i, v):
        return flat(v[:1] * v[1:2], v[1:] + i * x[3])

    return flat(fori(0, 4, body, x[:3]))


def nested(x, scan, fori):
    def outer(c, xt):
        inner = fori(0, 3, lambda i, v: np.sin(v) * x[0] + i * xt, c)
        return inner, c * c

    c, ys = scan(outer, x[1], x[2:5])
    return flat(c, ys)


def lorenz(x, scan, fori):
    # RK4 steps of the Lorenz system; carries x[:3], parameters x[3:6]
    s, r, b = x[3], x[4], x[5]

    def rhs(u):
        return (s * (u[1] - u[0]), u[0] * (r - u[2]) - u[1], u[0] * u[1] - b * u[2])

    def step(u, _):
        h = 0.01
        k1 = rhs(u)
        k2 = rhs([u[i] + 0.5 * h * k1[i] for i in range(3)])
        k3 = rhs([u[i] + 0.5 * h * k2[i] for i in range(3)])
        k4 = rhs([u[i] + h * k3[i] for i in range(3)])
        new = tuple(u[i] + h / 6 * (k1[i] + 2 * k2[i] + 2 * k3[i] + k4[i]) for i in range(3))
        return new, new[0]

    u, ys = scan(step, (x[0], x[1], x[2]), length=4)
    return flat(*u, ys)


def settles(x, scan, fori):
    # the carries' sets stop changing after a few of the 40 steps; ys read one x each
    def step(c, xt):
        a, b, d = c
        return (a + b * 0.5, b * 0.9, d * d), (a * xt, d)

    (a, b, d), (ya, yd) = scan(step, (x[0], x[1], x[2]), x[3:43])
    return flat(a, b, d, ya, yd)


CASES = {f.__name__: (f, n) for f, n in [
    (some_carries_couple, 8), (rows_of_xs, 10), (closure, 4), (guarded, 5), (no_steps, 4),
    (one_step, 4), (fed_onwards, 7), (chain, 8), (fori_vector, 4), (nested, 5),
    (lorenz, 6), (settles, 43),
]}


def loop_version(case, checkpoint=None):
    f, n = CASES[case]
    scan = functools.partial(tapejit.scan, checkpoint=checkpoint)
    fori = functools.partial(tapejit.fori_loop, checkpoint=checkpoint)
    return (lambda x: f(x, scan, fori)), n


def unrolled_version(case):
    f, n = CASES[case]
    return (lambda x: f(x, unrolled_scan, unrolled_fori)), n


def x0(n):
    return np.linspace(0.3, 0.8, n)


def points(n, k=3, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 0.9, (k, n))


def scalar(g):
    """A one-output function of ``g``'s outputs whose Hessian shows their own."""
    def h(x):
        y = g(x)
        return np.sum(y * np.linspace(1.0, 2.0, y.size))
    return h


def patterns_both_ways(tape):
    """The Jacobian pattern propagated forwards and backwards, as dense bool arrays."""
    p = Program.from_tape(tape)
    S, Y = _sparsity.input_sets(p), _sparsity.output_sets(p)
    nd = p.first_adjoint
    fwd = np.zeros((len(p.outputs), p.n_inputs), bool)
    for o, slot in enumerate(p.outputs.tolist()):
        fwd[o, sorted(S[slot])] = True
    bwd = np.zeros_like(fwd)
    for i in range(p.n_inputs):
        bwd[sorted(Y[nd + i]), i] = True
    return fwd, bwd


def has_loop(tape):
    return (tape.opcodes == LOOP.opcode).any()


# ---------------------------------------------------------------------------------------
# patterns against the unrolled tapes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [None, "all", 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loop_patterns_equal_the_unrolled_tapes(case, checkpoint):
    f, n = loop_version(case, checkpoint)
    g, _ = unrolled_version(case)
    loop, plain = tapejit.record(f, x0(n)), tapejit.record(g, x0(n))
    assert has_loop(loop) and not has_loop(plain)
    want = plain.jacobian_sparsity().toarray()
    np.testing.assert_array_equal(loop.jacobian_sparsity().toarray(), want)
    for got in patterns_both_ways(loop):
        np.testing.assert_array_equal(got, want)
    loop_h, plain_h = tapejit.record(scalar(f), x0(n)), tapejit.record(scalar(g), x0(n))
    np.testing.assert_array_equal(loop_h.hessian_sparsity().toarray(),
                                  plain_h.hessian_sparsity().toarray())


@pytest.mark.parametrize("case", sorted(CASES))
def test_loop_patterns_contain_the_dense_derivatives(case):
    f, n = loop_version(case)
    X = points(n)
    tape = tapejit.record(f, x0(n))
    pat = tape.jacobian_sparsity().toarray()
    J = tape.jacobian(X)
    assert not ((J != 0).any(axis=0) & ~pat).any(), "a nonzero outside the pattern"
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(tape.jacobian(X, sparse=True, mode=mode).toarray(), J,
                                   rtol=1e-12, atol=1e-14)
    tape = tapejit.record(scalar(f), x0(n))
    pat = tape.hessian_sparsity().toarray()
    H = tape.hessian(X)
    assert not ((H != 0).any(axis=0) & ~pat).any(), "a nonzero outside the pattern"
    np.testing.assert_allclose(tape.hessian(X, sparse=True).toarray(), H, rtol=1e-12,
                               atol=1e-13)
    np.testing.assert_allclose(tape.hessian(X[0], sparse=True).toarray(), H[0], rtol=1e-12,
                               atol=1e-13)


# ---------------------------------------------------------------------------------------
# what the rule says about known loops
# ---------------------------------------------------------------------------------------
def test_only_the_coupled_carries_share_entries():
    f, n = loop_version("some_carries_couple")
    pat = tapejit.record(f, x0(n)).jacobian_sparsity().toarray()
    rows = {"a": [0, 1], "b": [1], "d": [2, 4, 5, 6, 7], "e": [3]}
    for o, name in enumerate("abde"):
        np.testing.assert_array_equal(np.flatnonzero(pat[o]), rows[name])
    for t in range(4):  # y_t = d_t x_t: d_t reads x_0 .. x_(t-1)
        np.testing.assert_array_equal(np.flatnonzero(pat[4 + t]), [2, *range(4, 5 + t)])
    h = tapejit.record(scalar(f), x0(n)).hessian_sparsity().toarray()
    assert not h[3].any() and not h[:, 3].any()  # e is linear
    assert h[0, 1] and not h[0, 2:].any()


def test_a_chain_has_a_tridiagonal_hessian():
    f, n = loop_version("chain")
    h = tapejit.record(scalar(f), x0(n)).hessian_sparsity().toarray()
    i, j = np.indices((n, n))
    np.testing.assert_array_equal(h, abs(i - j) <= 1)


def test_status_and_checkpoints():
    # ys are the carries after each step: checkpoint k, the carry after (k + 1) every
    # steps, depends on x[0] (the initial carry) and the first (k + 1) every xs
    def f(x):
        _, ys = tapejit.scan(lambda c, xt: (c * xt, c * xt), x[0], x[1:], checkpoint=2)
        return ys

    tape = tapejit.record(f, x0(8))
    p = Program.from_tape(tape)
    S = _sparsity.input_sets(p)
    i = int(np.flatnonzero(p.opcodes == LOOP.opcode)[0])
    r = int(p.results[i])
    assert S[r] == frozenset()  # the status has a zero derivative
    length, every = 7, 2
    for k in range((length - 1) // every):
        assert S[r + 1 + k] == frozenset(range((k + 1) * every + 1))
    Y = _sparsity.output_sets(p)
    assert all(Y[r + 1 + k] == frozenset() for k in range(3))  # nothing reads them


def test_long_loops_settle():
    # 500 steps: the carries' sets settle and the rest is filled in, or (xs read by the
    # carry) grow every step; both as the unrolled tape says
    def settle(x, scan):
        (a, b), ys = scan(lambda c, _: ((c[0] * c[1], c[1] + 1.0), c[0]), (x[0], x[1]),
                          length=500)
        return flat(a, b, ys, x[2])

    def grow(x, scan):
        c, ys = scan(lambda c, xt: (c * 0.5 + xt * xt, c * xt), x[0], x[1:])
        return flat(c, ys)

    for g, n in ((settle, 3), (grow, 501)):
        loop = tapejit.record(lambda x, g=g: g(x, tapejit.scan), x0(n))
        plain = tapejit.record(lambda x, g=g: g(x, unrolled_scan), x0(n))
        for which in ("jacobian_sparsity",):
            np.testing.assert_array_equal(getattr(loop, which)().toarray(),
                                          getattr(plain, which)().toarray())
        loop_h = tapejit.record(scalar(lambda x, g=g: g(x, tapejit.scan)), x0(n))
        plain_h = tapejit.record(scalar(lambda x, g=g: g(x, unrolled_scan)), x0(n))
        np.testing.assert_array_equal(loop_h.hessian_sparsity().toarray(),
                                      plain_h.hessian_sparsity().toarray())


# ---------------------------------------------------------------------------------------
# random bodies
# ---------------------------------------------------------------------------------------
def random_loop(seed: int):
    """A random loop over scalar carries, per-step inputs and a closure (all slices of
    ``x``), its body built from linear and nonlinear ops, some outputs passed through or
    left constant; and its number of inputs."""
    plan = np.random.default_rng(seed)
    nc, nx, nk, ny = (int(v) for v in plan.integers([1, 0, 0, 0], [5, 3, 3, 3]))
    length = int(plan.integers(0, 7))
    ops = [int(v) for v in plan.integers(0, 7, size=nc + ny + 4)]
    picks = [tuple(int(v) for v in plan.integers(0, 1 << 20, size=3)) for _ in ops]

    def step(c, xt, p):
        vals = list(c) + [xt[j] for j in range(nx)] + [p[j] for j in range(nk)]
        for op, (i, j, k) in zip(ops, picks, strict=True):
            a, b, d = vals[i % len(vals)], vals[j % len(vals)], vals[k % len(vals)]
            vals.append([a * b, a + 2.0 * b, np.sin(a), a, a * a * b, np.where(d > 0.5, a, b),
                         0.5 * a - b][op])
        out = vals[-(nc + ny):]
        return tuple(out[:nc]), (tuple(out[nc:]) if ny else None)

    def f(x, scan, fori, checkpoint=None):
        c0 = tuple(x[j] for j in range(nc))
        xs = x[nc : nc + length * nx].reshape(length, nx) if nx else None
        p = x[nc + length * nx :]
        kw = {"length": length} if xs is None else {}
        if scan is not unrolled_scan:
            kw["checkpoint"] = checkpoint
        c, ys = scan(lambda c, xt: step(c, xt, p), c0, xs, **kw)
        return flat(*c, *(ys or ()), p * p)

    return f, nc + length * nx + nk


@pytest.mark.parametrize("seed", range(30))
def test_random_loops_match_the_unrolled_tapes(seed):
    f, n = random_loop(seed)
    loop = tapejit.record(lambda x: f(x, tapejit.scan, None, checkpoint=1 + seed % 3), x0(n))
    plain = tapejit.record(lambda x: f(x, unrolled_scan, None), x0(n))
    want = plain.jacobian_sparsity().toarray()
    np.testing.assert_array_equal(loop.jacobian_sparsity().toarray(), want)
    for got in patterns_both_ways(loop):
        np.testing.assert_array_equal(got, want)
    loop_h = tapejit.record(scalar(lambda x: f(x, tapejit.scan, None)), x0(n))
    plain_h = tapejit.record(scalar(lambda x: f(x, unrolled_scan, None)), x0(n))
    pat = loop_h.hessian_sparsity().toarray()
    np.testing.assert_array_equal(pat, plain_h.hessian_sparsity().toarray())
    H = loop_h.hessian(points(n, 2, seed))
    assert not ((H != 0).any(axis=0) & ~pat).any(), "a nonzero outside the pattern"


@pytest.mark.parametrize("seed", range(12))
def test_the_loop_rule_composes_and_transposes(seed):
    """The rule on operands labelled one by one gives which operand elements each result
    element depends on (``F``); on any operand sets (repeated rows, sets that stop
    changing: the shortcuts) it must give their unions through ``F``, and backwards
    (checkpoints read too) the transpose; the interaction pairs likewise."""
    f, n = random_loop(seed)
    tape = tapejit.record(lambda x: f(x, tapejit.scan, None, checkpoint=1 + seed % 2), x0(n))
    p = Program.from_tape(tape)
    at = np.flatnonzero(p.opcodes == LOOP.opcode)
    if not len(at):
        pytest.skip("no steps: nothing recorded")
    rows = _sparsity._Rows(p)
    lp = _sparsity._loop_of(p, rows, int(at[0]))
    sizes = [lp.nc, lp.n * lp.nx, len(lp.body.reach) - lp.nc - lp.nx]
    starts = np.cumsum([0, *sizes])
    labels = [[frozenset((int(starts[k]) + e,)) for e in range(m)] for k, m in enumerate(sizes)]
    F = lp.results(*labels)
    rng = np.random.default_rng(seed)
    pool = [frozenset(), frozenset((0,)), frozenset((1,)), frozenset((0, 2))]
    ops = [[pool[int(rng.integers(len(pool)))] for _ in range(m)] for m in sizes]
    ops[1] = ops[1][: lp.nx] * lp.n  # the same row at every step
    flat_ops = [s for o in ops for s in o]
    assert lp.results(*ops) == [frozenset().union(*(flat_ops[j] for j in e)) for e in F]
    res = [pool[int(rng.integers(len(pool)))] for _ in F]
    res[lp.ys0 :] = [pool[1]] * (len(F) - lp.ys0)  # the same ys sets at every step
    got = [s for o in lp.backward(res)[:3] for s in o]
    want = [frozenset().union(*(r for r, e in zip(res, F, strict=True) if j in e))
            for j in range(int(starts[-1]))]
    assert got == want
    live = rng.random(len(F)) < 0.5
    L, R = [], []
    lp.pairs(labels, live, L, R)
    pairs = {(i, j) for lq, rq in zip(L, R, strict=True) for i in lq for j in rq}
    L, R = [], []
    lp.pairs(ops, live, L, R)
    mapped = {(i, j) for lq, rq in zip(L, R, strict=True) for i in lq for j in rq}
    assert mapped == {(u, v) for i, j in pairs for u in flat_ops[i] for v in flat_ops[j]}
