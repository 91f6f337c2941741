"""``fuse-gate``: fold the SwiGLU/GeGLU gate multiply ``act(x W_g^T) * (x W_u^T)`` into a GEMM's epilogue.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(..., 'silu', None, None, None, False, torch.bfloat16)       # gate_proj
    mxfp4_gemm_1 = fp4.mxfp4_gemm(..., 'none', None, None, None, False, torch.bfloat16)     # up_proj
    mul = aten.mul.Tensor(mxfp4_gemm, mxfp4_gemm_1)
After::

    mxfp4_gemm_1 = fp4.mxfp4_gemm(..., 'none', mxfp4_gemm, None, None, False, torch.bfloat16)

Exact: the reference multiplies the rounded ``out_dtype`` result by the gate
like the eager ``mul`` (which is commutative bit for bit).  The multiplied
operand must have the GEMM's result shape (no broadcast); through views it is
reshaped to [M, N] with a view, so it must be contiguous.  When both operands
are GEMMs, the one without an activation takes the other as its gate.
Training graphs keep both factors for the backward, so this fires in inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from .epilogue import EpilogueFusion, Fold, as_gemm_operand, can_fold, gemm_args, gemm_through_views
from .fx_tools import aten
from .registry import register_pass


@register_pass
@dataclass(frozen=True)
class FuseGate(EpilogueFusion):
    name = "fuse-gate"

    def match(self, node: torch.fx.Node) -> Fold | None:
        if node.target is not aten.mul.Tensor or len(node.args) != 2:
            return None
        candidates = []
        for position in (1, 0):
            gemm, views = gemm_through_views(node.args[position], node)
            if gemm is not None and can_fold(gemm, "gate"):
                candidates.append((gemm_args(gemm)["activation"] != "none", gemm, views, node.args[1 - position]))
        for _, gemm, views, other in sorted(candidates, key=lambda c: c[0]):
            gate = as_gemm_operand(other, gemm, views, node)
            if gate is not None:
                return Fold(gemm, node, {"gate": gate}, views)
        return None
