"""fp4.codegen: kernel specs to Triton source text (no GPU needed).

    from fp4.codegen import QuantizeSpec, emit_quantize
    source = emit_quantize(QuantizeSpec(method="sr", axis="first", signs=True))
    print(source.text)

See ``docs/kernels.md`` for the kernels, their lowering per GPU and their numerics.
"""

from .gemm import emit_gemm
from .quantize import emit_fold, emit_quantize
from .reduce import emit_bias_grad
from .source import KernelSource
from .spec import BiasGradSpec, EpilogueSpec, FoldSpec, GemmSpec, QuantizeSpec

__all__ = [
    "BiasGradSpec",
    "EpilogueSpec",
    "FoldSpec",
    "GemmSpec",
    "KernelSource",
    "QuantizeSpec",
    "emit_bias_grad",
    "emit_fold",
    "emit_gemm",
    "emit_quantize",
]
