"""Kernel specs: what a generated kernel computes, independent of how it is tiled.

A spec is a small frozen dataclass.  The code generators in this package turn a
spec into Triton source text (:mod:`fp4.codegen.quantize`, :mod:`fp4.codegen.gemm`);
tile sizes and warp counts are *launch configurations* chosen by the runtime's
autotuner, so one spec gives one source text and one cache entry.

Every spec has a ``kernel_name`` that says what the kernel does
(``rotate_quest_quantize_last_bf16``, ``mxfp4_gemm_fp8_fold_bias_gelu_bf16``) and
``describe()`` lines that the emitted source carries in its header.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fp4.core import ACTIVATIONS

DTYPES = ("bf16", "fp16", "fp32")
"""Element types a dense kernel input or output may have (Triton spelling)."""

POINTER_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32", "u8": "*u8"}
"""The Triton pointer type of a tensor of each dtype name (kernel signatures)."""

ELEMENT_TYPES = {"bf16": "tl.bfloat16", "fp16": "tl.float16", "fp32": "tl.float32"}
"""The Triton element type of each dtype name (casts in kernel bodies)."""

GEMM_LOWERINGS = ("dot_scaled", "fp8_fold", "dequant_bf16")
"""The ``Target.gemm_lowering`` values a GEMM kernel can be emitted for (``reference`` runs no kernel)."""

GEMM_PRODUCTS = ("mma", "cublas")
"""Where a GEMM kernel's fp32 product comes from: its own main loop, or a tensor cuBLAS wrote (``GemmSpec.product``)."""


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def _describe(spec) -> list[str]:
    return [f"{f.name} = {getattr(spec, f.name)!r}" for f in dataclasses.fields(spec)]


@dataclass(frozen=True)
class QuantizeSpec:
    """A rotate + quantize kernel.

    * ``method``: ``"quest"`` (forward: QuEST scale, round to nearest even, clip
      mask) or ``"sr"`` (backward: absmax scale, stochastic rounding from Philox).
    * ``source``: ``"dense"`` (a bf16/fp16/fp32 tensor) or ``"mxfp4"`` (saved
      codes + scales, dequantized in registers: the backward re-quantization).
    * ``axis``: ``"last"`` quantizes rows along the last dimension; ``"first"``
      quantizes along the first dimension and writes the transpose (the token
      dimension of a weight gradient).  The quantized dimension is zero-padded
      to a multiple of 32.
    * ``rotate`` / ``signs``: apply the 32-wide Hadamard rotation, with the
      random +-1 diagonal ``D`` of ``H_b = D.H`` drawn from Philox when ``signs``.
    * ``fold``: also write the FP8 fold of the result (E4M3 values + one fp32
      scale per row, see :mod:`fp4.runtime.fold`); each program then owns whole
      output rows.
    * ``wide_offsets``: Philox counters (element index // 4) reach 2**32
      (16G elements or more), so the counter's high word is not zero.
    * ``hardware_e2m1``: round to nearest even onto E2M1 with Blackwell's
      ``cvt.rn.satfinite.e2m1x2.f32`` (sm_100a/sm_120a), two codes per
      instruction, instead of the integer rounding written out (QuEST only).
    """

    method: str = "quest"
    source: str = "dense"
    axis: str = "last"
    rotate: bool = True
    signs: bool = False
    input_dtype: str = "bf16"
    fold: bool = False
    wide_offsets: bool = False
    hardware_e2m1: bool = False

    def __post_init__(self):
        _check_choice("method", self.method, ("quest", "sr"))
        if self.hardware_e2m1 and (self.method != "quest" or self.fold):
            raise ValueError("the hardware E2M1 conversion serves the QuEST quantizer without the (Hopper) FP8 fold")
        if self.wide_offsets and self.method != "sr":
            raise ValueError("wide Philox offsets belong to the stochastic-rounding quantizer")
        _check_choice("source", self.source, ("dense", "mxfp4"))
        _check_choice("axis", self.axis, ("last", "first"))
        _check_choice("input_dtype", self.input_dtype, DTYPES + ("u8",))
        if self.source == "mxfp4":
            if self.axis != "first" or self.method != "sr":
                raise ValueError("re-quantization from MXFP4 is defined for method='sr', axis='first' only")
            if self.input_dtype != "u8":
                raise ValueError("an MXFP4 source has input_dtype 'u8'")
        elif self.input_dtype == "u8":
            raise ValueError("a dense source needs a floating input_dtype")
        if self.signs and (self.method != "sr" or not self.rotate):
            raise ValueError("random rotation signs belong to the backward (sr) rotation")

    @property
    def kernel_name(self) -> str:
        if self.source == "mxfp4":
            parts = ["requantize_transposed"]
        else:
            parts = []
        if self.rotate:
            parts.append("rotate_signed" if self.signs else "rotate")
        parts.append("quest_quantize" if self.method == "quest" else "sr_quantize")
        parts.append(self.axis)
        parts.append(self.input_dtype if self.source == "dense" else "mxfp4")
        if self.fold:
            parts.append("fold")
        if self.wide_offsets:
            parts.append("wide")
        if self.hardware_e2m1:
            parts.append("cvt")
        return "_".join(parts)

    @property
    def writes_mask(self) -> bool:
        return self.method == "quest"

    @property
    def uses_philox(self) -> bool:
        return self.method == "sr" or self.signs

    def describe(self) -> list[str]:
        return _describe(self)


@dataclass(frozen=True)
class FoldSpec:
    """MXFP4 codes + E8M0 scales -> the FP8 fold: E4M3 values [R, K] + fp32 row scales [R]."""

    @property
    def kernel_name(self) -> str:
        return "fold_mxfp4_to_fp8_tiles"

    def describe(self) -> list[str]:
        return ["codes u8[R, K/2] + scales u8[R, K/32] -> values e4m3[R, K] + row scales f32[R]; n_groups = K/32"]


@dataclass(frozen=True)
class EpilogueSpec:
    """What the GEMM does to the fp32 accumulator tile before it stores it.

    The order is that of :func:`fp4.runtime.reference.mxfp4_gemm`: ``alpha``,
    ``bias``, clip mask, inverse rotation, round to ``out_dtype``; then the
    activation, the gate multiply and the residual add, each rounded to
    ``out_dtype`` as the unfused eager ops would.
    """

    alpha: bool = False
    bias: bool = False
    activation: str = "none"
    gate: bool = False
    residual: bool = False
    clip_mask: bool = False
    inverse_rotate: bool = False
    out_dtype: str = "bf16"

    def __post_init__(self):
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("out_dtype", self.out_dtype, DTYPES)

    @property
    def name(self) -> str:
        parts = [
            flag
            for flag, on in (
                ("alpha", self.alpha),
                ("bias", self.bias),
                ("mask", self.clip_mask),
                ("unrotate", self.inverse_rotate),
            )
            if on
        ]
        if self.activation != "none":
            parts.append(self.activation)
        parts += [flag for flag, on in (("gate", self.gate), ("residual", self.residual)) if on]
        parts.append(self.out_dtype)
        return "_".join(parts)


@dataclass(frozen=True)
class GemmSpec:
    """``out = epilogue(deq(A) @ deq(B)^T)`` for A [M, K], B [N, K] in MXFP4, lowered one way.

    ``lowering`` is a ``Target.gemm_lowering`` value: ``dot_scaled`` (native
    block-scaled FP4 MMA on Blackwell), ``fp8_fold`` (Hopper: E4M3 operands
    with the group exponents folded in, fp32 row/column scales applied in the
    epilogue) or ``dequant_bf16`` (other CUDA GPUs).  ``tma`` loads the
    operands through tensor descriptors (Hopper and later); ``persistent``
    launches one program per SM that walks the output tiles.  ``promote``
    adds each K tile's product to the fp32 accumulator with an ordinary fp32
    addition instead of accumulating inside the tensor core, whose FP8 adder
    keeps fewer bits than fp32 on Hopper (what cuBLAS's default FP8 mode does).
    ``product`` says where the fp32 product comes from: ``"mma"``, the
    kernel's own main loop, or ``"cublas"`` (``fp8_fold`` only), an fp32
    ``[M, N]`` tensor that cuBLAS wrote from the folded operands, which the
    kernel reads tile by tile and finishes with the same epilogue.
    """

    lowering: str = "fp8_fold"
    epilogue: EpilogueSpec = EpilogueSpec()
    tma: bool = False
    persistent: bool = False
    promote: bool = False
    product: str = "mma"

    def __post_init__(self):
        _check_choice("lowering", self.lowering, GEMM_LOWERINGS)
        _check_choice("product", self.product, GEMM_PRODUCTS)
        if self.product == "cublas" and self.lowering != "fp8_fold":
            raise ValueError("cuBLAS computes the product of the FP8 fold only (the fp8_fold lowering)")
        if self.product == "cublas" and (self.tma or self.promote):
            raise ValueError("a kernel reading cuBLAS's product has no main loop: tma and promote do not apply")
        if self.promote and self.lowering != "fp8_fold":
            raise ValueError("promoting partial sums is a remedy for Hopper's FP8 accumulation only")
        if self.tma and self.lowering != "fp8_fold":
            raise ValueError("tensor-descriptor loads are emitted for the fp8_fold lowering only")
        if self.persistent and not self.tma:
            raise ValueError("the persistent schedule is emitted with tensor-descriptor loads only")

    @property
    def kernel_name(self) -> str:
        schedule = "_tma_persistent" if self.persistent else "_tma" if self.tma else ""
        schedule += "_promoted" if self.promote else ""
        schedule += "_cublas_product" if self.product == "cublas" else ""
        return f"mxfp4_gemm_{self.lowering}{schedule}_{self.epilogue.name}"

    def describe(self) -> list[str]:
        lines = [f"lowering = {self.lowering!r}", f"tma = {self.tma!r}", f"persistent = {self.persistent!r}"]
        lines.append(f"promote = {self.promote!r}")
        if self.product != "mma":  # listed only then: the main-loop kernels' text (their cache keys) stays as it was
            lines.append(f"product = {self.product!r}")
        return lines + [f"epilogue.{line}" for line in _describe(self.epilogue)]


@dataclass(frozen=True)
class BiasGradSpec:
    """Float32 column sums of a [T, N] gradient, one partial sum per chunk of rows."""

    input_dtype: str = "bf16"

    def __post_init__(self):
        _check_choice("input_dtype", self.input_dtype, DTYPES)

    @property
    def kernel_name(self) -> str:
        return f"bias_grad_column_sums_{self.input_dtype}"

    def describe(self) -> list[str]:
        return _describe(self)
