"""asv benchmarks for tapejit.

Hand-written baselines and peer implementations live in ``_baselines.py``
(shared with ``asv_bench/compare_peers.py``).
"""

import os
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]

# The benchmarks measure the optimised kernels (compiled by ``tapejit compile`` or on first
# use), never the generic tier a cold cache would start on.
os.environ.setdefault("TAPEJIT_KERNELS", "optimized")


def import_tapejit():
    """Return ``(tapejit module or None, reason it is unavailable or None)``.

    Prefers an installed ``tapejit``.  When that is missing and we are not in
    an asv-built environment (i.e. outside asv, or ``asv run --python=same``),
    falls back to the working tree at the repository root.  A bare
    ``tapejit/`` directory without ``__init__.py`` counts as unavailable.
    """
    try:
        import tapejit
    except ImportError as exc:
        if os.environ.get("ASV_ENV_TYPE", "existing") != "existing":
            return None, f"ImportError: {exc}"
        if str(_REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(_REPO_ROOT))
        try:
            import tapejit
        except Exception as exc2:
            return None, f"{type(exc2).__name__}: {exc2}"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if getattr(tapejit, "__file__", None) is None:
        return None, "tapejit is only a namespace package (no __init__.py yet)"
    return tapejit, None
