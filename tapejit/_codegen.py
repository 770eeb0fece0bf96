"""Generate the Numba interpreters from the op table, once, and load them.

The sweeps contain no per-op derivative logic of their own: each is a dispatch over
:data:`tapejit._ops.OPS` written out from the table's ``value``, ``partials`` and
``second`` expressions. The generated source is written to a cache directory under a name that is
the hash of the source itself, so Numba's on-disk cache (``cache=True``) stays valid for
exactly that source and is reused by every later process.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

from . import _drivers, _libm
from ._ops import FAST_BLOCK, FAST_BROADCAST, HELPERS, OPS, TWINS, VECTOR_FN, Op
from ._program import ROW

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
    return [k for k in range(op.arity) if op.partials[k] not in _ZERO]


def _header(name: str, args: str, reverse: bool) -> list[str]:
    loop = (
        ["    for i in range(prog[6] - 1, -1, -1):", f"        k = prog[10] + {ROW} * i"]
        if reverse
        else ["    for i in range(prog[6]):", f"        k = prog[10] + {ROW} * i"]
    )
    return [
        "@njit(cache=True, nogil=True)",
        f"def {name}({args}):",
        "    nd = prog[2]",
        *loop,
        "        op = prog[k]",
        "        ir = prog[k + 1]",
        "        ia = prog[k + 2]",
        "        ib = prog[k + 3]",
        "        ic = prog[k + 4]",
        "        n = prog[k + 5]",
        "        sa = prog[k + 6]",
        "        sb = prog[k + 7]",
        "        sc = prog[k + 8]",
    ]


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
    lines = _header("forward_point_sweep", "prog, W", False)
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        body = _Body(True, "            ")
        body.loads(used)
        body.add(f"W[jr] = {op.value}")
        lines += _case(kw, op, body.lines, fast=_fast_paths(op))
        kw = "elif"
    return "\n".join(lines)


def _tangent_expr(op: Op, ks: list[int], tangent: dict[int, str]) -> str:
    """The result's tangent: sum over operands of their tangent times the partial
    (``d{k}``), with +-1 partials as plain additions."""
    terms = []
    for k in ks:
        t, pk = tangent[k], op.partials[k]
        if pk == "-1.0":
            terms.append(f"- {t}")
        else:
            terms.append(f"+ {t}" if pk == "1.0" else f"+ _azmul({t}, d{k})")
    expr = " ".join(terms) or "+ 0.0"
    return expr[2:] if expr[0] == "+" else "-" + expr[2:]


def _general(op: Op, ks: list[int]) -> list[int]:
    """Operands whose partial is computed (not a constant +-1)."""
    return [k for k in ks if op.partials[k] not in ("1.0", "-1.0")]


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
            if pk in ("1.0", "-1.0"):
                sign = "" if pk == "1.0" else "-"
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
    lines = _header("forward_chunk", "prog, W, m", False)
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        body = _Body(False, "            ")
        body.views(used)
        body.add("wr = W[jr]")
        _row_loop(body, used, [("wr[p]", op.value)])
        lines += _case(kw, op, body.lines)
        kw = "elif"
    return "\n".join(lines)


# Where the chunk reverse sweep finds a local partial (``_PSRC[3 * opcode + k]``):
# nowhere (zero), stored by the forward sweep in ``D``, a constant (``_PCONST``), or a
# value already in the workspace (an operand, or the result itself: ``d exp(a) = r``).
# Only computed partials cost a store in the forward sweep and a row of ``D``.
_SRC_ZERO, _SRC_STORED, _SRC_CONST = 0, 1, 2
_SRC_SLOT = {"a": 3, "b": 4, "c": 5, "r": 6}


def _partial_source(op: Op, k: int) -> tuple[int, float]:
    """Where the reverse sweeps find partial ``k`` of ``op``, and its constant: the
    partial itself for ``_SRC_CONST``, else a factor (``square``'s ``2.0 * a`` is the
    operand ``a`` times 2: nothing to store)."""
    expr = op.partials[k].strip()
    if expr in _ZERO:
        return _SRC_ZERO, 0.0
    if expr in _SRC_SLOT:
        return _SRC_SLOT[expr], 1.0
    scaled = re.fullmatch(r"([abcr]) \* ([0-9.e+-]+)|([0-9.e+-]+) \* ([abcr])", expr)
    if scaled:
        slot, factor = (scaled[1], scaled[2]) if scaled[1] else (scaled[4], scaled[3])
        return _SRC_SLOT[slot], float(factor)
    try:
        return _SRC_CONST, float(expr)
    except ValueError:
        return _SRC_STORED, 1.0


def _partial_source_tables() -> str:
    src, const = [0] * (3 * 128), [0.0] * (3 * 128)
    count, index = [0] * 128, [0] * (3 * 128)
    for op in OPS:
        for k in range(op.arity):
            src[3 * op.code + k], const[3 * op.code + k] = _partial_source(op, k)
        stored = _stored(op)
        count[op.code] = len(stored)
        for j, k in enumerate(stored):
            index[3 * op.code + k] = j
    # Global arrays are constants to Numba, indexed by a load (a tuple indexed at run time
    # becomes a switch over all its entries: slow to compile).
    return (f"_PSRC = np.array({src!r}, dtype=np.int32)  # by 3 * opcode + operand: "
            "where its partial is\n"
            f"_PCONST = np.array({const!r})  # the constant partials, or factors\n"
            f"_PCNT = np.array({count!r}, dtype=np.int32)  # by opcode: partials stored\n"
            f"_PIDX = np.array({index!r}, dtype=np.int32)  # by 3 * opcode + operand: "
            "which stored partial")


def _stored(op: Op) -> list[int]:
    """Operands whose partial the forward sweeps store (``_SRC_STORED``)."""
    return [k for k in range(op.arity) if _partial_source(op, k)[0] == _SRC_STORED]


def _forward_partials() -> str:
    """Chunk forward sweep that also stores the computed local partials for the reverse
    sweep.

    ``D[3 * (s - nf) + k]`` holds the partial of result slot ``s`` with respect to its
    operand ``k`` when ``_PSRC`` says it is stored (zero, constant and workspace-value
    partials are not: the reverse sweep finds them elsewhere), ``nf`` being the first
    result slot. Computing a value and its partials in one loop lets LLVM
    share work between them (``sin`` and ``cos`` of one argument), and leaves the
    reverse sweep only multiply-adds, which vectorize.
    """
    lines = _header("forward_partials_chunk", "prog, W, D, m", False)
    lines.insert(3, "    nf = prog[2] + prog[3]")
    kw = "if"
    for op in _dispatch_order():
        used = sorted({v for e in (op.value, *op.partials) for v in _uses(e)} - {"r"},
                      key="abc".index)
        body = _Body(False, "            ")
        body.views(used)
        body.add("wr = W[jr]")
        body.add("q = 3 * (jr - nf)")
        stored = _stored(op)
        for k in stored:
            body.add(f"d{k} = D[q + {k}]")
        _row_loop(body, used, [("r", op.value), ("wr[p]", "r"),
                               *((f"d{k}[p]", op.partials[k]) for k in stored)])
        lines += _case(kw, op, body.lines)
        kw = "elif"
    return "\n".join(lines)


def _first_or_add(target: str, expr: str, ind: str, loop: str = "for p in range(m):"
                  ) -> list[str]:
    """``target += expr`` in ``loop``, or ``target = 0.0 + expr`` when ``new`` (the
    reverse plan's first write of these adjoints: they were not zeroed; the ``0.0 +``
    gives a zero the sign zeroing and adding gave). Two loops, so both vectorize."""
    return [f"{ind}if new:", f"{ind}    {loop}", f"{ind}        {target} = 0.0 + {expr}",
            f"{ind}else:", f"{ind}    {loop}", f"{ind}        {target} += {expr}"]


def _constant_cases(target: str, g: str, ind: str, loop: str = "for p in range(m):"
                    ) -> list[str]:
    """A constant partial ``dc``: +-1 (add, sub, neg) is a plain add or subtract
    (``azmul(g, +-1)`` differs only in a zero's sign); other constants multiply, a case
    generated only when the op table has such a partial (each case is two loops)."""
    other = sorted({c for op in OPS for k in range(op.arity)
                    for src, c in [_partial_source(op, k)]
                    if src == _SRC_CONST and c not in (1.0, -1.0)})
    lines = [f"{ind}if dc == 1.0:", *_first_or_add(target, g, ind + "    ", loop)]
    if other:
        lines += [f"{ind}elif dc == -1.0:", *_first_or_add(target, f"-{g}", ind + "    ", loop),
                  f"{ind}else:", *_first_or_add(target, f"_azmul({g}, dc)", ind + "    ", loop)]
    else:  # only +-1 in the table
        lines += [f"{ind}else:", *_first_or_add(target, f"-{g}", ind + "    ", loop)]
    return lines


def _reverse_stored() -> str:
    """Chunk reverse sweep after ``forward_partials_chunk``: no per-op code at all, each
    operand's adjoint gains ``A[result]`` times its partial, found where ``_PSRC`` says
    (``D``, a constant, or a workspace row of ``W``). ``R`` is the tape's reverse plan
    (``reverse_plan``): bit ``k`` of ``R[i]`` makes operand ``k`` of instruction ``i``
    assign its adjoints instead of adding to them, bit ``3 + k`` skips a forwarded
    operand, and instruction ``i`` reads its result adjoints where the plan says
    (``_plan_slot``)."""
    lines = _header("reverse_stored_chunk", "prog, R, W, A, D, m", True)
    lines.insert(3, "    nf = prog[2] + prog[3]")
    lines.insert(4, "    go = _plan_slots(prog, R)")
    lines += [
        "        fl = R[i]",
        "        g0 = _plan_slot(prog, R, go + i, n)",
        "        for e in range(n):",
        "            jr = ir + e",
        "            gr = A[g0 + e]",
        "            q = 3 * (jr - nf)",
        "            ja = ia + e * sa",
        "            jb = ib + e * sb",
        "            jc = ic + e * sc",
    ]
    for k, slot in enumerate(("ja", "jb", "jc")):
        lines += [
            f"            src = _PSRC[3 * op + {k}]",
            f"            if src != {_SRC_ZERO} and {slot} >= nd and not (fl >> {3 + k}) & 1:",
            f"                ga = A[{slot}]",
            f"                new = (fl >> {k}) & 1",
            f"                if src == {_SRC_CONST}:",
            f"                    dc = _PCONST[3 * op + {k}]",
            *_constant_cases("ga[p]", "gr[p]", " " * 20),
            "                else:",
            f"                    dc = _PCONST[3 * op + {k}]  # a factor: 1.0, or 2.0 (square)",
            f"                    if src == {_SRC_STORED}:",
            f"                        dk = D[q + {k}]",
            f"                    elif src == {_SRC_SLOT['a']}:",
            "                        dk = W[ja]",
            f"                    elif src == {_SRC_SLOT['b']}:",
            "                        dk = W[jb]",
            f"                    elif src == {_SRC_SLOT['c']}:",
            "                        dk = W[jc]",
            "                    else:",
            "                        dk = W[jr]",
            *_first_or_add("ga[p]", "_azmul(gr[p], dc * dk[p])", " " * 20),
        ]
    return "\n".join(lines)


def _forward_partials_point() -> str:
    """One-point forward sweep that also stores the computed local partials, like
    :func:`_forward_partials` (same expressions, so the same bits as the batched
    sweeps). ``D`` is packed: an instruction's stored partials take ``n`` floats each,
    in instruction order from offset 0; the sweep returns the end offset, from which
    :func:`_reverse_stored_point` walks back."""
    lines = _header("forward_partials_point_sweep", "prog, W, D", False)
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
    lines.append("    return q")
    return "\n".join(lines)


def _reverse_stored_point() -> str:
    """One-point reverse sweep after :func:`_forward_partials_point`: no per-op code, like
    :func:`_reverse_stored`; contiguous and broadcast operands of a block run in loops
    that vectorize (``_back_block``). ``R`` is the reverse plan, as there."""
    lines = _header("reverse_stored_point_sweep", "prog, R, W, A, D, q", True)
    lines.insert(3, "    go = _plan_slots(prog, R)")
    lines += [
        "        q -= _PCNT[op] * n",
        "        fl = R[i]",
        "        g0 = _plan_slot(prog, R, go + i, n)",
        "        if n == 1:",
        "            g = A[g0]",
        "            if g == 0.0 and fl == 0:",
        "                continue",
    ]
    for k, slot in enumerate(("ia", "ib", "ic")):
        lines += [
            f"            src = _PSRC[3 * op + {k}]",
            f"            if src != {_SRC_ZERO} and {slot} >= nd and not (fl >> {3 + k}) & 1:",
            f"                if src == {_SRC_CONST}:",
            f"                    d = _scale(g, _PCONST[3 * op + {k}])",
            "                else:",
            f"                    if src == {_SRC_STORED}:",
            f"                        d = D[q + _PIDX[3 * op + {k}]]",
            f"                    elif src == {_SRC_SLOT['a']}:",
            "                        d = W[ia]",
            f"                    elif src == {_SRC_SLOT['b']}:",
            "                        d = W[ib]",
            f"                    elif src == {_SRC_SLOT['c']}:",
            "                        d = W[ic]",
            "                    else:",
            "                        d = W[ir]",
            f"                    d = _azmul(g, _PCONST[3 * op + {k}] * d)",
            f"                A[{slot}] = (0.0 if (fl >> {k}) & 1 else A[{slot}]) + d",
        ]
    lines += ["        else:", "            gr = A[g0 : g0 + n]"]
    for k, (slot, stride) in enumerate((("ia", "sa"), ("ib", "sb"), ("ic", "sc"))):
        lines += [
            f"            src = _PSRC[3 * op + {k}]",
            f"            if src != {_SRC_ZERO} and not (fl >> {3 + k}) & 1:",
            f"                if src == {_SRC_SLOT['a']}:",
            "                    j0, sj = ia, sa",
            f"                elif src == {_SRC_SLOT['b']}:",
            "                    j0, sj = ib, sb",
            f"                elif src == {_SRC_SLOT['c']}:",
            "                    j0, sj = ic, sc",
            "                else:",
            "                    j0, sj = ir, 1",
            f"                _back_block(A, W, D, gr, {slot}, {stride}, n, nd, src,",
            f"                            _PCONST[3 * op + {k}], q + _PIDX[3 * op + {k}] * n,"
            f" j0, sj, (fl >> {k}) & 1)",
        ]
    return "\n".join(lines)


def _back_block_source() -> str:
    """``_scale`` and ``_back_block``, the one-point reverse sweep's block operands."""
    loop = "for e in range(n):"
    const = "\n".join(_constant_cases("ga[e]", "gr[e]", " " * 12, loop))
    bcast = "\n".join(_first_or_add("ga[e]", "_azmul(gr[e], d)", " " * 12, loop))
    row = "\n".join(_first_or_add("ga[e]", "_azmul(gr[e], dc * dk[e])", " " * 12, loop))
    return f'''
@njit(cache=True, nogil=True)
def _scale(g, dc):
    # A constant partial; +-1 (add, sub, neg) is a plain add, as in the batched sweep.
    if dc == 1.0:
        return g
    if dc == -1.0:
        return -g
    return _azmul(g, dc)


@njit(cache=True, nogil=True)
def _back_block(A, W, D, gr, i0, s0, n, nd, src, dc, base, j0, sj, new):
    # One operand of a block: A[i0 + e * s0] gains gr[e] times its partial, which is the
    # constant dc (src {_SRC_CONST}), or dc times D[base + e] (stored) or W[j0 + e * sj].
    # ``new`` (from the reverse plan): this is the adjoints' first write, they were not
    # zeroed, so it assigns.
    if s0 == 1 and i0 >= nd and (src == {_SRC_CONST} or src == {_SRC_STORED} or sj == 0 or sj == 1):
        ga = A[i0 : i0 + n]
        if src == {_SRC_CONST}:
{const}
        elif src != {_SRC_STORED} and sj == 0:
            d = dc * W[j0]
{bcast}
        else:
            dk = D[base : base + n] if src == {_SRC_STORED} else W[j0 : j0 + n]
{row}
        return
    if (s0 == 1 and i0 + n <= nd) or (s0 == 0 and i0 < nd):
        return  # constants and parameters: no adjoints
    if s0 == 0 and i0 >= nd:  # a broadcast operand collects the sum over the block
        t = 0.0
        for e in range(n):
            if src == {_SRC_CONST}:
                t += _scale(gr[e], dc)
            else:
                t += _azmul(gr[e], dc * (D[base + e] if src == {_SRC_STORED} else W[j0 + e * sj]))
        A[i0] = (0.0 if new else A[i0]) + t
        return
    for e in range(n):
        j = i0 + e * s0
        if j >= nd:
            if src == {_SRC_CONST}:
                v = _scale(gr[e], dc)
            else:
                v = _azmul(gr[e], dc * (D[base + e] if src == {_SRC_STORED}
                                        else W[j0 + e * sj]))
            A[j] = (0.0 if new else A[j]) + v
'''



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
    args = "prog, W, T, nv" if point else "prog, W, T, D, nv, m"
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
                pk = op.partials[k]
                body.add(f"if {_SLOTS[k]} >= nd:")
                body.add(f"tk = T[{_SLOTS[k]}]", 1)
                body.add("for d in range(nv):", 1)
                body.add("for p in range(m):", 2)
                if pk in ("1.0", "-1.0"):
                    body.add(f"tr[d, p] {'+' if pk == '1.0' else '-'}= tk[d, p]", 3)
                else:
                    body.add(f"tr[d, p] += _azmul(tk[d, p], D[{k}, p])", 3)
        lines += _case(kw, op, body.lines, fast=_fast_paths_tangent(op) if point else ())
        kw = "elif"
    return "\n".join(lines)


def _reverse_hvp(point: bool) -> str:
    """Adjoints ``A`` and their tangents ``Ad`` (forward-over-reverse) in one pass back.

    For operand k of an instruction with result r:
    ``A[k] += A[r] * d_k`` and ``Ad[k] += Ad[r] * d_k + A[r] * sum_j d2_kj * T[j]``,
    every product taken with the zero-times-anything-is-zero rule.
    """
    args = "prog, W, T, A, Ad, nv" if point else "prog, W, T, A, Ad, D, S, nv, m"
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
            pk, slot = op.partials[k], _SLOTS[k]
            js = [j for j in range(op.arity) if (k, j) in seconds]
            g = "g" if point else "gr[p]"
            gd = "Ad[jr, d]" if point else "gdr[d, p]"
            if pk == "1.0":
                first, dfirst = g, gd
            elif pk == "-1.0":
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
    return "\n".join(lines)


_NJIT = """
def njit(**options):
    # IEEE arithmetic everywhere: 1/0 is inf and 0/0 is NaN (numpy's rules), never a
    # ZeroDivisionError from inside a sweep.
    return _njit(error_model="numpy", **options)
"""


def generate_source() -> str:
    """Return the complete source of the kernel module."""
    parts = [
        '"""Generated by tapejit._codegen from the op table. Do not edit."""',
        "import math",
        "import numpy as np",
        "from numba import njit as _njit",
        _NJIT,
        HELPERS,
        _libm.SOURCE,
        _partial_source_tables(),
        _forward(),
        _back_block_source(),
        _forward_point(),
        _forward_partials_point(),
        _reverse_stored_point(),
        _forward_partials(),
        _reverse_stored(),
        *(f(point) for f in (_forward_tangent, _reverse_hvp) for point in (False, True)),
        _drivers.SUPPORT,
        _drivers.POINT,
        _drivers.BATCH,
    ]
    return "\n\n".join(textwrap.dedent(p).strip("\n") + "\n" for p in parts)


def cache_dir() -> Path:
    """Directory that holds the generated kernel source and Numba's cache of it.

    ``TAPEJIT_CACHE_DIR`` overrides the default ``$XDG_CACHE_HOME/tapejit`` (or
    ``~/.cache/tapejit``); an unwritable location falls back to the temp directory.
    """
    env = os.environ.get("TAPEJIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tapejit"


def _write_once(path: Path, source: str) -> None:
    if path.exists() and path.read_text() == source:
        return  # keep the mtime: Numba's cache index is keyed on it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(source)
    os.replace(tmp, path)


def _roots() -> tuple[Path, Path]:
    return cache_dir(), Path(tempfile.gettempdir()) / f"tapejit-{os.getuid()}"


_MODULE_NAME = re.compile(r"tapejit_kernels_([0-9a-f]{16})")


class _KernelModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds kernel modules by name for Numba's cache of *user* functions.

    A user's ``cache=True`` function that calls :func:`tapejit.jit_value_and_grad` is
    cached with the name of the kernel module it was compiled against, and loading it
    imports that module. After the kernels change (a new op table, a new tapejit) the
    module has another name: this finder loads the old one from the cache directory, or
    gives an empty stand-in when it is gone, so that the cached function loads and its
    stamp check raises the clear error of ``_jit_api`` (not ``ModuleNotFoundError``).
    """

    def find_spec(self, fullname, path=None, target=None):
        m = _MODULE_NAME.fullmatch(fullname)
        if m is None:
            return None
        for root in _roots():
            candidate = root / m.group(1) / f"{fullname}.py"
            if candidate.is_file():
                return importlib.util.spec_from_file_location(fullname, candidate)
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # the default: an empty module

    def exec_module(self, module) -> None:
        module._tapejit_stand_in = True


if not any(isinstance(f, _KernelModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_KernelModuleFinder())


def load_kernels() -> ModuleType:
    """Write the generated module (once per distinct source) and import it."""
    source = generate_source()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"tapejit_kernels_{digest}"
    if name in sys.modules and not getattr(sys.modules[name], "_tapejit_stand_in", False):
        return sys.modules[name]
    path = None
    for root in _roots():
        candidate = root / digest / f"{name}.py"
        try:
            _write_once(candidate, source)
        except OSError:
            continue
        path = candidate
        break
    if path is None:
        raise OSError(
            "tapejit could not write its kernel module to any cache directory; "
            "set TAPEJIT_CACHE_DIR to a writable directory"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
