"""Per-camera rules and finite thresholds at every entry point (issue 12 item 5, issue 13 items 1 and 7).

The end-to-end test runs the real edge-run on loopback with two cameras whose calibration
entries carry different thresholds, and checks each frame's verdict against its own
camera's threshold and the bare backend's score.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.alerts import AlertError, make_alert
from edge.backends import open_backend
from edge.manifest import ManifestError, load_manifest, manifest_path
from edge.preprocess import frame_to_model_pixels
from edge.rules import (RulesError, camera_rules, check_cameras, check_rois, describe_rules, parse_threshold,
                        rules_for)
from edge.sources import list_images
from tests.edge.test_pipeline import ENGINE, ROOT, Run, verdicts_by_seq

BUNDLED = json.loads(manifest_path(ENGINE).read_text())


def entry(threshold) -> dict:
    """A calibration entry like edge-calibrate's, with this image threshold (pixel rules from the bundled one)."""
    e = json.loads(json.dumps(BUNDLED["calibration"]["cameras"]["*"]))
    e["image"]["threshold"] = threshold
    e["normalisation"]["center"] = threshold
    return e


def engine_with(tmp_path: Path, cameras: dict) -> Path:
    """The bundled engine copied beside a manifest whose calibration has exactly these camera entries."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = tmp_path / "model.onnx"
    shutil.copy(ENGINE, engine)
    doc = json.loads(json.dumps(BUNDLED))
    doc["calibration"]["cameras"] = cameras
    manifest_path(engine).write_text(json.dumps(doc))   # json writes NaN / Infinity for non-finite floats
    return engine


def edge_run_refusal(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "edge.run", "--insecure", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    return out


# ---- rules: own entry, else '*', else refused ----------------------------------------------------

def test_start_log_names_each_cameras_entry_threshold_and_promise():
    manifest = {"calibration": {"cameras": {"left": entry(1.5), "*": entry(5.0)}}}
    left, right = describe_rules(manifest, ["left", "right"], None)
    assert "camera left: threshold 1.5 from calibration entry 'left'" in left and "shared" not in left
    assert "camera right: threshold 5 from calibration entry '*' (the shared one)" in right
    n_good = BUNDLED["calibration"]["cameras"]["*"]["image"]["n_good"]
    assert f"false alarms <= 5.00% with 95% confidence, fitted on {n_good} good parts" in left
    (override,) = describe_rules(manifest, ["left"], 0.7)
    assert "threshold 0.7 (--threshold" in override and "no false-alarm promise" in override


def test_a_camera_uses_its_own_entry_else_star_and_never_another_cameras():
    rules = camera_rules({"calibration": {"cameras": {"left": entry(1.0), "*": entry(5.0)}}}, None)
    assert rules_for(rules, "left").threshold == 1.0 and rules_for(rules, "right").threshold == 5.0
    only_left = camera_rules({"calibration": {"cameras": {"left": entry(1.0)}}}, None)
    with pytest.raises(RulesError, match="'right' have no calibration entry"):
        rules_for(only_left, "right")
    with pytest.raises(RulesError, match="'right'"):
        check_cameras(only_left, ["left", "right"])
    check_cameras(only_left, ["left"])


def test_threshold_override_covers_every_camera_and_must_be_finite():
    rules = camera_rules({"calibration": {"cameras": {"left": entry(1.0)}}}, 3.0)
    assert rules_for(rules, "left").threshold == rules_for(rules, "other").threshold == 3.0
    assert camera_rules({"calibration": None}, 2.0)["*"].threshold == 2.0
    with pytest.raises(RulesError, match="no calibration"):
        camera_rules({"calibration": None}, None)
    for bad in ("nan", "inf", "-inf", "x"):
        with pytest.raises(Exception, match="finite|not a number"):
            parse_threshold(bad)
    assert parse_threshold("2.5") == 2.5


@pytest.mark.parametrize("threshold", [math.nan, math.inf, None, "6"])
def test_non_finite_or_missing_thresholds_are_refused_when_the_manifest_loads(tmp_path, threshold):
    e = entry(6.0)
    if threshold is None:
        del e["image"]["threshold"]
    else:
        e["image"]["threshold"] = threshold
    engine = engine_with(tmp_path, {"*": e})
    with pytest.raises(ManifestError, match="image threshold (is nan|is inf|is missing|must be a number)"):
        load_manifest(engine)


def test_a_manifest_without_its_image_section_is_refused_in_one_line(tmp_path):
    e = entry(6.0)
    del e["image"]
    with pytest.raises(ManifestError, match="camera '\\*' has no 'image' section"):
        load_manifest(engine_with(tmp_path, {"*": e}))


def test_an_alert_with_a_non_finite_threshold_is_not_valid():
    common = dict(node="n", alert_seq=1, camera="c", frame_seq=0, capture_wall=0.0, published_wall=0.0,
                  latency_ms=1.0, verdict="OK", score=63.0, normalised_score=1.0, model_version="m")
    for bad in (math.nan, math.inf):
        with pytest.raises(AlertError, match="threshold must be finite"):
            make_alert(threshold=bad, **common)
    assert make_alert(threshold=6.0, **common)["threshold"] == 6.0


def test_rois_must_name_a_source_camera():
    check_rois(["top"], ["top", "side"])
    with pytest.raises(RulesError, match="--roi for camera\\(s\\) 'tpo' that no --source has"):
        check_rois(["tpo"], ["top", "side"])


# ---- edge-run refuses at start, in one line, before any stage process ---------------------------

def test_edge_run_refuses_nan_and_inf_thresholds_and_a_manifest_without_one(tmp_path):
    images = str(ROOT / "trainer" / "sample_data" / "elpv_mini" / "images")
    for bad in ("nan", "inf"):
        out = edge_run_refusal("--engine", str(ENGINE), "--source", images, "--threshold", bad)
        assert "argument --threshold: the threshold is" in out.stderr and "must be finite" in out.stderr
    e = entry(6.0)
    del e["image"]["threshold"]
    out = edge_run_refusal("--engine", str(engine_with(tmp_path / "missing", {"*": e})), "--source", images)
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "image threshold is missing" in out.stderr
    assert "Traceback" not in out.stderr
    out = edge_run_refusal("--engine", str(engine_with(tmp_path / "nan", {"*": entry(math.nan)})), "--source", images)
    assert "image threshold is nan" in out.stderr and "Traceback" not in out.stderr


def test_edge_run_refuses_a_camera_without_calibration_and_a_roi_for_no_camera(tmp_path):
    images = str(ROOT / "trainer" / "sample_data" / "elpv_mini" / "images")
    engine = engine_with(tmp_path, {"left": entry(1.0)})
    out = edge_run_refusal("--engine", str(engine), "--source", f"left={images}", "--source", f"right={images}")
    assert "camera(s) 'right' have no calibration entry" in out.stderr
    out = edge_run_refusal("--engine", str(engine), "--source", f"left={images}", "--roi", "rihgt=0,0,10,10")
    assert "--roi for camera(s) 'rihgt' that no --source has" in out.stderr


# ---- one real edge-run: two cameras, two thresholds ---------------------------------------------

def test_two_cameras_with_different_thresholds_are_each_judged_by_their_own(tmp_path):
    files = list_images(str(ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"))[:8]
    backend = open_backend(ENGINE)
    size = backend.input_shape[1]
    pixels = np.stack([frame_to_model_pixels(cv2.imread(f, cv2.IMREAD_UNCHANGED), "Mono8", size, "GRAY")
                       for f in files])
    scores = backend.infer(pixels.astype(np.float32) * np.float32(1 / 255))["score"]
    low, high = (float(v) for v in np.quantile(scores, [0.25, 0.75]))
    for cam in ("left", "right"):
        (tmp_path / cam).mkdir()
        for j, f in enumerate(files):
            shutil.copy(f, tmp_path / cam / f"{j:03d}.png")
    engine = engine_with(tmp_path / "engine", {"left": entry(low), "right": entry(high)})
    # the Run helper passes the bundled --engine first; argparse keeps the last one given
    run = Run(tmp_path, "--engine", str(engine), "--source", f"left={tmp_path / 'left'}",
              "--source", f"right={tmp_path / 'right'}", "--no-drop", "--max-batch", "4")
    summary = run.finish()
    for cam, t in (("left", low), ("right", high)):
        expected = {j: "NotOK" if s > t else "OK" for j, s in enumerate(scores)}
        assert verdicts_by_seq(run.alerts, cam) == expected
        assert all(a["threshold"] == pytest.approx(t) for a in run.alerts if a["camera"] == cam)
    assert verdicts_by_seq(run.alerts, "left") != verdicts_by_seq(run.alerts, "right")
    assert summary["frames_judged"] == 2 * len(files)
