"""The 32-wide block Hadamard rotation: matrix properties, butterfly order, inverse, cancellation in a GEMM."""

from __future__ import annotations

import math

import pytest
import torch
from fp4.runtime.hadamard import HADAMARD_NORM, hadamard_matrix, rotate

H = hadamard_matrix(32, torch.float64)


def random_signs(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(32, generator=generator) < 0.5, -1.0, 1.0)


def test_matrix_is_symmetric_orthonormal_and_an_involution():
    assert torch.equal(H, H.t())
    torch.testing.assert_close(H @ H, torch.eye(32, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(H @ H.t(), torch.eye(32, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.all(H.abs() == 1 / math.sqrt(32))
    assert HADAMARD_NORM == float(torch.tensor(1 / math.sqrt(32), dtype=torch.float32))


def test_small_orders_and_bad_orders():
    assert (hadamard_matrix(2) * math.sqrt(2)).tolist() == [[1, 1], [1, -1]]
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)


@pytest.mark.parametrize("with_signs", [False, True])
@pytest.mark.parametrize("shape", [(4, 32), (3, 5, 64), (1, 128)])
def test_butterfly_equals_the_matrix_product(shape, with_signs):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    signs = random_signs(2) if with_signs else None
    blocks = x.double().unflatten(-1, (-1, 32))
    if signs is not None:
        blocks = blocks * signs.double()
    expected = (blocks @ H).flatten(-2)
    actual = rotate(x, -1, signs)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-6)


def _butterfly_by_hand(x: torch.Tensor) -> torch.Tensor:
    """The specified order, written out element by element: strides 16, 8, 4, 2, 1, then one multiply."""
    out = x.clone()
    for stride in (16, 8, 4, 2, 1):
        new = out.clone()
        for start in range(0, 32, 2 * stride):
            for j in range(start, start + stride):
                low, high = out[..., j], out[..., j + stride]
                new[..., j], new[..., j + stride] = low + high, low - high
        out = new
    return out * HADAMARD_NORM


def test_rotation_follows_the_specified_order_bit_for_bit():
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(3)) * 1000
    assert torch.equal(rotate(x, -1), _butterfly_by_hand(x))


@pytest.mark.parametrize("with_signs", [False, True])
def test_inverse_undoes_forward(with_signs):
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(4))
    signs = random_signs(5) if with_signs else None
    back = rotate(rotate(x, -1, signs), -1, signs, inverse=True)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-6)


def test_inverse_with_signs_is_the_transpose():
    signs = random_signs(6)
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(7))
    expected = (x.double() @ (torch.diag(signs.double()) @ H).t()).float()
    torch.testing.assert_close(rotate(x, -1, signs, inverse=True), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_signs", [False, True])
def test_rotation_cancels_inside_a_gemm(with_signs):
    generator = torch.Generator().manual_seed(8)
    a, b = torch.randn(16, 64, generator=generator), torch.randn(24, 64, generator=generator)
    signs = random_signs(9) if with_signs else None
    rotated = rotate(a, -1, signs) @ rotate(b, -1, signs).t()
    torch.testing.assert_close(rotated, a @ b.t(), rtol=1e-4, atol=1e-4)


def test_rotating_another_dimension_and_other_dtypes():
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(10))
    assert torch.equal(rotate(x, 0), rotate(x.t(), -1).t())
    half = x.t().to(torch.bfloat16)
    assert torch.equal(rotate(half, -1), rotate(half.float(), -1))


def test_errors():
    with pytest.raises(ValueError, match="size 48 in blocks of 32"):
        rotate(torch.zeros(2, 48))
    with pytest.raises(ValueError, match="signs must have shape"):
        rotate(torch.zeros(2, 32), -1, torch.ones(16))
