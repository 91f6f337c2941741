"""Activation checkpointing survives the fp4 rewrite: checkpointed regions stay checkpointed, bit for bit.

Saved bytes are measured the way a user would, with
``torch.autograd.graph.saved_tensors_hooks`` around the forward; parameters
(kept by the model anyway) are not counted, and the per-layer int64 seeds are
counted apart (8 bytes per rewritten layer, drawn once in the forward and saved).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fp4.backend import configure
from oracle_compare import assert_bitwise, compare_with_oracle
from torch.utils.checkpoint import checkpoint


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Block(nn.Module):
    def __init__(self, width=64, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x


class Checkpointed(nn.Module):
    """Two residual MLP blocks, each under ``torch.utils.checkpoint`` (non-reentrant)."""

    def __init__(self, use_checkpoint=True):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.use_checkpoint else block(x)
        return x


def saved_bytes(model, *inputs) -> tuple[int, int]:
    """``(activation bytes, seed bytes)`` the forward saves for the backward; runs the backward too."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    counts = {"activations": 0, "seeds": 0}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() in parameters:
            return tensor
        key = "seeds" if tensor.dtype == torch.int64 and tensor.dim() == 0 else "activations"
        counts[key] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(*inputs)
    output = getattr(output, "logits", output)
    output.float().square().mean().backward()
    return counts["activations"], counts["seeds"]


def _model_and_input():
    torch.manual_seed(0)
    model = Checkpointed().to(torch.bfloat16)
    x = torch.randn(4, 32, 64, dtype=torch.bfloat16, requires_grad=True)
    return model, x


@pytest.mark.parametrize("inductor", [False, True], ids=["fx", "inductor"])
def test_checkpointed_model_saves_no_more_than_checkpointed_eager(inductor):
    model, x = _model_and_input()
    eager, eager_seeds = saved_bytes(copy.deepcopy(model), x)
    unchecked = copy.deepcopy(model)
    unchecked.use_checkpoint = False
    assert eager_seeds == 0 and eager < saved_bytes(unchecked, x)[0]  # checkpointing saves something to begin with

    # The same compile path without the fp4 rewrite: bf16 Inductor, or AOTAutograd's FX graphs.
    baseline, _ = saved_bytes(torch.compile(copy.deepcopy(model), backend="inductor" if inductor else "aot_eager"), x)
    torch._dynamo.reset()

    backend = configure(inductor=inductor, measure_saved=True)
    compiled, seeds = saved_bytes(torch.compile(copy.deepcopy(model), backend=backend), x)
    (report,) = backend.reports
    assert len(report.rewritten()) == 4
    assert seeds == 8 * 4  # one int64 seed per layer, saved (never redrawn in the backward)
    assert compiled <= eager, f"compiled saves {compiled} B, checkpointed eager {eager} B"
    assert compiled <= baseline, f"compiled saves {compiled} B, without the fp4 rewrite {baseline} B"
    # The report measures the same partition: activations no more than the unrewritten graph's,
    # and the weights are requantized in the backward instead of saved as FP4 copies.
    assert report.saved_bytes_after <= report.saved_bytes_before
    assert not any(t.producer == "quest_quantize" for t in report.saved_after)


@pytest.mark.parametrize("recipe", ["quartet", "quartet2", "nvfp4"])
def test_checkpointed_model_matches_oracle_bitwise(recipe):
    """The forward quantization recomputed in the backward equals the saved one: gradients stay bitwise."""
    model, _ = _model_and_input()

    def make_inputs():
        return (torch.randn(4, 32, 64, dtype=torch.bfloat16, requires_grad=True),)

    oracle, compiled, backend = compare_with_oracle(model, make_inputs, recipe=recipe)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert report.forward_graph.count('fp4.draw_seeds.default(4, torch.device("cpu"))') == 1
    assert "draw_seeds" not in report.backward_graph
    quantizer = {"quartet": "quest_quantize", "quartet2": "four_over_six_quantize", "nvfp4": "nvfp4_quantize_2d"}
    assert quantizer[recipe] in report.backward_graph  # recomputed there, as the region asks


def test_generator_advances_as_the_checkpointed_oracle():
    """Seeds are drawn once in the forward: the backward's recomputation draws none."""
    from fp4.runtime.oracle import quartetize

    model, x = _model_and_input()
    states = []
    for candidate in (quartetize(copy.deepcopy(model)), torch.compile(copy.deepcopy(model), backend="fp4")):
        torch.manual_seed(3)
        candidate(x).float().sum().backward()
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])


def hugging_face_side_effects():
    """Recent Hugging Face models set a module-level context variable inside each checkpointed layer (output
    capturing); Dynamo refuses that side effect under checkpoint unless told not to replay it in the backward."""
    if not hasattr(torch._dynamo.config, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        return torch._dynamo.config.patch({})
    return torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True)


@hugging_face_side_effects()
def test_hugging_face_gradient_checkpointing_stays_checkpointed():
    # Without grouped-query attention: with it, torch's own compiled checkpointed graph (backend="aot_eager")
    # already differs from eager in the last bits of the K/V gradients, so no backend can be bitwise there.
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    tokens = torch.randint(0, 128, (2, 16))

    eager, _ = saved_bytes(copy.deepcopy(model), tokens)
    backend = configure(inductor=False)
    compiled, seeds = saved_bytes(torch.compile(copy.deepcopy(model), backend=backend), tokens)
    rewritten = sum(len(report.rewritten()) for report in backend.reports)
    assert rewritten == 14 and seeds == 8 * rewritten
    assert compiled <= eager, f"compiled saves {compiled} B, checkpointed eager {eager} B"

    oracle, compiled_run, _ = compare_with_oracle(model, lambda: (tokens,))
    assert_bitwise(oracle, compiled_run)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ResidualOutside(nn.Module):
    """``x + checkpoint(mlp, x)``: the residual add is outside the checkpointed region."""

    def __init__(self):
        super().__init__()
        self.mlps = nn.ModuleList([MLP(), MLP()])

    def forward(self, x):
        for mlp in self.mlps:
            x = x + checkpoint(mlp, x, use_reentrant=False)
        return x


def test_residual_outside_the_region_is_not_folded_into_it():
    """Folded into the region's GEMM, the add would be recomputed with the region and its output saved."""
    torch.manual_seed(0)
    model = ResidualOutside().to(torch.bfloat16)
    x = torch.randn(4, 32, 64, dtype=torch.bfloat16, requires_grad=True)
    eager, _ = saved_bytes(copy.deepcopy(model), x)
    backend = configure(inductor=False)
    compiled, _ = saved_bytes(torch.compile(copy.deepcopy(model), backend=backend), x)
    assert compiled < eager
    (report,) = backend.reports
    assert report.forward_graph.count("aten.add.Tensor") == 2  # both residual adds stay separate nodes

    oracle, compiled_run, _ = compare_with_oracle(
        model, lambda: (torch.randn(4, 32, 64, dtype=torch.bfloat16, requires_grad=True),)
    )
    assert_bitwise(oracle, compiled_run)


class SideEffectBlock(Block):
    """A block whose forward mutates an outer-scope object: Dynamo cannot trace it under checkpoint."""

    calls = 0

    def forward(self, x):
        SideEffectBlock.calls += 1
        return super().forward(x)


class UntraceableCheckpoint(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 64)
        self.block = SideEffectBlock()
        self.out = nn.Linear(64, 64)

    def forward(self, x):
        h = self.inp(x)
        h = checkpoint(self.block, h, use_reentrant=False)
        return self.out(h)


def test_checkpoint_region_dynamo_cannot_trace_is_reported(caplog):
    """The layers of a region Dynamo runs eagerly never reach the backend: the report says so, never silently."""
    from fp4.inspect import inspect_model

    with caplog.at_level("WARNING", logger="fp4.report"):
        result = inspect_model(UntraceableCheckpoint(), torch.randn(8, 64), inductor=False)
    assert result.uncaptured == ["block.fc1", "block.fc2"]
    assert "outside every compiled graph" in result.summary() and "block.fc1, block.fc2" in result.summary()
    notes = [note for report in result.reports for note in report.notes]
    assert len(notes) == 1 and "ran eagerly, outside this backend" in notes[0]
    assert "not captured" in result.summary()
    assert any("not captured" in record.getMessage() for record in caplog.records)
    rewritten = sorted(layer.name for layer in result.layers if layer.status == "rewritten")
    assert rewritten == ["inp", "out"]
