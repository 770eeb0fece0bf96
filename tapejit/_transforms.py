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
    """Tapes of one function, keyed by call signature."""

    def __init__(self, f: Callable[..., Any], argnums: int | Sequence[int]) -> None:
        self.f = f
        self.argnums = argnums
        self.tapes: dict[tuple, tuple[Tape, tuple[int, ...], list[int]]] = {}
        self.n_records = 0

    def prepare(self, args: tuple) -> tuple[Tape, np.ndarray, np.ndarray, tuple, tuple]:
        """Tape for this call, flat inputs, flat params, argnums and input shapes."""
        nums = normalize_argnums(self.argnums, len(args))
        key = []
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
        return tape, x, p, nums, tuple(arrays[i].shape for i in nums)


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
    cache = _TapeCache(f, argnums)
    single = isinstance(argnums, int | np.integer)

    @functools.wraps(f)
    def wrapped(*args: Any) -> tuple[float, Any]:
        tape, x, p, _, shapes = cache.prepare(args)
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
