"""Contractions recorded as ``matmul`` family instructions, in every sweep.

Values against numpy; gradients against the complex step (exact to rounding: the test
functions are analytic), at 1e-10; Hessians against central differences of the tape's
own gradient and through hvp; many points against one point at a time. Data operands
(parameters, constants) get no adjoint work and are read in place.
"""

import numpy as np
import pytest

import tapejit

RNG = np.random.default_rng(19)


def _complex_grad(f, x):
    h = 1e-30
    return np.array([f(x + 1j * h * e).imag / h for e in np.eye(x.size)])


def _check(f, x, params=(), n_points=3):
    """Record ``f(x, *params)`` (params not differentiated) and check it."""
    tape = tapejit.record(f, x, *params, argnums=(0,))
    P = np.concatenate([np.ravel(p) for p in params]) if params else None
    fx = lambda z: f(z, *params)  # noqa: E731
    v, g = tape.value_and_grad(x, params=P)
    assert v == pytest.approx(float(fx(x)), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(g, _complex_grad(fx, x), rtol=1e-10, atol=1e-12)
    H = tape.hessian(x, params=P)
    eps = 1e-5
    Hn = np.array([(tape.value_and_grad(x + eps * e, params=P)[1]
                    - tape.value_and_grad(x - eps * e, params=P)[1]) / (2 * eps)
                   for e in np.eye(x.size)])
    np.testing.assert_allclose(H, Hn, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-12)
    X = x + RNG.normal(size=(n_points, x.size))
    V, G = tape.value_and_grad(X, params=P)
    HB = tape.hessian(X, params=P)
    for i in range(n_points):
        vi, gi = tape.value_and_grad(X[i], params=P)
        assert V[i] == pytest.approx(vi, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(G[i], gi, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(HB[i], tape.hessian(X[i], params=P), rtol=1e-10,
                                   atol=1e-10)
    if P is not None:  # the data per point, as rows
        V2, G2 = tape.value_and_grad(X, params=np.tile(P, (n_points, 1)))
        np.testing.assert_allclose(V2, V, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(G2, G, rtol=1e-12, atol=1e-12)
    return tape


def _family_count(tape):
    return int(np.count_nonzero(tape.opcodes == 128))  # the matmul family


SHAPES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)), ((2, 3), (3, 4)),
          ((2, 2, 3), (3, 4)), ((2, 3), (2, 3, 4)), ((2, 1, 2, 3), (3, 3, 2)),
          ((1, 1), (1, 1))]


@pytest.mark.parametrize("sa, sb", SHAPES)
def test_matmul_of_traced_operands_matches_numpy_in_every_sweep(sa, sb):
    na, nb = int(np.prod(sa)), int(np.prod(sb))

    def f(z):
        return np.sum(np.sin(z[:na].reshape(sa) @ z[na:].reshape(sb)))

    tape = _check(f, RNG.normal(size=na + nb))
    assert _family_count(tape) == 1


@pytest.mark.parametrize("sa, sb", SHAPES[:5])
def test_data_times_traced_is_one_instruction_reading_the_data_in_place(sa, sb):
    A = RNG.normal(size=sa)

    def left(z, A):
        return np.sum(np.sin(A @ z.reshape(sb)))

    def right(z, A):
        return np.sum(np.cos(z.reshape(sb).T @ A.T.reshape(sb[0], -1) if len(sb) == 2
                             else z.reshape(sb) @ A.reshape(sb[0], -1)))

    tape = _check(left, RNG.normal(size=int(np.prod(sb))), (A,))
    assert _family_count(tape) == 1
    _check(right, RNG.normal(size=int(np.prod(sb))), (A,))


def test_transposed_parameter_data_is_passed_transposed_not_copied():
    X = RNG.normal(size=(6, 3))

    def f(w, X):
        r = np.tanh(X @ w)
        return np.sum(np.sin(X.T @ r))

    tape = _check(f, RNG.normal(size=3), (X,))
    text = tape.listing()
    assert "trans_a=1" in text and "mul(" not in text  # no copy of X.T


def test_a_constant_matrix_is_read_from_the_pool():
    A = RNG.normal(size=(200, 4))  # more than 64 values: one run of the pool

    def f(w):
        return np.sum(np.sin(A @ w))

    tape = _check(f, RNG.normal(size=4))
    assert _family_count(tape) == 1 and tape.consts.size >= A.size


@pytest.mark.parametrize("spec, shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("ij,ij->", [(2, 3), (2, 3)]), ("ii->", [(3, 3)]),
    ("ii->i", [(3, 3)]), ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]), ("i,i", [(4,), (4,)]),
    ("ij->ji", [(2, 3)]), ("...ij,...jk", [(2, 2, 3), (3, 2)]), ("i,j->ij", [(2,), (3,)]),
    ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 2)]), ("ijk,jl->kil", [(2, 3, 2), (3, 2)]),
])
def test_einsum_matches_numpy(spec, shapes):
    sizes = [int(np.prod(s)) for s in shapes]
    cuts = np.concatenate([[0], np.cumsum(sizes)])

    def f(z):
        ops = [z[cuts[i] : cuts[i + 1]].reshape(s) for i, s in enumerate(shapes)]
        return np.sum(np.sin(np.einsum(spec, *ops)))

    _check(f, RNG.normal(size=sum(sizes)))


def test_einsum_with_an_optimized_path_matches_numpy():
    def f(z):
        a, b, c = z[:6].reshape(2, 3), z[6:12].reshape(3, 2), z[12:].reshape(2, 2)
        return np.sum(np.sin(np.einsum("ij,jk,kl->il", a, b, c, optimize="greedy")))

    _check(f, RNG.normal(size=16))


@pytest.mark.parametrize("fn", [
    lambda a, b: np.dot(a, b), lambda a, b: np.inner(a, b.T),
    lambda a, b: np.tensordot(a, b, axes=1),
    lambda a, b: np.tensordot(a.reshape(2, 3, 1), b.reshape(3, 2, 1), axes=([1, 2], [0, 2])),
    lambda a, b: np.dot(a.reshape(1, 2, 3), b),
])
def test_dot_inner_tensordot_vdot_match_numpy(fn):
    def f(z):
        return np.sum(np.sin(fn(z[:6].reshape(2, 3), z[6:].reshape(3, 2))))

    _check(f, RNG.normal(size=12))


def test_empty_and_size_one_axes():
    def f(z):
        a = z[:3].reshape(3, 1)
        empty = z[:0].reshape(0, 3) @ np.ones((3, 2))
        return np.sum(np.sin(a @ z[3:5].reshape(1, 2))) + np.sum(empty)

    _check(f, RNG.normal(size=5))
    out = tapejit.record(lambda z: z[:0].reshape(2, 0) @ z[:0].reshape(0, 3), np.ones(2))
    assert np.array_equal(out.forward(np.ones(2)), np.zeros(6))


def test_vdot_is_the_dot_of_the_flattened_operands():
    def f(z):
        return np.vdot(z[:6].reshape(2, 3), z[6:].reshape(3, 2).T)

    def g(z):
        return np.dot(z[:6], z[6:].reshape(3, 2).T.ravel())

    z = RNG.normal(size=12)
    a, b = tapejit.record(f, z), tapejit.record(g, z)
    assert a.value_and_grad(z)[0] == pytest.approx(float(g(z)), rel=1e-14)
    np.testing.assert_array_equal(a.value_and_grad(z)[1], b.value_and_grad(z)[1])


def test_a_tape_with_contractions_pickles_saves_and_loads(tmp_path):
    import pickle

    X = RNG.normal(size=(5, 3))
    tape = tapejit.record(lambda w, X: np.sum(np.sin(X @ w)), np.ones(3), X, argnums=(0,))
    other = pickle.loads(pickle.dumps(tape))
    w = RNG.normal(size=3)
    v, g = tape.value_and_grad(w, params=X.ravel())
    v2, g2 = other.value_and_grad(w, params=X.ravel())
    assert v2 == v and np.array_equal(g2, g)
    tape.save(tmp_path / "t.npz")
    v3, g3 = tapejit.load(tmp_path / "t.npz").value_and_grad(w, params=X.ravel())
    assert v3 == v and np.array_equal(g3, g)


def test_shape_mismatch_is_numpys_error():
    with pytest.raises(ValueError, match="mismatch"):
        tapejit.record(lambda z: z[:6].reshape(2, 3) @ z[:6].reshape(2, 3), np.ones(6))
