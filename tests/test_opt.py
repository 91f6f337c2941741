"""fp4-opt: the command-line driver of the pass pipeline (in process, plus one real subprocess run)."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from fp4 import opt
from fp4.passes import GraphPass, PassResult, register_pass

GRAPH = """# Constructed by capture
def graph(x: "f32[8, 32]"):
    neg: "f32[8, 32]" = torch.ops.aten.neg.default(x)
    relu: "f32[8, 32]" = torch.ops.aten.relu.default(x)
    return (relu,)
"""


@register_pass
@dataclass(frozen=True)
class RequireTarget(GraphPass):
    """Test pass: fails unless the context's target is ``expected``."""

    name = "test-require-target"
    expected: str = "cpu"

    def apply(self, gm, ctx):
        if ctx.target.name != self.expected:
            raise ValueError(f"target is {ctx.target.name}, expected {self.expected}")
        return PassResult(gm, False)


def run_main(capsys, *argv, stdin_text=None, monkeypatch=None):
    if stdin_text is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
    code = opt.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def graph_file(tmp_path):
    path = tmp_path / "graph.fx"
    path.write_text(GRAPH)
    return path


def test_no_passes_prints_the_input_back(capsys, graph_file):
    assert run_main(capsys, str(graph_file)) == (0, GRAPH, "")


def test_pipeline_output_names_the_last_pass(capsys, graph_file):
    code, out, err = run_main(capsys, str(graph_file), "-p", "dce")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "# Constructed by dce"
    assert "neg" not in out and "relu" in out


def test_stdin_and_print_stages(capsys, monkeypatch):
    code, out, _ = run_main(capsys, "-", "-p", "dce,dce", "--print-stages", stdin_text=GRAPH, monkeypatch=monkeypatch)
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("# Constructed by")]
    assert headers == ["# Constructed by capture", "# Constructed by dce", "# Constructed by dce"]
    assert out.startswith(GRAPH)


def test_target_reaches_the_passes(capsys, graph_file):
    assert run_main(capsys, str(graph_file), "-p", "test-require-target{expected=sm_100}", "--target", "sm_100")[0] == 0
    assert (
        run_main(capsys, str(graph_file), "-p", "test-require-target{expected=sm_120}", "--target", "sm_120a")[0] == 0
    )
    code, _, err = run_main(capsys, str(graph_file), "-p", "test-require-target{expected=sm_90}", "--target", "cpu")
    assert code == 1
    assert "graph 'graph': error in pass 'test-require-target{expected=sm_90}' after passes []" in err
    assert "target is cpu, expected sm_90" in err


def test_list_passes(capsys):
    code, out, _ = run_main(capsys, "--list-passes")
    assert code == 0
    assert any(line.startswith("dce ") and "never used" in line for line in out.splitlines())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}"], "No such file or directory"),
        (["{file}", "-p", "no-such-pass"], "unknown pass 'no-such-pass'"),
        (["{file}", "-p", "dce{x=1}"], "pass 'dce' has no option 'x'"),
        (["{file}", "--target", "tpu"], "unknown target 'tpu'"),
        (["{bad}"], "bad.fx: line 2: 'y' is used before it is defined"),
        ([], "no input file"),
    ],
)
def test_errors_go_to_stderr_with_exit_code_1(capsys, tmp_path, graph_file, argv, message):
    bad = tmp_path / "bad.fx"
    bad.write_text('def graph(x: "f32[2]"):\n    return y\n')
    names = {"{missing}": str(tmp_path / "missing.fx"), "{file}": str(graph_file), "{bad}": str(bad)}
    code, out, err = run_main(capsys, *[names.get(arg, arg) for arg in argv])
    assert code == 1 and out == ""
    assert err.startswith("fp4-opt: error: ") and message in err


def test_runs_as_a_module_in_a_subprocess(tmp_path):
    """What the lit tests do: ``python -m fp4.opt`` reading stdin, exit codes included."""
    result = subprocess.run(
        [sys.executable, "-m", "fp4.opt", "-", "-p", "dce"], input=GRAPH, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Constructed by dce\n")
    failed = subprocess.run(
        [sys.executable, "-m", "fp4.opt", str(Path(tmp_path) / "missing.fx")], capture_output=True, text=True
    )
    assert failed.returncode == 1 and "fp4-opt: error:" in failed.stderr
