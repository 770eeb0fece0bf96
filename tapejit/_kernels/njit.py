"""The decorator of every kernel function: Numba's ``njit`` with numpy's error model."""

from numba import njit as _njit

# --- kernel source ---

def njit(**options):
    # IEEE arithmetic everywhere: 1/0 is inf and 0/0 is NaN (numpy's rules), never a
    # ZeroDivisionError from inside a sweep.
    return _njit(error_model="numpy", **options)
