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

from .epilogue import EpilogueFusion, Fold, can_fold, sole_consumer
from .registry import register_pass


@register_pass
@dataclass(frozen=True)
class FuseInverseRotation(EpilogueFusion):
    name = "fuse-inverse-rotation"

    def match(self, gemm: torch.fx.Node) -> Fold | None:
        if not can_fold(gemm, "inverse_rotate"):
            return None
        user = sole_consumer(gemm)
        if user is None or user.target is not torch.ops.fp4.inverse_rotate.default:
            return None
        return Fold(gemm, user, {"inverse_rotate": True})
