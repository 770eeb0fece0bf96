"""asv benchmarks of long scalar tapes (issue #22): cost per point and instruction.

The tape is the scalar recurrence of ``_baselines.recurrence_f`` over ``k`` steps,
``a = sin(a)*b + 0.1*a; b = 0.9*b + 0.01*a*a`` (8k + 1 instructions), evaluated with
``value_and_grad`` at 1 to 10^5 points.

* ``Recurrence.time_value_and_grad``: the time of one call (``RecurrenceLong``: the
  same for 1000 and 10000 steps, up to 10^4 points).
* ``Recurrence.track_ns_per_point_instruction``: the same call's best of 3, in ns per
  point and instruction: flat in the tape's length is the design goal (the batched
  reverse sweeps of long tapes run segmented, ``tapejit/_segments.py``).
* ``Flatness.track_ratio``: that figure for a long tape over the 801-instruction tape's,
  both measured in the same process, alternately (the target: 1.5 at most).
* ``LorenzScan``: the Lorenz fit with its steps in ``tapejit.scan`` and unrolled, its
  gradient at 1 and 1000 points and its recording.
"""

import time

import numpy as np

from . import _baselines as B
from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()


_TAPES = {}  # by steps: one recording per process (asv's; the pytest smoke's)


def _setup(steps, points):
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    tape = _TAPES.get(steps)
    if tape is None:
        tape = _TAPES[steps] = tapejit.record(B.recurrence_f, B.RECURRENCE_X0, k=steps)
    rng = np.random.default_rng(0)
    X = rng.uniform(0.3, 0.8, 2) if points == 1 else rng.uniform(0.3, 0.8, (points, 2))
    tape.value_and_grad(X)  # warm: kernels loaded, plans and segments derived
    return tape, X


def _best_ns(tape, X, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        tape.value_and_grad(X)
        best = min(best, time.perf_counter() - t0)
    n = 1 if X.ndim == 1 else len(X)
    return best / (len(tape.opcodes) * n) * 1e9


class Recurrence:
    params = ((10, 100), (1, 100, 10_000, 100_000))
    param_names = ("steps", "points")
    timeout = 120

    def setup(self, steps, points):
        self.tape, self.X = _setup(steps, points)

    def time_value_and_grad(self, steps, points):
        self.tape.value_and_grad(self.X)

    def track_ns_per_point_instruction(self, steps, points):
        return _best_ns(self.tape, self.X)

    track_ns_per_point_instruction.unit = "ns"


class RecurrenceLong(Recurrence):
    # 10^5 points would take seconds a call (the table of issue #22 leaves them out)
    params = ((1000, 10000), (1, 100, 10_000))


class Flatness:
    params = ((1000, 10000), (1000, 10_000))
    param_names = ("steps", "points")
    timeout = 180

    def setup(self, steps, points):
        self.short, self.X = _setup(100, points)
        self.long, _ = _setup(steps, points)

    def track_ratio(self, steps, points):
        short = long = float("inf")
        for _ in range(3):  # alternately, so that both see the same machine
            short = min(short, _best_ns(self.short, self.X, 1))
            long = min(long, _best_ns(self.long, self.X, 1))
        return long / short

    track_ratio.unit = "ratio"


class LorenzScan:
    """The Lorenz fit (2000 RK4 steps) with ``tapejit.scan`` and unrolled, at one point
    and 1000 points: the loop recorded once against the tape that holds every step."""

    params = (("scan", "unrolled"), (1, 1000))
    param_names = ("loop", "points")
    timeout = 180

    def setup(self, loop, points):
        if tapejit is None:
            raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
        f = B.lorenz_scan_f if loop == "scan" else B.lorenz_f
        self.tape = tapejit.record(f, B.LORENZ_P0.copy())
        self.X = B.LORENZ_P0 if points == 1 else B.lorenz_points(points)
        self.tape.value_and_grad(self.X)

    def time_value_and_grad(self, loop, points):
        self.tape.value_and_grad(self.X)

    def time_record(self, loop, points):
        tapejit.record(B.lorenz_scan_f if loop == "scan" else B.lorenz_f,
                       B.LORENZ_P0.copy())
