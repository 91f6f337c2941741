"""The first step of a fresh process, with empty caches and again with the caches the first one left (a warm
re-run: the second launch of the same training script), for bf16 Inductor and ``backend="fp4"``.

Each run is a new process; the two runs of a backend share one Inductor, Triton and fp4 kernel cache directory,
made empty for the cold one.  The model is the project's small Llama (``fp4.models``), forward and backward of one
batch.  Prints a table and writes ``--out`` (JSON).

    python benchmarks/warm_compile.py --out warm_compile.json                # CPU
    python benchmarks/warm_compile.py --device cuda --out warm_compile.json  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

_STEP = """
import json, sys, time, torch
from torch._dynamo.utils import counters
from fp4.models import LlamaConfig, model_for_training

backend, device, dim, layers, batch, seq = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
config = LlamaConfig(dim=dim, n_layers=layers, hidden_dim=2 * dim, max_seq_len=max(seq, 256))
model = model_for_training(config).to(device)
compiled = torch.compile(model, backend="fp4") if backend == "fp4" else torch.compile(model)
tokens = torch.randint(0, config.vocab_size, (batch, seq), device=device)
start = time.perf_counter()
compiled(tokens).float().square().mean().backward()
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
cache = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
print(json.dumps({"first_step_s": seconds, "inductor_cache": cache}))
"""


def run(backend: str, cache_root: str, args) -> dict:
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_root, "inductor"),
        TRITON_CACHE_DIR=os.path.join(cache_root, "triton"),
        FP4_CACHE_DIR=os.path.join(cache_root, "fp4"),
    )
    argv = [backend, args.device, str(args.dim), str(args.layers), str(args.batch), str(args.seq)]
    done = subprocess.run([sys.executable, "-c", _STEP, *argv], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{backend}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()
    records = []
    for backend in ("inductor", "fp4"):
        with tempfile.TemporaryDirectory() as cache_root:
            for state in ("cold", "warm"):
                result = run(backend, cache_root, args)
                records.append({"backend": backend, "caches": state, **result})
    import torch

    card = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    seconds = {(r["backend"], r["caches"]): r["first_step_s"] for r in records}
    print(f"| caches | bf16 Inductor s | fp4 s | fp4 / Inductor |  ({card}, {args.device})\n|---|---|---|---|")
    for state in ("cold", "warm"):
        fp4, bf16 = seconds["fp4", state], seconds["inductor", state]
        print(f"| {state} | {bf16:.1f} | {fp4:.1f} | {fp4 / bf16:.2f} |")
    if args.out:
        document = {
            "card": card,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python", *sys.argv]),
            "torch": torch.__version__,
            "config": vars(args),
            "records": records,
        }
        with open(args.out, "w") as stream:
            json.dump(document, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
