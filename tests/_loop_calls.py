"""Loop tapes in every kind of call, for ``tests/test_tiers.py``: run as a script (in a
new process with an empty cache on the generic tier), it prints the results and what the
process compiled; the test computes the same calls on the optimised kernels."""

from __future__ import annotations

import numpy as np

import tapejit

X = np.array([[0.8, 0.1], [0.7, 0.3]])
V = np.array([1.0, -0.5])


def scanned(p):
    c, ys = tapejit.scan(lambda c, x: (np.sin(c) * p[0] + x, c * c), p[1],
                         np.arange(5.0) * 0.1, checkpoint=2)
    return c + np.sum(ys)


def fori(p):
    return tapejit.fori_loop(0, 4, lambda i, v: np.cos(v) * p[0] + i * p[1], p[1])


FUNCTIONS = (scanned, fori)


def calls(f) -> list[np.ndarray]:
    """Values, gradients one point and batched, vjp, jvp, Jacobians both ways, hvp, the
    Hessian, and a Hessian recorded by nested differentiation."""
    t = tapejit.record(f, X[0])
    nested = tapejit.record(lambda q: tapejit.hessian(f)(q), X[0])
    return [np.asarray(r) for r in (
        t.forward(X), *t.value_and_grad(X), t.value_and_grad(X[0])[1],
        t.vjp(X, np.ones((2, 1)))[1], t.jvp(X, V)[1], t.jacobian(X, mode="forward"),
        t.jacobian(X, mode="reverse"), t.hvp(X, V), t.hessian(X[0]), nested.forward(X))]


if __name__ == "__main__":
    from tapejit._kernels import runtime

    results = [[r.tolist() for r in calls(f)] for f in FUNCTIONS]
    module = runtime.kernels().module
    compiled = [n for n, fn in vars(module).items() if getattr(fn, "signatures", None)]
    print(repr((results, compiled, sorted(module._ROUTINES_COMPILED))))
