"""Reference derivatives for ``tests/test_nested.py`` from JAX (not in the test
environment): run with the peers' interpreter from the repository root,

    PYTHONPATH=. /work/venv-peers/bin/python tests/data/make_nested_reference.py

It writes ``tests/data/nested_reference.npz``: for each problem of
``nested_problems.py`` its points and, at each, the value, gradient, Hessian and third
derivative (``jacfwd(hessian(f))``); and for the gradient-norm penalty the penalized
objective's value and gradient at the start, and its value after one gradient step.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nested_problems as P  # noqa: E402


def main() -> None:
    out = {}
    for name, (fn, points) in P.PROBLEMS.items():
        f = functools.partial(lambda fn, x: fn(x, jnp), fn)
        X = np.array(points, dtype=np.float64)
        out[f"{name}/x"] = X
        out[f"{name}/value"] = np.array([f(x) for x in X])
        out[f"{name}/grad"] = np.array([jax.grad(f)(x) for x in X])
        out[f"{name}/hessian"] = np.array([jax.hessian(f)(x) for x in X])
        out[f"{name}/third"] = np.array([jax.jacfwd(jax.hessian(f))(x) for x in X])

    def loss(w):
        return P.logistic_loss(w, jnp)

    def penalized(w):
        return loss(w) + P.PENALTY_LAMBDA * jnp.sum(jax.grad(loss)(w) ** 2)

    w0 = jnp.array(P.PENALTY_W0)
    g0 = jax.grad(penalized)(w0)
    w1 = w0 - P.PENALTY_STEP * g0
    out["penalty/value0"] = np.asarray(penalized(w0))
    out["penalty/grad0"] = np.asarray(g0)
    out["penalty/value1"] = np.asarray(penalized(w1))
    out["penalty/hessian0"] = np.asarray(jax.hessian(penalized)(w0))
    here = os.path.dirname(os.path.abspath(__file__))
    np.savez(os.path.join(here, "nested_reference.npz"), **out)


if __name__ == "__main__":
    main()
