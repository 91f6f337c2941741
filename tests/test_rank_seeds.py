"""``rank_seeds``: the process rank folded into every drawn layer seed, the same in the backend and the oracle.

Under a process group each drawn layer seed is salted with ``rank + 1``
(``fp4.runtime.philox.salted_seed``), so data-parallel ranks that seeded torch
alike do not draw the same stochastic-rounding noise.  These tests use a
one-rank gloo group in this process; tests/test_ddp.py checks two ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from fp4.options import Options, seed_salt
from fp4.runtime import philox
from fp4.runtime.oracle import draw_layer_seed
from oracle_compare import assert_bitwise, compare_with_oracle

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@pytest.fixture
def process_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_salted_seed_on_integers_and_tensors_agree():
    seeds = [0, 1, 12345, (1 << 62) - 1, (1 << 63) - 1]
    for salt in (1, 2, 7, 1 << 20):
        salted = [philox.salted_seed(seed, salt) for seed in seeds]
        assert all(0 <= s < philox.SEED_MODULUS for s in salted)
        assert philox.salted_seed(torch.tensor(seeds), salt).tolist() == salted
        assert len(set(salted)) == len(seeds)
    assert philox.salted_seed(5, 0) == 5
    assert philox.salted_seed(5, 1) != philox.salted_seed(5, 2)


def test_no_salt_without_a_process_group():
    assert not dist.is_initialized()
    assert seed_salt("auto") == 0 and seed_salt(True) == 0
    with pytest.raises(ValueError, match="rank_seeds"):
        Options.from_mapping({"rank_seeds": 1})


def test_salt_is_rank_plus_one_under_a_process_group(process_group):
    assert seed_salt("auto") == 1 and seed_salt(True) == 1 and seed_salt(False) == 0
    torch.manual_seed(3)
    salted = draw_layer_seed()
    torch.manual_seed(3)
    plain = draw_layer_seed(rank_seeds=False)
    assert int(salted) == philox.salted_seed(int(plain), 1)


@pytest.mark.parametrize("rank_seeds", ["auto", False])
def test_compiled_matches_oracle_with_salted_seeds(process_group, rank_seeds):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
    make_inputs = lambda: (torch.randn(16, 64, requires_grad=True),)
    import copy

    from fp4.runtime.oracle import quartetize
    from oracle_compare import run

    oracle = run(quartetize(copy.deepcopy(model), rank_seeds=rank_seeds), make_inputs)
    _, compiled, backend = compare_with_oracle(model, make_inputs, rank_seeds=rank_seeds)
    assert_bitwise(oracle, compiled)
    (report,) = backend.reports
    assert report.options.rank_seeds is (rank_seeds == "auto")
    # the salt (rank + 1 = 1 on this one-rank group) is the draw's third argument
    salted_draw = 'fp4.draw_seeds.default(2, torch.device("cpu"), 1)'
    assert (salted_draw in report.forward_graph) is (rank_seeds == "auto")
    # The salt changes the rounding noise: the gradients differ from the unsalted oracle's.
    unsalted = run(quartetize(copy.deepcopy(model), rank_seeds=False), make_inputs)
    same = all(torch.equal(unsalted[1][name], compiled[1][name]) for name in unsalted[1])
    assert same is (rank_seeds is False)
