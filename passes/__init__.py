"""fp4.passes: FX graph passes, one per file, registered by a kebab-case name.

A pass is a small class::

    @register_pass
    class DeadCodeElimination(GraphPass):
        name = "dce"
        def apply(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult: ...

Options are frozen-dataclass fields parsed from ``name{key=value,...}``.
"""

from . import builtin  # noqa: F401  (imports every pass module, so that the built-in passes register)
from .registry import GraphPass, PassContext, PassResult, get_pass, parse_pipeline, register_pass, registered_passes

__all__ = [
    "GraphPass",
    "PassContext",
    "PassResult",
    "get_pass",
    "parse_pipeline",
    "register_pass",
    "registered_passes",
]
