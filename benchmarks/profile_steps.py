"""Where the time of a Quartet training step goes: CUDA kernel totals under ``torch.profiler``.

    python benchmarks/profile_steps.py [linear|block ...]

``linear``: one linear layer (tokens 8192, 4096 -> 11008) forward + backward on the
kernels (the eager oracle, every op on its CUDA implementation).  ``block``: a
Llama-7B SwiGLU block under ``torch.compile(block, backend="fp4")``.  The first
steps compile and autotune; the profiled steps come after.
"""

from __future__ import annotations

import sys

import fp4.runtime.calls  # noqa: F401  (the kernels as the CUDA implementations of the ops)
import torch
from fp4.bench import block_steps, linear_steps


def profile(name: str, step, repeats: int = 5) -> None:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name[:90], [0.0, 0])
            entry[0] += event.device_time / 1000 / repeats
            entry[1] += 1
    print(f"\n## {name}: ms per step by kernel ({repeats} steps)")
    print(f"{'ms':>8} {'calls':>6}  kernel")
    for kernel, (ms, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"{ms:8.3f} {calls // repeats:6d}  {kernel}")
    print(f"{sum(v[0] for v in totals.values()):8.3f}         total")


if __name__ == "__main__":
    chosen = sys.argv[1:] or ["linear", "block"]
    steps = {"linear": lambda: linear_steps()["quartet"], "block": lambda: block_steps()["fp4"]}
    for name in chosen:
        profile(name, steps[name]())
