"""bench/resize_modes.py runs end to end on a tiny KolektorSDD-shaped folder made here (long parts,
a bright streak as the defect); its figures come from the full run (docs/benchmarks.md)."""
import json

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="the train extra is not installed")

from bench import resize_modes  # noqa: E402


def _write_parts(root, n_good=8, n_bad=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
    for i in range(n_good + n_bad):
        img = (110 + rng.normal(0, 6, (150, 60))).clip(0, 255).astype(np.uint8)
        mask = np.zeros_like(img)
        if i >= n_good:
            img[100:130, 20:24] = 250
            mask[100:130, 20:24] = 255
        split = "train" if i % 2 else "val"
        cv2.imwrite(str(root / "images" / split / f"{i:03d}.jpg"), img)
        cv2.imwrite(str(root / "masks" / split / f"{i:03d}_mask.png"), mask)


def test_views_keep_the_part():
    img = np.arange(150 * 60, dtype=np.uint32).reshape(150, 60).astype(np.uint8)
    assert [v.shape for v in resize_modes.views(img, "tiles")] == [(50, 60), (50, 60), (50, 60)]
    assert np.array_equal(np.concatenate(resize_modes.views(img, "tiles")), img)
    box = resize_modes.letterbox(img)
    assert box.shape == (150, 150) and np.array_equal(box[:, 45:105], img)


@pytest.mark.timeout(300)
def test_resize_modes_rows(tmp_path):
    _write_parts(tmp_path / "sdd")
    out = tmp_path / "rows.json"
    assert resize_modes.main(["--src", str(tmp_path / "sdd"), "--seeds", "0", "--size", "64",
                              "--json", str(out), "--no-docs"]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == list(resize_modes.MODES)
    assert [r["views"] for r in rows] == [1, 1, 3]
    for r in rows:
        assert r["n_test_defective"] == 3 and r["n_test_good"] == 2 and r["n_train_parts"] == 6
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["miss_at_5"] <= 1.0
