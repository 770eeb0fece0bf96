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

Safety. The kernels do not bounds-check, so everything they index comes from a
validated tape: the bundle's program, reverse plan and constants are the tape's own
read-only arrays (the kernel refuses a plan whose size does not fit the program), and its
scratch buffers are sized for that tape. The wrappers check, for a few
nanoseconds, that ``x`` and ``g`` have ``n_inputs`` elements, that the bundle's
constants and parameters have the sizes its program declares and that the tape has one
output. The bundle also carries a *stamp* of the kernels it was made for: a cached
Numba function compiled against the kernels of an older op table (Numba does not track
that dependency) raises instead of running the old kernels on a new program.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba.core import errors, types
from numba.extending import overload

_F64 = np.dtype(np.float64)


class JitArgs(NamedTuple):
    """A tape's arrays for Numba code, from :meth:`Tape.jit_args <tapejit.Tape.jit_args>`.

    Pass it whole to :func:`jit_value_and_grad` or :func:`jit_value`. ``params`` may be
    overwritten in place (same size) to change the parameters; the other fields are
    read-only or scratch. The scratch buffers make a bundle single-threaded: use one per
    thread.
    """

    prog: np.ndarray  #: the packed program (read-only int32)
    plan: np.ndarray  #: its reverse plan (read-only int32, see ``_drivers.reverse_plan``)
    consts: np.ndarray  #: the constant pool (read-only float64)
    params: np.ndarray  #: ``n_params`` parameter values (float64, writeable)
    workspace: np.ndarray  #: scratch: values, adjoints and stored partials
    out: np.ndarray  #: scratch: the outputs of :func:`jit_value`
    stamp: int  #: identifies the kernels the bundle was made for


def _kernel_module():
    from ._tape import _kernels

    return _kernels()._module


def kernel_stamp() -> int:
    """An integer naming the loaded kernel module (from its source hash)."""
    return int(_kernel_module().__name__.rsplit("_", 1)[1][:15], 16)


def jit_args(tape, params=None) -> JitArgs:
    """The bundle for ``tape`` (see :meth:`Tape.jit_args <tapejit.Tape.jit_args>`)."""
    n_par = tape.n_params
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
    plan = tape._plan().view()
    plan.flags.writeable = False
    return JitArgs(
        tape._prog, plan, tape._consts, p, np.empty(tape._point_floats()),
        np.empty(max(tape.n_outputs, 1)), kernel_stamp(),
    )


def _check_bundle(args: JitArgs) -> None:
    if not isinstance(args, JitArgs):
        raise TypeError("args must be the JitArgs bundle from tape.jit_args()")
    prog = args.prog
    if args.stamp != kernel_stamp():
        raise RuntimeError(_STALE)
    if args.consts.shape != (prog[1],) or args.params.shape != (prog[4],):
        raise ValueError("a JitArgs bundle whose arrays do not match its program")
    if prog[5] != 1:
        raise ValueError(f"the tape has {prog[5]} outputs; jit_value(_and_grad) needs one")


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
        one output, or the bundle is inconsistent.
    RuntimeError
        If the calling function was compiled (and cached) against other kernels than
        the loaded ones (see the module notes).
    """
    _check_bundle(args)
    n = int(args.prog[3])
    x = _vector(x, n, "x")
    g = _vector(g, n, "g", writeable=True)
    return _kernel_module().value_grad_point(
        args.prog, args.plan, args.consts, x, args.params, g, args.workspace
    )


def jit_value(args: JitArgs, x: np.ndarray) -> float:
    """Value of a one-output tape at ``x``; NaN when ``x`` leaves a recorded branch.

    Callable inside ``@numba.njit`` code (and from Python). See
    :func:`jit_value_and_grad` for the arguments and errors.
    """
    _check_bundle(args)
    x = _vector(x, int(args.prog[3]), "x")
    module = _kernel_module()
    failed = module.forward_point(args.prog, args.consts, x, args.params, args.out,
                                  args.workspace)
    return np.nan if failed else float(args.out[0])


_STALE = (
    "this compiled function was cached against other tapejit kernels than the loaded "
    "ones (the op table changed): delete its Numba cache (__pycache__/*.nbi, *.nbc) or "
    "touch its source file"
)


def _typing_checks(args, x, g=None) -> None:
    """Compile-time checks of the argument types (a clear TypingError instead of a
    failed overload resolution)."""
    if not (isinstance(args, types.BaseNamedTuple) and args.instance_class is JitArgs):
        raise errors.TypingError("args must be the JitArgs bundle from tape.jit_args()")
    for what, t in (("x", x), ("g", g)):
        if t is None:
            continue
        if not (isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.float64):
            raise errors.TypingError(f"{what} must be a 1-D float64 array; got {t}")
    if g is not None and not g.mutable:
        raise errors.TypingError("g must be writeable")


@overload(jit_value_and_grad)
def _ol_value_and_grad(args, x, g):
    _typing_checks(args, x, g)
    kernel = _kernel_module().value_grad_point
    stamp = kernel_stamp()

    def impl(args, x, g):  # pragma: no cover (compiled)
        prog = args.prog
        if args.stamp != stamp:
            raise RuntimeError(_STALE)
        if x.shape[0] != prog[3] or g.shape[0] != prog[3]:
            raise ValueError("x and g must have n_inputs elements")
        if args.consts.shape[0] != prog[1] or args.params.shape[0] != prog[4]:
            raise ValueError("a JitArgs bundle whose arrays do not match its program")
        if prog[5] != 1:
            raise ValueError("jit_value_and_grad needs a tape with one output")
        return kernel(prog, args.plan, args.consts, x, args.params, g, args.workspace)

    return impl


@overload(jit_value)
def _ol_value(args, x):
    _typing_checks(args, x)
    kernel = _kernel_module().forward_point
    stamp = kernel_stamp()

    def impl(args, x):  # pragma: no cover (compiled)
        prog = args.prog
        if args.stamp != stamp:
            raise RuntimeError(_STALE)
        if x.shape[0] != prog[3]:
            raise ValueError("x must have n_inputs elements")
        if (args.consts.shape[0] != prog[1] or args.params.shape[0] != prog[4]
                or args.out.shape[0] < prog[5]):
            raise ValueError("a JitArgs bundle whose arrays do not match its program")
        if prog[5] != 1:
            raise ValueError("jit_value needs a tape with one output")
        if kernel(prog, args.consts, x, args.params, args.out, args.workspace):
            return np.nan
        return args.out[0]

    return impl
