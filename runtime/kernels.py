"""The kernel catalogue: generated sources per spec and the launch configurations worth trying.

Sources are generated once per spec (``functools.lru_cache``); the configs are
the small candidate sets the autotuner times (the first one is the default
when autotuning is off).  Every quantize config keeps a program's tile at 128
or more groups so that each of its threads owns whole groups.
"""

from __future__ import annotations

import functools

from fp4.codegen.gemm import emit_gemm
from fp4.codegen.quantize import emit_fold, emit_quantize
from fp4.codegen.reduce import emit_bias_grad
from fp4.codegen.spec import BiasGradSpec, FoldSpec, GemmSpec, QuantizeSpec

from .autotune import Config


@functools.cache
def quantize_source(spec: QuantizeSpec):
    return emit_quantize(spec)


@functools.cache
def fold_source(spec: FoldSpec | None = None):
    return emit_fold(spec)


@functools.cache
def gemm_source(spec: GemmSpec):
    return emit_gemm(spec)


@functools.cache
def bias_grad_source(spec: BiasGradSpec):
    return emit_bias_grad(spec)


def quantize_configs(spec: QuantizeSpec) -> list[Config]:
    if spec.axis == "first":
        return [
            Config.make(4, BLOCK_ROWS=64, BLOCK_GROUPS=2),
            Config.make(4, BLOCK_ROWS=128, BLOCK_GROUPS=1),
            Config.make(4, BLOCK_ROWS=32, BLOCK_GROUPS=4),
            Config.make(8, BLOCK_ROWS=64, BLOCK_GROUPS=4),
        ]
    if spec.fold:
        return [
            Config.make(4, BLOCK_ROWS=4, BLOCK_GROUPS=32),
            Config.make(4, BLOCK_ROWS=8, BLOCK_GROUPS=16),
            Config.make(8, BLOCK_ROWS=8, BLOCK_GROUPS=32),
        ]
    return [
        Config.make(4, BLOCK_ROWS=8, BLOCK_GROUPS=16),
        Config.make(4, BLOCK_ROWS=4, BLOCK_GROUPS=32),
        Config.make(8, BLOCK_ROWS=16, BLOCK_GROUPS=16),
        Config.make(4, BLOCK_ROWS=1, BLOCK_GROUPS=128),
    ]


FOLD_CONFIGS = [
    Config.make(4, BLOCK_ROWS=4, BLOCK_GROUPS=32),
    Config.make(4, BLOCK_ROWS=8, BLOCK_GROUPS=16),
    Config.make(8, BLOCK_ROWS=16, BLOCK_GROUPS=16),
]

BIAS_GRAD_CONFIGS = [Config.make(4, BLOCK_T=64, BLOCK_N=128), Config.make(4, BLOCK_T=32, BLOCK_N=256)]


def gemm_configs(spec: GemmSpec) -> list[Config]:
    split = 2 if spec.epilogue.inverse_rotate else 1

    def make(bm, bn, bk, warps, stages, group=8):
        return Config.make(
            warps, stages, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, SPLIT_N=2 if bn >= 256 else split
        )

    if spec.lowering == "fp8_fold" and spec.promote:
        # the fp32 add after every K tile waits for the MMA: 128 x 128 tiles keep both sums in registers,
        # and BLOCK_K = 256 halves the waits
        return [
            make(128, 128, 256, 8, 3),
            make(128, 128, 128, 8, 4),
            make(256, 128, 128, 8, 3),
            make(128, 256, 128, 8, 3),
        ]
    if spec.lowering == "fp8_fold":
        return [
            make(128, 256, 128, 8, 3),
            make(256, 128, 128, 8, 3),
            make(128, 256, 64, 8, 4),
            make(128, 128, 128, 4, 4),
        ]
    if spec.lowering == "dot_scaled":
        return [make(128, 128, 256, 4, 3), make(128, 256, 256, 8, 3), make(128, 128, 128, 4, 4)]
    return [make(64, 64, 64, 4, 3), make(128, 64, 64, 4, 3), make(64, 128, 64, 4, 3)]
