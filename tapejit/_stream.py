"""Out-of-core evaluation: :func:`evaluate_file` streams points from a ``.npy`` file.

The points file is memory-mapped (``np.load(mmap_mode="r")``) and read in blocks of
``block_points`` rows; each block is copied into one reusable C-contiguous float64
buffer (what the kernels need, whatever the file's dtype or order) and evaluated with
the tape's batched (multi-threaded) kernels into reusable result buffers. The results
then go into a memory-mapped output ``.npy`` (:func:`numpy.lib.format.open_memmap`), or
are summed (``reduce="sum"`` / ``"mean"``) without ever holding the per-point results.

Working memory is therefore ``block_points`` times the bytes of one point's inputs and
results, whatever the file's size. On platforms with ``madvise`` the pages of both
mappings are released after each block, so the process's resident set (which counts
mapped file pages it has touched) stays bounded too; the data stays in the operating
system's page cache and in the files.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from ._single import Float32Tape
from ._tape import Tape

__all__ = ["evaluate_file"]

#: Default bytes of block buffers (inputs, parameters and results of one block).
BLOCK_BYTES = 32 << 20

_METHODS = ("value_and_grad", "forward", "gradient")
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_PAGE = mmap.PAGESIZE


def _release_rows(arr, r0: int, r1: int) -> None:
    """Drop rows ``r0:r1`` of a C-ordered memmap from this process's resident pages."""
    mm = getattr(arr, "_mmap", None)
    if _DONTNEED is None or mm is None or r1 <= r0 or not arr.flags.c_contiguous:
        return
    row = arr.strides[0] if arr.ndim else arr.itemsize
    # np.memmap maps from the allocation-granularity boundary below the array's offset.
    base = arr.offset % mmap.ALLOCATIONGRANULARITY
    a = base + r0 * row
    b = base + r1 * row
    a -= a % _PAGE
    try:
        mm.madvise(_DONTNEED, a, b - a)
    except (OSError, ValueError):  # not supported here: only memory, never data, at stake
        pass


def _column_sums(a: np.ndarray) -> np.ndarray:
    """Sums of the columns of a C-ordered ``(m, k)`` block (pairwise, so accurate)."""
    if a.shape[1] <= 16:  # numpy's axis-0 sum is slow for a few columns: one at a time
        return np.array([a[:, j].sum() for j in range(a.shape[1])])
    return a.sum(axis=0)


def _open_points(points, n: int, what: str):
    """A ``(n_points, n)`` array-like from a path (memory-mapped) or an array."""
    if isinstance(points, (str, os.PathLike)):
        arr = np.load(points, mmap_mode="r", allow_pickle=False)
    else:
        arr = points
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            arr = np.asarray(arr)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{what} must hold real numbers; got dtype {arr.dtype}")
    if arr.ndim == 1 and n == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n:
        raise ValueError(f"{what} must have shape (n_points, {n}); got {arr.shape}")
    return arr


def _out_file(path, shape: tuple[int, ...], dtype=np.float64):
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def evaluate_file(
    tape: Tape,
    points_path,
    out_path=None,
    method: str = "value_and_grad",
    block_points: int | None = None,
    params=None,
    reduce: str | None = None,
):
    """Evaluate a tape at points read from a ``.npy`` file, in bounded memory.

    Parameters
    ----------
    tape : Tape or Float32Tape
        A :class:`Float32Tape` (``tape.astype(np.float32)``) rounds the points and
        parameters to float32 and stores (or returns) float32 results.
    points_path : str or path-like or array_like
        A ``.npy`` file of shape ``(n_points, n_inputs)``, any real dtype, memory-mapped
        and read block by block. An array (e.g. an existing ``np.memmap``) is streamed
        the same way.
    out_path : str or path-like or tuple of two, optional
        Where the per-point results go, as ``.npy`` files written through memory maps:

        * ``method="forward"``: one path, an array ``(n_points,)`` (one output) or
          ``(n_points, n_outputs)``;
        * ``"gradient"``: one path, ``(n_points, n_inputs)``;
        * ``"value_and_grad"``: a pair of paths ``(values, gradients)`` for arrays
          ``(n_points,)`` and ``(n_points, n_inputs)``, or one path for a single array
          ``(n_points, 1 + n_inputs)``: the value, then the gradient, per row.

        Without ``out_path`` (and without ``reduce``) the results are returned in memory.
    method : {"value_and_grad", "forward", "gradient"}
    block_points : int, optional
        Points per block: working memory is this many points' inputs and results. By
        default, as many as fit in 32 MiB.
    params : array_like or str or path-like, optional
        Parameters: ``(n_params,)`` for every point, or ``(n_points, n_params)`` per
        point (an array or a ``.npy`` path, streamed with the points).
    reduce : {None, "sum", "mean"}
        Sum (or average) the results over all points instead of storing them: nothing of
        size ``n_points`` is ever allocated or written.

    Returns
    -------
    With ``reduce``: the sum or mean of the results, shaped as one point's results
    (``value_and_grad``: ``(value, gradient)``). With ``out_path``: the output memmap(s)
    (``value_and_grad`` with one path: views ``(values, gradients)`` of the single
    array), flushed. Otherwise the results as :meth:`Tape.value_and_grad`,
    :meth:`Tape.forward` or :meth:`Tape.gradient` return them for all points.

    Raises
    ------
    BranchError
        If a recorded branch decision does not hold at some point.

    Examples
    --------
    >>> import numpy as np, tapejit, tempfile, os
    >>> tape = tapejit.record(lambda x: np.sum(x ** 2), np.zeros(2))
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "x.npy"), np.arange(10.0).reshape(5, 2))
    >>> v, g = tapejit.evaluate_file(tape, os.path.join(d, "x.npy"), block_points=2,
    ...                              reduce="sum")
    >>> float(v), g.tolist()
    (285.0, [40.0, 50.0])
    """
    dt = np.dtype(np.float64)
    if isinstance(tape, Float32Tape):
        tape, dt = tape.tape, np.dtype(np.float32)
    if not isinstance(tape, Tape):
        raise TypeError(f"evaluate_file() needs a tapejit.Tape; got {type(tape).__name__}")
    single = dt == np.float32
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    if reduce not in (None, "sum", "mean"):
        raise ValueError(f"reduce must be None, 'sum' or 'mean'; got {reduce!r}")
    if reduce is not None and out_path is not None:
        raise ValueError("give out_path or reduce, not both")
    n_in, n_out, n_par = tape.n_inputs, tape.n_outputs, tape.n_params
    if method != "forward" and n_out != 1:
        raise ValueError(
            f"{method} needs a tape with one output; this tape has {n_out}. Use "
            "method='forward'."
        )
    X = _open_points(points_path, n_in, "points")
    n = X.shape[0]

    P = None  # per-point parameters, streamed; else p1 for every point
    p1 = None
    if n_par:
        if params is None:
            raise ValueError(f"this tape has {n_par} parameters: pass params=")
        if isinstance(params, (str, os.PathLike)) or np.ndim(params) == 2:
            P = _open_points(params, n_par, "params")
            if P.shape[0] != n:
                raise ValueError(f"params has {P.shape[0]} rows for {n} points")
        else:
            p1 = np.ascontiguousarray(np.asarray(params, dtype=dt), np.float64).reshape(-1)
            if p1.shape != (n_par,):
                raise ValueError(f"params must have shape ({n_par},) or ({n}, {n_par})")

    # Per-point widths: outputs stored, and bytes of one point's buffers.
    width = {"forward": n_out, "gradient": n_in, "value_and_grad": 1 + n_in}[method]
    if block_points is None:
        per_point = 8 * (n_in + (n_par if P is not None else 0) + width)
        block_points = max(1024, BLOCK_BYTES // per_point)
    block_points = int(block_points)
    if block_points < 1:
        raise ValueError("block_points must be at least 1")
    block_points = min(block_points, max(n, 1))

    # Outputs: memmapped files, in-memory arrays, or nothing (reduction).
    vo = go = fo = None  # value, gradient, forward outputs (n-sized), when stored
    ret = None
    both = None  # value_and_grad into a single (n, 1 + n_inputs) file
    files = []  # output memmaps, whose pages are released after each block
    if reduce is None:
        fshape = (n,) if n_out == 1 else (n, n_out)
        if out_path is None:
            if method == "forward":
                fo = np.empty(fshape, dt)
                ret = fo
            else:
                go = np.empty((n, n_in), dt)
                if method == "value_and_grad":
                    vo = np.empty(n, dt)
                    ret = (vo, go)
                else:
                    ret = go
        elif method == "value_and_grad" and isinstance(out_path, (tuple, list)):
            if len(out_path) != 2:
                raise ValueError("out_path for value_and_grad: one path or (values, grads)")
            vo, go = (_out_file(out_path[0], (n,), dt),
                      _out_file(out_path[1], (n, n_in), dt))
            ret = (vo, go)
            files = [vo, go]
        elif method == "value_and_grad":
            both = _out_file(out_path, (n, 1 + n_in), dt)
            ret = (both[:, 0], both[:, 1:])
            files = [both]
        elif method == "forward":
            fo = _out_file(out_path, fshape, dt)
            ret = fo
            files = [fo]
        else:
            go = _out_file(out_path, (n, n_in), dt)
            ret = go
            files = [go]

    # Reusable block buffers (C-contiguous float64, as the kernels want).
    xb = np.empty((block_points, n_in))
    pb = np.empty((block_points, n_par)) if P is not None else None
    yb = np.empty((block_points, n_out)) if method == "forward" else None
    vb = np.empty(block_points) if method == "value_and_grad" else None
    gb = np.empty((block_points, n_in)) if method != "forward" else None
    # One output array of rows (value, gradient): rows assembled here, written at once.
    cb = np.empty((block_points, 1 + n_in)) if both is not None else None
    acc_v = 0.0 if method == "value_and_grad" else None
    acc_y = np.zeros(n_out) if method == "forward" else None
    acc_g = np.zeros(n_in) if method != "forward" else None

    for r0 in range(0, n, block_points):
        r1 = min(n, r0 + block_points)
        m = r1 - r0
        x = xb[:m]
        np.copyto(x, X[r0:r1], casting="unsafe")
        if single and X.dtype != np.float32:
            x[...] = x.astype(np.float32)  # the float32 points
        _release_rows(X, r0, r1)
        if P is not None:
            p = pb[:m]
            np.copyto(p, P[r0:r1], casting="unsafe")
            if single and P.dtype != np.float32:
                p[...] = p.astype(np.float32)
            _release_rows(P, r0, r1)
        else:
            p = p1
        if method == "forward":
            y = yb[:m]
            tape.forward(x, p, out=y if n_out > 1 else y.reshape(m))
            if reduce is not None:
                acc_y += _column_sums(y)
            else:
                fo[r0:r1] = y if n_out > 1 else y[:, 0]
        else:
            g = gb[:m]
            if method == "value_and_grad":
                v = vb[:m]
                tape.value_and_grad(x, p, out=(v, g))
            else:
                tape.gradient(x, p, out=g)
            if reduce is not None:
                acc_g += _column_sums(g)
                if vb is not None:
                    acc_v += float(v.sum())
            elif both is not None:
                c = cb[:m]
                c[:, 0] = v
                c[:, 1:] = g
                both[r0:r1] = c
            else:
                go[r0:r1] = g
                if vo is not None:
                    vo[r0:r1] = v
        for arr in files:
            _release_rows(arr, r0, r1)

    if reduce is not None:
        scale = 1.0 if reduce == "sum" else (1.0 / n if n else np.nan)
        # sums are accumulated in float64 whatever the dtype, then rounded once
        if method == "forward":
            acc_y *= scale
            acc_y = acc_y.astype(dt)
            return (float(acc_y[0]) if not single else acc_y[0]) if n_out == 1 else acc_y
        acc_g = (acc_g * scale).astype(dt)
        if method == "value_and_grad":
            return (acc_v * scale if not single else np.float32(acc_v * scale)), acc_g
        return acc_g
    for arr in files:
        arr.flush()
    return ret
