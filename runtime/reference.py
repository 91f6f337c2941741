"""Reference semantics of every fp4 op, in plain PyTorch (float32 arithmetic).

This file *is* the numerical contract of the project (Quartet, MXFP4): every
Triton kernel and every compiled graph is tested against these functions.
Where rounding is deterministic the kernels must match bit for bit, so the
order of floating-point operations below is part of the specification:

* rotations use the butterfly order of :mod:`fp4.runtime.hadamard`;
* group sums are pairwise trees over 32 elements (halves added first);
* QuEST scales are read off the float32 exponent bits, never through ``log2``;
* stochastic rounding compares a 24-bit Philox uniform with the exact
  fractional position between grid points.

Layouts (``K`` = contraction dimension, a multiple of 32):

* codes  ``uint8 [R, K/2]``  two E2M1 codes per byte, low nibble first
* scales ``uint8 [R, K/32]`` E8M0
* mask   ``uint8 [R, K/8]``  clip mask bits, low bit first
"""

from __future__ import annotations

import torch
from fp4.core import (  # noqa: F401  (the algorithm's constants, here for the reference's users)
    ACTIVATIONS,
    BACKWARD_ALPHA,
    QUEST_EPSILON,
    QUEST_HUGE_GROUP,
    QUEST_HUGE_SCALE,
    QUEST_SCALE_FACTOR,
    STREAM_DGRAD_GRAD_OUTPUT,
    STREAM_DGRAD_SIGNS,
    STREAM_DGRAD_WEIGHT,
    STREAM_WGRAD_GRAD_OUTPUT,
    STREAM_WGRAD_INPUT,
    STREAM_WGRAD_SIGNS,
)

from . import formats
from .formats import E2M1_GRID, GROUP_SIZE
from .hadamard import rotate
from .philox import element_uniform24, element_words, stream_seed

# ----------------------------------------------------------------------------
# helpers with a fixed evaluation order


def tree_sum_32(groups: torch.Tensor) -> torch.Tensor:
    """Sum the last dimension (32) as a pairwise tree: halves first, then quarters, ..."""
    width = groups.shape[-1]
    while width > 1:
        width //= 2
        groups = groups[..., :width] + groups[..., width:]
    return groups[..., 0]


def _groups(x: torch.Tensor) -> torch.Tensor:
    formats.check_groupable(x.shape[-1], "contraction dimension")
    return x.unflatten(-1, (-1, GROUP_SIZE))


def _scale_by_exponent(groups: torch.Tensor, scale_bytes: torch.Tensor) -> torch.Tensor:
    """``groups / 2**(b - 127)`` for E8M0 bytes ``b``, exact (a power of two)."""
    exponent = formats.E8M0_BIAS - scale_bytes.to(torch.int32)
    return groups * formats.exp2_int(exponent.clamp(-149, 127)).unsqueeze(-1)


# ----------------------------------------------------------------------------
# forward quantizer


def quest_scale_bytes(groups: torch.Tensor) -> torch.Tensor:
    """E8M0 scale of each 32-group: ``2**floor(log2(0.48707976*std + 1e-8))``.

    std is the population standard deviation (mean-subtracted) with the
    variance clamped at zero.  NaN/Inf in a group give the NaN scale 255.

    A finite group with ``max|g| >= 2**60`` computes mean, mean square and
    std on ``g * 2**-96`` and multiplies std back by ``2**96`` before the
    epsilon: power-of-two scaling commutes with every rounding here except
    where values leave the normal range, and the only elements that do (below
    ``2**-30`` after scaling, i.e. ``2**-90`` times the group maximum) are far
    below half an ulp of every sum they meet, so the result is what float32
    without overflow would give.  Every other group is multiplied by exactly 1.
    """
    amax = groups.abs().amax(-1, keepdim=True)
    huge = (amax >= QUEST_HUGE_GROUP) & torch.isfinite(amax)
    groups = groups * torch.where(huge, QUEST_HUGE_SCALE, 1.0).float()
    mean = tree_sum_32(groups) * (1.0 / GROUP_SIZE)
    mean_square = tree_sum_32(groups * groups) * (1.0 / GROUP_SIZE)
    variance = (mean_square - mean * mean).clamp_min(0.0)
    std = torch.sqrt(variance) * torch.where(huge, 1.0 / QUEST_HUGE_SCALE, 1.0).float().squeeze(-1)
    # where() keeps NaN (clamp_min(0) of NaN is NaN already; Inf - Inf is NaN).
    spread = std * QUEST_SCALE_FACTOR + QUEST_EPSILON
    return formats.encode_e8m0_floor(spread)


def quest_quantize(x: torch.Tensor, rotate_input: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward QuEST quantizer along the last dimension.

    Returns ``(codes, scales, mask)``; ``mask`` marks the elements that were
    not clipped (``|x/s| < 6``), through which the gradient passes.
    """
    values = rotate(x, -1) if rotate_input else x.float()
    groups = _groups(values)
    scale_bytes = quest_scale_bytes(groups)
    scaled = _scale_by_exponent(groups, scale_bytes)
    codes = formats.encode_e2m1(scaled)
    keep = scaled.abs() < formats.E2M1_MAX
    # Dense row-major results whatever the input's layout (an unrotated column-major x would
    # otherwise give column-major codes and scales): what the op's fake and the kernels return.
    return (
        formats.pack_nibbles(codes.flatten(-2)).contiguous(),
        scale_bytes.contiguous(),
        formats.pack_bits(keep.flatten(-2)).contiguous(),
    )


def dequantize(codes: torch.Tensor, scales: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """MXFP4 codes + E8M0 scales to float32 values ``[..., K]`` (times ``alpha``)."""
    values = formats.decode_e2m1(formats.unpack_nibbles(codes)).unflatten(-1, (-1, GROUP_SIZE))
    if values.shape[-2] != scales.shape[-1]:
        raise ValueError(f"codes hold {values.shape[-2]} groups per row but scales hold {scales.shape[-1]}")
    out = (values * formats.decode_e8m0(scales).unsqueeze(-1)).flatten(-2)
    return out * alpha if alpha != 1.0 else out


# ----------------------------------------------------------------------------
# backward quantizer


def rotation_signs(seed: int, stream: int) -> torch.Tensor:
    """The random +-1 diagonal ``D`` (float32 [32]) of ``H_b = D @ H`` for one GEMM.

    Sign i is -1 when the top bit of element word i of the stream is set
    (word ``i % 4`` of Philox counter ``i // 4``, as for stochastic rounding).
    """
    bits = element_words(stream_seed(seed, stream), GROUP_SIZE)
    return torch.where(bits >= (1 << 31), -1.0, 1.0).to(torch.float32)


def _pad_last(x: torch.Tensor) -> torch.Tensor:
    pad = (-x.shape[-1]) % GROUP_SIZE
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


def absmax_scale_bytes(groups: torch.Tensor) -> torch.Tensor:
    """E8M0 byte of ``2**floor(log2(max|g|))`` per group (zero group: 0; non-finite: 255)."""
    amax = groups.abs().amax(-1)
    return formats.encode_e8m0_floor(amax)


def stochastic_round_e2m1(scaled: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """E2M1 codes of values in (-6, 6), rounded up with probability equal to their position.

    ``uniform`` holds float32 draws in [0, 1), one per element.  The
    fractional position is exact: the gap to the lower grid point is exact
    (Sterbenz) and the grid spacing is a power of two.
    """
    magnitude = scaled.abs()
    grid = torch.tensor(E2M1_GRID, dtype=torch.float32, device=scaled.device)
    lower_index = torch.zeros_like(magnitude, dtype=torch.int64)
    for point in E2M1_GRID[1:]:
        lower_index += (magnitude >= point).to(torch.int64)
    lower_index = lower_index.clamp_max(len(E2M1_GRID) - 2)
    lower = grid[lower_index]
    inverse_step = 1.0 / (grid[lower_index + 1] - lower)
    position = (magnitude - lower) * inverse_step
    index = lower_index + (uniform < position).to(torch.int64)
    sign = torch.signbit(scaled) & ~torch.isnan(scaled)
    codes = index.to(torch.uint8) | (sign.to(torch.uint8) << 3)
    return torch.where(torch.isnan(scaled), torch.zeros_like(codes), codes)


def sr_quantize(
    x: torch.Tensor,
    signs: torch.Tensor | None,
    seed: int,
    stream: int,
    transpose: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward quantizer: rotate with ``D @ H``, absmax scale, stochastic rounding.

    ``x`` is 2-D ``[R, C]``.  Quantizes along ``C`` (``transpose=False``) or
    along ``R`` after transposing (``transpose=True``, result ``[C, R/2]``).
    The quantized dimension is zero-padded to a multiple of 32.  Element
    ``(i, j)`` of the (transposed, padded) result has index ``n = i * width + j``
    and draws word ``n % 4`` of Philox counter ``n // 4`` under key
    ``stream_seed(seed, stream)`` (:func:`fp4.runtime.philox.element_uniform24`).
    Dequantization is ``code * 2**e / 3``: the ``1/3`` is left to the GEMM's alpha.
    """
    if x.dim() != 2:
        raise ValueError(f"sr_quantize takes a 2-D tensor, got shape {tuple(x.shape)}")
    values = x.float().t() if transpose else x.float()
    return absmax_quantize_rows(rotate(_pad_last(values), -1, signs), seed, stream)


def absmax_quantize_rows(
    values: torch.Tensor, seed: int, stream: int, stochastic: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax scales and E2M1 codes of each 32-group of the rows of ``values`` (float32 ``[R, W]``, W % 32 == 0).

    Stochastic rounding draws as :func:`sr_quantize` says; ``stochastic=False``
    rounds to nearest even instead.
    """
    groups = _groups(values)
    scale_bytes = absmax_scale_bytes(groups)
    scaled = _scale_by_exponent(groups * 3.0, scale_bytes)
    if stochastic:
        rows, width = values.shape
        uniform = element_uniform24(stream_seed(seed, stream), rows * width, values.device)
        codes = stochastic_round_e2m1(scaled, uniform.view(scaled.shape))
    else:
        codes = formats.encode_e2m1(scaled)
    # Dense row-major results also for transposed, unrotated values (the rotate=False variants).
    return formats.pack_nibbles(codes.flatten(-2)).contiguous(), scale_bytes.contiguous()


def requantize_sr(
    codes: torch.Tensor,
    scales: torch.Tensor,
    signs: torch.Tensor | None,
    seed: int,
    stream: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saved forward operand ``[R, K]`` (MXFP4) to its transpose quantized for backward along ``R``."""
    return sr_quantize(dequantize(codes, scales), signs, seed, stream, transpose=True)


# ----------------------------------------------------------------------------
# GEMM with epilogue


def apply_activation(values: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "none":
        return values
    if activation == "gelu":
        return torch.nn.functional.gelu(values)
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(values, approximate="tanh")
    if activation == "silu":
        return torch.nn.functional.silu(values)
    if activation == "relu":
        return torch.relu(values)
    raise ValueError(f"unknown epilogue activation {activation!r}; expected one of {ACTIVATIONS}")


def mxfp4_gemm(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    alpha: float = 1.0,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    clip_mask: torch.Tensor | None = None,
    inverse_rotate: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``epilogue(alpha * deq(a) @ deq(b)^T)`` with float32 accumulation.

    ``a``: ``[M, K/2]`` codes, ``b``: ``[N, K/2]`` codes.  The epilogue runs in
    this order, rounding to ``out_dtype`` where the unfused graph would:

    1. ``acc = alpha * acc + bias`` (float32), then ``acc *= clip_mask`` and
       ``acc = rotate^-1(acc)`` along N (the backward's straight-through
       estimator and inverse Hadamard), then round to ``out_dtype``;
    2. ``activation`` on the rounded value, round;
    3. ``* gate``, round;  4. ``+ residual``, round.

    Steps 2-4 are the eager PyTorch ops on ``out_dtype`` tensors (each computes
    in float32 and rounds once), so a fused epilogue equals the unfused graph.
    """
    lhs = dequantize(a, a_scales)
    rhs = dequantize(b, b_scales)
    if lhs.shape[-1] != rhs.shape[-1]:
        raise ValueError(f"contraction sizes differ: {lhs.shape[-1]} vs {rhs.shape[-1]}")
    acc = lhs @ rhs.t()
    return gemm_epilogue(acc, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)


def gemm_epilogue(
    acc: torch.Tensor,
    alpha: float = 1.0,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    clip_mask: torch.Tensor | None = None,
    inverse_rotate: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The epilogue of :func:`mxfp4_gemm` on its float32 accumulator (shared by every GEMM form)."""
    if alpha != 1.0:
        acc = acc * alpha
    if bias is not None:
        acc = acc + bias.float()
    if clip_mask is not None:
        acc = acc * formats.unpack_bits(clip_mask)[..., : acc.shape[-1]].to(acc.dtype)
    if inverse_rotate:
        acc = rotate(acc, -1, inverse=True)
    out = apply_activation(acc.to(out_dtype), activation)
    if gate is not None:
        out = out * gate
    if residual is not None:
        out = out + residual
    return out


def bias_grad(grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sum_T dY`` in float32, rounded once to the bias dtype (no quantization)."""
    return grad_output.float().sum(0).to(dtype)
