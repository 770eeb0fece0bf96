"""asv benchmarks for ``tapejit.optimize``.

* ``MinimizeRosen100``: BFGS on the 100-dimensional extended Rosenbrock function with
  one fused tape sweep per evaluation, next to ``MinimizeRosen100FiniteDiff``: scipy's
  BFGS with its own finite differences (``jac=None``, 101 values per gradient). Both
  time the whole minimization and track the evaluations it spends (``track_nfev``).
* ``MultistartAdam``: 64 starts x 200 Adam steps, one batched ``value_and_grad`` sweep
  per step, next to ``MultistartAdamNumpy``: the same Adam loop with a hand-written
  vectorized numpy gradient.

scipy is optional: without it the scipy-based benchmarks skip (``NotImplementedError``
in ``setup``). JIT compilation is excluded: every ``setup`` runs the benchmark once.
"""

import numpy as np

from . import _baselines as B
from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()

ROSEN_N = 100
N_STARTS = 64
ADAM_STEPS = 200
ADAM_LR = 0.03


def _optimize():
    """``tapejit.optimize`` or skip (NotImplementedError -> asv skip)."""
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    try:
        from tapejit import optimize
    except Exception as exc:
        raise NotImplementedError(f"tapejit.optimize unavailable: {exc!r}") from exc
    return optimize


def _scipy_optimize():
    try:
        import scipy.optimize
    except ImportError as exc:
        raise NotImplementedError(f"scipy unavailable: {exc}") from exc
    return scipy.optimize


def _try(fn, *args, **kwargs):
    """Warm-up call; a missing feature skips instead of failing."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise NotImplementedError(f"{getattr(fn, '__name__', fn)} failed: {exc!r}") from exc


def rosen_x0(n=ROSEN_N):
    """The classic start: -1.2 at even, 1.0 at odd positions."""
    x0 = np.ones(n)
    x0[::2] = -1.2
    return x0


# ---------------------------------------------------------------------------
# minimize: Rosenbrock-100, BFGS
# ---------------------------------------------------------------------------


class MinimizeRosen100:
    """``tapejit.optimize.minimize``: BFGS with fused tape value-and-gradient sweeps."""

    timeout = 300

    def setup(self):
        _scipy_optimize()
        self.opt = _optimize()
        self.x0 = rosen_x0()
        self.res = _try(self.opt.minimize, B.rosen_ext_f, self.x0, method="BFGS")

    def time_minimize(self):
        self.opt.minimize(B.rosen_ext_f, self.x0, method="BFGS")

    def track_nfev(self):
        return int(self.res.nfev)

    track_nfev.unit = "evaluations"

    def track_nit(self):
        return int(self.res.nit)

    track_nit.unit = "iterations"


class MinimizeRosen100FiniteDiff:
    """scipy's BFGS with finite-difference gradients (``jac=None``): the baseline."""

    timeout = 300

    def setup(self):
        self.so = _scipy_optimize()
        self.x0 = rosen_x0()
        self.res = self.so.minimize(B.rosen_ext_f, self.x0, method="BFGS", jac=None)

    def time_minimize(self):
        self.so.minimize(B.rosen_ext_f, self.x0, method="BFGS", jac=None)

    def track_nfev(self):
        return int(self.res.nfev)

    track_nfev.unit = "evaluations"

    def track_nit(self):
        return int(self.res.nit)

    track_nit.unit = "iterations"


# ---------------------------------------------------------------------------
# multistart: 64 starts x 200 Adam steps on a 2-D multi-well function
# ---------------------------------------------------------------------------

_CENTER = np.array([1.7, -0.9])


def wells2d(x):
    """An egg crate in a bowl: many local minima, one global."""
    return (
        0.1 * np.sum((x - _CENTER) ** 2)
        - np.cos(2.5 * x[0]) * np.cos(2.0 * x[1])
        + 0.2 * np.sin(3.0 * x[0] + x[1])
    )


def wells2d_vg_batch(X):
    """Hand-written vectorized value and gradient of ``wells2d`` at ``(n, 2)`` points."""
    x0, x1 = X[:, 0], X[:, 1]
    c0, c1 = np.cos(2.5 * x0), np.cos(2.0 * x1)
    s0, s1 = np.sin(2.5 * x0), np.sin(2.0 * x1)
    u = 3.0 * x0 + x1
    v = 0.1 * ((x0 - _CENTER[0]) ** 2 + (x1 - _CENTER[1]) ** 2) - c0 * c1 + 0.2 * np.sin(u)
    G = np.empty_like(X)
    cu = 0.2 * np.cos(u)
    G[:, 0] = 0.2 * (x0 - _CENTER[0]) + 2.5 * s0 * c1 + 3.0 * cu
    G[:, 1] = 0.2 * (x1 - _CENTER[1]) + 2.0 * c0 * s1 + cu
    return v, G


def starts(n=N_STARTS, seed=0):
    return np.random.default_rng(seed).uniform(-6.0, 6.0, size=(n, 2))


def numpy_adam(vg, X0, steps=ADAM_STEPS, lr=ADAM_LR, b1=0.9, b2=0.999, eps=1e-8):
    """Vectorized Adam over all starts with a numpy value-and-gradient function."""
    X = X0.copy()
    m = np.zeros_like(X)
    v = np.zeros_like(X)
    best = np.inf
    for t in range(1, steps + 1):
        f, g = vg(X)
        best = min(best, float(np.min(f)))
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        X -= lr * (m / (1.0 - b1**t)) / (np.sqrt(v / (1.0 - b2**t)) + eps)
    f, _ = vg(X)
    return X, min(best, float(np.min(f)))


class MultistartAdam:
    """``tapejit.optimize.multistart``: one batched tape sweep over all starts per step."""

    def setup(self):
        self.opt = _optimize()
        self.X0 = starts()
        self.res = _try(
            self.opt.multistart, wells2d, self.X0, steps=ADAM_STEPS, lr=ADAM_LR
        )

    def time_adam_64x200(self):
        self.opt.multistart(wells2d, self.X0, steps=ADAM_STEPS, lr=ADAM_LR)

    def track_best(self):
        return float(self.res.fun)

    track_best.unit = "f"


class MultistartAdamNumpy:
    """The same Adam loop with a hand-written vectorized numpy gradient."""

    def setup(self):
        self.X0 = starts()
        self.best = numpy_adam(wells2d_vg_batch, self.X0)[1]

    def time_adam_64x200(self):
        numpy_adam(wells2d_vg_batch, self.X0)

    def track_best(self):
        return float(self.best)

    track_best.unit = "f"
