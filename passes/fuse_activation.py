"""``fuse-activation``: fold GELU / SiLU / ReLU applied to a GEMM's result into its epilogue.

Before::

    mxfp4_gemm = fp4.mxfp4_gemm(a, sa, b, sb, 1.0, bias, 'none', None, None, None, False, torch.bfloat16)
    view = aten.view.default(mxfp4_gemm, [2, 8, 128])
    silu = aten.silu.default(view)
After::

    mxfp4_gemm = fp4.mxfp4_gemm(a, sa, b, sb, 1.0, bias, 'silu', None, None, None, False, torch.bfloat16)
    view = aten.view.default(mxfp4_gemm, [2, 8, 128])

Exact: the reference applies the same eager activation to the ``out_dtype``
result.  Legal only when the activation is the GEMM's single consumer: in a
training graph the backward usually needs the pre-activation, and then the
GEMM keeps its plain result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from .epilogue import EpilogueFusion, Fold, can_fold, gemm_through_views
from .fx_tools import aten
from .registry import register_pass


def activation_of(node: torch.fx.Node) -> str | None:
    """The epilogue activation name a node computes, or None."""
    if node.op != "call_function":
        return None
    if node.target is aten.silu.default:
        return "silu"
    if node.target is aten.relu.default:
        return "relu"
    if node.target is aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
    return None


@register_pass
@dataclass(frozen=True)
class FuseActivation(EpilogueFusion):
    name = "fuse-activation"

    def match(self, node: torch.fx.Node) -> Fold | None:
        activation = activation_of(node)
        if activation is None:
            return None
        gemm, views = gemm_through_views(node.args[0], node)
        if gemm is None or not can_fold(gemm, "activation"):
            return None
        return Fold(gemm, node, {"activation": activation}, views)
