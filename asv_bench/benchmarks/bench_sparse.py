"""asv benchmarks for sparse derivatives (issue 23): the hanging chain's Lagrangian
Hessian and constraint Jacobian, sparse against dense, their patterns and colourings, and
the IPOPT solve.

* ``ChainHessian``: ``tape.hessian(z, params, sparse=True)`` of the chain's Lagrangian
  ``sigma * energy + lam . links`` (``N`` links, ``2 N + 2`` variables) at one point,
  next to a hand-written numpy assembly of the same sparse matrix (the baseline: the
  2 x 2 blocks of each link, one vectorized pass); the pattern (index-set propagation)
  and the colourings (the band's, which the tape uses here, and the general greedy star
  colouring), each computed afresh; ``track_colours`` and ``track_distance2_colours``
  (a greedy distance-2 colouring's count).
* ``ChainHessianDense``: the dense ``tape.hessian`` for the ratio (small ``N`` only: it
  costs ``2 N + 2`` Hessian-vector products).
* ``ChainJacobian``, ``ChainJacobianDense``: the constraints' sparse Jacobian, and the
  dense one at ``N = 500``.
* ``ChainSolve``: ``tapejit.optimize.ipopt`` on the chain, recording included (skipped
  without cyipopt).
* ``ScalarLoopPattern``: both patterns of a tape of 100,002 scalar instructions.
* ``LoopPattern``: both patterns of loop tapes (``tapejit.scan``): the Lorenz fit's 2000
  RK4 steps, and a chain of 10,000 steps, one input each.

JIT compilation is excluded: every ``setup`` records and calls the timed function once.
"""

import numpy as np

from . import _baselines as B
from . import import_tapejit
from .bench_core import _record, _try

tapejit, _TAPEJIT_ERROR = import_tapejit()

chain = B.hanging_chain


def lagrangian_tape(N):
    energy, links, z0, _, _ = chain(N)

    def lagrangian(z, sigma, lam):
        return sigma * energy(z) + np.dot(lam, links(z))

    tape = _record(lagrangian, z0, 1.0, np.ones(N), argnums=0)
    params = np.concatenate([[1.0], np.random.default_rng(0).uniform(0.5, 1.5, N)])
    return tape, z0, params


def numpy_chain_hessian(N, lam):
    """The Lagrangian's Hessian assembled by hand: each link ``i`` adds
    ``2 lam_i [[1, -1], [-1, 1]]`` on ``(x_i, x_(i+1))`` and on ``(y_i, y_(i+1))``."""
    import scipy.sparse as sp

    i = np.arange(N)
    rows, cols, vals = [], [], []
    for off in (0, N + 1):
        a, b = off + i, off + i + 1
        rows += [a, b, a, b]
        cols += [a, b, b, a]
        vals += [2 * lam, 2 * lam, -2 * lam, -2 * lam]
    n = 2 * N + 2
    return sp.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(n, n))


class ChainHessian:
    params = (500, 2000, 5000)
    param_names = ("N",)

    def setup(self, N):
        self.tape, self.z, self.p = lagrangian_tape(N)
        self.N = N
        H = _try(self.tape.hessian, self.z, self.p, sparse=True)
        ref = numpy_chain_hessian(N, self.p[1:])
        if abs(H - ref).max() > 1e-12:
            raise ValueError("the sparse Hessian differs from the hand-written one")
        from tapejit._program import Program

        self.program = Program.from_tape(self.tape)
        self.pattern = self.tape.hessian_sparsity()

    def time_sparse_hessian(self, N):
        self.tape.hessian(self.z, self.p, sparse=True)

    def time_numpy_assembly(self, N):
        numpy_chain_hessian(N, self.p[1:])

    def time_pattern(self, N):
        from tapejit._sparsity import hessian_sparsity

        hessian_sparsity(self.program)

    def time_banded_colouring(self, N):
        """The colouring the tape uses here (the band's, optimal)."""
        from tapejit._colouring import banded_colouring

        banded_colouring(self.pattern)

    def time_star_colouring(self, N):
        """The general greedy star colouring, for patterns without a band."""
        from tapejit._colouring import star_colouring

        star_colouring(self.pattern)

    def track_colours(self, N):
        from tapejit._colouring import star_colouring

        return int(star_colouring(self.pattern).max()) + 1

    def track_distance2_colours(self, N):
        from tapejit._colouring import distance2_colouring

        return int(distance2_colouring(self.pattern).max()) + 1


class ChainHessianDense:
    params = (500, 1000)
    param_names = ("N",)

    def setup(self, N):
        self.tape, self.z, self.p = lagrangian_tape(N)
        _try(self.tape.hessian, self.z, self.p)

    def time_dense_hessian(self, N):
        self.tape.hessian(self.z, self.p)


class ChainJacobian:
    params = (500, 5000)
    param_names = ("N",)

    def setup(self, N):
        _, links, z0, _, _ = chain(N)
        self.tape = _record(links, z0)
        self.z = z0
        _try(self.tape.jacobian, z0, sparse=True)

    def time_sparse_jacobian(self, N):
        self.tape.jacobian(self.z, sparse=True)


class ChainJacobianDense:
    params = (500,)
    param_names = ("N",)

    def setup(self, N):
        _, links, z0, _, _ = chain(N)
        self.tape = _record(links, z0)
        self.z = z0
        _try(self.tape.jacobian, z0)

    def time_dense_jacobian(self, N):
        self.tape.jacobian(self.z)


class ChainSolve:
    params = (500,)
    param_names = ("N",)

    def setup(self, N):
        try:
            import cyipopt  # noqa: F401
            from scipy.optimize import Bounds
        except ImportError as exc:
            raise NotImplementedError(f"cyipopt unavailable: {exc!r}") from exc
        energy, links, z0, lb, ub = chain(N)
        self.args = (energy, z0)
        self.kwargs = {"constraints": {"type": "eq", "fun": links},
                       "bounds": Bounds(lb, ub), "tol": 1e-8}
        res = _try(tapejit.optimize.ipopt, *self.args, **self.kwargs)
        if not res.success:
            raise ValueError(f"the chain's solve failed: {res.message}")

    def time_ipopt(self, N):
        tapejit.optimize.ipopt(*self.args, **self.kwargs)

    def track_ipopt_iterations(self, N):
        return int(tapejit.optimize.ipopt(*self.args, **self.kwargs).nit)


class ScalarLoopPattern:
    """Patterns of a tape of 100,002 scalar instructions (a Python loop over the elements:
    ``s += sin(x[i] x[i+1])``), computed afresh from the program; the Jacobian pattern
    propagates output sets backwards (one output)."""

    def setup(self):
        n = 33_335

        def loop(x):
            s = x[0] * 0.0
            for i in range(n - 1):
                s = s + np.sin(x[i] * x[i + 1])
            return s

        from tapejit._program import Program

        tape = _record(loop, np.random.default_rng(0).uniform(size=n))
        self.program = Program.from_tape(tape)

    def time_jacobian_pattern(self):
        from tapejit._sparsity import jacobian_sparsity

        jacobian_sparsity(self.program)

    def time_hessian_pattern(self):
        from tapejit._sparsity import hessian_sparsity

        hessian_sparsity(self.program)

    def track_instructions(self):
        return len(self.program)


class LoopPattern:
    """Patterns of loop tapes, computed afresh from the program: ``lorenz``, the Lorenz
    fit with its 2000 RK4 steps in ``tapejit.scan`` (3 carries, the 3 parameters as
    inputs; the unrolled tape's 142,006 instructions are what ``ScalarLoopPattern``
    measures), and ``chain``, a scan of 10,000 steps over as many inputs, each step
    ``(x[t] - c)**2 cos(x[t])`` carrying ``x[t]`` (a tridiagonal Hessian): each step's sets
    differ, the Jacobian is of the 10,000 per-step outputs, the Hessian of their sum."""

    params = (("lorenz", "chain"),)
    param_names = ("loop",)

    def setup(self, loop):
        from tapejit._program import Program

        if loop == "lorenz":
            one = _record(B.lorenz_scan_f, np.asarray(B.LORENZ_P))
            many = one
        else:
            def ys(x):
                _, y = tapejit.scan(lambda c, xt: (xt, (xt - c) ** 2 * np.cos(xt)), x[0],
                                    x[1:])
                return y

            x0 = np.linspace(0.0, 1.0, 10_001)
            many = _record(ys, x0)
            one = _record(lambda x: np.sum(ys(x)), x0)
        self.jacobian_program = Program.from_tape(many)
        self.hessian_program = Program.from_tape(one)

    def time_jacobian_pattern(self, loop):
        from tapejit._sparsity import jacobian_sparsity

        jacobian_sparsity(self.jacobian_program)

    def time_hessian_pattern(self, loop):
        from tapejit._sparsity import hessian_sparsity

        hessian_sparsity(self.hessian_program)
