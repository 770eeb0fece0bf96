"""What the sweeps' dispatch of instruction families (opcodes from ``FIRST_FAMILY``) reads:
an instruction's operand blocks as the family routines take them.

A family routine sees each operand as a ``(length, w)`` block, points in columns: rows of
the workspace for values that differ per point, or one column read in place from the
constant pool or the shared parameter row for data (never copied into the workspace:
they are not among the program's resident runs). The dispatchers themselves
(``_family_forward`` ...) are generated from ``_program.FAMILIES`` by ``codegen.py``.
"""

import numpy as np

from tapejit._kernels.njit import njit
from tapejit._program import FIRST_ADJOINT, N_CONSTS

# --- kernel source ---


@njit(cache=True, nogil=True)
def _family_operand(prog, consts, P, W, ia, length):
    # Operand slots ia .. ia + length - 1: wholly constants -> the pool; wholly shared
    # parameters -> the parameter row; else workspace rows.
    n = np.int64(length)
    nc = prog[N_CONSTS]
    if ia + n <= nc:
        return consts[ia : ia + n].reshape((n, 1))
    if ia >= nc and ia + n <= prog[FIRST_ADJOINT] and P.shape[0] == 1:
        # float32 parameters (a float32 tape's) as float64, like the workspace; float64
        # ones as they are (no copy)
        return np.asarray(P[0][ia - nc : ia - nc + n], dtype=np.float64).reshape((n, 1))
    return W[ia : ia + n]


@njit(cache=True, nogil=True)
def _family_active(prog, ia, length):
    # 1 when the operand block has slots with adjoints and tangents (>= nd).
    return 1 if length > 0 and ia + length > prog[FIRST_ADJOINT] else 0
