"""The kernel runtime: loading the generated kernels, running batches on threads, and
how many points a chunk holds.

* :func:`kernels` loads the generated kernel module (``tapejit._kernels.cache.load_kernels``)
  once per process, behind a wrapper that prints a one-line notice before the first
  compile of an interpreter that is not in the on-disk cache (:func:`is_cached`).
* :func:`run_batch` runs a batched kernel over many points on the caller's thread plus
  the workers of one process-wide thread pool, each thread taking every ``nt``-th chunk
  (the kernels release the GIL). A forked child forgets its parent's pool.
* The chunk policy: :func:`chunk_of` and :func:`chunk_for` bound a chunk's workspace by
  :data:`WORKSPACE_VALUES`; tapes above :data:`POINTWISE_SLOTS` run batches one point at
  a time through the kernels' point-by-point twins (:data:`POINTWISE`).

Nothing here knows about tapes: :mod:`tapejit._tape` hands the kernels their arrays.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numba

from .cache import load_kernels

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
#: Batched kernels with a point-by-point twin for tapes too long for a chunk of points.
POINTWISE = {"forward_batch": "forward_points", "vjp_batch": "vjp_points"}

_K: _Kernels | None = None
_NOTICE_SHOWN = False

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


class _Kernels:
    """The generated kernel module, with a one-line notice before a first compile.

    Attribute lookups go through ``__getattr__`` only the first time per kernel; the
    kernel is then cached on the instance, so the hot path pays nothing.
    """

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def __getattr__(self, name: str):
        fn = getattr(self.module, name)
        _notice_if_cold(fn)
        setattr(self, name, fn)
        return fn


def kernels() -> _Kernels:
    """The generated kernels (loaded on first use); ``.module`` is the module itself."""
    global _K
    if _K is None:
        _K = _Kernels(load_kernels())
    return _K


def _cache_index(fn) -> str | None:
    """Path of Numba's on-disk cache index of kernel ``fn`` (None if it has no cache)."""
    try:
        return fn._cache._cache_file._index_path
    except AttributeError:
        return None


def is_cached(name: str) -> bool:
    """Whether kernel ``name`` is compiled in this process or in the on-disk cache."""
    fn = getattr(kernels().module, name)
    index = _cache_index(fn)
    return bool(fn.signatures) or index is None or os.path.exists(index)


def _notice_if_cold(fn) -> None:
    """Tell the user (once per process) that interpreters are being compiled."""
    global _NOTICE_SHOWN
    if _NOTICE_SHOWN or os.environ.get("TAPEJIT_QUIET"):
        return
    index = _cache_index(fn)
    if index is not None and not os.path.exists(index):
        _NOTICE_SHOWN = True
        print(
            "tapejit: compiling its interpreters for this machine (first use only, up to "
            f"a few minutes; cached in {os.path.dirname(os.path.dirname(index))}; "
            "`tapejit compile` does them all ahead, on every core)",
            file=sys.stderr,
            flush=True,
        )


def pool() -> ThreadPoolExecutor:
    """The process's worker threads for batches (``NUMBA_NUM_THREADS - 1`` of them)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                           thread_name_prefix="tapejit")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_batch(kernel: str, n: int, chunk: int, *args) -> None:
    """Run batched ``kernel(*args, chunk, t, nt)`` over ``n`` points, on
    ``numba.get_num_threads()`` threads when there are enough chunks for them (the
    caller's and the pool's); ``chunk == 1`` takes the kernel's point-by-point twin."""
    if chunk == 1 and kernel in POINTWISE:
        kernel = POINTWISE[kernel]
    fn = getattr(kernels(), kernel)
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
