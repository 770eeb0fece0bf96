"""asv benchmarks of scaling out: threads, Dask, and out-of-core streaming.

* ``Threads``: throughput of batched ``forward`` / ``value_and_grad`` over 1e6 points of
  a 2-D Rosenbrock tape on 1 and 2 Numba threads (``numba.set_num_threads`` in
  ``setup``/``teardown``); ``track_points_per_second`` reports the rate.
* ``DaskOverhead``: ``value_and_grad`` over 1e7 points in memory, direct versus
  ``tapejit.dask`` on the threaded scheduler with a few large chunks (8 of 1.25e6
  points), per-point results, the per-point results written by
  ``tapejit.dask.store`` straight into preallocated arrays (against a direct
  ``value_and_grad(X, out=(v, g))`` into the same arrays), and the sum reduction;
  ``track_ratio_*`` report dask time / direct time (best of 7 each, the two run
  alternately). Two tapes: ``rosen2`` (7 instructions: memory-bound, where Dask's
  assembling of the per-point results into one array shows) and ``sines`` (blocks of
  sin and exp: some work per point).
* ``Precision``: ``value_and_grad`` with float64 points and results against a
  ``Float32Tape`` (``tape.astype(np.float32)``): time, peak memory, and the ratio.
* ``Streamed``: ``evaluate_file`` over a ``.npy`` file of 1e7 points (160 MB, written
  once by ``setup_cache``), reduced or written to a ``.npy``: peak memory (asv's
  ``peakmem_`` is the whole process's maximum resident set, interpreter and kernels
  included: compare with ``peakmem_in_memory``, which loads the file and evaluates it
  in one call) and time; ``track_rss_growth_*`` measure in a fresh process how much
  the streaming itself adds to the peak resident set. 1e8 points (1.6 GB) is the same
  code on a bigger file: ``TAPEJIT_BENCH_STREAM_POINTS=1e8 asv run ...``.

JIT warm-up happens in ``setup``.
"""

import os
import subprocess
import sys
import time

import numpy as np

from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()

STREAM_POINTS = int(float(os.environ.get("TAPEJIT_BENCH_STREAM_POINTS", "1e7")))
DASK_POINTS = 10_000_000
DASK_CHUNKS = 8


def rosen2(x):
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2


def sines(x):
    """Two inputs, more work per point: 4-element blocks of sin and exp."""
    k = np.arange(1.0, 5.0)
    return np.sum(np.sin(k * x[0]) * np.exp(-0.1 * k * x[1] ** 2))


def _tape(f=rosen2):
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    try:
        return tapejit.record(f, np.zeros(2))
    except Exception as exc:
        raise NotImplementedError(f"tapejit.record failed: {exc!r}") from exc


def _need(attr):
    """``tapejit.<attr>`` or its private home, or skip."""
    obj = getattr(tapejit, attr, None)
    if obj is None:
        try:
            from tapejit import _stream

            obj = getattr(_stream, attr)
        except Exception as exc:
            raise NotImplementedError(f"tapejit.{attr} unavailable: {exc!r}") from exc
    return obj


def _best(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _ratio(fn, base, repeat=7):
    """Best time of ``fn`` over best time of ``base``, the two run alternately (a noisy
    machine slows both alike, not just whichever ran second)."""
    a = b = float("inf")
    for _ in range(repeat):
        a = min(a, _best(fn, 1))
        b = min(b, _best(base, 1))
    return a / b


def _column_sums(a):
    return np.array([a[:, j].sum() for j in range(a.shape[1])])


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------


class Threads:
    params = ((1, 2), ("forward", "value_and_grad"))
    param_names = ("threads", "method")
    timeout = 300

    def setup(self, threads, method):
        import numba

        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError(f"only {numba.config.NUMBA_NUM_THREADS} threads here")
        self.tape = _tape()
        self.X = np.random.default_rng(0).standard_normal((1_000_000, 2))
        self.fn = getattr(self.tape, method)
        self._old = numba.get_num_threads()
        numba.set_num_threads(threads)
        self.fn(self.X)  # warm-up: compile / load, fault in the allocator

    def teardown(self, threads, method):
        import numba

        if hasattr(self, "_old"):  # asv tears down after a setup that skipped, too
            numba.set_num_threads(self._old)

    def time_batch(self, threads, method):
        self.fn(self.X)

    def track_points_per_second(self, threads, method):
        return len(self.X) / _best(lambda: self.fn(self.X), 5)

    track_points_per_second.unit = "points/s"


# ---------------------------------------------------------------------------
# single precision
# ---------------------------------------------------------------------------


class Precision:
    """``value_and_grad`` over 1e7 points of ``rosen2`` and 1e6 of ``sines``, float64
    points and results against a ``Float32Tape`` on float32 points (float64 arithmetic
    either way): time and peak memory; ``track_ratio`` is float32 time / float64 time."""

    params = (("rosen2", "sines"), ("float64", "float32"))
    param_names = ("tape", "dtype")
    timeout = 600
    number = 1
    repeat = (3, 5, 60.0)

    def setup(self, tape, dtype):
        base = _tape({"rosen2": rosen2, "sines": sines}[tape])
        if not hasattr(base, "astype"):
            raise NotImplementedError("this tapejit has no Tape.astype")
        n = 10_000_000 if tape == "rosen2" else 1_000_000
        X = np.random.default_rng(0).standard_normal((n, 2))
        self.tape = base.astype(dtype)
        self.X = X.astype(dtype)
        self.tape.value_and_grad(self.X[:5000])  # compile / load

    def time_value_and_grad(self, tape, dtype):
        self.tape.value_and_grad(self.X)

    def peakmem_value_and_grad(self, tape, dtype):
        self.tape.value_and_grad(self.X)

    def track_ratio(self, tape, dtype):
        other = self.tape.astype("float64" if dtype == "float32" else "float32")
        Xo = self.X.astype(other.dtype)
        other.value_and_grad(Xo[:5000])
        mine = _best(lambda: self.tape.value_and_grad(self.X))
        theirs = _best(lambda: other.value_and_grad(Xo))
        return mine / theirs if dtype == "float32" else theirs / mine

    track_ratio.unit = "float32/float64"


# ---------------------------------------------------------------------------
# Dask overhead
# ---------------------------------------------------------------------------


class DaskOverhead:
    params = (("rosen2", "sines"),)
    param_names = ("tape",)
    timeout = 900
    number = 1
    repeat = (3, 5, 60.0)

    def setup(self, tape):
        self.tape = _tape({"rosen2": rosen2, "sines": sines}[tape])
        try:
            import dask
            import dask.array as da

            import tapejit.dask as td
        except ImportError as exc:
            raise NotImplementedError(f"dask unavailable: {exc}") from exc
        self.dask, self.td = dask, td
        self.X = np.random.default_rng(0).standard_normal((DASK_POINTS, 2))
        self.Xd = da.from_array(self.X, chunks=(DASK_POINTS // DASK_CHUNKS, 2))
        # targets of the direct call with out= and of the store, pages faulted in
        self.v, self.g = np.zeros(DASK_POINTS), np.zeros((DASK_POINTS, 2))
        self.store = getattr(td, "store", None)  # tapejit.dask.store is newer
        self.direct_vg()
        self.dask_vg()
        self.dask_sum()
        self.direct_into()
        if self.store is not None:
            self.dask_store()

    def direct_vg(self):
        return self.tape.value_and_grad(self.X)

    def direct_into(self):
        return self.tape.value_and_grad(self.X, out=(self.v, self.g))

    def dask_store(self):
        if self.store is None:
            raise NotImplementedError("this tapejit has no tapejit.dask.store")
        return self.store(self.tape, "value_and_grad", self.Xd, (self.v, self.g),
                          scheduler="threads")

    def direct_sum(self):
        v, g = self.tape.value_and_grad(self.X)
        return v.sum(), _column_sums(g)

    def dask_vg(self):
        return self.dask.compute(*self.td.value_and_grad(self.tape, self.Xd),
                                 scheduler="threads")

    def dask_sum(self):
        return self.dask.compute(*self.td.sum_value_and_grad(self.tape, self.Xd),
                                 scheduler="threads")

    def time_direct_value_and_grad(self, tape):
        self.direct_vg()

    def time_dask_value_and_grad(self, tape):
        self.dask_vg()

    def time_dask_store_value_and_grad(self, tape):
        self.dask_store()

    def time_direct_sum(self, tape):
        self.direct_sum()

    def time_dask_sum_value_and_grad(self, tape):
        self.dask_sum()

    def track_ratio_value_and_grad(self, tape):
        return _ratio(self.dask_vg, self.direct_vg)

    def track_ratio_store(self, tape):
        return _ratio(self.dask_store, self.direct_into)

    def track_ratio_sum(self, tape):
        return _ratio(self.dask_sum, self.direct_sum)

    track_ratio_value_and_grad.unit = "dask/direct"
    track_ratio_store.unit = "dask/direct"
    track_ratio_sum.unit = "dask/direct"


# ---------------------------------------------------------------------------
# out of core
# ---------------------------------------------------------------------------

_RSS_SCRIPT = """
import resource, sys
sys.path.insert(0, {root!r})
import numpy as np, tapejit
from tapejit._stream import evaluate_file
tape = tapejit.record(lambda x: 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2,
                      np.zeros(2))
evaluate_file(tape, np.zeros((3000, 2)), reduce="sum")
evaluate_file(tape, np.zeros((3000, 2)), {warm!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
evaluate_file(tape, {points!r}, {out!r}, reduce={reduce!r})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


class Streamed:
    timeout = 1200
    number = 1
    repeat = (1, 3, 120.0)

    def setup_cache(self):
        _tape()
        path = os.path.abspath("points.npy")  # in asv's per-class cache directory
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64,
                                      shape=(STREAM_POINTS, 2))
        rng = np.random.default_rng(0)
        step = 1 << 20
        for i in range(0, STREAM_POINTS, step):
            X[i : i + step] = rng.standard_normal((min(step, STREAM_POINTS - i), 2))
        X.flush()
        return path

    def setup(self, path):
        self.tape = _tape()
        self.evaluate_file = _need("evaluate_file")
        self.out = os.path.join(os.path.dirname(path), "out.npy")
        small = np.zeros((3000, 2))
        self.evaluate_file(self.tape, small, reduce="sum")
        self.evaluate_file(self.tape, small, self.out)

    def teardown(self, path):
        if os.path.exists(self.out):
            os.remove(self.out)

    def peakmem_stream_reduce(self, path):
        self.evaluate_file(self.tape, path, reduce="sum")

    def peakmem_stream_to_file(self, path):
        self.evaluate_file(self.tape, path, self.out)

    def peakmem_in_memory(self, path):
        self.tape.value_and_grad(np.load(path))

    def time_stream_reduce(self, path):
        self.evaluate_file(self.tape, path, reduce="sum")

    def time_stream_to_file(self, path):
        self.evaluate_file(self.tape, path, self.out)

    def _growth(self, path, reduce):
        root = os.path.dirname(os.path.dirname(os.path.abspath(tapejit.__file__)))
        script = _RSS_SCRIPT.format(root=root, points=path,
                                    out=None if reduce else self.out, reduce=reduce,
                                    warm=self.out)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=1200)
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        return float(proc.stdout.split()[-1])

    def track_rss_growth_reduce(self, path):
        return self._growth(path, "sum")

    def track_rss_growth_to_file(self, path):
        return self._growth(path, None)

    track_rss_growth_reduce.unit = "MB"
    track_rss_growth_to_file.unit = "MB"
