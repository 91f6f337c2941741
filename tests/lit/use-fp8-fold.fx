# RUN: fp4-opt %s -p use-fp8-fold --target sm_90 | filecheck %s
# RUN: fp4-opt %s -p use-fp8-fold --target sm_100 | filecheck %s --check-prefix=OTHER
# RUN: fp4-opt %s -p use-fp8-fold --target cpu | filecheck %s --check-prefix=OTHER
# RUN: fp4-opt %s -p 'use-fp8-fold{backward=true}' --target sm_90 | filecheck %s --check-prefix=BACKWARD

# Pass: use-fp8-fold (passes/use_fp8_fold.py). On Hopper (sm_90, GEMMs lowered to the FP8 fold) a forward
# mxfp4_gemm of two quest_quantize results becomes fp8_fold_gemm on the fold that quest_quantize_fold writes
# with the codes; the codes, scales and masks stay for the backward, whose GEMMs stay mxfp4_gemm.  On any
# other target the pass changes nothing.

# One linear layer with bias, as quartet-linear and the fusion passes leave it (joint graph).  Both forward
# quantizers become quest_quantize_fold, the forward GEMM fp8_fold_gemm with the same bias/epilogue/out dtype;
# the backward reads the same codes, scales and masks (getitems 0-2) and keeps its mxfp4_gemm.
# CHECK-LABEL: def joint_linear(
# CHECK:         [[QX:\b\w+]]: "(u8[16, 32], u8[16, 2], u8[16, 8], f8e4m3[16, 64], f32[16])" = torch.ops.fp4.quest_quantize_fold.default(primals_3, True)
# CHECK-NEXT:    [[XC:\b\w+]]: "u8[16, 32]" = operator.getitem([[QX]], 0)
# CHECK-NEXT:    [[XS:\b\w+]]: "u8[16, 2]" = operator.getitem([[QX]], 1)
# CHECK-NEXT:    [[XM:\b\w+]]: "u8[16, 8]" = operator.getitem([[QX]], 2)
# CHECK-NEXT:    [[XF:\b\w+]]: "f8e4m3[16, 64]" = operator.getitem([[QX]], 3)
# CHECK-NEXT:    [[XR:\b\w+]]: "f32[16]" = operator.getitem([[QX]], 4)
# CHECK-NEXT:    [[QW:\b\w+]]: "(u8[32, 32], u8[32, 2], u8[32, 8], f8e4m3[32, 64], f32[32])" = torch.ops.fp4.quest_quantize_fold.default(primals_1, True)
# CHECK-NEXT:    [[WC:\b\w+]]: "u8[32, 32]" = operator.getitem([[QW]], 0)
# CHECK-NEXT:    [[WS:\b\w+]]: "u8[32, 2]" = operator.getitem([[QW]], 1)
# CHECK-NEXT:    [[WM:\b\w+]]: "u8[32, 8]" = operator.getitem([[QW]], 2)
# CHECK-NEXT:    [[WF:\b\w+]]: "f8e4m3[32, 64]" = operator.getitem([[QW]], 3)
# CHECK-NEXT:    [[WR:\b\w+]]: "f32[32]" = operator.getitem([[QW]], 4)
# CHECK-NEXT:    [[Y:\b\w+]]: "bf16[16, 32]" = torch.ops.fp4.fp8_fold_gemm.default([[XF]], [[XR]], [[WF]], [[WR]], 1.0, primals_2, 'none', None, None, None, False, torch.bfloat16)
# CHECK:         torch.ops.fp4.requantize_sr.default([[WC]], [[WS]],
# CHECK:         torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, [[XM]], True, torch.bfloat16)
# CHECK:         torch.ops.fp4.requantize_sr.default([[XC]], [[XS]],
# CHECK:         torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, [[WM]], True, torch.bfloat16)
# CHECK-NOT:     fp4.fp8_fold_gemm
# CHECK-NOT:     fp4.quest_quantize.default
# CHECK:         return [[[Y]],
# With backward=true the input-grad GEMM's quantizers (sr_quantize of dY, requantize_sr of W) write the fold
# too and its GEMM runs on it; the weight-grad GEMM's dY quantizer is fused with the bias gradient, which has no
# fold variant, so that GEMM and its requantize stay MXFP4.
# BACKWARD-LABEL: def joint_linear(
# BACKWARD:         torch.ops.fp4.fp8_fold_gemm.default({{.*}}, 1.0, primals_2, 'none', None, None, None, False, torch.bfloat16)
# BACKWARD:         [[G:\b\w+]]: "(u8[16, 16], u8[16, 1], f8e4m3[16, 32], f32[16])" = torch.ops.fp4.sr_quantize_fold.default(tangents_1, select_int, 0, 2, False)
# BACKWARD-DAG:     [[GF:\b\w+]]: "f8e4m3[16, 32]" = operator.getitem([[G]], 2)
# BACKWARD-DAG:     [[GR:\b\w+]]: "f32[16]" = operator.getitem([[G]], 3)
# BACKWARD:         [[R:\b\w+]]: "(u8[64, 16], u8[64, 1], f8e4m3[64, 32], f32[64])" = torch.ops.fp4.requantize_sr_fold.default({{\w+}}, {{\w+}}, select_int, 0, 3)
# BACKWARD-DAG:     [[RF:\b\w+]]: "f8e4m3[64, 32]" = operator.getitem([[R]], 2)
# BACKWARD-DAG:     [[RR:\b\w+]]: "f32[64]" = operator.getitem([[R]], 3)
# BACKWARD:         torch.ops.fp4.fp8_fold_gemm.default([[GF]], [[GR]], [[RF]], [[RR]], 0.1111111111111111, None, 'none', None, None, {{\w+}}, True, torch.bfloat16)
# BACKWARD:         torch.ops.fp4.sr_quantize_with_bias_grad.default(
# BACKWARD:         torch.ops.fp4.requantize_sr.default(
# BACKWARD:         torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, {{\w+}}, True, torch.bfloat16)
# BACKWARD:         return
# OTHER-LABEL: def joint_linear(
# OTHER-NOT:     {{quest_quantize_fold|fp8_fold_gemm}}
# OTHER:         torch.ops.fp4.quest_quantize.default(primals_3, True)
# OTHER:         torch.ops.fp4.quest_quantize.default(primals_1, True)
# OTHER:         torch.ops.fp4.mxfp4_gemm.default({{.*}}, 1.0, primals_2, 'none', None, None, None, False, torch.bfloat16)
# OTHER-NOT:     {{quest_quantize_fold|fp8_fold_gemm}}
# OTHER:         return
def joint_linear(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[32]",
    primals_3: "bf16[16, 64]",
    tangents_1: "bf16[16, 32]",
):
    draw_seeds_default: "i64[1]" = torch.ops.fp4.draw_seeds.default(1, torch.device("cpu"))
    select_int: "i64[]" = torch.ops.aten.select.int(draw_seeds_default, 0, 0)
    quest_quantize_default: "(u8[16, 32], u8[16, 2], u8[16, 8])" = torch.ops.fp4.quest_quantize.default(primals_3, True)
    getitem: "u8[16, 32]" = operator.getitem(quest_quantize_default, 0)
    getitem_1: "u8[16, 2]" = operator.getitem(quest_quantize_default, 1)
    getitem_2: "u8[16, 8]" = operator.getitem(quest_quantize_default, 2)
    quest_quantize_default_1: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(primals_1, True)
    getitem_3: "u8[32, 32]" = operator.getitem(quest_quantize_default_1, 0)
    getitem_4: "u8[32, 2]" = operator.getitem(quest_quantize_default_1, 1)
    getitem_5: "u8[32, 8]" = operator.getitem(quest_quantize_default_1, 2)
    mxfp4_gemm_default: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(getitem, getitem_1, getitem_3, getitem_4, 1.0, primals_2, 'none', None, None, None, False, torch.bfloat16)
    sr_quantize_default: "(u8[16, 16], u8[16, 1])" = torch.ops.fp4.sr_quantize.default(tangents_1, select_int, 0, 2, False)
    getitem_6: "u8[16, 16]" = operator.getitem(sr_quantize_default, 0)
    getitem_7: "u8[16, 1]" = operator.getitem(sr_quantize_default, 1)
    requantize_sr_default: "(u8[64, 16], u8[64, 1])" = torch.ops.fp4.requantize_sr.default(getitem_3, getitem_4, select_int, 0, 3)
    getitem_8: "u8[64, 16]" = operator.getitem(requantize_sr_default, 0)
    getitem_9: "u8[64, 1]" = operator.getitem(requantize_sr_default, 1)
    mxfp4_gemm_default_1: "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default(getitem_6, getitem_7, getitem_8, getitem_9, 0.1111111111111111, None, 'none', None, None, getitem_2, True, torch.bfloat16)
    sr_quantize_with_bias_grad_default: "(u8[32, 16], u8[32, 1], bf16[32])" = torch.ops.fp4.sr_quantize_with_bias_grad.default(tangents_1, select_int, 1, 4, True, torch.bfloat16)
    getitem_14: "u8[32, 16]" = operator.getitem(sr_quantize_with_bias_grad_default, 0)
    getitem_15: "u8[32, 1]" = operator.getitem(sr_quantize_with_bias_grad_default, 1)
    getitem_16: "bf16[32]" = operator.getitem(sr_quantize_with_bias_grad_default, 2)
    requantize_sr_default_1: "(u8[64, 16], u8[64, 1])" = torch.ops.fp4.requantize_sr.default(getitem, getitem_1, select_int, 1, 5)
    getitem_12: "u8[64, 16]" = operator.getitem(requantize_sr_default_1, 0)
    getitem_13: "u8[64, 1]" = operator.getitem(requantize_sr_default_1, 1)
    mxfp4_gemm_default_2: "bf16[32, 64]" = torch.ops.fp4.mxfp4_gemm.default(getitem_14, getitem_15, getitem_12, getitem_13, 0.1111111111111111, None, 'none', None, None, getitem_5, True, torch.bfloat16)
    t_3: "bf16[64, 32]" = torch.ops.aten.t.default(mxfp4_gemm_default_2)
    view_default: "bf16[1, 32]" = torch.ops.aten.view.default(getitem_16, [1, 32])
    view: "bf16[32]" = torch.ops.aten.view.default(view_default, [32])
    t_4: "bf16[32, 64]" = torch.ops.aten.t.default(t_3)
    return [mxfp4_gemm_default, t_4, view, mxfp4_gemm_default_1]

# The left operand is already-quantized codes from a graph input, not a quest_quantize result: the GEMM
# and the weight's quantizer are left alone (folding w alone would buy nothing).
# CHECK-LABEL: def operand_not_quantized_here(
# CHECK-NOT:     {{quest_quantize_fold|fp8_fold_gemm}}
# CHECK:         torch.ops.fp4.quest_quantize.default(w, True)
# CHECK:         torch.ops.fp4.mxfp4_gemm.default(a, sa, {{\w+}}, {{\w+}}, 1.0,
# CHECK-NOT:     {{quest_quantize_fold|fp8_fold_gemm}}
# CHECK:         return
# OTHER-LABEL: def operand_not_quantized_here(
# OTHER-NOT:     {{quest_quantize_fold|fp8_fold_gemm}}
def operand_not_quantized_here(a: "u8[16, 32]", sa: "u8[16, 2]", w: "bf16[32, 64]"):
    quest_quantize: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(w, True)
    wc: "u8[32, 32]" = operator.getitem(quest_quantize, 0)
    ws: "u8[32, 2]" = operator.getitem(quest_quantize, 1)
    y: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wc, ws, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    return (y,)

# q, k and v read one quantized x: its quantizer is replaced once and its fold feeds all three GEMMs.
# CHECK-LABEL: def shared_quantizer(
# CHECK:         [[QX:\b\w+]]: "(u8[16, 32], u8[16, 2], u8[16, 8], f8e4m3[16, 64], f32[16])" = torch.ops.fp4.quest_quantize_fold.default(x, True)
# CHECK:         [[XF:\b\w+]]: "f8e4m3[16, 64]" = operator.getitem([[QX]], 3)
# CHECK-NEXT:    [[XR:\b\w+]]: "f32[16]" = operator.getitem([[QX]], 4)
# CHECK-NOT:     quest_quantize_fold.default(x
# CHECK:         torch.ops.fp4.quest_quantize_fold.default(wq, True)
# CHECK:         torch.ops.fp4.fp8_fold_gemm.default([[XF]], [[XR]], {{\w+}}, {{\w+}}, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
# CHECK:         torch.ops.fp4.quest_quantize_fold.default(wk, True)
# CHECK:         torch.ops.fp4.fp8_fold_gemm.default([[XF]], [[XR]], {{\w+}}, {{\w+}}, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
# CHECK:         torch.ops.fp4.quest_quantize_fold.default(wv, True)
# CHECK:         torch.ops.fp4.fp8_fold_gemm.default([[XF]], [[XR]], {{\w+}}, {{\w+}}, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
# CHECK-NOT:     fp4.mxfp4_gemm
# CHECK-NOT:     fp4.quest_quantize.default
# CHECK:         return
# OTHER-LABEL: def shared_quantizer(
# OTHER-NOT:     {{quest_quantize_fold|fp8_fold_gemm}}
# OTHER:         return
def shared_quantizer(x: "bf16[16, 64]", wq: "bf16[32, 64]", wk: "bf16[32, 64]", wv: "bf16[32, 64]"):
    qx: "(u8[16, 32], u8[16, 2], u8[16, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
    xc: "u8[16, 32]" = operator.getitem(qx, 0)
    xs: "u8[16, 2]" = operator.getitem(qx, 1)
    qq: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(wq, True)
    qc: "u8[32, 32]" = operator.getitem(qq, 0)
    qs: "u8[32, 2]" = operator.getitem(qq, 1)
    q: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(xc, xs, qc, qs, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    qk: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(wk, True)
    kc: "u8[32, 32]" = operator.getitem(qk, 0)
    ks: "u8[32, 2]" = operator.getitem(qk, 1)
    k: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(xc, xs, kc, ks, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    qv: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(wv, True)
    vc: "u8[32, 32]" = operator.getitem(qv, 0)
    vs: "u8[32, 2]" = operator.getitem(qv, 1)
    v: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(xc, xs, vc, vs, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    return (q, k, v)
