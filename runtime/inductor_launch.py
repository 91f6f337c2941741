"""The Inductor launch path: fp4 kernels launched from Inductor's wrapper code instead of through launch plans.

On the plan path (:mod:`fp4.runtime.calls`) a compiled graph calls each fp4
op through the dispatcher; its CUDA implementation looks the call signature up
and launches the plan's kernel through Triton's compiled launcher.  Here every
op in :data:`fp4.runtime.calls.CALLS` also exists as ``fp4_triton::<name>``
(same schema), registered with ``torch.library.triton_op``.  Its body builds the
plan path's own call object for the signature (``calls.CALLS``: the same
spec, kernel source, grid and argument list, built on fake tensors), lets the
same autotuner choose each kernel's configuration (so it is the configuration
the plan runs: the choice is shared per kernel source, target and shape
bucket, in memory and on disk), then allocates the outputs and calls
``wrap_triton(kernel)[grid](*arguments, **tile_sizes, num_warps=..., num_stages=...)``.
Called eagerly it launches the plan's kernel as the plan would.  Under
AOTAutograd's functionalization a ``triton_op`` is traced into its body, so
Inductor sees the kernel launches themselves (``triton_kernel_wrapper_functional``)
and writes them into its generated wrapper code: no dispatcher, no Python plan
look-up per call.

The fp4 backend inserts its ops after AOTAutograd traced the model, so with the
backend option ``launch="inductor"`` it decomposes them itself: :func:`decompose`
traces each fp4 op node of a partitioned graph through its twin, just before
Inductor compiles the graph.  The graphs, reports and dumps before that stay
as they are.

An op call that cannot go this way stays the plan path's op in the graph,
with the reason logged once and counted in :data:`COUNTERS`
(``plan.<op>.<reason>``; ``inductor.<op>`` counts the calls that launch from
Inductor's code):

* tensors off CUDA devices, or a signature the plan runs the reference for
  (a dtype the kernels do not cover, a seed on another device);
* symbolic sizes (a plan is built for concrete sizes);
* an integer kernel argument outside int32's range: Inductor types an integer
  argument of a user kernel as int32 whenever it is at most int32's maximum
  (where Triton's own launch may take it as int64), and fails on a constant
  above it.  No fp4 kernel takes such an argument (the Philox streams' 64-bit
  addends travel as two signed 32-bit words, ``fp4.codegen.lanes.stream_addend``);
  the check guards a kernel that would;
* a GEMM the autotuner gave to cuBLAS (no Triton kernel to emit; also where
  only its epilogue is a Triton kernel, on cuBLAS's product) or to a variant
  reading TMA tensor descriptors (``wrap_triton`` outside Dynamo passes no
  descriptor metadata, so a descriptor cannot be traced);
* a kernel compile option other than ``num_warps``/``num_stages`` that Inductor
  would not pass on.  Every fp4 kernel is compiled with ``enable_fp_fusion=False``
  (no multiply-add contraction: the reference rounds each step), and Inductor
  compiles a user kernel with Triton's default for it.  So the kernels go this
  way only where that default is off: set ``TRITON_DEFAULT_FP_FUSION=0`` before
  the process starts (Inductor's compile workers take the environment they were
  started with).  The setting changes the default for kernels that do not choose;
  Inductor's own kernels and the fp4 plans choose.

``bias_grad`` (its plan ends with a torch reduction that Inductor would reorder)
and the NVFP4 recipes' ops are not covered.

Compile time: Inductor analyses each traced launch (which arguments the kernel
writes) by generating the kernel's TTIR, once while tracing and once while
lowering, per launch; the plan path compiles nothing per call site.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import operator
import os
from collections import Counter
from typing import NamedTuple

import torch
import torch.fx

from . import OPS, warmup
from .calls import CALLS, Fallback, GemmCall
from .launch import CUBLAS, Epilogue, cublas_fold_gemm, device_target

log = logging.getLogger("fp4.inductor_launch")

NAMESPACE = "fp4_triton"
"""The namespace of the ``triton_op`` twins: ``torch.ops.fp4_triton.<name>``."""

LAUNCH_OPTIONS = ("num_warps", "num_stages")
"""The compile options of a kernel that a ``wrap_triton`` launch carries into Inductor's compile."""

FP_FUSION_ENV = "TRITON_DEFAULT_FP_FUSION"
"""Triton's default for ``enable_fp_fusion``, which Inductor's compile of a user kernel takes."""

COUNTERS: Counter = Counter()
"""``inductor.<op>``: op calls traced to Inductor's launches; ``plan.<op>.<reason>``: op calls left on the plan."""


def fp_fusion_default() -> bool:
    """Whether Triton compiles a kernel that does not choose with multiply-add contraction."""
    try:
        from triton import knobs

        return bool(knobs.language.default_fp_fusion)
    except (ImportError, AttributeError):  # a Triton without knobs reads the variable at compile time
        return os.environ.get(FP_FUSION_ENV, "1").lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------------------------------------
# preparing a signature: the plan path's call object, every kernel's configuration chosen


class Prepared(NamedTuple):
    """One op signature: the plan path's call object (configurations chosen), or why it stays on the plan path."""

    call: object
    reason: str | None


_PREPARED: dict = {}
_WARNED: set = set()


def _signature(args) -> tuple:
    """What a prepared call depends on: each tensor's shape, strides, dtype, device and its device's target."""
    return tuple(
        (tuple(arg.shape), arg.stride(), arg.dtype, arg.device, str(device_target(arg.device)))
        if isinstance(arg, torch.Tensor)
        else arg
        for arg in args
    )


def _symbolic(args) -> bool:
    return any(
        not isinstance(size, int)
        for arg in args
        if isinstance(arg, torch.Tensor)
        for size in (*arg.shape, *arg.stride())
    )


def prepare(qualname: str, args) -> Prepared:
    """The :class:`Prepared` of ``fp4::<name>`` at the signature of ``args`` (built once per signature)."""
    if _symbolic(args):
        return Prepared(None, "symbolic sizes")
    key = (qualname, _signature(args), fp_fusion_default())
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = _PREPARED[key] = _build(qualname, args)
    return prepared


def _count(qualname: str, reason: str | None) -> None:
    """Count one op call on its way (:data:`COUNTERS`); log each reason to keep a plan once."""
    op = qualname.partition("::")[2]
    if reason is None:
        COUNTERS[f"inductor.{op}"] += 1
        return
    COUNTERS[f"plan.{op}.{reason}"] += 1
    if (op, reason) not in _WARNED:
        _WARNED.add((op, reason))
        log.warning("fp4::%s keeps its plan launch: %s", op, reason)


def _build(qualname: str, args) -> Prepared:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _disable_current_modes

    devices = {a.device for a in args if isinstance(a, torch.Tensor)}
    if any(device.type != "cuda" for device in devices):
        return Prepared(None, f"tensors on {sorted(map(str, devices))}: the op has no kernel there")
    with _disable_current_modes():  # whatever traces this call, the plan is built and tuned outside it
        fake_mode = FakeTensorMode()
        with fake_mode:
            fakes = [
                torch.empty_strided(tuple(a.shape), a.stride(), dtype=a.dtype, device=a.device)
                if isinstance(a, torch.Tensor)
                else a
                for a in args
            ]
            call = CALLS[qualname](*fakes)
        if isinstance(call, Fallback):
            return Prepared(None, f"the plan runs the reference ({call.reason})")
        # the autotuner times on uninitialised tensors of the signature, and only where it has no choice yet
        stand_in = lambda a: warmup.stand_in(a, a.device) if isinstance(a, torch.Tensor) else a
        real = functools.cache(lambda: [stand_in(a) for a in fakes])
        if isinstance(call, GemmCall):
            reason = _choose_gemm(call, real)
        else:
            reason = _choose(call.plan, lambda: call.inputs(*real()))
        if reason is not None:
            return Prepared(None, reason)
        launches = []  # the launches the body will emit, each checked
        with fake_mode:
            _emit_call(call, fakes, lambda launch, grid, arguments: launches.append((launch, arguments)))
        for launch, arguments in launches:
            reason = _options_reason(launch) or _arguments_reason(launch, arguments)
            if reason is not None:
                return Prepared(None, reason)
    return Prepared(call, None)


def _choose(plan, sample) -> str | None:
    """Choose the configuration of a kernel plan (``sample()``: its ``(inputs, seed)`` for timing)."""
    if plan.kernel is not None:  # else an empty tensor: no kernel

        def arguments():
            inputs, seed = sample()
            return plan.arguments(inputs, plan.allocate(), seed)

        plan.kernel.choose(functools.cache(arguments))
    return None


def _choose_gemm(call: GemmCall, real) -> str | None:
    """Choose the configurations of a GEMM call's kernels; why the GEMM has no kernel to emit, if so."""
    for index, plan in enumerate(call.folds or ()):
        _choose(plan, lambda i=2 * index: ([t.contiguous() for t in real()[i : i + 2]], None))

    def sample():
        a, a_scales, b, b_scales, *epilogue_args = real()
        epilogue = Epilogue(*epilogue_args)
        operands = call.operands(a, a_scales, b, b_scales)
        return operands, epilogue, lambda: cublas_fold_gemm(*operands, epilogue)

    config = call.gemm.choose(functools.cache(sample))
    if config == CUBLAS:
        return "the autotuner chose cuBLAS (torch._scaled_mm) for this GEMM: no Triton kernel to emit"
    if call.gemm.variants[config.name].product == "cublas":
        return (
            f"the autotuner chose the variant {config.name!r} for this GEMM: its product is cuBLAS's "
            "(torch._scaled_mm), no Triton kernel to emit"
        )
    if call.gemm.variants[config.name].tma:
        return (
            f"the chosen GEMM variant {config.name!r} reads TMA tensor descriptors, which wrap_triton cannot trace "
            "outside Dynamo"
        )
    return None


def _options_reason(launch) -> str | None:
    """Why a kernel's compile options would not survive Inductor's compile of it (None when they do)."""
    others = {key: value for key, value in launch.options.items() if key not in LAUNCH_OPTIONS}
    fusion = others.pop("enable_fp_fusion", None)
    if others:
        return f"the kernel's compile options {others} have no counterpart in a wrap_triton launch"
    if fusion is not None and fusion != fp_fusion_default():
        return (
            f"the kernel is compiled with enable_fp_fusion={fusion} and Inductor compiles it with Triton's default "
            f"({not fusion}): set {FP_FUSION_ENV}={int(fusion)} before the process starts"
        )
    return None


INT32 = torch.iinfo(torch.int32)


def _arguments_reason(launch, arguments) -> str | None:
    """Why a kernel's argument list would not reach the kernel intact from Inductor's code (None when it does).

    Inductor types an integer argument of a user kernel as int32 whenever it is at most int32's maximum, with no
    lower bound, where Triton's launcher takes it as int64: an argument below int32's minimum would be cut to 32
    bits; and it fails to compile a graph whose constant argument is above int32's maximum (torch 2.11)."""
    for name, value in zip(launch.function.arg_names, arguments):
        if isinstance(value, int) and not isinstance(value, bool) and not INT32.min <= value <= INT32.max:
            return f"its integer argument {name}={value} is outside int32's range, which Inductor does not pass intact"
    return None


# ----------------------------------------------------------------------------------------------------------
# the twins' bodies: allocate, then launch the plan's kernels with the plan's arguments


def _emit(launch, grid, arguments) -> None:
    """Launch a plan's kernel: traced, as a ``wrap_triton`` launch Inductor emits; else as the plan launches it."""
    function = torch.library.wrap_triton(launch.function)
    if function is launch.function:  # not tracing (the op called eagerly)
        launch(grid, arguments)
        return
    options = {key: launch.options[key] for key in LAUNCH_OPTIONS}
    function[grid](*arguments, **launch.constexprs, **options)


def _emit_plan(plan, inputs, seed=None, emit=_emit) -> tuple:
    outputs = plan.allocate()
    if plan.kernel is not None:
        launch, grid = plan.kernel.chosen_launch()
        emit(launch, grid, plan.arguments(inputs, outputs, seed))
    return tuple(outputs)


def _emit_call(call, args, emit=_emit):
    """The op's outputs for ``args``, its kernels launched by ``emit(launch, grid, arguments)``."""
    if not isinstance(call, GemmCall):
        return _emit_plan(call.plan, *call.inputs(*args), emit=emit)
    a, a_scales, b, b_scales, *epilogue_args = args
    epilogue = Epilogue(*epilogue_args)
    operands = call.operands(a, a_scales, b, b_scales, fold=lambda plan, inputs: _emit_plan(plan, inputs, emit=emit))
    launch, grid, arguments, out = call.gemm.arguments(call.gemm.chosen, operands, epilogue)
    emit(launch, grid, arguments)
    return out


def _run(qualname: str, args):
    prepared = prepare(qualname, args)
    _count(qualname, prepared.reason)
    if prepared.reason is not None:
        return FP4_OPS[qualname](*args)
    return _emit_call(prepared.call, args)


# ----------------------------------------------------------------------------------------------------------
# registration


def _register(qualname: str):
    name = qualname.partition("::")[2]
    signature = inspect.signature(OPS[name].function)

    def body(*args, **kwargs):
        return _run(qualname, signature.bind(*args, **kwargs).args)

    body.__signature__ = signature
    body.__name__ = name
    body.__doc__ = f"``{qualname}`` with its kernels launched from Inductor's wrapper code."
    torch.library.triton_op(f"{NAMESPACE}::{name}", body, mutates_args=())
    return getattr(getattr(torch.ops, NAMESPACE), name).default


FP4_OPS = {qualname: getattr(torch.ops.fp4, qualname.partition("::")[2]).default for qualname in CALLS}
"""The fp4 ops that have a twin, by qualified name."""

TWINS = {FP4_OPS[qualname]: _register(qualname) for qualname in CALLS}
"""``torch.ops.fp4.<name>.default`` -> ``torch.ops.fp4_triton.<name>.default``."""


# ----------------------------------------------------------------------------------------------------------
# decomposing a graph's fp4 ops


def decompose(gm: torch.fx.GraphModule) -> Counter:
    """Replace each fp4 op node of ``gm`` that has a twin by the twin traced under functionalization: the kernel
    launches Inductor emits.  A node whose call keeps its plan stays as it is.  In place.

    Returns what happened, by ``inductor.<op>`` / ``plan.<op>.<reason>``."""
    before = Counter(COUNTERS)
    changed = False
    for node in list(gm.graph.nodes):
        twin = TWINS.get(node.target) if node.op == "call_function" else None
        if twin is not None:
            changed |= _decompose_node(gm.graph, node, twin)
    if changed:
        gm.graph.lint()
        gm.recompile()
    return Counter(COUNTERS) - before


def _decompose_node(graph: torch.fx.Graph, node: torch.fx.Node, twin) -> bool:
    from torch._guards import detect_fake_mode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    qualname = node.target._schema.name
    arguments = []
    for index, argument in enumerate(node.target._schema.arguments):
        if index < len(node.args):
            arguments.append(node.args[index])
        else:
            arguments.append(node.kwargs.get(argument.name, argument.default_value))
    inputs = [a for a in arguments if isinstance(a, torch.fx.Node)]
    values = iter([a.meta.get("val") for a in inputs])
    values_of_arguments = [next(values) if isinstance(a, torch.fx.Node) else a for a in arguments]
    tuple_users = [u for u in node.users if u.op != "call_function" or u.target is not operator.getitem]
    if not all(isinstance(a.meta.get("val"), torch.Tensor) for a in inputs):
        reason = "an input without a tensor value"
    elif len(node.target._schema.returns) > 1 and tuple_users:
        reason = f"its outputs are used as one tuple by {tuple_users[0].name}"
    else:
        reason = prepare(qualname, values_of_arguments).reason
    if reason is not None:
        _count(qualname, reason)
        return False

    def call(*tensors):
        supplied = iter(tensors)
        return twin(*(next(supplied) if isinstance(a, torch.fx.Node) else a for a in arguments))

    values = [a.meta["val"] for a in inputs]
    fake_mode = detect_fake_mode(values)
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        traced = make_fx(dispatch_functionalize(call))(*values)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(node):
        result = graph.graph_copy(traced.graph, dict(zip(placeholders, inputs, strict=True)))
    if isinstance(result, (tuple, list)):
        for user in list(node.users):
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)
    return True
