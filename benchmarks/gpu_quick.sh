#!/usr/bin/env bash
# A short GPU session: every GPU test (in parallel, each result line kept as it completes), then one model
# configuration in the given modes; results under $1.
#   bash benchmarks/gpu_quick.sh OUT MODEL MODES   (GPU_TEST_TIMEOUT, BENCH_TIMEOUT in seconds)
set -u
out=$1; model=$2; modes=$3
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -q -e . >/tmp/fp4-install.log 2>&1 || cat /tmp/fp4-install.log
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fp4-site .whl/*.whl && export PYTHONPATH=/tmp/fp4-site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/card.txt"
workers=$(python3 -c "import importlib.util as u; print('-n 14' if u.find_spec('xdist') else '')")
FP4_AUTOTUNE=0 timeout "${GPU_TEST_TIMEOUT:-150}" python3 -m pytest -m gpu tests/gpu -v -rfE -p no:cacheprovider $workers \
  >"$out/gpu_tests.txt" 2>&1
echo "gpu tests exit $?"
echo "passed $(grep -c ' PASSED' "$out/gpu_tests.txt") failed $(grep -c ' FAILED' "$out/gpu_tests.txt")"
grep -E " FAILED|^E " "$out/gpu_tests.txt" | head -n 30
timeout "${BENCH_TIMEOUT:-250}" python3 -m fp4.bench --sections model --models "$model" --modes "$modes" --steps 6 \
  --out /tmp/fp4-bench >"$out/bench.log" 2>&1
echo "bench exit $?"
grep -E "median|failed" "$out/bench.log"
cp /tmp/fp4-bench/bench_model_records.jsonl "$out/records.jsonl" 2>/dev/null
