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
  A zero block scale (a block below ``2**-10`` of the tensor's range) gives
  the clamped multiplier: its elements saturate (zeros stay zero), and all
  of them decode to zero.
* **Decoding.**  ``value = e2m1 * e4m3_scale * decode``.

These are the formulas of NVIDIA's NVFP4 recipe as TransformerEngine
implements them (the global encode scale and the block decode scale of its
``core_nvfp4`` helpers); the order of the float32 operations is written out
above because it decides the last bit.

A 2-D block layout (16 x 16 tiles sharing one scale, so a matrix and its
transpose quantize identically) is :func:`quantize_2d`, its exact transpose
:func:`transpose_2d`.

The ``nvfp4`` recipe (docs/recipes.md) quantizes through :func:`quantize_operand`
(1 x 16 blocks along either dimension, optionally after TE's fixed-sign 16-point
Hadamard transform, nearest or stochastic) and multiplies with :func:`gemm`:
``alpha * (e2m1 * e4m3) @ (e2m1 * e4m3)^T`` with ``alpha = decode_a * decode_b``,
the tensor scales applied to the float32 accumulator as the block-scaled MMA does.

Everything here is plain PyTorch and runs on any device.
"""

from __future__ import annotations

import torch
from fp4.core import (
    E2M1_MAX,
    E4M3_MAX,
    E4M3_MAX_BYTE,
    FLOAT32_MAX,
    NVFP4_GROUP_SIZE,
    NVFP4_HADAMARD_SIGNS,
    NVFP4_HADAMARD_SIZE,
)

from . import formats
from .hadamard import rotate
from .philox import element_uniform24, stream_seed
from .reference import gemm_epilogue, stochastic_round_e2m1

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
    ``x.t()`` quantized this way are the transpose of the codes of ``x``.  Rows
    past a multiple of 16 form a last tile padded with zeros (as TE pads).
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_2d takes a matrix [R, K], got {tuple(x.shape)}")
    rows = x.shape[0]
    pad = (-rows) % NVFP4_GROUP_SIZE
    if pad:
        codes, scale_bytes, decode = quantize_2d(torch.nn.functional.pad(x.float(), (0, 0, 0, pad)), amax)
        return codes[:rows].contiguous(), scale_bytes[:rows].contiguous(), decode
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


# ----------------------------------------------------------------------------------------------------------
# the nvfp4 recipe's operands and GEMM

HADAMARD_SIGNS = torch.tensor(NVFP4_HADAMARD_SIGNS, dtype=torch.float32)
"""TE's fixed signs ``D`` of the 16-point transform of the weight-gradient inputs."""


def pad_last(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` with its last dimension zero-padded to a multiple of ``multiple``."""
    pad = (-x.shape[-1]) % multiple
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


def hadamard_16(values: torch.Tensor) -> torch.Tensor:
    """TE's random Hadamard transform along the last dimension: ``(x * D) @ H16 / 4`` per block of 16 (float32)."""
    return rotate(values, -1, HADAMARD_SIGNS, size=NVFP4_HADAMARD_SIZE)


def quantize_operand(
    x: torch.Tensor, transpose: bool, hadamard: bool, seed: int | None, stream: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One GEMM operand of the nvfp4 recipe from a 2-D tensor: NVFP4 in 1 x 16 blocks along the contraction dim.

    ``x`` ``[R, C]`` is quantized along ``C`` (``transpose=False``) or along ``R``
    (``transpose=True``, result ``[C, R/2]``); the quantized dimension is
    zero-padded to a multiple of 16.  ``hadamard`` applies TE's 16-point
    transform first (the tensor scale then comes from the transformed amax, TE's
    "post-RHT amax").  ``seed`` selects stochastic rounding of the elements:
    element ``n`` of the padded row-major result draws word ``n % 4`` of Philox
    counter ``n // 4`` under ``stream_seed(seed, stream)``; ``None`` rounds to
    nearest even.
    """
    if x.dim() != 2:
        raise ValueError(f"the nvfp4 quantizer takes a 2-D tensor, got shape {tuple(x.shape)}")
    values = pad_last(x.float().t() if transpose else x.float(), NVFP4_GROUP_SIZE)
    if hadamard:
        values = hadamard_16(values)
    uniform = None
    if seed is not None:
        uniform = element_uniform24(stream_seed(seed, stream), values.numel(), values.device)
    codes, scale_bytes, decode = quantize(values, uniform=uniform)
    return codes.contiguous(), scale_bytes.contiguous(), decode


def transpose_2d(codes: torch.Tensor, scale_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 16 x 16-block quantization of ``W^T`` from that of ``W`` ``[N, K]``: exact, nothing is re-rounded.

    Codes ``[K, N'/2]`` and scales ``[K, N'/16]`` with ``N' = N`` padded to a
    multiple of 16 (the padded codes are zeros); a tile's scale serves its 16
    rows either way.  The tensor scale is unchanged.
    """
    rows, width = codes.shape[0], codes.shape[1] * 2
    if width % NVFP4_GROUP_SIZE or scale_bytes.shape != (rows, width // NVFP4_GROUP_SIZE):
        raise ValueError(f"transpose_2d takes codes [N, K/2] and scales [N, K/16], got {tuple(codes.shape)} and "
                         f"{tuple(scale_bytes.shape)}")  # fmt: skip
    pad = (-rows) % NVFP4_GROUP_SIZE
    values = formats.unpack_nibbles(codes)
    tile_scales = scale_bytes[::NVFP4_GROUP_SIZE]  # [ceil(N/16), K/16]: one row per tile row
    if pad:
        values = torch.nn.functional.pad(values, (0, 0, 0, pad))
    codes_t = formats.pack_nibbles(values.t().contiguous())
    scales_t = tile_scales.t().repeat_interleave(NVFP4_GROUP_SIZE, dim=0)
    return codes_t.contiguous(), scales_t.contiguous()


def block_values(codes: torch.Tensor, scale_bytes: torch.Tensor) -> torch.Tensor:
    """``e2m1 * e4m3`` per element, float32 ``[R, K]``: exact (at most 6 significant bits; also exact in bf16)."""
    values = formats.decode_e2m1(formats.unpack_nibbles(codes)).unflatten(-1, (-1, NVFP4_GROUP_SIZE))
    if values.shape[-2] != scale_bytes.shape[-1]:
        raise ValueError(f"codes hold {values.shape[-2]} blocks per row but scales hold {scale_bytes.shape[-1]}")
    return (values * decode_e4m3(scale_bytes).unsqueeze(-1)).flatten(-2)


def gemm(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    a_decode: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    b_decode: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``epilogue(alpha * (e2m1 * e4m3)_A @ (e2m1 * e4m3)_B^T)``, ``alpha = a_decode * b_decode`` (float32).

    A ``[M, K/2]`` and B ``[N, K/2]`` codes with E4M3 block-scale bytes; the
    block values are exact in float32, the products accumulate in float32, and
    the tensor scales multiply the accumulator once (what a block-scaled MMA
    with ``alpha`` computes).  The epilogue is :func:`fp4.runtime.reference.gemm_epilogue`
    (bias, round to ``out_dtype``, activation, gate, residual).
    """
    lhs, rhs = block_values(a, a_scales), block_values(b, b_scales)
    if lhs.shape[-1] != rhs.shape[-1]:
        raise ValueError(f"contraction sizes differ: {lhs.shape[-1]} vs {rhs.shape[-1]}")
    alpha = a_decode.float() * b_decode.float()
    acc = (lhs @ rhs.t()) * alpha
    return gemm_epilogue(acc, 1.0, bias, activation, gate, residual, None, False, out_dtype)


# ----------------------------------------------------------------------------------------------------------
# E4M3 neighbours (the stochastic rounding of Quartet II's block scales)


def e4m3_floor(values: torch.Tensor) -> torch.Tensor:
    """The byte of the largest E4M3 value at most ``values`` (float32, in [0, 448]): nearest, one step down if above."""
    nearest = encode_e4m3(values)
    above = decode_e4m3(nearest) > values
    return torch.where(above, nearest - 1, nearest)


def e4m3_stochastic_round(values: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """E4M3 bytes of ``values`` in [0, 448] rounded up with probability equal to their position between neighbours.

    ``down`` is the E4M3 floor and ``up`` the next value; ``(v - down) / (up - down)``
    is exact (Sterbenz: ``down <= v < 2 * down``, or ``down = 0``; the gap is a
    power of two), and the value rounds up where the float32 draw in [0, 1)
    ``uniform`` is below it.  448 stays 448; NaN gives the NaN byte.
    """
    values = values.float()
    down = e4m3_floor(values)
    top = down >= E4M3_MAX_BYTE
    up = torch.where(top, down, down + 1)
    low, high = decode_e4m3(down), decode_e4m3(up)
    position = torch.where(top, torch.zeros_like(values), (values - low) / torch.where(top, 1.0, high - low))
    rounded = torch.where(uniform < position, up, down)
    return torch.where(torch.isnan(values), torch.full_like(rounded, 0x7F), rounded)
