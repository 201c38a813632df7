#!/usr/bin/env bash
# Regenerates the bundled demo model (edge/bundled/model.onnx + manifest) with the project's own
# tools. Needs the full ELPV data in ../shared/data/elpv (the committed model does not): the model
# is trained on the ELPV cells that are NOT among the 50 demo cells of trainer/sample_data/elpv_mini,
# so `make demo` judges cells it never saw. Run from the repository root: `make bundled-model`.
#
# Members (docs/benchmarks.md, sections detection and tuned_head_reading): the patch head (a
# classifier of ImageNet-pretrained EfficientNet-Lite0 patch features with stages 3-4 re-trained,
# --tune-from-stage 3, its loss balanced over 8 clusters of the cells' look, --balance-styles 8;
# HEAD_ARGS= keeps the backbone frozen and the loss plain) taught with 500 labelled defective cells
# (a demo model may use every label it has; the benchmark rows use k = 10 and 1), on per-image
# standardised input, 224 px. KNN=1 adds the patch kNN familiarity member (1024-patch coreset) fused
# by FUSION (default max). It is off because with 500 labels it does not pay: on this recipe's own
# held-out cells (368 good / 201 defective) the head alone scored AUROC 0.942, misses at 5% FAR 0.274,
# the hybrid with the kNN (max) 0.926 / 0.294; on the demo cells the kNN raised 5 of the 6 false
# alarms (good cells of a look the training good cells barely contain). About 25 minutes on 2 cores.
# LOOKS (default auto, which finds 2 looks here: mono and poly cells) standardises each cell's score against
# held-out good cells of its own look (docs/twohead.md, "Per-look fusion constants"). With it one shared
# threshold meets the demo bar too: 13 of 14 caught, 2 false alarms of 36 (cell0004 scores 2.161 against the
# threshold 2.142: a thin margin), and the per-line thresholds 1 (LOOKS=1: 5 false alarms at the shared
# threshold, 1 per line), for 0.004 less held-out AUROC (0.937 vs 0.941; misses at the calibrated threshold 58
# vs 53 of 201); docs/benchmarks.md, detection_reading, session 16.
# The manifest gets a calibration entry per line (cell type) besides the shared one: see the end.
# --heads 1: the committed model is one head; edge-train's default ensemble of 3 (2026-12-05) was
# measured with 10 and 1 labels, not with this recipe's 500, so the script keeps what was measured.
set -euo pipefail
BIN=${BIN:-.venv/bin}
SAMPLE=trainer/sample_data/elpv_mini
DATA=${DATA:-runs/data/elpv_minus_demo}
RUNS=${RUNS:-runs/bundled}
OUT=${OUT:-edge/bundled}
# BACKBONE=lite0 and HEADS=1: the committed model's (edge-train's defaults became lite2 and 3 heads on
# 2026-12-05, measured with 10 and 1 labels, not with this recipe). Candidates with other values go to their
# own RUNS and OUT folders, so that the committed model changes only when one is chosen.
BACKBONE=${BACKBONE:-lite0}
HEADS=${HEADS:-1}
COMMON="--data $DATA --k 500 --size 224 --standardize --backbone $BACKBONE --seed 0 --quiet"
$BIN/python deploy/bundled_training_data.py --elpv ../shared/data/elpv --exclude $SAMPLE --out $DATA
if [ "${KNN:-0}" = 1 ] && [ ! -f $RUNS/patch_knn/metrics.json ]; then
    $BIN/edge-train familiarity $COMMON --bank-size 1024 --out $RUNS/patch_knn --overwrite
fi
[ -f $RUNS/patch_head/metrics.json ] || \
    $BIN/edge-train patch-head $COMMON --heads $HEADS ${HEAD_ARGS---tune-from-stage 3 --balance-styles 8} --out $RUNS/patch_head --overwrite
KNN_RUN=$([ "${KNN:-0}" = 1 ] && echo "--familiarity $RUNS/patch_knn" || true)
$BIN/edge-train hybrid $KNN_RUN --patch-head $RUNS/patch_head --fusion ${FUSION:-max} --looks ${LOOKS:-auto} \
    --out $RUNS/hybrid --overwrite
# 5% false alarms at 95% confidence from the run's held-out good cells (300 of them by the default
# hold-out rule, trainer/run_setup.py validation_count)
rm -f $RUNS/hybrid/calibration.json  # a re-run's hybrid is a new model: edge-calibrate refuses the old file
$BIN/edge-calibrate --run $RUNS/hybrid --target-far 0.05 --no-plots
mkdir -p $OUT
$BIN/edge-export --run $RUNS/hybrid --calibration $RUNS/hybrid/calibration.json --out $OUT/model.onnx
# One entry per line: `make demo` plays the mono and the poly cells as two cameras (two lines), each at a
# threshold fitted on held-out good cells of its own type (5% false alarms at 95% confidence, as above).
# Good mono cells score higher than good poly ones, so the shared entry * above is too low for a mono line
# and too high for a poly line (docs/benchmarks.md, tuned_head_reading).
rm -rf $RUNS/heldout_by_type
$BIN/python deploy/heldout_by_type.py --run $RUNS/hybrid --out $RUNS/heldout_by_type
for kind in mono poly; do
    rm -f $RUNS/calibration_$kind.json  # fitted for the previous model of a re-run
    $BIN/edge-calibrate --engine $OUT/model.onnx --good $RUNS/heldout_by_type/$kind/good \
        --defective $RUNS/heldout_by_type/$kind/defective --camera $kind --target-far 0.05 --no-plots \
        --out $RUNS/calibration_$kind.json --update $OUT/model.onnx.manifest.json
done
ls -l $OUT
