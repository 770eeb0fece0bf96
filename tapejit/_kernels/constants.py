"""Constants of the kernel sources beyond the program's fields (``tapejit/_program.py``).

The generator writes them into the generated kernel module next to the program's
constants (:func:`constants_source`), so kernel files name them as Python modules do.
"""

from __future__ import annotations

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

#: The names above, written into the generated module.
KERNEL_CONSTANTS: tuple[str, ...] = (
    "SRC_ZERO", "SRC_STORED", "SRC_CONST", "SRC_A", "SRC_B", "SRC_C", "SRC_R", "N_OPCODES",
    "N_SECOND",
)


def constants_source() -> str:
    """The kernel constants as Python assignments, for the generated module."""
    g = globals()
    return "\n".join(f"{name} = {g[name]!r}" for name in KERNEL_CONSTANTS) + "\n"
