"""Saving and loading tapes (``tapejit._io``).

* Round trips give bit-identical results (forward, gradient, Jacobian, Hessian, guards)
  for recorded functions with parameters, several outputs, constants, guards, and for
  hand-built tapes.
* The fixtures ``tests/data/tape_v1.npz`` and ``tape_v2.npz`` (format versions 1 and 2)
  keep loading and give known numbers, and so does ``tape_loop_v4.npz``, a loop tape
  saved before the loop family gained rules (``Family.equivalent``).
* A file records the ops it uses with their definitions' hashes: it loads whatever ops
  the table gains, and is refused, naming the op, when one of its ops changed.
* Every malformed file raises ``TapeFormatError`` naming the problem, and nothing else:
  hand-crafted files (wrong dtypes, shapes, versions, op lists, slot references,
  opcodes, sizes) and hypothesis fuzzing (bit flips, truncations and insertions of the
  whole file; the same inside one member of an otherwise valid archive; random arrays in
  a valid archive). A file that does load is evaluated, so a tape that slipped through
  validation would crash the kernels here.
"""

from __future__ import annotations

import dataclasses
import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tapejit
from tapejit import Tape, TapeFormatError, _ops
from tapejit._io import FORMAT_VERSION, load_tape, save_tape
from tapejit._ops import COMPATIBLE_FINGERPRINTS, OPS

DATA = Path(__file__).resolve().parent / "data"


# ---------------------------------------------------------------------------------------
# tapes
# ---------------------------------------------------------------------------------------
def seed(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def with_params(x, p):
    return p[0] * np.sum(np.sin(x * p[1])) + np.hypot(x[0], p[2])


def multi(x):
    return x[0] * x[1], np.exp(-x[2]) * np.array([1.0, 2.0, -0.0]), x[2]


def consts(x):
    big = np.linspace(-1.0, 1.0, 80)  # a large constant pool, not deduplicated
    return np.sum(big * x[0]) + np.nan * 0.0 + x[1] * -0.0 + np.maximum(x[1], np.inf)


def guarded(x):
    if x[0] > 0.0:
        return x[0] ** 2 * x[1]
    return -x[1]


def _bits(a):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    return a.view(np.uint64)


def assert_same_bits(a, b):
    assert np.shape(a) == np.shape(b)
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.fixture(scope="module")
def tapes():
    return {
        "seed": (tapejit.record(seed, 2.0, 5.0), None, 2),
        "params": (tapejit.record(with_params, np.ones(3), np.ones(3), argnums=0),
                   np.array([0.5, 1.5, 2.0]), 3),
        "multi": (tapejit.record(multi, np.ones(3)), None, 3),
        "consts": (tapejit.record(consts, np.ones(2)), None, 2),
        "guarded": (tapejit.record(guarded, np.array([1.0, 2.0])), None, 2),
    }


def roundtrip(tape, tmp_path=None):
    if tmp_path is None:
        buf = io.BytesIO()
        save_tape(tape, buf)
        buf.seek(0)
        return load_tape(buf)
    path = tmp_path / "t.tape"  # any name: nothing is appended
    save_tape(tape, path)
    assert path.exists() and not (tmp_path / "t.tape.npz").exists()
    return load_tape(path)


@pytest.mark.parametrize("which", ["seed", "params", "multi", "consts", "guarded"])
def test_roundtrip_bit_identical(tapes, which, tmp_path):
    tape, p, n_in = tapes[which]
    back = roundtrip(tape, tmp_path)
    assert back.listing(None) == tape.listing(None)
    for attr in ("opcodes", "args", "sizes", "strides", "inputs", "params", "outputs",
                 "guards"):
        assert np.array_equal(getattr(back, attr), getattr(tape, attr)), attr
    assert_same_bits(back.consts, tape.consts)  # -0.0 and NaN payloads included
    assert back.input_shapes == tape.input_shapes
    assert back.output_shapes == tape.output_shapes
    assert back.name == tape.name
    rng = np.random.default_rng(1)
    X = rng.uniform(0.2, 3.0, size=(600, n_in))  # > 2 chunks: parallel kernels too
    for x in (X, X[0]):
        assert_same_bits(back.forward(x, p, check="mask")[0], tape.forward(x, p, check="mask")[0])
        assert_same_bits(back.jacobian(x, p, check="mask")[0],
                         tape.jacobian(x, p, check="mask")[0])
        if tape.n_outputs == 1:
            assert_same_bits(back.gradient(x, p, check="mask")[0],
                             tape.gradient(x, p, check="mask")[0])
            assert_same_bits(back.hessian(x, p, check="mask")[0],
                             tape.hessian(x, p, check="mask")[0])


def test_roundtrip_file_object_and_pathlike(tapes, tmp_path):
    tape = tapes["multi"][0]
    assert roundtrip(tape).listing() == tape.listing()
    save_tape(tape, str(tmp_path / "a.npz"))
    assert load_tape(str(tmp_path / "a.npz")).listing() == tape.listing()


def test_roundtrip_hand_built_tapes():
    # no instructions, output is an input; and an output that is a constant
    t = Tape(np.zeros(0, np.uint8), np.zeros((0, 3), np.int32), np.array([7.5]),
             np.array([1]), np.zeros(0, int), np.array([1, 0]))
    back = roundtrip(t)
    assert back.input_shapes == () and back.output_shapes == ()
    assert back.forward(np.array([2.0])).tolist() == [2.0, 7.5]
    # nothing at all
    t = Tape(np.zeros(0, np.uint8), np.zeros((0, 3), np.int32), np.zeros(0),
             np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    assert len(roundtrip(t)) == 0


def test_save_refuses_what_load_would_refuse(tmp_path):
    t = Tape(np.array([18]), np.array([[0, 0, 0]]), np.zeros(0), np.array([0]),
             np.zeros(0, int), np.array([1]), input_shapes=((3,),))
    with pytest.raises(ValueError, match="input_shapes describe 3 values but the tape has 1"):
        save_tape(t, tmp_path / "t.npz")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left
    with pytest.raises(TypeError, match=r"needs a tapejit\.Tape"):
        save_tape("not a tape", tmp_path / "t.npz")


# ---------------------------------------------------------------------------------------
# the fixtures of each format version
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
def test_fixture_loads_and_gives_known_numbers(version):
    path = DATA / f"tape_v{version}.npz"
    try:
        tape = load_tape(path)
    except TapeFormatError as exc:  # pragma: no cover - message for the maintainer
        if "defined differently" in str(exc) or "op table changed" in str(exc):
            pytest.fail(
                f"{exc}\nTape files written before are refused. If the op still means "
                "what it meant, keep its definition; if it changed meaning on purpose, "
                "regenerate the fixtures: python tests/data/make_fixtures.py (see there)"
            )
        raise
    assert tape.name == "fixture"
    assert (tape.n_inputs, tape.n_params, tape.n_outputs, tape.n_guards) == (2, 1, 2, 1)
    assert tape.input_shapes == ((2,),) and tape.output_shapes == ((), ())
    with zipfile.ZipFile(path) as zf:
        assert int(np.load(zf.open("format_version.npy"))) == version
    x, p = np.array([2.0, 5.0]), np.array([3.0])
    y, z = tape.forward(x, p)
    assert y == pytest.approx(math.log(2.0) + 10.0 - math.sin(5.0), rel=1e-15)
    assert z == pytest.approx(3.0 * math.exp(-2.0), rel=1e-15)
    J = tape.jacobian(x, p)
    np.testing.assert_allclose(
        J, [[5.5, 2.0 - math.cos(5.0)], [-3.0 * math.exp(-2.0), 0.0]], rtol=1e-14
    )
    # the guard x2 > 0 was recorded
    with pytest.raises(tapejit.BranchError):
        tape.forward(np.array([2.0, -1.0]), p)


# ---------------------------------------------------------------------------------------
# crafted bad files
# ---------------------------------------------------------------------------------------
def _members(tape) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    save_tape(tape, buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _npz(members: dict[str, object], raw: dict[str, bytes] | None = None,
         compression=zipfile.ZIP_STORED) -> bytes:
    """An archive of ``.npy`` members (and raw members, written byte for byte)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for k, v in members.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, np.asanyarray(v), allow_pickle=True)
            zf.writestr(k + ".npy", b.getvalue())
        for k, v in (raw or {}).items():
            zf.writestr(k, v)
    return buf.getvalue()


def _load_bytes(data: bytes):
    return load_tape(io.BytesIO(data))


@pytest.fixture(scope="module")
def good(tapes):
    return _members(tapes["guarded"][0])


def _with(good, **changes):
    m = dict(good)
    for k, v in changes.items():
        if v is None:
            del m[k]
        else:
            m[k] = v
    return m


BAD = {
    "missing member": (lambda g: _with(g, consts=None), "missing member.*consts"),
    "missing version": (lambda g: _with(g, format_version=None), "format_version' is missing"),
    "unexpected member": (lambda g: _with(g, extra=np.zeros(2)), "unexpected member.*'extra'"),
    "newer version": (lambda g: _with(g, format_version=np.array(FORMAT_VERSION + 1)),
                      "needs a newer tapejit"),
    "version 0": (lambda g: _with(g, format_version=np.array(0)), "invalid .*version 0"),
    "version as float": (lambda g: _with(g, format_version=np.array(1.0)),
                         "'format_version' must be int64"),
    "op changed": (lambda g: _with(g, op_hashes=_set1(g["op_hashes"], 0, "0123456789abcdef")),
                   r"op '\w+' \(opcode \d+\) is defined differently than when this tape "
                   "was saved"),
    "op renamed": (lambda g: _with(g, op_names=_set1(g["op_names"].astype("<U16"), 0,
                                                     "frobnicate")),
                   r"opcode \d+ was op 'frobnicate' when this tape was saved"),
    "op unknown": (lambda g: _with(g, op_codes=_set1(g["op_codes"], 0, 200)),
                   r"uses op '\w+' \(opcode 200\), which this tapejit .* does not have"),
    "op listed twice": (lambda g: _with(g, op_codes=np.full_like(g["op_codes"], 3)),
                        "lists an opcode twice"),
    "op lists disagree": (lambda g: _with(g, op_names=g["op_names"][:-1].copy()),
                          "one entry per op the tape uses"),
    "op not listed": (lambda g: _with(g, op_codes=g["op_codes"][1:].copy(),
                                      op_names=g["op_names"][1:].copy(),
                                      op_hashes=g["op_hashes"][1:].copy()),
                      "which its member op_codes does not list"),
    "op codes int64": (lambda g: _with(g, op_codes=g["op_codes"].astype(np.int64)),
                       "'op_codes' must be uint8"),
    "v1 member in v2": (lambda g: _with(g, fingerprint=np.array("0123456789abcdef")),
                        "unexpected member.*'fingerprint'.*version 2"),
    "v1 fingerprint": (lambda g: _v1(g, "0123456789abcdef"), "op table changed"),
    "v1 with v2 members": (lambda g: {**_v1(g, "544b622e883cef34"), "op_codes": g["op_codes"]},
                           "unexpected member.*'op_codes'.*version 1"),
    "args int64": (lambda g: _with(g, args=g["args"].astype(np.int64)),
                   "'args' must be int32"),
    "args big-endian": (lambda g: _with(g, args=g["args"].astype(">i4")),
                        "'args' must be int32 \\(little-endian\\); got dtype >i4"),
    "args (n, 2)": (lambda g: _with(g, args=g["args"][:, :2].copy()),
                    "'args' must have shape \\(n, 3\\)"),
    "args fortran": (lambda g: _with(g, args=np.asfortranarray(g["args"])),
                     "C order"),
    "args rows": (lambda g: _with(g, args=g["args"][:-1].copy()),
                  "args must have shape"),
    "opcodes int32": (lambda g: _with(g, opcodes=g["opcodes"].astype(np.int32)),
                      "'opcodes' must be uint8"),
    "consts float32": (lambda g: _with(g, consts=g["consts"].astype(np.float32)),
                       "'consts' must be float64"),
    "consts 2-D": (lambda g: _with(g, consts=g["consts"].reshape(1, -1)),
                   "'consts' must have shape \\(n,\\)"),
    "object array": (lambda g: _with(g, name=np.array(["x", None], dtype=object)),
                     "object array"),
    "name bytes": (lambda g: _with(g, name=np.array(b"abc")), "'name' must be a unicode"),
    "name too long": (lambda g: _with(g, name=np.array("x" * 5000)), "at most 4096"),
    "guards (n, 3)": (lambda g: _with(g, guards=np.zeros((1, 3), np.int32)),
                      "'guards' must have shape \\(n, 2\\)"),
    "guard slot": (lambda g: _with(g, guards=np.array([[0, 1]], np.int32)), "guard 0"),
    "guard outcome": (lambda g: _with(g, guards=np.array([[g["guards"][0, 0], 2]], np.int32)),
                      "guard 0"),
    "unknown opcode": (lambda g: _with(g, opcodes=np.where(np.arange(len(g["opcodes"])) == 1,
                                                           200, g["opcodes"]).astype(np.uint8)),
                       "uses opcode 200, which its member op_codes does not list"),
    "opcode 0": (lambda g: _with(g, opcodes=np.zeros_like(g["opcodes"])),
                 "uses opcode 0, which its member op_codes does not list"),
    "v1 unknown opcode": (lambda g: _v1(_with(g, opcodes=_set1(g["opcodes"], 1, 127))),
                          "instruction 1: unknown opcode 127"),
    "v1 family opcode": (lambda g: _v1(_with(g, opcodes=_set1(g["opcodes"], 1, 200))),
                         "instruction family 200 is not known"),
    "forward reference": (lambda g: _with(g, args=_set(g["args"], 0, 0, 10)),
                          "instruction 0 .*reads slots 10..10"),
    "self reference": (lambda g: _with(g, args=_set(g["args"], 1, 0, _n_fixed(g) + 1)),
                       "instruction 1 .*earlier nodes"),
    "negative slot": (lambda g: _with(g, args=_set(g["args"], 0, 0, -1)), "slots -1..-1"),
    "block past its result": (lambda g: _with(g, sizes=_set1(g["sizes"], 0, 3),
                                              strides=_set(g["strides"], 0, 0, 1)),
                              "instruction 0 .*reads slots"),
    "size 0": (lambda g: _with(g, sizes=_set1(g["sizes"], 0, 0)), "size 0"),
    "stride of unused": (lambda g: _with(g, strides=_set(g["strides"], 0, 2, 1)),
                         "unused operand"),
    "sizes rows": (lambda g: _with(g, sizes=g["sizes"][:-1].copy()), "sizes must have shape"),
    "strides int64": (lambda g: _with(g, strides=g["strides"].astype(np.int64)),
                      "'strides' must be int32"),
    "unused column": (lambda g: _with(g, args=_set(g["args"], 0, 2, 1)), "unused operand"),
    "output range": (lambda g: _with(g, outputs=np.array([10**6], np.int32)),
                     "output 0 refers to slot 1000000"),
    "inputs": (lambda g: _with(g, inputs=g["inputs"][::-1].copy()), "inputs must be the slots"),
    "params": (lambda g: _with(g, params=np.array([0], np.int32)), "params must be the slots"),
    "input shapes sum": (lambda g: _with(g, input_shapes=np.array([1, 3], np.int64)),
                         "input_shapes describe 3 values but the tape has 2"),
    "input shapes ndim": (lambda g: _with(g, input_shapes=np.array([40], np.int64)),
                          "declares 40 dimensions"),
    "input shapes negative": (lambda g: _with(g, input_shapes=np.array([1, -2], np.int64)),
                              "invalid size"),
    "input shapes truncated": (lambda g: _with(g, input_shapes=np.array([2, 2], np.int64)),
                               "declares 2 dimensions"),
}


V1_FINGERPRINT = next(iter(COMPATIBLE_FINGERPRINTS))


def _v1(g, fp=V1_FINGERPRINT):
    """``g`` as a file of format version 1 with op-table fingerprint ``fp``."""
    return _with(g, format_version=np.array(1), fingerprint=np.array(fp), op_codes=None,
                 op_names=None, op_hashes=None)


def _n_fixed(g):
    return len(g["consts"]) + len(g["params"]) + len(g["inputs"])


def _set(a, i, j, v):
    a = a.copy()
    a[i, j] = v
    return a


def _set1(a, i, v):
    a = a.copy()
    a[i] = v
    return a


@pytest.mark.parametrize("case", sorted(BAD))
def test_crafted_bad_file(good, case):
    make, pattern = BAD[case]
    data = _npz(make(good))
    with pytest.raises(TapeFormatError, match=pattern):
        _load_bytes(data)


def test_good_members_still_load(good):
    """The crafting helper itself writes loadable files."""
    assert _load_bytes(_npz(good)).n_guards == 1
    assert _load_bytes(_npz(good, compression=zipfile.ZIP_DEFLATED)).n_guards == 1


def _npy_bytes(a) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, a)
    return b.getvalue()


def _header_lies(a, shape) -> bytes:
    """``.npy`` bytes of ``a`` whose header declares ``shape`` instead."""
    d = np.lib.format.header_data_from_array_1_0(a)
    d["shape"] = shape
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, d)
    return b.getvalue() + a.tobytes()


@pytest.mark.parametrize(
    "shape, pattern",
    [((10**15,), "declares shape"), ((2**63 - 1,), "declares shape"), ((1,), "declares shape"),
     ((3, 3), "must have shape")],
)
def test_header_declaring_more_data_than_the_file_holds(good, shape, pattern):
    m = _with(good, opcodes=None)
    data = _npz(m, raw={"opcodes.npy": _header_lies(good["opcodes"], shape)})
    with pytest.raises(TapeFormatError, match=pattern):
        _load_bytes(data)


def _central_entries(data: bytes):
    """``{name: offset}`` of the central directory entries of a zip."""
    out = {}
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(data[pos + 28 : pos + 30], "little")
        out[data[pos + 46 : pos + 46 + n].decode()] = pos
        pos = data.find(b"PK\x01\x02", pos + 46 + n)
    return out


def test_zip_bomb_ratio_is_refused(good):
    """A deflated member claiming more bytes than deflate can make of its compressed
    size is refused before anything is decompressed or allocated."""
    data = bytearray(_npz(good, compression=zipfile.ZIP_DEFLATED))
    entry = _central_entries(bytes(data))["consts.npy"]
    csize = int.from_bytes(data[entry + 20 : entry + 24], "little")
    data[entry + 24 : entry + 28] = (csize * 5000 + 10**6).to_bytes(4, "little")
    with pytest.raises(TapeFormatError, match=r"claims .* bytes from"):
        _load_bytes(bytes(data))


def test_max_bytes(good):
    data = _npz(good)
    with pytest.raises(TapeFormatError, match="more than max_bytes=100"):
        load_tape(io.BytesIO(data), max_bytes=100)
    assert load_tape(io.BytesIO(data), max_bytes=None).n_guards == 1


def test_other_compression_and_encryption_are_refused(good):
    data = _npz(good, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(TapeFormatError, match="compression method 12"):
        _load_bytes(data)
    data = bytearray(_npz(good))
    for entry in _central_entries(bytes(data)).values():  # set the "encrypted" flag
        data[entry + 8] |= 1
    with pytest.raises(TapeFormatError, match="is encrypted"):
        _load_bytes(bytes(data))


def test_duplicate_member(good):
    buf = io.BytesIO(_npz(good))
    with pytest.warns(UserWarning), zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("consts.npy", _npy_bytes(good["consts"]))
    with pytest.raises(TapeFormatError, match="duplicate"):
        _load_bytes(buf.getvalue())


def test_not_npy_member(good):
    data = _npz(_with(good, name=None), raw={"name": b"hello"})
    with pytest.raises(TapeFormatError, match=r"must be \.npy"):
        _load_bytes(data)
    data = _npz(_with(good, name=None), raw={"name.npy": b"hello, not an npy header"})
    with pytest.raises(TapeFormatError, match="name"):
        _load_bytes(data)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "the file is empty"),
        (b"hello world", "not a .npz"),
        (b"PK\x03\x04 but not really a zip", "cannot read tape file"),
        (_npy_bytes(np.zeros(3)), "single .npy array"),
        (b"\x80\x04\x95" + b"pickle" * 5, "not a .npz"),
    ],
)
def test_not_a_tape_file(tmp_path, content, pattern):
    path = tmp_path / "t.npz"
    path.write_bytes(content)
    with pytest.raises(TapeFormatError, match=pattern):
        load_tape(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TapeFormatError, match="FileNotFoundError"):
        load_tape(tmp_path / "nope.npz")
    with pytest.raises(TapeFormatError, match=r"IsADirectoryError|PermissionError"):
        load_tape(tmp_path)


def test_message_names_the_file(tmp_path, good):
    path = tmp_path / "bad.npz"
    path.write_bytes(_npz(_with(good, consts=None)))
    with pytest.raises(TapeFormatError, match=r"bad\.npz.*missing member"):
        load_tape(path)


def _redefined(op, **fields) -> dict:
    """The op table's lookups with ``op`` replaced by a copy with other ``fields``."""
    new = dataclasses.replace(op, **fields)
    ops = tuple(new if o is op else o for o in OPS)
    return {"OPS": ops, "BY_CODE": {o.code: o for o in ops},
            "BY_NAME": {o.name: o for o in ops}}


def _patch(monkeypatch, table: dict) -> None:
    for name, value in table.items():
        monkeypatch.setattr(_ops, name, value)


def test_changing_a_formula_changes_that_ops_fingerprint_only():
    sin = _ops.BY_NAME["sin"]
    before = {op.code: _ops.op_fingerprint(op) for op in OPS}
    assert len(set(before.values())) == len(OPS)  # every op its own hash
    changed = dataclasses.replace(sin, partials=("-_cos(a)",))
    assert _ops.op_fingerprint(changed) != before[sin.code]
    assert _ops.op_fingerprint(dataclasses.replace(sin, second=("r",))) != before[sin.code]
    assert _ops.op_fingerprint(dataclasses.replace(sin, value="math.sin(a)")) != before[sin.code]
    # what the tests and the docs read (flags, samplers, doc) is not the op's meaning
    assert _ops.op_fingerprint(dataclasses.replace(sin, doc="x", domain=((0.0, 1.0),))) \
        == before[sin.code]
    assert {op.code: _ops.op_fingerprint(op) for op in OPS} == before


def test_changing_a_helper_changes_the_fingerprints_of_the_ops_calling_it(monkeypatch):
    before = {op.name: _ops.op_fingerprint(op) for op in OPS}
    sources = _ops._helper_sources()
    # _clip calls _maximum and _minimum: a change of _maximum reaches clip too
    edited = dict(sources, _maximum=sources["_maximum"].replace(">=", ">"))
    # decorators, comments and blank lines are not the helper's meaning
    commented = dict(sources, _maximum="@njit(cache=True)\n" + sources["_maximum"]
                     + "  # a comment\n\n")
    monkeypatch.setattr(_ops, "_helper_sources", lambda: commented)
    _ops.op_fingerprint.cache_clear()
    assert {op.name: _ops.op_fingerprint(op) for op in OPS} == before
    monkeypatch.setattr(_ops, "_helper_sources", lambda: edited)
    _ops.op_fingerprint.cache_clear()
    after = {op.name: _ops.op_fingerprint(op) for op in OPS}
    _ops.op_fingerprint.cache_clear()
    assert {n for n in before if after[n] != before[n]} == {"maximum", "clip", "logaddexp"}


def test_a_file_whose_op_changed_is_refused_naming_it(tmp_path, monkeypatch):
    uses_sin = tmp_path / "sin.npz"
    save_tape(tapejit.record(lambda x: np.sin(x) * x, 0.5), uses_sin)
    no_sin = tmp_path / "exp.npz"
    save_tape(tapejit.record(lambda x: np.exp(x) * x, 0.5), no_sin)
    sin = _ops.BY_NAME["sin"]
    _patch(monkeypatch, _redefined(sin, partials=("-_cos(a)",)))
    with pytest.raises(TapeFormatError, match=(
            rf"sin\.npz.*op 'sin' \(opcode {sin.code}\) is defined differently than when "
            "this tape was saved")):
        load_tape(uses_sin)
    assert load_tape(no_sin).forward(np.array([1.0])) == pytest.approx(math.e)


def test_an_equivalent_earlier_definition_still_loads(tmp_path):
    """A file saved with an earlier definition of an op listed as equivalent
    (``_ops.EQUIVALENT_FINGERPRINTS``: pow's partials before they used azmul) loads and
    gives today's numbers; any other fingerprint of that op is refused."""
    tape = tapejit.record(lambda x, y: x ** y, 1.5, 0.5)
    members = _members(tape)
    k = members["op_names"].tolist().index("pow")
    path = tmp_path / "pow.npz"
    x = np.array([[1.5, 0.5], [2.0, 0.0], [0.0, 2.0]])
    for old in _ops.EQUIVALENT_FINGERPRINTS["pow"]:
        hashes = members["op_hashes"].copy()
        hashes[k] = old
        path.write_bytes(_npz({**members, "op_hashes": hashes}))
        loaded = load_tape(path)
        np.testing.assert_array_equal(loaded.forward(x), tape.forward(x))
        np.testing.assert_array_equal(loaded.gradient(x), tape.gradient(x))
    hashes = members["op_hashes"].copy()
    hashes[k] = "0123456789abcdef"
    path.write_bytes(_npz({**members, "op_hashes": hashes}))
    with pytest.raises(TapeFormatError, match=r"op 'pow' .* is defined differently"):
        load_tape(path)


def test_a_new_op_does_not_invalidate_saved_files(tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    tape = tapejit.record(seed, 1.5, 0.5)
    save_tape(tape, path)
    mul = _ops.BY_NAME["mul"]
    new = dataclasses.replace(mul, code=120, name="mul_again")
    ops = (*OPS, new)
    _patch(monkeypatch, {"OPS": ops, "BY_CODE": {o.code: o for o in ops},
                         "BY_NAME": {o.name: o for o in ops}})
    x = np.array([[1.5, 0.5], [2.0, -1.0]])
    np.testing.assert_array_equal(load_tape(path).forward(x), tape.forward(x))


def test_version_1_files_load_by_their_op_table(tmp_path, good):
    path = tmp_path / "old.npz"
    for fp in COMPATIBLE_FINGERPRINTS:
        path.write_bytes(_npz(_v1(good, fp)))
        assert load_tape(path).n_inputs == len(good["inputs"])
    with zipfile.ZipFile(DATA / "tape_v1.npz") as zf:
        assert str(np.load(zf.open("fingerprint.npy"))) in COMPATIBLE_FINGERPRINTS
    path.write_bytes(_npz(_v1(good, "0123456789abcdef")))
    with pytest.raises(TapeFormatError, match=r"op table changed.*'0123456789abcdef'"):
        load_tape(path)


# ---------------------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------------------
def _must_not_crash(data: bytes) -> None:
    """Load; anything but a valid tape or TapeFormatError fails. A loaded tape is run."""
    try:
        tape = _load_bytes(data)
    except TapeFormatError as exc:
        event("refused: " + str(exc).split(":")[1].strip()[:40])
        return
    event("loaded and evaluated")
    x = np.full(tape.n_inputs, 0.5)
    p = np.full(tape.n_params, 0.25) if tape.n_params else None
    tape.forward(x, p, check="mask")
    tape.forward(np.tile(x, (5, 1)), p, check="mask")
    if tape.n_outputs:
        tape.vjp(x, np.ones(tape.n_outputs), p, check="mask")
        tape.jacobian(x, p, check="mask")


@pytest.fixture(scope="module")
def good_bytes(good):
    return _npz(good)


_FUZZ = settings(max_examples=1500, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@_FUZZ
@given(data=st.data())
def test_fuzz_whole_file(good_bytes, data):
    b = bytearray(good_bytes)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
    if kind == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=4)):
            b[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(b)))
        b[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        pos = data.draw(st.integers(0, len(b) - 1))
        del b[pos : pos + data.draw(st.integers(1, 16))]
    else:
        pos = data.draw(st.integers(0, len(b) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        b[pos : pos + len(chunk)] = chunk
    _must_not_crash(bytes(b))


@_FUZZ
@given(data=st.data())
def test_fuzz_one_member_in_a_valid_archive(good, data):
    """Damage inside one member, with a correct zip around it (so the CRC passes and the
    ``.npy`` header and the arrays themselves are what is tested)."""
    key = data.draw(st.sampled_from(sorted(good)))
    raw = bytearray(_npy_bytes(good[key]))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
    if kind == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3)):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=24))
    else:
        pos = data.draw(st.integers(0, len(raw) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        raw[pos : pos + len(chunk)] = chunk
    _must_not_crash(_npz(_with(good, **{key: None}), raw={key + ".npy": bytes(raw)}))


_DTYPES = ["|u1", "<i4", "<i8", "<f8", "<f4", ">i4", "|b1", "<U3", "<c16"]


@_FUZZ
@given(data=st.data())
def test_fuzz_arrays_in_a_valid_archive(good, data):
    """Random arrays of random dtypes and shapes for one or more members; small integers
    so that some programs are valid and get evaluated."""
    m = dict(good)
    for key in data.draw(st.lists(st.sampled_from(sorted(good)), min_size=1, max_size=3)):
        dtype = np.dtype(data.draw(st.sampled_from([good[key].dtype.str] * 4 + _DTYPES)))
        ndim = data.draw(st.sampled_from([good[key].ndim] * 3 + [0, 1, 2]))
        shape = tuple(data.draw(st.integers(0, 6)) for _ in range(ndim))
        if ndim == 2 and data.draw(st.booleans()):
            shape = (shape[0], good[key].shape[1] if good[key].ndim == 2 else 3)
        size = int(np.prod(shape, dtype=np.int64))
        if dtype.kind == "U":
            vals = data.draw(st.lists(st.text(max_size=3), min_size=size, max_size=size))
        elif dtype.kind == "f":
            vals = data.draw(st.lists(st.floats(allow_nan=True), min_size=size, max_size=size))
        elif dtype.kind == "c":
            vals = [complex(v) for v in range(size)]
        else:
            vals = data.draw(st.lists(st.integers(-2, 60), min_size=size, max_size=size))
        with np.errstate(all="ignore"):
            if not size:
                arr = np.zeros(0, dtype)
            elif dtype.kind in "iub":
                arr = np.array(vals, dtype=np.int64).astype(dtype)  # wraps around
            else:
                arr = np.array(vals, dtype=object).astype(dtype)
        m[key] = arr.reshape(shape)
    _must_not_crash(_npz(m))


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(
    n=st.integers(0, 12), nc=st.integers(0, 3), n_par=st.integers(0, 2),
    n_in=st.integers(0, 3), data=st.data(),
)
def test_fuzz_programs(n, nc, n_par, n_in, data):
    """Random (mostly invalid) programs written as a well-formed file: the loader's
    verdict decides, and whatever it accepts runs."""
    codes = [op.code for op in OPS] + [0, 99, 127, 128, 255]
    n_fixed = nc + n_par + n_in
    opcodes = np.array(data.draw(st.lists(st.sampled_from(codes), min_size=n, max_size=n)),
                       dtype=np.uint8)
    args = np.array(
        data.draw(st.lists(st.integers(-1, n_fixed + n), min_size=3 * n, max_size=3 * n)),
        dtype=np.int32,
    ).reshape(n, 3)
    outputs = np.array(data.draw(st.lists(st.integers(-1, n_fixed + n), max_size=3)), np.int32)
    guards = np.array(
        data.draw(st.lists(st.tuples(st.integers(0, n_fixed + n), st.integers(0, 1)),
                           max_size=2)), dtype=np.int32,
    ).reshape(-1, 2)
    members = {
        "format_version": np.array(1, np.int64), "tapejit_version": np.array("0"),
        "fingerprint": np.array(next(iter(COMPATIBLE_FINGERPRINTS))), "name": np.array("fuzz"),
        "opcodes": opcodes, "args": args, "sizes": np.ones(n, np.int32),
        "strides": np.zeros((n, 3), np.int32), "consts": np.linspace(-1, 2, nc),
        "inputs": (nc + n_par + np.arange(n_in)).astype(np.int32),
        "params": (nc + np.arange(n_par)).astype(np.int32), "outputs": outputs,
        "guards": guards, "input_shapes": np.zeros(0, np.int64),
        "output_shapes": np.zeros(0, np.int64),
    }
    _must_not_crash(_npz(members))


def _loop_fixture_f(p, x):
    # tests/data/tape_loop_v4.npz was saved from this function by the code of 09d659b
    def body(c, xt):
        a, b = c
        a2 = np.sin(a) * b + 0.1 * a + xt
        return (a2, 0.9 * b + 0.01 * a * a), a2 * b

    (a, b), ys = tapejit.scan(body, (p[0], p[1]), x, checkpoint=3)
    return a + b + np.sum(ys)


def test_a_loop_tape_saved_before_the_loop_family_gained_rules_still_loads():
    # the loop family's fingerprint changed with rules that mean nothing new to a file
    # (Family.equivalent); the file must load and give what a new recording gives
    from tapejit import _io
    from tapejit._fam_loop import LOOP

    with zipfile.ZipFile(DATA / "tape_loop_v4.npz") as zf:
        names = [str(h) for h in np.load(zf.open("family_names.npy"))]
        hashes = [str(h) for h in np.load(zf.open("family_hashes.npy"))]
    saved = hashes[names.index("loop")]
    assert saved in LOOP.equivalent and saved != _io.family_fingerprint(LOOP)
    tape = load_tape(DATA / "tape_loop_v4.npz")
    xs = np.linspace(0.0, 0.3, 7)
    p = np.array([0.3, 0.7])
    v, g = tape.value_and_grad(p, xs)
    assert v == pytest.approx(1.9814214805610173, rel=1e-14)
    np.testing.assert_allclose(g, [1.36199219, 4.03901272], rtol=1e-8)
    fresh = tapejit.record(_loop_fixture_f, p, xs, argnums=0)
    v2, g2 = fresh.value_and_grad(p, xs)
    assert np.float64(v).view(np.int64) == np.float64(v2).view(np.int64)
    np.testing.assert_array_equal(g.view(np.int64), g2.view(np.int64))
