"""The ``fp4`` torch.compile backend.

::

    model = torch.compile(model, backend="fp4")                                   # defaults
    model = torch.compile(model, backend="fp4", options={"inductor": False})      # options by name
    backend = fp4.backend.configure(exclude=["lm_head", "*.down_proj"])           # a configured backend
    model = torch.compile(model, backend=backend);  ...;  print(backend.summary())

``torch.compile`` passes ``options=`` to a backend named by a string, so both
forms take the same :class:`fp4.options.Options` keys.  The backend is
registered through the ``torch_dynamo_backends`` entry point (``fp4 =
"fp4.backend:fp4_backend"``): no ``import fp4`` is needed.
"""

from __future__ import annotations

import threading

from . import report as report_lib
from .options import Options

_overrides = threading.local()


MODES = {None: {}, "default": {}, "reduce-overhead": {"cudagraphs": True}}
"""``torch.compile(..., mode=...)`` values the backend accepts, and the options each one sets."""


def fp4_backend(gm, example_inputs, options=None, mode=None):
    """Entry point of ``torch.compile(model, backend="fp4", options=...)`` (or ``mode="reduce-overhead"``)."""
    if mode not in MODES:
        raise ValueError(f"fp4 backend: mode={mode!r} is not supported; modes: {[m for m in MODES if m]}")
    return Fp4Backend(Options.from_mapping(options, **MODES[mode]))(gm, example_inputs)


class Fp4Backend:
    """A configured fp4 backend; keeps the report of every graph it compiled in ``reports``."""

    def __init__(self, options: Options | None = None, **overrides):
        self.options = Options.from_mapping(options, **overrides)
        self.reports: list[report_lib.CompileReport] = []

    def __call__(self, gm, example_inputs):
        from .capture import compile_graph

        options = self.options
        forced = getattr(_overrides, "values", None)
        if forced:
            options = Options.from_mapping(options, **forced)
        return compile_graph(gm, example_inputs, options, sink=self.reports)

    def summary(self) -> str:
        return report_lib.summarize(self.reports)

    def __repr__(self) -> str:
        return f"fp4.backend.Fp4Backend({self.options})"


def configure(**options) -> Fp4Backend:
    """A backend object with these options: ``torch.compile(model, backend=fp4.backend.configure(...))``."""
    return Fp4Backend(None, **options)


class override_options:
    """Within this context every fp4 compile in this thread uses these options (``fp4 inspect`` uses it)."""

    def __init__(self, **options):
        Options.from_mapping(options)  # validate early
        self.options = options

    def __enter__(self):
        self.previous = getattr(_overrides, "values", None)
        _overrides.values = {**(self.previous or {}), **self.options}
        return self

    def __exit__(self, *exc):
        _overrides.values = self.previous
        return False
