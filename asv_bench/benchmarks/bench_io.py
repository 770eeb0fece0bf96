"""asv benchmarks of tape reuse: saving/loading tape files, optimization passes, and
evaluation before/after optimization.

* ``TapeFile``: save and load a 1e6-instruction tape (validated on load), file size.
* ``HostileFile``: refusing tiny files that declare huge sizes (time and peak memory).
* ``Passes``: each pass (and the whole pipeline) on tapes of 1e4 and 1e5 instructions
  with repeated subexpressions and dead code; ``track_ns_per_instruction_*`` report the
  time per input instruction.
* ``EvalRepeated``: forward and value_and_grad over many points of a recorded function
  full of repeated subexpressions, before and after ``Tape.simplify``.

Tapes are built in ``setup`` (hand-built arrays where recording would dominate); JIT
warm-up happens in ``setup`` too.
"""

import os
import shutil
import tempfile
import time

import numpy as np

from . import import_tapejit

tapejit, _TAPEJIT_ERROR = import_tapejit()


def _need(module_attr):
    """Import a tapejit submodule or skip (NotImplementedError -> asv skip)."""
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    try:
        return __import__(f"tapejit.{module_attr}", fromlist=["_"])
    except Exception as exc:
        raise NotImplementedError(f"tapejit.{module_attr} unavailable: {exc!r}") from exc


def _simplify():
    """``Tape.simplify`` (the tape passes), or skip on a commit that predates it."""
    if tapejit is None:
        raise NotImplementedError(f"tapejit unavailable: {_TAPEJIT_ERROR}")
    if not hasattr(tapejit.Tape, "simplify"):
        raise NotImplementedError("Tape.simplify unavailable")
    return tapejit.Tape.simplify


def _random_program(n, seed=0, repeat=0.0, dead=0.0):
    """Constructor arguments of a valid random scalar tape: 4 inputs, 3 constants,
    ``n`` instructions over add/mul/sub/sin/exp/tanh reading recent slots. A fraction
    ``repeat`` of instructions repeats an earlier one (operands swapped where the op
    table says that gives the same bits: add, mul);
    roughly a fraction ``dead`` reaches no output."""
    ops_mod = _need("_ops")
    names = ["add", "mul", "sub", "sin", "tanh", "mul", "add"]
    codes = np.array([ops_mod.BY_NAME[k].code for k in names])
    arity = np.array([ops_mod.BY_NAME[k].arity for k in names])
    rng = np.random.default_rng(seed)
    nc, n_in = 3, 4
    n_fixed = nc + n_in
    kind = rng.integers(0, len(names), n)
    ops = codes[kind]
    res = n_fixed + np.arange(n)
    back = rng.integers(1, 40, size=(n, 2))
    args = np.maximum(res[:, None] - back, 0)
    args[:, 1] = np.where(arity[kind] > 1, args[:, 1], 0)
    args = np.concatenate([args, np.zeros((n, 1), np.int64)], axis=1)
    if repeat:
        rep = np.flatnonzero(rng.random(n) < repeat)
        rep = rep[rep > 0]
        src = (rep * rng.random(len(rep))).astype(np.int64)  # an earlier instruction
        ops[rep] = ops[src]
        args[rep] = args[src]
        swappable = [op.code for op in ops_mod.OPS if ops_mod.SWAPPABLE in op.flags]
        swap = np.isin(ops[rep], swappable)
        args[rep[swap], :2] = args[rep[swap]][:, [1, 0]]
    outputs = np.array([res[-1]])
    if dead:  # outputs only from a prefix of the program: the rest is dead
        outputs = np.array([res[int(n * (1 - dead)) - 1]])
    return (ops, args, np.array([0.5, 2.0, -1.0]), nc + np.arange(n_in),
            np.zeros(0, np.int64), outputs)


# ---------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------


class TapeFile:
    """A 1e6-instruction tape: save, load (with full validation), file size."""

    timeout = 300

    def setup(self):
        io = _need("_io")
        self.io = io
        self.tape = tapejit.Tape(*_random_program(10**6))
        self.dir = tempfile.mkdtemp(prefix="tapejit-bench-")
        self.path = os.path.join(self.dir, "big.npz")
        io.save_tape(self.tape, self.path)
        io.load_tape(self.path)

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_save(self):
        self.io.save_tape(self.tape, os.path.join(self.dir, "again.npz"))

    def time_load(self):
        self.io.load_tape(self.path)

    def peakmem_load(self):
        self.io.load_tape(self.path)

    def track_file_bytes(self):
        return os.path.getsize(self.path)

    track_file_bytes.unit = "bytes"


class HostileFile:
    """Refusing tiny hostile tape files (issue #17): one ``exp`` block declaring 2**26
    elements (2.6 KB; 2 GB to evaluate), and ``input_shapes`` of 2e7 entries deflated to
    160 KB. Both must cost about a millisecond and no memory beyond the file."""

    params = ("exp_block", "shapes")
    param_names = ("file",)

    def setup(self, kind):
        import io
        import zipfile

        io_mod = _need("_io")
        buf = io.BytesIO()
        io_mod.save_tape(tapejit.record(np.exp, 1.0), buf)
        buf.seek(0)
        with np.load(buf, allow_pickle=False) as z:
            members = {k: z[k] for k in z.files}
        out = io.BytesIO()
        if kind == "exp_block":
            members["sizes"] = np.array([2**26], dtype="<i4")
            np.savez(out, **members)
        else:
            with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for k, v in members.items():
                    if k != "input_shapes":
                        b = io.BytesIO()
                        np.lib.format.write_array(b, v)
                        zf.writestr(k + ".npy", b.getvalue())
                with zf.open("input_shapes.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array_header_1_0(
                        fh, {"descr": "<i8", "fortran_order": False, "shape": (2 * 10**7,)})
                    for _ in range(160):
                        fh.write(bytes(10**6))
        self.data = out.getvalue()
        self.load, self.error = io_mod.load_tape, tapejit.TapeFormatError

    def _refuse(self):
        import io

        try:
            self.load(io.BytesIO(self.data))
        except self.error:
            return
        raise AssertionError("a hostile file was loaded")

    def time_refuse(self, kind):
        self._refuse()

    def peakmem_refuse(self, kind):
        self._refuse()


class TapeFileNumpy:
    """Baseline for ``TapeFile``: the same arrays through bare ``np.savez``/``np.load``
    (no checks, no Tape)."""

    timeout = 300

    def setup(self):
        ops, args, consts, inputs, params, outputs = _random_program(10**6)
        self.arrays = {"opcodes": ops.astype(np.uint8), "args": args.astype(np.int32),
                       "consts": consts, "inputs": inputs.astype(np.int32),
                       "params": params.astype(np.int32), "outputs": outputs.astype(np.int32)}
        self.dir = tempfile.mkdtemp(prefix="tapejit-bench-")
        self.path = os.path.join(self.dir, "big.npz")
        np.savez(self.path, **self.arrays)

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def time_save(self):
        np.savez(os.path.join(self.dir, "again.npz"), **self.arrays)

    def time_load(self):
        with np.load(self.path, allow_pickle=False) as z:
            {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------
# passes
# ---------------------------------------------------------------------------


class Passes:
    """Each pass on a tape with 30% repeated instructions and 20% dead code."""

    params = (10**4, 10**5)
    param_names = ("n",)
    timeout = 300

    def setup(self, n):
        self.simplify = _simplify()
        self.tape = tapejit.Tape(*_random_program(n, repeat=0.3, dead=0.2))
        self.n = n
        self.simplify(self.tape)  # warm-up (fold runs a kernel)

    def time_fold(self, n):
        self.simplify(self.tape, ["fold"])

    def time_cse(self, n):
        self.simplify(self.tape, ["cse"])

    def time_dce(self, n):
        self.simplify(self.tape, ["dce"])

    def time_pipeline(self, n):
        self.simplify(self.tape)

    def _per_instruction(self, passes):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            self.simplify(self.tape, passes)
            best = min(best, time.perf_counter() - t0)
        return best / self.n * 1e9

    def track_ns_per_instruction_cse(self, n):
        return self._per_instruction(["cse"])

    def track_ns_per_instruction_dce(self, n):
        return self._per_instruction(["dce"])

    def track_instructions_after_pipeline(self, n):
        return len(self.simplify(self.tape))

    track_ns_per_instruction_cse.unit = "ns"
    track_ns_per_instruction_dce.unit = "ns"
    track_instructions_after_pipeline.unit = "instructions"


# ---------------------------------------------------------------------------
# evaluation before / after optimization
# ---------------------------------------------------------------------------


def repeated_f(x):
    """Every term computed twice (operands swapped), plus a dead term per step."""
    total = 0.0
    for i in range(x.shape[0] - 1):
        a = np.sin(x[i] * x[i + 1])
        b = np.sin(x[i + 1] * x[i])
        _unused = np.exp(x[i]) * x[i + 1]
        total = total + a * b + np.exp(-(x[i] * x[i + 1]))
    return total


class EvalRepeated:
    """forward / value_and_grad of ``repeated_f`` (32 inputs) over many points."""

    params = ((False, True), (1000, 100000))
    param_names = ("optimized", "n_points")
    timeout = 300

    def setup(self, optimized, n):
        simplify = _simplify()
        tape = tapejit.record(repeated_f, np.ones(32))
        self.tape = simplify(tape) if optimized else tape
        self.X = np.random.default_rng(0).uniform(-1, 1, size=(n, 32))
        self.y = np.empty(n)
        self.g = np.empty((n, 32))
        self.tape.forward(self.X, out=self.y)
        self.tape.value_and_grad(self.X, out=(self.y, self.g))

    def time_forward(self, optimized, n):
        self.tape.forward(self.X, out=self.y)

    def time_value_and_grad(self, optimized, n):
        self.tape.value_and_grad(self.X, out=(self.y, self.g))

    def track_instructions(self, optimized, n):
        return len(self.tape)

    track_instructions.unit = "instructions"
