"""Optimization with tape derivatives: scipy drivers and batched multistart.

* :func:`minimize` wraps :func:`scipy.optimize.minimize`: one fused value-and-gradient
  sweep per evaluation and, for the second-order methods, Hessian-vector products or
  Hessians from the same tape.
* :func:`least_squares` wraps :func:`scipy.optimize.least_squares` with the residual
  Jacobian from the tape.
* :func:`ipopt` solves constrained problems with IPOPT (through cyipopt), with exact
  sparse derivatives: the objective's gradient, the constraints' Jacobian and the
  Hessian of the Lagrangian, each from a tape, the sparse ones through colourings of
  their patterns (:meth:`Tape.jacobian_sparsity <tapejit.Tape.jacobian_sparsity>`).
* :func:`multistart` runs Adam or gradient descent from many starting points at once,
  one batched sweep over all of them per step (no scipy needed).

Every evaluation is served by the tape cache ``f`` shares with :func:`tapejit.grad` and
the other transforms: ``f`` is recorded once per argument signature, and once more for
each Python branch (``if``/``while`` on a traced value) the optimizer's points take. The
first argument is differentiated; the extra ``args`` become tape *parameters*
(array-like values, fixed during a run and free to change between runs without
re-recording) or, for ints, strings and other hashable non-arrays, static arguments that
are part of the cache key.

scipy is an optional dependency (``pip install tapejit[opt]``), imported when
:func:`minimize` or :func:`least_squares` is called; cyipopt too (``pip install
tapejit[ipopt]``), imported when :func:`ipopt` is called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._errors import BranchError
from ._nlp import Constraints, IpoptProblem, bounds_arrays
from ._record import record
from ._tape import Tape
from ._transforms import Call, tape_cache

__all__ = ["MultistartResult", "ipopt", "ipopt_multistart", "least_squares", "minimize",
           "multistart"]

#: scipy methods that use no derivatives at all: they get the value alone.
_DERIVATIVE_FREE = frozenset({"nelder-mead", "powell", "cobyla", "cobyqa"})
#: Second-order methods that take Hessian-vector products (``hessp``).
_HESSP_METHODS = frozenset({"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"})
#: Second-order methods that need the Hessian matrix itself (``hess``).
_HESS_METHODS = frozenset({"dogleg", "trust-exact"})

_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8
#: IPOPT's default ``nlp_lower_bound_inf`` / ``nlp_upper_bound_inf`` are -1e19 / 1e19:
#: bounds beyond them are no bounds.
_IPOPT_INF = 1e20


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


def _scalar(tape: Tape) -> None:
    if tape.n_outputs != 1:
        raise ValueError(
            f"f must return a single number; it returns {tape.n_outputs} values "
            "(for a vector of residuals use tapejit.optimize.least_squares)"
        )


# Evaluation methods for TapeCache.evaluate: (tape, x, params, rows) -> (*results, valid)


def _vg(tape: Tape, x: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
    _scalar(tape)
    return tape.value_and_grad(x, params=p, check="mask")


def _value(tape: Tape, x: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
    _scalar(tape)
    return tape.forward(x, params=p, check="mask")


def _hessian(tape: Tape, x: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
    _scalar(tape)
    return tape.hessian(x, params=p, check="mask")


def _sparse_hessian(tape: Tape, x: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
    _scalar(tape)
    return tape.hessian(x, params=p, check="mask", sparse=True)


def _residuals(tape: Tape, x: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
    y, ok = tape.forward(x, params=p, check="mask")
    return np.atleast_1d(np.asarray(y, dtype=np.float64)), ok


def _jacobian(tape: Tape, x: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
    return tape.jacobian(x, params=p, mode="auto", check="mask")


class _Objective:
    """Evaluations of ``f(x, *args)`` at flat points ``x``, served by ``f``'s tape cache.

    Every evaluation goes through :meth:`TapeCache.evaluate` with the actual arguments, so
    a point where ``f`` takes another Python branch than the tapes recorded so far gets a
    tape of its own (recorded there), exactly as for :func:`tapejit.grad`. Counts the
    sweeps it runs; ``tape`` is the tape of the latest evaluation.
    """

    def __init__(self, f: Callable[..., Any], x0: ArrayLike, args: Any, what: str) -> None:
        if not callable(f):
            raise TypeError(f"{what} must be callable; got {type(f).__name__}")
        self.args = args if isinstance(args, tuple) else (args,)
        x0 = np.asarray(x0)
        if x0.dtype.kind not in "iuf":
            raise TypeError(f"x0 must hold real numbers; got dtype {x0.dtype}")
        self.cache = tape_cache(f)
        self.shape = x0.shape
        self.x0 = np.array(x0, dtype=np.float64).ravel()  # flat and owned
        self.tape: Tape | None = None
        self.nfev = 0  # sweeps that evaluated f (value alone or fused with the gradient)
        self.njev = 0  # gradients or Jacobians computed
        self.nhev = 0  # Hessians or Hessian-vector products computed

    def _eval(self, x: np.ndarray, method: Callable[..., tuple]) -> tuple:
        call = Call(self.cache.f, (x.reshape(self.shape), *self.args), {}, 0, False)
        self.tape, res = self.cache.evaluate(call, method)
        return res

    def value(self, x: np.ndarray) -> float:
        self.nfev += 1
        return float(self._eval(x, _value)[0])

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.nfev += 1
        self.njev += 1
        # A fresh gradient array per call, not a reused out= buffer: scipy keeps the
        # arrays it is given (BFGS forms y = g_new - g_old from two of them).
        v, g = self._eval(x, _vg)
        return float(v), g

    def hessp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        self.nhev += 1

        def method(tape: Tape, xf: np.ndarray, p: np.ndarray | None, rows: Any) -> tuple:
            _scalar(tape)
            return tape.hvp(xf, v, params=p, check="mask")

        return self._eval(x, method)[0]

    def hessian(self, x: np.ndarray) -> np.ndarray:
        self.nhev += 1
        return self._eval(x, _hessian)[0]

    def sparse_hessian(self, x: np.ndarray) -> Any:
        """The Hessian as a ``scipy.sparse.csr_array``, through a colouring of its
        pattern (a few Hessian-vector products for a sparse one)."""
        self.nhev += 1
        return self._eval(x, _sparse_hessian)[0]

    def residuals(self, x: np.ndarray) -> np.ndarray:
        self.nfev += 1
        return self._eval(x, _residuals)[0]

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        self.njev += 1
        return self._eval(x, _jacobian)[0]

    def unflatten(self, res: Any, fields: Sequence[str]) -> None:
        """Reshape the flat vectors ``res[field]`` back to the shape of ``x0``."""
        n = int(np.prod(self.shape, dtype=np.int64))
        for name in fields:
            val = res.get(name)
            if isinstance(val, np.ndarray) and val.size == n:
                res[name] = val.reshape(self.shape)


class _Batch:
    """Batched value and gradient of ``f`` at the rows of ``X`` (the starts).

    The common case is one sweep of the latest tape straight into the caller's buffers,
    with the parameters given once for all points. When a point fails that tape's guards
    (it takes another Python branch), the whole batch goes through
    :meth:`TapeCache.evaluate` instead, which splits it by branch and records the
    branches not seen yet.
    """

    def __init__(self, f: Callable[..., Any], x0s: np.ndarray, args: Any) -> None:
        self.args = args if isinstance(args, tuple) else (args,)
        self.cache = tape_cache(f)
        self.n, self.x_shape = x0s.shape[0], x0s.shape[1:]
        one = Call(self.cache.f, (x0s[0], *self.args), {}, 0, False)  # validates the arguments
        self.params = one.flat(one.param_pos)  # (n_params,): the same for every start
        # A batched call wants a points axis on every array parameter that has axes.
        self.bargs = tuple(
            np.broadcast_to(np.asarray(a, dtype=np.float64), (self.n, *np.shape(a)))
            if j + 1 in one.param_pos and np.ndim(a) > 0
            else a
            for j, a in enumerate(self.args)
        )
        self.tape: Tape | None = None
        self.nfev = 0

    def value_and_grad(self, X: np.ndarray, V: np.ndarray, G: np.ndarray) -> None:
        self.nfev += 1
        if self.tape is not None:
            _, _, ok = self.tape.value_and_grad(X, params=self.params, out=(V, G), check="mask")
            if ok.all():
                return
        call = Call(self.cache.f, (X.reshape(self.n, *self.x_shape), *self.bargs), {}, 0,
                     True)
        self.tape, (v, g) = self.cache.evaluate(call, _vg)
        V[:] = v
        G[:] = g.reshape(G.shape)


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
    if isinstance(hess, str) and hess == "sparse":
        if meth != "trust-constr":
            raise ValueError(f"hess='sparse' is for method 'trust-constr' (the one that "
                             f"takes a sparse Hessian); got method {meth!r}: use "
                             "hess='hess' or 'hessp'")
        return obj.sparse_hessian, None
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

    ``f(x, *args)`` is recorded at ``x0`` (and again only where the optimizer's points
    take a Python branch not recorded yet), and every evaluation scipy asks for is one
    sweep of the tape that returns the value and the gradient together (``jac=True``).
    The second-order methods also get their curvature from the tape:
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
    hess : {None, "hess", "hessp", "sparse", False} or object, optional
        Second derivatives for the methods that use them. ``None`` (default): chosen
        from the method as above. ``"hess"``: the Hessian matrix from the tape (also
        accepted by the ``hessp`` methods; it costs ``n`` Hessian-vector products).
        ``"hessp"``: Hessian-vector products from the tape. ``"sparse"`` (for
        ``"trust-constr"``): the Hessian as a ``scipy.sparse`` matrix, through a
        colouring of its pattern (:meth:`Tape.hessian <tapejit.Tape.hessian>` with
        ``sparse=True``): a few products per iteration for a sparse Hessian, then
        scipy's solver multiplies by the matrix. ``False``: none (scipy's
        default for the method, e.g. finite differences of the gradient for
        Newton-CG). Anything else (``"2-point"``, a
        :class:`scipy.optimize.HessianUpdateStrategy`, a callable of the flat ``x``) is
        passed to scipy unchanged.
    **scipy_options
        Passed to :func:`scipy.optimize.minimize`: ``bounds``, ``constraints``, ``tol``,
        ``callback``, ``options``. Callbacks see the flattened ``x``. ``jac`` and
        ``hessp`` are supplied from the tape and cannot be given. With
        ``method="trust-constr"``, constraints given as ``{"type": ..., "fun": ...}``
        dicts without a ``"jac"`` and as
        :class:`~scipy.optimize.NonlinearConstraint` with scipy's default derivatives
        (``jac="2-point"``, a quasi-Newton ``hess``) are recorded, at ``x0`` in the shape
        of ``x0``, and get exact derivatives from their tapes: the Jacobian and the
        Hessian of ``v . c(x)`` as ``scipy.sparse`` matrices (computed through
        colourings of their patterns); other constraints, and those of other methods,
        are passed to scipy unchanged (scipy then calls them with the flattened ``x``).

    Returns
    -------
    scipy.optimize.OptimizeResult
        scipy's result, with ``x`` (and ``jac``) in the shape of ``x0`` and the
        evaluation counts taken from the tape calls actually made: ``nfev`` sweeps that
        evaluated ``f`` (each of them, for a gradient method, also computed the
        gradient: nothing else is spent on it), ``njev`` gradients computed (equal to
        ``nfev`` for gradient methods), ``nhev`` Hessians or Hessian-vector products
        computed. ``tape`` is the tape of the last evaluation.

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
    meth = "_custom" if callable(method) else str(method).lower()
    if meth in _DERIVATIVE_FREE:
        fun, jac = obj.value, None
    else:
        fun, jac = obj.value_and_grad, True
    h, hp = _second_order(obj, meth, hess)
    if meth == "trust-constr" and scipy_options.get("constraints") is not None:
        scipy_options["constraints"] = _tape_constraints(
            so, scipy_options["constraints"], obj.x0, obj.shape)
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


def _tape_constraints(so: Any, constraints: Any, x0: np.ndarray,
                      shape: tuple[int, ...]) -> list[Any]:
    """``trust-constr``'s constraints: each one scipy would differentiate itself (a dict
    without ``jac``, a ``NonlinearConstraint`` with the default ``"2-point"`` Jacobian and
    quasi-Newton Hessian) as a ``NonlinearConstraint`` with tape derivatives; the others
    unchanged."""
    items = [constraints] if isinstance(constraints, dict) or not isinstance(
        constraints, list | tuple) else list(constraints)
    out = []
    for con in items:
        if isinstance(con, dict) and "jac" not in con:
            pass
        elif (isinstance(con, so.NonlinearConstraint) and isinstance(con.jac, str)
              and isinstance(con.hess, so.HessianUpdateStrategy)):
            pass
        else:
            out.append(con)
            continue
        c = Constraints(con, x0, shape)
        lb, ub = c.cl, c.cu
        out.append(so.NonlinearConstraint(c.fun, lb, ub, jac=c.jac, hess=c.hess))
    return out


def ipopt(
    fun: Callable[..., Any],
    x0: ArrayLike,
    args: tuple = (),
    *,
    constraints: Any = (),
    bounds: Any = None,
    tol: float | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Minimize ``fun`` subject to constraints and bounds with IPOPT and exact sparse
    derivatives.

    ``fun``, the constraint functions and the Lagrangian
    ``sigma * fun(x) + lambda . g(x)`` (``g``: every constraint's values, stacked) are
    each recorded once, at ``x0``. IPOPT gets the objective's value and gradient from one
    sweep, the constraints' Jacobian and the Lagrangian's Hessian (its lower triangle) as
    sparse matrices with the patterns read from the tapes
    (:meth:`Tape.jacobian_sparsity <tapejit.Tape.jacobian_sparsity>`,
    :meth:`Tape.hessian_sparsity <tapejit.Tape.hessian_sparsity>`), evaluated through
    colourings of them: a few sweeps per evaluation, not one per variable.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args) -> float``, plain numpy.
    x0 : array_like
        Starting point, of any shape (IPOPT works on it flattened; the functions get
        ``x`` in this shape, and the result's ``x`` has it).
    args : tuple, optional
        Extra arguments of ``fun``, recorded as tape parameters (floats or arrays), not
        differentiated.
    constraints : dict, NonlinearConstraint or sequence of them, optional
        ``{"type": "eq" | "ineq", "fun": c, "args": (...)}`` means ``c(x, *args) == 0``
        or ``>= 0`` (scipy's convention); ``scipy.optimize.NonlinearConstraint(c, lb,
        ub)`` means ``lb <= c(x) <= ub``. ``c`` returns a number or an array (flattened).
        Derivatives given with them are not used: they come from the tapes.
    bounds : scipy.optimize.Bounds or sequence of (lo, hi), optional
        Bounds on the flattened ``x`` (``None`` or ``inf``: no bound).
    tol : float, optional
        IPOPT's ``tol``.
    options : dict, optional
        IPOPT options (``{"max_iter": 500, "print_level": 5, "mu_strategy":
        "adaptive"}``). By default IPOPT prints nothing (``print_level`` 0, ``sb``
        ``"yes"``).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` (shape of ``x0``), ``fun``, ``success`` (IPOPT solved the problem to
        ``tol``), ``status`` and ``message`` (IPOPT's), ``nit`` (IPOPT iterations),
        ``nfev`` (objective sweeps, each with its gradient), ``njev`` (the same
        sweeps), ``ncev`` and ``ncjev`` (constraint values and Jacobians), ``nhev``
        (Lagrangian Hessians), ``constr`` (``g`` at ``x``), ``mult_g`` (the
        constraints' multipliers), ``mult_x_L`` and ``mult_x_U`` (the bounds'),
        ``derivative_seconds`` (wall time spent in tapejit's callbacks) and ``tapes``
        (objective, constraints, Lagrangian).

    Raises
    ------
    ImportError
        If cyipopt is not installed (``pip install tapejit[ipopt]``).
    BranchError
        If a function takes, at a point IPOPT tries, a Python branch other than the one
        recorded at ``x0`` (write the branch with ``np.where``), or a matrix instruction
        fails there.
    ValueError, TypeError
        For bad arguments: ``fun`` not scalar, malformed constraints or bounds.

    Examples
    --------
    >>> import numpy as np
    >>> from tapejit.optimize import ipopt
    >>> res = ipopt(lambda x: np.sum(x ** 2), np.array([2.0, 0.0]),
    ...             constraints={"type": "eq", "fun": lambda x: x[0] + x[1] - 1.0})
    >>> np.round(res.x, 6).tolist(), res.success
    ([0.5, 0.5], True)
    """
    cyipopt, so = _ipopt_modules("ipopt")
    problem, x, shape = _ipopt_setup(fun, x0, args, constraints, bounds)
    return _ipopt_solve(cyipopt, so, problem, x, shape, bounds, tol, options)


def _ipopt_modules(what: str) -> tuple[Any, Any]:
    """cyipopt and scipy.optimize, or an ImportError naming the fix."""
    try:
        import cyipopt
    except ImportError as exc:
        raise ImportError(f"tapejit.optimize.{what} needs cyipopt; install it with "
                          "`pip install tapejit[ipopt]` (or `pip install cyipopt-wheels`)"
                          ) from exc
    return cyipopt, _import_scipy_optimize()


def _ipopt_setup(fun: Callable[..., Any], x0: ArrayLike, args: Any, constraints: Any,
                 bounds: Any) -> tuple[IpoptProblem, np.ndarray, tuple[int, ...]]:
    """The tapes of :func:`ipopt` recorded at ``x0``, as the callbacks' problem; ``x0``
    flat, and its shape."""
    if not callable(fun):
        raise TypeError(f"fun must be callable; got {type(fun).__name__}")
    args = args if isinstance(args, tuple) else (args,)
    x0 = np.asarray(x0)
    if x0.dtype.kind not in "iuf":
        raise TypeError(f"x0 must hold real numbers; got dtype {x0.dtype}")
    shape = x0.shape
    x = np.array(x0, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("x0 must have at least one element")

    def objective(xf, *a):
        return fun(np.reshape(xf, shape), *a)

    f_tape = record(objective, x, *args, argnums=0)
    _scalar(f_tape)
    cons = Constraints(constraints, x, shape)

    def lagrangian(xf, sigma, lam, *a):
        out = sigma * objective(xf, *a)
        return out + np.dot(lam, cons.values(xf)) if cons.m else out

    l_tape = record(lagrangian, x, 1.0, np.zeros(cons.m), *args, argnums=0)
    bounds_arrays(bounds, n)  # checked now, before any solve
    return IpoptProblem(f_tape, args, cons, l_tape), x, shape


def _ipopt_solve(cyipopt: Any, so: Any, problem: IpoptProblem, x: np.ndarray,
                 shape: tuple[int, ...], bounds: Any, tol: float | None,
                 options: dict[str, Any] | None) -> Any:
    """One IPOPT solve from flat ``x`` over ``problem``'s tapes (its counters restart)."""
    problem.reset()
    cons, n = problem.cons, x.size
    lb, ub = bounds_arrays(bounds, n)
    nlp = cyipopt.Problem(n=n, m=cons.m, problem_obj=problem,
                          lb=np.clip(lb, -_IPOPT_INF, _IPOPT_INF),
                          ub=np.clip(ub, -_IPOPT_INF, _IPOPT_INF),
                          cl=np.clip(cons.cl, -_IPOPT_INF, _IPOPT_INF),
                          cu=np.clip(cons.cu, -_IPOPT_INF, _IPOPT_INF))
    opts: dict[str, Any] = {"print_level": 0, "sb": "yes"}
    if tol is not None:
        opts["tol"] = float(tol)
    opts.update(options or {})
    for key, value in opts.items():
        nlp.add_option(key, value)
    xs, info = nlp.solve(x)
    message = info["status_msg"]
    if isinstance(message, bytes):
        message = message.decode()
    return so.OptimizeResult(
        x=np.reshape(xs, shape), fun=float(info["obj_val"]), success=info["status"] == 0,
        status=int(info["status"]), message=message, nit=problem.nit, nfev=problem.nfev,
        njev=problem.njev, ncev=problem.ncev, ncjev=problem.ncjev, nhev=problem.nhev,
        constr=info["g"], mult_g=info["mult_g"], mult_x_L=info["mult_x_L"],
        mult_x_U=info["mult_x_U"], derivative_seconds=problem.seconds,
        tapes=(problem.f, problem.cons.tape, problem.lagrangian),
    )


def ipopt_multistart(
    fun: Callable[..., Any],
    x0s: ArrayLike,
    args: tuple = (),
    *,
    constraints: Any = (),
    bounds: Any = None,
    tol: float | None = None,
    options: dict[str, Any] | None = None,
    runs: int | None = None,
) -> Any:
    """:func:`ipopt` from many starting points, its tapes recorded once.

    The starts are first screened in one batched sweep of the objective and one of the
    constraints over all of them: each start's objective value and its constraint
    violation (the largest distance of a constraint value or a bound outside its
    range). IPOPT then runs from the ``runs`` best starts (the least violation first,
    then the lowest value), each solve reusing the tapes, their sparsity patterns and
    colourings. A start on a Python branch other than the one recorded (at the first
    start) is screened out with a NaN value; a solve that leaves the recorded branch
    ends as a failure with the :class:`~tapejit.BranchError` message, and the others go
    on.

    Parameters
    ----------
    fun, args, constraints, bounds, tol, options
        As for :func:`ipopt`.
    x0s : array_like
        Starting points, ``(n_starts, *x_shape)``.
    runs : int, optional
        How many of the screened starts IPOPT runs from. Default: all of them.

    Returns
    -------
    scipy.optimize.OptimizeResult
        The best solve's fields (the lowest ``fun`` among the successful ones, else
        among all), plus ``results`` (every solve, in the order run), ``starts`` (the
        index of each solve's start), ``screen_fun`` and ``screen_violation`` (per
        start, from the screening sweeps) and ``success`` (some solve succeeded).

    Raises
    ------
    ImportError
        If cyipopt is not installed.
    ValueError, TypeError
        For bad arguments (as :func:`ipopt`; ``x0s`` without a starts axis, ``runs``
        below 1).

    Examples
    --------
    >>> import numpy as np
    >>> from tapejit.optimize import ipopt_multistart
    >>> f = lambda x: (x[0] ** 2 - 1.0) ** 2 + 0.3 * x[0] + x[1] ** 2
    >>> res = ipopt_multistart(f, np.array([[2.0, 1.0], [-2.0, 1.0]]),
    ...                        constraints={"type": "ineq", "fun": lambda x: x[1] + 5.0})
    >>> bool(res.x[0] < 0), len(res.results)
    (True, 2)
    """
    cyipopt, so = _ipopt_modules("ipopt_multistart")
    X0 = np.asarray(x0s)
    if X0.ndim < 1 or X0.shape[0] == 0:
        raise ValueError(f"x0s must be (n_starts, *x_shape) with at least one start; "
                         f"got shape {X0.shape}")
    if runs is not None and (int(runs) != runs or runs < 1):
        raise ValueError(f"runs must be a positive integer; got {runs!r}")
    problem, _, shape = _ipopt_setup(fun, X0[0], args, constraints, bounds)
    X = np.array(X0, dtype=np.float64).reshape(len(X0), -1)
    values, violation = problem.screen(X, bounds_arrays(bounds, X.shape[1]))
    order = np.lexsort((np.nan_to_num(values, nan=np.inf),
                        np.nan_to_num(violation, nan=np.inf)))
    order = order[np.isfinite(values[order])][: runs or len(order)]
    results = []
    for i in order:
        try:
            results.append(_ipopt_solve(cyipopt, so, problem, X[i], shape, bounds, tol,
                                        options))
        except BranchError as exc:
            results.append(so.OptimizeResult(x=X[i].reshape(shape), fun=np.nan,
                                             success=False, status=-100,
                                             message=str(exc)))
    ok = [r for r in results if r.success] or results
    best = min(ok, key=lambda r: r.fun if np.isfinite(r.fun) else np.inf) if ok else None
    out = so.OptimizeResult(best or {"x": None, "fun": np.nan, "message":
                                     "no start is on the recorded branch"})
    out.update(success=any(r.success for r in results), results=results,
               starts=order, screen_fun=values, screen_violation=violation)
    return out


def least_squares(
    residuals: Callable[..., Any],
    x0: ArrayLike,
    args: tuple = (),
    **scipy_options: Any,
) -> Any:
    """Nonlinear least squares with :func:`scipy.optimize.least_squares` and the tape Jacobian.

    Minimizes ``0.5 * sum(residuals(x, *args) ** 2)`` (or a robust ``loss`` of it). The
    residuals are recorded at ``x0`` (and again only for Python branches not recorded
    yet); every evaluation is a forward sweep and every Jacobian one tape Jacobian
    (forward mode when there are fewer parameters than residuals, reverse mode
    otherwise).

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
        ``njev`` are the residual and Jacobian evaluations made; ``tape`` is the tape of
        the last evaluation.

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
        Batched value-and-gradient evaluations of all starts: ``nit + 1``.
    history : ndarray
        Best value seen so far, after each sweep, ``(nfev,)``.
    success : bool
        Whether the run stopped because every start converged (its gradient within
        ``tol``), as ``scipy.optimize``'s ``success``: ``False`` when the step limit
        stopped it (always, without ``tol``) or the best value is not finite.
    status : int
        0: every start converged; 1: the step limit was reached; 2: no finite value.
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
        keys = ("fun", "x", "nit", "nfev", "success", "status", "message")
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
    local minima, or to fit one model from many initial guesses. If ``f`` branches in
    Python on its input, starts on different branches are evaluated on their own tapes
    (see :func:`tapejit.value_and_grad` with ``batched=True``).

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> float`` of one point ``x`` (plain numpy).
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
    if not callable(f):
        raise TypeError(f"f must be callable; got {type(f).__name__}")
    batch = _Batch(f, x0s, args)
    n_starts, x_shape = x0s.shape[0], x0s.shape[1:]
    X = np.array(x0s, dtype=np.float64, order="C").reshape(n_starts, -1)
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
    status = 1
    while True:
        batch.value_and_grad(X, V, G)
        i = int(np.argmin(np.where(np.isnan(V), np.inf, V)))
        if V[i] < best:
            best = float(V[i])
            x_best[:] = X[i]
        history[it] = best
        if tol is not None:
            converged |= np.max(np.abs(G), axis=1, initial=0.0) <= tol
            if converged.all():
                message = "all starts converged (gradient within tol)"
                status = 0
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
    if not np.isfinite(best):
        status, message = 2, "no start reached a finite value"
    return MultistartResult(
        x=x_best.reshape(x_shape),
        fun=best,
        xs=X.reshape(x0s.shape),
        funs=V.copy(),
        converged=converged,
        nit=it,
        nfev=batch.nfev,
        history=history[: it + 1].copy(),
        success=status == 0,
        status=status,
        message=message,
    )
