"""Write the tape-file fixtures of ``tests/test_io.py`` and ``tests/test_program.py``:
``python tests/data/make_fixtures.py``.

``tape_v1.npz`` is a tape in file format version 1. It must keep loading (and give the
numbers ``test_io.py`` expects) for as long as tapejit reads format version 1. The file
carries the op table's fingerprint, and a file written with another table is refused
unless that table's fingerprint is listed in ``tapejit._ops.COMPATIBLE_FINGERPRINTS``
(for changes that leave the meaning of every opcode as it was, such as a new
implementation of ``sin``). Regenerate it only when opcodes change meaning on purpose.

``tape_v1.pickle`` is the same tape pickled (``Tape.__reduce__``: the packed program of
format version 1, header of 14 fields, rows of 9 ints). Pickles made by earlier versions
must keep loading: a later program layout has to recognize and convert this one.
"""

from __future__ import annotations

import pickle
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


def make_v1(path: Path = HERE / "tape_v1.npz") -> Path:
    tape = tapejit.record(fixture, np.array([2.0, 5.0]), np.array([3.0]), argnums=0)
    save_tape(tape, path)
    return path


def make_pickle_v1(path: Path = HERE / "tape_v1.pickle") -> Path:
    tape = tapejit.record(fixture, np.array([2.0, 5.0]), np.array([3.0]), argnums=0)
    path.write_bytes(pickle.dumps(tape, protocol=4))
    return path


if __name__ == "__main__":
    print(make_v1())
    print(make_pickle_v1())
