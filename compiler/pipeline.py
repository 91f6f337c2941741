"""Run a pipeline of graph passes, verify the graph after each one, keep every stage.

::

    manager = PassManager(parse_pipeline("dce,fuse-epilogue"), PassContext(target=Target.parse("sm_90")))
    gm = manager.run(gm)
    for spec, text in manager.stages:   # ("input", ...), ("dce", ...), ("fuse-epilogue", ...)
        print(text)

After every pass the manager checks the invariants every pass must keep
(``verify_graph``): the graph lints, every node has ``meta['val']``, and
re-running every op on fresh fake inputs gives the shapes and dtypes recorded
in ``meta['val']``.  Any failure, in the pass or in the check, raises
:class:`PassError` naming the pass and the passes before it, the way
``torch.fx.passes.infra`` does.
"""

from __future__ import annotations

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from .parser import compute_fake_value
from .passes.registry import GraphPass, PassContext, PassResult, parse_pipeline
from .printer import UnsupportedGraphError, format_graph, format_type

INPUT_STAGE = "input"


class PassError(RuntimeError):
    """A pass failed or left an invalid graph."""

    def __init__(self, pass_spec: str, previous: list[str], message: str):
        self.pass_spec, self.previous = pass_spec, previous
        super().__init__(f"error in pass {pass_spec!r} after passes {previous}: {message}")


class GraphVerificationError(ValueError):
    """The graph breaks an invariant (lint, missing or stale ``meta['val']``)."""


def _fresh_placeholder(value: torch.Tensor, mode: FakeTensorMode) -> torch.Tensor:
    with mode:
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)


def _same_type(recorded, computed) -> bool:
    if isinstance(recorded, torch.Tensor) or isinstance(computed, torch.Tensor):
        return (
            isinstance(recorded, torch.Tensor)
            and isinstance(computed, torch.Tensor)
            and recorded.dtype == computed.dtype
            and tuple(recorded.shape) == tuple(computed.shape)
            and recorded.device == computed.device
        )
    if isinstance(recorded, (tuple, list)):
        return (
            isinstance(computed, (tuple, list))
            and len(recorded) == len(computed)
            and all(_same_type(r, c) for r, c in zip(recorded, computed))
        )
    return type(recorded) is type(computed)


def _describe(value, name: str) -> str:
    try:
        return format_type(value, name)
    except ValueError:
        return repr(value)


def verify_graph(gm: torch.fx.GraphModule) -> None:
    """Check the invariants of a graph between passes; raise :class:`GraphVerificationError` if one fails."""
    try:
        gm.graph.lint()
    except Exception as error:
        raise GraphVerificationError(f"graph.lint() failed: {error}") from error
    mode = FakeTensorMode()
    values: dict[torch.fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        if "val" not in node.meta:
            raise GraphVerificationError(f"node {node.name!r} ({node.op} {node.target}) has no meta['val']")
        recorded = node.meta["val"]
        if node.op == "placeholder":
            if not isinstance(recorded, torch.Tensor):
                raise GraphVerificationError(f"placeholder {node.name!r} has a non-tensor meta['val']")
            values[node] = _fresh_placeholder(recorded, mode)
            continue
        if node.op == "get_attr":
            attribute = getattr(gm, node.target)
            values[node] = mode.from_tensor(attribute) if isinstance(attribute, torch.Tensor) else attribute
            continue
        if node.op != "call_function":
            raise GraphVerificationError(f"node {node.name!r} is a {node.op}; passes expect call_function nodes")
        try:
            computed = compute_fake_value(node, mode, values)
        except Exception as error:
            raise GraphVerificationError(
                f"node {node.name!r}: {node.target} fails on its inputs' fake values: {type(error).__name__}: {error}"
            ) from error
        if not _same_type(recorded, computed):
            raise GraphVerificationError(
                f"node {node.name!r}: meta['val'] says {_describe(recorded, node.name)} "
                f"but {node.target} computes {_describe(computed, node.name)}"
            )
        values[node] = computed


def print_stage(gm: torch.fx.GraphModule, produced_by: str) -> str:
    """The stage's text; a graph the format cannot express is kept as a one-line explanation."""
    try:
        return format_graph(gm, produced_by=produced_by)
    except UnsupportedGraphError as error:
        return f"# Constructed by {produced_by}\n# (not printable: {error})\n"


class PassManager:
    """Runs ``passes`` (instances or pipeline text) in order on a GraphModule: the one pass engine.

    ``fp4-opt``, the lit tests and the backend's capture all run their pipelines through it.
    ``stages`` holds ``(pass spec, printed graph)`` for the input and after
    every pass (unless ``keep_stages=False``); ``callback(spec, gm)``, when given, is called at the same
    points (the backend's capture keeps its report's stages that way, xDSL's ``PassPipeline(callback=...)``
    style).  ``ctx.counters`` counts each pass's runs and modifications besides what the passes count
    themselves.  ``verify_input=False`` trusts the input graph and verifies only what the passes produce.
    """

    def __init__(
        self,
        passes: list[GraphPass] | str,
        ctx: PassContext | None = None,
        verify: bool = True,
        keep_stages: bool = True,
        callback=None,
        verify_input: bool = True,
    ):
        self.passes = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        self.ctx = ctx if ctx is not None else PassContext()
        if self.ctx.options is None:  # passes read the backend options; a bare context gets the defaults
            from .options import Options

            self.ctx.options = Options(target=self.ctx.target.name)
        self.verify = verify
        self.verify_input = verify_input
        self.keep_stages = keep_stages
        self.callback = callback
        self.stages: list[tuple[str, str]] = []

    def _keep(self, spec: str, gm: torch.fx.GraphModule, produced_by: str) -> None:
        if self.keep_stages:
            self.stages.append((spec, print_stage(gm, produced_by)))
        if self.callback is not None:
            self.callback(spec, gm)

    def run(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
        self.stages = []
        done: list[str] = []
        if self.verify and self.verify_input:
            try:
                verify_graph(gm)
            except GraphVerificationError as error:
                raise PassError(INPUT_STAGE, done, f"the input graph is invalid: {error}") from error
        self._keep(INPUT_STAGE, gm, gm.meta.get("fp4.produced_by", INPUT_STAGE))
        for graph_pass in self.passes:
            spec = graph_pass.spec()
            try:
                result = graph_pass.apply(gm, self.ctx)
            except Exception as error:
                raise PassError(spec, list(done), f"{type(error).__name__}: {error}") from error
            if not isinstance(result, PassResult):
                raise PassError(spec, list(done), f"apply() returned {type(result).__name__}, not a PassResult")
            gm = result.graph_module
            if self.verify:
                try:
                    verify_graph(gm)
                except GraphVerificationError as error:
                    raise PassError(spec, list(done), str(error)) from error
            self.ctx.counters[f"{graph_pass.name}.runs"] += 1
            self.ctx.counters[f"{graph_pass.name}.modified"] += int(result.modified)
            gm.meta["fp4.produced_by"] = spec
            self._keep(spec, gm, spec)
            done.append(spec)
        return gm
