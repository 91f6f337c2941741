"""The FP8 fold of MXFP4 operands: how Hopper (sm_90) runs MXFP4 GEMMs on its FP8 tensor cores.

Every E2M1 value is exact in FP8 E4M3, and every E8M0 scale is a power of two,
so a row of MXFP4 groups can be rewritten as E4M3 values times **one** fp32
scale per row: fold each group's exponent, relative to the row's exponent
``ref = max group exponent - 6``, into its values::

    value_e4m3 = e2m1(code) * 2**(e_group - ref)       row_scale = 2**ref

``6 * 2**6 = 384`` fits E4M3 (max 448); a value is exact as long as its group
exponent is at most 14 binades below the row's largest (E4M3 subnormals reach
2**-9); smaller groups round to E4M3 (ties to even) and contribute less than
``2**-14`` of the row's largest values.  ``ref`` is at least ``2**-126`` (a
normal float); a row with a NaN group gets a NaN scale, so its output row is
NaN as in the reference.  Zero codes (either sign) fold to +0.  An FP8 GEMM of two folded operands, with the row
scales of A and B multiplied into the fp32 accumulator, equals the MXFP4 GEMM
up to the accumulation order (and those rounded tiny groups).

Ops (``fp4::``; reference implementations here, CUDA kernels in
:mod:`fp4.runtime.calls`):

``fold_fp8(codes, scales) -> (values e4m3 [R, K], row_scales f32 [R])``
``quest_quantize_fold(x, rotate) -> (codes, scales, mask, values, row_scales)``
    ``quest_quantize`` plus the fold of its result, in one kernel on a GPU
``sr_quantize_fold(x, seed, sign_stream, stream, transpose) -> (codes, scales, values, row_scales)``
``requantize_sr_fold(codes, scales, seed, sign_stream, stream) -> (codes, scales, values, row_scales)``
    the backward quantizers plus the fold of their results (``use-fp8-fold{backward=true}``)
``fp8_fold_gemm(a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual, clip_mask,
                inverse_rotate, out_dtype)``
    ``mxfp4_gemm`` on folded operands, with the same epilogue

A graph pass that targets ``fp8_fold`` replaces, in the forward,
``quest_quantize(x)`` by ``quest_quantize_fold(x)`` (keeping codes, scales and
mask for backward, feeding the fold to the GEMM) and ``mxfp4_gemm`` by
``fp8_fold_gemm``; without such a pass, ``mxfp4_gemm`` on a Hopper GPU folds its
operands itself (one extra pass over each operand).
"""

from __future__ import annotations

import torch
from fp4.core import FOLD_EXACT_BINADES, FOLD_HEADROOM  # noqa: F401  (the fold's constants)

from . import formats, ops, reference
from .formats import E8M0_BIAS, E8M0_NAN, GROUP_SIZE
from .library import fp4_op

FP8_DTYPE = torch.float8_e4m3fn


def fold_reference(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values e4m3 [R, K], row_scales f32 [R])`` of MXFP4 ``codes [R, K/2]`` and ``scales [R, K/32]``."""
    if codes.dim() != 2 or scales.shape != (codes.shape[0], codes.shape[1] * 2 // GROUP_SIZE):
        raise ValueError(f"fold: codes {tuple(codes.shape)} and scales {tuple(scales.shape)} do not match")
    exponent = scales.to(torch.int32)
    is_nan = exponent == E8M0_NAN
    exp_max = torch.where(is_nan, 0, exponent).amax(-1) if exponent.shape[-1] else exponent.new_zeros(exponent.shape[0])
    ref = (exp_max - FOLD_HEADROOM).clamp_min(1)
    shift = exponent - ref[:, None]
    multiplier = torch.where(shift < -126, 0.0, formats.exp2_int(shift.clamp(-126, 127)))
    multiplier = torch.where(is_nan, 1.0, multiplier)
    values = formats.decode_e2m1(formats.unpack_nibbles(codes)).unflatten(-1, (-1, GROUP_SIZE))
    # zero codes fold to +0: the sign of a zero carries nothing into a product
    values = torch.where(values == 0, 0.0, values * multiplier.unsqueeze(-1)).flatten(-2).to(FP8_DTYPE)
    row_scales = formats.exp2_int(ref - E8M0_BIAS)
    row_scales = torch.where(is_nan.any(-1), torch.full_like(row_scales, float("nan")), row_scales)
    return values, row_scales


def unfold(values: torch.Tensor, row_scales: torch.Tensor) -> torch.Tensor:
    """Float32 values of a folded operand: ``values * row_scales[:, None]``."""
    return values.float() * row_scales.float()[:, None]


@fp4_op("fp4::fold_fp8")
def fold_fp8(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return fold_reference(codes, scales)


@fold_fp8.register_fake
def _(codes, scales):
    return _fold_fake(codes)


@fp4_op("fp4::quest_quantize_fold")
def quest_quantize_fold(
    x: torch.Tensor, rotate: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if x.dim() != 2:
        raise ValueError(f"fp4::quest_quantize_fold takes a 2-D tensor, got {x.dim()}-D")
    codes, scales, mask = reference.quest_quantize(x, rotate)
    return (codes, scales, mask) + fold_reference(codes, scales)


@quest_quantize_fold.register_fake
def _(x, rotate):
    if x.dim() != 2:
        raise ValueError(f"fp4::quest_quantize_fold takes a 2-D tensor, got {x.dim()}-D")
    codes, scales, mask = _quest_fake(x)
    return codes, scales, mask, *_fold_fake(codes)


def _quest_fake(x):
    rows, k = x.shape
    return (
        x.new_empty((rows, k // 2), dtype=torch.uint8),
        x.new_empty((rows, k // GROUP_SIZE), dtype=torch.uint8),
        x.new_empty((rows, k // 8), dtype=torch.uint8),
    )


@fp4_op("fp4::sr_quantize_fold")
def sr_quantize_fold(
    x: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sr_quantize`` plus the FP8 fold of its result: ``(codes, scales, values, row_scales)``."""
    codes, scales = ops.sr_quantize.function(x, seed, sign_stream, stream, transpose)
    return (codes, scales) + fold_reference(codes, scales)


@sr_quantize_fold.register_fake
def _(x, seed, sign_stream, stream, transpose):
    codes, scales = ops.sr_quantize_fake(x, seed, sign_stream, stream, transpose)
    return codes, scales, *_fold_fake(codes)


@fp4_op("fp4::requantize_sr_fold")
def requantize_sr_fold(
    codes: torch.Tensor, scales: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``requantize_sr`` plus the FP8 fold of its result: ``(codes, scales, values, row_scales)``."""
    out_codes, out_scales = ops.requantize_sr.function(codes, scales, seed, sign_stream, stream)
    return (out_codes, out_scales) + fold_reference(out_codes, out_scales)


@requantize_sr_fold.register_fake
def _(codes, scales, seed, sign_stream, stream):
    out_codes, out_scales = ops.requantize_sr_fake(codes, scales, seed, sign_stream, stream)
    return out_codes, out_scales, *_fold_fake(out_codes)


def _fold_fake(codes):
    rows, width = codes.shape[0], codes.shape[1] * 2
    return codes.new_empty((rows, width), dtype=FP8_DTYPE), codes.new_empty((rows,), dtype=torch.float32)


def fp8_fold_gemm_reference(
    a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype
):
    acc = unfold(a, a_row_scales) @ unfold(b, b_row_scales).t()
    return reference.gemm_epilogue(acc, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)


@fp4_op("fp4::fp8_fold_gemm")
def fp8_fold_gemm(
    a: torch.Tensor,
    a_row_scales: torch.Tensor,
    b: torch.Tensor,
    b_row_scales: torch.Tensor,
    alpha: float,
    bias: torch.Tensor | None,
    activation: str,
    gate: torch.Tensor | None,
    residual: torch.Tensor | None,
    clip_mask: torch.Tensor | None,
    inverse_rotate: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    return fp8_fold_gemm_reference(
        a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype
    )


@fp8_fold_gemm.register_fake
def _(a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype):
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"fp4::fp8_fold_gemm: operands {tuple(a.shape)} and {tuple(b.shape)} do not contract")
    return ops.gemm_result_like(a, b, out_dtype, gate, residual)


OPS = {
    "fold_fp8": fold_fp8,
    "quest_quantize_fold": quest_quantize_fold,
    "sr_quantize_fold": sr_quantize_fold,
    "requantize_sr_fold": requantize_sr_fold,
    "fp8_fold_gemm": fp8_fold_gemm,
}
