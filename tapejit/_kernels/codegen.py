"""Generate the kernel module's source: the kernel files with the op table's sweeps.

The value, tangent and second-order sweeps are a dispatch over :data:`tapejit._ops.OPS`
written out here from the table's ``value``, ``partials`` and ``second`` expressions;
they contain no per-op logic of their own. The reverse sweeps have no per-op code at all
(``reverse.py``): they read the tables ``_PSRC``/``_PCONST``/``_PCNT``/``_PIDX`` derived
here from ``Op.partial_sources``. Everything else is kernel files of this package, copied
below their marker line (``sources.py``). :func:`generate_source` assembles the module;
``cache.py`` writes it under the hash of its text and imports it. :func:`kernel_code`
shows what one op runs in one sweep (``tapejit kernels``).
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import NamedTuple

from .. import _program
from .._ops import BY_NAME, FAST_BLOCK, FAST_BROADCAST, OPS, TWINS, VECTOR_FN, Op
from . import constants
from .constants import (
    N_OPCODES,
    SRC_A,
    SRC_CONST,
    SRC_STORED,
    SRC_ZERO,
)
from .sources import kernel_body, kernel_path

# Inside an op's element loop: the slots of element ``e`` of a block instruction.
_SLOT = {"a": "ja", "b": "jb", "c": "jc", "r": "jr"}
_SLOTS = ("ja", "jb", "jc")
_ELEMENT = [
    "for e in range(n):",
    "    jr = ir + e",
    "    ja = ia + e * sa",
    "    jb = ib + e * sb",
    "    jc = ic + e * sc",
]
_ZERO = ("0.0", "0")
_SECOND_INDEX = {
    1: {(0, 0): 0},
    2: {(0, 0): 0, (0, 1): 1, (1, 1): 2},
    3: {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 1): 3, (1, 2): 4, (2, 2): 5},
}


def _uses(expr: str) -> list[str]:
    """Names among a, b, c, r that an expression reads."""
    return [v for v in ("a", "b", "c", "r") if re.search(rf"\b{v}\b", expr)]


def _dispatch_order() -> list[Op]:
    """The ops with a ``rank`` first (the frequent ones), then the others by opcode."""
    first = sorted((op for op in OPS if op.rank), key=lambda op: op.rank)
    return first + [op for op in OPS if not op.rank]


def _second(op: Op, k: int, j: int) -> str:
    return op.second[_SECOND_INDEX[op.arity][(min(k, j), max(k, j))]]


def _nonzero_partials(op: Op) -> list[int]:
    return [k for k, ps in enumerate(op.partial_sources) if ps.kind != "zero"]


def _unit(op: Op, k: int) -> str | None:
    """``"+"`` or ``"-"`` where partial ``k`` is the constant +-1 (a plain add or
    subtract), else ``None``."""
    ps = op.partial_sources[k]
    if ps.kind == "constant" and ps.factor in (1.0, -1.0):
        return "+" if ps.factor == 1.0 else "-"
    return None


def _header(name: str, args: str, reverse: bool) -> list[str]:
    loop = (
        ["    for i in range(prog[N_INSTR] - 1, -1, -1):"]
        if reverse
        else ["    for i in range(prog[N_INSTR]):"]
    )
    return [
        "@njit(cache=True, nogil=True)",
        f"def {name}({args}):",
        "    nd = prog[FIRST_ADJOINT]",
        *loop,
        "        k = prog[AT_CODE] + ROW * i",
        "        op = prog[k + OPCODE]",
        "        ir = prog[k + RESULT]",
        "        ia = prog[k + ARG_A]",
        "        ib = prog[k + ARG_B]",
        "        ic = prog[k + ARG_C]",
        "        n = prog[k + SIZE]",
        "        sa = prog[k + STRIDE_A]",
        "        sb = prog[k + STRIDE_B]",
        "        sc = prog[k + STRIDE_C]",
    ]


#: Point sweeps hand family routines their one-point arrays as blocks of one column.
_POINT_BLOCKS = {"P": "P.reshape((1, P.size))", "W": "W.reshape((W.size, 1))",
                 "A": "A.reshape((A.size, 1))",
                 "T": "T.reshape((T.shape[0], T.shape[1], 1))",
                 "Ad": "Ad.reshape((Ad.shape[0], Ad.shape[1], 1))"}


def _family_case(sweep: str, point: bool) -> list[str]:
    """The dispatch branch of every instruction family (``_family_dispatch``)."""
    args = [a.strip() for a in _FAMILY_ARGS[sweep].split(",")]
    if point:
        args = [_POINT_BLOCKS.get(a, "1" if a == "m" else a) for a in args]
    return ["        elif op >= FIRST_FAMILY:", f"            _family_{sweep}({', '.join(args)})"]


def _case(kw: str, op: Op, body: list[str], fast: list[str] = ()) -> list[str]:
    """One dispatch branch: ``body`` runs once per element of the instruction (a scalar
    instruction has one element; a block has ``n``, operand slots advancing by their
    strides). ``fast`` is an ``if/elif`` chain of block fast paths tried before that
    loop."""
    out = [f"        {kw} op == {op.code}:  # {op.name}"]
    ind = "            "
    if fast:
        out += [ind + line for line in fast] + [ind + "else:"]
        ind += "    "
    out += [ind + line for line in _ELEMENT]
    out += [ind[:-8] + line for line in body]
    return out


_COMBOS = {
    1: ["v"],
    2: ["vv", "sv", "vs"],
    3: ["vvv"],
}


class _Body:
    """Per-op code in one of two shapes: a chunk (rows of ``m`` points, the point loop
    innermost) or a single point (scalars)."""

    def __init__(self, point: bool, ind: str) -> None:
        self.point = point
        self.ind = ind
        self.lines: list[str] = []

    def add(self, line: str, extra: int = 0) -> None:
        self.lines.append(self.ind + "    " * extra + line)

    def loads(self, names: list[str], extra: int = 0) -> None:
        """Make operand values ``a, b, c, r`` available (inside the point loop)."""
        for v in names:
            self.add(f"{v} = W[{_SLOT[v]}]" if self.point else f"{v} = w{v}[p]", extra)

    def views(self, names: list[str]) -> None:
        if not self.point:
            for v in names:
                self.add(f"w{v} = W[{_SLOT[v]}]")


def _twin_calls(exprs: list[str]) -> list[tuple[str, str]]:
    """``(helper, argument)`` of each call of a helper with a vectorizing twin
    (``_ops.TWINS``); an argument must be one operand name."""
    calls = []
    for e in exprs:
        for name in TWINS:
            for m in re.finditer(rf"\b{name}\(([^()]*)\)", e):
                if m[1] not in ("a", "b", "c", "r"):
                    raise ValueError(f"{name} must be called on an operand, not {m[1]!r}")
                if (name, m[1]) not in calls:
                    calls.append((name, m[1]))
    return calls


def _loop_lines(loop: str, loads: list[str], assigns: list[tuple[str, str]]) -> list[str]:
    """``loop`` (``for p in range(m):``) over ``loads`` and then each ``target = expr``,
    as lines indented relative to the loop. Where the expressions call a helper that has a
    vectorizing twin (``_ops.TWINS``), the loop calls the twin and counts the elements the
    twin does not cover; a second loop, run only when there are any, redoes those elements
    with the helpers. Every target gets the helpers' bits, and the loop still vectorizes.
    The loads must include the helpers' arguments."""
    calls = _twin_calls([e for _, e in assigns])
    if not calls:
        return [loop, *("    " + line for line in loads),
                *(f"    {t} = {e}" for t, e in assigns)]
    guard = " or ".join(dict.fromkeys(TWINS[name][1].format(x=x) for name, x in calls))
    fast = []
    for t, e in assigns:
        for name, (twin, _) in TWINS.items():
            e = re.sub(rf"\b{name}\(", f"{twin}(", e)
        fast.append(f"    {t} = {e}")
    return ["big = 0", loop, *("    " + line for line in loads), *fast,
            f"    if {guard}:", "        big += 1",
            "if big > 0:", "    " + loop, *("        " + line for line in loads),
            f"        if {guard}:", *(f"            {t} = {e}" for t, e in assigns)]


def _row_loop(body: _Body, names: list[str], assigns: list[tuple[str, str]]) -> None:
    """``for p in range(m)`` over a chunk's rows (views ``w{name}`` of ``names``), see
    :func:`_loop_lines`."""
    names = sorted(set(names) | {x for _, x in _twin_calls([e for _, e in assigns])},
                   key="abcr".index)
    for line in _loop_lines("for p in range(m):", [f"{v} = w{v}[p]" for v in names], assigns):
        body.add(line)


def _block_modes(op: Op, reverse: bool = False, own: bool = False
                 ) -> list[tuple[str, dict[str, str]]]:
    """Block fast paths of ``op``: ``(condition, mode)`` pairs, ``mode`` giving each
    operand as contiguous (stride 1, read through a view, ``"v"``) or one slot broadcast
    (stride 0, a scalar, ``"s"``). Such loops have no per-element index arithmetic or
    branches, so LLVM vectorizes them (the ``FAST_BLOCK`` ops; ``own``: also the
    ``VECTOR_FN`` ops, and broadcast operands for ``FAST_BROADCAST`` ops). A
    reverse path also needs each contiguous operand
    range all differentiable (``>= nd``) or all not; a range straddling ``nd`` takes the
    generic loop."""
    if FAST_BLOCK not in op.flags and not (own and VECTOR_FN in op.flags):
        return []
    names = "abc"[: op.arity]
    combos = _COMBOS[op.arity]
    if op.arity == 2 and FAST_BROADCAST not in op.flags:
        combos = combos[:1]
    out = []
    for combo in combos:
        mode = dict(zip(names, combo, strict=True))
        cond = ["n > 1"] + [f"s{x} == {1 if m == 'v' else 0}" for x, m in mode.items()]
        if reverse:
            cond += [f"(i{x} >= nd or i{x} + n <= nd)" for x, m in mode.items() if m == "v"]
        out.append((" and ".join(cond), mode))
    return out


def _chain(paths: list[tuple[str, list[str]]]) -> list[str]:
    """``if/elif`` chain of ``(condition, body lines)``."""
    out: list[str] = []
    for n, (cond, body) in enumerate(paths):
        out.append(f"{'elif' if n else 'if'} {cond}:")
        out += ["    " + line for line in body]
    return out


def _value_setup(mode: dict[str, str], names) -> list[str]:
    return [f"w{x} = W[i{x} : i{x} + n]" if mode[x] == "v" else f"{x} = W[i{x}]"
            for x in names if x != "r"]


def _value_loads(mode: dict[str, str], names) -> list[str]:
    return [f"{x} = w{x}[e]" for x in names if x != "r" and mode[x] == "v"]


def _fast_paths(op: Op) -> list[str]:
    """Forward block fast paths of one point (see :func:`_block_modes`)."""
    used = [v for v in _uses(op.value) if v != "r"]
    return _chain([
        (cond, [*_value_setup(mode, used), "wr = W[ir : ir + n]",
                *_loop_lines("for e in range(n):", _value_loads(mode, used),
                             [("wr[e]", op.value)])])
        for cond, mode in _block_modes(op, own=True)
    ])


def _forward_point() -> str:
    """One-point forward sweep (values only)."""
    lines = _header("forward_point_sweep", "prog, consts, P, W", False)
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        body = _Body(True, "            ")
        body.loads(used)
        body.add(f"W[jr] = {op.value}")
        lines += _case(kw, op, body.lines, fast=_fast_paths(op))
        kw = "elif"
    return "\n".join(lines + _family_case("forward", True))


def _forward_scalar() -> str:
    """One-point forward sweep over a scalar program (``tapejit/_scalar_program.py``):
    a row of four ints per instruction and no blocks or families, so decoding and
    dispatch are all its per-instruction cost. It stores the partials that
    :func:`_forward_partials_point` stores, with the same expressions (the same bits),
    one after another from ``q``; ``reverse_edges`` (``reverse.py``) reads them."""
    lines = [
        "@njit(cache=True, nogil=True)",
        "def forward_scalar_sweep(S, V, nf, q):",
        "    for i in range(S[SP_ROWS]):",
        "        k = SP_HEADER + SP_ROW * i",
        "        op = S[k]",
    ]
    kw = "if"
    for op in _dispatch_order():
        stored = _stored(op)
        exprs = [op.value, *(op.partials[k] for k in stored)]
        used = sorted({v for e in exprs for v in _uses(e)} - {"r"}, key="abc".index)
        lines.append(f"        {kw} op == {op.code}:  # {op.name}")
        lines += [f"            {v} = V[S[k + {1 + 'abc'.index(v)}]]" for v in used]
        lines += [f"            r = {op.value}", "            V[nf + i] = r"]
        lines += [f"            V[q + {j}] = {op.partials[k]}" for j, k in enumerate(stored)]
        if stored:
            lines.append(f"            q += {len(stored)}")
        kw = "elif"
    return "\n".join(lines)


def _tangent_expr(op: Op, ks: list[int], tangent: dict[int, str]) -> str:
    """The result's tangent: sum over operands of their tangent times the partial
    (``d{k}``), with +-1 partials as plain additions."""
    terms = []
    for k in ks:
        t, unit = tangent[k], _unit(op, k)
        terms.append(f"{unit} {t}" if unit else f"+ _azmul({t}, d{k})")
    expr = " ".join(terms) or "+ 0.0"
    return expr[2:] if expr[0] == "+" else "-" + expr[2:]


def _general(op: Op, ks: list[int]) -> list[int]:
    """Operands whose partial is computed (not a constant +-1)."""
    return [k for k in ks if _unit(op, k) is None]


def _seconds(op: Op, ks: list[int]) -> dict[tuple[int, int], str]:
    """Nonzero second partials ``(k, j) -> expr`` of the operands ``ks``."""
    return {(k, j): _second(op, k, j) for k in ks for j in range(op.arity)
            if _second(op, k, j) not in _ZERO}


def _fast_paths_tangent(op: Op) -> list[str]:
    """Tangent block fast paths of one point and one direction (``T1``: ``T`` flat)."""
    ks = _nonzero_partials(op)
    general = _general(op, ks)
    vals = sorted({v for e in (op.value, *(op.partials[k] for k in general))
                   for v in _uses(e)} - {"r"}, key="abc".index)
    paths = []
    for cond, mode in _block_modes(op):
        xs = ["abc"[k] for k in ks]
        tan = {k: f"t{x}[e]" if mode[x] == "v" else f"t{x}" for k, x in zip(ks, xs, strict=True)}
        body = [*_value_setup(mode, vals),
                *(f"t{x} = T1[i{x} : i{x} + n]" if mode[x] == "v" else f"t{x} = T1[i{x}]"
                  for x in xs),
                "wr = W[ir : ir + n]", "tr = T1[ir : ir + n]", "for e in range(n):",
                *("    " + line for line in _value_loads(mode, vals)),
                f"    r = {op.value}", "    wr[e] = r",
                *(f"    d{k} = {op.partials[k]}" for k in general),
                f"    tr[e] = {_tangent_expr(op, ks, tan)}"]
        paths.append((cond + " and nv == 1", body))
    return _chain(paths)


def _fast_paths_hvp(op: Op) -> list[str]:
    """Forward-over-reverse block fast paths of one point and one direction (``T1``,
    ``Ad1``: ``T`` and ``Ad`` flat), one loop per operand like
    :func:`_fast_paths_reverse`."""
    ks = _nonzero_partials(op)
    seconds = _seconds(op, ks)
    paths = []
    for cond, mode in _block_modes(op, reverse=True):
        need = {v for k in ks for e in (op.partials[k], *(seconds.get((k, j), "0.0")
                                                           for j in range(op.arity)))
                for v in _uses(e)}
        body = [*_value_setup(mode, sorted(need - {"r"}, key="abc".index)),
                *(["wr = W[ir : ir + n]"] if "r" in need else []),
                "gr = A[ir : ir + n]", "gdr = Ad1[ir : ir + n]"]
        tangents = {j for (_, j) in seconds}
        body += [f"t{x} = T1[i{x} : i{x} + n]" if mode[x] == "v" else f"t{x} = T1[i{x}]"
                 for x in ("abc"[j] for j in sorted(tangents))]
        for k in ks:
            x, pk = "abc"[k], op.partials[k]
            js = [j for j in range(op.arity) if (k, j) in seconds]
            exprs = [pk] + [seconds[(k, j)] for j in js]
            names = sorted({v for e in exprs for v in _uses(e)}, key="abcr".index)
            loop = ["g = gr[e]", "gd = gdr[e]", *_value_loads(mode, names),
                    *(["r = wr[e]"] if "r" in names else [])]
            if _unit(op, k):
                sign = "" if _unit(op, k) == "+" else "-"
                first, dfirst = f"{sign}g", f"{sign}gd"
            else:
                loop.append(f"d{k} = {pk}")
                first, dfirst = f"_azmul(g, d{k})", f"_azmul(gd, d{k})"
            tail = ""
            if js:
                loop += [f"s{k}{j} = {seconds[(k, j)]}" for j in js]
                u = " + ".join(
                    f"_azmul(s{k}{j}, t{'abc'[j]}{'[e]' if mode['abc'[j]] == 'v' else ''})"
                    for j in js)
                tail = f" + _azmul(g, {u})"
            body.append(f"if i{x} >= nd:")
            if mode[x] == "v":
                body += [f"    ga = A[i{x} : i{x} + n]", f"    gda = Ad1[i{x} : i{x} + n]",
                         "    for e in range(n):", *("        " + line for line in loop),
                         f"        ga[e] += {first}", f"        gda[e] += {dfirst}{tail}"]
            else:  # a broadcast operand collects the sums over the block
                body += ["    t = 0.0", "    td = 0.0", "    for e in range(n):",
                         *("        " + line for line in loop),
                         f"        t += {first}", f"        td += {dfirst}{tail}",
                         f"    A[i{x}] += t", f"    Ad1[i{x}] += td"]
        paths.append((cond + " and nv == 1", body))
    return _chain(paths)


def _forward() -> str:
    """Chunk forward sweep (values only)."""
    lines = _header("forward_chunk", "prog, consts, P, W, m", False)
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        body = _Body(False, "            ")
        body.views(used)
        body.add("wr = W[jr]")
        _row_loop(body, used, [("wr[p]", op.value)])
        lines += _case(kw, op, body.lines)
        kw = "elif"
    return "\n".join(lines + _family_case("forward", False))


def _source_code(op: Op, k: int) -> tuple[int, float]:
    """``_PSRC`` and ``_PCONST`` entries of partial ``k`` of ``op``: the ``SRC_*`` code
    of its :class:`~tapejit._ops.PartialSource`, and its constant or factor."""
    ps = op.partial_sources[k]
    code = {"zero": SRC_ZERO, "stored": SRC_STORED, "constant": SRC_CONST}.get(ps.kind)
    return ("abcr".index(ps.operand) + SRC_A if code is None else code), ps.factor


def _partial_source_tables() -> str:
    """Where the reverse sweeps find each partial, by ``MAX_ARITY * opcode + k``."""
    width = _program.MAX_ARITY
    src, const = [0] * (width * N_OPCODES), [0.0] * (width * N_OPCODES)
    count, index = [0] * N_OPCODES, [0] * (width * N_OPCODES)
    for op in OPS:
        for k in range(op.arity):
            src[width * op.code + k], const[width * op.code + k] = _source_code(op, k)
        stored = _stored(op)
        count[op.code] = len(stored)
        for j, k in enumerate(stored):
            index[width * op.code + k] = j
    # Global arrays are constants to Numba, indexed by a load (a tuple indexed at run time
    # becomes a switch over all its entries: slow to compile).
    return (f"_PSRC = np.array({src!r}, dtype=np.int32)  # by MAX_ARITY * opcode + operand: "
            "where its partial is\n"
            f"_PCONST = np.array({const!r})  # the constant partials, or factors\n"
            f"_PCNT = np.array({count!r}, dtype=np.int32)  # by opcode: partials stored\n"
            f"_PIDX = np.array({index!r}, dtype=np.int32)  # by MAX_ARITY * opcode + "
            "operand: which stored partial")


def _stored(op: Op) -> list[int]:
    """Operands whose partial the forward sweeps store (kind ``"stored"``)."""
    return [k for k, ps in enumerate(op.partial_sources) if ps.kind == "stored"]


def _forward_partials() -> str:
    """Chunk forward sweep that also stores the computed local partials for the reverse
    sweep.

    ``D[MAX_ARITY * (s - nf) + k]`` holds the partial of result slot ``s`` with respect to its
    operand ``k`` when ``_PSRC`` says it is stored (zero, constant and workspace-value
    partials are not: the reverse sweep finds them elsewhere), ``nf`` being the first
    result slot. Computing a value and its partials in one loop lets LLVM
    share work between them (``sin`` and ``cos`` of one argument), and leaves the
    reverse sweep only multiply-adds, which vectorize.
    """
    lines = _header("forward_partials_chunk", "prog, consts, P, W, D, m", False)
    lines.insert(3, "    nf = prog[FIRST_ADJOINT] + prog[N_INPUTS]")
    kw = "if"
    for op in _dispatch_order():
        used = sorted({v for e in (op.value, *op.partials) for v in _uses(e)} - {"r"},
                      key="abc".index)
        body = _Body(False, "            ")
        body.views(used)
        body.add("wr = W[jr]")
        body.add("q = MAX_ARITY * (jr - nf)")
        stored = _stored(op)
        for k in stored:
            body.add(f"d{k} = D[q + {k}]")
        _row_loop(body, used, [("r", op.value), ("wr[p]", "r"),
                               *((f"d{k}[p]", op.partials[k]) for k in stored)])
        lines += _case(kw, op, body.lines)
        kw = "elif"
    return "\n".join(lines + _family_case("forward", False))


def _forward_partials_point() -> str:
    """One-point forward sweep that also stores the computed local partials, like
    :func:`_forward_partials` (same expressions, so the same bits as the batched
    sweeps). ``D`` is packed: an instruction's stored partials take ``n`` floats each,
    in instruction order from offset 0; the sweep returns the end offset, from which
    ``reverse_stored_point_sweep`` (``reverse.py``) walks back."""
    lines = _header("forward_partials_point_sweep", "prog, consts, P, W, D", False)
    lines.insert(3, "    q = 0")
    kw = "if"
    for op in _dispatch_order():
        stored = _stored(op)
        exprs = [op.value, *(op.partials[k] for k in stored)]
        used = sorted({v for e in exprs for v in _uses(e)} - {"r"}, key="abc".index)
        body = _Body(True, "            ")
        body.loads(used)
        body.add(f"r = {op.value}")
        body.add("W[jr] = r")
        for j, k in enumerate(stored):
            body.add(f"D[q + {j} * n + e] = {op.partials[k]}")
        fast = _chain([
            (cond, [*_value_setup(mode, used), "wr = W[ir : ir + n]",
                    *(f"d{j} = D[q + {j} * n : q + {j + 1} * n]" for j in range(len(stored))),
                    *_loop_lines("for e in range(n):", _value_loads(mode, used),
                                 [("r", op.value), ("wr[e]", "r"),
                                  *((f"d{j}[e]", op.partials[k])
                                    for j, k in enumerate(stored))])])
            for cond, mode in _block_modes(op, own=True)
        ])
        lines += _case(kw, op, body.lines, fast=fast)
        if stored:
            lines.append(f"            q += {len(stored)} * n")
        kw = "elif"
    lines += _family_case("forward", True)
    lines.append("    return q")
    return "\n".join(lines)


def _locals_loop(op: Op, body: _Body, exprs: list[tuple[str, str]]) -> None:
    """Evaluate ``(target, expr)`` pairs for every point: scalars for a point, rows of the
    scratch arrays for a chunk."""
    if not exprs:
        return
    names = sorted({v for _, e in exprs for v in _uses(e)}, key="abcr".index)
    if body.point:
        body.loads(names)
        for t, e in exprs:
            body.add(f"{t} = {e}")
        return
    body.views(names)
    _row_loop(body, names, exprs)


def _forward_tangent(point: bool) -> str:
    """Values and tangents in one pass; ``T[s, d(, p)]`` is direction ``d`` of slot ``s``.

    Rows of constants and parameters in ``T`` are zero (the drivers set them once).
    """
    args = "prog, consts, P, W, T, nv" if point else "prog, consts, P, W, T, D, nv, m"
    lines = _header("forward_tangent_point_sweep" if point else "forward_tangent_chunk",
                    args, False)
    if point:  # flat view for the one-direction block fast paths
        lines.insert(3, "    T1 = T.reshape(T.size)")
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        body = _Body(point, "            ")
        ks = _nonzero_partials(op)
        general = _general(op, ks)
        if point:
            body.loads(used)
            body.add(f"W[jr] = {op.value}")
            _locals_loop(op, body, [(f"d{k}", op.partials[k]) for k in general])
            body.add("for d in range(nv):")
            tangent = {k: f"T[{_SLOTS[k]}, d]" for k in ks}
            body.add(f"T[jr, d] = {_tangent_expr(op, ks, tangent)}", 1)
        else:
            body.views(used)
            body.add("wr = W[jr]")
            _row_loop(body, used, [("wr[p]", op.value)])
            _locals_loop(op, body, [(f"D[{k}, p]", op.partials[k]) for k in general])
            body.add("tr = T[jr]")
            body.add("for d in range(nv):")
            body.add("for p in range(m):", 1)
            body.add("tr[d, p] = 0.0", 2)
            for k in ks:
                body.add(f"if {_SLOTS[k]} >= nd:")
                body.add(f"tk = T[{_SLOTS[k]}]", 1)
                body.add("for d in range(nv):", 1)
                body.add("for p in range(m):", 2)
                if _unit(op, k):
                    body.add(f"tr[d, p] {_unit(op, k)}= tk[d, p]", 3)
                else:
                    body.add(f"tr[d, p] += _azmul(tk[d, p], D[{k}, p])", 3)
        lines += _case(kw, op, body.lines, fast=_fast_paths_tangent(op) if point else ())
        kw = "elif"
    return "\n".join(lines + _family_case("tangent", point))


def _reverse_hvp(point: bool) -> str:
    """Adjoints ``A`` and their tangents ``Ad`` (forward-over-reverse) in one pass back.

    For operand k of an instruction with result r:
    ``A[k] += A[r] * d_k`` and ``Ad[k] += Ad[r] * d_k + A[r] * sum_j d2_kj * T[j]``,
    every product taken with the zero-times-anything-is-zero rule.
    """
    args = ("prog, consts, P, W, T, A, Ad, nv" if point
            else "prog, consts, P, W, T, A, Ad, D, S, nv, m")
    lines = _header("reverse_hvp_point_sweep" if point else "reverse_hvp_chunk", args, True)
    if point:  # flat views for the one-direction block fast paths
        lines[3:3] = ["    T1 = T.reshape(T.size)", "    Ad1 = Ad.reshape(Ad.size)"]
    kw = "if"
    for op in _dispatch_order():
        ks = _nonzero_partials(op)
        if not ks:
            continue
        body = _Body(point, "            ")
        general, seconds = _general(op, ks), _seconds(op, ks)
        sname = {kj: (f"s{kj[0]}{kj[1]}" if point else f"S[{n}, p]")
                 for n, kj in enumerate(seconds)}
        dname = {k: (f"d{k}" if point else f"D[{k}, p]") for k in general}
        _locals_loop(
            op, body,
            [(dname[k], op.partials[k]) for k in general]
            + [(sname[kj], e) for kj, e in seconds.items()],
        )
        if point:
            body.add("g = A[jr]")
        else:
            body.add("gr = A[jr]")
            body.add("gdr = Ad[jr]")
        for k in ks:
            slot = _SLOTS[k]
            js = [j for j in range(op.arity) if (k, j) in seconds]
            g = "g" if point else "gr[p]"
            gd = "Ad[jr, d]" if point else "gdr[d, p]"
            if _unit(op, k) == "+":
                first, dfirst = g, gd
            elif _unit(op, k) == "-":
                first, dfirst = f"-{g}", f"-{gd}"
            else:
                first = f"_azmul({g}, {dname[k]})"
                dfirst = f"_azmul({gd}, {dname[k]})"
            body.add(f"if {slot} >= nd:")
            if point:
                body.add(f"A[{slot}] += {first}", 1)
                body.add("for d in range(nv):", 1)
                tail = ""
                if js:
                    u = " + ".join(f"_azmul({sname[(k, j)]}, T[{_SLOTS[j]}, d])" for j in js)
                    tail = f" + _azmul(g, {u})"
                body.add(f"Ad[{slot}, d] += {dfirst}{tail}", 2)
                continue
            body.add(f"ga = A[{slot}]", 1)
            body.add(f"gda = Ad[{slot}]", 1)
            for j in js:
                body.add(f"t{j} = T[{_SLOTS[j]}]", 1)
            body.add("for p in range(m):", 1)
            body.add(f"ga[p] += {first}", 2)
            body.add("for d in range(nv):", 1)
            body.add("for p in range(m):", 2)
            tail = ""
            if js:
                u = " + ".join(f"_azmul({sname[(k, j)]}, t{j}[d, p])" for j in js)
                tail = f" + _azmul(gr[p], {u})"
            body.add(f"gda[d, p] += {dfirst}{tail}", 3)
        lines += _case(kw, op, body.lines, fast=_fast_paths_hvp(op) if point else ())
        kw = "elif"
    return "\n".join(lines + _family_case("second_order", point))


#: Imports of the generated module: what the kernel files import above their marker
#: line (besides each other and the constants, which the module defines itself).
_IMPORTS = """\
import ctypes as _ctypes
import math
import threading as _threading

import llvmlite.binding as _llvm
import numpy as np
from llvmlite import ir as _ir
from numba import carray as _carray
from numba import cfunc as _cfunc
from numba import njit as _njit
from numba.core import cgutils as _cgutils
from numba.core import types as _types
from numba.core.errors import TypingError as _TypingError
from numba.extending import intrinsic as _intrinsic
from numba.extending import overload as _overload
"""


_FAMILY_ARGS = {
    "forward": "prog, k, consts, P, W, m",
    "reverse": "prog, k, consts, P, W, A, g0, m",
    "tangent": "prog, k, consts, P, W, T, m",
    "second_order": "prog, k, consts, P, W, T, A, Ad, m",
}
#: What each family rule is called with (after ``at``, the operands and the result).
_FAMILY_CALL = {
    "forward": "m",
    "reverse": "A[g0 : g0 + n], ga, gb, gc, da, db, dc, m",
    "tangent": "ta, tb, tc, T[ir : ir + n], da, db, dc, m",
    "second_order": ("ta, tb, tc, T[ir : ir + n], A[ir : ir + n], Ad[ir : ir + n], ga, gb, gc, "
                     "gda, gdb, gdc, da, db, dc, m"),
}


#: How a family routine's array operands cross the C call: ``(element type, ndim)``.
#: Others: integers.
_FAMILY_ARRAYS = {"prog": ("int32", 1), "consts": ("float64", 1), "P": ("float64", 2),
                  "W": ("float64", 2), "A": ("float64", 2), "T": ("float64", 3),
                  "Ad": ("float64", 3)}


def _family_files() -> list[str]:
    return sorted({f.kernel for f in _program.FAMILIES.values() if f.kernel})


def _family_routine(sweep: str, file: str) -> list[str]:
    """The body of one sweep's routine for the families of one kernel file: reads
    instruction ``k``'s operand blocks (``families.py``) and calls the family's rule."""
    lines = ["    op = prog[k + OPCODE]",
             "    at = prog[prog[AT_ATTRS] + prog[k + ATTR] :]",
             "    ir = prog[k + RESULT]",
             "    n = prog[k + SIZE]",
             "    r = W[ir : ir + n]"]
    for x in "abc":
        arg, length = {"a": ("ARG_A", "STRIDE_A"), "b": ("ARG_B", "STRIDE_B"),
                       "c": ("ARG_C", "STRIDE_C")}[x]
        lines += [f"    i{x} = prog[k + {arg}]", f"    l{x} = prog[k + {length}]",
                  f"    {x} = _family_operand(prog, consts, P, W, i{x}, l{x})",
                  f"    d{x} = _family_active(prog, i{x}, l{x})"]
        if sweep in ("reverse", "second_order"):
            lines.append(f"    g{x} = A[i{x} : i{x} + l{x}] if d{x} else A[:0]")
        if sweep in ("tangent", "second_order"):
            lines.append(f"    t{x} = T[i{x} : i{x} + l{x}] if d{x} else T[:0]")
        if sweep == "second_order":
            lines.append(f"    gd{x} = Ad[i{x} : i{x} + l{x}] if d{x} else Ad[:0]")
    kw = "if"
    for code, family in sorted(_program.FAMILIES.items()):
        if family.kernel != file:
            continue
        # a family that runs sub-programs (a loop's body) reads them from the program,
        # and gets its row there and the enclosing workspace (fam_loop.py: _loop_kept)
        head = "prog, consts, at, k, W" if family.bodies else "at"
        lines += [f"    {kw} op == {code}:  # {family.name}",
                  f"        {family.rules[sweep]}({head}, a, b, c, r, {_FAMILY_CALL[sweep]})"]
        kw = "elif"
    return lines


def _c_params(names: list[str], arrays: dict[str, tuple[str, int]]) -> tuple[list[str], list[str]]:
    """The parameters of a C callable whose function parameters are ``names`` (arrays
    among them as ``arrays`` declares: ``(element type, ndim)``; the others integers),
    and the lines that rebuild its arrays."""
    params, lines = [], []
    for name in names:
        if name not in arrays:
            params.append(name)
            continue
        dtype, ndim = arrays[name]
        shape = [f"{name}_{d}" for d in range(ndim)]
        params += [f"{name}_p", *shape]
        lines.append(f"    {name} = _carray(_{dtype}_at({name}_p), ({', '.join(shape)},))")
    return params, lines


#: The error a kernel raises when a C callable it called failed (the exception inside was
#: printed, and cannot cross the C call); the routines raise these.
_FAILED_INSIDE = (
    "tapejit: a kernel routine stopped on an error inside it (printed above as "
    "'Exception ignored'): a family routine or a sweep was not compiled before the kernel "
    "that calls it ran (ensure_family_routines, ensure_routines_of), or an instruction "
    "family this kernel module does not run")


def _c_callable(name: str, params: list[str], rebuild: list[str], body: list[str],
                returns: bool) -> list[str]:
    """The lines of C callable ``name``: its arrays rebuilt, then ``body`` (at one
    indent). It returns a status: 1 once the body has run, or what the body returns
    (``returns``: a count already raised by one). Numba cannot raise out of a C callable:
    one whose body raised prints the exception and returns 0, so a caller that gets 0
    raises :data:`_FAILED_INSIDE`, and no error inside passes silently."""
    return [f"def {name}({', '.join(params)}):", *rebuild, *body,
            *([] if returns else ["    return 1"])]


def _family_c_routine(sweep: str, file: str) -> str:
    """The C callable of one sweep's routine for the families of one kernel file
    (:func:`_family_routine`): its arrays arrive as data addresses and shapes
    (``family_calls.py``); compiled on first use. The routine is its body, not an
    ``njit`` function it calls: that would be compiled on its own and then linked, its
    rules optimised and generated again, into the C callable (twice the compile time
    of a family kernel file's routines)."""
    names = [a.strip() for a in _FAMILY_ARGS[sweep].split(",")]
    params, rebuild = _c_params(names, _FAMILY_ARRAYS)
    return "\n".join(_c_callable(f"_family_{sweep}__{file}__c", params, rebuild,
                                 _family_routine(sweep, file), False)) + "\n"


def _family_dispatch(sweep: str) -> str:
    """The dispatcher the sweeps call: the C routine of the instruction's family, through
    the table of ``family_calls.py`` (an instruction family's code never links into a
    sweep)."""
    args = _FAMILY_ARGS[sweep]
    kinds = tuple(_FAMILY_ARRAYS.get(a.strip()) for a in args.split(","))
    return "\n".join([
        "@_intrinsic",
        f"def _family_call_{sweep}(typingctx, addr, {args}):",
        f"    return _c_call(addr, {args}, kinds={kinds!r})",
        "",
        "",
        "@njit(cache=True, nogil=True)",
        f"def _family_{sweep}({args}):",
        "    code = prog[k + OPCODE]",
        "    if code < FIRST_FAMILY or code >= FIRST_FAMILY + N_FAMILY_CODES:",
        '        raise ValueError("an instruction family this kernel module does not run")',
        f"    addr = _routine_address(_family_slot(code, {_program.SWEEPS.index(sweep)}))",
        "    if addr == 0:",
        '        raise RuntimeError("tapejit: a family routine was not compiled before the '
        'kernel that calls it ran (ensure_family_routines)")',
        f"    if _family_call_{sweep}(addr, {args}) <= 0:",
        f"        raise RuntimeError({_FAILED_INSIDE!r})",
    ]) + "\n"


def _family_constants(tabled: list[_Tabled]) -> str:
    """What ``family_calls.py`` reads of the op table's families and of the sweeps called
    through its table."""
    files = {code: f.kernel for code, f in sorted(_program.FAMILIES.items()) if f.kernel}
    first = _program.FIRST_FAMILY
    routines = tuple(t.name for t in tabled)
    return "\n".join([f"SWEEPS = {_program.SWEEPS!r}",
                      f"N_FAMILY_CODES = {max(files, default=first - 1) + 1 - first}",
                      f"_FAMILY_FILES = {files!r}",
                      f"_SWEEP_ROUTINES = {routines!r}"]) + "\n"


def _family_kernels(tabled: list[_Tabled]) -> list[str]:
    """The kernel files of the registered families, their routines and C callables, and
    the dispatchers."""
    files = _family_files()
    return [kernel_body("families"), *(kernel_body(f) for f in files),
            _family_constants(tabled), kernel_body("family_calls"),
            *(_family_c_routine(s, f) for s in _program.SWEEPS for f in files),
            *(_family_dispatch(s) for s in _program.SWEEPS)]


#: The array parameters of the generated sweeps as they cross the C call
#: (:func:`_tabled_sweep`): a chunk sweep's blocks hold points innermost, a point
#: sweep's one point, and the scalar sweep runs a scalar program over a flat workspace.
_CHUNK_ARRAYS = {"prog": ("int32", 1), "consts": ("float64", 1), "P": ("float64", 2),
                 "W": ("float64", 2), "D": ("float64", 2), "T": ("float64", 3),
                 "A": ("float64", 2), "Ad": ("float64", 3), "S": ("float64", 2)}
_POINT_ARRAYS = {"prog": ("int32", 1), "consts": ("float64", 1), "P": ("float64", 1),
                 "W": ("float64", 1), "D": ("float64", 1), "T": ("float64", 2),
                 "A": ("float64", 1), "Ad": ("float64", 2)}
_SWEEP_ARRAYS = {"forward": _CHUNK_ARRAYS, "forward_point": _POINT_ARRAYS,
                 "forward_partials": _CHUNK_ARRAYS, "forward_partials_point": _POINT_ARRAYS,
                 "forward_scalar": {"S": ("int32", 1), "V": ("float64", 1)},
                 "tangent": _CHUNK_ARRAYS, "tangent_point": _POINT_ARRAYS,
                 "hvp": _CHUNK_ARRAYS, "hvp_point": _POINT_ARRAYS}


class _Tabled(NamedTuple):
    name: str  #: the sweep's function name
    source: str  #: its C callable and the function of its name that calls it


def _tabled_sweep(key: str, slot: int) -> _Tabled:
    """Generated sweep ``key`` (of :data:`SWEEPS`) as a C callable ``<sweep>__c`` of its
    own, and the ``njit`` function of the sweep's name that every kernel calls: it calls
    the C callable through slot ``slot`` of the sweeps in ``family_calls.py``'s table.
    Each sweep's code is then optimised and generated once, not again in every function
    that calls it on the way up to an entry point."""
    source = SWEEPS[key][1]()
    (fn,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    names = [a.arg for a in fn.args.args]
    arrays = _SWEEP_ARRAYS[key]
    returns = any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(fn))
    params, rebuild = _c_params(names, arrays)
    lines = source.splitlines()
    for node in ast.walk(fn):  # the count a sweep returns, raised by one (_c_callable)
        if isinstance(node, ast.Return) and node.value is not None:
            if node.lineno != node.end_lineno:
                raise ValueError(f"{fn.name}: a return statement on one line, please")
            line = lines[node.lineno - 1]
            value = ast.get_source_segment(source, node.value)
            lines[node.lineno - 1] = (f"{line[: node.col_offset]}return ({value}) + 1"
                                      f"{line[node.end_col_offset :]}")
    body = lines[fn.body[0].lineno - 1 : fn.end_lineno]
    args = ", ".join(names)
    kinds = tuple(arrays.get(n) for n in names)
    text = "\n".join([
        *_c_callable(f"{fn.name}__c", params, rebuild, body, returns),
        "",
        "",
        "@_intrinsic",
        f"def _call_{fn.name}(typingctx, addr, {args}):",
        f"    return _c_call(addr, {args}, kinds={kinds!r})",
        "",
        "",
        "@njit(cache=True, nogil=True)",
        f"def {fn.name}({args}):",
        f"    addr = _routine_address(_SWEEP_SLOT0 + {slot})",
        "    if addr == 0:",
        '        raise RuntimeError("tapejit: a sweep was not compiled before the kernel that '
        'calls it ran (ensure_routines_of)")',
        f"    status = _call_{fn.name}(addr, {args})",
        "    if status <= 0:",
        f"        raise RuntimeError({_FAILED_INSIDE!r})",
        *(["    return status - 1"] if returns else []),
    ]) + "\n"
    return _Tabled(fn.name, text)


def _sweeps_of(source: str, tabled: set[str]) -> str:
    """``_SWEEPS_OF``: for each function of the module ``source``, the sweeps of
    ``tabled`` it calls, directly or through the functions it calls (a sweep's own C
    callable is reached through the table, not by a call)."""
    calls = {node.name: {c.func.id for c in ast.walk(node)
                         if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
             for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    reach = {name: called & tabled for name, called in calls.items()}
    changed = True
    while changed:  # through the functions called, to a fixed point
        changed = False
        for name, called in calls.items():
            more = set().union(*(reach[c] for c in called - tabled if c in reach))
            if not more <= reach[name]:
                reach[name] |= more
                changed = True
    of = {name: tuple(sorted(r)) for name, r in sorted(reach.items()) if r}
    return f"_SWEEPS_OF = {of!r}\n"


def _sweep(fn, *args):
    return lambda: fn(*args)


#: The sweeps, by the short name ``tapejit kernels --sweep`` takes: the kernel function,
#: and where its code comes from (a generator function here, or a kernel file).
SWEEPS: dict[str, tuple[str, object]] = {
    "forward": ("forward_chunk", _forward),
    "forward_point": ("forward_point_sweep", _forward_point),
    "forward_partials": ("forward_partials_chunk", _forward_partials),
    "forward_partials_point": ("forward_partials_point_sweep", _forward_partials_point),
    "forward_scalar": ("forward_scalar_sweep", _forward_scalar),
    "reverse": ("reverse_stored_chunk", "reverse"),
    "reverse_point": ("reverse_stored_point_sweep", "reverse"),
    "reverse_scalar": ("reverse_edges", "reverse"),
    "tangent": ("forward_tangent_chunk", _sweep(_forward_tangent, False)),
    "tangent_point": ("forward_tangent_point_sweep", _sweep(_forward_tangent, True)),
    "hvp": ("reverse_hvp_chunk", _sweep(_reverse_hvp, False)),
    "hvp_point": ("reverse_hvp_point_sweep", _sweep(_reverse_hvp, True)),
}
_GENERATORS = {"forward": "_forward", "forward_point": "_forward_point",
               "forward_partials": "_forward_partials",
               "forward_partials_point": "_forward_partials_point",
               "forward_scalar": "_forward_scalar",
               "tangent": "_forward_tangent(point=False)",
               "tangent_point": "_forward_tangent(point=True)",
               "hvp": "_reverse_hvp(point=False)", "hvp_point": "_reverse_hvp(point=True)"}


def generate_source() -> str:
    """Return the complete source of the kernel module: the kernel files in dependency
    order, the program's and the kernels' constants, and the table-derived sweeps (called
    through the table of ``family_calls.py``), and which sweeps each function calls."""
    tabled = [_tabled_sweep(key, slot) for slot, key in enumerate(_GENERATORS)]
    parts = [
        '"""Generated by tapejit._kernels.codegen from the op table and the kernel files of'
        ' tapejit/_kernels. Do not edit."""',
        _IMPORTS,
        _program.constants_source(),
        constants.constants_source(),
        kernel_body("njit"),
        kernel_body("scalar"),
        kernel_body("libm"),
        _partial_source_tables(),
        *_family_kernels(tabled),
        *(t.source for t in tabled),
        kernel_body("plan"),
        kernel_body("reverse"),
        kernel_body("support"),
        kernel_body("point"),
        kernel_body("batch"),
    ]
    source = "\n\n".join(textwrap.dedent(p).strip("\n") + "\n" for p in parts)
    return source + "\n\n" + _sweeps_of(source, {t.name for t in tabled})


def sweep_origins() -> list[tuple[str, str, str]]:
    """``(short name, kernel function, where its code comes from)`` of every sweep."""
    out = []
    for name, (function, how) in SWEEPS.items():
        origin = (f"tapejit/_kernels/{how}.py" if isinstance(how, str)
                  else f"generated from the op table by tapejit._kernels.codegen."
                       f"{_GENERATORS[name]}")
        out.append((name, function, origin))
    return out


def _function_source(file: str, name: str) -> str:
    """The text of function ``name`` of kernel file ``file``, decorator included."""
    text = kernel_path(file).read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            lines = text.splitlines()[node.decorator_list[0].lineno - 1 : node.end_lineno]
            return "\n".join(lines) + "\n"
    raise LookupError(f"no function {name} in tapejit/_kernels/{file}.py")


def _branch(source: str, op: Op) -> str | None:
    """The dispatch branch of ``op`` in a generated sweep's source, or ``None``."""
    lines = source.splitlines()
    head = re.compile(rf"        (?:el)?if op == {op.code}:  # {op.name}$")
    for n, line in enumerate(lines):
        if head.match(line):
            end = n + 1
            while end < len(lines) and (lines[end].startswith("         ")
                                        or not lines[end].strip()):
                end += 1
            return "\n".join(lines[n:end]) + "\n"
    return None


def kernel_code(op: str, sweep: str) -> str:
    """The code that runs for one op in one sweep, with a line saying where it comes from.

    Parameters
    ----------
    op : str
        An op name of the table (``"mul"``).
    sweep : str
        A key of :data:`SWEEPS` (``"forward"``, ``"reverse"``, ...).

    Returns
    -------
    str
        For a generated sweep, the op's dispatch branch; for the reverse sweeps, which
        have no per-op code, the op's partial sources and the generic code they run.
    """
    if op not in BY_NAME:
        raise ValueError(f"unknown op {op!r}; the ops are: {', '.join(BY_NAME)}")
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; the sweeps are: {', '.join(SWEEPS)}")
    the_op = BY_NAME[op]
    function, how = SWEEPS[sweep]
    origin = dict((n, o) for n, _, o in sweep_origins())[sweep]
    if not isinstance(how, str):
        branch = _branch(how(), the_op)
        if branch is None:
            return (f"# {function}: {origin}\n# no branch for {op}: all its partials are "
                    "zero, the sweep skips it\n")
        return f"# {function}: {origin}\n# the branch of {op} (opcode {the_op.code}):\n{branch}"
    lines = [f"# {function}: {origin}",
             f"# no per-op code: every op takes the same path; {op}'s partials are found as"]
    for k, ps in enumerate(the_op.partial_sources):
        where = {"zero": "zero: nothing to propagate",
                 "constant": f"the constant {ps.factor!r}",
                 "stored": "stored by the forward-partials sweep in D",
                 "value": f"the value of {'the result' if ps.operand == 'r' else ps.operand}"
                          f" times {ps.factor!r}"}[ps.kind]
        lines.append(f"#   d/d{'abc'[k]} = {the_op.partials[k]}: {where}")
    helpers = (() if sweep == "reverse" else
               ("_scale", "_back_block", "_gain_constant", "_gain_times", "_gain_scaled"))
    text = "\n".join(lines) + "\n\n" + _function_source(how, function)
    return text + "".join("\n" + _function_source(how, h) for h in helpers)
