# RUN: fp4-opt %s -p fuse-activation | filecheck %s

# Pass: fuse-activation (passes/fuse_activation.py). Folds SiLU / GELU / ReLU applied to a GEMM's
# out_dtype result into the GEMM's activation (the reference applies the same eager op to that result).

# An inference MLP's up projection: GELU folds in; the view to 3-D now carries the activated result.
# CHECK-LABEL: def gelu_through_view(
# CHECK-NEXT:    [[G:\b\w+]]: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, bias, 'gelu', None, None, None, False, torch.bfloat16)
# CHECK-NEXT:    [[V:\b\w+]]: "bf16[2, 8, 128]" = torch.ops.aten.view.default([[G]], [2, 8, 128])
# CHECK-NEXT:    return ([[V]],)
def gelu_through_view(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[128, 32]", sb: "u8[128, 2]", bias: "bf16[128]"):
    gemm: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.bfloat16)
    view: "bf16[2, 8, 128]" = torch.ops.aten.view.default(gemm, [2, 8, 128])
    gelu: "bf16[2, 8, 128]" = torch.ops.aten.gelu.default(view)
    return (gelu,)

# SiLU and tanh-approximated GELU have their own epilogue names.
# CHECK-LABEL: def silu_and_gelu_tanh(
# CHECK-NEXT:    torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'silu', None, None, None, False, torch.bfloat16)
# CHECK-NEXT:    torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'gelu_tanh', None, None, None, False, torch.bfloat16)
# CHECK-NOT:     aten.silu
# CHECK-NOT:     aten.gelu
def silu_and_gelu_tanh(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[128, 32]", sb: "u8[128, 2]"):
    gemm: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    gemm_1: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    silu: "bf16[16, 128]" = torch.ops.aten.silu.default(gemm)
    gelu: "bf16[16, 128]" = torch.ops.aten.gelu.default(gemm_1, approximate='tanh')
    return (silu, gelu)

# Training: the backward reads the pre-activation (silu_backward), so the GEMM must keep it. Unchanged.
# CHECK-LABEL: def needed_by_backward(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none',
# CHECK-NEXT:    torch.ops.aten.silu.default
def needed_by_backward(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[128, 32]", sb: "u8[128, 2]", tangent: "bf16[16, 128]"):
    gemm: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    silu: "bf16[16, 128]" = torch.ops.aten.silu.default(gemm)
    silu_backward: "bf16[16, 128]" = torch.ops.aten.silu_backward.default(tangent, gemm)
    return (silu, silu_backward)

# A float32 result not yet cast: the activation must act on the rounded out_dtype value, so the cast
# has to be folded first (fuse-output-cast). Unchanged here.
# CHECK-LABEL: def before_cast(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
# CHECK-NEXT:    torch.ops.prims.convert_element_type.default
# CHECK-NEXT:    torch.ops.aten.relu.default
def before_cast(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[128, 32]", sb: "u8[128, 2]"):
    gemm: "f32[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    cast: "bf16[16, 128]" = torch.ops.prims.convert_element_type.default(gemm, torch.bfloat16)
    relu: "bf16[16, 128]" = torch.ops.aten.relu.default(cast)
    return (relu,)

# The NVFP4 recipes' GEMM takes the activation the same way.
# CHECK-LABEL: def nvfp4_silu(
# CHECK-NEXT:    [[G:\b\w+]]: "bf16[16, 128]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, b, sb, db, None, 'silu', None, None, torch.bfloat16)
# CHECK-NEXT:    return ([[G]],)
def nvfp4_silu(a: "u8[16, 32]", sa: "u8[16, 4]", da: "f32[]", b: "u8[128, 32]", sb: "u8[128, 4]", db: "f32[]"):
    gemm: "bf16[16, 128]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, b, sb, db, None, 'none', None, None, torch.bfloat16)
    silu: "bf16[16, 128]" = torch.ops.aten.silu.default(gemm)
    return (silu,)
