"""Write the tape-file fixtures of ``tests/test_io.py`` and ``tests/test_program.py``:
``python tests/data/make_fixtures.py``.

Both tape files hold the same tape (:func:`fixture`) and must keep loading, and give the
numbers ``test_io.py`` expects, for as long as tapejit reads their format version.

``tape_v2.npz`` (format version 2, written by this script) records the ops it uses with
their definitions' hashes (``tapejit._ops.op_fingerprint``): it loads as long as those
ops are defined as they were. Regenerate it only when one of them changes meaning on
purpose.

``tape_v1.npz`` (format version 1) was written by tapejit 0.1, which this script no
longer can: it carries one fingerprint of that whole op table, and loads because the
fingerprint is listed in ``tapejit._ops.COMPATIBLE_FINGERPRINTS``.

``tape_v1.pickle`` is the same tape pickled (``Tape.__reduce__``) by an earlier tapejit:
the packed program of format version 1 (header of 14 fields, rows of 9 ints), which
``tapejit._program.upgrade`` recognizes and converts. Pickles made by earlier versions must
keep loading; this script writes today's format, so do not regenerate this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import tapejit  # noqa: E402
from tapejit._io import save_tape  # noqa: E402


def fixture(x, p):
    """The seed y = ln(x1) + x1*x2 - sin(x2), plus a guarded second output with a
    parameter: z = p * exp(-x1) where x2 > 0 (recorded), -p otherwise."""
    y = np.log(x[0]) + x[0] * x[1] - np.sin(x[1])
    if x[1] > 0.0:  # recorded as a guard
        z = p[0] * np.exp(-x[0])
    else:
        z = -p[0]
    return y, z


def make_v2(path: Path = HERE / "tape_v2.npz") -> Path:
    tape = tapejit.record(fixture, np.array([2.0, 5.0]), np.array([3.0]), argnums=0)
    save_tape(tape, path)
    return path


if __name__ == "__main__":
    print(make_v2())
