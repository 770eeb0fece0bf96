"""Render the docs' math as MathML at build time (Sphinx HTML math renderer ``mathml``).

Sphinx's default renderer leaves the TeX in the page for MathJax to typeset in the
browser from a CDN: without network the reader sees raw ``\\(...\\)``. Here each
``:math:`` role and ``.. math::`` block is converted once, by ``latex2mathml`` (pure
Python, the ``docs`` extra), into MathML that browsers lay out natively (Chromium 109+,
Firefox, Safari): no script, no font download, nothing fetched when a page is viewed.
"""

from __future__ import annotations

import re

from docutils import nodes
from latex2mathml.converter import convert as _latex2mathml
from sphinx.util.math import get_node_equation_number

#: A function name (``\sin``, ``\ln``: an ``<mi>`` of several letters) not followed by
#: an opening parenthesis. TeX puts a thin space between such a name and its argument
#: (``\sin x``, not ``\sin(x)``); latex2mathml leaves none, so ``sinx`` would show.
_FUNCTION_NAME = re.compile(r"(<mi>[A-Za-z]{2,}</mi>)(?!<mo[^>]*>(?:\(|&#x00028;))")


#: A slash, which TeX sets as a plain symbol (``1/x``) and MathML as an operator with
#: space around it (``1 / x``).
_SLASH = "<mo>&#x0002F;</mo>"


def convert(tex: str, display: str) -> str:
    """MathML for ``tex`` (``display``: ``"inline"`` or ``"block"``)."""
    mathml = _latex2mathml(tex, display=display)
    mathml = mathml.replace(_SLASH, '<mo lspace="0" rspace="0">&#x0002F;</mo>')
    return _FUNCTION_NAME.sub(r'\1<mspace width="0.167em" />', mathml)


def _visit_math(self, node: nodes.math) -> None:
    self.body.append(self.starttag(node, "span", "", CLASS="math"))
    self.body.append(convert(node.astext(), display="inline"))
    self.body.append("</span>")
    raise nodes.SkipNode


def _visit_displaymath(self, node: nodes.math_block) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math"))
    if node["number"]:
        number = get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, "Link to this equation")
        self.body.append("</span>")
    # Paragraphs of one block are separate equations, each on its own line (rows
    # within one equation: write \begin{aligned} ... \end{aligned}).
    for part in (p for p in node.astext().split("\n\n") if p.strip()):
        self.body.append(convert(part, display="block"))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (_visit_math, None), (_visit_displaymath, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
