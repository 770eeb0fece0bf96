"""The kernels compute the same bits as those of an earlier tapejit.

``tests/data/kernel_bits.npz`` holds random programs over every op (see
``_kernel_bits.py``) and the results the kernels of tapejit at commit 8c34c1d computed for
them in every kind of call: one point and batched, values, gradients, vjp, jvp, Jacobians
both ways, hvp and Hessians, per-point parameters. A refactoring of the kernel sources or of
the program format must leave every one of those bits unchanged.

The one deliberate change since: tapejit's own ``exp``, ``expm1``, ``log1p``, ``tanh`` and
``logaddexp`` (``tapejit/_kernels/libm.py``, commit 7e04df9) compute those functions to
within an ulp of the C library's, not to its bits, so the programs that use them were
recomputed (``_kernel_bits.py --ops``); every other program keeps the bits of 8c34c1d.
pow's second partials, since written as the derivatives of its partials (the nested
derivatives, which differ from the old branches at a == 0), changed the Hessian and hvp
bits of programs 19, 25, 36, 37 and 40 by at most 1.1e-15 relative (``--ops pow``).
Programs 60-70 (``_kernel_bits.py --add``) cover the ops added since (opcodes 48-71:
numpy's division family, rounding, NaN tests, scipy.special), with the bits of the commit
that added them.
``tanh``, since computed from its Taylor series and ``exp`` (more accurate and cheaper than
the ``expm1`` quotient before), changed programs 19, 28, 36, 45 and 60 (``--ops tanh``) by
at most 2.5e-15 relative, or 1e-16 absolute where a second-order result cancels to about
zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _kernel_bits import programs, results, tape_of

# Tests of the optimised kernels (see tests/conftest.py).
pytestmark = pytest.mark.kernels

FIXTURE = Path(__file__).parent / "data" / "kernel_bits.npz"
CASES = programs(np.load(FIXTURE))


def _same_bits(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per element: identical bits, or both NaN (a NaN's payload is not specified)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return (got.view(np.uint64) == want.view(np.uint64)) | (np.isnan(got) & np.isnan(want))


def test_the_fixture_covers_every_op_and_operand_kind():
    from tapejit import OPS

    ops = np.concatenate([case["prog"]["opcodes"] for _, case in CASES])
    strides = np.concatenate([case["prog"]["strides"].ravel() for _, case in CASES])
    sizes = np.concatenate([case["prog"]["sizes"] for _, case in CASES])
    assert {op.code for op in OPS} <= set(ops.tolist())
    assert {0, 1, 2} <= set(strides.tolist()) and sizes.max() > 1


@pytest.mark.parametrize("index", [i for i, _ in CASES])
def test_same_bits_as_before(index):
    case = dict(CASES)[index]
    got = results(tape_of(case["prog"]), case["in"])
    assert set(got) == set(case["out"])
    for what, want in case["out"].items():
        ok = _same_bits(got[what], want)
        assert got[what].shape == want.shape, what
        assert ok.all(), (
            f"program {index}, {what}: {np.count_nonzero(~ok)} of {ok.size} results differ "
            f"from the stored bits, e.g. {np.asarray(got[what])[~ok][:3]} vs "
            f"{np.asarray(want)[~ok][:3]}")
