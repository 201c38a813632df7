# `make demo` and `make test` work on a fresh clone: they build .venv themselves.
# torch is pinned in setup.cfg (train extra) to the CPU build this machine has on disk.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench-ae clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded sample (50 ELPV cells): train + evaluate, well under a minute on 2 cores.
demo: $(STAMP)
	$(BIN)/edge-train ae --data trainer/sample_data/elpv_mini --size 64 --epochs 150 \
		--out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# LAMP on vs. off on ELPV, 3 seeds each; writes docs/benchmarks.md (tens of minutes on 2 cores).
bench-ae: $(STAMP)
	$(BIN)/python bench/lamp_elpv.py

clean:
	rm -rf $(VENV) runs .pytest_cache
