"""Samples and data-set layouts: find the images of a data set and their labels.

Three layouts are supported (see docs/data.md):

``mvtec``
    ``root/train/good/`` (training good images), ``root/test/good/`` (held-out good
    images), ``root/test/<defect>/`` (one folder per defect class) and optionally
    ``root/ground_truth/<defect>/<stem>_mask.png`` pixel masks.
``elpv``
    ``root/labels.csv`` with one whitespace separated row per image:
    ``images/cellNNNN.png  <defect probability>  <mono|poly>``.  Probability 0 is
    good, 1 is defective (defect type ``"defect"``); the uncertain grades 1/3 and
    2/3 are excluded and counted in ``Dataset.skipped["uncertain_grade"]``.
``folders``
    ``root/good/`` plus one folder per defect class; optional masks in
    ``root/masks/<defect>/<stem>_mask.png`` (or ``<stem>.png``).

Nothing is skipped silently: every file that is not used is counted, by reason,
in :attr:`Dataset.skipped`.  Anything that looks like a mistake (an empty
folder, a mask without its image, a row naming a missing file) raises
:class:`~trainer.data.images.ImageError`.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS, ImageError, is_image_file

__all__ = [
    "LAYOUTS",
    "Dataset",
    "Sample",
    "detect_layout",
    "load_dataset",
    "load_samples",
]

#: The layouts :func:`load_dataset` understands (``"auto"`` detects one of them).
LAYOUTS: tuple[str, ...] = ("mvtec", "elpv", "folders")

_LAYOUT_HELP = (
    "supported layouts: "
    "'mvtec' (train/good/, test/good/, test/<defect>/, optional ground_truth/<defect>/<stem>_mask.png); "
    "'elpv' (labels.csv with rows 'images/x.png <prob 0|1/3|2/3|1> <mono|poly>'); "
    "'folders' (good/ plus one folder per defect class, optional masks/<defect>/<stem>_mask.png). "
    "See docs/data.md"
)


@dataclass(frozen=True)
class Sample:
    """One image of a data set."""

    path: Path  #: absolute path of the image
    label: int  #: 0 good, 1 defective
    defect_type: str  #: "good" for good images, else the defect class name ("defect" when unknown)
    mask_path: Path | None = None  #: pixel mask (nonzero = defect) when one exists


@dataclass(frozen=True)
class Dataset:
    """All usable samples of a data set, plus what was left out and why."""

    root: Path
    layout: str
    samples: tuple[Sample, ...]
    #: mvtec: the paths under train/good (always training material); empty for other layouts.
    predefined_train_good: frozenset[Path] = frozenset()
    #: reason -> number of files (or rows) not used, e.g. {"uncertain_grade": 401, "not_an_image": 2}.
    skipped: dict[str, int] = field(default_factory=dict, hash=False)

    @property
    def good(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.label == 0)

    @property
    def defective(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.label == 1)

    @property
    def defect_types(self) -> tuple[str, ...]:
        """Sorted defect class names present (without "good")."""
        return tuple(sorted({s.defect_type for s in self.samples if s.label == 1}))

    def counts(self) -> dict[str, int]:
        """{"good": n, "defective": n, "<defect_type>": n, ..., "with_mask": n}."""
        c: dict[str, int] = {"good": len(self.good), "defective": len(self.defective)}
        for t, n in sorted(Counter(s.defect_type for s in self.defective).items()):
            c[t] = n
        c["with_mask"] = sum(1 for s in self.samples if s.mask_path is not None)
        return c

    def relative(self, path: Path) -> str:
        """``path`` relative to the data set's root, POSIX style."""
        return Path(path).relative_to(self.root).as_posix()

    def fingerprint(self) -> str:
        """sha256 over the sorted lines ``relative path\\tlabel\\tdefect_type\\tfile size``.

        Identifies the data-set version (which files, how labelled, how big).  File
        sizes are read from disk when called.
        """
        lines = []
        for s in self.samples:
            try:
                size = os.stat(s.path).st_size
            except OSError as exc:
                raise ImageError(f"image {s.path} of the data set at {self.root} is gone ({exc}); reload the data set") from exc
            lines.append(f"{self.relative(s.path)}\t{s.label}\t{s.defect_type}\t{size}")
        lines.sort()
        return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- helpers


class _Skips:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _check_root(root: str | os.PathLike) -> Path:
    p = Path(root).expanduser()
    if not p.exists():
        raise ImageError(f"data folder {p} does not exist; check the path")
    if not p.is_dir():
        raise ImageError(f"data folder {p} is not a folder; give the folder that holds the data set")
    return p.resolve()


def _list_dir(folder: Path, skips: _Skips) -> tuple[list[Path], list[Path]]:
    """Image files and sub-folders of ``folder`` (sorted); other entries are counted."""
    images: list[Path] = []
    dirs: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skips.add("hidden")
        elif entry.is_dir():
            dirs.append(entry)
        elif entry.is_file():
            if is_image_file(entry):
                images.append(entry)
            else:
                skips.add("not_an_image")
        else:
            skips.add("not_a_regular_file")  # broken link, socket, ...
    return images, dirs


def _class_images(folder: Path, skips: _Skips, what: str) -> list[Path]:
    """The images of one class folder; sub-folders are counted, an empty folder is an error."""
    if not folder.is_dir():
        raise ImageError(f"folder {folder} is missing; {what}")
    images, dirs = _list_dir(folder, skips)
    skips.add("nested_folder", len(dirs))
    if not images:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ImageError(
            f"folder {folder} contains no images ({exts}); {what} - add images or remove the folder"
        )
    return images


def _attach_masks(images: list[Path], mask_dir: Path, skips: _Skips) -> dict[Path, Path]:
    """Map image -> mask for the masks in ``mask_dir`` (``<stem>_mask.<ext>`` or ``<stem>.<ext>``)."""
    by_stem: dict[str, list[Path]] = {}
    for img in images:
        by_stem.setdefault(img.stem, []).append(img)
    image_dir = images[0].parent if images else None
    masks, dirs = _list_dir(mask_dir, skips)
    skips.add("nested_folder", len(dirs))
    out: dict[Path, Path] = {}
    for m in masks:
        stem = m.stem
        if stem.endswith("_mask") and stem[: -len("_mask")] in by_stem:
            key = stem[: -len("_mask")]
        elif stem in by_stem:
            key = stem
        else:
            base = stem[: -len("_mask")] if stem.endswith("_mask") else stem
            where = image_dir if image_dir is not None else "the matching image folder"
            raise ImageError(
                f"mask {m} has no image: expected an image named {base}.<png|jpg|...> in {where}; "
                "add the image or remove the mask"
            )
        cands = by_stem[key]
        if len(cands) > 1:
            raise ImageError(
                f"mask {m} matches several images ({', '.join(p.name for p in cands)}); "
                "give every image in the folder a distinct file name stem"
            )
        img = cands[0]
        if img in out:
            raise ImageError(f"image {img} has two masks: {out[img]} and {m}; keep one")
        out[img] = m
    return out


def _sorted(samples: list[Sample]) -> tuple[Sample, ...]:
    return tuple(sorted(samples, key=lambda s: s.path.as_posix()))


# --------------------------------------------------------------------------- layouts


def detect_layout(root: str | os.PathLike) -> str:
    """Which layout ``root`` is in: ``"elpv"``, ``"mvtec"`` or ``"folders"`` (else ImageError)."""
    r = _check_root(root)
    if (r / "labels.csv").is_file():
        return "elpv"
    if (r / "train").is_dir() and (r / "test").is_dir():
        return "mvtec"
    if (r / "good").is_dir():
        return "folders"
    entries = sorted(p.name for p in r.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ImageError(f"data folder {r} is empty; {_LAYOUT_HELP}")
    hint = ""
    nested = [d for d in entries if (r / d).is_dir() and (((r / d / "train").is_dir() and (r / d / "test").is_dir())
                                                         or (r / d / "labels.csv").is_file()
                                                         or (r / d / "good").is_dir())]
    if nested:
        hint = f" Did you mean {r / nested[0]}? (pass the folder of one data set / category)"
    shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
    raise ImageError(
        f"cannot tell the layout of data folder {r} (it holds: {shown}); it must contain labels.csv (elpv), "
        f"train/ and test/ (mvtec) or good/ (folders). {_LAYOUT_HELP}.{hint}"
    )


def _load_mvtec(root: Path, skips: _Skips) -> tuple[list[Sample], frozenset[Path]]:
    train, test, gt = root / "train", root / "test", root / "ground_truth"
    for d in (train, test):
        if not d.is_dir():
            raise ImageError(f"folder {d} is missing; the mvtec layout needs train/good/ and test/ ({_LAYOUT_HELP})")
    # the root: train/, test/, ground_truth/; anything else is counted
    loose, dirs = _list_dir(root, skips)
    skips.add("image_outside_class_folder", len(loose))
    skips.add("unknown_folder", sum(1 for d in dirs if d.name not in ("train", "test", "ground_truth")))

    loose, dirs = _list_dir(train, skips)
    skips.add("image_outside_class_folder", len(loose))
    for d in dirs:
        if d.name != "good":
            raise ImageError(
                f"folder {d}: train/ may only contain good/ in the mvtec layout; move defective images to "
                f"test/{d.name}/ (the open-set split draws the k labelled defective training images from test/)"
            )
    train_good = _class_images(train / "good", skips, "the mvtec layout needs the good training images in train/good/")

    loose, dirs = _list_dir(test, skips)
    skips.add("image_outside_class_folder", len(loose))
    if not (test / "good").is_dir():
        raise ImageError(f"folder {test / 'good'} is missing; the mvtec layout needs held-out good images in test/good/")
    samples = [Sample(p, 0, "good") for p in train_good]
    class_images: dict[str, list[Path]] = {}
    for d in dirs:
        class_images[d.name] = _class_images(
            d, skips, "every folder in test/ is an image class (good/ or one defect type) and needs images"
        )

    masks = _collect_masks(gt, class_images, test, skips) if gt.is_dir() else {}

    for name, imgs in class_images.items():
        if name == "good":
            samples += [Sample(p, 0, "good") for p in imgs]
        else:
            samples += [Sample(p, 1, name, masks.get(p)) for p in imgs]
    return samples, frozenset(train_good)


def _collect_masks(mask_root: Path, class_images: dict[str, list[Path]], image_root: Path,
                   skips: _Skips) -> dict[Path, Path]:
    """image path -> mask path, from ``mask_root/<defect>/`` (mvtec ground_truth/, folders masks/)."""
    masks: dict[Path, Path] = {}
    loose, dirs = _list_dir(mask_root, skips)
    skips.add("image_outside_class_folder", len(loose))
    for d in dirs:
        if d.name == "good":
            raise ImageError(f"folder {d}: good images have no defect masks; remove {mask_root.name}/good/")
        if d.name not in class_images:
            mask_files, _ = _list_dir(d, _Skips())
            if mask_files:
                raise ImageError(f"mask {mask_files[0]} has no image: there is no defect folder "
                                 f"{image_root / d.name}; add the defective images there or remove {d}")
            skips.add("unknown_folder")
            continue
        masks.update(_attach_masks(class_images[d.name], d, skips))
    return masks


def _load_folders(root: Path, skips: _Skips) -> list[Sample]:
    loose, dirs = _list_dir(root, skips)
    skips.add("image_outside_class_folder", len(loose))
    names = [d.name for d in dirs]
    if "good" not in names:
        raise ImageError(f"folder {root / 'good'} is missing; the folders layout needs the good images in good/ ({_LAYOUT_HELP})")
    class_images: dict[str, list[Path]] = {}
    for d in dirs:
        if d.name == "masks":
            continue
        what = ("the folders layout needs the good images in good/" if d.name == "good"
                else "every folder except good/ and masks/ is a defect class and needs images")
        class_images[d.name] = _class_images(d, skips, what)

    mroot = root / "masks"
    masks = _collect_masks(mroot, class_images, root, skips) if mroot.is_dir() else {}

    samples: list[Sample] = []
    for name, imgs in class_images.items():
        if name == "good":
            samples += [Sample(p, 0, "good") for p in imgs]
        else:
            samples += [Sample(p, 1, name, masks.get(p)) for p in imgs]
    return samples


def _load_elpv(root: Path, skips: _Skips) -> list[Sample]:
    labels = root / "labels.csv"
    if not labels.is_file():
        raise ImageError(f"file {labels} is missing; the elpv layout needs labels.csv ({_LAYOUT_HELP})")
    samples: list[Sample] = []
    seen: dict[Path, int] = {}
    listed_dirs: set[Path] = set()
    with open(labels, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            where = f"{labels} line {lineno}"
            if len(parts) < 2:
                raise ImageError(f"{where}: expected '<image path> <defect probability> [mono|poly]', got {line!r}")
            rel, grade_txt = parts[0], parts[1]
            try:
                grade = float(grade_txt)
            except ValueError:
                if lineno == 1 and not is_image_file(rel):
                    continue  # a header row
                raise ImageError(f"{where}: defect probability {grade_txt!r} is not a number (0, 1/3, 2/3 or 1)") from None
            if not math.isfinite(grade) or grade < -1e-6 or grade > 1 + 1e-6:
                raise ImageError(f"{where}: defect probability {grade_txt!r} is outside 0..1")
            if Path(rel).is_absolute():
                raise ImageError(f"{where}: image path {rel!r} must be relative to {root}")
            path = Path(os.path.normpath(root / rel))  # not resolve(): symlinked images stay under root
            try:
                path.relative_to(root)
            except ValueError:
                raise ImageError(f"{where}: image path {rel!r} points outside the data folder {root}") from None
            if not is_image_file(path):
                raise ImageError(f"{where}: {rel!r} is not an image file ({' '.join(sorted(IMAGE_EXTENSIONS))})")
            if path in seen:
                raise ImageError(f"{where}: image {rel!r} is listed twice (also line {seen[path]}); keep one row")
            seen[path] = lineno
            if not path.is_file():
                raise ImageError(f"{where}: image {path} does not exist; restore it or delete the row")
            listed_dirs.add(path.parent)
            if abs(grade) <= 1e-6:
                samples.append(Sample(path, 0, "good"))
            elif abs(grade - 1.0) <= 1e-6:
                samples.append(Sample(path, 1, "defect"))
            else:
                skips.add("uncertain_grade")  # 1/3, 2/3: excluded from train and test
    if not samples and not skips.counts:
        raise ImageError(f"{labels} lists no images; add rows 'images/x.png <prob> <mono|poly>'")
    if not any(s.label == 0 for s in samples):
        raise ImageError(f"{labels} lists no good images (defect probability 0); the data set needs good images")
    # image files next to the listed ones that labels.csv does not mention are counted, never used
    for d in sorted(listed_dirs):
        imgs, _ = _list_dir(d, skips)
        skips.add("not_in_labels", sum(1 for p in imgs if p not in seen))
    return samples


def load_dataset(root: str | os.PathLike, layout: str = "auto") -> Dataset:
    """Load the data set at ``root`` in ``layout`` ("auto", "mvtec", "elpv" or "folders")."""
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use 'auto' or one of {', '.join(LAYOUTS)}")
    r = _check_root(root)
    if layout == "auto":
        layout = detect_layout(r)
    skips = _Skips()
    predefined: frozenset[Path] = frozenset()
    if layout == "mvtec":
        samples, predefined = _load_mvtec(r, skips)
    elif layout == "elpv":
        samples = _load_elpv(r, skips)
    else:
        samples = _load_folders(r, skips)
    return Dataset(root=r, layout=layout, samples=_sorted(samples),
                   predefined_train_good=predefined, skipped=skips.as_dict())


def load_samples(root: str | os.PathLike, layout: str = "auto") -> list[Sample]:
    """The samples of :func:`load_dataset`, as a list (sorted by path)."""
    return list(load_dataset(root, layout).samples)
