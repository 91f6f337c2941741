"""``fp4 bench``'s report: every section's numbers reach the markdown table, ratios computed from them."""

from __future__ import annotations

import pytest
from fp4 import bench

INFO = {"card": "TEST CARD", "date": "2026-01-01 00:00 UTC", "torch": "t", "triton": "tr", "command": "fp4 bench"}


def test_markdown_reports_every_section():
    quant = [{"kernel": "sr_quantize (D.H, last dim)", "rows": 64, "cols": 96, "ms": 0.5, "tb_s": 1.25,
              "fraction_of_copy": 0.4, "copy_tb_s": 3.125}]  # fmt: skip
    linear = {"shape": [8, 16, 32], "bf16_eager_ms": 3.0, "quartet_ms": 4.0, "speedup": 0.75}
    compiled = {"shape": [8, 32, 64], "bf16_eager_ms": 9.0, "bf16_inductor_ms": 8.0, "fp4_ms": 6.0,
                "fp4_vs_eager": 1.5, "fp4_vs_inductor": 8.0 / 6.0}  # fmt: skip
    text = bench.markdown(INFO, [], quant, linear, compiled)
    assert "Card: TEST CARD; 2026-01-01 00:00 UTC" in text
    assert "| sr_quantize (D.H, last dim) | 64×96 | 0.500 | 1.25 | 40% |" in text
    assert "same run: 3.12 TB/s" in text or "same run: 3.13 TB/s" in text
    assert "bf16 eager 3.00 ms, Quartet on the kernels 4.00 ms: ×0.75" in text
    assert "bf16 eager 9.00 ms, bf16 Inductor 8.00 ms, backend='fp4' 6.00 ms: ×1.50 vs eager, ×1.33 vs Inductor" in text


def test_markdown_leaves_out_sections_not_run():
    text = bench.markdown(INFO, [], [], None)
    assert "SwiGLU" not in text and "Linear layer" not in text and "| kernel |" not in text


def test_recipe_axis_expands_the_model_modes_and_reports_the_gemm():
    from fp4 import bench_model, bench_recipes

    modes = bench_recipes.recipe_modes(["bf16_eager", "bf16_inductor", "fp4", "fp4_cudagraphs"], ["quartet", "nvfp4"])
    assert modes == ["bf16_eager", "bf16_inductor", "fp4", "fp4_nvfp4", "fp4_cudagraphs", "fp4_nvfp4_cudagraphs"]
    assert bench_model.FP4_MODES["fp4_quartet2_cudagraphs"] == {"cudagraphs": True, "recipe": "quartet2"}
    assert "fp4_nvfp4_cudagraphs_fold_backward" not in bench_model.FP4_MODES  # the FP8 fold is quartet's
    with pytest.raises(ValueError, match=r"unknown recipe\(s\) \['mxfp8'\]"):
        bench_recipes.check_recipes(["quartet", "mxfp8"])
    rows = [
        {"name": "square4096", "M": 4096, "N": 4096, "K": 4096, "recipe": recipe, "lowering": lowering,
         "bf16_cublas_tflops": 700.0, "gemm_tflops": tflops, "gemm_vs_bf16": tflops / 700.0, "quantize_ms": 0.25,
         "with_quantize_vs_bf16": 0.5}
        for recipe, lowering, tflops in (("quartet", "fp8_fold", 1200.0), ("nvfp4", "dequant_bf16", 350.0))
    ]  # fmt: skip
    text = bench.markdown(INFO, [], [], None, recipes=rows)
    assert "| square4096 | 4096×4096×4096 | nvfp4 | dequant_bf16 | 700 | 350 | 0.50 | 0.250 | 0.50 |" in text
    assert "these rows are for numerics, not speed" in text


def test_a_failed_mode_keeps_the_table_shape():
    """A mode that failed is one row with as many cells as the header, naming the mode and the error."""
    from fp4 import bench_distributed, bench_model

    lines = bench_model.markdown([{"config": "c", "mode": "fp4", "error": "RuntimeError: " + "x" * 300}])
    assert lines[0].count("|") == lines[-1].count("|") == len(bench_model.MODEL_COLUMNS) + 1
    assert lines[-1].startswith("| c | fp4 | failed: RuntimeError: x")
    row = bench_model.failed_row(["c", 2, "ddp_fp4"], "boom", len(bench_distributed.COLUMNS))
    assert row.count("|") == len(bench_distributed.COLUMNS) + 1 and "| c | 2 | ddp_fp4 | failed: boom |" in row
