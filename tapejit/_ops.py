"""The op table: every elementary operation tapejit knows, declared exactly once.

Each :class:`Op` holds everything the rest of the package derives from it:

* ``value``: the result as a Numba scalar expression of the operands ``a, b, c``;
* ``partials``: the local partial derivative with respect to each operand, as an
  expression of the operands and the result ``r`` (so ``exp`` reuses its own value);
* ``second``: the second partials, upper triangle in row order (``aa``; ``aa, ab, bb``;
  ``aa, ab, ac, bb, bc, cc``), used by second-order sweeps;
* ``numpy``: the numpy reference (used for constant folding while recording and by the
  tests); scipy.special's as :class:`ScipySpecial`, by name, imported at first use;
* ``domain``: for each operand, the interval the tests sample from; ``edges`` plants the
  op's edge cases (exact ties, bounds, integer conditions) among the sampled points and
  ``kink`` measures how far a point is from the nearest kink or jump;
* ``trace``: how user code reaches the op, where that is not by calling ``numpy``;
* ``flags``: named classes of ops (linear, zero-derivative, ...) that the code generator
  and the tracer exploit.

The tracer (``_tracer.py``), the values of traced scalars at the recording point
(``_scalar_ops.py``), the generated Numba kernels (``_kernels/codegen.py``), the tests and
the docs' op listing all iterate over :data:`OPS`. Adding an elementwise op whose numpy
reference is a ufunc touches this file only: one row (``tests/test_new_op.py`` proves it).

Derivative conventions at kinks (documented in docs/ops):

* ``abs``: derivative ``sign(a)``, so 0 at 0;
* ``maximum``/``minimum``: at a tie each operand gets 1/2 (symmetric, and
  ``maximum(x, x)`` has derivative 1); ``relu = maximum(0, x)`` therefore has 1/2 at 0;
* ``clip(x, lo, hi)``: derivative 1 with respect to ``x`` on the closed interval
  ``lo <= x <= hi``; with respect to ``lo`` when ``x < lo``; to ``hi`` when ``x > hi``
  (or ``lo > hi``, where numpy returns ``hi``);
* ``sign``, ``floor``, ``ceil``, comparisons and ``stop_gradient``: derivative 0;
* ``hypot`` at the origin: derivative 0; ``pow(a, b)``: ``d/da`` is 0 when ``b == 0``
  and ``d/db`` is 0 where the result is 0 (so ``pow(0, 1.875)`` and ``pow(0, y)`` do not
  produce NaN);
* ``sqrt``/``cbrt`` at 0, ``log`` at 0, ``arcsin`` at +-1 and similar: the true infinite
  derivative;
* numpy's division family, rounding, NaN tests, ``fmax``/``fmin``, ``heaviside``,
  ``copysign`` and scipy.special's ``xlogy``: JAX's conventions, each stated in the op's
  ``doc`` (``mod``'s ``d/db`` is minus numpy's quotient, the true derivative also where
  ``a / b`` rounds onto an integer).

NaN policy: values propagate NaN and inf exactly as numpy does. In every sweep the
product of an adjoint (or tangent) and a local partial is **zero when either factor is
exactly zero** (CppAD's ``azmul``). So a branch that ``np.where`` did not take, a
``stop_gradient``, or a zero derivative never turns an infinite or NaN partial elsewhere
into NaN in the gradient.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import re
import textwrap
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ._kernels.sources import kernel_body

LINEAR = "linear"  # partials are constants
ZERO_DERIVATIVE = "zero_derivative"  # every partial is 0
COMMUTATIVE = "commutative"
COMPARISON = "comparison"  # result is 1.0 or 0.0
PIECEWISE = "piecewise"  # derivative has kinks or jumps: test points avoid them
#: Operands may be swapped without changing a bit of the value or of any derivative
#: (IEEE addition and multiplication, and ops built symmetrically); CSE merges such pairs.
SWAPPABLE = "swappable"
#: Cheap and frequent: one-point block instructions get fast paths over contiguous
#: operands (loops without index arithmetic, which vectorize). Each fast path is code that
#: Numba compiles on first use, so only ops where vectorizing pays have one.
FAST_BLOCK = "fast_block"
#: A binary ``FAST_BLOCK`` op that also gets fast paths with one operand broadcast.
FAST_BROADCAST = "fast_broadcast"
#: Computed by tapejit's own vectorizing functions (``_sin``, ``_log``, ``_exp``, ...): a
#: contiguous block gets a fast path in the one-point value sweeps too.
VECTOR_FN = "vector_fn"
#: The first operand is a derivative order n = 0, 1, 2, ... up to the op's maximum (its
#: ``doc``): any other value gives NaN, and the op has no derivative in it. The tests
#: sample it from the orders.
ORDER_OPERAND = "order_operand"
#: The value is exact or one correctly rounded IEEE operation, so it equals numpy's bit
#: for bit (the tests compare such ops bitwise, the others to a few ulp).
EXACT = "exact"

#: The highest derivative orders of ``polygamma`` and ``sinc_derivative`` (NaN above), which
#: also bound the kernels' loops and memory: ``_polygamma``'s (n - 1)! is finite up to 170
#: and its series holds to a few ulp; ``_sinc_derivative`` keeps 1e-13 of its scale
#: pi**n / (n + 1) up to 16 (``tapejit/_kernels/scalar.py``). The numpy references below
#: and the kernels (through ``_kernels/constants.py``) read the same numbers.
MAX_POLYGAMMA_ORDER = 170.0
MAX_SINC_ORDER = 16.0


@dataclass(frozen=True)
class Op:
    """One elementary operation of the tape.

    Attributes
    ----------
    code : int
        Opcode stored in the tape (1..127; 0 is never used).
    name : str
        Name used in listings, errors and docs.
    arity : int
        Number of operands (1, 2 or 3).
    value : str
        Numba expression of the operands ``a, b, c``.
    partials : tuple of str
        Expression of ``d r / d operand`` for each operand, in ``a, b, c, r``.
    second : tuple of str
        Upper triangle of the second partials in row order.
    numpy : callable
        numpy reference implementation; where it is a ufunc (numpy's or scipy.special's),
        the tracer maps that ufunc to this op; a numpy function that is not a ufunc
        (``np.sinc``) is registered in ``tapejit/_numpy_elementwise.py``. Comparison
        references return bools, read as 1.0/0.0. A function of scipy.special is given
        as ``ScipySpecial("erf")`` (:class:`ScipySpecial`), which imports scipy.special
        at its first call, not with tapejit.
    domain : tuple of (float, float)
        Sampling interval per operand for the tests.
    flags : frozenset of str
        Op classes, see the module constants.
    doc : str
        One line for the docs (the kink convention where there is one).
    rank : int
        Place in the kernels' dispatch chain among the most frequent ops (1 is tested
        first); 0 for the others, which follow in opcode order.
    kink : callable or None
        For ops with kinks or jumps (``PIECEWISE``): a numpy function of the operands
        giving each point's distance to the nearest kink or jump (the tests compare
        derivatives with finite differences only away from them). None for smooth ops.
    edges : callable or None
        Plants the op's edge cases in place into sampled points ``X`` (one row per
        point, one column per operand): exact ties, bounds, integer conditions. None
        where uniform samples from ``domain`` are all the tests need.
    trace : callable or None
        How traced user code reaches the op, where calling ``numpy`` on traced values
        does not (``stop_gradient``). None: ``numpy`` itself reaches it.
    aliases : tuple of numpy.ufunc
        Other numpy ufuncs that compute this op on real input (``np.fabs`` is ``abs``):
        the tracer maps them to it too.
    """

    code: int
    name: str
    arity: int
    value: str
    partials: tuple[str, ...]
    second: tuple[str, ...]
    numpy: Callable[..., np.ndarray]
    domain: tuple[tuple[float, float], ...]
    flags: frozenset[str] = frozenset()
    doc: str = ""
    rank: int = 0
    kink: Callable[..., np.ndarray] | None = None
    edges: Callable[[np.ndarray], None] | None = None
    trace: Callable[..., object] | None = None
    aliases: tuple[np.ufunc, ...] = ()

    def __post_init__(self) -> None:
        n_second = {1: 1, 2: 3, 3: 6}[self.arity]
        if len(self.partials) != self.arity or len(self.second) != n_second:
            raise ValueError(f"op {self.name}: partials/second do not match arity {self.arity}")
        if not 0 < self.code < 128:
            raise ValueError(f"op {self.name}: opcode {self.code} outside 1..127")

    @property
    def partial_sources(self) -> tuple[PartialSource, ...]:
        """Where the reverse sweeps find each partial (see :class:`PartialSource`)."""
        return tuple(partial_source(p) for p in self.partials)


@dataclass(frozen=True)
class PartialSource:
    """Where the reverse sweeps find one local partial of an op, derived from its
    expression: only a ``"stored"`` partial costs a store in the forward sweep.

    Attributes
    ----------
    kind : str
        ``"zero"`` (nothing to propagate), ``"constant"`` (the number ``factor``),
        ``"value"`` (the workspace value of ``operand`` times ``factor``: ``mul``'s
        partial ``b``, ``square``'s ``2.0 * a``, ``exp``'s ``r``) or ``"stored"``
        (computed and stored by the forward-partials sweeps).
    operand : str
        ``"a"``, ``"b"``, ``"c"`` or ``"r"`` (the result) for ``"value"``, else ``""``.
    factor : float
        The constant, or the factor of the value; 1.0 for ``"stored"``, 0.0 for ``"zero"``.
    """

    kind: str
    operand: str = ""
    factor: float = 1.0


def _number(node: ast.expr) -> float | None:
    """The value of a numeric literal, signed or not; ``None`` for anything else."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    return None


@functools.cache
def partial_source(expr: str) -> PartialSource:
    """Classify a partial expression (see :class:`PartialSource`)."""
    node = ast.parse(expr.strip(), mode="eval").body
    number = _number(node)
    if number is not None:
        return PartialSource("zero", factor=0.0) if number == 0.0 else \
            PartialSource("constant", factor=number)
    if isinstance(node, ast.Name) and node.id in ("a", "b", "c", "r"):
        return PartialSource("value", node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        for x, y in ((node.left, node.right), (node.right, node.left)):
            factor = _number(y)
            if isinstance(x, ast.Name) and x.id in ("a", "b", "c", "r") and factor is not None:
                return PartialSource("value", x.id, factor)
    return PartialSource("stored")


class ScipySpecial:
    """The reference of an op that is a function of scipy.special, named in the op's row
    and imported at its first call: ``import tapejit`` does not import scipy.special,
    which costs a good part of tapejit's own import, for code that never calls it.

    Calling it calls the function. The tracer maps scipy's ufunc to the op once the user
    has imported scipy.special (:func:`tapejit._tracer.op_of_ufunc`).

    Parameters
    ----------
    name : str
        The function's name in scipy.special; for a ufunc its ``__name__`` (``psi``, not
        its alias ``digamma``), so that the names derived from the row before the import
        (the tracer's object-loop methods, :func:`tapejit.supported_functions`) are
        those of the ufunc itself.
    """

    __slots__ = ("_func", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._func: Callable[..., np.ndarray] | None = None

    def resolve(self) -> Callable[..., np.ndarray]:
        """The function itself, importing scipy.special at the first call."""
        func = self._func
        if func is None:
            import scipy.special

            # idempotent: threads that race here all assign the same object, no lock needed
            func = self._func = getattr(scipy.special, self.name)
        return func

    def __call__(self, *args: object, **kwargs: object) -> np.ndarray:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ScipySpecial({self.name!r})"


def resolved(func: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """An op's reference (``op.numpy``) as the function itself: a :class:`ScipySpecial`
    resolved (importing scipy.special), anything else as it is."""
    return func.resolve() if isinstance(func, ScipySpecial) else func


def _sel(c, a, b):
    # np.not_equal, not ``np.asarray(c) != 0``: traced values reach the op through it too
    return np.where(np.not_equal(c, 0.0), a, b)


def _azmul(a, b):
    with np.errstate(invalid="ignore"):
        return np.where((np.asarray(a) == 0.0) | (np.asarray(b) == 0.0), 0.0,
                        np.multiply(a, b))


def _traced(name: str) -> Callable[..., object]:
    """How traced code reaches op ``name`` that no numpy function computes: emitted by
    name (imported at the call: the tracer imports this table)."""

    def trace(*operands):
        from ._tracer import emit

        return emit(name, *operands)

    trace.__name__ = name
    return trace


def _polygamma(n, x):
    # The reference of op polygamma: scipy's, with the kernels' orders (NaN beyond
    # MAX_POLYGAMMA_ORDER, where scipy still answers), so the generic tier means the same
    n, x = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(x, np.float64))
    valid = (n >= 0.0) & (n <= MAX_POLYGAMMA_ORDER) & (n == np.floor(n))
    import scipy.special  # at the call, as ScipySpecial's

    with np.errstate(all="ignore"):
        return np.where(valid, scipy.special.polygamma(np.where(valid, n, 0.0), x), np.nan)


def _sinc_derivative(n, x):
    # The reference of op sinc_derivative, independent of the kernels' series:
    # sinc(x) = j0(pi x) and j_k' = (k j_(k-1) - (k + 1) j_(k+1)) / (2k + 1), so the n-th
    # derivative is a combination of scipy's spherical_jn(0..n, pi x)
    import scipy.special  # at the call, as ScipySpecial's

    n, x = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(x, np.float64))
    out = np.full(n.shape, np.nan)
    # orders up to the kernels' MAX_SINC_ORDER; NaN at infinities, as np.sinc
    valid = (n >= 0.0) & (n <= MAX_SINC_ORDER) & (n == np.floor(n)) & np.isfinite(x)
    for m in np.unique(n[valid]).astype(int):
        coef = np.zeros(m + 2)
        coef[0] = 1.0
        k = np.arange(m + 1)
        for _ in range(m):
            step = np.zeros(m + 2)
            step[: m] += (coef[1 : m + 1] * k[1:] / (2 * k[1:] + 1))
            step[1 : m + 2] -= coef[: m + 1] * (k + 1) / (2 * k + 1)
            coef = step
        at = valid & (n == m)
        z = np.pi * x[at]
        out[at] = np.pi ** m * sum(coef[k] * scipy.special.spherical_jn(k, z) for k in range(m + 1))
    return out


def _stop_gradient(a):
    # imported at the call: _record imports the tracer, which imports this table
    from ._record import stop_gradient

    return stop_gradient(a)


# --- test samplers: edge cases planted in sampled points, distances to kinks -----------
def _tie(X: np.ndarray) -> None:
    X[::7, 1] = X[::7, 0]  # a == b


def _at_bounds(X: np.ndarray) -> None:
    X[::7, 0] = X[::7, 1]  # x == lo
    X[3::7, 0] = X[3::7, 2]  # x == hi


def _conditions(X: np.ndarray) -> None:
    X[:, 0] = np.round(X[:, 0])  # conditions 0.0 and 1.0


def _from_zero(a):
    return np.abs(a)


def _from_integers(a):
    return np.abs(a - np.round(a))


def _from_tie(a, b):
    return np.abs(a - b)


def _from_bounds(a, lo, hi):
    return np.minimum(np.abs(a - lo), np.abs(a - hi))


def _from_multiples(a, b):
    # mod, fmod, floor_divide jump where a is a multiple of b
    with np.errstate(all="ignore"):
        return np.abs(a - b * np.round(a / b))


def _from_half_integers(a):
    return np.abs(np.abs(a - np.floor(a)) - 0.5)


def _from_zero_first(a, b):
    return np.abs(a)


def _from_zero_either(a, b):
    return np.minimum(np.abs(a), np.abs(b))


def _divisors(X: np.ndarray) -> None:
    X[1::2, 1] *= -1.0  # negative divisors too
    X[::7, 1] = 0.5 * np.sign(X[::7, 1])  # exact multiples: integers over +-1/2
    X[::7, 0] = np.round(X[::7, 0])
    X[3::7] = (1.0, 0.1)  # 1.0 // 0.1 is 9.0 in numpy, floor(1.0 / 0.1) is 10.0
    X[5::7, 0] = -X[5::7, 0]


def _small_exponents(X: np.ndarray) -> None:
    X[::7, 1] = 0.0  # pow's partials have a branch at b == 0
    X[3::7, 1] = 1.0


def _halves(X: np.ndarray) -> None:
    X[::7, 0] = np.floor(X[::7, 0]) + 0.5  # ties: to even


def _integers(X: np.ndarray) -> None:
    X[::7, 0] = np.round(X[::7, 0])


def _positive_integers(X: np.ndarray) -> None:
    X[::7, 0] = np.maximum(np.round(X[::7, 0]), 1.0)  # digamma's harmonic-number branch


def _zeros_first(X: np.ndarray) -> None:
    X[::5, 0] = 0.0
    X[2::10, 0] = -0.0


def _zeros_either(X: np.ndarray) -> None:
    X[::7, 0] = 0.0
    X[3::7, 1] = -0.0


def _non_finite(X: np.ndarray) -> None:
    X[::7, 0] = np.nan
    X[1::7, 0] = np.inf
    X[2::7, 0] = -np.inf


def _orders(X: np.ndarray) -> None:
    X[:, 0] = np.floor(X[:, 0])  # derivative orders 0, 1, 2, ...


def _orders_and_zeros(X: np.ndarray) -> None:
    _orders(X)
    X[::9, 1] = 0.0  # sinc's derivatives: the series' centre


def _signed_zeros(X: np.ndarray) -> None:
    X[::7, 0] = 0.0
    X[1::7, 0] = -0.0


_R = (-3.0, 3.0)
_POS = (0.1, 4.0)
_UNIT = (-0.95, 0.95)
Z = "0.0"
_Z3 = (Z, Z, Z)
_Z6 = (Z,) * 6
_CMP = frozenset({ZERO_DERIVATIVE, COMPARISON, PIECEWISE, EXACT})
_TIES = {"kink": _from_tie, "edges": _tie}
_FAST2 = frozenset({FAST_BLOCK, FAST_BROADCAST})

_TABLE: list[Op] = [
    # --- arithmetic ---------------------------------------------------------------------
    Op(1, "add", 2, "a + b", ("1.0", "1.0"), _Z3, np.add, (_R, _R),
       frozenset({LINEAR, COMMUTATIVE, SWAPPABLE, EXACT}) | _FAST2, rank=2),
    Op(2, "sub", 2, "a - b", ("1.0", "-1.0"), _Z3, np.subtract, (_R, _R),
       frozenset({LINEAR, EXACT}) | _FAST2, rank=3),
    Op(3, "mul", 2, "a * b", ("b", "a"), (Z, "1.0", Z), np.multiply, (_R, _R),
       frozenset({COMMUTATIVE, SWAPPABLE, EXACT}) | _FAST2, rank=1),
    Op(4, "div", 2, "a / b", ("1.0 / b", "-r / b"),
       (Z, "-1.0 / (b * b)", "2.0 * r / (b * b)"), np.divide, (_R, (0.5, 3.0)),
       frozenset({EXACT}) | _FAST2, rank=4),
    Op(5, "neg", 1, "-a", ("-1.0",), (Z,), np.negative, (_R,),
       frozenset({LINEAR, FAST_BLOCK, EXACT}), rank=5),
    # azmul, not "0.0 if b == 0.0 else ...": the same values, and a derivative that nested
    # differentiation gets right where b == 0 (d2/da db = 1/a there, not the 0 of a branch)
    Op(6, "pow", 2, "a ** b",
       ("_azmul(b, a ** (b - 1.0))", "_azmul(r, math.log(a))"),
       # the derivatives of the partials as written (azmul: the product rule), so the
       # kernels' Hessian is the nested one where it is singular too (a == 0)
       ("_azmul(b, _azmul(b - 1.0, a ** (b - 2.0)))",
        "a ** (b - 1.0) + _azmul(b, _azmul(a ** (b - 1.0), math.log(a)))",
        "_azmul(_azmul(r, math.log(a)), math.log(a))"),
       np.power, (_POS, _R), aliases=(np.float_power,),
       doc="d/da is 0 where b == 0; d/db is 0 where the result is 0 (pow(0, y) has no NaN)",
       edges=_small_exponents),
    Op(7, "square", 1, "a * a", ("2.0 * a",), ("2.0",), np.square, (_R,),
       frozenset({FAST_BLOCK, EXACT}), rank=6),
    Op(8, "reciprocal", 1, "1.0 / a", ("-r * r",), ("2.0 * r * r * r",), np.reciprocal,
       ((0.5, 3.0),), frozenset({EXACT})),
    # --- roots, exponentials, logarithms -------------------------------------------------
    Op(9, "sqrt", 1, "math.sqrt(a)", ("0.5 / r",), ("-0.25 / (r * r * r)",), np.sqrt, (_POS,),
       frozenset({EXACT}), doc="derivative +inf at 0"),
    Op(10, "cbrt", 1, "np.cbrt(a)", ("1.0 / (3.0 * r * r)",),
       ("-2.0 / (9.0 * r * r * r * r * r)",), np.cbrt, ((0.2, 4.0),), doc="derivative +inf at 0"),
    Op(11, "exp", 1, "_exp(a)", ("r",), ("r",), np.exp, (_R,), frozenset({VECTOR_FN})),
    Op(12, "exp2", 1, "np.exp2(a)", ("r * 0.6931471805599453",),
       ("r * 0.4804530139182014",), np.exp2, (_R,)),
    Op(13, "expm1", 1, "_expm1(a)", ("r + 1.0",), ("r + 1.0",), np.expm1, (_R,),
       frozenset({VECTOR_FN})),
    Op(14, "log", 1, "_log(a)", ("1.0 / a",), ("-1.0 / (a * a)",), np.log, (_POS,),
       frozenset({VECTOR_FN})),
    Op(15, "log2", 1, "math.log2(a)", ("1.4426950408889634 / a",),
       ("-1.4426950408889634 / (a * a)",), np.log2, (_POS,)),
    Op(16, "log10", 1, "math.log10(a)", ("0.4342944819032518 / a",),
       ("-0.4342944819032518 / (a * a)",), np.log10, (_POS,)),
    Op(17, "log1p", 1, "_log1p(a)", ("1.0 / (1.0 + a)",),
       ("-1.0 / ((1.0 + a) * (1.0 + a))",), np.log1p, ((-0.9, 3.0),), frozenset({VECTOR_FN})),
    # --- trigonometric and hyperbolic ---------------------------------------------------
    Op(18, "sin", 1, "_sin(a)", ("_cos(a)",), ("-r",), np.sin, (_R,), frozenset({VECTOR_FN})),
    Op(19, "cos", 1, "_cos(a)", ("-_sin(a)",), ("-r",), np.cos, (_R,), frozenset({VECTOR_FN})),
    Op(20, "tan", 1, "math.tan(a)", ("1.0 + r * r",), ("2.0 * r * (1.0 + r * r)",), np.tan,
       ((-1.3, 1.3),)),
    Op(21, "arcsin", 1, "math.asin(a)", ("1.0 / math.sqrt(1.0 - a * a)",),
       ("a / (1.0 - a * a) ** 1.5",), np.arcsin, (_UNIT,)),
    Op(22, "arccos", 1, "math.acos(a)", ("-1.0 / math.sqrt(1.0 - a * a)",),
       ("-a / (1.0 - a * a) ** 1.5",), np.arccos, (_UNIT,)),
    Op(23, "arctan", 1, "math.atan(a)", ("1.0 / (1.0 + a * a)",),
       ("-2.0 * a / ((1.0 + a * a) * (1.0 + a * a))",), np.arctan, (_R,)),
    Op(24, "arctan2", 2, "math.atan2(a, b)", ("b / (a * a + b * b)", "-a / (a * a + b * b)"),
       ("-2.0 * a * b / ((a * a + b * b) * (a * a + b * b))",
        "(a * a - b * b) / ((a * a + b * b) * (a * a + b * b))",
        "2.0 * a * b / ((a * a + b * b) * (a * a + b * b))"),
       np.arctan2, (_R, (0.5, 3.0)), doc="NaN derivative at the origin"),
    Op(25, "sinh", 1, "math.sinh(a)", ("math.cosh(a)",), ("r",), np.sinh, (_R,)),
    Op(26, "cosh", 1, "math.cosh(a)", ("math.sinh(a)",), ("r",), np.cosh, (_R,)),
    Op(27, "tanh", 1, "_tanh(a)", ("1.0 - r * r",), ("-2.0 * r * (1.0 - r * r)",),
       np.tanh, (_R,), frozenset({VECTOR_FN})),
    Op(28, "arcsinh", 1, "math.asinh(a)", ("1.0 / math.sqrt(a * a + 1.0)",),
       ("-a / (a * a + 1.0) ** 1.5",), np.arcsinh, (_R,)),
    Op(29, "arccosh", 1, "math.acosh(a)", ("1.0 / math.sqrt(a * a - 1.0)",),
       ("-a / (a * a - 1.0) ** 1.5",), np.arccosh, ((1.1, 4.0),)),
    Op(30, "arctanh", 1, "math.atanh(a)", ("1.0 / (1.0 - a * a)",),
       ("2.0 * a / ((1.0 - a * a) * (1.0 - a * a))",), np.arctanh, (_UNIT,)),
    # --- piecewise ------------------------------------------------------------------------
    Op(31, "abs", 1, "abs(a)", ("_sign(a)",), (Z,), np.abs, (_R,),
       frozenset({PIECEWISE, EXACT}), doc="derivative sign(a): 0 at 0", kink=_from_zero,
       aliases=(np.fabs,)),
    Op(32, "sign", 1, "_sign(a)", (Z,), (Z,), np.sign, (_R,),
       frozenset({ZERO_DERIVATIVE, PIECEWISE, EXACT}), kink=_from_zero),
    Op(33, "floor", 1, "np.floor(a)", (Z,), (Z,), np.floor, (_R,),
       frozenset({ZERO_DERIVATIVE, PIECEWISE, EXACT}), kink=_from_integers),
    Op(34, "ceil", 1, "np.ceil(a)", (Z,), (Z,), np.ceil, (_R,),
       frozenset({ZERO_DERIVATIVE, PIECEWISE, EXACT}), kink=_from_integers),
    Op(35, "maximum", 2, "_maximum(a, b)",
       ("1.0 if a > b else (0.5 if a == b else 0.0)",
        "1.0 if b > a else (0.5 if a == b else 0.0)"),
       _Z3, np.maximum, (_R, _R), frozenset({COMMUTATIVE, PIECEWISE, EXACT}) | _FAST2,
       doc="1/2 to each operand at a tie; NaN propagates like numpy", **_TIES),
    Op(36, "minimum", 2, "_minimum(a, b)",
       ("1.0 if a < b else (0.5 if a == b else 0.0)",
        "1.0 if b < a else (0.5 if a == b else 0.0)"),
       _Z3, np.minimum, (_R, _R), frozenset({COMMUTATIVE, PIECEWISE, EXACT}),
       doc="1/2 to each operand at a tie; NaN propagates like numpy", **_TIES),
    Op(37, "hypot", 2, "math.hypot(a, b)",
       ("0.0 if r == 0.0 else a / r", "0.0 if r == 0.0 else b / r"),
       ("0.0 if r == 0.0 else b * b / (r * r * r)", "0.0 if r == 0.0 else -a * b / (r * r * r)",
        "0.0 if r == 0.0 else a * a / (r * r * r)"),
       np.hypot, (_R, _R), frozenset({COMMUTATIVE, SWAPPABLE}),
       doc="derivative 0 at the origin"),
    Op(38, "clip", 3, "_clip(a, b, c)",
       ("1.0 if (a >= b and a <= c) else 0.0",
        "1.0 if (a < b and b <= c) else 0.0",
        "1.0 if (a > c or b > c) else 0.0"),
       _Z6, np.clip, (_R, (-1.0, -0.2), (0.2, 1.0)), frozenset({PIECEWISE, EXACT}),
       doc="d/dx = 1 on lo <= x <= hi; d/dlo where x < lo; d/dhi where x > hi",
       kink=_from_bounds, edges=_at_bounds),
    Op(39, "where", 3, "b if a != 0.0 else c",
       (Z, "1.0 if a != 0.0 else 0.0", "0.0 if a != 0.0 else 1.0"),
       _Z6, _sel, ((0.0, 1.0), _R, _R), frozenset({PIECEWISE, FAST_BLOCK, EXACT}),
       doc="select: the untaken operand gets an exactly zero adjoint", rank=7,
       edges=_conditions),
    Op(40, "logaddexp", 2, "_logaddexp(a, b)", ("_exp(a - r)", "_exp(b - r)"),
       ("_exp(a - r) * (1.0 - _exp(a - r))", "-_exp(a - r) * _exp(b - r)",
        "_exp(b - r) * (1.0 - _exp(b - r))"),
       np.logaddexp, (_R, _R), frozenset({COMMUTATIVE, SWAPPABLE, VECTOR_FN, FAST_BROADCAST})),
    Op(41, "stop_gradient", 1, "a", (Z,), (Z,), lambda a: np.array(a, dtype=np.float64),
       (_R,), frozenset({ZERO_DERIVATIVE, EXACT}),
       doc="value passes through, derivative 0 (detach)", trace=_stop_gradient),
    # --- comparisons: value 1.0 or 0.0, derivative 0 -------------------------------------
    Op(42, "less", 2, "1.0 if a < b else 0.0", (Z, Z), _Z3, np.less, (_R, _R), _CMP, **_TIES),
    Op(43, "less_equal", 2, "1.0 if a <= b else 0.0", (Z, Z), _Z3, np.less_equal,
       (_R, _R), _CMP, **_TIES),
    Op(44, "greater", 2, "1.0 if a > b else 0.0", (Z, Z), _Z3, np.greater, (_R, _R),
       _CMP, **_TIES),
    Op(45, "greater_equal", 2, "1.0 if a >= b else 0.0", (Z, Z), _Z3, np.greater_equal,
       (_R, _R), _CMP, **_TIES),
    Op(46, "equal", 2, "1.0 if a == b else 0.0", (Z, Z), _Z3, np.equal, (_R, _R),
       _CMP | {COMMUTATIVE, SWAPPABLE}, **_TIES),
    Op(47, "not_equal", 2, "1.0 if a != b else 0.0", (Z, Z), _Z3, np.not_equal,
       (_R, _R), _CMP | {COMMUTATIVE, SWAPPABLE}, **_TIES),
    # --- numpy's division family: npy_divmod's values (fmod, then the sign correction) ---
    Op(48, "mod", 2, "_mod(a, b)", ("1.0", "-_floordiv(a, b)"), _Z3, np.remainder,
       (_R, (0.3, 2.0)), frozenset({PIECEWISE, EXACT}),
       doc="d/da = 1, d/db = -floor_divide(a, b) (JAX's -floor(a/b) but from numpy's "
           "quotient, so the true derivative where a/b rounds to an integer); a jump at "
           "multiples of b takes the value's side",
       kink=_from_multiples, edges=_divisors),
    Op(49, "fmod", 2, "np.fmod(a, b)", ("1.0", "-np.rint((a - r) / b)"), _Z3, np.fmod,
       (_R, (0.3, 2.0)), frozenset({PIECEWISE, EXACT}),
       doc="d/da = 1, d/db = -n where r = a - n*b (JAX's -trunc(a/b), exact n)",
       kink=_from_multiples, edges=_divisors),
    Op(50, "floor_divide", 2, "_floordiv(a, b)", (Z, Z), _Z3, np.floor_divide,
       (_R, (0.3, 2.0)), frozenset({ZERO_DERIVATIVE, PIECEWISE, EXACT}),
       doc="numpy's quotient (1.0 // 0.1 == 9.0); derivative 0 (JAX)",
       kink=_from_multiples, edges=_divisors),
    # --- NaN-ignoring extremes and other numpy ufuncs -----------------------------------
    Op(51, "fmax", 2, "_fmax(a, b)",
       ("1.0 if (a > b or b != b) else 0.0", "0.0 if (a > b or b != b) else 1.0"),
       _Z3, np.fmax, (_R, _R), frozenset({PIECEWISE, EXACT}),
       doc="NaN-ignoring; the derivative goes to the operand taken, to b at a tie (JAX)",
       **_TIES),
    Op(52, "fmin", 2, "_fmin(a, b)",
       ("1.0 if (a < b or b != b) else 0.0", "0.0 if (a < b or b != b) else 1.0"),
       _Z3, np.fmin, (_R, _R), frozenset({PIECEWISE, EXACT}),
       doc="NaN-ignoring; the derivative goes to the operand taken, to b at a tie (JAX)",
       **_TIES),
    Op(53, "logaddexp2", 2, "_logaddexp2(a, b)", ("np.exp2(a - r)", "np.exp2(b - r)"),
       # ln2 p q with q = 2**(b - r), not 1 - p: exact also where one term dominates
       ("0.6931471805599453 * np.exp2(a - r) * np.exp2(b - r)",
        "-0.6931471805599453 * np.exp2(a - r) * np.exp2(b - r)",
        "0.6931471805599453 * np.exp2(a - r) * np.exp2(b - r)"),
       np.logaddexp2, (_R, _R), frozenset({COMMUTATIVE, SWAPPABLE})),
    Op(54, "sinc", 1, "_sinc(a)", ("_sinc_derivative(1.0, a)",),
       ("_sinc_derivative(2.0, a)",), np.sinc, (_R,),
       doc="derivatives from Taylor series near 0: 0 and -pi**2/3 at 0",
       edges=_zeros_first),
    Op(55, "heaviside", 2, "_heaviside(a, b)", (Z, "1.0 if a == 0.0 else 0.0"), _Z3,
       np.heaviside, ((-1.0, 1.0), _R), frozenset({PIECEWISE, EXACT}),
       doc="d/da = 0 (also at 0); d/db = 1 where a == 0, else 0 (JAX)",
       kink=_from_zero_first, edges=_zeros_first),
    Op(56, "rint", 1, "np.rint(a)", (Z,), (Z,), np.rint, (_R,),
       frozenset({ZERO_DERIVATIVE, PIECEWISE, EXACT}),
       doc="round half to even; derivative 0 (JAX), also for np.round/np.around",
       kink=_from_half_integers, edges=_halves),
    Op(57, "trunc", 1, "np.trunc(a)", (Z,), (Z,), np.trunc, (_R,),
       frozenset({ZERO_DERIVATIVE, PIECEWISE, EXACT}),
       doc="derivative 0 (JAX), also for np.fix", kink=_from_integers, edges=_integers),
    Op(58, "isnan", 1, "1.0 if a != a else 0.0", (Z,), (Z,), np.isnan, (_R,), _CMP,
       edges=_non_finite),
    Op(59, "isfinite", 1, "1.0 if math.isfinite(a) else 0.0", (Z,), (Z,), np.isfinite,
       (_R,), _CMP, edges=_non_finite),
    Op(60, "isinf", 1, "1.0 if math.isinf(a) else 0.0", (Z,), (Z,), np.isinf, (_R,), _CMP,
       edges=_non_finite),
    Op(61, "signbit", 1, "1.0 if math.copysign(1.0, a) < 0.0 else 0.0", (Z,), (Z,),
       np.signbit, (_R,), _CMP, edges=_signed_zeros),
    Op(62, "conjugate", 1, "a", ("1.0",), (Z,), np.conjugate, (_R,),
       frozenset({LINEAR, EXACT}), doc="real input: the identity"),
    Op(63, "copysign", 2, "math.copysign(a, b)",
       ("math.copysign(1.0, a) * math.copysign(1.0, b)", Z), _Z3, np.copysign, (_R, _R),
       frozenset({PIECEWISE, EXACT}),
       doc="d/da = +-1 by whether the signs of a and b agree (1 at a = +0, b > 0: JAX); "
           "d/db = 0", kink=_from_zero_either, edges=_zeros_either),
    # --- scipy.special ufuncs: scipy's own formulas ----------------------------------------
    # r (1 - r) as expit(a) expit(-a), and 1 - 2 r as -tanh(a / 2): no cancelling to 0
    Op(64, "expit", 1, "1.0 / (1.0 + math.exp(-a))", ("r * (1.0 / (1.0 + math.exp(a)))",),
       ("-r * (1.0 / (1.0 + math.exp(a))) * math.tanh(0.5 * a)",),
       ScipySpecial("expit"), ((-8.0, 8.0),), doc="the logistic sigmoid 1 / (1 + exp(-a))"),
    Op(65, "logit", 1, "_logit(a)", ("1.0 / (a * (1.0 - a))",),
       ("(2.0 * a - 1.0) / (a * a * (1.0 - a) * (1.0 - a))",), ScipySpecial("logit"),
       ((0.02, 0.98),)),
    Op(66, "erf", 1, "_erf(a)", ("1.1283791670955126 * math.exp(-a * a)",),
       ("-2.256758334191025 * a * math.exp(-a * a)",), ScipySpecial("erf"), (_R,)),
    Op(67, "erfc", 1, "_erfc(a)", ("-1.1283791670955126 * math.exp(-a * a)",),
       ("2.256758334191025 * a * math.exp(-a * a)",), ScipySpecial("erfc"), (_R,)),
    Op(68, "gammaln", 1, "_gammaln(a)", ("_digamma(a)",), ("_polygamma(1.0, a)",),
       ScipySpecial("gammaln"), ((2.2, 8.0),),
       doc="log|Gamma(a)|; derivatives digamma and trigamma"),
    Op(69, "digamma", 1, "_digamma(a)", ("_polygamma(1.0, a)",), ("_polygamma(2.0, a)",),
       ScipySpecial("psi"), ((0.1, 6.0),),  # scipy.special.digamma is the ufunc psi
       doc="cephes' psi (scipy's); derivatives trigamma and tetragamma (own series)",
       edges=_positive_integers),
    Op(70, "xlogy", 2, "_xlogy(a, b)", ("math.log(b)", "_azmul(a, 1.0 / b)"),
       (Z, "1.0 / b", "0.0 if a == 0.0 else -a / (b * b)"), ScipySpecial("xlogy"), (_R, _POS),
       doc="0 where a == 0 (b not NaN); d/da = log(b) (JAX), d/db = 0 where a == 0",
       edges=_zeros_first),
    Op(71, "xlog1py", 2, "_xlog1py(a, b)",
       ("math.log1p(b)", "_azmul(a, 1.0 / (1.0 + b))"),
       (Z, "1.0 / (1.0 + b)", "0.0 if a == 0.0 else -a / ((1.0 + b) * (1.0 + b))"),
       ScipySpecial("xlog1py"), (_R, (-0.9, 3.0)),
       doc="0 where a == 0 (b not NaN); d/da = log1p(b) (JAX), d/db = 0 where a == 0",
       edges=_zeros_first),
    # --- derivatives of every order: an op whose partial is itself at the next order ---
    Op(72, "polygamma", 2, "_polygamma(a, b)", (Z, "_polygamma(a + 1.0, b)"),
       (Z, Z, "_polygamma(a + 2.0, b)"), _polygamma, ((0.0, 4.0), (0.1, 6.0)),
       frozenset({ORDER_OPERAND}),
       doc="scipy.special.polygamma(n, x), the n-th derivative of digamma, for n = 0, 1, "
           "..., 170 (NaN for any other n); d/dn = 0. Also trigamma and tetragamma, the "
           "derivatives of digamma and gammaln", edges=_orders,
       trace=_traced("polygamma")),  # tapejit.special.polygamma
    Op(73, "sinc_derivative", 2, "_sinc_derivative(a, b)",
       (Z, "_sinc_derivative(a + 1.0, b)"), (Z, Z, "_sinc_derivative(a + 2.0, b)"),
       _sinc_derivative, ((0.0, 4.0), _R), frozenset({ORDER_OPERAND}),
       doc="the n-th derivative of sinc(x) for n = 0, 1, ..., 16 (NaN for any other n), "
           "sinc's derivatives; d/dn = 0", edges=_orders_and_zeros,
       trace=_traced("sinc_derivative")),
    # --- nested differentiation (tapejit/_nested.py) ---------------------------------------
    # The NaN policy's product as an op of its own: an adjoint times a partial that nested
    # differentiation records into a tape. Its derivatives are mul's (the product rule), so
    # a gradient of a gradient is right where a factor is exactly 0, which a select on
    # ``adjoint == 0`` (derivative 0 there) would get wrong.
    Op(100, "azmul", 2, "_azmul(a, b)", ("b", "a"), (Z, "1.0", Z), _azmul, (_R, _R),
       frozenset({COMMUTATIVE, SWAPPABLE, EXACT}),
       doc="a * b, but exactly 0 where either factor is 0 (the sweeps' adjoint product, "
           "recorded by nested differentiation)", trace=_traced("azmul")),
]

#: All ops, in opcode order.
OPS: tuple[Op, ...] = tuple(sorted(_TABLE, key=lambda op: op.code))
#: Ops by name.
BY_NAME: dict[str, Op] = {op.name: op for op in OPS}
#: Ops by opcode.
BY_CODE: dict[int, Op] = {op.code: op for op in OPS}

if len(BY_NAME) != len(OPS) or len(BY_CODE) != len(OPS):
    raise RuntimeError("duplicate op name or opcode in the op table")

def math_to_numpy(ops: Iterable[Op] = OPS) -> dict[str, str]:
    """``math`` function name -> numpy ufunc name, where an op's value calls ``math`` and
    its numpy reference is a ufunc of another name (``math.asin`` is ``np.arcsin``): the
    reference interpreter evaluates the table's expressions with numpy.

    Only where numpy has no function of the ``math`` name or it is that same ufunc
    (numpy 2's ``np.asin`` is ``np.arcsin``): the map renames every ``math.f`` in every
    expression, so an op whose value is ``math.log2(a)`` but whose reference is
    ``np.logaddexp2`` must not turn ``math.log2`` into ``logaddexp2``.
    """
    out = {}
    for op in ops:
        m = re.fullmatch(r"math\.(\w+)\(.*\)", op.value)
        if m is None or not isinstance(op.numpy, np.ufunc) or m[1] == op.numpy.__name__:
            continue
        same_name = getattr(np, m[1], None)
        if same_name is None or same_name is op.numpy:
            out[m[1]] = op.numpy.__name__
    return out


#: Helpers with a twin that vectorizes but is exact only where ``guard`` (of the helper's
#: argument ``{x}``) is false: ``helper -> (twin, guard)``. The batched sweeps call the
#: twin over a whole row and redo the (rare) guarded elements with the helper, so every
#: sweep gives the helper's bits. The helpers and twins are in ``tapejit/_kernels/libm.py``.
TWINS: dict[str, tuple[str, str]] = {
    "_sin": ("_sin_near", "abs({x}) > _TRIG_MAX"),
    "_cos": ("_cos_near", "abs({x}) > _TRIG_MAX"),
}

#: Op-table fingerprints of tape files of format version 1, which carry one hash of the
#: whole table instead of one per op (``tapejit._io``): tables whose opcodes mean what
#: they mean now. Version 1 was last written by the second one. Should an op that
#: existed then change meaning, these entries must go: such a file does not say which
#: definitions it used.
COMPATIBLE_FINGERPRINTS: dict[str, str] = {
    "b0440a458002765c": "tapejit 0.1 before tapejit's own sin, cos and log (were libm's)",
    "544b622e883cef34": "tapejit 0.1, the last op table that wrote format version 1",
}


#: Fingerprints of earlier definitions of an op that compute what it computes now, by op
#: name: a tape file saved with one of them still loads (``tapejit._io``). Only for
#: rewritten expressions whose values and derivatives are the same in every sweep, or
#: differ only at a singular point the reason names.
EQUIVALENT_FINGERPRINTS: dict[str, dict[str, str]] = {
    "pow": {"86d2ceb9501d419a": "partials as branches on b == 0 and r == 0 (tapejit 0.1), "
                                "the same numbers but where those gave NaN (0 * inf); "
                                "_azmul also gives the right nested derivative",
            "6d686983ccd19b2e": "second partials as branches on a == 0 (tapejit 0.1): the "
                                "same values and gradients, and Hessians except at a == 0, "
                                "where the second derivatives are now those of the partials "
                                "as written (the nested ones): -inf for d2/da db at b == 1 "
                                "where the branches said 0"},
}


#: tapejit's own functions (``tapejit/_kernels/libm.py``) that replaced a C library call
#: in the table's expressions, by the call they replaced. They compute the same function
#: to within an ulp, so the op means what it meant: :func:`op_fingerprint` hashes the
#: expressions with the call they replaced, and tape files saved before still load.
REPLACED_CALLS: dict[str, str] = {
    "_exp": "math.exp",
    "_expm1": "math.expm1",
    "_log1p": "math.log1p",
    "_tanh": "math.tanh",
}


def _as_replaced(source: str) -> str:
    """``source`` with each call of a :data:`REPLACED_CALLS` function spelled as the call
    it replaced."""
    return re.sub(r"\b(" + "|".join(REPLACED_CALLS) + r")\(",
                  lambda m: REPLACED_CALLS[m[1]] + "(", source)


def _helper_sources() -> dict[str, str]:
    """Source text of each scalar helper the table's expressions may call, by name.

    The one place that knows where the helpers live: ``tapejit/_kernels/scalar.py``.
    tapejit's own ``_sin``, ``_cos`` and ``_log`` (``tapejit/_kernels/libm.py``) are
    not listed: they compute the function their name says, so a new implementation
    does not change what an op means.
    """
    source = kernel_body("scalar")
    tree = ast.parse(source)
    return {node.name: ast.get_source_segment(source, node) or ""
            for node in tree.body if isinstance(node, ast.FunctionDef)}


_CALL = re.compile(r"\b(_\w+)\s*\(")


def _code_tokens(source: str) -> str:
    """A helper's code from its ``def`` on, without decorators, comments, blank lines and
    layout: what a hash of its meaning should see (rewording a comment, or moving the
    helper to another file with other decorators, changes nothing)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    toks = [t for t in tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline)
            if t.type not in skip]
    start = next(i for i, t in enumerate(toks) if t.type == tokenize.NAME and t.string == "def")
    return " ".join(t.string if t.string.strip() else tokenize.tok_name[t.type]
                    for t in toks[start:])


@functools.cache
def op_fingerprint(op: Op) -> str:
    """A short hash of what ``op`` means: its opcode, name, arity, value and derivative
    expressions, and the code of every scalar helper those call (directly or through
    another helper), with tapejit's own functions spelled as the C library calls they
    replaced (:data:`REPLACED_CALLS`).

    A tape file records it for each op it uses (``tapejit._io``) and is refused where
    one of them differs: an op whose definition is unchanged keeps its hash whatever
    else the table gains.
    """
    sources = {name: _as_replaced(src) for name, src in _helper_sources().items()}
    todo = [*op.partials, *op.second, op.value]
    used: set[str] = set()
    while todo:
        for name in _CALL.findall(todo.pop()):
            if name in sources and name not in used:
                used.add(name)
                todo.append(sources[name])
    h = hashlib.sha256()
    exprs = tuple(_as_replaced(e) for e in (op.value, *op.partials, *op.second))
    value, partials, second = exprs[0], exprs[1 : 1 + op.arity], exprs[1 + op.arity :]
    h.update(repr((op.code, op.name, op.arity, value, partials, second)).encode())
    for name in sorted(used):
        h.update(f"\n{name}: {_code_tokens(sources[name])}".encode())
    return h.hexdigest()[:16]
