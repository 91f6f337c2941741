# RUN: fp4-opt %s -p fuse-clip-mask | filecheck %s

# Pass: fuse-clip-mask (passes/fuse_clip_mask.py). Folds the backward's straight-through clip mask
# (fp4::apply_clip_mask on the float32 GEMM result) into the GEMM's clip_mask argument.

# An input-grad GEMM as quartet-linear emits it: the mask goes in, the rotation and the cast stay.
# CHECK-LABEL: def input_grad(
# CHECK-NEXT:    [[G:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, mask, False, torch.float32)
# CHECK-NEXT:    [[R:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.inverse_rotate.default([[G]])
# CHECK-NEXT:    torch.ops.prims.convert_element_type.default([[R]], torch.bfloat16)
def input_grad(g: "u8[16, 16]", sg: "u8[16, 1]", w: "u8[64, 16]", sw: "u8[64, 1]", mask: "u8[16, 8]"):
    gemm: "f32[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, None, False, torch.float32)
    masked: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default(gemm, mask)
    rotated: "f32[16, 64]" = torch.ops.fp4.inverse_rotate.default(masked)
    cast: "bf16[16, 64]" = torch.ops.prims.convert_element_type.default(rotated, torch.bfloat16)
    return (cast,)

# The rotation is already folded: the mask comes before it in the epilogue, so it cannot follow. Unchanged.
# CHECK-LABEL: def after_rotation(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, None, True, torch.float32)
# CHECK-NEXT:    torch.ops.fp4.apply_clip_mask.default
def after_rotation(g: "u8[16, 16]", sg: "u8[16, 1]", w: "u8[64, 16]", sw: "u8[64, 1]", mask: "u8[16, 8]"):
    gemm: "f32[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, None, True, torch.float32)
    masked: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default(gemm, mask)
    return (masked,)

# A mask applied to something else than a GEMM result: unchanged.
# CHECK-LABEL: def not_a_gemm(
# CHECK-NEXT:    torch.ops.fp4.apply_clip_mask.default(x, mask)
def not_a_gemm(x: "f32[16, 64]", mask: "u8[16, 8]"):
    masked: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default(x, mask)
    return (masked,)

# The NVFP4 recipes' GEMM has no clip-mask step (their backward is straight-through): a mask after it stays.
# CHECK-LABEL: def nvfp4_has_no_mask(
# CHECK:         torch.ops.fp4.nvfp4_gemm.default(g, sg, dg, w, sw, dw, None, 'none', None, None, torch.float32)
# CHECK-NEXT:    torch.ops.fp4.apply_clip_mask.default
def nvfp4_has_no_mask(g: "u8[16, 16]", sg: "u8[16, 2]", dg: "f32[]", w: "u8[64, 16]", sw: "u8[64, 2]", dw: "f32[]", mask: "u8[16, 8]"):
    gemm: "f32[16, 64]" = torch.ops.fp4.nvfp4_gemm.default(g, sg, dg, w, sw, dw, None, 'none', None, None, torch.float32)
    masked: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default(gemm, mask)
    return (masked,)
