"""Compiling every kernel ahead of use: ``tapejit compile`` (:func:`compile_kernels`).

On a machine whose cache does not have them yet, the first call of each kind (one point or
batched; forward, gradient, jvp, Jacobian, Hessian; float32; tapes too long for a chunk
of points) compiles the interpreters it runs, and the first calls of a session can take
minutes. :func:`compile_kernels` makes those calls ahead of time on small tapes, in
worker processes that fill Numba's on-disk cache side by side, so a Dockerfile, a CI job
or a new machine pays the compilation once, on every core, before any real work.

Each :data:`STEPS` entry is one kind of call; the workers take the longest first. Two
workers may both compile a routine that several kinds of call share (whichever finishes
first writes it to the cache): a little duplicated work, for no waiting on each other.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np

#: Workers at most by default: each compiling process holds a few GB at its peak.
MAX_DEFAULT_JOBS = 4
#: Inputs of the long tape: more slots than a chunk of points can hold, so its batches
#: run through the kernels' point-by-point twins (``runtime.POINTWISE``).
_LONG = 17000


def _tape(n: int = 3):
    from ._record import record

    return record(lambda x, p: np.sum(np.sin(x) * x[0] ** 2) * p, np.ones(n), 1.0, argnums=0)


def _point() -> tuple:
    return _tape(), np.ones(3), np.ones(1), np.ones(3)


def _batch() -> tuple:
    return _tape(), np.ones((5, 3)), np.ones((5, 1)), np.ones(3)


def _forward_point() -> None:
    t, x, p, _ = _point()
    t.forward(x, p)


def _gradient_point() -> None:
    t, x, p, _ = _point()
    t.value_and_grad(x, p)
    t.vjp(x, np.ones(1), p)


def _tangent_point() -> None:
    t, x, p, v = _point()
    t.jvp(x, v, p)
    t.jacobian(x, p, mode="forward")


def _second_order_point() -> None:
    t, x, p, v = _point()
    t.hessian(x, p)
    t.hvp(x, v, p)
    t.jacobian(x, p, mode="reverse")


def _forward_batch() -> None:
    t, X, P, _ = _batch()
    t.forward(X, P)


def _gradient_batch() -> None:
    t, X, P, _ = _batch()
    t.value_and_grad(X, P)
    t.vjp(X, np.ones(1), P)


def _tangent_batch() -> None:
    t, X, P, v = _batch()
    t.jvp(X, v, P)
    t.jacobian(X, P, mode="forward")


def _jacobian_batch() -> None:
    t, X, P, _ = _batch()
    t.jacobian(X, P, mode="reverse")


def _second_order_batch() -> None:
    t, X, P, v = _batch()
    t.hessian(X, P)
    t.hvp(X, v, P)


def _float32_batch() -> None:
    t, X, P, _ = _batch()
    t32 = t.astype(np.float32)
    X32, P32 = X.astype(np.float32), P.astype(np.float32)
    t32.forward(X32, P32)
    t32.value_and_grad(X32, P32)


def _long_batch() -> None:
    t = _tape(_LONG)
    X, P = np.ones((2, _LONG)), np.ones((2, 1))
    t.forward(X, P)
    t.value_and_grad(X, P)


#: ``(name, what it runs, relative compile cost)``: one kind of call each; the cost orders
#: the work (longest first) and weighs the progress bar.
STEPS: tuple[tuple[str, Callable[[], None], int], ...] = (
    ("hessian, batched", _second_order_batch, 240),
    ("hessian, one point", _second_order_point, 185),
    ("gradient, one point", _gradient_point, 140),
    ("gradient, batched", _gradient_batch, 105),
    ("forward, one point", _forward_point, 30),
    ("float32, batched", _float32_batch, 30),
    ("long tapes, batched", _long_batch, 30),
    ("forward, batched", _forward_batch, 25),
    ("jvp, batched", _tangent_batch, 15),
    ("jacobian, batched", _jacobian_batch, 15),
    ("jvp, one point", _tangent_point, 10),
)
_BY_NAME = {name: (run, cost) for name, run, cost in STEPS}


def _run_step(name: str) -> float:
    """In a worker: make the calls of step ``name``; its time in seconds."""
    os.environ["TAPEJIT_QUIET"] = "1"
    start = time.perf_counter()
    _BY_NAME[name][0]()
    return time.perf_counter() - start


class _Progress:
    """A progress bar on a terminal, else one line per finished step."""

    def __init__(self, total: int, stream) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.perf_counter()

    def step(self, name: str, cost: int, seconds: float, n_done: int, n_steps: int) -> None:
        self.done += cost
        elapsed = time.perf_counter() - self.start
        if self.tty:
            width = 30
            fill = round(width * self.done / self.total)
            self.stream.write(f"\r  [{'#' * fill}{'.' * (width - fill)}] {n_done}/{n_steps} "
                              f"{elapsed:5.0f} s  {name:<24s}")
            if n_done == n_steps:
                self.stream.write("\n")
        else:
            self.stream.write(f"  {n_done:2d}/{n_steps} {name:<24s} {seconds:6.1f} s "
                              f"(elapsed {elapsed:.0f} s)\n")
        self.stream.flush()


def compile_kernels(jobs: int | None = None, *, stream=None) -> float:
    """Compile every kernel of tapejit for this machine into the on-disk cache.

    Parameters
    ----------
    jobs : int, optional
        Worker processes compiling side by side; default: the number of CPUs, at most
        :data:`MAX_DEFAULT_JOBS` (each compiling process peaks at a few GB of memory).
    stream : file, optional
        Where the progress goes (default ``sys.stderr``); a terminal gets a progress bar.

    Returns
    -------
    float
        The wall time in seconds. Kernels already in the cache load in about a second.

    Raises
    ------
    ValueError
        If ``jobs`` is not a positive integer.
    """
    if jobs is None:
        jobs = min(os.cpu_count() or 1, MAX_DEFAULT_JOBS)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    from ._kernels.cache import cache_dir

    stream = sys.stderr if stream is None else stream
    stream.write(f"tapejit: compiling its kernels into {cache_dir()} with {jobs} "
                 f"process{'es' if jobs > 1 else ''}\n")
    progress = _Progress(sum(cost for _, _, cost in STEPS), stream)
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_run_step, name): name for name, _, _ in STEPS}
        for n_done, future in enumerate(as_completed(futures), 1):
            name = futures[future]
            progress.step(name, _BY_NAME[name][1], future.result(), n_done, len(STEPS))
    elapsed = time.perf_counter() - start
    stream.write(f"tapejit: kernels ready in {elapsed:.0f} s\n")
    stream.flush()
    return elapsed
