"""Saving and loading tapes: a versioned ``.npz`` of plain arrays, validated on load.

A tape file is a zip archive written by :func:`numpy.savez` (no pickle, no object
arrays) with exactly these members (format version 1)::

    format_version   int64, shape ()        1 (a newer file needs a newer tapejit)
    tapejit_version  unicode, shape ()      version of tapejit that wrote the file
    fingerprint      unicode, shape ()      tapejit._ops.fingerprint() of the writer
    name             unicode, shape ()      the tape's name
    opcodes          uint8, (n,)
    args             int32, (n, 3)          first operand slots, unused columns 0
    sizes            int32, (n,)            elements per instruction (1: scalar)
    strides          int32, (n, 3)          operand strides of block instructions
    consts           float64, (nc,)
    inputs           int32, (n_inputs,)     slots (see Tape)
    params           int32, (n_params,)
    outputs          int32, (n_outputs,)
    guards           int32, (n_guards, 2)   recorded branch decisions (slot, outcome 0/1)
    input_shapes     int64, (k,)            shapes, each as ndim followed by its dims
    output_shapes    int64, (k,)

All numbers are little-endian. :func:`load_tape` checks everything before a
:class:`~tapejit.Tape` exists: the archive, the member names, each member's ``.npy``
header (dtype, shape, memory order and that the declared size matches the bytes the
archive holds, so nothing absurd is allocated), the format version, the op-table
fingerprint, the shapes, and finally the arrays themselves through the same check every
Tape goes through (``check_tape_arrays``). Any problem raises
:class:`~tapejit.TapeFormatError` naming it.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
from typing import Any, BinaryIO

import numpy as np

from ._atomic import replacing
from ._ops import COMPATIBLE_FINGERPRINTS, fingerprint
from ._tape import Tape
from ._validate import TapeFormatError
from ._version import __version__

#: Format version written by :func:`save_tape`; :func:`load_tape` reads versions 1..this.
FORMAT_VERSION = 1

_MAX_NDIM = 32  # of a recorded argument or output shape
_MAX_TEXT = 4096  # characters of a name or version string
# Deflate cannot compress better than about 1032:1; a member claiming more is a lie.
_MAX_RATIO = 1100
_HEAD_MAX = 16 + 10_000  # magic, length and numpy's largest header by default
#: Default limit on the bytes of arrays in a file (:func:`load_tape`'s ``max_bytes``).
MAX_BYTES = 1 << 32

# member -> (dtype string, ndim, second axis or None); "U" is any little-endian unicode
_SPEC: dict[str, tuple[str, int, int | None]] = {
    "format_version": ("<i8", 0, None),
    "tapejit_version": ("U", 0, None),
    "fingerprint": ("U", 0, None),
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


# ---------------------------------------------------------------------------------------
# shapes <-> int arrays
# ---------------------------------------------------------------------------------------
def _encode_shapes(shapes: tuple[tuple[int, ...], ...]) -> np.ndarray:
    flat: list[int] = []
    for s in shapes:
        flat.append(len(s))
        flat.extend(int(d) for d in s)
    return np.array(flat, dtype="<i8")


def _decode_shapes(what: str, code: np.ndarray, n: int) -> tuple[tuple[int, ...], ...]:
    """Inverse of :func:`_encode_shapes`, checking that the sizes add up to ``n``."""
    vals = code.tolist()
    shapes: list[tuple[int, ...]] = []
    i, total = 0, 0
    while i < len(vals):
        nd = vals[i]
        if not 0 <= nd <= _MAX_NDIM or i + 1 + nd > len(vals):
            raise TapeFormatError(
                f"{what}: entry {len(shapes)} declares {nd} dimensions; expected 0..{_MAX_NDIM} "
                "dimensions followed by that many sizes"
            )
        dims = tuple(vals[i + 1 : i + 1 + nd])
        if any(d < 0 for d in dims):
            raise TapeFormatError(f"{what}: entry {len(shapes)} has an invalid size {dims}")
        size = 1
        for d in dims:
            size *= d
        total += size
        shapes.append(dims)
        i += 1 + nd
    if shapes and total != n:
        raise TapeFormatError(
            f"{what} describe {total} values but the tape has {n}"
        )
    return tuple(shapes)


# ---------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------
def _arrays(tape: Tape) -> dict[str, np.ndarray]:
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype="<i8"),
        "tapejit_version": np.array(str(__version__)),
        "fingerprint": np.array(fingerprint()),
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
def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    """One member as an array, its ``.npy`` header checked against the spec and against
    the size the archive declares before the data is read."""
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
        first = fp.read(min(info.file_size, _HEAD_MAX))
        head = io.BytesIO(first)
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
        _check_member(key, shape, dtype, fortran)
        n_items = 1
        for d in shape:
            n_items *= int(d)
        hlen = head.tell()
        nbytes = n_items * dtype.itemsize
        if hlen + nbytes != info.file_size:
            raise TapeFormatError(
                f"member {key!r} declares shape {shape} of {dtype.str} ({nbytes} bytes) but "
                f"holds {info.file_size - hlen} bytes of data"
            )
        out = np.empty(n_items, dtype=dtype)
        buf = memoryview(out.view(np.uint8).reshape(-1))
        got = min(nbytes, len(first) - hlen)
        buf[:got] = first[hlen : hlen + got]
        while got < nbytes:
            k = fp.readinto(buf[got:])
            if not k:
                raise TapeFormatError(f"member {key!r} is truncated")
            got += k
        if fp.read(1):  # also makes zipfile check the CRC at the end of the member
            raise TapeFormatError(f"member {key!r} has data after its array")
    return out.reshape(shape)


def _check_member(key: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
    want, ndim, cols = _SPEC[key]
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


@functools.cache
def _fingerprint() -> str:
    return fingerprint()


def _read_arrays(z: Any, max_bytes: int | None) -> tuple[tuple, dict[str, Any]]:
    """Everything :class:`Tape` needs, checked: ``(arrays, keyword arguments)``."""
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
    version = int(_read_member(zf, members["format_version"], "format_version"))
    if version > FORMAT_VERSION:
        raise TapeFormatError(
            f"tape file format version {version} is newer than this tapejit ({__version__}) "
            f"reads (up to {FORMAT_VERSION}); the file needs a newer tapejit"
        )
    if version < 1:
        raise TapeFormatError(f"invalid tape file format version {version}")
    missing = [k for k in _SPEC if k not in members]
    if missing:
        raise TapeFormatError(f"tape file is missing member(s) {', '.join(missing)}")
    extra = sorted(k for k in members if k not in _SPEC)
    if extra:
        raise TapeFormatError(
            f"tape file has unexpected member(s) {', '.join(map(repr, extra))} for format "
            f"version {version}"
        )
    if any(not members[k].filename.endswith(".npy") for k in _SPEC):
        raise TapeFormatError("tape file members must be .npy arrays")
    total = sum(members[k].file_size for k in _SPEC)
    if max_bytes is not None and total > max_bytes:
        raise TapeFormatError(
            f"tape file holds {total} bytes of arrays, more than max_bytes={max_bytes}"
        )
    z_ = {k: _read_member(zf, members[k], k) for k in ("fingerprint", "tapejit_version")}
    fp = str(z_["fingerprint"][()])
    if fp != _fingerprint() and fp not in COMPATIBLE_FINGERPRINTS:
        raise TapeFormatError(
            f"the op table changed since this tape was written (written by tapejit "
            f"{str(z_['tapejit_version'][()])!r} with op-table fingerprint {fp!r}; this "
            f"tapejit {__version__} has {_fingerprint()!r}): opcodes may mean something "
            "else now, so the tape is refused. Record the function again."
        )
    a = {k: _read_member(zf, members[k], k) for k in _SPEC if k not in z_}
    input_shapes = _decode_shapes("input_shapes", a["input_shapes"], len(a["inputs"]))
    output_shapes = _decode_shapes("output_shapes", a["output_shapes"], len(a["outputs"]))
    arrays = (a["opcodes"], a["args"], a["consts"], a["inputs"], a["params"], a["outputs"])
    return arrays, {
        "input_shapes": input_shapes,
        "output_shapes": output_shapes,
        "name": str(a["name"][()]),
        "guards": a["guards"],
        "sizes": a["sizes"],
        "strides": a["strides"],
    }


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
    path: str | os.PathLike[str] | BinaryIO, *, max_bytes: int | None = MAX_BYTES
) -> Tape:
    """Load a tape written by :meth:`Tape.save`, checking everything first.

    Parameters
    ----------
    path : str, path-like or binary file object
    max_bytes : int or None
        Refuse files whose arrays hold more than this many (uncompressed) bytes; default
        4 GiB (about 300 million instructions), ``None`` for no limit. Whatever the
        limit, no member may declare more data than the archive holds, and the sizes are
        checked before anything is allocated.

    Returns
    -------
    Tape
        Evaluates bit for bit as the tape that was saved, by this version of tapejit (a
        file from an earlier tapejit whose op table is compatible loads too; results of
        ops whose implementation changed since, such as ``sin``, ``cos`` and ``log``,
        may then differ in the last bit).

    Raises
    ------
    TapeFormatError
        For every problem with the file: unreadable, not a zip/npz archive, truncated or
        corrupt, missing or unexpected members, wrong dtypes or shapes, object arrays,
        a newer format version, an op table that changed since the file was written
        (and is not listed as compatible: ``_ops.COMPATIBLE_FINGERPRINTS``),
        out-of-range or forward slot references, unknown opcodes. The message names the
        file and what is wrong.
    """
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
            arrays, kwargs = _read_arrays(z, max_bytes)
    except TapeFormatError as exc:
        raise TapeFormatError(f"{where}: {exc}") from None
    except Exception as exc:  # zlib, zipfile, numpy header errors of a damaged archive
        raise TapeFormatError(f"{where} is corrupt: {type(exc).__name__}: {exc}") from exc
    try:
        return Tape(*arrays, **kwargs)  # check_tape_arrays: opcodes, slot references
    except TapeFormatError as exc:
        raise TapeFormatError(f"{where}: {exc}") from None
