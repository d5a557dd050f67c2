#!/usr/bin/env bash
# What each ingredient of the W1A2 recipe is worth: the cifar-w1a2 recipe (init from float, KD from
# float, cosine) at a shorter budget, and the same with one ingredient switched off or changed, two
# seeds each. SAQ doubles the work per step, so it is compared at equal epochs and, against the
# base run at twice the epochs, at equal compute. residual-4bit is not switched off but added: a
# 4-bit residual stream (--residual-bits 4), the convs still reading 2-bit codes; residual-4bit-signed
# adds a signed residual branch to it (--signed-residual). "A+lever" variants add one lever to variant A
# (the field issue's candidates: a weight average, label smoothing, airbench94 as the teacher - its
# checkpoint from experiments/calibration_airbench.py, AIRBENCH below -, a 4x schedule, learned offsets
# before each block's input quantizer, airbench's alternating flip). "progressive" spends the same
# epochs in three stages, float -> W4A4 -> W2A2 -> W1A2 (APoT's recipe), each stage --init the one
# before; its first two stages train under runs/ (git-ignored), only the last one's metrics are kept.
# Resumable: run it again after an interruption (a finished run, one with metrics.json, is skipped);
# ONLY="a b" runs only those variants.
#   bash experiments/recipe_ablation.sh DATA [EPOCHS] [TRAIN_SUBSET]
set -euo pipefail
DATA=${1:?usage: $0 DATA [EPOCHS] [TRAIN_SUBSET]}
EPOCHS=${2:-15}
SUBSET=${3:-10000}
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
OUT=${OUT:-results/recipe-ablation}
FLOAT=results/recipe/resnet20-float/checkpoint.pt
AIRBENCH=${AIRBENCH:-runs/calibration/airbench94-s0/checkpoint.pt}
R4S="--init $FLOAT --teacher $FLOAT --residual-bits 4 --signed-residual"
BASE=(--recipe cifar-w1a2 --epochs "$EPOCHS" --train-subset "$SUBSET")

declare -A VARIANTS=(
  [base]="--init $FLOAT --teacher $FLOAT"
  [no-init]="--teacher $FLOAT"
  [no-kd]="--init $FLOAT"
  [saq]="--init $FLOAT --teacher $FLOAT --saq 0.4"
  [base-2x-epochs]="--init $FLOAT --teacher $FLOAT --epochs $((2 * EPOCHS))"
  [step-schedule]="--init $FLOAT --teacher $FLOAT --schedule step"
  [residual-4bit]="--init $FLOAT --teacher $FLOAT --residual-bits 4"
  [residual-4bit-signed]="$R4S"
  [residual-8bit-signed]="--init $FLOAT --teacher $FLOAT --residual-bits 8 --signed-residual"
  [residual-4bit-signed+ema]="$R4S --ema 0.995"
  [residual-4bit-signed+label-smoothing]="$R4S --label-smoothing 0.1"
  # airbench94 trains with label smoothing 0.2, so its outputs are soft already: distil at temperature 1
  [residual-4bit-signed+airbench-teacher]="--init $FLOAT --teacher $AIRBENCH --kd-temperature 1 --residual-bits 4 --signed-residual"
  [residual-4bit-signed+4x-epochs]="$R4S --epochs $((4 * EPOCHS))"
  [residual-4bit-signed+offsets]="$R4S --input-offsets"
  [residual-4bit-signed+alternating-flip]="$R4S --flip alternate"
)
STAGE_EPOCHS=$(((EPOCHS + 2) / 3))
STAGES=${STAGES:-runs/ablation-stages}

# residual-4bit-signed+progressive, seed $1: W4A4 and W2A2 stages under $STAGES, then W1A2 in results.
progressive() {
  local seed=$1 init=$FLOAT stage
  for stage in 4 2; do
    # shellcheck disable=SC2086
    $PIXELQ train --data "$DATA" "${BASE[@]}" --epochs "$STAGE_EPOCHS" --init "$init" --teacher $FLOAT \
      --residual-bits 4 --signed-residual --wbits "$stage" --abits "$stage" --seed "$seed" \
      --out "$STAGES/w${stage}a${stage}-s$seed" --resume --quiet
    init=$STAGES/w${stage}a${stage}-s$seed/checkpoint.pt
  done
  $PIXELQ train --data "$DATA" "${BASE[@]}" --epochs $((EPOCHS - 2 * STAGE_EPOCHS)) --init "$init" --teacher $FLOAT \
    --residual-bits 4 --signed-residual --seed "$seed" --out "$OUT/residual-4bit-signed+progressive-s$seed" \
    --resume --quiet
}

ORDER=${ONLY:-base no-init no-kd saq base-2x-epochs step-schedule residual-4bit residual-4bit-signed
  residual-8bit-signed residual-4bit-signed+ema residual-4bit-signed+label-smoothing
  residual-4bit-signed+airbench-teacher residual-4bit-signed+4x-epochs residual-4bit-signed+offsets
  residual-4bit-signed+alternating-flip residual-4bit-signed+progressive}
for seed in 0 1; do
  for name in $ORDER; do
    [ -f "$OUT/$name-s$seed/metrics.json" ] && continue
    if [ "$name" = residual-4bit-signed+progressive ]; then progressive "$seed"; continue; fi
    # shellcheck disable=SC2086  # the settings are words
    $PIXELQ train --data "$DATA" "${BASE[@]}" ${VARIANTS[$name]} --seed "$seed" --out "$OUT/$name-s$seed" --resume --quiet
  done
done
${PYTHON:-.venv/bin/python} experiments/render_recipe_results.py
