"""Sphinx configuration for the tapejit documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` from the repository root.
The op listing (``_generated/ops.rst``) is written from ``tapejit.OPS`` at every build.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The working tree's tapejit, whether or not it is installed; and docs/_gen_ops.py.
for _p in (str(DOCS), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _gen_ops import write_ops  # noqa: E402

import tapejit  # noqa: E402

# -- project -------------------------------------------------------------------------
project = "tapejit"
author = "the tapejit developers"
copyright = "the tapejit developers"
release = tapejit.__version__
version = ".".join(release.split(".")[:2])

# -- general ---------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "numpydoc",
]
exclude_patterns = ["_build", "_generated", "_include", "Thumbs.db", ".DS_Store"]
root_doc = "index"
default_role = "literal"

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# -- HTML ------------------------------------------------------------------------------
html_theme = "alabaster"
html_theme_options = {
    "description": "Record numpy code once; values and gradients over millions of points.",
    "page_width": "1180px",
    "sidebar_width": "220px",
    "fixed_sidebar": False,
}
html_static_path: list[str] = []


def _generate_ops(app) -> None:
    """Write the op listing from the op table before any page is read."""
    write_ops(Path(app.srcdir) / "_generated" / "ops.rst")


def setup(app):
    app.connect("builder-inited", _generate_ops)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
