"""Two gloo ranks on the CPU, started once per test module, running named scenarios against the eager oracle.

A test module lists its scenarios (functions ``scenario(rank) -> dict``);
:func:`run_scenarios` spawns the ranks once, runs every scenario on both in
order and returns ``{name: [rank 0 result, rank 1 result]}``.  A scenario that
raises records ``{"error": ...}`` instead, so one failure does not hide the
others' results (the test of that scenario fails, or is the expected failure).

The expected gradients are built independently of FSDP/DDP: every rank runs
the eager oracle (``fp4.quartetize`` of a copy of the model) on its own batch
from the same generator state, and the ranks average those gradients with an
all-reduce (divide by two, then sum: both exact, as DDP and FSDP do them for
two ranks).  The distributed compiled run must equal that bit for bit.
"""

from __future__ import annotations

import copy
import datetime
import os
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2

DISTRIBUTED_MARKS = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed/gloo"),
    pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous is POSIX-only here"),
]
"""A test module's ``pytestmark`` where its ranks rendezvous through a file and talk through gloo."""

BLOCK_LAYERS = [
    "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]  # fmt: skip
"""The linear layers of one :func:`tiny_llama` block, by name within the block."""


def tiny_llama(dtype=torch.float32):
    """A Llama-style model with its own ``forward`` (fp4.models.TinyLlama), tiny: 2 blocks of 7 linear layers."""
    from fp4.models import LlamaConfig, TinyLlama

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=96, max_seq_len=16)
    return TinyLlama(config).to(dtype)


def batch(rank: int, step: int):
    generator = torch.Generator().manual_seed(1000 * step + rank)
    tokens = torch.randint(0, 64, (2, 16), generator=generator)
    return tokens, torch.randint(0, 64, (2, 16), generator=generator)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of an FSDP (DTensor) parameter or gradient; plain tensors as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def averaged_oracle_gradients(oracle: torch.nn.Module, tokens, targets, generator_state) -> dict:
    torch.set_rng_state(generator_state)
    oracle(tokens, targets).backward()
    grads = {}
    for name, param in oracle.named_parameters():
        grad = param.grad.float() / WORLD_SIZE
        dist.all_reduce(grad)
        grads[name] = grad
        param.grad = None
    return grads


def train_against_oracle(rank, model, step_fn, oracle, steps=1, lr=0.1) -> dict:
    """``steps`` SGD steps of ``step_fn(tokens, targets) -> loss`` on ``model``, each checked against the oracle.

    ``oracle`` is the quartetized copy of ``model``'s initial weights; it takes
    the same SGD step with the averaged oracle gradients.  Returns the
    mismatching gradients ``(step, name, max abs difference)``, per gradient
    its relative (Frobenius) difference and cosine similarity to the oracle's
    (``statistics``: ``{name: [(relative, cosine) per step]}``), and whether
    the parameters stayed equal to the oracle's.
    """
    torch.manual_seed(100 + rank)  # the same seed on both ranks would hide rank-dependent seeding bugs
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    oracle_optimizer = torch.optim.SGD(oracle.parameters(), lr=lr)  # the same update arithmetic
    mismatches, statistics, params_equal = [], {}, True
    for step in range(steps):
        tokens, targets = batch(rank, step)
        state = torch.get_rng_state()
        want = averaged_oracle_gradients(oracle, tokens, targets, state)
        torch.set_rng_state(state)
        step_fn(tokens, targets).backward()
        for name, param in model.named_parameters():
            name = name.replace("_orig_mod.", "").replace("module.", "", 1)
            got = full(param.grad).float()
            if not torch.equal(got, want[name]):
                mismatches.append((step, name, float((got - want[name]).abs().max())))
            relative = float((got - want[name]).norm() / want[name].norm())
            cosine = float(torch.nn.functional.cosine_similarity(got.flatten(), want[name].flatten(), dim=0))
            statistics.setdefault(name, []).append((relative, cosine))
        optimizer.step()
        optimizer.zero_grad()
        for name, param in oracle.named_parameters():
            param.grad = want[name].to(param.dtype)
        oracle_optimizer.step()
        oracle_optimizer.zero_grad()
    oracle_params = dict(oracle.named_parameters())
    for name, param in model.named_parameters():
        name = name.replace("_orig_mod.", "").replace("module.", "", 1)
        theirs = oracle_params[name].detach()
        # A bf16 oracle of a mixed-precision run holds no fp32 master weights: only gradients compare.
        params_equal = params_equal and (theirs.dtype != param.dtype or torch.equal(full(param.detach()), theirs))
    return {"mismatches": mismatches, "statistics": statistics, "params_equal": params_equal}


def oracle_of(model: torch.nn.Module, **options) -> torch.nn.Module:
    from fp4.runtime.oracle import quartetize

    return quartetize(copy.deepcopy(model), **options)


def report_facts(reports) -> list[dict]:
    """What the tests check of each training graph's report (picklable)."""
    facts = []
    for report in reports:
        if report.kind != "training":
            continue
        facts.append(
            {
                "rewritten": [layer.name for layer in report.rewritten()],
                "skipped": {layer.name: layer.reason for layer in report.skipped()},
                "requantize": report.options.requantize_weights_in_backward,
                "saved_parameter_bytes": report.saved_parameter_bytes_after,
                "saved_activation_bytes": report.saved_bytes_after,
                # Saved tensors computed from the parameters alone (FP4 weight copies), by shape.
                "saved_parameter_shapes": sorted({t.shape for t in report.saved_after if not t.activation}),
                "forward_graph": report.forward_graph,
                "backward_graph": report.backward_graph,
            }
        )
    return facts


def _worker(rank: int, init_file: str, module_name: str, names: list[str], results) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        import importlib

        module = importlib.import_module(module_name)
        for name in names:
            torch._dynamo.reset()
            try:
                outcome = getattr(module, f"scenario_{name}")(rank)
            except Exception as error:  # recorded for the test of this scenario
                outcome = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            results[(name, rank)] = outcome
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_scenarios(module_name: str, names: list[str], tmp_dir) -> dict:
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(
        _worker, args=(os.path.join(str(tmp_dir), "rendezvous"), module_name, names, results),
        nprocs=WORLD_SIZE, join=True,
    )  # fmt: skip
    return {name: [results.get((name, rank), {"error": "no result"}) for rank in range(WORLD_SIZE)] for name in names}


def check(outcomes: list[dict]) -> list[dict]:
    """Fail with the scenario's traceback if it raised on a rank; the per-rank results otherwise."""
    for rank, outcome in enumerate(outcomes):
        if "error" in outcome:
            raise AssertionError(f"rank {rank}: {outcome['error']}\n{outcome.get('traceback', '')}")
    return outcomes


def assert_matches_oracle(results) -> list[dict]:
    """Every rank's gradients and parameters after the steps equal the averaged oracle's bit for bit."""
    outcomes = check(results)
    for rank, outcome in enumerate(outcomes):
        assert outcome["mismatches"] == [], f"rank {rank}: gradients differ from the averaged oracle"
        assert outcome["params_equal"], f"rank {rank}: parameters differ from the oracle's after the steps"
    return outcomes
