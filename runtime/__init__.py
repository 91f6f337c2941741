"""fp4.runtime: the fp4 op set, its reference semantics, targets, kernel cache and launchers.

Importing this package registers the ``torch.ops.fp4`` op set.
"""

from . import formats, hadamard, ops, philox, reference
from .oracle import QuartetLinear, QuartetLinearFunction, quartet_linear, quartetize

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
