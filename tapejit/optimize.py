"""Optimization with tape derivatives: scipy drivers and batched multistart.

* :func:`minimize` wraps :func:`scipy.optimize.minimize`: one fused value-and-gradient
  sweep per evaluation and, for the second-order methods, Hessian-vector products or
  Hessians from the same tape.
* :func:`least_squares` wraps :func:`scipy.optimize.least_squares` with the residual
  Jacobian from the tape.
* :func:`multistart` runs Adam or gradient descent from many starting points at once,
  one batched sweep over all of them per step (no scipy needed).

``f`` is recorded once per argument signature through the tape cache it shares with
:func:`tapejit.grad` and the other transforms. The first argument is differentiated;
the extra ``args`` become tape *parameters* (array-like values, fixed during a run and
free to change between runs without re-recording) or, for ints, strings and other
hashable non-arrays, static arguments that are part of the cache key.

scipy is an optional dependency (``pip install tapejit[opt]``), imported when
:func:`minimize` or :func:`least_squares` is called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._tape import Tape
from ._transforms import tape_cache

__all__ = ["MultistartResult", "least_squares", "minimize", "multistart"]

#: scipy methods that use no derivatives at all: they get the value alone.
_DERIVATIVE_FREE = frozenset({"nelder-mead", "powell", "cobyla", "cobyqa"})
#: Second-order methods that take Hessian-vector products (``hessp``).
_HESSP_METHODS = frozenset({"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"})
#: Second-order methods that need the Hessian matrix itself (``hess``).
_HESS_METHODS = frozenset({"dogleg", "trust-exact"})
_SECOND_ORDER = _HESSP_METHODS | _HESS_METHODS

_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8


def _import_scipy_optimize() -> Any:
    try:
        import scipy.optimize
    except ImportError as exc:
        raise ImportError(
            "tapejit.optimize.minimize and least_squares need scipy; install it with "
            "`pip install tapejit[opt]` (or `pip install scipy`)"
        ) from exc
    return scipy.optimize


def _reject(options: dict[str, Any], names: Sequence[str], why: str) -> None:
    for name in names:
        if name in options:
            raise TypeError(f"{name}= cannot be given: {why}")


class _Objective:
    """Evaluations of ``f(x, *args)`` at flat points ``x``, each through the tape cache.

    Every evaluation asks the cache for the tape of the call it is about to make
    (``tape_cache(f).prepare``), so whatever the cache decides per call (re-recording,
    for instance) applies here too. Counts the sweeps it runs.
    """

    def __init__(self, f: Callable[..., Any], x0: ArrayLike, args: tuple, what: str) -> None:
        if not callable(f):
            raise TypeError(f"{what} must be callable; got {type(f).__name__}")
        if not isinstance(args, tuple):
            args = (args,)
        x0 = np.asarray(x0)
        if x0.dtype.kind not in "iuf":
            raise TypeError(f"x0 must hold real numbers; got dtype {x0.dtype}")
        self.cache = tape_cache(f)
        self.args = args
        self.shape = x0.shape
        self.tape, x, self.params, _ = self.cache.prepare((x0, *args), 0)
        self.x0 = np.array(x, dtype=np.float64)  # flat, owned (scipy may write into it)
        self.nfev = 0  # sweeps that evaluated f (value alone or fused with the gradient)
        self.njev = 0  # gradients or Jacobians computed
        self.nhev = 0  # Hessians or Hessian-vector products computed

    def _at(self, x: np.ndarray) -> tuple[Tape, np.ndarray, np.ndarray | None]:
        tape, xf, p, _ = self.cache.prepare((x.reshape(self.shape), *self.args), 0)
        return tape, xf, p

    def value(self, x: np.ndarray) -> float:
        tape, xf, p = self._at(x)
        self.nfev += 1
        return float(tape.forward(xf, params=p))

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        tape, xf, p = self._at(x)
        self.nfev += 1
        self.njev += 1
        # A fresh gradient array per call, not a reused out= buffer: scipy keeps the
        # arrays it is given (BFGS forms y = g_new - g_old from two of them).
        return tape.value_and_grad(xf, params=p)

    def hessp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        tape, xf, p = self._at(x)
        self.nhev += 1
        return tape.hvp(xf, v, params=p)

    def hessian(self, x: np.ndarray) -> np.ndarray:
        tape, xf, p = self._at(x)
        self.nhev += 1
        return tape.hessian(xf, params=p)

    def residuals(self, x: np.ndarray) -> np.ndarray:
        tape, xf, p = self._at(x)
        self.nfev += 1
        return np.atleast_1d(np.asarray(tape.forward(xf, params=p), dtype=np.float64))

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        tape, xf, p = self._at(x)
        self.njev += 1
        return tape.jacobian(xf, params=p, mode="auto")

    def unflatten(self, res: Any, fields: Sequence[str]) -> None:
        """Reshape the flat vectors ``res[field]`` back to the shape of ``x0``."""
        n = int(np.prod(self.shape, dtype=np.int64))
        for name in fields:
            val = res.get(name)
            if isinstance(val, np.ndarray) and val.size == n:
                res[name] = val.reshape(self.shape)


def _second_order(
    obj: _Objective, meth: str, hess: Any
) -> tuple[Any, Callable[..., np.ndarray] | None]:
    """``(hess, hessp)`` to hand scipy for method ``meth`` and the user's ``hess``."""
    if hess is False:
        return None, None
    if hess is None:  # automatic
        if meth == "_custom":
            return obj.hessian, obj.hessp  # both offered; the method calls what it uses
        if meth in _HESS_METHODS:
            return obj.hessian, None
        if meth in _HESSP_METHODS:
            return None, obj.hessp
        return None, None
    if isinstance(hess, str) and hess == "hess":
        return obj.hessian, None
    if isinstance(hess, str) and hess == "hessp":
        if meth in _HESS_METHODS:
            raise ValueError(
                f"method {meth!r} needs the Hessian matrix; use hess='hess' (or None)"
            )
        return None, obj.hessp
    return hess, None  # scipy's own: '2-point', a HessianUpdateStrategy, a callable


def minimize(
    f: Callable[..., Any],
    x0: ArrayLike,
    args: tuple = (),
    method: str | Callable[..., Any] = "BFGS",
    *,
    hess: Any = None,
    **scipy_options: Any,
) -> Any:
    """Minimize a scalar function with :func:`scipy.optimize.minimize` and tape derivatives.

    ``f(x, *args)`` is recorded once (at ``x0``'s shape) and every evaluation scipy asks
    for is one sweep of the tape that returns the value and the gradient together
    (``jac=True``). The second-order methods also get their curvature from the tape:
    Hessian-vector products (``hessp``) for ``"Newton-CG"``, ``"trust-ncg"``,
    ``"trust-krylov"`` and ``"trust-constr"``, the Hessian matrix (``hess``) for
    ``"dogleg"`` and ``"trust-exact"``. Derivative-free methods (``"Nelder-Mead"``,
    ``"Powell"``, ``"COBYLA"``, ``"COBYQA"``) get value-only sweeps.

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> float``, written with plain numpy; differentiated with respect
        to ``x`` only.
    x0 : array_like
        Starting point, of any shape; scipy works on it flattened, and the result's
        ``x`` (and ``jac``) are reshaped back to it.
    args : tuple, optional
        Extra arguments of ``f``, not differentiated. Array-like ones become tape
        parameters: a later call with new values of the same shapes reuses the tape.
        Other (hashable) ones are static: a new value records a new tape.
    method : str or callable, optional
        Any method of :func:`scipy.optimize.minimize`. Default ``"BFGS"``.
    hess : {None, "hess", "hessp", False} or object, optional
        Second derivatives for the methods that use them. ``None`` (default): chosen
        from the method as above. ``"hess"``: the Hessian matrix from the tape (also
        accepted by the ``hessp`` methods; it costs ``n`` Hessian-vector products).
        ``"hessp"``: Hessian-vector products from the tape. ``False``: none (scipy's
        default for the method, e.g. finite differences of the gradient for
        Newton-CG). Anything else (``"2-point"``, a
        :class:`scipy.optimize.HessianUpdateStrategy`, a callable of the flat ``x``) is
        passed to scipy unchanged.
    **scipy_options
        Passed to :func:`scipy.optimize.minimize`: ``bounds``, ``constraints``, ``tol``,
        ``callback``, ``options``. Callbacks and constraint functions see the flattened
        ``x``. ``jac`` and ``hessp`` are supplied from the tape and cannot be given.

    Returns
    -------
    scipy.optimize.OptimizeResult
        scipy's result, with ``x`` (and ``jac``) in the shape of ``x0`` and the
        evaluation counts taken from the tape calls actually made: ``nfev`` sweeps that
        evaluated ``f`` (each of them, for a gradient method, also computed the
        gradient: nothing else is spent on it), ``njev`` gradients computed (equal to
        ``nfev`` for gradient methods), ``nhev`` Hessians or Hessian-vector products
        computed. ``tape`` is the tape used at ``x0``.

    Raises
    ------
    ImportError
        If scipy is not installed.
    ValueError
        If ``f`` does not return a single number.

    See Also
    --------
    least_squares : nonlinear least squares with the residual Jacobian from the tape.
    multistart : batched first-order minimization from many starting points.

    Examples
    --------
    >>> import numpy as np
    >>> from tapejit.optimize import minimize
    >>> def rosen(x, a):
    ...     return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)
    >>> res = minimize(rosen, np.array([-1.2, 1.0]), args=(1.0,))
    >>> np.round(res.x, 6).tolist()
    [1.0, 1.0]
    """
    so = _import_scipy_optimize()
    _reject(scipy_options, ("jac", "hessp"), "tapejit computes them from the tape (see hess=)")
    obj = _Objective(f, x0, args, "f")
    if obj.tape.n_outputs != 1:
        raise ValueError(
            f"f must return a single number; it returns {obj.tape.n_outputs} values "
            "(for a vector of residuals use tapejit.optimize.least_squares)"
        )
    meth = "_custom" if callable(method) else str(method).lower()
    if meth in _DERIVATIVE_FREE:
        fun, jac = obj.value, None
    else:
        fun, jac = obj.value_and_grad, True
    h, hp = _second_order(obj, meth, hess)
    kwargs: dict[str, Any] = {}
    if jac is not None:
        kwargs["jac"] = jac
    if h is not None:
        kwargs["hess"] = h
    if hp is not None:
        kwargs["hessp"] = hp
    res = so.minimize(fun, obj.x0, method=method, **kwargs, **scipy_options)
    obj.unflatten(res, ("x", "jac"))
    res["nfev"] = obj.nfev
    res["njev"] = obj.njev
    res["nhev"] = obj.nhev
    res["tape"] = obj.tape
    return res


def least_squares(
    residuals: Callable[..., Any],
    x0: ArrayLike,
    args: tuple = (),
    **scipy_options: Any,
) -> Any:
    """Nonlinear least squares with :func:`scipy.optimize.least_squares` and the tape Jacobian.

    Minimizes ``0.5 * sum(residuals(x, *args) ** 2)`` (or a robust ``loss`` of it). The
    residuals are recorded once (at ``x0``'s shape); every evaluation is a forward sweep
    and every Jacobian one tape Jacobian (forward mode when there are fewer parameters
    than residuals, reverse mode otherwise).

    Parameters
    ----------
    residuals : callable
        ``residuals(x, *args)`` returning an array (any shape; flattened) or a tuple of
        arrays (flattened in order).
    x0 : array_like
        Starting point, of any shape; the result's ``x`` has this shape.
    args : tuple, optional
        Extra arguments, not differentiated (the data of a fit, typically). Array-like
        ones become tape parameters: new values of the same shapes reuse the tape.
    **scipy_options
        Passed to :func:`scipy.optimize.least_squares`: ``bounds``, ``method``,
        ``loss``, ``f_scale``, ``x_scale``, tolerances, ``max_nfev``, ``verbose``.
        ``jac`` is supplied from the tape; ``kwargs`` is not supported (use ``args``).

    Returns
    -------
    scipy.optimize.OptimizeResult
        scipy's result with ``x`` in the shape of ``x0``; ``fun`` is the flattened
        residual vector and ``jac`` its ``(n_residuals, x0.size)`` Jacobian; ``nfev`` and
        ``njev`` are the residual and Jacobian evaluations made; ``tape`` is the tape.

    Raises
    ------
    ImportError
        If scipy is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> from tapejit.optimize import least_squares
    >>> t = np.linspace(0.0, 4.0, 50)
    >>> y = 2.0 * np.exp(-1.3 * t) + 0.5
    >>> def r(p, t, y):
    ...     return p[0] * np.exp(-p[1] * t) + p[2] - y
    >>> res = least_squares(r, np.array([1.0, 1.0, 0.0]), args=(t, y))
    >>> np.round(res.x, 6).tolist()
    [2.0, 1.3, 0.5]
    """
    so = _import_scipy_optimize()
    _reject(scipy_options, ("jac",), "tapejit computes it from the tape")
    _reject(scipy_options, ("kwargs",), "pass extra arguments positionally in args")
    obj = _Objective(residuals, x0, args, "residuals")
    res = so.least_squares(obj.residuals, obj.x0, jac=obj.jacobian, **scipy_options)
    obj.unflatten(res, ("x",))
    res["nfev"] = obj.nfev
    res["njev"] = obj.njev
    res["tape"] = obj.tape
    return res


class MultistartResult(dict):
    """Result of :func:`multistart`; a dict whose keys are also attributes.

    Attributes
    ----------
    x : ndarray
        Best point found (the lowest value seen at any step, over all starts), in the
        shape of one start.
    fun : float
        ``f`` at ``x``.
    xs : ndarray
        Final point of every start, ``(n_starts, *x_shape)``.
    funs : ndarray
        ``f`` at the final points, ``(n_starts,)``.
    converged : ndarray of bool
        Per start: its gradient reached ``tol`` (always ``False`` without ``tol``).
    nit : int
        Update steps taken.
    nfev : int
        Batched sweeps (each a value and gradient at every start): ``nit + 1``.
    history : ndarray
        Best value seen so far, after each sweep, ``(nfev,)``.
    success : bool
        Whether ``fun`` is finite.
    message : str
        Why the run stopped.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __dir__(self) -> list[str]:
        return list(self.keys())

    def __repr__(self) -> str:
        keys = ("fun", "x", "nit", "nfev", "success", "message")
        body = ", ".join(f"{k}={self[k]!r}" for k in keys if k in self)
        return f"MultistartResult({body})"


def multistart(
    f: Callable[..., Any],
    x0s: ArrayLike,
    *,
    method: str = "adam",
    steps: int = 1000,
    lr: float = 1e-2,
    args: tuple = (),
    tol: float | None = None,
) -> MultistartResult:
    """Minimize ``f`` from many starting points at once with batched first-order steps.

    Every step is *one* batched sweep ``tape.value_and_grad(X)`` over all starts (the
    starts are the tape's points axis), followed by a vectorized numpy update of all of
    them: Adam (``beta1 = 0.9``, ``beta2 = 0.999``, ``eps = 1e-8``, bias-corrected) or
    plain gradient descent. Useful to find the global minimum of a function with many
    local minima, or to fit one model from many initial guesses.

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> float`` of one point ``x`` (plain numpy); recorded once.
    x0s : array_like
        Starting points, shape ``(n_starts, *x_shape)`` (``(n_starts,)`` for a scalar
        ``x``).
    method : {"adam", "gd"}, optional
        Update rule. Default ``"adam"``.
    steps : int, optional
        Maximum number of update steps. Default 1000.
    lr : float, optional
        Learning rate (step size). Default ``1e-2``.
    args : tuple, optional
        Extra arguments of ``f``, the same for every start; array-like ones are tape
        parameters (new values of the same shapes reuse the tape).
    tol : float, optional
        Convergence tolerance: a start whose gradient's largest component falls to
        ``tol`` or below stops moving, and the run ends when all starts have. Default:
        run all ``steps``.

    Returns
    -------
    MultistartResult
        ``x``, ``fun`` (the best point and value seen), ``xs``, ``funs`` (final points
        and values per start), ``converged``, ``nit``, ``nfev``, ``history``,
        ``success``, ``message``.

    Examples
    --------
    >>> import numpy as np
    >>> from tapejit.optimize import multistart
    >>> def wells(x):
    ...     return (x ** 2 - 1.0) ** 2 + 0.3 * x
    >>> res = multistart(wells, np.linspace(-2.0, 2.0, 8), steps=500, lr=0.02)
    >>> round(float(res.x), 2)
    -1.04
    """
    meth = str(method).lower()
    if meth not in ("adam", "gd"):
        raise ValueError(f"method must be 'adam' or 'gd'; got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    lr = float(lr)
    if not lr > 0.0:
        raise ValueError(f"lr must be positive; got {lr!r}")
    if tol is not None and not float(tol) >= 0.0:
        raise ValueError(f"tol must be non-negative; got {tol!r}")
    x0s = np.asarray(x0s)
    if x0s.dtype.kind not in "iuf":
        raise TypeError(f"x0s must hold real numbers; got dtype {x0s.dtype}")
    if x0s.ndim == 0 or x0s.shape[0] == 0:
        raise ValueError(f"x0s must have shape (n_starts, *x_shape) with n_starts >= 1; "
                         f"got {x0s.shape}")
    obj = _Objective(f, x0s[0], args, "f")
    tape, params = obj.tape, obj.params
    if tape.n_outputs != 1:
        raise ValueError(f"f must return a single number; it returns {tape.n_outputs} values")
    n_starts, x_shape = x0s.shape[0], x0s.shape[1:]
    X = np.array(x0s, dtype=np.float64, order="C").reshape(n_starts, tape.n_inputs)
    V = np.empty(n_starts)
    G = np.empty_like(X)
    step = np.empty_like(X)
    if meth == "adam":
        m = np.zeros_like(X)
        v = np.zeros_like(X)
        tmp = np.empty_like(X)
    converged = np.zeros(n_starts, dtype=bool)
    history = np.empty(steps + 1)
    best, x_best = np.inf, X[0].copy()
    it = 0
    message = f"maximum number of steps ({steps}) reached"
    while True:
        tape.value_and_grad(X, params=params, out=(V, G))
        i = int(np.argmin(np.where(np.isnan(V), np.inf, V)))
        if V[i] < best:
            best = float(V[i])
            x_best[:] = X[i]
        history[it] = best
        if tol is not None:
            converged |= np.max(np.abs(G), axis=1, initial=0.0) <= tol
            if converged.all():
                message = "all starts converged (gradient within tol)"
                break
        if it == steps:
            break
        it += 1
        if meth == "adam":
            m *= _ADAM_BETA1
            np.multiply(G, 1.0 - _ADAM_BETA1, out=tmp)
            m += tmp
            v *= _ADAM_BETA2
            np.multiply(G, G, out=tmp)
            tmp *= 1.0 - _ADAM_BETA2
            v += tmp
            # step = lr * mhat / (sqrt(vhat) + eps)
            np.divide(v, 1.0 - _ADAM_BETA2**it, out=step)
            np.sqrt(step, out=step)
            step += _ADAM_EPS
            np.divide(m, step, out=step)
            step *= lr / (1.0 - _ADAM_BETA1**it)
        else:
            np.multiply(G, lr, out=step)
        if converged.any():
            step[converged] = 0.0
        X -= step
    return MultistartResult(
        x=x_best.reshape(x_shape),
        fun=best,
        xs=X.reshape(x0s.shape),
        funs=V.copy(),
        converged=converged,
        nit=it,
        nfev=it + 1,
        history=history[: it + 1].copy(),
        success=bool(np.isfinite(best)),
        message=message,
    )
