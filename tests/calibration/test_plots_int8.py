"""Calibration report plots and the INT8 calibration image set."""
import hashlib
import json

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pytest

from calibration.int8 import CalibrationSetSpec, build_int8_calibration_set, select_calibration_images
from calibration.plots import plot_heatmap_overlays, plot_roc, plot_score_histograms, roc_curve
from edge.preprocess import to_model_input
from trainer.data import Sample, read_image
from trainer.metrics import auroc


def _png(path):
    img = cv2.imread(str(path))
    assert img is not None, f"{path} is not a readable image"
    return img


# --------------------------------------------------------------------------- plots


@pytest.fixture
def scores():
    rng = np.random.default_rng(1)
    return rng.normal(0, 1, 300), rng.normal(2.5, 1, 40)


def test_histogram_png_size_and_no_figure_leak(tmp_path, scores):
    good, defect = scores
    out = tmp_path / "deep" / "dir" / "hist.png"           # parents created
    plot_score_histograms(out, good, defect, 1.5, "scores", score_label="anomaly score")
    plot_score_histograms(tmp_path / "good_only.png", good, [], 1.5, "good only")
    # counts spanning > 100x: log-scaled y path
    plot_score_histograms(tmp_path / "log.png", np.r_[np.zeros(5000), np.linspace(1, 3, 20)], [4.0], 2.0, "log")
    for p in (out, tmp_path / "good_only.png", tmp_path / "log.png"):
        assert _png(p).shape[:2] == (500, 900)
    assert plt.get_fignums() == []


def test_roc_curve_area_is_auroc_with_ties():
    good = np.array([0.1, 0.2, 0.2, 0.5, 0.7, 0.7])
    defect = np.array([0.2, 0.7, 0.9, 0.9])
    fpr, tpr, thr = roc_curve(good, defect)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(fpr) == len(np.unique(np.r_[good, defect])) + 1     # one step per distinct score
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    labels = np.r_[np.zeros(good.size), np.ones(defect.size)].astype(int)
    assert area == pytest.approx(auroc(np.r_[good, defect], labels), abs=1e-12)
    # the point for "score >= 0.7" is the operating point of "score > t" for t in [0.5, 0.7)
    k = int(np.flatnonzero(thr == 0.7)[0])
    assert (fpr[k], tpr[k]) == (np.mean(good > 0.6), np.mean(defect > 0.6))


def test_roc_png_and_needs_defects(tmp_path, scores):
    good, defect = scores
    out = tmp_path / "r" / "roc.png"
    plot_roc(out, good, defect, 1.5, "ROC")
    h, w = _png(out).shape[:2]
    assert (h, w) == (600, 600)
    with pytest.raises(ValueError, match="ROC needs defective images"):
        plot_roc(tmp_path / "x.png", good, [], 1.5, "ROC")
    assert not (tmp_path / "x.png").exists()
    assert plt.get_fignums() == []


def test_heatmap_overlays_grid_with_regions(tmp_path):
    rng = np.random.default_rng(0)
    n, size = 7, 32
    images = rng.random((n, 3, size, size), dtype=np.float32)
    maps = rng.random((n, size, size), dtype=np.float32) * 0.2
    maps[:, 10:16, 12:20] += 1.0
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.95, 0.05])
    labels = np.array([0, 1, 0, 1, 0, 0, 1])
    regions = [[{"box": [12, 10, 8, 6], "area": 48, "peak": 1.2}] for _ in range(n)]
    regions[0] = []
    out = tmp_path / "o" / "overlays.png"
    plot_heatmap_overlays(out, images, maps, scores, labels, threshold=0.5, pixel_threshold=0.6,
                          regions=regions, max_tiles=4)
    grid = _png(out)
    # 4 tiles, 2 per row: 2 rows of (20 caption + 192) px, 2 tiles of 2 x 192 px
    assert grid.shape == (2 * (20 + 192), 2 * 2 * 192, 3)
    # white box edge drawn on the first tile's overlay half: box top-left at map (12, 10) -> 6x scale
    y0 = 20 + 10 * 6
    x0 = 192 + 12 * 6
    assert np.all(grid[y0, x0 + 5] == 255)
    # mono images, maps at half resolution, fewer tiles than asked
    plot_heatmap_overlays(tmp_path / "mono.png", images[:3, :1], maps[:3, ::2, ::2], scores[:3], labels[:3], 0.5)
    assert _png(tmp_path / "mono.png").shape[:2] == (2 * (20 + 192), 2 * 2 * 192)
    assert plt.get_fignums() == []


def test_heatmap_overlays_write_failure_is_oserror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        plot_heatmap_overlays(blocker / "sub" / "o.png", np.zeros((1, 1, 8, 8)), np.zeros((1, 8, 8)), [0.0], [0], 1.0)
    with pytest.raises(OSError, match="could not write"):   # no OpenCV writer for the suffix
        plot_heatmap_overlays(tmp_path / "o.notanimage", np.zeros((1, 1, 8, 8)), np.zeros((1, 8, 8)), [0.0], [0], 1.0)


# --------------------------------------------------------------------------- INT8 calibration set


def _samples(tmp_path, n_good, n_defect=0, channels=3, shape=(40, 52)):
    rng = np.random.default_rng(5)
    out = []
    for i in range(n_good + n_defect):
        label = int(i >= n_good)
        folder = tmp_path / ("bad" if label else "good")
        folder.mkdir(exist_ok=True)
        p = folder / f"img{i:03d}.png"
        img = rng.integers(0, 256, shape + ((channels,) if channels == 3 else ()), dtype=np.uint8)
        assert cv2.imwrite(str(p), img)
        out.append(Sample(p, label, "scratch" if label else "good"))
    return out


def test_select_calibration_images(tmp_path):
    samples = [Sample(tmp_path / f"g{i:02d}.png", 0, "good") for i in range(30)]
    samples += [Sample(tmp_path / f"d{i:02d}.png", 1, "crack") for i in range(10)]
    a = select_calibration_images(samples, 12, seed=3)
    assert len(a) == 12 and all(s.label == 0 for s in a)
    assert [s.path for s in a] == sorted(s.path for s in a)
    assert a == select_calibration_images(samples, 12, seed=3)
    assert a == select_calibration_images(list(reversed(samples)), 12, seed=3)   # list order irrelevant
    assert a != select_calibration_images(samples, 12, seed=4)
    assert len(set(s.path for s in a)) == 12
    everything = select_calibration_images(samples, 100, seed=0)
    assert len(everything) == 30 and all(s.label == 0 for s in everything)
    assert select_calibration_images(samples[30:], 5, seed=0) == []


def test_build_int8_calibration_set_round_trip(tmp_path):
    samples = _samples(tmp_path, n_good=6, n_defect=3)
    spec = CalibrationSetSpec(count=4, seed=1)
    meta = build_int8_calibration_set(samples, size=24, channels=3, out_dir=tmp_path / "calib",
                                      input_name="input.1", spec=spec)
    npz = tmp_path / "calib" / "int8_calibration.npz"
    with np.load(npz, allow_pickle=False) as z:
        assert z.files == ["input.1"]
        arr = z["input.1"]
    assert arr.shape == (4, 3, 24, 24) and arr.dtype == np.float32
    assert arr.min() >= 0 and arr.max() <= 1 and arr.max() > 0.5
    assert meta["shape"] == [4, 3, 24, 24] and meta["count"] == 4 and meta["requested"] == 4
    assert meta["note"] is None
    assert len(meta["files"]) == 4 and all("/good/" in f for f in meta["files"])
    for k in (0, 3):
        np.testing.assert_array_equal(arr[k], to_model_input(read_image(meta["files"][k], 3), 24, 3))
    on_disk = json.loads((tmp_path / "calib" / "int8_calibration.json").read_text())
    assert on_disk == meta
    assert on_disk["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert "Q/DQ" in on_disk["quantisation"] and on_disk["source"] == "good training images"


def test_build_int8_calibration_set_fewer_than_requested_mono(tmp_path):
    samples = _samples(tmp_path, n_good=3, channels=1)
    meta = build_int8_calibration_set(samples, size=16, channels=1, out_dir=tmp_path / "c")
    assert meta["count"] == 3 and meta["requested"] == 512 and "fewer than the 512" in meta["note"]
    with np.load(tmp_path / "c" / "int8_calibration.npz") as z:
        assert z["images"].shape == (3, 1, 16, 16)


def test_build_int8_calibration_set_needs_good_images(tmp_path):
    samples = _samples(tmp_path, n_good=0, n_defect=2)
    with pytest.raises(ValueError, match="good TRAINING images"):
        build_int8_calibration_set(samples, 16, 3, tmp_path / "c")
    with pytest.raises(ValueError, match="good TRAINING images"):
        build_int8_calibration_set([], 16, 3, tmp_path / "c")
    assert not (tmp_path / "c" / "int8_calibration.npz").exists()
