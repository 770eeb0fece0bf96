"""``tapejit.dask``: lazy evaluation over Dask arrays of points, on a real
``dask.distributed`` cluster of two worker processes and on the threaded scheduler,
compared with direct evaluation. Skipped where Dask is not installed
(``pip install tapejit[dask]``).
"""

from __future__ import annotations

import importlib
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import tapejit

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
Delayed = pytest.importorskip("dask.delayed").Delayed
td = importlib.import_module("tapejit.dask")


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _model(x, p):
    return np.sum(p[0] * np.sin(x) ** 2) + p[1] * x[0] * x[-1]


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=40,
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def tape():
    return tapejit.record(_rosen, np.zeros(4))


@pytest.fixture(scope="module")
def points():
    X = np.random.default_rng(4).standard_normal((3001, 4))
    return X, da.from_array(X, chunks=(700, 2))  # inputs axis split: rechunked inside


def _bitwise(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(params=["distributed", "threads"])
def scheduler(request):
    if request.param == "distributed":
        return request.getfixturevalue("client")
    return "threads"


def test_per_point_results(tape, points, scheduler):
    X, Xd = points
    v, g = td.value_and_grad(tape, Xd)
    f = td.forward(tape, Xd)
    gr = td.gradient(tape, Xd)
    J = td.jacobian(tape, Xd)
    H = td.hessian(tape, Xd[:500])
    assert isinstance(v, da.Array) and v.shape == (3001,) and g.shape == (3001, 4)
    assert J.shape == (3001, 1, 4) and H.shape == (500, 4, 4)
    assert v.chunks[0] == Xd.chunks[0]
    v, g, f, gr, J, H = dask.compute(v, g, f, gr, J, H, scheduler=scheduler)
    v0, g0 = tape.value_and_grad(X)
    assert _bitwise(v, v0) and _bitwise(g, g0) and _bitwise(gr, g0)
    assert _bitwise(f, tape.forward(X))
    assert _bitwise(J, tape.jacobian(X))
    assert _bitwise(H, tape.hessian(X[:500]))


@pytest.mark.parametrize("mean", [False, True])
def test_sum_value_and_grad(tape, points, scheduler, mean):
    X, Xd = points
    v, g = td.sum_value_and_grad(tape, Xd, mean=mean, split_every=2)
    assert v.shape == () and g.shape == (4,)
    v, g = dask.compute(v, g, scheduler=scheduler)
    v0, g0 = tape.value_and_grad(X)
    agg = np.mean if mean else np.sum
    np.testing.assert_allclose(v, agg(v0), rtol=1e-12)
    np.testing.assert_allclose(g, agg(g0, axis=0), rtol=1e-12)


def test_params(scheduler):
    t = tapejit.record(_model, np.zeros(3), np.ones(2), argnums=0)
    rng = np.random.default_rng(6)
    X, P = rng.standard_normal((1000, 3)), rng.standard_normal((1000, 2))
    Xd, Pd = da.from_array(X, chunks=(300, 3)), da.from_array(P, chunks=(250, 2))
    p1 = np.array([1.5, -0.5])
    v, g = dask.compute(*td.value_and_grad(t, Xd, p1), scheduler=scheduler)
    assert _bitwise(v, t.value_and_grad(X, p1)[0]) and _bitwise(g, t.gradient(X, p1))
    # per-point parameters, chunked differently: aligned with the points
    g = td.gradient(t, Xd, Pd).compute(scheduler=scheduler)
    assert _bitwise(g, t.gradient(X, P))
    s, sg = dask.compute(*td.sum_value_and_grad(t, Xd, Pd), scheduler=scheduler)
    np.testing.assert_allclose(s, t.forward(X, P).sum(), rtol=1e-12)
    np.testing.assert_allclose(sg, t.gradient(X, P).sum(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="parameters"):
        td.forward(t, Xd)


def test_many_outputs(points, scheduler):
    X, Xd = points
    t = tapejit.record(lambda x: (np.sin(x[:2]) * x[3], x[0] * x[1]), np.zeros(4))
    y, J = dask.compute(td.forward(t, Xd), td.jacobian(t, Xd), scheduler=scheduler)
    assert _bitwise(y, t.forward(X)) and _bitwise(J, t.jacobian(X))
    with pytest.raises(ValueError, match="one output"):
        td.value_and_grad(t, Xd)


def test_tape_enters_the_graph_once(tape, points):
    _, Xd = points
    v, g = td.value_and_grad(tape, Xd)
    graph = {**dict(v.__dask_graph__()), **dict(g.__dask_graph__())}
    tapes = [k for k, task in graph.items() if _holds_tape(task)]
    assert len(tapes) == 1, tapes
    # deterministic names: the same call builds the same graph
    assert td.value_and_grad(tape, Xd)[0].name == v.name
    other = tapejit.record(_rosen, np.zeros(4))  # equal tape, equal token
    assert td.value_and_grad(other, Xd)[0].name == v.name


def _holds_tape(task) -> bool:
    value = getattr(task, "value", task)  # a literal node of the graph, or the object
    return isinstance(value, tapejit.Tape)


def test_numba_threads_option(tape, points):
    X, Xd = points
    for threads in (None, 1, 2, 64):
        f = td.forward(tape, Xd, numba_threads=threads).compute(scheduler="threads")
        assert _bitwise(f, tape.forward(X))


def test_numpy_input_and_errors(tape, points):
    X, _ = points
    assert _bitwise(td.forward(tape, X).compute(scheduler="sync"), tape.forward(X))
    with pytest.raises(ValueError, match="shape"):
        td.forward(tape, da.zeros((10, 3)))
    with pytest.raises(TypeError, match="Tape"):
        td.forward(None, X)


def test_import_error_hint(monkeypatch):
    for name in [m for m in sys.modules if m == "dask" or m.startswith("dask.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)  # makes `import dask` fail
    monkeypatch.delitem(sys.modules, "tapejit.dask")
    with pytest.raises(ImportError, match=r"pip install tapejit\[dask\]"):
        importlib.import_module("tapejit.dask")
    monkeypatch.undo()
    assert importlib.import_module("tapejit.dask") is td


# -- store: results written straight into arrays -------------------------------------------
_UNEVEN = ((1000, 1, 0, 700, 1300), (4,))  # a one-point chunk and an empty one


@pytest.fixture
def uneven(points):
    X, _ = points
    return X, da.from_array(X, chunks=_UNEVEN)


def _empty_like_results(res):
    res = res if isinstance(res, tuple) else (res,)
    return tuple(np.full_like(r, np.nan) for r in res)


@pytest.mark.parametrize("sched", ["threads", "sync"])
@pytest.mark.parametrize("method", ["forward", "value_and_grad", "gradient", "jacobian"])
def test_store_numpy_targets(tape, uneven, sched, method):
    X, Xd = uneven
    ref = getattr(tape, method)(X)
    out = _empty_like_results(ref)
    arg = out if method == "value_and_grad" else out[0]
    assert td.store(tape, method, Xd, arg, scheduler=sched) is arg
    for o, r in zip(out, ref if isinstance(ref, tuple) else (ref,), strict=True):
        assert _bitwise(o, r)


def test_store_params_and_many_outputs():
    t = tapejit.record(_model, np.zeros(3), np.ones(2), argnums=0)
    rng = np.random.default_rng(7)
    X, P = rng.standard_normal((1000, 3)), rng.standard_normal((1000, 2))
    Xd, Pd = da.from_array(X, chunks=(300, 3)), da.from_array(P, chunks=(250, 2))
    v, g = np.empty(1000), np.empty((1000, 3))
    td.store(t, "value_and_grad", Xd, (v, g), Pd, scheduler="threads")  # per point
    v0, g0 = t.value_and_grad(X, P)
    assert _bitwise(v, v0) and _bitwise(g, g0)
    p1 = np.array([1.5, -0.5])
    td.store(t, "gradient", Xd, g, p1, scheduler="threads")  # one row for every point
    assert _bitwise(g, t.gradient(X, p1))
    m = tapejit.record(lambda x: (np.sin(x[:2]) * x[2], x[0] * x[1]), np.zeros(3))
    y, J = np.empty((1000, 3)), np.empty((1000, 3, 3))
    td.store(m, "forward", Xd, y, scheduler="threads")
    td.store(m, "jacobian", Xd, (J,), scheduler="threads")  # a tuple of one is fine
    assert _bitwise(y, m.forward(X)) and _bitwise(J, m.jacobian(X))


def test_store_memmap_on_worker_processes(tape, uneven, client, tmp_path):
    X, Xd = uneven
    n = X.shape[0]
    v = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", shape=(n,))
    # a view into the middle of a bigger file: its rows' place is measured, not assumed
    big = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", shape=(n + 20, 4))
    td.store(tape, "value_and_grad", Xd, (v, big[10 : n + 10]))  # the default: client
    v0, g0 = tape.value_and_grad(X)
    assert _bitwise(np.load(tmp_path / "v.npy"), v0)
    g = np.load(tmp_path / "g.npy")
    assert _bitwise(g[10 : n + 10], g0) and not g[:10].any() and not g[n + 10 :].any()
    # lazily, the same way, and the graph carries no data of the target
    J = np.lib.format.open_memmap(tmp_path / "J.npy", mode="w+", shape=(n, 1, 4))
    lazy = td.store(tape, "jacobian", Xd, J, compute=False)
    assert not J.any()
    assert dask.compute(lazy) == (None,)
    assert _bitwise(np.load(tmp_path / "J.npy"), tape.jacobian(X))
    target = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", shape=(200_000, 4))
    lazy = td.store(tape, "gradient", da.ones((200_000, 4), chunks=50_000), target,
                    compute=False)
    assert len(pickle.dumps(dict(lazy.__dask_graph__()))) < 50_000  # not 6.4 MB


def test_store_lazy_numpy(tape, uneven):
    X, Xd = uneven
    g = np.zeros((X.shape[0], 4))
    lazy = td.store(tape, "gradient", Xd, g, compute=False)
    assert isinstance(lazy, Delayed) and not g.any()
    assert lazy.compute(scheduler="threads") is None
    assert _bitwise(g, tape.gradient(X))
    # two stores with the same inputs into different arrays stay two graphs
    g2 = np.zeros_like(g)
    other = td.store(tape, "gradient", Xd, g2, compute=False)
    assert other.key != lazy.key
    dask.compute(lazy, other, scheduler="sync")
    assert _bitwise(g2, g)


def test_store_numpy_target_refuses_other_processes(tape, uneven, client):
    X, Xd = uneven
    g = np.zeros((X.shape[0], 4))
    with ProcessPoolExecutor(1) as pool:  # never started: refused before
        for scheduler, name in [(None, "Client"), (client, "Client"),
                                ("processes", "multiprocessing"), (pool, "ProcessPool")]:
            with pytest.raises(ValueError, match=f"{name}.*memory-mapped file"):
                td.store(tape, "gradient", Xd, g, scheduler=scheduler)
    lazy = td.store(tape, "gradient", Xd, g, compute=False)
    with pytest.raises(TypeError, match="lives in this process's memory"):
        pickle.dumps(dict(lazy.__dask_graph__()))  # what a process scheduler must do
    with pytest.raises(TypeError) as info:  # distributed wraps the refusal
        client.compute(lazy).result()
    assert "lives in this process's memory" in " ".join(map(str, _chain(info.value)))
    assert not g.any()
    td.store(tape, "gradient", Xd, g, scheduler="threads")  # threads still fine
    assert _bitwise(g, tape.gradient(X))


def _chain(exc):
    """An exception and those it was raised from or while handling."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_store_errors(tape, uneven, tmp_path):
    X, Xd = uneven
    n = X.shape[0]
    g = np.empty((n, 4))

    def fails(exc, match, *args, **kwargs):
        with pytest.raises(exc, match=match):
            td.store(*args, **kwargs)

    fails(TypeError, "Float32Tape", tape.astype(np.float32), "gradient", Xd, g)
    fails(TypeError, "Tape", None, "gradient", Xd, g)
    fails(ValueError, "hessian takes no out=", tape, "hessian", Xd, g)
    fails(ValueError, "method must be one of", tape, "vjp", Xd, g)
    many = tapejit.record(lambda x: (x[0], x[1]), np.zeros(4))
    fails(ValueError, "one output", many, "value_and_grad", Xd, (np.empty(n), g))
    fails(ValueError, r"shape \(n_points, 4\)", tape, "gradient", da.zeros((10, 3)), g)
    fails(ValueError, "2 array.*values.*gradients.*got 1", tape, "value_and_grad", Xd, g)
    fails(ValueError, "1 array.*got 2", tape, "gradient", Xd, (g, g))
    fails(TypeError, "numpy array or a tuple", tape, "gradient", Xd, None)
    fails(TypeError, "numpy array or a tuple.*got Array.*dask.array.store", tape,
          "gradient", Xd, da.zeros((n, 4)))
    fails(TypeError, "numpy array or np.memmap; got list", tape, "value_and_grad", Xd,
          (np.empty(n), [[0.0] * 4] * n))
    fails(TypeError, "float64.*got float32", tape, "gradient", Xd,
          np.empty((n, 4), np.float32))
    fails(TypeError, "float64.*got >f8", tape, "gradient", Xd, np.empty((n, 4), ">f8"))
    fails(ValueError, r"shape \(3001, 4\); got \(3000, 4\)", tape, "gradient", Xd, g[1:])
    fails(ValueError, r"values must have shape \(3001,\)", tape, "value_and_grad", Xd,
          (np.empty((n, 1)), g))
    fails(ValueError, "C-contiguous", tape, "gradient", Xd, np.empty((n, 4), order="F"))
    ro = np.empty((n, 4))
    ro.flags.writeable = False
    fails(ValueError, "writeable", tape, "gradient", Xd, ro)
    np.save(tmp_path / "g.npy", g)
    cow = np.load(tmp_path / "g.npy", mmap_mode="c")
    fails(ValueError, "copy-on-write", tape, "gradient", Xd, cow)
    flat = np.empty(5 * n)
    fails(ValueError, "overlap", tape, "value_and_grad", Xd,
          (flat[:n], flat[n - 1 : 5 * n - 1].reshape(n, 4)))
    fails(TypeError, "compute_kwargs.*scheduler", tape, "gradient", Xd, g, compute=False,
          scheduler="threads")
    unknown = Xd[da.from_array(X[:, 0] > 0, chunks=Xd.chunks[0])]
    fails(ValueError, "unknown chunk sizes", tape, "gradient", unknown, g)
    t = tapejit.record(_model, np.zeros(3), np.ones(2), argnums=0)
    X3 = da.zeros((10, 3))
    fails(ValueError, "parameters", t, "forward", X3, np.empty(10))
    fails(ValueError, "params has 9 rows", t, "forward", X3, np.empty(10), np.zeros((9, 2)))
    fails(ValueError, "no parameters", tape, "forward", Xd, np.empty(n), np.zeros(2))


# -- the Tape methods: Dask arrays in, lazy Dask arrays out --------------------------------
class _Counter:
    """Counts the non-empty chunks of points computed through :meth:`watch`."""

    def __init__(self) -> None:
        self.chunks = 0

    def _seen(self, block):
        self.chunks += block.size > 0
        return block

    def watch(self, A):
        return A.map_blocks(self._seen, dtype=A.dtype, meta=np.empty((0, 0), A.dtype))


def _two_outputs(x):
    return np.sin(x[:2]) * x[3], x[0] * x[1] * x[2]


#: (method, extra arguments after x as a function of (per-point array, dask version))
_METHODS = {
    "forward": lambda V, Vd: (),
    "value_and_grad": lambda V, Vd: (),
    "gradient": lambda V, Vd: (),
    "jacobian": lambda V, Vd: (),
    "hessian": lambda V, Vd: (),
    "vjp": lambda V, Vd: (np.array([0.5]),),
    "jvp": lambda V, Vd: (Vd,),
    "hvp": lambda V, Vd: (Vd,),
}


def _as_numpy(args, V, Vd):
    return tuple(V if a is Vd else a for a in args)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", list(_METHODS))
def test_methods_return_lazy_dask_arrays(tape, points, method, dtype):
    X, Xd = points
    t = tape.astype(dtype)
    V = X[::-1] * 0.5
    Vd = da.from_array(V, chunks=(500, 4))  # other chunks than X: aligned inside
    counter = _Counter()
    extra = _METHODS[method](V, Vd)
    res = getattr(t, method)(counter.watch(Xd), *extra)
    assert counter.chunks == 0  # nothing computed yet
    res = res if isinstance(res, tuple) else (res,)
    assert all(isinstance(r, da.Array) and r.dtype == dtype for r in res)
    got = dask.compute(*res, scheduler="threads")
    assert counter.chunks == Xd.npartitions  # each chunk once, for all results
    want = getattr(t, method)(X, *_as_numpy(extra, V, Vd))
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert _bitwise(g, w), method


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_methods_many_outputs_and_per_point_arguments(points, dtype):
    X, Xd = points
    t = tapejit.record(_two_outputs, np.zeros(4)).astype(dtype)
    rng = np.random.default_rng(8)
    W, V = rng.standard_normal((len(X), 3)), rng.standard_normal((len(X), 4))
    Wd, Vd = da.from_array(W, chunks=1000), da.from_array(V, chunks=900)
    # any one argument a Dask array is enough: x given as numpy is wrapped
    y, g = t.vjp(X, Wd)
    jv = t.jvp(Xd, V[0])
    jv2 = t.jvp(X, Vd)
    J = t.jacobian(Xd, mode="forward")
    f = t.forward(Xd)
    assert all(isinstance(r, da.Array) for r in (y, g, jv, jv2, J, f))
    y, g, jv, jv2, J, f = dask.compute(y, g, jv, jv2, J, f, scheduler="threads")
    y0, g0 = t.vjp(X, W)
    assert _bitwise(y, y0) and _bitwise(g, g0)
    assert _bitwise(jv, t.jvp(X, V[0])) and _bitwise(jv2, t.jvp(X, V))
    assert _bitwise(J, t.jacobian(X, mode="forward")) and _bitwise(f, t.forward(X))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_methods_per_point_params(dtype):
    t = tapejit.record(_model, np.zeros(3), np.ones(2), argnums=0).astype(dtype)
    rng = np.random.default_rng(9)
    X, P = rng.standard_normal((1000, 3)), rng.standard_normal((1000, 2))
    Xd, Pd = da.from_array(X, chunks=(300, 3)), da.from_array(P, chunks=(250, 2))
    counter = _Counter()
    v, g = t.value_and_grad(X, counter.watch(Pd))  # numpy points, Dask parameters
    H = t.hessian(Xd, P)  # per point, numpy: aligned with the Dask points
    hv = t.hvp(Xd, X[0], Pd)
    f = t.forward(Xd, P[0])  # one row for every point
    assert counter.chunks == 0
    assert all(isinstance(r, da.Array) for r in (v, g, H, hv, f))
    v, g, H, hv, f = dask.compute(v, g, H, hv, f, scheduler="threads")
    v0, g0 = t.value_and_grad(X, P)
    assert _bitwise(v, v0) and _bitwise(g, g0) and _bitwise(H, t.hessian(X, P))
    assert _bitwise(hv, t.hvp(X, X[0], P)) and _bitwise(f, t.forward(X, P[0]))
    with pytest.raises(ValueError, match="params has 999 rows"):
        t.gradient(Xd, Pd[1:])


def test_methods_on_worker_processes(tape, points, client):
    X, Xd = points
    v, g = tape.value_and_grad(Xd)
    hv = tape.hvp(Xd, Xd)
    v, g, hv = client.compute([v, g, hv], sync=True)
    v0, g0 = tape.value_and_grad(X)
    assert _bitwise(v, v0) and _bitwise(g, g0) and _bitwise(hv, tape.hvp(X, X))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_derivatives(points, scheduler, dtype):
    X, Xd = points
    t = tapejit.record(lambda x: _rosen(x) + np.prod(x[:3]), np.zeros(4)).astype(dtype)
    counter = _Counter()
    H = td.hessian(t, counter.watch(Xd[:1000]), sparse=True)
    J, ok = t.jacobian(Xd, sparse=True, mode="reverse", check="mask")  # the method too
    assert counter.chunks == 0  # the patterns are known, the values lazy
    for stack in (H, J):
        assert isinstance(stack, tapejit.SparseStack) and isinstance(stack.data, da.Array)
        assert stack.data.dtype == dtype
    assert J.data.chunks == (Xd.chunks[0], (J.pattern.nnz,))
    h, j, ok = dask.compute(H.data, J.data, ok, scheduler=scheduler)
    want_h = t.hessian(X[:1000], sparse=True)
    want_j = t.jacobian(X, sparse=True, mode="reverse")
    np.testing.assert_array_equal(H.pattern.toarray(), want_h.pattern.toarray())
    np.testing.assert_array_equal(J.pattern.toarray(), want_j.pattern.toarray())
    assert _bitwise(h, want_h.data) and _bitwise(j, want_j.data) and ok.all()
    assert _bitwise(H[7].toarray(), want_h[7].toarray())  # computes what it needs


def test_branch_error_when_computed():
    t = tapejit.record(lambda x: x[0] * x[1] if x[0] > 0 else x[1], np.ones(2))
    X = np.random.default_rng(10).standard_normal((100, 2))
    Xd = da.from_array(X, chunks=30)
    for lazy in (t.forward(Xd), t.gradient(Xd), t.hessian(Xd), t.jvp(Xd, X[0]),
                 t.astype(np.float32).value_and_grad(Xd)[1], t.hessian(Xd, sparse=True).data):
        with pytest.raises(tapejit.BranchError, match="left the branches"):
            lazy.compute(scheduler="threads")
    g, ok = t.gradient(Xd, check="mask")
    g, ok = dask.compute(g, ok, scheduler="threads")
    g0, ok0 = t.gradient(X, check="mask")
    assert ok.dtype == bool and _bitwise(ok, ok0) and not ok.all()
    np.testing.assert_array_equal(g, g0)  # NaN at the same points


def test_methods_refuse_what_is_not_lazy(tape, points):
    X, Xd = points
    n = len(X)
    with pytest.raises(ValueError, match=r"tapejit\.dask\.store\(tape, 'gradient'"):
        tape.gradient(Xd, out=np.empty((n, 4)))
    with pytest.raises(ValueError, match=r"tapejit\.dask\.store\(tape, 'value_and_grad'"):
        tape.value_and_grad(Xd, out=(np.empty(n), np.empty((n, 4))))
    with pytest.raises(ValueError, match=r"dask\.array\.store"):
        tape.vjp(Xd, np.ones(1), out=(None, np.empty((n, 4))))
    with pytest.raises(ValueError, match="check must be"):
        tape.forward(Xd, check="nan")
    with pytest.raises(ValueError, match="mode must be"):
        tape.jacobian(Xd, mode="sideways")
    with pytest.raises(TypeError, match=r"must be a dask\.array\.Array; got a dask\.delayed"):
        tape.forward(dask.delayed(X))  # would be computed by np.asarray
    with pytest.raises(ValueError, match=r"v must have shape \(4,\) or \(n_points, 4\)"):
        tape.hvp(Xd, np.ones(3))
    # out= given as "no buffers" is no buffer
    assert isinstance(tape.value_and_grad(Xd, out=(None, None))[0], da.Array)


_NO_DASK = r"""
import sys
sys.modules["dask"] = None  # `import dask` raises ImportError
import numpy as np, tapejit

t = tapejit.record(lambda x: np.sum(np.sin(x) * x[0]), np.zeros(3))
x, X = np.array([0.1, 0.2, 0.3]), np.random.default_rng(0).standard_normal((50, 3))
for tt in (t, t.astype(np.float32)):
    for pts in (x, X, X.tolist()):
        tt.forward(pts), tt.value_and_grad(pts), tt.gradient(pts), tt.jacobian(pts)
        tt.hessian(pts), tt.vjp(pts, [1.0]), tt.jvp(pts, pts), tt.hvp(pts, pts)
        tt.forward(pts, check="mask")
        tt.jacobian(pts, sparse=True), tt.hessian(pts, sparse=True)
assert sys.modules["dask"] is None
assert not [m for m in sys.modules if m.startswith("dask.") or m == "tapejit.dask"]
print("ok")
"""


def test_numpy_calls_never_import_dask():
    import subprocess

    res = subprocess.run([sys.executable, "-c", _NO_DASK], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "TAPEJIT_QUIET": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_loop_tapes():
    def f(x):
        return tapejit.scan(lambda c, xi: (c * 0.9 + np.sin(xi) * c + xi, None), 0.5, x)[0]

    t = tapejit.record(f, np.zeros(4))
    X = np.random.default_rng(8).standard_normal((1000, 4))
    Xd = da.from_array(X, chunks=(300, 4))
    v, g = dask.compute(*td.value_and_grad(t, Xd), scheduler="threads")
    v0, g0 = t.value_and_grad(X)
    assert _bitwise(v, v0) and _bitwise(g, g0)
