"""The program format (``tapejit._program``): packing, reading back, refusals, families.

* ``Program.pack`` writes what a tape holds, and ``Program.unpack`` reads it back;
* a packed program whose header does not describe its layout exactly is refused, field
  by field, as are wrong types and opcodes of instruction families this version lacks;
* a tape pickled by format version 1 (``tests/data/tape_v1.pickle``) still loads.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit import Tape, TapeFormatError
from tapejit._ops import BY_CODE, BY_NAME
from tapejit._program import (
    ARITY,
    AT_INPUTS,
    ATTR,
    FAMILIES,
    FIRST_FAMILY,
    HEADER,
    HEADER_NEXT,
    KERNEL_CONSTANTS,
    LAST_OPCODE,
    N_ATTRS,
    N_CONSTS,
    OPCODE,
    ROW,
    ROW_INTS,
    ROW_NEXT,
    SWEEPS,
    Family,
    Program,
    code_of,
)
from tapejit._tape_builder import Recorder

DATA = Path(__file__).resolve().parent / "data"


def _f(x, p):
    y = np.log(x[0]) + x[0] * x[1] - np.sin(x[1]) + np.sum(np.exp(x) * 2.0)
    return (y, p[0] * x[0]) if x[1] > 0.0 else (y, -p[0])


@pytest.fixture(scope="module")
def tape() -> Tape:
    return tapejit.record(_f, np.array([2.0, 5.0]), np.array([3.0]), argnums=0)


def test_pack_writes_what_the_tape_holds_and_unpack_reads_it_back(tape):
    p = Program.from_tape(tape)
    prog, consts = p.pack()
    assert np.array_equal(prog, tape._prog) and prog.dtype == np.int32
    assert np.array_equal(consts.view(np.int64), tape.consts.view(np.int64))
    q = Program.unpack(prog, consts)
    for name in ("opcodes", "args", "sizes", "strides", "outputs", "guards", "results",
                 "inputs", "params"):
        assert np.array_equal(getattr(q, name), getattr(tape, name)), name
    assert (q.n_slots, q.n_inputs, q.n_params) == (tape.n_slots, 2, 1)


def test_the_tape_builder_finalizes_into_a_program():
    rec = Recorder()
    x = rec.leaves(np.array([1.0, 2.0]))
    y = rec.emit(BY_NAME["mul"], x, rec.const(np.array(3.0)))
    program = rec.finalize(x, np.empty(0, np.int64), y)
    assert isinstance(program, Program)
    assert program.opcodes.tolist() == [BY_NAME["mul"].code] and program.sizes.tolist() == [2]
    tape = Tape(**program.arrays())
    assert tape.forward(np.array([1.0, 2.0])).tolist() == [3.0, 6.0]


def _refused(prog: np.ndarray, consts: np.ndarray, match: str | None = None) -> None:
    with pytest.raises(TapeFormatError, match=match):
        Tape._from_packed(prog, consts)
    with pytest.raises(TapeFormatError, match=match):
        Program.unpack(prog, consts)


@pytest.mark.parametrize("field", range(HEADER))
@pytest.mark.parametrize("delta", [1, -1])
def test_every_header_field_is_checked(tape, field, delta):
    prog, consts = Program.from_tape(tape).pack()
    prog[field] += delta
    _refused(prog, consts)


def test_malformed_packed_programs_are_refused(tape):
    prog, consts = Program.from_tape(tape).pack()
    _refused(prog[:-1].copy(), consts, "does not match its layout")
    _refused(np.append(prog, 0).astype(np.int32), consts, "does not match its layout")
    _refused(prog[: HEADER - 1].copy(), consts, "header fields")
    _refused(prog.astype(np.int64), consts, "int32")
    _refused(np.repeat(prog, 2)[::2], consts, "C-contiguous")
    _refused(prog, consts[:-1].copy(), "constants")
    _refused(prog, consts.astype(np.float32), "float64")
    bad = prog.copy()
    bad[ROW_INTS] = ROW + 1
    _refused(bad, consts, f"rows of {ROW + 1} ints")
    bad = prog.copy()
    bad[N_CONSTS] = -1
    _refused(bad, consts, "negative")
    Tape._from_packed(prog, consts)  # the unmodified program is accepted


@pytest.mark.parametrize("opcode", [FIRST_FAMILY, 200, LAST_OPCODE])
def test_instruction_families_are_refused_by_name(tape, opcode):
    msg = f"instruction family {opcode} is not known to this tapejit version"
    prog, consts = Program.from_tape(tape).pack()
    code_of(prog)[0, OPCODE] = opcode
    _refused(prog, consts, msg)
    with pytest.raises(TapeFormatError, match=msg):
        Tape(np.array([opcode]), np.zeros((1, 3), np.int64), np.zeros(0), np.array([0]),
             np.zeros(0, np.int64), np.array([1]))
    with pytest.raises(TapeFormatError, match=f"unknown opcode {LAST_OPCODE + 1}"):
        Tape(np.array([LAST_OPCODE + 1]), np.zeros((1, 3), np.int64), np.zeros(0), np.array([0]),
             np.zeros(0, np.int64), np.array([1]))


def test_opcode_space_the_op_table_and_arity():
    assert all(0 < code < FIRST_FAMILY for code in BY_CODE)
    assert not FAMILIES  # until the next format version is active, see FORMAT_NEXT
    expect = np.zeros(LAST_OPCODE + 1, np.int64)
    for code, op in BY_CODE.items():
        expect[code] = op.arity
    assert np.array_equal(ARITY, expect)


def test_family_declarations_are_checked():
    rules = {s: f"dot_{s}" for s in SWEEPS}
    dot = Family("dot", FIRST_FAMILY, 2, ("m", "k", "n"), rules)
    assert dot.attrs == ("m", "k", "n")
    with pytest.raises(ValueError, match="outside"):
        Family("dot", FIRST_FAMILY - 1, 2, (), rules)
    with pytest.raises(ValueError, match="arity"):
        Family("dot", FIRST_FAMILY, 4, (), rules)
    with pytest.raises(ValueError, match="rule"):
        Family("dot", FIRST_FAMILY, 2, (), {"forward": "dot_forward"})


def test_next_format_extends_todays_without_moving_a_field():
    # the designed fields come after today's, and the kernels do not see them yet
    assert N_ATTRS == HEADER and HEADER_NEXT == HEADER + 4
    assert ATTR == ROW and ROW_NEXT == ROW + 1
    assert "N_ATTRS" not in KERNEL_CONSTANTS and "ATTR" not in KERNEL_CONSTANTS


def test_a_tape_pickled_by_format_version_1_loads():
    """Pickles made by earlier versions keep loading: a later layout must convert this."""
    blob = (DATA / "tape_v1.pickle").read_bytes()
    tape = pickle.loads(blob)
    assert tape.name == "fixture" and int(tape._prog[AT_INPUTS]) == 14
    assert (tape.n_inputs, tape.n_params, tape.n_outputs, tape.n_guards) == (2, 1, 2, 1)
    x, p = np.array([2.0, 5.0]), np.array([3.0])
    y, z = tape.forward(x, p)
    assert y == pytest.approx(math.log(2.0) + 10.0 - math.sin(5.0), rel=1e-15)
    assert z == pytest.approx(3.0 * math.exp(-2.0), rel=1e-15)
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([2.0, -1.0]), p)
    again = pickle.loads(pickle.dumps(tape))
    assert np.array_equal(again._prog, tape._prog)
