"""Routines compiled on their own and called through a table of addresses: the
instruction families' routines and the generated sweeps.

Were the kernels to call these directly, every function on the way up to an entry point
(``value_grad_point``, ``hvp_batch``, a loop routine, a helper of one, ...) would link
them, and LLVM would optimise and generate their code again in each: most of a cold
compile (see the docs' internals page). Instead, each is a C callable
(``numba.cfunc``) of its own, compiled on first use and kept in Numba's on-disk cache,
and its callers go through :data:`_ROUTINE_TABLE`: an array of addresses that the JIT
linker knows by a symbol name, so a compiled kernel holds one indirect call and stays
valid in the cache.

* A family's routine for one sweep (``_family_<sweep>__<file>__c``) is called by that
  sweep's dispatcher (``_family_<sweep>``); :func:`ensure_family_routines` compiles (or
  loads) the routines a tape needs.
* A generated sweep (``forward_chunk``, ``reverse_hvp_point_sweep``, ...) is a C callable
  (``<sweep>__c``) behind a small ``njit`` function of the sweep's name that calls it;
  :func:`ensure_routines_of` compiles (or loads) those a kernel reaches (``_SWEEPS_OF``,
  derived by ``codegen.py`` from the calls in the generated module).

Both fill the slots before a kernel that reads them runs; an empty slot raises. Across
the call, an array travels as its data address and its shape (C-contiguous, of the
element type and dimensions the routine declares: :func:`_c_call` refuses anything else
when the caller is compiled) and an integer as an int64; the routine rebuilds the arrays
with ``numba.carray``.
"""

import ctypes as _ctypes
import threading as _threading

import llvmlite.binding as _llvm
from llvmlite import ir as _ir
from numba import carray as _carray  # noqa: F401 (the generated routines use it)
from numba import cfunc as _cfunc
from numba.core import cgutils as _cgutils
from numba.core import types as _types
from numba.core.errors import TypingError as _TypingError
from numba.extending import intrinsic as _intrinsic

from tapejit._kernels.njit import njit
from tapejit._program import FIRST_FAMILY, SWEEPS

N_FAMILY_CODES = 0  # generated: one more than the highest family opcode, less FIRST_FAMILY
_FAMILY_FILES: dict = {}  # generated: the kernel file of each family opcode
#: generated: the sweeps called through the table, in slot order
_SWEEP_ROUTINES: tuple = ()
#: generated: the sweeps (of _SWEEP_ROUTINES) each function of the module calls, directly
#: or through the functions it calls
_SWEEPS_OF: dict = {}

# --- kernel source ---

#: The routines: per family opcode one per sweep, then the generated sweeps
#: (``_SWEEP_ROUTINES``). Parameters reach a family's routines as float64 (a float32
#: tape's drivers convert theirs, ``_params64`` in ``support.py``).
_SWEEP_SLOT0 = N_FAMILY_CODES * len(SWEEPS)
_ROUTINE_TABLE = (_ctypes.c_int64 * (_SWEEP_SLOT0 + len(_SWEEP_ROUTINES)))()
# One name per kernel module (its name is the hash of its source): two modules in one
# process never share a table.
_ROUTINE_TABLE_SYMBOL = f"tapejit_routine_table_{__name__}"
_llvm.add_symbol(_ROUTINE_TABLE_SYMBOL, _ctypes.addressof(_ROUTINE_TABLE))
_ROUTINE_LOCK = _threading.Lock()
#: The compiled routines by name: their code lives as long as they do.
_ROUTINES_COMPILED: dict = {}


@njit(cache=True, nogil=True, inline="always")
def _family_slot(code, sweep):
    # The table slot of family opcode ``code``'s routine for sweep ``sweep`` (its index
    # in SWEEPS).
    return (code - FIRST_FAMILY) * len(SWEEPS) + sweep


def _compile_routine(name: str) -> int:
    """Compile (or load from Numba's cache) C callable ``name`` of this module (it
    returns a status, or a count: ``codegen._c_callable``); its address."""
    fn = globals()[name]
    signature = _types.int64(*([_types.int64] * fn.__code__.co_argcount))
    # numpy's error model, as every njit kernel (njit.py): the routine's body is in the
    # C callable itself
    compiled = _cfunc(signature, cache=True, nopython=True, error_model="numpy")(fn)
    _ROUTINES_COMPILED[name] = compiled
    return compiled.address


def ensure_routines_of(name: str) -> None:
    """Compile (or load) the generated sweeps that function ``name`` of this module calls
    (directly or through the functions it calls), and put their addresses in the table.
    Cheap when they are there; safe from many threads."""
    for sweep in _SWEEPS_OF.get(name, ()):
        slot = _SWEEP_SLOT0 + _SWEEP_ROUTINES.index(sweep)
        if _ROUTINE_TABLE[slot]:
            continue
        routine = f"{sweep}__c"
        ensure_routines_of(routine)
        with _ROUTINE_LOCK:
            if not _ROUTINE_TABLE[slot]:
                _ROUTINE_TABLE[slot] = _compile_routine(routine)


def ensure_family_routines(codes, sweeps) -> None:
    """Compile (or load from Numba's cache) the routines of family opcodes ``codes`` for
    the sweeps named in ``sweeps`` (of ``SWEEPS``), and the generated sweeps they call,
    and put their addresses in the table. Cheap when they are there; safe from many
    threads."""
    for code in codes:
        for name in sweeps:
            sweep = SWEEPS.index(name)
            slot = _family_slot(code, sweep)
            if _ROUTINE_TABLE[slot]:
                continue
            routine = f"_family_{name}__{_FAMILY_FILES[code]}__c"
            ensure_routines_of(routine)
            with _ROUTINE_LOCK:
                if _ROUTINE_TABLE[slot]:
                    continue
                address = _compile_routine(routine)
                # every opcode of the same kernel file runs through the same routine
                for other, file in _FAMILY_FILES.items():
                    if file == _FAMILY_FILES[code]:
                        _ROUTINE_TABLE[_family_slot(other, sweep)] = address


@_intrinsic
def _routine_address(typingctx, slot):
    # The address in ``slot`` of the table (0: not compiled).
    def codegen(context, builder, sig, args):
        i64 = _ir.IntType(64)
        table = builder.module.globals.get(_ROUTINE_TABLE_SYMBOL)
        if table is None:
            table = _ir.GlobalVariable(builder.module, _ir.ArrayType(i64, len(_ROUTINE_TABLE)),
                                       _ROUTINE_TABLE_SYMBOL)
            table.linkage = "external"
        index = context.cast(builder, args[0], sig.args[0], _types.int64)
        return builder.load(builder.gep(table, [_ir.Constant(_ir.IntType(32), 0), index]))

    return _types.int64(slot), codegen


#: The element types an array may have across the C call.
_C_DTYPES = {"float64": _types.float64, "int32": _types.int32}


def _c_call(addr, *operands, kinds):
    """Signature and code of a call of the routine at ``addr`` with ``operands``, which
    returns an int64 (the typing half of the generated call intrinsics). ``kinds``: per
    operand, the ``(element type, ndim)`` of the C-contiguous array the routine rebuilds
    (``codegen._FAMILY_ARRAYS``, ``codegen._SWEEP_ARRAYS``), or ``None`` for an integer:
    anything else is a typing error, never a misread array."""
    for k, (ty, want) in enumerate(zip(operands, kinds, strict=True)):
        if want is None:
            if not isinstance(ty, _types.Integer):
                raise _TypingError(f"operand {k} of a C-called routine is an integer, "
                                   f"not {ty}")
        elif not (isinstance(ty, _types.Array) and ty.layout == "C"
                  and ty.dtype == _C_DTYPES[want[0]] and ty.ndim == want[1]):
            raise _TypingError(f"operand {k} of a C-called routine is a C-contiguous "
                               f"{want[1]}-d {want[0]} array, not {ty} (float32 "
                               "parameters are converted: _params64)")

    def codegen(context, builder, sig, args):
        i64 = _ir.IntType(64)
        flat = []
        for ty, value in zip(sig.args[1:], args[1:], strict=True):
            if isinstance(ty, _types.Array):
                array = context.make_array(ty)(context, builder, value)
                flat.append(builder.ptrtoint(array.data, i64))
                flat.extend(_cgutils.unpack_tuple(builder, array.shape, ty.ndim))
            else:
                flat.append(context.cast(builder, value, ty, _types.int64))
        fnty = _ir.FunctionType(i64, [i64] * len(flat))
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), flat)

    return _types.int64(addr, *operands), codegen


def _pointer_to(dtype):
    # An intrinsic: an int64 address as a pointer to ``dtype`` (for ``numba.carray``).
    @_intrinsic
    def at(typingctx, addr):
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(dtype).as_pointer())

        return _types.CPointer(dtype)(addr), codegen

    return at


_int32_at = _pointer_to(_types.int32)
_float64_at = _pointer_to(_types.float64)
