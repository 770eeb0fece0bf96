"""First use: compile time, and a fresh process to its first gradient with a warm cache.

``timeraw_`` benchmarks run their code in a new interpreter, so they measure what a
user's script pays: importing tapejit, loading the cached interpreters, recording and
the first gradient. The compile benchmark points tapejit at an empty cache directory,
so the interpreters it needs are compiled from scratch (minutes; run it deliberately).
"""

import os
import subprocess
import sys
import tempfile
import time

_FIRST_GRADIENT = """
import numpy as np
import tapejit
tape = tapejit.record(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
tape.value_and_grad(np.array([2.0, 5.0]))
"""


def timeraw_first_gradient_warm_cache():
    """Fresh process -> import, record, first gradient; the kernel cache is warm."""
    return _FIRST_GRADIENT


def timeraw_import_tapejit():
    """Fresh process -> ``import tapejit`` (no kernels loaded yet)."""
    return "import tapejit"


class CompileFromScratch:
    """Compile the one-point value-and-gradient interpreters with an empty cache."""

    timeout = 1800
    repeat = 1
    number = 1
    warmup_time = 0

    def setup(self):
        subprocess.run([sys.executable, "-c", _FIRST_GRADIENT], check=True)  # importable

    def track_compile_seconds(self):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TAPEJIT_CACHE_DIR=cache, TAPEJIT_QUIET="1",
                       TAPEJIT_KERNELS="optimized")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", _FIRST_GRADIENT], check=True, env=env)
            return time.perf_counter() - t0

    track_compile_seconds.unit = "seconds"


_COLD_FIRST_CALLS = """
import os, signal, time
import numpy as np
t0 = time.perf_counter()
import tapejit
from tapejit._kernels import tiers
tape = tapejit.record(lambda x: np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2),
                      np.ones(5))
tape.value_and_grad(np.full(5, 0.5))
t1 = time.perf_counter()
tape.value_and_grad(np.random.default_rng(0).uniform(size=(1000, 5)))
t2 = time.perf_counter()
tape.hessian(np.full(5, 0.5))
t3 = time.perf_counter()
if tiers._BACKGROUND is not None:  # stop the worker: the cache is thrown away
    os.killpg(tiers._BACKGROUND.proc.pid, signal.SIGKILL)
print(t1 - t0, t2 - t1, t3 - t2)
"""


class ColdStart:
    """A new process on an empty cache (the default tiers): import, record and the first
    one-point gradient; then the first batched gradient; then the first Hessian. The
    calls run on the generic interpreter while the background worker compiles (stopped
    here, its cache thrown away)."""

    timeout = 300
    repeat = 1
    number = 1
    warmup_time = 0

    def setup(self):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TAPEJIT_CACHE_DIR=cache, NUMBA_CACHE_DIR=cache,
                       TAPEJIT_QUIET="1", TAPEJIT_KERNELS="auto")
            out = subprocess.run([sys.executable, "-c", _COLD_FIRST_CALLS], check=True,
                                 env=env, capture_output=True, text=True).stdout
        self.times = [float(v) for v in out.split()]

    def track_first_gradient_seconds(self):
        return self.times[0]

    def track_first_batched_gradient_seconds(self):
        return self.times[1]

    def track_first_hessian_seconds(self):
        return self.times[2]

    track_first_gradient_seconds.unit = "seconds"
    track_first_batched_gradient_seconds.unit = "seconds"
    track_first_hessian_seconds.unit = "seconds"


_COLD_LOOP = """
import os, signal, sys, time
import numpy as np
t0 = time.perf_counter()
import tapejit
from tapejit._kernels import tiers
from _baselines import lorenz_points, lorenz_scan_f, LORENZ_P
tape = tapejit.record(lorenz_scan_f, np.array(LORENZ_P))
X = np.array(LORENZ_P) if sys.argv[1] == "1" else lorenz_points(int(sys.argv[1]))
tape.value_and_grad(X)
t1 = time.perf_counter()
if tiers._BACKGROUND is not None:  # stop the worker: the cache is thrown away
    os.killpg(tiers._BACKGROUND.proc.pid, signal.SIGKILL)
print(t1 - t0)
"""


class ColdStartLoop:
    """A new process on an empty cache (the default tiers): import, record the Lorenz fit
    with its 2000 RK4 steps in ``tapejit.scan``, and its first gradient at one point and
    at 1000 points. The generic interpreter runs the loop and its derivative (a tape of
    loops, nested differentiation) while the background worker compiles (stopped here):
    the loop family's routines are not compiled in the process."""

    timeout = 600
    repeat = 1
    number = 1
    warmup_time = 0
    params = (1, 1000)
    param_names = ("points",)

    def setup(self, points):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TAPEJIT_CACHE_DIR=cache, NUMBA_CACHE_DIR=cache,
                       TAPEJIT_QUIET="1", TAPEJIT_KERNELS="auto",
                       PYTHONPATH=os.pathsep.join([os.path.dirname(__file__),
                                                   os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run([sys.executable, "-c", _COLD_LOOP, str(points)],
                                 check=True, env=env, capture_output=True, text=True).stdout
        self.seconds = float(out.split()[-1])

    def track_first_gradient_seconds(self, points):
        return self.seconds

    track_first_gradient_seconds.unit = "seconds"
