"""Writing files safely: every output goes to a temporary file renamed into place.

Whatever tapejit writes (tape files, :func:`~tapejit.evaluate_file` results, ``tapejit
eval --out``, pictures) goes through :func:`replacing`: the data is written to a new
file in the target's own directory and renamed over the target only when everything
succeeded, so on any error, or a kill, the file that was at the path is untouched.

A temporary file is named ``.<target>.tapejit-<host>-<pid>-<random>.tmp``. A process
killed while writing cannot remove its own, so each write also removes the temporary
files in its directory that a dead process of this machine left behind.

:func:`check_distinct` refuses outputs that are the same file as an input, or as each
other, by device and inode (symbolic and hard links included), before anything is
written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator, Mapping

__all__ = ["check_distinct", "replacing"]

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_SUFFIX = ".tmp"
# .<target>.tapejit-<host>-<pid>-<random>.tmp
_TEMP = re.compile(r"^\..*\.tapejit-([0-9a-f]{8})-([0-9]+)-[0-9a-f]+\.tmp$")


def _target(path: str | os.PathLike[str]) -> str:
    """The real file a path names (a symbolic link is written through, not replaced)."""
    if isinstance(path, bytes):
        raise TypeError("output paths must be str or path-like, not bytes")
    final = os.path.realpath(os.fspath(path))
    if os.path.isdir(final):
        raise IsADirectoryError(f"cannot write {os.fspath(path)!r}: it is a directory; "
                                "give a file name")
    directory = os.path.dirname(final)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: no directory {directory!r}")
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, say: alive
        return True
    return True


def _remove_stale(directory: str) -> None:
    """Remove temporary files that dead processes of this machine left in ``directory``."""
    if os.name != "posix":  # os.kill(pid, 0) is no liveness test elsewhere
        return
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or m.group(1) != _HOST:
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):  # raced with another cleaner: fine
            os.unlink(entry.path)


def _new_temp(final: str) -> str:
    """Create an empty temporary file beside ``final`` (mode as a new file would get, or
    ``final``'s own mode when it exists) and return its path."""
    directory, name = os.path.split(final)
    tmp = os.path.join(
        directory, f".{name}.tapejit-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(final).st_mode))
    finally:
        os.close(fd)
    return tmp


def _sync(path: str) -> None:
    """``fsync`` a file or (on POSIX) a directory; a no-op where that is not possible."""
    if os.path.isdir(path) and os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(*paths: str | os.PathLike[str]) -> Iterator[tuple[str, ...]]:
    """Temporary files standing in for ``paths``, renamed over them on success.

    Write the outputs to the yielded paths (each an existing empty file in its target's
    directory). When the block ends normally they are renamed over the targets, in
    order; when it raises they are removed and the targets are left as they were.

    Raises
    ------
    IsADirectoryError, FileNotFoundError
        Before anything is created, if a target is a directory or its directory does
        not exist.
    ValueError
        If two of ``paths`` name the same file.
    """
    finals = [_target(p) for p in paths]
    check_distinct({f"output {i}": p for i, p in enumerate(paths)}, {})
    for directory in dict.fromkeys(os.path.dirname(f) for f in finals):
        _remove_stale(directory)
    temps: list[str] = []
    try:
        for final in finals:
            temps.append(_new_temp(final))
        yield tuple(temps)
        for tmp in temps:
            _sync(tmp)  # the data is on disk before a name points to it
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
        for directory in dict.fromkeys(os.path.dirname(f) for f in finals):
            _sync(directory)  # and so are the new names
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _identity(path: str | os.PathLike[str]) -> tuple:
    """Device and inode of an existing file, else its resolved path."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.realpath(os.fspath(path)))
    return ("inode", st.st_dev, st.st_ino)


def _source_path(obj: object) -> str | os.PathLike[str] | None:
    """The file behind an input: a path, or the file an ``np.memmap`` maps."""
    if isinstance(obj, (str, os.PathLike)):
        return obj
    name = getattr(obj, "filename", None)  # np.memmap and its views
    return name if isinstance(name, (str, os.PathLike)) else None


def check_distinct(outputs: Mapping[str, object], inputs: Mapping[str, object]) -> None:
    """Refuse outputs that are the same file as an input or as another output.

    Parameters
    ----------
    outputs, inputs : mapping of a description to a path (or, for inputs, an
        ``np.memmap``; anything else is ignored)

    Raises
    ------
    ValueError
        Naming both, if two refer to one file (compared by device and inode when the
        file exists, so symbolic and hard links are caught; by resolved path otherwise).
    """
    seen: dict[tuple, tuple[str, object]] = {}
    for role, items in (("input", inputs), ("output", outputs)):
        for what, obj in items.items():
            path = _source_path(obj)
            if path is None:
                continue
            key = _identity(path)
            if key in seen:
                other, other_path = seen[key]
                if role == "input":
                    continue  # reading one file twice is fine
                raise ValueError(
                    f"{what} {os.fspath(path)!r} is the same file as {other} "
                    f"{os.fspath(other_path)!r}: writing it would destroy the data; "
                    "give another path"
                )
            seen[key] = (what, path)
