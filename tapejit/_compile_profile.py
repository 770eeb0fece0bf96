"""Where the kernels' compile time goes: ``tapejit compile --profile`` (a developer tool).

A :class:`Recorder` listens to Numba's compile events (``numba.core.event``) while a step
of :data:`tapejit._warmup.STEPS` runs, and keeps one :class:`Compiled` row per kernel
function and signature that the step compiled (functions an earlier step compiled are
not compiled again in the same process: run the steps in one process, ``--jobs 1``, on an
empty cache (``TAPEJIT_CACHE_DIR``) for numbers that add up).

A function's *inclusive* time runs from the start of its compilation to its end; it
contains the compilations of the functions it calls that were not compiled yet (Numba
compiles a callee while it types the call). Its *self* time is that less those nested
compilations: its own typing, its own lowering, and LLVM optimising and generating code
for its module, which includes the code of the callees it inlines. Self time is split
into Numba's type inference, native lowering (LLVM included) and the other passes
(bytecode, IR rewrites, Numba-level inlining). The C callables of the instruction
families (``numba.cfunc``, which Numba compiles without a compile event) are recorded
too, as ``cfunc <name>``. The rows of all steps add up to the compile time; what a step
spent outside any compilation (recording the tapes, loading the module, running) is its
``(not compiling)`` row.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

from numba.core import event as ev

_CFUNC_EVENT = "tapejit:cfunc"


class Compiled(NamedTuple):
    """One compilation: a function for one signature."""

    function: str
    signature: str
    inclusive: float  #: seconds from start to end, nested compilations included
    self: float  #: less the nested compilations
    typing: float  #: of ``self``: type inference
    lowering: float  #: of ``self``: native lowering, LLVM optimisation and codegen
    step: str = ""
    #: of ``self``: the other passes that took longest, ``((name, seconds), ...)``
    others: tuple = ()


class _Frame:
    """A compilation under way. Its passes nest (an overload that Numba compiles while it
    types a call runs a pipeline of its own inside the caller's type inference): each
    open pass is ``[start, nested compile seconds at start, seconds of nested passes]``,
    and a pass's own seconds exclude its nested passes and compilations."""

    __slots__ = ("function", "nested", "open", "passes", "signature", "start")

    def __init__(self, function: str, signature: str) -> None:
        self.function, self.signature = function, signature
        self.start = time.perf_counter()
        self.nested = 0.0  # seconds of nested compilations
        self.passes: dict[str, float] = defaultdict(float)  # own seconds by pass name
        self.open: list[list[float]] = []


def short_type(text: str) -> str:
    """A Numba type's text, shorter: ``array(float64, 2d, C)`` -> ``f64[2d]``."""
    text = re.sub(r"array\((\w+), (\d)d, C\)", r"\1[\2d]", text)
    text = re.sub(r"array\((\w+), (\d)d, (\w)\)", r"\1[\2d,\3]", text)
    text = re.sub(r"(Readonly )?array\((\w+), (\d)d, (\w), readonly\)", r"\2[\3d,\4,ro]", text)
    for long, short in (("float64", "f64"), ("float32", "f32"), ("int64", "i64"),
                        ("int32", "i32"), ("Literal[int]", "lit"), ("bool", "b")):
        text = text.replace(long, short)
    return text


class Recorder:
    """Collects :class:`Compiled` rows while it is installed (``with recorder.installed():``)."""

    def __init__(self) -> None:
        self.rows: list[Compiled] = []
        self._stack: list[_Frame] = []

    # --- numba.core.event.Listener's interface, one per event kind
    def _compile_start(self, event) -> None:
        data = event.data
        if event.kind == _CFUNC_EVENT:
            name, sig = f"cfunc {data['name']}", ""
        else:
            dispatcher = data["dispatcher"]
            name = dispatcher.py_func.__name__
            sig = short_type(", ".join(str(a) for a in data["args"]))
        self._stack.append(_Frame(name, sig))

    def _compile_end(self, event) -> None:
        frame = self._stack.pop()
        inclusive = time.perf_counter() - frame.start
        own = inclusive - frame.nested
        typing = sum(t for p, t in frame.passes.items() if "type_inference" in p)
        lowering = sum(t for p, t in frame.passes.items() if "lowering" in p)
        others = sorted(((p, t) for p, t in frame.passes.items()
                         if "type_inference" not in p and "lowering" not in p),
                        key=lambda pt: -pt[1])[:2]
        self.rows.append(Compiled(frame.function, frame.signature, inclusive, own, typing,
                                  lowering, "", tuple(others)))
        if self._stack:
            self._stack[-1].nested += inclusive

    def _pass_start(self, event) -> None:
        if self._stack:
            top = self._stack[-1]
            top.open.append([time.perf_counter(), top.nested, 0.0])

    def _pass_end(self, event) -> None:
        if self._stack and self._stack[-1].open:
            top = self._stack[-1]
            start, nested, inner = top.open.pop()
            spent = time.perf_counter() - start - (top.nested - nested)
            top.passes[event.data["name"].split(" [")[0]] += spent - inner
            if top.open:
                top.open[-1][2] += spent

    @contextmanager
    def installed(self):
        """Record while in the block (one thread: Numba compiles under one lock)."""
        from numba.core.ccallback import CFunc

        compile_listener = _Listener(self._compile_start, self._compile_end)
        pass_listener = _Listener(self._pass_start, self._pass_end)
        plain = CFunc.compile

        def compile_cfunc(cfunc):
            with ev.trigger_event(_CFUNC_EVENT, data={"name": cfunc.__name__}):
                return plain(cfunc)

        with ExitStack() as stack:
            stack.enter_context(ev.install_listener("numba:compile", compile_listener))
            stack.enter_context(ev.install_listener(_CFUNC_EVENT, compile_listener))
            stack.enter_context(ev.install_listener("numba:run_pass", pass_listener))
            CFunc.compile = compile_cfunc
            stack.callback(setattr, CFunc, "compile", plain)
            yield self


class _Listener(ev.Listener):
    def __init__(self, start, end) -> None:
        self._start, self._end = start, end

    def on_start(self, event) -> None:
        self._start(event)

    def on_end(self, event) -> None:
        self._end(event)


def profile_step(name: str, run) -> tuple[float, list[Compiled]]:
    """Run ``run()`` (the calls of step ``name``) recording its compilations: its wall
    time, and a row per compilation plus one ``(not compiling)`` row."""
    recorder = Recorder()
    start = time.perf_counter()
    with recorder.installed():
        run()
    seconds = time.perf_counter() - start
    rows = [row._replace(step=name) for row in recorder.rows]
    outside = seconds - sum(r.self for r in rows)
    rows.append(Compiled("(not compiling)", "", outside, outside, 0.0, 0.0, name))
    return seconds, rows


def table(rows: list[Compiled], top: int | None = None) -> str:
    """The report: per step, per function (its signatures summed), per compilation."""
    out: list[str] = []
    total = sum(r.self for r in rows)
    compiling = sum(r.self for r in rows if r.function != "(not compiling)")
    out.append(f"total {total:.1f} s, of which compiling {compiling:.1f} s "
               f"({sum(1 for r in rows if r.function != '(not compiling)')} compilations)")
    out.append("")
    out.append("per step (self seconds of the functions each step compiled first):")
    steps: dict[str, list[Compiled]] = defaultdict(list)
    for r in rows:
        steps[r.step].append(r)
    for step, rs in steps.items():
        comp = [r for r in rs if r.function != "(not compiling)"]
        out.append(f"  {sum(r.self for r in rs):8.1f} s  {step:<40s}  compiling "
                   f"{sum(r.self for r in comp):7.1f} s in {len(comp)} compilations")
    out.append("")
    out.append("per function (signatures summed; self = less nested compilations):")
    out.append(f"  {'self s':>8} {'typing':>7} {'lower':>7} {'incl s':>8} {'sigs':>4}  "
               f"function  [steps]")
    by_fn: dict[str, list[Compiled]] = defaultdict(list)
    for r in rows:
        if r.function != "(not compiling)":
            by_fn[r.function].append(r)
    ranked = sorted(by_fn.items(), key=lambda kv: -sum(r.self for r in kv[1]))
    for fn, rs in ranked[:top]:
        steps_of = ", ".join(dict.fromkeys(r.step for r in rs))
        out.append(f"  {sum(r.self for r in rs):8.2f} {sum(r.typing for r in rs):7.2f} "
                   f"{sum(r.lowering for r in rs):7.2f} {sum(r.inclusive for r in rs):8.2f} "
                   f"{len(rs):4d}  {fn}  [{steps_of}]")
    out.append("")
    out.append("per compilation (function and signature):")
    out.append(f"  {'self s':>8} {'typing':>7} {'lower':>7} {'incl s':>8}  function(signature)"
               f"  [step]  (other passes: the longest)")
    for r in sorted((r for r in rows if r.function != "(not compiling)"),
                    key=lambda r: -r.self)[:top]:
        others = ", ".join(f"{p} {t:.2f}" for p, t in r.others if t >= 0.05)
        out.append(f"  {r.self:8.2f} {r.typing:7.2f} {r.lowering:7.2f} {r.inclusive:8.2f}  "
                   f"{r.function}({r.signature})  [{r.step}]" + (f"  ({others})" if others
                                                                  else ""))
    return "\n".join(out) + "\n"
