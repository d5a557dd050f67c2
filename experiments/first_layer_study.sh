#!/usr/bin/env bash
# The first-layer study (ResNet-20 W1A2, every first-layer method) on a data set, then its report.
#   bash experiments/first_layer_study.sh PATH/TO/cifar10-jpeg.tar.gz [THREADS]
# Resumable: run it again after an interruption; finished runs are skipped and the run in flight
# continues from its last epoch's checkpoint (commit that checkpoint to resume on another machine).
set -euo pipefail
DATA=${1:?usage: $0 DATA [THREADS]}
THREADS=${2:-2}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=results/first-layer-study

$PYTHON experiments/first_layer_study.py --data "$DATA" --out $OUT --seeds 0 1 2 --epochs 20 \
  --ablation-epochs 10 --ablation-train-subset 10000 --threads "$THREADS" --quiet
$PYTHON experiments/first_layer_report.py $OUT
