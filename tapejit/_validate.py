"""Validation of tape arrays: the only guard in front of kernels that do not bounds-check.

Every :class:`~tapejit.Tape` is built through :func:`check_tape_arrays`, whether it comes
from the recorder, a file, or a user's own arrays. After it passes, every slot index a
kernel can read or write is inside the workspace and every opcode is one the kernels
dispatch on.
"""

from __future__ import annotations

import numpy as np

from ._ops import BY_CODE
from ._program import (
    FAMILIES,
    FIRST_FAMILY,
    GUARD,
    GUARD_OUTCOME,
    GUARD_SLOT,
    LAST_OPCODE,
    MAX_ARITY,
    MAX_NESTING,
    N_INSTR,
    OPCODE,
    Program,
    Subprogram,
    arities,
    code_of,
    unknown_family,
)

_MAX_SLOTS = 2**31 - 2
#: Opcodes of the op table.
_ELEMENTWISE = np.zeros(LAST_OPCODE + 1, dtype=bool)
_ELEMENTWISE[list(BY_CODE)] = True
def _runnable() -> np.ndarray:
    """Opcodes the kernels dispatch on: the op table's and the registered families'."""
    out = _ELEMENTWISE.copy()
    out[[code for code, f in FAMILIES.items() if f.kernel]] = True
    return out


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
    sizes: object = None,
    strides: object = None,
    *,
    attrs: object = None,
    attr_at: object = None,
    subprograms: tuple[Subprogram, ...] = (),
    depth: int = 0,
) -> Program:
    """Check the arrays of a tape and return them as a :class:`~tapejit._program.Program`
    (``int64`` / ``float64`` arrays).

    The layout is ``[constants | parameters | inputs | results]``: ``params`` must be the
    slots ``nc ..``, ``inputs`` the slots after them. Instruction ``i`` applies its op to
    ``sizes[i]`` elements (1 for a scalar instruction, more for a block): element ``e``
    reads operand slots ``args[i, j] + e * strides[i, j]`` and writes the next free
    result slot, so results are consecutive from ``n_fixed``. Every operand slot must
    come strictly before the instruction's first result (an earlier node); unused
    operand columns (beyond the op's arity) are 0 with stride 0. ``guards``
    (``(n_guards, 2)``) pair a result slot with the outcome 0 or 1 it had when recorded;
    a repeated guard is dropped (the first of each is kept, in order).

    Instruction families (opcodes in ``_program.FAMILIES``) read ``len(family.attrs)``
    ints of ``attrs`` from their ``attr_at`` offset; elementwise instructions have
    ``attr_at`` 0, and every attribute is read by some family instruction.
    ``subprograms`` (:class:`~tapejit._program.Subprogram`) are checked the same way,
    recursively (at most ``MAX_NESTING`` deep, ``depth`` being this program's level);
    their constants must be the range of ``consts`` their entry names, and each must be
    named by some family instruction's ``bodies`` attribute.

    Returns
    -------
    Program
        The arrays normalized; the checked program.

    Raises
    ------
    TapeFormatError
        Naming the first problem found.
    """
    ops = _int_array("opcodes", opcodes, 1)
    n = len(ops)
    arg = _int_array("args", args, 2)
    size = np.ones(n, np.int64) if sizes is None else _int_array("sizes", sizes, 1)
    stride = (np.zeros((n, MAX_ARITY), np.int64) if strides is None
              else _int_array("strides", strides, 2))
    cst = np.asarray(consts)
    if cst.dtype != np.float64 or cst.ndim != 1:
        raise TapeFormatError(
            f"consts must be a 1-D float64 array; got dtype {cst.dtype}, shape {cst.shape}"
        )
    inp = _int_array("inputs", inputs, 1)
    par = _int_array("params", params, 1)
    out = _int_array("outputs", outputs, 1)
    nc, n_par, n_in = len(cst), len(par), len(inp)
    for name, a, shape in (("args", arg, (n, MAX_ARITY)), ("sizes", size, (n,)),
                           ("strides", stride, (n, MAX_ARITY))):
        if a.shape != shape:
            raise TapeFormatError(f"{name} must have shape {shape} for {n} opcodes; got {a.shape}")
    if (size < 1).any() or (size > _MAX_SLOTS).any():
        i = int(np.argmax((size < 1) | (size > _MAX_SLOTS)))
        raise TapeFormatError(f"instruction {i}: size {int(size[i])}, expected 1..{_MAX_SLOTS}")
    n_fixed = nc + n_par + n_in
    n_slots = n_fixed + int(size.sum())
    if n_slots > _MAX_SLOTS:
        raise TapeFormatError(f"tape has {n_slots} slots; at most {_MAX_SLOTS} are supported")
    if not np.array_equal(par, nc + np.arange(n_par)):
        raise TapeFormatError(f"params must be the slots {nc}..{nc + n_par - 1}")
    if not np.array_equal(inp, nc + n_par + np.arange(n_in)):
        raise TapeFormatError(f"inputs must be the slots {nc + n_par}..{n_fixed - 1}")
    bad = (ops < 0) | (ops > LAST_OPCODE)
    bad[~bad] = ~_ELEMENTWISE[ops[~bad]]
    if FAMILIES and bad.any():
        bad &= ~np.isin(ops, list(FAMILIES))
    if bad.any():
        i = int(np.argmax(bad))
        op = int(ops[i])
        raise TapeFormatError(f"instruction {i}: " + (
            unknown_family(op) if FIRST_FAMILY <= op <= LAST_OPCODE else f"unknown opcode {op}"
        ))
    used = np.arange(MAX_ARITY)[None, :] < arities(ops)[:, None]
    res = n_fixed + np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64) if n else (
        np.zeros(0, np.int64)
    )
    family = (ops >= FIRST_FAMILY)[:, None]
    if (family & used & (stride < 0)).any():
        i = int(np.argmax((family & used & (stride < 0)).any(axis=1)))
        raise TapeFormatError(f"instruction {i} ({_name(int(ops[i]))}): a family "
                              "operand's length (its stride field) must be >= 0")
    last = arg + (size[:, None] - 1) * stride  # slot of the last element
    lo, hi = np.minimum(arg, last), np.maximum(arg, last)
    # a family operand is the block ARG .. ARG + length - 1 (an empty one reads nothing)
    lo = np.where(family, arg, lo)
    hi = np.where(family, np.where(stride > 0, arg + stride - 1, arg), hi)
    bad_arg = used & ((lo < 0) | (hi >= res[:, None]))
    if bad_arg.any():
        i, j = (int(v) for v in np.argwhere(bad_arg)[0])
        raise TapeFormatError(
            f"instruction {i} ({_name(int(ops[i]))}): operand {j} reads slots "
            f"{int(lo[i, j])}..{int(hi[i, j])}, expected slots in 0..{int(res[i]) - 1} "
            "(earlier nodes)"
        )
    if (arg[~used] != 0).any() or (stride[~used] != 0).any():
        raise TapeFormatError("unused operand columns of args and strides must be 0")
    if ((out < 0) | (out >= n_slots)).any():
        k = int(np.argmax((out < 0) | (out >= n_slots)))
        raise TapeFormatError(
            f"output {k} refers to slot {int(out[k])}, expected 0..{n_slots - 1}"
        )
    grd = np.zeros((0, GUARD), np.int64) if guards is None else _int_array("guards", guards, 2)
    if grd.shape[1:] != (GUARD,):
        raise TapeFormatError(f"guards must have shape (n_guards, {GUARD}); got {grd.shape}")
    slot, outcome = grd[:, GUARD_SLOT], grd[:, GUARD_OUTCOME]
    bad = (slot < n_fixed) | (slot >= n_slots) | ((outcome != 0) & (outcome != 1))
    if bad.any():
        q = int(np.argmax(bad))
        raise TapeFormatError(
            f"guard {q} = {grd[q].tolist()}: expected (result slot in {n_fixed}..{n_slots - 1}, "
            "outcome 0 or 1)"
        )
    if len(grd) > 1:  # a repeated guard checks nothing new (passes can merge comparisons)
        _, first = np.unique(grd, axis=0, return_index=True)
        if len(first) < len(grd):
            grd = grd[np.sort(first)]
    att, at = _check_attrs(ops, attrs, attr_at, size, stride)
    subs = _check_subprograms(ops, att, at, cst, subprograms, depth)
    return Program(opcodes=ops, args=arg, sizes=size, strides=stride, consts=cst,
                   n_params=n_par, n_inputs=n_in, outputs=out, guards=grd, attrs=att,
                   attr_at=at, subprograms=subs)


def _name(opcode: int) -> str:
    return BY_CODE[opcode].name if opcode in BY_CODE else FAMILIES[opcode].name


def _family_attrs(ops: np.ndarray, at: np.ndarray):
    """Per family present: its instructions and their ``(m, len(attrs))`` attribute
    index ranges (not yet checked to be inside ``attrs``)."""
    for code, family in FAMILIES.items():
        (which,) = np.nonzero(ops == code)
        if which.size:
            yield family, which, at[which][:, None] + np.arange(len(family.attrs))


def _check_attrs(ops: np.ndarray, attrs: object, attr_at: object, size: np.ndarray,
                 stride: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The attribute section and offsets, checked against the instructions."""
    n = len(ops)
    att = np.zeros(0, np.int64) if attrs is None else _int_array("attrs", attrs, 1)
    at = np.zeros(n, np.int64) if attr_at is None else _int_array("attr_at", attr_at, 1)
    if at.shape != (n,):
        raise TapeFormatError(f"attr_at must have shape ({n},) for {n} opcodes; "
                              f"got {at.shape}")
    if ((att < -(2**31)) | (att >= 2**31)).any():
        raise TapeFormatError("attributes must fit int32")
    bad = (ops < FIRST_FAMILY) & (at != 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise TapeFormatError(f"instruction {i} ({_name(int(ops[i]))}) is elementwise: "
                              f"its attribute offset must be 0, got {int(at[i])}")
    read = np.zeros(len(att), bool)
    for family, which, idx in _family_attrs(ops, at):
        outside = (idx < 0) | (idx >= len(att))
        if outside.any():
            i = int(which[np.argmax(outside.any(axis=1))])
            raise TapeFormatError(
                f"instruction {i} ({family.name}): its {len(family.attrs)} attributes at "
                f"{int(at[i])} are outside the {len(att)} of the attribute section")
        read[idx.ravel()] = True
        if family.check is not None:
            invalid = np.asarray(family.check(att[idx]), dtype=bool)
            if invalid.any():
                i = int(which[np.argmax(invalid)])
                values = dict(zip(family.attrs, att[idx[np.argmax(invalid)]].tolist(),
                                  strict=True))
                raise TapeFormatError(f"instruction {i} ({family.name}): invalid "
                                      f"attributes {values}")
        if family.sizes is None:
            continue
        want = np.asarray(family.sizes(att[idx]), dtype=np.int64).reshape(len(which), -1)
        have = np.concatenate([size[which, None], stride[which, : family.arity]], axis=1)
        wrong = (want != have).any(axis=1)
        if wrong.any():
            j = int(np.argmax(wrong))
            raise TapeFormatError(
                f"instruction {int(which[j])} ({family.name}): its result and operand "
                f"sizes are {have[j].tolist()}; its attributes "
                f"{dict(zip(family.attrs, att[idx[j]].tolist(), strict=True))} "
                f"need {want[j].tolist()}")
    if not read.all():
        k = int(np.argmax(~read))
        raise TapeFormatError(f"attribute {k} is read by no instruction")
    return att, at


def _check_subprograms(ops: np.ndarray, att: np.ndarray, at: np.ndarray, cst: np.ndarray,
                       subprograms: tuple[Subprogram, ...], depth: int,
                       ) -> tuple[Subprogram, ...]:
    """The sub-programs, each checked (recursively) and named by some instruction."""
    subs = tuple(subprograms)
    if subs and depth >= MAX_NESTING:
        raise TapeFormatError(f"sub-programs nest more than {MAX_NESTING} deep")
    named = np.zeros(len(subs), bool)
    for family, which, idx in _family_attrs(ops, at):
        for body in family.bodies:
            j = att[idx[:, family.attrs.index(body)]]
            outside = (j < 0) | (j >= len(subs))
            if outside.any():
                i = int(which[np.argmax(outside)])
                raise TapeFormatError(
                    f"instruction {i} ({family.name}): its {body} names sub-program "
                    f"{int(j[np.argmax(outside)])}; the program has {len(subs)}")
            named[j] = True
    if not named.all():
        raise TapeFormatError(f"sub-program {int(np.argmax(~named))} is run by no "
                              "instruction")
    out = []
    for j, sub in enumerate(subs):
        if not isinstance(sub, Subprogram) or not isinstance(sub.program, Program):
            raise TapeFormatError(f"sub-program {j} must be a Subprogram(program, "
                                  "consts_at)")
        c, p = int(sub.consts_at), sub.program
        nc = len(p.consts)
        if c < 0 or c + nc > len(cst):
            raise TapeFormatError(f"sub-program {j}: its constants {c}..{c + nc - 1} are "
                                  f"outside the pool of {len(cst)}")
        mine = cst[c : c + nc]
        if not np.array_equal(np.asarray(p.consts, np.float64).view(np.int64),
                              mine.view(np.int64)):
            raise TapeFormatError(f"sub-program {j}: its constants are not those at "
                                  f"{c} of the enclosing pool")
        try:
            checked = check_tape_arrays(
                p.opcodes, p.args, mine, p.inputs, p.params, p.outputs, p.guards, p.sizes,
                p.strides, attrs=p.attrs, attr_at=p.attr_at, subprograms=p.subprograms,
                depth=depth + 1)
        except TapeFormatError as exc:
            raise TapeFormatError(f"sub-program {j}: {exc}") from None
        out.append(Subprogram(checked, c))
    for family, which, idx in _family_attrs(ops, at):
        if family.body_check is None:
            continue
        for body in family.bodies:
            for i, row in zip(which.tolist(), att[idx].tolist(), strict=True):
                why = family.body_check(tuple(row), out[row[family.attrs.index(body)]]
                                        .program)
                if why:
                    raise TapeFormatError(f"instruction {i} ({family.name}): {why}")
    return tuple(out)


def check_runnable(prog: np.ndarray) -> None:
    """Check that the kernels dispatch on every opcode of a valid packed program.

    Validation accepts the instruction families of ``_program.FAMILIES``, and the
    kernels dispatch every one of them; this keeps any other opcode from a program
    handed to the kernels.

    Raises
    ------
    TapeFormatError
        Naming the first instruction no kernel runs.
    """
    if not int(prog[N_INSTR]):
        return
    ops = code_of(prog)[:, OPCODE]
    bad = ~_runnable()[ops]
    if bad.any():
        i = int(np.argmax(bad))
        op = int(ops[i])
        raise TapeFormatError(f"instruction {i}: no kernel of this tapejit version runs "
                              f"instruction family {_name(op)} (opcode {op})")
