"""``fuse-bias``: fold ``acc + bias`` on a float32 GEMM result into the GEMM's ``bias``.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(a, sa, b, sb, 1.0, None, 'none', None, None, None, False, torch.float32)
    add = aten.add.Tensor(mxfp4_gemm, bias)          # bias: [N]
After::

    mxfp4_gemm = fp4.mxfp4_gemm(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.float32)

Exact: the reference adds ``bias.float()`` to the float32 accumulator, which
is what ``add`` of a float32 tensor and a bias of any float dtype computes.
Only a 1-D bias of the GEMM's N, on a float32 result with no later epilogue step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from .epilogue import EpilogueFusion, Fold, can_fold, sole_consumer
from .fx_tools import aten, shape
from .registry import register_pass


@register_pass
@dataclass(frozen=True)
class FuseBias(EpilogueFusion):
    name = "fuse-bias"

    def match(self, gemm: torch.fx.Node) -> Fold | None:
        if not can_fold(gemm, "bias"):
            return None
        add = sole_consumer(gemm)
        if add is None or add.target is not aten.add.Tensor or add.kwargs.get("alpha", 1) != 1:
            return None
        bias = add.args[1] if add.args[0] is gemm else add.args[0]
        if not isinstance(bias, torch.fx.Node) or bias is gemm or shape(bias) != shape(gemm)[-1:]:
            return None
        if not bias.meta["val"].dtype.is_floating_point:
            return None
        return Fold(gemm, add, {"bias": bias})
