"""The recipes (docs/recipes.md): their options, the known answers of their quantizers, the unbiasedness of their
stochastic parts, and for each recipe the compiled model equal to its eager oracle bit for bit."""

from __future__ import annotations

import copy
import math
import struct

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fp4 import core
from fp4.backend import configure
from fp4.models import LlamaConfig, TinyLlama
from fp4.options import Options
from fp4.runtime import formats, nvfp4, quartet2
from fp4.runtime.hadamard import hadamard_matrix, rotate
from fp4.runtime.oracle import quartetize
from fp4.runtime.recipes import RECIPES
from oracle_compare import assert_bitwise, compare_with_oracle, run
from torch._dynamo.utils import counters

NVFP4_RECIPES = ("quartet2", "nvfp4")
fp4 = torch.ops.fp4
SEED = torch.tensor(987654321, dtype=torch.int64)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


# ----------------------------------------------------------------------------------------------------------
# options


def test_recipe_option_sets_the_format():
    assert Options().recipe == "quartet" and Options().format == "mxfp4"
    for recipe in NVFP4_RECIPES:
        options = Options.from_mapping({"recipe": recipe.upper()})
        assert (options.recipe, options.format) == (recipe, "nvfp4")
        assert Options.from_mapping({"recipe": recipe, "format": "nvfp4"}).format == "nvfp4"
    with pytest.raises(ValueError, match="format 'mxfp4' does not go with recipe 'nvfp4'"):
        Options.from_mapping({"recipe": "nvfp4", "format": "mxfp4"})
    with pytest.raises(ValueError, match=r"'recipe' takes one of \('quartet', 'quartet2', 'nvfp4'\), got 'mxfp8'"):
        Options.from_mapping({"recipe": "mxfp8"})


@pytest.mark.parametrize("variant", [{"rotate": False}, {"backward_rounding": "rtn"}, {"fold_backward": True}])
def test_quartet_variants_do_not_combine_with_another_recipe(variant):
    with pytest.raises(ValueError, match="is a variant of the quartet recipe; recipe 'quartet2' defines its own"):
        Options.from_mapping({"recipe": "quartet2", **variant})


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_keep_last_layers_takes_a_count(value):
    with pytest.raises(ValueError, match="'keep_last_layers' takes a count >= 0"):
        Options.from_mapping({"keep_last_layers": value})


def _quartet_by_hand(x, w, b, seed, grad, rotate=True, rounding="sr"):
    """One Quartet layer's forward and backward composed from the ops by hand (docs/QUARTET.md), each GEMM with its
    whole epilogue; the variants' backward quantizers where ``rotate``/``rounding`` ask for them."""
    x2d, grad2d = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    xc, xs, xm = fp4.quest_quantize(x2d, rotate)
    wc, ws, wm = fp4.quest_quantize(w, rotate)
    y = fp4.mxfp4_gemm(xc, xs, wc, ws, 1.0, b, "none", None, None, None, False, x.dtype)

    def backward(codes, scales, mask, transpose, signs, grad_stream, saved_stream):
        if rotate and rounding == "sr":
            gc, gs = fp4.sr_quantize(grad2d, SEED, signs, grad_stream, transpose)
            sc, ss = fp4.requantize_sr(codes, scales, SEED, signs, saved_stream)
        else:
            gc, gs = fp4.quantize_grad(grad2d, SEED, signs, grad_stream, transpose, rotate, rounding)
            sc, ss = fp4.requantize_grad(codes, scales, SEED, signs, saved_stream, rotate, rounding)
        return fp4.mxfp4_gemm(gc, gs, sc, ss, core.BACKWARD_ALPHA, None, "none", None, None, mask, rotate, x.dtype)

    streams = core.STREAM_DGRAD_SIGNS, core.STREAM_DGRAD_GRAD_OUTPUT, core.STREAM_DGRAD_WEIGHT
    dx = backward(wc, ws, xm, False, *streams)
    streams = core.STREAM_WGRAD_SIGNS, core.STREAM_WGRAD_GRAD_OUTPUT, core.STREAM_WGRAD_INPUT
    dw = backward(xc, xs, wm, True, *streams)
    return y.reshape(*x.shape[:-1], -1), dx.reshape(x.shape), dw, fp4.bias_grad(grad2d, b.dtype)


@pytest.mark.parametrize("rotate,rounding", [(True, "sr"), (True, "rtn"), (False, "sr"), (False, "rtn")])
def test_quartet_program_is_the_quartet_layer(rotate, rounding):
    """The quartet recipe's program, which the oracle runs (and the pass, symbolically), is the Quartet layer
    composed from the ops by hand, bit for bit, and so are its variants."""
    from fp4.runtime.oracle import QuartetLinearFunction

    generator = torch.Generator().manual_seed(21)
    x = torch.randn(2, 24, 64, generator=generator).to(torch.bfloat16)
    w = torch.randn(96, 64, generator=generator).to(torch.bfloat16)
    b = torch.randn(96, generator=generator).to(torch.bfloat16)
    grad = torch.randn(2, 24, 96, generator=generator).to(torch.bfloat16)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    recipe = RECIPES["quartet"].variant(rotate, rounding)
    y = QuartetLinearFunction.apply(xs, ws, bs, SEED, recipe)
    y.backward(grad)
    for got, want in zip(
        (y.detach(), xs.grad, ws.grad, bs.grad), _quartet_by_hand(x, w, b, SEED, grad, rotate, rounding)
    ):
        assert torch.equal(got, want)


def test_recipes_describe_themselves():
    assert {name: (r.format, r.contraction_multiple) for name, r in RECIPES.items()} == {
        "quartet": ("mxfp4", 32),
        "quartet2": ("nvfp4", 16),
        "nvfp4": ("nvfp4", 16),
    }
    assert RECIPES["quartet2"].weight_quantizer is fp4.four_over_six_quantize.default
    assert RECIPES["nvfp4"].weight_quantizer is fp4.nvfp4_quantize_2d.default


# ----------------------------------------------------------------------------------------------------------
# the NVFP4 format against TransformerEngine's formulas


def _te_fp4_codes(scaled: torch.Tensor) -> torch.Tensor:
    """TE's ``cast_to_fp4x2`` intervals (custom_recipes/reference_nvfp4.py), as codes: ties to even."""
    magnitude, sign = scaled.abs(), (scaled < 0) | ((scaled == 0) & torch.signbit(scaled))
    bounds = [(0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False)]
    code = torch.zeros_like(magnitude, dtype=torch.uint8)
    for bound, inclusive in bounds:  # "inclusive": the bound itself belongs to the upper code
        code += (magnitude >= bound if inclusive else magnitude > bound).to(torch.uint8)
    return code | (sign.to(torch.uint8) << 3)


def _te_quantize(x: torch.Tensor, tile_rows: int = 1):
    """TE's NVFP4 quantization restated from its formulas (core_nvfp4.cuh, reference_nvfp4.py), independently.

    Global encode ``448 * 6 / amax`` (FLT_MAX at most; 1 for amax 0: the CUDA kernel's rule); block decode
    ``block_amax * (encode * (1/6))`` as E4M3 (saturating); elements ``x * min(1 / (s_b * (1 / encode)), FLT_MAX)``
    clamped to 6 and rounded to nearest even.  ``tile_rows=16``: the 2-D weight blocks.
    """
    x = x.float()
    rows, cols = x.shape
    fp32_max = torch.finfo(torch.float32).max
    amax = x.abs().max()
    encode = torch.clamp_max(torch.tensor(448.0 * 6.0) / amax, fp32_max)
    encode = torch.where((amax == 0) | (encode == 0), torch.tensor(1.0), encode)
    decode = torch.tensor(1.0) / encode
    blocks = x.view(rows, cols // 16, 16)
    vec_max = blocks.abs().amax(-1, keepdim=True)
    if tile_rows == 16:
        vec_max = vec_max.view(rows // 16, 16, cols // 16, 1).amax(1, keepdim=True).expand(-1, 16, -1, -1)
        vec_max = vec_max.reshape(rows, cols // 16, 1)
    multiplier = encode * torch.reciprocal(torch.tensor(6.0))
    block_scale = torch.clamp(vec_max * multiplier, -448.0, 448.0).to(torch.float8_e4m3fn)
    element_encode = torch.clamp_max(torch.tensor(1.0) / (block_scale.float() * decode), fp32_max)
    codes = _te_fp4_codes(torch.clamp(blocks * element_encode, -6.0, 6.0)).view(rows, cols)
    return formats.pack_nibbles(codes), block_scale.view(torch.uint8).view(rows, cols // 16), decode


def _nvfp4_test_data(rows, cols, generator):
    x = torch.randn(rows, cols, generator=generator) * torch.logspace(-6, 3, cols).roll(5)[None, :]
    x[1] = 0.0  # zero blocks
    x[2, :16] = 1e-30  # a block whose scale underflows E4M3 (its elements saturate, its values decode to zero)
    x[3, 16:32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.0] * 2)  # a block with a negative zero
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_quantize_matches_transformer_engine(dtype):
    generator = torch.Generator().manual_seed(11)
    x = _nvfp4_test_data(48, 128, generator).to(dtype)
    got = nvfp4.quantize(x)
    want = _te_quantize(x)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    zeros = torch.zeros(16, 32)
    assert nvfp4.quantize(zeros)[2].item() == _te_quantize(zeros)[2].item() == 1.0


def test_nvfp4_2d_matches_transformer_engine_and_its_transpose():
    generator = torch.Generator().manual_seed(12)
    w = _nvfp4_test_data(64, 96, generator)
    got = nvfp4.quantize_2d(w)
    for g, want in zip(got, _te_quantize(w, tile_rows=16)):
        assert torch.equal(g, want)
    codes_t, scales_t = nvfp4.transpose_2d(got[0], got[1])
    for g, want in zip((codes_t, scales_t), nvfp4.quantize_2d(w.t().contiguous())[:2]):
        assert torch.equal(g, want)
    # rows past a multiple of 16: the last tile is padded with zeros, the transpose with zero codes
    odd = w[:40]
    codes, scales, decode = nvfp4.quantize_2d(odd)
    padded = nvfp4.quantize_2d(torch.nn.functional.pad(odd, (0, 0, 0, 8)))
    assert torch.equal(codes, padded[0][:40]) and torch.equal(scales, padded[1][:40])
    codes_t, scales_t = nvfp4.transpose_2d(codes, scales)
    assert codes_t.shape == (96, 24) and scales_t.shape == (96, 3)
    assert torch.equal(formats.unpack_nibbles(codes_t)[:, 40:], torch.zeros(96, 8, dtype=torch.uint8))
    values_t = nvfp4.dequantize(codes_t, scales_t, decode)
    assert torch.equal(values_t[:, :40], nvfp4.dequantize(codes, scales, decode).t())


def test_hadamard_16_is_te_transform():
    generator = torch.Generator().manual_seed(13)
    x = torch.randn(8, 64, generator=generator)
    signs = torch.tensor(core.NVFP4_HADAMARD_SIGNS, dtype=torch.float64)
    te_matrix = torch.diag(signs) @ hadamard_matrix(16)  # TE: sign_matrix @ hadamard, applied as x @ it
    want = (x.double().view(8, 4, 16) @ te_matrix).view(8, 64)
    got = nvfp4.hadamard_16(x)
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-5)
    assert core.NVFP4_HADAMARD_NORM == 0.25
    assert torch.allclose((got.view(8, 4, 16).square().sum(-1)), x.view(8, 4, 16).square().sum(-1), rtol=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("hadamard", [False, True])
def test_nvfp4_operand_is_the_composition(transpose, hadamard):
    generator = torch.Generator().manual_seed(14)
    x = torch.randn(40, 24, generator=generator).to(torch.bfloat16)
    values = x.float().t() if transpose else x.float()
    values = nvfp4.pad_last(values, 16)
    if hadamard:
        values = rotate(values, -1, nvfp4.HADAMARD_SIGNS, size=16)
    for got, want in zip(nvfp4.quantize_operand(x, transpose, hadamard, None, 0), nvfp4.quantize(values)):
        assert torch.equal(got, want)
    codes, scales, decode = fp4.nvfp4_quantize(x, transpose, hadamard, SEED, 2)
    assert codes.shape == ((24, 24) if transpose else (40, 16)) and decode.shape == ()
    again = fp4.nvfp4_quantize(x, transpose, hadamard, SEED, 2)
    other = fp4.nvfp4_quantize(x, transpose, hadamard, SEED, 4)
    assert torch.equal(codes, again[0]) and not torch.equal(codes, other[0])


def test_nvfp4_stochastic_rounding_is_unbiased():
    """Mean of many draws of the nvfp4 gradient quantizer against the values it quantizes, per element."""
    generator = torch.Generator().manual_seed(15)
    x = torch.randn(4, 64, generator=generator)
    draws = 2000
    total = torch.zeros(4, 64, dtype=torch.float64)
    for i in range(draws):
        total += nvfp4.dequantize(*nvfp4.quantize_operand(x, False, False, 1000 + i, 2)).double()
    codes, scales, decode = nvfp4.quantize(x)
    unit = (nvfp4.decode_e4m3(scales) * decode).repeat_interleave(16, -1).double()
    inside = (x / unit).abs() <= 6.0
    error = (total / draws - x.double()).abs()
    # a draw lands on one of two grid points at most 2 units apart: standard deviation <= 1 unit
    assert (error[inside] <= 5 * unit[inside] / math.sqrt(draws)).all()


# ----------------------------------------------------------------------------------------------------------
# quartet2


def test_quartet2_constants_are_the_authors():
    assert core.QUARTET2_BACKWARD_SCALE_OVERRIDE == (17 / 16) * 0.93
    assert core.QUARTET2_BACKWARD_VALUE_MAX == f32(6.0 / ((17 / 16) * 0.93))
    assert abs(core.QUARTET2_BACKWARD_VALUE_MAX - 6.0721) < 1e-4
    assert core.QUARTET2_EDEN_SCALE_MAX == 255.99 and core.QUARTET2_FOUR_OVER_SIX_SCALE_MAX == 256.0
    assert core.QUARTET2_FOUR_OVER_SIX_RATIO == 6 / 4 and core.QUARTET2_HADAMARD_SIZE == 128


def test_four_over_six_known_answers():
    # One tensor, three blocks.  Its amax 4 sits in block 0, so the tensor scale is 4 / 1536 and block 0's two
    # candidate scales are exactly 256 (map to 6) and 384 (map to 4) in E4M3.
    x = torch.zeros(1, 48)
    x[0, :4] = torch.tensor([4.0, 3.0, -2.0, 1.0])  # on the map-to-4 grid exactly; map-to-6 rounds 3 * 1.5 = 4.5
    x[0, 16:18] = torch.tensor([4.0 * 2 / 3, -4.0 / 6])  # on the map-to-6 grid: 4 and -1 after scaling by 1.5
    codes, scales, decode = quartet2.four_over_six_quantize(x)
    assert decode.item() == f32(4.0 / 256 / 6)
    assert nvfp4.decode_e4m3(scales).tolist() == [[384.0, 256.0, 1.0]]  # map to 4, map to 6, zero block -> 1
    values = nvfp4.dequantize(codes, scales, decode)
    assert torch.equal(values[0, :4], x[0, :4])
    assert torch.equal(values[0, 16:18], torch.tensor([4.0 * 2 / 3, -4.0 / 6]).float())
    assert values[0, 32:].abs().sum() == 0


def test_four_over_six_picks_the_smaller_error():
    generator = torch.Generator().manual_seed(16)
    x = torch.randn(32, 128, generator=generator) * torch.rand(32, 1, generator=generator).mul(4).exp()
    codes, scales, decode = quartet2.four_over_six_quantize(x)
    got = (nvfp4.dequantize(codes, scales, decode) - x).view(32, 8, 16).square().sum(-1)
    tensor_scale = decode.item()
    base = x.view(32, 8, 16).abs().amax(-1) / 6.0
    errors = []
    for multiplier in (1.0, 1.5):
        s = nvfp4.decode_e4m3(nvfp4.encode_e4m3(base * multiplier / tensor_scale))
        s = torch.where(s == 0, torch.ones_like(s), s)
        q = formats.decode_e2m1(formats.encode_e2m1(x.view(32, 8, 16) / (s * tensor_scale).unsqueeze(-1)))
        errors.append((q * (s * tensor_scale).unsqueeze(-1) - x.view(32, 8, 16)).square().sum(-1))
    assert torch.allclose(got, torch.minimum(*errors), rtol=1e-6, atol=0)
    chose_four = (nvfp4.decode_e4m3(scales).view(32, 8) > 0) & (errors[1] < errors[0])
    assert chose_four.any() and (~chose_four).any()  # both candidates occur on ordinary data


def test_e4m3_stochastic_rounding_brackets_and_is_unbiased():
    values = torch.tensor([0.0, 1.0, 1.0625, 1.1, 447.0, 448.0, 2.0**-9 * 1.5, 300.0])
    uniform = torch.rand(20000, 8, generator=torch.Generator().manual_seed(17))
    rounded = nvfp4.decode_e4m3(nvfp4.e4m3_stochastic_round(values.expand(20000, 8), uniform))
    floor = nvfp4.decode_e4m3(nvfp4.e4m3_floor(values))
    assert floor.tolist() == [0.0, 1.0, 1.0, 1.0, 416.0, 448.0, 2.0**-9, 288.0]
    assert ((rounded == floor) | (rounded > floor)).all() and (rounded <= torch.tensor(
        [0.0, 1.0, 1.125, 1.125, 448.0, 448.0, 2.0**-8, 320.0])).all()  # fmt: skip
    spread = (rounded.max(0).values - floor) / math.sqrt(20000)
    assert ((rounded.mean(0) - values).abs() <= 5 * spread + 1e-12).all()
    assert nvfp4.e4m3_stochastic_round(torch.tensor([float("nan")]), torch.tensor([0.5])).item() == 0x7F


def test_eden_rows_known_answer():
    """One 128-element row by hand: scales, nearest-even elements, the EDEN correction, the scale's two candidates."""
    generator = torch.Generator().manual_seed(18)
    values = torch.randn(1, 128, generator=generator)
    codes, scale_bytes, decode = quartet2.eden_rows(values, 1234, 2)
    val_max = core.QUARTET2_BACKWARD_VALUE_MAX
    tensor_scale = torch.tensor(values.abs().max().item() / f32(255.99)).float() / val_max
    assert decode.item() == tensor_scale.item()
    blocks = values.view(8, 16)
    s = nvfp4.decode_e4m3(nvfp4.encode_e4m3(blocks.abs().amax(-1) / val_max / tensor_scale))
    scaled = blocks / (s * tensor_scale).unsqueeze(-1)
    q = formats.decode_e2m1(formats.encode_e2m1(scaled))
    assert torch.equal(formats.decode_e2m1(formats.unpack_nibbles(codes)).view(8, 16), q)
    correction = (scaled.double().square().sum() / (scaled.double() * q).sum()).item()
    assert 0.9 < correction < 1.1
    corrected = (s * correction).double()
    got = nvfp4.decode_e4m3(scale_bytes).view(8).double()
    low = nvfp4.decode_e4m3(nvfp4.e4m3_floor(corrected.float())).double()
    assert ((got == low) | (got > low)).all() and ((got - corrected).abs() <= corrected / 8).all()


def test_eden_quantizer_is_unbiased_over_rotations():
    """E[H^T Q(H x)] = x: the mean error of n draws (new signs and scale draws each) shrinks as 1/sqrt(n)."""
    generator = torch.Generator().manual_seed(19)
    x = torch.randn(16, 256, generator=generator)
    draws = 256
    total, single = torch.zeros_like(x, dtype=torch.float64), []
    for i in range(draws):
        seed = 104729 * (i + 1)
        q = nvfp4.dequantize(*quartet2.eden_quantize(x, seed, 0, 2, False))
        back = rotate(q, -1, quartet2.rotation_signs(seed, 0), inverse=True, size=128)
        total += back.double()
        single.append((back - x).norm().item())
    mean_error = (total / draws - x.double()).norm().item()
    assert mean_error <= 1.5 * (sum(single) / draws) / math.sqrt(draws)


@pytest.mark.parametrize("recipe", NVFP4_RECIPES)
def test_backward_gemms_are_unbiased(recipe):
    """E[dX] = dY . W-hat and E[dW] = dY^T . X-hat (the forward's quantized operands): mean of n backward steps."""
    generator = torch.Generator().manual_seed(20)
    x, w = torch.randn(64, 48, generator=generator), torch.randn(32, 48, generator=generator)
    grad = torch.randn(64, 32, generator=generator).to(torch.bfloat16)
    program = RECIPES[recipe]
    call = lambda op, *args: op(*args)  # noqa: E731
    _, saved = program.forward(call, x, w, None, torch.float32)
    w_hat = nvfp4.dequantize(*saved["w"])
    want_dx = grad.double() @ w_hat.double()
    if recipe == "quartet2":
        want_dw = grad.double().t() @ nvfp4.dequantize(*saved["x"]).double()
    else:  # the saved X^T is rotated by the fixed 16-point transform along T; dY^T is rotated the same way
        want_dw = nvfp4.hadamard_16(grad.float().t()).double() @ nvfp4.dequantize(*saved["x_t"]).double().t()
    draws = 128
    total_dx, total_dw, single = 0, 0, []
    for i in range(draws):
        seed = torch.tensor(7919 * (i + 1))
        dx = program.input_grad(call, grad, saved, seed, torch.float32).double()
        dw = program.weight_grad(call, grad, saved, seed, torch.float32).double()
        total_dx, total_dw = total_dx + dx, total_dw + dw
        single.append(((dx - want_dx).norm() / want_dx.norm(), (dw - want_dw).norm() / want_dw.norm()))
    for k, (total, want) in enumerate(((total_dx, want_dx), (total_dw, want_dw))):
        mean_error = ((total / draws - want).norm() / want.norm()).item()
        assert mean_error <= 1.5 * (sum(s[k].item() for s in single) / draws) / math.sqrt(draws), (k, mean_error)


def test_rotation_signs_are_redrawn_every_step():
    first, second = quartet2.rotation_signs(1, 0), quartet2.rotation_signs(2, 0)
    assert first.shape == (128,) and set(first.tolist()) == {-1.0, 1.0} and not torch.equal(first, second)
    assert 40 < int((first > 0).sum()) < 88


# ----------------------------------------------------------------------------------------------------------
# compiled == oracle, bit for bit, per recipe


class MLP(nn.Module):
    def __init__(self, bias=True, width=64, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, width, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x


MLP_CASES = {
    "3d_bias": (dict(bias=True), (2, 24, 64), True, False),
    "2d_no_bias": (dict(bias=False), (40, 64), True, False),
    "frozen_weight": (dict(bias=True), (2, 8, 64), True, True),
    "input_without_grad": (dict(bias=True), (24, 64), False, False),
    "k_48": (dict(bias=True, width=48, hidden=80), (3, 7, 48), True, False),
}


@pytest.mark.parametrize("recipe", NVFP4_RECIPES)
@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_mlp_matches_oracle_bitwise(recipe, case):
    module_args, shape, input_grad, frozen = MLP_CASES[case]
    torch.manual_seed(0)
    model = MLP(**module_args).to(torch.bfloat16)
    if frozen:
        model.fc1.weight.requires_grad_(False)

    def make_inputs():
        return (torch.randn(*shape, dtype=torch.bfloat16, requires_grad=input_grad),)

    oracle, compiled, backend = compare_with_oracle(model, make_inputs, recipe=recipe, verify=True)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert [layer.status for layer in report.layers] == ["rewritten", "rewritten"]
    if frozen:
        assert "weight_grad" not in report.layers[0].gemms and "weight_grad" in report.layers[1].gemms
    text = report.stages[-1][1]
    assert "mxfp4" not in text and "quest" not in text


@pytest.mark.parametrize("recipe", NVFP4_RECIPES)
def test_tiny_llama_matches_oracle_bitwise(recipe):
    torch.manual_seed(0)
    config = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64)
    model = TinyLlama(config).to(torch.bfloat16)

    def make_inputs():
        return torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))

    oracle, compiled, backend = compare_with_oracle(model, make_inputs, lambda loss: loss, recipe=recipe)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert len(report.rewritten()) == 14 and [layer.name for layer in report.skipped()] == ["lm_head"]
    assert f"recipe {recipe}" in report.summary()


@pytest.mark.parametrize("recipe", ["quartet", *NVFP4_RECIPES])
def test_keep_last_layers_match_oracle_bitwise(recipe):
    torch.manual_seed(0)
    config = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64)
    model = TinyLlama(config).to(torch.bfloat16)

    def make_inputs():
        return torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))

    oracle, compiled, backend = compare_with_oracle(
        model, make_inputs, lambda loss: loss, recipe=recipe, keep_last_layers=3
    )  # fmt: skip
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    kept = [layer.name for layer in report.skipped() if "keep_last_layers=3" in layer.reason]
    assert kept == ["layers.1.mlp.gate_proj", "layers.1.mlp.up_proj", "layers.1.mlp.down_proj"]
    assert len(report.rewritten()) == 11
    swapped = quartetize(copy.deepcopy(model), recipe=recipe, keep_last_layers=3)
    assert type(swapped.layers[1].mlp.down_proj) is nn.Linear
    assert type(swapped.layers[1].attention.o_proj).__name__ == "QuartetLinear"


@pytest.mark.parametrize("recipe", NVFP4_RECIPES)
def test_float32_model_under_autocast_matches_oracle_bitwise(recipe):
    torch.manual_seed(0)
    model = MLP()

    def make_inputs():
        return (torch.randn(2, 16, 64, requires_grad=True),)

    def loss_fn(y):
        return y.float().square().mean()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        oracle, compiled, _ = compare_with_oracle(model, make_inputs, loss_fn, recipe=recipe)
    assert_bitwise(oracle, compiled)


@pytest.mark.parametrize("recipe", NVFP4_RECIPES)
def test_weights_requantized_in_backward_match_oracle_bitwise(recipe):
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(24, 64, dtype=torch.bfloat16, requires_grad=True),)

    oracle, compiled, backend = compare_with_oracle(
        model, make_inputs, recipe=recipe, requantize_weights_in_backward=True
    )  # fmt: skip
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert report.counters["quartet-linear.weight_requantized_in_backward"] == 2
    quantizer = RECIPES[recipe].weight_quantizer.name().split("::")[1]
    assert report.backward_graph.count(f"fp4.{quantizer}") == 2


@pytest.mark.parametrize("recipe", NVFP4_RECIPES)
def test_single_layer_with_inductor_matches_oracle_bitwise(recipe):
    torch.manual_seed(0)
    model = nn.Linear(64, 96).to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True),)

    def loss_fn(y):
        return y.float().square().sum()

    oracle = run(quartetize(nn.Sequential(copy.deepcopy(model)), recipe=recipe), make_inputs, loss_fn)
    backend = configure(inductor=True, exclude=[], recipe=recipe)
    compiled = run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs, loss_fn)
    oracle = (oracle[0], {k.removeprefix("0."): v for k, v in oracle[1].items()}, oracle[2])
    assert_bitwise(oracle, compiled)
    assert backend.reports[0].counters["quartet-linear.rewritten"] == 1


def test_fp4_gathered_weight_needs_the_quartet_recipe():
    """A weight FSDP gathers as MXFP4 has no NVFP4 quantization: a layer under another recipe names why."""
    from fp4.opt import run as opt_run

    graph = """
def gathered(codes: "u8[16, 32]", scales: "u8[16, 2]", mask: "u8[16, 8]", x: "bf16[8, 64]"):
    w: "bf16[16, 64]" = torch.ops.fp4.gathered_weight.default(codes, scales, mask, True, torch.bfloat16)
    t: "bf16[64, 16]" = torch.ops.aten.t.default(w)
    mm: "bf16[8, 16]" = torch.ops.aten.mm.default(x, t)
    return (mm,)
"""
    import io

    with pytest.raises(Exception, match="weight gathered as MXFP4 \\(FP4 all-gather\\), the layer runs recipe 'nvfp4'"):
        opt_run(["-", "-p", "quartet-linear{recipe=nvfp4}"], stdin=io.StringIO(graph))
