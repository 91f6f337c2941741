"""``fuse-residual``: fold a residual add ``h + x W^T`` into the GEMM's epilogue.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(..., 'none', None, None, None, False, torch.bfloat16)    # o_proj
    view = aten.view.default(mxfp4_gemm, [2, 8, 64])
    add = aten.add.Tensor(hidden, view)
After::

    view_1 = aten.view.default(hidden, [-1, 64])
    mxfp4_gemm = fp4.mxfp4_gemm(..., 'none', None, view_1, None, False, torch.bfloat16)
    view = aten.view.default(mxfp4_gemm, [2, 8, 64])

Exact: the reference adds the residual to the rounded ``out_dtype`` result
like the eager ``add`` (commutative bit for bit).  The residual must have the
GEMM's result shape (no broadcast) and be contiguous when reshaped.  The add's
backward needs neither operand, so this also fires in training graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from .epilogue import EpilogueFusion, Fold, as_gemm_operand, can_fold, gemm_through_views
from .fx_tools import aten
from .registry import register_pass


@register_pass
@dataclass(frozen=True)
class FuseResidual(EpilogueFusion):
    name = "fuse-residual"

    def match(self, node: torch.fx.Node) -> Fold | None:
        if node.target is not aten.add.Tensor or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            return None
        for position in (1, 0):
            gemm, views = gemm_through_views(node.args[position], node)
            if gemm is None or not can_fold(gemm, "residual"):
                continue
            residual = as_gemm_operand(node.args[1 - position], gemm, views, node)
            if residual is not None:
                return Fold(gemm, node, {"residual": residual}, views)
        return None
