"""The kernels' scalar helpers as plain Python, for the op table's pure-numpy reference
interpreter (``tapejit/_show.py``), an independent check on the compiled kernels."""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from .._ops import ScipySpecial
from . import constants, scalar

#: The numpy function each of tapejit's own libm functions (``libm.py``) computes, to
#: within an ulp.
LIBM_NUMPY = {"_sin": np.sin, "_cos": np.cos, "_log": np.log, "_exp": np.exp,
              "_expm1": np.expm1, "_log1p": np.log1p, "_tanh": np.tanh}

#: Helpers of ``scalar.py`` that call a C library function numpy has no ufunc for, by the
#: scipy.special ufunc that computes it (to within a few ulp).
C_LIBRARY_SCIPY = {"_erf": "erf", "_erfc": "erfc", "_gammaln": "gammaln"}


def reference_namespace(math: Any) -> dict[str, Any]:
    """Names the table's expressions use, without Numba: ``math`` (as given), ``np``,
    the helpers of ``scalar.py`` as Python functions, the kernel constants and
    :data:`LIBM_NUMPY`.

    Each helper is its compiled function's ``py_func`` rebound to the returned namespace,
    so that it reads the given ``math`` and calls the other helpers as Python too.
    """
    # the kernels' named constants, which the generated module defines for them
    ns: dict[str, Any] = {name: getattr(constants, name) for name in constants.KERNEL_CONSTANTS}
    ns.update(math=math, np=np)
    for name, obj in vars(scalar).items():
        fn = getattr(obj, "py_func", None)
        if name.startswith("_") and isinstance(fn, types.FunctionType):
            ns[name] = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__,
                                          fn.__closure__)
        elif name.startswith("_") and isinstance(obj, (float, tuple)):
            ns[name] = obj  # the helpers' constants (``_BERNOULLI``, ...)
    ns.update(LIBM_NUMPY)
    # imported at the first call, as the op table's: a listing does not import scipy
    ns.update({k: ScipySpecial(v) for k, v in C_LIBRARY_SCIPY.items()})
    return ns
