"""``fp4 bench --sections distributed``: data-parallel Hugging Face Llama training, fp4 against bf16, on N GPUs.

One command starts its own ranks (one process per GPU, NCCL; ``--device cpu``: gloo processes on the CPU)::

    fp4 bench --sections distributed --gpus 2 --scaling --check --models llama1b-8l,llama7b-8l --out bench-results

``--gpus 2,4,8`` runs every configuration and mode on 2, then 4, then 8 GPUs, each GPU count in a fresh group of
processes; ``--scaling`` adds a 1-GPU run of every mode (the same recipe on a one-rank process group) and reports
tokens/s per GPU against it.  Every rank is started with NVLink multicast off (``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``, whatever the caller's environment says).

Configurations (``--models``): those of :mod:`fp4.bench_model` (``llama7b-8l``, ``llama1b-8l``, ``small-6l``) and
``tiny-2l`` for smoke tests.  Every rank trains ``LlamaForCausalLM`` (random weights, ``sdpa`` attention, AdamW) on
its own batch of the configuration's shape, so the global batch grows with the GPU count.  Modes (``--modes``):

* ``ddp_bf16``: ``DDP(torch.compile(model))``, bf16 parameters (Inductor);
* ``ddp_fp4``: ``DDP(torch.compile(model, backend="fp4"))``, bf16 parameters;
* ``fsdp_bf16``: the torchtitan FSDP2 recipe, each decoder layer ``block.compile()`` then ``fully_shard``, then the
  root; fp32 parameters, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``;
* ``fsdp_fp4``: the same with ``block.compile(backend="fp4")``;
* ``fsdp_fp4_all_gather``: and ``fp4.distributed.enable_fp4_all_gather(model)`` first (linear weights gathered as
  MXFP4 codes).

Any fp4 mode of :mod:`fp4.bench_model` may follow the wrapper (``ddp_fp4_cudagraphs``,
``fsdp_fp4_cudagraphs_all_gather``).  ``--no-inductor`` runs the fp4 modes with ``inductor=False`` and the bf16
modes with ``backend="aot_eager"`` (plain FX graphs: no code generation; the CPU smoke test and the bit-for-bit
check use it).

Per configuration, mode and GPU count: the first step (it compiles), the median and maximum step time from the third
step on (a step ends when the slowest rank has read back its loss), tokens/s per GPU, peak memory per GPU (steps 2
on, the largest rank's), the bytes each rank sends to FSDP's all-gathers per step (counted by
``fp4.distributed.count_all_gather_bytes`` around the steps, next to the number predicted from the parameter
shapes), the ratio to the bf16 mode of the same wrapper, and with ``--scaling`` tokens/s per GPU against one GPU.

``--check`` compares the gradients of step 1 with the single-process run averaged over the ranks: every rank runs
the same recipe in one process (with ``--no-inductor`` the eager model, ``fp4.quartetize`` of it for fp4 modes;
with Inductor the model compiled as the wrapper compiles it), in the dtype the wrapper computes in, on its own batch
from the same seed, and the ranks average those gradients in the dtype the wrapper reduces in (bf16 for DDP, fp32
for FSDP2).  Where the reduction order allows (at most two ranks, whose sum does not depend on the order; one graph,
not a DDP split; the CPU, where attention's backward is deterministic) every gradient must be equal bit for bit;
elsewhere the largest relative (Frobenius) difference over the parameters must stay within ``CHECK_BOUND``.  The
1-GPU baseline that ``--scaling`` adds is not checked.

Writes into ``--out``, as each mode finishes (a run cut short keeps what it measured):
``bench_distributed_records.jsonl`` (the records so far, one line each), ``bench_distributed_<card>.json`` (one
record per configuration, mode and GPU count, with the ratios) and ``bench_distributed.md`` (the table; at the end
with how each group of ranks ended).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from fp4.core import DEFAULT_RECIPE

from .bench_model import CONFIGS as MODEL_CONFIGS
from .bench_model import (
    FP4_MODES,
    _release_memory,
    build_model,
    card_slug,
    failed_row,
    steady_steps,
    table_head,
    utc_date,
)

CONFIGS = {
    **MODEL_CONFIGS,
    # two decoder layers of seven linear layers whose rows split evenly over 2, 4 or 8 ranks
    "tiny-2l": dict(hidden=64, intermediate=96, layers=2, heads=2, vocab=64, batch=2, seq=16),
}
DEFAULT_MODELS = "llama1b-8l,llama7b-8l"
DEFAULT_MODES = ("ddp_bf16", "ddp_fp4", "fsdp_bf16", "fsdp_fp4", "fsdp_fp4_all_gather")
WRAPPERS = ("ddp", "fsdp")

# Every rank the command starts gets these, whatever the caller's environment says: NVLink multicast
# (NVLS) stays off in NCCL, PyTorch's symmetric memory and NVSHMEM.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

# Largest relative (Frobenius) difference of any step-1 gradient from the averaged single-process run where the
# check cannot be bit for bit (more than two ranks, a DDP graph split, attention's backward on CUDA).
# Numerical differences stay at the level of a few bf16 roundings (2^-8 each); a wiring error does not: a rank
# whose gradients are missing from the average, or not divided by the rank count, is off by |g_rank - g_avg|, which
# the check reports beside (``rank_gradient_spread``, measured on the same step: ranks' batches differ).
CHECK_BOUND = 2.0**-4

SEED = 100
# exit code of a rank whose modes ran but some failed (reported in their records); any other non-zero code is a
# rank that died, and the other ranks would wait for it in their collectives
MODES_FAILED = 3
RECORDS_FILE = "bench_distributed_records.jsonl"
RECORD_FIELDS = (
    "card", "gpus", "date", "command", "backend", "config", "mode", "wrapper", "precision", "compiler",
    "fp4_all_gather", "param_dtype", "batch", "seq", "steps", "first_step_s", "median_step_ms", "max_step_ms",
    "tokens_per_s_per_gpu", "tokens_per_s", "peak_memory_gib", "all_gather_bytes_per_step",
    "all_gather_bytes_predicted", "vs_bf16", "scaling_efficiency", "speedup_vs_1_gpu", "check", "env",
)  # fmt: skip


@dataclass(frozen=True)
class Mode:
    name: str
    wrapper: str  # "ddp" or "fsdp"
    precision: str  # "bf16", or an fp4 mode of fp4.bench_model ("fp4", "fp4_cudagraphs", ...)
    fp4_all_gather: bool = False

    @property
    def fp4(self) -> bool:
        return self.precision != "bf16"

    def fp4_options(self, inductor: bool) -> dict:
        return {**FP4_MODES[self.precision], **({} if inductor else {"inductor": False})}


def parse_mode(name: str) -> Mode:
    wrapper, _, rest = name.partition("_")
    all_gather = rest.endswith("_all_gather")
    precision = rest.removesuffix("_all_gather") if all_gather else rest
    fp4_modes = ", ".join(f"{w}_{m}" for w in WRAPPERS for m in FP4_MODES)
    if wrapper not in WRAPPERS or (precision != "bf16" and precision not in FP4_MODES):
        raise ValueError(f"unknown mode {name!r}; known: ddp_bf16, fsdp_bf16, {fp4_modes}, fsdp_<fp4 mode>_all_gather")
    if all_gather and (wrapper != "fsdp" or precision == "bf16"):
        raise ValueError(f"{name}: the FP4 all-gather is an FSDP2 option of an fp4 mode (fsdp_fp4_all_gather)")
    if all_gather and FP4_MODES[precision].get("recipe", DEFAULT_RECIPE) != DEFAULT_RECIPE:
        raise ValueError(f"{name}: the FP4 all-gather gathers MXFP4 codes (the quartet recipe only)")
    return Mode(name, wrapper, precision, all_gather)


# ----------------------------------------------------------------------------
# one rank


def _clean(name: str) -> str:
    """A parameter's name in the unwrapped model (DDP's ``module.`` and torch.compile's ``_orig_mod.`` removed)."""
    return name.replace("_orig_mod.", "").removeprefix("module.")


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _batches(shape: dict, rank: int, device: str):
    import torch

    generator = torch.Generator(device=device).manual_seed(1000 * rank + 1)
    return [
        torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]), device=device, generator=generator)
        for _ in range(2)
    ]


def _build(shape: dict, device: str, dtype):
    import torch

    model = build_model(shape, device)  # bf16: the values every mode starts from, bit for bit
    return model if dtype == torch.bfloat16 else model.to(dtype)


class _CountingBackend:
    """A Dynamo backend that counts the graphs it compiles."""

    def __init__(self, inner):
        self.inner, self.graphs = inner, 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


def _compiler(mode: Mode, inductor: bool):
    """(torch.compile keyword arguments, what counts its graphs or None, a label of the compiler)."""
    import fp4

    if mode.fp4:
        backend = fp4.configure(**mode.fp4_options(inductor))
        return {"backend": backend}, backend, "fp4" + ("" if inductor else " (inductor=False)")
    if inductor:
        return {}, None, "inductor"
    from torch._dynamo.backends.debugging import aot_eager

    counting = _CountingBackend(aot_eager)
    return {"backend": counting}, counting, "aot_eager"


def _graphs(counter) -> int | None:
    if counter is None:
        return None
    if hasattr(counter, "reports"):
        return sum(1 for report in counter.reports if report.kind == "training")
    return counter.graphs


@contextlib.contextmanager
def _counting_ddp_pieces():
    """The number of pieces Dynamo's DDPOptimizer splits each compiled graph into (one per DDP bucket)."""
    pieces: list[int] = []
    try:
        from torch._dynamo.backends import distributed as ddp_optimizer

        original = ddp_optimizer.pretty_print_buckets  # called once per split graph with its buckets
    except (ImportError, AttributeError):
        yield pieces
        return

    def counting(buckets, *args, **kwargs):
        pieces.append(len(buckets))
        return original(buckets, *args, **kwargs)

    ddp_optimizer.pretty_print_buckets = counting
    try:
        yield pieces
    finally:
        ddp_optimizer.pretty_print_buckets = original


def _wrap(model, mode: Mode, inductor: bool, distributed: bool = True):
    """The model under DDP or the torchtitan FSDP2 recipe; returns (what to call, graph counter, details).

    ``distributed=False``: the single-process run of the same recipe (the model compiled as the wrapper compiles
    it, without DDP or FSDP2), which the check compares against."""
    import torch

    compile_kwargs, counter, compiler = _compiler(mode, inductor)
    details = {"compiler": compiler}
    if mode.wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        compiled = torch.compile(model, **compile_kwargs)
        if not distributed:
            return compiled, counter, details
        cuda = next(model.parameters()).device.type == "cuda"
        return DDP(compiled, device_ids=[torch.cuda.current_device()] if cuda else None), counter, details
    import fp4
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plan = None
    if mode.fp4_all_gather and distributed:
        plan = fp4.distributed.enable_fp4_all_gather(model)
        details.update(fp4_gathered_layers=len(plan.gathered), fp4_packed_layers=len(plan.packed),
                       fp4_kept_layers=plan.kept)  # fmt: skip
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.model.layers:
        block.compile(**compile_kwargs)
        if distributed:
            fully_shard(block, mp_policy=policy)
    if distributed:
        fully_shard(model, mp_policy=policy)
        details["all_gather_bytes_predicted"] = predicted_all_gather_bytes(model, dist.get_world_size(), plan)
    return model, counter, details


def predicted_all_gather_bytes(model, world: int, plan=None, gather_bytes: int = 2) -> int:
    """Bytes one rank sends to FSDP2's all-gathers in one training step of the torchtitan recipe.

    Each decoder layer is gathered twice (forward, and again for the backward after ``reshard_after_forward``),
    the root's own parameters (embedding, final norm, head) once (FSDP2 keeps the root unsharded after the
    forward).  A rank sends its shard: ``ceil(rows / ranks)`` rows (FSDP2 pads the last shards), in the mixed
    precision dtype (``gather_bytes``), or for the layers of ``plan`` (what ``enable_fp4_all_gather`` returned)
    as MXFP4 codes, scales and clip mask: 21/32 B per element, 1 B per element of the padded shard for the plan's
    ``packed`` layers.  On one rank nothing is sent (FSDP2 copies the single shard instead of gathering).
    ``model`` is the model under ``fully_shard`` (its parameters have their whole shapes) or not yet.
    """
    from fp4.runtime.gathered import packed_columns

    if world == 1:
        return 0

    gathered = {f"{name}.weight" for name in (plan.gathered if plan else ())}
    packed = {f"{name}.weight" for name in (plan.packed if plan else ())}

    def shard_bytes(name, param) -> int:
        rows = param.shape[0] if param.dim() else 1
        row_elements = param.numel() // max(rows, 1)
        if name in packed:
            row_bytes = row_elements  # one uint8 row of K bytes (fp4.runtime.gathered.pack_rows)
        elif name in gathered:
            row_bytes = packed_columns(row_elements)[-1].stop  # codes, scales and mask of one row: 21K/32 B
        else:
            row_bytes = row_elements * gather_bytes
        return -(-rows // world) * row_bytes

    in_blocks = {id(p) for block in model.model.layers for p in block.parameters()}
    return sum((2 if id(p) in in_blocks else 1) * shard_bytes(name, p) for name, p in model.named_parameters())


def _relative(got, want) -> float:
    norm = float(want.norm())
    difference = float((got - want).norm())
    return difference / norm if norm else difference


def _step(runner, tokens, cuda: bool):
    import torch

    if cuda:
        torch.compiler.cudagraph_mark_step_begin()
    loss = runner(input_ids=tokens, labels=tokens).loss
    loss.backward()
    return loss.detach()


def check_gradients(shape: dict, mode: Mode, tokens, got: dict, device: str, inductor: bool) -> dict:
    """The step-1 gradients ``got`` ({name: gradient on the CPU}) against the single-process run averaged over ranks.

    Every rank runs the same recipe in one process, in the dtype the wrapper computes in, on its own batch from
    the same seed: with Inductor compiled as the wrapper compiles it (:func:`_wrap` with ``distributed=False``),
    without it eagerly (``fp4.quartetize`` for fp4 modes: plain graphs equal the eager oracle bit for bit, so
    the check holds them to the oracle itself).  The ranks average those gradients in the dtype the wrapper
    reduces in (DDP: the gradients' bf16, divided by the rank count, then summed, as DDP does; FSDP2: fp32).
    Also returns the spread: the smallest relative difference, over the parameters, between this rank's own
    gradient and the average, the least that a rank's gradient standing in for the average (a reduction left
    out) would show."""
    import fp4
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    model = _build(shape, device, torch.bfloat16)  # DDP trains in bf16; FSDP2 computes in bf16 (param_dtype)
    if inductor:
        runner, _, _ = _wrap(model, mode, inductor, distributed=False)
    else:
        runner = fp4.quartetize(model, **mode.fp4_options(inductor)) if mode.fp4 else model
    torch.manual_seed(SEED + rank)
    _step(runner, tokens, device == "cuda")
    reduce_dtype = torch.bfloat16 if mode.wrapper == "ddp" else torch.float32
    bitwise, worst, worst_name, spread = True, 0.0, None, math.inf
    for name, param in model.named_parameters():
        own = param.grad.to(reduce_dtype)
        want = own / world
        dist.all_reduce(want)
        mine = got[name].to(want.device)
        bitwise = bitwise and bool(torch.equal(mine, want))
        relative = _relative(mine.float(), want.float())
        if worst_name is None or relative > worst:
            worst, worst_name = relative, name
        spread = min(spread, _relative(own.float(), want.float()))
        param.grad = None
    return {"bitwise": bitwise, "max_relative_difference": worst, "worst_parameter": worst_name,
            "rank_gradient_spread": spread}  # fmt: skip


def _snapshot(model) -> dict:
    """Every gradient of the step, whole (gathered under FSDP2), on the CPU, by its name in the unwrapped model."""
    return {_clean(name): _full(param.grad).detach().cpu() for name, param in model.named_parameters()}


def run_mode(shape: dict, mode: Mode, steps: int, check: bool, inductor: bool, device: str) -> dict:
    """Train one configuration in one mode on this rank; returns this rank's measurements."""
    import torch.distributed as dist

    batches = _batches(shape, dist.get_rank(), device)
    out, gradients = _train(shape, mode, steps, check, inductor, device, batches)
    if gradients is not None:
        _release_memory()  # and Dynamo's caches: the single-process run compiles afresh
        out["check"] = check_gradients(shape, mode, batches[0], gradients, device, inductor)
    return out


def _train(shape: dict, mode: Mode, steps: int, check: bool, inductor: bool, device: str, batches) -> tuple:
    import fp4
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    cuda = device == "cuda"
    param_dtype = torch.bfloat16 if mode.wrapper == "ddp" else torch.float32
    model = _build(shape, device, param_dtype)
    runner, counter, details = _wrap(model, mode, inductor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    counting = fp4.distributed.count_all_gather_bytes(model) if mode.wrapper == "fsdp" else contextlib.nullcontext()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step_ms, losses, gradients, first_peak = [], [], None, None
    torch.manual_seed(SEED + rank)  # the seed the single-process run of the check starts from
    with counting as counted, _counting_ddp_pieces() as pieces:
        for i in range(steps):
            start = time.perf_counter()
            loss = _step(runner, batches[i % len(batches)], cuda)
            paused = 0.0
            if i == 0 and check:
                paused = time.perf_counter()
                gradients = _snapshot(model)
                paused = time.perf_counter() - paused
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))  # the loop's one read-back (a synchronisation)
            step_ms.append((time.perf_counter() - start - paused) * 1e3)
            if i == 0 and cuda and steps > 1:
                first_peak = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()  # steady state from step 2 on (step 1 compiles)
    out = {"step_ms": step_ms, "losses": losses, "graphs": _graphs(counter), **details}
    if mode.wrapper == "ddp":
        out["ddp_pieces"] = sum(pieces) if pieces else None
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["first_step_peak_memory_gib"] = first_peak
    if counted is not None:
        out["all_gather"] = {"sent": counted.sent, "received": counted.bytes, "calls": counted.calls}
    return out, gradients


def combine(config: str, shape: dict, mode: Mode, ranks: list[dict], world: int, steps: int, on_cpu: bool) -> dict:
    """One record from every rank's measurements: a step lasts as long as its slowest rank."""
    step_ms = [max(times) for times in zip(*(r["step_ms"] for r in ranks))]
    steady = steady_steps(step_ms)
    median = statistics.median(steady)
    tokens = shape["batch"] * shape["seq"]
    first = ranks[0]
    record = {
        "config": config, **shape, "mode": mode.name, "wrapper": mode.wrapper, "precision": mode.precision,
        "compiler": first["compiler"], "fp4_all_gather": mode.fp4_all_gather,
        "param_dtype": "bfloat16" if mode.wrapper == "ddp" else "float32 (bf16 compute, fp32 reduce)",
        "steps": steps, "first_step_s": step_ms[0] / 1e3, "median_step_ms": median, "max_step_ms": max(steady),
        "tokens_per_s_per_gpu": tokens / (median * 1e-3), "tokens_per_s": world * tokens / (median * 1e-3),
        "peak_memory_gib": max(r["peak_memory_gib"] for r in ranks) if "peak_memory_gib" in first else None,
        "peak_memory_gib_per_rank": [r.get("peak_memory_gib") for r in ranks],
        "first_step_peak_memory_gib": first.get("first_step_peak_memory_gib"),
        "compiled_graphs": first["graphs"], "ddp_pieces": first.get("ddp_pieces"), "step_ms": step_ms,
        "losses_rank0": first["losses"], "all_gather_bytes_per_step": None, "all_gather_bytes_predicted": None,
        "check": None,
    }  # fmt: skip
    for key in ("fp4_gathered_layers", "fp4_packed_layers", "fp4_kept_layers"):
        if key in first:
            record[key] = first[key]
    if "all_gather" in first:
        record["all_gather_bytes_per_step"] = max(r["all_gather"]["sent"] for r in ranks) / steps
        record["all_gather_received_bytes_per_step"] = max(r["all_gather"]["received"] for r in ranks) / steps
        record["all_gather_calls_per_step"] = first["all_gather"]["calls"] / steps
        record["all_gather_bytes_predicted"] = first["all_gather_bytes_predicted"]
    if "check" in first:
        record["check"] = _check_verdict(mode, [r["check"] for r in ranks], world, first.get("ddp_pieces"), on_cpu)
    return record


def _check_verdict(mode: Mode, checks: list[dict], world: int, ddp_pieces, on_cpu: bool) -> dict:
    """Bit for bit where the reduction order allows it, else within :data:`CHECK_BOUND`."""
    reasons = []
    if world > 2:
        reasons.append(f"{world} ranks: the sum of the ranks' gradients depends on the collective's order")
    if mode.wrapper == "ddp" and ddp_pieces != 1:
        pieces = "an unknown number of" if ddp_pieces is None else str(ddp_pieces)
        reasons.append(f"DDP's graph split into {pieces} pieces re-associates gradient sums inside the backward")
    if not on_cpu:
        reasons.append("flash attention's backward accumulates in no fixed order on CUDA (PyTorch's default)")
    worst = max(checks, key=lambda c: c["max_relative_difference"])
    verdict = {
        "bitwise": all(c["bitwise"] for c in checks),
        "expected_bitwise": not reasons,
        "max_relative_difference": worst["max_relative_difference"],
        "worst_parameter": worst["worst_parameter"],
        "bound": None if not reasons else CHECK_BOUND,
        "why_not_bitwise": "; ".join(reasons) or None,
        "rank_gradient_spread": min(c["rank_gradient_spread"] for c in checks),
    }
    verdict["passed"] = verdict["bitwise"] if not reasons else verdict["max_relative_difference"] <= CHECK_BOUND
    return verdict


def worker(spec_path: str) -> int:
    """One rank: every configuration in every mode; rank 0 appends each record to the records file and rewrites the
    JSON and the table."""
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = spec["device"]
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", init_method=f"file://{spec['rendezvous']}", rank=rank,
        world_size=world, timeout=datetime.timedelta(seconds=spec["collective_timeout_s"]),
    )  # fmt: skip
    import fp4.runtime  # noqa: F401  (the fp4 ops; on a GPU their kernels)

    if device == "cuda":
        import fp4.runtime.calls  # noqa: F401

    card = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.machine()})"
    common = {
        "card": card, "gpus": world, "date": spec["info"]["date"], "command": spec["info"]["command"],
        "backend": dist.get_backend(), "torch": torch.__version__,
        "env": {key: os.environ.get(key) for key in NO_MULTICAST_ENV},
    }  # fmt: skip
    failed = 0
    try:
        for config in spec["configs"]:
            shape = CONFIGS[config]
            for name in spec["modes"]:
                mode = parse_mode(name)
                started = time.time()
                try:
                    mine = run_mode(shape, mode, spec["steps"], spec["check"], spec["inductor"], device)
                except Exception as error:  # noqa: BLE001  (one failing mode is reported, the others still run)
                    mine = {"error": f"{type(error).__name__}: {error}"[:2000], "traceback": traceback.format_exc()}
                finally:
                    _release_memory()
                ranks = [None] * world
                dist.all_gather_object(ranks, mine)
                errors = [r for r in ranks if "error" in r]
                if errors:
                    failed += 1
                    record = {**common, "config": config, **shape, "mode": name, "error": errors[0]["error"]}
                    if rank == 0:
                        print(f"{config} {name} on {world}: failed ({errors[0]['error'][:300]})", flush=True)
                        print(errors[0]["traceback"], file=sys.stderr, flush=True)
                else:
                    record = {**common, **combine(config, shape, mode, ranks, world, spec["steps"], device == "cpu")}
                    record["seconds"] = time.time() - started
                if rank == 0:
                    with (Path(spec["out"]) / RECORDS_FILE).open("a") as stream:
                        stream.write(json.dumps(record) + "\n")
                    write_results(Path(spec["out"]), spec["info"])
                    if "error" not in record:
                        print(log_line(record), flush=True)
                dist.barrier()
    finally:
        dist.destroy_process_group()
    return MODES_FAILED if failed else 0


def log_line(r: dict) -> str:
    gathered = r["all_gather_bytes_per_step"]
    check = r["check"]
    return (
        f"{r['config']:10s} {r['gpus']} x {r['mode']:22s} median {r['median_step_ms']:8.2f} ms  max "
        f"{r['max_step_ms']:8.2f}  first {r['first_step_s']:6.1f} s  {r['tokens_per_s_per_gpu']:9.0f} tok/s/GPU  "
        f"peak {_number(r['peak_memory_gib'], '.1f')} GiB  all-gather "
        f"{'-' if gathered is None else f'{gathered / 2**20:.2f} MiB'}/step  check {_check_cell(check)}"
    )


# ----------------------------------------------------------------------------
# the command: one group of processes per GPU count


def _launch(spec: dict, world: int, directory: Path, time_left: float | None) -> str:
    """Run one group of ``world`` ranks; returns how it ended."""
    spec = {**spec, "rendezvous": str(directory / f"rendezvous-{world}")}
    spec_path = directory / f"spec-{world}.json"
    spec_path.write_text(json.dumps(spec))
    threads = str(max(1, (os.cpu_count() or 1) // world))
    processes = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), **NO_MULTICAST_ENV}  # fmt: skip
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = [sys.executable, "-m", "fp4.bench_distributed", "--worker", str(spec_path)]
        processes.append(subprocess.Popen(command, env=env, start_new_session=True))
    deadline = None if time_left is None else time.time() + time_left
    try:
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0, MODES_FAILED) for p in processes):
                # a rank died (not a reported failure): the others would wait in their collectives
                time.sleep(5)
                if any(p.poll() is None for p in processes):
                    return "a rank exited with code " + str([p.poll() for p in processes])
            if deadline is not None and time.time() > deadline:
                return "out of time (--time-budget)"
            time.sleep(0.5)
        codes = [p.returncode for p in processes]
        return "finished" if codes == [0] * world else f"finished, some modes failed (exit codes {codes})"
    finally:
        _stop(processes)


def _stop(processes) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in processes if p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)  # the rank and the compile workers it started
        deadline = time.time() + 10
        while alive and time.time() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.2)


def gpu_counts(text: str, scaling: bool, device: str) -> list[int]:
    """The GPU counts to run, in order: ``--gpus`` (default: every visible GPU; two ranks on the CPU), and with
    ``scaling`` one GPU last."""
    if text:
        try:
            counts = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--gpus {text!r}: expected GPU counts separated by commas, e.g. 2,4,8") from None
        if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
            raise ValueError(f"--gpus {text!r}: expected distinct GPU counts of at least 1, e.g. 2,4,8")
    else:
        import torch

        counts = [torch.cuda.device_count()] if device == "cuda" else [2]
    if scaling and 1 not in counts:
        counts.append(1)  # the baseline last: the multi-GPU runs come first when time is short
    return counts


def add_ratios(records: list[dict]) -> None:
    """``vs_bf16`` (tokens/s against the same wrapper's bf16 mode) and scaling against one GPU, per record."""
    done = {(r["config"], r["mode"], r["gpus"]): r for r in records if "error" not in r}
    for r in records:
        r.setdefault("vs_bf16", None)
        r.setdefault("scaling_efficiency", None)
        r.setdefault("speedup_vs_1_gpu", None)
        if "error" in r:
            continue
        bf16 = done.get((r["config"], f"{r['wrapper']}_bf16", r["gpus"]))
        if bf16 is not None:
            r["vs_bf16"] = r["tokens_per_s_per_gpu"] / bf16["tokens_per_s_per_gpu"]
        one = done.get((r["config"], r["mode"], 1))
        if one is not None:
            r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / one["tokens_per_s_per_gpu"]
            r["speedup_vs_1_gpu"] = r["tokens_per_s"] / one["tokens_per_s"]


def _number(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _check_cell(check) -> str:
    if not check:
        return "–"
    if check["bitwise"]:
        text = "bitwise"
    else:
        text = f"{check['max_relative_difference']:.1e}" + (f" ≤ {check['bound']:.3g}" if check["bound"] else "")
    return text if check["passed"] else f"**FAILED** ({text})"


COLUMNS = ["config", "GPUs", "mode", "median step ms", "max step ms", "tokens/s per GPU", "× bf16", "scaling vs 1 GPU",
           "peak GiB per GPU", "all-gathered MiB per step and GPU", "step-1 gradients"]  # fmt: skip


def markdown(records: list[dict], info: dict) -> list[str]:
    lines = [
        f"Card: {info['card']}; {info['date']}; torch {info['torch']}; backend {info['backend']}; NVLink multicast "
        "off (" + ", ".join(f"{k}={v}" for k, v in NO_MULTICAST_ENV.items()) + ").",
        f"Command: `{info['command']}`",
        "",
        *table_head(COLUMNS),
    ]
    for r in records:
        if "error" in r:
            lines.append(failed_row([r["config"], r["gpus"], r["mode"]], r["error"], len(COLUMNS)))
            continue
        gathered = r["all_gather_bytes_per_step"]
        lines.append(
            f"| {r['config']} | {r['gpus']} | {r['mode']} | {r['median_step_ms']:.2f} | {r['max_step_ms']:.2f} "
            f"| {r['tokens_per_s_per_gpu']:.0f} | {_number(r['vs_bf16'], '.2f')} "
            f"| {_number(r['scaling_efficiency'], '.2f')} | {_number(r['peak_memory_gib'], '.1f')} "
            f"| {'–' if gathered is None else f'{gathered / 2**20:.2f}'} | {_check_cell(r['check'])} |"
        )
    lines += [
        "",
        "Each rank trains on its own batch (batch × sequence tokens per GPU); a step lasts until the slowest rank "
        "has read back its loss; median and maximum from step 3 on (with fewer steps, of the last). × bf16: tokens/s "
        "against the bf16 mode of the same wrapper, same run and GPU count. Scaling: tokens/s per GPU against the "
        "same mode on one GPU. Peak: the largest rank's, steps 2 on. All-gathered: bytes each rank sends to FSDP2's "
        "all-gathers per step (none on one GPU). Step-1 gradients (`--check`): against the single-process run "
        "averaged over the ranks, bit for bit or the largest relative difference and its bound.",
    ]
    return lines


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker(argv[1])
    parser = argparse.ArgumentParser(prog="fp4 bench --sections distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="distributed", help="distributed (on its own)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"configurations: {', '.join(CONFIGS)}")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help="ddp_bf16, ddp_fp4, fsdp_fp4_all_gather, ...")
    parser.add_argument("--gpus", default="", help="GPU counts (gloo ranks with --device cpu), e.g. 2,4,8; "
                        "default: every visible GPU (2 ranks on the CPU)")  # fmt: skip
    parser.add_argument("--scaling", action="store_true", help="also run each mode on one GPU and report scaling")
    parser.add_argument("--check", action="store_true", help="check the step-1 gradients against the single-"
                        "process run averaged over the ranks (not in the 1-GPU baseline --scaling adds)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=8, help="training steps per configuration and mode")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--no-inductor", dest="inductor", action="store_false",
                        help="fp4 modes with inductor=False, bf16 modes with backend='aot_eager'")  # fmt: skip
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole command: a GPU count still running then is stopped (its "
                        "finished modes are kept) and the rest is not started")  # fmt: skip
    parser.add_argument("--collective-timeout", type=float, default=1800, help="process group timeout, seconds")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    if args.sections != "distributed":
        parser.error("the distributed section runs on its own: --sections distributed")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    configs = [c.strip() for c in args.models.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        parsed = [parse_mode(m) for m in modes]
    except ValueError as error:
        parser.error(str(error))
    if not args.inductor and any(FP4_MODES[m.precision].get("cudagraphs") for m in parsed if m.fp4):
        parser.error("CUDA-graph modes need Inductor (drop --no-inductor)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fp4 bench --sections distributed --device cuda needs CUDA GPUs", file=sys.stderr)
        return 2
    try:
        counts = gpu_counts(args.gpus, args.scaling, device)
    except ValueError as error:
        parser.error(str(error))
    if device == "cuda" and max(counts) > torch.cuda.device_count():
        parser.error(f"--gpus asks for {max(counts)} GPUs, {torch.cuda.device_count()} visible")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORDS_FILE).unlink(missing_ok=True)
    info = {"date": utc_date(), "command": "fp4 bench " + " ".join(argv), "torch": torch.__version__,
            "backend": "nccl" if device == "cuda" else "gloo", "device": device}  # fmt: skip
    spec = {"configs": configs, "modes": modes, "steps": args.steps, "inductor": args.inductor, "device": device,
            "info": info, "out": str(out.resolve()), "collective_timeout_s": args.collective_timeout}  # fmt: skip
    asked = set(gpu_counts(args.gpus, False, device))
    started = time.time()
    outcomes = {}
    # SIGTERM (``timeout``, a job scheduler) unwinds like Ctrl-C, through _launch's ``finally``, which stops the
    # ranks; the results so far are then written as at the end
    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
            stack.callback(signal.signal, signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="fp4-bench-distributed-"))
        for world in counts:
            left = None if args.time_budget is None else args.time_budget - (time.time() - started)
            if left is not None and left <= 0:
                outcomes[world] = "not started (--time-budget spent)"
                continue
            print(f"--- {_ranks(world, device)}", flush=True)
            checked = args.check and world in asked  # not the 1-GPU baseline --scaling adds
            try:
                outcomes[world] = _launch({**spec, "check": checked}, world, Path(directory), left)
            except KeyboardInterrupt as error:  # the ranks are stopped; what they finished is kept
                outcomes[world] = f"stopped ({error or 'interrupted'})"
            print(f"--- {_ranks(world, device)}: {outcomes[world]}", flush=True)
            if outcomes[world].startswith("stopped"):
                break
    info["seconds"] = time.time() - started
    records, report = write_results(out, info, outcomes)
    print(report)
    failed = [r for r in records if "error" in r or (r.get("check") and not r["check"]["passed"])]
    return 1 if failed or any(not v.startswith("finished") for v in outcomes.values()) else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _ranks(world: int, device: str) -> str:
    return f"{world} {'GPU' if device == 'cuda' else 'rank'}{'s' if world > 1 else ''}"


def write_results(out: Path, info: dict, outcomes: dict | None = None) -> tuple[list[dict], str]:
    """The records so far (the records file) with their ratios, written to ``bench_distributed_<card>.json`` and
    as the table to ``bench_distributed.md``; returns them and the table.  ``outcomes``: how each group of ranks
    ended (the command's last call)."""
    path = out / RECORDS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    add_ratios(records)
    for r in records:
        for key in RECORD_FIELDS:
            r.setdefault(key, None)
    card = next((r["card"] for r in records if r.get("card")), "unknown")
    (out / f"bench_distributed_{card_slug(card)}.json").write_text(json.dumps(records, indent=1))
    report = "\n".join(markdown(records, {**info, "card": card})) + "\n"
    if outcomes is not None:
        device = info.get("device", "cuda")
        report += "\nRuns: " + "; ".join(f"{_ranks(k, device)}: {v}" for k, v in outcomes.items()) + "\n"
    (out / "bench_distributed.md").write_text(report)
    return records, report


if __name__ == "__main__":
    sys.exit(main())
