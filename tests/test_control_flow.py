"""Python control flow on traced values (issue 5): guards, BranchError, check="mask", the
branch-aware tape cache of the transforms, batched evaluation split by branch, and the
branch-free alternatives (np.where, np.maximum, np.abs, np.clip) that record no guard.

Every test defines its own functions, so the per-function tape caches do not interact.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import tapejit
from tapejit import BranchError, RecordingWarning, TracingError


def fresh(f):
    """A new function object calling ``f``: its own, empty tape cache."""

    def wrapper(*args):
        return f(*args)

    wrapper.__name__ = f.__name__
    return wrapper


# ---------------------------------------------------------------------------------------
# seed 004 (d2l): a while loop and an if on traced values
# ---------------------------------------------------------------------------------------
def d2l(a):
    b = a * 2
    while np.linalg.norm(b) < 1000:
        b = b * 2
    c = b if np.sum(b) > 0 else 100 * b
    return np.sum(c)


def d2l_reference(a: np.ndarray) -> tuple[np.ndarray, tuple[int, bool]]:
    """The exact gradient ``2 * 2^k`` or ``200 * 2^k`` per component (k loop turns), and
    the branch pattern ``(k, sum > 0)``."""
    b = a * 2.0
    k = 0
    while np.linalg.norm(b) < 1000:
        b = b * 2.0
        k += 1
    positive = bool(np.sum(b) > 0)
    return np.full(a.shape, (1.0 if positive else 100.0) * 2.0 ** (k + 1)), (k, positive)


def d2l_points(n: int, seed: int) -> np.ndarray:
    """Random 3-vectors of both signs and scales from 1e-3 to 1e3 (0 to ~20 loop turns)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) * 10.0 ** rng.uniform(-3.0, 3.0, size=(n, 1))


@pytest.mark.filterwarnings("ignore::tapejit.RecordingWarning")
def test_seed004_control_flow_gradient_single_calls():
    A = d2l_points(200, 4)
    f = fresh(d2l)
    g = tapejit.grad(f)
    patterns = set()
    for a in A:
        ref, pattern = d2l_reference(a)
        patterns.add(pattern)
        np.testing.assert_array_equal(g(a), ref)
    assert len({p[1] for p in patterns}) == 2  # both signs
    assert len({p[0] for p in patterns}) >= 10  # many loop counts, including none
    assert min(p[0] for p in patterns) == 0
    # one tape per branch pattern, reused for every later point of that pattern
    assert g.tape_cache.n_records == len(patterns)
    assert g.tape_cache.n_calls == 200
    # value and gradient together, through the same cache
    vg = tapejit.value_and_grad(f)
    for a in A[:20]:
        v, ga = vg(a)
        assert v == pytest.approx(d2l(a), rel=1e-15)
        np.testing.assert_array_equal(ga, d2l_reference(a)[0])
    assert g.tape_cache.n_records == len(patterns)


@pytest.mark.filterwarnings("ignore::tapejit.RecordingWarning")
def test_seed004_control_flow_gradient_one_batched_call():
    A = d2l_points(200, 5)
    ref = np.array([d2l_reference(a)[0] for a in A])
    n_patterns = len({d2l_reference(a)[1] for a in A})
    f = fresh(d2l)
    gb = tapejit.grad(f, batched=True)
    G = gb(A)
    assert G.shape == (200, 3)
    np.testing.assert_array_equal(G, ref)
    assert gb.tape_cache.n_calls == 1
    assert gb.tape_cache.n_records == n_patterns
    # a second batched call in another order reuses every tape
    perm = np.random.default_rng(6).permutation(200)
    np.testing.assert_array_equal(gb(A[perm]), ref[perm])
    assert gb.tape_cache.n_records == n_patterns
    v, G2 = tapejit.value_and_grad(f, batched=True)(A)
    np.testing.assert_array_equal(G2, ref)
    np.testing.assert_allclose(v, [d2l(a) for a in A], rtol=1e-15)
    # piecewise linear: the Hessian is zero on every branch
    np.testing.assert_array_equal(tapejit.hessian(f, batched=True)(A), np.zeros((200, 3, 3)))
    assert gb.tape_cache.n_records == n_patterns


# ---------------------------------------------------------------------------------------
# piecewise functions written with Python if, batched
# ---------------------------------------------------------------------------------------
def relu(x):
    return x if x > 0 else 0.0 * x


def py_abs(x):
    return x if x >= 0 else -x


def spline(x):
    if x < -1:
        return -2.0 * x - 1.0
    elif x < 1:
        return x * x
    else:
        return 2.0 * x - 1.0


# (function, value, derivative, second derivative) as numpy closed forms, with the
# branch Python takes at the kinks
PIECEWISE = {
    "relu": (relu, lambda x: np.where(x > 0, x, 0.0), lambda x: np.where(x > 0, 1.0, 0.0),
             lambda x: 0.0 * x),
    "abs": (py_abs, np.abs, lambda x: np.where(x >= 0, 1.0, -1.0), lambda x: 0.0 * x),
    "spline": (
        spline,
        lambda x: np.where(x < -1, -2.0 * x - 1.0, np.where(x < 1, x * x, 2.0 * x - 1.0)),
        lambda x: np.where(x < -1, -2.0, np.where(x < 1, 2.0 * x, 2.0)),
        lambda x: np.where((x >= -1) & (x < 1), 2.0, 0.0),
    ),
}
N_PIECEWISE = 10_000


def piecewise_points(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(-3.0, 3.0, N_PIECEWISE)
    x[:6] = [-1.0, 1.0, 0.0, -0.0, -3.0, 3.0]  # the kinks themselves, too
    return x


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_python_if_batched_gradient(name):
    f, _value, deriv, _second = PIECEWISE[name]
    f = fresh(f)
    x = piecewise_points(11)
    g = tapejit.grad(f, batched=True)
    G = g(x)
    assert G.shape == (N_PIECEWISE,)
    np.testing.assert_array_equal(G, deriv(x))
    n_branches = {"relu": 2, "abs": 2, "spline": 3}[name]
    assert g.tape_cache.n_records == n_branches
    assert g.tape_cache.n_calls == 1
    assert len(g.tape_cache) == n_branches


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_python_if_batched_value_grad_and_hessian(name):
    f, value, deriv, second = PIECEWISE[name]
    f = fresh(f)
    x = piecewise_points(12)
    v, G = tapejit.value_and_grad(f, batched=True)(x)
    np.testing.assert_array_equal(v, value(x))
    np.testing.assert_array_equal(G, deriv(x))
    H = tapejit.hessian(f, batched=True)(x)
    assert H.shape == (N_PIECEWISE,)
    np.testing.assert_array_equal(H, second(x))
    HV = tapejit.hvp(f, batched=True)(x, v=np.full_like(x, 3.0))
    np.testing.assert_array_equal(HV, 3.0 * second(x))
    J = tapejit.jacobian(f, batched=True)(x)
    np.testing.assert_array_equal(J, deriv(x))
    # all transforms share the cache: one tape per branch, no more
    n_branches = {"relu": 2, "abs": 2, "spline": 3}[name]
    assert tapejit.grad(f).tape_cache.n_records == n_branches


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_single_calls_match_batched(name):
    f, value, deriv, second = PIECEWISE[name]
    f = fresh(f)
    x = piecewise_points(13)[:300]
    G = tapejit.grad(f, batched=True)(x)
    g = tapejit.grad(f)
    h = tapejit.hessian(f)
    for i in range(0, 300, 7):
        assert g(x[i]) == G[i]
        assert h(x[i]) == second(x[i : i + 1])[0]
    y, ty = tapejit.jvp(f, (x[0],), (2.0,))  # x[0] = -1.0: the x * x branch of spline
    assert y == value(x[:1])[0]
    assert ty == 2.0 * deriv(x[:1])[0]


# ---------------------------------------------------------------------------------------
# guards on a tape: BranchError by default, check="mask" on request
# ---------------------------------------------------------------------------------------
X_MIXED = np.array([[1.0], [-1.0], [2.0], [-3.0], [0.0], [0.5]])  # relu recorded at x > 0
OK = np.array([True, False, True, False, False, True])


def test_guard_is_recorded():
    tape = tapejit.record(relu, 1.0)
    assert tape.n_guards == 1
    assert tape.guards.tolist()[0][1] == 1
    assert "guard" in tape.listing()
    assert "1 guards" in repr(tape)


@pytest.mark.parametrize(
    "call",
    [
        lambda t, X: t.forward(X),
        lambda t, X: t.value_and_grad(X),
        lambda t, X: t.gradient(X),
        lambda t, X: t.vjp(X, np.ones(1)),
        lambda t, X: t.jacobian(X, mode="forward"),
        lambda t, X: t.jacobian(X, mode="reverse"),
        lambda t, X: t.hessian(X),
        lambda t, X: t.jvp(X, np.ones(1)),
        lambda t, X: t.hvp(X, np.ones(1)),
    ],
    ids=["forward", "value_and_grad", "gradient", "vjp", "jacfwd", "jacrev", "hessian", "jvp",
         "hvp"],
)
def test_guard_failure_raises_branch_error_naming_the_points(call):
    tape = tapejit.record(relu, 1.0)
    with pytest.raises(BranchError, match=r"^3 of 6 point\(s\) left the branches") as info:
        call(tape, X_MIXED)
    assert (info.value.n_invalid, info.value.n_points) == (3, 6)
    with pytest.raises(BranchError, match=r"^1 of 1 point\(s\)"):
        call(tape, X_MIXED[1])
    call(tape, X_MIXED[OK])  # all points on the recorded branch: fine
    call(tape, X_MIXED[0])


def test_branch_error_pickles():
    """Worker processes (Dask, multiprocessing) send it pickled: same type, message and
    counts (it held only the message, so unpickling failed on the missing counts)."""
    import pickle

    with pytest.raises(BranchError) as info:
        tapejit.record(relu, 1.0).forward(X_MIXED)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is BranchError and str(again) == str(info.value)
    assert (again.n_invalid, again.n_points) == (3, 6)


def test_check_mask_forward_value_and_grad_gradient():
    tape = tapejit.record(relu, 1.0)
    y, ok = tape.forward(X_MIXED, check="mask")
    np.testing.assert_array_equal(ok, OK)
    assert ok.dtype == np.bool_
    np.testing.assert_array_equal(y[OK], X_MIXED[OK, 0])
    assert np.isnan(y[~OK]).all()
    v, g, ok2 = tape.value_and_grad(X_MIXED, check="mask")
    np.testing.assert_array_equal(ok2, OK)
    np.testing.assert_array_equal(v[OK], X_MIXED[OK, 0])
    np.testing.assert_array_equal(g[OK], 1.0)
    assert np.isnan(v[~OK]).all() and np.isnan(g[~OK]).all()
    g2, ok3 = tape.gradient(X_MIXED, check="mask")
    np.testing.assert_array_equal(g2, g)
    np.testing.assert_array_equal(ok3, OK)
    yv, gv, ok4 = tape.vjp(X_MIXED, np.array([2.0]), check="mask")
    np.testing.assert_array_equal(ok4, OK)
    np.testing.assert_array_equal(gv[OK], 2.0)
    assert np.isnan(gv[~OK]).all() and np.isnan(yv[~OK]).all()
    # one point: a bool, and NaN
    assert tape.forward(X_MIXED[1], check="mask")[1] is False
    assert math.isnan(tape.forward(X_MIXED[1], check="mask")[0])
    v1, g1, ok1 = tape.value_and_grad(X_MIXED[1], check="mask")
    assert ok1 is False and math.isnan(v1) and np.isnan(g1).all()
    v1, g1, ok1 = tape.value_and_grad(X_MIXED[0], check="mask")
    assert ok1 is True and v1 == 1.0 and g1.tolist() == [1.0]


def test_check_mask_jacobian_hessian_jvp_hvp():
    tape = tapejit.record(spline, 0.5)  # the x * x branch: -1 <= x < 1
    X = np.array([[-2.0], [-1.0], [0.25], [0.999], [1.0], [5.0]])
    ok_ref = np.array([False, True, True, True, False, False])
    for mode in ("forward", "reverse"):
        J, ok = tape.jacobian(X, mode=mode, check="mask")
        np.testing.assert_array_equal(ok, ok_ref)
        np.testing.assert_array_equal(J[ok_ref, 0, 0], 2.0 * X[ok_ref, 0])
        assert np.isnan(J[~ok_ref]).all()
    H, ok = tape.hessian(X, check="mask")
    np.testing.assert_array_equal(ok, ok_ref)
    np.testing.assert_array_equal(H[ok_ref], 2.0)
    assert np.isnan(H[~ok_ref]).all()
    jv, ok = tape.jvp(X, np.array([3.0]), check="mask")
    np.testing.assert_array_equal(ok, ok_ref)
    np.testing.assert_array_equal(jv[ok_ref], 6.0 * X[ok_ref, 0])
    assert np.isnan(jv[~ok_ref]).all()
    hv, ok = tape.hvp(X, np.full((6, 1), 3.0), check="mask")
    np.testing.assert_array_equal(ok, ok_ref)
    np.testing.assert_array_equal(hv[ok_ref], 6.0)
    assert np.isnan(hv[~ok_ref]).all()
    # one point
    h1, ok1 = tape.hessian(X[0], check="mask")
    assert ok1 is False and np.isnan(h1).all()
    h1, ok1 = tape.hessian(X[2], check="mask")
    assert ok1 is True and h1.tolist() == [[2.0]]
    jv1, ok1 = tape.jvp(X[5], np.ones(1), check="mask")
    assert ok1 is False and math.isnan(jv1)
    hv1, ok1 = tape.hvp(X[1], np.ones(1), check="mask")
    assert ok1 is True and hv1.tolist() == [2.0]


def test_check_mask_on_a_guard_free_tape_is_all_true():
    tape = tapejit.record(lambda x: np.where(x > 0, x, 0.0), 1.0)
    y, ok = tape.forward(X_MIXED, check="mask")
    assert ok.all() and not np.isnan(y).any()
    _, ok = tape.hessian(X_MIXED, check="mask")
    assert ok.all()


def test_many_points_mask_counts():
    tape = tapejit.record(spline, 0.0)
    x = np.random.default_rng(14).uniform(-3.0, 3.0, size=(100_000, 1))
    inside = (x[:, 0] >= -1) & (x[:, 0] < 1)
    with pytest.raises(BranchError, match=rf"^{np.count_nonzero(~inside)} of 100000 point"):
        tape.gradient(x)
    g, ok = tape.gradient(x, check="mask")
    np.testing.assert_array_equal(ok, inside)
    np.testing.assert_array_equal(g[inside, 0], 2.0 * x[inside, 0])


# ---------------------------------------------------------------------------------------
# branch-free code records no guards
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [0.0, -0.0, -1.0, -1e-300, -np.inf])
def test_where_guarded_log_gradient_is_exactly_zero_and_has_no_guard(x):
    def f(t):
        return np.where(t > 0, np.log(t), 0.0)

    tape = tapejit.record(f, 1.0)
    assert tape.n_guards == 0
    v, g = tape.value_and_grad(np.array([x]))
    assert v == 0.0 and g[0] == 0.0
    assert tape.hessian(np.array([x]))[0, 0] == 0.0
    G = tapejit.grad(f, batched=True)(np.array([x, 2.0, x, 0.5]))
    np.testing.assert_array_equal(G, [0.0, 0.5, 0.0, 2.0])
    assert tapejit.grad(f).tape_cache.n_records == 1


@pytest.mark.parametrize(
    ("f", "deriv"),
    [
        (lambda x: np.maximum(x, 0.0), lambda x: np.where(x > 0, 1.0, np.where(x == 0, 0.5, 0.0))),
        (lambda x: np.minimum(x, 1.0), lambda x: np.where(x < 1, 1.0, np.where(x == 1, 0.5, 0.0))),
        (lambda x: np.abs(x), np.sign),
        (lambda x: np.clip(x, -1.0, 1.0), lambda x: np.where(np.abs(x) <= 1, 1.0, 0.0)),
        (lambda x: np.where(x < -1, -2.0 * x - 1.0, np.where(x < 1, x * x, 2.0 * x - 1.0)),
         lambda x: np.where(x < -1, -2.0, np.where(x < 1, 2.0 * x, 2.0))),
    ],
    ids=["maximum", "minimum", "abs", "clip", "where_spline"],
)
def test_branch_free_ops_record_no_guards(f, deriv):
    tape = tapejit.record(f, 0.3)
    assert tape.n_guards == 0
    x = piecewise_points(15)
    x[6:10] = [1.0, -1.0, 0.0, 2.0]
    np.testing.assert_array_equal(tape.gradient(x[:, None])[:, 0], deriv(x))
    g = tapejit.grad(lambda t: f(t), batched=True)
    np.testing.assert_array_equal(g(x), deriv(x))
    assert g.tape_cache.n_records == 1


# ---------------------------------------------------------------------------------------
# builtin min/max, and/or/not record guards
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("f", "grad_ref", "points"),
    [
        (lambda x, y: max(x, y), lambda x, y: (float(x >= y), float(x < y)),
         [(1.0, 2.0), (3.0, 2.0), (-1.0, -5.0)]),
        (lambda x, y: min(x, 2.0 * y), lambda x, y: (float(x <= 2 * y), 2.0 * (x > 2 * y)),
         [(1.0, 2.0), (5.0, 2.0), (-1.0, -5.0)]),
        (lambda x, y: x * y if (x > 0 and y > 0) else x,
         lambda x, y: (y, x) if (x > 0 and y > 0) else (1.0, 0.0),
         [(1.0, 2.0), (-1.0, 2.0), (1.0, -2.0), (-1.0, -2.0)]),
        (lambda x, y: x * x if (x > 0 or y > 0) else y * y,
         lambda x, y: (2.0 * x, 0.0) if (x > 0 or y > 0) else (0.0, 2.0 * y),
         [(1.0, 2.0), (-1.0, 2.0), (1.0, -2.0), (-1.0, -2.0)]),
        (lambda x, y: x * x * y if not (x > y) else np.sin(y),
         lambda x, y: (2.0 * x * y, x * x) if not (x > y) else (0.0, math.cos(y)),
         [(1.0, 2.0), (3.0, 2.0), (2.0, 2.0)]),
    ],
    ids=["max", "min", "and", "or", "not"],
)
def test_builtin_min_max_and_or_not_record_guards(f, grad_ref, points):
    for p in points:
        tape = tapejit.record(f, *p)
        assert tape.n_guards >= 1, tape.listing()
        np.testing.assert_allclose(tape.gradient(np.array(p)), grad_ref(*p), rtol=1e-15)
    g = tapejit.grad(f, argnums=(0, 1))
    for p in points:
        np.testing.assert_allclose(g(*p), grad_ref(*p), rtol=1e-15)
    # batched over all the points at once
    P = np.array(points)
    gx, gy = tapejit.grad(f, argnums=(0, 1), batched=True)(P[:, 0], P[:, 1])
    np.testing.assert_allclose(np.stack([gx, gy], 1), [grad_ref(*p) for p in points],
                               rtol=1e-15)


def test_short_circuit_records_only_the_evaluated_comparisons():
    def f(x, y):
        return x if (x > 0 and y > 0) else y

    assert tapejit.record(f, -1.0, 2.0).n_guards == 1  # `and` stopped at x > 0
    assert tapejit.record(f, 1.0, 2.0).n_guards == 2


# ---------------------------------------------------------------------------------------
# conversions that would lose the trace
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("f", "match"),
    [
        (lambda x: float(x), r"float\(\)"),
        (lambda x: math.sin(x), r"float\(\)"),
        (lambda x: [1.0, 2.0, 3.0][x], "index"),
        (lambda x: x * len(range(x)), "index"),
        (lambda x: np.arange(3.0)[x], None),
    ],
    ids=["float", "math.sin", "list_index", "range", "array_index"],
)
def test_conversions_of_traced_values_raise_tracing_error(f, match):
    with pytest.raises(TracingError, match=match):
        tapejit.record(f, 1.0)
    with pytest.raises(TracingError, match=match):
        tapejit.grad(f)(1.0)


def test_traced_index_into_traced_array_raises():
    with pytest.raises(TracingError, match="index"):
        tapejit.record(lambda x: x[x[0]], np.ones(3))
    with pytest.raises(TracingError):
        tapejit.grad(lambda x: np.sum(x[: x[0]]))(np.ones(3))


# ---------------------------------------------------------------------------------------
# the LRU tape cache
# ---------------------------------------------------------------------------------------
EDGES = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)


def stairs(x):
    """Eight branches: branch j is (j + 1) sin x + j x."""
    for j, edge in enumerate(EDGES):
        if x < edge:
            return (j + 1.0) * np.sin(x) + j * x
    return 8.0 * np.sin(x) + 7.0 * x


def stairs_grad(x):
    j = np.searchsorted(EDGES, x, side="right")
    return (j + 1.0) * np.cos(x) + j


@pytest.mark.filterwarnings("ignore::tapejit.RecordingWarning")
def test_lru_keeps_at_most_max_tapes_and_stays_correct():
    f = fresh(stairs)
    g = tapejit.grad(f)
    cache = g.tape_cache
    cache.max_tapes = 4
    centers = np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    for rep in range(3):
        for c in centers:
            x = c + 0.1 * rep
            assert g(x) == pytest.approx(stairs_grad(x), rel=1e-15)
            assert len(cache) <= 4
    # cycling through 8 branches with room for 4: every call records (LRU thrashes)
    assert cache.n_records == 24
    # the 4 most recent branches stay cached and are reused
    before = cache.n_records
    for _ in range(3):
        for c in centers[4:]:
            assert g(c) == pytest.approx(stairs_grad(c), rel=1e-15)
    assert cache.n_records == before
    assert len(cache) == 4
    # a batched call over all 8 branches: correct, still at most 4 tapes kept
    gb = tapejit.grad(f, batched=True)
    assert gb.tape_cache is cache
    x = np.random.default_rng(16).uniform(-4.5, 4.5, 2000)
    # (j + 1) cos x + j cancels, and tapejit's cos and numpy's may differ in the last
    # bit (docs/internals.rst, own-libm): an absolute tolerance of a few ulp of 8 cos x
    np.testing.assert_allclose(gb(x), stairs_grad(x), rtol=1e-14, atol=1e-14)
    assert len(cache) <= 4
    np.testing.assert_allclose(tapejit.hessian(f, batched=True)(x),
                               -(np.searchsorted(EDGES, x, side="right") + 1.0) * np.sin(x),
                               rtol=1e-14, atol=1e-15)
    assert len(cache) <= 4
    assert all(t.n_guards >= 1 for t in cache.tapes)


def test_lru_default_capacity_keeps_every_branch():
    g = tapejit.grad(fresh(stairs))
    x = np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    for _ in range(3):
        for c in x:
            assert g(c) == pytest.approx(stairs_grad(c), rel=1e-15)
    assert g.tape_cache.n_records == 8
    assert len(g.tape_cache) == 8
    assert g.tape_cache.max_tapes >= 8


def test_tape_cache_does_not_keep_a_dead_function_alive():
    import gc
    import weakref

    def make():
        def f(x):
            return np.sum(x * x)

        g = tapejit.grad(f)
        g(np.ones(100))
        return weakref.ref(f), weakref.ref(g.tape_cache.tapes[0])

    f_ref, tape_ref = make()
    gc.collect()
    assert f_ref() is None
    assert tape_ref() is None


# ---------------------------------------------------------------------------------------
# RecordingWarning
# ---------------------------------------------------------------------------------------
def thousandths(x):
    """Ten branch decisions on the binary digits of floor(1000 x): every thousandth of x
    takes its own branch pattern, so nearly every new point needs a new tape."""
    t = np.floor(x * 1000.0)
    y = x
    for bit in range(10):
        if np.floor(t / 2.0**bit) % 2.0 == 1.0:
            y = y * 1.5 + 0.125
        else:
            y = np.sin(y)
    return y


def _thousandths_grad_reference(x):
    """Forward mode by hand: (y, dy/dx) through the same branches."""
    t = math.floor(x * 1000.0)
    y, dy = x, 1.0
    for bit in range(10):
        if math.floor(t / 2.0**bit) % 2.0 == 1.0:
            y, dy = y * 1.5 + 0.125, dy * 1.5
        else:
            y, dy = math.sin(y), math.cos(y) * dy
    return dy


def test_recording_warning_when_most_calls_record():
    g = tapejit.grad(fresh(thousandths))
    xs = (np.arange(60) * 7 + 0.5) / 1000.0  # 60 different thousandths
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x in xs:
            assert g(x) == pytest.approx(_thousandths_grad_reference(x), rel=1e-14)
    rec = [w for w in caught if issubclass(w.category, RecordingWarning)]
    assert len(rec) == 1  # once, not on every call
    assert "re-recorded" in str(rec[0].message) and "np.where" in str(rec[0].message)
    assert g.tape_cache.n_records == 60
    assert g.tape_cache.n_calls == 60


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda f: tapejit.value_and_grad(f), id="value_and_grad"),
        pytest.param(lambda f: tapejit.hessian(f), id="hessian"),
        pytest.param(lambda f: tapejit.grad(f), id="grad"),
        pytest.param(lambda f: (lambda x: tapejit.value_and_grad(f, batched=True)(
            np.array([x]))), id="value_and_grad_batched"),
    ],
)
def test_recording_warning_points_at_the_caller(transform):
    t = transform(fresh(thousandths))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(25):
            t((7 * i + 0.5) / 1000.0)
    (w,) = [w for w in caught if issubclass(w.category, RecordingWarning)]
    assert w.filename == __file__


def test_no_recording_warning_for_a_three_branch_function():
    def spline3(x):
        return spline(x)

    g = tapejit.grad(spline3)
    h = tapejit.hessian(spline3)
    xs = np.random.default_rng(17).uniform(-3.0, 3.0, 300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x in xs:
            assert g(x) == PIECEWISE["spline"][2](np.array(x))
        for x in xs[:50]:
            h(x)
        tapejit.grad(spline3, batched=True)(xs)
    assert not [w for w in caught if issubclass(w.category, RecordingWarning)]
    assert g.tape_cache.n_records == 3 + 3  # single calls, then the batched signature
    assert g.tape_cache.n_calls == 351


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_batched_calls_with_cached_branches_sort_points_by_guards(name):
    # Later calls find every branch cached: the points are sorted by guard-only sweeps,
    # each evaluated once with its own tape, results back in point order.
    f, value, deriv, _second = PIECEWISE[name]
    f = fresh(f)
    vg = tapejit.value_and_grad(f, batched=True)
    vg(piecewise_points(21))
    n_records = vg.tape_cache.n_records
    for seed in (22, 23):
        x = piecewise_points(seed)[::-1].copy()
        v, G = vg(x)
        np.testing.assert_array_equal(v, value(x))
        np.testing.assert_array_equal(G, deriv(x))
    assert vg.tape_cache.n_records == n_records


def test_guard_slice_keeps_only_what_the_guards_read():
    from tapejit._passes import guard_slice

    def f(x):
        if x < -1:
            return -2.0 * x - 1.0
        elif x < 1:
            return np.sin(x) * np.exp(x) * x
        return 2.0 * x - 1.0

    tape = tapejit.record(f, 0.5)
    sl = guard_slice(tape)
    assert len(sl) == 2 and sl.n_guards == tape.n_guards
    x = piecewise_points(24).reshape(-1, 1)
    np.testing.assert_array_equal(sl.forward(x, check="mask")[1],
                                  tape.forward(x, check="mask")[1])
    assert guard_slice(tapejit.record(lambda x: np.sin(x), 0.5)) is None
