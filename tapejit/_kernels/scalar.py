"""Scalar helpers that the op table's value and partial expressions call.

They live beside the table (``tapejit/_ops.py``) in spirit: the table's expressions are
self-contained given these and tapejit's own ``_sin``, ``_cos``, ``_log``, ``_exp``,
``_expm1``, ``_log1p`` and ``_tanh`` (``libm.py``). ``_azmul`` is the sweeps' product
rule: zero times anything is zero.
"""

import math
from typing import TYPE_CHECKING

import numpy as np

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


# --- numpy's division family (npy_divmod: fmod, then the sign correction) -------------
@njit(cache=True, nogil=True)
def _mod(a, b):
    # numpy's remainder: fmod (exact), moved by b where its sign differs from b's
    m = np.fmod(a, b)
    if b == 0.0:
        return m
    if m != 0.0:
        if (b < 0.0) != (m < 0.0):
            m += b
    else:
        m = math.copysign(0.0, b)
    return m


@njit(cache=True, nogil=True)
def _floordiv(a, b):
    # numpy's floor_divide: (a - fmod(a, b)) / b, corrected by the sign and snapped to the
    # nearest integer (1.0 // 0.1 is 9.0, where floor(1.0 / 0.1) is 10.0)
    if b == 0.0:
        return a / b
    m = np.fmod(a, b)
    d = (a - m) / b
    if m != 0.0 and (b < 0.0) != (m < 0.0):
        d -= 1.0
    if d == 0.0:
        return math.copysign(0.0, a / b)
    f = np.floor(d)
    if d - f > 0.5:
        f += 1.0
    return f


@njit(cache=True, nogil=True)
def _trunc_quotient(a, b, r):
    # the integer n of fmod's r = a - n * b (exact in r: the rounding is in the division)
    return np.rint((a - r) / b)


# --- NaN-ignoring extremes, numpy's logaddexp2, sinc, heaviside -----------------------
@njit(cache=True, nogil=True)
def _fmax(a, b):
    return a if (a >= b or b != b) else b


@njit(cache=True, nogil=True)
def _fmin(a, b):
    return a if (a <= b or b != b) else b


@njit(cache=True, nogil=True)
def _logaddexp2(a, b):
    if a == b:  # also equal infinities, without inf - inf
        return a + 1.0
    t = a - b
    if t > 0.0:
        return a + 1.4426950408889634 * math.log1p(np.exp2(-t))
    if t <= 0.0:
        return b + 1.4426950408889634 * math.log1p(np.exp2(t))
    return t  # NaN


@njit(cache=True, nogil=True)
def _sinc(a):
    # numpy's own formula, its 1e-20 stand-in for 0 included (bit for bit the same)
    y = math.pi * (1.0e-20 if a == 0.0 else a)
    return math.sin(y) / y


@njit(cache=True, nogil=True)
def _sinc_d1(a):
    # d/dx sin(pi x) / (pi x) = pi f'(y), y = pi x; the Taylor series of f' where the closed
    # form (y cos y - sin y) / y**2 cancels
    y = math.pi * a
    if abs(y) < 1.0:
        z = y * y
        p = y
        fact = 6.0
        s = 0.0
        for k in range(1, 12):
            term = 2.0 * k * p / fact
            s += -term if k % 2 == 1 else term
            p *= z
            fact *= (2.0 * k + 2.0) * (2.0 * k + 3.0)
        return math.pi * s
    return math.pi * (y * math.cos(y) - math.sin(y)) / (y * y)


@njit(cache=True, nogil=True)
def _sinc_d2(a):
    # pi**2 f''(y): ((2 - y**2) sin y - 2 y cos y) / y**3, its Taylor series near 0
    y = math.pi * a
    if abs(y) < 1.0:
        z = y * y
        p = 1.0
        fact = 6.0
        s = 0.0
        for k in range(1, 12):
            term = 2.0 * k * (2.0 * k - 1.0) * p / fact
            s += -term if k % 2 == 1 else term
            p *= z
            fact *= (2.0 * k + 2.0) * (2.0 * k + 3.0)
        return math.pi * math.pi * s
    return math.pi * math.pi * ((2.0 - y * y) * math.sin(y) - 2.0 * y * math.cos(y)) / (
        y * y * y)


@njit(cache=True, nogil=True)
def _heaviside(a, b):
    if a != a:
        return a
    if a == 0.0:
        return b
    return 0.0 if a < 0.0 else 1.0


# --- scipy.special: the formulas of scipy's own implementations ------------------------
@njit(cache=True, nogil=True)
def _expit_d1(a):
    # r (1 - r) without 1 - r cancelling to 0 for large a
    e = math.exp(-abs(a))
    return e / ((1.0 + e) * (1.0 + e))


@njit(cache=True, nogil=True)
def _expit_d2(a):
    # r (1 - r) (1 - 2 r), 1 - 2 r = -sign(a) (1 - e) / (1 + e)
    e = math.exp(-abs(a))
    d = e / ((1.0 + e) * (1.0 + e)) * (1.0 - e) / (1.0 + e)
    return -d if a > 0.0 else d


@njit(cache=True, nogil=True)
def _logit(a):
    # scipy's: log(x / (1 - x)), and log1p differences around 1/2 where that cancels
    if a < 0.3 or a > 0.65:
        return math.log(a / (1.0 - a))
    s = 2.0 * (a - 0.5)
    return math.log1p(s) - math.log1p(-s)


@njit(cache=True, nogil=True)
def _erf(a):
    return math.erf(a)


@njit(cache=True, nogil=True)
def _erfc(a):
    return math.erfc(a)


@njit(cache=True, nogil=True)
def _gammaln(a):
    # log|Gamma(a)|; scipy's gammaln(-inf) is -inf where the C library's lgamma gives +inf
    if a == -math.inf:
        return a
    return math.lgamma(a)


@njit(cache=True, nogil=True)
def _xlogy(a, b):
    if a == 0.0 and b == b:
        return 0.0
    return a * math.log(b)


@njit(cache=True, nogil=True)
def _xlog1py(a, b):
    if a == 0.0 and b == b:
        return 0.0
    return a * math.log1p(b)


@njit(cache=True, nogil=True)
def _digamma_1_2(x):
    # Boost's rational approximation on [1, 2] around the positive root (as scipy)
    g = x - 1569415565.0 / 1073741824.0
    g -= (381566830.0 / 1073741824.0) / 1073741824.0
    g -= 0.9016312093258695918615325266959189453125e-19
    t = x - 1.0
    p = (((((-0.0020713321167745952 * t - 0.045251321448739056) * t - 0.28919126444774784) * t
           - 0.65031853770896507) * t - 0.32555031186804491) * t + 0.25479851061131551)
    q = ((((((-0.55789841321675513e-6 * t + 0.0021284987017821144) * t
             + 0.054151797245674225) * t + 0.43593529692665969) * t + 1.4606242909763515) * t
          + 2.0767117023730469) * t + 1.0)
    return g * 0.99558162689208984375 + g * (p / q)


@njit(cache=True, nogil=True)
def _digamma(x):
    # cephes' psi, as scipy.special.digamma: reflection for x < 0, the harmonic numbers at
    # integers up to 10, recurrence to [1, 2] below 10, the asymptotic series above
    if x != x or x == math.inf:
        return x
    if x == -math.inf:
        return math.nan
    if x == 0.0:
        return math.copysign(math.inf, -x)
    y = 0.0
    if x < 0.0:
        r = x - np.trunc(x)
        if r == 0.0:
            return math.nan
        y = -math.pi / math.tan(math.pi * r)
        x = 1.0 - x
    if x <= 10.0 and x == np.floor(x):
        for i in range(1, int(x)):
            y += 1.0 / i
        return y - 0.5772156649015329
    if x < 1.0:
        y -= 1.0 / x
        x += 1.0
    elif x < 10.0:
        while x > 2.0:
            x -= 1.0
            y += 1.0 / x
    if 1.0 <= x <= 2.0:
        return y + _digamma_1_2(x)
    z = 0.0
    if x < 1.0e17:
        w = 1.0 / (x * x)
        z = w * ((((((8.33333333333333333333e-2 * w - 2.10927960927960927961e-2) * w
                     + 7.57575757575757575758e-3) * w - 4.16666666666666666667e-3) * w
                   + 3.96825396825396825397e-3) * w - 8.33333333333333333333e-3) * w
                 + 8.33333333333333333333e-2)
    return y + (math.log(x) - 0.5 / x - z)


@njit(cache=True, nogil=True)
def _polygamma_pos(x, order):
    # psi'(x) (order 1) or psi''(x) (order 2) for x > 0: shifted to z >= 20 (exact
    # recurrence, smallest terms summed first), then the asymptotic series in 1/z to B_14
    n = int(20.0 - x) + 1 if x < 20.0 else 0
    w = 1.0 / (x + n)
    w2 = w * w
    if order == 1:
        s = w + 0.5 * w2 + w * w2 * (1.0 / 6.0 + w2 * (-1.0 / 30.0 + w2 * (1.0 / 42.0 + w2 * (
            -1.0 / 30.0 + w2 * (5.0 / 66.0 + w2 * (-691.0 / 2730.0 + w2 * (7.0 / 6.0)))))))
        for k in range(n - 1, -1, -1):
            t = x + k
            s += 1.0 / (t * t)
        return s
    s = w2 + w * w2 + w2 * w2 * (0.5 + w2 * (-1.0 / 6.0 + w2 * (1.0 / 6.0 + w2 * (
        -0.3 + w2 * (5.0 / 6.0 + w2 * (-691.0 / 210.0 + w2 * 17.5))))))
    for k in range(n - 1, -1, -1):
        t = x + k
        s += 2.0 / (t * t * t)
    return -s


@njit(cache=True, nogil=True)
def _trigamma(x):
    # psi'(x); x <= 0 by reflection: psi'(x) = pi**2 / sin(pi x)**2 - psi'(1 - x), the sine
    # of the distance to the nearest integer (exact), so poles give +inf
    if x != x:
        return x
    if x > 0.0:
        return _polygamma_pos(x, 1)
    r = x - np.rint(x)
    s = math.sin(math.pi * r)
    return math.pi * math.pi / (s * s) - _polygamma_pos(1.0 - x, 1)


@njit(cache=True, nogil=True)
def _tetragamma(x):
    # psi''(x); x <= 0: psi''(x) = psi''(1 - x) - 2 pi**3 cos(pi x) / sin(pi x)**3
    if x != x:
        return x
    if x > 0.0:
        return _polygamma_pos(x, 2)
    r = x - np.rint(x)
    s = math.sin(math.pi * r)
    return _polygamma_pos(1.0 - x, 2) - 2.0 * math.pi ** 3 * math.cos(math.pi * r) / (s * s * s)
