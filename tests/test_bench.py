"""``fp4 bench``'s report: every section's numbers reach the markdown table, ratios computed from them."""

from __future__ import annotations

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
