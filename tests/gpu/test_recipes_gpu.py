"""The NVFP4 recipes' kernels on a CUDA GPU against the reference, on fresh random inputs.

* Quantizers (both passes: amax, then quantize) match the CPU reference bit for bit: codes, E4M3 scale bytes and
  the decode scale, stochastic rounding and the 128-point transform's random signs included (Philox is the same on
  both sides).
* The NVFP4 GEMM (``dot_scaled`` with E4M3 scales on Blackwell, the exact bf16 dequantization elsewhere, Hopper
  included) is compared with the float64 product of the same block values times the tensor scales: relative
  Frobenius error <= 1e-5 plus one rounding of the output dtype.
* The stochastic parts are unbiased on the GPU; a layer and a compiled model per recipe match the CPU; the ops
  capture in a CUDA graph and every replay draws new bits.
"""

from __future__ import annotations

import copy
import zlib

import pytest
import torch
from fp4.runtime import launch, nvfp4, quartet2
from fp4.runtime.hadamard import rotate
from gpu_common import DTYPES, GEMM_RTOL, GPU_MARKS, OUTPUT_ROUNDING, tiny_llama

pytestmark = GPU_MARKS

fp4 = torch.ops.fp4
SHAPES = [(256, 4096), (1000, 96), (37, 4128), (16, 32)]


def random_activations(rows, cols, dtype, generator):
    """Gaussian values with outlier columns, a dead row and a block far below the tensor's range."""
    x = torch.randn(rows, cols, generator=generator) * torch.rand(1, cols, generator=generator).mul(3).exp()
    x[rows // 2] = 0
    x[:, cols // 3] *= 40
    x[0, :16] = 1e-30
    return x.to(dtype)


@pytest.fixture
def generator(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.name.encode()))


def assert_bitwise(got, want, what: str):
    got = got.cpu()
    if got.dtype == torch.float32:
        got, want = got.view(torch.int32), want.view(torch.int32)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    mismatched = (got != want).nonzero()
    assert not len(mismatched), f"{what}: {len(mismatched)} elements differ, first at {mismatched[:1].tolist()}"


def assert_operand(got, want, what):
    for g, w, part in zip(got, want, ("codes", "scales", "decode scale")):
        assert_bitwise(g, w, f"{what} {part}")


def no_fallback(op):
    return not any(key.startswith(f"fallback.{op}.") for key in launch.COUNTERS)


# ----------------------------------------------------------------------------------------------------------
# quantizers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("hadamard", [False, True])
@pytest.mark.parametrize("stochastic", [False, True])
def test_nvfp4_quantize_bitwise(shape, dtype, transpose, hadamard, stochastic, generator):
    x = random_activations(*shape, dtype, generator)
    seed = torch.tensor(2**61 + 12345) if stochastic else None
    got = fp4.nvfp4_quantize(x.cuda(), transpose, hadamard, None if seed is None else seed.cuda(), 4)
    want = nvfp4.quantize_operand(x, transpose, hadamard, None if seed is None else int(seed), 4)
    assert_operand(got, want, "nvfp4_quantize")
    assert no_fallback("nvfp4_quantize")


@pytest.mark.parametrize("shape", [(4096, 1024), (1000, 96), (40, 64)])
def test_nvfp4_quantize_2d_bitwise(shape, generator):
    w = random_activations(*shape, torch.bfloat16, generator)
    assert_operand(fp4.nvfp4_quantize_2d(w.cuda()), nvfp4.quantize_2d(w), "nvfp4_quantize_2d")
    codes, scales, _ = fp4.nvfp4_quantize_2d(w.cuda())
    transposed = fp4.nvfp4_transpose_2d(codes, scales)
    for g, want in zip(transposed, nvfp4.transpose_2d(*nvfp4.quantize_2d(w)[:2])):
        assert_bitwise(g, want, "nvfp4_transpose_2d")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_four_over_six_bitwise(shape, dtype, generator):
    x = random_activations(*shape, dtype, generator)
    assert_operand(fp4.four_over_six_quantize(x.cuda()), quartet2.four_over_six_quantize(x), "four_over_six")
    assert no_fallback("four_over_six_quantize")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_eden_quantize_bitwise(shape, dtype, transpose, generator):
    x = random_activations(*shape, dtype, generator)
    seed = torch.tensor(987654321987)
    got = fp4.eden_quantize(x.cuda(), seed.cuda(), 0, 4, transpose)
    assert_operand(got, quartet2.eden_quantize(x, int(seed), 0, 4, transpose), "eden_quantize")
    assert no_fallback("eden_quantize")


@pytest.mark.parametrize("shape", [(4096, 1024), (1000, 96), (37, 4128)])
def test_eden_requantize_bitwise(shape, generator):
    saved = quartet2.four_over_six_quantize(random_activations(*shape, torch.bfloat16, generator))
    seed = torch.tensor(31337)
    got = fp4.eden_requantize(*(t.cuda() for t in saved), seed.cuda(), 0, 5)
    assert_operand(got, quartet2.eden_requantize(*saved, int(seed), 0, 5), "eden_requantize")
    assert no_fallback("eden_requantize")


def test_stochastic_parts_are_unbiased_on_the_gpu(generator):
    """nvfp4's element SR and Quartet II's MS-EDEN (over rotations): the mean of n draws approaches its target.

    nvfp4's SR is TE's: the block scale rounds to E4M3 to nearest, so a block's largest element can land past 6
    units and saturates there, every draw alike (tests/test_nvfp4.py); its target is the input clamped to the
    block's range.  MS-EDEN's target is the input itself.
    """
    x = torch.randn(64, 1024, generator=generator).cuda()
    draws = 512
    seeds = torch.randint(0, 2**62, (draws,), generator=generator)
    _, scales, decode = nvfp4.quantize(x.cpu())
    reach = (6.0 * nvfp4.decode_e4m3(scales) * decode).repeat_interleave(16, -1).double().cuda()
    sr_target = torch.minimum(torch.maximum(x.double(), -reach), reach)
    assert (sr_target != x.double()).any()  # the saturated elements are there: the target is not the input
    total_sr, total_eden, single_sr, single_eden = 0.0, 0.0, 0.0, 0.0
    for seed in seeds:
        sr = nvfp4.dequantize(*fp4.nvfp4_quantize(x, False, False, seed.cuda(), 2)).double()
        signs = quartet2.rotation_signs(int(seed), 0, x.device)
        eden = rotate(nvfp4.dequantize(*fp4.eden_quantize(x, seed.cuda(), 0, 2, False)), -1, signs, True, 128)
        total_sr, total_eden = total_sr + sr, total_eden + eden.double()
        single_sr += (sr - sr_target).norm().item() / draws
        single_eden += (eden.double() - x.double()).norm().item() / draws
    for total, target, single, what in (
        (total_sr, sr_target, single_sr, "SR"),
        (total_eden, x.double(), single_eden, "MS-EDEN"),
    ):
        mean_error = (total / draws - target).norm().item()
        assert mean_error <= 1.5 * single / draws**0.5, f"{what}: mean error {mean_error:.3e}, one draw {single:.3e}"


# ----------------------------------------------------------------------------------------------------------
# the GEMM


def _operands(M, N, K, generator):
    a = nvfp4.quantize(random_activations(M, K, torch.float32, generator))
    b = quartet2.four_over_six_quantize(torch.randn(N, K, generator=generator))
    return a, b


@pytest.mark.parametrize("shape", [(256, 512, 1024), (1000, 96, 160), (37, 4096, 64), (4096, 4096, 4096)])
@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("epilogue", ["plain", "bias_silu_gate_residual", "bias_gelu"])
def test_nvfp4_gemm_against_float64(shape, out_dtype, epilogue, generator):
    M, N, K = shape
    a, b = _operands(M, N, K, generator)
    bias = torch.randn(N, generator=generator).to(torch.bfloat16)
    gate = torch.randn(M, N, generator=generator).to(out_dtype)
    residual = torch.randn(M, N, generator=generator).to(out_dtype)
    args = {
        "plain": (None, "none", None, None),
        "bias_silu_gate_residual": (bias, "silu", gate, residual),
        "bias_gelu": (bias, "gelu", None, None),
    }[epilogue]
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    got = fp4.nvfp4_gemm(*(t.cuda() for t in (*a, *b)), cuda(args[0]), args[1], cuda(args[2]), cuda(args[3]),
                         out_dtype).cpu()  # fmt: skip
    assert no_fallback("nvfp4_gemm")
    exact = (nvfp4.block_values(*a[:2]).double() @ nvfp4.block_values(*b[:2]).double().t()) * (
        a[2].double() * b[2].double()
    )
    if epilogue == "plain":
        want, rtol = exact, GEMM_RTOL + OUTPUT_ROUNDING[out_dtype]
    else:  # the epilogue on the reference's own accumulator (fp32 products in another order: within the bound)
        want = nvfp4.gemm(*a, *b, *args, out_dtype).double()
        rtol = GEMM_RTOL + 4 * OUTPUT_ROUNDING[out_dtype]
    error = ((got.double() - want).norm() / want.norm()).item()
    assert error <= rtol, f"relative error {error:.2e} > {rtol:.1e}"


def test_nvfp4_gemm_plans_of_one_shape_bucket_each_mask_their_own_k(generator):
    """A K = 384 plan, then a K = 352 plan of the same shape bucket (the autotuner shares its choice there), then
    the K = 384 one again: each equals the float64 product.  The K = 352 plan once ran with the K = 384 plan's
    mask-free configuration and read past every row (the accuracy study's nvfp4 NaN, docs/accuracy.md)."""
    M, N = 512, 128
    operands = {K: _operands(M, N, K, generator) for K in (384, 352)}
    for K in (384, 352, 384):
        a, b = operands[K]
        got = fp4.nvfp4_gemm(*(t.cuda() for t in (*a, *b)), None, "none", None, None, torch.float32).cpu()
        exact = (nvfp4.block_values(*a[:2]).double() @ nvfp4.block_values(*b[:2]).double().t()) * (
            a[2].double() * b[2].double()
        )
        error = ((got.double() - exact).norm() / exact.norm()).item()
        assert error <= GEMM_RTOL, f"K = {K}: relative error {error:.2e}"


def test_nvfp4_gemm_lowering_of_this_gpu():
    from fp4.core import Target

    target = Target.detect()
    lowering = target.nvfp4_gemm_lowering
    assert lowering == ("dot_scaled" if target.has_fp4_mma else "dequant_bf16")
    a = nvfp4.quantize(torch.randn(128, 256))
    fp4.nvfp4_gemm(*(t.cuda() for t in (*a, *a)), None, "none", None, None, torch.bfloat16)
    assert launch.COUNTERS[f"nvfp4_gemm.{lowering}"] >= 1


# ----------------------------------------------------------------------------------------------------------
# layers and models


@pytest.mark.parametrize("recipe", ["quartet", "quartet2", "nvfp4"])
def test_recipe_layer_on_gpu_matches_cpu(recipe, generator):
    """One layer of each recipe, forward and backward, on the GPU kernels vs the CPU reference (same seed)."""
    from fp4.runtime.oracle import quartet_linear

    x = torch.randn(512, 256, generator=generator).to(torch.bfloat16)
    w = (torch.randn(384, 256, generator=generator) * 0.05).to(torch.bfloat16)
    bias = torch.randn(384, generator=generator).to(torch.bfloat16)
    grad = torch.randn(512, 384, generator=generator).to(torch.bfloat16)
    seed = torch.tensor(77)
    results = []
    for device in ("cpu", "cuda"):
        xs, ws, bs = (t.detach().clone().to(device).requires_grad_() for t in (x, w, bias))
        y = quartet_linear(xs, ws, bs, seed.to(device), recipe=recipe)
        y.backward(grad.to(device))
        results.append([t.detach().cpu().double() for t in (y, xs.grad, ws.grad, bs.grad)])
    for (cpu, gpu), what in zip(zip(*results), ("y", "dx", "dw", "db")):
        error = (cpu - gpu).norm() / cpu.norm()
        assert error < 2 * 2.0**-8, f"{what}: GPU vs CPU relative error {error:.2e}"


@pytest.mark.parametrize("recipe", ["quartet2", "nvfp4"])
def test_recipe_trains_a_llama_with_and_without_cuda_graphs(recipe):
    model = tiny_llama()
    tokens = torch.randint(0, 512, (4, 128), device="cuda")

    def train(options, steps=6):
        torch._dynamo.reset()
        trained = copy.deepcopy(model)
        compiled = torch.compile(trained, backend="fp4", options={"recipe": recipe, **options})
        optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-3)
        torch.manual_seed(11)
        losses = []
        for _ in range(steps):
            torch.compiler.cudagraph_mark_step_begin()
            loss = compiled(input_ids=tokens, labels=tokens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().clone())
        return torch.stack(losses)

    plain, graphed = train({}), train({"cudagraphs": True})
    assert torch.equal(plain, graphed), f"with CUDA graphs {graphed.tolist()}, without {plain.tolist()}"
    assert torch.isfinite(plain).all() and plain[-1] < plain[0]  # it learns the one batch
    for op in ("nvfp4_gemm", "nvfp4_quantize", "four_over_six_quantize", "eden_quantize", "eden_requantize"):
        assert no_fallback(op), op


def test_recipe_ops_capture_in_a_cuda_graph_and_replays_draw_new_bits():
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)

    def step():
        seeds = fp4.draw_seeds(2, x.device)
        eden = fp4.eden_quantize(x, seeds[0], 0, 2, True)
        sr = fp4.nvfp4_quantize(x, True, True, seeds[1], 4)
        return seeds, eden[1], sr[0]

    torch.manual_seed(3)
    step()  # plans are built outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append([t.clone() for t in outputs])
    assert len({tuple(r[0].tolist()) for r in replays}) == 3
    assert not torch.equal(replays[0][1], replays[1][1]) and not torch.equal(replays[0][2], replays[1][2])
    for seeds, eden_scales, sr_codes in replays:  # each replay is the eager op on its own seeds
        assert torch.equal(eden_scales, fp4.eden_quantize(x, seeds[0], 0, 2, True)[1])
        assert torch.equal(sr_codes, fp4.nvfp4_quantize(x, True, True, seeds[1], 4)[0])
