"""The ``matmul`` instruction family on the Python side: attributes, sizes, numpy rule.

Kernel routines: ``tapejit/_kernels/fam_matmul.py``. Attributes ``(batch, m, k, n,
batch_a, batch_b, trans_a, trans_b)``: ``batch`` products of an ``(m, k)`` by a
``(k, n)`` matrix; an operand without the batch flag is one matrix used for every
product; a transposed operand is stored ``(k, m)`` (``(n, k)`` for ``b``).
"""

from __future__ import annotations

import numpy as np

from ._program import Family

ATTRS = ("batch", "m", "k", "n", "batch_a", "batch_b", "trans_a", "trans_b")


def _sizes(v: np.ndarray) -> np.ndarray:
    batch, m, k, n, ba, bb = (v[:, j] for j in range(6))
    return np.stack([batch * m * n, np.where(ba != 0, batch, 1) * m * k,
                     np.where(bb != 0, batch, 1) * k * n], axis=1)


def _check(v: np.ndarray) -> np.ndarray:
    return (v[:, :4] < 1).any(axis=1) | ((v[:, 4:] != 0) & (v[:, 4:] != 1)).any(axis=1)


def _matrices(x: np.ndarray, count: int, rows: int, cols: int, trans: int) -> np.ndarray:
    if trans:
        return np.reshape(x, (count, cols, rows)).transpose(0, 2, 1)
    return np.reshape(x, (count, rows, cols))


def _stacked(x: np.ndarray, count: int, rows: int, cols: int, trans: int) -> np.ndarray:
    """Operand block ``(length, points)`` as ``(points, count, rows, cols)`` matrices."""
    p = np.shape(x)[1]
    x = np.moveaxis(np.reshape(x, (count, cols, rows, p) if trans else
                               (count, rows, cols, p)), -1, 0)
    return x.transpose(0, 1, 3, 2) if trans else x


def points_reference(attrs, a, b, c=None) -> np.ndarray:
    """The products at many points: operands ``(length, points)``, result
    ``(batch*m*n, points)`` (numpy's matmul)."""
    batch, m, k, n, ba, bb, ta, tb = (int(v) for v in attrs)
    A = _stacked(np.asarray(a), batch if ba else 1, m, k, ta)
    B = _stacked(np.asarray(b), batch if bb else 1, k, n, tb)
    p = A.shape[0]
    return np.broadcast_to(np.matmul(A, B), (p, batch, m, n)).reshape(p, batch * m * n).T


def reference(attrs, a, b, c=None) -> np.ndarray:
    """The products at one point, flat (numpy's matmul)."""
    return points_reference(attrs, np.reshape(a, (-1, 1)), np.reshape(b, (-1, 1)))[:, 0]


def vjp(attrs, operands, result, cotangent, needed=(True, True)) -> tuple:
    """Reverse rule as traced numpy (nested differentiation): ``Abar = G B^T`` and
    ``Bbar = A^T G``, each one product (summed over the batch for an operand shared by
    every product), stored as its operand is (transposed or not)."""
    batch, m, k, n, ba, bb, ta, tb = (int(v) for v in attrs)
    A = _matrices(operands[0], batch if ba else 1, m, k, ta)
    B = _matrices(operands[1], batch if bb else 1, k, n, tb)
    G = np.reshape(cotangent, (batch, m, n))
    sa, sb = ("zmk" if ba else "mk"), ("zkn" if bb else "kn")
    dA = np.einsum(f"zmn,{sb}->{sa}", G, B if bb else B[0]) if needed[0] else None
    dB = np.einsum(f"{sa},zmn->{sb}", A if ba else A[0], G) if needed[1] else None

    def stored(d, trans):
        if d is None:
            return None
        return np.reshape(np.swapaxes(d, -1, -2) if trans else d, -1)

    return stored(dA, ta), stored(dB, tb)


MATMUL = Family("matmul", 128, 2, ATTRS,
                check=_check, sizes=_sizes, kernel="fam_matmul", reference=reference,
                points_reference=points_reference,
                blas=True, vjp=vjp)
