# RUN: fp4-opt %s | filecheck %s
# RUN: fp4-opt %s > %t.fx && fp4-opt %t.fx | diff %t.fx -

# Printer/parser round trip through fp4-opt with no passes: the text comes back as written,
# types included, and printing the parsed output again changes nothing.

# CHECK-LABEL: # Constructed by capture
# CHECK-NEXT:  def quartet_forward(x: "f32[8, 64]", w: "bf16[32, 64]", bias: "bf16[32]"):
# CHECK-NEXT:    [[X:\b\w+]]: "(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
# CHECK:         [[XC:\b\w+]]: "u8[8, 32]" = operator.getitem([[X]], 0)
# CHECK:         mxfp4_gemm: "bf16[8, 32]" = torch.ops.fp4.mxfp4_gemm.default([[XC]], {{.*}}, 1.0, bias, 'gelu_tanh', None, None, None, False, torch.bfloat16)
# CHECK-NEXT:    return (mxfp4_gemm, x_mask)
# Constructed by capture
def quartet_forward(x: "f32[8, 64]", w: "bf16[32, 64]", bias: "bf16[32]"):
    quest_quantize: "(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
    x_codes: "u8[8, 32]" = operator.getitem(quest_quantize, 0)
    x_scales: "u8[8, 2]" = operator.getitem(quest_quantize, 1)
    x_mask: "u8[8, 8]" = operator.getitem(quest_quantize, 2)
    quest_quantize_1: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(w, True)
    w_codes: "u8[32, 32]" = operator.getitem(quest_quantize_1, 0)
    w_scales: "u8[32, 2]" = operator.getitem(quest_quantize_1, 1)
    mxfp4_gemm: "bf16[8, 32]" = torch.ops.fp4.mxfp4_gemm.default(x_codes, x_scales, w_codes, w_scales, 1.0, bias, 'gelu_tanh', None, None, None, False, torch.bfloat16)
    return (mxfp4_gemm, x_mask)

# The backward ops: seeds, stochastic-rounding quantizers (the transposed one pads 40 tokens to 64),
# the masked, un-rotating GEMM, dequantize and the bias gradient.
# CHECK-LABEL: # Constructed by capture
# CHECK-NEXT:  def quartet_backward(
# CHECK:         torch.ops.fp4.draw_seeds.default(1, torch.device("cpu"))
# CHECK:         "(u8[40, 16], u8[40, 1])" = torch.ops.fp4.sr_quantize.default(grad_y, seed, 0, 2, False)
# CHECK:         "(u8[64, 16], u8[64, 1])" = torch.ops.fp4.requantize_sr.default(w_codes, w_scales, seed, 0, 3)
# CHECK:         "f32[40, 64]" = torch.ops.fp4.mxfp4_gemm.default({{.*}}, 0.1111111111111111, None, 'none', None, None, x_mask, True, torch.float32)
# CHECK:         "(u8[32, 32], u8[32, 2])" = torch.ops.fp4.sr_quantize.default(grad_y, seed, 1, 4, True)
# CHECK:         dequantize: "bf16[32, 64]" = torch.ops.fp4.dequantize.default(w_codes, w_scales, 1.0, torch.bfloat16)
# CHECK-NEXT:    bias_grad: "bf16[32]" = torch.ops.fp4.bias_grad.default(grad_y, torch.bfloat16)
# Constructed by capture
def quartet_backward(grad_y: "f32[40, 32]", w_codes: "u8[32, 32]", w_scales: "u8[32, 2]", x_mask: "u8[40, 8]"):
    draw_seeds: "i64[1]" = torch.ops.fp4.draw_seeds.default(1, torch.device("cpu"))
    seed: "i64[]" = torch.ops.aten.select.int(draw_seeds, 0, 0)
    sr_quantize: "(u8[40, 16], u8[40, 1])" = torch.ops.fp4.sr_quantize.default(grad_y, seed, 0, 2, False)
    g_codes: "u8[40, 16]" = operator.getitem(sr_quantize, 0)
    g_scales: "u8[40, 1]" = operator.getitem(sr_quantize, 1)
    requantize_sr: "(u8[64, 16], u8[64, 1])" = torch.ops.fp4.requantize_sr.default(w_codes, w_scales, seed, 0, 3)
    wt_codes: "u8[64, 16]" = operator.getitem(requantize_sr, 0)
    wt_scales: "u8[64, 1]" = operator.getitem(requantize_sr, 1)
    grad_x: "f32[40, 64]" = torch.ops.fp4.mxfp4_gemm.default(g_codes, g_scales, wt_codes, wt_scales, 0.1111111111111111, None, 'none', None, None, x_mask, True, torch.float32)
    sr_quantize_1: "(u8[32, 32], u8[32, 2])" = torch.ops.fp4.sr_quantize.default(grad_y, seed, 1, 4, True)
    dequantize: "bf16[32, 64]" = torch.ops.fp4.dequantize.default(w_codes, w_scales, 1.0, torch.bfloat16)
    bias_grad: "bf16[32]" = torch.ops.fp4.bias_grad.default(grad_y, torch.bfloat16)
    return (grad_x, sr_quantize_1, dequantize, bias_grad)

# Literals of every kind survive: inf/nan floats, dtypes, devices, layouts, memory formats, strings, lists, kwargs.
# CHECK-LABEL: def literals(
# CHECK-NEXT:    full: "f16[2, 3]" = torch.ops.aten.full.default([2, 3], float("inf"), dtype=torch.float16, layout=torch.strided, device=torch.device("cpu"), pin_memory=False)
# CHECK-NEXT:    fill: "f32[4, 8]" = torch.ops.aten.masked_fill.Scalar(x, b, float("-inf"))
# CHECK-NEXT:    add_nan: "f32[4, 8]" = torch.ops.aten.add.Scalar(x, float("nan"))
# CHECK-NEXT:    clone: "f32[4, 8]" = torch.ops.aten.clone.default(x, memory_format=torch.contiguous_format)
# CHECK-NEXT:    cuda: "cuda:0 bf16[4, 8]" = torch.ops.aten._to_copy.default(x, dtype=torch.bfloat16, device=torch.device("cuda", 0))
# CHECK-NEXT:    split: "[f32[2, 8], f32[2, 8]]" = torch.ops.aten.split.Tensor(x, 2)
# CHECK-NEXT:    return (full, fill, add_nan, clone, cuda, split, None)
def literals(x: "f32[4, 8]", b: "b8[4, 8]"):
    full: "f16[2, 3]" = torch.ops.aten.full.default([2, 3], float("inf"), dtype=torch.float16, layout=torch.strided, device=torch.device("cpu"), pin_memory=False)
    fill: "f32[4, 8]" = torch.ops.aten.masked_fill.Scalar(x, b, float("-inf"))
    add_nan: "f32[4, 8]" = torch.ops.aten.add.Scalar(x, float("nan"))
    clone: "f32[4, 8]" = torch.ops.aten.clone.default(x, memory_format=torch.contiguous_format)
    cuda: "cuda:0 bf16[4, 8]" = torch.ops.aten._to_copy.default(x, dtype=torch.bfloat16, device=torch.device("cuda", 0))
    split: "[f32[2, 8], f32[2, 8]]" = torch.ops.aten.split.Tensor(x, 2)
    return (full, fill, add_nan, clone, cuda, split, None)
