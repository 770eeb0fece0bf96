#!/usr/bin/env python
"""Print the timing ratios issues 4 and 5 name, measured in one process.

Usage::

    python asv_bench/measure_issue45.py [--repeat 7]

1. ``hvp / gradient``: extended Rosenbrock (n = 1000), one point, the same tape.
2. ``tapejit / jax``: Hessians of the 10-input function of ``bench_second_order`` at 1e5
   points, ``tape.hessian(X)`` against ``jax.jit(jax.vmap(jax.hessian(f)))`` (inputs on
   the device once, ``block_until_ready``).
3. ``python if / np.where``: the gradient of a three-piece function at 1e6 points,
   ``tapejit.grad(f, batched=True)`` on the Python-``if`` version (tapes cached) against
   ``tape.gradient(X)`` of the ``np.where`` version (one guard-free tape).

Every timing is the median over ``--repeat`` runs of ``timeit`` (``number`` from an
autorange loop), after one warm-up call (JIT compilation, recording) that is excluded.
"""

import argparse
import os
import statistics
import sys
import timeit
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # -> the `benchmarks` package

from benchmarks import _baselines as B  # noqa: E402
from benchmarks import bench_control_flow as CF  # noqa: E402
from benchmarks import bench_second_order as SO  # noqa: E402
from benchmarks import import_tapejit  # noqa: E402


def per_call(fn, repeat: int) -> float:
    """Median seconds per call of ``fn()``, warm-up excluded."""
    fn()  # warm-up
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, number)
    return statistics.median(t / number for t in timer.repeat(repeat, number))


def fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.3f} {unit}"
    return f"{seconds / 1e-9:8.1f} ns"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    tapejit, err = import_tapejit()
    if tapejit is None:
        print(f"tapejit unavailable: {err}")
        return 1
    import numba

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"tapejit {tapejit.__version__} from {Path(tapejit.__file__).parent}")
    print(f"cpus {os.cpu_count()}, numba threads {numba.get_num_threads()}, "
          f"load average {' '.join(f'{v:.2f}' for v in load)}")
    print(f"median of {args.repeat} repeats, warm-up excluded\n")
    r = args.repeat

    # 1. hvp / gradient, extended Rosenbrock n = 1000, one point
    n = 1000
    tape = tapejit.record(B.rosen_ext_f, np.ones(n))
    x = B.rosen_ext_point(n)
    v = np.random.default_rng(1).normal(size=n)
    g = np.empty(n)
    t_grad = per_call(lambda: tape.gradient(x, out=g), r)
    t_hvp = per_call(lambda: tape.hvp(x, v), r)
    print("1. extended Rosenbrock n=1000, one point")
    print(f"   gradient {fmt(t_grad)}   hvp {fmt(t_hvp)}   hvp/gradient = {t_hvp / t_grad:.2f}")

    # 2. Hessian of the 10-input function at 1e5 points vs jax
    X = SO.f10_points(100_000)
    tape10 = tapejit.record(SO.f10, np.ones(SO.N_IN))
    t_tj = per_call(lambda: tape10.hessian(X), r)
    print("2. Hessian, 10 inputs, 1e5 points")
    try:
        run, put = SO.make_jax_hessian_batch()
    except NotImplementedError as exc:
        print(f"   tapejit {fmt(t_tj)}   jax n/a ({exc})")
    else:
        Xd = put(X)
        H_jax = np.asarray(run(Xd))
        H_tj = tape10.hessian(X)
        err_rel = np.max(np.abs(H_jax - H_tj)) / np.max(np.abs(H_jax))
        t_jax = per_call(lambda: run(Xd), r)
        print(f"   tapejit {fmt(t_tj)}   jax jit(vmap(hessian)) {fmt(t_jax)}   "
              f"tapejit/jax = {t_tj / t_jax:.2f}   (max rel. difference {err_rel:.1e})")

    # 3. piecewise gradient at 1e6 points: Python if (batched grad) vs np.where tape
    xs = CF.spline_points(1_000_000)
    Xs = xs[:, None].copy()
    grad_if = tapejit.grad(CF.spline_if, batched=True)
    tape_where = tapejit.record(CF.spline_where, 0.0)
    G_if = grad_if(xs)
    G_where = tape_where.gradient(Xs)[:, 0]
    same = np.array_equal(G_if, G_where)
    t_if = per_call(lambda: grad_if(xs), r)
    t_where = per_call(lambda: tape_where.gradient(Xs), r)
    t_np = per_call(lambda: CF.spline_grad_numpy(xs), r)
    print("3. three-piece function, gradient at 1e6 points")
    print(f"   grad(batched=True), Python if ({len(grad_if.tape_cache)} tapes) {fmt(t_if)}   "
          f"np.where tape {fmt(t_where)}   if/where = {t_if / t_where:.2f}   "
          f"(numpy closed form {fmt(t_np)}; results equal: {same})")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in load)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
