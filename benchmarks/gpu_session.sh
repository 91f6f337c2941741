#!/usr/bin/env bash
# One GPU session's checks and timings, results under $1 (default gpu-results):
#   the GPU tests, host time per op, and the whole-model benchmark for the given configurations and modes.
#   bash benchmarks/gpu_session.sh OUT [models] [modes]
# Environment: SKIP_TESTS=1, SKIP_HOST=1, GPU_TEST_TIMEOUT (s), BENCH_TIMEOUT (s), STEPS.
set -u
out=${1:-gpu-results}
models=${2:-llama1b-8l,small-6l}
modes=${3:-bf16_inductor,fp4_cudagraphs,fp4_cudagraphs_fold_backward,fp4_cudagraphs_compile_ahead}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -q -e . >/tmp/fp4-install.log 2>&1 || cat /tmp/fp4-install.log
if [ -d .whl ]; then  # carried wheels (pytest-xdist)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fp4-site .whl/*.whl && export PYTHONPATH=/tmp/fp4-site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/card.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  workers=$(python3 -c "import importlib.util as u; print('-n 14' if u.find_spec('xdist') else '')")
  FP4_AUTOTUNE=0 timeout "${GPU_TEST_TIMEOUT:-240}" python3 -m pytest -m gpu tests/gpu -q -rfE -p no:cacheprovider \
    $workers --durations=10 >"$out/gpu_tests.txt" 2>&1
  echo "gpu tests exit $?" | tee -a "$out/gpu_tests.txt"
  tail -n 30 "$out/gpu_tests.txt"
fi
if [ "${SKIP_HOST:-0}" != 1 ]; then
  timeout 90 python3 benchmarks/host_overhead.py --out "$out/host_overhead.json" >>"$out/card.txt" 2>&1
  echo "host overhead exit $?"; tail -n 22 "$out/card.txt"
fi
timeout "${BENCH_TIMEOUT:-400}" python3 -m fp4.bench --sections model --models "$models" --modes "$modes" \
  --steps "${STEPS:-6}" --out "$out/bench" >"$out/bench.log" 2>&1
echo "bench exit $?"
grep -E "median|failed" "$out/bench.log" | tail -n 20
