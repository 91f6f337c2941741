"""FSDP2 helpers: gather weights as MXFP4 codes (:func:`enable_fp4_all_gather`) and count all-gather bytes.

Usage, before ``fully_shard``::

    fp4.distributed.enable_fp4_all_gather(model)   # eligible nn.Linear weights gather as MXFP4
    for block in model.layers:
        block.compile(backend="fp4")
        fully_shard(block)
    fully_shard(model)

    with fp4.distributed.count_all_gather_bytes(model) as counted:
        model(tokens, targets).backward()
    counted.bytes  # bytes this rank received from all-gathers (forward and backward)

The eligible weights are those the backend rewrites (the default layer policy:
every ``nn.Linear`` but the output head; contraction size K a multiple of 32).
Weights whose rows split evenly over the ranks gather as 21/32 B per element;
the others (FSDP pads their shards) as one padded uint8 buffer, 1 B per
element, listed in the plan's ``packed``.  Each becomes an
:class:`fp4.runtime.gathered.FP4AllGatherWeight`; see that module for how the
gather works and what the gathered weight can be used for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from fp4.runtime.formats import GROUP_SIZE
from fp4.runtime.gathered import FP4AllGatherWeight


@dataclass
class AllGatherPlan:
    """What :func:`enable_fp4_all_gather` did: the layers gathered as MXFP4, and the others with the reason."""

    gathered: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # layer name -> why its weight gathers in its dtype
    # gathered layers whose codes, scales and mask gather packed in the padded shard's shape (1 B per element)
    packed: dict[str, str] = field(default_factory=dict)


def _linear_layers(model: torch.nn.Module):
    from fp4.runtime.oracle import QuartetLinear

    return [(n, m) for n, m in model.named_modules() if type(m) in (torch.nn.Linear, QuartetLinear)]


def enable_fp4_all_gather(model: torch.nn.Module, select=None, world_size: int | None = None) -> AllGatherPlan:
    """Make FSDP2 gather the weights of ``model``'s eligible linear layers as MXFP4 codes, scales and clip masks.

    Call before ``fully_shard``.  ``select(name, module)`` picks the layers
    (default: the backend's layer policy, every linear layer but the output
    head); a selected layer stays gathered in its dtype when K is not a
    multiple of 32, with the reason in the returned plan.  A layer whose N rows
    do not split evenly over ``world_size`` ranks (the FSDP shard group's size;
    default: the process group's, so pass it under HSDP) gathers as MXFP4 packed
    in the padded shard's shape (1 B per element instead of 21/32), listed in the
    plan's ``packed`` with the reason.  ``world_size`` only informs the plan: each
    gather takes the form its own shard group needs.  The
    layers must then run as Quartet layers: compiled with the fp4
    backend (whose include/exclude patterns must select them too) or
    quartetized (``fp4.quartetize``); anything else that reads such a weight
    raises an error.
    """
    from fp4.options import default_layer_filter
    from torch.distributed.tensor import DTensor

    select = default_layer_filter if select is None else select
    if world_size is None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("enable_fp4_all_gather needs world_size= or an initialized process group")
        world_size = dist.get_world_size()
    plan = AllGatherPlan()
    for name, module in _linear_layers(model):
        if not select(name, module):
            continue
        weight = module.weight
        if isinstance(weight, DTensor):
            raise ValueError(f"enable_fp4_all_gather must run before fully_shard: {name}.weight is already sharded")
        n, k = weight.shape
        if not isinstance(weight.data, FP4AllGatherWeight):
            if k % GROUP_SIZE:
                plan.kept[name] = f"contraction dim K={k} is not a multiple of {GROUP_SIZE}"
                continue
            module.weight = torch.nn.Parameter(FP4AllGatherWeight(weight.data), requires_grad=weight.requires_grad)
        plan.gathered.append(name)
        if world_size == 1:
            plan.packed[name] = "one rank: FSDP copies a single all-gather input instead of gathering"
        elif n % world_size:
            rows = -(-n // world_size)
            plan.packed[name] = (
                f"N={n} rows do not split evenly over {world_size} ranks: each rank sends the padded shard "
                f"uint8 [{rows}, {k}] (FSDP requires the padded shape)"
            )
    return plan


@dataclass
class AllGatherBytes:
    """Bytes of every all-gather FSDP2 issued while counting: ``sent`` (this rank's shard) and ``bytes`` received."""

    calls: int = 0
    sent: int = 0
    bytes: int = 0


def _counting_comm(inner, counted: AllGatherBytes):
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather

    class CountingAllGather(DefaultAllGather):
        def allocate(self, size, *, dtype, device):
            return inner.allocate(size, dtype=dtype, device=device)

        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            counted.calls += 1
            counted.sent += input_tensor.numel() * input_tensor.element_size()
            counted.bytes += output_tensor.numel() * output_tensor.element_size()
            return inner(output_tensor, input_tensor, group, async_op)

    return CountingAllGather()


@contextlib.contextmanager
def count_all_gather_bytes(model: torch.nn.Module):
    """Count the bytes of the all-gathers of every ``fully_shard`` module in ``model`` within the block."""
    from torch.distributed.fsdp import FSDPModule

    counted = AllGatherBytes()
    groups = [
        group
        for module in model.modules()
        if isinstance(module, FSDPModule)
        for group in module._get_fsdp_state()._fsdp_param_groups
    ]
    previous = [group._all_gather_comm for group in groups]
    for group, comm in zip(groups, previous):
        group._all_gather_comm = _counting_comm(comm, counted)
    try:
        yield counted
    finally:
        for group, comm in zip(groups, previous):
            group._all_gather_comm = comm
