#!/usr/bin/env bash
# One GPU session's checks and timings, in the order given, within one time budget; results under OUT.
#   bash benchmarks/gpu_session.sh OUT STEP [STEP ...]
# Steps:
#   tests[=PATHS]          the GPU tests (comma-separated paths, default tests/gpu; FP4_AUTOTUNE=0, in parallel
#                          where pytest-xdist is)
#   host                   host time per fp4 op call        (python benchmarks/host_overhead.py)
#   launch                 plan launches against Inductor's (python benchmarks/host_overhead.py --compare-launch)
#   launch_llama           where a compiled Llama with launch="inductor" leaves the plans' bits
#                          (python benchmarks/launch_llama_check.py)
#   model=MODELS:MODES     whole-model training steps       (fp4 bench --sections model --models ... --modes ...)
#   kernels[=SECTIONS]     kernel benchmarks, default quantize,linear (fp4 bench --sections ...)
#   bwd_gemm[=MODELS]      the Hopper backward GEMMs' candidates by variant, default llama1b,llama7b, from an empty
#                          kernel cache (python benchmarks/backward_gemm_variants.py)
#   study=PACK             the accuracy study on a packed corpus (benchmarks/run_study.sh; PRESET, PRECISIONS,
#                          STUDY_ARGS: more fp4 study arguments)
#   choices                the autotuner's choices the session's steps made, as one table for
#                          FP4_AUTOTUNE_CHOICES on other machines (fp4 tune export OUT/choices.json); a step
#                          takes the package's shipped tables where they have a choice, so to tune afresh run
#                          the session with FP4_SHIPPED_CHOICES=0
#   warm[=ARGS]            the first step from empty caches and again from the caches it left (a second launch of
#                          the same script), bf16 Inductor and fp4 (python benchmarks/warm_compile.py --device cuda
#                          ARGS; default the small model's sizes)
#   cold=MODELS:MODES      whole-model training steps from empty kernel, Triton and Inductor caches, as on a fresh
#                          machine, taking OUT/choices.json's autotuning choices where an earlier step exported
#                          them (results under OUT/cold; OUT/cold-choices-MODE.json: the choices a mode timed
#                          itself)
# Environment: LIMIT (seconds for the whole session, default 570: each step gets what is left, less 10 s),
#   STEPS (training steps per model mode, default 6).
# Example: bash benchmarks/gpu_session.sh gpu-results tests model=llama1b-8l:bf16_inductor,fp4_cudagraphs launch
set -u
out=${1:?usage: bash benchmarks/gpu_session.sh OUT STEP [STEP ...]}
shift
limit=${LIMIT:-570}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -q -e . >/tmp/fp4-install.log 2>&1 || cat /tmp/fp4-install.log
if [ -d .whl ]; then  # carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fp4-site .whl/*.whl && export PYTHONPATH=/tmp/fp4-site
fi
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u +"%Y-%m-%d %H:%M UTC"; } | tee "$out/card.txt"

left() { echo $(( limit - SECONDS - 10 )); }

for step in "$@"; do
  name=${step%%=*}; arg=${step#*=}; [ "$arg" = "$step" ] && arg=""
  [ "$name" = tests ] && arg=${arg:-tests/gpu}
  budget=$(left)
  if [ "$budget" -le 0 ]; then echo "$step: no time left"; continue; fi
  echo "== $step (${budget} s left)"
  case $name in
    tests)
      workers=$(python3 -c "import importlib.util as u; print('-n 15' if u.find_spec('xdist') else '')")
      # shellcheck disable=SC2086  # paths and worker flags split on purpose
      FP4_AUTOTUNE=0 timeout "$budget" python3 -m pytest -m gpu ${arg//,/ } -q -rfE -p no:cacheprovider \
        -p no:benchmark $workers --junitxml="$out/gpu_tests.xml" --durations=10 >"$out/gpu_tests.txt" 2>&1
      echo "exit $? at ${SECONDS} s" | tee -a "$out/gpu_tests.txt"
      tail -n 25 "$out/gpu_tests.txt" ;;
    host)
      timeout "$budget" python3 benchmarks/host_overhead.py --out "$out/host_overhead.json" >"$out/host.txt" 2>&1
      echo "exit $?"; tail -n 16 "$out/host.txt" ;;
    launch)
      timeout "$budget" python3 benchmarks/host_overhead.py --compare-launch --out "$out/host_launch.json" \
        >"$out/launch.txt" 2>&1
      echo "exit $?"; tail -n 12 "$out/launch.txt" ;;
    launch_llama)
      timeout "$budget" python3 benchmarks/launch_llama_check.py --out "$out/launch_llama.json" >"$out/launch_llama.txt" 2>&1
      echo "exit $?"; tail -n 16 "$out/launch_llama.txt" ;;
    model)
      timeout "$budget" python3 -m fp4.bench --sections model --models "${arg%%:*}" --modes "${arg#*:}" \
        --steps "${STEPS:-6}" --out "$out/model" >"$out/model.txt" 2>&1
      echo "exit $?"; rm -f "$out/model/bench.json"; grep -E "median|failed" "$out/model.txt" | tail -n 20 ;;
    kernels)
      timeout "$budget" python3 -m fp4.bench --sections "${arg:-quantize,linear}" --out "$out/kernels" \
        >"$out/kernels.txt" 2>&1
      echo "exit $?"; cat "$out/kernels/"*.md 2>/dev/null || tail -n 40 "$out/kernels.txt" ;;
    bwd_gemm)
      FP4_CACHE_DIR=$(mktemp -d) FP4_AUTOTUNE_CHOICES="" FP4_SHIPPED_CHOICES=0 timeout "$budget" python3 benchmarks/backward_gemm_variants.py \
        --models "${arg:-llama1b,llama7b}" --out "$out/bwd_gemm.json" >"$out/bwd_gemm.txt" 2>&1
      echo "exit $?"; grep -v -i warn "$out/bwd_gemm.txt" | tail -n 14 ;;
    warm)
      # shellcheck disable=SC2086  # the arguments split on purpose
      timeout "$budget" python3 benchmarks/warm_compile.py --device cuda ${arg:---dim 512 --layers 6 --batch 32 --seq 512} \
        --out "$out/warm_compile.json" >"$out/warm.txt" 2>&1
      echo "exit $?"; tail -n 6 "$out/warm.txt" ;;
    study)
      # shellcheck disable=SC2086  # STUDY_ARGS splits on purpose
      timeout "$budget" bash benchmarks/run_study.sh "$arg" "$out/study" ${STUDY_ARGS:-} >/dev/null 2>&1
      echo "exit $?"; rm -f "$out/study/install.log"; tail -n 30 "$out/study/study.log" ;;
    choices)
      python3 -m fp4.cli tune export "$out/choices.json" ;;
    cold)
      # one process and one set of empty caches per mode, so no mode reuses another's compiled kernels
      imported=""; [ -f "$out/choices.json" ] && imported="$out/choices.json"
      echo "imported choices: ${imported:-none}" | tee "$out/cold.txt"
      IFS=, read -ra cold_modes <<<"${arg#*:}"
      for mode in "${cold_modes[@]}"; do
        [ "$(left)" -le 0 ] && { echo "$mode: no time left" | tee -a "$out/cold.txt"; continue; }
        fresh=$(mktemp -d)
        FP4_CACHE_DIR="$fresh/fp4" TRITON_CACHE_DIR="$fresh/triton" TORCHINDUCTOR_CACHE_DIR="$fresh/inductor" \
          FP4_AUTOTUNE_CHOICES="$imported" timeout "$(left)" python3 -m fp4.bench --sections model \
          --models "${arg%%:*}" --modes "$mode" --steps "${STEPS:-6}" --out "$fresh/out" >>"$out/cold.txt" 2>&1
        echo "$mode: exit $?" | tee -a "$out/cold.txt"
        # what the mode chose where it timed candidates itself: a table to ship or import elsewhere
        FP4_CACHE_DIR="$fresh/fp4" python3 -m fp4.cli tune export "$out/cold-choices-$mode.json" >/dev/null 2>&1 \
          || rm -f "$out/cold-choices-$mode.json"
        # each record says how it started: empty caches, and whether it took the session's choices
        python3 -c 'import json, sys; rows = json.load(open(sys.argv[1]))
for row in rows: row.update(caches="empty", imported_choices=bool(sys.argv[2]))
json.dump(rows, open(sys.argv[3], "w"), indent=1)' "$fresh"/out/bench_model_*.json "$imported" "$out/cold-$mode.json" \
          2>/dev/null
        rm -rf "$fresh"
      done
      grep -E "median|failed|first" "$out/cold.txt" | tail -n 20 ;;
    *)
      echo "unknown step $step (tests, host, launch, launch_llama, model=MODELS:MODES, kernels, bwd_gemm, study=PACK, choices, cold=MODELS:MODES)"
      exit 2 ;;
  esac
done
