"""The fp4 op set: the operations compiler passes insert, registered with ``torch.library``.

Every op has a fake (meta) implementation, so shapes and dtypes stay known in
traced graphs, and a default implementation for every device that calls the
reference in :mod:`fp4.runtime.reference`.  Every op returns dense row-major
(contiguous) tensors whatever its inputs' layout, and its fake says exactly that:
Inductor lays out buffers by the fake (``tests/test_ops.py`` checks shapes,
dtypes and strides of every op and variant).  The GPU kernels register
themselves as the CUDA implementations of the same ops (``fp4.runtime.calls``);
graphs never change when they do.

A quantized operand travels as plain tensors:

=================  ==============  ===========================================
codes              uint8 [R, K/2]  E2M1, two per byte, low nibble first
scales             uint8 [R, K/32] E8M0 (forward: QuEST; backward: absmax)
mask               uint8 [R, K/8]  forward clip mask, one bit per element
seed               int64 []        per-layer Philox seed (on the op's device), from ``draw_seeds``
=================  ==============  ===========================================

Op summary (``fp4::``):

``quest_quantize(x, rotate)``               forward rotate + QuEST quantize along the last dim
``sr_quantize(x, seed, sign_stream, stream, transpose)``
                                           backward rotate (D.H) + absmax + stochastic rounding
``requantize_sr(codes, scales, seed, sign_stream, stream)``
                                           saved forward operand -> its transpose, re-quantized
``mxfp4_gemm(a, sa, b, sb, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)``
                                           FP4 GEMM with fused epilogue
``dequantize(codes, scales, alpha, dtype)``  MXFP4 to a dense tensor
``bias_grad(grad_output, dtype)``           sum over tokens in float32, rounded once
``draw_seeds(n, device, salt)``             n layer seeds from ``device``'s torch generator
"""

from __future__ import annotations

import torch

from . import philox, reference
from .formats import GROUP_SIZE
from .library import fp4_op

NAMESPACE = "fp4"

NO_SIGNS = -1
"""``sign_stream`` value for a rotation without random signs."""


def _signs(seed: torch.Tensor, sign_stream: int) -> torch.Tensor | None:
    return None if sign_stream == NO_SIGNS else reference.rotation_signs(int(seed), sign_stream)


def _check_seed(seed: torch.Tensor) -> None:
    if seed.numel() != 1 or seed.dtype != torch.int64:
        raise ValueError(f"seed must be a one-element int64 tensor, got {seed.dtype} {tuple(seed.shape)}")


def _padded(size: int) -> int:
    return -(-size // GROUP_SIZE) * GROUP_SIZE


def _check_last_dim(x: torch.Tensor, op: str) -> None:
    if x.shape[-1] % GROUP_SIZE:
        raise ValueError(f"fp4::{op}: last dimension {x.shape[-1]} is not a multiple of {GROUP_SIZE}")


# ----------------------------------------------------------------------------
# forward quantizer


@fp4_op("fp4::quest_quantize")
def quest_quantize(x: torch.Tensor, rotate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_last_dim(x, "quest_quantize")
    return reference.quest_quantize(x, rotate)


@quest_quantize.register_fake
def _(x, rotate):
    _check_last_dim(x, "quest_quantize")
    lead, k = tuple(x.shape[:-1]), x.shape[-1]
    return (
        x.new_empty(lead + (k // 2,), dtype=torch.uint8),
        x.new_empty(lead + (k // GROUP_SIZE,), dtype=torch.uint8),
        x.new_empty(lead + (k // 8,), dtype=torch.uint8),
    )


# ----------------------------------------------------------------------------
# backward quantizers


@fp4_op("fp4::sr_quantize")
def sr_quantize(
    x: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_seed(seed)
    return reference.sr_quantize(x, _signs(seed, sign_stream), int(seed), stream, transpose)


@sr_quantize.register_fake
def sr_quantize_fake(x, seed, sign_stream, stream, transpose):
    if x.dim() != 2:
        raise ValueError(f"fp4::sr_quantize takes a 2-D tensor, got {x.dim()}-D")
    rows, width = (x.shape[1], x.shape[0]) if transpose else (x.shape[0], x.shape[1])
    width = _padded(width)
    return (
        x.new_empty((rows, width // 2), dtype=torch.uint8),
        x.new_empty((rows, width // GROUP_SIZE), dtype=torch.uint8),
    )


@fp4_op("fp4::requantize_sr")
def requantize_sr(
    codes: torch.Tensor, scales: torch.Tensor, seed: torch.Tensor, sign_stream: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_seed(seed)
    return reference.requantize_sr(codes, scales, _signs(seed, sign_stream), int(seed), stream)


@requantize_sr.register_fake
def requantize_sr_fake(codes, scales, seed, sign_stream, stream):
    rows, width = codes.shape[1] * 2, _padded(codes.shape[0])
    return (
        codes.new_empty((rows, width // 2)),
        codes.new_empty((rows, width // GROUP_SIZE)),
    )


# ----------------------------------------------------------------------------
# GEMM, dequantize, reductions


@fp4_op("fp4::mxfp4_gemm")
def mxfp4_gemm(
    a: torch.Tensor,
    a_scales: torch.Tensor,
    b: torch.Tensor,
    b_scales: torch.Tensor,
    alpha: float,
    bias: torch.Tensor | None,
    activation: str,
    gate: torch.Tensor | None,
    residual: torch.Tensor | None,
    clip_mask: torch.Tensor | None,
    inverse_rotate: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    return reference.mxfp4_gemm(
        a, a_scales, b, b_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype
    )


def check_gemm_operands(a, a_scales, b, b_scales, activation):
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"fp4::mxfp4_gemm takes 2-D operands, got {a.dim()}-D and {b.dim()}-D")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"fp4::mxfp4_gemm: contraction sizes differ ({a.shape[1] * 2} vs {b.shape[1] * 2})")
    for codes, scales, name in ((a, a_scales, "a"), (b, b_scales, "b")):
        if codes.dtype != torch.uint8 or scales.dtype != torch.uint8:
            raise ValueError(f"fp4::mxfp4_gemm: operand {name} must be uint8 codes and scales")
        if scales.shape != (codes.shape[0], codes.shape[1] * 2 // GROUP_SIZE):
            raise ValueError(f"fp4::mxfp4_gemm: scales of {name} have shape {tuple(scales.shape)}")
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"fp4::mxfp4_gemm: unknown activation {activation!r}")


@mxfp4_gemm.register_fake
def _(a, a_scales, b, b_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype):
    check_gemm_operands(a, a_scales, b, b_scales, activation)
    return gemm_result_like(a, b, out_dtype, gate, residual)


def gemm_result_like(a, b, out_dtype, gate, residual):
    """Empty ``[a rows, b rows]`` result of a GEMM op, with the epilogue's dtype promotion."""
    dtype = out_dtype
    # Type promotion of the gate multiply and residual add, as in the eager ops.
    for other in (gate, residual):
        if other is not None:
            dtype = torch.promote_types(dtype, other.dtype)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=dtype)


@fp4_op("fp4::dequantize")
def dequantize(codes: torch.Tensor, scales: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    return reference.dequantize(codes, scales, alpha).to(dtype)


@dequantize.register_fake
def _(codes, scales, alpha, dtype):
    return codes.new_empty(tuple(codes.shape[:-1]) + (codes.shape[-1] * 2,), dtype=dtype)


@fp4_op("fp4::bias_grad")
def bias_grad(grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return reference.bias_grad(grad_output, dtype)


@bias_grad.register_fake
def _(grad_output, dtype):
    return grad_output.new_empty((grad_output.shape[-1],), dtype=dtype)


@fp4_op("fp4::draw_seeds", tags=(torch.Tag.nondeterministic_seeded,))
def draw_seeds(n: int, device: torch.device, salt: int = 0) -> torch.Tensor:
    """``n`` int64 layer seeds on ``device``, from that device's torch generator (``torch.manual_seed`` governs it).

    On a GPU the draw runs on the device, so a CUDA-graph replay draws new seeds
    (the generator's offset advances with every replay) and no seed crosses to
    the host.  ``salt != 0`` mixes the salt into every seed
    (:func:`fp4.runtime.philox.salt_seeds`), e.g. to decorrelate data-parallel ranks.
    """
    return draw_seeds_eager(n, device, salt)


def draw_seeds_eager(n: int, device: torch.device | str = "cpu", salt: int = 0) -> torch.Tensor:
    # One launch for all n.  On the CPU generator n seeds at once are the n seeds of n draws of one (what the
    # eager oracle does, one draw per layer call), so compiled and oracle get the same seeds; a CUDA generator
    # gives one draw of n other values than n draws of one (its Philox subsequences are per thread).
    seeds = torch.empty((n,), dtype=torch.int64, device=device).random_(0, SEED_BOUND)
    return philox.salt_seeds(seeds, salt) if salt else seeds


SEED_BOUND = 1 << 62
"""Seeds are drawn uniformly from [0, 2**62)."""


@draw_seeds.register_fake
def _(n, device, salt=0):
    return torch.empty((n,), dtype=torch.int64, device=device)


OPS = {
    "quest_quantize": quest_quantize,
    "sr_quantize": sr_quantize,
    "requantize_sr": requantize_sr,
    "mxfp4_gemm": mxfp4_gemm,
    "dequantize": dequantize,
    "bias_grad": bias_grad,
    "draw_seeds": draw_seeds,
}
