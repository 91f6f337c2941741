"""The fp4 backend under FSDP2 (``fully_shard``), on two gloo ranks on the CPU, bit for bit against the oracle.

The model has its own ``forward`` (``fp4.models.TinyLlama``: two decoder
blocks of seven linear layers).  Every scenario trains it with
``inductor=False`` and compares every gradient (``.full_tensor()``) with the
eager oracle's averaged across the ranks (tests/distributed_harness.py):

* the torchtitan recipe: each block compiled, then ``fully_shard`` per block, then ``fully_shard(model)``;
* ``fully_shard`` first, then each block compiled; the whole model compiled after ``fully_shard``;
* a bf16 ``MixedPrecisionPolicy`` (fp32 reduce), against a bf16 oracle.

Under FSDP the weights' FP4 codes are not saved for the backward (the
``requantize_weights_in_backward`` option resolves to True), and the ranks
are started once for the whole module.
"""

from __future__ import annotations

import pytest
import torch
from distributed_harness import (
    BLOCK_LAYERS,
    DISTRIBUTED_MARKS,
    assert_matches_oracle,
    check,
    oracle_of,
    report_facts,
    run_scenarios,
    tiny_llama,
    train_against_oracle,
)

pytestmark = DISTRIBUTED_MARKS

LINEARS_PER_BLOCK = 7
SEED_BYTES = 8  # one int64 seed per layer


def _fsdp():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    return fully_shard, MixedPrecisionPolicy


def _torchtitan(model, backend, mp_policy=None):
    """Compile each block with the fp4 backend, then shard each block, then the root (torchtitan's order)."""
    fully_shard, _ = _fsdp()
    kwargs = {"mp_policy": mp_policy} if mp_policy is not None else {}
    for block in model.layers:
        block.compile(backend=backend)
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _run(rank, model, oracle, backend, steps=2):
    outcome = train_against_oracle(rank, model, lambda tokens, targets: model(tokens, targets), oracle, steps)
    outcome["reports"] = report_facts(backend.reports)
    return outcome


# ----------------------------------------------------------------------------
# scenarios (run on both ranks)


def scenario_torchtitan(rank):
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model)
    backend = fp4.configure(inductor=False)
    return _run(rank, _torchtitan(model, backend), oracle, backend)


def scenario_torchtitan_saving_weight_codes(rank):
    """The same with ``requantize_weights_in_backward=False``: what the forward saved before the option."""
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model)
    backend = fp4.configure(inductor=False, requantize_weights_in_backward=False)
    return _run(rank, _torchtitan(model, backend), oracle, backend, steps=1)


def scenario_shard_first(rank):
    import fp4

    fully_shard, _ = _fsdp()
    model = tiny_llama()
    oracle = oracle_of(model)
    backend = fp4.configure(inductor=False)
    for block in model.layers:
        fully_shard(block)
        block.compile(backend=backend)
    fully_shard(model)
    return _run(rank, model, oracle, backend, steps=1)


def scenario_whole_model(rank):
    import fp4

    fully_shard, _ = _fsdp()
    model = tiny_llama()
    oracle = oracle_of(model)
    backend = fp4.configure(inductor=False)
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    compiled = torch.compile(model, backend=backend)
    outcome = train_against_oracle(rank, model, lambda tokens, targets: compiled(tokens, targets), oracle, 1)
    outcome["reports"] = report_facts(backend.reports)
    return outcome


def scenario_bf16_mixed_precision(rank):
    import fp4

    _, MixedPrecisionPolicy = _fsdp()
    model = tiny_llama()
    # FSDP computes with the parameters cast to bf16 and casts the blocks' float inputs (the rotary
    # tables) to bf16 too: the oracle is the same model in bf16.  Gradients are reduced in fp32.
    oracle = oracle_of(model).to(torch.bfloat16)
    backend = fp4.configure(inductor=False)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return _run(rank, _torchtitan(model, backend, policy), oracle, backend, steps=1)


def scenario_block_relative_patterns(rank):
    """Under per-block compile the layer names are relative to the block: patterns must be written so."""
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model, exclude=["lm_head", "*.mlp.down_proj"])  # full names: the oracle sees the model
    backend = fp4.configure(inductor=False, exclude=["lm_head", "mlp.down_proj", "layers.*.mlp.up_proj"])
    return _run(rank, _torchtitan(model, backend), oracle, backend, steps=1)


SCENARIOS = [
    "torchtitan",
    "torchtitan_saving_weight_codes",
    "shard_first",
    "whole_model",
    "bf16_mixed_precision",
    "block_relative_patterns",
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_scenarios(__name__, SCENARIOS, tmp_path_factory.mktemp("fsdp"))


def _one_block_graph(results) -> dict:
    """The single training graph the two blocks share (per-block compile), the same on both ranks."""
    graphs = [outcome["reports"] for outcome in results]
    assert [len(g) for g in graphs] == [1, 1], "the blocks must share one compiled graph"
    return graphs[0][0]


# ----------------------------------------------------------------------------
# tests


def test_torchtitan_recipe_matches_oracle(outcomes):
    results = outcomes["torchtitan"]
    assert_matches_oracle(results)
    graph = _one_block_graph(results)
    # Per-block compile: names are relative to the block (``attention.q_proj``, not ``layers.0.attention.q_proj``).
    assert graph["rewritten"] == BLOCK_LAYERS


def test_fsdp_saves_no_gathered_weight_codes(outcomes):
    """Under FSDP the weight quantization is recomputed in the backward: no [N, K/2] codes saved."""
    recomputing = _one_block_graph(outcomes["torchtitan"])
    saving = _one_block_graph(check(outcomes["torchtitan_saving_weight_codes"]))
    assert_matches_oracle(outcomes["torchtitan_saving_weight_codes"])
    assert recomputing["requantize"] is True and saving["requantize"] is False
    weights = [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64), (96, 64), (64, 96)]
    code_shapes = {shape for n, k in weights for shape in ((n, k // 2), (n, k // 32), (n, k // 8))}
    assert recomputing["saved_parameter_shapes"] == [()]  # the per-layer seeds only
    assert code_shapes <= set(saving["saved_parameter_shapes"])
    # Before: codes + scales + mask of every weight ((1/2 + 1/32 + 1/8) B per parameter) and the seeds.
    params = sum(n * k for n, k in weights)
    assert saving["saved_parameter_bytes"] == params * 21 // 32 + LINEARS_PER_BLOCK * SEED_BYTES
    assert recomputing["saved_parameter_bytes"] == LINEARS_PER_BLOCK * SEED_BYTES
    assert recomputing["saved_activation_bytes"] == saving["saved_activation_bytes"]
    assert recomputing["backward_graph"].count("fp4.quest_quantize") == LINEARS_PER_BLOCK
    print(
        f"per block: saved FP4 weight copies + seeds {saving['saved_parameter_bytes']} B -> "
        f"{recomputing['saved_parameter_bytes']} B ({params} parameters)"
    )


def test_shard_first_then_compile_matches_oracle(outcomes):
    results = outcomes["shard_first"]
    assert_matches_oracle(results)
    assert _one_block_graph(results)["rewritten"] == BLOCK_LAYERS


def test_whole_model_compile_matches_oracle(outcomes):
    results = outcomes["whole_model"]
    assert_matches_oracle(results)
    # Dynamo breaks the graph at the FSDP hooks: the blocks share one graph; the head is excluded.
    graphs = results[0]["reports"]
    assert BLOCK_LAYERS in [graph["rewritten"] for graph in graphs]
    assert sum(len(graph["rewritten"]) for graph in graphs) == LINEARS_PER_BLOCK


def test_bf16_mixed_precision_matches_bf16_oracle(outcomes):
    results = outcomes["bf16_mixed_precision"]
    assert_matches_oracle(results)
    assert _one_block_graph(results)["rewritten"] == BLOCK_LAYERS


def test_patterns_are_block_relative_under_per_block_compile(outcomes):
    results = outcomes["block_relative_patterns"]
    assert_matches_oracle(results)
    graph = _one_block_graph(results)
    assert graph["rewritten"] == [name for name in BLOCK_LAYERS if name != "mlp.down_proj"]
    assert "excluded by pattern 'mlp.down_proj'" in graph["skipped"]["mlp.down_proj"]
