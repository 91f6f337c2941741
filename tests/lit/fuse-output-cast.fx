# RUN: fp4-opt %s -p fuse-output-cast | filecheck %s

# Pass: fuse-output-cast (passes/fuse_output_cast.py). Folds the cast of a float32 GEMM result to the model
# dtype into the GEMM's out_dtype (the reference rounds the accumulator to out_dtype once, as the cast does).

# CHECK-LABEL: def cast_to_bf16(
# CHECK-NEXT:    [[G:\b\w+]]: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.bfloat16)
# CHECK-NEXT:    return ([[G]],)
def cast_to_bf16(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]", bias: "bf16[32]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.float32)
    cast: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default(gemm, torch.bfloat16)
    return (cast,)

# An _to_copy cast through a view (a cast commutes with views): the view now reads the bf16 result.
# CHECK-LABEL: def through_view(
# CHECK-NEXT:    [[G:\b\w+]]: "f16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float16)
# CHECK-NEXT:    [[V:\b\w+]]: "f16[2, 8, 32]" = torch.ops.aten.view.default([[G]], [2, 8, 32])
# CHECK-NEXT:    return ([[V]],)
def through_view(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    view: "f32[2, 8, 32]" = torch.ops.aten.view.default(gemm, [2, 8, 32])
    cast: "f16[2, 8, 32]" = torch.ops.aten._to_copy.default(view, dtype=torch.float16)
    return (cast,)

# The float32 result is needed too: unchanged.
# CHECK-LABEL: def float32_also_used(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
# CHECK-NEXT:    torch.ops.prims.convert_element_type.default
def float32_also_used(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    cast: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default(gemm, torch.bfloat16)
    return (cast, gemm)

# A cast to an integer type is not an output rounding: unchanged.
# CHECK-LABEL: def integer_cast(
# CHECK:         torch.ops.prims.convert_element_type.default({{\w+}}, torch.int32)
def integer_cast(a: "u8[16, 32]", sa: "u8[16, 2]", b: "u8[32, 32]", sb: "u8[32, 2]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    cast: "i32[16, 32]" = torch.ops.prims.convert_element_type.default(gemm, torch.int32)
    return (cast,)

# The NVFP4 recipes' GEMM rounds to its out_dtype once, as fp4::mxfp4_gemm does.
# CHECK-LABEL: def nvfp4_cast(
# CHECK-NEXT:    [[Y:\b\w+]]: "bf16[16, 32]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, b, sb, db, None, 'none', None, None, torch.bfloat16)
# CHECK-NEXT:    return ([[Y]],)
def nvfp4_cast(a: "u8[16, 32]", sa: "u8[16, 4]", da: "f32[]", b: "u8[32, 32]", sb: "u8[32, 4]", db: "f32[]"):
    gemm: "f32[16, 32]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, b, sb, db, None, 'none', None, None, torch.float32)
    cast: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default(gemm, torch.bfloat16)
    return (cast,)
