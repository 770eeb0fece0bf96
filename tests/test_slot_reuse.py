"""Slot compaction of the forward program (``tapejit._slot_reuse``).

* On random programs (hand-built tapes with blocks, strides, parameters and guards from
  ``test_passes``; recorded ones from ``test_random_programs``) the compacted program
  passes its range check, a symbolic sweep shows every read finds the value it read
  before compaction, and forward values (many points, one point, parameters, guard
  masks) and tangents are bit for bit those of the tape's own program.
* Chains need O(1) slots; array code (Rosenbrock) needs its live blocks; a strided
  read that starts in the inputs keeps its results where they were.
* ``check_compact`` rejects a program that would read or write outside its workspace.
* A tape uses the compacted program in ``forward`` and ``jvp`` (and says so in
  ``stats``), with the larger chunk it allows.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_passes import programs as built_programs
from test_passes import same_bits
from test_random_programs import programs as recorded_programs

import tapejit
from tapejit import Tape, TapeFormatError
from tapejit._kernels.runtime import chunk_of
from tapejit._ops import BY_NAME
from tapejit._program import (
    ARG_A,
    ARITY,
    AT_CODE,
    AT_OUTPUTS,
    GUARD_SLOT,
    N_SLOTS,
    OPCODE,
    RESULT,
    ROW,
    SIZE,
    STRIDE_A,
    code_of,
    first_result,
    guards_of,
    outputs_of,
)
from tapejit._slot_reuse import check_compact, compact
from tapejit._tape import forward_program, from_packed, install_for_tests, kernel_arrays, packed

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels


def symbolic_sweep(prog: np.ndarray, comp: np.ndarray) -> None:
    """Run both programs on slot names instead of values: every element of every
    instruction, output and guard of ``comp`` must read the slot that ``prog`` reads."""
    nf = first_result(prog)
    held = np.full(int(comp[N_SLOTS]), -1, dtype=np.int64)  # original slot held by each slot
    held[:nf] = np.arange(nf)
    code = code_of(prog).astype(np.int64)
    new = code_of(comp).astype(np.int64)
    for row, crow in zip(code, new, strict=True):
        e = np.arange(row[SIZE])
        for k in range(ARITY[row[OPCODE]]):
            want = row[ARG_A + k] + e * row[STRIDE_A + k]
            got = crow[ARG_A + k] + e * crow[STRIDE_A + k]
            assert np.array_equal(held[got], want)
        held[crow[RESULT] + e] = row[RESULT] + e
    assert np.array_equal(held[outputs_of(comp)], outputs_of(prog))
    assert np.array_equal(held[guards_of(comp)[:, GUARD_SLOT]], guards_of(prog)[:, GUARD_SLOT])


def forced(tape: Tape) -> Tape:
    """The tape with its forward sweeps on the compacted program, whatever it saves."""
    prog = packed(tape)[0]
    comp = compact(prog)
    check_compact(prog, comp)
    symbolic_sweep(prog, comp)
    install_for_tests(tape, forward_prog=comp)
    return tape


def plain(tape: Tape) -> Tape:
    """The same tape, forward sweeps on its own program."""
    other = from_packed(*(np.array(a) for a in packed(tape)))
    install_for_tests(other, forward_prog=kernel_arrays(other)[0])
    return other


def assert_same_forward(tape: Tape, X: np.ndarray, P=None) -> None:
    ref = plain(tape)
    forced(tape)
    many = np.repeat(X, 400, axis=0)  # more than two chunks: the parallel driver
    Pm = P if P is None or P.ndim == 1 else np.repeat(P, 400, axis=0)
    with np.errstate(all="ignore"):
        for x, p in ((X, P), (many, Pm), (X[0], None if P is None else P.reshape(-1)[
                : tape.n_params])):
            got, ok = tape.forward(x, p, check="mask")
            want, ok0 = ref.forward(x, p, check="mask")
            assert same_bits(got, want) and np.array_equal(ok, ok0)
            v = np.linspace(-1, 1, tape.n_inputs)
            got, ok = tape.jvp(x, v, p, check="mask")
            want, ok0 = ref.jvp(x, v, p, check="mask")
            assert same_bits(got, want) and np.array_equal(ok, ok0)
        jf = tape.jacobian(X, P, mode="forward", check="mask")[0]
        assert same_bits(jf, ref.jacobian(X, P, mode="forward", check="mask")[0])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=built_programs(max_instr=40))
def test_hand_built_programs(case):
    tape, X, P = case
    assert_same_forward(tape, X, P)
    if P is not None:  # parameters per point as well
        assert_same_forward(tape, X, np.tile(P, (len(X), 1)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=recorded_programs(n_params=1, max_outputs=2), seed=st.integers(0, 2**32 - 1))
def test_recorded_programs(prog, seed):
    tape = prog.record()
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (5, tape.n_inputs))
    assert_same_forward(tape, X, rng.uniform(-1, 1, tape.n_params))


def test_a_chain_needs_two_result_slots():
    def chain(x):
        for _ in range(1000):
            x = np.sin(x) * 1.01
        return x

    tape = tapejit.record(chain, 0.5)
    s = tape.stats()
    assert s["n_slots"] == 2002 and s["peak_live"] == 2
    assert s["compact_slots"] == len(tape.consts) + 1 + 2
    X = np.linspace(-2, 2, 5000).reshape(-1, 1)
    ref = plain(tape)
    assert same_bits(tape.forward(X), ref.forward(X))
    prog, _, chunk = forward_program(tape)
    assert prog is not kernel_arrays(tape)[0] and chunk == 512
    assert same_bits(tape.forward(X[0]), ref.forward(X[0]))
    assert same_bits(tape.jvp(X, np.ones(1)), ref.jvp(X, np.ones(1)))


def test_rosenbrock_keeps_three_blocks():
    n = 200

    def rosen(x):
        return np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    tape = tapejit.record(rosen, np.ones(n))
    n_fixed = len(tape.consts) + n
    assert tape.stats()["compact_slots"] == n_fixed + 3 * (n - 1)
    X = np.random.default_rng(0).uniform(-2, 2, (3000, n))
    assert_same_forward(tape, X[:3])
    assert same_bits(tape.forward(X), plain(tape).forward(X))


def test_array_code_with_reductions_and_guards():
    def f(x, p):
        y = np.exp(-x) * p[0] + np.cumsum(x) / 3.0
        if np.sum(y) > -1e9:
            y = y[::-1] * np.tanh(y)
        return np.stack([np.max(y), np.dot(y, x), np.prod(np.cos(y[::2]))])

    tape = tapejit.record(f, np.ones(37), np.ones(2), argnums=0)
    assert tape.n_guards
    rng = np.random.default_rng(1)
    assert_same_forward(tape, rng.uniform(-1, 1, (4, 37)), rng.uniform(-1, 1, (4, 2)))
    assert forward_program(tape)[1] < tape.n_slots


def _pinned_tape() -> Tape:
    """A block reads inputs x0, x1 and the first two results with one stride: those
    results must stay directly after the inputs."""
    ops = BY_NAME
    sin, neg, add = ops["sin"].code, ops["neg"].code, ops["add"].code
    # slots: c0=1.0 | x0 x1 | v3 v4 v5... ; v3 = sin(x0), v4 = neg(x1), v5.. = add(x0..v4 step 1)
    rows = [(sin, (1, 0, 0), 1, (0, 0, 0)), (neg, (2, 0, 0), 1, (0, 0, 0))]
    rows += [(sin, (3 + k, 0, 0), 1, (0, 0, 0)) for k in range(30)]  # a chain v5..v34
    rows += [(add, (1, 1, 0), 4, (1, 0, 0))]  # v35..v38 = add(x0..v4, x0 (x4))
    rows += [(neg, (35, 0, 0), 4, (1, 0, 0))]
    ops_, args, sizes, strides = zip(*rows, strict=True)
    return Tape(np.array(ops_), np.array(args), np.array([1.0]), np.array([1, 2]),
                np.zeros(0, np.int64), np.array([39, 40, 41, 42, 34]),
                sizes=np.array(sizes), strides=np.array(strides))


def test_a_read_from_the_inputs_into_the_results_pins_them():
    tape = _pinned_tape()
    comp = compact(packed(tape)[0])
    code = code_of(comp)
    assert code[0, RESULT] == 3 and code[1, RESULT] == 4  # where they were
    assert comp[N_SLOTS] < tape.n_slots
    assert_same_forward(tape, np.array([[0.3, -0.7], [1.0, 2.0]]))


def test_check_compact_rejects_out_of_range_slots():
    tape = _pinned_tape()
    prog = packed(tape)[0]
    good = compact(prog)
    n_slots = int(good[N_SLOTS])
    o_code = int(good[AT_CODE])
    bad_fields = [
        (o_code + RESULT, n_slots),  # a result past the end
        (o_code + RESULT, 0),  # a result over the constants
        (o_code + ROW * 32 + RESULT, n_slots - 2),  # a block result running past the end
        (o_code + ROW * 33 + ARG_A, n_slots - 1),  # a block operand running past the end
        (o_code + ARG_A, -1),
        (o_code + ARG_A + 1, 1),  # an unused operand column
        (int(good[AT_OUTPUTS]), n_slots),  # an output
        (N_SLOTS, int(prog[N_SLOTS]) + 1),  # more slots than the original
        (o_code + OPCODE, 1),  # another opcode
    ]
    for pos, value in bad_fields:
        comp = good.copy()
        comp[pos] = value
        with pytest.raises(TapeFormatError):
            check_compact(prog, comp)
    with pytest.raises(TapeFormatError):
        check_compact(prog, good[:-1])
    check_compact(prog, good)


def test_small_tapes_keep_their_program():
    tape = tapejit.record(lambda x: np.sin(x) * x, 1.0)
    tape.forward(np.ones((3, 1)))
    assert forward_program(tape)[0] is kernel_arrays(tape)[0]
    assert tape.stats()["compact_slots"] <= tape.n_slots


def test_point_counts_around_the_compact_chunk():
    def f(x):
        for _ in range(100):
            x = np.tanh(x) * 1.5 - x[::-1] * 0.25
        return x

    tape = tapejit.record(f, np.ones(3))
    ref = plain(tape)
    X = np.random.default_rng(3).uniform(-2, 2, (3000, 3))
    tape.forward(X[:1])
    prog, _, c = forward_program(tape)
    assert prog is not kernel_arrays(tape)[0] and c > chunk_of(tape.n_slots)
    for n in (1, 2, c - 1, c, c + 1, 2 * c, 2 * c + 1, 5 * c + 3):
        assert same_bits(tape.forward(X[:n]), ref.forward(X[:n]))
        v = X[n:2 * n] if n <= 1000 else np.ones(3)
        assert same_bits(tape.jvp(X[:n], v), ref.jvp(X[:n], v))
