"""What to write instead of a numpy function tapejit cannot record.

A tape has fixed shapes and records real-valued operations, so some numpy functions have
no faithful recording (their result's shape depends on the values, or they call back into
Python per element). The error for each names the rewrite that records.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_DATA_SHAPE = "its result's shape depends on the values, and a tape has fixed shapes"

#: numpy function -> (why it cannot be recorded, what to write instead).
REWRITES: dict[str, tuple[str, str]] = {
    "unique": (_DATA_SHAPE, "np.sort(x) keeps every value; compare neighbours with np.diff"),
    "nonzero": (_DATA_SHAPE, "np.where(cond, a, b) selects without indices"),
    "argwhere": (_DATA_SHAPE, "np.where(cond, a, b) selects without indices"),
    "flatnonzero": (_DATA_SHAPE, "np.where(cond, a, b) selects without indices"),
    "extract": (_DATA_SHAPE, "np.where(cond, x, 0.0) keeps the shape"),
    "compress": (_DATA_SHAPE, "index with a constant mask, or np.where(cond, x, 0.0)"),
    "delete": ("tapejit records it only with constant indices",
               "index with a constant boolean mask: x[keep]"),
    "insert": ("tapejit records it only with constant indices",
               "np.concatenate([x[:i], values, x[i:]])"),
    "searchsorted": ("the index depends on the values",
                     "np.sum(x[None, :] <= v[:, None], axis=1) counts without an index (or "
                     "int() of it, which the tape guards)"),
    "digitize": ("the index depends on the values",
                 "np.sum(v[:, None] >= bins[None, :], axis=1), or np.interp for a lookup"),
    "histogram": ("the bin counts are integers that depend on the values",
                  "np.sum((x >= lo) & (x < hi)) per bin, computed with constant edges"),
    "bincount": ("the counts are integers that depend on the values",
                 "np.sum(x == k) for each constant k"),
    "piecewise": ("it calls Python functions on masked parts",
                  "np.where(cond, f1(x), f2(x)), or np.select for several conditions"),
    "vectorize": ("it calls a Python function per element",
                  "call the function on whole arrays: numpy functions work elementwise"),
    "apply_along_axis": ("it calls a Python function per slice",
                         "a Python loop over the slices, or the function on whole arrays"),
    "frompyfunc": ("it calls a Python function per element",
                   "call the function on whole arrays"),
    "logspace": ("it has no traced form", "np.power(base, np.linspace(start, stop, num))"),
    "geomspace": ("it has no traced form",
                  "np.exp(np.linspace(np.log(start), np.log(stop), num))"),
    "nansum": ("NaN-skipping reductions are not recorded",
               "np.sum(x, where=mask) with a constant mask, or np.sum(np.where(np.isnan(x), "
               "0.0, x))"),
    "nanmean": ("NaN-skipping reductions are not recorded",
                "np.mean(x, where=mask) with a constant mask"),
    "nanmax": ("NaN-skipping reductions are not recorded", "np.max(np.fmax(x, -np.inf))"),
    "nanmin": ("NaN-skipping reductions are not recorded", "np.min(np.fmin(x, np.inf))"),
    "isclose": ("its result is a boolean array",
                "np.abs(a - b) <= atol + rtol * np.abs(b), a traced 0/1 array"),
    "allclose": ("its result is a Python bool",
                 "np.all(np.abs(a - b) <= atol + rtol * np.abs(b)), which a branch guards"),
    "array_equal": ("its result is a Python bool", "np.all(a == b), which a branch guards"),
    "count_nonzero": ("its result is an integer", "np.sum(x != 0), a traced count"),
    "convolve": ("it is not recorded yet",
                 "a sum of shifted slices: sum(k[j] * x[j:n - m + 1 + j] for j in range(m)) "
                 "for mode='valid'"),
    "correlate": ("it is not recorded yet", "a sum of shifted slices, as for np.convolve"),
    "resize": ("it is not recorded", "np.tile / np.concatenate, then slice"),
    "unwrap": ("it is not recorded", "np.cumsum of the wrapped differences"),
    "lexsort": ("it returns indices that depend on the values", "np.sort of one key"),
}

#: numpy.linalg and numpy.fft functions, by their module's public name.
SUBMODULE_REWRITES: dict[tuple[str, str], tuple[str, str]] = {
    ("linalg", "eig"): ("eigenvectors of a general matrix are complex",
                        "np.linalg.eigh for a symmetric matrix"),
    ("linalg", "eigvals"): ("eigenvalues of a general matrix are complex",
                            "np.linalg.eigvalsh for a symmetric matrix"),
    ("linalg", "matrix_rank"): ("its result is an integer",
                                "compare np.linalg.svd(a, compute_uv=False) with a tolerance"),
    ("linalg", "cond"): ("it is not recorded",
                         "s = np.linalg.svd(a, compute_uv=False); s[0] / s[-1]"),
}


def _key(func: Callable) -> tuple[str, str]:
    module = getattr(func, "__module__", None) or "numpy"
    sub = "linalg" if "linalg" in module else "fft" if "fft" in module else ""
    return sub, getattr(func, "__name__", "")


def rewrite_for(func: Callable) -> str | None:
    """``" (why). Instead: ..."``-style text for ``func``, or ``None`` where tapejit knows
    no rewrite."""
    sub, name = _key(func)
    if sub == "fft":
        return ("tapejit records real-valued code and has no FFT. Instead: write the "
                "transform as a product with a constant (cos/sin) matrix")
    entry = SUBMODULE_REWRITES.get((sub, name)) if sub else REWRITES.get(name)
    if entry is None or (not sub and getattr(np, name, None) is not func):
        return None
    why, instead = entry
    return f"{why}. Instead: {instead}"
