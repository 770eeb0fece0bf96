"""The COPS-style hanging chain solved by tapejit.optimize.ipopt and by CasADi's nlpsol,
side by side in one process, and the chain's sparse Lagrangian Hessian against the dense
one and CasADi's SX Hessian function (issue 23's targets).

The chain has ``N`` links of length ``L / N`` between (0, 1) and (1, 3), ``L = 4``;
variables: the ``N + 1`` points' coordinates ``x``, ``y`` (the end points fixed by
bounds); objective: the potential energy ``sum (y_i + y_(i+1)) / (2 N)``; ``N`` equality
constraints ``|p_(i+1) - p_i|^2 = (L / N)^2``. Both solvers start from the same point and
run IPOPT with the same options (``tol`` 1e-8, the defaults otherwise).

Run: ``python asv_bench/measure_hanging_chain.py [N ...]`` (default 500 2000 5000;
CasADi is skipped where it is not installed, and for N > 2000 unless ``--casadi-all``).
``--ipopt mumps_permuting_scaling=0`` (an IPOPT option, given to both solvers) turns off
MUMPS's permuting scaling, which takes most of the solve's time on this problem as N
grows (at N = 2000 with the IPOPT of cyipopt-wheels: 21 s with it, 0.8 s without, the
same 19 iterations; at N = 5000 three iterations took 11 minutes with it).
``--casadi-ipopt`` (Linux) runs the script again with CasADi's own IPOPT library
preloaded (``LD_PRELOAD``), so that cyipopt, and with it tapejit, calls the IPOPT and
MUMPS that CasADi's ``nlpsol`` calls: the two solves then differ only in what each
tool does around IPOPT (IPOPT's banner, ``--ipopt print_level=5``, names the version).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _baselines as B

import tapejit
from tapejit import _colouring
from tapejit.optimize import ipopt

TOL = 1e-8
#: Links of the chain solved first, whose time is not reported.
WARM_UP_N = 50


problem = B.hanging_chain


def solve_tapejit(N: int, options: dict) -> dict:
    from scipy.optimize import Bounds

    f, g, z0, lb, ub = problem(N)
    t = time.perf_counter()
    res = ipopt(f, z0, constraints={"type": "eq", "fun": g}, bounds=Bounds(lb, ub), tol=TOL,
                options=options)
    total = time.perf_counter() - t
    return {"f": res.fun, "iters": res.nit, "total": total, "callbacks": res.derivative_seconds,
            "status": res.message, "x": res.x}


def solve_casadi(N: int, options: dict) -> dict:
    _, _, z0, lb, ub = problem(N)
    t = time.perf_counter()
    solver = B.make_casadi_chain_solver(N, TOL, options)
    build = time.perf_counter() - t
    t = time.perf_counter()
    sol = solver(x0=z0, lbx=lb, ubx=ub, lbg=0.0, ubg=0.0)
    solve = time.perf_counter() - t
    st = solver.stats()
    cb = sum(v for k, v in st.items() if k.startswith("t_wall_nlp_"))
    return {"f": float(sol["f"]), "iters": st["iter_count"], "build": build, "solve": solve,
            "callbacks": cb, "status": st["return_status"], "x": np.array(sol["x"]).ravel()}


def hessian_times(N: int, dense_limit: int) -> dict:
    f, g, z0, _, _ = problem(N)

    def lag(z, sigma, lam):
        return sigma * f(z) + np.dot(lam, g(z))

    tape = tapejit.record(lag, z0, 1.0, np.ones(N), argnums=0)
    params = np.concatenate([[1.0], np.random.default_rng(0).uniform(0.5, 1.5, N)])
    t = time.perf_counter()
    pattern = tape.hessian_sparsity()
    t_pattern = time.perf_counter() - t
    t = time.perf_counter()
    star = _colouring.star_colouring(pattern)
    t_colour = time.perf_counter() - t
    d2 = _colouring.distance2_colouring(pattern)
    band = []
    for _ in range(30):
        t = time.perf_counter()
        banded = _colouring.banded_colouring(pattern)
        band.append(time.perf_counter() - t)
    tape.hessian(z0, params, sparse=True)  # the colouring, kept
    reps = []
    for _ in range(30):
        t = time.perf_counter()
        tape.hessian(z0, params, sparse=True)
        reps.append(time.perf_counter() - t)
    out = {"pattern": t_pattern, "colouring": t_colour, "star": int(star.max()) + 1,
           "d2": int(d2.max()) + 1, "sparse": min(reps), "nnz": pattern.nnz,
           "banded": None if banded is None else (int(banded.max()) + 1, min(band))}
    if 2 * N + 2 <= dense_limit:
        t = time.perf_counter()
        tape.hessian(z0, params)
        out["dense"] = time.perf_counter() - t
    return out


def casadi_hessian_time(N: int) -> tuple[float, float]:
    """Seconds of one call of CasADi's SX function of the Lagrangian's Hessian from Python
    (numpy in, sparse DM out), and of building it."""
    _, _, z0, _, _ = problem(N)
    t = time.perf_counter()
    fn = B.make_casadi_chain_hessian(N)
    build = time.perf_counter() - t
    lam0 = np.random.default_rng(0).uniform(0.5, 1.5, N)
    fn(z0, 1.0, lam0)
    reps = []
    for _ in range(30):
        t = time.perf_counter()
        fn(z0, 1.0, lam0)
        reps.append(time.perf_counter() - t)
    return min(reps), build


def _with_casadi_ipopt() -> None:
    """Run this script again with CasADi's IPOPT library preloaded, unless it already is:
    cyipopt's calls into IPOPT then resolve to that library's functions."""
    import casadi

    lib = os.path.join(os.path.dirname(casadi.__file__), "libipopt.so.3")
    if not os.path.exists(lib):
        sys.exit(f"--casadi-ipopt: {lib} not found (CasADi's wheels for Linux ship it)")
    preload = os.environ.get("LD_PRELOAD", "")
    if lib in preload.split(":"):
        print(f"(IPOPT preloaded from {lib})")
        return
    os.environ["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[500, 2000, 5000])
    ap.add_argument("--casadi-all", action="store_true", help="CasADi also above N = 2000")
    ap.add_argument("--dense-limit", type=int, default=10010,
                    help="time the dense Hessian up to this many variables")
    ap.add_argument("--ipopt", action="append", default=[], metavar="NAME=VALUE",
                    help="an IPOPT option for both solvers (repeatable), e.g. "
                         "mumps_permuting_scaling=0")
    ap.add_argument("--casadi-ipopt", action="store_true",
                    help="run with CasADi's IPOPT library preloaded (Linux), for both solvers")
    opts = ap.parse_args()
    if opts.casadi_ipopt:
        _with_casadi_ipopt()
    options = {}
    for item in opts.ipopt:
        name, _, value = item.partition("=")
        options[name] = int(value) if value.lstrip("-").isdigit() else value
    try:
        import casadi  # noqa: F401
        have_casadi = True
    except ImportError:
        have_casadi = False
    t = time.perf_counter()
    # long enough that its sweeps take the kernels of the larger chains (the
    # point-by-point twins of a tape of blocks: docs' performance page)
    solve_tapejit(WARM_UP_N, options)
    print(f"(first solve in this process, N = {WARM_UP_N}, loading tapejit's kernels: "
          f"{(time.perf_counter() - t) * 1e3:.0f} ms; not in the times below)")
    for N in opts.sizes:
        print(f"== hanging chain N = {N}: {2 * N + 2} variables, {N} constraints")
        h = hessian_times(N, opts.dense_limit)
        line = (f"   Lagrangian Hessian: pattern {h['pattern'] * 1e3:.1f} ms ({h['nnz']} nnz), "
                f"star colouring {h['star']} colours in {h['colouring'] * 1e3:.1f} ms "
                f"(greedy distance-2: {h['d2']}), sparse evaluation "
                f"{h['sparse'] * 1e3:.3f} ms")
        if "dense" in h:
            line += f", dense {h['dense'] * 1e3:.1f} ms ({h['dense'] / h['sparse']:.0f}x)"
        print(line)
        if h["banded"] is not None:
            k, tb = h["banded"]
            print(f"   the tape's colouring (banded, j mod {k}): {tb * 1e6:.1f} us, "
                  f"{tb / h['sparse']:.1%} of one sparse evaluation")
        if have_casadi:
            call, build = casadi_hessian_time(N)
            print(f"   CasADi SX hessian function from Python: {call * 1e3:.3f} ms per call "
                  f"(built in {build * 1e3:.0f} ms)")
        tj = solve_tapejit(N, options)
        print(f"   tapejit ipopt: f = {tj['f']:.10f}, {tj['iters']} iterations, "
              f"{tj['total'] * 1e3:.1f} ms total (recording included), "
              f"{tj['callbacks'] * 1e3:.1f} ms in derivative callbacks; {tj['status']}")
        if have_casadi and (N <= 2000 or opts.casadi_all):
            cs = solve_casadi(N, options)
            print(f"   casadi nlpsol: f = {cs['f']:.10f}, {cs['iters']} iterations, build "
                  f"{cs['build'] * 1e3:.1f} ms + solve {cs['solve'] * 1e3:.1f} ms, "
                  f"t_wall_nlp_* {cs['callbacks'] * 1e3:.1f} ms; {cs['status']}")
            print(f"   max |x_tapejit - x_casadi| = {np.abs(tj['x'] - cs['x']).max():.2e}, "
                  f"total time ratio {tj['total'] / (cs['build'] + cs['solve']):.2f}")


if __name__ == "__main__":
    main()
