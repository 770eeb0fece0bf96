"""The packed program: the one integer layout that the recorder, the passes, the loaders,
the display and the kernels share.

Every module names the program's fields through the constants here; the code generator
writes the same constants into the generated kernel module, so the kernel sources read
``prog[N_INSTR]`` as the Python modules do. No module indexes a program by a bare number.

Layout of a packed ``int32`` program::

    header      HEADER fields, named below (counts, then section offsets)
    inputs      N_INPUTS slot indices          at AT_INPUTS
    params      N_PARAMS slot indices          at AT_PARAMS
    outputs     N_OUTPUTS slot indices         at AT_OUTPUTS
    code        N_INSTR rows of ROW ints       at AT_CODE
    guards      N_GUARDS rows of GUARD ints    at AT_GUARDS

Slots are numbered ``[constants | parameters | inputs | instruction results]``;
``FIRST_ADJOINT`` (``nd``) is the first slot that receives adjoints.

An instruction row is ``(OPCODE, RESULT, ARG_A, ARG_B, ARG_C, SIZE, STRIDE_A, STRIDE_B,
STRIDE_C)``: it applies its op to ``SIZE`` elements (1: scalar; more: a block), element
``e`` reading slot ``ARG_k + e * STRIDE_k`` of each operand ``k`` and writing
``RESULT + e``.
"""

from __future__ import annotations

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
