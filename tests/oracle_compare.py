"""Run a model and its eager-oracle twin through one training step and compare them bit for bit."""

from __future__ import annotations

import copy

import torch
from fp4.backend import configure
from fp4.runtime.oracle import quartetize

ORACLE_OPTIONS = ("recipe", "keep_last_layers", "include", "exclude", "rank_seeds")
"""The backend options that also choose what the oracle computes (the rest only concern compilation)."""


def run(model, make_inputs, loss_fn=None, seed=1234):
    """Outputs and parameter/input gradients of one forward+backward under ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    inputs = make_inputs()
    output = model(*inputs)
    output = getattr(output, "logits", output)
    loss = loss_fn(output) if loss_fn else output.float().square().mean()
    loss.backward()
    grads = {name.removeprefix("_orig_mod."): p.grad for name, p in model.named_parameters()}
    input_grads = [x.grad for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
    return output.detach(), grads, input_grads


def compare_with_oracle(model, make_inputs, loss_fn=None, **options):
    """Run the oracle and the compiled copy; return (oracle results, compiled results, backend)."""
    backend = configure(inductor=False, **options)
    oracle_options = {k: v for k, v in options.items() if k in ORACLE_OPTIONS}
    oracle = run(quartetize(copy.deepcopy(model), oracle_options), make_inputs, loss_fn)
    compiled = run(torch.compile(copy.deepcopy(model), backend=backend), make_inputs, loss_fn)
    return oracle, compiled, backend


def assert_bitwise(oracle, compiled):
    (out_a, grads_a, inputs_a), (out_b, grads_b, inputs_b) = oracle, compiled
    assert torch.equal(out_a, out_b), f"outputs differ by {(out_a.float() - out_b.float()).abs().max()}"
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        a, b = grads_a[name], grads_b[name]
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), f"gradient of {name} differs by {(a.float() - b.float()).abs().max()}"
    assert len(inputs_a) == len(inputs_b)
    for a, b in zip(inputs_a, inputs_b):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b), "input gradient differs"
