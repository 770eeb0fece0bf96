"""The composed linear-algebra functions: numpy's/scipy's values on plain arrays (1e-12),
and, where every call they make records, gradients of recorded tapes against central
differences. Gradient tests whose calls are not registered as instructions yet skip."""

import warnings

import numpy as np
import pytest
import scipy.linalg

import tapejit
from tapejit import _families
from tapejit import _linalg_compose as lc


def _close(got, want, rtol=1e-12):
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _needs(*families):
    missing = [f for f in families if f not in _families.BY_NAME]
    return pytest.mark.skipif(bool(missing), reason=f"families not registered yet: {missing}")


RNG = np.random.default_rng(0)
VEC = RNG.standard_normal(7)
MAT = RNG.standard_normal((4, 3))
STACK = RNG.standard_normal((2, 3, 4))


# -- values on plain arrays -----------------------------------------------------------
@pytest.mark.parametrize("ord", [None, np.inf, -np.inf, 0, 1, -1, 2, 3, 0.5, -2.5])
@pytest.mark.parametrize("keepdims", [False, True])
def test_vector_norms(ord, keepdims):
    _close(lc.norm(VEC, ord, keepdims=keepdims), np.linalg.norm(VEC, ord, keepdims=keepdims))
    _close(lc.norm(STACK, ord, axis=1, keepdims=keepdims),
           np.linalg.norm(STACK, ord, axis=1, keepdims=keepdims))


@pytest.mark.parametrize("ord", [None, "fro", "nuc", np.inf, -np.inf, 1, -1, 2, -2])
@pytest.mark.parametrize("axis", [None, (1, 2), (2, 0), (-1, -2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_matrix_norms(ord, axis, keepdims):
    x = MAT if axis is None else STACK
    _close(lc.norm(x, ord, axis, keepdims), np.linalg.norm(x, ord, axis, keepdims))


def test_norm_defaults_and_errors():
    _close(lc.norm(STACK), np.linalg.norm(STACK))
    _close(lc.norm(STACK, keepdims=True), np.linalg.norm(STACK, keepdims=True))
    _close(lc.norm([3, 4]), 5.0)
    with pytest.raises(ValueError, match="Invalid norm order"):
        lc.norm(MAT, "bad")
    with pytest.raises(ValueError, match="Invalid norm order"):
        lc.norm(VEC, "fro")
    with pytest.raises(ValueError, match="Improper number"):
        lc.norm(STACK, 1, axis=(0, 1, 2))
    with pytest.raises(ValueError, match="Duplicate"):
        lc.norm(MAT, 1, axis=(0, -2))


@pytest.mark.parametrize("shape,hermitian", [
    ((4, 3), False), ((3, 4), False), ((3, 3), False), ((2, 3, 2), False), ((0, 3), False),
    ((3, 3), True), ((2, 4, 4), True)])
def test_pinv(shape, hermitian):
    a = RNG.standard_normal(shape)
    if hermitian:
        a = a + np.swapaxes(a, -1, -2)
    _close(lc.pinv(a, hermitian=hermitian), np.linalg.pinv(a, hermitian=hermitian))
    _close(lc.pinv(a, rtol=None), np.linalg.pinv(a, rtol=None))


def test_pinv_rank_deficient_cutoff():
    a = np.outer(RNG.standard_normal(4), RNG.standard_normal(3))
    _close(lc.pinv(a), np.linalg.pinv(a))
    _close(lc.pinv(a, rcond=0.5), np.linalg.pinv(a, rcond=0.5))
    with pytest.raises(ValueError, match="both set"):
        lc.pinv(a, rcond=0.1, rtol=0.1)


@pytest.mark.parametrize("shape", [(6, 3), (3, 3), (3, 5)])
@pytest.mark.parametrize("rhs", [(), (2,)])
def test_lstsq(shape, rhs):
    a = RNG.standard_normal(shape)
    b = RNG.standard_normal((shape[0], *rhs))
    got, want = lc.lstsq(a, b), np.linalg.lstsq(a, b)
    for g, w in zip(got, want, strict=True):
        assert np.shape(g) == np.shape(w)
        _close(g, w)


def test_lstsq_rank_deficient():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 3))
    a[:, 2] = a[:, 0] + a[:, 1]
    b = rng.standard_normal(6)
    # cutoffs clear of the rounding-level third singular value (machine precision,
    # rcond=-1, is not: gelsd's and gesdd's tiny values may fall on either side)
    for rcond in (None, 1e-3):
        got, want = lc.lstsq(a, b, rcond), np.linalg.lstsq(a, b, rcond)
        assert got[2] == want[2] == 2
        assert got[1].shape == want[1].shape == (0,)
        _close(got[0], want[0], 1e-10)
        _close(got[3], want[3])
    got, want = lc.lstsq(a[:, :2], b, -1), np.linalg.lstsq(a[:, :2], b, -1)
    for g, w in zip(got, want, strict=True):
        _close(g, w)


@pytest.mark.parametrize("n", [-3, -1, 0, 1, 2, 3, 5, 6, 13])
def test_matrix_power(n):
    a = np.eye(3) + 0.3 * RNG.standard_normal((2, 3, 3))
    _close(lc.matrix_power(a, n), np.linalg.matrix_power(a, n))
    with pytest.raises(TypeError, match="integer"):
        lc.matrix_power(a, 1.5)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 3.0, 40.0])
def test_expm(scale):
    a = scale * RNG.standard_normal((4, 4))
    want = scipy.linalg.expm(a)
    _close(lc.expm(a), want, 1e-12 * max(1.0, np.linalg.cond(want)))
    _close(lc.expm(np.stack([a, -a])), scipy.linalg.expm(np.stack([a, -a])),
           1e-12 * max(1.0, np.linalg.cond(want)))
    assert lc.expm(np.zeros((0, 0))).shape == (0, 0)


@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((4, 3), (3,)), ((2, 1, 3), (4, 3)),
                                   ((5, 2), (5, 3)), ((3,), (2,)), ((2,), (2,))])
def test_cross(sa, sb):
    a, b = RNG.standard_normal(sa), RNG.standard_normal(sb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 2-vectors, numpy 2
        want = np.cross(a, b)
    _close(lc.cross(a, b), want, 0)


def test_cross_axes():
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 3))
    _close(lc.cross(a, b, axisa=0, axisc=0), np.cross(a, b, axisa=0, axisc=0), 0)
    c = RNG.standard_normal((3, 5))
    _close(lc.cross(a[:, :1], c, axis=0), np.cross(a[:, :1], c, axis=0), 0)
    with pytest.raises(ValueError, match="dimension must be 2 or 3"):
        lc.cross(RNG.standard_normal(4), RNG.standard_normal(3))


@pytest.mark.parametrize("sa,sb", [((3,), (2,)), ((2, 3), (4, 1)), ((3,), (2, 2)),
                                   ((2, 2, 2), (3, 1)), ((), (2,)), ((0, 2), (3,))])
def test_kron(sa, sb):
    a, b = RNG.standard_normal(sa), RNG.standard_normal(sb)
    _close(lc.kron(a, b), np.kron(a, b), 0)


@pytest.mark.parametrize("offset,axes", [(0, (0, 1)), (1, (0, 1)), (-1, (1, 2)),
                                         (2, (2, 0))])
def test_trace(offset, axes):
    x = RNG.standard_normal((3, 4, 5))
    _close(lc.trace(x, offset, *axes), np.trace(x, offset, *axes), 0)


# -- gradients of recorded tapes ------------------------------------------------------
def _check_grad(f, x0, rtol=1e-8):
    tape = tapejit.record(f, x0)
    _close(tape.forward(x0), f(x0), 1e-12)
    h = 1e-5
    eye = np.eye(x0.size).reshape((x0.size, *x0.shape))
    fd = np.array([(f(x0 + h * e) - f(x0 - h * e)) / (2 * h) for e in eye]).reshape(x0.shape)
    _close(tape.gradient(x0), fd, rtol)


@pytest.mark.parametrize("ord", [None, np.inf, -np.inf, 0, 1, 2, 3, -2.5])
def test_vector_norm_gradients(ord):
    _check_grad(lambda x: lc.norm(x, ord) + np.sum(lc.norm(x.reshape(3, 2), ord, axis=0)),
                np.array([0.3, -1.2, 2.5, 0.7, -0.1, 1.9]))


@pytest.mark.parametrize("ord", [None, "fro", np.inf, -np.inf, 1, -1])
def test_matrix_norm_gradients(ord):
    _check_grad(lambda x: lc.norm(x.reshape(2, 3), ord),
                np.array([0.3, -1.2, 2.5, 0.7, -0.1, 1.9]))


def test_cross_kron_trace_gradients():
    def f(x):
        a, b = x[:3], x[3:6]
        m = x[:4].reshape(2, 2)
        return (np.sum(lc.cross(a, b) ** 2) + np.sum(lc.kron(m, b[:2]) ** 2)
                + lc.trace(lc.kron(m, m), 1))

    _check_grad(f, RNG.standard_normal(6))


def test_matrix_power_gradient():
    _check_grad(lambda x: np.sum(lc.matrix_power(x.reshape(3, 3), 5) ** 2),
                np.eye(3).ravel() + 0.2 * RNG.standard_normal(9))


@_needs("inv")
def test_negative_matrix_power_gradient():
    _check_grad(lambda x: np.sum(lc.matrix_power(x.reshape(3, 3), -3)),
                np.eye(3).ravel() + 0.2 * RNG.standard_normal(9))


@_needs("solve")
def test_expm_gradient_and_guard():
    x0 = 2.0 * RNG.standard_normal(9)

    def f(x):
        return np.sum(lc.expm(x.reshape(3, 3)) * np.arange(9.0).reshape(3, 3))

    _check_grad(f, x0, 1e-7)


@_needs("svd")
@pytest.mark.parametrize("ord", [2, -2, "nuc"])
def test_svd_norm_gradients(ord):
    _check_grad(lambda x: lc.norm(x.reshape(3, 2), ord),
                np.array([0.3, -1.2, 2.5, 0.7, -0.1, 1.9]))


@_needs("svd", "eigh")
def test_pinv_lstsq_gradients():
    x0 = RNG.standard_normal(12)

    def f(x):
        a = x.reshape(4, 3)
        x_ls, res, _, s = lc.lstsq(a, np.arange(4.0))
        sym = a[:3] + a[:3].T
        return (np.sum(lc.pinv(a) ** 2) + np.sum(x_ls) + np.sum(res) + np.sum(s)
                + np.sum(lc.pinv(sym, hermitian=True)))

    _check_grad(f, x0, 1e-7)
