"""One object per way of executing an MXFP4 GEMM, chosen by the target.

Triton's compiler asks a backend object for its stages and options; here a
:class:`GemmLowering` owns everything that differs between GPUs for a GEMM:
the operand layout the kernel reads (packed E2M1 codes + E8M0 scales, or the
FP8 fold), the kernel variants worth trying and their launch configurations,
whether cuBLAS is a candidate, and why it cannot run an epilogue.  The
runtime asks ``lowering_for(target)`` once per plan instead of comparing
lowering names.

=================  ====================================================  ==============================
lowering           kernel                                                targets
=================  ====================================================  ==============================
``dot_scaled``     ``tl.dot_scaled`` e2m1 x e2m1 (block-scaled FP4 MMA)  Blackwell (sm_100/103/120/121)
``fp8_fold``       FP8 ``tl.dot`` on folded operands (+ cuBLAS)          Hopper (sm_90)
``dequant_bf16``   bf16 ``tl.dot`` on operands dequantized in registers  other CUDA GPUs
``reference``      none: :func:`fp4.runtime.reference.mxfp4_gemm`        the CPU
=================  ====================================================  ==============================

On ``fp8_fold`` cuBLAS (``torch._scaled_mm``) is a candidate in two ways: the
whole GEMM where its epilogue can (bf16 output, no clip mask or inverse
rotation), else, for the backward GEMMs' clip mask and inverse rotation, the
raw fp32 product finished by a Triton kernel running the GEMM kernel's own
epilogue (the ``cublas_epilogue`` variant).

:class:`Epilogue` carries a GEMM's epilogue arguments as one value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fp4.codegen.spec import EpilogueSpec, GemmSpec
from fp4.core import Target

from .autotune import Config
from .formats import GROUP_SIZE

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
"""Model dtypes a kernel reads or writes, with their kernel-name spelling."""

CUBLAS = Config(name="cublas")
"""The autotuning candidate that runs cuBLAS (``torch._scaled_mm``) on the folded operands."""


@dataclass(frozen=True, eq=False)
class Epilogue:
    """What a GEMM op does to its fp32 product, in the order of :func:`fp4.runtime.reference.gemm_epilogue`."""

    alpha: float = 1.0
    bias: torch.Tensor | None = None
    activation: str = "none"
    gate: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    clip_mask: torch.Tensor | None = None
    inverse_rotate: bool = False
    out_dtype: torch.dtype = torch.bfloat16

    def arguments(self) -> tuple:
        """The op's positional epilogue arguments."""
        return (
            self.alpha, self.bias, self.activation, self.gate, self.residual, self.clip_mask, self.inverse_rotate,
            self.out_dtype,
        )  # fmt: skip

    def key(self) -> tuple:
        """What a launch plan depends on: flags, dtypes, shapes, strides and alignment of the epilogue tensors."""
        from .plans import tensor_key

        return (
            self.alpha, tensor_key(self.bias), self.activation, tensor_key(self.gate), tensor_key(self.residual),
            tensor_key(self.clip_mask), self.inverse_rotate, self.out_dtype,
        )  # fmt: skip

    def spec(self) -> EpilogueSpec:
        return EpilogueSpec(
            alpha=self.alpha != 1.0,
            bias=self.bias is not None,
            activation=self.activation,
            gate=self.gate is not None,
            residual=self.residual is not None,
            clip_mask=self.clip_mask is not None,
            inverse_rotate=self.inverse_rotate,
            out_dtype=DTYPE_NAMES[self.out_dtype],
        )

    def unsupported_reason(self, M: int, N: int) -> str | None:
        """Why the GEMM kernels cannot run this epilogue on an ``[M, N]`` output (None when they can)."""
        if self.out_dtype not in DTYPE_NAMES:
            return f"out_dtype {self.out_dtype} has no kernel"
        if M == 0 or N == 0:
            return "empty output"
        if self.bias is not None and tuple(self.bias.shape) != (N,):
            return f"bias of shape {tuple(self.bias.shape)}"
        for name, other in (("gate", self.gate), ("residual", self.residual)):
            if other is not None and (other.dtype != self.out_dtype or tuple(other.shape) != (M, N)):
                return f"{name} {other.dtype} {tuple(other.shape)} is not {self.out_dtype} [{M}, {N}]"
        if self.clip_mask is not None and (N % 32 or tuple(self.clip_mask.shape) != (M, N // 8)):
            return f"clip mask {tuple(self.clip_mask.shape)} for a [{M}, {N}] output"
        if self.inverse_rotate and N % GROUP_SIZE:
            return f"inverse rotation of {N} columns"
        return None

    def kernel_values(self, out: torch.Tensor) -> dict:
        """The epilogue's kernel arguments by signature name (tensors made contiguous along the last dim)."""
        values = {"out_ptr": out, "stride_om": out.stride(0), "alpha": float(self.alpha)}
        if self.bias is not None:
            values["bias_ptr"] = self.bias.float().contiguous()
        if self.gate is not None:
            gate = self.gate if self.gate.stride(-1) == 1 else self.gate.contiguous()
            values.update(gate_ptr=gate, stride_gm=gate.stride(0))
        if self.residual is not None:
            residual = self.residual if self.residual.stride(-1) == 1 else self.residual.contiguous()
            values.update(residual_ptr=residual, stride_rm=residual.stride(0))
        if self.clip_mask is not None:
            values["mask_ptr"] = self.clip_mask.contiguous()
        return values


def _tile(bm, bn, bk, warps, stages, split, group=8) -> Config:
    return Config.make(
        warps, stages, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, SPLIT_N=2 if bn >= 256 else split
    )


class GemmLowering:
    """How a target runs an MXFP4 GEMM; subclasses fill in the kernel side."""

    name = "reference"
    operands = "mxfp4"
    """What the kernel reads: ``"mxfp4"`` (codes + E8M0 scales) or ``"fp8_fold"`` (E4M3 values + row scales)."""

    @property
    def has_kernel(self) -> bool:
        return self.name != "reference"

    def unavailable_reason(self, target: Target) -> str | None:
        """Why no kernel runs on ``target`` (None when one does)."""
        return None if self.has_kernel else f"no GEMM kernel for {target}"

    def variants(self, epilogue: EpilogueSpec, a: torch.Tensor, b: torch.Tensor, interpret: bool) -> dict:
        """Kernel variants worth timing, by config name: ``{"": GemmSpec(...)}`` at the least."""
        return {"": GemmSpec(self.name, epilogue)}

    def variant(self, name: str, epilogue: EpilogueSpec) -> GemmSpec:
        """The variant a config names (an explicit ``config=`` may name one the candidates left out)."""
        if name == "":
            return GemmSpec(self.name, epilogue)
        raise ValueError(f"unknown GEMM variant {name!r} of the {self.name} lowering")

    def configs(self, spec: GemmSpec) -> list[Config]:
        raise NotImplementedError

    def cublas_eligible(self, M, N, K, epilogue: Epilogue) -> bool:
        return False


class DotScaledLowering(GemmLowering):
    """Blackwell: ``tl.dot_scaled`` on the packed codes and E8M0 scales (block-scaled FP4 MMA)."""

    name = "dot_scaled"

    def configs(self, spec):
        split = 2 if spec.epilogue.inverse_rotate else 1
        return [_tile(128, 128, 256, 4, 3, split), _tile(128, 256, 256, 8, 3, split), _tile(128, 128, 128, 4, 4, split)]


class DequantBf16Lowering(GemmLowering):
    """CUDA GPUs without FP8/FP4 tensor cores: dequantize to bf16 in registers, bf16 ``tl.dot``."""

    name = "dequant_bf16"

    def configs(self, spec):
        split = 2 if spec.epilogue.inverse_rotate else 1
        return [_tile(64, 64, 64, 4, 3, split), _tile(128, 64, 64, 4, 3, split), _tile(64, 128, 64, 4, 3, split)]


class Fp8FoldLowering(GemmLowering):
    """Hopper: FP8 ``tl.dot`` on the FP8 fold of both operands, the row scales in the epilogue (or cuBLAS).

    ``promote`` adds each K tile's product to the fp32 accumulator outside the
    tensor core (the accuracy of cuBLAS's default FP8 mode); with
    ``promote=False`` the tensor core accumulates (as ``use_fast_accum=True``).
    The ``cublas_epilogue`` variant is the epilogue kernel alone, on the fp32
    product cuBLAS computed (``GemmSpec.product == "cublas"``); it is a
    candidate with ``cublas_product`` (the default; ``FP4_CUBLAS_PRODUCT=0``
    turns it off), and runs wherever a configuration names it.
    """

    name = "fp8_fold"
    operands = "fp8_fold"
    TMA_VARIANTS = ("tma", "tma_persistent")
    CUBLAS_PRODUCT = "cublas_epilogue"

    def __init__(self, promote: bool = True, cublas_product: bool = False):
        self.promote = promote
        self.cublas_product = cublas_product

    def variant(self, name, epilogue):
        if name in self.TMA_VARIANTS:
            return GemmSpec(self.name, epilogue, tma=True, persistent=name == "tma_persistent", promote=self.promote)
        if name == self.CUBLAS_PRODUCT:  # cuBLAS accumulates as its default FP8 mode does, whatever promote says
            return GemmSpec(self.name, epilogue, product="cublas")
        if name == "":
            return GemmSpec(self.name, epilogue, promote=self.promote)
        raise ValueError(f"unknown GEMM variant {name!r} of the {self.name} lowering")

    def variants(self, epilogue, a, b, interpret):
        if not interpret and _tma_usable(a, b):
            # on Hopper the tensor-descriptor kernels beat pointer loads for every shape measured
            found = {name: self.variant(name, epilogue) for name in self.TMA_VARIANTS}
        else:
            found = {"": self.variant("", epilogue)}
        M, N, K = a.shape[0], b.shape[0], a.shape[1]
        if self.cublas_product and not interpret and self.cublas_product_eligible(M, N, K, epilogue):
            found[self.CUBLAS_PRODUCT] = self.variant(self.CUBLAS_PRODUCT, epilogue)
        return found

    def cublas_product_eligible(self, M, N, K, epilogue: EpilogueSpec) -> bool:
        """Whether cuBLAS's fp32 product plus the epilogue kernel is worth timing: where cuBLAS cannot run the
        epilogue itself (the clip mask and the inverse rotation act on the fp32 product; elsewhere the plain
        cuBLAS candidate covers the GEMM), on sizes ``torch._scaled_mm`` takes."""
        return (
            hasattr(torch, "_scaled_mm")
            and (epilogue.clip_mask or epilogue.inverse_rotate)
            and M % 16 == 0
            and N % 16 == 0
            and K % 16 == 0
        )

    def configs(self, spec):
        if spec.product == "cublas":
            # one memory-bound pass (read the product, write the output) plus the 32-wide butterfly: tiles of 4K to
            # 32K elements, column halves for the widest; no K loop, so the stages hardly matter
            tiles = [(64, 128, 4, 1, 1), (128, 128, 8, 1, 1), (32, 256, 4, 1, 2), (128, 256, 8, 2, 2)]
            return [Config.make(w, s, BLOCK_M=bm, BLOCK_N=bn, SPLIT_N=split) for bm, bn, w, s, split in tiles]
        split = 2 if spec.epilogue.inverse_rotate else 1
        if spec.promote:
            # the fp32 add after every K tile waits for the MMA: 128 x 128 tiles keep both sums in registers.
            # BLOCK_K stays at 128: promoting every 256 halves the waits but doubled the error against float64
            # (2.4e-5 vs cuBLAS's 1.0e-5 at K = 1024, H100), and the accuracy must not depend on the tile chosen.
            # One-warp-group tiles (128 x 64, 64 x 128, two programs per SM) were slower on an H100 at 7B shapes
            # (717-873 against 889-1021 TFLOP/s): benchmarks/RESULTS.md
            tiles = [(128, 128, 128, 8, 4), (256, 128, 128, 8, 3), (128, 256, 128, 8, 3), (128, 128, 128, 8, 3)]
        else:
            tiles = [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 256, 64, 8, 4), (128, 128, 128, 4, 4)]
        return [_tile(*tile, split) for tile in tiles]

    def cublas_eligible(self, M, N, K, epilogue):
        # cuBLAS row-wise scaled FP8 (torch._scaled_mm) writes bf16 and adds a bf16 bias; the clip mask and the
        # inverse rotation act on the fp32 accumulator before rounding, so they need the Triton epilogue.
        return (
            hasattr(torch, "_scaled_mm")
            and epilogue.out_dtype == torch.bfloat16
            and epilogue.clip_mask is None
            and not epilogue.inverse_rotate
            and (epilogue.bias is None or epilogue.bias.dtype == torch.bfloat16)
            and M % 16 == 0
            and N % 16 == 0
            and K % 16 == 0
        )


def _tma_usable(a, b) -> bool:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    from .plans import aligned

    return all(aligned(t) and t.stride(0) % 16 == 0 for t in (a, b))


LOWERINGS: dict[str, GemmLowering] = {
    lowering.name: lowering
    for lowering in (DotScaledLowering(), Fp8FoldLowering(), DequantBf16Lowering(), GemmLowering())
}
"""The lowering objects by ``Target.gemm_lowering`` name."""


def lowering_for(target: Target) -> GemmLowering:
    return LOWERINGS[target.gemm_lowering]
