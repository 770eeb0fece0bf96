"""Out-of-core evaluation: ``evaluate_file`` streams points from a ``.npy`` file in
blocks and gives the results of in-memory evaluation (bitwise for per-point results),
into memory-mapped ``.npy`` files, in memory, or reduced to sums/means; working memory
does not grow with the file.
"""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit import BranchError
from tapejit._stream import evaluate_file

ROOT = Path(__file__).resolve().parents[1]
N = 10_007  # points: not a multiple of any block size used


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.fixture(scope="module")
def tape():
    return tapejit.record(_rosen, np.zeros(3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    X = np.random.default_rng(5).standard_normal((N, 3))
    np.save(d / "x.npy", X)
    return d, X


def _bitwise(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("block", [1000, 4096, None])
def test_value_and_grad_to_one_file(tape, data, block):
    d, X = data
    v0, g0 = tape.value_and_grad(X)
    v, g = evaluate_file(tape, d / "x.npy", d / "vg.npy", block_points=block)
    assert _bitwise(v, v0) and _bitwise(g, g0)
    stored = np.load(d / "vg.npy")
    assert stored.shape == (N, 4)
    assert _bitwise(stored[:, 0], v0) and _bitwise(stored[:, 1:], g0)


def test_value_and_grad_to_two_files_and_in_memory(tape, data):
    d, X = data
    v0, g0 = tape.value_and_grad(X)
    v, g = evaluate_file(tape, str(d / "x.npy"), (d / "v.npy", d / "g.npy"),
                         block_points=999)
    assert isinstance(v, np.memmap) and isinstance(g, np.memmap)
    assert _bitwise(np.load(d / "v.npy"), v0) and _bitwise(np.load(d / "g.npy"), g0)
    v, g = evaluate_file(tape, d / "x.npy", block_points=1234)
    assert _bitwise(v, v0) and _bitwise(g, g0)


def test_forward_and_gradient(tape, data):
    d, X = data
    f = evaluate_file(tape, d / "x.npy", d / "f.npy", method="forward", block_points=777)
    assert _bitwise(f, tape.forward(X)) and _bitwise(np.load(d / "f.npy"), tape.forward(X))
    g = evaluate_file(tape, d / "x.npy", d / "g1.npy", method="gradient", block_points=777)
    assert _bitwise(np.load(d / "g1.npy"), tape.gradient(X)) and _bitwise(g, tape.gradient(X))


def test_forward_many_outputs(data):
    d, X = data
    t = tapejit.record(lambda x: (np.sin(x) * x[0], np.sum(x)), np.zeros(3))
    y = evaluate_file(t, d / "x.npy", d / "y.npy", method="forward", block_points=500)
    assert y.shape == (N, 4) and _bitwise(y, t.forward(X))
    s = evaluate_file(t, d / "x.npy", method="forward", block_points=500, reduce="sum")
    np.testing.assert_allclose(s, t.forward(X).sum(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="one output"):
        evaluate_file(t, d / "x.npy", block_points=500)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_reductions(tape, data, reduce):
    d, X = data
    v0, g0 = tape.value_and_grad(X)
    agg = np.sum if reduce == "sum" else np.mean
    v, g = evaluate_file(tape, d / "x.npy", block_points=1000, reduce=reduce)
    assert isinstance(v, float) and g.shape == (3,)
    np.testing.assert_allclose(v, agg(v0), rtol=1e-12)
    np.testing.assert_allclose(g, agg(g0, axis=0), rtol=1e-12)
    f = evaluate_file(tape, d / "x.npy", method="forward", block_points=1000, reduce=reduce)
    np.testing.assert_allclose(f, agg(v0), rtol=1e-12)
    gg = evaluate_file(tape, d / "x.npy", method="gradient", block_points=1000,
                       reduce=reduce)
    np.testing.assert_allclose(gg, agg(g0, axis=0), rtol=1e-12)


def test_any_dtype_and_order(tape, data, tmp_path):
    _, X = data
    X32 = X.astype(np.float32)
    np.save(tmp_path / "x32.npy", X32)
    np.save(tmp_path / "xf.npy", np.asfortranarray(X))
    v, g = evaluate_file(tape, tmp_path / "x32.npy", block_points=3000)
    v0, g0 = tape.value_and_grad(X32.astype(np.float64))
    assert _bitwise(v, v0) and _bitwise(g, g0)
    v, g = evaluate_file(tape, tmp_path / "xf.npy", block_points=3000)
    assert _bitwise(v, tape.forward(X)) and _bitwise(g, tape.gradient(X))
    # an array (read-only memmap or not) streams the same way
    ro = np.load(tmp_path / "xf.npy", mmap_mode="r")
    assert _bitwise(evaluate_file(tape, ro, method="forward", block_points=3000),
                    tape.forward(X))


def test_params_fixed_and_per_point(tmp_path):
    t = tapejit.record(lambda x, p: np.sum(p * x ** 2) + p[0], np.zeros(2), np.ones(2),
                       argnums=0)
    rng = np.random.default_rng(2)
    X, P = rng.standard_normal((5000, 2)), rng.standard_normal((5000, 2))
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "p.npy", P)
    p1 = np.array([2.0, 3.0])
    v, g = evaluate_file(t, tmp_path / "x.npy", params=p1, block_points=700)
    assert _bitwise(g, t.gradient(X, p1)) and _bitwise(v, t.value_and_grad(X, p1)[0])
    for params in (tmp_path / "p.npy", P):
        v, g = evaluate_file(t, tmp_path / "x.npy", params=params, block_points=700)
        assert _bitwise(g, t.gradient(X, P))
    with pytest.raises(ValueError, match="parameters"):
        evaluate_file(t, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="rows"):
        evaluate_file(t, tmp_path / "x.npy", params=P[:10])


def test_branch_error_is_raised(tmp_path):
    def f(x):
        return x[0] * 2 if x[0] > 0 else -x[0]

    t = tapejit.record(f, np.array([1.0]))
    np.save(tmp_path / "x.npy", np.linspace(1.0, -1.0, 300).reshape(-1, 1))
    with pytest.raises(BranchError):
        evaluate_file(t, tmp_path / "x.npy", block_points=64, reduce="sum")


def test_bad_arguments(tape, data):
    d, _ = data
    with pytest.raises(ValueError, match="method"):
        evaluate_file(tape, d / "x.npy", method="hessian")
    with pytest.raises(ValueError, match="reduce"):
        evaluate_file(tape, d / "x.npy", reduce="max")
    with pytest.raises(ValueError, match="not both"):
        evaluate_file(tape, d / "x.npy", d / "o.npy", reduce="sum")
    with pytest.raises(ValueError, match="shape"):
        evaluate_file(tapejit.record(_rosen, np.zeros(4)), d / "x.npy")
    with pytest.raises(TypeError, match="Tape"):
        evaluate_file(None, d / "x.npy")
    with pytest.raises(ValueError, match="block_points"):
        evaluate_file(tape, d / "x.npy", block_points=0)


@pytest.mark.kernels  # the optimised kernels' workspace bound
def test_memory_does_not_grow_with_points(tape, tmp_path):
    # numpy's allocations are traced: streaming 1e6 points in blocks of 10_000 allocates
    # a few blocks' worth, never anything of size n_points.
    n, block = 1_000_000, 10_000
    X = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float64,
                                  shape=(n, 3))
    X[:] = 0.5
    X.flush()
    del X
    evaluate_file(tape, tmp_path / "big.npy", block_points=block, reduce="sum")  # warm
    tracemalloc.start()
    try:
        evaluate_file(tape, tmp_path / "big.npy", block_points=block, reduce="sum")
        evaluate_file(tape, tmp_path / "big.npy", tmp_path / "out.npy", block_points=block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    per_block = block * 8 * (3 + 1 + 3 + 1 + 3)  # inputs, (value, grad) x 2, row buffer
    assert peak < 4 * per_block < n * 3 * 8 / 4, peak


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or not hasattr(mmap, "MADV_DONTNEED"), reason="Linux RSS accounting")
def test_resident_memory_bounded(tmp_path):
    # The resident set counts the mapped file pages a process touches: they are
    # released block by block, so streaming a 64 MB file adds far less than 64 MB.
    n = 4_000_000
    X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64,
                                  shape=(n, 2))
    for i in range(0, n, 1 << 20):
        X[i : i + (1 << 20)] = np.random.default_rng(i).standard_normal(
            (min(1 << 20, n - i), 2))
    X.flush()
    del X
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np, tapejit
        from tapejit._stream import evaluate_file
        tape = tapejit.record(lambda x: np.sum(x ** 2) * x[0], np.zeros(2))
        evaluate_file(tape, np.zeros((300, 2)), block_points=100, reduce="sum")
        evaluate_file(tape, np.zeros((300, 2)), {str(tmp_path / "w.npy")!r},
                      block_points=100)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        evaluate_file(tape, {str(tmp_path / "x.npy")!r}, block_points=100_000,
                      reduce="sum")
        evaluate_file(tape, {str(tmp_path / "x.npy")!r}, {str(tmp_path / "o.npy")!r},
                      block_points=100_000)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    growth = int(proc.stdout.split()[-1])
    # input 64 MB and output 96 MB streamed; block buffers ~8 MB
    assert growth < 40e6, growth
