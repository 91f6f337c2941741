#!/usr/bin/env bash
# Run the GPU test suite and the kernel benchmarks on one CUDA machine; results go to $1 (default: gpu-results).
#   bash benchmarks/gpu_check.sh gpu-results [bench sections, default quantize,linear]
set -u
out=${1:-gpu-results}
sections=${2:-quantize,linear}
mkdir -p "$out"
python3 -m pip install --no-deps --no-build-isolation -q -e . >"$out/install.log" 2>&1 || cat "$out/install.log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
# kernels compile on the CPU: spread the tests over worker processes when pytest-xdist is there
workers=$(python3 -c "import importlib.util as u; print('-n 12' if u.find_spec('xdist') else '')")
FP4_AUTOTUNE=0 timeout "${GPU_TEST_TIMEOUT:-1800}" python3 -m pytest -m gpu tests/gpu -q -rfE -p no:cacheprovider \
  $workers --durations=15 >"$out/gpu_tests.txt" 2>&1
echo "gpu tests exit $?" | tee -a "$out/gpu_tests.txt"
tail -n 25 "$out/gpu_tests.txt"
if [ -n "$sections" ]; then
  timeout "${BENCH_TIMEOUT:-1800}" python3 -m fp4.bench --sections "$sections" --out "$out/bench" >"$out/bench.log" 2>&1
  echo "bench exit $?"
  cat "$out/bench/"*.md 2>/dev/null || tail -n 40 "$out/bench.log"
fi
