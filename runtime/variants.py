"""fp4 ops the backend emits besides the core op set: unfused epilogue steps, algorithm variants, fusions.

The rewrite of a linear layer first emits every step of the algorithm as its
own node, so that each fusion is a separate, testable pass:

``apply_clip_mask(x, mask)``   ``x * mask`` along the last dim (the backward's straight-through
                               estimator), exactly step 1b of :func:`fp4.runtime.reference.mxfp4_gemm`
``inverse_rotate(x)``          ``rotate^-1`` along the last dim, exactly step 1c of ``mxfp4_gemm``

Both act on the float32 accumulator that ``mxfp4_gemm(..., out_dtype=float32)``
returns, so ``fuse-clip-mask`` and ``fuse-inverse-rotation`` fold them into the
GEMM without changing a bit.

Variants of the backward quantizer (not the default algorithm; the default
emits :func:`fp4.runtime.ops.sr_quantize` / ``requantize_sr`` unchanged):

``quantize_grad(x, seed, sign_stream, stream, transpose, rotate, rounding)``
``requantize_grad(codes, scales, seed, sign_stream, stream, rotate, rounding)``
    ``rounding`` is ``"sr"`` (stochastic, as ``sr_quantize``) or ``"rtn"``
    (round to nearest even); ``rotate=False`` skips the ``D.H`` rotation.
    With ``rotate=True, rounding="sr"`` they equal ``sr_quantize`` / ``requantize_sr``.

A fusion of two ops that read the same tensor:

``sr_quantize_with_bias_grad(x, seed, sign_stream, stream, transpose, bias_dtype)``
    ``sr_quantize(x, ...)`` and ``bias_grad(x, bias_dtype)`` in one op (one pass over dY
    on a GPU).  Its default implementation calls the two core ops, so on CUDA it
    runs their kernels until a fused kernel registers itself.
"""

from __future__ import annotations

import torch

from . import formats, ops, reference
from .formats import GROUP_SIZE
from .hadamard import rotate as hadamard_rotate
from .library import fp4_op

ROUNDINGS = ("sr", "rtn")


# ----------------------------------------------------------------------------
# unfused epilogue steps


def clip_mask_values(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * unpack(mask)``, the expression ``reference.mxfp4_gemm`` applies to its accumulator."""
    return x * formats.unpack_bits(mask)[..., : x.shape[-1]].to(x.dtype)


@fp4_op("fp4::apply_clip_mask")
def apply_clip_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return clip_mask_values(x, mask).contiguous()


@apply_clip_mask.register_fake
def _(x, mask):
    if mask.dtype != torch.uint8 or mask.shape[-1] * 8 < x.shape[-1]:
        raise ValueError(f"fp4::apply_clip_mask: mask {mask.dtype} {tuple(mask.shape)} does not cover {tuple(x.shape)}")
    return x.new_empty(x.shape)


@fp4_op("fp4::inverse_rotate")
def inverse_rotate(x: torch.Tensor) -> torch.Tensor:
    return hadamard_rotate(x, -1, inverse=True).contiguous()


@inverse_rotate.register_fake
def _(x):
    if x.shape[-1] % GROUP_SIZE:
        raise ValueError(f"fp4::inverse_rotate: last dimension {x.shape[-1]} is not a multiple of {GROUP_SIZE}")
    return x.new_empty(x.shape, dtype=torch.float32)


# ----------------------------------------------------------------------------
# backward quantizer variants


def _check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"backward rounding must be one of {ROUNDINGS}, got {rounding!r}")


def quantize_grad_reference(
    x: torch.Tensor, signs: torch.Tensor | None, seed: int, stream: int, transpose: bool, rotate: bool, rounding: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.sr_quantize`` with the rotation and the stochastic rounding made optional."""
    _check_rounding(rounding)
    if rotate and rounding == "sr":
        return reference.sr_quantize(x, signs, seed, stream, transpose)
    if x.dim() != 2:
        raise ValueError(f"quantize_grad takes a 2-D tensor, got shape {tuple(x.shape)}")
    values = x.float().t() if transpose else x.float()
    values = reference._pad_last(values)
    if rotate:
        values = hadamard_rotate(values, -1, signs)
    return reference.absmax_quantize_rows(values, seed, stream, stochastic=rounding == "sr")


def _signs(seed: torch.Tensor, sign_stream: int, rotate: bool):
    return reference.rotation_signs(int(seed), sign_stream) if rotate and sign_stream != ops.NO_SIGNS else None


@fp4_op("fp4::quantize_grad")
def quantize_grad(
    x: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int, transpose: bool, rotate: bool, rounding: str
) -> tuple[torch.Tensor, torch.Tensor]:
    ops._check_seed(seed)
    return quantize_grad_reference(x, _signs(seed, sign_stream, rotate), int(seed), stream, transpose, rotate, rounding)


@quantize_grad.register_fake
def _(x, seed, sign_stream, stream, transpose, rotate, rounding):
    _check_rounding(rounding)
    return torch.ops.fp4.sr_quantize.default(x, seed, sign_stream, stream, transpose)


@fp4_op("fp4::requantize_grad")
def requantize_grad(
    codes: torch.Tensor, scales: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int, rotate: bool,
    rounding: str,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    ops._check_seed(seed)
    values = reference.dequantize(codes, scales)
    return quantize_grad_reference(values, _signs(seed, sign_stream, rotate), int(seed), stream, True, rotate, rounding)


@requantize_grad.register_fake
def _(codes, scales, seed, sign_stream, stream, rotate, rounding):
    _check_rounding(rounding)
    return torch.ops.fp4.requantize_sr.default(codes, scales, seed, sign_stream, stream)


# ----------------------------------------------------------------------------
# fused bias gradient


@fp4_op("fp4::sr_quantize_with_bias_grad")
def sr_quantize_with_bias_grad(
    x: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int, transpose: bool, bias_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    codes, scales = torch.ops.fp4.sr_quantize.default(x, seed, sign_stream, stream, transpose)
    return codes, scales, torch.ops.fp4.bias_grad.default(x, bias_dtype)


@sr_quantize_with_bias_grad.register_fake
def _(x, seed, sign_stream, stream, transpose, bias_dtype):
    codes, scales = torch.ops.fp4.sr_quantize.default(x, seed, sign_stream, stream, transpose)
    return codes, scales, torch.ops.fp4.bias_grad.default(x, bias_dtype)


OPS = {
    "apply_clip_mask": apply_clip_mask,
    "inverse_rotate": inverse_rotate,
    "quantize_grad": quantize_grad,
    "requantize_grad": requantize_grad,
    "sr_quantize_with_bias_grad": sr_quantize_with_bias_grad,
}
