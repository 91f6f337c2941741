"""MXFP4 storage formats: E2M1 codes, nibble packing, E8M0 scales, clip-mask bits (known answers by hand)."""

from __future__ import annotations

import math

import pytest
import torch
from fp4.runtime import formats
from fp4.runtime.formats import E2M1_GRID, decode_e2m1, encode_e2m1
from hypothesis import given, settings
from hypothesis import strategies as st

GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def encode(values):
    return encode_e2m1(torch.tensor(values, dtype=torch.float32)).tolist()


def test_grid_constant_is_the_e2m1_grid():
    assert list(E2M1_GRID) == GRID
    assert formats.GROUP_SIZE == 32 and formats.E2M1_MAX == 6.0
    assert formats.E8M0_BIAS == 127 and formats.E8M0_NAN == 255


def test_each_grid_point_encodes_to_its_code():
    assert encode(GRID) == list(range(8))
    # Negative values carry the sign bit; -0.0 is the negative-zero code 8.
    assert encode([-v for v in GRID]) == [8 + i for i in range(8)]


@pytest.mark.parametrize(
    ("value", "rounded"),
    [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0)],
)
def test_ties_round_to_the_even_code(value, rounded):
    code = GRID.index(rounded)
    assert code % 2 == 0
    assert encode([value, -value]) == [code, code | 8]


@pytest.mark.parametrize("midpoint", [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
def test_just_off_a_midpoint_rounds_to_the_nearer_point(midpoint):
    point = torch.tensor([midpoint, midpoint])
    neighbours = torch.nextafter(point, torch.tensor([0.0, 10.0]))  # the float32 neighbours of the midpoint
    lower = max(v for v in GRID if v < midpoint)
    upper = min(v for v in GRID if v > midpoint)
    assert encode_e2m1(neighbours).tolist() == [GRID.index(lower), GRID.index(upper)]


def test_saturation_at_six_and_beyond():
    assert encode([6.0, 6.5, 7.0, 1e30, float("inf")]) == [7] * 5
    assert encode([-6.0, -100.0, float("-inf")]) == [15] * 3


def test_negative_zero_and_nan():
    assert encode([-0.0, -0.1, 0.0, 0.1]) == [8, 8, 0, 0]
    assert encode([float("nan"), -float("nan")]) == [0, 0]


def test_decode_every_code():
    values = decode_e2m1(torch.arange(16, dtype=torch.uint8))
    assert values.dtype == torch.float32
    assert values.tolist() == GRID + [-v for v in GRID]
    assert torch.signbit(values[8]) and not torch.signbit(values[0])


def test_bf16_input_is_encoded_from_its_float_value():
    x = torch.tensor([0.75, 2.5, 5.0, -3.0], dtype=torch.bfloat16)
    assert encode_e2m1(x).tolist() == [2, 4, 6, 13]


def _nearest_even(value: float) -> int:
    """Brute force: nearest grid magnitude, ties to the even code, saturating."""
    magnitude = min(abs(value), 6.0)
    distances = [abs(magnitude - g) for g in GRID]
    best = min(distances)
    candidates = [i for i, d in enumerate(distances) if d == best]
    index = candidates[0] if len(candidates) == 1 else next(i for i in candidates if i % 2 == 0)
    return index | (8 if math.copysign(1.0, value) < 0 else 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-8, max_value=8, width=32), min_size=1, max_size=64))
def test_encode_matches_brute_force_nearest_even(values):
    assert encode(values) == [_nearest_even(v) for v in values]


def test_nibble_packing_puts_the_lower_index_in_the_low_nibble():
    codes = torch.tensor([[1, 2, 15, 0, 8, 7]], dtype=torch.uint8)
    packed = formats.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F, 0x78]]
    assert torch.equal(formats.unpack_nibbles(packed), codes)
    with pytest.raises(ValueError, match="odd last dimension"):
        formats.pack_nibbles(torch.zeros(3, dtype=torch.uint8))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_nibble_round_trip(rows, pairs, seed):
    codes = torch.randint(0, 16, (rows, 2 * pairs), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    assert torch.equal(formats.unpack_nibbles(formats.pack_nibbles(codes)), codes)


def test_mask_bits_lower_index_in_lower_bit():
    bits = torch.zeros(16, dtype=torch.bool)
    bits[0] = bits[9] = bits[15] = True
    packed = formats.pack_bits(bits)
    assert packed.tolist() == [0x01, 0x82]
    assert torch.equal(formats.unpack_bits(packed), bits)
    with pytest.raises(ValueError):
        formats.pack_bits(torch.zeros(12, dtype=torch.bool))


def test_e8m0_encode_is_floor_log2_read_off_the_exponent():
    values = torch.tensor([1.0, 1.999, 2.0, 3.0, 0.75, 0.5, 2.0**-126, 2.0**127, 1.5 * 2.0**127])
    assert formats.encode_e8m0_floor(values).tolist() == [127, 127, 128, 128, 126, 126, 1, 254, 254]
    # zero and subnormals give byte 0 (2**-127); non-finite values give the NaN byte.
    special = torch.tensor([0.0, 2.0**-130, float("inf"), float("nan")])
    assert formats.encode_e8m0_floor(special).tolist() == [0, 0, 255, 255]


def test_e8m0_decode():
    scales = torch.tensor([127, 128, 126, 0, 1, 254, 255], dtype=torch.uint8)
    decoded = formats.decode_e8m0(scales)
    assert decoded[:6].tolist() == [1.0, 2.0, 0.5, 2.0**-127, 2.0**-126, 2.0**127]
    assert math.isnan(decoded[6].item())


def test_e8m0_round_trip_of_powers_of_two():
    exponents = torch.arange(-126, 128)
    values = formats.exp2_int(exponents)
    assert torch.equal(values, torch.tensor([2.0**e for e in range(-126, 128)], dtype=torch.float32))
    assert torch.equal(formats.decode_e8m0(formats.encode_e8m0_floor(values)), values)


def test_check_groupable():
    formats.check_groupable(64, "K")
    with pytest.raises(ValueError, match="K \\(48\\) must be a multiple of the MXFP4 group size 32"):
        formats.check_groupable(48, "K")
