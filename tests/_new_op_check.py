"""Run by ``tests/test_new_op.py`` in a subprocess, against a copy of tapejit whose op
table has one more row, ``powm1`` (see there): the new op is traced from user code,
evaluated in every sweep, saved and loaded, and displayed, with no other file changed.

Usage: ``python tests/_new_op_check.py <directory the copy of tapejit is in>``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from scipy.special import powm1

import tapejit
from tapejit._show import interpret, table


def check(where: Path) -> None:
    assert Path(tapejit.__file__).resolve().parent == where.resolve() / "tapejit"
    op = {op.name: op for op in tapejit.OPS}["powm1"]

    # traced from user code through the ufunc itself
    tape = tapejit.record(lambda x: powm1(x[0], x[1]), np.array([0.5, -0.25]))
    assert tape.opcodes.tolist() == [op.code], tape.listing()
    assert "powm1" in tape.listing()

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(0.5, 3.0, 300), rng.uniform(-2.0, 2.0, 300)])
    V = np.random.default_rng(1).normal(size=X.shape)
    a, b = X.T
    y = powm1(a, b)
    la = np.log(a)
    grad = np.column_stack([b * (y + 1) / a, (y + 1) * la])  # the partials
    cross = (y + 1) * (1 + b * la) / a
    H = np.stack([np.column_stack([b * (b - 1) * (y + 1) / a**2, cross]),
                  np.column_stack([cross, (y + 1) * la**2])], axis=1)

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
        assert z["op_names"].tolist() == ["powm1"]
    buf.seek(0)
    np.testing.assert_array_equal(tapejit.load(buf).forward(X), tape.forward(X))

    # displayed: the reference interpreter evaluates the row's expressions with numpy
    sweep = interpret(tape, X[7])
    np.testing.assert_allclose(sweep.values[-1], y[7], rtol=1e-13)
    np.testing.assert_allclose(sweep.adjoints[tape.inputs], grad[7], rtol=1e-12)
    assert "powm1" in table(tape, X[7])
    print("ok")


if __name__ == "__main__":
    check(Path(sys.argv[1]))
