"""Every matmul with a weight is in the report, rewritten or skipped with its reason, on the models users bring.

GPT-2's ``Conv1D`` (a linear layer with the transposed weight), sliced and
computed weights, output heads found by structure (tied to an embedding, the
logits over the vocabulary, the input of the loss), and the eager oracle
following the backend's selection rule (K not a multiple of 32, autocast,
Linear subclasses, ``nn.MultiheadAttention``).  Inputs are 3-D throughout.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fp4.backend import configure
from fp4.runtime.oracle import QuartetLinear, quartet_linear, quartetize
from oracle_compare import assert_bitwise, compare_with_oracle, run


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _rows(report) -> dict[str, str]:
    return {layer.name: layer.status if layer.status == "rewritten" else layer.reason for layer in report.layers}


def _hugging_face(model_class: str, config_class: str, vocab: int, **config):
    """A small Hugging Face model in bf16 (eval mode: no dropout) and its oracle, one step on random tokens:
    ``(oracle results, compiled results, backend)``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=vocab, **config)
    model = getattr(transformers, model_class)(config).to(torch.bfloat16).eval()
    return compare_with_oracle(model, lambda: (torch.randint(0, vocab, (2, 16)),))


# ----------------------------------------------------------------------------
# GPT-2: Conv1D


def test_gpt2_conv1d_layers_are_rewritten_bitwise():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=128, n_positions=64, n_embd=64, n_layer=1, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).to(torch.bfloat16)
    oracle, compiled, backend = compare_with_oracle(model, lambda: (torch.randint(0, 128, (2, 16)),))
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    rows = _rows(report)
    conv1d = [f"transformer.h.0.{name}" for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert list(rows) == [*conv1d, "lm_head"]  # every matmul with a weight, in program order
    assert all(rows[name] == "rewritten" for name in conv1d)
    assert {layer.module_type for layer in report.rewritten()} == {"Conv1D"}
    assert [(layer.in_features, layer.out_features) for layer in report.rewritten()] == [
        (64, 192), (64, 64), (64, 256), (256, 64),
    ]  # fmt: skip
    assert rows["lm_head"].startswith("excluded by pattern 'lm_head'")
    all_gemms = {"forward", "input_grad", "weight_grad", "bias_grad"}
    assert all(set(layer.gemms) == all_gemms for layer in report.rewritten())


def test_gpt2_conv1d_layers_compile_with_inductor():
    """The default backend (Inductor) on Conv1D, whose weight and weight gradient the pass transposes.

    The transposes quartet-linear inserts are ``permute([1, 0])``: Inductor has no lowering for
    ``aten.t`` (it decomposes it), and a pass runs after the decomposition.  In float32 the ops
    Inductor re-associates (LayerNorm, GELU) change the last bits only; measured: every gradient
    within 2.3e-7 of the oracle's, relative (Frobenius).
    """
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=128, n_positions=64, n_embd=64, n_layer=1, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)

    def make_inputs():
        return (torch.randint(0, 128, (2, 16)),)

    oracle = run(quartetize(copy.deepcopy(model)), make_inputs)
    backend = configure(inductor=True)
    compiled = run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs)
    (report,) = backend.reports
    assert [layer.module_type for layer in report.rewritten()] == ["Conv1D"] * 4
    assert all(len(layer.gemms) == 4 for layer in report.rewritten())
    assert torch.allclose(oracle[0], compiled[0], rtol=1e-5, atol=1e-6)
    for name, expected in oracle[1].items():
        relative = (compiled[1][name] - expected).norm() / expected.norm()
        assert relative < 1e-5, (name, float(relative))


# ----------------------------------------------------------------------------
# sliced and computed weights


class Sliced(nn.Module):
    """``F.linear`` on slices of a parameter along either dimension, and one on a computed weight."""

    def __init__(self, linear=F.linear):
        super().__init__()
        self.w = nn.Parameter(torch.randn(128, 64) / 8)
        self.b = nn.Parameter(torch.randn(128) / 8)
        self.scale = nn.Parameter(torch.full((64, 64), 0.5))
        self.linear = linear

    def forward(self, x):
        y = self.linear(x, self.w[:64], self.b[:64])
        y = y + self.linear(x[..., :32], self.w[64:, 32:], None)
        return F.linear(y, self.w[:64] * self.scale)


def test_sliced_weights_are_rewritten_and_a_computed_weight_is_listed():
    torch.manual_seed(0)
    model = Sliced()
    # The eager reference: the same module with the two sliced-weight calls through the Quartet op.
    reference = copy.deepcopy(model)
    reference.linear = quartet_linear

    def make_inputs():
        return (torch.randn(2, 16, 64, requires_grad=True),)

    backend = configure(inductor=False)
    expected = run(reference, make_inputs)
    compiled = run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs)
    assert_bitwise(expected, compiled)
    (report,) = backend.reports
    assert [(layer.name, layer.status, layer.in_features, layer.out_features) for layer in report.layers] == [
        ("w", "rewritten", 64, 64), ("w", "rewritten", 32, 64), ("scale", "skipped", 64, 64),
    ]  # fmt: skip
    assert report.layers[2].reason == "weight is computed (mul.Tensor) from parameters, not a parameter itself"


# ----------------------------------------------------------------------------
# output heads found by structure


def test_bert_tied_decoder_is_the_head_not_a_quantized_layer():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).to(torch.bfloat16)
    oracle, compiled, backend = compare_with_oracle(model, lambda: (torch.randint(0, 128, (2, 16)),))
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    rows = _rows(report)
    assert rows.pop("cls.predictions.decoder") == (
        "output head: weight tied to the embedding bert.embeddings.word_embeddings (stays in the model dtype)"
    )
    assert len(rows) == 7 and set(rows.values()) == {"rewritten"}  # q, k, v, o, intermediate, output, transform
    assert isinstance(quartetize(copy.deepcopy(model)).cls.predictions.decoder, nn.Linear)
    assert not isinstance(quartetize(copy.deepcopy(model)).cls.predictions.decoder, QuartetLinear)


class TinyLM(nn.Module):
    """Embedding, two hidden layers and a head that is either tied (``F.linear(h, emb.weight)``) or its own."""

    def __init__(self, tied=True, loss_inside=False, vocab=96):
        super().__init__()
        self.emb = nn.Embedding(vocab, 64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.decoder = None if tied else nn.Linear(64, vocab, bias=False)
        self.loss_inside = loss_inside

    def forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        logits = F.linear(h, self.emb.weight) if self.decoder is None else self.decoder(h)
        if self.loss_inside:
            return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        return logits


def test_tied_head_of_a_custom_model_is_skipped_bitwise():
    torch.manual_seed(0)
    model = TinyLM().to(torch.bfloat16)
    oracle, compiled, backend = compare_with_oracle(model, lambda: (torch.randint(0, 96, (2, 16)),))
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert _rows(report) == {
        "fc1": "rewritten",
        "fc2": "rewritten",
        "emb": "output head: weight tied to the embedding emb (stays in the model dtype)",
    }


@pytest.mark.parametrize(
    "loss_inside, reason",
    [
        (False, "output head: its output is a graph output over the vocabulary (96) (stays in the model dtype)"),
        (True, "output head: its output feeds the loss (log-softmax) (stays in the model dtype)"),
    ],
    ids=["logits", "loss"],
)
def test_untied_head_not_named_head_is_found_by_structure(loss_inside, reason):
    torch.manual_seed(0)
    model = TinyLM(tied=False, loss_inside=loss_inside).to(torch.bfloat16)
    backend = configure(inductor=False)
    output = torch.compile(model, backend=backend)(torch.randint(0, 96, (2, 16)))
    output.float().sum().backward()
    (report,) = backend.reports
    assert _rows(report) == {"fc1": "rewritten", "fc2": "rewritten", "decoder": reason}


# ----------------------------------------------------------------------------
# the oracle follows the backend's selection rule


class Odd(nn.Module):
    """A layer with K=48 (not a multiple of 32) between two that are rewritten."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 48)
        self.odd = nn.Linear(48, 64)
        self.down = nn.Linear(64, 64)

    def forward(self, x):
        return self.down(self.odd(self.up(x)))


def _inputs(dtype=torch.bfloat16):
    return lambda: (torch.randn(2, 16, 64, dtype=dtype, requires_grad=True),)


def test_oracle_leaves_a_layer_the_backend_skips():
    torch.manual_seed(0)
    model = Odd().to(torch.bfloat16)
    oracle_model = quartetize(copy.deepcopy(model))
    assert type(oracle_model.odd) is nn.Linear and type(oracle_model.up) is QuartetLinear
    oracle, compiled, backend = compare_with_oracle(model, _inputs())
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert _rows(report)["odd"] == "contraction dim K=48 is not a multiple of 32"


def test_oracle_honours_autocast_as_the_compiled_graph_does():
    torch.manual_seed(0)
    model = Odd()  # float32 parameters and input; autocast runs the linear layers in bfloat16
    oracle_model = quartetize(copy.deepcopy(model))
    compiled_model = torch.compile(copy.deepcopy(model), backend=configure(inductor=False))
    results = []
    for candidate in (oracle_model, compiled_model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(run(candidate, _inputs(torch.float32)))
    assert results[0][0].dtype == torch.bfloat16
    assert_bitwise(*results)


class LoRALinear(nn.Linear):
    """A Linear subclass with its own forward (a low-rank adapter beside the frozen base weight)."""

    def __init__(self, in_features, out_features, rank=32):
        super().__init__(in_features, out_features)
        self.weight.requires_grad_(False)
        self.lora_a = nn.Linear(in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_features, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.lora_b(self.lora_a(x)) * 0.5


class WithSubclassAndAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = LoRALinear(64, 64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x):
        h = self.proj(x)
        return self.attn(h, h, h, need_weights=False)[0]


def test_oracle_covers_linear_subclasses_and_multihead_attention():
    torch.manual_seed(0)
    model = WithSubclassAndAttention()
    # Non-zero biases: the in-projection of a batch_first input is a matmul and a separate bias add (the
    # input is transposed, not contiguous), in eager PyTorch and in the graph; the oracle must do the same.
    nn.init.normal_(model.attn.in_proj_bias)
    nn.init.normal_(model.attn.out_proj.bias)
    model = model.to(torch.bfloat16)
    oracle, compiled, backend = compare_with_oracle(model, _inputs())
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert _rows(report) == {
        "proj": "rewritten",
        "proj.lora_a": "rewritten",
        "proj.lora_b": "rewritten",
        "attn.in_proj_weight": "rewritten",
        "attn.out_proj": "rewritten",
    }
    assert "weight_grad" in report.layers[0].missing  # the frozen base weight


class TransposedWeightLinear(nn.Linear):
    """A Linear subclass that multiplies by its transposed weight itself, as Falcon's ``FalconLinear`` does."""

    def forward(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class InPlaceResidual(nn.Module):
    """Falcon's parallel block in miniature: one layer's output updated in place by another's, then a residual."""

    def __init__(self):
        super().__init__()
        self.up = TransposedWeightLinear(64, 128)
        self.down = TransposedWeightLinear(128, 64, bias=False)
        self.side = nn.Linear(64, 64)

    def forward(self, x):
        y = self.down(F.gelu(self.up(x)))
        y += self.side(x)
        return y + x


def test_transposed_weight_matmuls_and_in_place_updates_match_the_oracle_bitwise():
    torch.manual_seed(0)
    model = InPlaceResidual()
    nn.init.normal_(model.up.bias)
    oracle, compiled, backend = compare_with_oracle(model.to(torch.bfloat16), _inputs())
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert _rows(report) == {"up": "rewritten", "down": "rewritten", "side": "rewritten"}


def test_falcon_layers_match_the_oracle_bitwise():
    oracle, compiled, backend = _hugging_face(
        "FalconForCausalLM", "FalconConfig", 256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    rows = _rows(report)
    layers = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    rewritten = [name for name, status in rows.items() if status == "rewritten"]
    assert rewritten == [f"transformer.h.{i}.{layer}" for i in range(2) for layer in layers]
    assert rows["lm_head"].startswith("excluded by pattern")


def test_mixture_of_experts_router_is_rewritten_and_expert_stacks_are_listed_bitwise():
    """Mixtral: the router (a module calling ``F.linear`` on its own weight) runs in FP4 in the backend and the
    oracle alike; the experts' grouped GEMMs on 3-D weight stacks are in the report, skipped with the reason."""
    oracle, compiled, backend = _hugging_face(
        "MixtralForCausalLM", "MixtralConfig", 256, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    rows = _rows(report)
    assert rows["model.layers.0.mlp.gate"] == "rewritten"
    for stack in ("gate_up_proj", "down_proj"):
        reason = rows[f"model.layers.0.mlp.experts.{stack}"]
        assert reason.startswith("batched GEMM (") and "stacked weights" in reason, reason
    assert [name for name, status in rows.items() if status == "rewritten"] == [
        *(f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"),
        "model.layers.0.mlp.gate",
    ]


def test_attention_bmm_on_activations_is_not_a_layer():
    """A batched GEMM of activations (attention scores) is not listed; one on a parameter stack is."""

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(64, 64)
            self.stack = nn.Parameter(torch.randn(2, 64, 32))

        def forward(self, x):
            q = self.q(x)
            scores = torch.bmm(q, q.transpose(1, 2))
            return torch.bmm(scores.softmax(-1), q), torch.bmm(x, self.stack)

    torch.manual_seed(0)
    backend = configure(inductor=False)
    compiled = torch.compile(Scores().to(torch.bfloat16), backend=backend)
    outputs = compiled(torch.randn(2, 16, 64, dtype=torch.bfloat16))
    sum(o.float().sum() for o in outputs).backward()
    (report,) = backend.reports
    rows = _rows(report)
    assert rows.keys() == {"q", "stack"}
    assert rows["q"] == "rewritten" and rows["stack"].startswith("batched GEMM (bmm.default)")


def test_a_router_multiplying_in_float32_matches_the_oracle_bitwise():
    """DeepSeek-V3's router: ``F.linear(x.float(), self.weight.float())`` in a bf16 model. The graph traces the
    cast weight back to the parameter and rewrites the layer; the oracle follows the cast to the same parameter."""

    class Router(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(32, 64) / 8)

        def forward(self, x):
            return F.linear(x.float(), self.weight.float()).sigmoid()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(64, 64)
            self.gate = Router()

        def forward(self, x):
            h = self.up(x)
            return h * self.gate(h).mean(-1, keepdim=True)

    torch.manual_seed(0)
    oracle, compiled, backend = compare_with_oracle(Model().to(torch.bfloat16), _inputs())
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert _rows(report) == {"up": "rewritten", "gate": "rewritten"}
