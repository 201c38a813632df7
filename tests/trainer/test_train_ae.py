"""A short real training run on a tiny synthetic data set, through the CLI."""
import json

import numpy as np
import pytest
import torch

from tests.synthetic import make_mvtec_tree
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.cli import main
from trainer.data import load_dataset
from trainer.evaluate import predict
from trainer.tensors import load_images

TINY = ["--size", "32", "--depth", "2", "--base-channels", "8", "--latent-channels", "8",
        "--batch-size", "8", "--lr", "3e-3", "--blur-sigma", "1", "--quiet", "--threads", "2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data = make_mvtec_tree(root / "parts", n_train_good=24, n_test_good=8, n_defect=8, size=48, seed=3)
    out = root / "run"
    assert main(["ae", "--data", str(data), "--out", str(out), "--epochs", "12", "--seed", "1", *TINY]) == 0
    return data, out


def test_run_directory_is_complete(tiny_run):
    _, out = tiny_run
    for name in ("config.json", "split.json", "train_log.jsonl", "checkpoint.pt", "metrics.json",
                 "test_scores.npz"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert split["k"] == 0 and split["seed"] == 1 and "rule" in split


def test_loss_decreases(tiny_run):
    log = [json.loads(line) for line in (tiny_run[1] / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 12
    assert log[-1]["mse"] < 0.5 * log[0]["mse"], [r["mse"] for r in log]
    assert log[-1]["loss"] < log[0]["loss"]


def test_metrics_are_measured(tiny_run):
    m = json.loads((tiny_run[1] / "metrics.json").read_text())
    img = m["test"]["image"]
    assert img["n_good"] == 8 and img["n_defective"] == 8
    assert 0.0 <= img["auroc"] <= 1.0 and 0.0 <= img["auprc"] <= 1.0
    # the synthetic tree has masks, so pixel metrics are computed
    assert 0.0 <= m["test"]["pixel"]["auroc"] <= 1.0
    assert 0.0 <= m["test"]["pixel"]["pro_fpr0.3"] <= 1.0
    assert m["train"]["images_per_second"] > 0 and m["train"]["peak_rss_mb"] > 0
    assert len(m["checkpoint_sha256"]) == 64


def test_checkpoint_round_trip_reproduces_scores(tiny_run):
    data, out = tiny_run
    detector, meta = load_checkpoint(out / "checkpoint.pt", "lamp_autoencoder")
    assert meta["preprocess"] == {"size": 32, "channels": 1, "color_order": "GRAY",
                                  "scale": "uint8 / 255 -> [0, 1]", "resize": "cv2.INTER_AREA"}
    saved = np.load(out / "test_scores.npz")
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    samples = [by_path[p] for p in saved["paths"]]
    scores, _ = predict(detector, load_images(samples, 32, 1))
    np.testing.assert_allclose(scores, saved["scores"], rtol=1e-5, atol=1e-7)


def test_checkpoint_is_plain_data(tiny_run):
    payload = torch.load(tiny_run[1] / "checkpoint.pt", weights_only=True)  # safe loading works
    assert payload["kind"] == "lamp_autoencoder" and payload["format_version"] == 1


def test_truncated_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes((tiny_run[1] / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable edge-inspect checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_existing_run_is_not_overwritten(tiny_run):
    data, out = tiny_run
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["ae", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY])


def test_bad_data_folder_is_reported(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["ae", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "empty" in capsys.readouterr().err


def test_bad_size_fails_before_reading_data(tmp_path, capsys):
    assert main(["ae", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                 "--size", "100", "--depth", "3"]) == 2
    assert "divisible by 2**depth = 8" in capsys.readouterr().err


def test_training_separates_obvious_defects(tmp_path):
    """Bright/dark blobs on smooth texture: even a tiny model trained briefly must rank them high."""
    data = make_mvtec_tree(tmp_path / "parts", n_train_good=32, n_test_good=10, n_defect=10, size=48, seed=7)
    out = tmp_path / "run"
    assert main(["ae", "--data", str(data), "--out", str(out), "--epochs", "40", "--seed", "0", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["image"]["auroc"] >= 0.9, m["test"]


def test_same_seed_and_threads_train_the_same_model(tiny_run, tmp_path):
    # A bench that compares two amplifiers must see the amplifier, not the noise of a re-run: on the
    # CPU the same command (seed and --threads included) gives a bit-identical checkpoint. A different
    # thread count changes the float summation order, so only same-threads runs are comparable bit for bit.
    data, first = tiny_run
    again = tmp_path / "again"
    assert main(["ae", "--data", str(data), "--out", str(again), "--epochs", "12", "--seed", "1", *TINY]) == 0
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (first, again))
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"]
    assert np.array_equal(np.load(first / "test_scores.npz")["scores"], np.load(again / "test_scores.npz")["scores"])
