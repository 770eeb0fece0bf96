"""Resource limits on loading (issue #17): a small file cannot make ``load`` allocate,
inflate or loop over what it merely declares.

* Three hostile files, each tiny on disk: a valid tape with one ``exp`` block of 2**26
  elements (2 GB to evaluate); a member that declares 2.5 GB (and many other members
  declaring sizes that disagree or exceed a limit); an ``input_shapes`` of 2e7 entries.
  Each is refused with ``TapeFormatError`` naming the limit, at a peak of a few
  megabytes of Python/numpy allocations (tracemalloc, which numpy reports to).
* Raising a limit by keyword or by environment variable (read at call time; the keyword
  wins) makes the block file load; bad values are refused with a clear message.
* ``tapejit inspect`` uses the same limits.
* The vectorized shape decoder agrees with the straightforward loop it replaced.
"""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_io import _central_entries
from test_io import _members as tape_members

import tapejit
from tapejit import TapeFormatError
from tapejit._cli import main
from tapejit._io import _MAX_NDIM, _decode_shapes, _encode_shapes, load_tape

_LIMIT_VARS = ("TAPEJIT_MAX_ELEMENTS", "TAPEJIT_MAX_INSTRUCTIONS", "TAPEJIT_MAX_CONSTS")


@pytest.fixture(autouse=True)
def _no_limit_variables(monkeypatch):
    for var in _LIMIT_VARS:
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------
# hostile files (also used by the measurement in the closing note of #17)
# ---------------------------------------------------------------------------------------
def exp_block_file(n: int) -> bytes:
    """A valid tape file of one ``exp`` instruction over ``n`` elements (all reading the
    scalar input: stride 0); about 2.6 KB whatever ``n``."""
    m = tape_members(tapejit.record(np.exp, 1.0))
    assert m["sizes"].tolist() == [1] and not m["strides"].any()
    m["sizes"] = np.array([n], dtype="<i4")
    buf = io.BytesIO()
    np.savez(buf, **m)
    return buf.getvalue()


def declaring_file(members: dict[str, np.ndarray], key: str, shape: tuple[int, ...],
                   compressed: int = 2_400_000) -> bytes:
    """A tape archive whose member ``key`` has a ``.npy`` header declaring ``shape`` (of
    the member's dtype) and deflated data of about ``compressed`` bytes; the archive
    declares the size the header implies, within the deflate ratio the loader accepts.
    What follows the header is random, so nothing can be made of it beyond its header."""
    dtype = members[key].dtype
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
               "shape": shape})
    declared = len(head.getvalue()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    assert declared < 2**32  # no zip64 needed for the patch below
    payload = np.random.default_rng(0).bytes(compressed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in members.items():
            if k == key:
                zf.writestr(k + ".npy", head.getvalue() + payload)
            else:
                b = io.BytesIO()
                np.lib.format.write_array(b, v)
                zf.writestr(k + ".npy", b.getvalue())
    data = bytearray(buf.getvalue())
    entry = _central_entries(bytes(data))[key + ".npy"]
    data[entry + 24 : entry + 28] = declared.to_bytes(4, "little")
    return bytes(data)


def big_shapes_file(members: dict[str, np.ndarray], entries: int = 2 * 10**7) -> bytes:
    """A tape archive whose ``input_shapes`` really holds ``entries`` zeros (``entries``
    scalar shapes), deflated to about 160 KB, written 1 MB at a time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for k, v in members.items():
            if k != "input_shapes":
                b = io.BytesIO()
                np.lib.format.write_array(b, v)
                zf.writestr(k + ".npy", b.getvalue())
        with zf.open("input_shapes.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<i8", "fortran_order": False, "shape": (entries,)})
            chunk = bytes(1 << 20)
            left = entries * 8
            while left:
                fh.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return buf.getvalue()


def _rejected_cheaply(data: bytes, match: str, **limits) -> TapeFormatError:
    """Load ``data``; it must be refused with a message matching ``match`` after
    allocating at most a few megabytes."""
    tracemalloc.start()
    try:
        with pytest.raises(TapeFormatError, match=match) as info:
            load_tape(io.BytesIO(data), **limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak} bytes while refusing a hostile file"
    return info.value


@pytest.fixture(scope="module")
def small():
    """The members of a small recorded tape with constants, a guard and two inputs."""
    def f(x):
        if x[0] > 0.0:
            return np.sum(np.linspace(0.0, 1.0, 5) * x[0]) * x[1]
        return x[1]

    return tape_members(tapejit.record(f, np.array([1.0, 2.0])))


# ---------------------------------------------------------------------------------------
# the three findings of #17
# ---------------------------------------------------------------------------------------
def test_exp_block_of_2_26_elements_is_refused_then_loads_with_a_higher_limit():
    data = exp_block_file(2**26)
    assert len(data) < 8000  # np.savez does not compress
    exc = _rejected_cheaply(data, r"335544322 workspace elements per point")
    msg = str(exc)
    assert "max_elements=100000000" in msg and "TAPEJIT_MAX_ELEMENTS" in msg
    tape = load_tape(io.BytesIO(data), max_elements=2**29)  # not evaluated: 2.7 GB
    assert tape.sizes.tolist() == [2**26]
    assert tapejit.load is load_tape


def test_member_declaring_2_5_gb_is_refused_before_it_is_inflated(small):
    n = 2_500_000_000 // 8
    data = declaring_file(small, "consts", (n,))
    assert len(data) < 2_500_000
    _rejected_cheaply(data, rf"the tape has {n} constants, more than max_consts=10000000")


def test_shapes_of_2e7_entries_are_refused_before_they_are_decoded(small):
    data = big_shapes_file(small)
    assert len(data) < 200_000
    n_in = len(small["inputs"])
    _rejected_cheaply(data, rf"input_shapes has 20000000 entries; the shapes of {n_in} values")


# ---------------------------------------------------------------------------------------
# every member's declared size is bounded before any data is read
# ---------------------------------------------------------------------------------------
_GB = 2_500_000_000
DECLARED = {  # member -> (declared shape, message)
    "opcodes": ((_GB,), r"has 2500000000 instructions, more than max_instructions="),
    "args": ((_GB // 12, 3), r"args must have shape \(\d+, 3\) for \d+ opcodes"),
    "sizes": ((_GB // 4,), r"sizes must have shape \(\d+,\) for \d+ opcodes"),
    "strides": ((_GB // 12, 3), r"strides must have shape"),
    "inputs": ((_GB // 4,), r"at least \d+ workspace elements per point, more than max_elem"),
    "params": ((_GB // 4,), r"workspace elements per point, more than max_elements="),
    "outputs": ((_GB // 4,), r"has 625000000 outputs, more than max_elements="),
    "guards": ((_GB // 8, 2), r"has 312500000 guards, more than max_instructions="),
    "output_shapes": ((_GB // 8,), r"output_shapes has 312500000 entries"),
}


@pytest.mark.parametrize("key", sorted(DECLARED))
def test_huge_declared_member_is_refused_from_its_header(small, key):
    shape, pattern = DECLARED[key]
    _rejected_cheaply(declaring_file(small, key, shape), pattern)


@pytest.mark.parametrize("key, shape, pattern", [
    # within max_instructions, but more than two guards per result slot (outcome 0 or 1)
    ("guards", (2**23, 2), r"8388608 guards for \d+ result elements"),
    # within max_consts, but then the inputs are not the slots after them
    ("consts", (2**23,), r"inputs must be the slots 8388608\.\."),
])
def test_members_within_the_limits_are_checked_against_the_layout_first(small, key, shape,
                                                                        pattern):
    """Found by the fuzz suite: 64-256 MB members that the limits admit were inflated
    (and converted) before the layout refused them: up to 1 GB and 8 s."""
    _rejected_cheaply(declaring_file(small, key, shape), pattern)


def test_repeated_guards_are_kept_once():
    def f(x):
        positive = x[0] > 0.0
        for _ in range(50):  # one comparison decides 50 branches
            if positive:
                x = x * 1.0
        return x[0]

    tape = tapejit.record(f, np.array([1.0]))
    assert tape.n_guards == 1
    arrays = [tape.opcodes, tape.args, tape.consts, tape.inputs, tape.params, tape.outputs]
    again = tapejit.Tape(*arrays, guards=np.repeat(tape.guards, 7, axis=0),
                         sizes=tape.sizes, strides=tape.strides)
    assert again.guards.tolist() == tape.guards.tolist()


def test_workspace_is_checked_from_sizes_before_the_rest_is_read(small):
    """``sizes`` is read (it is small), and the workspace it implies is refused before
    the other members are read: here an ``input_shapes`` of random bytes."""
    m = dict(small)
    m["sizes"] = np.full_like(m["sizes"], 10**8)
    n = len(m["sizes"])
    slots = len(m["consts"]) + len(m["inputs"]) + len(m["params"]) + n * 10**8
    need = 5 * slots - 3 * (slots - n * 10**8)
    data = declaring_file(m, "input_shapes", (_GB // 8 // 10**4,), compressed=300_000)
    _rejected_cheaply(data, rf"needs {need} workspace elements per point \({slots} slots\)")


def test_limits_by_keyword(small):
    good = io.BytesIO()
    np.savez(good, **small)
    good = good.getvalue()
    n, nc = len(small["opcodes"]), len(small["consts"])
    with pytest.raises(TapeFormatError, match=rf"{n} instructions, more than "
                                              rf"max_instructions={n - 1}; .*max_instructions="
                                              r"N\) or the environment variable "
                                              r"TAPEJIT_MAX_INSTRUCTIONS=N"):
        load_tape(io.BytesIO(good), max_instructions=n - 1)
    with pytest.raises(TapeFormatError, match=rf"{nc} constants, more than max_consts=0"):
        load_tape(io.BytesIO(good), max_consts=0)
    with pytest.raises(TapeFormatError, match="more than max_elements=10;"):
        load_tape(io.BytesIO(good), max_elements=10)
    n_fixed = nc + len(small["params"]) + len(small["inputs"])
    need = 5 * (n_fixed + int(small["sizes"].sum())) - 3 * n_fixed  # Tape._point_floats
    with pytest.raises(TapeFormatError, match=rf"needs {need} workspace elements"):
        load_tape(io.BytesIO(good), max_elements=need - 1)
    tape = load_tape(io.BytesIO(good), max_instructions=n, max_consts=nc, max_elements=need)
    assert tape.n_guards == 1


def test_limits_by_environment_read_at_call_time(monkeypatch):
    data = exp_block_file(2**26)
    monkeypatch.setenv("TAPEJIT_MAX_ELEMENTS", "1e9")
    assert load_tape(io.BytesIO(data)).sizes.tolist() == [2**26]
    with pytest.raises(TapeFormatError, match="max_elements=100000000"):  # keyword wins
        load_tape(io.BytesIO(data), max_elements=10**8)
    monkeypatch.setenv("TAPEJIT_MAX_ELEMENTS", "400_000_000")
    assert load_tape(io.BytesIO(data)).n_inputs == 1
    monkeypatch.setenv("TAPEJIT_MAX_ELEMENTS", "6")  # it needs 7
    with pytest.raises(TapeFormatError, match=r"needs at least 7 .*max_elements=6;"):
        load_tape(io.BytesIO(exp_block_file(1)))
    monkeypatch.setenv("TAPEJIT_MAX_INSTRUCTIONS", "0")
    monkeypatch.setenv("TAPEJIT_MAX_ELEMENTS", "")  # empty: the default
    with pytest.raises(TapeFormatError, match="max_instructions=0;"):
        load_tape(io.BytesIO(exp_block_file(1)))


@pytest.mark.parametrize("text", ["abc", "-1", "1.5", "inf", "nan", "1e999", "0x10"])
def test_bad_environment_value(monkeypatch, text):
    monkeypatch.setenv("TAPEJIT_MAX_CONSTS", text)
    with pytest.raises(ValueError, match=r"TAPEJIT_MAX_CONSTS=.* is not a limit") as info:
        load_tape(io.BytesIO(exp_block_file(1)))
    assert not isinstance(info.value, TapeFormatError)


@pytest.mark.parametrize("value, exc", [(-1, ValueError), (1.5, TypeError), ("9", TypeError),
                                         (True, TypeError)])
def test_bad_keyword_value(value, exc):
    with pytest.raises(exc, match="max_elements"):
        load_tape(io.BytesIO(exp_block_file(1)), max_elements=value)


def test_inspect_uses_the_same_limits(tmp_path, monkeypatch, capsys):
    path = tmp_path / "block.npz"
    path.write_bytes(exp_block_file(2**26))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "max_elements=100000000" in err and "TAPEJIT_MAX_ELEMENTS" in err
    monkeypatch.setenv("TAPEJIT_MAX_ELEMENTS", "zero")
    assert main(["inspect", str(path)]) == 2
    assert "TAPEJIT_MAX_ELEMENTS='zero' is not a limit" in capsys.readouterr().err
    small = tmp_path / "small.npz"
    small.write_bytes(exp_block_file(3))
    monkeypatch.setenv("TAPEJIT_MAX_ELEMENTS", "1000")
    assert main(["inspect", str(small)]) == 0


# ---------------------------------------------------------------------------------------
# the shape decoder
# ---------------------------------------------------------------------------------------
def _decode_by_loop(code: np.ndarray, n: int):
    """The decoder before #17 (one Python step per entry): the reference."""
    vals = code.tolist()
    shapes, i, total = [], 0, 0
    while i < len(vals):
        nd = vals[i]
        if not 0 <= nd <= _MAX_NDIM or i + 1 + nd > len(vals):
            raise TapeFormatError("ndim")
        dims = tuple(vals[i + 1 : i + 1 + nd])
        if any(d < 0 for d in dims):
            raise TapeFormatError("size")
        total += int(np.prod(dims, dtype=object)) if dims else 1
        shapes.append(dims)
        i += 1 + nd
    if shapes and total != n:
        raise TapeFormatError("total")
    return tuple(shapes)


@settings(max_examples=1000, deadline=None, database=None, derandomize=True)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=4).map(tuple), max_size=6),
    edits=st.lists(st.tuples(st.integers(0, 40), st.integers(-3, 40)), max_size=3),
    cut=st.integers(0, 3), extra=st.integers(-2, 2),
)
def test_vectorized_shape_decoder_agrees_with_the_loop(shapes, edits, cut, extra):
    code = _encode_shapes(tuple(shapes))
    for pos, v in edits:  # damage some entries
        if pos < len(code):
            code[pos] = v
    code = code[: max(0, len(code) - cut)] if cut < 3 else code
    n = sum(int(np.prod(s)) for s in shapes) + extra
    n = max(n, 0)
    try:
        want = _decode_by_loop(code, n)
    except TapeFormatError as exc:
        with pytest.raises(TapeFormatError, match={"ndim": "dimensions", "size": "invalid size",
                                                   "total": "describe"}[str(exc)]):
            _decode_shapes("input_shapes", code, n)
    else:
        assert _decode_shapes("input_shapes", code, n) == want


def test_shape_decoder_does_not_overflow():
    code = np.array([3, 2**40, 2**40, 2**40, 1, 5], dtype=np.int64)
    with pytest.raises(TapeFormatError, match="describe more than 2147483648 values"):
        _decode_shapes("input_shapes", code, 5)
    code = np.array([2, 0, 2**62, 1, 5], dtype=np.int64)  # an empty shape and (5,)
    assert _decode_shapes("input_shapes", code, 5) == ((0, 2**62), (5,))
    many = np.zeros(10**5, dtype=np.int64)  # 10**5 scalars
    assert len(_decode_shapes("input_shapes", many, 10**5)) == 10**5
