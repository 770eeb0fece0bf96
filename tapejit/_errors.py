"""Exception types of tapejit."""

from __future__ import annotations


class TracingError(TypeError):
    """A traced function did something a tape cannot record faithfully.

    Raised while recording: an unsupported numpy function, converting a traced value to a
    Python number or a plain numpy array, using it as an index, and so on. The message
    names what was attempted and what to write instead.
    """


class ControlFlowError(TracingError):
    """Python control flow (``if``, ``while``, ``and``/``or``) on a traced value.

    A tape records one path through the code; a branch taken on a traced value would be
    frozen silently. Write the branch with ``np.where``, ``np.maximum``, ``np.abs`` or
    ``np.clip`` instead.
    """
