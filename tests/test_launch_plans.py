"""The CUDA implementations of the fp4 ops, run on CPU tensors through Triton's interpreter.

On a GPU the dispatcher calls these; here the test calls them directly.  What this covers without a GPU:
the plan keys (a second call with the same signature builds nothing), the plans' argument lists (the
kernels, interpreted, give the reference's bits), the reference fallbacks with their reasons, and the
layer seed read by the kernels from a tensor.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import traceback

import pytest
import torch
from fp4.runtime import calls, fold, launch, plans, reference


def _bitwise(got, want):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if g.dtype == fold.FP8_DTYPE:
            g, w = g.view(torch.uint8), w.view(torch.uint8)
        assert g.shape == w.shape and torch.equal(g, w)


def _twice(implementation, *args):
    """Call an implementation twice; the second call must reuse the first call's plan."""
    first = implementation(*args)
    built = dict(plans.STATS)
    second = implementation(*args)
    assert dict(plans.STATS) == built, "the second call built a plan"
    _bitwise(second, first)
    return second


def make_data():
    generator = torch.Generator().manual_seed(20261201)
    x = torch.randn(2, 24, 64, generator=generator).to(torch.bfloat16)
    dy = torch.randn(48, 96, generator=generator).to(torch.bfloat16)
    w = torch.randn(96, 64, generator=generator).to(torch.bfloat16)
    return x, dy, w


def case_quantizer_plans_match_the_reference(data):
    x, dy, w = data
    _bitwise(_twice(calls.quest_quantize_cuda, x, True), reference.quest_quantize(x, True))
    flat = x.reshape(-1, 64)
    got = _twice(calls.quest_quantize_fold_cuda, flat, True)
    want = reference.quest_quantize(flat, True)
    _bitwise(got, want + fold.fold_reference(*want[:2]))
    seed = torch.tensor(2**61 + 12345)
    for sign_stream, stream, transpose in ((0, 2, False), (1, 4, True), (-1, 2, False)):
        signs = reference.rotation_signs(int(seed), sign_stream) if sign_stream >= 0 else None
        got = _twice(calls.sr_quantize_cuda, dy, seed, sign_stream, stream, transpose)
        _bitwise(got, reference.sr_quantize(dy, signs, int(seed), stream, transpose))
    codes, scales, _ = reference.quest_quantize(w, True)
    got = _twice(calls.requantize_sr_cuda, codes, scales, seed, 0, 3)
    _bitwise(got, reference.requantize_sr(codes, scales, reference.rotation_signs(int(seed), 0), int(seed), 3))
    _bitwise(_twice(calls.fold_fp8_cuda, codes, scales), fold.fold_reference(codes, scales))
    # the backward quantizers that write the FP8 fold too
    got = _twice(calls.sr_quantize_fold_cuda, dy, seed, 1, 4, True)
    _bitwise(got, fold.sr_quantize_fold.function(dy, seed, 1, 4, True))
    got = _twice(calls.requantize_sr_fold_cuda, codes, scales, seed, 0, 3)
    _bitwise(got, fold.requantize_sr_fold.function(codes, scales, seed, 0, 3))


def case_gemm_and_bias_grad_plans_match_the_reference(data):
    x, dy, w = data
    a = reference.quest_quantize(x.reshape(-1, 64), True)
    b = reference.quest_quantize(w, True)
    bias = torch.randn(96, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    epilogue = (0.5, bias, "gelu", None, None, None, False, torch.float32)
    want = reference.mxfp4_gemm(*a[:2], *b[:2], *epilogue)
    # the CPU target has no GEMM kernel: the plan is the reference, with its reason counted
    _bitwise(_twice(calls.mxfp4_gemm_cuda, *a[:2], *b[:2], *epilogue), want)
    assert any(key.startswith("fallback.mxfp4_gemm.no GEMM kernel for cpu") for key in launch.COUNTERS)
    folded = fold.fold_reference(*a[:2]) + fold.fold_reference(*b[:2])
    got = _twice(calls.fp8_fold_gemm_cuda, *folded, *epilogue)
    _bitwise(got, fold.fp8_fold_gemm_reference(*folded, *epilogue))
    got = _twice(calls.bias_grad_cuda, dy, torch.float32)
    assert (got.double() - dy.double().sum(0)).abs().max() < 1e-5


def case_fallbacks_give_the_reference_and_say_why(data):
    x, dy, _ = data
    launch.COUNTERS.clear()
    half = x.reshape(-1, 64).to(torch.float64)
    _bitwise(calls.quest_quantize_cuda(half, True), reference.quest_quantize(half, True))
    assert launch.COUNTERS["fallback.quest_quantize.input dtype torch.float64"] == 1
    meta_seed = torch.tensor(5, device="meta")
    try:  # a seed on another device falls back to the reference, which cannot read a meta tensor
        calls.sr_quantize_cuda(dy, meta_seed, 0, 2, False)
    except (NotImplementedError, RuntimeError):
        pass
    assert any(key.startswith("fallback.sr_quantize.the seed is on meta") for key in launch.COUNTERS)


CASES = [name for name in dir() if name.startswith("case_")]


@pytest.mark.parametrize("case", CASES)
def test_plans_in_the_interpreter(case):
    # Triton's interpreter is chosen when triton is imported: run the cases in a child process with it on
    env = dict(os.environ, TRITON_INTERPRET="1")
    completed = subprocess.run(
        [sys.executable, __file__, case], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.strip().endswith(f"{case} passed")


if __name__ == "__main__":
    os.environ.setdefault("FP4_CACHE_DIR", os.path.join(__import__("tempfile").mkdtemp(), "fp4-cache"))
    name = sys.argv[1]
    try:
        globals()[name](make_data())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    print(f"{name} passed")


def test_plan_building_time_is_counted_for_steps_not_for_warm_ups():
    """``autotune.SECONDS["plans.build"]`` grows with the time a step spends building a plan; a warm-up thread's
    builds count under ``warmup`` instead, and the time a step waits for a warm-up under ``warmup.wait``."""
    import threading
    import time

    from fp4.runtime import autotune

    def slow_plan():
        time.sleep(0.05)
        return "plan"

    cache = plans.PlanCache("test_op")
    before = autotune.SECONDS["plans.build"]
    assert cache.build(("key", 1), slow_plan) == "plan" and cache.get(("key", 1)) == "plan"
    assert autotune.SECONDS["plans.build"] - before >= 0.05

    def warm():
        plans.mark_warming()
        cache.build(("key", 2), slow_plan)

    thread = threading.Thread(target=warm)
    before, waited = autotune.SECONDS["plans.build"], autotune.SECONDS["warmup.wait"]
    plans.add_warmup(thread)
    thread.start()
    plans.wait_for_warmups()
    assert cache.get(("key", 2)) == "plan"
    assert autotune.SECONDS["plans.build"] == before
    assert autotune.SECONDS["warmup.wait"] > waited


def test_a_kernels_first_launch_is_counted_once():
    """``autotune.SECONDS["kernels.first_launch"]`` grows with a kernel's first launch (where Triton compiles the
    chosen configuration) and not with later ones, so a first step's compile time is attributed."""
    import time

    from fp4.runtime import autotune

    config = autotune.Config.make(4, BLOCK_T=64, BLOCK_N=32)
    plan = launch.BiasGradPlan(96, 64, 64, torch.bfloat16, torch.float32, torch.device("cpu"), interpret=True,
                               config=config)  # fmt: skip
    launches = []

    def compiling_launch(grid, args):  # stands in for Triton: the first launch compiles
        if not launches:
            time.sleep(0.05)
        launches.append(grid)

    plan.kernel.chosen_launch = lambda: (compiling_launch, (1, 1))
    before = autotune.SECONDS["kernels.first_launch"]
    plan.kernel.run([])
    after_first = autotune.SECONDS["kernels.first_launch"]
    assert after_first - before >= 0.05
    plan.kernel.run([])
    assert len(launches) == 2 and autotune.SECONDS["kernels.first_launch"] == after_first

    # a GEMM plan likewise (its chosen configuration may be a Triton kernel or cuBLAS)
    a, b = torch.zeros(32, 64).to(fold.FP8_DTYPE), torch.zeros(16, 64).to(fold.FP8_DTYPE)
    operands = (a, torch.ones(32), b, torch.ones(16))
    epilogue = launch.Epilogue()
    gemm = launch.GemmPlan(launch.LOWERINGS["fp8_fold"], operands, 32, 16, 64, epilogue, torch.device("cpu"),
                           interpret=True)  # fmt: skip
    gemm._launch = lambda config, operands, epilogue, cublas: compiling_launch(None, operands)
    launches.clear()
    before = autotune.SECONDS["kernels.first_launch"]
    gemm(operands, epilogue)
    after_first = autotune.SECONDS["kernels.first_launch"]
    assert after_first - before >= 0.05
    gemm(operands, epilogue)
    assert len(launches) == 2 and autotune.SECONDS["kernels.first_launch"] == after_first


def test_warm_up_stand_ins_have_the_keys_of_the_step_arguments():
    """A warm-up builds each plan from stand-ins of the graph's fake tensors; the step then looks the plan up with
    the real arguments, so a stand-in must give the same key: shape, strides, dtype and 16-byte alignment (a layer's
    seed is a view into the step's seed vector, at an offset of 8 bytes times its index)."""
    from fp4.runtime import warmup
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_seeds = torch.zeros(7, dtype=torch.int64)
    real_rows = torch.zeros(6, 48, dtype=torch.bfloat16)
    with FakeTensorMode() as mode:
        seeds = mode.from_tensor(real_seeds)
        rows = mode.from_tensor(real_rows)
        fakes = [seeds[index] for index in range(7)] + [rows[1:], rows[:, 16:], rows.t(), rows[2:2]]
    reals = [real_seeds[index] for index in range(7)] + [real_rows[1:], real_rows[:, 16:], real_rows.t(),
                                                          real_rows[2:2]]  # fmt: skip
    for fake, real in zip(fakes, reals):
        made = warmup.stand_in(fake, "cpu")
        assert plans.tensor_key(made) == plans.tensor_key(real), (plans.tensor_key(made), plans.tensor_key(real))
        assert made.storage_offset() == fake.storage_offset()
    assert {plans.tensor_key(warmup.stand_in(seed, "cpu"))[-1] for seed in fakes[:7]} == {True, False}


def test_a_shared_choice_is_always_one_of_the_plans_candidates(monkeypatch):
    """The autotuner shares a choice per (kernel source, target, shape bucket).  A choice made for one plan is
    used by another plan of the bucket only if it is among that plan's candidates: otherwise the second plan gets
    its own (the default without autotuning), never a configuration made for other sizes."""
    from fp4.runtime import autotune
    from fp4.runtime.autotune import Config

    class Source:
        digest, name = "digest", "kernel"

    monkeypatch.setenv(autotune.AUTOTUNE_ENV, "0")
    tuner = autotune.Autotuner()
    first = [Config.make(4, BLOCK=64, FLAG=True), Config.make(8, BLOCK=128, FLAG=True)]
    second = [Config.make(4, BLOCK=64, FLAG=False), Config.make(8, BLOCK=128, FLAG=False)]
    never = lambda config: pytest.fail("nothing is timed without autotuning")  # noqa: E731
    tuner._chosen[("digest", "sm_90", "512")] = first[1]
    assert tuner.choose(Source, "sm_90", "512", first, never) == first[1]
    assert tuner.choose(Source, "sm_90", "512", second, never) == second[0]


def test_nvfp4_gemm_plans_of_one_bucket_share_configurations_not_their_k_masks():
    """K = 352 and K = 384 fall in one shape bucket (512).  Whether the K loop needs masks (``EVEN_K``) follows
    from each plan's K, so it is given per plan, not carried by the configuration the bucket shares: a plan with
    K = 352 launched with a configuration chosen for K = 384 would read 32 elements past every row (an H100 run
    of the nvfp4 recipe after quartet2 in one process went NaN that way)."""
    from fp4.runtime import launch_nvfp4
    from fp4.runtime.lowering import Epilogue

    epilogue = Epilogue(1.0, None, "none", None, None, None, False, torch.float32)
    plans_by_k = {}
    for K in (352, 384):
        plan = launch_nvfp4.NVFP4GemmPlan("dequant_bf16", 48, 32, K, epilogue, torch.device("cpu"))
        assert not any({"EVEN_K", "DOT_FP32"} & set(c.kwargs) for c in plan.kernel.candidates)
        assert plan.kernel.shape_bucket == "64x32x512"
        plans_by_k[K] = plan
    assert plans_by_k[352].kernel.candidates == plans_by_k[384].kernel.candidates
    for K, plan in plans_by_k.items():
        for config in plan.kernel.candidates:
            constexprs = plan.kernel.launch_for(config).constexprs
            assert constexprs["EVEN_K"] == (K % config.kwargs["BLOCK_K"] == 0) and constexprs["DOT_FP32"] is True
    # tests/test_kernels_nvfp4.py launches the K = 352 plan with each candidate in the interpreter


def test_first_step_timers_report_growth_by_timer(monkeypatch):
    """The model benchmark's first-step breakdown: torch's compile timers and fp4's, the growth since a snapshot,
    largest first, timers that did not grow left out, the counts after every time."""
    from fp4 import bench_model
    from fp4.runtime import autotune, compile_pool
    from torch._dynamo import utils

    monkeypatch.setattr(utils, "compilation_time_metrics", {"compile_inner": [1.0]})
    monkeypatch.setattr(autotune, "SECONDS", type(autotune.SECONDS)({"autotune.timing": 0.5}))
    monkeypatch.setattr(autotune.AUTOTUNER, "timings", {"a": {}})
    monkeypatch.setattr(autotune, "CHOICES", type(autotune.CHOICES)({"stored": 3}))
    monkeypatch.setattr(compile_pool, "STATS", type(compile_pool.STATS)())
    before = bench_model.compile_seconds()
    assert before == {"torch.compile_inner": 1.0, "autotune.timing": 0.5, "autotune.buckets": 1, "autotune.stored": 3}
    utils.compilation_time_metrics["compile_inner"].append(2.5)
    utils.compilation_time_metrics["compile_fx"] = [4.0]
    autotune.SECONDS["autotune.timing"] += 1.25
    autotune.AUTOTUNER.timings["b"] = {}
    autotune.CHOICES["imported"] += 2  # choices taken without timing: counted like the timers
    compile_pool.STATS["compiled"] += 4  # compiles in worker processes: counted too
    grown = bench_model.compile_seconds(since=before)
    assert grown == {"torch.compile_fx": 4.0, "torch.compile_inner": 2.5, "autotune.imported": 2,
                     "autotune.timing": 1.25, "autotune.buckets": 1, "compile_pool.compiled": 4}  # fmt: skip
    assert list(grown) == ["torch.compile_fx", "torch.compile_inner", "autotune.timing", "compile_pool.compiled",
                           "autotune.imported", "autotune.buckets"]  # fmt: skip


def test_model_benchmark_reports_what_a_later_step_compiled(monkeypatch):
    """A step after the first that compiles (a kernel's first launch here) is reported by step number and timer,
    so a slow later step says whether it compiled; steps that compiled nothing are left out.  The garbage
    collector's pauses are recorded per step."""
    from fp4 import bench_model
    from fp4.runtime import autotune

    monkeypatch.setattr(autotune, "SECONDS", type(autotune.SECONDS)())
    calls = []

    def compiled(model, mode):
        def run(**batch):
            calls.append(1)
            autotune.SECONDS["kernels.first_launch"] += 0.25 if len(calls) in (1, 3) else 0.0
            if len(calls) == 4:
                gc.collect()  # a step that compiled nothing but paused for a full collection
            return model(**batch)

        return run

    monkeypatch.setattr(bench_model, "compiled", compiled)
    shape = dict(hidden=32, intermediate=64, layers=1, heads=2, vocab=16, batch=2, seq=8)
    record = bench_model.train_steps(shape, "fp4", steps=4, device="cpu", profile=False)
    assert record["first_step_seconds"] == {"kernels.first_launch": 0.25}
    assert record["later_step_seconds"] == {"3": {"kernels.first_launch": 0.25}}
    assert len(record["step_ms"]) == 4 and record["max_step_ms"] == max(record["step_ms"][2:])
    assert len(record["gc_ms"]) == 4 and record["gc_ms"][3] > 0


def test_bias_grad_of_no_rows_is_zeros():
    """A ``[0, N]`` gradient launches nothing and sums to zeros in the requested dtype."""
    plan = launch.BiasGradPlan(0, 8, 8, torch.bfloat16, torch.bfloat16, torch.device("cpu"), interpret=True)
    assert plan.kernel is None
    got = plan(torch.empty((0, 8), dtype=torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.equal(got, torch.zeros(8, dtype=torch.bfloat16))


def test_unit_scale_is_made_once_per_device_on_a_thread_of_its_own(monkeypatch):
    """cuBLAS's unit scale is made on another thread (out of a CUDA-graph warm-up's memory pool, which takes the
    allocations of the warming thread) and kept; an error there reaches the caller."""
    import threading

    monkeypatch.setattr(launch, "_UNIT_SCALES", {})
    threads = []
    ones = torch.ones

    def recording_ones(*args, **kwargs):
        threads.append(threading.current_thread())
        return ones(*args, **kwargs)

    monkeypatch.setattr(torch, "ones", recording_ones)
    cpu = torch.device("cpu")
    one = launch.unit_scale(cpu)
    assert one.dtype == torch.float32 and one.tolist() == [1.0]
    assert launch.unit_scale(cpu) is one and len(threads) == 1
    assert threads[0] is not threading.current_thread()
    monkeypatch.setattr(torch, "ones", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no memory")))
    with pytest.raises(RuntimeError, match="no memory"):
        launch.unit_scale(torch.device("meta"))
    assert torch.device("meta") not in launch._UNIT_SCALES
