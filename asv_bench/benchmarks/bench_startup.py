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
            env = dict(os.environ, TAPEJIT_CACHE_DIR=cache, TAPEJIT_QUIET="1")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", _FIRST_GRADIENT], check=True, env=env)
            return time.perf_counter() - t0

    track_compile_seconds.unit = "seconds"
