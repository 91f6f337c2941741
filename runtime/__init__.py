"""fp4.runtime: the fp4 op set, its reference semantics, targets, kernel cache and launchers.

Importing this package registers the ``torch.ops.fp4`` op set.
"""

from . import formats, hadamard, ops, philox, reference
from .oracle import QuartetLinear, QuartetLinearFunction, quartet_linear, quartetize

try:  # the generated Triton kernels register themselves as the CUDA implementations of the ops
    from . import fold, launch  # noqa: F401
except ImportError:  # no usable code generator here: every op keeps its reference implementation
    pass

__all__ = [
    "QuartetLinear",
    "QuartetLinearFunction",
    "formats",
    "hadamard",
    "ops",
    "philox",
    "quartet_linear",
    "quartetize",
    "reference",
]
