"""fp4.runtime: the fp4 op set, its reference semantics, targets, kernel cache and launchers.

Importing this package registers the whole ``torch.ops.fp4`` op set, here and nowhere else: the core
ops (:mod:`.ops`), the FP8 fold ops (:mod:`.fold`), the gathered-weight marker (:mod:`.gathered`),
the ops the passes emit besides them (:mod:`.variants`) and the ops of the NVFP4 recipes (:mod:`.recipe_ops`,
composed by :mod:`.recipes`); :data:`OPS` maps every op name to its
definition.  The generated kernels then register themselves as the CUDA implementations
(:mod:`.calls`, on the plans of :mod:`.launch`) where a code generator is usable.
"""

# ops, fold and variants define the op set in the fp4 library (runtime/library.py) as they are imported.
from . import (
    fold,
    formats,
    gathered,
    hadamard,
    ops,
    philox,
    recipe_ops,
    recipes,
    reference,
    variants,
)
from .oracle import QuartetLinear, QuartetLinearFunction, quartet_linear, quartetize

OPS = {**ops.OPS, **fold.OPS, **variants.OPS, **gathered.OPS, **recipe_ops.OPS}
"""Every ``torch.ops.fp4`` op by name."""

try:  # the generated Triton kernels register themselves as the CUDA implementations of the ops
    from . import (
        calls,  # noqa: F401
        launch_nvfp4,  # noqa: F401
    )
except ImportError:  # no usable code generator here: every op keeps its reference implementation
    pass

__all__ = [
    "OPS",
    "QuartetLinear",
    "QuartetLinearFunction",
    "fold",
    "formats",
    "gathered",
    "hadamard",
    "ops",
    "philox",
    "quartet_linear",
    "quartetize",
    "recipe_ops",
    "recipes",
    "reference",
    "variants",
]
