"""Constrained optimization with sparse tape derivatives: tapejit.optimize.ipopt (IPOPT
through cyipopt) and the trust-constr path of tapejit.optimize.minimize."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit import _nlp
from tapejit.optimize import minimize

so = pytest.importorskip("scipy.optimize")
sp = pytest.importorskip("scipy.sparse")


def _baselines():
    """``asv_bench/benchmarks/_baselines.py``, where the benchmarks' workloads are."""
    path = Path(__file__).parents[1] / "asv_bench" / "benchmarks" / "_baselines.py"
    spec = importlib.util.spec_from_file_location("_tapejit_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chain(N: int):
    """The hanging chain of N links (the benchmarks' ``hanging_chain``), its bounds as
    scipy's ``Bounds``."""
    f, g, z0, lb, ub = _baselines().hanging_chain(N)
    return f, g, z0, so.Bounds(lb, ub)


# ---------------------------------------------------------------------------------------
# the callbacks IPOPT gets, against dense tape derivatives
# ---------------------------------------------------------------------------------------
def test_ipopt_callbacks_equal_dense_derivatives():
    rng = np.random.default_rng(3)

    def f(x, w):
        return np.sum(w * np.exp(0.3 * x)) + x[0] * x[3]

    def c1(x):
        return np.sin(x[1:] * x[:-1]) + x[1:] ** 2

    def c2(x):
        return np.sum(x[::2] ** 3)

    x0 = rng.uniform(-1, 1, 7)
    w = rng.uniform(1, 2, 7)
    cons = _nlp.Constraints([{"type": "eq", "fun": c1},
                             so.NonlinearConstraint(c2, -1.0, 2.0)], x0, (7,))
    np.testing.assert_array_equal(cons.cl, np.r_[np.zeros(6), -1.0])
    np.testing.assert_array_equal(cons.cu, np.r_[np.zeros(6), 2.0])
    ft = tapejit.record(f, x0, w, argnums=0)

    def lagrangian(x, sigma, lam, w):
        return sigma * f(x, w) + np.dot(lam, cons.values(x))

    lt = tapejit.record(lagrangian, x0, 1.0, np.zeros(7), w, argnums=0)
    prob = _nlp.IpoptProblem(ft, (w,), cons, lt)
    x = rng.uniform(-1, 1, 7)
    lam = rng.normal(size=7)
    sigma = 0.7
    # dense references from other tapes
    np.testing.assert_allclose(prob.objective(x), f(x, w), rtol=1e-13)
    np.testing.assert_allclose(prob.gradient(x), ft.gradient(x, w), rtol=1e-13)
    gt = tapejit.record(cons.values, x0)
    np.testing.assert_allclose(prob.constraints(x), gt.forward(x), rtol=1e-13)
    rows, cols = prob.jacobianstructure()
    J = np.zeros((7, 7))
    J[rows, cols] = prob.jacobian(x)
    np.testing.assert_allclose(J, gt.jacobian(x), rtol=1e-12, atol=1e-14)
    rows, cols = prob.hessianstructure()
    assert (rows >= cols).all()
    H = np.zeros((7, 7))
    H[rows, cols] = prob.hessian(x, lam, sigma)
    H = H + np.tril(H, -1).T
    dense = lt.hessian(x, np.concatenate([[sigma], lam, w]))
    np.testing.assert_allclose(H, dense, rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------
# ipopt
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cyipopt():
    return pytest.importorskip("cyipopt")


def test_ipopt_equality_constrained_quadratic(cyipopt):
    res = tapejit.optimize.ipopt(lambda x: np.sum(x ** 2), np.array([2.0, 0.0]),
                                 constraints={"type": "eq", "fun": lambda x: x[0] + x[1] - 1})
    assert res.success and res.status == 0
    np.testing.assert_allclose(res.x, [0.5, 0.5], atol=1e-8)
    # IPOPT's Lagrangian is f + lambda g: 2 x + lambda = 0
    np.testing.assert_allclose(res.mult_g, [-1.0], atol=1e-7)
    assert res.nit >= 1 and res.nhev >= 1 and res.nfev >= 1


def test_ipopt_inequalities_bounds_params_and_shapes(cyipopt):
    def f(x, target):
        return np.sum((x - target) ** 2)

    target = np.array([[2.0, 2.0], [1.0, 3.0]])
    cons = [{"type": "ineq", "fun": lambda x: 2.0 - x[0, 0] - x[0, 1]},  # x00 + x01 <= 2
            so.NonlinearConstraint(lambda x: x[1] ** 2, 0.0, [0.25, 4.0])]
    bounds = [(None, 0.5), (None, None), (-1.0, 1.0), (None, None)]
    x0 = np.full((2, 2), 0.1)
    res = tapejit.optimize.ipopt(f, x0, (target,), constraints=cons, bounds=bounds, tol=1e-10)
    assert res.success and res.x.shape == (2, 2)
    ref = so.minimize(lambda x: f(x.reshape(2, 2), target), x0.ravel(), method="SLSQP",
                      bounds=bounds, constraints=[
                          {"type": "ineq", "fun": lambda x: 2.0 - x[0] - x[1]},
                          {"type": "ineq", "fun": lambda x: 0.25 - x[2] ** 2},
                          {"type": "ineq", "fun": lambda x: 4.0 - x[3] ** 2}],
                      options={"ftol": 1e-12})
    np.testing.assert_allclose(res.x.ravel(), ref.x, atol=1e-6)
    np.testing.assert_allclose(res.x, [[0.5, 1.5], [0.5, 2.0]], atol=1e-7)


def test_ipopt_hanging_chain_against_scipy(cyipopt):
    f, g, z0, bounds = chain(20)
    res = tapejit.optimize.ipopt(f, z0, constraints={"type": "eq", "fun": g}, bounds=bounds,
                                 tol=1e-10)
    assert res.success
    np.testing.assert_allclose(g(res.x), 0.0, atol=1e-10)
    ref = so.minimize(f, z0, method="SLSQP", bounds=bounds,
                      constraints={"type": "eq", "fun": g}, options={"ftol": 1e-14,
                                                                     "maxiter": 1000})
    assert ref.success
    np.testing.assert_allclose(res.fun, ref.fun, rtol=1e-8)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-5)


def test_ipopt_unconstrained(cyipopt):
    res = tapejit.optimize.ipopt(
        lambda x: np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2),
        np.zeros(5))
    assert res.success
    np.testing.assert_allclose(res.x, np.ones(5), atol=1e-7)


def test_ipopt_branch_error_says_what_to_do(cyipopt):
    def f(x):
        if x[0] > 0.5:  # recorded at x0 = 1: the other side is not on the tape
            return np.sum((x - 0.2) ** 2)
        return np.sum(x ** 2)

    with pytest.raises(tapejit.BranchError, match=r"np\.where"):
        tapejit.optimize.ipopt(f, np.array([1.0, 1.0]))


def _two_wells(x):
    # Two local minima, near x0 = -1 (the lower: 0.3 x0 tilts it) and near x0 = +1.
    return (x[0] ** 2 - 1.0) ** 2 + 0.3 * x[0] + (x[1] - 0.5) ** 2


_BELOW = {"type": "ineq", "fun": lambda x: 2.0 - x[0] - x[1]}  # x0 + x1 <= 2


def test_ipopt_multistart_finds_the_lower_well_and_equals_single_solves(cyipopt):
    starts = np.array([[1.5, 0.0], [-1.5, 0.0], [0.8, 3.0], [-0.4, 1.0]])
    res = tapejit.optimize.ipopt_multistart(_two_wells, starts, constraints=_BELOW,
                                            bounds=[(-3.0, 3.0), (None, None)], tol=1e-10)
    assert res.success and len(res.results) == len(starts)
    assert sorted(res.starts.tolist()) == list(range(len(starts)))
    assert res.x[0] < 0 and res.fun == min(r.fun for r in res.results)
    # the screen: one batched sweep's values and violations, per start
    np.testing.assert_allclose(res.screen_fun, [_two_wells(x) for x in starts], rtol=1e-12)
    np.testing.assert_allclose(res.screen_violation, [0.0, 0.0, 1.8, 0.0], atol=1e-12)
    assert res.starts[-1] == 2  # the only infeasible start runs last
    for i, r in zip(res.starts, res.results, strict=True):  # each as ipopt from that start
        one = tapejit.optimize.ipopt(_two_wells, starts[i], constraints=_BELOW,
                                     bounds=[(-3.0, 3.0), (None, None)], tol=1e-10)
        np.testing.assert_allclose(r.x, one.x, atol=1e-12)
        assert r.nit == one.nit and r.nfev == one.nfev  # counters restart per solve
    wells = sorted({round(float(r.x[0]), 6) for r in res.results})
    assert len(wells) == 2  # both minima were found: the starts went their own ways


def test_ipopt_multistart_runs_and_branches(cyipopt):
    def f(x):
        if x[0] > 0.0:  # recorded at the first start
            return (x[0] - 1.0) ** 2 + x[1] ** 2
        return (x[0] + 1.0) ** 2 + x[1] ** 2

    starts = np.array([[2.0, 1.0], [-2.0, 1.0], [0.5, 0.1]])
    res = tapejit.optimize.ipopt_multistart(f, starts, runs=1)
    assert np.isnan(res.screen_fun[1])  # off the recorded branch: screened out
    assert res.starts.tolist() == [2] and len(res.results) == 1  # the best screened start
    np.testing.assert_allclose(res.x, [1.0, 0.0], atol=1e-7)
    res = tapejit.optimize.ipopt_multistart(f, starts)
    assert res.starts.tolist() == [2, 0] and res.success
    with pytest.raises(ValueError, match="runs"):
        tapejit.optimize.ipopt_multistart(f, starts, runs=0)
    with pytest.raises(ValueError, match="x0s"):
        tapejit.optimize.ipopt_multistart(f, np.zeros((0, 2)))


def test_ipopt_bad_arguments(cyipopt):
    ipopt = tapejit.optimize.ipopt
    with pytest.raises(TypeError, match="callable"):
        ipopt(3.0, np.zeros(2))
    with pytest.raises(ValueError, match="single number"):
        ipopt(lambda x: x ** 2, np.zeros(2))
    with pytest.raises(ValueError, match="'type'"):
        ipopt(lambda x: np.sum(x), np.zeros(2), constraints={"type": "less", "fun": np.sum})
    with pytest.raises(TypeError, match="LinearConstraint"):
        ipopt(lambda x: np.sum(x), np.zeros(2),
              constraints=so.LinearConstraint(np.eye(2), 0.0, 1.0))
    with pytest.raises(ValueError, match=r"2 \(lo, hi\) pairs"):
        ipopt(lambda x: np.sum(x), np.zeros(2), bounds=[(0, 1)])
    with pytest.raises(ValueError, match="lower bound exceeds"):
        ipopt(lambda x: np.sum(x), np.zeros(2), bounds=[(0, 1), (2, 1)])
    with pytest.raises(ValueError, match="its 3 values"):
        ipopt(lambda x: np.sum(x), np.zeros(3),
              constraints=so.NonlinearConstraint(lambda x: x, [0.0, 0.0], 1.0))
    with pytest.raises(TypeError, match="real numbers"):
        ipopt(lambda x: np.sum(x), np.array(["a", "b"]))


def test_ipopt_missing_cyipopt_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_cyipopt(name, *args, **kwargs):
        if name == "cyipopt":
            raise ImportError("no cyipopt here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cyipopt)
    with pytest.raises(ImportError, match=r"tapejit\[ipopt\]"):
        tapejit.optimize.ipopt(lambda x: np.sum(x ** 2), np.zeros(2))


# ---------------------------------------------------------------------------------------
# minimize(method="trust-constr"): constraints with sparse tape derivatives
# ---------------------------------------------------------------------------------------
def test_trust_constr_gets_sparse_constraint_derivatives():
    f, g, z0, bounds = chain(15)
    res = minimize(f, z0, method="trust-constr", bounds=bounds,
                   constraints={"type": "eq", "fun": g},
                   options={"gtol": 1e-10, "xtol": 1e-12, "maxiter": 3000})
    assert res.success, res.message
    assert sp.issparse(res.jac[0])  # the constraint Jacobian scipy got
    np.testing.assert_allclose(res.jac[0].toarray(), tapejit.record(g, z0).jacobian(res.x),
                               rtol=1e-12, atol=1e-14)
    ref = so.minimize(f, z0, method="SLSQP", bounds=bounds,
                      constraints={"type": "eq", "fun": g}, options={"ftol": 1e-14,
                                                                     "maxiter": 1000})
    np.testing.assert_allclose(res.fun, ref.fun, rtol=1e-7)
    np.testing.assert_allclose(g(res.x), 0.0, atol=1e-8)


# scipy's quasi-Newton Hessian of the user's linear constraint warns that it is linear
@pytest.mark.filterwarnings("ignore:delta_grad == 0.0:UserWarning")
def test_trust_constr_keeps_constraints_with_their_own_derivatives():
    calls = []

    def jac(x):  # the user's own Jacobian: scipy calls it, no tape replaces it
        calls.append(1)
        return np.array([[1.0, 1.0]])

    nlc = so.NonlinearConstraint(lambda x: x[0] + x[1], 1.0, 1.0, jac=jac)
    res = minimize(lambda x: np.sum(x ** 2), np.array([2.0, 0.0]), method="trust-constr",
                   constraints=[nlc, so.LinearConstraint([[1.0, -1.0]], -5.0, 5.0)])
    assert calls and res.success
    np.testing.assert_allclose(res.x, [0.5, 0.5], atol=1e-6)


def test_trust_constr_nonlinear_constraint_and_hessian():
    # min x0 + x1 on the unit circle: the constraint Hessian matters
    nlc = so.NonlinearConstraint(lambda x: np.sum(x ** 2), 1.0, 1.0)
    res = minimize(lambda x: x[0] + x[1], np.array([1.0, 0.2]), method="trust-constr",
                   constraints=nlc, options={"gtol": 1e-10, "xtol": 1e-12})
    np.testing.assert_allclose(res.x, [-np.sqrt(0.5)] * 2, atol=1e-6)
    assert sp.issparse(res.jac[0])


def test_trust_constr_sparse_objective_hessian(monkeypatch):
    # A banded objective (the extended Rosenbrock function) with a sparse Hessian:
    # hess="sparse" gets it as a csr_array, and the run ends where hessp's does.
    def f(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    x0 = np.linspace(-1.2, 1.0, 30)
    seen = []
    obj_hess = tapejit.optimize._Objective.sparse_hessian

    def spy(self, x):
        H = obj_hess(self, x)
        seen.append(H)
        return H

    monkeypatch.setattr(tapejit.optimize._Objective, "sparse_hessian", spy)
    res = minimize(f, x0, method="trust-constr", hess="sparse",
                   options={"gtol": 1e-10, "xtol": 1e-14, "maxiter": 3000})
    monkeypatch.undo()
    ref = minimize(f, x0, method="trust-constr", options={"gtol": 1e-10, "xtol": 1e-14,
                                                          "maxiter": 3000})
    assert seen and all(sp.issparse(H) for H in seen)
    np.testing.assert_allclose(seen[0].toarray(), tapejit.hessian(f)(x0), rtol=1e-12,
                               atol=1e-12)
    assert seen[0].nnz == 3 * 30 - 2  # tridiagonal
    np.testing.assert_allclose(res.x, np.ones(30), atol=1e-6)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-6)
    with pytest.raises(ValueError, match="trust-constr"):
        minimize(f, x0, method="Newton-CG", hess="sparse")
