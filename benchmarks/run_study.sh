#!/usr/bin/env bash
# The accuracy study (docs/accuracy.md) on one CUDA machine, no network needed: everything under OUT.
#   bash benchmarks/run_study.sh PACK [OUT] [more fp4 study arguments]
# PACK: a .fp4pack written by `fp4 study prepare` where the corpus is installed, carried to this machine.
# Environment: PRESET (default tiny), PRECISIONS (default bf16,fp4; e.g. bf16,fp4,fp4:quartet2,fp4:nvfp4),
#   FP4_AUTOTUNE (default 0 here: each kernel's default configuration, no timing of candidates on the first step).
set -u
export FP4_AUTOTUNE=${FP4_AUTOTUNE:-0}
pack=${1:?usage: bash benchmarks/run_study.sh PACK [OUT] [fp4 study arguments]}
out=${2:-study-results}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-build-isolation -q -e . >"$out/install.log" 2>&1 || cat "$out/install.log"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "FP4_AUTOTUNE=$FP4_AUTOTUNE"; } | tee "$out/card.txt"
set -o pipefail
python3 -m fp4.study --pack "$pack" --preset "${PRESET:-tiny}" --precisions "${PRECISIONS:-bf16,fp4}" --out "$out" "$@" \
  2>&1 | tee "$out/study.log"
