"""The :class:`Tape`: a recorded function as flat arrays, and its evaluation methods.

Slot layout (one float64 row per slot in a sweep's workspace)::

    [ constants | parameters | inputs | instruction results ]
      0 ... nc-1                        nd = nc + n_params is the first slot that
                                        receives adjoints

All integer data lives in one packed int32 *program* handed to the kernels in a single
argument (fewer arguments make the per-call dispatch cheaper): a header of named fields,
then the input, parameter and output slots, the instruction rows (opcode, first result
slot, first slots and slot strides of operands a, b, c, size, attribute offset), the
guards, and the sections of instruction families (attributes, sub-programs). The layout
and every field's name are in :mod:`tapejit._program`.

A *guard* records a Python branch taken on a traced value while recording (``if x > 0``);
every evaluation checks every guard at every point, and a point where one fails is never
given this tape's values (``check=`` of the evaluation methods).

The public views (:attr:`Tape.opcodes`, :attr:`Tape.args`, ...) are read-only slices of
that buffer.

Package-internal interface. Other modules of tapejit never touch a tape's private
attributes; what they need beyond the public API goes through the functions at the end of
this module, each taking the tape:

* :func:`packed`: the packed program and constants (read-only; for copies and hashes),
  and :func:`from_packed`, a tape over such arrays (validated, not copied);
* :func:`kernel_arrays`: the program and constants handed to the kernels;
* :func:`reverse_plan`, :func:`forward_program`: the programs a tape derives from its
  own on first use and keeps (the reverse sweeps' plan; the slot-compacted forward
  program with its slot count and chunk);
* :func:`point_floats`: the one-point workspace size;
* :func:`require_one_output`, :func:`guarded`: the argument check and the guard policy
  of the evaluation methods, for evaluators of their own (``Float32Tape``);
* :func:`dask_in`, :func:`lazily`, :data:`PLAIN`: the Dask dispatch of the methods;
* :func:`evaluate_keep_failed`: an evaluation method in the tape cache's guard mode
  (``check="mask"``, failed points' results left as computed);
* :func:`install_for_tests`: a test hook that replaces the derived programs (a plan that
  zeroes every adjoint, the uncompacted forward program) and the batch chunk.

The kernels themselves, the thread pool that runs batches and the chunk policy are in
:mod:`tapejit._kernels.runtime`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import numpy as np

from ._errors import BranchError
from ._fam_loop import kept_floats
from ._kernels.runtime import (
    DIR_BLOCK,
    REUSE_DIRECTIONS,
    REUSE_SLOTS,
    chunk_for,
    chunk_of,
    in_parts,
    kernels_for,
    run_batch,
)
from ._ops import BY_CODE
from ._program import (
    ARG_A,
    ATTR,
    FAMILIES,
    FIRST_ADJOINT,
    FIRST_ORDER_SWEEPS,
    MAX_ARITY,
    N_CONSTS,
    N_GUARDS,
    N_INPUTS,
    N_INSTR,
    N_OUTPUTS,
    N_PARAMS,
    N_SLOTS,
    N_SUBPROGRAMS,
    OPCODE,
    RESULT,
    SECOND_ORDER_SWEEPS,
    SIZE,
    STRIDE_A,
    Program,
    attrs_of,
    code_of,
    family_codes,
    first_result,
    guards_of,
    inputs_of,
    outputs_of,
    params_of,
    upgrade,
    working_slots,
)
from ._scalar_program import scalar_bodies, scalar_program
from ._segments import (
    BLOCK_HVP_ELEMENTS,
    BLOCK_POINTWISE_HVP_CHUNK,
    BLOCK_POINTWISE_RATIO,
    LOOP_FORWARD_POINT_BY_POINT_BELOW,
    LOOP_POINT_BY_POINT_BELOW,
    POINT_BY_POINT_BELOW,
    POINT_BY_POINT_JVP_BELOW,
    SEGMENT_BELOW,
    SEGMENT_POINTS,
    split,
)
from ._segments import vjp_batch as segmented_vjp
from ._timed_choice import TimedChoice
from ._validate import check_runnable, check_tape_arrays

_F64 = np.dtype(np.float64)
_EMPTY2 = np.zeros((1, 0))
_EMPTY1 = np.zeros(0)
_EMPTY2.flags.writeable = _EMPTY1.flags.writeable = True

#: Tapes of at least this many instructions run their forward and tangent sweeps over a
#: slot-compacted program (``_slot_reuse``) when it needs at most 3/4 of the slots.
_COMPACT_MIN_INSTR = 16

def _structured(params: tuple | list, n: int) -> object:
    """``params`` given as the recorded arguments they stand for (``params=(X, y)`` for
    ``record(f, w, X, y, argnums=0)``): their values flat and in order, where the parts
    are arrays that hold ``n`` numbers in all. Anything else is returned as it is."""
    if all(np.ndim(q) == 0 for q in params):
        return params
    parts = [np.asarray(q, dtype=np.float64).ravel() for q in params]
    sizes = [q.size for q in parts]
    if sum(sizes) == n:
        return np.concatenate(parts)
    if len({np.shape(q) for q in params}) > 1:
        raise ValueError(
            f"params given as a sequence of arrays must hold the tape's {n} parameter "
            f"values in all (the non-differentiated arguments, in order); got arrays of "
            f"sizes {sizes}"
        )
    return params


def _as_points(x, n: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous, writeable float64 array of shape ``(n,)`` or ``(N, n)``."""
    if type(x) is not np.ndarray:
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{what} must be an array of real numbers: {exc}") from None
    if x.dtype != _F64:
        if x.dtype.kind not in "iuf":
            raise TypeError(
                f"{what} must hold real numbers (float or integer dtype); got dtype {x.dtype}"
            )
        x = x.astype(np.float64)
    if x.ndim == 0 and n == 1:
        x = x.reshape(1)
    if not (x.ndim == 1 and x.shape[0] == n) and not (x.ndim == 2 and x.shape[1] == n):
        raise ValueError(
            f"{what} must have shape ({n},) for one point or (n_points, {n}) for many; "
            f"got shape {x.shape}"
        )
    flags = x.flags
    if not (flags.c_contiguous and flags.writeable):
        x = np.array(x, dtype=np.float64, order="C")
    return x


def _buffer(out, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Validate a user ``out=`` buffer, or allocate one."""
    if out is None:
        return np.empty(shape)
    if not isinstance(out, np.ndarray) or out.dtype != _F64:
        raise TypeError(f"{what} must be a float64 numpy array")
    if out.shape != shape:
        raise ValueError(f"{what} must have shape {shape}; got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{what} must be C-contiguous and writeable")
    return out


_ND = np.ndarray
#: Types of arguments that are never Dask collections, ruled out inline by the methods
#: before they call :func:`dask_in`.
PLAIN = (np.ndarray, type(None))


def dask_in(*args) -> bool:
    """Whether an argument is a Dask collection, by the collection protocol (the type has
    ``__dask_graph__``): Dask is never imported for this. Numpy arrays and ``None`` are
    ruled out first (callers do it inline, before calling): a failed ``hasattr`` on a
    type costs about 0.35 us (it raises inside), too much for the one-point calls."""
    for a in args:
        t = type(a)
        if t is not np.ndarray and a is not None and hasattr(t, "__dask_graph__"):
            return True
    return False


#: Methods whose out= buffers :func:`tapejit.dask.store` fills from Dask arrays.
_STORABLE = ("forward", "value_and_grad", "gradient", "jacobian")


def lazily(tape, method: str, x, extra: tuple, params, out=None, **kwargs):
    """``tapejit.dask.<method>(tape, x, *extra, params, **kwargs)``: a tape method's
    path for Dask collections, lazy Dask arrays out. ``out=`` buffers make no sense
    for results not computed yet: the error names what does that."""
    if out is not None and not (isinstance(out, tuple) and all(o is None for o in out)):
        how = (f"tapejit.dask.store(tape, {method!r}, X, out, params) computes into them"
               if method in _STORABLE else
               "dask.array.store(lazy results, out) computes into them")
        raise ValueError(f"{method} got Dask arrays and out= buffers: with Dask arrays "
                         f"it returns lazy Dask arrays and fills no buffers; {how}")
    # lazy: Dask is optional (installed here: an argument is a collection), and
    # tapejit.dask builds on Tape
    from . import dask as lazy

    return getattr(lazy, method)(tape, x, *extra, params, **kwargs)


def _row(A: np.ndarray, q: int) -> np.ndarray:
    """Point ``q``'s row of per-point ``A``, or the one row all points share."""
    return A[0 if A.shape[0] == 1 else q]


def _at_each_point(n: int, valid: np.ndarray, one: Callable[[int], int]) -> np.ndarray:
    """``valid[q] = one(q) == 0`` at every point ``q < n``, the points shared between the
    threads (``in_parts``): a one-point kernel at each point, ``one`` returning its count
    of failed guards. Returns ``valid``."""

    def part(lo: int, hi: int) -> None:
        for q in range(lo, hi):
            valid[q] = one(q) == 0

    in_parts(n, part, 1)
    return valid


def _rows(A: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Points ``lo .. hi - 1``'s rows of per-point ``A``, or the one row all share."""
    return A if A.shape[0] == 1 else A[lo:hi]


class Tape:
    """A recorded function: a flat list of instructions over numbered value slots.

    Create one with :func:`tapejit.record` (or from arrays, which are validated:
    :class:`~tapejit.TapeFormatError` on anything a kernel could not run safely). A tape
    is immutable and safe to share between threads; every evaluation allocates its own
    workspace.

    Points are given as ``x`` of shape ``(n_inputs,)`` for one point or
    ``(n_points, n_inputs)`` for many. Parameters (arguments recorded as not
    differentiated) are given as ``params`` of shape ``(n_params,)`` (the same for every
    point) or ``(n_points, n_params)``.
    """

    def __init__(
        self,
        opcodes: np.ndarray,
        args: np.ndarray,
        consts: np.ndarray,
        inputs: np.ndarray,
        params: np.ndarray,
        outputs: np.ndarray,
        *,
        input_shapes: tuple[tuple[int, ...], ...] = (),
        output_shapes: tuple[tuple[int, ...], ...] = (),
        name: str = "",
        guards: np.ndarray | None = None,
        sizes: np.ndarray | None = None,
        strides: np.ndarray | None = None,
        attrs: np.ndarray | None = None,
        attr_offsets: np.ndarray | None = None,
        subprograms: tuple = (),
    ) -> None:
        prog, consts = check_tape_arrays(opcodes, args, consts, inputs, params, outputs,
                                         guards, sizes, strides, attrs=attrs,
                                         attr_at=attr_offsets,
                                         subprograms=tuple(subprograms)).pack()
        self._adopt(prog, consts, input_shapes, output_shapes, name)

    def _adopt(self, prog: np.ndarray, consts: np.ndarray, input_shapes: tuple,
               output_shapes: tuple, name: str, private: bool = False) -> None:
        """Take a validated packed program and constant pool as they are (no copy).

        Both are seen through read-only views: a tape is immutable. The kernels are
        given the arrays themselves when this tape owns them (``_kernel_prog``,
        ``_kernel_consts``; nothing writes them): Numba's dispatcher types a writeable
        array from a table but a read-only one by a slower fingerprint, per array and
        call, which matters on the one-point path, and compiles a read-only variant of
        every kernel. ``private`` arrays (see ``_from_packed``) count as owned. A tape over
        memory it does not own passes its read-only views, at the cost of that variant.
        """
        check_runnable(prog)
        own = private or (prog.flags.owndata and consts.flags.owndata)
        self._kernel_prog = prog if own and prog.flags.writeable else None
        self._kernel_consts = consts if own and consts.flags.writeable else None
        prog, consts = prog.view(), consts.view()
        prog.flags.writeable = False
        consts.flags.writeable = False
        self._prog = prog
        self._consts = consts
        if self._kernel_prog is None or self._kernel_consts is None:
            self._kernel_prog, self._kernel_consts = prog, consts
        n_slots, n_in, n_par, n_out = (int(prog[f]) for f in (N_SLOTS, N_INPUTS, N_PARAMS,
                                                              N_OUTPUTS))
        self._n_guards = int(prog[N_GUARDS])
        self._n_slots = n_slots
        self._n_in, self._n_par, self._n_out = n_in, n_par, n_out
        self._chunk = chunk_of(working_slots(prog))
        # Result elements per instruction: a tape of long blocks batches its sweeps of
        # a few points a chunk one point at a time (_pointwise).
        n_instr = int(prog[N_INSTR])
        self._block_elements = (n_slots - first_result(prog)) / n_instr if n_instr else 0.0
        self._fwd = None  # (program, n_slots, chunk) of the forward sweeps, on first use
        self._rev = None  # the reverse plan, on first use
        self._seg = None  # the segmented reverse sweeps of a long tape, on first use
        self._sp = None  # the scalar program (False: not all scalar), on first use
        self._scalar_loops = scalar_bodies(prog)  # loops whose steps run scalar programs
        self._call = None  # the shapes a call takes and returns (__call__), on first use
        # Instruction families: their routines for values and gradients are compiled (or
        # loaded) now, those of the tangent and second-order sweeps on first use.
        self._families = family_codes(prog)
        # The kernels of tapes with these families: each optimised, or generic while the
        # optimised ones compile in the background (_kernels/tiers.py).
        self._k = kernels_for(self._families)
        if self._families:
            self._k.ensure_family_routines(self._families, FIRST_ORDER_SWEEPS)
        self._fam_pending = bool(self._families)
        self.input_shapes = input_shapes
        self.output_shapes = output_shapes
        self.name = name
        self._ones = np.ones((1, max(n_out, 1)))
        # Single-point fast path: checks that cost tens of ns each, nothing else.
        self._shape1 = (n_in,)
        self._fast_vg = n_out == 1
        self._pshape1 = (n_par,)
        # Large tapes reuse a per-thread workspace: allocating (and page-faulting) a big
        # one per call would cost more than the sweep.
        # So do tapes whose loops keep their steps for the reverse at one point: that room
        # is most of their workspace (_fam_loop.kept_floats).
        self._kept = kept_floats(prog)
        self._tls = threading.local() if n_slots > REUSE_SLOTS or self._kept else None
        # Sparsity patterns and colourings, computed on first use (_sparse_plan), and the
        # timed choice of how a few colours run at one point (_colours_at_one_point)
        self._sparse: dict[str, object] = {}

    @classmethod
    def _from_packed(cls, prog: np.ndarray, consts: np.ndarray, input_shapes: tuple = (),
                     output_shapes: tuple = (), name: str = "", private: bool = False) -> Tape:
        """A tape over an existing packed program (e.g. in shared memory), not copied.

        The program is decoded and fully validated first (``Program.unpack``); it must be
        a C-contiguous int32 array and is used as it is (through a read-only view), so the
        caller must not modify it afterwards. ``private``: the caller vouches that nothing
        else holds the two arrays (a private mapping of a shared block), so the kernels may
        be given them as they are, like arrays the tape owns. A program of format version
        1 (pickled or shared by an earlier tapejit) is converted: the tape then holds a new
        copy.
        """
        prog, consts = upgrade(np.asarray(prog), np.asarray(consts))
        Program.unpack(prog, consts)
        tape = cls.__new__(cls)
        tape._adopt(prog, consts, tuple(map(tuple, input_shapes)),
                    tuple(map(tuple, output_shapes)), name, private)
        return tape

    def __reduce__(self):
        # Pickles as the packed program and constants (two flat arrays): cheap, and
        # validated again when unpickled.
        return (_unpickle, (np.array(self._prog), np.array(self._consts), self.input_shapes,
                            self.output_shapes, self.name))

    # -- calling a tape, and its arrays for Numba code (implemented in _compose, _jit_api) --
    def __call__(self, *args, params=None):
        """Call the recorded function: on numbers, evaluate; on traced values, inline.

        Parameters
        ----------
        *args : float, array_like or traced value
            One per recorded (differentiated) argument, in order, each shaped as when
            recorded (a tape built from arrays takes one vector of ``n_inputs``).
        params : array_like or traced value, optional
            The ``n_params`` parameter values (the non-differentiated arguments,
            flattened and concatenated); required when the tape has parameters.

        Returns
        -------
        float, ndarray, traced value or tuple of them
            The outputs shaped as the recorded function returned them (a tuple when it
            returned several). Inside :func:`tapejit.record` the tape's instructions and
            guards are recorded into the outer tape, so its derivatives flow through.

        Raises
        ------
        ValueError
            On a wrong number of arguments or a wrong shape.
        BranchError
            If the arguments leave a branch recorded in the tape.

        Examples
        --------
        >>> import numpy as np, tapejit
        >>> inner = tapejit.record(lambda v: np.sin(v) * v, np.zeros(2))
        >>> inner(np.array([0.0, 1.0])).round(6).tolist()
        [0.0, 0.841471]
        >>> outer = tapejit.record(lambda x: np.sum(inner(2 * x)), np.zeros(2))
        >>> float(outer.forward(np.array([0.0, 0.5]))) == float(np.sin(1.0))
        True
        """
        if (len(args) == 1 and params is None and self._plain_point(args[0], None)
                and self.output_shapes == ((),) and self.input_shapes == (self._shape1,)):
            return self.forward(args[0])  # the hot path: numbers in, one number out
        # lazy: the tracer machinery, needed only when called on traced values
        from ._compose import call_shapes, call_tape

        ins, outs, shapes = self._call or (None, None, None)
        if ins is not self.input_shapes or outs is not self.output_shapes:
            # kept while the shape attributes are the same objects
            shapes = call_shapes(self)
            self._call = (self.input_shapes, self.output_shapes, shapes)
        return call_tape(self, args, params, shapes)

    def jit_args(self, params=None):
        """The tape's arrays for :func:`tapejit.jit_value_and_grad` in Numba code.

        Parameters
        ----------
        params : array_like, optional
            The ``n_params`` parameter values (required when the tape has any); the
            bundle holds a writeable copy a Numba function may update in place.

        Returns
        -------
        JitArgs
            A named tuple of an immutable copy of the validated program, its reverse
            plan and the constants, the parameters, scratch buffers sized for this
            tape, the kernels' stamp and an integrity token. Every call checks the
            bundle, and refuses one whose program, plan or constants were replaced
            (see :class:`~tapejit.JitArgs`). The scratch buffers make a bundle
            single-threaded: use one per thread.
        """
        from ._jit_api import jit_args

        if self._families:  # Numba code runs the optimised kernels, and they these
            self._k.module.ensure_family_routines(self._families, FIRST_ORDER_SWEEPS)
        return jit_args(self._prog, self._real_plan(), self._consts, self._point_floats(),
                        self._n_out, params)

    # -- structure -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of instructions."""
        return int(self._prog[N_INSTR])

    @property
    def n_inputs(self) -> int:
        """Number of differentiated inputs (all recorded arguments, flattened)."""
        return self._n_in

    @property
    def n_params(self) -> int:
        """Number of non-differentiated parameters."""
        return self._n_par

    @property
    def n_outputs(self) -> int:
        """Number of outputs (all returned values, flattened)."""
        return self._n_out

    @property
    def n_slots(self) -> int:
        """Number of value slots a sweep's workspace holds per point."""
        return self._n_slots

    def _code(self) -> np.ndarray:
        return code_of(self._prog)

    @property
    def guards(self) -> np.ndarray:
        """Recorded branch decisions, ``(n_guards, 2)``: comparison slot and outcome (1/0)."""
        return guards_of(self._prog)

    @property
    def n_guards(self) -> int:
        """Number of recorded branch decisions (0 for branch-free code)."""
        return self._n_guards

    @property
    def opcodes(self) -> np.ndarray:
        """Opcode of each instruction (see :data:`tapejit.OPS`), read-only."""
        return self._code()[:, OPCODE]

    @property
    def results(self) -> np.ndarray:
        """First result slot of each instruction (a block writes consecutive slots)."""
        return self._code()[:, RESULT]

    @property
    def args(self) -> np.ndarray:
        """First operand slots, ``(len(tape), 3)``; unused operands are 0. Read-only."""
        return self._code()[:, ARG_A : ARG_A + MAX_ARITY]

    @property
    def sizes(self) -> np.ndarray:
        """Elements of each instruction: 1 for scalar, more for a block. Read-only."""
        return self._code()[:, SIZE]

    @property
    def strides(self) -> np.ndarray:
        """Operand slot strides of each instruction, ``(len(tape), 3)``; for a family
        instruction (opcode from 128), each operand block's length. Read-only."""
        return self._code()[:, STRIDE_A : STRIDE_A + MAX_ARITY]

    @property
    def attrs(self) -> np.ndarray:
        """Integer attributes of the family instructions (shapes, flags), read-only; an
        instruction's start at :attr:`attr_offsets`."""
        return attrs_of(self._prog)

    @property
    def attr_offsets(self) -> np.ndarray:
        """Offset in :attr:`attrs` of each instruction's first attribute (0 for an
        elementwise instruction). Read-only."""
        return self._code()[:, ATTR]

    @property
    def subprograms(self) -> tuple:
        """The nested programs the family instructions run (loop bodies), each a
        ``Subprogram(program, consts_at)`` whose constants are ``consts[consts_at:]``;
        empty for a tape without loops."""
        if not int(self._prog[N_SUBPROGRAMS]):
            return ()
        return Program.unpack(self._prog, self._consts).subprograms

    @property
    def consts(self) -> np.ndarray:
        """The constant pool: slot ``k < len(consts)`` holds ``consts[k]``. Read-only."""
        return self._consts

    @property
    def inputs(self) -> np.ndarray:
        """Slot of each input, read-only."""
        return inputs_of(self._prog)

    @property
    def params(self) -> np.ndarray:
        """Slot of each parameter, read-only."""
        return params_of(self._prog)

    @property
    def outputs(self) -> np.ndarray:
        """Slot of each output, read-only."""
        return outputs_of(self._prog)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<tapejit.Tape{name}: {len(self)} instructions, {self.n_inputs} inputs, "
            f"{self.n_params} params, {self.n_outputs} outputs, {len(self._consts)} constants"
            + (f", {self._n_guards} guards>" if self._n_guards else ">")
        )

    def listing(self, limit: int | None = 50) -> str:
        """A readable instruction listing (one line per instruction).

        Parameters
        ----------
        limit : int or None
            Show at most this many instructions (``None``: all).
        """
        # lazy: _show builds on the tape (an import circle)
        from ._show import SlotNames

        slot = SlotNames(self, "listing")

        def span(s: int, size: int, stride: int) -> str:
            if size == 1:
                return slot(s)
            if stride == 0:
                return f"{slot(s)} (repeated {size})"
            last = slot(s + (size - 1) * stride)
            return f"{slot(s)}..{last}" + (f" step {stride}" if stride != 1 else "")

        lines = [repr(self)]
        code = self._code()
        attrs = self.attrs
        for row in code[: limit if limit is not None else len(code)]:
            size = int(row[SIZE])
            args = row[ARG_A : ARG_A + MAX_ARITY]
            strides = row[STRIDE_A : STRIDE_A + MAX_ARITY]
            if int(row[OPCODE]) in FAMILIES:  # operand blocks; attributes by name
                family = FAMILIES[int(row[OPCODE])]
                values = attrs[int(row[ATTR]) : int(row[ATTR]) + len(family.attrs)]
                name = family.name + "[" + ", ".join(
                    f"{k}={int(v)}" for k, v in zip(family.attrs, values, strict=True)) + "]"
                operands = ", ".join(span(int(a), int(n), 1) if n else "[]"
                                     for a, n in zip(args[: family.arity],
                                                     strides[: family.arity], strict=True))
            else:
                op = BY_CODE[int(row[OPCODE])]
                name = op.name
                operands = ", ".join(
                    span(int(a), size, int(st))
                    for a, st in zip(args[: op.arity], strides[: op.arity], strict=True))
            lines.append(f"  {span(int(row[RESULT]), size, 1)} = {name}({operands})")
            if int(row[OPCODE]) in FAMILIES:  # a loop's body, once, indented below it
                for body in family.bodies:
                    j = int(values[family.attrs.index(body)])
                    inner = Tape(**self.subprograms[j].program.arrays(), name=f"{body} {j}")
                    lines += ["    | " + line for line in inner.listing(limit).splitlines()]
        if limit is not None and len(code) > limit:
            lines.append(f"  ... {len(code) - limit} more")
        for s, outcome in self.guards:
            lines.append(f"  guard {slot(int(s))} is {bool(outcome)}")
        bounds = (int(self._prog[N_CONSTS]), int(self._prog[FIRST_ADJOINT]),
                  first_result(self._prog))
        outs = ", ".join(span(s, size, 1) for s, size in _runs(self.outputs, bounds))
        lines.append(f"  return {outs}")
        return "\n".join(lines)

    # -- files, pictures, passes (implemented in _io, _show and _passes) ---------------------
    def save(self, path) -> None:
        """Write the tape to a versioned ``.npz`` of plain arrays (see :func:`tapejit.load`).

        Parameters
        ----------
        path : str or path-like or binary file
        """
        # lazy: _io builds and type-checks Tapes (an import circle at module level)
        from ._io import save_tape

        save_tape(self, path)

    def table(self, x, params=None, wrt: int | None = None, **kwargs) -> str:
        """The Wengert list at one point: each node's operation, value, forward tangent
        ``d v / d x[wrt]`` and reverse adjoint (see :func:`tapejit._show.table`)."""
        # lazy: the display code (and its reference interpreter) loads when used
        from ._show import table

        return table(self, x, params, wrt, **kwargs)

    def to_dot(self, x=None, params=None) -> str:
        """The computation as a Graphviz DOT graph; with ``x``, values on the nodes and
        the local partial derivatives at ``x`` on the edges."""
        from ._show import to_dot

        return to_dot(self, x, params)

    def render(self, path, x=None, params=None) -> str:
        """Render :meth:`to_dot` to SVG or PNG (by the extension of ``path``) with
        Graphviz's ``dot``; ``RuntimeError`` when Graphviz is not installed."""
        from ._show import render, to_dot

        return render(to_dot(self, x, params), path)

    def stats(self) -> dict:
        """Op counts, instructions, slots, bytes and peak live values."""
        # lazy: _passes builds new Tapes (an import circle at module level)
        from ._passes import stats

        return stats(self)

    def simplify(self, passes=("fold", "cse", "dce"), *, report: bool = False):
        """A new tape after constant folding, common-subexpression and dead-code
        elimination (each optional); results are bit-identical (see ``_passes``).
        With ``report=True`` also returns the per-pass instruction counts."""
        # lazy: _passes builds new Tapes (an import circle at module level)
        from ._passes import simplify

        return simplify(self, passes, report=report)

    def optimize(self, passes=("fold", "cse", "dce"), *, report: bool = False):
        """Deprecated spelling of :meth:`simplify` (removed in the next release; the
        name belongs to the optimizers of :mod:`tapejit.optimize`)."""
        warnings.warn("Tape.optimize() is deprecated: use Tape.simplify() (same "
                      "arguments); tapejit.optimize is the scipy optimizers' module",
                      DeprecationWarning, stacklevel=2)
        return self.simplify(passes, report=report)

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the points and results: float64 (see :meth:`astype`)."""
        return _F64

    def astype(self, dtype):
        """This tape evaluated on points and into results of ``dtype``.

        Parameters
        ----------
        dtype : {numpy.float64, numpy.float32}
            ``float64`` returns the tape itself. ``float32`` returns a
            :class:`~tapejit.Float32Tape`: points rounded to float32, results in float32
            (half the memory for point sets and results), computed by the float64
            sweeps and rounded once, so each result is within a relative 2**-24 of the
            exact value at the float32 points.

        Returns
        -------
        Tape or Float32Tape
        """
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype must be float64 or float32: {exc}") from None
        if dt == _F64:
            return self
        if dt == np.float32:
            # lazy: Float32Tape evaluates through this module's functions (a circle)
            from ._float32 import Float32Tape

            return Float32Tape(self)
        raise TypeError(f"dtype must be float64 or float32; got {dt}")

    # -- argument handling ---------------------------------------------------------------
    def _params(self, params, n_points: int | None) -> np.ndarray:
        """Parameters as ``(1, n_params)`` or ``(n_points, n_params)``; 1-D for one point."""
        if params is None:
            if self._n_par:
                raise ValueError(
                    f"this tape has {self._n_par} parameters: pass params= of shape "
                    f"({self._n_par},) or (n_points, {self._n_par})"
                )
            return _EMPTY1 if n_points is None else _EMPTY2
        if isinstance(params, tuple | list):
            params = _structured(params, self._n_par)
        p = _as_points(params, self._n_par, "params")
        if n_points is None:  # one point
            if p.ndim != 1:
                raise ValueError(
                    f"params must have shape ({self._n_par},) for one point; got {p.shape}"
                )
            return p
        if p.ndim == 1:
            return p.reshape(1, -1)
        if p.shape[0] != n_points:
            raise ValueError(
                f"params has {p.shape[0]} rows but x has {n_points} points; pass one row "
                "per point or a single row for all"
            )
        return p

    def _scalar_output(self, what: str) -> None:
        if self._n_out != 1:
            raise ValueError(
                f"{what} needs a tape with one output; this tape has {self._n_out}. "
                "Use vjp() with output weights, or jacobian()."
            )

    # -- evaluation ----------------------------------------------------------------------
    def _workspace(self, size: int | None = None) -> np.ndarray:
        """This thread's reusable one-point workspace (empty for small tapes): what
        ``value_grad_point`` needs (values, adjoints and up to three stored partials per
        result: ``5 n_slots - 3 n_fixed`` floats, the partials' part touched only as far
        as the tape stores some), or ``size`` floats when a sweep needs more."""
        if self._tls is None:
            return _EMPTY1
        ws = getattr(self._tls, "ws", None)
        if ws is None or (size is not None and ws.size < size):
            ws = self._tls.ws = np.empty(max(size or 0, self._point_floats()))
        return ws

    def _point_floats(self) -> int:
        """Floats of workspace ``value_grad_point`` uses (see :meth:`_workspace`)."""
        nf = first_result(self._prog)
        # values, adjoints, partials; the loops' steps kept (value_grad_point)
        return 2 * self._n_slots + MAX_ARITY * (self._n_slots - nf) + self._kept

    def _plan(self) -> np.ndarray:
        """The reverse plan (``reverse_plan`` of ``_drivers.py``), computed on first use:
        which operands' adjoints the reverse sweeps assign at their first write, and the
        few adjoints they must zero first instead of all of them."""
        rev = self._rev
        if rev is None:
            # private: jit_args hands out an immutable copy
            rev = self._k.reverse_plan(self._kernel_prog)
            self._rev = rev  # None from the generic tier, which needs none: not kept
        return rev

    def _real_plan(self) -> np.ndarray:
        """:meth:`_plan`, computed by the optimised kernel where the generic tier gave
        none (for Numba code and the statistics), and then kept."""
        rev = self._plan()
        if rev is None:
            rev = self._rev = self._k.module.reverse_plan(self._kernel_prog)
        return rev

    def _forward_prog(self) -> tuple[np.ndarray, int, int]:
        """Program, slot count and chunk of the forward-only and tangent sweeps.

        Computed on first use: the slot-compacted program of ``_slot_reuse`` (the same
        instructions over reused slots, so the same bits in a smaller workspace and
        larger chunks) when it saves a quarter of the slots or more, else the tape's own.
        The reverse sweeps index everything by result slot and keep the tape's program.
        """
        fwd = self._fwd
        if fwd is None:
            if not self._k.compacts():  # the generic tier runs the tape's own program
                return self._kernel_prog, self._n_slots, self._chunk
            prog = self._kernel_prog
            if len(self) >= _COMPACT_MIN_INSTR:
                from ._slot_reuse import compact

                comp = compact(prog)
                if 4 * int(comp[N_SLOTS]) <= 3 * self._n_slots:
                    # private, typed like _kernel_prog (one compiled variant per kind of tape)
                    comp.flags.writeable = bool(prog.flags.writeable)
                    prog = comp
            n_slots = int(prog[N_SLOTS])
            fwd = self._fwd = (prog, n_slots, chunk_of(working_slots(prog)))
        return fwd

    def _prepare(self, x, params) -> tuple[np.ndarray, np.ndarray, bool]:
        """Points as ``(n, n_inputs)``, parameters as ``(1 or n, n_params)``, one-point flag."""
        x = _as_points(x, self._n_in, "x")
        single = x.ndim == 1
        X = x.reshape(1, -1) if single else x
        return X, self._params(params, X.shape[0]), single

    def _plain_point(self, x, params) -> bool:
        """Whether ``x`` and ``params`` are one point the kernels take as they are:
        C-contiguous float64 vectors of the tape's sizes (the per-call hot paths)."""
        return (type(x) is _ND and x.dtype is _F64 and x.shape == self._shape1
                and x.flags.carray
                and ((params is None and not self._n_par)
                     or (type(params) is _ND and params.dtype is _F64
                         and params.shape == self._pshape1 and params.flags.carray)))

    def _guarded(self, valid: np.ndarray, check: str, results: tuple, single: bool,
                 keep_failed: bool = False) -> tuple:
        """Apply the guard policy to per-point ``results`` (leading axis: points).

        ``check="raise"``: :class:`BranchError` if any point failed a guard.
        ``check="mask"``: failed points become NaN and a boolean validity mask (a bool for
        one point) is appended to the results.

        ``keep_failed`` (the tape cache's mode, through :func:`evaluate_keep_failed`):
        with ``check="mask"``, leave failed points' results as computed; the cache
        replaces them with another tape's, and filling them with NaN first would cost a
        pass over the results.
        """
        ok = None
        if self._n_guards:
            ok = valid.view(np.bool_)
            if not ok.all():
                if check == "raise":
                    raise BranchError(int(ok.size - np.count_nonzero(ok)), ok.size, self)
                if not keep_failed:
                    for r in results:
                        r[~ok] = np.nan
        if check != "raise":
            if ok is None:
                ok = np.ones(valid.shape[0], dtype=bool)
            return (*results, bool(ok[0]) if single else ok)
        return results

    def _check_arg(self, check: str) -> None:
        if check != "raise" and check != "mask":
            raise ValueError(f"check must be 'raise' or 'mask'; got {check!r}")

    def forward(self, x, params=None, out: np.ndarray | None = None, check: str = "raise"):
        """Evaluate the outputs.

        Parameters
        ----------
        x : array_like
            Inputs, shape ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
            Parameters, shape ``(n_params,)`` or ``(n_points, n_params)``.
        out : ndarray, optional
            Buffer for the result, shaped as the result (``(1,)`` for one point with one
            output, which then returns the buffer instead of a float).
        check : {"raise", "mask"}
            What to do at points where a recorded branch decision (a guard) does not
            hold: ``"raise"`` a :class:`BranchError` (default), or ``"mask"``: set those
            points' results to NaN and also return a boolean validity mask.

        Returns
        -------
        float or ndarray
            ``(n_outputs,)`` or ``(n_points, n_outputs)``; the output axis is dropped when
            the tape has one output. With ``check="mask"``, ``(result, valid)``.

        Notes
        -----
        Dask in, Dask out: when ``x`` or per-point ``params`` is a Dask array, this and
        the other evaluation methods return lazy Dask arrays computed chunk by chunk
        (:mod:`tapejit.dask`; a :class:`BranchError` is raised when they are computed).
        ``out=`` is then refused: :func:`tapejit.dask.store` fills arrays.
        """
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "forward", x, (), params, out, check=check)
        if out is None and check == "raise" and self._plain_point(x, params):
            # the hot path: one point, nothing to convert or check again
            X = x.reshape(1, -1)
            P = _EMPTY2 if params is None else params.reshape(1, -1)
            single = True
        else:
            self._check_arg(check)
            X, P, single = self._prepare(x, params)
        n = X.shape[0]
        sp = self._scalar_prog() if single else False
        # the compacted forward program, unless the scalar rows run this call
        prog, n_slots, chunk = (None, 0, 0) if sp is not False else (
            self._fwd or self._forward_prog())
        if single:
            y = _buffer(out, (self._n_out,), "out")
            if sp is not False:  # the tape's own program, through its scalar rows
                ws = self._workspace() if self._n_slots > REUSE_SLOTS else _EMPTY1
                failed = self._k.forward_scalar(self._kernel_prog, sp[0],
                                                self._kernel_consts, X[0], P[0], y, ws)
            else:
                ws = self._workspace() if n_slots > REUSE_SLOTS else _EMPTY1
                failed = self._k.forward_point(prog, self._kernel_consts, X[0], P[0], y, ws)
            if failed:
                if check == "raise":
                    raise BranchError(1, 1, self)
                y[:] = np.nan
            res = float(y[0]) if self._n_out == 1 and out is None else y
            return (res, failed == 0) if check != "raise" else res
        shape = (n,) if self._n_out == 1 else (n, self._n_out)
        y = _buffer(out, shape, "out")
        valid = np.empty(n, dtype=np.uint8)
        Y = y.reshape(n, self._n_out)
        if n < LOOP_FORWARD_POINT_BY_POINT_BELOW and self._scalar_loops:
            # one point at a time: each loop step runs its body's scalar program, where a
            # batch of a few points runs chunk sweeps (the same bits)
            _at_each_point(n, valid, lambda q: self._k.forward_point(
                prog, self._kernel_consts, X[q], _row(P, q), Y[q],
                self._workspace() if n_slots > REUSE_SLOTS else _EMPTY1))
        else:  # chunk 1: the point-by-point twin
            run_batch(self._k, "forward_batch", n, 1 if self._pointwise(n, chunk) else chunk,
                      prog, self._kernel_consts, X, P, Y, valid)
        res = self._guarded(valid, check, (y,), False)
        return res if check != "raise" else res[0]

    def value_and_grad(self, x, params=None, out=None, check: str = "raise"):
        """Value and gradient of a one-output tape.

        Parameters
        ----------
        x : array_like
            Inputs, shape ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
            Parameters, shape ``(n_params,)`` or ``(n_points, n_params)``.
        out : tuple of (ndarray or None, ndarray), optional
            ``(value_buffer, grad_buffer)``: value buffer of shape ``(n_points,)`` (or
            ``None``; for one point the value is returned as a float and also written
            into a given buffer of shape ``()`` or ``(1,)``) and
            gradient buffer shaped like ``x``. An optimizer loop that passes them
            allocates nothing per call beyond the kernel's workspace.
        check : {"raise", "mask"}
            See :meth:`forward`; with ``"mask"`` a validity mask is returned third.

        Returns
        -------
        value : float or ndarray
        grad : ndarray
            Shaped like ``x``. Dask arrays in (``x`` or per-point ``params``), lazy Dask
            arrays out (see :meth:`forward`).
        """
        if (self._fast_vg and check == "raise" and self._plain_point(x, params)
                ):  # the optimizer's hot path: one point, nothing to convert
            if out is None:
                g = np.empty(self._n_in)
            else:
                g = out[1]
                if not (type(g) is np.ndarray and g.dtype is _F64 and g.shape == self._shape1
                        and g.flags.carray):
                    g = None
            if g is not None:
                sp = self._sp if self._sp is not None else self._scalar_prog()  # hot path
                if sp is not False:
                    v = self._k.value_grad_scalar(
                        self._kernel_prog, sp[0], sp[1], self._kernel_consts, x,
                        _EMPTY1 if params is None else params, g,
                        _EMPTY1 if self._tls is None else self._workspace())
                else:
                    v = self._k.value_grad_point(
                        self._kernel_prog, self._rev if self._rev is not None else self._plan(),
                        self._kernel_consts, x, _EMPTY1 if params is None else params, g,
                        _EMPTY1 if self._tls is None else self._workspace(),
                    )
                if v == v or not self._n_guards:  # NaN may mean a failed guard
                    if out is not None and out[0] is not None:
                        out[0][...] = v
                    return v, g
        return self._value_and_grad(x, params, out, check, False)

    def _value_and_grad(self, x, params=None, out=None, check: str = "raise",
                        keep_failed: bool = False):
        """:meth:`value_and_grad` past its one-point fast path (``keep_failed``: see
        :meth:`_guarded`)."""
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "value_and_grad", x, (), params, out, check=check)
        self._scalar_output("value_and_grad")
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        n = X.shape[0]
        vbuf, gbuf = (None, None) if out is None else out
        g = _buffer(gbuf, (n, self._n_in) if not single else (self._n_in,), "grad buffer")
        if single:
            v, failed = self._gradient_at(X[0], P[0], g)
            if failed and check == "raise":
                raise BranchError(1, 1, self)
            if vbuf is not None:
                vbuf[...] = v
            return (v, g, failed == 0) if check != "raise" else (v, g)
        y = _buffer(vbuf, (n,), "value buffer")
        valid = self._gradients(X, P, y.reshape(n, 1), g)
        res = self._guarded(valid, check, (y, g), False, keep_failed)
        return res

    def _gradients(self, X, P, Y, G) -> np.ndarray:
        """Values ``Y`` ``(n, 1)`` and gradients ``G`` ``(n, n_inputs)`` of a one-output
        tape at points ``X``, and the guard validity per point. A few points may take the
        one-point gradient kernel at each point, on the threads, with the same bits
        (:meth:`_point_by_point`): a tape of scalar instructions too long to batch (one
        point per chunk), whose scalar program runs several times faster than the
        point-by-point batch driver's general sweeps and costs less than the segmented
        sweeps; a tape whose loops have scalar bodies, whose batched steps are chunk
        sweeps over too few points to share their dispatch."""
        n = X.shape[0]
        if not self._point_by_point(n):
            return self._vjp_batch(X, P, self._ones, Y, G)

        def one(q: int) -> int:
            Y[q, 0], failed = self._gradient_at(X[q], _row(P, q), G[q])
            return failed

        return _at_each_point(n, np.empty(n, dtype=np.uint8), one)

    def _point_by_point(self, n: int) -> bool:
        """Whether :meth:`_gradients` at ``n`` points takes the one-point kernel at each
        point: below ``POINT_BY_POINT_BELOW`` points for a tape of scalar instructions
        too long to batch, below ``LOOP_POINT_BY_POINT_BELOW`` for a tape whose loops
        have scalar bodies."""
        if self._chunk == 1 and self._scalar_prog() is not False:
            return n < POINT_BY_POINT_BELOW
        return n < LOOP_POINT_BY_POINT_BELOW and self._scalar_loops

    def _gradient_at(self, x, p, g) -> tuple[float, int]:
        """The value at one point and its gradient into ``g`` (the scalar program where
        the tape has one), on this thread's workspace; and the count of failed guards,
        checked only where the value is NaN (a failed guard makes it NaN)."""
        sp = self._scalar_prog()
        ws = self._workspace()
        if sp is not False:
            v = self._k.value_grad_scalar(self._kernel_prog, sp[0], sp[1],
                                          self._kernel_consts, x, p, g, ws)
        else:
            v = self._k.value_grad_point(self._kernel_prog, self._plan(),
                                         self._kernel_consts, x, p, g, ws)
        failed = 0
        if v != v and self._n_guards:
            failed = self._k.forward_point(self._kernel_prog, self._kernel_consts, x, p,
                                           np.empty(self._n_out), ws)
        return v, failed

    def gradient(self, x, params=None, out: np.ndarray | None = None, check: str = "raise"):
        """Gradient of a one-output tape, shaped like ``x`` (see :meth:`value_and_grad`).

        With ``check="mask"`` returns ``(gradient, valid)``. Dask arrays in, lazy Dask
        arrays out (see :meth:`forward`).
        """
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "gradient", x, (), params, out, check=check)
        # out=None without a buffer: value_and_grad's one-point fast path needs it
        res = self.value_and_grad(x, params, out=None if out is None else (None, out),
                                  check=check)
        return (res[1], res[2]) if check != "raise" else res[1]

    def vjp(self, x, w, params=None, out=None, check: str = "raise"):
        """Vector-Jacobian product: outputs and ``w @ J`` for weights ``w`` per output.

        Parameters
        ----------
        x : array_like
            Inputs, ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        w : array_like
            Output weights, ``(n_outputs,)`` (the same for every point) or
            ``(n_points, n_outputs)``. ``w = ones`` gives the gradient of the sum of the
            outputs.
        params : array_like, optional
        out : tuple of (ndarray or None, ndarray or None), optional
            Buffers ``(outputs (n_points, n_outputs), vjp shaped like x)``.
        check : {"raise", "mask"}
            See :meth:`forward`.

        Returns
        -------
        outputs : ndarray
            ``(n_outputs,)`` or ``(n_points, n_outputs)``.
        vjp : ndarray
            Shaped like ``x``. Dask arrays in (``x``, per-point ``w`` or ``params``),
            lazy Dask arrays out (see :meth:`forward`).
        """
        if ((type(x) is not _ND or type(w) is not _ND or type(params) not in PLAIN)
                and dask_in(x, w, params)):
            return lazily(self, "vjp", x, (w,), params, out, check=check)
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        n = X.shape[0]
        w = _as_points(w, self._n_out, "w")
        if w.ndim == 1:
            w = w.reshape(1, -1)
        elif single or w.shape[0] != n:
            raise ValueError(f"w must have shape ({self._n_out},) or ({n}, {self._n_out})")
        ybuf, gbuf = (None, None) if out is None else out
        y = _buffer(ybuf, (self._n_out,) if single else (n, self._n_out), "outputs buffer")
        g = _buffer(gbuf, (self._n_in,) if single else (n, self._n_in), "vjp buffer")
        y2, g2 = y.reshape(n, self._n_out), g.reshape(n, self._n_in)
        valid = self._vjp_batch(X, P, w, y2, g2)
        res = self._guarded(valid, check, (y2, g2), single)
        return (y, g, res[2]) if check != "raise" else (y, g)

    def _vjp_batch(self, X, P, WT, Y, G) -> np.ndarray:
        n = X.shape[0]
        valid = np.empty(n, dtype=np.uint8)
        pointwise = self._pointwise(n, self._chunk)
        if not pointwise and n >= SEGMENT_POINTS and (
                self._seg is not None or self._chunk < SEGMENT_BELOW):
            seg = self._segmented()
            if seg is not None:
                # Each thread takes a part of the points through all the segments: the
                # segments' calls are too small to share between threads one by one.
                def part(lo: int, hi: int) -> None:
                    segmented_vjp(seg[0], self._run, self._kernel_consts, seg[1], X[lo:hi],
                                  _rows(P, lo, hi), _rows(WT, lo, hi), Y[lo:hi], G[lo:hi],
                                  valid[lo:hi])

                in_parts(n, part, 2 * SEGMENT_POINTS)
                return valid
        run_batch(self._k, "vjp_batch", n, 1 if pointwise else self._chunk,  # 1: the twin
                  self._kernel_prog, self._plan(), self._kernel_consts, X, P, WT, Y, G, valid)
        return valid

    def _pointwise(self, n: int, chunk: int) -> bool:
        """Whether a batched forward or reverse sweep of ``n`` points in chunks of
        ``chunk`` runs one point at a time instead (``BLOCK_POINTWISE_RATIO``)."""
        return min(n, chunk) * BLOCK_POINTWISE_RATIO <= self._block_elements

    def _scalar_prog(self) -> tuple[np.ndarray, np.ndarray] | bool:
        """The scalar program of a tape of scalar instructions and its edges' factors
        (``_scalar_program.py``), which ``value_grad_scalar`` and ``forward_scalar`` run
        at one point; False for other tapes. Derived on first use."""
        if self._sp is None:
            sp = scalar_program(self._kernel_prog)
            self._sp = False if sp is None else sp
        return self._sp

    def _run(self, kernel: str, n: int, chunk: int, *args) -> None:
        run_batch(self._k, kernel, n, chunk, *args)

    def _segmented(self) -> tuple | None:
        """``(Segmented, plans)`` of the segmented reverse sweeps (``_segments.py``), or
        None for a tape they do not apply to; derived on first use. ``plans`` are the
        segments' reverse plans, filled in once the optimised kernels compute them."""
        seg = self._seg
        if seg is None:
            sg = split(Program.from_tape(self))
            seg = self._seg = False if sg is None else (sg, [None] * len(sg.segments))
        if seg is False:
            return None
        sg, plans = seg
        for j, plan in enumerate(plans):
            if plan is None:
                plans[j] = self._k.reverse_plan(sg.segments[j].prog)
        return seg

    def _directions(self, v, n: int, single: bool, what: str) -> np.ndarray:
        """Directions ``v`` shaped like ``x`` as ``(1 or n, 1, n_inputs)``."""
        v = _as_points(v, self._n_in, what)
        if v.ndim == 1:
            return v.reshape(1, 1, -1)
        if single or v.shape[0] != n:
            raise ValueError(
                f"{what} must have shape ({self._n_in},) or ({n}, {self._n_in}); got {v.shape}"
            )
        return v.reshape(n, 1, self._n_in)

    def _chunk_for(self, n_dirs: int, n_slots: int | None = None) -> int:
        return chunk_for(self._n_slots if n_slots is None else n_slots, n_dirs)

    def _second_order_families(self) -> None:
        """Compile (or load) the tangent and second-order routines of the tape's families."""
        self._k.ensure_family_routines(self._families, SECOND_ORDER_SWEEPS)
        self._fam_pending = False

    def _jvp_batch(self, X, P, V, Y, TY) -> np.ndarray:
        """Tangents ``TY (n, n_outputs, n_dirs)`` of directions ``V (1 or n, n_dirs, n_in)``;
        one point goes through the scalar sweep. Returns the guard validity per point."""
        n = X.shape[0]
        if n == 1 and V.shape[0] == 1:
            failed = self._jvp_one(X[0], P[0], V[0], Y[0], TY[0])
            return np.array([failed == 0], dtype=np.uint8)
        if self._fam_pending:
            self._second_order_families()
        prog, n_slots, _ = self._fwd or self._forward_prog()
        valid = np.empty(n, dtype=np.uint8)
        if self._chunk == 1 and n < POINT_BY_POINT_JVP_BELOW:
            # A tape too long for a chunk of two points: a batch of few points shares
            # each instruction's dispatch among too few; the one-point kernel at each
            # point, on the threads, is faster (the same bits).
            return _at_each_point(n, valid, lambda q: self._k.jvp_point(
                prog, self._kernel_consts, X[q], _row(P, q), _row(V, q), Y[q], TY[q]))
        run_batch(self._k, "jvp_batch", n, self._chunk_for(V.shape[1] + 1, n_slots),
                  prog, self._kernel_consts, X, P, V, Y, TY, valid)
        return valid

    def _jvp_one(self, x, p, V, y, TY) -> int:
        """``jvp_point``: tangents ``TY (n_outputs, n_dirs)`` of directions ``V (n_dirs,
        n_inputs)`` and values ``y`` at one point; the number of failed guards."""
        if self._fam_pending:
            self._second_order_families()
        prog = (self._fwd or self._forward_prog())[0]
        return self._k.jvp_point(prog, self._kernel_consts, x, p, V, y, TY)

    def jvp(self, x, v, params=None, check: str = "raise"):
        """Jacobian-vector product (forward mode, one tangent sweep).

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        v : array_like
            Tangent direction shaped like ``x`` (or ``(n_inputs,)`` for every point).
        params : array_like, optional
        check : {"raise", "mask"}
            See :meth:`forward`.

        Returns
        -------
        float or ndarray
            ``J v``: ``(n_outputs,)`` or ``(n_points, n_outputs)``, the output axis dropped
            when the tape has one output (as :meth:`forward`). With ``check="mask"``,
            ``(jv, valid)``. Dask arrays in (``x``, per-point ``v`` or ``params``),
            lazy Dask arrays out (see :meth:`forward`).
        """
        if ((type(x) is not _ND or type(v) is not _ND or type(params) not in PLAIN)
                and dask_in(x, v, params)):
            return lazily(self, "jvp", x, (v,), params, check=check)
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        n = X.shape[0]
        V = self._directions(v, n, single, "v")
        Y = np.empty((n, self._n_out))
        TY = np.empty((n, self._n_out, 1))
        valid = self._jvp_batch(X, P, V, Y, TY)
        (ty, *mask) = self._guarded(valid, check, (TY[:, :, 0],), single)
        if single:
            ty = float(ty[0, 0]) if self._n_out == 1 else ty[0]
        elif self._n_out == 1:
            ty = ty[:, 0]
        return (ty, *mask) if check != "raise" else ty

    def jacobian(self, x, params=None, out: np.ndarray | None = None, mode: str = "auto",
                 check: str = "raise", sparse: bool = False):
        """Jacobian ``d outputs / d inputs``: ``(n_outputs, n_inputs)`` per point.

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
        out : ndarray, optional
            Buffer of shape ``(n_outputs, n_inputs)`` or ``(n_points, n_outputs, n_inputs)``.
        mode : {"auto", "forward", "reverse"}
            ``"forward"``: one tangent sweep carrying all ``n_inputs`` directions;
            ``"reverse"``: one adjoint sweep per output; ``"auto"`` picks forward when
            ``n_inputs < n_outputs``. With ``sparse=True``: ``"forward"`` colours the
            columns (one tangent direction per colour), ``"reverse"`` the rows (one
            adjoint sweep per colour), ``"auto"`` colours the rows only when they need
            far fewer colours (an adjoint sweep per colour costs several tangent
            directions).
        check : {"raise", "mask"}
            See :meth:`forward`.
        sparse : bool
            Compute only the nonzeros of :meth:`jacobian_sparsity`'s pattern, with one
            sweep direction per colour of a colouring of it (both computed on first use
            and kept by the tape), and return them as sparse matrices. The values equal
            the dense Jacobian's up to rounding. ``out`` cannot be given.

        Returns
        -------
        ndarray or scipy.sparse.csr_array or SparseStack
            ``(..., n_outputs, n_inputs)``. With ``check="mask"``, ``(J, valid)``. Dask
            arrays in, lazy Dask arrays out (see :meth:`forward`). With ``sparse=True``:
            at one point a ``scipy.sparse.csr_array``; for ``(n_points, n_inputs)``
            points a :class:`~tapejit.SparseStack`, the pattern and an
            ``(n_points, nnz)`` array of values (``stack[p]`` is point ``p``'s
            ``csr_array``); for a Dask array of points a ``SparseStack`` whose values
            are a lazy Dask array (see :func:`tapejit.dask.jacobian`).
        """
        if sparse:
            return self._sparse_jacobian(x, params, out, mode, check)
        return self._jacobian(x, params, out, mode, check, False)

    def _jacobian(self, x, params=None, out=None, mode: str = "auto", check: str = "raise",
                  keep_failed: bool = False):
        """:meth:`jacobian` (``keep_failed``: see :meth:`_guarded`)."""
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "jacobian", x, (), params, out, mode=mode, check=check)
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse'; got {mode!r}")
        if mode == "auto":
            mode = "forward" if self._n_in < self._n_out else "reverse"
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        n = X.shape[0]
        shape = (self._n_out, self._n_in) if single else (n, self._n_out, self._n_in)
        J = _buffer(out, shape, "out")
        J3 = J.reshape(n, self._n_out, self._n_in)
        Y = np.empty((n, self._n_out))
        if mode == "forward":
            V = np.eye(self._n_in).reshape(1, self._n_in, self._n_in)
            valid = self._jvp_batch(X, P, V, Y, J3)
        elif self._n_out == 1:  # the gradient: one adjoint sweep, as value_and_grad's
            valid = self._gradients(X, P, Y, J3.reshape(n, self._n_in))
        else:
            valid = np.empty(n, dtype=np.uint8)
            chunk = 1 if self._pointwise(n, self._chunk) else self._chunk
            run_batch(self._k, "jacrev_batch", n, chunk, self._kernel_prog, self._plan(),
                      self._kernel_consts, X, P, Y, J3, valid)
        res = self._guarded(valid, check, (J3,), single, keep_failed)
        return (J, res[1]) if check != "raise" else J

    def _hvp_batch(self, X, P, V) -> tuple[np.ndarray, np.ndarray]:
        """``(n, n_dirs, n_inputs)`` Hessian-direction products (directions in blocks that
        bound the workspace) and the guard validity per point."""
        if self._fam_pending:
            self._second_order_families()
        n, nv = X.shape[0], V.shape[1]
        HV = np.empty((n, nv, self._n_in))
        Y = np.empty((n, 1))
        G = np.empty((n, self._n_in))
        valid = np.empty(n, dtype=np.uint8)
        for d0 in range(0, nv, DIR_BLOCK):
            d1 = min(nv, d0 + DIR_BLOCK)
            Vb = np.ascontiguousarray(V[:, d0:d1])
            HVb = HV if (d0, d1) == (0, nv) else np.empty((n, d1 - d0, self._n_in))
            if n == 1 and V.shape[0] == 1:
                valid[0] = self._hvp_one(X[0], P[0], Vb[0], G[0], HVb[0]) == 0
            elif (chunk := self._chunk_for(2 * (d1 - d0) + 2)) == 1 or (
                    chunk <= BLOCK_POINTWISE_HVP_CHUNK
                    and self._block_elements >= BLOCK_HVP_ELEMENTS):
                # A chunk would hold one point, or a few of a tape of blocks: the
                # one-point kernel at each point, on each thread's own workspace, is
                # several times faster (the same bits).
                def one(q: int, Vb=Vb, HVb=HVb, floats=(2 + 2 * (d1 - d0)) * self._n_slots
                        ) -> int:
                    return self._k.hvp_point(self._kernel_prog, self._kernel_consts, X[q],
                                             _row(P, q), _row(Vb, q), G[q], HVb[q],
                                             self._workspace(floats))

                _at_each_point(n, valid, one)
            else:
                run_batch(self._k, "hvp_batch", n, chunk,
                          self._kernel_prog, self._kernel_consts, X, P, Vb, Y, G, HVb, valid)
            if HVb is not HV:
                HV[:, d0:d1] = HVb
        return HV, valid

    def _hvp_one(self, x, p, V, g, HV) -> int:
        """``hvp_point``: products ``HV (n_dirs, n_inputs)`` with directions ``V`` and
        the gradient ``g`` at one point; the number of failed guards. A few directions (a
        sparse Hessian's colours) reuse this thread's workspace; more (a dense Hessian's
        blocks) allocate theirs rather than keep (2 + 2 nv) floats a slot for the tape's
        life."""
        if self._fam_pending:
            self._second_order_families()
        nv = V.shape[0]
        ws = self._workspace((2 + 2 * nv) * self._n_slots) if nv <= REUSE_DIRECTIONS else _EMPTY1
        return self._k.hvp_point(self._kernel_prog, self._kernel_consts, x, p, V, g, HV, ws)

    def hvp(self, x, v, params=None, check: str = "raise") -> np.ndarray:
        """Hessian-vector product of a one-output tape (forward-over-reverse).

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        v : array_like
            Direction shaped like ``x`` (or ``(n_inputs,)`` for every point).
        params : array_like, optional
        check : {"raise", "mask"}
            See :meth:`forward`.

        Returns
        -------
        ndarray
            ``H v``, shaped like ``x``. With ``check="mask"``, ``(hv, valid)``. Dask
            arrays in (``x``, per-point ``v`` or ``params``), lazy Dask arrays out (see
            :meth:`forward`).
        """
        if (
            self._fast_vg
            and check == "raise"
            and params is None
            and not self._n_par
            and type(x) is np.ndarray and x.dtype is _F64 and x.shape == self._shape1
            and x.flags.carray
            and type(v) is np.ndarray and v.dtype is _F64 and v.shape == self._shape1
            and v.flags.carray
        ):  # a Newton-CG inner loop: one point, one direction, nothing to convert
            if self._fam_pending:
                self._second_order_families()
            hv = np.empty(self._n_in)
            if not self._k.hvp_point(self._kernel_prog, self._kernel_consts, x, _EMPTY1,
                                v.reshape(1, -1), np.empty(self._n_in), hv.reshape(1, -1),
                                self._workspace(4 * self._n_slots)):
                return hv
        return self._hvp(x, v, params, check, False)

    def _hvp(self, x, v, params=None, check: str = "raise", keep_failed: bool = False):
        """:meth:`hvp` past its one-point fast path (``keep_failed``: see
        :meth:`_guarded`)."""
        if ((type(x) is not _ND or type(v) is not _ND or type(params) not in PLAIN)
                and dask_in(x, v, params)):
            return lazily(self, "hvp", x, (v,), params, check=check)
        self._scalar_output("hvp")
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        n = X.shape[0]
        HV, valid = self._hvp_batch(X, P, self._directions(v, n, single, "v"))
        hv, *mask = self._guarded(valid, check, (HV[:, 0],), single, keep_failed)
        hv = hv[0] if single else hv
        return (hv, *mask) if check != "raise" else hv

    def hessian(self, x, params=None, check: str = "raise", sparse: bool = False):
        """Hessian of a one-output tape: ``(n_inputs, n_inputs)`` per point.

        Computed as ``n_inputs`` Hessian-vector products in vector mode (forward over
        reverse), then symmetrized, ``(H + H.T) / 2``, so the result is exactly symmetric.

        Parameters
        ----------
        x : array_like
            ``(n_inputs,)`` or ``(n_points, n_inputs)``.
        params : array_like, optional
        check : {"raise", "mask"}
            See :meth:`forward`.
        sparse : bool
            Compute only the nonzeros of :meth:`hessian_sparsity`'s pattern, with one
            Hessian-vector product per colour of a star colouring of it (both computed
            on first use and kept by the tape; each symmetric pair of nonzeros is read
            from one product, so the result is exactly symmetric), and return them as
            sparse matrices. The values equal the dense Hessian's up to rounding.

        Returns
        -------
        ndarray or scipy.sparse.csr_array or SparseStack
            ``(..., n_inputs, n_inputs)``. With ``check="mask"``, ``(H, valid)``. Dask
            arrays in, lazy Dask arrays out (see :meth:`forward`). With ``sparse=True``:
            at one point a ``scipy.sparse.csr_array``; for ``(n_points, n_inputs)``
            points a :class:`~tapejit.SparseStack`, the pattern and an
            ``(n_points, nnz)`` array of values (``stack[p]`` is point ``p``'s
            ``csr_array``); for a Dask array of points a ``SparseStack`` whose values
            are a lazy Dask array (see :func:`tapejit.dask.jacobian`).
        """
        if sparse:
            return self._sparse_hessian(x, params, check)
        return self._hessian(x, params, check, False)

    def _hessian(self, x, params=None, check: str = "raise", keep_failed: bool = False):
        """:meth:`hessian` (``keep_failed``: see :meth:`_guarded`)."""
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "hessian", x, (), params, check=check)
        self._scalar_output("hessian")
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        V = np.eye(self._n_in).reshape(1, self._n_in, self._n_in)
        H, valid = self._hvp_batch(X, P, V)
        H += H.transpose(0, 2, 1)
        H *= 0.5
        H, *mask = self._guarded(valid, check, (H,), single, keep_failed)
        H = H[0] if single else H
        return (H, *mask) if check != "raise" else H


    # -- sparse derivatives (patterns in _sparsity, colourings in _colouring) -------------
    def jacobian_sparsity(self):
        """The pattern of the Jacobian: which entries can be nonzero on this tape.

        Computed from the instructions, with no evaluation, by propagating the set of
        inputs each value depends on (``tapejit/_sparsity.py``); kept by the tape. Exact
        for the recorded branch up to numerical cancellation: every entry that a point
        on this branch can make nonzero is in it, whatever the parameters' values (a
        parameter counts as possibly nonzero), and an entry is left out only when no
        path from the input to the output carries a partial that can be nonzero. A few
        instructions are conservative (all their results depend on all their operands):
        the linear-algebra families (``solve``, ``inv``, ``det``, ``cholesky``,
        ``eigh``, ...), and ``max``/``min`` reductions, whose derivative goes to
        whichever element is the extreme at the point. A loop (:func:`tapejit.scan`,
        :func:`tapejit.fori_loop`) has the pattern of the same loop unrolled, read from
        its body once and composed step by step.

        Returns
        -------
        scipy.sparse.csr_array
            ``(n_outputs, n_inputs)``, bool, sorted indices.
        """
        return self._sparse_plan("jacobian_pattern").copy()

    def hessian_sparsity(self):
        """The pattern of the Hessian of a one-output tape.

        Computed from the instructions (``tapejit/_sparsity.py``): for each instruction
        whose result reaches the output through partials that can be nonzero, each pair
        of its operands with a second partial that can be nonzero (from the op table)
        contributes the products of their input sets. Exact for the recorded branch up
        to numerical cancellation, independent of parameter values, conservative for
        the linear-algebra families as :meth:`jacobian_sparsity` says; a product
        (``prod``, ``cumprod``) has the pattern of the same product written as a Python
        loop, and a loop the pattern of the same loop unrolled; kept by the tape.

        Returns
        -------
        scipy.sparse.csr_array
            ``(n_inputs, n_inputs)``, bool, symmetric, sorted indices.
        """
        self._scalar_output("hessian_sparsity")
        return self._sparse_plan("hessian_pattern").copy()

    def _sparse_plan(self, key: str):
        """The pattern or compression ``key``, computed on first use and kept (a race
        computes it twice, the same)."""
        plan = self._sparse.get(key)
        if plan is None:
            from . import _colouring, _sparsity

            if key == "jacobian_pattern":
                plan = _sparsity.jacobian_sparsity(Program.from_tape(self))
            elif key == "hessian_pattern":
                plan = _sparsity.hessian_sparsity(Program.from_tape(self))
            elif key == "hessian":
                plan = _colouring.hessian_compression(self._sparse_plan("hessian_pattern"))
            else:  # "jacobian_<mode>"
                plan = _colouring.jacobian_compression(self._sparse_plan("jacobian_pattern"),
                                                       key.split("_", 1)[1])
            self._sparse[key] = plan
        return plan

    def _sparse_result(self, plan, data: np.ndarray, single: bool, valid, check: str):
        """The recovered nonzeros ``data (n_points, nnz)`` as a ``csr_array`` (one point)
        or a ``SparseStack``, with the guard policy applied."""
        from ._colouring import SparseStack

        data, *mask = self._guarded(valid, check, (data,), single)
        pat = plan.pattern
        if single:
            import scipy.sparse as sp

            res = sp.csr_array((data[0], pat.indices, pat.indptr), shape=pat.shape)
        else:
            res = SparseStack(pat, data)
        return (res, *mask) if check != "raise" else res

    def _sparse_jacobian(self, x, params, out, mode: str, check: str):
        if out is not None:
            raise ValueError("jacobian(sparse=True) cannot write into out=; drop out=")
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "jacobian", x, (), params, mode=mode, check=check,
                          sparse=True)
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse'; got {mode!r}")
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        plan = self._sparse_plan("jacobian_" + mode)
        data, valid = self._sparse_data(plan, X, P)
        return self._sparse_result(plan, data, single, valid, check)

    def _sparse_hessian(self, x, params, check: str):
        if (type(x) is not _ND or type(params) not in PLAIN) and dask_in(x, params):
            return lazily(self, "hessian", x, (), params, check=check, sparse=True)
        self._scalar_output("hessian")
        self._check_arg(check)
        X, P, single = self._prepare(x, params)
        plan = self._sparse_plan("hessian")
        data, valid = self._sparse_data(plan, X, P)
        return self._sparse_result(plan, data, single, valid, check)

    def _sparse_data(self, plan, X: np.ndarray, P: np.ndarray, take: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The nonzeros ``(n_points, nnz)`` of the derivative ``plan`` compresses (in its
        pattern's CSR order) at points ``X``, one sweep direction per colour, and the
        guard validity per point; ``take``: those of ``plan.take``'s positions only."""
        n, k = X.shape[0], plan.n_colours
        take = plan.take if take is None else take
        if n == 0:  # no sweep to run, and no row to reshape the compressed values by
            return np.empty((0, take.size)), np.empty(0, dtype=np.uint8)
        if plan.mode != "reverse":
            if n == 1 and 1 < k <= REUSE_DIRECTIONS:
                comp, valid = self._colours_at_one_point(plan, X, P)
            else:
                comp, valid = self._colours_together(plan, X, P)
        else:  # one adjoint sweep per colour: the points repeated, one seed each
            Xr = np.repeat(X, k, axis=0)
            Pr = np.repeat(P, k, axis=0) if P.shape[0] == n and n > 1 else P
            comp = np.empty((n * k, self._n_in))
            valid = self._vjp_batch(Xr, Pr, np.tile(plan.seeds, (n, 1)),
                                    np.empty((n * k, self._n_out)), comp)
            valid = valid.reshape(n, k).min(axis=1)
        if n == 1:  # a flat gather: a third of the time of a 2-D one
            return comp.reshape(-1).take(take).reshape(1, -1), valid
        return comp.reshape(n, -1)[:, take], valid

    def _colours_together(self, plan, X: np.ndarray, P: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """A forward or Hessian compression's colours at points ``X``, one sweep carrying
        them all: the compressed result and the guard validity per point."""
        n, k = X.shape[0], plan.n_colours
        V = plan.seeds.reshape(1, k, self._n_in)
        if plan.mode == "hessian":
            return self._hvp_batch(X, P, V)
        comp = np.empty((n, self._n_out, k))
        return comp, self._jvp_batch(X, P, V, np.empty((n, self._n_out)), comp)

    def _colours_at_one_point(self, plan, X: np.ndarray, P: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_sparse_data`'s compressed result at one point for a forward or Hessian
        compression of a few colours: one sweep carrying every colour, or one sweep per
        colour (blocks of one direction take loops that vectorize, but every sweep
        computes the values again), whichever measured faster on this tape
        (:class:`~tapejit._timed_choice.TimedChoice`; the same values either way,
        Hessians to the bit)."""
        k, hessian = plan.n_colours, plan.mode == "hessian"
        V = plan.seeds.reshape(1, k, self._n_in)

        def apart() -> tuple[np.ndarray, np.ndarray]:
            failed = 0
            if hessian:
                comp, g = np.empty((1, k, self._n_in)), np.empty(self._n_in)
                for c in range(k):
                    failed += self._hvp_one(X[0], P[0], V[0, c : c + 1], g,
                                            comp[0, c : c + 1])
            else:
                comp = np.empty((1, self._n_out, k))
                y, t = np.empty(self._n_out), np.empty((self._n_out, 1))
                for c in range(k):
                    failed += self._jvp_one(X[0], P[0], V[0, c : c + 1], y, t)
                    comp[0, :, c] = t[:, 0]
            return comp, np.array([failed == 0], dtype=np.uint8)

        kernel = "hvp_point" if hessian else "jvp_point"
        choice = self._sparse.get("colours_" + plan.mode)
        if choice is None:
            choice = self._sparse.setdefault("colours_" + plan.mode, TimedChoice())
        return choice.run((lambda: self._colours_together(plan, X, P), apart),
                          lambda: kernel not in self._k.generic)


# -- the package-internal interface (see the module docstring) ---------------------------
def from_packed(prog: np.ndarray, consts: np.ndarray, input_shapes: tuple = (),
                output_shapes: tuple = (), name: str = "", private: bool = False) -> Tape:
    """A tape over an existing packed program and constants (validated, not copied; see
    ``Tape._from_packed``)."""
    return Tape._from_packed(prog, consts, input_shapes, output_shapes, name, private)


def float32_kernels(tape: Tape):
    """The kernels ``Float32Tape``'s direct methods call (float32 points, parameters and
    results), with the routines of the tape's instruction families loaded (the float64
    ones: the kernels hand them the parameters as float64)."""
    ks = kernels_for(tape._families, float32=True)
    if tape._families:
        ks.ensure_family_routines(tape._families, FIRST_ORDER_SWEEPS)
    return ks


def packed(tape: Tape) -> tuple[np.ndarray, np.ndarray]:
    """The tape's packed program and constant pool, read-only views (what pickling,
    shared memory, Dask tokens and jit bundles copy)."""
    return tape._prog, tape._consts


def kernel_arrays(tape: Tape) -> tuple[np.ndarray, np.ndarray]:
    """The program and constants the kernels are given: :func:`packed`'s arrays, or the
    owned writeable arrays behind them (the cheaper variant to dispatch on; nothing
    writes them)."""
    return tape._kernel_prog, tape._kernel_consts


def reverse_plan(tape: Tape) -> np.ndarray:
    """The reverse sweeps' plan of the tape's program, computed on first use and kept
    (private to the tape: never hand it out writeable); computed by the optimised kernel
    also while the generic tier runs the tape's calls (:func:`kernel_plan`)."""
    return tape._real_plan()


def kernel_plan(tape: Tape) -> np.ndarray | None:
    """The plan to hand the tape's reverse kernels: :func:`reverse_plan`, or None while
    they are the generic tier's (which needs none, and so compiles nothing for it)."""
    return tape._plan()


def scalar_program_of(tape: Tape) -> tuple[np.ndarray, np.ndarray] | None:
    """The tape's scalar program and its edges' factors (``_scalar_program.py``), or
    None where it has none."""
    sp = tape._scalar_prog()
    return None if sp is False else sp


def segments_of(tape: Tape):
    """The tape's segmented reverse sweeps (``_segments.Segmented``), or None where its
    batched gradients run unsegmented; derived if not yet."""
    seg = tape._segmented()
    return None if seg is None else seg[0]


def forward_program(tape: Tape) -> tuple[np.ndarray, int, int]:
    """``(program, n_slots, chunk)`` of the forward and tangent sweeps: the
    slot-compacted program when it saves enough slots, else :func:`kernel_arrays`'
    program; computed on first use and kept."""
    return tape._fwd or tape._forward_prog()


def point_floats(tape: Tape) -> int:
    """Floats of one-point workspace ``value_grad_point`` needs."""
    return tape._point_floats()


def require_one_output(tape: Tape, what: str) -> None:
    """``ValueError`` naming ``what`` unless the tape has exactly one output."""
    tape._scalar_output(what)


def guarded(tape: Tape, valid: np.ndarray, check: str, results: tuple) -> tuple:
    """The guard policy ``check`` applied to batched ``results`` (see ``Tape._guarded``)."""
    return tape._guarded(valid, check, results, False)


# The methods' implementations with the cache's guard mode as their last parameter; the
# public methods keep their documented signatures (and their fast paths) and call them.
_KEEPING = {
    "value_and_grad": Tape._value_and_grad,
    "jacobian": Tape._jacobian,
    "hvp": Tape._hvp,
    "hessian": Tape._hessian,
}


def evaluate_keep_failed(tape: Tape, method: str, x, *extra, params=None, **options):
    """``tape.<method>(x, *extra, params=params, check="mask", **options)``, except that
    the results of points that fail a guard are left as computed instead of set to NaN:
    the guard mode of the tape cache (:mod:`tapejit._transforms`), which replaces them
    with another tape's. ``method`` is ``"value_and_grad"``, ``"jacobian"``, ``"hvp"``
    or ``"hessian"``; ``options``: the method's other keyword arguments (``mode=``)."""
    return _KEEPING[method](tape, x, *extra, params=params, check="mask", keep_failed=True,
                            **options)


def sparse_compression(tape: Tape, which: str):
    """The pattern and colouring (``_colouring.Compression``) that ``sparse_values``
    uses for ``which`` (``"jacobian"`` or ``"hessian"``), computed now if not yet."""
    if which == "hessian":
        tape._scalar_output("hessian")
    return tape._sparse_plan("hessian" if which == "hessian" else "jacobian_auto")


def sparse_values(tape: Tape, which: str, x: np.ndarray, params=None,
                  select: np.ndarray | None = None) -> np.ndarray:
    """The nonzeros of ``tape.jacobian(x, params, sparse=True)`` (``which="jacobian"``)
    or ``tape.hessian(...)`` (``"hessian"``) at one point, in the CSR order of
    ``tape.jacobian_sparsity()`` / ``hessian_sparsity()``, without building the matrix
    (for solvers' callbacks); :class:`BranchError` where a guard fails. ``select``:
    where given, ``sparse_take(tape, which, positions)`` (the nonzeros at those positions
    of that order, gathered in the same pass)."""
    plan = sparse_compression(tape, which)
    X, P, single = tape._prepare(x, params)
    if not single:
        raise ValueError(f"x must have shape ({tape.n_inputs},): one point")
    data, valid = tape._sparse_data(plan, X, P, select)
    return tape._guarded(valid, "raise", (data,), True)[0][0]


def sparse_take(tape: Tape, which: str, positions: np.ndarray) -> np.ndarray:
    """The ``select`` of :func:`sparse_values` that gives only the nonzeros at
    ``positions`` (indices or a mask into the CSR order of the pattern)."""
    return sparse_compression(tape, which).take[positions]


def install_for_tests(tape: Tape, *, plan: np.ndarray | None = None,
                      forward_prog: np.ndarray | None = None, chunk: int | None = None,
                      segment_elements: int | None = None, scalar: bool | None = None) -> None:
    """Test hook: make the tape use ``plan`` as its reverse plan, ``forward_prog`` as the
    program of its forward and tangent sweeps (with :func:`chunk_of` its slot count) or
    ``chunk`` points per task of its reverse batch sweeps (1: the point-by-point
    driver), instead of what it derives; for tests and benchmarks that compare results
    across derived programs. The kernels check a plan against its program, nothing
    checks a forward program: pass ``_slot_reuse.compact`` of the tape's program (after
    ``check_compact``) or :func:`kernel_arrays`' program. ``segment_elements``: its
    batched vjp sweeps run segmented (``_segments.py``) with segments of about that many
    result elements, at every count of points from ``SEGMENT_POINTS`` on (0: never).
    Either keeps a tape of blocks off its point-by-point sweeps (``_pointwise``).
    ``scalar=False``: its one-point gradients run ``value_grad_point`` even where they
    would run the scalar program (``_scalar_program.py``)."""
    if plan is not None:
        tape._rev = plan
    if forward_prog is not None:
        n_slots = int(forward_prog[N_SLOTS])
        tape._fwd = (forward_prog, n_slots, chunk_of(working_slots(forward_prog)))
    if chunk is not None or segment_elements is not None:
        tape._block_elements = 0.0  # the sweeps asked for, not the point-by-point twins
    if chunk is not None:
        tape._chunk = chunk
    if scalar is not None:
        tape._sp = None if scalar else False
    if segment_elements is not None:  # 0: never segment
        sg = split(Program.from_tape(tape), segment_elements) if segment_elements else None
        tape._seg = False if sg is None else (sg, [None] * len(sg.segments))


def _runs(slots: np.ndarray, bounds: tuple[int, int, int]) -> list[tuple[int, int]]:
    """``(first slot, length)`` of ``slots`` in order, each run of three or more
    consecutive slots as one: a tape returning a block lists it as one item. A run
    stays within one of the parameters, the inputs or the results (``bounds``: where
    each starts); constants, named by their values, stay one by one."""
    kind = np.searchsorted(np.asarray(bounds), slots, side="right")  # 0: a constant
    out, i = [], 0
    while i < len(slots):
        j = i + 1
        while (j < len(slots) and kind[i] and kind[j] == kind[i]
               and slots[j] == slots[j - 1] + 1):
            j += 1
        j = j if j - i >= 3 else i + 1
        out.append((int(slots[i]), j - i))
        i = j
    return out


def _unpickle(prog, consts, input_shapes, output_shapes, name) -> Tape:
    # Out-of-band buffers (pickle protocol 5, as Dask's workers receive them) arrive as
    # read-only views: own a copy, so the kernels get writeable arrays (the variant they
    # are compiled and cached for) instead of compiling a read-only one per worker.
    prog = np.require(prog, requirements=("C", "W", "O"))
    consts = np.require(consts, requirements=("C", "W", "O"))
    return Tape._from_packed(prog, consts, input_shapes, output_shapes, name)
