"""What one fp4 compilation did: rewritten and skipped layers, pass stages, saved-activation bytes.

Every graph the backend compiles leaves a :class:`CompileReport` in
:func:`reports` (and in its configured backend's ``.reports``); its counters
are also added to ``torch._dynamo.utils.counters["fp4"]`` so tests can observe
every rewrite the way they observe ``counters["inductor"]``.
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx

from .passes.fx_tools import tensor_bytes

log = logging.getLogger("fp4.report")
_GRAPH_IDS = itertools.count()
_REPORTS: list[CompileReport] = []
MAX_KEPT_REPORTS = 64


def counters() -> Counter:
    """The fp4 counters (``torch._dynamo.utils.counters["fp4"]``); cleared by ``counters.clear()`` there."""
    from torch._dynamo.utils import counters as dynamo_counters

    return dynamo_counters["fp4"]


def reports() -> list[CompileReport]:
    """Reports of the most recent compilations in this process, oldest first."""
    return list(_REPORTS)


def clear_reports() -> None:
    _REPORTS.clear()


@dataclass
class SavedTensor:
    """A tensor the forward keeps for the backward.

    ``activation`` is False for values computed from parameters alone (FP4 copies
    of weights, seeds): their size scales with the model, not with the tokens.
    """

    name: str
    shape: tuple
    dtype: torch.dtype
    nbytes: int
    activation: bool = True
    producer: str = ""  # the op that computed it (the tuple op for a getitem)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        kind = "" if self.activation else " (from parameters)"
        return f"{self.name}: {str(self.dtype).removeprefix('torch.')}[{dims}] {self.nbytes} B{kind}"


INPUT_QUANTIZERS = ("quest_quantize", "four_over_six_quantize", "nvfp4_quantize")
"""The ops whose saved outputs hold a rewritten layer's input for the backward (per recipe)."""


@dataclass
class CompileReport:
    """The record of one captured graph (a training joint graph or an inference graph)."""

    graph_id: int = field(default_factory=lambda: next(_GRAPH_IDS))
    kind: str = "training"  # or "inference"
    options: object = None
    target: str = "cpu"
    layers: list = field(default_factory=list)  # fp4.passes.quartet_linear.LinearLayer
    stages: list = field(default_factory=list)  # (pass spec, graph text) of the joint/inference graph
    forward_graph: str | None = None  # the partitioned graphs, as compiled
    backward_graph: str | None = None
    saved_before: list | None = None  # SavedTensor of the unrewritten partition
    saved_after: list | None = None
    counters: Counter = field(default_factory=Counter)
    region: object = None  # networkx.DiGraph of the rewritten region (fp4.svg)
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # code of this compile that Dynamo left outside every graph
    cached: bool = False  # the compiled graphs came from AOTAutograd's cache; the passes' results from :func:`store`

    PASS_RESULTS = (
        "kind", "layers", "stages", "forward_graph", "backward_graph", "saved_before", "saved_after", "counters",
        "region",
    )  # fmt: skip
    """What the passes and the partition of a compile put in its report (what a cache hit takes from the store)."""

    def restore(self, stored: CompileReport) -> None:
        """Take the passes' results from the report of the compile that filled AOTAutograd's cache."""
        for name in self.PASS_RESULTS:
            setattr(self, name, getattr(stored, name))
        self.cached = True

    @property
    def saved_bytes_before(self) -> int | None:
        """Activation bytes the unrewritten graph saves for the backward (parameters excluded)."""
        return None if self.saved_before is None else sum(t.nbytes for t in self.saved_before if t.activation)

    @property
    def saved_bytes_after(self) -> int | None:
        """Activation bytes the rewritten graph saves for the backward (parameters excluded)."""
        return None if self.saved_after is None else sum(t.nbytes for t in self.saved_after if t.activation)

    @property
    def saved_parameter_bytes_after(self) -> int | None:
        """Bytes saved that derive from parameters only (the FP4 weight copies and seeds)."""
        return None if self.saved_after is None else sum(t.nbytes for t in self.saved_after if not t.activation)

    def linear_input_bytes(self) -> tuple[int, int] | None:
        """``(model-dtype bytes of the rewritten layers' inputs, bytes of their saved FP4 codes+scales+masks)``.

        Each distinct input counts once (q/k/v projections share theirs).  Only
        training graphs save anything for the backward; None otherwise.
        """
        if self.saved_after is None:
            return None
        inputs = {layer.input_key: layer.input_bytes for layer in self.rewritten()}
        fp4_state = sum(t.nbytes for t in self.saved_after if t.activation and t.producer in INPUT_QUANTIZERS)
        return sum(inputs.values()), fp4_state

    @property
    def saved_ratio(self) -> float | None:
        before, after = self.saved_bytes_before, self.saved_bytes_after
        return before / after if before and after else None

    def rewritten(self) -> list:
        return [layer for layer in self.layers if layer.status == "rewritten"]

    def skipped(self) -> list:
        return [layer for layer in self.layers if layer.status == "skipped"]

    def svg(self, layer: str | None = None) -> str:
        """An SVG picture of the rewritten region of the graph: of one layer (default: the first rewritten one).

        ``layer="*"`` draws the whole region (every layer; wide for a big model).
        """
        from .svg import region_layers, render_svg

        if self.region is None:
            raise ValueError("this report holds no graph region")
        layers = region_layers(self.region)
        if layer is None and layers:
            layer = layers[0]
        return render_svg(
            self.region, title=f"fp4 graph {self.graph_id} ({self.kind})", layer=None if layer == "*" else layer
        )

    def stage(self, name: str) -> str:
        """The graph text after the pass ``name`` (or ``"input"``)."""
        for spec, text in self.stages:
            if spec == name or spec.split("{")[0] == name:
                return text
        raise KeyError(f"no stage {name!r}; stages: {[spec for spec, _ in self.stages]}")

    def summary(self) -> str:
        """A table of every linear layer: which GEMMs were rewritten, or why it was skipped."""
        recipe = getattr(self.options, "recipe", "quartet")
        recipe = "" if recipe == "quartet" else f", recipe {recipe}"
        lines = [f"fp4 graph {self.graph_id} ({self.kind}, target {self.target}{recipe}):"]
        width = max([len(layer.name) for layer in self.layers] + [5])
        type_width = max([len(layer.module_type) for layer in self.layers] + [10])
        for layer in self.layers:
            shape = f"{layer.in_features}->{layer.out_features}"
            if layer.status == "rewritten":
                kinds = [k for k in ("forward", "input_grad", "weight_grad", "bias_grad") if k in layer.gemms]
                detail = "FP4 " + " ".join(kinds)
                if layer.missing:
                    detail += "  (no " + ", ".join(f"{k}: {why}" for k, why in layer.missing.items()) + ")"
            else:
                detail = f"skipped: {layer.reason}"
            lines.append(f"  {layer.name:<{width}}  {layer.module_type:<{type_width}} {shape:<11} {detail}")
        if not self.layers:
            lines.append("  (no linear layers in this graph)")
        lines.extend(f"  not captured: {note}" for note in self.notes)
        if self.cached:
            lines.append("  compiled graphs from AOTAutograd's cache (the layers of the compile that filled it)")
        fused = {k.split(".")[0]: v for k, v in self.counters.items() if k.endswith(".fused")}
        if fused:
            lines.append("  fused: " + ", ".join(f"{name} x{count}" for name, count in sorted(fused.items())))
        if self.saved_after is not None:
            before = self.saved_bytes_before
            ratio = f" ({self.saved_ratio:.2f}x less)" if self.saved_ratio else ""
            lines.append(
                f"  activations saved for backward: {_kib(before)} unrewritten -> {_kib(self.saved_bytes_after)}{ratio}"
                if before is not None
                else f"  activations saved for backward: {_kib(self.saved_bytes_after)}"
            )
            lines.append(f"  plus FP4 weight copies and seeds: {_kib(self.saved_parameter_bytes_after)}")
            model_dtype, fp4_state = self.linear_input_bytes()
            if model_dtype and fp4_state:
                lines.append(
                    f"  inputs of the rewritten layers: {_kib(model_dtype)} in the model dtype -> {_kib(fp4_state)} "
                    f"as FP4 {'codes, scales and masks' if not recipe else 'codes and scales'} "
                    f"({model_dtype / fp4_state:.2f}x less)"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _kib(nbytes) -> str:
    return "?" if nbytes is None else f"{nbytes / 1024:.1f} KiB"


_COLLECTORS: list[list] = []


def uncaptured_regions() -> list[str]:
    """Higher-order-op graph breaks (activation checkpointing above all) that Dynamo took since the last call.

    When Dynamo cannot trace the body of a higher-order op, ``torch.utils.checkpoint`` included, the whole
    region runs eagerly, outside every graph: its linear layers never reach the backend and stay in the model
    dtype.  The backend cannot see those layers, so it reports the break instead (Dynamo counts each break
    under its message in ``counters["graph_break"]``).
    """
    from torch._dynamo.utils import counters as dynamo_counters

    notes = []
    reported = dynamo_counters["fp4_reported_graph_breaks"]  # cleared with the counters it follows
    for message, count in list(dynamo_counters["graph_break"].items()):
        if not message.startswith("HOP") or count <= reported[message]:
            continue
        reported[message] = count
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        note = (
            f"{lines[0]}: a higher-order op (activation checkpointing, ...) could not be traced, so the code "
            "under it ran eagerly, outside this backend; its linear layers stay in the model dtype"
        )
        if "skip_fwd_side_effects_in_bwd_under_checkpoint" in message:
            note += (
                " (set torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True to let Dynamo "
                "trace it; the side effect then is not replayed in the backward recomputation)"
            )
        else:
            explanation = next((line for line in lines if line.startswith("Explanation:")), "")
            note += f" ({explanation})" if explanation else ""
        notes.append(note)
    return notes


REPORTS_FOLDER = "fp4-reports"
"""Where :func:`store` keeps reports: this folder of Inductor's cache directory, beside the compiled graphs."""


def _stored_path(key: str):
    from pathlib import Path

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / REPORTS_FOLDER / f"{key}.pickle"


def store(report: CompileReport, key: str) -> None:
    """Keep ``report`` under ``key`` (:func:`fp4.capture.report_key`) for a later process whose compile AOTAutograd's
    cache serves (the passes do not run then).  A report that cannot be written is logged, not raised."""
    import pickle

    from .runtime.cache import write_atomically

    try:
        write_atomically(_stored_path(key), pickle.dumps(report))
    except Exception as error:  # noqa: BLE001  (a later cache hit then compiles again to rebuild it)
        log.warning("compile report not kept for the compile cache: %s", error)


def is_stored(key: str) -> bool:
    """Whether :func:`store` kept a report under ``key``."""
    return _stored_path(key).exists()


def stored(key: str) -> CompileReport | None:
    """The report :func:`store` kept under ``key``; None when there is none (or it cannot be read)."""
    import pickle

    path = _stored_path(key)
    try:
        with open(path, "rb") as stream:
            report = pickle.load(stream)
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001  (an unreadable report counts as none)
        log.warning("compile report %s unreadable: %s", path, error)
        return None
    return report if isinstance(report, CompileReport) else None


def publish(report: CompileReport) -> None:
    for note in report.notes:
        log.warning("fp4 graph %d: not captured: %s", report.graph_id, note)
    _REPORTS.append(report)
    del _REPORTS[:-MAX_KEPT_REPORTS]
    counters().update(report.counters)
    for collector in _COLLECTORS:
        collector.append(report)


class collect:
    """``with collect() as reports:`` gathers the report of every graph compiled inside the block."""

    def __enter__(self) -> list:
        self.reports: list[CompileReport] = []
        _COLLECTORS.append(self.reports)
        return self.reports

    def __exit__(self, *exc):
        _COLLECTORS.remove(self.reports)
        return False


def summarize(all_reports=None) -> str:
    """Summaries of several reports (default: every report kept in this process)."""
    chosen = reports() if all_reports is None else all_reports
    return "\n".join(report.summary() for report in chosen) if chosen else "fp4: nothing compiled yet"


# ----------------------------------------------------------------------------
# saved activations


def saved_tensors(forward: torch.fx.GraphModule, num_forward_outputs: int, parameters=frozenset()) -> list[SavedTensor]:
    """Tensors the forward graph returns for the backward, without the parameters themselves (kept anyway).

    ``parameters`` holds the names of forward placeholders that are module parameters;
    a saved tensor computed from them alone is marked ``activation=False``.
    """
    from_activation: set[torch.fx.Node] = set()
    for node in forward.graph.nodes:
        if (node.op == "placeholder" and node.name not in parameters) or any(
            arg in from_activation for arg in node.all_input_nodes
        ):
            from_activation.add(node)
    output = next(node for node in forward.graph.nodes if node.op == "output")
    saved = []
    for node in output.args[0][num_forward_outputs:]:
        if not isinstance(node, torch.fx.Node) or node.name in parameters:
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            source = node.args[0] if node.target is operator.getitem else node
            schema = getattr(source.target, "_schema", None)
            producer = schema.name.split("::")[-1] if schema else getattr(source.target, "__name__", "")
            activation = node in from_activation
            saved.append(
                SavedTensor(node.name, tuple(value.shape), value.dtype, tensor_bytes(value), activation, producer)
            )
    return saved
