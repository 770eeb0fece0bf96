"""Nested differentiation (``tapejit/_nested.py``): the transforms called inside a
recorded function record their derivative into the outer tape.

Reference values: JAX's (``tests/data/nested_reference.npz``, made by
``tests/data/make_nested_reference.py`` from the functions of
``tests/data/nested_problems.py``; JAX is not in the test environment), analytic
derivatives, and tapejit's own kernels (whose second-order sweeps use the op table's
``second`` expressions, which nested differentiation never reads).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from _op_helpers import fixed_operands, sample, spec

import tapejit
from tapejit import _nested, grad, hessian, hvp, jacobian, jvp, value_and_grad
from tapejit._ops import OPS, ZERO_DERIVATIVE

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

_DATA = os.path.join(os.path.dirname(__file__), "data")
_spec = importlib.util.spec_from_file_location(
    "nested_problems", os.path.join(_DATA, "nested_problems.py"))
P = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(P)
REF = dict(np.load(os.path.join(_DATA, "nested_reference.npz")))


def _close(got, want, rtol=1e-9):
    """Within ``rtol`` of the reference, relative to its largest magnitude (at least 1)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= rtol * scale, f"max error {err:.3g} (scale {scale:.3g})"


def _fn(name):
    fn = P.PROBLEMS[name][0]
    return lambda x: fn(x, np)


@pytest.mark.parametrize("name", sorted(P.PROBLEMS))
def test_third_derivative_against_jax(name):
    """``jacobian(hessian(f))`` recorded once, evaluated at one point and at a batch."""
    f, X = _fn(name), REF[f"{name}/x"]
    n = X.shape[1]
    tape = tapejit.record(lambda x: jacobian(hessian(f))(x), X[0])
    for k, x in enumerate(X):
        _close(tape.forward(x).reshape(n, n, n), REF[f"{name}/third"][k])
    _close(tape.forward(X).reshape(-1, n, n, n), REF[f"{name}/third"])


@pytest.mark.parametrize("name", sorted(P.PROBLEMS))
def test_grad_of_grad_of_grad_against_jax(name):
    """``grad(grad(grad(f)))`` as scalar compositions and ``grad`` of an ``hvp``:
    ``T[i, j, k] u_j w_k``; ``jacobian(grad(f))``; the gradient and its kernel
    Jacobian on the way."""
    f, X = _fn(name), REF[f"{name}/x"]
    n = X.shape[1]
    u, w = np.linspace(0.5, 1.5, n), np.linspace(-1.0, 2.0, n)

    def g(x):
        return grad(f)(x)

    def hu(x):
        return grad(lambda z: np.sum(g(z) * u))(x)

    def tuw(x):
        return grad(lambda z: np.sum(hu(z) * w))(x)

    def tuw_hvp(x):
        return grad(lambda z: np.sum(hvp(f)(z, v=u) * w))(x)

    t_g = tapejit.record(g, X[0])
    t_tuw = tapejit.record(tuw, X[0])
    t_tuw_hvp = tapejit.record(tuw_hvp, X[0])
    t_jg = tapejit.record(jacobian(grad(f)), X[0])
    for k, x in enumerate(X):
        H, T = REF[f"{name}/hessian"][k], REF[f"{name}/third"][k]
        _close(t_g.forward(x), REF[f"{name}/grad"][k])
        _close(t_g.jacobian(x), H)  # the kernels' Jacobian of the recorded gradient
        _close(t_jg.forward(x).reshape(n, n), H)
        _close(t_tuw.forward(x), np.einsum("ijk,j,k->i", T, u, w))
        _close(t_tuw_hvp.forward(x), np.einsum("ijk,j,k->i", T, u, w))
    _close(tapejit.record(hu, X[0]).forward(X), REF[f"{name}/hessian"] @ u)


@pytest.mark.parametrize("name", ["rosenbrock", "matmul_reduce", "box_3d"])
def test_hvp_jvp_value_and_grad_inside(name):
    f, X = _fn(name), REF[f"{name}/x"]
    n = X.shape[1]
    v = np.linspace(-1.0, 1.0, n)
    t_hvp = tapejit.record(lambda x: hvp(f)(x, v=v), X[0])
    t_jvp = tapejit.record(lambda x: jvp(grad(f), (x,), (v,)), X[0])
    t_vg = tapejit.record(lambda x: value_and_grad(f)(x), X[0])
    for k, x in enumerate(X):
        H = REF[f"{name}/hessian"][k]
        _close(t_hvp.forward(x), H @ v)
        _close(t_jvp.forward(x), np.concatenate([REF[f"{name}/grad"][k], H @ v]))
        _close(t_vg.forward(x), np.concatenate([[REF[f"{name}/value"][k]],
                                                REF[f"{name}/grad"][k]]))
    # the traced tangent direction: the hvp's derivative with respect to v is H
    t_v = tapejit.record(lambda x, vv: hvp(f)(x, v=vv), X[0], v, argnums=1)
    _close(t_v.jacobian(v, params=X[0]), REF[f"{name}/hessian"][0])


def test_grad_grad_grad_of_a_scalar_function_through_the_public_api():
    """``grad(grad(grad(f)))(x)`` with no explicit recording (each outer transform
    records the inner one), and a fourth derivative, against the analytic ones."""
    def f(x):
        return np.sin(x) * x ** 3

    def d3(x):
        return (6 - 9 * x ** 2) * np.sin(x) + (18 * x - x ** 3) * np.cos(x)

    def d4(x):
        return (24 - 12 * x ** 2) * np.cos(x) + (x ** 3 - 36 * x) * np.sin(x)

    for x in (0.0, 0.7, -2.3):
        assert abs(grad(grad(grad(f)))(x) - d3(x)) <= 1e-12 * max(1.0, abs(d3(x)))
        assert abs(grad(grad(grad(grad(f))))(x) - d4(x)) <= 1e-12 * max(1.0, abs(d4(x)))
    xs = np.array([0.0, 0.7, -2.3])
    _close(grad(grad(grad(f)), batched=True)(xs), d3(xs), 1e-12)


def test_branchy_function_keeps_its_guard():
    """A branch inside the differentiated function is a guard of the outer tape: each
    branch's third derivatives, and a point on the other branch refused or re-recorded."""
    f = lambda x: P.branchy(x, np)  # noqa: E731
    pos, neg = REF["branch_positive/x"], REF["branch_negative/x"]
    tape = tapejit.record(lambda x: jacobian(hessian(f))(x), pos[0])
    assert len(tape.guards) >= 1
    _close(tape.forward(pos).reshape(-1, 3, 3, 3), REF["branch_positive/third"])
    with pytest.raises(tapejit.BranchError):
        tape.forward(neg[0])
    _, ok = tape.forward(np.concatenate([pos, neg]), check="mask")
    assert ok.tolist() == [True] * len(pos) + [False] * len(neg)
    third = tapejit.jacobian(lambda x: hessian(f)(x), batched=True)
    got = third(np.concatenate([neg, pos]))  # the transform records each branch
    _close(got, np.concatenate([REF["branch_negative/third"], REF["branch_positive/third"]]))


def test_where_with_infinite_partial_in_the_untaken_branch_to_third_order():
    """``np.where(x > 0, x * sqrt(x), x**3)``: at 0 the untaken ``sqrt`` has an infinite
    partial, at -0.5 a NaN value; the NaN policy keeps every order finite and exact."""
    def f(x):
        return np.sum(np.where(x > 0, x * np.sqrt(x), x ** 3))

    x = np.array([-0.5, 0.0, 0.7])

    def orders(x):
        g = grad(f)(x)
        H = hessian(f)(x)
        return g, np.diagonal(H), np.diagonal(np.diagonal(jacobian(hessian(f))(x)))

    tape = tapejit.record(orders, x)
    got = tape.forward(x).reshape(3, 3)
    pos = x > 0
    s = np.sqrt(np.abs(x))
    want = np.stack([np.where(pos, 1.5 * s, 3 * x ** 2),
                     np.where(pos, 0.75 / np.where(pos, s, 1.0), 6 * x),
                     np.where(pos, -0.375 / np.where(pos, s ** 3, 1.0), 6.0)])
    assert np.isfinite(got).all()
    _close(got, want, 1e-13)
    # and the outer tape's own derivative (fourth order) is finite too
    assert np.isfinite(tape.jacobian(x)).all()


def test_gradient_norm_penalty_one_step():
    """``loss(w) + lam * sum(grad(loss)(w)**2)`` against JAX: value, gradient and
    Hessian at the start, and the value after one gradient step, which decreases."""
    def loss(w):
        return P.logistic_loss(w, np)

    def penalized(w):
        return loss(w) + P.PENALTY_LAMBDA * np.sum(grad(loss)(w) ** 2)

    w0 = np.array(P.PENALTY_W0)
    v0, g0 = tapejit.value_and_grad(penalized)(w0)
    _close(v0, REF["penalty/value0"])
    _close(g0, REF["penalty/grad0"])
    _close(tapejit.hessian(penalized)(w0), REF["penalty/hessian0"])
    w1 = w0 - P.PENALTY_STEP * g0
    v1 = tapejit.value_and_grad(penalized)(w1)[0]
    _close(v1, REF["penalty/value1"])
    assert v1 < v0


def test_several_arguments_and_traced_parameters():
    """Hessian blocks for a sequence ``argnums``; a traced argument that is not
    differentiated stays a variable of the outer tape (mixed partials)."""
    def f(a, b):
        return np.sum(a ** 2 * b) + np.prod(a) * b[0]

    a, b = np.array([0.5, -1.5]), np.array([2.0, 3.0])
    tape = tapejit.record(lambda a, b: sum(hessian(f, argnums=(0, 1))(a, b), ()), a, b)
    blocks = tape.forward(np.concatenate([a, b]))
    want = tapejit.hessian(f, argnums=(0, 1))(a, b)
    _close(blocks, np.concatenate([np.ravel(want[i][j]) for i in range(2) for j in range(2)]),
           1e-14)
    # d/db of grad_a f = 2 a (diagonal) + prod(a)/a_i in column 0
    t2 = tapejit.record(lambda a, b: grad(f, 0)(a, b), a, b, argnums=1)
    _close(t2.jacobian(b, params=a), np.diag(2 * a) + np.outer([a[1], a[0]], [1.0, 0.0]),
           1e-14)


def test_untraced_arguments_with_a_traced_closure():
    """``grad(lambda z: ...w...)(constant)`` inside a recording: the traced value is
    in the closure only; the derivative is recorded, and differentiable in ``w``."""
    def loss(w):
        return grad(lambda z: np.sum(z * w) ** 2)(np.ones(3))

    w = np.array([0.5, -1.0, 2.0])
    tape = tapejit.record(loss, w)
    s = np.sum(w)
    _close(tape.forward(w), 2 * s * w, 1e-15)
    _close(tape.jacobian(w), 2 * np.outer(w, np.ones(3)) + 2 * s * np.eye(3), 1e-15)


def test_closure_values_are_constants_of_the_inner_derivative():
    """No perturbation confusion: ``grad(lambda z: sum(z * x))(x)`` is ``x``, whose
    Jacobian is the identity (the argument is copied into fresh variables)."""
    x = np.array([0.5, -2.0, 3.0])
    tape = tapejit.record(lambda x: grad(lambda z: np.sum(z * x))(x), x)
    _close(tape.forward(x), x, 0)
    _close(tape.jacobian(x), np.eye(3), 0)
    # a repeated element and a constant among the arguments are distinct variables too
    t2 = tapejit.record(lambda x: grad(lambda z: np.sum(z ** 3))(np.stack([x[0], x[0], 2.0])),
                        x)
    _close(t2.forward(x), 3 * np.array([x[0], x[0], 2.0]) ** 2, 0)


def test_constant_argument_output_without_dependence_and_keywords():
    """A differentiated argument that is a constant of the outer recording, an output
    that does not depend on the argument, and keyword arguments of the hooks."""

    x = np.array([0.5, -1.0])
    b = np.array([1.0, 2.0])
    tape = tapejit.record(lambda x: grad(lambda a, b: np.sum(a * b ** 3), 1)(x, b), x)
    _close(tape.forward(x), 3 * x * b ** 2, 0)
    _close(tape.jacobian(x), np.diag(3 * b ** 2), 0)
    t2 = tapejit.record(lambda x: grad(lambda a: 2.0)(x) + x, x)
    _close(t2.forward(x), x, 0)

    def g(a, *, scale=1.0):
        return scale * np.sum(a ** 3)

    t3 = tapejit.record(lambda x: _nested.grad(g, 0, (x,), kwargs={"scale": x[0]}), x)
    _close(t3.forward(x), 3 * x[0] * x ** 2, 1e-15)
    _close(t3.jacobian(x), np.diag(6 * x[0] * x) + np.outer(3 * x ** 2, [1.0, 0.0]), 1e-15)
    # has_aux, for the transforms' has_aux=: the auxiliary data passes through
    def value_aux_grad(x):
        (value, aux), g = _nested.value_and_grad(lambda a: (np.sum(a ** 3), a * 2.0), 0,
                                                 (x,), has_aux=True)
        return value, aux, g

    t4 = tapejit.record(value_aux_grad, x)
    _close(t4.forward(x), np.concatenate([[np.sum(x ** 3)], 2 * x, 3 * x ** 2]), 1e-15)


def _op_case(op, m, kinks_apart=False):
    """A sum over ``m`` points of op ``op`` (its operands side by side in ``x``), and a
    point from its test domain with the op's edge cases planted (derivative orders of
    ``polygamma`` made integers); with ``kinks_apart``, moved off kinks."""
    X = sample(op, m, 0)
    X = np.where(np.isfinite(X), X, np.mean(op.domain, axis=1))  # planted NaN, inf: off
    if kinks_apart and op.kink is not None:
        X[:, 0] += np.where(op.kink(*X.T) < 1e-3, 0.05, 0.0)
    fn = spec(op)

    def f(x):
        parts = [x[k * m : (k + 1) * m] for k in range(op.arity)]
        return np.sum(np.sin(fn(*parts) * 0.7 + 0.1 * x[:m]))

    return f, X.T.ravel().copy()


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_first_and_second_order(op):
    """For every op of the table, the recorded gradient and Hessian (built from its
    ``partials`` evaluated on tracers) equal the kernels' (second order from its
    ``second`` expressions)."""
    f, x = _op_case(op, 5)
    tape = tapejit.record(lambda x: (grad(f)(x), hessian(f)(x)), x)
    got = tape.forward(x)
    n = x.size
    _close(got[:n], tapejit.grad(f)(x), 1e-13)
    _close(got[n:].reshape(n, n), tapejit.hessian(f)(x), 1e-12)


@pytest.mark.parametrize("op", [op for op in OPS if ZERO_DERIVATIVE not in op.flags],
                         ids=lambda op: op.name)
def test_every_op_third_order(op, central_diff):
    """Every op differentiates to any order inside a recording: the recorded third
    derivative (whose partials reach the table's ops again, ``polygamma`` and
    ``sinc_derivative`` at the next order) equals central differences of the kernels'
    Hessian, away from kinks (as the other per-op tests)."""
    f, x = _op_case(op, 2, kinks_apart=True)
    if op.kink is not None:
        assert np.min(op.kink(*x.reshape(op.arity, -1))) > 1e-3
    third = tapejit.record(lambda x: jacobian(hessian(f))(x), x).forward(x)
    n = x.size
    m = x.size // op.arity  # an operand without derivative (an order n) is held fixed
    fixed = tuple(k * m + i for k in fixed_operands(op) for i in range(m))
    fd = central_diff(lambda X: np.stack([tapejit.hessian(f)(z) for z in X]), x[None, :],
                      h=1e-5, fixed=fixed)[0]
    free = np.setdiff1d(np.arange(n), fixed)  # f also reads operand 0 outside the op
    sub = np.ix_(free, free, free)
    np.testing.assert_allclose(third.reshape(n, n, n)[sub], fd[sub], rtol=1e-5,
                               atol=1e-6 * max(1.0, np.abs(fd[sub]).max()))


def test_partial_without_a_traced_counterpart_says_so(monkeypatch):
    """An op whose partial calls a helper that is no op's value (every op of this
    version has none: here ``sin``'s is replaced) is refused by name when nested
    differentiation meets it, never differentiated wrongly."""
    import dataclasses

    from tapejit import _ops

    sin = dataclasses.replace(_ops.BY_NAME["sin"], partials=("_no_such_helper(a)",))
    monkeypatch.setitem(_ops.BY_NAME, "sin", sin)
    _nested._partial_code.cache_clear()
    try:
        with pytest.raises(tapejit.TracingError, match=r"nested differentiation through "
                                                        r"sin is not supported yet"):
            tapejit.record(lambda x: grad(lambda z: np.sum(np.sin(z)))(x), np.ones(2))
    finally:
        _nested._partial_code.cache_clear()


def test_family_without_a_traced_rule_says_so(monkeypatch):
    """A family that has no ``vjp`` rule (every family of this version has one: here
    ``cholesky``'s is removed) is refused by name when nested differentiation meets it."""
    import dataclasses

    from tapejit._program import FAMILIES

    chol = next(f for f in FAMILIES.values() if f.name == "cholesky")
    monkeypatch.setitem(FAMILIES, chol.opcode, dataclasses.replace(chol, vjp=None))

    def f(x):
        A = np.array([[2.0, 0.5], [0.5, 1.0]]) + np.eye(2) * x
        return np.sum(np.linalg.cholesky(A))

    with pytest.raises(tapejit.TracingError, match=r"nested differentiation through "
                                                    r"cholesky .* not supported yet"):
        tapejit.record(lambda x: grad(f)(x), np.array([1.0, 2.0]))


def test_batched_inside_a_recording_is_refused():
    with pytest.raises(tapejit.TracingError, match="batched=True"):
        tapejit.record(lambda x: grad(lambda z: np.sum(z ** 2), batched=True)(x),
                       np.ones(2))


def test_through_an_inlined_tape():
    """A tape called inside the differentiated function is inlined there, and
    differentiated like the rest."""
    def rosen(x):
        return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    inner = tapejit.record(rosen, np.zeros(3))
    x = np.array([0.3, -0.2, 0.9])
    tape = tapejit.record(lambda x: hessian(lambda z: 2.0 * inner(z) + np.sum(z))(x), x)
    _close(tape.forward(x).reshape(3, 3), 2.0 * tapejit.hessian(rosen)(x), 1e-14)


@pytest.mark.parametrize("case", ["cholesky", "eigvalsh_L", "eigvalsh_U", "eigh_U",
                                  "triangular_upper_unit", "triangular_lower_T",
                                  "svd_values_square"])
def test_factorizations_read_one_triangle_as_the_kernels_do(case):
    """Matrices whose unread triangle differs from the read one: the recorded Hessian
    equals the kernels' (their second-order rules), so the unread entries get no
    derivative in nested differentiation either."""
    from tapejit.linalg import solve_triangular

    B = np.array([[3.0, 0.5, 0.1], [0.3, 2.5, -0.2], [0.1, 0.4, 2.8]])

    def mat(x):  # not symmetric: its two triangles differ
        return B + np.outer(x, np.cos(x)) * 0.3

    fs = {
        "cholesky": lambda x: np.sum(np.linalg.cholesky(mat(x)) ** 3),
        "eigvalsh_L": lambda x: np.sum(np.linalg.eigvalsh(mat(x)) ** 3),
        "eigvalsh_U": lambda x: np.sum(np.linalg.eigvalsh(mat(x), UPLO="U") ** 3),
        "eigh_U": lambda x: np.sum(np.linalg.eigh(mat(x), UPLO="U")[1][:, 1] ** 2 * x),
        "triangular_upper_unit": lambda x: np.sum(
            solve_triangular(mat(x), np.sin(x), lower=False, unit_diagonal=True) ** 3),
        "triangular_lower_T": lambda x: np.sum(
            solve_triangular(mat(x), np.stack([x, x ** 2], 1), trans=1, lower=True) ** 3),
        "svd_values_square": lambda x: np.sum(np.linalg.svd(mat(x), compute_uv=False) ** 3),
    }
    f = fs[case]
    x = np.array([0.4, -0.3, 0.8])
    tape = tapejit.record(lambda x: hessian(f)(x), x)
    _close(tape.forward(x).reshape(3, 3), tapejit.hessian(f)(x), 1e-12)


_X = np.arange(12.0).reshape(4, 3) / 10.0
_BROADCASTS = {
    "scalar_over_vector": lambda x: np.sum(x[0] * x ** 2) + np.sum(np.sin(x[1]) / (1 + x ** 2)),
    "rows_and_columns": lambda x: (
        np.sum(np.tanh(_X @ np.reshape(x[:3] * x[3], (3, 1)) + x[:1]) ** 2)
        + np.sum(np.tanh(_X * x[:3] + x[1:4]) ** 2)),
    "outer": lambda x: np.sum(np.outer(x, x) ** 2 * np.arange(16.0).reshape(4, 4)),
    "traced_select": lambda x: np.sum(np.where(x > x[1], x * x[2], np.exp(x)) ** 2),
}


@pytest.mark.parametrize("name", sorted(_BROADCASTS))
def test_broadcast_operands_sum_their_adjoints(name):
    """Operands broadcast over many elements (a scalar, a row, a column) receive the
    sum of their adjoints: recorded gradient and Hessian equal the kernels'."""
    f = _BROADCASTS[name]
    x = np.array([0.4, -0.3, 0.8, 1.1])
    got = tapejit.record(lambda x: (grad(f)(x), hessian(f)(x)), x).forward(x)
    _close(got[:4], tapejit.grad(f)(x), 1e-14)
    _close(got[4:].reshape(4, 4), tapejit.hessian(f)(x), 1e-13)
