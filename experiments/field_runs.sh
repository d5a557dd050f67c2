#!/usr/bin/env bash
# The field issue's long runs, the headline numbers (results/field/NAME). Each is a chain of stages,
# float -> W4A4 -> W2A2 -> W1A2 (the ablation's progressive lever, results/recipe-ablation), each stage
# `--init` the one before, trained in runs/field/NAME/STAGE (git-ignored, resumable); the runs named
# run side by side, one thread each.
#   bash experiments/field_runs.sh train DATA NAME...   train (or resume) these runs in the background
#   bash experiments/field_runs.sh finish DATA NAME...  a finished run's results into results/field/NAME: the last
#                                                       stage's metrics (each stage's under stages/), a weights-only
#                                                       checkpoint, eval.json (`pixelq eval`), and for the quantized
#                                                       runs model.pxq, run.json (`pixelq run`: the integer runtime's
#                                                       top-1) and results/bench/runtime-field-NAME.json (`pixelq
#                                                       bench --model`, the trainings in flight paused meanwhile)
#   bash experiments/field_runs.sh snapshot NAME...     copy each run's stage in progress (its checkpoint) and
#                                                       the finished stages' metrics to results/field/NAME/resume/,
#                                                       for git (at most every 25 epochs: the repository must
#                                                       stay small), so a fresh clone resumes where it was
# Recipe: cifar-w1a2 (Adam, cosine), distilled from the float ResNet-20 (--teacher), a signed 4-bit
# residual stream, airbench's alternating flip; STAGES epochs each (default 40 40 120: 200 in all).
#   resnet20-fq             pixel embedding first, binary weights, 2-bit codes, quantized last layer; the
#                           first stage starts from the float ResNet-20 (--init)
#   resnet20-fq-float-ends  the same network and recipe with a float first conv and a float last layer
#   cnv-fq                  CNV, pixel embedding first, quantized last layer (no residual stream, no float
#                           CNV to start from)
# (resnet20-float needs no run of its own: results/recipe/resnet20-float's 88.07 % is within 0.5 point of
# 91.25 % less the JPEG copy's 3.29, results/calibration/summary.json.)
set -euo pipefail
MODE=${1:?usage: $0 train DATA NAME... | snapshot NAME...}
shift
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
read -r -a EPOCHS <<< "${STAGES:-40 40 120}"
BITS=(4 2 1)  # weight bits per stage; activations 4, 2, 2
ABITS=(4 2 2)
FLOAT=results/recipe/resnet20-float/checkpoint.pt
COMMON="--recipe cifar-w1a2 --teacher $FLOAT --flip alternate"
R4S="--residual-bits 4 --signed-residual"

declare -A SETTINGS=(
  [resnet20-fq]="$COMMON $R4S"
  [resnet20-fq-float-ends]="$COMMON $R4S --first-layer float --last-layer float"
  [cnv-fq]="$COMMON --model cnv"
)
declare -A START=([resnet20-fq]=$FLOAT [resnet20-fq-float-ends]=$FLOAT [cnv-fq]="")
declare -A EXPORTED=([resnet20-fq]=1 [cnv-fq]=1)  # fully quantized: a .pxq for the integer runtime

stage_name() { echo "w${BITS[$1]}a${ABITS[$1]}"; }

# The stages of run $1, one after the other (a finished stage, one with metrics.json, is skipped).
chain() {
  local name=$1 init=${START[$1]} i out
  for i in 0 1 2; do
    out=runs/field/$name/$(stage_name "$i")
    if [ ! -f "$out/metrics.json" ]; then
      # shellcheck disable=SC2086  # the settings are words
      $PIXELQ train --data "$DATA" ${SETTINGS[$name]} ${init:+--init "$init"} --wbits "${BITS[$i]}" \
        --abits "${ABITS[$i]}" --epochs "${EPOCHS[$i]}" --threads 1 --out "$out" --resume --quiet
    fi
    init=$out/checkpoint.pt
  done
}

case $MODE in
train)
  DATA=${1:?usage: $0 train DATA NAME...}
  shift
  mkdir -p logs
  for name in "$@"; do
    [ -n "${SETTINGS[$name]:-}" ] || { echo "unknown run $name; runs: ${!SETTINGS[*]}" >&2; exit 1; }
    saved=results/field/$name/resume
    for stage in "$saved"/*/; do  # a fresh clone: what the last snapshot kept
      [ -d "$stage" ] || continue
      run=runs/field/$name/$(basename "$stage")
      mkdir -p "$run"
      for f in "$stage"*; do [ ! -f "$f" ] || [ -f "$run/$(basename "$f")" ] || cp "$f" "$run/"; done
    done
    chain "$name" >> "logs/field-$name.log" 2>&1 &
    echo "$name: pid $!, log logs/field-$name.log"
  done
  ;;
snapshot)
  for name in "$@"; do
    rm -rf "results/field/$name/resume"
    for i in 0 1 2; do
      stage=$(stage_name "$i") run=runs/field/$name/$(stage_name "$i")
      [ -f "$run/metrics.jsonl" ] || continue  # not begun, or not one epoch yet
      mkdir -p "results/field/$name/resume/$stage"
      cp "$run"/metrics.json* "results/field/$name/resume/$stage/" 2>/dev/null || true
      # the checkpoint of the stage in progress, or of the last finished one while the next has none
      # yet (its --init); an earlier stage's work is in the later one's
      next=runs/field/$name/$(stage_name $((i + 1)) 2>/dev/null || true)
      if [ -f "$run/checkpoint.pt" ] && { [ ! -f "$run/metrics.json" ] || [ ! -f "$next/checkpoint.pt" ]; }; then
        cp "$run/checkpoint.pt" "results/field/$name/resume/$stage/checkpoint.pt"
        echo "$name: $stage at epoch $(wc -l < "$run/metrics.jsonl")"
      fi
    done
  done
  ;;
finish)
  DATA=${1:?usage: $0 finish DATA NAME...}
  shift
  for name in "$@"; do
    last=runs/field/$name/$(stage_name 2) out=results/field/$name
    if [ ! -f "$last/metrics.json" ]; then
      echo "$name: not finished ($last/metrics.json missing)" >&2
      continue
    fi
    for i in 0 1 2; do
      mkdir -p "$out/stages/$(stage_name "$i")"
      cp "runs/field/$name/$(stage_name "$i")"/metrics.json* "$out/stages/$(stage_name "$i")/"
    done
    cp "$last"/metrics.json* "$out/"
    ${PYTHON:-.venv/bin/python} -c "import sys; from pixelq.training import save_weights_only; save_weights_only(*sys.argv[1:])" \
      "$last/checkpoint.pt" "$out/checkpoint.pt"
    $PIXELQ eval --checkpoint "$out/checkpoint.pt" --data "$DATA" > "$out/eval.json"
    if [ -n "${EXPORTED[$name]:-}" ]; then
      $PIXELQ export "$out/checkpoint.pt" -o "$out/model.pxq"
      $PIXELQ run "$out/model.pxq" --data "$DATA" > "$out/run.json"
      if [ "${FIELD_BENCH:-1}" != 0 ]; then  # FIELD_BENCH=0: no timing (a quick check of the rest)
        paused=$(pgrep -f "pixelq train" | tr '\n' ' ' || true)
        [ -z "$paused" ] || kill -STOP $paused
        timed=0
        $PIXELQ bench --model "$out/model.pxq" --json "results/bench/runtime-field-$name.json" || timed=$?
        [ -z "$paused" ] || kill -CONT $paused
        [ "$timed" -eq 0 ] || exit "$timed"
      fi
    fi
    rm -rf "$out/resume"  # the in-flight snapshots: the run is done
    echo "$name: finished into $out (git add -f $out/checkpoint.pt)"
  done
  ;;
*)
  echo "unknown mode $MODE: train, finish or snapshot" >&2
  exit 1
  ;;
esac
