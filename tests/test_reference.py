"""Reference semantics of the fp4 ops: QuEST forward quantizer, stochastic-rounding backward quantizer, GEMM epilogue.

Known answers are worked out by hand in the comments; stochastic rounding is checked for unbiasedness
with a stated bound (the mean of many draws within 5 standard errors of the true value).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fp4.runtime import formats, philox
from fp4.runtime import reference as ref
from fp4.runtime.hadamard import hadamard_matrix, rotate

GRID = torch.tensor(formats.E2M1_GRID, dtype=torch.float64)
SIGMAS = 5.0  # bound for every statistical check: a true-unbiased estimator fails it with p < 1e-6 per value


def quest(group_values, rotate_input=False):
    x = torch.tensor(group_values, dtype=torch.float32).reshape(1, -1)
    return ref.quest_quantize(x, rotate_input)


# ----------------------------------------------------------------------------
# forward quantizer, hand-made groups


def test_quest_alternating_ones():
    # mean 0, variance 1 -> 0.48707976 * 1 + 1e-8 lies in [1/4, 1/2): scale 2**-2 (byte 125);
    # +-1 / (1/4) = +-4 -> codes 6 and 14; |4| < 6, nothing clipped.
    codes, scales, mask = quest([1.0, -1.0] * 16)
    assert scales.tolist() == [[125]]
    assert formats.unpack_nibbles(codes).tolist() == [[6, 14] * 16]
    assert mask.tolist() == [[255] * 4]
    assert ref.dequantize(codes, scales).tolist() == [[1.0, -1.0] * 16]


def test_quest_plus_minus_eight():
    # std 8 -> 3.897 in [2, 4): scale 2 (byte 128); +-8 / 2 = +-4 -> codes 6, 14.
    codes, scales, _ = quest([8.0] * 16 + [-8.0] * 16)
    assert scales.tolist() == [[128]]
    assert formats.unpack_nibbles(codes).tolist() == [[6] * 16 + [14] * 16]


def test_quest_one_outlier_is_clipped():
    # [100, 0 x 31]: mean 3.125, mean square 312.5, variance 302.734375, std 17.399;
    # 0.48707976 * 17.399 = 8.475 in [8, 16): scale 8 (byte 130); 100 / 8 = 12.5 saturates to 6 (code 7)
    # and is clipped (mask bit 0); the zeros stay and pass the gradient.
    codes, scales, mask = quest([100.0] + [0.0] * 31)
    assert scales.tolist() == [[130]]
    assert formats.unpack_nibbles(codes).tolist() == [[7] + [0] * 31]
    assert formats.unpack_bits(mask).tolist() == [[False] + [True] * 31]
    assert ref.dequantize(codes, scales)[0, 0].item() == 48.0


def test_quest_constant_group():
    # Zero variance: the scale is 2**floor(log2(1e-8)) = 2**-27 (byte 100); 5 / 2**-27 saturates, clipped.
    codes, scales, mask = quest([5.0] * 32)
    assert scales.tolist() == [[100]]
    assert formats.unpack_nibbles(codes).tolist() == [[7] * 32]
    assert mask.tolist() == [[0] * 4]


def test_quest_all_zero_group():
    codes, scales, mask = quest([0.0] * 32)
    assert scales.tolist() == [[100]]
    assert codes.tolist() == [[0] * 16] and mask.tolist() == [[255] * 4]
    assert ref.dequantize(codes, scales).abs().sum() == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quest_non_finite_group_gets_the_nan_scale(bad):
    values = [0.5 * i for i in range(64)]
    values[40] = bad
    codes, scales, _ = quest(values)
    assert scales[0, 1].item() == formats.E8M0_NAN
    assert scales[0, 0].item() != formats.E8M0_NAN
    deq = ref.dequantize(codes, scales)
    assert torch.isnan(deq[0, 32:]).all() and torch.isfinite(deq[0, :32]).all()


def _quest_by_hand(x: torch.Tensor, rotate_input: bool):
    """Scale from float64 statistics, nearest grid point by search: the formulas of docs/QUARTET.md."""
    values = (rotate(x, -1) if rotate_input else x.float()).double().unflatten(-1, (-1, 32))
    std = values.var(-1, unbiased=False).sqrt()
    scale = torch.exp2(torch.floor(torch.log2(ref.QUEST_SCALE_FACTOR * std + ref.QUEST_EPSILON)))
    scaled = values / scale.unsqueeze(-1)
    distance = (scaled.abs().clamp_max(6).unsqueeze(-1) - GRID).abs()
    nearest = distance == distance.min(-1, keepdim=True).values
    # of two equally near grid points take the even code (ties to even)
    index = (nearest * torch.tensor([2, 1, 2, 1, 2, 1, 2, 1])).argmax(-1)
    dequantized = torch.where(scaled < 0, -GRID[index], GRID[index]) * scale.unsqueeze(-1)
    return dequantized.flatten(-2), (scaled.abs() < 6).flatten(-2)


@pytest.mark.parametrize("rotate_input", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quest_matches_the_formulas_on_random_data(rotate_input, dtype):
    generator = torch.Generator().manual_seed(11)
    x = (torch.randn(16, 128, generator=generator) * torch.rand(16, 1, generator=generator) * 10).to(dtype)
    x[3, 5] = 40.0  # an outlier that gets clipped
    codes, scales, mask = ref.quest_quantize(x, rotate_input)
    expected, expected_mask = _quest_by_hand(x, rotate_input)
    assert torch.equal(ref.dequantize(codes, scales).double(), expected)
    assert torch.equal(formats.unpack_bits(mask), expected_mask)
    if not rotate_input:
        assert not formats.unpack_bits(mask)[3, 5]


def test_quest_rotation_is_the_butterfly_then_quantize():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(12))
    rotated = ref.quest_quantize(x, True)
    by_hand = ref.quest_quantize(rotate(x, -1), False)
    assert all(torch.equal(a, b) for a, b in zip(rotated, by_hand))


def test_tree_sum_order():
    groups = torch.tensor([[1e8] + [1.0] * 15 + [-1e8] + [1.0] * 15])
    # Halves first: (1e8 + -1e8) + ... the ones survive; a left-to-right sum would lose them in 1e8.
    assert ref.tree_sum_32(groups).item() == 30.0


# ----------------------------------------------------------------------------
# backward quantizer


@pytest.mark.parametrize(
    ("value", "uniform", "code"),
    [
        (0.25, 0.49, 1),  # position 0.5 between 0 and 0.5: u < 0.5 rounds up
        (0.25, 0.5, 0),
        (5.0, 0.25, 7),  # halfway between 4 and 6
        (5.0, 0.75, 6),
        (-2.5, 0.1, 13),  # between 2 and 3, negative
        (6.0, 0.999, 7),  # the top of the grid stays there
        (3.0, 0.0, 5),  # on a grid point: position 0, never rounds up
        (0.0, 0.0, 0),
        (-0.0, 0.0, 8),
        (float("nan"), 0.0, 0),
    ],
)
def test_stochastic_rounding_rule(value, uniform, code):
    codes = ref.stochastic_round_e2m1(torch.tensor([value]), torch.tensor([uniform]))
    assert codes.tolist() == [code]


@pytest.mark.parametrize("value", [0.2, 0.7, 1.3, 1.8, 2.4, 3.3, 4.9, 5.5, -0.3, -3.9, -5.99])
def test_stochastic_rounding_is_unbiased(value):
    draws = 20000
    uniform = philox.element_uniform24(philox.stream_seed(99, 0), draws)
    decoded = formats.decode_e2m1(ref.stochastic_round_e2m1(torch.full((draws,), value), uniform)).double()
    magnitude = abs(value)
    lower = max(g for g in formats.E2M1_GRID if g <= magnitude)
    upper = min(g for g in formats.E2M1_GRID if g > magnitude)
    p = (magnitude - lower) / (upper - lower)
    standard_error = (upper - lower) * math.sqrt(p * (1 - p) / draws)
    assert abs(decoded.mean().item() - value) < SIGMAS * standard_error
    assert set(decoded.abs().unique().tolist()) == {lower, upper}


def test_absmax_scale_by_hand():
    # max |g| = 5 lies in [4, 8): scale byte 127 + 2; 3 * 5 / 4 = 3.75 rounds to 3 or 4.
    group = torch.tensor([[5.0, -1.0] + [0.0] * 30])
    assert ref.absmax_scale_bytes(group.unflatten(-1, (-1, 32))).tolist() == [[129]]
    zero = torch.zeros(1, 1, 32)
    assert ref.absmax_scale_bytes(zero).tolist() == [[0]]


def sr_dequantized(x, seed, stream=ref.STREAM_DGRAD_GRAD_OUTPUT, signs=None, transpose=False):
    """What one SR quantization means in the original basis: dequantize, times 1/3, rotate back."""
    codes, scales = ref.sr_quantize(x, signs, seed, stream, transpose)
    return rotate(ref.dequantize(codes, scales) / 3.0, -1, signs, inverse=True)


@pytest.mark.parametrize("with_signs", [False, True])
def test_sr_quantize_is_unbiased(with_signs):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(13))
    x[1] *= 1e-3  # a row of small values
    signs = ref.rotation_signs(5, 0) if with_signs else None
    draws = torch.stack([sr_dequantized(x, seed, signs=signs).double() for seed in range(400)])
    mean, standard_error = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert torch.all((mean - x.double()).abs() <= SIGMAS * standard_error + 1e-6 * x.abs().double().clamp_min(1e-3))
    # and the quantization is genuinely random, not a deterministic rounding
    assert (draws.std(0) > 0).float().mean() > 0.9


def test_sr_quantize_determinism_and_streams():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(14))
    first = ref.sr_quantize(x, None, 7, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, ref.sr_quantize(x, None, 7, 2)))
    assert not torch.equal(first[0], ref.sr_quantize(x, None, 8, 2)[0])
    assert not torch.equal(first[0], ref.sr_quantize(x, None, 7, 3)[0])
    # scales do not depend on the random bits
    assert torch.equal(first[1], ref.sr_quantize(x, None, 8, 3)[1])


def test_streams_are_uncorrelated():
    draws = 10000
    streams = [philox.element_uniform24(philox.stream_seed(21, stream), draws).double() for stream in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            correlation = torch.corrcoef(torch.stack((streams[i], streams[j])))[0, 1].item()
            assert abs(correlation) < SIGMAS / math.sqrt(draws), (i, j)


def test_rotation_signs():
    signs = ref.rotation_signs(3, ref.STREAM_DGRAD_SIGNS)
    assert signs.shape == (32,) and set(signs.tolist()) == {-1.0, 1.0}
    assert torch.equal(signs, ref.rotation_signs(3, ref.STREAM_DGRAD_SIGNS))
    assert not torch.equal(signs, ref.rotation_signs(3, ref.STREAM_WGRAD_SIGNS))
    assert not torch.equal(signs, ref.rotation_signs(4, ref.STREAM_DGRAD_SIGNS))


def test_sr_all_zero_group_stays_zero():
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(15))
    x[0, 32:] = 0
    codes, scales = ref.sr_quantize(x, ref.rotation_signs(1, 0), 1, 2)
    assert scales[0, 1].item() == 0
    assert formats.unpack_nibbles(codes)[0, 32:].tolist() == [0] * 32
    assert ref.dequantize(codes, scales)[0, 32:].abs().sum() == 0


def test_sr_quantize_pads_a_non_multiple_of_32():
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(16))
    codes, scales = ref.sr_quantize(x, None, 3, 2)
    assert codes.shape == (8, 32) and scales.shape == (8, 2)
    padded = F.pad(x, (0, 24))
    assert all(torch.equal(a, b) for a, b in zip((codes, scales), ref.sr_quantize(padded, None, 3, 2)))
    # transpose=True quantizes x^T along the rows of x, padding them the same way
    tall = x.t().contiguous()  # [40, 8]
    t_codes, t_scales = ref.sr_quantize(tall, None, 3, 2, transpose=True)
    assert torch.equal(t_codes, codes) and torch.equal(t_scales, scales)


def test_requantize_sr_is_sr_quantize_of_the_dequantized_transpose():
    x = torch.randn(48, 64, generator=torch.Generator().manual_seed(17))
    codes, scales, _ = ref.quest_quantize(x, True)
    signs = ref.rotation_signs(9, 1)
    got = ref.requantize_sr(codes, scales, signs, 9, 5)
    expected = ref.sr_quantize(ref.dequantize(codes, scales).t().contiguous(), signs, 9, 5)
    assert got[0].shape == (64, 32) and got[1].shape == (64, 2)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


# ----------------------------------------------------------------------------
# GEMM epilogue


@pytest.fixture(scope="module")
def operands():
    generator = torch.Generator().manual_seed(18)
    a, sa, _ = ref.quest_quantize(torch.randn(16, 64, generator=generator), True)
    b, sb, _ = ref.quest_quantize(torch.randn(64, 64, generator=generator), True)
    base = ref.dequantize(a, sa) @ ref.dequantize(b, sb).t()
    return a, sa, b, sb, base, generator


def gemm(operands, **kwargs):
    a, sa, b, sb, _, _ = operands
    return ref.mxfp4_gemm(a, sa, b, sb, **kwargs)


def test_gemm_is_the_dequantized_product(operands):
    base = operands[4]
    assert torch.equal(gemm(operands), base)
    assert torch.equal(gemm(operands, alpha=0.25), base * 0.25)


def test_gemm_bias(operands):
    bias = torch.randn(64, generator=operands[5]).to(torch.bfloat16)
    assert torch.equal(gemm(operands, bias=bias), operands[4] + bias.float())


@pytest.mark.parametrize(
    ("activation", "function"),
    [
        ("none", lambda t: t),
        ("gelu", F.gelu),
        ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
        ("silu", F.silu),
        ("relu", torch.relu),
    ],
)
def test_gemm_activation(operands, activation, function):
    out = gemm(operands, activation=activation, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, function(operands[4].to(torch.bfloat16)))


def test_gemm_gate_and_residual(operands):
    gate = torch.randn(16, 64, generator=operands[5]).to(torch.bfloat16)
    residual = torch.randn(16, 64, generator=operands[5]).to(torch.bfloat16)
    out = gemm(operands, activation="silu", gate=gate, residual=residual, out_dtype=torch.bfloat16)
    assert torch.equal(out, F.silu(operands[4].to(torch.bfloat16)) * gate + residual)


def test_gemm_clip_mask(operands):
    mask = torch.randint(0, 256, (16, 8), dtype=torch.uint8, generator=operands[5])
    bits = torch.stack([(mask >> i) & 1 for i in range(8)], -1).flatten(-2).float()
    assert torch.equal(gemm(operands, clip_mask=mask), operands[4] * bits)


def test_gemm_inverse_rotation(operands):
    out = gemm(operands, inverse_rotate=True)
    assert torch.equal(out, rotate(operands[4], -1, inverse=True))
    h = hadamard_matrix(32, torch.float64)
    by_matrix = (operands[4].double().unflatten(-1, (-1, 32)) @ h).flatten(-2)
    torch.testing.assert_close(out.double(), by_matrix, rtol=1e-5, atol=1e-5)


def test_gemm_out_dtype(operands):
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert torch.equal(gemm(operands, out_dtype=dtype), operands[4].to(dtype))


def test_gemm_full_epilogue_order(operands):
    generator = operands[5]
    bias = torch.randn(64, generator=generator)
    mask = torch.randint(0, 256, (16, 8), dtype=torch.uint8, generator=generator)
    gate = torch.randn(16, 64, generator=generator).to(torch.bfloat16)
    residual = torch.randn(16, 64, generator=generator).to(torch.bfloat16)
    out = gemm(
        operands, alpha=1 / 9, bias=bias, activation="gelu", gate=gate, residual=residual,
        clip_mask=mask, inverse_rotate=True, out_dtype=torch.bfloat16,
    )  # fmt: skip
    acc = operands[4] * (1 / 9) + bias
    acc = acc * formats.unpack_bits(mask).float()
    acc = rotate(acc, -1, inverse=True).to(torch.bfloat16)
    assert torch.equal(out, F.gelu(acc) * gate + residual)


def test_gemm_errors(operands):
    with pytest.raises(ValueError, match="unknown epilogue activation 'tanh'"):
        gemm(operands, activation="tanh")
    a, sa, _, _, _, _ = operands
    b, sb, _ = ref.quest_quantize(torch.randn(8, 32), True)
    with pytest.raises(ValueError, match="contraction sizes differ"):
        ref.mxfp4_gemm(a, sa, b, sb)


def test_dequantize_alpha_and_bias_grad():
    codes, scales, _ = ref.quest_quantize(torch.randn(4, 64), True)
    assert torch.equal(ref.dequantize(codes, scales, 1 / 3), ref.dequantize(codes, scales) * (1 / 3))
    grad = torch.randn(100, 16).to(torch.bfloat16)
    expected = grad.double().sum(0)
    got = ref.bias_grad(grad, torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, grad.float().sum(0).to(torch.bfloat16))
    torch.testing.assert_close(got.double(), expected, rtol=1e-2, atol=1e-2)
