# RUN: fp4-opt %s -p decompose-activations | filecheck %s

# Pass: decompose-activations (passes/decompose_activations.py). SiLU/GELU nodes left unfused are expanded
# into Inductor's decomposition (pointwise ops Inductor fuses), run last in the Inductor pipeline.

# CHECK-LABEL: def silu(
# CHECK-NEXT:    [[X:\b\w+]]: "f32[16, 128]" = torch.ops.prims.convert_element_type.default(x, torch.float32)
# CHECK-NEXT:    [[N:\b\w+]]: "f32[16, 128]" = torch.ops.aten.neg.default([[X]])
# CHECK-NEXT:    [[E:\b\w+]]: "f32[16, 128]" = torch.ops.aten.exp.default([[N]])
# CHECK-NEXT:    [[A:\b\w+]]: "f32[16, 128]" = torch.ops.aten.add.Tensor([[E]], 1)
# CHECK-NEXT:    [[D:\b\w+]]: "f32[16, 128]" = torch.ops.aten.div.Tensor([[X]], [[A]])
# CHECK-NEXT:    [[R:\b\w+]]: "bf16[16, 128]" = torch.ops.prims.convert_element_type.default([[D]], torch.bfloat16)
# CHECK-NEXT:    return ([[R]],)
def silu(x: "bf16[16, 128]"):
    silu: "bf16[16, 128]" = torch.ops.aten.silu.default(x)
    return (silu,)

# CHECK-LABEL: def gelu_tanh(
# CHECK-NOT:     aten.gelu.default
# CHECK:         torch.ops.aten.tanh.default
# CHECK:         "bf16[16, 128]" = torch.ops.prims.convert_element_type.default({{\w+}}, torch.bfloat16)
# CHECK-NEXT:    return
def gelu_tanh(x: "bf16[16, 128]"):
    gelu: "bf16[16, 128]" = torch.ops.aten.gelu.default(x, approximate='tanh')
    return (gelu,)

# Other ops are left alone.
# CHECK-LABEL: def relu(
# CHECK-NEXT:    torch.ops.aten.relu.default(x)
def relu(x: "bf16[16, 128]"):
    relu: "bf16[16, 128]" = torch.ops.aten.relu.default(x)
    return (relu,)
