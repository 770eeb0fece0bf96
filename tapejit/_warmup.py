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
from typing import NamedTuple

import numpy as np

#: Workers at most by default: each compiling process holds a few GB at its peak.
MAX_DEFAULT_JOBS = 4
#: Inputs of the long tape: more slots than a chunk of points can hold, so its batches
#: run through the kernels' point-by-point twins (``runtime.POINTWISE``).
_LONG = 17000


def _tape(n: int = 3, outputs: int = 1):
    from ._record import record

    if outputs > 1:  # a reverse Jacobian of one output is its gradient (vjp_batch)
        return record(lambda x, p: np.sin(x[:outputs]) * x[0] ** 2 * p, np.ones(n), 1.0,
                      argnums=0)
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
        "jacobian_reverse": lambda: _tape(outputs=2).jacobian(x, p, mode="reverse"),
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
    """The routines of the instruction families of kernel file ``file``, every sweep (a
    ``Float32Tape``'s kernels call them too: its parameters reach them as float64)."""
    from ._kernels.runtime import kernels
    from ._program import FAMILIES, SWEEPS

    codes = [code for code, family in FAMILIES.items() if family.kernel == file]
    kernels().module.ensure_family_routines(codes, SWEEPS)


class Step(NamedTuple):
    """One step of the warm-up: one kind of call, or the routines of the instruction
    families of one kernel file."""

    name: str
    run: Callable[[], None]  #: the calls that compile it
    #: relative compile cost (seconds of one process, as measured for the docs' internals
    #: page): orders ``tapejit compile``'s work, longest first, and weighs its progress bar
    cost: int
    #: the entry points it compiles, which the tiers (``_kernels/tiers.py``) move to the
    #: optimised kernels when it is done (``tests/test_tiers.py`` checks them against the
    #: calls it makes)
    entries: tuple[str, ...] = ()
    families: tuple[int, ...] = ()  #: family opcodes whose routines it compiles
    float32: bool = False  #: its entry points are compiled for float32 arrays


def _family_steps() -> tuple[Step, ...]:
    from ._program import FAMILIES

    files: dict[str, list[int]] = {}
    for code, family in FAMILIES.items():
        if family.kernel:
            files.setdefault(family.kernel, []).append(code)
    return tuple(Step(family_step(codes), partial(_family_routines, file), 35,
                      families=tuple(codes)) for file, codes in sorted(files.items()))


def family_step(codes) -> str:
    """The step that compiles the routines of family opcodes ``codes`` (one kernel file)."""
    from ._program import FAMILIES

    return f"families {'/'.join(FAMILIES[c].name for c in codes)}"


def _forward_compacted() -> None:
    """Forward sweeps of a tape long enough to run slot-compacted (``_slot_reuse``)."""
    from ._record import record

    def f(x):
        for _ in range(12):
            x = np.sin(x) * x[0] + x
        return x[1]

    t = record(f, np.ones(2))
    t.forward(np.ones(2))
    t.forward(np.ones((3, 2)))


def _gradient_point() -> None:
    """One-point gradients, of the small tape and of a tape of scalar instructions
    (``value_grad_scalar``)."""
    from ._record import record

    _calls(True, "value_and_grad", "vjp")
    record(lambda x: np.sin(x[0]) * x[1] + x[0], np.ones(2)).value_and_grad(np.ones(2))


def _forward_point() -> None:
    from ._record import record

    _calls(True, "forward")
    _forward_compacted()
    record(lambda x: np.sin(x[0]) * x[1] + x[0], np.ones(2)).forward(np.ones(2))  # scalar


#: One step per kind of call, and one per family kernel file.
STEPS: tuple[Step, ...] = (
    Step("hessian, batched", _at(False, "hessian", "hvp"), 105, ("hvp_batch",)),
    Step("hessian, one point", _at(True, "hessian", "hvp", "jacobian_reverse"), 67,
         ("hvp_point", "jacrev_points", "reverse_plan")),
    Step("gradient, one point", _gradient_point, 36,
         ("value_grad_point", "value_grad_scalar", "vjp_points", "reverse_plan")),
    Step("float32, batched", _float32_batch, 15, ("forward_batch", "vjp_batch", "reverse_plan"),
         float32=True),
    Step("long tapes, batched", _long_batch, 20, ("forward_points", "vjp_points", "reverse_plan")),
    Step("forward, one point", _forward_point, 22,
         ("forward_point", "forward_scalar", "forward_batch")),
    Step("gradient, batched", _at(False, "value_and_grad", "vjp"), 19,
         ("vjp_batch", "reverse_plan")),
    Step("forward, batched", _at(False, "forward"), 11, ("forward_batch",)),
    Step("jvp, batched", _at(False, "jvp", "jacobian_forward"), 5, ("jvp_batch",)),
    Step("jvp, one point", _at(True, "jvp", "jacobian_forward"), 3, ("jvp_point",)),
    Step("jacobian, batched", _at(False, "jacobian_reverse"), 2, ("jacrev_batch", "reverse_plan")),
    *_family_steps(),
)
_BY_NAME = {step.name: step for step in STEPS}
#: The step of each family opcode.
FAMILY_STEP = {code: step.name for step in STEPS for code in step.families}
_FIRST = ("gradient, one point", FAMILY_STEP[129], "forward, one point", "gradient, batched",
          "forward, batched", FAMILY_STEP[128], "jvp, one point", "jacobian, batched",
          "jvp, batched", "hessian, one point", "hessian, batched")
#: The background worker's order when nothing is asked for: what a session needs first
#: (value and gradient, sums and products), then the rest.
BACKGROUND_ORDER = _FIRST + tuple(step.name for step in STEPS if step.name not in _FIRST)


def _run_step(name: str, profile: bool = False):
    """In a worker: make the calls of step ``name`` and mark it ready; its time in
    seconds (``profile``: and its compilations, ``_compile_profile.profile_step``)."""
    from ._kernels.runtime import kernels
    from ._kernels.tiers import MODE_ENV, mark_ready

    os.environ["TAPEJIT_QUIET"] = "1"
    os.environ[MODE_ENV] = "optimized"
    if profile:
        from ._compile_profile import profile_step

        seconds, rows = profile_step(name, _BY_NAME[name].run)
        mark_ready(kernels().module, name)
        return seconds, rows
    start = time.perf_counter()
    _BY_NAME[name].run()
    mark_ready(kernels().module, name)
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


def compile_kernels(jobs: int | None = None, *, stream=None,
                    steps: list[str] | None = None, profile=None) -> float:
    """Compile every kernel of tapejit for this machine into the on-disk cache.

    Parameters
    ----------
    jobs : int, optional
        Worker processes compiling side by side; default: the number of CPUs, at most
        :data:`MAX_DEFAULT_JOBS` (each compiling process peaks at a few GB of memory).
    stream : file, optional
        Where the progress goes (default ``sys.stderr``); a terminal gets a progress bar.
    steps : list of str, optional
        Only these steps (names of :data:`STEPS`), e.g. the kinds of call one program
        makes; default: all.
    profile : file, optional
        Where to write a table of the compile time of each kernel function and signature,
        attributed to the step that compiled it (``tapejit compile --profile``; a
        developer tool, see ``_compile_profile.py``): meant for one process
        (``jobs=1``) on an empty cache (``TAPEJIT_CACHE_DIR``).

    Returns
    -------
    float
        The wall time in seconds. Kernels already in the cache load in about a second.

    Raises
    ------
    ValueError
        If ``jobs`` is not a positive integer, or a step is not one of :data:`STEPS`.
    """
    if jobs is None:
        jobs = min(os.cpu_count() or 1, MAX_DEFAULT_JOBS)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    unknown = sorted(set(steps or ()) - set(_BY_NAME))
    if unknown:
        raise ValueError(f"unknown steps {unknown}; the steps are: {'; '.join(_BY_NAME)}")
    chosen = [step for step in STEPS if steps is None or step.name in steps]
    from ._kernels.cache import cache_dir

    stream = sys.stderr if stream is None else stream
    stream.write(f"tapejit: compiling its kernels into {cache_dir()} with {jobs} "
                 f"process{'es' if jobs > 1 else ''}\n")
    progress = _Progress(sum(step.cost for step in chosen), stream)
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        by_cost = sorted(chosen, key=lambda step: -step.cost)
        futures = {pool.submit(_run_step, step.name, profile is not None): step.name
                   for step in by_cost}
        rows = []
        for n_done, future in enumerate(as_completed(futures), 1):
            name = futures[future]
            seconds = future.result()
            if profile is not None:
                seconds, step_rows = seconds
                rows += step_rows
            progress.step(name, _BY_NAME[name].cost, seconds, n_done, len(chosen))
    elapsed = time.perf_counter() - start
    stream.write(f"tapejit: kernels ready in {elapsed:.0f} s\n")
    stream.flush()
    if profile is not None:
        from ._compile_profile import table

        profile.write(f"tapejit compile --profile: {jobs} process"
                      f"{'es' if jobs > 1 else ''}, {elapsed:.1f} s wall\n")
        profile.write(table(rows))
        profile.flush()
    return elapsed


def next_step(pending: list[str], wanted: list[str]) -> str:
    """The step the background worker compiles next: the first asked for that is still
    pending, else the first pending."""
    return next((w for w in wanted if w in pending), pending[0])


def serve(requests=None, stream=None, run: Callable[[str], float] | None = None) -> None:
    """The background worker of the tiers (``tapejit compile --background``).

    Compiles the steps one after the other in this one process, at a lower priority, in
    :data:`BACKGROUND_ORDER` except that a step named on a ``want <step>`` line of
    ``requests`` (default stdin) goes next; prints ``ready <step>`` to ``stream`` (default
    stdout) after each. Holds a lock in the cache directory, so that the workers of
    several processes on one machine compile one after the other (the later ones then
    find everything cached). A finished step is not compiled again (its marker). Goes on
    when the requesting process exits: the cache is filled once per machine. ``run``
    makes a step's calls (default: :func:`_run_step`; tests pass their own).
    """
    import fcntl
    import threading

    from ._kernels.cache import cache_dir
    from ._kernels.runtime import kernels
    from ._kernels.tiers import MODE_ENV, marker

    os.environ[MODE_ENV] = "optimized"
    os.environ["TAPEJIT_QUIET"] = "1"
    requests = sys.stdin if requests is None else requests
    run = _run_step if run is None else run
    stream = sys.stdout if stream is None else stream
    try:
        os.nice(10)
    except OSError:  # pragma: no cover - not permitted: compile at the same priority
        pass
    wanted: list[str] = []
    lock = threading.Lock()

    def listen() -> None:
        try:
            for line in requests:
                kind, _, step = line.strip().partition(" ")
                if kind == "want" and step in _BY_NAME:
                    with lock:
                        wanted.append(step)
        except (OSError, ValueError):  # pragma: no cover - the requester went away
            pass

    threading.Thread(target=listen, daemon=True).start()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    module = kernels().module
    pending = list(BACKGROUND_ORDER)
    with open(root / "compile.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        while pending:
            with lock:
                first = next_step(pending, wanted)
            pending.remove(first)
            if not marker(module, first).exists():
                run(first)
            try:
                stream.write(f"ready {first}\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # nobody listens any more: fill the cache all the same
