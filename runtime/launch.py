"""Kernel plans: the generated Triton kernels, each resolved once for a shape and launched with its tensors alone.

A plan (:class:`QuantizePlan`, :class:`FoldPlan`, :class:`GemmPlan`, :class:`BiasGradPlan`) is built for one
shape on one device: the target of the device picks the GEMM lowering (:mod:`fp4.runtime.lowering`), the spec
the arguments call for gives the kernel source (loaded through the content-hashed cache,
:mod:`fp4.runtime.cache`), and the autotuner picks a launch configuration for the shape bucket
(:mod:`fp4.runtime.autotune`).  A plan then allocates the outputs and launches with the tensors alone.  Which
plan serves an op at a call signature, and registering the plans as the ops' CUDA implementations, is
:mod:`fp4.runtime.calls`.

Random bits never cross to the host: the layer seed is an int64 tensor on the
device (``fp4::draw_seeds``) that the kernels read, deriving each stream's
Philox seed and the rotation signs themselves, so a CUDA-graph replay draws
new bits every step.

The ``launch_*`` functions take ``interpret=True`` to run the same kernels in
Triton's CPU interpreter on CPU tensors (the CPU tests do that) and
``config=`` to force a launch configuration; those calls build a fresh plan.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import torch
from fp4.codegen.lanes import stream_addend
from fp4.codegen.spec import BiasGradSpec, QuantizeSpec
from fp4.core import Target

from . import autotune, fold, kernels, ops, reference
from .cache import default_cache
from .formats import GROUP_SIZE
from .lowering import CUBLAS, DTYPE_NAMES, LOWERINGS, Epilogue
from .plans import KernelLaunch

COUNTERS: Counter = Counter()
"""``plan.<kernel>`` per plan built, ``gemm.<lowering>[.<variant>]`` per GEMM plan, ``fallback.<op>.<reason>``
per reference fallback call."""

FAST_ACCUMULATION_ENV = "FP4_FP8_FAST_ACCUMULATION"
LOWERINGS["fp8_fold"].promote = os.environ.get(FAST_ACCUMULATION_ENV, "0") != "1"
"""``FP4_FP8_FAST_ACCUMULATION=1`` accumulates FP8 products inside Hopper's tensor cores (faster, as accurate as
cuBLAS with ``use_fast_accum=True``); the default adds each K tile's product in fp32, as cuBLAS does by default."""
CUBLAS_PRODUCT_ENV = "FP4_CUBLAS_PRODUCT"
LOWERINGS["fp8_fold"].cublas_product = os.environ.get(CUBLAS_PRODUCT_ENV, "1") != "0"
"""The autotuner times cuBLAS's product plus the epilogue kernel (``cublas_epilogue``) for the Hopper backward
GEMMs beside the Triton kernels (on an H100 it took the 7B model's step from 176 to 163 ms; ``benchmarks/RESULTS.md``);
``FP4_CUBLAS_PRODUCT=0`` leaves it out."""


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


class _Kernel:
    """One kernel source with its candidate configurations; the chosen one is launched by :meth:`run`.

    The first :meth:`run` chooses (the autotuner times the candidates on the
    call's own arguments, or ``config`` when given, or the first candidate in
    the interpreter); every later call launches the chosen configuration.
    """

    def __init__(self, source, target, candidates, shape_bucket, grid_for, device, interpret=False, config=None,
                 plan_constexprs=None):  # fmt: skip
        # Triton runs kernels on CPU tensors only in its interpreter (how the CPU tests run these plans)
        interpret = interpret or device.type != "cuda"
        self.source, self.target, self.device, self.interpret = source, target, device, interpret
        self.candidates, self.shape_bucket, self.grid_for = candidates, shape_bucket, grid_for
        # constexprs that follow from this plan's sizes (EVEN_K), given per configuration: they are not part of
        # a configuration, whose choice the autotuner shares across every plan of the same shape bucket
        self.plan_constexprs = plan_constexprs or (lambda config: {})
        self.function = default_cache().load(source, str(target), interpret)
        self.launches: dict = {}
        self.chosen = config if config is not None else (candidates[0] if interpret else None)
        self._launch = None

    def launch_for(self, config) -> KernelLaunch:
        launch = self.launches.get(config)
        if launch is None:
            options = dict(num_warps=config.num_warps, num_stages=config.num_stages, **self.source.options)
            device = None if self.interpret else self.device
            constexprs = {**config.kwargs, **self.plan_constexprs(config)}
            launch = self.launches[config] = KernelLaunch(self.function, constexprs, options, device)
        return launch

    def choose(self, arguments) -> autotune.Config | None:
        """The chosen configuration; the first call chooses it, timing the candidates on ``arguments()`` (the
        kernel's argument list, asked for only when the autotuner times).  None while compiling ahead."""
        if self.chosen is None:
            run = lambda cfg: self.launch_for(cfg)(self.grid_for(cfg), arguments())
            warm = lambda cfg: self.launch_for(cfg).warmup(self.grid_for(cfg), arguments())
            self.chosen = autotune.AUTOTUNER.choose(
                self.source, self.target, self.shape_bucket, self.candidates, run, warm
            )  # fmt: skip
        return self.chosen

    def chosen_launch(self) -> tuple[KernelLaunch, tuple]:
        """``(launch, grid)`` of the chosen configuration (after :meth:`choose`)."""
        return self.launch_for(self.chosen), self.grid_for(self.chosen)

    def run(self, args: list) -> None:
        if self._launch is None:
            if self.chosen is None:
                if self.choose(lambda: args) is None:  # compiling ahead: the compiles are queued, nothing runs
                    return
            elif autotune.compiling_ahead():
                self.launch_for(self.chosen).warmup(self.grid_for(self.chosen), args)
                return
            COUNTERS[f"plan.{self.chosen.name or self.source.name}"] += 1
            self._launch = self.chosen_launch()
            launch, grid = self._launch
            # the first launch compiles the chosen configuration unless the autotuner or a warm-up already did
            with autotune.seconds_in("kernels.first_launch"):
                launch(grid, args)
            return
        launch, grid = self._launch
        launch(grid, args)


# ----------------------------------------------------------------------------------------------------------
# quantizers


def _quantize_output_shapes(spec: QuantizeSpec, out_rows: int, width: int) -> list[tuple]:
    u8 = torch.uint8
    shapes = [((out_rows, width // 2), u8), ((out_rows, width // GROUP_SIZE), u8)]
    if spec.writes_mask:
        shapes.append(((out_rows, width // 8), u8))
    if spec.fold:
        shapes += [((out_rows, width), fold.FP8_DTYPE), ((out_rows,), torch.float32)]
    return shapes


class QuantizePlan:
    """A rotate + quantize kernel for one input signature: ``plan(inputs, seed)`` -> the output tensors.

    ``inputs`` are the 2-D dense tensor (or the saved codes and scales);
    ``seed`` the layer's one-element int64 seed on the device (stochastic
    rounding and random signs only).  ``stream`` and ``sign_stream`` name the
    Philox streams of the rounding bits and the rotation signs.
    """

    def __init__(self, spec, rows, cols, strides, device, stream=0, sign_stream=ops.NO_SIGNS, *, interpret=False,
                 config=None, target=None):  # fmt: skip
        out_rows, width = (rows, _padded(cols)) if spec.axis == "last" else (cols, _padded(rows))
        self.spec, self.device = spec, device
        self.outputs = _quantize_output_shapes(spec, out_rows, width)
        self.scalars = [rows, cols, *strides, width]
        self.reads_seed = spec.uses_philox
        self.addends = stream_addend(stream) if spec.method == "sr" else []
        self.addends += stream_addend(sign_stream) if spec.signs else []
        self.kernel = None
        if out_rows and width:
            groups = width // GROUP_SIZE

            def grid_for(cfg):
                block_rows, block_groups = cfg.kwargs["BLOCK_ROWS"], cfg.kwargs["BLOCK_GROUPS"]
                if spec.fold:
                    return (_cdiv(out_rows, block_rows),)
                return (_cdiv(out_rows, block_rows), _cdiv(groups, block_groups))

            source = kernels.quantize_source(spec)
            self.kernel = _Kernel(
                source, target or device_target(device), kernels.quantize_configs(spec),
                autotune.bucket(out_rows, width), grid_for, device, interpret, config,
            )  # fmt: skip

    def allocate(self) -> list[torch.Tensor]:
        device = self.device
        return [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in self.outputs]

    def arguments(self, inputs: list, outputs: list, seed: torch.Tensor | None) -> list:
        """The kernel's argument list."""
        return [*inputs, *outputs, *self.scalars, *([seed] if self.reads_seed else []), *self.addends]

    def __call__(self, inputs: list, seed: torch.Tensor | None = None) -> list[torch.Tensor]:
        outputs = self.allocate()
        if self.kernel is not None:
            self.kernel.run(self.arguments(inputs, outputs, seed))
        return outputs


def _quantize_spec(method, axis, rotate, signs, dtype, fold_output, out_rows, width, target) -> QuantizeSpec:
    wide = method == "sr" and _wide_counters(out_rows, width)
    hardware_e2m1 = method == "quest" and not fold_output and target.has_e2m1_convert
    return QuantizeSpec(method, "dense", axis, rotate, signs, DTYPE_NAMES[dtype], fold_output, wide, hardware_e2m1)


def dense_quantize_plan(x, method, axis, rotate, stream=0, sign_stream=ops.NO_SIGNS, fold_output=False, **kwargs):
    """The :class:`QuantizePlan` of a 2-D dense ``x`` (last-dim contiguous)."""
    rows, cols = x.shape
    out_rows, width = (rows, _padded(cols)) if axis == "last" else (cols, _padded(rows))
    signs = sign_stream != ops.NO_SIGNS
    target = kwargs.get("target") or device_target(x.device)
    spec = _quantize_spec(method, axis, rotate, signs, x.dtype, fold_output, out_rows, width, target)
    return QuantizePlan(spec, rows, cols, [x.stride(0)], x.device, stream, sign_stream, **kwargs)


def requantize_plan(codes, scales, stream, sign_stream, fold_output=False, **kwargs):
    """The :class:`QuantizePlan` re-quantizing saved MXFP4 ``[R, K]`` into its transpose ``[K, pad(R)]``."""
    rows, cols = codes.shape[0], codes.shape[1] * 2
    wide = _wide_counters(cols, _padded(rows))
    signs = sign_stream != ops.NO_SIGNS
    spec = QuantizeSpec("sr", "mxfp4", "first", True, signs, "u8", fold=fold_output, wide_offsets=wide)
    strides = [codes.stride(0), scales.stride(0)]
    return QuantizePlan(spec, rows, cols, strides, codes.device, stream, sign_stream, **kwargs)


def launch_quantize_dense(
    x, method, axis, rotate=True, seed=None, stream=0, sign_stream=ops.NO_SIGNS, fold_output=False, **kwargs
):
    """Quantize a 2-D dense tensor; returns ``[codes, scales(, mask)(, fold values, fold row scales)]``.

    ``seed`` is the layer's int64 seed tensor (``method="sr"``); ``stream`` and
    ``sign_stream`` are its Philox streams, as for ``fp4::sr_quantize``.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize kernels take 2-D tensors, got {tuple(x.shape)}")
    if method == "sr" and seed is None:
        raise ValueError("stochastic rounding needs the layer's seed tensor")
    x = x if x.stride(-1) == 1 else x.contiguous()
    return dense_quantize_plan(x, method, axis, rotate, stream, sign_stream, fold_output, **kwargs)([x], seed)


def launch_requantize(codes, scales, seed, stream, sign_stream=ops.NO_SIGNS, fold_output=False, **kwargs):
    """Saved MXFP4 ``[R, K]`` -> its transpose ``[K, pad(R)]`` re-quantized with stochastic rounding."""
    codes, scales = codes.contiguous(), scales.contiguous()
    return requantize_plan(codes, scales, stream, sign_stream, fold_output, **kwargs)([codes, scales], seed)


class FoldPlan:
    """MXFP4 ``[R, K]`` -> ``(E4M3 values [R, K], fp32 row scales [R])`` for one shape: ``plan([codes, scales])``."""

    def __init__(self, rows, width, device, *, interpret=False, config=None, target=None):
        self.rows, self.width, self.device = rows, width, device
        groups = width // GROUP_SIZE
        self.scalars = [rows, width, groups]
        self.kernel = None
        if rows and width:
            grid_for = lambda cfg: (_cdiv(rows, cfg.kwargs["BLOCK_ROWS"]), _cdiv(groups, cfg.kwargs["BLOCK_GROUPS"]))
            self.kernel = _Kernel(
                kernels.fold_source(), target or device_target(device), kernels.FOLD_CONFIGS,
                autotune.bucket(rows, width), grid_for, device, interpret, config,
            )  # fmt: skip

    def allocate(self) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.empty((self.rows, self.width), dtype=fold.FP8_DTYPE, device=self.device)
        return values, torch.empty((self.rows,), dtype=torch.float32, device=self.device)

    def arguments(self, inputs, outputs, seed=None) -> list:
        """The kernel's argument list (``inputs``: codes and scales)."""
        return [*inputs, *outputs, *self.scalars]

    def __call__(self, inputs, seed=None):
        outputs = self.allocate()
        if self.kernel is not None:
            self.kernel.run(self.arguments(inputs, outputs))
        return outputs


def launch_fold(codes: torch.Tensor, scales: torch.Tensor, **kwargs):
    """MXFP4 ``[R, K]`` -> ``(E4M3 values [R, K], fp32 row scales [R])`` (:mod:`fp4.runtime.fold`)."""
    codes, scales = codes.contiguous(), scales.contiguous()
    return FoldPlan(codes.shape[0], codes.shape[1] * 2, codes.device, **kwargs)([codes, scales])


# ----------------------------------------------------------------------------------------------------------
# GEMMs


def gemm_unsupported_reason(M, N, bias, gate, residual, clip_mask, inverse_rotate, out_dtype) -> str | None:
    """Why the GEMM kernels cannot run these epilogue arguments (None when they can)."""
    epilogue = Epilogue(1.0, bias, "none", gate, residual, clip_mask, inverse_rotate, out_dtype)
    return epilogue.unsupported_reason(M, N)


@functools.cache
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


_UNIT_SCALES: dict[torch.device, torch.Tensor] = {}


def unit_scale(device: torch.device) -> torch.Tensor:
    """A one-element fp32 one on ``device`` (cuBLAS's unit scale), made once per device and kept.

    Made on a thread of its own: CUDA-graph trees send every allocation of the thread that warms up or records a
    graph to the graph's memory pool, where a tensor kept past the step is an error ("not tracked as outputs"),
    and a plan's first product may run inside that warm-up.  Not made when a plan is built, which the Inductor
    launch path does under a fake-tensor mode."""
    one = _UNIT_SCALES.get(device)
    if one is None:

        def make() -> torch.Tensor:
            made = torch.ones(1, dtype=torch.float32, device=device)
            if device.type == "cuda":  # this thread's stream: filled before any other stream reads it
                torch.cuda.current_stream(device).synchronize()
            return made

        with ThreadPoolExecutor(1, thread_name_prefix="fp4-unit-scale") as thread:
            one = _UNIT_SCALES[device] = thread.submit(make).result()  # an error there is raised here
    return one


class GemmPlan:
    """One GEMM signature on one lowering: ``plan(operands, epilogue, cublas)`` -> the output tensor.

    The candidates are the lowering's kernel variants at their configurations,
    plus cuBLAS where ``cublas_eligible`` (on the fold lowering); the first call
    times them (the autotuner) and every later call runs the winner.  A variant
    whose kernel reads the product from memory (``GemmSpec.product == "cublas"``)
    gets it from ``torch._scaled_mm`` (in the interpreter: the float product of
    the folded operands) and finishes it with the epilogue kernel.
    """

    def __init__(self, lowering, operands, M, N, K, epilogue: Epilogue, device, *, interpret=False, config=None,
                 target=None):  # fmt: skip
        a, _, b, _ = operands
        interpret = interpret or device.type != "cuda"  # CPU tensors: Triton's interpreter
        self.lowering, self.M, self.N, self.K, self.device = lowering, M, N, K, device
        self.interpret = interpret
        self.target = target or device_target(device)
        spec_e = epilogue.spec()
        self.variants = lowering.variants(spec_e, a, b, interpret)
        candidates = []
        for name, spec in self.variants.items():
            candidates += [autotune.Config(c.params, c.num_warps, c.num_stages, name) for c in lowering.configs(spec)]
        self.cublas = not interpret and lowering.cublas_eligible(M, N, K, epilogue)
        if self.cublas:
            candidates.append(CUBLAS)
        if config is not None and config.name not in self.variants and config != CUBLAS:
            spec = lowering.variant(config.name, spec_e)
            if interpret and spec.tma:
                raise ValueError(f"GEMM variant {config.name!r} does not run in the interpreter")
            self.variants[config.name] = spec
        self.candidates = candidates
        self.primary = kernels.gemm_source(lowering.variant("", spec_e))
        self.chosen = config if config is not None else (candidates[0] if interpret else None)
        self.kernels: dict = {}
        self._run = None

    def kernel_entry(self, config):
        """``(source, launch, grid, constexpr values)`` of a kernel config."""
        entry = self.kernels.get(config)
        if entry is None:
            spec = self.variants[config.name]
            source = kernels.gemm_source(spec)
            params = config.kwargs
            if "EVEN_K" in source.constexprs:  # a K loop (not the kernel that reads cuBLAS's product)
                params["EVEN_K"] = self.K % params["BLOCK_K"] == 0
            tiles = _cdiv(self.M, params["BLOCK_M"]) * _cdiv(self.N, params["BLOCK_N"])
            if spec.persistent:
                params["NUM_PROGRAMS"] = min(tiles, _sm_count(self.device))
            grid = (params["NUM_PROGRAMS"],) if spec.persistent else (tiles,)
            function = default_cache().load(source, str(self.target), self.interpret)
            options = dict(num_warps=config.num_warps, num_stages=config.num_stages, **source.options)
            launch = KernelLaunch(function, params, options, None if self.interpret else self.device)
            entry = self.kernels[config] = (source, spec, launch, grid, params)
        return entry

    def _launch(self, config, operands, epilogue, cublas):
        if config == CUBLAS:
            return cublas()
        acc = self.product(operands) if self.variants[config.name].product == "cublas" else None
        launch, grid, args, out = self.arguments(config, operands, epilogue, acc)
        launch(grid, args)
        return out

    def _warm(self, config, operands, epilogue):
        if config != CUBLAS:  # compiles only, nothing is launched: a product variant's kernel specializes on the
            # product's dtype and alignment alone, so a small fresh fp32 buffer stands in for the [M, N] product
            reads_product = self.variants[config.name].product == "cublas"
            acc = torch.empty(16, dtype=torch.float32, device=self.device) if reads_product else None
            launch, grid, args, _ = self.arguments(config, operands, epilogue, acc)
            launch.warmup(grid, args)

    def product(self, operands) -> torch.Tensor:
        """The fp32 ``[M, N]`` product of the folded operands, unscaled: cuBLAS's FP8 GEMM with tensor-wise unit
        scales (its default, promoted accumulation); in the interpreter the float product (exact products, summed
        in the matmul's order)."""
        a, _, b, _ = operands
        if self.interpret:
            return a.float() @ b.float().t()
        one = unit_scale(self.device)
        return torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)

    def arguments(self, config, operands, epilogue, acc=None):
        """``(launch, grid, argument list, output)`` of a kernel config for these operands (``acc``: the product,
        for a variant that reads it)."""
        source, spec, launch, grid, params = self.kernel_entry(config)
        a, a_scale, b, b_scale = operands
        out = torch.empty((self.M, self.N), dtype=epilogue.out_dtype, device=self.device)
        values = epilogue.kernel_values(out)
        values.update(a_ptr=a, a_scale_ptr=a_scale, b_ptr=b, b_scale_ptr=b_scale, M=self.M, N=self.N, K=self.K)
        values["acc_ptr"] = acc
        values.update(stride_am=a.stride(0), stride_bn=b.stride(0))
        if spec.tma:
            from triton.tools.tensor_descriptor import TensorDescriptor

            values["a_desc"] = TensorDescriptor.from_tensor(a, [params["BLOCK_M"], params["BLOCK_K"]])
            values["b_desc"] = TensorDescriptor.from_tensor(b, [params["BLOCK_N"], params["BLOCK_K"]])
        return launch, grid, [values[name] for name in source.signature], out

    def choose(self, sample) -> autotune.Config | None:
        """The chosen configuration; the first call chooses it, timing the candidates on ``sample()``, the
        ``(operands, epilogue, cublas)`` of a call (asked for only when the autotuner times).  None while
        compiling ahead."""
        if self.chosen is None:
            run = lambda cfg: self._launch(cfg, *sample())
            warm = lambda cfg: self._warm(cfg, *sample()[:2])
            self.chosen = autotune.AUTOTUNER.choose(
                self.primary, self.target, autotune.bucket(self.M, self.N, self.K), self.candidates, run, warm
            )  # fmt: skip
        return self.chosen

    def __call__(self, operands, epilogue: Epilogue, cublas=None):
        if self.chosen is None:
            if self.choose(lambda: (operands, epilogue, cublas)) is None:  # compiling ahead: compiles queued
                return torch.empty((self.M, self.N), dtype=epilogue.out_dtype, device=self.device)
        elif self._run is None and autotune.compiling_ahead():
            self._warm(self.chosen, operands, epilogue)
            return torch.empty((self.M, self.N), dtype=epilogue.out_dtype, device=self.device)
        if self._run is None:
            chosen = self.chosen
            COUNTERS[f"gemm.{self.lowering.name}{'.' + chosen.name if chosen.name else ''}"] += 1
            self._run = functools.partial(self._launch, chosen)
            with autotune.seconds_in("kernels.first_launch"):  # it compiles the choice unless the autotuner did
                return self._run(operands, epilogue, cublas)
        return self._run(operands, epilogue, cublas)


def launch_fold_gemm(
    a, a_row_scales, b, b_row_scales, alpha=1.0, bias=None, activation="none", gate=None, residual=None,
    clip_mask=None, inverse_rotate=False, out_dtype=torch.bfloat16, **kwargs,
):  # fmt: skip
    """``fp8_fold_gemm`` with the Triton FP8 kernel, or cuBLAS when the autotuner finds it faster."""
    epilogue = Epilogue(alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)
    operands = (a.contiguous(), a_row_scales.contiguous(), b.contiguous(), b_row_scales.contiguous())
    M, N, K = operands[0].shape[0], operands[2].shape[0], operands[0].shape[1]
    plan = GemmPlan(LOWERINGS["fp8_fold"], operands, M, N, K, epilogue, a.device, **kwargs)
    return plan(operands, epilogue, lambda: cublas_fold_gemm(*operands, epilogue))


def launch_mxfp4_gemm(
    a, a_scales, b, b_scales, alpha=1.0, bias=None, activation="none", gate=None, residual=None, clip_mask=None,
    inverse_rotate=False, out_dtype=torch.bfloat16, *, lowering, **kwargs,
):  # fmt: skip
    """``mxfp4_gemm`` on codes and scales with the ``dot_scaled`` or ``dequant_bf16`` kernel."""
    epilogue = Epilogue(alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype)
    operands = (a.contiguous(), a_scales.contiguous(), b.contiguous(), b_scales.contiguous())
    M, N, K = operands[0].shape[0], operands[2].shape[0], operands[0].shape[1] * 2
    return GemmPlan(LOWERINGS[lowering], operands, M, N, K, epilogue, a.device, **kwargs)(operands, epilogue)


def cublas_fold_gemm(a, a_row_scales, b, b_row_scales, epilogue: Epilogue):
    """The fold GEMM through cuBLAS; the steps after rounding run as the eager ops (identical to the reference)."""
    scale_a = a_row_scales.float()
    if epilogue.alpha != 1.0:
        scale_a = scale_a * epilogue.alpha  # alpha times a power of two: exact
    out = torch._scaled_mm(
        a, b.t(), scale_a=scale_a[:, None].contiguous(), scale_b=b_row_scales.float()[None, :].contiguous(),
        bias=epilogue.bias, out_dtype=torch.bfloat16,
    )  # fmt: skip
    out = reference.apply_activation(out, epilogue.activation)
    if epilogue.gate is not None:
        out = out * epilogue.gate
    if epilogue.residual is not None:
        out = out + epilogue.residual
    return out


# ----------------------------------------------------------------------------------------------------------
# bias gradient


class BiasGradPlan:
    """``sum_T grad_output`` in fp32 for one ``[T, N]`` signature (fixed chunks, fixed order: deterministic)."""

    def __init__(self, T, N, stride, input_dtype, dtype, device, *, interpret=False, config=None, target=None):
        chunks = max(1, min(_cdiv(T, 256), 64))
        rows_per_chunk = _cdiv(_cdiv(T, chunks), 64) * 64
        self.chunks = _cdiv(T, rows_per_chunk) if T else 1
        self.N, self.dtype, self.device = N, dtype, device
        self.scalars = [T, N, stride, rows_per_chunk]
        self.kernel = None
        if T and N:
            source = kernels.bias_grad_source(BiasGradSpec(DTYPE_NAMES[input_dtype]))
            grid_for = lambda cfg: (_cdiv(N, cfg.kwargs["BLOCK_N"]), self.chunks)
            self.kernel = _Kernel(
                source, target or device_target(device), kernels.BIAS_GRAD_CONFIGS, autotune.bucket(T, N), grid_for,
                device, interpret, config,
            )  # fmt: skip

    def __call__(self, grad):
        if self.kernel is None:  # no rows or no columns: the sums are zeros
            return torch.zeros((self.N,), dtype=self.dtype, device=self.device)
        partial = torch.empty((self.chunks, self.N), dtype=torch.float32, device=self.device)  # every chunk stores
        self.kernel.run([grad, partial, *self.scalars])
        return partial.sum(0).to(self.dtype)


def launch_bias_grad(grad_output: torch.Tensor, dtype: torch.dtype, **kwargs):
    """``sum_T grad_output`` in fp32, rounded once to ``dtype`` (deterministic: fixed chunks, fixed order)."""
    grad = grad_output if grad_output.stride(-1) == 1 else grad_output.contiguous()
    T, N = grad.shape
    return BiasGradPlan(T, N, grad.stride(0), grad.dtype, dtype, grad.device, **kwargs)(grad)
