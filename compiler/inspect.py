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

    def __init__(
        self,
        reports: list[report_lib.CompileReport],
        exit_code: int = 0,
        error: BaseException | None = None,
        uncaptured: list[str] | None = None,
    ):
        if not reports:
            raise ValueError("nothing was compiled: did the model run through torch.compile?")
        self.reports = list(reports)
        self.uncaptured = list(uncaptured or [])  # linear layers of the model that no compiled graph holds
        self.exit_code = exit_code  # of an inspected script: 0, what it passed to sys.exit, or 1 if it raised
        self.error = error  # the exception an inspected script raised after compiling these graphs

    @property
    def report(self) -> report_lib.CompileReport:
        """The first training report if there is one, else the first report."""
        return next((r for r in self.reports if r.kind == "training"), self.reports[0])

    @property
    def layers(self) -> list:
        return [layer for r in self.reports for layer in r.layers]

    def summary(self) -> str:
        text = report_lib.summarize(self.reports)
        if self.uncaptured:
            text += "\nlinear layers outside every compiled graph (they ran eagerly, in the model dtype): " + ", ".join(
                self.uncaptured
            )
        return text

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
    options.setdefault("measure_saved", True)  # an inspection reports the saved bytes before and after
    backend = Fp4Backend(None, **options)
    compiled = torch.compile(model, backend=backend)
    if backward:
        output = compiled(*args)
        loss = loss_fn(output) if loss_fn else _default_loss(output)
        loss.backward()
    else:
        with torch.no_grad():
            compiled(*args)
    return Inspection(backend.reports, uncaptured=uncaptured_layers(model, backend.reports))


def uncaptured_layers(model: torch.nn.Module, reports) -> list[str]:
    """Names of ``model``'s linear layers that appear in no report: code Dynamo ran outside its graphs.

    A report names a layer by its module path as the compiled frame saw it (relative to a compiled block, or
    with a wrapper's prefix), so a module matches a reported name that ends its path or that its path ends.
    """
    seen = {layer.name for report in reports for layer in report.layers}

    def reported(name: str) -> bool:
        return any(name == s or name.endswith("." + s) or s.endswith("." + name) for s in seen)

    return [
        name
        for name, module in model.named_modules()
        if (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D") and not reported(name)
    ]


class ScriptNotFoundError(FileNotFoundError):
    """The script or module given to :func:`inspect_script` does not exist."""


def exit_status(code) -> int:
    """The process exit status of ``sys.exit(code)``, as Python computes it (None: 0; not an int: 1)."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def inspect_script(path_or_module: str, argv: list[str] | None = None, **options) -> Inspection:
    """Run a script (``.py`` path) or module (``python -m`` name) with these options forced on every fp4 compile.

    The script may end with ``sys.exit(...)`` or fail after compiling: the result still holds every graph it
    compiled, with the script's exit status in ``exit_code`` and its exception in ``error``.  A missing script
    or module raises :class:`ScriptNotFoundError`; a script that compiled nothing raises ``ValueError``
    (chained to the script's own exception, if it raised one).
    """
    import importlib.util
    import runpy
    import sys

    from .backend import override_options

    is_path = path_or_module.endswith(".py") or os.path.exists(path_or_module)
    if is_path and not os.path.isfile(path_or_module):
        raise ScriptNotFoundError(f"no such script: {path_or_module}")
    if not is_path:
        try:
            found = importlib.util.find_spec(path_or_module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ScriptNotFoundError(f"no module named {path_or_module!r}")
    options.setdefault("measure_saved", True)  # an inspection reports the saved bytes before and after
    saved_argv = sys.argv
    sys.argv = [path_or_module, *(argv or [])]
    exit_code, error = 0, None
    try:
        with override_options(**options), report_lib.collect() as reports:
            try:
                if is_path:
                    runpy.run_path(path_or_module, run_name="__main__")
                else:
                    runpy.run_module(path_or_module, run_name="__main__", alter_sys=True)
            except SystemExit as stop:
                exit_code = exit_status(stop.code)
                if not isinstance(stop.code, (int, type(None))):
                    print(stop.code, file=sys.stderr)  # what Python prints for sys.exit("message")
            except Exception as raised:
                exit_code, error = 1, raised
    finally:
        sys.argv = saved_argv
    if not reports:
        raise ValueError(
            f"nothing was compiled: {path_or_module} "
            + (f"raised {type(error).__name__}: {error}" if error else f"exited with status {exit_code}")
            + " before any graph reached the fp4 backend"
        ) from error
    return Inspection(reports, exit_code, error)
