"""Host time per fp4 op call in steady state (what a training step pays per op on the CPU side).

Each op is called at Llama-1B shapes (8192 tokens, 2048 -> 5632) until its
plan is built, then ``--calls`` more times without synchronising; the host time
per call is the wall time of those calls over their number (the launches are
asynchronous, and fewer calls than the launch queue holds never block).  For
comparison, the same kernels launched through Triton's JIT (``kernel[grid](...)``)
and an empty op through the dispatcher.

    python benchmarks/host_overhead.py --out host.json

``--compare-launch`` compares the two ways a compiled graph launches the
kernels (the backend option ``launch``, ``"plan"`` against ``"inductor"``) on
the same op calls as the GPU tests of the Inductor launch: how, in
:mod:`fp4.bench_launch`.

    python benchmarks/host_overhead.py --compare-launch --out host_launch.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from fp4.bench_launch import LAUNCH_OPS, compare_launch


def per_call_us(fn, calls):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--compare-launch", action="store_true", help="plan launches against Inductor's launches")
    parser.add_argument("--ops", default=",".join(LAUNCH_OPS), help="--compare-launch: comma-separated op names")
    parser.add_argument("--graph-calls", type=int, default=4, help="--compare-launch: op calls per compiled graph")
    parser.add_argument("--reps", type=int, default=50, help="--compare-launch: timed calls of each compiled graph")
    parser.add_argument("--tokens", type=int, default=2048, help="--compare-launch: rows of the activations")
    args = parser.parse_args(argv)
    if args.compare_launch:
        ops = [name.strip() for name in args.ops.split(",") if name.strip()]
        compare_launch(ops, args.tokens, args.graph_calls, args.reps, args.out)
        return

    import fp4.runtime.calls  # noqa: F401
    from fp4.runtime import launch, reference

    fp4 = torch.ops.fp4
    T, K, N = 8192, 2048, 5632
    x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(T, N, device="cuda", dtype=torch.bfloat16)
    seed = fp4.draw_seeds(1, x.device)[0]
    xc, xs, xm = fp4.quest_quantize(x, True)
    wc, ws, wm = fp4.quest_quantize(w, True)
    xf = fp4.quest_quantize_fold(x, True)
    wf = fp4.quest_quantize_fold(w, True)
    gc, gs = fp4.sr_quantize(dy, seed, 0, 2, False)
    rc, rs = fp4.requantize_sr(wc, ws, seed, 0, 3)
    cases = {
        "quest_quantize": lambda: fp4.quest_quantize(x, True),
        "quest_quantize_fold": lambda: fp4.quest_quantize_fold(x, True),
        "sr_quantize": lambda: fp4.sr_quantize(dy, seed, 0, 2, False),
        "sr_quantize (transposed)": lambda: fp4.sr_quantize(dy, seed, 1, 4, True),
        "requantize_sr": lambda: fp4.requantize_sr(wc, ws, seed, 0, 3),
        "fp8_fold_gemm": lambda: fp4.fp8_fold_gemm(
            xf[3], xf[4], wf[3], wf[4], 1.0, None, "none", None, None, None, False, torch.bfloat16
        ),
        "mxfp4_gemm (backward, mask + unrotate)": lambda: fp4.mxfp4_gemm(
            gc, gs, rc, rs, reference.BACKWARD_ALPHA, None, "none", None, None, xm, True, torch.bfloat16
        ),
        "bias_grad": lambda: fp4.bias_grad(dy, torch.bfloat16),
        "draw_seeds(56)": lambda: fp4.draw_seeds(56, x.device),
        "aten.add (dispatcher baseline)": lambda: torch.add(x, 1),
    }
    results = {name: per_call_us(fn, args.calls) for name, fn in cases.items()}

    # the same SR kernel through Triton's JIT launcher, for comparison with the plan's compiled launcher
    plan = launch.dense_quantize_plan(dy, "sr", "last", True, 2, 0)
    outputs = [torch.empty(shape, dtype=dtype, device="cuda") for shape, dtype in plan.outputs]
    arguments = [dy, *outputs, *plan.scalars, seed, *plan.addends]
    plan.kernel.run(arguments)
    chosen, grid = plan.kernel._launch[0], plan.kernel._launch[1]

    def jit_launch():
        chosen.function[grid](*arguments, **chosen.constexprs, **chosen.options)

    results["sr_quantize kernel via Triton JIT launch"] = per_call_us(jit_launch, args.calls)
    results["sr_quantize kernel via compiled launcher"] = per_call_us(lambda: chosen(grid, arguments), args.calls)
    from fp4.runtime import plans

    results["launchers bound (plans.STATS)"] = dict(plans.STATS)
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.calls):
        fp4.sr_quantize(dy, seed, 0, 2, False)
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    print(text.getvalue())
    card = torch.cuda.get_device_name()
    print(f"host time per call, {card}, {args.calls} calls each")
    for name, us in results.items():
        print(f"  {name:45s} {us:8.1f} us" if isinstance(us, float) else f"  {name}: {us}")
    if args.out:
        with open(args.out, "w") as stream:
            json.dump({"card": card, "calls": args.calls, "host_us_per_call": results}, stream, indent=1)


if __name__ == "__main__":
    main()
