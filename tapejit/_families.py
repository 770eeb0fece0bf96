"""The instruction families of this version, registered in ``_program.FAMILIES``.

Each family's Python side (attributes, sizes, numpy rule) is a module ``_fam_<name>.py``
and its kernel routines ``_kernels/fam_<name>.py``; the recording functions that emit
them are with the numpy functions they implement (``_contract.py``, ...).
"""

from __future__ import annotations

from ._fam_matmul import MATMUL
from ._program import FAMILIES, Family


def _register(*families: Family) -> None:
    for f in families:
        if FAMILIES.get(f.opcode, f) is not f:
            raise ValueError(f"opcode {f.opcode} of family {f.name} is taken by "
                             f"{FAMILIES[f.opcode].name}")
        FAMILIES[f.opcode] = f


_register(MATMUL)

#: The registered families by name.
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES.values()}
