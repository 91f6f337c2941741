"""Run each rotate + quantize kernel a few times on one large input, for Nsight Compute to profile.

    ncu --kernel-name regex:quantize|fold --launch-skip 3 --launch-count 1 --metrics <list> \\
        python benchmarks/profile_quantize.py

The first calls compile and autotune; later ones are what the profiler sees.
"""

from __future__ import annotations

import sys

import torch
from fp4.runtime import launch
from fp4.runtime.philox import stream_seed


def main(rows: int = 8192, cols: int = 8192, repeats: int = 5) -> None:
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    codes, scales, _ = torch.ops.fp4.quest_quantize(x, True)
    seed, signs = stream_seed(7, 2), stream_seed(7, 0)
    cases = {
        "quest": lambda: launch.launch_quantize_dense(x, "quest", "last", True),
        "quest_fold": lambda: launch.launch_quantize_dense(x, "quest", "last", True, fold_output=True),
        "sr_last": lambda: launch.launch_quantize_dense(x, "sr", "last", True, seed, signs),
        "sr_first": lambda: launch.launch_quantize_dense(x, "sr", "first", True, seed, signs),
        "requantize": lambda: launch.launch_requantize(codes, scales, seed, signs),
        "fold": lambda: launch.launch_fold(codes, scales),
    }
    only = set(sys.argv[1:])
    for name, fn in cases.items():
        if only and name not in only:
            continue
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
