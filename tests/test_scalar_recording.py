"""The scalar recording path (``ScalarTracer``, ``Recorder.scalar2``): traced scalars
record the same tape as the array path, keep guards, and mix with traced arrays.

The array path is the reference: the same program written on 1-element slices
(``x[i:i+1]``) records through it, one 1-element emission per operation, and must give
the same instructions, constant pool (bit for bit: folded constants are computed by each
path's own evaluator) and guards as the program on elements (``x[i]``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _op_helpers import BY_NAME, sample, spec

import tapejit
from tapejit import OPS, BranchError, TracingError
from tapejit._scalar_ops import VALUE, python_expression
from tapejit._tracer import ScalarTracer

ARRAYS = ("opcodes", "args", "sizes", "strides", "outputs", "guards")
#: Values every operand of every op is also tried at: zeros of both signs, infinities,
#: NaN, the ends of the float range, integers and half-integers (rounding, ties).
SPECIALS = (0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, np.inf, -np.inf, np.nan, 1e308,
            -1e308, 5e-324, 1e-300)


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64)).view(np.int64)


def assert_same_tape(t1: tapejit.Tape, t2: tapejit.Tape) -> None:
    for name in ARRAYS:
        a, b = np.asarray(getattr(t1, name)), np.asarray(getattr(t2, name))
        assert a.shape == b.shape and np.array_equal(a, b), name
    assert np.array_equal(bits(t1.consts), bits(t2.consts)), "consts"


# -- values on floats: the scalar path's evaluator of each op against the array path ----
def _points(op) -> np.ndarray:
    X = sample(op, 200, 3)
    grid = np.array(np.meshgrid(*[SPECIALS] * op.arity, indexing="ij")).reshape(op.arity, -1)
    return np.concatenate([X, grid.T])


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_scalar_value_of_every_op_equals_the_array_paths_bit_for_bit(op):
    """What the recorder computes for a traced scalar (Python arithmetic or the numpy
    reference on floats) is what it computes for a 1-element array, NaN payloads too:
    guards decide the same branches and folded constants are the same bits."""
    X = _points(op)
    got = np.array([VALUE[op.code](*row) for row in X.tolist()])
    with np.errstate(all="ignore"):
        want = np.array([np.asarray(op.numpy(*(np.array([v]) for v in row)),
                                    dtype=np.float64)[0] for row in X])
    assert np.array_equal(bits(got), bits(want))


def test_plain_arithmetic_runs_as_python_and_the_rest_by_reference():
    """The ops computed by Python expressions are derived from the table (exact ops with
    plain-arithmetic values); a division by zero goes to numpy (Python raises)."""
    assert python_expression(BY_NAME["mul"]) == "a * b"
    assert python_expression(BY_NAME["less"]) == "1.0 if a < b else 0.0"
    assert python_expression(BY_NAME["sin"]) is None  # not EXACT
    assert python_expression(BY_NAME["sqrt"]) is None  # math.sqrt: not plain Python
    div = VALUE[BY_NAME["div"].code]
    assert div(1.0, 0.0) == np.inf and div(-1.0, 0.0) == -np.inf and np.isnan(div(0.0, 0.0))
    assert div(1.0, -0.0) == -np.inf


# -- random programs over the whole table: scalar path == array path --------------------
def _program(seed: int, n_inputs: int = 3, n_ops: int = 14):
    """A random straight-line program over every op of the table, with constants among
    the operands (folding, pooling) and Python branches (guards)."""
    rng = np.random.default_rng(seed)
    steps = []
    for i in range(n_ops):
        kind = rng.uniform()
        avail = n_inputs + i
        if kind < 0.1:
            steps.append(("branch", int(rng.integers(avail)), float(rng.normal())))
        else:
            op = OPS[int(rng.integers(len(OPS)))]
            args = []
            for _ in range(op.arity):
                if rng.uniform() < 0.3:  # a constant: a few values repeat (pooling)
                    args.append(("const", float(rng.choice([0.0, -0.0, 0.5, 2.0, 3.0,
                                                            rng.normal()]))))
                else:
                    args.append(("node", int(rng.integers(max(0, avail - 4), avail))))
            steps.append((op.name, tuple(args)))
    return steps


def _run(steps, leaf, x):
    nodes = [leaf(x, i) for i in range(3)]
    with np.errstate(all="ignore"):  # ops on constants only are plain numpy
        for step in steps:
            if step[0] == "branch":
                _, k, c = step
                nodes.append(nodes[k] * 2.0 if nodes[k] > c else nodes[k] - 1.0)
            else:
                name, args = step
                ops = [nodes[a] if kind == "node" else a for kind, a in args]
                nodes.append(spec(BY_NAME[name])(*ops))
    return nodes[-1], nodes[-2]


@pytest.mark.parametrize("seed", range(60))
def test_random_programs_record_the_same_tape_on_scalars_as_on_arrays(seed):
    steps = _program(seed)
    x = np.random.default_rng(seed).normal(size=3)
    try:
        ts = tapejit.record(lambda x: _run(steps, lambda x, i: x[i], x), x)
    except TracingError as exc:  # pragma: no cover - must fail the same way on arrays
        with pytest.raises(TracingError, match=str(exc)[:30]):
            tapejit.record(lambda x: _run(steps, lambda x, i: x[i : i + 1], x), x)
        return
    ta = tapejit.record(lambda x: _run(steps, lambda x, i: x[i : i + 1], x), x)
    assert_same_tape(ts, ta)


@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_random_programs_on_scalars_compute_the_program_at_the_recording_point(seed):
    """The tape recorded on scalars, run by the op table's reference interpreter at the
    recording point, gives the program's own numpy values (on 1-element arrays, as the
    interpreter computes) bit for bit, and its guards hold there."""
    from tapejit._show import interpret

    steps = _program(seed)
    x = np.random.default_rng(seed).normal(size=3)
    tape = tapejit.record(lambda x: _run(steps, lambda x, i: x[i], x), x)
    with np.errstate(all="ignore"):
        sweep = interpret(tape, x)
        want = np.concatenate([np.ravel(v) for v in _run(steps, lambda x, i: x[i : i + 1], x)])
    assert np.array_equal(bits(sweep.values[tape.outputs]), bits(want))
    assert all((sweep.values[q] != 0.0) == bool(o) for q, o in tape.guards.tolist())


def test_random_programs_exercise_scalar_instructions_and_guards():
    """The programs above are not all folded away: they record instructions, guards and
    constants (a test that the comparison compares something)."""
    n_instr = n_guards = 0
    for seed in range(60):
        steps = _program(seed)
        x = np.random.default_rng(seed).normal(size=3)
        t = tapejit.record(lambda x, steps=steps: _run(steps, lambda x, i: x[i], x), x)
        n_instr += len(t.opcodes)
        n_guards += len(t.guards)
    assert n_instr > 300 and n_guards > 10


# -- guards on traced scalars ----------------------------------------------------------
def relu_s(x):
    a = x[0]
    return a * 3.0 if a > 0 else a * 0.5


@pytest.mark.parametrize("f", [
    relu_s,
    lambda x: x[0] if x[0] else x[1],  # truth of a non-comparison: x != 0 recorded
    lambda x: max(x[0], x[1]) + min(x[0] * 2, 1.0),  # builtins compare
    lambda x: x[0] if (x[0] > 0 and x[1] < 1) or not x[1] > 3 else -x[0],
    lambda x: x[0] + int(x[1] * 4),
], ids=["if", "truth", "min-max", "and-or-not", "int"])
def test_guards_on_scalars_are_those_of_the_array_path(f):
    x = np.array([0.7, -1.3])

    def sliced(x):
        # the same code on 1-element arrays: the array path's Tracer.__bool__/__int__
        class Sliced:
            def __getitem__(self, i):
                return x[i : i + 1]
        return f(Sliced())

    ts, ta = tapejit.record(f, x), tapejit.record(sliced, x)
    assert len(ts.guards) >= 1
    assert_same_tape(ts, ta)


def test_a_guard_on_a_scalar_refuses_the_other_branch():
    tape = tapejit.record(relu_s, np.array([1.0]))
    assert tape.n_guards == 1 and tape.guards.tolist()[0][1] == 1
    X = np.array([[1.0], [-1.0], [2.0]])
    with pytest.raises(BranchError, match=r"^1 of 3 point"):
        tape.forward(X)
    y, ok = tape.forward(X, check="mask")
    assert ok.tolist() == [True, False, True]
    assert y[ok].ravel().tolist() == [3.0, 6.0]
    g, ok = tape.gradient(X, check="mask")
    assert g[ok].ravel().tolist() == [3.0, 3.0]


def test_a_branch_on_a_constant_scalar_records_no_guard():
    def f(x):
        c = x[0] * 0.0 + 2.0  # still traced: x[0] * 0.0 is not constant for NaN or inf
        k = (x[1] - x[1]) if False else 3.0
        d = np.sin(np.float64(k)) * 0.0 + k  # plain numbers: no recording
        return c * 2.0 if d > 1 else c

    tape = tapejit.record(f, np.array([0.5, 1.0]))
    assert tape.n_guards == 0


def test_while_loop_on_a_scalar_guards_each_test():
    def f(x):
        a, n = x[0], 0
        while a < 10.0:
            a = a * 2.0
            n += 1
        return a

    tape = tapejit.record(f, np.array([1.5]))
    assert tape.n_guards == 4  # 1.5, 3, 6 < 10 and 12 >= 10: three trips and the exit
    assert tape.forward(np.array([1.3])) == 1.3 * 8.0
    for other in (0.5, 3.0):  # four trips, two trips (the branch is 1.25 <= x < 2.5)
        with pytest.raises(BranchError):
            tape.forward(np.array([other]))


# -- conversions and misuse: errors as on the array path -------------------------------
@pytest.mark.parametrize("convert, exc", [
    (float, TracingError),
    (complex, TracingError),
    (lambda s: __import__("math").sin(s), TracingError),
    (lambda s: [1, 2][s], TracingError),
    (hash, TypeError),
    (len, TypeError),
    (iter, TypeError),
])
def test_conversions_of_a_traced_scalar_raise(convert, exc):
    def f(x):
        s = x[0] * 2.0
        assert isinstance(s, ScalarTracer)
        convert(s)

    with pytest.raises(exc):
        tapejit.record(f, np.array([0.5]))


@pytest.mark.parametrize("assign", [
    lambda s: s.__setitem__((), 1.0),
    lambda s: s.fill(1.0),
    lambda s: s.sort(),
])
def test_a_traced_scalar_cannot_be_assigned_into(assign):
    with pytest.raises(TypeError, match="cannot be assigned into"):
        tapejit.record(lambda x: assign(x[0]), np.array([0.5]))


def test_a_scalar_escaping_the_recording_cannot_record():
    leaked = []

    def f(x):
        leaked.append(x[0] * 2.0)
        return leaked[-1]

    tapejit.record(f, np.array([0.5]))
    for later in (lambda s: s + 1.0, lambda s: s * s, lambda s: -s, np.sin):
        with pytest.raises(RuntimeError, match="escaped"):
            later(leaked[0])


def test_scalars_of_two_recordings_do_not_mix():
    def outer(x):
        inner = []
        tapejit.record(lambda y: inner.append(y[0]) or y[0], np.array([1.0]))
        return x[0] + inner[0]

    with pytest.raises((TracingError, RuntimeError)):
        tapejit.record(outer, np.array([0.5]))


# -- mixing scalars and arrays -----------------------------------------------------------
def mixed(x, w):
    a, b, c = x[0], x[1], x[2]
    s = np.sin(a) * b - c / 3.0 + np.float64(0.5) * a + np.array(2.0) * b
    v = w * s + x  # a traced scalar with a traced array
    t = np.array([a, s, c]) * 2.0  # an object array of traced scalars
    u = np.stack([s, a * a, -b])
    r = np.sum(v * t) + np.dot(u, w) + np.sum(x) * a + x @ w * s
    for e in v:  # iterating a traced array gives traced scalars
        r = r + e * 0.1
    r = r + np.where(a > b, a, b) + np.maximum(s, 0.0) + np.clip(c, -1, 1) + np.hypot(a, b)
    return r / (1.0 + b * b) + a ** 2 + 2 ** a + abs(c) ** 1.5 + np.exp(-b) // 0.3


def mixed_numpy(x, w):
    return mixed(x, w)  # on plain arrays: numpy's own values


@pytest.mark.parametrize("x", [np.array([0.3, 0.7, -0.4]), np.array([-1.1, 0.2, 0.9])])
def test_mixed_scalar_and_array_code_values_and_gradients(x, central_diff):
    w = np.array([1.0, 2.0, -0.5])
    tape = tapejit.record(mixed, x, w, argnums=0)
    v, g = tape.value_and_grad(x, params=w)
    assert np.isclose(v, mixed_numpy(x, w), rtol=1e-13)
    fd = central_diff(lambda X: np.array([mixed_numpy(z, w) for z in X]), x[None, :])
    np.testing.assert_allclose(g, fd[0], rtol=1e-6, atol=1e-8)


def interleaved(x, el):
    """Scalar and array operations in turn: each array operation ends a run of scalar
    instructions, and the scalars read values back from runs already handed over, from
    the pending one and from array results. ``el(a, i)`` takes element ``i`` of ``a``
    (``a[i]``, or the slice ``a[i:i+1]`` for the array path)."""
    acc = el(x, 0)
    v = x * 1.0
    for i in range(6):
        acc = np.sin(acc) * 1.1 + el(x, i % 3)
        v = v * acc + x
        acc = acc - el(v, (i + 1) % 3) * 0.25
        if acc > 0.5:
            acc = acc * 0.5
        v = np.where(v > 1.0, v, acc * v)
    return acc + np.sum(v), v


def test_interleaved_scalar_and_array_operations_record_as_the_array_path(central_diff):
    x = np.array([0.9, -0.4, 1.3])
    ts = tapejit.record(lambda x: interleaved(x, lambda a, i: a[i]), x)
    ta = tapejit.record(lambda x: interleaved(x, lambda a, i: a[i : i + 1]), x)
    assert_same_tape(ts, ta)
    assert len(ts.guards) >= 6
    y, ok = ts.forward(x[None, :], check="mask")
    want = interleaved(x, lambda a, i: a[i])
    assert ok.all() and np.allclose(y[0], np.concatenate([[want[0]], want[1]]), rtol=1e-14)
    g = ts.jacobian(x)[0]  # of the first output, the scalar
    fd = central_diff(lambda X: np.array([interleaved(z, lambda a, i: a[i])[0] for z in X]),
                      x[None, :])
    np.testing.assert_allclose(g, fd[0], rtol=1e-6, atol=1e-9)


def test_scalar_results_meet_zero_d_traced_arrays():
    """A reduction gives a 0-d traced array; arithmetic with it records on the scalar
    path (numpy gives a scalar too) and a float argument is a 0-d traced array."""
    def f(x, y):
        m = np.sum(x * x)  # 0-d traced array
        r = m * x[0] + y  # y: a 0-d traced argument
        assert isinstance(r, ScalarTracer) and isinstance(m * 2.0, ScalarTracer)
        return r

    tape = tapejit.record(f, np.array([1.0, 2.0]), 3.0)
    v, g = tape.value_and_grad(np.array([1.0, 2.0, 3.0]))
    assert v == 8.0 and g.tolist() == [7.0, 4.0, 1.0]


# -- a scalar-heavy function ------------------------------------------------------------
def lorenz(p, steps=30, h=0.01):
    sigma, rho, beta = p[0], p[1], p[2]

    def rhs(x, y, z):
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    x, y, z = 1.0, 1.0, 1.0
    for _ in range(steps):
        k1 = rhs(x, y, z)
        k2 = rhs(x + h / 2 * k1[0], y + h / 2 * k1[1], z + h / 2 * k1[2])
        k3 = rhs(x + h / 2 * k2[0], y + h / 2 * k2[1], z + h / 2 * k2[2])
        k4 = rhs(x + h * k3[0], y + h * k3[1], z + h * k3[2])
        x = x + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        y = y + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        z = z + h / 6 * (k1[2] + 2 * k2[2] + 2 * k3[2] + k4[2])
    return x + y + z


def test_lorenz_records_on_the_scalar_path(central_diff):
    """RK4 steps of the Lorenz system in its parameters: 71 instructions a step (one
    operand of the first stage is constant), the value the same bits as Python's floats
    (add, sub, mul only), the gradient against central differences; and the same tape
    as the array path."""
    p0 = np.array([10.0, 28.0, 8.0 / 3.0])
    tape = tapejit.record(lorenz, p0)
    assert len(tape.opcodes) == 30 * 71
    assert tape.forward(p0) == lorenz(p0.tolist())
    fd = central_diff(lambda P: np.array([lorenz(list(q)) for q in P]), p0[None, :])
    np.testing.assert_allclose(tape.gradient(p0), fd[0], rtol=1e-6)
    sliced = tapejit.record(lambda p: lorenz([p[0:1], p[1:2], p[2:3]]), p0)
    assert_same_tape(tape, sliced)


def test_nested_derivatives_of_scalar_code_equal_the_array_paths():
    """A Hessian recorded inside a recording reads the scalar instructions back
    (``Recorder.instructions_since`` over runs) exactly as the array path's."""
    g = functools.partial(lorenz, steps=3)
    p0 = np.array([10.0, 28.0, 8.0 / 3.0])
    ts = tapejit.record(lambda p: tapejit.hessian(g)(p), p0)
    ta = tapejit.record(lambda p: tapejit.hessian(
        lambda q: np.sum(g([q[0:1], q[1:2], q[2:3]])))(p), p0)
    assert_same_tape(ts, ta)
    np.testing.assert_allclose(ts.forward(p0).reshape(3, 3), tapejit.hessian(g)(p0),
                               rtol=1e-13)
