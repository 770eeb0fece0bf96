"""Random expression programs, recorded once, checked against complex-step derivatives.

A program is a small random DAG over 2-4 inputs (and optionally parameters) built from
analytic ops. It is written against a numpy-like namespace ``ns``, so the very same
program runs

* on tracers (``ns = numpy``) to record a tape,
* on float64 arrays (``ns = numpy``) as the value reference,
* on complex128 arrays (a namespace whose functions are analytic continuations) for the
  complex-step derivative ``Im f(x + i h e_j) / h``, which has no cancellation error and
  shares no code with tapejit.

Batched results must equal point-by-point results bit for bit, for point counts around
the chunk size and the serial/parallel switch, and for a large count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tapejit
from tapejit._kernels.runtime import chunk_of

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

H = 1e-30  # complex step
RTOL = 1e-9


class RealNS:
    sin = staticmethod(np.sin)
    cos = staticmethod(np.cos)
    tanh = staticmethod(np.tanh)
    sinh = staticmethod(np.sinh)
    arctan = staticmethod(np.arctan)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    sqrt = staticmethod(np.sqrt)
    square = staticmethod(np.square)
    power = staticmethod(np.power)
    logaddexp = staticmethod(np.logaddexp)
    arctan2 = staticmethod(np.arctan2)


class UlpNS(RealNS):
    """``RealNS`` with every transcendental function's result one ulp up: what another
    implementation within an ulp of numpy's may give (tapejit's own ``sin``, ``exp``,
    ``log``, ``power``, ... are)."""


def _ulp_up(f):
    return staticmethod(lambda *a: np.nextafter(f(*a), np.inf))


for _name in ("sin", "cos", "tanh", "sinh", "arctan", "exp", "log", "power", "logaddexp",
              "arctan2"):
    setattr(UlpNS, _name, _ulp_up(getattr(np, _name)))


class ComplexNS(RealNS):
    """Analytic continuations of the ops numpy has no complex version of."""

    @staticmethod
    def logaddexp(a, b):
        m = np.maximum(np.real(a), np.real(b))  # any real shift gives the same function
        return m + np.log(np.exp(a - m) + np.exp(b - m))

    @staticmethod
    def arctan2(a, b):  # only used with b > 0, where arctan2(a, b) = arctan(a / b)
        return np.arctan(a / b)


UNARY = {
    "sin": lambda ns, u: ns.sin(u),
    "cos": lambda ns, u: ns.cos(u),
    "tanh": lambda ns, u: ns.tanh(u),
    "arctan": lambda ns, u: ns.arctan(u),
    "exp_of_bounded": lambda ns, u: ns.exp(ns.sin(u)),
    "exp_tanh": lambda ns, u: ns.exp(2.0 * ns.tanh(u)),
    "log_1_plus_sq": lambda ns, u: ns.log(1.0 + u * u),
    "sqrt_1_plus_sq": lambda ns, u: ns.sqrt(1.0 + ns.square(u)),
    "square": lambda ns, u: ns.square(u),
    "neg": lambda ns, u: -u,
    "affine": lambda ns, u: 0.5 * u - 1.25,
    "recip_pos": lambda ns, u: 1.0 / (2.0 + ns.cos(u)),
    "pow_pos": lambda ns, u: ns.power(1.5 + ns.sin(u), 2.5),
    "sinh_tanh": lambda ns, u: ns.sinh(ns.tanh(u)),
    "cube": lambda ns, u: u * u * u,
}
BINARY = {
    "add": lambda ns, u, v: u + v,
    "sub": lambda ns, u, v: u - v,
    "mul": lambda ns, u, v: u * v,
    "div_pos": lambda ns, u, v: u / (1.0 + v * v),
    "div_sin": lambda ns, u, v: u / (2.0 + ns.sin(v)),
    "logaddexp": lambda ns, u, v: ns.logaddexp(u, v),
    "arctan2_pos": lambda ns, u, v: ns.arctan2(u, 1.0 + ns.square(v)),
    "mul_add": lambda ns, u, v: 3.0 * u + v * 0.25,
}
OP_NAMES = sorted(UNARY) + sorted(BINARY)


@dataclass(frozen=True)
class Program:
    n_inputs: int
    n_params: int
    ops: tuple  # ((name, (arg node, ...)), ...)
    outputs: tuple  # node indices

    def run(self, ns, leaves):
        nodes = list(leaves)
        for name, args in self.ops:
            fn = UNARY.get(name) or BINARY[name]
            nodes.append(fn(ns, *(nodes[a] for a in args)))
        return nodes

    # -- the function recorded by tapejit ------------------------------------------------
    def traced(self):
        k, m = self.n_inputs, self.n_params

        def f(x, p=None):
            leaves = [x[i] for i in range(k)] + [p[j] for j in range(m)]
            nodes = self.run(np, leaves)
            outs = tuple(nodes[o] for o in self.outputs)
            return outs[0] if len(outs) == 1 else outs

        return f

    def record(self):
        if self.n_params:
            return tapejit.record(
                self.traced(), np.zeros(self.n_inputs), np.zeros(self.n_params), argnums=0
            )
        return tapejit.record(self.traced(), np.zeros(self.n_inputs))

    # -- references ----------------------------------------------------------------------
    def values(self, X, P=None, ns=RealNS):
        """Outputs ``(n, n_out)`` and all nodes, in float64 numpy (``ns``: its
        functions)."""
        cols = [X[:, i] for i in range(self.n_inputs)]
        if self.n_params:
            PP = np.broadcast_to(P, (len(X), self.n_params))
            cols += [PP[:, j] for j in range(self.n_params)]
        with np.errstate(all="ignore"):
            nodes = self.run(ns, [np.asarray(c, dtype=np.float64) for c in cols])
        nodes = [np.broadcast_to(np.asarray(v, dtype=np.float64), (len(X),)) for v in nodes]
        return np.stack([nodes[o] for o in self.outputs], axis=1), nodes

    def complex_step_jacobian(self, X, P=None):
        """``(n, n_out, n_inputs)`` by complex-step differentiation."""
        n = len(X)
        J = np.empty((n, len(self.outputs), self.n_inputs))
        par = (
            [np.broadcast_to(P, (n, self.n_params))[:, j].astype(complex)
             for j in range(self.n_params)]
            if self.n_params
            else []
        )
        for j in range(self.n_inputs):
            cols = [X[:, i].astype(complex) for i in range(self.n_inputs)]
            cols[j] = cols[j] + 1j * H
            with np.errstate(all="ignore"):
                nodes = self.run(ComplexNS, cols + par)
            for k, o in enumerate(self.outputs):
                J[:, k, j] = np.broadcast_to(np.imag(nodes[o]), (n,)) / H
        return J


@st.composite
def programs(draw, n_params=0, max_outputs=1):
    k = draw(st.integers(2, 4))
    n_leaves = k + n_params
    n_ops = draw(st.integers(1, 12))
    ops = []
    for i in range(n_ops):
        name = draw(st.sampled_from(OP_NAMES))
        arity = 1 if name in UNARY else 2
        avail = n_leaves + i
        # lean towards recent nodes so programs are deep as well as wide
        args = tuple(
            draw(st.one_of(st.integers(0, avail - 1), st.integers(max(0, avail - 3), avail - 1)))
            for _ in range(arity)
        )
        ops.append((name, args))
    n_out = draw(st.integers(1, max_outputs))
    last = n_leaves + n_ops - 1
    outputs = (last, *tuple(draw(st.integers(0, last)) for _ in range(n_out - 1)))
    return Program(k, n_params, tuple(ops), outputs)


def points(draw, n, k, lo=-2.0, hi=2.0):
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, k))


def assume_tame(prog, X, P=None):
    """Keep programs whose intermediate values stay moderate (no overflow, no huge
    arguments to sin/cos where any ulp of difference is amplified) and whose outputs
    an ulp of difference in any function does not move by more than 1e-12 (relative,
    or absolute below 1): ``sin(c)`` of a ``c`` near 1000 that also divides it is
    in range but turns one ulp of ``c`` into 1e-10, beyond the values' tolerance of
    1e-11. Returns the reference outputs (``Program.values``)."""
    out, nodes = prog.values(X, P)
    for v in nodes:
        assume(np.all(np.isfinite(v)))
        assume(np.max(np.abs(v)) < 1e4)
    nudged, _ = prog.values(X, P, UlpNS)
    assume(np.all(np.abs(nudged - out) <= 1e-12 * (1.0 + np.abs(out))))
    return out


def assert_derivative_close(got, ref):
    """rtol 1e-9 per entry, with an absolute floor of 1e-9 times the largest entry of
    the same point (entries that cancel to ~0 cannot keep a relative error)."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    n = ref.shape[0]
    scale = 1.0 + np.max(np.abs(ref.reshape(n, -1)), axis=1) if n else np.zeros(0)
    scale = scale.reshape((n,) + (1,) * (ref.ndim - 1))
    err = np.abs(got - ref)
    ok = err <= RTOL * np.abs(ref) + RTOL * scale
    assert np.all(ok), (
        f"max abs err {np.max(err)}; first bad got={got[~ok][:4]} ref={ref[~ok][:4]}"
    )


N_CHOICES = st.sampled_from([1, 2, 5, 17, 64, 600])


# ---------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------
@settings(max_examples=300)
@given(prog=programs(), n=N_CHOICES, data=st.data())
def test_gradient_matches_complex_step(prog, n, data):
    X = points(data.draw, n, prog.n_inputs)
    ref_out = assume_tame(prog, X)
    tape = prog.record()
    assert tape.n_inputs == prog.n_inputs and tape.n_outputs == 1
    v, g = tape.value_and_grad(X)
    assert v.shape == (n,) and g.shape == X.shape
    np.testing.assert_allclose(v, ref_out[:, 0], rtol=1e-11, atol=1e-11)
    assert_derivative_close(g, prog.complex_step_jacobian(X)[:, 0, :])
    # forward() gives the same values bit for bit
    np.testing.assert_array_equal(tape.forward(X), v)
    # point by point: bitwise equal to the batch
    for i in range(0, n, max(1, n // 25)):
        vi, gi = tape.value_and_grad(X[i])
        assert vi == v[i]
        np.testing.assert_array_equal(gi, g[i])
        assert tape.forward(X[i]) == v[i]


@settings(max_examples=150)
@given(prog=programs(max_outputs=3), n=N_CHOICES, data=st.data())
def test_multi_output_jacobian_and_vjp(prog, n, data):
    X = points(data.draw, n, prog.n_inputs)
    ref_out = assume_tame(prog, X)
    tape = prog.record()
    m = len(prog.outputs)
    assert tape.n_outputs == m
    Y = tape.forward(X)
    Y = Y.reshape(n, m)
    np.testing.assert_allclose(Y, ref_out, rtol=1e-11, atol=1e-11)
    J = tape.jacobian(X)
    assert J.shape == (n, m, prog.n_inputs)
    assert_derivative_close(J, prog.complex_step_jacobian(X))
    W = np.random.default_rng(n).normal(size=(n, m))
    yv, gv = tape.vjp(X, W)
    np.testing.assert_array_equal(yv, Y)
    np.testing.assert_allclose(gv, np.einsum("nk,nkj->nj", W, J), rtol=1e-12, atol=1e-12)
    w = W[0]
    _, gw = tape.vjp(X, w)  # one weight row for every point
    np.testing.assert_allclose(gw, np.einsum("k,nkj->nj", w, J), rtol=1e-12, atol=1e-12)
    for i in range(0, n, max(1, n // 10)):
        np.testing.assert_array_equal(tape.jacobian(X[i]), J[i])
        yi, gi = tape.vjp(X[i], W[i])
        np.testing.assert_array_equal(yi, Y[i])
        np.testing.assert_array_equal(gi, gv[i])
        if m > 1:
            np.testing.assert_array_equal(tape.forward(X[i]), Y[i])
    if m > 1:
        with pytest.raises(ValueError, match="one output"):
            tape.value_and_grad(X)


@settings(max_examples=150)
@given(prog=programs(n_params=2), n=N_CHOICES, data=st.data())
def test_params_fixed_and_per_point(prog, n, data):
    X = points(data.draw, n, prog.n_inputs)
    P_fixed = points(data.draw, 1, 2)[0]
    P_each = points(data.draw, n, 2)
    for P in (P_fixed, P_each):
        assume_tame(prog, X, P)
    tape = prog.record()
    assert tape.n_inputs == prog.n_inputs and tape.n_params == 2

    # fixed params == the same row repeated per point, bitwise
    v1, g1 = tape.value_and_grad(X, params=P_fixed)
    v2, g2 = tape.value_and_grad(X, params=np.tile(P_fixed, (n, 1)))
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(g1, g2)
    assert_derivative_close(g1, prog.complex_step_jacobian(X, P_fixed)[:, 0, :])
    np.testing.assert_allclose(v1, prog.values(X, P_fixed)[0][:, 0], rtol=1e-11, atol=1e-11)

    # per-point params: each row its own parameters
    v3, g3 = tape.value_and_grad(X, params=P_each)
    np.testing.assert_array_equal(tape.forward(X, params=P_each), v3)
    assert_derivative_close(g3, prog.complex_step_jacobian(X, P_each)[:, 0, :])
    np.testing.assert_allclose(v3, prog.values(X, P_each)[0][:, 0], rtol=1e-11, atol=1e-11)
    for i in range(0, n, max(1, n // 10)):
        vi, gi = tape.value_and_grad(X[i], params=P_each[i])
        assert vi == v3[i]
        np.testing.assert_array_equal(gi, g3[i])


# ---------------------------------------------------------------------------------------
# point counts around the chunk size, and a large count
# ---------------------------------------------------------------------------------------
SMALL = Program(
    3, 0,
    (("mul", (0, 1)), ("sin", (3,)), ("logaddexp", (4, 2)), ("div_pos", (5, 0)),
     ("exp_tanh", (6,)), ("add", (7, 3))),
    (8, 5),
)


def _big_program() -> Program:
    # enough instructions that the chunk is smaller than the 256-point maximum
    ops = []
    n = 4
    for i in range(120):
        ops.append(("sin", (n - 1,)) if i % 3 == 0 else ("mul_add", (n - 1, i % 4)))
        n += 1
        ops.append(("tanh", (n - 1,)))
        n += 1
    return Program(4, 0, tuple(ops), (n - 1, n - 7))


BIG = _big_program()
_RECORDED: dict[str, tapejit.Tape] = {}


def _tape(which: str) -> tuple[Program, tapejit.Tape]:
    prog = SMALL if which == "small" else BIG
    if which not in _RECORDED:
        _RECORDED[which] = prog.record()
    return prog, _RECORDED[which]


def test_big_program_has_a_small_chunk():
    _, tape = _tape("big")
    from tapejit._kernels.runtime import CHUNK_MAX

    assert 1 < chunk_of(tape.n_slots) < CHUNK_MAX
    _, small = _tape("small")
    assert chunk_of(small.n_slots) == CHUNK_MAX


def _counts(which):
    _, tape = _tape(which)
    c = chunk_of(tape.n_slots)
    return [0, 1, c - 1, c, c + 1, 2 * c, 2 * c + 1, 5 * c + 3]


@pytest.mark.parametrize("which", ["small", "big"])
def test_point_counts_around_chunk(which):
    prog, tape = _tape(which)
    rng = np.random.default_rng(7)
    m = len(prog.outputs)
    for n in _counts(which):
        X = rng.uniform(-2.0, 2.0, size=(n, prog.n_inputs))
        Y = tape.forward(X)
        assert Y.shape == (n, m)
        J = tape.jacobian(X)
        assert J.shape == (n, m, prog.n_inputs)
        W = rng.normal(size=(n, m))
        yv, gv = tape.vjp(X, W)
        assert gv.shape == (n, prog.n_inputs)
        np.testing.assert_array_equal(yv, Y)
        if n:
            ref_out, _ = prog.values(X)
            np.testing.assert_allclose(Y, ref_out, rtol=1e-11, atol=1e-12)
            assert_derivative_close(J, prog.complex_step_jacobian(X))
        for i in range(n):
            np.testing.assert_array_equal(tape.forward(X[i]), Y[i])
            np.testing.assert_array_equal(tape.jacobian(X[i]), J[i])
            np.testing.assert_array_equal(tape.vjp(X[i], W[i])[1], gv[i])


def _scalar_tape():
    prog = Program(SMALL.n_inputs, 0, SMALL.ops, (SMALL.outputs[0],))
    return prog, prog.record()


def test_zero_points_scalar_tape():
    _, tape = _scalar_tape()
    X = np.empty((0, 3))
    assert tape.forward(X).shape == (0,)
    v, g = tape.value_and_grad(X)
    assert v.shape == (0,) and g.shape == (0, 3)
    assert tape.gradient(X).shape == (0, 3)


def test_large_point_count_bitwise_equals_point_by_point():
    prog, tape = _scalar_tape()
    n = 100_003
    X = np.random.default_rng(11).uniform(-2.0, 2.0, size=(n, 3))
    v, g = tape.value_and_grad(X)
    assert v.shape == (n,) and g.shape == (n, 3)
    np.testing.assert_array_equal(tape.forward(X), v)
    c = chunk_of(tape.n_slots)
    idx = np.unique(np.concatenate([
        np.arange(0, n, 97),
        [c - 1, c, c + 1, n - c - 1, n - c, n - 2, n - 1],
    ]))
    for i in idx:
        vi, gi = tape.value_and_grad(X[i])
        assert vi == v[i]
        np.testing.assert_array_equal(gi, g[i])
    # any sub-batch (different chunk alignment, serial or parallel) gives the same bits
    for a, b in ((1, 300), (5, 5 + 2 * c + 1), (c + 3, n - 7), (n - 5, n)):
        vs, gs = tape.value_and_grad(X[a:b])
        np.testing.assert_array_equal(vs, v[a:b])
        np.testing.assert_array_equal(gs, g[a:b])
    ref_out, _ = prog.values(X)
    np.testing.assert_allclose(v, ref_out[:, 0], rtol=1e-11, atol=1e-12)
    sub = slice(0, n, 1013)
    assert_derivative_close(g[sub], prog.complex_step_jacobian(X[sub])[:, 0, :])


def test_large_point_count_with_params_per_point():
    prog = Program(2, 1, (("mul", (0, 2)), ("sin", (3,)), ("add", (4, 1))), (5,))
    tape = prog.record()
    n = 100_003
    rng = np.random.default_rng(12)
    X = rng.uniform(-2.0, 2.0, size=(n, 2))
    P = rng.uniform(-2.0, 2.0, size=(n, 1))
    v, g = tape.value_and_grad(X, params=P)
    np.testing.assert_allclose(v, np.sin(X[:, 0] * P[:, 0]) + X[:, 1], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(g[:, 0], np.cos(X[:, 0] * P[:, 0]) * P[:, 0], rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(g[:, 1], 1.0)
    for i in (0, 1, 255, 256, 257, n // 2, n - 1):
        vi, gi = tape.value_and_grad(X[i], params=P[i])
        assert vi == v[i]
        np.testing.assert_array_equal(gi, g[i])
