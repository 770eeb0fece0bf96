"""Evaluate tapes over Dask arrays of points: lazily, chunk by chunk, on any scheduler.

``X`` is a :mod:`dask.array` of points, shape ``(n_points, n_inputs)``, chunked along
the points (the inputs axis is rechunked to one chunk). Every function returns lazy Dask
arrays whose chunks are computed by the tape's batched kernels, one task per chunk of
points; nothing runs until you call ``.compute()`` (or :func:`dask.compute`,
``.persist()``, ``da.store``, ...). The same code runs on the threaded scheduler, the
multiprocessing scheduler and a :mod:`dask.distributed` cluster of any size.

The tape enters the task graph once, as its own key: tasks depend on it instead of each
carrying a copy, so a cluster sends it to each worker once. It travels pickled as its
packed program and constants (a few bytes per instruction, validated again when
unpickled).

Each task runs the tape's kernels on ``numba_threads`` threads (default 1): Dask's own
workers are the parallelism, and one Numba thread per Dask thread keeps the machine
from being oversubscribed. Pass ``numba_threads=None`` to let every task use all of Numba's
threads (one Dask thread per machine, say).

This module needs Dask: ``pip install tapejit[dask]`` (``dask[array]`` and
``distributed``).
"""

from __future__ import annotations

try:
    import dask
    import dask.array as da
    from dask.base import normalize_token
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tapejit.dask needs Dask: pip install tapejit[dask]  (or: pip install "
        f"'dask[array]' distributed); the import failed with: {exc}"
    ) from exc

import numba
import numpy as np

from ._tape import Tape

__all__ = ["forward", "gradient", "hessian", "jacobian", "sum_value_and_grad",
           "value_and_grad"]


@normalize_token.register(Tape)
def _tokenize_tape(tape: Tape):
    # Deterministic and cheap: the packed program, constants and shapes identify a tape.
    return ("tapejit.Tape", tape.name, tape.input_shapes, tape.output_shapes,
            normalize_token(np.asarray(tape._prog)), normalize_token(np.asarray(tape._consts)))


# -- task side -----------------------------------------------------------------------------
def _threads(n):
    """Numba threads for a task: at most what Numba has."""
    return None if n is None else max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))


def _call(threads, fn, *args, **kwargs):
    """``fn(*args)`` with this thread's Numba thread count set to ``threads`` meanwhile
    (the count is per thread, so concurrent tasks do not interfere)."""
    if threads is None:
        return fn(*args, **kwargs)
    old = numba.get_num_threads()
    if old == threads:
        return fn(*args, **kwargs)
    numba.set_num_threads(threads)
    try:
        return fn(*args, **kwargs)
    finally:
        numba.set_num_threads(old)


def _block_forward(x, p=None, *, tape, params, threads):
    return _call(threads, tape.forward, x, params if p is None else p)


def _block_value_and_grad(x, p=None, *, tape, params, threads):
    return _call(threads, tape.value_and_grad, x, params if p is None else p)


def _block_gradient(x, p=None, *, tape, params, threads):
    return _call(threads, tape.gradient, x, params if p is None else p)


def _block_jacobian(x, p=None, *, tape, params, threads):
    return _call(threads, tape.jacobian, x, params if p is None else p)


def _block_hessian(x, p=None, *, tape, params, threads):
    return _call(threads, tape.hessian, x, params if p is None else p)


def _block_sums(x, p=None, *, tape, params, threads):
    """One row ``(n_points, sum of values, sums of gradients...)`` for a block."""
    v, g = _call(threads, tape.value_and_grad, x, params if p is None else p)
    row = np.empty((1, 2 + g.shape[1]))
    row[0, 0] = x.shape[0]
    row[0, 1] = v.sum()
    row[0, 2:] = [g[:, j].sum() for j in range(g.shape[1])] if g.shape[1] <= 16 else g.sum(0)
    return row


# -- graph side ----------------------------------------------------------------------------
def _check_tape(tape) -> Tape:
    if not isinstance(tape, Tape):
        raise TypeError(f"expected a tapejit.Tape; got {type(tape).__name__}")
    return tape


def _points(X, n: int, what: str):
    """``X`` as a float Dask array ``(n_points, n)`` with the second axis in one chunk."""
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        X = da.from_array(X, chunks=("auto", -1) if X.ndim == 2 else "auto")
    if X.dtype.kind not in "iuf":
        raise TypeError(f"{what} must hold real numbers; got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[1] != n:
        raise ValueError(f"{what} must be a 2-D array of shape (n_points, {n}); got {X.shape}")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})
    return X


def _params(tape: Tape, params, X):
    """``(dask array of per-point params or None, numpy params for every point or None)``."""
    if not tape.n_params:
        if params is not None:
            raise ValueError("this tape has no parameters")
        return None, None
    if params is None:
        raise ValueError(f"this tape has {tape.n_params} parameters: pass params=")
    if isinstance(params, da.Array) or np.ndim(params) == 2:
        P = _points(params, tape.n_params, "params")
        if P.shape[0] != X.shape[0]:
            raise ValueError(f"params has {P.shape[0]} rows for {X.shape[0]} points")
        if P.chunks[0] != X.chunks[0]:  # one chunk of parameters per chunk of points
            P = P.rechunk({0: X.chunks[0]})
        return P, None
    p = np.ascontiguousarray(params, dtype=np.float64).reshape(-1)
    if p.shape != (tape.n_params,):
        raise ValueError(f"params must have shape ({tape.n_params},) or (n_points, "
                         f"{tape.n_params})")
    return None, p


def _apply(block, tape, X, params, numba_threads, core_out, n_out_arrays=1):
    """Lazy per-point results: ``block`` applied to every chunk of points.

    ``core_out`` is the gufunc signature's output part, e.g. ``"(),(n)"``.
    """
    tape = _check_tape(tape)
    X = _points(X, tape.n_inputs, "X")
    P, p = _params(tape, params, X)
    signature = "(n)" + (",(q)" if P is not None else "") + "->" + core_out
    arrays = (X,) if P is None else (X, P)
    return da.apply_gufunc(
        block, signature, *arrays,
        output_dtypes=(float,) * n_out_arrays if n_out_arrays > 1 else float,
        output_sizes={"k": tape.n_outputs},
        tape=dask.delayed(tape, pure=True), params=p, threads=_threads(numba_threads),
    )


def forward(tape: Tape, X, params=None, *, numba_threads: int | None = 1):
    """Outputs at every point, lazily: ``(n_points,)`` or ``(n_points, n_outputs)``.

    Parameters
    ----------
    tape : Tape
    X : dask.array.Array or array_like
        Points ``(n_points, n_inputs)``, chunked along the points (the inputs axis is
        rechunked to one chunk). A numpy array is wrapped with automatic chunks.
    params : array_like or dask.array.Array, optional
        ``(n_params,)`` for every point, or ``(n_points, n_params)`` per point.
    numba_threads : int or None
        Numba threads per task (see the module's description); ``None``: all.

    Returns
    -------
    dask.array.Array
    """
    out = "()" if _check_tape(tape).n_outputs == 1 else "(k)"
    return _apply(_block_forward, tape, X, params, numba_threads, out)


def value_and_grad(tape: Tape, X, params=None, *, numba_threads: int | None = 1):
    """Values ``(n_points,)`` and gradients ``(n_points, n_inputs)`` of a one-output tape,
    as two lazy arrays computed by the same tasks (compute them together:
    ``dask.compute(v, g)``). Arguments as :func:`forward`."""
    _scalar(tape, "value_and_grad")
    return _apply(_block_value_and_grad, tape, X, params, numba_threads, "(),(n)", 2)


def gradient(tape: Tape, X, params=None, *, numba_threads: int | None = 1):
    """Gradients ``(n_points, n_inputs)`` of a one-output tape, lazily. Arguments as
    :func:`forward`."""
    _scalar(tape, "gradient")
    return _apply(_block_gradient, tape, X, params, numba_threads, "(n)")


def jacobian(tape: Tape, X, params=None, *, numba_threads: int | None = 1):
    """Jacobians ``(n_points, n_outputs, n_inputs)``, lazily. Arguments as
    :func:`forward`."""
    return _apply(_block_jacobian, tape, X, params, numba_threads, "(k,n)")


def hessian(tape: Tape, X, params=None, *, numba_threads: int | None = 1):
    """Hessians ``(n_points, n_inputs, n_inputs)`` of a one-output tape, lazily.
    Arguments as :func:`forward`."""
    _scalar(tape, "hessian")
    return _apply(_block_hessian, tape, X, params, numba_threads, "(n,n)")


def sum_value_and_grad(tape: Tape, X, params=None, mean: bool = False, *,
                       numba_threads: int | None = 1, split_every: int | None = None):
    """Sum (or mean) over all points of the value and the gradient of a one-output tape.

    A reduction that never holds per-point results beyond one chunk: each task reduces
    its chunk to ``(count, sum of values, sum of gradients)``, and those rows are added
    in a tree (:meth:`dask.array.Array.sum`). This is the loss and gradient of a model
    fitted to data: ``X`` the data points, ``params`` the model's parameters... or the
    other way round, as the tape was recorded.

    Parameters
    ----------
    tape, X, params, numba_threads
        As :func:`forward`.
    mean : bool
        Average instead of sum.
    split_every : int, optional
        Fan-in of the reduction tree (Dask's default when omitted).

    Returns
    -------
    value : dask.array.Array
        0-d.
    grad : dask.array.Array
        ``(n_inputs,)``.
    """
    tape = _check_tape(tape)
    _scalar(tape, "sum_value_and_grad")
    X = _points(X, tape.n_inputs, "X")
    P, p = _params(tape, params, X)
    width = 2 + tape.n_inputs
    pairs = (X, "ik") if P is None else (X, "ik", P, "iq")
    rows = da.blockwise(
        _block_sums, "iw", *pairs, new_axes={"w": width}, adjust_chunks={"i": 1},
        concatenate=True, dtype=float, meta=np.empty((0, 0)),
        tape=dask.delayed(tape, pure=True), params=p, threads=_threads(numba_threads),
    )
    total = rows.sum(axis=0, split_every=split_every)
    if mean:
        total = total / total[0]
    return total[1], total[2:]


def _scalar(tape: Tape, what: str) -> None:
    if _check_tape(tape).n_outputs != 1:
        raise ValueError(f"{what} needs a tape with one output; this tape has "
                         f"{tape.n_outputs}. Use forward() or jacobian().")
