"""The main job, ``tapejit demo``, end to end (small sizes)."""

import importlib.util
import io

import numpy as np
import pytest

from tapejit._cli import main
from tapejit._demo import run


def test_demo_runs_end_to_end(tmp_path):
    out = io.StringIO()
    result = run(n_points=5000, steps=200, out_dir=str(tmp_path), out=out)
    text = out.getvalue()
    v, g = result["seed"]
    assert abs(v - (np.log(2) + 10 - np.sin(5))) < 1e-12
    np.testing.assert_allclose(g, [5.5, 2 - np.cos(5)], rtol=1e-14)
    assert "11.6521" in text and "0.693147" in text  # the Wengert table of seed 001
    assert abs(result["w"] - 1.5) < 0.05  # the fit recovers the frequency
    assert result["throughput"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        names = sorted(p.name for p in result["pictures"])
        assert names == ["fit.png", "graph.png", "loss.png"]
        assert all(p.stat().st_size > 1000 for p in result["pictures"])
    else:
        assert "pip install 'tapejit[plot]'" in text


def test_demo_command_exit_code(tmp_path, capsys):
    code = main(["demo", "--points", "1000", "--steps", "5", "--no-pictures"])
    assert code == 0
    assert "found w =" in capsys.readouterr().out


def test_demo_rejects_bad_points(capsys):
    try:
        main(["demo", "--points", "0"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--points 0 was accepted")


# The helper compiles (or, with the kernels cached, loads) the optimised batched kernel:
# with the tests of the kernels, so that on CI's cold cache it does not compile it again.
@pytest.mark.kernels
def test_demo_warm_helper_compiles_in_another_process(monkeypatch):
    """On a cold cache the demo starts a helper process for its batched kernel; the
    helper must start from any working directory and exit cleanly."""
    import os

    from tapejit import _demo
    from tapejit._kernels import runtime

    monkeypatch.setattr(runtime, "is_cached", lambda name: False)
    monkeypatch.setenv("TAPEJIT_KERNELS", "optimized")  # else the tiers' worker compiles
    monkeypatch.chdir(os.path.dirname(os.path.abspath(__file__)))
    helper = _demo._start_warm_helper()
    if (os.cpu_count() or 1) < 2:
        assert helper is None
        return
    assert helper is not None
    assert helper.wait(timeout=600) == 0
    _demo._join(helper)  # already finished: returns at once
