# RUN: fp4-opt %s -p dce | filecheck %s
# RUN: fp4-opt %s -p dce,dce | filecheck %s --check-prefix=TWICE

# Pass: dce (passes/dce.py). Removes nodes whose results are never used and that have no side effects.

# A dead chain goes, live nodes and their order stay.
# CHECK-LABEL: def dead_chain(
# CHECK-NEXT:    [[T:\b\w+]]: "f32[32, 16]" = torch.ops.aten.t.default(w)
# CHECK-NEXT:    [[MM:\b\w+]]: "f32[8, 16]" = torch.ops.aten.mm.default(x, [[T]])
# CHECK-NEXT:    return ([[MM]],)
def dead_chain(x: "f32[8, 32]", w: "f32[16, 32]"):
    t: "f32[32, 16]" = torch.ops.aten.t.default(w)
    neg: "f32[8, 32]" = torch.ops.aten.neg.default(x)
    mm: "f32[8, 16]" = torch.ops.aten.mm.default(x, t)
    relu: "f32[8, 32]" = torch.ops.aten.relu.default(neg)
    return (mm,)

# Unused inputs are part of the signature and stay.
# CHECK-LABEL: def unused_input(x: "f32[4]", unused: "bf16[2, 2]"):
# CHECK-NEXT:    return (x,)
def unused_input(x: "f32[4]", unused: "bf16[2, 2]"):
    cast: "f32[2, 2]" = torch.ops.aten._to_copy.default(unused, dtype=torch.float32)
    return (x,)

# A multi-output op stays while one of its results is read; unread getitems go.
# CHECK-LABEL: def partly_used_tuple(
# CHECK-NEXT:    [[Q:\b\w+]]: "(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
# CHECK-NEXT:    [[MASK:\b\w+]]: "u8[8, 8]" = operator.getitem([[Q]], 2)
# CHECK-NEXT:    return ([[MASK]],)
def partly_used_tuple(x: "f32[8, 64]"):
    q: "(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
    codes: "u8[8, 32]" = operator.getitem(q, 0)
    scales: "u8[8, 2]" = operator.getitem(q, 1)
    mask: "u8[8, 8]" = operator.getitem(q, 2)
    return (mask,)

# With no result read, the whole quantization goes.
# CHECK-LABEL: def unused_quantization(
# CHECK-NOT:     quest_quantize
# CHECK:         return (x,)
def unused_quantization(x: "f32[8, 64]"):
    q: "(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
    codes: "u8[8, 32]" = operator.getitem(q, 0)
    return (x,)

# Mutations and random draws stay even when unused: removing a draw would shift the generator's later draws.
# CHECK-LABEL: def side_effects(
# CHECK-NEXT:    torch.ops.fp4.draw_seeds.default(2, torch.device("cpu"))
# CHECK-NEXT:    torch.ops.aten.rand_like.default(x)
# CHECK-NEXT:    torch.ops.aten.copy_.default(x, x)
# CHECK-NOT:     neg
# CHECK:         return (x,)
def side_effects(x: "f32[4, 32]"):
    seeds: "i64[2]" = torch.ops.fp4.draw_seeds.default(2, torch.device("cpu"))
    noise: "f32[4, 32]" = torch.ops.aten.rand_like.default(x)
    copy: "f32[4, 32]" = torch.ops.aten.copy_.default(x, x)
    neg: "f32[4, 32]" = torch.ops.aten.neg.default(x)
    return (x,)

# Nothing to remove: the graph comes out unchanged, and a second run changes nothing more.
# CHECK-LABEL: def nothing_dead(
# CHECK-NEXT:    [[R:\b\w+]]: "f32[4]" = torch.ops.aten.relu.default(x)
# CHECK-NEXT:    return [[R]]
# TWICE-LABEL: # Constructed by dce
# TWICE-NEXT:  def dead_chain(
# TWICE:       # Constructed by dce
# TWICE-NEXT:  def unused_input(
# TWICE-LABEL: def nothing_dead(
# TWICE-NEXT:    "f32[4]" = torch.ops.aten.relu.default(x)
def nothing_dead(x: "f32[4]"):
    relu: "f32[4]" = torch.ops.aten.relu.default(x)
    return relu
