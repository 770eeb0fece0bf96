"""Optimization passes over a tape, and tape statistics.

:func:`optimize` runs any of three passes, in the order given, and returns a new valid
canonical :class:`~tapejit.Tape` (results numbered ``n_fixed + i``, operands strictly
earlier, parameter and input slots fixed; slots are renumbered after instructions are
removed):

``"fold"``
    Constant folding: an instruction whose operands are all constants (or results folded
    before it) becomes a constant. The values are computed by the tape's own Numba
    forward kernel on a tape of just those instructions, so they are bit for bit what
    evaluating the original tape computes (the op's numpy reference can differ from the
    kernels in the last bit for transcendental functions). Instructions whose result is
    checked by a guard are kept, so the guard still refers to a result slot. The
    recorder already folds while recording; this pass matters for hand-built or
    transformed tapes.
``"cse"``
    Common subexpression elimination by hash-consing ``(opcode, operands)`` in one
    forward pass. Constants with the same bits count as the same operand. The operands
    of ops that are commutative *bit for bit* are sorted first: ``add``, ``mul``,
    ``hypot``, ``logaddexp``, ``equal``, ``not_equal``. ``maximum`` and ``minimum`` are
    commutative but not bit for bit (``maximum(0.0, -0.0)`` is ``0.0``,
    ``maximum(-0.0, 0.0)`` is ``-0.0``), so their operand order is kept.
``"dce"``
    Dead code elimination: instructions that reach no output and no guard are removed,
    and so are constants no one reads.

Guarantees: every pass leaves the values of the outputs (and the guard decisions) bit for
bit as they were, with one IEEE caveat for CSE (when both operands of a commutative op
are NaN, which NaN payload propagates may change; the result is NaN either way).
Derivatives of fold and DCE are bit for bit unchanged. CSE merges nodes, so the adjoints
the merged copies received separately are summed before being multiplied by the local
partials: derivatives are the same numbers mathematically but may differ in the last
bits (``(a + b) * d`` against ``a * d + b * d``).

Not done (out of scope for now): slot compaction, i.e. reusing the slots of values that
are dead for later results, which would shrink the workspace (see ``stats()["peak_live"]``
for what it could reach), and algebraic simplification (``x * 1``, ``x + 0``), which is
not bit-exact in general (``-0.0 + 0.0``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._ops import BY_CODE, BY_NAME, OPS
from ._tape import Tape

#: Opcodes whose two operands may be swapped without changing a bit of the value or of
#: any derivative: IEEE addition and multiplication, and ops built symmetrically.
BIT_COMMUTATIVE = frozenset(
    BY_NAME[n].code for n in ("add", "mul", "hypot", "logaddexp", "equal", "not_equal")
)
PASSES = ("fold", "cse", "dce")

_ARITY = np.zeros(256, dtype=np.int64)
for _op in OPS:
    _ARITY[_op.code] = _op.arity


@dataclass(frozen=True)
class _Prog:
    """A tape's arrays (int64 / float64), the form the passes work on."""

    ops: np.ndarray  # (n,)
    args: np.ndarray  # (n, 3), unused columns 0
    consts: np.ndarray  # (nc,)
    n_par: int
    n_in: int
    outputs: np.ndarray
    guards: np.ndarray  # (g, 2)

    @property
    def nc(self) -> int:
        return len(self.consts)

    @property
    def n_fixed(self) -> int:
        return len(self.consts) + self.n_par + self.n_in

    @property
    def n_slots(self) -> int:
        return self.n_fixed + len(self.ops)

    def used(self) -> np.ndarray:
        """``(n, 3)`` mask of the operand columns each instruction reads."""
        return np.arange(3)[None, :] < _ARITY[self.ops][:, None]


def _unpack(tape: Tape) -> _Prog:
    return _Prog(
        ops=np.asarray(tape.opcodes, dtype=np.int64),
        args=np.asarray(tape.args, dtype=np.int64),
        consts=np.array(tape.consts, dtype=np.float64),
        n_par=tape.n_params,
        n_in=tape.n_inputs,
        outputs=np.asarray(tape.outputs, dtype=np.int64),
        guards=np.asarray(tape.guards, dtype=np.int64).reshape(-1, 2),
    )


def _pack(p: _Prog, like: Tape) -> Tape:
    nc = p.nc
    return Tape(
        p.ops, p.args, p.consts,
        nc + p.n_par + np.arange(p.n_in), nc + np.arange(p.n_par), p.outputs,
        input_shapes=like.input_shapes, output_shapes=like.output_shapes, name=like.name,
        guards=p.guards,
    )


def _relabel(p: _Prog, M: np.ndarray, keep: np.ndarray, consts: np.ndarray) -> _Prog:
    """Keep the instructions ``keep``; every old slot ``s`` now reads new slot ``M[s]``."""
    ops = p.ops[keep]
    used = p.used()[keep]
    args = np.where(used, M[p.args[keep]], 0)
    guards = p.guards.copy()
    guards[:, 0] = M[guards[:, 0]]
    return _Prog(ops, args, consts, p.n_par, p.n_in, M[p.outputs], guards)


def _result_map(p: _Prog, keep: np.ndarray, nc_new: int) -> np.ndarray:
    """Old slot -> new slot for the parameters, inputs and kept results (others -1)."""
    M = np.full(p.n_slots, -1, dtype=np.int64)
    shift = nc_new - p.nc
    M[p.nc : p.n_fixed] = np.arange(p.nc, p.n_fixed) + shift
    n_keep = int(np.count_nonzero(keep))
    M[p.n_fixed + np.flatnonzero(keep)] = p.n_fixed + shift + np.arange(n_keep)
    return M


# ---------------------------------------------------------------------------------------
# passes
# ---------------------------------------------------------------------------------------
def _fold(p: _Prog) -> _Prog:
    n, nc, nf = len(p.ops), p.nc, p.n_fixed
    if n == 0:
        return p
    guarded = set(p.guards[:, 0].tolist())
    is_const = [True] * nc + [False] * (p.n_par + p.n_in) + [False] * n
    fold = np.zeros(n, dtype=bool)
    ar = _ARITY[p.ops].tolist()
    args = p.args.tolist()
    for i in range(n):
        a = args[i]
        k = ar[i]
        if (
            is_const[a[0]]
            and (k < 2 or is_const[a[1]])
            and (k < 3 or is_const[a[2]])
            and nf + i not in guarded
        ):
            is_const[nf + i] = True
            fold[i] = True
    if not fold.any():
        return p
    idx = np.flatnonzero(fold)
    # A tape of just the folded instructions, evaluated by the kernels.
    sub = np.full(p.n_slots, 0, dtype=np.int64)
    sub[:nc] = np.arange(nc)
    sub[nf + idx] = nc + np.arange(len(idx))
    used = p.used()[idx]
    sub_args = np.where(used, sub[p.args[idx]], 0)
    sub_tape = Tape(
        p.ops[idx], sub_args, p.consts, np.zeros(0, np.int64), np.zeros(0, np.int64),
        nc + np.arange(len(idx)),
    )
    values = np.empty(len(idx))
    sub_tape.forward(np.zeros(0), out=values)
    # New constants, reusing pool entries with the same bits.
    pool = {b: k for k, b in reversed(list(enumerate(p.consts.view(np.int64).tolist())))}
    new_vals: list[float] = []
    const_slot = np.empty(len(idx), dtype=np.int64)
    for j, b in enumerate(values.view(np.int64).tolist()):
        k = pool.get(b)
        if k is None:
            k = pool[b] = nc + len(new_vals)
            new_vals.append(float(values[j]))
        const_slot[j] = k
    consts = np.concatenate([p.consts, np.array(new_vals, dtype=np.float64)])
    keep = ~fold
    M = _result_map(p, keep, len(consts))
    M[:nc] = np.arange(nc)
    M[nf + idx] = const_slot
    return _relabel(p, M, keep, consts)


def _const_reps(consts: np.ndarray) -> np.ndarray:
    """For each constant, the first constant with the same bits."""
    if len(consts) == 0:
        return np.zeros(0, dtype=np.int64)
    bits = consts.view(np.int64)
    _, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
    return first[inverse].astype(np.int64)


def _cse(p: _Prog) -> _Prog:
    n, nc, nf = len(p.ops), p.nc, p.n_fixed
    canon = list(range(p.n_slots))
    canon[:nc] = _const_reps(p.consts).tolist()
    seen: dict[tuple[int, int, int, int], int] = {}
    dup = np.zeros(n, dtype=bool)
    ops = p.ops.tolist()
    ar = _ARITY[p.ops].tolist()
    args = p.args.tolist()
    swap = BIT_COMMUTATIVE
    for i in range(n):
        a0, a1, a2 = args[i]
        k = ar[i]
        a0 = canon[a0]
        a1 = canon[a1] if k > 1 else 0
        a2 = canon[a2] if k > 2 else 0
        op = ops[i]
        if op in swap and a1 < a0:
            a0, a1 = a1, a0
        key = (op, a0, a1, a2)
        r = seen.get(key)
        if r is None:
            seen[key] = nf + i
        else:
            canon[nf + i] = r
            dup[i] = True
    canon_arr = np.array(canon, dtype=np.int64)
    if not dup.any() and np.array_equal(canon_arr[:nc], np.arange(nc)):
        return p
    keep = ~dup
    M = _result_map(p, keep, nc)
    M[:nc] = np.arange(nc)
    M = M[canon_arr]  # every slot reads its representative's new slot
    return _relabel(p, M, keep, p.consts)


def _live(p: _Prog) -> np.ndarray:
    """Which slots an output or a guard depends on."""
    live = np.zeros(p.n_slots, dtype=bool)
    live[p.outputs] = True
    live[p.guards[:, 0]] = True
    nf = p.n_fixed
    ar = _ARITY[p.ops].tolist()
    args = p.args.tolist()
    lv = live.tolist()
    for i in range(len(ar) - 1, -1, -1):
        if lv[nf + i]:
            a = args[i]
            k = ar[i]
            lv[a[0]] = True
            if k > 1:
                lv[a[1]] = True
                if k > 2:
                    lv[a[2]] = True
    return np.array(lv, dtype=bool)


def _dce(p: _Prog) -> _Prog:
    nc, nf = p.nc, p.n_fixed
    live = _live(p)
    keep = live[nf:]
    const_keep = live[:nc]
    if keep.all() and const_keep.all():
        return p
    nc_new = int(np.count_nonzero(const_keep))
    M = _result_map(p, keep, nc_new)
    M[np.flatnonzero(const_keep)] = np.arange(nc_new)
    return _relabel(p, M, keep, p.consts[const_keep])


_RUN = {"fold": _fold, "cse": _cse, "dce": _dce}


def optimize(
    tape: Tape, passes: Iterable[str] = PASSES, *, report: bool = False
) -> Tape | tuple[Tape, list[dict[str, Any]]]:
    """Run optimization passes on a tape; each leaves the output values bit for bit.

    Parameters
    ----------
    tape : Tape
    passes : iterable of {"fold", "cse", "dce"}
        Passes to run, in this order (a pass may be repeated). See the module docstring
        for what each does and guarantees.
    report : bool
        Also return one dict per pass run: ``pass``, ``instructions_before``,
        ``instructions_after``, ``consts_before``, ``consts_after``, ``seconds``.

    Returns
    -------
    Tape or (Tape, list of dict)
        A new tape with the same inputs, parameters, outputs, shapes, name and guards.

    Notes
    -----
    Slot compaction (reusing dead slots, which would shrink the workspace) is out of scope
    for now: the optimized tape still has one slot per constant, input, parameter and
    instruction.
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"optimize needs a tapejit.Tape; got {type(tape).__name__}")
    if isinstance(passes, str):
        passes = (passes,)
    names = list(passes)
    for name in names:
        if name not in _RUN:
            raise ValueError(f"unknown pass {name!r}; the passes are {', '.join(PASSES)}")
    p = _unpack(tape)
    log = []
    for name in names:
        t0 = time.perf_counter()
        q = _RUN[name](p)
        log.append({
            "pass": name,
            "instructions_before": len(p.ops),
            "instructions_after": len(q.ops),
            "consts_before": p.nc,
            "consts_after": q.nc,
            "seconds": time.perf_counter() - t0,
        })
        p = q
    out = _pack(p, tape)
    return (out, log) if report else out


# ---------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------
def _peak_live(p: _Prog) -> int:
    """Peak number of simultaneously live variable values (inputs, parameters, results)
    over a forward sweep: a value lives from its definition to its last use (outputs and
    guarded values to the end); an instruction's operands and result are live together."""
    n, nc, nf = len(p.ops), p.nc, p.n_fixed
    last = np.full(p.n_slots, -1, dtype=np.int64)
    if n:
        used = p.used()
        step = np.broadcast_to(np.arange(n)[:, None], (n, 3))
        np.maximum.at(last, p.args[used], step[used])
    last[p.outputs] = n
    last[p.guards[:, 0]] = n
    define = np.full(p.n_slots, -1, dtype=np.int64)
    define[nf:] = np.arange(n)
    var = slice(nc, p.n_slots)
    start = define[var] + 1  # steps -1..n shifted to 0..n+1
    end = np.maximum(define[var], last[var]) + 1
    diff = np.zeros(n + 3, dtype=np.int64)
    np.add.at(diff, start, 1)
    np.add.at(diff, end + 1, -1)
    return int(np.cumsum(diff).max(initial=0))


def stats(tape: Tape) -> dict[str, Any]:
    """Size and shape of a tape.

    Returns
    -------
    dict
        ``name``; counts ``n_instructions``, ``n_consts``, ``n_inputs``, ``n_params``,
        ``n_outputs``, ``n_guards``, ``n_slots``; ``op_counts`` (op name -> count, most
        frequent first); ``bytes`` (``program``: the packed int32 program, ``consts``,
        ``total``); ``workspace_bytes_per_point`` (one float64 per slot, a forward sweep's
        workspace); ``peak_live`` (most variable values alive at once in a forward sweep,
        from their last uses: the slots a slot-reusing allocator would need besides the
        constants); ``dead_instructions`` (instructions that reach no output or guard,
        which the ``"dce"`` pass removes).
    """
    p = _unpack(tape)
    counts = np.bincount(p.ops, minlength=256) if len(p.ops) else np.zeros(256, np.int64)
    order = np.argsort(-counts, kind="stable")
    op_counts = {BY_CODE[int(c)].name: int(counts[c]) for c in order if counts[c]}
    prog_bytes = int(tape._prog.nbytes)
    const_bytes = int(tape.consts.nbytes)
    return {
        "name": tape.name,
        "n_instructions": len(p.ops),
        "n_consts": p.nc,
        "n_inputs": p.n_in,
        "n_params": p.n_par,
        "n_outputs": len(p.outputs),
        "n_guards": len(p.guards),
        "n_slots": p.n_slots,
        "op_counts": op_counts,
        "bytes": {"program": prog_bytes, "consts": const_bytes,
                  "total": prog_bytes + const_bytes},
        "workspace_bytes_per_point": 8 * p.n_slots,
        "peak_live": _peak_live(p),
        "dead_instructions": int(len(p.ops) - np.count_nonzero(_live(p)[p.n_fixed:])),
    }


def format_stats(s: dict[str, Any]) -> str:
    """:func:`stats` as readable lines."""
    ops = ", ".join(f"{k} {v}" for k, v in s["op_counts"].items()) or "-"
    return "\n".join([
        f"instructions {s['n_instructions']}, constants {s['n_consts']}, inputs "
        f"{s['n_inputs']}, parameters {s['n_params']}, outputs {s['n_outputs']}, guards "
        f"{s['n_guards']}, slots {s['n_slots']}",
        f"ops: {ops}",
        f"memory: program {s['bytes']['program']} B, constants {s['bytes']['consts']} B; "
        f"workspace {s['workspace_bytes_per_point']} B per point",
        f"peak live values {s['peak_live']}; dead instructions {s['dead_instructions']}",
    ])


__all__ = ["BIT_COMMUTATIVE", "PASSES", "format_stats", "optimize", "stats"]
