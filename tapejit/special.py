"""scipy.special functions that record: ``logsumexp``, ``softmax`` and ``log_softmax``.

scipy implements these in Python on top of ``np.asarray``, which a traced value cannot
pass through; the functions here have scipy's signatures and are written with numpy
calls that record (and, given plain arrays, compute scipy's values to a few ulp). Each
shifts by the maximum for stability, as scipy does: the maximum is a reduction
instruction (no guard, so the tape is valid at every point) whose derivative is not
needed, since the result does not depend on the shift (it is held by
:func:`tapejit.stop_gradient`).

``polygamma`` records too (scipy's is not a ufunc). The elementwise scipy.special
functions that record are scipy's own ufuncs, re-exported
here so that they are easy to find: ``expit``, ``logit``, ``erf``, ``erfc``, ``gammaln``,
``digamma`` (``psi``), ``xlogy`` and ``xlog1py``. Their derivative conventions are listed
in the docs' op table.

>>> import numpy as np, tapejit
>>> from tapejit.special import logsumexp
>>> tape = tapejit.record(lambda x: logsumexp(x), np.zeros(3))
>>> float(tape.forward(np.log([1.0, 2.0, 3.0])))  # log(1 + 2 + 3)
1.791759469228055
>>> tape.gradient(np.log([1.0, 2.0, 3.0])).round(6).tolist()  # the softmax
[0.166667, 0.333333, 0.5]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._record import stop_gradient
from ._tracer import Tracer, emit

if TYPE_CHECKING:  # at run time each is imported at its first access, by __getattr__
    from scipy.special import digamma, erf, erfc, expit, gammaln, logit, psi, xlog1py, xlogy

__all__ = [
    "digamma",
    "erf",
    "erfc",
    "expit",
    "gammaln",
    "log_softmax",
    "logit",
    "logsumexp",
    "polygamma",
    "psi",
    "softmax",
    "xlog1py",
    "xlogy",
]

Axis = int | tuple[int, ...] | None


def __getattr__(name: str) -> Any:
    # The ufuncs of scipy.special re-exported here (PEP 562): ``import tapejit`` does not
    # import scipy.special. Called only for names not defined yet, so the names of
    # __all__ that get here are those.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import scipy.special

    func = getattr(scipy.special, name)
    globals()[name] = func  # later accesses find it directly (threads set the same object)
    return func


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _max_and_shift(x: Any, axis: Axis) -> tuple[Any, Any]:
    """The maximum along ``axis`` (kept as length-1 axes), and the shift: the maximum
    where it is finite, else 0 (as scipy: no ``inf - inf``), without derivative."""
    m = np.max(x, axis=axis, keepdims=True)
    return m, stop_gradient(np.where(np.isfinite(m), m, 0.0))


def _float_array(x: Any) -> Any:
    return x if isinstance(x, Tracer) else np.asarray(x, dtype=np.float64)


def logsumexp(a: Any, axis: Axis = None, b: Any = None, keepdims: bool = False,
              return_sign: bool = False) -> Any:
    """``log(sum(b * exp(a)))`` along ``axis``, computed stably; records.

    Same arguments and values as :func:`scipy.special.logsumexp` for real input: the
    largest terms are summed apart from the others and the rest enters through
    ``log1p``, as scipy does, so a dominant term keeps full precision.

    Parameters
    ----------
    a : array_like or traced array
        Exponents.
    axis : int or tuple of int, optional
        Axes summed over; all of them by default.
    b : array_like or traced array, optional
        Weights, broadcast with ``a``; may be negative or zero. Where ``b`` is a constant
        0 the element of ``a`` is ignored, even if infinite or NaN (as scipy).
    keepdims : bool, optional
        Keep the summed axes with length 1.
    return_sign : bool, optional
        Return ``(log|s|, sign(s))`` instead of ``log(s)``, which is NaN for ``s < 0``.

    Returns
    -------
    res : ndarray or traced array
        ``log(|s|)`` where ``s = sum(b * exp(a))``.
    sgn : ndarray or traced array
        ``sign(s)`` (derivative 0); only if ``return_sign``.

    Notes
    -----
    The gradient with respect to ``a`` is the softmax weights ``b * exp(a - res)``; at
    ties of the maximum every tied element gets its own share (the shift carries no
    derivative).
    """
    a = _float_array(a)
    if b is not None:
        b = _float_array(b)
        shape = np.broadcast_shapes(np.shape(a), np.shape(b))
        a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
        if not isinstance(b, Tracer):
            # scipy: an element with weight 0 adds nothing, even where a is inf or NaN
            a = np.where(b == 0.0, -np.inf, a)
    if np.ndim(a) == 0:
        a = np.reshape(a, (1,))
        b = None if b is None else np.reshape(b, (1,))
    out_shape = np.sum(np.broadcast_to(0.0, np.shape(a)), axis=axis, keepdims=keepdims).shape
    # with traced weights, an element of weight 0 is ignored by the maximum only
    masked = a if b is None or not isinstance(b, Tracer) else np.where(b == 0.0, -np.inf, a)
    peak, m = _max_and_shift(masked, axis)
    top = np.equal(masked, peak)  # the maximal elements: exp(a - m) is exactly 1 there
    terms = np.exp(a - m) if b is None else b * np.exp(a - m)
    count = np.sum(np.where(top, terms, 0.0), axis=axis, keepdims=True)
    rest = np.sum(np.where(top, 0.0, terms), axis=axis, keepdims=True)
    s = np.where(rest == 0.0, rest, rest / count)
    sgn = np.sign(s + 1.0) * np.sign(count)
    s = np.where(s < -1.0, -s - 2.0, s)
    out = np.log1p(s) + np.log(np.abs(count)) + m
    if not return_sign:
        out = np.where(sgn < 0.0, np.nan, out)
    out, sgn = _scalar(np.reshape(out, out_shape)), _scalar(np.reshape(sgn, out_shape))
    return (out, sgn) if return_sign else out


def _scalar(x: Any) -> Any:
    """A 0-d plain array as a numpy scalar (as scipy returns); anything else as it is."""
    return x[()] if not isinstance(x, Tracer) and np.ndim(x) == 0 else x


def polygamma(n: Any, x: Any) -> Any:
    """``psi^(n)(x)``, the ``n``-th derivative of the digamma function; records.

    Same values as :func:`scipy.special.polygamma` (digamma for ``n = 0``), to a few
    ulp, and NaN where ``n`` is not one of 0, 1, ..., 170. Its derivative in ``x`` is
    ``polygamma(n + 1, x)``, so it differentiates to any order; in ``n`` it is 0.

    Parameters
    ----------
    n : array_like or traced array
        Orders 0, 1, 2, ..., broadcast with ``x``.
    x : array_like or traced array
        Arguments.

    Returns
    -------
    ndarray or traced array
        ``psi^(n)(x)``.

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> from tapejit.special import polygamma
    >>> tape = tapejit.record(lambda x: polygamma(1, x), 1.0)
    >>> round(float(tape.forward(1.0)), 12)  # trigamma(1) = pi**2 / 6
    1.644934066848
    >>> round(float(tape.gradient(1.0)), 12)  # tetragamma(1) = -2 zeta(3)
    -2.404113806319
    """
    return emit("polygamma", n, x)


def softmax(x: Any, axis: Axis = None) -> Any:
    """``exp(x) / sum(exp(x))`` along ``axis``, shifted by the maximum; records.

    Same arguments and values as :func:`scipy.special.softmax`.

    Parameters
    ----------
    x : array_like or traced array
        Input.
    axis : int or tuple of int, optional
        Axes normalized over; all of them by default.

    Returns
    -------
    ndarray or traced array
        The shape of ``x``, summing to 1 along ``axis``.
    """
    x = _float_array(x)
    e = np.exp(x - stop_gradient(np.max(x, axis=axis, keepdims=True)))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: Any, axis: Axis = None) -> Any:
    """``x - logsumexp(x)`` along ``axis``, shifted by the maximum; records.

    Same arguments and values as :func:`scipy.special.log_softmax`.

    Parameters
    ----------
    x : array_like or traced array
        Input.
    axis : int or tuple of int, optional
        Axes normalized over; all of them by default.

    Returns
    -------
    ndarray or traced array
        The shape of ``x``; ``exp`` of it sums to 1 along ``axis``.
    """
    x = _float_array(x)
    t = x - _max_and_shift(x, axis)[1]
    return t - np.log(np.sum(np.exp(t), axis=axis, keepdims=True))
