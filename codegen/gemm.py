"""Emit MXFP4 GEMM kernels with a fused epilogue, one lowering per kind of GPU.

``out[M, N] = epilogue(deq(A) @ deq(B)^T)`` with A ``[M, K]`` and B ``[N, K]``
(both K-major, as every fp4 GEMM operand is stored).  The main loop depends on
``GemmSpec.lowering``:

* ``dot_scaled`` (sm_100/sm_103/sm_120): packed E2M1 codes and E8M0 scales go
  straight to ``tl.dot_scaled(..., "e2m1", ...)``, which Triton lowers to the
  block-scaled FP4 tensor-core instructions.
* ``fp8_fold`` (sm_90): the operands are the FP8 fold (E4M3 values with each
  group's exponent folded in, one fp32 scale per row; see
  :mod:`fp4.runtime.fold`), multiplied by FP8 ``wgmma``; the row and column
  scales are applied to the fp32 accumulator in the epilogue, which is exact
  (powers of two).
* ``dequant_bf16`` (other CUDA GPUs): codes are dequantized to bf16 in
  registers (exact) and multiplied by bf16 tensor cores.

The epilogue (:class:`fp4.codegen.spec.EpilogueSpec`) works on column halves
of the tile when ``SPLIT_N == 2``, which halves the registers and shared
memory that the inverse rotation's re-layout needs.

With ``GemmSpec.product == "cublas"`` (``fp8_fold`` only) the kernel has no
main loop: it reads the fp32 product of the folded operands that cuBLAS wrote
(``torch._scaled_mm``, unit scales) tile by tile and finishes it with the same
epilogue helper, so the backward GEMMs, whose clip mask and inverse rotation
cuBLAS cannot apply, may still take cuBLAS's FP8 GEMM.
"""

from __future__ import annotations

from fp4.core import GROUP_SIZE

from . import lanes as L
from .quantize import NO_FUSION
from .source import KernelSource, SourceWriter, header
from .spec import ELEMENT_TYPES, POINTER_TYPES, EpilogueSpec, GemmSpec

GELU_TANH_COEFFICIENT = 0.044715
SQRT_2_OVER_PI = 0.7978845608028654
SQRT_HALF = 0.7071067811865476

CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "SPLIT_N", "EVEN_K")
PRODUCT_CONSTEXPRS = ("BLOCK_M", "BLOCK_N", "SPLIT_N")
"""The tile sizes of a kernel reading cuBLAS's product: no K loop, and tiles in row order (no L2 grouping to gain)."""


def _operand_signature(lowering: str, tma: bool = False) -> dict:
    if tma:
        return {
            "a_desc": "tensordesc<fp8e4nv>",
            "a_scale_ptr": "*fp32",
            "b_desc": "tensordesc<fp8e4nv>",
            "b_scale_ptr": "*fp32",
        }
    if lowering == "fp8_fold":
        return {"a_ptr": "*fp8e4nv", "a_scale_ptr": "*fp32", "b_ptr": "*fp8e4nv", "b_scale_ptr": "*fp32"}
    return {"a_ptr": "*u8", "a_scale_ptr": "*u8", "b_ptr": "*u8", "b_scale_ptr": "*u8"}


def epilogue_signature(epilogue: EpilogueSpec) -> dict:
    """The output and the epilogue's tensor arguments of a GEMM kernel (MXFP4 and NVFP4)."""
    sig = {"out_ptr": POINTER_TYPES[epilogue.out_dtype]}
    if epilogue.bias:
        sig["bias_ptr"] = "*fp32"
    if epilogue.gate:
        sig["gate_ptr"] = POINTER_TYPES[epilogue.out_dtype]
    if epilogue.residual:
        sig["residual_ptr"] = POINTER_TYPES[epilogue.out_dtype]
    if epilogue.clip_mask:
        sig["mask_ptr"] = "*u8"
    return sig


def scalar_signature(e: EpilogueSpec) -> dict:
    """The sizes, strides and ``alpha`` of a GEMM kernel (MXFP4 and NVFP4)."""
    sig = {"M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_bn": "i32", "stride_om": "i32"}
    if e.gate:
        sig["stride_gm"] = "i32"
    if e.residual:
        sig["stride_rm"] = "i32"
    if e.alpha:
        sig["alpha"] = "fp32"
    return sig


_OPERAND_SCALARS = ("K", "stride_am", "stride_bn")
"""The scalars only the main loop reads."""


def signature(spec: GemmSpec) -> dict:
    """Runtime arguments -> Triton types; a tensor descriptor's block shape is filled in per config."""
    scalars = scalar_signature(spec.epilogue)
    if spec.product == "cublas":  # the fp32 product and the fold's row scales; no operands, no K
        operands = {"acc_ptr": "*fp32", "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32"}
        scalars = {name: kind for name, kind in scalars.items() if name not in _OPERAND_SCALARS}
    else:
        operands = _operand_signature(spec.lowering, spec.tma)
    return {**operands, **epilogue_signature(spec.epilogue), **scalars}


def constexprs(spec: GemmSpec) -> tuple[str, ...]:
    if spec.product == "cublas":
        return PRODUCT_CONSTEXPRS
    return CONSTEXPRS + (("NUM_PROGRAMS",) if spec.persistent else ())


def _emit_activation(w: SourceWriter, activation: str) -> None:
    if activation == "gelu":
        w.line(f"y = y * 0.5 * (1.0 + tl.erf(y * {SQRT_HALF!r}))")
    elif activation == "gelu_tanh":
        w.line(f"inner = {SQRT_2_OVER_PI!r} * (y + {GELU_TANH_COEFFICIENT!r} * y * y * y)")
        w.comment("tanh(z) = 1 - 2 / (exp(2z) + 1): exact limits at +-inf, no libdevice needed")
        w.line("y = 0.5 * y * (1.0 + (1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)))")
    elif activation == "silu":
        w.line("y = y / (1.0 + tl.exp(-y))")
    elif activation == "relu":
        w.comment("NaN stays NaN, as torch.relu")
        w.line("y = tl.where(y < 0.0, 0.0, y)")


def emit_rounded_tail(w: SourceWriter, e: EpilogueSpec, out_type: str) -> None:
    """The epilogue after the fp32 steps: round ``acc`` to the output dtype, then activation, gate multiply and
    residual add, each rounded as the eager op would, and the masked store of the ``[BLOCK_M, TILE_N]`` tile
    (``offs_m``, ``offs_n``, ``m_ok``, ``n_ok`` in scope)."""
    w.line(f"y = acc.to({out_type})")
    if e.activation != "none":
        w.comment("activation on the rounded value, rounded again (as the eager op)")
        w.line("y = y.to(tl.float32)")
        _emit_activation(w, e.activation)
        w.line(f"y = y.to({out_type})")
    w.line("tile_ok = m_ok[:, None] & n_ok[None, :]")
    w.line("rows64 = offs_m[:, None].to(tl.int64)")
    if e.gate:
        w.line("gate = tl.load(gate_ptr + rows64 * stride_gm + offs_n[None, :], mask=tile_ok, other=0.0)")
        w.line(f"y = (y.to(tl.float32) * gate.to(tl.float32)).to({out_type})")
    if e.residual:
        w.line("residual = tl.load(residual_ptr + rows64 * stride_rm + offs_n[None, :], mask=tile_ok, other=0.0)")
        w.line(f"y = (y.to(tl.float32) + residual.to(tl.float32)).to({out_type})")
    w.line("tl.store(out_ptr + rows64 * stride_om + offs_n[None, :], y, mask=tile_ok)")


def _emit_epilogue_function(w: SourceWriter, spec: GemmSpec, name: str) -> list[str]:
    """A jit helper that finishes and stores one accumulator tile; returns its parameter names."""
    e = spec.epilogue
    out_type = ELEMENT_TYPES[e.out_dtype]
    params = ["acc", "m0", "n0", "a_scale_ptr", "b_scale_ptr"] + list(epilogue_signature(e))
    params += [p for p in scalar_signature(e) if p not in _OPERAND_SCALARS]
    params += ["BLOCK_M: tl.constexpr", "TILE_N: tl.constexpr"]
    w.line("@triton.jit")
    with w.block(f"def {name}({', '.join(params)}):"):
        w.line('"""Scale, finish and store one [BLOCK_M, TILE_N] accumulator tile (the reference epilogue order)."""')
        w.line("offs_m = m0 + tl.arange(0, BLOCK_M)")
        w.line("offs_n = n0 + tl.arange(0, TILE_N)")
        w.line("m_ok = offs_m < M")
        w.line("n_ok = offs_n < N")
        if spec.lowering == "fp8_fold":
            w.comment("undo the fold: row scale of A times column scale of B (powers of two: exact)")
            w.line("a_scale = tl.load(a_scale_ptr + offs_m, mask=m_ok, other=1.0)")
            w.line("b_scale = tl.load(b_scale_ptr + offs_n, mask=n_ok, other=1.0)")
            w.line("acc = acc * a_scale[:, None] * b_scale[None, :]")
        if e.alpha:
            w.line("acc = acc * alpha")
        if e.bias:
            w.line("acc = acc + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]")
        if e.clip_mask:
            w.comment("straight-through estimator: keep the gradient where the forward did not clip")
            w.line("words = n0 // 32 + tl.arange(0, TILE_N // 32)")
            w.line(
                "mask_words = tl.load(mask_ptr.to(tl.pointer_type(tl.int32)) "
                "+ offs_m[:, None].to(tl.int64) * (N // 32) + words[None, :], "
                "mask=m_ok[:, None] & (words[None, :] < N // 32), other=0)"
            )
            w.line(
                "mask_words = tl.reshape(tl.broadcast_to(mask_words[:, :, None], [BLOCK_M, TILE_N // 32, 32]), "
                "[BLOCK_M, TILE_N])"
            )
            w.line("acc = acc * ((mask_words >> (offs_n % 32)[None, :]) & 1).to(tl.float32)")
        if e.inverse_rotate:
            w.comment("inverse rotation along N: H^T = H, blocks of 32 columns")
            w.line(f"acc = tl.reshape(acc, [BLOCK_M * TILE_N // {GROUP_SIZE}, {GROUP_SIZE}])")
            names = L.split_lanes(w, "acc", f"BLOCK_M * TILE_N // {GROUP_SIZE}", "r")
            L.butterfly(w, names)
            L.join_lanes(w, names, f"BLOCK_M * TILE_N // {GROUP_SIZE}", "acc")
            w.line("acc = tl.reshape(acc, [BLOCK_M, TILE_N])")
        emit_rounded_tail(w, e, out_type)
    w.line("")
    w.line("")
    return [p.split(":")[0] for p in params[:-2]]


def _emit_main_loop(w: SourceWriter, lowering: str, tma: bool = False, promote: bool = False) -> None:
    w.line("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    if promote:
        w.comment("each K tile's product is added to acc in fp32 (the FP8 tensor-core adder keeps fewer bits)")

    def dot():
        w.line("acc += tl.dot(a, b.T)" if promote else "acc = tl.dot(a, b.T, acc)")

    if tma:
        w.comment("tensor-descriptor (TMA) loads; rows and columns past the tensor read as zeros")
        with w.block("for k in range(0, tl.cdiv(K, BLOCK_K)):"):
            w.line("a = a_desc.load([m0, k * BLOCK_K])")
            w.line("b = b_desc.load([n0, k * BLOCK_K])")
            dot()
        return
    w.comment("rows past M / N are wrapped (always in bounds) and dropped at the store")
    w.line("rows_a = (offs_m % M).to(tl.int64)")
    w.line("rows_b = (offs_n % N).to(tl.int64)")
    if lowering == "fp8_fold":
        w.line("offs_k = tl.arange(0, BLOCK_K)")
        w.line("a_ptrs = a_ptr + rows_a[:, None] * stride_am + offs_k[None, :]")
        w.line("b_ptrs = b_ptr + rows_b[:, None] * stride_bn + offs_k[None, :]")
        with w.block("for k in range(0, tl.cdiv(K, BLOCK_K)):"):
            with w.block("if EVEN_K:"):
                w.line("a = tl.load(a_ptrs)")
                w.line("b = tl.load(b_ptrs)")
            with w.block("else:"):
                w.line("a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0.0)")
                w.line("b = tl.load(b_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0.0)")
            dot()
            w.line("a_ptrs += BLOCK_K")
            w.line("b_ptrs += BLOCK_K")
        return

    def product():
        if lowering == "dot_scaled":
            w.line('acc = tl.dot_scaled(a, a_scale, "e2m1", b.T, b_scale, "e2m1", acc)')
        else:
            w.comment("dequantize both tiles to bf16 in registers (exact: a 2-bit significand times a power of two)")
            emit_dequantized_tiles(
                w,
                GROUP_SIZE,
                L.emit_e8m0_value,
                lambda side: f"{side}_bf16 = ({side}_value * {side}_scale_value).to(tl.bfloat16)",
            )
            w.line("acc = tl.dot(a_bf16, b_bf16.T, acc)")

    emit_block_scaled_loop(w, GROUP_SIZE, product)


def _emit_product_tile(w: SourceWriter, name: str, n0: str, width: str) -> None:
    """``name`` = columns ``[n0, n0 + width)`` of cuBLAS's fp32 product (row-major, row stride N) in the tile's rows
    ``offs_m``; elements past M / N read as zeros, which the epilogue's store drops."""
    w.line(f"cols = {n0} + tl.arange(0, {width})")
    w.line(
        f"{name} = tl.load(acc_ptr + rows64[:, None] * N + cols[None, :], "
        "mask=(offs_m < M)[:, None] & (cols < N)[None, :], other=0.0)"
    )


def emit_grouped_order(w: SourceWriter) -> None:
    """``pid_m``, ``pid_n`` of program ``pid`` in grouped order (every GEMM kernel tiles its output so)."""
    w.comment("grouped order: GROUP_M row tiles share the B tiles they stream through L2")
    w.line("group_size = GROUP_M * num_pid_n")
    w.line("first_m = (pid // group_size) * GROUP_M")
    w.line("group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)")
    w.line("pid_m = first_m + (pid % group_size) % group_rows")
    w.line("pid_n = (pid % group_size) // group_rows")


def emit_block_scaled_loop(w: SourceWriter, group: int, product) -> None:
    """The K loop over two block-scaled FP4 operands (MXFP4, NVFP4): E2M1 codes two per byte and one scale byte per
    ``group`` elements, rows ``rows_a``/``rows_b``; loads each K tile (masked past K unless ``EVEN_K``), then
    ``product()`` emits its product into ``acc``."""
    w.line("offs_kb = tl.arange(0, BLOCK_K // 2)")
    w.line(f"offs_ks = tl.arange(0, BLOCK_K // {group})")
    w.line("a_ptrs = a_ptr + rows_a[:, None] * stride_am + offs_kb[None, :]")
    w.line("b_ptrs = b_ptr + rows_b[:, None] * stride_bn + offs_kb[None, :]")
    w.line(f"a_scale_ptrs = a_scale_ptr + rows_a[:, None] * (K // {group}) + offs_ks[None, :]")
    w.line(f"b_scale_ptrs = b_scale_ptr + rows_b[:, None] * (K // {group}) + offs_ks[None, :]")
    with w.block("for k in range(0, tl.cdiv(K, BLOCK_K)):"):
        with w.block("if EVEN_K:"):
            w.lines_(["a = tl.load(a_ptrs)", "b = tl.load(b_ptrs)"])
            w.lines_(["a_scale = tl.load(a_scale_ptrs)", "b_scale = tl.load(b_scale_ptrs)"])
        with w.block("else:"):
            w.line("k_left = K - k * BLOCK_K")
            w.line("a = tl.load(a_ptrs, mask=offs_kb[None, :] < k_left // 2, other=0)")
            w.line("b = tl.load(b_ptrs, mask=offs_kb[None, :] < k_left // 2, other=0)")
            w.line(f"a_scale = tl.load(a_scale_ptrs, mask=offs_ks[None, :] < k_left // {group}, other=0)")
            w.line(f"b_scale = tl.load(b_scale_ptrs, mask=offs_ks[None, :] < k_left // {group}, other=0)")
        product()
        w.line("a_ptrs += BLOCK_K // 2")
        w.line("b_ptrs += BLOCK_K // 2")
        w.line(f"a_scale_ptrs += BLOCK_K // {group}")
        w.line(f"b_scale_ptrs += BLOCK_K // {group}")


def emit_dequantized_tiles(w: SourceWriter, group: int, emit_scale_value, finish) -> None:
    """Both K tiles decoded in registers: ``{side}_value`` (E2M1) and ``{side}_scale_value`` (its group's scale byte
    by ``emit_scale_value``, broadcast over the group), then the line ``finish(side)``."""
    for side, rows in (("a", "BLOCK_M"), ("b", "BLOCK_N")):
        L.emit_e2m1_decode_bytes(w, side, f"[{rows}, BLOCK_K]", f"{side}_value")
        emit_scale_value(w, f"{side}_scale.to(tl.int32)", f"{side}_scale_value")
        w.line(
            f"{side}_scale_value = tl.reshape(tl.broadcast_to({side}_scale_value[:, :, None], "
            f"[{rows}, BLOCK_K // {group}, {group}]), [{rows}, BLOCK_K])"
        )
        w.line(finish(side))


def emit_gemm(spec: GemmSpec) -> KernelSource:
    """Triton source of the GEMM + epilogue kernel described by ``spec`` (with ``product="cublas"``: the epilogue
    kernel on cuBLAS's product)."""
    name = spec.kernel_name
    sig = signature(spec)
    from_memory = spec.product == "cublas"
    summary = {
        "dot_scaled": "MXFP4 GEMM on block-scaled FP4 tensor cores",
        "fp8_fold": "MXFP4 GEMM as an FP8 GEMM on the folded operands, scales in the epilogue",
        "dequant_bf16": "MXFP4 GEMM with operands dequantized to bf16 in registers",
    }[spec.lowering]
    if from_memory:
        summary = "Epilogue of an MXFP4 GEMM on the fp32 product of the folded operands that cuBLAS computed"
    w = SourceWriter()
    w.lines_(header(name, summary if from_memory else summary + ", fused epilogue", spec.describe(), NO_FUSION))
    epilogue_name = f"{name}_epilogue"
    epilogue_args = _emit_epilogue_function(w, spec, epilogue_name)
    params = ", ".join(list(sig) + [f"{c}: tl.constexpr" for c in constexprs(spec)])
    w.line("@triton.jit")
    with w.block(f"def {name}({params}):"):
        w.line(f'"""{summary}."""')
        w.line("num_pid_m = tl.cdiv(M, BLOCK_M)")
        w.line("num_pid_n = tl.cdiv(N, BLOCK_N)")
        if spec.persistent:
            w.comment("one program per SM walks the tiles; flatten lets the pipeline run across tile boundaries")
            loop = w.block("for pid in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGRAMS, flatten=True):")
            loop.__enter__()
        else:
            w.line("pid = tl.program_id(0)")
        if from_memory:
            w.comment("tiles in row order: each program reads its tile once, there is no operand to share through L2")
            w.line("pid_m = pid // num_pid_n")
            w.line("pid_n = pid % num_pid_n")
        else:
            emit_grouped_order(w)
        w.line("m0 = pid_m * BLOCK_M")
        w.line("n0 = pid_n * BLOCK_N")
        w.line("offs_m = m0 + tl.arange(0, BLOCK_M)")
        if from_memory:
            w.line("rows64 = offs_m.to(tl.int64)")
        else:
            w.line("offs_n = n0 + tl.arange(0, BLOCK_N)")
            _emit_main_loop(w, spec.lowering, spec.tma, spec.promote)
        call_rest = ", ".join(epilogue_args[3:])
        with w.block("if SPLIT_N == 1:"):
            if from_memory:
                _emit_product_tile(w, "acc", "n0", "BLOCK_N")
            w.line(f"{epilogue_name}(acc, m0, n0, {call_rest}, BLOCK_M, BLOCK_N)")
        with w.block("else:"):
            w.comment("finish the tile in two column halves (less register and shared-memory pressure)")
            if from_memory:  # each half read when it is finished: only one is live
                _emit_product_tile(w, "left", "n0", "BLOCK_N // 2")
                w.line(f"{epilogue_name}(left, m0, n0, {call_rest}, BLOCK_M, BLOCK_N // 2)")
                _emit_product_tile(w, "right", "n0 + BLOCK_N // 2", "BLOCK_N // 2")
            else:
                w.line("left, right = tl.split(tl.permute(tl.reshape(acc, [BLOCK_M, 2, BLOCK_N // 2]), [0, 2, 1]))")
                w.line(f"{epilogue_name}(left, m0, n0, {call_rest}, BLOCK_M, BLOCK_N // 2)")
            w.line(f"{epilogue_name}(right, m0, n0 + BLOCK_N // 2, {call_rest}, BLOCK_M, BLOCK_N // 2)")
        if spec.persistent:
            loop.__exit__(None, None, None)
    return KernelSource(
        name=name,
        text=w.text(),
        spec=spec,
        signature=sig,
        constexprs=constexprs(spec),
        options=dict(NO_FUSION),
        descriptor_blocks={"a_desc": ("BLOCK_M", "BLOCK_K"), "b_desc": ("BLOCK_N", "BLOCK_K")} if spec.tma else {},
    )
