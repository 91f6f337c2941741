"""Capture: AOTAutograd joint graph -> fp4 passes -> partition -> Inductor (or plain FX).

Dynamo hands the backend a forward graph.  AOTAutograd traces the joint
forward+backward graph; the fp4 pipeline rewrites it *before* partitioning,
so a layer's forward, input-grad and weight-grad GEMMs are rewritten together
and the partitioner saves FP4 codes, scales, masks and seeds for the
backward instead of model-dtype activations.

* ``inductor=True``: ``compile_fx`` with the pipeline as Inductor's
  ``joint_custom_pre_pass`` (it runs on the joint graph before Inductor's own
  joint passes and partitioner, and on inference graphs).  The graph is
  decomposed with Inductor's table except for the ops the fusions match
  (mm/addmm/silu/gelu).  fp4 ops stay opaque calls in the generated code.
* ``inductor=False``: ``aot_module_simplified`` (through dynamo's ``aot_autograd``
  entry, which DDPOptimizer counts) without decompositions and a
  partition function that runs the pipeline, then
  ``min_cut_rematerialization_partition``; the partitioned FX graphs run as
  they are (eager ATen ops, bitwise equal to eager PyTorch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import os
import threading
from collections import Counter
from pathlib import Path

import torch
import torch.fx
from torch._functorch.partitioners import min_cut_rematerialization_partition

from . import report as report_lib
from .options import AUTO, DEFAULT_PIPELINE, Options, seed_salt
from .passes.fx_tools import is_joint
from .passes.registry import PassContext, parse_pipeline
from .target import Target

# Ops the fusion passes match; kept whole when the graph is decomposed for Inductor.
KEEP_UNDECOMPOSED = ("mm", "addmm", "silu", "gelu")


def graph_text(gm: torch.fx.GraphModule, produced_by: str) -> str:
    """The ``.fx`` text of a graph; graphs the printer cannot print (symbolic sizes) as FX code."""
    from .printer import format_graph

    try:
        return format_graph(gm, produced_by=produced_by)
    except Exception as error:  # symbolic sizes, higher-order ops: what the .fx format does not hold
        return f"# Constructed by {produced_by} (as FX code: {error})\n" + gm.print_readable(
            print_output=False, include_stride=False
        )


def copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy with its own nodes (meta dicts copied, fake values shared)."""
    graph = torch.fx.Graph()
    graph._codegen = gm.graph._codegen
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    return torch.fx.GraphModule(gm, graph)


def _has_symbolic_sizes(gm: torch.fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.SymInt) or (
            isinstance(value, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in value.shape)
        ):
            return True
    return False


FP8_FOLD_PASS = "use-fp8-fold"


def pipeline_text(options: Options, target: Target) -> str:
    """The passes to run on ``target``: on Hopper (FP8 fold) the default pipeline also gets ``use-fp8-fold``.

    It goes after the fusion passes (they match ``mxfp4_gemm``), before ``dce``.
    A pipeline the user chose runs as given.
    """
    if target.gemm_lowering == "fp8_fold" and options.passes == DEFAULT_PIPELINE:
        passes = list(options.passes)
        fold = FP8_FOLD_PASS + ("{backward=true}" if options.fold_backward else "")
        passes.insert(passes.index("dce") if "dce" in passes else len(passes), fold)
        options = dataclasses.replace(options, passes=tuple(passes))
    return options.pipeline_text()


class GraphRewriter:
    """Runs the fp4 pipeline on one captured graph and records what it did in a :class:`CompileReport`."""

    def __init__(
        self, options: Options, target: Target, report: report_lib.CompileReport, parameters=(), input_names=()
    ):
        self.options, self.target, self.report = options, target, report
        self.parameters = set(parameters)  # primal indices that are module parameters
        self.input_names = list(input_names)  # per graph input: the parameter's name, or None
        self.unrewritten: torch.fx.GraphModule | None = None
        self.input_ranges: list[range] = []  # primal indices of each Dynamo input (flat_input_ranges)
        self.num_forward_outputs: int | None = None
        self.ran = False  # the passes ran (not on a hit of AOTAutograd's cache)

    def parameter_names(self) -> set[str]:
        return {f"primals_{index + 1}" for index in self.parameters}

    def __call__(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
        self.ran = True
        joint = is_joint(gm.graph)
        self.report.kind = "training" if joint else "inference"
        if joint:
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            primals = [n for n in placeholders if not n.name.startswith("tangents")]
            outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
            # The joint graph returns the forward outputs, then one gradient per primal.
            self.num_forward_outputs = len(torch.fx.node.map_aggregate(outputs, lambda x: x)) - len(primals)
            if self.options.measure_saved:
                self.unrewritten = copy_graph_module(gm)
        ctx = PassContext(
            target=self.target, options=self.options, counters=Counter(), records={"input_names": self._names(gm)}
        )
        passes = parse_pipeline(pipeline_text(self.options, self.target))
        gm = self._run_passes(gm, passes, ctx)
        self.report.layers.extend(ctx.records.get("linear_layers", []))
        self.report.counters.update(ctx.counters)
        self.report.counters["graphs"] += 1
        if self.options.compile_ahead and self.target.is_cuda:
            from .runtime import warmup

            warmup.start(gm)
        from .svg import rewritten_region

        self.report.region = rewritten_region(gm)
        return gm

    def _names(self, gm: torch.fx.GraphModule) -> dict[str, str]:
        """Placeholder name -> parameter name (``fc1.weight``); the graph's inputs follow Dynamo's, in order."""
        inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and not n.name.startswith("tangents")]
        if len(inputs) != len(self.input_names):  # inputs AOTAutograd added or flattened: names unknown
            return {}
        return {node.name: name for node, name in zip(inputs, self.input_names) if name}

    def _run_passes(self, gm, passes, ctx) -> torch.fx.GraphModule:
        """The pipeline through the pass engine (``fp4.pipeline.PassManager``), stages kept in the report.

        A captured graph may contain what the printer and the verifier do not
        handle (symbolic sizes, higher-order ops): its stages are then kept as
        FX code and the verifier skipped, instead of failing the compile.
        """
        from .pipeline import INPUT_STAGE, PassManager

        def keep(spec, graph_module):
            self.report.stages.append((spec, graph_text(graph_module, "capture" if spec == INPUT_STAGE else spec)))

        checkable = self.options.verify and not _has_symbolic_sizes(gm)
        manager = PassManager(passes, ctx, verify=checkable, keep_stages=False, callback=keep, verify_input=False)
        return manager.run(gm)

    def measure_before(self, joint_inputs, **partition_kwargs) -> None:
        """Partition the unrewritten joint graph to learn what it would have saved for the backward."""
        if self.unrewritten is None or self.num_forward_outputs is None:
            return
        forward, _ = min_cut_rematerialization_partition(
            self.unrewritten, joint_inputs, num_fwd_outputs=self.num_forward_outputs, **partition_kwargs
        )
        self.report.saved_before = report_lib.saved_tensors(forward, self.num_forward_outputs, self.parameter_names())
        self.unrewritten = None

    def record_forward(self, forward: torch.fx.GraphModule, training: bool) -> None:
        self.report.forward_graph = graph_text(forward, "partition (forward)" if training else "inference")
        if training and self.num_forward_outputs is not None:
            self.report.saved_after = report_lib.saved_tensors(
                forward, self.num_forward_outputs, self.parameter_names()
            )

    def record_backward(self, backward: torch.fx.GraphModule) -> None:
        self.report.backward_graph = graph_text(backward, "partition (backward)")
        dump(self.report, self.options)


def _partition_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k == "static_lifetime_input_indices"}


FORWARD_ONLY_OPS = ("draw_seeds",)
"""fp4 ops that must run in the forward even though only the backward reads them (they draw random seeds)."""


def keep_checkpoint_boundaries(joint: torch.fx.GraphModule) -> None:
    """Save the output of a checkpointed region that the next region reads, through views too.

    The partitioner stashes a recomputable node whose user belongs to a later
    checkpointed region (``ac_graph_id``), so back-to-back regions do not
    recompute each other.  It looks at direct users only, and views cannot be
    saved: once a fusion folds a region's last op (the residual add) into its
    GEMM, the region's output is a view of that GEMM and the rule no longer
    fires, so the backward would recompute every earlier region.  This applies
    the same rule through views.
    """
    from torch._functorch.partitioners import must_recompute
    from torch.utils.checkpoint import CheckpointPolicy

    for node in joint.graph.nodes:
        if not must_recompute(node) or _is_view(node) or node.meta.get("ac_graph_id") is None:
            continue
        region = node.meta["ac_graph_id"]
        frontier = list(node.users)
        while frontier:
            user = frontier.pop()
            if not must_recompute(user) or user.meta.get("ac_graph_id") is None:
                continue
            if user.meta["ac_graph_id"] > region:
                node.meta["recompute"] = CheckpointPolicy.MUST_SAVE
                break
            if _is_view(user):
                frontier.extend(user.users)


def _is_view(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and bool(getattr(node.target, "is_view", False))


def partition(joint: torch.fx.GraphModule, joint_inputs, rewriter: GraphRewriter, **kwargs):
    """``min_cut_rematerialization_partition`` that keeps the seed draw in the forward.

    The partitioner puts a node that no forward output depends on into the
    backward, and ``draw_seeds`` feeds only backward ops: drawn there, it would
    consume torch's generator at backward time instead of at the layer's
    forward call.  So it is listed as an extra forward output while
    partitioning (making it a forward node; random ops are never recomputed,
    so the backward receives its result as a saved tensor), and the extra
    output is dropped from the forward graph afterwards.
    """
    # AOTAutograd gives the static inputs by Dynamo input index: through subclass flattening, primal indices.
    ranges = rewriter.input_ranges
    static = kwargs.get("static_lifetime_input_indices") or ()
    rewriter.parameters.update(i for index in static for i in (ranges[index] if ranges else (index,)))
    # AOTAutograd's count; the joint graph's own (outputs less primals) is off when a subclass input is
    # flattened into several primals but gets one gradient.
    rewriter.num_forward_outputs = kwargs["num_fwd_outputs"]
    rewriter.measure_before(joint_inputs, **_partition_kwargs(kwargs))
    keep_checkpoint_boundaries(joint)
    num_forward_outputs = kwargs.pop("num_fwd_outputs")
    output = next(n for n in joint.graph.nodes if n.op == "output")
    original = output.args
    flat = list(output.args[0])
    forced = [
        n for n in joint.graph.nodes if n.op == "call_function" and getattr(n.target, "namespace", None) == "fp4"
        and n.target._schema.name.split("::")[-1] in FORWARD_ONLY_OPS
    ]  # fmt: skip
    output.args = (flat[:num_forward_outputs] + forced + flat[num_forward_outputs:],)
    original_descs = output.meta.get("desc")
    if original_descs is not None:
        descs = list(original_descs)
        output.meta["desc"] = descs[:num_forward_outputs] + [None] * len(forced) + descs[num_forward_outputs:]
    try:
        forward, backward = min_cut_rematerialization_partition(
            joint, joint_inputs, num_fwd_outputs=num_forward_outputs + len(forced), **kwargs
        )
    finally:
        output.args = original
        if original_descs is not None:
            output.meta["desc"] = original_descs
    if forced:
        forward_output = next(n for n in forward.graph.nodes if n.op == "output")
        values = list(forward_output.args[0])
        del values[num_forward_outputs : num_forward_outputs + len(forced)]
        forward_output.args = (values,)
        if forward_output.meta.get("desc") is not None:
            descs = list(forward_output.meta["desc"])
            del descs[num_forward_outputs : num_forward_outputs + len(forced)]
            forward_output.meta["desc"] = descs
        forward.recompile()
    rewriter.record_forward(forward, training=True)
    rewriter.record_backward(backward)
    return forward, backward


def fsdp_managed_inputs(gm: torch.fx.GraphModule) -> list[int]:
    """Indices of the graph inputs Dynamo took from FSDP-managed modules (``fully_shard`` parameters)."""
    from torch._dynamo.source import FSDPNNModuleSource

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    managed = []
    for index, node in enumerate(placeholders):
        source = getattr(node.meta.get("grapharg"), "source", None)
        while source is not None:
            if isinstance(source, FSDPNNModuleSource):
                managed.append(index)
                break
            source = getattr(source, "base", None)
    return managed


def resolve_options(gm: torch.fx.GraphModule, options: Options) -> Options:
    """Decide the ``"auto"`` options for this graph.

    ``rank_seeds``: on under an initialized process group.
    ``requantize_weights_in_backward``: on when the graph's weights come from
    FSDP-managed modules (FSDP frees the gathered weights after the forward and
    gathers them again for the backward; saved FP4 copies would keep a full-size
    copy of every gathered weight alive in between).
    """
    if options.requantize_weights_in_backward == AUTO:
        options = dataclasses.replace(options, requantize_weights_in_backward=bool(fsdp_managed_inputs(gm)))
    if options.rank_seeds == AUTO:
        options = dataclasses.replace(options, rank_seeds=seed_salt(AUTO) != 0)
    return options


_COLLECTOR_LOCK = threading.Lock()
_collector_holds = 0
_collector_was_enabled = False


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for the block: a compile allocates millions of objects that stay alive
    until it ends, and each full collection in between walks all of them again (on the CPU, the small model's
    first fp4 step spent 2.7 s in collections, 0.7 s less with the compiles paused; ``benchmarks/RESULTS.md``).
    Reference counting still frees what is not in a cycle; the first collection after the block takes what is.
    Nested and concurrent blocks (the forward compile holds one while the backward's is lazy, threads may compile
    at once) re-enable the collector when the last one ends, and only if it was on when the first began."""
    global _collector_holds, _collector_was_enabled
    with _COLLECTOR_LOCK:
        if _collector_holds == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_holds += 1
    try:
        yield
    finally:
        with _COLLECTOR_LOCK:
            _collector_holds -= 1
            if _collector_holds == 0 and _collector_was_enabled:
                gc.enable()


def compile_graph(gm: torch.fx.GraphModule, example_inputs, options: Options, sink: list | None = None):
    """Compile one Dynamo graph with the fp4 backend; returns the compiled callable."""
    with collector_paused():
        return _compile_graph(gm, example_inputs, options, sink)


def _compile_graph(gm: torch.fx.GraphModule, example_inputs, options: Options, sink: list | None):
    options = resolve_options(gm, options)
    target = Target.parse(options.target) if options.target else _detect_target(example_inputs)
    kept_under = report_key(gm, example_inputs, options, target) if options.inductor else None
    if workers_wanted(options, target, kept_under):
        from .runtime import compile_pool

        compile_pool.start()  # FP4_COMPILE_PROCESSES workers, starting while the graph is traced and rewritten
    report = report_lib.CompileReport(options=options, target=str(target), notes=report_lib.uncaptured_regions())
    ranges = flat_input_ranges(example_inputs)
    dynamo_parameters = [i for i, x in enumerate(example_inputs) if isinstance(x, torch.nn.Parameter)]
    # a subclass input (an MXFP4-gathered weight) is several primals of the joint graph
    parameters = [primal for i in dynamo_parameters for primal in ranges[i]]
    rewriter = GraphRewriter(options, target, report, parameters, _parameter_names(gm, dynamo_parameters))
    rewriter.input_ranges = ranges
    compiled = (
        _compile_inductor(gm, example_inputs, rewriter, kept_under)
        if options.inductor
        else _compile_plain(gm, example_inputs, rewriter)
    )
    report_lib.publish(report)
    if sink is not None:
        sink.append(report)
    dump(report, options)
    return compiled


def workers_wanted(options: Options, target: Target, kept_under: str | None) -> bool:
    """Whether to start the compile workers as the graph arrives: it will compile kernels ahead on a GPU, and its
    report is not kept (where it is, AOTAutograd's cache most likely holds the compiled graph, which then compiles
    nothing ahead: a warm re-run starts no process; a miss starts them at the first compile)."""
    if not (options.compile_ahead and target.is_cuda and torch.cuda.is_available()):
        return False
    return kept_under is None or not report_lib.is_stored(kept_under)


def _parameter_names(gm: torch.fx.GraphModule, parameters) -> list:
    """Per Dynamo graph input, the ``named_parameters`` name of a parameter input (None for the others)."""
    from .passes.fx_tools import normalize_module_name

    names = []
    for index, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        source = getattr(node.meta.get("grapharg"), "source", None)
        names.append(normalize_module_name(source.name) if index in parameters and source is not None else None)
    return names


def flat_input_ranges(example_inputs) -> list[range]:
    """The joint graph's primal indices of each Dynamo graph input.

    AOTAutograd passes a traceable tensor subclass (an MXFP4-gathered weight,
    :mod:`fp4.runtime.gathered`) as its inner tensors, one primal each; every
    other input is one primal.
    """
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    def inner_count(value) -> int:
        if not is_traceable_wrapper_subclass(value):
            return 1
        names, _ = value.__tensor_flatten__()
        return sum(inner_count(getattr(value, name)) for name in names)

    ranges, flat = [], 0
    for value in example_inputs:
        count = inner_count(value) if isinstance(value, torch.Tensor) else 1
        ranges.append(range(flat, flat + count))
        flat += count
    return ranges


def _detect_target(example_inputs) -> Target:
    for value in example_inputs:
        if isinstance(value, torch.Tensor):
            return Target.detect(value.device)
    return Target("cpu")


def _compile_plain(gm, example_inputs, rewriter: GraphRewriter):
    """AOTAutograd through dynamo's ``aot_autograd`` backend factory, the entry ``aot_eager`` and Inductor use.

    Calling ``aot_module_simplified`` directly works for one graph, but DDPOptimizer (DDP with several
    gradient buckets) splits the graph per bucket and counts the AOT compiles through the counter this
    entry keeps; without it the backward finds no bucket ("expected same # of fw and bw compiles").
    """
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def rewrite_and_partition(joint, joint_inputs, **kwargs):
        return partition(rewriter(joint), joint_inputs, rewriter, **kwargs)

    def run_as_is(graph, inputs):
        return make_boxed_func(graph)

    def inference(graph, inputs):
        graph = rewriter(graph)
        rewriter.record_forward(graph, training=False)
        return make_boxed_func(graph)

    return aot_autograd(
        fw_compiler=run_as_is,
        bw_compiler=run_as_is,
        inference_compiler=inference,
        partition_fn=rewrite_and_partition,
        decompositions={},
        keep_inference_input_mutations=True,
    )(gm, example_inputs)


class _Decompositions(dict):
    """Inductor's decomposition table less :data:`KEEP_UNDECOMPOSED`; it enters Inductor's FX-graph cache key as
    the function that makes it (some of its entries are C++ functions, which have no stable key of their own;
    what it holds follows from the torch version and the fp4 sources, both in the key)."""

    def __reduce__(self):
        return inductor_decompositions, ()


def inductor_decompositions() -> dict:
    from torch._inductor.decomposition import select_decomp_table

    return _Decompositions(
        (op, fn)
        for op, fn in select_decomp_table().items()
        if getattr(getattr(op, "overloadpacket", None), "__name__", None) not in KEEP_UNDECOMPOSED
    )


@functools.cache
def _source_digest() -> str:
    """A digest of the fp4 package's Python sources (what its passes and lowerings do)."""
    import fp4
    import fp4.codegen
    import fp4.passes
    import fp4.runtime

    digest = hashlib.sha256()
    for package in (fp4, fp4.passes, fp4.codegen, fp4.runtime):
        root = Path(package.__file__).parent
        for path in sorted(root.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_key(options: Options, target: Target) -> str:
    """What the fp4 passes and partitioner depend on besides the graph: the fp4 sources, the options, the target
    and the seed salt (``rank_seeds``: each rank's graph holds its own).  Inductor keys its FX-graph cache and
    AOTAutograd its cache on it (with the graph itself), so a warm re-run of the same model loads the compiled fp4
    graphs as it does any other."""
    salt = seed_salt(options.rank_seeds)
    return hashlib.sha256(f"{_source_digest()}|{options!r}|{target}|{salt}".encode()).hexdigest()


def report_key(gm: torch.fx.GraphModule, example_inputs, options: Options, target: Target) -> str:
    """What a compile report depends on: :func:`cache_key`, the Dynamo graph's code, its inputs (type, shape,
    strides, dtype, device type, ``requires_grad``) and the grad and autocast modes it is compiled under."""
    parts = [cache_key(options, target), gm.code, str(torch.is_grad_enabled())]
    autocast = [device for device in ("cpu", "cuda") if torch.is_autocast_enabled(device)]
    parts += [f"{device}:{torch.get_autocast_dtype(device)}" for device in autocast]
    for value in example_inputs:
        if isinstance(value, torch.Tensor):
            layout = (tuple(value.shape), tuple(value.stride()), value.dtype, value.device.type, value.requires_grad)
            parts.append(f"{type(value).__name__}{layout}")
        else:
            parts.append(repr(value))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _compile_inductor(gm, example_inputs, rewriter: GraphRewriter, kept_under: str):
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._inductor.custom_graph_pass import CustomGraphPass, CustomPartitionerFn

    class Keyed:
        """What Inductor's FX-graph cache and AOTAutograd's cache key on for the fp4 pass and partitioner:
        :func:`cache_key`, and the same key where they pickle the config (not the rewriter they hold)."""

        key = cache_key(rewriter.options, rewriter.target)

        def uuid(self):
            return self.key

        def __reduce__(self):
            return str, (self.key,)

    class Fp4JointPass(Keyed, CustomGraphPass):
        """The fp4 pipeline as Inductor's joint-graph pre-pass (training and inference graphs)."""

        def __call__(self, graph: torch.fx.Graph) -> None:
            module = graph.owning_module
            if rewriter(module) is not module:
                raise AssertionError("fp4 passes must edit the graph in place")

    class Fp4Partitioner(Keyed, CustomPartitionerFn):
        def __call__(self, joint, joint_inputs, **kwargs):
            kwargs.pop("compiler", None)
            return partition(joint, joint_inputs, rewriter, compiler="inductor", **kwargs)

    def inner_compile(graph, inputs, **kwargs):
        if not kwargs.get("is_backward") and kwargs.get("is_inference", False):
            rewriter.record_forward(graph, training=False)
        counts_launches = rewriter.options.launch == "inductor"
        if counts_launches:
            from .runtime import inductor_launch

            launches = inductor_launch.decompose(graph)  # inductor.<op> / plan.<op>.<reason>
            rewriter.report.counters.update({f"launch.{key}": count for key, count in launches.items()})
        with collector_paused():  # the backward's compile runs at the first backward, outside compile_graph
            compiled = compile_fx_inner(graph, inputs, **kwargs)
        if kwargs.get("is_backward") and counts_launches and rewriter.ran:  # counted after the report was kept
            report_lib.store(rewriter.report, kept_under)
        return compiled

    patches = {"joint_custom_pre_pass": Fp4JointPass(), "custom_partitioner_fn": Fp4Partitioner()}
    if rewriter.options.cudagraphs:
        patches["triton.cudagraphs"] = True

    def compile_it():
        return compile_fx(
            gm, example_inputs, inner_compile=inner_compile, config_patches=patches,
            decompositions=inductor_decompositions(),
        )  # fmt: skip

    # AOTAutograd's cache (keyed on Keyed.key too) serves a warm re-run without tracing, the passes or the
    # partition: the report is then the one its first compile kept (report_lib.store), and no warm-up runs (the
    # kernels load from Triton's cache at their first launch).
    compiled = compile_it()
    if not rewriter.ran:
        stored = report_lib.stored(kept_under)
        if stored is not None:
            rewriter.report.restore(stored)
            return compiled
        with torch._functorch.config.patch(enable_autograd_cache=False):  # no report kept: compile to make one
            compiled = compile_it()
    report_lib.store(rewriter.report, kept_under)
    return compiled


def dump(report: report_lib.CompileReport, options: Options) -> None:
    """Write every stage, the partitioned graphs, the summary and the SVG under ``options.dump_dir``."""
    if not options.dump_dir:
        return
    directory = os.path.join(options.dump_dir, f"graph_{report.graph_id}")
    os.makedirs(directory, exist_ok=True)
    files = {}
    for index, (spec, text) in enumerate(report.stages):
        files[f"{index:02d}-{spec.split('{')[0]}.fx"] = text
    if report.forward_graph:
        files["forward.fx"] = report.forward_graph
    if report.backward_graph:
        files["backward.fx"] = report.backward_graph
    files["summary.txt"] = report.summary() + "\n"
    if report.region is not None:
        from .svg import region_layers

        for index, layer in enumerate(region_layers(report.region)):
            files[f"rewritten-{index:02d}-{layer}.svg"] = report.svg(layer)
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as handle:
            handle.write(text)
    report.files = sorted(os.path.join(directory, name) for name in files)
