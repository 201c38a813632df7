"""Build the DRA / SaliencyCut "SDD" benchmark from KolektorSDD: every image cut into 3 vertical thirds.

Source: ../shared/data/kolektorsdd (399 grayscale JPEGs, images/{train,val}/NNN.jpg, 500 x ~1240-1285
px, with filled defect masks masks/{train,val}/NNN_mask.png; the train/val division is not a benchmark
split, so both are used together). Rule, as in DRA (Ding et al., CVPR 2022) and SaliencyCut (Ye et al.,
arXiv 2306.08366):

* each image of height H is cut along its height into three crops of full width: rows
  [0, H//3), [H//3, 2*(H//3)) and [2*(H//3), H) (the last third takes the remainder);
* a crop is defective ("crack", the data set's one defect type) when its rows of the mask hold any
  nonzero pixel, good otherwise. This gives 1,143 good and 54 defective crops (52 defective images,
  2 of them with a crack across a cut).

Output (``--out``, default runs/data/sdd_thirds) in the project's ``folders`` layout (docs/data.md),
written losslessly as PNG (the decoded JPEG pixels, unchanged):

    good/<split>_<NNN>_<part>.png              part 0 = top, 1 = middle, 2 = bottom third
    crack/<split>_<NNN>_<part>.png
    masks/crack/<split>_<NNN>_<part>_mask.png  the crop's rows of the source mask, 0 / 255
    .prepared.json                             marker: rule, source and output fingerprints, counts

Idempotent: when the marker matches the source (sha256 of every source image and mask) and the output
(``Dataset.fingerprint()`` and the mask count), nothing is written. Otherwise the set is built in a
temporary folder beside ``--out``, checked with ``trainer.data.load_dataset(out, "folders")``, and
moved into place. A folder at ``--out`` without the marker is never overwritten. (The hidden marker
shows up as ``skipped: {"hidden": 1}`` when the folder is loaded, by design of the data layer.)

    python bench/prepare_sdd.py [--src ../shared/data/kolektorsdd] [--out runs/data/sdd_thirds] [--force]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trainer.data import ImageError, load_dataset  # noqa: E402

DEFAULT_SRC = ROOT.parent / "shared" / "data" / "kolektorsdd"
DEFAULT_OUT = ROOT / "runs" / "data" / "sdd_thirds"
MARKER = ".prepared.json"
FORMAT = "edge-inspect/sdd-thirds/v1"
PARTS = 3
DEFECT = "crack"
SPLITS = ("train", "val")
RULE = ("DRA/SaliencyCut SDD: each KolektorSDD image (train/ and val/ together) of height H is cut into 3 "
        "full-width crops, rows [0, H//3), [H//3, 2*(H//3)), [2*(H//3), H); a crop is defective (crack) "
        "when its rows of masks/<split>/NNN_mask.png hold any nonzero pixel. Written as lossless PNG in "
        "the folders layout: good/, crack/, masks/crack/<stem>_mask.png.")


class SourceError(RuntimeError):
    """The KolektorSDD source folder is missing or incomplete."""


def _source_pairs(src: Path) -> list[tuple[str, Path, Path]]:
    """(split, image, mask) for every source image, sorted; a clear error when anything is missing."""
    help_txt = (f"expected KolektorSDD at {src}: images/{{train,val}}/NNN.jpg and masks/{{train,val}}/NNN_mask.png "
                "(see ../shared/data/README.md); pass --src")
    if not src.is_dir():
        raise SourceError(f"source folder {src} does not exist; {help_txt}")
    pairs = []
    for split in SPLITS:
        img_dir, mask_dir = src / "images" / split, src / "masks" / split
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise SourceError(f"folder {d} is missing; {help_txt}")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        if not images:
            raise SourceError(f"folder {img_dir} holds no images; {help_txt}")
        for img in images:
            mask = mask_dir / f"{img.stem}_mask.png"
            if not mask.is_file():
                raise SourceError(f"mask {mask} of image {img} is missing; {help_txt}")
            pairs.append((split, img, mask))
    return pairs


def source_fingerprint(src: Path, pairs: list[tuple[str, Path, Path]]) -> str:
    """sha256 over (relative path, content sha256) of every source image and mask."""
    h = hashlib.sha256()
    for _, img, mask in pairs:
        for p in (img, mask):
            h.update(f"{p.relative_to(src).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def thirds(height: int) -> list[tuple[int, int]]:
    """Row ranges of the three vertical thirds (the last one takes the remainder)."""
    t = height // PARTS
    cuts = [i * t for i in range(PARTS)] + [height]
    return [(cuts[i], cuts[i + 1]) for i in range(PARTS)]


def _read(path: Path, what: str) -> np.ndarray:
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint8 or a.ndim != 2:
        raise SourceError(f"{what} {path} cannot be read as an 8-bit grayscale image")
    return a


def _write_png(path: Path, a: np.ndarray) -> None:
    if not cv2.imwrite(str(path), a, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"cannot write {path}")


def _build(pairs: list[tuple[str, Path, Path]], dest: Path) -> dict[str, int]:
    for d in (dest / "good", dest / DEFECT, dest / "masks" / DEFECT):
        d.mkdir(parents=True)
    counts = {"source_images": len(pairs), "source_defective_images": 0, "good": 0, "defective": 0}
    for split, img_path, mask_path in pairs:
        img, mask = _read(img_path, "image"), _read(mask_path, "mask")
        if mask.shape != img.shape:
            raise SourceError(f"mask {mask_path} is {mask.shape[::-1]} (WxH) but image {img_path} is {img.shape[::-1]}")
        any_defect = False
        for part, (r0, r1) in enumerate(thirds(img.shape[0])):
            stem = f"{split}_{img_path.stem}_{part}"
            m = mask[r0:r1] != 0
            if m.any():
                any_defect = True
                _write_png(dest / DEFECT / f"{stem}.png", img[r0:r1])
                _write_png(dest / "masks" / DEFECT / f"{stem}_mask.png", m.astype(np.uint8) * 255)
                counts["defective"] += 1
            else:
                _write_png(dest / "good" / f"{stem}.png", img[r0:r1])
                counts["good"] += 1
        counts["source_defective_images"] += any_defect
    return counts


def verify(out: Path, counts: dict[str, int]) -> str:
    """Load ``out`` with the project's data layer; the counts and masks must match. Returns its fingerprint."""
    ds = load_dataset(out, "folders")
    got = ds.counts()
    want = {"good": counts["good"], "defective": counts["defective"], DEFECT: counts["defective"],
            "with_mask": counts["defective"]}
    if got != want:
        raise RuntimeError(f"{out}: load_dataset gives {got}, expected {want}")
    if any(s.mask_path is None for s in ds.defective) or ds.defect_types != (DEFECT,):
        raise RuntimeError(f"{out}: every defective crop must have a mask and the one defect type {DEFECT!r}")
    if ds.skipped != {"hidden": 1}:  # the marker only
        raise RuntimeError(f"{out}: unexpected files: skipped {ds.skipped}")
    return ds.fingerprint()


def _marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def prepare_sdd(src: Path = DEFAULT_SRC, out: Path = DEFAULT_OUT, force: bool = False) -> dict:
    """Build (or find complete) the SDD thirds at ``out``; returns the marker dict plus ``"built"``."""
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    pairs = _source_pairs(src)
    src_fp = source_fingerprint(src, pairs)
    old = _marker(out) if out.is_dir() else None
    if out.exists() and old is None and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and was not made by {Path(__file__).name} (no {MARKER}); "
                              "remove it or choose another --out")
    if old is not None and not force and old.get("format") == FORMAT and old.get("rule") == RULE \
            and old.get("source_sha256") == src_fp:
        try:
            if verify(out, old["counts"]) == old.get("dataset_fingerprint"):
                return {**old, "built": False}
        except (ImageError, RuntimeError, KeyError):
            pass  # incomplete or edited: rebuild

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = _build(pairs, tmp)
        doc = {"format": FORMAT, "rule": RULE, "source": str(src), "source_sha256": src_fp, "counts": counts}
        (tmp / MARKER).write_text("{}")  # so that verify() sees the final file set
        doc["dataset_fingerprint"] = verify(tmp, counts)
        (tmp / MARKER).write_text(json.dumps(doc, indent=1) + "\n")
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(trash)
            shutil.rmtree(trash)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**doc, "built": True}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=DEFAULT_SRC, help="KolektorSDD folder (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild even when the output is complete")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        doc = prepare_sdd(args.src, args.out, force=args.force)
    except (SourceError, FileExistsError) as e:
        print(f"prepare_sdd: error: {e}", file=sys.stderr)
        return 2
    c = doc["counts"]
    state = "built" if doc["built"] else "already complete, nothing written"
    print(f"SDD thirds at {args.out} ({state}): {c['good']} good + {c['defective']} defective ({DEFECT}, each with "
          f"a mask) crops from {c['source_images']} images ({c['source_defective_images']} defective); "
          f"fingerprint {doc['dataset_fingerprint'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
