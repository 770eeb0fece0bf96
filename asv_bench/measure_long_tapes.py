"""Issue #22's targets side by side in one run: long tapes' value and gradient.

* The recurrence of ``benchmarks/_baselines.recurrence_f`` at 100, 1000 and 10000 steps
  (801 to 80,001 instructions), at 1 to 10^4 points: ns per point and instruction, and
  each long tape's figure over the 801-instruction tape's (the target: 1.5 at most).
* The Lorenz fit of ``_baselines.lorenz_f`` (2000 RK4 steps, 3 parameters): recording,
  one point and 1000 points, beside CasADi's SX function of the unrolled graph and JAX's
  ``jit(value_and_grad)`` with the steps in ``lax.fori_loop`` where they are installed.
* The same fit with its steps in ``tapejit.scan``: recording, one point and 1000 points
  against the unrolled tape in the same run, JAX beside; and 10^5 steps at one point with
  the peak memory the gradient adds (in a process of its own).
* The Lorenz fit's unrolled tape at a few points: value and gradient per point by count
  of points (one point at a time below 80, the segmented sweeps in parts from there).
* Long tapes of blocks (``blocks``): the hanging chain's constraints and Lagrangian and
  ``rosen_ext`` by count of points, whose batched reverse sweeps run point by point.

Usage (the docs' performance page, *Long tapes*), every section or the ones named::

    python asv_bench/measure_long_tapes.py [recurrence lorenz few_points lorenz_scan blocks]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _baselines as B

import tapejit


def best(fn, reps=5):
    """The fastest of ``reps`` calls, in seconds."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def recurrence_table() -> None:
    print("== recurrence: value_and_grad, ns per point-instruction")
    base = {}
    for k in (100, 1000, 10000):
        tape = tapejit.record(B.recurrence_f, B.RECURRENCE_X0, k=k)
        ni = len(tape.opcodes)
        row = [f"{ni:>6} instr"]
        for n in (1, 100, 1000, 10000):
            rng = np.random.default_rng(0)
            X = rng.uniform(0.3, 0.8, (n, 2)) if n > 1 else np.array([0.5, 0.7])
            tape.value_and_grad(X)
            reps = 5 if ni * n < 1e8 else 3
            ns = best(partial(tape.value_and_grad, X), reps) / (ni * n) * 1e9
            base.setdefault(n, ns)
            ratio = f" ({ns / base[n]:.2f}x of 801)" if k > 100 and n >= 1000 else ""
            row.append(f"n={n}: {ns:.2f} ns{ratio}")
        print("  ".join(row), flush=True)


def lorenz() -> None:
    print("== Lorenz fit, 2000 RK4 steps, 3 parameters")
    p = np.asarray(B.LORENZ_P)
    t0 = time.perf_counter()
    tape = tapejit.record(B.lorenz_f, p.copy())
    rec = time.perf_counter() - t0
    ni = len(tape.opcodes)
    print(f"tapejit record: {rec * 1e3:.0f} ms, {ni} instructions, "
          f"{rec / ni * 1e6:.2f} us/instr")
    tape.value_and_grad(p)
    one = best(lambda: tape.value_and_grad(p), 20)
    P = B.lorenz_points(1000)
    tape.value_and_grad(P)
    many = best(lambda: tape.value_and_grad(P), 5) / len(P)
    print(f"tapejit: 1 point {one * 1e3:.3f} ms; 1000 points {many * 1e3:.4f} ms a point, "
          f"{one / many:.1f}x faster per point than one point")
    F = B.make_casadi_lorenz()
    if F is None:
        print("casadi: not installed")
    else:
        t0 = time.perf_counter()
        F = B.make_casadi_lorenz()
        build = time.perf_counter() - t0
        F(p)
        ca_one = best(lambda: F(p), 20)
        Fm = F.map(len(P))
        Fm(P.T)
        ca_many = best(lambda: Fm(P.T), 3) / len(P)
        print(f"casadi SX: build {build:.2f} s; 1 point {ca_one * 1e3:.3f} ms; map "
              f"{ca_many * 1e3:.4f} ms a point; tapejit/casadi {one / ca_one:.2f} (1 point), "
              f"{many / ca_many:.2f} (1000 points)")
        paired(tape, F, p)
    jax_row(p, one, "tapejit/jax")


def jax_row(p, one: float, label: str) -> None:
    """JAX's one-point Lorenz gradient (compile time beside), and ``one`` over it."""
    if B._jax() is None:
        print("jax: not installed")
        return
    t0 = time.perf_counter()
    f = B.make_jax_lorenz()
    pj = B.jax_put(p)
    f(pj)
    compile_s = time.perf_counter() - t0
    jx = best(lambda: f(pj), 20)
    print(f"jax jit(value_and_grad), fori_loop: compile {compile_s:.2f} s; 1 point "
          f"{jx * 1e3:.3f} ms; {label} {one / jx:.2f}")


def paired(tape, F, p, rounds=15, calls=50) -> None:
    """tapejit's one-point gradient (into a preallocated array, as an optimizer calls it)
    against CasADi's function, in interleaved rounds: the median ratio."""
    g = np.empty(p.size)

    def per_call(fn):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t) / calls

    def tj():
        return tape.value_and_grad(p, out=(None, g))

    def ca():
        return F(p)

    ratios, times = [], []
    for r in range(rounds):
        first, second = (tj, ca) if r % 2 else (ca, tj)
        a, b = per_call(first), per_call(second)
        t_tj, t_ca = (a, b) if r % 2 else (b, a)
        times.append((t_tj, t_ca))
        ratios.append(t_tj / t_ca)
    med = np.median(np.array(times), axis=0)
    print(f"1 point, interleaved ({rounds} rounds of {calls} calls, gradient into out=): "
          f"tapejit {med[0] * 1e3:.3f} ms, casadi {med[1] * 1e3:.3f} ms, ratio median "
          f"{np.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f})")


def lorenz_scan() -> None:
    """The Lorenz fit with its steps in ``tapejit.scan``, beside the unrolled tape and
    JAX in the same run; and 10^5 steps at one point, with the peak memory it adds."""
    print("== Lorenz fit with tapejit.scan (the body recorded once)")
    p = np.asarray(B.LORENZ_P)
    tapejit.record(B.lorenz_scan_f, p.copy())  # loads the loop routines
    t0 = time.perf_counter()
    tape = tapejit.record(B.lorenz_scan_f, p.copy())
    rec = time.perf_counter() - t0
    unrolled = tapejit.record(B.lorenz_f, p.copy())
    P = B.lorenz_points(1000)
    for t in (tape, unrolled):
        t.value_and_grad(p)
        t.value_and_grad(P)
    g = np.empty(3)
    one = best(lambda: tape.value_and_grad(p, out=(None, g)), 20)
    one_u = best(lambda: unrolled.value_and_grad(p, out=(None, g)), 20)
    many = best(lambda: tape.value_and_grad(P), 5)
    many_u = best(lambda: unrolled.value_and_grad(P), 5)
    print(f"tapejit scan: record {rec * 1e3:.1f} ms, {len(tape.opcodes)} instructions; "
          f"1 point {one * 1e3:.3f} ms ({one / one_u:.2f}x the unrolled tape's "
          f"{one_u * 1e3:.3f} ms); 1000 points {many * 1e3:.1f} ms ({many / many_u:.2f}x "
          f"the unrolled {many_u * 1e3:.1f} ms), {one / (many / len(P)):.1f}x faster per "
          "point than one point")
    jax_row(p, one, "tapejit scan/jax")
    # in a new process, so that the high-water mark is this call's
    code = ("import resource, sys, time; sys.path.insert(0, sys.argv[1]); "
            "import numpy as np, tapejit; from benchmarks import _baselines as B; "
            "p = np.asarray(B.LORENZ_P); "
            "t = tapejit.record(lambda q: B.lorenz_scan_f(q, steps=100_000), p); "
            "tapejit.record(B.lorenz_scan_f, p).value_and_grad(p); "
            "m0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "t0 = time.perf_counter(); t.value_and_grad(p); s = time.perf_counter() - t0; "
            "m1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "print(f'100000 RK4 steps with scan: gradient at one point {s * 1e3:.0f} ms, "
            "peak memory grew by {(m1 - m0) / 1024:.1f} MB')")
    subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__))],
                   check=True)


def few_points() -> None:
    print("== few points: the Lorenz fit's unrolled tape, value and gradient, ms a point")
    p = np.asarray(B.LORENZ_P)
    tape = tapejit.record(B.lorenz_f, p.copy())
    one = best(lambda: tape.value_and_grad(p), 20)
    row = [f"1: {one * 1e3:.3f}"]
    for n in (2, 8, 16, 31, 32, 64, 128, 256, 1000):
        P = B.lorenz_points(n)
        t = best(lambda P=P: tape.value_and_grad(P), 5) / n
        row.append(f"{n}: {t * 1e3:.3f}")
    print("   " + ", ".join(row))


def _chain_blocks(N: int, rng: np.random.Generator) -> str:
    f, g, z0, _, _ = B.hanging_chain(N)
    links = tapejit.record(g, z0)
    lag = tapejit.record(lambda z, p: p[0] * f(z) + np.dot(p[1:], g(z)), z0, np.ones(N + 1),
                         argnums=0)
    p = rng.uniform(size=N + 1)
    x, w = z0 + 0.01, rng.uniform(size=N)
    row = [f"vjp 1: {best(lambda: links.vjp(x, w), 50) * 1e6:.2f}"]
    for n in (4, 64, 1024):
        X = z0 + 0.01 * rng.uniform(size=(n, z0.size))
        W = rng.uniform(size=(n, N))
        row.append(f"vjp {n}: {best(lambda X=X, W=W: links.vjp(X, W)) / n * 1e6:.2f}")
        row.append(f"lagrangian {n}: "
                   f"{best(lambda X=X: lag.value_and_grad(X, params=p)) / n * 1e6:.2f}")
    row.append(f"jacobian 1: {best(lambda: links.jacobian(x), 3) * 1e6:.0f}")
    return f"   N = {N}: " + ", ".join(row)


def blocks() -> None:
    print("== long tapes of blocks: the hanging chain's constraints (vjp, reverse jacobian) "
          "and Lagrangian (value_and_grad), rosen_ext at n = 1000; us (a point)")
    rng = np.random.default_rng(0)
    for N in (500, 2000):
        print(_chain_blocks(N, rng))
    tape = tapejit.record(B.rosen_ext_f, np.ones(1000))
    X = 1.0 + 0.01 * rng.uniform(size=(256, 1000))
    print(f"   rosen_ext n = 1000, 256 points: "
          f"{best(lambda: tape.value_and_grad(X)) / 256 * 1e6:.2f}")


SECTIONS = {"recurrence": recurrence_table, "lorenz": lorenz, "few_points": few_points,
            "lorenz_scan": lorenz_scan, "blocks": blocks}

if __name__ == "__main__":
    for name in sys.argv[1:] or SECTIONS:
        SECTIONS[name]()
