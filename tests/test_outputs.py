"""Outputs are written safely (issue #17): to a temporary file renamed into place on
success only; an output that is an input (by path, symbolic or hard link, or an
``np.memmap`` of it), or two outputs that are one file, are refused before anything is
written; arguments are validated as the Tape methods validate them; a failed call leaves
the previous file at the path untouched and no temporary file behind.

(A kill during ``save`` or ``evaluate_file`` is covered by the fuzz suite.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit import BranchError
from tapejit._atomic import check_distinct, replacing
from tapejit._cli import EXIT_OUTPUT, main

METHODS = ("value_and_grad", "forward", "gradient")


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _temps(directory) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if ".tapejit-" in p.name)


@pytest.fixture(scope="module")
def tape():
    return tapejit.record(_rosen, np.zeros(3))


@pytest.fixture
def pts(tmp_path):
    path = tmp_path / "pts.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2000, 3)))
    return path


@pytest.mark.parametrize("method", METHODS)
def test_output_that_is_the_points_file_is_refused(tape, pts, method):
    before = _digest(pts)
    with pytest.raises(ValueError, match="same file as points"):
        tapejit.evaluate_file(tape, pts, out_path=pts, method=method, block_points=100)
    assert _digest(pts) == before and _temps(pts.parent) == []


@pytest.mark.parametrize("link", ["symlink", "hardlink", "relative", "memmap"])
def test_links_and_other_spellings_of_the_points_file_are_refused(tape, pts, link,
                                                                  monkeypatch):
    before = _digest(pts)
    points, out = pts, pts.parent / "alias.npy"
    if link == "symlink":
        out.symlink_to(pts)
    elif link == "hardlink":
        os.link(pts, out)
    elif link == "relative":
        monkeypatch.chdir(pts.parent / "..")
        out = Path(pts.parent.name) / "." / pts.name
    else:  # an open memory map of the file, as the points
        points, out = np.load(pts, mmap_mode="r"), pts
    with pytest.raises(ValueError, match="same file"):
        tapejit.evaluate_file(tape, points, out_path=out, method="gradient")
    assert _digest(pts) == before


def test_two_outputs_that_are_one_file_are_refused(tape, pts):
    out = pts.parent / "vg.npy"
    np.save(out, np.arange(3.0))
    before = _digest(out)
    for paths in ((out, out), (out, pts.parent / "." / "vg.npy")):
        with pytest.raises(ValueError, match="same file as out_path"):
            tapejit.evaluate_file(tape, pts, out_path=paths)
    assert _digest(out) == before


def test_output_that_is_the_params_file_is_refused(tmp_path):
    t = tapejit.record(lambda x, p: np.sum(p * x ** 2), np.zeros(2), np.ones(2), argnums=0)
    np.save(tmp_path / "x.npy", np.ones((10, 2)))
    np.save(tmp_path / "p.npy", np.ones((10, 2)))
    before = _digest(tmp_path / "p.npy")
    with pytest.raises(ValueError, match="same file as params"):
        tapejit.evaluate_file(t, tmp_path / "x.npy", tmp_path / "p.npy", params=tmp_path / "p.npy",
                              method="gradient")
    assert _digest(tmp_path / "p.npy") == before


def test_params_are_validated_as_the_tape_does_before_writing(tape, pts):
    out = pts.parent / "out.npy"
    np.save(out, np.arange(4.0))
    before = _digest(out)
    with pytest.raises(ValueError) as by_tape:
        tape.value_and_grad(np.zeros((2, 3)), np.ones(2))
    with pytest.raises(ValueError) as by_file:
        tapejit.evaluate_file(tape, pts, out, params=np.ones(2))
    assert str(by_file.value) == str(by_tape.value)
    assert _digest(out) == before and _temps(pts.parent) == []


@pytest.mark.parametrize("method", METHODS)
def test_error_midway_leaves_the_previous_output(tmp_path, method):
    t = tapejit.record(lambda x: x[0] * 2 if x[0] > 0 else -x[0], np.array([1.0]))
    np.save(tmp_path / "x.npy", np.linspace(1.0, -1.0, 300).reshape(-1, 1))
    out = tmp_path / "out.npy"
    np.save(out, np.arange(5.0))
    before = _digest(out)
    with pytest.raises(BranchError):  # the first blocks are fine, a later one is not
        tapejit.evaluate_file(t, tmp_path / "x.npy", out, method=method, block_points=64)
    assert _digest(out) == before and _temps(tmp_path) == []


def test_results_replace_the_file_and_links_are_written_through(tape, pts):
    target = pts.parent / "real.npy"
    np.save(target, np.arange(2.0))
    link = pts.parent / "link.npy"
    link.symlink_to(target)
    _, g = tapejit.evaluate_file(tape, pts, link, block_points=300)
    X = np.load(pts)
    assert link.is_symlink() and np.array_equal(np.load(target)[:, 1:], tape.gradient(X))
    assert np.array_equal(g, tape.gradient(X)) and isinstance(g, np.memmap)
    assert Path(g.filename) == target.resolve()  # the final name, not the temporary one
    assert _temps(pts.parent) == []


def test_file_mode_is_kept_or_follows_the_umask(tape, tmp_path):
    old = tmp_path / "old.npz"
    tape.save(old)
    os.chmod(old, 0o640)
    tape.save(old)
    assert old.stat().st_mode & 0o777 == 0o640
    mask = os.umask(0o027)
    try:
        tape.save(tmp_path / "new.npz")
    finally:
        os.umask(mask)
    assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o640


def test_save_into_a_directory_or_missing_directory(tape, tmp_path):
    with pytest.raises(IsADirectoryError, match="directory"):
        tape.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="no directory"):
        tape.save(tmp_path / "missing" / "t.npz")
    assert _temps(tmp_path) == [] and _temps(tmp_path.parent) == []


def test_save_that_fails_midway_keeps_the_previous_file(tape, tmp_path, monkeypatch):
    path = tmp_path / "t.npz"
    tape.save(path)
    before = _digest(path)

    def broken(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        tapejit.Tape.save(tapejit.record(_rosen, np.zeros(5)), path)
    assert _digest(path) == before and _temps(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed(tape, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    with replacing(tmp_path / "t.npz") as (tmp,):  # a name of this process, then renamed
        host_part = Path(tmp).name.split(".tapejit-")[1].split("-")[0]
    stale = tmp_path / f".t.npz.tapejit-{host_part}-{dead_pid}-00ff.tmp"
    alive = tmp_path / f".t.npz.tapejit-{host_part}-{os.getppid()}-00ff.tmp"
    other_host = tmp_path / f".t.npz.tapejit-0000beef-{dead_pid}-00ff.tmp"
    unrelated = tmp_path / ".t.npz.tmp"
    for p in (stale, alive, other_host, unrelated):
        p.write_bytes(b"x")
    tape.save(tmp_path / "t.npz")
    assert not stale.exists()
    assert alive.exists() and other_host.exists() and unrelated.exists()


def test_check_distinct_ignores_inputs_read_twice(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros(2))
    check_distinct({"out": tmp_path / "b.npy"}, {"points": p, "params": p, "other": None})
    with pytest.raises(ValueError, match="output 1"):
        with replacing(tmp_path / "b.npy", tmp_path / "b.npy"):
            pass  # pragma: no cover


@pytest.mark.parametrize("kind", ["object", "truncated", "npz"])
def test_unreadable_points_files_get_a_tapejit_message(tape, tmp_path, kind):
    path = tmp_path / "bad.npy"
    if kind == "object":
        np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    elif kind == "truncated":
        np.save(path, np.ones((100, 3)))
        path.write_bytes(path.read_bytes()[:400])
    else:
        with open(path, "wb") as fh:
            np.savez(fh, a=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"points file .*bad\.npy.*expected a \.npy file"):
        tapejit.evaluate_file(tape, path)


@pytest.fixture
def cli_files(tape, tmp_path):
    tape.save(tmp_path / "t.npz")
    np.save(tmp_path / "p.npy", np.ones((4, 3)))
    return tmp_path


@pytest.mark.parametrize("out", ["p.npy", "t.npz"])
def test_cli_eval_refuses_to_overwrite_an_input(cli_files, capsys, out):
    d = cli_files
    before = {f: _digest(d / f) for f in ("p.npy", "t.npz")}
    assert main(["eval", str(d / "t.npz"), "--points", str(d / "p.npy"),
                 "--out", str(d / out)]) == EXIT_OUTPUT
    assert "same file" in capsys.readouterr().err
    assert {f: _digest(d / f) for f in before} == before


def test_cli_eval_failure_keeps_the_previous_output(cli_files, capsys):
    d = cli_files
    np.save(d / "bad.npy", np.ones((4, 7)))
    np.save(d / "o.npy", np.arange(3.0))
    before = _digest(d / "o.npy")
    assert main(["eval", str(d / "t.npz"), "--points", str(d / "bad.npy"),
                 "--out", str(d / "o.npy")]) != 0
    assert _digest(d / "o.npy") == before and _temps(d) == []
    capsys.readouterr()
