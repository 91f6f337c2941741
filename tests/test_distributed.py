"""The fp4 backend under PyTorch's own data parallelism (DDP), on CPU processes over gloo.

Each rank trains ``DDP(torch.compile(model, backend="fp4"))``.  The
expected gradient is built independently: every rank runs the eager oracle
on its own data with its own generator state, and the ranks average those
gradients with an all-reduce.  DDP divides each gradient by the world size
and sums (both exact for two ranks), so the compiled run must match bit for
bit, stochastic rounding included, and the parameters stay identical on
every rank after the optimizer steps.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_harness import DISTRIBUTED_MARKS, WORLD_SIZE

pytestmark = DISTRIBUTED_MARKS

STEPS = 2


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 64))


def _oracle_step_gradients(model: torch.nn.Module, inputs: torch.Tensor, generator_state) -> list[torch.Tensor]:
    from fp4.runtime.oracle import quartetize

    oracle = quartetize(copy.deepcopy(model))
    torch.set_rng_state(generator_state)
    oracle(inputs).square().mean().backward()
    grads = [p.grad / WORLD_SIZE for p in oracle.parameters()]
    for grad in grads:
        dist.all_reduce(grad)
    return grads


def _worker(rank: int, init_file: str, results) -> None:
    # The fp4 backend is found by name, as a user process finds it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        import fp4

        model = _model()
        backend = fp4.configure(inductor=False)
        # DDP wraps the compiled module: its gradient hooks see the compiled backward's results.
        compiled = torch.nn.parallel.DistributedDataParallel(torch.compile(model, backend=backend))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)
        mismatches = []
        for step in range(STEPS):
            inputs = torch.randn(32, 64)
            state = torch.get_rng_state()
            expected = _oracle_step_gradients(model, inputs, state)
            torch.set_rng_state(state)
            compiled(inputs).square().mean().backward()
            for index, (param, want) in enumerate(zip(model.parameters(), expected)):
                if not torch.equal(param.grad, want):
                    mismatches.append((step, index, float((param.grad - want).abs().max())))
            optimizer.step()
            optimizer.zero_grad()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, flat)
        rewritten = sum(len(report.rewritten()) for report in backend.reports)
        results[rank] = {
            "mismatches": mismatches,
            "ranks_agree": all(torch.equal(gathered[0], other) for other in gathered),
            "rewritten_layers": rewritten,
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_averaged_oracle(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), results), nprocs=WORLD_SIZE, join=True)
    assert sorted(results.keys()) == list(range(WORLD_SIZE))
    for rank in range(WORLD_SIZE):
        outcome = results[rank]
        assert outcome["mismatches"] == [], f"rank {rank}: gradients differ from the averaged oracle"
        assert outcome["ranks_agree"], f"rank {rank}: parameters diverged across ranks"
        assert outcome["rewritten_layers"] >= 2, "both linear layers must run in FP4"
