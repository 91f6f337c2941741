"""The block Hadamard rotation (32 wide for Quartet; 16 and 128 wide for the NVFP4 recipes).

``rotate(x, dim)`` splits ``dim`` into blocks of 32 and multiplies each block
(as a row vector) by ``H_b = D @ H``, where ``H`` is the 32x32 Sylvester
Hadamard matrix scaled by ``1/sqrt(32)`` (orthonormal and symmetric) and ``D``
an optional diagonal of +-1 signs.  ``rotate(..., inverse=True)`` multiplies by
``H_b^T = H @ D``.  ``size=16`` or ``size=128`` rotates blocks of that size.

The product is evaluated as the fast Walsh-Hadamard butterfly in a fixed
order (stages of pairwise sums and differences with strides ``size/2, ..., 2,
1``; for 32: 16, 8, 4, 2, 1), then one multiplication by ``1/sqrt(size)``
rounded to float32.  Each stage is one addition per element, so any
implementation that follows the same stages, the Triton kernels included,
produces the same bits.
"""

from __future__ import annotations

import math

import torch
from fp4.core import GROUP_SIZE, HADAMARD_NORM, hadamard_norm
from fp4.core import HADAMARD_STAGE_STRIDES as _STAGE_STRIDES


def stage_strides(size: int) -> tuple[int, ...]:
    """The butterfly's strides for blocks of ``size``: ``size/2, ..., 2, 1`` (32: :data:`HADAMARD_STAGE_STRIDES`)."""
    if size < 2 or size & (size - 1):
        raise ValueError(f"Hadamard order must be a power of two of at least 2, got {size}")
    return _STAGE_STRIDES if size == GROUP_SIZE else tuple(1 << i for i in reversed(range(size.bit_length() - 1)))


def hadamard_matrix(size: int = GROUP_SIZE, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of order ``size`` (a power of two)."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {size}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h / math.sqrt(size)).to(dtype)


def _butterfly(blocks: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform of the last dimension (a power of two)."""
    for stride in stage_strides(blocks.shape[-1]):
        pairs = blocks.unflatten(-1, (-1, 2, stride))
        low, high = pairs[..., 0, :], pairs[..., 1, :]
        blocks = torch.stack((low + high, low - high), dim=-2).flatten(-3)
    return blocks


def check_signs(signs: torch.Tensor | None, size: int = GROUP_SIZE) -> None:
    if signs is None:
        return
    if signs.shape != (size,):
        raise ValueError(f"rotation signs must have shape ({size},), got {tuple(signs.shape)}")


def rotate(
    x: torch.Tensor,
    dim: int = -1,
    signs: torch.Tensor | None = None,
    inverse: bool = False,
    size: int = GROUP_SIZE,
) -> torch.Tensor:
    """Rotate ``x`` along ``dim`` in blocks of ``size`` (default 32); float32 result.

    Forward: ``(x * signs) @ H`` per block.  Inverse: ``(x @ H) * signs``.
    """
    check_signs(signs, size)
    length = x.shape[dim]
    if length % size:
        raise ValueError(f"cannot rotate a dimension of size {length} in blocks of {size}")
    norm = HADAMARD_NORM if size == GROUP_SIZE else hadamard_norm(size)
    moved = x.float().movedim(dim, -1)
    blocks = moved.unflatten(-1, (-1, size))
    sign_vector = None if signs is None else signs.to(torch.float32, copy=False).to(x.device)
    if sign_vector is not None and not inverse:
        blocks = blocks * sign_vector
    blocks = _butterfly(blocks) * norm
    if sign_vector is not None and inverse:
        blocks = blocks * sign_vector
    return blocks.flatten(-2).movedim(-1, dim)
