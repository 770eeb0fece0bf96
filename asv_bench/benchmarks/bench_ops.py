"""Every op of the op table through every sweep, with a numpy baseline beside it.

The parameter list, the way each op is reached from user code (``op.trace``, else its
numpy reference, as in the tests' ``_op_helpers.spec``) and the operands
(``op.domain``) all come from ``tapejit.OPS``, so a new op is benchmarked with no entry
here; :func:`_check_complete` fails at import (as numpy's ``bench_ufunc.py`` does) if an
op has no callable route.

Each benchmark evaluates one block instruction over ``N`` elements at one point (the
one-point sweeps) and over ``P`` points of a scalar instruction (the chunked sweeps).
"""

import numpy as np

from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()

N = 10_000  # elements of the block instruction (one point)
P = 10_000  # points of the scalar instruction (batched)

def _route(op):
    """How user code reaches ``op``: ``op.trace`` where calling its numpy reference on
    traced values does not, else that reference."""
    return getattr(op, "trace", None) or op.numpy  # getattr: tables before ``trace``


def _call(op):
    fn, k = _route(op), op.arity
    return lambda a, b, c: fn(*(a, b, c)[:k])


def _domain_points(op, n, seed=0):
    rng = np.random.default_rng(seed)
    cols = []
    for lo, hi in op.domain + ((0.5, 1.0),) * (3 - op.arity):
        cols.append(rng.uniform(lo, hi, n))
    return cols


def _check_complete():
    if tapejit is None:
        return
    missing = [op.name for op in tapejit.OPS if not callable(_route(op))]
    if missing:
        raise RuntimeError(f"ops without a benchmark input: {missing}")


_check_complete()
_OP_NAMES = [op.name for op in tapejit.OPS] if tapejit is not None else []


class OpSweeps:
    """Forward, reverse, tangent and second-order sweeps of each op."""

    params = (_OP_NAMES, ["forward", "gradient", "jvp", "hvp"])
    param_names = ("op", "sweep")
    timeout = 600

    def setup(self, name, sweep):
        if tapejit is None:
            raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
        op = next(o for o in tapejit.OPS if o.name == name)
        f = _call(op)
        a, b, c = _domain_points(op, N)
        # Block: one instruction over N elements, one point (sum to a scalar output).
        self.block = tapejit.record(lambda a, b, c: np.sum(f(a, b, c)), a, b, c)
        self.xb = np.concatenate([a, b, c])
        self.vb = np.ones_like(self.xb)
        # Scalar instruction over P points.
        self.scalar = tapejit.record(lambda a, b, c: f(a, b, c), 0.7, 0.8, 0.9)
        self.xs = np.stack(_domain_points(op, P, seed=1), axis=1)
        self.vs = np.ones_like(self.xs)
        self.run = {
            "forward": lambda: (self.block.forward(self.xb), self.scalar.forward(self.xs)),
            "gradient": lambda: (self.block.gradient(self.xb), self.scalar.gradient(self.xs)),
            "jvp": lambda: (self.block.jvp(self.xb, self.vb), self.scalar.jvp(self.xs, self.vs)),
            "hvp": lambda: (self.block.hvp(self.xb, self.vb), self.scalar.hvp(self.xs, self.vs)),
        }[sweep]
        self.run()  # JIT warm-up excluded

    def time_sweep(self, name, sweep):
        self.run()


class OpNumpyBaseline:
    """The same elementwise work in plain numpy (values only), for scale."""

    params = (_OP_NAMES,)
    param_names = ("op",)

    def setup(self, name):
        if tapejit is None:
            raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
        op = next(o for o in tapejit.OPS if o.name == name)
        self.args = _domain_points(op, N)[: op.arity]
        # the function itself, not a deferred scipy.special reference (tables since
        # ScipySpecial) that would add a call to the timing
        self.f = op.numpy.resolve() if hasattr(op.numpy, "resolve") else op.numpy

    def time_numpy(self, name):
        with np.errstate(all="ignore"):
            self.f(*self.args)
