"""The :class:`Tape`: a recorded function as flat arrays, and its evaluation methods.

Slot layout (one float64 row per slot in a sweep's workspace)::

    [ constants | parameters | inputs | instruction results ]
      0 ... nc-1                        nd = nc + n_params is the first slot that
                                        receives adjoints

All integer data lives in one packed int32 *program* handed to the kernels in a single
argument (fewer arguments make the per-call dispatch cheaper)::

    prog[0:12]  header: n_slots, n_consts, nd, n_inputs, n_params, n_outputs, n_instr,
                offset of inputs, offset of params, offset of outputs, offset of code,
                ints per instruction (5)
    inputs, params, outputs   slot indices
    code        n_instr rows of (opcode, result slot, operand slots a, b, c)

The public views (:attr:`Tape.opcodes`, :attr:`Tape.args`, ...) are read-only slices of
that buffer. Opcodes 128-255 are reserved for block instructions (one instruction over a
range of slots), which will carry their extents in extra columns.
"""

from __future__ import annotations

import numba
import numpy as np

from ._codegen import HEADER, ROW, load_kernels
from ._ops import BY_CODE
from ._validate import check_tape_arrays

_F64 = np.dtype(np.float64)
_EMPTY2 = np.zeros((1, 0))
_EMPTY1 = np.zeros(0)
_EMPTY2.flags.writeable = _EMPTY1.flags.writeable = True

#: Points per chunk at most; a chunk's two workspaces hold ``2 * n_slots * chunk`` floats.
CHUNK_MAX = 256
#: Per-thread budget for one workspace, in float64 values.
WORKSPACE_VALUES = 1 << 16
#: Directions carried by one second-order sweep at most (bounds its workspace).
_DIR_BLOCK = 16

_K = None


def _kernels():
    global _K
    if _K is None:
        _K = load_kernels()
    return _K


def _as_points(x, n: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous, writeable float64 array of shape ``(n,)`` or ``(N, n)``."""
    if type(x) is not np.ndarray:
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{what} must be an array of real numbers: {exc}") from None
    if x.dtype != _F64:
        if x.dtype.kind not in "iuf":
            raise TypeError(
                f"{what} must hold real numbers (float or integer dtype); got dtype {x.dtype}"
            )
        x = x.astype(np.float64)
    if x.ndim == 0 and n == 1:
        x = x.reshape(1)
    if not (x.ndim == 1 and x.shape[0] == n) and not (x.ndim == 2 and x.shape[1] == n):
        raise ValueError(
            f"{what} must have shape ({n},) for one point or (n_points, {n}) for many; "
            f"got shape {x.shape}"
        )
    flags = x.flags
    if not (flags.c_contiguous and flags.writeable):
        x = np.array(x, dtype=np.float64, order="C")
    return x


def _buffer(out, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Validate a user ``out=`` buffer, or allocate one."""
    if out is None:
        return np.empty(shape)
    if not isinstance(out, np.ndarray) or out.dtype != _F64:
        raise TypeError(f"{what} must be a float64 numpy array")
    if out.shape != shape:
        raise ValueError(f"{what} must have shape {shape}; got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{what} must be C-contiguous and writeable")
    return out


class Tape:
    """A recorded function: a flat list of instructions over numbered value slots.

    Create one with :func:`tapejit.record` (or from arrays, which are validated:
    :class:`~tapejit.TapeFormatError` on anything a kernel could not run safely). A tape
    is immutable and safe to share between threads; every evaluation allocates its own
    workspace.

    Points are given as ``x`` of shape ``(n_inputs,)`` for one point or
    ``(n_points, n_inputs)`` for many. Parameters (arguments recorded as not
    differentiated) are given as ``params`` of shape ``(n_params,)`` (the same for every
    point) or ``(n_points, n_params)``.
    """

    def __init__(
        self,
        opcodes: np.ndarray,
        args: np.ndarray,
        consts: np.ndarray,
        inputs: np.ndarray,
        params: np.ndarray,
        outputs: np.ndarray,
        *,
        input_shapes: tuple[tuple[int, ...], ...] = (),
        output_shapes: tuple[tuple[int, ...], ...] = (),
        name: str = "",
    ) -> None:
        opcodes, args, consts, inputs, params, outputs = check_tape_arrays(
            opcodes, args, consts, inputs, params, outputs
        )
        n_instr = len(opcodes)
        nc, n_in, n_par, n_out = len(consts), len(inputs), len(params), len(outputs)
        n_slots = nc + n_par + n_in + n_instr
        o_in = HEADER
        o_par = o_in + n_in
        o_out = o_par + n_par
        o_code = o_out + n_out
        prog = np.empty(o_code + ROW * n_instr, dtype=np.int32)
        prog[:HEADER] = (n_slots, nc, nc + n_par, n_in, n_par, n_out, n_instr,
                         o_in, o_par, o_out, o_code, ROW)
        prog[o_in:o_par] = inputs
        prog[o_par:o_out] = params
        prog[o_out:o_code] = outputs
        code = prog[o_code:].reshape(n_instr, ROW)
        code[:, 0] = opcodes
        code[:, 1] = nc + n_par + n_in + np.arange(n_instr)
        code[:, 2:] = args
        _kernels()
        self._prog = prog
        self._consts = np.array(consts, dtype=np.float64)
        self._prog.flags.writeable = False
        self._consts.flags.writeable = False
        self._n_slots = n_slots
        self._n_in, self._n_par, self._n_out = n_in, n_par, n_out
        self._chunk = int(max(1, min(CHUNK_MAX, WORKSPACE_VALUES // max(n_slots, 1))))
        self.input_shapes = input_shapes
        self.output_shapes = output_shapes
        self.name = name
        self._ones = np.ones((1, max(n_out, 1)))
        # Single-point fast path: checks that cost tens of ns each, nothing else.
        self._shape1 = (n_in,)
        self._fast_vg = n_out == 1 and n_par == 0

    # -- structure -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of instructions."""
        return int(self._prog[6])

    @property
    def n_inputs(self) -> int:
        """Number of differentiated inputs (all recorded arguments, flattened)."""
        return self._n_in

    @property
    def n_params(self) -> int:
        """Number of non-differentiated parameters."""
        return self._n_par

    @property
    def n_outputs(self) -> int:
        """Number of outputs (all returned values, flattened)."""
        return self._n_out

    @property
    def n_slots(self) -> int:
        """Number of value slots a sweep's workspace holds per point."""
        return self._n_slots

    def _code(self) -> np.ndarray:
        o = int(self._prog[10])
        return self._prog[o:].reshape(-1, ROW)

    @property
    def opcodes(self) -> np.ndarray:
        """Opcode of each instruction (see :data:`tapejit.OPS`), read-only."""
        return self._code()[:, 0]

    @property
    def results(self) -> np.ndarray:
        """Result slot of each instruction, read-only."""
        return self._code()[:, 1]

    @property
    def args(self) -> np.ndarray:
        """Operand slots, shape ``(len(tape), 3)``; unused operands are 0. Read-only."""
        return self._code()[:, 2:]

    @property
    def consts(self) -> np.ndarray:
        """The constant pool: slot ``k < len(consts)`` holds ``consts[k]``. Read-only."""
        return self._consts

    @property
    def inputs(self) -> np.ndarray:
        """Slot of each input, read-only."""
        return self._prog[self._prog[7] : self._prog[8]]

    @property
    def params(self) -> np.ndarray:
        """Slot of each parameter, read-only."""
        return self._prog[self._prog[8] : self._prog[9]]

    @property
    def outputs(self) -> np.ndarray:
        """Slot of each output, read-only."""
        return self._prog[self._prog[9] : self._prog[10]]

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<tapejit.Tape{name}: {len(self)} instructions, {self.n_inputs} inputs, "
            f"{self.n_params} params, {self.n_outputs} outputs, {len(self._consts)} constants>"
        )

    def listing(self, limit: int | None = 50) -> str:
        """A readable instruction listing (one line per instruction).

        Parameters
        ----------
        limit : int or None
            Show at most this many instructions (``None``: all).
        """
        nc, n_par = len(self._consts), self._n_par
        n_fixed = nc + n_par + self._n_in

        def slot(s: int) -> str:
            if s < nc:
                return repr(float(self._consts[s]))
            if s < nc + n_par:
                return f"p{s - nc}"
            if s < n_fixed:
                return f"x{s - nc - n_par}"
            return f"v{s - n_fixed}"

        lines = [repr(self)]
        code = self._code()
        for row in code[: limit if limit is not None else len(code)]:
            op = BY_CODE[int(row[0])]
            operands = ", ".join(slot(int(s)) for s in row[2 : 2 + op.arity])
            lines.append(f"  {slot(int(row[1]))} = {op.name}({operands})")
        if limit is not None and len(code) > limit:
            lines.append(f"  ... {len(code) - limit} more")
        outs = ", ".join(slot(int(s)) for s in self.outputs)
        lines.append(f"  return {outs}")
        return "\n".join(lines)

    # -- argument handling ---------------------------------------------------------------
    def _params(self, params, n_points: int | None) -> np.ndarray:
        """Parameters as ``(1, n_params)`` or ``(n_points, n_params)``; 1-D for one point."""
        if params is None:
            if self._n_par:
                raise ValueError(
                    f"this tape has {self._n_par} parameters: pass params= of shape "
                    f"({self._n_par},) or (n_points, {self._n_par})"
                )
            return _EMPTY1 if n_points is None else _EMPTY2
        p = _as_points(params, self._n_par, "params")
        if n_points is None:  # one point
            if p.ndim != 1:
                raise ValueError(
                    f"params must have shape ({self._n_par},) for one point; got {p.shape}"
                )
            return p
        if p.ndim == 1:
            return p.reshape(1, -1)
        if p.shape[0] != n_points:
            raise ValueError(
                f"params has {p.shape[0]} rows but x has {n_points} points; pass one row "
                "per point or a single row for all"
            )
        return p

    def _batch(self, n: int, chunk: int | None = None) -> tuple[str, int, int]:
        """Kernel suffix (parallel or serial), thread count and chunk for ``n`` points."""
        chunk = self._chunk if chunk is None else chunk
        if n > 2 * chunk:
            return "par", numba.get_num_threads(), chunk
        return "ser", 1, max(1, min(chunk, n))

    def _scalar_output(self, what: str) -> None:
        if self._n_out != 1:
            raise ValueError(
                f"{what} needs a tape with one output; this tape has {self._n_out}. "
                "Use vjp() with output weights, or jacobian()."
            )

    # -- evaluation ----------------------------------------------------------------------
    def forward(self, x, params=None, out: np.ndarray | None = None):
        """Evaluate the outputs.

        Parameters
        ----------
        x : array_like
            Inputs, shape ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
            Parameters, shape ``(n_params,)`` or ``(n_points, n_params)``.
        out : ndarray, optional
            Buffer for the result, shape as returned (a float is returned for one point
            with one output, so ``out`` then has shape ``(1,)``).

        Returns
        -------
        float or ndarray
            ``(n_outputs,)`` or ``(n_points, n_outputs)``; the output axis is dropped when
            the tape has one output.
        """
        K = _kernels()
        x = _as_points(x, self._n_in, "x")
        if x.ndim == 1:
            p = self._params(params, None)
            y = _buffer(out, (self._n_out,), "out")
            K.forward_point(self._prog, self._consts, x, p, y)
            return float(y[0]) if self._n_out == 1 and out is None else y
        n = x.shape[0]
        p = self._params(params, n)
        shape = (n,) if self._n_out == 1 else (n, self._n_out)
        y = _buffer(out, shape, "out").reshape(n, self._n_out)
        suffix, nt, chunk = self._batch(n)
        getattr(K, f"forward_batch_{suffix}")(self._prog, self._consts, x, p, y, chunk, nt)
        return y.reshape(shape)

    def value_and_grad(self, x, params=None, out=None):
        """Value and gradient of a one-output tape.

        Parameters
        ----------
        x : array_like
            Inputs, shape ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
            Parameters, shape ``(n_params,)`` or ``(n_points, n_params)``.
        out : tuple of (ndarray or None, ndarray), optional
            ``(value_buffer, grad_buffer)``: value buffer of shape ``(n_points,)`` (or
            ``None``; for one point it is ignored, the value is returned as a float) and
            gradient buffer shaped like ``x``. An optimizer loop that passes them
            allocates nothing per call beyond the kernel's workspace.

        Returns
        -------
        value : float or ndarray
        grad : ndarray
            Shaped like ``x``.
        """
        if (
            self._fast_vg
            and params is None
            and type(x) is np.ndarray
            and x.dtype is _F64
            and x.shape == self._shape1
            and x.flags.carray
        ):
            if out is None:
                g = np.empty(self._n_in)
                return _K.value_grad_point(self._prog, self._consts, x, _EMPTY1, g), g
            if out[0] is None:
                g = out[1]
                if type(g) is np.ndarray and g.dtype is _F64 and g.shape == self._shape1 and (
                    g.flags.carray
                ):
                    return _K.value_grad_point(self._prog, self._consts, x, _EMPTY1, g), g
        self._scalar_output("value_and_grad")
        x = _as_points(x, self._n_in, "x")
        vbuf, gbuf = (None, None) if out is None else out
        if x.ndim == 1:
            g = _buffer(gbuf, (self._n_in,), "grad buffer")
            v = _kernels().value_grad_point(
                self._prog, self._consts, x, self._params(params, None), g
            )
            if vbuf is not None:
                vbuf[...] = v
            return v, g
        n = x.shape[0]
        y = _buffer(vbuf, (n,), "value buffer")
        g = _buffer(gbuf, x.shape, "grad buffer")
        self._vjp_batch(x, self._params(params, n), self._ones, y.reshape(n, 1), g)
        return y, g

    def gradient(self, x, params=None, out: np.ndarray | None = None) -> np.ndarray:
        """Gradient of a one-output tape, shaped like ``x`` (see :meth:`value_and_grad`)."""
        return self.value_and_grad(x, params, out=(None, out))[1]

    def vjp(self, x, w, params=None, out=None):
        """Vector-Jacobian product: outputs and ``w @ J`` for weights ``w`` per output.

        Parameters
        ----------
        x : array_like
            Inputs, ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        w : array_like
            Output weights, ``(n_outputs,)`` (the same for every point) or
            ``(n_points, n_outputs)``. ``w = ones`` gives the gradient of the sum of the
            outputs.
        params : array_like, optional
        out : tuple of (ndarray or None, ndarray or None), optional
            Buffers ``(outputs (n_points, n_outputs), vjp shaped like x)``.

        Returns
        -------
        outputs : ndarray
            ``(n_outputs,)`` or ``(n_points, n_outputs)``.
        vjp : ndarray
            Shaped like ``x``.
        """
        x = _as_points(x, self._n_in, "x")
        single = x.ndim == 1
        X = x.reshape(1, -1) if single else x
        n = X.shape[0]
        w = _as_points(w, self._n_out, "w")
        if w.ndim == 1:
            w = w.reshape(1, -1)
        elif single or w.shape[0] != n:
            raise ValueError(f"w must have shape ({self._n_out},) or ({n}, {self._n_out})")
        ybuf, gbuf = (None, None) if out is None else out
        y = _buffer(ybuf, (self._n_out,) if single else (n, self._n_out), "outputs buffer")
        g = _buffer(gbuf, x.shape, "vjp buffer")
        p = self._params(params, n)
        self._vjp_batch(X, p, w, y.reshape(n, self._n_out), g.reshape(n, self._n_in))
        return y, g

    def _vjp_batch(self, X, P, WT, Y, G) -> None:
        suffix, nt, chunk = self._batch(X.shape[0])
        getattr(_kernels(), f"vjp_batch_{suffix}")(
            self._prog, self._consts, X, P, WT, Y, G, chunk, nt
        )

    def _directions(self, v, n: int, single: bool, what: str) -> np.ndarray:
        """Directions ``v`` shaped like ``x`` as ``(1 or n, 1, n_inputs)``."""
        v = _as_points(v, self._n_in, what)
        if v.ndim == 1:
            return v.reshape(1, 1, -1)
        if single or v.shape[0] != n:
            raise ValueError(
                f"{what} must have shape ({self._n_in},) or ({n}, {self._n_in}); got {v.shape}"
            )
        return v.reshape(n, 1, -1)

    def _chunk_for(self, n_dirs: int) -> int:
        return int(max(1, min(CHUNK_MAX, WORKSPACE_VALUES // max(self._n_slots * n_dirs, 1))))

    def _jvp_batch(self, X, P, V, Y, TY) -> None:
        """Tangents ``TY (n, n_outputs, n_dirs)`` of directions ``V (1 or n, n_dirs, n_in)``;
        one point goes through the scalar sweep."""
        if X.shape[0] == 1 and V.shape[0] == 1:
            _kernels().jvp_point(self._prog, self._consts, X[0], P[0], V[0], Y[0], TY[0])
            return
        suffix, nt, chunk = self._batch(X.shape[0], self._chunk_for(V.shape[1] + 1))
        getattr(_kernels(), f"jvp_batch_{suffix}")(
            self._prog, self._consts, X, P, V, Y, TY, chunk, nt
        )

    def jvp(self, x, v, params=None):
        """Jacobian-vector product (forward mode, one tangent sweep).

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        v : array_like
            Tangent direction shaped like ``x`` (or ``(n_inputs,)`` for every point).
        params : array_like, optional

        Returns
        -------
        float or ndarray
            ``J v``: ``(n_outputs,)`` or ``(n_points, n_outputs)``, the output axis dropped
            when the tape has one output (as :meth:`forward`).
        """
        x = _as_points(x, self._n_in, "x")
        single = x.ndim == 1
        X = x.reshape(1, -1) if single else x
        n = X.shape[0]
        V = self._directions(v, n, single, "v")
        Y = np.empty((n, self._n_out))
        TY = np.empty((n, self._n_out, 1))
        self._jvp_batch(X, self._params(params, n), V, Y, TY)
        if single:
            return float(TY[0, 0, 0]) if self._n_out == 1 else TY[0, :, 0]
        return TY[:, 0, 0] if self._n_out == 1 else TY[:, :, 0]

    def jacobian(self, x, params=None, out: np.ndarray | None = None, mode: str = "auto"):
        """Jacobian ``d outputs / d inputs``: ``(n_outputs, n_inputs)`` per point.

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
        out : ndarray, optional
            Buffer of shape ``(n_outputs, n_inputs)`` or ``(n_points, n_outputs, n_inputs)``.
        mode : {"auto", "forward", "reverse"}
            ``"forward"``: one tangent sweep carrying all ``n_inputs`` directions;
            ``"reverse"``: one adjoint sweep per output; ``"auto"`` picks forward when
            ``n_inputs < n_outputs``.

        Returns
        -------
        ndarray
            ``(..., n_outputs, n_inputs)``.
        """
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse'; got {mode!r}")
        if mode == "auto":
            mode = "forward" if self._n_in < self._n_out else "reverse"
        x = _as_points(x, self._n_in, "x")
        single = x.ndim == 1
        X = x.reshape(1, -1) if single else x
        n = X.shape[0]
        shape = (self._n_out, self._n_in) if single else (n, self._n_out, self._n_in)
        J = _buffer(out, shape, "out")
        J3 = J.reshape(n, self._n_out, self._n_in)
        Y = np.empty((n, self._n_out))
        P = self._params(params, n)
        if mode == "forward":
            V = np.eye(self._n_in).reshape(1, self._n_in, self._n_in)
            self._jvp_batch(X, P, V, Y, J3)
            return J
        suffix, nt, chunk = self._batch(n)
        getattr(_kernels(), f"jacrev_batch_{suffix}")(
            self._prog, self._consts, X, P, Y, J3, chunk, nt
        )
        return J

    def _hvp_batch(self, X, P, V) -> np.ndarray:
        """``(n, n_dirs, n_inputs)`` Hessian-direction products, directions in blocks."""
        n, nv = X.shape[0], V.shape[1]
        HV = np.empty((n, nv, self._n_in))
        Y = np.empty((n, 1))
        G = np.empty((n, self._n_in))
        K = _kernels()
        for d0 in range(0, nv, _DIR_BLOCK):
            d1 = min(nv, d0 + _DIR_BLOCK)
            Vb = np.ascontiguousarray(V[:, d0:d1])
            HVb = HV if (d0, d1) == (0, nv) else np.empty((n, d1 - d0, self._n_in))
            if n == 1 and V.shape[0] == 1:
                K.hvp_point(self._prog, self._consts, X[0], P[0], Vb[0], G[0], HVb[0])
            else:
                suffix, nt, chunk = self._batch(n, self._chunk_for(2 * (d1 - d0) + 2))
                getattr(K, f"hvp_batch_{suffix}")(
                    self._prog, self._consts, X, P, Vb, Y, G, HVb, chunk, nt
                )
            if HVb is not HV:
                HV[:, d0:d1] = HVb
        return HV

    def hvp(self, x, v, params=None) -> np.ndarray:
        """Hessian-vector product of a one-output tape (forward-over-reverse).

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        v : array_like
            Direction shaped like ``x`` (or ``(n_inputs,)`` for every point).
        params : array_like, optional

        Returns
        -------
        ndarray
            ``H v``, shaped like ``x``.
        """
        self._scalar_output("hvp")
        x = _as_points(x, self._n_in, "x")
        single = x.ndim == 1
        X = x.reshape(1, -1) if single else x
        n = X.shape[0]
        HV = self._hvp_batch(X, self._params(params, n), self._directions(v, n, single, "v"))
        return HV[0, 0] if single else HV[:, 0]

    def hessian(self, x, params=None) -> np.ndarray:
        """Hessian of a one-output tape: ``(n_inputs, n_inputs)`` per point.

        Computed as ``n_inputs`` Hessian-vector products in vector mode, then symmetrized
        (``(H + H.T) / 2``), so the result is exactly symmetric.

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional

        Returns
        -------
        ndarray
            ``(..., n_inputs, n_inputs)``.
        """
        self._scalar_output("hessian")
        x = _as_points(x, self._n_in, "x")
        single = x.ndim == 1
        X = x.reshape(1, -1) if single else x
        n = X.shape[0]
        V = np.eye(self._n_in).reshape(1, self._n_in, self._n_in)
        H = self._hvp_batch(X, self._params(params, n), V)
        H += H.transpose(0, 2, 1)
        H *= 0.5
        return H[0] if single else H
