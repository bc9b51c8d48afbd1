#!/usr/bin/env bash
# One prepared GPU measurement of SSP + APE per scoring mode and of feature extraction
# (< 5 min on one GPU); a thin driver of benchmarks/bench_gpu.py (see its docstring).
#
#   bash benchmarks/gpu.sh                      # full sizes; uses this checkout's ssp
#   SSP_GPU_SH_QUICK=1 bash benchmarks/gpu.sh   # smoke run at the benchmarks' --quick sizes
#
# Prints the tables and writes gpu-<host>-<time>.txt (the output) and .json (every figure) in
# $SSP_GPU_SH_OUT (default: benchmarks/results/), so runs can be compared across machines.
# More rows at the ImageNet size (GDA / ProKeR ...): benchmarks/bench_gpu_extra.py defining
# imagenet_rows(data, device).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${SSP_GPU_SH_OUT:-$REPO/benchmarks/results}"
mkdir -p "$OUT"
STEM="$OUT/gpu-$(hostname -s 2>/dev/null || echo host)-$(date +%Y%m%d-%H%M%S)"
ARGS=(--json "$STEM.json")
[[ -n "${SSP_GPU_SH_QUICK:-}" ]] && ARGS+=(--quick)
python3 benchmarks/bench_gpu.py "${ARGS[@]}" "$@" 2>&1 | tee "$STEM.txt"
