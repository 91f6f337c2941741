"""``use-fp8-fold``: Hopper's quantize+fold rewrite, against the MXFP4 reference and the eager oracle.

The fold GEMM computes the same float32 values as ``mxfp4_gemm`` (each folded
E4M3 value times its row scale is exactly the dequantized MXFP4 value, as
long as its group is within ``FOLD_EXACT_BINADES`` of the row's largest), so
with ``inductor=False`` on the CPU (every op runs its reference) a model
compiled for sm_90 must equal the eager oracle bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fp4.backend import configure
from fp4.capture import pipeline_text
from fp4.models import LlamaConfig, TinyLlama
from fp4.options import Options
from fp4.runtime import fold, reference
from fp4.runtime.formats import E8M0_BIAS, GROUP_SIZE
from fp4.runtime.oracle import quartetize
from fp4.target import Target
from oracle_compare import assert_bitwise, run

SMALL = LlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64)
HOPPER = "sm_90"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ----------------------------------------------------------------------------
# the fold GEMM against mxfp4_gemm


EPILOGUES = [
    dict(),
    dict(alpha=0.25, bias="bias", out_dtype=torch.bfloat16),
    dict(activation="gelu", out_dtype=torch.bfloat16),
    dict(clip_mask="mask", inverse_rotate=True, out_dtype=torch.bfloat16),
    dict(gate="gate", residual="residual", activation="silu", out_dtype=torch.bfloat16),
]


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: "-".join(sorted(e)) or "plain")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fold_gemm_equals_mxfp4_gemm_bitwise(epilogue, seed):
    generator = torch.Generator().manual_seed(seed)
    m, n, k = 24, 64, 128
    x = torch.randn(m, k, generator=generator, dtype=torch.bfloat16) * 3
    x[:, :GROUP_SIZE] *= 100  # groups of very different magnitude within a row (still within 14 binades)
    w = torch.randn(n, k, generator=generator, dtype=torch.bfloat16) / 8
    xc, xs, _, xf, xr = torch.ops.fp4.quest_quantize_fold(x, True)
    wc, ws, wm, wf, wr = torch.ops.fp4.quest_quantize_fold(w, True)
    operands = dict(
        bias=torch.randn(n, generator=generator, dtype=torch.bfloat16),
        mask=torch.ops.fp4.quest_quantize(torch.randn(m, n, generator=generator), True)[2],
        gate=torch.randn(m, n, generator=generator, dtype=torch.bfloat16),
        residual=torch.randn(m, n, generator=generator, dtype=torch.bfloat16),
    )
    args = {key: operands.get(value, value) if isinstance(value, str) else value for key, value in epilogue.items()}
    args.setdefault("alpha", 1.0)
    if "activation" not in args:
        args["activation"] = "none"
    expected = reference.mxfp4_gemm(xc, xs, wc, ws, **args)
    actual = fold.fp8_fold_gemm_reference(
        xf, xr, wf, wr,
        args["alpha"], args.get("bias"), args["activation"], args.get("gate"), args.get("residual"),
        args.get("clip_mask"), args.get("inverse_rotate", False), args.get("out_dtype", torch.float32),
    )  # fmt: skip
    assert actual.dtype == expected.dtype
    assert torch.equal(actual, expected)
    # and the fused quantizer's codes/scales/mask are quest_quantize's
    for a, b in zip(torch.ops.fp4.quest_quantize(w, True), (wc, ws, wm)):
        assert torch.equal(a, b)


def test_fold_of_groups_far_below_the_row_maximum_rounds():
    """The documented limit of exactness: a group more than 14 binades below its row's largest rounds to E4M3."""
    codes = torch.full((1, GROUP_SIZE), 0x53, dtype=torch.uint8)  # two groups of e2m1 values 1.5 and 3
    for gap, exact in ((fold.FOLD_EXACT_BINADES, True), (fold.FOLD_EXACT_BINADES + 4, False)):
        scales = torch.tensor([[E8M0_BIAS, E8M0_BIAS - gap]], dtype=torch.uint8)
        values, row_scales = fold.fold_reference(codes, scales)
        folded = fold.unfold(values, row_scales)
        dequantized = reference.dequantize(codes, scales)
        assert torch.equal(folded[:, :GROUP_SIZE], dequantized[:, :GROUP_SIZE])
        assert torch.equal(folded, dequantized) is exact
        # what is lost is below 2**-14 of the row's largest values
        assert (folded - dequantized).abs().max() <= 2.0**-14 * dequantized.abs().max()


# ----------------------------------------------------------------------------
# compiled models against the eager oracle


class MLP(nn.Module):
    def __init__(self, width=64, hidden=128):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x))) + x


def compile_for_hopper(model, make_inputs, loss_fn, **options):
    backend = configure(inductor=False, target=HOPPER, verify=True, **options)
    oracle = run(quartetize(copy.deepcopy(model)), make_inputs, loss_fn)
    compiled = run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs, loss_fn)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    return report


def assert_forward_gemms_folded(report):
    layers = len(report.rewritten())
    final = report.stages[-1][1]
    assert report.stages[-2][0] == "use-fp8-fold" and report.stages[-1][0] == "dce"
    assert report.counters["use-fp8-fold.rewritten"] == layers
    assert final.count("torch.ops.fp4.fp8_fold_gemm.default(") == layers
    # backward GEMMs stay MXFP4, reading the codes the fused quantizer still writes
    assert final.count("torch.ops.fp4.mxfp4_gemm.default(") == 2 * layers
    assert "torch.ops.fp4.quest_quantize.default(" not in final
    assert report.forward_graph.count("torch.ops.fp4.fp8_fold_gemm.default(") == layers
    assert "torch.ops.fp4.fp8_fold_gemm.default(" not in report.backward_graph
    assert report.backward_graph.count("torch.ops.fp4.mxfp4_gemm.default(") == 2 * layers


def test_mlp_compiled_for_hopper_matches_oracle_bitwise():
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)

    def make_inputs():
        return (torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True),)

    report = compile_for_hopper(model, make_inputs, lambda y: y.float().square().mean())
    assert len(report.rewritten()) == 2
    assert report.counters["use-fp8-fold.quantizers"] == 4
    assert_forward_gemms_folded(report)


def test_tiny_llama_compiled_for_hopper_matches_oracle_bitwise():
    torch.manual_seed(0)
    model = TinyLlama(SMALL).to(torch.bfloat16)

    def make_inputs():
        return torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))

    report = compile_for_hopper(model, make_inputs, lambda loss: loss)
    assert len(report.rewritten()) == 7
    assert_forward_gemms_folded(report)


@pytest.mark.parametrize("model_kind", ["mlp", "tiny_llama"])
def test_backward_fold_matches_oracle_bitwise(model_kind):
    """``fold_backward``: every GEMM of the step runs on the fold, the gradients still the oracle's bit for bit."""
    torch.manual_seed(0)
    if model_kind == "mlp":
        model = MLP().to(torch.bfloat16)
        make_inputs = lambda: (torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True),)
        loss_fn = lambda y: y.float().square().mean()
    else:
        model = TinyLlama(SMALL).to(torch.bfloat16)
        make_inputs = lambda: (torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16)))
        loss_fn = lambda loss: loss
    report = compile_for_hopper(model, make_inputs, loss_fn, fold_backward=True)
    layers, backward = len(report.rewritten()), report.backward_graph
    assert report.stages[-2][0] == "use-fp8-fold{backward=true}"
    # a dY quantizer fused with the bias gradient (fuse-bias-grad) has no fold variant: its GEMM stays MXFP4
    with_bias_grad = backward.count("torch.ops.fp4.sr_quantize_with_bias_grad.default(")
    assert with_bias_grad == (layers if model_kind == "mlp" else 0)
    assert backward.count("torch.ops.fp4.mxfp4_gemm.default(") == with_bias_grad
    assert report.counters["use-fp8-fold.rewritten"] == 3 * layers - with_bias_grad
    assert backward.count("torch.ops.fp4.fp8_fold_gemm.default(") == 2 * layers - with_bias_grad
    assert backward.count("torch.ops.fp4.sr_quantize_fold.default(") == 2 * layers - with_bias_grad
    assert backward.count("torch.ops.fp4.requantize_sr_fold.default(") == 2 * layers - with_bias_grad


# ----------------------------------------------------------------------------
# where the pass runs


@pytest.mark.parametrize("target", ["cpu", "sm_80", "sm_100", "sm_120"])
def test_other_targets_keep_the_default_pipeline(target):
    options = Options(inductor=False)
    assert pipeline_text(options, Target.parse(target)) == options.pipeline_text()
    assert "use-fp8-fold" not in pipeline_text(options, Target.parse(target))


def test_hopper_pipeline_folds_after_the_fusions():
    passes = pipeline_text(Options(inductor=False), Target.parse(HOPPER)).split(",")
    assert passes[-2:] == ["use-fp8-fold", "dce"]
    assert passes.index("use-fp8-fold") > max(i for i, p in enumerate(passes) if p.startswith("fuse-"))
    folded = pipeline_text(Options(inductor=False, fold_backward=True), Target.parse(HOPPER)).split(",")
    assert folded[-2:] == ["use-fp8-fold{backward=true}", "dce"]
    # a pipeline the user chose runs as given
    assert pipeline_text(Options(inductor=False, passes=("quartet-linear",)), Target.parse(HOPPER)) == "quartet-linear"


def test_mlp_compiled_for_blackwell_keeps_mxfp4_gemms():
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)
    backend = configure(inductor=False, target="sm_100")
    compiled = torch.compile(model, backend=backend)
    compiled(torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True)).float().sum().backward()
    (report,) = backend.reports
    assert "use-fp8-fold.rewritten" not in report.counters
    assert "fp8_fold" not in report.stages[-1][1] and "quest_quantize_fold" not in report.forward_graph
    assert report.forward_graph.count("torch.ops.fp4.mxfp4_gemm.default(") == 2
