"""The NVFP4 recipes' kernel sources (fp4.codegen.nvfp4): specs, names, and their PTX for each GPU, without a GPU.

* sm_100a: the NVFP4 GEMM (``dot_scaled`` with E4M3 scales per 16) runs on
  ``tcgen05.mma ... kind::mxf4nvf4.block_scale.block16``, which PTX also spells
  ``.scale_vec::4X`` (one scale per 16 elements; Triton 3.9 writes ``.block16``);
* sm_120a: ``mma.sync ... kind::mxf4nvf4.block_scale.scale_vec::4X ... .ue4m3``;
* sm_90a: the ``dequant_bf16`` lowering runs on bf16 ``wgmma`` (no FP8: NVFP4 has no exact FP8 form);
* sm_80: bf16 ``mma.sync``;
* quantizers: no fused multiply-add, no flush-to-zero arithmetic, IEEE divisions (``div.rn.f32``).
"""

from __future__ import annotations

import pytest
from fp4.codegen.nvfp4 import NVFP4GemmSpec, NVFP4QuantizeSpec, emit_nvfp4_gemm, emit_nvfp4_quantize
from fp4.codegen.spec import EpilogueSpec
from test_codegen_ptx import compiled, filecheck  # noqa: F401  (the session's AOT compiler fixture)

pytest.importorskip("triton")

GEMM_TILE = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, EVEN_K=True, DOT_FP32=False)
FORWARD = EpilogueSpec(bias=True, activation="silu", gate=True, residual=True)


def test_specs_are_validated_and_named():
    assert NVFP4QuantizeSpec("eden", "dense", "first", 128).kernel_name == "nvfp4_rotate128_eden_quantize_first_bf16"
    assert (
        NVFP4QuantizeSpec("eden", "nvfp4", "first", 128, "u8").kernel_name
        == "nvfp4_requantize_rotate128_eden_quantize_first_nvfp4"
    )
    assert NVFP4QuantizeSpec("sr", axis="first", hadamard=16).kernel_name == "nvfp4_rotate16_sr_quantize_first_bf16"
    assert NVFP4GemmSpec("dot_scaled", FORWARD).kernel_name == "nvfp4_gemm_dot_scaled_bias_silu_gate_residual_bf16"
    for bad, message in (
        (dict(method="eden", hadamard=16), "128-point"),
        (dict(method="four_over_six", axis="first"), "along its last dimension"),
        (dict(method="rtn", source="nvfp4", input_dtype="u8"), "first dimension after the 128-point"),
        (dict(method="sr", hadamard=128), "16 points"),
        (dict(method="rtn", hadamard=32), "hadamard must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            NVFP4QuantizeSpec(**bad)
    with pytest.raises(ValueError, match="no alpha, clip mask or inverse rotation"):
        NVFP4GemmSpec("dot_scaled", EpilogueSpec(clip_mask=True))


def test_emission_is_deterministic_and_headed():
    spec = NVFP4QuantizeSpec("eden", "dense", "last", 128, "fp32")
    first, second = emit_nvfp4_quantize(spec), emit_nvfp4_quantize(spec)
    assert first.text == second.text and first.digest == second.digest
    assert first.text.startswith("# ---") and "method = 'eden'" in first.text
    assert "enable_fp_fusion=False" in first.text and first.options == {"enable_fp_fusion": False}
    assert set(emit_nvfp4_quantize(NVFP4QuantizeSpec("amax", hadamard=16)).signature) == {
        "x_ptr", "amax_ptr", "rows", "cols", "stride_x", "out_width",
    }  # fmt: skip


@pytest.mark.parametrize("epilogue", [EpilogueSpec(), FORWARD], ids=["plain", "forward"])
def test_sm100_nvfp4_gemm_uses_block_scaled_tcgen05_with_e4m3_scales(compiled, tmp_path, epilogue):  # noqa: F811
    ptx = compiled(emit_nvfp4_gemm(NVFP4GemmSpec("dot_scaled", epilogue)), 100, GEMM_TILE)
    filecheck(
        ptx,
        "CHECK: .target sm_100a\n"
        "CHECK: tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.{{block16|scale_vec::4X}}\n"
        "CHECK-NOT: kind::mxf4.block_scale.block32\n",
        tmp_path,
    )


def test_sm120_nvfp4_gemm_uses_mxf4nvf4_mma_sync_with_e4m3_scales(compiled, tmp_path):  # noqa: F811
    ptx = compiled(emit_nvfp4_gemm(NVFP4GemmSpec("dot_scaled", EpilogueSpec())), 120, GEMM_TILE)
    filecheck(
        ptx,
        "CHECK: .target sm_120a\n"
        "CHECK: mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X.f32.e2m1.e2m1.f32.ue4m3\n",
        tmp_path,
    )


def test_sm90_nvfp4_gemm_dequantizes_to_bf16_wgmma(compiled, tmp_path):  # noqa: F811
    spec = NVFP4GemmSpec("dequant_bf16", FORWARD)
    ptx = compiled(emit_nvfp4_gemm(spec), 90, dict(GEMM_TILE, BLOCK_K=64), num_warps=8)
    filecheck(ptx, "CHECK: .target sm_90a\nCHECK: wgmma.mma_async.sync.aligned.{{m64n[0-9]+k16}}.f32.bf16.bf16\n",
              tmp_path)  # fmt: skip
    assert "e4m3" not in ptx.split("wgmma", 1)[1]  # bf16 tensor cores only


def test_sm80_nvfp4_gemm_uses_bf16_mma(compiled, tmp_path):  # noqa: F811
    spec = NVFP4GemmSpec("dequant_bf16", EpilogueSpec())
    ptx = compiled(emit_nvfp4_gemm(spec), 80, dict(GEMM_TILE, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64))
    filecheck(ptx, "CHECK: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32\n", tmp_path)


QUANTIZERS = [
    NVFP4QuantizeSpec("rtn", "dense", "last"),
    NVFP4QuantizeSpec("sr", "dense", "first", 16),
    NVFP4QuantizeSpec("rtn_2d"),
    NVFP4QuantizeSpec("four_over_six"),
    NVFP4QuantizeSpec("eden", "dense", "first", 128),
    NVFP4QuantizeSpec("eden", "nvfp4", "first", 128, "u8"),
    NVFP4QuantizeSpec("amax", "dense", "last", 128),
]


@pytest.mark.parametrize("spec", QUANTIZERS, ids=lambda s: s.kernel_name)
def test_sm90_quantizers_round_like_the_reference(compiled, tmp_path, spec):  # noqa: F811
    ptx = compiled(emit_nvfp4_quantize(spec), 90, dict(BLOCK_ROWS=16, BLOCK_COLS=128))
    checks = "CHECK: .target sm_90a\nCHECK-NOT: {{fma.rn.f32|(add|sub|mul|div)[.a-z]*\\.ftz}}\n"
    filecheck(ptx, checks, tmp_path)
    assert "div.full" not in ptx and "div.approx" not in ptx
    if spec.method in ("four_over_six", "eden"):
        assert "div.rn.f32" in ptx
    if spec.method == "amax":
        assert "atom.global" in ptx and "max" in ptx
    if spec.method in ("sr", "eden") or spec.hadamard == 128:
        assert "mul.hi.u32" in ptx or "mul.wide.u32" in ptx  # Philox
