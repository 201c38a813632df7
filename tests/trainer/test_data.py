"""Tests of trainer.data: layouts, bad input, the open-set split, the embedded sample."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.synthetic import make_elpv_tree, make_folders_tree, make_mvtec_tree, write_image
from trainer.data import (
    ELPV_MINI,
    SPLIT_RULE,
    Dataset,
    ImageError,
    Sample,
    Split,
    detect_layout,
    load_dataset,
    load_samples,
    open_set_split,
    read_image,
    read_mask,
)

REPO = Path(__file__).resolve().parents[2]
REAL_ELPV = REPO.parent / "shared" / "data" / "elpv"


# --------------------------------------------------------------------------- layouts


def test_detect_all_layouts(tmp_path):
    assert detect_layout(make_mvtec_tree(tmp_path / "m")) == "mvtec"
    assert detect_layout(make_folders_tree(tmp_path / "f")) == "folders"
    assert detect_layout(make_elpv_tree(tmp_path / "e")) == "elpv"
    assert detect_layout(ELPV_MINI) == "elpv"
    assert load_dataset(tmp_path / "m").layout == "mvtec"
    assert load_dataset(tmp_path / "f", layout="auto").layout == "folders"
    assert load_dataset(tmp_path / "e").layout == "elpv"


def test_unknown_layout_names_folder_and_layouts(tmp_path):
    d = tmp_path / "weird"
    write_image(d / "ok" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ImageError) as ei:
        load_dataset(d)
    msg = str(ei.value)
    assert str(d) in msg
    for name in ("mvtec", "elpv", "folders", "labels.csv", "good/"):
        assert name in msg
    with pytest.raises(ValueError, match="unknown layout"):
        load_dataset(d, layout="coco")


def test_auto_hints_at_nested_category(tmp_path):
    make_mvtec_tree(tmp_path / "mvtec_root" / "bottle", n_train_good=2, n_test_good=1, n_defect=1)
    with pytest.raises(ImageError, match="Did you mean .*bottle"):
        load_dataset(tmp_path / "mvtec_root")


def test_mvtec_samples(tmp_path):
    root = make_mvtec_tree(tmp_path / "m", n_train_good=12, n_test_good=6, n_defect=6)
    ds = load_dataset(root, "mvtec")
    assert ds.root == root.resolve()
    assert len(ds.samples) == 24 and len(ds.good) == 18 and len(ds.defective) == 6
    assert ds.defect_types == ("blob", "scratch")
    assert ds.predefined_train_good == frozenset((root / "train" / "good").resolve().glob("*.png"))
    assert len(ds.predefined_train_good) == 12
    assert [s.path for s in ds.samples] == sorted((s.path for s in ds.samples), key=lambda p: p.as_posix())
    for s in ds.samples:
        assert s.path.is_absolute() and s.path.is_file()
        if s.label == 0:
            assert s.defect_type == "good" and s.mask_path is None
        else:
            assert s.defect_type == s.path.parent.name
            assert s.mask_path == s.path.parents[2] / "ground_truth" / s.defect_type / f"{s.path.stem}_mask.png"
    assert ds.skipped == {}
    assert load_samples(root) == list(ds.samples)


def test_folders_layout_masks_not_a_class_and_stem_mask_names(tmp_path):
    root = make_folders_tree(tmp_path / "f", n_good=16, n_defect=6)
    # a mask named <stem>.png (instead of <stem>_mask.png) is accepted too
    m = root / "masks" / "blob" / "000_mask.png"
    m.rename(m.with_name("000.png"))
    ds = load_dataset(root)
    assert "masks" not in {s.defect_type for s in ds.samples}
    assert ds.defect_types == ("blob", "scratch")
    assert len(ds.good) == 16 and len(ds.defective) == 6
    assert ds.predefined_train_good == frozenset()
    masks = {s.path.relative_to(ds.root).as_posix(): s.mask_path for s in ds.defective}
    assert masks["blob/000.png"] == ds.root / "masks" / "blob" / "000.png"
    assert all(p is not None and p.is_file() for p in masks.values())


def test_non_images_ignored_but_counted(tmp_path):
    root = make_folders_tree(tmp_path / "f", n_good=4, n_defect=2)
    (root / "good" / "notes.txt").write_text("x")
    (root / "blob" / "Thumbs.db").write_bytes(b"x")
    (root / "good" / ".DS_Store").write_bytes(b"x")
    write_image(root / "good" / "UPPER.PNG", np.zeros((64, 64), np.uint8))  # extension case-insensitive
    ds = load_dataset(root)
    assert ds.skipped == {"hidden": 1, "not_an_image": 2}
    assert len(ds.good) == 5
    assert ds.root / "good" / "UPPER.PNG" in {s.path for s in ds.good}


def test_elpv_uncertain_excluded_and_counted(tmp_path):
    root = make_elpv_tree(tmp_path / "e", n_good=8, n_defect=4, n_uncertain=3)
    write_image(root / "images" / "unlisted.png", np.zeros((32, 32), np.uint8))
    (root / "images" / "readme.txt").write_text("x")
    ds = load_dataset(root)
    assert (len(ds.good), len(ds.defective)) == (8, 4)
    assert {s.defect_type for s in ds.defective} == {"defect"}
    assert ds.skipped == {"not_an_image": 1, "not_in_labels": 1, "uncertain_grade": 3}
    uncertain = {
        (ds.root / line.split()[0])
        for line in (root / "labels.csv").read_text().splitlines()
        if float(line.split()[1]) not in (0.0, 1.0)
    }
    assert len(uncertain) == 3
    assert not uncertain & {s.path for s in ds.samples}
    for k in (0, 1, 3):
        sp = open_set_split(ds, k=k, seed=1)
        assert not uncertain & {s.path for s in sp.train + sp.test}


def test_elpv_bad_rows(tmp_path):
    root = make_elpv_tree(tmp_path / "e", n_good=3, n_defect=2, n_uncertain=0)
    labels = root / "labels.csv"
    good = labels.read_text()
    labels.write_text(good + "images/missing.png  0.0  mono\n")
    with pytest.raises(ImageError, match="missing.png.*does not exist"):
        load_dataset(root)
    labels.write_text(good + "images/cell0001.png  2.0  mono\n")
    with pytest.raises(ImageError, match="labels.csv line 6"):
        load_dataset(root)


def test_embedded_sample():
    ds = load_dataset(ELPV_MINI)
    assert ds.layout == "elpv"
    assert (len(ds.good), len(ds.defective)) == (36, 14)
    assert ds.skipped == {}
    for name in ("LICENSE", "CITATION.cff", "README.md", "labels.csv"):
        assert (ELPV_MINI / name).is_file()
    assert "CC BY-NC-SA 4.0" in (ELPV_MINI / "README.md").read_text()
    total = sum(p.stat().st_size for p in ELPV_MINI.rglob("*") if p.is_file())
    assert total < 1_600_000
    img = read_image(ds.samples[0].path, channels=1)
    assert img.shape == (300, 300, 1) and img.dtype == np.uint8


# --------------------------------------------------------------------------- split


def _paths(samples):
    return [s.path for s in samples]


@pytest.mark.parametrize("kind", ["folders", "elpv"])
def test_split_rule_random_good(tmp_path, kind):
    if kind == "folders":
        ds = load_dataset(make_folders_tree(tmp_path / "d", n_good=16, n_defect=6))
    else:
        ds = load_dataset(make_elpv_tree(tmp_path / "d", n_good=20, n_defect=6, n_uncertain=2))
    n_good = len(ds.good)
    for k in (0, 1, 3, 5):
        sp = open_set_split(ds, k=k, seed=7)
        assert not set(_paths(sp.train)) & set(_paths(sp.test))
        assert len(sp.train) + len(sp.test) == len(ds.samples)
        assert set(_paths(sp.train + sp.test)) == set(_paths(ds.samples))
        assert len(sp.train_defective) == k == sp.k
        assert len(sp.test_defective) == len(ds.defective) - k
        assert len(sp.test_good) == round(0.25 * n_good)
        assert sp.seed == 7 and sp.rule == SPLIT_RULE
    assert len(open_set_split(ds, 1, 0, test_good_fraction=0.5).test_good) == round(0.5 * n_good)


def test_split_mvtec_honours_train_good(tmp_path):
    ds = load_dataset(make_mvtec_tree(tmp_path / "m", n_train_good=12, n_test_good=6, n_defect=6))
    for seed in (0, 1, 2):
        sp = open_set_split(ds, k=2, seed=seed)
        assert set(_paths(sp.train_good)) == ds.predefined_train_good
        assert {p.parent.parent.name for p in _paths(sp.test_good)} == {"test"}
        assert len(sp.test_good) == 6
        assert len(sp.train_defective) == 2 and len(sp.test_defective) == 4
        assert not set(_paths(sp.train)) & set(_paths(sp.test))


def test_split_deterministic_and_seed_dependent(tmp_path):
    ds = load_dataset(make_elpv_tree(tmp_path / "e", n_good=40, n_defect=20, n_uncertain=0))
    a, b = open_set_split(ds, 5, seed=3), open_set_split(ds, 5, seed=3)
    assert a == b
    # a fresh load of the same data gives the same split
    assert open_set_split(load_dataset(tmp_path / "e"), 5, seed=3) == a
    others = [open_set_split(ds, 5, seed=s) for s in (4, 5, 6)]
    assert any(set(_paths(o.train_defective)) != set(_paths(a.train_defective)) for o in others)
    assert any(set(_paths(o.test_good)) != set(_paths(a.test_good)) for o in others)


def test_split_bad_k(tmp_path):
    ds = load_dataset(make_folders_tree(tmp_path / "f", n_good=8, n_defect=4))
    with pytest.raises(ValueError, match="has 4 defective"):
        open_set_split(ds, k=4, seed=0)
    with pytest.raises(ValueError, match="has 4 defective"):
        open_set_split(ds, k=10, seed=0)
    with pytest.raises(ValueError):
        open_set_split(ds, k=-1, seed=0)
    assert len(open_set_split(ds, k=3, seed=0).test_defective) == 1


def test_split_json_round_trip(tmp_path):
    root = make_mvtec_tree(tmp_path / "m", n_train_good=6, n_test_good=3, n_defect=4)
    ds = load_dataset(root)
    sp = open_set_split(ds, k=2, seed=11)
    f = tmp_path / "run" / "split.json"
    f.parent.mkdir()
    f.write_text(json.dumps(sp.to_json(ds.root), indent=1))
    d = json.loads(f.read_text())
    assert d["k"] == 2 and d["seed"] == 11 and d["rule"] == SPLIT_RULE
    assert d["counts"] == {"train_good": 6, "train_defective": 2, "test_good": 3, "test_defective": 2}
    assert all(not Path(e["path"]).is_absolute() for e in d["train"] + d["test"])
    assert any(e["mask"] for e in d["test"])
    back = Split.from_json(d, root)  # root not resolved: from_json must still match
    assert back == sp
    d["counts"]["train_good"] = 99
    with pytest.raises(ValueError, match="counts"):
        Split.from_json(d, root)


def test_split_rule_text_is_in_docs():
    doc = (REPO / "docs" / "data.md").read_text()
    assert SPLIT_RULE in doc
    assert "Ding et al." in doc and "2306.08366" in doc


# --------------------------------------------------------------------------- bad input


def test_read_image_channels_and_rgb(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    p = write_image(tmp_path / "colour.png", rgb)
    img = read_image(p, channels=3)
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [200, 0, 0]
    with pytest.raises(ImageError) as ei:
        read_image(p, channels=1)
    assert "colour.png" in str(ei.value) and "3 channels" in str(ei.value) and "--channels 3" in str(ei.value)

    g = write_image(tmp_path / "gray.png", np.full((4, 5), 7, np.uint8))
    assert read_image(g, channels=1).shape == (4, 5, 1)
    with pytest.raises(ImageError) as ei:
        read_image(g, channels=3)
    assert "gray.png" in str(ei.value) and "--channels 1" in str(ei.value)


def test_read_image_garbage(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ImageError, match="broken.png"):
        read_image(p, channels=1)
    with pytest.raises(ImageError, match="nothere.png"):
        read_image(tmp_path / "nothere.png", channels=1)


def test_read_image_16bit_and_alpha(tmp_path):
    p = tmp_path / "deep.png"
    cv2.imwrite(str(p), np.full((4, 4), 4000, np.uint16))
    with pytest.raises(ImageError) as ei:
        read_image(p, channels=1)
    assert "deep.png" in str(ei.value) and "16-bit" in str(ei.value) and "8-bit" in str(ei.value)
    a = tmp_path / "alpha.png"
    cv2.imwrite(str(a), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ImageError, match="alpha.png.*4 channels"):
        read_image(a, channels=3)


def test_empty_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="empty"):
        load_dataset(empty)
    root = make_folders_tree(tmp_path / "f", n_good=3, n_defect=2)
    (root / "dent").mkdir()
    with pytest.raises(ImageError) as ei:
        load_dataset(root)
    assert str(root / "dent") in str(ei.value) and "no images" in str(ei.value)
    (root / "dent").rmdir()
    for p in (root / "good").iterdir():
        p.unlink()
    with pytest.raises(ImageError, match=r"good.*no images"):
        load_dataset(root)
    m = make_mvtec_tree(tmp_path / "m", n_train_good=0, n_test_good=2, n_defect=2)
    (m / "train" / "good").mkdir(parents=True)
    with pytest.raises(ImageError, match=r"train/good"):
        load_dataset(m)


def test_mask_problems(tmp_path):
    root = make_mvtec_tree(tmp_path / "m", n_train_good=3, n_test_good=2, n_defect=2)
    ds = load_dataset(root)
    s = ds.defective[0]
    img = read_image(s.path, channels=1)
    mask = read_mask(s.mask_path, img.shape, image_path=s.path)
    assert mask.dtype == bool and mask.shape == img.shape[:2] and mask.any()

    small = tmp_path / "small_mask.png"
    write_image(small, np.full((32, 48), 255, np.uint8))
    with pytest.raises(ImageError) as ei:
        read_mask(small, img.shape[:2], image_path=s.path)
    msg = str(ei.value)
    assert "small_mask.png" in msg and s.path.name in msg and "48x32" in msg and "64x64" in msg

    # a mask whose image is missing
    write_image(root / "ground_truth" / "blob" / "077_mask.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ImageError, match="077_mask.png.*no image"):
        load_dataset(root)


def test_fingerprint_changes_with_files(tmp_path):
    root = make_folders_tree(tmp_path / "f", n_good=6, n_defect=2)
    fp = load_dataset(root).fingerprint()
    assert fp == load_dataset(root).fingerprint()
    assert len(fp) == 64
    # same tree elsewhere: the fingerprint uses relative paths
    assert load_dataset(make_folders_tree(tmp_path / "g", n_good=6, n_defect=2)).fingerprint() == fp
    target = root / "good" / "002.png"
    before = target.stat().st_size
    write_image(target, np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8))
    assert target.stat().st_size != before
    fp2 = load_dataset(root).fingerprint()
    assert fp2 != fp
    (root / "good" / "002.png").rename(root / "blob" / "new.png")  # relabel
    assert load_dataset(root).fingerprint() not in (fp, fp2)


def test_dataset_is_frozen(tmp_path):
    ds = load_dataset(make_folders_tree(tmp_path / "f", n_good=3, n_defect=1))
    assert isinstance(ds, Dataset) and isinstance(ds.samples, tuple)
    with pytest.raises(Exception):
        ds.layout = "elpv"  # type: ignore[misc]
    assert Sample(Path("/a.png"), 0, "good") == Sample(Path("/a.png"), 0, "good", None)


# --------------------------------------------------------------------------- real data


def test_real_elpv_counts():
    if not (REAL_ELPV / "labels.csv").is_file():
        pytest.skip(f"real ELPV data not found at {REAL_ELPV}")
    ds = load_dataset(REAL_ELPV)
    assert ds.layout == "elpv"
    assert len(ds.good) == 1508 and len(ds.defective) == 715
    assert ds.skipped == {"uncertain_grade": 401}
    sp = open_set_split(ds, k=10, seed=0)
    assert sp.counts() == {"train_good": 1131, "train_defective": 10, "test_good": 377, "test_defective": 705}
    # the embedded sample is a byte-identical subset
    for s in load_dataset(ELPV_MINI).samples:
        assert s.path.read_bytes() == (REAL_ELPV / "images" / s.path.name).read_bytes()


@pytest.mark.parametrize("maker, mask_dir", [(make_mvtec_tree, "ground_truth"), (make_folders_tree, "masks")])
def test_mask_folders_without_images_or_for_good_images_are_errors(tmp_path, maker, mask_dir):
    import shutil
    root = maker(tmp_path / "a")
    existing = next(p for p in (root / mask_dir).iterdir() if p.is_dir())
    shutil.copytree(existing, root / mask_dir / "ghost")
    with pytest.raises(ImageError, match="has no image: there is no defect folder .*ghost"):
        load_dataset(root)
    shutil.rmtree(root / mask_dir / "ghost")
    shutil.copytree(existing, root / mask_dir / "good")
    with pytest.raises(ImageError, match=f"good images have no defect masks; remove {mask_dir}/good/"):
        load_dataset(root)
