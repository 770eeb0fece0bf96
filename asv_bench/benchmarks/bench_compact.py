"""asv benchmarks of slot compaction (``tapejit._slot_reuse``).

* ``Chain``: a 2000-step scalar loop (``x = sin(x) * 1.01``: libm-bound; ``x = x *
  0.999 + 0.001``: memory-bound) recorded once, ``forward`` over 1e5 points with the
  slot-compacted program (what a tape uses) and with the tape's own program (one slot
  per instruction: a 4,002-slot workspace and 16-point chunks instead of a handful of
  slots and 512-point chunks), next to the same loop in vectorized numpy.
  ``time_compact`` is the compaction itself; ``track_slots_*`` the workspace rows per
  point before and after.

JIT warm-up (and the compaction) happens in ``setup``.
"""

import numpy as np

from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()

STEPS = 2000
POINTS = 100_000


def _sin_step(x):
    return np.sin(x) * 1.01


def _muladd_step(x):
    return x * 0.999 + 0.001


STEP = {"sin": _sin_step, "muladd": _muladd_step}


def _chain(step):
    def f(x):
        for _ in range(STEPS):
            x = step(x)
        return x

    return f


class Chain:
    params = ("sin", "muladd")
    param_names = ("step",)
    timeout = 300

    def setup(self, step):
        if tapejit is None:
            raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
        try:
            from tapejit._slot_reuse import compact
            from tapejit._tape import from_packed, install_for_tests, kernel_arrays, packed
        except ImportError as exc:
            raise NotImplementedError(f"no slot compaction or test hook: {exc}") from exc
        self.compact = compact
        self.f = _chain(STEP[step])
        self.tape = tapejit.record(self.f, 0.5)
        self.prog = packed(self.tape)[0]
        own = from_packed(*(np.array(a) for a in packed(self.tape)))
        install_for_tests(own, forward_prog=kernel_arrays(own)[0])  # the tape's own program
        self.own = own
        self.X = np.random.default_rng(0).uniform(-2, 2, (POINTS, 1))
        self.x = self.X[:, 0].copy()
        self.tape.forward(self.X[:10])
        self.own.forward(self.X[:10])

    def time_forward_compact(self, step):
        self.tape.forward(self.X)

    def time_forward_own_program(self, step):
        self.own.forward(self.X)

    def time_numpy(self, step):
        self.f(self.x)

    def time_compact(self, step):
        self.compact(self.prog)

    def track_slots_own_program(self, step):
        return self.tape.n_slots

    def track_slots_compact(self, step):
        return self.tape.stats()["compact_slots"]
