"""The program: the one representation of a tape's instructions that the recorder, the
passes, slot reuse, the display, validation, the loaders and the kernels share.

It has two forms:

* :class:`Program`, named numpy arrays (``opcodes``, ``args``, ``sizes``, ...) that the
  Python modules build and transform: the tape builder finalizes into one, the passes map
  one to another, the display reads one;
* the *packed* program, one ``int32`` array handed to the kernels in a single argument
  (fewer arguments make the per-call dispatch cheaper), which a :class:`~tapejit.Tape`
  holds, pickles and shares. :meth:`Program.pack` writes it; :meth:`Program.unpack`
  reads one back and validates everything about it.

Every module names the packed program's fields through the constants here; the code
generator writes the same constants into the generated kernel module, so the kernel
sources read ``prog[N_INSTR]`` as the Python modules do. No module indexes a program by
a bare number.

Layout of a packed ``int32`` program (format version 3)::

    header       HEADER fields, named below (counts, then section offsets)
    inputs       N_INPUTS slot indices                    at AT_INPUTS
    params       N_PARAMS slot indices                    at AT_PARAMS
    outputs      N_OUTPUTS slot indices                   at AT_OUTPUTS
    code         N_INSTR rows of ROW ints                 at AT_CODE
    guards       N_GUARDS rows of GUARD ints              at AT_GUARDS
    resident     N_RESIDENT runs of RUN ints              at AT_RESIDENT
    attrs        N_ATTRS ints                             at AT_ATTRS
    subprograms  N_SUBPROGRAMS rows of SUBPROGRAM ints    at AT_SUBPROGRAMS
    nested programs, one per sub-program entry, in table order, to the array's end

Every section directly follows the one before, so the header describes the array
exactly (:func:`check_layout`).

Slots are numbered ``[constants | parameters | inputs | instruction results]``;
``FIRST_ADJOINT`` (``nd``) is the first slot that receives adjoints. The constants'
values travel next to the program as a ``float64`` array.

The *resident runs* ``(RUN_START, RUN_STOP)`` are the ranges of constant and parameter
slots the drivers copy into a workspace: the ones elementwise instructions, outputs or
guards read. Constants and parameters that only family instructions read (a data matrix)
are read in place from the constant pool or the parameter vector, never copied per call.
They are derived from the rest (:func:`resident_runs`), written by :meth:`Program.pack`
and checked by :meth:`Program.unpack`.

An instruction row is ``(OPCODE, RESULT, ARG_A, ARG_B, ARG_C, SIZE, STRIDE_A, STRIDE_B,
STRIDE_C, ATTR)``: it applies its op to ``SIZE`` elements (1: scalar; more: a block),
element ``e`` reading slot ``ARG_k + e * STRIDE_k`` of each operand ``k`` and writing
``RESULT + e``. Results are consecutive in instruction order from the first result slot,
and every operand slot comes before its instruction's first result. ``ATTR`` is 0 for an
elementwise instruction; for a family instruction it is the offset in the attribute
section of its first attribute. A family instruction writes ``SIZE`` result slots and
reads each operand ``k`` as one contiguous block: ``STRIDE_k`` holds its *length* (slots
``ARG_k .. ARG_k + STRIDE_k - 1``; 0 for an empty operand).

A *guard* row ``(GUARD_SLOT, GUARD_OUTCOME)`` records a Python branch taken on a traced
value while recording: the comparison's result slot and the outcome seen (0 or 1).

The *attribute section* holds the integer attributes of family instructions (shapes,
axes, the index of a sub-program, ...): a family instruction reads ``len(family.attrs)``
ints from ``attrs[ATTR:]``; every attribute is read by some instruction.

A *sub-program table* entry ``(SUB_AT, SUB_LEN, SUB_CONSTS)`` locates a nested program:
``prog[SUB_AT : SUB_AT + SUB_LEN]`` is a complete packed program (its own header, with
offsets relative to its own start, and its own sub-programs, at most
:data:`MAX_NESTING` levels deep), and its constants are
``consts[SUB_CONSTS : SUB_CONSTS + its N_CONSTS]`` of the enclosing pool, so one program
still travels as one ``int32`` and one ``float64`` array. A sub-program is the body a
family instruction runs (a loop's), named by one of its attributes
(``Family.bodies``); every sub-program is named by some instruction. Nested programs
have their own slot numbering and workspace.

Format version 1 (pickles and shared tapes made before) had a header of 14 fields (no
attribute or sub-program fields) and rows of 9 ints (no ``ATTR``), the other fields at
the same positions; it is recognized by ``prog[AT_INPUTS] == 14`` and
``prog[ROW_INTS] == 9`` (:func:`is_version_1`) and converted on loading by
:meth:`Program.unpack_v1` and :meth:`Program.pack` (:func:`upgrade`). Format version 2
had a header of 18 fields and no resident runs (``prog[AT_INPUTS] == 18``); it is
converted the same way (:meth:`Program.unpack_v2`).

Opcodes and instruction families
--------------------------------
Opcodes ``1 .. FIRST_FAMILY - 1`` are the elementwise ops of the op table
(``tapejit._ops.OPS``): one scalar formula applied element by element, with its partials.
Opcodes ``FIRST_FAMILY .. LAST_OPCODE`` are reserved for *instruction families*:
instructions that call a routine over whole operand blocks (a contraction, a solve, a
reduction, a loop), each with its own forward, reverse, tangent and second-order rules
(:class:`Family`, registered in :data:`FAMILIES`). No family exists yet: validation
refuses every opcode from ``FIRST_FAMILY`` on that is not registered ("instruction family
N is not known to this tapejit version"), and a :class:`~tapejit.Tape` refuses every
family instruction until the kernels dispatch it (``_validate.check_runnable``).

Adding a family: register it in :data:`FAMILIES` (its arity, attribute names, a check of
their values, the attributes naming sub-programs); give the kernels (``tapejit/_kernels``)
one routine per sweep (:data:`SWEEPS`) and a dispatch for opcodes from ``FIRST_FAMILY``
on, passing the program, ``ATTR`` and the workspace (every row read already uses
``ROW``); let ``_validate.check_runnable`` accept it; the reverse plan treats its
operands as accumulating reads (no plan bits); the passes treat it as opaque (CSE keying
on its attribute values) and slot reuse keeps its operand blocks whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._ops import BY_CODE

# -- header fields ---------------------------------------------------------------------
N_SLOTS = 0  #: value slots of a workspace
N_CONSTS = 1  #: constants: slots 0 .. N_CONSTS - 1
FIRST_ADJOINT = 2  #: ``nd``: first slot with an adjoint (constants and parameters have none)
N_INPUTS = 3
N_PARAMS = 4
N_OUTPUTS = 5
N_INSTR = 6
AT_INPUTS = 7  #: offset of the input slots
AT_PARAMS = 8  #: offset of the parameter slots
AT_OUTPUTS = 9  #: offset of the output slots
AT_CODE = 10  #: offset of the first instruction row
ROW_INTS = 11  #: ints per instruction row (== ROW, checked when a program is adopted)
N_GUARDS = 12
AT_GUARDS = 13  #: offset of the first guard row
N_ATTRS = 14  #: integer attributes of family instructions
AT_ATTRS = 15  #: offset of the attribute section
N_SUBPROGRAMS = 16  #: entries of the sub-program table
AT_SUBPROGRAMS = 17  #: offset of the sub-program table
N_RESIDENT = 18  #: runs of constant and parameter slots copied into a workspace
AT_RESIDENT = 19  #: offset of the resident runs
#: Number of header fields.
HEADER = 20

# -- instruction row fields --------------------------------------------------------------
OPCODE = 0
RESULT = 1  #: first result slot
ARG_A = 2  #: first slot of operand a; operand k's is ``ARG_A + k``
ARG_B = 3
ARG_C = 4
SIZE = 5  #: elements
STRIDE_A = 6  #: slot stride of operand a; operand k's is ``STRIDE_A + k``
STRIDE_B = 7
STRIDE_C = 8
#: Offset in the attribute section of a family instruction's first attribute (0 for an
#: elementwise instruction).
ATTR = 9
#: Ints per instruction row.
ROW = 10
#: Operands per instruction at most.
MAX_ARITY = 3

# -- guard row fields ----------------------------------------------------------------------
GUARD_SLOT = 0  #: slot of a comparison's result
GUARD_OUTCOME = 1  #: its value (0 or 1) when the tape was recorded
#: Ints per guard row.
GUARD = 2

# -- resident run fields -----------------------------------------------------------------
RUN_START = 0  #: first slot of a run of resident constant or parameter slots
RUN_STOP = 1  #: the slot after its last
#: Ints per resident run.
RUN = 2

# -- sub-program table entry fields ---------------------------------------------------------
SUB_AT = 0  #: offset in this same array of the nested program's header
SUB_LEN = 1  #: its length in ints
SUB_CONSTS = 2  #: offset of its constants in the enclosing program's constant pool
#: Ints per sub-program table entry.
SUBPROGRAM = 3

# -- reverse plan (``reverse_plan`` of the kernel drivers) --------------------------------
#: Bit ``PLAN_ASSIGN + k`` of an instruction's plan entry: operand ``k`` assigns its
#: adjoints (their first write) instead of adding to them.
PLAN_ASSIGN = 0
#: Bit ``PLAN_FORWARD + k``: operand ``k`` is forwarded (reads the result's adjoints).
PLAN_FORWARD = 3

# -- opcodes --------------------------------------------------------------------------------
#: First opcode of an instruction family; the elementwise ops of the op table are below.
FIRST_FAMILY = 128
#: Largest opcode (opcodes are kept below 256: tables indexed by opcode stay small).
LAST_OPCODE = 255

#: The names above that the kernel sources use, written into the generated module.
KERNEL_CONSTANTS: tuple[str, ...] = (
    "N_SLOTS", "N_CONSTS", "FIRST_ADJOINT", "N_INPUTS", "N_PARAMS", "N_OUTPUTS", "N_INSTR",
    "AT_INPUTS", "AT_PARAMS", "AT_OUTPUTS", "AT_CODE", "ROW_INTS", "N_GUARDS", "AT_GUARDS",
    "N_ATTRS", "AT_ATTRS", "N_SUBPROGRAMS", "AT_SUBPROGRAMS", "N_RESIDENT", "AT_RESIDENT",
    "RUN_START", "RUN_STOP", "RUN", "HEADER", "OPCODE", "RESULT",
    "ARG_A", "ARG_B", "ARG_C", "SIZE", "STRIDE_A", "STRIDE_B", "STRIDE_C", "ATTR", "ROW",
    "MAX_ARITY", "GUARD_SLOT", "GUARD_OUTCOME", "GUARD", "SUB_AT", "SUB_LEN", "SUB_CONSTS",
    "SUBPROGRAM", "PLAN_ASSIGN", "PLAN_FORWARD", "FIRST_FAMILY", "LAST_OPCODE",
)


def constants_source() -> str:
    """The kernel constants as Python assignments, for the generated module."""
    g = globals()
    return "\n".join(f"{name} = {g[name]!r}" for name in KERNEL_CONSTANTS) + "\n"


#: Operands of each opcode (index: opcode; 0 for opcodes no op has).
ARITY = np.zeros(LAST_OPCODE + 1, dtype=np.int64)
for _code, _op in BY_CODE.items():
    if not 0 < _code < FIRST_FAMILY:  # pragma: no cover - a table error, found at import
        raise ValueError(f"op {_op.name}: opcode {_code} is outside 1..{FIRST_FAMILY - 1}")
    ARITY[_code] = _op.arity
ARITY.flags.writeable = False


# ---------------------------------------------------------------------------------------
# instruction families
# ---------------------------------------------------------------------------------------
#: The sweeps a family gives a rule for, each the name of a kernel routine.
SWEEPS = ("forward", "reverse", "tangent", "second_order")
#: Those that values and gradients run, and those of tangents and second order (the
#: family routines are compiled in these two groups, ``_kernels/family_calls.py``).
FIRST_ORDER_SWEEPS = SWEEPS[:2]
SECOND_ORDER_SWEEPS = SWEEPS[2:]


@dataclass(frozen=True)
class Family:
    """An instruction family: a routine over whole operand blocks.

    Unlike an elementwise op, whose sweeps are generated from one scalar formula and its
    partials, a family brings one hand-written kernel routine per sweep (``rules``,
    sweep name -> routine name in the family's kernel source). It reads its operands as
    blocks (``ARG_k`` with ``STRIDE_k``, as elementwise instructions do), writes ``SIZE``
    consecutive result slots, and reads its integer attributes (shapes, axes, a
    sub-program's index, ...) from the program's attribute section: ``attrs`` names
    them in order, and the row field ``ATTR`` is the offset of the first.

    Parameters
    ----------
    name : str
        As shown in listings and error messages.
    opcode : int
        ``FIRST_FAMILY .. LAST_OPCODE``.
    arity : int
        Block operands, at most ``MAX_ARITY``.
    attrs : tuple of str
        Names of the integer attributes it reads.
    rules : dict, optional
        A routine name for each of :data:`SWEEPS`; by default ``<name>_forward``,
        ``<name>_reverse``, ``<name>_tangent``, ``<name>_second``.
    bodies : tuple of str
        The attributes (among ``attrs``) whose values are indices of sub-program table
        entries: the programs it runs (a loop's body).
    check : callable, optional
        ``check(values) -> bad``: given the ``(m, len(attrs))`` attribute values of
        ``m`` instructions, a boolean mask of the instructions whose values are invalid.
        Without one, any values are accepted.
    sizes : callable, optional
        ``sizes(values) -> (m, 1 + arity)``: the result size and each operand's length
        the attribute values imply; validation requires exactly these (the routines
        trust them). Required for a family the kernels run.
    kernel : str
        The kernel file (``tapejit/_kernels/<kernel>.py``) holding its routines; empty
        for a family no kernel runs (validation accepts it, a tape refuses it).
    reference : callable, optional
        ``reference(attrs, a, b, c) -> r``: the numpy rule at one point, on flat float64
        operand blocks (values at the recording point, the display's reference
        interpreter, tests).
    points_reference : callable, optional
        ``points_reference(attrs, a, b, c) -> r``: the same rule at many points at once,
        operand blocks ``(length, points)`` and result ``(size, points)``, for the generic
        tier (``tapejit/_tier0.py``), which otherwise applies ``reference`` point by
        point. Where a family has one, its ``reference`` is this rule at one point. A
        family with ``bodies`` also gets ``body=``: its body program evaluated at the
        points by the generic tier (``_fam_loop.BodyRun``); it has no ``reference``.
    failure : str
        For a family whose routines give NaN where numpy raises (a singular or not
        positive definite matrix): what went wrong, said when recording meets it. Such
        a family's routines must give NaN for the whole result of a point where they
        fail: the recorder guards each such instruction's first result element, so
        evaluating a tape there raises (or masks, ``check="mask"``) instead of returning
        NaN.
    vjp : callable, optional
        ``vjp(attrs, operands, result, cotangent, needed) -> cotangents``: the reverse
        rule as traced numpy (``operands``, ``result`` and ``cotangent`` are flat
        arrays, traced or not; one flat cotangent per operand, or None where it is zero
        or not ``needed``, a flag per operand), so that
        nested differentiation (``tapejit/_nested.py``) records it into the outer tape,
        differentiable again. None: nested differentiation through the family raises.
    body_check : callable, optional
        ``body_check(attrs, body) -> why``: for a family with ``bodies``, why the
        sub-program ``body`` (a :class:`Program`) cannot be run by an instruction with
        attribute values ``attrs`` (its inputs and outputs must be what the routines
        read and write), or ``""``. Validation calls it for every such instruction.
    equivalent : dict, optional
        Fingerprints (``tapejit._io.family_fingerprint``) of earlier definitions of the
        family whose tape files mean what they mean now, each with the reason: a file
        saved with one of them still loads. Only for changes that leave its kernel
        routines' values and its attributes' meaning as they were (a rule added for
        another tier or for nested differentiation, say).
    blas : bool
        Whether its routines call BLAS or LAPACK. Those sum in an order of their own for
        each shape of call (one point is a matrix-vector product, a chunk of points a
        matrix-matrix product), so its values at one point and over many may differ in
        the last bits; every other instruction gives the same bits on every path.
    """

    name: str
    opcode: int
    arity: int
    attrs: tuple[str, ...]
    rules: dict[str, str] = field(default_factory=dict)
    bodies: tuple[str, ...] = ()
    check: Callable[[np.ndarray], np.ndarray] | None = None
    sizes: Callable[[np.ndarray], np.ndarray] | None = None
    kernel: str = ""
    reference: Callable[..., np.ndarray] | None = None
    points_reference: Callable[..., np.ndarray] | None = None
    failure: str = ""
    blas: bool = False
    vjp: Callable[..., tuple[Any, ...]] | None = None
    body_check: Callable[[tuple[int, ...], Program], str] | None = None
    equivalent: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rules:
            object.__setattr__(self, "rules", _default_rules(self.name))
        if not FIRST_FAMILY <= self.opcode <= LAST_OPCODE:
            raise ValueError(f"family {self.name}: opcode {self.opcode} is outside "
                             f"{FIRST_FAMILY}..{LAST_OPCODE}")
        if not 0 <= self.arity <= MAX_ARITY:
            raise ValueError(f"family {self.name}: arity {self.arity} is outside "
                             f"0..{MAX_ARITY}")
        if set(self.rules) != set(SWEEPS):
            raise ValueError(f"family {self.name}: needs a rule for each of {SWEEPS}")
        if not set(self.bodies) <= set(self.attrs):
            raise ValueError(f"family {self.name}: its bodies must be among its attrs")
        if self.kernel and (self.sizes is None or self.reference is None):
            raise ValueError(f"family {self.name}: a family the kernels run needs sizes "
                             "and a reference")


#: Elements a family operand or result may have (sizes are int32 in a program).
MAX_FAMILY_SIZE = 2**31 - 1

#: The recording call a family module's recording functions are written against:
#: ``emit_family(name, operands, attrs, shape)`` (``tapejit._tracer.emit_family``).
EmitFamily = Callable[[str, Any, tuple, tuple], Any]


def _default_rules(name: str) -> dict[str, str]:
    """``Family.rules`` named by convention: ``<name>_forward``, ``<name>_reverse``, ..."""
    return {s: f"{name}_{s.split('_')[0]}" for s in SWEEPS}


def attr_columns(values: np.ndarray) -> np.ndarray:
    """The ``(m, len(attrs))`` attribute values given to ``check`` and ``sizes``, as int64
    (products of int32 attributes must not overflow)."""
    return np.asarray(values, dtype=np.int64).reshape(len(values), -1)


def sizes_by_row(size: Callable[[tuple[int, ...]], tuple[int, ...]]
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """``Family.sizes`` from ``size(attrs) -> (result size, *operand lengths)`` of one
    instruction (for families whose sizes are not simple column arithmetic)."""
    def sizes(values: np.ndarray) -> np.ndarray:
        rows = [size(tuple(v)) for v in attr_columns(values).tolist()]
        return np.array(rows, dtype=np.int64).reshape(len(rows), -1)
    return sizes


#: The instruction families this version knows, by opcode (registered by
#: ``tapejit._families``); validation refuses every other opcode from ``FIRST_FAMILY`` on.
FAMILIES: dict[int, Family] = {}

#: Sub-programs nest at most this deep (a hostile chain of nested headers is refused
#: before it is read).
MAX_NESTING = 8


def family(name: str) -> Family:
    """The registered family called ``name``."""
    for f in FAMILIES.values():
        if f.name == name:
            return f
    raise LookupError(f"no instruction family {name!r} is registered")


def unknown_family(opcode: int) -> str:
    """The message for an instruction of a family this version does not know."""
    return f"instruction family {opcode} is not known to this tapejit version"


def arities(opcodes: np.ndarray) -> np.ndarray:
    """Operands of each of ``opcodes`` (known ones: op table or :data:`FAMILIES`)."""
    out = ARITY[opcodes]
    for code, family in FAMILIES.items():
        out[opcodes == code] = family.arity
    return out


class Subprogram(NamedTuple):
    """An entry of a program's sub-program table: a nested program, and where its
    constants start in the enclosing program's constant pool."""

    program: Program
    consts_at: int


# ---------------------------------------------------------------------------------------
# the packed program, read through these
# ---------------------------------------------------------------------------------------
def _section(prog: np.ndarray, at: int, count: int, width: int = 1) -> np.ndarray:
    """The section whose offset is header field ``at`` and whose count of rows of
    ``width`` ints is header field ``count`` (a view; 2-D when ``width > 1``)."""
    start = int(prog[at])
    rows = prog[start : start + width * int(prog[count])]
    return rows.reshape(-1, width) if width > 1 else rows


def code_of(prog: np.ndarray) -> np.ndarray:
    """The instruction rows of a packed program, ``(n_instr, ROW)`` (a view)."""
    return _section(prog, AT_CODE, N_INSTR, ROW)


def guards_of(prog: np.ndarray) -> np.ndarray:
    """The guard rows of a packed program, ``(n_guards, GUARD)`` (a view)."""
    return _section(prog, AT_GUARDS, N_GUARDS, GUARD)


def resident_of(prog: np.ndarray) -> np.ndarray:
    """The resident runs of a packed program, ``(n_runs, RUN)`` (a view)."""
    return _section(prog, AT_RESIDENT, N_RESIDENT, RUN)


def inputs_of(prog: np.ndarray) -> np.ndarray:
    """The input slots of a packed program (a view)."""
    return _section(prog, AT_INPUTS, N_INPUTS)


def params_of(prog: np.ndarray) -> np.ndarray:
    """The parameter slots of a packed program (a view)."""
    return _section(prog, AT_PARAMS, N_PARAMS)


def outputs_of(prog: np.ndarray) -> np.ndarray:
    """The output slots of a packed program (a view)."""
    return _section(prog, AT_OUTPUTS, N_OUTPUTS)


def attrs_of(prog: np.ndarray) -> np.ndarray:
    """The attribute section of a packed program (a view)."""
    return _section(prog, AT_ATTRS, N_ATTRS)


def family_codes(prog: np.ndarray) -> tuple[int, ...]:
    """The family opcodes a packed program and its nested programs run, ascending."""
    codes = set()
    if int(prog[N_INSTR]):
        ops = code_of(prog)[:, OPCODE]
        codes.update(int(c) for c in np.unique(ops[ops >= FIRST_FAMILY]))
    for at, length, _ in subprograms_of(prog).tolist():
        codes.update(family_codes(prog[at : at + length]))
    return tuple(sorted(codes))


def subprograms_of(prog: np.ndarray) -> np.ndarray:
    """The sub-program table of a packed program, ``(n_subprograms, SUBPROGRAM)`` (a
    view)."""
    return _section(prog, AT_SUBPROGRAMS, N_SUBPROGRAMS, SUBPROGRAM)


def working_slots(prog: np.ndarray) -> int:
    """Slots a workspace actually uses per point: all but the constants and parameters
    outside the resident runs (read in place, their rows never touched); what the
    chunk width is chosen from."""
    runs = resident_of(prog).astype(np.int64)
    resident = int((runs[:, RUN_STOP] - runs[:, RUN_START]).sum()) if len(runs) else 0
    return int(prog[N_SLOTS]) - int(prog[FIRST_ADJOINT]) + resident + int(prog[N_PARAMS])


def first_result(prog: np.ndarray) -> int:
    """First result slot of a packed program (after constants, parameters and inputs)."""
    return int(prog[FIRST_ADJOINT]) + int(prog[N_INPUTS])


def _starts(sizes: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: offset of each instruction's first result."""
    out = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], out=out[1:])
    return out


def resident_runs(p: Program) -> np.ndarray:
    """``(n_runs, RUN)``: the runs of constant and parameter slots a workspace holds.

    A constant or parameter slot is resident when an elementwise instruction may read it
    (anywhere in the span of a block operand), it is an output, or a family instruction
    reads it in an operand block that is not wholly constants or wholly parameters
    (family routines read those in place, from the pool or the parameter vector).
    """
    nd, nc = p.first_adjoint, p.n_consts
    delta = np.zeros(nd + 1, np.int64)
    if len(p.opcodes):
        used = p.used()
        family = p.opcodes >= FIRST_FAMILY
        last = p.args + (p.sizes[:, None] - 1) * p.strides
        lo = np.minimum(p.args, last)
        hi = np.maximum(p.args, last) + 1
        fam_hi = p.args + p.strides
        in_place = ((fam_hi <= nc) | ((p.args >= nc) & (fam_hi <= nd)))
        lo = np.where(family[:, None], p.args, lo)
        hi = np.where(family[:, None], fam_hi, hi)
        pick = used & (lo < nd) & (hi > lo) & ~(family[:, None] & in_place)
        np.add.at(delta, lo[pick], 1)
        np.add.at(delta, np.minimum(hi[pick], nd), -1)
    outs = p.outputs[p.outputs < nd]
    np.add.at(delta, outs, 1)
    np.add.at(delta, outs + 1, -1)
    mask = np.cumsum(delta[:nd]) > 0
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]],
                    axis=1).astype(np.int64).reshape(-1, RUN)


# ---------------------------------------------------------------------------------------
# the program as named arrays
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Program:
    """A program as named arrays (``int64``, constants ``float64``).

    The result slots are not stored: they are consecutive in instruction order from
    :attr:`n_fixed` (:attr:`results`). The inputs and parameters are not stored either:
    parameters are the slots after the constants, inputs the slots after them.

    Family instructions read their attributes from :attr:`attrs` at their
    :attr:`attr_at` offset (``None``: every instruction is elementwise, all offsets 0);
    :attr:`subprograms` are the nested programs, each with its constants' place in
    this program's pool (:class:`Subprogram`).

    A program is checked when a :class:`~tapejit.Tape` is built from it
    (``_validate.check_tape_arrays`` returns a checked one) or when it is read from a
    packed array (:meth:`unpack`); anything else (the tape builder's, a pass's) is
    checked when it becomes a tape.
    """

    opcodes: np.ndarray  #: ``(n,)``
    args: np.ndarray  #: ``(n, MAX_ARITY)`` first operand slots, unused columns 0
    sizes: np.ndarray  #: ``(n,)`` elements per instruction
    strides: np.ndarray  #: ``(n, MAX_ARITY)`` operand slot strides, unused columns 0
    consts: np.ndarray  #: ``(n_consts,)`` float64
    n_params: int
    n_inputs: int
    outputs: np.ndarray  #: ``(n_outputs,)`` slots
    guards: np.ndarray  #: ``(n_guards, GUARD)``
    attrs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  #: ``(n_attrs,)``
    attr_at: np.ndarray | None = None  #: ``(n,)`` each instruction's ``ATTR``, or None: 0
    subprograms: tuple[Subprogram, ...] = ()

    # -- counts and derived arrays ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.opcodes)

    @property
    def n_consts(self) -> int:
        return len(self.consts)

    @property
    def first_adjoint(self) -> int:
        """``nd``: the first slot with an adjoint (the first input's)."""
        return len(self.consts) + self.n_params

    @property
    def n_fixed(self) -> int:
        """Slots before the first result: constants, parameters and inputs."""
        return len(self.consts) + self.n_params + self.n_inputs

    @property
    def n_slots(self) -> int:
        return self.n_fixed + int(self.sizes.sum())

    @property
    def attr_offsets(self) -> np.ndarray:
        """Each instruction's ``ATTR`` (0 for elementwise instructions)."""
        if self.attr_at is None:
            return np.zeros(len(self.opcodes), dtype=np.int64)
        return self.attr_at

    @property
    def results(self) -> np.ndarray:
        """First result slot of each instruction."""
        return self.n_fixed + _starts(self.sizes)

    @property
    def params(self) -> np.ndarray:
        return len(self.consts) + np.arange(self.n_params, dtype=np.int64)

    @property
    def inputs(self) -> np.ndarray:
        return self.first_adjoint + np.arange(self.n_inputs, dtype=np.int64)

    @property
    def has_families(self) -> bool:
        """Whether any instruction is of an instruction family."""
        return bool((self.opcodes >= FIRST_FAMILY).any())

    def arity(self) -> np.ndarray:
        """Operands of each instruction."""
        return arities(self.opcodes)

    def used(self) -> np.ndarray:
        """``(n, MAX_ARITY)`` mask of the operand columns each instruction reads."""
        return np.arange(MAX_ARITY)[None, :] < self.arity()[:, None]

    def elements(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per result slot (element): its instruction, its index in the instruction, and
        the ``(n_elements, MAX_ARITY)`` operand slots it reads (0 in unused columns)."""
        inst = np.repeat(np.arange(len(self.opcodes)), self.sizes)
        e = np.arange(len(inst), dtype=np.int64) - np.repeat(_starts(self.sizes), self.sizes)
        slots = self.args[inst] + e[:, None] * self.strides[inst]
        return inst, e, np.where(self.used()[inst], slots, 0)

    def spans(self, which: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``lo, hi`` slot ranges of the multi-element, strided operands of the
        instructions ``which`` (all by default)."""
        sel = self.used() & (self.sizes[:, None] > 1) & (self.strides != 0)
        if which is not None:
            sel &= which[:, None]
        i, k = np.nonzero(sel)
        a = self.args[i, k]
        last = a + (self.sizes[i] - 1) * self.strides[i, k]
        return np.minimum(a, last), np.maximum(a, last)

    # -- to and from other forms -----------------------------------------------------------
    def arrays(self) -> dict[str, Any]:
        """The arrays as the :class:`~tapejit.Tape` constructor takes them."""
        return {
            "opcodes": self.opcodes, "args": self.args, "consts": self.consts,
            "inputs": self.inputs, "params": self.params, "outputs": self.outputs,
            "guards": self.guards, "sizes": self.sizes, "strides": self.strides,
            "attrs": self.attrs, "attr_offsets": self.attr_at,
            "subprograms": self.subprograms,
        }

    @classmethod
    def from_tape(cls, tape: Any) -> Program:
        """The program of a :class:`~tapejit.Tape`, from its public (validated) views."""
        n = len(tape)
        return cls(
            opcodes=np.asarray(tape.opcodes, dtype=np.int64),
            args=np.asarray(tape.args, dtype=np.int64).reshape(n, MAX_ARITY),
            sizes=np.asarray(tape.sizes, dtype=np.int64),
            strides=np.asarray(tape.strides, dtype=np.int64).reshape(n, MAX_ARITY),
            consts=np.array(tape.consts, dtype=np.float64),
            n_params=tape.n_params,
            n_inputs=tape.n_inputs,
            outputs=np.asarray(tape.outputs, dtype=np.int64),
            guards=np.asarray(tape.guards, dtype=np.int64).reshape(-1, GUARD),
            attrs=np.asarray(tape.attrs, dtype=np.int64),
            attr_at=np.asarray(tape.attr_offsets, dtype=np.int64) if len(tape.attrs) else None,
            subprograms=tape.subprograms,
        )

    def pack(self) -> tuple[np.ndarray, np.ndarray]:
        """The packed ``int32`` program and the ``float64`` constants (new arrays).

        The program must be valid (every count, slot and attribute fits ``int32``): pack
        the one ``check_tape_arrays`` returns.
        """
        return self._pack(), np.array(self.consts, dtype=np.float64)

    def _pack(self) -> np.ndarray:
        n, n_in, n_par = len(self.opcodes), self.n_inputs, self.n_params
        n_out, n_guards = len(self.outputs), len(self.guards)
        n_attrs, n_sub = len(self.attrs), len(self.subprograms)
        runs = resident_runs(self)
        nested = [sub.program._pack() for sub in self.subprograms]
        at_in = HEADER
        at_par = at_in + n_in
        at_out = at_par + n_par
        at_code = at_out + n_out
        at_guards = at_code + ROW * n
        at_resident = at_guards + GUARD * n_guards
        at_attrs = at_resident + RUN * len(runs)
        at_sub = at_attrs + n_attrs
        at_nested = at_sub + SUBPROGRAM * n_sub
        size = at_nested + sum(len(p) for p in nested)
        if size > _MAX_INT32:
            from ._validate import TapeFormatError

            raise TapeFormatError(f"the packed program would have {size} ints; at most "
                                  f"{_MAX_INT32} are supported")
        prog = np.empty(size, dtype=np.int32)
        h = prog[:HEADER]
        h[N_SLOTS] = self.n_slots
        h[N_CONSTS] = self.n_consts
        h[FIRST_ADJOINT] = self.first_adjoint
        h[N_INPUTS], h[N_PARAMS], h[N_OUTPUTS], h[N_INSTR] = n_in, n_par, n_out, n
        h[AT_INPUTS], h[AT_PARAMS], h[AT_OUTPUTS], h[AT_CODE] = at_in, at_par, at_out, at_code
        h[ROW_INTS] = ROW
        h[N_GUARDS], h[AT_GUARDS] = n_guards, at_guards
        h[N_ATTRS], h[AT_ATTRS] = n_attrs, at_attrs
        h[N_SUBPROGRAMS], h[AT_SUBPROGRAMS] = n_sub, at_sub
        h[N_RESIDENT], h[AT_RESIDENT] = len(runs), at_resident
        prog[at_in:at_par] = self.inputs
        prog[at_par:at_out] = self.params
        prog[at_out:at_code] = self.outputs
        code = prog[at_code:at_guards].reshape(n, ROW)
        code[:, OPCODE] = self.opcodes
        code[:, RESULT] = self.results
        code[:, ARG_A : ARG_A + MAX_ARITY] = self.args
        code[:, SIZE] = self.sizes
        code[:, STRIDE_A : STRIDE_A + MAX_ARITY] = self.strides
        code[:, ATTR] = self.attr_offsets
        prog[at_guards:at_resident] = np.asarray(self.guards).ravel()
        prog[at_resident:at_attrs] = runs.ravel()
        prog[at_attrs:at_sub] = self.attrs
        table = prog[at_sub:at_nested].reshape(n_sub, SUBPROGRAM)
        at = at_nested
        for j, (sub, p) in enumerate(zip(self.subprograms, nested, strict=True)):
            table[j, SUB_AT], table[j, SUB_LEN], table[j, SUB_CONSTS] = at, len(p), sub.consts_at
            prog[at : at + len(p)] = p
            at += len(p)
        return prog

    @classmethod
    def unpack(cls, prog: np.ndarray, consts: np.ndarray) -> Program:
        """Read a packed program back, validating everything a kernel relies on.

        Checks the array types, that the header describes the array's layout exactly
        (:func:`check_layout`, nested programs included), the arrays themselves
        (``check_tape_arrays``: opcodes, operand slots, guards, attributes,
        sub-programs), and that the slot numbering the header and rows state is the
        canonical one, recursively.

        Raises
        ------
        TapeFormatError
            Naming the first problem found.
        """
        check_layout(prog, consts)
        return _read(np.asarray(prog), np.asarray(consts))

    @classmethod
    def unpack_v1(cls, prog: np.ndarray, consts: np.ndarray) -> Program:
        """Read a packed program of format version 1 (a header of 14 fields, rows of 9
        ints, no attributes or sub-programs), validating it as :meth:`unpack` does.

        Raises
        ------
        TapeFormatError
            Naming the first problem found.
        """
        from ._validate import TapeFormatError

        prog, consts = _check_types(prog, consts)
        h = _header(prog, _V1_HEADER)
        if h[AT_INPUTS] != _V1_HEADER or h[ROW_INTS] != _V1_ROW:
            raise TapeFormatError("not a packed program of format version 1")
        if _sections(h, _V1_HEADER, _V1_ROW) != prog.size:
            raise TapeFormatError("the packed program's header does not match its layout")
        _check_n_consts(h, consts)
        at = int(h[AT_CODE])
        code = prog[at : at + _V1_ROW * int(h[N_INSTR])].reshape(-1, _V1_ROW)
        return _checked(prog, code, consts, None, ())

    @classmethod
    def unpack_v2(cls, prog: np.ndarray, consts: np.ndarray) -> Program:
        """Read a packed program of format version 2 (a header of 18 fields, no resident
        runs), validating it as :meth:`unpack` does.

        Raises
        ------
        TapeFormatError
            Naming the first problem found.
        """
        check_layout(prog, consts, header=_V2_HEADER)
        return _read(np.asarray(prog), np.asarray(consts), _V2_HEADER)


#: Ints of a packed program at most (its offsets are int32).
_MAX_INT32 = 2**31 - 1
#: Header fields and row ints of format version 1.
_V1_HEADER = 14
_V1_ROW = 9
#: Header fields of format version 2.
_V2_HEADER = 18


def is_version_1(prog: np.ndarray) -> bool:
    """Whether ``prog`` claims to be a packed program of format version 1 (whose
    ``AT_INPUTS`` is its header's length, 14, and ``ROW_INTS`` 9)."""
    prog = np.asarray(prog)
    return (prog.ndim == 1 and prog.dtype.kind in "iu" and prog.size >= _V1_HEADER
            and int(prog[AT_INPUTS]) == _V1_HEADER and int(prog[ROW_INTS]) == _V1_ROW)


def is_version_2(prog: np.ndarray) -> bool:
    """Whether ``prog`` claims to be a packed program of format version 2 (a header of
    18 fields: no resident runs)."""
    prog = np.asarray(prog)
    return (prog.ndim == 1 and prog.dtype.kind in "iu" and prog.size >= _V2_HEADER
            and int(prog[AT_INPUTS]) == _V2_HEADER and int(prog[ROW_INTS]) == ROW)


def upgrade(prog: np.ndarray, consts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``prog, consts`` as they are, or converted to this format version (new arrays,
    validated) when ``prog`` is of format version 1 or 2."""
    if is_version_1(prog):
        return Program.unpack_v1(prog, consts).pack()
    if is_version_2(prog):
        return Program.unpack_v2(prog, consts).pack()
    return prog, consts


def _read(prog: np.ndarray, consts: np.ndarray, header: int = HEADER) -> Program:
    """The program of a packed array whose layout :func:`check_layout` accepted,
    validated (nested programs first)."""
    from ._validate import TapeFormatError

    subs = []
    for j, (at, length, c) in enumerate(subprograms_of(prog).astype(np.int64)):
        nested = prog[at : at + length]
        try:
            p = _read(nested, consts[c : c + int(nested[N_CONSTS])], header)
        except TapeFormatError as exc:
            raise TapeFormatError(f"sub-program {j}: {exc}") from None
        subs.append(Subprogram(p, int(c)))
    p = _checked(prog, code_of(prog), consts, attrs_of(prog), tuple(subs))
    if header == HEADER and not np.array_equal(resident_of(prog), resident_runs(p)):
        raise TapeFormatError("the packed program's resident runs are not the ones its "
                              "instructions need")
    return p


def _checked(prog: np.ndarray, code: np.ndarray, consts: np.ndarray,
             attrs: np.ndarray | None, subs: tuple[Subprogram, ...]) -> Program:
    """``check_tape_arrays`` of a packed program's sections (rows ``code``), and its
    slot numbering."""
    # _validate reads this module's constants, so it is imported when first needed.
    from ._validate import TapeFormatError, check_tape_arrays

    p = check_tape_arrays(
        code[:, OPCODE], code[:, ARG_A : ARG_A + MAX_ARITY], consts, inputs_of(prog),
        params_of(prog), outputs_of(prog), guards_of(prog), code[:, SIZE],
        code[:, STRIDE_A : STRIDE_A + MAX_ARITY],
        attrs=attrs, attr_at=None if attrs is None else code[:, ATTR], subprograms=subs,
    )
    if (not np.array_equal(p.results, code[:, RESULT]) or prog[N_SLOTS] != p.n_slots
            or prog[FIRST_ADJOINT] != p.first_adjoint):
        raise TapeFormatError("the packed program's slot numbering is inconsistent")
    return p


def _check_types(prog: np.ndarray, consts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ._validate import TapeFormatError

    prog = np.asarray(prog)
    consts = np.asarray(consts)
    if prog.dtype != np.int32 or prog.ndim != 1 or not prog.flags.c_contiguous:
        raise TapeFormatError("a packed program must be a 1-D C-contiguous int32 array")
    if consts.dtype != np.float64 or consts.ndim != 1 or not consts.flags.c_contiguous:
        raise TapeFormatError("constants must be a 1-D C-contiguous float64 array")
    return prog, consts


def _header(prog: np.ndarray, fields: int) -> np.ndarray:
    """The first ``fields`` ints of ``prog`` as int64, all non-negative."""
    from ._validate import TapeFormatError

    if prog.size < fields:
        raise TapeFormatError(f"a packed program has at least {fields} header fields")
    h = prog[:fields].astype(np.int64)
    if h.min() < 0:
        raise TapeFormatError("the packed program's header has a negative field")
    return h


def _sections(h: np.ndarray, header: int, row: int) -> int:
    """The end of the guard section, after checking that the sections up to it follow
    the header in order with no gap (``-1`` when they do not)."""
    expect = {  # each section directly after the one before
        AT_INPUTS: header,
        AT_PARAMS: h[AT_INPUTS] + h[N_INPUTS],
        AT_OUTPUTS: h[AT_PARAMS] + h[N_PARAMS],
        AT_CODE: h[AT_OUTPUTS] + h[N_OUTPUTS],
        AT_GUARDS: h[AT_CODE] + row * h[N_INSTR],
    }
    if any(h[at] != want for at, want in expect.items()):
        return -1
    return int(h[AT_GUARDS] + GUARD * h[N_GUARDS])


def _check_n_consts(h: np.ndarray, consts: np.ndarray) -> None:
    from ._validate import TapeFormatError

    if h[N_CONSTS] != consts.size:
        raise TapeFormatError(f"the program expects {h[N_CONSTS]} constants, got "
                              f"{consts.size}")


def check_layout(prog: np.ndarray, consts: np.ndarray, depth: int = 0,
                 header: int = HEADER) -> None:
    """Check a packed program's types and that its header describes its layout.

    ``prog`` must be a 1-D C-contiguous ``int32`` array whose sections follow the header
    in order with no gap, its rows of ``ROW`` ints, its nested programs (laid out the
    same way, at most :data:`MAX_NESTING` deep) one after the other in table order to the
    array's end; ``consts`` a 1-D C-contiguous ``float64`` array of ``N_CONSTS`` values,
    each nested program's constants a range of it. What the sections hold is checked
    by :meth:`Program.unpack`. ``header``: :data:`HEADER`, or 18 for format version 2
    (no resident runs).

    Raises
    ------
    TapeFormatError
        On any mismatch.
    """
    from ._validate import TapeFormatError

    prog, consts = _check_types(prog, consts)
    h = _header(prog, header)
    if h[ROW_INTS] != ROW:
        raise TapeFormatError(f"the packed program has rows of {h[ROW_INTS]} ints; this "
                              f"tapejit version reads rows of {ROW}")
    table_end = h[AT_SUBPROGRAMS] + SUBPROGRAM * h[N_SUBPROGRAMS]
    guards_end = _sections(h, header, ROW)
    if header == HEADER:
        attrs_at = h[AT_RESIDENT] + RUN * h[N_RESIDENT]
        if h[AT_RESIDENT] != guards_end:
            guards_end = -1
    else:
        attrs_at = guards_end
    if (guards_end < 0 or h[AT_ATTRS] != attrs_at
            or h[AT_SUBPROGRAMS] != h[AT_ATTRS] + h[N_ATTRS] or table_end > prog.size):
        raise TapeFormatError("the packed program's header does not match its layout")
    _check_n_consts(h, consts)
    table = subprograms_of(prog).astype(np.int64)
    if len(table) and depth >= MAX_NESTING:
        raise TapeFormatError(f"sub-programs nest more than {MAX_NESTING} deep")
    at = table_end
    for j, (sub_at, length, _) in enumerate(table):
        if sub_at != at or length < header or sub_at + length > prog.size:
            raise TapeFormatError(f"sub-program {j} is not where the program's layout "
                                  f"puts it (at {at}, at least {header} ints)")
        at += length
    if at != prog.size:
        raise TapeFormatError("the packed program's header does not match its layout")
    for j, (sub_at, length, c) in enumerate(table):
        nested = prog[sub_at : sub_at + length]
        n = _header(nested, header)[N_CONSTS]
        if c < 0 or c + n > consts.size:
            raise TapeFormatError(f"sub-program {j}: its constants {c}..{c + n - 1} are "
                                  f"outside the pool of {consts.size}")
        check_layout(nested, consts[c : c + n], depth + 1, header)
