"""``tapejit.dask``: lazy evaluation over Dask arrays of points, on a real
``dask.distributed`` cluster of two worker processes and on the threaded scheduler,
compared with direct evaluation. Skipped where Dask is not installed
(``pip install tapejit[dask]``).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import tapejit

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
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
