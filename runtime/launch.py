"""Launchers: the generated Triton kernels as the CUDA implementations of the fp4 ops.

Importing this module registers, with ``torch.library.register_kernel``, a
CUDA implementation for each op of :mod:`fp4.runtime.ops` that has a kernel
(and for the fold ops of :mod:`fp4.runtime.fold`), so graphs that call
``torch.ops.fp4.*`` run the kernels on a GPU without any change.  Each
launcher:

* detects the target of its tensors' device (the one place the runtime asks
  what the hardware is) and picks the lowering (``Target.gemm_lowering``);
* generates the kernel source for the spec the arguments call for, loads it
  through the content-hashed cache (:mod:`fp4.runtime.cache`) and picks a
  launch configuration per shape bucket (:mod:`fp4.runtime.autotune`);
* falls back to the reference implementation on the same device, with the
  reason logged and counted in ``COUNTERS``, for inputs the kernels do not
  cover (another dtype, a gate of another dtype, ...).  The fallback is exact.

The ``launch_*`` functions take ``interpret=True`` to run the same kernels in
Triton's CPU interpreter on CPU tensors (the CPU tests do that).
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter

import torch
from fp4.codegen.spec import BiasGradSpec, EpilogueSpec, GemmSpec, QuantizeSpec
from fp4.target import Target

from . import autotune, fold, kernels, ops, reference
from .cache import default_cache
from .formats import GROUP_SIZE
from .philox import sign_mask, stream_seed

log = logging.getLogger("fp4.launch")

COUNTERS: Counter = Counter()
"""``launch.<kernel>`` per launch, ``fallback.<op>.<reason>`` per reference fallback, ``gemm.<implementation>``."""

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
CUBLAS = autotune.Config(name="cublas")
"""The autotuning candidate that runs cuBLAS (``torch._scaled_mm``) on the folded operands."""


@functools.cache
def _device_target(index: int) -> Target:
    return Target.detect(torch.device("cuda", index))


def device_target(device: torch.device) -> Target:
    """The target of a tensor's device (CPU tensors: ``cpu``)."""
    if device.type != "cuda":
        return Target("cpu")
    return _device_target(device.index if device.index is not None else torch.cuda.current_device())


def _wide_counters(out_rows: int, width: int) -> bool:
    """Whether the Philox counters of an SR result (element index // 4) reach the counter's high word."""
    return out_rows * width >= 4 << 32


def _padded(size: int) -> int:
    return -(-size // GROUP_SIZE) * GROUP_SIZE


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _fallback(op: str, reason: str) -> None:
    key = f"fallback.{op}.{reason}"
    if not COUNTERS[key]:
        log.warning("fp4::%s runs the reference implementation: %s", op, reason)
    COUNTERS[key] += 1


def _kernel_runner(source, target, interpret, args, grid_for):
    """``run(config)``: launch ``source`` with ``args`` (a list, or a function of the config) on its grid."""
    kernel = default_cache().load(source, str(target), interpret)

    def run(cfg):
        arguments = args(cfg) if callable(args) else args
        kernel[grid_for(cfg)](
            *arguments, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **source.options
        )

    return run


def _choose_and_run(source, target, candidates, shape_bucket, run, interpret=False, config=None):
    """Run with ``config``, else the autotuner's choice among ``candidates`` (the first one when interpreting)."""
    if config is None:
        if interpret:
            config = candidates[0]
        else:
            config = autotune.AUTOTUNER.choose(source, target, shape_bucket, candidates, run)
    COUNTERS[f"launch.{config.name or source.name}"] += 1
    return run(config), config


def _launch(source, target, args, grid_for, candidates, shape_bucket, interpret=False, config=None):
    run = _kernel_runner(source, target, interpret, args, grid_for)
    return _choose_and_run(source, target, candidates, shape_bucket, run, interpret, config)


# ----------------------------------------------------------------------------------------------------------
# quantizers


def launch_quantize_dense(
    x: torch.Tensor,
    method: str,
    axis: str,
    rotate: bool = True,
    seed: int | None = None,
    sign_seed: int | None = None,
    fold_output: bool = False,
    *,
    interpret: bool = False,
    config=None,
    target=None,
):
    """Quantize a 2-D dense tensor; returns ``(codes, scales[, mask][, fold values, fold row scales])``."""
    if x.dim() != 2:
        raise ValueError(f"quantize kernels take 2-D tensors, got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows, cols = x.shape
    out_rows, width = (rows, _padded(cols)) if axis == "last" else (cols, _padded(rows))
    wide = method == "sr" and _wide_counters(out_rows, width)
    spec = QuantizeSpec(
        method, "dense", axis, rotate, sign_seed is not None, DTYPE_NAMES[x.dtype], fold_output, wide
    )  # fmt: skip
    outputs = _quantize_outputs(spec, out_rows, width, x.device)
    args = [x, *outputs, rows, cols, x.stride(0), width]
    args += [seed] if method == "sr" else []
    args += [_sign_mask_argument(sign_seed)] if sign_seed is not None else []
    _run_quantize(spec, args, out_rows, width, x.device, interpret, config, target)
    return outputs


def launch_requantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    seed: int,
    sign_seed: int | None,
    *,
    interpret: bool = False,
    config=None,
    target=None,
):
    """Saved MXFP4 ``[R, K]`` -> its transpose ``[K, pad(R)]`` re-quantized with stochastic rounding."""
    codes, scales = codes.contiguous(), scales.contiguous()
    rows, cols = codes.shape[0], codes.shape[1] * 2
    out_rows, width = cols, _padded(rows)
    wide = _wide_counters(out_rows, width)
    spec = QuantizeSpec("sr", "mxfp4", "first", True, sign_seed is not None, "u8", wide_offsets=wide)
    outputs = _quantize_outputs(spec, out_rows, width, codes.device)
    args = [codes, scales, *outputs, rows, cols, codes.stride(0), scales.stride(0), width, seed]
    args += [_sign_mask_argument(sign_seed)] if sign_seed is not None else []
    _run_quantize(spec, args, out_rows, width, codes.device, interpret, config, target)
    return outputs


def _quantize_outputs(spec: QuantizeSpec, out_rows: int, width: int, device) -> list[torch.Tensor]:
    u8 = dict(dtype=torch.uint8, device=device)
    outputs = [torch.empty((out_rows, width // 2), **u8), torch.empty((out_rows, width // GROUP_SIZE), **u8)]
    if spec.writes_mask:
        outputs.append(torch.empty((out_rows, width // 8), **u8))
    if spec.fold:
        outputs.append(torch.empty((out_rows, width), dtype=fold.FP8_DTYPE, device=device))
        outputs.append(torch.empty((out_rows,), dtype=torch.float32, device=device))
    return outputs


def _run_quantize(spec, args, out_rows, width, device, interpret, config, target):
    if out_rows == 0 or width == 0:
        return
    source = kernels.quantize_source(spec)
    target = target or device_target(device)
    groups = width // GROUP_SIZE

    def grid_for(cfg):
        block_rows, block_groups = cfg.kwargs["BLOCK_ROWS"], cfg.kwargs["BLOCK_GROUPS"]
        if spec.fold:
            return (_cdiv(out_rows, block_rows),)
        return (_cdiv(out_rows, block_rows), _cdiv(groups, block_groups))

    candidates = kernels.quantize_configs(spec)
    _launch(source, target, args, grid_for, candidates, autotune.bucket(out_rows, width), interpret, config)


def launch_fold(codes: torch.Tensor, scales: torch.Tensor, *, interpret=False, config=None, target=None):
    """MXFP4 ``[R, K]`` -> ``(E4M3 values [R, K], fp32 row scales [R])`` (:mod:`fp4.runtime.fold`)."""
    codes, scales = codes.contiguous(), scales.contiguous()
    rows, width = codes.shape[0], codes.shape[1] * 2
    values = torch.empty((rows, width), dtype=fold.FP8_DTYPE, device=codes.device)
    row_scales = torch.empty((rows,), dtype=torch.float32, device=codes.device)
    if rows and width:
        source = kernels.fold_source()
        target = target or device_target(codes.device)
        args = [codes, scales, values, row_scales, rows, width]
        grid_for = lambda cfg: (_cdiv(rows, cfg.kwargs["BLOCK_ROWS"]),)
        _launch(source, target, args, grid_for, kernels.FOLD_CONFIGS, autotune.bucket(rows, width), interpret, config)
    return values, row_scales


# ----------------------------------------------------------------------------------------------------------
# GEMMs


def gemm_unsupported_reason(M, N, bias, gate, residual, clip_mask, inverse_rotate, out_dtype) -> str | None:
    """Why the GEMM kernels cannot run these epilogue arguments (None when they can)."""
    if out_dtype not in DTYPE_NAMES:
        return f"out_dtype {out_dtype} has no kernel"
    if M == 0 or N == 0:
        return "empty output"
    if bias is not None and tuple(bias.shape) != (N,):
        return f"bias of shape {tuple(bias.shape)}"
    for name, other in (("gate", gate), ("residual", residual)):
        if other is not None and (other.dtype != out_dtype or tuple(other.shape) != (M, N)):
            return f"{name} {other.dtype} {tuple(other.shape)} is not {out_dtype} [{M}, {N}]"
    if clip_mask is not None and (N % 32 or tuple(clip_mask.shape) != (M, N // 8)):
        return f"clip mask {tuple(clip_mask.shape)} for a [{M}, {N}] output"
    if inverse_rotate and N % GROUP_SIZE:
        return f"inverse rotation of {N} columns"
    return None


def _epilogue_args(M, N, device, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype):
    spec = EpilogueSpec(
        alpha=alpha != 1.0,
        bias=bias is not None,
        activation=activation,
        gate=gate is not None,
        residual=residual is not None,
        clip_mask=clip_mask is not None,
        inverse_rotate=inverse_rotate,
        out_dtype=DTYPE_NAMES[out_dtype],
    )
    out = torch.empty((M, N), dtype=out_dtype, device=device)
    values = {"out_ptr": out, "stride_om": out.stride(0), "alpha": float(alpha)}
    if bias is not None:
        values["bias_ptr"] = bias.float().contiguous()
    if gate is not None:
        gate = gate if gate.stride(-1) == 1 else gate.contiguous()
        values.update(gate_ptr=gate, stride_gm=gate.stride(0))
    if residual is not None:
        residual = residual if residual.stride(-1) == 1 else residual.contiguous()
        values.update(residual_ptr=residual, stride_rm=residual.stride(0))
    if clip_mask is not None:
        values["mask_ptr"] = clip_mask.contiguous()
    return spec, out, values


FAST_ACCUMULATION_ENV = "FP4_FP8_FAST_ACCUMULATION"
PROMOTE_FP8_ACCUMULATION = os.environ.get(FAST_ACCUMULATION_ENV, "0") != "1"
"""Add each K tile's FP8 product to the fp32 accumulator outside the tensor core (the accuracy of cuBLAS's
default FP8 mode).  ``FP4_FP8_FAST_ACCUMULATION=1`` accumulates inside the tensor core instead: faster, and as
accurate as cuBLAS with ``use_fast_accum=True``."""


def _gemm_launch(lowering, operands, M, N, K, epilogue_inputs, device, interpret, config, target, cublas=None):
    """Run the GEMM; on Hopper the candidates also cover the TMA, persistent and cuBLAS variants."""
    a, a_scale, b, b_scale = operands
    spec_e, out, values = _epilogue_args(M, N, device, *epilogue_inputs)
    values.update(a_ptr=a, a_scale_ptr=a_scale, b_ptr=b, b_scale_ptr=b_scale, M=M, N=N, K=K)
    values.update(stride_am=a.stride(0), stride_bn=b.stride(0))
    target = target or device_target(device)
    promote = lowering == "fp8_fold" and PROMOTE_FP8_ACCUMULATION
    primary = GemmSpec(lowering, spec_e, promote=promote)
    variants = {"": primary}
    if lowering == "fp8_fold" and not interpret and _tma_usable(a, b):
        # on Hopper the tensor-descriptor kernels beat pointer loads for every shape measured
        variants = {
            "tma": GemmSpec(lowering, spec_e, tma=True, promote=promote),
            "tma_persistent": GemmSpec(lowering, spec_e, tma=True, persistent=True, promote=promote),
        }
    runners = {}

    def run(cfg):
        if cfg.name == CUBLAS.name:
            return cublas()
        spec = variants[cfg.name]
        if cfg.name not in runners:
            source = kernels.gemm_source(spec)
            runners[cfg.name] = (source, default_cache().load(source, str(target), interpret))
        source, kernel = runners[cfg.name]
        params = cfg.kwargs
        params["EVEN_K"] = K % params["BLOCK_K"] == 0
        tiles = _cdiv(M, params["BLOCK_M"]) * _cdiv(N, params["BLOCK_N"])
        if spec.persistent:
            params["NUM_PROGRAMS"] = min(tiles, _sm_count(device))
        if spec.tma:
            from triton.tools.tensor_descriptor import TensorDescriptor

            values["a_desc"] = TensorDescriptor.from_tensor(a, [params["BLOCK_M"], params["BLOCK_K"]])
            values["b_desc"] = TensorDescriptor.from_tensor(b, [params["BLOCK_N"], params["BLOCK_K"]])
        args = [values[name] for name in source.signature]
        grid = (params["NUM_PROGRAMS"],) if spec.persistent else (tiles,)
        kernel[grid](*args, **params, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **source.options)
        return out

    candidates = []
    for name, spec in variants.items():
        candidates += [autotune.Config(c.params, c.num_warps, c.num_stages, name) for c in kernels.gemm_configs(spec)]
    if cublas is not None:
        candidates.append(CUBLAS)
    if config is not None and config.name not in variants and config.name != CUBLAS.name:
        if config.name in ("tma", "tma_persistent") and lowering == "fp8_fold" and not interpret:
            variants[config.name] = GemmSpec(
                lowering, spec_e, tma=True, persistent=config.name == "tma_persistent", promote=promote
            )  # fmt: skip
        elif config.name == "" and not interpret:
            variants[""] = primary
        else:
            raise ValueError(f"unknown GEMM variant {config.name!r}")
    result, chosen = _choose_and_run(
        kernels.gemm_source(primary), target, candidates, autotune.bucket(M, N, K), run, interpret, config
    )
    COUNTERS[f"gemm.{lowering}{'.' + chosen.name if chosen.name else ''}"] += 1
    return result


def _tma_usable(a, b) -> bool:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return all(t.data_ptr() % 16 == 0 and t.stride(0) % 16 == 0 for t in (a, b))


@functools.cache
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


def launch_fold_gemm(
    a, a_row_scales, b, b_row_scales, alpha=1.0, bias=None, activation="none", gate=None, residual=None,
    clip_mask=None, inverse_rotate=False, out_dtype=torch.bfloat16, *, interpret=False, config=None, target=None,
):  # fmt: skip
    """``fp8_fold_gemm`` with the Triton FP8 kernel, or cuBLAS when the autotuner finds it faster."""
    a, b = a.contiguous(), b.contiguous()
    M, N, K = a.shape[0], b.shape[0], a.shape[1]
    epilogue_inputs = (alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)
    cublas = None
    if not interpret and _cublas_eligible(M, N, K, bias, clip_mask, inverse_rotate, out_dtype):
        cublas = lambda: cublas_fold_gemm(a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual)
    operands = (a, a_row_scales.contiguous(), b, b_row_scales.contiguous())
    return _gemm_launch("fp8_fold", operands, M, N, K, epilogue_inputs, a.device, interpret, config, target, cublas)


def launch_mxfp4_gemm(
    a, a_scales, b, b_scales, alpha=1.0, bias=None, activation="none", gate=None, residual=None, clip_mask=None,
    inverse_rotate=False, out_dtype=torch.bfloat16, *, lowering, interpret=False, config=None, target=None,
):  # fmt: skip
    """``mxfp4_gemm`` on codes and scales with the ``dot_scaled`` or ``dequant_bf16`` kernel."""
    a, b = a.contiguous(), b.contiguous()
    M, N, K = a.shape[0], b.shape[0], a.shape[1] * 2
    epilogue_inputs = (alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)
    operands = (a, a_scales.contiguous(), b, b_scales.contiguous())
    return _gemm_launch(lowering, operands, M, N, K, epilogue_inputs, a.device, interpret, config, target)


def _cublas_eligible(M, N, K, bias, clip_mask, inverse_rotate, out_dtype) -> bool:
    # cuBLAS row-wise scaled FP8 (torch._scaled_mm) writes bf16 and adds a bf16 bias; the clip mask and the
    # inverse rotation act on the fp32 accumulator before rounding, so they need the Triton epilogue.
    return (
        hasattr(torch, "_scaled_mm")
        and out_dtype == torch.bfloat16
        and clip_mask is None
        and not inverse_rotate
        and (bias is None or bias.dtype == torch.bfloat16)
        and M % 16 == 0
        and N % 16 == 0
        and K % 16 == 0
    )


def cublas_fold_gemm(a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual):
    """The fold GEMM through cuBLAS; the steps after rounding run as the eager ops (identical to the reference)."""
    scale_a = a_row_scales.float()
    if alpha != 1.0:
        scale_a = scale_a * alpha  # alpha times a power of two: exact
    out = torch._scaled_mm(
        a, b.t(), scale_a=scale_a[:, None].contiguous(), scale_b=b_row_scales.float()[None, :].contiguous(),
        bias=bias, out_dtype=torch.bfloat16,
    )  # fmt: skip
    out = reference.apply_activation(out, activation)
    if gate is not None:
        out = out * gate
    if residual is not None:
        out = out + residual
    return out


# ----------------------------------------------------------------------------------------------------------
# bias gradient


def launch_bias_grad(grad_output: torch.Tensor, dtype: torch.dtype, *, interpret=False, config=None, target=None):
    """``sum_T grad_output`` in fp32, rounded once to ``dtype`` (deterministic: fixed chunks, fixed order)."""
    grad = grad_output if grad_output.stride(-1) == 1 else grad_output.contiguous()
    T, N = grad.shape
    spec = BiasGradSpec(DTYPE_NAMES[grad.dtype])
    source = kernels.bias_grad_source(spec)
    chunks = max(1, min(_cdiv(T, 256), 64))
    rows_per_chunk = _cdiv(_cdiv(T, chunks), 64) * 64
    chunks = _cdiv(T, rows_per_chunk) if T else 1
    partial = torch.zeros((chunks, N), dtype=torch.float32, device=grad.device)
    if T and N:
        args = [grad, partial, T, N, grad.stride(0), rows_per_chunk]
        grid_for = lambda cfg: (_cdiv(N, cfg.kwargs["BLOCK_N"]), chunks)
        target = target or device_target(grad.device)
        _launch(source, target, args, grid_for, kernels.BIAS_GRAD_CONFIGS, autotune.bucket(T, N), interpret, config)
    return partial.sum(0).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# the CUDA implementations of the ops


def _sign_mask_argument(sign_seed: int) -> int:
    """The rotation signs of ``sign_seed`` as the kernels' signed 32-bit ``sign_mask`` argument."""
    mask = sign_mask(sign_seed)
    return mask - (1 << 32) if mask >= 1 << 31 else mask


def _signs_seed(seed: int, sign_stream: int) -> int | None:
    return None if sign_stream == ops.NO_SIGNS else stream_seed(seed, sign_stream)


def quest_quantize_cuda(x, rotate):
    ops._check_last_dim(x, "quest_quantize")
    if x.dtype not in DTYPE_NAMES:
        _fallback("quest_quantize", f"input dtype {x.dtype}")
        return reference.quest_quantize(x, rotate)
    lead, k = tuple(x.shape[:-1]), x.shape[-1]
    codes, scales, mask = launch_quantize_dense(x.reshape(-1, k), "quest", "last", rotate)
    return codes.view(lead + (k // 2,)), scales.view(lead + (k // GROUP_SIZE,)), mask.view(lead + (k // 8,))


def sr_quantize_cuda(x, seed, sign_stream, stream, transpose):
    ops._check_seed(seed)
    if x.dim() != 2:
        raise ValueError(f"fp4::sr_quantize takes a 2-D tensor, got {x.dim()}-D")
    seed = int(seed)
    if x.dtype not in DTYPE_NAMES:
        _fallback("sr_quantize", f"input dtype {x.dtype}")
        return reference.sr_quantize(x, ops._signs(torch.tensor(seed), sign_stream), seed, stream, transpose)
    axis = "first" if transpose else "last"
    codes, scales = launch_quantize_dense(
        x, "sr", axis, True, stream_seed(seed, stream), _signs_seed(seed, sign_stream)
    )  # fmt: skip
    return codes, scales


def requantize_sr_cuda(codes, scales, seed, sign_stream, stream):
    ops._check_seed(seed)
    seed = int(seed)
    return tuple(launch_requantize(codes, scales, stream_seed(seed, stream), _signs_seed(seed, sign_stream)))


def mxfp4_gemm_cuda(
    a, a_scales, b, b_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype
):
    ops.check_gemm_operands(a, a_scales, b, b_scales, activation)
    M, N = a.shape[0], b.shape[0]
    lowering = device_target(a.device).gemm_lowering
    reason = gemm_unsupported_reason(M, N, bias, gate, residual, clip_mask, inverse_rotate, out_dtype)
    if reason is None and lowering == "reference":
        reason = f"no GEMM kernel for {device_target(a.device)}"
    if reason is not None:
        _fallback("mxfp4_gemm", reason)
        return reference.mxfp4_gemm(
            a, a_scales, b, b_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype
        )
    epilogue = (alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)
    if lowering == "fp8_fold":
        a_values, a_row_scales = launch_fold(a, a_scales)
        b_values, b_row_scales = launch_fold(b, b_scales)
        return launch_fold_gemm(a_values, a_row_scales, b_values, b_row_scales, *epilogue)
    return launch_mxfp4_gemm(a, a_scales, b, b_scales, *epilogue, lowering=lowering)


def bias_grad_cuda(grad_output, dtype):
    if grad_output.dim() != 2 or grad_output.dtype not in DTYPE_NAMES:
        _fallback("bias_grad", f"input {grad_output.dtype} of {grad_output.dim()} dims")
        return reference.bias_grad(grad_output, dtype)
    return launch_bias_grad(grad_output, dtype)


def fold_fp8_cuda(codes, scales):
    return launch_fold(codes, scales)


def quest_quantize_fold_cuda(x, rotate):
    if x.dim() != 2:
        raise ValueError(f"fp4::quest_quantize_fold takes a 2-D tensor, got {x.dim()}-D")
    ops._check_last_dim(x, "quest_quantize_fold")
    if x.dtype not in DTYPE_NAMES:
        _fallback("quest_quantize_fold", f"input dtype {x.dtype}")
        codes, scales, mask = reference.quest_quantize(x, rotate)
        return (codes, scales, mask) + fold.fold_reference(codes, scales)
    return tuple(launch_quantize_dense(x, "quest", "last", rotate, fold_output=True))


def fp8_fold_gemm_cuda(a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual, clip_mask,
                       inverse_rotate, out_dtype):  # fmt: skip
    M, N = a.shape[0], b.shape[0]
    reason = gemm_unsupported_reason(M, N, bias, gate, residual, clip_mask, inverse_rotate, out_dtype)
    if reason is None and not device_target(a.device).has_fp8_mma:
        reason = f"no FP8 tensor cores on {device_target(a.device)}"
    if reason is not None:
        _fallback("fp8_fold_gemm", reason)
        return fold.fp8_fold_gemm_reference(
            a, a_row_scales, b, b_row_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate,
            out_dtype,
        )  # fmt: skip
    epilogue = (alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)
    return launch_fold_gemm(a, a_row_scales, b, b_row_scales, *epilogue)


CUDA_IMPLEMENTATIONS = {
    "fp4::quest_quantize": quest_quantize_cuda,
    "fp4::sr_quantize": sr_quantize_cuda,
    "fp4::requantize_sr": requantize_sr_cuda,
    "fp4::mxfp4_gemm": mxfp4_gemm_cuda,
    "fp4::bias_grad": bias_grad_cuda,
    "fp4::fold_fp8": fold_fp8_cuda,
    "fp4::quest_quantize_fold": quest_quantize_fold_cuda,
    "fp4::fp8_fold_gemm": fp8_fold_gemm_cuda,
}


def register() -> None:
    """Make the kernels the CUDA implementations of the fp4 ops (idempotent)."""
    for name, function in CUDA_IMPLEMENTATIONS.items():
        torch.library.register_kernel(name, "cuda", function)


register()
