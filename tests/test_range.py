"""Range of the forward quantizer: huge inputs stay finite, and normal inputs keep every bit.

The QuEST statistics of a group with ``max|g| >= 2**60`` are computed on the
group scaled by ``2**-96`` (the sum of squares of values from about ``1e19`` up
overflowed float32 before, and the layer returned NaN where a bf16/fp32 matmul is
finite).  ``unscaled_scale_bytes`` is the formula as it was; the two must agree
bit for bit wherever it did not overflow.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from fp4.backend import configure
from fp4.runtime import formats
from fp4.runtime import reference as ref


def unscaled_scale_bytes(groups: torch.Tensor) -> torch.Tensor:
    mean = ref.tree_sum_32(groups) * (1.0 / 32)
    mean_square = ref.tree_sum_32(groups * groups) * (1.0 / 32)
    std = torch.sqrt((mean_square - mean * mean).clamp_min(0.0))
    return formats.encode_e8m0_floor(std * ref.QUEST_SCALE_FACTOR + ref.QUEST_EPSILON)


def _groups(seed: int, rows: int = 4096) -> torch.Tensor:
    """Groups of every kind: magnitudes from subnormal to just below overflow of the old formula,
    wide dynamic range inside a group, cancelling pairs, zeros, repeated values."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, 32, generator=generator)
    # Group maxima in [1, 2) before the group exponent.
    values = values / values.abs().amax(-1, keepdim=True) * (1 + torch.rand(rows, 1, generator=generator))
    group_exponent = torch.randint(-140, 60, (rows, 1), generator=generator).float()
    group_exponent[::2] = 60.0  # half the groups: max in [2**60, 2**61), on the scaled path
    element_spread = torch.randint(0, 120, (rows, 32), generator=generator).float()
    element_spread *= torch.rand(rows, 1, generator=generator) < 0.5  # half the groups: no spread
    groups = values * torch.exp2(group_exponent - element_spread)
    groups[::7, 1::2] = -groups[::7, 0::2]  # exact cancellation of the large terms in the mean
    groups[::11, 5:] = 0.0
    groups[::13] = groups[::13, :1]  # constant groups (std 0)
    return groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scales_unchanged_wherever_the_old_formula_was_finite(seed):
    groups = _groups(seed)
    amax = groups.abs().amax(-1)
    assert (amax >= ref.QUEST_HUGE_GROUP).sum() > 100  # the scaled path is exercised ...
    assert (amax < 2.0**61).all() and not torch.isinf(groups * groups).any()  # ... where nothing overflowed
    assert torch.equal(ref.quest_scale_bytes(groups), unscaled_scale_bytes(groups))


def test_non_finite_groups_keep_the_nan_scale():
    groups = torch.ones(4, 32)
    groups[0, 3], groups[1, 0], groups[2, 31] = float("nan"), float("inf"), -float("inf")
    assert ref.quest_scale_bytes(groups).tolist() == [255, 255, 255, unscaled_scale_bytes(groups)[3].item()]


@pytest.mark.parametrize("exponent", [64, 70, 100, 122])
def test_huge_inputs_quantize_as_the_same_input_scaled_down(exponent):
    """Power-of-two scaling commutes with the quantizer: same codes and mask, scales shifted (no NaN)."""
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    scale = 2.0**exponent
    assert torch.isinf(((x * scale).float() ** 2).sum(-1)).any() or exponent < 62
    codes, scales, mask = ref.quest_quantize(x)
    big_codes, big_scales, big_mask = ref.quest_quantize(x * scale)
    assert torch.equal(big_codes, codes) and torch.equal(big_mask, mask)
    assert torch.equal(big_scales.int(), scales.int() + exponent)


def test_linear_layer_on_huge_inputs_is_finite_and_scale_equivariant():
    """Before: |x| >= 1e19 gave an all-NaN output where F.linear is finite."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 64, bias=False))
    x = torch.randn(2, 16, 64)
    compiled = torch.compile(layer, backend=configure(inductor=False))
    with torch.no_grad():
        y = compiled(x)
        for value in (1e19, 1e25, 1e30):
            assert torch.isfinite(layer(x * value)).all()
            assert torch.isfinite(compiled(x * value)).all(), value
        assert torch.equal(compiled(x * 2.0**80), y * 2.0**80)
