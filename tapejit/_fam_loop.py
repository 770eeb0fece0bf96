"""The ``loop`` instruction family: a body sub-program run a fixed number of times.

``tapejit.scan`` and ``tapejit.fori_loop`` (``tapejit/_loop.py``) record their body once
as a sub-program of the tape and emit one ``loop`` instruction that runs it. Attributes
(:data:`LOOP_ATTRS`), operands, the body's inputs and outputs and the result layout are
described with the kernel routines, ``tapejit/_kernels/fam_loop.py``. This module holds
the attribute check, the sizes, and the check of a body against the instruction that
runs it (the routines trust both).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ._kernels import constants as _k
from ._program import MAX_FAMILY_SIZE, Family, Program, attr_columns

_POSITIONS = {_k.LOOP_BODY: "body", _k.LOOP_LENGTH: "length", _k.LOOP_CARRY: "n_carry",
              _k.LOOP_X: "n_x", _k.LOOP_CLOSURE: "n_closure", _k.LOOP_Y: "n_y",
              _k.LOOP_EVERY: "every"}
#: Attribute names, in order (their positions are the kernel routines' ``LOOP_*``).
LOOP_ATTRS = tuple(_POSITIONS[i] for i in range(len(_POSITIONS)))


def checkpoints(length: int, every: int) -> int:
    """How many carries a loop stores besides its final one: those after steps
    ``every, 2 every, ...`` below ``length``."""
    return (length - 1) // every if length > 0 else 0


def result_layout(length: int, n_carry: int, n_y: int, every: int) -> tuple[int, int, int]:
    """``(size, first final-carry element, first ys element)`` of a loop's result
    (element 0 is its status)."""
    carry0 = 1 + checkpoints(length, every) * n_carry
    ys0 = carry0 + n_carry
    return ys0 + length * n_y, carry0, ys0


def scratch_elements(opcodes: np.ndarray, attrs: np.ndarray, attr_offsets: np.ndarray
                     ) -> int:
    """Floats per point the loop instructions among ``opcodes`` allocate besides the
    workspace: each one's carries of one segment, ``min(every, length) * n_carry``
    (a loader counts them against its limits)."""
    total = 0
    for i in np.flatnonzero(np.asarray(opcodes) == LOOP.opcode).tolist():
        v = np.asarray(attrs[int(attr_offsets[i]) : int(attr_offsets[i]) + len(LOOP_ATTRS)],
                       dtype=np.int64)
        total += int(min(v[_k.LOOP_EVERY], max(v[_k.LOOP_LENGTH], 1)) * v[_k.LOOP_CARRY])
    return total


def loop_sizes(values: np.ndarray) -> np.ndarray:
    """``Family.sizes`` of (checked) rows: the result, then operands a, b, c."""
    v = attr_columns(values)
    n, nc, nx, nk, ny, every = (v[:, i] for i in (_k.LOOP_LENGTH, _k.LOOP_CARRY, _k.LOOP_X,
                                                 _k.LOOP_CLOSURE, _k.LOOP_Y, _k.LOOP_EVERY))
    nck = np.where(n > 0, (n - 1) // np.maximum(every, 1), 0)
    size = 1 + (nck + 1) * nc + n * ny
    return np.stack([size, nc, n * nx, nk], axis=1)


def loop_check(values: np.ndarray) -> np.ndarray:
    """Bad mask of attribute rows: a negative count or body index, ``every < 1``, a
    result or operand beyond the largest family block."""
    v = attr_columns(values)
    bad = (v < 0).any(axis=1) | (v[:, _k.LOOP_EVERY] < 1)
    if bad.all():
        return bad
    with np.errstate(over="ignore"):
        sizes = loop_sizes(np.where(bad[:, None], 0, v))
    return bad | (sizes > MAX_FAMILY_SIZE).any(axis=1)


def loop_body_check(attrs: tuple[int, ...], body: Program) -> str:
    """Why ``body`` cannot be the body of a loop with ``attrs``, or ``""``: it must have
    the inputs ``[carry | x | closure]``, no parameters and the outputs
    ``[next carry | y]``."""
    nc, nx, nk, ny = (attrs[i] for i in (_k.LOOP_CARRY, _k.LOOP_X, _k.LOOP_CLOSURE, _k.LOOP_Y))
    if body.n_params:
        return f"a loop body has no parameters; this one has {body.n_params}"
    if body.n_inputs != nc + nx + nk:
        return (f"a loop body with {nc} carried, {nx} per-step and {nk} closure values "
                f"has {nc + nx + nk} inputs; this one has {body.n_inputs}")
    if len(body.outputs) != nc + ny:
        return (f"a loop body with {nc} carried and {ny} per-step outputs has {nc + ny} "
                f"outputs; this one has {len(body.outputs)}")
    return ""


def _no_reference(attrs: tuple[int, ...], *operands: Any) -> np.ndarray:
    raise NotImplementedError(
        "a loop instruction's values need its body, which a family reference does not "
        "see: evaluate the tape (its kernels run loops)")


class BodyRun(Protocol):
    """A loop body evaluated at a block of points (the generic tier's forward sweep of
    the body program, one workspace kept from step to step)."""

    def load(self, first: int, rows: np.ndarray) -> None:
        """Body inputs ``first, first + 1, ...`` take ``rows`` (one row each, a column
        per point)."""

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        """The body's outputs ``(n_outputs, points)`` at the inputs loaded, and whether
        every guard of the body held at each point."""


def loop_points(attrs: tuple[int, ...], a: np.ndarray, b: np.ndarray, c: np.ndarray, *,
                body: BodyRun) -> np.ndarray:
    """A loop at many points at once: operands ``(length, points)``, result
    ``(size, points)`` laid out as the kernel routines write it (status, checkpoints,
    final carry, ys). Every step runs ``body`` over all the points; its guards are
    checked at every step, and a point where one failed gets NaN in its whole result,
    as in the routines."""
    n, nc, nx, ny, every = (int(attrs[i]) for i in (_k.LOOP_LENGTH, _k.LOOP_CARRY,
                                                      _k.LOOP_X, _k.LOOP_Y, _k.LOOP_EVERY))
    size, carry0, ys0 = result_layout(n, nc, ny, every)
    r = np.empty((size, a.shape[1]))
    ok = np.ones(a.shape[1], dtype=bool)
    body.load(nc + nx, c)  # the closure: the body never writes its inputs
    carry = a
    for t in range(n):
        body.load(0, carry)
        body.load(nc, b[t * nx : (t + 1) * nx])
        out, held = body.run()
        ok &= held
        r[ys0 + t * ny : ys0 + (t + 1) * ny] = out[nc:]
        carry = out[:nc]
        if (t + 1) % every == 0 and t + 1 < n:
            q = 1 + ((t + 1) // every - 1) * nc
            r[q : q + nc] = carry
    r[carry0 : carry0 + nc] = carry
    r[0] = 0.0
    r[:, ~ok] = np.nan
    return r


LOOP = Family("loop", 140, 3, LOOP_ATTRS, bodies=("body",), check=loop_check,
              sizes=loop_sizes, kernel="fam_loop", reference=_no_reference,
              points_reference=loop_points,
              body_check=loop_body_check,
              failure="a branch inside a loop body went the other way than when it was "
                      "recorded")
