"""The generated kernels on a CUDA GPU against the reference, on fresh random inputs.

Quantizers (codes, scales, clip masks, folds) must match the CPU reference bit
for bit: their rounding is deterministic and Philox is the same on both
sides.  GEMMs are compared with the float64 product of the same dequantized
operands, by the relative Frobenius error, plus one rounding of the output
dtype:

* ``GEMM_RTOL`` (1e-5) where the kernel accumulates in fp32 (bf16 and
  block-scaled FP4 tensor cores);
* ``FP8_GEMM_RTOL`` on Hopper's FP8 path, whose tensor cores add FP8 products
  with fewer bits than fp32 inside one instruction; the kernel adds each K
  tile's partial sum in fp32 (as cuBLAS's default FP8 mode does), and the
  bound is checked against cuBLAS on the same operands as well.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from fp4.runtime import fold, launch, ops, reference
from fp4.runtime.autotune import Config
from gpu_common import DTYPES, GEMM_RTOL, GPU_MARKS, OUTPUT_ROUNDING

pytestmark = GPU_MARKS

fp4 = torch.ops.fp4
FP8_GEMM_RTOL = 1e-4


def random_activations(rows, cols, dtype, generator):
    """Gaussian values with a few outlier columns, a dead row and exact zeros: what layers feed the quantizers."""
    x = torch.randn(rows, cols, generator=generator) * torch.rand(1, cols, generator=generator).mul(3).exp()
    x[rows // 2] = 0
    x[:, cols // 3] *= 40
    return x.to(dtype)


@pytest.fixture
def generator(request):
    # a stable seed per test (str hashes change from process to process)
    return torch.Generator().manual_seed(zlib.crc32(request.node.name.encode()))


def assert_bitwise(got: torch.Tensor, want: torch.Tensor, what: str):
    got = got.cpu()
    if got.dtype == fold.FP8_DTYPE:
        got, want = got.view(torch.uint8), want.view(torch.uint8)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    mismatched = (got != want).nonzero()
    assert not len(mismatched), f"{what}: {len(mismatched)} elements differ, first at {mismatched[0].tolist()}"


# ------------------------------------------------------------------------------------------------------------
# quantizers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(256, 4096), (1000, 96), (37, 4128), (8, 32)])
@pytest.mark.parametrize("rotate", [True, False])
def test_quest_quantize_bitwise(shape, dtype, rotate, generator):
    x = random_activations(*shape, dtype, generator)
    got = fp4.quest_quantize(x.cuda(), rotate)
    for g, w, what in zip(got, reference.quest_quantize(x, rotate), ("codes", "scales", "mask")):
        assert_bitwise(g, w, what)


@pytest.mark.parametrize("shape", [(3, 128, 512), (2, 5, 64)])
def test_quest_quantize_keeps_leading_dims(shape, generator):
    x = torch.randn(*shape, generator=generator).to(torch.bfloat16)
    for g, w in zip(fp4.quest_quantize(x.cuda(), True), reference.quest_quantize(x, True)):
        assert_bitwise(g, w, "quest_quantize on a 3-D input")


def test_quest_quantize_special_values(generator):
    x = torch.randn(64, 256, generator=generator)
    x[0, 3] = float("nan")
    x[1, 40] = float("inf")
    x[2, :32] = -0.0
    x[3, 64:96] = 1e-30
    x[4, 100] = 3e38
    for g, w, what in zip(fp4.quest_quantize(x.cuda(), True), reference.quest_quantize(x, True), "csm"):
        assert_bitwise(g, w, what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(512, 1024), (1000, 736), (77, 200)])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("sign_stream", [reference.STREAM_DGRAD_SIGNS, -1])
def test_sr_quantize_bitwise(shape, dtype, transpose, sign_stream, generator):
    x = random_activations(*shape, dtype, generator)
    seed = torch.randint(0, 1 << 62, (), generator=generator)
    got = fp4.sr_quantize(x.cuda(), seed.cuda(), sign_stream, reference.STREAM_WGRAD_GRAD_OUTPUT, transpose)
    signs = None if sign_stream < 0 else reference.rotation_signs(int(seed), sign_stream)
    want = reference.sr_quantize(x, signs, int(seed), reference.STREAM_WGRAD_GRAD_OUTPUT, transpose)
    for g, w, what in zip(got, want, ("codes", "scales")):
        assert_bitwise(g, w, what)


@pytest.mark.parametrize("shape", [(512, 1024), (1000, 96), (45, 64)])
def test_requantize_sr_bitwise(shape, generator):
    codes, scales, _ = reference.quest_quantize(random_activations(*shape, torch.float32, generator), True)
    seed = torch.randint(0, 1 << 62, (), generator=generator)
    got = fp4.requantize_sr(
        codes.cuda(), scales.cuda(), seed.cuda(), reference.STREAM_WGRAD_SIGNS, reference.STREAM_WGRAD_INPUT
    )
    signs = reference.rotation_signs(int(seed), reference.STREAM_WGRAD_SIGNS)
    want = reference.requantize_sr(codes, scales, signs, int(seed), reference.STREAM_WGRAD_INPUT)
    for g, w, what in zip(got, want, ("codes", "scales")):
        assert_bitwise(g, w, what)


def assert_unbiased(quantize, x, draws=400):
    """The mean of ``draws`` stochastic roundings is the rotated input, within its exact binomial spread.

    Each element rounds to its lower or upper grid neighbour; with the exact
    position p between them the mean of n draws has standard deviation
    step * sqrt(p (1 - p) / n).  The bound is 6 of those, plus one step / n for
    events rarer than 1 / n, plus the float32 rounding of 3 * g / 2**e.
    """
    total = torch.zeros_like(x, dtype=torch.float64)
    for i in range(draws):
        codes, scales = quantize(torch.tensor(1000 + i, device=x.device))
        total += reference.dequantize(codes, scales).double()
    mean = total / draws / 3.0
    rotated = reference.rotate(x.float(), -1)
    groups = rotated.unflatten(-1, (-1, 32))
    unit = reference.formats.exp2_int(reference.absmax_scale_bytes(groups).int() - 127).double()[..., None] / 3.0
    scaled = (groups.double() * 3.0 / (unit * 3.0)).abs()
    grid = torch.tensor(reference.E2M1_GRID, dtype=torch.float64, device=x.device)
    lower = grid[(scaled[..., None] >= grid[1:]).sum(-1).clamp_max(6)]
    step = grid[(scaled[..., None] >= grid[1:]).sum(-1).clamp_max(6) + 1] - lower
    p = ((scaled - lower) / step).clamp(0, 1)
    sigma = (step * unit * (p * (1 - p) / draws).sqrt()).flatten(-2)
    slack = 6 * sigma + (step * unit).flatten(-2) / draws + 1e-6 * rotated.double().abs()
    excess = (mean - rotated.double()).abs() - slack
    assert (excess <= 0).all(), f"largest excess over the binomial bound {excess.max():.3e}"


def test_sr_quantize_reproducible_and_unbiased(generator):
    """Same seed, same bits; over many seeds the dequantized mean converges to the rotated input."""
    x = torch.randn(64, 256, generator=generator).cuda()
    seed = torch.tensor(1234, device="cuda")
    first = fp4.sr_quantize(x, seed, -1, 2, False)
    second = fp4.sr_quantize(x, seed, -1, 2, False)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert_unbiased(lambda s: fp4.sr_quantize(x, s, -1, 2, False), x)


@pytest.mark.parametrize("shape", [(256, 4096), (1000, 96), (3, 8192), (64, 11008)])
def test_fold_bitwise(shape, generator):
    """Group counts that are multiples of 16 (scale bytes loaded 16 at a time) and others (344, 3)."""
    codes, scales, _ = reference.quest_quantize(random_activations(*shape, torch.float32, generator), True)
    got = fp4.fold_fp8(codes.cuda(), scales.cuda())
    for g, w, what in zip(got, fold.fold_reference(codes, scales), ("values", "row scales")):
        assert_bitwise(g, w, what)


@pytest.mark.parametrize("shape", [(256, 4096), (1000, 96), (37, 4128)])
@pytest.mark.parametrize("transpose", [False, True])
def test_sr_quantize_fold_bitwise(shape, transpose, generator):
    """The backward quantizer that writes the FP8 fold too equals the reference quantizer followed by the fold."""
    x = random_activations(*shape, torch.bfloat16, generator)
    seed = torch.randint(0, 1 << 62, (), generator=generator)
    got = fp4.sr_quantize_fold(x.cuda(), seed.cuda(), reference.STREAM_WGRAD_SIGNS, 4, transpose)
    want = fold.sr_quantize_fold.function(x, seed, reference.STREAM_WGRAD_SIGNS, 4, transpose)
    for g, w, what in zip(got, want, ("codes", "scales", "values", "row scales")):
        assert_bitwise(g, w, what)


@pytest.mark.parametrize("shape", [(512, 1024), (1000, 96)])
def test_requantize_sr_fold_bitwise(shape, generator):
    codes, scales, _ = reference.quest_quantize(random_activations(*shape, torch.float32, generator), True)
    seed = torch.randint(0, 1 << 62, (), generator=generator)
    got = fp4.requantize_sr_fold(codes.cuda(), scales.cuda(), seed.cuda(), 1, 5)
    want = fold.requantize_sr_fold.function(codes, scales, seed, 1, 5)
    for g, w, what in zip(got, want, ("codes", "scales", "values", "row scales")):
        assert_bitwise(g, w, what)


@pytest.mark.parametrize("shape", [(256, 4096), (1000, 96)])
def test_quest_quantize_fold_bitwise(shape, generator):
    x = random_activations(*shape, torch.bfloat16, generator)
    got = fp4.quest_quantize_fold(x.cuda(), True)
    codes, scales, mask = reference.quest_quantize(x, True)
    want = (codes, scales, mask) + fold.fold_reference(codes, scales)
    for g, w, what in zip(got, want, ("codes", "scales", "mask", "fold values", "fold scales")):
        assert_bitwise(g, w, what)


# ------------------------------------------------------------------------------------------------------------
# GEMMs


def quantized_operands(M, N, K, generator):
    a = reference.quest_quantize(random_activations(M, K, torch.float32, generator), True)
    b = reference.quest_quantize(torch.randn(N, K, generator=generator) * 0.02, True)
    return a, b


def float64_gemm(a, b, alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype):
    """The reference epilogue applied to the float64 product of the dequantized operands (computed on the GPU)."""
    lhs = reference.dequantize(*(t.cuda() for t in a[:2])).double()
    rhs = reference.dequantize(*(t.cuda() for t in b[:2])).double()
    args = _cuda((alpha, bias, activation, gate, residual, clip_mask, inverse_rotate, out_dtype))
    return reference.gemm_epilogue((lhs @ rhs.t()).float(), *args).cpu()


def relative_error(got, want):
    got, want = got.cpu().double(), want.double()
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def assert_gemm_close(got, want, out_dtype, what, rtol=None):
    if rtol is None:
        on_fp8 = got.is_cuda and launch.device_target(got.device).gemm_lowering == "fp8_fold"
        rtol = FP8_GEMM_RTOL if on_fp8 else GEMM_RTOL
    assert got.shape == want.shape
    assert torch.isfinite(got).all(), f"{what}: non-finite output"
    error = relative_error(got, want)
    bound = rtol + 2 * OUTPUT_ROUNDING[out_dtype]
    assert error <= bound, f"{what}: relative error {error:.3e} > {bound:.1e}"


EPILOGUES = {
    "plain": dict(),
    "alpha_bias_gelu": dict(alpha=0.5, bias=True, activation="gelu"),
    "silu_gate_residual": dict(activation="silu", gate=True, residual=True),
    "gelu_tanh": dict(activation="gelu_tanh"),
    "relu": dict(activation="relu"),
    "backward_mask_unrotate": dict(alpha=reference.BACKWARD_ALPHA, clip_mask=True, inverse_rotate=True),
}


def epilogue_arguments(name, M, N, out_dtype, generator):
    spec = EPILOGUES[name]
    bias = torch.randn(N, generator=generator).to(torch.bfloat16) if spec.get("bias") else None
    gate = torch.randn(M, N, generator=generator).to(out_dtype) if spec.get("gate") else None
    residual = torch.randn(M, N, generator=generator).to(out_dtype) if spec.get("residual") else None
    mask = None
    if spec.get("clip_mask"):
        mask = reference.quest_quantize(torch.randn(M, N, generator=generator) ** 3, True)[2]
    return (
        spec.get("alpha", 1.0), bias, spec.get("activation", "none"), gate, residual, mask,
        spec.get("inverse_rotate", False), out_dtype,
    )  # fmt: skip


def _cuda(args):
    return tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in args)


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(256, 512, 1024), (1000, 736, 512), (77, 96, 256)])
def test_mxfp4_gemm_op(shape, epilogue, out_dtype, generator):
    M, N, K = shape
    a, b = quantized_operands(M, N, K, generator)
    args = epilogue_arguments(epilogue, M, N, out_dtype, generator)
    got = fp4.mxfp4_gemm(*_cuda(a[:2] + b[:2]), *_cuda(args))
    assert_gemm_close(got, float64_gemm(a, b, *args), out_dtype, f"mxfp4_gemm {shape} {epilogue}")


def _variants():
    return [
        ("", Config.make(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)),
        ("", Config.make(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)),
        ("tma", Config.make(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=256, GROUP_M=8, SPLIT_N=2)),
        ("tma_persistent", Config.make(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)),
        ("tma_persistent", Config.make(8, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)),
        ("tma", Config.make(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)),
        ("tma", Config.make(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)),
    ]


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs FP8 tensor cores"
)
@pytest.mark.parametrize("variant", range(len(_variants())))
@pytest.mark.parametrize("epilogue", ["plain", "silu_gate_residual", "backward_mask_unrotate"])
@pytest.mark.parametrize("shape", [(1000, 736, 512), (512, 2048, 8192)])
def test_fold_gemm_variants(shape, epilogue, variant, generator):
    name, params = _variants()[variant]
    config = Config(params.params, params.num_warps, params.num_stages, name)
    M, N, K = shape
    a, b = quantized_operands(M, N, K, generator)
    args = epilogue_arguments(epilogue, M, N, torch.bfloat16, generator)
    folded = [fold.fold_reference(*a[:2]), fold.fold_reference(*b[:2])]
    operands = _cuda(folded[0] + folded[1])
    got = launch.launch_fold_gemm(*operands, *_cuda(args), config=config)
    assert_gemm_close(got, float64_gemm(a, b, *args), torch.bfloat16, f"fold gemm {name} {shape} {epilogue}")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0), reason="Hopper")
def test_promoted_fold_gemm_tiles_agree_bit_for_bit(generator):
    """Every promoting candidate of a backward GEMM adds the same 128-element K tiles' products in the same order,
    so the tile shape and warp count the autotuner picks change the time, never a bit of the result."""
    from fp4.codegen.spec import EpilogueSpec

    M, N, K = 1000, 736, 1024
    a, b = quantized_operands(M, N, K, generator)
    args = epilogue_arguments("backward_mask_unrotate", M, N, torch.bfloat16, generator)
    operands = _cuda(fold.fold_reference(*a[:2]) + fold.fold_reference(*b[:2]))
    lowering = launch.LOWERINGS["fp8_fold"]
    spec = lowering.variant("tma", EpilogueSpec(alpha=True, clip_mask=True, inverse_rotate=True))
    results = {}
    for config in lowering.configs(spec):
        config = Config(config.params, config.num_warps, config.num_stages, "tma")
        results[config.label()] = launch.launch_fold_gemm(*operands, *_cuda(args), config=config)
    first, *others = results
    assert len(results) == 4
    for label in others:
        assert torch.equal(results[label], results[first]), f"{label} differs from {first}"


@pytest.mark.parametrize("epilogue", ["plain", "alpha_bias_gelu", "silu_gate_residual"])
def test_cublas_fold_gemm_matches(epilogue, generator):
    M, N, K = 512, 768, 1024
    a, b = quantized_operands(M, N, K, generator)
    args = epilogue_arguments(epilogue, M, N, torch.bfloat16, generator)
    operands = _cuda(fold.fold_reference(*a[:2]) + fold.fold_reference(*b[:2]))
    got = launch.launch_fold_gemm(*operands, *_cuda(args), config=launch.CUBLAS)
    assert_gemm_close(got, float64_gemm(a, b, *args), torch.bfloat16, f"cuBLAS fold {epilogue}")


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9) or not hasattr(torch, "_scaled_mm"),
    reason="needs FP8 tensor cores and torch._scaled_mm",
)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("shape", [(1024, 768, 512), (512, 2048, 8192), (208, 96, 256)])
def test_cublas_product_with_the_epilogue_kernel(shape, split, out_dtype, generator):
    """The ``cublas_epilogue`` variant of a backward GEMM (alpha, bias, clip mask, inverse rotation): (a) bit for
    bit the reference epilogue applied to cuBLAS's unscaled fp32 product times the row scales, (b) as close to
    the Triton FP8 kernel's output as the fold GEMMs are to float64."""
    M, N, K = shape
    a, b = quantized_operands(M, N, K, generator)
    args = epilogue_arguments("backward_mask_unrotate", M, N, out_dtype, generator)
    args = _cuda(args[:1] + (torch.randn(N, generator=generator).to(torch.bfloat16),) + args[2:])
    operands = _cuda(fold.fold_reference(*a[:2]) + fold.fold_reference(*b[:2]))
    config = Config.make(4, 1, "cublas_epilogue", BLOCK_M=64, BLOCK_N=128 * split, SPLIT_N=split)
    launch.COUNTERS.clear()
    got = launch.launch_fold_gemm(*operands, *args, config=config)
    assert launch.COUNTERS == {"gemm.fp8_fold.cublas_epilogue": 1}
    one = torch.ones(1, device="cuda")
    product = torch._scaled_mm(operands[0], operands[2].t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    want = reference.gemm_epilogue(product * operands[1][:, None] * operands[3][None, :], *args)
    assert_bitwise(got, want.cpu(), f"cuBLAS product + epilogue {shape}")
    # compile ahead warms the epilogue kernel with a small stand-in for the product; the plan then runs the same
    epilogue = launch.Epilogue(*args)
    plan = launch.GemmPlan(launch.LOWERINGS["fp8_fold"], operands, M, N, K, epilogue, operands[0].device, config=config)
    plan._warm(config, operands, epilogue)
    assert_bitwise(plan(operands, epilogue), got.cpu(), f"cuBLAS product + epilogue after a warm-up {shape}")
    triton_config = Config.make(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, SPLIT_N=2)
    triton = launch.launch_fold_gemm(*operands, *args, config=triton_config)
    assert_gemm_close(got, triton.cpu(), out_dtype, f"cuBLAS product vs Triton FP8 kernel {shape}")
    assert_gemm_close(got, float64_gemm(a, b, *args), out_dtype, f"cuBLAS product {shape}")


@pytest.mark.parametrize("lowering", ["dequant_bf16", "dot_scaled"])
@pytest.mark.parametrize("epilogue", ["plain", "backward_mask_unrotate", "silu_gate_residual"])
def test_other_lowerings_run_here(lowering, epilogue, generator):
    """dequant_bf16 is the lowering of other CUDA GPUs; dot_scaled runs emulated off Blackwell."""
    M, N, K = 192, 320, 512
    a, b = quantized_operands(M, N, K, generator)
    args = epilogue_arguments(epilogue, M, N, torch.float32, generator)
    got = launch.launch_mxfp4_gemm(*_cuda(a[:2] + b[:2]), *_cuda(args), lowering=lowering)
    assert_gemm_close(got, float64_gemm(a, b, *args), torch.float32, f"{lowering} {epilogue}", rtol=GEMM_RTOL)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs FP8 tensor cores"
)
@pytest.mark.parametrize("K", [1024, 8192])
def test_fold_gemm_as_accurate_as_cublas(K, generator):
    """Our FP8 GEMM (partial sums promoted to fp32 per K tile) is as accurate as cuBLAS's default FP8 GEMM.

    One draw's relative error is itself a random variable: at K=1024 both errors sit near 1e-6 and their ratio
    for a single draw spread past 1.5 now and then.  The comparison is made on the mean over independent draws
    (each error already averages 512 x 1024 outputs), whose spread shrinks as 1/sqrt(draws); each draw must
    still meet the absolute FP8 bound.
    """
    M, N, draws = 512, 1024, 6
    ours_errors, cublas_errors = [], []
    for _ in range(draws):
        a, b = quantized_operands(M, N, K, generator)
        want = float64_gemm(a, b, 1.0, None, "none", None, None, None, False, torch.float32)
        operands = _cuda(fold.fold_reference(*a[:2]) + fold.fold_reference(*b[:2]))
        ours = launch.launch_fold_gemm(*operands, out_dtype=torch.float32)
        cublas = torch._scaled_mm(
            operands[0],
            operands[2].t(),
            scale_a=operands[1][:, None],
            scale_b=operands[3][None, :],
            out_dtype=torch.float32,
        )
        ours_errors.append(relative_error(ours, want))
        cublas_errors.append(relative_error(cublas, want))
    ours_mean, cublas_mean = sum(ours_errors) / draws, sum(cublas_errors) / draws
    print(f"K={K}: mean relative error over {draws} draws: ours {ours_mean:.2e}, cuBLAS {cublas_mean:.2e}")
    assert max(ours_errors) <= FP8_GEMM_RTOL
    assert ours_mean <= max(1.5 * cublas_mean, GEMM_RTOL)


@pytest.mark.parametrize("shape", [(8192, 4096), (1000, 96), (3, 5000)])
def test_bias_grad(shape, generator):
    grad = torch.randn(*shape, generator=generator).to(torch.bfloat16)
    got = fp4.bias_grad(grad.cuda(), torch.bfloat16).cpu().double()
    want = grad.double().sum(0)
    assert torch.allclose(got, want, rtol=2.0**-8, atol=1e-5 * shape[0] ** 0.5)


def test_backend_decoder_block_matches_cpu(generator):
    """The whole fp4 backend on a decoder block: GPU kernels vs the CPU reference ops, same seeds.

    Bit-identical quantizer inputs give bit-identical codes, but bf16 attention, norms and GEMM
    accumulation differ in their last bits between the devices, and a flipped bit can move a code by one
    grid step.  So the GPU-vs-CPU difference is bounded by half the difference that another backward seed
    makes on the CPU (the noise of the algorithm itself), plus 2 %; the forward output has no seed noise.
    """
    models = pytest.importorskip("fp4.models")
    config = models.LlamaConfig(dim=128, hidden_dim=256, n_heads=4, n_kv_heads=2)
    torch.manual_seed(0)
    block = models.DecoderBlock(config).to(torch.bfloat16)
    x = torch.randn(2, 64, config.dim, generator=generator).to(torch.bfloat16)
    cos, sin = models.rotary_tables(config.dim // config.n_heads, 64, config.rope_theta)

    def run(device, seed):
        torch._dynamo.reset()
        # the CPU run draws its layer seeds from the CUDA generator, so both devices get the same seeds (the op's
        # implementation calls ops.draw_seeds_eager; an override of the op's CPU kernel would not reach a
        # compiled graph's call)
        eager = ops.draw_seeds_eager
        drawn = []

        def from_cuda(n, device="cpu", salt=0):
            seeds = eager(n, "cuda", salt)
            drawn.append(seeds)
            return seeds.to(device)

        ops.draw_seeds_eager = from_cuda
        try:
            return run_with_seeds(device, seed), drawn
        finally:
            ops.draw_seeds_eager = eager

    def run_with_seeds(device, seed):
        model = __import__("copy").deepcopy(block).to(device)
        compiled = torch.compile(model, backend="fp4", options={"inductor": False})
        xs = x.detach().clone().to(device).requires_grad_()
        torch.manual_seed(seed)
        y = compiled(xs, cos.to(device), sin.to(device))
        y.float().square().mean().backward()
        grads = [p.grad.detach().cpu().double() for p in model.parameters()]
        return [y.detach().cpu().double(), xs.grad.cpu().double()] + grads

    (cpu, cpu_seeds), (cpu_other_seed, _), (gpu, gpu_seeds) = run("cpu", 1), run("cpu", 2), run("cuda", 1)
    assert cpu_seeds and len(cpu_seeds) == len(gpu_seeds)  # both runs drew their seeds through the override
    assert all(torch.equal(a, b) for a, b in zip(cpu_seeds, gpu_seeds))
    for index, (c, c2, g) in enumerate(zip(cpu, cpu_other_seed, gpu)):
        scale = c.norm().clamp_min(1e-30)
        error, noise = ((c - g).norm() / scale).item(), ((c - c2).norm() / scale).item()
        assert error <= 0.5 * noise + 0.02, f"output {index}: GPU vs CPU {error:.2e}, seed noise {noise:.2e}"
