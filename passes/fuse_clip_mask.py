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

from .epilogue import EpilogueFusion, Fold, can_fold, sole_consumer
from .registry import register_pass

APPLY_CLIP_MASK = torch.ops.fp4.apply_clip_mask.default


@register_pass
@dataclass(frozen=True)
class FuseClipMask(EpilogueFusion):
    name = "fuse-clip-mask"

    def match(self, gemm: torch.fx.Node) -> Fold | None:
        if not can_fold(gemm, "clip_mask"):
            return None
        user = sole_consumer(gemm)
        if user is None or user.target is not APPLY_CLIP_MASK or user.args[0] is not gemm:
            return None
        return Fold(gemm, user, {"clip_mask": user.args[1]})
