# RUN: fp4-opt %s -p fuse-bias | filecheck %s

# Pass: fuse-bias (passes/fuse_bias.py). Folds `float32 GEMM result + bias[N]` into the GEMM's bias
# (exact: the reference adds bias.float() to the float32 accumulator).

# The forward of a linear layer with bias as quartet-linear emits it: the add goes into the GEMM.
# CHECK-LABEL: def bias_add(
# CHECK-NEXT:    [[Y:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.float32)
# CHECK-NEXT:    [[C:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[Y]], torch.bfloat16)
# CHECK-NEXT:    return ([[C]],)
def bias_add(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]", bias: "bf16[32]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    add: "f32[16, 32]" = torch.ops.aten.add.Tensor(gemm, bias)
    cast: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default(add, torch.bfloat16)
    return (cast,)

# bias + gemm is the same sum.
# CHECK-LABEL: def bias_first(
# CHECK-NEXT:    torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.float32)
# CHECK-NOT:     aten.add
def bias_first(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]", bias: "f32[32]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    add: "f32[16, 32]" = torch.ops.aten.add.Tensor(bias, gemm)
    return (add,)

# A full-shape addend is not a bias (it would be a residual, added after the cast): unchanged.
# CHECK-LABEL: def not_a_vector(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None,
# CHECK-NEXT:    torch.ops.aten.add.Tensor
def not_a_vector(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]", other: "f32[16, 32]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    add: "f32[16, 32]" = torch.ops.aten.add.Tensor(gemm, other)
    return (add,)

# The GEMM result is also returned (another user needs it without the bias): unchanged.
# CHECK-LABEL: def two_users(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None,
# CHECK-NEXT:    torch.ops.aten.add.Tensor
def two_users(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]", bias: "bf16[32]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    add: "f32[16, 32]" = torch.ops.aten.add.Tensor(gemm, bias)
    return (add, gemm)

# The cast to bf16 is already folded: a bias added after the rounding is not the GEMM's bias. Unchanged.
# CHECK-LABEL: def after_cast(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
# CHECK-NEXT:    torch.ops.aten.add.Tensor
def after_cast(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]", bias: "bf16[32]"):
    gemm: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    add: "bf16[16, 32]" = torch.ops.aten.add.Tensor(gemm, bias)
    return (add,)

# The NVFP4 recipes' GEMM (fp4::nvfp4_gemm, tensor scales in place of alpha) takes its bias the same way.
# CHECK-LABEL: def nvfp4_bias_add(
# CHECK:         [[Y:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, b, sb, db, bias, 'none', None, None, torch.float32)
# CHECK-NEXT:    [[C:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[Y]], torch.bfloat16)
# CHECK-NEXT:    return ([[C]],)
def nvfp4_bias_add(a: "u8[16, 32]", sa: "u8[16, 4]", da: "f32[]", b: "u8[32, 32]", sb: "u8[32, 4]", db: "f32[]", bias: "bf16[32]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, b, sb, db, None, 'none', None, None, torch.float32)
    add: "f32[16, 32]" = torch.ops.aten.add.Tensor(gemm, bias)
    cast: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default(add, torch.bfloat16)
    return (cast,)
