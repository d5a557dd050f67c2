#!/usr/bin/env bash
# The recipe issue's ResNet-20 runs on full CIFAR-10-JPEG: the float network on the cifar-float
# recipe, then four W1A2 networks on the cifar-w1a2 recipe, each started from the float network
# (--init) and distilled from it (--teacher), and the fully quantized one again with a 4-bit residual
# stream and a signed residual branch (-r4s). Every run resumes where it stopped: run it again.
#   bash experiments/recipe_cifar10.sh PATH/TO/cifar10-jpeg.tar.gz [RUN ...]   # default: all, in order
set -euo pipefail
DATA=${1:?usage: $0 DATA [RUN ...]}
shift
PIXELQ=${PIXELQ:-.venv/bin/pixelq}
OUT=results/recipe
FLOAT=$OUT/resnet20-float/checkpoint.pt
W1A2=(--recipe cifar-w1a2 --init "$FLOAT" --teacher "$FLOAT")

declare -A RUNS=(
  [resnet20-float]="--recipe cifar-float"
  [resnet20-w1a2-pe-qlast]="${W1A2[*]}"
  [resnet20-w1a2-float-first]="${W1A2[*]} --first-layer float --last-layer float"
  [resnet20-w1a2-pe]="${W1A2[*]} --last-layer float"
  [resnet20-w1a2-int8-first]="${W1A2[*]} --first-layer int8 --last-layer float"
  [resnet20-w1a2-pe-qlast-r4s]="${W1A2[*]} --residual-bits 4 --signed-residual"
)
ORDER=(resnet20-float resnet20-w1a2-pe-qlast resnet20-w1a2-float-first resnet20-w1a2-pe resnet20-w1a2-int8-first
       resnet20-w1a2-pe-qlast-r4s)

for name in "${@:-${ORDER[@]}}"; do
  # shellcheck disable=SC2086  # the settings are words
  $PIXELQ train --data "$DATA" --out "$OUT/$name" --resume --quiet ${RUNS[$name]:?unknown run $name}
  $PIXELQ eval --checkpoint "$OUT/$name/checkpoint.pt" --data "$DATA" > "$OUT/$name/eval.json"
done
${PYTHON:-.venv/bin/python} experiments/render_recipe_results.py
