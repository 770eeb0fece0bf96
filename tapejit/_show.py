"""Looking at a tape: the Wengert list at a point, and the computation graph as DOT.

Both are computed by a small pure-numpy interpreter driven by the op table (the same
``value`` and ``partials`` expressions the Numba kernels are generated from, evaluated
with numpy scalars), so they serve as an independent check on the kernels: the tests
compare the interpreter's values, tangents and adjoints with :meth:`Tape.forward`,
:meth:`Tape.jvp` and :meth:`Tape.gradient`. It follows the kernels' NaN policy: a
product of a tangent or adjoint and a local partial is zero when either is zero.

An instruction family's instruction (a matrix product, a factorization: opcodes from
128) is one step: its values come from the family's numpy rule (``Family.reference``);
its tangents and adjoints from the family's kernel rules run on that one instruction
(a one-instruction tape's ``jvp`` and ``vjp``), as the reference gives values only. The
table shows it as one row, the graph as one node, with its attributes and its operand
and result lengths.

The interpreter runs one Python step per instruction (a few microseconds each): meant
for looking at tapes, not for evaluating them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._atomic import replacing
from ._kernels.reference import LIBM_NUMPY as _LIBM_NUMPY
from ._kernels.reference import reference_namespace
from ._ops import BY_CODE, OPS, Op, math_to_numpy
from ._program import FAMILIES, FIRST_FAMILY, MAX_ARITY, Family, Program, Subprogram

if TYPE_CHECKING:  # in annotations only: _tape imports this module's functions
    from ._tape import Tape

_ZERO = ("0.0", "0")
_MATH_TO_NP = math_to_numpy()


class _NumpyMath:
    """``math`` with numpy's scalar functions: inf and NaN instead of exceptions."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(np, _MATH_TO_NP.get(name, name), None)
        if fn is None:
            raise AttributeError(f"math.{name} has no numpy equivalent for the interpreter")
        return fn


_NS = reference_namespace(_NumpyMath())
_AZMUL: Callable[[Any, Any], Any] = _NS["_azmul"]


@dataclass(frozen=True)
class _Compiled:
    op: Op
    value: Any
    partials: tuple[Any, ...]  # None where the partial is identically 0
    unit: tuple[bool, ...]  # the partial is the constant 1.0 or -1.0


def _compile_ops() -> dict[int, _Compiled]:
    out = {}
    for op in OPS:
        parts = tuple(
            None if p in _ZERO else compile(p, f"<{op.name}.d{k}>", "eval")
            for k, p in enumerate(op.partials)
        )
        unit = tuple(p in ("1.0", "-1.0") for p in op.partials)
        out[op.code] = _Compiled(op, compile(op.value, f"<{op.name}>", "eval"), parts, unit)
    return out


_OPS = _compile_ops()


@dataclass
class Sweep:
    """Every slot's value, tangent and adjoint at one point (see :func:`interpret`).

    Attributes
    ----------
    values, tangents, adjoints : ndarray
        ``(n_slots,)``. Tangents are ``d v / d x[wrt]``; adjoints ``d y[output] / d v``
        (parameters get theirs too; constants 0).
    partials : ndarray
        ``(n_elements, 3)``: local partial of each instruction element (result slot
        ``n_fixed + i`` for row ``i``) with respect to each operand (0 if unused, and for
        the elements of family instructions, whose local derivatives are matrices).
    """

    values: np.ndarray
    tangents: np.ndarray
    adjoints: np.ndarray
    partials: np.ndarray


def _point(tape: Tape, x: Any, params: Any) -> tuple[np.ndarray, np.ndarray]:
    xv = np.asarray(x, dtype=np.float64).reshape(-1)
    if xv.shape != (tape.n_inputs,):
        raise ValueError(f"x must hold {tape.n_inputs} values (one point); got {xv.size}")
    if params is None:
        if tape.n_params:
            raise ValueError(f"this tape has {tape.n_params} parameters: pass params=")
        pv = np.zeros(0)
    else:
        pv = np.asarray(params, dtype=np.float64).reshape(-1)
        if pv.shape != (tape.n_params,):
            raise ValueError(f"params must hold {tape.n_params} values; got {pv.size}")
    return xv, pv


@dataclass(frozen=True)
class _FamilyStep:
    """One family instruction as the interpreter runs it."""

    family: Family
    attrs: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]  # (first slot, length) of each operand
    result: int
    size: int
    body: Program | None = None  # a loop's: its values come from the kernels

    def operands(self, V: list[Any]) -> list[np.ndarray]:
        """The operand blocks' entries of ``V`` (empty for unused operands)."""
        out = [np.array(V[a : a + n], dtype=np.float64) for a, n in self.blocks]
        return out + [np.zeros(0)] * (MAX_ARITY - len(out))

    def value(self, W: list[Any]) -> np.ndarray:
        if self.body is not None:  # a family reference does not see a loop's body
            return np.asarray(self.alone().forward(_point_of(self, W)),
                              np.float64).reshape(self.size)
        assert self.family.reference is not None  # a family the kernels run has one
        r = np.asarray(self.family.reference(self.attrs, *self.operands(W)), np.float64)
        return r.reshape(self.size)

    def alone(self) -> Tape:
        """This instruction as a tape of its own: the operand blocks, one after the
        other, are its inputs; its results the outputs."""
        return instruction_tape(self.family, self.attrs, [n for _, n in self.blocks],
                                self.size, self.body)

    def label(self, name: Callable[[int], str]) -> str:
        """``matmul[m=5, ...](p0..p14 [15], x0..x2 [3]) -> [5]``."""
        at = ", ".join(f"{k}={v}" for k, v in zip(self.family.attrs, self.attrs, strict=True))
        ops = ", ".join(_range(name, a, n) + f" [{n}]" for a, n in self.blocks)
        return f"{self.family.name}[{at}]({ops}) -> [{self.size}]"


def instruction_tape(family: Family, attrs: tuple[int, ...], lengths: list[int], size: int,
                     body: Program | None = None) -> Tape:
    """One family instruction as a tape of its own: operand blocks of ``lengths``, one
    after the other, are its inputs; its ``size`` results the outputs. A loop's ``body``
    becomes its one sub-program (its constants the pool, its attribute 0), so the
    kernels can evaluate the instruction where a family reference cannot."""
    from ._tape import Tape  # lazy: _tape imports this module's functions

    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    k = len(lengths)
    values = np.array(attrs, dtype=np.int64)
    consts, subs = np.zeros(0), ()
    if body is not None:
        consts, subs = body.consts, (Subprogram(body, 0),)
        values[family.attrs.index(family.bodies[0])] = 0
    nc = len(consts)
    args = np.zeros((1, MAX_ARITY), np.int64)
    strides = np.zeros((1, MAX_ARITY), np.int64)
    args[0, :k] = np.where(np.array(lengths) > 0, starts + nc, 0)
    strides[0, :k] = lengths
    n_in = int(sum(lengths))
    return Tape(np.array([family.opcode]), args, consts, nc + np.arange(n_in),
                np.zeros(0, np.int64), nc + n_in + np.arange(size), sizes=np.array([size]),
                strides=strides, attrs=values, attr_offsets=np.zeros(1, np.int64),
                subprograms=subs)


def _range(name: Callable[[int], str], a: int, n: int) -> str:
    if n == 0:
        return "[]"
    return name(a) if n == 1 else f"{name(a)}..{name(a + n - 1)}"


def _family_steps(prog: Program) -> dict[int, _FamilyStep]:
    """The family instructions of ``prog``, by their first result slot."""
    out = {}
    at = prog.attr_offsets
    for i in np.flatnonzero(prog.opcodes >= FIRST_FAMILY).tolist():
        family = FAMILIES[int(prog.opcodes[i])]
        blocks = tuple((int(prog.args[i, k]), int(prog.strides[i, k]))
                       for k in range(family.arity))
        attrs = tuple(prog.attrs[at[i] : at[i] + len(family.attrs)].tolist())
        r = int(prog.results[i])
        body = (prog.subprograms[attrs[family.attrs.index(family.bodies[0])]].program
                if family.bodies else None)
        out[r] = _FamilyStep(family, attrs, blocks, r, int(prog.sizes[i]), body)
    return out


def interpret(tape: Tape, x: Any, params: Any = None, wrt: int = 0, output: int = 0) -> Sweep:
    """Values, forward tangents and reverse adjoints of every slot at one point.

    Parameters
    ----------
    tape : Tape
    x : array_like
        One point, ``n_inputs`` values.
    params : array_like, optional
        ``n_params`` values.
    wrt : int
        Input whose tangent is propagated (forward mode).
    output : int
        Output whose adjoints are propagated (reverse mode).

    Returns
    -------
    Sweep
    """
    xv, pv = _point(tape, x, params)
    if tape.n_inputs and not 0 <= wrt < tape.n_inputs:
        raise ValueError(f"wrt must be an input index in 0..{tape.n_inputs - 1}; got {wrt}")
    if tape.n_outputs and not 0 <= output < tape.n_outputs:
        raise ValueError(f"output must be in 0..{tape.n_outputs - 1}; got {output}")
    nc = len(tape.consts)
    n_fixed = nc + tape.n_params + tape.n_inputs
    W = np.zeros(tape.n_slots)
    W[:nc] = tape.consts
    W[tape.params] = pv
    W[tape.inputs] = xv
    T = np.zeros(tape.n_slots)
    if tape.n_inputs:
        T[tape.inputs[wrt]] = 1.0
    # one step per element (a block instruction is its elements in order)
    prog = Program.from_tape(tape)
    inst, _, slots = prog.elements()
    ops = prog.opcodes[inst].tolist()
    args = slots.tolist()
    n = len(ops)
    D = np.zeros((n, MAX_ARITY))
    Wl = [np.float64(v) for v in W]  # numpy scalars: IEEE results instead of exceptions
    Tl = T.tolist()
    ns = dict(_NS)
    steps = _family_steps(prog)
    alone: dict[int, Tape] = {}
    with np.errstate(all="ignore"):
        for i in range(n):
            if ops[i] >= FIRST_FAMILY:  # the whole instruction at its first element
                st = steps.get(n_fixed + i)
                if st is not None:
                    _family_forward(st, Wl, Tl, alone)
                continue
            c = _OPS[ops[i]]
            ar = args[i]
            ns["a"], ns["b"], ns["c"] = Wl[ar[0]], Wl[ar[1]], Wl[ar[2]]
            r = np.float64(eval(c.value, ns))
            ns["r"] = r
            Wl[n_fixed + i] = r
            t = None
            for k, p in enumerate(c.partials):
                if p is not None:
                    d = float(eval(p, ns))
                    D[i, k] = d
                    # as the kernels: +-T for the partials 1.0 and -1.0, else azmul(d, T)
                    term = Tl[ar[k]] * d if c.unit[k] else _AZMUL(d, Tl[ar[k]])
                    t = term if t is None else t + term
            Tl[n_fixed + i] = 0.0 if t is None else t
        A = [0.0] * tape.n_slots
        if tape.n_outputs:
            A[int(tape.outputs[output])] = 1.0
        low = nc  # constants get no adjoints
        for i in range(n - 1, -1, -1):
            if ops[i] >= FIRST_FAMILY:  # all its results' adjoints are complete here
                st = steps.get(n_fixed + i)
                if st is not None:
                    _family_reverse(st, Wl, A, low, alone)
                continue
            abar = A[n_fixed + i]
            if abar == 0.0:
                continue
            ar = args[i]
            for k, p in enumerate(_OPS[ops[i]].partials):
                if p is not None and ar[k] >= low:
                    A[ar[k]] += _AZMUL(abar, float(D[i, k]))
    return Sweep(np.array(Wl, dtype=np.float64), np.array(Tl), np.array(A), D)


def _point_of(st: _FamilyStep, V: list[Any]) -> np.ndarray:
    return np.concatenate([o for o in st.operands(V)[: st.family.arity]] or [np.zeros(0)])


def _family_forward(st: _FamilyStep, W: list[Any], T: list[float],
                    alone: dict[int, Tape]) -> None:
    """Values (numpy rule) and tangents (kernel rule) of a family instruction."""
    r, n = st.result, st.size
    W[r : r + n] = [np.float64(v) for v in st.value(W)]
    x, v = _point_of(st, W), _point_of(st, T)
    if not v.any():
        T[r : r + n] = [0.0] * n
        return
    one = alone.setdefault(r, st.alone())
    T[r : r + n] = np.asarray(one.jvp(x, v), dtype=np.float64).reshape(n).tolist()


def _family_reverse(st: _FamilyStep, W: list[Any], A: list[float], low: int,
                    alone: dict[int, Tape]) -> None:
    """Add a family instruction's vector-Jacobian product into its operands' adjoints
    (those of slots ``>= low``)."""
    r, n = st.result, st.size
    w = np.array(A[r : r + n], dtype=np.float64)
    if not w.any():
        return
    one = alone.setdefault(r, st.alone())
    g = np.asarray(one.vjp(_point_of(st, W), w)[1], dtype=np.float64).tolist()
    at = 0
    for a, length in st.blocks:
        for e in range(length):
            if a + e >= low:
                A[a + e] += g[at + e]
        at += length


# ---------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------
class SlotNames:
    """Slot names, one scheme for every view of a tape: ``"listing"`` (x0.., p0.., v0..;
    constants by value), used by :meth:`Tape.listing`, tables, graphs and the demo, or
    ``"wengert"`` as in Griewank's tables and the seed article (inputs v-1, v0 for two
    inputs, instructions v1, v2, ...), which a table asks for by name."""

    def __init__(self, tape: Tape, style: str) -> None:
        if style not in ("listing", "wengert"):
            raise ValueError(f"style must be 'listing' or 'wengert'; got {style!r}")
        self.nc = len(tape.consts)
        self.n_par = tape.n_params
        self.n_in = tape.n_inputs
        self.n_fixed = self.nc + self.n_par + self.n_in
        self.consts = tape.consts
        self.wengert = style == "wengert"

    def __call__(self, s: int) -> str:
        if s < self.nc:
            return repr(float(self.consts[s]))
        if s < self.nc + self.n_par:
            return f"p{s - self.nc}"
        if s < self.n_fixed:
            j = s - self.nc - self.n_par
            return f"v{j + 1 - self.n_in}" if self.wengert else f"x{j}"
        i = s - self.n_fixed
        return f"v{i + 1}" if self.wengert else f"v{i}"

    def input(self, j: int) -> str:
        return self(self.nc + self.n_par + j)


def _elements(tape: Tape) -> tuple[list[int], list[list[int]], list[int]]:
    """Opcode, operand slots and result slot of every instruction element (a block
    instruction contributes one per element)."""
    prog = Program.from_tape(tape)
    inst, _, slots = prog.elements()
    results = prog.n_fixed + np.arange(len(inst))
    return prog.opcodes[inst].tolist(), slots.tolist(), results.tolist()


def _fmt(v: float, digits: int) -> str:
    return f"{float(v):.{digits}g}"


def _fmt_vector(v: np.ndarray, digits: int, most: int = 4) -> str:
    """``[1, 2, 3]``, or ``[1, 2, ..., 9]`` for more than ``most`` entries."""
    parts = [_fmt(x, digits) for x in (v if len(v) <= most else v[: most - 1])]
    if len(v) > most:
        parts += ["...", _fmt(v[-1], digits)]
    return "[" + ", ".join(parts) + "]"


def _instr_text(op: Op, operands: list[str]) -> str:
    return f"{op.name}({', '.join(operands)})"


# ---------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------
def table(
    tape: Tape,
    x: Any,
    params: Any = None,
    wrt: int | None = None,
    *,
    output: int = 0,
    limit: int | None = None,
    digits: int = 6,
    style: str = "listing",
) -> str:
    """The Wengert list at one point: one row per node with its value, tangent and adjoint.

    Parameters
    ----------
    tape : Tape
    x : array_like
        One point, ``n_inputs`` values.
    params : array_like, optional
        ``n_params`` values, if the tape has parameters.
    wrt : int, optional
        Input of the forward tangent column ``d v / d x[wrt]`` (default 0).
    output : int
        Output of the adjoint column ``d y[output] / d v`` (reverse mode).
    limit : int, optional
        Show at most this many instruction rows (the output rows are always shown). A
        block instruction has one row per element; a family instruction (a matrix
        product, a factorization) one row, its results' values as a vector.
    digits : int
        Significant digits of the numbers.
    style : {"listing", "wengert"}
        Node names: as :meth:`Tape.listing` (inputs ``x0, x1``, instructions
        ``v0, v1, ...``) or as in the textbook tables (inputs ``v-1, v0``, instructions
        ``v1, v2, ...``).

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> from tapejit._show import table
    >>> tape = tapejit.record(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
    >>> print(table(tape, [2.0, 5.0], digits=4))
    Wengert list of '<lambda>' at x = [2, 5]
    tangent = d(node)/d(x0) (forward mode, input 0), adjoint = d(y0)/d(node) (reverse mode)
    node  operation    value    tangent  adjoint
    ----  -----------  -------  -------  -------
    x0    input        2        1        5.5
    x1    input        5        0        1.716
    v0    log(x0)      0.6931   0.5      1
    v1    mul(x0, x1)  10       5        1
    v2    add(v0, v1)  10.69    5.5      1
    v3    sin(x1)      -0.9589  0        -1
    v4    sub(v2, v3)  11.65    5.5      1        = y0
    """
    wrt = 0 if wrt is None else int(wrt)
    sw = interpret(tape, x, params, wrt, output)
    name = SlotNames(tape, style)
    xv, pv = _point(tape, x, params)
    outs: dict[int, list[int]] = {}
    for k, s in enumerate(tape.outputs.tolist()):
        outs.setdefault(s, []).append(k)
    guards = {int(s): int(o) for s, o in tape.guards.tolist()} if tape.n_guards else {}

    def row(s: int, what: str, size: int = 0) -> list[str]:
        """Slot ``s``'s row; with ``size``, the row of the ``size`` results from ``s``
        of a family instruction."""
        notes = []
        for t in range(s, s + max(size, 1)):
            if t in outs:
                notes.append("= " + ", ".join(f"y{k}" for k in outs[t]))
            if t in guards:
                holds = (sw.values[t] != 0.0) == bool(guards[t])
                notes.append(f"guard {bool(guards[t])}: "
                             + ("holds" if holds else "FAILS here"))
        if size:
            cols = [_fmt_vector(v[s : s + size], digits)
                    for v in (sw.values, sw.tangents, sw.adjoints)]
            return [_range(name, s, size), what, *cols, "; ".join(notes)]
        return [name(s), what, _fmt(sw.values[s], digits), _fmt(sw.tangents[s], digits),
                _fmt(sw.adjoints[s], digits), "; ".join(notes)]

    rows = []
    for j in range(tape.n_params):
        rows.append(row(len(tape.consts) + j, "parameter"))
    for j in range(tape.n_inputs):
        rows.append(row(int(tape.inputs[j]), "input"))
    ops, args, res = _elements(tape)
    steps = _family_steps(Program.from_tape(tape))
    firsts = [i for i in range(len(ops)) if ops[i] < FIRST_FAMILY or res[i] in steps]
    n = len(firsts)  # rows: elements, and one per family instruction
    shown = n if limit is None else max(0, min(n, int(limit)))
    for j, i in enumerate(firsts):
        if j == shown:
            rows.append(["...", f"{n - shown} more", "", "", "", ""])
        st = steps.get(res[i])
        size = st.size if st is not None else 1
        if j >= shown and not any(res[i] + e in outs for e in range(size)):
            continue
        if st is not None:
            rows.append(row(res[i], st.label(name), st.size))
            continue
        op = BY_CODE[ops[i]]
        rows.append(row(res[i], _instr_text(op, [name(a) for a in args[i][: op.arity]])))
    header = ["node", "operation", "value", "tangent", "adjoint", ""]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(5)]
    lines = [
        f"Wengert list of {tape.name!r} at x = [{', '.join(_fmt(v, digits) for v in xv)}]"
        + (f", params = [{', '.join(_fmt(v, digits) for v in pv)}]" if tape.n_params else ""),
        f"tangent = d(node)/d({name.input(wrt) if tape.n_inputs else '-'}) (forward mode, "
        f"input {wrt}), "
        f"adjoint = d(y{output})/d(node) (reverse mode)",
    ]
    for r in [header, ["-" * w for w in widths] + [""], *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True))
                     + ("  " + r[5] if r[5] else ""))
    for k, s in enumerate(tape.outputs.tolist()):
        if s < len(tape.consts):  # no row of its own
            lines.append(f"y{k} = {name(s)} (a constant)")
    return "\n".join(line.rstrip() for line in lines)


# ---------------------------------------------------------------------------------------
# DOT
# ---------------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A DOT double-quoted string (``\\n`` in ``text`` stays a DOT line break)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _symbolic(expr: str) -> str:
    """A partial's expression, readable: ``math.cos(a)`` or ``_cos(a)`` -> ``cos(a)``."""
    for name in _LIBM_NUMPY:
        expr = re.sub(rf"\b{name}\(", f"{name[1:]}(", expr)
    return expr.replace("math.", "").replace("np.", "")


def to_dot(tape: Tape, x: Any = None, params: Any = None, *, digits: int = 4) -> str:
    """Graphviz DOT source of the computation graph.

    Nodes are the inputs, parameters, constants in use and instructions (labelled with
    the node name, the op name and, when ``x`` is given, the value at ``x``); an edge goes
    from each operand to the instruction that reads it and is labelled with the local
    partial derivative: its value at ``x``, or its formula (in the operands ``a, b, c``
    and the result ``r``) without ``x``. Outputs are drawn as extra nodes ``y0, y1, ...``.

    A family instruction (a matrix product, a factorization) is one box node with its
    attributes and operand and result lengths; its edges are labelled with the operand
    (``a``, ``b``, ``c``), and an operand block of constants or parameters (a data
    matrix) is drawn as one node.

    Parameters
    ----------
    tape : Tape
    x : array_like, optional
        A point, ``n_inputs`` values.
    params : array_like, optional
    digits : int
        Significant digits of the numbers.

    Returns
    -------
    str
        ``digraph`` source; see :func:`render`.
    """
    sw = None if x is None else interpret(tape, x, params)
    name = SlotNames(tape, "listing")
    nc = len(tape.consts)
    ops, args, res = _elements(tape)
    steps = _family_steps(Program.from_tape(tape))
    owner = {s: r for r, st in steps.items() for s in range(r, r + st.size)}
    nd = nc + tape.n_params
    # operand blocks of constants and parameters only (data): one node each
    data = {(a, n) for st in steps.values() for a, n in st.blocks if n > 1 and a + n <= nd}
    elementwise = [i for i in range(len(ops)) if ops[i] < FIRST_FAMILY]

    def node_id(s: int) -> str:
        if s in owner:
            return name(owner[s])
        return f"c{s}" if s < nc else name(s)

    def val(s: int) -> str:
        return "" if sw is None else "\n" + _fmt(sw.values[s], digits)

    title = tape.name or "tape"
    lines = [f"digraph {_q(title)} {{", "  rankdir=BT;",
             '  node [fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=10];']
    family_reads = {a + e for st in steps.values() for a, n in st.blocks
                    if (a, n) not in data for e in range(n)}
    used_consts = sorted({a for i in elementwise for a in args[i][: BY_CODE[ops[i]].arity]
                          if a < nc}
                         | {s for s in tape.outputs.tolist() if s < nc}
                         | {s for s in family_reads if s < nc})
    for s in used_consts:
        lines.append(f"  {node_id(s)} [label={_q(_fmt(tape.consts[s], digits))}, "
                     "shape=plaintext];")
    in_data = {a + e for a, n in data for e in range(n)}
    read = ({a for i in elementwise for a in args[i][: BY_CODE[ops[i]].arity]}
            | family_reads | set(tape.outputs.tolist()))
    for j in range(tape.n_params):
        s = nc + j
        if s in in_data and s not in read:  # drawn as part of its data block
            continue
        lines.append(f"  {node_id(s)} [label={_q(name(s) + val(s))}, shape=box, "
                     "style=dashed];")
    for a, n in sorted(data):
        lines.append(f"  {_block_id(a, n)} [label={_q(_range(name, a, n) + f' [{n}]')}, "
                     "shape=box3d];")
    for s in tape.inputs.tolist():
        lines.append(f"  {node_id(s)} [label={_q(name(s) + val(s))}, shape=box];")
    guards = {int(s): int(o) for s, o in tape.guards.tolist()} if tape.n_guards else {}
    for r, st in steps.items():
        label = f"{_range(name, r, st.size)} = {st.label(name)}"
        if sw is not None:
            label += "\n" + _fmt_vector(sw.values[r : r + st.size], digits)
        lines.append(f"  {node_id(r)} [label={_q(label)}, shape=box, style=rounded];")
        for k, (a, n) in enumerate(st.blocks):
            if (a, n) in data:
                sources = [_block_id(a, n)]
            else:
                sources = list(dict.fromkeys(node_id(t) for t in range(a, a + n)))
            for src in sources:
                lines.append(f"  {src} -> {node_id(r)} [label={_q('abc'[k])}];")
    for i in elementwise:
        s = res[i]
        op = BY_CODE[ops[i]]
        label = f"{name(s)} = {op.name}" + val(s)
        extra = ""
        if s in guards:
            label += f"\nguard: {bool(guards[s])}"
            extra = ", style=bold, color=red"
        lines.append(f"  {node_id(s)} [label={_q(label)}, shape=ellipse{extra}];")
    for i in elementwise:
        s = res[i]
        op = BY_CODE[ops[i]]
        for k in range(op.arity):
            a = args[i][k]
            if sw is None:
                lab = _symbolic(op.partials[k])
            else:
                lab = _fmt(sw.partials[i, k], digits)
            lines.append(f"  {node_id(a)} -> {node_id(s)} [label={_q(lab)}];")
    for k, s in enumerate(tape.outputs.tolist()):
        lines.append(f"  y{k} [label={_q(f'y{k}')}, shape=doublecircle];")
        lines.append(f"  {node_id(s)} -> y{k};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _block_id(a: int, n: int) -> str:
    """DOT node of the data block of ``n`` slots from ``a``."""
    return f"block{a}_{n}"


_FORMATS = {"svg", "png", "pdf", "ps", "eps", "gif", "jpg", "jpeg", "json", "dot", "plain"}


def render(dot: str, path: str | os.PathLike[str]) -> str:
    """Render DOT source to a file with Graphviz's ``dot``; the format is the extension.

    Parameters
    ----------
    dot : str
        DOT source (:func:`to_dot`).
    path : str or path-like
        Output file: ``.svg``, ``.png``, ``.pdf``, ...

    Returns
    -------
    str
        The path written.

    Raises
    ------
    RuntimeError
        If Graphviz is not installed (no ``dot`` on ``PATH``) or ``dot`` fails.
    ValueError
        If the extension is not a Graphviz output format.
    """
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in _FORMATS:
        raise ValueError(
            f"cannot tell the output format from {path!r}: use one of the extensions "
            + ", ".join(f".{f}" for f in sorted(_FORMATS))
        )
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(
            "Graphviz is not installed: no 'dot' executable on PATH (install the graphviz "
            "package of your system, or paste the DOT text into any Graphviz viewer)"
        )
    with replacing(path) as (tmp,):
        proc = subprocess.run(  # a fixed executable and argument list, no shell
            [exe, f"-T{fmt}", "-o", tmp], input=dot.encode(), capture_output=True,
            timeout=600, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"Graphviz 'dot' failed (exit {proc.returncode}): "
                + proc.stderr.decode(errors="replace").strip()
            )
    return path


__all__ = ["Sweep", "interpret", "render", "table", "to_dot"]
