"""The two ways a compiled graph launches the fp4 kernels, compared on a GPU (the backend option ``launch``).

``"plan"``: Inductor's code calls each fp4 op, whose CUDA implementation launches through its plan;
``"inductor"``: the ops decomposed into their Triton launches in Inductor's wrapper code
(:mod:`fp4.runtime.inductor_launch`).  :func:`launch_cases` is the one table of op calls that both the
comparison (``python benchmarks/host_overhead.py --compare-launch``) and the GPU tests
(``tests/gpu/test_inductor_launch_gpu.py``) use.

For each op, a function calling it ``graph_calls`` times is compiled with ``backend="fp4"`` under each option;
the host time of one call of that compiled function (CPU wall time, no synchronisation inside; the GPU idle at
its start, so no launch waits), median of ``reps``, less the same for the function with no op call (Dynamo's
guards and frame), over the number of op calls, is the host time per op call (it includes the compiled graph's
own call overhead over the number of op calls, the same for both ways).  The outputs of both ways must be equal
bit for bit; the JSON records, per op, both times, whether the op launched from Inductor's code and, where not,
why, plus the compile time of each way.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import traceback
from collections import Counter

import torch
import torch.utils._pytree as pytree

LAUNCH_OPS = ("quest_quantize", "sr_quantize", "requantize_sr", "fp8_fold_gemm")
"""The ops compared by default: the forward and backward quantizers and, where the target has one, the GEMM."""

LLAMA_1B_WIDTHS = (2048, 5632)
"""``(K, N)`` of the comparison's operands: a Llama-1B MLP projection."""


def launch_cases(x, w, dy, seed, bias=None) -> dict:
    """``{name: (function of the inputs, inputs)}``: each fp4 op the Inductor launch covers, called as a model would.

    ``x [..., K]`` activations (2-D or more), ``w [N, K]`` weights, ``dy [T, N]`` gradients (bf16), ``seed`` a
    seed tensor of ``fp4::draw_seeds``; ``bias [N]`` adds a fused-epilogue GEMM.
    """
    fp4 = torch.ops.fp4
    flat = x.flatten(0, -2)
    xc, xs, _ = fp4.quest_quantize(flat, True)
    wc, ws, _ = fp4.quest_quantize(w, True)
    xf, wf = fp4.quest_quantize_fold(flat, True), fp4.quest_quantize_fold(w, True)
    epilogue = (1.0, None, "none", None, None, None, False, torch.bfloat16)
    cases = {
        "quest_quantize": (lambda x: fp4.quest_quantize(x, True), (x,)),
        "quest_quantize_fold": (lambda x: fp4.quest_quantize_fold(x, True), (flat,)),
        "sr_quantize": (lambda dy, seed: fp4.sr_quantize(dy, seed, 1, 4, False), (dy, seed)),
        "sr_quantize (transposed)": (lambda dy, seed: fp4.sr_quantize(dy, seed, 1, 4, True), (dy, seed)),
        "sr_quantize (stream 2)": (lambda dy, seed: fp4.sr_quantize(dy, seed, 0, 2, False), (dy, seed)),
        "sr_quantize_fold": (lambda dy, seed: fp4.sr_quantize_fold(dy, seed, 1, 4, True), (dy, seed)),
        "requantize_sr": (lambda c, s, seed: fp4.requantize_sr(c, s, seed, 1, 3), (wc, ws, seed)),
        "requantize_sr_fold": (lambda c, s, seed: fp4.requantize_sr_fold(c, s, seed, 1, 3), (wc, ws, seed)),
        "fold_fp8": (lambda c, s: fp4.fold_fp8(c, s), (wc, ws)),
        "mxfp4_gemm": (lambda *operands: fp4.mxfp4_gemm(*operands, *epilogue), (xc, xs, wc, ws)),
        "fp8_fold_gemm": (lambda *operands: fp4.fp8_fold_gemm(*operands, *epilogue), (xf[3], xf[4], wf[3], wf[4])),
    }
    if bias is not None:
        cases["mxfp4_gemm (bias, gelu)"] = (
            lambda *operands: fp4.mxfp4_gemm(*operands, 0.5, bias, "gelu", None, None, None, False, torch.bfloat16),
            (xc, xs, wc, ws),
        )
    return cases


def llama_inputs(tokens: int, device="cuda") -> tuple:
    """``(x, w, dy, seed)`` at :data:`LLAMA_1B_WIDTHS` with ``tokens`` rows, from fixed seeds."""
    K, N = LLAMA_1B_WIDTHS
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, K, device=device, dtype=torch.bfloat16, generator=generator)
    w = torch.randn(N, K, device=device, dtype=torch.bfloat16, generator=generator)
    dy = torch.randn(tokens, N, device=device, dtype=torch.bfloat16, generator=generator)
    torch.manual_seed(0)
    return x, w, dy, torch.ops.fp4.draw_seeds(1, x.device)[0]


def outputs_differ(got, want) -> str | None:
    """Why two ops' outputs are not equal bit for bit (count, shape, dtype or values), or None if they are."""
    got, want = pytree.tree_leaves(got), pytree.tree_leaves(want)
    if len(got) != len(want):
        return f"{len(got)} outputs against {len(want)}"
    for index, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {index}: {tuple(a.shape)} {a.dtype} against {tuple(b.shape)} {b.dtype}"
        if a.element_size() == 1:  # fp8 has no equality kernel
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        if not torch.equal(a, b):
            return f"output {index}: values differ"
    return None


def _repeated(op, calls):
    def graph(*inputs):
        return [op(*inputs) for _ in range(calls)]

    return graph


def _host_seconds(function, inputs, reps):
    """Median wall time of one call, the GPU idle at each start (so no launch waits for a full queue)."""
    for _ in range(3):
        function(*inputs)
    samples = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function(*inputs)
        samples.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(samples)


def compare_launch(ops=LAUNCH_OPS, tokens=2048, graph_calls=4, reps=50, out=None) -> dict:
    """Host time per op call under ``launch="plan"`` and ``launch="inductor"``; the summary, also written to ``out``."""
    from fp4.runtime import inductor_launch

    # Inductor compiles a user kernel with Triton's default FP contraction, which the plans' kernels turn off;
    # set before anything compiles, so that Inductor's compile workers start with it
    os.environ.setdefault(inductor_launch.FP_FUSION_ENV, "0")
    cases = launch_cases(*llama_inputs(tokens))
    unknown = sorted(set(ops) - set(cases))
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known: {sorted(cases)}")

    def compiled(op, launch):
        torch._dynamo.reset()
        return torch.compile(_repeated(op, graph_calls), backend="fp4", options={"launch": launch}, fullgraph=True)

    first_op, first_inputs = cases[ops[0]]
    empty = torch.compile(_repeated(first_op, 0), backend="fp4", fullgraph=True)
    empty_us = _host_seconds(empty, first_inputs, reps) * 1e6
    import triton

    card = torch.cuda.get_device_name()
    summary = {
        "card": card, "torch": torch.__version__, "triton": triton.__version__, "tokens": tokens,
        "op_calls_per_graph": graph_calls, "reps": reps, "autotune": os.environ.get("FP4_AUTOTUNE", "1"),
        "empty_graph_us": empty_us, "target_us_per_op": 25.0, "ops": {},
    }  # fmt: skip
    for name in ops:
        op, inputs = cases[name]
        eager = op(*inputs)
        record = summary["ops"][name] = {}
        outputs = {}
        for launch in ("plan", "inductor"):
            before = Counter(inductor_launch.COUNTERS)
            try:
                start = time.perf_counter()
                function = compiled(op, launch)
                outputs[launch] = function(*inputs)
                torch.cuda.synchronize()
                record[f"{launch}_compile_s"] = time.perf_counter() - start
                record[f"{launch}_graph_us"] = _host_seconds(function, inputs, reps) * 1e6
                record[f"{launch}_us"] = (record[f"{launch}_graph_us"] - empty_us) / graph_calls
            except Exception as error:  # keep measuring the other ops; the record says what failed
                traceback.print_exc()
                record[f"{launch}_error"] = f"{type(error).__name__}: {error}"[:2000]
            if launch == "inductor":
                launches = Counter(inductor_launch.COUNTERS) - before
                record["inductor_launches"] = launches[f"inductor.{name.split()[0]}"] > 0
                record["kept_on_plan"] = sorted({key.split(".", 2)[2] for key in launches if key.startswith("plan.")})
        if len(outputs) == 2:
            record["bitwise_equal"] = outputs_differ(outputs["plan"], outputs["inductor"]) is None
            record["plan_equals_eager"] = outputs_differ(outputs["plan"][0], eager) is None
        print(f"{name}: {json.dumps(record)}", flush=True)
        _write(summary, out)

    timed = [r for r in summary["ops"].values() if r.get("inductor_launches") and "inductor_us" in r and "plan_us" in r]
    plan_us, inductor_us = sum(r["plan_us"] for r in timed), sum(r["inductor_us"] for r in timed)
    summary["faster"] = None if not timed else ("inductor" if inductor_us < plan_us else "plan")
    summary["all_bitwise_equal"] = all(r.get("bitwise_equal") for r in summary["ops"].values())
    _write(summary, out)
    print(f"host time per op call, {card}, {graph_calls} calls a graph, less the empty graph's {empty_us:.1f} us:")
    for name, r in summary["ops"].items():
        times = "  ".join(f"{way} {r[way + '_us']:7.1f} us" for way in ("plan", "inductor") if way + "_us" in r)
        print(f"  {name:26s} {times}  from Inductor's code: {r.get('inductor_launches')}  "
              f"bitwise equal: {r.get('bitwise_equal')}")  # fmt: skip
    print(f"faster on the ops that launched both ways: {summary['faster']}")
    return summary


def _write(summary, path):
    if path:
        with open(path, "w") as stream:
            json.dump(summary, stream, indent=1)
