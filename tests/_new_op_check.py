"""Run by ``tests/test_new_op.py`` in a subprocess, against a copy of tapejit whose op
table has one more row, ``logaddexp2`` (see there): the new op is traced from user code,
evaluated in every sweep, saved and loaded, and displayed, with no other file changed.

Usage: ``python tests/_new_op_check.py <directory the copy of tapejit is in>``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

import tapejit
from tapejit._show import interpret, table

LN2 = np.log(2.0)


def check(where: Path) -> None:
    assert Path(tapejit.__file__).resolve().parent == where.resolve() / "tapejit"
    op = {op.name: op for op in tapejit.OPS}["logaddexp2"]

    # traced from user code through numpy's own ufunc
    tape = tapejit.record(lambda x: np.logaddexp2(x[0], x[1]), np.array([0.5, -0.25]))
    assert tape.opcodes.tolist() == [op.code], tape.listing()
    assert "logaddexp2" in tape.listing()

    X = np.random.default_rng(0).uniform(-3.0, 3.0, size=(300, 2))
    V = np.random.default_rng(1).normal(size=X.shape)
    a, b = X.T
    y = np.logaddexp2(a, b)
    p, q = 2.0 ** (a - y), 2.0 ** (b - y)  # the partials
    grad = np.column_stack([p, q])
    H = LN2 * np.stack([np.column_stack([p * (1 - p), -p * q]),
                        np.column_stack([-p * q, q * (1 - q)])], axis=1)

    # every sweep, batched and at one point
    np.testing.assert_allclose(tape.forward(X), y, rtol=1e-13)
    assert tape.forward(X[7]) == tape.forward(X)[7]
    v, g = tape.value_and_grad(X)
    np.testing.assert_array_equal(v, tape.forward(X))
    np.testing.assert_allclose(g, grad, rtol=1e-12)
    v7, g7 = tape.value_and_grad(X[7])
    assert v7 == v[7]
    np.testing.assert_array_equal(g7, g[7])
    np.testing.assert_allclose(tape.jvp(X, V), np.sum(grad * V, axis=1), rtol=1e-12,
                               atol=1e-14)
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(tape.jacobian(X, mode=mode)[:, 0, :], grad, rtol=1e-12)
    Hs = tape.hessian(X)
    np.testing.assert_allclose(Hs, H, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(tape.hessian(X[7]), Hs[7])
    np.testing.assert_allclose(tape.hvp(X, V), np.einsum("nij,nj->ni", H, V), rtol=1e-10,
                               atol=1e-14)

    # the file records the new op with its definition's hash, and loads
    buf = io.BytesIO()
    tape.save(buf)
    buf.seek(0)
    with np.load(buf) as z:
        assert z["op_names"].tolist() == ["logaddexp2"]
    buf.seek(0)
    np.testing.assert_array_equal(tapejit.load(buf).forward(X), tape.forward(X))

    # displayed: the reference interpreter evaluates the row's expressions with numpy
    sweep = interpret(tape, X[7])
    np.testing.assert_allclose(sweep.values[-1], y[7], rtol=1e-13)
    np.testing.assert_allclose(sweep.adjoints[tape.inputs], grad[7], rtol=1e-12)
    assert "logaddexp2" in table(tape, X[7])
    print("ok")


if __name__ == "__main__":
    check(Path(sys.argv[1]))
