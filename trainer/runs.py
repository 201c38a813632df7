"""Reading a finished run directory back: its model, its split, and its held-out images."""
from __future__ import annotations

from pathlib import Path

from trainer.artifacts import read_json, sha256_file
from trainer.data import Sample, Split, load_dataset


class RunDirectoryError(FileNotFoundError):
    pass


def check_run_directory(run_dir: Path) -> Path:
    """``run_dir`` as a Path, or a clear error naming the files a finished run lacks."""
    run_dir = Path(run_dir)
    missing = [f for f in ("checkpoint.pt", "split.json", "metrics.json") if not (run_dir / f).is_file()]
    if missing:
        raise RunDirectoryError(f"{run_dir} is not a complete run directory: missing {', '.join(missing)} "
                                f"(train it with edge-train first)")
    return run_dir


def open_run(run_dir: Path) -> dict:
    """The run's model and metadata, or a clear error naming what is missing."""
    run_dir = check_run_directory(run_dir)
    from trainer.checkpoint import load_checkpoint   # torch: only where a model is loaded
    model, meta = load_checkpoint(run_dir / "checkpoint.pt")
    return {"dir": run_dir, "model": model, "meta": meta, "split_doc": read_json(run_dir / "split.json"),
            "checkpoint_sha256": sha256_file(run_dir / "checkpoint.pt")}


def run_samples(split_doc: dict, data_root: Path | None = None) -> tuple[list[Sample], Split, Path]:
    """(validation good samples, the run's split, data root) from a run's split.json, after
    checking that the data there is the data the run was trained on."""
    root = Path(data_root or split_doc["data_root"])
    dataset = load_dataset(root, split_doc["layout"])
    if dataset.fingerprint() != split_doc["data_fingerprint"]:
        raise ValueError(f"the data at {root} is not the data the run was trained on (fingerprint differs): "
                         f"pass the data folder the run was trained on")
    by_path = {s.path.relative_to(dataset.root).as_posix(): s for s in dataset.samples}
    missing = [p for p in split_doc["validation_good"] if p not in by_path]
    if missing:
        raise RunDirectoryError(f"{len(missing)} validation images of the run are not under {root}, "
                                f"e.g. {missing[0]}: pass the data folder the run was trained on")
    return ([by_path[p] for p in split_doc["validation_good"]], Split.from_json(split_doc, dataset.root),
            dataset.root)


def run_split(run_dir: Path, data_root: Path | None = None) -> tuple[dict, list[Sample], Split]:
    """(split.json, validation good samples, split) of a run, without loading its model (no torch)."""
    split_doc = read_json(check_run_directory(run_dir) / "split.json")
    val_good, split, _ = run_samples(split_doc, data_root)
    return split_doc, val_good, split
