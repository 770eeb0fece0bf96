"""Shared helpers for the tapejit test suite.

* ``central_diff`` (fixture, session scope so it also works under hypothesis): central
  finite differences of a vectorized numpy function, used as the independent reference
  for gradients and Jacobians.
* ``TAPEJIT_KERNELS=optimized`` unless set: the tests run the optimised kernels (see
  ``tests/test_tiers.py`` for the generic tier). The tests marked ``kernels`` test the
  optimised kernels themselves; every other test also holds on the generic tier, so CI runs
  them with ``TAPEJIT_KERNELS=generic`` while the kernels compile (``.ci/run``). The
  tests marked ``compiles`` compile Numba code of their own (a copy of the package with a
  new op; the kernel files' routines called directly): they need no warm cache, so CI runs
  them with those, and every run starts with them (the longest tests first).
* A hypothesis profile without deadlines (the first call of a kernel may compile it).
* A run of more than one test module on a cold kernel cache (not on the generic tier)
  first runs ``tapejit
  compile`` (every kernel, on every core) instead of compiling each kernel where a test
  first needs it, one at a time; ``TAPEJIT_TEST_WARMUP=0`` turns that off. A run of one
  module compiles only what it uses. Under pytest-xdist (``-n``) one worker compiles while
  the others wait for it.
"""

from __future__ import annotations

import fcntl
import os
import sys

# One BLAS thread per process, before numpy loads OpenBLAS: the suite runs on every core
# with pytest-xdist, and a BLAS pool per worker would oversubscribe them (the optimizer
# benchmarks' BFGS steps ran 5-25x slower).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# The suite tests the optimised kernels (compiled here on first use, or ahead by the
# warm-up below); tests/test_tiers.py switches to the generic tier where it tests it. Set
# in the environment, so subprocesses started by tests do the same (and start no
# background compiler).
os.environ.setdefault("TAPEJIT_KERNELS", "optimized")

# The package is importable from the repository root (python -m pytest from the root puts
# it on sys.path); make that hold however pytest is started.
try:
    import tapejit  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

settings.register_profile(
    "tapejit",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("tapejit")


def pytest_collection_modifyitems(config, items):
    # The tests that compile code of their own are the longest: first, so that under
    # pytest-xdist they overlap the rest instead of ending the run alone.
    items.sort(key=lambda item: (item.get_closest_marker("compiles") is None,
                                 item.get_closest_marker("slow") is None))


def pytest_collection_finish(session):
    if os.environ.get("TAPEJIT_TEST_WARMUP") == "0" or os.environ["TAPEJIT_KERNELS"] == "generic":
        return
    if len({item.path for item in session.items}) < 2:
        return
    from tapejit._kernels.cache import cache_dir
    from tapejit._kernels.runtime import is_cached
    from tapejit._warmup import compile_kernels

    if is_cached("hvp_batch"):  # the costliest kernel: the cache is warm
        return
    # under pytest-xdist every worker gets here: the first compiles, the others wait
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "test-warmup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_cached("hvp_batch"):
            capture = session.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():  # show the progress
                compile_kernels()


def _central_diff(f, X, h=1e-6, fixed=()):
    """Central differences of ``f`` at the points ``X``.

    Parameters
    ----------
    f : callable
        Maps an ``(n_points, n_inputs)`` float array to ``(n_points,)`` or
        ``(n_points, n_outputs)``; must be vectorized over points (plain numpy).
    X : ndarray
        ``(n_points, n_inputs)``.
    h : float
        Relative step: input ``j`` of a point moves by ``h * max(1, |x_j|)``.
    fixed : iterable of int
        Inputs not perturbed; their column of the result is 0.

    Returns
    -------
    ndarray
        ``(n_points, n_inputs)`` for a one-output ``f``, else
        ``(n_points, n_outputs, n_inputs)``.
    """
    X = np.asarray(X, dtype=np.float64)
    n, k = X.shape
    cols = []
    with np.errstate(all="ignore"):
        for j in range(k):
            if j in fixed:
                cols.append(None)
                continue
            step = h * np.maximum(1.0, np.abs(X[:, j]))
            Xp, Xm = X.copy(), X.copy()
            Xp[:, j] += step
            Xm[:, j] -= step
            # the step actually taken, after rounding of x +- step
            dx = Xp[:, j] - Xm[:, j]
            fp = np.asarray(f(Xp), dtype=np.float64)
            fm = np.asarray(f(Xm), dtype=np.float64)
            d = fp - fm
            cols.append(d / (dx if d.ndim == 1 else dx[:, None]))
    proto = next(c for c in cols if c is not None) if any(c is not None for c in cols) else None
    if proto is None:
        return np.zeros((n, k))
    cols = [np.zeros_like(proto) if c is None else c for c in cols]
    return np.stack(cols, axis=-1)


@pytest.fixture(scope="session")
def central_diff():
    """The central-difference helper ``central_diff(f, X, h=1e-6, fixed=())``."""
    return _central_diff


@pytest.fixture(scope="session")
def rng_seed():
    """A fixed seed, so every run samples the same points."""
    return 20240611
