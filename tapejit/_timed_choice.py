"""Choosing between two ways of computing the same result by timing both.

Some choices depend on what a tape computes more than on its shape: a sparse
derivative's colours at one point run faster in one sweep that carries all of them when
the tape's ops are costly (each value is computed once for every direction), and faster
one sweep per colour when they are cheap (a sweep of one direction takes the block loops
that vectorize). The op table has no cost to predict that from, and the calls it speeds
up (an optimizer's derivative callbacks) repeat many times, so :class:`TimedChoice`
times each way on alternate calls and then keeps the faster one. Both ways must give
the same results: only the time differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Timed calls of each way before the choice is made (the fastest of them counts).
TRIALS = 3


class TimedChoice:
    """Runs one of two equivalent ways per call: each in turn for the first
    ``2 * TRIALS`` calls that count, then the one whose fastest call was faster (the
    first way on a tie). Thread-safe; concurrent first calls only add measurements."""

    def __init__(self) -> None:
        self._times: tuple[list[float], list[float]] = ([], [])
        self._lock = threading.Lock()
        self.choice: int | None = None  # 0 or 1 once made

    @property
    def measured(self) -> tuple[int, int]:
        """How many calls of each way were timed."""
        return len(self._times[0]), len(self._times[1])

    def run(self, ways: tuple[Callable[[], T], Callable[[], T]],
            counts: Callable[[], bool]) -> T:
        """The result of one of ``ways``; ``counts()``, asked after the call, says
        whether its time may be compared (not when the call ran on the generic tier)."""
        if self.choice is not None:
            return ways[self.choice]()
        with self._lock:
            way = 0 if len(self._times[0]) <= len(self._times[1]) else 1
        start = time.perf_counter()
        result = ways[way]()
        elapsed = time.perf_counter() - start
        if counts():
            with self._lock:
                self._times[way].append(elapsed)
                if self.choice is None and min(map(len, self._times)) >= TRIALS:
                    self.choice = int(min(self._times[1]) < min(self._times[0]))
        return result
