"""Evaluating a tape from the user's own Numba code: ``jit_value_and_grad``, ``jit_value``.

A user who writes a solver in Numba gets a tape's arrays once, in Python, with
:meth:`Tape.jit_args <tapejit.Tape.jit_args>`, and passes that bundle to
:func:`jit_value_and_grad` or :func:`jit_value` inside an ``@numba.njit`` function::

    args = tape.jit_args()

    @numba.njit(cache=True)
    def descend(args, x, steps, lr):
        g = np.empty_like(x)
        for _ in range(steps):
            v = tapejit.jit_value_and_grad(args, x, g)
            x -= lr * g
        return v

Both are plain Python functions (usable from Python too) with a Numba ``@overload``: in
compiled code they become a few integer checks and a call of the generated single-point
kernels (``value_grad_point``, ``forward_point`` of ``_drivers.py``), which Numba
compiles into the calling function.

Safety: what a bundle promises. The kernels do not bounds-check, so a bundle is
checked on every entry, from Python and in compiled code, before any kernel runs:

* Its program, reverse plan and constants are the validated tape's, unaltered: they are
  one immutable copy made by ``jit_args`` (bytes: numpy cannot make a view of them
  writeable, Numba code cannot write a read-only array), and the bundle carries an
  integrity *token* of that copy: a hash of its address, the program's length and a
  random 64-bit nonce stored after the program (which tells the copy from a later one
  at the same address). Each call recomputes it and checks that the plan and the
  constants are the arrays next to the program in that copy, of the lengths the
  program implies: a few integer operations, whatever the size of the tape. A bundle
  whose ``prog``, ``plan``, ``consts`` and ``token`` do not all come from one
  ``jit_args`` call (``_replace``, a copy, a ``JitArgs`` built by hand) is refused:
  another program could index outside the buffers, other constants would give other
  numbers.
* The other fields are the caller's to replace, and each call checks them against the
  program's header: ``params`` has ``n_params`` values, ``workspace`` at least the
  ``5 n_slots - 3 n_fixed`` floats the one-point sweeps use (``n_fixed``: the first
  result slot), ``out`` at least ``n_outputs``; the tape has one output, and ``x`` and
  ``g`` have ``n_inputs`` elements.
* Every field must have the type ``jit_args`` gives it (read-only C-contiguous
  ``prog``, ``plan`` and ``consts``; writeable C-contiguous float64 ``params``,
  ``workspace`` and ``out``; int64 ``stamp`` and ``token``), so that a user's function
  and the kernels compile once for any bundle.

A bundle that fails a check raises ``ValueError`` naming the field and what was
expected (``TypeError``, or Numba's ``TypingError`` when compiling, for a field of the
wrong type) and never runs a kernel. The token guards against mistakes, not against
code that reads a bundle's nonce and forges a token with tapejit's internals: such
code could as well write memory with ``ctypes``.

The bundle also carries a *stamp* of the kernels and of the bundle layout it was made
for: a cached Numba function compiled against the kernels of an older op table (Numba
does not track that dependency) raises instead of running the old kernels on a new
program.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

import numba
import numpy as np
from numba.core import errors, types
from numba.extending import intrinsic, overload

from ._kernels.runtime import kernels
from ._program import (
    FIRST_ADJOINT,
    HEADER,
    N_CONSTS,
    N_INPUTS,
    N_INSTR,
    N_OUTPUTS,
    N_PARAMS,
    N_SLOTS,
)

_F64 = np.dtype(np.float64)
_I32 = np.dtype(np.int32)


class JitArgs(NamedTuple):
    """A tape's arrays for Numba code, from :meth:`Tape.jit_args <tapejit.Tape.jit_args>`.

    Pass it whole to :func:`jit_value_and_grad` or :func:`jit_value`. ``params`` may be
    overwritten in place (same size) to change the parameters, or replaced, like the
    scratch buffers, by an array of the same type and size. ``prog``, ``plan``,
    ``consts`` and ``token`` belong together: a bundle in which one was replaced is
    refused (see the module notes), and so is a pickled or deep-copied bundle: make one
    with ``jit_args`` in the process that uses it. The scratch buffers make a bundle
    single-threaded: use one per thread.
    """

    prog: np.ndarray  #: the packed program, then the bundle's nonce (read-only int32)
    plan: np.ndarray  #: its reverse plan (read-only int32, see ``_drivers.reverse_plan``)
    consts: np.ndarray  #: the constant pool (read-only float64)
    params: np.ndarray  #: ``n_params`` parameter values (float64, writeable)
    workspace: np.ndarray  #: scratch: values, adjoints and stored partials
    out: np.ndarray  #: scratch: the outputs of :func:`jit_value`
    stamp: int  #: identifies the kernels and the bundle layout the bundle was made for
    token: int  #: integrity token of ``prog``, ``plan`` and ``consts``


#: The array fields: name, dtype, writeable. Exactly these types (1-D, C-contiguous,
#: aligned) are accepted, from Python and in compiled code, so a user's function and
#: the kernels compile one variant for every bundle: read-only and writeable arrays
#: are different Numba types.
_FIELDS = (
    ("prog", _I32, False),
    ("plan", _I32, False),
    ("consts", _F64, False),
    ("params", _F64, True),
    ("workspace", _F64, True),
    ("out", _F64, True),
)
#: Bumped whenever the token or the checks below change: they are compiled into users'
#: cached functions, which then raise the stale error instead of misjudging bundles.
_LAYOUT = 2


#: The kernels the compiled entry points call (jit_value_and_grad, jit_value).
_ENTRY_POINTS = ("value_grad_point", "forward_point")


def _kernel_module():
    return kernels().module


def kernel_stamp() -> int:
    """An integer naming the loaded kernel module (from its source hash)."""
    return int(_kernel_module().__name__.rsplit("_", 1)[1][:15], 16)


def _stamp() -> int:
    # kernel_stamp() has 60 bits: the layout takes the next three, below the sign bit.
    return kernel_stamp() << 3 | _LAYOUT


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_S1 = np.uint64(1)


@numba.njit(cache=True, nogil=True, inline="always")
def _token(addr, n_prog, lo, hi):
    # The program copy's address and length and its nonce (two int32), mixed by
    # MurmurHash3's finalizer; 63 bits, so that it is a non-negative int64.
    h = (np.uint64(addr) * _M1) ^ (np.uint64(n_prog) * _M2)
    h ^= np.uint64(np.uint32(lo)) | (np.uint64(np.uint32(hi)) << _S32)
    h ^= h >> _S33
    h *= _F1
    h ^= h >> _S33
    h *= _F2
    h ^= h >> _S33
    return np.int64(h >> _S1)


#: Faults of a bundle, by the code ``_bundle_fault`` returns (in compiled code, where
#: messages are constants; the Python entry points add the sizes).
_FAULTS = (
    "",
    "args.prog is not the program this bundle was made with, or args.token was "
    "changed",
    "args.plan is not the reverse plan made with args.prog",
    "args.consts is not the constant pool made with args.prog",
    "args.params does not have the n_params values of the tape",
    "args.workspace is smaller than the tape needs (5 n_slots - 3 n_fixed floats)",
    "args.out has fewer than n_outputs elements",
    "jit_value(_and_grad) needs a tape with one output",
)
_REMAKE = ": make a new bundle with tape.jit_args()"


@numba.njit(cache=True, nogil=True, inline="always")
def _bundle_fault(prog, plan, consts, n_params, n_workspace, n_out, token):
    # 0 when the bundle may be run, else the index in _FAULTS of the first fault.
    # Nothing is read from an array before its length is known to allow it, and
    # nothing from the program's header before the program is known to be genuine.
    # Addresses as int64 (they are below 2**63): uint64 mixed with int64 is float64.
    n = prog.shape[0]
    p = np.int64(prog.ctypes.data)
    if n < HEADER + 2 or _token(p, n, prog[n - 2], prog[n - 1]) != token:
        return 1
    # The plan and the constants are views of the copy the program's view keeps alive:
    # their addresses show it, and their lengths are what the genuine program says.
    ni = prog[N_INSTR]
    if (np.int64(plan.ctypes.data) != p + 4 * n or plan.shape[0] <= ni
            or plan.shape[0] != 2 * ni + 1 + 2 * plan[ni]):
        return 2
    nc = prog[N_CONSTS]
    if consts.shape[0] != nc or np.int64(consts.ctypes.data) + 8 * nc != p:
        return 3
    if n_params != prog[N_PARAMS]:
        return 4
    if n_workspace < 5 * prog[N_SLOTS] - 3 * (prog[FIRST_ADJOINT] + prog[N_INPUTS]):
        return 5
    if n_out < prog[N_OUTPUTS]:
        return 6
    if prog[N_OUTPUTS] != 1:
        return 7
    return 0


@numba.njit(cache=True, nogil=True)
def _raise_fault(fault):
    # Compiled code's messages are constants: one branch per fault.
    if fault == 1:
        raise ValueError(_FAULTS[1] + _REMAKE)
    if fault == 2:
        raise ValueError(_FAULTS[2] + _REMAKE)
    if fault == 3:
        raise ValueError(_FAULTS[3] + _REMAKE)
    if fault == 4:
        raise ValueError(_FAULTS[4])
    if fault == 5:
        raise ValueError(_FAULTS[5])
    if fault == 6:
        raise ValueError(_FAULTS[6])
    raise ValueError(_FAULTS[7])


def jit_args(prog: np.ndarray, plan: np.ndarray, consts: np.ndarray, workspace: int,
             n_outputs: int, params=None) -> JitArgs:
    """The bundle of a tape's packed program, reverse plan and constants, with scratch
    buffers of ``workspace`` and ``n_outputs`` floats (see :meth:`Tape.jit_args
    <tapejit.Tape.jit_args>`, which gathers them: this module needs no tape)."""
    n_par = int(prog[N_PARAMS])
    if params is None:
        if n_par:
            raise ValueError(
                f"this tape has {n_par} parameters: pass params= with {n_par} values"
            )
        p = np.zeros(0)
    else:
        p = np.array(params, dtype=np.float64).reshape(-1)  # a private, writeable copy
        if p.size != n_par:
            raise ValueError(f"params must have {n_par} values; got {np.shape(params)}")
    # One immutable copy (bytes: numpy cannot make a view of it writeable), laid out
    # [consts | prog | nonce | plan]: the constants first keep them 8-byte aligned (a
    # bytes object's data is 16-byte aligned), and the plan and the constants are then
    # found next to the program, whose view keeps the copy alive.
    nonce = np.frombuffer(secrets.token_bytes(8), np.int32)
    buf = np.frombuffer(
        b"".join(a.tobytes() for a in (consts, prog, nonce, plan)), np.uint8
    )
    c_end = consts.nbytes
    p_end = c_end + prog.nbytes + nonce.nbytes
    b_consts = buf[:c_end].view(np.float64)
    b_prog = buf[c_end:p_end].view(np.int32)
    b_plan = buf[p_end:].view(np.int32)
    token = int(_token(b_prog.ctypes.data, b_prog.size, b_prog[-2], b_prog[-1]))
    module = _kernel_module()
    for kernel in _ENTRY_POINTS:  # the sweeps they call, in place before Numba code runs
        module.ensure_routines_of(kernel)
    return JitArgs(
        b_prog, b_plan, b_consts, p, np.empty(workspace), np.empty(max(n_outputs, 1)),
        _stamp(), token,
    )


def _check_bundle(args: JitArgs) -> None:
    """The checks of the compiled entry points, from Python, with the sizes named."""
    if not isinstance(args, JitArgs):
        raise TypeError("args must be the JitArgs bundle from tape.jit_args()")
    if args.stamp != _stamp():
        raise RuntimeError(_STALE)
    for name, dtype, writeable in _FIELDS:
        a = getattr(args, name)
        flags = a.flags if isinstance(a, np.ndarray) else None
        if not (flags is not None and a.dtype == dtype and a.ndim == 1
                and flags.c_contiguous and flags.aligned and flags.writeable == writeable):
            raise TypeError(
                f"args.{name} must be a {'writeable' if writeable else 'read-only'} "
                f"1-D C-contiguous {dtype} array, as tape.jit_args() makes it; got "
                + _describe(a)
            )
    token = args.token
    if not (isinstance(token, (int, np.integer)) and -(2**63) <= token < 2**63):
        raise TypeError(f"args.token must be an int64, as tape.jit_args() makes it; got "
                        f"{token!r}")
    fault = _bundle_fault(args.prog, args.plan, args.consts, args.params.size,
                          args.workspace.size, args.out.size, int(token))
    if fault == 0:
        return
    if fault <= 3:  # the program is not genuine: nothing may be read from it
        raise ValueError(_FAULTS[fault] + _REMAKE)
    prog = args.prog
    detail = {
        4: f": expected {prog[N_PARAMS]}, got {args.params.shape[0]}",
        5: f": expected at least "
           f"{5 * prog[N_SLOTS] - 3 * (prog[FIRST_ADJOINT] + prog[N_INPUTS])}, "
           f"got {args.workspace.shape[0]}",
        6: f": expected at least {prog[N_OUTPUTS]}, got {args.out.shape[0]}",
        7: f"; this tape has {prog[N_OUTPUTS]}",
    }
    raise ValueError(_FAULTS[fault] + detail[fault])


def _describe(a) -> str:
    if not isinstance(a, np.ndarray):
        return type(a).__name__
    return (f"a {'writeable' if a.flags.writeable else 'read-only'} {a.ndim}-D "
            f"{'' if a.flags.c_contiguous else 'non-contiguous '}{a.dtype} array")


def _vector(v, n: int, what: str, writeable: bool = False) -> np.ndarray:
    if not (isinstance(v, np.ndarray) and v.dtype == _F64 and v.shape == (n,)
            and v.flags.c_contiguous and (v.flags.writeable or not writeable)):
        raise ValueError(
            f"{what} must be a C-contiguous float64 array of shape ({n},) (n_inputs)"
            + (", writeable" if writeable else "")
        )
    return v


def jit_value_and_grad(args: JitArgs, x: np.ndarray, g: np.ndarray) -> float:
    """Value of a one-output tape at ``x``; writes the gradient into ``g``.

    Callable inside ``@numba.njit`` code (and from Python). Allocates nothing.

    Parameters
    ----------
    args : JitArgs
        The bundle from :meth:`Tape.jit_args <tapejit.Tape.jit_args>`.
    x : ndarray
        Inputs: float64, shape ``(n_inputs,)``.
    g : ndarray
        Gradient output: float64, shape ``(n_inputs,)``, writeable.

    Returns
    -------
    float
        The value; NaN (and a NaN gradient) when ``x`` leaves a branch recorded in the
        tape (a guard fails), since compiled code cannot fall back to re-recording.

    Raises
    ------
    ValueError
        If ``x`` or ``g`` does not have ``n_inputs`` elements, the tape has more than
        one output, or the bundle was altered or its buffers do not fit its program
        (the message names the field).
    TypeError
        If ``args`` is not a ``JitArgs`` or one of its fields does not have the type
        ``jit_args`` gives it (in compiled code: Numba's ``TypingError``).
    RuntimeError
        If the calling function was compiled (and cached) against other kernels than
        the loaded ones (see the module notes).
    """
    _check_bundle(args)
    n = int(args.prog[N_INPUTS])
    x = _vector(x, n, "x")
    g = _vector(g, n, "g", writeable=True)
    return _kernel_module().value_grad_point(
        _kernel_typed(args.prog), _kernel_typed(args.plan), _kernel_typed(args.consts), x,
        args.params, g, args.workspace
    )


def jit_value(args: JitArgs, x: np.ndarray) -> float:
    """Value of a one-output tape at ``x``; NaN when ``x`` leaves a recorded branch.

    Callable inside ``@numba.njit`` code (and from Python). See
    :func:`jit_value_and_grad` for the arguments and errors.
    """
    _check_bundle(args)
    x = _vector(x, int(args.prog[N_INPUTS]), "x")
    module = _kernel_module()
    failed = module.forward_point(_kernel_typed(args.prog), _kernel_typed(args.consts), x,
                                  args.params, args.out, args.workspace)
    return np.nan if failed else float(args.out[0])


_STALE = (
    "this compiled function was cached against other tapejit kernels than the loaded "
    "ones (the op table or the bundle layout changed): delete its Numba cache "
    "(__pycache__/*.nbi, *.nbc) or touch its source file"
)


def _typing_checks(args, x, g=None) -> None:
    """Compile-time checks of the argument types (a clear TypingError instead of a
    failed overload resolution, or a second variant of the kernels)."""
    if not (isinstance(args, types.BaseNamedTuple) and args.instance_class is JitArgs):
        raise errors.TypingError("args must be the JitArgs bundle from tape.jit_args()")
    fields = dict(zip(JitArgs._fields, args.types, strict=True))
    for name, dtype, writeable in _FIELDS:
        want = types.Array(numba.from_dtype(dtype), 1, "C", readonly=not writeable)
        if fields[name] != want:
            raise errors.TypingError(
                f"args.{name} must be {want}, as tape.jit_args() makes it; "
                f"got {fields[name]}"
            )
    for name in ("stamp", "token"):
        if fields[name] != types.int64:
            raise errors.TypingError(f"args.{name} must be an int64; got {fields[name]}")
    for what, t in (("x", x), ("g", g)):
        if t is None:
            continue
        if not (isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.float64):
            raise errors.TypingError(f"{what} must be a 1-D float64 array; got {t}")
    if g is not None and not g.mutable:
        raise errors.TypingError("g must be writeable")


def _kernel_typed(a: np.ndarray) -> np.ndarray:
    """A read-only array of the bundle as a writable alias of the same memory, no copy: the
    Python twin of :func:`_as_kernel_typed` (the kernels only read it)."""
    if not a.size:
        return np.empty(0, a.dtype)
    memory = (np.ctypeslib.as_ctypes_type(a.dtype) * a.size).from_address(a.ctypes.data)
    return np.frombuffer(memory, dtype=a.dtype)


@intrinsic
def _as_kernel_typed(typingctx, a):
    # The bundle's read-only program, plan or constants typed as the tapes pass them to the
    # kernels (writable; the kernels only read them): a user's function then calls the
    # kernel the cache already holds, instead of compiling a read-only variant of it.
    if not isinstance(a, types.Array):
        return None
    typed = a.copy(readonly=False)

    def codegen(context, builder, sig, args):
        context.nrt.incref(builder, sig.args[0], args[0])  # the same array: a new reference
        return args[0]

    return typed(a), codegen


# Inlined into the caller (Numba IR): a call per entry costs a few percent of a small
# tape's call (asv_bench/measure_bundle_check.py).
@overload(jit_value_and_grad, inline="always")
def _ol_value_and_grad(args, x, g):
    _typing_checks(args, x, g)
    kernel = _kernel_module().value_grad_point
    stamp = _stamp()

    def impl(args, x, g):  # pragma: no cover (compiled)
        if args.stamp != stamp:
            raise RuntimeError(_STALE)
        prog, plan, consts, params, ws = (args.prog, args.plan, args.consts, args.params,
                                          args.workspace)
        fault = _bundle_fault(prog, plan, consts, params.shape[0], ws.shape[0],
                              args.out.shape[0], args.token)
        if fault != 0:
            _raise_fault(fault)
        if x.shape[0] != prog[N_INPUTS] or g.shape[0] != prog[N_INPUTS]:
            raise ValueError("x and g must have n_inputs elements")
        return kernel(_as_kernel_typed(prog), _as_kernel_typed(plan),
                      _as_kernel_typed(consts), x, params, g, ws)

    return impl


@overload(jit_value, inline="always")
def _ol_value(args, x):
    _typing_checks(args, x)
    kernel = _kernel_module().forward_point
    stamp = _stamp()

    def impl(args, x):  # pragma: no cover (compiled)
        if args.stamp != stamp:
            raise RuntimeError(_STALE)
        prog, consts, params, out = args.prog, args.consts, args.params, args.out
        fault = _bundle_fault(prog, args.plan, consts, params.shape[0],
                              args.workspace.shape[0], out.shape[0], args.token)
        if fault != 0:
            _raise_fault(fault)
        if x.shape[0] != prog[N_INPUTS]:
            raise ValueError("x must have n_inputs elements")
        if kernel(_as_kernel_typed(prog), _as_kernel_typed(consts), x, params, out,
                  args.workspace):
            return np.nan
        return out[0]

    return impl
