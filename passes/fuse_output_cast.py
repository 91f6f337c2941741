"""``fuse-output-cast``: fold the cast of a float32 GEMM result to the model dtype into ``out_dtype``.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.float32)
    convert_element_type = prims.convert_element_type.default(mxfp4_gemm, torch.bfloat16)
After::

    mxfp4_gemm = fp4.mxfp4_gemm(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.bfloat16)

Exact: the reference rounds the float32 accumulator to ``out_dtype`` once,
as the cast does.  Looks through single-user views (a cast commutes with them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from .epilogue import EpilogueFusion, Fold, can_fold, gemm_through_views
from .fx_tools import CAST_OPS, prims
from .registry import register_pass


def cast_dtype(node: torch.fx.Node) -> torch.dtype | None:
    """The dtype a pure dtype cast converts to (None if ``node`` is anything else)."""
    if node.target is prims.convert_element_type.default:
        return node.args[1]
    if node.target is torch.ops.aten._to_copy.default and set(node.kwargs) <= {"dtype"} and len(node.args) == 1:
        return node.kwargs.get("dtype")
    return None


@register_pass
@dataclass(frozen=True)
class FuseOutputCast(EpilogueFusion):
    name = "fuse-output-cast"

    def match(self, node: torch.fx.Node) -> Fold | None:
        if node.target not in CAST_OPS:
            return None
        dtype = cast_dtype(node)
        gemm, views = gemm_through_views(node.args[0], node)
        if dtype is None or not dtype.is_floating_point or gemm is None or not can_fold(gemm, "cast"):
            return None
        return Fold(gemm, node, {"out_dtype": dtype}, views)
