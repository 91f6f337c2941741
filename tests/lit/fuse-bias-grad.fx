# RUN: fp4-opt %s -p fuse-bias-grad | filecheck %s

# Pass: fuse-bias-grad (passes/fuse_bias_grad.py). Computes the bias gradient (sum of dY over tokens)
# in the op that quantizes dY for the weight-grad GEMM, one read of dY for both.

# A layer with bias: the weight-grad quantizer (transpose=True) is preferred over the input-grad one.
# CHECK-LABEL: def bias_gradient(
# CHECK:         [[F:\b\w+]]: "(u8[32, 16], u8[32, 1], bf16[32])" = torch.ops.fp4.sr_quantize_with_bias_grad.default(dy, seed, 1, 4, True, torch.bfloat16)
# CHECK-NEXT:    [[C:\b\w+]]: "u8[32, 16]" = operator.getitem([[F]], 0)
# CHECK-NEXT:    [[S:\b\w+]]: "u8[32, 1]" = operator.getitem([[F]], 1)
# CHECK-NEXT:    [[B:\b\w+]]: "bf16[32]" = operator.getitem([[F]], 2)
# CHECK:         torch.ops.fp4.sr_quantize.default(dy, seed, 0, 2, False)
# CHECK-NOT:     torch.ops.fp4.bias_grad.default
# CHECK:         return ([[C]], [[S]], {{\w+}}, [[B]])
def bias_gradient(dy: "bf16[16, 32]", seed: "i64[]"):
    wgrad_q: "(u8[32, 16], u8[32, 1])" = torch.ops.fp4.sr_quantize.default(dy, seed, 1, 4, True)
    codes: "u8[32, 16]" = operator.getitem(wgrad_q, 0)
    scales: "u8[32, 1]" = operator.getitem(wgrad_q, 1)
    dgrad_q: "(u8[16, 16], u8[16, 1])" = torch.ops.fp4.sr_quantize.default(dy, seed, 0, 2, False)
    dgrad_codes: "u8[16, 16]" = operator.getitem(dgrad_q, 0)
    bias_grad: "bf16[32]" = torch.ops.fp4.bias_grad.default(dy, torch.bfloat16)
    return (codes, scales, dgrad_codes, bias_grad)

# Frozen weight: only the input-grad quantizer reads dY; the sum joins it.
# CHECK-LABEL: def frozen_weight(
# CHECK:         torch.ops.fp4.sr_quantize_with_bias_grad.default(dy, seed, 0, 2, False, torch.bfloat16)
def frozen_weight(dy: "bf16[16, 32]", seed: "i64[]"):
    dgrad_q: "(u8[16, 16], u8[16, 1])" = torch.ops.fp4.sr_quantize.default(dy, seed, 0, 2, False)
    dgrad_codes: "u8[16, 16]" = operator.getitem(dgrad_q, 0)
    bias_grad: "bf16[32]" = torch.ops.fp4.bias_grad.default(dy, torch.bfloat16)
    return (dgrad_codes, bias_grad)

# No quantizer reads the same dY: unchanged.
# CHECK-LABEL: def other_gradient(
# CHECK:         torch.ops.fp4.bias_grad.default(dy, torch.bfloat16)
def other_gradient(dy: "bf16[16, 32]", other: "bf16[16, 32]", seed: "i64[]"):
    q: "(u8[32, 16], u8[32, 1])" = torch.ops.fp4.sr_quantize.default(other, seed, 1, 4, True)
    codes: "u8[32, 16]" = operator.getitem(q, 0)
    bias_grad: "bf16[32]" = torch.ops.fp4.bias_grad.default(dy, torch.bfloat16)
    return (codes, bias_grad)
