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

Layout of a packed ``int32`` program (format version 1)::

    header      HEADER fields, named below (counts, then section offsets)
    inputs      N_INPUTS slot indices          at AT_INPUTS
    params      N_PARAMS slot indices          at AT_PARAMS
    outputs     N_OUTPUTS slot indices         at AT_OUTPUTS
    code        N_INSTR rows of ROW ints       at AT_CODE
    guards      N_GUARDS rows of GUARD ints    at AT_GUARDS

Slots are numbered ``[constants | parameters | inputs | instruction results]``;
``FIRST_ADJOINT`` (``nd``) is the first slot that receives adjoints. The constants'
values travel next to the program as a ``float64`` array.

An instruction row is ``(OPCODE, RESULT, ARG_A, ARG_B, ARG_C, SIZE, STRIDE_A, STRIDE_B,
STRIDE_C)``: it applies its op to ``SIZE`` elements (1: scalar; more: a block), element
``e`` reading slot ``ARG_k + e * STRIDE_k`` of each operand ``k`` and writing
``RESULT + e``. Results are consecutive in instruction order from the first result slot,
and every operand slot comes before its instruction's first result.

A *guard* row ``(GUARD_SLOT, GUARD_OUTCOME)`` records a Python branch taken on a traced
value while recording: the comparison's result slot and the outcome seen (0 or 1).

Opcodes and instruction families
--------------------------------
Opcodes ``1 .. FIRST_FAMILY - 1`` are the elementwise ops of the op table
(``tapejit._ops.OPS``): one scalar formula applied element by element, with its partials.
Opcodes ``FIRST_FAMILY .. LAST_OPCODE`` are reserved for *instruction families*:
instructions that call a routine over whole operand blocks (a contraction, a solve, a
reduction, a loop), each with its own forward, reverse, tangent and second-order rules
(:class:`Family`, registered in :data:`FAMILIES`). No family exists yet, and the packed
format of this version has no room for their attributes: validation refuses every opcode
from ``FIRST_FAMILY`` on ("instruction family N is not known to this tapejit version").
:data:`FORMAT_NEXT` is the ready-to-apply design of the sections that make room for them
and for sub-programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
#: Number of header fields.
HEADER = 14

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
#: Ints per instruction row.
ROW = 9
#: Operands per instruction at most.
MAX_ARITY = 3

# -- guard row fields ----------------------------------------------------------------------
GUARD_SLOT = 0  #: slot of a comparison's result
GUARD_OUTCOME = 1  #: its value (0 or 1) when the tape was recorded
#: Ints per guard row.
GUARD = 2

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
    "HEADER", "OPCODE", "RESULT", "ARG_A", "ARG_B", "ARG_C", "SIZE", "STRIDE_A",
    "STRIDE_B", "STRIDE_C", "ROW", "MAX_ARITY", "GUARD_SLOT", "GUARD_OUTCOME", "GUARD",
    "PLAN_ASSIGN", "PLAN_FORWARD",
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
# instruction families and the next format version (designed, not yet active)
# ---------------------------------------------------------------------------------------
#: The sweeps a family gives a rule for, each the name of a kernel routine.
SWEEPS = ("forward", "reverse", "tangent", "second_order")


@dataclass(frozen=True)
class Family:
    """An instruction family: a routine over whole operand blocks.

    Unlike an elementwise op, whose sweeps are generated from one scalar formula and its
    partials, a family brings one hand-written kernel routine per sweep (``rules``,
    sweep name -> routine name in the family's kernel source). It reads its operands as
    blocks (``ARG_k`` with ``STRIDE_k``, as elementwise instructions do), writes ``SIZE``
    consecutive result slots, and reads its integer attributes (shapes, axes, a
    sub-program's index, ...) from the program's attribute section: ``attrs`` names
    them in order, and the row field ``ATTR`` (see :data:`FORMAT_NEXT`) is the offset
    of the first.

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
    rules : dict
        A routine name for each of :data:`SWEEPS`.
    """

    name: str
    opcode: int
    arity: int
    attrs: tuple[str, ...]
    rules: dict[str, str]

    def __post_init__(self) -> None:
        if not FIRST_FAMILY <= self.opcode <= LAST_OPCODE:
            raise ValueError(f"family {self.name}: opcode {self.opcode} is outside "
                             f"{FIRST_FAMILY}..{LAST_OPCODE}")
        if not 0 <= self.arity <= MAX_ARITY:
            raise ValueError(f"family {self.name}: arity {self.arity} is outside "
                             f"0..{MAX_ARITY}")
        if set(self.rules) != set(SWEEPS):
            raise ValueError(f"family {self.name}: needs a rule for each of {SWEEPS}")


#: The instruction families this version knows, by opcode. Empty: validation refuses
#: every opcode from ``FIRST_FAMILY`` on until the next format version is active.
FAMILIES: dict[int, Family] = {}


def unknown_family(opcode: int) -> str:
    """The message for an instruction of a family this version cannot run."""
    return f"instruction family {opcode} is not known to this tapejit version"


#: Header fields of the next format version, appended after today's (which keep their
#: positions, so the kernels' reads of them do not change). Inactive: ``HEADER`` is 14.
N_ATTRS = 14  #: integer attributes of family instructions
AT_ATTRS = 15  #: offset of the attribute section
N_SUBPROGRAMS = 16  #: entries of the sub-program table
AT_SUBPROGRAMS = 17  #: offset of the sub-program table
HEADER_NEXT = 18
#: Row field of the next version: offset of a family instruction's first attribute in
#: the attribute section (0 for an elementwise instruction). Inactive: ``ROW`` is 9.
ATTR = 9
ROW_NEXT = 10
#: Fields of a sub-program table entry (next version).
SUB_AT = 0  #: offset in this same array of the nested program's header
SUB_LEN = 1  #: its length in ints
SUB_CONSTS = 2  #: offset of its constants in the enclosing pool
SUBPROGRAM = 3

#: The next format version, as it is to be applied (kept here so that it is reviewed
#: with the format it extends).
FORMAT_NEXT = """
Format version 2: room for instruction families and sub-programs.

Layout (new sections after today's, so offsets of today's sections only move by the
header's growth)::

    header       HEADER_NEXT (18) fields: today's 14, then N_ATTRS, AT_ATTRS,
                 N_SUBPROGRAMS, AT_SUBPROGRAMS
    inputs, params, outputs            as today
    code         N_INSTR rows of ROW_NEXT (10) ints: today's 9 fields, then ATTR
    guards       as today
    attrs        N_ATTRS ints                     at AT_ATTRS
    subprograms  N_SUBPROGRAMS rows of SUBPROGRAM (3) ints (SUB_AT, SUB_LEN, SUB_CONSTS)
                                                  at AT_SUBPROGRAMS
    nested programs, each a complete packed program (its own header, sections and
                 sub-programs), at the SUB_AT of its entry

A family instruction (opcode FIRST_FAMILY..LAST_OPCODE, registered in FAMILIES) reads
len(family.attrs) ints from attrs[ATTR ...]; a loop family names its body by the index
of a sub-program entry among its attributes. A nested program's constants are
consts[SUB_CONSTS : SUB_CONSTS + its N_CONSTS] of the enclosing pool, so one float64
array still travels with one int32 array. Elementwise instructions have ATTR 0.

To activate it:

1. In this module: HEADER = HEADER_NEXT and ROW = ROW_NEXT; move N_ATTRS .. SUBPROGRAM
   and FIRST_FAMILY into KERNEL_CONSTANTS; Program gains ``attrs`` (int64 array) and
   ``subprograms`` (a tuple of (Program, consts offset)); ``pack`` writes the new
   fields and sections, ``check_layout`` checks AT_ATTRS = AT_GUARDS + GUARD *
   N_GUARDS, AT_SUBPROGRAMS = AT_ATTRS + N_ATTRS, every nested program inside the
   array after the table and not overlapping another, and the array's end; ``unpack``
   validates each nested program recursively (its own check_layout and
   check_tape_arrays) and its constant range inside the pool.
2. ``_validate.check_tape_arrays``: accept opcodes in FAMILIES (arity from the family),
   check each family instruction's ATTR range inside attrs and its attribute values
   (per family: a ``check`` callable on Family), and that elementwise rows have ATTR 0.
3. Kernels (``tapejit/_kernels``): dispatch opcodes >= FIRST_FAMILY to the
   family's rule routine per sweep (SWEEPS), passing (prog, attrs offset, workspace);
   every ``prog[k + ...]`` row read already uses ROW, so only the dispatch is new. The
   reverse plan treats a family's operands as plain accumulating reads (no PLAN bits).
4. Passes: fold, CSE and DCE treat a family instruction as opaque (CSE keys on opcode,
   operands and its attribute values); slot reuse keeps its operands' blocks whole (a
   unit per family instruction).
5. Old programs: a packed program with prog[AT_INPUTS] == 14 and prog[ROW_INTS] == 9 is
   version 1 (pickles and shared tapes made before). ``Tape._from_packed`` and
   ``_unpickle`` recognize it and convert it by ``Program.unpack_v1(prog, consts)
   .pack()`` (today's ``check_layout`` and reading, with no attrs and no
   sub-programs); ``tests/data/tape_v1.pickle`` must keep loading. Tape files (``_io``)
   store the arrays, not the packed program, and are not affected.
"""


# ---------------------------------------------------------------------------------------
# the packed program, read through these
# ---------------------------------------------------------------------------------------
def code_of(prog: np.ndarray) -> np.ndarray:
    """The instruction rows of a packed program, ``(n_instr, ROW)`` (a view)."""
    at = int(prog[AT_CODE])
    return prog[at : at + ROW * int(prog[N_INSTR])].reshape(-1, ROW)


def guards_of(prog: np.ndarray) -> np.ndarray:
    """The guard rows of a packed program, ``(n_guards, GUARD)`` (a view)."""
    at = int(prog[AT_GUARDS])
    return prog[at : at + GUARD * int(prog[N_GUARDS])].reshape(-1, GUARD)


def inputs_of(prog: np.ndarray) -> np.ndarray:
    """The input slots of a packed program (a view)."""
    at = int(prog[AT_INPUTS])
    return prog[at : at + int(prog[N_INPUTS])]


def params_of(prog: np.ndarray) -> np.ndarray:
    """The parameter slots of a packed program (a view)."""
    at = int(prog[AT_PARAMS])
    return prog[at : at + int(prog[N_PARAMS])]


def outputs_of(prog: np.ndarray) -> np.ndarray:
    """The output slots of a packed program (a view)."""
    at = int(prog[AT_OUTPUTS])
    return prog[at : at + int(prog[N_OUTPUTS])]


def first_result(prog: np.ndarray) -> int:
    """First result slot of a packed program (after constants, parameters and inputs)."""
    return int(prog[FIRST_ADJOINT]) + int(prog[N_INPUTS])


def _starts(sizes: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: offset of each instruction's first result."""
    out = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], out=out[1:])
    return out


# ---------------------------------------------------------------------------------------
# the program as named arrays
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Program:
    """A program as named arrays (``int64``, constants ``float64``).

    The result slots are not stored: they are consecutive in instruction order from
    :attr:`n_fixed` (:attr:`results`). The inputs and parameters are not stored either:
    parameters are the slots after the constants, inputs the slots after them.

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
    def results(self) -> np.ndarray:
        """First result slot of each instruction."""
        return self.n_fixed + _starts(self.sizes)

    @property
    def params(self) -> np.ndarray:
        return len(self.consts) + np.arange(self.n_params, dtype=np.int64)

    @property
    def inputs(self) -> np.ndarray:
        return self.first_adjoint + np.arange(self.n_inputs, dtype=np.int64)

    def arity(self) -> np.ndarray:
        """Operands of each instruction."""
        return ARITY[self.opcodes]

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
        )

    def pack(self) -> tuple[np.ndarray, np.ndarray]:
        """The packed ``int32`` program and the ``float64`` constants (new arrays).

        The program must be valid (every count and slot fits ``int32``): pack the one
        ``check_tape_arrays`` returns.
        """
        n, n_in, n_par = len(self.opcodes), self.n_inputs, self.n_params
        n_out, n_guards = len(self.outputs), len(self.guards)
        at_in = HEADER
        at_par = at_in + n_in
        at_out = at_par + n_par
        at_code = at_out + n_out
        at_guards = at_code + ROW * n
        prog = np.empty(at_guards + GUARD * n_guards, dtype=np.int32)
        h = prog[:HEADER]
        h[N_SLOTS] = self.n_slots
        h[N_CONSTS] = self.n_consts
        h[FIRST_ADJOINT] = self.first_adjoint
        h[N_INPUTS], h[N_PARAMS], h[N_OUTPUTS], h[N_INSTR] = n_in, n_par, n_out, n
        h[AT_INPUTS], h[AT_PARAMS], h[AT_OUTPUTS], h[AT_CODE] = at_in, at_par, at_out, at_code
        h[ROW_INTS] = ROW
        h[N_GUARDS], h[AT_GUARDS] = n_guards, at_guards
        prog[at_in:at_par] = self.inputs
        prog[at_par:at_out] = self.params
        prog[at_out:at_code] = self.outputs
        code = prog[at_code:at_guards].reshape(n, ROW)
        code[:, OPCODE] = self.opcodes
        code[:, RESULT] = self.results
        code[:, ARG_A : ARG_A + MAX_ARITY] = self.args
        code[:, SIZE] = self.sizes
        code[:, STRIDE_A : STRIDE_A + MAX_ARITY] = self.strides
        prog[at_guards:] = np.asarray(self.guards).ravel()
        return prog, np.array(self.consts, dtype=np.float64)

    @classmethod
    def unpack(cls, prog: np.ndarray, consts: np.ndarray) -> Program:
        """Read a packed program back, validating everything a kernel relies on.

        Checks the array types, that the header describes the array's layout exactly
        (:func:`check_layout`), the arrays themselves (``check_tape_arrays``: opcodes,
        operand slots, guards), and that the slot numbering the header and rows state
        is the canonical one.

        Raises
        ------
        TapeFormatError
            Naming the first problem found.
        """
        # _validate reads this module's constants, so it is imported when first needed.
        from ._validate import TapeFormatError, check_tape_arrays

        check_layout(prog, consts)
        code = code_of(prog)
        p = check_tape_arrays(
            code[:, OPCODE], code[:, ARG_A : ARG_A + MAX_ARITY], consts, inputs_of(prog),
            params_of(prog), outputs_of(prog), guards_of(prog), code[:, SIZE],
            code[:, STRIDE_A : STRIDE_A + MAX_ARITY],
        )
        if (not np.array_equal(p.results, code[:, RESULT]) or prog[N_SLOTS] != p.n_slots
                or prog[FIRST_ADJOINT] != p.first_adjoint):
            raise TapeFormatError("the packed program's slot numbering is inconsistent")
        return p


def check_layout(prog: np.ndarray, consts: np.ndarray) -> None:
    """Check a packed program's types and that its header describes its layout.

    ``prog`` must be a 1-D C-contiguous ``int32`` array whose sections follow the header
    in order with no gap, its rows of ``ROW`` ints; ``consts`` a 1-D C-contiguous
    ``float64`` array of ``N_CONSTS`` values. What the sections hold is checked by
    :meth:`Program.unpack`.

    Raises
    ------
    TapeFormatError
        On any mismatch.
    """
    from ._validate import TapeFormatError

    prog = np.asarray(prog)
    consts = np.asarray(consts)
    if prog.dtype != np.int32 or prog.ndim != 1 or not prog.flags.c_contiguous:
        raise TapeFormatError("a packed program must be a 1-D C-contiguous int32 array")
    if consts.dtype != np.float64 or consts.ndim != 1 or not consts.flags.c_contiguous:
        raise TapeFormatError("constants must be a 1-D C-contiguous float64 array")
    if prog.size < HEADER:
        raise TapeFormatError(f"a packed program has at least {HEADER} header fields")
    h = prog[:HEADER].astype(np.int64)
    if h.min() < 0:
        raise TapeFormatError("the packed program's header has a negative field")
    if h[ROW_INTS] != ROW:
        raise TapeFormatError(f"the packed program has rows of {h[ROW_INTS]} ints; this "
                              f"tapejit version reads rows of {ROW}")
    expect = {  # each section directly after the one before
        AT_INPUTS: HEADER,
        AT_PARAMS: h[AT_INPUTS] + h[N_INPUTS],
        AT_OUTPUTS: h[AT_PARAMS] + h[N_PARAMS],
        AT_CODE: h[AT_OUTPUTS] + h[N_OUTPUTS],
        AT_GUARDS: h[AT_CODE] + ROW * h[N_INSTR],
    }
    end = h[AT_GUARDS] + GUARD * h[N_GUARDS]
    if any(h[at] != want for at, want in expect.items()) or end != prog.size:
        raise TapeFormatError("the packed program's header does not match its layout")
    if h[N_CONSTS] != consts.size:
        raise TapeFormatError(f"the program expects {h[N_CONSTS]} constants, got "
                              f"{consts.size}")
