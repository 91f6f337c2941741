"""The fp4 torch.compile backend against the eager Quartet oracle.

Bitwise comparisons run with ``inductor=False``: the partitioned FX graphs then
execute the same ATen kernels as eager PyTorch around the fp4 ops, so the
compiled model must reproduce ``quartetize(copy)`` exactly under the same
``torch.manual_seed`` (forward outputs, every gradient, SR included, since both
draw the layer seeds from torch's generator in forward order).  With Inductor
the surrounding ops are re-associated, so results are compared within a
tolerance (see ``test_inductor_*``).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fp4.backend import configure
from fp4.models import LlamaConfig, TinyLlama
from fp4.options import Options
from fp4.runtime.oracle import quartetize
from oracle_compare import assert_bitwise, compare_with_oracle, run
from torch._dynamo.utils import counters

SMALL = LlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class MLP(nn.Module):
    def __init__(self, bias=True, width=64, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, width, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x


# ----------------------------------------------------------------------------
# entry point and options


def test_entry_point_works_without_importing_fp4(tmp_path):
    """torch finds the backend through the torch_dynamo_backends entry point; the script never imports fp4."""
    script = tmp_path / "use_backend.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import torch
            assert "fp4" not in sys.modules
            model = torch.nn.Linear(64, 32).to(torch.bfloat16)
            compiled = torch.compile(model, backend="fp4", options={"inductor": False, "exclude": []})
            x = torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True)
            compiled(x).float().sum().backward()
            from torch._dynamo.utils import counters
            print("rewritten", counters["fp4"]["quartet-linear.rewritten"], "loaded", "fp4" in sys.modules)
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rewritten 1 loaded True" in result.stdout


def test_options_are_validated():
    assert Options.from_mapping({"exclude": "lm_head,*.down_proj"}).exclude == ("lm_head", "*.down_proj")
    assert Options.from_mapping({"passes": "quartet-linear,fuse-bias{},dce"}).passes == (
        "quartet-linear",
        "fuse-bias{}",
        "dce",
    )
    with pytest.raises(ValueError, match="unknown option"):
        Options.from_mapping({"inductr": False})
    with pytest.raises(ValueError, match="backward_rounding"):
        Options.from_mapping({"backward_rounding": "stochastic"})
    with pytest.raises(NotImplementedError, match="fp8"):
        Options.from_mapping({"format": "fp8"})
    with pytest.raises(ValueError, match="format 'nvfp4' does not go with recipe 'quartet'"):
        Options.from_mapping({"format": "nvfp4"})
    with pytest.raises(ValueError, match="True or False"):
        Options.from_mapping({"rotate": "no"})


@pytest.mark.parametrize(
    "options,message",
    [
        ({"target": 5}, "fp4 option 'target': a target is a string such as 'sm_90' or 'cpu', got 5"),
        ({"target": "cuda"}, "unknown target 'cuda': a target is an architecture, not a device"),
        ({"target": "cuda:0"}, "unknown target 'cuda:0': a target is an architecture"),
        ({"target": "sm_999"}, "unknown target 'sm_999': not a supported architecture"),
        ({"target": "sm_80a"}, "sm_80 has no 'a' form"),
        ({"target": "sm90"}, "did you mean 'sm_90'"),
        ({"target": "hopper"}, "name the architecture, e.g. 'sm_90'"),
        ({"passes": 5}, "fp4 option 'passes' takes a pipeline string"),
        ({"passes": "quartet-linear,no-such-pass"}, "fp4 option 'passes': unknown pass 'no-such-pass'"),
        ({"passes": "quartet-linear{rotate=maybe}"}, "option rotate='maybe' is not valid; it takes true or false"),
        ({"dump_dir": 5}, "fp4 option 'dump_dir' takes a directory path"),
        ({"format": 4}, "fp4 option 'format' takes one of"),
    ],
)
def test_bad_option_values_get_clear_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Options.from_mapping(options)


def test_option_values_are_normalised(tmp_path):
    assert Options.from_mapping({"target": " SM_100a "}).target == "sm_100"
    for target in ("cpu", "sm_80", "sm_89", "sm_90", "sm_100", "sm_103", "sm_120", "sm_121"):
        assert Options.from_mapping({"target": target}).target == target
    assert Options.from_mapping({"dump_dir": tmp_path}).dump_dir == str(tmp_path)
    assert Options.from_mapping({"passes": ["quartet-linear{rotate=True}", "dce"]}).passes == (
        "quartet-linear{rotate=True}",
        "dce",
    )


def test_options_reach_the_named_backend():
    """torch.compile(..., backend="fp4", options=...) hands the options to the backend."""
    model = MLP().to(torch.bfloat16)
    compiled = torch.compile(model, backend="fp4", options={"inductor": False, "exclude": ["fc2"]})
    compiled(torch.randn(4, 64, dtype=torch.bfloat16)).sum().backward()
    assert counters["fp4"]["quartet-linear.rewritten"] == 1
    assert counters["fp4"]["quartet-linear.skipped"] == 1


def test_mode_is_rejected():
    from fp4.backend import fp4_backend

    with pytest.raises(ValueError, match="mode"):
        fp4_backend(None, [], mode="max-autotune")


# ----------------------------------------------------------------------------
# bitwise against the oracle


@pytest.mark.parametrize(
    "case",
    ["2d-bias", "3d-no-bias", "frozen-weight", "input-without-grad", "frozen-bias"],
)
def test_mlp_matches_oracle_bitwise(case):
    torch.manual_seed(0)
    model = MLP(bias=case != "3d-no-bias").to(torch.bfloat16)
    if case == "frozen-weight":
        model.fc1.weight.requires_grad_(False)
    if case == "frozen-bias":
        model.fc2.bias.requires_grad_(False)
    shape = (2, 8, 64) if case == "3d-no-bias" else (16, 64)
    needs_grad = case != "input-without-grad"

    def make_inputs():
        return (torch.randn(shape, dtype=torch.bfloat16, requires_grad=needs_grad),)

    oracle, compiled, backend = compare_with_oracle(model, make_inputs)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert [layer.status for layer in report.layers] == ["rewritten", "rewritten"]
    fc1, fc2 = report.layers
    if case == "frozen-weight":
        assert "weight_grad" not in fc1.gemms and "weight_grad" in fc1.missing
    if case == "input-without-grad":
        assert "input_grad" not in fc1.gemms and "input_grad" in fc1.missing
        assert "input_grad" in fc2.gemms
    if case == "frozen-bias":
        assert "bias_grad" not in fc2.gemms
    if case == "2d-bias":
        assert set(fc1.gemms) == {"forward", "input_grad", "weight_grad", "bias_grad"}


def test_shared_weight_and_float32_match_oracle_bitwise():
    """A layer called twice gets two seeds (as the oracle's two calls do); float32 models need no output cast."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)
            self.out = nn.Linear(64, 64, bias=False)

        def forward(self, x):
            return self.out(F.relu(self.fc(F.relu(self.fc(x)))))

    torch.manual_seed(0)

    def make_inputs():
        return (torch.randn(4, 8, 64, requires_grad=True),)

    oracle, compiled, backend = compare_with_oracle(Twice(), make_inputs)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert [layer.name for layer in report.rewritten()] == ["fc", "fc", "out"]
    assert [layer.seed_index for layer in report.rewritten()] == [0, 1, 2]
    # relu's backward reads its output, not its input: the activation folds into the GEMM even in training.
    assert report.counters["fuse-activation.fused"] == 2
    assert "convert_element_type" not in report.stages[-1][1]


class CalledTwice(nn.Module):
    """``lin(lin(x))``: one layer whose second call reads its own first call's GEMM."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 64)

    def forward(self, x):
        return self.lin(self.lin(x))


class LoRA(nn.Module):
    """LoRA's low-rank path ``B(A(x))`` on 2-D features (rank 32, so both GEMMs are rewritten)."""

    def __init__(self):
        super().__init__()
        self.A = nn.Linear(64, 32, bias=False)
        self.B = nn.Linear(32, 64, bias=False)

    def forward(self, x):
        return self.B(self.A(x))


BACK_TO_BACK = {
    "sequential": lambda: nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)),
    "identity-between": lambda: nn.Sequential(nn.Linear(64, 64), nn.Identity(), nn.Linear(64, 64)),
    "no-bias": lambda: nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)),
    "three-deep": lambda: nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 96), nn.Linear(96, 64)),
    "called-twice": CalledTwice,
    "lora": LoRA,
}


@pytest.mark.parametrize("case", list(BACK_TO_BACK))
def test_back_to_back_linears_on_2d_input_match_oracle_bitwise(case):
    """With no view between two layers, one layer's rewrite replaces nodes the next layer's match holds."""
    torch.manual_seed(0)
    model = BACK_TO_BACK[case]().to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True),)

    oracle, compiled, backend = compare_with_oracle(model, make_inputs)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert report.layers and all(layer.status == "rewritten" for layer in report.layers)
    assert all({"forward", "input_grad", "weight_grad"} <= set(layer.gemms) for layer in report.layers)

    x = torch.randn(8, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = quartetize(copy.deepcopy(model))(x)
        torch.manual_seed(1)
        actual = torch.compile(copy.deepcopy(model), backend=configure(inductor=False))(x)
    assert torch.equal(expected, actual)


@pytest.mark.parametrize("grad", [True, False], ids=["training", "no_grad"])
def test_back_to_back_linears_compile_with_inductor(grad):
    """The same graphs through Inductor; nothing but the layers around them, so still bit for bit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Identity(), nn.Linear(64, 64)).to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True),)

    with torch.set_grad_enabled(grad):
        if grad:
            oracle = run(quartetize(copy.deepcopy(model)), make_inputs)
            compiled = run(torch.compile(copy.deepcopy(model), backend=configure(inductor=True)), make_inputs)
            assert_bitwise(oracle, compiled)
        else:
            (x,) = make_inputs()
            torch.manual_seed(1)
            expected = quartetize(copy.deepcopy(model))(x)
            torch.manual_seed(1)
            backend = configure(inductor=True)
            assert torch.equal(expected, torch.compile(copy.deepcopy(model), backend=backend)(x))
            assert len(backend.reports[0].rewritten()) == 2


def test_tiny_llama_training_matches_oracle_bitwise():
    torch.manual_seed(0)
    model = TinyLlama(SMALL).to(torch.bfloat16)

    def make_inputs():
        return torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))

    oracle, compiled, backend = compare_with_oracle(model, make_inputs, loss_fn=lambda loss: loss, verify=True)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    rewritten = [layer.name for layer in report.rewritten()]
    assert rewritten == [
        f"layers.0.{name}"
        for name in (
            "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        )
    ]  # fmt: skip
    assert [layer.name for layer in report.skipped()] == ["lm_head"]
    assert all(set(layer.gemms) == {"forward", "input_grad", "weight_grad"} for layer in report.rewritten())
    # Attention's own matmuls (SDPA) are not linear layers: left in the model dtype.
    assert "scaled_dot_product" in report.forward_graph


def test_tiny_llama_inference_matches_oracle_bitwise_with_fused_epilogues():
    torch.manual_seed(0)
    model = TinyLlama(SMALL).to(torch.bfloat16).eval()
    tokens = torch.randint(0, 256, (2, 16))
    backend = configure(inductor=False)
    with torch.no_grad():
        expected = quartetize(copy.deepcopy(model))(tokens)
        actual = torch.compile(copy.deepcopy(model), backend=backend)(tokens)
    assert torch.equal(expected, actual)
    (report,) = backend.reports
    assert report.kind == "inference"
    # SwiGLU: gate_proj takes the SiLU, up_proj the gate multiply; o_proj and down_proj the residual adds.
    assert report.counters["fuse-activation.fused"] == 1
    assert report.counters["fuse-gate.fused"] == 1
    assert report.counters["fuse-residual.fused"] == 2
    assert "draw_seeds" not in report.stages[-1][1]


@pytest.mark.parametrize("recipe", ["quartet", "quartet2", "nvfp4"])
def test_hugging_face_llama_matches_oracle_bitwise(recipe):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)

    def make_inputs():
        return (torch.randint(0, 128, (2, 16)),)

    oracle, compiled, backend = compare_with_oracle(model, make_inputs, recipe=recipe)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert len(report.rewritten()) == 7
    assert [layer.name for layer in report.skipped()] == ["lm_head"]
    assert report.rewritten()[0].name == "model.layers.0.self_attn.q_proj"
    gemm = "mxfp4_gemm" if recipe == "quartet" else "nvfp4_gemm"
    assert report.forward_graph.count(f"fp4.{gemm}") == 7 and report.backward_graph.count(f"fp4.{gemm}") == 14


def test_new_batch_size_recompiles_with_symbolic_tokens():
    torch.manual_seed(0)
    model = TinyLlama(SMALL).to(torch.bfloat16)
    oracle_model = quartetize(copy.deepcopy(model))
    backend = configure(inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    for batch, length in ((2, 16), (3, 16), (5, 24)):

        def make_inputs(batch=batch, length=length):
            return torch.randint(0, 256, (batch, length)), torch.randint(0, 256, (batch, length))

        oracle_model.zero_grad(set_to_none=True)
        compiled.zero_grad(set_to_none=True)
        assert_bitwise(run(oracle_model, make_inputs, lambda loss: loss), run(compiled, make_inputs, lambda loss: loss))
    assert len(backend.reports) >= 2  # the second batch size recompiles with a symbolic size
    assert "Constructed by quartet-linear" in backend.reports[-1].stages[1][1]


# ----------------------------------------------------------------------------
# what is and is not rewritten


def test_contraction_not_multiple_of_32_is_skipped_with_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 64), nn.GELU(), nn.Linear(64, 32)).to(torch.bfloat16)
    backend = configure(inductor=False)
    x = torch.randn(8, 48, dtype=torch.bfloat16)
    torch.manual_seed(1)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    out = compiled(x)
    torch.manual_seed(1)
    reference = copy.deepcopy(model)
    reference[2] = quartetize(nn.Sequential(reference[2]))[0]
    assert torch.equal(out, reference(x))
    (report,) = backend.reports
    first, second = report.layers
    assert first.status == "skipped" and "K=48" in first.reason
    assert second.status == "rewritten"


@pytest.mark.parametrize(
    "dynamo_name,expected",
    [
        ("L['self'].layers[0]._modules['mlp'].fc1", "layers.0.mlp.fc1"),
        ("L['args'][0].model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"),
        ("getattr(L['self'].layers, '0').mlp.up", "layers.0.mlp.up"),
        ("L['mod']._modules['blocks']._modules['3'].attn.qkv", "blocks.3.attn.qkv"),
        ("L['self'].lm_head", "lm_head"),
    ],
)
def test_module_names_are_named_modules_names(dynamo_name, expected):
    from fp4.passes.fx_tools import normalize_module_name

    assert normalize_module_name(dynamo_name) == expected


def test_layer_patterns_select_layers():
    torch.manual_seed(0)
    model = TinyLlama(SMALL).to(torch.bfloat16)
    backend = configure(inductor=False, include=["*.mlp.*"], exclude=["*.down_proj"])
    torch.compile(model, backend=backend)(torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))).backward()
    (report,) = backend.reports
    assert [layer.name for layer in report.rewritten()] == ["layers.0.mlp.gate_proj", "layers.0.mlp.up_proj"]
    reasons = {layer.name: layer.reason for layer in report.skipped()}
    assert "down_proj" in reasons["layers.0.mlp.down_proj"]
    assert "include" in reasons["layers.0.attention.q_proj"]


def test_counters_observe_every_rewrite():
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)
    compiled = torch.compile(model, backend=configure(inductor=False))
    compiled(torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True)).float().sum().backward()
    fp4 = counters["fp4"]
    assert fp4["quartet-linear.rewritten"] == 2
    assert fp4["quartet-linear.forward_gemm"] == 2
    assert fp4["quartet-linear.input_grad_gemm"] == 2
    assert fp4["quartet-linear.weight_grad_gemm"] == 2
    assert fp4["quartet-linear.bias_grad"] == 2
    assert fp4["fuse-bias.fused"] == 2
    assert fp4["fuse-clip-mask.fused"] == 4
    assert fp4["fuse-inverse-rotation.fused"] == 4
    assert fp4["fuse-output-cast.fused"] == 6
    assert fp4["fuse-bias-grad.fused"] == 2
    assert fp4["fuse-residual.fused"] >= 1  # fc2's output + x


def test_seeds_are_drawn_once_in_the_forward():
    """One draw_seeds in the forward graph, none in the backward; the generator advances as the oracle's does."""
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)
    backend = configure(inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    oracle = quartetize(copy.deepcopy(model))
    x = torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True)
    states = []
    for m in (oracle, compiled):
        torch.manual_seed(5)
        y = m(x)
        states.append(torch.get_rng_state())
        y.float().sum().backward()
    assert torch.equal(states[0], states[1])
    (report,) = backend.reports
    assert report.forward_graph.count('fp4.draw_seeds.default(2, torch.device("cpu"))') == 1
    assert "draw_seeds" not in report.backward_graph


def test_a_training_compile_partitions_once_unless_asked():
    """The saved-bytes comparison partitions the unrewritten graph a second time: only when asked
    (``measure_saved``, on in ``fp4 inspect``), so a training compile does not pay for it."""
    from fp4.inspect import inspect_model

    torch.manual_seed(0)
    x = torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True)
    backend = configure(inductor=False)
    torch.compile(MLP().to(torch.bfloat16), backend=backend)(x).sum().backward()
    (report,) = backend.reports
    assert report.saved_bytes_after and report.saved_bytes_before is None
    inspected = inspect_model(MLP().to(torch.bfloat16), x, inductor=False).report
    assert inspected.saved_bytes_before > inspected.saved_bytes_after
    assert "unrewritten ->" in inspected.summary()


def test_the_collector_is_paused_while_fp4_compiles(monkeypatch):
    """Both of a training graph's Inductor compiles (the forward in the backend call, the backward at the first
    backward) run with the cyclic collector off, and it is on again once they are done."""
    import gc

    import torch._inductor.compile_fx as compile_fx

    seen = {}
    original = compile_fx.compile_fx_inner

    def spy(graph, inputs, **kwargs):
        seen["backward" if kwargs.get("is_backward") else "forward"] = gc.isenabled()
        return original(graph, inputs, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx_inner", spy)
    assert gc.isenabled()
    torch.manual_seed(0)
    x = torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True)
    out = torch.compile(nn.Linear(64, 64).to(torch.bfloat16), backend=configure(inductor=True))(x)
    assert gc.isenabled()
    out.sum().backward()
    assert seen == {"forward": False, "backward": False} and gc.isenabled()


def test_collector_pauses_nest_and_keep_a_collector_the_user_turned_off():
    import gc
    import threading

    from fp4.capture import collector_paused

    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
        entered, release = threading.Event(), threading.Event()

        def other_compile():
            with collector_paused():
                entered.set()
                release.wait()

        thread = threading.Thread(target=other_compile)
        thread.start()
        entered.wait()
    assert not gc.isenabled()  # the other thread's compile still runs
    release.set()
    thread.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_saved_activations_are_fp4_codes():
    """The backward keeps FP4 codes + scales + masks of each layer input instead of the bf16 tensor (>= 3x less)."""
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)
    backend = configure(inductor=False, measure_saved=True)
    torch.compile(model, backend=backend)(
        torch.randn(64, 64, dtype=torch.bfloat16, requires_grad=True)
    ).sum().backward()
    (report,) = backend.reports
    model_dtype, fp4_state = report.linear_input_bytes()
    assert model_dtype == 64 * 64 * 2 + 64 * 128 * 2
    assert model_dtype / fp4_state >= 3.0
    assert report.saved_bytes_after < report.saved_bytes_before
    saved_inputs = {t.name for t in report.saved_after}
    assert not any(t.dtype == torch.bfloat16 and t.shape == (64, 64) for t in report.saved_after), saved_inputs


# ----------------------------------------------------------------------------
# variants


def _variant_oracle(model, rotate, rounding):
    """An eager model computing the variant with the fp4 ops, layer by layer (like the oracle)."""
    from fp4.runtime import reference as ref
    from fp4.runtime import variants  # noqa: F401

    ops = torch.ops.fp4

    class VariantLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, seed):
            x2d = x.reshape(-1, weight.shape[1])
            xc, xs, xm = ops.quest_quantize(x2d, rotate)
            wc, ws, wm = ops.quest_quantize(weight, rotate)
            y = ops.mxfp4_gemm(xc, xs, wc, ws, 1.0, bias, "none", None, None, None, False, x.dtype)
            ctx.save_for_backward(xc, xs, xm, wc, ws, wm, seed)
            ctx.shape = x.shape
            return y.reshape(*x.shape[:-1], weight.shape[0])

        @staticmethod
        def backward(ctx, grad_y):
            xc, xs, xm, wc, ws, wm, seed = ctx.saved_tensors
            g = grad_y.reshape(-1, grad_y.shape[-1])
            gc, gs = ops.quantize_grad(g, seed, ref.STREAM_DGRAD_SIGNS, ref.STREAM_DGRAD_GRAD_OUTPUT, False, rotate,
                                       rounding)  # fmt: skip
            tc, ts = ops.requantize_grad(
                wc, ws, seed, ref.STREAM_DGRAD_SIGNS, ref.STREAM_DGRAD_WEIGHT, rotate, rounding
            )
            dx = ops.mxfp4_gemm(gc, gs, tc, ts, ref.BACKWARD_ALPHA, None, "none", None, None, xm, rotate, g.dtype)
            gc, gs = ops.quantize_grad(g, seed, ref.STREAM_WGRAD_SIGNS, ref.STREAM_WGRAD_GRAD_OUTPUT, True, rotate,
                                       rounding)  # fmt: skip
            tc, ts = ops.requantize_grad(xc, xs, seed, ref.STREAM_WGRAD_SIGNS, ref.STREAM_WGRAD_INPUT, rotate, rounding)
            dw = ops.mxfp4_gemm(gc, gs, tc, ts, ref.BACKWARD_ALPHA, None, "none", None, None, wm, rotate, g.dtype)
            db = ops.bias_grad(g, g.dtype)
            return dx.reshape(ctx.shape), dw, db, None

    class Wrapped(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            seed = ops.draw_seeds(1, torch.device("cpu"))[0]
            return VariantLinear.apply(x, self.linear.weight, self.linear.bias, seed)

    model = copy.deepcopy(model)
    model.fc1, model.fc2 = Wrapped(model.fc1), Wrapped(model.fc2)
    return model


@pytest.mark.parametrize("rotate,rounding", [(True, "rtn"), (False, "sr"), (False, "rtn")])
def test_variants_match_their_eager_composition(rotate, rounding):
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True),)

    expected = run(_variant_oracle(model, rotate, rounding), make_inputs)
    backend = configure(inductor=False, rotate=rotate, backward_rounding=rounding)
    actual = run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs)
    expected[1].update({k.replace(".linear.", "."): v for k, v in list(expected[1].items())})
    expected = (expected[0], {k: expected[1][k] for k in actual[1]}, expected[2])
    assert_bitwise(expected, actual)
    text = backend.reports[0].stages[1][1]
    assert "quantize_grad" in text and ("inverse_rotate" in text) == rotate


# ----------------------------------------------------------------------------
# Inductor


@pytest.mark.parametrize("rounding", ["sr", "rtn"])
def test_unrotated_variant_compiles_with_inductor(rounding):
    """rotate=False under Inductor: the backward quantizers' fakes must promise the layout the ops return.

    A single layer with nothing around it is bitwise the same with and without Inductor.
    """
    torch.manual_seed(0)
    model = nn.Linear(64, 128).to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True),)

    results = []
    for inductor in (False, True):
        torch._dynamo.reset()
        backend = configure(inductor=inductor, rotate=False, backward_rounding=rounding, exclude=[])
        results.append(run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs))
        assert backend.reports[0].counters["quartet-linear.rewritten"] == 1
    assert_bitwise(*results)


def test_inductor_single_layer_matches_oracle_bitwise():
    """With nothing but the layer around it, Inductor leaves no op to re-associate: still bit for bit."""
    torch.manual_seed(0)
    model = nn.Linear(64, 96).to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True),)

    oracle = run(quartetize(nn.Sequential(copy.deepcopy(model))), make_inputs, lambda y: y.float().square().sum())
    backend = configure(inductor=True, exclude=[])
    compiled = run(
        torch.compile(copy.deepcopy(model), backend=backend), make_inputs, lambda y: y.float().square().sum()
    )
    oracle = (oracle[0], {k.removeprefix("0."): v for k, v in oracle[1].items()}, oracle[2])
    assert_bitwise(oracle, compiled)
    assert backend.reports[0].counters["quartet-linear.rewritten"] == 1


def test_inductor_llama_block_within_tolerance():
    """Inductor re-associates RMSNorm/attention/SiLU around the fp4 ops.

    The forward loss agrees to 1e-3 relative.  Gradients are then computed from
    inputs that differ in the last bf16 bits, and FP4 quantization turns a last-bit
    change into a whole grid step for the elements it moves across a rounding
    boundary, compounding layer by layer; measured here: under 20 % relative
    (Frobenius) per parameter, and the fp4 gradients agree with the oracle's far
    better than with an unrelated random direction (cosine > 0.95).
    """
    torch.manual_seed(0)
    model = TinyLlama(SMALL).to(torch.bfloat16)

    def make_inputs():
        return torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))

    oracle = run(quartetize(copy.deepcopy(model)), make_inputs, lambda loss: loss)
    compiled = run(torch.compile(copy.deepcopy(model), backend=configure(inductor=True)), make_inputs, lambda x: x)
    assert torch.allclose(oracle[0], compiled[0], rtol=1e-3)
    for name, expected in oracle[1].items():
        actual = compiled[1][name].float()
        expected = expected.float()
        relative = (actual - expected).norm() / expected.norm()
        cosine = F.cosine_similarity(actual.flatten(), expected.flatten(), dim=0)
        assert relative < 0.2 and cosine > 0.95, (name, float(relative), float(cosine))


def test_inductor_inference_rewrites_and_fuses_the_forward():
    """An inference graph under Inductor: forward rewrite only, the GLU epilogue fused, results as without Inductor."""

    class GatedMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(64, 128, bias=False)
            self.up = nn.Linear(64, 128, bias=False)
            self.down = nn.Linear(128, 64, bias=False)

        def forward(self, x):
            return x + self.down(F.silu(self.gate(x)) * self.up(x))

    torch.manual_seed(0)
    model = GatedMLP().to(torch.bfloat16).eval()
    x = torch.randn(2, 16, 64, dtype=torch.bfloat16)
    backend = configure(inductor=True)
    with torch.no_grad():
        expected = quartetize(copy.deepcopy(model))(x)
        actual = torch.compile(copy.deepcopy(model), backend=backend)(x)
    (report,) = backend.reports
    assert report.kind == "inference" and len(report.rewritten()) == 3
    assert all(set(layer.gemms) == {"forward"} for layer in report.rewritten())
    for fusion in ("fuse-activation", "fuse-gate", "fuse-residual"):
        assert report.counters[f"{fusion}.fused"] == 1, fusion
    # Every op around the fp4 GEMMs was folded into them: Inductor has nothing left to re-associate.
    assert torch.equal(expected, actual)


def test_top_level_exports():
    import fp4

    assert fp4.configure is fp4.backend.configure
    assert fp4.inspect_model is fp4.inspect.inspect_model
    assert fp4.quartetize is fp4.runtime.oracle.quartetize
    with pytest.raises(AttributeError):
        fp4.no_such_name  # noqa: B018


def test_capture_runs_the_pipeline_through_the_pass_engine(monkeypatch):
    """One pass engine: the backend's capture runs its passes through ``PassManager`` (as fp4-opt and lit do)."""
    from fp4 import pipeline

    runs = []
    original = pipeline.PassManager.run
    monkeypatch.setattr(pipeline.PassManager, "run", lambda self, gm: runs.append(self) or original(self, gm))
    torch._dynamo.reset()
    backend = configure(inductor=False, exclude=[])
    model = nn.Linear(64, 32).to(torch.bfloat16)
    torch.compile(model, backend=backend)(torch.randn(8, 64, dtype=torch.bfloat16, requires_grad=True)).sum().backward()
    report = backend.reports[0]
    assert len(runs) == 1 and [p.name for p in runs[0].passes][0] == "quartet-linear"
    # what only the engine records: every pass's 'modified' count, and the stage after every pass
    assert report.counters["quartet-linear.modified"] == 1
    assert [spec.split("{")[0] for spec, _ in report.stages] == ["input"] + [
        p.spec().split("{")[0] for p in runs[0].passes
    ]
