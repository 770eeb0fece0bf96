"""Core asv benchmarks: recording, forward and value_and_grad.

Every tapejit class has a hand-written Numba twin (suffix ``Numba``) with the
same params and method names, so the two appear side by side in asv output.
The twins are separate classes because a tapejit class skips itself (by
raising ``NotImplementedError`` in ``setup``) when tapejit or a feature it
needs is not available, and that must not skip the baseline.

JIT compilation is excluded: every ``setup`` calls the timed function once.
"""

import numpy as np

from . import _baselines as B
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


# ---------------------------------------------------------------------------
# recording
# ---------------------------------------------------------------------------


class RecordSeed:
    def setup(self):
        self.tape = _record(B.seed_f, 1.0, 2.0)  # also warms up the recorder

    def time_record(self):
        tapejit.record(B.seed_f, 1.0, 2.0)

    def track_tape_len(self):
        return len(self.tape)

    track_tape_len.unit = "instructions"


class RecordRosenExt:
    params = (1000, 10000)
    param_names = ("n",)

    def setup(self, n):
        self.x = np.ones(n)
        _record(B.rosen_ext_f, np.ones(10))  # warm-up on a tiny input
        self.tape = _record(B.rosen_ext_f, self.x)

    def time_record(self, n):
        tapejit.record(B.rosen_ext_f, self.x)

    def track_tape_len(self, n):
        return len(self.tape)

    track_tape_len.unit = "instructions"


class _RecordScalar:
    """Recording scalar code: ``fn(x0, **{param_names[0]: value})``;
    ``time_record / track_tape_len`` is the cost per instruction."""

    def setup(self, value):
        _record(self.fn, self.x0, **{self.param_names[0]: 10})  # warm-up
        self.tape = _record(self.fn, self.x0, **{self.param_names[0]: value})

    def time_record(self, value):
        tapejit.record(self.fn, self.x0, **{self.param_names[0]: value})

    def track_tape_len(self, value):
        return len(self.tape)

    track_tape_len.unit = "instructions"


class RecordLorenz(_RecordScalar):
    """RK4 steps of the Lorenz system (71 instructions a step)."""

    fn, x0 = staticmethod(B.lorenz_f), B.LORENZ_P0
    params = (200, 2000)
    param_names = ("steps",)


class RecordLorenzPython:
    """The same function run on Python floats: the floor of any tracer."""

    params = (200, 2000)
    param_names = ("steps",)

    def time_call(self, steps):
        B.lorenz_f(B.LORENZ_P0.tolist(), steps=steps)


class RecordRecurrence(_RecordScalar):
    """A numpy ufunc (``np.sin``) among the operators: 8 instructions a step."""

    fn, x0 = staticmethod(B.recurrence_f), B.RECURRENCE_X0
    params = (1000, 10000)
    param_names = ("k",)


# ---------------------------------------------------------------------------
# seed over points: y = ln(x1) + x1*x2 - sin(x2)
# ---------------------------------------------------------------------------

_SEED_POINTS = (1, 1000, 1000000)


class SeedBatch:
    """tapejit forward / value_and_grad over (n, 2) points."""

    params = _SEED_POINTS
    param_names = ("n_points",)

    def setup(self, n):
        self.tape = _record(B.seed_f, 1.0, 2.0)
        self.X = B.seed_points(n)
        self.y = np.empty(n)
        self.g = np.empty((n, 2))
        _try(self.tape.forward, self.X, out=self.y)
        _try(self.tape.value_and_grad, self.X, out=(self.y, self.g))
        _try(self.tape.value_and_grad, self.X)

    def time_forward(self, n):
        self.tape.forward(self.X, out=self.y)

    def time_value_and_grad(self, n):
        self.tape.value_and_grad(self.X, out=(self.y, self.g))

    def time_value_and_grad_alloc(self, n):
        self.tape.value_and_grad(self.X)


class SeedBatchNumba:
    """Hand-written ``parallel=True`` Numba baseline for ``SeedBatch``."""

    params = _SEED_POINTS
    param_names = ("n_points",)

    def setup(self, n):
        self.X = B.seed_points(n)
        self.y = np.empty(n)
        self.g = np.empty((n, 2))
        B.seed_value_batch(self.X, self.y)
        B.seed_vg_batch(self.X, self.y, self.g)

    def time_forward(self, n):
        B.seed_value_batch(self.X, self.y)

    def time_value_and_grad(self, n):
        B.seed_vg_batch(self.X, self.y, self.g)

    def time_value_and_grad_alloc(self, n):
        y = np.empty(n)
        g = np.empty((n, 2))
        B.seed_vg_batch(self.X, y, g)


class SeedPoint:
    """tapejit single point, x of shape (2,)."""

    def setup(self):
        self.tape = _record(B.seed_f, 1.0, 2.0)
        self.x = B.seed_points(1)[0]
        self.v = np.empty(())
        self.g = np.empty(2)
        _try(self.tape.value_and_grad, self.x, out=(self.v, self.g))
        _try(self.tape.value_and_grad, self.x)

    def time_value_and_grad(self):
        self.tape.value_and_grad(self.x, out=(self.v, self.g))

    def time_value_and_grad_alloc(self):
        self.tape.value_and_grad(self.x)


class SeedPointNumba:
    def setup(self):
        self.x = B.seed_points(1)[0]
        self.g = np.empty(2)
        B.seed_vg_point_out(self.x, self.g)
        B.seed_vg_point(self.x)

    def time_value_and_grad(self):
        B.seed_vg_point_out(self.x, self.g)

    def time_value_and_grad_alloc(self):
        B.seed_vg_point(self.x)


# ---------------------------------------------------------------------------
# rosen2: single point from Python
# ---------------------------------------------------------------------------


class Rosen2:
    def setup(self):
        self.x = B.rosen2_point()
        self.tape = _record(B.rosen2_f, self.x.copy())
        self.v = np.empty(())
        self.g = np.empty(2)
        _try(self.tape.value_and_grad, self.x, out=(self.v, self.g))
        _try(self.tape.value_and_grad, self.x)

    def time_value_and_grad(self):
        self.tape.value_and_grad(self.x, out=(self.v, self.g))

    def time_value_and_grad_alloc(self):
        self.tape.value_and_grad(self.x)


class Rosen2Numba:
    def setup(self):
        self.x = B.rosen2_point()
        self.g = np.empty(2)
        B.rosen2_vg_out(self.x, self.g)
        B.rosen2_vg(self.x)

    def time_value_and_grad(self):
        B.rosen2_vg_out(self.x, self.g)

    def time_value_and_grad_alloc(self):
        B.rosen2_vg(self.x)


# ---------------------------------------------------------------------------
# extended Rosenbrock: one n-vector point
# ---------------------------------------------------------------------------

_ROSEN_N = (1000, 10000)


class RosenExt:
    params = _ROSEN_N
    param_names = ("n",)

    def setup(self, n):
        self.x = B.rosen_ext_point(n)
        self.tape = _record(B.rosen_ext_f, np.ones(n))
        self.v = np.empty(())
        self.g = np.empty(n)
        _try(self.tape.forward, self.x)
        _try(self.tape.value_and_grad, self.x, out=(self.v, self.g))

    def time_forward(self, n):
        self.tape.forward(self.x)

    def time_value_and_grad(self, n):
        self.tape.value_and_grad(self.x, out=(self.v, self.g))


class RosenExtNumba:
    params = _ROSEN_N
    param_names = ("n",)

    def setup(self, n):
        self.x = B.rosen_ext_point(n)
        self.g = np.empty(n)
        B.rosen_ext_vg_out(self.x, self.g)

    def time_forward(self, n):
        # the hand-written baseline has no value-only kernel; numpy is the
        # natural forward a user would write
        B.rosen_ext_f(self.x)

    def time_value_and_grad(self, n):
        B.rosen_ext_vg_out(self.x, self.g)


# ---------------------------------------------------------------------------
# sinfit: L(w) = mean((sin(w x_i) - y_i)^2), x_i, y_i as tape params
# ---------------------------------------------------------------------------


class SinFit:
    def setup(self):
        self.xs, self.ys = B.sinfit_data()
        self.tape = _record(B.sinfit_f, B.SINFIT_W0, self.xs, self.ys, argnums=(0,))
        self.p = np.concatenate([self.xs, self.ys])
        self.w = np.array([B.SINFIT_W0])
        self.v = np.empty(())
        self.g = np.empty(1)
        _try(self.tape.value_and_grad, self.w, params=self.p, out=(self.v, self.g))

    def time_value_and_grad(self):
        self.tape.value_and_grad(self.w, params=self.p, out=(self.v, self.g))

    def time_gd_1000(self):
        tape, params, v, g = self.tape, self.p, self.v, self.g
        lr = B.SINFIT_LR
        w = np.array([B.SINFIT_W0])
        for _ in range(B.SINFIT_STEPS):
            tape.value_and_grad(w, params=params, out=(v, g))
            w -= lr * g


class SinFitNumba:
    def setup(self):
        self.xs, self.ys = B.sinfit_data()
        B.sinfit_vg(B.SINFIT_W0, self.xs, self.ys)
        B.sinfit_gd(B.SINFIT_W0, self.xs, self.ys, B.SINFIT_LR, 2)

    def time_value_and_grad(self):
        B.sinfit_vg(B.SINFIT_W0, self.xs, self.ys)

    def time_gd_1000(self):
        """Whole loop jitted (what a hand-writer would do)."""
        B.sinfit_gd(B.SINFIT_W0, self.xs, self.ys, B.SINFIT_LR, B.SINFIT_STEPS)

    def time_gd_1000_python_loop(self):
        """Same Python-level loop as ``SinFit.time_gd_1000``, numba per step."""
        xs, ys, lr = self.xs, self.ys, B.SINFIT_LR
        w = B.SINFIT_W0
        for _ in range(B.SINFIT_STEPS):
            _, g = B.sinfit_vg(w, xs, ys)
            w -= lr * g
