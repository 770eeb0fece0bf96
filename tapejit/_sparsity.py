"""Sparsity patterns of a tape's Jacobian and Hessian, read from its program.

Both patterns come from *index-set propagation* over the instructions, in recording order,
with no evaluation: every slot gets the set of inputs its value depends on (constants and
parameters: the empty set; input ``i``: ``{i}``), and an instruction's result element gets
the union of the sets of the operand elements it reads **through a partial that is not
identically zero**. Which partials are identically zero, and which second partials, is
read from the op table (``partial_source`` of each :class:`~tapejit._ops.Op`'s
``partials`` and ``second`` expressions), never from op names: a comparison, ``floor``,
``stop_gradient`` or the condition of ``where`` pass nothing on.

* The **Jacobian pattern** is the output slots' sets.
* The **Hessian pattern** of a one-output tape (Walther's nonlinear interaction domains):
  a backward pass marks the slots whose adjoint can be nonzero (reached from the output
  through nonzero partials), and every instruction element with a live result adds, for
  each pair of operands ``(j, k)`` whose second partial is not identically zero, the
  block ``X_j x X_k`` (and its transpose), where ``X`` are the forward sets. That is
  ``H = sum_v vbar * sum_jk d2phi/du_j du_k grad(u_j) grad(u_k)^T`` read structurally.

The patterns are exact for the recorded branch up to numerical cancellation (``x*y - y*x``
gives a zero entry the pattern keeps): every entry a point on this branch can make nonzero
is in the pattern, so a colouring built on it recovers the derivative exactly at every
point. Parameters and constants count as possibly nonzero whatever their values: a
pattern never depends on the value of a parameter (``params[0] * x`` keeps its entry when
the parameter is 0), so one pattern serves every parameter value.

Instruction families (whole-block routines) have rules here, by family name:

* ``matmul``: ``C[i, j]`` depends on row ``i`` of ``A`` and column ``j`` of ``B``, and
  where one operand is constant (the tape's own numbers, fixed) only through its
  nonzeros, so ``A @ x`` with a sparse constant ``A`` has ``A``'s pattern (a parameter
  matrix counts as dense); second order: the bilinear pairs ``A[:, k] x B[k, :]`` when
  both operands vary;
* ``reduce``: each result on its own lane; ``prod`` pairs every two *different* elements
  of the lane (each element enters a product linearly, so no element pairs with itself:
  an input gets a diagonal entry only where it reaches two elements, ``x[0] * x[0]``),
  which is **exact**, the pattern of the same product written as a Python loop;
  ``sum``, ``max`` and ``min`` have zero second derivatives;
* ``scan``: prefix unions along the lane; ``cumprod`` pairs the elements of its longest
  live prefix as ``prod`` does (the shorter prefixes' pairs are among them);
* ``loop`` (:func:`tapejit.scan`, :func:`tapejit.fori_loop`): **exact**, the patterns of
  the same loop unrolled. The body is read once, as a map from its outputs to the body
  inputs they depend on (carry, the step's ``x``, closure) and, per set of live body
  outputs, the pairs of body inputs that interact nonlinearly (this module run on the
  body, so nested loops and families keep their own rules); each step composes that map
  with its own input sets (the carry's from the step before, row ``t`` of ``xs``, the
  closure): a few unions per body output per step, no walk of the body. Backwards, the
  transposed map carries the output sets (and liveness) from the last step to the first.
  Once the steps' inputs repeat (the carry's sets have stopped changing and the rows of
  ``xs`` are the same from there on; backwards, the ys' sets), every remaining step is
  the same and is filled in, not computed, so a 10,000-step integrator costs about as
  much as a few steps. The result's status element has empty sets (its derivative is
  zero: 0.0, or NaN where a guard failed), a checkpoint the carry's sets after its step.
  Where the unrolled tape would see a constant that the body sees as an input (a
  constant initial carry, say), the rules for constant operands (``matmul``'s nonzeros)
  cannot use its value, so the pattern may be larger there, never smaller;
* every other family (``solve``, ``inv``, ``det``, ``slogdet``, ``cholesky``,
  ``solve_triangular``, ``eigh``, ``svd``, ``qr``, and any family this module does not
  know): **conservative**, every result depends on every element of every operand, and
  second order pairs each operand that enters nonlinearly with all operands (the
  right-hand side of ``solve`` and ``solve_triangular`` enters linearly).

The sets are Python frozensets, one per slot, shared between slots wherever an
instruction only passes one operand's sets on (list slicing, no copy); the unions of a
block are one ``map`` over its operand lists. The cost is one Python step per instruction
plus one C-level union per element of a binary block, about 0.1 s for 100,000 scalar
instructions; a loop costs its body's once, then a few unions per body output per step
until its steps repeat (see the performance page).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from ._fam_loop import LoopAttrs, checkpoints, result_layout
from ._fam_reduce import CUMPROD, PROD
from ._ops import OPS, partial_source
from ._program import FAMILIES, FIRST_FAMILY, LAST_OPCODE, Program

_EMPTY: frozenset[int] = frozenset()
_LIVE: frozenset[int] = frozenset((0,))  # one output's set: a live adjoint
_union = frozenset.union


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: the propagation allocates a list or a set per
    instruction or element (none in a cycle), and each collection it would trigger walks
    every one allocated so far (at 100,000 scalar instructions, most of the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _op_structure() -> tuple[list[tuple[int, ...]], list[tuple[tuple[int, int], ...]]]:
    """Per opcode: the operands whose partial is not identically zero, and the operand
    pairs ``(j, k)``, ``j <= k``, whose second partial is not identically zero."""
    first: list[tuple[int, ...]] = [()] * (LAST_OPCODE + 1)
    second: list[tuple[tuple[int, int], ...]] = [()] * (LAST_OPCODE + 1)
    for op in OPS:
        first[op.code] = tuple(k for k, p in enumerate(op.partials)
                               if partial_source(p).kind != "zero")
        upper = [(j, k) for j in range(op.arity) for k in range(j, op.arity)]
        second[op.code] = tuple(jk for jk, p in zip(upper, op.second, strict=True)
                                if partial_source(p).kind != "zero")
    return first, second


_FIRST, _SECOND = _op_structure()

#: Families whose operand ``k`` enters linearly (their other operands, nonlinearly):
#: the right-hand side of a solve. A family absent here is nonlinear in every operand.
_LINEAR_OPERANDS: dict[str, frozenset[int]] = {
    "solve": frozenset({1}),
    "solve_triangular": frozenset({1}),
}


def _take(S: list, a: int, st: int, n: int) -> list:
    """The ``n`` entries ``S[a + e * st]`` as a list (a slice: C speed)."""
    if n == 1 or st == 0:
        return [S[a]] * n
    if st > 0:
        return S[a : a + (n - 1) * st + 1 : st]
    stop = a + (n - 1) * st - 1
    return S[a : (stop if stop >= 0 else None) : st]


def _index(a: int, st: int, n: int) -> slice | int:
    """The slots ``a + e * st``, ``e < n``, as a numpy index (a slice, or ``a``)."""
    if n == 1 or st == 0:
        return a
    if st > 0:
        return slice(a, a + (n - 1) * st + 1, st)
    stop = a + (n - 1) * st - 1
    return slice(a, stop if stop >= 0 else None, st)


class _Rows:
    """The program's instruction rows as Python lists (one ``tolist`` each), and per
    operand whether any of its elements is a differentiable slot (``varies``)."""

    def __init__(self, p: Program) -> None:
        self.ops = p.opcodes.tolist()
        self.results = p.results.tolist()
        self.sizes = p.sizes.tolist()
        self.args = p.args.tolist()
        self.strides = p.strides.tolist()
        self.attr_at = p.attr_offsets.tolist()
        self.attrs = p.attrs.tolist()
        last = p.args + (p.sizes[:, None] - 1) * p.strides
        family = (p.opcodes >= FIRST_FAMILY)[:, None]
        reach = np.where(family, p.args + p.strides - 1, np.maximum(p.args, last))
        self.varies = (p.used() & (reach >= p.first_adjoint)).tolist()
        self.loops: dict[int, _Loop] = {}  # instruction -> its loop, read on first use


def _family_attrs(rows: _Rows, i: int) -> tuple[str, tuple[int, ...]]:
    fam = FAMILIES[rows.ops[i]]
    at = rows.attr_at[i]
    return fam.name, tuple(rows.attrs[at : at + len(fam.attrs)])


def _blocks(S: list, rows: _Rows, i: int) -> list[list]:
    """A family instruction's operand blocks (each contiguous; its length in its stride
    field)."""
    fam = FAMILIES[rows.ops[i]]
    return [S[a : a + length] for a, length in
            zip(rows.args[i][: fam.arity], rows.strides[i][: fam.arity], strict=True)]


def _union_all(sets: Sequence[frozenset]) -> frozenset:
    return _EMPTY.union(*sets) if sets else _EMPTY


def _matmul_parts(attrs: tuple[int, ...], A: list, B: list):
    """Per product ``z``: ``A``'s row sets and columns' sets, ``B``'s column and rows'."""
    _batch, m, k, n, _ba, _bb, ta, tb = attrs

    def a_row(z: int, i: int) -> list:  # A[z, i, :]
        base = z * m * k
        return A[base + i : base + m * k : m] if ta else A[base + i * k : base + (i + 1) * k]

    def a_col(z: int, kk: int) -> list:  # A[z, :, kk]
        base = z * m * k
        return A[base + kk * m : base + (kk + 1) * m] if ta else A[base + kk : base + m * k : k]

    def b_col(z: int, j: int) -> list:  # B[z, :, j]
        base = z * k * n
        return B[base + j * k : base + (j + 1) * k] if tb else B[base + j : base + k * n : n]

    def b_row(z: int, kk: int) -> list:  # B[z, kk, :]
        base = z * k * n
        return B[base + kk : base + k * n : k] if tb else B[base + kk * n : base + (kk + 1) * n]

    return a_row, a_col, b_col, b_row


def _constant_blocks(p: Program, rows: _Rows, i: int) -> list[np.ndarray | None]:
    """Per operand of family instruction ``i``: its values when it is all constants (the
    tape's own, fixed: using them keeps the pattern exact), else None."""
    fam = FAMILIES[rows.ops[i]]
    nc = p.n_consts
    return [p.consts[a : a + length] if a + length <= nc else None
            for a, length in zip(rows.args[i][: fam.arity], rows.strides[i][: fam.arity],
                                 strict=True)]


def _matmul_nonzeros(attrs: tuple[int, ...], values: list[np.ndarray | None]):
    """For a product with a constant operand: ``A``'s ``(m, k)`` or ``B``'s ``(k, n)``
    nonzero mask of product ``z`` (a function of ``z``), for the other operand None."""
    _batch, m, k, n, _ba, _bb, ta, tb = attrs

    def a_nz(z: int) -> np.ndarray:
        v = values[0][z * m * k : (z + 1) * m * k]
        return (v.reshape(k, m).T if ta else v.reshape(m, k)) != 0

    def b_nz(z: int) -> np.ndarray:
        v = values[1][z * k * n : (z + 1) * k * n]
        return (v.reshape(n, k).T if tb else v.reshape(k, n)) != 0

    return (a_nz if values[0] is not None else None,
            b_nz if values[1] is not None else None)


def _family_forward(name: str, attrs: tuple[int, ...], blocks: list[list], size: int,
                    values: list[np.ndarray | None]) -> list:
    """The result sets of one family instruction (``values``: its constant operands'
    values, see :func:`_constant_blocks`)."""
    if name == "matmul":
        batch, m, _k, n, ba, bb, _, _ = attrs
        a_row, _, b_col, _ = _matmul_parts(attrs, *blocks)
        a_nz, b_nz = _matmul_nonzeros(attrs, values)
        if (a_nz is None) != (b_nz is None):  # a constant operand: only its nonzeros count
            out = []
            for z in range(batch):
                za, zb = (z if ba else 0), (z if bb else 0)
                if a_nz is not None:
                    nz, cols = a_nz(za), [b_col(zb, j) for j in range(n)]
                    for i in range(m):
                        ks = np.flatnonzero(nz[i]).tolist()
                        out += [_union_all([c[kk] for kk in ks]) for c in cols]
                else:
                    nz, rws = b_nz(zb), [a_row(za, i) for i in range(m)]
                    ks = [np.flatnonzero(nz[:, j]).tolist() for j in range(n)]
                    for r in rws:
                        out += [_union_all([r[kk] for kk in kj]) for kj in ks]
            return out
        out: list = []
        rows_of: dict[int, list] = {}
        cols_of: dict[int, list] = {}
        for z in range(batch):
            za, zb = (z if ba else 0), (z if bb else 0)
            if za not in rows_of:
                rows_of[za] = [_union_all(a_row(za, i)) for i in range(m)]
            if zb not in cols_of:
                cols_of[zb] = [_union_all(b_col(zb, j)) for j in range(n)]
            rows, cols = rows_of[za], cols_of[zb]
            if not any(cols):
                for r in rows:
                    out += [r] * n
            elif not any(rows):
                out += cols * m
            else:
                for r in rows:
                    out += [r | c for c in cols]
        return out
    if name in ("reduce", "scan"):
        _kind, outer, n, inner = attrs
        A = blocks[0]
        if name == "reduce":
            return [_union_all(A[o * n * inner + i : (o + 1) * n * inner : inner])
                    for o in range(outer) for i in range(inner)]
        out = [_EMPTY] * size
        for o in range(outer):
            for i in range(inner):
                acc = _EMPTY
                for at in range(o * n * inner + i, (o + 1) * n * inner, inner):
                    acc = acc | A[at] if A[at] else acc
                    out[at] = acc
        return out
    return [_union_all([_union_all(b) for b in blocks])] * size


def _distinct_pairs(sets: list[frozenset], L: list, R: list) -> frozenset:
    """Append pairs whose products make ``union(sets[j] x sets[k] for j != k)`` (the
    Hessian pattern of a product of elements with input sets ``sets``) to ``L``, ``R``,
    and return the union of ``sets``.

    By halving: each split pairs the union of its left part with that of its right part,
    so two elements are paired at the split that separates them, and an element never
    with itself. ``len(sets) - 1`` pairs, each element's set in ``log2(len(sets))``
    unions, where listing the pairs of elements would take ``len(sets) ** 2 / 2``."""
    if len(sets) == 1:
        return sets[0]
    mid = len(sets) // 2
    left = _distinct_pairs(sets[:mid], L, R)
    right = _distinct_pairs(sets[mid:], L, R)
    L.append(left)
    R.append(right)
    return left | right


def _family_pairs(name: str, attrs: tuple[int, ...], blocks: list[list],
                  live: np.ndarray, L: list, R: list) -> None:
    """Append the nonlinear interaction pairs of one family instruction whose result
    liveness is ``live`` (bool per result element) to ``L``, ``R``."""
    if name == "matmul":
        batch, m, k, n, ba, bb, _, _ = attrs
        _, a_col, _, b_row = _matmul_parts(attrs, *blocks)
        for z in range(batch):
            if not live[z * m * n : (z + 1) * m * n].any():
                continue
            za, zb = (z if ba else 0), (z if bb else 0)
            for kk in range(k):
                ca, rb = _union_all(a_col(za, kk)), _union_all(b_row(zb, kk))
                if ca and rb:
                    L.append(ca)
                    R.append(rb)
        return
    if name in ("reduce", "scan"):
        kind, outer, n, inner = attrs
        if (name, kind) not in (("reduce", PROD), ("scan", CUMPROD)):
            return  # sum, max, min, cumsum: zero second derivatives
        A = blocks[0]
        for o in range(outer):
            for i in range(inner):
                lane = range(o * n * inner + i, (o + 1) * n * inner, inner)
                if name == "reduce":
                    if not live[o * inner + i]:
                        continue
                    last = len(lane)
                else:
                    hits = np.flatnonzero(live[lane.start : lane.stop : inner])
                    if not len(hits):
                        continue
                    last = int(hits[-1]) + 1
                sets = [A[at] for at in lane[:last] if A[at]]
                if len(sets) > 1:
                    _distinct_pairs(sets, L, R)
        return
    if not live.any():
        return
    linear = _LINEAR_OPERANDS.get(name, frozenset())
    us = [_union_all(b) for b in blocks]
    every = _union_all(us)
    for j, u in enumerate(us):
        if u and j not in linear:
            L.append(u)
            R.append(every)


def input_sets(p: Program, needed: bytearray | None = None,
               rows: _Rows | None = None) -> list[frozenset]:
    """Per slot, the inputs (numbered ``0 .. n_inputs - 1``) its value depends on through
    partials that are not identically zero; with ``needed`` (0 or 1 per slot, closed
    backwards: the operands of a needed result are needed), only for the instructions
    with a needed result (the others' sets are left empty)."""
    nd = p.first_adjoint
    S: list[frozenset] = [_EMPTY] * p.n_slots
    S[nd : nd + p.n_inputs] = [frozenset((i,)) for i in range(p.n_inputs)]
    rows = rows or _Rows(p)
    for i, op in enumerate(rows.ops):
        r, n = rows.results[i], rows.sizes[i]
        if needed is not None and not (needed[r] if n == 1 else 1 in needed[r : r + n]):
            continue
        if op >= FIRST_FAMILY:
            name, attrs = _family_attrs(rows, i)
            blocks = _blocks(S, rows, i)
            S[r : r + n] = (_loop_of(p, rows, i).results(*blocks) if name == "loop" else
                            _family_forward(name, attrs, blocks, n,
                                            _constant_blocks(p, rows, i)))
            continue
        a, st, varies = rows.args[i], rows.strides[i], rows.varies[i]
        lists = [_take(S, a[k], st[k], n) for k in _FIRST[op] if varies[k]]
        if len(lists) == 1:
            S[r : r + n] = lists[0]
        elif lists:
            S[r : r + n] = list(map(_union, *lists))
    return S


def _backward(p: Program, rows: _Rows, seeds: np.ndarray) -> tuple[bytearray, bytearray]:
    """Per slot (0 or 1): whether its adjoint can be nonzero (``live``: the output slots
    ``seeds`` reach it backwards through partials that are not identically zero), and
    whether the Hessian pattern needs its input set (``needed``: an operand of a nonlinear
    pair of a live instruction, or an operand, through a nonzero partial, of a needed
    result; a family's operands: all their elements).

    Bytearrays: a scalar instruction reads and writes them as Python ints (numpy scalar
    indexing would cost more than the rest of its step); a block through numpy views."""
    nd = p.first_adjoint
    live, need = bytearray(p.n_slots), bytearray(p.n_slots)
    live_v = np.frombuffer(live, dtype=np.bool_)
    need_v = np.frombuffer(need, dtype=np.bool_)
    live_v[seeds] = True
    for i in range(len(rows.ops) - 1, -1, -1):
        op, r, n = rows.ops[i], rows.results[i], rows.sizes[i]
        if n == 1:
            lr, nr = live[r], need[r]
            if not (lr or nr):
                continue
        else:
            my_live, my_need = live_v[r : r + n], need_v[r : r + n]
            lr, nr = bool(my_live.any()), bool(my_need.any())
            if not (lr or nr):
                continue
        a, st = rows.args[i], rows.strides[i]
        if op >= FIRST_FAMILY:  # live: the operand elements a live result reaches, by
            gots = None  # the loop's rule; for the other families all of them
            if lr and _family_attrs(rows, i)[0] == "loop":
                gots = _loop_of(p, rows, i).backward(
                    [_LIVE if v else _EMPTY for v in live_v[r : r + n].tolist()])[:3]
            for k in range(FAMILIES[op].arity):
                if a[k] + st[k] <= nd:
                    continue
                need_v[max(a[k], nd) : a[k] + st[k]] = True
                if gots is not None:
                    at = a[k] + np.flatnonzero(np.fromiter(map(bool, gots[k]), np.bool_,
                                                           st[k]))
                    live_v[at[at >= nd]] = True
                elif lr:
                    live_v[max(a[k], nd) : a[k] + st[k]] = True
            continue
        varies = rows.varies[i]
        pairs = (_pair_operands(op, varies) if _SECOND[op] and lr else ())
        for k in _FIRST[op]:
            if not varies[k]:
                continue
            if n == 1 or st[k] == 0:  # one slot: live if any result element is
                if lr:
                    live[a[k]] = 1
                if nr:
                    need[a[k]] = 1
                continue
            at = _index(a[k], st[k], n)
            live_v[at] |= my_live
            need_v[at] |= my_need
        for k in pairs:
            if n == 1 or st[k] == 0:
                need[a[k]] = 1
            else:
                need_v[_index(a[k], st[k], n)] |= my_live
    return live, need


def _pair_operands(op: int, varies: list[bool]) -> set[int]:
    """The operands of op's nonlinear pairs whose both operands vary."""
    return {k for jk in _SECOND[op] if varies[jk[0]] and varies[jk[1]] for k in jk}


def _pattern(L: list[frozenset], n_cols: int) -> sp.csr_array:
    """The ``(len(L), n_cols)`` CSR matrix (float64 ones) whose row ``i`` is ``L[i]``."""
    lens = np.fromiter(map(len, L), dtype=np.int64, count=len(L))
    indptr = np.zeros(len(L) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    indices = np.fromiter(itertools.chain.from_iterable(L), dtype=np.int64,
                          count=int(indptr[-1]))
    m = sp.csr_array((np.ones(len(indices)), indices, indptr), shape=(len(L), n_cols))
    m.sort_indices()
    return m


def _as_bool(m: sp.sparray) -> sp.csr_array:
    """A CSR pattern with bool data, sorted indices and no explicit zeros."""
    m = sp.csr_array(m)
    m.sum_duplicates()
    m.eliminate_zeros()
    out = sp.csr_array((np.ones(m.nnz, dtype=bool), m.indices.astype(np.int64),
                        m.indptr.astype(np.int64)), shape=m.shape)
    out.sort_indices()
    return out


def _merge(s: frozenset, u: frozenset) -> frozenset:
    return s if u <= s else (u if not s else s | u)


def _family_backward(name: str, attrs: tuple[int, ...], res: list, lengths: list[int],
                     values: list[np.ndarray | None]) -> list[list]:
    """The output sets a family instruction's operand elements receive from its result
    elements' ``res`` (the transpose of :func:`_family_forward`'s rule)."""
    if name == "matmul":
        batch, m, k, n, ba, bb, ta, tb = attrs
        A = [[] for _ in range(lengths[0])]
        B = [[] for _ in range(lengths[1])]
        a_nz, b_nz = _matmul_nonzeros(attrs, values)
        for z in range(batch):
            za, zb = (z if ba else 0), (z if bb else 0)
            C = res[z * m * n : (z + 1) * m * n]
            if (a_nz is None) != (b_nz is None):  # a constant operand: its nonzeros
                if a_nz is not None:  # B[kk, j] <- C[i, j] for A[i, kk] != 0
                    nz = a_nz(za)
                    for kk in range(k):
                        ins = np.flatnonzero(nz[:, kk]).tolist()
                        for j in range(n):
                            B[zb * k * n + (j * k + kk if tb else kk * n + j)].append(
                                _union_all([C[i * n + j] for i in ins]))
                else:  # A[i, kk] <- C[i, j] for B[kk, j] != 0
                    nz = b_nz(zb)
                    for kk in range(k):
                        js = np.flatnonzero(nz[kk]).tolist()
                        for i in range(m):
                            A[za * m * k + (kk * m + i if ta else i * k + kk)].append(
                                _union_all([C[i * n + j] for j in js]))
                continue
            rows = [_union_all(C[i * n : (i + 1) * n]) for i in range(m)]
            cols = [_union_all(C[j : m * n : n]) for j in range(n)]
            for i in range(m):
                for kk in range(k):
                    A[za * m * k + (kk * m + i if ta else i * k + kk)].append(rows[i])
            for kk in range(k):
                for j in range(n):
                    B[zb * k * n + (j * k + kk if tb else kk * n + j)].append(cols[j])
        return [[_union_all(x) for x in A], [_union_all(x) for x in B]]
    if name in ("reduce", "scan"):
        _kind, outer, n, inner = attrs
        out = [_EMPTY] * lengths[0]
        for o in range(outer):
            for i in range(inner):
                lane = range(o * n * inner + i, (o + 1) * n * inner, inner)
                if name == "reduce":
                    for at in lane:
                        out[at] = res[o * inner + i]
                    continue
                acc = _EMPTY
                for at in reversed(lane):  # suffix unions
                    acc = _merge(acc, res[at])
                    out[at] = acc
        return [out]
    u = _union_all(res)
    return [[u] * length for length in lengths]


# ---------------------------------------------------------------------------------------
# loops: the body read once, then composed step by step
# ---------------------------------------------------------------------------------------
def _join(acc: frozenset, sets: Iterator[frozenset] | Sequence[frozenset]) -> frozenset:
    """``acc`` united with ``sets``: one of them where that is the union (shared, not
    copied), so the sets of a loop's steps stay few objects when they stop growing."""
    for s in sets:
        if s is acc or not s or s <= acc:
            continue
        acc = s if acc <= s else acc | s
    return acc


class _Body:
    """A loop body read once, in terms of its own inputs ``[carry | x | closure]``
    (numbered ``0 .. n_in - 1``) and outputs ``[next carry | y]``.

    ``step_deps[o]`` are the carry and x inputs output ``o`` depends on (indices into
    ``carry + x``), ``closure_deps[o]`` its closure inputs; ``reach[i]`` the outputs that
    depend on input ``i``; :meth:`pairs` the body's nonlinear interactions."""

    def __init__(self, body: Program, n_carry: int, n_x: int) -> None:
        self.program, self.rows = body, _Rows(body)
        S = input_sets(body, rows=self.rows)
        deps = [sorted(S[o]) for o in body.outputs.tolist()]
        k0 = n_carry + n_x
        self.step_deps = [tuple(i for i in d if i < k0) for d in deps]
        self.closure_deps = [tuple(i - k0 for i in d if i >= k0) for d in deps]
        reach: list[list[int]] = [[] for _ in range(body.n_inputs)]
        for o, d in enumerate(deps):
            for i in d:
                reach[i].append(o)
        self.reach = [tuple(r) for r in reach]
        self._pairs: dict[tuple[int, ...], list[tuple[int, int]]] = {}

    def pairs(self, live: tuple[int, ...]) -> list[tuple[int, int]]:
        """The pairs ``(i, j)``, ``i <= j``, of body inputs that interact nonlinearly in
        the body outputs ``live`` (the Hessian pattern of ``sum(w[o] * out[o] for o in
        live)`` in the body's inputs), kept per ``live``."""
        got = self._pairs.get(live)
        if got is None:
            body = self.program
            seeds = body.outputs[np.array(live, dtype=np.int64)]
            L, R = _interactions(body, self.rows, seeds)
            got = []
            if L:
                h = _pattern(L, body.n_inputs).T @ _pattern(R, body.n_inputs)
                h = sp.triu(_as_bool(h + h.T)).tocoo()
                got = list(zip(h.row.tolist(), h.col.tolist(), strict=True))
            self._pairs[live] = got
        return got


class _Loop:
    """A ``loop`` instruction read for propagation: its attributes and its body.

    Its result is ``status | checkpoints | final carry | ys`` (``_fam_loop.py``). Step
    ``t`` reads the carry ``C[t]`` (``C[0]``: operand ``a``), row ``t`` of operand ``b``
    and the closure ``c``, and gives ``C[t + 1]`` and row ``t`` of ``ys``; checkpoint
    ``k`` is ``C[(k + 1) every]``. The status's derivative is zero (0.0, or NaN where a
    guard failed), so its sets are empty. A step's sets are the body's dependencies
    composed with the step's input sets: a few unions per body output, no walk of the
    body. Once the steps' inputs repeat (the carry's sets stop changing and the rows of
    ``b`` are the same from there on), every later step is the same, and the rest is
    filled in without being computed."""

    def __init__(self, attrs: tuple[int, ...], body: Program) -> None:
        v = LoopAttrs.of(attrs)
        self.n, self.nc, self.nx, self.ny, self.every = (v.length, v.n_carry, v.n_x, v.n_y,
                                                         v.every)
        self.nck = checkpoints(self.n, self.every)
        _, self.carry0, self.ys0 = result_layout(self.n, self.nc, self.ny, self.every)
        self.body = _Body(body, self.nc, self.nx)

    def _row(self, b: list, t: int) -> list:
        return b[t * self.nx : (t + 1) * self.nx]

    def carries(self, a: list, b: list, c: list) -> tuple[list[list], list]:
        """The carries' sets ``C[0] .. C[n]`` (lists of ``n_carry``, the same list where
        they repeat) and the ys' sets (one flat list), from the operands' sets."""
        n, nc = self.n, self.nc
        body = self.body
        fixed = [_join(_EMPTY, [c[k] for k in ks]) for ks in body.closure_deps]
        tail = n - 1  # the rows of b from `tail` on are all the same
        while tail > 0 and self._row(b, tail - 1) == self._row(b, n - 1):
            tail -= 1
        C = list(a)
        carries, ys = [C], []
        for t in range(n):
            U = C + self._row(b, t)
            out = [_join(k, [U[i] for i in d]) for k, d in zip(fixed, body.step_deps,
                                                               strict=True)]
            nxt, y = out[:nc], out[nc:]
            ys += y
            if t >= tail and nxt == C:  # every later step is this one
                carries += [C] * (n - t)
                ys += y * (n - t - 1)
                break
            carries.append(nxt)
            C = nxt
        return carries, ys

    def results(self, a: list, b: list, c: list) -> list:
        """The result elements' sets."""
        carries, ys = self.carries(a, b, c)
        out = [_EMPTY]  # the status
        for k in range(self.nck):
            out += carries[(k + 1) * self.every]
        return out + carries[self.n] + ys

    def backward(self, res: list, steps: bool = False
                 ) -> tuple[list, list, list, list[list] | None]:
        """The sets operands ``a``, ``b``, ``c`` receive from the result elements' sets
        ``res`` (:meth:`results` transposed), and with ``steps`` the sets each step's
        next carry receives (``G[t]``, from the later steps and the results)."""
        n, nc, nx, ny, every = self.n, self.nc, self.nx, self.ny, self.every
        reach = self.body.reach
        ys = res[self.ys0 :]
        marks = res[1 : self.carry0]

        def mark(t: int) -> list:  # what the checkpoint of C[t] receives, or []
            if t == 0 or t % every:
                return []
            m = marks[(t // every - 1) * nc : (t // every) * nc]
            return m if any(m) else []

        head = 0  # steps 0 .. head read the same ys sets and no checkpoint's
        while (head + 1 < n and ys[(head + 1) * ny : (head + 2) * ny] == ys[:ny]
               and not mark(head + 1)):
            head += 1
        G = res[self.carry0 : self.ys0]
        bs: list = [_EMPTY] * (n * nx)
        K: list = [_EMPTY] * (len(reach) - nc - nx)
        Gs: list[list] | None = [G] * n if steps else None
        for t in range(n - 1, -1, -1):
            out = G + ys[t * ny : (t + 1) * ny]
            ins = [_join(_EMPTY, [out[o] for o in r]) for r in reach]
            if Gs is not None:
                Gs[t] = G
            bs[t * nx : (t + 1) * nx] = ins[nc : nc + nx]
            K = list(map(_merge, K, ins[nc + nx :]))
            nxt = ins[:nc]
            if m := mark(t):
                nxt = list(map(_merge, nxt, m))
            if t <= head and nxt == G:  # every earlier step is this one
                bs[: t * nx] = ins[nc : nc + nx] * t
                if Gs is not None:
                    Gs[:t] = [G] * t
                break
            G = nxt
        return G, bs, K, Gs

    def pairs(self, blocks: list[list], live: np.ndarray, L: list, R: list) -> None:
        """Append the nonlinear interaction pairs of the loop, whose result liveness is
        ``live``, to ``L``, ``R``: at each step, the body's pairs for the body outputs
        live at that step, over that step's input sets (a step that repeats the one
        before adds nothing new)."""
        a, b, c = blocks
        carries, _ = self.carries(a, b, c)
        res = [_LIVE if v else _EMPTY for v in live.tolist()]
        Gs = self.backward(res, steps=True)[3]
        ys, ny = res[self.ys0 :], self.ny
        before = None
        for t in range(self.n):
            X, out = self._row(b, t), Gs[t] + ys[t * ny : (t + 1) * ny]
            now = (out, carries[t], X)
            if now == before:
                continue
            before = now
            live_out = tuple(o for o, s in enumerate(out) if s)
            if not live_out:
                continue
            U = carries[t] + X + c
            for i, j in self.body.pairs(live_out):
                if U[i] and U[j]:
                    L.append(U[i])
                    R.append(U[j])


def _loop_of(p: Program, rows: _Rows, i: int) -> _Loop:
    """Loop instruction ``i`` of ``p``, read on first use and kept with ``rows``."""
    got = rows.loops.get(i)
    if got is None:
        _, attrs = _family_attrs(rows, i)
        body = p.subprograms[LoopAttrs.of(attrs).body].program
        got = rows.loops[i] = _Loop(attrs, body)
    return got


def output_sets(p: Program) -> list[frozenset]:
    """Per slot, the outputs (numbered ``0 .. n_outputs - 1``) that depend on its value
    through partials that are not identically zero: :func:`input_sets` run backwards."""
    nd = p.first_adjoint
    Y: list[frozenset] = [_EMPTY] * p.n_slots
    for j, o in enumerate(p.outputs.tolist()):
        Y[o] = Y[o] | {j}
    rows = _Rows(p)
    for i in range(len(rows.ops) - 1, -1, -1):
        op, r, n = rows.ops[i], rows.results[i], rows.sizes[i]
        res = Y[r : r + n]
        if not any(res):
            continue
        a, st = rows.args[i], rows.strides[i]
        if op >= FIRST_FAMILY:
            fam = FAMILIES[op]
            name, attrs = _family_attrs(rows, i)
            lengths = st[: fam.arity]
            gots = (_loop_of(p, rows, i).backward(res)[:3] if name == "loop" else
                    _family_backward(name, attrs, res, lengths, _constant_blocks(p, rows, i)))
            for k, got in enumerate(gots):
                if a[k] + lengths[k] > nd:
                    Y[a[k] : a[k] + lengths[k]] = list(map(_merge, Y[a[k] : a[k] + lengths[k]],
                                                           got))
            continue
        for k in _FIRST[op]:
            if not rows.varies[i][k]:
                continue
            if n == 1 or st[k] == 0:
                Y[a[k]] = _merge(Y[a[k]], res[0] if n == 1 else _union_all(res))
            else:
                at = _index(a[k], st[k], n)
                Y[at] = list(map(_merge, Y[at], res))
    return Y


@_no_gc()
def jacobian_sparsity(p: Program) -> sp.csr_array:
    """The ``(n_outputs, n_inputs)`` Jacobian pattern of a program (bool CSR).

    Propagated forwards (input sets) when there are at most as many inputs as outputs,
    else backwards (output sets): the sets then stay small where a long chain of
    instructions gathers many inputs into few outputs (a sum in a Python loop).
    """
    n_in, n_out = p.n_inputs, len(p.outputs)
    if n_in <= n_out:
        S = input_sets(p)
        return _as_bool(_pattern([S[o] for o in p.outputs.tolist()], n_in))
    Y = output_sets(p)
    nd = p.first_adjoint
    return _as_bool(_pattern(Y[nd : nd + n_in], n_out).T)


@_no_gc()
def hessian_sparsity(p: Program) -> sp.csr_array:
    """The ``(n_inputs, n_inputs)`` Hessian pattern of a one-output program (bool CSR,
    symmetric)."""
    L, R = _interactions(p, _Rows(p), p.outputs)
    n_in = p.n_inputs
    if not L:
        return _as_bool(sp.csr_array((n_in, n_in)))
    left, right = _pattern(L, n_in), _pattern(R, n_in)
    h = left.T @ right
    return _as_bool(h + h.T)


def _interactions(p: Program, rows: _Rows, seeds: np.ndarray
                  ) -> tuple[list[frozenset], list[frozenset]]:
    """The nonlinear interactions of ``p`` in the outputs at slots ``seeds``: input sets
    ``L[q]``, ``R[q]`` whose products ``L[q] x R[q]`` (and transposes) make the Hessian
    pattern of any weighted sum of those outputs."""
    live, needed = _backward(p, rows, seeds)
    live_v = np.frombuffer(live, dtype=np.bool_)
    S = input_sets(p, needed, rows)
    L: list[frozenset] = []
    R: list[frozenset] = []
    for i, op in enumerate(rows.ops):
        r, n = rows.results[i], rows.sizes[i]
        if op >= FIRST_FAMILY:
            name, attrs = _family_attrs(rows, i)
            if name == "loop":
                if live_v[r : r + n].any():
                    _loop_of(p, rows, i).pairs(_blocks(S, rows, i), live_v[r : r + n], L, R)
                continue
            _family_pairs(name, attrs, _blocks(S, rows, i), live_v[r : r + n], L, R)
            continue
        if not _SECOND[op] or not (live[r] if n == 1 else live_v[r : r + n].any()):
            continue
        mine = live_v[r : r + n]
        a, st, varies = rows.args[i], rows.strides[i], rows.varies[i]
        for j, k in _SECOND[op]:
            if not (varies[j] and varies[k]):
                continue
            lj, lk = _take(S, a[j], st[j], n), _take(S, a[k], st[k], n)
            if n == 1:
                L += lj
                R += lk
            else:
                L += itertools.compress(lj, mine)
                R += itertools.compress(lk, mine)
    return L, R
