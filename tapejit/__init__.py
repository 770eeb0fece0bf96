"""tapejit: record plain numpy code once, evaluate values and derivatives fast, anywhere.

>>> import numpy as np, tapejit
>>> tape = tapejit.record(lambda x: np.sum(x ** 2), np.zeros(3))
>>> tape.gradient(np.array([1.0, 2.0, 3.0])).tolist()
[2.0, 4.0, 6.0]
"""

from . import _families, linalg, optimize, special  # noqa: F401 - _families registers the families
from ._errors import BranchError, TracingError
from ._float32 import Float32Tape
from ._io import load_tape as load
from ._jit_api import JitArgs, jit_value, jit_value_and_grad
from ._kernels.tiers import wait_for_kernels
from ._loop import fori_loop, scan
from ._numpy_funcs import supported_functions
from ._ops import OPS, Op
from ._record import record, stop_gradient
from ._share import SharedTape, share
from ._stream import evaluate_file
from ._tape import Tape
from ._transforms import (
    RecordingWarning,
    TapeCache,
    grad,
    hessian,
    hvp,
    jacobian,
    jvp,
    value_and_grad,
)
from ._validate import TapeFormatError
from ._version import __version__

__all__ = [
    "OPS",
    "BranchError",
    "Float32Tape",
    "JitArgs",
    "Op",
    "RecordingWarning",
    "SharedTape",
    "SparseStack",
    "Tape",
    "TapeCache",
    "TapeFormatError",
    "TracingError",
    "__version__",
    "evaluate_file",
    "fori_loop",
    "grad",
    "hessian",
    "hvp",
    "jacobian",
    "jit_value",
    "jit_value_and_grad",
    "jvp",
    "linalg",
    "load",
    "optimize",
    "record",
    "scan",
    "share",
    "special",
    "stop_gradient",
    "supported_functions",
    "value_and_grad",
    "wait_for_kernels",
]


def __getattr__(name: str):
    # SparseStack lives with the colourings, which import scipy.sparse: loaded on first
    # use, so that ``import tapejit`` does not import scipy
    if name == "SparseStack":
        from ._colouring import SparseStack

        return SparseStack
    raise AttributeError(f"module 'tapejit' has no attribute {name!r}")
