"""``fuse-bias-grad``: compute the bias gradient in the op that quantizes dY for the weight-grad GEMM.

Before::

    sr_quantize = fp4.sr_quantize(dy, seed, 1, 4, True)      # dY^T quantized along T
    bias_grad = fp4.bias_grad(dy, torch.bfloat16)            # sum over T
After::

    sr_quantize_with_bias_grad = fp4.sr_quantize_with_bias_grad(dy, seed, 1, 4, True, torch.bfloat16)
    (codes, scales, bias_grad = getitem 0, 1, 2)

Both read every element of dY once; fused, a GPU kernel reads it once for
both (the wgrad quantizer's 32-groups run along T, the direction of the sum).
Exact: the fused op's results are the two ops' results.  Prefers the
weight-grad (``transpose=True``) quantizer of the same dY, else the input-grad one.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from .epilogue import comes_before
from .fx_tools import Builder, provenance, same_value
from .registry import GraphPass, PassContext, PassResult, register_pass

fp4 = torch.ops.fp4


@register_pass
@dataclass(frozen=True)
class FuseBiasGrad(GraphPass):
    name = "fuse-bias-grad"

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        graph = gm.graph
        modified = False
        quantizers = [n for n in graph.nodes if n.op == "call_function" and n.target is fp4.sr_quantize.default]
        for reduction in [n for n in graph.nodes if n.op == "call_function" and n.target is fp4.bias_grad.default]:
            grad, dtype = reduction.args[0], reduction.args[1]
            same = [q for q in quantizers if same_value(q.args[0], grad)]
            same.sort(key=lambda q: not q.args[4])  # the transposed (weight-grad) quantizer first
            for quantizer in same:
                first = quantizer if comes_before(quantizer, reduction) else reduction
                if not all(comes_before(arg, first) for arg in quantizer.all_input_nodes):
                    continue
                if any(user.target is not operator.getitem for user in quantizer.users):
                    continue
                with graph.inserting_before(first):
                    b = Builder(graph, provenance(quantizer))
                    fused = b.call(fp4.sr_quantize_with_bias_grad.default, *quantizer.args[:5], dtype)
                    codes, scales, bias = b.unpack(fused)
                for user in list(quantizer.users):
                    if user.target is operator.getitem:
                        user.replace_all_uses_with(codes if user.args[1] == 0 else scales)
                        graph.erase_node(user)
                reduction.replace_all_uses_with(bias)
                graph.erase_node(reduction)
                graph.erase_node(quantizer)
                quantizers.remove(quantizer)
                ctx.counters["fuse-bias-grad.fused"] += 1
                modified = True
                break
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
