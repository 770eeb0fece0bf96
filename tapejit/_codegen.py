"""Moved to :mod:`tapejit._kernels` (``codegen.py`` generates, ``cache.py`` loads); this
re-export keeps ``from ._codegen import load_kernels`` working."""

from ._kernels.cache import load_kernels
from ._kernels.codegen import generate_source

__all__ = ["generate_source", "load_kernels"]
