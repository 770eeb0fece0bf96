"""The cholesky and solve_triangular family routines, called directly on hand-built
operand blocks: values against numpy/scipy, derivatives against central differences
(a fourth-order stencil) and against each other, at one point and at several."""

import numpy as np
import pytest
import scipy.linalg

from tapejit import _fam_chol as fc
from tapejit._kernels import fam_chol as kc

# The kernel file's routines, called directly: Numba compiles them here (cached next to
# the file), not from the cache `tapejit compile` fills (see tests/conftest.py).
pytestmark = pytest.mark.compiles

EMPTY = np.empty((0, 1))
H = 1e-3


def _diff(f, x0, dx):
    # fourth-order central difference of f at x0 along dx
    return (-f(x0 + 2 * H * dx) + 8 * f(x0 + H * dx) - 8 * f(x0 - H * dx)
            + f(x0 - 2 * H * dx)) / (12 * H)


def _close(got, want, rtol=1e-10):
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _block(points, w, dtype=np.float64):
    # (len, w): the points as columns, garbage (NaN) in the columns after them
    out = np.full((points[0].size, w), np.nan, dtype)
    for p, x in enumerate(points):
        out[:, p] = x
    return out


def _spd(rng, n):
    mat = rng.standard_normal((n, n))
    spd = mat @ mat.T + n * np.eye(n)
    # a non-symmetric input: numpy reads the lower triangle only
    return (spd + np.triu(rng.standard_normal((n, n)), 1)).ravel()


def _tri(rng, n):
    # well conditioned in both triangles (either may be the one read)
    mat = 0.3 * rng.standard_normal((n, n)) / max(n, 1) ** 0.5
    mat[np.diag_indices(n)] = 2.0 + rng.random(n)
    return mat.ravel()


def _pad(d):
    return tuple(d) + (0,) * (3 - len(d))


# -- generic drivers ------------------------------------------------------------------
class Fam:
    """One family with fixed attributes: its routines and its per-point function."""

    def __init__(self, name, attrs, ref, sizes):
        self.at = np.asarray(attrs, np.int32)
        self.attrs = tuple(attrs)
        self.fwd = getattr(kc, f"{name}_forward")
        self.rev = getattr(kc, f"{name}_reverse")
        self.tan = getattr(kc, f"{name}_tangent")
        self.sec = getattr(kc, f"{name}_second")
        self.ref = ref
        self.sizes = sizes
        self.size = ref(self.attrs, *[np.ones(s) for s in sizes]).size

    def ops(self, blocks):
        return list(blocks) + [EMPTY.astype(blocks[0].dtype)] * (3 - len(blocks))

    def forward(self, blocks, w, m):
        r = np.full((self.size, w), np.nan, blocks[0].dtype)
        self.fwd(self.at, *self.ops(blocks), r, m)
        return r

    def vjp(self, blocks, gr, d, w, m):
        r = self.forward(blocks, w, m)
        gs = [np.zeros_like(x) if x.shape[0] else EMPTY for x in self.ops(blocks)]
        self.rev(self.at, *self.ops(blocks), r, gr, *gs, *_pad(d), m)
        return gs

    def jvp(self, blocks, ts, d, w, m):
        r = np.full((self.size, w), np.nan, blocks[0].dtype)
        nv = max(t.shape[1] for t in ts)
        tr = np.full((self.size, nv, w), np.nan, blocks[0].dtype)
        tops = list(ts) + [np.empty((0, 1, 1))] * (3 - len(ts))
        self.tan(self.at, *self.ops(blocks), r, *tops, tr, *_pad(d), m)
        return r, tr

    def second(self, blocks, ts, gr, gdr, d, w, m):
        r, tr = self.jvp(blocks, ts, d, w, m)
        gs = [np.zeros_like(x) if x.shape[0] else EMPTY for x in self.ops(blocks)]
        gds = [np.zeros((x.shape[0], gdr.shape[1], x.shape[1])) if x.shape[0]
               else np.empty((0, 1, 1)) for x in self.ops(blocks)]
        tops = list(ts) + [np.empty((0, 1, 1))] * (3 - len(ts))
        self.sec(self.at, *self.ops(blocks), r, *tops, tr, gr, gdr, *gs, *gds, *_pad(d), m)
        return gs, gds


def _check_all(fam, points, rng, w, d):
    """Every routine at the m = len(points[0]) points, w columns (an operand with a
    single point is shared: one column), against the reference and differences."""
    m = max(len(p) for p in points)
    blocks = [_block(p, w if len(p) > 1 else 1) for p in points]
    pt = [[p[min(q, len(p) - 1)] for q in range(m)] for p in points]

    # forward
    r = fam.forward(blocks, w, m)
    for q in range(m):
        _close(r[:, q], fam.ref(fam.attrs, *[x[q] for x in pt]))

    # reverse against differences of <gr, f> in each operand entry
    gr = _block([rng.standard_normal(fam.size) for _ in range(m)], w)
    gs = fam.vjp(blocks, gr, d, w, m)
    for k, dk in enumerate(d):
        if not dk:
            continue
        for q in range(m):
            x0 = [x[q] for x in pt]

            def f(xk, k=k, x0=x0, q=q):
                xs = list(x0)
                xs[k] = xk
                return gr[:, q] @ fam.ref(fam.attrs, *xs)

            eye = np.eye(x0[k].size)
            fd = np.array([_diff(f, x0[k], e) for e in eye])
            _close(gs[k][:, q], fd)

    # tangent against differences of f along the directions
    nv = 2
    ts = [_block([rng.standard_normal(x.shape[0]) for _ in range(m)], w)
          for x in blocks]
    ts3 = [np.stack([t, 2 * t[::-1] if t.shape[0] else t], axis=1) if dk
           else np.empty((0, 1, 1)) for t, dk in zip(ts, d, strict=True)]
    r2, tr = fam.jvp(blocks, ts3, d, w, m)
    _close(r2[:, :m], r[:, :m], 0)
    for q in range(m):
        for v in range(nv):
            x0 = [x[q] for x in pt]
            dirs = [t3[:, v, q] if dk else np.zeros_like(x)
                    for t3, dk, x in zip(ts3, d, x0, strict=True)]
            flat0 = np.concatenate(x0)
            cuts = np.cumsum([x.size for x in x0])[:-1]

            def g(flat, cuts=cuts):
                return fam.ref(fam.attrs, *np.split(flat, cuts))

            _close(tr[:, v, q], _diff(g, flat0, np.concatenate(dirs)))

    # second: forward-over-reverse against differences of the kernel's vjp along
    # (operands, gr) -> (operands + t ta, gr + t gdr)
    gdr = np.stack([_block([rng.standard_normal(fam.size) for _ in range(m)], w)
                    for _ in range(nv)], axis=1)
    gs2, gds = fam.second(blocks, ts3, gr, gdr, d, w, m)
    for k, dk in enumerate(d):
        if dk:
            _close(gs2[k][:, :m], gs[k][:, :m], 1e-13)
    for q in range(m):
        x0 = [x[q] for x in pt]
        for v in range(nv):
            dirs = [t3[:, v, q] if dk else np.zeros_like(x)
                    for t3, dk, x in zip(ts3, d, x0, strict=True)]
            sizes = [x.size for x in x0]
            flat0 = np.concatenate([*x0, gr[:, q]])
            flatd = np.concatenate([*dirs, gdr[:, v, q]])
            cuts = np.cumsum(sizes)

            def h(flat, cuts=cuts):
                parts = np.split(flat, cuts)
                one = [p[:, None] for p in parts[:-1]]
                got = fam.vjp(one, parts[-1][:, None], d, 1, 1)
                return np.concatenate([gk[:, 0] for gk, dk in
                                       zip(got[:len(d)], d, strict=True) if dk])

            want = _diff(h, flat0, flatd)
            got = np.concatenate([gd[:, v, q] for gd, dk in
                                  zip(gds[:len(d)], d, strict=True) if dk])
            _close(got, want, 1e-9)


def _chol_fam(n):
    return Fam("cholesky", (n,), fc.cholesky_reference, (n * n,))


def _st_fam(n, k, lower, trans, unit):
    return Fam("solve_triangular", (n, k, lower, trans, unit),
               fc.solve_triangular_reference, (n * n, n * k))


# -- cholesky -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("m,w", [(1, 1), (3, 4)])
def test_cholesky_routines(n, m, w):
    rng = np.random.default_rng(10 * n + m)
    _check_all(_chol_fam(n), [[_spd(rng, n) for _ in range(m)]], rng, w, (1,))


def test_cholesky_reads_the_lower_triangle_only():
    rng = np.random.default_rng(1)
    a = _spd(rng, 4)
    upper = a.copy().reshape(4, 4)
    upper[np.triu_indices(4, 1)] += 100.0
    fam = _chol_fam(4)
    r1 = fam.forward([a[:, None]], 1, 1)
    r2 = fam.forward([upper.ravel()[:, None]], 1, 1)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1.reshape(4, 4), np.tril(r1.reshape(4, 4)))
    g = fam.vjp([a[:, None]], rng.standard_normal((16, 1)), (1,), 1, 1)[0]
    assert np.all(g.reshape(4, 4)[np.triu_indices(4, 1)] == 0.0)
    assert np.all(g.reshape(4, 4)[np.tril_indices(4)] != 0.0)


def test_cholesky_shared_operand_is_broadcast():
    rng = np.random.default_rng(2)
    a = _spd(rng, 3)
    fam = _chol_fam(3)
    r = fam.forward([a[:, None]], 5, 5)
    want = np.linalg.cholesky(np.tril(a.reshape(3, 3))).ravel()
    for p in range(5):
        _close(r[:, p], want)


@pytest.mark.parametrize("m,w", [(1, 1), (3, 3)])
def test_cholesky_not_positive_definite_is_nan(m, w):
    rng = np.random.default_rng(3)
    good = _spd(rng, 4)
    bad = good.copy()
    bad[2 * 4 + 2] = -50.0
    pts = [good, bad, good][:m] if m > 1 else [bad]
    r = _chol_fam(4).forward([_block(pts, w)], w, m)
    for p, x in enumerate(pts):
        if x is bad:
            assert np.all(np.isnan(r[:, p]))
        else:
            _close(r[:, p], np.linalg.cholesky(np.tril(x.reshape(4, 4))).ravel())
    assert np.all(np.isnan(fc.cholesky_reference((4,), bad)))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("trans", [0, 1])
def test_solve_triangular_zero_diagonal_is_nan_for_the_whole_point(shared, trans):
    # The solve alone leaves finite values before the zero pivot; the routines make the
    # whole point NaN, so one element of the result tells a failed point (the guard).
    good = np.array([2.0, 0.0, 0.5, 3.0])
    bad = np.array([1.0, 0.0, 2.0, 0.0])  # a zero last on the diagonal
    b = np.array([1.0, 1.0])
    fam = _st_fam(2, 1, 1, trans, 0)
    mats = [bad] if shared else [good, bad, good]
    m = 3
    a = _block(mats, 1 if shared else m)
    r = fam.forward([a, _block([b] * m, m)], m, m)
    ta = [np.zeros((4, 1, a.shape[1])), np.ones((2, 1, m))]
    r2, _ = fam.jvp([a, _block([b] * m, m)], ta, [1, 1], m, m)  # the tangent sweep's values
    for p in range(m):
        if shared or p == 1:
            assert np.isnan(r[:, p]).all() and np.isnan(r2[:, p]).all()
        else:
            assert np.isfinite(r[:, p]).all()


def test_cholesky_float32():
    rng = np.random.default_rng(4)
    pts = [_spd(rng, 3) for _ in range(2)]
    fam = _chol_fam(3)
    for w in (1, 2):
        m = w
        r = fam.forward([_block(pts[:m], w, np.float32)], w, m)
        assert r.dtype == np.float32
        for p in range(m):
            _close(r[:, p], np.linalg.cholesky(np.tril(pts[p].reshape(3, 3))).ravel(),
                   1e-5)


@pytest.mark.parametrize("n", [65, 128, 150, 257])
def test_cholesky_large_dense_rules_agree(n):
    # n above the substitution's block size (64): the BLAS paths and, at one point, the
    # blocked reverse (one block column at a time; n = 65, 128, 257: a last block of
    # one column, whole blocks, and several blocks plus one), checked by the adjoint
    # identity <gr, jvp(t)> == <vjp(gr), t> and the reverse against the folded textbook
    # rule computed with scipy
    rng = np.random.default_rng(5)
    a = _spd(rng, n)
    fam = _chol_fam(n)
    gr = rng.standard_normal((n * n, 1))
    ga = fam.vjp([a[:, None]], gr, (1,), 1, 1)[0][:, 0]
    lo = np.linalg.cholesky(np.tril(a.reshape(n, n)))
    phi = np.tril(lo.T @ np.tril(gr.reshape(n, n)))
    phi[np.diag_indices(n)] *= 0.5
    s = scipy.linalg.solve_triangular(lo, scipy.linalg.solve_triangular(
        lo, phi, lower=True, trans=1).T, lower=True, trans=1).T
    want = np.tril(s + s.T)
    want[np.diag_indices(n)] = np.diag(s)
    _close(ga, want.ravel(), 1e-9)
    t = rng.standard_normal((n * n, 1, 1))
    _, tr = fam.jvp([a[:, None]], [t], (1,), 1, 1)
    _close(gr[:, 0] @ tr[:, 0, 0], ga @ t[:, 0, 0], 1e-9)


def test_cholesky_blocked_reverse_of_a_failed_factor_is_nan():
    # the blocked reverse (one point, n > 64) of a matrix that is not positive definite:
    # NaN for the whole adjoint, as the whole-matrix rule gives
    rng = np.random.default_rng(8)
    n = 100
    a = _spd(rng, n)
    a[70 * n + 70] = -1e6
    fam = _chol_fam(n)
    ga = fam.vjp([a[:, None]], rng.standard_normal((n * n, 1)), (1,), 1, 1)[0]
    assert np.all(np.isnan(ga[:, 0].reshape(n, n)[np.tril_indices(n)]))


# -- solve_triangular -----------------------------------------------------------------
@pytest.mark.parametrize("lower,trans,unit", [(1, 0, 0), (0, 0, 0), (1, 1, 0), (0, 1, 1),
                                              (1, 0, 1)])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 3), (5, 1), (5, 2)])
def test_solve_triangular_one_point(n, k, lower, trans, unit):
    rng = np.random.default_rng(n + 7 * k + 3 * lower + 5 * trans)
    fam = _st_fam(n, k, lower, trans, unit)
    _check_all(fam, [[_tri(rng, n)], [rng.standard_normal(n * k)]], rng, 1, (1, 1))


@pytest.mark.parametrize("shared", ["none", "a", "b"])
@pytest.mark.parametrize("lower,trans", [(1, 0), (0, 1)])
def test_solve_triangular_points(shared, lower, trans):
    rng = np.random.default_rng(11)
    n, k, m, w = 4, 2, 3, 4
    fam = _st_fam(n, k, lower, trans, 0)
    pa = [_tri(rng, n) for _ in range(1 if shared == "a" else m)]
    pb = [rng.standard_normal(n * k) for _ in range(1 if shared == "b" else m)]
    d = (int(shared != "a"), int(shared != "b"))
    _check_all(fam, [pa, pb], rng, w, d)


def test_solve_triangular_only_b_differentiated():
    rng = np.random.default_rng(12)
    fam = _st_fam(3, 2, 1, 0, 0)
    _check_all(fam, [[_tri(rng, 3)], [rng.standard_normal(6)]], rng, 1, (0, 1))


@pytest.mark.parametrize("lower,trans", [(1, 0), (1, 1), (0, 0), (0, 1)])
@pytest.mark.parametrize("k", [1, 40])
def test_solve_triangular_large_dense(lower, trans, k):
    # blocked substitution (gemm between blocks) and the row/axpy forms, against scipy
    rng = np.random.default_rng(13)
    n = 150
    a = _tri(rng, n)
    b = rng.standard_normal(n * k)
    fam = _st_fam(n, k, lower, trans, 0)
    r = fam.forward([a[:, None], b[:, None]], 1, 1)
    _close(r[:, 0], scipy.linalg.solve_triangular(
        a.reshape(n, n), b.reshape(n, k), lower=bool(lower), trans=trans).ravel())
    # shared matrix, per-point right-hand sides: one solve with k * m columns
    pts = [b, 2 * b[::-1].copy(), b + 1]
    r = fam.forward([a[:, None], _block(pts, 4)], 4, 3)
    for p, x in enumerate(pts):
        _close(r[:, p], fc.solve_triangular_reference(fam.attrs, a, x))


def test_solve_triangular_float32():
    rng = np.random.default_rng(14)
    fam = _st_fam(3, 1, 1, 0, 0)
    a, b = _tri(rng, 3), rng.standard_normal(3)
    r = fam.forward([a[:, None].astype(np.float32), b[:, None].astype(np.float32)], 1, 1)
    assert r.dtype == np.float32
    _close(r[:, 0], fc.solve_triangular_reference(fam.attrs, a, b), 1e-5)


def test_solve_triangular_zero_diagonal_does_not_raise():
    a = np.eye(3).ravel()
    a[4] = 0.0
    r = _st_fam(3, 1, 1, 0, 0).forward([a[:, None], np.ones((3, 1))], 1, 1)
    assert not np.all(np.isfinite(r))
    assert np.all(np.isnan(fc.solve_triangular_reference((3, 1, 1, 0, 0), a, np.ones(3))))


# -- Python side ----------------------------------------------------------------------
def test_attribute_checks():
    bad = fc.cholesky_check(np.array([[3], [-1], [0], [10**6]]))
    np.testing.assert_array_equal(bad, [False, True, False, True])
    vals = np.array([[3, 2, 1, 0, 0], [3, 2, 2, 0, 0], [3, -1, 0, 0, 0],
                     [0, 0, 0, 1, 1], [3, 2, 0, 0, -1]])
    np.testing.assert_array_equal(fc.solve_triangular_check(vals),
                                  [False, True, True, False, True])
    # the result, then each operand
    assert fc.cholesky_sizes(np.array([[4]])).tolist() == [[16, 16]]
    assert fc.solve_triangular_sizes(np.array([[4, 3, 0, 0, 0]])).tolist() == [[12, 16, 12]]


def test_untraced_calls_are_numpy_and_scipy():
    rng = np.random.default_rng(15)
    a = _spd(rng, 3).reshape(3, 3)
    b = rng.standard_normal((3, 2))

    def no_emit(*args):
        raise AssertionError("nothing is traced")

    np.testing.assert_array_equal(fc.record_cholesky(no_emit, a), np.linalg.cholesky(a))
    c = fc.record_cho_factor(no_emit, a)
    np.testing.assert_array_equal(c[0], scipy.linalg.cho_factor(a)[0])
    np.testing.assert_array_equal(fc.record_cho_solve(no_emit, c, b),
                                  scipy.linalg.cho_solve(c, b))
    np.testing.assert_array_equal(
        fc.record_solve_triangular(no_emit, a, b, trans="T", lower=True),
        scipy.linalg.solve_triangular(a, b, trans="T", lower=True))
