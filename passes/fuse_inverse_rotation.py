"""``fuse-inverse-rotation``: fold the backward's inverse Hadamard rotation into the GEMM epilogue.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(g, sg, w, sw, 0.111, None, 'none', None, None, x_mask, False, torch.float32)
    inverse_rotate = fp4.inverse_rotate(mxfp4_gemm)
After::

    mxfp4_gemm = fp4.mxfp4_gemm(g, sg, w, sw, 0.111, None, 'none', None, None, x_mask, True, torch.float32)

Exact: ``inverse_rotate`` is the reference epilogue's rotation step on the
float32 accumulator (after the clip mask, before the output cast).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from .epilogue import can_fold, set_gemm_args, sole_consumer
from .registry import GraphPass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class FuseInverseRotation(GraphPass):
    name = "fuse-inverse-rotation"

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for gemm in list(gm.graph.nodes):
            if not can_fold(gemm, "inverse_rotate"):
                continue
            user = sole_consumer(gemm)
            if user is None or user.target is not torch.ops.fp4.inverse_rotate.default:
                continue
            set_gemm_args(gemm, inverse_rotate=True)
            user.replace_all_uses_with(gemm)
            gm.graph.erase_node(user)
            ctx.counters["fuse-inverse-rotation.fused"] += 1
            modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
