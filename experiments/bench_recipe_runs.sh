#!/usr/bin/env bash
# The recipe runs' trained networks on the integer runtime: export each finished (or in-flight) run's
# checkpoint to .pxq and time it with `pixelq bench` (PyTorch fp32 and ONNX Runtime int8 timed in the
# same run), one run after the other. Time with no training running on the same cores.
#   bash experiments/bench_recipe_runs.sh [RUN ...]   # default: the 2-bit and the 4-bit signed stream
set -euo pipefail
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(resnet20-w1a2-pe-qlast resnet20-w1a2-pe-qlast-r4s)
for run in "${RUNS[@]}"; do
  $PIXELQ export "results/recipe/$run/checkpoint.pt" -o "$TMP/$run.pxq"
  $PIXELQ bench --model "$TMP/$run.pxq" --json "results/bench/runtime-$run.json"
done
${PYTHON:-.venv/bin/python} experiments/render_recipe_results.py > /dev/null
