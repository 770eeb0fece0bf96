"""The Wengert table, the op-table interpreter behind it, and the DOT graph
(``tapejit._show``).

* The table of the seed y = ln(x1) + x1*x2 - sin(x2) at (2, 5) shows the numbers of the
  textbook table (seed 001): v1 = ln 2 = 0.693, v2 = 10, v3 = sin 5 = -0.959,
  v4 = 10.693, y = 11.652, tangent dy/dx1 = 5.5; its adjoint column is the gradient.
* The interpreter (the table's ``value``/``partials`` expressions evaluated with numpy)
  agrees with the Numba kernels for every op, and on recorded functions with blocks,
  parameters and several outputs: values, tangents (jvp) and adjoints (gradient).
* ``to_dot`` has every node and every edge with its local partial; ``render`` runs
  Graphviz when there is one and says so when there is none.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import sys

import numpy as np
import pytest

import tapejit
from tapejit import Tape
from tapejit._ops import BY_CODE as OPS_BY_CODE
from tapejit._ops import BY_NAME, OPS, math_to_numpy
from tapejit._show import interpret, render, table, to_dot


def seed(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


@pytest.fixture(scope="module")
def seed_tape():
    return tapejit.record(seed, 2.0, 5.0)


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows by node name (columns split on runs of 2+ spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("----")) + 1
    rows = {}
    for line in lines[start:]:
        cols = re.split(r"\s{2,}", line.strip())
        rows[cols[0]] = cols[1:]
    return rows


# ---------------------------------------------------------------------------------------
# the seed table
# ---------------------------------------------------------------------------------------
def test_seed_table_in_textbook_numbering(seed_tape):
    text = table(seed_tape, [2.0, 5.0], style="wengert", digits=5)
    rows = _rows(text)
    # inputs v-1 = x1, v0 = x2; the instructions in recording order
    assert rows["v-1"][:4] == ["input", "2", "1", "5.5"]
    assert rows["v0"][:3] == ["input", "5", "0"]
    assert rows["v1"][:3] == ["log(v-1)", "0.69315", "0.5"]  # ln 2, d/dx1 = 1/2
    assert rows["v2"][:3] == ["mul(v-1, v0)", "10", "5"]
    assert rows["v3"][:3] == ["add(v1, v2)", "10.693", "5.5"]
    assert rows["v4"][:3] == ["sin(v0)", "-0.95892", "0"]
    assert rows["v5"][:3] == ["sub(v3, v4)", "11.652", "5.5"]
    assert rows["v5"][-1] == "= y0"
    assert "d(node)/d(v-1)" in text and "d(y0)/d(node)" in text


def test_seed_table_values_and_adjoints(seed_tape):
    rows = _rows(table(seed_tape, [2.0, 5.0], digits=17))
    value = {k: float(v[1]) for k, v in rows.items()}
    assert value["v0"] == pytest.approx(math.log(2.0), rel=1e-15)
    assert value["v1"] == 10.0
    assert value["v3"] == pytest.approx(math.sin(5.0), rel=1e-15)
    assert value["v4"] == pytest.approx(math.log(2.0) + 10 - math.sin(5.0), rel=1e-15)
    assert float(rows["v4"][2]) == 5.5  # tangent dy/dx1
    g = seed_tape.gradient(np.array([2.0, 5.0]))
    assert [float(rows["x0"][3]), float(rows["x1"][3])] == pytest.approx(g, rel=1e-15)
    # adjoints of the intermediate nodes: dy/dv
    assert [float(rows[v][3]) for v in ("v0", "v1", "v2", "v3", "v4")] == [1, 1, 1, -1, 1]
    # the tangent column with respect to x2 ends in dy/dx2
    rows2 = _rows(table(seed_tape, [2.0, 5.0], wrt=1, digits=17))
    assert float(rows2["v4"][2]) == pytest.approx(2.0 - math.cos(5.0), rel=1e-15)


def test_table_limit_keeps_the_output_row(seed_tape):
    text = table(seed_tape, [2.0, 5.0], limit=2)
    rows = _rows(text)
    assert list(rows) == ["x0", "x1", "v0", "v1", "...", "v4"]
    assert rows["..."] == ["3 more"]


def test_table_with_params_guards_and_constant_output():
    def f(x, p):
        y = p[0] * np.sin(x[0]) * x[1]
        if x[0] > 0.0:
            y = y + 1.0
        return y, 3.0, x[1]

    tape = tapejit.record(f, np.array([1.0, 2.0]), np.array([3.0]), argnums=0)
    text = table(tape, [1.0, 2.0], params=[3.0])
    rows = _rows(text)
    assert rows["p0"][0] == "parameter" and "params = [3]" in text
    assert rows["x1"][-1] == "= y2"
    assert "y1 = 3.0 (a constant)" in text
    assert any("guard True: holds" in r[-1] for r in rows.values())
    rows_bad = _rows(table(tape, [-1.0, 2.0], params=[3.0]))
    assert any("guard True: FAILS here" in r[-1] for r in rows_bad.values())


def test_table_argument_errors(seed_tape):
    with pytest.raises(ValueError, match="x must hold 2 values"):
        table(seed_tape, [1.0])
    with pytest.raises(ValueError, match=r"wrt must be an input index in 0\.\.1"):
        table(seed_tape, [1.0, 2.0], wrt=2)
    with pytest.raises(ValueError, match="style must be"):
        table(seed_tape, [1.0, 2.0], style="fancy")
    tape = tapejit.record(lambda x, p: x * p, 1.0, 2.0, argnums=0)
    with pytest.raises(ValueError, match="1 parameters: pass params="):
        table(tape, [1.0])


# ---------------------------------------------------------------------------------------
# the interpreter against the kernels
# ---------------------------------------------------------------------------------------
def _all_slots(tape):
    """The same program with every slot as an output: the kernels' value of each."""
    return Tape(tape.opcodes, tape.args, tape.consts, tape.inputs, tape.params,
                np.arange(tape.n_slots), sizes=tape.sizes, strides=tape.strides,
                attrs=tape.attrs, attr_offsets=tape.attr_offsets)


def _check_against_kernels(tape, x, p=None, rtol=1e-13):
    full = _all_slots(tape)
    for wrt in range(tape.n_inputs):
        sw = interpret(tape, x, p, wrt=wrt)
        v = np.eye(tape.n_inputs)[wrt]
        with np.errstate(all="ignore"):
            np.testing.assert_allclose(sw.values, full.forward(x, p), rtol=rtol, atol=0)
            np.testing.assert_allclose(sw.tangents, full.jvp(x, v, p), rtol=rtol, atol=1e-300)
    for k in range(tape.n_outputs):
        sw = interpret(tape, x, p, output=k)
        w = np.eye(tape.n_outputs)[k]
        with np.errstate(all="ignore"):
            _, g = tape.vjp(x, w, p)
        np.testing.assert_allclose(sw.adjoints[tape.inputs], g, rtol=rtol, atol=1e-300)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_interpreter_matches_kernels_for_every_op(op):
    rng = np.random.default_rng(op.code)
    args = np.zeros((1, 3), np.int64)
    args[0, : op.arity] = np.arange(op.arity)
    tape = Tape(np.array([op.code]), args, np.zeros(0), np.arange(op.arity),
                np.zeros(0, np.int64), np.array([op.arity]))
    for _ in range(5):
        x = np.array([rng.uniform(lo, hi) for lo, hi in op.domain])
        _check_against_kernels(tape, x)


@pytest.mark.parametrize(
    "f, args, kw",
    [
        (seed, (2.0, 5.0), {}),
        (lambda x: np.sum(np.sin(x) * x) + np.prod(np.exp(x[::2])), (np.linspace(0.1, 1, 7),),
         {}),
        (lambda x, p: (p[0] * np.tanh(x), np.hypot(x[0], p[1]) + x[1:] ** 2),
         (np.array([0.3, -1.2, 2.0]), np.array([1.5, 0.5])), {"argnums": 0}),
        (lambda x: np.maximum(x, 0.5) * np.where(x > 1.0, x, -x) + np.abs(x), (np.ones(4),),
         {}),
    ],
    ids=["seed", "blocks", "params-multi", "piecewise"],
)
def test_interpreter_matches_kernels_on_recorded_functions(f, args, kw):
    tape = tapejit.record(f, *args, **kw)
    nums = kw.get("argnums")
    x = np.ravel(args[0]) if nums is not None else np.concatenate([np.ravel(a) for a in args])
    p = np.ravel(args[1]) if nums is not None else None
    _check_against_kernels(tape, x, p)
    x2 = x * 1.3 + 0.1
    _check_against_kernels(tape, x2, p)


def test_interpreter_zero_times_inf_is_zero():
    # y = x * 0 + sqrt(c) with c = 0: d sqrt/dc = inf, but c is a constant; and
    # y = where(x > 5, log(x - x), x): the untaken branch has an infinite partial
    tape = tapejit.record(lambda x: np.where(x > 5.0, np.log(x - x), x), 1.0)
    sw = interpret(tape, [1.0])
    assert sw.adjoints[tape.inputs[0]] == 1.0
    assert tape.gradient(np.array([1.0]))[0] == 1.0


def test_math_names_map_to_numpy_only_where_numpy_agrees():
    # an op whose value is math.log2 but whose reference is another ufunc must not make
    # the interpreter evaluate every math.log2 as that ufunc; np.log2 is right for it
    odd = dataclasses.replace(BY_NAME["arctan2"], name="odd", value="math.log2(a)",
                              numpy=np.logaddexp2)
    assert "log2" not in math_to_numpy([*OPS, odd])
    asin = BY_NAME["arcsin"]
    assert math_to_numpy([asin]) == {"asin": "arcsin"}  # whether or not np.asin exists
    renamed = dataclasses.replace(asin, value="math.nosuchname(a)")
    assert math_to_numpy([renamed]) == {"nosuchname": "arcsin"}  # numpy has no such name
    assert math_to_numpy() == math_to_numpy(OPS)


# ---------------------------------------------------------------------------------------
# DOT
# ---------------------------------------------------------------------------------------
def test_to_dot_has_every_node_and_edge_partial(seed_tape):
    dot = to_dot(seed_tape, [2.0, 5.0])
    assert dot.startswith('digraph "seed" {') and dot.rstrip().endswith("}")
    for node in ("x0", "x1", "v0", "v1", "v2", "v3", "v4", "y0"):
        assert f"  {node} [" in dot
    edges = dict(re.findall(r"(\w+ -> \w+) \[label=\"([^\"]*)\"\]", dot))
    assert edges == {
        "x0 -> v0": "0.5",  # d ln(x1)/dx1
        "x0 -> v1": "5",  # d(x1 x2)/dx1 = x2
        "x1 -> v1": "2",
        "v0 -> v2": "1",
        "v1 -> v2": "1",
        "x1 -> v3": f"{math.cos(5.0):.4g}",
        "v2 -> v4": "1",
        "v3 -> v4": "-1",
    }
    assert "v4 -> y0;" in dot
    assert 'label="v0 = log\\n0.6931"' in dot


def test_to_dot_without_a_point_labels_edges_with_formulas(seed_tape):
    dot = to_dot(seed_tape)
    assert 'x0 -> v0 [label="1.0 / a"]' in dot
    assert 'x1 -> v3 [label="cos(a)"]' in dot
    assert 'x0 -> v1 [label="b"]' in dot


def test_to_dot_constants_params_guards_and_quoting():
    def f(x, p):
        if x > 0:
            return x * p + 2.5
        return x

    tape = tapejit.record(f, 1.0, 3.0, argnums=0)
    tape = Tape(tape.opcodes, tape.args, tape.consts, tape.inputs, tape.params, tape.outputs,
                guards=tape.guards, name='odd "name"')
    dot = to_dot(tape, [1.0], [3.0])
    assert dot.startswith('digraph "odd \\"name\\"" {')
    assert 'label="2.5", shape=plaintext' in dot
    assert "style=dashed" in dot  # the parameter
    assert "guard: True" in dot


def test_to_dot_of_blocks_has_one_node_per_element():
    tape = tapejit.record(lambda x: np.sin(x) * x[::-1], np.ones(4))  # elementwise only
    assert tape.sizes.max() > 1
    dot = to_dot(tape, np.ones(4))
    for j in range(4):
        assert f"x{j} -> v{j} " in dot
    arity = np.array([OPS_BY_CODE[c].arity for c in tape.opcodes])
    assert dot.count(" -> ") == int(np.sum(arity * tape.sizes)) + tape.n_outputs


# ---------------------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------------------
def test_render_without_graphviz(monkeypatch, tmp_path, seed_tape):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz is not installed"):
        render(to_dot(seed_tape), tmp_path / "g.svg")


def test_render_unknown_extension(tmp_path, seed_tape):
    with pytest.raises(ValueError, match="cannot tell the output format"):
        render(to_dot(seed_tape), tmp_path / "g.docx")


@pytest.fixture
def fake_dot(tmp_path, monkeypatch):
    """A stand-in ``dot`` on PATH: writes its arguments and input to the -o file, and
    fails on input containing FAIL."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "dot"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "src = sys.stdin.read()\n"
        "if 'FAIL' in src:\n"
        "    sys.stderr.write('syntax error in line 1')\n"
        "    sys.exit(1)\n"
        "out = sys.argv[sys.argv.index('-o') + 1]\n"
        "open(out, 'w').write(sys.argv[1] + '\\n' + src)\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    return exe


def test_render_runs_dot(fake_dot, tmp_path, seed_tape):
    dot = to_dot(seed_tape, [2.0, 5.0])
    out = render(dot, tmp_path / "g.svg")
    assert out == str(tmp_path / "g.svg")
    written = (tmp_path / "g.svg").read_text()
    assert written.startswith("-Tsvg\n") and written.endswith(dot)
    render(dot, tmp_path / "g.PNG")
    assert (tmp_path / "g.PNG").read_text().startswith("-Tpng\n")
    with pytest.raises(RuntimeError, match="syntax error in line 1"):
        render("FAIL", tmp_path / "h.svg")
