"""The eigh, svd and qr family routines, called directly on hand-built operand blocks:
values against numpy, derivatives against central differences (a fourth-order
stencil) and against each other, at one point and at several (garbage columns past m,
a shared operand); repeated eigenvalues and singular values; the Python side."""

import numpy as np
import pytest

from tapejit import _fam_eig as fe
from tapejit._errors import TracingError
from tapejit._kernels import fam_eig as ke

# The kernel file's routines, called directly: Numba compiles them here (cached next to
# the file), not from the cache `tapejit compile` fills (see tests/conftest.py).
pytestmark = pytest.mark.compiles

FAMILIES = {f.name: f for f in fe.EIG_FAMILIES}
EMPTY = np.empty((0, 1))
H = 1e-3


def _diff(f, x0, dx):
    return (-f(x0 + 2 * H * dx) + 8 * f(x0 + H * dx) - 8 * f(x0 - H * dx)
            + f(x0 - 2 * H * dx)) / (12 * H)


def _close(got, want, rtol=1e-10):
    want = np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _block(points, w, dtype=np.float64):
    out = np.full((points[0].size, w), np.nan, dtype)
    for p, x in enumerate(points):
        out[:, p] = x
    return out


def _orth(rng, n):
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def _sym(rng, n, lower=True):
    # well separated eigenvalues; the triangle that is not read holds noise
    q = _orth(rng, n)
    mat = q @ np.diag(2.0 * np.arange(1, n + 1) - n + 0.3 * rng.random(n)) @ q.T
    noise = np.triu(rng.standard_normal((n, n)), 1)
    return (mat + (noise if lower else noise.T)).ravel()


def _rect(rng, m, n):
    # well separated, non-zero singular values
    k = min(m, n)
    s = 1.0 + 1.5 * np.arange(k)[::-1] + 0.2 * rng.random(k)
    return (_orth(rng, m)[:, :k] @ np.diag(s) @ _orth(rng, n)[:, :k].T).ravel()


def _tall(rng, m, n):
    return (np.eye(m, n) * 2.0 + 0.3 * rng.standard_normal((m, n))).ravel()


class Fam:
    """One family with fixed attributes: its routines and its per-point function."""

    def __init__(self, name, attrs):
        self.at = np.asarray(attrs, np.int32)
        self.attrs = tuple(attrs)
        self.fwd, self.rev, self.tan, self.sec = (
            getattr(ke, f"{name}_{s}") for s in ("forward", "reverse", "tangent", "second"))
        fam = FAMILIES[name]
        self.ref = fam.reference
        self.size = int(fam.sizes(np.array([self.attrs]))[0, 0])

    def ref1(self, x):
        return self.ref(self.attrs, x)

    def forward(self, a, w, m):
        r = np.full((self.size, w), np.nan, a.dtype)
        self.fwd(self.at, a, EMPTY, EMPTY, r, m)
        return r

    def vjp(self, a, gr, w, m, da=1):
        r = self.forward(a, w, m)
        ga = np.zeros_like(a)
        self.rev(self.at, a, EMPTY, EMPTY, r, gr, ga, EMPTY, EMPTY, da, 0, 0, m)
        return ga

    def jvp(self, a, ta, w, m, da=1):
        r = np.full((self.size, w), np.nan, a.dtype)
        tr = np.full((self.size, ta.shape[1], w), np.nan, a.dtype)
        e3 = np.empty((0, 1, 1))
        self.tan(self.at, a, EMPTY, EMPTY, r, ta, e3, e3, tr, da, 0, 0, m)
        return r, tr

    def second(self, a, ta, gr, gdr, w, m):
        r, tr = self.jvp(a, ta, w, m)
        ga = np.zeros_like(a)
        gda = np.zeros((a.shape[0], gdr.shape[1], a.shape[1]))
        e3 = np.empty((0, 1, 1))
        self.sec(self.at, a, EMPTY, EMPTY, r, ta, e3, e3, tr, gr, gdr, ga, EMPTY, EMPTY,
                 gda, e3, e3, 1, 0, 0, m)
        return ga, gda


def _check_all(fam, points, rng, w):
    """Every routine at the m = len(points) points in w columns, against the reference
    and central differences."""
    m = len(points)
    a = _block(points, w)
    r = fam.forward(a, w, m)
    for q in range(m):
        _close(r[:, q], fam.ref1(points[q]))

    gr = _block([rng.standard_normal(fam.size) for _ in range(m)], w)
    ga = fam.vjp(a, gr, w, m)
    for q in range(m):
        eye = np.eye(points[q].size)
        fd = np.array([_diff(lambda x, q=q: gr[:, q] @ fam.ref1(x), points[q], e)
                       for e in eye])
        _close(ga[:, q], fd)

    nv = 2
    ta = np.stack([_block([rng.standard_normal(x.size) for x in points], w)
                   for _ in range(nv)], axis=1)
    r2, tr = fam.jvp(a, ta, w, m)
    _close(r2[:, :m], r[:, :m], 0)
    for q in range(m):
        for v in range(nv):
            _close(tr[:, v, q], _diff(fam.ref1, points[q], ta[:, v, q]))

    gdr = np.stack([_block([rng.standard_normal(fam.size) for _ in range(m)], w)
                    for _ in range(nv)], axis=1)
    ga2, gda = fam.second(a, ta, gr, gdr, w, m)
    _close(ga2[:, :m], ga[:, :m], 1e-13)
    for q in range(m):
        for v in range(nv):
            n0 = points[q].size

            def h(flat, n0=n0):
                return fam.vjp(flat[:n0, None], flat[n0:, None], 1, 1)[:, 0]

            want = _diff(h, np.concatenate([points[q], gr[:, q]]),
                         np.concatenate([ta[:, v, q], gdr[:, v, q]]))
            _close(gda[:, v, q], want, 1e-9)


# -- eigh -----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("lower", [1, 0])
@pytest.mark.parametrize("vectors", [1, 0])
@pytest.mark.parametrize("m,w", [(1, 1), (3, 4)])
def test_eigh_routines(n, lower, vectors, m, w):
    rng = np.random.default_rng(100 * n + 10 * lower + 2 * vectors + m)
    _check_all(Fam("eigh", (n, lower, vectors)),
               [_sym(rng, n, lower) for _ in range(m)], rng, w)


def test_eigh_reads_one_triangle():
    rng = np.random.default_rng(1)
    n = 4
    a = _sym(rng, n)
    fam = Fam("eigh", (n, 1, 1))
    other = a.reshape(n, n).copy()
    other[np.triu_indices(n, 1)] += 100.0
    np.testing.assert_array_equal(fam.forward(a[:, None], 1, 1),
                                  fam.forward(other.ravel()[:, None], 1, 1))
    w, v = np.linalg.eigh(a.reshape(n, n))
    r = fam.forward(a[:, None], 1, 1)[:, 0]
    _close(r[:n], w)
    _close(r[n:], v.ravel())  # numpy's eigenvectors, signs included
    g = fam.vjp(a[:, None], rng.standard_normal((n + n * n, 1)), 1, 1)[:, 0].reshape(n, n)
    assert np.all(g[np.triu_indices(n, 1)] == 0.0)
    assert np.all(g[np.tril_indices(n)] != 0.0)


def test_eigh_shared_operand():
    rng = np.random.default_rng(2)
    a = _sym(rng, 3)
    fam = Fam("eigh", (3, 1, 1))
    r = fam.forward(a[:, None], 4, 4)
    for p in range(4):
        _close(r[:, p], fam.ref1(a))
    ta = np.full((9, 1, 1), np.nan)  # d == 0: never read
    r, tr = fam.jvp(a[:, None], ta, 4, 4, da=0)
    assert np.all(tr == 0.0)


def _repeated():
    # eigenvalues 1, 1, 3 in a rotated basis
    q = _orth(np.random.default_rng(3), 3)
    return (q @ np.diag([1.0, 1.0, 3.0]) @ q.T).ravel()


def test_eigh_repeated_eigenvalues():
    a = _repeated()
    fam = Fam("eigh", (3, 1, 1))
    # only the eigenvalues used (their adjoint equal within the repeated pair): finite
    # and exact; the gradient of w0 + w1 + 2 w2 is V diag(1, 1, 2) V^T, folded
    gr = np.zeros((12, 1))
    gr[:3, 0] = [1.0, 1.0, 2.0]
    g = fam.vjp(a[:, None], gr, 1, 1)[:, 0].reshape(3, 3)
    _w, v = np.linalg.eigh(a.reshape(3, 3))
    full = v @ np.diag([1.0, 1.0, 2.0]) @ v.T
    _close(g, np.tril(2 * full - np.diag(np.diag(full))), 1e-12)
    # an eigenvector used: its derivative does not exist: non-finite, not a guess
    gr[3:, 0] = 1.0
    assert not np.all(np.isfinite(fam.vjp(a[:, None], gr, 1, 1)))
    _, tr = fam.jvp(a[:, None], np.ones((9, 1, 1)), 1, 1)
    assert np.all(np.isfinite(tr[:3]))
    assert not np.all(np.isfinite(tr[3:]))


def test_eigvalsh_repeated_eigenvalues():
    a = _repeated()
    fam = Fam("eigh", (3, 1, 0))
    gr = np.ones((3, 1))
    g = fam.vjp(a[:, None], gr, 1, 1)[:, 0].reshape(3, 3)
    _close(g, np.eye(3), 1e-12)  # d trace / dA, folded onto the lower triangle
    # second order divides by eigenvalue gaps: non-finite at a repeated eigenvalue
    ta = np.ones((9, 1, 1))
    _, gda = fam.second(a[:, None], ta, gr, np.zeros((3, 1, 1)), 1, 1)
    assert not np.all(np.isfinite(gda))


def test_eigh_non_finite_is_nan():
    a = _sym(np.random.default_rng(4), 3)
    bad = a.copy()
    bad[4] = np.nan
    fam = Fam("eigh", (3, 1, 1))
    r = fam.forward(_block([a, bad], 2), 2, 2)
    _close(r[:, 0], fam.ref1(a))
    assert np.all(np.isnan(r[:, 1]))
    assert np.all(np.isnan(fam.ref1(bad)))


def test_eigh_float32():
    rng = np.random.default_rng(5)
    pts = [_sym(rng, 3) for _ in range(2)]
    fam = Fam("eigh", (3, 1, 1))
    r = fam.forward(_block(pts, 2, np.float32), 2, 2)
    assert r.dtype == np.float32
    for p in range(2):
        _close(r[:3, p], fam.ref1(pts[p])[:3], 1e-5)
        # vectors up to sign in single precision
        got = r[3:, p].reshape(3, 3)
        want = fam.ref1(pts[p])[3:].reshape(3, 3)
        _close(np.abs(got), np.abs(want), 1e-4)


# -- svd ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 3), (3, 5)])
@pytest.mark.parametrize("uv", [1, 0])
@pytest.mark.parametrize("m,w", [(1, 1), (2, 3)])
def test_svd_routines(shape, uv, m, w):
    rng = np.random.default_rng(7 * shape[0] + shape[1] + 3 * uv + m)
    _check_all(Fam("svd", (*shape, int(shape[0] == shape[1]), uv)),
               [_rect(rng, *shape) for _ in range(m)], rng, w)


def test_svd_values_are_numpys():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((6, 4))
    r = Fam("svd", (6, 4, 0, 1)).forward(a.reshape(-1, 1), 1, 1)[:, 0]
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    _close(r, np.concatenate([u.ravel(), s, vh.ravel()]), 1e-12)


def test_svd_repeated_singular_values():
    rng = np.random.default_rng(9)
    a = (_orth(rng, 3) @ np.diag([2.0, 2.0, 1.0]) @ _orth(rng, 3).T).ravel()
    fam = Fam("svd", (3, 3, 1, 0))
    g = fam.vjp(a[:, None], np.ones((3, 1)), 1, 1)[:, 0].reshape(3, 3)
    u, _, vh = np.linalg.svd(a.reshape(3, 3))
    _close(g, u @ vh, 1e-12)  # the nuclear norm's gradient, exact
    full = Fam("svd", (3, 3, 1, 1))
    gr = rng.standard_normal((21, 1))
    assert not np.all(np.isfinite(full.vjp(a[:, None], gr, 1, 1)))


def test_svd_float32_and_shared():
    rng = np.random.default_rng(10)
    a = _rect(rng, 4, 3)
    fam = Fam("svd", (4, 3, 0, 0))
    r = fam.forward(a[:, None].astype(np.float32), 3, 3)
    assert r.dtype == np.float32
    for p in range(3):
        _close(r[:, p], np.linalg.svd(a.reshape(4, 3), compute_uv=False), 1e-5)


# -- qr -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (6, 3), (5, 1)])
@pytest.mark.parametrize("m,w", [(1, 1), (2, 3)])
def test_qr_routines(shape, m, w):
    rng = np.random.default_rng(11 * shape[0] + shape[1] + m)
    _check_all(Fam("qr", shape), [_tall(rng, *shape) for _ in range(m)], rng, w)


def test_qr_values_are_numpys_and_singular_is_non_finite():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((5, 3))
    fam = Fam("qr", (5, 3))
    q, r = np.linalg.qr(a)
    _close(fam.forward(a.reshape(-1, 1), 1, 1)[:, 0],
           np.concatenate([q.ravel(), r.ravel()]), 1e-12)
    a[:, 2] = a[:, 0]
    g = fam.vjp(a.reshape(-1, 1), rng.standard_normal((24, 1)), 1, 1)
    assert not np.all(np.isfinite(g))


# -- Python side ----------------------------------------------------------------------
def test_checks_and_sizes():
    np.testing.assert_array_equal(
        fe.eigh_check(np.array([[3, 1, 1], [3, 0, 0], [-1, 1, 1], [3, 2, 1]])),
        [False, False, True, True])
    np.testing.assert_array_equal(
        fe.svd_check(np.array([[3, 2, 0, 1], [3, 3, 1, 1], [3, 2, 1, 1], [3, 2, 1, 0],
                               [-1, 2, 0, 0]])),
        [False, False, True, False, True])
    np.testing.assert_array_equal(fe.qr_check(np.array([[3, 2], [2, 3], [0, 0]])),
                                  [False, True, False])
    # the result, then the operand
    assert fe.eigh_sizes((3, 1, 1)) == (12, 9)
    assert fe.eigh_sizes((3, 1, 0)) == (3, 9)
    assert fe.svd_sizes((5, 3, 0, 1)) == (15 + 3 + 9, 15)
    assert fe.svd_sizes((5, 3, 0, 0)) == (3, 15)
    assert fe.qr_sizes((5, 3)) == (24, 15)
    assert FAMILIES["svd"].rules["second_order"] == "svd_second"


def test_untraced_calls_are_numpy():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((2, 4, 3))
    s = a[:, :3] + np.swapaxes(a[:, :3], -1, -2)

    def no_emit(*args):
        raise AssertionError("nothing is traced")

    for got, want in [
        (fe.record_eigh(no_emit, s, "U"), np.linalg.eigh(s, "U")),
        (fe.record_svd(no_emit, a, full_matrices=False), np.linalg.svd(a, False)),
        (fe.record_qr(no_emit, a), np.linalg.qr(a)),
        ((fe.record_eigvalsh(no_emit, s),), (np.linalg.eigvalsh(s),)),
    ]:
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)


class _Fake:
    """Stands in for the recording call: records the emitted instructions and returns
    the reference result as a tracer would hold it (only shapes matter here)."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, operands, attrs, shape):
        self.calls.append((name, attrs))
        flat = [np.asarray(o, np.float64).ravel() for o in operands]
        return FAMILIES[name].reference(attrs, *flat).reshape(shape)


def test_recording_with_a_stand_in(monkeypatch):
    # the recording functions' shapes and splitting, with plain arrays posing as traced
    monkeypatch.setattr(fe, "_traced", lambda x: True)
    rng = np.random.default_rng(14)
    a = rng.standard_normal((2, 4, 3))
    s = a[:, :3] + np.swapaxes(a[:, :3], -1, -2)
    emit = _Fake()
    w, v = fe.record_eigh(emit, s)
    ww, vv = np.linalg.eigh(s)
    _close(w, ww, 1e-12)
    _close(v, vv, 1e-12)
    assert emit.calls == [("eigh", (3, 1, 1))] * 2
    _close(fe.record_eigvalsh(emit, s, "U"), np.linalg.eigvalsh(s, "U"), 1e-12)
    for got, want in zip(fe.record_svd(emit, a, full_matrices=False),
                         np.linalg.svd(a, full_matrices=False), strict=True):
        _close(got, want, 1e-12)
    _close(fe.record_svd(emit, a, compute_uv=False), np.linalg.svd(a, compute_uv=False),
           1e-12)
    _close(fe.record_svd(emit, s, compute_uv=False, hermitian=True),
           np.linalg.svd(s, compute_uv=False, hermitian=True), 1e-12)
    for got, want in zip(fe.record_qr(emit, a), np.linalg.qr(a), strict=True):
        _close(got, want, 1e-12)
    _close(fe.record_qr(emit, a, "r"), np.linalg.qr(a, "r"), 1e-12)
    with pytest.raises(TracingError, match="full_matrices=False"):
        fe.record_svd(emit, a)
    with pytest.raises(TracingError, match="hermitian"):
        fe.record_svd(emit, s, hermitian=True)
    with pytest.raises(TracingError, match="fewer rows"):
        fe.record_qr(emit, np.swapaxes(a, -1, -2))
    with pytest.raises(TracingError, match="complete"):
        fe.record_qr(emit, a, "complete")
