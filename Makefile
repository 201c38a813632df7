# `make demo` and `make test` work on a fresh clone: they build .venv themselves.
# torch is pinned in setup.cfg (train extra) to the CPU build this machine has on disk.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install broker chromium demo demo-plc train-demo bundled-model test sdd-data bench-floors bench-detection bench-ae bench-twohead bench-runtime bench-pipeline bench-latency bench-stage-modes bench-view clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,dev,plc,backbones]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: the bundled model (edge/bundled, made by `make bundled-model`)
# scores the 50 bundled ELPV cells through the whole pipeline (capture -> preprocess -> score -> alert
# over ZeroMQ), while edge-alerts, the reference PLC/MES subscriber, prints every verdict. The cells play
# as two lines, one camera per cell type (mono, poly), each judged at its own calibrated threshold (the
# manifest's entries `mono` and `poly`, fitted on held-out good cells of that type: docs/calibration.md).
# Ends by itself with a summary (frames, defects, fps, p99 latency) and the verdicts against the labels.
SAMPLE := trainer/sample_data/elpv_mini
DEMO_ALERTS := tcp://127.0.0.1:5560
DEMO_DB := runs/demo/alerts.sqlite
DEMO_LINES := runs/demo/lines
demo: $(STAMP)
	@mkdir -p runs/demo && rm -f $(DEMO_DB)
	@$(BIN)/python -m edge.demo_lines --images $(SAMPLE)/images --labels $(SAMPLE)/labels.csv --out $(DEMO_LINES)
	@$(BIN)/edge-alerts --insecure --connect $(DEMO_ALERTS) --count 50 --timeout 60 --summary --db $(DEMO_DB) & \
	$(BIN)/edge-run --engine edge/bundled/model.onnx --source mono=$(DEMO_LINES)/mono --source poly=$(DEMO_LINES)/poly \
		--no-drop --simulated --insecure --alerts-addr $(DEMO_ALERTS) --wait-subscribers 1 --print-every 2; \
	status=$$?; wait; [ $$status -eq 0 ] || exit $$status; \
	echo "--- the verdicts against the sample's labels ($(SAMPLE)/labels.csv):"; \
	$(BIN)/python -m edge.demo_report --db $(DEMO_DB) --source mono=$(DEMO_LINES)/mono \
		--source poly=$(DEMO_LINES)/poly --labels $(SAMPLE)/labels.csv

# The demo with the PLC's last metre: edge-run judges the 50 bundled cells, edge-bridge serves the verdicts
# as Modbus TCP registers (docs/plc.md) on 127.0.0.1:$(DEMO_PLC_PORT), and a small PLC-side client
# (edge/bridge/plc_client.py) polls every 10 ms and prints the handshake: read a result, act, write its
# counter into the ack registers. Ends by itself after the 50 results.
DEMO_PLC_PORT := 5020
DEMO_BRIDGE_STATE := runs/demo/bridge.sqlite
demo-plc: $(STAMP)
	@mkdir -p runs/demo && rm -f $(DEMO_BRIDGE_STATE) $(DEMO_BRIDGE_STATE)-wal $(DEMO_BRIDGE_STATE)-shm
	@$(BIN)/edge-bridge --insecure --connect $(DEMO_ALERTS) --state $(DEMO_BRIDGE_STATE) \
		--camera cam0 --modbus-port $(DEMO_PLC_PORT) --reject-pulse-ms 200 2>/dev/null & bridge=$$!; \
	$(BIN)/python -m edge.bridge.plc_client --port $(DEMO_PLC_PORT) --count 50 --timeout 60 & plc=$$!; \
	$(BIN)/edge-run --engine edge/bundled/model.onnx --source $(SAMPLE)/images --no-drop --simulated --insecure \
		--alerts-addr $(DEMO_ALERTS) --wait-subscribers 1 --quiet 2>&1 | grep -v INSECURE; \
	wait $$plc; status=$$?; kill $$bridge; wait $$bridge; exit $$status

# The trainer chain on the embedded sample, as a user would run it on their own data: edge-train hybrid's
# one command trains its default members (the patch kNN familiarity member, no labels, and the patch head
# taught by 5 labelled defects, both on pretrained EfficientNet-Lite2), fuses them on held-out good cells,
# evaluates every member and the hybrid on the same test cells, then the hybrid is exported to ONNX with its
# manifest (parity-checked). A few minutes.
train-demo: $(STAMP)
	$(BIN)/edge-train hybrid --data $(SAMPLE) --k 5 --size 112 --out runs/demo/hybrid --overwrite
	$(BIN)/edge-export --run runs/demo/hybrid --out runs/demo/model.onnx

# Regenerate the bundled demo model (train, calibrate, export; committed with its manifest).
bundled-model: $(STAMP)
	bash deploy/make_bundled_model.sh

# The MQTT bridge tests start a real broker: Debian's mosquitto (chosen over the pure-Python amqtt: it is
# the broker plants run, and a separate process the tests can restart). Installed with apt-get where we are
# root; elsewhere the tests skip, saying so.
broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; } || \
	  echo "make broker: cannot install mosquitto (needs root and apt-get): the MQTT bridge tests will skip"

# The operator's screen is tested in a real headless browser (tests/edge/test_view_browser.py): Debian's
# chromium, driven over the DevTools protocol on loopback. Installed with apt-get where we are root (Playwright's
# own browser download cannot reach its servers here); elsewhere those tests skip, saying so.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make chromium: cannot install chromium (needs root and apt-get): the browser tests of the view will skip"

test: $(STAMP) broker chromium
	$(BIN)/python -m pytest -q

# The DRA/SaliencyCut SDD benchmark: KolektorSDD (../shared/data/kolektorsdd) cut into vertical thirds,
# 1143 good + 54 crack crops with masks, in the folders layout at runs/data/sdd_thirds (skips when complete).
sdd-data: $(STAMP)
	$(BIN)/python bench/prepare_sdd.py --out runs/data/sdd_thirds

# The two label-free floors (raw-pixel kNN, PCA reconstruction at 64 px) on ELPV and the SDD thirds,
# k = 10, seeds 0 1 2: image AUROC / AUPRC on the open-set split. Under a minute.
bench-floors: sdd-data
	$(BIN)/python bench/floors.py --data ../shared/data/elpv --k 10 --seeds 0 1 2
	$(BIN)/python bench/floors.py --data runs/data/sdd_thirds --k 10 --seeds 0 1 2

# Issue 11's detection tables: floors, patch kNN familiarity, LAMP, two-head on Lite0 and hybrids on ELPV and
# SDD (k = 10 and 1, seeds 0 1 2 for the label-free rows). Hours on 2 cores; reuses finished runs.
bench-detection: sdd-data
	$(BIN)/python bench/detection.py

# LAMP on vs. off on ELPV, 3 seeds each; writes docs/benchmarks.md (about an hour on 2 cores).
bench-ae: $(STAMP)
	$(BIN)/python bench/lamp_elpv.py

# Two-head (CutPaste, SaliencyCut) and hybrid on ELPV, k = 10 and 1, 3 seeds; needs bench-ae first.
bench-twohead: $(STAMP)
	$(BIN)/python bench/twohead_elpv.py

# ONNX Runtime (CPU, the edge's backend) vs. torch eager on the hybrid at 112 and 128 px, batch 1
# and 8, interleaved; trains minimal runs into runs/bench_runtime (speed only). About 3 minutes.
bench-runtime: $(STAMP)
	$(BIN)/python bench/ort_vs_torch.py

# edge-run end to end vs. the bare backend in a loop (frames/s, capture->alert latency), and 1080p frame
# transport alone (imagezmq vs. the project's inline and shared-memory paths vs. memcpy), interleaved.
# Needs the bench extra (imagezmq); waits for a quiet machine first. About 8 minutes on 2 cores.
bench-pipeline: $(STAMP)
	@$(BIN)/python -c 'import imagezmq' 2>/dev/null || \
		$(BIN)/pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/pipeline_bench.py

# Where a paced frame's capture -> alert time goes: a bare batch-1 call back to back and at the camera's pace, and
# edge-run at 10 frames/s in both stage modes with each frame's age at every stage. ~6 min; quiet machine.
bench-latency: $(STAMP)
	$(BIN)/python bench/latency_breakdown.py

# edge-run --stage-mode processes vs. threads: CPU per frame per stage at 10 frames/s, and 1/2/4/8 simulated
# cameras at 10 frames/s each sharing one engine (aggregate frames/s, per-camera p99). ~6 min on 2 cores.
bench-stage-modes: $(STAMP)
	$(BIN)/python bench/stage_mode_bench.py

# The operator's screen's cost (issue 16): pipeline frames/s and CPU with nothing, an SSE client (a panel elsewhere)
# and a headless Chromium (a browser on the node) connected, same edge-run, phases interleaved; then separate runs
# with and without --view-port. Writes docs/bench/view_bench.json. About 9 minutes on 2 cores; run it on a quiet machine.
bench-view: $(STAMP) chromium
	$(BIN)/python bench/view_bench.py --reference --rounds 4

clean:
	rm -rf $(VENV) runs .pytest_cache
