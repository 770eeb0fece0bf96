"""Single precision: float32 points in, float32 results out (``Tape.astype(np.float32)``).

A :class:`Float32Tape` stores what scales with the number of points in float32: the
points and parameters it is given are rounded to float32 once, and every result is
returned as float32, so point sets and per-point results take half the memory and
bandwidth. The arithmetic stays float64: the batched forward and reverse kernels read
float32 points into their float64 chunk workspace and round each result once as they
store it; the other methods (and single points) convert blocks of points around the
float64 methods. Either way each result is the float64 result at the float32 points
rounded once to float32: a relative error of at most 2**-24 (about 6e-8) against that
exact value, far tighter than float32 arithmetic, whose error grows with the length
of the tape. Against float64 points, the rounding of the points adds what the
function's conditioning makes of it (see docs/scale_out).
"""

from __future__ import annotations

import numpy as np

from ._errors import BranchError
from ._kernels.runtime import chunk_of, run_batch
from ._tape import (
    PLAIN,
    dask_in,
    float32_kernels,
    forward_program,
    guarded,
    kernel_arrays,
    kernel_plan,
    lazily,
    require_one_output,
)

_F32 = np.dtype(np.float32)
_ND = np.ndarray
#: Points per conversion block: a few MB of float64 copies, many chunks for the threads.
_BLOCK = 1 << 16
#: Methods whose batched kernels read and write float32 arrays directly (a kernel
#: specialization of their own, compiled on first use); the others convert in blocks.
_DIRECT = ("forward", "value_and_grad", "gradient", "vjp")


def _points32(a, what: str) -> np.ndarray:
    """``a`` rounded to float32 (a real-number array), as the values evaluated at."""
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{what} must hold real numbers (float or integer dtype); "
                        f"got dtype {arr.dtype}")
    return arr.astype(_F32, copy=False)


def _as32(v):
    """A one-point result as float32: a number, an array or a sparse matrix."""
    return v.astype(_F32) if hasattr(v, "astype") else np.float32(v)


def _f64(a, s: int, e: int, n: int):
    """Rows ``s:e`` of a per-point array (first axis ``n``) as float64; others whole."""
    if a is None:
        return None
    if a.ndim == 2 and a.shape[0] == n:
        a = a[s:e]
    return a.astype(np.float64)


class Float32Tape:
    """A :class:`~tapejit.Tape` evaluated on float32 points, returning float32 results.

    Made by ``tape.astype(np.float32)``; it has the methods of a tape (``forward``,
    ``value_and_grad``, ``gradient``, ``vjp``, ``jvp``, ``jacobian``, ``hvp``,
    ``hessian``, ``sparse=True`` included), with the same arguments except ``out=``
    buffers, and its attributes (``n_inputs``, ``listing()``, ...); Dask arrays in, lazy
    float32 Dask arrays out, as :meth:`Tape.forward`. Points and parameters are rounded
    to float32; results are the float64 sweeps' results rounded to float32 (relative
    error at most 2**-24 against the exact values at the float32 points). It pickles as
    the tape.

    Parameters
    ----------
    tape : Tape
        The tape to evaluate.
    """

    dtype = _F32

    def __init__(self, tape) -> None:
        self.tape = tape
        self._ks = float32_kernels(tape)

    def __getattr__(self, name: str):
        # the tape's public attributes only: its internals are reached through the
        # functions of _tape, given the tape itself
        if name.startswith("_") or name == "tape":
            raise AttributeError(name)
        return getattr(self.tape, name)

    def __reduce__(self):
        return (Float32Tape, (self.tape,))

    def __len__(self) -> int:
        return len(self.tape)

    def __repr__(self) -> str:
        return f"{self.tape!r}.astype(float32)"

    def astype(self, dtype):
        """The tape evaluated in ``dtype`` (float64 or float32)."""
        return self.tape.astype(dtype)

    # -- evaluation ------------------------------------------------------------------------
    def _rows32(self, a, n: int, width: int, what: str) -> np.ndarray:
        """Per-point float32 rows ``(1 or n, width)`` for the kernels."""
        a = np.ascontiguousarray(_points32(a, what))
        if a.ndim == 1 and a.shape[0] == width:
            return a.reshape(1, width)
        if a.ndim == 2 and a.shape == (n, width):
            return a
        raise ValueError(f"{what} must have shape ({width},) or ({n}, {width}); "
                         f"got {a.shape}")

    def _batch(self, method: str, x: np.ndarray, params, w, check: str):
        """Many points through the batched kernels, reading float32 points and writing
        float32 results directly (the float64 arithmetic stays in the kernels' chunk
        workspace): no conversion passes."""
        tape = self.tape
        n_in, n_out, n_par = tape.n_inputs, tape.n_outputs, tape.n_params
        X = np.ascontiguousarray(x)
        if X.shape[1:] != (n_in,):
            raise ValueError(f"x must have shape ({n_in},) for one point or (n_points, "
                             f"{n_in}) for many; got shape {X.shape}")
        n = X.shape[0]
        if params is None:
            if n_par:
                raise ValueError(f"this tape has {n_par} parameters: pass params= of "
                                 f"shape ({n_par},) or (n_points, {n_par})")
            P = np.empty((1, 0), _F32)
        else:
            P = self._rows32(params, n, n_par, "params")
        valid = np.empty(n, dtype=np.uint8)
        Y = np.empty((n, n_out), _F32)
        kprog, kconsts = kernel_arrays(tape)
        if method == "forward":
            prog, _, chunk = forward_program(tape)
            run_batch(self._ks, "forward_batch", n, chunk, prog, kconsts, X, P, Y, valid)
            res = (Y[:, 0] if n_out == 1 else Y,)
        else:
            if method == "vjp":
                WT = self._rows32(w, n, n_out, "w")
            else:
                require_one_output(tape, method)
                WT = np.ones((1, 1), _F32)
            G = np.empty((n, n_in), _F32)
            run_batch(self._ks, "vjp_batch", n, chunk_of(tape.n_slots), kprog,
                      kernel_plan(tape), kconsts, X, P, WT, Y, G, valid)
            res = {"value_and_grad": (Y[:, 0], G), "gradient": (G,), "vjp": (Y, G)}[method]
        out = guarded(tape, valid, check, res)
        return out[0] if len(out) == 1 else out

    def _run(self, method: str, x, params, extra: tuple, check: str, **kw):
        """``tape.<method>`` over blocks of points converted to float64; results float32.

        ``extra`` holds the per-point arguments after ``x`` (``w`` or ``v``), each shaped
        for one point or per point. The guard policy is applied over all points at once,
        so a :class:`BranchError` counts every failed point. Dask collections go to
        :mod:`tapejit.dask` (lazy float32 Dask arrays out).
        """
        if ((type(x) is not _ND or type(params) not in PLAIN or extra)
                and dask_in(x, params, *(a for a, _ in extra))):
            return lazily(self, method, x, tuple(a for a, _ in extra), params,
                           check=check, **kw)
        if check not in ("raise", "mask"):
            raise ValueError(f"check must be 'raise' or 'mask'; got {check!r}")
        fn = getattr(self.tape, method)
        x = _points32(x, "x")
        params = _points32(params, "params")
        extra = tuple(_points32(a, name) for a, name in extra)
        if x.ndim <= 1:  # one point: one call
            res = fn(x.astype(np.float64), *(a.astype(np.float64) for a in extra),
                     params=None if params is None else params.astype(np.float64),
                     check="mask", **kw)
            *vals, ok = res
            if check == "raise" and not ok:
                raise BranchError(1, 1, self.tape)
            vals = [_as32(v) for v in vals]
            out = tuple(vals) if check == "raise" else (*vals, ok)
            return out[0] if len(out) == 1 else out
        if method in _DIRECT:
            return self._batch(method, x, params, extra[0] if extra else None, check)
        n = x.shape[0]
        results: list[np.ndarray] | None = None
        pattern = None  # sparse=True: the float64 tape's pattern, over all blocks
        for s in range(0, max(n, 1), _BLOCK):
            e = min(n, s + _BLOCK)
            part = fn(x[s:e].astype(np.float64), *(_f64(a, s, e, n) for a in extra),
                      params=_f64(params, s, e, n), check="mask", **kw)
            if kw.get("sparse"):  # (SparseStack, valid): its values are per point
                pattern, part = part[0].pattern, (part[0].data, part[1])
            if results is None:
                results = [np.empty((n, *np.shape(r)[1:]),
                                    dtype=_F32 if np.asarray(r).dtype.kind == "f" else bool)
                           for r in part]
            for r, p in zip(results, part, strict=True):
                r[s:e] = p
        *vals, ok = results
        if pattern is not None:
            from ._colouring import SparseStack  # imports scipy.sparse: on first use

            vals[0] = SparseStack(pattern, vals[0])
        if check == "raise":
            if not ok.all():
                raise BranchError(int(n - np.count_nonzero(ok)), n, self.tape)
            return vals[0] if len(vals) == 1 else tuple(vals)
        return (*vals, ok)

    def forward(self, x, params=None, check: str = "raise"):
        """Outputs as float32 (see :meth:`Tape.forward`)."""
        return self._run("forward", x, params, (), check)

    def value_and_grad(self, x, params=None, check: str = "raise"):
        """Value and gradient as float32 (see :meth:`Tape.value_and_grad`)."""
        return self._run("value_and_grad", x, params, (), check)

    def gradient(self, x, params=None, check: str = "raise"):
        """Gradient as float32 (see :meth:`Tape.gradient`)."""
        return self._run("gradient", x, params, (), check)

    def vjp(self, x, w, params=None, check: str = "raise"):
        """Outputs and vector-Jacobian product as float32 (see :meth:`Tape.vjp`)."""
        return self._run("vjp", x, params, ((w, "w"),), check)

    def jvp(self, x, v, params=None, check: str = "raise"):
        """Jacobian-vector product as float32 (see :meth:`Tape.jvp`)."""
        return self._run("jvp", x, params, ((v, "v"),), check)

    def jacobian(self, x, params=None, mode: str = "auto", check: str = "raise",
                 sparse: bool = False):
        """Jacobian as float32 (see :meth:`Tape.jacobian`). With ``sparse=True`` a
        float32 ``csr_array`` at one point, a :class:`~tapejit.SparseStack` of float32
        values for many; the pattern and colouring are the float64 tape's, computed once
        and kept by it."""
        return self._run("jacobian", x, params, (), check, mode=mode, sparse=sparse)

    def hvp(self, x, v, params=None, check: str = "raise"):
        """Hessian-vector product as float32 (see :meth:`Tape.hvp`)."""
        return self._run("hvp", x, params, ((v, "v"),), check)

    def hessian(self, x, params=None, check: str = "raise", sparse: bool = False):
        """Hessian as float32 (see :meth:`Tape.hessian`). With ``sparse=True`` as
        :meth:`jacobian`'s."""
        return self._run("hessian", x, params, (), check, sparse=sparse)
