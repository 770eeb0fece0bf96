"""The generic interpreter (tier 0): every kind of call, with nothing to compile.

On a machine whose cache does not hold the optimised kernels yet, the first calls of a
session would wait tens of seconds for Numba. Until the kernels are compiled in the
background (``tapejit/_kernels/tiers.py``), tapes run here instead, through functions with
the optimised kernels' names and signatures, so :class:`~tapejit.Tape` calls either tier
the same way:

* **values**: a forward sweep in numpy over a workspace of one row per slot and one column
  per point (points innermost, as in the kernels), each elementwise instruction one call
  of its op's numpy reference over the whole block (``Op.numpy``), each family instruction
  its ``Family.points_reference`` over all the points (or its ``reference`` at each), and
  a loop its body program swept the same way at every step, over all the points at once
  (``_fam_loop.loop_points``; guards checked at every step, as the kernels do);
* **derivatives**: tapes of their own, recorded once per program with nested
  differentiation (``tapejit/_nested.py``: the op table's partials as ops, the families'
  ``vjp`` rules) and then swept forward like any tape: ``value_and_grad`` and ``vjp``
  (the reverse Jacobian too, one weight row per output), ``jvp`` (forward Jacobians) and
  ``hvp`` (Hessians, one direction per unit vector).

Results agree with the optimised kernels to rounding, not always bit for bit; where they
may differ is in ``docs/internals.rst`` (*Tiers*). Guards are checked at every point as the
kernels do. A derivative this tier cannot record (one that nested differentiation refuses
at a point on the tape's branch) raises :class:`Unsupported`, and the caller compiles the
optimised kernel instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._ops import BY_CODE, resolved
from ._program import (
    ARG_A,
    ATTR,
    FAMILIES,
    FIRST_FAMILY,
    GUARD_OUTCOME,
    GUARD_SLOT,
    MAX_ARITY,
    N_CONSTS,
    N_INPUTS,
    N_OUTPUTS,
    N_SLOTS,
    OPCODE,
    RESULT,
    SIZE,
    STRIDE_A,
    attrs_of,
    code_of,
    guards_of,
    inputs_of,
    outputs_of,
    params_of,
    subprograms_of,
)

#: Values (slots x points) of one workspace at most: bounded memory for any batch.
WORKSPACE_VALUES = 1 << 20
#: The same for a program with loops (128 MiB): each chunk runs every step of every loop,
#: one numpy call per body instruction whatever the chunk's width, so wider chunks pay
#: that once for more points (a derivative tape of a loop keeps every step's carry: many
#: slots; docs/performance.rst).
LOOP_WORKSPACE_VALUES = 1 << 24
_EMPTY = np.zeros(0)


class Unsupported(Exception):
    """A program or derivative the generic interpreter does not run (the caller compiles
    the optimised kernel instead)."""


# -- the forward sweep -------------------------------------------------------------------
@dataclass(frozen=True)
class _Block:
    """An elementwise instruction: ``W[r : r + size] = fn(operand rows...)``."""

    fn: Callable[..., Any]
    r: int
    size: int
    operands: tuple[slice, ...]  # the rows of each operand

    def run(self, W: np.ndarray, consts: np.ndarray) -> None:
        W[self.r : self.r + self.size] = self.fn(*[W[rows] for rows in self.operands])


def _rows_of(a: int, stride: int, size: int) -> slice:
    """The operand's rows: ``a + e * stride`` for ``e < size`` (any sign of stride)."""
    if stride == 0:
        return slice(a, a + 1)
    stop = a + size * stride
    return slice(a, stop if stop >= 0 else None, stride)


@dataclass(frozen=True)
class _FamilyStep:
    """A family instruction: its numpy rule over all points, or its reference at each."""

    fn: Callable[..., Any]
    points: Callable[..., Any] | None
    attrs: tuple[int, ...]
    r: int
    size: int
    blocks: tuple[tuple[int, int], ...]  # (first slot, length) of each operand

    def run(self, W: np.ndarray, consts: np.ndarray) -> None:
        pad = [_EMPTY] * (MAX_ARITY - len(self.blocks))
        if self.points is not None:  # the family's rule over all points at once
            W[self.r : self.r + self.size] = self.points(
                self.attrs, *[W[a : a + n] for a, n in self.blocks], *pad)
            return
        for p in range(W.shape[1]):
            ops = [W[a : a + n, p] for a, n in self.blocks]
            W[self.r : self.r + self.size, p] = np.reshape(
                self.fn(self.attrs, *ops, *pad), -1)


@dataclass(frozen=True)
class _BodyStep:
    """A family instruction that runs a sub-program (a loop): its rule over all points,
    given the body run by this tier's forward sweep (``Family.points_reference`` with
    ``body=``)."""

    fn: Callable[..., Any]
    attrs: tuple[int, ...]
    r: int
    size: int
    blocks: tuple[tuple[int, int], ...]
    body: _Decoded
    consts_at: int  # where the body's constants start in the enclosing program's pool

    def run(self, W: np.ndarray, consts: np.ndarray) -> None:
        body = _BodyRun(self.body, consts[self.consts_at : self.consts_at
                                          + self.body.n_consts], W.shape[1])
        W[self.r : self.r + self.size] = self.fn(
            self.attrs, *[W[a : a + n] for a, n in self.blocks], body=body)


class _BodyRun:
    """A body program over a block of points (``_fam_loop.BodyRun``): one workspace,
    its constants filled once, for all the steps of one loop instruction."""

    def __init__(self, d: _Decoded, consts: np.ndarray, m: int) -> None:
        self.d, self.consts = d, consts
        self.W = np.empty((d.n_slots, m))
        self.W[: d.n_consts] = consts[:, None]

    def load(self, first: int, rows: np.ndarray) -> None:
        self.W[self.d.inputs[first : first + len(rows)]] = rows

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        W, d = self.W, self.d
        for step in d.steps:
            step.run(W, self.consts)
        return W[d.outputs], d.held(W)


@dataclass
class _Decoded:
    """A packed program as the forward sweep runs it."""

    n_slots: int
    n_consts: int
    inputs: np.ndarray
    params: np.ndarray
    outputs: np.ndarray
    guard_slots: np.ndarray
    guard_outcomes: np.ndarray
    steps: list[_Block | _FamilyStep | _BodyStep]
    #: Values per point of a workspace and the nested ones a loop keeps while it runs.
    width: int
    derived: dict[str, Any] = field(default_factory=dict)

    def held(self, W: np.ndarray) -> np.ndarray:
        """Per point (column of workspace ``W``): whether every guard held."""
        return (W[self.guard_slots] == self.guard_outcomes[:, None]).all(axis=0)


def _decode(prog: np.ndarray) -> _Decoded:
    steps: list[_Block | _FamilyStep | _BodyStep] = []
    attrs = attrs_of(prog)
    subprograms = subprograms_of(prog)
    nested = 0
    for row in code_of(prog).tolist():
        op, r, size = row[OPCODE], row[RESULT], row[SIZE]
        if op < FIRST_FAMILY:
            o = BY_CODE[op]
            # resolved here, once, not at every run of the block
            steps.append(_Block(resolved(o.numpy), r, size, tuple(
                _rows_of(row[ARG_A + k], row[STRIDE_A + k], size) for k in range(o.arity))))
        else:
            fam = FAMILIES[op]
            at = row[ATTR]
            values = tuple(attrs[at : at + len(fam.attrs)].tolist())
            blocks = tuple((row[ARG_A + k], row[STRIDE_A + k]) for k in range(fam.arity))
            if fam.bodies:  # a loop: its body decoded too, run by this sweep
                sub_at, sub_len, consts_at = subprograms[
                    values[fam.attrs.index(fam.bodies[0])]].tolist()
                body = _decode(prog[sub_at : sub_at + sub_len])
                nested = max(nested, body.width)
                steps.append(_BodyStep(fam.points_reference, values, r, size, blocks, body,
                                       consts_at))
            else:
                steps.append(_FamilyStep(fam.reference, fam.points_reference, values, r,
                                         size, blocks))
    guards = guards_of(prog)
    n_slots = int(prog[N_SLOTS])
    return _Decoded(n_slots, int(prog[N_CONSTS]), inputs_of(prog).copy(),
                    params_of(prog).copy(), outputs_of(prog).copy(),
                    guards[:, GUARD_SLOT].copy(), guards[:, GUARD_OUTCOME].astype(np.float64),
                    steps, n_slots + nested)


# Decoded programs by id, each with a weak reference that tells a reused id apart.
_DECODED: dict[int, tuple[weakref.ref, _Decoded]] = {}


def decoded(prog: np.ndarray) -> _Decoded:
    """The decoded form of packed program ``prog`` (kept while ``prog`` lives)."""
    hit = _DECODED.get(id(prog))
    if hit is not None and hit[0]() is prog:
        return hit[1]
    d = _decode(prog)
    key = id(prog)
    # the table bound as a default: at interpreter exit the module's globals are gone
    _DECODED[key] = (weakref.ref(prog, lambda _, key=key, table=_DECODED: table.pop(key, None)), d)
    return d


def sweep(d: _Decoded, consts: np.ndarray, X: np.ndarray, P: np.ndarray,
          Y: np.ndarray, valid: np.ndarray) -> None:
    """Outputs ``Y (n, n_outputs)`` and guard validity ``valid (n,)`` (1: every guard
    holds) at points ``X (n, n_inputs)`` with parameters ``P (1 or n, n_params)``, in
    chunks that bound the workspace."""
    n = X.shape[0]
    bound = LOOP_WORKSPACE_VALUES if d.width > d.n_slots else WORKSPACE_VALUES  # loops?
    chunk = max(1, min(n, bound // max(d.width, 1)))
    W = np.empty((d.n_slots, chunk))
    W[: d.n_consts] = consts[: d.n_consts, None]
    with np.errstate(all="ignore"):
        for p0 in range(0, n, chunk):
            m = min(chunk, n - p0)
            w = W[:, :m]
            w[d.inputs] = X[p0 : p0 + m].T
            w[d.params] = (P if P.shape[0] == 1 else P[p0 : p0 + m]).T
            for step in d.steps:
                step.run(w, consts)
            Y[p0 : p0 + m] = w[d.outputs].T
            valid[p0 : p0 + m] = d.held(w)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1) if a.ndim == 1 else a


def _values(prog: np.ndarray, consts: np.ndarray, X: np.ndarray, P: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    d = decoded(prog)
    Y = np.empty((X.shape[0], d.outputs.size))
    valid = np.empty(X.shape[0], dtype=np.uint8)
    sweep(d, consts, X, _rows(P), Y, valid)
    return Y, valid


# -- derivatives as tapes of their own ------------------------------------------------------
def _derived(prog: np.ndarray, consts: np.ndarray, kind: str, X: np.ndarray,
             P: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(program, constants)`` of derivative tape ``kind`` of ``prog``, recorded on first
    use at a point of ``X`` (rows of inputs) where the tape's guards hold, or None when
    they hold at none of them (no point of the batch has a result to give).

    Recording follows the tape's branch, so it needs such a point: at another one the
    composed tape raises ``BranchError`` and a matrix family may be singular. The first
    row is tried first; the others are swept for their guards only when it fails there.
    A refusal at a point where the guards hold does not depend on the point: it is kept,
    and this program's calls of that kind go to the optimised kernels.
    """
    d = decoded(prog)
    hit = d.derived.get(kind)
    if hit is None:
        if not (int(prog[N_INPUTS]) and int(prog[N_OUTPUTS])):
            hit = Unsupported(f"{kind}: a tape without inputs or outputs")
        else:
            hit = _record_derived(prog, consts, kind, X, P)
            if hit is None:
                return None
        d.derived[kind] = hit
    if isinstance(hit, Unsupported):
        raise hit
    return hit


def _record_derived(prog, consts, kind: str, X: np.ndarray, P: np.ndarray):
    """Derivative tape ``kind`` recorded at the first row of ``X``, else at the first row
    where the guards hold; :class:`Unsupported` for a refusal at a row on the branch, None
    when there is no such row."""
    n_in = int(prog[N_INPUTS])
    hit = _record_at(prog, consts, kind, X, P, 0)
    if not isinstance(hit, Unsupported):
        return hit
    _, valid = _values(prog, consts, X[:, :n_in], P)
    held = np.flatnonzero(valid)
    if not held.size:
        return None
    if held[0] == 0:  # the guards hold there: the refusal is not the point's
        return hit
    return _record_at(prog, consts, kind, X, P, int(held[0]))


def _record_at(prog, consts, kind: str, X: np.ndarray, P: np.ndarray, row: int):
    """Derivative tape ``kind`` recorded at row ``row`` of ``X``, or the refusal."""
    from ._tape import from_packed, kernel_arrays

    x = X[row, : int(prog[N_INPUTS])].copy()
    try:
        return kernel_arrays(_RECORDERS[kind](from_packed(prog, consts), x,
                                              P[min(row, P.shape[0] - 1)].copy()))
    except Exception as err:  # any refusal: the optimised kernel runs it
        return Unsupported(f"{kind}: {type(err).__name__}: {err}")


def _call(tape, x, p):
    return tape(x, params=p) if tape.n_params else tape(x)


def _record_vg(tape, x, p):
    from . import value_and_grad
    from ._record import record

    return record(lambda x, p: value_and_grad(lambda x: _call(tape, x, p))(x), x, p,
                  argnums=0)


def _record_vjp(tape, x, p):
    from . import value_and_grad
    from ._record import record

    def f(x, w, p):
        def weighted(x):
            y = _call(tape, x, p)
            return np.dot(w, np.reshape(y, -1)), y

        (_, y), g = value_and_grad(weighted, has_aux=True)(x)
        return y, g

    return record(f, x, np.ones(tape.n_outputs), p, argnums=(0, 1))


def _record_jvp(tape, x, p):
    from . import jvp
    from ._record import record

    return record(lambda x, v, p: jvp(lambda x: _call(tape, x, p), (x,), (v,)), x,
                  np.ones_like(x), p, argnums=(0, 1))


def _record_hvp(tape, x, p):
    from . import hvp, value_and_grad
    from ._record import record

    def f(x, v, p):
        def g(x):
            return _call(tape, x, p)

        y, grad = value_and_grad(g)(x)
        return y, grad, hvp(g)(x, v=v)

    return record(f, x, np.ones_like(x), p, argnums=(0, 1))


_RECORDERS = {"vg": _record_vg, "vjp": _record_vjp, "jvp": _record_jvp, "hvp": _record_hvp}


def _width(prog: np.ndarray, kind: str) -> int:
    """The number of outputs of derivative tape ``kind`` of ``prog``."""
    n_in, n_out = int(prog[N_INPUTS]), int(prog[N_OUTPUTS])
    return {"vg": 1 + n_in, "vjp": n_out + n_in, "jvp": 2 * n_out, "hvp": 1 + 2 * n_in}[kind]


def _run_derived(prog, consts, kind: str, X: np.ndarray, P: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and validity of derivative tape ``kind`` at rows ``X`` of its inputs."""
    P = _rows(P)
    if not X.shape[0]:  # no points: nothing to record at
        return np.empty((0, _width(prog, kind))), np.empty(0, np.uint8)
    derived = _derived(prog, consts, kind, X, P)
    if derived is None:  # no point on the tape's branch: no values, every point fails
        return np.full((X.shape[0], _width(prog, kind)), np.nan), np.zeros(X.shape[0], np.uint8)
    return _values(*derived, X, P)


def _pairs(X: np.ndarray, P: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point with each of its directions, ``V (1 or n, nd, k)``: rows ``[x, v]``
    point-major, and the matching parameter rows."""
    n, nd, k = X.shape[0], V.shape[1], V.shape[2]
    XV = np.concatenate([np.repeat(X, nd, axis=0),
                         np.broadcast_to(V, (n, nd, k)).reshape(n * nd, k)], axis=1)
    P = _rows(P)
    return XV, (P if P.shape[0] == 1 else np.repeat(P, nd, axis=0))


# -- the optimised kernels' entry points, same names and signatures ---------------------------
def forward_point(prog, consts, x, P, y, WS):
    Y, valid = _values(prog, consts, x.reshape(1, -1), P)
    y[:] = Y[0]
    return 0 if valid[0] else 1


def forward_batch(prog, consts, X, P, Y, valid, chunk, t, nt):
    if t == 0:  # the whole batch on the caller's thread; the pool's shares are empty
        sweep(decoded(prog), consts, X, _rows(P), Y, valid)


forward_points = forward_batch


def value_grad_point(prog, R, consts, x, P, g, WS):
    Z, valid = _run_derived(prog, consts, "vg", x.reshape(1, -1), P)
    if not valid[0]:
        g[:] = np.nan
        return np.nan
    g[:] = Z[0, 1:]
    return float(Z[0, 0])  # a Python float, as the kernel returns


def forward_scalar(prog, S, consts, x, P, y, WS):
    return forward_point(prog, consts, x, P, y, WS)  # S: for the kernels only


def value_grad_scalar(prog, S, F, consts, x, P, g, WS):
    return value_grad_point(prog, None, consts, x, P, g, WS)  # S, F: for the kernels only


def vjp_batch(prog, R, consts, X, P, WT, Y, G, valid, chunk, t, nt):
    if t:
        return
    n, n_out = X.shape[0], int(prog[N_OUTPUTS])
    if n_out == 0:  # no outputs: a zero gradient, the guards checked
        G[:] = 0.0
        valid[:] = _values(prog, consts, X, P)[1]
        return
    if n_out == 1 and np.all(WT == 1.0):  # a gradient: value_grad_point's tape and bits
        Z, ok = _run_derived(prog, consts, "vg", X, P)
        Y[:, 0] = Z[:, 0]
        G[:] = Z[:, 1:]
    else:
        XW = np.concatenate([X, np.broadcast_to(WT, (n, n_out))], axis=1)
        Z, ok = _run_derived(prog, consts, "vjp", XW, P)
        Y[:] = Z[:, :n_out]
        G[:] = Z[:, n_out:]
    valid[:] = ok


vjp_points = vjp_batch


def jacrev_batch(prog, R, consts, X, P, Y, J, valid, chunk, t, nt):
    if t:
        return
    n, n_out = X.shape[0], int(prog[N_OUTPUTS])
    if n_out == 0:  # no rows: the guards only
        valid[:] = _values(prog, consts, X, P)[1]
        return
    if n_out == 1:  # the gradient
        vjp_batch(prog, R, consts, X, P, np.ones((1, 1)), Y, J.reshape(n, J.shape[2]), valid,
                  chunk, t, nt)
        return
    XW, PW = _pairs(X, P, np.eye(n_out).reshape(1, n_out, n_out))
    Z, ok = _run_derived(prog, consts, "vjp", XW, PW)
    Z = Z.reshape(n, n_out, n_out + int(prog[N_INPUTS]))
    Y[:] = Z[:, 0, :n_out]
    J[:] = Z[:, :, n_out:]
    valid[:] = ok.reshape(n, n_out).all(axis=1)


jacrev_points = jacrev_batch


def _jvp(prog, consts, X, P, V) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, nd, n_out = X.shape[0], V.shape[1], int(prog[N_OUTPUTS])
    if nd == 0:  # no directions: values only
        Y, ok = _values(prog, consts, X, P)
        return Y, np.empty((n, n_out, 0)), ok
    XV, PV = _pairs(X, P, V)
    Z, ok = _run_derived(prog, consts, "jvp", XV, PV)
    Z = Z.reshape(n, nd, 2 * n_out)
    return Z[:, 0, :n_out], Z[:, :, n_out:].transpose(0, 2, 1), ok.reshape(n, nd).all(axis=1)


def jvp_point(prog, consts, x, P, V, y, TY):
    Y, T, ok = _jvp(prog, consts, x.reshape(1, -1), P, V.reshape(1, *V.shape))
    y[:] = Y[0]
    TY[:] = T[0]
    return 0 if ok[0] else 1


def jvp_batch(prog, consts, X, P, V, Y, TY, valid, chunk, t, nt):
    if t:
        return
    Y[:], TY[:], valid[:] = _jvp(prog, consts, X, P, V)


def _hvp(prog, consts, X, P, V):
    n, nd, n_in = X.shape[0], V.shape[1], int(prog[N_INPUTS])
    if nd == 0:  # no directions: the value and gradient only
        Z, ok = _run_derived(prog, consts, "vg", X, P)
        return Z[:, 0], Z[:, 1:], np.empty((n, 0, n_in)), ok
    XV, PV = _pairs(X, P, V)
    Z, ok = _run_derived(prog, consts, "hvp", XV, PV)
    Z = Z.reshape(n, nd, 1 + 2 * n_in)
    return Z[:, 0, 0], Z[:, 0, 1 : 1 + n_in], Z[:, :, 1 + n_in :], ok.reshape(n, nd).all(axis=1)


def hvp_point(prog, consts, x, P, V, g, HV, WS):
    _, G, H, ok = _hvp(prog, consts, x.reshape(1, -1), P, V.reshape(1, *V.shape))
    g[:] = G[0]
    HV[:] = H[0]
    return 0 if ok[0] else 1


def hvp_batch(prog, consts, X, P, V, Y, G, HV, valid, chunk, t, nt):
    if t:
        return
    y, G[:], HV[:], valid[:] = _hvp(prog, consts, X, P, V)
    Y[:, 0] = y


def reverse_plan(prog):
    """No plan: this tier's reverse sweeps are tapes of their own (``None`` is never kept
    as a tape's plan)."""
    return None


def ensure_family_routines(codes, sweeps) -> None:
    """Nothing to compile: families run on their numpy references here."""


#: The entry points this tier provides, by the optimised kernels' names.
ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "forward_point": forward_point, "forward_batch": forward_batch,
    "forward_points": forward_points, "value_grad_point": value_grad_point,
    "value_grad_scalar": value_grad_scalar, "forward_scalar": forward_scalar,
    "vjp_batch": vjp_batch, "vjp_points": vjp_points, "jacrev_batch": jacrev_batch,
    "jacrev_points": jacrev_points,
    "jvp_point": jvp_point, "jvp_batch": jvp_batch, "hvp_point": hvp_point,
    "hvp_batch": hvp_batch, "reverse_plan": reverse_plan,
    "ensure_family_routines": ensure_family_routines,
}
#: Entry points that run a tape's forward program (slot-compacted for the optimised
#: kernels; the generic tier runs the tape's own).
FORWARD_PROGRAM = ("forward_point", "forward_batch", "forward_points", "jvp_point",
                   "jvp_batch")
#: Entry points run by ``run_batch``: their last three arguments are ``chunk, t, nt``.
BATCHED = frozenset({"forward_batch", "forward_points", "vjp_batch", "vjp_points",
                     "jacrev_batch", "jacrev_points", "jvp_batch", "hvp_batch"})
