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

from ._atomic import check_distinct, replacing
from ._float32 import Float32Tape
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
        expected = f"expected a .npy file of real numbers, shape (n_points, {n})"
        try:
            arr = np.load(points, mmap_mode="r", allow_pickle=False)
        except OSError:  # missing or unreadable: the OS's own error says it best
            raise
        except Exception as exc:  # truncated, object dtype, not .npy at all
            raise ValueError(f"cannot read {what} file {os.fspath(points)!r} "
                             f"({type(exc).__name__}: {exc}); {expected}") from exc
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise ValueError(f"{what} file {os.fspath(points)!r} is a .npz archive; {expected}")
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
    p1 = params  # a tape without parameters: the Tape methods judge what was passed
    if n_par:
        if params is None:
            raise ValueError(f"this tape has {n_par} parameters: pass params=")
        if isinstance(params, (str, os.PathLike)) or np.ndim(params) == 2:
            P = _open_points(params, n_par, "params")
            if P.shape[0] != n:
                raise ValueError(f"params has {P.shape[0]} rows for {n} points")
            p1 = None
        else:
            p1 = np.ascontiguousarray(np.asarray(params, dtype=dt), np.float64).reshape(-1)
            if p1.shape != (n_par,):
                raise ValueError(f"params must have shape ({n_par},) or ({n}, {n_par})")

    # Output files: named, checked against the inputs and each other, before any work.
    paths: tuple = ()
    if out_path is not None:
        if method == "value_and_grad" and isinstance(out_path, (tuple, list)):
            if len(out_path) != 2:
                raise ValueError("out_path for value_and_grad: one path or (values, grads)")
            paths = tuple(out_path)
        else:
            paths = (out_path,)
        if not all(isinstance(q, (str, os.PathLike)) for q in paths):
            raise TypeError(f"out_path must be a path or, for value_and_grad, two; "
                            f"got {out_path!r}")
        check_distinct({f"out_path[{i}]" if len(paths) > 1 else "out_path": q
                        for i, q in enumerate(paths)},
                       {"points": points_path, "params": params})

    # Per-point widths: outputs stored, and bytes of one point's buffers.
    width = {"forward": n_out, "gradient": n_in, "value_and_grad": 1 + n_in}[method]
    if block_points is None:
        per_point = 8 * (n_in + (n_par if P is not None else 0) + width)
        block_points = max(1024, BLOCK_BYTES // per_point)
    block_points = int(block_points)
    if block_points < 1:
        raise ValueError("block_points must be at least 1")
    block_points = min(block_points, max(n, 1))

    # Reusable block buffers (C-contiguous float64, as the kernels want).
    xb = np.empty((block_points, n_in))
    pb = np.empty((block_points, n_par)) if P is not None else None
    yb = np.empty((block_points, n_out)) if method == "forward" else None
    vb = np.empty(block_points) if method == "value_and_grad" else None
    gb = np.empty((block_points, n_in)) if method != "forward" else None

    def block(r0: int, r1: int) -> tuple[np.ndarray, ...]:
        """Results of points ``r0:r1``: ``(y,)``, ``(g,)`` or ``(v, g)`` (buffer views)."""
        m = r1 - r0
        x = xb[:m]
        np.copyto(x, X[r0:r1], casting="unsafe")
        if single and X.dtype != np.float32:
            x[...] = x.astype(np.float32)  # the float32 points
        _release_rows(X, r0, r1)
        p = p1
        if P is not None:
            p = pb[:m]
            np.copyto(p, P[r0:r1], casting="unsafe")
            if single and P.dtype != np.float32:
                p[...] = p.astype(np.float32)
            _release_rows(P, r0, r1)
        if method == "forward":
            y = yb[:m]
            tape.forward(x, p, out=y if n_out > 1 else y.reshape(m))
            return (y,)
        g = gb[:m]
        if method == "gradient":
            tape.gradient(x, p, out=g)
            return (g,)
        v = vb[:m]
        tape.value_and_grad(x, p, out=(v, g))
        return v, g

    # The first block runs before any output exists: it checks the arguments exactly as
    # the Tape methods do (and a point outside the recorded branches fails here too).
    spans = [(r0, min(n, r0 + block_points)) for r0 in range(0, n, block_points)]
    first = block(*spans[0]) if spans else None

    def blocks():
        if first is not None:
            yield spans[0], first
        for r0, r1 in spans[1:]:
            yield (r0, r1), block(r0, r1)

    if reduce is not None:
        return _reduce(blocks(), method, n, n_in, n_out, dt, reduce)
    fshape = (n,) if n_out == 1 else (n, n_out)
    shapes = {"forward": [fshape], "gradient": [(n, n_in)],
              "value_and_grad": [(n, 1 + n_in)] if len(paths) == 1 else [(n,), (n, n_in)]}
    if not paths:  # in memory
        outs = [np.empty(shape, dt) for shape in shapes[method]]
        _store(blocks(), outs, [])
        return outs[0] if len(outs) == 1 else tuple(outs)
    with replacing(*paths) as temps:
        outs = [_out_file(t, shape, dt) for t, shape in zip(temps, shapes[method], strict=True)]
        _store(blocks(), outs, outs)
        for arr in outs:
            arr.flush()
        del outs  # the maps of the temporary names; the results are reopened by name
    outs = [np.load(q, mmap_mode="r+") for q in paths]
    if method == "value_and_grad" and len(outs) == 1:
        return outs[0][:, 0], outs[0][:, 1:]
    return outs[0] if len(outs) == 1 else tuple(outs)


def _store(blocks, outs: list[np.ndarray], files: list[np.ndarray]) -> None:
    """Write each block's results into the n-sized ``outs``; ``value_and_grad`` into one
    ``(n, 1 + n_inputs)`` array is assembled in a buffer of rows and written at once."""
    rows = None
    for (r0, r1), res in blocks:
        if len(outs) == len(res):
            for o, r in zip(outs, res, strict=True):
                o[r0:r1] = r if o.ndim == r.ndim else r[:, 0]
        else:
            v, g = res
            if rows is None:
                rows = np.empty((len(v), outs[0].shape[1]))
            c = rows[: r1 - r0]
            c[:, 0] = v
            c[:, 1:] = g
            outs[0][r0:r1] = c
        for arr in files:
            _release_rows(arr, r0, r1)


def _reduce(blocks, method: str, n: int, n_in: int, n_out: int, dt: np.dtype, reduce: str):
    """Sum (or mean) of the blocks' results, accumulated in float64, rounded once."""
    single = dt == np.float32
    acc_v = 0.0
    acc = np.zeros(n_out if method == "forward" else n_in)
    for _, res in blocks:
        acc += _column_sums(res[-1])
        if method == "value_and_grad":
            acc_v += float(res[0].sum())
    scale = 1.0 if reduce == "sum" else (1.0 / n if n else np.nan)
    acc = (acc * scale).astype(dt)
    if method == "forward":
        return (float(acc[0]) if not single else acc[0]) if n_out == 1 else acc
    if method == "value_and_grad":
        return (acc_v * scale if not single else np.float32(acc_v * scale)), acc
    return acc
