"""Generate the Numba interpreters from the op table, once, and load them.

The sweeps contain no per-op derivative logic of their own: each is a dispatch over
:data:`tapejit._ops.OPS` written out from the table's ``value`` and ``partials``
expressions. The generated source is written to a cache directory under a name that is
the hash of the source itself, so Numba's on-disk cache (``cache=True``) stays valid for
exactly that source and is reused by every later process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType

from ._ops import HELPERS, OPS, Op

#: Number of int32 header fields at the start of a packed program (see ``_tape.py``).
HEADER = 12
#: int32 fields per instruction: opcode, result slot, three operand slots.
ROW = 5

_OPERANDS = ("a", "b", "c")
_ORDER = ("mul", "add", "sub", "div", "neg", "square", "where")  # frequent ops first


def _uses(expr: str) -> list[str]:
    """Names among a, b, c, r that an expression reads."""
    return [v for v in ("a", "b", "c", "r") if re.search(rf"\b{v}\b", expr)]


def _dispatch_order() -> list[Op]:
    first = [op for name in _ORDER for op in OPS if op.name == name]
    return first + [op for op in OPS if op not in first]


def _loads(names: list[str], ind: str) -> list[str]:
    return [f"{ind}{v} = w{v}[p]" for v in names]


def _views(names: list[str], ind: str) -> list[str]:
    slot = {"a": "ia", "b": "ib", "c": "ic", "r": "ir"}
    return [f"{ind}w{v} = W[{slot[v]}]" for v in names]


def _forward_chunk() -> str:
    lines = [
        "@njit(cache=True, nogil=True)",
        "def forward_chunk(prog, W, m):",
        "    k = prog[10]",
        "    for i in range(prog[6]):",
        "        op = prog[k]",
        "        ir = prog[k + 1]",
        "        ia = prog[k + 2]",
        "        ib = prog[k + 3]",
        "        ic = prog[k + 4]",
        f"        k += {ROW}",
    ]
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        lines.append(f"        {kw} op == {op.code}:  # {op.name}")
        lines += _views(used + ["r"], "            ")
        lines.append("            for p in range(m):")
        lines += _loads(used, "                ")
        lines.append(f"                wr[p] = {op.value}")
        kw = "elif"
    return "\n".join(lines)


def _reverse_chunk() -> str:
    lines = [
        "@njit(cache=True, nogil=True)",
        "def reverse_chunk(prog, W, A, m):",
        "    nd = prog[2]",
        "    k0 = prog[10]",
        "    for i in range(prog[6] - 1, -1, -1):",
        f"        k = k0 + {ROW} * i",
        "        op = prog[k]",
        "        ir = prog[k + 1]",
        "        ia = prog[k + 2]",
        "        ib = prog[k + 3]",
        "        ic = prog[k + 4]",
    ]
    kw = "if"
    for op in _dispatch_order():
        body = []
        for slot, partial in zip(("ia", "ib", "ic"), op.partials, strict=False):
            if partial in ("0.0", "0"):
                continue
            body.append(f"            if {slot} >= nd:")
            body.append(f"                ga = A[{slot}]")
            body += _views(_uses(partial), "                ")
            body.append("                for p in range(m):")
            if partial == "1.0":
                body.append("                    ga[p] += gr[p]")
            elif partial == "-1.0":
                body.append("                    ga[p] -= gr[p]")
            else:
                body += _loads(_uses(partial), "                    ")
                body.append(f"                    ga[p] += _azmul(gr[p], {partial})")
        if not body:  # zero-derivative op: nothing flows back
            continue
        lines.append(f"        {kw} op == {op.code}:  # {op.name}")
        lines.append("            gr = A[ir]")
        lines += body
        kw = "elif"
    return "\n".join(lines)


_SECOND_INDEX = {1: {(0, 0): 0}, 2: {(0, 0): 0, (0, 1): 1, (1, 1): 2},
                 3: {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 1): 3, (1, 2): 4, (2, 2): 5}}
_SLOTS = ("ia", "ib", "ic")
_ZERO = ("0.0", "0")


def _second(op: Op, k: int, j: int) -> str:
    return op.second[_SECOND_INDEX[op.arity][(min(k, j), max(k, j))]]


def _partial_rows(op: Op, ks: list[int], ind: str, extra: list[tuple[str, str]] = ()) -> list[str]:
    """A point loop storing partial ``k`` of each listed operand in ``D[k, p]`` (and the
    extra ``(target, expr)`` pairs), reading only the workspace rows they use."""
    exprs = [(f"D[{k}, p]", op.partials[k]) for k in ks] + list(extra)
    names = sorted({v for _, e in exprs for v in _uses(e)}, key="abcr".index)
    lines = _views(names, ind) + [f"{ind}for p in range(m):"]
    lines += _loads(names, ind + "    ")
    lines += [f"{ind}    {t} = {e}" for t, e in exprs]
    return lines


def _forward_tangent_chunk() -> str:
    """Values and tangents in one pass: ``T[s, d, p]`` is direction ``d`` of slot ``s``."""
    lines = [
        "@njit(cache=True, nogil=True)",
        "def forward_tangent_chunk(prog, W, T, D, nv, m):",
        "    nd = prog[2]",
        "    k = prog[10]",
        "    for i in range(prog[6]):",
        "        op = prog[k]",
        "        ir = prog[k + 1]",
        "        ia = prog[k + 2]",
        "        ib = prog[k + 3]",
        "        ic = prog[k + 4]",
        f"        k += {ROW}",
        "        tr = T[ir]",
        "        for d in range(nv):",
        "            for p in range(m):",
        "                tr[d, p] = 0.0",
    ]
    kw = "if"
    for op in _dispatch_order():
        used = [v for v in _uses(op.value) if v != "r"]
        lines.append(f"        {kw} op == {op.code}:  # {op.name}")
        kw = "elif"
        lines += _views(used + ["r"], "            ")
        lines.append("            for p in range(m):")
        lines += _loads(used, "                ")
        lines.append(f"                wr[p] = {op.value}")
        ks = [k for k in range(op.arity) if op.partials[k] not in _ZERO]
        general = [k for k in ks if op.partials[k] not in ("1.0", "-1.0")]
        if general:
            lines += _partial_rows(op, general, "            ")
        for k in ks:
            lines.append(f"            if {_SLOTS[k]} >= nd:")
            lines.append(f"                tk = T[{_SLOTS[k]}]")
            lines.append("                for d in range(nv):")
            lines.append("                    for p in range(m):")
            if op.partials[k] == "1.0":
                lines.append("                        tr[d, p] += tk[d, p]")
            elif op.partials[k] == "-1.0":
                lines.append("                        tr[d, p] -= tk[d, p]")
            else:
                lines.append(f"                        tr[d, p] += _azmul(tk[d, p], D[{k}, p])")
    return "\n".join(lines)


def _reverse_hvp_chunk() -> str:
    """Adjoints ``A`` and their tangents ``Ad`` (forward-over-reverse), one pass back.

    For operand k of an instruction with result r:
    ``A[k] += A[r] * d_k`` and ``Ad[k] += Ad[r] * d_k + A[r] * sum_j d2_kj * T[j]``,
    every product taken with the zero-times-anything-is-zero rule.
    """
    lines = [
        "@njit(cache=True, nogil=True)",
        "def reverse_hvp_chunk(prog, W, T, A, Ad, D, S, nv, m):",
        "    nd = prog[2]",
        "    k0 = prog[10]",
        "    for i in range(prog[6] - 1, -1, -1):",
        f"        k = k0 + {ROW} * i",
        "        op = prog[k]",
        "        ir = prog[k + 1]",
        "        ia = prog[k + 2]",
        "        ib = prog[k + 3]",
        "        ic = prog[k + 4]",
    ]
    kw = "if"
    for op in _dispatch_order():
        ks = [k for k in range(op.arity) if op.partials[k] not in _ZERO]
        if not ks:
            continue
        lines.append(f"        {kw} op == {op.code}:  # {op.name}")
        kw = "elif"
        general = [k for k in ks if op.partials[k] not in ("1.0", "-1.0")]
        seconds = {(k, j): _second(op, k, j) for k in ks for j in range(op.arity)
                   if _second(op, k, j) not in _ZERO}
        sidx = {kj: n for n, kj in enumerate(seconds)}
        extra = [(f"S[{sidx[kj]}, p]", e) for kj, e in seconds.items()]
        if general or extra:
            lines += _partial_rows(op, general, "            ", extra)
        lines.append("            gr = A[ir]")
        lines.append("            gdr = Ad[ir]")
        for k in ks:
            pk = op.partials[k]
            lines.append(f"            if {_SLOTS[k]} >= nd:")
            lines.append(f"                ga = A[{_SLOTS[k]}]")
            lines.append(f"                gda = Ad[{_SLOTS[k]}]")
            js = [j for j in range(op.arity) if (k, j) in seconds]
            for j in js:
                lines.append(f"                t{j} = T[{_SLOTS[j]}]")
            if pk == "1.0":
                first, dfirst = "gr[p]", "gdr[d, p]"
            elif pk == "-1.0":
                first, dfirst = "-gr[p]", "-gdr[d, p]"
            else:
                first, dfirst = f"_azmul(gr[p], D[{k}, p])", f"_azmul(gdr[d, p], D[{k}, p])"
            lines.append("                for p in range(m):")
            lines.append(f"                    ga[p] += {first}")
            lines.append("                for d in range(nv):")
            lines.append("                    for p in range(m):")
            if js:
                u = " + ".join(f"_azmul(S[{sidx[(k, j)]}, p], t{j}[d, p])" for j in js)
                lines.append(f"                        gda[d, p] += {dfirst} + _azmul(gr[p], {u})")
            else:
                lines.append(f"                        gda[d, p] += {dfirst}")
    return "\n".join(lines)


# Drivers: chunking, loading inputs, parallel loop over threads. ``{PAR}``/``{RANGE}``
# are filled twice, giving a parallel and a serial copy of each batched driver.
_SUPPORT = '''
@njit(cache=True, nogil=True)
def _fill_fixed(prog, consts, P, W):
    # Constants and point-independent parameters: written once per workspace.
    for s in range(prog[1]):
        for p in range(W.shape[1]):
            W[s, p] = consts[s]
    if P.shape[0] == 1:
        o = prog[8]
        for j in range(prog[4]):
            s = prog[o + j]
            for p in range(W.shape[1]):
                W[s, p] = P[0, j]


@njit(cache=True, nogil=True)
def _load(prog, X, P, W, p0, m):
    o = prog[7]
    for j in range(prog[3]):
        s = prog[o + j]
        for p in range(m):
            W[s, p] = X[p0 + p, j]
    if P.shape[0] > 1:
        o = prog[8]
        for j in range(prog[4]):
            s = prog[o + j]
            for p in range(m):
                W[s, p] = P[p0 + p, j]


@njit(cache=True, nogil=True)
def _store_outputs(prog, W, Y, p0, m):
    o = prog[9]
    for k in range(prog[5]):
        s = prog[o + k]
        for p in range(m):
            Y[p0 + p, k] = W[s, p]


@njit(cache=True, nogil=True)
def _zero_adjoints(prog, A, m):
    for s in range(prog[2], prog[0]):
        for p in range(m):
            A[s, p] = 0.0


@njit(cache=True, nogil=True)
def _seed(prog, WT, A, p0, m):
    o = prog[9]
    for k in range(prog[5]):
        s = prog[o + k]
        if WT.shape[0] == 1:
            for p in range(m):
                A[s, p] += WT[0, k]
        else:
            for p in range(m):
                A[s, p] += WT[p0 + p, k]


@njit(cache=True, nogil=True)
def _store_grad(prog, A, G, p0, m):
    o = prog[7]
    for j in range(prog[3]):
        s = prog[o + j]
        for p in range(m):
            G[p0 + p, j] = A[s, p]


@njit(cache=True, nogil=True)
def _point_workspace(prog, consts, x, P):
    W = np.empty((prog[0], 1))
    for s in range(prog[1]):
        W[s, 0] = consts[s]
    o = prog[8]
    for j in range(prog[4]):
        W[prog[o + j], 0] = P[j]
    o = prog[7]
    for j in range(prog[3]):
        W[prog[o + j], 0] = x[j]
    return W


@njit(cache=True, nogil=True)
def forward_point(prog, consts, x, P, y):
    W = _point_workspace(prog, consts, x, P)
    forward_chunk(prog, W, 1)
    o = prog[9]
    for k in range(prog[5]):
        y[k] = W[prog[o + k], 0]


@njit(cache=True, nogil=True)
def value_grad_point(prog, consts, x, P, g):
    W = _point_workspace(prog, consts, x, P)
    forward_chunk(prog, W, 1)
    A = np.zeros((prog[0], 1))
    out = prog[prog[9]]
    A[out, 0] = 1.0
    reverse_chunk(prog, W, A, 1)
    o = prog[7]
    for j in range(prog[3]):
        g[j] = A[prog[o + j], 0]
    return W[out, 0]
'''

_BATCH = '''
@njit(cache=True, nogil=True, parallel={PAR})
def forward_batch_{SUF}(prog, consts, X, P, Y, chunk, nthreads):
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    nt = min(nthreads, nchunks)
    for t in {RANGE}(nt):
        W = np.empty((prog[0], chunk))
        _fill_fixed(prog, consts, P, W)
        for c in range(t, nchunks, nt):
            p0 = c * chunk
            m = min(chunk, n - p0)
            _load(prog, X, P, W, p0, m)
            forward_chunk(prog, W, m)
            _store_outputs(prog, W, Y, p0, m)


@njit(cache=True, nogil=True, parallel={PAR})
def vjp_batch_{SUF}(prog, consts, X, P, WT, Y, G, chunk, nthreads):
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    nt = min(nthreads, nchunks)
    for t in {RANGE}(nt):
        W = np.empty((prog[0], chunk))
        A = np.empty((prog[0], chunk))
        _fill_fixed(prog, consts, P, W)
        for c in range(t, nchunks, nt):
            p0 = c * chunk
            m = min(chunk, n - p0)
            _load(prog, X, P, W, p0, m)
            forward_chunk(prog, W, m)
            _store_outputs(prog, W, Y, p0, m)
            _zero_adjoints(prog, A, m)
            _seed(prog, WT, A, p0, m)
            reverse_chunk(prog, W, A, m)
            _store_grad(prog, A, G, p0, m)


@njit(cache=True, nogil=True, parallel={PAR})
def jacrev_batch_{SUF}(prog, consts, X, P, Y, J, chunk, nthreads):
    n = X.shape[0]
    nchunks = (n + chunk - 1) // chunk
    nt = min(nthreads, nchunks)
    oo = prog[9]
    oi = prog[7]
    for t in {RANGE}(nt):
        W = np.empty((prog[0], chunk))
        A = np.empty((prog[0], chunk))
        _fill_fixed(prog, consts, P, W)
        for c in range(t, nchunks, nt):
            p0 = c * chunk
            m = min(chunk, n - p0)
            _load(prog, X, P, W, p0, m)
            forward_chunk(prog, W, m)
            _store_outputs(prog, W, Y, p0, m)
            for k in range(prog[5]):
                _zero_adjoints(prog, A, m)
                s = prog[oo + k]
                for p in range(m):
                    A[s, p] += 1.0
                reverse_chunk(prog, W, A, m)
                for j in range(prog[3]):
                    s = prog[oi + j]
                    for p in range(m):
                        J[p0 + p, k, j] = A[s, p]
'''


_BATCH2 = '''
@njit(cache=True, nogil=True)
def _zero_low_tangents(prog, T):
    # Constants and parameters have zero tangent; instructions never write these rows.
    for s in range(prog[2]):
        for d in range(T.shape[1]):
            for p in range(T.shape[2]):
                T[s, d, p] = 0.0


@njit(cache=True, nogil=True)
def _seed_tangents(prog, V, T, p0, m):
    o = prog[7]
    for j in range(prog[3]):
        s = prog[o + j]
        for d in range(V.shape[1]):
            if V.shape[0] == 1:
                for p in range(m):
                    T[s, d, p] = V[0, d, j]
            else:
                for p in range(m):
                    T[s, d, p] = V[p0 + p, d, j]


@njit(cache=True, nogil=True, parallel={PAR})
def jvp_batch_{SUF}(prog, consts, X, P, V, Y, TY, chunk, nthreads):
    n = X.shape[0]
    nv = V.shape[1]
    nchunks = (n + chunk - 1) // chunk
    nt = min(nthreads, nchunks)
    oo = prog[9]
    for t in {RANGE}(nt):
        W = np.empty((prog[0], chunk))
        T = np.empty((prog[0], nv, chunk))
        D = np.empty((3, chunk))
        _fill_fixed(prog, consts, P, W)
        _zero_low_tangents(prog, T)
        for c in range(t, nchunks, nt):
            p0 = c * chunk
            m = min(chunk, n - p0)
            _load(prog, X, P, W, p0, m)
            _seed_tangents(prog, V, T, p0, m)
            forward_tangent_chunk(prog, W, T, D, nv, m)
            _store_outputs(prog, W, Y, p0, m)
            for k in range(prog[5]):
                s = prog[oo + k]
                for d in range(nv):
                    for p in range(m):
                        TY[p0 + p, k, d] = T[s, d, p]


@njit(cache=True, nogil=True, parallel={PAR})
def hvp_batch_{SUF}(prog, consts, X, P, V, Y, G, HV, chunk, nthreads):
    n = X.shape[0]
    nv = V.shape[1]
    nchunks = (n + chunk - 1) // chunk
    nt = min(nthreads, nchunks)
    oi = prog[7]
    out = prog[prog[9]]
    for t in {RANGE}(nt):
        W = np.empty((prog[0], chunk))
        T = np.empty((prog[0], nv, chunk))
        A = np.empty((prog[0], chunk))
        Ad = np.empty((prog[0], nv, chunk))
        D = np.empty((3, chunk))
        S = np.empty((6, chunk))
        _fill_fixed(prog, consts, P, W)
        _zero_low_tangents(prog, T)
        for c in range(t, nchunks, nt):
            p0 = c * chunk
            m = min(chunk, n - p0)
            _load(prog, X, P, W, p0, m)
            _seed_tangents(prog, V, T, p0, m)
            forward_tangent_chunk(prog, W, T, D, nv, m)
            _store_outputs(prog, W, Y, p0, m)
            for s in range(prog[2], prog[0]):
                for p in range(m):
                    A[s, p] = 0.0
                for d in range(nv):
                    for p in range(m):
                        Ad[s, d, p] = 0.0
            for p in range(m):
                A[out, p] += 1.0
            reverse_hvp_chunk(prog, W, T, A, Ad, D, S, nv, m)
            for j in range(prog[3]):
                s = prog[oi + j]
                for p in range(m):
                    G[p0 + p, j] = A[s, p]
                for d in range(nv):
                    for p in range(m):
                        HV[p0 + p, d, j] = Ad[s, d, p]
'''


def generate_source() -> str:
    """Return the complete source of the kernel module."""
    parts = [
        '"""Generated by tapejit._codegen from the op table. Do not edit."""',
        "import math",
        "import numpy as np",
        "from numba import get_num_threads, njit, prange",
        HELPERS,
        _forward_chunk(),
        "",
        _reverse_chunk(),
        "",
        _forward_tangent_chunk(),
        "",
        _reverse_hvp_chunk(),
        _SUPPORT,
        _BATCH.format(PAR="True", SUF="par", RANGE="prange", NT="get_num_threads()"),
        _BATCH.format(PAR="False", SUF="ser", RANGE="range", NT="1"),
        _BATCH2.replace("{PAR}", "True").replace("{SUF}", "par").replace("{RANGE}", "prange"),
        _BATCH2.replace("{PAR}", "False").replace("{SUF}", "ser").replace("{RANGE}", "range"),
    ]
    return "\n\n".join(textwrap.dedent(p).strip("\n") + "\n" for p in parts)


def cache_dir() -> Path:
    """Directory that holds the generated kernel source and Numba's cache of it.

    ``TAPEJIT_CACHE_DIR`` overrides the default ``$XDG_CACHE_HOME/tapejit`` (or
    ``~/.cache/tapejit``); an unwritable location falls back to the temp directory.
    """
    env = os.environ.get("TAPEJIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tapejit"


def _write_once(path: Path, source: str) -> None:
    if path.exists() and path.read_text() == source:
        return  # keep the mtime: Numba's cache index is keyed on it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(source)
    os.replace(tmp, path)


def load_kernels() -> ModuleType:
    """Write the generated module (once per distinct source) and import it."""
    source = generate_source()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"tapejit_kernels_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    path = None
    for root in (cache_dir(), Path(tempfile.gettempdir()) / f"tapejit-{os.getuid()}"):
        candidate = root / digest / f"{name}.py"
        try:
            _write_once(candidate, source)
        except OSError:
            continue
        path = candidate
        break
    if path is None:
        raise OSError(
            "tapejit could not write its kernel module to any cache directory; "
            "set TAPEJIT_CACHE_DIR to a writable directory"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
