"""Inductor's FX-graph cache serves the fp4 graphs: a warm re-run of the same model skips Inductor's lowering and
code generation, still runs the fp4 passes (the compile report is whole) and computes the same bits.

Each run is a fresh process sharing one Inductor cache directory, as two launches of a training script are.
"""

from __future__ import annotations

import json
import os
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
    layers = [(layer.name, layer.status) for report in backend.reports for layer in report.layers]
    print(json.dumps({"loss": loss.item(), "grads": grads, "cache": cache, "layers": layers}))
    """
)


def _run(tmp_path) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TORCHINDUCTOR_FX_GRAPH_CACHE="1")
    done = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_warm_rerun_hits_inductors_cache_with_the_same_bits_and_report(tmp_path):
    cold = _run(tmp_path)
    assert cold["cache"].get("fxgraph_cache_miss", 0) >= 2 and not cold["cache"].get("fxgraph_cache_bypass")
    assert cold["layers"], "the compile report lists the rewritten layers"
    warm = _run(tmp_path)
    assert warm["cache"].get("fxgraph_cache_hit", 0) >= 2 and not warm["cache"].get("fxgraph_cache_miss"), warm
    assert warm["layers"] == cold["layers"]  # the passes ran: the report is whole
    assert warm["loss"] == cold["loss"] and warm["grads"] == cold["grads"]  # bit for bit


def test_the_key_follows_the_options_and_the_target():
    from fp4.capture import cache_key
    from fp4.options import Options
    from fp4.target import Target

    key = cache_key(Options(), Target.parse("cpu"))
    assert key == cache_key(Options(), Target.parse("cpu"))  # stable
    assert key != cache_key(Options(rotate=False), Target.parse("cpu"))
    assert key != cache_key(Options(), Target.parse("sm_90"))
