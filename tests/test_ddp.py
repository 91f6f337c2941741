"""The fp4 backend under DDP in both orders, and ``rank_seeds``, on two gloo ranks on the CPU.

``torch.compile(DDP(model))`` and ``DDP(torch.compile(model))`` of a model with
its own ``forward`` (``fp4.models.TinyLlama``), with one gradient bucket and with
several (DDPOptimizer then splits the graph at the bucket boundaries), each
compared bit for bit with the eager oracle's gradients averaged across the
ranks (tests/distributed_harness.py), ``inductor=False``.  The ranks are
started once for the whole module.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
from distributed_harness import (
    WORLD_SIZE,
    assert_matches_oracle,
    check,
    oracle_of,
    report_facts,
    run_scenarios,
    tiny_llama,
    train_against_oracle,
)

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed/gloo"),
    pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous is POSIX-only here"),
]

# Several buckets at test size: DDP and DDPOptimizer both size the first bucket by this constant, and a
# model with two real 25 MB buckets is too slow for the CPU suite.
SMALL_FIRST_BUCKET_BYTES = 16 * 1024
SMALL_BUCKET_MB = 0.02


def _ddp(rank, compile_outside: bool, buckets: str):
    import fp4
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = tiny_llama()
    oracle = oracle_of(model)
    backend = fp4.configure(inductor=False)
    kwargs, first_bucket_bytes = {}, dist._DEFAULT_FIRST_BUCKET_BYTES
    if buckets == "several":
        dist._DEFAULT_FIRST_BUCKET_BYTES = SMALL_FIRST_BUCKET_BYTES
        kwargs["bucket_cap_mb"] = SMALL_BUCKET_MB
    try:
        if compile_outside:
            wrapped = torch.compile(DDP(model, **kwargs), backend=backend)
        else:
            wrapped = DDP(torch.compile(model, backend=backend), **kwargs)
        step = lambda tokens, targets: wrapped(tokens, targets)
        outcome = train_against_oracle(rank, model, step, oracle, steps=2)
    finally:
        dist._DEFAULT_FIRST_BUCKET_BYTES = first_bucket_bytes
    outcome["reports"] = report_facts(backend.reports)
    return outcome


def scenario_compile_ddp(rank):
    return _ddp(rank, compile_outside=True, buckets="one")


def scenario_ddp_compiled(rank):
    return _ddp(rank, compile_outside=False, buckets="one")


def scenario_compile_ddp_several_buckets(rank):
    return _ddp(rank, compile_outside=True, buckets="several")


def scenario_ddp_compiled_several_buckets(rank):
    return _ddp(rank, compile_outside=False, buckets="several")


def scenario_rank_seeds(rank):
    """Both ranks seed torch alike; per rank the compiled model must equal the oracle, salted or not."""
    import copy

    import fp4
    from fp4.runtime.oracle import draw_layer_seed, quartetize

    outcome = {}
    for rank_seeds in ("auto", False):
        torch.manual_seed(7)
        outcome[f"seed_{rank_seeds}"] = int(draw_layer_seed(rank_seeds))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
        inputs = torch.randn(16, 64)  # the same on both ranks
        grads = []
        for candidate in (
            quartetize(copy.deepcopy(model), rank_seeds=rank_seeds),
            torch.compile(copy.deepcopy(model), backend=fp4.configure(inductor=False, rank_seeds=rank_seeds)),
        ):
            torch.manual_seed(7)
            candidate(inputs).square().mean().backward()
            grads.append([p.grad for p in candidate.parameters()])
        torch._dynamo.reset()
        outcome[f"compiled_equals_oracle_{rank_seeds}"] = all(torch.equal(a, b) for a, b in zip(*grads))
        flat = torch.cat([g.flatten() for g in grads[1]])
        gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, flat)
        outcome[f"ranks_agree_{rank_seeds}"] = torch.equal(gathered[0], gathered[1])
    return outcome


SCENARIOS = [
    "compile_ddp",
    "ddp_compiled",
    "compile_ddp_several_buckets",
    "ddp_compiled_several_buckets",
    "rank_seeds",
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_scenarios(__name__, SCENARIOS, tmp_path_factory.mktemp("ddp"))


def _assert_matches_oracle(results):
    for outcome in assert_matches_oracle(results):
        assert sum(len(graph["rewritten"]) for graph in outcome["reports"]) == 14  # 2 blocks x 7, not the head


@pytest.mark.parametrize("scenario", ["compile_ddp", "ddp_compiled"])
def test_ddp_one_bucket_matches_oracle(outcomes, scenario):
    _assert_matches_oracle(outcomes[scenario])


SEVERAL_BUCKETS_EMBEDDING = (
    "over several DDP buckets TinyLlama's gradients differ from the averaged oracle in their last bits (the "
    "embedding's first, up to 7e-9), in both orders; tests/test_ddp_buckets.py has the bitwise multi-bucket case "
    "of a model without an embedding; not yet explained"
)


@pytest.mark.xfail(strict=True, reason=SEVERAL_BUCKETS_EMBEDDING)
@pytest.mark.parametrize("scenario", ["compile_ddp_several_buckets", "ddp_compiled_several_buckets"])
def test_ddp_several_buckets_matches_oracle(outcomes, scenario):
    _assert_matches_oracle(outcomes[scenario])


def test_rank_seeds_decorrelate_ranks_and_match_the_oracle(outcomes):
    results = check(outcomes["rank_seeds"])
    # Salted (default under a process group): the ranks draw different seeds and round differently.
    assert results[0]["seed_auto"] != results[1]["seed_auto"]
    assert not results[0]["ranks_agree_auto"]
    # Unsalted: the same seeds, the same gradients on both ranks.
    assert results[0]["seed_False"] == results[1]["seed_False"]
    assert results[0]["ranks_agree_False"]
    for outcome in results:
        assert outcome["compiled_equals_oracle_auto"] and outcome["compiled_equals_oracle_False"]
