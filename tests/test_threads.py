"""One tape evaluated from many Python threads at once gives, call for call, bitwise the
results of single-threaded evaluation.

Tapes are immutable, every call allocates its own workspace (or uses a per-thread one:
one-point calls on tapes of more than 4096 slots), and the kernels release the GIL, so
threads really do run at the same time. Covered: a small tape, a tape above the
per-thread-workspace threshold, and one above the point-by-point batch threshold, each
with forward / value_and_grad / hessian at single points and on batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit import _tape

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
    assert small.n_slots < _tape._REUSE_SLOTS
    assert _tape._REUSE_SLOTS < big.n_slots <= _tape._POINTWISE_SLOTS
    assert huge.n_slots > _tape._POINTWISE_SLOTS
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
    for arr in (tape._prog, tape._consts, tape.opcodes, tape.consts):
        assert not arr.flags.writeable


_WORKQUEUE_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from concurrent.futures import ThreadPoolExecutor
import numba, numpy as np, tapejit
tape = tapejit.record(lambda x: np.sum(x ** 2), np.zeros(3))
X = np.random.default_rng(0).random((20000, 3))
# The very first parallel launches race too: the layer is unknown until one has run.
with ThreadPoolExecutor(4) as pool:
    got = list(pool.map(lambda _: tape.value_and_grad(X)[1], range(32)))
want = tape.value_and_grad(X)[1]
assert all((g == want).all() for g in got)
print(numba.threading_layer())
"""


def test_threads_under_workqueue_layer():
    # The layer Numba falls back to where neither OpenMP nor TBB is available.
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    proc = subprocess.run([sys.executable, "-c", _WORKQUEUE_SCRIPT.format(root=root)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "workqueue"
