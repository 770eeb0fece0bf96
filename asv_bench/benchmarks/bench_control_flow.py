"""asv benchmarks for Python control flow (issue 5).

``PiecewiseGrad``: the gradient of a three-piece function at 1e6 points,

* ``time_grad_python_if``: written with Python ``if``/``elif`` and evaluated through
  ``tapejit.grad(f, batched=True)``: one tape per branch, the points split among them;
* ``time_grad_where_tape``: the same function written with ``np.where``, one guard-free
  tape, ``tape.gradient(X)``;
* ``time_grad_numpy_closed_form``: the derivative written by hand in numpy, for scale.

Warm: the tapes are recorded (and the kernels compiled) in ``setup``.
"""

import numpy as np

from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()


def spline_if(x):
    if x < -1:
        return -2.0 * x - 1.0
    elif x < 1:
        return x * x
    else:
        return 2.0 * x - 1.0


def spline_where(x):
    return np.where(x < -1, -2.0 * x - 1.0, np.where(x < 1, x * x, 2.0 * x - 1.0))


def spline_grad_numpy(x):
    return np.where(x < -1, -2.0, np.where(x < 1, 2.0 * x, 2.0))


def spline_points(n, seed=0):
    return np.random.default_rng(seed).uniform(-3.0, 3.0, n)


def _tapejit_or_skip():
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    return tapejit


def _try(fn, *args, **kwargs):
    """Warm-up call; a missing tapejit feature skips instead of failing."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise NotImplementedError(f"{getattr(fn, '__name__', fn)} failed: {exc!r}") from exc


class PiecewiseGrad:
    params = (10000, 1000000)
    param_names = ("n_points",)

    def setup(self, n):
        tj = _tapejit_or_skip()
        self.x = spline_points(n)
        self.X = self.x[:, None].copy()  # (n, 1): the tape's points
        self.grad_if = tj.grad(spline_if, batched=True)
        _try(self.grad_if, self.x)  # records the three branch tapes
        self.tape_where = _try(tj.record, spline_where, 0.0)
        _try(self.tape_where.gradient, self.X)

    def time_grad_python_if(self, n):
        self.grad_if(self.x)

    def time_grad_where_tape(self, n):
        self.tape_where.gradient(self.X)

    def time_grad_numpy_closed_form(self, n):
        spline_grad_numpy(self.x)

    def track_n_tapes_python_if(self, n):
        return len(self.grad_if.tape_cache)

    track_n_tapes_python_if.unit = "tapes"
