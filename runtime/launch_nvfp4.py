"""Launchers of the NVFP4 recipes' kernels (:mod:`fp4.codegen.nvfp4`), registered as the ops' CUDA implementations.

Importing this module makes the generated kernels the CUDA implementations of
the quantizers and the GEMM of :mod:`fp4.runtime.recipe_ops`, through the same
plan machinery as :mod:`fp4.runtime.calls`: the first call with a signature
builds a plan (sources, configurations chosen by the autotuner, grid), later
calls allocate the outputs and launch.

A quantizer is two launches: the ``amax`` pass raises the tensor's largest
magnitude (after the rotation, where there is one) into a zeroed float32, the
quantize pass reads it.  Both read the layer seed on the device, so they are
CUDA-graph capturable.

``nvfp4_transpose_2d`` moves bytes without rounding anything: its
device-generic PyTorch implementation runs on the GPU as it is.

The GEMM lowering per target (``Target.nvfp4_gemm_lowering``): ``dot_scaled``
on Blackwell, ``dequant_bf16`` on every other CUDA GPU (Hopper included: exact,
for numerics, not speed), the PyTorch reference on the CPU.

``launch_*`` take ``interpret=True`` to run the same kernels in Triton's CPU
interpreter on CPU tensors (the CPU tests do), and ``config=`` to force a
launch configuration.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from fp4.codegen.lanes import stream_addend
from fp4.codegen.nvfp4 import NVFP4GemmSpec, NVFP4QuantizeSpec, emit_nvfp4_gemm, emit_nvfp4_quantize
from fp4.core import NVFP4_GROUP_SIZE, QUARTET2_HADAMARD_SIZE

from . import autotune, library, recipe_ops
from .autotune import Config
from .calls import _reference_plan, planned
from .launch import COUNTERS, _cdiv, _Kernel, device_target
from .lowering import DTYPE_NAMES, Epilogue
from .ops import _check_seed
from .plans import tensor_key

NO_STREAM = -1


@functools.cache
def quantize_source(spec: NVFP4QuantizeSpec):
    return emit_nvfp4_quantize(spec)


@functools.cache
def gemm_source(spec: NVFP4GemmSpec):
    return emit_nvfp4_gemm(spec)


def quantize_configs(spec: NVFP4QuantizeSpec) -> list[Config]:
    """Candidate tiles: columns a multiple of the transform (128) or of the block (16); 2-D blocks need 16 rows."""
    if spec.hadamard == 128:
        return [Config.make(4, BLOCK_ROWS=16, BLOCK_COLS=128), Config.make(8, BLOCK_ROWS=32, BLOCK_COLS=128),
                Config.make(4, BLOCK_ROWS=8, BLOCK_COLS=128)]  # fmt: skip
    if spec.method == "rtn_2d" or spec.source == "nvfp4":
        return [Config.make(4, BLOCK_ROWS=16, BLOCK_COLS=128), Config.make(8, BLOCK_ROWS=32, BLOCK_COLS=128)]
    return [Config.make(4, BLOCK_ROWS=16, BLOCK_COLS=128), Config.make(4, BLOCK_ROWS=8, BLOCK_COLS=64),
            Config.make(8, BLOCK_ROWS=32, BLOCK_COLS=128)]  # fmt: skip


def gemm_configs(spec: NVFP4GemmSpec) -> list[Config]:
    if spec.lowering == "dot_scaled":
        tiles = [(128, 128, 128, 4, 3), (128, 256, 128, 8, 3), (128, 128, 256, 8, 2), (64, 128, 128, 4, 3)]
    else:
        tiles = [(128, 128, 64, 8, 3), (64, 64, 64, 4, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 4)]
    return [Config.make(warps, stages, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8) for bm, bn, bk, warps, stages
            in tiles]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# quantizers


def _padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class NVFP4QuantizePlan:
    """A two-pass NVFP4 quantizer for one input signature: ``plan(inputs, seed)`` -> ``(codes, scales, decode)``.

    ``inputs`` are the 2-D dense tensor, or a saved operand's codes, scales and
    decode scale; ``seed`` the layer's int64 seed on the device (stochastic
    rounding and the 128-point transform's signs).  ``stream`` and
    ``sign_stream`` name their Philox streams.
    """

    def __init__(self, spec, rows, cols, strides, device, stream=NO_STREAM, sign_stream=NO_STREAM, *,
                 interpret=False, config=None, target=None):  # fmt: skip
        multiple = spec.width_multiple
        if spec.source == "nvfp4":
            out_rows, width = cols, _padded(rows, multiple)
        elif spec.axis == "last":
            out_rows, width = rows, _padded(cols, multiple)
        else:
            out_rows, width = cols, _padded(rows, multiple)
        self.spec, self.device = spec, device
        self.out_rows, self.width = out_rows, width
        self.scalars = [rows, cols, *strides, width]
        self.reads_seed = spec.uses_seed
        self.amax_reads_seed = spec.hadamard == 128  # the signs of the transform
        self.addends = stream_addend(stream) if spec.method in ("sr", "eden") else []
        self.sign_addends = stream_addend(sign_stream) if spec.hadamard == 128 else []
        target = target or device_target(device)

        def grid_for(cfg):
            return (_cdiv(out_rows, cfg.kwargs["BLOCK_ROWS"]), _cdiv(width, cfg.kwargs["BLOCK_COLS"]))

        configs, bucket = quantize_configs(spec), autotune.bucket(out_rows, width)
        amax_spec = dataclasses.replace(spec, method="amax")
        self.amax_kernel = _Kernel(quantize_source(amax_spec), target, configs, bucket, grid_for, device, interpret,
                                   config)  # fmt: skip
        self.kernel = _Kernel(quantize_source(spec), target, configs, bucket, grid_for, device, interpret, config)

    def __call__(self, inputs: list, seed: torch.Tensor | None = None):
        device = self.device
        amax = torch.zeros((1,), dtype=torch.float32, device=device)
        codes = torch.empty((self.out_rows, self.width // 2), dtype=torch.uint8, device=device)
        scales = torch.empty((self.out_rows, self.width // NVFP4_GROUP_SIZE), dtype=torch.uint8, device=device)
        decode = torch.empty((), dtype=torch.float32, device=device)
        seeds = [seed] if self.reads_seed else []
        amax_seeds = [seed] if self.amax_reads_seed else []
        self.amax_kernel.run([*inputs, amax, *self.scalars, *amax_seeds, *self.sign_addends])
        self.kernel.run([*inputs, amax, codes, scales, decode, *self.scalars, *seeds, *self.addends,
                         *self.sign_addends])  # fmt: skip
        return codes, scales, decode


def dense_plan(x, method, axis="last", hadamard=0, stream=NO_STREAM, sign_stream=NO_STREAM, **kwargs):
    """The :class:`NVFP4QuantizePlan` of a 2-D dense ``x`` (last-dim contiguous)."""
    spec = NVFP4QuantizeSpec(method, "dense", axis, hadamard, DTYPE_NAMES[x.dtype])
    rows, cols = x.shape
    return NVFP4QuantizePlan(spec, rows, cols, [x.stride(0)], x.device, stream, sign_stream, **kwargs)


def requantize_plan(codes, scales, stream, sign_stream, **kwargs):
    """The plan re-quantizing a saved NVFP4 ``[R, K]`` into its transpose ``[K, pad128(R)]`` (MS-EDEN)."""
    spec = NVFP4QuantizeSpec("eden", "nvfp4", "first", QUARTET2_HADAMARD_SIZE, "u8")
    rows, cols = codes.shape[0], codes.shape[1] * 2
    strides = [codes.stride(0), scales.stride(0)]
    return NVFP4QuantizePlan(spec, rows, cols, strides, codes.device, stream, sign_stream, **kwargs)


def _dense(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def launch_quantize(x, method, axis="last", hadamard=0, seed=None, stream=NO_STREAM, sign_stream=NO_STREAM,
                    **kwargs):  # fmt: skip
    """Quantize a 2-D dense tensor with one of the NVFP4 quantizers; returns ``(codes, scales, decode)``."""
    if x.dim() != 2:
        raise ValueError(f"NVFP4 quantizers take 2-D tensors, got {tuple(x.shape)}")
    x = _dense(x)
    return dense_plan(x, method, axis, hadamard, stream, sign_stream, **kwargs)([x], seed)


def launch_requantize(codes, scales, decode, seed, stream, sign_stream, **kwargs):
    """Saved NVFP4 ``[R, K]`` -> its transpose ``[K, pad128(R)]`` re-quantized by MS-EDEN after the transform."""
    codes, scales = codes.contiguous(), scales.contiguous()
    return requantize_plan(codes, scales, stream, sign_stream, **kwargs)([codes, scales, decode], seed)


# ----------------------------------------------------------------------------------------------------------
# the GEMM


class NVFP4GemmPlan:
    """One NVFP4 GEMM signature on one lowering: ``plan(operands, epilogue)`` -> the output tensor."""

    def __init__(self, lowering, M, N, K, epilogue: Epilogue, device, *, interpret=False, config=None, target=None):
        interpret = interpret or device.type != "cuda"
        self.M, self.N, self.K, self.device = M, N, K, device
        self.spec = NVFP4GemmSpec(lowering, dataclasses.replace(epilogue.spec(), alpha=False))
        candidates = [config] if config is not None else gemm_configs(self.spec)
        grid_for = lambda cfg: (_cdiv(M, cfg.kwargs["BLOCK_M"]) * _cdiv(N, cfg.kwargs["BLOCK_N"]),)  # noqa: E731
        self.kernel = _Kernel(
            gemm_source(self.spec), target or device_target(device), candidates, autotune.bucket(M, N, K), grid_for,
            device, interpret, config,
            plan_constexprs=lambda cfg: dict(EVEN_K=K % cfg.kwargs["BLOCK_K"] == 0, DOT_FP32=interpret),
        )  # fmt: skip

    def __call__(self, operands, epilogue: Epilogue):
        a, a_scales, a_decode, b, b_scales, b_decode = operands
        out = torch.empty((self.M, self.N), dtype=epilogue.out_dtype, device=self.device)
        values = epilogue.kernel_values(out)
        values.update(a_ptr=a, a_scale_ptr=a_scales, a_decode_ptr=a_decode, b_ptr=b, b_scale_ptr=b_scales,
                      b_decode_ptr=b_decode, M=self.M, N=self.N, K=self.K, stride_am=a.stride(0),
                      stride_bn=b.stride(0))  # fmt: skip
        self.kernel.run([values[name] for name in self.kernel.source.signature])
        return out


def launch_gemm(a, a_scales, a_decode, b, b_scales, b_decode, bias=None, activation="none", gate=None, residual=None,
                out_dtype=torch.bfloat16, *, lowering, **kwargs):  # fmt: skip
    """``nvfp4_gemm`` with the ``dot_scaled`` or ``dequant_bf16`` kernel."""
    epilogue = Epilogue(1.0, bias, activation, gate, residual, None, False, out_dtype)
    operands = (a.contiguous(), a_scales.contiguous(), a_decode, b.contiguous(), b_scales.contiguous(), b_decode)
    M, N, K = a.shape[0], b.shape[0], a.shape[1] * 2
    return NVFP4GemmPlan(lowering, M, N, K, epilogue, a.device, **kwargs)(operands, epilogue)


# ----------------------------------------------------------------------------------------------------------
# the CUDA implementations


def _seed_reason(x, seed) -> str | None:
    if seed is not None and seed.device != x.device:
        return f"the seed is on {seed.device}, the input on {x.device} (a host read each call)"
    return None


def _input_reason(x) -> str | None:
    if x.dtype not in DTYPE_NAMES:
        return f"input dtype {x.dtype}"
    if x.numel() == 0:
        return "an empty tensor (its amax is undefined)"
    return None


def _dense_quantizer_plan(op, args, seed_at, method, axis="last", hadamard=0, stream=NO_STREAM, sign_stream=NO_STREAM):
    """The plan of ``fp4::<op>(*args)``, an NVFP4 quantizer of the 2-D tensor ``args[0]`` (checked by the caller)
    whose seed, where it takes one, is ``args[seed_at]``: the kernels (on a dense copy of an input whose last
    dimension is strided), or the reference with the reason they cannot run."""
    x, seed = args[0], None if seed_at is None else args[seed_at]
    reason = _input_reason(x) or _seed_reason(x, seed)
    if reason is not None:
        return _reference_plan(op, reason, getattr(recipe_ops, op).function)
    copy = x.stride(-1) != 1
    plan = dense_plan(x.contiguous() if copy else x, method, axis, hadamard, stream, sign_stream)

    def run(x, *rest):
        return tuple(plan([x.contiguous() if copy else x], None if seed_at is None else rest[seed_at - 1]))

    return run


@planned(
    "nvfp4_quantize",
    key=lambda x, transpose, hadamard, seed, stream: (
        tensor_key(x),
        x.device,
        transpose,
        hadamard,
        tensor_key(seed),
        None if seed is None else seed.device,
        stream,
    ),
)
def nvfp4_quantize_cuda(x, transpose, hadamard, seed, stream):
    """The nvfp4 recipe's 1x16 quantizer (nearest, or stochastic with a seed), optionally after TE's transform."""
    recipe_ops._check_2d(x, "nvfp4_quantize")
    if seed is not None:
        _check_seed(seed)
    method, axis = "rtn" if seed is None else "sr", "first" if transpose else "last"
    args = (x, transpose, hadamard, seed, stream)
    return _dense_quantizer_plan("nvfp4_quantize", args, 3, method, axis, 16 if hadamard else 0, stream)


@planned("nvfp4_quantize_2d", key=lambda w: (tensor_key(w), w.device))
def nvfp4_quantize_2d_cuda(w):
    """The nvfp4 recipe's 16x16-block weight quantizer."""
    recipe_ops._check_2d_blocks(w, "nvfp4_quantize_2d")
    return _dense_quantizer_plan("nvfp4_quantize_2d", (w,), None, "rtn_2d")


@planned("four_over_six_quantize", key=lambda x: (tensor_key(x), x.device))
def four_over_six_quantize_cuda(x):
    """Quartet II's forward quantizer (four over six) along the last dimension."""
    recipe_ops._check_2d_blocks(x, "four_over_six_quantize")
    return _dense_quantizer_plan("four_over_six_quantize", (x,), None, "four_over_six")


@planned(
    "eden_quantize",
    key=lambda x, seed, sign_stream, stream, transpose: (
        tensor_key(x),
        x.device,
        tensor_key(seed),
        seed.device,
        sign_stream,
        stream,
        transpose,
    ),
)
def eden_quantize_cuda(x, seed, sign_stream, stream, transpose):
    """Quartet II's backward quantizer: 128-point transform with the step's signs, then MS-EDEN."""
    recipe_ops._check_2d(x, "eden_quantize")
    _check_seed(seed)
    args, axis = (x, seed, sign_stream, stream, transpose), "first" if transpose else "last"
    return _dense_quantizer_plan("eden_quantize", args, 1, "eden", axis, QUARTET2_HADAMARD_SIZE, stream, sign_stream)


@planned(
    "eden_requantize",
    key=lambda codes, scales, decode, seed, sign_stream, stream: (
        tensor_key(codes),
        tensor_key(scales),
        codes.device,
        tensor_key(seed),
        seed.device,
        sign_stream,
        stream,
    ),
)
def eden_requantize_cuda(codes, scales, decode, seed, sign_stream, stream):
    """A saved NVFP4 operand to its transpose, re-quantized by MS-EDEN after the 128-point transform."""
    _check_seed(seed)
    reason = _seed_reason(codes, seed) or (None if codes.numel() else "an empty operand")
    if reason is not None:
        return _reference_plan("eden_requantize", reason, recipe_ops.eden_requantize.function)
    plan = requantize_plan(codes.contiguous(), scales.contiguous(), stream, sign_stream)
    return lambda codes, scales, decode, seed, *_: tuple(plan([codes.contiguous(), scales.contiguous(), decode], seed))


def _gemm_key(a, a_scales, a_decode, b, b_scales, b_decode, bias, activation, gate, residual, out_dtype):
    return (
        tensor_key(a), tensor_key(a_scales), tensor_key(b), tensor_key(b_scales), a.device, tensor_key(bias),
        activation, tensor_key(gate), tensor_key(residual), out_dtype,
    )  # fmt: skip


@planned("nvfp4_gemm", key=_gemm_key)
def nvfp4_gemm_cuda(a, a_scales, a_decode, b, b_scales, b_decode, bias, activation, gate, residual, out_dtype):
    """The NVFP4 GEMM with its epilogue, by the target's NVFP4 lowering."""
    recipe_ops.check_nvfp4_gemm_operands(a, a_scales, a_decode, b, b_scales, b_decode, activation)
    epilogue = Epilogue(1.0, bias, activation, gate, residual, None, False, out_dtype)
    M, N, K = a.shape[0], b.shape[0], a.shape[1] * 2
    target = device_target(a.device)
    lowering = target.nvfp4_gemm_lowering
    reason = epilogue.unsupported_reason(M, N) or (None if K else "an empty contraction")
    if lowering == "reference":
        reason = reason or f"no NVFP4 GEMM kernel for {target}"
    if reason is None and (a_decode.device != a.device or b_decode.device != a.device):
        reason = "a decode scale on another device"
    if reason is not None:
        return _reference_plan("nvfp4_gemm", reason, recipe_ops.nvfp4_gemm.function)
    COUNTERS[f"nvfp4_gemm.{lowering}"] += 1
    plan = NVFP4GemmPlan(lowering, M, N, K, epilogue, a.device)

    def run(a, sa, da, b, sb, db, bias, activation, gate, residual, out_dtype):
        epilogue = Epilogue(1.0, bias, activation, gate, residual, None, False, out_dtype)
        return plan((a.contiguous(), sa.contiguous(), da, b.contiguous(), sb.contiguous(), db), epilogue)

    return run


CUDA_IMPLEMENTATIONS = {
    "fp4::nvfp4_quantize": nvfp4_quantize_cuda,
    "fp4::nvfp4_quantize_2d": nvfp4_quantize_2d_cuda,
    "fp4::four_over_six_quantize": four_over_six_quantize_cuda,
    "fp4::eden_quantize": eden_quantize_cuda,
    "fp4::eden_requantize": eden_requantize_cuda,
    "fp4::nvfp4_gemm": nvfp4_gemm_cuda,
}
"""The CUDA kernels of the NVFP4 recipes' ops (``nvfp4_transpose_2d`` keeps its device-generic PyTorch code)."""

library.register_cuda(CUDA_IMPLEMENTATIONS)
