"""The kernel runtime: loading the generated kernels, running batches on threads, and
how many points a chunk holds.

* :func:`kernels_for` loads the generated kernel module (``tapejit._kernels.cache.load_kernels``)
  once per process and hands out its entry points for one kind of tape, each optimised or
  still generic while the optimised kernels compile in the background (``tiers.py``).
  Before the first load it runs Numba's BLAS check without importing ``scipy.linalg``
  (:func:`_check_blas_lightly`).
* :func:`run_batch` runs a batched kernel over many points on the caller's thread plus
  the workers of one process-wide thread pool, each thread taking every ``nt``-th chunk
  (the kernels release the GIL). A forked child forgets its parent's pool.
* The chunk policy: :func:`chunk_of` and :func:`chunk_for` bound a chunk's workspace by
  :data:`WORKSPACE_VALUES`; tapes above :data:`POINTWISE_SLOTS` run batches one point at
  a time through the kernels' point-by-point twins (:data:`POINTWISE`).

Nothing here knows about tapes: :mod:`tapejit._tape` hands the kernels their arrays.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numba

from .cache import load_kernels
from .tiers import Kernels, cache_index, namespace

#: Points per chunk at most; a chunk's values and adjoints hold ``2 * n_slots * chunk`` floats.
CHUNK_MAX = 512
#: Per-thread budget for one workspace, in float64 values.
WORKSPACE_VALUES = 1 << 16
#: Batches over tapes with more slots than this run one point at a time (scalar sweeps).
POINTWISE_SLOTS = 16384
#: Tapes with more slots than this reuse a per-thread one-point workspace.
REUSE_SLOTS = 4096
#: Directions carried by one second-order sweep at most (bounds its workspace).
DIR_BLOCK = 16
#: Directions of a one-point second-order sweep that run on the tape's per-thread
#: workspace (a sparse Hessian's colours); more allocate their own.
REUSE_DIRECTIONS = 8
#: Batched kernels with a point-by-point twin for tapes too long for a chunk of points.
POINTWISE = {"forward_batch": "forward_points", "vjp_batch": "vjp_points",
             "jacrev_batch": "jacrev_points"}

_MODULE: ModuleType | None = None

# Numba's ``prange`` would split batches over threads too, but its kernels take twice as
# long to compile.
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def chunk_of(n_slots: int) -> int:
    """Points per chunk: bounded working memory; huge tapes go one point at a time."""
    if n_slots > POINTWISE_SLOTS:
        return 1
    return chunk_for(n_slots, 1)


def chunk_for(n_slots: int, n_dirs: int) -> int:
    """Points per chunk of a sweep carrying ``n_dirs`` values per slot and point."""
    return int(max(1, min(CHUNK_MAX, WORKSPACE_VALUES // max(n_slots * n_dirs, 1))))


def kernels() -> Kernels:
    """The kernels of tapes without instruction families (loaded on first use);
    ``.module`` is the generated module itself."""
    return kernels_for(())


def kernels_for(families: tuple[int, ...], float32: bool = False) -> Kernels:
    """The kernels that tapes with instruction families ``families`` call (``float32``:
    the batched kernels of a ``Float32Tape``), each entry point optimised or generic
    (``tiers.py``)."""
    global _MODULE
    if _MODULE is None:
        _check_blas_lightly()
        _MODULE = load_kernels()
    return namespace(_MODULE, families, float32)


_CYTHON_BLAS = "scipy.linalg.cython_blas"


def _check_blas_lightly() -> None:
    """Let Numba find BLAS without importing the ``scipy.linalg`` package.

    Numba's ``arraymath``, imported at the first (cached) kernel load, checks for BLAS
    with ``import scipy.linalg.cython_blas``, which runs ``scipy.linalg``'s ``__init__``
    and the array-API layer behind it: most of a warm start's first call (docs:
    performance, *Warm start*). That extension module alone is what Numba needs (its
    BLAS calls read the module's C function table when they first run). So it is
    loaded from its file by itself for the check, then taken out of ``sys.modules``
    again: a later ``import scipy.linalg`` loads the package as always (the extension
    comes back as the same module object). Anything unexpected leaves Numba to its own
    import.
    """
    if "numba.np.arraymath" in sys.modules or _CYTHON_BLAS in sys.modules:
        return
    try:
        scipy = importlib.util.find_spec("scipy")
        if scipy is None or not scipy.submodule_search_locations:
            return
        where = [os.path.join(p, "linalg") for p in scipy.submodule_search_locations]
        spec = importlib.machinery.PathFinder.find_spec(_CYTHON_BLAS, where)
        if spec is None or spec.loader is None:
            return
        blas = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(blas)
    except Exception:  # any failure: Numba imports scipy.linalg itself
        return
    sys.modules[_CYTHON_BLAS] = blas
    try:
        import numba.np.arraymath  # noqa: F401 - runs Numba's BLAS check now
    finally:
        if sys.modules.get(_CYTHON_BLAS) is blas:
            del sys.modules[_CYTHON_BLAS]


def is_cached(name: str) -> bool:
    """Whether kernel ``name`` is compiled in this process or in the on-disk cache."""
    fn = getattr(kernels().module, name)
    index = cache_index(fn)
    return bool(fn.signatures) or index is None or os.path.exists(index)


def pool() -> ThreadPoolExecutor:
    """The process's worker threads for batches (``NUMBA_NUM_THREADS - 1`` of them)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                           thread_name_prefix="tapejit")
    return _POOL


def in_parts(n: int, part: Callable[[int, int], None], smallest: int) -> None:
    """Run ``part(lo, hi)`` over contiguous parts of ``range(n)``, one per thread (the
    caller's and the pool's), each of at least ``smallest`` points (one part: here)."""
    nt = min(numba.get_num_threads(), n // max(smallest, 1))
    if nt < 2:
        part(0, n)
        return
    cuts = [n * t // nt for t in range(nt + 1)]
    rest = [pool().submit(part, cuts[t], cuts[t + 1]) for t in range(1, nt)]
    part(cuts[0], cuts[1])
    for t, job in enumerate(rest, 1):
        if job.cancel():  # the pool is busy with other calls: do that part here
            part(cuts[t], cuts[t + 1])
        else:
            job.result()


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_batch(ks: Kernels, kernel: str, n: int, chunk: int, *args) -> None:
    """Run batched ``kernel(*args, chunk, t, nt)`` of kernels ``ks`` over ``n`` points, on
    ``numba.get_num_threads()`` threads when there are enough chunks for them (the
    caller's and the pool's); ``chunk == 1`` takes the kernel's point-by-point twin."""
    if (chunk == 1 or n == 1) and kernel in POINTWISE:
        kernel = POINTWISE[kernel]
    fn = getattr(ks, kernel)
    if len(args) > 1 and args[1] is None and not getattr(fn, "tier0", False):
        # the plan came from the generic tier, and the kernel turned optimised since
        args = (args[0], ks.module.reverse_plan(args[0]), *args[2:])
    nt = min(numba.get_num_threads(), -(-n // chunk))
    if nt < 2 or n <= max(2 * chunk, 16):
        fn(*args, max(1, min(chunk, n)), 0, 1)
        return
    rest = [pool().submit(fn, *args, chunk, t, nt) for t in range(1, nt)]
    fn(*args, chunk, 0, nt)
    for t, job in enumerate(rest, 1):
        if job.cancel():  # the pool is busy with other calls: do that share here
            fn(*args, chunk, t, nt)
        else:
            job.result()
