"""The recorder: appends instructions in bulk while a function is traced.

During recording every value has an integer *id*: ``>= 0`` for a variable node (the
leaves, i.e. inputs and parameters, come first, then one node per instruction, in
recording order) and ``< 0`` for a constant (``-1 - k`` is entry ``k`` of the constant
pool). A traced array is a numpy array of ids, so slicing, broadcasting and fancy
indexing are plain numpy index arithmetic, and an elementwise op on ``n`` elements emits
its ``n`` instructions with a handful of vectorized numpy calls. Elements whose operands
are all constants are folded with the op's numpy reference and never become
instructions.

The recorder also keeps the *value* of every node at the recording point (computed with
the op's numpy reference, vectorized), so that Python control flow on a traced value can
be decided there and recorded as a *guard*: the comparison node and the outcome seen.
Replays check every guard at every point (see ``_drivers.py``).

:meth:`Recorder.finalize` turns this into the slot layout of a :class:`~tapejit.Tape`.
"""

from __future__ import annotations

import numpy as np

from ._ops import Op

_I64 = np.int64


class _Growing:
    """A float64 or int64 array that grows by doubling."""

    def __init__(self, dtype: type) -> None:
        self.data = np.empty(64, dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> int:
        k0 = self.n
        need = k0 + values.size
        if need > self.data.size:
            grown = np.empty(max(need, 2 * self.data.size), dtype=self.data.dtype)
            grown[:k0] = self.data[:k0]
            self.data = grown
        self.data[k0:need] = values
        self.n = need
        return k0

    def view(self) -> np.ndarray:
        return self.data[: self.n]


class Recorder:
    """Growing tape under construction."""

    def __init__(self) -> None:
        self._ops: list[np.ndarray] = []  # uint8 opcode blocks
        self._args: list[np.ndarray] = []  # (k, 3) int64 operand-id blocks, -1 pads unused
        self.n_leaves = 0
        self._vals = _Growing(np.float64)  # value of each variable node at the record point
        self._consts = _Growing(np.float64)
        self._cindex: dict[object, int] = {}
        self._guards: list[tuple[int, int]] = []  # (comparison node id, outcome 0/1)
        self.closed = False

    @property
    def n_nodes(self) -> int:
        return self._vals.n

    @property
    def n_consts(self) -> int:
        return self._consts.n

    # -- leaves and constants ------------------------------------------------------------
    def leaves(self, values: np.ndarray) -> np.ndarray:
        """Allocate input/parameter leaves holding ``values``; before any instruction."""
        if self._ops:
            raise RuntimeError("leaves must be allocated before the first instruction")
        flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
        k0 = self._vals.extend(flat)
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

    def values(self, ids: np.ndarray) -> np.ndarray:
        """Values at the recording point of any ids (variables and constants)."""
        ids = np.asarray(ids)
        out = np.empty(ids.shape)
        var = ids >= 0
        out[var] = self._vals.data[ids[var]]
        out[~var] = self._consts.data[-1 - ids[~var]]
        return out

    # -- instructions --------------------------------------------------------------------
    def emit(self, op: Op, *operands: np.ndarray) -> np.ndarray:
        """Record ``op`` elementwise over broadcast operand-id arrays; return result ids."""
        if self.closed:
            raise RuntimeError("this recording has finished; a traced value escaped f")
        operands = np.broadcast_arrays(*operands)
        shape = operands[0].shape
        flat = [np.ascontiguousarray(o).ravel() for o in operands]
        with np.errstate(all="ignore"):
            vals = np.asarray(op.numpy(*(self.values(o) for o in flat)), dtype=np.float64)
        vals = np.broadcast_to(vals, flat[0].shape)
        is_const = flat[0] < 0
        for o in flat[1:]:
            is_const &= o < 0
        result = np.empty(flat[0].size, dtype=_I64)
        if is_const.any():
            result[is_const] = self.const(vals[is_const])
            var = ~is_const
            flat = [o[var] for o in flat]
            vals = vals[var]
        else:
            var = slice(None)
        n = flat[0].size
        if n:
            args = np.full((n, 3), -1, dtype=_I64)
            for j, o in enumerate(flat):
                args[:, j] = o
            self._ops.append(np.full(n, op.code, dtype=np.uint8))
            self._args.append(args)
            k0 = self._vals.extend(vals)
            result[var] = np.arange(k0, k0 + n, dtype=_I64)
        return result.reshape(shape)

    def guard(self, node: int) -> bool:
        """Record that the comparison ``node`` (value 1.0/0.0) decided a Python branch."""
        outcome = bool(self._vals.data[node] != 0.0)
        self._guards.append((int(node), int(outcome)))
        return outcome

    # -- finishing -----------------------------------------------------------------------
    def finalize(
        self, input_leaves: np.ndarray, param_leaves: np.ndarray, outputs: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Map ids to slots ``[constants | parameters | inputs | results]``.

        Returns the arrays a :class:`~tapejit.Tape` is built from: ``opcodes``, ``args``,
        ``consts``, ``inputs``, ``params``, ``outputs`` and ``guards``.
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
        guards = np.array(self._guards, dtype=_I64).reshape(-1, 2)
        guards[:, 0] = slot(guards[:, 0])
        return {
            "opcodes": ops,
            "args": args,
            "consts": self._consts.view().copy(),
            "inputs": nc + n_par + np.arange(input_leaves.size),
            "params": nc + np.arange(n_par),
            "outputs": slot(outputs),
            "guards": guards,
        }
