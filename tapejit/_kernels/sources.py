"""Reading the kernel source files of this package.

Each kernel file (``scalar.py``, ``libm.py``, ``reverse.py``, ...) is ordinary Python:
above :data:`MARKER` it imports what its code uses, for ruff, editors and readers; below
it is the kernel code that the generator copies into the one generated kernel module
(where those names are module globals). Nothing above the marker reaches the module.
"""

from __future__ import annotations

from pathlib import Path

#: The line that separates a kernel file's imports (for tools) from its kernel code.
MARKER = "# --- kernel source ---"

_HERE = Path(__file__).resolve().parent


def kernel_path(name: str) -> Path:
    """The file of kernel source ``name`` (``"scalar"``: ``tapejit/_kernels/scalar.py``)."""
    return _HERE / f"{name}.py"


def kernel_body(name: str) -> str:
    """The kernel code of file ``name``: its text after the :data:`MARKER` line."""
    text = kernel_path(name).read_text(encoding="utf-8")
    _, sep, body = text.partition(MARKER + "\n")
    if not sep:
        raise RuntimeError(f"kernel file {name}.py has no line {MARKER!r}")
    return body
