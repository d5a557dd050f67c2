#!/usr/bin/env bash
# The field issue's long runs, the headline numbers (results/field/NAME). Each trains in runs/field/NAME
# (git-ignored, resumable), the runs named side by side, one thread each; 200 epochs unless EPOCHS says.
#   bash experiments/field_runs.sh train DATA NAME...   train (or resume) these runs in the background
#   bash experiments/field_runs.sh snapshot NAME...     copy each run's checkpoint to results/field/NAME/resume.pt,
#                                                       for `git add -f` (at most every 25 epochs: the repository
#                                                       must stay small), so a fresh clone can resume it
# A run with no checkpoint under runs/ but a snapshot in results/ resumes from the snapshot.
# Recipe: the ablation's best (results/recipe-ablation): cifar-w1a2 from the float ResNet-20 (--init),
# distilled from it (--teacher), a signed 4-bit residual stream, airbench's alternating flip.
#   resnet20-fq             pixel embedding first, binary weights, 2-bit codes, quantized last layer
#   resnet20-fq-float-ends  the same network and recipe with a float first conv and a float last layer
#   cnv-fq                  CNV W1A2, pixel embedding first, quantized last layer (no residual stream, no
#                           float CNV to start from), distilled from the float ResNet-20
# (resnet20-float needs no run of its own: results/recipe/resnet20-float's 88.07 % is within 0.5 point of
# 91.25 % less the JPEG copy's 3.29, results/calibration/summary.json.)
set -euo pipefail
MODE=${1:?usage: $0 train DATA NAME... | snapshot NAME...}
shift
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
EPOCHS=${EPOCHS:-200}
FLOAT=results/recipe/resnet20-float/checkpoint.pt
LEVERS="--init $FLOAT --teacher $FLOAT --flip alternate"
R4S="--residual-bits 4 --signed-residual"

declare -A SETTINGS=(
  [resnet20-fq]="--recipe cifar-w1a2 $LEVERS $R4S --epochs $EPOCHS"
  [resnet20-fq-float-ends]="--recipe cifar-w1a2 $LEVERS $R4S --first-layer float --last-layer float --epochs $EPOCHS"
  [cnv-fq]="--recipe cifar-w1a2 --model cnv --teacher $FLOAT --flip alternate --epochs $EPOCHS"
)

case $MODE in
train)
  DATA=${1:?usage: $0 train DATA NAME...}
  shift
  mkdir -p logs
  for name in "$@"; do
    [ -n "${SETTINGS[$name]:-}" ] || { echo "unknown run $name; runs: ${!SETTINGS[*]}" >&2; exit 1; }
    run=runs/field/$name
    if [ ! -f "$run/checkpoint.pt" ] && [ -f "results/field/$name/resume.pt" ]; then
      mkdir -p "$run" && cp "results/field/$name/resume.pt" "$run/checkpoint.pt"
      [ -f "results/field/$name/metrics.jsonl" ] && cp "results/field/$name/metrics.jsonl" "$run/metrics.jsonl"
    fi
    # shellcheck disable=SC2086  # the settings are words
    nohup $PIXELQ train --data "$DATA" ${SETTINGS[$name]} --threads 1 --out "$run" --resume --quiet \
      >> "logs/field-$name.log" 2>&1 &
    echo "$name: pid $!, log logs/field-$name.log"
  done
  ;;
snapshot)
  for name in "$@"; do
    mkdir -p "results/field/$name"
    cp "runs/field/$name/checkpoint.pt" "results/field/$name/resume.pt"
    cp "runs/field/$name/metrics.jsonl" "results/field/$name/metrics.jsonl"
    echo "results/field/$name/resume.pt: epoch $(wc -l < "results/field/$name/metrics.jsonl")"
  done
  ;;
*)
  echo "unknown mode $MODE: train or snapshot" >&2
  exit 1
  ;;
esac
