"""Colourings of sparsity patterns, and the seed matrices and recovery maps built on them.

A *colouring* groups the columns (or rows) of a sparse derivative so that one tangent,
adjoint or Hessian-vector sweep per group gives every nonzero:

* :func:`column_colouring`: two columns of a Jacobian that share a row get different
  colours (a distance-2 colouring of its bipartite graph; Curtis, Powell and Reid's
  grouping). ``J @ S`` (one tangent direction per colour) holds each nonzero
  ``J[i, j]`` alone at ``[i, colour[j]]``. The same on ``J.T`` colours rows, for
  adjoint sweeps.
* :func:`star_colouring`: a colouring of a symmetric pattern's adjacency graph in which
  every path on four vertices uses at least three colours (Gebremedhin, Manne and
  Pothen's greedy Algorithm 4.1, "What color is your Jacobian?", SIAM Review 2005).
  ``H @ S`` then holds every nonzero ``H[i, j]`` alone either at ``[i, colour[j]]`` or
  at ``[j, colour[i]]`` (Coleman and Moré's symmetric direct recovery). It needs no more
  colours than a distance-2 colouring and often far fewer (an arrowhead: 2 instead of
  ``n``).

:func:`banded_colouring` colours a pattern whose rows each span at most ``w``
consecutive columns ``j mod w`` when a full row makes that optimal (no per-vertex work);
the others are greedy, in largest-degree-first order (ties in natural order, so a banded
pattern is coloured in order), in plain Python: the column colouring keeps one bitmask of
used colours per row (a Python int), ``O(nnz)`` steps; the star colouring keeps, per
vertex, the count of its coloured neighbours per colour and the colours that would close
a two-coloured path through it, updated as vertices are coloured, so each vertex costs
``O(degree x colours)`` set operations instead of a walk over its distance-3
neighbourhood. No graph library is needed.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def _order(degrees: np.ndarray) -> list[int]:
    """Largest degree first, ties in natural order."""
    return np.argsort(-degrees, kind="stable").tolist()


def banded_colouring(pattern: sp.csr_array) -> np.ndarray | None:
    """``j mod w`` as the column colouring of a pattern whose rows each span at most
    ``w`` consecutive columns, when that is optimal: when some row has ``w`` nonzeros
    (its columns need ``w`` colours in any colouring). None otherwise.

    Columns of one row differ by less than ``w``, so they get different colours: a
    valid column colouring, and for a symmetric pattern a distance-2 (so star) colouring
    (two vertices within distance 2 are columns of one row). A few numpy passes over the
    rows, no per-vertex work: a banded Hessian (an ODE discretized in time order, a
    chain) is coloured in microseconds.
    """
    n = pattern.shape[1]
    indptr, indices = pattern.indptr, pattern.indices
    if not pattern.nnz or not pattern.has_sorted_indices:
        return None
    starts, ends = indptr[:-1], indptr[1:]
    counts = ends - starts
    if counts.min() == 0:  # rows without nonzeros span nothing
        starts, ends = starts[counts > 0], ends[counts > 0]
    width = int((indices.take(ends - 1) - indices.take(starts)).max()) + 1
    if width != int(counts.max()):
        return None
    # 0, 1, .., w - 1 repeated, without ``arange(n) % w``'s n divisions: a few strided
    # fills when w is small, else copies of the row (np.tile)
    if width < 8:
        colours = np.empty(-(-n // width) * width, dtype=np.int64)
        for j in range(width):
            colours[j::width] = j
        return colours[:n]
    return np.tile(np.arange(width, dtype=np.int64), -(-n // width))[:n]


def column_colouring(pattern: sp.sparray) -> np.ndarray:
    """Greedy colouring of the columns of ``pattern`` such that no two columns with a
    nonzero in the same row share a colour.

    Parameters
    ----------
    pattern : scipy sparse array, ``(m, n)``

    Returns
    -------
    ndarray of int64, ``(n,)``
        The colour of each column, ``0 .. n_colours - 1``.
    """
    csc = sp.csc_array(pattern)
    csc.sum_duplicates()
    indptr, indices = csc.indptr.tolist(), csc.indices.tolist()
    used = [0] * csc.shape[0]  # per row: bitmask of the colours of its columns so far
    colour = [0] * csc.shape[1]
    get, or_ = used.__getitem__, operator.or_
    for j in _order(np.diff(csc.indptr)):
        rows = indices[indptr[j] : indptr[j + 1]]
        taken = functools.reduce(or_, map(get, rows), 0)
        c = (~taken & (taken + 1)).bit_length() - 1  # lowest colour not taken
        bit = 1 << c
        for i in rows:
            used[i] |= bit
        colour[j] = c
    return np.array(colour, dtype=np.int64)


def distance2_colouring(pattern: sp.sparray) -> np.ndarray:
    """Greedy distance-2 colouring of a symmetric pattern's adjacency graph (vertices
    within two edges get different colours): the column colouring of the pattern with its
    diagonal. The reference count for :func:`star_colouring`."""
    n = pattern.shape[0]
    return column_colouring(sp.csr_array(pattern, dtype=bool) + sp.eye_array(n, dtype=bool,
                                                                              format="csr"))


def _adjacency(pattern: sp.sparray) -> tuple[list[list[int]], np.ndarray]:
    """Neighbour lists of a symmetric pattern's graph (no self loops) and the degrees."""
    coo = sp.coo_array(pattern)
    off = coo.row != coo.col
    g = sp.csr_array((np.ones(int(off.sum()), dtype=bool), (coo.row[off], coo.col[off])),
                     shape=pattern.shape)
    g.sum_duplicates()
    indptr, indices = g.indptr, g.indices.tolist()
    ptr = indptr.tolist()
    return [indices[ptr[v] : ptr[v + 1]] for v in range(g.shape[0])], np.diff(indptr)


def star_colouring(pattern: sp.sparray) -> np.ndarray:
    """Greedy star colouring of the adjacency graph of a symmetric pattern.

    Parameters
    ----------
    pattern : scipy sparse array, ``(n, n)``, structurally symmetric

    Returns
    -------
    ndarray of int64, ``(n,)``
        The colour of each vertex (row and column), ``0 .. n_colours - 1``: adjacent
        vertices differ, and no path on four vertices has only two colours.
    """
    adj, degrees = _adjacency(pattern)
    n = len(adj)
    colour = [-1] * n
    # per vertex: coloured neighbours per colour, and the first neighbour of each colour
    count: list[dict[int, int]] = [{} for _ in range(n)]
    first: list[dict[int, int]] = [{} for _ in range(n)]
    # per coloured vertex w: the colours c of coloured neighbours x of w that have another
    # neighbour y of w's colour (the paths w - x - y, c = colour[x]): a new neighbour of w
    # with colour c would close the two-coloured path  new - w - x - y
    closes: list[set[int]] = [set() for _ in range(n)]
    for v in _order(degrees):
        forbidden: set[int] = set()
        for w in adj[v]:
            cw = colour[w]
            if cw >= 0:
                forbidden.add(cw)
                forbidden |= closes[w]
            else:
                forbidden.update(count[w])  # v - w - x, w not yet coloured: distance 2
        c = 0
        while c in forbidden:
            c += 1
        colour[v] = c
        for x in adj[v]:
            cnt = count[x].get(c, 0) + 1
            count[x][c] = cnt
            cx = colour[x]
            if cnt == 1:
                first[x][c] = v
            elif cx >= 0:  # a second neighbour of x with colour c: v - x - first, both ends c
                if cnt == 2:
                    closes[first[x][c]].add(cx)
                closes[v].add(cx)
            if cx >= 0 and count[v].get(cx, 0) >= 2:  # x - v - (another of x's colour)
                closes[x].add(c)
    return np.array(colour, dtype=np.int64)


@dataclass(frozen=True)
class Compression:
    """How to compute a sparse derivative with one sweep per colour, and recover it.

    Attributes
    ----------
    pattern : scipy.sparse.csr_array
        The derivative's pattern (bool), its nonzeros in CSR order.
    mode : str
        ``"forward"`` (tangent sweeps, seeds are input directions), ``"reverse"``
        (adjoint sweeps, seeds are output weights) or ``"hessian"`` (Hessian-vector
        products, seeds are input directions).
    colours : ndarray
        The colour of each column (forward, Hessian) or row (reverse).
    seeds : ndarray
        ``(n_colours, n)``: one 0/1 seed vector per colour.
    take : ndarray
        Per nonzero of ``pattern`` (CSR order), its flat index in the compressed result
        laid out ``(n_outputs, n_colours)`` (forward) or ``(n_colours, n_inputs)``
        (reverse, Hessian).
    """

    pattern: sp.csr_array
    mode: str
    colours: np.ndarray
    seeds: np.ndarray
    take: np.ndarray

    @property
    def n_colours(self) -> int:
        return len(self.seeds)


def _seeds(colours: np.ndarray, n: int) -> np.ndarray:
    k = int(colours.max()) + 1 if len(colours) else 1
    seeds = np.zeros((k, n))
    seeds[colours, np.arange(n)] = 1.0
    return seeds


def _coords(pattern: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(pattern.indptr))
    return rows, pattern.indices.astype(np.int64)


#: ``mode="auto"`` colours rows (adjoint sweeps) only when this many times their colours
#: are fewer than one plus the columns' colours: one tangent sweep carries every column
#: colour at once, while each row colour is an adjoint sweep of its own (measured in the
#: performance page's "Sparse derivatives and IPOPT").
REVERSE_COST = 4


def jacobian_compression(pattern: sp.csr_array, mode: str = "auto") -> Compression:
    """The compression of a Jacobian pattern: columns coloured for tangent sweeps, or rows
    for adjoint sweeps (``mode="auto"``: rows when ``REVERSE_COST`` times their colours
    are fewer than one plus the columns')."""
    m, n = pattern.shape
    rows, cols = _coords(pattern)
    if mode in ("auto", "forward"):
        col_colours = banded_colouring(pattern)
        if col_colours is None:
            col_colours = column_colouring(pattern)
    if mode in ("auto", "reverse"):
        transposed = sp.csr_array(pattern.T)
        transposed.sort_indices()
        row_colours = banded_colouring(transposed)
        if row_colours is None:
            row_colours = column_colouring(transposed)
    if mode == "auto":
        k_col = int(col_colours.max()) + 1 if n else 1
        k_row = int(row_colours.max()) + 1 if m else 1
        mode = "reverse" if REVERSE_COST * k_row < 1 + k_col else "forward"
    if mode == "forward":
        seeds = _seeds(col_colours, n)
        take = rows * len(seeds) + col_colours[cols]
        return Compression(pattern, "forward", col_colours, seeds, take)
    seeds = _seeds(row_colours, m)
    take = row_colours[rows] * n + cols
    return Compression(pattern, "reverse", row_colours, seeds, take)


def hessian_compression(pattern: sp.csr_array) -> Compression:
    """The compression of a symmetric Hessian pattern by a star colouring (the optimal
    :func:`banded_colouring` where it applies, else :func:`star_colouring`), with each
    symmetric pair of nonzeros read from the same entry of ``H @ S`` (so the recovered
    matrix is exactly symmetric).

    Raises
    ------
    RuntimeError
        If the colouring does not allow direct recovery (a bug, never a wrong Hessian).
    """
    n = pattern.shape[0]
    colours = banded_colouring(pattern)  # vertices within distance 2 are within a row
    if colours is None:
        colours = star_colouring(pattern)
    seeds = _seeds(colours, n)
    k = len(seeds)
    rows, cols = _coords(pattern)
    # how many columns of each colour row i has: a nonzero (i, j) is alone in H @ S at
    # (i, colour[j]) when that count is 1
    per_row_colour = np.bincount(rows * k + colours[cols], minlength=n * k)
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    direct = per_row_colour[lo * k + colours[hi]] == 1
    mirror = per_row_colour[hi * k + colours[lo]] == 1
    if not (direct | mirror).all():
        raise RuntimeError("tapejit: the star colouring does not allow direct recovery of "
                           "the Hessian (a bug: please report it)")
    src_row = np.where(direct, lo, hi)
    src_colour = np.where(direct, colours[hi], colours[lo])
    return Compression(pattern, "hessian", colours, seeds, src_colour * n + src_row)


class SparseStack:
    """Sparse Jacobians or Hessians of many points that share one pattern.

    Returned by :meth:`Tape.jacobian <tapejit.Tape.jacobian>` and
    :meth:`Tape.hessian <tapejit.Tape.hessian>` with ``sparse=True`` for a batch of
    points (and by :func:`tapejit.jacobian` and :func:`tapejit.hessian` with
    ``batched=True``). The values are one dense array, ``data[p]`` holding point ``p``'s
    nonzeros in the CSR order of ``pattern``: arithmetic over all points is plain numpy
    on ``data``, and ``stack[p]`` is point ``p``'s matrix as a
    :class:`scipy.sparse.csr_array` (sharing the pattern's index arrays). For a Dask
    array of points (:mod:`tapejit.dask`) ``data`` is a lazy Dask array:
    ``stack.data.compute()`` computes the values, and ``stack[p]`` and :meth:`toarray`
    compute what they need.

    Attributes
    ----------
    pattern : scipy.sparse.csr_array
        The common pattern, bool, ``shape``.
    data : ndarray
        ``(n_points, nnz)`` values, float64 (float32 from a
        :class:`~tapejit.Float32Tape`); NaN rows for points that failed a guard with
        ``check="mask"``.
    """

    __slots__ = ("data", "pattern")

    def __init__(self, pattern: sp.csr_array, data: np.ndarray) -> None:
        if data.ndim != 2 or data.shape[1] != pattern.nnz:
            raise ValueError(f"data must have shape (n_points, {pattern.nnz}); got "
                             f"{data.shape}")
        self.pattern = pattern
        self.data = data

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of each point's matrix."""
        return self.pattern.shape

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, p: int) -> sp.csr_array:
        """Point ``p``'s matrix."""
        n = len(self)
        if not isinstance(p, int | np.integer) or not -n <= p < n:
            raise IndexError(f"point index {p!r} out of range for {n} points")
        return sp.csr_array((np.asarray(self.data[p]), self.pattern.indices,
                             self.pattern.indptr), shape=self.pattern.shape)

    def __iter__(self):
        return (self[p] for p in range(len(self)))

    def toarray(self) -> np.ndarray:
        """The dense matrices, ``(n_points, *shape)``, of the values' dtype."""
        rows, cols = _coords(self.pattern)
        out = np.zeros((len(self), *self.shape), dtype=self.data.dtype)
        out[:, rows, cols] = np.asarray(self.data)
        return out

    def __repr__(self) -> str:
        return (f"<SparseStack: {len(self)} points of {self.shape[0]}x{self.shape[1]}, "
                f"{self.pattern.nnz} nonzeros each>")


def _keys(pattern: sp.csr_array) -> np.ndarray:
    """The positions ``row * n_cols + col`` of a pattern's nonzeros, in CSR order
    (ascending: the pattern's indices are sorted)."""
    rows, cols = _coords(pattern)
    return rows * pattern.shape[1] + cols


def gather_stacks(parts: list[SparseStack], which: np.ndarray, rows: np.ndarray
                  ) -> SparseStack:
    """Point ``p``'s matrix from row ``rows[p]`` of ``parts[which[p]]``, all over one
    pattern: the union of the patterns of the parts used (the points of a batch that
    several tapes served, one per branch, each with its own pattern). An entry outside a
    point's own pattern is an exact zero there."""
    used = np.unique(which).tolist()
    if len(used) == 1:
        st = parts[used[0]]
        same = rows.size == len(st) and np.array_equal(rows, np.arange(rows.size))
        return SparseStack(st.pattern, st.data if same else st.data[rows])
    keys = [_keys(parts[k].pattern) for k in used]
    union = functools.reduce(np.union1d, keys)
    m, n = parts[used[0]].shape
    indptr = np.searchsorted(union // n, np.arange(m + 1))
    pattern = sp.csr_array((np.ones(union.size, dtype=bool), union % n, indptr),
                           shape=(m, n))
    data = np.zeros((which.size, union.size), dtype=parts[used[0]].data.dtype)
    for k, key in zip(used, keys, strict=True):
        points = np.flatnonzero(which == k)
        data[np.ix_(points, np.searchsorted(union, key))] = parts[k].data[rows[points]]
    return SparseStack(pattern, data)


def sparse_block(matrix: sp.csr_array | SparseStack, rows: slice, cols: slice
                 ) -> sp.csr_array | SparseStack:
    """Rows ``rows`` and columns ``cols`` of a sparse matrix or of every matrix of a
    stack, keeping every entry of the pattern (a value that is zero at this point too)."""
    if isinstance(matrix, SparseStack):
        pat = matrix.pattern
        # number the nonzeros from 1 (never a zero, so slicing keeps them all) and read
        # which of them the block holds
        numbered = sp.csr_array((np.arange(1, pat.nnz + 1), pat.indices, pat.indptr),
                                shape=pat.shape)[rows, cols]
        pattern = sp.csr_array((np.ones(numbered.nnz, dtype=bool), numbered.indices,
                                numbered.indptr), shape=numbered.shape)
        return SparseStack(pattern, matrix.data[:, numbered.data - 1])
    return sp.csr_array(matrix[rows, cols])
