"""Constants of the kernel sources beyond the program's fields (``tapejit/_program.py``).

The generator writes them into the generated kernel module next to the program's
constants (:func:`constants_source`), so kernel files name them as Python modules do.
"""

from __future__ import annotations

from tapejit._ops import MAX_POLYGAMMA_ORDER, MAX_SINC_ORDER  # noqa: F401 - KERNEL_CONSTANTS
from tapejit._program import LAST_OPCODE, MAX_ARITY

# Where the reverse sweeps find the local partial of operand ``k`` of an op, by
# ``_PSRC[MAX_ARITY * opcode + k]`` (see ``Op.partial_sources`` in ``tapejit/_ops.py``):
SRC_ZERO = 0  #: nowhere: the partial is zero
SRC_STORED = 1  #: stored by the forward-partials sweeps in ``D``
SRC_CONST = 2  #: the constant ``_PCONST[MAX_ARITY * opcode + k]``
SRC_A = 3  #: operand a's value times the factor ``_PCONST[...]``; operand k's is SRC_A + k
SRC_B = 4
SRC_C = 5
SRC_R = 6  #: the result's value times the factor (``d exp(a) = r``)
#: Opcodes are below this (the partial-source tables have a row for each; a family's is
#: all SRC_ZERO: the sweeps dispatch families before reading them).
N_OPCODES = LAST_OPCODE + 1
#: Second partials of one instruction at most: the upper triangle of ``MAX_ARITY``.
N_SECOND = MAX_ARITY * (MAX_ARITY + 1) // 2

# The scalar program of a tape of scalar instructions (``tapejit/_scalar_program.py``):
# an int32 array of a header, then a row per instruction (its opcode and operand slots;
# instruction i writes slot nf + i), then the reverse sweep's edges in the order it runs
# them, as three columns of ``n_edges`` ints: adjoint slot ``target`` gains adjoint
# ``from`` times the edge's factor (a float64 array beside) times value ``source`` (a
# workspace slot, a stored partial after the slots, or the 1.0 after those).
SP_ROWS = 0  #: header: instructions
SP_EDGES = 1  #: header: edges
SP_STORED = 2  #: header: stored partials
SP_HEADER = 3
SP_ROW = 4  #: ints per row: opcode, operands a, b, c
EDGE_TARGETS = 0  #: the edge columns, in this order after the rows
EDGE_FROMS = 1
EDGE_SOURCES = 2
EDGE_COLUMNS = 3

# The ``reduce`` and ``scan`` families' kinds (attribute ``kind``, ``_kernels/fam_reduce.py``).
RED_SUM = 0
RED_PROD = 1
RED_MAX = 2
RED_MIN = 3
SCAN_CUMSUM = 0
SCAN_CUMPROD = 1
# Positions of the ``loop`` family's attributes (``_fam_loop.LOOP_ATTRS``).
LOOP_BODY = 0
LOOP_LENGTH = 1
LOOP_CARRY = 2
LOOP_X = 3
LOOP_CLOSURE = 4
LOOP_Y = 5
LOOP_EVERY = 6

#: The names above, written into the generated module.
KERNEL_CONSTANTS: tuple[str, ...] = (
    "SRC_ZERO", "SRC_STORED", "SRC_CONST", "SRC_A", "SRC_B", "SRC_C", "SRC_R", "N_OPCODES",
    "N_SECOND", "SP_ROWS", "SP_EDGES", "SP_STORED", "SP_HEADER", "SP_ROW", "EDGE_TARGETS",
    "EDGE_FROMS", "EDGE_SOURCES", "EDGE_COLUMNS", "RED_SUM", "RED_PROD", "RED_MAX",
    "RED_MIN", "SCAN_CUMSUM", "SCAN_CUMPROD", "LOOP_BODY", "LOOP_LENGTH", "LOOP_CARRY",
    "LOOP_X", "LOOP_CLOSURE", "LOOP_Y", "LOOP_EVERY",
    # the op table's (tapejit/_ops.py), for scalar.py's polygamma and sinc derivatives
    "MAX_POLYGAMMA_ORDER", "MAX_SINC_ORDER",
)


def constants_source() -> str:
    """The kernel constants as Python assignments, for the generated module."""
    g = globals()
    return "\n".join(f"{name} = {g[name]!r}" for name in KERNEL_CONSTANTS) + "\n"
