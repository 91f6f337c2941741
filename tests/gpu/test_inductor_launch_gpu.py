"""The Inductor launch path on a GPU (``launch="inductor"``): the plan path's bits, launched from Inductor's code.

* Each op compiled with ``launch="inductor"`` gives the outputs of the same op
  compiled with ``launch="plan"``, bit for bit; the quantizers and fold
  kernels launch from Inductor's wrapper code, and where an op keeps its plan
  (a TMA or cuBLAS GEMM on Hopper) the reason is counted.
* The ``fp4_triton`` twins called eagerly give the fp4 ops' bits.
* A compiled Llama trains step for step to the same losses and gradients.

Inductor compiles a user kernel with Triton's default FP contraction, which
every fp4 kernel turns off: this module sets that default off when it is
imported, at collection, before any compile starts Inductor's compile workers.
"""

from __future__ import annotations

import copy
import os

import torch
from fp4.bench_launch import launch_cases, outputs_differ
from fp4.runtime import inductor_launch
from gpu_common import GPU_MARKS, tiny_llama, train_steps

os.environ.setdefault(inductor_launch.FP_FUSION_ENV, "0")

pytestmark = GPU_MARKS

fp4 = torch.ops.fp4


def _data():
    generator = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2, 128, 512, device="cuda", dtype=torch.bfloat16, generator=generator)
    w = torch.randn(384, 512, device="cuda", dtype=torch.bfloat16, generator=generator)
    dy = torch.randn(256, 384, device="cuda", dtype=torch.bfloat16, generator=generator)
    seed = torch.tensor(2**61 + 12345, device="cuda")
    return x, w, dy, seed


def _assert_bitwise(got, want, what):
    difference = outputs_differ(got, want)
    assert difference is None, f"{what}: {difference}"


def _compiled_twice(op, launch):
    """A compiled function calling ``op`` twice (two launches of one kernel in Inductor's code)."""
    torch._dynamo.reset()
    twice = lambda *inputs: [op(*inputs), op(*inputs)]
    return torch.compile(twice, backend="fp4", options={"launch": launch}, fullgraph=True)


def test_ops_launched_from_inductor_give_the_plans_bits():
    x, w, dy, seed = _data()
    bias = torch.randn(384, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(2))
    cases = launch_cases(x, w, dy, seed, bias)
    kept = {}
    for name, (op, inputs) in cases.items():
        plan = _compiled_twice(op, "plan")(*inputs)
        before = dict(inductor_launch.COUNTERS)
        got = _compiled_twice(op, "inductor")(*inputs)
        counted = {k: v - before.get(k, 0) for k, v in inductor_launch.COUNTERS.items() if v != before.get(k, 0)}
        assert counted, f"{name}: the op was not decomposed"
        _assert_bitwise(got, plan, name)
        _assert_bitwise(plan[0], op(*inputs), f"{name} (compiled plan against eager)")
        if not any(key.startswith("inductor.") for key in counted):
            kept[name] = sorted(counted)
    gemms = {"mxfp4_gemm", "mxfp4_gemm (bias, gelu)", "fp8_fold_gemm"}
    assert set(kept) <= gemms, kept  # stream 2's addend is negative as a 64-bit value: its words pass intact
    for name in set(kept) & gemms:  # Hopper: the autotuner's choice is a TMA variant or cuBLAS
        assert all("TMA tensor descriptors" in key or "cuBLAS" in key for key in kept[name]), kept[name]


def test_twins_called_eagerly_give_the_fp4_ops_bits():
    x, w, dy, seed = _data()
    wc, ws, _ = fp4.quest_quantize(w, True)
    twin = torch.ops.fp4_triton
    _assert_bitwise(twin.quest_quantize(x, True), fp4.quest_quantize(x, True), "quest_quantize")
    _assert_bitwise(twin.sr_quantize(dy, seed, 1, 4, True), fp4.sr_quantize(dy, seed, 1, 4, True), "sr_quantize")
    _assert_bitwise(twin.requantize_sr(wc, ws, seed, 1, 3), fp4.requantize_sr(wc, ws, seed, 1, 3), "requantize")
    got = twin.sr_quantize(dy, seed, 0, 2, False)  # kept on the plan: the fp4 op itself
    _assert_bitwise(got, fp4.sr_quantize(dy, seed, 0, 2, False), "sr_quantize on its plan")


def test_a_compiled_llama_trains_to_the_plans_bits():
    model = tiny_llama()
    plan = train_steps(copy.deepcopy(model), {"launch": "plan"}, steps=2)
    before = sum(v for k, v in inductor_launch.COUNTERS.items() if k.startswith("inductor."))
    launched = train_steps(copy.deepcopy(model), {"launch": "inductor"}, steps=2)
    after = sum(v for k, v in inductor_launch.COUNTERS.items() if k.startswith("inductor."))
    assert after > before, "no fp4 op launched from Inductor's code"
    for step, (a, b) in enumerate(zip(plan[0], launched[0], strict=True)):
        assert torch.equal(a, b), f"step {step}: loss {a.item()} on plans, {b.item()} from Inductor's code"
    for step, (a, b) in enumerate(zip(plan[1], launched[1], strict=True)):
        assert torch.equal(a, b), f"step {step}: gradients differ"
