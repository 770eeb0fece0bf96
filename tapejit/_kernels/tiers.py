"""Two tiers of kernels: the generic interpreter at once, the optimised kernels once compiled.

On a machine whose cache does not hold the optimised kernels (a new container, a CI job,
a notebook on a new machine), compiling them takes minutes. Instead of waiting, the first
calls run on the generic interpreter (``tapejit/_tier0.py``, numpy, nothing to compile)
while a worker process compiles the optimised kernels into the cache
(``tapejit compile --background``, one core, lower priority). Each kind of call moves to
its optimised kernel as soon as the worker reports it ready: the worker prints
``ready <step>`` after each step of :data:`tapejit._warmup.STEPS`, and takes first the
steps the process has asked for (``want <step>`` on its input, sent when a kind of call
first runs generic).

A :class:`Kernels` object is what a tape calls: one per set of instruction families (and
dtype of ``Float32Tape``), since an optimised kernel may only run a tape once the routines
of its families are loaded. Each attribute is an entry point, the optimised kernel or its
generic twin; a swap replaces the attribute, so the per-call cost is an attribute lookup
either way. Swaps go one way and in order (the families' routines, then the reverse plan,
then the entry points), so a call that reads an optimised entry point always gets what
it needs from the others.

A step is ready when its marker file exists in the kernel module's directory
(``ready/<step>.<numba>-<python>``): the worker and ``tapejit compile`` write it once the
step's kernels are in Numba's cache. ``TAPEJIT_KERNELS`` chooses the policy (see
:data:`MODES`); :func:`wait_for_kernels` blocks until every optimised kernel is in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numba

#: ``TAPEJIT_KERNELS``: ``auto`` (default): generic until the optimised kernels are
#: compiled in the background; ``optimized``: compile on first use in this process and
#: wait (tapejit before tiers; benchmarks); ``generic``: the generic interpreter only,
#: nothing compiled (a quick test run, a machine where compiling is not wanted).
MODES = ("auto", "optimized", "generic")
MODE_ENV = "TAPEJIT_KERNELS"

_LOCK = threading.RLock()
_NAMESPACES: dict[tuple, Kernels] = {}
_READY: set[str] = set()
_NOTICE_SHOWN = False


def mode() -> str:
    """The policy of ``TAPEJIT_KERNELS`` (checked: a typo is an error, not a default)."""
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{MODE_ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def _steps() -> tuple:
    from .._warmup import STEPS

    return STEPS


def marker(module: ModuleType, step: str) -> Path:
    """The file that says step ``step`` of this kernel module is compiled in the cache
    (for this Numba and Python)."""
    slug = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return Path(module.__file__).parent / "ready" / f"{slug}.numba{numba.__version__}-{py}"


def mark_ready(module: ModuleType, step: str) -> None:
    """Write step ``step``'s marker (after its calls have filled the cache)."""
    path = marker(module, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _step_ready(module: ModuleType, step: str) -> bool:
    if step not in _READY and marker(module, step).exists():
        _READY.add(step)
    return step in _READY


def _own_steps(name: str, float32: bool) -> list[str]:
    """The steps that compile entry point ``name`` (for float32 arrays: the float32 step
    when it has one)."""
    own = [step for step in _steps() if name in step.entries]
    f32 = [step.name for step in own if step.float32]
    return f32 if float32 and f32 else [step.name for step in own if not step.float32]


def _steps_of_families(families: tuple[int, ...]) -> list[str]:
    from .._warmup import FAMILY_STEP

    return sorted({FAMILY_STEP[c] for c in families})


def _ready(module: ModuleType, name: str, families: tuple[int, ...], float32: bool) -> bool:
    """Whether ``name`` may run optimised in a namespace: a step that compiles it is ready
    (any of them), and so are the steps of its families."""
    own = _own_steps(name, float32)  # none for ensure_family_routines: its families'
    return (not own or any(_step_ready(module, s) for s in own)) and all(
        _step_ready(module, s) for s in _steps_of_families(families))


class Kernels:
    """The entry points one kind of tape calls (see the module docstring).

    Attribute lookups go through ``__getattr__`` only the first time per name; the
    chosen function is then an attribute of the instance, swapped when its optimised
    kernel is ready.
    """

    def __init__(self, module: ModuleType, families: tuple[int, ...] = (),
                 float32: bool = False) -> None:
        self.module = module
        self.families = families
        self.float32 = float32
        self.generic: set[str] = set()  # names served by the generic interpreter now
        self._compacts = False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        from .. import _tier0

        with _LOCK:
            policy = mode()
            twin = _tier0.ENTRY_POINTS.get(name)
            if twin is None or policy == "optimized" or (
                    policy == "auto" and _ready(self.module, name, self.families, self.float32)):
                self.swap_ready()  # what the kernel needs first (a plan, the families)
                fn = self._optimized(name)
            else:
                fn = self._generic(name, twin)
                if policy == "auto":
                    _background(self.module).want(self._missing(name))
            object.__setattr__(self, name, fn)
            return fn

    def compacts(self) -> bool:
        """Whether the sweeps that take a forward program run optimised (or can: they are
        compiled); only they run slot-compacted programs (``_slot_reuse``), so a tape
        compacts its program for them once this holds."""
        from .._tier0 import FORWARD_PROGRAM

        if not self._compacts:
            policy = mode()
            self._compacts = policy == "optimized" or (policy == "auto" and all(
                _ready(self.module, n, self.families, self.float32) for n in FORWARD_PROGRAM))
        return self._compacts

    def _missing(self, name: str) -> list[str]:
        return [*_own_steps(name, self.float32)[:1], *_steps_of_families(self.families)]

    def _optimized(self, name: str) -> Callable[..., Any]:
        fn = self._entry(name)
        _notice_if_cold(fn)
        return fn

    def _entry(self, name: str) -> Callable[..., Any]:
        """The optimised kernel ``name``, with the sweeps it calls through the table
        compiled or loaded (``family_calls.py``)."""
        self.module.ensure_routines_of(name)
        return getattr(self.module, name)

    def _generic(self, name: str, twin: Callable[..., Any]) -> Callable[..., Any]:
        from .._tier0 import Unsupported

        self.generic.add(name)
        _notice_generic()

        def generic(*args, **kwargs):
            try:
                return twin(*args, **kwargs)
            except Unsupported:
                return self._fallback(name, args, kwargs)

        generic.__name__ = f"generic_{name}"
        generic.tier0 = True
        return generic

    def _fallback(self, name: str, args: tuple, kwargs: dict) -> Any:
        """Run a call the generic tier refuses on the optimised kernel (compiled here if
        it must be), with a real reverse plan and, for a batch, every share of it."""
        from .._tier0 import BATCHED

        self._load_families()
        if len(args) > 1 and args[1] is None:  # the generic tier's plan: none
            args = (args[0], self.module.reverse_plan(args[0]), *args[2:])
        if name in BATCHED:
            args = (*args[:-2], 0, 1)
        return self._optimized(name)(*args, **kwargs)

    def _load_families(self) -> None:
        """Compile or load the routines of this namespace's families for every sweep
        before an optimised kernel that calls them runs (a float32 namespace's kernels
        call the same routines: their parameters reach them as float64)."""
        from .._program import SWEEPS

        if self.families:
            self.module.ensure_family_routines(self.families, SWEEPS)

    def swap_ready(self) -> None:
        """Move every generic name whose optimised kernel is now ready to it, in order:
        the families' routines first, then the reverse plan, then the entry points."""
        with _LOCK:
            ready = [n for n in self.generic
                     if _ready(self.module, n, self.families, self.float32)]
            if not ready:
                return
            self._load_families()
            order = sorted(ready, key=lambda n: (n != "ensure_family_routines",
                                                 n != "reverse_plan", n))
            for name in order:
                object.__setattr__(self, name, self._entry(name))
                self.generic.discard(name)


def namespace(module: ModuleType, families: Iterable[int] = (), float32: bool = False
              ) -> Kernels:
    """The :class:`Kernels` of tapes with instruction families ``families`` (float32
    parameters and results for ``Float32Tape``)."""
    key = (tuple(sorted(set(families))), bool(float32))
    ns = _NAMESPACES.get(key)
    if ns is None:
        with _LOCK:
            ns = _NAMESPACES.get(key)
            if ns is None:
                ns = _NAMESPACES[key] = Kernels(module, *key)
    return ns


def _on_ready(step: str) -> None:
    _READY.add(step)
    for ns in list(_NAMESPACES.values()):
        ns.swap_ready()


# -- the worker that compiles in the background ----------------------------------------------
class _Background:
    """The worker process (``tapejit compile --background``), started on first need."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.proc: subprocess.Popen | None = None
        self.asked: set[str] = set()
        self.done = threading.Event()

    def want(self, steps: list[str]) -> None:
        with _LOCK:
            if self.proc is None:
                self._start()
            for step in steps:
                if step not in self.asked and step not in _READY:
                    self.asked.add(step)
                    self._send(f"want {step}\n")

    def _start(self) -> None:
        env = dict(os.environ, **{MODE_ENV: "optimized", "TAPEJIT_QUIET": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tapejit", "compile", "--background"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, text=True, bufsize=1, start_new_session=True)
        threading.Thread(target=self._read, name="tapejit-tiers", daemon=True).start()
        threading.Thread(target=self._poll, name="tapejit-tiers-poll", daemon=True).start()

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the worker has finished (or died); its markers say what is ready

    def _poll(self, every: float = 0.5) -> None:
        """Watch the markers too: another process's worker may be the one compiling
        (this one waits for its lock meanwhile)."""
        while not self.done.wait(every):
            for step in _steps():
                if step.name not in _READY and marker(self.module, step.name).exists():
                    _on_ready(step.name)

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, _, step = line.strip().partition(" ")
            if kind == "ready":
                _on_ready(step)
        self.proc.wait()
        for ns in list(_NAMESPACES.values()):
            ns.swap_ready()
        self.done.set()


_BACKGROUND: _Background | None = None


def _forget_background() -> None:
    global _BACKGROUND
    _BACKGROUND = None  # a forked child has no reader threads: it starts a worker of its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_background)


def _background(module: ModuleType) -> _Background:
    global _BACKGROUND
    if _BACKGROUND is None:
        _BACKGROUND = _Background(module)
    return _BACKGROUND


def wait_for_kernels(timeout: float | None = None) -> bool:
    """Block until every kind of call in use runs on its optimised kernel.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait at most (default: as long as it takes).

    Returns
    -------
    bool
        True when nothing runs generic any more (at once if nothing ever did); False if
        the timeout passed first or nothing compiles them (``TAPEJIT_KERNELS=generic``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while any(ns.generic for ns in list(_NAMESPACES.values())):
        bg = _BACKGROUND
        if mode() != "auto" or bg is None or bg.proc is None:
            return False
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        if bg.done.wait(0.2 if left is None else min(0.2, left)):
            return not any(ns.generic for ns in list(_NAMESPACES.values()))
    return True


# -- one-line notices -----------------------------------------------------------------------
def cache_index(fn) -> str | None:
    """Path of Numba's on-disk cache index of kernel ``fn`` (None if it has no cache)."""
    try:
        return fn._cache._cache_file._index_path
    except AttributeError:
        return None


def _notice_if_cold(fn) -> None:
    """Tell the user (once per process) that interpreters are being compiled here."""
    global _NOTICE_SHOWN
    if _NOTICE_SHOWN or os.environ.get("TAPEJIT_QUIET"):
        return
    index = cache_index(fn)
    if index is not None and not os.path.exists(index):
        _NOTICE_SHOWN = True
        print(
            "tapejit: compiling its interpreters for this machine (first use only, up to "
            f"a few minutes; cached in {os.path.dirname(os.path.dirname(index))}; "
            "`tapejit compile` does them all ahead, on every core)",
            file=sys.stderr,
            flush=True,
        )


def _notice_generic() -> None:
    """Tell the user (once per process) that the optimised kernels are not ready yet
    (not when ``TAPEJIT_KERNELS=generic`` asked for the generic tier)."""
    global _NOTICE_SHOWN
    if _NOTICE_SHOWN or os.environ.get("TAPEJIT_QUIET") or mode() != "auto":
        return
    _NOTICE_SHOWN = True
    print("tapejit: first use on this machine: running on the generic interpreter while "
          "the optimised kernels compile in the background, taking over when ready "
          "(`tapejit compile` does it ahead)", file=sys.stderr, flush=True)
