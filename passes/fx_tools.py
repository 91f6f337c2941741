"""Small FX helpers shared by the fp4 rewrite and fusion passes.

Invariants every fp4 pass keeps (checked by the pass manager's verifier):

* every node it inserts carries ``meta['val']``, computed by running the op's
  fake implementation on its inputs' ``meta['val']`` (so shapes, dtypes and
  symbolic sizes stay right);
* a replaced node's users see a value of the same shape and dtype;
* no new aliasing: inserted ops are functional (``torch.ops.fp4.*`` never mutate).
"""

from __future__ import annotations

import operator
import re

import fp4.runtime  # noqa: F401  (the torch.ops.fp4 op set the passes insert)
import torch
import torch.fx
from torch._guards import detect_fake_mode

aten = torch.ops.aten
prims = torch.ops.prims

# Ops that reinterpret a tensor without changing its values in memory order.
VIEW_OPS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.alias.default)
# Dtype casts a weight may pass through before its GEMM (e.g. an fp32 master weight cast to bf16).
CAST_OPS = (prims.convert_element_type.default, aten._to_copy.default)
MATMUL_OPS = (aten.mm.default, aten.addmm.default)
"""The GEMMs a linear layer lowers to in a captured graph."""
BATCHED_MATMUL_OPS = {aten.bmm.default: 1, aten.baddbmm.default: 2, aten._grouped_mm.default: 1}
"""Batched and grouped GEMMs (mixture-of-experts layers), by the position of their right-hand operand."""
# Ops that pick a weight out of a stack of them (an expert's) on its way to a batched GEMM.
WEIGHT_PICK_OPS = (
    aten.index.Tensor, aten.index_select.default, aten.select.int, aten.slice.Tensor, aten.expand.default,
    aten.transpose.int, aten.permute.default, aten.t.default, aten.clone.default,
)  # fmt: skip

# Meta keys an activation-checkpoint region puts on its forward nodes (``torch.utils.checkpoint``, HF
# ``gradient_checkpointing_enable``): the policy the partitioner honours (``CheckpointPolicy``) and the region.
CHECKPOINT_KEYS = ("recompute", "ac_graph_id")

# Meta keys copied onto the nodes that replace a node (module provenance, autograd order, partition side,
# checkpoint region: a node inserted for a checkpointed op is recomputed in the backward as that op was).
PROVENANCE_KEYS = (
    "nn_module_stack",
    "source_fn_stack",
    "fwd_source_fn_stack",
    "seq_nr",
    "partitioner_tag",
    "stack_trace",
    *CHECKPOINT_KEYS,
)


def fake_mode_of(graph: torch.fx.Graph):
    """The FakeTensorMode of the graph's ``meta['val']`` (None for a graph without fake values)."""
    values = [node.meta.get("val") for node in graph.nodes if node.op == "placeholder"]
    return detect_fake_mode([v for v in values if isinstance(v, torch.Tensor)])


def fake_value(target, args, kwargs, mode):
    """Run ``target`` on the ``meta['val']`` of the node arguments under ``mode``."""
    to_value = lambda arg: arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg
    args = torch.fx.node.map_aggregate(args, to_value)
    kwargs = torch.fx.node.map_aggregate(kwargs, to_value)
    if mode is None:
        return target(*args, **kwargs)
    with mode:
        return target(*args, **kwargs)


class Builder:
    """Inserts nodes with ``meta['val']`` at the graph's current insertion point.

    ``meta`` (e.g. provenance of the node being replaced) is copied onto every inserted node.
    """

    def __init__(self, graph: torch.fx.Graph, meta: dict | None = None):
        self.graph = graph
        self.mode = fake_mode_of(graph)
        self.meta = dict(meta or {})

    def call(self, target, *args, **kwargs) -> torch.fx.Node:
        node = self.graph.call_function(target, tuple(args), dict(kwargs))
        node.meta.update(self.meta)
        node.meta["val"] = fake_value(target, node.args, node.kwargs, self.mode)
        return node

    def unpack(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """``getitem`` nodes for every element of a tuple-valued node."""
        return [self.call(operator.getitem, node, i) for i in range(len(node.meta["val"]))]

    def cast(self, node: torch.fx.Node, dtype: torch.dtype) -> torch.fx.Node:
        if node.meta["val"].dtype == dtype:
            return node
        return self.call(prims.convert_element_type.default, node, dtype)

    def transpose(self, node: torch.fx.Node) -> torch.fx.Node:
        """The 2-D transpose as ``permute([1, 0])``: Inductor lowers permute, while ``aten.t`` is in its
        decomposition table and so has no lowering (a pass runs after the decomposition)."""
        return self.call(aten.permute.default, node, [1, 0])


def provenance(node: torch.fx.Node) -> dict:
    return {key: node.meta[key] for key in PROVENANCE_KEYS if key in node.meta}


def checkpoint_region(node: torch.fx.Node) -> tuple:
    """The checkpoint policy and region of a node (``(None, None)`` outside any checkpointed region)."""
    return tuple(node.meta.get(key) for key in CHECKPOINT_KEYS)


def value(node) -> torch.Tensor | None:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def shape(node) -> tuple:
    val = value(node)
    return tuple(val.shape) if isinstance(val, torch.Tensor) else ()


def is_transpose_2d(node) -> bool:
    """``t``, ``transpose(0, 1)`` or ``permute([1, 0])`` of a 2-D tensor."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or len(shape(node)) != 2:
        return False
    if node.target is aten.t.default:
        return True
    if node.target is aten.transpose.int:
        return sorted(d % 2 for d in node.args[1:3]) == [0, 1]
    if node.target is aten.permute.default:
        return [d % 2 for d in node.args[1]] == [1, 0]
    return False


def peel_transposes(node: torch.fx.Node) -> tuple[torch.fx.Node, bool]:
    """Strip 2-D transposes: ``t(t(t(w)))`` -> ``(w, True)`` (base, odd number of transposes)."""
    transposed = False
    while is_transpose_2d(node):
        node, transposed = node.args[0], not transposed
    return node, transposed


def same_value(a, b) -> bool:
    """Whether two nodes certainly hold the same tensor: equal, or equal-shaped views of the same value."""
    if a is b:
        return True
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
        return False
    if a.op == b.op == "call_function" and a.target in VIEW_OPS and b.target in VIEW_OPS:
        return shape(a) == shape(b) and same_value(a.args[0], b.args[0])
    return False


_c10d = torch.ops._c10d_functional
GATHER_OPS = (_c10d.all_gather_into_tensor.default, _c10d.wait_tensor.default)
"""Collectives a sharded weight reaches its GEMM through (SimpleFSDP, DTensor parameters, compiled FSDP):
the all-gather concatenates the shards along dim 0, i.e. the rows N of the weight."""
# Ops a weight operand may pass through and still be the parameter's own values: dtype casts, views, aliases,
# copies, slices (``F.linear(x, w[:64])`` quantizes exactly the values ``w[:64]`` holds) and the gather.
WEIGHT_PASSTHROUGH_OPS = CAST_OPS + VIEW_OPS + GATHER_OPS + (
    aten.alias.default, aten.detach.default, aten.clone.default, aten.slice.Tensor,
)  # fmt: skip


def trace_weight(node: torch.fx.Node) -> tuple[torch.fx.Node | None, list[torch.fx.Node], str]:
    """``(graph input, ops passed, reason)`` for a weight operand.

    The weight may reach its GEMM through dtype casts, views, copies, slices and
    the dim-0 all-gather (+ wait) of a sharded parameter; the rewrite quantizes
    the value at the GEMM, so these only decide that it is a weight.  When
    another op computes it, the input is None and the reason names that op.
    """
    passed = []
    while node.op == "call_function" and node.target in WEIGHT_PASSTHROUGH_OPS:
        passed.append(node)
        node = node.args[0]
    if node.op == "placeholder":
        return node, passed, ""
    return None, passed, f"weight operand is computed by {node.target} in the graph, not read from a graph input"


def weight_source(node: torch.fx.Node) -> torch.fx.Node | None:
    """The graph input a weight operand comes from (see :func:`trace_weight`), or None if it is computed."""
    return trace_weight(node)[0]


def tangent_closure(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """Nodes that depend on a tangent: the backward part of a joint graph (empty for a forward graph)."""
    backward: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if (node.op == "placeholder" and node.name.startswith("tangents")) or any(
            arg in backward for arg in node.all_input_nodes
        ):
            if node.op != "output":
                backward.add(node)
    return backward


def is_joint(graph: torch.fx.Graph) -> bool:
    return any(node.op == "placeholder" and node.name.startswith("tangents") for node in graph.nodes)


_GETATTR = re.compile(r"getattr\(([^()]*), ['\"]([^'\"]+)['\"]\)")
_ROOT = re.compile(r"^L\[[^\]]*\](\[[^\]]*\])*\.?")
_MODULES_ITEM = re.compile(r"\._(?:modules|parameters|buffers)\[['\"]([^'\"]+)['\"]\]")
_ITEM = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]")


def normalize_module_name(name: str) -> str:
    """Dynamo's ``L['self'].layers[0]._modules['mlp'].fc1`` -> ``layers.0.mlp.fc1`` (``named_modules`` style).

    Parameter sources read the same way: ``L['self']._modules['fc1']._parameters['weight']`` -> ``fc1.weight``.
    """
    while _GETATTR.search(name):
        name = _GETATTR.sub(r"\1.\2", name)
    name = _MODULES_ITEM.sub(r".\1", name)
    name = _ROOT.sub("", name)
    name = _ITEM.sub(r".\1", name)
    return name.strip(".")


def module_of(node: torch.fx.Node) -> tuple[str, str] | None:
    """``(qualified name, class name)`` of the innermost module a forward node was traced in."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, module_type = list(stack.values())[-1]
    type_name = getattr(module_type, "__name__", None) or str(module_type).rsplit(".", 1)[-1].strip("'>")
    return normalize_module_name(path), type_name


def is_contiguous(node: torch.fx.Node) -> bool:
    val = value(node)
    if not isinstance(val, torch.Tensor):
        return False
    try:
        from torch.fx.experimental.symbolic_shapes import guard_or_false

        return bool(guard_or_false(val.is_contiguous()))
    except Exception:  # an unbacked or undecidable stride: be conservative
        return False


def single_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def tensor_bytes(value: torch.Tensor) -> int:
    """Bytes of a (fake, possibly symbolic) tensor's elements, symbolic sizes taken at their hint."""
    numel = 1
    for size in value.shape:
        numel *= _hint(size)
    return numel * value.element_size()


def _hint(size) -> int:
    """A symbolic size at the value it has in the example inputs (its hint)."""
    if isinstance(size, torch.SymInt):
        node = size.node
        if node.hint is not None:
            return int(node.hint)
        return int(node.shape_env.size_hint(node.expr))
    return int(size)
