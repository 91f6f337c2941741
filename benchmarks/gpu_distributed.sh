#!/usr/bin/env bash
# DDP and FSDP2 with backend="fp4" against bf16 on the GPUs of one host, through NCCL with NVLink multicast off:
# each GPU count and one GPU (scaling), step-1 gradients checked; results under $1 (fp4.bench_distributed).
#   bash benchmarks/gpu_distributed.sh OUT [gpus, default 2,4,8 up to the visible GPUs] [models, default
#   llama1b-8l,llama7b-8l]      (TIME_BUDGET: seconds for the whole run, default 3000)
set -u
out=$1
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -q -e . >"$out/install.log" 2>&1 || cat "$out/install.log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
visible=$(nvidia-smi -L | wc -l)
default=2; for g in 4 8; do [ "$g" -le "$visible" ] && default="$default,$g"; done
python3 -m fp4.bench --sections distributed --gpus "${2:-$default}" --models "${3:-llama1b-8l,llama7b-8l}" \
  --scaling --check --time-budget "${TIME_BUDGET:-3000}" --out "$out" >"$out/bench.log" 2>&1
echo "bench exit $?"
grep -E "^---|median|failed" "$out/bench.log"
cat "$out/bench_distributed.md" 2>/dev/null
