"""Calibration through the edge's backend: the engine that ships is what the threshold is fitted on.

* engine-based (``--engine``) and run-based (``--run``) calibration agree on the same exported graph;
* ``edge-calibrate --engine`` runs where torch cannot be imported;
* an engine that scores NaN is refused with a clear message, never written to calibration.json.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calibration.calibrate import calibrate, calibrate_engine
from calibration.cli import main
from calibration.engine_scores import EngineScorer
from calibration.images import folder_samples, model_pixels
from calibration.thresholds import fit_threshold
from deploy.export import main as export
from edge.manifest import sha256_file
from tests.calibration.tiny_engine import write_tiny_engine
from tests.synthetic import good_image, make_mvtec_tree, write_image
from trainer.cli import main as train

ROOT = Path(__file__).resolve().parents[2]


def good_folder(folder: Path, n: int, seed: int = 0, brighten: int = 0, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = good_image(rng, size).astype(np.int16) + brighten
        write_image(folder / f"{i:03d}.png", np.clip(img, 0, 255).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run and its graph exported by edge-export."""
    root = tmp_path_factory.mktemp("engine-cal")
    data = make_mvtec_tree(root / "parts", n_train_good=40, n_test_good=4, n_defect=4, size=32, seed=4)
    out = root / "run"
    assert train(["ae", "--data", str(data), "--out", str(out), "--size", "32", "--depth", "2",
                  "--base-channels", "4", "--latent-channels", "4", "--epochs", "1", "--val-fraction", "0.25",
                  "--quiet", "--threads", "2"]) == 0
    graph = root / "export" / "model.onnx"
    assert export(["--run", str(out), "--out", str(graph)]) == 0
    return out, graph, root


def test_engine_based_equals_run_based_calibration_on_the_same_exported_graph(run):
    out, graph, root = run
    from trainer.runs import run_split
    _, val_good, split = run_split(out)
    defects = [s for s in split.test if s.label == 1]
    kw = dict(guarantee="marginal", plots=False)
    # edge-calibrate --run without --engine: the graph exported now (what edge-export writes)
    assert main(["--run", str(out), "--target-far", "0.2", "--guarantee", "marginal", "--no-plots",
                 "--out", str(root / "by_run.json")]) == 0
    by_run = json.loads((root / "by_run.json").read_text())
    by_run_graph = calibrate(out, 0.2, engine=graph, out=root / "by_run_graph.json", **kw)
    by_engine = calibrate_engine(graph, val_good, 0.2, defective=defects, out=root / "by_engine.json", **kw)
    entries = [d["cameras"]["*"] for d in (by_run, by_run_graph, by_engine)]
    for e in entries[1:]:
        assert e["image"]["threshold"] == pytest.approx(entries[0]["image"]["threshold"], rel=1e-6, abs=1e-9)
        assert e["pixel"]["threshold"] == pytest.approx(entries[0]["pixel"]["threshold"], rel=1e-6, abs=1e-9)
        assert e["miss_rate"]["missed"] == entries[0]["miss_rate"]["missed"]
    # each records the engine it was fitted on; edge-export's graph is the graph --run exported
    assert {e["engine"]["sha256"] for e in entries} == {sha256_file(graph)}
    assert entries[0]["engine"]["precision"] == "fp32"
    # and the threshold is the order statistic of the edge backend's own scores
    scorer = EngineScorer(graph)
    scores = scorer.score(model_pixels(val_good, scorer.size, scorer.channels)).scores
    assert entries[2]["image"]["threshold"] == fit_threshold(scores, 0.2, guarantee="marginal").threshold


def test_edge_calibrate_engine_needs_no_torch(tmp_path):
    engine = write_tiny_engine(tmp_path / "model.onnx")
    good = good_folder(tmp_path / "good", 60)
    code = ("import sys; sys.modules['torch'] = None\n"   # any import of torch now fails
            "from calibration.cli import main\n"
            f"rc = main(['--engine', {str(engine)!r}, '--good', {str(good)!r}, '--camera', 'side', "
            "'--target-far', '0.05'])\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None]\n"
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "camera side: alert threshold" in r.stdout
    doc = json.loads((tmp_path / "calibration.json").read_text())
    side = doc["cameras"]["side"]
    assert side["image"]["n_good"] == 60 and side["engine"]["sha256"] == sha256_file(engine)
    assert doc["model"]["checkpoint_sha256"] == "c" * 64 and side["plots"]


def test_run_calibration_on_a_given_graph_reads_the_split_not_the_checkpoint(run, tmp_path):
    """The --run walk is one way: split.json + images + the exported graph in, calibration.json (and
    the INT8 set) out; no checkpoint is opened and torch is never imported."""
    out, graph, _ = run
    cal = tmp_path / "calibration.json"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from calibration.cli import main\n"
            f"rc = main(['--run', {str(out)!r}, '--engine', {str(graph)!r}, '--target-far', '0.2', "
            f"'--guarantee', 'marginal', '--no-plots', '--int8', '4', '--out', {str(cal)!r}])\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None]\n"
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    entry = json.loads(cal.read_text())["cameras"]["*"]
    assert entry["engine"]["sha256"] == sha256_file(graph) and entry["image"]["n_good"] == 12
    assert np.load(tmp_path / "int8_calibration.npz")["images"].shape == (4, 1, 32, 32)


def test_engine_scores_that_are_nan_are_refused_and_nothing_is_written(tmp_path, capsys):
    engine = write_tiny_engine(tmp_path / "model.onnx", nan=True)
    good = good_folder(tmp_path / "good", 60)
    assert main(["--engine", str(engine), "--good", str(good), "--target-far", "0.05", "--no-plots"]) == 2
    assert "finite" in capsys.readouterr().err
    assert not (tmp_path / "calibration.json").exists()


def test_cli_refuses_engine_without_good_images_and_mixed_modes(tmp_path, capsys):
    engine = write_tiny_engine(tmp_path / "model.onnx")
    for argv, says in ((["--engine", str(engine)], "--engine needs --good"),
                       (["--run", str(tmp_path), "--good", str(tmp_path)], "go with --engine alone"),
                       ([], "give --engine"),
                       (["--run", str(tmp_path), "--int8", "-3"], "--int8 -3"),
                       (["--run", str(tmp_path), "--min-region-area", "-1"], "at least 1 heatmap pixel")):
        with pytest.raises(SystemExit):
            main([*argv, "--target-far", "0.05"])
        assert says in capsys.readouterr().err
    assert folder_samples(good_folder(tmp_path / "g", 3), 0)[0].label == 0
