"""Scalar helpers that the op table's value and partial expressions call.

They live beside the table (``tapejit/_ops.py``) in spirit: the table's expressions are
self-contained given these and tapejit's own ``_sin``, ``_cos``, ``_log``, ``_exp``,
``_expm1``, ``_log1p`` and ``_tanh`` (``libm.py``). ``_azmul`` is the sweeps' product
rule: zero times anything is zero.
"""

import math
from typing import TYPE_CHECKING

import numpy as np

from tapejit._kernels.constants import MAX_POLYGAMMA_ORDER, MAX_SINC_ORDER
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
def _sinc_derivative(n, x):
    # d^n/dx^n sinc(x) = pi**n f^(n)(y), f(y) = sin(y) / y, y = pi x, for n = 0, 1, ..., 16
    # (NaN for any other n). Near 0 the Taylor series
    # f^(n)(y) = sum over 2k >= n of (-1)**k y**(2k - n) / ((2k + 1) (2k - n)!); farther out
    # Leibniz's rule on sin(y) * (1 / y), whose terms n! / y**(n + 1) cancel near 0
    if not (0.0 <= n <= MAX_SINC_ORDER and n == math.floor(n)):
        return math.nan
    if n == 0.0:
        return _sinc(x)
    m = int(n)
    y = math.pi * x
    f = 0.0
    if abs(y) < 1.0 + 0.5 * m:
        k = (m + 1) // 2
        p = 1.0 if 2 * k == m else y  # y**(2k - n) / (2k - n)!
        for _ in range(200):
            term = p / (2.0 * k + 1.0)
            f += -term if k % 2 == 1 else term
            if abs(term) <= 1e-17 * abs(f):
                break
            j = 2.0 * k - m
            p *= y * y / ((j + 1.0) * (j + 2.0))
            k += 1
    else:
        sy, cy = math.sin(y), math.cos(y)
        coef = 1.0  # n! / (n - j)!
        inv = 1.0 / y
        yp = inv  # y**-(j + 1)
        for j in range(m + 1):
            i = (m - j) % 4  # the (n - j)-th derivative of sin: sin, cos, -sin, -cos
            d = sy if i == 0 else (cy if i == 1 else (-sy if i == 2 else -cy))
            f += -coef * d * yp if j % 2 == 1 else coef * d * yp
            coef *= m - j
            yp *= inv
    return math.pi ** m * f


@njit(cache=True, nogil=True)
def _heaviside(a, b):
    if a != a:
        return a
    if a == 0.0:
        return b
    return 0.0 if a < 0.0 else 1.0


# --- scipy.special: the formulas of scipy's own implementations ------------------------
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


#: B_2, B_4, ..., B_16: the polygamma functions' asymptotic series
_BERNOULLI = (1.0 / 6.0, -1.0 / 30.0, 1.0 / 42.0, -1.0 / 30.0, 5.0 / 66.0, -691.0 / 2730.0,
              7.0 / 6.0, -3617.0 / 510.0)


@njit(cache=True, nogil=True)
def _polygamma_pos(x, m):
    # |psi^(m)(x)| / (m - 1)! for x > 0 and m >= 1: shifted up to z >= 20 + m by the exact
    # recurrence (smallest terms summed first), then the asymptotic series
    # z**-m (1 + m / (2 z) + sum_k B_2k C(2k + m - 1, 2k) z**-2k)
    k0 = int(20.0 + m - x) + 1 if x < 20.0 + m else 0
    w = 1.0 / (x + k0)
    w2 = w * w
    c = 0.5 * m * (m + 1.0)
    p = w2
    series = 0.0
    for k in range(1, len(_BERNOULLI) + 1):
        series += _BERNOULLI[k - 1] * c * p
        c *= (2.0 * k + m) * (2.0 * k + m + 1.0) / ((2.0 * k + 1.0) * (2.0 * k + 2.0))
        p *= w2
    s = w ** m * (1.0 + 0.5 * m * w + series)
    for j in range(k0 - 1, -1, -1):
        s += m / (x + j) ** (m + 1)
    return s


@njit(cache=True, nogil=True)
def _cot_derivative(c, m):
    # the m-th derivative of cot at u, from c = cot(u): P_0(c) = c,
    # P_k+1(c) = -(1 + c**2) P_k'(c), coefficients in q (degree k + 1, lowest first)
    q = np.zeros(m + 2)
    nxt = np.zeros(m + 2)
    q[1] = 1.0
    for k in range(m):
        for i in range(k + 3):
            up = (i + 1) * q[i + 1] if i + 1 <= k + 1 else 0.0
            down = (i - 1) * q[i - 1] if i >= 2 else 0.0
            nxt[i] = -(up + down)
        q, nxt = nxt, q
    out = q[m + 1]  # Horner
    for i in range(m, -1, -1):
        out = out * c + q[i]
    return out


@njit(cache=True, nogil=True)
def _polygamma(n, x):
    # psi^(n)(x), scipy.special.polygamma's function, for n = 0, 1, 2, ..., 170 (NaN for
    # any other n); x <= 0 by reflection, psi^(n)(x) = (-1)**n psi^(n)(1 - x) - pi**(n + 1)
    # cot^(n)(pi x), cot of the distance to the nearest integer (exact)
    if not (0.0 <= n <= MAX_POLYGAMMA_ORDER and n == math.floor(n)) or x != x:
        return math.nan
    if n == 0.0:
        return _digamma(x)
    m = int(n)
    scale = 1.0  # (m - 1)!
    for k in range(2, m):
        scale *= k
    if x > 0.0:
        return (scale if m % 2 == 1 else -scale) * _polygamma_pos(x, m)
    if x == np.rint(x):  # a pole (0, -1, -2, ...) or -inf: scipy's (-1)**(n + 1) inf
        return math.inf if m % 2 == 1 else -math.inf
    r = x - np.rint(x)
    c = math.cos(math.pi * r) / math.sin(math.pi * r)
    return -scale * _polygamma_pos(1.0 - x, m) - math.pi ** (m + 1) * _cot_derivative(c, m)
