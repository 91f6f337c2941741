# RUN: fp4-opt %s -p quartet-linear | filecheck %s
# RUN: fp4-opt %s -p "quartet-linear{rotate=false}" | filecheck %s --check-prefix=NOROT
# RUN: fp4-opt %s -p "quartet-linear{rounding=rtn}" | filecheck %s --check-prefix=RTN
# RUN: fp4-opt %s -p "quartet-linear{rotate=True}" | filecheck %s --check-prefix=ROT
# RUN: not fp4-opt %s -p "quartet-linear{rotate=yes}" 2>&1 | filecheck %s --check-prefix=BADBOOL
# RUN: not fp4-opt %s -p "quartet-linear{rounding=nearest}" 2>&1 | filecheck %s --check-prefix=BADROUNDING
# RUN: fp4-opt %s -p quartet-linear,fuse-bias,fuse-clip-mask,fuse-inverse-rotation,fuse-output-cast,fuse-bias-grad,dce \
# RUN:   | filecheck %s --check-prefix=FUSED

# Pass: quartet-linear (passes/quartet_linear.py). Rewrites each linear layer's forward, input-grad and
# weight-grad GEMMs of a joint graph into rotate -> quantize -> FP4 GEMM, with the epilogue still unfused
# (float32 GEMM, then bias add / clip mask / inverse rotation / cast as separate nodes), exactly as the
# eager oracle composes the ops. Graphs are AOTAutograd joint graphs of nn.Linear (primals_*, tangents_*).

# 2-D input with bias: one seed; x and w quantized once, their codes, scales and masks shared by all
# three GEMMs; the bias gradient becomes fp4::bias_grad.  Streams: dgrad signs 0, dY 2, W 3; wgrad 1, 4, 5.
# CHECK-LABEL: def linear_2d_bias(
# CHECK:         [[SEEDS:\b\w+]]: "i64[1]" = torch.ops.fp4.draw_seeds.default(1, torch.device("cpu"))
# CHECK-NEXT:    [[SEED:\b\w+]]: "i64[]" = torch.ops.aten.select.int([[SEEDS]], 0, 0)
# CHECK-NEXT:    [[QX:\b\w+]]: "(u8[16, 32], u8[16, 2], u8[16, 8])" = torch.ops.fp4.quest_quantize.default(primals_3, True)
# CHECK-NEXT:    [[XC:\b\w+]]: "u8[16, 32]" = operator.getitem([[QX]], 0)
# CHECK-NEXT:    [[XS:\b\w+]]: "u8[16, 2]" = operator.getitem([[QX]], 1)
# CHECK-NEXT:    [[XM:\b\w+]]: "u8[16, 8]" = operator.getitem([[QX]], 2)
# CHECK-NEXT:    [[QW:\b\w+]]: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(primals_1, True)
# CHECK-NEXT:    [[WC:\b\w+]]: "u8[32, 32]" = operator.getitem([[QW]], 0)
# CHECK-NEXT:    [[WS:\b\w+]]: "u8[32, 2]" = operator.getitem([[QW]], 1)
# CHECK-NEXT:    [[WM:\b\w+]]: "u8[32, 8]" = operator.getitem([[QW]], 2)
# CHECK-NEXT:    [[Y:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default([[XC]], [[XS]], [[WC]], [[WS]], 1.0, None, 'none', None, None, None, False, torch.float32)
# CHECK-NEXT:    [[YB:\b\w+]]: "f32[16, 32]" = torch.ops.aten.add.Tensor([[Y]], primals_2)
# CHECK-NEXT:    [[OUT:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[YB]], torch.bfloat16)
# CHECK:         [[GQ:\b\w+]]: "(u8[16, 16], u8[16, 1])" = torch.ops.fp4.sr_quantize.default(tangents_1, [[SEED]], 0, 2, False)
# CHECK:         [[WT:\b\w+]]: "(u8[64, 16], u8[64, 1])" = torch.ops.fp4.requantize_sr.default([[WC]], [[WS]], [[SEED]], 0, 3)
# CHECK:         [[DX:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, None, False, torch.float32)
# CHECK-NEXT:    [[DXM:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default([[DX]], [[XM]])
# CHECK-NEXT:    [[DXR:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.inverse_rotate.default([[DXM]])
# CHECK-NEXT:    [[GRADX:\b\w+]]: "bf16[16, 64]" = torch.ops.prims.convert_element_type.default([[DXR]], torch.bfloat16)
# CHECK:         torch.ops.fp4.sr_quantize.default(tangents_1, [[SEED]], 1, 4, True)
# CHECK:         torch.ops.fp4.requantize_sr.default([[XC]], [[XS]], [[SEED]], 1, 5)
# CHECK:         [[DW:\b\w+]]: "f32[32, 64]" = torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, None, False, torch.float32)
# CHECK-NEXT:    [[DWM:\b\w+]]: "f32[32, 64]" = torch.ops.fp4.apply_clip_mask.default([[DW]], [[WM]])
# CHECK-NEXT:    [[DWR:\b\w+]]: "f32[32, 64]" = torch.ops.fp4.inverse_rotate.default([[DWM]])
# CHECK:         [[DB:\b\w+]]: "bf16[32]" = torch.ops.fp4.bias_grad.default(tangents_1, torch.bfloat16)
# CHECK-NOT:     aten.mm
# CHECK-NOT:     aten.sum
# CHECK:         return [[[OUT]], {{\w+}}, {{\w+}}, [[GRADX]]]
# NOROT-LABEL: def linear_2d_bias(
# NOROT:         torch.ops.fp4.quest_quantize.default(primals_3, False)
# NOROT:         torch.ops.fp4.quest_quantize.default(primals_1, False)
# NOROT:         torch.ops.fp4.quantize_grad.default(tangents_1, {{\w+}}, 0, 2, False, False, 'sr')
# NOROT:         torch.ops.fp4.requantize_grad.default({{\w+}}, {{\w+}}, {{\w+}}, 0, 3, False, 'sr')
# NOROT:         [[M:\b\w+]]: "f32[16, 64]" = torch.ops.fp4.apply_clip_mask.default(
# NOROT-NOT:     inverse_rotate
# NOROT-NEXT:    torch.ops.prims.convert_element_type.default([[M]], torch.bfloat16)
# With the fusion passes, the GEMMs carry the oracle's epilogues: bias and bf16 output forward; mask,
# inverse rotation and bf16 output backward; the bias gradient rides on the weight-grad quantizer.
# FUSED-LABEL: def linear_2d_bias(
# FUSED:         [[QX:\b\w+]]: "(u8[16, 32], u8[16, 2], u8[16, 8])" = torch.ops.fp4.quest_quantize.default(primals_3, True)
# FUSED:         [[XM:\b\w+]]: "u8[16, 8]" = operator.getitem([[QX]], 2)
# FUSED:         [[QW:\b\w+]]: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(primals_1, True)
# FUSED:         [[WM:\b\w+]]: "u8[32, 8]" = operator.getitem([[QW]], 2)
# FUSED:         "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default({{.*}}, 1.0, primals_2, 'none', None, None, None, False, torch.bfloat16)
# FUSED:         "bf16[16, 64]" = torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, [[XM]], True, torch.bfloat16)
# FUSED:         torch.ops.fp4.sr_quantize_with_bias_grad.default(tangents_1, {{\w+}}, 1, 4, True, torch.bfloat16)
# FUSED:         "bf16[32, 64]" = torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, [[WM]], True, torch.bfloat16)
# FUSED-NOT:     apply_clip_mask
# FUSED-NOT:     inverse_rotate
# FUSED-NOT:     fp4.bias_grad
# FUSED:         return
# Options are typed: `rotate=True` is the bool true (any case), other words are refused, naming the
# pass, the option and the values it takes.
# ROT-LABEL: def linear_2d_bias(
# ROT:         torch.ops.fp4.quest_quantize.default(primals_3, True)
# ROT:         torch.ops.fp4.sr_quantize.default(tangents_1,
# ROT:         torch.ops.fp4.inverse_rotate.default(
# BADBOOL: fp4-opt: error: pass 'quartet-linear': option rotate='yes' is not valid; it takes true or false
# BADROUNDING: fp4-opt: error: pass 'quartet-linear': option rounding='nearest' is not valid; it takes one of sr, rtn
# RTN-LABEL: def linear_2d_bias(
# RTN:           torch.ops.fp4.quest_quantize.default(primals_3, True)
# RTN:           torch.ops.fp4.quantize_grad.default(tangents_1, {{\w+}}, 0, 2, False, True, 'rtn')
# RTN:           torch.ops.fp4.requantize_grad.default({{\w+}}, {{\w+}}, {{\w+}}, 0, 3, True, 'rtn')
# RTN:           torch.ops.fp4.inverse_rotate.default(
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

# 3-D input: the GEMMs are found through the views to and from [T, K]; the weight grad comes out
# transposed back the way autograd's t() chain expects it.
# CHECK-LABEL: def linear_3d_no_bias(
# CHECK:         [[V:\b\w+]]: "bf16[16, 64]" = torch.ops.aten.view.default(primals_2, [16, 64])
# CHECK-NEXT:    torch.ops.fp4.quest_quantize.default([[V]], True)
# CHECK:         [[Y:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(
# CHECK-NEXT:    [[C:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[Y]], torch.bfloat16)
# CHECK-NEXT:    "bf16[2, 8, 32]" = torch.ops.aten._unsafe_view.default([[C]], [2, 8, 32])
# CHECK:         [[G:\b\w+]]: "bf16[16, 32]" = torch.ops.aten.view.default(tangents_1, [16, 32])
# CHECK:         torch.ops.fp4.sr_quantize.default([[G]], {{\w+}}, 1, 4, True)
# CHECK:         [[DW:\b\w+]]: "bf16[32, 64]" = torch.ops.prims.convert_element_type.default(
# CHECK-NEXT:    "bf16[64, 32]" = torch.ops.aten.t.default([[DW]])
# CHECK:         torch.ops.fp4.sr_quantize.default([[G]], {{\w+}}, 0, 2, False)
# CHECK:         [[DX:\b\w+]]: "bf16[16, 64]" = torch.ops.prims.convert_element_type.default(
# CHECK-NEXT:    "bf16[2, 8, 64]" = torch.ops.aten.view.default([[DX]], [2, 8, 64])
# CHECK-NOT:     aten.mm
def linear_3d_no_bias(primals_1: "bf16[32, 64]", primals_2: "bf16[2, 8, 64]", tangents_1: "bf16[2, 8, 32]"):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    view: "bf16[16, 64]" = torch.ops.aten.view.default(primals_2, [16, 64])
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(view, t)
    _unsafe_view: "bf16[2, 8, 32]" = torch.ops.aten._unsafe_view.default(mm, [2, 8, 32])
    view_1: "bf16[16, 32]" = torch.ops.aten.view.default(tangents_1, [16, 32])
    t_1: "bf16[32, 16]" = torch.ops.aten.t.default(view_1)
    mm_1: "bf16[32, 64]" = torch.ops.aten.mm.default(t_1, view)
    t_2: "bf16[64, 32]" = torch.ops.aten.t.default(mm_1)
    t_3: "bf16[32, 64]" = torch.ops.aten.t.default(t)
    mm_2: "bf16[16, 64]" = torch.ops.aten.mm.default(view_1, t_3)
    view_2: "bf16[2, 8, 64]" = torch.ops.aten.view.default(mm_2, [2, 8, 64])
    t_4: "bf16[32, 64]" = torch.ops.aten.t.default(t_2)
    return [_unsafe_view, t_4, view_2]

# GPT-2's Conv1D: addmm(b, x, w) with w [K, N], no transpose. The layer's [N, K] weight is t(w); its
# weight-grad GEMM (x^T . dY, [K, N]) comes out transposed, as w's gradient.
# CHECK-LABEL: def conv1d_transposed_weight(
# CHECK:         [[W:\b\w+]]: "bf16[32, 64]" = torch.ops.aten.permute.default(primals_1, [1, 0])
# CHECK-NEXT:    torch.ops.fp4.quest_quantize.default([[W]], True)
# CHECK:         torch.ops.fp4.sr_quantize.default([[G:\b\w+]], {{\w+}}, 0, 2, False)
# CHECK:         torch.ops.fp4.sr_quantize.default([[G]], {{\w+}}, 1, 4, True)
# CHECK:         [[DW:\b\w+]]: "bf16[32, 64]" = torch.ops.prims.convert_element_type.default(
# CHECK-NEXT:    [[DWT:\b\w+]]: "bf16[64, 32]" = torch.ops.aten.permute.default([[DW]], [1, 0])
# CHECK:         torch.ops.fp4.bias_grad.default([[G]], torch.bfloat16)
# CHECK-NOT:     aten.mm
# CHECK:         return [{{\w+}}, [[DWT]], {{\w+}}, {{\w+}}]
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

# Frozen weight: no weight-grad GEMM to rewrite; the input grad and the bias grad are rewritten.
# CHECK-LABEL: def frozen_weight(
# CHECK:         torch.ops.fp4.sr_quantize.default(tangents_1, {{\w+}}, 0, 2, False)
# CHECK-NOT:     torch.ops.fp4.sr_quantize.default(tangents_1, {{\w+}}, 1, 4, True)
# CHECK:         torch.ops.fp4.bias_grad.default(tangents_1, torch.bfloat16)
# CHECK:         return [{{\w+}}, None, {{\w+}}, {{\w+}}]
def frozen_weight(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[32]",
    primals_3: "bf16[16, 64]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_2, primals_3, t)
    t_1: "bf16[32, 64]" = torch.ops.aten.t.default(t)
    mm: "bf16[16, 64]" = torch.ops.aten.mm.default(tangents_1, t_1)
    sum_1: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
    view: "bf16[32]" = torch.ops.aten.view.default(sum_1, [32])
    return [addmm, None, view, mm]

# Input that needs no gradient: no input-grad GEMM; the weight grad and the bias grad are rewritten.
# CHECK-LABEL: def no_input_grad(
# CHECK-NOT:     torch.ops.fp4.sr_quantize.default(tangents_1, {{\w+}}, 0, 2, False)
# CHECK:         torch.ops.fp4.sr_quantize.default(tangents_1, {{\w+}}, 1, 4, True)
# CHECK:         torch.ops.fp4.bias_grad.default(tangents_1, torch.bfloat16)
# CHECK:         return [{{\w+}}, {{\w+}}, {{\w+}}, None]
def no_input_grad(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[32]",
    primals_3: "bf16[16, 64]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(primals_2, primals_3, t)
    t_1: "bf16[32, 16]" = torch.ops.aten.t.default(tangents_1)
    mm: "bf16[32, 64]" = torch.ops.aten.mm.default(t_1, primals_3)
    t_2: "bf16[64, 32]" = torch.ops.aten.t.default(mm)
    sum_1: "bf16[1, 32]" = torch.ops.aten.sum.dim_IntList(tangents_1, [0], True)
    view: "bf16[32]" = torch.ops.aten.view.default(sum_1, [32])
    t_3: "bf16[32, 64]" = torch.ops.aten.t.default(t_2)
    return [addmm, t_3, view, None]

# A forward-only (inference) graph: the forward GEMM is rewritten; no seeds are drawn.
# CHECK-LABEL: def forward_only(
# CHECK-NOT:     draw_seeds
# CHECK:         [[Y:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(
# CHECK-NEXT:    [[B:\b\w+]]: "f32[16, 32]" = torch.ops.aten.add.Tensor([[Y]], arg1_1)
# CHECK-NEXT:    [[C:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[B]], torch.bfloat16)
# CHECK-NEXT:    "bf16[2, 8, 32]" = torch.ops.aten.view.default([[C]], [2, 8, 32])
def forward_only(arg0_1: "bf16[32, 64]", arg1_1: "bf16[32]", arg2_1: "bf16[2, 8, 64]"):
    view: "bf16[16, 64]" = torch.ops.aten.view.default(arg2_1, [16, 64])
    t: "bf16[64, 32]" = torch.ops.aten.t.default(arg0_1)
    addmm: "bf16[16, 32]" = torch.ops.aten.addmm.default(arg1_1, view, t)
    view_1: "bf16[2, 8, 32]" = torch.ops.aten.view.default(addmm, [2, 8, 32])
    return (view_1,)

# K = 48 is not a multiple of the 32-element group: the layer is skipped and the graph stays as it was.
# CHECK-LABEL: def k_not_multiple_of_32(
# CHECK-NOT:     fp4
# CHECK:         torch.ops.aten.addmm.default(primals_2, primals_3, t)
def k_not_multiple_of_32(
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

# Two layers reading the same input (like k_proj and v_proj): each weight-grad GEMM is told apart by
# the output gradient its layer's input-grad GEMM uses. Layer i gets seed i.
# CHECK-LABEL: def shared_input(
# CHECK:         [[SEEDS:\b\w+]]: "i64[2]" = torch.ops.fp4.draw_seeds.default(2, torch.device("cpu"))
# CHECK-NEXT:    [[S0:\b\w+]]: "i64[]" = torch.ops.aten.select.int([[SEEDS]], 0, 0)
# CHECK-NEXT:    [[S1:\b\w+]]: "i64[]" = torch.ops.aten.select.int([[SEEDS]], 0, 1)
# The gradient of k's output (layer 0) is mul_2 = dY * v(x); v's (layer 1) is mul_1 = dY * k(x).
# CHECK:         torch.ops.fp4.sr_quantize.default(mul_1, [[S1]], 1, 4, True)
# CHECK:         torch.ops.fp4.sr_quantize.default(mul_1, [[S1]], 0, 2, False)
# CHECK:         torch.ops.fp4.sr_quantize.default(mul_2, [[S0]], 1, 4, True)
# CHECK:         torch.ops.fp4.sr_quantize.default(mul_2, [[S0]], 0, 2, False)
# CHECK-NOT:     aten.mm
def shared_input(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[16, 64]",
    primals_3: "bf16[32, 64]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(primals_2, t)
    t_1: "bf16[64, 32]" = torch.ops.aten.t.default(primals_3)
    mm_1: "bf16[16, 32]" = torch.ops.aten.mm.default(primals_2, t_1)
    mul: "bf16[16, 32]" = torch.ops.aten.mul.Tensor(mm, mm_1)
    mul_1: "bf16[16, 32]" = torch.ops.aten.mul.Tensor(tangents_1, mm)
    mul_2: "bf16[16, 32]" = torch.ops.aten.mul.Tensor(tangents_1, mm_1)
    t_2: "bf16[32, 16]" = torch.ops.aten.t.default(mul_1)
    mm_2: "bf16[32, 64]" = torch.ops.aten.mm.default(t_2, primals_2)
    t_3: "bf16[64, 32]" = torch.ops.aten.t.default(mm_2)
    t_4: "bf16[32, 64]" = torch.ops.aten.t.default(t_1)
    mm_3: "bf16[16, 64]" = torch.ops.aten.mm.default(mul_1, t_4)
    t_5: "bf16[32, 64]" = torch.ops.aten.t.default(t_3)
    t_6: "bf16[32, 16]" = torch.ops.aten.t.default(mul_2)
    mm_4: "bf16[32, 64]" = torch.ops.aten.mm.default(t_6, primals_2)
    t_7: "bf16[64, 32]" = torch.ops.aten.t.default(mm_4)
    t_8: "bf16[32, 64]" = torch.ops.aten.t.default(t)
    mm_5: "bf16[16, 64]" = torch.ops.aten.mm.default(mul_2, t_8)
    add: "bf16[16, 64]" = torch.ops.aten.add.Tensor(mm_3, mm_5)
    t_9: "bf16[32, 64]" = torch.ops.aten.t.default(t_7)
    return [mul, t_9, add, t_5]

# A matmul whose right operand is computed (attention-like), not a weight input: left alone.
# CHECK-LABEL: def activation_matmul(
# CHECK-NOT:     fp4
# CHECK:         torch.ops.aten.mm.default(x, t)
def activation_matmul(x: "bf16[16, 64]", y: "bf16[32, 64]"):
    neg: "bf16[32, 64]" = torch.ops.aten.neg.default(y)
    t: "bf16[64, 32]" = torch.ops.aten.t.default(neg)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(x, t)
    return (mm,)

# The same two layers when their input needs no gradient and the graph carries no autograd sequence
# numbers (a written graph; captured graphs have them): nothing tells the two weight-grad GEMMs apart,
# so neither layer is rewritten (a forward in FP4 with a model-dtype backward would be neither model).
# CHECK-LABEL: def shared_input_without_grad(
# CHECK-NOT:     fp4
# CHECK:         return
def shared_input_without_grad(
    primals_1: "bf16[32, 64]",
    primals_2: "bf16[16, 64]",
    primals_3: "bf16[32, 64]",
    tangents_1: "bf16[16, 32]",
):
    t: "bf16[64, 32]" = torch.ops.aten.t.default(primals_1)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(primals_2, t)
    t_1: "bf16[64, 32]" = torch.ops.aten.t.default(primals_3)
    mm_1: "bf16[16, 32]" = torch.ops.aten.mm.default(primals_2, t_1)
    mul: "bf16[16, 32]" = torch.ops.aten.mul.Tensor(mm, mm_1)
    mul_1: "bf16[16, 32]" = torch.ops.aten.mul.Tensor(tangents_1, mm)
    mul_2: "bf16[16, 32]" = torch.ops.aten.mul.Tensor(tangents_1, mm_1)
    t_2: "bf16[32, 16]" = torch.ops.aten.t.default(mul_1)
    mm_2: "bf16[32, 64]" = torch.ops.aten.mm.default(t_2, primals_2)
    t_3: "bf16[64, 32]" = torch.ops.aten.t.default(mm_2)
    t_4: "bf16[32, 64]" = torch.ops.aten.t.default(t_3)
    t_5: "bf16[32, 16]" = torch.ops.aten.t.default(mul_2)
    mm_3: "bf16[32, 64]" = torch.ops.aten.mm.default(t_5, primals_2)
    t_6: "bf16[64, 32]" = torch.ops.aten.t.default(mm_3)
    t_7: "bf16[32, 64]" = torch.ops.aten.t.default(t_6)
    return [mul, t_7, None, t_4]

# Two layers back to back on a 2-D input (no view between them): the second layer's x is the first
# layer's forward GEMM, and the first layer's dY is the second layer's input-grad GEMM.  Rewriting the
# first layer replaces nodes the second layer's match holds; both are rewritten, each reading what
# took the place of the other's GEMM.
# CHECK-LABEL: def back_to_back_2d(
# CHECK:         torch.ops.fp4.draw_seeds.default(2, torch.device("cpu"))
# CHECK:         [[Y1:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default({{\w+}}, torch.bfloat16)
# CHECK-NEXT:    [[Q2:\b\w+]]: "(u8[16, 16], u8[16, 1], u8[16, 4])" = torch.ops.fp4.quest_quantize.default([[Y1]], True)
# CHECK:         [[R2:\b\w+]]: "f32[16, 32]" = torch.ops.fp4.inverse_rotate.default(
# CHECK-NEXT:    [[DX2:\b\w+]]: "bf16[16, 32]" = torch.ops.prims.convert_element_type.default([[R2]], torch.bfloat16)
# CHECK:         torch.ops.fp4.sr_quantize.default([[DX2]], {{\w+}}, 0, 2, False)
# CHECK:         torch.ops.fp4.sr_quantize.default([[DX2]], {{\w+}}, 1, 4, True)
# CHECK:         torch.ops.fp4.bias_grad.default([[DX2]], torch.bfloat16)
# CHECK-NOT:     aten.mm
# CHECK-NOT:     aten.addmm
# CHECK:         return
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
# A sharded weight gathered inside the graph (SimpleFSDP / DTensor parameters / compiled FSDP): the fp32
# shard is cast, all-gathered along N and waited for; the layer is rewritten on the gathered weight, and
# the reduce-scatter of the weight gradient stays as it was.
# CHECK-LABEL: def gathered_weight(
# CHECK:         [[WAIT:\b\w+]]: "bf16[32, 64]" = torch.ops._c10d_functional.wait_tensor.default(
# CHECK-NEXT:    [[VIEW:\b\w+]]: "bf16[32, 64]" = torch.ops.aten.view.default([[WAIT]], [32, 64])
# CHECK:         [[QW:\b\w+]]: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default([[VIEW]], True)
# CHECK:         [[WC:\b\w+]]: "u8[32, 32]" = operator.getitem([[QW]], 0)
# CHECK:         torch.ops.fp4.requantize_sr.default([[WC]], {{\w+}}, {{\w+}}, 0, 3)
# CHECK:         [[DW:\b\w+]]: "bf16[32, 64]" = torch.ops.prims.convert_element_type.default({{\w+}}, torch.bfloat16)
# CHECK-NEXT:    torch.ops._c10d_functional.reduce_scatter_tensor.default([[DW]], 'sum', 2, '0')
# CHECK-NOT:     aten.mm
def gathered_weight(primals_1: "f32[16, 64]", primals_2: "bf16[16, 64]", tangents_1: "bf16[16, 32]"):
    convert_element_type: "bf16[16, 64]" = torch.ops.prims.convert_element_type.default(primals_1, torch.bfloat16)
    all_gather_into_tensor: "bf16[32, 64]" = torch.ops._c10d_functional.all_gather_into_tensor.default(convert_element_type, 2, "0")
    wait_tensor: "bf16[32, 64]" = torch.ops._c10d_functional.wait_tensor.default(all_gather_into_tensor)
    view: "bf16[32, 64]" = torch.ops.aten.view.default(wait_tensor, [32, 64])
    t: "bf16[64, 32]" = torch.ops.aten.t.default(view)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(primals_2, t)
    t_1: "bf16[32, 64]" = torch.ops.aten.t.default(t)
    mm_1: "bf16[16, 64]" = torch.ops.aten.mm.default(tangents_1, t_1)
    t_2: "bf16[32, 16]" = torch.ops.aten.t.default(tangents_1)
    mm_2: "bf16[32, 64]" = torch.ops.aten.mm.default(t_2, primals_2)
    reduce_scatter_tensor: "bf16[16, 64]" = torch.ops._c10d_functional.reduce_scatter_tensor.default(mm_2, "sum", 2, "0")
    wait_tensor_1: "bf16[16, 64]" = torch.ops._c10d_functional.wait_tensor.default(reduce_scatter_tensor)
    convert_element_type_1: "f32[16, 64]" = torch.ops.prims.convert_element_type.default(wait_tensor_1, torch.float32)
    return [mm, convert_element_type_1, mm_1]

# A gathered weight that another op computes on before its GEMM: not rewritten (the report says why,
# tests/test_compiled_fsdp.py), the graph is left as it was.
# CHECK-LABEL: def gathered_weight_computed(
# CHECK-NOT:     fp4
# CHECK:         torch.ops.aten.mm.default(x, t)
def gathered_weight_computed(w: "bf16[16, 64]", x: "bf16[16, 64]"):
    all_gather_into_tensor: "bf16[32, 64]" = torch.ops._c10d_functional.all_gather_into_tensor.default(w, 2, "0")
    wait_tensor: "bf16[32, 64]" = torch.ops._c10d_functional.wait_tensor.default(all_gather_into_tensor)
    neg: "bf16[32, 64]" = torch.ops.aten.neg.default(wait_tensor)
    t: "bf16[64, 32]" = torch.ops.aten.t.default(neg)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(x, t)
    return (mm,)
