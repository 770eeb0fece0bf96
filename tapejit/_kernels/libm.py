"""Numba source of tapejit's own ``sin``, ``cos``, ``log``, ``exp``, ``expm1``, ``log1p``
and ``tanh``: they vectorize over points.

A libm call inside a point loop stops LLVM from vectorizing it, and in transcendental
code the call is most of the time (``sin`` and ``cos`` ~18 ns, ``log`` ~8 ns a point on
the reference machine; these run in 5 and 3 ns four points at a time). The functions here
are straight-line IEEE arithmetic: no calls, no branches (selects only), no fused
multiply-adds (Numba does not contract without ``fastmath``), so a point loop vectorizes
and a vector lane computes exactly the bits a scalar call does. Every sweep, batched or
one point, therefore gives the same bits.

Accuracy (``tests/test_libm.py`` measures it against long-double references): below
0.8 ulp; results differ from numpy's (glibc's, nearly correctly rounded) by one ulp on a
few percent of arguments.

* ``_rem_pio2``: ``x = k pi/2 + (y0 + y1)``, ``pi/2`` split as three 33-bit constants
  (``k * P`` exact for ``|k| < 2**20``) and a 53-bit tail, every subtraction's rounding
  error kept (TwoSum): ~100 correct bits for ``|x| <= _TRIG_MAX``.
* ``_ksin``/``_kcos``: the minimax polynomials of fdlibm's ``__kernel_sin`` and
  ``__kernel_cos`` (coefficients from FreeBSD's msun, public), on ``[-pi/4, pi/4]``
  with the reduction's tail ``y1``.
* ``_sin_near``/``_cos_near``: exact for ``|x| <= _TRIG_MAX`` (and NaN), anything
  beyond. ``_sin``/``_cos`` add the one branch, to libm for larger ``|x|``; the batched
  forward sweeps run the ``_near`` twin over a whole row and then redo the (rare) larger
  elements with ``_sin``/``_cos`` (see ``tapejit._ops.TWINS``), giving ``_sin``'s bits everywhere.
* ``_log``: fdlibm's ``__ieee754_log`` reduction ``x = 2**k (1 + f)``,
  ``sqrt(2)/2 <= 1 + f < sqrt(2)``, and its polynomial in ``s = f / (2 + f)``, without
  its shortcut branches; the exponent is read from the bits (``_bits``), subnormals are
  scaled by ``2**54`` first, and zero, negative, infinite and NaN arguments are selected
  at the end (numpy's values).
* ``_exp``: fdlibm's ``__ieee754_exp``: ``x = k ln2 + r`` (``_reduce_ln2``, ``k`` read
  from the bits of the rounding sum), its polynomial in ``r``, and ``2**k`` applied in
  two exact steps (``_times_pow2``) so that subnormal results round once; overflow,
  underflow and NaN are selected at the end.
* ``_expm1``: fdlibm's ``expm1``, every case of ``k`` computed and the right one
  selected.
* ``_tanh``: below ``|x| = 0.7`` its Taylor series, ``x + x s P(s)`` with
  ``s = x**2`` and the 23 terms of ``x**3`` to ``x**47`` (``_TANH_TAYLOR``: the exact
  coefficients ``2**2n (2**2n - 1) B_2n / (2n)!`` rounded to double; the terms left
  out are below 0.15 ulp), in Horner's order; above, ``1 - 2 / (e + 1)``
  with ``e = _exp(2|x|)`` (the quotient is below 0.4 there, so its errors reach the
  result at most halved); ``x`` below ``2**-28``, +-1 above 22. Below 1.1 ulp (fdlibm's
  tanh: 2.2). A polynomial, an ``_exp`` and a division: cheaper than the ``expm1``
  quotient with a corrected division that it replaced, and more accurate.
* ``_log1p``: fdlibm's ``log1p``: ``1 + x = 2**k (1 + f)`` with the rounding error of
  ``1 + x`` as a correction, ``f = x`` itself for ``1 + x`` in the octave around 1, and
  ``_log``'s polynomial.

Measured errors (``tests/test_libm.py``): ``exp`` 0.86, ``expm1`` 0.83, ``log1p`` 0.82,
``tanh`` 1.06 ulp.

The branch-free functions are inlined by Numba (``inline="always"``): left to LLVM, a
function this size is inlined at some call sites and called at others, and a call stops
the row loop from vectorizing.

Kernel source (see ``sources.py``): the generator copies the code below the marker into
the generated kernel module, so Numba's cache of every kernel is keyed on it.
"""

import math

from llvmlite import ir as _ir
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

from tapejit._kernels.njit import njit

# --- kernel source ---


@_intrinsic
def _bits(typingctx, x):
    # The IEEE bits of a float64 as an int64 (a bitcast: one instruction, vectorizes).
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _ir.IntType(64))

    return _types.int64(_types.float64), codegen


@_intrinsic
def _from_bits(typingctx, i):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _ir.DoubleType())

    return _types.float64(_types.int64), codegen


_INVPIO2 = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e+00  # first 33 bits of pi/2
_PIO2_2 = 6.07710050630396597660e-11  # next 33 bits
_PIO2_3 = 2.02226624871116645580e-21  # next 33 bits
_PIO2_3T = 8.47842766036889956997e-32  # pi/2 - (_PIO2_1 + _PIO2_2 + _PIO2_3)
_ROUND = 6755399441055744.0  # 1.5 * 2**52: (y + _ROUND) - _ROUND rounds y to an integer
_TRIG_MAX = 1.6e6  # < 2**20 * pi/2: beyond, k * _PIO2_i is no longer exact
_TINY = 7.450580596923828e-09  # 2**-27: sin(x) rounds to x below (and keeps -0.0)
_S1 = -1.66666666666666324348e-01
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@njit(cache=True, nogil=True, inline="always")
def _rem_pio2(x):
    k = (x * _INVPIO2 + _ROUND) - _ROUND
    r = x - k * _PIO2_1  # exact
    b = -(k * _PIO2_2)  # exact product; the sum's error is kept (TwoSum)
    h = r + b
    t = h - r
    e1 = (r - (h - t)) + (b - t)
    b = -(k * _PIO2_3)
    h2 = h + b
    t = h2 - h
    e2 = (h - (h2 - t)) + (b - t)
    lo = (e1 + e2) - k * _PIO2_3T
    y0 = h2 + lo
    return k, y0, (h2 - y0) + lo


@njit(cache=True, nogil=True, inline="always")
def _ksin(x, y):
    z = x * x
    w = z * z
    r = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    v = z * x
    return x - ((z * (0.5 * y - v * r) - y) - v * _S1)


@njit(cache=True, nogil=True, inline="always")
def _kcos(x, y):
    z = x * x
    w = z * z
    r = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + (z * r - x * y))


@njit(cache=True, nogil=True, inline="always")
def _sin_near(x):
    k, y0, y1 = _rem_pio2(x)
    s = _ksin(y0, y1)
    c = _kcos(y0, y1)
    q = k - 4.0 * math.floor(k * 0.25)  # k mod 4, as a float: no integer conversion
    v = c if (q == 1.0 or q == 3.0) else s
    v = -v if q >= 2.0 else v
    return x if abs(x) < _TINY else v


@njit(cache=True, nogil=True, inline="always")
def _cos_near(x):
    k, y0, y1 = _rem_pio2(x)
    s = _ksin(y0, y1)
    c = _kcos(y0, y1)
    q = k - 4.0 * math.floor(k * 0.25)
    v = s if (q == 1.0 or q == 3.0) else c
    return -v if (q == 1.0 or q == 2.0) else v


# The scalar forms branch where the twins select: only the polynomial they keep is
# evaluated, on the same arguments, so the bits are the twins'.
@njit(cache=True, nogil=True)
def _sin(x):
    if abs(x) > _TRIG_MAX:
        return math.sin(x)
    if abs(x) < _TINY:
        return x
    k, y0, y1 = _rem_pio2(x)
    q = k - 4.0 * math.floor(k * 0.25)
    v = _kcos(y0, y1) if (q == 1.0 or q == 3.0) else _ksin(y0, y1)
    return -v if q >= 2.0 else v


@njit(cache=True, nogil=True)
def _cos(x):
    if abs(x) > _TRIG_MAX:
        return math.cos(x)
    k, y0, y1 = _rem_pio2(x)
    q = k - 4.0 * math.floor(k * 0.25)
    v = _ksin(y0, y1) if (q == 1.0 or q == 3.0) else _kcos(y0, y1)
    return -v if (q == 1.0 or q == 2.0) else v


@njit(cache=True, nogil=True, inline="always")
def _log(x):
    sub = x < 2.2250738585072014e-308  # subnormal (or zero, negative: selected below)
    i = _bits(x * 18014398509481984.0 if sub else x)  # 2**54
    hx = (i >> 32) & 0x000FFFFF
    j = (hx + 0x95F64) & 0x100000  # 1 where the mantissa is >= sqrt(2): halve it
    m = _from_bits(((hx | (j ^ 0x3FF00000)) << 32) | (i & 0xFFFFFFFF))
    e = ((i >> 52) & 0x7FF) - (1077 if sub else 1023) + (j >> 20)
    k = _from_bits(e + 0x4338000000000000) - _ROUND  # e as a float, exactly
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    v = k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)
    v = v if x < math.inf else x  # inf and NaN
    v = -math.inf if x == 0.0 else v
    return math.nan if x < 0.0 else v


_EXP_MAX = 7.09782712893383973096e+02  # above, exp overflows
_EXP_MIN = -7.45133219101941108420e+02  # below, exp rounds to 0
_EXPM1_MIN = -38.81622314453125  # below, expm1 rounds to -1
_INVLN2 = 1.44269504088896338700e+00
_P1 = 1.66666666666666019037e-01
_P2 = -2.77777777770155933842e-03
_P3 = 6.61375632143793436117e-05
_P4 = -1.65339022054652515390e-06
_P5 = 4.13813679705723846039e-08
_Q1 = -3.33333333333331316428e-02
_Q2 = 1.58730158725481460165e-03
_Q3 = -7.93650757867487942473e-05
_Q4 = 4.00821782732936239552e-06
_Q5 = -2.01099218183624371326e-07
_TINY54 = 5.551115123125783e-17  # 2**-54: expm1(x) and log1p(x) round to x below
_TINY28 = 3.725290298461914e-09  # 2**-28: tanh(x) rounds to x below
_TANH_SERIES_MAX = 0.7  # tanh: its series below, 1 - 2 / (exp(2|x|) + 1) above
# tanh's Taylor coefficients of x**3, x**5, ..., x**47 (see the module's docstring)
_TANH_TAYLOR = (
    -0.3333333333333333, 0.13333333333333333, -0.05396825396825397,
    0.021869488536155203, -0.008863235529902197, 0.003592128036572481,
    -0.0014558343870513183, 0.000590027440945586, -0.00023912911424355248,
    9.691537956929451e-05, -3.927832388331683e-05, 1.5918905069328964e-05,
    -6.451689215655431e-06, 2.6147711512907546e-06, -1.0597268320104654e-06,
    4.294911078273806e-07, -1.7406618963571648e-07, 7.054636946400968e-08,
    -2.859136662305254e-08, 1.1587644432798853e-08, -4.6962953982309016e-09,
    1.903336833931276e-09, -7.713933635359062e-10,
)


@njit(cache=True, nogil=True, inline="always")
def _reduce_ln2(x):
    # x = k ln2 + (hi - lo), k the nearest integer to x / ln2 (|x| <= 800: k * _LN2_HI
    # is exact); k as an int64, from the bits of the rounding sum.
    t = x * _INVLN2 + _ROUND
    k = t - _ROUND
    return _bits(t) - 0x4338000000000000, x - k * _LN2_HI, k * _LN2_LO


@njit(cache=True, nogil=True, inline="always")
def _times_pow2(y, ik):
    # y * 2**ik for |ik| <= 1100, in two exact steps: one rounding, into the subnormals
    # or to infinity, where the result lands there.
    k1 = ik >> 1
    return (y * _from_bits((k1 + 1023) << 52)) * _from_bits((ik - k1 + 1023) << 52)


@njit(cache=True, nogil=True, inline="always")
def _exp(x):
    xc = x if abs(x) <= 800.0 else 0.0
    ik, hi, lo = _reduce_ln2(xc)
    r = hi - lo
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    v = _times_pow2(1.0 - ((lo - (r * c) / (2.0 - c)) - hi), ik)
    v = math.inf if x > _EXP_MAX else v
    v = 0.0 if x < _EXP_MIN else v
    return x if x != x else v


@njit(cache=True, nogil=True, inline="always")
def _expm1(x):
    xc = x if abs(x) <= 800.0 else 0.0
    ik, hi, lo = _reduce_ln2(xc)
    r = hi - lo
    c = (hi - r) - lo  # the rounding error of r
    hfx = 0.5 * r
    hxs = r * hfx
    r1 = 1.0 + hxs * (_Q1 + hxs * (_Q2 + hxs * (_Q3 + hxs * (_Q4 + hxs * _Q5))))
    t = 3.0 - r1 * hfx
    e = hxs * ((r1 - t) / (6.0 - r * t))
    b = hxs - r * e
    v0 = r + b  # k == 0
    e = (r * (e - c) - c) - hxs
    kc = ik if (ik >= 0 and ik <= 60) else 0
    p = _from_bits((1023 - kc) << 52)  # 2**-k
    v1 = -2.0 * (e - (r + 0.5)) if r < -0.25 else 1.0 + 2.0 * (r - e)  # k == 1
    vm1 = 0.5 * (r - e) - 0.5  # k == -1
    vs = ((1.0 - p) - (e - r)) if ik < 20 else ((r - (e + p)) + 1.0)  # 2 <= k <= 56
    vs = _times_pow2(vs, ik)
    vb = _times_pow2(1.0 - (e - r), ik) - 1.0  # k <= -2 or k > 56
    v = vs if (ik >= 2 and ik <= 56) else vb
    v = v1 if ik == 1 else v
    v = vm1 if ik == -1 else v
    v = v0 if ik == 0 else v
    v = x if abs(x) < _TINY54 else v  # and -0.0
    v = math.inf if x > _EXP_MAX else v
    v = -1.0 if x < _EXPM1_MIN else v
    return x if x != x else v


@njit(cache=True, nogil=True, inline="always")
def _tanh(x):
    ax = abs(x)
    s = ax * ax
    t = _TANH_TAYLOR  # indexed by literals: constants, so the point loop vectorizes
    q = ((((t[22] * s + t[21]) * s + t[20]) * s + t[19]) * s + t[18]) * s + t[17]
    q = ((((q * s + t[16]) * s + t[15]) * s + t[14]) * s + t[13]) * s + t[12]
    q = ((((q * s + t[11]) * s + t[10]) * s + t[9]) * s + t[8]) * s + t[7]
    q = ((((q * s + t[6]) * s + t[5]) * s + t[4]) * s + t[3]) * s + t[2]
    q = (q * s + t[1]) * s + t[0]
    z = ax + ax * (s * q)
    z = z if ax < _TANH_SERIES_MAX else 1.0 - 2.0 / (_exp(2.0 * ax) + 1.0)
    z = 1.0 if ax > 22.0 else z  # and +-inf
    z = -z if x < 0.0 else z
    return x if (ax < _TINY28 or x != x) else z


@njit(cache=True, nogil=True, inline="always")
def _log1p(x):
    small = x > -0.2928932188134524 and x < 0.41421356237309503  # 1 + x in the octave
    u = 1.0 + x
    c = (1.0 - (u - x) if u >= 2.0 else x - (u - 1.0)) / u  # the rounding error of u
    i = _bits(u)
    hu = (i >> 32) & 0x000FFFFF
    j = (hu + 0x95F64) & 0x100000  # 1 where the mantissa is >= sqrt(2): halve it
    m = _from_bits(((hu | (j ^ 0x3FF00000)) << 32) | (i & 0xFFFFFFFF))
    e = ((i >> 52) & 0x7FF) - 1023 + (j >> 20)
    k = _from_bits(e + 0x4338000000000000) - _ROUND
    f = x if small else m - 1.0
    k = 0.0 if small else k
    c = 0.0 if small else c
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    v = k * _LN2_HI - ((hfsq - (s * (hfsq + r) + (k * _LN2_LO + c))) - f)
    v = x if (abs(x) < _TINY54 or not x < math.inf) else v  # tiny, -0.0, inf and NaN
    v = -math.inf if x == -1.0 else v
    return math.nan if x < -1.0 else v
