"""See what the fp4 backend does to a model: rewritten and skipped layers, every pass stage, saved bytes, a picture.

::

    from fp4.inspect import inspect_model
    result = inspect_model(model, tokens, targets, inductor=False)
    print(result.summary())                 # per linear layer: which GEMMs are FP4, or why skipped
    print(result.stage("quartet-linear"))   # the graph after a pass, in the .fx printer format
    result.write_svg("rewritten.svg")       # the rewritten region of the graph
    result.write("fp4-dump")                # every stage, forward/backward graphs, summary, SVG

``fp4 inspect script.py`` runs a script that calls ``torch.compile(..., backend="fp4")``
and prints the same for every graph it compiled.
"""

from __future__ import annotations

import copy
import os

import torch

from . import report as report_lib
from .backend import Fp4Backend


class Inspection:
    """The reports of the graphs one inspected run compiled (usually one training graph)."""

    def __init__(self, reports: list[report_lib.CompileReport]):
        if not reports:
            raise ValueError("nothing was compiled: did the model run through torch.compile?")
        self.reports = list(reports)

    @property
    def report(self) -> report_lib.CompileReport:
        """The first training report if there is one, else the first report."""
        return next((r for r in self.reports if r.kind == "training"), self.reports[0])

    @property
    def layers(self) -> list:
        return [layer for r in self.reports for layer in r.layers]

    def summary(self) -> str:
        return report_lib.summarize(self.reports)

    def stages(self) -> list[tuple[str, str]]:
        """``(pass, graph text)`` of the main report: the captured graph, then the graph after each pass."""
        return list(self.report.stages)

    def stage(self, name: str) -> str:
        return self.report.stage(name)

    def svg(self, layer: str | None = None) -> str:
        """SVG of one rewritten layer (default: the first; ``"*"``: all) of the main report."""
        return self.report.svg(layer)

    def write_svg(self, path: str, layer: str | None = None) -> str:
        with open(path, "w") as handle:
            handle.write(self.svg(layer))
        return path

    def write(self, directory: str) -> list[str]:
        """Every stage, the partitioned graphs, the summary and the SVG of every report, under ``directory``."""
        from .capture import dump
        from .options import Options

        written = []
        for r in self.reports:
            dump(r, Options.from_mapping(r.options, dump_dir=directory))
            written.extend(r.files)
        return written

    def __str__(self) -> str:
        return self.summary()


def _default_loss(output) -> torch.Tensor:
    """A scalar to differentiate: the output if it is one (a loss), else the mean square of its tensors."""
    tensors = [output] if isinstance(output, torch.Tensor) else []
    if not tensors:
        tensors = [t for t in (getattr(output, "values", lambda: [])() if hasattr(output, "values") else output)]
        tensors = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(tensors) == 1 and tensors[0].numel() == 1:
        return tensors[0].reshape(())
    return sum(t.float().square().mean() for t in tensors)


def inspect_model(model: torch.nn.Module, *args, backward: bool = True, loss_fn=None, copy_model=True, **options):
    """Compile ``model`` with the fp4 backend, run it once on ``args`` (and backward), return an :class:`Inspection`.

    ``options`` are backend options (see :class:`fp4.options.Options`).  The model
    is deep-copied first (``copy_model``) so its parameters and gradients stay untouched.
    """
    if copy_model:
        model = copy.deepcopy(model)
    backend = Fp4Backend(None, **options)
    compiled = torch.compile(model, backend=backend)
    if backward:
        output = compiled(*args)
        loss = loss_fn(output) if loss_fn else _default_loss(output)
        loss.backward()
    else:
        with torch.no_grad():
            compiled(*args)
    return Inspection(backend.reports)


def inspect_script(path_or_module: str, argv: list[str] | None = None, **options) -> Inspection:
    """Run a script (``.py`` path) or module (``python -m`` name) with these options forced on every fp4 compile."""
    import runpy
    import sys

    from .backend import override_options

    saved_argv = sys.argv
    sys.argv = [path_or_module, *(argv or [])]
    try:
        with override_options(**options), report_lib.collect() as reports:
            if path_or_module.endswith(".py") or os.path.exists(path_or_module):
                runpy.run_path(path_or_module, run_name="__main__")
            else:
                runpy.run_module(path_or_module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv
    return Inspection(reports)
