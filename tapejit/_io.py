"""Saving and loading tapes: a versioned ``.npz`` of plain arrays, validated on load.

A tape file is a zip archive written by :func:`numpy.savez` (no pickle, no object
arrays) with exactly these members (format version 2)::

    format_version   int64, shape ()        2 (a newer file needs a newer tapejit)
    tapejit_version  unicode, shape ()      version of tapejit that wrote the file
    op_codes         uint8, (k,)            the opcodes the tape uses, ascending
    op_names         unicode, (k,)          their names
    op_hashes        unicode, (k,)          their definitions' hashes (_ops.op_fingerprint)
    name             unicode, shape ()      the tape's name
    opcodes          uint8, (n,)
    args             int32, (n, 3)          first operand slots, unused columns 0
    sizes            int32, (n,)            elements per instruction (1: scalar)
    strides          int32, (n, 3)          operand strides of block instructions (of a
                                            family instruction: its operand blocks' lengths)
    consts           float64, (nc,)
    inputs           int32, (n_inputs,)     slots (see Tape)
    params           int32, (n_params,)
    outputs          int32, (n_outputs,)
    guards           int32, (n_guards, 2)   recorded branch decisions (slot, outcome 0/1)
    input_shapes     int64, (k,)            shapes, each as ndim followed by its dims
    output_shapes    int64, (k,)

A tape with instruction family instructions (matrix products, factorizations: opcodes
from 128) is written in format version 3, which has these members too::

    attrs            int32, (n_attrs,)      the attribute section (Tape.attrs)
    attr_offsets     int32, (n,)            each instruction's first attribute (ATTR)
    family_codes     uint8, (f,)            the families the tape uses, ascending
    family_names     unicode, (f,)          their names
    family_attrs     unicode, (f,)          their attribute names, comma-separated
    family_hashes    unicode, (f,)          hashes of what they mean (family_fingerprint)

(``op_codes`` then lists the elementwise ops only.) A tape without families is still
written in version 2, so that the tapejit versions before families read it. A tape
with loops (instructions that run a sub-program: ``tapejit.scan``) is written in
format version 4, which adds::

    subprograms      int32, (k,)            the packed sub-programs (each a whole packed
                                            program, its own nested ones inside), one
                                            after another
    subprogram_table int32, (s, 3)          each one's (offset in subprograms, length,
                                            offset of its constants in consts)

and whose ``op_*`` and ``family_*`` members list the ops and families of the
sub-programs too. Each sub-program is validated as a packed program is
(``Program.unpack``), and counts towards the limits on instructions and workspace.

All numbers are little-endian. Format version 1 had one member ``fingerprint`` (unicode,
shape ()), a hash of the whole op table, instead of the three ``op_*`` members; such a
file loads if its table is listed in ``_ops.COMPATIBLE_FINGERPRINTS``. A file of
version 2 or 3 loads as long as every op and family it uses is defined as when it was
written, whatever ops and families this tapejit gained since.

:func:`load_tape` checks everything before a :class:`~tapejit.Tape` exists, cheapest
first, so that what it allocates and inflates is bounded by limits rather than by what a
file declares: the archive, the member names and the format version; every member's
``.npy`` header, reading only its first bytes (dtype, shape, memory order and that the
declared size matches the bytes the archive holds); the definitions of the ops and
families the file uses (version 1: the op-table fingerprint); the declared counts against
each other (``args``, ``sizes``, ``strides``, ``attr_offsets`` have a row per opcode, and
``attrs`` at most as many entries as the families' attributes; the shape lists are at most
``1 + 32`` entries per value, and a few more) and against the limits on instructions,
constants and workspace elements; then ``sizes`` and the workspace per point it
implies; only then the other members' data, the shapes, and finally the arrays
themselves through the same check every Tape goes through (``check_tape_arrays``). Any
problem raises :class:`~tapejit.TapeFormatError` naming it (and a limit, how to raise
it).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import sys
import tokenize
import zipfile
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from . import _ops
from ._atomic import replacing
from ._fam_loop import scratch_elements
from ._program import FAMILIES, FIRST_FAMILY, N_CONSTS, Family, Program, Subprogram
from ._tape import Tape
from ._validate import TapeFormatError
from ._version import __version__

#: Format version written by :func:`save_tape` for a tape with family instructions (one
#: without is written in version 2); :func:`load_tape` reads versions 1..this.
FORMAT_VERSION = 4
#: Format version of a tape with family instructions and no sub-programs.
_FAMILY_VERSION = 3
#: Format version of a tape without family instructions.
_PLAIN_VERSION = 2

_MAX_NDIM = 32  # of a recorded argument or output shape
_MAX_TEXT = 4096  # characters of a name or version string
# Deflate cannot compress better than about 1032:1; a member claiming more is a lie.
_MAX_RATIO = 1100
_HEAD_MAX = 16 + 10_000  # magic, length and numpy's largest header by default
#: Default limit on the bytes of arrays in a file (:func:`load_tape`'s ``max_bytes``).
MAX_BYTES = 1 << 32
#: Default limits of :func:`load_tape` (``max_elements``, ``max_instructions``,
#: ``max_consts``): generous for real tapes, which have at most a few million elements.
MAX_ELEMENTS = 10**8
MAX_INSTRUCTIONS = 10**7
MAX_CONSTS = 10**7
# Shapes without elements (a zero-size argument) an encoded shape list may hold beyond
# one per value: this bounds its length before it is decoded.
_EMPTY_SHAPES = 1024

# member -> (dtype string, ndim, second axis or None); "U" is any little-endian unicode
_COMMON: dict[str, tuple[str, int, int | None]] = {
    "format_version": ("<i8", 0, None),
    "tapejit_version": ("U", 0, None),
    "name": ("U", 0, None),
    "opcodes": ("|u1", 1, None),
    "args": ("<i4", 2, 3),
    "sizes": ("<i4", 1, None),
    "strides": ("<i4", 2, 3),
    "consts": ("<f8", 1, None),
    "inputs": ("<i4", 1, None),
    "params": ("<i4", 1, None),
    "outputs": ("<i4", 1, None),
    "guards": ("<i4", 2, 2),
    "input_shapes": ("<i8", 1, None),
    "output_shapes": ("<i8", 1, None),
}
_OPS_V2: dict[str, tuple[str, int, int | None]] = {
    "op_codes": ("|u1", 1, None), "op_names": ("U", 1, None), "op_hashes": ("U", 1, None),
}
_FAMILY_MEMBERS: dict[str, tuple[str, int, int | None]] = {
    "family_codes": ("|u1", 1, None), "family_names": ("U", 1, None),
    "family_attrs": ("U", 1, None), "family_hashes": ("U", 1, None),
}
# The members that say which ops (and families) the file uses, and what they meant, per
# format version.
_OP_MEMBERS: dict[int, dict[str, tuple[str, int, int | None]]] = {
    1: {"fingerprint": ("U", 0, None)},
    2: _OPS_V2,
    3: {**_OPS_V2, **_FAMILY_MEMBERS},
    4: {**_OPS_V2, **_FAMILY_MEMBERS},
}
# The attribute section of family instructions (format version 3).
_ATTR_MEMBERS: dict[str, tuple[str, int, int | None]] = {
    "attrs": ("<i4", 1, None), "attr_offsets": ("<i4", 1, None),
}
# The sub-programs (format version 4).
_SUB_MEMBERS: dict[str, tuple[str, int, int | None]] = {
    "subprograms": ("<i4", 1, None), "subprogram_table": ("<i4", 2, 3),
}
#: Every member of a file of each format version.
_SPEC: dict[int, dict[str, tuple[str, int, int | None]]] = {
    v: {**_COMMON, **ops, **(_ATTR_MEMBERS if v >= 3 else {}),
        **(_SUB_MEMBERS if v >= 4 else {})}
    for v, ops in _OP_MEMBERS.items()
}
_MAX_OPS = 255  # entries of op_codes: opcodes are uint8


# ---------------------------------------------------------------------------------------
# shapes <-> int arrays
# ---------------------------------------------------------------------------------------
def _encode_shapes(shapes: tuple[tuple[int, ...], ...]) -> np.ndarray:
    flat: list[int] = []
    for s in shapes:
        flat.append(len(s))
        flat.extend(int(d) for d in s)
    return np.array(flat, dtype="<i8")


def _shapes_cap(n: int) -> int:
    """Most entries the shapes of ``n`` values can take: a shape with elements holds at
    least one value and is at most ``1 + _MAX_NDIM`` entries; a few have none."""
    return (1 + _MAX_NDIM) * (n + _EMPTY_SHAPES)


def _check_shapes_length(what: str, length: int, n: int) -> None:
    if length > _shapes_cap(n):
        raise TapeFormatError(
            f"{what} has {length} entries; the shapes of {n} values take at most "
            f"{_shapes_cap(n)} (each is its number of dimensions, at most {_MAX_NDIM}, "
            "followed by its sizes)"
        )


def _decode_shapes(what: str, code: np.ndarray, n: int) -> tuple[tuple[int, ...], ...]:
    """Inverse of :func:`_encode_shapes`, checking that the sizes add up to ``n``.

    Vectorized, after its length is bounded by ``n``: a hostile code is refused in
    time proportional to its length, before any tuple is built.
    """
    c = np.asarray(code, dtype=np.int64).reshape(-1)
    length = len(c)
    _check_shapes_length(what, length, n)
    # Where each shape starts: entry i (a number of dimensions) leads to entry
    # i + 1 + c[i]. The starts are the entries reached from 0, found by pointer doubling:
    # ``reached`` holds steps 0 .. 2**k - 1 from entry 0 and ``jump`` goes 2**k steps.
    jump = np.append(np.minimum(np.arange(length) + 1 + np.clip(c, 0, _MAX_NDIM), length),
                     length)
    reached = np.zeros(length + 1, dtype=bool)
    reached[0] = True
    while jump[0] < length:
        reached[jump[reached]] = True
        jump = jump[jump]
    starts = np.flatnonzero(reached[:length])
    nd = c[starts]
    bad = (nd < 0) | (nd > _MAX_NDIM) | (starts + 1 + nd > length)
    first_bad = int(np.argmax(bad)) if bad.any() else len(starts)  # what follows: garbage
    is_dim = ~reached[:length]
    shape_of = np.cumsum(~is_dim) - 1  # shape each entry belongs to
    neg = is_dim & (c < 0) & (shape_of < first_bad)
    if neg.any():
        k = int(shape_of[np.argmax(neg)])
        dims = tuple(c[starts[k] + 1 : starts[k] + 1 + nd[k]].tolist())
        raise TapeFormatError(f"{what}: entry {k} has an invalid size {dims}")
    if first_bad < len(starts):
        k = first_bad
        raise TapeFormatError(
            f"{what}: entry {k} declares {int(nd[k])} dimensions; expected 0..{_MAX_NDIM} "
            "dimensions followed by that many sizes"
        )
    # Elements per shape, saturated at 2**31 (more than any tape holds), so no overflow.
    cap = 1 << 31
    size = np.ones(len(starts), dtype=np.int64)
    for j in range(int(nd.max(initial=0))):
        more = nd > j
        size[more] = np.minimum(size[more] * np.minimum(c[starts[more] + 1 + j], cap), cap)
    if len(starts):
        total = int(size.sum()) if size.sum(dtype=np.float64) < 2.0**62 else None
        if total != n:
            got = f"more than {cap}" if total is None or size.max() >= cap else str(total)
            raise TapeFormatError(f"{what} describe {got} values but the tape has {n}")
    vals = c.tolist()
    pairs = zip(starts.tolist(), nd.tolist(), strict=True)
    return tuple(tuple(vals[s + 1 : s + 1 + k]) for s, k in pairs)


# ---------------------------------------------------------------------------------------
# what a family means
# ---------------------------------------------------------------------------------------
_KERNELS = Path(__file__).resolve().parent / "_kernels"
# A kernel file uses the functions of the kernel files it imports (above its marker).
_KERNEL_IMPORT = re.compile(r"^from tapejit\._kernels\.(\w+) import", re.MULTILINE)
_SKIP_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}


@cache
def _file_tokens(path: str) -> str:
    """The code of a Python file without comments, blank lines and layout: rewording a
    comment changes nothing, any change of the code does."""
    with open(path, encoding="utf-8") as fh:
        toks = tokenize.generate_tokens(io.StringIO(fh.read()).readline)
        return " ".join(t.string if t.string.strip() else tokenize.tok_name[t.type]
                        for t in toks if t.type not in _SKIP_TOKENS)


def _kernel_files(kernel: str) -> list[Path]:
    """The kernel file ``kernel`` and those it imports, directly or not (sorted)."""
    todo, seen = [kernel], set()
    while todo:
        name = todo.pop()
        path = _KERNELS / f"{name}.py"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo.extend(_KERNEL_IMPORT.findall(path.read_text(encoding="utf-8")))
    return [_KERNELS / f"{name}.py" for name in sorted(seen)]


def family_fingerprint(family: Family) -> str:
    """A short hash of what ``family`` means: its opcode, name, arity, attribute names,
    bodies and routine names, the code of its kernel file (and of the kernel files that
    imports) and of the Python module of its numpy rule (``reference``: its attributes'
    meaning, sizes and checks live there).

    A tape file records it for each family it uses and is refused where one of them
    differs: a family whose code is unchanged keeps its hash whatever families are
    added or changed beside it.
    """
    h = hashlib.sha256()
    h.update(repr((family.opcode, family.name, family.arity, family.attrs, family.bodies,
                   sorted(family.rules.items()))).encode())
    files = _kernel_files(family.kernel) if family.kernel else []
    module = sys.modules.get(getattr(family.reference, "__module__", ""), None)
    if getattr(module, "__file__", None):
        files.append(Path(module.__file__))  # type: ignore[union-attr, arg-type]
    for path in files:
        h.update(f"\n{path.name}: {_file_tokens(str(path))}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------
def _family_members(opcodes: np.ndarray) -> dict[str, np.ndarray]:
    """The ``family_*`` members: each family ``opcodes`` uses, with its fingerprint."""
    codes = np.unique(opcodes[opcodes >= FIRST_FAMILY]).tolist()
    families = [FAMILIES[c] for c in codes if c in FAMILIES]
    if len(families) != len(codes):  # pragma: no cover - a Tape refuses them first
        raise ValueError("the tape uses opcodes that are not registered families")
    return {
        "family_codes": np.array([f.opcode for f in families], dtype="|u1"),
        "family_names": np.array([f.name for f in families], dtype="<U"),
        "family_attrs": np.array([",".join(f.attrs) for f in families], dtype="<U"),
        "family_hashes": np.array([family_fingerprint(f) for f in families], dtype="<U"),
    }


def _op_members(opcodes: np.ndarray) -> dict[str, np.ndarray]:
    """The ``op_*`` members: each elementwise op ``opcodes`` uses, with its definition's
    hash."""
    opcodes = np.asarray(opcodes)
    ops = [_ops.BY_CODE.get(int(c)) for c in np.unique(opcodes[opcodes < FIRST_FAMILY])]
    if None in ops:  # a hand-built tape; Tape's own check refuses it first
        raise ValueError("the tape uses opcodes that are not in the op table")
    return {
        "op_codes": np.array([op.code for op in ops], dtype="|u1"),
        "op_names": np.array([op.name for op in ops], dtype="<U"),
        "op_hashes": np.array([_ops.op_fingerprint(op) for op in ops], dtype="<U"),
    }


def _all_opcodes(opcodes: np.ndarray, subs: tuple[Subprogram, ...]) -> np.ndarray:
    """``opcodes`` and those of the sub-programs, nested ones included."""
    parts = [np.asarray(opcodes, dtype=np.int64)]
    for sub in subs:
        parts.append(_all_opcodes(sub.program.opcodes, sub.program.subprograms))
    return np.concatenate(parts)


def _sub_members(subs: tuple[Subprogram, ...]) -> dict[str, np.ndarray]:
    packed = [sub.program.pack()[0] for sub in subs]
    lengths = np.array([len(p) for p in packed], dtype=np.int64)
    table = np.stack([np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths,
                      [sub.consts_at for sub in subs]], axis=1)
    return {"subprograms": np.concatenate(packed).astype("<i4"),
            "subprogram_table": table.astype("<i4")}


def _arrays(tape: Tape) -> dict[str, np.ndarray]:
    subs = tape.subprograms
    opcodes = _all_opcodes(tape.opcodes, subs)
    families = bool((opcodes >= FIRST_FAMILY).any())
    version = FORMAT_VERSION if subs else (_FAMILY_VERSION if families else _PLAIN_VERSION)
    arrays = {
        "format_version": np.array(version, dtype="<i8"),
        "tapejit_version": np.array(str(__version__)),
        **_op_members(opcodes),
        **(_family_members(opcodes) if families else {}),
        "name": np.array(str(tape.name)),
        "opcodes": np.ascontiguousarray(tape.opcodes, dtype="|u1"),
        "args": np.ascontiguousarray(tape.args, dtype="<i4").reshape(-1, 3),
        "sizes": np.ascontiguousarray(tape.sizes, dtype="<i4"),
        "strides": np.ascontiguousarray(tape.strides, dtype="<i4").reshape(-1, 3),
        "consts": np.ascontiguousarray(tape.consts, dtype="<f8"),
        "inputs": np.ascontiguousarray(tape.inputs, dtype="<i4"),
        "params": np.ascontiguousarray(tape.params, dtype="<i4"),
        "outputs": np.ascontiguousarray(tape.outputs, dtype="<i4"),
        "guards": np.ascontiguousarray(tape.guards, dtype="<i4").reshape(-1, 2),
        "input_shapes": _encode_shapes(tape.input_shapes),
        "output_shapes": _encode_shapes(tape.output_shapes),
    }
    if families:
        arrays["attrs"] = np.ascontiguousarray(tape.attrs, dtype="<i4")
        arrays["attr_offsets"] = np.ascontiguousarray(tape.attr_offsets, dtype="<i4")
    if subs:
        arrays.update(_sub_members(subs))
    # What load_tape would reject must not be written in the first place.
    _decode_shapes("input_shapes", arrays["input_shapes"], tape.n_inputs)
    _decode_shapes("output_shapes", arrays["output_shapes"], tape.n_outputs)
    for key in ("name", "tapejit_version"):
        if len(str(arrays[key])) > _MAX_TEXT:
            raise ValueError(f"tape {key} is longer than {_MAX_TEXT} characters")
    return arrays


def save_tape(tape: Tape, path: str | os.PathLike[str] | BinaryIO) -> None:
    """Write ``tape`` to a versioned ``.npz`` file (plain arrays, no pickle).

    Parameters
    ----------
    tape : Tape
    path : str, path-like or binary file object
        Written exactly as given (no ``.npz`` is appended). A path is written atomically
        (see ``tapejit._atomic``): to a temporary file in the same directory, renamed
        over ``path`` only when complete, so on any error or a kill the previous file at
        ``path`` is untouched. A symbolic link is written through.

    Raises
    ------
    TypeError
        If ``tape`` is not a :class:`Tape`.
    ValueError
        If the tape's shapes or name cannot be stored (a hand-built tape whose
        ``input_shapes`` do not add up to ``n_inputs``, for instance).
    IsADirectoryError, FileNotFoundError
        If ``path`` is a directory or its directory does not exist (nothing is written).
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"save_tape needs a tapejit.Tape; got {type(tape).__name__}")
    arrays = _arrays(tape)
    if hasattr(path, "write"):
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return
    with replacing(path) as (tmp,), open(tmp, "wb") as fh:  # type: ignore[arg-type]
        np.savez(fh, **arrays)


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
class _Header(NamedTuple):
    """A member's ``.npy`` header, checked: where its data starts and what it holds."""

    info: zipfile.ZipInfo
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # bytes of magic and header before the data


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                 spec: dict[str, tuple[str, int, int | None]]) -> _Header:
    """A member's ``.npy`` header, checked against ``spec`` (of its format version) and
    against the size the archive declares. Only the first bytes of the member are
    inflated."""
    if info.flag_bits & 0x1:
        raise TapeFormatError(f"member {key!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise TapeFormatError(
            f"member {key!r} uses zip compression method {info.compress_type}; "
            "expected stored or deflated"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise TapeFormatError(f"member {key!r}: stored sizes disagree (corrupt archive)")
    if info.file_size > _MAX_RATIO * info.compress_size + 4096:
        raise TapeFormatError(
            f"member {key!r} claims {info.file_size} bytes from {info.compress_size} "
            "compressed bytes (corrupt or hostile archive)"
        )
    with zf.open(info) as fp:
        head = io.BytesIO(fp.read(min(info.file_size, _HEAD_MAX)))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise TapeFormatError(f"unsupported .npy format version {version}")
    except Exception as exc:  # numpy's ValueError/EOFError, or ours
        raise TapeFormatError(f"member {key!r} has no valid .npy header: {exc}") from None
    if dtype.hasobject:
        raise TapeFormatError(f"member {key!r} is an object array; tape files hold none")
    _check_member(key, shape, dtype, fortran, spec)
    shape = tuple(int(d) for d in shape)
    offset = head.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise TapeFormatError(
            f"member {key!r} declares shape {shape} of {dtype.str} ({nbytes} bytes) but "
            f"holds {info.file_size - offset} bytes of data"
        )
    return _Header(info, key, shape, dtype, offset)


def _read_data(zf: zipfile.ZipFile, h: _Header) -> np.ndarray:
    """The array of a member whose header :func:`_read_header` checked."""
    out = np.empty(math.prod(h.shape), dtype=h.dtype)
    buf = memoryview(out.view(np.uint8).reshape(-1))
    with zf.open(h.info) as fp:
        if len(fp.read(h.offset)) != h.offset:
            raise TapeFormatError(f"member {h.key!r} is truncated")
        got = 0
        while got < len(buf):
            k = fp.readinto(buf[got:])
            if not k:
                raise TapeFormatError(f"member {h.key!r} is truncated")
            got += k
        if fp.read(1):  # also makes zipfile check the CRC at the end of the member
            raise TapeFormatError(f"member {h.key!r} has data after its array")
    return out.reshape(h.shape)


def _check_member(key: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool,
                  spec: dict[str, tuple[str, int, int | None]]) -> None:
    want, ndim, cols = spec[key]
    if want == "U":
        ok = dtype.str.startswith("<U") and 4 <= dtype.itemsize <= 4 * _MAX_TEXT
        want_txt = f"a unicode string of at most {_MAX_TEXT} characters"
    else:
        ok = dtype.str == want
        want_txt = np.dtype(want).name + ("" if want == "|u1" else " (little-endian)")
    if not ok:
        raise TapeFormatError(f"member {key!r} must be {want_txt}; got dtype {dtype.str}")
    if len(shape) != ndim or (cols is not None and shape[1] != cols):
        expect = "()" if ndim == 0 else ("(n,)" if ndim == 1 else f"(n, {cols})")
        raise TapeFormatError(f"member {key!r} must have shape {expect}; got {shape}")
    if fortran and ndim > 1:
        raise TapeFormatError(f"member {key!r} must be stored in C order")


# ---------------------------------------------------------------------------------------
# resource limits
# ---------------------------------------------------------------------------------------
class _Limits(NamedTuple):
    elements: int
    instructions: int
    consts: int


# keyword -> (environment variable, default)
_LIMITS = {
    "max_elements": ("TAPEJIT_MAX_ELEMENTS", MAX_ELEMENTS),
    "max_instructions": ("TAPEJIT_MAX_INSTRUCTIONS", MAX_INSTRUCTIONS),
    "max_consts": ("TAPEJIT_MAX_CONSTS", MAX_CONSTS),
}


def _limit(keyword: str, value: object) -> int:
    """The limit ``keyword`` given as ``value``, else its environment variable (read now),
    else its default."""
    var, default = _LIMITS[keyword]
    if value is None:
        text = os.environ.get(var, "").strip()
        if not text:
            return default
        num: float | None
        try:
            num = int(text)
        except ValueError:
            try:
                num = float(text)  # 1e9
            except ValueError:
                num = None
        if isinstance(num, float) and not (math.isfinite(num) and num == int(num)):
            num = None  # inf, nan, 1.5
        if num is None or num < 0:
            raise ValueError(
                f"environment variable {var}={text!r} is not a limit: expected a whole "
                f"number >= 0 such as {default} or 1e9"
            )
        return int(num)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{keyword} must be an integer or None; got {value!r}")
    if value < 0:
        raise ValueError(f"{keyword} must be >= 0; got {value}")
    return int(value)


def _too_big(what: str, keyword: str, limit: int) -> TapeFormatError:
    var = _LIMITS[keyword][0]
    return TapeFormatError(
        f"{what}, more than {keyword}={limit}; if the file is trusted, raise the limit "
        f"with tapejit.load(..., {keyword}=N) or the environment variable {var}=N (which "
        "the tapejit command uses too)"
    )


def _check_counts(h: dict[str, _Header], lim: _Limits) -> None:
    """The counts the headers declare, against each other and the limits: this bounds
    every member's size before any member's data is read."""
    n = h["opcodes"].shape[0]
    if n > lim.instructions:
        raise _too_big(f"the tape has {n} instructions", "max_instructions", lim.instructions)
    rows = [("args", (n, 3)), ("sizes", (n,)), ("strides", (n, 3))]
    if "attr_offsets" in h:
        rows.append(("attr_offsets", (n,)))
    for key, shape in rows:
        if h[key].shape != shape:
            raise TapeFormatError(
                f"{key} must have shape {shape} for {n} opcodes; got {h[key].shape}"
            )
    if "attrs" in h:  # every attribute is read by an instruction (check_tape_arrays)
        most = n * max((len(f.attrs) for f in FAMILIES.values()), default=0)
        if h["attrs"].shape[0] > most:
            raise TapeFormatError(f"the tape has {h['attrs'].shape[0]} attributes; its {n} "
                                  f"instructions read at most {most}")
    nc = h["consts"].shape[0]
    if nc > lim.consts:
        raise _too_big(f"the tape has {nc} constants", "max_consts", lim.consts)
    n_guards = h["guards"].shape[0]
    if n_guards > lim.instructions:  # one per recorded branch decision
        raise _too_big(f"the tape has {n_guards} guards", "max_instructions", lim.instructions)
    n_out = h["outputs"].shape[0]
    if n_out > lim.elements:  # each is an element of every result
        raise _too_big(f"the tape has {n_out} outputs", "max_elements", lim.elements)
    n_fixed = nc + h["params"].shape[0] + h["inputs"].shape[0]
    least = _point_elements(n_fixed, n)  # every instruction has at least one element
    if least > lim.elements:
        raise _too_big(f"the tape needs at least {least} workspace elements per point",
                       "max_elements", lim.elements)
    for key, of in (("input_shapes", "inputs"), ("output_shapes", "outputs")):
        _check_shapes_length(key, h[key].shape[0], h[of].shape[0])


def _point_elements(n_fixed: int, n_results: int) -> int:
    """Workspace floats a point needs (``Tape._point_floats``): values, tangents and
    adjoints of the ``n_fixed + n_results`` slots, less what the fixed slots skip."""
    return 5 * (n_fixed + n_results) - 3 * n_fixed


def _check_workspace(sizes: np.ndarray, n_fixed: int, lim: _Limits) -> int:
    """Check the workspace a point needs; return the number of result elements."""
    # Sizes below 1 are refused later (check_tape_arrays); counted as 1 here, so that
    # negative sizes cannot cancel huge ones.
    n_results = int(np.maximum(sizes, 1).sum(dtype=np.int64))
    need = _point_elements(n_fixed, n_results)
    if need > lim.elements:
        raise _too_big(f"the tape needs {need} workspace elements per point "
                       f"({n_fixed + n_results} slots)", "max_elements", lim.elements)
    return n_results


# ---------------------------------------------------------------------------------------
# what the ops meant when the file was written
# ---------------------------------------------------------------------------------------
def _check_table(fp: str, writer: str) -> None:
    """Format version 1: one fingerprint of the whole op table that wrote the file."""
    if fp not in _ops.COMPATIBLE_FINGERPRINTS:
        raise TapeFormatError(
            f"the op table changed since this tape was written (written by tapejit "
            f"{writer!r} in format version 1 with op-table fingerprint {fp!r}, which this "
            f"tapejit {__version__} does not list as compatible): opcodes may mean "
            "something else now, so the tape is refused. Record the function again."
        )


def _check_ops(zf: zipfile.ZipFile, heads: dict[str, _Header], writer: str) -> np.ndarray:
    """Format version 2: every op the file lists must be defined as when it was written.
    Returns the listed opcodes."""
    n = heads["op_codes"].shape[0]
    if n > _MAX_OPS or heads["op_names"].shape != (n,) or heads["op_hashes"].shape != (n,):
        raise TapeFormatError(
            f"op_codes, op_names and op_hashes must have one entry per op the tape uses "
            f"(at most {_MAX_OPS}); got shapes {heads['op_codes'].shape}, "
            f"{heads['op_names'].shape}, {heads['op_hashes'].shape}"
        )
    codes = _read_data(zf, heads["op_codes"])
    names = _read_data(zf, heads["op_names"])
    hashes = _read_data(zf, heads["op_hashes"])
    if len(np.unique(codes)) != n:
        raise TapeFormatError("op_codes lists an opcode twice")
    for code, name, saved in zip(codes.tolist(), names.tolist(), hashes.tolist(), strict=True):
        op = _ops.BY_CODE.get(code)
        if op is None:
            raise TapeFormatError(
                f"the tape uses op {name!r} (opcode {code}), which this tapejit "
                f"{__version__} does not have (written by tapejit {writer!r}); load it "
                "with a tapejit that has the op"
            )
        if op.name != name:
            raise TapeFormatError(
                f"opcode {code} was op {name!r} when this tape was saved (by tapejit "
                f"{writer!r}) and is op {op.name!r} in this tapejit {__version__}, so the "
                "tape is refused. Record the function again."
            )
        if _ops.op_fingerprint(op) != saved and saved not in _ops.EQUIVALENT_FINGERPRINTS.get(
                op.name, {}):
            raise TapeFormatError(
                f"op {name!r} (opcode {code}) is defined differently than when this tape "
                f"was saved (by tapejit {writer!r}): its value or derivative formulas, or "
                "a helper they call, changed, so the tape is refused. Record the function "
                "again."
            )
    return codes


def _check_families(zf: zipfile.ZipFile, heads: dict[str, _Header], writer: str) -> np.ndarray:
    """Format version 3: every family the file lists must mean what it meant when the
    file was written. Returns the listed opcodes."""
    n = heads["family_codes"].shape[0]
    keys = ("family_names", "family_attrs", "family_hashes")
    if n > _MAX_OPS or any(heads[k].shape != (n,) for k in keys):
        raise TapeFormatError(
            f"family_codes, family_names, family_attrs and family_hashes must have one "
            f"entry per family the tape uses (at most {_MAX_OPS}); got shapes "
            + ", ".join(str(heads[k].shape) for k in ("family_codes", *keys))
        )
    codes = _read_data(zf, heads["family_codes"])
    names, attrs, hashes = (_read_data(zf, heads[k]).tolist() for k in keys)
    if len(np.unique(codes)) != n:
        raise TapeFormatError("family_codes lists an opcode twice")
    if n and codes.min() < FIRST_FAMILY:
        raise TapeFormatError(f"family_codes lists opcode {int(codes.min())}, which is not "
                              f"an instruction family's (those are {FIRST_FAMILY}..255)")
    for code, name, names_, saved in zip(codes.tolist(), names, attrs, hashes, strict=True):
        family = FAMILIES.get(code)
        if family is None:
            raise TapeFormatError(
                f"the tape uses instruction family {name!r} (opcode {code}), which this "
                f"tapejit {__version__} does not have (written by tapejit {writer!r}); load "
                "it with a tapejit that has the family"
            )
        if family.name != name:
            raise TapeFormatError(
                f"opcode {code} was instruction family {name!r} when this tape was saved "
                f"(by tapejit {writer!r}) and is family {family.name!r} in this tapejit "
                f"{__version__}, so the tape is refused. Record the function again."
            )
        if ",".join(family.attrs) != names_:
            raise TapeFormatError(
                f"instruction family {name!r} (opcode {code}) had the attributes "
                f"({names_}) when this tape was saved (by tapejit {writer!r}) and has "
                f"({', '.join(family.attrs)}) now, so the tape is refused. Record the "
                "function again."
            )
        if family_fingerprint(family) != saved and saved not in family.equivalent:
            raise TapeFormatError(
                f"instruction family {name!r} (opcode {code}) is defined differently than "
                f"when this tape was saved (by tapejit {writer!r}): its kernel routines or "
                "its Python side changed, so the tape is refused. Record the function "
                "again."
            )
    return codes


def _read_arrays(z: Any, max_bytes: int | None, lim: _Limits) -> tuple[tuple, dict[str, Any]]:
    """Everything :class:`Tape` needs, checked: ``(arrays, keyword arguments)``.

    Order: names, version, every header, the ops' definitions, the declared counts against each
    other and the limits, ``sizes`` and the workspace it implies, then the other data.
    """
    zf: zipfile.ZipFile = z.zip
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise TapeFormatError("archive has duplicate member names")
    members = {}
    for info in infos:
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        members[key] = info
    # The version first: a newer file may have other members.
    if "format_version" not in members:
        raise TapeFormatError("not a tapejit tape file: member 'format_version' is missing")
    h = _read_header(zf, members["format_version"], "format_version", _COMMON)
    version = int(_read_data(zf, h))
    if version > FORMAT_VERSION:
        raise TapeFormatError(
            f"tape file format version {version} is newer than this tapejit ({__version__}) "
            f"reads (up to {FORMAT_VERSION}); the file needs a newer tapejit"
        )
    if version < 1:
        raise TapeFormatError(f"invalid tape file format version {version}")
    spec = _SPEC[version]
    missing = [k for k in spec if k not in members]
    if missing:
        raise TapeFormatError(f"tape file is missing member(s) {', '.join(missing)}")
    extra = sorted(k for k in members if k not in spec)
    if extra:
        raise TapeFormatError(
            f"tape file has unexpected member(s) {', '.join(map(repr, extra))} for format "
            f"version {version}"
        )
    if any(not members[k].filename.endswith(".npy") for k in spec):
        raise TapeFormatError("tape file members must be .npy arrays")
    total = sum(members[k].file_size for k in spec)
    if max_bytes is not None and total > max_bytes:
        raise TapeFormatError(
            f"tape file holds {total} bytes of arrays, more than max_bytes={max_bytes}"
        )
    heads = {k: _read_header(zf, members[k], k, spec) for k in spec}
    done = {"format_version", "tapejit_version", *_OP_MEMBERS[version]}
    writer = str(_read_data(zf, heads["tapejit_version"])[()])
    if version == 1:
        _check_table(str(_read_data(zf, heads["fingerprint"])[()]), writer)
        listed = None
    else:
        listed = _check_ops(zf, heads, writer)
    if version >= 3:
        listed = np.concatenate([listed, _check_families(zf, heads, writer)])
    _check_counts(heads, lim)
    a = {"sizes": _read_data(zf, heads["sizes"])}
    n_fixed = sum(heads[k].shape[0] for k in ("consts", "params", "inputs"))
    n_results = _check_workspace(a["sizes"], n_fixed, lim)
    # A tape holds each guard (result slot, outcome 0 or 1) once: more than two per result
    # would only inflate a member that check_tape_arrays refuses anyway.
    if heads["guards"].shape[0] > 2 * n_results:
        raise TapeFormatError(f"the tape has {heads['guards'].shape[0]} guards for "
                              f"{n_results} result elements; expected at most two per result")
    # The slot layout from the small members, before the large ones are inflated.
    a.update((k, _read_data(zf, heads[k])) for k in ("params", "inputs"))
    nc = heads["consts"].shape[0]
    for key, first in (("params", nc), ("inputs", nc + len(a["params"]))):
        if not np.array_equal(a[key], first + np.arange(len(a[key]))):
            raise TapeFormatError(f"{key} must be the slots {first}..{first + len(a[key]) - 1}")
    a.update((k, _read_data(zf, heads[k])) for k in spec if k not in done and k not in a)
    if listed is not None:
        unlisted = np.setdiff1d(a["opcodes"], listed)
        if len(unlisted):
            where = "op_codes" if version < 3 else "op_codes or family_codes"
            raise TapeFormatError(f"the tape uses opcode {int(unlisted[0])}, which its "
                                  f"member {where} does not list")
    subs = _read_subprograms(a, lim, n_results) if version >= 4 else ()
    if listed is not None and subs:
        unlisted = np.setdiff1d(_all_opcodes(np.zeros(0, np.int64), subs), listed)
        if len(unlisted):
            raise TapeFormatError(f"a sub-program uses opcode {int(unlisted[0])}, which the "
                                  "members op_codes and family_codes do not list")
    input_shapes = _decode_shapes("input_shapes", a["input_shapes"], len(a["inputs"]))
    output_shapes = _decode_shapes("output_shapes", a["output_shapes"], len(a["outputs"]))
    arrays = (a["opcodes"], a["args"], a["consts"], a["inputs"], a["params"], a["outputs"])
    attrs = {k: a[k] for k in _ATTR_MEMBERS if k in a}
    return arrays, {
        **attrs,
        **({"subprograms": subs} if subs else {}),
        "input_shapes": input_shapes,
        "output_shapes": output_shapes,
        "name": str(a["name"][()]),
        "guards": a["guards"],
        "sizes": a["sizes"],
        "strides": a["strides"],
    }


def _read_subprograms(a: dict[str, Any], lim: _Limits, n_results: int
                      ) -> tuple[Subprogram, ...]:
    """The sub-programs of a version-4 file, each validated as a packed program, within
    the limits (their instructions, and their workspaces, count with the tape's)."""
    packed, table = a["subprograms"], a["subprogram_table"].astype(np.int64)
    consts = a["consts"]
    if not len(table):
        raise TapeFormatError("subprogram_table is empty: a version-4 file has sub-programs")
    out, end = [], 0
    for j, (at, length, c) in enumerate(table.tolist()):
        if at != end or length < 1 or at + length > len(packed):
            raise TapeFormatError(f"subprogram_table row {j} ({at}, {length}) does not "
                                  "follow the sub-program before it inside subprograms")
        end = at + length
        prog = np.ascontiguousarray(packed[at:end], dtype=np.int32)
        n_consts = int(prog[N_CONSTS]) if len(prog) > N_CONSTS else -1
        if c < 0 or n_consts < 0 or c + n_consts > len(consts):
            raise TapeFormatError(f"sub-program {j}: its constants at {c} are outside the "
                                  f"pool of {len(consts)}")
        try:
            program = Program.unpack(prog, consts[c : c + n_consts])
        except TapeFormatError as exc:
            raise TapeFormatError(f"sub-program {j}: {exc}") from None
        out.append(Subprogram(program, c))
    if end != len(packed):
        raise TapeFormatError(f"subprograms holds {len(packed) - end} ints after the last "
                              "sub-program")

    def totals(subs) -> tuple[int, int]:
        n_instr = elements = 0
        for sub in subs:
            p = sub.program
            i, e = totals(p.subprograms)
            n_instr += len(p) + i
            elements += (_point_elements(p.n_fixed, int(p.sizes.sum())) + e
                         + scratch_elements(p.opcodes, p.attrs, p.attr_offsets))
        return n_instr, elements

    n_instr, elements = totals(out)
    elements += scratch_elements(a["opcodes"], a["attrs"], a["attr_offsets"])
    if n_instr > lim.instructions:
        raise _too_big(f"the tape's sub-programs have {n_instr} instructions",
                       "max_instructions", lim.instructions)
    if elements > lim.elements:
        raise _too_big(f"the tape's sub-programs need {elements} workspace elements per "
                       "point", "max_elements", lim.elements)
    return tuple(out)


def _peek(path: str | os.PathLike[str] | BinaryIO, n: int) -> bytes:
    """The first ``n`` bytes of a path or file object (whose position is kept)."""
    if hasattr(path, "read"):
        pos = path.tell()  # type: ignore[union-attr]
        head = path.read(n)  # type: ignore[union-attr]
        path.seek(pos)  # type: ignore[union-attr]
        return bytes(head)
    with open(path, "rb") as fh:  # type: ignore[arg-type]
        return fh.read(n)


def load_tape(
    path: str | os.PathLike[str] | BinaryIO,
    *,
    max_bytes: int | None = MAX_BYTES,
    max_elements: int | None = None,
    max_instructions: int | None = None,
    max_consts: int | None = None,
) -> Tape:
    """Load a tape written by :meth:`Tape.save`, checking everything first.

    Before any member's data is read, every member's ``.npy`` header is read (its first
    bytes only) and the counts the headers declare are checked against each other and
    against the limits below; then ``sizes`` is read and the workspace it implies is
    checked, and only then the other members. So a file that exceeds a limit, or whose
    members do not fit together, is refused in milliseconds and megabytes whatever sizes
    it declares.

    Parameters
    ----------
    path : str, path-like or binary file object
    max_bytes : int or None
        Refuse files whose arrays hold more than this many (uncompressed) bytes; default
        4 GiB, ``None`` for no limit. Whatever the limit, no member may declare more data
        than the archive holds.
    max_elements : int or None
        Refuse tapes whose evaluation at one point needs more workspace elements (floats)
        than this: ``5 * n_slots - 3 * n_fixed``, where ``n_slots`` is the ``n_fixed``
        constants, parameters and inputs plus the elements all instructions write
        (8 bytes each; a many-point evaluation needs about this per point of a chunk).
        Also bounds the number of outputs. ``None`` (the default): the environment
        variable ``TAPEJIT_MAX_ELEMENTS`` if set, else ``MAX_ELEMENTS`` (10**8).
    max_instructions : int or None
        Refuse tapes with more instructions (or more guards) than this. ``None``: the
        environment variable ``TAPEJIT_MAX_INSTRUCTIONS`` if set, else
        ``MAX_INSTRUCTIONS`` (10**7).
    max_consts : int or None
        Refuse tapes with more constants than this. ``None``: the environment variable
        ``TAPEJIT_MAX_CONSTS`` if set, else ``MAX_CONSTS`` (10**7).

    The environment variables are read at each call and take a whole number (``1e9``
    is accepted); a keyword beats its variable. The ``tapejit inspect`` and
    ``tapejit eval`` commands load through this function, so the variables set their
    limits too.

    Returns
    -------
    Tape
        Evaluates bit for bit as the tape that was saved, by this version of tapejit (a
        file from another tapejit whose ops it uses are defined alike loads too; results
        of ops whose implementation changed since, such as ``sin``, ``cos`` and ``log``,
        may then differ in the last bit).

    Raises
    ------
    TapeFormatError
        For every problem with the file: unreadable, not a zip/npz archive, truncated or
        corrupt, missing or unexpected members, wrong dtypes or shapes, object arrays,
        members whose lengths disagree, a limit exceeded (the message names the limit
        and how to raise it), a newer format version, an op the file uses that is not
        defined as when the file was written (the message names it; format version 1:
        an op table not listed in ``_ops.COMPATIBLE_FINGERPRINTS``), out-of-range or
        forward slot references,
        unknown opcodes. The message names the file and what is wrong.
    ValueError, TypeError
        If a limit keyword or environment variable is not a whole number >= 0 (checked
        before the file is opened).
    """
    lim = _Limits(_limit("max_elements", max_elements),
                  _limit("max_instructions", max_instructions),
                  _limit("max_consts", max_consts))
    where = f"tape file {os.fspath(path)!r}" if not hasattr(path, "read") else "tape file"
    try:
        magic = _peek(path, 6)
        if magic.startswith(b"\x93NUMPY"):
            raise TapeFormatError(
                f"{where} is not a tapejit tape (a .npz archive): it holds a single .npy array"
            )
        if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise TapeFormatError(
                f"{where} is not a tapejit tape: not a .npz (zip) archive"
                + (" (the file is empty)" if not magic else "")
            )
        z = np.load(path, allow_pickle=False)  # type: ignore[arg-type]
    except TapeFormatError:
        raise
    except Exception as exc:  # missing, unreadable, a directory, a broken zip directory
        raise TapeFormatError(f"cannot read {where}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):  # pragma: no cover - magic checked above
        raise TapeFormatError(f"{where} is not a tapejit tape (a .npz archive)")
    try:
        with z:
            arrays, kwargs = _read_arrays(z, max_bytes, lim)
    except TapeFormatError as exc:
        raise TapeFormatError(f"{where}: {exc}") from None
    except Exception as exc:  # zlib, zipfile, numpy header errors of a damaged archive
        raise TapeFormatError(f"{where} is corrupt: {type(exc).__name__}: {exc}") from exc
    try:
        return Tape(*arrays, **kwargs)  # check_tape_arrays: opcodes, slot references
    except TapeFormatError as exc:
        raise TapeFormatError(f"{where}: {exc}") from None
