"""Fuzz harness of issue #17: hostile tape files, outputs that are inputs, writers killed
midway and tampered jit bundles, run in child processes with an address-space limit.

Families: each is a function ``(seed, n_cases, start=0) -> iterator of Case`` that sets up
once (tapes, files, a compiled ``@njit`` caller) and then yields cases ``start..n_cases-1``.
Case ``i`` draws everything from ``numpy.random.default_rng([seed, i])``, so it can be
replayed alone.

* ``files``: valid tape files mutated (integer entries, dtypes, shapes, missing, extra and
  duplicate members, pickles, truncation, bit flips, random bytes, zip bombs, lying
  ``.npy`` headers and zip sizes, one block of 2**26..2**31 elements, millions of shape
  entries) and given to ``tapejit.load``; a tape that loads is checked against the
  pure-numpy reference interpreter (``tapejit._show.interpret``) at random points.
* ``cli``: ``python -m tapejit inspect FILE`` and ``eval FILE`` on such files.
* ``paths``: ``evaluate_file``, ``tapejit eval --out`` and ``Tape.save`` with an output
  that is an input (same path, path-like, symlink, hard link, relative spelling, the
  params file, a ``(values, grads)`` pair), calls that fail with an existing output, and
  controls that must succeed.
* ``sigkill``: ``Tape.save`` of a 2*10**6-instruction tape and ``evaluate_file`` over
  2*10**6 points, in a forked process killed with SIGKILL at a random moment over a valid
  previous file; then a successful call into the same directory.
* ``bundles``: ``jit_value_and_grad`` and ``jit_value``, from Python and from one
  ``@numba.njit`` function, with ``jit_args`` bundles whose arrays are replaced (other
  tapes', smaller, larger, empty, garbage, other dtypes, other flags), scratch arrays with
  canary tails.

Outcomes: ``rejected`` (the documented exception; for ``paths`` and ``sigkill``: refused,
or killed with the previous file intact), ``loaded`` (accepted, right results),
``wrong`` (wrong results, a changed input or previous file, an overwritten canary, a
pickle that ran, temporary files left), ``other`` (an undocumented exception),
``memory`` (MemoryError), and from the parent: ``crash`` (the child died of a signal) and
``hang`` (the case ran past its time limit).

The child writes a JSON line before and after each case, so the parent knows which case
a dead or stuck child was running; it records that case and starts a new child at the
next one. Usage (from the repository root)::

    python tests/_fuzz.py --report [--cases 3000] [--seed 17] [--family files ...]
    python tests/_fuzz.py --replay files:123 [--seed 17]

``--cases`` (and ``TAPEJIT_FUZZ_CASES`` for ``tests/test_fuzz.py``) is the number of
``files`` cases; the other families scale with it. ``TAPEJIT_FUZZ_SEED`` sets the seed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MEM_LIMIT = 3 << 30  # address space of every child (numba and llvmlite need ~1 GiB)
DEFAULT_SEED = 17
DEFAULT_CASES = {"files": 300, "cli": 8, "paths": 42, "sigkill": 12, "bundles": 150}
CASE_TIMEOUT = {"files": 10, "cli": 90, "paths": 30, "sigkill": 30, "bundles": 10}
SETUP_TIMEOUT = 600  # a cold kernel cache takes minutes to compile
CLI_TIMEOUT = 60
INTERPRET_MAX = 200_000  # slots the reference interpreter checks (about a second)
OUTCOMES = ("rejected", "loaded", "crash", "hang", "memory", "wrong", "other")
FAILURES = ("crash", "hang", "memory", "wrong", "other")
HERE = os.path.abspath(__file__)


class Verdict(NamedTuple):
    outcome: str
    detail: str
    extra: dict | None = None


@dataclass
class Case:
    index: int
    kind: str
    run: Callable[[], Verdict]


def case_counts(files: int | None = None) -> dict[str, int]:
    """Cases per family: the defaults, scaled so that ``files`` has ``files`` cases."""
    if files is None:
        files = int(os.environ.get("TAPEJIT_FUZZ_CASES", DEFAULT_CASES["files"]))
    scale = files / DEFAULT_CASES["files"]
    return {k: files if k == "files" else max(n, round(n * scale))
            for k, n in DEFAULT_CASES.items()}


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def _short(exc: BaseException, n: int = 160) -> str:
    return f"{type(exc).__name__}: {str(exc)[:n]}"


def _ran_out_of_memory(exc: BaseException | None) -> bool:
    """Whether a MemoryError is behind ``exc`` (a loader may wrap it in its own error)."""
    while exc is not None:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _peak_mib(reset: bool = False) -> float | None:
    """This process's peak resident memory since the last reset (Linux), in MiB."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return None
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def _worst(verdicts: list[Verdict]) -> Verdict:
    order = ("rejected", "loaded", "memory", "other", "wrong")
    return max(verdicts, key=lambda v: order.index(v.outcome))


def _close(a: Any, b: Any, rtol: float = 1e-9) -> bool:
    """Equal within ``rtol`` (1e-12 of the largest value absolutely); NaN equals NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0)))
    with np.errstate(all="ignore"):
        near = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)) + 1e-12 * scale
    return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b)) | near))


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _write(path: str | os.PathLike[str], data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _snapshot(d: str) -> dict[str, str]:
    """Every entry under ``d``: a hash of a file's bytes, a link's target, or "dir"."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, d)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(_read(p)).hexdigest()
    return out


def _diff(before: dict[str, str], after: dict[str, str], allowed=()) -> str:
    changed = sorted(k for k in before if k in after and before[k] != after[k]
                     and k not in allowed)
    new = sorted(set(after) - set(before) - set(allowed))
    gone = sorted(set(before) - set(after))
    parts = [f"{what} {', '.join(names)}" for what, names in
             (("changed", changed), ("new", new), ("removed", gone)) if names]
    return "; ".join(parts)


@contextlib.contextmanager
def _case_dir(parent: str, i: int) -> Iterator[str]:
    d = os.path.join(parent, f"case{i}")
    os.makedirs(d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _cli(*args: str) -> tuple[int | None, str]:
    """Run ``python -m tapejit ARGS`` (the child's limits apply): (exit code or None for a
    timeout, stderr)."""
    try:
        p = subprocess.run([sys.executable, "-m", "tapejit", *args], capture_output=True,
                           text=True, timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, ""
    return p.returncode, p.stderr


def _cli_verdict(rc: int | None, err: str) -> Verdict | None:
    """The verdict of a command that died, hung, ran out of memory or printed a
    traceback; None otherwise."""
    tail = " | ".join(err.strip().split("\n")[-2:])[-300:]
    if rc is None:
        return Verdict("hang", f"no exit within {CLI_TIMEOUT} s")
    if rc < 0:
        return Verdict("crash", f"killed by {signal.Signals(-rc).name}: {tail}")
    if "MemoryError" in err:
        return Verdict("memory", tail)
    if "Traceback" in err:
        return Verdict("other", f"exit {rc} with a traceback: {tail}")
    return None


# ---------------------------------------------------------------------------------------
# tapes
# ---------------------------------------------------------------------------------------
def _scalar(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def _blocks(x, p):
    return p[0] * np.sum(np.sin(x * p[1])) + np.hypot(x[0], p[2])


def _branchy(x):
    if x[0] > 0.0:
        return x[0] ** 2 * x[1], np.exp(-x) * x[1], np.cos(x[2])
    return -x[1], x, x[0]


def _guarded(x):
    if x[0] > 0.0:
        return np.sum(np.exp(x) * x[0])
    return -x[1]


def _consts(x):
    return np.sum(np.linspace(-1.0, 1.0, 40) * x[0]) + np.maximum(x[1], 0.5)


def base_tapes() -> list[tuple[Any, np.ndarray | None]]:
    """Small valid tapes and parameters: scalar ops, blocks with parameters, a guard with
    several outputs, a constant pool."""
    import tapejit

    return [
        (tapejit.record(_scalar, 2.0, 5.0), None),
        (tapejit.record(_blocks, np.ones(4), np.ones(3), argnums=0), np.array([0.5, 1.5, 2.0])),
        (tapejit.record(_branchy, np.ones(3)), None),
        (tapejit.record(_consts, np.ones(2)), None),
    ]


def _reference(tape, x: np.ndarray, p: np.ndarray | None):
    """Outputs, guard validity and (one output) gradient from the reference interpreter."""
    from tapejit._show import interpret

    s = interpret(tape, x, p)
    ok = all((s.values[q] != 0.0) == (o != 0) for q, o in tape.guards.tolist())
    grad = s.adjoints[tape.inputs] if tape.n_outputs == 1 else None
    return s.values[tape.outputs], ok, grad


def _compare(what: str, got, ok_got, want, ok_want) -> str | None:
    """Why a masked result disagrees with the reference, or None."""
    if bool(ok_got) != bool(ok_want):
        return f"{what}: guard verdict {bool(ok_got)}, reference {bool(ok_want)}"
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    if not ok_want:
        return None if np.isnan(got).all() else f"{what}: not NaN outside the branches"
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    return None if _close(got, want) else f"{what}: {got[:4]} != reference {want[:4]}"


def _evaluates_right(tape, rng: np.random.Generator, oracle=None) -> Verdict:
    """Evaluate a loaded tape at random points and compare with the reference: forward and
    (one output) value_and_grad, one point and a batch; ``oracle(x)`` replaces the
    interpreter for tapes too large for it (forward at one point only)."""
    import tapejit

    n_in, n_par, n_out = tape.n_inputs, tape.n_params, tape.n_outputs
    X = rng.uniform(0.2, 2.0, (3, n_in)) * np.where(rng.random((3, 1)) < 0.25, -1.0, 1.0)
    p = rng.uniform(0.2, 2.0, n_par) if n_par else None
    try:
        if oracle is not None:
            y, _ = tape.forward(X[0], p, check="mask")
            bad = _compare("forward", y, True, oracle(X[0]), True)
            return Verdict("wrong", bad) if bad else Verdict("loaded", "closed form")
        if tape.n_slots > INTERPRET_MAX:
            tape.forward(X[0], p, check="mask")
            return Verdict("loaded", f"{tape.n_slots} slots: evaluated, not compared")
        refs = [_reference(tape, x, p) for x in X]
        Y, OK = tape.forward(X, p, check="mask")
        Y = np.asarray(Y).reshape(3, n_out)
        bad = []
        for i, (y_ref, ok_ref, g_ref) in enumerate(refs):
            y, ok = tape.forward(X[i], p, check="mask")
            bad += [_compare("forward", y, ok, y_ref, ok_ref),
                    _compare("forward batch", Y[i], OK[i], y_ref, ok_ref)]
            if n_out == 1:
                v, g, ok = tape.value_and_grad(X[i], p, check="mask")
                bad += [_compare("value", v, ok, y_ref, ok_ref),
                        _compare("gradient", g, ok, g_ref, ok_ref)]
        if n_out == 1:
            V, G, OK = tape.value_and_grad(X, p, check="mask")
            for i, (y_ref, ok_ref, g_ref) in enumerate(refs):
                bad += [_compare("value batch", V[i], OK[i], y_ref, ok_ref),
                        _compare("gradient batch", G[i], OK[i], g_ref, ok_ref)]
    except (tapejit.BranchError, ValueError) as exc:  # documented evaluation errors
        return Verdict("loaded", f"evaluation refused: {_short(exc)}")
    bad = [b for b in bad if b]
    return Verdict("wrong", "; ".join(bad[:3])) if bad else Verdict("loaded", "as reference")


# ---------------------------------------------------------------------------------------
# tape files: a small zip writer (duplicate names, lying sizes, precompressed members)
# ---------------------------------------------------------------------------------------
@dataclass
class _Entry:
    """A zip member as stored: its data, CRC and declared size, method 0 or 8."""

    data: bytes
    crc: int
    size: int
    method: int = 8


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, a, allow_pickle=a.dtype.hasobject)
    return b.getvalue()


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": shape})
    return b.getvalue()


def _entry(raw: bytes, deflate: bool) -> _Entry:
    if not deflate:
        return _Entry(raw, zlib.crc32(raw), len(raw), 0)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return _Entry(c.compress(raw) + c.flush(), zlib.crc32(raw), len(raw))


@functools.lru_cache(maxsize=8)
def _zeros_entry(header: bytes, n_zero: int, exact_crc: bool) -> _Entry:
    """A deflated member: ``header`` then ``n_zero`` zero bytes, about 1000:1, built in
    milliseconds by repeating one fully flushed segment. Its CRC is exact only with
    ``exact_crc`` (which reads every byte)."""
    seg = 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    k, rest = divmod(n_zero, seg)
    body = (c.compress(bytes(seg)) + c.flush(zlib.Z_FULL_FLUSH)) * k if k else b""
    tail = c.compress(bytes(rest)) + c.flush()
    crc = zlib.crc32(header)
    if exact_crc:
        zeros = bytes(seg)
        for _ in range(k):
            crc = zlib.crc32(zeros, crc)
        crc = zlib.crc32(bytes(rest), crc)
    return _Entry(head + body + tail, crc, len(header) + n_zero)


def _zip(members: list[list], deflate: bool) -> bytes:
    """A zip archive of ``[name, array | npy bytes | _Entry]`` members, in order."""
    out, central = bytearray(), bytearray()
    for name, m in members:
        e = m if isinstance(m, _Entry) else _entry(
            m if isinstance(m, bytes) else _npy(m), deflate)
        n = name.encode()
        sizes = (e.crc, len(e.data), min(e.size, 2**32 - 1), len(n))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, e.method, 0,
                               0x21, *sizes, 0, 0, 0, 0, 0, len(out)) + n
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, e.method, 0, 0x21, *sizes,
                           0) + n + e.data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                      len(central), len(out), 0)
    return bytes(out + central + end)


class _Marker:
    """Unpickling this creates the file ``path``: proof that a pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass
class _File:
    data: bytes
    note: str
    n_in: int  # of the tape the file was made from (for points given to `tapejit eval`)
    n_par: int
    oracle: Callable | None = None  # outputs at x, for tapes too large to interpret


_INT_MEMBERS = ("format_version", "opcodes", "args", "sizes", "strides", "inputs",
                "params", "outputs", "guards", "input_shapes", "output_shapes")
_DTYPES = ("<i4", "<i8", "<u4", "|u1", "<i2", ">i4", ">i8", "<f8", "<f4", "|b1", "<U5",
           "<c16", "|S4")
_FILE_KINDS = {"none": 2, "int": 30, "dtype": 8, "shape": 10, "members": 8, "pickle": 4,
               "truncate": 8, "flip": 10, "bytes": 6, "bomb": 4, "header": 5, "huge": 3,
               "shapes": 4}
# member -> (dtype, columns) of a zip bomb standing in for it
_BOMBS = {"consts": ("<f8", 0), "input_shapes": ("<i8", 0), "args": ("<i4", 3),
          "opcodes": ("|u1", 0), "guards": ("<i4", 2), "name": ("<U", 0)}


class _Files:
    """Valid tape files of :func:`base_tapes` and their mutations."""

    def __init__(self) -> None:
        import tapejit

        self.tmp = tempfile.TemporaryDirectory(prefix="fuzz-files-")
        self.block_op = next(op for op in tapejit.OPS if op.name == "exp")  # any unary op
        self.bases = []
        for tape, _ in base_tapes():
            buf = io.BytesIO()
            tape.save(buf)
            with np.load(io.BytesIO(buf.getvalue())) as z:
                members = [(f"{k}.npy", z[k]) for k in z.files]
            n_fixed = len(tape.consts) + tape.n_params + tape.n_inputs
            self.bases.append((members, tape.n_inputs, tape.n_params, (
                -1, 0, 1, 2, 255, 256, 2**31 - 1, -(2**31), 2**31 - 2, 2**32 - 1, len(tape),
                tape.n_slots, tape.n_slots - 1, n_fixed, n_fixed - 1, len(tape.consts))))

    def build(self, rng: np.random.Generator, kind: str, d: str) -> _File:
        """A file of mutation ``kind`` made from a random base tape."""
        base, n_in, n_par, specials = self.bases[rng.integers(len(self.bases))]
        m = [list(kv) for kv in base]
        deflate = bool(rng.integers(2))
        name, _, arg = kind.partition("=")  # "huge=26": a block of 2**26 elements
        data, note, oracle = getattr(self, "_" + name)(rng, m, specials, d, deflate,
                                                        *([int(arg)] if arg else []))
        if name == "huge":
            n_in, n_par = 1, 0
        return _File(data if data is not None else _zip(m, deflate), note, n_in, n_par, oracle)

    def _member(self, rng, m, names=None) -> int:
        ok = [i for i, (k, v) in enumerate(m) if names is None or (k[:-4] in names and v.size)]
        return int(rng.choice(ok))

    def _none(self, rng, m, specials, d, deflate):
        return None, "unchanged", None

    def _int(self, rng, m, specials, d, deflate):
        i = self._member(rng, m, _INT_MEMBERS)
        a = m[i][1].copy()
        flat = a.reshape(-1)
        notes = []
        for _ in range(rng.integers(1, 4)):
            j, r = int(rng.integers(flat.size)), rng.random()
            v = (int(rng.choice(specials)) if r < 0.5 else int(rng.integers(-3, 64))
                 if r < 0.85 else int(rng.integers(-(2**31), 2**31)))
            flat[j] = np.array([v], dtype=np.int64).astype(a.dtype)[0]  # wraps around
            notes.append(f"[{j}]={v}")
        m[i][1] = a
        return None, f"{m[i][0][:-4]}{''.join(notes)}", None

    def _dtype(self, rng, m, specials, d, deflate):
        i = self._member(rng, m)
        dt = np.dtype(str(rng.choice(_DTYPES)))
        try:
            with np.errstate(all="ignore"):
                m[i][1] = m[i][1].astype(dt)
        except (ValueError, TypeError, OverflowError):
            m[i][1] = np.zeros(m[i][1].shape, dt)
        return None, f"{m[i][0][:-4]} as {dt.str}", None

    def _shape(self, rng, m, specials, d, deflate):
        i = self._member(rng, m)
        a = m[i][1]
        a1 = a.reshape(-1) if a.ndim == 0 else a
        how = str(rng.choice(["drop", "add", "empty", "flat", "column", "axis", "T", "wide"]))
        new = {
            "drop": lambda: a1[:-1],
            "add": lambda: np.concatenate(
                [a1, a1[-1:] if len(a1) else np.zeros((1, *a1.shape[1:]), a1.dtype)]),
            "empty": lambda: a1[:0],
            "flat": lambda: a.reshape(-1),
            "column": lambda: a.reshape(-1, 1),
            "axis": lambda: a[None],
            "T": lambda: a.T if a.ndim == 2 else a.reshape(1, -1),
            "wide": lambda: np.concatenate([a, a[:, :1]], axis=1) if a.ndim == 2 else a1[:, None],
        }[how]()
        m[i][1] = new
        return None, f"{m[i][0][:-4]} {a.shape} -> {new.shape} ({how})", None

    def _members(self, rng, m, specials, d, deflate):
        how = str(rng.choice(["missing", "extra", "extra-raw", "duplicate", "rename"]))
        i = int(rng.integers(len(m)))
        name = m[i][0]
        if how == "missing":
            del m[i]
        elif how == "extra":
            m.insert(int(rng.integers(len(m) + 1)), ["extra.npy", np.zeros(3)])
        elif how == "extra-raw":
            m.append(["notes", b"not an array"])
        elif how == "duplicate":
            m.append([name, m[int(rng.integers(len(m)))][1]])
        else:
            m[i][0] = name[:-4] if rng.random() < 0.5 else m[int(rng.integers(len(m)))][0]
        return None, f"{how} {name}", None

    def _pickle(self, rng, m, specials, d, deflate):
        marker = _Marker(os.path.join(d, "PICKLE_RAN"))
        if rng.random() < 0.25:  # the whole file a pickle
            return pickle.dumps({"format_version": marker}), "a pickle file", None
        i = int(rng.integers(len(m)))
        m[i][1] = np.array([marker, 1], dtype=object)
        return None, f"{m[i][0][:-4]} a pickled object array", None

    def _truncate(self, rng, m, specials, d, deflate):
        data = _zip(m, deflate)
        n = int(rng.integers(len(data)))
        return data[:n], f"truncated to {n} of {len(data)} bytes", None

    def _flip(self, rng, m, specials, d, deflate):
        if rng.random() < 0.5:  # anywhere in the file
            data = bytearray(_zip(m, deflate))
            where = "file"
        else:  # inside one member, in a valid archive (CRC right)
            i = int(rng.integers(len(m)))
            data = bytearray(_npy(m[i][1]))
            where = m[i][0][:-4]
        for _ in range(rng.integers(1, 9)):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        if where == "file":
            return bytes(data), "bits flipped in the file", None
        m[i][1] = bytes(data)
        return None, f"bits flipped in {where}", None

    def _bytes(self, rng, m, specials, d, deflate):
        how = int(rng.integers(3))
        junk = rng.bytes(int(rng.integers(0, 2048)))
        if how == 0:
            prefix = [b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY"][rng.integers(4)]
            return prefix + junk, f"{len(prefix + junk)} random bytes", None
        if how == 1:
            data = bytearray(_zip(m, deflate))
            at = int(rng.integers(len(data)))
            data[at : at + len(junk)] = junk[: len(data) - at]
            return bytes(data), f"random bytes over the file from {at}", None
        i = int(rng.integers(len(m)))
        m[i][1] = (b"\x93NUMPY" if rng.random() < 0.5 else b"") + junk
        return None, f"{m[i][0][:-4]} random bytes", None

    def _bomb(self, rng, m, specials, d, deflate):
        key = str(rng.choice(list(_BOMBS)))
        dtype, cols = _BOMBS[key]
        size = int(rng.choice([2**28, 5 * 2**29]))  # 256 MiB (exact CRC) or 2.5 GiB
        if dtype == "<U":  # numpy's largest itemsize is below 2**31
            size = 2**28
            dtype, shape = f"<U{size // 4}", ()
        else:
            n = size // np.dtype(dtype).itemsize // max(cols, 1)
            shape = (n, cols) if cols else (n,)
            size = n * np.dtype(dtype).itemsize * max(cols, 1)
        e = _zeros_entry(_npy_header(dtype, shape), size, size <= 2**28)
        m[[k for k, _ in m].index(key + ".npy")][1] = e
        return None, f"{key} zip bomb: {e.size} bytes from {len(e.data)}", None

    def _header(self, rng, m, specials, d, deflate):
        i = self._member(rng, m)
        name, a = m[i]
        if rng.random() < 0.5:  # the .npy header declares a huge shape
            shape = [(2**40,), (2**31,), (2**62,), (10**15,), (2**31, 3), (2**20, 2**20)]
            s = shape[rng.integers(len(shape))]
            m[i][1] = _npy_header(a.dtype.str, s) + a.tobytes()
            return None, f"{name[:-4]} header declares {s}", None
        e = _entry(_npy(a), deflate)  # the zip directory declares another size
        size = int(rng.choice([e.size + 1, e.size * 1000, 2**32 - 1]))
        m[i][1] = _Entry(e.data, e.crc, size, e.method)
        return None, f"{name[:-4]} zip size {e.size} declared as {size}", None

    def _huge(self, rng, m, specials, d, deflate, log2=None):
        n = 2**log2 if log2 else int(rng.choice([2**26, 2**26, 2**29, 2**31 - 3]))
        arrays = {
            "opcodes": np.array([self.block_op.code], np.uint8),
            "args": np.zeros((1, 3), np.int32),
            "sizes": np.array([n], np.int32), "strides": np.zeros((1, 3), np.int32),
            "consts": np.zeros(0), "inputs": np.zeros(1, np.int32),
            "params": np.zeros(0, np.int32), "outputs": np.array([1, n], np.int32),
            "guards": np.zeros((0, 2), np.int32), "input_shapes": np.zeros(0, np.int64),
            "output_shapes": np.zeros(0, np.int64)}
        for kv in m:
            kv[1] = arrays.get(kv[0][:-4], kv[1])
        op = self.block_op
        return None, f"{op.name} block of {n} elements", lambda x: op.numpy([x[0], x[0]])

    def _shapes(self, rng, m, specials, d, deflate):
        key = str(rng.choice(["input_shapes", "output_shapes"]))
        n = int(rng.choice([2 * 10**6, 2 * 10**7]))
        e = _zeros_entry(_npy_header("<i8", (n,)), 8 * n, True)
        m[[k for k, _ in m].index(key + ".npy")][1] = e
        return None, f"{key} with {n} entries", None


def _load_verdict(f: _File, d: str, rng: np.random.Generator) -> Verdict:
    """``tapejit.load`` of the file: TapeFormatError, or a tape that evaluates right; never
    a pickle run or a changed file."""
    import tapejit

    path = os.path.join(d, "tape.npz")
    _write(path, f.data)
    try:
        tape = tapejit.load(path)
    except tapejit.TapeFormatError as exc:
        v = Verdict("memory" if _ran_out_of_memory(exc) else "rejected", str(exc)[:200])
    else:
        v = _evaluates_right(tape, rng, f.oracle)
    if os.path.exists(os.path.join(d, "PICKLE_RAN")):
        v = Verdict("wrong", "a pickle ran")
    if _read(path) != f.data:
        v = Verdict("wrong", "load changed the file")
    return v._replace(detail=f"{f.note}: {v.detail}")


def files(seed: int, n_cases: int, start: int = 0) -> Iterator[Case]:
    """Family ``files``: mutated tape files given to ``tapejit.load``."""
    env = _Files()
    kinds, weights = list(_FILE_KINDS), np.array(list(_FILE_KINDS.values()), float)

    def case(i: int) -> Case:
        rng = np.random.default_rng([seed, i])
        kind = str(rng.choice(kinds, p=weights / weights.sum()))

        def run() -> Verdict:
            with _case_dir(env.tmp.name, i) as d:
                return _load_verdict(env.build(rng, kind, d), d, rng)

        return Case(i, kind, run)

    return map(case, range(start, n_cases))


# ---------------------------------------------------------------------------------------
# family cli
# ---------------------------------------------------------------------------------------
_CLI_FIRST = ("none", "huge=26", "bomb", "shapes")  # then random kinds


def cli(seed: int, n_cases: int, start: int = 0) -> Iterator[Case]:
    """Family ``cli``: ``tapejit inspect`` (even cases) and ``tapejit eval`` (odd) on the
    file ``i // 2``: exit 0, 2 (tape refused) or 3 (points refused), never a signal, a
    traceback or a timeout; the values written are the reference's."""
    import tapejit

    env = _Files()
    kinds, weights = list(_FILE_KINDS), np.array(list(_FILE_KINDS.values()), float)

    def case(i: int) -> Case:
        k, command = divmod(i, 2)
        rng = np.random.default_rng([seed, k])
        kind = (_CLI_FIRST[k] if k < len(_CLI_FIRST)
                else str(rng.choice(kinds, p=weights / weights.sum())))

        def run() -> Verdict:
            with _case_dir(env.tmp.name, i) as d:
                f = env.build(rng, kind, d)
                path = os.path.join(d, "tape.npz")
                _write(path, f.data)
                if not command:
                    rc, err = _cli("inspect", path)
                    v = _cli_verdict(rc, err) or (
                        Verdict("loaded", "listed") if rc == 0 else
                        Verdict("rejected", err.strip()[-200:]) if rc == 2 else
                        Verdict("other", f"exit {rc}: {err.strip()[-200:]}"))
                    return v._replace(detail=f"inspect {f.note}: {v.detail}")
                X = rng.uniform(0.2, 2.0, (3, f.n_in))
                args = ["eval", path, "--points", os.path.join(d, "x.npy"),
                        "--out", os.path.join(d, "y.npy")]
                np.save(os.path.join(d, "x.npy"), X)
                p = rng.uniform(0.2, 2.0, f.n_par) if f.n_par else None
                if p is not None:
                    np.save(os.path.join(d, "p.npy"), p)
                    args += ["--params", os.path.join(d, "p.npy")]
                rc, err = _cli(*args)
                v = _cli_verdict(rc, err)
                if v is None and rc == 0:
                    v = _eval_output(tapejit.load(path), X, p, np.load(os.path.join(d, "y.npy")),
                                     f.oracle)
                elif v is None:
                    outcome = {2: "rejected", 3: "loaded"}.get(rc, "other")
                    v = Verdict(outcome, f"exit {rc}: {err.strip()[-200:]}")
                return v._replace(detail=f"eval {f.note}: {v.detail}")

        return Case(i, f"{('inspect', 'eval')[command]} {kind}", run)

    return map(case, range(start, n_cases))


def _eval_output(tape, X, p, Y, oracle) -> Verdict:
    """Whether ``tapejit eval``'s forward values ``Y`` are the reference's."""
    if oracle is not None:
        want = np.array([oracle(x) for x in X])
    elif tape.n_slots <= INTERPRET_MAX:
        want = np.array([_reference(tape, x, p)[0] for x in X])
    else:
        return Verdict("loaded", "written, not compared")
    ok = _close(np.reshape(Y, want.shape), want) if np.size(Y) == want.size else False
    return Verdict("loaded", "as reference") if ok else Verdict("wrong", f"{Y} != {want}")


# ---------------------------------------------------------------------------------------
# family paths
# ---------------------------------------------------------------------------------------
class _Paths:
    """``evaluate_file``, ``tapejit eval`` and ``save`` with outputs that are inputs."""

    def __init__(self) -> None:
        import tapejit

        self.tmp = tempfile.TemporaryDirectory(prefix="fuzz-paths-")
        self.tape = tapejit.record(_blocks, np.ones(4), np.ones(3), argnums=0)
        self.plain = tapejit.record(_scalar, 2.0, 5.0)
        self.guarded = tapejit.record(_guarded, np.ones(2))
        self.p = np.array([0.5, 1.5, 2.0])
        S: list[tuple[str, Callable]] = []
        for m in ("forward", "gradient", "value_and_grad"):
            for how in ("same", "pathlike", "symlink", "hardlink", "relative", "dotdot"):
                S.append((f"{m} out=points ({how})",
                          functools.partial(self._into_input, m, how, "pts.npy")))
            S.append((f"{m} out=params file", functools.partial(self._into_input, m, "same",
                                                                 "prm.npy")))
            S.append((f"{m} new output", functools.partial(self._succeeds, m, "new.npy")))
            S.append((f"{m} existing output", functools.partial(self._succeeds, m, "old.npy")))
        for pair in (("new.npy", "new.npy"), ("old.npy", "old.npy"), ("old.npy", "pts.npy"),
                     ("pts.npy", "old.npy"), ("old.npy", "link.npy"), ("old.npy", "prm.npy")):
            S.append((f"value_and_grad out={pair}", functools.partial(self._pair, pair)))
        S += [
            ("value_and_grad new pair",
             functools.partial(self._succeeds, "value_and_grad", ("v.npy", "g.npy"))),
            ("BranchError midway over an existing output", self._branch_midway),
            ("params for a tape without, existing output", self._stray_params),
            ("object points file, existing output", functools.partial(self._bad_points, 0)),
            ("truncated points file, existing output", functools.partial(self._bad_points, 1)),
            ("unknown method, existing output", self._bad_method),
            ("tapejit eval --out points", functools.partial(self._cli_out, "same")),
            ("tapejit eval --out symlink to points", functools.partial(self._cli_out, "symlink")),
            ("save into a directory", self._save_dir),
        ]
        self.scenarios = S

    def case(self, seed: int, i: int) -> Case:
        name, fn = self.scenarios[i % len(self.scenarios)]
        rng = np.random.default_rng([seed, i])

        def run() -> Verdict:
            with _case_dir(self.tmp.name, i) as d:
                # files of several pages too: an output truncating a mapped input faults
                n = int(rng.choice([64, 5000]))
                np.save(os.path.join(d, "pts.npy"), rng.uniform(0.2, 2.0, (n, 4)))
                np.save(os.path.join(d, "prm.npy"), np.tile(self.p, (n, 1)))
                np.save(os.path.join(d, "old.npy"), np.arange(10.0))
                os.mkdir(os.path.join(d, "sub"))
                return fn(rng, d)

        return Case(i, name, run)

    def _alias(self, d: str, how: str, target: str):
        t = os.path.join(d, target)
        if how in ("symlink", "hardlink"):
            link = os.path.join(d, f"{how}.npy")
            (os.symlink if how == "symlink" else os.link)(t, link)
            return link
        return {"same": t, "pathlike": Path(t), "relative": os.path.relpath(t),
                "dotdot": os.path.join(d, "sub", "..", target)}[how]

    def _evaluate(self, rng, d, out, method="value_and_grad", params=None, **kw):
        import tapejit

        return tapejit.evaluate_file(
            kw.pop("tape", self.tape), kw.pop("points", os.path.join(d, "pts.npy")),
            out_path=out, method=method, params=self.p if params is None else params,
            block_points=int(rng.choice([7, 16, 1000])), **kw)

    def _refused(self, d: str, call: Callable, expect=(ValueError,)) -> Verdict:
        """``call`` must raise ``expect`` and change nothing under ``d``."""
        before = _snapshot(d)
        try:
            call()
            v = Verdict("wrong", "no error")
        except expect as exc:
            v = Verdict("memory" if _ran_out_of_memory(exc) else "rejected", _short(exc))
        except MemoryError:
            raise
        except Exception as exc:
            v = Verdict("other", _short(exc))
        diff = _diff(before, _snapshot(d))
        return Verdict("wrong", f"{v.detail}; files: {diff}") if diff else v

    def _into_input(self, method, how, target, rng, d):
        out = self._alias(d, how, target)
        params = os.path.join(d, "prm.npy") if target == "prm.npy" else None
        return self._refused(d, lambda: self._evaluate(rng, d, out, method, params))

    def _pair(self, pair, rng, d):
        if "link.npy" in pair:
            os.symlink(os.path.join(d, "pts.npy"), os.path.join(d, "link.npy"))
        params = os.path.join(d, "prm.npy") if "prm.npy" in pair else None
        out = tuple(os.path.join(d, n) for n in pair)
        return self._refused(d, lambda: self._evaluate(rng, d, out, params=params))

    def _succeeds(self, method, out, rng, d):
        X = np.load(os.path.join(d, "pts.npy"))
        names = out if isinstance(out, tuple) else (out,)
        before = _snapshot(d)
        self._evaluate(rng, d, tuple(os.path.join(d, n) for n in names)
                       if isinstance(out, tuple) else os.path.join(d, out), method)
        diff = _diff(before, _snapshot(d), allowed=names)
        got = [np.load(os.path.join(d, n)) for n in names]
        if method == "forward":
            want = [self.tape.forward(X, self.p)]
        elif method == "gradient":
            want = [self.tape.gradient(X, self.p)]
        else:
            v, g = self.tape.value_and_grad(X, self.p)
            want = [v, g] if len(names) == 2 else [np.column_stack([v, g])]
        if diff or not all(_close(a, b) for a, b in zip(got, want, strict=True)):
            return Verdict("wrong", f"results differ or files: {diff}")
        return Verdict("loaded", f"wrote {', '.join(names)}")

    def _n(self, d: str) -> int:
        return len(np.load(os.path.join(d, "pts.npy"), mmap_mode="r"))

    def _branch_midway(self, rng, d):
        X = rng.uniform(0.2, 2.0, (self._n(d), 2))
        X[-5:, 0] *= -1.0  # the last points take the other branch
        np.save(os.path.join(d, "gpts.npy"), X)
        return self._refused(d, lambda: self._evaluate(
            rng, d, os.path.join(d, "old.npy"), tape=self.guarded, params=(),
            points=os.path.join(d, "gpts.npy")))

    def _stray_params(self, rng, d):
        np.save(os.path.join(d, "pts2.npy"), rng.uniform(0.2, 2.0, (self._n(d), 2)))
        return self._refused(d, lambda: self._evaluate(
            rng, d, os.path.join(d, "old.npy"), tape=self.plain, params=np.ones(1),
            points=os.path.join(d, "pts2.npy")))

    def _bad_points(self, truncated, rng, d):
        path = os.path.join(d, "bad.npy")
        if truncated:
            data = _read(os.path.join(d, "pts.npy"))
            _write(path, data[: len(data) // 2])
        else:
            np.save(path, np.array([1.0, "a"], dtype=object), allow_pickle=True)
        return self._refused(d, lambda: self._evaluate(
            rng, d, os.path.join(d, "old.npy"), points=path), (ValueError, TypeError))

    def _bad_method(self, rng, d):
        return self._refused(d, lambda: self._evaluate(
            rng, d, os.path.join(d, "old.npy"), method="hessian"))

    def _cli_out(self, how, rng, d):
        self.tape.save(os.path.join(d, "tape.npz"))
        np.save(os.path.join(d, "p.npy"), self.p)
        out = self._alias(d, how, "pts.npy")
        before = _snapshot(d)
        rc, err = _cli("eval", os.path.join(d, "tape.npz"), "--points",
                       os.path.join(d, "pts.npy"), "--params", os.path.join(d, "p.npy"),
                       "--out", os.fspath(out))
        v = _cli_verdict(rc, err) or (Verdict("wrong", "exit 0") if rc == 0 else
                                      Verdict("rejected", f"exit {rc}: {err.strip()[-160:]}"))
        diff = _diff(before, _snapshot(d))
        return Verdict("wrong", f"{v.detail}; files: {diff}") if diff else v

    def _save_dir(self, rng, d):
        return self._refused(d, lambda: self.tape.save(os.path.join(d, "sub")),
                             (IsADirectoryError, ValueError))


def paths(seed: int, n_cases: int, start: int = 0) -> Iterator[Case]:
    """Family ``paths``: outputs that are inputs are refused (ValueError) before anything
    is written; failing calls leave existing files alone; the controls succeed."""
    env = _Paths()
    return (env.case(seed, i) for i in range(start, n_cases))


# ---------------------------------------------------------------------------------------
# family sigkill
# ---------------------------------------------------------------------------------------
def _fork_run(fn: Callable[[], Any], kill_after: float | None = None) -> tuple[bool, float]:
    """Run ``fn()`` in a forked child, SIGKILLed after ``kill_after`` seconds if given:
    (whether ``fn`` returned, seconds)."""
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        code = 1
        try:
            fn()
            os.write(w, b"done")
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    seconds = time.monotonic() - t0
    with os.fdopen(r, "rb") as fh:
        done = fh.read() == b"done"
    return done, seconds


def _big_tape(n: int, rng: np.random.Generator):
    """A tape of ``n`` scalar instructions (add, mul, sin of earlier slots), 3 inputs."""
    import tapejit

    chosen = [op for op in tapejit.OPS if op.name in ("add", "mul", "sin")]
    kind = rng.choice(len(chosen), n)
    ops = np.array([op.code for op in chosen], np.uint8)[kind]
    arity = np.array([op.arity for op in chosen])[kind]
    first = 3 + np.arange(n)
    args = np.zeros((n, 3), np.int32)
    args[:, :2] = rng.random((n, 2)) * first[:, None]
    args[arity < 2, 1] = 0  # unused operand columns are zero
    return tapejit.Tape(ops, args, np.zeros(0), np.arange(3, dtype=np.int32),
                        np.zeros(0, np.int32), np.array([n + 2], np.int32), name="big")


class _Kill:
    """A writer killed midway over a valid previous file."""

    N_INSTR = 2 * 10**6
    N_POINTS = 2 * 10**6

    def __init__(self) -> None:
        import tapejit

        rng = np.random.default_rng(0)
        self.tmp = tempfile.TemporaryDirectory(prefix="fuzz-kill-")
        t = self.tmp.name
        self.big = _big_tape(self.N_INSTR, rng)
        self.small = tapejit.record(_scalar, 2.0, 5.0)
        buf = io.BytesIO()
        self.small.save(buf)
        self.old_tape = buf.getvalue()
        self.tape = tapejit.record(_blocks, np.ones(4), np.ones(3), argnums=0)
        self.p = np.array([0.5, 1.5, 2.0])
        self.points = os.path.join(t, "points.npy")
        np.save(self.points, rng.uniform(0.2, 2.0, (self.N_POINTS, 4)))
        # Warm the kernels here (few points: no worker threads before the forks), then
        # time complete runs, whose outputs are the expected new files.
        self.tape.value_and_grad(np.ones((4, 4)), self.p)
        self.expected = {n: os.path.join(t, n) for n in ("o.npy", "v.npy", "g.npy")}
        runs = [_fork_run(lambda: self.big.save(os.path.join(t, "big.npz"))),
                _fork_run(lambda: self._evaluate(self.expected["o.npy"])),
                _fork_run(lambda: self._evaluate((self.expected["v.npy"],
                                                  self.expected["g.npy"])))]
        if not all(done for done, _ in runs):
            raise RuntimeError("harness: a complete save or evaluate_file failed (stderr)")
        self.save_s, self.eval_s = runs[0][1], runs[1][1]
        X = np.load(self.points, mmap_mode="r")[:5]
        v, g = self.tape.value_and_grad(np.array(X), self.p)
        if not _close(np.load(self.expected["o.npy"], mmap_mode="r")[:5],
                      np.column_stack([v, g])):
            raise RuntimeError("harness: evaluate_file's complete run disagrees with the tape")

    def _evaluate(self, out, points=None):
        import tapejit

        tapejit.evaluate_file(self.tape, points or self.points, out_path=out, params=self.p)

    def case(self, seed: int, i: int) -> Case:
        kind = ("save", "evaluate_file", "evaluate_file pair")[i % 3]
        rng = np.random.default_rng([seed, i])

        def run() -> Verdict:
            with _case_dir(self.tmp.name, i) as d:
                return self._save(rng, d) if kind == "save" else self._eval(
                    rng, d, ("v.npy", "g.npy") if "pair" in kind else ("o.npy",))

        return Case(i, kind, run)

    def _save(self, rng, d):
        import tapejit

        path = os.path.join(d, "t.npz")
        _write(path, self.old_tape)
        at = rng.uniform(0.0, 1.25 * self.save_s)
        done, _ = _fork_run(lambda: self.big.save(path), at)
        after_kill = sorted(set(os.listdir(d)) - {"t.npz"})
        if _read(path) == self.old_tape:
            v = Verdict("rejected", "the old file")
        else:
            try:
                t = tapejit.load(path)
                same = np.array_equal(t.args, self.big.args) and np.array_equal(
                    t.opcodes, self.big.opcodes)
            except tapejit.TapeFormatError as exc:
                same, t = False, exc
            v = (Verdict("loaded", "the complete new file") if same else
                 Verdict("wrong", f"neither the old nor the new tape: {t}"))
        self.small.save(path)  # the next successful save into the directory
        return self._strays(v, d, {"t.npz"}, after_kill, at, done)

    def _eval(self, rng, d, names):
        old = {n: _npy(np.arange(7.0) + k) for k, n in enumerate(names)}
        for n, data in old.items():
            _write(os.path.join(d, n), data)
        small = os.path.join(d, "s.npy")
        np.save(small, np.ones((8, 4)))
        out = tuple(os.path.join(d, n) for n in names)
        at = rng.uniform(0.0, 1.25 * self.eval_s)
        done, _ = _fork_run(lambda: self._evaluate(out if len(out) == 2 else out[0]), at)
        after_kill = sorted(set(os.listdir(d)) - {*names, "s.npy"})
        state = []
        for n in names:
            data = _read(os.path.join(d, n))
            state.append("old" if data == old[n] else
                         "new" if data == _read(self.expected[n]) else "torn")
        if "torn" in state or ("old" in state and done):
            v = Verdict("wrong", f"files {state} after the kill")
        elif "new" in state:  # complete: killed after the rename, or not killed at all
            v = Verdict("loaded", f"files {state}")
        else:
            v = Verdict("rejected", "the old files")
        self._evaluate(out if len(out) == 2 else out[0], small)  # the next successful call
        return self._strays(v, d, {*names, "s.npy"}, after_kill, at, done)

    def _strays(self, v, d, known, after_kill, at, done) -> Verdict:
        """``v``, or wrong if the next successful call left temporary files."""
        after_next = sorted(set(os.listdir(d)) - known)
        detail = (f"{v.detail}; killed at {at:.3f} s (the call had {'' if done else 'not '}"
                  f"returned); files left: {after_kill} after the kill, {after_next} after "
                  "the next successful call")
        extra = {"tmp_after_kill": len(after_kill), "tmp_after_next": len(after_next)}
        return Verdict("wrong" if after_next else v.outcome, detail, extra)


def sigkill(seed: int, n_cases: int, start: int = 0) -> Iterator[Case]:
    """Family ``sigkill``: after a SIGKILL during ``save`` or ``evaluate_file`` the file at
    the path is the old one or the complete new one, and the next successful call into the
    directory leaves no temporary file."""
    env = _Kill()
    return (env.case(seed, i) for i in range(start, n_cases))


# ---------------------------------------------------------------------------------------
# family bundles
# ---------------------------------------------------------------------------------------
_CANARY = 4096  # elements of canary after every scratch array: past any tape's needs


def _canaried(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``a`` at the start of a larger buffer whose tail is a canary pattern, with
    ``a``'s writeable flag: (the copy, the buffer)."""
    buf = np.empty(a.size + _CANARY, a.dtype)
    buf[a.size :].view(np.uint8)[:] = 0xA5
    view = buf[: a.size]
    view[:] = a
    view.flags.writeable = a.flags.writeable
    return view, buf


def _canary_intact(buf: np.ndarray, n: int) -> bool:
    return bool((buf[n:].view(np.uint8) == 0xA5).all())


_CALLER = """
import numba
import tapejit


@numba.njit(cache=True)
def call(args, x, g, grad):
    if grad:
        return tapejit.jit_value_and_grad(args, x, g)
    return tapejit.jit_value(args, x)
"""


def _njit_caller():
    """The one compiled caller of ``jit_value(_and_grad)``, cached on disk next to a
    module whose path names a hash of tapejit's sources: Numba's cache does not see a
    change of the ``@overload``s it inlines, and a child restarted after a crash should
    not compile it again."""
    import tapejit

    src = sorted(Path(tapejit.__file__).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in src)).hexdigest()[:16]
    path = Path(tempfile.gettempdir(), f"tapejit-fuzz-caller-{digest}", "caller.py")
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(_CALLER)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location("tapejit_fuzz_caller", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Numba's cache imports it by name
    spec.loader.exec_module(module)
    return module.call


def _tamper(b, **fields):
    """``b`` with ``fields`` replaced, by ``_replace``, attribute assignment or a new
    ``JitArgs``; raises what a bundle that refuses tampering raises."""
    import copy

    import tapejit

    if hasattr(b, "_replace"):
        return b._replace(**fields)
    try:
        c = copy.copy(b)
        for k, v in fields.items():
            setattr(c, k, v)
        return c
    except (AttributeError, TypeError):
        names = [k for k in dir(b) if not k.startswith("_") and not callable(getattr(b, k))]
        return tapejit.JitArgs(**{k: fields.get(k, getattr(b, k)) for k in names})


class _Bundles:
    """Tampered ``jit_args`` bundles, from Python and from one compiled caller."""

    # "none": the bundle as made; "canaried": its scratch arrays moved to canaried buffers
    # (as in every other mode), then one field replaced, or the stamp, x or g changed
    MODES = ("none", "canaried", "other-tape", "smaller", "larger", "empty", "garbage",
             "dtype", "flags", "stamp", "x-g", "not-a-bundle")

    def __init__(self) -> None:
        import numba
        from numba.core.dispatcher import Dispatcher

        import tapejit

        self.tapes = {
            "params": (tapejit.record(_blocks, np.ones(4), np.ones(3), argnums=0),
                       np.array([0.5, 1.5, 2.0])),
            "plain": (tapejit.record(_scalar, 2.0, 5.0), None),
            "guarded": (tapejit.record(_guarded, np.ones(2)), None),
            "long": (tapejit.record(lambda x: np.sum(np.sin(x) * np.exp(-x)), np.ones(40)),
                     None),
            "multi": (tapejit.record(_branchy, np.ones(3)), None),
        }
        self.call = _njit_caller()
        tape, p = self.tapes["params"]
        x, g = np.full(4, 0.7), np.empty(4)
        want = tape.value_and_grad(x, p)
        for attempt in range(2):
            b = tape.jit_args(p)
            try:
                got = (self.call(b, x, g, True), g.copy(), self.call(b, x, g, False))
            except RuntimeError as exc:  # compiled against other kernels (the stamp)
                got = exc
            if not isinstance(got, Exception) and (
                    _close(got[0], want[0]) and _close(got[1], want[1])
                    and _close(got[2], want[0])):
                break
            if attempt:
                raise RuntimeError(f"harness: the njit caller gives {got}, the tape {want}")
            self.call.recompile()
        self.typeof = numba.typeof
        self.bundle_type = numba.typeof(b)
        self.arrays = [k for k in getattr(b, "_fields", dir(b))
                       if not k.startswith("_") and isinstance(getattr(b, k), np.ndarray)]
        for tape, p in self.tapes.values():  # the signatures the cases use, compiled
            y = np.full(tape.n_inputs, 0.7)
            tape.forward(y, p, check="mask")
            if tape.n_outputs == 1:
                tape.value_and_grad(y, p, check="mask")
                tapejit.jit_value_and_grad(tape.jit_args(p), y, np.empty(tape.n_inputs))
                tapejit.jit_value(tape.jit_args(p), y)
        # A tampered dtype must be refused before the kernels: with compilation disabled,
        # one that reaches them raises numba's "No matching definition" (reported as
        # such) instead of compiling a kernel variant for minutes.
        for name, module in list(sys.modules.items()):
            if name.startswith("tapejit_kernels_"):
                for fn in vars(module).values():
                    if isinstance(fn, Dispatcher) and fn.signatures:
                        fn.disable_compile()

    def case(self, seed: int, i: int) -> Case:
        rng = np.random.default_rng([seed, i])
        base = str(rng.choice(list(self.tapes)))
        w = np.array([1, 1, 3, 3, 2, 2, 3, 2, 2, 1, 2, 0.3])
        mode = str(rng.choice(self.MODES, p=w / w.sum()))
        key = str(rng.choice(self.arrays))
        what = key if mode in ("other-tape", "smaller", "larger", "empty", "garbage", "dtype",
                               "flags") else ""
        return Case(i, f"{base} {mode} {what}".strip(), lambda: self._run(rng, base, mode, key))

    def _run(self, rng, base, mode, key) -> Verdict:
        tape, p = self.tapes[base]
        b = tape.jit_args(p)
        arrays = self.arrays
        if mode == "stamp" and not hasattr(b, "stamp"):
            mode = "none"
        fields, note = self._replacement(rng, mode, key, getattr(b, key))
        n_in = tape.n_inputs
        x, g = rng.uniform(0.2, 2.0, n_in), np.zeros(n_in)
        # the right answers: the tape's, at the bundle's parameters (users may change them)
        new_p = fields.get("params")
        if tape.n_params and new_p is not None and new_p.shape == (tape.n_params,) and (
                new_p.dtype == np.float64):
            p = np.array(new_p)
        want = tape.value_and_grad(x, p, check="mask")[:2] if tape.n_outputs == 1 else None
        if mode == "x-g":
            n_bad = int(rng.choice([0, n_in - 1, n_in + 1, n_in + 7]))
            if rng.random() < 0.5:
                x, note = np.resize(x, n_bad), f"x of {n_bad} elements"
            else:
                g, note = np.zeros(n_bad), f"g of {n_bad} elements"
        # the writeable arrays of the bundle, the replaced one, x and g get canary tails
        bufs = {}
        for k in arrays:
            arr = fields.get(k, getattr(b, k))
            if (arr.flags.writeable and mode != "none") or k in fields:
                fields[k], bufs[k] = _canaried(arr)
        (xv, bufs["x"]), (gv, bufs["g"]) = _canaried(x), _canaried(g)
        sizes = {k: v.size for k, v in [*fields.items(), ("x", xv), ("g", gv)]}
        try:
            t = _tamper(b, **fields)
            if mode == "stamp":
                t = _tamper(t, stamp=int(rng.choice([0, -1, b.stamp + 1])))
        except (AttributeError, TypeError, ValueError) as exc:
            return Verdict("rejected", f"{note}: tampering refused: {_short(exc)}")
        if mode == "not-a-bundle":
            t = tuple(t)
        verdicts = []
        for where in ("python", "njit"):
            if where == "njit" and not (mode == "not-a-bundle" or self._typed_alike(t, xv, gv)):
                continue  # another type would compile another caller (seconds each)
            for grad in (True, False):
                verdicts.append(self._call(where, grad, t, xv, gv, want))
                bad = [k for k, buf in bufs.items() if not _canary_intact(buf, sizes[k])]
                if bad or not np.array_equal(xv, x):
                    return Verdict("wrong", f"{note}: {verdicts[-1].detail}; then the canary "
                                   f"after {bad} or x itself was overwritten")
        v = _worst(verdicts)
        return v._replace(detail=f"{note}: {v.detail} ({len(verdicts)} calls)")

    def _typed_alike(self, t, x, g) -> bool:
        try:
            return self.typeof(t) == self.bundle_type and x.flags.writeable and g.flags.writeable
        except (ValueError, TypeError):
            return False

    def _replacement(self, rng, mode, key, a) -> tuple[dict, str]:
        if mode in ("none", "canaried", "stamp", "x-g", "not-a-bundle"):
            return {}, mode
        if mode == "other-tape":
            t, p = self.tapes[str(rng.choice(list(self.tapes)))]
            new = getattr(t.jit_args(p), key)
        elif mode == "smaller":
            new = a[: int(rng.integers(a.size))] if a.size else a
        elif mode == "larger":
            new = np.concatenate([a, np.zeros(int(rng.integers(1, 9)), a.dtype)])
        elif mode == "empty":
            new = a[:0]
        elif mode == "garbage":
            new = (rng.integers(-2, 64, a.size).astype(a.dtype) if a.dtype.kind == "i"
                   else rng.normal(size=a.size))
        elif mode == "dtype":
            with np.errstate(all="ignore"):
                new = a.astype({"i": np.int64, "f": np.float32}[a.dtype.kind])
        else:  # flags: a writeable copy of a read-only array, or the reverse
            new = np.array(a)
            new.flags.writeable = not a.flags.writeable
            return {key: new}, f"{key} writeable={new.flags.writeable}"
        new = np.array(new)
        new.flags.writeable = a.flags.writeable
        return {key: new}, f"{key} {mode} ({a.size} -> {new.size} {new.dtype})"

    def _call(self, where, grad, t, x, g, want) -> Verdict:
        from numba.core.errors import TypingError

        import tapejit

        what = f"{where} {'jit_value_and_grad' if grad else 'jit_value'}"
        try:
            if where == "njit":
                v = self.call(t, x, g, grad)
            else:
                v = tapejit.jit_value_and_grad(t, x, g) if grad else tapejit.jit_value(t, x)
        except TypeError as exc:
            if "No matching definition" in str(exc):
                return Verdict("other", f"{what}: reached the kernels unchecked: {_short(exc)}")
            return Verdict("rejected", f"{what}: {_short(exc, 80)}")
        except (ValueError, RuntimeError, TypingError) as exc:
            return Verdict("rejected", f"{what}: {_short(exc, 80)}")
        except MemoryError:
            raise
        except Exception as exc:  # undocumented; the caller still checks the canaries
            return Verdict("other", f"{what}: {_short(exc, 80)}")
        if want is None:
            return Verdict("wrong", f"{what} of a tape of several outputs returned {v}")
        if not _close(v, want[0]) or (grad and not _close(g, want[1])):
            return Verdict("wrong", f"{what}: {v}, {g[:3]} != {want[0]}, {want[1][:3]}")
        return Verdict("loaded", f"{what} right")


def bundles(seed: int, n_cases: int, start: int = 0) -> Iterator[Case]:
    """Family ``bundles``: a tampered bundle raises ValueError, TypeError, RuntimeError
    (numba's TypingError when compiling) or gives the untampered result; it never writes
    past an array."""
    env = _Bundles()
    return (env.case(seed, i) for i in range(start, n_cases))


FAMILIES: dict[str, Callable[[int, int, int], Iterator[Case]]] = {
    "files": files, "cli": cli, "paths": paths, "sigkill": sigkill, "bundles": bundles}


def selfcheck(seed: int, n_cases: int, start: int = 0) -> Iterator[Case]:
    """Cases ending as each outcome the child itself cannot report: fine, a crash, a hang,
    a MemoryError, fine (checks the harness; not a family of the suite)."""
    acts = [lambda: Verdict("loaded", "fine"),
            lambda: os.kill(os.getpid(), signal.SIGSEGV),
            lambda: time.sleep(600),
            lambda: Verdict("loaded", str(np.ones(MEM_LIMIT // 8).sum())),
            lambda: Verdict("loaded", "fine")]
    return (Case(i, "selfcheck", acts[i % len(acts)]) for i in range(start, n_cases))


_ALL = {**FAMILIES, "selfcheck": selfcheck}


# ---------------------------------------------------------------------------------------
# child process
# ---------------------------------------------------------------------------------------
def run_case(case: Case) -> Verdict:
    try:
        return case.run()
    except MemoryError as exc:
        return Verdict("memory", _short(exc))
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return Verdict("other", f"{_short(exc)} (at {os.path.basename(where.filename)}:"
                                f"{where.lineno})")


def _child(family: str, seed: int, n_cases: int, start: int, log_path: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    with open(log_path, "a") as log:

        def emit(**kw) -> None:
            log.write(json.dumps(kw) + "\n")
            log.flush()

        t0 = time.monotonic()
        cases = _ALL[family](seed, n_cases, start)
        emit(ev="ready", seconds=time.monotonic() - t0)
        for case in cases:
            emit(ev="start", i=case.index, kind=case.kind)
            t = time.monotonic()
            _peak_mib(reset=True)
            v = run_case(case)
            emit(ev="end", i=case.index, kind=case.kind, outcome=v.outcome,
                 detail=v.detail[:600], extra=v.extra, seconds=time.monotonic() - t,
                 mib=_peak_mib())


# ---------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------
@dataclass
class FamilyRun:
    family: str
    seed: int
    n_cases: int
    records: dict[int, dict] = field(default_factory=dict)
    setup_error: str | None = None
    children: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(OUTCOMES, 0)
        for r in self.records.values():
            c[r["outcome"]] += 1
        return c

    def failures(self) -> list[dict]:
        return [r for _, r in sorted(self.records.items()) if r["outcome"] in FAILURES]


def _package_root() -> str:
    spec = importlib.util.find_spec("tapejit")
    return os.path.dirname(os.path.dirname(spec.origin))


def _stderr_tail(path: str) -> str:
    with open(path, errors="replace") as fh:
        return fh.read()[-800:].strip()


def run_family(family: str, seed: int, n_cases: int, workdir: str | os.PathLike[str],
               case_timeout: float | None = None) -> FamilyRun:
    """Run a family's cases in child processes, restarting after each crash or hang."""
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    case_timeout = case_timeout or CASE_TIMEOUT[family]
    env = dict(os.environ, TMPDIR=workdir, PYTHONPATH=os.pathsep.join(
        [_package_root(), *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = FamilyRun(family, seed, n_cases)
    t_run = time.monotonic()
    start = 0
    while start < n_cases:
        log = os.path.join(workdir, f"{family}-{start}.jsonl")
        err = os.path.join(workdir, f"{family}-{start}.stderr")
        with open(err, "w") as fh:
            proc = subprocess.Popen(
                [sys.executable, HERE, "--child", family, "--seed", str(seed), "--cases",
                 str(n_cases), "--start", str(start), "--log", log],
                stdout=fh, stderr=fh, env=env, cwd=workdir, start_new_session=True)
        run.children += 1
        current, last, timed_out = _watch(proc, log, case_timeout, run)
        if proc.returncode == 0 and current is None:
            break
        if current is None and last is None:  # died or stuck while setting up
            run.setup_error = (f"no cases run (exit {proc.returncode}): "
                               f"{_stderr_tail(err)}")
            break
        if timed_out:
            outcome, detail = "hang", f"over {case_timeout} s"
        elif proc.returncode < 0:
            sig = signal.Signals(-proc.returncode)
            outcome = "memory" if sig == signal.SIGKILL else "crash"
            detail = f"child died of {sig.name}: {_stderr_tail(err)[-300:]}"
        else:
            outcome, detail = "crash", f"child exited {proc.returncode}: {_stderr_tail(err)}"
        if current is None:  # died between cases: blame the one that just ended
            current, detail = last, f"after the case ended: {detail}"
        rec = run.records.setdefault(current, {"i": current, "kind": "?"})
        rec.update(outcome=outcome, detail=detail, seconds=rec.get("seconds"))
        start = current + 1
    run.seconds = time.monotonic() - t_run
    return run


def _watch(proc: subprocess.Popen, log: str, case_timeout: float, run: FamilyRun):
    """Follow a child's log until it exits or overruns: (case running when it stopped or
    None, last case ended, whether it was killed for time)."""
    current = last = None
    since = launched = time.monotonic()
    ready = False
    pos = 0
    while True:
        rc = proc.poll()
        if os.path.exists(log):
            with open(log) as fh:
                fh.seek(pos)
                chunk = fh.read()
            lines = chunk.split("\n")
            pos += len(chunk) - len(lines[-1])
            for line in lines[:-1]:
                e = json.loads(line)
                since = time.monotonic()
                if e["ev"] == "ready":
                    ready = True
                elif e["ev"] == "start":
                    current = e["i"]
                    run.records[current] = {"i": current, "kind": e["kind"]}
                else:
                    run.records[e["i"]] = {k: v for k, v in e.items() if k != "ev"}
                    current, last = None, e["i"]
        if rc is not None:
            return current, last, False
        limit = case_timeout if ready else SETUP_TIMEOUT
        if time.monotonic() - (since if ready else launched) > limit:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if current is None and ready:  # stuck between cases: blame the next one
                current = (last + 1) if last is not None else 0
                run.records[current] = {"i": current, "kind": "?"}
            return current, last, True
        time.sleep(0.02)


def format_table(runs: list[FamilyRun]) -> str:
    """The counts per family, then the failing cases and notes."""
    cols = ("cases", *OUTCOMES, "max s", "max MiB")
    lines = [f"{'family':<9}" + "".join(f"{c:>9}" for c in cols)]
    for r in runs:
        c = r.counts()
        most = {k: max((x.get(k) or 0.0 for x in r.records.values()), default=0.0)
                for k in ("seconds", "mib")}
        lines.append(f"{r.family:<9}{r.n_cases:>9}" + "".join(f"{c[o]:>9}" for o in OUTCOMES)
                     + f"{most['seconds']:>9.2f}{most['mib']:>9.0f}")
    for r in runs:
        lines.append(f"{r.family}: {r.seconds:.1f} s, {r.children} child process(es), "
                     f"seed {r.seed}")
        if r.setup_error:
            lines.append(f"  SETUP FAILED: {r.setup_error}")
        kill = [x["extra"] for x in r.records.values() if x.get("extra")]
        if kill:
            lines.append(
                f"  temporary files left: {sum(k['tmp_after_kill'] for k in kill)} after "
                f"{len(kill)} kills ({sum(k['tmp_after_kill'] > 0 for k in kill)} cases), "
                f"{sum(k['tmp_after_next'] for k in kill)} after the next successful call")
        for x in r.failures():
            lines.append(f"  {r.family}:{x['i']} [{x['kind']}] {x['outcome']}: "
                         f"{str(x.get('detail'))[:300]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="run families, print the table")
    ap.add_argument("--replay", metavar="FAMILY:INDEX", help="run one case here, verbosely")
    ap.add_argument("--family", action="append", choices=list(FAMILIES))
    ap.add_argument("--cases", type=int, help="cases of 'files' (the others scale)")
    ap.add_argument("--seed", type=int,
                    default=int(os.environ.get("TAPEJIT_FUZZ_SEED", DEFAULT_SEED)))
    ap.add_argument("--jobs", type=int, default=2, help="families run at once")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.seed, args.cases, args.start, args.log)
        return 0
    if args.replay:
        family, index = args.replay.split(":")
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
        case = next(_ALL[family](args.seed, int(index) + 1, int(index)))
        print(f"{family}:{index} [{case.kind}] seed {args.seed}")
        print(case.run())  # unguarded: a traceback shows where
        return 0
    if not args.report:
        ap.error("give --report or --replay")
    counts = case_counts(args.cases)
    names = args.family or list(FAMILIES)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tapejit-fuzz-") as tmp:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(lambda f: run_family(f, args.seed, counts[f],
                                                      os.path.join(tmp, f)), names))
    print(format_table(runs))
    print(f"total {time.monotonic() - t0:.1f} s")
    return 1 if any(r.failures() or r.setup_error for r in runs) else 0


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(HERE))
    if os.path.isdir(os.path.join(root, "tapejit")) and not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, root)  # this checkout's tapejit, unless PYTHONPATH says another
    sys.exit(main())
