"""Tapes with instruction family instructions (matmul, cholesky) through everything else:
tape files, the passes, the display, slot reuse, float32 tapes, shared tapes, streamed
evaluation, the njit bundle and Dask. Results are compared with the same tape's float64
methods (bit for bit where the machinery promises it)."""

from __future__ import annotations

import dataclasses
import io
import pickle
import sys

import numpy as np
import pytest
from _njit_caller import enter
from numba.core.errors import TypingError

import tapejit
from tapejit import _io
from tapejit._cli import inspect
from tapejit._fam_matmul import MATMUL
from tapejit._kernels.runtime import kernels
from tapejit._passes import guard_slice, stats
from tapejit._program import FAMILIES, N_SLOTS, Program
from tapejit._show import interpret
from tapejit._slot_reuse import compact
from tapejit._tape import packed
from tapejit._validate import TapeFormatError

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

RNG = np.random.default_rng(19)
X = RNG.standard_normal((6, 3))
W = RNG.standard_normal(3)


def _model(w, X):
    return np.sum(np.sin(X @ w)) + 0.5 * np.sum(w * w)


def _chol(w, X):
    A = X.T @ X + np.eye(3) * np.exp(w)
    L = np.linalg.cholesky(A)
    return np.sum(L * L) + np.sum(np.cos(L @ w))


@pytest.fixture(scope="module")
def tape():
    return tapejit.record(_model, np.ones(3), X, argnums=(0,))


@pytest.fixture(scope="module")
def chol():
    return tapejit.record(_chol, np.ones(3), X, argnums=(0,))


def _same(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.tobytes() == b.tobytes()


def _check_same_tape(t, u, points=(W, -W, 2 * W)) -> None:
    """``u`` evaluates bit for bit as ``t``: values, gradients, Hessian-vector products."""
    x = np.array(points)
    p = X.ravel()
    for a, b in zip(t.value_and_grad(x, p), u.value_and_grad(x, p), strict=True):
        _same(a, b)
    _same(t.forward(x, p), u.forward(x, p))
    _same(t.hvp(W, W[::-1], p), u.hvp(W, W[::-1], p))


# -- tape files ------------------------------------------------------------------------
def _roundtrip(t):
    buf = io.BytesIO()
    t.save(buf)
    buf.seek(0)
    return buf, tapejit.load(buf)


@pytest.mark.parametrize("which", ["tape", "chol"])
def test_file_roundtrip_is_bit_identical(which, request):
    t = request.getfixturevalue(which)
    buf, u = _roundtrip(t)
    _check_same_tape(t, u)
    _same(t.attrs, u.attrs)
    _same(t.attr_offsets, u.attr_offsets)
    z = np.load(io.BytesIO(buf.getvalue()))
    assert int(z["format_version"]) == 3
    assert set(z["family_names"].tolist()) == {FAMILIES[c].name for c in t.opcodes
                                                if c >= 128}
    assert (z["op_codes"] < 128).all()


def test_a_tape_without_families_is_written_in_version_2():
    buf, _ = _roundtrip(tapejit.record(lambda x: np.sin(x) * x[0], np.ones(3)))
    z = np.load(io.BytesIO(buf.getvalue()))
    assert int(z["format_version"]) == 2 and "attrs" not in z.files


def _changed(monkeypatch, tape, **fields):
    """Save ``tape`` with matmul as it is, and load it with matmul changed."""
    buf = io.BytesIO()
    tape.save(buf)
    buf.seek(0)
    monkeypatch.setitem(FAMILIES, 128, dataclasses.replace(FAMILIES[128], **fields))
    return buf


@pytest.mark.parametrize("fields, message", [
    ({"name": "matmul2"}, "was instruction family 'matmul' when this tape was saved"),
    ({"attrs": ("batch", "m", "k", "n", "batch_a", "batch_b", "trans_a", "flip")},
     "had the attributes"),
    ({"kernel": "fam_chol"}, "defined differently"),
    ({"reference": FAMILIES[135].reference}, "defined differently"),
])
def test_a_file_whose_family_changed_is_refused(monkeypatch, tape, fields, message):
    buf = _changed(monkeypatch, tape, **fields)
    with pytest.raises(TapeFormatError, match=message):
        tapejit.load(buf)


def test_a_file_of_an_unknown_family_is_refused(monkeypatch, tape):
    buf = io.BytesIO()
    tape.save(buf)
    buf.seek(0)
    monkeypatch.delitem(FAMILIES, 128)
    with pytest.raises(TapeFormatError, match="does not have"):
        tapejit.load(buf)


def test_family_fingerprint_is_stable_and_distinct():
    fps = {f.name: _io.family_fingerprint(f) for f in FAMILIES.values()}
    assert len(set(fps.values())) == len(fps)
    assert fps == {f.name: _io.family_fingerprint(f) for f in FAMILIES.values()}


def test_too_many_attributes_are_refused_before_reading(tape):
    buf = io.BytesIO()
    tape.save(buf)
    z = dict(np.load(io.BytesIO(buf.getvalue())))
    z["attrs"] = np.zeros(len(tape) * 100, "<i4")
    out = io.BytesIO()
    np.savez(out, **z)
    out.seek(0)
    with pytest.raises(TapeFormatError, match="attributes"):
        tapejit.load(out)


def test_inspect_shows_family_rows(tape, tmp_path, capsys):
    path = tmp_path / "t.npz"
    tape.save(path)
    assert inspect(str(path), point=",".join(map(str, W)),
                   params=",".join(map(str, X.ravel()))) == 0
    out = capsys.readouterr().out
    assert "matmul[batch=1, m=6, k=3, n=1" in out and "matmul 1 (6 elements)" in out


# -- passes ------------------------------------------------------------------------------
def _dup(w, X):
    a = np.sin(X @ w)
    b = np.sin(X @ w)  # the same matmul again: CSE merges it
    unused = np.cos(X @ (2.0 * w))  # noqa: F841  dead: DCE removes both instructions
    return np.sum(a * b)


def test_cse_and_dce_treat_families_as_opaque_nodes():
    t = tapejit.record(_dup, np.ones(3), X, argnums=(0,))
    s, log = t.simplify(report=True)
    n_fam = [int(np.count_nonzero(u.opcodes == MATMUL.opcode)) for u in (t, s)]
    assert n_fam == [3, 1]
    assert [e["pass"] for e in log] == ["fold", "cse", "dce"]
    assert log[0]["instructions_after"] == len(t)  # fold leaves families alone
    x = np.array([W, -W])
    _same(t.forward(x, X.ravel()), s.forward(x, X.ravel()))
    # CSE sums the merged copies' adjoints first: the same numbers up to rounding
    np.testing.assert_allclose(s.gradient(x, X.ravel()), t.gradient(x, X.ravel()),
                               rtol=1e-13)
    d = t.simplify(("dce",))
    assert len(d) == len(t) - 3
    _check_same_tape(t, d)


def test_dce_keeps_data_blocks_whole(chol):
    # a dead constant between live ones: the constant pool is renumbered
    def f(w):
        dead = np.sum(np.array([7.0, 8.0]) * w[:2])  # noqa: F841
        return _chol(w, X * 1.5)

    t = tapejit.record(f, np.ones(3))
    s = t.simplify(("dce",))
    assert len(s) < len(t) and s.n_params == 0
    x = np.array([W, -W])
    for a, b in zip(t.value_and_grad(x), s.value_and_grad(x), strict=True):
        _same(a, b)


def test_cse_keeps_operand_blocks_whole():
    # the block [sin(w0), sin(w0), w1] reads two equal elements: after CSE the block
    # would not be consecutive, so it stays as it is
    def f(w, X):
        v = np.stack([np.sin(w[0]), np.sin(w[0]), w[1]])
        return np.sum(np.cos(X @ v))

    t = tapejit.record(f, np.ones(3), X, argnums=(0,))
    s = t.simplify()
    x = np.array([W, -W])
    _same(t.forward(x, X.ravel()), s.forward(x, X.ravel()))
    np.testing.assert_allclose(s.gradient(x, X.ravel()), t.gradient(x, X.ravel()),
                               rtol=1e-13)


def test_guard_slice_removes_dead_families():
    def f(w, X):
        z = X @ w
        if np.sum(w) > 0:
            return np.sum(np.sin(z))
        return np.sum(z)

    t = tapejit.record(f, np.ones(3), X, argnums=(0,))
    g = guard_slice(t)
    assert g is not None and not (g.opcodes == MATMUL.opcode).any()
    assert g.forward(np.abs(W), X.ravel()) == 1.0


def test_stats_of_a_family_tape(chol):
    s = stats(chol)
    assert s["op_counts"]["cholesky"] == 1 and s["dead_instructions"] == 0
    assert 0 < s["peak_live"] <= s["n_slots"]


# -- display -----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tape", "chol"])
def test_reference_interpreter_matches_the_kernels(which, request):
    t = request.getfixturevalue(which)
    p = X.ravel()
    for wrt in range(3):
        sw = interpret(t, W, p, wrt=wrt)
        np.testing.assert_allclose(sw.values[t.outputs], t.forward(W, p), rtol=1e-13)
        np.testing.assert_allclose(sw.tangents[t.outputs], t.jvp(W, np.eye(3)[wrt], p),
                                   rtol=1e-12)
    np.testing.assert_allclose(sw.adjoints[t.inputs], t.gradient(W, p), rtol=1e-12)


def test_table_and_dot_show_a_family_as_one_node(tape):
    text = tape.table(W, X.ravel())
    rows = [line for line in text.splitlines() if "matmul[" in line]
    assert len(rows) == 1 and rows[0].startswith("v0..v5")
    assert "p0..p17 [18], x0..x2 [3]) -> [6]" in rows[0]
    for dot in (tape.to_dot(), tape.to_dot(W, X.ravel())):
        assert dot.count("matmul[") == 1
        # the data matrix is one node, its parameters none
        assert dot.count("shape=box3d") == 1 and "p3 [" not in dot


# -- slot reuse --------------------------------------------------------------------------
def test_compaction_keeps_family_blocks_whole():
    def f(w, X):
        z = w
        for _ in range(6):  # a chain of products whose inputs die: slots are reused
            z = np.tanh(X.T @ np.sin(X @ z))
        return np.sum(z)

    t = tapejit.record(f, np.ones(3), X, argnums=(0,))
    prog = packed(t)[0]
    comp = compact(prog)
    assert comp[N_SLOTS] < 0.75 * prog[N_SLOTS]
    x = np.array([W, -W, 0.5 * W])
    p = X.ravel()
    # forward() runs the compacted program, value_and_grad() the full workspace
    _same(t.forward(x, p), t.value_and_grad(x, p)[0])
    _same(t.forward(W, p), t.value_and_grad(W, p)[0])
    _same(t.jvp(x, W, p), t.jvp(x, W, p))


# -- float32, shared tapes, streaming, the njit bundle -----------------------------------
def test_float32_tape(chol):
    t32 = chol.astype(np.float32)
    x = np.array([W, -W]).astype(np.float32)
    v, g = t32.value_and_grad(x, X.ravel())
    v64, g64 = chol.value_and_grad(x.astype(np.float64), X.ravel().astype(np.float32))
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, v64, rtol=2**-23)
    np.testing.assert_allclose(g, g64, rtol=2**-22, atol=1e-6)


def test_shared_and_pickled(chol):
    with tapejit.share(chol) as handle:
        t = pickle.loads(pickle.dumps(handle)).attach()
        _check_same_tape(chol, t)
    _check_same_tape(chol, pickle.loads(pickle.dumps(chol)))


def test_evaluate_file(chol, tmp_path):
    pts = RNG.standard_normal((50, 3))
    path = tmp_path / "points.npy"
    np.save(path, pts)
    v, g = tapejit.evaluate_file(chol, path, params=X.ravel(), block_points=16)
    v0, g0 = chol.value_and_grad(pts, X.ravel())
    _same(v, v0)
    _same(g, g0)


@pytest.mark.parametrize("method", ["forward", "value_and_grad", "hessian"])
@pytest.mark.parametrize("routines, message", [
    ("families", "family routine.*was not compiled"), ("sweeps", "a sweep was not compiled")])
def test_a_routine_not_compiled_raises_instead_of_being_called(chol, method, routines,
                                                               message, monkeypatch):
    # The kernels call family routines and the generated sweeps through a table of
    # addresses (the families' slots first), filled before any kernel runs them; an empty
    # slot must raise, never jump to address 0. A family's dispatcher runs inside a sweep's
    # C callable, whose exception Numba reports as unraisable before the sweep's caller
    # raises.
    inside = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: inside.append(str(u.exc_value)))
    module = kernels().module
    table = module._ROUTINE_TABLE
    before = getattr(chol, method)(W, X.ravel())  # every slot this call reads is filled
    saved = list(table)
    cleared = (slice(0, module._SWEEP_SLOT0) if routines == "families"
               else slice(module._SWEEP_SLOT0, len(table)))
    try:
        table[cleared] = [0] * len(range(len(table))[cleared])
        with pytest.raises(RuntimeError, match=message):
            getattr(chol, method)(W, X.ravel())
    finally:
        table[:] = saved
    assert inside == (["tapejit: a family routine was not compiled before the kernel that "
                       "calls it ran (ensure_family_routines)"] if routines == "families"
                      else [])
    after = getattr(chol, method)(W, X.ravel())
    pairs = zip(before, after, strict=True) if method == "value_and_grad" else [(before, after)]
    for a, b in pairs:
        _same(a, b)


def test_a_sweep_called_with_other_arrays_than_it_declares_does_not_compile(tape):
    # A C-called routine rebuilds each array from its address and shape as it declares it
    # (codegen._SWEEP_ARRAYS); a caller passing another kind fails to compile instead of
    # having its memory misread.
    module = kernels().module
    prog, consts = (np.array(a) for a in packed(tape))
    W2 = np.zeros((int(prog[N_SLOTS]), 1))
    with pytest.raises(TypingError, match="C-contiguous 2-d float64 array"):
        module.forward_chunk(prog, consts, np.zeros(3), W2, 1)  # P one point, not a block
    with pytest.raises(TypingError, match="is an integer"):
        module.forward_chunk(prog, consts, np.zeros((1, 3)), W2, 1.0)


def test_njit_bundle(tape):
    args = tape.jit_args(X.ravel())
    g = np.empty(3)
    v = enter(args, W, g, True)
    v0, g0 = tape.value_and_grad(W, X.ravel())
    assert v == v0
    _same(g, g0)


def test_dask(chol):
    da = pytest.importorskip("dask.array")
    td = pytest.importorskip("tapejit.dask")
    pts = RNG.standard_normal((40, 3))
    v, g = td.value_and_grad(chol, da.from_array(pts, chunks=(15, 3)), X.ravel())
    v0, g0 = chol.value_and_grad(pts, X.ravel())
    _same(v.compute(scheduler="threads"), v0)
    _same(g.compute(scheduler="threads"), g0)


def test_program_round_trip_through_passes_keeps_attrs(chol):
    p = Program.from_tape(chol.simplify())
    _same(p.attrs, Program.from_tape(chol).attrs)
