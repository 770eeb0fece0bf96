"""The instruction families of this version, registered in ``_program.FAMILIES``.

Each family's Python side (attributes, sizes, numpy rule) is a module ``_fam_<name>.py``
and its kernel routines ``_kernels/fam_<name>.py``; the recording functions that emit
them are with the numpy functions they implement (``_contract.py``, ...).
"""

from __future__ import annotations

import numpy as np

from . import _fam_chol as chol
from . import _fam_eig as eig
from . import _fam_lu as lu
from . import _fam_reduce as red
from ._fam_matmul import MATMUL
from ._program import FAMILIES, SWEEPS, Family


def _rows(size, operands):
    """``Family.sizes`` from a family module's per-instruction size functions."""
    def sizes(values: np.ndarray) -> np.ndarray:
        return np.array([[size(tuple(v)), *operands(tuple(v))] for v in values.tolist()],
                        dtype=np.int64).reshape(len(values), -1)
    return sizes


def _rules(name: str) -> dict[str, str]:
    return {s: f"{name}_{s.split('_')[0]}" for s in SWEEPS}


CHOLESKY = Family("cholesky", 135, 1, ("n",), _rules("cholesky"), check=chol.cholesky_check,
                  sizes=_rows(chol.cholesky_size, chol.cholesky_operand_sizes),
                  kernel="fam_chol", reference=chol.cholesky_reference,
                  failure="Matrix is not positive definite", blas=True)
SOLVE_TRIANGULAR = Family(
    "solve_triangular", 136, 2, ("n", "k", "lower", "trans", "unit_diagonal"),
    _rules("solve_triangular"), check=chol.solve_triangular_check,
    sizes=_rows(chol.solve_triangular_size, chol.solve_triangular_operand_sizes),
    kernel="fam_chol", reference=chol.solve_triangular_reference,
    failure="Singular triangular matrix (a zero on its diagonal)", blas=True)


def _register(*families: Family) -> None:
    for f in families:
        if FAMILIES.get(f.opcode, f) is not f:
            raise ValueError(f"opcode {f.opcode} of family {f.name} is taken by "
                             f"{FAMILIES[f.opcode].name}")
        FAMILIES[f.opcode] = f




def _operands_then_result(sizes):
    """``Family.sizes`` from a per-instruction ``(operand sizes, result size)``."""
    def out(values: np.ndarray) -> np.ndarray:
        rows = []
        for v in values.tolist():
            operands, result = sizes(tuple(v))
            rows.append([result, *operands])
        return np.array(rows, dtype=np.int64).reshape(len(values), -1)
    return out


def _length_then_result(sizes):
    """``Family.sizes`` from a vectorized ``(operand length, result size)``."""
    def out(values: np.ndarray) -> np.ndarray:
        length, result = sizes(values.astype(np.int64))
        return np.stack([result, length], axis=1)
    return out


REDUCE = Family("reduce", 129, 1, red.ATTRS, _rules("reduce"), check=red.reduce_check,
                sizes=_length_then_result(red.reduce_sizes), kernel="fam_reduce",
                reference=red.reduce_reference)
SCAN = Family("scan", 130, 1, red.ATTRS, _rules("scan"), check=red.scan_check,
              sizes=_length_then_result(red.scan_sizes), kernel="fam_reduce",
              reference=red.scan_reference)
#: What a NaN result of a family means (det and slogdet give numpy's 0 and -inf).
_FAILURES = {"solve": "Singular matrix", "inv": "Singular matrix",
             "eigh": "Eigenvalues did not converge (or a non-finite matrix)",
             "svd": "SVD did not converge (or a non-finite matrix)",
             "qr": "QR of a non-finite matrix"}
LU = tuple(
    Family(f.name, opcode, f.arity, f.attrs, _rules(f.name), check=f.check,
           sizes=_operands_then_result(f.sizes), kernel="fam_lu", reference=f.reference,
           failure=_FAILURES.get(f.name, ""), blas=True)
    for opcode, f in zip((131, 132, 133, 134), lu.LU_FAMILIES, strict=True))

EIG = tuple(
    Family(f.name, opcode, f.arity, f.attrs, _rules(f.name), check=f.check,
           sizes=_operands_then_result(f.sizes), kernel="fam_eig", reference=f.reference,
           failure=_FAILURES[f.name], blas=True)
    for opcode, f in zip((137, 138, 139), eig.EIG_FAMILIES, strict=True))

_register(MATMUL, REDUCE, SCAN, *LU, CHOLESKY, SOLVE_TRIANGULAR, *EIG)

#: The registered families by name.
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES.values()}
