"""The recorder: appends instructions in bulk while a function is traced.

During recording every value has an integer *id*: ``>= 0`` for a variable node (the
leaves, i.e. inputs and parameters, come first, then one node per instruction, in
recording order) and ``< 0`` for a constant (``-1 - k`` is entry ``k`` of the constant
pool). A traced array is a numpy array of ids, so slicing, broadcasting and fancy
indexing are plain numpy index arithmetic, and an elementwise op on ``n`` elements emits
its ``n`` instructions with a handful of vectorized numpy calls. Elements whose operands
are all constants are folded with the op's numpy reference and never become
instructions.

:meth:`Recorder.finalize` turns this into the slot layout of a :class:`~tapejit.Tape`.
"""

from __future__ import annotations

import numpy as np

from ._ops import COMPARISON, Op

_I64 = np.int64


class Recorder:
    """Growing tape under construction."""

    def __init__(self) -> None:
        self._ops: list[np.ndarray] = []  # uint8 opcode blocks
        self._args: list[np.ndarray] = []  # (k, 3) int64 operand-id blocks, -1 pads unused
        self.n_leaves = 0
        self.n_nodes = 0
        self._cvals = np.empty(64)
        self.n_consts = 0
        self._cindex: dict[float, int] = {}
        self.closed = False

    # -- leaves and constants ------------------------------------------------------------
    def leaves(self, shape: tuple[int, ...]) -> np.ndarray:
        """Allocate input/parameter leaves; only valid before the first instruction."""
        n = int(np.prod(shape, dtype=_I64))
        ids = np.arange(self.n_leaves, self.n_leaves + n, dtype=_I64).reshape(shape)
        self.n_leaves += n
        self.n_nodes += n
        return ids

    def const(self, values: np.ndarray) -> np.ndarray:
        """Ids of constants (float64 array of any shape); small pools are deduplicated."""
        flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if flat.size <= 64:
            out = np.empty(flat.size, dtype=_I64)
            for i, v in enumerate(flat.tolist()):
                key = v if v == v else "nan"  # NaN != NaN; one pool entry for it
                k = self._cindex.get(key)
                if k is None or (v == 0.0 and np.signbit(v) != np.signbit(self._cvals[k])):
                    k = self._append_consts(np.array([v]))
                    self._cindex.setdefault(key, k)
                out[i] = -1 - k
            return out.reshape(np.shape(values))
        k0 = self._append_consts(flat)
        return (-1 - np.arange(k0, k0 + flat.size, dtype=_I64)).reshape(np.shape(values))

    def _append_consts(self, flat: np.ndarray) -> int:
        k0 = self.n_consts
        need = k0 + flat.size
        if need > self._cvals.size:
            grown = np.empty(max(need, 2 * self._cvals.size))
            grown[:k0] = self._cvals[:k0]
            self._cvals = grown
        self._cvals[k0:need] = flat
        self.n_consts = need
        return k0

    def const_values(self, ids: np.ndarray) -> np.ndarray:
        """Values of constant ids (all ``< 0``)."""
        return self._cvals[-1 - ids]

    # -- instructions --------------------------------------------------------------------
    def emit(self, op: Op, *operands: np.ndarray) -> np.ndarray:
        """Record ``op`` elementwise over broadcast operand-id arrays; return result ids."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        operands = np.broadcast_arrays(*operands)
        shape = operands[0].shape
        flat = [np.ascontiguousarray(o).ravel() for o in operands]
        result = np.empty(flat[0].size, dtype=_I64)
        is_const = flat[0] < 0
        for o in flat[1:]:
            is_const &= o < 0
        if is_const.any():
            vals = [self.const_values(o[is_const]) for o in flat]
            with np.errstate(all="ignore"):
                folded = np.asarray(op.numpy(*vals), dtype=np.float64)
            result[is_const] = self.const(np.broadcast_to(folded, vals[0].shape))
            var = ~is_const
            flat = [o[var] for o in flat]
        else:
            var = slice(None)
        n = flat[0].size
        if n:
            args = np.full((n, 3), -1, dtype=_I64)
            for j, o in enumerate(flat):
                args[:, j] = o
            self._ops.append(np.full(n, op.code, dtype=np.uint8))
            self._args.append(args)
            result[var] = np.arange(self.n_nodes, self.n_nodes + n, dtype=_I64)
            self.n_nodes += n
        return result.reshape(shape)

    # -- finishing -----------------------------------------------------------------------
    def finalize(
        self, input_leaves: np.ndarray, param_leaves: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Map ids to slots ``[constants | parameters | inputs | results]``.

        Returns ``(opcodes, results, args, consts, input_slots, param_slots,
        output_slots)`` minus the results column, which is implied by the order; see
        ``_tape.py``.
        """
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

        ops = np.concatenate(self._ops) if self._ops else np.empty(0, np.uint8)
        args = np.concatenate(self._args) if self._args else np.empty((0, 3), _I64)
        unused = args == -1
        args = slot(args)
        args[unused] = 0
        consts = self._cvals[:nc].copy()
        return (
            ops,
            args,
            consts,
            nc + n_par + np.arange(input_leaves.size),
            nc + np.arange(n_par),
            slot(outputs),
        )


def is_comparison(op: Op) -> bool:
    """Whether an op yields 1.0/0.0 truth values."""
    return COMPARISON in op.flags
