"""NVFP4 storage format: E2M1 elements, one E4M3 scale per 16 elements, one fp32 scale per tensor.

The element codes and their packing are MXFP4's (:mod:`fp4.runtime.formats`:
sign in bit 3, low nibble first).  What changes is the scale:

* **Tensor scale.**  ``encode = E4M3_MAX * E2M1_MAX / amax`` (``2688 / amax``)
  from the tensor's largest magnitude, clamped to the largest float32; an
  all-zero tensor (or one whose encode scale underflows to zero) uses 1.
  The tensor *decodes* with ``1 / encode``.
* **Block scale.**  Per block of 16 along the last dimension,
  ``block_amax * (encode * (1 / 6))`` clamped at 448 and rounded to E4M3 with
  round-to-nearest-even (one byte, ``torch.float8_e4m3fn`` bits).
* **Elements.**  Each element is multiplied by
  ``min(1 / (e4m3_scale * decode), FLOAT32_MAX)`` and rounded to E2M1
  (nearest even, saturating at 6, or stochastically given uniform draws).
  A zero block scale gives the clamped multiplier, so its elements, all
  zero or tiny, round to zero.
* **Decoding.**  ``value = e2m1 * e4m3_scale * decode``.

These are the formulas of NVIDIA's NVFP4 recipe as TransformerEngine
implements them (the global encode scale and the block decode scale of its
``core_nvfp4`` helpers); the order of the float32 operations is written out
above because it decides the last bit.

A 2-D block layout (16 x 16 tiles sharing one scale, so a matrix and its
transpose quantize identically) is :func:`quantize_2d`.

Everything here is plain PyTorch and runs on any device.
"""

from __future__ import annotations

import torch
from fp4.core import E2M1_MAX, E4M3_MAX, FLOAT32_MAX, NVFP4_GROUP_SIZE

from . import formats
from .reference import stochastic_round_e2m1

TENSOR_SCALE_NUMERATOR = E4M3_MAX * E2M1_MAX
"""``448 * 6 = 2688``: the tensor's amax maps to the largest block scale times the largest element."""


def encode_e4m3(values: torch.Tensor) -> torch.Tensor:
    """Float values to E4M3 bytes (uint8), round-to-nearest-even, saturating at +-448 (NaN stays NaN)."""
    values = values.float()
    clamped = torch.where(torch.isnan(values), values, values.clamp(-E4M3_MAX, E4M3_MAX))
    return clamped.to(torch.float8_e4m3fn).view(torch.uint8)


def decode_e4m3(scales: torch.Tensor) -> torch.Tensor:
    """E4M3 bytes (uint8) to float32."""
    return scales.view(torch.float8_e4m3fn).float()


def tensor_encode_scale(amax: torch.Tensor) -> torch.Tensor:
    """The per-tensor encode scale ``2688 / amax`` (float32; 1 for an all-zero tensor)."""
    amax = amax.float()
    encode = (torch.full_like(amax, TENSOR_SCALE_NUMERATOR) / amax).clamp_max(FLOAT32_MAX)
    degenerate = (amax == 0) | (encode == 0)
    return torch.where(degenerate, torch.ones_like(encode), encode)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] % NVFP4_GROUP_SIZE:
        raise ValueError(
            f"the last dimension ({x.shape[-1]}) must be a multiple of the NVFP4 block size {NVFP4_GROUP_SIZE}"
        )
    return x.float().unflatten(-1, (-1, NVFP4_GROUP_SIZE))


def block_scales(block_amax: torch.Tensor, encode: torch.Tensor) -> torch.Tensor:
    """E4M3 bytes of the block decode scales ``block_amax * (encode / 6)``, saturated at 448."""
    decode_block = block_amax * (encode * (1.0 / E2M1_MAX))
    return encode_e4m3(decode_block.clamp_max(E4M3_MAX))


def element_multiplier(scale_bytes: torch.Tensor, encode: torch.Tensor) -> torch.Tensor:
    """What each element of a block is multiplied by before rounding: ``min(1 / (s_block * decode), max)``."""
    decode = 1.0 / encode
    return (1.0 / (decode_e4m3(scale_bytes) * decode)).clamp_max(FLOAT32_MAX)


def round_elements(scaled: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
    """E2M1 codes of scaled values: nearest even (``uniform=None``) or stochastic (draws in [0, 1))."""
    if uniform is None:
        return formats.encode_e2m1(scaled)
    return stochastic_round_e2m1(scaled.clamp(-E2M1_MAX, E2M1_MAX), uniform.view(scaled.shape))


def quantize(
    x: torch.Tensor, amax: torch.Tensor | None = None, uniform: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4 of ``x`` in 1 x 16 blocks along its last dimension.

    ``amax`` is the tensor amax the scale derives from (default: ``x``'s own);
    ``uniform`` (one draw per element) selects stochastic rounding.  Returns
    packed codes ``[..., K/2]``, E4M3 block-scale bytes ``[..., K/16]`` and the
    float32 tensor decode scale (0-d).
    """
    blocks = _blocks(x)
    encode = tensor_encode_scale(blocks.abs().amax() if amax is None else amax)
    scale_bytes = block_scales(blocks.abs().amax(-1), encode)
    scaled = blocks * element_multiplier(scale_bytes, encode).unsqueeze(-1)
    codes = round_elements(scaled, uniform)
    return formats.pack_nibbles(codes.flatten(-2)), scale_bytes, 1.0 / encode


def quantize_2d(x: torch.Tensor, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4 of a matrix ``[R, K]`` in 16 x 16 tiles, round-to-nearest-even.

    Each tile's amax sets one scale, stored for every row of the tile (scale
    bytes ``[R, K/16]``, the layout :func:`quantize` returns), so the codes of
    ``x.t()`` quantized this way are the transpose of the codes of ``x``.
    """
    if x.dim() != 2 or x.shape[0] % NVFP4_GROUP_SIZE:
        raise ValueError(f"quantize_2d takes [R, K] with R a multiple of {NVFP4_GROUP_SIZE}, got {tuple(x.shape)}")
    blocks = _blocks(x)  # [R, K/16, 16]
    encode = tensor_encode_scale(blocks.abs().amax() if amax is None else amax)
    rows, nblocks = blocks.shape[:2]
    tiles = blocks.abs().amax(-1).unflatten(0, (-1, NVFP4_GROUP_SIZE)).amax(1)  # [R/16, K/16]
    scale_bytes = block_scales(tiles, encode).repeat_interleave(NVFP4_GROUP_SIZE, dim=0)
    scaled = blocks * element_multiplier(scale_bytes, encode).unsqueeze(-1)
    codes = formats.encode_e2m1(scaled)
    return formats.pack_nibbles(codes.flatten(-2)), scale_bytes, 1.0 / encode


def dequantize(codes: torch.Tensor, scale_bytes: torch.Tensor, decode: torch.Tensor) -> torch.Tensor:
    """Float32 values of NVFP4 (packed codes, E4M3 block-scale bytes, tensor decode scale)."""
    values = formats.decode_e2m1(formats.unpack_nibbles(codes)).unflatten(-1, (-1, NVFP4_GROUP_SIZE))
    return (values * decode_e4m3(scale_bytes).unsqueeze(-1) * decode).flatten(-2)
