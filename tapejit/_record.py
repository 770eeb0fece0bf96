"""``record``: trace a Python function once into a :class:`~tapejit.Tape`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._errors import TracingError
from ._tape import Tape
from ._tape_builder import Recorder
from ._tracer import Tracer, ids_of, lift, recorder_of


def _as_arg(value: Any, i: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf" or arr.dtype.kind == "b":
        raise TypeError(
            f"argument {i} must be a real number or an array of real numbers; "
            f"got {type(value).__name__}" + (f" of dtype {arr.dtype}" if arr.dtype.kind else "")
        )
    return arr.astype(np.float64)


class KeywordCall:
    """``f`` with its keyword arguments passed as trailing positional values, so that they
    are traced, parameters or static exactly like positional arguments."""

    def __init__(self, f: Callable[..., Any], n_positional: int, names: tuple[str, ...]):
        self.f = f
        self.n_positional = n_positional
        self.names = names
        self.__name__ = getattr(f, "__name__", "")

    def __call__(self, *values: Any) -> Any:
        n = self.n_positional
        return self.f(*values[:n], **dict(zip(self.names, values[n:], strict=True)))


def bind_call(f: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Callable, tuple, int]:
    """``(function, values, n_positional)`` for calling ``f(*args, **kwargs)`` with
    positional values only: the keyword arguments follow the positional ones, by name.
    As in JAX, a keyword argument is never differentiated (``argnums`` counts the
    positional ones); a call that does not fit ``f``'s signature fails here."""
    if not kwargs:
        return f, tuple(args), len(args)
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):  # no signature (a builtin): the call will tell
        sig = None
    if sig is not None:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{getattr(f, '__name__', 'f')}(): {exc}") from None
    return KeywordCall(f, len(args), tuple(kwargs)), (*args, *kwargs.values()), len(args)


def is_array_like(a: Any) -> bool:
    """A float, an array or a non-empty list of real numbers: traced (Python ints, bools
    and other objects are static: passed to ``f`` as they are)."""
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


def normalize_argnums(argnums: int | Sequence[int] | None, n_args: int) -> tuple[int, ...]:
    """Validate ``argnums`` against the number of arguments; ``None`` means all."""
    if argnums is None:
        return tuple(range(n_args))
    nums = (argnums,) if isinstance(argnums, int | np.integer) else tuple(argnums)
    out = []
    for a in nums:
        if not isinstance(a, int | np.integer) or not -n_args <= a < n_args:
            raise ValueError(f"argnums entry {a!r} is not an argument index for {n_args} args")
        out.append(int(a) % n_args)
    if len(set(out)) != len(out):
        raise ValueError(f"argnums {argnums!r} repeats an argument")
    return tuple(out)


def _flatten_outputs(rec: Recorder, result: Any) -> tuple[np.ndarray, tuple]:
    items = list(result) if isinstance(result, tuple | list) else [result]
    ids, shapes = [], []
    for k, item in enumerate(items):
        if isinstance(item, Tracer):
            if recorder_of([item]) is not rec:
                raise TracingError("the function returned a value from another recording")
            i = ids_of(item)
        elif isinstance(item, np.ndarray) and item.dtype == object:
            i = lift(rec, item)  # np.array([...]) of traced values
        else:
            arr = np.asarray(item)
            if arr.dtype.kind not in "biuf":
                raise TypeError(
                    f"output {k} of the recorded function is {type(item).__name__}; "
                    "expected a number, an array or a traced value (or a tuple of them)"
                )
            i = rec.const(arr.astype(np.float64))
        ids.append(np.ravel(i))
        shapes.append(np.shape(i))
    flat = np.concatenate(ids) if ids else np.empty(0, np.int64)
    return flat, tuple(shapes)


#: numpy's own errors where a traced value met a plain numpy array (numpy gives them
#: before tapejit can see the value), by a part of their message: what to write instead.
_NUMPY_HINTS = {
    "setting an array element with a sequence": (
        "A numpy float array (such as y = np.zeros(3)) cannot hold a traced value. Start "
        "the array from traced values instead: y = np.zeros_like(x, shape=(3,)), then "
        "y[0] = ..."
    ),
    "only integers, slices": (
        "If the index is a traced value, use int(x) (the tape guards that it stays that "
        "integer), np.where to select, or a constant index."
    ),
}


def record(
    f: Callable[..., Any],
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    static: dict[int, Any] | None = None,
    **kwargs: Any,
) -> Tape:
    """Record ``f`` once into a :class:`Tape`.

    ``f`` is called with tracing stand-ins in place of its arguments and may use Python
    arithmetic, indexing, slicing, broadcasting, loops and numpy functions. Every
    elementary operation is recorded; constants are folded and never become tape
    variables.

    Parameters
    ----------
    f : callable
        Function of the arguments, returning a number, an array, or a tuple of them
        (outputs are flattened in order).
    *args : float or array_like
        Arguments at which to record: their shapes fix the tape's shapes, and where ``f``
        branches on a traced value (``if``, ``while``) their values decide the branch
        recorded. Each such decision becomes a *guard* that every later evaluation checks
        (see :meth:`Tape.forward`'s ``check``).
    argnums : int or sequence of int, optional
        Arguments to differentiate with respect to; they become the tape's inputs
        (flattened in order). The other arguments become *parameters*: tape inputs that
        are not differentiated, given per point or fixed at evaluation time (data of a
        fit, for instance). Default: all arguments are inputs.
    static : dict, optional
        Internal: arguments passed to ``f`` as they are, not traced (by position).
    **kwargs
        Keyword arguments of ``f``: parameters of the tape where they are floats or
        arrays (never differentiated, as in JAX), passed as they are otherwise.

    Returns
    -------
    Tape

    Raises
    ------
    TracingError
        If ``f`` does something a tape cannot record faithfully (an unsupported numpy
        function, converting a traced value to a number, using it as an index).

    Examples
    --------
    >>> import numpy as np, tapejit
    >>> tape = tapejit.record(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
    >>> v, g = tape.value_and_grad(np.array([2.0, 5.0]))
    >>> round(v, 6), np.round(g, 6).tolist()
    (11.652071, [5.5, 1.716338])
    """
    static = dict(static or {})
    target, args, n_pos = bind_call(f, args, kwargs)
    for i in range(n_pos, len(args)):
        if not is_array_like(args[i]):
            static[i] = args[i]
    traced_pos = [i for i in range(len(args)) if i not in static]
    nums = normalize_argnums(argnums, n_pos)
    for a in nums:
        if a in static:
            raise ValueError(f"argument {a} is static and cannot be differentiated")
    rec = Recorder()
    call_args: list[Any] = list(args)
    leaves: dict[int, np.ndarray] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    for i in traced_pos:
        arr = _as_arg(args[i], i)
        leaves[i] = rec.leaves(arr)
        shapes[i] = arr.shape
        call_args[i] = Tracer(rec, leaves[i].copy())  # f may assign into it
    try:
        result = target(*call_args)
    except (ValueError, IndexError) as exc:
        hint = next((h for m, h in _NUMPY_HINTS.items() if m in str(exc)), None)
        if hint is None:
            raise
        raise TracingError(f"numpy: {exc} {hint}") from exc
    finally:
        rec.closed = True
    out_ids, out_shapes = _flatten_outputs(rec, result)
    param_pos = [i for i in traced_pos if i not in nums]

    def cat(pos: list[int]) -> np.ndarray:
        return np.concatenate([leaves[i].ravel() for i in pos]) if pos else np.empty(0, int)

    program = rec.finalize(cat(list(nums)), cat(param_pos), out_ids)
    return Tape(
        **program.arrays(),
        input_shapes=tuple(shapes[i] for i in nums),
        output_shapes=out_shapes,
        name=getattr(f, "__name__", ""),
    )


def stop_gradient(x: Any) -> Any:
    """Use ``x``'s value but do not differentiate through it (``detach``).

    ``z = u * x`` with ``u = stop_gradient(x * x)`` has ``dz/dx = u``.
    """
    if isinstance(x, Tracer):
        from ._tracer import emit

        return emit("stop_gradient", x)
    return x
