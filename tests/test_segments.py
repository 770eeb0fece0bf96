"""Segmented reverse sweeps (``tapejit/_segments.py``): the same bits as the whole
tape's reverse sweep, for scalar and block programs, parameters, guards, several outputs
and per-point weights, cut into segments of every size down to a few elements.

Both paths run on whichever tier the suite runs (they share the kernels), so these
tests hold on the generic tier too.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import tapejit
from tapejit._program import Program
from tapejit._segments import SEGMENT_POINTS, split
from tapejit._tape import install_for_tests, segments_of


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


def _vjp_both(f, x0, X, W, params=None, elements=5):
    """``tape.vjp`` at points ``X`` with weights ``W``, segmented and not."""
    results = []
    for seg in (elements, 0):
        tape = tapejit.record(f, x0) if params is None else tapejit.record(
            f, x0, params[0] if params.ndim == 2 else params, argnums=0)
        install_for_tests(tape, segment_elements=seg)
        if seg:  # else the test would compare the plain path with itself
            assert segments_of(tape) is not None, "split refused the program"
        results.append(tape.vjp(X, W, params=params, check="mask"))
    return results


def _assert_same_bits(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(_bits(a), _bits(b))


def _recurrence(x):
    a, b = x[0], x[1]
    for _ in range(40):
        a = np.sin(a) * b + 0.1 * a
        b = 0.9 * b + 0.01 * a * a
    return a + b


def _blocks(x):
    # Strided, reversed and broadcast block operands, reading values from far back.
    u = np.tanh(x[:4] * x[4:])
    v = np.sin(x[::2]) + u[::-1] * x[1]
    for k in range(6):
        u = np.exp(0.3 * np.cos(u)) * v + x[k]
        v = v * 0.5 + u[::-1] ** 2
    w = np.square(x[::4])
    return (u * v)[0] + u[1] - v[3] * x[0] + w[0] * w[1]


def _params(x, p):
    s = x[0]
    for k in range(12):
        s = np.cos(s * p[k % 3]) + x[1] * p[2] + 0.25 * s
    return s


def _outputs(x):
    # Several outputs: one read again later, one an input, one a constant.
    a = np.sin(x[0]) * x[1]
    b = a
    for _ in range(10):
        b = np.tanh(b) + a * x[2]
    return np.stack([a, b, x[2], a * b, np.float64(2.0) + 0.0 * x[0]])


@pytest.mark.parametrize("elements", [1, 3, 7, 50])
def test_recurrence_same_bits(elements):
    rng = np.random.default_rng(1)
    X = rng.uniform(0.2, 0.9, (SEGMENT_POINTS + 37, 2))
    _assert_same_bits(*_vjp_both(_recurrence, X[0], X, np.ones(1), elements=elements))


@pytest.mark.parametrize("elements", [2, 5, 16])
def test_blocks_same_bits(elements):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 8))
    _assert_same_bits(*_vjp_both(_blocks, X[0], X, np.ones(1), elements=elements))


@pytest.mark.parametrize("per_point", [False, True])
def test_params_same_bits(per_point):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 2))
    P = rng.uniform(0.5, 1.5, (200, 3) if per_point else (3,))
    _assert_same_bits(*_vjp_both(_params, X[0], X, np.ones(1), params=P, elements=4))


def test_several_outputs_per_point_weights_same_bits():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 3))
    W = rng.normal(size=(150, 5))
    W[::7] = 0.0  # zero weights: adjoints that are zero, with their signs
    W[1::7, 1] = -0.0
    for elements in (1, 4, 9):
        _assert_same_bits(*_vjp_both(_outputs, X[0], X, W, elements=elements))


def test_guards_same_bits_and_mask():
    def f(x):
        s = x[0]
        for k in range(8):
            s = np.sin(s) + x[1] * k
        if s > 0.5:  # a guard: points on the other branch are masked
            return s * x[0]
        return s - x[1]

    rng = np.random.default_rng(5)
    X = rng.normal(size=(240, 2))
    x0 = next(x for x in X if f(x) == f(x) and _branch(f, x))
    seg, plain = _vjp_both(f, x0, X, np.ones(1), elements=3)
    _assert_same_bits(seg, plain)
    assert 0 < seg[2].sum() < len(X)  # both branches among the points
    assert np.isnan(seg[1][seg[2] == 0]).all()


def _branch(f, x) -> bool:
    s = x[0]
    for k in range(8):
        s = np.sin(s) + x[1] * k
    return bool(s > 0.5)


@pytest.mark.parametrize("seed", range(6))
def test_random_programs_same_bits(seed):
    rng = np.random.default_rng([6, seed])
    steps = [(int(rng.integers(6)), rng.integers(0, 1 << 30, 3)) for _ in range(40)]
    n_out = int(rng.integers(1, 4))

    def f(x):
        pool = [x[:4], x[4:], x[0], x[5]]
        for kind, (i, j, c) in steps:
            a, b = pool[i % len(pool)], pool[j % len(pool)]
            if kind == 0:
                v = np.sin(a) * 0.5 + b * 0.25
            elif kind == 1:
                v = np.tanh(a * b)
            elif kind == 2:
                v = a[::-1] if np.ndim(a) else a * np.cos(b)
            elif kind == 3:
                v = (np.concatenate([a[1::2], a[::2]]) * 1.5 if np.ndim(a)
                     else a - 0.125 * np.exp(np.sin(b)))
            elif kind == 4:
                v = a[c % np.size(a)] + b * 0.5 if np.ndim(a) else np.square(a) * 0.25 + b
            else:
                v = (a + b) / (2.0 + np.cos(a))
            pool.append(v)
        outs = [pool[-1 - k] for k in range(n_out)]
        return np.concatenate([np.ravel(o) for o in outs])

    X = rng.normal(size=(SEGMENT_POINTS + int(rng.integers(0, 200)), 8))
    tape = tapejit.record(f, X[0])
    W = rng.normal(size=(len(X), tape.n_outputs))
    for elements in (1, int(rng.integers(2, 30))):
        _assert_same_bits(*_vjp_both(f, X[0], X, W, elements=elements))


def test_long_tape_is_segmented_and_a_short_one_not(monkeypatch):
    import tapejit._tape as tape_module

    calls = []
    run = tape_module.segmented_vjp
    monkeypatch.setattr(tape_module, "segmented_vjp",
                        lambda *args: calls.append(1) or run(*args))
    long = tapejit.record(lambda x: _long(x, 1000), np.array([0.5, 0.7]))
    short = tapejit.record(_recurrence, np.array([0.5, 0.7]))
    X = np.random.default_rng(7).uniform(0.2, 0.9, (SEGMENT_POINTS, 2))
    short.value_and_grad(X)
    assert not calls  # a short tape's wide chunks need no segments
    v, g = long.value_and_grad(X)
    assert calls
    for k in (0, 5, SEGMENT_POINTS - 1):  # the same bits as one point at a time
        v1, g1 = long.value_and_grad(X[k])
        assert _bits(v[k]) == _bits(v1)
        np.testing.assert_array_equal(_bits(g[k]), _bits(g1))


def _long(x, k):
    a, b = x[0], x[1]
    for _ in range(k):
        a = np.sin(a) * b + 0.1 * a
        b = 0.9 * b + 0.01 * a * a
    return a + b


def test_families_are_not_segmented():
    A = np.arange(12.0).reshape(3, 4) / 10

    def f(x):
        return np.sum(np.tanh(A @ x))

    assert split(Program.from_tape(tapejit.record(f, np.ones(4))), 1) is None


def test_segment_programs_are_valid():
    tape = tapejit.record(_blocks, np.linspace(-1, 1, 8))
    sg = split(Program.from_tape(tape), 4)
    assert sg is not None and len(sg.segments) > 3
    for seg in sg.segments:
        Program.unpack(seg.prog, seg.consts)  # raises on anything a kernel relies on


def test_threads_take_parts_of_the_points_with_the_same_bits(monkeypatch):
    import tapejit._tape as tape_module

    parts = []
    split = tape_module.in_parts

    def spy(n, part, smallest):
        return split(n, lambda lo, hi: parts.append((lo, hi)) or part(lo, hi), smallest)

    long = tapejit.record(lambda x: _long(x, 1000), np.array([0.5, 0.7]))
    X = np.random.default_rng(9).uniform(0.2, 0.9, (4 * SEGMENT_POINTS + 5, 2))
    W = np.random.default_rng(10).normal(size=(len(X), 1))
    monkeypatch.setattr(tape_module, "in_parts", spy)
    got = (*long.value_and_grad(X), *long.vjp(X, W))
    monkeypatch.setattr(tape_module, "in_parts", lambda n, part, smallest: part(0, n))
    want = (*long.value_and_grad(X), *long.vjp(X, W))
    _assert_same_bits(got, want)
    if numba.get_num_threads() > 1:  # both calls shared their points between threads
        assert len(parts) >= 4 and {lo for lo, _ in parts} != {0}


def _links(z):
    # The hanging chain's constraints: blocks of hundreds of elements, a tape too long
    # for wide reverse chunks.
    x, y = z[: z.size // 2], z[z.size // 2 :]
    return (x[1:] - x[:-1]) ** 2 + (y[1:] - y[:-1]) ** 2 - 0.01


def test_long_tape_of_blocks_runs_batched_reverse_sweeps_point_by_point(monkeypatch):
    # Its batched values, vjps, gradients and reverse Jacobians take the point-by-point twins
    # (chunk 1), whose block loops vectorize, instead of chunk sweeps over a few points
    # or segments: the same bits as those; short tapes and long scalar ones keep theirs.
    import tapejit._tape as tape_module

    calls = []
    run = tape_module.run_batch

    def spy(ks, kernel, n, chunk, *args):
        calls.append((kernel, chunk))
        return run(ks, kernel, n, chunk, *args)

    monkeypatch.setattr(tape_module, "run_batch", spy)
    rng = np.random.default_rng(3)
    z0 = rng.uniform(0.0, 1.0, 1600)
    X = z0 + rng.uniform(-0.1, 0.1, (SEGMENT_POINTS + 3, z0.size))
    W = rng.normal(size=(len(X), z0.size // 2 - 1))

    blocks = tapejit.record(_links, z0)
    # (np.sum, not np.dot: a product calls BLAS, whose sums may differ in the last bits
    # between one point and a chunk of points)
    blocks_sum = tapejit.record(lambda z, w: np.sum(w * _links(z)), z0, W[0], argnums=0)
    got, used = [], set()
    for tape in (blocks, blocks_sum):
        calls.clear()
        got.append(tape.vjp(X, W) if tape is blocks else tape.value_and_grad(X, W[0]))
        used |= set(calls)
    calls.clear()
    J = blocks.jacobian(X[:3])
    Y = blocks.forward(X)
    used |= set(calls)
    assert used == {("vjp_batch", 1), ("jacrev_batch", 1), ("forward_batch", 1)}
    # the same bits as the chunk sweeps (forced: install_for_tests' chunk), as one point
    # at a time, and the values of the forward-mode Jacobian
    chunked = tapejit.record(_links, z0)
    chunked_sum = tapejit.record(lambda z, w: np.sum(w * _links(z)), z0, W[0], argnums=0)
    for tape in (chunked, chunked_sum):
        install_for_tests(tape, chunk=4)
    calls.clear()
    _assert_same_bits(got[0], chunked.vjp(X, W))
    _assert_same_bits(got[1], chunked_sum.value_and_grad(X, W[0]))
    _assert_same_bits((J,), (chunked.jacobian(X[:3]),))
    _assert_same_bits((Y,), (chunked.forward(X),))
    assert ("vjp_batch", 1) not in calls and ("jacrev_batch", 4) in calls
    for k in (0, len(X) - 1):
        _assert_same_bits((got[0][1][k],), (blocks.vjp(X[k], W[k])[1],))
    _assert_same_bits((J[1],), (blocks.jacobian(X[1]),))
    np.testing.assert_allclose(J, blocks.jacobian(X[:3], mode="forward"), rtol=1e-14,
                               atol=1e-14)
    # a short tape of blocks (19 elements an instruction) batches as before from three
    # points (3 * BLOCK_POINTWISE_RATIO > 19), and so does a long scalar one; at two
    # points the short one runs point by point too, the same bits as its chunk sweep
    calls.clear()
    short = tapejit.record(_links, z0[:40])
    short.vjp(X[:3, :40], W[:3, :19])
    tapejit.record(lambda x: _long(x, 1000), np.array([0.5, 0.7])).value_and_grad(X[:5, :2])
    assert calls and all(chunk > 1 for _, chunk in calls)
    calls.clear()
    got = short.vjp(X[:2, :40], W[:2, :19])
    assert calls == [("vjp_batch", 1)]
    install_for_tests(short, chunk=64)
    _assert_same_bits(got, short.vjp(X[:2, :40], W[:2, :19]))
    assert calls[-1] == ("vjp_batch", 64)
