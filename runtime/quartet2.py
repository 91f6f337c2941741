"""Reference semantics of the ``quartet2`` recipe (Quartet II, IST Austria, arXiv 2601.22813), in plain PyTorch.

Quartet II trains in NVFP4 (E2M1 elements, E4M3 scales per 16, one float32
scale per tensor).  What its authors' code computes (docs/recipes.md cites
the file and function of every constant):

* **Forward** (:func:`four_over_six_quantize`): no rotation; each 16-block
  of X and of W takes the better of two E4M3 block scales, "map to 6"
  (``block_amax / 6``) and "map to 4" (``block_amax / 4``, 1.5 times larger),
  by the squared error of the round-to-nearest result; the tensor scale
  leaves the headroom for the larger one (``amax / 256 / 6``).
* **Backward** (:func:`eden_quantize`, :func:`eden_requantize`): every operand
  of both backward GEMMs (dY along N and the saved W^T; dY^T and the saved
  X^T along T) is rotated by a 128-point Hadamard transform with random
  signs (one draw per layer and step, shared by both GEMMs) and quantized by
  MS-EDEN: elements round to nearest, then the scale of each 16-block is
  multiplied by the EDEN correction ``<x, x> / <x, q>`` of its 128 rotated
  elements and rounded to E4M3 stochastically, which makes the quantizer
  unbiased up to the rotation.

The order of float32 operations is part of the contract (the Triton kernels
match it bit for bit):

* divisions are IEEE divisions, in the order the authors' Triton kernels
  write them (``amax / 256 / 6``, ``x / (s_e4m3 * s_tensor)``);
* sums (the squared errors of a 16-block, the two EDEN dot products of 128
  elements) are pairwise trees, halves first;
* elements round to nearest with ties to even and saturate at 6 (the CUDA
  kernels' ``cvt.rn``; the authors' Triton simulation rounds ties away from
  zero);
* a stochastic choice compares a 24-bit Philox uniform with the exact
  position between the two neighbours (:mod:`fp4.runtime.philox`): scale
  ``n`` of the padded row-major ``[R, W/16]`` scales draws word ``n % 4`` of
  counter ``n // 4`` under ``stream_seed(seed, stream)``; sign ``i`` of the
  rotation is the top bit of word ``i`` of the sign stream.

A quantized operand is ``(codes u8 [R, K/2], scales u8 [R, K/16] E4M3 bytes,
decode f32 [])`` and dequantizes as ``e2m1 * e4m3 * decode``, the layout of
:mod:`fp4.runtime.nvfp4`; the GEMM is :func:`fp4.runtime.nvfp4.gemm`.
"""

from __future__ import annotations

import torch
from fp4.core import (
    E2M1_MAX,
    E4M3_MAX,
    NVFP4_GROUP_SIZE,
    QUARTET2_BACKWARD_VALUE_MAX,
    QUARTET2_EDEN_SCALE_MAX,
    QUARTET2_FOUR_OVER_SIX_RATIO,
    QUARTET2_FOUR_OVER_SIX_SCALE_MAX,
    QUARTET2_HADAMARD_SIZE,
)

from . import formats, nvfp4
from .hadamard import rotate
from .philox import element_uniform24, element_words, stream_seed
from .reference import tree_sum_32 as tree_sum

# ----------------------------------------------------------------------------------------------------------
# shared steps


def _blocks(values: torch.Tensor) -> torch.Tensor:
    if values.shape[-1] % NVFP4_GROUP_SIZE:
        raise ValueError(f"the last dimension ({values.shape[-1]}) must be a multiple of {NVFP4_GROUP_SIZE}")
    return values.float().unflatten(-1, (-1, NVFP4_GROUP_SIZE))


def _divide(values: torch.Tensor, constant: float) -> torch.Tensor:
    """``values / constant``, an IEEE float32 division on every device.

    The divisor is a tensor on the values' device: PyTorch's CUDA kernel divides
    by a host scalar as a multiplication by its reciprocal, which can differ in
    the last bit.
    """
    return values / torch.tensor(constant, dtype=torch.float32, device=values.device)


def _tensor_scale(amax: torch.Tensor, scale_max: float, value_max: float) -> torch.Tensor:
    """``amax / scale_max / value_max`` in float32, 1 for an all-zero tensor (``s_dec`` of the authors' kernels)."""
    amax = amax.float()
    scale = _divide(_divide(amax, scale_max), value_max)
    return torch.where(amax == 0, torch.ones_like(scale), scale)


def _block_scale(block_scale: torch.Tensor) -> torch.Tensor:
    """The block scale rounded to E4M3 (nearest even, saturating), as float32; a scale that rounds to 0 is 1."""
    rounded = nvfp4.decode_e4m3(nvfp4.encode_e4m3(block_scale))
    return torch.where(rounded == 0, torch.ones_like(rounded), rounded)


def _round(blocks: torch.Tensor, scale: torch.Tensor, tensor_scale: torch.Tensor):
    """``x / (s * s_tensor)`` and its E2M1 codes (nearest even, saturating at 6)."""
    scaled = blocks / (scale * tensor_scale).unsqueeze(-1)
    return scaled, formats.encode_e2m1(scaled)


# ----------------------------------------------------------------------------------------------------------
# forward: four over six


def four_over_six_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quartet II's forward quantizer along the last dimension: NVFP4, round to nearest, four-over-six scales.

    Per tensor ``s_t = amax / 256 / 6`` (1 for zeros).  Per 16-block with
    largest magnitude ``m`` (``b = m / 6``) two candidates,
    ``s6 = e4m3(b / s_t)`` and ``s4 = e4m3(b * 1.5 / s_t)`` (a scale that
    rounds to 0 becomes 1); each rounds ``x / (s * s_t)`` to E2M1 and scores
    ``sum((x - q * (s * s_t))**2)`` over the block; map-to-4 wins only with
    a strictly smaller error.  Returns ``(codes [.., K/2], E4M3 bytes [.., K/16],
    s_t)``.
    """
    blocks = _blocks(x)
    tensor_scale = _tensor_scale(blocks.abs().amax(), QUARTET2_FOUR_OVER_SIX_SCALE_MAX, E2M1_MAX)
    base = _divide(blocks.abs().amax(-1), E2M1_MAX)
    candidates = []
    for multiplier in (1.0, QUARTET2_FOUR_OVER_SIX_RATIO):
        scale = _block_scale((base * multiplier if multiplier != 1.0 else base) / tensor_scale)
        _, codes = _round(blocks, scale, tensor_scale)
        dequantized = formats.decode_e2m1(codes) * (scale * tensor_scale).unsqueeze(-1)
        error = tree_sum((blocks - dequantized) * (blocks - dequantized))
        candidates.append((codes, scale, error))
    (six_codes, six_scale, six_error), (four_codes, four_scale, four_error) = candidates
    four = four_error < six_error
    codes = torch.where(four.unsqueeze(-1), four_codes, six_codes)
    scale = torch.where(four, four_scale, six_scale)
    return (
        formats.pack_nibbles(codes.flatten(-2)).contiguous(),
        nvfp4.encode_e4m3(scale).contiguous(),
        tensor_scale,
    )


# ----------------------------------------------------------------------------------------------------------
# backward: 128-point randomized Hadamard transform + MS-EDEN


def rotation_signs(seed: int, sign_stream: int, device=None) -> torch.Tensor:
    """The 128 random signs of a backward step (float32 +-1): sign ``i`` is -1 when word ``i``'s top bit is set."""
    words = element_words(stream_seed(seed, sign_stream), QUARTET2_HADAMARD_SIZE, device)
    return torch.where(words >= (1 << 31), -1.0, 1.0).to(torch.float32)


def rotate_128(values: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``(x * D) @ H128 / sqrt(128)`` per block of 128 along the last dimension (float32)."""
    return rotate(values, -1, signs, size=QUARTET2_HADAMARD_SIZE)


def eden_rows(values: torch.Tensor, seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MS-EDEN of the rows of rotated float32 ``values`` ``[R, W]`` (``W`` a multiple of 128).

    ``val_max = 6 / ((17/16) * 0.93)``; per tensor ``s_t = amax / 255.99 / val_max``;
    per 16-block ``s = e4m3(m / val_max / s_t)`` (0 becomes 1); elements
    ``q = rne(x / (s * s_t))``; per 128 elements the correction
    ``c = sum(x'**2) / sum(x' * q)`` of the scaled values ``x'`` (1 where the
    second sum is 0); every block scale of those 128 becomes
    ``e4m3_sr(min(s * c, 448))``.  Returns ``(codes, scale bytes, s_t)``.
    """
    rows, width = values.shape
    if width % QUARTET2_HADAMARD_SIZE:
        raise ValueError(f"MS-EDEN takes rows of a multiple of {QUARTET2_HADAMARD_SIZE}, got {width}")
    blocks = _blocks(values)  # [R, W/16, 16]
    tensor_scale = _tensor_scale(blocks.abs().amax(), QUARTET2_EDEN_SCALE_MAX, QUARTET2_BACKWARD_VALUE_MAX)
    scale = _block_scale(_divide(blocks.abs().amax(-1), QUARTET2_BACKWARD_VALUE_MAX) / tensor_scale)
    scaled, codes = _round(blocks, scale, tensor_scale)
    per_chunk = QUARTET2_HADAMARD_SIZE // NVFP4_GROUP_SIZE
    chunk_scaled = scaled.reshape(rows, -1, QUARTET2_HADAMARD_SIZE)
    chunk_codes = formats.decode_e2m1(codes).reshape(rows, -1, QUARTET2_HADAMARD_SIZE)
    numerator = tree_sum(chunk_scaled * chunk_scaled)
    denominator = tree_sum(chunk_scaled * chunk_codes)
    correction = torch.where(denominator == 0, torch.ones_like(numerator), numerator / denominator)
    corrected = scale * correction.repeat_interleave(per_chunk, dim=-1)
    corrected = torch.where(corrected > E4M3_MAX, torch.full_like(corrected, E4M3_MAX), corrected)
    uniform = element_uniform24(stream_seed(seed, stream), corrected.numel(), values.device).view(corrected.shape)
    scale_bytes = nvfp4.e4m3_stochastic_round(corrected, uniform)
    return formats.pack_nibbles(codes.flatten(-2)).contiguous(), scale_bytes.contiguous(), tensor_scale


def eden_quantize(
    x: torch.Tensor, seed: int, sign_stream: int, stream: int, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A backward operand from a 2-D tensor: along ``C`` of ``x`` ``[R, C]`` (or along ``R`` with ``transpose``).

    The quantized dimension is zero-padded to a multiple of 128, rotated by
    :func:`rotate_128` with the signs of ``sign_stream`` and quantized by
    :func:`eden_rows` with the scale draws of ``stream``.
    """
    if x.dim() != 2:
        raise ValueError(f"eden_quantize takes a 2-D tensor, got shape {tuple(x.shape)}")
    values = nvfp4.pad_last(x.float().t() if transpose else x.float(), QUARTET2_HADAMARD_SIZE)
    signs = rotation_signs(seed, sign_stream, values.device)
    return eden_rows(rotate_128(values, signs), seed, stream)


def eden_requantize(
    codes: torch.Tensor, scale_bytes: torch.Tensor, decode: torch.Tensor, seed: int, sign_stream: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A saved forward operand ``[R, K]`` (NVFP4) to its transpose ``[K, R']`` quantized for the backward along ``R``.

    Its values ``e2m1 * e4m3 * decode`` (float32) are quantized as
    :func:`eden_quantize` with ``transpose=True`` does.
    """
    return eden_quantize(nvfp4.dequantize(codes, scale_bytes, decode), seed, sign_stream, stream, True)
