"""``fuse-clip-mask``: fold the backward's straight-through clip mask into the GEMM epilogue.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(g, sg, w, sw, 0.111, None, 'none', None, None, None, False, torch.float32)
    apply_clip_mask = fp4.apply_clip_mask(mxfp4_gemm, x_mask)
After::

    mxfp4_gemm = fp4.mxfp4_gemm(g, sg, w, sw, 0.111, None, 'none', None, None, x_mask, False, torch.float32)

Exact: ``apply_clip_mask`` is the reference epilogue's mask step on the float32 accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from .epilogue import can_fold, set_gemm_args, sole_consumer
from .fx_tools import variants  # noqa: F401  (registers fp4::apply_clip_mask)
from .registry import GraphPass, PassContext, PassResult, register_pass

APPLY_CLIP_MASK = torch.ops.fp4.apply_clip_mask.default


@register_pass
@dataclass(frozen=True)
class FuseClipMask(GraphPass):
    name = "fuse-clip-mask"

    def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for gemm in list(gm.graph.nodes):
            if not can_fold(gemm, "clip_mask"):
                continue
            user = sole_consumer(gemm)
            if user is None or user.target is not APPLY_CLIP_MASK or user.args[0] is not gemm:
                continue
            set_gemm_args(gemm, clip_mask=user.args[1])
            user.replace_all_uses_with(gemm)
            gm.graph.erase_node(user)
            ctx.counters["fuse-clip-mask.fused"] += 1
            modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
