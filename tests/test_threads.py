"""One tape evaluated from many Python threads at once gives, call for call, bitwise the
results of single-threaded evaluation.

Tapes are immutable, every call allocates its own workspace (or uses a per-thread one:
one-point calls on tapes of more than 4096 slots), and the kernels release the GIL, so
threads really do run at the same time. Covered: a small tape, a tape above the
per-thread-workspace threshold, and one above the point-by-point batch threshold, each
with forward / value_and_grad / hessian at single points and on batches.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import pytest

import tapejit
from tapejit._kernels import runtime
from tapejit._tape import kernel_arrays, packed, reverse_plan

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

N_THREADS = 8


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _decay(n_t):
    """A three-input model summed over ``n_t`` sample times: many slots, few inputs."""
    t = np.linspace(0.0, 1.0, n_t)

    def f(x):
        return np.sum(np.sin(x[0] * t + x[1]) * np.exp(-x[2] * t)) / n_t

    return f


@pytest.fixture(scope="module")
def tapes():
    small = tapejit.record(_rosen, np.zeros(5))
    big = tapejit.record(_decay(1200), np.zeros(3))
    huge = tapejit.record(_decay(4000), np.zeros(3))
    assert small.n_slots < runtime.REUSE_SLOTS
    assert runtime.REUSE_SLOTS < big.n_slots <= runtime.POINTWISE_SLOTS
    assert huge.n_slots > runtime.POINTWISE_SLOTS
    return {"small": small, "big": big, "huge": huge}


def _jobs(tapes):
    """``(label, callable)`` pairs: every method at one point and on a batch."""
    rng = np.random.default_rng(8)
    jobs = []
    for name, tape in tapes.items():
        n = tape.n_inputs
        scale = 1.0 if name == "small" else 0.5
        points = [scale * rng.standard_normal(n) for _ in range(3)]
        batch = scale * rng.standard_normal((300 if name == "small" else 40, n))
        for i, x in enumerate(points):
            jobs.append((f"{name} forward point {i}", lambda t=tape, x=x: t.forward(x)))
            jobs.append((f"{name} vg point {i}", lambda t=tape, x=x: t.value_and_grad(x)))
            jobs.append((f"{name} hessian point {i}", lambda t=tape, x=x: t.hessian(x)))
        jobs.append((f"{name} forward batch", lambda t=tape, X=batch: t.forward(X)))
        jobs.append((f"{name} vg batch", lambda t=tape, X=batch: t.value_and_grad(X)))
        jobs.append((f"{name} hessian batch", lambda t=tape, X=batch[:8]: t.hessian(X)))
    return jobs


def _same(a, b) -> bool:
    """Bitwise equality of nested results (floats, arrays, tuples)."""
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(_same, a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_one_tape_many_threads_bitwise(tapes):
    jobs = _jobs(tapes)
    expected = [fn() for _, fn in jobs]  # single-threaded reference
    rounds = 6
    order = np.random.default_rng(0).permutation(np.tile(np.arange(len(jobs)), rounds))
    start = threading.Barrier(N_THREADS)

    def work(k: int):
        start.wait()  # all threads begin together
        mismatches = []
        for j in order[k::N_THREADS]:
            label, fn = jobs[j]
            if not _same(fn(), expected[j]):
                mismatches.append(label)
        return threading.get_ident(), mismatches

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(work, range(N_THREADS)))
    assert len({ident for ident, _ in results}) == N_THREADS
    bad = sorted({label for _, labels in results for label in labels})
    assert not bad, f"results differ from single-threaded evaluation: {bad}"


def test_out_buffers_per_thread(tapes):
    # The optimizer's hot path (one point, caller's buffers) on a tape with a per-thread
    # workspace: each thread its own buffers, all threads on the one tape.
    tape = tapes["big"]
    xs = np.random.default_rng(3).standard_normal((N_THREADS, 3)) * 0.5
    expected = [tape.value_and_grad(x) for x in xs]

    def work(k: int):
        g = np.empty(3)
        v = np.empty(())
        for _ in range(200):
            val, grad = tape.value_and_grad(xs[k], out=(v, g))
            if not (grad is g and _same(val, expected[k][0]) and _same(g, expected[k][1])
                    and float(v) == val):
                return False
        return True

    with ThreadPoolExecutor(N_THREADS) as pool:
        assert all(pool.map(work, range(N_THREADS)))


def test_tape_is_read_only(tapes):
    tape = tapes["small"]
    for arr in (*packed(tape), tape.opcodes, tape.consts):
        assert not arr.flags.writeable
    args = tape.jit_args()
    for arr in (args.prog, args.plan, args.consts):
        assert not arr.flags.writeable


def test_kernels_get_the_arrays_the_tape_owns(tapes):
    # Writeable arguments take Numba's fast typing path; they are the same memory as
    # the read-only views, so what the kernels see is what the tape shows.
    tape = tapes["small"]
    for own, view in zip(kernel_arrays(tape), packed(tape), strict=True):
        assert own.flags.writeable and own is not view and np.shares_memory(own, view)
        assert np.array_equal(own, view)
    x = np.linspace(0.5, 1.5, tape.n_inputs)
    before = [a.copy() for a in (*kernel_arrays(tape), reverse_plan(tape))]
    tape.value_and_grad(x)
    tape.value_and_grad(np.tile(x, (5, 1)))
    for arr, old in zip((*kernel_arrays(tape), reverse_plan(tape)), before, strict=True):
        assert np.array_equal(arr, old)  # nothing writes them


def test_batches_shared_by_threads_bitwise(tapes, monkeypatch):
    # A batch split over the caller's thread and the pool's gives the single-thread bits.
    shares = []
    pool = runtime.pool()

    class Counting:
        def submit(self, *args):
            shares.append(args[-2])
            return pool.submit(*args)

    monkeypatch.setattr(runtime, "pool", lambda: Counting())
    rng = np.random.default_rng(3)
    for name, tape in tapes.items():
        X = (0.5 if name != "small" else 1.0) * rng.standard_normal((2100, tape.n_inputs))
        numba.set_num_threads(1)
        try:
            want = [tape.forward(X), tape.value_and_grad(X), tape.jacobian(X[:1500])]
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        got = [tape.forward(X), tape.value_and_grad(X), tape.jacobian(X[:1500])]
        assert all(map(_same, got, want)), name
    if numba.config.NUMBA_NUM_THREADS > 1:  # the pool took shares 1 .. nt - 1
        assert shares and min(shares) == 1


_FORK_SCRIPT = """
import multiprocessing as mp, sys
sys.path.insert(0, {root!r})
import numpy as np, tapejit
tape = tapejit.record(lambda x: np.sum(x ** 2), np.zeros(3))
X = np.random.default_rng(0).random((20000, 3))
want = tape.value_and_grad(X)[1]  # starts the pool's threads in the parent


def child(q):
    q.put(bool((tape.value_and_grad(X)[1] == want).all()))


q = mp.get_context("fork").Queue()
p = mp.get_context("fork").Process(target=child, args=(q,))
p.start()
print(q.get(timeout=300))
p.join()
"""


def test_batches_in_a_forked_child():
    # A forked child has none of its parent's pool threads: it must not wait for them.
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", _FORK_SCRIPT.format(root=root)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "True"
