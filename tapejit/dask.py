"""Evaluate tapes over Dask arrays of points: lazily, chunk by chunk, on any scheduler.

``X`` is a :mod:`dask.array` of points, shape ``(n_points, n_inputs)``, chunked along
the points (the inputs axis is rechunked to one chunk). Every function returns lazy Dask
arrays whose chunks are computed by the tape's batched kernels, one task per chunk of
points; nothing runs until you call ``.compute()`` (or :func:`dask.compute`,
``.persist()``, ``da.store``, ...). The same code runs on the threaded scheduler, the
multiprocessing scheduler and a :mod:`dask.distributed` cluster of any size.

The methods of a tape (``forward``, ``value_and_grad``, ``gradient``, ``jacobian``,
``hessian``, ``vjp``, ``jvp``, ``hvp``, of a :class:`~tapejit.Float32Tape` too) come
here when ``x``, per-point ``params``, ``w`` or ``v`` is a Dask array:
``tape.value_and_grad(X)`` is ``tapejit.dask.value_and_grad(tape, X)``. Per-point
arguments are rechunked to the chunks of the points; a one-row argument serves every
point. A :class:`~tapejit.BranchError` is raised when a chunk holding points off the
recorded branches is computed (counting that chunk's points); ``check="mask"`` gives a
lazy validity mask instead. ``out=`` buffers are refused with Dask arrays:
:func:`store` computes into arrays. ``jacobian`` and ``hessian`` take ``sparse=True``
(as the tape's methods do, and ``tape.jacobian(X, sparse=True)`` comes here too): a
:class:`~tapejit.SparseStack` whose pattern is computed when the graph is built and
whose values are a lazy Dask array ``(n_points, nnz)``, each task computing its chunk's
nonzeros with the tape's colouring (computed once per tape in each worker process).

The tape enters the task graph once, as its own key: tasks depend on it instead of each
carrying a copy, so a cluster sends it to each worker once. It travels pickled as its
packed program and constants (a few bytes per instruction, validated again when
unpickled).

Each task runs the tape's kernels on ``numba_threads`` threads (default 1): Dask's own
workers are the parallelism, and one Numba thread per Dask thread keeps the machine
from being oversubscribed. Pass ``numba_threads=None`` to let every task use all of Numba's
threads (one Dask thread per machine, say).

:func:`store` computes per-point results straight into arrays you provide (numpy arrays
on the threaded and synchronous schedulers, memory-mapped files on any scheduler): each
task writes its rows in place, so no result is copied or assembled.

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

import mmap
import operator
import uuid
from concurrent.futures import ProcessPoolExecutor

import numba
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ._colouring import SparseStack
from ._float32 import Float32Tape
from ._tape import Tape, packed

__all__ = ["forward", "gradient", "hessian", "hvp", "jacobian", "jvp", "store",
           "sum_value_and_grad", "value_and_grad", "vjp"]


@normalize_token.register(Tape)
def _tokenize_tape(tape: Tape):
    # Deterministic and cheap: the packed program, constants and shapes identify a tape.
    return ("tapejit.Tape", tape.name, tape.input_shapes, tape.output_shapes,
            *(normalize_token(np.asarray(a)) for a in packed(tape)))


@normalize_token.register(Float32Tape)
def _tokenize_float32(tape: Float32Tape):
    return ("tapejit.Float32Tape", _tokenize_tape(tape.tape))


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


def _one(blocks):
    """A chunk of points from a list of chunks along the inputs axis (one: no copy)."""
    if blocks is None or isinstance(blocks, np.ndarray):
        return blocks
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def _block(method, x, *args, tape, threads, kwargs):
    """Per-point results of ``tape.<method>(x, *args, **kwargs)`` on one chunk of points,
    as a tuple of arrays. ``args`` are the method's other positional arguments (``w`` or
    ``v``, then ``params``): a chunk aligned with ``x``, one row for every point, or
    ``None``."""
    res = _call(threads, getattr(tape, method), _one(x), *map(_one, args), **kwargs)
    res = res if isinstance(res, tuple) else (res,)
    # sparse=True: the chunk's values, (points, nnz); the pattern is the graph's
    return tuple(r.data if isinstance(r, SparseStack) else r for r in res)


#: Points per kernel call inside a reducing task: buffers that stay in cache, reused.
_SUB_BLOCK = 1 << 14


def _column_sums(a):
    # numpy's axis-0 sum is slow for a few columns: sum them one at a time (pairwise)
    if a.shape[1] <= 16:
        return np.array([a[:, j].sum() for j in range(a.shape[1])])
    return a.sum(axis=0)


def _block_sums(x, p=None, *, tape, params, threads, point_dtype=np.float64):
    """One row ``(n_points, sum of values, sums of gradients...)`` for a block, evaluated
    in sub-blocks into small reused buffers (no per-point result the size of the block).
    With ``point_dtype`` float32 the points are rounded to float32 first (the sums stay
    float64)."""
    x, p = _one(x), _one(p)
    if point_dtype != np.float64:
        x = x.astype(point_dtype, copy=False)
        p = None if p is None else p.astype(point_dtype, copy=False)
    n, n_in = x.shape
    step = min(n, _SUB_BLOCK) if threads == 1 else n  # several threads: one call
    row = np.zeros((1, 2 + n_in))
    row[0, 0] = n
    if n == 0:
        return row
    v = np.empty(step)
    g = np.empty((step, n_in))
    x = np.ascontiguousarray(x, dtype=np.float64)
    for i in range(0, n, step):
        m = min(step, n - i)
        pp = params if p is None else p[i : i + m]
        _call(threads, tape.value_and_grad, x[i : i + m], pp, out=(v[:m], g[:m]))
        row[0, 1] += v[:m].sum()
        row[0, 2:] += _column_sums(g[:m])
    return row


# -- graph side ----------------------------------------------------------------------------
def _check_tape(tape) -> Tape:
    if not isinstance(tape, (Tape, Float32Tape)):
        raise TypeError(f"expected a tapejit.Tape; got {type(tape).__name__}")
    return tape


def _points(X, n: int, what: str):
    """``X`` as a float Dask array ``(n_points, n)`` with the second axis in one chunk."""
    if not isinstance(X, da.Array):
        if dask.is_dask_collection(X):  # np.asarray would compute it here
            raise TypeError(f"{what} must be a dask.array.Array; got a "
                            f"{type(X).__module__}.{type(X).__name__} (convert it, e.g. "
                            "DataFrame.to_dask_array(lengths=True))")
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
    return _rows(tape, params, tape.n_params, "params", X)


def _rows(tape: Tape, a, width: int, what: str, X):
    """A per-point argument (``params``, ``w``, ``v``) as ``(dask array aligned with the
    chunks of X or None, numpy row for every point or None)``."""
    if isinstance(a, da.Array) or np.ndim(a) == 2:
        A = _points(a, width, what)
        if A.shape[0] != X.shape[0]:
            raise ValueError(f"{what} has {A.shape[0]} rows for {X.shape[0]} points")
        if A.chunks[0] != X.chunks[0]:  # one chunk of the argument per chunk of points
            A = A.rechunk({0: X.chunks[0]})
        return A, None
    row = np.ascontiguousarray(np.asarray(a, dtype=tape.dtype), np.float64).reshape(-1)
    if row.shape != (width,):
        raise ValueError(f"{what} must have shape ({width},) or (n_points, {width}); got "
                         f"{np.shape(a)}")
    return None, row


_CHECKS = ("raise", "mask")


def _lazy(method, tape, X, params, numba_threads, trailing, *, extra=(), check="raise",
          **kwargs):
    """Lazy per-point results of ``tape.<method>``: one task per chunk of points, then one
    array per result (``trailing``: each result's shape per point).

    ``extra`` holds ``(value, width, name)`` of the per-point arguments between ``x`` and
    ``params`` (``w``, ``v``). With ``check="mask"`` a boolean validity mask per point
    is the last result. The chunks are passed to the tasks as they are (lists along the
    inputs axis, never concatenated when that axis is one chunk), and a method with
    several results runs once per chunk: each output array picks its part of the task's
    tuple.
    """
    tape = _check_tape(tape)
    if check not in _CHECKS:
        raise ValueError(f"check must be 'raise' or 'mask'; got {check!r}")
    X = _points(X, tape.n_inputs, "X")
    P, p = _params(tape, params, X)
    args = [_rows(tape, a, width, what, X) for a, width, what in extra] + [(P, p)]
    pairs = [X, "ij"]
    for lazy, row in args:  # a chunk per chunk of points, or one literal for every task
        pairs += [lazy, "iq"] if lazy is not None else [row, None]
    kwargs = {**kwargs, "check": check} if check != "raise" else kwargs
    base = da.blockwise(
        _block, "i", method, None, *pairs, concatenate=False, dtype=float,
        meta=np.empty((0,)), name=f"tapejit-{method}-" + dask.base.tokenize(
            method, kwargs, tape, *pairs, numba_threads),
        tape=dask.delayed(tape, pure=True), threads=_threads(numba_threads), kwargs=kwargs,
    )
    dtypes = [tape.dtype] * len(trailing)
    if check == "mask":
        trailing, dtypes = [*trailing, ()], [*dtypes, np.dtype(bool)]
    outs = []
    for k, (shape, dtype) in enumerate(zip(trailing, dtypes, strict=True)):
        name = f"{base.name}-{k}"
        zeros = (0,) * len(shape)
        layer = {(name, i, *zeros): (operator.getitem, (base.name, i), k)
                 for i in range(base.numblocks[0])}
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[base])
        chunks = (X.chunks[0], *((d,) for d in shape))
        outs.append(da.Array(graph, name, chunks=chunks,
                             meta=np.empty((0, *zeros), dtype=dtype)))
    return tuple(outs)


def _one_or_all(outs: tuple, check: str):
    """One lazy result as an array (a tuple with its mask when ``check="mask"``)."""
    return outs if check == "mask" else outs[0]


def forward(tape: Tape, X, params=None, *, check: str = "raise",
            numba_threads: int | None = 1):
    """Outputs at every point, lazily: ``(n_points,)`` or ``(n_points, n_outputs)``.

    Parameters
    ----------
    tape : Tape or Float32Tape
        ``tape.astype(np.float32)`` gives float32 results (points rounded to float32).
    X : dask.array.Array or array_like
        Points ``(n_points, n_inputs)``, chunked along the points (the inputs axis is
        rechunked to one chunk). A numpy array is wrapped with automatic chunks.
    params : array_like or dask.array.Array, optional
        ``(n_params,)`` for every point, or ``(n_points, n_params)`` per point (rechunked
        to the chunks of ``X``).
    check : {"raise", "mask"}
        As the tape's methods: ``"raise"`` a :class:`~tapejit.BranchError` when a chunk
        is computed and one of its points leaves the recorded branches (it counts that
        chunk's points); ``"mask"``: NaN at those points, and a lazy boolean validity
        mask ``(n_points,)`` as the last result.
    numba_threads : int or None
        Numba threads per task (see the module's description); ``None``: all.

    Returns
    -------
    dask.array.Array
        With ``check="mask"``, ``(outputs, valid)``.
    """
    n_out = _check_tape(tape).n_outputs
    return _one_or_all(_lazy("forward", tape, X, params, numba_threads,
                             [(n_out,) if n_out > 1 else ()], check=check), check)


def value_and_grad(tape: Tape, X, params=None, *, check: str = "raise",
                   numba_threads: int | None = 1):
    """Values ``(n_points,)`` and gradients ``(n_points, n_inputs)`` of a one-output tape,
    as two lazy arrays computed by the same tasks (compute them together:
    ``dask.compute(v, g)``). Arguments as :func:`forward`; with ``check="mask"`` the
    validity mask is a third array."""
    _scalar(tape, "value_and_grad")
    return _lazy("value_and_grad", tape, X, params, numba_threads, [(), (tape.n_inputs,)],
                 check=check)


def gradient(tape: Tape, X, params=None, *, check: str = "raise",
             numba_threads: int | None = 1):
    """Gradients ``(n_points, n_inputs)`` of a one-output tape, lazily. Arguments and
    ``check="mask"`` as :func:`forward`."""
    _scalar(tape, "gradient")
    return _one_or_all(_lazy("gradient", tape, X, params, numba_threads,
                             [(tape.n_inputs,)], check=check), check)


def _sparse_lazy(method: str, pattern, tape, X, params, numba_threads, check: str,
                 **kwargs):
    """``tape.<method>(X, sparse=True)`` lazily: a :class:`~tapejit.SparseStack` of
    ``pattern`` (computed here, and kept by the tape) whose values are a lazy Dask array
    ``(n_points, nnz)``, one task per chunk of points (with ``check="mask"``, and the lazy
    validity mask)."""
    outs = _lazy(method, tape, X, params, numba_threads, [(pattern.nnz,)], check=check,
                 sparse=True, **kwargs)
    stack = SparseStack(pattern, outs[0])
    return (stack, outs[1]) if check == "mask" else stack


def jacobian(tape: Tape, X, params=None, *, mode: str = "auto", check: str = "raise",
             numba_threads: int | None = 1, sparse: bool = False):
    """Jacobians ``(n_points, n_outputs, n_inputs)``, lazily. ``mode`` as
    :meth:`Tape.jacobian <tapejit.Tape.jacobian>` (``"auto"``, ``"forward"`` or
    ``"reverse"``); the other arguments and ``check="mask"`` as :func:`forward`.

    With ``sparse=True``, as ``tape.jacobian(X, sparse=True)`` for a numpy batch: a
    :class:`~tapejit.SparseStack` whose ``pattern`` is the tape's (computed now, and kept
    by the tape) and whose ``data`` is a lazy Dask array ``(n_points, nnz)`` of the
    nonzeros, one task per chunk of points; ``stack.data.compute()`` (or
    ``dask.compute(stack.data, valid)`` with ``check="mask"``) computes them.
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse'; got {mode!r}")
    kwargs = {} if mode == "auto" else {"mode": mode}
    if sparse:
        return _sparse_lazy("jacobian", _check_tape(tape).jacobian_sparsity(), tape, X,
                            params, numba_threads, check, **kwargs)
    shape = (_check_tape(tape).n_outputs, tape.n_inputs)
    return _one_or_all(_lazy("jacobian", tape, X, params, numba_threads, [shape],
                             check=check, **kwargs), check)


def hessian(tape: Tape, X, params=None, *, check: str = "raise",
            numba_threads: int | None = 1, sparse: bool = False):
    """Hessians ``(n_points, n_inputs, n_inputs)`` of a one-output tape, lazily.
    Arguments and ``check="mask"`` as :func:`forward`; ``sparse=True`` as
    :func:`jacobian`'s (the pattern: ``tape.hessian_sparsity()``)."""
    _scalar(tape, "hessian")
    if sparse:
        return _sparse_lazy("hessian", tape.hessian_sparsity(), tape, X, params,
                            numba_threads, check)
    n = tape.n_inputs
    return _one_or_all(_lazy("hessian", tape, X, params, numba_threads, [(n, n)],
                             check=check), check)


def vjp(tape: Tape, X, w, params=None, *, check: str = "raise",
        numba_threads: int | None = 1):
    """Outputs ``(n_points, n_outputs)`` and vector-Jacobian products ``w @ J``
    ``(n_points, n_inputs)``, as two lazy arrays computed by the same tasks (see
    :meth:`Tape.vjp <tapejit.Tape.vjp>`).

    Parameters
    ----------
    tape, X, params, check, numba_threads
        As :func:`forward` (with ``check="mask"`` the validity mask is a third array).
    w : array_like or dask.array.Array
        Output weights: ``(n_outputs,)`` for every point, or ``(n_points, n_outputs)``
        per point (rechunked to the chunks of ``X``).

    Returns
    -------
    outputs, vjp : dask.array.Array
    """
    n_out = _check_tape(tape).n_outputs
    return _lazy("vjp", tape, X, params, numba_threads, [(n_out,), (tape.n_inputs,)],
                 extra=[(w, n_out, "w")], check=check)


def jvp(tape: Tape, X, v, params=None, *, check: str = "raise",
        numba_threads: int | None = 1):
    """Jacobian-vector products ``J v``, lazily: ``(n_points,)`` for a one-output tape,
    else ``(n_points, n_outputs)`` (see :meth:`Tape.jvp <tapejit.Tape.jvp>`).

    Parameters
    ----------
    tape, X, params, check, numba_threads
        As :func:`forward`.
    v : array_like or dask.array.Array
        Tangent directions: ``(n_inputs,)`` for every point, or ``(n_points,
        n_inputs)`` per point (rechunked to the chunks of ``X``).

    Returns
    -------
    dask.array.Array
        With ``check="mask"``, ``(jv, valid)``.
    """
    n_out = _check_tape(tape).n_outputs
    return _one_or_all(_lazy("jvp", tape, X, params, numba_threads,
                             [(n_out,) if n_out > 1 else ()],
                             extra=[(v, tape.n_inputs, "v")], check=check), check)


def hvp(tape: Tape, X, v, params=None, *, check: str = "raise",
        numba_threads: int | None = 1):
    """Hessian-vector products ``H v`` of a one-output tape, lazily: ``(n_points,
    n_inputs)`` (see :meth:`Tape.hvp <tapejit.Tape.hvp>`).

    Parameters
    ----------
    tape, X, params, check, numba_threads
        As :func:`forward`.
    v : array_like or dask.array.Array
        Directions: ``(n_inputs,)`` for every point, or ``(n_points, n_inputs)`` per
        point (rechunked to the chunks of ``X``).

    Returns
    -------
    dask.array.Array
        With ``check="mask"``, ``(hv, valid)``.
    """
    _scalar(tape, "hvp")
    return _one_or_all(_lazy("hvp", tape, X, params, numba_threads, [(tape.n_inputs,)],
                             extra=[(v, tape.n_inputs, "v")], check=check), check)


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
    dtype = tape.dtype
    X = _points(X, tape.n_inputs, "X")
    P, p = _params(tape, params, X)
    width = 2 + tape.n_inputs
    pairs = (X, "ij") if P is None else (X, "ij", P, "iq")
    rows = da.blockwise(
        _block_sums, "iw", *pairs, new_axes={"w": width}, adjust_chunks={"i": 1},
        concatenate=False, dtype=float, meta=np.empty((0, 0)),
        tape=dask.delayed(getattr(tape, "tape", tape), pure=True), params=p,
        threads=_threads(numba_threads), point_dtype=dtype,
    )
    total = rows.sum(axis=0, split_every=split_every)
    if mean:
        total = total / total[0]
    if dtype != np.float64:  # float64 sums, rounded once
        total = total.astype(dtype)
    return total[1], total[2:]


def _scalar(tape: Tape, what: str) -> None:
    if _check_tape(tape).n_outputs != 1:
        raise ValueError(f"{what} needs a tape with one output; this tape has "
                         f"{tape.n_outputs}. Use forward() or jacobian().")


# -- writing into arrays -------------------------------------------------------------------
#: Methods :func:`store` runs: the tape methods that take ``out=`` buffers.
_STORE_METHODS = ("forward", "value_and_grad", "gradient", "jacobian")

_NOT_SHARED = (
    "a numpy out= array lives in this process's memory: only tasks run here (the "
    "threaded or synchronous scheduler) can fill it, but {where} runs tasks in other "
    "processes, which would fill a copy. Use scheduler='threads' or 'sync', or a "
    "memory-mapped file as the target (np.lib.format.open_memmap(path, mode='w+', ...)), "
    "which tasks reopen by file name wherever they run."
)


class _InMemory:
    """A numpy target in this process: tasks write into row slices of the array itself.

    It refuses to be pickled: a copy sent to another process would be filled there,
    the caller's array never (and the copy alone costs the array's size).
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def done(self, rows: np.ndarray) -> None:
        pass

    def __reduce__(self):
        raise TypeError(_NOT_SHARED.format(where="this scheduler"))

    def __dask_tokenize__(self):
        return ("tapejit.dask._InMemory", id(self.array))  # never hash the data


class _MappedFile:
    """A memory-mapped file target, as where its rows are: it pickles as a few numbers,
    never the data. A task maps just its rows (mode ``r+``), writes them and flushes, in
    whatever process or machine it runs (the file must be reachable there)."""

    __slots__ = ("dtype", "filename", "offset", "shape")

    def __init__(self, filename: str, offset: int, shape: tuple, dtype: np.dtype) -> None:
        self.filename, self.offset, self.shape, self.dtype = filename, offset, shape, dtype

    def __reduce__(self):
        return (_MappedFile, (self.filename, self.offset, self.shape, self.dtype))

    def rows(self, start: int, stop: int) -> np.memmap:
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        return np.memmap(self.filename, self.dtype, "r+", self.offset + start * row,
                         (stop - start, *self.shape[1:]))

    def done(self, rows: np.memmap) -> None:
        rows.flush()  # on the file before the task reports done (a shared disk, say)


def _file_offset(a: np.memmap) -> int:
    """Byte offset in its file of ``a``'s first element. A view of a memmap inherits the
    whole map's ``offset``, so measure from the start of the mapping, which numpy
    begins at the offset rounded down to the allocation granularity."""
    # private to numpy, and the only record of where the mapping begins (checked present
    # by the caller)
    start = np.frombuffer(a._mmap, np.uint8).ctypes.data
    return a.offset - a.offset % mmap.ALLOCATIONGRANULARITY + (a.ctypes.data - start)


def _result_shapes(tape: Tape, method: str, n: int) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of each result of ``tape.<method>`` at ``n`` points."""
    n_in, n_out = tape.n_inputs, tape.n_outputs
    if method == "forward":
        return [("outputs", (n,) if n_out == 1 else (n, n_out))]
    if method == "value_and_grad":
        return [("values", (n,)), ("gradients", (n, n_in))]
    if method == "gradient":
        return [("gradients", (n, n_in))]
    return [("jacobians", (n, n_out, n_in))]


def _targets(tape: Tape, method: str, out, n: int) -> tuple:
    """The validated ``out`` arrays as targets (:class:`_InMemory` or :class:`_MappedFile`):
    exactly what ``tape.<method>(x, out=...)`` accepts, for all ``n`` points."""
    shapes = _result_shapes(tape, method, n)
    want = " and ".join(f"{name} {shape}" for name, shape in shapes)
    arrays = (out,) if isinstance(out, np.ndarray) else out
    if not isinstance(arrays, (tuple, list)):
        hint = ("; to write into other array-likes (zarr, HDF5, ...) use dask.array.store "
                "with the lazy results") if hasattr(out, "__setitem__") else ""
        raise TypeError(f"out must be a numpy array or a tuple of them ({want}); got "
                        f"{type(out).__name__}{hint}")
    if len(arrays) != len(shapes):
        raise ValueError(f"{method} has {len(shapes)} result(s): out must hold "
                         f"{len(shapes)} array(s) ({want}); got {len(arrays)}")
    targets = []
    for a, (name, shape) in zip(arrays, shapes, strict=True):
        what = f"out array for the {name}"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{what} must be a numpy array or np.memmap; got "
                            f"{type(a).__name__}")
        if a.dtype != np.float64:
            raise TypeError(f"{what} must have dtype float64 (native byte order), as "
                            f"Tape.{method} writes; got {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{what} must have shape {shape}; got {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous")
        if not a.flags.writeable:
            raise ValueError(f"{what} must be writeable")
        # numpy's private _mmap: a memmap that still maps its file (see _file_offset)
        if isinstance(a, np.memmap) and a.filename and getattr(a, "_mmap", None) is not None:
            if a.mode == "c":
                raise ValueError(f"{what} is a copy-on-write memmap (mode 'c'): writes "
                                 "never reach its file; open it with mode 'r+' or 'w+'")
            targets.append(_MappedFile(a.filename, _file_offset(a), shape, a.dtype))
        else:
            targets.append(_InMemory(a))
    for i, a in enumerate(arrays):
        for b in arrays[:i]:
            if a.size and b.size and np.may_share_memory(a, b):
                raise ValueError("the out arrays overlap: give each result its own array")
    return tuple(targets)


def _store_block(method, x, p, tape, params, threads, targets, start, stop):
    """``tape.<method>`` of one chunk of points written into rows ``start:stop`` of the
    targets: the kernels write there directly."""
    if stop == start:
        return None
    rows = [t.rows(start, stop) for t in targets]
    out = tuple(rows) if method == "value_and_grad" else rows[0]
    _call(threads, getattr(tape, method), x, params if p is None else p, out=out)
    for t, r in zip(targets, rows, strict=True):
        t.done(r)
    return None


def _stored(blocks) -> None:
    """The end of a store: every block written."""
    return None


def _store_graph(method: str, tape: Tape, X, P, p, targets: tuple,
                 numba_threads: int | None) -> Delayed:
    """One task per chunk of points writing its rows, then one task that waits for all.

    The keys are unique to the call: the graph writes into ``out`` (a side effect), so it
    must never be merged with another call's graph however equal their inputs.
    """
    name = f"tapejit-store-{method}-{uuid.uuid4().hex}"
    tape_d = dask.delayed(tape, pure=True)
    bounds = np.cumsum((0, *X.chunks[0])).tolist()
    threads = _threads(numba_threads)
    layer = {}
    for i in range(X.numblocks[0]):
        pkey = None if P is None else (P.name, i, 0)
        layer[(name, i)] = (_store_block, method, (X.name, i, 0), pkey, tape_d.key, p,
                            threads, targets, bounds[i], bounds[i + 1])
    layer[name] = (_stored, [(name, i) for i in range(X.numblocks[0])])
    deps = [X, tape_d] if P is None else [X, P, tape_d]
    return Delayed(name, HighLevelGraph.from_collections(name, layer, dependencies=deps),
                   layer=name)


def _other_processes(scheduler, collection) -> str | None:
    """What, in the scheduler :func:`dask.compute` would use, runs tasks in other
    processes (or ``None``: threads or this thread)."""
    if isinstance(scheduler, ProcessPoolExecutor):
        return "a ProcessPoolExecutor"
    get = dask.base.get_scheduler(scheduler=scheduler, collections=[collection])
    if getattr(get, "__module__", None) == "dask.multiprocessing":
        return "the multiprocessing scheduler"
    if "Client" in type(getattr(get, "__self__", None)).__name__:
        return "a dask.distributed Client"
    return None


def store(tape: Tape, method: str, X, out, params=None, *, numba_threads: int | None = 1,
          compute: bool = True, **compute_kwargs):
    """Compute per-point results of ``tape.<method>`` straight into arrays you provide.

    Like :func:`dask.array.store` of :func:`forward` (or ...) results, without the copy:
    each task calls the tape's kernels with ``out=`` the rows of the targets that its
    chunk of points owns, so the results are written once, in place, and never
    assembled or copied.

    Which targets work on which schedulers:

    * a numpy array: the threaded and synchronous schedulers only (tasks in this
      process write into it). A process-based scheduler would fill a copy: when
      ``compute=True`` finds one (``scheduler="processes"``, a ``ProcessPoolExecutor``,
      a :mod:`dask.distributed` Client, given or the default) it raises, and the graph
      refuses to be pickled in any case.
    * an :class:`numpy.memmap` of a file (``np.lib.format.open_memmap(path, mode="w+",
      ...)`` for a ``.npy`` file): any scheduler, worker processes and a
      :mod:`dask.distributed` cluster included (with the file on a disk the workers
      share). Tasks receive the file name and the rows' place in it, never the data,
      map just their rows (mode ``"r+"``), write them and flush.

    Parameters
    ----------
    tape : Tape
        A float64 tape (a :class:`~tapejit.Float32Tape` takes no ``out=`` buffers).
    method : {"forward", "value_and_grad", "gradient", "jacobian"}
        The tape method whose results to store (``hessian`` takes no ``out=``: use
        :func:`hessian` and :func:`dask.array.store`).
    X : dask.array.Array or array_like
        Points ``(n_points, n_inputs)``, as :func:`forward`.
    out : ndarray or tuple of ndarray
        The targets, exactly as ``tape.<method>(x, out=...)`` takes them for all the
        points: float64, C-contiguous, writeable, shaped ``(n_points,)`` or
        ``(n_points, n_outputs)`` for ``forward``, ``((n_points,), (n_points,
        n_inputs))`` for ``value_and_grad`` (a tuple of two), ``(n_points, n_inputs)``
        for ``gradient``, ``(n_points, n_outputs, n_inputs)`` for ``jacobian``.
    params, numba_threads
        As :func:`forward`.
    compute : bool
        Compute now (default) and return ``out``; or return a :class:`dask.delayed.Delayed`
        that fills ``out`` when computed (its value is ``None``).
    **compute_kwargs
        Passed to :func:`dask.compute` (``scheduler=``, ...) when ``compute=True``.

    Returns
    -------
    out or dask.delayed.Delayed

    Examples
    --------
    >>> import numpy as np, dask.array as da, tapejit, tapejit.dask as td
    >>> tape = tapejit.record(lambda x: x[0] * np.sin(x[1]), np.zeros(2))
    >>> X = np.random.default_rng(0).standard_normal((1000, 2))
    >>> v, g = np.empty(1000), np.empty((1000, 2))
    >>> _ = td.store(tape, "value_and_grad", da.from_array(X, chunks=(300, 2)), (v, g),
    ...              scheduler="threads")
    >>> bool((g == tape.gradient(X)).all())
    True
    """
    if isinstance(tape, Float32Tape):
        raise TypeError("store needs a float64 Tape: a Float32Tape's methods take no out= "
                        "buffers. Store with tape.astype(np.float64) into float64 arrays, "
                        "or write the lazy float32 results (tapejit.dask.value_and_grad("
                        "tape, X), ...) with dask.array.store")
    tape = _check_tape(tape)
    if method == "hessian":
        raise ValueError("Tape.hessian takes no out= buffer: use tapejit.dask.hessian(tape, "
                         "X) with dask.array.store")
    if method not in _STORE_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, _STORE_METHODS))}; "
                         f"got {method!r}")
    if method in ("value_and_grad", "gradient"):
        _scalar(tape, method)
    if not compute and compute_kwargs:
        raise TypeError(f"compute_kwargs ({', '.join(compute_kwargs)}) are for compute=True; "
                        "with compute=False pass them to dask.compute")
    X = _points(X, tape.n_inputs, "X")
    if any(c != c for c in X.chunks[0]):  # NaN: unknown chunk sizes
        raise ValueError("X has unknown chunk sizes (the rows of each chunk must be known "
                         "to place its results): call X.compute_chunk_sizes() first")
    P, p = _params(tape, params, X)
    targets = _targets(tape, method, out, X.shape[0])
    result = _store_graph(method, tape, X, P, p, targets, numba_threads)
    if not compute:
        return result
    if any(isinstance(t, _InMemory) for t in targets):
        where = _other_processes(compute_kwargs.get("scheduler"), result)
        if where is not None:
            raise ValueError(_NOT_SHARED.format(where=where))
    dask.compute(result, **compute_kwargs)
    return out
