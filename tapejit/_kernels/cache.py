"""Write the generated kernel module into the cache directory, once, and import it.

The module is written under a name that is the hash of its source, so Numba's on-disk
cache (``cache=True``) stays valid for exactly that source and is reused by every later
process. The source has no paths or timestamps in it: it is the same in every process.
Generating it is a noticeable part of a warm start, so ``sources/<key>`` in the cache
directory records which module the package's current files generate (``_inputs_key``: a
hash of all of them), and a process whose files have a record imports that module without
generating anything.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import py_compile
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from .codegen import generate_source


def cache_dir() -> Path:
    """Directory that holds the generated kernel source and Numba's cache of it.

    ``TAPEJIT_CACHE_DIR`` overrides the default ``$XDG_CACHE_HOME/tapejit`` (or
    ``~/.cache/tapejit``); an unwritable location falls back to the temp directory.
    """
    env = os.environ.get("TAPEJIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tapejit"


def _write_once(path: Path, source: str) -> None:
    if path.exists() and path.read_text() == source:
        return  # keep the mtime: Numba's cache index is keyed on it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(source)
    os.replace(tmp, path)


def _write_bytecode(path: Path) -> None:
    """Compile the module's bytecode next to it once, also where Python writes none
    (``PYTHONDONTWRITEBYTECODE``, common in containers): compiling the long generated
    source again would cost every process a noticeable part of its start."""
    cfile = importlib.util.cache_from_source(str(path))
    if os.path.exists(cfile):
        return
    try:
        py_compile.compile(str(path), cfile=cfile, doraise=True)
    except (OSError, py_compile.PyCompileError):
        pass  # the import compiles the source itself, as it would without this


def _roots() -> tuple[Path, Path]:
    return cache_dir(), Path(tempfile.gettempdir()) / f"tapejit-{os.getuid()}"


_MODULE_NAME = re.compile(r"tapejit_kernels_([0-9a-f]{16})")


class _KernelModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds kernel modules by name for Numba's cache of *user* functions.

    A user's ``cache=True`` function that calls :func:`tapejit.jit_value_and_grad` is
    cached with the name of the kernel module it was compiled against, and loading it
    imports that module. After the kernels change (a new op table, a new tapejit) the
    module has another name: this finder loads the old one from the cache directory, or
    gives an empty stand-in when it is gone, so that the cached function loads and its
    stamp check raises the clear error of ``_jit_api`` (not ``ModuleNotFoundError``).
    """

    def find_spec(self, fullname, path=None, target=None):
        m = _MODULE_NAME.fullmatch(fullname)
        if m is None:
            return None
        for root in _roots():
            candidate = root / m.group(1) / f"{fullname}.py"
            if candidate.is_file():
                return importlib.util.spec_from_file_location(fullname, candidate)
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # the default: an empty module

    def exec_module(self, module) -> None:
        module._tapejit_stand_in = True


if not any(isinstance(f, _KernelModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_KernelModuleFinder())


_PACKAGE = Path(__file__).resolve().parent.parent


def _inputs_key() -> str:
    """A hash of everything the generated source is made from: the text of every Python
    file of the package (the op table, the families, the kernel files and the generator)
    and the versions of Python, numpy and Numba. Hashing them takes a small fraction of
    generating the source, which a process with a warm cache then skips."""
    import numba
    import numpy

    h = hashlib.sha256(f"{sys.version}|{numpy.__version__}|{numba.__version__}".encode())
    for f in sorted(_PACKAGE.rglob("*.py")):
        h.update(b"\0" + f.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _known_digest(root: Path, key: str) -> str | None:
    """The digest of the module generated from inputs ``key`` in ``root``, if both the
    record and the module are there."""
    try:
        digest = (root / "sources" / key).read_text().strip()
    except OSError:
        return None
    ok = re.fullmatch(r"[0-9a-f]{16}", digest) and (
        root / digest / f"tapejit_kernels_{digest}.py").is_file()
    return digest if ok else None


def load_kernels() -> ModuleType:
    """Write the generated module (once per distinct source) and import it."""
    key = _inputs_key()
    for root in _roots():
        digest = _known_digest(root, key)
        if digest is not None:
            return _import(root / digest / f"tapejit_kernels_{digest}.py")
    source = generate_source()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = f"tapejit_kernels_{digest}"
    module = _loaded(name)
    if module is not None:
        return module
    path = None
    for root in _roots():
        candidate = root / digest / f"{name}.py"
        try:
            _write_once(candidate, source)
        except OSError:
            continue
        try:
            _write_once(root / "sources" / key, digest + "\n")
        except OSError:
            pass  # then the next process generates the source again
        path = candidate
        break
    if path is None:
        raise OSError(
            "tapejit could not write its kernel module to any cache directory; "
            "set TAPEJIT_CACHE_DIR to a writable directory"
        )
    return _import(path)


def _loaded(name: str) -> ModuleType | None:
    """Kernel module ``name`` if this process has imported it (not a stand-in)."""
    module = sys.modules.get(name)
    return None if getattr(module, "_tapejit_stand_in", False) else module


def _import(path: Path) -> ModuleType:
    """Import the kernel module at ``path`` (once per process)."""
    name = path.stem
    module = _loaded(name)
    if module is not None:
        return module
    _write_bytecode(path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
