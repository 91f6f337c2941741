"""``dce``: remove nodes whose results are never used and that have no side effects.

Before::

    mm = torch.ops.aten.mm.default(x, w)   # unused
    relu = torch.ops.aten.relu.default(x)
    return (relu,)

After::

    relu = torch.ops.aten.relu.default(x)
    return (relu,)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from .registry import GraphPass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(GraphPass):
    name = "dce"

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        before = len(gm.graph.nodes)
        modified = gm.graph.eliminate_dead_code()
        if modified:
            ctx.counters["dce.removed"] += before - len(gm.graph.nodes)
            gm.recompile()
        return PassResult(gm, modified)
