"""bench/prepare_sdd.py (SDD thirds from a fake KolektorSDD tree) and bench/floors.py (label-free floors)."""
import json

import cv2
import numpy as np
import pytest

from bench import floors, prepare_sdd
from tests.synthetic import make_folders_tree
from trainer.data import load_dataset, open_set_split, read_image, read_mask


def fake_kolektor(root, heights=(91, 90, 92, 93), defect_rows=((), (10, 40), (), (60, 62))):
    """images/{train,val}/NNN.jpg + masks/{split}/NNN_mask.png; image 1's defect crosses the first cut."""
    rng = np.random.default_rng(0)
    for i, (h, rows) in enumerate(zip(heights, defect_rows)):
        split = "train" if i < 3 else "val"
        img = rng.integers(0, 255, (h, 20), dtype=np.uint8)
        mask = np.zeros((h, 20), np.uint8)
        if rows:
            mask[rows[0]:rows[1], 5:8] = 255
        for sub, name, a in (("images", f"{i:03d}.jpg", img), ("masks", f"{i:03d}_mask.png", mask)):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / split / name), a)
    return root


def test_thirds_rule():
    assert prepare_sdd.thirds(1240) == [(0, 413), (413, 826), (826, 1240)]
    assert prepare_sdd.thirds(9) == [(0, 3), (3, 6), (6, 9)]


def test_prepare_sdd_counts_masks_lossless_and_idempotent(tmp_path):
    src, out = fake_kolektor(tmp_path / "ksdd"), tmp_path / "out"
    doc = prepare_sdd.prepare_sdd(src, out)
    # image 1: rows 10..39 with cut at 30 -> parts 0 and 1; image 3 (h 93, cut at 62): rows 60..61 -> part 1
    assert doc["built"] and doc["counts"] == {"source_images": 4, "source_defective_images": 2,
                                              "good": 9, "defective": 3}
    ds = load_dataset(out, "folders")
    assert ds.counts() == {"good": 9, "defective": 3, "crack": 3, "with_mask": 3}
    assert sorted(s.path.name for s in ds.defective) == ["train_001_0.png", "train_001_1.png", "val_003_1.png"]
    for s in ds.defective:
        assert read_mask(s.mask_path, read_image(s.path, 1).shape, s.path).any()
    original = cv2.imread(str(src / "images" / "val" / "003.jpg"), cv2.IMREAD_UNCHANGED)
    parts = [cv2.imread(str(next(out.glob(f"*/val_003_{i}.png"))), cv2.IMREAD_UNCHANGED) for i in range(3)]
    assert [p.shape[0] for p in parts] == [31, 31, 31] and np.array_equal(np.vstack(parts), original)
    mtime = (out / prepare_sdd.MARKER).stat().st_mtime_ns
    again = prepare_sdd.prepare_sdd(src, out)
    assert not again["built"] and (out / prepare_sdd.MARKER).stat().st_mtime_ns == mtime
    next((out / "good").iterdir()).unlink()  # incomplete output: rebuilt, same data set
    rebuilt = prepare_sdd.prepare_sdd(src, out)
    assert rebuilt["built"] and rebuilt["dataset_fingerprint"] == doc["dataset_fingerprint"]
    assert json.loads((out / prepare_sdd.MARKER).read_text())["counts"] == doc["counts"]


def test_prepare_sdd_clear_errors(tmp_path, capsys):
    assert prepare_sdd.main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "o").exists()
    src = fake_kolektor(tmp_path / "ksdd")
    (src / "masks" / "val" / "003_mask.png").unlink()
    with pytest.raises(prepare_sdd.SourceError, match="003_mask.png"):
        prepare_sdd.prepare_sdd(src, tmp_path / "o")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    assert prepare_sdd.main(["--src", str(fake_kolektor(tmp_path / "k2")), "--out", str(foreign)]) == 2
    assert "was not made by" in capsys.readouterr().err and (foreign / "keep.txt").exists()


def test_floors_use_the_open_set_split_and_separate_easy_defects(tmp_path):
    ds = load_dataset(make_folders_tree(tmp_path / "d", n_good=24, n_defect=8, size=32))
    rows = floors.evaluate(ds, k=2, seeds=[0, 1])
    assert [r["method"] for r in rows] == ["knn", "pca", "knn", "pca"]
    split = open_set_split(ds, 2, 1, test_good_fraction=0.25)
    r = rows[2]
    assert (r["n_train_good"], r["n_test_good"], r["n_test_defective"]) == (18, 6, 6) == (
        len(split.train_good), len(split.test_good), len(split.test_defective))
    assert all(0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["auprc"] <= 1.0 for r in rows)
    assert 0.0 < rows[1]["explained"] and rows[1]["explained"] >= 0.95


def test_knn_and_pca_scores():
    rng = np.random.default_rng(0)
    train, test = rng.random((30, 16)), rng.random((5, 16))
    ref = np.sqrt(((test[:, None] - train[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(floors.knn_scores(train, test), ref, atol=1e-9)
    assert np.allclose(floors.knn_scores(train, train[:3]), 0.0, atol=1e-6)
    full = floors.fit_pca(train, var=1.0)  # all components: a training image is reconstructed exactly
    assert floors.pca_scores(full, train[:3]).max() < 1e-9
    assert floors.fit_pca(train, n_components=4).components.shape == (4, 16)
    with pytest.raises(ValueError, match="n_components"):
        floors.fit_pca(train, n_components=100)
