"""Tapes across processes: pickling (small, exact) and shared memory without copies.

* ``pickle.dumps(tape)`` is the packed program and constants plus a constant overhead,
  and the unpickled tape gives bitwise the same results.
* ``share(tape)`` puts the tape in one shared memory block; the small handle pickles to
  workers, whose ``attach()`` builds a tape over a copy-on-write mapping of it (no copy).
  Lifetime: the owner's handle unlinks the block (explicitly, on leaving ``with``, or
  when dropped); attached tapes outlive that; worker processes exiting never remove it.
* A ``ProcessPoolExecutor`` (spawn) evaluates a shared tape correctly.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit._share import SharedTape, share
from tapejit._tape import kernel_arrays, packed

ROOT = Path(__file__).resolve().parents[1]


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _model(x, p):
    return np.sum(p * np.sin(x) ** 2) + 0.5 * x[0] * x[-1]


@pytest.fixture(scope="module")
def tape():
    return tapejit.record(_rosen, np.zeros(6))


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(1).standard_normal((500, 6))


def _payload(t) -> int:
    return sum(a.nbytes for a in packed(t))


def _bitwise(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


# -- pickle ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 60, 3000])
def test_pickle_is_small_and_exact(n):
    t = tapejit.record(_rosen, np.zeros(n))
    blob = pickle.dumps(t)
    # the two flat arrays, plus a fixed overhead (class, shapes, name)
    assert _payload(t) <= len(blob) <= _payload(t) + 600, (len(blob), _payload(t))
    u = pickle.loads(blob)
    assert all(map(_bitwise, packed(u), packed(t)))
    assert (u.input_shapes, u.output_shapes, u.name) == (t.input_shapes, t.output_shapes,
                                                         t.name)
    X = np.random.default_rng(n).standard_normal((40, n))
    for got, want in zip(u.value_and_grad(X), t.value_and_grad(X), strict=True):
        assert _bitwise(got, want)
    assert _bitwise(u.forward(X[0]), t.forward(X[0]))
    if n <= 60:
        assert _bitwise(u.hessian(X[:3]), t.hessian(X[:3]))


def test_out_of_band_pickle_gives_the_kernels_owned_arrays():
    # Dask's workers unpickle with protocol 5 over read-only buffers: the tape copies them,
    # so its kernels get writeable arrays (one compiled variant), its views stay read-only.
    t = tapejit.record(_rosen, np.zeros(6))
    buffers = []
    blob = pickle.dumps(t, protocol=5, buffer_callback=buffers.append)
    assert buffers  # the arrays did travel out of band
    u = pickle.loads(blob, buffers=[memoryview(b).toreadonly() for b in buffers])
    kprog, kconsts = kernel_arrays(u)
    assert kprog.flags.writeable and kconsts.flags.writeable and kprog.flags.owndata
    assert not any(a.flags.writeable for a in packed(u))
    X = np.random.default_rng(3).standard_normal((5, 6))
    for got, want in zip(u.value_and_grad(X), t.value_and_grad(X), strict=True):
        assert _bitwise(got, want)


def test_pickle_size_is_proportional():
    small = tapejit.record(_rosen, np.zeros(100))
    large = tapejit.record(_rosen, np.zeros(10000))
    ratio = len(pickle.dumps(large)) / len(pickle.dumps(small))
    # a small tape's pickle carries a fixed overhead (names, shapes) besides its arrays
    assert 0.7 < ratio / (_payload(large) / _payload(small)) < 1.25


# -- shared memory, in this process ------------------------------------------------------
def test_handle_is_small_and_attach_is_zero_copy(tape, points):
    with share(tape) as handle:
        blob = pickle.dumps(handle)
        assert len(blob) < 400
        worker = pickle.loads(blob)
        assert isinstance(worker, SharedTape) and handle.owner and not worker.owner
        assert handle.nbytes == _payload(tape)
        t = worker.attach()
        assert t is worker.attach()  # attached once per process
        # the arrays are views of the shared mapping, read-only, not copies
        for arr in packed(t):
            assert not arr.flags.owndata and not arr.flags.writeable
            base = arr
            while isinstance(base, np.ndarray):
                base = base.base
            assert not isinstance(base, (bytes, bytearray))
        prog = packed(t)[0]
        assert np.shares_memory(prog, prog.base)
        # the kernels get writeable views of the same private (copy-on-write) mapping: the
        # variant they are compiled and cached for, still no copy
        for k, a in zip(kernel_arrays(t), packed(t), strict=True):
            assert k.flags.writeable and np.shares_memory(k, a)
        for got, want in zip(t.value_and_grad(points), tape.value_and_grad(points),
                             strict=True):
            assert _bitwise(got, want)
        assert _bitwise(t.hessian(points[0]), tape.hessian(points[0]))
        with pytest.raises(ValueError, match="read-only"):
            packed(t)[0][0] = 1
        with pytest.raises(RuntimeError, match="only the handle returned by share"):
            worker.unlink()
        worker.detach()
        # a write through an attached tape's mapping reaches neither the block nor
        # another attachment
        scratch = pickle.loads(blob)
        kernel_arrays(scratch.attach())[1][:] = np.nan
        scratch.detach()
        again = pickle.loads(blob).attach()
        assert _bitwise(packed(again)[1], packed(tape)[1])
        assert _bitwise(again.value_and_grad(points)[1], tape.value_and_grad(points)[1])
        pickle.loads(blob).detach()
    # The owner left the block: the tape attached before still works; attaching again
    # does not.
    assert _bitwise(t.forward(points), tape.forward(points))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        worker.attach()
    handle.close()  # idempotent
    handle.unlink()


def test_params_and_shapes_survive_sharing():
    t = tapejit.record(_model, np.zeros(4), np.ones(4), argnums=0)
    handle = share(t)
    try:
        u = pickle.loads(pickle.dumps(handle)).attach()
        assert (u.n_params, u.input_shapes, u.output_shapes, u.name) == (
            t.n_params, t.input_shapes, t.output_shapes, t.name)
        x, p = np.linspace(-1, 1, 4), np.arange(1.0, 5.0)
        assert _bitwise(u.value_and_grad(x, p)[1], t.value_and_grad(x, p)[1])
    finally:
        handle.unlink()


def test_dropping_the_owner_unlinks(tape):
    handle = share(tape)
    copy = pickle.loads(pickle.dumps(handle))
    del handle
    gc.collect()
    with pytest.raises(FileNotFoundError):
        copy.attach()


def test_share_needs_a_tape():
    with pytest.raises(TypeError, match=r"tapejit\.Tape"):
        share(np.zeros(3))


# -- shared memory, worker processes ---------------------------------------------------
_WORKER_TAPE = None


def _init_worker(handle):
    global _WORKER_TAPE
    _WORKER_TAPE = handle.attach()


def _worker_vg(X):
    return _WORKER_TAPE.value_and_grad(X)


def _worker_attach_per_task(handle, X):
    return handle.attach().hessian(X)  # cached after the first task in a worker


def test_process_pool_spawn_evaluates_shared_tape(tape, points):
    ctx = multiprocessing.get_context("spawn")
    blocks = np.array_split(points, 4)
    with share(tape) as handle:
        with ProcessPoolExecutor(2, mp_context=ctx, initializer=_init_worker,
                                 initargs=(handle,)) as pool:
            results = list(pool.map(_worker_vg, blocks))
            hess = list(pool.map(_worker_attach_per_task, [handle] * 2, blocks[:2]))
        v = np.concatenate([r[0] for r in results])
        g = np.concatenate([r[1] for r in results])
        v0, g0 = tape.value_and_grad(points)
        assert _bitwise(v, v0) and _bitwise(g, g0)
        for h, X in zip(hess, blocks[:2], strict=True):
            assert _bitwise(h, tape.hessian(X))
        # The workers have exited; the block must still be there (they never own it).
        again = pickle.loads(pickle.dumps(handle))
        assert _bitwise(again.attach().forward(points), tape.forward(points))
        again.detach()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource tracker behaviour")
def test_no_resource_tracker_noise(tmp_path):
    # Owner shares, spawned workers attach and exit, the owner unlinks: nothing leaks and
    # the resource tracker has nothing to complain about.
    script = tmp_path / "share_script.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np, tapejit
        from tapejit._share import share

        def job(handle):
            return float(handle.attach().forward(np.ones(3)))

        if __name__ == "__main__":
            tape = tapejit.record(lambda x: np.sum(x ** 2), np.zeros(3))
            with share(tape) as handle:
                with multiprocessing.get_context("spawn").Pool(2) as pool:
                    print(pool.map(job, [handle] * 4))
            print("owner done", handle.name)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[3.0, 3.0, 3.0, 3.0]" in proc.stdout
    noise = [line for line in proc.stderr.splitlines()
             if "leaked" in line or "Traceback" in line or "KeyError" in line]
    assert not noise, proc.stderr
    name = proc.stdout.split()[-1]
    assert not Path("/dev/shm", name).exists() or sys.platform != "linux"


def test_kernel_source_is_the_same_in_every_process():
    # The generated source keys Numba's on-disk cache: text that varied with Python's
    # hash seed (a set iterated while generating) would recompile in every process.
    code = (f"import sys, hashlib; sys.path.insert(0, {str(ROOT)!r}); "
            "from tapejit._kernels.codegen import generate_source; "
            "print(hashlib.sha256(generate_source().encode()).hexdigest())")
    digests = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
        for seed in (1, 2, 3, 4)
    }
    assert len(digests) == 1, digests
