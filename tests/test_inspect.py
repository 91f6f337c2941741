"""fp4.inspect, the report, the SVG picture, dump directories and the ``fp4`` command line."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fp4 import report as report_lib
from fp4.inspect import inspect_model
from fp4.options import DEFAULT_PIPELINE
from fp4.parser import parse_graph
from fp4.svg import layer_region, layout, region_layers, render_svg, rewritten_region


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.head = nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return self.head(self.down(F.gelu(self.up(x))))


def _inspect(**options):
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16, requires_grad=True)
    return model, inspect_model(model, x, inductor=False, **options)


def test_inspect_reports_layers_stages_and_saved_bytes():
    model, result = _inspect()
    assert model.up.weight.grad is None, "inspect works on a copy"
    assert result.uncaptured == [], "every linear layer of the model is in a compiled graph"
    assert [(layer.name, layer.status) for layer in result.layers] == [
        ("up", "rewritten"),
        ("down", "rewritten"),
        ("head", "skipped"),
    ]
    assert "excluded by pattern 'head'" in result.layers[2].reason
    summary = result.summary()
    assert "up" in summary and "FP4 forward input_grad weight_grad bias_grad" in summary
    assert "skipped: excluded by pattern 'head'" in summary
    assert "inputs of the rewritten layers" in summary
    names = [name for name, _ in result.stages()]
    assert names == ["input", *DEFAULT_PIPELINE]
    assert result.stage("input").startswith("# Constructed by capture")
    after = result.stage("quartet-linear")
    assert after.startswith("# Constructed by quartet-linear") and "fp4.mxfp4_gemm" in after
    assert "fp4.mxfp4_gemm" not in result.stage("input")
    # Every stage is a graph the parser reads back.
    for _, text in result.stages():
        parse_graph(text)
    assert result.report.saved_bytes_after < result.report.saved_bytes_before
    assert "fp4.draw_seeds" in result.report.forward_graph


def test_svg_is_a_picture_of_the_rewritten_layer():
    _, result = _inspect()
    svg = result.svg()
    root = ElementTree.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = " ".join(element.text or "" for element in root.iter() if element.tag.endswith("text"))
    assert "quest_quantize" in texts and "mxfp4_gemm" in texts and "sr_quantize" in texts
    assert "bias" in texts and "rot^-1" in texts  # fused epilogues are shown on the GEMM boxes
    assert "up" in texts
    whole = ElementTree.fromstring(result.svg("*"))
    assert len(list(whole.iter("{http://www.w3.org/2000/svg}rect"))) > len(
        list(root.iter("{http://www.w3.org/2000/svg}rect"))
    )


def test_region_and_layout_from_a_written_graph():
    gm, _ = parse_graph(
        textwrap.dedent(
            """
            def graph(x: "bf16[16, 64]", w: "bf16[32, 64]"):
                qx: "(u8[16, 32], u8[16, 2], u8[16, 8])" = torch.ops.fp4.quest_quantize.default(x, True)
                xc: "u8[16, 32]" = operator.getitem(qx, 0)
                xs: "u8[16, 2]" = operator.getitem(qx, 1)
                qw: "(u8[32, 32], u8[32, 2], u8[32, 8])" = torch.ops.fp4.quest_quantize.default(w, True)
                wc: "u8[32, 32]" = operator.getitem(qw, 0)
                ws: "u8[32, 2]" = operator.getitem(qw, 1)
                y: "bf16[16, 32]" = torch.ops.fp4.mxfp4_gemm.default(
                    xc, xs, wc, ws, 1.0, None, 'gelu', None, None, None, False, torch.bfloat16
                )
                neg: "bf16[16, 32]" = torch.ops.aten.neg.default(y)
                return (neg,)
            """
        )
    )
    region = rewritten_region(gm)
    assert set(region.nodes) == {"x", "w", "qx", "qw", "y", "neg"}  # getitems folded into their producer
    assert nx.is_directed_acyclic_graph(region)
    assert set(region.edges) == {("x", "qx"), ("w", "qw"), ("qx", "y"), ("qw", "y"), ("y", "neg")}
    positions = layout(region)
    assert positions["x"][1] < positions["qx"][1] < positions["y"][1] < positions["neg"][1]
    assert region.nodes["y"]["detail"] == "gelu -> bfloat16"
    assert region_layers(region) == []  # a written graph names no layers
    with pytest.raises(KeyError):
        layer_region(region, "up")
    ElementTree.fromstring(render_svg(region))


def test_dump_dir_keeps_every_stage(tmp_path):
    _, result = _inspect(dump_dir=str(tmp_path))
    (directory,) = list(tmp_path.iterdir())
    files = sorted(p.name for p in directory.iterdir())
    assert "00-input.fx" in files and "01-quartet-linear.fx" in files and f"{len(DEFAULT_PIPELINE):02d}-dce.fx" in files
    assert {"forward.fx", "backward.fx", "summary.txt"} <= set(files)
    assert [f for f in files if f.endswith(".svg")] == ["rewritten-00-up.svg", "rewritten-01-down.svg"]
    assert (directory / "01-quartet-linear.fx").read_text() == result.stage("quartet-linear")
    written = result.write(str(tmp_path / "again"))
    assert len(written) == len(files)


def test_reports_are_collected_and_published():
    with report_lib.collect() as collected:
        _inspect()
    assert len(collected) == 1 and collected[0] in report_lib.reports()
    assert collected[0].kind == "training"


def _fp4(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fp4.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_cli_inspect_runs_a_script(tmp_path):
    script = tmp_path / "my_model.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import torch
            model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
            model = torch.compile(model.to(torch.bfloat16), backend="fp4")
            x = torch.randn(int(sys.argv[1]), 64, dtype=torch.bfloat16, requires_grad=True)
            model(x).float().sum().backward()
            """
        )
    )
    dump, svg = tmp_path / "dump", tmp_path / "layer.svg"
    # Options come before the script; what follows the script is its own argv.
    result = _fp4("inspect", "--no-inductor", "--dump-dir", str(dump), "--svg", str(svg), "--stages", str(script), "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0  " in result.stdout and "FP4 forward input_grad weight_grad bias_grad" in result.stdout
    assert "# Constructed by quartet-linear" in result.stdout
    ElementTree.parse(svg)
    assert any(dump.glob("graph_*/01-quartet-linear.fx"))


def test_cli_help_and_unknown_command():
    from fp4 import cli

    lazy = subprocess.run(
        [sys.executable, "-c", "import sys, fp4.cli; print('fp4.bench' in sys.modules)"], capture_output=True, text=True
    )
    assert lazy.stdout.strip() == "False"  # fp4.bench is imported by the bench subcommand only
    assert cli.main(["--help"]) == 0
    assert cli.main(["frobnicate"]) == 2
    assert set(cli.COMMANDS) == {"train", "inspect", "bench", "study", "tune"}


COMPILING_SCRIPT = """
import sys
import torch

def main():
    model = torch.compile(torch.nn.Sequential(torch.nn.Linear(64, 32)), backend="fp4", options={"inductor": False})
    model(torch.randn(8, 64, requires_grad=True)).sum().backward()
    print("trained")
    {ending}

if __name__ == "__main__":
    {call}
"""


def _script(tmp_path, ending="return 0", call="sys.exit(main())"):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(COMPILING_SCRIPT).replace("{ending}", ending).replace("{call}", call))
    return str(script)


@pytest.mark.parametrize("code", [0, 3])
def test_cli_inspect_reports_a_script_that_calls_sys_exit(tmp_path, capsys, code):
    """``sys.exit(main())`` must not swallow the report; fp4 inspect exits with the script's status."""
    from fp4 import cli

    assert cli.main(["inspect", _script(tmp_path, ending=f"return {code}")]) == code
    out = capsys.readouterr().out
    assert "trained" in out and re.search(r"fp4 graph \d+ \(training", out)
    assert "FP4 forward input_grad weight_grad" in out


def test_cli_inspect_keeps_the_reports_of_a_script_that_raises(tmp_path, capsys):
    from fp4 import cli

    script = _script(tmp_path, ending="raise RuntimeError('after the first step')")
    assert cli.main(["inspect", script]) == 1
    captured = capsys.readouterr()
    assert re.search(r"fp4 graph \d+ \(training", captured.out) and "FP4 forward" in captured.out
    assert "RuntimeError: after the first step" in captured.err
    assert "raised RuntimeError: after the first step" in captured.err


def test_cli_inspect_of_a_script_that_raises_before_compiling(tmp_path, capsys):
    from fp4 import cli

    script = tmp_path / "early.py"
    script.write_text("raise KeyError('config')\n")
    assert cli.main(["inspect", str(script)]) == 1
    err = capsys.readouterr().err
    assert "KeyError: 'config'" in err and "nothing was compiled" in err and "raised KeyError" in err


@pytest.mark.parametrize("args", [["missing.py"], ["-m", "no_such_module_for_fp4"]])
def test_cli_inspect_of_a_missing_script_is_a_clear_error(tmp_path, capsys, args):
    from fp4 import cli

    args = [str(tmp_path / a) if a.endswith(".py") else a for a in args]
    assert cli.main(["inspect", *args]) == 2
    err = capsys.readouterr().err
    assert re.match(r"fp4 inspect: error: no (such script|module named)", err) and "Traceback" not in err


def test_sys_exit_with_a_message(tmp_path, capsys):
    from fp4.inspect import inspect_script

    result = inspect_script(_script(tmp_path, ending="sys.exit('bad config')", call="main()"))
    assert result.exit_code == 1 and result.error is None and len(result.reports) == 1
    assert "bad config" in capsys.readouterr().err
