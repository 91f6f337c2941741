# RUN: fp4-opt %s -p fuse-inverse-rotation | filecheck %s
# RUN: fp4-opt %s -p fuse-clip-mask,fuse-inverse-rotation | filecheck %s --check-prefix=BOTH

# Pass: fuse-inverse-rotation (passes/fuse_inverse_rotation.py). Folds fp4::inverse_rotate of the float32
# GEMM result (undoing the forward's Hadamard rotation along K) into the GEMM's inverse_rotate flag.

# A weight-grad GEMM whose mask is folded already: the rotation follows it into the epilogue.
# CHECK-LABEL: def weight_grad(
# CHECK-NEXT:    [[G:\b\w+]]: "f32[32, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, x, sx, 0.1111111111111111, None, 'none', None, None, mask, True, torch.float32)
# CHECK-NEXT:    torch.ops.prims.convert_element_type.default([[G]], torch.bfloat16)
def weight_grad(g: "u8[32, 16]", sg: "u8[32, 1]", x: "u8[64, 16]", sx: "u8[64, 1]", mask: "u8[32, 8]"):
    gemm: "f32[32, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, x, sx, 0.1111111111111111, None, 'none', None, None, mask, False, torch.float32)
    rotated: "f32[32, 64]" = torch.ops.fp4.inverse_rotate.default(gemm)
    cast: "bf16[32, 64]" = torch.ops.prims.convert_element_type.default(rotated, torch.bfloat16)
    return (cast,)

# Mask, then rotation, as quartet-linear emits them: this pass alone cannot reach past the mask;
# after fuse-clip-mask both are folded.
# CHECK-LABEL: def mask_then_rotation(
# CHECK:         torch.ops.fp4.apply_clip_mask.default
# CHECK-NEXT:    torch.ops.fp4.inverse_rotate.default
# BOTH-LABEL: def mask_then_rotation(
# BOTH-NEXT:     [[G:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, mask, True, torch.float32)
# BOTH-NEXT:     return ([[G]],)
def mask_then_rotation(g: "u8[16, 16]", sg: "u8[16, 1]", w: "u8[64, 16]", sw: "u8[64, 1]", mask: "u8[16, 8]"):
    gemm: "f32[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, None, False, torch.float32)
    masked: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default(gemm, mask)
    rotated: "f32[16, 64]" = torch.ops.fp4.inverse_rotate.default(masked)
    return (rotated,)

# The cast to bf16 is folded already: the rotation must act on the float32 accumulator. Unchanged.
# CHECK-LABEL: def after_cast(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, None, False, torch.bfloat16)
# CHECK-NEXT:    torch.ops.fp4.inverse_rotate.default
def after_cast(g: "u8[16, 16]", sg: "u8[16, 1]", w: "u8[64, 16]", sw: "u8[64, 1]"):
    gemm: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, None, False, torch.bfloat16)
    rotated: "f32[16, 64]" = torch.ops.fp4.inverse_rotate.default(gemm)
    return (rotated,)
