"""Sparsity patterns from the tape, colourings, and sparse Jacobians and Hessians.

Every pattern is checked against dense derivatives at random points: it must contain
every nonzero (a sparse result recovered through a colouring of it must equal the dense
one), and where the program has no conservative rule and no cancellation, it must equal
the union of the nonzeros over a few random points.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

import tapejit
from tapejit import _colouring, _sparsity
from tapejit._program import Program
from tapejit._timed_choice import TRIALS, TimedChoice

RTOL = 1e-10


# ---------------------------------------------------------------------------------------
# random programs: block instructions with strides, and families
# ---------------------------------------------------------------------------------------
N_IN = 12


def _unary(rng):
    return rng.choice([np.sin, np.cos, np.tanh, np.exp, np.arctan, lambda u: u * u,
                       lambda u: -u, lambda u: 2.0 * u + 1.0, lambda u: np.sqrt(2.0 + u),
                       np.abs])


def _binary(rng, families):
    # operands may overlap: no op here has a derivative that cancels when a is b
    ops = [np.add, np.multiply, lambda a, b: a / (2.0 + b * b), np.hypot]
    if families == "all":  # cancellation (a - a), and derivatives zero at some points
        ops += [np.subtract, np.arctan2, lambda a, b: np.where(a > b, a, b * b),
                lambda a, b: a * (b > 0.5)]
    return rng.choice(ops)


def random_program(seed: int, families: str = "exact"):
    """A random vector function of ``N_IN`` inputs (and two parameters).

    ``families="exact"``: elementwise blocks over strided and reversed slices,
    ``matmul`` (both operands traced, or one a constant without zeros), ``sum`` along an
    axis, ``prod``, ``cumsum``, ``cumprod``; ``"all"`` also ``subtract`` and
    ``arctan2`` (which cancel on overlapping operands), ``where`` and products with
    comparisons (derivatives zero at some points) and ``max``, ``solve``, ``cholesky``
    and ``det`` (conservative rules).
    """
    plan = np.random.default_rng(seed)
    steps = []
    for _ in range(plan.integers(4, 9)):
        kinds = ["unary", "binary", "binary", "param", "matmul", "sum", "prod", "cumsum",
                 "cumprod"]
        if families == "all":
            kinds += ["max", "solve", "cholesky", "det"]
        steps.append((str(plan.choice(kinds)), int(plan.integers(1 << 30))))

    def f(x, p):
        pool = [x, x[::2], x[::-1], x[1:7]]
        for kind, s in steps:
            rng = np.random.default_rng(s)

            def pick(size=None, rng=rng):
                cands = [v for v in pool if size is None or v.size >= size]
                v = cands[rng.integers(len(cands))]
                if size is None:
                    return v
                start = int(rng.integers(v.size - size + 1))
                return v[start : start + size]

            if kind == "unary":
                out = _unary(rng)(pick())
            elif kind == "binary":
                a = pick()
                out = _binary(rng, families)(a, pick(a.size))
            elif kind == "param":
                out = p[0] * pick() + p[1]
            elif kind == "matmul":
                A = pick(6).reshape(2, 3)
                B = pick(6).reshape(3, 2) if rng.random() < 0.5 else rng.uniform(1, 2, (3, 2))
                out = (A @ B if rng.random() < 0.5 else (A.T @ B.T).T).ravel()
            elif kind == "sum":
                out = np.sum(pick(6).reshape(2, 3), axis=int(rng.integers(2)))
            elif kind == "prod":
                out = np.prod(pick(4).reshape(2, 2), axis=int(rng.integers(2)))
            elif kind == "cumsum":
                out = np.cumsum(pick(6).reshape(3, 2), axis=int(rng.integers(2))).ravel()
            elif kind == "cumprod":
                out = np.cumprod(1.0 + 0.1 * pick(4))
            elif kind == "max":
                out = np.max(pick(6).reshape(2, 3), axis=1)
            elif kind == "solve":
                M = np.diag(np.full(2, 3.0)) + 0.1 * pick(4).reshape(2, 2)
                out = np.linalg.solve(M, pick(2))
            elif kind == "cholesky":
                a = pick(4).reshape(2, 2)
                out = np.linalg.cholesky(a @ a.T + 2.0 * np.eye(2)).ravel()
            else:
                out = np.atleast_1d(np.linalg.det(np.eye(2) + 0.1 * pick(4).reshape(2, 2)))
            pool.append(out)
        return np.concatenate([np.atleast_1d(v) for v in pool[4:]])

    return f


def points(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, (n, N_IN))


PARAMS = np.array([0.7, -0.3])
SEEDS = range(24)


def union_of_nonzeros(mats: np.ndarray) -> np.ndarray:
    return (mats != 0).any(axis=0)


def _scalar(f):
    def h(x, p):
        y = f(x, p)
        return np.sum(np.sin(y) * y[::-1]) + np.sum(y[: y.size // 2]) * p[0]
    return h


# ---------------------------------------------------------------------------------------
# patterns
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("families", ["exact", "all"])
@pytest.mark.parametrize("seed", SEEDS)
def test_jacobian_pattern_of_random_programs(seed, families):
    f = random_program(seed, families)
    X = points(seed, 4)
    tape = tapejit.record(f, X[0], PARAMS, argnums=0)
    pat = tape.jacobian_sparsity()
    assert pat.shape == (tape.n_outputs, N_IN) and pat.dtype == bool
    J = tape.jacobian(X, PARAMS)
    seen = union_of_nonzeros(J)
    dense = pat.toarray()
    assert not (seen & ~dense).any(), "a nonzero outside the pattern"
    if families == "exact":
        np.testing.assert_array_equal(dense, seen)
    # forward and backward propagation give the same pattern
    p = Program.from_tape(tape)
    S, Y = _sparsity.input_sets(p), _sparsity.output_sets(p)
    nd = p.first_adjoint
    fwd = np.zeros_like(dense)
    for o, slot in enumerate(p.outputs.tolist()):
        fwd[o, sorted(S[slot])] = True
    bwd = np.zeros_like(dense)
    for i in range(N_IN):
        bwd[sorted(Y[nd + i]), i] = True
    np.testing.assert_array_equal(fwd, dense)
    np.testing.assert_array_equal(bwd, dense)


@pytest.mark.parametrize("families", ["exact", "all"])
@pytest.mark.parametrize("seed", SEEDS)
def test_hessian_pattern_of_random_programs(seed, families):
    f = _scalar(random_program(seed, families))
    X = points(seed, 4)
    tape = tapejit.record(f, X[0], PARAMS, argnums=0)
    pat = tape.hessian_sparsity()
    dense = pat.toarray()
    assert pat.dtype == bool and (dense == dense.T).all()
    H = tape.hessian(X, PARAMS)
    seen = union_of_nonzeros(H)
    assert not (seen & ~dense).any(), "a nonzero outside the pattern"


def test_exact_patterns_of_known_functions():
    n = 9

    def banded(x):
        return np.sum(np.sin(x[1:] * x[:-1])) + np.sum(x[2:] ** 3 * x[:-2])

    tape = tapejit.record(banded, np.ones(n))
    i, j = np.indices((n, n))
    np.testing.assert_array_equal(tape.hessian_sparsity().toarray(), abs(i - j) <= 2)
    np.testing.assert_array_equal(tape.jacobian_sparsity().toarray(), np.ones((1, n), bool))

    def linear_then_square(x):  # x0 + 2 x1 is linear: only the square couples
        return (x[0] + 2.0 * x[1]) ** 2 + x[2] + np.sum(x[3:] * 0.5)

    tape = tapejit.record(linear_then_square, np.ones(5))
    want = np.zeros((5, 5), bool)
    want[:2, :2] = True
    np.testing.assert_array_equal(tape.hessian_sparsity().toarray(), want)

    def steps(x):  # comparisons, floor and stop_gradient pass nothing on
        return np.floor(x[0]) * x[1] + (x[2] > 0) * x[3] + tapejit.stop_gradient(x[4]) * x[5]

    tape = tapejit.record(steps, np.ones(6))
    np.testing.assert_array_equal(tape.jacobian_sparsity().toarray(),
                                  [[False, True, False, True, False, True]])
    assert tape.hessian_sparsity().nnz == 0


def test_parameters_count_as_nonzero():
    def f(x, p):
        return p[0] * x[0] * x[1] + x[2] * p[1]

    tape = tapejit.record(f, np.ones(3), np.zeros(2), argnums=0)
    # p = 0 makes the derivative zero at this point, but not the pattern (any p)
    np.testing.assert_array_equal(tape.jacobian_sparsity().toarray(), [[True, True, True]])
    h = tape.hessian_sparsity().toarray()
    assert h[0, 1] and h[1, 0] and h.sum() == 2
    assert np.count_nonzero(tape.hessian(np.ones(3), np.zeros(2))) == 0
    assert np.count_nonzero(tape.hessian(np.ones(3), np.ones(2))) == 2


def test_matmul_and_reduction_patterns_are_not_all_to_all():
    def f(x):
        A = x[:6].reshape(2, 3)
        B = x[6:12].reshape(3, 2)
        return np.concatenate([(A @ B).ravel(), np.sum(x[:6].reshape(2, 3), axis=1),
                               np.cumsum(x[:3])])

    tape = tapejit.record(f, np.ones(12))
    pat = tape.jacobian_sparsity().toarray()
    A = np.arange(6).reshape(2, 3)
    B = 6 + np.arange(6).reshape(3, 2)
    for i in range(2):
        for j in range(2):
            want = np.zeros(12, bool)
            want[A[i]] = want[B[:, j]] = True
            np.testing.assert_array_equal(pat[2 * i + j], want)
    np.testing.assert_array_equal(pat[4], np.isin(np.arange(12), A[0]))
    np.testing.assert_array_equal(pat[7], np.isin(np.arange(12), [0, 1]))
    np.testing.assert_array_equal(pat[8], np.isin(np.arange(12), [0, 1, 2]))


def test_products_with_sparse_constant_matrices_have_their_pattern():
    A = sp.random_array((30, 40), density=0.1, rng=1).toarray()
    B = sp.random_array((40, 3), density=0.3, rng=2).toarray()

    def f(x):
        X = x.reshape(40, 3)
        return np.concatenate([(A @ X).ravel(), (X.T @ A.T).ravel(),
                               (x.reshape(3, 40) @ B).ravel()])

    tape = tapejit.record(f, np.ones(120))
    J = tape.jacobian(np.random.default_rng(0).normal(size=120))
    pat = tape.jacobian_sparsity().toarray()
    np.testing.assert_array_equal(pat, J != 0)
    p = Program.from_tape(tape)  # the backward propagation too
    Y = _sparsity.output_sets(p)
    bwd = np.zeros_like(pat)
    for i in range(120):
        bwd[sorted(Y[p.first_adjoint + i]), i] = True
    np.testing.assert_array_equal(bwd, pat)
    np.testing.assert_allclose(tape.jacobian(np.ones(120), sparse=True).toarray(),
                               tape.jacobian(np.ones(120)), rtol=1e-13)


def _loop_prod(v):
    p = v[0]
    for k in range(1, v.shape[0]):
        p = p * v[k]
    return p


def _loop_cumprod(v):
    out = [v[0]]
    for k in range(1, v.shape[0]):
        out.append(out[-1] * v[k])
    return np.stack(out)


_REPEATS = np.array([0, 1, 0, 2, 3, 3, 4])  # inputs 0 and 3 in two elements each


@pytest.mark.parametrize(("reduced", "unrolled"), [
    (lambda x: np.prod(x), lambda x: _loop_prod(x)),
    (lambda x: np.prod(x[_REPEATS]), lambda x: _loop_prod(x[_REPEATS])),
    (lambda x: np.sum(np.sin(np.prod(x[:6].reshape(2, 3), axis=0))),
     lambda x: sum(np.sin(_loop_prod(x[:6].reshape(2, 3)[:, j])) for j in range(3))),
    (lambda x: np.prod(x[:3] ** 2) + np.prod(x[3:5] + x[5:7]),
     lambda x: _loop_prod(x[:3] ** 2) + _loop_prod(x[3:5] + x[5:7])),
    (lambda x: np.prod(np.array([x[0], 2.0, x[1]])) + x[2] * np.prod(x[3:4]),
     lambda x: x[0] * 2.0 * x[1] + x[2] * x[3]),
    (lambda x: np.dot(np.cumprod(x)[:4], np.arange(1.0, 5.0)),
     lambda x: np.dot(_loop_cumprod(x)[:4], np.arange(1.0, 5.0))),
    (lambda x: np.cumprod(x[_REPEATS])[-1] + np.cumprod(x[_REPEATS])[2],
     lambda x: _loop_cumprod(x[_REPEATS])[-1] + _loop_cumprod(x[_REPEATS])[2]),
    (lambda x: np.sum(np.cumprod(x[:6].reshape(3, 2), axis=0)[:2]),
     lambda x: np.sum(np.stack([_loop_cumprod(x[:6].reshape(3, 2)[:, j])[:2]
                                for j in range(2)]))),
], ids=["prod", "repeated", "axis", "squares-sums", "constants", "cumprod",
        "cumprod-repeated", "cumprod-axis"])
def test_product_hessian_patterns_are_exact(reduced, unrolled):
    # a product is linear in each element: its pattern pairs different elements only,
    # the unrolled loop's, and every entry is nonzero somewhere
    rng = np.random.default_rng(7)
    x0 = rng.uniform(0.5, 1.5, 7)
    tape = tapejit.record(reduced, x0)
    pat = tape.hessian_sparsity().toarray()
    np.testing.assert_array_equal(pat, tapejit.record(unrolled, x0).hessian_sparsity()
                                  .toarray())
    X = rng.uniform(0.5, 1.5, (4, 7))
    np.testing.assert_array_equal(pat, union_of_nonzeros(tape.hessian(X)))
    np.testing.assert_allclose(tape.hessian(X, sparse=True).toarray(), tape.hessian(X),
                               rtol=RTOL, atol=1e-13)


def test_product_pattern_of_a_long_lane():
    n = 300  # every pair but the diagonal, from n - 1 pairs of unions
    tape = tapejit.record(lambda x: np.prod(x), np.ones(n))
    np.testing.assert_array_equal(tape.hessian_sparsity().toarray(), ~np.eye(n, dtype=bool))
    tape = tapejit.record(lambda x: np.prod(x[np.arange(2 * n) % n]), np.ones(n))
    assert tape.hessian_sparsity().toarray().all()


def test_hessian_sparsity_needs_one_output():
    tape = tapejit.record(lambda x: x * x, np.ones(3))
    with pytest.raises(ValueError, match="one output"):
        tape.hessian_sparsity()


def test_patterns_are_kept_and_copied():
    tape = tapejit.record(lambda x: np.sum(x[1:] * x[:-1]), np.ones(5))
    a = tape.hessian_sparsity()
    a.data[:] = False  # the caller's copy
    assert tape.hessian_sparsity().toarray().sum() == 8


# ---------------------------------------------------------------------------------------
# colourings
# ---------------------------------------------------------------------------------------
def random_symmetric(seed: int, n: int, density: float) -> sp.csr_array:
    m = sp.random_array((n, n), density=density, rng=seed, format="csr") != 0
    return sp.csr_array(m + m.T + sp.eye_array(n, dtype=bool, format="csr"))


def banded(n: int, half: int) -> sp.csr_array:
    return sp.csr_array(sp.diags_array([np.ones(n - abs(k)) for k in range(-half, half + 1)],
                                       offsets=range(-half, half + 1)) != 0)


def arrowhead(n: int) -> sp.csr_array:
    d = np.eye(n, dtype=bool)
    d[0] = d[:, 0] = True
    return sp.csr_array(d)


def is_star_colouring(pattern, colour) -> bool:
    adj = (pattern.toarray() & ~np.eye(pattern.shape[0], dtype=bool))
    if (adj & (colour[:, None] == colour[None, :])).any():
        return False
    n = len(colour)
    for v in range(n):  # every path v - w - x - y on two colours is forbidden
        for w in np.flatnonzero(adj[v]):
            for x in np.flatnonzero(adj[w]):
                if x == v or colour[x] != colour[v]:
                    continue
                for y in np.flatnonzero(adj[x]):
                    if y != w and colour[y] == colour[w]:
                        return False
    return True


@pytest.mark.parametrize("seed", range(12))
def test_star_colouring_is_a_star_colouring(seed):
    pattern = random_symmetric(seed, 40, 0.05 + 0.01 * seed)
    colour = _colouring.star_colouring(pattern)
    assert is_star_colouring(pattern, colour)
    # and it recovers every symmetric matrix of that pattern exactly
    rng = np.random.default_rng(seed)
    H = sp.csr_array(pattern, dtype=float)
    H.data[:] = rng.normal(size=H.nnz)
    H = (H + H.T).toarray()
    comp = _colouring.hessian_compression(pattern)
    HS = H @ comp.seeds.T  # (n, n_colours)
    data = HS.T.ravel()[comp.take]
    rows, cols = np.nonzero(pattern.toarray())
    np.testing.assert_array_equal(data, H[rows, cols])


@pytest.mark.parametrize("seed", range(8))
def test_column_colouring_separates_columns_that_share_a_row(seed):
    J = sp.random_array((30, 50), density=0.08, rng=seed, format="csr") != 0
    colour = _colouring.column_colouring(J)
    d = J.toarray().astype(int)
    same = colour[:, None] == colour[None, :]
    shared = (d.T @ d) > 0
    assert not (shared & same & ~np.eye(50, dtype=bool)).any()


@pytest.mark.parametrize(("name", "pattern"), [
    ("tridiagonal", banded(200, 1)), ("pentadiagonal", banded(200, 2)),
    ("band 5", banded(300, 5)), ("arrowhead", arrowhead(100)),
    ("random", random_symmetric(3, 200, 0.02)),
])
def test_star_colours_within_one_of_distance2(name, pattern):
    star = int(_colouring.star_colouring(pattern).max()) + 1
    d2 = int(_colouring.distance2_colouring(pattern).max()) + 1
    assert star <= d2 + 1, (name, star, d2)
    if name == "arrowhead":
        assert star == 2 and d2 == 100


# ---------------------------------------------------------------------------------------
# sparse evaluation
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
@pytest.mark.parametrize("seed", range(0, 24, 3))
def test_sparse_jacobian_equals_dense(seed, mode):
    f = random_program(seed, "all")
    X = points(seed, 5)
    tape = tapejit.record(f, X[0], PARAMS, argnums=0)
    J1 = tape.jacobian(X[0], PARAMS, sparse=True, mode=mode)
    assert isinstance(J1, sp.csr_array) and J1.shape == (tape.n_outputs, N_IN)
    np.testing.assert_allclose(J1.toarray(), tape.jacobian(X[0], PARAMS), rtol=RTOL,
                               atol=1e-13)
    Js = tape.jacobian(X, PARAMS, sparse=True, mode=mode)
    assert isinstance(Js, tapejit.SparseStack) and len(Js) == 5
    np.testing.assert_allclose(Js.toarray(), tape.jacobian(X, PARAMS), rtol=RTOL, atol=1e-13)
    np.testing.assert_array_equal(Js[2].toarray(), Js.toarray()[2])
    # per-point parameters
    P = np.random.default_rng(seed).normal(size=(5, 2))
    np.testing.assert_allclose(tape.jacobian(X, P, sparse=True, mode=mode).toarray(),
                               tape.jacobian(X, P), rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize("seed", range(0, 24, 2))
def test_sparse_hessian_equals_dense(seed):
    f = _scalar(random_program(seed, "all"))
    X = points(seed, 4)
    tape = tapejit.record(f, X[0], PARAMS, argnums=0)
    H1 = tape.hessian(X[0], PARAMS, sparse=True)
    assert isinstance(H1, sp.csr_array)
    np.testing.assert_allclose(H1.toarray(), tape.hessian(X[0], PARAMS), rtol=RTOL,
                               atol=1e-12)
    assert (H1 != H1.T).nnz == 0  # exactly symmetric
    Hs = tape.hessian(X, PARAMS, sparse=True)
    np.testing.assert_allclose(Hs.toarray(), tape.hessian(X, PARAMS), rtol=RTOL, atol=1e-12)


def test_sparse_hessian_uses_few_colours_on_a_chain():
    n = 400

    def chain(x):
        return np.sum((x[1:] - x[:-1]) ** 2 * np.cos(x[1:])) + np.sum(np.exp(x))

    tape = tapejit.record(chain, np.zeros(n))
    x = np.random.default_rng(0).normal(size=n)
    H = tape.hessian(x, sparse=True)
    assert H.nnz == 3 * n - 2
    np.testing.assert_allclose(H.toarray(), tape.hessian(x), rtol=RTOL, atol=1e-12)
    assert _colouring.hessian_compression(tape.hessian_sparsity()).n_colours == 3


@pytest.mark.kernels  # the generic tier's calls are not timed, so would take one way only
@pytest.mark.parametrize("which", ["hessian", "jacobian"])
def test_colours_at_one_point_give_the_same_result_either_way(which):
    # A few colours at one point run in one sweep, or one sweep per colour, whichever
    # measured faster on the tape: the first calls take each way in turn, then the
    # faster; every call gives the same result (Hessians: the same bits).
    n = 300

    def hess(x):
        return np.sum((x[1:] - x[:-1]) ** 2 * np.cos(x[1:])) + np.sum(np.exp(-x) * x)

    def jac(x):
        return (x[1:] - x[:-1] ** 2) * np.sin(x[:-1]) - x[1:]

    tape = tapejit.record(hess if which == "hessian" else jac, np.zeros(n))
    x = np.random.default_rng(1).normal(size=n)
    if which == "hessian":
        got = [tape.hessian(x, sparse=True) for _ in range(2 * TRIALS + 2)]
        dense, mode = tape.hessian(x), "hessian"
    else:
        got = [tape.jacobian(x, sparse=True, mode="forward") for _ in range(2 * TRIALS + 2)]
        dense, mode = tape.jacobian(x), "forward"
    choice = tape._sparse["colours_" + mode]
    assert choice.measured == (TRIALS, TRIALS) and choice.choice in (0, 1)
    for r in got[1:]:
        if which == "hessian":
            assert r.data.tobytes() == got[0].data.tobytes()
        else:  # equal values (a zero's sign may differ between the two kinds of sweep)
            np.testing.assert_array_equal(r.data, got[0].data)
    np.testing.assert_allclose(got[0].toarray(), dense, rtol=RTOL, atol=1e-12)


def test_timed_choice_takes_turns_then_keeps_the_faster():
    ran = []

    def slow():
        ran.append(0)
        time.sleep(0.003)
        return "same"

    def fast():
        ran.append(1)
        return "same"

    choice = TimedChoice()
    calls = 2 * TRIALS + 3
    assert [choice.run((slow, fast), lambda: True) for _ in range(calls)] == ["same"] * calls
    assert ran == [0, 1] * TRIALS + [1] * 3 and choice.choice == 1
    # calls whose time must not count (the generic tier) are not timed: no choice yet
    ran.clear()
    untimed = TimedChoice()
    for _ in range(calls):
        untimed.run((slow, fast), lambda: False)
    assert untimed.measured == (0, 0) and untimed.choice is None and ran == [0] * calls


def test_sparse_results_follow_the_guards():
    def f(x):
        if x[0] > 0:
            return np.sum(x[1:] * x[:-1])
        return np.sum(x)

    tape = tapejit.record(f, np.ones(4))
    X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(tapejit.BranchError):
        tape.hessian(X, sparse=True)
    Hs, ok = tape.hessian(X, sparse=True, check="mask")
    np.testing.assert_array_equal(ok, [True, False])
    assert np.isnan(Hs.data[1]).all() and not np.isnan(Hs.data[0]).any()
    J, ok1 = tape.jacobian(X[1], sparse=True, check="mask")
    assert ok1 is False and np.isnan(J.data).all()


def test_sparse_bad_arguments():
    tape = tapejit.record(lambda x: x[1:] * x[:-1], np.ones(4))
    with pytest.raises(ValueError, match="out="):
        tape.jacobian(np.ones(4), out=np.empty((3, 4)), sparse=True)
    with pytest.raises(ValueError, match="mode"):
        tape.jacobian(np.ones(4), mode="sideways", sparse=True)
    with pytest.raises(ValueError, match="shape"):
        tape.jacobian(np.ones(5), sparse=True)
    with pytest.raises(ValueError, match="one output"):
        tape.hessian(np.ones(4), sparse=True)
    with pytest.raises(ValueError, match="check"):
        tape.jacobian(np.ones(4), sparse=True, check="ignore")


def test_sparse_stack():
    tape = tapejit.record(lambda x: np.sum(x[1:] ** 2 * x[:-1]), np.ones(5))
    X = np.random.default_rng(1).normal(size=(3, 5))
    st = tape.hessian(X, sparse=True)
    assert st.shape == (5, 5) and st.data.shape == (3, st.pattern.nnz)
    assert [m.shape for m in st] == [(5, 5)] * 3
    np.testing.assert_array_equal(st[-1].toarray(), st.toarray()[2])
    with pytest.raises(IndexError):
        st[3]
    assert "3 points" in repr(st)


@pytest.mark.parametrize("seed", range(6))
def test_banded_colouring_is_valid_and_used_only_when_optimal(seed):
    rng = np.random.default_rng(seed)
    # widths 3 to 7 and 9 to 13 (colours filled in strides below 8, tiled from 8)
    n, half = 60, int(rng.integers(1, 4)) + (3 * (seed % 2))
    band = banded(n, half)
    colour = _colouring.banded_colouring(band)
    assert colour is not None and colour.max() + 1 == 2 * half + 1
    np.testing.assert_array_equal(colour, np.arange(n) % (2 * half + 1))
    assert is_star_colouring(band, colour)
    # a band with holes in every row: j mod w would not be optimal, so not used
    holes = band.toarray() & ~(np.abs(np.subtract.outer(np.arange(n), np.arange(n))) == 1)
    assert _colouring.banded_colouring(sp.csr_array(holes)) is None
    # a Jacobian whose rows span w columns, one row full: columns j mod w
    J = sp.random_array((40, n), density=0.05, rng=seed).toarray() != 0
    J[:, :] = False
    for i in range(40):
        J[i, i : i + 4] = rng.random(4) < 0.6
    J[7, 7:11] = True
    colour = _colouring.banded_colouring(sp.csr_array(J))
    np.testing.assert_array_equal(colour, np.arange(n) % 4)
    d = J.astype(int)
    shared = (d.T @ d) > 0
    assert not (shared & (colour[:, None] == colour[None, :]) & ~np.eye(n, dtype=bool)).any()


# ---------------------------------------------------------------------------------------
# Float32Tape: the float64 tape's patterns and colourings, float32 values
# ---------------------------------------------------------------------------------------
def _counting(monkeypatch):
    """Count the colourings computed (patterns compressed) from here on."""
    calls = []
    for name in ("hessian_compression", "jacobian_compression"):
        real = getattr(_colouring, name)

        def counted(*args, real=real, name=name):
            calls.append(name)
            return real(*args)

        monkeypatch.setattr(_colouring, name, counted)
    return calls


def _rounded(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


@pytest.mark.parametrize("n", [None, 0, 5])
def test_float32_sparse_is_float64_sparse_at_the_rounded_points(n, monkeypatch):
    from tapejit import _float32

    monkeypatch.setattr(_float32, "_BLOCK", 2)  # several conversion blocks
    calls = _counting(monkeypatch)
    X = points(5, 1 if n is None else n)
    x = X[0] if n is None else X
    vector = tapejit.record(random_program(5, "all"), X[0] if len(X) else points(5, 1)[0],
                            PARAMS, argnums=0)
    scalar = tapejit.record(_scalar(random_program(5, "all")), points(5, 1)[0], PARAMS,
                            argnums=0)
    for tape, method, kw in ((vector, "jacobian", {"mode": "forward"}),
                             (vector, "jacobian", {"mode": "reverse"}),
                             (scalar, "hessian", {})):
        got = getattr(tape.astype(np.float32), method)(x, PARAMS, sparse=True, **kw)
        want = getattr(tape, method)(_rounded(x), _rounded(PARAMS), sparse=True, **kw)
        if n is None:
            assert isinstance(got, sp.csr_array)
        else:
            assert isinstance(got, tapejit.SparseStack) and len(got) == n
            np.testing.assert_array_equal(got.pattern.toarray(), want.pattern.toarray())
            assert got.toarray().dtype == np.float32
        assert got.data.dtype == np.float32
        np.testing.assert_array_equal(got.toarray(), want.toarray().astype(np.float32))
    # each tape coloured once per kind, for float64 and float32 calls together
    assert sorted(calls) == ["hessian_compression", "jacobian_compression",
                             "jacobian_compression"]


def test_float32_sparse_follows_the_guards():
    def f(x):
        if x[0] > 0:
            return np.sum(x[1:] * x[:-1])
        return np.sum(x)

    t32 = tapejit.record(f, np.ones(4)).astype(np.float32)
    X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(tapejit.BranchError, match="1 of 2"):
        t32.hessian(X, sparse=True)
    with pytest.raises(tapejit.BranchError, match="1 of 1"):
        t32.jacobian(X[1], sparse=True)
    Hs, ok = t32.hessian(X, sparse=True, check="mask")
    np.testing.assert_array_equal(ok, [True, False])
    assert Hs.data.dtype == np.float32 and np.isnan(Hs.data[1]).all()
    H, ok1 = t32.hessian(X[0], sparse=True, check="mask")
    assert ok1 and H.dtype == np.float32 and H.nnz == 6


# ---------------------------------------------------------------------------------------
# the transforms: one pattern and colouring per cached tape (branch)
# ---------------------------------------------------------------------------------------
def _branchy(x, y):
    if x[0] > 0:
        return np.sum(x[1:] * x[:-1]) + np.dot(y, y) * x[0]
    return np.sum(x ** 3) + y[0] * x[1]


def _vector(x, y):
    return np.concatenate([x[1:] * x[:-1], np.sin(y) * x[0]]).reshape(2, 2)


X_BRANCHES = np.array([[1.0, 2.0, 3.0], [-1.0, 2.0, 0.5], [2.0, 1.0, 0.5], [-2.0, 1.0, 1.0]])
Y_BRANCHES = np.random.default_rng(3).normal(size=(4, 2))


def test_transform_sparse_hessian_at_one_point(monkeypatch):
    calls = _counting(monkeypatch)
    def f(x, y):  # a function of its own: a tape cache of its own
        return _branchy(x, y)

    h, hs = tapejit.hessian(f), tapejit.hessian(f, sparse=True)
    for x, y in zip(X_BRANCHES, Y_BRANCHES, strict=True):
        H = hs(x, y)
        assert isinstance(H, sp.csr_array) and H.shape == (3, 3)
        np.testing.assert_allclose(H.toarray(), h(x, y), rtol=RTOL)
    # one colouring per branch, kept with its tape across calls
    assert calls == ["hessian_compression"] * 2 and len(hs.tape_cache) == 2
    blocks = tapejit.hessian(f, (0, 1), sparse=True)(X_BRANCHES[0], Y_BRANCHES[0])
    dense = tapejit.hessian(f, (0, 1))(X_BRANCHES[0], Y_BRANCHES[0])
    for i in range(2):
        for j in range(2):
            assert isinstance(blocks[i][j], sp.csr_array)
            np.testing.assert_allclose(blocks[i][j].toarray(), dense[i][j], rtol=RTOL)
    assert blocks[0][1].shape == (3, 2)


def test_transform_sparse_batches_join_the_branches_patterns():
    hs = tapejit.hessian(_branchy, batched=True, sparse=True)
    H = hs(X_BRANCHES, Y_BRANCHES)
    assert isinstance(H, tapejit.SparseStack) and len(H) == 4
    dense = tapejit.hessian(_branchy, batched=True)(X_BRANCHES, Y_BRANCHES)
    np.testing.assert_allclose(H.toarray(), dense, rtol=RTOL)
    # the union of the two branches' patterns: x0 x1 x2 chain and the diagonal
    want = (np.abs(np.subtract.outer(np.arange(3), np.arange(3))) == 1) | np.eye(3, dtype=bool)
    np.testing.assert_array_equal(H.pattern.toarray(), want)
    blocks = tapejit.hessian(_branchy, (0, 1), batched=True, sparse=True)(X_BRANCHES,
                                                                         Y_BRANCHES)
    dense = tapejit.hessian(_branchy, (0, 1), batched=True)(X_BRANCHES, Y_BRANCHES)
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(blocks[i][j].toarray(), dense[i][j], rtol=RTOL)
    one = hs(X_BRANCHES[:1], Y_BRANCHES[:1])  # points on one branch: its own pattern
    assert one.pattern.nnz == 4


@pytest.mark.parametrize("mode", ["auto", "forward", "reverse"])
def test_transform_sparse_jacobian(mode):
    x, y = X_BRANCHES[0], Y_BRANCHES[0]
    J = tapejit.jacobian(_vector, mode=mode, sparse=True)(x, y)
    assert isinstance(J, sp.csr_array) and J.shape == (4, 3)  # (2, 2) output flattened
    np.testing.assert_allclose(J.toarray(), tapejit.jacobian(_vector)(x, y).reshape(4, 3),
                               rtol=RTOL)
    both = tapejit.jacobian(_vector, (0, 1), mode=mode, sparse=True)(x, y)
    dense = tapejit.jacobian(_vector, (0, 1))(x, y)
    assert [b.shape for b in both] == [(4, 3), (4, 2)]
    for b, d in zip(both, dense, strict=True):
        np.testing.assert_allclose(b.toarray(), d.reshape(4, -1), rtol=RTOL)
    Js = tapejit.jacobian(_vector, (0, 1), mode=mode, batched=True, sparse=True)(
        X_BRANCHES, Y_BRANCHES)
    dense = tapejit.jacobian(_vector, (0, 1), batched=True)(X_BRANCHES, Y_BRANCHES)
    for b, d in zip(Js, dense, strict=True):
        assert isinstance(b, tapejit.SparseStack)
        np.testing.assert_allclose(b.toarray(), d.reshape(4, 4, -1), rtol=RTOL)


def test_transform_sparse_jacobian_with_aux():
    def f(x):
        return x[1:] * x[:-1], {"total": np.sum(x)}

    x = X_BRANCHES[0]
    J, aux = tapejit.jacobian(f, has_aux=True, sparse=True)(x)
    assert J.shape == (2, 3) and aux == {"total": 6.0}
    np.testing.assert_allclose(J.toarray(), tapejit.jacobian(f, has_aux=True)(x)[0])
    Js, aux = tapejit.jacobian(f, has_aux=True, batched=True, sparse=True)(X_BRANCHES)
    assert Js.shape == (2, 3) and Js.pattern.nnz == 4
    np.testing.assert_allclose(Js.toarray(), tapejit.jacobian(f, batched=True, has_aux=True)(
        X_BRANCHES)[0])
    np.testing.assert_allclose(aux["total"], X_BRANCHES.sum(axis=1))


def test_transform_sparse_inside_a_recording():
    hs = tapejit.hessian(lambda x: np.sum(x ** 3), sparse=True)
    with pytest.raises(tapejit.TracingError, match="sparse=False"):
        tapejit.record(lambda x: hs(x)[0, 0], np.ones(3))
