# RUN: fp4-opt %s -p quartet-linear | filecheck %s
# RUN: not fp4-opt %s -p "quartet-linear{rotate=false}" 2>&1 | filecheck %s --check-prefix=NOROT
# RUN: not fp4-opt %s -p "quartet-linear{recipe=nvfp4}" 2>&1 | filecheck %s --check-prefix=RECIPE

# Pass: quartet-linear (passes/quartet_linear.py), on a weight FSDP2 gathered as MXFP4
# (fp4.distributed.enable_fp4_all_gather): the graph receives the weight's QuEST codes, scales and clip
# mask as inputs, and AOTAutograd traced each GEMM on the weight through an fp4::gathered_weight marker
# (one in the forward, one for the input grad).  The pass uses the gathered codes instead of quantizing
# the weight, in the forward GEMM and for the input grad (requantized along N), and the gathered mask
# for the weight grad; no marker is left (the weight gradient stands in the first gradient slot).
# CHECK-LABEL: def fp4_gathered(
# CHECK:         [[QX:\b\w+]]: "(u8[16, 32], u8[16, 2], u8[16, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
# CHECK:         [[XC:\b\w+]]: "u8[16, 32]" = operator.getitem([[QX]], 0)
# CHECK:         [[XS:\b\w+]]: "u8[16, 2]" = operator.getitem([[QX]], 1)
# CHECK:         torch.ops.fp4.mxfp4_gemm.default([[XC]], [[XS]], codes, scales, 1.0, None, 'none', None, None, None, False, torch.float32)
# CHECK:         torch.ops.fp4.requantize_sr.default(codes, scales, {{\w+}}, 0, 3)
# CHECK:         [[DW:\b\w+]]: "f32[32, 64]" = torch.ops.fp4.mxfp4_gemm.default(
# CHECK-NEXT:    torch.ops.fp4.apply_clip_mask.default([[DW]], mask)
# CHECK-NOT:     gathered_weight
# CHECK-NOT:     aten.mm
# The rotation of the gathered codes must be the layer's: otherwise the graph is refused, with the reason.
# NOROT: weight gathered as MXFP4 with rotate=True, the layer runs rotate=False
# MXFP4 codes are the quartet recipe's quantization: an NVFP4 recipe does not take them, and says so.
# RECIPE: gathered_weight: weight gathered as MXFP4 (FP4 all-gather), the layer runs recipe 'nvfp4'
def fp4_gathered(codes: "u8[32, 32]", scales: "u8[32, 2]", mask: "u8[32, 8]", x: "bf16[16, 64]", tangents_1: "bf16[16, 32]"):
    gathered_weight: "bf16[32, 64]" = torch.ops.fp4.gathered_weight.default(codes, scales, mask, True, torch.bfloat16)
    t: "bf16[64, 32]" = torch.ops.aten.t.default(gathered_weight)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(x, t)
    gathered_weight_1: "bf16[32, 64]" = torch.ops.fp4.gathered_weight.default(codes, scales, mask, True, torch.bfloat16)
    mm_1: "bf16[16, 64]" = torch.ops.aten.mm.default(tangents_1, gathered_weight_1)
    t_1: "bf16[32, 16]" = torch.ops.aten.t.default(tangents_1)
    mm_2: "bf16[32, 64]" = torch.ops.aten.mm.default(t_1, x)
    return [mm, mm_2, None, None, mm_1]
