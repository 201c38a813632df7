#!/usr/bin/env bash
# Regenerates the bundled demo model (edge/bundled/model.onnx + manifest) with the project's own
# tools, from the embedded 50-cell ELPV sample: train the LAMP autoencoder and the two-head scorer,
# fuse them, calibrate on the held-out good cells, export to ONNX with the calibration embedded.
# About a minute on 2 cores. Run from the repository root: `make bundled-model`.
#
# The sample is tiny: the model is a demonstration of the pipeline, not an inspector. Its
# threshold uses the weaker `marginal` guarantee at a 10% false-alarm target, because the
# sample holds out too few good cells for the default (pac, 95%) guarantee (docs/calibration.md).
set -euo pipefail
BIN=${BIN:-.venv/bin}
SAMPLE=trainer/sample_data/elpv_mini
RUNS=${RUNS:-runs/bundled}
OUT=edge/bundled
$BIN/edge-train ae --data $SAMPLE --size 112 --epochs 60 --seed 0 --quiet --out $RUNS/ae --overwrite
$BIN/edge-train scorer --data $SAMPLE --k 5 --size 112 --epochs 4 --steps-per-epoch 10 --seed 0 \
    --n-normal 16 --n-anomaly 8 --lr 1e-3 --quiet --out $RUNS/scorer --overwrite
$BIN/edge-train hybrid --ae $RUNS/ae --scorer $RUNS/scorer --out $RUNS/hybrid --overwrite
$BIN/edge-calibrate --run $RUNS/hybrid --data $SAMPLE --target-far 0.1 --guarantee marginal --no-plots
mkdir -p $OUT
$BIN/edge-export --run $RUNS/hybrid --calibration $RUNS/hybrid/calibration.json --out $OUT/model.onnx
ls -l $OUT
