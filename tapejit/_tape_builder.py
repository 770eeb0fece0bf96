"""The tape builder: the growing instruction buffer that records a traced function in bulk
and finalizes into a :class:`~tapejit._program.Program` (``_record.record`` drives it).

During recording every value has an integer *id*: ``>= 0`` for a variable node (the
leaves, i.e. inputs and parameters, come first, then one node per instruction, in
recording order) and ``< 0`` for a constant (``-1 - k`` is entry ``k`` of the constant
pool). A traced array is a numpy array of ids, so slicing, broadcasting and fancy
indexing are plain numpy index arithmetic, and an elementwise op on ``n`` elements is
recorded with a handful of vectorized numpy calls, usually as one block instruction.
An op on traced scalars is appended to a *run* of scalar instructions instead (no numpy
call, see :class:`Recorder`): the same instruction that a 1-element emission gives.
Elements whose operands are all constants are folded with the op's numpy reference and
never become instructions.

The recorder also keeps the *value* of every node at the recording point (computed with
the op's numpy reference, vectorized), so that Python control flow on a traced value can
be decided there and recorded as a *guard*: the comparison node and the outcome seen.
Replays check every guard at every point (see ``_drivers.py``).

:meth:`Recorder.finalize` turns this into the slot layout of a program, from which a
:class:`~tapejit.Tape` is built.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from dataclasses import dataclass

import numpy as np

from ._ops import BY_CODE, BY_NAME, OPS, Op
from ._program import (
    ARG_A,
    ATTR,
    FAMILIES,
    FIRST_FAMILY,
    GUARD,
    GUARD_SLOT,
    MAX_ARITY,
    OPCODE,
    ROW,
    SIZE,
    STRIDE_A,
    Family,
    Program,
    Subprogram,
    family,
)
from ._scalar_ops import VALUE

_I64 = np.int64
#: Fewest elements an emission needs to become one block instruction.
BLOCK_MIN = 2
#: The group code of a run of scalar instructions (opcode 0 is never an instruction's).
_SCALAR_RUN = 0
#: Operands of each opcode (0 where none is an op), for the unused columns of a run.
_ARITY = np.zeros(FIRST_FAMILY, dtype=_I64)
for _op in OPS:
    _ARITY[_op.code] = _op.arity
#: A float64's bits as an int64, the constant pool's key.
_BITS = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")


class _Growing:
    """A float64 array that grows by doubling (the constant pool)."""

    def __init__(self) -> None:
        self.data = np.empty(64)
        self.n = 0

    def extend(self, values: np.ndarray) -> int:
        k0 = self.n
        need = k0 + values.size
        if need > self.data.size:
            grown = np.empty(max(need, 2 * self.data.size))
            grown[:k0] = self.data[:k0]
            self.data = grown
        self.data[k0:need] = values
        self.n = need
        return k0

    def append(self, value: float) -> int:
        k = self.n
        if k == self.data.size:
            self.data = np.concatenate([self.data, np.empty(k)])
        self.data[k] = value
        self.n = k + 1
        return k

    def view(self) -> np.ndarray:
        return self.data[: self.n]


@dataclass(frozen=True)
class Mark:
    """A point in a recording (:meth:`Recorder.mark`): instructions recorded so far and
    the next node id."""

    groups: int
    nodes: int


@dataclass(frozen=True)
class Instruction:
    """One recorded emission as :meth:`Recorder.instructions_since` hands it out.

    Attributes
    ----------
    op : Op or None
        The elementwise op, or None for a family instruction.
    family : Family or None
        The instruction family, or None for an elementwise op.
    attrs : tuple of int
        A family instruction's integer attributes (empty for an op).
    operands : tuple of ndarray
        Flat int64 ids of each operand: for an op, one id per element (``results.size``
        each, broadcasts repeated); for a family, the operand's whole block.
    results : ndarray
        Flat int64 ids of the results (consecutive).
    """

    op: Op | None
    family: Family | None
    attrs: tuple[int, ...]
    operands: tuple[np.ndarray, ...]
    results: np.ndarray


# An operand of an emission: ``(start, stride)`` when its ids advance affinely within
# one region (constants, one argument's leaves, or results), else a flat id array.
Operand = tuple[int, int] | np.ndarray


class Recorder:
    """Growing tape under construction.

    Array code is recorded in bulk (:meth:`emit`); traced scalars one instruction at a
    time through :meth:`scalar1`, :meth:`scalar2` and :meth:`scalar`, which append to
    two flat machine arrays (``array('q')``, ``array('d')``) with no numpy call.
    Consecutive scalar instructions are kept as one *run*, handed to numpy (one group,
    one chunk of values, no copy) only when anything else reads or extends the
    recording (:meth:`_flush`).
    """

    def __init__(self) -> None:
        # One group per emission: opcode, element count, last-axis length (rows of a
        # 2-D emission may each be affine) and its operands; a run of scalar
        # instructions is one group (_SCALAR_RUN, n, 1, rows (opcode, a, b, c)).
        self._groups: list[tuple[int, int, int, list[Operand]]] = []
        self.n_leaves = 0
        self.n_nodes = 0
        self._arg_starts: list[int] = []  # first leaf id of each argument
        # Values of the variable nodes at the recording point, one chunk per argument
        # and per emission (no copying as the tape grows).
        self._chunk_starts: list[int] = []
        self._chunk_vals: list[np.ndarray] = []
        self._consts = _Growing()
        self._cindex: dict[object, int] = {}
        self._guards: list[tuple[int, int]] = []  # (comparison node id, outcome 0/1)
        self._guard_set: set[tuple[int, int]] = set()
        self._family_results: dict[int, tuple[str, int]] = {}  # first id: (family, size)
        self._subprograms: list[Subprogram] = []  # loop bodies, in table order
        # The pending run of scalar instructions, flat (numpy reads the buffers without a
        # copy): opcode and operand ids a, b, c per instruction, and the values; its
        # results are the last len(_run_vals) node ids.
        self._run_rows = array("q")
        self._run_vals = array("d")
        # _cindex by float value, for nonzero non-NaN constants (where equal floats have
        # equal bits): a constant seen before costs one dict lookup, no packing
        self._cfloat: dict[float, int] = {}
        self.closed = False

    @property
    def n_consts(self) -> int:
        return self._consts.n

    def _flush(self) -> None:
        """Turn the pending run of scalar instructions into one group and one chunk of
        values (they are the node ids just before ``n_nodes``)."""
        vals = self._run_vals
        if not vals:
            return
        rows = np.frombuffer(self._run_rows, dtype=_I64).reshape(-1, 4)
        self._chunk_starts.append(self.n_nodes - len(vals))
        self._chunk_vals.append(np.frombuffer(vals, dtype=np.float64))
        self._groups.append((_SCALAR_RUN, len(vals), 1, rows))
        self._run_rows = array("q")  # the arrays above keep the old buffers
        self._run_vals = array("d")

    def _add_chunk(self, values: np.ndarray) -> int:
        self._flush()
        k0 = self.n_nodes
        self._chunk_starts.append(k0)
        self._chunk_vals.append(values)
        self.n_nodes += values.size
        return k0

    # -- leaves and constants ------------------------------------------------------------
    def leaves(self, values: np.ndarray) -> np.ndarray:
        """Allocate input/parameter leaves holding ``values``; before any instruction."""
        if self._groups or self._run_vals:
            raise RuntimeError("leaves must be allocated before the first instruction")
        flat = np.array(values, dtype=np.float64).ravel()
        self._arg_starts.append(self.n_nodes)
        k0 = self._add_chunk(flat)
        self.n_leaves += flat.size
        return np.arange(k0, k0 + flat.size, dtype=_I64).reshape(np.shape(values))

    def const(self, values: np.ndarray) -> np.ndarray:
        """Ids of constants (float64 array of any shape); small batches are deduplicated."""
        flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if flat.size > 64:
            k0 = self._consts.extend(flat)
            return (-1 - np.arange(k0, k0 + flat.size, dtype=_I64)).reshape(np.shape(values))
        out = np.empty(flat.size, dtype=_I64)
        bits = flat.view(np.int64).tolist()  # by bits: 0.0 and -0.0 differ, NaN is one key
        for i, key in enumerate(bits):
            k = self._cindex.get(key)
            if k is None:
                k = self._cindex[key] = self._consts.extend(flat[i : i + 1])
            out[i] = -1 - k
        return out.reshape(np.shape(values))

    def scalar_const(self, value: float) -> int:
        """The id of one constant (deduplicated by bits, as :meth:`const`)."""
        if value != 0.0:  # 0.0 == -0.0: those go by bits (a NaN is never in _cfloat)
            k = self._cfloat.get(value)
            if k is not None:
                return -1 - k
        key = _BITS.unpack(_DOUBLE.pack(value))[0]
        k = self._cindex.get(key)
        if k is None:
            k = self._cindex[key] = self._consts.append(value)
        if value != 0.0 and value == value:
            self._cfloat[value] = k
        return -1 - k

    # -- values at the recording point ----------------------------------------------------
    def value(self, node: int) -> float:
        """The value at the recording point of one id (a variable or a constant)."""
        if node < 0:
            return float(self._consts.data[-1 - node])
        k = node - self.n_nodes + len(self._run_vals)
        if k >= 0:
            return self._run_vals[k]
        c = bisect.bisect_right(self._chunk_starts, node) - 1
        return float(self._chunk_vals[c][node - self._chunk_starts[c]])

    def values(self, ids: np.ndarray) -> np.ndarray:
        """Values at the recording point of any ids (variables and constants)."""
        self._flush()
        ids = np.asarray(ids)
        flat = ids.ravel()
        out = np.empty(flat.size)
        neg = flat < 0
        if neg.any():
            out[neg] = self._consts.data[-1 - flat[neg]]
        if not neg.all():
            var = flat[~neg]
            starts = np.asarray(self._chunk_starts)
            chunk = np.searchsorted(starts, var, side="right") - 1
            lo, hi = chunk.min(), chunk.max()
            if lo == hi:
                got = self._chunk_vals[lo][var - starts[lo]]
            else:
                got = np.empty(var.size)
                for c in np.unique(chunk).tolist():
                    m = chunk == c
                    got[m] = self._chunk_vals[c][var[m] - starts[c]]
            out[~neg] = got
        return out.reshape(ids.shape)

    def _operand_values(self, o: Operand, n: int) -> np.ndarray:
        if isinstance(o, np.ndarray):
            return self.values(o)
        start, stride = o
        if start < 0:
            idx = -1 - start - stride * np.arange(n) if stride else None
            return self._consts.data[idx] if stride else np.full(n, self._consts.data[-1 - start])
        c = bisect.bisect_right(self._chunk_starts, start) - 1
        vals, c0 = self._chunk_vals[c], self._chunk_starts[c]
        end = start + stride * (n - 1)
        if c0 <= end < c0 + vals.size:  # one chunk: a strided view, no copy
            if stride == 0:
                return np.broadcast_to(vals[start - c0], (n,))
            return vals[start - c0 :: stride][:n]
        return self.values(start + stride * np.arange(n, dtype=_I64))

    def _region(self, node: int) -> int:
        """-1 for constants, -2 for results, else the argument a leaf belongs to."""
        if node < 0:
            return -1
        if node >= self.n_leaves:
            return -2
        return bisect.bisect_right(self._arg_starts, node) - 1

    def _as_operand(self, o: np.ndarray) -> Operand:
        """An id array as an affine ``(start, stride)`` when it is one, else flat ids."""
        if all(st == 0 for st in o.strides):  # a broadcast single id
            return (int(o.flat[0]), 0)
        f = np.array(o).ravel()  # a copy: traced arrays are assigned into in place
        n = f.size
        first = int(f[0])
        if n == 1:
            return (first, 0)
        stride = int(f[1]) - first
        if int(f[-1]) != first + stride * (n - 1) or self._region(first) != self._region(
            int(f[-1])
        ):
            return f
        if n > 2 and not (np.diff(f) == stride).all():
            return f
        return (first, stride)

    # -- instructions --------------------------------------------------------------------
    # The scalar path: one instruction on single ids with their values, as the array
    # path records a 1-element emission (the same row; constants pooled in the same
    # order; an instruction whose operands are all constants folded into a constant).
    def scalar1(self, op: Op, a: int, av: float) -> tuple[int, float]:
        """Record unary ``op`` on id ``a`` of value ``av``; return the result's id and
        value."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        v = VALUE[op.code](av)
        if a < 0:
            return self.scalar_const(v), v
        self._run_rows.extend((op.code, a, 0, 0))
        self._run_vals.append(v)
        node = self.n_nodes
        self.n_nodes = node + 1
        return node, v

    def scalar2(self, op: Op, a: int, av: float, b: int, bv: float) -> tuple[int, float]:
        """Record binary ``op`` on ids ``a`` and ``b`` of values ``av`` and ``bv``; return
        the result's id and value."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        v = VALUE[op.code](av, bv)
        if a < 0 and b < 0:
            return self.scalar_const(v), v
        self._run_rows.extend((op.code, a, b, 0))
        self._run_vals.append(v)
        node = self.n_nodes
        self.n_nodes = node + 1
        return node, v

    def scalar(self, op: Op, ids: list[int], vals: list[float]) -> tuple[int, float]:
        """Record ``op`` on single ids of any arity (see :meth:`scalar2`)."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        v = VALUE[op.code](*vals)
        if all(i < 0 for i in ids):
            return self.scalar_const(v), v
        self._run_rows.extend((op.code, *ids, *(0,) * (3 - len(ids))))
        self._run_vals.append(v)
        node = self.n_nodes
        self.n_nodes = node + 1
        return node, v

    def emit(self, op: Op, *operands: np.ndarray) -> np.ndarray:
        """Record ``op`` elementwise over broadcast operand-id arrays; return result ids."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        self._flush()
        operands = np.broadcast_arrays(*operands)
        shape = operands[0].shape
        n = operands[0].size
        if n == 0:  # an empty array: nothing to compute
            return np.empty(shape, dtype=_I64)
        if len(shape) >= 2 and n >= 2 * shape[-1] > 2 and len(operands) > 1:
            operands = self._rows_as_blocks(operands, shape)
        ops = [self._as_operand(o) for o in operands]
        if n >= BLOCK_MIN and any(isinstance(o, np.ndarray) and (o < 0).all() for o in ops):
            ops = self._constants_as_runs(ops, n)
        affine = [o for o in ops if not isinstance(o, np.ndarray)]
        if any(o[0] >= 0 for o in affine):  # an operand is variable everywhere: no folding
            is_const = None
        else:
            is_const = np.ones(n, dtype=bool)
            for o in ops:
                if isinstance(o, np.ndarray):
                    is_const &= o < 0
        with np.errstate(all="ignore"):
            vals = op.numpy(*(self._operand_values(o, n) for o in ops))
        vals = np.broadcast_to(np.asarray(vals, dtype=np.float64), (n,))
        if is_const is None or not is_const.any():
            k0 = self._add_chunk(np.array(vals))
            if n:
                self._groups.append((op.code, n, shape[-1] if shape else 1, ops))
            return np.arange(k0, k0 + n, dtype=_I64).reshape(shape)
        # Some elements have only constant operands: fold them, emit the rest.
        result = np.empty(n, dtype=_I64)
        result[is_const] = self.const(vals[is_const])
        var = ~is_const
        m = int(var.sum())
        if m:
            full = [o if isinstance(o, np.ndarray) else o[0] + o[1] * np.arange(n) for o in ops]
            k0 = self._add_chunk(np.array(vals[var]))
            self._groups.append((op.code, m, m, [f[var] for f in full]))
            result[var] = np.arange(k0, k0 + m, dtype=_I64)
        return result.reshape(shape)

    def _constants_as_runs(self, ops: list[Operand], n: int) -> list[Operand]:
        """Constant operands that are not one run of the pool (``x + 3 * np.eye(3)``:
        deduplicated values) become a new run, so that an emission whose other operands
        are blocks is one block instruction instead of ``n`` scalar ones."""
        if any(isinstance(o, np.ndarray) and not (o < 0).all() for o in ops):
            return ops
        out: list[Operand] = []
        for o in ops:
            if isinstance(o, np.ndarray):
                k0 = self._consts.extend(self.values(o))
                o = (-1 - k0, -1)
            out.append(o)
        return out

    def _rows_as_blocks(self, operands: list[np.ndarray], shape: tuple) -> list[np.ndarray]:
        """A row vector broadcast down the rows of a matrix against an operand that is one
        block (``X @ W + b``) would split the emission into one instruction per row. It
        becomes one block first: a new run of the pool for constants, else one
        ``matmul`` of a column of ones by the row (an outer product)."""
        cols = shape[-1]
        rows = operands[0].size // cols
        flat = [np.reshape(o, (rows, cols)) for o in operands]
        # a row repeated down the rows, or a column repeated along them (not a scalar)
        kind = [1 if f.strides[0] == 0 and f.strides[1] != 0 else
                2 if f.strides[1] == 0 and f.strides[0] != 0 else 0 for f in flat]
        if not any(kind) or len(set(kind)) == 1:  # nothing broadcast, or all the same way
            return operands
        out = []
        for o, f, k in zip(operands, flat, kind, strict=True):
            r = np.ascontiguousarray(f[0] if k == 1 else f[:, 0])
            if not k or not self.block(r):
                out.append(o)
            elif (r < 0).all():
                vals = np.ascontiguousarray(np.broadcast_to(self.values(f), (rows, cols))).ravel()
                k0 = self._consts.extend(vals)
                out.append((-1 - np.arange(k0, k0 + vals.size, dtype=_I64)).reshape(shape))
            else:
                ones = self.const(np.ones(rows if k == 1 else cols))
                pair, attrs = (([ones, r], (1, rows, 1, cols, 0, 0, 0, 0)) if k == 1 else
                               ([r, ones], (1, rows, 1, cols, 0, 0, 0, 0)))
                ids = self.emit_family(family("matmul"), pair, attrs)
                out.append(ids.reshape(shape))
        return out

    def produced_by(self, ids: np.ndarray) -> str | None:
        """The family whose instruction's whole result ``ids`` are (in order), else
        ``None``."""
        if not ids.size or not self.block(ids):
            return None
        name, size = self._family_results.get(int(ids[0]), (None, 0))
        return name if size == ids.size and int(ids[0]) >= 0 else None

    def block(self, ids: np.ndarray) -> bool:
        """Whether flat ``ids`` are one block of consecutive slots (as a family operand
        must be): ascending leaves of one argument or results, or a run of the pool."""
        n = ids.size
        if n <= 1:
            return True
        first, last = int(ids[0]), int(ids[-1])
        step = -1 if first < 0 else 1
        return (last - first == step * (n - 1) and self._region(first) == self._region(last)
                and bool((np.diff(ids) == step).all()))

    def emit_family(self, family: Family, operands: list[np.ndarray], attrs: tuple[int, ...],
                    ) -> np.ndarray:
        """Record one instruction of ``family`` on flat operand-id arrays; return the
        result ids (flat). An operand that is not one block is copied into one first
        (an exact multiplication by 1, or a new run of the pool for constants)."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        self._flush()
        blocks = [self.block_of(ids) for ids in operands]
        operand_values = [self._block_values(b) for b in blocks]
        with np.errstate(all="ignore"):
            vals = np.asarray(family.reference(attrs, *operand_values),
                              dtype=np.float64).ravel()
        if family.failure and not np.isfinite(vals).all() and all(
                np.isfinite(v).all() for v in operand_values):
            raise np.linalg.LinAlgError(f"{family.failure} ({family.name} at the recording "
                                        "point)")
        if all((b < 0).all() for b in blocks):  # constants only: a constant result
            return self.const(vals)
        k0 = self._add_chunk(np.array(vals))
        self._family_results[k0] = (family.name, vals.size)
        first = [(int(b[0]) if b.size else 0, b.size) for b in blocks]
        self._groups.append((family.opcode, vals.size, -1, [first, tuple(attrs)]))
        ids = np.arange(k0, k0 + vals.size, dtype=_I64)
        if family.failure and vals.size and np.isfinite(vals).all():
            self.guard_finite(ids)
        return ids

    def emit_with_body(self, family: Family, body: Program, operands: list[np.ndarray],
                       attrs: tuple[int, ...], values: np.ndarray) -> np.ndarray:
        """Record one instruction of a family that runs a sub-program (a loop): ``body``
        becomes the next entry of the sub-program table (its constants appended to the
        pool) and the attribute ``family.bodies[0]`` names it; the other attributes are
        ``attrs``, in order. ``values`` is the result at the recording point (the caller
        computes it: a family reference does not see the body). Operands must be blocks
        (:meth:`block`). Returns the result ids (flat)."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        self._flush()
        consts_at = self._consts.extend(np.asarray(body.consts, np.float64))
        self._subprograms.append(Subprogram(body, consts_at))
        attrs = list(attrs)
        attrs.insert(family.attrs.index(family.bodies[0]), len(self._subprograms) - 1)
        blocks = [np.ascontiguousarray(b, dtype=_I64).ravel() for b in operands]
        if not all(self.block(b) for b in blocks):  # pragma: no cover - the caller's job
            raise RuntimeError("recorder: a loop operand is not one block")
        k0 = self._add_chunk(np.array(values, dtype=np.float64).ravel())
        n = int(np.size(values))
        self._family_results[k0] = (family.name, n)
        first = [(int(b[0]) if b.size else 0, b.size) for b in blocks]
        self._groups.append((family.opcode, n, -1, [first, tuple(attrs)]))
        return np.arange(k0, k0 + n, dtype=_I64)

    def block_of(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` as one block of consecutive slots: themselves, or a copy (an exact
        multiplication by 1, or a run of the pool for constants)."""
        ids = np.ascontiguousarray(ids, dtype=_I64).ravel()
        if self.block(ids):
            return ids
        if (ids < 0).all():
            return -1 - np.arange(self._consts.extend(self.values(ids)), self._consts.n,
                                  dtype=_I64)
        return self._copy(ids)

    def guard_finite(self, ids: np.ndarray) -> None:
        """Guard that a failing family's result is not NaN, so a point where a
        factorization fails is refused or masked like a point off the recorded branches.
        Such a family gives NaN for the whole result of a failed point (``Family.failure``),
        so its first element decides: ``equal(r, r)`` is 0.0 only for NaN."""
        first = ids[:1]
        self.guard(int(self.emit(BY_NAME["equal"], first, first)[0]))

    def _block_values(self, ids: np.ndarray) -> np.ndarray:
        """Values of one block of ids (a view where it lies in one chunk or the pool)."""
        if ids.size > 1:
            first = int(ids[0])
            if first < 0:
                return self._consts.data[-1 - first : -1 - first + ids.size]
            c = bisect.bisect_right(self._chunk_starts, first) - 1
            vals, c0 = self._chunk_vals[c], self._chunk_starts[c]
            if first - c0 + ids.size <= vals.size:
                return vals[first - c0 : first - c0 + ids.size]
        return self.values(ids)

    def _copy(self, ids: np.ndarray) -> np.ndarray:
        """Fresh consecutive result ids holding the values of ``ids`` (never folded)."""
        n = ids.size
        k0 = self._add_chunk(np.array(self.values(ids)))
        one = self.const(np.ones(1))
        self._groups.append((BY_NAME["mul"].code, n, n, [ids, np.repeat(one, n)]))
        return np.arange(k0, k0 + n, dtype=_I64)

    def guard(self, node: int) -> bool:
        """Record that the comparison ``node`` (value 1.0/0.0) decided a Python branch."""
        return self.guard_outcome(int(node), self.value(int(node)) != 0.0)

    def guard_outcome(self, node: int, outcome: bool) -> bool:
        """Record that the comparison ``node`` came out ``outcome`` at the recording point
        and decided a Python branch; return ``outcome``."""
        key = (node, int(outcome))
        if key not in self._guard_set:  # a repeat checks nothing new
            self._guard_set.add(key)
            self._guards.append(key)
        return outcome

    # -- reading back what was recorded (nested differentiation, ``_nested.py``) ---------
    def mark(self) -> Mark:
        """The current end of the recording, to read back what follows it with
        :meth:`instructions_since`."""
        self._flush()
        return Mark(len(self._groups), self.n_nodes)

    def instructions_since(self, mark: Mark) -> list[Instruction]:
        """The instructions recorded after ``mark``, in recording order.

        Every emission's results are the next consecutive node ids (leaves come before
        any instruction), so a group's results follow from the running node count.
        """
        self._flush()
        out = []
        first = mark.nodes
        for code, n, _, ops in self._groups[mark.groups :]:
            if code == _SCALAR_RUN:
                for row in ops.tolist():
                    op = BY_CODE[row[0]]
                    out.append(Instruction(op, None, (), tuple(
                        np.array(row[1 : 1 + op.arity], dtype=_I64).reshape(op.arity, 1)),
                        np.array([first], dtype=_I64)))
                    first += 1
                continue
            results = np.arange(first, first + n, dtype=_I64)
            first += n
            if code >= FIRST_FAMILY:
                blocks, attrs = ops
                operands = tuple(
                    f + (-1 if f < 0 else 1) * np.arange(length, dtype=_I64)
                    for f, length in blocks)
                out.append(Instruction(None, FAMILIES[code], tuple(attrs), operands, results))
                continue
            operands = tuple(
                o if isinstance(o, np.ndarray) else o[0] + o[1] * np.arange(n, dtype=_I64)
                for o in ops)
            out.append(Instruction(BY_CODE[code], None, (), operands, results))
        if first != self.n_nodes:  # pragma: no cover - a broken invariant, not user error
            raise RuntimeError("recorder: instruction results are not consecutive")
        return out

    def subprogram(self, index: int) -> Program:
        """Entry ``index`` of the sub-program table (a loop's body, as a loop instruction's
        attribute names it)."""
        return self._subprograms[index].program

    def copy(self, ids: np.ndarray) -> np.ndarray:
        """Fresh variable nodes holding the values of ``ids`` (any ids, constants too;
        one exact ``* 1.0``, never folded): distinct ids to differentiate with respect
        to where ``ids`` repeat an id or hold constants."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        self._flush()
        flat = np.ascontiguousarray(ids, dtype=_I64).ravel()
        if not flat.size:
            return np.asarray(ids, dtype=_I64)
        return self._copy(flat).reshape(np.shape(ids))

    # -- finishing -----------------------------------------------------------------------
    def finalize(
        self, input_leaves: np.ndarray, param_leaves: np.ndarray, outputs: np.ndarray
    ) -> Program:
        """Map ids to slots ``[constants | parameters | inputs | results]``.

        Returns the program a :class:`~tapejit.Tape` is built from (checked then). Each
        emission whose operand slots advance affinely (as slices, broadcasts and fresh
        results do) becomes one block instruction, or one per row of its last axis;
        anything else becomes scalar instructions.
        """
        self._flush()
        self.closed = True
        nc = self.n_consts
        n_par = param_leaves.size
        leaf_slot = np.empty(self.n_leaves, dtype=_I64)
        leaf_slot[param_leaves] = nc + np.arange(n_par)
        leaf_slot[input_leaves] = nc + n_par + np.arange(input_leaves.size)

        def slot(ids: np.ndarray) -> np.ndarray:
            out = np.where(ids < 0, -1 - ids, nc + ids)  # constants; result nodes
            leaf = (ids >= 0) & (ids < self.n_leaves)
            out[leaf] = leaf_slot[ids[leaf]]
            return out

        def affine_slot(o: tuple[int, int]) -> tuple[int, int]:
            start, stride = o
            if start < 0:
                return -1 - start, -stride
            return (int(leaf_slot[start]) if start < self.n_leaves else nc + start), stride

        rows = []
        attrs: list[int] = []
        for code, n, row, ops in self._groups:
            if code == _SCALAR_RUN:  # one scalar instruction per row, unused operands 0
                codes = ops[:, 0]
                slots = slot(ops[:, 1:])
                slots[_ARITY[codes][:, None] <= np.arange(MAX_ARITY)] = 0
                one = np.zeros((n, ROW), dtype=_I64)
                one[:, OPCODE], one[:, SIZE] = codes, 1
                one[:, ARG_A : ARG_A + MAX_ARITY] = slots
                rows.append(one)
                continue
            if code >= FIRST_FAMILY:
                blocks, values = ops
                one = np.zeros((1, ROW), dtype=_I64)
                one[0, OPCODE], one[0, SIZE], one[0, ATTR] = code, n, len(attrs)
                for k, (first, length) in enumerate(blocks):
                    one[0, ARG_A + k] = slot(np.array([first]))[0] if length else 0
                    one[0, STRIDE_A + k] = length
                attrs.extend(values)
                rows.append(one)
                continue
            if all(not isinstance(o, np.ndarray) for o in ops):
                mapped = [affine_slot(o) for o in ops]
                one = np.zeros((1, ROW), dtype=_I64)
                one[0, OPCODE], one[0, SIZE] = code, n
                for k, (first, stride) in enumerate(mapped):
                    one[0, ARG_A + k] = first
                    one[0, STRIDE_A + k] = stride if n > 1 else 0
                rows.append(one)
                continue
            slots = np.zeros((n, MAX_ARITY), dtype=_I64)
            for j, o in enumerate(ops):
                ids = o if isinstance(o, np.ndarray) else o[0] + o[1] * np.arange(n)
                slots[:, j] = slot(ids)
            rows.append(_rows(code, slots, row))
        code = np.concatenate(rows) if rows else np.empty((0, ROW), _I64)
        guards = np.array(self._guards, dtype=_I64).reshape(-1, GUARD)
        guards[:, GUARD_SLOT] = slot(guards[:, GUARD_SLOT])
        return Program(
            opcodes=code[:, OPCODE],
            args=code[:, ARG_A : ARG_A + MAX_ARITY],
            sizes=code[:, SIZE],
            strides=code[:, STRIDE_A : STRIDE_A + MAX_ARITY],
            consts=self._consts.view().copy(),
            n_params=n_par,
            n_inputs=input_leaves.size,
            outputs=slot(outputs),
            guards=guards,
            attrs=np.array(attrs, dtype=_I64),
            attr_at=code[:, ATTR] if attrs else None,
            subprograms=tuple(self._subprograms),
        )


def _rows(code: int, slots: np.ndarray, row: int) -> np.ndarray:
    """Instruction rows (``ROW`` ints, results unset) for one emission.

    ``slots`` holds the operand slots (``0`` in unused columns); the results
    are fresh consecutive slots, so only the operands decide whether elements form a
    block: every operand must advance by a constant stride.
    """
    n = len(slots)
    args = slice(ARG_A, ARG_A + MAX_ARITY)
    strides = slice(STRIDE_A, STRIDE_A + MAX_ARITY)
    if n >= BLOCK_MIN:
        d = np.diff(slots, axis=0)
        if (d == d[0]).all():
            out = np.zeros((1, ROW), dtype=_I64)
            out[0, OPCODE], out[0, SIZE] = code, n
            out[0, args], out[0, strides] = slots[0], d[0]
            return out
        if BLOCK_MIN <= row < n and n % row == 0:
            s3 = slots.reshape(n // row, row, MAX_ARITY)
            d3 = np.diff(s3, axis=1)
            if (d3 == d3[:, :1]).all():
                out = np.zeros((n // row, ROW), dtype=_I64)
                out[:, OPCODE] = code
                out[:, args] = s3[:, 0]
                out[:, SIZE] = row
                out[:, strides] = d3[:, 0]
                return out
    out = np.zeros((n, ROW), dtype=_I64)
    out[:, OPCODE] = code
    out[:, args] = slots
    out[:, SIZE] = 1
    return out
