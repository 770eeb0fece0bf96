"""Names that exist only in the generated kernel module, for ruff, editors and readers.

The kernel files import these under ``if TYPE_CHECKING:``; nothing imports this module at
run time. Each sweep here is written out by :mod:`tapejit._kernels.codegen` from the op
table (``tapejit kernels --op NAME --sweep SWEEP`` prints the branch of one op), and the
tables are derived from ``Op.partial_sources``. Every sweep walks the program's
instructions (``prog[AT_CODE] + ROW * i``) and dispatches on the opcode.
"""

from __future__ import annotations

import numpy as np

#: By ``MAX_ARITY * opcode + k``: where operand ``k``'s partial is (``SRC_*``).
_PSRC: np.ndarray
#: By ``MAX_ARITY * opcode + k``: the constant partial, or the factor of a workspace value.
_PCONST: np.ndarray
#: By opcode: how many partials the forward-partials sweeps store.
_PCNT: np.ndarray
#: By ``MAX_ARITY * opcode + k``: which of them is operand ``k``'s.
_PIDX: np.ndarray


def forward_chunk(prog, consts, P, W, m):
    """Values of ``m`` points (rows of the workspace ``W``)."""


def forward_partials_chunk(prog, consts, P, W, D, m):
    """Values, and the stored local partials in ``D`` (for ``reverse_stored_chunk``)."""


def forward_tangent_chunk(prog, consts, P, W, T, D, nv, m):
    """Values and ``nv`` tangents ``T`` (``D``: scratch partials)."""


def reverse_hvp_chunk(prog, consts, P, W, T, A, Ad, D, S, nv, m):
    """Adjoints ``A`` and their tangents ``Ad`` (forward-over-reverse)."""


def forward_point_sweep(prog, consts, P, W):
    """Values of one point (``W`` flat)."""


def forward_partials_point_sweep(prog, consts, P, W, D):
    """Values and stored partials of one point; returns the end offset in ``D``."""


def forward_tangent_point_sweep(prog, consts, P, W, T, nv):
    """Values and ``nv`` tangents of one point."""


def reverse_hvp_point_sweep(prog, consts, P, W, T, A, Ad, nv):
    """Adjoints and their tangents of one point."""


def _family_reverse(prog, k, consts, P, W, A, g0, m):
    """Instruction ``k``'s family reverse rule (``codegen._family_dispatch``)."""
