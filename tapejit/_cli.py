"""Command line: ``tapejit demo`` (also ``python -m tapejit demo``)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _seed(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def demo(n_points: int = 10**6) -> int:
    """Record the seed example, show its tape, and evaluate it at many points."""
    import tapejit

    print(f"tapejit {tapejit.__version__}: y = ln(x1) + x1*x2 - sin(x2)")
    t0 = time.perf_counter()
    tape = tapejit.record(_seed, 2.0, 5.0)
    print(f"recorded in {1e3 * (time.perf_counter() - t0):.1f} ms")
    print(tape.listing())
    print("(first use compiles the interpreters once; later processes load them from cache)")
    t0 = time.perf_counter()
    v, g = tape.value_and_grad(np.array([2.0, 5.0]))
    print(f"ready in {time.perf_counter() - t0:.1f} s")
    print(f"at (2, 5): y = {v:.6f}  (ln 2 + 10 - sin 5 = {np.log(2) + 10 - np.sin(5):.6f})")
    print(f"           dy/dx1 = {g[0]:.6f}  (1/2 + 5 = 5.5)")
    print(f"           dy/dx2 = {g[1]:.6f}  (2 - cos 5 = {2 - np.cos(5):.6f})")

    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 3.0, size=(n_points, 2))
    tape.value_and_grad(X[:1000])  # compile the batched sweep outside the timing
    t0 = time.perf_counter()
    _, G = tape.value_and_grad(X)
    t_tape = time.perf_counter() - t0
    h = 1e-6
    t0 = time.perf_counter()
    fd = np.stack(
        [(_seed(X[:, 0] + h, X[:, 1]) - _seed(X[:, 0] - h, X[:, 1])) / (2 * h),
         (_seed(X[:, 0], X[:, 1] + h) - _seed(X[:, 0], X[:, 1] - h)) / (2 * h)],
        axis=1,
    )
    t_fd = time.perf_counter() - t0
    err = float(np.max(np.abs(fd - G)))
    print(f"\n{n_points:,} points, value and gradient:")
    print(f"  tapejit reverse sweep       {t_tape * 1e3:8.1f} ms  "
          f"({n_points / t_tape / 1e6:.1f} M points/s)")
    print(f"  numpy central differences   {t_fd * 1e3:8.1f} ms  (max |difference| {err:.1e})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tapejit`` command."""
    parser = argparse.ArgumentParser(prog="tapejit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="record the seed example and evaluate it")
    p_demo.add_argument("--points", type=int, default=10**6, help="points for the timing")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.points < 1:
            parser.error("--points must be at least 1")
        return demo(args.points)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
