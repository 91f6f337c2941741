"""Launch plans: everything about a kernel call that does not depend on the data, resolved once.

A training step calls each fp4 op hundreds of times with the same shapes.  The
first call with a given *call signature* (shapes, strides, dtypes, device,
pointer alignment, scalar arguments) builds a plan: it generates the kernel
source, loads it through the kernel cache, lets the autotuner choose a launch
configuration, and compiles the kernel through Triton's JIT.  Every later
call with that signature allocates the outputs and launches the compiled
kernel through Triton's launcher with nothing but the argument list: no spec
objects, no hashing, no file system, no environment reads, no autotuner.

:class:`KernelLaunch` is one kernel at one configuration.  Its first call goes
through ``JITFunction.__getitem__`` (which compiles, or loads the binary from
Triton's cache) and keeps the compiled kernel it returns; later calls hand the
arguments straight to the compiled kernel's launcher, which is what
``JITFunction.run`` itself ends with.  Where Triton's launch hooks are set
(a profiler that wants launch metadata) the JIT path is used every time.

The key of a plan lists what Triton specializes a compiled kernel on: each
tensor's dtype and whether its address is a multiple of 16, and each integer
argument (their values, which cover the ``== 1`` and ``% 16 == 0``
specializations).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import torch
from torch._subclasses.fake_tensor import is_fake

from .autotune import SECONDS, seconds_in

log = logging.getLogger("fp4.plans")

STATS: Counter = Counter()
"""``built.<op>``: plans built; ``compiled_launcher.<kernel>`` / ``jit_launcher.<kernel>``: kernels that launch
through the compiled launcher, or keep the JIT's (counted once, when bound; never on the hot path)."""


def _active(hook) -> bool:
    """Whether a launch hook is set: not None and, for Triton's ``HookChain`` (always present), not empty."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _hook_holder():
    """Where this Triton keeps its launch enter/exit hooks (profilers set them)."""
    try:
        from triton import knobs

        return knobs.runtime
    except (ImportError, AttributeError):  # older Triton keeps them on CompiledKernel
        from triton.compiler import CompiledKernel

        return CompiledKernel


def raw_stream(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as a raw handle (what Inductor's wrapper code passes, too)."""
    return torch._C._cuda_getCurrentRawStream(device.index if device.index is not None else torch.cuda.current_device())


class KernelLaunch:
    """A JIT kernel at one configuration; after its first launch it launches through the compiled launcher.

    ``constexprs`` are the compile-time keyword arguments (tile sizes);
    ``options`` the compile options (``num_warps``, ``num_stages``, ...).  The
    compiled kernel is bound to the specialization of its first call: a
    :class:`KernelLaunch` belongs to one plan key.
    """

    def __init__(self, function, constexprs: dict, options: dict, device: torch.device | None = None):
        self.function = function
        self.constexprs = dict(constexprs)
        self.options = dict(options)
        self.device = device
        self._launch = None

    def warmup(self, grid: tuple, args: list):
        """Compile for these arguments without launching (under Triton's async mode: a pending compile)."""
        return self.function.warmup(*args, grid=grid, **self.constexprs, **self.options)

    def __call__(self, grid: tuple, args: list) -> None:
        if self._launch is not None:
            self._launch(grid, args)
            return
        kernel = self.function[grid](*args, **self.constexprs, **self.options)
        if self.device is not None and self.device.type == "cuda" and kernel is not None:
            self._launch = self._bind(kernel, len(args))
            STATS[f"{'compiled' if self._launch else 'jit'}_launcher.{kernel.name}"] += 1

    def _bind(self, kernel, num_args: int):
        """A launcher taking ``(grid, args)``; None where this Triton's launcher takes other arguments than the JIT."""
        names = list(getattr(self.function, "arg_names", ()))
        tail = []
        for name in names[num_args:]:
            if name not in self.constexprs:
                log.info("%s: argument %s is neither given nor a constexpr; keeping the JIT launch", kernel.name, name)
                return None
            tail.append(self.constexprs[name])
        signature = getattr(getattr(kernel, "src", None), "signature", None)
        if signature is not None and len(signature) != len(names):
            log.info(
                "%s: the compiled launcher's signature differs from the JIT's; keeping the JIT launch", kernel.name
            )
            return None
        run, function, metadata = kernel.run, kernel.function, kernel.packed_metadata
        device, tail, hooks = self.device, tuple(tail), _hook_holder()

        def launch(grid, args):
            if _active(getattr(hooks, "launch_enter_hook", None)) or _active(getattr(hooks, "launch_exit_hook", None)):
                self.function[grid](*args, **self.constexprs, **self.options)
                return
            x = grid[0]
            y = grid[1] if len(grid) > 1 else 1
            z = grid[2] if len(grid) > 2 else 1
            run(x, y, z, raw_stream(device), function, metadata, None, None, None, *args, *tail)

        def first_launch(grid, args):
            # A launcher that takes its arguments otherwise (another Triton) refuses them before launching
            # anything: keep the JIT's launch then.
            try:
                launch(grid, args)
            except (TypeError, ValueError, SystemError) as error:
                log.warning("%s: the compiled launcher refused the JIT's arguments (%s); keeping the JIT launch",
                            kernel.name, error)  # fmt: skip
                STATS[f"jit_launcher.{kernel.name}"] += 1
                self._launch = lambda grid, args: self.function[grid](*args, **self.constexprs, **self.options)
                self._launch(grid, args)
                return
            self._launch = launch

        return first_launch


def aligned(tensor: torch.Tensor | None) -> bool | None:
    """Whether a tensor argument's address is a multiple of 16 (what Triton specializes pointers on).

    A fake tensor has no address: its storage offset decides, storages being allocated 16-byte aligned."""
    if tensor is None:
        return None
    if is_fake(tensor):
        return tensor.storage_offset() * tensor.element_size() % 16 == 0
    return tensor.data_ptr() % 16 == 0


def tensor_key(tensor: torch.Tensor | None) -> tuple | None:
    """The part of a plan key one tensor argument contributes."""
    if tensor is None:
        return None
    return (tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.data_ptr() % 16 == 0)


class PlanCache(dict):
    """Plans of one op, by key: the hot path is ``plans.get(key)``; ``plans.build(key, build)`` adds a plan."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op

    def build(self, key, build):
        started = time.perf_counter()
        plan = self[key] = build()
        if not getattr(_WARMING, "active", False):  # a warm-up thread's time counts as "warmup"
            SECONDS["plans.build"] += time.perf_counter() - started
        STATS[f"built.{self.op}"] += 1
        return plan


WARMUPS: list[threading.Thread] = []
"""Warm-up threads not waited for yet (empty in steady state: the hot path's check is one truthiness test)."""
_WARMING = threading.local()


def add_warmup(thread: threading.Thread) -> None:
    """Register a thread that builds plans ahead of their first call (:mod:`fp4.runtime.warmup`)."""
    WARMUPS.append(thread)


def mark_warming() -> None:
    """This thread builds plans ahead: its own plan look-ups never wait for warm-ups."""
    _WARMING.active = True


def wait_for_warmups() -> None:
    """Block until every warm-up thread registered so far has finished (no-op inside a warm-up thread).

    Every op call waits while one is pending: the warm-up may be building that very plan, and no other thread
    may touch the device once the step's CUDA graphs are being captured.
    """
    if getattr(_WARMING, "active", False):
        return
    while WARMUPS:
        try:
            thread = WARMUPS.pop(0)
        except IndexError:  # another thread took the last one
            return
        with seconds_in("warmup.wait"):
            thread.join()
