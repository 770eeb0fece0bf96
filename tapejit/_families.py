"""The instruction families of this version, registered in ``_program.FAMILIES``.

Each family is declared once, as a ``Family`` in its module ``_fam_<name>.py`` (attributes,
sizes, check, numpy rule, opcode) with its kernel routines in ``_kernels/fam_<name>.py``;
the recording functions that emit it are with the numpy functions they implement
(``_contract.py``, ...). This module only registers them.
"""

from __future__ import annotations

from ._fam_chol import CHOLESKY, SOLVE_TRIANGULAR
from ._fam_eig import EIG_FAMILIES
from ._fam_loop import LOOP
from ._fam_lu import LU_FAMILIES
from ._fam_matmul import MATMUL
from ._fam_reduce import REDUCE, SCAN
from ._program import FAMILIES, Family


def _register(*families: Family) -> None:
    for f in families:
        if FAMILIES.get(f.opcode, f) is not f:
            raise ValueError(f"opcode {f.opcode} of family {f.name} is taken by "
                             f"{FAMILIES[f.opcode].name}")
        FAMILIES[f.opcode] = f


_register(MATMUL, REDUCE, SCAN, *LU_FAMILIES, CHOLESKY, SOLVE_TRIANGULAR, *EIG_FAMILIES,
          LOOP)

#: The registered families by name.
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES.values()}
