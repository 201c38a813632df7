"""edge-calibrate end to end on a tiny trained run: file contents, guarantees, cameras, errors."""
import json

import pytest

from calibration.calibrate import calibrate
from trainer.runs import open_run, run_samples
from calibration.cli import main
from calibration.thresholds import fit_threshold
from edge.verdict import normalised_score
from tests.synthetic import make_folders_tree, make_mvtec_tree
from trainer.cli import main as train
from trainer.evaluate import predict
from trainer.tensors import load_images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    data = make_mvtec_tree(root / "parts", n_train_good=40, n_test_good=6, n_defect=6, size=32, seed=4)
    out = root / "run"
    assert train(["ae", "--data", str(data), "--out", str(out), "--size", "32", "--depth", "2",
                  "--base-channels", "4", "--latent-channels", "4", "--epochs", "3", "--val-fraction", "0.25",
                  "--blur-sigma", "1", "--quiet", "--threads", "2"]) == 0
    return data, out, root


def test_calibration_file_and_report(run, capsys):
    _, out, _ = run
    assert main(["--run", str(out), "--target-far", "0.2", "--guarantee", "marginal"]) == 0
    printed = capsys.readouterr().out
    assert "alert threshold" in printed and "misses" in printed and "false alarms <=" in printed
    doc = json.loads((out / "calibration.json").read_text())
    assert doc["format_version"] == 1 and doc["kind"] == "edge-inspect/calibration"
    meta = json.loads((out / "metrics.json").read_text())
    assert doc["model"]["checkpoint_sha256"] == meta["checkpoint_sha256"]
    cam = doc["cameras"]["*"]
    assert cam["image"]["n_good"] == 12 and cam["held_out"]["n_defective"] == 6
    for name in cam["plots"]:
        assert (out / name).stat().st_size > 1000
    # the threshold is fitted on the exported graph's scores: the conformal order statistic of the
    # torch model's validation scores agrees within the export's parity tolerance (1e-3), not exactly
    r = open_run(out)
    val, _, _ = run_samples(r["split_doc"])
    scores, maps = predict(r["model"], load_images(val, 32, 1))
    assert cam["image"]["threshold"] == pytest.approx(fit_threshold(scores, 0.2, guarantee="marginal").threshold,
                                                      rel=1e-3, abs=1e-3)
    assert cam["pixel"]["threshold"] == pytest.approx(
        fit_threshold(maps.reshape(len(maps), -1).max(1), 0.2, guarantee="marginal").threshold, rel=1e-3, abs=1e-3)
    assert cam["engine"]["file"] == "model.onnx" and cam["engine"]["precision"] == "fp32"
    assert normalised_score(cam["image"]["threshold"], cam["normalisation"]["center"],
                            cam["normalisation"]["scale"]) == pytest.approx(0.5)


def test_too_few_held_out_images_is_an_error_with_the_count(run, capsys):
    assert main(["--run", str(run[1]), "--target-far", "0.05", "--out", str(run[2] / "x.json")]) == 2
    assert "needs at least 59 held-out good images, got 12" in capsys.readouterr().err


def test_per_camera_entries_and_held_out_data(run, capsys):
    data, out, root = run
    extra = make_folders_tree(root / "cam2", seed=9)
    cal = root / "cams.json"
    assert main(["--run", str(out), "--target-far", "0.2", "--guarantee", "marginal", "--out", str(cal),
                 "--no-plots"]) == 0
    assert main(["--run", str(out), "--data", str(extra), "--camera", "cam2", "--target-far", "0.1",
                 "--guarantee", "marginal", "--out", str(cal), "--no-plots"]) == 0
    doc = json.loads(cal.read_text())
    assert set(doc["cameras"]) == {"*", "cam2"}
    n_extra_good = sum(1 for p in (extra / "good").iterdir())
    assert doc["cameras"]["cam2"]["image"]["n_good"] == 12 + n_extra_good


def test_training_images_are_refused(run):
    data, out, _ = run
    r = open_run(out)
    _, split, _ = run_samples(r["split_doc"])
    trained_good = [s for s in split.train if s.label == 0][:3]
    with pytest.raises(ValueError, match="used to train the model"):
        calibrate(out, 0.5, guarantee="marginal", good=trained_good, plots=False, out=out.parent / "y.json",
                  engine=out.parent / "never-opened.onnx")   # refused before any engine is opened


def test_missing_run_files_and_foreign_calibration(run, tmp_path, capsys):
    (tmp_path / "split.json").write_text("{}")
    assert main(["--run", str(tmp_path), "--target-far", "0.1"]) == 2
    assert "missing checkpoint.pt, metrics.json" in capsys.readouterr().err
    foreign = tmp_path / "cal.json"
    foreign.write_text(json.dumps({"format_version": 1, "model": {"checkpoint_sha256": "0" * 64}, "cameras": {}}))
    assert main(["--run", str(run[1]), "--target-far", "0.2", "--guarantee", "marginal",
                 "--out", str(foreign), "--no-plots"]) == 2
    assert "another model" in capsys.readouterr().err


def test_int8_set_from_the_cli_uses_good_training_images_only(run, capsys):
    data, out, root = run
    cal = root / "int8" / "calibration.json"
    assert main(["--run", str(out), "--target-far", "0.2", "--guarantee", "marginal", "--out", str(cal),
                 "--no-plots", "--int8", "16"]) == 0
    assert "INT8 calibration set: 16 good training images" in capsys.readouterr().out
    info = json.loads((cal.parent / "int8_calibration.json").read_text())
    r = open_run(out)
    val, split, _ = run_samples(r["split_doc"])
    trained_good = {str(s.path) for s in split.train if s.label == 0} - {str(s.path) for s in val}
    assert info["count"] == 16 and set(info["files"]) <= trained_good
    import numpy
    arr = numpy.load(cal.parent / "int8_calibration.npz")[info["input_name"]]
    assert arr.shape == (16, 1, 32, 32) and arr.dtype == numpy.float32
