"""Exception types of tapejit."""

from __future__ import annotations


class TracingError(TypeError):
    """A traced function did something a tape cannot record faithfully.

    Raised while recording: an unsupported numpy function, converting a traced value to a
    Python number or a plain numpy array, using it as an index, and so on. The message
    names what was attempted and what to write instead.
    """


class BranchError(ValueError):
    """Points were evaluated on a tape whose recorded branches they do not take.

    A tape records one path through Python control flow (``if``, ``while``, ``and``,
    ``or``, builtin ``min``/``max``) as *guards*. Evaluating it where a guard does not
    hold would give another branch's values, so tapejit raises this instead. Use the
    function transforms (:func:`tapejit.grad` and friends), which re-record, or pass
    ``check="mask"`` to get a per-point validity mask with NaN at the invalid points.

    Attributes
    ----------
    n_invalid, n_points : int
        How many of how many points left the recorded branches.
    """

    def __init__(self, n_invalid: int, n_points: int, tape: object = None) -> None:
        self.n_invalid = n_invalid
        self.n_points = n_points
        name = f" {tape.name!r}" if getattr(tape, "name", "") else ""
        super().__init__(
            f"{n_invalid} of {n_points} point(s) left the branches recorded in tape{name} "
            f"({getattr(tape, 'n_guards', '?')} guard(s)): its values there would come from "
            "the wrong branch, or a matrix instruction failed there (a singular or not "
            "positive definite matrix: the tape guards their results to be finite). Use "
            "tapejit.grad/value_and_grad/jacobian/hessian (they re-record per branch), or "
            "check='mask' for a validity mask with NaN at those points."
        )

    def __reduce__(self):
        # Worker processes send errors pickled; the tape stays behind (the message names it).
        return (_branch_error, (self.n_invalid, self.n_points, str(self)))


def _branch_error(n_invalid: int, n_points: int, message: str) -> BranchError:
    """A :class:`BranchError` with this message, as unpickled."""
    err = BranchError.__new__(BranchError)
    ValueError.__init__(err, message)
    err.n_invalid, err.n_points = n_invalid, n_points
    return err
