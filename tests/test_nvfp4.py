"""Known answers of the NVFP4 format (fp4.runtime.nvfp4)."""

import pytest
import torch
from fp4.runtime import formats, nvfp4


def test_e4m3_rounds_to_nearest_even_and_saturates():
    values = torch.tensor([0.0, 1.0, 1.0625, 1.1875, 448.0, 464.0, 1e6, -1e6, 2.0**-9, 2.0**-10])
    decoded = nvfp4.decode_e4m3(nvfp4.encode_e4m3(values))
    # 1.0625 is the tie between 1 and 1.125 (even: 1); 1.1875 ties 1.125/1.25 (even: 1.25)
    expected = [0.0, 1.0, 1.0, 1.25, 448.0, 448.0, 448.0, -448.0, 2.0**-9, 0.0]
    assert decoded.tolist() == expected


def test_tensor_scale_of_zero_is_one_and_of_amax_is_2688_over_it():
    assert nvfp4.tensor_encode_scale(torch.tensor(0.0)).item() == 1.0
    assert nvfp4.tensor_encode_scale(torch.tensor(2688.0)).item() == 1.0
    assert nvfp4.tensor_encode_scale(torch.tensor(1.0)).item() == 2688.0


def test_block_with_the_tensor_amax_decodes_its_largest_element_exactly():
    x = torch.zeros(1, 32)
    x[0, 0] = 6.0 * 448.0  # tensor scale 1, block scale 448, element 6
    x[0, 1] = 448.0  # element 1
    codes, scales, decode = nvfp4.quantize(x)
    assert decode.item() == 1.0
    assert nvfp4.decode_e4m3(scales).tolist() == [[448.0, 0.0]]
    values = nvfp4.dequantize(codes, scales, decode)
    assert values[0, :2].tolist() == [6.0 * 448.0, 448.0]
    assert values[0, 16:].abs().sum().item() == 0.0  # the zero block stays zero


def test_elements_round_to_nearest_even_on_the_grid():
    # the second block carries the tensor amax 2688 (encode scale 1); the first block's amax 48 gives the
    # exact block scale 8, so its elements reach the rounding as the values below, ties included
    values = [6.0, 0.25, 0.75, 2.5, 3.5, 5.0, -1.25, -0.0] + [0.0] * 8
    x = torch.tensor([[v * 8.0 for v in values] + [2688.0] + [0.0] * 15])
    codes, scales, decode = nvfp4.quantize(x)
    assert nvfp4.decode_e4m3(scales).tolist() == [[8.0, 448.0]]
    elements = formats.decode_e2m1(formats.unpack_nibbles(codes))[0, :8]
    assert elements.tolist() == [6.0, 0.0, 1.0, 2.0, 4.0, 4.0, -1.0, -0.0]
    assert torch.signbit(elements[7])


def test_2d_blocks_give_the_transpose_the_same_codes():
    torch.manual_seed(0)
    w = torch.randn(64, 48) * torch.logspace(-3, 3, 48)
    codes, scales, decode = nvfp4.quantize_2d(w)
    codes_t, scales_t, decode_t = nvfp4.quantize_2d(w.t().contiguous())
    assert decode.item() == decode_t.item()
    full = nvfp4.dequantize(codes, scales, decode)
    full_t = nvfp4.dequantize(codes_t, scales_t, decode_t)
    assert torch.equal(full, full_t.t())


def test_stochastic_rounding_is_unbiased_inside_the_range_and_saturates_outside():
    torch.manual_seed(1)
    x = torch.randn(1, 64)
    draws = 4000
    values = torch.stack([nvfp4.dequantize(*nvfp4.quantize(x, uniform=torch.rand(1, 64))) for _ in range(draws)])
    _, scales, decode = nvfp4.quantize(x)
    unit = (nvfp4.decode_e4m3(scales) * decode).repeat_interleave(16, -1)  # value of element 1.0 per block
    inside = (x / unit).abs() <= 6.0
    # a draw lands on one of two grid points at most 2 units apart: standard deviation <= 1 unit
    error = (values.mean(0) - x).abs()
    assert (error[inside] <= 5 * unit[inside] / draws**0.5).all()
    # the block scale rounds to E4M3, so a block's largest element can land beyond 6 units: it saturates
    outside = ~inside
    assert outside.any()
    saturated = (6.0 * nvfp4.decode_e4m3(scales)).repeat_interleave(16, -1) * decode * x.sign()
    assert torch.equal(values[:, outside], saturated[outside].expand(draws, -1))


def test_block_size_is_checked():
    with pytest.raises(ValueError, match="multiple of the NVFP4 block size 16"):
        nvfp4.quantize(torch.zeros(2, 24))
