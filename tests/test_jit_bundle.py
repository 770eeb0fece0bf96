"""A ``JitArgs`` bundle cannot make the kernels read or write out of bounds.

Every case alters a fresh bundle whose workspace is a slice of a larger array filled with
a sentinel, and calls an entry point from Python and from one ``@njit`` caller. An
altered bundle raises the error naming the field, and nothing is written: not the
workspace, not what lies past it, not ``g`` or ``out``. A bundle whose replaceable
fields (params, scratch) are replaced by arrays of the right type and size still gives
the tape's numbers, and writes nothing past its workspace.
"""

import copy
import pickle
import re

import numpy as np
import pytest
from _njit_caller import enter as _enter
from numba.core.errors import TypingError

import tapejit
from tapejit._tape import packed, point_floats, reverse_plan

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

SENTINEL = 12345.0


def _rosen(x):
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2


def _rosen_shifted(x):
    # the same program as _rosen (the same instructions over the same slots), other
    # constants
    return 100.0 * (x[1] - x[0] ** 2) ** 2 + (2.0 - x[0]) ** 2


def _chain(x):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s = s + 100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2
    return s


@pytest.fixture(scope="module")
def tapes():
    return {
        "rosen": tapejit.record(_rosen, np.zeros(2)),
        "shifted": tapejit.record(_rosen_shifted, np.zeros(2)),
        "chain": tapejit.record(_chain, np.zeros(12)),  # more slots, a longer program
        "two": tapejit.record(lambda x: x * 2.0, np.ones(2)),
        "model": tapejit.record(lambda w, d: np.sum((w[0] * d - w[1]) ** 2),
                                np.ones(2), np.ones(3), argnums=0),
    }


def _need(tape) -> int:
    return point_floats(tape)


def _fenced(tape, params=None):
    """A bundle whose workspace is the head of a sentinel-filled array (returned too)."""
    args = tape.jit_args(params)
    big = np.full(_need(tape) + 64, SENTINEL)
    return args._replace(workspace=big[: _need(tape)]), big


def _read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


# name -> (tape, alteration of a fenced bundle given all tapes, message)
CASES = {
    "prog of a tape with the same program": (
        "rosen", lambda b, t: b._replace(prog=t["shifted"].jit_args().prog),
        "args.prog is not the program"),
    "prog of a longer program": (
        "rosen", lambda b, t: b._replace(prog=t["chain"].jit_args().prog),
        "args.prog is not the program"),
    "prog and token of another bundle": (
        "rosen", lambda b, t: b._replace(prog=(o := t["shifted"].jit_args()).prog,
                                         token=o.token),
        "args.plan is not the reverse plan"),
    "prog, plan and token of another bundle": (
        "rosen", lambda b, t: b._replace(prog=(o := t["shifted"].jit_args()).prog,
                                         plan=o.plan, token=o.token),
        "args.consts is not the constant pool"),
    "prog, plan and token of a longer program": (
        "rosen", lambda b, t: b._replace(prog=(o := t["chain"].jit_args()).prog,
                                         plan=o.plan, token=o.token),
        "args.consts is not the constant pool"),
    "a read-only copy of prog": (
        "rosen", lambda b, t: b._replace(prog=_read_only(b.prog)),
        "args.prog is not the program"),
    "prog shortened": (
        "rosen", lambda b, t: b._replace(prog=b.prog[:-1]),
        "args.prog is not the program"),
    "prog shorter than a header": (  # found by the fuzz suite: IndexError from Python
        "rosen", lambda b, t: b._replace(prog=b.prog[:3]),
        "args.prog is not the program"),
    "prog empty": (
        "rosen", lambda b, t: b._replace(prog=b.prog[:0]),
        "args.prog is not the program"),
    "token": (
        "rosen", lambda b, t: b._replace(token=b.token ^ 1),
        "or args.token was changed"),
    "plan of another bundle of the same tape": (
        "rosen", lambda b, t: b._replace(plan=t["rosen"].jit_args().plan),
        "args.plan is not the reverse plan"),
    "plan of a longer program": (
        "chain", lambda b, t: b._replace(plan=t["rosen"].jit_args().plan),
        "args.plan is not the reverse plan"),
    "plan shortened": (
        "chain", lambda b, t: b._replace(plan=b.plan[:-1]),
        "args.plan is not the reverse plan"),
    "consts of a tape with the same program": (
        "rosen", lambda b, t: b._replace(consts=t["shifted"].jit_args().consts),
        "args.consts is not the constant pool"),
    "consts shortened": (
        "rosen", lambda b, t: b._replace(consts=b.consts[1:]),
        "args.consts is not the constant pool"),
    "params too short": (
        "model", lambda b, t: b._replace(params=np.zeros(2)),
        "args.params does not have the n_params values"),
    "params too long": (
        "model", lambda b, t: b._replace(params=np.zeros(4)),
        "args.params does not have the n_params values"),
    "workspace one float short": (
        "chain", lambda b, t: b._replace(workspace=b.workspace[:-1]),
        "args.workspace is smaller than the tape needs"),
    "workspace of a smaller tape": (
        "chain", lambda b, t: b._replace(workspace=t["rosen"].jit_args().workspace),
        "args.workspace is smaller than the tape needs"),
    "workspace empty": (
        "rosen", lambda b, t: b._replace(workspace=b.workspace[:0]),
        "args.workspace is smaller than the tape needs"),
    "out empty": (
        "rosen", lambda b, t: b._replace(out=np.full(4, SENTINEL)[:0]),
        "args.out has fewer than n_outputs elements"),
    "two outputs": (
        "two", lambda b, t: b, "needs a tape with one output"),
}


def _call(path: str, grad: bool, args, x, g):
    if path == "njit":
        return _enter(args, x, g, grad)
    if grad:
        return tapejit.jit_value_and_grad(args, x, g)
    return tapejit.jit_value(args, x)


@pytest.mark.parametrize("grad", [True, False], ids=["value_and_grad", "value"])
@pytest.mark.parametrize("path", ["python", "njit"])
@pytest.mark.parametrize("case", list(CASES))
def test_altered_bundle_is_refused_and_writes_nothing(tapes, case, path, grad):
    name, alter, message = CASES[case]
    tape = tapes[name]
    params = np.ones(3) if tape.n_params else None
    fenced, big = _fenced(tape, params)
    args = alter(fenced, tapes)
    x = np.full(tape.n_inputs, 0.5)
    g = np.full(tape.n_inputs, SENTINEL)
    out = args.out if args.out.base is None else args.out.base  # and what lies past it
    out_before = out.copy()
    with pytest.raises(ValueError, match=re.escape(message)):
        _call(path, grad, args, x, g)
    assert (big == SENTINEL).all()  # the kernel did not run: nothing written anywhere
    assert (g == SENTINEL).all()
    np.testing.assert_array_equal(out, out_before)


def test_python_error_names_the_sizes(tapes):
    tape = tapes["chain"]
    args = tape.jit_args()
    with pytest.raises(ValueError, match=f"expected at least {_need(tape)}, got 3"):
        tapejit.jit_value(args._replace(workspace=np.empty(3)), np.zeros(12))
    with pytest.raises(ValueError, match="expected at least 1, got 0"):
        tapejit.jit_value(args._replace(out=np.empty(0)), np.zeros(12))
    model = tapes["model"]
    with pytest.raises(ValueError, match="expected 3, got 2"):
        tapejit.jit_value(model.jit_args(np.ones(3))._replace(params=np.ones(2)),
                          np.zeros(2))
    with pytest.raises(ValueError, match="this tape has 2"):
        tapejit.jit_value(tapes["two"].jit_args(), np.zeros(2))


def _bad_types(args):
    yield "prog", args._replace(prog=np.array(args.prog))  # writeable
    yield "prog", args._replace(prog=args.prog.astype(np.int64))
    yield "plan", args._replace(plan=args.plan.astype(np.uint32))
    yield "consts", args._replace(consts=np.array(args.consts))
    yield "params", args._replace(params=np.zeros(0, np.float32))
    yield "workspace", args._replace(workspace=_read_only(args.workspace))
    yield "workspace", args._replace(workspace=np.zeros(2 * args.workspace.size)[::2])
    yield "out", args._replace(out=np.zeros((1, 1)))
    yield "out", args._replace(out=[0.0])
    yield "token", args._replace(token=float(args.token))
    yield "token", args._replace(token=2**64)


def test_fields_of_other_types_are_refused(tapes):
    args = tapes["rosen"].jit_args()
    x, g = np.zeros(2), np.zeros(2)
    for field, bad in _bad_types(args):
        with pytest.raises(TypeError, match=f"args.{field} must be"):
            tapejit.jit_value_and_grad(bad, x, g)
        with pytest.raises(TypeError, match=f"args.{field} must be"):
            tapejit.jit_value(bad, x)
    # compiled code: at typing, for each field (one caller, no new kernel variant)
    for field, bad in ((f, b) for f, b in _bad_types(args) if f in ("workspace", "prog")):
        with pytest.raises(TypingError, match=f"args.{field} must be"):
            _enter(bad, x, g, True)


def test_bundle_arrays_cannot_be_made_writeable(tapes):
    args = tapes["rosen"].jit_args()
    for a in (args.prog, args.plan, args.consts):
        with pytest.raises(ValueError, match="WRITEABLE"):
            a.flags.writeable = True


def test_copied_bundle_is_refused(tapes):
    args = tapes["rosen"].jit_args()
    for other in (pickle.loads(pickle.dumps(args)), copy.deepcopy(args)):
        with pytest.raises(TypeError, match="prog must be a read-only"):
            tapejit.jit_value(other, np.zeros(2))
    assert tapejit.jit_value(copy.copy(args), np.zeros(2)) == 1.0  # the same arrays


@pytest.mark.parametrize("path", ["python", "njit"])
def test_replaced_scratch_and_params_of_the_right_size_work(tapes, path):
    """The caller's fields may be replaced by arrays of the right type and size: the
    numbers are the tape's, and nothing past the exact-size workspace is written."""
    model = tapes["model"]
    data = np.array([0.5, 1.5, -1.0])
    fenced, big = _fenced(model, data)
    out = np.full(3, SENTINEL)
    args = fenced._replace(params=2 * data, out=out[:1])
    x = np.array([0.3, -0.7])
    g = np.empty(2)
    v, want = _call(path, True, args, x, g), model.value_and_grad(x, params=2 * data)
    assert v == want[0]
    np.testing.assert_array_equal(g, want[1])
    assert _call(path, False, args, x, g) == model.forward(x, params=2 * data)
    assert (big[_need(model):] == SENTINEL).all()
    assert (out[1:] == SENTINEL).all()
    # the chain tape, whose sweeps store partials in the whole workspace
    chain = tapes["chain"]
    args, big = _fenced(chain)
    x = np.linspace(0.1, 0.9, 12)
    g = np.empty(12)
    assert _call(path, True, args, x, g) == chain.value_and_grad(x)[0]
    np.testing.assert_array_equal(g, chain.gradient(x))
    assert (big[_need(chain):] == SENTINEL).all()


def test_each_bundle_is_its_own_copy(tapes):
    tape = tapes["rosen"]
    a, b = tape.jit_args(), tape.jit_args()
    assert a.token != b.token and not np.shares_memory(a.prog, b.prog)
    np.testing.assert_array_equal(a.prog[:-2], packed(tape)[0])  # then the nonce
    np.testing.assert_array_equal(a.plan, reverse_plan(tape))
    np.testing.assert_array_equal(a.consts, tape.consts)
