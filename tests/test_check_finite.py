"""FP4_CHECK_FINITE=1: every fp4 op call raises, naming the op, when it makes a non-finite value from finite inputs.

The setting is read when ``fp4`` is imported, so each case runs in its own interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = r"""
import torch, fp4
from fp4.runtime import ops

codes = torch.full((2, 16), 0x22, dtype=torch.uint8)
scales = torch.full((2, 1), 127, dtype=torch.uint8)
assert torch.equal(ops.dequantize(codes, scales, 1.0, torch.float32), torch.ones(2, 32))
scales[1, 0] = 255  # an E8M0 NaN scale byte: the op makes NaN out of finite (integer) inputs
try:
    ops.dequantize(codes, scales, 1.0, torch.float32)
    print("made: returned")
except FloatingPointError as error:
    print("made:", error)
# a NaN that came in (a tensor or a number) is not the op's doing: it passes through
x = torch.randn(4, 32)
x[0, 0] = float("nan")
ops.quest_quantize(x, True)
scales[1, 0] = 127
assert ops.dequantize(codes, scales, float("inf"), torch.float32).isinf().all()
print("passed through")
# a compiled training step with every op checked: the check changes nothing
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)).to(torch.bfloat16)
compiled = torch.compile(model, backend="fp4", options={"inductor": False})
compiled(torch.randn(32, 64, dtype=torch.bfloat16)).float().square().mean().backward()
assert all(torch.isfinite(p.grad).all() for p in model.parameters())
print("compiled step")
"""


def _run(check: bool) -> str:
    env = dict(os.environ)
    env.pop("FP4_CHECK_FINITE", None)
    if check:
        env["FP4_CHECK_FINITE"] = "1"
    result = subprocess.run([sys.executable, "-c", CASES], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("check", [True, False])
def test_check_finite_names_the_op_that_made_the_value(check):
    out = _run(check)
    assert "passed through" in out and "compiled step" in out
    if check:
        assert "made: fp4::dequantize returned non-finite values (output 0) from finite inputs" in out
        assert "tensors (2, 16) uint8, (2, 1) uint8; other arguments [1.0, torch.float32]" in out
    else:
        assert "made: returned" in out
