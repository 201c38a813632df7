"""The calibration names its engine, and a line recalibrates in place (issue 12 items 2 and 3).

* a manifest whose calibration was fitted on another engine is refused by edge-run, with the fix;
* an fp16 engine carrying fp32 thresholds is marked 'not re-checked' and edge-run warns;
* a lighting change (every good image brighter by a fixed amount) pushes the old threshold's
  false-alarm rate on unseen good images above target; ``--update`` re-fits the camera in the
  manifest (history kept, checksums valid) and the rate is back within the guarantee.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.calibrate import calibrate_engine
from calibration.cli import main
from calibration.engine_scores import EngineScorer
from calibration.images import folder_samples, model_pixels
from deploy.build import convert_to_fp16
from deploy.manifest import write_derived_manifest
from edge.calibration_provenance import check_calibrated_engine
from edge.manifest import load_manifest, manifest_path, sha256_file
from edge.rules import RulesError, camera_rules
from tests.calibration.test_engine_calibration import good_folder
from tests.calibration.tiny_engine import write_tiny_engine

ROOT = Path(__file__).resolve().parents[2]


def far_on(engine: Path, folder: Path, threshold: float) -> float:
    scorer = EngineScorer(engine)
    scores = scorer.score(model_pixels(folder_samples(folder, 0), scorer.size, scorer.channels)).scores
    return float(np.mean(scores > threshold))


def calibrated_into_manifest(engine: Path, good: Path, camera: str = "*") -> dict:
    calibrate_engine(engine, folder_samples(good, 0), 0.05, camera=camera, plots=False,
                     update=manifest_path(engine))
    return load_manifest(engine)


def test_a_manifest_calibrated_on_another_engine_is_refused_with_the_fix(tmp_path):
    good = good_folder(tmp_path / "good", 80)
    a = write_tiny_engine(tmp_path / "a" / "model.onnx", gain=1.0)
    b = write_tiny_engine(tmp_path / "b" / "model.onnx", gain=2.0)   # same checkpoint, other engine
    cal_a = calibrated_into_manifest(a, good)["calibration"]
    assert check_calibrated_engine(load_manifest(a)) == []
    doc = json.loads(manifest_path(b).read_text())
    doc["calibration"] = cal_a
    manifest_path(b).write_text(json.dumps(doc))
    with pytest.raises(RulesError, match="fitted on another engine"):
        check_calibrated_engine(load_manifest(b))
    out = subprocess.run([sys.executable, "-m", "edge.run", "--insecure", "--engine", str(b), "--source", str(good)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "fitted on another engine" in out.stderr
    assert f"edge-calibrate --engine model.onnx --good GOOD_IMAGES_DIR --camera '*'" in out.stderr
    assert "--update model.onnx.manifest.json" in out.stderr and "Traceback" not in out.stderr


def test_an_fp16_engine_with_fp32_thresholds_is_marked_and_warned_about(tmp_path):
    good = good_folder(tmp_path / "good", 80)
    fp32 = write_tiny_engine(tmp_path / "model.onnx")
    calibrated_into_manifest(fp32, good)
    import onnx
    fp16 = tmp_path / "model.fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(fp32))), str(fp16))
    # what edge-build writes beside an engine built from the fp32 graph (here run by ONNX Runtime)
    write_derived_manifest(fp16, fp32, "onnx", {"precision": "fp16", "onnx": {"file": fp16.name,
                                                                             "sha256": sha256_file(fp16)}})
    manifest = load_manifest(fp16)
    assert "not re-checked" in manifest["calibration"]["cameras"]["*"]["engine_check"]["status"]
    [warning] = check_calibrated_engine(manifest)
    assert "calibrated on fp32 graph model.onnx" in warning and "runs fp16" in warning
    # re-fitted on the fp16 engine itself: nothing left to warn about
    calibrate_engine(fp16, folder_samples(good, 0), 0.05, plots=False, update=manifest_path(fp16))
    assert check_calibrated_engine(load_manifest(fp16)) == []
    assert load_manifest(fp16)["calibration"]["cameras"]["*"]["engine"]["precision"] == "fp16"


def test_recalibration_after_a_lighting_change_restores_the_false_alarm_rate(tmp_path, capsys):
    engine = write_tiny_engine(tmp_path / "line" / "model.onnx")
    cal, unseen = good_folder(tmp_path / "cal", 120, seed=0), good_folder(tmp_path / "unseen", 400, seed=1)
    first = calibrated_into_manifest(engine, cal, camera="side")
    t_old = first["calibration"]["cameras"]["side"]["image"]["threshold"]
    assert far_on(engine, unseen, t_old) <= 0.05
    # the lamp is changed: every good part now looks 20 grey levels brighter
    cal_b = good_folder(tmp_path / "cal-bright", 120, seed=2, brighten=20)
    unseen_b = good_folder(tmp_path / "unseen-bright", 400, seed=3, brighten=20)
    assert far_on(engine, unseen_b, t_old) > 0.5
    before = manifest_path(engine).read_text()
    assert main(["--engine", str(engine), "--good", str(cal_b), "--camera", "side", "--target-far", "0.05",
                 "--update", str(manifest_path(engine)), "--no-plots"]) == 0
    assert "restart it to apply" in capsys.readouterr().out
    after = load_manifest(engine)   # checksum verified: the engine is untouched
    assert after["engine"] == json.loads(before)["engine"]
    t_new = camera_rules(after, None)["side"].threshold   # what edge-run reads when restarted
    assert t_new > t_old and far_on(engine, unseen_b, t_new) <= 0.05
    first_fit, h = after["calibration"]["history"]   # every update is recorded, the first replaced nothing
    assert first_fit["old"] is None and first_fit["new"]["threshold"] == t_old
    assert h["camera"] == "side" and h["old"]["threshold"] == t_old and h["new"]["threshold"] == t_new
    assert h["old"]["n_good"] == h["new"]["n_good"] == 120 and "@" in h["by"] and h["replaced_utc"]


def test_update_refuses_another_engines_manifest(tmp_path, capsys):
    good = good_folder(tmp_path / "good", 60)
    a = write_tiny_engine(tmp_path / "a" / "model.onnx")
    b = write_tiny_engine(tmp_path / "b" / "model.onnx")
    assert main(["--engine", str(a), "--good", str(good), "--target-far", "0.05", "--no-plots",
                 "--update", str(manifest_path(b))]) == 2
    assert "is not the manifest of --engine" in capsys.readouterr().err
