"""The .fx text format: printer output, parser checks, and exact round trips on real training graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fp4.parser import GraphParseError, parse_graph, parse_graphs, parse_type
from fp4.printer import UnsupportedGraphError, format_graph
from graph_models import model_graphs, quartet_linear_graph, random_inputs
from torch.fx.experimental.proxy_tensor import make_fx

MODEL_GRAPHS = model_graphs()


def assert_round_trip(gm: torch.fx.GraphModule, inputs) -> torch.fx.GraphModule:
    text = format_graph(gm, produced_by="capture")
    parsed, header = parse_graph(text)
    assert header == "capture"
    assert format_graph(parsed, produced_by=header) == text
    expected, actual = gm(*inputs), parsed(*inputs)
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    return parsed


@pytest.mark.parametrize("name", sorted(MODEL_GRAPHS))
@pytest.mark.parametrize("which", [0, 1], ids=["forward", "backward"])
def test_round_trip_of_aot_graphs(name, which):
    gm = MODEL_GRAPHS[name][which]
    parsed = assert_round_trip(gm, random_inputs(gm))
    for node in parsed.graph.nodes:
        if node.op != "output":
            assert "val" in node.meta, node.name


def test_llama_graphs_contain_the_expected_ops():
    forward, backward = MODEL_GRAPHS["llama_block_softmax"]
    text = format_graph(forward)
    assert "torch.ops.aten._softmax.default(" in text
    assert "torch.ops.aten.masked_fill.Scalar(" in text and 'float("-inf"))' in text
    assert 'torch.ops.aten.ones.default([8, 8], dtype=torch.bool, device=torch.device("cpu"), pin_memory=False)' in text
    assert "torch.ops.aten.mm.default(" in format_graph(backward)
    sdpa_forward, _ = MODEL_GRAPHS["llama_block_sdpa"]
    assert "scaled_dot_product" in format_graph(sdpa_forward)


def test_round_trip_of_fp4_op_graph():
    gm, inputs = quartet_linear_graph()
    text = format_graph(gm)
    for op in ("quest_quantize", "sr_quantize", "requantize_sr", "mxfp4_gemm", "bias_grad"):
        assert f"torch.ops.fp4.{op}.default(" in text
    assert '"(u8[8, 32], u8[8, 2], u8[8, 8])" = torch.ops.fp4.quest_quantize.default(' in text
    assert_round_trip(gm, inputs)


def test_printed_form_of_a_small_graph():
    def f(x, w):
        return torch.relu(x @ w.t()).to(torch.bfloat16), x.sum(dim=[0], keepdim=True)

    gm = make_fx(f)(torch.randn(8, 16), torch.randn(32, 16))
    assert format_graph(gm, produced_by="dce") == (
        "# Constructed by dce\n"
        'def graph(x_1: "f32[8, 16]", w_1: "f32[32, 16]"):\n'
        '    t: "f32[16, 32]" = torch.ops.aten.t.default(w_1)\n'
        '    mm: "f32[8, 32]" = torch.ops.aten.mm.default(x_1, t)\n'
        '    relu: "f32[8, 32]" = torch.ops.aten.relu.default(mm)\n'
        '    _to_copy: "bf16[8, 32]" = torch.ops.aten._to_copy.default(relu, dtype=torch.bfloat16)\n'
        '    sum_1: "f32[1, 16]" = torch.ops.aten.sum.dim_IntList(x_1, [0], True)\n'
        "    return (_to_copy, sum_1)\n"
    )


LITERALS = (Path(__file__).parent / "data" / "literals.fx").read_text()


def test_literals_round_trip_exactly():
    gm, header = parse_graph(LITERALS)
    assert header == "hand"
    assert format_graph(gm, produced_by=header) == LITERALS
    full = next(node for node in gm.graph.nodes if node.name == "full")
    assert full.args[1] == float("inf") and full.kwargs["dtype"] is torch.float16
    assert full.kwargs["device"] == torch.device("cpu") and full.kwargs["layout"] is torch.strided
    assert next(n for n in gm.graph.nodes if n.name == "cuda").meta["val"].device == torch.device("cuda", 0)


def test_output_is_deterministic():
    forward, _ = MODEL_GRAPHS["llama_block_sdpa"]
    assert format_graph(forward) == format_graph(forward)
    assert format_graph(parse_graph(format_graph(forward))[0]) == format_graph(forward)


def test_several_graphs_in_one_file_and_untyped_lines():
    text = (
        "# Constructed by capture\n"
        'def first(x: "f32[4]"):\n'
        "    y = torch.ops.aten.relu.default(x)\n"
        "    return (y,)\n"
        "\n"
        "# a comment between cases\n"
        'def second(x: "bf16[2, 32]"):\n'
        '    y: "?" = torch.ops.aten.neg.default(x)\n'
        "    return y\n"
    )
    first, second = parse_graphs(text)
    assert (first.name, first.produced_by) == ("first", "capture")
    assert (second.name, second.produced_by) == ("second", None)
    assert format_graph(first.graph_module).splitlines()[2] == '    y: "f32[4]" = torch.ops.aten.relu.default(x)'
    assert format_graph(second.graph_module).splitlines()[1:] == [
        'def second(x: "bf16[2, 32]"):',
        '    y: "bf16[2, 32]" = torch.ops.aten.neg.default(x)',
        "    return y",
    ]
    with pytest.raises(GraphParseError, match="expected one graph, found 2"):
        parse_graph(text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '    y: "f32[4, 9]" = torch.ops.aten.relu.default(x)',
            r"line 3: 'y' is declared f32\[4, 9\] but computes f32\[4, 8\]",
        ),
        ('    y: "bf16[4, 8]" = torch.ops.aten.relu.default(x)', r"line 3: .*declared bf16\[4, 8\] but computes f32"),
        ('    y: "(f32[4, 8],)" = torch.ops.aten.relu.default(x)', r"line 3: .*declared \(f32\[4, 8\],\)"),
        ('    y: "f32[s0, 8]" = torch.ops.aten.relu.default(x)', r"line 3: dimension 's0'.*only static shapes"),
        ('    y: "q7[4]" = torch.ops.aten.relu.default(x)', r"line 3: unknown dtype 'q7'"),
        ('    y: "f32[4, 8]" = torch.ops.aten.no_such_op.default(x)', r"line 3: 'torch.ops.aten.no_such_op'"),
        ('    y: "f32[4, 8]" = torch.ops.aten(x)', r"line 3: .*not an op overload"),
        ('    y: "f32[4, 8]" = torch.ops.aten.relu.default(z)', r"line 3: 'z' is used before it is defined"),
        ('    y: "f32[4, 8]" = torch.ops.aten.mm.default(x, x)', r"line 3: 'y': .*fails on its inputs"),
        ('    y: "f32[4, 8]" = os.system("true")', r"line 3: unknown name 'os.system'"),
        (
            '    y: "f32[4, 8]" = torch.ops.aten.relu.default(x)\n    y: "f32[4, 8]" = torch.ops.aten.relu.default(x)',
            r"line 4: 'y' is defined twice",
        ),
        ('    y: "f32[4, 8]" = torch.ops.aten.relu.default(x)', None),
    ],
)
def test_parse_errors_name_the_line(body, message):
    text = f'# Constructed by capture\ndef graph(x: "f32[4, 8]"):\n{body}\n    return (y,)\n'
    if message is None:
        parse_graph(text)
        return
    with pytest.raises(GraphParseError, match=message):
        parse_graph(text)


def test_structural_errors():
    with pytest.raises(GraphParseError, match="no return"):
        parse_graph('def graph(x: "f32[4]"):\n    y = torch.ops.aten.relu.default(x)\n')
    with pytest.raises(GraphParseError, match="needs a type"):
        parse_graph("def graph(x):\n    return x\n")
    with pytest.raises(GraphParseError, match="must be a tensor"):
        parse_graph('def graph(x: "int"):\n    return x\n')
    with pytest.raises(GraphParseError, match="line 1: not valid graph text"):
        parse_graph("def graph(:\n")
    with pytest.raises(GraphParseError, match="only `def` blocks"):
        parse_graph("import os\n")
    with pytest.raises(GraphParseError, match="no graph"):
        parse_graph("# nothing here\n")


def test_symbolic_shapes_are_rejected_by_the_printer():
    gm = make_fx(lambda x: x * 2, tracing_mode="symbolic")(torch.randn(4, 8))
    with pytest.raises(UnsupportedGraphError, match="only static shapes"):
        format_graph(gm)


def test_parse_type():
    from fp4.parser import TensorType

    assert parse_type("f32[8, 32]") == TensorType(torch.float32, (8, 32), torch.device("cpu"))
    assert parse_type("i64[]") == TensorType(torch.int64, (), torch.device("cpu"))
    assert parse_type("cuda:1 bf16[2]") == TensorType(torch.bfloat16, (2,), torch.device("cuda", 1))
    assert parse_type("(u8[8, 8], u8[8, 1], None)") == (
        TensorType(torch.uint8, (8, 8), torch.device("cpu")),
        TensorType(torch.uint8, (8, 1), torch.device("cpu")),
        None,
    )
    assert parse_type("[f8e4m3[4], int]") == [TensorType(torch.float8_e4m3fn, (4,), torch.device("cpu")), int]
