#!/usr/bin/env python
"""Side-by-side timings of tapejit against hand-written Numba and peer AD tools.

Usage::

    python asv_bench/compare_peers.py [--quick] [--only ROWS] [--out FILE.md] [--rst FILE.rst]

``--out`` writes the report as markdown; ``--rst`` writes it as a reStructuredText
fragment (machine, command, date, a ``list-table`` and the notes) for the
documentation, which includes ``docs/_include/performance_table.rst``.

Everything runs in ONE process so all implementations see the same machine
state.  Each timing is the median (and min) per-call time over
``timeit.Timer.repeat`` runs, with ``number`` chosen by an autorange loop; one
warm-up call (JIT compilation, tracing) is made first and is excluded.

Conventions (they favour the peers, never tapejit):

* JAX: inputs are placed on the device once (``jax.device_put``) outside the
  timed region, outputs are left as JAX arrays, and every call ends with
  ``jax.block_until_ready``.  The sinfit GD loop converts the gradient with
  ``float(g)`` each step (a Python-level loop must).
* CasADi: ``casadi.Function`` built from SX expressions, called with numpy
  input; outputs left as ``DM``.  sinfit data converted to ``DM`` once.
* autograd: numpy in, numpy out.
* ratio columns are ``tapejit time / peer time``: < 1 means tapejit is faster.
* the linear-algebra rows of issue 19 (logistic regression, MLP, Gaussian-process
  likelihood, many points with shared data, 3x3 solves) put the gradient written by
  hand in the "hand numba" column: numpy/scipy, or ``@njit`` for the 3x3 solves.
  The issue's targets assume one BLAS thread (``OPENBLAS_NUM_THREADS=1``).

tapejit rows tolerate missing tapejit features: any exception is reported as
``n/a: <reason>`` and the script carries on.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time
import timeit
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # -> `benchmarks` package (baselines live there)

import numba  # noqa: E402
import numpy as np  # noqa: E402
from benchmarks import _baselines as B  # noqa: E402
from benchmarks import _baselines_linalg as L  # noqa: E402
from benchmarks import import_tapejit  # noqa: E402

tapejit, TAPEJIT_IMPORT_ERROR = import_tapejit()

PEERS = ["hand numba", "jax", "casadi", "autograd"]


class NA(Exception):
    """A row entry that is not available (message is the reason)."""


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


class Timing:
    def __init__(self, median, best, number, repeat):
        self.median = median
        self.best = best
        self.number = number
        self.repeat = repeat


def measure(fn, *, quick, min_time=None, budget=None, warmup=True):
    """Median/min seconds per call of ``fn()``; warm-up call excluded."""
    if warmup:
        fn()
    min_time = min_time if min_time is not None else (0.05 if quick else 0.2)
    budget = budget if budget is not None else (2.0 if quick else 10.0)
    repeat = 3 if quick else 7
    timer = timeit.Timer(fn)
    # autorange with a configurable target (timeit.Timer.autorange uses 0.2 s)
    number = 1
    while True:
        t = timer.timeit(number)
        if t >= min_time:
            break
        number = number * 10 if t < min_time / 20 else number * 2
    per_call = t / number
    repeat = max(1, min(repeat, int(budget / max(t, 1e-12))))
    runs = [x / number for x in timer.repeat(repeat=repeat, number=number)]
    runs.append(per_call)  # the autorange run is a valid sample too
    return Timing(statistics.median(runs), min(runs), number, len(runs))


def paired_ratio(fa, na, fb, nb, *, rounds, pause=0.2):
    """Median over ``rounds`` of time(``fa``) / time(``fb``), the two measured back to
    back (``na``, ``nb`` calls each, their order alternating between rounds, a pause
    before each). Both see the same machine state, so the ratio does not move with it
    as much as a ratio of separately measured medians does on a noisy machine; the
    pause lets threads that a call left spinning (OpenMP's) go idle first."""
    ratios = []
    for r in range(rounds):
        t = {}
        for key, fn, n in ((("a", fa, na), ("b", fb, nb)) if r % 2 == 0
                           else (("b", fb, nb), ("a", fa, na))):
            time.sleep(pause)
            t[key] = timeit.Timer(fn).timeit(n) / n
        ratios.append(t["a"] / t["b"])
    return statistics.median(ratios)


def pair_rows(quick):
    """``Row.paired`` for every row with both a tapejit and a hand numba timing."""
    for row in ROWS:
        if "tapejit" in row.calls and "hand numba" in row.calls:
            (fa, na), (fb, nb) = row.calls["tapejit"], row.calls["hand numba"]
            row.paired = paired_ratio(fa, na, fb, nb, rounds=5 if quick else 15)
            print(f"  {row.name:<40s} interleaved tapejit / hand numba {row.paired:.3g}",
                  flush=True)
        row.calls.clear()


def fmt_time(sec):
    if sec is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if sec >= scale:
            return f"{sec / scale:.3g} {unit}"
    return f"{sec / 1e-9:.3g} ns"


def short_reason(exc):
    msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, NA) else str(exc)
    msg = " ".join(msg.split())
    return msg if len(msg) <= 90 else msg[:87] + "..."


# ---------------------------------------------------------------------------
# result collection
# ---------------------------------------------------------------------------


class Row:
    def __init__(self, name):
        self.name = name
        self.cells = {}  # impl -> Timing | str (n/a reason) | None (not applicable)
        self.notes = []
        self.calls = {}  # impl -> (callable, calls per timing) of the measured cells
        self.paired = None  # interleaved tapejit / hand numba ratio (see paired_ratio)


ROWS = []
WARNINGS = []


def run_cell(row, impl, make, *, quick, check=None, **kw):
    """``make()`` builds the callable (untimed; may do recording/compiling).

    ``check(result)`` may raise or return a string describing a mismatch. A peer left
    out by ``--no-peers`` is not run.
    """
    if impl != "tapejit" and impl not in PEERS:
        return
    try:
        fn = make()
        if fn is None:
            raise NA("not installed")
        res = fn()  # warm-up (compile/trace), also used for the check
        if check is not None:
            msg = check(res)
            if msg:
                WARNINGS.append(f"{row.name} / {impl}: result mismatch: {msg}")
        row.cells[impl] = measure(fn, quick=quick, warmup=False, **kw)
        row.calls[impl] = (fn, row.cells[impl].number)
    except Exception as exc:
        row.cells[impl] = "n/a: " + short_reason(exc)
        if os.environ.get("COMPARE_PEERS_TRACEBACK"):
            traceback.print_exc()
    cell = row.cells[impl]
    shown = fmt_time(cell.median) if isinstance(cell, Timing) else cell
    print(f"  {row.name:<40s} {impl:<22s} {shown}", flush=True)


def close(a, b, rtol=1e-9, atol=1e-12):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if not np.allclose(a, b, rtol=rtol, atol=atol):
        err = np.max(np.abs(a - b) / (atol + np.abs(b)))
        return f"max rel err {err:.2e}"
    return None


def check_vg(v_ref, g_ref, rtol=1e-9):
    def check(res):
        v, g = res
        return close(v, v_ref, rtol) or close(g, g_ref, rtol)

    return check


def need_tapejit(*attrs):
    if tapejit is None:
        raise NA("tapejit not importable (see header)")
    for a in attrs:
        if not hasattr(tapejit, a):
            raise NA(f"tapejit.{a} missing")


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------


def bench_seed_batch(quick, n):
    row = Row(f"seed value_and_grad, {n:.0e} points")
    ROWS.append(row)
    X = B.seed_points(n)
    Y = np.empty(n)
    G = np.empty((n, 2))
    B.seed_vg_batch(X, Y, G)
    Yref, Gref = Y.copy(), G.copy()

    def tj():
        need_tapejit("record")
        tape = tapejit.record(B.seed_f, 1.0, 2.0)
        y = np.empty(n)
        g = np.empty((n, 2))
        return lambda: tape.value_and_grad(X, out=(y, g))

    run_cell(row, "tapejit", tj, quick=quick, check=check_vg(Yref, Gref))

    def nb():
        y = np.empty(n)
        g = np.empty((n, 2))

        def f():
            B.seed_vg_batch(X, y, g)
            return y, g

        return f

    run_cell(row, "hand numba", nb, quick=quick, check=check_vg(Yref, Gref))

    def jx():
        f = B.make_jax_seed_batch()
        if f is None:
            return None
        Xj = B.jax_put(X)
        return lambda: f(Xj)

    run_cell(row, "jax", jx, quick=quick, check=check_vg(Yref, Gref))
    row.cells["casadi"] = None

    def ag():
        f = B.make_autograd_seed_batch()
        return None if f is None else (lambda: f(X))

    run_cell(row, "autograd", ag, quick=quick, check=check_vg(Yref, Gref))
    row.notes.append(f"hand numba is `parallel=True` over {numba.get_num_threads()} threads")


def bench_seed_point(quick):
    row = Row("seed value_and_grad, 1 point (out=)")
    ROWS.append(row)
    x = B.seed_points(1)[0]
    vref, gref = B.seed_vg_point(x)

    def tj():
        need_tapejit("record")
        tape = tapejit.record(B.seed_f, 1.0, 2.0)
        vb = np.empty(())
        gb = np.empty(2)
        return lambda: tape.value_and_grad(x, out=(vb, gb))

    run_cell(row, "tapejit", tj, quick=quick, check=check_vg(vref, gref))

    def nb():
        g = np.empty(2)
        return lambda: (B.seed_vg_point_out(x, g), g)

    run_cell(row, "hand numba", nb, quick=quick, check=check_vg(vref, gref))

    def jx():
        f = B.make_jax_seed_point()
        if f is None:
            return None
        xj = B.jax_put(x)
        return lambda: f(xj)

    run_cell(row, "jax", jx, quick=quick, check=check_vg(vref, gref))

    def ca():
        F = B.make_casadi_seed()
        return None if F is None else (lambda: F(x))

    run_cell(
        row,
        "casadi",
        ca,
        quick=quick,
        check=lambda r: check_vg(vref, gref)((float(r[0]), np.array(r[1]).ravel())),
    )
    row.cells["autograd"] = None


def bench_rosen2(quick):
    x = B.rosen2_point()
    vref, gref = B.rosen2_vg(x)

    # --- preallocated output ---------------------------------------------
    row = Row("rosen2 value_and_grad, 1 point (out=)")
    ROWS.append(row)

    def tj_out():
        need_tapejit("record")
        tape = tapejit.record(B.rosen2_f, x.copy())
        vb = np.empty(())
        gb = np.empty(2)
        return lambda: tape.value_and_grad(x, out=(vb, gb))

    run_cell(row, "tapejit", tj_out, quick=quick, check=check_vg(vref, gref))

    def nb_out():
        g = np.empty(2)
        return lambda: (B.rosen2_vg_out(x, g), g)

    run_cell(row, "hand numba", nb_out, quick=quick, check=check_vg(vref, gref))
    _rosen2_peers(row, x, vref, gref, quick)

    # --- allocating --------------------------------------------------------
    row = Row("rosen2 value_and_grad, 1 point (alloc)")
    ROWS.append(row)

    def tj():
        need_tapejit("record")
        tape = tapejit.record(B.rosen2_f, x.copy())
        return lambda: tape.value_and_grad(x)

    run_cell(row, "tapejit", tj, quick=quick, check=check_vg(vref, gref))
    run_cell(
        row, "hand numba", lambda: lambda: B.rosen2_vg(x), quick=quick, check=check_vg(vref, gref)
    )
    _rosen2_peers(row, x, vref, gref, quick)
    row.notes.append("peers are the same calls as in the out= row")


def _rosen2_peers(row, x, vref, gref, quick):
    def jx():
        f = B.make_jax_rosen2()
        if f is None:
            return None
        xj = B.jax_put(x)
        return lambda: f(xj)

    run_cell(row, "jax", jx, quick=quick, check=check_vg(vref, gref))

    def ca():
        F = B.make_casadi_rosen2()
        return None if F is None else (lambda: F(x))

    run_cell(
        row,
        "casadi",
        ca,
        quick=quick,
        check=lambda r: check_vg(vref, gref)((float(r[0]), np.array(r[1]).ravel())),
    )

    def ag():
        f = B.make_autograd_rosen2()
        return None if f is None else (lambda: f(x))

    run_cell(row, "autograd", ag, quick=quick, check=check_vg(vref, gref))


def bench_rosen_ext(quick, n):
    row = Row(f"rosen_ext value_and_grad, n={n:.0e}")
    ROWS.append(row)
    x = B.rosen_ext_point(n)
    vref, gref = B.rosen_ext_vg(x)

    def tj():
        need_tapejit("record")
        tape = tapejit.record(B.rosen_ext_f, np.ones(n))
        vb = np.empty(())
        gb = np.empty(n)
        return lambda: tape.value_and_grad(x, out=(vb, gb))

    run_cell(row, "tapejit", tj, quick=quick, check=check_vg(vref, gref, 1e-8))

    def nb():
        g = np.empty(n)
        return lambda: (B.rosen_ext_vg_out(x, g), g)

    run_cell(row, "hand numba", nb, quick=quick, check=check_vg(vref, gref, 1e-8))

    def jx():
        f = B.make_jax_rosen_ext()
        if f is None:
            return None
        xj = B.jax_put(x)
        return lambda: f(xj)

    run_cell(row, "jax", jx, quick=quick, check=check_vg(vref, gref, 1e-8))

    def ca():
        F = B.make_casadi_rosen_ext(n)
        return None if F is None else (lambda: F(x))

    run_cell(
        row,
        "casadi",
        ca,
        quick=quick,
        check=lambda r: check_vg(vref, gref, 1e-8)((float(r[0]), np.array(r[1]).ravel())),
    )

    def ag():
        f = B.make_autograd_rosen_ext()
        return None if f is None else (lambda: f(x))

    run_cell(row, "autograd", ag, quick=quick, check=check_vg(vref, gref, 1e-8))
    row.notes.append("tapejit uses out=; hand numba writes into a preallocated grad")


def bench_lorenz(quick):
    """The Lorenz fit of issue #22 (2000 RK4 steps, 3 parameters), unrolled: one point,
    and 1000 points (per point)."""
    p = np.asarray(B.LORENZ_P)
    ref_tape = None
    row = Row("lorenz fit value_and_grad, 1 point (2000 RK4 steps)")
    ROWS.append(row)

    def tj():
        nonlocal ref_tape
        need_tapejit("record")
        ref_tape = _record_noted(row, B.lorenz_f, p.copy())
        g = np.empty(3)
        return lambda: ref_tape.value_and_grad(p, out=(None, g))

    run_cell(row, "tapejit", tj, quick=quick)

    def check(r):  # the peers against tapejit's value and gradient (when it ran)
        if ref_tape is not None:
            v, g = ref_tape.value_and_grad(p)
            return check_vg(v, g, 1e-8)((float(r[0]), np.array(r[1], dtype=float).ravel()))
        return None

    def ca():
        F = B.make_casadi_lorenz()
        return None if F is None else (lambda: F(p))

    run_cell(row, "casadi", ca, quick=quick, check=check)

    def jx():
        f = B.make_jax_lorenz()
        if f is None:
            return None
        pj = B.jax_put(p)
        return lambda: f(pj)

    run_cell(row, "jax", jx, quick=quick, check=check)
    row.notes.append("casadi: SX of the unrolled loop, Function of value and gradient; "
                     "jax: jit(value_and_grad) with the steps in lax.fori_loop")

    n = 1000
    P = B.lorenz_points(n)
    row = Row(f"lorenz fit value_and_grad, {n} points")
    ROWS.append(row)

    def tjn():
        need_tapejit("record")
        tape = ref_tape or tapejit.record(B.lorenz_f, p.copy())
        return lambda: tape.value_and_grad(P)

    run_cell(row, "tapejit", tjn, quick=quick)

    def can():
        F = B.make_casadi_lorenz()
        return None if F is None else (lambda: F.map(n)(P.T))

    run_cell(row, "casadi", can, quick=quick)

    def jxn():
        jax = B._jax()
        f = B.make_jax_lorenz()
        if f is None or jax is None:
            return None
        fn = jax.jit(jax.vmap(jax.value_and_grad(B.lorenz_jax_f)))
        Pj = B.jax_put(P)
        return lambda: jax.block_until_ready(fn(Pj))

    run_cell(row, "jax", jxn, quick=quick)
    row.notes.append("casadi: Function.map over the points; jax: jit(vmap(value_and_grad))")
    bench_lorenz_scan(quick, p, P)


def bench_lorenz_scan(quick, p, P):
    """The same fit with its steps in ``tapejit.scan`` (a loop recorded once) beside the
    same peers: one point and 1000 points."""
    for label, x in (("1 point", p), (f"{len(P)} points", P)):
        row = Row(f"lorenz fit with scan value_and_grad, {label}")
        ROWS.append(row)

        def tj(x=x, row=row):
            need_tapejit("record")
            tape = _record_noted(row, B.lorenz_scan_f, p.copy())
            if x.ndim == 1:
                g = np.empty(3)
                return lambda: tape.value_and_grad(x, out=(None, g))
            return lambda: tape.value_and_grad(x)

        run_cell(row, "tapejit", tj, quick=quick)

        def ca(x=x):
            F = B.make_casadi_lorenz()
            if F is None:
                return None
            return (lambda: F(x)) if x.ndim == 1 else (lambda: F.map(len(x))(x.T))

        run_cell(row, "casadi", ca, quick=quick)

        def jx(x=x):
            jax = B._jax()
            f = B.make_jax_lorenz()
            if f is None or jax is None:
                return None
            if x.ndim == 1:
                pj = B.jax_put(x)
                return lambda: f(pj)
            fn = jax.jit(jax.vmap(jax.value_and_grad(B.lorenz_jax_f)))
            xj = B.jax_put(x)
            return lambda: jax.block_until_ready(fn(xj))

        run_cell(row, "jax", jx, quick=quick)
        row.notes.append("tapejit: tapejit.scan over the steps (the body recorded once); "
                         "casadi and jax as in the unrolled rows")


def bench_chain(quick, n_hess, n_solve):
    """The hanging chain of issue #23: its Lagrangian's sparse Hessian beside CasADi's SX
    Hessian function, and the whole solve with IPOPT (recording or building included)
    beside CasADi's nlpsol."""
    energy, links, z0, lb, ub = B.hanging_chain(n_hess)
    lam = np.random.default_rng(0).uniform(0.5, 1.5, n_hess)
    row = Row(f"hanging chain Lagrangian Hessian, sparse, N={n_hess}")
    ROWS.append(row)
    ref = None

    def tj():
        nonlocal ref
        need_tapejit("record")

        def lagrangian(z, sigma, lam):
            return sigma * energy(z) + np.dot(lam, links(z))

        tape = tapejit.record(lagrangian, z0, 1.0, lam, argnums=0)
        params = np.concatenate([[1.0], lam])
        ref = tape.hessian(z0, params, sparse=True)
        return lambda: tape.hessian(z0, params, sparse=True)

    run_cell(row, "tapejit", tj, quick=quick)

    def check(r):  # CasADi's Hessian against tapejit's (when it ran)
        if ref is None:
            return None
        err = abs(r.sparse() - ref).max()
        return None if err <= 1e-9 * abs(ref).max() else f"max abs difference {err:.2e}"

    def ca():
        F = B.make_casadi_chain_hessian(n_hess)
        return None if F is None else (lambda: F(z0, 1.0, lam))

    run_cell(row, "casadi", ca, quick=quick, check=check)
    row.notes.append("casadi: SX Function of the full symmetric Hessian, numpy in, sparse "
                     "DM out; tapejit: csr_array from a 3-colour star colouring")

    energy, links, z0, lb, ub = B.hanging_chain(n_solve)
    options = {"mumps_permuting_scaling": 0}
    tol = 1e-8
    row = Row(f"hanging chain solve with IPOPT, N={n_solve} (recording included)")
    ROWS.append(row)
    fun = None

    def tjs():
        nonlocal fun
        need_tapejit("optimize")
        from scipy.optimize import Bounds

        from tapejit.optimize import ipopt

        def solve():
            return ipopt(energy, z0, constraints={"type": "eq", "fun": links},
                         bounds=Bounds(lb, ub), tol=tol, options=options)

        fun = solve().fun
        return solve

    run_cell(row, "tapejit", tjs, quick=quick)

    def cas():
        if B.casadi_chain(n_solve) is None:
            return None

        def solve():  # built anew each call: build plus solve
            S = B.make_casadi_chain_solver(n_solve, tol, options)
            return S(x0=z0, lbx=lb, ubx=ub, lbg=0.0, ubg=0.0)

        return solve

    run_cell(row, "casadi", cas, quick=quick,
             check=lambda r: None if fun is None else close(float(r["f"]), fun, 1e-8))
    row.notes.append("IPOPT with mumps_permuting_scaling=0 for both (its default costs "
                     "minutes on long chains); tapejit: cyipopt-wheels' IPOPT 3.14.11, "
                     "casadi: its own 3.14.19")


def bench_record(quick, n):
    row = Row(f"record rosen_ext, n={n:.0e}")
    ROWS.append(row)
    x = np.ones(n)

    def tj():
        need_tapejit("record")
        tapejit.record(B.rosen_ext_f, np.ones(10))  # warm-up on a tiny input
        tape = tapejit.record(B.rosen_ext_f, x)
        row.notes.append(f"tape length {len(tape)} instructions")
        return lambda: tapejit.record(B.rosen_ext_f, x)

    # warm-up happened on n=10 above; time the big recording directly
    try:
        fn = tj()
        row.cells["tapejit"] = measure(fn, quick=quick, warmup=False, budget=5.0 if quick else 20.0)
    except Exception as exc:
        row.cells["tapejit"] = "n/a: " + short_reason(exc)
    for p in PEERS:
        row.cells[p] = None
    cell = row.cells["tapejit"]
    print(
        f"  {row.name:<40s} {'tapejit':<22s} "
        f"{fmt_time(cell.median) if isinstance(cell, Timing) else cell}",
        flush=True,
    )


def bench_sinfit(quick):
    row = Row(f"sinfit {B.SINFIT_STEPS} GD steps")
    ROWS.append(row)
    xs, ys = B.sinfit_data()
    wref, vref = B.sinfit_gd(B.SINFIT_W0, xs, ys, B.SINFIT_LR, B.SINFIT_STEPS)

    def check(res):
        return close(res[0], wref, 1e-9) or close(res[1], vref, 1e-9)

    def tj():
        need_tapejit("record")
        errors = []
        tape = None
        for f in (B.sinfit_f, B.sinfit_f_sum):
            try:
                tape = tapejit.record(f, B.SINFIT_W0, xs, ys, argnums=(0,))
                break
            except Exception as exc:
                errors.append(f"{f.__name__}: {short_reason(exc)}")
        if tape is None:
            raise NA("record failed: " + "; ".join(errors))
        if errors:
            row.notes.append("tapejit: np.mean form failed, used sum/n form")
        params = np.concatenate([xs, ys])
        if getattr(tape, "n_params", len(params)) != len(params):
            raise NA(f"tape.n_params={tape.n_params}, expected {len(params)}")
        lr = B.SINFIT_LR
        steps = B.SINFIT_STEPS

        def gd():
            w = np.array([B.SINFIT_W0])
            vb = np.empty(())
            gb = np.empty(1)
            for _ in range(steps):
                tape.value_and_grad(w, params=params, out=(vb, gb))
                w -= lr * gb
            return float(w[0]), float(vb)

        return gd

    run_cell(row, "tapejit", tj, quick=quick, check=check)
    run_cell(
        row,
        "hand numba",
        lambda: lambda: B.sinfit_gd(B.SINFIT_W0, xs, ys, B.SINFIT_LR, B.SINFIT_STEPS),
        quick=quick,
        check=check,
    )
    run_cell(row, "jax", lambda: B.make_jax_sinfit_gd(xs, ys), quick=quick, check=check)
    run_cell(row, "casadi", lambda: B.make_casadi_sinfit_gd(xs, ys), quick=quick, check=check)
    run_cell(row, "autograd", lambda: B.make_autograd_sinfit_gd(xs, ys), quick=quick, check=check)
    row.notes.append(
        "hand numba = whole loop jitted; tapejit/jax/casadi/autograd = Python loop, "
        "one value_and_grad call per step (tapejit: params=concat(x, y), out=)"
    )


# ---------------------------------------------------------------------------
# linear-algebra workloads (issue 19); the "hand numba" column holds the
# hand-written gradient, numpy/scipy unless the row's note says @njit
# ---------------------------------------------------------------------------


def _record_noted(row, f, *args, **kw):
    """``tapejit.record`` with its time and tape length added to the row's notes."""
    need_tapejit("record")
    t0 = time.perf_counter()
    tape = tapejit.record(f, *args, **kw)
    row.notes.append(f"tapejit: recorded in {fmt_time(time.perf_counter() - t0)}, "
                     f"{len(tape)} instructions")
    return tape


def _data_fit_row(row, quick, f, theta, data, hand_vg, make_jax, rtol):
    """One point: tapejit with ``data`` as its params, the hand gradient, and JAX."""
    vref, gref = hand_vg(theta, *data)
    check = check_vg(vref, gref, rtol)

    def tj():
        tape = _record_noted(row, f, theta, *data, argnums=(0,))
        params = np.concatenate([np.ravel(d) for d in data])
        return lambda: tape.value_and_grad(theta, params=params)

    run_cell(row, "tapejit", tj, quick=quick, check=check)
    run_cell(row, "hand numba", lambda: lambda: hand_vg(theta, *data), quick=quick, check=check)

    def jx():
        fn = make_jax()
        if fn is None:
            return None
        args = [B.jax_put(a) for a in (theta, *data)]
        return lambda: fn(*args)

    run_cell(row, "jax", jx, quick=quick, check=check)
    row.cells["casadi"] = row.cells["autograd"] = None


def bench_logreg(quick, m, k):
    row = Row(f"logreg value_and_grad, X {m}x{k}")
    ROWS.append(row)
    w, X, y = L.logreg_data(m, k)
    _data_fit_row(row, quick, L.logreg_f, w, (X, y), L.logreg_vg, L.make_jax_logreg, 1e-9)
    row.notes.append("hand: numpy, `X.T @ (sigmoid(X w) - y) / m + lam w`; "
                     "tapejit: params = concat(X.ravel(), y)")


def bench_mlp(quick):
    row = Row(f"MLP {L.MLP_IN}-{L.MLP_HIDDEN}-1 value_and_grad, {L.MLP_SAMPLES} samples")
    ROWS.append(row)
    theta, X, t = L.mlp_data()
    _data_fit_row(row, quick, L.mlp_f, theta, (X, t), L.mlp_vg, L.make_jax_mlp, 1e-9)
    row.notes.append(f"{L.MLP_N_WEIGHTS} weights in one flat vector; hand: numpy backprop")


def bench_gp(quick, n):
    row = Row(f"GP neg. log marginal likelihood, n={n}")
    ROWS.append(row)
    theta, x, y = L.gp_data(n)
    _data_fit_row(row, quick, L.gp_nlml_f, theta, (x, y), L.gp_nlml_vg, L.make_jax_gp, 1e-7)
    row.notes.append("gradient in 3 hyperparameters; hand: scipy cho_factor/cho_solve, "
                     "`0.5 tr((K^-1 - a a^T) dK)`")


def bench_logreg_many(quick, n, m, k):
    row = Row(f"logreg value_and_grad, {n} points, X {m}x{k}")
    ROWS.append(row)
    _, X, y = L.logreg_data(m, k)
    W = L.logreg_many_points(n, k)
    vref, gref = L.logreg_many_vg(W, X, y)
    check = check_vg(vref, gref)

    def tj():
        tape = _record_noted(row, L.logreg_f, W[0], X, y, argnums=(0,))
        params = np.concatenate([X.ravel(), y])
        return lambda: tape.value_and_grad(W, params=params)

    run_cell(row, "tapejit", tj, quick=quick, check=check)
    run_cell(row, "hand numba", lambda: lambda: L.logreg_many_vg(W, X, y), quick=quick,
             check=check)

    def jx():
        fn = L.make_jax_logreg_many()
        if fn is None:
            return None
        args = [B.jax_put(a) for a in (W, X, y)]
        return lambda: fn(*args)

    run_cell(row, "jax", jx, quick=quick, check=check)
    row.cells["casadi"] = row.cells["autograd"] = None
    row.notes.append("data shared by all points (tapejit: one params row); hand: numpy, "
                     "one `W @ X.T` and one `@ X` for all points; jax: vmap over W")


def bench_solve3(quick, n):
    row = Row(f"3x3 solve value_and_grad, {n:.0e} points")
    ROWS.append(row)
    P = L.solve3_points(n)
    vref, gref = L.solve3_vg_reference(P)
    check = check_vg(vref, gref)

    def tj():
        tape = _record_noted(row, L.solve3_f, P[0])
        v = np.empty(n)
        g = np.empty((n, 12))
        return lambda: tape.value_and_grad(P, out=(v, g))

    run_cell(row, "tapejit", tj, quick=quick, check=check)

    def nb():
        v = np.empty(n)
        g = np.empty((n, 12))

        def f():
            L.solve3_vg_batch(P, v, g)
            return v, g

        return f

    run_cell(row, "hand numba", nb, quick=quick, check=check)

    def jx():
        fn = L.make_jax_solve3()
        if fn is None:
            return None
        Pj = B.jax_put(P)
        return lambda: fn(Pj)

    run_cell(row, "jax", jx, quick=quick, check=check)
    row.cells["casadi"] = row.cells["autograd"] = None
    row.notes.append("`sum(solve(A, b)**2)`, A and b from 12 inputs per point; hand numba: "
                     f"cofactor inverse and hand adjoint, `parallel=True` over "
                     f"{numba.get_num_threads()} threads; checked against batched "
                     "`np.linalg.solve`")


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def machine_info():
    lines = []
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = "?"
    lines.append(f"- python {platform.python_version()} on {platform.platform()}")
    lines.append(
        f"- cpu: {platform.processor() or platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}, usable={affinity}"
    )
    try:
        layer = numba.threading_layer()
    except Exception:
        layer = "not yet chosen"
    lines.append(
        f"- numba {numba.__version__}: NUMBA_NUM_THREADS="
        f"{numba.config.NUMBA_NUM_THREADS}, get_num_threads()="
        f"{numba.get_num_threads()}, threading layer={layer} (hand numba's prange; "
        "tapejit uses its own threads)"
    )
    vers = [f"numpy {np.__version__}"]
    for mod in ("jax", "jaxlib", "casadi", "autograd"):
        try:
            m = __import__(mod)
        except Exception:
            vers.append(f"{mod} not installed")
            continue
        try:
            ver = importlib.metadata.version(mod)
        except Exception:
            ver = getattr(m, "__version__", "?")
        vers.append(f"{mod} {ver}")
    if tapejit is not None:
        vers.append(
            f"tapejit {getattr(tapejit, '__version__', '?')} ({Path(tapejit.__file__).parent})"
        )
    else:
        vers.append(f"tapejit not importable ({TAPEJIT_IMPORT_ERROR})")
    lines.append("- " + ", ".join(vers))
    try:
        import jax

        lines.append(f"- jax devices: {jax.devices()}, x64={jax.config.jax_enable_x64}")
    except Exception:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines.append(f"- load average (1/5/15 min) at start: {load}")
    except OSError:
        pass
    ob = os.environ.get("OPENBLAS_CORETYPE")
    lines.append(f"- OPENBLAS_CORETYPE: {'set to ' + repr(ob) if ob is not None else 'not set'}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "XLA_FLAGS"):
        if var in os.environ:
            lines.append(f"- {var}={os.environ[var]}")
    return lines


def ratio(t, p):
    if isinstance(t, Timing) and isinstance(p, Timing):
        return f"{t.median / p.median:.3g}"
    return "—"


def cell_text(c):
    if c is None:
        return "—"
    if isinstance(c, Timing):
        return fmt_time(c.median)
    return c


PAIRED = "tapejit / hand numba, interleaved"


def _cells(row, impls):
    t = row.cells.get("tapejit")
    return ([row.name] + [cell_text(row.cells.get(i)) for i in impls]
            + [ratio(t, row.cells.get(p)) for p in PEERS]
            + [f"{row.paired:.3g}" if row.paired is not None else "—"])


def table():
    impls = ["tapejit", *PEERS]
    head = ["workload"] + impls + [f"tapejit / {p}" for p in PEERS] + [PAIRED]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        out.append("| " + " | ".join(_cells(row, impls)) + " |")
    return out


def _rst_escape(text):
    """Text for a reStructuredText table cell or note: markdown ``code`` spans become
    inline literals, and everything else that reST would read as markup is escaped."""
    parts = re.split(r"`([^`]+)`", str(text))
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"``{part}``")
        else:
            part = re.sub(r"([\\*`|])", r"\\\1", part)
            out.append(re.sub(r"_(?=\W|$)", r"\\_", part))
    return "".join(out)


COMMON_NOTES = [
    "jax: inputs pre-placed on device, outputs left as jax arrays, "
    "block_until_ready per call; casadi: numpy in, DM out",
    f"{PAIRED}: median of 15 ratios (5 with --quick) of the two measured back to back "
    "(order alternating, 0.2 s pause before each), after the table's own timings",
]


#: Where the docs include the table from (``--rst``).
DOCS_TABLE = "docs/_include/performance_table.rst"
#: A parenthesized path of the machine that ran the script, as ``machine_info`` prints
#: tapejit's: useful on the console, noise (and a scratch path) in the published docs.
_LOCAL_PATH = re.compile(r" \((?:/|~|[A-Za-z]:[\\/])[^)]*\)")


def rst_command(args) -> str:
    """The command that regenerates the docs' table: the options that shape it, and
    ``--rst`` with the docs' path, but none that only writes another file of this
    machine (``--out``, ``--json``)."""
    parts = ["python asv_bench/compare_peers.py"]
    parts += ["--quick"] if args.quick else []
    parts += ["--no-peers"] if args.no_peers else []
    parts += [f"--only {args.only}"] if args.only else []
    return " ".join([*parts, "--rst", DOCS_TABLE])


def rst_report(rows, machine_lines, *, quick, seconds, command, date=None):
    """The report as a reStructuredText fragment, for ``.. include::`` in the docs.

    ``command`` is shown as the way to regenerate it (see :func:`rst_command`); the
    machine lines are shown without local paths.
    """
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine_lines = [_LOCAL_PATH.sub("", line) for line in machine_lines]
    impls = ["tapejit", *PEERS]
    head = ["workload", *impls] + [f"tapejit / {p}" for p in PEERS] + [PAIRED]
    out = [
        ".. This file is generated by asv_bench/compare_peers.py --rst; do not edit it by",
        "   hand. Regenerate it with the command below.",
        "",
        f"Generated on {date} by ``{command}`` (total wall time {seconds:.0f} s), on:",
        "",
        ".. code-block:: text",
        "",
        *[f"   {line[2:] if line.startswith('- ') else line}" for line in machine_lines],
        "",
        ".. list-table:: Median time per call"
        + (" (``--quick``)" if quick else "")
        + "; ratio = tapejit / peer (< 1: tapejit faster); warm-up excluded.",
        "   :header-rows: 1",
        "   :class: perf-table",  # docs/_static/tapejit.css: numbers on one line
        "",
    ]
    for cells in [head] + [_cells(row, impls) for row in rows]:
        out.append(f"   * - {_rst_escape(cells[0])}")
        out += [f"     - {_rst_escape(c)}" for c in cells[1:]]
    notes = [f"{r.name}: {n}" for r in rows for n in r.notes] + COMMON_NOTES
    out += ["", "Notes:", ""] + [f"- {_rst_escape(n)}" for n in notes]
    if WARNINGS:
        out += ["", ".. warning::", ""] + [f"   - {_rst_escape(w)}" for w in WARNINGS]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter autorange target")
    ap.add_argument("--out", metavar="FILE.md", help="also write the report here")
    ap.add_argument(
        "--rst",
        metavar="FILE.rst",
        help=f"also write the report as a reStructuredText fragment (for the docs: "
        f"{DOCS_TABLE})",
    )
    ap.add_argument("--json", metavar="FILE.json",
                    help="also write the median seconds per call of every cell and the "
                    "interleaved ratios as JSON (read by compare_commits.py)")
    ap.add_argument("--no-peers", action="store_true",
                    help="time tapejit and hand-written Numba only (skip jax, casadi, "
                    "autograd)")
    ap.add_argument("--only", metavar="ROWS",
                    help="comma-separated groups of rows to run, e.g. "
                    "logreg,mlp,gp,logreg_many,solve3,rosen_ext,lorenz,chain (default: all)")
    args = ap.parse_args(argv)
    if args.no_peers:
        PEERS[:] = ["hand numba"]
    quick = args.quick

    t0 = time.perf_counter()
    B.compile_all()  # hand-numba JIT (or cache load) outside any timing
    L.compile_all()
    B._jax()  # enables x64 before any jax array exists
    machine = machine_info()
    header = ["# tapejit vs peers", "", *machine, ""]
    print("\n".join(header), flush=True)
    print("running" + (" (--quick)" if quick else "") + " ...", flush=True)

    benches = {
        "seed_batch": lambda: bench_seed_batch(quick, 10**6),
        "seed_point": lambda: bench_seed_point(quick),
        "rosen2": lambda: bench_rosen2(quick),
        "rosen_ext": lambda: bench_rosen_ext(quick, 10**4),
        "record": lambda: bench_record(quick, 10**6),
        "lorenz": lambda: bench_lorenz(quick),
        "chain": lambda: bench_chain(quick, 5000, 500),
        "sinfit": lambda: bench_sinfit(quick),
        "logreg": lambda: (bench_logreg(quick, 10000, 100), bench_logreg(quick, 1000, 20)),
        "mlp": lambda: bench_mlp(quick),
        "gp": lambda: bench_gp(quick, 500),
        "logreg_many": lambda: bench_logreg_many(quick, 100 if quick else 1000, 2000, 50),
        "solve3": lambda: bench_solve3(quick, 10**5 if quick else 10**6),
        "pairs": lambda: pair_rows(quick),
    }
    only = args.only.split(",") if args.only else list(benches)
    unknown = sorted(set(only) - set(benches))
    if unknown:
        ap.error(f"--only: unknown rows {unknown}; choose from {sorted(benches)}")
    for name, bench in benches.items():
        if name in only:
            bench()

    lines = list(header)
    lines.append(
        f"median time per call{' (--quick)' if quick else ''}; "
        "ratio = tapejit / peer (< 1: tapejit faster); warm-up excluded."
    )
    lines.append("")
    lines += table()
    notes = [f"- {r.name}: {n}" for r in ROWS for n in r.notes]
    notes += [f"- {n}" for n in COMMON_NOTES]
    lines += ["", "Notes:", *notes]
    if WARNINGS:
        lines += ["", "**Warnings:**", *[f"- {w}" for w in WARNINGS]]
    seconds = time.perf_counter() - t0
    lines += ["", f"total wall time {seconds:.1f} s"]
    report = "\n".join(lines)
    print()
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
        print(f"\nwritten to {args.out}")
    if args.json:
        cells = {r.name: {"cells": {i: (c.median if isinstance(c, Timing) else None)
                                    for i, c in r.cells.items()},
                          "paired": r.paired} for r in ROWS}
        Path(args.json).write_text(json.dumps({"tapejit": getattr(tapejit, "__file__", None),
                                               "rows": cells}, indent=1) + "\n")
    if args.rst:
        Path(args.rst).parent.mkdir(parents=True, exist_ok=True)
        Path(args.rst).write_text(
            rst_report(ROWS, machine, quick=quick, seconds=seconds, command=rst_command(args)),
            encoding="utf-8",
        )
        print(f"written to {args.rst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
