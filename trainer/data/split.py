"""The open-set split (DRA / SaliencyCut protocol): good images + k labelled defective ones for training.

The rule text :data:`SPLIT_RULE` is stored in every run directory (via
:meth:`Split.to_json`) and written out in docs/data.md; keep the two identical.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .samples import Dataset, Sample

__all__ = ["SPLIT_FORMAT", "SPLIT_RULE", "Split", "open_set_split"]

SPLIT_FORMAT = "edge-inspect/open-set-split/v1"

#: The human-readable split rule (identical to the block in docs/data.md).
SPLIT_RULE = (
    "Open-set split (protocol of DRA, Ding et al., CVPR 2022, and SaliencyCut, Ye et al., arXiv 2306.08366); "
    "parameters k, seed, test_good_fraction (default 0.25).\n"
    "1. Only images labelled good (0) or defective (1) take part; uncertain ELPV grades (1/3, 2/3) are in "
    "neither train nor test.\n"
    "2. One random generator is used: numpy.random.default_rng(seed).\n"
    "3. Good images. mvtec layout: train/good/ is train and test/good/ is test (no random draw, "
    "test_good_fraction unused). elpv and folders layouts: the good images, sorted by relative path, are put "
    "in the order rng.permutation(n_good); the first round(test_good_fraction * n_good) (Python round, half to "
    "even) go to test, the rest to train.\n"
    "4. Defective images, sorted by relative path, are put in the order rng.permutation(n_defective) drawn "
    "from the same generator after step 3; the first k go to train as labelled defective images, all the "
    "others go to test.\n"
    "5. 0 <= k < n_defective (k = 0 is unsupervised training). No image is in both train and test; the same "
    "data set, k, seed and test_good_fraction always give the same split."
)


def _by_path(samples) -> tuple[Sample, ...]:
    return tuple(sorted(samples, key=lambda s: s.path.as_posix()))


@dataclass(frozen=True)
class Split:
    """Train / test division of a :class:`Dataset` under the open-set protocol."""

    train: tuple[Sample, ...]  #: good training images + k labelled defective images
    test: tuple[Sample, ...]  #: held-out good + all remaining defective
    k: int
    seed: int
    rule: str

    def __post_init__(self) -> None:
        both = {s.path for s in self.train} & {s.path for s in self.test}
        if both:
            raise ValueError(f"{len(both)} image(s) are in both train and test, e.g. {sorted(both)[0]}")

    @property
    def train_good(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.train if s.label == 0)

    @property
    def train_defective(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.train if s.label == 1)

    @property
    def test_good(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.test if s.label == 0)

    @property
    def test_defective(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.test if s.label == 1)

    def counts(self) -> dict[str, int]:
        return {
            "train_good": len(self.train_good),
            "train_defective": len(self.train_defective),
            "test_good": len(self.test_good),
            "test_defective": len(self.test_defective),
        }

    def to_json(self, root: str | os.PathLike) -> dict[str, Any]:
        """A JSON-able dict with paths relative to ``root``; :meth:`from_json` reverses it."""
        r = Path(root).expanduser().resolve()

        def rel(p: Path) -> str:
            try:
                return Path(p).relative_to(r).as_posix()
            except ValueError:
                raise ValueError(f"{p} is not under the data folder {r}; pass the data set's root") from None

        def enc(s: Sample) -> dict[str, Any]:
            return {"path": rel(s.path), "label": int(s.label), "defect_type": s.defect_type,
                    "mask": rel(s.mask_path) if s.mask_path is not None else None}

        return {
            "format": SPLIT_FORMAT,
            "rule": self.rule,
            "k": int(self.k),
            "seed": int(self.seed),
            "counts": self.counts(),
            "train": [enc(s) for s in self.train],
            "test": [enc(s) for s in self.test],
        }

    @staticmethod
    def from_json(d: dict[str, Any], root: str | os.PathLike) -> "Split":
        """Rebuild a split written by :meth:`to_json`; paths are joined to ``root``."""
        r = Path(root).expanduser().resolve()
        fmt = d.get("format", SPLIT_FORMAT)
        if fmt != SPLIT_FORMAT:
            raise ValueError(f"split format {fmt!r} is not {SPLIT_FORMAT!r}")
        missing = [key for key in ("rule", "k", "seed", "train", "test") if key not in d]
        if missing:
            raise ValueError(f"split JSON lacks {', '.join(missing)}")

        def dec(e: dict[str, Any]) -> Sample:
            mask = e.get("mask")
            return Sample(path=r / e["path"], label=int(e["label"]), defect_type=str(e["defect_type"]),
                          mask_path=(r / mask) if mask else None)

        split = Split(train=tuple(dec(e) for e in d["train"]), test=tuple(dec(e) for e in d["test"]),
                      k=int(d["k"]), seed=int(d["seed"]), rule=str(d["rule"]))
        if "counts" in d and dict(d["counts"]) != split.counts():
            raise ValueError(f"split JSON counts {d['counts']} do not match its lists {split.counts()}")
        return split


def open_set_split(dataset: Dataset, k: int, seed: int, test_good_fraction: float = 0.25) -> Split:
    """Split ``dataset`` by :data:`SPLIT_RULE` (k labelled defective training images, seeded)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    k, seed = int(k), int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= float(test_good_fraction) < 1.0:
        raise ValueError(f"test_good_fraction must be in [0, 1), got {test_good_fraction!r}")

    good = _by_path(dataset.good)
    defective = _by_path(dataset.defective)
    n_def = len(defective)
    if k < 0 or k >= n_def:
        raise ValueError(
            f"k={k} is not possible: the data set at {dataset.root} has {n_def} defective image(s); "
            f"k must be >= 0 and < {n_def} so that at least one defective image is left for testing"
        )

    rng = np.random.default_rng(seed)
    if dataset.layout == "mvtec":
        train_good = [s for s in good if s.path in dataset.predefined_train_good]
        test_good = [s for s in good if s.path not in dataset.predefined_train_good]
    else:
        order = rng.permutation(len(good))
        n_test = int(round(float(test_good_fraction) * len(good)))
        test_good = [good[i] for i in order[:n_test]]
        train_good = [good[i] for i in order[n_test:]]
    if not train_good:
        raise ValueError(f"the split leaves no good training image (data set at {dataset.root} has {len(good)} good)")

    order = rng.permutation(n_def)
    train_def = [defective[i] for i in order[:k]]
    test_def = [defective[i] for i in order[k:]]
    return Split(train=_by_path(train_good + train_def), test=_by_path(test_good + test_def),
                 k=k, seed=seed, rule=SPLIT_RULE)
