"""asv benchmarks for forward mode and second order (issue 4): jvp, jacobian (forward and
reverse), hvp and hessian.

* ``SecondOrder10``: a 10-input function at 1 point (the one-point sweeps) and at 1e4
  points (the batched drivers), every method on the same tape.
* ``RosenExt1000``: ``time_hvp_rosen1000`` next to ``time_gradient_rosen1000`` on the
  extended Rosenbrock tape (n = 1000, one point): one forward-over-reverse sweep against
  one reverse sweep.
* ``Hessian10Batch``: Hessians of the 10-input function at 1e5 points, next to
  ``Hessian10BatchJax``: ``jax.jit(jax.vmap(jax.hessian(f)))`` on the same points (inputs
  placed on the device once, outputs left on it, ``block_until_ready``; skipped when jax
  is missing).

JIT compilation and recording are excluded: every ``setup`` records and calls the timed
function once.
"""

import numpy as np

from . import _baselines as B
from . import import_tapejit
from .bench_core import _record, _try

tapejit, _TAPEJIT_ERROR = import_tapejit()

N_IN = 10


def f10_in(ns, x):
    """The 10-input workload written against a numpy-like namespace (numpy or jax.numpy):
    products, a log of a sum, an exp of a cross term and a chain of tanh differences, so
    the Hessian is dense."""
    return (ns.sum(ns.sin(x[:5]) * x[5:] ** 2) + ns.log1p(ns.sum(x * x))
            + ns.exp(0.1 * x[0] * x[9]) + ns.sum(ns.tanh(x[1:] - x[:-1])))


def f10(x):
    return f10_in(np, x)


def f10_points(n, seed=0):
    """``(n, 10)`` points (``(10,)`` for ``n == 1``: the one-point path)."""
    X = np.random.default_rng(seed).uniform(-1.5, 1.5, size=(n, N_IN))
    return X[0].copy() if n == 1 else X




def jax_or_skip():
    """``jax`` with float64 enabled, or skip (NotImplementedError -> asv skip)."""
    try:
        import jax
    except Exception as exc:
        raise NotImplementedError(f"jax unavailable: {exc!r}") from exc
    jax.config.update("jax_enable_x64", True)
    return jax


def make_jax_hessian_batch():
    """``run(X)``: ``jax.jit(jax.vmap(jax.hessian(f10)))`` on device-resident ``X``."""
    jax = jax_or_skip()
    import jax.numpy as jnp

    fn = jax.jit(jax.vmap(jax.hessian(lambda x: f10_in(jnp, x))))

    def run(Xd):
        return jax.block_until_ready(fn(Xd))

    return run, jax.device_put


# ---------------------------------------------------------------------------
# a 10-input function: 1 point and 1e4 points
# ---------------------------------------------------------------------------


class SecondOrder10:
    params = (1, 10000)
    param_names = ("n_points",)

    def setup(self, n):
        self.tape = _record(f10, np.ones(N_IN))
        self.X = f10_points(n)
        self.V = f10_points(n, seed=1)
        for method in (self.tape.gradient, self.tape.jacobian, self.tape.hessian):
            _try(method, self.X)
        _try(self.tape.jacobian, self.X, mode="forward")
        _try(self.tape.jvp, self.X, self.V)
        _try(self.tape.hvp, self.X, self.V)

    def time_gradient(self, n):
        self.tape.gradient(self.X)

    def time_jvp(self, n):
        self.tape.jvp(self.X, self.V)

    def time_jacobian_forward(self, n):
        self.tape.jacobian(self.X, mode="forward")

    def time_jacobian_reverse(self, n):
        self.tape.jacobian(self.X, mode="reverse")

    def time_hvp(self, n):
        self.tape.hvp(self.X, self.V)

    def time_hessian(self, n):
        self.tape.hessian(self.X)


# ---------------------------------------------------------------------------
# extended Rosenbrock, n = 1000, one point: hvp next to gradient
# ---------------------------------------------------------------------------


class RosenExt1000:
    def setup(self):
        n = 1000
        self.tape = _record(B.rosen_ext_f, np.ones(n))
        self.x = B.rosen_ext_point(n)
        self.v = np.random.default_rng(1).normal(size=n)
        self.g = np.empty(n)
        _try(self.tape.gradient, self.x, out=self.g)
        _try(self.tape.hvp, self.x, self.v)

    def time_gradient_rosen1000(self):
        self.tape.gradient(self.x, out=self.g)

    def time_hvp_rosen1000(self):
        self.tape.hvp(self.x, self.v)

    def track_hvp_over_gradient_rosen1000(self):
        """Median time ratio hvp / gradient, measured in one process (no asv noise
        between the two)."""
        import timeit

        def per_call(stmt):
            number = max(1, timeit.Timer(stmt).autorange()[0])
            return np.median(timeit.Timer(stmt).repeat(5, number)) / number

        grad = per_call(lambda: self.tape.gradient(self.x, out=self.g))
        return per_call(lambda: self.tape.hvp(self.x, self.v)) / grad

    track_hvp_over_gradient_rosen1000.unit = "ratio"


# ---------------------------------------------------------------------------
# Hessians at 1e5 points: tapejit and jax.jit(jax.vmap(jax.hessian(f)))
# ---------------------------------------------------------------------------

_HESS_POINTS = (100000,)


class Hessian10Batch:
    params = _HESS_POINTS
    param_names = ("n_points",)
    timeout = 300

    def setup(self, n):
        self.tape = _record(f10, np.ones(N_IN))
        self.X = f10_points(n)
        _try(self.tape.hessian, self.X)

    def time_hessian(self, n):
        self.tape.hessian(self.X)


class Hessian10BatchJax:
    params = _HESS_POINTS
    param_names = ("n_points",)
    timeout = 300

    def setup(self, n):
        self.run, put = make_jax_hessian_batch()
        self.Xd = put(f10_points(n))
        self.run(self.Xd)  # compile

    def time_hessian(self, n):
        self.run(self.Xd)
