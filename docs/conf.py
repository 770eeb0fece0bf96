"""Sphinx configuration for the tapejit documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` from the repository root.
The build writes nothing under ``docs/``: the op listing is rendered from ``tapejit.OPS``
into the text of ``ops.rst`` as Sphinx reads it (``source-read``, in place of its
``.. include:: _generated/ops.rst`` line), and math is converted to MathML
(``_mathml.py``), so the pages need no script or network to show it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The working tree's tapejit, whether or not it is installed; and docs/_gen_ops.py.
for _p in (str(DOCS), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def _import_beside(name: str):
    """Import the module ``docs/<name>.py`` without writing ``docs/__pycache__``."""
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        return importlib.import_module(name)
    finally:
        sys.dont_write_bytecode = saved


render_ops = _import_beside("_gen_ops").render_ops

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
html_math_renderer = "mathml"  # _mathml: MathML written at build time, no MathJax or CDN
exclude_patterns = ["_build", "_generated", "_include", "Thumbs.db", ".DS_Store"]
root_doc = "index"
default_role = "literal"

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types
# Defaults as written in the source (``max_bytes=MAX_BYTES``, not ``4294967296``);
# the docstrings say what the named constants are.
autodoc_preserve_defaults = True
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
html_static_path = ["_static"]
html_css_files = ["tapejit.css"]  # wide code blocks and tables scroll, never clip

#: The line of ``ops.rst`` that stands for the op listing generated from the op table.
OPS_INCLUDE = ".. include:: _generated/ops.rst"


def _insert_ops_listing(app, docname: str, source: list[str]) -> None:
    """Put the op listing, rendered from ``tapejit.OPS``, in place of its include line.

    The listing goes straight into the text Sphinx parses, so no file is written into
    the source tree (``docs/_generated/`` stays absent; the line keeps ``ops.rst``
    readable as plain text and names the listing's place).
    """
    if docname == "ops":
        if OPS_INCLUDE not in source[0]:
            raise RuntimeError(f"docs/ops.rst lost the line {OPS_INCLUDE!r}")
        source[0] = source[0].replace(OPS_INCLUDE, render_ops())


def setup(app):
    # set up from here, not listed in `extensions`: Sphinx would import it with bytecode
    # (and tests that read this file need not have the docs extra)
    _import_beside("_mathml").setup(app)
    app.connect("source-read", _insert_ops_listing)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
