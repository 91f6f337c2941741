# RUN: fp4-opt %s -p "quartet-linear{recipe=quartet2}" | filecheck %s --check-prefix=Q2
# RUN: fp4-opt %s -p "quartet-linear{recipe=nvfp4}" | filecheck %s --check-prefix=NV
# RUN: fp4-opt %s -p "quartet-linear{recipe=nvfp4},fuse-bias,fuse-output-cast,dce" | filecheck %s --check-prefix=NVFUSED
# RUN: fp4-opt %s -p "quartet-linear{keep_last=1}" | filecheck %s --check-prefix=KEEP
# RUN: fp4-opt %s -p "quartet-linear{recipe=nvfp4,keep_last=1}" | filecheck %s --check-prefix=NVKEEP
# RUN: not fp4-opt %s -p "quartet-linear{recipe=nvfp4,rotate=false}" 2>&1 | filecheck %s --check-prefix=VARIANT
# RUN: not fp4-opt %s -p "quartet-linear{recipe=mxfp8}" 2>&1 | filecheck %s --check-prefix=BADRECIPE

# Pass: quartet-linear (passes/quartet_linear.py) with the option `recipe` (docs/recipes.md). The layers are
# matched as for Quartet; the NVFP4 recipes rewrite them with their recipe program (fp4.runtime.recipes), so the
# graph composes the oracle's ops: NVFP4 operands are (codes, E4M3 scales, f32[] decode scale), the GEMM is
# fp4::nvfp4_gemm, and there is no clip mask and no inverse rotation. `keep_last` leaves the last layers (forward
# order) in the model dtype.

# quartet2: x and w four-over-six forward; dY, the saved W (dgrad) and the saved X (wgrad) rotated by the 128-point
# transform of sign stream 0 and quantized by MS-EDEN with scale streams 2, 3 (dgrad) and 4, 5 (wgrad), each padded
# to 128 along its contraction dim (N = 32 -> 128, T = 16 -> 128).
# Q2-LABEL: def linear_2d_bias(
# Q2:         [[SEEDS:\b\w+]]: "i64[1]" = torch.ops.fp4.draw_seeds.default(1, torch.device("cpu"))
# Q2-NEXT:    [[SEED:\b\w+]]: "i64[]" = torch.ops.aten.select.int([[SEEDS]], 0, 0)
# Q2-NEXT:    [[QX:\b\w+]]: "(u8[16, 32], u8[16, 4], f32[])" = torch.ops.fp4.four_over_six_quantize.default(primals_3)
# Q2-NEXT:    [[XC:\b\w+]]: "u8[16, 32]" = operator.getitem([[QX]], 0)
# Q2-NEXT:    [[XS:\b\w+]]: "u8[16, 4]" = operator.getitem([[QX]], 1)
# Q2-NEXT:    [[XD:\b\w+]]: "f32[]" = operator.getitem([[QX]], 2)
# Q2-NEXT:    [[QW:\b\w+]]: "(u8[32, 32], u8[32, 4], f32[])" = torch.ops.fp4.four_over_six_quantize.default(primals_1)
# Q2-NEXT:    [[WC:\b\w+]]: "u8[32, 32]" = operator.getitem([[QW]], 0)
# Q2-NEXT:    [[WS:\b\w+]]: "u8[32, 4]" = operator.getitem([[QW]], 1)
# Q2-NEXT:    [[WD:\b\w+]]: "f32[]" = operator.getitem([[QW]], 2)
# Q2-NEXT:    [[Y:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.nvfp4_gemm.default([[XC]], [[XS]], [[XD]], [[WC]], [[WS]], [[WD]], None, 'none', None, None, torch.float32)
# Q2-NEXT:    [[YB:\b\w+]]: "f32[16, 32]" = torch.ops.aten.add.Tensor([[Y]], primals_2)
# Q2-NEXT:    [[OUT:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[YB]], torch.bfloat16)
# Q2-NEXT:    [[G:\b\w+]]: "(u8[16, 64], u8[16, 8], f32[])" = torch.ops.fp4.eden_quantize.default(tangents_1, [[SEED]], 0, 2, False)
# Q2:         [[WT:\b\w+]]: "(u8[64, 64], u8[64, 8], f32[])" = torch.ops.fp4.eden_requantize.default([[WC]], [[WS]], [[WD]], [[SEED]], 0, 3)
# Q2:         [[DX:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, None, 'none', None, None, torch.float32)
# Q2-NEXT:    [[GRADX:\b\w+]]: "bf16[16, 64]" = torch.ops.prims.convert_element_type.default([[DX]], torch.bfloat16)
# Q2-NEXT:    "(u8[32, 64], u8[32, 8], f32[])" = torch.ops.fp4.eden_quantize.default(tangents_1, [[SEED]], 0, 4, True)
# Q2:         "(u8[64, 64], u8[64, 8], f32[])" = torch.ops.fp4.eden_requantize.default([[XC]], [[XS]], [[XD]], [[SEED]], 0, 5)
# Q2:         [[DW:\b\w+]]: "f32[32, 64]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, None, 'none', None, None, torch.float32)
# Q2:         torch.ops.fp4.bias_grad.default(tangents_1, torch.bfloat16)
# Q2-NOT:     aten.mm
# Q2-NOT:     apply_clip_mask
# Q2-NOT:     inverse_rotate
# Q2:         return [[[OUT]], {{\w+}}, {{\w+}}, [[GRADX]]]
# nvfp4: x 1x16 and w 16x16 forward, and X^T (along T, 16-point transform, nearest) saved for the weight gradient;
# dY along N with stochastic rounding (stream 2) against W's 2-D codes transposed (same decode scale); dY^T along T
# with the transform and stochastic rounding (stream 4) against the saved X^T.
# NV-LABEL: def linear_2d_bias(
# NV:         [[SEED:\b\w+]]: "i64[]" = torch.ops.aten.select.int(
# NV-NEXT:    [[QX:\b\w+]]: "(u8[16, 32], u8[16, 4], f32[])" = torch.ops.fp4.nvfp4_quantize.default(primals_3, False, False, None, 0)
# NV:         [[QW:\b\w+]]: "(u8[32, 32], u8[32, 4], f32[])" = torch.ops.fp4.nvfp4_quantize_2d.default(primals_1)
# NV-NEXT:    [[WC:\b\w+]]: "u8[32, 32]" = operator.getitem([[QW]], 0)
# NV-NEXT:    [[WS:\b\w+]]: "u8[32, 4]" = operator.getitem([[QW]], 1)
# NV-NEXT:    [[WD:\b\w+]]: "f32[]" = operator.getitem([[QW]], 2)
# NV-NEXT:    [[QXT:\b\w+]]: "(u8[64, 8], u8[64, 1], f32[])" = torch.ops.fp4.nvfp4_quantize.default(primals_3, True, True, None, 0)
# NV-NEXT:    [[XTC:\b\w+]]: "u8[64, 8]" = operator.getitem([[QXT]], 0)
# NV-NEXT:    [[XTS:\b\w+]]: "u8[64, 1]" = operator.getitem([[QXT]], 1)
# NV-NEXT:    [[XTD:\b\w+]]: "f32[]" = operator.getitem([[QXT]], 2)
# NV-NEXT:    "f32[16, 32]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, [[WC]], [[WS]], [[WD]], None, 'none', None, None, torch.float32)
# NV:         [[G:\b\w+]]: "(u8[16, 16], u8[16, 2], f32[])" = torch.ops.fp4.nvfp4_quantize.default(tangents_1, False, False, [[SEED]], 2)
# NV:         [[WT:\b\w+]]: "(u8[64, 16], u8[64, 2])" = torch.ops.fp4.nvfp4_transpose_2d.default([[WC]], [[WS]])
# NV-NEXT:    [[WTC:\b\w+]]: "u8[64, 16]" = operator.getitem([[WT]], 0)
# NV-NEXT:    [[WTS:\b\w+]]: "u8[64, 2]" = operator.getitem([[WT]], 1)
# NV-NEXT:    "f32[16, 64]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, [[WTC]], [[WTS]], [[WD]], None, 'none', None, None, torch.float32)
# NV:         "(u8[32, 8], u8[32, 1], f32[])" = torch.ops.fp4.nvfp4_quantize.default(tangents_1, True, True, [[SEED]], 4)
# NV:         "f32[32, 64]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, [[XTC]], [[XTS]], [[XTD]], None, 'none', None, None, torch.float32)
# NV-NOT:     aten.mm
# NV:         return
# The fusion passes fold into fp4::nvfp4_gemm as into fp4::mxfp4_gemm: the bias and the bf16 output forward, the
# bf16 output backward.
# NVFUSED-LABEL: def linear_2d_bias(
# NVFUSED:         "bf16[16, 32]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, primals_2, 'none', None, None, torch.bfloat16)
# NVFUSED:         "bf16[16, 64]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, None, 'none', None, None, torch.bfloat16)
# NVFUSED:         "bf16[32, 64]" = torch.ops.fp4.nvfp4_gemm.default({{.*}}, None, 'none', None, None, torch.bfloat16)
# NVFUSED-NOT:     aten.add
# NVFUSED-NOT:     convert_element_type
# NVFUSED:         return
# KEEP-LABEL: def linear_2d_bias(
# KEEP-NOT:     fp4.
# KEEP:         torch.ops.aten.addmm.default(primals_2, primals_3, t)
# KEEP:         return
# NVKEEP-LABEL: def linear_2d_bias(
# NVKEEP-NOT:     fp4.
# NVKEEP:         return
def linear_2d_bias(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[32]",
    primals_3: "bf16[16, 64]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_2, primals_3, t)
    t_1: "bf16[32, 64]" = torch.ops.aten.t.default(t)
    mm: "bf16[16, 64]" = torch.ops.aten.mm.default(tangents_1, t_1)
    t_2: "bf16[32, 16]" = torch.ops.aten.t.default(tangents_1)
    mm_1: "bf16[32, 64]" = torch.ops.aten.mm.default(t_2, primals_3)
    t_3: "bf16[64, 32]" = torch.ops.aten.t.default(mm_1)
    sum_1: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
    view: "bf16[32]" = torch.ops.aten.view.default(sum_1, [32])
    t_4: "bf16[32, 64]" = torch.ops.aten.t.default(t_3)
    return [addmm, t_4, view, mm]

# K = 48: not a multiple of Quartet's 32-block (skipped by the quartet recipe), a multiple of NVFP4's 16-block.
# Q2-LABEL: def k_multiple_of_16(
# Q2:         torch.ops.fp4.four_over_six_quantize.default(primals_3)
# Q2:         "f32[16, 48]" = torch.ops.fp4.nvfp4_gemm.default(
# Q2-NOT:     aten.mm
# Q2:         return
# KEEP-LABEL: def k_multiple_of_16(
# KEEP-NOT:     fp4.
# KEEP:         return
def k_multiple_of_16(
    primals_1: "bf16[32, 48]",
    primals_2: "bf16[32]",
    primals_3: "bf16[16, 48]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[48, 32]" = torch.ops.aten.t.default(primals_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_2, primals_3, t)
    t_1: "bf16[32, 48]" = torch.ops.aten.t.default(t)
    mm: "bf16[16, 48]" = torch.ops.aten.mm.default(tangents_1, t_1)
    t_2: "bf16[32, 16]" = torch.ops.aten.t.default(tangents_1)
    mm_1: "bf16[32, 48]" = torch.ops.aten.mm.default(t_2, primals_3)
    t_3: "bf16[48, 32]" = torch.ops.aten.t.default(mm_1)
    sum_1: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
    view: "bf16[32]" = torch.ops.aten.view.default(sum_1, [32])
    t_4: "bf16[32, 48]" = torch.ops.aten.t.default(t_3)
    return [addmm, t_4, view, mm]

# Two layers back to back: `keep_last=1` keeps the second (last in forward order) in the model dtype and rewrites
# the first; one seed is drawn, for the rewritten layer.
# KEEP-LABEL: def back_to_back_2d(
# KEEP:         torch.ops.fp4.draw_seeds.default(1, torch.device("cpu"))
# KEEP:         torch.ops.fp4.quest_quantize.default(primals_3, True)
# KEEP:         [[Y1:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default({{\w+}}, torch.bfloat16)
# KEEP:         torch.ops.aten.addmm.default(primals_5, [[Y1]], t_1)
# KEEP-NOT:     quest_quantize.default([[Y1]]
# KEEP:         return
# NVKEEP-LABEL: def back_to_back_2d(
# NVKEEP:         torch.ops.fp4.nvfp4_quantize.default(primals_3, False, False, None, 0)
# NVKEEP:         [[Y1:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default({{\w+}}, torch.bfloat16)
# NVKEEP:         torch.ops.aten.addmm.default(primals_5, [[Y1]], t_1)
# NVKEEP:         return
def back_to_back_2d(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[32]",
    primals_3: "bf16[16, 64]",
    primals_4: "bf16[32, 32]",
    primals_5: "bf16[32]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_2, primals_3, t)
    t_1: "bf16[32, 32]" = torch.ops.aten.t.default(primals_4)
    addmm_1: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_5, addmm, t_1)
    t_2: "bf16[32, 32]" = torch.ops.aten.t.default(t_1)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(tangents_1, t_2)
    t_3: "bf16[32, 16]" = torch.ops.aten.t.default(tangents_1)
    mm_1: "bf16[32, 32]" = torch.ops.aten.mm.default(t_3, addmm)
    t_4: "bf16[32, 32]" = torch.ops.aten.t.default(mm_1)
    sum_1: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
    view: "bf16[32]" = torch.ops.aten.view.default(sum_1, [32])
    t_5: "bf16[32, 32]" = torch.ops.aten.t.default(t_4)
    t_6: "bf16[32, 64]" = torch.ops.aten.t.default(t)
    mm_2: "bf16[16, 64]" = torch.ops.aten.mm.default(mm, t_6)
    t_7: "bf16[32, 16]" = torch.ops.aten.t.default(mm)
    mm_3: "bf16[32, 64]" = torch.ops.aten.mm.default(t_7, primals_3)
    t_8: "bf16[64, 32]" = torch.ops.aten.t.default(mm_3)
    sum_2: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(mm, [0], True)
    view_1: "bf16[32]" = torch.ops.aten.view.default(sum_2, [32])
    t_9: "bf16[32, 64]" = torch.ops.aten.t.default(t_8)
    return [addmm_1, t_9, view_1, mm_2, t_5, view]

# GPT-2's Conv1D under a recipe: addmm(b, x, w) with w [K, N]. The layer's [N, K] weight is t(w), inserted right
# before the weight's quantizer (after x's), and its weight-grad GEMM comes out transposed, as w's gradient.
# NV-LABEL: def conv1d_transposed_weight(
# NV:         torch.ops.fp4.nvfp4_quantize.default(view, False, False, None, 0)
# NV:         [[W:\b\w+]]: "bf16[32, 64]" = torch.ops.aten.permute.default(primals_1, [1, 0])
# NV-NEXT:    torch.ops.fp4.nvfp4_quantize_2d.default([[W]])
# NV:         [[DW:\b\w+]]: "bf16[32, 64]" = torch.ops.prims.convert_element_type.default(
# NV-NEXT:    [[DWT:\b\w+]]: "bf16[64, 32]" = torch.ops.aten.permute.default([[DW]], [1, 0])
# NV-NOT:     aten.mm
# NV:         return [{{\w+}}, [[DWT]], {{\w+}}, {{\w+}}]
def conv1d_transposed_weight(
    primals_1: "bf16[64, 32]",
    primals_2: "bf16[32]",
    primals_3: "bf16[2, 8, 64]",
    tangents_1: "bf16[2, 8, 32]",
):
    view: "bf16[16, 64]" = torch.ops.aten.view.default(primals_3, [16, 64])
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_2, view, primals_1)
    view_1: "bf16[2, 8, 32]" = torch.ops.aten.view.default(addmm, [2, 8, 32])
    view_2: "bf16[16, 32]" = torch.ops.aten.view.default(tangents_1, [16, 32])
    t: "bf16[32, 64]" = torch.ops.aten.t.default(primals_1)
    mm: "bf16[16, 64]" = torch.ops.aten.mm.default(view_2, t)
    t_1: "bf16[64, 16]" = torch.ops.aten.t.default(view)
    mm_1: "bf16[64, 32]" = torch.ops.aten.mm.default(t_1, view_2)
    sum_1: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(view_2, [0], True)
    view_3: "bf16[32]" = torch.ops.aten.view.default(sum_1, [32])
    view_4: "bf16[2, 8, 64]" = torch.ops.aten.view.default(mm, [2, 8, 64])
    return [view_1, mm_1, view_3, view_4]

# A forward-only graph (inference): no seeds, and the weight-gradient operand X^T of the nvfp4 recipe is not computed.
# NV-LABEL: def forward_only(
# NV-NOT:     draw_seeds
# NV:         torch.ops.fp4.nvfp4_quantize.default(view, False, False, None, 0)
# NV-NOT:     nvfp4_quantize.default(view, True
# NV:         torch.ops.fp4.nvfp4_gemm.default(
# NV:         return
# Q2-LABEL: def forward_only(
# Q2-NOT:     draw_seeds
# Q2:         torch.ops.fp4.four_over_six_quantize.default(view)
# Q2:         torch.ops.fp4.nvfp4_gemm.default(
# Q2-NOT:     eden
# Q2:         return
def forward_only(arg0_1: "bf16[32, 64]", arg1_1: "bf16[32]", arg2_1: "bf16[2, 8, 64]"):
    view: "bf16[16, 64]" = torch.ops.aten.view.default(arg2_1, [16, 64])
    t: "bf16[64, 32]" = torch.ops.aten.t.default(arg0_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(arg1_1, view, t)
    view_1: "bf16[2, 8, 32]" = torch.ops.aten.view.default(addmm, [2, 8, 32])
    return (view_1,)

# The quartet variants do not combine with another recipe; an unknown recipe is refused with the list.
# VARIANT: fp4-opt: error: {{.*}}quartet-linear: rotate=False, rounding='sr' are variants of the quartet recipe; recipe 'nvfp4' defines its own rotations and rounding
# BADRECIPE: fp4-opt: error: pass 'quartet-linear': option recipe='mxfp8' is not valid; it takes one of quartet, quartet2, nvfp4
