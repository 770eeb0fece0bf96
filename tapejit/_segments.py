"""Segmented reverse sweeps: batched gradients of long tapes at the cost per instruction
of short ones.

A batched reverse sweep keeps every slot's value, adjoint and stored partials for each
point of a chunk, so the chunk of a long tape holds few points, and the cost of decoding
an instruction is shared by few. This module cuts an elementwise program into
*segments* of about :data:`SEGMENT_ELEMENTS` result elements and runs:

1. the segments' forward sweeps, first to last, each a program of its own over a small
   workspace, storing the *crossing* values: the values one segment reads from an
   earlier one (or the tape's inputs), and the tape's outputs; each segment's guards are
   checked in its sweep;
2. the segments' vjp sweeps, last to first, each
   workspace, so its chunks are wide: a segment's inputs are the crossing values it
   reads, its outputs the crossing values it defines plus the ones it reads that a later
   segment reads too. Their adjoints so far are its outputs' weights, so every adjoint
   gains its contributions in the order of the whole tape's reverse sweep, and the
   results are the same bits.

The vjp sweeps recompute their segment's forward values (the forward sweeps store only
the crossing values), the price of a bounded workspace. Crossing values and their
adjoints are held by column, a row of a block's points each. Only programs of elementwise
instructions are segmented (``split`` returns None for others), and an operand block
that straddles a segment's boundary keeps the tape unsegmented.

:class:`Segmented` holds the programs and the column maps; :func:`vjp_batch` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._program import GUARD_OUTCOME, GUARD_SLOT, Program, working_slots

#: Tapes whose reverse chunks hold fewer points than this are segmented...
SEGMENT_BELOW = 64
#: ...in calls at this many points or more (fewer share too little of a segment's cost).
SEGMENT_POINTS = 16
#: A one-output tape of scalar instructions too long for a chunk of two points takes its
#: one-point gradient kernel at each point (on the threads) of calls with fewer points
#: than this, instead of the segmented sweeps, which cost more below it (docs'
#: performance page).
POINT_BY_POINT_BELOW = 80
#: A one-output tape whose loops have scalar bodies takes its one-point gradient kernel
#: at each point (on the threads) of calls with fewer points than this: a batch runs
#: each step as chunk sweeps over too few points to share their dispatch, where one
#: point runs the body's scalar program (docs' performance page).
LOOP_POINT_BY_POINT_BELOW = 32
#: The same for values alone (``forward``), whose batched steps cost less.
LOOP_FORWARD_POINT_BY_POINT_BELOW = 7
#: The same for the tangent sweep (``jvp``, forward Jacobians) of a tape too long for a
#: chunk of two points, against the batched tangent sweep (unsegmented: from about this
#: many points it shares each instruction's dispatch well enough).
POINT_BY_POINT_JVP_BELOW = 12
#: A batched forward sweep, vjp, gradient or reverse Jacobian of a tape of blocks runs
#: one point at a time, on the threads (the kernels' point-by-point twins, the same
#: bits), when the points of a chunk (its width, or the call's points if fewer) times
#: this are at most the tape's result elements per instruction: the point sweep runs
#: each block as one loop that vectorizes, where a chunk of a few points loops over the
#: block's elements for each, and a segmented sweep makes most of its slots crossing
#: values (docs' performance page).
BLOCK_POINTWISE_RATIO = 8
#: Batched Hessian-vector products of a tape of blocks (this many result elements per
#: instruction or more) run the one-point kernel at each point when their chunks would
#: hold :data:`BLOCK_POINTWISE_HVP_CHUNK` points or fewer (each carries four values per
#: slot and point, so its chunks are narrower than the reverse sweeps').
BLOCK_HVP_ELEMENTS = 16
BLOCK_POINTWISE_HVP_CHUNK = 6
#: Result elements per segment: fewer segments share the per-call costs better, more
#: keep each workspace small (measured: docs' performance page).
SEGMENT_ELEMENTS = 1024
#: Points per block of a segmented call at least: the crossing values and their
#: adjoints are held for a block of points at a time, in about :data:`BLOCK_VALUES`.
BLOCK_POINTS = 1024
BLOCK_VALUES = 1 << 21
#: Values in a segment sweep's value workspace per thread (its adjoints and stored
#: partials take at most four times as many): four times a tape's, for chunks of about
#: 250 points; the wider chunks measured faster than smaller workspaces.
SEGMENT_VALUES = 1 << 18


@dataclass(frozen=True, eq=False)
class Segment:
    """One segment's program and where its arrays come from and go."""

    prog: np.ndarray  #: packed program of the segment's instructions (no guards)
    consts: np.ndarray  #: the constants it reads
    chunk: int  #: points per chunk of its sweeps
    in_cols: np.ndarray  #: crossing column of each input (a gap no instruction reads: 0)
    out_cols: np.ndarray  #: adjoint column weighting each output
    n_own: int  #: its first outputs are the crossing values it defines (value columns)
    back_pos: np.ndarray  #: the inputs whose adjoints it returns...
    back_cols: np.ndarray  #: ...and their adjoint columns


@dataclass(frozen=True, eq=False)
class Segmented:
    """A program cut into segments (see the module docstring)."""

    n_outputs: int  #: the tape's outputs
    n_cross: int  #: crossing slots (value columns; the adjoints have one more, zero)
    output_cols: np.ndarray  #: each tape output's crossing column (-1: no adjoint)
    output_fixed: np.ndarray  #: each tape output's constant or parameter slot (-1: none)
    fixed_guards: np.ndarray  #: guard rows on an input, a constant or a parameter
    input_cols: np.ndarray  #: each tape input's crossing column (the zero column: unread)
    segments: tuple[Segment, ...]  #: in program order


def _merge(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint intervals covering ``[lo, hi]``: their starts, ends and first new slot
    (offsets from 0, the intervals laid end to end)."""
    if not len(lo):
        e = np.zeros(0, np.int64)
        return e, e, e
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    top = np.maximum.accumulate(hi)
    new = np.ones(len(lo), bool)
    new[1:] = lo[1:] > top[:-1] + 1
    starts = lo[new]
    idx = np.flatnonzero(new)
    ends = np.maximum.reduceat(top, idx) if len(idx) else top[:0]
    base = np.zeros(len(starts), np.int64)
    np.cumsum(ends[:-1] - starts[:-1] + 1, out=base[1:])
    return starts, ends, base


def _map(slots: np.ndarray, starts: np.ndarray, base: np.ndarray, to: int) -> np.ndarray:
    """New slots of ``slots`` (each inside one interval): ``to`` plus its offset.
    (Slots outside every interval get some number, for ``np.where`` to discard.)"""
    if not len(starts):
        return slots
    j = np.maximum(np.searchsorted(starts, slots, side="right") - 1, 0)
    return to + base[j] + (slots - starts[j])


def split(p: Program, elements: int = SEGMENT_ELEMENTS) -> Segmented | None:
    """``p`` cut into segments of about ``elements`` result elements, or None when it
    has instruction families or sub-programs, fewer than two segments, or an operand
    block that straddles the inputs and results, or constants and parameters."""
    n = len(p)
    if n == 0 or p.has_families or p.subprograms:
        return None
    sizes = p.sizes.astype(np.int64)
    nc, nd, nf, n_slots = p.n_consts, p.first_adjoint, p.n_fixed, p.n_slots
    results = p.results.astype(np.int64)
    arity_mask = p.used()
    # Each operand's slot range, per instruction.
    a0 = p.args.astype(np.int64)
    a1 = a0 + (sizes[:, None] - 1) * p.strides.astype(np.int64)
    lo, hi = np.minimum(a0, a1), np.maximum(a0, a1)
    # A segment starts where the element count passes a multiple of ``elements``, except
    # inside an operand block that spans several instructions' results.
    bucket = (results - nf) // max(int(elements), 1)
    cut = np.zeros(n, bool)
    cut[1:] = bucket[1:] != bucket[:-1]
    span = arity_mask & (lo >= nf)
    first = np.searchsorted(results, lo[span], side="right") - 1
    last = np.searchsorted(results, hi[span], side="right") - 1
    inside = np.zeros(n + 1, np.int64)
    np.add.at(inside, first[first < last] + 1, 1)
    np.add.at(inside, last[first < last] + 1, -1)
    cut &= np.cumsum(inside)[:n] == 0
    seg_of = np.cumsum(cut)
    n_seg = int(seg_of[-1]) + 1
    if n_seg < 2:
        return None
    # The segment defining each slot: -2 constants and parameters, -1 inputs.
    defseg = np.full(n_slots, -2, np.int64)
    defseg[nd:nf] = -1
    defseg[nf:] = np.repeat(seg_of, sizes)
    # Every operand slot each result element reads, and the segment reading it.
    inst, _, slots = p.elements()
    used = p.used()[inst]
    reader = seg_of[inst][:, None]
    cross = used & (slots >= nd) & (defseg[slots] != reader)
    outputs = p.outputs.astype(np.int64)
    crossing = np.union1d(slots[cross], outputs[outputs >= nd])
    col = np.full(n_slots, len(crossing), np.int64)  # the zero column
    col[crossing] = np.arange(len(crossing))
    # The last segment reading each crossing slot (n_seg: a tape output, weighted first).
    last = np.full(n_slots, -1, np.int64)
    np.maximum.at(last, slots[cross], np.broadcast_to(reader, slots.shape)[cross])
    last[outputs[outputs >= nd]] = n_seg

    first_inst = np.searchsorted(seg_of, np.arange(n_seg + 1))
    elem_at = np.concatenate([[0], np.cumsum(sizes)])
    segments = []
    for s in range(n_seg):
        i0, i1 = first_inst[s], first_inst[s + 1]
        m = arity_mask[i0:i1]
        slo, shi = lo[i0:i1], hi[i0:i1]
        kind_lo = _kind(slo, nc, nd, defseg, s)
        if (kind_lo != _kind(shi, nc, nd, defseg, s))[m].any():
            return None  # an operand block straddles a boundary
        c_sel = m & (kind_lo == _CONST)
        e_sel = m & (kind_lo == _EARLIER)
        c_st, c_en, c_base = _merge(slo[c_sel], shi[c_sel])
        e_st, e_en, e_base = _merge(slo[e_sel], shi[e_sel])
        consts = np.concatenate([p.consts[a : b + 1] for a, b in zip(c_st, c_en, strict=True)]
                                ) if len(c_st) else np.zeros(0)
        nc_s = len(consts)
        nd_s = nc_s + p.n_params
        in_slots = np.concatenate([np.arange(a, b + 1) for a, b in zip(e_st, e_en, strict=True)]
                                  ) if len(e_st) else np.zeros(0, np.int64)
        nf_s = nd_s + len(in_slots)
        r0 = results[i0]
        args = a0[i0:i1].copy()
        kind = _kind(args, nc, nd, defseg, s)
        args = np.where(m & (kind == _CONST), _map(args, c_st, c_base, 0), args)
        args = np.where(m & (kind == _PARAM), args - nc + nc_s, args)
        args = np.where(m & (kind == _EARLIER), _map(args, e_st, e_base, nd_s), args)
        args = np.where(m & (kind == _LOCAL), args - r0 + nf_s, args)
        args = np.where(m, args, 0)
        # The crossing slots it reads: their adjoints go back; the ones a later segment
        # reads too (or a tape output) are outputs, weighted by their adjoints so far.
        e0, e1 = elem_at[i0], elem_at[i1]
        reads = np.unique(slots[e0:e1][cross[e0:e1]])
        back_pos = _map(reads, e_st, e_base, 0)
        through = reads[last[reads] > s]
        mine = crossing[defseg[crossing] == s]
        out_slots = np.concatenate([mine - r0 + nf_s, _map(through, e_st, e_base, nd_s)])
        guards = p.guards[defseg[p.guards[:, GUARD_SLOT]] == s].copy()
        guards[:, GUARD_SLOT] += nf_s - r0
        seg = Program(
            opcodes=p.opcodes[i0:i1], args=args, sizes=sizes[i0:i1],
            strides=p.strides[i0:i1], consts=consts, n_params=p.n_params,
            n_inputs=len(in_slots), outputs=out_slots, guards=guards)
        prog, seg_consts = seg.pack()
        segments.append(Segment(
            prog=prog, consts=seg_consts, chunk=_chunk(prog),
            in_cols=np.where(col[in_slots] < len(crossing), col[in_slots], 0),
            out_cols=col[np.concatenate([mine, through])], n_own=len(mine), back_pos=back_pos,
            back_cols=col[reads]))
    return Segmented(
        n_outputs=len(outputs), n_cross=len(crossing),
        output_cols=np.where(outputs >= nd, col[outputs], -1),
        output_fixed=np.where(outputs < nd, outputs, -1),
        fixed_guards=p.guards[defseg[p.guards[:, GUARD_SLOT]] < 0],
        input_cols=col[p.inputs], segments=tuple(segments))


_CONST, _PARAM, _EARLIER, _LOCAL, _LATER = range(5)


def _kind(slots: np.ndarray, nc: int, nd: int, defseg: np.ndarray, s: int) -> np.ndarray:
    """Where each slot is, for segment ``s``: a constant, a parameter, a value of an
    earlier segment (or an input), its own result, or a later one's (never read)."""
    d = defseg[np.clip(slots, 0, len(defseg) - 1)]
    return np.select([slots < nc, slots < nd, d < s, d == s], [_CONST, _PARAM, _EARLIER,
                                                                _LOCAL], _LATER)


def _chunk(prog: np.ndarray) -> int:
    from ._kernels.runtime import CHUNK_MAX

    return int(max(1, min(CHUNK_MAX, SEGMENT_VALUES // max(working_slots(prog), 1))))


def vjp_batch(sg: Segmented, run, consts: np.ndarray, plans: list, X: np.ndarray,
              P: np.ndarray, WT: np.ndarray, Y: np.ndarray, G: np.ndarray,
              valid: np.ndarray) -> None:
    """The batched vjp of a segmented program: outputs ``Y``, ``WT @ J`` in ``G`` and the
    guards' verdict in ``valid``, as ``vjp_batch`` of the kernels gives them.

    ``run(kernel, n, chunk, *args)`` runs a batched kernel; ``consts`` is the tape's
    constant pool; ``plans[j]`` is segment ``j``'s reverse plan (None: the kernels
    compute it).
    """
    n = X.shape[0]
    n_cross = sg.n_cross
    block = max(BLOCK_POINTS, BLOCK_VALUES // max(n_cross + 1, 1))
    seeded = np.flatnonzero(sg.output_cols >= 0)
    read = sg.input_cols < n_cross
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        m = b1 - b0
        Xb = X[b0:b1]
        Pb = P if P.shape[0] == 1 else P[b0:b1]
        # Crossing values and adjoints by column (a row of points each): each segment
        # gathers and scatters a few whole rows, not a few floats of every point's row.
        # The segments' forward sweeps fill the values, and check the guards.
        K = np.zeros((n_cross + 1, m))
        K[sg.input_cols[read]] = Xb[:, read].T
        ok = valid[b0:b1]
        ok[:] = _fixed_guards(sg, consts, Xb, Pb)
        seg_ok = np.empty(m, np.uint8)
        for seg in sg.segments:
            Ys = np.empty((m, len(seg.out_cols)))
            run("forward_batch", m, seg.chunk, seg.prog, seg.consts,
                np.ascontiguousarray(K[seg.in_cols].T), Pb, Ys, seg_ok)
            K[seg.out_cols[: seg.n_own]] = Ys[:, : seg.n_own].T
            ok &= seg_ok
        Y[b0:b1] = _outputs(sg, K, consts, Pb, m)
        A = np.zeros((n_cross + 1, m))
        W = WT if WT.shape[0] == 1 else WT[b0:b1]
        for k in seeded:  # the outputs' weights, in order, as the kernels seed them
            A[sg.output_cols[k]] += W[:, k]
        for j in range(len(sg.segments) - 1, -1, -1):
            seg = sg.segments[j]
            Gs = np.empty((m, len(seg.in_cols)))
            run("vjp_batch", m, seg.chunk, seg.prog, plans[j], seg.consts,
                np.ascontiguousarray(K[seg.in_cols].T), Pb,
                np.ascontiguousarray(A[seg.out_cols].T),
                np.empty((m, len(seg.out_cols))), Gs, seg_ok)
            A[seg.back_cols] = Gs[:, seg.back_pos].T
        A[-1] = 0.0
        G[b0:b1] = A[sg.input_cols].T


def _fixed(slots: np.ndarray, consts: np.ndarray, Pb: np.ndarray, m: int) -> np.ndarray:
    """``(len(slots), m)`` values of constant and parameter slots."""
    nc = len(consts)
    out = np.empty((len(slots), m))
    for j, s in enumerate(slots):
        out[j] = consts[s] if s < nc else Pb[:, s - nc]
    return out


def _outputs(sg: Segmented, K: np.ndarray, consts: np.ndarray, Pb: np.ndarray,
             m: int) -> np.ndarray:
    """The tape's outputs at the block's points, ``(m, n_outputs)``."""
    Yb = np.empty((m, sg.n_outputs))
    cross = sg.output_cols >= 0
    Yb[:, cross] = K[sg.output_cols[cross]].T
    if not cross.all():
        Yb[:, ~cross] = _fixed(sg.output_fixed[~cross], consts, Pb, m).T
    return Yb


def _fixed_guards(sg: Segmented, consts: np.ndarray, Xb: np.ndarray,
                  Pb: np.ndarray) -> np.ndarray:
    """Whether the guards on inputs, constants and parameters hold, per point."""
    m = Xb.shape[0]
    held = np.ones(m, bool)
    nd = len(consts) + Pb.shape[1]
    for row in sg.fixed_guards:
        slot = row[GUARD_SLOT]
        v = Xb[:, slot - nd] if slot >= nd else _fixed(np.array([slot]), consts, Pb, m)[0]
        held &= (v != 0.0) == (row[GUARD_OUTCOME] != 0)
    return held.astype(np.uint8)
