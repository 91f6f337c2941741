"""The NVFP4 recipes' kernels (fp4.codegen.nvfp4) in Triton's CPU interpreter, against the reference.

Every quantizer pass (amax, then quantize) of the ``nvfp4`` and ``quartet2`` recipes
runs on CPU tensors in the interpreter and must equal :mod:`fp4.runtime.nvfp4` /
:mod:`fp4.runtime.quartet2` bit for bit (codes, E4M3 scale bytes, the decode
scale): both orientations, the 16- and 128-point transforms, stochastic
rounding, padded dimensions, large seeds.  The CUDA implementations of the ops
(their launch plans) run the same way: a second call reuses the first call's
plan, and inputs the kernels do not take fall back to the reference with the
reason counted.

The GEMM: Triton's interpreter multiplies neither bf16 tiles nor ``dot_scaled``
with E4M3 scales correctly (docs/QUARTET.md), so the ``dequant_bf16`` kernel runs
here with its dequantized tiles multiplied in fp32 (``DOT_FP32``, which the
interpreter gets right): this checks the decoding of codes and scales, the
tensor scales and every epilogue; the bf16 and ``dot_scaled`` products are
checked on a GPU (tests/gpu/test_recipes_gpu.py) and in the PTX
(tests/test_codegen_nvfp4.py).
"""

from __future__ import annotations

import pytest
from in_interpreter import assert_bitwise, report, run_cases

SEEDS = (123456789123, 2**62 + 977, 5)


def _cases():
    import torch
    from fp4.runtime import launch, launch_nvfp4, nvfp4, plans, quartet2, recipe_ops
    from fp4.runtime.autotune import Config

    generator = torch.Generator().manual_seed(20261207)
    results = {}

    def record(name, got, want):
        mismatches = []
        for g, w in zip(got, want):
            if g.shape != w.shape or g.dtype != w.dtype:
                mismatches.append(-1)
            elif g.dtype == torch.float32:
                mismatches.append(int((g.view(torch.int32) != w.view(torch.int32)).sum()))
            else:
                mismatches.append(int((g != w).sum()))
        results[name] = {"mismatches": mismatches}

    def data(rows, cols, dtype=torch.float32):
        x = torch.randn(rows, cols, generator=generator) * torch.rand(1, cols, generator=generator).mul(4).exp()
        x[rows // 2] = 0
        x[0, : min(cols, 16)] = 1e-30  # a block far below the tensor's range (its E4M3 scale underflows)
        return x.to(dtype)

    small = Config.make(4, BLOCK_ROWS=8, BLOCK_COLS=32)
    wide = Config.make(4, BLOCK_ROWS=8, BLOCK_COLS=128)
    square = Config.make(4, BLOCK_ROWS=16, BLOCK_COLS=32)

    # nvfp4 recipe: 1x16 operands, every orientation, transform and rounding; 37 x 80 pads 37 to 48 transposed
    for dtype in (torch.bfloat16, torch.float32):
        x = data(37, 80, dtype)
        for transpose in (False, True):
            for hadamard in (False, True):
                for seed in (None, SEEDS[0]):
                    seed_tensor = None if seed is None else torch.tensor(seed)
                    got = launch_nvfp4.launch_quantize(
                        x, "rtn" if seed is None else "sr", "first" if transpose else "last", 16 if hadamard else 0,
                        seed_tensor, 2, interpret=True, config=small,
                    )  # fmt: skip
                    want = nvfp4.quantize_operand(x, transpose, hadamard, seed, 2)
                    record(f"nvfp4_{dtype}_{transpose}_{hadamard}_{seed is not None}", got, want)
    for seed in SEEDS[1:]:
        x = data(24, 48, torch.bfloat16)
        got = launch_nvfp4.launch_quantize(x, "sr", "first", 16, torch.tensor(seed), 4, interpret=True, config=small)
        record(f"nvfp4_sr_seed_{seed}", got, nvfp4.quantize_operand(x, True, True, seed, 4))
    for rows in (40, 64):
        w = data(rows, 96)
        record(f"nvfp4_2d_{rows}", launch_nvfp4.launch_quantize(w, "rtn_2d", interpret=True, config=square),
               nvfp4.quantize_2d(w))  # fmt: skip
    zeros = torch.zeros(16, 32)
    record("nvfp4_zeros", launch_nvfp4.launch_quantize(zeros, "rtn", interpret=True, config=small),
           nvfp4.quantize(zeros))  # fmt: skip

    # quartet2: four over six forward; MS-EDEN backward, dense (both orientations) and re-quantized from NVFP4
    for dtype in (torch.bfloat16, torch.float32):
        x = data(37, 96, dtype)
        got = launch_nvfp4.launch_quantize(x, "four_over_six", interpret=True, config=small)
        record(f"four_over_six_{dtype}", got, quartet2.four_over_six_quantize(x))
    for seed in SEEDS:
        x = data(45, 70, torch.bfloat16)
        for transpose in (False, True):
            got = launch_nvfp4.launch_quantize(
                x, "eden", "first" if transpose else "last", 128, torch.tensor(seed), 2, 0, interpret=True, config=wide
            )  # fmt: skip
            record(f"eden_{transpose}_{seed}", got, quartet2.eden_quantize(x, seed, 0, 2, transpose))
        saved = quartet2.four_over_six_quantize(data(70, 48))
        got = launch_nvfp4.launch_requantize(*saved, torch.tensor(seed), 5, 0, interpret=True,
                                             config=Config.make(4, BLOCK_ROWS=16, BLOCK_COLS=128))  # fmt: skip
        record(f"eden_requantize_{seed}", got, quartet2.eden_requantize(*saved, seed, 0, 5))

    # GEMMs (dequant_bf16 kernel, fp32 products: see the module docstring), fp32 output, against the reference
    M, N, K = 48, 96, 160
    a = nvfp4.quantize(data(M, K))
    b = nvfp4.quantize_2d(torch.randn(N, K, generator=generator))
    bias, gate, residual = torch.randn(N, generator=generator), torch.randn(M, N), torch.randn(M, N)
    epilogues = {
        "plain": (None, "none", None, None),
        "bias_gelu": (bias, "gelu", None, None),
        "silu_gate_residual": (None, "silu", gate, residual),
        "bias_gelu_tanh": (bias, "gelu_tanh", None, None),
        "relu": (None, "relu", None, None),
    }
    for name, epilogue in epilogues.items():
        want = nvfp4.gemm(*a, *b, *epilogue, torch.float32)
        for tile, config in (("even", Config.make(4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1)),
                             ("ragged", Config.make(4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=2))):  # fmt: skip
            got = launch_nvfp4.launch_gemm(*a, *b, *epilogue, torch.float32, lowering="dequant_bf16", interpret=True,
                                           config=config)  # fmt: skip
            results[f"gemm_{name}_{tile}"] = {"error": ((got - want).norm() / want.norm()).item()}

    # K = 352 (shape bucket 512, as K = 384): the plan launched with each of its candidate configurations, the
    # K loop masked per plan (tests/test_launch_plans.py checks the masks are not part of the configurations)
    from fp4.runtime.lowering import Epilogue

    plain = Epilogue(1.0, None, "none", None, None, None, False, torch.float32)
    a352, b352 = nvfp4.quantize(data(48, 352)), nvfp4.quantize_2d(torch.randn(32, 352, generator=generator))
    want = nvfp4.gemm(*a352, *b352, None, "none", None, None, torch.float32)
    candidates = launch_nvfp4.gemm_configs(launch_nvfp4.NVFP4GemmSpec("dequant_bf16"))
    for index, config in enumerate(candidates):
        plan = launch_nvfp4.NVFP4GemmPlan("dequant_bf16", 48, 32, 352, plain, torch.device("cpu"), config=config)
        got = plan((*a352, *b352), plain)
        results[f"gemm_k352_candidate_{index}"] = {"error": ((got - want).norm() / want.norm()).item()}

    # the CUDA implementations (plans) on CPU tensors: built once per signature, then reused; fallbacks say why
    def twice(implementation, *args):
        first = implementation(*args)
        built = dict(plans.STATS)
        second = implementation(*args)
        same = all(torch.equal(x.reshape(-1), y.reshape(-1)) for x, y in zip(first, second))
        results[f"reused_{implementation.__name__}"] = {"mismatches": [int(dict(plans.STATS) != built), int(not same)]}
        return second

    seed = torch.tensor(2**61 + 4321)
    dy = data(40, 96, torch.bfloat16)
    got = twice(launch_nvfp4.nvfp4_quantize_cuda, dy, True, True, seed, 4)
    record("plan_nvfp4_quantize", got, recipe_ops.nvfp4_quantize.function(dy, True, True, seed, 4))
    w = data(48, 64, torch.bfloat16)
    record("plan_nvfp4_quantize_2d", twice(launch_nvfp4.nvfp4_quantize_2d_cuda, w), nvfp4.quantize_2d(w))
    record("plan_four_over_six", twice(launch_nvfp4.four_over_six_quantize_cuda, w),
           quartet2.four_over_six_quantize(w))  # fmt: skip
    got = twice(launch_nvfp4.eden_quantize_cuda, dy, seed, 0, 4, True)
    record("plan_eden_quantize", got, quartet2.eden_quantize(dy, int(seed), 0, 4, True))
    saved = quartet2.four_over_six_quantize(w)
    got = twice(launch_nvfp4.eden_requantize_cuda, *saved, seed, 0, 3)
    record("plan_eden_requantize", got, quartet2.eden_requantize(*saved, int(seed), 0, 3))
    launch.COUNTERS.clear()
    got = launch_nvfp4.nvfp4_gemm_cuda(*a, *b, bias, "gelu", None, None, torch.float32)
    record("plan_gemm_reference_on_cpu", (got,), (nvfp4.gemm(*a, *b, bias, "gelu", None, None, torch.float32),))
    wide_x = data(16, 32).double()
    got = launch_nvfp4.four_over_six_quantize_cuda(wide_x)
    record("plan_fallback_float64", got, quartet2.four_over_six_quantize(wide_x))
    results["fallback_reasons"] = sorted(key for key in launch.COUNTERS if key.startswith("fallback."))
    return results


# ----------------------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def interpreted():
    return run_cases(__file__, timeout=1800)


BITWISE = [
    f"nvfp4_{dtype}_{transpose}_{hadamard}_{sr}"
    for dtype in ("torch.bfloat16", "torch.float32")
    for transpose in (False, True)
    for hadamard in (False, True)
    for sr in (False, True)
]
BITWISE += [f"nvfp4_sr_seed_{seed}" for seed in SEEDS[1:]] + ["nvfp4_2d_40", "nvfp4_2d_64", "nvfp4_zeros"]
BITWISE += ["four_over_six_torch.bfloat16", "four_over_six_torch.float32"]
BITWISE += [f"eden_{transpose}_{seed}" for seed in SEEDS for transpose in (False, True)]
BITWISE += [f"eden_requantize_{seed}" for seed in SEEDS]
BITWISE += ["plan_nvfp4_quantize", "plan_nvfp4_quantize_2d", "plan_four_over_six", "plan_eden_quantize"]
BITWISE += ["plan_eden_requantize", "plan_gemm_reference_on_cpu", "plan_fallback_float64"]
BITWISE += [f"reused_{name}_cuda" for name in ("nvfp4_quantize", "nvfp4_quantize_2d", "four_over_six_quantize")]
BITWISE += ["reused_eden_quantize_cuda", "reused_eden_requantize_cuda"]


@pytest.mark.parametrize("case", BITWISE)
def test_bitwise_in_interpreter(interpreted, case):
    assert_bitwise(interpreted, case)


GEMMS = [
    f"gemm_{name}_{tile}"
    for name in ("plain", "bias_gelu", "silu_gate_residual", "bias_gelu_tanh", "relu")
    for tile in ("even", "ragged")
] + [f"gemm_k352_candidate_{index}" for index in range(4)]


@pytest.mark.parametrize("case", GEMMS)
def test_gemm_in_interpreter(interpreted, case):
    # exact products accumulated in fp32 in another order, and fp32 activations: far below 1e-6
    assert interpreted[case]["error"] < 1e-6


def test_fallbacks_say_why(interpreted):
    assert interpreted["fallback_reasons"] == [
        "fallback.four_over_six_quantize.input dtype torch.float64",
        "fallback.nvfp4_gemm.no NVFP4 GEMM kernel for cpu",
    ]


if __name__ == "__main__":
    report(_cases)
