"""The two tiers: the generic interpreter (``tapejit/_tier0.py``) serves every kind of call
at once, and the optimised kernels take over when the background worker has compiled them
(``tapejit/_kernels/tiers.py``).

The generic tier is checked against the optimised kernels' stored bits on the random
programs of ``tests/data/kernel_bits.npz`` (every op, every kind of call) and on every
instruction family; its differences are the ones ``docs/internals.rst`` (*Tiers*) lists.
Nothing here compiles a kernel variant the rest of the suite does not.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _kernel_bits import programs, results, tape_of

import tapejit
from tapejit import _tier0, _warmup
from tapejit._kernels import tiers
from tapejit._program import FAMILIES

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

FIXTURE = Path(__file__).parent / "data" / "kernel_bits.npz"


@pytest.fixture
def generic(monkeypatch):
    """Tapes made inside the test run on the generic tier (fresh kernel namespaces)."""
    monkeypatch.setenv(tiers.MODE_ENV, "generic")
    monkeypatch.setattr(tiers, "_NAMESPACES", {})
    monkeypatch.setattr(tiers, "_NOTICE_SHOWN", True)
    return None


def _is_generic(fn) -> bool:
    return bool(getattr(fn, "tier0", False))


def _generic_names() -> set[str]:
    return set().union(*(ns.generic for ns in tiers._NAMESPACES.values()))


# -- the steps and the entry points ------------------------------------------------------------
@pytest.mark.parametrize("step", [s for s in _warmup.STEPS if not s.families],
                         ids=lambda s: s.name)
def test_each_step_declares_the_entry_points_its_calls_use(generic, step):
    step.run()
    used = _generic_names() - {"ensure_family_routines"}
    assert used == set(step.entries), f"{step.name}: uses {sorted(used)}"


def test_every_entry_point_and_family_has_a_step():
    declared = {n for step in _warmup.STEPS for n in step.entries}
    assert set(_tier0.ENTRY_POINTS) - {"ensure_family_routines"} == declared
    assert set(_warmup.FAMILY_STEP) == set(FAMILIES)
    assert sorted(_warmup.BACKGROUND_ORDER) == sorted(s.name for s in _warmup.STEPS)


# -- the generic tier's results ------------------------------------------------------------------
def _scaled_difference(got: np.ndarray, want: np.ndarray) -> float:
    fin = np.isfinite(want)
    scale = np.maximum(np.abs(want[fin]), 1.0)
    return float(np.max(np.abs(got[fin] - want[fin]) / scale, initial=0.0))


def test_generic_tier_agrees_with_the_kernels_on_random_programs(generic):
    """Every op in every kind of call: the same NaNs and infinities as the optimised
    kernels, and values within rounding of theirs (1e-11 of the magnitude at worst: the
    programs have cancellations; most results agree to the last bit or two)."""
    same = total = 0
    for index, case in programs(np.load(FIXTURE)):
        tape = tape_of(case["prog"])
        assert _is_generic(tape._k.forward_point)
        got = results(tape, case["in"])
        for what, want in case["out"].items():
            g = np.asarray(got[what], np.float64)
            w = np.asarray(want, np.float64)
            assert g.shape == w.shape, (index, what)
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{index} {what}")
            np.testing.assert_array_equal(np.isposinf(g), np.isposinf(w))
            np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w))
            assert _scaled_difference(g, w) <= 1e-11, (index, what)
            same += int(np.count_nonzero(g.view(np.uint64) == w.view(np.uint64)))
            total += g.size
    assert same > 0.8 * total  # most bits agree: a systematic difference would show here


def _family_functions():
    rng = np.random.default_rng(7)
    M = rng.normal(size=(3, 3))
    S = M @ M.T + 3 * np.eye(3)
    return {
        "matmul": (lambda x: np.sum(np.tanh(M @ x) @ M), rng.normal(size=3)),
        "reduce/scan": (lambda x: np.prod(x) + np.max(x) * np.sum(np.cumsum(x) ** 2)
                        + np.sum(np.cumprod(x)), rng.uniform(0.5, 1.5, 3)),
        "solve/inv/det": (lambda x: np.sum(np.linalg.solve(S + np.diag(x), x))
                          + np.sum(np.linalg.inv(S * x[0])) + np.linalg.det(S + np.outer(x, x))
                          + np.linalg.slogdet(S + np.diag(x))[1], rng.uniform(0.5, 1.5, 3)),
        "cholesky": (lambda x: np.sum(np.linalg.cholesky(S + np.diag(x ** 2)))
                     + np.sum(tapejit.linalg.solve_triangular(
                         np.linalg.cholesky(S + np.diag(x)), x, lower=True)),
                     rng.uniform(0.5, 1.5, 3)),
        "eigh/svd/qr": (lambda x: np.sum(np.linalg.eigvalsh(S + np.diag(x)) ** 3)
                        + np.sum(np.linalg.svd(M + np.diag(x), compute_uv=False))
                        + np.sum(np.abs(np.linalg.qr(M + np.diag(x))[1])),
                        rng.uniform(0.5, 1.5, 3)),
    }


@pytest.mark.parametrize("which", list(_family_functions()))
def test_generic_tier_runs_every_family(monkeypatch, which):
    f, x = _family_functions()[which]
    X = x + np.random.default_rng(1).uniform(-0.1, 0.1, (4, 3))
    optimised = tapejit.record(f, x)
    want = (optimised.value_and_grad(X), optimised.hessian(x), optimised.jvp(X, np.ones(3)))
    monkeypatch.setenv(tiers.MODE_ENV, "generic")
    monkeypatch.setattr(tiers, "_NAMESPACES", {})
    monkeypatch.setattr(tiers, "_NOTICE_SHOWN", True)
    tape = tapejit.record(f, x)
    assert tape._families and _is_generic(tape._k.vjp_batch)
    got = (tape.value_and_grad(X), tape.hessian(x), tape.jvp(X, np.ones(3)))
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g if isinstance(g, tuple) else (g,), w if isinstance(w, tuple) else (w,),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _python_scan(f, init, xs=None, length=None, checkpoint=None):
    """``tapejit.scan`` unrolled: the Python loop, recorded step by step."""
    carry, ys = init, []
    for t in range(len(xs) if xs is not None else length):
        carry, y = f(carry, None if xs is None else xs[t])
        ys.append(y)
    return carry, (None if ys[0] is None else np.stack(ys))


def _loop_functions(scan=tapejit.scan):
    """Loops of every kind: per-step inputs and outputs, a closure, checkpoints, nesting,
    a guard in the body (``scan``: ``_python_scan`` unrolls them)."""
    xs = np.random.default_rng(3).normal(size=(6, 2)) * 0.1

    def fori_loop(lower, upper, f, v):
        return scan(lambda v, i: (f(i, v), None), v, np.arange(lower, upper, dtype=float))[0]

    def carry_xs_ys(p):
        def step(c, x):
            a, b = c
            a2 = np.sin(a) * b + p[0] * a + x[0]
            return (a2, 0.9 * b + p[1] * a * a - x[1]), a2 * b

        (a, b), ys = scan(step, (p[0], 0.5), xs, checkpoint=2)
        return a + b + np.sum(ys * ys)

    def nested(p):
        def inner(c):
            return fori_loop(0, 3, lambda i, v: np.cos(v) * p[0] + p[1] * i, c)

        c, ys = scan(lambda c, _: (inner(c), c * c), p[1], length=4)
        return c * p[0] + np.sum(ys)

    def branchy(p):
        def body(c, _):
            if c > 0:
                return c * 0.5 + p[0] * p[1], None
            return c - 1.0, None

        return scan(body, p[0], length=5, checkpoint="all")[0]

    def block_body(p):
        def step(c, _):
            return np.tanh(c[::-1] * p[0]) + p[1] * c, np.sum(c)

        c, ys = scan(step, p * np.ones((3, 2)), length=7)
        return np.sum(c ** 2) + ys @ np.arange(7.0)

    return {"carry_xs_ys": carry_xs_ys, "nested": nested, "branchy": branchy,
            "block_body": block_body}


def _every_call(tape, P):
    """Every kind of call at the points ``P`` (two of them failing a guard in
    ``branchy``) and at one point: masked results."""
    v = np.array([1.0, -0.5])
    out = {
        "forward": tape.forward(P, check="mask"),
        "value_and_grad": tape.value_and_grad(P, check="mask"),
        "vjp": tape.vjp(P, np.ones((len(P), 1)) * 0.5, check="mask"),
        "jvp": tape.jvp(P, v, check="mask"),
        "jacobian": tape.jacobian(P, mode="forward", check="mask"),
        "jacobian reverse": tape.jacobian(P, mode="reverse", check="mask"),
        "hvp": tape.hvp(P, v, check="mask"),
        "hessian": tape.hessian(P, check="mask"),
    }
    x = P[0]
    out |= {"forward, one point": tape.forward(x), "gradient, one point":
            tape.value_and_grad(x), "hessian, one point": tape.hessian(x),
            "jvp, one point": tape.jvp(x, v)}
    return out


@pytest.mark.parametrize("which", list(_loop_functions()))
def test_generic_tier_runs_loops(monkeypatch, which):
    """Loops on the generic tier, in every kind of call: the forward rule over all the
    points (``_fam_loop.loop_points``, guards checked at every step), derivatives through
    the loop family's reverse rule (``_fam_loop.loop_vjp``, new loops in the derivative
    tapes); the optimised kernels' results and the unrolled tape's to rounding, and
    nothing sent to the kernels."""
    f = _loop_functions()[which]
    p0 = np.array([0.8, 0.3])
    P = p0 + np.random.default_rng(5).uniform(-0.1, 0.1, (5, 2))
    P[3] = [-0.5, 0.3]  # branchy: c > 0 fails at the first step,
    P[4] = [0.3, -1.0]  # and at the second
    want = _every_call(tapejit.record(f, p0), P)
    unrolled = _every_call(tapejit.record(_loop_functions(_python_scan)[which], p0), P)
    monkeypatch.setenv(tiers.MODE_ENV, "generic")
    monkeypatch.setattr(tiers, "_NAMESPACES", {})
    monkeypatch.setattr(tiers, "_NOTICE_SHOWN", True)
    _no_fallback(monkeypatch)
    tape = tapejit.record(f, p0)
    assert tape.subprograms and _is_generic(tape._k.forward_batch)
    got = _every_call(tape, P)
    assert got["forward"][1].tolist() == [True] * 3 + [which != "branchy"] * 2
    for reference in (want, unrolled):
        for what, w in reference.items():
            g = got[what]
            for a, b in zip(g if isinstance(g, tuple) else (g,), w if isinstance(w, tuple)
                            else (w,), strict=True):
                if np.asarray(b).dtype == bool:
                    np.testing.assert_array_equal(a, b, err_msg=what)
                else:
                    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=what)


def test_loops_recorded_and_differentiated_from_many_threads(generic):
    """Each thread records its own loop bodies (``_tracer.bodies()``): scans recorded at
    once in several threads, and the generic tier's derivative tapes of one loop tape
    recorded at once by the threads that evaluate it, give the bits of one thread."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def f(x):
        return tapejit.scan(lambda c, xi: (c * 0.9 + np.sin(xi) * c + xi, c * c), 0.5, x)[0]

    X = np.random.default_rng(8).standard_normal((400, 4))
    want_listing = tapejit.record(f, X[0]).listing()
    want = tapejit.record(f, X[0]).value_and_grad(X)
    barrier = threading.Barrier(4)
    for _ in range(3):
        tape = tapejit.record(f, X[0])

        def work(k, tape=tape):
            barrier.wait()
            own = tapejit.record(f, X[k])
            return own.listing(), tape.value_and_grad(X[100 * k : 100 * (k + 1)])

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(work, range(4)))
        assert all(listing == want_listing for listing, _ in got)
        np.testing.assert_array_equal(np.concatenate([vg[0] for _, vg in got]), want[0])
        np.testing.assert_array_equal(np.concatenate([vg[1] for _, vg in got]), want[1])


def test_generic_tier_checks_guards(generic):
    def f(x):
        return x[0] ** 2 if x[0] > 0 else -x[0]

    tape = tapejit.record(f, np.array([1.0, 2.0]))
    X = np.array([[1.0, 2.0], [-1.0, 2.0], [3.0, 0.0]])
    with pytest.raises(tapejit.BranchError):
        tape.value_and_grad(X)
    with pytest.raises(tapejit.BranchError):
        tape.value_and_grad(X[1])
    (v, g, ok) = tape.value_and_grad(X, check="mask")
    np.testing.assert_array_equal(ok, [True, False, True])
    assert np.isnan(v[1]) and np.isnan(g[1]).all()
    np.testing.assert_array_equal(v[[0, 2]], [1.0, 9.0])
    np.testing.assert_array_equal(g[[0, 2]], [[2.0, 0.0], [6.0, 0.0]])


def test_float32_tape_on_the_generic_tier(generic):
    tape = tapejit.record(lambda x: np.sum(np.sin(x) * x), np.ones(3)).astype(np.float32)
    X = np.linspace(0.1, 1.0, 12, dtype=np.float32).reshape(4, 3)
    v, g = tape.value_and_grad(X)
    assert v.dtype == np.float32 and g.dtype == np.float32
    x64 = X.astype(np.float64)
    np.testing.assert_allclose(v, np.sum(np.sin(x64) * x64, axis=1), rtol=1e-6)
    np.testing.assert_allclose(g, np.cos(x64) * x64 + np.sin(x64), rtol=1e-6)


def _no_fallback(monkeypatch):
    def refuse(self, name, args, kwargs):
        raise AssertionError(f"{name} went to the optimised kernels")

    monkeypatch.setattr(tiers.Kernels, "_fallback", refuse)


def test_derivatives_are_recorded_on_the_tapes_branch(generic, monkeypatch):
    """A derivative tape is recorded at the first point of the call where the tape's
    guards hold: a first point off the branch (here a singular matrix, a failed guard)
    neither stops the generic tier nor sends the call to the kernels."""
    def f(x):
        A = np.diag(x) + np.array([[0.0, 1.0], [1.0, 0.0]])
        return np.sum(np.linalg.solve(A, np.ones(2)))

    _no_fallback(monkeypatch)
    tape = tapejit.record(f, np.array([2.0, 3.0]))
    kprog, _ = tapejit._tape.kernel_arrays(tape)
    with pytest.raises(tapejit.BranchError):
        tape.value_and_grad(np.array([1.0, 1.0]))  # det 0: no point on the branch
    assert "vg" not in _tier0.decoded(kprog).derived  # nothing to record at: nothing kept
    v, g, ok = tape.value_and_grad(np.array([[1.0, 1.0], [2.0, 3.0]]), check="mask")
    np.testing.assert_array_equal(ok, [False, True])
    assert np.isnan(v[0]) and np.isnan(g[0]).all()
    np.testing.assert_allclose(v[1], 0.6, rtol=1e-14)
    np.testing.assert_allclose(g[1], [-0.16, -0.04], rtol=1e-13)  # -(A^-T 1) * y
    assert not isinstance(_tier0.decoded(kprog).derived["vg"], _tier0.Unsupported)
    H, ok = tape.hessian(np.array([1.0, 1.0]), check="mask")  # hvp: none on the branch
    assert not ok and np.isnan(H).all()


def test_a_branch_taken_at_no_recorded_point_is_reported_for_every_kind(generic, monkeypatch):
    def f(x):
        return x[0] ** 3 * x[1] if x[0] > 0 else -x[0]

    _no_fallback(monkeypatch)
    tape = tapejit.record(f, np.array([1.0, 2.0]))
    X = np.array([[-1.0, 2.0], [2.0, 3.0]])  # the first point is off the branch
    v = np.array([1.0, -1.0])
    jv, ok = tape.jvp(X, v, check="mask")
    np.testing.assert_array_equal(ok, [False, True])
    np.testing.assert_allclose(jv[1], 3 * 4.0 * 3.0 - 8.0, rtol=1e-15)
    hv, ok = tape.hvp(X, v, check="mask")
    np.testing.assert_allclose(hv[1], [6 * 2.0 * 3.0 - 3 * 4.0, 3 * 4.0], rtol=1e-15)
    J, ok = tape.jacobian(X, mode="reverse", check="mask")
    np.testing.assert_allclose(J[1], [[3 * 4.0 * 3.0, 8.0]], rtol=1e-15)
    assert np.isnan(J[0]).all() and not ok[0]


def test_a_derivative_the_generic_tier_refuses_runs_on_the_kernels(generic, monkeypatch):
    """A refusal at a point on the branch does not depend on the point: it is kept, and
    the optimised kernel answers this program's calls of that kind."""
    def refuse(tape, x, p):
        raise tapejit.TracingError("not recordable here")

    monkeypatch.setitem(_tier0._RECORDERS, "vg", refuse)
    tape = tapejit.record(lambda x: np.sum(np.sin(x) * x), np.array([0.5, 1.0]))
    kprog, _ = tapejit._tape.kernel_arrays(tape)
    v, g = tape.value_and_grad(np.array([0.5, 1.0]))
    assert isinstance(_tier0.decoded(kprog).derived["vg"], _tier0.Unsupported)
    x = np.array([0.5, 1.0])
    np.testing.assert_allclose(v, np.sum(np.sin(x) * x), rtol=1e-15)
    np.testing.assert_allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-15)


def test_an_unknown_policy_is_an_error_naming_the_choices(monkeypatch):
    monkeypatch.setenv(tiers.MODE_ENV, "fast")
    monkeypatch.setattr(tiers, "_NAMESPACES", {})
    with pytest.raises(ValueError, match="TAPEJIT_KERNELS='fast': expected one of auto, "
                                         "optimized, generic"):
        tapejit.record(lambda x: np.sin(x), 1.0).forward(1.0)


# -- moving to the optimised kernels -----------------------------------------------------------
def test_ready_steps_swap_in_the_optimised_kernels(monkeypatch):
    monkeypatch.setenv(tiers.MODE_ENV, "auto")
    monkeypatch.setattr(tiers, "_NAMESPACES", {})
    monkeypatch.setattr(tiers, "_NOTICE_SHOWN", True)
    monkeypatch.setattr(tiers, "_READY", set())
    monkeypatch.setattr(tiers, "_step_ready", lambda module, step: step in tiers._READY)
    asked = []
    worker = type("Worker", (), {"want": lambda self, steps: asked.extend(steps)})()
    monkeypatch.setattr(tiers, "_background", lambda module: worker)
    tape = tapejit.record(lambda x: np.sum(np.exp(x) * x[0]), np.ones(3))
    x = np.array([0.1, 0.2, 0.3])
    v0, g0 = tape.value_and_grad(x)
    assert _is_generic(tape._k.value_grad_point) and tape._k.generic
    assert asked[:2] == ["families reduce/scan", "gradient, one point"]
    tiers._on_ready("gradient, one point")
    assert _is_generic(tape._k.value_grad_point)  # its family's routines are not ready
    tiers._on_ready("families reduce/scan")
    assert not _is_generic(tape._k.value_grad_point)
    assert not _is_generic(tape._k.reverse_plan)
    assert not tape._k.generic
    v1, g1 = tape.value_and_grad(x)
    np.testing.assert_allclose(g1, g0, rtol=1e-15)
    assert v1 == v0
    assert tapejit.wait_for_kernels(timeout=0)


def test_an_optimised_batch_kernel_never_gets_the_generic_plan(monkeypatch):
    """A plan computed on the generic tier (none) and a kernel swapped in just after:
    the batch runner computes the real plan."""
    tape = tapejit.record(lambda x: np.sum(x ** 2), np.ones(3))
    ks = tape._k
    assert not _is_generic(ks.vjp_batch)
    from tapejit._kernels.runtime import run_batch

    X = np.ones((3, 3))
    Y, G, valid = np.empty((3, 1)), np.empty((3, 3)), np.empty(3, np.uint8)
    kprog, kconsts = tapejit._tape.kernel_arrays(tape)
    run_batch(ks, "vjp_batch", 3, 8, kprog, None, kconsts, X, np.empty((1, 0)),
              np.ones((1, 1)), Y, G, valid)
    np.testing.assert_array_equal(G, 2.0)


def test_the_worker_takes_what_is_asked_for_first():
    pending = ["a", "b", "c"]
    assert _warmup.next_step(pending, []) == "a"
    assert _warmup.next_step(pending, ["x", "c", "b"]) == "c"


def test_serve_reports_every_step_once(monkeypatch, tmp_path):
    monkeypatch.setattr(tiers, "marker", lambda module, step: tmp_path / "none")
    ran: list[str] = []
    out = io.StringIO()
    _warmup.serve(requests=iter(()), stream=out, run=ran.append)
    reported = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert sorted(reported) == sorted(s.name for s in _warmup.STEPS)
    assert ran == reported


def test_a_cold_process_runs_generic_and_leaves_compiling_to_the_worker(tmp_path):
    """A new process with an empty cache: the first gradients come from the generic tier,
    nothing is compiled in the process itself, and one worker is started (stopped here)."""
    script = textwrap.dedent("""
        import os, signal
        import numpy as np
        import tapejit
        from tapejit._kernels import runtime, tiers

        t = tapejit.record(lambda x: np.sum(np.log1p(x ** 2)) * x[0], np.ones(3))
        v, g = t.value_and_grad(np.array([1.0, 2.0, 3.0]))
        H = t.hessian(np.array([1.0, 2.0, 3.0]))
        w = tiers._BACKGROUND.proc
        os.killpg(w.pid, signal.SIGKILL)
        module = runtime.kernels().module
        compiled = [n for n, f in vars(module).items() if getattr(f, "signatures", None)]
        print(repr((float(v), g.tolist(), H[0].tolist(), compiled)))
    """)
    env = dict(os.environ, TAPEJIT_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"), TAPEJIT_KERNELS="auto")
    env.pop("TAPEJIT_QUIET", None)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    v, g, h0, compiled = eval(res.stdout.strip().splitlines()[-1])
    x = np.array([1.0, 2.0, 3.0])
    s = np.sum(np.log1p(x ** 2))
    assert v == pytest.approx(s * x[0], rel=1e-15)
    np.testing.assert_allclose(g, [s + 2 * x[0] ** 2 / (1 + x[0] ** 2),
                                   *(2 * x[1:] / (1 + x[1:] ** 2))], rtol=1e-14)
    assert h0[1] == pytest.approx(2 * x[1] / (1 + x[1] ** 2), rel=1e-14)
    assert compiled == []
    assert res.stderr.count("generic interpreter") == 1, res.stderr


def test_a_cold_process_runs_loops_without_compiling(tmp_path):
    """A new process with an empty cache on the generic tier: loop tapes' values and every
    derivative (nested differentiation too) come from the generic interpreter, and nothing
    is compiled: no kernel and no family routine (the loop family's, which the optimised
    kernels would need, least of all). Their results are the optimised kernels'."""
    import _loop_calls

    env = dict(os.environ, TAPEJIT_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_CACHE_DIR=str(tmp_path / "numba"), TAPEJIT_KERNELS="generic")
    res = subprocess.run([sys.executable, _loop_calls.__file__], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    got, compiled, routines = eval(res.stdout.strip().splitlines()[-1])
    assert compiled == [] and routines == []
    for f, generic in zip(_loop_calls.FUNCTIONS, got, strict=True):
        for g, want in zip(generic, _loop_calls.calls(f), strict=True):
            np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-14)


def test_import_leaves_the_kernel_source_files_alone():
    """``import tapejit`` reads what it needs of the kernel files (constants, the op
    table's helpers) without importing them: each defines Numba dispatchers, which cost
    start-up time and are never called outside the tests (the generated module is)."""
    from tapejit._kernels.sources import MARKER, kernel_path

    folder = kernel_path("scalar").parent
    sources = {f"tapejit._kernels.{f.stem}" for f in folder.glob("*.py")
               if f"\n{MARKER}\n" in f.read_text(encoding="utf-8")}
    script = ("import sys, tapejit; "
              "print(sorted(m for m in sys.modules if m.startswith('tapejit._kernels.')))")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    imported = set(eval(res.stdout.strip().splitlines()[-1]))
    assert {"tapejit._kernels.scalar", "tapejit._kernels.fam_loop"} <= sources
    assert not imported & sources, sorted(imported & sources)


_BLAS_CHECK = """
import sys
import tapejit
from tapejit._kernels.runtime import kernels
kernels()
loaded = ("numba.np.arraymath" in sys.modules, "scipy.linalg" in sys.modules,
          "scipy.linalg.cython_blas" in sys.modules)
import scipy.linalg
blas = sys.modules["scipy.linalg.cython_blas"]
import numpy as np
from numba import njit
product = njit(lambda a, b: a @ b)(np.eye(3), np.arange(9.0).reshape(3, 3))
print(repr((loaded, scipy.linalg.cython_blas is blas, product.tolist())))
"""


def test_loading_the_kernels_runs_numbas_blas_check_without_scipy_linalg():
    """Numba's ``arraymath`` (imported at the first kernel load) checks for BLAS by
    importing ``scipy.linalg.cython_blas``; tapejit loads that extension by itself for the
    check (``runtime._check_blas_lightly``), so ``scipy.linalg`` is not imported, and a
    later ``import scipy.linalg`` and Numba's BLAS calls work as always."""
    env = dict(os.environ, TAPEJIT_KERNELS="generic")
    res = subprocess.run([sys.executable, "-c", _BLAS_CHECK], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    loaded, same, product = eval(res.stdout.strip().splitlines()[-1])
    assert loaded == (True, False, False)
    assert same
    assert product == np.arange(9.0).reshape(3, 3).tolist()
