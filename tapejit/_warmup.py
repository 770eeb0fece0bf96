"""Compiling every kernel ahead of use: ``tapejit compile`` (:func:`compile_kernels`).

On a machine whose cache does not have them yet, the first call of each kind (one point or
batched; forward, gradient, jvp, Jacobian, Hessian; float32; tapes too long for a chunk
of points) compiles the interpreters it runs, and the first calls of a session can take
minutes. :func:`compile_kernels` makes those calls ahead of time on small tapes, in
worker processes that fill Numba's on-disk cache side by side, so a Dockerfile, a CI job
or a new machine pays the compilation once, on every core, before any real work.

Each :data:`STEPS` entry is one kind of call, or the routines of the instruction families
of one kernel file; the workers take the longest first. Two
workers may both compile a routine that several kinds of call share (whichever finishes
first writes it to the cache): a little duplicated work, for no waiting on each other.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
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


def _calls(point: bool, *methods: str) -> None:
    """Call the small tape's ``methods`` at one point or at a batch of points."""
    t = _tape()
    x, p = (np.ones(3), np.ones(1)) if point else (np.ones((5, 3)), np.ones((5, 1)))
    v = np.ones(3)
    run = {
        "forward": lambda: t.forward(x, p),
        "value_and_grad": lambda: t.value_and_grad(x, p),
        "vjp": lambda: t.vjp(x, np.ones(1), p),
        "jvp": lambda: t.jvp(x, v, p),
        "jacobian_forward": lambda: t.jacobian(x, p, mode="forward"),
        "jacobian_reverse": lambda: t.jacobian(x, p, mode="reverse"),
        "hessian": lambda: t.hessian(x, p),
        "hvp": lambda: t.hvp(x, v, p),
    }
    for method in methods:
        run[method]()


def _float32_batch() -> None:
    t = _tape().astype(np.float32)
    X, P = np.ones((5, 3), np.float32), np.ones((5, 1), np.float32)
    t.forward(X, P)
    t.value_and_grad(X, P)


def _long_batch() -> None:
    t = _tape(_LONG)
    X, P = np.ones((2, _LONG)), np.ones((2, 1))
    t.forward(X, P)
    t.value_and_grad(X, P)


def _at(point: bool, *methods: str) -> Callable[[], None]:
    return partial(_calls, point, *methods)


def _family_routines(file: str) -> None:
    """The routines of the instruction families of kernel file ``file``, every sweep
    (and the first-order ones for float32 parameters too: ``Float32Tape``)."""
    from ._kernels.runtime import kernels
    from ._program import FAMILIES, FIRST_ORDER_SWEEPS, SWEEPS

    codes = [code for code, family in FAMILIES.items() if family.kernel == file]
    ensure = kernels().module.ensure_family_routines
    ensure(codes, SWEEPS)
    ensure(codes, FIRST_ORDER_SWEEPS, float32=True)


def _family_steps() -> tuple:
    from ._program import FAMILIES

    files: dict[str, list[str]] = {}
    for family in FAMILIES.values():
        if family.kernel:
            files.setdefault(family.kernel, []).append(family.name)
    return tuple((f"families {'/'.join(names)}", partial(_family_routines, file), 60)
                 for file, names in sorted(files.items()))


#: ``(name, what it runs, relative compile cost)``: one kind of call each; the cost (seconds
#: of one process, as measured for the docs' internals page) orders the work, longest
#: first, and weighs the progress bar.
STEPS: tuple[tuple[str, Callable[[], None], int], ...] = (
    ("hessian, batched", _at(False, "hessian", "hvp"), 105),
    ("hessian, one point", _at(True, "hessian", "hvp", "jacobian_reverse"), 67),
    ("gradient, one point", _at(True, "value_and_grad", "vjp"), 36),
    ("float32, batched", _float32_batch, 30),
    ("long tapes, batched", _long_batch, 20),
    ("forward, one point", _at(True, "forward"), 22),
    ("gradient, batched", _at(False, "value_and_grad", "vjp"), 19),
    ("forward, batched", _at(False, "forward"), 11),
    ("jvp, batched", _at(False, "jvp", "jacobian_forward"), 5),
    ("jvp, one point", _at(True, "jvp", "jacobian_forward"), 3),
    ("jacobian, batched", _at(False, "jacobian_reverse"), 2),
    *_family_steps(),
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
        by_cost = sorted(STEPS, key=lambda step: -step[2])
        futures = {pool.submit(_run_step, name): name for name, _, _ in by_cost}
        for n_done, future in enumerate(as_completed(futures), 1):
            name = futures[future]
            progress.step(name, _BY_NAME[name][1], future.result(), n_done, len(STEPS))
    elapsed = time.perf_counter() - start
    stream.write(f"tapejit: kernels ready in {elapsed:.0f} s\n")
    stream.flush()
    return elapsed
