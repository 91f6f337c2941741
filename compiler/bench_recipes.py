"""``fp4 bench --recipes``: the recipe axis of the GEMM and whole-model sections (docs/recipes.md).

* GEMM: per shape, each recipe's GEMM on its own operands, from codes (``mxfp4_gemm`` for ``quartet``,
  ``nvfp4_gemm`` for ``quartet2`` and ``nvfp4``), and each recipe's forward quantizers of X and W, against bf16
  cuBLAS timed in the same run.  On Hopper the NVFP4 GEMM is the exact bf16-dequantized kernel: there is no FP8
  re-expression of NVFP4, so those rows measure numerics, not speed, and the table says so.
* Model: every fp4 mode of ``--modes`` once per recipe (``fp4_quartet2``, ``fp4_nvfp4_cudagraphs``, ...; the
  quartet recipe keeps the plain mode names), through :data:`fp4.bench_model.FP4_MODES`.
"""

from __future__ import annotations

from fp4.core import DEFAULT_RECIPE, RECIPES


def recipe_mode(mode: str, recipe: str) -> str:
    """The model-section mode running fp4 ``mode`` under ``recipe`` (``fp4_cudagraphs`` -> ``fp4_nvfp4_cudagraphs``)."""
    if recipe == DEFAULT_RECIPE or not mode.startswith("fp4"):
        return mode
    return "fp4_" + recipe + mode.removeprefix("fp4")


def recipe_modes(modes, recipes) -> list[str]:
    """``modes`` with each fp4 mode repeated for every recipe (the bf16 baselines once)."""
    out = []
    for mode in modes:
        for recipe in recipes if mode.startswith("fp4") else (DEFAULT_RECIPE,):
            name = recipe_mode(mode, recipe)
            if name not in out:
                out.append(name)
    return out


def fp4_modes(base: dict) -> dict:
    """``base`` (the quartet modes and their options) plus every mode under each other recipe."""
    modes = dict(base)
    for recipe in RECIPES:
        for mode, options in base.items():
            modes.setdefault(recipe_mode(mode, recipe), {**options, "recipe": recipe})
    return {name: options for name, options in modes.items() if not (
        options.get("recipe", DEFAULT_RECIPE) != DEFAULT_RECIPE and options.get("fold_backward"))}  # fmt: skip


def check_recipes(recipes) -> list[str]:
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    return list(recipes)


def _quantize(recipe: str, x, w):
    import torch

    fp4 = torch.ops.fp4
    if recipe == "quartet":
        return fp4.quest_quantize(x, True)[:2], fp4.quest_quantize(w, True)[:2]
    if recipe == "quartet2":
        return fp4.four_over_six_quantize(x), fp4.four_over_six_quantize(w)
    return fp4.nvfp4_quantize(x, False, False, None, 0), fp4.nvfp4_quantize_2d(w)


def _gemm(recipe: str, a, b):
    import torch

    fp4 = torch.ops.fp4
    if recipe == "quartet":
        return fp4.mxfp4_gemm(*a, *b, 1.0, None, "none", None, None, None, False, torch.bfloat16)
    return fp4.nvfp4_gemm(*a, *b, None, "none", None, None, torch.bfloat16)


def _tflops(M, N, K, ms):
    return 2.0 * M * N * K / (ms * 1e-3) / 1e12


def bench_recipe_gemm(shapes: dict, recipes, log, median_ms) -> list[dict]:
    """One row per shape and recipe: its GEMM from codes and its forward quantizers, against bf16 cuBLAS.

    ``median_ms(fn, graph=True)`` times ``fn`` (``fp4.bench``'s timer: CUDA-graph replays, median).
    """
    import torch
    from fp4.core import Target

    _median_ms = median_ms

    target = Target.detect()
    rows = []
    for name, (M, N, K) in shapes.items():
        generator = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(M, K, device="cuda", generator=generator, dtype=torch.bfloat16)
        w = (torch.randn(N, K, device="cuda", generator=generator) * 0.02).to(torch.bfloat16)
        bf16_ms = _median_ms(lambda x=x, w=w: torch.matmul(x, w.t()), graph=True)
        for recipe in recipes:
            a, b = _quantize(recipe, x, w)
            gemm_ms = _median_ms(lambda recipe=recipe, a=a, b=b: _gemm(recipe, a, b), graph=True)
            quantize_ms = _median_ms(lambda recipe=recipe, x=x, w=w: _quantize(recipe, x, w), graph=True)
            lowering = target.gemm_lowering if recipe == "quartet" else target.nvfp4_gemm_lowering
            row = {
                "name": name, "M": M, "N": N, "K": K, "recipe": recipe, "lowering": lowering,
                "bf16_cublas_ms": bf16_ms, "gemm_ms": gemm_ms, "quantize_ms": quantize_ms,
                "bf16_cublas_tflops": _tflops(M, N, K, bf16_ms), "gemm_tflops": _tflops(M, N, K, gemm_ms),
                "gemm_vs_bf16": bf16_ms / gemm_ms, "with_quantize_vs_bf16": bf16_ms / (gemm_ms + quantize_ms),
            }  # fmt: skip
            rows.append(row)
            log(f"{name} {recipe:9s} ({lowering}): GEMM {gemm_ms:.3f} ms ({row['gemm_tflops']:.0f} TFLOP/s), "
                f"quantize X and W {quantize_ms:.3f} ms, bf16 cuBLAS {bf16_ms:.3f} ms: "
                f"GEMM x{row['gemm_vs_bf16']:.2f}")  # fmt: skip
        torch.cuda.empty_cache()
    return rows


def markdown(rows) -> list[str]:
    """The recipe table, with what the NVFP4 rows on a GPU without FP4 tensor cores measure."""
    if not rows:
        return []
    lines = [
        "| shape | M×N×K | recipe | GEMM lowering | bf16 cuBLAS | GEMM | GEMM ÷ bf16 | quantize X, W ms "
        "| (quantize + GEMM) ÷ bf16 |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['M']}×{r['N']}×{r['K']} | {r['recipe']} | {r['lowering']} "
            f"| {r['bf16_cublas_tflops']:.0f} | {r['gemm_tflops']:.0f} | {r['gemm_vs_bf16']:.2f} "
            f"| {r['quantize_ms']:.3f} | {r['with_quantize_vs_bf16']:.2f} |"
        )
    lines += ["", "TFLOP/s; every row's bf16 cuBLAS baseline timed in the same run (CUDA-graph replays, median)."]
    if any(r["lowering"] == "dequant_bf16" for r in rows):
        lines.append(
            "NVFP4 on a GPU without FP4 tensor cores (Hopper included) runs the exact bf16-dequantized GEMM: "
            "these rows are for numerics, not speed (NVFP4 has no exact FP8 form)."
        )
    return lines
