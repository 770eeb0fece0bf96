"""asv benchmarks of issue 19's linear-algebra workloads: value and gradient.

* ``LogReg``: mean log-loss + L2 of a logistic regression, X (m, k) and labels as tape
  parameters, at one point; ``track_tape_len`` and ``time_record`` show that recording
  follows the operations, not the elements.
* ``LogRegMany``: the same loss at 1000 parameter vectors sharing one X (2000x50).
* ``MLP``: 16-32-1 tanh network, 256 samples, 577 weights as one flat vector.
* ``GaussianProcess``: negative log marginal likelihood, n = 500, gradient in 3
  hyperparameters (Cholesky, triangular solve, log-determinant).
* ``Solve3``: ``sum(solve(A, b)**2)`` of a 3x3 system per point, 1e6 points.

The extended Rosenbrock target of the issue is ``bench_core.RosenExt``.

Each tapejit class has a baseline twin (suffix ``Hand``: the gradient written by hand in
numpy/scipy, or ``@njit`` for ``Solve3``; suffix ``Jax``: jit(value_and_grad), x64) with
the same params and method names. A tapejit class skips itself (``NotImplementedError``
in ``setup``) when tapejit is unavailable or cannot record the workload; the twins still
run. JIT compilation is excluded: every ``setup`` calls the timed function once.
"""

import numpy as np

from . import _baselines as B
from . import _baselines_linalg as L
from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()


def _record(f, *args, **kwargs):
    """Record a tape or skip the benchmark (NotImplementedError -> asv skip)."""
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    try:
        return tapejit.record(f, *args, **kwargs)
    except Exception as exc:
        raise NotImplementedError(f"tapejit.record failed: {exc!r}") from exc


def _try(fn, *args, **kwargs):
    """Warm-up call; a missing tapejit feature skips instead of failing."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise NotImplementedError(f"{getattr(fn, '__name__', fn)} failed: {exc!r}") from exc


def _jax_or_skip(make, *args):
    """A JAX peer and its device-placed arguments, warmed up; skip without jax."""
    fn = make()
    if fn is None:
        raise NotImplementedError("jax not importable")
    args = [B.jax_put(a) for a in args]
    fn(*args)
    return fn, args


class _DataFit:
    """One point of a loss with data as tape parameters: ``loss(theta, *data)``.

    Subclasses set ``loss``, ``hand`` (the hand-written value and gradient),
    ``make_jax`` and ``make_data(*params) -> (theta, *data)``.
    """

    def setup(self, *params):
        self.theta, *self.fit_data = self.make_data(*params)
        self.tape = _record(self.loss, self.theta, *self.fit_data, argnums=(0,))
        self.p = np.concatenate([np.ravel(d) for d in self.fit_data])
        _try(self.tape.value_and_grad, self.theta, params=self.p)

    def time_value_and_grad(self, *params):
        self.tape.value_and_grad(self.theta, params=self.p)

    def time_record(self, *params):
        tapejit.record(self.loss, self.theta, *self.fit_data, argnums=(0,))

    def track_tape_len(self, *params):
        return len(self.tape)

    track_tape_len.unit = "instructions"


class _DataFitHand:
    def setup(self, *params):
        self.theta, *self.fit_data = self.make_data(*params)
        self.hand(self.theta, *self.fit_data)

    def time_value_and_grad(self, *params):
        self.hand(self.theta, *self.fit_data)


class _DataFitJax:
    def setup(self, *params):
        self.fn, self.args = _jax_or_skip(self.make_jax, *self.make_data(*params))

    def time_value_and_grad(self, *params):
        self.fn(*self.args)


# ---------------------------------------------------------------------------
# logistic regression, one point
# ---------------------------------------------------------------------------


class _LogRegSpec:
    params = ([(1000, 20), (10000, 100)],)
    param_names = ("X shape",)
    loss = staticmethod(L.logreg_f)
    hand = staticmethod(L.logreg_vg)
    make_jax = staticmethod(L.make_jax_logreg)

    @staticmethod
    def make_data(shape):
        return L.logreg_data(*shape)


class LogReg(_LogRegSpec, _DataFit):
    pass


class LogRegHand(_LogRegSpec, _DataFitHand):
    pass


class LogRegJax(_LogRegSpec, _DataFitJax):
    pass


# ---------------------------------------------------------------------------
# MLP 16-32-1 tanh
# ---------------------------------------------------------------------------


class _MLPSpec:
    loss = staticmethod(L.mlp_f)
    hand = staticmethod(L.mlp_vg)
    make_jax = staticmethod(L.make_jax_mlp)
    make_data = staticmethod(L.mlp_data)


class MLP(_MLPSpec, _DataFit):
    pass


class MLPHand(_MLPSpec, _DataFitHand):
    pass


class MLPJax(_MLPSpec, _DataFitJax):
    pass


# ---------------------------------------------------------------------------
# Gaussian-process negative log marginal likelihood
# ---------------------------------------------------------------------------


class _GPSpec:
    params = ([500],)
    param_names = ("n",)
    loss = staticmethod(L.gp_nlml_f)
    hand = staticmethod(L.gp_nlml_vg)
    make_jax = staticmethod(L.make_jax_gp)
    make_data = staticmethod(L.gp_data)


class GaussianProcess(_GPSpec, _DataFit):
    pass


class GaussianProcessHand(_GPSpec, _DataFitHand):
    pass


class GaussianProcessJax(_GPSpec, _DataFitJax):
    pass


# ---------------------------------------------------------------------------
# many parameter vectors sharing one data set
# ---------------------------------------------------------------------------

_MANY = ([1000],)
_MANY_X = (2000, 50)


def _many_data(n):
    _, X, y = L.logreg_data(*_MANY_X)
    return L.logreg_many_points(n, _MANY_X[1]), X, y


class LogRegMany:
    params = _MANY
    param_names = ("n_points",)

    def setup(self, n):
        self.W, X, y = _many_data(n)
        self.tape = _record(L.logreg_f, self.W[0], X, y, argnums=(0,))
        self.p = np.concatenate([X.ravel(), y])  # one row shared by every point
        _try(self.tape.value_and_grad, self.W, params=self.p)

    def time_value_and_grad(self, n):
        self.tape.value_and_grad(self.W, params=self.p)


class LogRegManyHand:
    """numpy: one ``W @ X.T`` and one ``@ X`` for all the points."""

    params = _MANY
    param_names = ("n_points",)

    def setup(self, n):
        self.args = _many_data(n)
        L.logreg_many_vg(*self.args)

    def time_value_and_grad(self, n):
        L.logreg_many_vg(*self.args)


class LogRegManyJax:
    params = _MANY
    param_names = ("n_points",)

    def setup(self, n):
        self.fn, self.args = _jax_or_skip(L.make_jax_logreg_many, *_many_data(n))

    def time_value_and_grad(self, n):
        self.fn(*self.args)


# ---------------------------------------------------------------------------
# a 3x3 solve per point
# ---------------------------------------------------------------------------

_SOLVE3 = ([10**6],)


class Solve3:
    params = _SOLVE3
    param_names = ("n_points",)

    def setup(self, n):
        self.P = L.solve3_points(n)
        self.tape = _record(L.solve3_f, self.P[0])
        self.v = np.empty(n)
        self.g = np.empty((n, 12))
        _try(self.tape.value_and_grad, self.P, out=(self.v, self.g))

    def time_value_and_grad(self, n):
        self.tape.value_and_grad(self.P, out=(self.v, self.g))


class Solve3Hand:
    """``@njit(parallel=True)`` loop: cofactor inverse, adjoint by hand."""

    params = _SOLVE3
    param_names = ("n_points",)

    def setup(self, n):
        self.P = L.solve3_points(n)
        self.v = np.empty(n)
        self.g = np.empty((n, 12))
        L.solve3_vg_batch(self.P, self.v, self.g)

    def time_value_and_grad(self, n):
        L.solve3_vg_batch(self.P, self.v, self.g)


class Solve3Jax:
    params = _SOLVE3
    param_names = ("n_points",)

    def setup(self, n):
        self.fn, self.args = _jax_or_skip(L.make_jax_solve3, L.solve3_points(n))

    def time_value_and_grad(self, n):
        self.fn(*self.args)
