#!/usr/bin/env bash
# The recipe runs' trained networks on the integer runtime: export each finished (or in-flight) run's
# checkpoint to .pxq and time it with `pixelq bench` (PyTorch fp32 and ONNX Runtime int8 timed in the
# same run), one run after the other. Trainings in flight on this machine (`pixelq train`) are paused
# (SIGSTOP) while it times, so they do not share its cores, and continued when it ends, however it ends.
#   bash experiments/bench_recipe_runs.sh [RUN ...]   # default: the 2-bit and the 4-bit signed stream
set -euo pipefail
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
TMP=$(mktemp -d)
PAUSED=$(pgrep -f "pixelq train" | tr '\n' ' ' || true)
trap '[ -z "$PAUSED" ] || kill -CONT $PAUSED; rm -rf "$TMP"' EXIT
if [ -n "$PAUSED" ]; then
  echo "pausing the trainings in flight (pids $PAUSED) while timing" >&2
  kill -STOP $PAUSED
fi
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(resnet20-w1a2-pe-qlast resnet20-w1a2-pe-qlast-r4s)
for run in "${RUNS[@]}"; do
  $PIXELQ export "results/recipe/$run/checkpoint.pt" -o "$TMP/$run.pxq"
  $PIXELQ bench --model "$TMP/$run.pxq" --json "results/bench/runtime-$run.json"
done
${PYTHON:-.venv/bin/python} experiments/render_recipe_results.py > /dev/null
