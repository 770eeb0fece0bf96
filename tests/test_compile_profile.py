"""``tapejit compile --profile``'s recorder (``tapejit/_compile_profile.py``) on small Numba
functions of its own: inclusive and self times, nested compilations, C callables."""

import numpy as np
from numba import cfunc, njit, types

from tapejit._compile_profile import Compiled, Recorder, profile_step, short_type, table


def test_nested_compilations_are_not_counted_twice():
    @njit
    def inner(x):
        return x * 2.0 + 1.0

    @njit
    def outer(x):
        s = 0.0
        for i in range(x.size):
            s += inner(x[i])
        return s

    def c_entry(a):
        inner(float(a))

    recorder = Recorder()
    with recorder.installed():
        outer(np.ones(3))
        cfunc(types.void(types.int64))(c_entry)
    rows = {r.function: r for r in recorder.rows}
    assert set(rows) == {"inner", "outer", "cfunc c_entry"}
    assert rows["outer"].signature == "f64[1d]"
    assert rows["inner"].signature == "f64"
    for r in rows.values():
        assert 0.0 <= r.self <= r.inclusive
        assert r.typing + r.lowering <= r.self + 1e-9
    # inner compiled while outer was typed: outer's self time leaves it out
    assert abs(rows["outer"].inclusive - rows["outer"].self - rows["inner"].inclusive) < 1e-6
    # the C callable is recorded, its callee is compiled already
    assert rows["cfunc c_entry"].inclusive > 0.0
    # nothing is recorded once the recorder is removed
    n = len(recorder.rows)
    inner(np.float32(1.0))
    assert len(recorder.rows) == n


def test_profile_step_and_table():
    @njit
    def f(x):
        return x + 1

    seconds, rows = profile_step("a step", lambda: f(1))
    assert [r.function for r in rows] == ["f", "(not compiling)"]
    assert all(r.step == "a step" for r in rows)
    assert abs(sum(r.self for r in rows) - seconds) < 1e-6
    text = table([*rows, Compiled("g", "f64", 2.0, 1.5, 0.5, 0.5, "other step")])
    assert "per step" in text and "a step" in text and "other step" in text
    assert text.index("  g(f64)") < text.index("  f(i64)")  # longest first


def test_short_types():
    assert short_type("array(float64, 2d, C), int32") == "f64[2d], i32"
    assert short_type("array(float32, 1d, A)") == "f32[1d,A]"
