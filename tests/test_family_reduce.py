"""The reduce and scan families: kernel routines against numpy and central differences,
and the recording functions' axis mapping against numpy (through the kernels)."""

import math

import numpy as np
import pytest

from tapejit import _fam_reduce as fr
from tapejit._kernels import fam_reduce as k

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

RULES = {
    "reduce": (k.reduce_forward, k.reduce_reverse, k.reduce_tangent, k.reduce_second,
               fr.reduce_reference, fr.reduce_sizes, fr.reduce_check),
    "scan": (k.scan_forward, k.scan_reverse, k.scan_tangent, k.scan_second,
             fr.scan_reference, fr.scan_sizes, fr.scan_check),
}
KINDS = [("reduce", fr.SUM), ("reduce", fr.PROD), ("reduce", fr.MAX), ("reduce", fr.MIN),
         ("scan", fr.CUMSUM), ("scan", fr.CUMPROD)]
SHAPES = [(1, 1, 1), (1, 9, 1), (3, 5, 1), (1, 6, 4), (2, 11, 3), (2, 1, 3), (1, 20, 1)]
NV = 2
E = np.zeros((0, 1))


def _sizes(fam, attrs):
    size, ln = RULES[fam][5](np.array([attrs]))[0]
    return int(ln), int(size)


def _point(rng, kind, ln):
    # Well-conditioned values: products of magnitudes near 1, extremes far apart.
    if kind in (fr.MAX, fr.MIN):
        return (rng.permutation(ln) + rng.uniform(0.3, 0.7, ln)) * rng.choice([-1, 1])
    return rng.uniform(0.6, 1.4, ln) * rng.choice([-1.0, 1.0], ln)


def _forward(fam, at, a, w, m):
    size = _sizes(fam, tuple(at))[1]
    r = np.full((size, w), np.nan, a.dtype)
    RULES[fam][0](at, a, E, E, r, m)
    return r


def _reverse(fam, at, a, r, gr):
    ga = np.zeros_like(a)
    RULES[fam][1](at, a, E, E, r, gr, ga, E, E, 1, 0, 0, a.shape[1])
    return ga


def _richardson(f, h=1e-3):
    # Central difference of f at 0, extrapolated: error O(h**4).
    d1 = (f(h) - f(-h)) / (2 * h)
    d2 = (f(h / 2) - f(-h / 2)) / h
    return (4 * d2 - d1) / 3


def _close(got, want, rtol=1e-10):
    finite = np.abs(want)[np.isfinite(want)]
    scale = max(finite.max(), 1.0) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("fam,kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("w,m", [(1, 1), (4, 3)])
def test_four_routines(fam, kind, shape, w, m):
    rng = np.random.default_rng(hash((fam, kind, shape, w)) % 2**32)
    at = np.array((kind, *shape), np.int32)
    ln, size = _sizes(fam, tuple(at))
    a = np.full((ln, w), np.nan)  # garbage columns m.. stay NaN
    for p in range(m):
        a[:, p] = _point(rng, kind, ln)
    ref = RULES[fam][4]
    tan, sec = RULES[fam][2:4]

    r = _forward(fam, at, a, w, m)
    for p in range(m):
        _close(r[:, p], ref(tuple(at), a[:, p]), 1e-13)

    gr = rng.standard_normal((size, w))
    ga = _reverse(fam, at, a, r, gr)
    ta = rng.standard_normal((ln, NV, w))
    r2 = np.empty_like(r)
    tr = np.full((size, NV, w), np.nan)
    tan(at, a, E, E, r2, ta, E, E, tr, 1, 0, 0, m)
    _close(r2[:, :m], r[:, :m], 0)
    gdr = rng.standard_normal((size, NV, w))
    ga2 = np.zeros_like(a)
    gda = np.zeros((ln, NV, w))
    sec(at, a, E, E, r, ta, E, E, tr, gr, gdr, ga2, E, E, gda, E, E, 1, 0, 0, m)
    _close(ga2[:, :m], ga[:, :m], 0)

    for p in range(m):
        x, g = a[:, p], gr[:, p]
        jac = np.array([_richardson(lambda h, j=j, x=x: ref(tuple(at), x + h * np.eye(ln)[j]))
                        for j in range(ln)]).T.reshape(size, ln)
        _close(ga[:, p], jac.T @ g)
        for v in range(NV):
            _close(tr[:, v, p], jac @ ta[:, v, p])

            def vjp(h, p=p, v=v):
                ap = a[:, p:p + 1] + h * ta[:, v, p:p + 1]
                rp = _forward(fam, at, ap, 1, 1)
                return _reverse(fam, at, ap, rp, gr[:, p:p + 1] + h * gdr[:, v, p:p + 1])[:, 0]

            _close(gda[:, v, p], _richardson(vjp))


@pytest.mark.parametrize("fam,kind", KINDS)
def test_shared_operand_and_constant_inputs(fam, kind):
    # A shared operand (w == 1) under a chunk of 3 points: the same result for each,
    # zero tangents, and no adjoint work.
    rng = np.random.default_rng(5)
    at = np.array((kind, 2, 5, 3), np.int32)
    ln, size = _sizes(fam, tuple(at))
    a = _point(rng, kind, ln)[:, None]
    r = _forward(fam, at, a, 3, 3)
    want = RULES[fam][4](tuple(at), a[:, 0])
    for p in range(3):
        _close(r[:, p], want, 0)
    tr = np.full((size, NV, 3), np.nan)
    RULES[fam][2](at, a, E, E, np.empty((size, 3)), E.reshape(0, 1, 1), E, E, tr, 0, 0, 0, 3)
    assert not tr.any()
    ga = np.zeros((0, 1))
    RULES[fam][1](at, a, E, E, r, np.ones((size, 3)), ga, E, E, 0, 0, 0, 3)


@pytest.mark.parametrize("fam,kind", KINDS)
def test_float32(fam, kind):
    rng = np.random.default_rng(7)
    at = np.array((kind, 2, 6, 3), np.int32)
    ln, size = _sizes(fam, tuple(at))
    a = np.stack([_point(rng, kind, ln) for _ in range(2)], axis=1).astype(np.float32)
    r = _forward(fam, at, a, 2, 2)
    assert r.dtype == np.float32
    gr = np.ones((size, 2), np.float32)
    ga = _reverse(fam, at, a, r, gr)
    a64 = a[:, :1].astype(np.float64)
    r64 = _forward(fam, at, a64, 1, 1)
    _close(r[:, :1], r64, 1e-5)
    _close(ga[:, :1], _reverse(fam, at, a64, r64, np.ones((size, 1))), 1e-5)
    # tangent and second in float32 against float64
    outs = []
    for dt in (np.float32, np.float64):
        x = a[:, :1].astype(dt)
        ta = np.linspace(-1, 1, ln * NV).reshape(ln, NV, 1).astype(dt)
        rr, tr = np.empty((size, 1), dt), np.empty((size, NV, 1), dt)
        RULES[fam][2](at, x, E, E, rr, ta, E, E, tr, 1, 0, 0, 1)
        gx, gdx = np.zeros((ln, 1), dt), np.zeros((ln, NV, 1), dt)
        RULES[fam][3](at, x, E, E, rr, ta, E, E, tr, np.ones((size, 1), dt),
                      np.ones((size, NV, 1), dt), gx, E, E, gdx, E, E, 1, 0, 0, 1)
        assert tr.dtype == gdx.dtype == dt
        outs.append((tr, gx, gdx))
    for got, want in zip(*outs, strict=True):
        _close(got, want, 1e-5)


def test_sum_is_pairwise():
    # 10**6 terms of 0.1 (+ noise): a running sum loses digits, numpy's pairwise sum
    # hardly any; so must the kernel, at one point, along lanes and along points.
    rng = np.random.default_rng(0)
    n = 10**6
    x = 0.1 + 1e-3 * rng.random(n)
    exact = math.fsum(x)
    naive = np.cumsum(x)[-1]
    bound = max(abs(np.sum(x) - exact), 4 * np.finfo(float).eps * exact)
    assert abs(naive - exact) > 10 * bound
    one = _forward("reduce", np.array((fr.SUM, 1, n, 1), np.int32), x[:, None], 1, 1)
    assert abs(one[0, 0] - exact) <= bound
    lanes = _forward("reduce", np.array((fr.SUM, 1, n, 2), np.int32),
                     np.repeat(x, 2)[:, None], 1, 1)
    assert np.all(np.abs(lanes[:, 0] - exact) <= bound)
    points = _forward("reduce", np.array((fr.SUM, 1, n, 1), np.int32),
                      np.stack([x, x], 1), 2, 2)
    assert np.all(np.abs(points[0] - exact) <= bound)


def _block_order_sum(x):
    """The sum of the 1-D array ``x`` in the order ``fam_reduce``'s docstring gives,
    element by element with numpy scalars of ``x``'s dtype: blocks of 128, each with
    eight accumulators, block sums by a binary counter."""
    def block(y):
        if len(y) < 8:
            s = y[0]
            for v in y[1:]:
                s = s + v
            return s
        r = list(y[:8])
        k = 8
        while k + 8 <= len(y):
            r = [r[j] + y[k + j] for j in range(8)]
            k += 8
        s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for v in y[k:]:
            s = s + v
        return s

    stack = []  # (sum, blocks in it)
    for b0 in range(0, len(x), 128):
        stack.append((block(x[b0:b0 + 128]), 1))
        while len(stack) > 1 and stack[-1][1] == stack[-2][1]:
            (a, c), (b, _) = stack.pop(-2), stack.pop()
            stack.append((a + b, 2 * c))
    out = stack[-1][0]
    for s, _ in reversed(stack[:-1]):
        out = out + s
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sums_follow_the_documented_order(dtype):
    # Bit for bit, at one point (one lane), along inner lanes and along points, against an
    # independent transcription of the order; terms of many magnitudes, so that another
    # order would round differently.
    rng = np.random.default_rng(7)
    for n in (1, 5, 7, 8, 9, 15, 16, 23, 127, 128, 129, 135, 136, 255, 256, 257, 385, 1000,
              2049):
        x = (rng.standard_normal((n, 3)) * 10.0 ** rng.uniform(-6, 6, (n, 3))).astype(dtype)
        want = [_block_order_sum(x[:, q]) for q in range(3)]
        one = _forward("reduce", np.array((fr.SUM, 1, n, 1), np.int32),
                       np.ascontiguousarray(x[:, :1]), 1, 1)
        lanes = _forward("reduce", np.array((fr.SUM, 1, n, 3), np.int32),
                         x.reshape(-1, 1), 1, 1)
        points = _forward("reduce", np.array((fr.SUM, 1, n, 1), np.int32), x, 3, 3)
        assert one[0, 0].tobytes() == want[0].tobytes(), n
        for q in range(3):
            assert lanes[q, 0].tobytes() == want[q].tobytes(), (n, q)
            assert points[0, q].tobytes() == want[q].tobytes(), (n, q)


@pytest.mark.parametrize("zeros", [1, 2])
def test_products_with_zeros(zeros):
    # One zero: its adjoint is the product of the others, the rest get 0; two: all 0.
    # (A rule dividing by the element would give NaN.) The cumulative product likewise.
    rng = np.random.default_rng(zeros)
    x = rng.uniform(0.5, 2.0, 7)
    x[[2, 5][:zeros]] = 0.0
    a = x[:, None]
    at = np.array((fr.PROD, 1, 7, 1), np.int32)
    ga = _reverse("reduce", at, a, _forward("reduce", at, a, 1, 1), np.ones((1, 1)))
    want = np.array([np.prod(np.delete(x, j)) for j in range(7)])
    _close(ga[:, 0], want, 1e-14)
    assert (want != 0).sum() == (1 if zeros == 1 else 0)
    ats = np.array((fr.CUMPROD, 1, 7, 1), np.int32)
    gr = rng.standard_normal((7, 1))
    gs = _reverse("scan", ats, a, _forward("scan", ats, a, 1, 1), gr)
    jac = np.array([[np.prod(np.delete(x[: i + 1], j)) if j <= i else 0.0
                     for j in range(7)] for i in range(7)])
    _close(gs[:, 0], jac.T @ gr[:, 0], 1e-14)
    assert np.isfinite(gs).all()


@pytest.mark.parametrize("kind", [fr.MAX, fr.MIN])
def test_extreme_ties_go_to_the_first(kind):
    # Documented choice (numpy's argmax): the whole adjoint to the first extreme element.
    x = np.array([1.0, 3.0, -2.0, 3.0, -2.0, 0.5]) * (1 if kind == fr.MAX else -1)
    x[[2, 4]] *= -1 if kind == fr.MIN else 1
    a = np.stack([x, x[::-1]], 1)
    at = np.array((kind, 1, 6, 1), np.int32)
    r = _forward("reduce", at, a, 2, 2)
    ga = _reverse("reduce", at, a, r, np.ones((1, 2)))
    first = [int(np.argmax(a[:, p] * (1 if kind == fr.MAX else -1))) for p in range(2)]
    for p in range(2):
        assert ga[:, p].tolist() == [1.0 if j == first[p] else 0.0 for j in range(6)]
    nan = np.array([1.0, np.nan, 5.0, np.nan])[:, None]
    at4 = np.array((kind, 1, 4, 1), np.int32)
    rn = _forward("reduce", at4, nan, 1, 1)
    assert np.isnan(rn[0, 0])
    assert _reverse("reduce", at4, nan, rn, np.ones((1, 1)))[:, 0].tolist() == [0, 1, 0, 0]


def test_empty_axis_and_checks():
    at = np.array((fr.SUM, 3, 0, 2), np.int32)
    assert _forward("reduce", at, np.zeros((0, 1)), 1, 1)[:, 0].tolist() == [0.0] * 6
    at[0] = fr.PROD
    assert _forward("reduce", at, np.zeros((0, 1)), 1, 1)[:, 0].tolist() == [1.0] * 6
    rows = np.array([(fr.SUM, 3, 0, 2), (fr.MAX, 3, 0, 2), (fr.MAX, 0, 0, 2), (9, 1, 1, 1),
                     (fr.SUM, -1, 2, 2), (fr.SUM, 2**30, 2**30, 1), (fr.MIN, 1, 2**31 - 1, 1)])
    assert fr.reduce_check(rows).tolist() == [False, True, False, True, True, True, False]
    assert fr.scan_check(np.array([(fr.CUMPROD, 1, 0, 1), (fr.MAX, 1, 1, 1)])).tolist() == [
        False, True]


# -- recording ---------------------------------------------------------------------------
def _emit(name, operands, attrs, shape):
    """A stand-in for the recorder's emit_family: checks the attributes, then runs the
    family's kernel forward at one point."""
    fam = RULES[name]
    assert not fam[6](np.array([attrs])).any()
    (x,) = operands
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 1 and x.size == _sizes(name, attrs)[0]
    r = _forward(name, np.array(attrs, np.int32), x[:, None].copy(), 1, 1)
    return r[:, 0].reshape(shape)


X = np.random.default_rng(1).uniform(0.5, 1.5, (3, 4, 5))
MASK = np.random.default_rng(2).random((3, 4, 5)) < 0.7
AXES = [None, 0, -1, 1, (0, 2), (-1, 0), (1, 2), (0, 1, 2), ()]
CALLS = [
    ("sum", fr.record_sum, np.sum, {}),
    ("prod", fr.record_prod, np.prod, {}),
    ("max", fr.record_max, np.max, {}),
    ("amin", fr.record_min, np.amin, {}),
    ("mean", fr.record_mean, np.mean, {}),
    ("var", fr.record_var, np.var, {}),
    ("var ddof", fr.record_var, np.var, {"ddof": 1}),
    ("std correction", fr.record_std, np.std, {"correction": 1.5}),
    ("sum where", fr.record_sum, np.sum, {"where": MASK}),
    ("prod where", fr.record_prod, np.prod, {"where": MASK, "initial": 2.0}),
    ("max where", fr.record_max, np.max, {"where": MASK, "initial": -5.0}),
    ("min where", fr.record_min, np.min, {"where": MASK, "initial": 5.0}),
    ("mean where", fr.record_mean, np.mean, {"where": MASK}),
    ("std where", fr.record_std, np.std, {"where": MASK, "ddof": 1}),
]


@pytest.mark.filterwarnings("ignore:(Mean of empty|Degrees of freedom):RuntimeWarning")
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name,record,numpy_fn,kw", CALLS, ids=[c[0] for c in CALLS])
def test_recording_matches_numpy(name, record, numpy_fn, kw, axis, keepdims):
    got = record(_emit, X, axis=axis, keepdims=keepdims, **kw)
    with np.errstate(all="ignore"):
        want = numpy_fn(X, axis=axis, keepdims=keepdims, **kw)
    assert np.shape(got) == np.shape(want)
    _close(got, want, 1e-12)


@pytest.mark.parametrize("axis", [None, 0, -1, 2])
def test_recording_scans(axis):
    for record, numpy_fn in ((fr.record_cumsum, np.cumsum), (fr.record_cumprod, np.cumprod)):
        got = record(_emit, X, axis=axis)
        want = numpy_fn(X, axis=axis)
        assert got.shape == want.shape
        _close(got, want, 1e-13)
    assert fr.record_cumsum(_emit, 2.0).tolist() == [2.0]


@pytest.mark.parametrize("axis,weights", [
    (None, X * 0 + np.arange(5)), (1, np.arange(1.0, 5.0)), ((2, 0), np.ones((5, 3))),
    (-1, None)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_recording_average(axis, weights, keepdims):
    got, scl = fr.record_average(_emit, X, axis=axis, weights=weights, returned=True,
                                 keepdims=keepdims)
    want, wscl = np.average(X, axis=axis, weights=weights, returned=True, keepdims=keepdims)
    _close(got, want, 1e-12)
    _close(scl, wscl, 1e-12)
    assert np.shape(got) == np.shape(want) and np.shape(scl) == np.shape(wscl)


def test_recording_errors_like_numpy():
    empty = np.zeros((3, 0))
    with pytest.raises(ValueError, match="no identity"), np.errstate(all="ignore"):
        fr.record_max(_emit, empty, axis=1)
    with pytest.raises(ValueError, match="initial"):
        fr.record_min(_emit, X, where=MASK)
    with pytest.raises(np.exceptions.AxisError):
        fr.record_sum(_emit, X, axis=3)
    with pytest.raises(ValueError, match="repeated axis"):
        fr.record_sum(_emit, X, axis=(0, -3))
    with pytest.raises(ValueError, match="simultaneously"):
        fr.record_var(_emit, X, ddof=1, correction=1)
    with pytest.raises(ZeroDivisionError):
        fr.record_average(_emit, X, axis=1, weights=np.zeros(4))
    with pytest.raises(TypeError):
        fr.record_average(_emit, X, weights=np.ones(4))
    assert fr.record_sum(_emit, empty, axis=1).tolist() == [0.0] * 3
    assert fr.record_prod(_emit, empty).tolist() == 1.0
    assert fr.record_max(_emit, empty, axis=1, initial=-1.0).tolist() == [-1.0] * 3
    assert fr.record_min(_emit, empty, axis=1, initial=1.0, keepdims=True).shape == (3, 1)
    assert np.isnan(fr.record_mean(_emit, empty, axis=1)).all()


@pytest.mark.parametrize("fam,kind", KINDS)
@pytest.mark.parametrize("attrs,w,m", [((2, 37, 300), 1, 1), ((2, 37, 2), 300, 299)])
def test_many_lanes(fam, kind, attrs, w, m):
    # More lanes than one tile (inner elements at one point, or points): values and
    # reverse against the reference rules at every valid point.
    rng = np.random.default_rng(3)
    at = np.array((kind, *attrs), np.int32)
    ln, size = _sizes(fam, tuple(at))
    a = np.stack([_point(rng, kind, ln) for _ in range(w)], axis=1)
    r = _forward(fam, at, a, w, m)
    gr = rng.standard_normal((size, w))
    ga = _reverse(fam, at, a, r, gr)
    ref = RULES[fam][4]
    for p in (0, m // 2, m - 1):
        _close(r[:, p], ref(tuple(at), a[:, p]), 1e-13)
        want = _reverse(fam, at, a[:, p:p + 1].copy(), r[:, p:p + 1].copy(),
                        gr[:, p:p + 1].copy())
        _close(ga[:, p], want[:, 0], 1e-13)
    if fam == "reduce" and w == 1 and kind == fr.PROD:
        outer, n, inner = attrs
        x = a[:, 0].reshape(outer, n, inner)
        others = np.array([np.prod(np.delete(x, j, axis=1), axis=1) for j in range(n)])
        _close(ga[:, 0], (others * gr[:, 0].reshape(outer, inner)).transpose(1, 0, 2)
               .reshape(-1), 1e-12)


@pytest.mark.parametrize("fam,kind", KINDS)
@pytest.mark.parametrize("cols", [slice(0, 3), slice(0, 6, 2), slice(2, 3)], ids=str)
def test_strided_blocks(fam, kind, cols):
    # Blocks that are views of a wider workspace (rows apart, or even columns apart):
    # the same values and adjoints as contiguous copies.
    rng = np.random.default_rng(11)
    at = np.array((kind, 2, 9, 3), np.int32)
    ln, size = _sizes(fam, tuple(at))
    big = np.stack([_point(rng, kind, ln) for _ in range(6)], axis=1)
    a = big[:, cols]
    w = a.shape[1]
    rbig = np.full((size, 6), np.nan)
    r = rbig[:, cols]
    RULES[fam][0](at, a, E, E, r, w)
    gbig = np.zeros((ln, 6))
    ga = gbig[:, cols]
    gr = rng.standard_normal((size, w))
    RULES[fam][1](at, a, E, E, r, gr, ga, E, E, 1, 0, 0, w)
    ac = a.copy()
    rc = _forward(fam, at, ac, w, w)
    _close(r, rc, 0)
    _close(ga, _reverse(fam, at, ac, rc, gr), 0)


@pytest.mark.parametrize("kind", [fr.SUM, fr.PROD, fr.MAX, fr.MIN])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_lane_gives_the_bits_of_many_lanes(kind, dtype):
    # One point runs element-by-element paths (no view per row); they must keep the
    # order of the many-lane loops, forward and reverse, so one point and many agree.
    rng = np.random.default_rng(kind)
    # Sums: blocks of 128 with eight accumulators, block sums by a binary counter.
    for n in (1, 7, 8, 9, 17, 100, 127, 128, 129, 1001, 2048, 2056, 4103, 10007):
        at = np.array((kind, 1, n, 1), np.int32)
        a = rng.uniform(0.9, 1.1, (n, 5)).astype(dtype)
        gr = rng.standard_normal((1, 5)).astype(dtype)
        r5 = np.zeros((1, 5), dtype)
        k.reduce_forward(at, a, E, E, r5, 5)
        g5 = np.zeros((n, 5), dtype)
        k.reduce_reverse(at, a, E, E, r5, gr, g5, E, E, 1, 0, 0, 5)
        for p in range(5):
            a1 = np.ascontiguousarray(a[:, p:p + 1])
            r1 = np.zeros((1, 1), dtype)
            k.reduce_forward(at, a1, E, E, r1, 1)
            g1 = np.zeros((n, 1), dtype)
            k.reduce_reverse(at, a1, E, E, r1, gr[:, p:p + 1].copy(), g1, E, E, 1, 0, 0, 1)
            assert r1[0, 0].tobytes() == r5[0, p].tobytes()
            assert g1[:, 0].tobytes() == g5[:, p].tobytes()


@pytest.mark.parametrize("shape", [(1, 0, 1), (1, 3, 1), (2, 8, 3), (3, 9, 2), (1, 40, 2)],
                         ids=str)
def test_sums_over_points_give_the_bits_of_one_point(shape):
    # Sums over many points walk the workspace rows (the points as lanes) instead of the
    # general lane walk: each point's value, tangents and adjoints keep the bits of that
    # point alone, in all four routines.
    rng = np.random.default_rng(sum(shape))
    at = np.array((fr.SUM, *shape), np.int32)
    ln, size = _sizes("reduce", tuple(at))
    w = 5
    a = rng.uniform(0.9, 1.1, (ln, w)) * 10.0 ** rng.integers(-8, 9, (ln, 1))
    ta = rng.standard_normal((ln, NV, w))
    gr = rng.standard_normal((size, w))
    gdr = rng.standard_normal((size, NV, w))

    def run(cols):
        m = cols.stop - cols.start
        x, t = a[:, cols].copy(), ta[:, :, cols].copy()
        g, gd = gr[:, cols].copy(), gdr[:, :, cols].copy()
        r = np.full((size, m), np.nan)
        tr = np.full((size, NV, m), np.nan)
        k.reduce_tangent(at, x, E, E, r, t, E, E, tr, 1, 0, 0, m)
        ga = np.ones((ln, m))
        gda = np.ones((ln, NV, m))
        k.reduce_second(at, x, E, E, r, t, E, E, tr, g, gd, ga, E, E, gda, E, E, 1, 0, 0, m)
        return r, tr, ga, gda

    many = run(slice(0, w))
    for p in range(w):
        for got, want in zip(run(slice(p, p + 1)), many, strict=True):
            assert got[..., 0].tobytes() == want[..., p].tobytes()
