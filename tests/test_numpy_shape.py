"""numpy's shape functions on traced values (``tapejit/_numpy_shape.py``): values against
numpy's, derivatives in every sweep against central differences."""

import numpy as np
import pytest
from _numpy_fn_check import check_all_sweeps, check_hessian

import tapejit
from tapejit import TracingError, supported_functions

RNG = np.random.default_rng(20)
X0 = RNG.standard_normal(12)
X = X0 + 0.5 * RNG.standard_normal((4, 12))
MASK = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0], dtype=bool)


def m(x):
    return x.reshape(3, 4)


CASES = {
    "split": lambda x: np.split(x, 3)[1] * np.split(x, [2, 5])[2][:4],
    "array_split": lambda x: np.concatenate(np.array_split(x, 5)[::2]) ** 2,
    "hsplit": lambda x: np.hsplit(m(x), [1, 3])[1] * 2.0,
    "vsplit": lambda x: np.vsplit(m(x), 3)[2] - np.vsplit(m(x), 3)[0],
    "dsplit": lambda x: np.dsplit(x.reshape(1, 3, 4), 2)[1] ** 3,
    "rollaxis": lambda x: np.rollaxis(x.reshape(2, 3, 2), 2) * np.arange(12).reshape(2, 2, 3),
    "atleast_3d": lambda x: np.atleast_3d(x[:3]) * np.atleast_3d(x[3:6].reshape(3, 1)),
    "rot90": lambda x: np.rot90(m(x), 3) * np.rot90(m(x), 1) + np.rot90(m(x), 2)[0, 0],
    "flipud": lambda x: np.flipud(m(x)) * m(x),
    "fliplr": lambda x: np.sin(np.fliplr(m(x))),
    "diag_build": lambda x: np.diag(x[:3], 1) @ np.diag(x[3:7], -0),
    "diag_read": lambda x: np.diag(m(x), -1) * np.diag(m(x), 2),
    "diagflat": lambda x: np.diagflat(x[:4].reshape(2, 2), -2) + 1.0,
    "pad_constant": lambda x: np.pad(m(x), ((1, 0), (2, 1)),
                                     constant_values=((1.5, 2.0), (3.0, 4.0))) ** 2,
    "pad_traced_fill": lambda x: np.pad(m(x), 1, constant_values=x[0]) * x[5],
    "pad_edge": lambda x: np.pad(m(x), 2, mode="edge") ** 2,
    "pad_reflect": lambda x: np.pad(m(x), 2, mode="reflect") * np.arange(56).reshape(7, 8),
    "pad_symmetric": lambda x: np.exp(np.pad(x, (1, 2), mode="symmetric")),
    "pad_wrap": lambda x: np.pad(m(x), 3, mode="wrap") ** 2,
    "take": lambda x: np.take(m(x), [2, 0, 0], axis=1) * np.take(x, [[1, 11], [3, -1]]).sum(),
    "take_along_axis": lambda x: np.take_along_axis(m(x), np.array([[0, 2], [3, 3], [1, 0]]),
                                                    axis=1) ** 2,
    "meshgrid": lambda x: np.prod(np.stack(np.meshgrid(x[:3], x[3:5], [1.0, 2.0])), axis=0),
    "meshgrid_ij_sparse": lambda x: np.add(*np.meshgrid(x[:3], x[3:5], indexing="ij",
                                                      sparse=True)) ** 2,
    "broadcast_arrays": lambda x: np.multiply(*np.broadcast_arrays(x[:3, None], x[3:5])),
    "boolean_mask": lambda x: x[MASK] ** 2 + x[::-1][MASK],
    "boolean_mask_2d": lambda x: m(x)[m(MASK)] * 3.0,
    "linspace": lambda x: np.linspace(x[0], x[1], 7) ** 2,
    "linspace_vector": lambda x: np.linspace(x[:2], 3.0, 4, endpoint=False, axis=1),
    "linspace_retstep": lambda x: np.stack(np.broadcast_arrays(*np.linspace(
        x[2], x[0], 5, retstep=True))),
    "select": lambda x: np.select([x < -0.5, x > 0.5], [x**2, np.sin(x)], default=1.0),
    "select_constant_conditions": lambda x: np.select([X0 < -0.5, X0 > 0.5],
                                                      [x**2, np.sin(x)], default=x),
    "r_": lambda x: np.r_[x[:2], 3.0, x[5:]] ** 2,
    "c_": lambda x: np.c_[x[:3], x[3:6]] ** 2,
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_and_derivatives(name, central_diff):
    tape = check_all_sweeps(central_diff, CASES[name], X0, X)
    traced_conditions = name == "select"  # np.where on comparisons: branch-free
    assert tape.n_guards == 0 or traced_conditions


def test_hessian(central_diff):
    def f(x):
        grid = np.pad(np.diag(x[:3]) @ m(x)[:, :3], 1, mode="reflect")
        return np.concatenate([grid.ravel(), np.linspace(x[4], x[7], 4),
                               np.take(x, [3, 3, 9])])

    check_hessian(central_diff, f, X0, X)


def test_padding_is_constant_not_a_variable():
    """The zeros numpy puts around ``diag`` and a constant ``pad`` are constants: their
    derivative is exactly 0, and a tape's result there does not follow any input."""
    for f in (lambda x: np.diag(x), lambda x: np.pad(x, 2), lambda x: np.diagflat(x, 1)):
        tape = tapejit.record(f, np.ones(3))
        J = tape.jacobian(X[:, :3])
        expect = np.stack([np.ravel(f(np.eye(3)[k])) for k in range(3)], axis=-1)
        np.testing.assert_array_equal(J, np.broadcast_to(expect, J.shape))
        np.testing.assert_array_equal(tape.forward(X[:, :3]),
                                      [np.ravel(f(x)) for x in X[:, :3]])


def test_linspace_is_numpy_bit_for_bit():
    f = lambda x: np.linspace(x[0], x[1], 11)  # noqa: E731
    tape = tapejit.record(f, X0[:2])
    for p in X[:, :2]:
        np.testing.assert_array_equal(tape.forward(p), f(p))


@pytest.mark.parametrize("f, match", [
    (lambda x: np.take(x, x[:2]), "indices"),
    (lambda x: np.pad(x, 1, mode="mean"), "mode='mean'"),
    (lambda x: np.pad(x, 1, constant_values=x[:2]), "constant_values"),
    (lambda x: np.linspace(0.0, x[0], x[1]), "num"),
    (lambda x: np.split(x, x[:1]), "split points"),
])
def test_errors_name_the_constant_needed(f, match):
    with pytest.raises(TracingError, match=match) as info:
        tapejit.record(f, X0)
    assert "Tracer(" not in str(info.value)


def test_supported_functions_list_them():
    names = set(supported_functions())
    assert {f"numpy.{n}" for n in (
        "split", "array_split", "hsplit", "vsplit", "dsplit", "rollaxis", "atleast_3d",
        "rot90", "flipud", "fliplr", "diag", "diagflat", "pad", "take",
        "take_along_axis", "meshgrid", "broadcast_arrays", "linspace", "select")} <= names
