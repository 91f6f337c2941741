"""Host time per fp4 op call in steady state (what a training step pays per op on the CPU side).

Each op is called at Llama-1B shapes (8192 tokens, 2048 -> 5632) until its
plan is built, then ``--calls`` more times without synchronising; the host time
per call is the wall time of those calls over their number (the launches are
asynchronous, and fewer calls than the launch queue holds never block).  For
comparison, the same kernels launched through Triton's JIT (``kernel[grid](...)``)
and an empty op through the dispatcher.

    python benchmarks/host_overhead.py --out host.json

``--compare-launch`` compares the two ways a compiled graph launches the
kernels (the backend option ``launch``): ``"plan"``, Inductor's code calling
each fp4 op, whose CUDA implementation launches through its plan, against
``"inductor"``, the ops decomposed into their Triton launches in Inductor's
wrapper code (:mod:`fp4.runtime.inductor_launch`).  For each op, a function
calling it ``--graph-calls`` times is compiled with ``backend="fp4"`` under
each option; the host time of one call of that compiled function (CPU wall
time, no synchronisation inside; the GPU idle at its start, so no launch
waits), median of ``--reps``, less the same for the function with no op call
(Dynamo's guards and frame), over the number of op calls, is the host time
per op call (it includes the compiled graph's own call overhead over the
number of op calls, the same for both ways).  The outputs of both ways must be
equal bit for bit; the JSON records, per op, both times, whether the op
launched from Inductor's code and, where not, why, plus the compile time of
each way.

    python benchmarks/host_overhead.py --compare-launch --out host_launch.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from collections import Counter

import torch


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
    parser.add_argument("--ops", default=",".join(LAUNCH_OPS), help=f"--compare-launch: of {sorted(launch_cases())}")
    parser.add_argument("--graph-calls", type=int, default=4, help="--compare-launch: op calls per compiled graph")
    parser.add_argument("--reps", type=int, default=50, help="--compare-launch: timed calls of each compiled graph")
    parser.add_argument("--tokens", type=int, default=2048, help="--compare-launch: rows of the activations")
    args = parser.parse_args(argv)
    if args.compare_launch:
        compare_launch(args)
        return

    import fp4.runtime.launch  # noqa: F401
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


# ----------------------------------------------------------------------------------------------------------
# --compare-launch

LAUNCH_OPS = ("quest_quantize", "sr_quantize", "requantize_sr", "fp8_fold_gemm")
"""The ops compared by default: the forward and backward quantizers and, where the target has one, the GEMM."""


def launch_cases(tokens=None):
    """``{op: (function of the inputs, inputs)}`` at Llama-1B widths (``tokens`` None: the names only)."""
    names = ("quest_quantize", "quest_quantize_fold", "sr_quantize", "sr_quantize (transposed)", "requantize_sr",
             "fp8_fold_gemm", "mxfp4_gemm")  # fmt: skip
    if tokens is None:
        return dict.fromkeys(names)
    fp4 = torch.ops.fp4
    K, N = 2048, 5632
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, K, device="cuda", dtype=torch.bfloat16, generator=generator)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=generator)
    dy = torch.randn(tokens, N, device="cuda", dtype=torch.bfloat16, generator=generator)
    torch.manual_seed(0)
    seed = fp4.draw_seeds(1, x.device)[0]
    xc, xs, _ = fp4.quest_quantize(x, True)
    wc, ws, _ = fp4.quest_quantize(w, True)
    xf, wf = fp4.quest_quantize_fold(x, True), fp4.quest_quantize_fold(w, True)
    epilogue = (1.0, None, "none", None, None, None, False, torch.bfloat16)
    cases = {
        "quest_quantize": (lambda x: fp4.quest_quantize(x, True), (x,)),
        "quest_quantize_fold": (lambda x: fp4.quest_quantize_fold(x, True), (x,)),
        "sr_quantize": (lambda dy, seed: fp4.sr_quantize(dy, seed, 1, 4, False), (dy, seed)),
        "sr_quantize (transposed)": (lambda dy, seed: fp4.sr_quantize(dy, seed, 1, 4, True), (dy, seed)),
        "requantize_sr": (lambda c, s, seed: fp4.requantize_sr(c, s, seed, 1, 3), (wc, ws, seed)),
        "fp8_fold_gemm": (lambda *operands: fp4.fp8_fold_gemm(*operands, *epilogue), (xf[3], xf[4], wf[3], wf[4])),
        "mxfp4_gemm": (lambda *operands: fp4.mxfp4_gemm(*operands, *epilogue), (xc, xs, wc, ws)),
    }
    assert set(cases) == set(names)
    return cases


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


def _flat(value):
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat(item)]
    return [value]


def _bitwise_equal(a, b) -> bool:
    a, b = _flat(a), _flat(b)
    as_bytes = lambda t: t.view(torch.uint8) if t.element_size() == 1 else t  # fp8 has no equality kernel
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(as_bytes(x), as_bytes(y)) for x, y in zip(a, b)
    )


def compare_launch(args):
    from fp4.runtime import inductor_launch

    # Inductor compiles a user kernel with Triton's default FP contraction, which the plans' kernels turn off;
    # set before anything compiles, so that Inductor's compile workers start with it
    os.environ.setdefault(inductor_launch.FP_FUSION_ENV, "0")
    cases = launch_cases(args.tokens)
    names = [name.strip() for name in args.ops.split(",") if name.strip()]
    unknown = sorted(set(names) - set(cases))
    if unknown:
        raise SystemExit(f"unknown ops {unknown}; known: {sorted(cases)}")
    calls = args.graph_calls

    def compiled(op, launch):
        torch._dynamo.reset()
        return torch.compile(_repeated(op, calls), backend="fp4", options={"launch": launch}, fullgraph=True)

    first_op, first_inputs = cases[names[0]]
    empty = torch.compile(_repeated(first_op, 0), backend="fp4", fullgraph=True)
    empty_us = _host_seconds(empty, first_inputs, args.reps) * 1e6
    import triton

    card = torch.cuda.get_device_name()
    summary = {
        "card": card,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "tokens": args.tokens,
        "op_calls_per_graph": calls,
        "reps": args.reps,
        "autotune": os.environ.get("FP4_AUTOTUNE", "1"),
        "empty_graph_us": empty_us,
        "target_us_per_op": 25.0,
        "ops": {},
    }
    for name in names:
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
                record[f"{launch}_graph_us"] = _host_seconds(function, inputs, args.reps) * 1e6
                record[f"{launch}_us"] = (record[f"{launch}_graph_us"] - empty_us) / calls
            except Exception as error:  # keep measuring the other ops; the record says what failed
                traceback.print_exc()
                record[f"{launch}_error"] = f"{type(error).__name__}: {error}"[:2000]
            if launch == "inductor":
                launches = Counter(inductor_launch.COUNTERS) - before
                record["inductor_launches"] = launches[f"inductor.{name.split()[0]}"] > 0
                record["kept_on_plan"] = sorted({key.split(".", 2)[2] for key in launches if key.startswith("plan.")})
        if len(outputs) == 2:
            record["bitwise_equal"] = _bitwise_equal(outputs["plan"], outputs["inductor"])
            record["plan_equals_eager"] = _bitwise_equal(outputs["plan"][0], eager)
        print(f"{name}: {json.dumps(record)}", flush=True)
        _write(summary, args.out)

    timed = [r for r in summary["ops"].values() if r.get("inductor_launches") and "inductor_us" in r and "plan_us" in r]
    plan_us, inductor_us = sum(r["plan_us"] for r in timed), sum(r["inductor_us"] for r in timed)
    summary["faster"] = None if not timed else ("inductor" if inductor_us < plan_us else "plan")
    summary["all_bitwise_equal"] = all(r.get("bitwise_equal") for r in summary["ops"].values())
    _write(summary, args.out)
    print(f"host time per op call, {card}, {calls} calls a graph, less the empty graph's {empty_us:.1f} us:")
    for name, r in summary["ops"].items():
        times = "  ".join(
            f"{launch} {r[launch + '_us']:7.1f} us" for launch in ("plan", "inductor") if launch + "_us" in r
        )
        print(
            f"  {name:26s} {times}  from Inductor's code: {r.get('inductor_launches')}  "
            f"bitwise equal: {r.get('bitwise_equal')}"
        )
    print(f"faster on the ops that launched both ways: {summary['faster']}")


def _write(summary, path):
    if path:
        with open(path, "w") as stream:
            json.dump(summary, stream, indent=1)


if __name__ == "__main__":
    main()
