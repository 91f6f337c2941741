"""``decompose-activations``: expand the SiLU/GELU nodes left unfused into Inductor's decompositions.

The backend keeps ``aten.silu`` and ``aten.gelu`` whole when AOTAutograd
decomposes the graph for Inductor, so that ``fuse-activation`` can fold them
into an FP4 GEMM.  Those it could not fold (in training graphs the backward
needs the pre-activation) are expanded here into the exact pointwise ops of
Inductor's decomposition table, so Inductor fuses them with their neighbours
instead of calling the eager kernel.  Runs last in the Inductor pipeline.

Before::

    silu = aten.silu.default(view_3)
After::

    convert_element_type = prims.convert_element_type.default(view_3, torch.float32)
    neg = aten.neg.default(convert_element_type);  exp = aten.exp.default(neg);  add = aten.add.Tensor(exp, 1)
    div = aten.div.Tensor(convert_element_type, add)
    convert_element_type_1 = prims.convert_element_type.default(div, torch.bfloat16)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx

from .fx_tools import aten, provenance
from .registry import GraphPass, PassContext, PassResult, register_pass

DECOMPOSED = (aten.silu.default, aten.gelu.default)


def _decomposition_table() -> dict:
    from torch._inductor.decomposition import select_decomp_table

    return select_decomp_table()


def inline_decomposition(node: torch.fx.Node, table: dict) -> torch.fx.Node:
    """Replace ``node`` by the ops it decomposes to under ``table`` (traced on its fake input); returns the result."""
    tensor_input, rest = node.args[0], node.args[1:]
    kwargs = dict(node.kwargs)
    traced = make_fx(lambda x: node.target(x, *rest, **kwargs), decomposition_table=table, tracing_mode="real")(
        tensor_input.meta["val"]
    )
    graph = node.graph
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    result = None
    with graph.inserting_before(node):
        for inner in traced.graph.nodes:
            if inner.op == "placeholder":
                env[inner] = tensor_input
            elif inner.op == "output":
                result = env[inner.args[0]] if not isinstance(inner.args[0], (tuple, list)) else env[inner.args[0][0]]
            else:
                copied = graph.node_copy(inner, lambda arg: env[arg])
                copied.meta = {**provenance(node), "val": inner.meta["val"]}
                env[inner] = copied
    node.replace_all_uses_with(result)
    graph.erase_node(node)
    return result


@register_pass
@dataclass(frozen=True)
class DecomposeActivations(GraphPass):
    name = "decompose-activations"

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        table = None
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target not in DECOMPOSED:
                continue
            table = table or _decomposition_table()
            inline_decomposition(node, table)
            ctx.counters["decompose-activations.decomposed"] += 1
            modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
