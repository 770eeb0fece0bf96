"""Single precision (``tape.astype(np.float32)``): float32 points in, float32 results out.

The documented contract is exact, so the tests check it exactly: every result equals the
float64 result at the float32-rounded points, rounded once to float32.
"""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest

import tapejit
from tapejit import _float32

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

F32 = np.float32


def _model(x, p):
    return np.sum(p[0] * np.sin(x) ** 2) + p[1] * np.log1p(x[0] ** 2) * x[-1]


def _two(x):
    return np.stack([np.exp(x[0]) * x[1], x[0] / (1.0 + x[1] ** 2), np.tanh(x[2])])


@pytest.fixture(scope="module")
def model():
    return tapejit.record(_model, np.zeros(3), np.ones(2), argnums=0)


@pytest.fixture(scope="module")
def multi():
    return tapejit.record(_two, np.zeros(3))


def _rounded(a):
    """The float32 value of ``a``, as float64 (what a Float32Tape evaluates at)."""
    return np.asarray(a, dtype=F32).astype(np.float64)


def _same(got, want):
    """``got`` is float32 and equals the float64 ``want`` rounded to float32, bit for bit."""
    got = np.asarray(got)
    assert got.dtype == F32
    np.testing.assert_array_equal(got, np.asarray(want).astype(F32))


def test_astype_returns_the_tape_or_a_float32_view(model):
    assert model.astype(np.float64) is model and model.dtype == np.float64
    t32 = model.astype("float32")
    assert isinstance(t32, tapejit.Float32Tape) and t32.dtype == F32
    assert t32.n_inputs == 3 and t32.n_params == 2 and len(t32) == len(model)
    assert t32.astype(np.float64) is model
    assert "float32" in repr(t32)


@pytest.mark.parametrize("bad", [np.int64, np.float16, np.complex128, "nope"])
def test_astype_rejects_other_dtypes(model, bad):
    with pytest.raises(TypeError, match="float64 or float32"):
        model.astype(bad)


@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_batched_methods_equal_float64_at_the_rounded_points(model, n, monkeypatch):
    monkeypatch.setattr(_float32, "_BLOCK", 64)  # several conversion blocks
    rng = np.random.default_rng(n)
    X = rng.uniform(-2, 2, (n, 3))  # float64 on purpose: rounded on the way in
    P = rng.uniform(0.5, 1.5, (n, 2))
    V = rng.standard_normal((n, 3))
    t32 = model.astype(np.float32)
    Xr, Pr, Vr = _rounded(X), _rounded(P), _rounded(V)
    _same(t32.forward(X, P), model.forward(Xr, Pr))
    v, g = t32.value_and_grad(X, P)
    v64, g64 = model.value_and_grad(Xr, Pr)
    _same(v, v64)
    _same(g, g64)
    _same(t32.gradient(X, P), g64)
    _same(t32.jvp(X, V, P), model.jvp(Xr, Vr, Pr))
    _same(t32.hvp(X, V, P), model.hvp(Xr, Vr, Pr))
    _same(t32.hessian(X, P), model.hessian(Xr, Pr))
    pfix = np.array([1.1, 0.7])  # one row of parameters for every point
    _same(t32.jacobian(X, pfix), model.jacobian(Xr, _rounded(pfix)))


def test_one_point_and_vector_outputs(multi):
    x = np.array([0.3, -1.2, 0.7])
    t32 = multi.astype(np.float32)
    _same(t32.forward(x), multi.forward(_rounded(x)))
    w = np.array([1.0, 0.5, -2.0])
    y, g = t32.vjp(x, w)
    y64, g64 = multi.vjp(_rounded(x), _rounded(w))
    _same(y, y64)
    _same(g, g64)
    for mode in ("forward", "reverse"):
        _same(t32.jacobian(x, mode=mode), multi.jacobian(_rounded(x), mode=mode))
    X = np.random.default_rng(1).uniform(-1, 1, (50, 3)).astype(F32)  # float32 points
    W = np.random.default_rng(2).uniform(-1, 1, (50, 3))
    _same(t32.vjp(X, W)[1], multi.vjp(X.astype(np.float64), _rounded(W))[1])


def test_one_point_value_is_a_float32_scalar(model):
    v, g = model.astype(np.float32).value_and_grad(np.array([0.1, 0.2, 0.3]), [1.0, 2.0])
    assert isinstance(v, np.float32) and g.shape == (3,)


def test_accuracy_against_float64_inputs(model):
    """What the docs state: against float64 points, the error is the input rounding
    carried through the function (first order: |H| |dx| for a gradient, |g| |dx| for a
    value) plus one rounding of the result."""
    rng = np.random.default_rng(3)
    X = rng.uniform(0.5, 2, (1000, 3))
    p = np.array([1.0, 0.5])
    v32, g32 = model.astype(np.float32).value_and_grad(X, p)
    v64, g64 = model.value_and_grad(X, p)
    dx = np.abs(X - _rounded(X))
    H = model.hessian(X, p)
    g_bound = 2 * np.einsum("nij,nj->ni", np.abs(H), dx) + 2.0**-24 * np.abs(g64)
    v_bound = 2 * np.sum(np.abs(g64) * dx, axis=1) + 2.0**-24 * np.abs(v64)
    assert np.all(np.abs(g32 - g64) <= g_bound)
    assert np.all(np.abs(v32 - v64) <= v_bound)
    assert np.all(g_bound <= 1e-5 * (1 + np.abs(g64)))  # and that is small here


def test_guards_raise_or_mask_over_all_points():
    def f(x):
        return x[0] * 2.0 if x[0] > 0 else -x[0]

    tape = tapejit.record(f, np.array([1.0]))
    t32 = tape.astype(np.float32)
    X = np.array([[1.0], [-1.0], [2.0], [-3.0]])
    with pytest.raises(tapejit.BranchError, match="2 of 4"):
        t32.forward(X)
    y, ok = t32.forward(X, check="mask")
    assert ok.tolist() == [True, False, True, False] and y.dtype == F32
    assert np.isnan(y[1]) and y[0] == 2.0
    with pytest.raises(tapejit.BranchError):
        t32.gradient(np.array([-1.0]))
    g, ok1 = t32.gradient(np.array([3.0]), check="mask")
    assert ok1 and g.dtype == F32


def test_bad_input_is_named(model):
    t32 = model.astype(np.float32)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        t32.forward(np.array(["a", "b", "c"]), [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        t32.forward(np.zeros((4, 2)), [1.0, 1.0])
    with pytest.raises(ValueError, match="check"):
        t32.forward(np.zeros(3), [1.0, 1.0], check="ignore")
    with pytest.raises(TypeError):
        t32.forward(np.zeros(3), [1.0, 1.0], out=np.empty(1))  # no out= buffers


def test_pickles_as_the_tape(model):
    t32 = pickle.loads(pickle.dumps(model.astype(np.float32)))
    assert isinstance(t32, tapejit.Float32Tape)
    x = np.array([0.5, 1.0, 1.5])
    _same(t32.forward(x, [1.0, 1.0]), model.forward(x, [1.0, 1.0]))


def test_stream_writes_float32(model, tmp_path):
    X = np.random.default_rng(4).uniform(-1, 1, (1000, 3))
    np.save(tmp_path / "x.npy", X)
    p = np.array([1.0, 0.25])
    t32 = model.astype(np.float32)
    v, g = tapejit.evaluate_file(t32, tmp_path / "x.npy", (tmp_path / "v.npy",
                                 tmp_path / "g.npy"), params=p, block_points=300)
    v64, g64 = model.value_and_grad(_rounded(X), p)
    _same(np.load(tmp_path / "v.npy"), v64)
    _same(np.load(tmp_path / "g.npy"), g64)
    _same(v, v64)  # the returned memmaps
    _same(g, g64)
    vs, gs = tapejit.evaluate_file(t32, tmp_path / "x.npy", params=p, reduce="sum",
                                   block_points=300)
    assert isinstance(vs, np.float32) and gs.dtype == F32
    np.testing.assert_allclose(gs, g64.sum(axis=0), rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("dask") is None, reason="needs dask")
def test_dask_gives_float32_arrays(model):
    import dask
    import dask.array as da

    import tapejit.dask as td

    X = np.random.default_rng(5).uniform(-1, 1, (2000, 3))
    p = np.array([1.0, 0.25])
    t32 = model.astype(np.float32)
    Xd = da.from_array(X, chunks=(500, 3))
    v, g = td.value_and_grad(t32, Xd, p)
    assert v.dtype == F32 and g.dtype == F32
    v, g = dask.compute(v, g, scheduler="threads")
    v64, g64 = model.value_and_grad(_rounded(X), p)
    _same(v, v64)
    _same(g, g64)
    vs, gs = dask.compute(*td.sum_value_and_grad(t32, Xd, p), scheduler="threads")
    assert vs.dtype == F32 and gs.dtype == F32
    np.testing.assert_allclose(vs, v64.sum(), rtol=1e-6)
    np.testing.assert_allclose(gs, g64.sum(axis=0), rtol=1e-6)


def test_tapes_too_long_for_a_chunk(monkeypatch):
    # batches of such tapes run point by point (runtime.POINTWISE: forward_points,
    # vjp_points), the float32 parameters converted for the float64 point sweeps
    from tapejit._kernels import runtime

    monkeypatch.setattr(runtime, "POINTWISE_SLOTS", 8)
    tape = tapejit.record(_model, np.zeros(3), np.ones(2), argnums=0)
    assert runtime.chunk_of(tape.n_slots) == 1
    rng = np.random.default_rng(7)
    X = rng.uniform(-2, 2, (5, 3)).astype(F32)
    t32 = tape.astype(np.float32)
    for P in (np.array([1.1, 0.7], F32), rng.uniform(0.5, 1.5, (5, 2)).astype(F32)):
        Xr, Pr = _rounded(X), _rounded(P)
        _same(t32.forward(X, P), tape.forward(Xr, Pr))
        v, g = t32.value_and_grad(X, P)
        v64, g64 = tape.value_and_grad(Xr, Pr)
        _same(v, v64)
        _same(g, g64)
