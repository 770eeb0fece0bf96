#!/usr/bin/env python
"""The cost of the checks of ``tapejit.jit_value_and_grad`` at one point, in Numba code.

Usage::

    python asv_bench/measure_bundle_check.py [--rounds 41] [--calls 20000] [--old REV]

One ``@numba.njit`` loop per variant calls, ``--calls`` times at one point, either the
kernel ``value_grad_point`` directly with the bundle's arrays (*direct*: no checks at
all), ``tapejit.jit_value_and_grad`` (*new*: every check of the entry point), or, with
``--old REV``, the entry point of ``tapejit/_jit_api.py`` at git revision ``REV`` (*old*),
loaded from ``git show`` next to the current one. Two tapes: Rosenbrock of 2 variables
(7 instructions) and a chained Rosenbrock of 27 scalar variables (about 200). The
variants run in interleaved rounds (their order rotating), after one warm-up call
(compilation) that is excluded; the figures are medians over the rounds of the CPU time
of this thread per call (other processes' load shows less than in wall time).
``entry`` is ``(new - direct) / new``: the share of the call that all the entry point's
work takes (stamp, bundle, ``x`` and ``g`` checks); ``new/old - 1`` what the current
checks cost more than the old ones.
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def rosen2(x):
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2


def rosen_chain(x):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s = s + 100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2
    return s


def old_module(rev: str):
    """``tapejit/_jit_api.py`` at ``rev``, imported as ``tapejit._jit_api_old``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:tapejit/_jit_api.py"],
                         check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("tapejit._jit_api_old", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    exec(compile(src, f"{rev}:tapejit/_jit_api.py", "exec"), mod.__dict__)
    return mod


def loop_over(entry):
    """An njit loop calling ``entry(args, x, g)`` ``n`` times."""

    @numba.njit
    def loop(args, x, n):
        g = np.empty_like(x)
        s = 0.0
        for _ in range(n):
            s += entry(args, x, g)
        return s

    return loop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--calls", type=int, default=20_000,
                    help="calls per round for the small tape (a tenth for the large)")
    ap.add_argument("--old", metavar="REV", help="git revision of the old entry point")
    opts = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import tapejit
    from tapejit import _jit_api

    kernel = _jit_api._kernel_module().value_grad_point

    @numba.njit
    def direct(args, x, n):
        g = np.empty_like(x)
        s = 0.0
        for _ in range(n):
            s += kernel(args.prog, args.plan, args.consts, x, args.params, g,
                        args.workspace)
        return s

    loops = {"direct": (direct, lambda t: t.jit_args()),
             "new": (loop_over(tapejit.jit_value_and_grad), lambda t: t.jit_args())}
    if opts.old:
        old = old_module(opts.old)
        loops["old"] = (loop_over(old.jit_value_and_grad), lambda t: old.jit_args(t))

    print(f"tapejit from {Path(tapejit.__file__).parent}, numba {numba.__version__}, "
          f"median of {opts.rounds} interleaved rounds, warm-up excluded")
    for f, n_in, calls in ((rosen2, 2, opts.calls), (rosen_chain, 27, opts.calls // 10)):
        tape = tapejit.record(f, np.zeros(n_in))
        x = np.linspace(0.2, 0.9, n_in)
        want = tape.forward(x)
        runs = {}
        for name, (loop, make) in loops.items():
            args = make(tape)
            assert loop(args, x, 1) == want, name  # warm-up (compiles), and a check
            runs[name] = (loop, args)
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(opts.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                loop, args = runs[name]
                t0 = time.thread_time()
                loop(args, x, calls)
                times[name].append((time.thread_time() - t0) / calls)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        line = "  ".join(f"{name} {med[name] * 1e9:8.1f} ns" for name in names)
        entry = (med["new"] - med["direct"]) / med["new"]
        extra = ""
        if "old" in med:
            extra = f"  new/old - 1 = {med['new'] / med['old'] - 1:+.1%}"
        print(f"{f.__name__:12s} {len(tape):4d} instructions: {line}  "
              f"entry = {entry:+.1%}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
