"""Compile a training graph's kernels ahead of its first step, all at once.

A compiled graph calls a few dozen distinct fp4 kernels (each quantizer and
GEMM variant at each shape bucket), and each would compile, with every
autotuning candidate, the first time it runs: one after another, inside the
first training step.  :func:`start` instead walks the rewritten graph as soon
as the passes are done, calls the CUDA implementation of every fp4 op on
uninitialised tensors of the node's shape, strides and dtype inside
:class:`fp4.runtime.autotune.compile_ahead` (no kernel runs; every candidate
compile is queued on one thread pool), and does so on a background thread, so
the compiles overlap Inductor compiling the rest of the graph.  The plans it
builds are the ones the step looks up (same key: shapes, strides, dtypes,
16-byte alignment); the step's first call of a plan then only times the
already compiled candidates.  The step's first fp4 op call waits for the
warm-up to finish (:func:`fp4.runtime.plans.wait_for_warmups`), so nothing is
compiled twice and no other thread touches the device once the step runs
(CUDA-graph capture forbids that).

Nothing here changes what any op computes: a warm-up that fails (a node it
cannot build arguments for, a kernel that does not compile) is logged and
the step compiles that kernel when it first runs, as it would without it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

import torch

from . import autotune, plans
from .calls import CUDA_IMPLEMENTATIONS

log = logging.getLogger("fp4.warmup")

STATS: Counter = Counter()
"""``plans``: plans the warm-ups built; ``skipped``: op calls they could not build (the step builds those)."""


def op_calls(gm: torch.fx.GraphModule) -> list[tuple[str, torch.fx.Node]]:
    """``(op name, node)`` of every fp4 op node with a CUDA implementation, in graph order."""
    calls = []
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is not None and schema.name in CUDA_IMPLEMENTATIONS:
            calls.append((schema.name, node))
    return calls


def stand_in(value: torch.Tensor, device) -> torch.Tensor:
    """An uninitialised tensor on ``device`` with the shape, strides, dtype and storage offset of ``value`` (a fake
    tensor, say): what building a plan, compiling its kernels and timing them need (no kernel's speed depends on
    the data).  The offset matters: a plan's key holds whether each pointer is 16-byte aligned (Triton
    specializes on it), and a graph passes views such as one layer's seed out of the step's seed vector."""
    offset = value.storage_offset()
    if any(not isinstance(size, int) for size in (*value.shape, *value.stride(), offset)):
        raise TypeError("symbolic sizes")
    extent = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride()))
    storage = torch.empty((offset + extent if value.numel() else offset,), dtype=value.dtype, device=device)
    return storage.as_strided(tuple(value.shape), tuple(value.stride()), offset)


def _argument(value, device):
    """A node argument as a warm-up value: an uninitialised tensor like a node's fake value, else the constant."""
    if isinstance(value, torch.fx.Node):
        fake = value.meta.get("val")
        if not isinstance(fake, torch.Tensor):
            raise TypeError(f"{value.name} has no tensor value")
        try:
            return stand_in(fake, device)
        except TypeError as error:
            raise TypeError(f"{value.name} has {error}") from None
    if isinstance(value, (list, tuple)):
        return type(value)(_argument(item, device) for item in value)
    return value


def warm(calls, device: torch.device) -> int:
    """Build the plans of ``calls`` with their kernels compiled; returns how many plans it built."""
    built = 0
    with autotune.compile_ahead():
        for name, node in calls:
            implementation = CUDA_IMPLEMENTATIONS[name]
            try:
                args = [_argument(arg, device) for arg in node.args]
                if implementation.plans.get(implementation.key(*args)) is not None:
                    continue
                implementation(*args)
                built += 1
            except Exception as error:  # the step builds this plan itself, as it would without a warm-up
                STATS["skipped"] += 1
                log.info("warm-up of %s (%s) skipped: %s", node.name, name, error)
    STATS["plans"] += built
    return built


def start(gm: torch.fx.GraphModule) -> threading.Thread | None:
    """Warm the plans of ``gm``'s fp4 ops on a background thread; None when there is nothing to warm."""
    calls = op_calls(gm)
    devices = {
        arg.meta["val"].device
        for _, node in calls
        for arg in node.args
        if isinstance(arg, torch.fx.Node) and isinstance(arg.meta.get("val"), torch.Tensor)
    }
    if not calls or len(devices) != 1 or next(iter(devices)).type != "cuda" or not torch.cuda.is_available():
        return None
    (device,) = devices

    def run():
        plans.mark_warming()
        with autotune.seconds_in("warmup"):
            try:
                torch.cuda.set_device(device)
                built = warm(calls, device)
                log.info("warm-up: %d plans built, their kernels compiled", built)
            except Exception as error:  # never fail a compile for a warm-up
                log.warning("warm-up failed: %s", error)

    thread = threading.Thread(target=run, name="fp4-warmup", daemon=True)
    plans.add_warmup(thread)
    thread.start()
    return thread
