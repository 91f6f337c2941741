"""The first step of a fresh process, with empty caches and again with the caches the first one left (a warm
re-run: the second launch of the same training script), for bf16 Inductor and ``backend="fp4"``.

Each run is a new process; the two runs of a backend share one Inductor, Triton and fp4 kernel cache directory,
made empty for the cold one.  The model is the project's small Llama (``fp4.models``), forward and backward of one
batch.  Prints a table and writes ``--out`` (JSON).

    python benchmarks/warm_compile.py --out warm_compile.json                # CPU
    python benchmarks/warm_compile.py --device cuda --out warm_compile.json  # GPU
    python benchmarks/warm_compile.py --model small-6l --target sm_90 --batch 1 --seq 32  # Hugging Face Llama,
                                                     # the passes of the Hopper pipeline, on a CPU
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
import gc, json, sys, time, torch
from torch._dynamo.utils import counters

backend, device, name, target = sys.argv[1:5]
dim, layers, batch, seq = map(int, sys.argv[5:9])
if name == "tiny":
    from fp4.models import LlamaConfig, model_for_training

    config = LlamaConfig(dim=dim, n_layers=layers, hidden_dim=2 * dim, max_seq_len=max(seq, 256))
    model, vocab = model_for_training(config).to(device), config.vocab_size
    loss_of = lambda tokens: model_loss(tokens).float().square().mean()
else:  # a configuration of `fp4 bench --sections model` (Hugging Face Llama)
    from fp4.bench_model import CONFIGS, build_model

    shape = dict(CONFIGS[name], seq=seq)
    model, vocab = build_model(shape, device), shape["vocab"]
    loss_of = lambda tokens: model_loss(input_ids=tokens, labels=tokens).loss
options = {"target": target} if target else {}
model_loss = torch.compile(model, backend="fp4", options=options) if backend == "fp4" else torch.compile(model)
tokens = torch.randint(0, vocab, (batch, seq), device=device)
collecting = [0.0, None]

def timed(phase, info):
    if phase == "start":
        collecting[1] = time.perf_counter()
    elif collecting[1] is not None:
        collecting[0] += time.perf_counter() - collecting[1]

gc.callbacks.append(timed)
from fp4.bench_model import compile_seconds

before = compile_seconds()
start = time.perf_counter()
loss_of(tokens).backward()
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
cache = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
cache.update(counters["aot_autograd"])
timers = compile_seconds(since=before)  # where the first step's time went, by timer (fp4.bench_model)
print(json.dumps({"first_step_s": seconds, "gc_s": collecting[0], "inductor_cache": cache, "timers": timers}))
"""


def run(backend: str, cache_root: str, args) -> dict:
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_root, "inductor"),
        TRITON_CACHE_DIR=os.path.join(cache_root, "triton"),
        FP4_CACHE_DIR=os.path.join(cache_root, "fp4"),
    )
    argv = [backend, args.device, args.model, args.target, *map(str, (args.dim, args.layers, args.batch, args.seq))]
    done = subprocess.run([sys.executable, "-c", _STEP, *argv], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{backend}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="tiny", help="tiny (fp4.models: --dim, --layers) or small-6l, llama1b-8l")
    parser.add_argument("--target", default="", help="the fp4 option target (sm_90: the Hopper pipeline on a CPU)")
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
    by = {(r["backend"], r["caches"]): r for r in records}
    print(
        f"| caches | bf16 Inductor s (garbage collector) | fp4 s (garbage collector) | fp4 / Inductor |"
        f"  ({card}, {args.device})\n|---|---|---|---|"
    )
    for state in ("cold", "warm"):
        fp4, bf16 = by["fp4", state], by["inductor", state]
        print(
            f"| {state} | {bf16['first_step_s']:.1f} ({bf16['gc_s']:.1f}) | {fp4['first_step_s']:.1f} "
            f"({fp4['gc_s']:.1f}) | {fp4['first_step_s'] / bf16['first_step_s']:.2f} |"
        )
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
