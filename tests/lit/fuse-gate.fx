# RUN: fp4-opt %s -p fuse-gate | filecheck %s
# RUN: fp4-opt %s -p fuse-activation,fuse-gate | filecheck %s --check-prefix=SWIGLU

# Pass: fuse-gate (passes/fuse_gate.py). Folds the gate multiply of a GLU MLP into a GEMM's epilogue
# (gate argument): out = out_dtype(acc) * gate, the eager mul on the rounded result.

# Inference SwiGLU, 3-D: silu(gate_proj(x)) * up_proj(x). With fuse-activation first, the gate projection
# carries its SiLU and the up projection multiplies by it; the multiplier is viewed to [T, N].
# SWIGLU-LABEL: def swiglu(
# SWIGLU:        [[GATE:\b\w+]]: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wg, swg, 1.0, None, 'silu', None, None, None, False, torch.bfloat16)
# SWIGLU-NEXT:   [[GV:\b\w+]]: "bf16[2, 8, 128]" = torch.ops.aten.view.default([[GATE]], [2, 8, 128])
# SWIGLU-NEXT:   [[FLAT:\b\w+]]: "bf16[16, 128]" = torch.ops.aten.view.default([[GV]], [-1, 128])
# SWIGLU-NEXT:   [[UP:\b\w+]]: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wu, swu, 1.0, None, 'none', [[FLAT]], None, None, False, torch.bfloat16)
# SWIGLU-NEXT:   [[UV:\b\w+]]: "bf16[2, 8, 128]" = torch.ops.aten.view.default([[UP]], [2, 8, 128])
# SWIGLU-NEXT:   return ([[UV]],)
# Without the activation folded, the SiLU output multiplies the up projection all the same.
# CHECK-LABEL: def swiglu(
# CHECK:         [[S:\b\w+]]: "bf16[2, 8, 128]" = torch.ops.aten.silu.default(
# CHECK:         [[FLAT:\b\w+]]: "bf16[16, 128]" = torch.ops.aten.view.default([[S]], [-1, 128])
# CHECK-NEXT:    torch.ops.fp4.mxfp4_gemm.default(a, sa, wu, swu, 1.0, None, 'none', [[FLAT]], None, None, False, torch.bfloat16)
# CHECK-NOT:     aten.mul
def swiglu(a: "u8[16, 32]", sa: "u8[16, 2]", wg: "u8[128, 32]", swg: "u8[128, 2]", wu: "u8[128, 32]", swu: "u8[128, 2]"):
    gate: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wg, swg, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    gate_view: "bf16[2, 8, 128]" = torch.ops.aten.view.default(gate, [2, 8, 128])
    silu: "bf16[2, 8, 128]" = torch.ops.aten.silu.default(gate_view)
    up: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wu, swu, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    up_view: "bf16[2, 8, 128]" = torch.ops.aten.view.default(up, [2, 8, 128])
    mul: "bf16[2, 8, 128]" = torch.ops.aten.mul.Tensor(silu, up_view)
    return (mul,)

# Training: the backward reads both factors (the up projection's result feeds the SiLU's gradient). Unchanged.
# CHECK-LABEL: def factors_needed_by_backward(
# CHECK:         torch.ops.aten.mul.Tensor(gate, up)
def factors_needed_by_backward(a: "u8[16, 32]", sa: "u8[16, 2]", wu: "u8[128, 32]", swu: "u8[128, 2]", gate: "bf16[16, 128]", tangent: "bf16[16, 128]"):
    up: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wu, swu, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    mul: "bf16[16, 128]" = torch.ops.aten.mul.Tensor(gate, up)
    grad_gate: "bf16[16, 128]" = torch.ops.aten.mul.Tensor(tangent, up)
    return (mul, grad_gate)

# A broadcast multiplier ([128], a scale) is not a gate of the GEMM's shape: unchanged.
# CHECK-LABEL: def broadcast_scale(
# CHECK:         torch.ops.aten.mul.Tensor
def broadcast_scale(a: "u8[16, 32]", sa: "u8[16, 2]", wu: "u8[128, 32]", swu: "u8[128, 2]", scale: "bf16[128]"):
    up: "bf16[16, 128]" = torch.ops.fp4.mxfp4_gemm.default(a, sa, wu, swu, 1.0, None, 'none', None, None, None, False, torch.bfloat16)
    mul: "bf16[16, 128]" = torch.ops.aten.mul.Tensor(up, scale)
    return (mul,)

# The NVFP4 recipes' GEMM takes the gate multiply the same way (2-D, no views).
# CHECK-LABEL: def nvfp4_gate(
# CHECK:         [[UP:\b\w+]]: "bf16[16, 128]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, wu, swu, dwu, None, 'none', gate, None, torch.bfloat16)
# CHECK-NEXT:    return ([[UP]],)
def nvfp4_gate(a: "u8[16, 32]", sa: "u8[16, 4]", da: "f32[]", wu: "u8[128, 32]", swu: "u8[128, 4]", dwu: "f32[]", gate: "bf16[16, 128]"):
    up: "bf16[16, 128]" = torch.ops.fp4.nvfp4_gemm.default(a, sa, da, wu, swu, dwu, None, 'none', None, None, torch.bfloat16)
    mul: "bf16[16, 128]" = torch.ops.aten.mul.Tensor(gate, up)
    return (mul,)
