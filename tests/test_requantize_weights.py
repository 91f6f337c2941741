"""``requantize_weights_in_backward``: no FP4 weight copies saved for the backward, gradients unchanged bit for bit.

The forward quantizes every weight (QuEST, deterministic) and by default
saves its codes, scales and clip mask for the backward: 0.66 B per parameter
that stay alive between forward and backward.  With the option the
partitioner recomputes that quantization in the backward from the weight
itself.  Under FSDP (``"auto"``) the weight is gathered again for the backward
anyway, so nothing full-size stays alive; tests/test_fsdp.py checks that case.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from fp4.backend import configure
from fp4.models import LlamaConfig, TinyLlama
from fp4.options import Options
from oracle_compare import assert_bitwise, compare_with_oracle, run
from torch._dynamo.utils import counters

TINY = LlamaConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=96, max_seq_len=16)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def weight_codes(report, weights) -> list:
    """Saved tensors shaped like the FP4 codes [N, K/2], scales [N, K/32] or masks [N, K/8] of a weight [N, K]."""
    shapes = set()
    for n, k in weights:
        shapes |= {(n, k // 2), (n, k // 32), (n, k // 8)}
    return [t for t in report.saved_after if t.shape in shapes and t.dtype == torch.uint8]


def test_option_is_validated():
    assert Options().requantize_weights_in_backward == "auto"
    assert Options.from_mapping({"requantize_weights_in_backward": True}).requantize_weights_in_backward is True
    with pytest.raises(ValueError, match="requantize_weights_in_backward"):
        Options.from_mapping({"requantize_weights_in_backward": "yes"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_weight_codes_saved_and_gradients_bitwise(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64)).to(dtype)
    make_inputs = lambda: (torch.randn(2, 16, 64, dtype=dtype, requires_grad=True),)
    oracle, saved, saving = compare_with_oracle(model, make_inputs, requantize_weights_in_backward=False)
    assert_bitwise(oracle, saved)
    torch._dynamo.reset()
    oracle, requantized, recomputing = compare_with_oracle(model, make_inputs, requantize_weights_in_backward=True)
    assert_bitwise(oracle, requantized)
    (before,), (after,) = saving.reports, recomputing.reports
    weights = [(96, 64), (64, 96)]
    # Default: codes + scales + mask of both weights, (1/2 + 1/32 + 1/8) B per parameter.
    assert len(weight_codes(before, weights)) == 6
    assert before.saved_parameter_bytes_after == sum(n * k * 21 // 32 for n, k in weights) + 8 * 2
    assert weight_codes(after, weights) == []
    assert after.saved_parameter_bytes_after == 8 * 2  # the two layer seeds
    assert after.saved_bytes_after == before.saved_bytes_after  # activations are saved as before
    assert after.counters["quartet-linear.weight_requantized_in_backward"] == 2
    assert "quest_quantize" in after.backward_graph and "quest_quantize" not in before.backward_graph


def test_llama_with_option_matches_oracle_bitwise():
    torch.manual_seed(0)
    model = TinyLlama(TINY)
    tokens, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    loss = lambda logits: nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    oracle, compiled, backend = compare_with_oracle(model, lambda: (tokens,), loss, requantize_weights_in_backward=True)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert len(report.rewritten()) == 7
    assert report.saved_parameter_bytes_after == 7 * 8


def test_auto_is_off_without_fsdp():
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    backend = configure(inductor=False)
    run(torch.compile(copy.deepcopy(model), backend=backend), lambda: (torch.randn(8, 64, requires_grad=True),))
    (report,) = backend.reports
    assert report.options.requantize_weights_in_backward is False
    assert len(weight_codes(report, [(64, 64)])) == 3
