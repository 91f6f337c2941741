"""FSDP2 all-gather of MXFP4 weights (``fp4.distributed.enable_fp4_all_gather``), on two gloo ranks on the CPU.

Every linear layer of the TinyLlama blocks is gathered as its QuEST codes,
scales and clip mask (21/32 B per element) instead of in the parameter dtype.
The scenarios train with ``inductor=False`` and compare every gradient
(``.full_tensor()``) bit for bit with the eager oracle averaged over the ranks
(tests/distributed_harness.py), which quantizes the whole weight: each rank
quantizing its own rows must give the same codes.  Layers whose rows do not
split evenly over the ranks (33 rows; 1 row, so that one rank's shard is
empty) gather packed in the padded shard's shape, bit for bit as well.  With
Inductor (the default) the gradients are compared by their relative
difference and cosine similarity.  The bytes FSDP all-gathers per step are
counted (``fp4.distributed.count_all_gather_bytes``) with and without the
MXFP4 gather and checked against the parameter sizes.
"""

from __future__ import annotations

import fp4.runtime  # noqa: F401  (torch.ops.fp4)
import pytest
import torch
from distributed_harness import (
    BLOCK_LAYERS,
    DISTRIBUTED_MARKS,
    WORLD_SIZE,
    assert_matches_oracle,
    check,
    oracle_of,
    report_facts,
    run_scenarios,
    tiny_llama,
    train_against_oracle,
)

pytestmark = DISTRIBUTED_MARKS

FP4_BYTES_PER_ELEMENT = 21 / 32  # codes 1/2 + scales 1/32 + clip mask 1/8


def _shard(model, backend=None, mp_policy=None):
    """torchtitan's order: each block compiled (when ``backend`` is given), then sharded; then the root."""
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mp_policy": mp_policy} if mp_policy is not None else {}
    for block in model.layers:
        if backend is not None:
            block.compile(backend=backend)
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _train(rank, model, oracle, steps):
    """Train against the oracle; count the all-gather bytes of the first step on its own."""
    import fp4

    step = lambda tokens, targets: model(tokens, targets)
    with fp4.distributed.count_all_gather_bytes(model) as counted:
        first = train_against_oracle(rank, model, step, oracle, 1)
    outcome = {"first_step_bytes": counted.sent, "first_step_calls": counted.calls}
    if steps > 1:  # the later steps re-gather into the buffers of the first (fsdp_post_all_gather's out=)
        later = train_against_oracle(rank, model, step, oracle, steps - 1)  # the oracle took the first step too
        first["mismatches"] += later["mismatches"]
        for name, values in later["statistics"].items():
            first["statistics"][name] += values
        first["params_equal"] = first["params_equal"] and later["params_equal"]
    outcome.update(first)
    return outcome


# ----------------------------------------------------------------------------
# scenarios (run on both ranks)


def scenario_compiled(rank):
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model)
    plan = fp4.distributed.enable_fp4_all_gather(model)
    backend = fp4.configure(inductor=False)
    outcome = _train(rank, _shard(model, backend), oracle, steps=2)
    outcome.update(plan=plan.gathered, kept=plan.kept, reports=report_facts(backend.reports))
    return outcome


def scenario_compiled_inductor(rank):
    """The default backend (Inductor) on the gathered codes."""
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model)
    fp4.distributed.enable_fp4_all_gather(model)
    backend = fp4.configure()
    outcome = _train(rank, _shard(model, backend), oracle, steps=1)
    outcome["reports"] = report_facts(backend.reports)
    return outcome


class UnevenBlock(torch.nn.Module):
    """Linear layers whose rows do not split evenly over two ranks: 33 rows, and 1 (rank 1's shard is empty)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 96, bias=False)  # even: 48 rows a rank
        self.odd = torch.nn.Linear(96, 33)  # padded shards of 17 rows
        self.single = torch.nn.Linear(64, 1, bias=False)  # shards of 1 row and 0 rows

    def forward(self, x):
        y = self.odd(torch.nn.functional.silu(self.up(x)))
        return x + torch.cat((y[..., :32], y[..., 1:]), dim=-1) * self.single(x)


class Uneven(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = torch.nn.Embedding(64, 64)
        self.layers = torch.nn.ModuleList(UnevenBlock() for _ in range(2))

    def forward(self, tokens, targets):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x)
        return torch.nn.functional.cross_entropy(x.flatten(0, 1), targets.flatten())


UNEVEN_LAYERS = ["up", "odd", "single"]


def _uneven(rank, compiled: bool):
    import fp4

    model = Uneven()
    oracle = oracle_of(model)
    if not compiled:
        fp4.quartetize(model)
    plan = fp4.distributed.enable_fp4_all_gather(model)
    backend = fp4.configure(inductor=False) if compiled else None
    outcome = _train(rank, _shard(model, backend), oracle, steps=2)
    outcome.update(plan=plan.gathered, packed=plan.packed, kept=plan.kept)
    if backend is not None:
        outcome["reports"] = report_facts(backend.reports)
    return outcome


def scenario_uneven_compiled(rank):
    return _uneven(rank, compiled=True)


def scenario_uneven_eager_oracle(rank):
    return _uneven(rank, compiled=False)


def scenario_replicated_unsharded(rank):
    """HSDP over a (2 replicas, 1 shard) mesh: FSDP's one-rank shard group copies instead of gathering."""
    import fp4
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = tiny_llama()
    oracle = oracle_of(model)
    plan = fp4.distributed.enable_fp4_all_gather(model, world_size=1)
    backend = fp4.configure(inductor=False)
    mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard"))
    for block in model.layers:
        block.compile(backend=backend)
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    outcome = train_against_oracle(rank, model, lambda tokens, targets: model(tokens, targets), oracle, 1)
    outcome.update(packed=plan.packed, reports=report_facts(backend.reports))
    return outcome


def scenario_compiled_dtype_gather(rank):
    """The baseline: the same training with the weights gathered in their dtype."""
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model)
    backend = fp4.configure(inductor=False)
    outcome = _train(rank, _shard(model, backend), oracle, steps=1)
    outcome["reports"] = report_facts(backend.reports)
    return outcome


def scenario_eager_oracle(rank):
    """No compile: the quartetized model itself under fully_shard, its layers reading the gathered codes."""
    import fp4

    model = tiny_llama()
    oracle = oracle_of(model)
    fp4.quartetize(model)
    fp4.distributed.enable_fp4_all_gather(model)
    return _train(rank, _shard(model), oracle, steps=2)


def _bf16(rank, fp4_gather):
    import fp4
    from torch.distributed.fsdp import MixedPrecisionPolicy

    model = tiny_llama()
    oracle = oracle_of(model).to(torch.bfloat16)  # FSDP computes in bf16: the oracle is the model in bf16
    if fp4_gather:
        fp4.distributed.enable_fp4_all_gather(model)
    backend = fp4.configure(inductor=False)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return _train(rank, _shard(model, backend, policy), oracle, steps=1)


def scenario_bf16(rank):
    return _bf16(rank, fp4_gather=True)


def scenario_bf16_dtype_gather(rank):
    return _bf16(rank, fp4_gather=False)


def scenario_excluded_layer(rank):
    """A layer the backend keeps in the model dtype cannot read a weight gathered as FP4 codes: a clear error."""
    import fp4

    model = tiny_llama()
    fp4.distributed.enable_fp4_all_gather(model)
    backend = fp4.configure(inductor=False, exclude=["lm_head", "mlp.down_proj"])
    _shard(model, backend)
    tokens = torch.randint(0, 64, (2, 16))
    try:
        model(tokens, tokens)
    except Exception as error:
        return {"raised": f"{type(error).__name__}: {error}"}
    return {"raised": None}


SCENARIOS = [
    "compiled",
    "compiled_inductor",
    "uneven_compiled",
    "uneven_eager_oracle",
    "replicated_unsharded",
    "compiled_dtype_gather",
    "eager_oracle",
    "bf16",
    "bf16_dtype_gather",
    "excluded_layer",
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_scenarios(__name__, SCENARIOS, tmp_path_factory.mktemp("fp4_all_gather"))


def _parameter_counts():
    """(linear weights per block, other parameters per block, root parameters) of the test model."""
    model = tiny_llama()
    block = model.layers[0]
    weights = sum(block.get_submodule(name).weight.numel() for name in BLOCK_LAYERS)
    others = sum(p.numel() for p in block.parameters()) - weights
    root = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("layers."))
    return weights, others, root, len(model.layers)


def _predicted_step_bytes(param_bytes: int, fp4_gather: bool) -> int:
    """Bytes one rank sends to the all-gathers of one training step.

    The root (embedding, final norm, head) is gathered once (FSDP keeps the
    root unsharded after the forward); every block twice (forward, and again
    for the backward after ``reshard_after_forward``).  The norms of a block
    are gathered in the parameter dtype either way.
    """
    weights, others, root, blocks = _parameter_counts()
    weight_bytes = weights * FP4_BYTES_PER_ELEMENT if fp4_gather else weights * param_bytes
    per_block = weight_bytes + others * param_bytes
    return int(root * param_bytes + 2 * blocks * per_block) // WORLD_SIZE


# ----------------------------------------------------------------------------
# tests


def test_compiled_fp4_all_gather_matches_oracle(outcomes):
    results = check(outcomes["compiled"])
    assert_matches_oracle(results)
    assert results[0]["kept"] == {}
    assert results[0]["plan"] == [f"layers.{i}.{name}" for i in range(2) for name in BLOCK_LAYERS]
    graphs = [outcome["reports"] for outcome in results]
    assert [len(g) for g in graphs] == [1, 1], "the blocks must share one compiled graph"
    graph = graphs[0][0]
    assert graph["rewritten"] == BLOCK_LAYERS and graph["skipped"] == {}
    # The weights arrive quantized: against the graph of the dtype gather, the forward quantizes the
    # layer inputs only (7 weight quantizations fewer), the backward re-quantizes no weight (it does
    # under FSDP otherwise), and no dense weight is read.
    dtype_graph = check(outcomes["compiled_dtype_gather"])[0]["reports"][0]
    quantizations = dtype_graph["forward_graph"].count("fp4.quest_quantize") - len(BLOCK_LAYERS)
    assert graph["forward_graph"].count("fp4.quest_quantize") == quantizations
    assert dtype_graph["backward_graph"].count("fp4.quest_quantize") == len(BLOCK_LAYERS)
    assert "fp4.quest_quantize" not in graph["backward_graph"]
    assert "gathered_weight" not in graph["forward_graph"] + graph["backward_graph"]
    # The backward reads the gathered codes (graph inputs FSDP re-gathers): no FP4 weight copy is saved,
    # only the seven layer seeds, and the saved activations are those of the dtype gather.
    assert graph["saved_parameter_shapes"] == [()]
    assert graph["saved_parameter_bytes"] == dtype_graph["saved_parameter_bytes"] == len(BLOCK_LAYERS) * 8
    assert graph["saved_activation_bytes"] == dtype_graph["saved_activation_bytes"]


def test_compiled_fp4_all_gather_with_inductor_close_to_oracle(outcomes):
    """Inductor compiles the graphs on the gathered codes; the ops around the fp4 ops are re-associated.

    Measured (TinyLlama test model, one step, both ranks): the linear layers' weight gradients equal
    the oracle's bit for bit, the others (norms, embedding, head) are within 1e-6 relative (Frobenius).
    """
    results = check(outcomes["compiled_inductor"])
    for outcome in results:
        (graph,) = outcome["reports"]
        assert graph["rewritten"] == BLOCK_LAYERS and graph["skipped"] == {}
        assert "fp4.quest_quantize" not in graph["backward_graph"]  # the weights' codes are gathered, not made
        for name, ((relative, _),) in outcome["statistics"].items():
            print(f"{name}: relative difference {relative:.2e}")
            assert relative < 1e-6, (name, relative)
            if name.startswith("layers.") and name.endswith("_proj.weight"):
                assert relative == 0, name


def test_uneven_rows_gather_as_padded_fp4_bit_exact(outcomes):
    """33 rows and 1 row over two ranks: packed in the padded shard's shape, still bit for bit."""
    for scenario in ("uneven_compiled", "uneven_eager_oracle"):
        results = assert_matches_oracle(outcomes[scenario])
        outcome = results[0]
        assert outcome["plan"] == [f"layers.{i}.{name}" for i in range(2) for name in UNEVEN_LAYERS]
        assert outcome["kept"] == {}
        assert outcome["packed"] == {
            f"layers.{i}.{name}": f"N={n} rows do not split evenly over 2 ranks: each rank sends the padded "
            f"shard uint8 [{rows}, {k}] (FSDP requires the padded shape)"
            for i in range(2)
            for name, n, rows, k in (("odd", 33, 17, 96), ("single", 1, 1, 64))
        }
    (graph,) = check(outcomes["uneven_compiled"])[0]["reports"]
    assert graph["rewritten"] == UNEVEN_LAYERS and graph["skipped"] == {}
    assert "fp4.quest_quantize(primals" not in graph["forward_graph"]  # no weight quantized in the graph
    # Bytes one rank sends per step: the root's embedding once (fp32), every block twice (forward and
    # backward): up 21/32 B per element of its 48 rows, odd and single one byte per element of the
    # padded shards [17, 96] and [1, 64], odd's bias as fp32 padded to 17 elements.
    embedding, up, odd, odd_bias, single = 64 * 64 * 4 // 2, 48 * 64 * 21 // 32, 17 * 96, 17 * 4, 1 * 64
    predicted = embedding + 2 * 2 * (up + odd + odd_bias + single)
    for scenario in ("uneven_compiled", "uneven_eager_oracle"):
        assert [r["first_step_bytes"] for r in outcomes[scenario]] == [predicted] * 2, scenario


def test_one_rank_shard_group_takes_the_packed_form(outcomes):
    results = assert_matches_oracle(outcomes["replicated_unsharded"])
    assert set(results[0]["packed"].values()) == {
        "one rank: FSDP copies a single all-gather input instead of gathering"
    }
    assert len(results[0]["packed"]) == 2 * len(BLOCK_LAYERS)
    assert results[0]["reports"][0]["rewritten"] == BLOCK_LAYERS


def test_eager_oracle_under_fsdp_reads_gathered_codes(outcomes):
    assert_matches_oracle(outcomes["eager_oracle"])


def test_bf16_mixed_precision_fp4_all_gather_matches_bf16_oracle(outcomes):
    assert_matches_oracle(outcomes["bf16"])


def test_all_gather_bytes_as_predicted(outcomes):
    """Measured bytes per step equal the prediction from the parameter sizes, in fp32 and in bf16."""
    measured = {
        (dtype_bytes, fp4_gather): check(outcomes[name])[0]["first_step_bytes"]
        for name, dtype_bytes, fp4_gather in (
            ("compiled", 4, True),
            ("compiled_dtype_gather", 4, False),
            ("bf16", 2, True),
            ("bf16_dtype_gather", 2, False),
        )
    }
    for (dtype_bytes, fp4_gather), sent in measured.items():
        assert sent == _predicted_step_bytes(dtype_bytes, fp4_gather), (dtype_bytes, fp4_gather)
    for name in ("compiled", "compiled_dtype_gather", "bf16", "bf16_dtype_gather"):
        assert [r["first_step_bytes"] for r in outcomes[name]] == [outcomes[name][0]["first_step_bytes"]] * 2
    # The linear weights alone: 21/32 B per element instead of 4 (fp32) or 2 (bf16).
    weights, _, _, blocks = _parameter_counts()
    gathers = 2 * blocks * weights // WORLD_SIZE  # elements of linear weights each rank sends per step
    for dtype_bytes in (4, 2):
        saved = measured[(dtype_bytes, False)] - measured[(dtype_bytes, True)]
        assert saved == gathers * (dtype_bytes - FP4_BYTES_PER_ELEMENT)
    ratio = measured[(2, True)] / measured[(2, False)]
    print(
        "all-gather bytes per step and rank: "
        + ", ".join(
            f"{'fp32' if b == 4 else 'bf16'} {'fp4' if f else 'dtype'} gather {s} B" for (b, f), s in measured.items()
        )
        + f"; bf16 total ratio {ratio:.3f}"
    )


def test_layer_the_backend_does_not_rewrite_refuses_a_gathered_weight(outcomes):
    raised = check(outcomes["excluded_layer"])[0]["raised"]
    assert raised is not None and "ValueError" in raised
    assert "mlp.down_proj: excluded by pattern 'mlp.down_proj'" in raised
    assert "enable_fp4_all_gather" in raised


# ----------------------------------------------------------------------------
# single-process tests of the pieces


def test_each_rank_quantizing_its_rows_gives_the_rows_of_the_whole_quantization():
    """Why the gather is exact: groups and rotation run along K, FSDP shards along N."""
    weight = torch.randn(96, 64, generator=torch.Generator().manual_seed(3))
    whole = torch.ops.fp4.quest_quantize(weight, True)
    shards = [torch.ops.fp4.quest_quantize(rows, True) for rows in weight.chunk(WORLD_SIZE)]
    for part, gathered in zip(whole, zip(*shards)):
        assert torch.equal(part, torch.cat(gathered))


def test_gathered_weight_quantizes_to_its_codes_and_has_no_dense_values():
    from fp4.runtime.gathered import MXFP4Weight

    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(4))
    codes, scales, mask = torch.ops.fp4.quest_quantize(weight, True)
    gathered = MXFP4Weight(codes, scales, mask, True, torch.float32)
    assert (tuple(gathered.shape), gathered.dtype) == ((32, 64), torch.float32)
    got = torch.ops.fp4.quest_quantize(gathered, True)
    assert all(a is b for a, b in zip(got, (codes, scales, mask)))
    # FSDP views the gathered rows as the parameter; the oracle's layer quantizes that view.
    view = torch.as_strided(gathered, (32, 64), (64, 1), 0)
    assert all(torch.equal(a, b) for a, b in zip(torch.ops.fp4.quest_quantize(view, True), (codes, scales, mask)))
    with pytest.raises(RuntimeError, match="rotate=True, but is quantized with rotate=False"):
        torch.ops.fp4.quest_quantize(gathered, False)
    with pytest.raises(RuntimeError, match="has no dense values"):
        torch.nn.functional.linear(torch.randn(4, 64), gathered)
    with pytest.raises(NotImplementedError, match="has no dense values"):
        gathered + 1


def test_padded_shards_gather_the_rows_of_the_whole_quantization():
    """Uneven rows: each rank packs its rows' codes into the padded shard; the first N gathered rows are exact."""
    from fp4.runtime.gathered import pack_rows, unpack_rows

    generator = torch.Generator().manual_seed(5)
    for rows, ranks in ((33, 2), (1, 2), (10, 4), (7, 1)):
        weight = torch.randn(rows, 96, generator=generator)
        whole = torch.ops.fp4.quest_quantize(weight, True)
        shards = list(weight.chunk(ranks))  # FSDP's row split: ceil(N / ranks) rows, the last shards short or empty
        shards += [weight[:0]] * (ranks - len(shards))
        padded = -(-rows // ranks)
        gathered = torch.cat([pack_rows(*torch.ops.fp4.quest_quantize(shard, True), padded) for shard in shards])
        assert gathered.shape == (ranks * padded, 96) and gathered.dtype == torch.uint8
        for part, got in zip(whole, unpack_rows(gathered, 96)):
            assert torch.equal(got[:rows], part)


def test_enable_fp4_all_gather_keeps_ineligible_layers_with_the_reason():
    import fp4
    from fp4.runtime.gathered import FP4AllGatherWeight

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(64, 96, bias=False))
    model.add_module("odd", torch.nn.Linear(48, 96, bias=False))  # K not a multiple of 32
    model.add_module("uneven", torch.nn.Linear(64, 33, bias=False))  # rows do not split over 2 ranks
    model.add_module("lm_head", torch.nn.Linear(64, 64, bias=False))  # the head: not selected
    before = model.up.weight.detach().clone()
    plan = fp4.distributed.enable_fp4_all_gather(model, world_size=2)
    assert plan.gathered == ["up", "uneven"]
    assert plan.kept == {"odd": "contraction dim K=48 is not a multiple of 32"}
    assert plan.packed == {
        "uneven": "N=33 rows do not split evenly over 2 ranks: each rank sends the padded shard uint8 [17, 64] "
        "(FSDP requires the padded shape)"
    }
    assert isinstance(model.up.weight.data, FP4AllGatherWeight)
    assert isinstance(model.up.weight, torch.nn.Parameter) and model.up.weight.requires_grad
    assert torch.equal(model.up.weight.detach(), before)  # the master weight, unchanged
    assert isinstance(model.uneven.weight.data, FP4AllGatherWeight)
    assert not any(isinstance(m.weight.data, FP4AllGatherWeight) for m in (model.odd, model.lm_head))
    # Enabling again changes nothing and reports the same plan.
    assert fp4.distributed.enable_fp4_all_gather(model, world_size=2) == plan
    with pytest.raises(ValueError, match="needs world_size= or an initialized process group"):
        fp4.distributed.enable_fp4_all_gather(torch.nn.Linear(64, 64))
