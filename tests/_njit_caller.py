"""The one ``@njit`` caller of the Numba entry points that the test modules share.

Every distinct compiled caller of ``jit_value_and_grad`` / ``jit_value`` compiles the
kernels behind them into itself (minutes, cold): the tests that only need *a* compiled
caller import this one, which compiles once per process. Not cached on disk: a cached
caller goes stale whenever the kernels change (``test_compose`` covers that case).
"""

import numba

import tapejit


@numba.njit
def enter(args, x, g, grad):
    """``jit_value_and_grad(args, x, g)`` if ``grad`` else ``jit_value(args, x)``."""
    if grad:
        return tapejit.jit_value_and_grad(args, x, g)
    return tapejit.jit_value(args, x)
