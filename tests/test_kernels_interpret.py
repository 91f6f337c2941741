"""The generated kernels in Triton's CPU interpreter, against the reference, on small random inputs.

Triton's own jit helpers (``tl.cdiv``, reductions) run in the interpreter only
when ``TRITON_INTERPRET=1`` is set before Triton is imported, so the cases run
in one child process (this file executed as a script) and report back as
JSON; each test below checks one case.  The interpreter is right about layouts,
dequantization, MMA and Philox, which is what these cases exercise; it is not
bit-exact for fp32 -> bf16/fp8 casts, so the GEMM cases write fp32 (a bf16
output may be either rounding of the exact fp32 one) and the fold cases
compare values that are exact in E4M3 (casts are checked on a GPU in
tests/gpu).
"""

from __future__ import annotations

import pytest
from in_interpreter import assert_bitwise, interpreted_kernel, report, run_cases

# ----------------------------------------------------------------------------------------------------------------
# the child process


def _cases():
    import torch
    from fp4.runtime import fold, launch, philox, reference
    from fp4.runtime.autotune import Config
    from fp4.runtime.ops import NO_SIGNS

    generator = torch.Generator().manual_seed(20261127)
    results = {}

    def record(name, got, want):
        got, want = (
            (got,) if isinstance(got, torch.Tensor) else got,
            (want,) if isinstance(want, torch.Tensor) else want,
        )
        mismatches = []
        for g, w in zip(got, want):
            if g.dtype == fold.FP8_DTYPE:
                g, w = g.view(torch.uint8), w.view(torch.uint8)
            differ = (g != w) & ~(g.isnan() & w.isnan()) if g.is_floating_point() else g != w
            mismatches.append(-1 if g.shape != w.shape else int(differ.sum()))  # a NaN row scale equals a NaN
        results[name] = {"mismatches": mismatches}

    def data(rows, cols, dtype):
        x = torch.randn(rows, cols, generator=generator) * torch.rand(1, cols, generator=generator).mul(3).exp()
        x[rows // 2] = 0
        return x.to(dtype)

    last = Config.make(4, BLOCK_ROWS=4, BLOCK_GROUPS=2)
    first = Config.make(4, BLOCK_ROWS=32, BLOCK_GROUPS=2)
    for dtype in (torch.bfloat16, torch.float32):
        x = data(37, 96, dtype)
        for rotate in (True, False):
            got = launch.launch_quantize_dense(x, "quest", "last", rotate, interpret=True, config=last)
            record(f"quest_{dtype}_{rotate}", got, reference.quest_quantize(x, rotate))
    # groups whose squares overflow float32 (statistics taken at 2**-96 times), next to ordinary ones,
    # a group just below the threshold, an infinite one and a NaN one
    x = data(8, 128, torch.float32)
    x[0] *= 1e30
    x[1, :32] *= 3e38 / x[1, :32].abs().max()
    x[2, 32:64] *= 2.0**59.9 / x[2, 32:64].abs().max()
    x[3, 5], x[4, 70] = float("inf"), float("nan")
    for rotate in (True, False):
        got = launch.launch_quantize_dense(x, "quest", "last", rotate, interpret=True, config=last)
        record(f"quest_huge_{rotate}", got, reference.quest_quantize(x, rotate))
    # the layer seed reaches the kernels as a tensor; they derive each stream's seed and the signs themselves
    for seed in SEEDS:
        seed_tensor = torch.tensor(seed, dtype=torch.int64)
        signs = reference.rotation_signs(seed, reference.STREAM_DGRAD_SIGNS)
        x = data(45, 70, torch.bfloat16)
        for axis, config in (("last", last), ("first", first)):
            for sign_stream in (reference.STREAM_DGRAD_SIGNS, NO_SIGNS):
                got = launch.launch_quantize_dense(
                    x, "sr", axis, True, seed_tensor, 2, sign_stream, interpret=True, config=config
                )
                want = reference.sr_quantize(x, signs if sign_stream != NO_SIGNS else None, seed, 2, axis == "first")
                record(f"sr_{axis}_{sign_stream != NO_SIGNS}_{seed}", got, want)
        codes, scales, _ = reference.quest_quantize(data(70, 64, torch.float32), True)
        got = launch.launch_requantize(codes, scales, seed_tensor, 3, 0, interpret=True, config=first)
        want = reference.requantize_sr(codes, scales, reference.rotation_signs(seed, 0), seed, 3)
        record(f"requantize_{seed}", got, want)
    # the backward quantizers writing the FP8 fold as well (one program per output row block, two passes)
    seed = SEEDS[0]
    seed_tensor = torch.tensor(seed, dtype=torch.int64)
    signs = reference.rotation_signs(seed, reference.STREAM_WGRAD_SIGNS)
    x = data(45, 70, torch.bfloat16)
    for axis, config in (("last", Config.make(4, BLOCK_ROWS=4, BLOCK_GROUPS=2)), ("first", first)):
        got = launch.launch_quantize_dense(
            x, "sr", axis, True, seed_tensor, 4, reference.STREAM_WGRAD_SIGNS, True, interpret=True, config=config
        )
        want = reference.sr_quantize(x, signs, seed, 4, axis == "first")
        record(f"sr_fold_{axis}", got, want + fold.fold_reference(*want))
    codes, scales, _ = reference.quest_quantize(data(70, 64, torch.float32), True)
    got = launch.launch_requantize(codes, scales, seed_tensor, 5, 1, True, interpret=True, config=first)
    want = reference.requantize_sr(codes, scales, signs, seed, 5)
    record("requantize_fold", got, want + fold.fold_reference(*want))
    record("fold", launch.launch_fold(codes, scales, interpret=True, config=last), fold.fold_reference(codes, scales))
    # a row longer than one pass over its scales, spread over many programs: a NaN group, a huge and a tiny one
    x = data(5, 8448, torch.float32)
    x[1, 8300:8332] *= 2.0**100
    x[2, 40] = float("nan")
    x[3, 8400:8432] *= 2.0**-100
    codes, scales, _ = reference.quest_quantize(x, True)
    got = launch.launch_fold(codes, scales, interpret=True, config=Config.make(4, BLOCK_ROWS=2, BLOCK_GROUPS=4))
    record("fold_long_rows", got, fold.fold_reference(codes, scales))
    x = data(20, 128, torch.bfloat16)
    got = launch.launch_quantize_dense(x, "quest", "last", True, fold_output=True, interpret=True, config=last)
    want = reference.quest_quantize(x, True)
    record("quest_fold", got, want + fold.fold_reference(*want[:2]))

    # GEMMs: fp32 output, compared by relative error with the reference (same operands)
    M, N, K = 48, 96, 192
    a = reference.quest_quantize(data(M, K, torch.float32), True)
    b = reference.quest_quantize(torch.randn(N, K, generator=generator), True)
    bias, gate, residual = torch.randn(N, generator=generator), torch.randn(M, N), torch.randn(M, N)
    mask = reference.quest_quantize(torch.randn(M, N, generator=generator) ** 3, True)[2]
    epilogues = {
        "plain": (1.0, None, "none", None, None, None, False),
        "bias_gelu": (0.5, bias, "gelu", None, None, None, False),
        "silu_gate_residual": (1.0, None, "silu", gate, residual, None, False),
        "gelu_tanh_relu": (1.0, bias, "gelu_tanh", None, None, None, False),
        "relu": (1.0, None, "relu", None, None, None, False),
        "mask_unrotate": (reference.BACKWARD_ALPHA, None, "none", None, None, mask, True),
    }
    folded = fold.fold_reference(*a[:2]) + fold.fold_reference(*b[:2])
    for name, epilogue in epilogues.items():
        want = reference.mxfp4_gemm(*a[:2], *b[:2], *epilogue, torch.float32)
        for split in (1, 2):
            config = Config.make(4, 2, BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=2, SPLIT_N=split)
            for lowering in ("fp8_fold", "dot_scaled"):
                if lowering == "fp8_fold":
                    got = launch.launch_fold_gemm(*folded, *epilogue, torch.float32, interpret=True, config=config)
                else:
                    got = launch.launch_mxfp4_gemm(
                        *a[:2], *b[:2], *epilogue, torch.float32, lowering=lowering, interpret=True, config=config
                    )
                error = ((got - want).norm() / want.norm()).item()
                results[f"gemm_{lowering}_{name}_{split}"] = {"error": error}
    # cuBLAS's product finished by the epilogue kernel: in the interpreter the plan's product is the float matmul
    # of the folded operands, the very call made here, so the output is the reference epilogue's, bit for bit
    for M, N, K in CUBLAS_PRODUCT_SHAPES:
        a = fold.fold_reference(*reference.quest_quantize(data(M, K, torch.float32), True)[:2])
        b = fold.fold_reference(*reference.quest_quantize(torch.randn(N, K, generator=generator), True)[:2])
        mask = reference.quest_quantize(torch.randn(M, N, generator=generator) ** 3, True)[2]
        bias = torch.randn(N, generator=generator).to(torch.bfloat16)
        epilogue = (reference.BACKWARD_ALPHA, bias, "none", None, None, mask, True)
        acc = (a[0].float() @ b[0].float().t()) * a[1][:, None] * b[1][None, :]
        want = reference.gemm_epilogue(acc, *epilogue, torch.float32)
        for out_dtype in (torch.float32, torch.bfloat16):
            for split in (1, 2):
                config = Config.make(4, 1, "cublas_epilogue", BLOCK_M=32, BLOCK_N=64, SPLIT_N=split)
                launch.COUNTERS.clear()
                got = launch.launch_fold_gemm(*a, *b, *epilogue, out_dtype, interpret=True, config=config)
                ran = launch.COUNTERS == {"gemm.fp8_fold.cublas_epilogue": 1}
                if out_dtype == torch.float32:
                    mismatches = int((got != want).sum())
                else:  # the interpreter's fp32 -> bf16 cast truncates: either rounding of the exact fp32 result
                    truncated = (want.view(torch.int32) & -(1 << 16)).view(torch.float32).to(torch.bfloat16)
                    mismatches = int(((got != want.to(torch.bfloat16)) & (got != truncated)).sum())
                name = f"cublas_product_{M}x{N}x{K}_{str(out_dtype)[6:]}_{split}"
                results[name] = {"mismatches": [mismatches if got.shape == want.shape and ran else -1]}
    grad = torch.randn(300, 40, generator=generator)
    got = launch.launch_bias_grad(grad, torch.float32, interpret=True, config=Config.make(4, BLOCK_T=64, BLOCK_N=32))
    results["bias_grad"] = {"error": ((got.double() - grad.double().sum(0)).abs().max() / grad.abs().sum()).item()}

    # the emitted Philox, with a non-zero high counter word, against fp4.runtime.philox
    results["philox_wide"] = _philox_case(philox, 1)
    results["philox_wide_4x"] = _philox_case(philox, 4)
    return results


def _philox_case(philox, words):
    import torch
    from fp4.codegen import lanes
    from fp4.codegen.source import SourceWriter, header

    w = SourceWriter()
    w.lines_(header("philox_words", "Philox words at 64-bit offsets", [], {}))
    w.line("@triton.jit")
    with w.block("def philox_words(out_ptr, seed, base, BLOCK: tl.constexpr):"):
        w.line("offsets = base + tl.arange(0, BLOCK).to(tl.int64)")
        lanes.emit_philox_keys(w, "seed", "key")
        names = lanes.emit_philox(
            w, "key", "offsets.to(tl.uint32)", "(offsets >> 32).to(tl.uint32)", "word", words=words
        )
        for k, name in enumerate(names):
            w.line(f"tl.store(out_ptr + tl.arange(0, BLOCK) * {words} + {k}, {name}.to(tl.int64) & 0xFFFFFFFF)")
    philox_words = interpreted_kernel("philox_words", w.text())
    out = torch.empty(64 * words, dtype=torch.int64)
    seed, base = (1 << 62) + 12345, (5 << 32) + 77
    philox_words[(1,)](out, seed, base, BLOCK=64)
    want = philox.randint4x(seed, base + torch.arange(64))[:, :words].flatten()
    return {"mismatches": [int((out != want).sum())]}


# ----------------------------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def interpreted():
    return run_cases(__file__, timeout=1200)


BITWISE = [f"quest_{d}_{r}" for d in ("torch.bfloat16", "torch.float32") for r in (True, False)]
BITWISE += [f"quest_huge_{r}" for r in (True, False)]
SEEDS = (123456789123, 2**62 + 977, 5)
BITWISE += [f"sr_{axis}_{signs}_{seed}" for axis in ("last", "first") for signs in (True, False) for seed in SEEDS]
BITWISE += [f"requantize_{seed}" for seed in SEEDS]
BITWISE += ["fold", "fold_long_rows", "quest_fold", "sr_fold_last", "sr_fold_first", "requantize_fold"]
BITWISE += ["philox_wide", "philox_wide_4x"]


@pytest.mark.parametrize("case", BITWISE)
def test_quantizer_bitwise_in_interpreter(interpreted, case):
    assert_bitwise(interpreted, case)


GEMMS = [
    f"gemm_{lowering}_{name}_{split}"
    for lowering in ("fp8_fold", "dot_scaled")
    for name in ("plain", "bias_gelu", "silu_gate_residual", "gelu_tanh_relu", "relu", "mask_unrotate")
    for split in (1, 2)
]


@pytest.mark.parametrize("case", GEMMS)
def test_gemm_in_interpreter(interpreted, case):
    # fp32 accumulation of exact products in another order, and fp32 activations: far below 1e-6
    assert interpreted[case]["error"] < 1e-6


CUBLAS_PRODUCT_SHAPES = ((64, 96, 128), (48, 160, 64), (112, 32, 224))
CUBLAS_PRODUCT = [
    f"cublas_product_{M}x{N}x{K}_{dtype}_{split}"
    for M, N, K in CUBLAS_PRODUCT_SHAPES
    for dtype in ("float32", "bfloat16")
    for split in (1, 2)
]


@pytest.mark.parametrize("case", CUBLAS_PRODUCT)
def test_cublas_product_epilogue_bitwise_in_interpreter(interpreted, case):
    """The plan's ``cublas_epilogue`` variant ran (counted) and its kernel finished the product as the reference
    epilogue does (alpha, bias, clip mask, inverse rotation), partial tiles at both edges included."""
    assert_bitwise(interpreted, case)


def test_bias_grad_in_interpreter(interpreted):
    assert interpreted["bias_grad"]["error"] < 1e-6


if __name__ == "__main__":
    report(_cases)
