"""The ``tapejit inspect`` and ``tapejit eval`` commands on good and bad files.

Exit codes: 0 success, 1 output not writable (or Graphviz missing), 2 bad tape file or
usage, 3 bad points/params (unreadable, wrong shape, outside the recorded branches).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapejit
from tapejit._cli import main
from tapejit._io import save_tape

ROOT = Path(__file__).resolve().parents[1]


def seed(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def multi(x, p):
    return x[0] * x[1] * p[0], np.sin(x[1]) + p[1]


def guarded(x):
    if x[0] > 0.0:
        return x[0] * x[1]
    return x[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tapes = {
        "seed": tapejit.record(seed, 2.0, 5.0),
        "multi": tapejit.record(multi, np.ones(2), np.ones(2), argnums=0),
        "guarded": tapejit.record(guarded, np.ones(2)),
        "one": tapejit.record(lambda x: np.exp(x) * x, 1.0),
    }
    paths = {}
    for k, t in tapes.items():
        paths[k] = d / f"{k}.npz"
        save_tape(t, paths[k])
    paths["corrupt"] = d / "corrupt.npz"  # truncated
    paths["corrupt"].write_bytes(paths["seed"].read_bytes()[:700])
    paths["text"] = d / "text.npz"
    paths["text"].write_text("not a tape")
    pts = {
        "pts2": np.array([[2.0, 5.0], [1.0, 1.0], [0.5, -2.0]]),
        "pt2": np.array([2.0, 5.0]),
        "pts3": np.zeros((4, 3)),
        "int_pts": np.array([[2, 5], [1, 1]]),
        "params": np.array([0.5, 2.0]),
        "vec": np.linspace(0.0, 1.0, 5),
        "neg": np.array([[1.0, 2.0], [-1.0, 2.0]]),
    }
    for k, a in pts.items():
        paths[k] = d / f"{k}.npy"
        np.save(paths[k], a)
    paths["objects"] = d / "objects.npy"
    np.save(paths["objects"], np.array([[1.0, None]], dtype=object), allow_pickle=True)
    paths["strings"] = d / "strings.npy"
    np.save(paths["strings"], np.array([["a", "b"]]))
    paths["archive"] = d / "archive.npy"
    with open(paths["archive"], "wb") as fh:
        np.savez(fh, a=np.zeros((1, 2)))
    return tapes, paths, d


def run(*args):
    return main([str(a) for a in args])


# ---------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------
def test_inspect(files, capsys):
    tapes, p, _ = files
    assert run("inspect", p["seed"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == repr(tapes["seed"])
    assert lines[1].startswith("instructions 5 (0 blocks, 5 elements)")
    assert "  v0 = log(x0)" in lines and "  return v4" in lines
    assert "Wengert" not in out


def test_inspect_table_and_limit(files, capsys):
    _, p, _ = files
    assert run("inspect", p["seed"], "--table", "2,5", "--limit", "2") == 0
    out = capsys.readouterr().out
    assert "  ... 3 more" in out  # listing
    assert "Wengert list of 'seed' at x = [2, 5]" in out
    assert "11.6521" in out and "= y0" in out
    assert run("inspect", p["multi"], "--table", "1,2", "--params", "3,4", "--wrt", "1",
               "--limit", "0") == 0
    out = capsys.readouterr().out
    assert "params = [3, 4]" in out and "d(node)/d(x1)" in out


def test_inspect_dot(files, capsys, monkeypatch):
    _, p, d = files
    assert run("inspect", p["seed"], "--table", "2,5", "--dot", d / "g.dot") == 0
    assert (d / "g.dot").read_text().startswith('digraph "seed"')
    assert 'x0 -> v0 [label="0.5"]' in (d / "g.dot").read_text()
    capsys.readouterr()
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert run("inspect", p["seed"], "--dot", d / "g.svg") == 1
    assert "Graphviz is not installed" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["corrupt", "text", "missing", "pts2"])
def test_inspect_bad_tape_file(files, capsys, bad):
    _, p, d = files
    path = p.get(bad, d / "missing.npz")
    assert run("inspect", path) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.startswith("tapejit inspect: ") and "tape" in cap.err


def test_inspect_bad_point(files, capsys):
    _, p, _ = files
    assert run("inspect", p["seed"], "--table", "2,5,1") == 3
    assert "--table must hold the tape's 2 input value(s)" in capsys.readouterr().err
    assert run("inspect", p["seed"], "--table", "2,abc") == 3
    assert run("inspect", p["multi"], "--table", "1,2") == 3  # params missing
    assert "parameters" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------
def test_eval_forward_grad_hessian(files, capsys):
    tapes, p, d = files
    t = tapes["seed"]
    X = np.load(p["pts2"])
    out = d / "out.npy"
    assert run("eval", p["seed"], "--points", p["pts2"], "--out", out) == 0
    assert np.array_equal(np.load(out), t.forward(X))
    assert "wrote" in capsys.readouterr().out
    assert run("eval", p["seed"], "--points", p["pts2"], "--grad", "--out", out) == 0
    assert np.array_equal(np.load(out), t.gradient(X))
    assert run("eval", p["seed"], "--points", p["pts2"], "--hessian", "--out", out) == 0
    assert np.array_equal(np.load(out), t.hessian(X))
    assert run("eval", p["seed"], "--points", p["pt2"], "--out", out) == 0
    assert np.load(out).shape == () and float(np.load(out)) == t.forward(np.array([2.0, 5.0]))
    assert run("eval", p["seed"], "--points", p["int_pts"], "--out", out) == 0
    assert np.array_equal(np.load(out), t.forward(np.array([[2.0, 5.0], [1.0, 1.0]])))


def test_eval_writes_exactly_the_name_given(files):
    _, p, d = files
    assert run("eval", p["seed"], "--points", p["pts2"], "--out", d / "result.bin") == 0
    assert (d / "result.bin").exists() and not (d / "result.bin.npy").exists()


def test_eval_multi_output_with_params(files, capsys):
    tapes, p, d = files
    t = tapes["multi"]
    X, P = np.load(p["pts2"]), np.load(p["params"])
    out = d / "m.npy"
    assert run("eval", p["multi"], "--points", p["pts2"], "--params", p["params"],
               "--out", out) == 0
    assert np.array_equal(np.load(out), t.forward(X, P))
    assert run("eval", p["multi"], "--points", p["pts2"], "--params", p["params"],
               "--jacobian", "--out", out) == 0
    assert np.array_equal(np.load(out), t.jacobian(X, P))
    capsys.readouterr()
    assert run("eval", p["multi"], "--points", p["pts2"], "--params", p["params"],
               "--grad", "--out", out) == 3
    assert "use --jacobian" in capsys.readouterr().err
    assert run("eval", p["multi"], "--points", p["pts2"], "--out", out) == 3  # no params
    assert "parameters" in capsys.readouterr().err


def test_eval_one_input_vector_is_many_points(files):
    tapes, p, d = files
    out = d / "v.npy"
    assert run("eval", p["one"], "--points", p["vec"], "--grad", "--out", out) == 0
    x = np.load(p["vec"])
    np.testing.assert_array_equal(np.load(out), tapes["one"].gradient(x[:, None]))


def test_eval_guards(files, capsys):
    _, p, d = files
    out = d / "g.npy"
    assert run("eval", p["guarded"], "--points", p["neg"], "--out", out) == 3
    err = capsys.readouterr().err
    assert "left the branches" in err and "Pass --mask" in err and "check=" not in err
    assert run("eval", p["guarded"], "--points", p["neg"], "--mask", "--out", out) == 0
    assert "1 point(s) left the recorded branches" in capsys.readouterr().err
    y = np.load(out)
    assert y[0] == 2.0 and np.isnan(y[1])


@pytest.mark.parametrize(
    "points, message",
    [
        ("pts3", "--points must hold the tape's 2 input value(s) per point"),
        ("objects", "cannot read points file"),
        ("strings", "must be real numbers"),
        ("archive", "is a .npz archive"),
        ("missing", "cannot read points file"),
        ("text", "cannot read points file"),
    ],
)
def test_eval_bad_points(files, capsys, points, message):
    _, p, d = files
    path = p.get(points, d / "missing.npy")
    assert run("eval", p["seed"], "--points", path, "--out", d / "x.npy") == 3
    cap = capsys.readouterr()
    assert cap.err.startswith("tapejit eval: ") and message in cap.err


def test_eval_bad_params_file(files, capsys):
    _, p, d = files
    assert run("eval", p["multi"], "--points", p["pts2"], "--params", p["pts3"],
               "--out", d / "x.npy") == 3
    err = capsys.readouterr().err
    assert "--params must hold the tape's" in err and "params=" not in err


@pytest.mark.parametrize("bad", ["corrupt", "text", "missing"])
def test_eval_bad_tape_file(files, capsys, bad):
    _, p, d = files
    assert run("eval", p.get(bad, d / "nope.npz"), "--points", p["pts2"],
               "--out", d / "x.npy") == 2
    assert capsys.readouterr().err.startswith("tapejit eval: ")


def test_eval_unwritable_output(files, capsys):
    _, p, d = files
    assert run("eval", p["seed"], "--points", p["pts2"], "--out", d) == 1
    assert "cannot write" in capsys.readouterr().err


def test_usage_errors_exit_2(files):
    _, p, _ = files
    with pytest.raises(SystemExit) as exc:
        run("eval", p["seed"], "--points", p["pts2"])  # --out missing
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run("eval", p["seed"], "--points", p["pts2"], "--grad", "--jacobian", "--out", "o")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run("frobnicate")
    assert exc.value.code == 2


def test_python_dash_m(files):
    """The installed entry point, as a user runs it (one process each way)."""
    tapes, p, d = files
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = d / "sub.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "tapejit", "eval", str(p["seed"]), "--points", str(p["pts2"]),
         "--grad", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(out), tapes["seed"].gradient(np.load(p["pts2"])))
    proc = subprocess.run(
        [sys.executable, "-m", "tapejit", "inspect", str(p["corrupt"])],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("tapejit inspect: ") and proc.stdout == ""


def test_kernels_lists_the_sweeps_and_their_origin(capsys):
    assert main(["kernels"]) == 0
    out = capsys.readouterr().out
    assert "reverse_stored_chunk: tapejit/_kernels/reverse.py" in out
    assert "forward_chunk: generated from the op table by tapejit._kernels.codegen._forward" in out
    assert main(["kernels", "--list"]) == 0
    assert capsys.readouterr().out == out


def test_kernels_prints_an_ops_code(capsys):
    assert main(["kernels", "--op", "mul", "--sweep", "forward"]) == 0
    out = capsys.readouterr().out
    assert "if op == 3:  # mul" in out and "wr[p] = a * b" in out
    assert "_sin(a)" not in out  # only mul's branch
    assert main(["kernels", "--op", "mul", "--sweep", "reverse"]) == 0
    out = capsys.readouterr().out
    assert "no per-op code" in out and "d/db = a: the value of a times 1.0" in out


@pytest.mark.parametrize("args, named", [
    (["--op", "mull", "--sweep", "reverse"], "'add', 'sub', 'mul'"),
    (["--op", "mul", "--sweep", "backward"], "'forward', 'forward_point'"),
])
def test_kernels_unknown_op_or_sweep(capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        main(["kernels", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and named in err


def test_kernels_needs_op_and_sweep_together(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["kernels", "--op", "mul"])
    assert exc.value.code == 2
    assert "give both --op and --sweep" in capsys.readouterr().err


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_compile_needs_a_positive_job_count(capsys, jobs):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--jobs", jobs])
    assert exc.value.code == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("jobs", [0, 1.5, True])
def test_compile_kernels_refuses_a_bad_job_count(jobs):
    from tapejit._warmup import compile_kernels

    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        compile_kernels(jobs)
