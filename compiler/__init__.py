"""fp4: a torch.compile backend for native FP4 (MXFP4) training with the Quartet algorithm.

    model = torch.compile(model, backend="fp4")

The backend is found through the ``torch_dynamo_backends`` entry point; no
import is needed.  See the README for options and inspection.
"""

__version__ = "0.1.0"

from . import runtime  # noqa: E402,F401  (registers torch.ops.fp4)
