"""The CUDA implementations of the fp4 ops: per call signature, the kernel plan that runs the op.

Importing this module registers a CUDA implementation for each op of
:mod:`fp4.runtime.ops` that has a kernel (and for the fold ops of
:mod:`fp4.runtime.fold`), so graphs that call ``torch.ops.fp4.*`` run the
kernels on a GPU without any change.

Each implementation looks its call signature (shapes, strides, dtypes, device, the op's constant arguments) up
in a plan cache (:mod:`fp4.runtime.plans`).  A missing entry is built once from the op's call object
(:class:`PlanCall`, :class:`GemmCall`: the plans of :mod:`fp4.runtime.launch` and the flattening and copies
the kernels need) and from then on the op launches with nothing but its tensors.  The Inductor launch path
(:mod:`fp4.runtime.inductor_launch`) builds the same call objects (:data:`CALLS`) and emits their kernels in
Inductor's wrapper code.

Inputs the kernels do not cover (another dtype, a gate of another dtype, ...)
get a :class:`Fallback`: the reference implementation on the same device, with
the reason logged once and counted in ``launch.COUNTERS``.  The fallback is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import fold, library, ops, reference
from .formats import GROUP_SIZE
from .launch import (
    COUNTERS,
    BiasGradPlan,
    FoldPlan,
    GemmPlan,
    cublas_fold_gemm,
    dense_quantize_plan,
    device_target,
    requantize_plan,
)
from .lowering import DTYPE_NAMES, LOWERINGS, Epilogue, lowering_for
from .plans import WARMUPS, PlanCache, tensor_key, wait_for_warmups

log = logging.getLogger("fp4.calls")


def _fallback(op: str, reason: str) -> None:
    key = f"fallback.{op}.{reason}"
    if not COUNTERS[key]:
        log.warning("fp4::%s runs the reference implementation: %s", op, reason)
    COUNTERS[key] += 1


def planned(op: str, key):
    """The CUDA implementation of ``fp4::<op>``: look the call's ``key(*args)`` up, build a missing plan once
    (the decorated function, called with the op's arguments), then run the plan on the op's arguments."""

    def wrap(build):
        plans = PlanCache(op)

        def implementation(*args):
            if WARMUPS:  # a graph's kernels compiling ahead: let them finish before the step runs any
                wait_for_warmups()
            signature = key(*args)
            plan = plans.get(signature)
            if plan is None:
                plan = plans.build(signature, lambda: build(*args))
            return plan(*args)

        implementation.plans, implementation.key = plans, key
        implementation.__name__ = f"{op}_cuda"
        implementation.__doc__ = build.__doc__
        return implementation

    return wrap


class Fallback(NamedTuple):
    """An op signature the kernels do not cover: why, and the reference implementation that runs instead."""

    reason: str
    function: Callable


class PlanCall:
    """An op at one call signature, launched by one kernel plan.

    ``inputs(*op_args)`` gives the plan's ``(kernel inputs, seed)`` for the op's
    arguments (the flattening and copies the kernel needs); ``plan`` is a
    :class:`QuantizePlan` or :class:`FoldPlan` (``allocate``, ``arguments``,
    ``kernel``).  :meth:`run` is the plan path's callable; the Inductor launch
    path (:mod:`fp4.runtime.inductor_launch`) emits the same kernel with the same
    arguments.
    """

    def __init__(self, plan, inputs: Callable):
        self.plan, self.inputs = plan, inputs

    def run(self) -> Callable:
        plan, inputs = self.plan, self.inputs
        return lambda *args: tuple(plan(*inputs(*args)))


class GemmCall:
    """A GEMM op at one call signature: ``gemm`` (a :class:`GemmPlan`) and, where the op folds its MXFP4
    operands itself (FP8 fold lowering), ``folds``: the :class:`FoldPlan` of each operand."""

    def __init__(self, gemm: GemmPlan, folds: tuple | None = None):
        self.gemm, self.folds = gemm, folds

    def operands(self, a, a_scales, b, b_scales, fold=None) -> tuple:
        """The GEMM kernel's four operands; ``fold(plan, inputs)`` runs a fold plan (default: the plan itself)."""
        operands = _contiguous(a, a_scales, b, b_scales)
        if self.folds is None:
            return operands
        if fold is None:
            return self.folds[0](operands[:2]) + self.folds[1](operands[2:])
        return fold(self.folds[0], operands[:2]) + fold(self.folds[1], operands[2:])

    def run(self) -> Callable:
        gemm, operands = self.gemm, self.operands
        if not gemm.cublas:
            return lambda a, sa, b, sb, *epilogue_args: gemm(operands(a, sa, b, sb), Epilogue(*epilogue_args))

        def run(a, sa, b, sb, *epilogue_args):
            epilogue = Epilogue(*epilogue_args)
            kernel_operands = operands(a, sa, b, sb)
            return gemm(kernel_operands, epilogue, lambda: cublas_fold_gemm(*kernel_operands, epilogue))

        return run


def _plan_of(op: str, call):
    """The plan path's callable for a :class:`PlanCall`, :class:`GemmCall` or :class:`Fallback`."""
    if isinstance(call, Fallback):
        return _reference_plan(op, call.reason, call.function)
    return call.run()


def _reference_plan(op: str, reason: str, function):
    """A plan that runs the reference on the op's arguments, counting the fallback with its reason."""

    def run(*args):
        _fallback(op, reason)
        return function(*args)

    return run


def _seed_reason(x, seed) -> str | None:
    if seed.device != x.device:
        return f"the seed is on {seed.device}, the input on {x.device} (a host read each call)"
    return None


def _gemm_key(a, a_scales, b, b_scales, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate,
              out_dtype):  # fmt: skip
    return (
        tensor_key(a), tensor_key(a_scales), tensor_key(b), tensor_key(b_scales), a.device, alpha, tensor_key(bias),
        activation, tensor_key(gate), tensor_key(residual), tensor_key(clip_mask), inverse_rotate, out_dtype,
    )  # fmt: skip


def _contiguous(*tensors):
    return tuple(t.contiguous() for t in tensors)


def _starts_at(view: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether ``view`` begins at ``base``'s first element (same memory, same offset; fake tensors too)."""
    return torch._C._is_alias_of(view, base) and view.storage_offset() == base.storage_offset()


def quest_quantize_call(x, rotate) -> PlanCall | Fallback:
    """Forward QuEST quantizer along the last dim (any leading dims)."""
    ops._check_last_dim(x, "quest_quantize")
    if x.dtype not in DTYPE_NAMES:
        return Fallback(f"input dtype {x.dtype}", reference.quest_quantize)
    lead, k = tuple(x.shape[:-1]), x.shape[-1]
    flat = x.reshape(-1, k)
    copy = flat.stride(-1) != 1 or not _starts_at(flat, x)
    quantize = dense_quantize_plan(flat.contiguous() if copy else flat, "quest", "last", rotate)
    # the outputs are allocated in their final shapes (the kernel sees pointers only): no views per call
    shapes = (lead + (k // 2,), lead + (k // GROUP_SIZE,), lead + (k // 8,))
    quantize.outputs = [(shape, dtype) for shape, (_, dtype) in zip(shapes, quantize.outputs, strict=True)]
    if x.dim() == 2 and not copy:
        return PlanCall(quantize, lambda x, rotate: ([x], None))

    def inputs(x, rotate):
        flat = x.reshape(-1, k)
        return [flat.contiguous() if copy else flat], None

    return PlanCall(quantize, inputs)


def sr_quantize_call(x, seed, sign_stream, stream, transpose, fold_output=False) -> PlanCall | Fallback:
    """Backward rotate (D.H) + absmax + stochastic rounding of a 2-D tensor (transposed output with ``transpose``);
    ``fold_output``: also the FP8 fold of the result."""
    op = "sr_quantize_fold" if fold_output else "sr_quantize"
    ops._check_seed(seed)
    if x.dim() != 2:
        raise ValueError(f"fp4::{op} takes a 2-D tensor, got {x.dim()}-D")
    reason = _seed_reason(x, seed) or (f"input dtype {x.dtype}" if x.dtype not in DTYPE_NAMES else None)
    if reason is not None:
        return Fallback(reason, (fold.sr_quantize_fold if fold_output else ops.sr_quantize).function)
    copy = x.stride(-1) != 1
    axis = "first" if transpose else "last"
    quantize = dense_quantize_plan(x.contiguous() if copy else x, "sr", axis, True, stream, sign_stream, fold_output)
    return PlanCall(quantize, lambda x, seed, *_: ([x.contiguous() if copy else x], seed))


def requantize_sr_call(codes, scales, seed, sign_stream, stream, fold_output=False) -> PlanCall | Fallback:
    """Saved MXFP4 ``[R, K]`` -> its transpose ``[K, pad(R)]``, re-quantized with stochastic rounding;
    ``fold_output``: also the FP8 fold of the result."""
    ops._check_seed(seed)
    reason = _seed_reason(codes, seed)
    if reason is not None:
        return Fallback(reason, (fold.requantize_sr_fold if fold_output else ops.requantize_sr).function)
    quantize = requantize_plan(codes.contiguous(), scales.contiguous(), stream, sign_stream, fold_output)
    return PlanCall(quantize, lambda codes, scales, seed, *_: (list(_contiguous(codes, scales)), seed))


def quest_quantize_fold_call(x, rotate) -> PlanCall | Fallback:
    """``quest_quantize`` plus the FP8 fold of its result, in one kernel."""
    if x.dim() != 2:
        raise ValueError(f"fp4::quest_quantize_fold takes a 2-D tensor, got {x.dim()}-D")
    ops._check_last_dim(x, "quest_quantize_fold")
    if x.dtype not in DTYPE_NAMES:
        return Fallback(f"input dtype {x.dtype}", fold.quest_quantize_fold.function)
    copy = x.stride(-1) != 1
    quantize = dense_quantize_plan(x.contiguous() if copy else x, "quest", "last", rotate, fold_output=True)
    return PlanCall(quantize, lambda x, rotate: ([x.contiguous() if copy else x], None))


def fold_fp8_call(codes, scales) -> PlanCall:
    """MXFP4 ``[R, K]`` -> E4M3 values + fp32 row scales."""
    plan = FoldPlan(codes.shape[0], codes.shape[1] * 2, codes.device)
    return PlanCall(plan, lambda codes, scales: (list(_contiguous(codes, scales)), None))


def mxfp4_gemm_call(a, a_scales, b, b_scales, *epilogue_args) -> GemmCall | Fallback:
    """The MXFP4 GEMM with its epilogue on codes and scales, by the target's lowering."""
    epilogue = Epilogue(*epilogue_args)
    ops.check_gemm_operands(a, a_scales, b, b_scales, epilogue.activation)
    M, N, K = a.shape[0], b.shape[0], a.shape[1] * 2
    target = device_target(a.device)
    lowering = lowering_for(target)
    reason = epilogue.unsupported_reason(M, N) or lowering.unavailable_reason(target)
    if reason is not None:
        return Fallback(reason, reference.mxfp4_gemm)
    if lowering.operands == "fp8_fold":
        # the GEMM op on codes and scales folds its operands itself (use-fp8-fold saves this on the forward)
        folds = FoldPlan(M, K, a.device), FoldPlan(N, K, a.device)
        folded = folds[0].allocate() + folds[1].allocate()  # what the GEMM plan is built for: fresh fold outputs
        return GemmCall(GemmPlan(lowering, folded, M, N, K, epilogue, a.device), folds)
    return GemmCall(GemmPlan(lowering, _contiguous(a, a_scales, b, b_scales), M, N, K, epilogue, a.device))


def fp8_fold_gemm_call(a, a_row_scales, b, b_row_scales, *epilogue_args) -> GemmCall | Fallback:
    """The GEMM on FP8-folded operands, by the Triton kernel or cuBLAS (the faster for the shape)."""
    epilogue = Epilogue(*epilogue_args)
    M, N, K = a.shape[0], b.shape[0], a.shape[1]
    reason = epilogue.unsupported_reason(M, N)
    if reason is None and not device_target(a.device).has_fp8_mma:
        reason = f"no FP8 tensor cores on {device_target(a.device)}"
    if reason is not None:
        return Fallback(reason, fold.fp8_fold_gemm_reference)
    operands = _contiguous(a, a_row_scales, b, b_row_scales)
    return GemmCall(GemmPlan(LOWERINGS["fp8_fold"], operands, M, N, K, epilogue, a.device))


_SR_KEY = lambda x, seed, sign_stream, stream, transpose: (  # noqa: E731
    tensor_key(x), x.device, tensor_key(seed), seed.device, sign_stream, stream, transpose,
)  # fmt: skip
_REQUANTIZE_KEY = lambda codes, scales, seed, sign_stream, stream: (  # noqa: E731
    tensor_key(codes), tensor_key(scales), codes.device, tensor_key(seed), seed.device, sign_stream, stream,
)  # fmt: skip


@planned("quest_quantize", key=lambda x, rotate: (tensor_key(x), x.device, rotate))
def quest_quantize_cuda(x, rotate):
    """Forward QuEST quantizer along the last dim (any leading dims)."""
    return _plan_of("quest_quantize", quest_quantize_call(x, rotate))


@planned("sr_quantize", key=_SR_KEY)
def sr_quantize_cuda(x, seed, sign_stream, stream, transpose):
    """Backward rotate (D.H) + absmax + stochastic rounding of a 2-D tensor (transposed output with ``transpose``)."""
    return _plan_of("sr_quantize", sr_quantize_call(x, seed, sign_stream, stream, transpose))


@planned("requantize_sr", key=_REQUANTIZE_KEY)
def requantize_sr_cuda(codes, scales, seed, sign_stream, stream):
    """Saved MXFP4 ``[R, K]`` -> its transpose ``[K, pad(R)]``, re-quantized with stochastic rounding."""
    return _plan_of("requantize_sr", requantize_sr_call(codes, scales, seed, sign_stream, stream))


@planned("sr_quantize_fold", key=_SR_KEY)
def sr_quantize_fold_cuda(x, seed, sign_stream, stream, transpose):
    """``sr_quantize`` that also writes the FP8 fold of its result (Hopper's backward GEMM operands)."""
    return _plan_of("sr_quantize_fold", sr_quantize_call(x, seed, sign_stream, stream, transpose, True))


@planned("requantize_sr_fold", key=_REQUANTIZE_KEY)
def requantize_sr_fold_cuda(codes, scales, seed, sign_stream, stream):
    """``requantize_sr`` that also writes the FP8 fold of its result."""
    return _plan_of("requantize_sr_fold", requantize_sr_call(codes, scales, seed, sign_stream, stream, True))


@planned("mxfp4_gemm", key=_gemm_key)
def mxfp4_gemm_cuda(a, a_scales, b, b_scales, *epilogue_args):
    """The MXFP4 GEMM with its epilogue on codes and scales, by the target's lowering."""
    return _plan_of("mxfp4_gemm", mxfp4_gemm_call(a, a_scales, b, b_scales, *epilogue_args))


@planned("bias_grad", key=lambda grad, dtype: (tensor_key(grad), grad.device, dtype))
def bias_grad_cuda(grad_output, dtype):
    """Column sums of a ``[T, N]`` gradient in fp32, rounded once to ``dtype``."""
    if grad_output.dim() != 2 or grad_output.dtype not in DTYPE_NAMES:
        reason = f"input {grad_output.dtype} of {grad_output.dim()} dims"
        return _reference_plan("bias_grad", reason, reference.bias_grad)
    copy = grad_output.stride(-1) != 1
    grad = grad_output.contiguous() if copy else grad_output
    T, N = grad.shape
    plan = BiasGradPlan(T, N, grad.stride(0), grad.dtype, dtype, grad.device)
    return lambda grad, dtype: plan(grad.contiguous() if copy else grad)


@planned("fold_fp8", key=lambda codes, scales: (tensor_key(codes), tensor_key(scales), codes.device))
def fold_fp8_cuda(codes, scales):
    """MXFP4 ``[R, K]`` -> E4M3 values + fp32 row scales."""
    return _plan_of("fold_fp8", fold_fp8_call(codes, scales))


@planned("quest_quantize_fold", key=lambda x, rotate: (tensor_key(x), x.device, rotate))
def quest_quantize_fold_cuda(x, rotate):
    """``quest_quantize`` plus the FP8 fold of its result, in one kernel."""
    return _plan_of("quest_quantize_fold", quest_quantize_fold_call(x, rotate))


@planned("fp8_fold_gemm", key=_gemm_key)
def fp8_fold_gemm_cuda(a, a_row_scales, b, b_row_scales, *epilogue_args):
    """The GEMM on FP8-folded operands, by the Triton kernel or cuBLAS (the faster for the shape)."""
    return _plan_of("fp8_fold_gemm", fp8_fold_gemm_call(a, a_row_scales, b, b_row_scales, *epilogue_args))


CALLS = {
    "fp4::quest_quantize": quest_quantize_call,
    "fp4::sr_quantize": sr_quantize_call,
    "fp4::requantize_sr": requantize_sr_call,
    "fp4::sr_quantize_fold": lambda *args: sr_quantize_call(*args, fold_output=True),
    "fp4::requantize_sr_fold": lambda *args: requantize_sr_call(*args, fold_output=True),
    "fp4::quest_quantize_fold": quest_quantize_fold_call,
    "fp4::fold_fp8": fold_fp8_call,
    "fp4::mxfp4_gemm": mxfp4_gemm_call,
    "fp4::fp8_fold_gemm": fp8_fold_gemm_call,
}
"""The ops whose CUDA implementation is a :class:`PlanCall` or :class:`GemmCall` per signature, by op: what
their plans are built from (``bias_grad`` finishes with a torch reduction and is not listed)."""


CUDA_IMPLEMENTATIONS = {
    "fp4::quest_quantize": quest_quantize_cuda,
    "fp4::sr_quantize": sr_quantize_cuda,
    "fp4::requantize_sr": requantize_sr_cuda,
    "fp4::mxfp4_gemm": mxfp4_gemm_cuda,
    "fp4::bias_grad": bias_grad_cuda,
    "fp4::fold_fp8": fold_fp8_cuda,
    "fp4::quest_quantize_fold": quest_quantize_fold_cuda,
    "fp4::sr_quantize_fold": sr_quantize_fold_cuda,
    "fp4::requantize_sr_fold": requantize_sr_fold_cuda,
    "fp4::fp8_fold_gemm": fp8_fold_gemm_cuda,
}

library.register_cuda(CUDA_IMPLEMENTATIONS)
