#!/usr/bin/env bash
# The foundation issue's three ResNet-20 runs on full CIFAR-10-JPEG, one shared schedule.
#   bash experiments/foundation_cifar10.sh PATH/TO/cifar10-jpeg.tar.gz [EPOCHS]
# Resumable: run it again after an interruption and each run continues from its checkpoint.
set -euo pipefail
DATA=${1:?usage: $0 DATA [EPOCHS]}
EPOCHS=${2:-15}
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
OUT=results/cifar10-jpeg
COMMON=(--data "$DATA" --model resnet20 --epochs "$EPOCHS" --batch-size 128 --optimizer adam --lr 0.002
        --weight-decay 5e-4 --schedule cosine --seed 0 --resume --quiet)

$PIXELQ train "${COMMON[@]}" --out $OUT/resnet20-w1a2-pe-qlast \
  --first-layer pixel-embedding --pe-dim 10 --pe-bits 2 --wbits 1 --abits 2 --last-layer quantized
$PIXELQ train "${COMMON[@]}" --out $OUT/resnet20-w1a2-float-first --wbits 1 --abits 2
$PIXELQ train "${COMMON[@]}" --out $OUT/resnet20-float

# The fully quantized run: re-evaluate its checkpoint, export it, check the integer runtime against it.
RUN=$OUT/resnet20-w1a2-pe-qlast
$PIXELQ eval --checkpoint $RUN/checkpoint.pt --data "$DATA" > $RUN/eval.json
${PYTHON:-.venv/bin/python} experiments/verify_deployment.py $RUN --data "$DATA"
${PYTHON:-.venv/bin/python} experiments/render_foundation_results.py
