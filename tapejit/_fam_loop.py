"""The ``loop`` instruction family: a body sub-program run a fixed number of times.

``tapejit.scan`` and ``tapejit.fori_loop`` (``tapejit/_loop.py``) record their body once
as a sub-program of the tape and emit one ``loop`` instruction that runs it. Attributes
(:data:`LOOP_ATTRS`), operands, the body's inputs and outputs and the result layout are
described with the kernel routines, ``tapejit/_kernels/fam_loop.py``. This module holds
the attribute check, the sizes, and the check of a body against the instruction that
runs it (the routines trust both); the generic tier's rule, the loop at many points with
the body swept by that tier (:func:`loop_points`); and the reverse rule of nested
differentiation, the transpose of the scan recorded as new loops (:func:`loop_vjp`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from ._kernels import constants as _k
from ._program import (
    ATTR,
    MAX_ARITY,
    MAX_FAMILY_SIZE,
    N_INSTR,
    N_SLOTS,
    N_SUBPROGRAMS,
    OPCODE,
    Family,
    Program,
    attr_columns,
    attrs_of,
    code_of,
    subprograms_of,
)
from ._scalar_program import is_scalar

_POSITIONS = {_k.LOOP_BODY: "body", _k.LOOP_LENGTH: "length", _k.LOOP_CARRY: "n_carry",
              _k.LOOP_X: "n_x", _k.LOOP_CLOSURE: "n_closure", _k.LOOP_Y: "n_y",
              _k.LOOP_EVERY: "every"}
#: Attribute names, in order (their positions are the kernel routines' ``LOOP_*``).
LOOP_ATTRS = tuple(_POSITIONS[i] for i in range(len(_POSITIONS)))


class LoopAttrs(NamedTuple):
    """A loop instruction's attribute values by name (:data:`LOOP_ATTRS`, in order)."""

    body: int
    length: int
    n_carry: int
    n_x: int
    n_closure: int
    n_y: int
    every: int

    @classmethod
    def of(cls, attrs: Any) -> LoopAttrs:
        """From the attribute values in the program's order."""
        return cls(*(int(attrs[i]) for i in range(len(LOOP_ATTRS))))


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


def kept_floats(prog: np.ndarray) -> int:
    """Floats the one-point value-and-gradient driver offers the loops of packed program
    ``prog`` to keep every step's workspace from the forward sweep to the reverse (past
    the values in its workspace; ``_loop_kept`` in ``_kernels/fam_loop.py`` lays them out
    the same way): in instruction order, each loop whose body has a scalar program takes
    ``length * (body slots + MAX_ARITY * body instructions + 1) + 1`` while the total
    stays within ``LOOP_KEPT_VALUES``. 0 for a program without loops."""
    if not int(prog[N_SUBPROGRAMS]):
        return 0
    from ._kernels.fam_loop import LOOP_KEPT_VALUES  # lazy: the kernel file, as a module

    code, attrs, bodies = code_of(prog), attrs_of(prog), subprograms_of(prog)
    total = 0
    for row in code[code[:, OPCODE] == LOOP.opcode]:
        v = LoopAttrs.of(attrs[int(row[ATTR]) :])
        at, length, _ = (int(x) for x in bodies[v.body])
        body = prog[at : at + length]
        if not is_scalar(body):
            continue
        size = v.length * (int(body[N_SLOTS]) + MAX_ARITY * int(body[N_INSTR]) + 1) + 1
        if total + size <= LOOP_KEPT_VALUES:
            total += size
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
    _, _, nc, nx, nk, ny, _ = LoopAttrs.of(attrs)
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
    _, n, nc, nx, _, ny, every = LoopAttrs.of(attrs)
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


# -- the reverse rule for nested differentiation --------------------------------------
def _is_zero(t: Any) -> bool:
    """Whether traced ``t`` is all the constant 0 (no cotangent)."""
    from ._tracer import ids_of, recording_of

    ids = ids_of(t)
    return bool((ids < 0).all() and (recording_of(t).values(ids) == 0.0).all())


def _stack_steps(parts: list[Any]) -> Any:
    """Per-step sequences ``(n, k_i)`` (traced, or constant) side by side, ``(n, sum
    k_i)``, as one block of consecutive ids (None when there are no columns).

    Elementwise instructions write consecutive results, so interleaving two sequences
    step by step would take one instruction per step. A loop writes its ys step by step:
    each traced sequence goes through a loop whose body outputs the step's values among
    zeros (no instruction in the body), and ``where`` with a constant mask picks each
    sequence's columns (exact: nothing is added or multiplied)."""
    from ._loop import scan
    from ._tracer import emit, ids_of, recording_of

    parts = [p for p in parts if p.shape[1]]
    if len(parts) <= 1:
        return parts[0] if parts else None
    n, width = parts[0].shape[0], sum(p.shape[1] for p in parts)
    out, col = None, 0
    for p in parts:
        k = p.shape[1]
        ids = ids_of(p)
        if (ids < 0).all():  # constants: padded in the pool
            padded = np.zeros((n, width))
            padded[:, col : col + k] = recording_of(p).values(ids)
        else:
            def pad(c: Any, s: Any, before: int = col, after: int = width - col - k) -> Any:
                return c, np.concatenate([np.zeros(before), s, np.zeros(after)])

            padded = scan(pad, (), p)[1]
        if out is None:
            out = padded
        else:
            mask = np.zeros((n, width))
            mask[:, col : col + k] = 1.0
            out = emit("where", mask, padded, out)
        col += k
    return out


def loop_vjp(attrs: tuple[int, ...], operands: list[Any], result: Any, cotangent: Any,
             needed: tuple[bool, ...] = (True, True, True)) -> tuple:
    """``loop``'s reverse rule as traced numpy (nested differentiation): the transpose of
    the scan, recorded as new loop instructions, never unrolled.

    1. A forward loop runs the body again from the initial carry and stores every step's
       carry as its ys (with the step's ``x`` and the cotangents of its ``y`` and, where
       a checkpoint has one, of its carry): ``length * n_carry`` values more per point
       than the loop itself keeps (it keeps one carry every ``every`` steps). This is
       the memory nested differentiation of a loop costs.
    2. A reverse loop over those records, last step first, carries the carry's cotangent
       (and sums the closure's): its body is the body's own vector-Jacobian product at
       the step's carry and ``x`` (``_nested.vjp`` of the body program replayed on
       tracers, ``_compose.py``), seeded with that cotangent plus the step's. Its ys are
       the cotangents of the ``x`` of each step.

    Both bodies replay the body program with its guards, so each step's branch is
    checked in the derivative as in the loop; both are loops again, so this rule
    differentiates them to any order.
    """
    from ._loop import scan
    from ._nested import vjp
    from ._tape import Tape
    from ._tracer import Tracer, ids_of, recording_of

    body_at, n, nc, nx, nk, ny, every = LoopAttrs.of(attrs)
    rec = recording_of(result)
    body = Tape(**rec.subprogram(body_at).arrays())
    a, b, k = (np.ravel(o) for o in operands)
    g = np.ravel(cotangent)
    _, carry0, ys0 = result_layout(n, nc, ny, every)
    g_carry = g[carry0 : carry0 + nc]
    if n == 0:  # the result is the initial carry
        return (g_carry if needed[0] else None), None, None

    # per step: its x, and the cotangents of its y and of its carry where a checkpoint
    # holds it (only those with a cotangent)
    parts = [np.reshape(b, (n, nx))]
    g_ys = np.reshape(g[ys0:], (n, ny))
    with_ys = not _is_zero(g_ys)
    if with_ys:
        parts.append(g_ys)
    g_ck = g[1:carry0]
    with_ck = not _is_zero(g_ck)
    if with_ck:  # checkpoint q holds the carry after step (q + 1) every
        ids = np.full((n, nc), rec.const(np.zeros(1))[0])
        ids[every - 1 : every * checkpoints(n, every) : every] = np.reshape(ids_of(g_ck),
                                                                           (-1, nc))
        parts.append(Tracer(rec, ids))
    steps = _stack_steps(parts)

    def step_inputs(c: Any, x: Any, closure: Any) -> Any:
        return np.concatenate([v for v in (c, x, closure) if v.size])

    def forward(c: Any, s: Any) -> Any:
        s = np.zeros(0) if s is None else s
        out = np.reshape(body(step_inputs(c, s[:nx], k)), -1)
        return out[:nc], np.concatenate([c, s])

    if nc:
        _, saved = scan(forward, a, steps, length=n)
        # the records last step first: one reversed copy (each step's record reversed too)
        records = np.reshape(np.ravel(saved)[::-1], saved.shape)
    else:  # no carry: the steps are independent, their records are their inputs
        records = steps
    width = nc + (0 if steps is None else steps.shape[1])
    wrt = ["c", *(["x"] if needed[1] and nx else []), *(["k"] if needed[2] and nk else [])]

    def backward(carry: Any, r: Any) -> Any:
        gc, gk = carry
        r = np.zeros(0) if r is None else r[::-1] if nc else r
        at = {"c": r[:nc], "x": r[nc : nc + nx], "k": k}
        g_step = r[nc + nx : nc + nx + ny] if with_ys else np.zeros(ny)
        if with_ck:
            gc = gc + r[width - nc :]

        def f(*values: Any) -> Any:
            v = {**at, **dict(zip(wrt, values, strict=True))}
            return body(step_inputs(v["c"], v["x"], v["k"]))

        _, cots = vjp(f, [at[w] for w in wrt], np.concatenate([gc, g_step]))
        d = dict(zip(wrt, cots, strict=True))
        gx = d.get("x")
        if gx is not None and nc:  # reversed: all steps' are reversed as one block after
            gx = gx[::-1]
        return (d["c"], gk + d["k"] if "k" in d else gk), gx

    (ga, gk), gx = scan(backward, (g_carry, np.zeros(nk)), records, length=n)
    if "x" in wrt:
        gx = np.ravel(gx)[::-1] if nc else np.ravel(gx)
    return ga if needed[0] else None, gx if "x" in wrt else None, gk if "k" in wrt else None


LOOP = Family("loop", 140, 3, LOOP_ATTRS, bodies=("body",), check=loop_check,
              sizes=loop_sizes, kernel="fam_loop", reference=_no_reference,
              points_reference=loop_points,
              body_check=loop_body_check, vjp=loop_vjp,
              failure="a branch inside a loop body went the other way than when it was "
                      "recorded",
              equivalent={"64dd234956f6f2b4": "before the generic tier's rule (loop_points) "
                                              "and the nested-differentiation rule "
                                              "(loop_vjp): the same routines and attributes",
                          "407af9e7c2c2d993": "before the reverse at one point kept a "
                                              "segment's workspaces: the same results",
                          "cfe9f7ffeb348b10": "before tangents and second order at one "
                                              "point ran the point sweeps: the same "
                                              "results",
                          "2a0ef65ad5de7198": "before a one-point gradient kept every "
                                              "step for the reverse: the same results"})
