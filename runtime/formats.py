"""MXFP4 storage formats: E2M1 elements, E8M0 scales, packed clip masks.

This module is the single source of truth for the constants of the format
(group size, the E2M1 grid, the E8M0 bias) and for the bit layouts every
kernel and pass agrees on:

* E2M1 code: bit 3 is the sign, bits 0-2 index the magnitude grid
  ``{0, 0.5, 1, 1.5, 2, 3, 4, 6}``.  Two codes share a byte, the element with
  the lower index along the packed dimension in the **low nibble**.
* E8M0 scale: one byte ``b`` means ``2 ** (b - 127)``; ``b == 255`` is NaN.
* Clip mask: one bit per element, eight per byte, the lower index in the
  lower bit.

Everything here is plain PyTorch and runs on any device.
"""

from __future__ import annotations

import torch
from fp4.core import E2M1_GRID, E2M1_MAX, E8M0_BIAS, E8M0_NAN, GROUP_SIZE  # noqa: F401  (the formats' constants)

# Round-to-nearest-even onto the grid: a magnitude rounds up past boundary i
# when it is above the midpoint, or equal to it and the upper neighbour has an
# even code (mantissa bit 0).  Codes 2, 4, 6 are even, so the ties at 0.75,
# 1.75 and 3.5 round up and the ties at 0.25, 1.25, 2.5 and 5 round down.
_RNE_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_RNE_TIE_ROUNDS_UP = (False, True, False, True, False, True, False)


def _grid(device: torch.device) -> torch.Tensor:
    return torch.tensor(E2M1_GRID, dtype=torch.float32, device=device)


def e2m1_round_magnitude_index(magnitude: torch.Tensor) -> torch.Tensor:
    """Index (0..7) of the grid point nearest to ``magnitude`` (ties to even, saturating).

    ``magnitude`` is a non-negative float32 tensor; NaN maps to 0.
    """
    index = torch.zeros_like(magnitude, dtype=torch.uint8)
    for midpoint, tie_up in zip(_RNE_MIDPOINTS, _RNE_TIE_ROUNDS_UP):
        above = magnitude >= midpoint if tie_up else magnitude > midpoint
        index += above.to(torch.uint8)
    return index


def encode_e2m1(values: torch.Tensor) -> torch.Tensor:
    """Round float values to E2M1 codes (uint8 in 0..15, one code per element).

    Round-to-nearest-even, saturating at +-6 (like ``cvt.rn.satfinite``).  The
    sign bit follows the input's sign bit, so ``-0.0`` and small negatives that
    round to zero give the negative-zero code 8.  NaN gives code 0.
    """
    values = values.float()
    magnitude = torch.nan_to_num(values.abs(), nan=0.0)
    code = e2m1_round_magnitude_index(magnitude)
    sign = torch.signbit(values) & ~torch.isnan(values)
    return code | (sign.to(torch.uint8) << 3)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0..15) to float32 values (negative zero kept)."""
    codes = codes.to(torch.int64)
    magnitude = _grid(codes.device)[codes & 7]
    return torch.where((codes & 8) != 0, -magnitude, magnitude)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes [..., 2n] into bytes [..., n], the even index in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"cannot pack an odd last dimension ({codes.shape[-1]}) into nibbles")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: bytes [..., n] to codes [..., 2n]."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack booleans [..., 8n] into bytes [..., n], the lower index in the lower bit."""
    if bits.shape[-1] % 8:
        raise ValueError(f"cannot pack a last dimension of {bits.shape[-1]} into bytes")
    grouped = bits.to(torch.uint8).unflatten(-1, (-1, 8))
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=bits.device)
    return (grouped * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: bytes [..., n] to booleans [..., 8n]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).bool().flatten(-2)


def float32_exponent_field(values: torch.Tensor) -> torch.Tensor:
    """The biased 8-bit exponent field of float32 values (int32, 0..255)."""
    return (values.float().view(torch.int32) >> 23) & 0xFF


def encode_e8m0_floor(values: torch.Tensor) -> torch.Tensor:
    """E8M0 byte of ``2 ** floor(log2(v))`` for positive ``v``, read off the float32 bits.

    Normal floats give their exponent field; zero and subnormals give 0
    (``2**-127``); Inf and NaN give 255 (NaN), so a non-finite group is never
    silently scaled.
    """
    return float32_exponent_field(values).to(torch.uint8)


def decode_e8m0(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes to float32 powers of two; 255 decodes to NaN."""
    exponent = scales.to(torch.int32) - E8M0_BIAS
    value = torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)
    return torch.where(scales == E8M0_NAN, torch.full_like(value, float("nan")), value)


def exp2_int(exponent: torch.Tensor) -> torch.Tensor:
    """Exact float32 ``2 ** exponent`` for integer tensors in [-149, 127]."""
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent.to(torch.int32))


def check_groupable(size: int, what: str) -> None:
    if size % GROUP_SIZE:
        raise ValueError(f"{what} ({size}) must be a multiple of the MXFP4 group size {GROUP_SIZE}")
