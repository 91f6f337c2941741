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
    Config.make(8, BLOCK_ROWS=8, BLOCK_GROUPS=32),
    Config.make(4, BLOCK_ROWS=2, BLOCK_GROUPS=64),
]
"""The fold's tiles: 1 024 or 2 048 elements of a row per program, 11.5-11.8 SASS instructions per element on
sm_90a (``benchmarks/count_sass.py``); an 8 x 16-group tile (13.5) moved no more bytes per program and was
dropped before any GPU timing."""

BIAS_GRAD_CONFIGS = [Config.make(4, BLOCK_T=64, BLOCK_N=128), Config.make(4, BLOCK_T=32, BLOCK_N=256)]
