"""Sharing a tape with other processes without copying it: :func:`share` and
:class:`SharedTape`.

A tape is two flat arrays, the packed int32 program and the float64 constant pool (see
``_tape.py``). :func:`share` copies both, once, into one block of
:mod:`multiprocessing.shared_memory`::

    [ constants (n_consts float64) | program (prog_size int32) ]

and returns a :class:`SharedTape`: a handle of a few hundred bytes that pickles as the
block's name and the tape's shapes. :meth:`SharedTape.attach` in any process on the same
machine maps the block (copy-on-write; nothing writes it) and builds a
:class:`~tapejit.Tape` directly over it (``_tape.from_packed``: validated, not copied), so
a tape of any size costs each worker one validation and no memory of its own.

Lifetime: the process that called :func:`share` owns the block. It stays available to
:meth:`~SharedTape.attach` until the owner calls :meth:`~SharedTape.unlink` (or
:meth:`~SharedTape.close`, or leaves a ``with`` block, or drops the handle); tapes already
attached keep working after that, since a mapping outlives the name (POSIX semantics;
on Windows the block lives while any process maps it).

Workers attach without registering the block with :mod:`multiprocessing`'s resource
tracker (on Python < 3.13 an attachment would otherwise be "cleaned up", that is
unlinked, when the worker exits, under the owner's feet).
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
import weakref
from multiprocessing import shared_memory

import numpy as np

from ._tape import Tape, from_packed, packed

__all__ = ["SharedTape", "share"]

# Tapes attached in this process, by sharing (handle token): attaching again is free (no second
# mapping, no second validation).
_ATTACHED: dict[str, Tape] = {}
_LOCK = threading.Lock()


def _map_private(name: str, nbytes: int):
    """Map ``nbytes`` of the shared block ``name`` copy-on-write, untracked (an mmap).

    The pages stay the block's (no copy) while nothing writes them, and nothing does: the
    tape's own views are read-only. Being writeable, the mapping gives the kernels the
    array type they are compiled and cached for, not a read-only variant of its own;
    a write could never reach the block or another process.
    """
    if os.name == "nt":  # no resource tracker; a mapping keeps the block alive
        shm = shared_memory.SharedMemory(name=name)  # FileNotFoundError if gone
        try:
            return mmap.mmap(-1, max(nbytes, 1), tagname=name, access=mmap.ACCESS_COPY)
        finally:
            shm.close()
    import _posixshmem  # what SharedMemory itself uses on POSIX

    fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _release(shm: shared_memory.SharedMemory, unlink: bool) -> None:
    # Run by close()/unlink() and by the owner handle's finalizer.
    try:
        shm.close()
    except BufferError:  # a view of the owner's mapping is still alive somewhere
        pass
    if unlink:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


class SharedTape:
    """A handle to a tape held in shared memory; create one with :func:`share`.

    The handle is small and picklable (it holds the block's name, sizes and the tape's
    shapes, not the tape), so it can be passed to worker processes as a task argument,
    an initializer argument or a global. In a worker, :meth:`attach` returns the tape.

    The handle returned by :func:`share` *owns* the block: use it as a context manager,
    or call :meth:`unlink` once no further worker needs to attach. Copies of the handle
    (unpickled in other processes) never unlink the block.

    Attributes
    ----------
    name : str
        Name of the shared memory block.
    nbytes : int
        Size of the block's payload in bytes.
    """

    def __init__(self, name: str, n_consts: int, prog_size: int, input_shapes: tuple,
                 output_shapes: tuple, tape_name: str, token: str = "") -> None:
        self.name = name
        # Identifies this sharing (a block name may be reused after an unlink).
        self._token = token or secrets.token_hex(8)
        self.n_consts = int(n_consts)
        self.prog_size = int(prog_size)
        self.input_shapes = input_shapes
        self.output_shapes = output_shapes
        self.tape_name = tape_name
        self._shm: shared_memory.SharedMemory | None = None
        self._finalizer = None

    @property
    def nbytes(self) -> int:
        return 8 * self.n_consts + 4 * self.prog_size

    @property
    def owner(self) -> bool:
        """Whether this handle owns the block (it came from :func:`share` here)."""
        return self._shm is not None

    def __getstate__(self):
        return (self.name, self.n_consts, self.prog_size, self.input_shapes,
                self.output_shapes, self.tape_name, self._token)

    def __setstate__(self, state) -> None:
        self.__init__(*state)

    def __repr__(self) -> str:
        role = "owner" if self.owner else "handle"
        return (f"<tapejit.SharedTape {self.name!r} ({role}): {self.nbytes} bytes, "
                f"tape {self.tape_name!r}>")

    def attach(self) -> Tape:
        """The shared tape, built over a copy-on-write mapping of the block (no copy).

        The first call in a process maps and validates the block; later calls return the
        same :class:`~tapejit.Tape`. It stays valid however the block's owner closes or
        unlinks it later.

        Raises
        ------
        FileNotFoundError
            If the block no longer exists (the owner unlinked it before this process
            attached).
        """
        with _LOCK:
            tape = _ATTACHED.get(self._token)
            if tape is not None:
                return tape
            try:
                buf = _map_private(self.name, self.nbytes)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"shared tape block {self.name!r} does not exist (any more): its "
                    "owner unlinked it, or exited, before this process attached"
                ) from None
            if len(buf) < self.nbytes:
                raise ValueError(f"shared block {self.name!r} is smaller than its tape")
            consts = np.frombuffer(buf, dtype=np.float64, count=self.n_consts)
            prog = np.frombuffer(buf, dtype=np.int32, count=self.prog_size,
                                 offset=8 * self.n_consts)
            tape = from_packed(prog, consts, self.input_shapes, self.output_shapes,
                               self.tape_name, private=True)
            _ATTACHED[self._token] = tape
            return tape

    def detach(self) -> None:
        """Forget this process's attached tape (the mapping goes when the tape does)."""
        with _LOCK:
            _ATTACHED.pop(self._token, None)

    def close(self) -> None:
        """Release this process's use of the block; the owner also unlinks it.

        In a worker this is :meth:`detach`. In the owner it unmaps the owner's own
        mapping and removes the block's name, as :meth:`unlink`: tapes already attached
        anywhere keep working, but no process can attach afterwards.
        """
        if self._finalizer is not None:
            self.unlink()
        else:
            self.detach()

    def unlink(self) -> None:
        """Remove the block (owner only). Idempotent; attached tapes keep working."""
        if self._finalizer is None:
            raise RuntimeError(
                "only the handle returned by share() can unlink the block; this is a "
                "copy (e.g. unpickled in a worker): use close() or detach()"
            )
        self.detach()
        self._finalizer()  # closes and unlinks, once
        self._shm = None

    def __enter__(self) -> SharedTape:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def share(tape: Tape) -> SharedTape:
    """Put a tape in shared memory for worker processes on this machine.

    The packed program and constants are copied once into a new
    :mod:`multiprocessing.shared_memory` block; every process that calls
    :meth:`SharedTape.attach` on the (pickled) handle evaluates that one copy.

    Parameters
    ----------
    tape : Tape

    Returns
    -------
    SharedTape
        The owning handle: keep it alive while workers may still attach, and close it
        (or use it in a ``with`` block) when done. Dropping it unlinks the block.

    Examples
    --------
    >>> import numpy as np, tapejit, pickle
    >>> tape = tapejit.record(lambda x: np.sum(x ** 2), np.zeros(3))
    >>> with tapejit.share(tape) as handle:
    ...     worker_copy = pickle.loads(pickle.dumps(handle))  # what a worker receives
    ...     worker_copy.attach().gradient(np.array([1.0, 2.0, 3.0])).tolist()
    [2.0, 4.0, 6.0]
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"share() needs a tapejit.Tape; got {type(tape).__name__}")
    prog, consts = packed(tape)
    nbytes = 8 * consts.size + 4 * prog.size
    shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
    try:
        view = np.ndarray(consts.size, dtype=np.float64, buffer=shm.buf)
        view[:] = consts
        view = np.ndarray(prog.size, dtype=np.int32, buffer=shm.buf, offset=8 * consts.size)
        view[:] = prog
        del view
    except BaseException:
        _release(shm, True)
        raise
    # POSIX names carry a leading slash internally; attach() adds it back.
    handle = SharedTape(shm.name.lstrip("/"), consts.size, prog.size, tape.input_shapes,
                        tape.output_shapes, tape.name)
    handle._shm = shm
    handle._finalizer = weakref.finalize(handle, _release, shm, True)
    return handle
