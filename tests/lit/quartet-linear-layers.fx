# RUN: fp4-opt %s -p quartet-linear --print-layers --parameters arg0_1,arg1_1 \
# RUN:   | filecheck %s

# Pass: quartet-linear (passes/quartet_linear.py), what it records of each layer it finds (the report's
# rows, printed by --print-layers): rewritten, or skipped with the reason, never left out. Forward-only
# graphs (inference) keep the cases short; the rows are the same in a joint graph. --parameters says which
# graph inputs are parameters (the backend knows it from the model): arg0_1 and arg1_1 in each graph.

# A mixture-of-experts block: the router is a 2-D weight through F.linear (rewritten); the experts are a
# parameter stack [E, K, N] picked by index and multiplied with bmm (listed, skipped: fp4 rewrites 2-D
# layers); attention's bmm on activations only is neither rewritten nor listed.
# CHECK-LABEL: def moe_block(
# CHECK:         torch.ops.fp4.quest_quantize.default(arg0_1, True)
# CHECK:         torch.ops.aten.bmm.default(view, index)
# CHECK:         torch.ops.aten.bmm.default(arg2_1, transpose)
# CHECK:       # layer arg0_1 (?, GEMM mm, 64 -> 8): rewritten
# CHECK-NEXT:  # layer arg1_1 (?, GEMM bmm_0, 64 -> 32): skipped: batched GEMM (bmm.default) on stacked weights (mixture-of-experts): fp4 rewrites 2-D linear layers only; stays in the model dtype
# CHECK-NOT:   # layer
def moe_block(arg0_1: "bf16[8, 64]", arg1_1: "bf16[4, 64, 32]", arg2_1: "bf16[4, 16, 16]", arg3_1: "bf16[16, 64]", arg4_1: "i64[4]"):
    t: "bf16[64, 8]" = torch.ops.aten.t.default(arg0_1)
    mm: "bf16[16, 8]" = torch.ops.aten.mm.default(arg3_1, t)
    index: "bf16[4, 64, 32]" = torch.ops.aten.index.Tensor(arg1_1, [arg4_1])
    view: "bf16[4, 4, 64]" = torch.ops.aten.view.default(arg3_1, [4, 4, 64])
    bmm_0: "bf16[4, 4, 32]" = torch.ops.aten.bmm.default(view, index)
    transpose: "bf16[4, 16, 16]" = torch.ops.aten.transpose.int(arg2_1, 1, 2)
    bmm_1: "bf16[4, 16, 16]" = torch.ops.aten.bmm.default(arg2_1, transpose)
    return (mm, bmm_0, bmm_1)

# A weight computed from a parameter (w * mask, a pruned or merged layer): listed, skipped, with the op.
# GPT-2's Conv1D weight [K, N], taken as it is: rewritten, its features read the other way round.
# CHECK-LABEL: def computed_and_conv1d(
# CHECK:         torch.ops.aten.mm.default(arg2_1, t)
# CHECK:       # layer arg0_1 (?, GEMM mm, 64 -> 32): skipped: weight is computed (mul.Tensor) from parameters, not a parameter itself
# CHECK-NEXT:  # layer arg3_1 (?, GEMM addmm, 64 -> 96): rewritten
def computed_and_conv1d(arg0_1: "bf16[32, 64]", arg1_1: "bf16[32, 64]", arg2_1: "bf16[16, 64]", arg3_1: "bf16[64, 96]", arg4_1: "bf16[96]"):
    mul: "bf16[32, 64]" = torch.ops.aten.mul.Tensor(arg0_1, arg1_1)
    t: "bf16[64, 32]" = torch.ops.aten.t.default(mul)
    mm: "bf16[16, 32]" = torch.ops.aten.mm.default(arg2_1, t)
    addmm: "bf16[16, 96]" = torch.ops.aten.addmm.default(arg4_1, arg2_1, arg3_1)
    return (mm, addmm)
