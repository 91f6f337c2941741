"""The fp4 ops of the NVFP4 recipes (``nvfp4``, ``quartet2``; docs/recipes.md), with fake implementations.

An NVFP4 operand travels as three tensors:

=================  ==============  ===========================================
codes              uint8 [R, K/2]  E2M1, two per byte, low nibble first
scales             uint8 [R, K/16] E4M3 block-scale bytes (``float8_e4m3fn`` bits)
decode             float32 []      the tensor's decode scale (on the op's device)
=================  ==============  ===========================================

and dequantizes as ``e2m1 * e4m3 * decode``.  Ops (``fp4::``), each defined by
:mod:`fp4.runtime.nvfp4` or :mod:`fp4.runtime.quartet2`:

``nvfp4_quantize(x, transpose, hadamard, seed, stream)``
    the nvfp4 recipe's 1 x 16 quantizer of a 2-D tensor along its last dim (or
    its first, ``transpose``), zero-padded to 16, optionally after TE's 16-point
    transform; ``seed`` (the layer seed) selects stochastic rounding, ``None``
    nearest-even
``nvfp4_quantize_2d(w)``                     16 x 16 blocks (the nvfp4 recipe's weights)
``nvfp4_transpose_2d(codes, scales)``        W^T's 16 x 16 quantization from W's, exactly
``four_over_six_quantize(x)``                Quartet II's forward quantizer (along the last dim)
``eden_quantize(x, seed, sign_stream, stream, transpose)``
                                            Quartet II's backward quantizer: 128-point RHT + MS-EDEN
``eden_requantize(codes, scales, decode, seed, sign_stream, stream)``
                                            a saved NVFP4 operand to its transpose, re-quantized so
``nvfp4_gemm(a, sa, da, b, sb, db, bias, activation, gate, residual, out_dtype)``
                                            ``epilogue(da * db * deq(a) @ deq(b)^T)``

Every op returns dense row-major tensors, as its fake says.
"""

from __future__ import annotations

import torch
from fp4.core import NVFP4_GROUP_SIZE, QUARTET2_HADAMARD_SIZE

from . import nvfp4, quartet2
from .library import fp4_op
from .ops import _check_seed, gemm_result_like
from .reference import ACTIVATIONS


def _padded(size, multiple: int):
    return -(-size // multiple) * multiple


def _check_2d(x: torch.Tensor, op: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"fp4::{op} takes a 2-D tensor, got {x.dim()}-D")


def _check_blocks(size, op: str, what: str = "last dimension") -> None:
    if size % NVFP4_GROUP_SIZE:
        raise ValueError(f"fp4::{op}: {what} {size} is not a multiple of {NVFP4_GROUP_SIZE}")


def _check_2d_blocks(x: torch.Tensor, op: str) -> None:
    """A 2-D tensor whose rows are whole 16-blocks (the forward quantizers' input)."""
    _check_2d(x, op)
    _check_blocks(x.shape[1], op)


def _dense(outputs):
    """Every output dense and row-major whatever the inputs' layout (what the fakes promise)."""
    return tuple(t.contiguous() for t in outputs)


def _operand_like(x: torch.Tensor, rows, width):
    """Empty ``(codes, scales, decode)`` of an NVFP4 operand ``[rows, width]``."""
    return (
        x.new_empty((rows, width // 2), dtype=torch.uint8),
        x.new_empty((rows, width // NVFP4_GROUP_SIZE), dtype=torch.uint8),
        x.new_empty((), dtype=torch.float32),
    )


# ----------------------------------------------------------------------------------------------------------
# nvfp4 recipe


@fp4_op("fp4::nvfp4_quantize")
def nvfp4_quantize(
    x: torch.Tensor, transpose: bool, hadamard: bool, seed: torch.Tensor | None, stream: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_2d(x, "nvfp4_quantize")
    if seed is not None:
        _check_seed(seed)
    return _dense(nvfp4.quantize_operand(x, transpose, hadamard, None if seed is None else int(seed), stream))


@nvfp4_quantize.register_fake
def _(x, transpose, hadamard, seed, stream):
    _check_2d(x, "nvfp4_quantize")
    rows, width = (x.shape[1], x.shape[0]) if transpose else (x.shape[0], x.shape[1])
    return _operand_like(x, rows, _padded(width, NVFP4_GROUP_SIZE))


@fp4_op("fp4::nvfp4_quantize_2d")
def nvfp4_quantize_2d(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_2d_blocks(w, "nvfp4_quantize_2d")
    return _dense(nvfp4.quantize_2d(w))


@nvfp4_quantize_2d.register_fake
def _(w):
    _check_2d_blocks(w, "nvfp4_quantize_2d")
    return _operand_like(w, w.shape[0], w.shape[1])


@fp4_op("fp4::nvfp4_transpose_2d")
def nvfp4_transpose_2d(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _dense(nvfp4.transpose_2d(codes, scales))


@nvfp4_transpose_2d.register_fake
def _(codes, scales):
    _check_2d(codes, "nvfp4_transpose_2d")
    rows, width = _padded(codes.shape[0], NVFP4_GROUP_SIZE), codes.shape[1] * 2
    _check_blocks(width, "nvfp4_transpose_2d", "contraction size")
    return codes.new_empty((width, rows // 2)), codes.new_empty((width, rows // NVFP4_GROUP_SIZE))


# ----------------------------------------------------------------------------------------------------------
# quartet2 recipe


@fp4_op("fp4::four_over_six_quantize")
def four_over_six_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_2d_blocks(x, "four_over_six_quantize")
    return _dense(quartet2.four_over_six_quantize(x))


@four_over_six_quantize.register_fake
def _(x):
    _check_2d_blocks(x, "four_over_six_quantize")
    return _operand_like(x, x.shape[0], x.shape[1])


@fp4_op("fp4::eden_quantize")
def eden_quantize(
    x: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_2d(x, "eden_quantize")
    _check_seed(seed)
    return _dense(quartet2.eden_quantize(x, int(seed), sign_stream, stream, transpose))


@eden_quantize.register_fake
def _(x, seed, sign_stream, stream, transpose):
    _check_2d(x, "eden_quantize")
    rows, width = (x.shape[1], x.shape[0]) if transpose else (x.shape[0], x.shape[1])
    return _operand_like(x, rows, _padded(width, QUARTET2_HADAMARD_SIZE))


@fp4_op("fp4::eden_requantize")
def eden_requantize(
    codes: torch.Tensor, scales: torch.Tensor, decode: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_seed(seed)
    return _dense(quartet2.eden_requantize(codes, scales, decode, int(seed), sign_stream, stream))


@eden_requantize.register_fake
def _(codes, scales, decode, seed, sign_stream, stream):
    _check_2d(codes, "eden_requantize")
    return _operand_like(codes, codes.shape[1] * 2, _padded(codes.shape[0], QUARTET2_HADAMARD_SIZE))


# ----------------------------------------------------------------------------------------------------------
# the GEMM


def check_nvfp4_gemm_operands(a, a_scales, a_decode, b, b_scales, b_decode, activation) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"fp4::nvfp4_gemm takes 2-D operands, got {a.dim()}-D and {b.dim()}-D")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"fp4::nvfp4_gemm: contraction sizes differ ({a.shape[1] * 2} vs {b.shape[1] * 2})")
    for codes, scales, decode, name in ((a, a_scales, a_decode, "a"), (b, b_scales, b_decode, "b")):
        if codes.dtype != torch.uint8 or scales.dtype != torch.uint8:
            raise ValueError(f"fp4::nvfp4_gemm: operand {name} must be uint8 codes and E4M3 scale bytes")
        if scales.shape != (codes.shape[0], codes.shape[1] * 2 // NVFP4_GROUP_SIZE):
            raise ValueError(f"fp4::nvfp4_gemm: scales of {name} have shape {tuple(scales.shape)}")
        if decode.dim() != 0 or decode.dtype != torch.float32:
            raise ValueError(f"fp4::nvfp4_gemm: the decode scale of {name} must be a float32 scalar tensor")
    if activation not in ACTIVATIONS:
        raise ValueError(f"fp4::nvfp4_gemm: unknown activation {activation!r}")


@fp4_op("fp4::nvfp4_gemm")
def nvfp4_gemm(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    a_decode: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    b_decode: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str,
    gate: torch.Tensor | None,
    residual: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    check_nvfp4_gemm_operands(a, a_scales, a_decode, b, b_scales, b_decode, activation)
    return nvfp4.gemm(a, a_scales, a_decode, b, b_scales, b_decode, bias, activation, gate, residual, out_dtype)


@nvfp4_gemm.register_fake
def _(a, a_scales, a_decode, b, b_scales, b_decode, bias, activation, gate, residual, out_dtype):
    check_nvfp4_gemm_operands(a, a_scales, a_decode, b, b_scales, b_decode, activation)
    return gemm_result_like(a, b, out_dtype, gate, residual)


OPS = {
    "nvfp4_quantize": nvfp4_quantize,
    "nvfp4_quantize_2d": nvfp4_quantize_2d,
    "nvfp4_transpose_2d": nvfp4_transpose_2d,
    "four_over_six_quantize": four_over_six_quantize,
    "eden_quantize": eden_quantize,
    "eden_requantize": eden_requantize,
    "nvfp4_gemm": nvfp4_gemm,
}
