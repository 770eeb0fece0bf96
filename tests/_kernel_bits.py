"""Random programs over every op, and their results in every sweep, for bit comparisons.

The programs are built directly from instruction arrays (not recorded), so they use every
opcode, scalar and block instructions, contiguous, broadcast and strided operands,
constants and parameters as operands, and results read by several later instructions.
``tests/data/kernel_bits.npz`` holds such programs together with the results the kernels
of an earlier tapejit computed for them; ``test_kernel_bits.py`` checks that today's
kernels give the same bits. Regenerate the fixture (only when a change of results is
intended and understood) with::

    python tests/_kernel_bits.py tests/data/kernel_bits.npz

When only some ops' implementations changed (tapejit's own ``exp`` instead of libm's),
recompute only the programs that use them, keeping every other program's stored bits::

    python tests/_kernel_bits.py tests/data/kernel_bits.npz --ops exp,tanh

When ops were added to the table, append programs that use them (one for each op no
stored program uses), keeping every stored program and its bits::

    python tests/_kernel_bits.py tests/data/kernel_bits.npz --add-uncovered
"""

from __future__ import annotations

import sys

import numpy as np

import tapejit
from tapejit import OPS
from tapejit._ops import ZERO_DERIVATIVE

N_CONSTS, N_PARAMS, N_INPUTS = 3, 1, 3
N_POINTS = 23  # batched calls: more than one chunk for small tapes is not needed here
SIZES = (1, 1, 1, 2, 3, 5, 9)
#: Ops with nonzero derivatives, drawn more often so derivatives stay informative.
SMOOTH = tuple(op for op in OPS if ZERO_DERIVATIVE not in op.flags)


def random_program(rng: np.random.Generator, n_instr: int,
                   among: tuple = OPS) -> dict[str, np.ndarray]:
    """Arrays of a random program ending in one scalar output (a sum of several results),
    of ops drawn from ``among``."""
    smooth = SMOOTH if among is OPS else tuple(
        op for op in among if ZERO_DERIVATIVE not in op.flags) or among
    fixed = N_CONSTS + N_PARAMS + N_INPUTS
    n_slots = fixed
    ops, args, sizes, strides = [], [], [], []
    for _ in range(n_instr):
        pool = smooth if rng.random() < 0.8 else among
        op = pool[rng.integers(len(pool))]
        n = int(SIZES[rng.integers(len(SIZES))])
        a, s = [0, 0, 0], [0, 0, 0]
        for k in range(op.arity):
            kind = rng.integers(4)
            if kind == 0 or n == 1:  # broadcast (or scalar) operand: any earlier slot
                a[k], s[k] = int(rng.integers(n_slots)), 0
            elif kind == 3 and 2 * (n - 1) < n_slots:  # every other slot
                a[k], s[k] = int(rng.integers(n_slots - 2 * (n - 1))), 2
            elif n <= n_slots:  # contiguous, preferably recent results
                lo = max(0, n_slots - n - 12)
                a[k], s[k] = int(rng.integers(lo, n_slots - n + 1)), 1
            else:
                a[k], s[k] = int(rng.integers(n_slots)), 0
        ops.append(op.code)
        args.append(a)
        sizes.append(n)
        strides.append(s)
        n_slots += n
    # one output: the sum of the last few results, so most instructions are live
    add = next(op.code for op in OPS if op.name == "add")
    picks = rng.choice(np.arange(fixed, n_slots), size=min(6, n_slots - fixed), replace=False)
    acc = int(picks[0])
    for p in picks[1:]:
        ops.append(add)
        args.append([acc, int(p), 0])
        sizes.append(1)
        strides.append([0, 0, 0])
        acc = n_slots
        n_slots += 1
    consts = rng.uniform(-2.0, 2.0, N_CONSTS)
    consts[0] = 0.5
    return {
        "opcodes": np.array(ops, dtype=np.int64),
        "args": np.array(args, dtype=np.int64).reshape(-1, 3),
        "sizes": np.array(sizes, dtype=np.int64),
        "strides": np.array(strides, dtype=np.int64).reshape(-1, 3),
        "consts": consts,
        "outputs": np.array([acc], dtype=np.int64),
    }


def tape_of(prog: dict[str, np.ndarray]) -> tapejit.Tape:
    nc, npar = N_CONSTS, N_PARAMS
    return tapejit.Tape(
        prog["opcodes"], prog["args"], prog["consts"],
        nc + npar + np.arange(N_INPUTS), nc + np.arange(npar), prog["outputs"],
        sizes=prog["sizes"], strides=prog["strides"],
    )


def random_points(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"X": rng.uniform(0.2, 1.8, (N_POINTS, N_INPUTS)),
            "P": rng.uniform(0.2, 1.8, (1, N_PARAMS)),
            "V": rng.uniform(-1.0, 1.0, (N_POINTS, N_INPUTS)),
            "W": rng.uniform(-1.0, 1.0, (N_POINTS, 1))}


def results(tape: tapejit.Tape, points: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tape's results in every kind of call, at the given points."""
    X, P, V = points["X"], points["P"], points["V"]
    x, v, p = X[0], V[0], P[0]
    out: dict[str, np.ndarray] = {}
    with np.errstate(all="ignore"):
        out["forward1"] = np.asarray(tape.forward(x, p))
        out["forward"] = tape.forward(X, p)
        out["value_grad1"] = np.concatenate(
            [np.atleast_1d(r) for r in tape.value_and_grad(x, p)])
        value, grad = tape.value_and_grad(X, p)
        out["value_grad"] = np.column_stack([value, grad])
        out["vjp"] = np.column_stack(tape.vjp(X, points["W"], p))
        out["jvp1"] = np.asarray(tape.jvp(x, v, p))
        out["jvp"] = tape.jvp(X, V, p)
        out["jacobian_fwd1"] = tape.jacobian(x, p, mode="forward")
        out["jacobian_rev1"] = tape.jacobian(x, p, mode="reverse")
        out["jacobian"] = tape.jacobian(X, p)
        out["hvp1"] = tape.hvp(x, v, p)
        out["hvp"] = tape.hvp(X, V, p)
        out["hessian1"] = tape.hessian(x, p)
        out["hessian"] = tape.hessian(X[:5], p)
        out["params"] = tape.value_and_grad(X, P.repeat(N_POINTS, 0))[1]
    return out


def build(n_programs: int = 60, seed: int = 20261205) -> dict[str, np.ndarray]:
    """Programs and results, flattened into one dict of arrays (an ``.npz``)."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for i in range(n_programs):
        prog = random_program(rng, int(rng.integers(4, 40)))
        for k, a in prog.items():
            data[f"{i}/prog/{k}"] = a
        points = random_points(rng)
        for k, a in points.items():
            data[f"{i}/in/{k}"] = a
        for k, a in results(tape_of(prog), points).items():
            data[f"{i}/out/{k}"] = a
    return data


def programs(data) -> list[tuple[int, dict[str, dict[str, np.ndarray]]]]:
    """``(index, {"prog": ..., "in": ..., "out": ...})`` of each program in a fixture."""
    grouped: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for key in data.files:
        i, part, name = key.split("/")
        grouped.setdefault(int(i), {}).setdefault(part, {})[name] = data[key]
    return sorted(grouped.items())


def refresh(path: str, names: list[str]) -> list[int]:
    """Recompute, in the fixture at ``path``, the results of the programs that use one of
    the ops ``names``; returns their indices."""
    codes = {op.code for op in OPS if op.name in names}
    if len(codes) != len(set(names)):
        raise ValueError(f"unknown op among {names}")
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
        cases = programs(f)
    redone = []
    for i, case in cases:
        if codes & set(case["prog"]["opcodes"].tolist()):
            for k, a in results(tape_of(case["prog"]), case["in"]).items():
                data[f"{i}/out/{k}"] = a
            redone.append(i)
    np.savez_compressed(path, **data)
    return redone


def add_uncovered(path: str) -> list[str]:
    """Append to the fixture at ``path`` one random program for each op that no stored
    program uses (seeded by its opcode); returns those ops' names."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
        cases = programs(f)
    used = set(np.concatenate([c["prog"]["opcodes"] for _, c in cases]).tolist())
    index = max(i for i, _ in cases) + 1
    added = []
    for op in OPS:
        if op.code in used:
            continue
        rng = np.random.default_rng(op.code)
        prog = random_program(rng, int(rng.integers(4, 40)))
        while op.code not in prog["opcodes"].tolist():
            prog = random_program(rng, int(rng.integers(4, 40)))
        points = random_points(rng)
        for part, arrays in (("prog", prog), ("in", points),
                             ("out", results(tape_of(prog), points))):
            for k, a in arrays.items():
                data[f"{index}/{part}/{k}"] = a
        used |= set(prog["opcodes"].tolist())
        index += 1
        added.append(op.name)
    np.savez_compressed(path, **data)
    return added


if __name__ == "__main__":
    if sys.argv[2:3] == ["--add-uncovered"]:
        print("added programs for", add_uncovered(sys.argv[1]))
    elif sys.argv[2:3] == ["--ops"]:
        print("recomputed programs", refresh(sys.argv[1], sys.argv[3].split(",")))
    else:
        np.savez_compressed(sys.argv[1], **build())
