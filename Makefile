# `make demo` and `make test` work on a fresh clone: they build .venv themselves.
# torch is pinned in setup.cfg (train extra) to the CPU build this machine has on disk.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench-ae bench-twohead clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded sample (50 ELPV cells): the whole trainer chain, novelty model
# (LAMP autoencoder), familiarity model (two-head scorer with SaliencyCut, 5 labelled defects)
# and their hybrid, each trained and evaluated, then the hybrid exported to ONNX with its
# manifest (parity-checked against torch). About a minute on 2 cores. (The 50-image sample
# holds out too few good images for a calibrated threshold: see docs/calibration.md.)
SAMPLE := trainer/sample_data/elpv_mini
demo: $(STAMP)
	$(BIN)/edge-train ae --data $(SAMPLE) --size 112 --epochs 60 --out runs/demo/ae --overwrite
	$(BIN)/edge-train scorer --data $(SAMPLE) --k 5 --size 112 --epochs 4 --steps-per-epoch 10 \
		--n-normal 16 --n-anomaly 8 --lr 1e-3 --out runs/demo/scorer --overwrite
	$(BIN)/edge-train hybrid --ae runs/demo/ae --scorer runs/demo/scorer --out runs/demo/hybrid --overwrite
	$(BIN)/edge-export --run runs/demo/hybrid --out runs/demo/model.onnx

test: $(STAMP)
	$(BIN)/python -m pytest -q

# LAMP on vs. off on ELPV, 3 seeds each; writes docs/benchmarks.md (about an hour on 2 cores).
bench-ae: $(STAMP)
	$(BIN)/python bench/lamp_elpv.py

# Two-head (CutPaste, SaliencyCut) and hybrid on ELPV, k = 10 and 1, 3 seeds; needs bench-ae first.
bench-twohead: $(STAMP)
	$(BIN)/python bench/twohead_elpv.py

clean:
	rm -rf $(VENV) runs .pytest_cache
