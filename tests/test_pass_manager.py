"""PassManager: stages, counters, verification after each pass, and errors that name the pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch
from fp4.parser import parse_graph
from fp4.passes import GraphPass, PassContext, PassResult, get_pass, parse_pipeline, register_pass
from fp4.pipeline import PassError, PassManager, verify_graph
from fp4.printer import format_graph
from fp4.target import Target

DEAD_CODE = """# Constructed by capture
def graph(x: "f32[8, 32]", w: "f32[16, 32]"):
    t: "f32[32, 16]" = torch.ops.aten.t.default(w)
    mm: "f32[8, 16]" = torch.ops.aten.mm.default(x, t)
    unused: "f32[8, 32]" = torch.ops.aten.neg.default(x)
    also_unused: "f32[8, 32]" = torch.ops.aten.relu.default(unused)
    relu: "f32[8, 16]" = torch.ops.aten.relu.default(mm)
    return (relu,)
"""


def _first(gm, name):
    return next(node for node in gm.graph.nodes if node.name == name)


@register_pass
@dataclass(frozen=True)
class ReluToNeg(GraphPass):
    """Test pass: rewrites relu to neg, optionally forgetting or corrupting meta['val']."""

    name = "test-relu-to-neg"
    drop_meta: bool = False
    wrong_meta: bool = False

    def apply(self, gm, ctx):
        modified = False
        for node in list(gm.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)):
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(torch.ops.aten.neg.default, node.args)
            if not self.drop_meta:
                new.meta["val"] = node.meta["val"]
            if self.wrong_meta:
                new.meta["val"] = node.meta["val"].to(torch.bfloat16)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            ctx.counters["test-relu-to-neg.rewritten"] += 1
            modified = True
        gm.recompile()
        return PassResult(gm, modified)


@register_pass
@dataclass(frozen=True)
class Explode(GraphPass):
    name = "test-explode"

    def apply(self, gm, ctx):
        raise RuntimeError("boom")


@register_pass
@dataclass(frozen=True)
class BreakOrder(GraphPass):
    """Test pass: moves the output's producer after the output (the graph no longer lints)."""

    name = "test-break-order"

    def apply(self, gm, ctx):
        output = gm.graph.find_nodes(op="output")[0]
        mm = _first(gm, "mm")
        output.append(mm)
        return PassResult(gm, True)


def test_stages_and_counters():
    gm, _ = parse_graph(DEAD_CODE)
    ctx = PassContext(target=Target.parse("sm_90"))
    manager = PassManager("dce,test-relu-to-neg", ctx)
    result = manager.run(gm)
    assert [spec for spec, _ in manager.stages] == ["input", "dce", "test-relu-to-neg"]
    assert manager.stages[0][1] == DEAD_CODE
    assert manager.stages[1][1].startswith("# Constructed by dce\n")
    assert "unused" not in manager.stages[1][1] and "relu" in manager.stages[1][1]
    assert "torch.ops.aten.neg.default(mm)" in manager.stages[2][1]
    assert manager.stages[2][1] == format_graph(result, produced_by="test-relu-to-neg")
    assert ctx.counters["dce.removed"] == 2
    assert ctx.counters["test-relu-to-neg.rewritten"] == 1
    assert ctx.counters["dce.runs"] == 1 and ctx.counters["dce.modified"] == 1
    x, w = torch.randn(8, 32), torch.randn(16, 32)
    torch.testing.assert_close(result(x, w)[0], -(x @ w.t()))


def test_pass_options_appear_in_the_stage_spec():
    gm, _ = parse_graph(DEAD_CODE)
    manager = PassManager(parse_pipeline("test-relu-to-neg{drop-meta=false}, dce"), verify=True)
    manager.run(gm)
    assert [spec for spec, _ in manager.stages] == ["input", "test-relu-to-neg", "dce"]
    assert ReluToNeg(wrong_meta=True).spec() == "test-relu-to-neg{wrong_meta=true}"


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            "dce,test-relu-to-neg{drop_meta=true}",
            r"error in pass 'test-relu-to-neg\{drop_meta=true\}' after passes \['dce'\]: node 'neg\w*' .*no meta",
        ),
        (
            "dce,dce,test-relu-to-neg{wrong_meta=true}",
            r"after passes \['dce', 'dce'\]: node 'neg\w*': meta\['val'\] says bf16\[8, 16\] but .* computes f32",
        ),
        ("test-explode", r"error in pass 'test-explode' after passes \[\]: RuntimeError: boom"),
        ("dce,test-break-order", r"error in pass 'test-break-order' after passes \['dce'\]: graph.lint\(\) failed"),
    ],
)  # fmt: skip
def test_failures_name_the_pass_and_its_predecessors(pipeline, message):
    gm, _ = parse_graph(DEAD_CODE)
    with pytest.raises(PassError, match=message):
        PassManager(pipeline).run(gm)


def test_verification_can_be_turned_off():
    gm, _ = parse_graph(DEAD_CODE)
    manager = PassManager("test-relu-to-neg{drop_meta=true}", verify=False)
    result = manager.run(gm)
    assert '"?" = torch.ops.aten.neg.default(mm)' in manager.stages[-1][1]
    with pytest.raises(Exception, match="has no meta"):
        verify_graph(result)


def test_invalid_input_graph_is_reported_as_such():
    gm, _ = parse_graph(DEAD_CODE)
    del _first(gm, "mm").meta["val"]
    with pytest.raises(PassError, match=r"error in pass 'input' after passes \[\]: the input graph is invalid"):
        PassManager("dce").run(gm)


def test_verifier_catches_stale_shapes():
    gm, _ = parse_graph(DEAD_CODE)
    node = _first(gm, "t")
    node.meta["val"] = node.meta["val"].t()
    with pytest.raises(ValueError, match=r"node 't': meta\['val'\] says f32\[16, 32\] but .* computes f32\[32, 16\]"):
        verify_graph(gm)


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown pass 'no-such-pass'"):
        get_pass("no-such-pass")
    with pytest.raises(ValueError, match="has no option 'colour'"):
        parse_pipeline("test-relu-to-neg{colour=red}")
    with pytest.raises(ValueError, match="option drop_meta='maybe' is not valid; it takes true or false"):
        parse_pipeline("test-relu-to-neg{drop_meta=maybe}")
    with pytest.raises(ValueError, match="cannot parse pass pipeline"):
        parse_pipeline("dce;dce")


@register_pass
@dataclass(frozen=True)
class Typed(GraphPass):
    """Test pass: one option of every supported type."""

    name = "test-typed"
    flag: bool = False
    count: int = 1
    ratio: float = 0.5
    mode: Literal["fast", "exact"] = "exact"
    colour: str | None = field(default=None, metadata={"choices": ("red", "blue")})
    words: tuple[str, ...] = ()

    def apply(self, gm, ctx):
        return PassResult(gm, False)


def test_pass_options_parse_to_their_annotated_types():
    (typed,) = parse_pipeline("test-typed{flag=True,count=3,ratio=0.25,mode=FAST,colour=Blue,words=a:b}")
    assert typed == Typed(flag=True, count=3, ratio=0.25, mode="fast", colour="blue", words=("a", "b"))
    assert typed.flag is True and type(typed.count) is int
    assert parse_pipeline(typed.spec()) == [typed]
    assert parse_pipeline("test-typed{flag=FALSE}")[0].flag is False
    assert parse_pipeline("test-typed")[0] == Typed()


@pytest.mark.parametrize(
    "text,message",
    [
        ("test-typed{flag=yes}", "pass 'test-typed': option flag='yes' is not valid; it takes true or false"),
        ("test-typed{count=2.5}", "option count='2.5' is not valid; it takes an integer"),
        ("test-typed{ratio=half}", "option ratio='half' is not valid; it takes a number"),
        ("test-typed{mode=slow}", "option mode='slow' is not valid; it takes one of fast, exact"),
        ("test-typed{colour=green}", "option colour='green' is not valid; it takes one of red, blue"),
        ("test-typed{flag}", "option flag needs a value"),
        ("test-typed{count=1,count=2}", "option count is given twice"),
    ],
)
def test_bad_pass_option_values_are_refused(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_pipeline(text)


def test_pass_options_given_directly_are_checked():
    with pytest.raises(ValueError, match=r"option flag='true' is not valid; it takes true or false \(a bool\)"):
        Typed(flag="true")
    with pytest.raises(ValueError, match="option count=True is not valid"):
        Typed(count=True)
    with pytest.raises(ValueError, match="option mode='slow'"):
        Typed(mode="slow")
    assert Typed(ratio=1).ratio == 1 and Typed(colour=None).colour is None


def test_quartet_linear_options_are_typed():
    quartet = get_pass("quartet-linear")
    assert parse_pipeline("quartet-linear{rotate=True}") == [quartet(rotate=True)]
    assert parse_pipeline("quartet-linear{rotate=False,rounding=RTN}") == [quartet(rotate=False, rounding="rtn")]
    assert quartet().rotate is None and quartet().rounding is None  # unset: the backend options decide
    with pytest.raises(ValueError, match="option rounding='nearest' is not valid; it takes one of sr, rtn"):
        parse_pipeline("quartet-linear{rounding=nearest}")
