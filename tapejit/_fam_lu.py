"""The LU families' Python side: ``solve``, ``inv``, ``det`` and ``slogdet``.

For each family: its attributes and sizes, a check of attribute values, a numpy
reference at one point, and the recording of the numpy function it implements. The
recording functions take the recording call ``emit_family(name, operands, attrs, shape)``
as their first argument (operands flattened in C order; it returns a tracer, or the
numpy result when nothing is traced), so the numpy handlers bind it.

A singular matrix gives NaN where numpy raises ``LinAlgError`` (``solve``, ``inv``), in
the references as in the kernels (``tapejit/_kernels/fam_lu.py``); ``det`` and
``slogdet`` give numpy's 0 and ``(0, -inf)``.

Stacked matrices (more than 2 dimensions) record one instruction per matrix.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from tapejit._errors import TracingError
from tapejit._program import (
    MAX_FAMILY_SIZE,
    EmitFamily,
    Family,
    attr_columns,
    sizes_by_row,
)
from tapejit._tracer import Tracer

# -- attributes and sizes ----------------------------------------------------------------

def solve_check(values: np.ndarray) -> np.ndarray:
    """Bad rows of ``solve`` attributes ``(n, k)``: negative, or an operand too large.

    ``k == 0`` (no right-hand sides) is accepted: the result is empty.
    """
    v = attr_columns(values)
    n, k = v[:, 0], v[:, 1]
    return (n < 0) | (k < 0) | (n * n > MAX_FAMILY_SIZE) | (n * k > MAX_FAMILY_SIZE)


def square_check(values: np.ndarray) -> np.ndarray:
    """Bad rows of ``inv``, ``det`` or ``slogdet`` attributes ``(n,)``.

    ``n == 0`` is accepted, as numpy does (``det`` is 1, ``slogdet`` ``(1, 0)``).
    """
    n = attr_columns(values)[:, 0]
    return (n < 0) | (n * n > MAX_FAMILY_SIZE)


def solve_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size and operand lengths of ``solve`` with attributes ``(n, k)``."""
    n, k = attrs
    return n * k, n * n, n * k


def inv_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size and operand length of ``inv`` with attributes ``(n,)``."""
    (n,) = attrs
    return n * n, n * n


def det_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size and operand length of ``det`` with attributes ``(n,)``."""
    (n,) = attrs
    return 1, n * n


def slogdet_sizes(attrs: tuple[int, ...]) -> tuple[int, ...]:
    """Result size (sign, log|det|) and operand length of ``slogdet``."""
    (n,) = attrs
    return 2, n * n


# -- numpy references at one point -------------------------------------------------------

def solve_reference(attrs: tuple[int, ...], a: np.ndarray, b: np.ndarray,
                    c: np.ndarray | None = None) -> np.ndarray:
    """``A^{-1} B`` flattened; NaN if ``A`` is singular."""
    n, k = attrs
    try:
        x = np.linalg.solve(np.reshape(a, (n, n)), np.reshape(b, (n, k)))
    except np.linalg.LinAlgError:
        return np.full(n * k, np.nan)
    return x.ravel()


def inv_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                  c: Any = None) -> np.ndarray:
    """``A^{-1}`` flattened; NaN if ``A`` is singular."""
    (n,) = attrs
    try:
        return np.linalg.inv(np.reshape(a, (n, n))).ravel()
    except np.linalg.LinAlgError:
        return np.full(n * n, np.nan)


def det_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                  c: Any = None) -> np.ndarray:
    """``[det(A)]``."""
    (n,) = attrs
    return np.array([np.linalg.det(np.reshape(a, (n, n)))])


def slogdet_reference(attrs: tuple[int, ...], a: np.ndarray, b: Any = None,
                      c: Any = None) -> np.ndarray:
    """``[sign, log|det(A)|]``."""
    (n,) = attrs
    sign, logdet = np.linalg.slogdet(np.reshape(a, (n, n)))
    return np.array([sign, logdet])


# -- reverse rules as traced numpy (nested differentiation, ``tapejit/_nested.py``) ------
# The kernels' rules, written with the same functions, which record these families again.

def solve_vjp(attrs, operands, result, cotangent, needed=(True, True)) -> tuple:
    """``Bbar = A^-T Xbar``, ``Abar = -Bbar X^T``."""
    n, k = (int(v) for v in attrs)
    A = np.reshape(operands[0], (n, n))
    b_bar = np.linalg.solve(A.T, np.reshape(cotangent, (n, k)))
    a_bar = -(b_bar @ np.reshape(result, (n, k)).T) if needed[0] else None
    return (None if a_bar is None else np.reshape(a_bar, -1),
            np.reshape(b_bar, -1) if needed[1] else None)


def inv_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """``Abar = -X^T Xbar X^T`` with ``X = A^-1``."""
    (n,) = (int(v) for v in attrs)
    Xt = np.reshape(result, (n, n)).T
    return (np.reshape(-(Xt @ np.reshape(cotangent, (n, n)) @ Xt), -1),)


def _cofactors(A: Any, n: int) -> Any:
    """The cofactor matrix (the derivative of ``det``) from the minors' determinants:
    exact at a singular matrix."""
    if n == 1:
        return np.ones((1, 1))
    rest = [[j for j in range(n) if j != i] for i in range(n)]
    return np.stack([np.stack([(-1.0) ** (i + j) * np.linalg.det(A[np.ix_(rest[i], rest[j])])
                               for j in range(n)]) for i in range(n)])


def det_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """``Abar = g cof(A)``: cofactors up to order 3 (as the kernels), else
    ``g det(A) A^-T``."""
    (n,) = (int(v) for v in attrs)
    if n == 0:
        return (None,)
    A = np.reshape(operands[0], (n, n))
    d = _cofactors(A, n) if n <= 3 else np.reshape(result, ()) * np.linalg.inv(A).T
    return (np.reshape(np.reshape(cotangent, ()) * d, -1),)


def slogdet_vjp(attrs, operands, result, cotangent, needed=(True,)) -> tuple:
    """``Abar = g A^-T`` for ``log|det|``; the sign's derivative is 0."""
    (n,) = (int(v) for v in attrs)
    if n == 0:
        return (None,)
    A = np.reshape(operands[0], (n, n))
    return (np.reshape(np.reshape(cotangent, (2,))[1] * np.linalg.inv(A).T, -1),)


def _lu(name: str, opcode: int, arity: int, attrs: tuple[str, ...], check, sizes,
        reference, failure: str = "", vjp=None) -> Family:
    return Family(name, opcode, arity, attrs, check=check,
                  sizes=sizes_by_row(sizes), kernel="fam_lu", reference=reference,
                  failure=failure, blas=True, vjp=vjp)


#: The families of this module (a NaN result of ``det`` and ``slogdet`` is numpy's 0
#: and ``-inf``, not a failure).
LU_FAMILIES = (
    _lu("solve", 131, 2, ("n", "k"), solve_check, solve_sizes, solve_reference,
        "Singular matrix", solve_vjp),
    _lu("inv", 132, 1, ("n",), square_check, inv_sizes, inv_reference, "Singular matrix",
        inv_vjp),
    _lu("det", 133, 1, ("n",), square_check, det_sizes, det_reference, vjp=det_vjp),
    _lu("slogdet", 134, 1, ("n",), square_check, slogdet_sizes, slogdet_reference,
        vjp=slogdet_vjp),
)


# -- recording ---------------------------------------------------------------------------

class SlogdetResult(NamedTuple):
    """``(sign, logabsdet)``, as ``numpy.linalg.slogdet`` returns them."""

    sign: Any
    logabsdet: Any


def _operand(x: Any, what: str) -> Any:
    if isinstance(x, Tracer):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TracingError(f"numpy.linalg.{what} of an array of dtype {arr.dtype} cannot be "
                           "traced; expected real numbers")
    return arr


def _square(a: Any) -> int:
    if a.ndim < 2:
        raise np.linalg.LinAlgError(f"{a.ndim}-dimensional array given. Array must be at "
                                    "least two-dimensional")
    if a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")
    return a.shape[-1]


def _flat(x: Any) -> Any:
    return x.reshape(-1)


def _each(batch: tuple[int, ...], shape: tuple[int, ...],
          one: Callable[[tuple[int, ...]], Any]) -> Any:
    # One instruction per stacked matrix, the results stacked back (np.stack records
    # no arithmetic). An empty stack has no elements: nothing to record.
    if not batch:
        return one(())
    if 0 in batch:
        return np.zeros(batch + shape)
    parts = [one(idx) for idx in itertools.product(*(range(s) for s in batch))]
    stacked = np.stack(parts)
    return stacked.reshape(batch + tuple(stacked.shape[1:]))


def _pick(x: Any, batch: tuple[int, ...], idx: tuple[int, ...]) -> Any:
    # Matrix idx of x, whose leading axes broadcast against batch.
    lead = x.ndim - 2
    own = tuple(0 if x.shape[d] == 1 else i
                for d, i in zip(range(lead), idx[len(batch) - lead:], strict=True))
    return x[own] if own else x


def record_solve(emit_family: EmitFamily, a: Any, b: Any) -> Any:
    """``numpy.linalg.solve(a, b)``: ``b`` is one vector when 1-D, else matrices (numpy 2).

    Parameters
    ----------
    emit_family : callable
        The recording call.
    a : array_like or Tracer
        ``(..., n, n)``.
    b : array_like or Tracer
        ``(n,)`` or ``(..., n, k)``, leading axes broadcasting against ``a``'s.

    Returns
    -------
    Tracer or numpy.ndarray
        ``(..., n)`` or ``(..., n, k)``.
    """
    a = _operand(a, "solve")
    b = _operand(b, "solve")
    n = _square(a)
    vector = b.ndim == 1
    if vector:
        if b.shape[0] != n:
            raise ValueError(f"solve: b has {b.shape[0]} rows, a is {n} x {n}")
        batch = tuple(a.shape[:-2])
        return _each(batch, (n,), lambda idx: emit_family(
            "solve", [_flat(_pick(a, batch, idx)), b], (n, 1), (n,)))
    if b.shape[-2] != n:
        raise ValueError(f"solve: b has {b.shape[-2]} rows, a is {n} x {n}")
    k = b.shape[-1]
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    return _each(batch, (n, k), lambda idx: emit_family(
        "solve", [_flat(_pick(a, batch, idx)), _flat(_pick(b, batch, idx))], (n, k), (n, k)))


def record_inv(emit_family: EmitFamily, a: Any) -> Any:
    """``numpy.linalg.inv(a)`` of ``(..., n, n)``."""
    a = _operand(a, "inv")
    n = _square(a)
    batch = tuple(a.shape[:-2])
    return _each(batch, (n, n), lambda idx: emit_family(
        "inv", [_flat(_pick(a, batch, idx))], (n,), (n, n)))


def record_det(emit_family: EmitFamily, a: Any) -> Any:
    """``numpy.linalg.det(a)`` of ``(..., n, n)``: shape ``(...)``."""
    a = _operand(a, "det")
    n = _square(a)
    batch = tuple(a.shape[:-2])
    return _each(batch, (), lambda idx: emit_family(
        "det", [_flat(_pick(a, batch, idx))], (n,), ()))


def record_slogdet(emit_family: EmitFamily, a: Any) -> SlogdetResult:
    """``numpy.linalg.slogdet(a)`` of ``(..., n, n)``: sign and log|det|, shape ``(...)``."""
    a = _operand(a, "slogdet")
    n = _square(a)
    batch = tuple(a.shape[:-2])
    both = _each(batch, (2,), lambda idx: emit_family(
        "slogdet", [_flat(_pick(a, batch, idx))], (n,), (2,)))
    return SlogdetResult(both[..., 0], both[..., 1])
