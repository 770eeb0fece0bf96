"""Scalar helpers that the op table's value and partial expressions call.

They live beside the table (``tapejit/_ops.py``) in spirit: the table's expressions are
self-contained given these and tapejit's own ``_sin``, ``_cos``, ``_log``, ``_exp``,
``_expm1``, ``_log1p`` and ``_tanh`` (``libm.py``). ``_azmul`` is the sweeps' product
rule: zero times anything is zero.
"""

from typing import TYPE_CHECKING

from tapejit._kernels.njit import njit

if TYPE_CHECKING:
    from tapejit._kernels.libm import _exp, _log1p

# --- kernel source ---

@njit(cache=True, nogil=True)
def _sign(a):
    if a > 0.0:
        return 1.0
    if a < 0.0:
        return -1.0
    return a * 0.0  # 0.0 stays 0.0, NaN stays NaN


@njit(cache=True, nogil=True)
def _maximum(a, b):
    return a if (a >= b or a != a) else b


@njit(cache=True, nogil=True)
def _minimum(a, b):
    return a if (a <= b or a != a) else b


@njit(cache=True, nogil=True)
def _clip(a, lo, hi):
    return _minimum(_maximum(a, lo), hi)


# Inlined, so that a row loop over it vectorizes (tapejit's own _exp and _log1p).
@njit(cache=True, nogil=True, inline="always")
def _logaddexp(a, b):
    if a == b:
        return a + 0.6931471805599453
    m = _maximum(a, b)
    return m + _log1p(_exp(-abs(a - b)))


@njit(cache=True, nogil=True)
def _azmul(x, y):
    # CppAD's azmul: zero times anything (inf, NaN) is zero.
    if x == 0.0 or y == 0.0:
        return 0.0
    return x * y
