"""fp4: a torch.compile backend for native FP4 (MXFP4) training with the Quartet algorithm.

    model = torch.compile(model, backend="fp4")

The backend is found through the ``torch_dynamo_backends`` entry point; no
import is needed.  See the README for options and inspection.
"""

__version__ = "0.1.0"

from . import runtime  # noqa: E402,F401  (registers torch.ops.fp4)

# Convenience names, imported on first use so that ``import fp4`` stays light.
_LAZY_EXPORTS = {
    "configure": ("fp4.backend", "configure"),
    "inspect_model": ("fp4.inspect", "inspect_model"),
    "inspect_script": ("fp4.inspect", "inspect_script"),
    "Options": ("fp4.options", "Options"),
    "Target": ("fp4.target", "Target"),
    "QuartetLinear": ("fp4.runtime.oracle", "QuartetLinear"),
    "quartetize": ("fp4.runtime.oracle", "quartetize"),
}

_LAZY_MODULES = ("distributed",)

__all__ = ["__version__", *_LAZY_EXPORTS, *_LAZY_MODULES]


def __getattr__(name):
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"fp4.{name}")
    if name in _LAZY_EXPORTS:
        import importlib

        module_name, attribute = _LAZY_EXPORTS[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'fp4' has no attribute {name!r}")
