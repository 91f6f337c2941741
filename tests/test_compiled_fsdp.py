"""Weights gathered inside the graph (SimpleFSDP, DTensor parameters, compiled FSDP) reach quartet-linear.

A sharded parameter then reaches its GEMM through ``all_gather_into_tensor``
+ ``wait_tensor`` (and casts and views); ``fx_tools.trace_weight`` looks
through them, so the layer is rewritten on the gathered weight.  A weight that
the graph computes on after the gather is not rewritten, and the report says
why (tests/lit/quartet-linear.fx checks the rewritten graphs).
"""

from __future__ import annotations

import re
from pathlib import Path

from fp4.options import Options
from fp4.parser import parse_graphs
from fp4.passes.registry import PassContext, parse_pipeline

LIT = Path(__file__).parent / "lit" / "quartet-linear.fx"


def _run(name: str):
    (parsed,) = [graph for graph in parse_graphs(LIT.read_text()) if graph.name == name]
    ctx = PassContext(options=Options())
    (quartet_linear,) = parse_pipeline("quartet-linear")
    gm = quartet_linear.apply(parsed.graph_module, ctx).graph_module
    return gm, ctx.records["linear_layers"]


def test_gathered_weight_is_rewritten():
    gm, (layer,) = _run("gathered_weight")
    assert layer.status == "rewritten", layer.reason
    assert set(layer.gemms) == {"forward", "input_grad", "weight_grad"}
    assert (layer.in_features, layer.out_features) == (64, 32)  # the gathered weight, not the shard
    code = gm.code
    assert "all_gather_into_tensor" in code and "reduce_scatter_tensor" in code
    assert "aten.mm" not in code


def test_weight_computed_after_the_gather_is_reported():
    gm, (layer,) = _run("gathered_weight_computed")
    assert layer.status == "skipped"
    assert re.search(r"weight operand is computed by aten\.neg\.default in the graph", layer.reason)
    assert "fp4" not in gm.code
