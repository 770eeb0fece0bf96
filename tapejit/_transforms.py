"""Function transforms: ``grad`` and ``value_and_grad`` with a per-function tape cache.

The first call with a given signature (the shapes of the array arguments and the values
of the static ones) records a tape; later calls with the same signature reuse it.
Arguments in ``argnums`` are differentiated; other float/array arguments become tape
parameters (their values change from call to call without re-recording); Python ints,
bools, strings and other objects are *static*: passed to ``f`` as they are and part of
the cache key (a new value records a new tape).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._record import normalize_argnums, record
from ._tape import Tape


def _is_array_like(a: Any) -> bool:
    if isinstance(a, bool):
        return False
    if isinstance(a, float | np.floating | np.ndarray):
        return True
    if isinstance(a, list | tuple) and a:
        try:
            return np.asarray(a).dtype.kind in "iuf"
        except (ValueError, TypeError):
            return False
    return False


class _TapeCache:
    """Tapes of one function, keyed by call signature and argnums.

    One cache per function object, shared by every transform of it (``grad``,
    ``jacobian``, ``hessian``, ...), so the transforms of ``f`` record each signature once.
    """

    def __init__(self, f: Callable[..., Any]) -> None:
        self.f = f
        self.tapes: dict[tuple, tuple[Tape, tuple[int, ...], list[int]]] = {}
        self.n_records = 0

    def prepare(
        self, args: tuple, argnums: int | Sequence[int]
    ) -> tuple[Tape, np.ndarray, np.ndarray | None, tuple]:
        """Tape for this call, flat inputs, flat params and the input shapes."""
        nums = normalize_argnums(argnums, len(args))
        key: list[Any] = [nums]
        static = {}
        arrays: list[np.ndarray | None] = []
        for i, a in enumerate(args):
            if i in nums or _is_array_like(a):
                arr = np.asarray(a, dtype=np.float64) if i in nums else np.asarray(a)
                if arr.dtype.kind not in "iuf":
                    raise TypeError(
                        f"argument {i} must be a real number or array of real numbers; "
                        f"got dtype {arr.dtype}"
                    )
                arrays.append(arr)
                key.append(("a", arr.shape))
            else:
                try:
                    hash(a)
                except TypeError:
                    raise TypeError(
                        f"argument {i} ({type(a).__name__}) is neither an array nor hashable; "
                        "non-array arguments are static and must be hashable"
                    ) from None
                static[i] = a
                arrays.append(None)
                key.append(("s", type(a), a))
        k = tuple(key)
        entry = self.tapes.get(k)
        if entry is None:
            tape = record(self.f, *args, argnums=nums, static=static)
            params_pos = [i for i, a in enumerate(arrays) if a is not None and i not in nums]
            entry = (tape, nums, params_pos)
            self.tapes[k] = entry
            self.n_records += 1
        tape, nums, params_pos = entry
        x = _concat([arrays[i] for i in nums])
        p = _concat([arrays[i] for i in params_pos]) if params_pos else None
        return tape, x, p, tuple(arrays[i].shape for i in nums)


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tape_cache(f: Callable[..., Any]) -> _TapeCache:
    """The tape cache shared by all transforms of ``f``."""
    try:
        cache = _CACHES.get(f)
    except TypeError:  # not weak-referenceable: a private cache
        return _TapeCache(f)
    if cache is None:
        cache = _CACHES[f] = _TapeCache(f)
    return cache


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if len(arrays) == 1:
        return np.ravel(arrays[0]).astype(np.float64, copy=False)
    return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64, copy=False)


def _split(g: np.ndarray, shapes: tuple, single: bool) -> Any:
    parts = []
    o = 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        part = g[o : o + n].reshape(s)
        parts.append(float(part) if s == () else part)
        o += n
    return parts[0] if single else tuple(parts)


def value_and_grad(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0
) -> Callable[..., tuple[float, Any]]:
    """Transform ``f`` into a function returning ``(f(*args), gradient)``.

    The tape is recorded at the first call and reused while the argument shapes (and
    static arguments) stay the same.

    Parameters
    ----------
    f : callable
        Function with one scalar output.
    argnums : int or sequence of int
        Arguments to differentiate with respect to. The gradient has their shapes (a
        tuple when ``argnums`` is a sequence).

    Returns
    -------
    callable
        ``g(*args) -> (value, gradient)``; ``g.tape_cache`` shows its tapes.
    """
    cache = tape_cache(f)
    single = isinstance(argnums, int | np.integer)

    @functools.wraps(f)
    def wrapped(*args: Any) -> tuple[float, Any]:
        tape, x, p, shapes = cache.prepare(args, argnums)
        tape._scalar_output("value_and_grad")
        v, g = tape.value_and_grad(x, params=p)
        return v, _split(g, shapes, single)

    wrapped.tape_cache = cache  # type: ignore[attr-defined]
    return wrapped


def grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Transform ``f`` into a function returning its gradient.

    Parameters
    ----------
    f : callable
        Function with one scalar output.
    argnums : int or sequence of int
        Arguments to differentiate with respect to.

    Returns
    -------
    callable
        ``g(*args) -> gradient`` (a tuple when ``argnums`` is a sequence).

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> g = tapejit.grad(lambda x: 2.0 * np.dot(x, x))
    >>> g(np.array([1.0, 2.0, 3.0])).tolist()
    [4.0, 8.0, 12.0]
    """
    vg = value_and_grad(f, argnums)

    @functools.wraps(f)
    def wrapped(*args: Any) -> Any:
        return vg(*args)[1]

    wrapped.tape_cache = vg.tape_cache  # type: ignore[attr-defined]
    return wrapped


def _out_shape(tape: Tape) -> tuple[int, ...]:
    shapes = tape.output_shapes
    return shapes[0] if len(shapes) == 1 else (tape.n_outputs,)


def jacobian(
    f: Callable[..., Any], argnums: int | Sequence[int] = 0, mode: str = "auto"
) -> Callable[..., Any]:
    """Transform ``f`` into a function returning its Jacobian.

    Parameters
    ----------
    f : callable
        Function returning an array (or a tuple of arrays, flattened in order).
    argnums : int or sequence of int
        Arguments to differentiate with respect to.
    mode : {"auto", "forward", "reverse"}
        See :meth:`Tape.jacobian`.

    Returns
    -------
    callable
        ``J(*args)``: for one output array of shape ``so`` and an argument of shape
        ``si`` the block has shape ``so + si`` (a tuple of blocks for a sequence
        ``argnums``).
    """
    cache = tape_cache(f)
    single = isinstance(argnums, int | np.integer)

    @functools.wraps(f)
    def wrapped(*args: Any) -> Any:
        tape, x, p, shapes = cache.prepare(args, argnums)
        J = tape.jacobian(x, params=p, mode=mode)
        so = _out_shape(tape)
        blocks, o = [], 0
        for s in shapes:
            n = int(np.prod(s, dtype=np.int64))
            blocks.append(J[:, o : o + n].reshape(so + s))
            o += n
        return blocks[0] if single else tuple(blocks)

    wrapped.tape_cache = cache  # type: ignore[attr-defined]
    return wrapped


def hessian(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Transform a scalar function ``f`` into a function returning its Hessian.

    Parameters
    ----------
    f : callable
        Function with one scalar output.
    argnums : int or sequence of int
        Arguments to differentiate with respect to.

    Returns
    -------
    callable
        ``H(*args)``: shape ``si + si`` for one argument of shape ``si``; for a sequence
        ``argnums`` a tuple of tuples of blocks ``H[i][j]`` of shape ``si + sj``.
        Exactly symmetric.
    """
    cache = tape_cache(f)
    single = isinstance(argnums, int | np.integer)

    @functools.wraps(f)
    def wrapped(*args: Any) -> Any:
        tape, x, p, shapes = cache.prepare(args, argnums)
        H = tape.hessian(x, params=p)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        blocks = tuple(
            tuple(
                H[offs[i] : offs[i + 1], offs[j] : offs[j + 1]].reshape(shapes[i] + shapes[j])
                for j in range(len(shapes))
            )
            for i in range(len(shapes))
        )
        return blocks[0][0] if single else blocks

    wrapped.tape_cache = cache  # type: ignore[attr-defined]
    return wrapped


def hvp(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """Transform a scalar function ``f`` into ``h(*args, v=...)`` returning ``H v``.

    Parameters
    ----------
    f : callable
        Function with one scalar output.
    argnums : int or sequence of int
        Arguments to differentiate with respect to; ``v`` is shaped like them (a tuple for
        a sequence ``argnums``), and so is the result.

    Returns
    -------
    callable
        ``h(*args, v)``: Hessian-vector product by one forward-over-reverse sweep.
    """
    cache = tape_cache(f)
    single = isinstance(argnums, int | np.integer)

    @functools.wraps(f)
    def wrapped(*args: Any, v: Any) -> Any:
        tape, x, p, shapes = cache.prepare(args, argnums)
        vs = (v,) if single else tuple(v)
        if tuple(np.shape(a) for a in vs) != tuple(shapes):
            raise ValueError(
                f"v must match the shapes of the differentiated arguments {shapes}"
            )
        hv = tape.hvp(x, _concat([np.asarray(a, dtype=np.float64) for a in vs]), params=p)
        return _split(hv, shapes, single)

    wrapped.tape_cache = cache  # type: ignore[attr-defined]
    return wrapped


def jvp(f: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any]) -> tuple:
    """Evaluate ``f(*primals)`` and its directional derivative along ``tangents``.

    Forward mode (one tangent sweep over the cached tape of ``f``), as in JAX.

    Parameters
    ----------
    f : callable
        Function of the primal arguments (all differentiated).
    primals, tangents : sequence
        Arguments and matching tangent directions of the same shapes.

    Returns
    -------
    (outputs, output_tangents)
        Shaped like ``f``'s output (flattened to one vector when ``f`` returns a tuple).
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents) or any(
        np.shape(a) != np.shape(t) for a, t in zip(primals, tangents, strict=False)
    ):
        raise ValueError("primals and tangents must have the same structure and shapes")
    cache = tape_cache(f)
    tape, x, p, _ = cache.prepare(primals, tuple(range(len(primals))))
    v = _concat([np.asarray(t, dtype=np.float64) for t in tangents]) if tangents else x
    y = np.asarray(tape.forward(x, params=p), dtype=np.float64)
    ty = np.asarray(tape.jvp(x, v, params=p), dtype=np.float64)
    so = _out_shape(tape)
    return y.reshape(so), ty.reshape(so)
