# RUN: fp4-opt %s -p fuse-residual | filecheck %s

# Pass: fuse-residual (passes/fuse_residual.py). Folds a residual add `h + x W^T` into the GEMM's epilogue
# (residual argument): out = out_dtype(acc) + residual, the eager add on the rounded result.

# A decoder block's o_proj in a joint graph, 3-D: the add's backward needs neither operand, so it folds;
# the residual stream is viewed to [T, N].
# CHECK-LABEL: def residual_3d(
# CHECK-NEXT:    [[FLAT:\b\w+]]: "bf16[16, 64]" = torch.ops.aten.view.default(hidden, [-1, 64])
# CHECK-NEXT:    [[G:\b\w+]]: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, w, sw, 1.0, None, 'none', None, [[FLAT]], None, False, torch.bfloat16)
# CHECK-NEXT:    [[V:\b\w+]]: "bf16[2, 8, 64]" = torch.ops.aten._unsafe_view.default([[G]], [2, 8, 64])
# CHECK-NEXT:    return ([[V]],)
def residual_3d(a: "u8[16, 32]", sa: "u8[16, 2]", w: "u8[64, 32]", sw: "u8[64, 2]", hidden: "bf16[2, 8, 64]"):
    gemm: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, w, sw, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    view: "bf16[2, 8, 64]" = torch.ops.aten._unsafe_view.default(gemm, [2, 8, 64])
    add: "bf16[2, 8, 64]" = torch.ops.aten.add.Tensor(hidden, view)
    return (add,)

# In a backward: the input gradient of a layer plus the gradient flowing around it (2-D, no view).
# CHECK-LABEL: def gradient_sum(
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, around, mask, True, torch.bfloat16)
# CHECK-NEXT:    return
def gradient_sum(g: "u8[16, 16]", sg: "u8[16, 1]", w: "u8[64, 16]", sw: "u8[64, 1]", mask: "u8[16, 8]", around: "bf16[16, 64]"):
    gemm: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(g, sg, w, sw, 0.1111111111111111, None, 'none', None, None, mask, True, torch.bfloat16)
    add: "bf16[16, 64]" = torch.ops.aten.add.Tensor(gemm, around)
    return (add,)

# add with alpha != 1 scales the other operand: not a residual add. Unchanged.
# CHECK-LABEL: def scaled_add(
# CHECK:         torch.ops.aten.add.Tensor(gemm, other, alpha=2)
def scaled_add(a: "u8[16, 32]", sa: "u8[16, 2]", w: "u8[64, 32]", sw: "u8[64, 2]", other: "bf16[16, 64]"):
    gemm: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, w, sw, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    add: "bf16[16, 64]" = torch.ops.aten.add.Tensor(gemm, other, alpha=2)
    return (add,)

# A non-contiguous residual (a transpose) cannot be viewed to [T, N]: unchanged.
# CHECK-LABEL: def non_contiguous_residual(
# CHECK:         torch.ops.aten.add.Tensor(view, hidden_t)
def non_contiguous_residual(a: "u8[16, 32]", sa: "u8[16, 2]", w: "u8[64, 32]", sw: "u8[64, 2]", hidden: "bf16[8, 2, 64]"):
    hidden_t: "bf16[2, 8, 64]" = torch.ops.aten.transpose.int(hidden, 0, 1)
    gemm: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, w, sw, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    view: "bf16[2, 8, 64]" = torch.ops.aten.view.default(gemm, [2, 8, 64])
    add: "bf16[2, 8, 64]" = torch.ops.aten.add.Tensor(view, hidden_t)
    return (add,)

# The NVFP4 recipes' GEMM takes a residual add the same way.
# CHECK-LABEL: def nvfp4_residual(
# CHECK:         [[G:\b\w+]]: "bf16[16, 64]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, w, sw, dw, None, 'none', None, hidden, torch.bfloat16)
# CHECK-NEXT:    return ([[G]],)
def nvfp4_residual(a: "u8[16, 32]", sa: "u8[16, 4]", da: "f32[]", w: "u8[64, 32]", sw: "u8[64, 4]", dw: "f32[]", hidden: "bf16[16, 64]"):
    gemm: "bf16[16, 64]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, w, sw, dw, None, 'none', None, None, torch.bfloat16)
    add: "bf16[16, 64]" = torch.ops.aten.add.Tensor(hidden, gemm)
    return (add,)
