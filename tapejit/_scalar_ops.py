"""Each op of the table evaluated on Python floats, for recording traced scalars.

The recorder keeps the value of every node at the recording point (branches are decided
on it, folded constants are it). On arrays it calls the op's numpy reference once per
emission; a traced scalar records one instruction per operation, where numpy's per-call
overhead (and ``np.errstate``'s, about a microsecond) would cost more than the rest of
the recording. So the value of each op on floats is derived from its row:

* an op whose value expression (``Op.value``) is plain Python arithmetic on the operands
  (``a + b``, ``-a``, ``1.0 if a < b else 0.0``, ``abs(a)``) and whose value is ``EXACT``
  (one correctly rounded IEEE operation, which Python's floats compute exactly as numpy
  does) runs that expression, compiled here into a Python function. A division by zero,
  which Python raises where numpy gives ``inf`` or ``nan``, falls back to the reference;
* every other op calls its numpy reference on 1-element arrays of the floats, with
  floating-point warnings ignored, exactly as the array path does.

``tests/test_scalar_recording.py`` checks every op both ways bit for bit against the
reference on 1-element arrays, which is what the array path computes.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np

from ._ops import EXACT, OPS, Op

#: Syntax a value expression may use to be run as Python: arithmetic, comparisons,
#: conditional expressions, the operands and numbers, and ``abs``.
_PLAIN = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Compare, ast.Name,
          ast.Constant, ast.Load, ast.Call, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub,
          ast.UAdd, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_OPERANDS = ("a", "b", "c")
_BUILTINS = ("abs",)


def python_expression(op: Op) -> str | None:
    """``op.value`` where Python computes it on floats bit for bit as numpy does, else
    None (see the module docstring)."""
    if EXACT not in op.flags:
        return None
    tree = ast.parse(op.value.strip(), mode="eval")
    operands = _OPERANDS[: op.arity]
    for node in ast.walk(tree):
        if not isinstance(node, _PLAIN):
            return None
        if isinstance(node, ast.Name) and node.id not in operands + _BUILTINS:
            return None
        if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in _BUILTINS
                and len(node.args) == 1 and not node.keywords):
            return None
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float):
            return None
    return op.value.strip()


def _by_reference(op: Op) -> Callable[..., float]:
    reference = op.numpy

    def value(*operands: float) -> float:
        # on 1-element arrays, as the array path: numpy's loops for 0-d operands can
        # differ (np.power(-0.0, 0.5) is -0.0 on scalars, 0.0 on arrays)
        with np.errstate(all="ignore"):
            return float(reference(*[np.array([v]) for v in operands])[0])

    value.__name__ = f"{op.name}_by_reference"
    return value


def python_source(op: Op) -> str | None:
    """The source of the Python function that evaluates ``op`` on floats, or None where
    the op's numpy reference does (shown on request, like the kernels' source)."""
    expr = python_expression(op)
    if expr is None:
        return None
    args = ", ".join(_OPERANDS[: op.arity])
    return (f"def {op.name}_value({args}):\n"
            f"    try:\n"
            f"        return {expr}\n"
            f"    except ZeroDivisionError:  # numpy's inf or nan instead\n"
            f"        return reference({args})\n")


def _evaluator(op: Op) -> Callable[..., float]:
    source = python_source(op)
    reference = _by_reference(op)
    if source is None:
        return reference
    namespace: dict = {"reference": reference}
    exec(compile(source, f"<tapejit scalar value of {op.name}>", "exec"), namespace)
    return namespace[f"{op.name}_value"]


#: The evaluator of each op on floats, by opcode (None for codes that are not ops).
VALUE: tuple[Callable[..., float] | None, ...] = tuple(
    _evaluator(op) if op is not None else None
    for op in [{o.code: o for o in OPS}.get(code) for code in range(128)])
