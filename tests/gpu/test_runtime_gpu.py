"""The runtime on a CUDA GPU: launch plans, CUDA-graph capture, device-side seeds, whole-model compiles.

* After its first call an op launches through its plan: the compiled
  kernel's launcher with the argument list, no autotuner, no cache look-up.
* Every fp4 op can be captured in a CUDA graph; replays draw new seeds from
  torch's CUDA generator (so new rounding bits every step), in the same
  sequence as running without graphs.
* ``backend="fp4"`` with ``cudagraphs=True`` equals the same compile without
  graphs bit for bit, step after step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fp4.runtime import plans, reference
from gpu_common import GPU_MARKS, tiny_llama, train_steps

pytestmark = GPU_MARKS

fp4 = torch.ops.fp4


def _generator(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def test_ops_launch_through_their_plans():
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16, generator=_generator(1))
    seed = torch.tensor(99, device="cuda")
    first = fp4.sr_quantize(x, seed, 0, 2, False)
    built = dict(plans.STATS)
    second = fp4.sr_quantize(x, seed, 0, 2, False)
    assert dict(plans.STATS) == built, "a second call with the same signature built a plan"
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    bound = [key for key in plans.STATS if key.startswith(("compiled_launcher.", "jit_launcher."))]
    assert bound and all(key.startswith("compiled_launcher.") for key in bound), bound
    want = reference.sr_quantize(x.cpu(), reference.rotation_signs(99, 0), 99, 2, False)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(second, want))


def test_plans_reject_misaligned_specialization():
    # a view at an odd byte offset is another plan (Triton specializes pointers on 16-byte alignment)
    base = torch.randn(64 * 257, device="cuda", dtype=torch.bfloat16, generator=_generator(2))
    aligned = base[: 64 * 256].view(64, 256)
    shifted = base[1 : 1 + 64 * 256].view(64, 256)
    for x in (aligned, shifted):
        got = fp4.quest_quantize(x, True)
        want = reference.quest_quantize(x.cpu(), True)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want))


def test_ops_capture_in_a_cuda_graph_and_replays_draw_new_seeds():
    x = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16, generator=_generator(3))

    def step():
        seeds = fp4.draw_seeds(2, x.device)
        codes, scales = fp4.sr_quantize(x, seeds[0], 0, 2, False)
        rq_codes, rq_scales = fp4.requantize_sr(*fp4.quest_quantize(x, True)[:2], seeds[1], 1, 5)
        return seeds, codes, rq_codes

    torch.manual_seed(7)
    eager = [[t.clone() for t in step()] for _ in range(5)]
    torch.manual_seed(7)
    step()  # warm up: plans are built outside the capture
    graph = torch.cuda.CUDAGraph()
    torch.manual_seed(7)
    with torch.cuda.graph(graph):
        outputs = step()
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append([t.clone() for t in outputs])
    seeds = [r[0].tolist() for r in replays]
    assert len({tuple(s) for s in seeds}) == 3, f"replays drew the same seeds: {seeds}"
    # the replays continue the generator's sequence as eager steps would: replay i draws what eager step i + k
    # draws, for one k (whether the capture itself advanced the generator is the CUDA graph's business)
    eager_seeds = [e[0].tolist() for e in eager]
    assert seeds[0] in eager_seeds, f"replay seeds {seeds[0]} are none of the eager draws {eager_seeds}"
    k = eager_seeds.index(seeds[0])
    for i, got in enumerate(replays):
        assert all(torch.equal(a, b) for a, b in zip(got, eager[i + k])), f"replay {i} vs eager step {i + k}"


def test_backend_with_cuda_graphs_equals_without():
    model = tiny_llama()
    plain = train_steps(copy.deepcopy(model), {})
    graphed = train_steps(copy.deepcopy(model), {"cudagraphs": True})
    for step, (a, b) in enumerate(zip(plain[0], graphed[0])):
        assert torch.equal(a, b), f"step {step}: loss {a.item()} without graphs, {b.item()} with"
    for step, (a, b) in enumerate(zip(plain[1], graphed[1])):
        assert torch.equal(a, b), f"step {step}: gradients differ"
    # new rounding bits every step: the same batch gives different gradients at steps 0 and 1 would also hold
    # for bf16 (the weights moved); the seeds differ as the CUDA generator advances.
    assert not torch.equal(graphed[1][0], graphed[1][1])


def test_kernels_compile_ahead_and_the_step_builds_no_plan():
    """The warm-up builds every plan of the graph before the first step; the results are the same without it."""
    from fp4.runtime import warmup

    def plans_built():
        return sum(count for key, count in plans.STATS.items() if key.startswith("built."))

    model = tiny_llama()
    built_before, warmed_before = plans_built(), warmup.STATS["plans"]
    ahead = train_steps(copy.deepcopy(model), {"compile_ahead": True}, steps=2)
    built, warmed = plans_built() - built_before, warmup.STATS["plans"] - warmed_before
    assert warmed > 0 and warmup.STATS["skipped"] == 0
    assert built == warmed, f"the steps built {built - warmed} plans the warm-up did not"
    plain = train_steps(copy.deepcopy(model), {"compile_ahead": False}, steps=2)
    for a, b in zip(ahead[0] + ahead[1], plain[0] + plain[1]):
        assert torch.equal(a, b)


def test_reduce_overhead_mode_sets_cudagraphs():
    from fp4.backend import MODES

    assert MODES["reduce-overhead"] == {"cudagraphs": True}


def test_kernels_compile_ahead_in_worker_processes(tmp_path, monkeypatch):
    """``FP4_COMPILE_PROCESSES``: the warm-up hands its compiles to worker processes, every one of them compiles,
    the steps build no plan the warm-up did not, and the results equal compiling on threads.  Fresh kernel and
    Triton caches and shapes no other test uses, so the kernels really compile (in the workers) here."""
    from fp4.runtime import compile_pool, warmup

    if not compile_pool.available():
        pytest.skip("this Triton calls no JIT cache hook")

    def plans_built():
        return sum(count for key, count in plans.STATS.items() if key.startswith("built."))

    model = tiny_llama(hidden=320, intermediate=640, layers=1, heads=5)
    monkeypatch.setenv("FP4_CACHE_DIR", str(tmp_path / "fp4"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "4")
    stats, built_before, warmed_before = dict(compile_pool.STATS), plans_built(), warmup.STATS["plans"]
    processes = train_steps(copy.deepcopy(model), {"compile_ahead": True}, steps=2)
    grown = {key: compile_pool.STATS[key] - stats.get(key, 0) for key in ("queued", "compiled", "failed")}
    assert grown["queued"] > 0 and grown["compiled"] == grown["queued"] and grown["failed"] == 0, grown
    built, warmed = plans_built() - built_before, warmup.STATS["plans"] - warmed_before
    assert built == warmed, f"the steps built {built - warmed} plans the warm-up did not"
    monkeypatch.setenv(compile_pool.PROCESSES_ENV, "0")
    threads = train_steps(copy.deepcopy(model), {"compile_ahead": True}, steps=2)
    for a, b in zip(processes[0] + processes[1], threads[0] + threads[1]):
        assert torch.equal(a, b)


def test_cuda_graphs_with_the_cublas_product(monkeypatch):
    """The backward GEMMs on cuBLAS's product finished by the epilogue kernel (``cublas_epilogue``) under CUDA
    graphs: the product's first call runs inside the graphs' warm-up, yet its unit scale stays out of their memory
    pool (CUDA-graph trees fail a step that keeps a pool tensor it did not return), and the steps equal those
    without graphs.  Shapes no other test uses, so every plan here is new and takes the forced choice."""
    from fp4.runtime import launch

    lowering = launch.LOWERINGS["fp8_fold"]
    monkeypatch.setattr(lowering, "cublas_product", True)
    choose = launch.GemmPlan.choose

    def cublas_product_first(plan, sample):
        forced = [c for c in plan.candidates if c.name == lowering.CUBLAS_PRODUCT]
        if plan.chosen is None and forced:
            plan.chosen = forced[0]
        return choose(plan, sample)

    monkeypatch.setattr(launch.GemmPlan, "choose", cublas_product_first)
    monkeypatch.setattr(launch, "_UNIT_SCALES", {})  # made afresh, as in a new process
    model = tiny_llama(hidden=384, intermediate=768, layers=1, heads=6)
    before = launch.COUNTERS["gemm.fp8_fold.cublas_epilogue"]
    graphed = train_steps(copy.deepcopy(model), {"cudagraphs": True, "compile_ahead": False})
    assert launch.COUNTERS["gemm.fp8_fold.cublas_epilogue"] > before, "no GEMM took the cuBLAS product"
    plain = train_steps(copy.deepcopy(model), {"compile_ahead": False})
    for a, b in zip(graphed[0] + graphed[1], plain[0] + plain[1]):
        assert torch.equal(a, b)
