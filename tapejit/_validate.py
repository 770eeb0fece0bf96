"""Validation of tape arrays: the only guard in front of kernels that do not bounds-check.

Every :class:`~tapejit.Tape` is built through :func:`check_tape_arrays`, whether it comes
from the recorder, a file, or a user's own arrays. After it passes, every slot index a
kernel can read or write is inside the workspace and every opcode is one the kernels
dispatch on.
"""

from __future__ import annotations

import numpy as np

from ._ops import BY_CODE

_MAX_SLOTS = 2**31 - 2


class TapeFormatError(ValueError):
    """Tape data (arrays or a tape file) is malformed, truncated, hostile or too new.

    The message says which array or field is wrong and what was expected.
    """


def _int_array(name: str, a: object, ndim: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TapeFormatError(f"{name} must be an integer array; got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise TapeFormatError(f"{name} must have {ndim} dimension(s); got shape {arr.shape}")
    return arr.astype(np.int64)


def check_tape_arrays(
    opcodes: object,
    args: object,
    consts: object,
    inputs: object,
    params: object,
    outputs: object,
    guards: object = None,
) -> tuple[np.ndarray, ...]:
    """Check the arrays of a tape and return them normalized (int64 / float64).

    The layout is ``[constants | parameters | inputs | results]``: ``params`` must be the
    slots ``nc ..``, ``inputs`` the slots after them, instruction ``i`` writes slot
    ``n_fixed + i`` and reads only constants, parameters, inputs and results of earlier
    instructions; unused operand columns are 0. ``guards`` (optional, ``(n_guards, 2)``)
    pairs an instruction's result slot with the outcome 0 or 1 it had when recorded.

    Raises
    ------
    TapeFormatError
        Naming the first problem found.
    """
    ops = _int_array("opcodes", opcodes, 1)
    arg = _int_array("args", args, 2)
    cst = np.asarray(consts)
    if cst.dtype != np.float64 or cst.ndim != 1:
        raise TapeFormatError(
            f"consts must be a 1-D float64 array; got dtype {cst.dtype}, shape {cst.shape}"
        )
    inp = _int_array("inputs", inputs, 1)
    par = _int_array("params", params, 1)
    out = _int_array("outputs", outputs, 1)
    n, nc, n_par, n_in = len(ops), len(cst), len(par), len(inp)
    if arg.shape != (n, 3):
        raise TapeFormatError(f"args must have shape ({n}, 3) for {n} opcodes; got {arg.shape}")
    n_fixed = nc + n_par + n_in
    n_slots = n_fixed + n
    if n_slots > _MAX_SLOTS:
        raise TapeFormatError(f"tape has {n_slots} slots; at most {_MAX_SLOTS} are supported")
    if not np.array_equal(par, nc + np.arange(n_par)):
        raise TapeFormatError(f"params must be the slots {nc}..{nc + n_par - 1}")
    if not np.array_equal(inp, nc + n_par + np.arange(n_in)):
        raise TapeFormatError(f"inputs must be the slots {nc + n_par}..{n_fixed - 1}")
    known = np.zeros(256, dtype=bool)
    known[list(BY_CODE)] = True
    bad = (ops < 0) | (ops > 255)
    bad[~bad] = ~known[ops[~bad]]
    if bad.any():
        i = int(np.argmax(bad))
        raise TapeFormatError(f"instruction {i}: unknown opcode {int(ops[i])}")
    arity = np.zeros(256, dtype=np.int64)
    for code, op in BY_CODE.items():
        arity[code] = op.arity
    ar = arity[ops]
    used = np.arange(3)[None, :] < ar[:, None]
    limit = (n_fixed + np.arange(n))[:, None]  # operands come strictly before the result
    bad_arg = used & ((arg < 0) | (arg >= limit))
    if bad_arg.any():
        i, j = (int(v) for v in np.argwhere(bad_arg)[0])
        raise TapeFormatError(
            f"instruction {i} ({BY_CODE[int(ops[i])].name}): operand {j} refers to slot "
            f"{int(arg[i, j])}, expected a slot in 0..{n_fixed + i - 1} (an earlier node)"
        )
    if (arg[~used] != 0).any():
        i = int(np.argwhere(arg[~used] != 0)[0][0])
        raise TapeFormatError("unused operand columns of args must be 0")
    if ((out < 0) | (out >= n_slots)).any():
        k = int(np.argmax((out < 0) | (out >= n_slots)))
        raise TapeFormatError(
            f"output {k} refers to slot {int(out[k])}, expected 0..{n_slots - 1}"
        )
    grd = np.zeros((0, 2), np.int64) if guards is None else _int_array("guards", guards, 2)
    if grd.shape[1:] != (2,):
        raise TapeFormatError(f"guards must have shape (n_guards, 2); got {grd.shape}")
    bad = (grd[:, 0] < n_fixed) | (grd[:, 0] >= n_slots) | ((grd[:, 1] != 0) & (grd[:, 1] != 1))
    if bad.any():
        q = int(np.argmax(bad))
        raise TapeFormatError(
            f"guard {q} = {grd[q].tolist()}: expected (result slot in {n_fixed}..{n_slots - 1}, "
            "outcome 0 or 1)"
        )
    return ops, arg, cst, inp, par, out, grd
