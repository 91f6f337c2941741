"""Time every candidate of the Hopper backward GEMMs (clip mask + inverse rotation) at Llama shapes, by variant.

A backward GEMM of a rewritten linear layer, ``dX = dY W`` or ``dW = dY^T X``, runs on the FP8 fold with the clip
mask and the inverse rotation in its epilogue.  Its candidates are the Triton FP8 kernels (``tma``,
``tma_persistent``) at their tile configurations and ``cublas_epilogue`` (cuBLAS's fp32 product, then the epilogue
kernel).  For each shape this prints and records the best time of each variant (the autotuner's own timings,
``triton.testing.do_bench`` medians) and the TFLOP/s it means; every candidate is checked against the variant the
autotuner chose (``rel_diff_to_chosen``: relative Frobenius distance on the same inputs); ``timings_ms`` keeps
every candidate's time by configuration.

    python benchmarks/backward_gemm_variants.py --out bwd_gemm.json [--models llama1b,llama7b]

Run it with an empty kernel cache (``FP4_CACHE_DIR``) so no stored choice skips the timing.
"""

from __future__ import annotations

import argparse
import json

import torch

TOKENS = 8192  # batch 4 x 2048, as fp4 bench --sections model
MODELS = {"llama1b": (2048, 5632), "llama7b": (4096, 11008)}


def shapes(hidden: int, intermediate: int) -> dict:
    """``{name: (M, N, K)}`` of one layer's backward GEMMs (q/k/v/o alike, gate/up alike)."""
    return {
        "dX attention": (TOKENS, hidden, hidden),
        "dX gate/up": (TOKENS, hidden, intermediate),
        "dX down": (TOKENS, intermediate, hidden),
        "dW attention": (hidden, hidden, TOKENS),
        "dW gate/up": (intermediate, hidden, TOKENS),
        "dW down": (hidden, intermediate, TOKENS),
    }


def time_variants(M: int, N: int, K: int) -> dict:
    from fp4.runtime import autotune, launch
    from fp4.runtime.lowering import Epilogue

    ops = torch.ops.fp4
    a = ops.quest_quantize_fold(torch.randn(M, K, device="cuda", dtype=torch.bfloat16), True)
    b = ops.quest_quantize_fold(torch.randn(N, K, device="cuda", dtype=torch.bfloat16), True)
    mask = ops.quest_quantize(torch.randn(M, N, device="cuda", dtype=torch.bfloat16), True)[2]
    operands = (a[3], a[4], b[3], b[4])
    epilogue = Epilogue(clip_mask=mask, inverse_rotate=True)
    lowering = launch.LOWERINGS["fp8_fold"]
    lowering.cublas_product = True  # a candidate here whatever FP4_CUBLAS_PRODUCT says: this is what times it
    autotune.AUTOTUNER.timings.clear()
    autotune.AUTOTUNER._chosen.clear()
    plan = launch.GemmPlan(lowering, operands, M, N, K, epilogue, operands[0].device)
    chosen = plan(operands, epilogue)
    (timings,) = autotune.AUTOTUNER.timings.values()
    by_label = {config.label(): config for config in plan.candidates}
    best: dict = {}
    for label, ms in timings.items():
        variant = by_label[label].name or "(pointer loads)"
        if ms < best.get(variant, (float("inf"),))[0]:
            best[variant] = (ms, label)
    flops = 2 * M * N * K
    every = {label: round(ms, 4) for label, ms in timings.items()}
    row = {"M": M, "N": N, "K": K, "chosen": plan.chosen.label(), "timings_ms": every}
    for variant, (ms, label) in sorted(best.items(), key=lambda item: item[1][0]):
        other = launch.GemmPlan(lowering, operands, M, N, K, epilogue, operands[0].device, config=by_label[label])
        got = other(operands, epilogue)
        difference = ((got.float() - chosen.float()).norm() / chosen.float().norm()).item()
        row[variant] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1), "config": label,
                        "rel_diff_to_chosen": difference}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bwd_gemm.json")
    parser.add_argument("--models", default="llama1b,llama7b")
    args = parser.parse_args()
    card = torch.cuda.get_device_name()
    rows = []
    for model in args.models.split(","):
        for name, (M, N, K) in shapes(*MODELS[model]).items():
            row = {"card": card, "model": model, "gemm": name, **time_variants(M, N, K)}
            rows.append(row)
            best = {k: (v["ms"], v["tflops"]) for k, v in row.items() if isinstance(v, dict) and "ms" in v}
            print(model, name, (M, N, K), best, flush=True)
            with open(args.out, "w") as stream:
                json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
