"""Constrained problems for the optimizers: constraints as one recorded vector function
with bounds, exact sparse derivatives from tapes, and IPOPT's callbacks.

:func:`tapejit.optimize.ipopt` and the ``trust-constr`` path of
:func:`tapejit.optimize.minimize` build on :class:`Constraints`: scipy-style constraints
(``{"type": "eq" | "ineq", "fun": ..., "args": ...}`` dicts and
:class:`scipy.optimize.NonlinearConstraint` objects) gathered into ``cl <= g(x) <= cu``
with ``g`` recorded once; its Jacobian is ``tape.jacobian(x, sparse=True)`` and the
Hessian of ``v . g`` a tape of its own evaluated with ``sparse=True``.

Each function is recorded once, at ``x0``: a tape holds the Python branch taken there.
A point where a function takes another branch raises :class:`~tapejit.BranchError`
(with what to do) instead of giving the other branch's derivatives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._errors import BranchError
from ._record import record
from ._tape import Tape, sparse_compression, sparse_take, sparse_values


def _evaluate(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, a :class:`BranchError` from it saying what to do in a solve."""
    try:
        return call()
    except BranchError as exc:
        exc.args = (f"{exc} Here: {what} took a Python branch (an if or while on a traced "
                    "value) other than the one recorded at x0, or a matrix instruction "
                    "failed; a constrained solve uses one tape per function, so write such "
                    "a branch with np.where (both sides are then recorded).",)
        raise


class Constraints:
    """scipy-style constraints as one recorded function ``g(x)`` with ``cl <= g <= cu``.

    Parameters
    ----------
    constraints : dict, NonlinearConstraint or sequence of them
        ``{"type": "eq" | "ineq", "fun": c, "args": (...)}`` (scipy's meaning:
        ``c(x, *args) == 0`` or ``>= 0``) or ``NonlinearConstraint(c, lb, ub)``; ``c``
        returns a number or an array (flattened). Any ``jac`` or ``hess`` given with
        them is not used: the derivatives come from the tape.
    x0 : ndarray
        The flat starting point; constraint functions get it in ``shape``.
    shape : tuple
        The shape of ``x`` the functions take.
    """

    def __init__(self, constraints: Any, x0: np.ndarray, shape: tuple[int, ...]) -> None:
        if isinstance(constraints, dict) or not isinstance(constraints, list | tuple):
            constraints = [constraints]
        self.parts: list[tuple[Callable[..., Any], tuple]] = []
        lows, highs = [], []
        for j, con in enumerate(constraints):
            fun, args, lb, ub = _parse(con, j)
            size = np.size(np.asarray(fun(x0.reshape(shape), *args), dtype=np.float64))
            try:
                lo = np.broadcast_to(np.asarray(lb, dtype=np.float64), (size,))
                hi = np.broadcast_to(np.asarray(ub, dtype=np.float64), (size,))
            except ValueError:
                raise ValueError(f"constraint {j}: lb and ub must be numbers or arrays of "
                                 f"its {size} values") from None
            self.parts.append((fun, args))
            lows.append(lo)
            highs.append(hi)
        self.shape = shape
        self.cl = np.concatenate(lows) if lows else np.zeros(0)
        self.cu = np.concatenate(highs) if highs else np.zeros(0)
        if (self.cl > self.cu).any():
            raise ValueError("a constraint's lower bound exceeds its upper bound")
        self.m = len(self.cl)
        self.x0 = x0
        self.tape = record(self.values, x0) if self.m else None
        self._weighted_tape: Tape | None = None  # v . g, recorded at its first use

    @property
    def weighted_tape(self) -> Tape:
        """The tape of ``v . g(x)`` (``v``: a parameter), recorded on first use."""
        if self._weighted_tape is None:
            self._weighted_tape = record(self.weighted, self.x0, np.zeros(self.m), argnums=0)
        return self._weighted_tape

    def values(self, x: Any) -> Any:
        """``g(x)`` of a flat ``x`` (traced or not): every constraint's values, flat."""
        xs = np.reshape(x, self.shape)
        return np.concatenate([np.reshape(fun(xs, *args), -1) for fun, args in self.parts])

    def weighted(self, x: Any, v: Any) -> Any:
        """``v . g(x)``."""
        return np.dot(v, self.values(x))

    # -- evaluations ----------------------------------------------------------------------
    def fun(self, x: np.ndarray) -> np.ndarray:
        return _evaluate("a constraint function", lambda: self.tape.forward(x))

    def jac(self, x: np.ndarray):
        """The sparse Jacobian (``scipy.sparse.csr_array``)."""
        return _evaluate("a constraint function", lambda: self.tape.jacobian(x, sparse=True))

    def jac_values(self, x: np.ndarray) -> np.ndarray:
        """The Jacobian's nonzeros, in the CSR order of its pattern."""
        return _evaluate("a constraint function",
                         lambda: sparse_values(self.tape, "jacobian", x))

    def hess(self, x: np.ndarray, v: np.ndarray):
        """The sparse Hessian of ``v . g`` (``scipy.sparse.csr_array``)."""
        v = np.asarray(v, dtype=np.float64)
        return _evaluate("a constraint function", lambda: self.weighted_tape.hessian(
            x, params=v, sparse=True))


def _parse(con: Any, j: int) -> tuple[Callable[..., Any], tuple, Any, Any]:
    """``(fun, args, lb, ub)`` of one scipy-style constraint."""
    if isinstance(con, dict):
        kind = str(con.get("type", "")).lower()
        if kind not in ("eq", "ineq"):
            raise ValueError(f"constraint {j}: 'type' must be 'eq' or 'ineq'; got "
                             f"{con.get('type')!r}")
        fun = con.get("fun")
        args = con.get("args", ())
        args = args if isinstance(args, tuple) else (args,)
        lb, ub = 0.0, (0.0 if kind == "eq" else np.inf)
    elif hasattr(con, "fun") and hasattr(con, "lb") and hasattr(con, "ub"):
        fun, args, lb, ub = con.fun, (), con.lb, con.ub  # NonlinearConstraint
    else:
        raise TypeError(f"constraint {j} must be a dict with 'type' and 'fun' or a "
                        f"scipy.optimize.NonlinearConstraint; got {type(con).__name__} (a "
                        "LinearConstraint A: write it as NonlinearConstraint(lambda x: "
                        "A @ x, lb, ub))")
    if not callable(fun):
        raise TypeError(f"constraint {j}: 'fun' must be callable; got {type(fun).__name__}")
    return fun, args, lb, ub


def bounds_arrays(bounds: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lb, ub)`` float arrays of ``n`` values from scipy-style bounds: a
    :class:`scipy.optimize.Bounds`, a sequence of ``n`` ``(lo, hi)`` pairs (``None``: no
    bound), or None."""
    if bounds is None:
        return np.full(n, -np.inf), np.full(n, np.inf)
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lb, ub = bounds.lb, bounds.ub
    else:
        pairs = list(bounds)
        if len(pairs) != n or any(np.size(p) != 2 for p in pairs):
            raise ValueError(f"bounds must be {n} (lo, hi) pairs, one per variable, or a "
                             "scipy.optimize.Bounds")
        lb = [-np.inf if p[0] is None else p[0] for p in pairs]
        ub = [np.inf if p[1] is None else p[1] for p in pairs]
    try:
        lo = np.array(np.broadcast_to(np.asarray(lb, dtype=np.float64), (n,)))
        hi = np.array(np.broadcast_to(np.asarray(ub, dtype=np.float64), (n,)))
    except ValueError:
        raise ValueError(f"bounds must give {n} lower and upper bounds") from None
    if (lo > hi).any():
        raise ValueError("a lower bound exceeds its upper bound")
    return lo, hi


class IpoptProblem:
    """The callbacks cyipopt calls, from three tapes: the objective (value and gradient in
    one sweep, kept for the gradient call at the same point), the constraints (values,
    sparse Jacobian) and the Lagrangian ``sigma f + lambda . g`` (its sparse Hessian, the
    lower triangle IPOPT takes). Counts evaluations and the seconds spent in them."""

    def __init__(self, objective: Tape, args: tuple, cons: Constraints,
                 lagrangian: Tape) -> None:
        self.f = objective
        self.args = args
        self.cons = cons
        self.lagrangian = lagrangian
        self.nfev = self.njev = self.ncev = self.ncjev = self.nhev = self.nit = 0
        self.seconds = 0.0
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None
        self._params = args or None
        # patterns and colourings now, not in the first callbacks
        if cons.m:
            jp = sparse_compression(cons.tape, "jacobian").pattern
            self._jac_rows = np.repeat(np.arange(jp.shape[0]), np.diff(jp.indptr))
            self._jac_cols = jp.indices.copy()
        else:
            self._jac_rows = self._jac_cols = np.zeros(0, dtype=np.int64)
        hp = sparse_compression(lagrangian, "hessian").pattern
        rows = np.repeat(np.arange(hp.shape[0]), np.diff(hp.indptr))
        lower = rows >= hp.indices
        self._hess_rows, self._hess_cols = rows[lower], hp.indices[lower]
        self._hess_take = sparse_take(lagrangian, "hessian", lower)  # the lower triangle

    def reset(self) -> None:
        """Zero the counters and forget the last point, for a new solve."""
        self.nfev = self.njev = self.ncev = self.ncjev = self.nhev = self.nit = 0
        self.seconds = 0.0
        self._last = None

    def screen(self, X: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Objective values and constraint violations at the flat points ``X`` (one
        row each), from one batched sweep of each tape: the violation is the largest
        distance of a variable or a constraint value outside its range (0: feasible);
        NaN values where a point takes a branch other than the recorded one."""
        v, ok = self.f.forward(X, self._params, check="mask")
        lb, ub = bounds
        viol = np.maximum(np.max(np.maximum(lb - X, X - ub), axis=1, initial=0.0), 0.0)
        if self.cons.m:
            g, ok_g = self.cons.tape.forward(X, check="mask")
            g = np.reshape(g, (len(X), self.cons.m))
            out = np.max(np.maximum(self.cons.cl - g, g - self.cons.cu), axis=1, initial=0.0)
            viol = np.maximum(viol, out)
            ok = ok & ok_g
        return np.where(ok, v, np.nan), viol

    def _vg(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        last = self._last
        if last is not None and np.array_equal(last[0], x):
            return last[1], last[2]
        t = time.perf_counter()
        v, g = _evaluate("the objective", lambda: self.f.value_and_grad(x, self._params))
        self.seconds += time.perf_counter() - t
        self.nfev += 1
        self.njev += 1
        self._last = (x.copy(), float(v), g)
        return float(v), g

    def objective(self, x: np.ndarray) -> float:
        return self._vg(x)[0]

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self._vg(x)[1]

    def constraints(self, x: np.ndarray) -> np.ndarray:
        if not self.cons.m:
            return np.zeros(0)
        t = time.perf_counter()
        out = self.cons.fun(x)
        self.seconds += time.perf_counter() - t
        self.ncev += 1
        return out

    def jacobianstructure(self) -> tuple[np.ndarray, np.ndarray]:
        return self._jac_rows, self._jac_cols

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        if not self.cons.m:
            return np.zeros(0)
        t = time.perf_counter()
        out = self.cons.jac_values(x)
        self.seconds += time.perf_counter() - t
        self.ncjev += 1
        return out

    def hessianstructure(self) -> tuple[np.ndarray, np.ndarray]:
        return self._hess_rows, self._hess_cols

    def hessian(self, x: np.ndarray, lagrange: np.ndarray, obj_factor: float) -> np.ndarray:
        t = time.perf_counter()
        params = np.concatenate([[obj_factor], lagrange, *(np.ravel(a) for a in self.args)])
        H = _evaluate("the objective or a constraint function",
                      lambda: sparse_values(self.lagrangian, "hessian", x, params,
                                            self._hess_take))
        self.seconds += time.perf_counter() - t
        self.nhev += 1
        return H

    def intermediate(self, alg_mod, iter_count, *rest) -> bool:
        self.nit = int(iter_count)
        return True
