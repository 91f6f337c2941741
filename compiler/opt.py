"""``fp4-opt``: run graph passes on ``.fx`` text, like ``mlir-opt`` or ``xdsl-opt``.

::

    fp4-opt graph.fx -p dce,fuse-epilogue{activation=false} --target sm_90
    fp4-opt - -p dce < graph.fx          # read stdin
    fp4-opt graph.fx -p dce --print-stages
    fp4-opt graph.fx -p quartet-linear --print-layers   # and the layers it found, rewritten or skipped
    fp4-opt graph.fx -p quartet-linear --parameters arg0_1,arg1_1   # these graph inputs are parameters
    fp4-opt --list-passes

Each ``def`` block of the input is parsed (:mod:`fp4.parser`), run through
the pipeline by a :class:`~fp4.pipeline.PassManager` that verifies the graph
after every pass, and printed (:mod:`fp4.printer`) with a header naming the
last pass.  With no ``-p`` the graph is printed back unchanged, header
included.  Errors go to stderr and the exit code is 1.  This is the tool the
lit tests in ``tests/lit`` run.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from .options import Options
from .parser import GraphParseError, parse_graphs
from .passes.registry import PassContext, parse_pipeline, registered_passes
from .pipeline import PassError, PassManager
from .printer import UnsupportedGraphError, format_graph
from .target import Target


class OptError(Exception):
    """A failure reported to the user as one line on stderr."""


def _summary(cls) -> str:
    """First line of the pass module's docstring (one pass per file), else of the class docstring."""
    for doc in (inspect.getdoc(sys.modules[cls.__module__]), cls.__dict__.get("__doc__")):
        if doc and doc.strip() and not doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature
            return inspect.cleandoc(doc).splitlines()[0]
    return ""


def list_passes() -> str:
    passes = registered_passes()
    width = max((len(name) for name in passes), default=0)
    return "".join(f"{name:<{width}}  {_summary(cls)}\n" for name, cls in passes.items())


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fp4-opt", description="Run fp4 graph passes on .fx text.")
    parser.add_argument("file", nargs="?", help="input .fx file, or - for stdin")
    parser.add_argument("-p", "--passes", default="", help="pass pipeline, e.g. 'dce,pass-b{key=value}'")
    parser.add_argument("--target", default="cpu", help="compilation target: cpu, sm_90, sm_100, sm_120, ...")
    parser.add_argument("--print-stages", action="store_true", help="print the graph after every pass")
    parser.add_argument(
        "--print-layers",
        action="store_true",
        help="after each graph, the linear layers quartet-linear found: rewritten, or skipped and why",
    )
    parser.add_argument("--parameters", default="",
                        help="comma-separated graph inputs that are parameters (as the backend knows them from "
                             "the model), where a pass asks: a weight computed from them, a stack of them")  # fmt: skip
    parser.add_argument("--list-passes", action="store_true", help="list the registered passes and exit")
    parser.add_argument("--no-verify", action="store_true", help="skip the graph checks after each pass")
    return parser


def run(argv: list[str] | None = None, stdin=None) -> str:
    """Everything ``main`` prints on success; raises on bad input (``main`` turns that into exit code 1)."""
    args = _argument_parser().parse_args(argv)
    if args.list_passes:
        return list_passes()
    if args.file is None:
        raise ValueError("no input file (give a path, or - for stdin)")
    if args.file == "-":
        text = (stdin or sys.stdin).read()
    else:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
    source = "<stdin>" if args.file == "-" else args.file
    target = Target.parse(args.target)
    pipeline = parse_pipeline(args.passes)
    outputs = []
    try:
        graphs = parse_graphs(text)
    except GraphParseError as error:
        raise OptError(f"{source}: {error}") from error
    for parsed in graphs:
        placeholders = {node.name for node in parsed.graph_module.graph.nodes if node.op == "placeholder"}
        ctx = PassContext(target=target, options=Options(target=target.name), records={"input_names": {
            name: name for name in args.parameters.split(",") if name in placeholders
        }})  # fmt: skip
        manager = PassManager(pipeline, ctx, verify=not args.no_verify)
        try:
            gm = manager.run(parsed.graph_module)
        except PassError as error:
            raise OptError(f"{source}: graph {parsed.name!r}: {error}") from error
        if args.print_stages:
            outputs.extend(text for _, text in manager.stages)
        else:
            produced_by = pipeline[-1].spec() if pipeline else (parsed.produced_by or "fp4-opt")
            outputs.append(format_graph(gm, produced_by=produced_by))
        if args.print_layers:
            outputs.append("".join(_layer_line(layer) for layer in ctx.records.get("linear_layers", [])))
    return "\n".join(outputs)


def _layer_line(layer) -> str:
    """One layer the quartet-linear pass recorded, as a comment line (what the report's table says of it)."""
    what = layer.status + (f": {layer.reason}" if layer.reason else "")
    return (f"# layer {layer.name} ({layer.module_type}, GEMM {layer.forward}, {layer.in_features} -> "
            f"{layer.out_features}): {what}\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        sys.stdout.write(run(argv))
    except (OptError, UnsupportedGraphError, ValueError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"fp4-opt: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
