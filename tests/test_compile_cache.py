"""AOTAutograd's and Inductor's caches serve the fp4 graphs: a warm re-run of the same model skips tracing, the fp4
passes, the partition and Inductor's lowering, reports the layers its first compile rewrote and computes the same
bits; without that report kept it compiles again to make one.

Each run is a fresh process sharing one Inductor cache directory, as two launches of a training script are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

_RUN = textwrap.dedent(
    """
    import json, torch
    from torch._dynamo.utils import counters
    import fp4
    from fp4.models import LlamaConfig, model_for_training

    torch.manual_seed(0)
    model = model_for_training(LlamaConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=128))
    backend = fp4.configure()
    compiled = torch.compile(model, backend=backend)
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    loss = compiled(tokens).float().square().mean()
    loss.backward()
    grads = [p.grad.float().sum().item() for p in model.parameters() if p.grad is not None]
    cache = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
    cache.update(counters["aot_autograd"])
    layers = [(layer.name, layer.status) for report in backend.reports for layer in report.layers]
    stages = [spec for report in backend.reports for spec, _ in report.stages]
    cached = [report.cached for report in backend.reports]
    print(json.dumps(
        {"loss": loss.item(), "grads": grads, "cache": cache, "layers": layers, "stages": stages, "cached": cached}
    ))
    """
)


def _run(tmp_path) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TORCHINDUCTOR_FX_GRAPH_CACHE="1")
    done = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_warm_rerun_hits_the_caches_with_the_same_bits_and_report(tmp_path):
    cold = _run(tmp_path)
    assert cold["cache"].get("fxgraph_cache_miss", 0) >= 2 and not cold["cache"].get("fxgraph_cache_bypass")
    assert cold["cache"].get("autograd_cache_saved") == 1, cold
    assert cold["layers"] and cold["cached"] == [False], "the compile report lists the rewritten layers"
    warm = _run(tmp_path)
    assert warm["cache"].get("autograd_cache_hit") == 1 and not warm["cache"].get("autograd_cache_miss"), warm
    assert warm["cache"].get("fxgraph_cache_hit", 0) >= 2 and not warm["cache"].get("fxgraph_cache_miss"), warm
    assert warm["cached"] == [True]  # the passes did not run...
    assert warm["layers"] == cold["layers"] and warm["stages"] == cold["stages"]  # ...and the report is whole
    assert warm["loss"] == cold["loss"] and warm["grads"] == cold["grads"]  # bit for bit


def test_a_hit_without_its_report_compiles_again(tmp_path):
    """A cache hit whose report is gone (the report folder deleted) must not leave layers out of the report: the
    graph is compiled again, passes and all, and the report kept for the next run."""
    cold = _run(tmp_path)
    shutil.rmtree(tmp_path / "inductor" / "fp4-reports")
    again = _run(tmp_path)
    assert again["cache"].get("autograd_cache_hit") == 1, again
    assert again["cached"] == [False] and again["layers"] == cold["layers"] and again["stages"] == cold["stages"]
    assert again["loss"] == cold["loss"] and again["grads"] == cold["grads"]
    assert _run(tmp_path)["cached"] == [True]


def test_the_key_follows_the_options_and_the_target():
    from fp4.capture import cache_key
    from fp4.options import Options
    from fp4.target import Target

    key = cache_key(Options(), Target.parse("cpu"))
    assert key == cache_key(Options(), Target.parse("cpu"))  # stable
    assert key != cache_key(Options(rotate=False), Target.parse("cpu"))
    assert key != cache_key(Options(), Target.parse("sm_90"))


def test_each_ranks_seed_salt_enters_the_key(monkeypatch):
    """Under a process group each rank's graph holds its own seed salt (``rank_seeds``): a rank must never load
    another rank's compiled graph from a shared cache."""
    import fp4.capture as capture
    from fp4.options import Options
    from fp4.target import Target

    keys = set()
    for rank in range(2):
        monkeypatch.setattr(capture, "seed_salt", lambda rank_seeds, rank=rank: rank + 1 if rank_seeds else 0)
        keys.add(capture.cache_key(Options(rank_seeds=True), Target.parse("cpu")))
    assert len(keys) == 2


def test_a_graph_whose_report_is_kept_starts_no_compile_workers(monkeypatch, tmp_path):
    """A warm re-run's graphs come from AOTAutograd's cache and compile nothing ahead, so the backend starts no
    compile worker for a graph whose report is kept (a miss starts them at its first compile)."""
    import torch
    from fp4 import report as report_lib
    from fp4.capture import workers_wanted
    from fp4.options import Options
    from fp4.target import Target

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hopper = Target.parse("sm_90")
    assert workers_wanted(Options(), hopper, "key")
    report_lib.store(report_lib.CompileReport(), "key")
    assert not workers_wanted(Options(), hopper, "key")
    assert workers_wanted(Options(), hopper, None)  # no key (no Inductor): start them
    assert not workers_wanted(Options(compile_ahead=False), hopper, None)
    assert not workers_wanted(Options(), Target.parse("cpu"), None)
