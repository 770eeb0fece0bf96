"""The program format (``tapejit._program``): packing, reading back, refusals, families.

* ``Program.pack`` writes what a tape holds, and ``Program.unpack`` reads it back;
* a packed program whose header does not describe its layout exactly is refused, field
  by field, as are wrong types and opcodes of instruction families this version lacks;
* the attribute section and the sub-program table are packed, read back and validated,
  with a test-only family registered in ``FAMILIES`` (no kernel runs it: a tape refuses
  it);
* a tape pickled by format version 1 (``tests/data/tape_v1.pickle``) still loads, and is
  converted to the program the same tape has today.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit import Tape, TapeFormatError
from tapejit._io import load_tape
from tapejit._ops import BY_CODE, BY_NAME
from tapejit._program import (
    ARITY,
    AT_ATTRS,
    AT_CODE,
    AT_INPUTS,
    AT_SUBPROGRAMS,
    ATTR,
    FAMILIES,
    FIRST_FAMILY,
    HEADER,
    KERNEL_CONSTANTS,
    LAST_OPCODE,
    MAX_NESTING,
    N_ATTRS,
    N_CONSTS,
    N_SUBPROGRAMS,
    OPCODE,
    ROW,
    ROW_INTS,
    SUB_AT,
    SUB_CONSTS,
    SUB_LEN,
    SUBPROGRAM,
    SWEEPS,
    Family,
    Program,
    Subprogram,
    attrs_of,
    code_of,
    is_version_1,
    subprograms_of,
)
from tapejit._slot_reuse import check_compact, compact
from tapejit._tape import from_packed, packed
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
    assert np.array_equal(prog, packed(tape)[0]) and prog.dtype == np.int32
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
        from_packed(prog, consts)
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
    from_packed(prog, consts)  # the unmodified program is accepted


@pytest.mark.parametrize("opcode", [200, 240, LAST_OPCODE])  # not registered
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
    # the registered families, each with its kernel routines and sizes
    assert FAMILIES and all(FIRST_FAMILY <= c <= LAST_OPCODE and f.kernel and f.sizes
                            for c, f in FAMILIES.items())
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


def test_the_kernels_are_given_every_field_of_the_format():
    for name in ("N_ATTRS", "AT_ATTRS", "N_SUBPROGRAMS", "AT_SUBPROGRAMS", "ATTR", "SUB_AT",
                 "SUB_LEN", "SUB_CONSTS", "SUBPROGRAM", "FIRST_FAMILY", "HEADER", "ROW"):
        assert name in KERNEL_CONSTANTS
    # the fields of format version 1 kept their positions
    assert (AT_INPUTS, ROW_INTS, N_ATTRS, HEADER, ATTR, ROW) == (7, 11, 14, 20, 9, 10)


def test_a_tape_pickled_by_format_version_1_loads():
    """Pickles made by earlier versions keep loading, converted to today's program."""
    blob = (DATA / "tape_v1.pickle").read_bytes()
    tape = pickle.loads(blob)
    assert tape.name == "fixture" and int(packed(tape)[0][AT_INPUTS]) == HEADER
    assert (tape.n_inputs, tape.n_params, tape.n_outputs, tape.n_guards) == (2, 1, 2, 1)
    same = load_tape(DATA / "tape_v2.npz")  # the same tape, from a tape file
    assert np.array_equal(packed(tape)[0], packed(same)[0])
    assert np.array_equal(tape.consts.view(np.int64), same.consts.view(np.int64))
    x, p = np.array([2.0, 5.0]), np.array([3.0])
    y, z = tape.forward(x, p)
    assert y == pytest.approx(math.log(2.0) + 10.0 - math.sin(5.0), rel=1e-15)
    assert z == pytest.approx(3.0 * math.exp(-2.0), rel=1e-15)
    assert np.array_equal(tape.jacobian(x, p), same.jacobian(x, p))
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([2.0, -1.0]), p)
    again = pickle.loads(pickle.dumps(tape))
    assert np.array_equal(packed(again)[0], packed(tape)[0])


class _Arrays(pickle.Unpickler):
    """Unpickles a tape as the arrays it was pickled as, not as a tape."""

    def find_class(self, module, name):
        if name == "_unpickle":
            return lambda *args: args
        return super().find_class(module, name)


def _v1_arrays() -> tuple[np.ndarray, np.ndarray]:
    prog, consts, *_ = _Arrays(io.BytesIO((DATA / "tape_v1.pickle").read_bytes())).load()
    return np.require(prog, requirements="CWO"), np.require(consts, requirements="CWO")


def test_a_packed_program_of_format_version_1_is_converted_or_refused_clearly():
    prog, consts = _v1_arrays()
    assert is_version_1(prog) and prog[AT_INPUTS] == 14 and prog[ROW_INTS] == 9
    want = load_tape(DATA / "tape_v2.npz")._prog
    assert np.array_equal(from_packed(prog, consts)._prog, want)  # converted (a copy)
    assert np.array_equal(Program.unpack_v1(prog, consts).pack()[0], want)
    with pytest.raises(TapeFormatError, match="rows of 9 ints"):
        Program.unpack(prog, consts)  # the strict reader takes today's format only
    assert not is_version_1(want)
    bad = prog.copy()
    bad[int(bad[AT_CODE]) + OPCODE] = LAST_OPCODE  # the first row (AT_CODE kept its place)
    for broken, match in ((prog[:-1].copy(), "does not match its layout"),
                          (bad, "instruction family 255")):
        with pytest.raises(TapeFormatError, match=match):
            from_packed(broken, consts)
    with pytest.raises(TapeFormatError, match="not a packed program of format version 1"):
        Program.unpack_v1(want, consts)


# ---------------------------------------------------------------------------------------
# attributes and sub-programs, with a family of the tests' own
# ---------------------------------------------------------------------------------------
def _positive_m(values: np.ndarray) -> np.ndarray:
    return values[:, 0] < 1


PROBE = Family("probe", LAST_OPCODE - 1, 1, ("m", "body"),
               {s: f"probe_{s}" for s in SWEEPS}, bodies=("body",), check=_positive_m)
BARE = Family("bare", LAST_OPCODE, 1, (), {s: f"bare_{s}" for s in SWEEPS})


@pytest.fixture
def families(monkeypatch):
    monkeypatch.setitem(FAMILIES, PROBE.opcode, PROBE)
    monkeypatch.setitem(FAMILIES, BARE.opcode, BARE)


def _program(opcodes, args, consts, n_inputs, outputs, **kwargs) -> Program:
    n = len(opcodes)
    return Program(opcodes=np.array(opcodes, np.int64),
                   args=np.array(args, np.int64).reshape(n, 3), sizes=np.ones(n, np.int64),
                   strides=np.zeros((n, 3), np.int64), consts=np.array(consts, np.float64),
                   n_params=0, n_inputs=n_inputs, outputs=np.array(outputs, np.int64),
                   guards=np.zeros((0, 2), np.int64), **kwargs)


MUL, ADD = BY_NAME["mul"].code, BY_NAME["add"].code


def _nested(depth: int = 1) -> Program:
    """A program whose first instruction runs a body ``depth`` levels deep; constants
    ``[2, 3]``, the body's ``[3]``."""
    consts = [2.0, 3.0]
    body = _program([MUL], [[0, 1, 0]], [3.0], 1, [2])  # 3 * x
    for _ in range(depth - 1):
        body = _program([PROBE.opcode], [[1, 0, 0]], [3.0], 1, [2],
                        attrs=np.array([1, 0]), attr_at=np.array([0]),
                        subprograms=(Subprogram(body, 0),))
    return _program(
        [MUL, PROBE.opcode, ADD], [[0, 2, 0], [3, 0, 0], [4, 3, 0]], consts, 1, [5],
        attrs=np.array([1, 0]), attr_at=np.array([0, 0, 0]),
        subprograms=(Subprogram(body, 1),))


def test_attributes_and_subprograms_are_packed_and_read_back(families):
    p = _nested()
    prog, consts = p.pack()
    h = prog[:HEADER]
    assert (h[N_ATTRS], h[N_SUBPROGRAMS]) == (2, 1)
    assert attrs_of(prog).tolist() == [1, 0]
    assert code_of(prog)[:, ATTR].tolist() == [0, 0, 0]
    (entry,) = subprograms_of(prog)
    assert entry[SUB_AT] == h[AT_SUBPROGRAMS] + SUBPROGRAM
    assert entry[SUB_AT] + entry[SUB_LEN] == prog.size and entry[SUB_CONSTS] == 1
    nested = prog[entry[SUB_AT] :]
    assert Program.unpack(nested, consts[1:]).opcodes.tolist() == [MUL]
    q = Program.unpack(prog, consts)
    assert q.attrs.tolist() == [1, 0] and q.attr_offsets.tolist() == [0, 0, 0]
    (sub,) = q.subprograms
    assert sub.consts_at == 1 and sub.program.consts.tolist() == [3.0]
    assert np.array_equal(q.pack()[0], prog)
    deep = _nested(MAX_NESTING)
    assert np.array_equal(Program.unpack(*deep.pack()).pack()[0], deep.pack()[0])


def test_a_tape_refuses_an_instruction_family_no_kernel_runs(families):
    prog, consts = _nested().pack()
    Program.unpack(prog, consts)  # a valid program
    with pytest.raises(TapeFormatError, match=r"no kernel .* runs instruction family probe"):
        from_packed(prog, consts)
    with pytest.raises(TapeFormatError, match="family bare"):
        Tape(np.array([BARE.opcode]), np.zeros((1, 3), np.int64), np.zeros(0), np.array([0]),
             np.zeros(0, np.int64), np.array([1]))


def _set(prog: np.ndarray, at: int, value: int) -> np.ndarray:
    bad = prog.copy()
    bad[at] = value
    return bad


def test_bad_attributes_are_refused(families):
    prog, consts = _nested().pack()
    at_attrs, at_code = int(prog[AT_ATTRS]), int(prog[AT_CODE])
    _refused(_set(prog, at_attrs, 0), consts, r"probe.*invalid attributes \{'m': 0")
    _refused(_set(prog, at_attrs + 1, 1), consts, "names sub-program 1; the program has 1")
    _refused(_set(prog, at_code + ROW + ATTR, 1), consts, "attributes at 1 are outside")
    _refused(_set(prog, at_code + ATTR, 1), consts, r"mul.* is elementwise")
    # attributes or a sub-program nothing reads: FAMILIES is empty outside this test
    plain = _program([MUL], [[0, 1, 0]], [2.0], 1, [2])
    with pytest.raises(TapeFormatError, match="attribute 0 is read by no instruction"):
        Program.unpack(*Program(**{**plain.__dict__, "attrs": np.array([7])}).pack())
    with pytest.raises(TapeFormatError, match="sub-program 0 is run by no instruction"):
        Program.unpack(*Program(**{**plain.__dict__,
                                   "subprograms": (Subprogram(plain, 0),)}).pack())


def test_bad_subprogram_tables_are_refused(families):
    prog, consts = _nested().pack()
    entry = int(prog[AT_SUBPROGRAMS])
    for field, delta in ((SUB_AT, 1), (SUB_AT, -1), (SUB_LEN, 1), (SUB_LEN, -1)):
        _refused(_set(prog, entry + field, prog[entry + field] + delta), consts)
    _refused(_set(prog, entry + SUB_LEN, HEADER - 1), consts, "sub-program 0 is not where")
    _refused(_set(prog, entry + SUB_CONSTS, 2), consts, "constants 2..2 are outside")
    _refused(_set(prog, entry + SUB_CONSTS, -1), consts, "outside the pool")
    # the nested program is checked as a whole program: here its operand
    nested_code = int(prog[entry + SUB_AT]) + int(prog[int(prog[entry + SUB_AT]) + AT_CODE])
    _refused(_set(prog, nested_code + 2, 5), consts, "sub-program 0: instruction 0")
    # the body's constants are the range of the pool its entry names, whichever
    q = Program.unpack(_set(prog, entry + SUB_CONSTS, 0), consts)
    assert q.subprograms[0].program.consts.tolist() == [2.0]


def test_subprograms_nest_at_most_max_nesting_deep(families):
    prog, consts = _nested(MAX_NESTING + 1).pack()  # pack does not validate
    _refused(prog, consts, f"nest more than {MAX_NESTING} deep")
    from tapejit._validate import check_tape_arrays

    p = _nested(MAX_NESTING + 1)
    with pytest.raises(TapeFormatError, match="nest more than"):
        check_tape_arrays(p.opcodes, p.args, p.consts, p.inputs, p.params, p.outputs,
                          attrs=p.attrs, attr_at=p.attr_at, subprograms=p.subprograms)


def test_a_subprograms_constants_must_be_its_range_of_the_pool(families):
    from tapejit._validate import check_tape_arrays

    p = _nested()
    (sub,) = p.subprograms
    for wrong in (Subprogram(sub.program, 0), Subprogram(sub.program, 2), (sub.program, 1)):
        with pytest.raises(TapeFormatError, match="sub-program 0"):
            check_tape_arrays(p.opcodes, p.args, p.consts, p.inputs, p.params, p.outputs,
                              attrs=p.attrs, attr_at=p.attr_at, subprograms=(wrong,))


def test_slot_reuse_leaves_family_programs_and_their_sections_alone(families):
    prog, _ = _nested().pack()
    assert np.array_equal(compact(prog), prog)
    for at in (int(prog[AT_ATTRS]), prog.size - 1, int(prog[AT_CODE]) + ATTR):
        with pytest.raises(TapeFormatError, match="keep its original"):
            check_compact(prog, _set(prog, at, prog[at] + 1))
