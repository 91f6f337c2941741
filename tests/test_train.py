"""Training with the fp4 backend: the loss goes down, and the example script runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from fp4.models import LlamaConfig, TinyLlama, batches, corpus_text, corpus_tokens, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_builtin_corpus_is_bytes_of_text():
    text = corpus_text()
    assert len(text.encode()) > 4000
    tokens = corpus_tokens()
    assert tokens.dtype == torch.long and int(tokens.max()) < 256
    inputs, targets = next(batches(tokens, 3, 16, torch.Generator().manual_seed(0)))
    assert inputs.shape == targets.shape == (3, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_loss_decreases_over_20_adamw_steps():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyLlama(LlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=128)).to(torch.bfloat16)
    result = train(model, "fp4", steps=20, batch_size=4, seq_len=32, lr=3e-3, compile_options={"inductor": False})
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert last < first - 0.5, result.losses


def test_example_train_script_runs():
    result = subprocess.run(
        [
            sys.executable, os.path.join(REPO, "examples", "train.py"), "--steps", "3", "--layers", "1", "--dim", "64",
            "--batch", "2", "--seq", "32", "--no-inductor",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "step        fp4      bf16" in out
    assert "FP4 forward input_grad weight_grad" in out and "lm_head" in out
    assert "mean of last 5 losses" in out


@pytest.mark.parametrize("flag", ["--steps", "--batch", "--seq", "--layers", "--dim"])
def test_train_refuses_sizes_below_one(flag, capsys):
    """``fp4 train --steps 0`` divided by zero after training nothing; sizes below 1 are refused up front."""
    from fp4 import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["train", flag, "0"])
    assert stop.value.code == 2
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_compare_with_bf16_needs_a_step():
    from fp4.models import compare_with_bf16

    with pytest.raises(ValueError, match="at least one step"):
        compare_with_bf16(steps=0)
