"""Every kind of emitted kernel compiled ahead of time for its GPU (no GPU needed), its PTX checked with FileCheck.

* sm_100a: ``dot_scaled`` GEMMs run on ``tcgen05.mma ... kind::mxf4.block_scale.block32``;
* sm_120a: the same source runs on ``mma.sync ... kind::mxf4nvf4.block_scale``;
* sm_90a: fold GEMMs run on FP8 ``wgmma`` with E4M3 operands (never bf16), through TMA where asked; the
  kernel finishing cuBLAS's product runs no MMA and no fused multiply-add;
* sm_80: the ``dequant_bf16`` lowering runs on bf16 ``mma.sync``;
* quantizers: no fused multiply-add anywhere (the reference rounds every product and sum), IEEE square
  roots, no flush-to-zero arithmetic (the E2M1 decode multiplies subnormals).

Compiled kernels are shared within the session through a fixture; nothing persists between sessions
(the kernel cache lives in a temporary directory).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fp4.codegen import lanes
from fp4.codegen.gemm import emit_gemm
from fp4.codegen.quantize import emit_fold, emit_quantize
from fp4.codegen.spec import EpilogueSpec, GemmSpec, QuantizeSpec
from fp4.runtime.cache import KernelCache, compile_ahead_of_time

pytest.importorskip("triton")

ALIGNED = ("stride_x", "stride_x_scales", "cols", "out_width", "K", "N", "stride_am", "stride_bn", "stride_om")
GEMM_TILE = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, SPLIT_N=2, EVEN_K=True)


def _filecheck_binary() -> str:
    found = shutil.which("filecheck") or str(Path(sys.executable).with_name("filecheck"))
    if not Path(found).exists():
        pytest.skip("filecheck (PyPI) is not installed")
    return found


def filecheck(text: str, checks: str, tmp_path: Path) -> None:
    check_file = tmp_path / "checks.txt"
    check_file.write_text(checks)
    run = subprocess.run([_filecheck_binary(), str(check_file)], input=text, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile on first use and keep the PTX for the rest of this module."""
    kernel_cache = KernelCache(tmp_path_factory.mktemp("fp4-kernels"))
    artifacts = {}

    def get(source, arch, constexprs, num_warps=4, num_stages=3):
        key = (source.digest, arch, tuple(sorted(constexprs.items())), num_warps)
        if key not in artifacts:
            kernel = compile_ahead_of_time(
                source, arch, constexprs, num_warps, num_stages, cache=kernel_cache, aligned=ALIGNED
            )
            artifacts[key] = kernel.asm["ptx"]
        return artifacts[key]

    return get


BACKWARD = EpilogueSpec(alpha=True, clip_mask=True, inverse_rotate=True)
FORWARD = EpilogueSpec(bias=True, activation="silu", gate=True, residual=True)


@pytest.mark.parametrize("epilogue", [EpilogueSpec(), BACKWARD], ids=["plain", "backward"])
def test_sm100_gemm_uses_block_scaled_fp4_tcgen05(compiled, tmp_path, epilogue):
    ptx = compiled(emit_gemm(GemmSpec("dot_scaled", epilogue)), 100, dict(GEMM_TILE, BLOCK_K=256))
    filecheck(
        ptx,
        "CHECK: .target sm_100a\nCHECK: tcgen05.mma.cta_group::1.kind::mxf4.block_scale.block32\nCHECK-NOT: wgmma\n",
        tmp_path,
    )


def test_sm120_gemm_uses_mxf4nvf4_mma_sync(compiled, tmp_path):
    ptx = compiled(emit_gemm(GemmSpec("dot_scaled", EpilogueSpec())), 120, GEMM_TILE)
    filecheck(
        ptx,
        "CHECK: .target sm_120a\nCHECK: mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale\n",
        tmp_path,
    )


@pytest.mark.parametrize(
    "spec",
    [
        GemmSpec("fp8_fold", EpilogueSpec()),
        GemmSpec("fp8_fold", BACKWARD, tma=True, promote=True),
        GemmSpec("fp8_fold", FORWARD, tma=True, persistent=True, promote=True),
    ],
    ids=lambda s: s.kernel_name,
)
def test_sm90_fold_gemm_uses_fp8_wgmma(compiled, tmp_path, spec):
    constexprs = dict(GEMM_TILE, NUM_PROGRAMS=132) if spec.persistent else GEMM_TILE
    ptx = compiled(emit_gemm(spec), 90, constexprs, num_warps=8)
    checks = "CHECK: .target sm_90a\n"
    if spec.tma:
        checks += "CHECK: cp.async.bulk.tensor.2d\n"
    checks += "CHECK: wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3\n"
    filecheck(ptx, checks, tmp_path)
    assert ".bf16.bf16" not in ptx  # the fold runs on FP8 tensor cores, not on bf16 ones


def test_sm90_promoted_fold_gemm_waits_for_each_tile(compiled):
    """What ``benchmarks/gemm_waits.py`` reports and RESULTS.md explains: promoting each K tile's product into fp32
    makes the loop wait for every MMA (``wait_group 0``); accumulating in the tensor cores overlaps the next tile's
    (``wait_group 1``).  A Triton that overlaps the promoted loop too fails here: re-time the backward GEMMs."""
    import importlib.util

    script = Path(__file__).parents[1] / "benchmarks" / "gemm_waits.py"
    spec = importlib.util.spec_from_file_location("gemm_waits", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loop_waits = module.loop_waits
    waits = {
        promote: loop_waits(
            compiled(emit_gemm(GemmSpec("fp8_fold", BACKWARD, tma=True, promote=promote)), 90, GEMM_TILE, num_warps=8)
        )  # fmt: skip
        for promote in (True, False)
    }
    assert waits == {True: [0], False: [1]}


@pytest.mark.parametrize("split", [1, 2])
def test_sm90_cublas_product_epilogue_compiles_without_mma_or_fma(compiled, tmp_path, split):
    """The kernel that finishes cuBLAS's product: no tensor-core instruction, and no fused multiply-add in the
    epilogue (the reference rounds the scales, alpha and every butterfly step separately)."""
    spec = GemmSpec("fp8_fold", EpilogueSpec(alpha=True, bias=True, clip_mask=True, inverse_rotate=True),
                    product="cublas")  # fmt: skip
    ptx = compiled(emit_gemm(spec), 90, dict(BLOCK_M=64, BLOCK_N=128 * split, SPLIT_N=split), num_warps=4)
    filecheck(ptx, "CHECK: .target sm_90a\nCHECK-NOT: {{wgmma|mma.sync|fma.rn.f32}}\n", tmp_path)
    assert "ld.global.v4.b32" in ptx and "add.rn.f32" in ptx  # 16-byte loads of the product; the butterfly


def test_sm80_dequant_gemm_uses_bf16_mma(compiled, tmp_path):
    ptx = compiled(emit_gemm(GemmSpec("dequant_bf16", EpilogueSpec())), 80, dict(GEMM_TILE, BLOCK_M=64, BLOCK_N=64))
    filecheck(ptx, "CHECK: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32\n", tmp_path)


FOLD_DECODE = re.compile(r"fma\.rn\.f32\s+%r\d+, %r\d+, 0f7E800000, 0f00000000;")
"""The fold's decode of saved codes: times 2**126 plus +0 in one rounding (exact; a negative zero code gives +0)."""

QUANTIZERS = [
    (QuantizeSpec(), dict(BLOCK_ROWS=8, BLOCK_GROUPS=16)),
    (QuantizeSpec(fold=True), dict(BLOCK_ROWS=4, BLOCK_GROUPS=32)),
    (QuantizeSpec(method="sr", signs=True), dict(BLOCK_ROWS=8, BLOCK_GROUPS=16)),
    (QuantizeSpec(method="sr", axis="first", signs=True), dict(BLOCK_ROWS=64, BLOCK_GROUPS=2)),
    (
        QuantizeSpec(method="sr", source="mxfp4", axis="first", signs=True, input_dtype="u8"),
        dict(BLOCK_ROWS=64, BLOCK_GROUPS=2),
    ),
]


@pytest.mark.parametrize("spec,constexprs", QUANTIZERS, ids=lambda v: getattr(v, "kernel_name", ""))
def test_sm90_quantizers_round_like_the_reference(compiled, tmp_path, spec, constexprs):
    ptx = compiled(emit_quantize(spec), 90, constexprs)
    if spec.fold:  # the fold's one deliberate fused op: saved codes times 2**126 plus +0, exact (-0 codes -> +0)
        assert FOLD_DECODE.search(ptx)
        ptx = FOLD_DECODE.sub("", ptx)
    no_fused_or_flushed = "CHECK-NOT: {{fma.rn.f32|\\.ftz}}\n"
    checks = "CHECK: .target sm_90a\n" + no_fused_or_flushed
    if spec.method == "quest":
        checks += "CHECK: sqrt.rn.f32\n" + no_fused_or_flushed
    filecheck(ptx, checks, tmp_path)
    # 16-byte loads of the dense input (one vector per thread and column slice)
    if spec.source == "dense":
        assert "ld.global.v4.b32" in ptx
    if spec.method == "sr":
        assert "mul.wide.u32" in ptx  # Philox products as one wide multiply each


def test_sm90_fold_kernel_converts_to_e4m3(compiled, tmp_path):
    ptx = compiled(emit_fold(), 90, dict(BLOCK_ROWS=4, BLOCK_GROUPS=32))
    filecheck(ptx, "CHECK: cvt.rn.satfinite.e4m3x2\n", tmp_path)
    # the decode's +0 stays fused into its multiply (one instruction) and nothing else is fused
    assert len(FOLD_DECODE.findall(ptx)) == ptx.count("fma.rn.f32") > 0


@pytest.mark.parametrize("arch", [100, 120])
def test_blackwell_quest_rounds_with_the_hardware_e2m1_conversion(compiled, tmp_path, arch):
    """On sm_100a/sm_120a QuEST codes come from ``cvt.rn.satfinite.e2m1x2.f32`` (four per word, two per
    instruction), NaN lanes made +0 first; the integer rounding of Hopper's kernel is gone."""
    spec = QuantizeSpec(hardware_e2m1=True)
    assert spec.kernel_name.endswith("_cvt")
    ptx = compiled(emit_quantize(spec), arch, dict(BLOCK_ROWS=8, BLOCK_GROUPS=16))
    checks = f"CHECK: .target sm_{arch}a\n" + "CHECK-COUNT-4: cvt.rn.satfinite.e2m1x2.f32\n" * 4
    checks += "CHECK-NOT: fma.rn.f32\n"
    filecheck(ptx, checks, tmp_path)
    # 16 conversions of two lanes each per group (4 words x 4 instructions), the magic-number rounding dropped
    assert ptx.count("cvt.rn.satfinite.e2m1x2.f32") % 16 == 0
    magic_floor = f", {lanes.RNE_MAGIC_FLOOR_BITS};"  # the bits of 2**22, the software rounding's smallest magic
    assert magic_floor not in ptx
    hopper = compiled(emit_quantize(QuantizeSpec()), 90, dict(BLOCK_ROWS=8, BLOCK_GROUPS=16))
    assert "e2m1x2" not in hopper and magic_floor in hopper
    assemble(ptx, f"sm_{arch}a", tmp_path)


def assemble(ptx: str, gpu: str, directory: Path) -> None:
    """Assemble ``ptx`` with the ptxas that ships with Triton (the inline PTX must be valid for ``gpu``).

    That ptxas may be older than the PTX ISA version Triton writes; the kernel uses nothing newer than 8.7.
    """
    import re

    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton ships no ptxas here")
    source = directory / "kernel.ptx"
    for _ in range(2):
        source.write_text(ptx)
        run = subprocess.run([str(ptxas), "--gpu-name", gpu, str(source), "-o", str(directory / "kernel.cubin")],
                             capture_output=True, text=True)  # fmt: skip
        supported = re.search(r"current version is '(\d+\.\d+)'", run.stderr)
        if run.returncode == 0 or supported is None:
            break
        ptx = re.sub(r"^\.version \d+\.\d+", f".version {supported.group(1)}", ptx, count=1, flags=re.M)
    assert run.returncode == 0, run.stderr[-2000:]


def test_hardware_e2m1_is_a_quest_option_only():
    with pytest.raises(ValueError, match="QuEST"):
        QuantizeSpec(method="sr", signs=True, hardware_e2m1=True)
    with pytest.raises(ValueError, match="QuEST"):
        QuantizeSpec(fold=True, hardware_e2m1=True)
