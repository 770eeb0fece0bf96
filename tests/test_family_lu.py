"""The LU families (solve, inv, det, slogdet): kernel routines called directly on
family-layout blocks, against numpy and central differences, at one point, at several
points (with garbage columns past m), with shared operands, and at singular matrices;
and the Python side (checks, references, recording with a stand-in recording call)."""

from __future__ import annotations

import numpy as np
import pytest

from tapejit import _fam_lu as fl
from tapejit._kernels import fam_lu as k

# The kernel file's routines, called directly: Numba compiles them here (cached next to
# the file), not from the cache `tapejit compile` fills (see tests/conftest.py).
pytestmark = pytest.mark.compiles

FAMILIES = {f.name: f for f in fl.LU_FAMILIES}
EMPTY = np.zeros((0, 1))


def _routine(name, sweep):
    return getattr(k, f"{name}_{sweep}")


def _attrs(name, n, nk):
    return (n, nk) if name == "solve" else (n,)


def _matrix(rng, n):
    # Well conditioned: the central differences below reach 1e-10.
    return np.eye(n) + 0.3 * rng.standard_normal((n, n)) / np.sqrt(max(n, 1))


def _points(rng, name, n, nk, m):
    """Per-point operand values: a list of (len_k, m) arrays."""
    a = np.stack([_matrix(rng, n).ravel() for _ in range(m)], axis=1)
    if name == "solve":
        return [a, rng.standard_normal((n * nk, m))]
    return [a]


def _block(x, w, dtype=np.float64):
    """(len, m) values as a (len, w) block whose columns past m are garbage (NaN)."""
    out = np.full((x.shape[0], w), np.nan, dtype)
    out[:, : x.shape[1]] = x
    return out


def _pad(ops):
    return list(ops) + [EMPTY.astype(ops[0].dtype)] * (3 - len(ops))


def _result_size(name, attrs):
    return int(FAMILIES[name].sizes(np.array([attrs]))[0, 0])


def _ref(name, attrs, ops, p):
    return FAMILIES[name].reference(attrs, *[o[:, min(p, o.shape[1] - 1)] for o in ops])


def forward(name, attrs, ops, w, m):
    size = _result_size(name, attrs)
    r = np.full((size, w), np.nan, ops[0].dtype)
    _routine(name, "forward")(np.array(attrs, np.int32), *_pad(ops), r, m)
    return r


def reverse(name, attrs, ops, gr, flags, w, m, base):
    """The adjoints added by reverse into ``base`` (copied)."""
    r = forward(name, attrs, ops, w, m)
    g = [b.copy() for b in base]
    _routine(name, "reverse")(np.array(attrs, np.int32), *_pad(ops), r, gr,
                              *_pad(g), *(list(flags) + [0] * (3 - len(flags))), m)
    return [gi - bi for gi, bi in zip(g, base, strict=True)]


def tangent(name, attrs, ops, tops, flags, w, m):
    size = _result_size(name, attrs)
    nv = tops[0].shape[1]
    r = np.full((size, w), np.nan)
    tr = np.full((size, nv, w), np.nan)
    tpad = list(tops) + [np.zeros((0, 1, 1))] * (3 - len(tops))
    _routine(name, "tangent")(np.array(attrs, np.int32), *_pad(ops), r, *tpad, tr,
                              *(list(flags) + [0] * (3 - len(flags))), m)
    return r, tr


def second(name, attrs, ops, tops, gr, gdr, flags, w, m, base, dbase):
    r, tr = tangent(name, attrs, ops, tops, flags, w, m)
    g = [b.copy() for b in base]
    gd = [b.copy() for b in dbase]
    tpad = list(tops) + [np.zeros((0, 1, 1))] * (3 - len(tops))
    _routine(name, "second")(np.array(attrs, np.int32), *_pad(ops), r, *tpad, tr, gr, gdr,
                             *_pad(g), *(gd + [np.zeros((0, 1, 1))] * (3 - len(gd))),
                             *(list(flags) + [0] * (3 - len(flags))), m)
    return ([gi - bi for gi, bi in zip(g, base, strict=True)],
            [gi - bi for gi, bi in zip(gd, dbase, strict=True)])


def _d5(f, h=2e-4):
    """The derivative at 0 of f(t) by the five-point stencil (error O(h^4))."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def _close(got, want, tol=1e-10):
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# Modes: (w, m, shared): one point; 3 valid points in a chunk of 5 (garbage after);
# the matrix shared by all points (solve only: B per point).
MODES = [(1, 1, False), (5, 3, False), (4, 4, True)]
CASES = [("solve", 1, 1), ("solve", 2, 3), ("solve", 3, 1), ("solve", 4, 2),
         ("solve", 20, 2), ("inv", 1, 0), ("inv", 3, 0), ("inv", 20, 0), ("det", 1, 0),
         ("det", 2, 0), ("det", 3, 0), ("det", 5, 0), ("det", 20, 0), ("slogdet", 1, 0),
         ("slogdet", 3, 0), ("slogdet", 20, 0)]


def _setup(name, n, nk, mode, seed=0):
    w, m, shared = mode
    rng = np.random.default_rng(seed)
    attrs = _attrs(name, n, nk)
    vals = _points(rng, name, n, nk, m)
    if shared:
        vals[0] = vals[0][:, :1]
    ops = [_block(v, 1 if v.shape[1] == 1 else w) for v in vals]
    flags = [0 if o.shape[1] == 1 and w > 1 else 1 for o in ops]
    return rng, attrs, vals, ops, flags


def _cases_modes():
    for name, n, nk in CASES:
        for mode in MODES:
            if mode[2] and name != "solve":
                continue
            yield pytest.param(name, n, nk, mode, id=f"{name}-{n}-{nk}-w{mode[0]}m{mode[1]}"
                               + ("-shared" if mode[2] else ""))


@pytest.mark.parametrize(("name", "n", "nk", "mode"), list(_cases_modes()))
def test_forward_matches_numpy(name, n, nk, mode):
    _, attrs, vals, ops, _ = _setup(name, n, nk, mode)
    w, m, _ = mode
    r = forward(name, attrs, ops, w, m)
    for p in range(m):
        _close(r[:, p], _ref(name, attrs, vals, p))


@pytest.mark.parametrize(("name", "n", "nk", "mode"), list(_cases_modes()))
def test_reverse_matches_central_differences(name, n, nk, mode):
    rng, attrs, vals, ops, flags = _setup(name, n, nk, mode)
    w, m, _ = mode
    size = _result_size(name, attrs)
    gr = _block(rng.standard_normal((size, m)), w)
    base = [_block(rng.standard_normal((o.shape[0], m)), w) for o in ops]
    got = reverse(name, attrs, ops, gr, flags, w, m, base)
    for p in range(m):
        for kk, (v, flag) in enumerate(zip(vals, flags, strict=True)):
            if not flag:
                np.testing.assert_array_equal(got[kk], 0)
                continue
            want = np.empty(v.shape[0])
            for i in range(v.shape[0]):
                def f(t, i=i, kk=kk, p=p):
                    x = [u[:, min(p, u.shape[1] - 1)].copy() for u in vals]
                    x[kk][i] += t
                    return FAMILIES[name].reference(attrs, *x)
                want[i] = _d5(f) @ gr[:, p]
            _close(got[kk][:, p], want)


def _directions(rng, ops, flags, nv, w, m):
    return [_block(rng.standard_normal((o.shape[0] * nv, m)), w).reshape(o.shape[0], nv, w)
            if f else np.zeros((o.shape[0], nv, 1)) for o, f in zip(ops, flags, strict=True)]


@pytest.mark.parametrize(("name", "n", "nk", "mode"), list(_cases_modes()))
def test_tangent_matches_central_differences(name, n, nk, mode):
    rng, attrs, vals, ops, flags = _setup(name, n, nk, mode)
    w, m, _ = mode
    nv = 2
    tops = _directions(rng, ops, flags, nv, w, m)
    r, tr = tangent(name, attrs, ops, tops, flags, w, m)
    for p in range(m):
        _close(r[:, p], _ref(name, attrs, vals, p))
        for v in range(nv):
            def f(t, v=v, p=p):
                x = [u[:, min(p, u.shape[1] - 1)] + (t * d[:, v, p] if fl_ else 0)
                     for u, d, fl_ in zip(vals, tops, flags, strict=True)]
                return FAMILIES[name].reference(attrs, *x)
            _close(tr[:, v, p], _d5(f))


@pytest.mark.parametrize(("name", "n", "nk", "mode"), list(_cases_modes()))
def test_second_matches_central_differences_of_reverse(name, n, nk, mode):
    rng, attrs, _, ops, flags = _setup(name, n, nk, mode)
    w, m, _ = mode
    nv = 2
    size = _result_size(name, attrs)
    tops = _directions(rng, ops, flags, nv, w, m)
    gr = _block(rng.standard_normal((size, m)), w)
    gdr = _block(rng.standard_normal((size * nv, m)), w).reshape(size, nv, w)
    base = [_block(rng.standard_normal((o.shape[0], m)), w) for o in ops]
    dbase = [_block(rng.standard_normal((o.shape[0] * nv, m)), w).reshape(-1, nv, w)
             for o in ops]
    g, gd = second(name, attrs, ops, tops, gr, gdr, flags, w, m, base, dbase)
    zeros = [np.zeros_like(b) for b in base]
    _close(np.nan_to_num(g[0][:, :m]),
           np.nan_to_num(reverse(name, attrs, ops, gr, flags, w, m, zeros)[0][:, :m]))
    for v in range(nv):
        def vjp(t, v=v):
            x = [o + t * np.nan_to_num(d[:, v, :]) if f_ else o
                 for o, d, f_ in zip(ops, tops, flags, strict=True)]
            return reverse(name, attrs, x, gr + t * gdr[:, v, :], flags, w, m, zeros)
        for kk, flag in enumerate(flags):
            if flag:
                _close(gd[kk][:, v, :m], _d5(lambda t, kk=kk, f=vjp: f(t)[kk][:, :m]))
            else:
                np.testing.assert_array_equal(gd[kk], 0)


# -- shapes at the edges -----------------------------------------------------------------

def test_empty_rhs_and_empty_matrix():
    at = np.array((3, 0), np.int32)
    a = np.eye(3).reshape(9, 1)
    r = np.empty((0, 1))
    k.solve_forward(at, a, np.empty((0, 1)), EMPTY, r, 1)
    ga = np.zeros((9, 1))
    k.solve_reverse(at, a, np.empty((0, 1)), EMPTY, r, r, ga, np.empty((0, 1)), EMPTY,
                    1, 1, 0, 1)
    np.testing.assert_array_equal(ga, 0)
    for name, want in (("det", [1.0]), ("slogdet", [1.0, 0.0])):
        out = forward(name, (0,), [np.empty((0, 1))], 1, 1)
        np.testing.assert_array_equal(out[:, 0], want)
        np.testing.assert_array_equal(out[:, 0], fl.LU_FAMILIES[
            [f.name for f in fl.LU_FAMILIES].index(name)].reference((0,), np.empty(0)))
    assert forward("inv", (0,), [np.empty((0, 1))], 1, 1).shape == (0, 1)


def test_attribute_checks():
    np.testing.assert_array_equal(
        fl.solve_check(np.array([[3, 2], [3, 0], [0, 0], [-1, 2], [2, -1], [50000, 1],
                                 [2, 2**30]])),
        [False, False, False, True, True, True, True])
    np.testing.assert_array_equal(fl.square_check(np.array([[0], [4], [-1], [46341]])),
                                  [False, False, True, True])
    assert fl.solve_sizes((3, 2)) == (6, 9, 6)  # the result, then each operand
    assert fl.slogdet_sizes((4,)) == (2, 16)
    assert FAMILIES["det"].rules["second_order"] == "det_second"
    assert all(hasattr(k, r) for f in fl.LU_FAMILIES for r in f.rules.values())


# -- singular matrices -------------------------------------------------------------------

SINGULAR = {2: np.array([[1.0, 2.0], [2.0, 4.0]]),
            3: np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]]),
            4: np.array([[1.0, 2, 3, 4], [2, 4, 6, 8], [0, 1, 0, 1], [1, 0, 1, 0]]),
            20: np.vstack([np.ones((2, 20)), np.eye(20)[2:]])}


def _adjugate_t(x):
    # Cofactor matrix by minors: independent of the kernels' formulas.
    n = len(x)
    return np.array([[(-1) ** (i + j) * np.linalg.det(np.delete(np.delete(x, i, 0), j, 1))
                      for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("trans", [False, True])
def test_unrolled_3x3_solve_gives_the_bits_of_the_general_elimination(trans):
    # One right-hand side of a 3x3 system per point runs an unrolled elimination; it
    # must make the same pivot choices and operations as the general one. Small
    # integers give ties between candidate pivots, zero pivots and singular matrices.
    rng = np.random.default_rng(7)
    m = 4000
    a = rng.integers(-2, 3, (9, m)).astype(float)
    a[:, : m // 2] += rng.standard_normal((9, m // 2))
    a[rng.integers(0, 9, 40), rng.integers(0, m, 40)] = np.nan  # NaN is never a pivot
    y = rng.standard_normal((3, m))
    want = y.copy()
    k._lu_apply(k._lu_factor(a, trans, 3, m), want, 3, 1, m)
    for mm in (m, 1):
        got = y.copy()
        k._lu3_solve(a, trans, got, mm)
        np.testing.assert_array_equal(got[:, :mm], want[:, :mm])  # NaN where NaN
        assert got[:, :mm].tobytes() == want[:, :mm].tobytes()
    assert np.isnan(want).any() and np.isfinite(want).any()


@pytest.mark.parametrize("n", sorted(SINGULAR))
@pytest.mark.parametrize("w", [1, 3])
def test_singular_solve_inv_give_nan(n, w):
    x = SINGULAR[n].ravel()[:, None]
    a = np.repeat(x, w, axis=1)
    a[:, 1:] = np.eye(n).ravel()[:, None]  # the other points are regular
    b = np.ones((n, w))
    r = forward("solve", (n, 1), [a, b], w, w)
    assert np.isnan(r[:, 0]).all()
    np.testing.assert_array_equal(r[:, 1:], 1.0)
    ga = np.zeros((n * n, w))
    gb = np.zeros((n, w))
    k.solve_reverse(np.array((n, 1), np.int32), a, b, EMPTY, r, np.ones((n, w)), ga, gb,
                    EMPTY, 1, 1, 0, w)
    assert np.isnan(ga[:, 0]).all() and np.isnan(gb[:, 0]).all()
    assert np.isfinite(ga[:, 1:]).all()
    ri = forward("inv", (n,), [a], w, w)
    assert np.isnan(ri[:, 0]).all()
    assert np.isnan(fl.solve_reference((n, 1), x[:, 0], b[:, 0])).all()
    assert np.isnan(fl.inv_reference((n,), x[:, 0])).all()


@pytest.mark.parametrize("n", sorted(SINGULAR))
def test_singular_shared_matrix_gives_nan_at_every_point(n):
    a = SINGULAR[n].reshape(-1, 1)
    b = np.ones((n, 4))
    assert np.isnan(forward("solve", (n, 1), [a, b], 4, 4)).all()
    gb = np.zeros((n, 4))
    r = np.zeros((n, 4))
    k.solve_reverse(np.array((n, 1), np.int32), a, b, EMPTY, r, np.ones((n, 4)),
                    np.zeros((n * n, 1)), gb, EMPTY, 0, 1, 0, 4)
    assert np.isnan(gb).all()


@pytest.mark.parametrize("n", sorted(SINGULAR))
@pytest.mark.parametrize("w", [1, 3])
def test_singular_det_and_slogdet(n, w):
    x = SINGULAR[n]
    a = np.repeat(x.ravel()[:, None], w, axis=1)
    d = forward("det", (n,), [a], w, w)
    np.testing.assert_array_equal(d, 0.0)
    s = forward("slogdet", (n,), [a], w, w)
    np.testing.assert_array_equal(s[0], 0.0)
    np.testing.assert_array_equal(s[1], -np.inf)
    gr = np.ones((1, w))
    gdet = reverse("det", (n,), [a], gr, [1], w, w, [np.zeros_like(a)])[0]
    if n <= 3:  # the closed-form cofactors: the true gradient, the adjugate transposed
        np.testing.assert_allclose(gdet, np.repeat(_adjugate_t(x).ravel()[:, None], w, 1),
                                   atol=1e-12)
    else:
        assert np.isnan(gdet).all()
    glog = reverse("slogdet", (n,), [a], np.ones((2, w)), [1], w, w,
                   [np.zeros_like(a)])[0]
    assert np.isnan(glog).all()


def test_nonfinite_input_gives_nan_not_an_error():
    for n in (3, 20):
        a = np.eye(n).ravel()[:, None].copy()
        a[1, 0] = np.nan
        assert np.isnan(forward("solve", (n, 1), [a, np.ones((n, 1))], 1, 1)).all()
        assert np.isnan(forward("inv", (n,), [a], 1, 1)).all()
        assert np.isnan(forward("det", (n,), [a], 1, 1)).all()


@pytest.mark.parametrize("n", [3, 20])
def test_one_points_nan_spoils_no_other_point(n):
    # A shared matrix: one factorization (n = 3) or one LAPACK solve (n = 20) for all.
    rng = np.random.default_rng(4)
    a = _matrix(rng, n).reshape(-1, 1)
    b = rng.standard_normal((n, 3))
    b[1, 1] = np.nan
    r = forward("solve", (n, 1), [a, b], 3, 3)
    assert np.isnan(r[:, 1]).all()
    for p in (0, 2):
        _close(r[:, p], np.linalg.solve(a.reshape(n, n), b[:, p]))


def test_float32():
    rng = np.random.default_rng(3)
    n, nk, w, m = 3, 2, 4, 4
    vals = _points(rng, "solve", n, nk, m)
    ops = [v.astype(np.float32) for v in vals]
    r = forward("solve", (n, nk), ops, w, m)
    assert r.dtype == np.float32
    for p in range(m):
        np.testing.assert_allclose(r[:, p], _ref("solve", (n, nk), vals, p), rtol=1e-5,
                                   atol=1e-5)
    gr = rng.standard_normal((n * nk, w)).astype(np.float32)
    ga = np.zeros((n * n, w), np.float32)
    gb = np.zeros((n * nk, w), np.float32)
    k.solve_reverse(np.array((n, nk), np.int32), ops[0], ops[1], EMPTY.astype(np.float32),
                    r, gr, ga, gb, EMPTY.astype(np.float32), 1, 1, 0, m)
    want = reverse("solve", (n, nk), vals, gr.astype(float), [1, 1], w, m,
                   [np.zeros((n * n, w)), np.zeros((n * nk, w))])
    np.testing.assert_allclose(ga, want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, want[1], rtol=1e-4, atol=1e-4)


# -- recording ---------------------------------------------------------------------------

def _emit(name, operands, attrs, shape):
    """A stand-in recording call: the reference on plain arrays."""
    fam = FAMILIES[name]
    flat = [np.asarray(o, float).ravel() for o in operands]
    assert [f.size for f in flat] == fam.sizes(np.array([attrs]))[0, 1:].tolist()
    return fam.reference(attrs, *flat).reshape(shape)


def test_record_matches_numpy():
    rng = np.random.default_rng(5)
    a = np.stack([_matrix(rng, 3) for _ in range(4)]).reshape(2, 2, 3, 3)
    b = rng.standard_normal((2, 1, 3, 2))
    _close(fl.record_solve(_emit, a, b), np.linalg.solve(a, b))
    _close(fl.record_solve(_emit, a[0, 0], b[0, 0]), np.linalg.solve(a[0, 0], b[0, 0]))
    v = rng.standard_normal(3)
    _close(fl.record_solve(_emit, a, v), np.linalg.solve(a, v))
    _close(fl.record_solve(_emit, a[1, 1], v), np.linalg.solve(a[1, 1], v))
    _close(fl.record_inv(_emit, a), np.linalg.inv(a))
    _close(fl.record_det(_emit, a), np.linalg.det(a))
    _close(fl.record_det(_emit, a[0, 1]), np.linalg.det(a[0, 1]))
    sign, logdet = fl.record_slogdet(_emit, a)
    want = np.linalg.slogdet(a)
    _close(sign, want.sign)
    _close(logdet, want.logabsdet)
    assert fl.record_solve(_emit, [[2.0]], [[4.0, 6.0]]).tolist() == [[2.0, 3.0]]
    assert fl.record_solve(_emit, np.eye(2), np.ones((2, 0))).shape == (2, 0)
    empty = np.zeros((0, 3, 3))
    assert fl.record_inv(_emit, empty).shape == (0, 3, 3)
    assert fl.record_slogdet(_emit, empty).sign.shape == (0,)
    assert fl.record_solve(_emit, empty, np.ones(3)).shape == (0, 3)


def test_record_refuses_what_numpy_refuses():
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        fl.record_inv(_emit, np.ones((2, 3)))
    with pytest.raises(np.linalg.LinAlgError, match="two-dimensional"):
        fl.record_det(_emit, np.ones(3))
    with pytest.raises(ValueError, match="rows"):
        fl.record_solve(_emit, np.eye(3), np.ones((2, 1)))
    with pytest.raises(TypeError, match="dtype"):
        fl.record_solve(_emit, np.eye(2, dtype=complex), np.ones(2))
