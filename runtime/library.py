"""The ``fp4`` operator library: one ``torch.library.Library`` that defines every op and holds its kernels.

Ops are declared with :func:`fp4_op`, a decorator in the shape of
``torch.library.custom_op``: the schema is inferred from the Python signature,
the decorated function becomes the implementation for every device
(``CompositeExplicitAutograd``), and ``.register_fake`` adds the meta
implementation.  The difference is the dispatch path.  ``custom_op`` routes
every call through a Python autograd layer and an aliasing check before the
kernel (about 40 µs per call, measured on a CPU: 56 µs against 16 µs for a
plain schema); compiled training graphs call the fp4 ops hundreds of times a
step, so the ops are plain schemas dispatched in C++, and the device kernels
(:func:`register_cuda`) are reached without Python in between.

None of the ops is differentiable: the compiler inserts them after autograd
has built the backward graph, and the eager oracle calls them inside its own
``autograd.Function``.  Without an autograd kernel the dispatcher falls back
to "autograd not implemented", which only complains if a gradient is asked of
an op's output.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence

import torch
import torch.utils._pytree as pytree

NAMESPACE = "fp4"

CHECK_FINITE_ENV = "FP4_CHECK_FINITE"
"""Set to ``1`` before ``fp4`` is imported: every fp4 op call (reference and device kernels alike) checks its
floating-point outputs and raises ``FloatingPointError`` naming the op when one holds a NaN or an infinity while
its floating-point inputs (tensors and numbers) held none: the op that made the first one.  Each check waits for
the op's kernels (a device sync per call); calls inside CUDA-graph capture are not checked (docs/backend.md)."""

LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_CUDA_REGISTERED: set[str] = set()


class Fp4Op:
    """A defined op: call it like the function it was made from; ``register_fake`` adds its meta function."""

    def __init__(self, qualname: str, function: Callable, tags: Sequence[torch.Tag]):
        namespace, _, name = qualname.partition("::")
        if namespace != NAMESPACE or not name:
            raise ValueError(f"fp4 ops are named '{NAMESPACE}::<name>', got {qualname!r}")
        schema = torch.library.infer_schema(function, mutates_args=())
        LIBRARY.define(name + schema, tags=tuple(tags))
        LIBRARY.impl(name, checked_if_asked(qualname, function), "CompositeExplicitAutograd")
        self.qualname, self.name, self.function = qualname, name, function
        self.__doc__ = function.__doc__
        self._opoverload = getattr(getattr(torch.ops, NAMESPACE), name).default

    def register_fake(self, fake: Callable) -> Callable:
        torch.library.register_fake(self.qualname, fake, lib=LIBRARY)
        return fake

    def __call__(self, *args, **kwargs):
        return self._opoverload(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Fp4Op({self.qualname})"


def fp4_op(qualname: str, *, tags: Sequence[torch.Tag] = ()) -> Callable[[Callable], Fp4Op]:
    """``@fp4_op("fp4::name")`` over a typed function defines the op ``torch.ops.fp4.name``."""
    return lambda function: Fp4Op(qualname, function, tags)


def register_cuda(implementations: dict[str, Callable]) -> None:
    """Make each function the CUDA kernel of its op (``{"fp4::<name>": function}``; once per process per op, a
    second call is a no-op)."""
    for qualname, function in implementations.items():
        name = qualname.partition("::")[2]
        if name not in _CUDA_REGISTERED:
            LIBRARY.impl(name, checked_if_asked(qualname, function), "CUDA")
            _CUDA_REGISTERED.add(name)


def _not_finite(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.numel() > 0 and not bool(torch.isfinite(tensor).all())


def checked_if_asked(qualname: str, function: Callable) -> Callable:
    """``function`` itself, or with :data:`CHECK_FINITE_ENV` set, ``function`` followed by the finiteness check."""
    if os.environ.get(CHECK_FINITE_ENV, "0") != "1":
        return function

    @functools.wraps(function)
    def checked(*args, **kwargs):
        out = function(*args, **kwargs)
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.is_cuda for t in outputs) and torch.cuda.is_current_stream_capturing():
            return out
        bad = [index for index, tensor in enumerate(outputs) if _not_finite(tensor)]
        if not bad:
            return out
        arguments = pytree.tree_leaves((args, kwargs))
        inputs = [a for a in arguments if isinstance(a, torch.Tensor)]
        others = [a for a in arguments if not isinstance(a, torch.Tensor)]
        if not any(_not_finite(t) for t in inputs) and all(math.isfinite(a) for a in others if isinstance(a, float)):
            shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs)
            raise FloatingPointError(
                f"{qualname} returned non-finite values (output {', '.join(map(str, bad))}) from finite inputs: "
                f"tensors {shapes}; other arguments {others} ({CHECK_FINITE_ENV}=1)"
            )
        return out

    return checked


def has_cuda_kernel(qualname: str) -> bool:
    """Whether the dispatcher holds a CUDA kernel for the op (not only the device-generic implementation)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA")
