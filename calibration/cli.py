"""``edge-calibrate``: alert thresholds with a known false-alarm rate, from held-out good parts,
fitted on the scores of the engine that ships (the edge's own backend computes them)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  # at the line (no torch): the engine that runs, a folder of good parts it never saw
  edge-calibrate --engine model.plan --good /data/side-good --camera side --target-far 0.05
  # with defective parts too: the miss rate the threshold costs is reported beside the FAR
  edge-calibrate --engine model.onnx --good /data/good --defective /data/bad --target-far 0.05
  # at training time: the run's held-out images, scored by the run's exported graph
  edge-calibrate --run runs/elpv-hybrid --target-far 0.05
  # 1% needs at least 299 held-out good images at 95% confidence: bring more
  edge-calibrate --run runs/elpv-hybrid --data /data/line3-heldout --target-far 0.01
  # a camera with its own lighting gets its own entry in the same calibration.json
  edge-calibrate --run runs/elpv-hybrid --data /data/cam2-heldout --camera cam2 --target-far 0.01

how many good images: a false-alarm rate a with confidence c needs at least
ln(1 - c) / ln(1 - a) of them (a = 0.05: 59; 0.01: 299; 0.005: 598 at c = 0.95);
--guarantee marginal (average over calibration sets) needs 1/a - 1. See docs/calibration.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-calibrate", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", type=Path, default=None,
                   help="the engine to calibrate (model.onnx or model.plan, manifest beside it): its scores, "
                        "computed by the edge's backend, are what the threshold is fitted on; needs --good "
                        "unless --run gives the images")
    p.add_argument("--good", type=Path, default=None, metavar="DIR",
                   help="with --engine: a folder of good images the model never saw (all of them are used)")
    p.add_argument("--defective", type=Path, default=None, metavar="DIR",
                   help="with --engine: a folder of defective images, for the miss rate (nothing is fitted on them)")
    p.add_argument("--run", type=Path, default=None,
                   help="run directory (ae, scorer or hybrid): calibrate on its held-out images, scored by "
                        "--engine or else by its graph exported now (what edge-export writes, byte for byte)")
    p.add_argument("--target-far", type=float, required=True,
                   help="false-alarm rate to allow on good parts, e.g. 0.01 for 1%%")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the pac guarantee (default 0.95)")
    p.add_argument("--guarantee", choices=["pac", "marginal"], default="pac",
                   help="pac: FAR <= target with --confidence; marginal: FAR <= target on average (default pac)")
    p.add_argument("--data", type=Path, default=None,
                   help="extra held-out images (any layout edge-train reads): good ones join the run's validation "
                        "good images, defective ones estimate the miss rate; none may have been trained on")
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "elpv", "folders"])
    p.add_argument("--camera", default="*", help="camera id of this calibration (default * = all cameras)")
    p.add_argument("--pixel-far", type=float, default=None,
                   help="rate of good parts allowed to show a defect region (default: --target-far)")
    p.add_argument("--min-region-area", type=int, default=None, help="smallest region in heatmap pixels")
    p.add_argument("--out", type=Path, default=None,
                   help="calibration file (default RUN/calibration.json, or calibration.json beside --engine)")
    p.add_argument("--update", type=Path, default=None, metavar="MANIFEST",
                   help="with --engine: replace this camera's entry in the engine's manifest (ENGINE.manifest.json), "
                        "the old entry kept in its history; edge-run applies it when restarted")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG report")
    p.add_argument("--int8", type=int, default=0, metavar="N",
                   help="also write the INT8 calibration set (int8_calibration.npz + .json) beside the calibration "
                        "file: N good training images through the inference preprocessing, for explicit Q/DQ "
                        "quantisation at deploy (512 recommended; default 0 = skip)")
    return p


def write_int8_set(run_dir: Path, count: int, out_dir: Path, preprocess: dict) -> dict:
    """The model-input tensor of ``count`` good images the run trained on (representative of
    production; the validation hold-out stays untouched), at the engine's input (``preprocess``:
    size and channels, from the manifest the calibration recorded). Reads the run's split only."""
    from calibration.calibrate import trained_paths
    from calibration.int8 import CalibrationSetSpec, build_int8_calibration_set
    from trainer.runs import run_split
    _, val_good, split = run_split(run_dir)
    trained = trained_paths(split, val_good)
    good = [s for s in split.train if s.label == 0 and s.path.resolve() in trained]
    return build_int8_calibration_set(good, preprocess["size"], preprocess["channels"], out_dir,
                                      spec=CalibrationSetSpec(count=count))


def export_graph(run_dir: Path, folder: Path) -> Path:
    """``--run`` without ``--engine``: the run's inference graph as edge-export writes it (with its
    manifest) in ``folder``. The export is deterministic: the same bytes (same sha256) as
    ``edge-export --run`` of the same checkpoint, so the calibration names the graph that ships.
    The only step of edge-calibrate that opens the checkpoint (torch): deploy's, not calibration's."""
    from deploy.export import export_onnx
    from deploy.manifest import write_manifest
    from trainer.runs import check_run_directory
    graph = Path(folder) / "model.onnx"
    report = export_onnx(check_run_directory(run_dir), graph)
    write_manifest(graph, report, run_dir, None)
    return graph


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option combinations that would calibrate on something else than asked."""
    if args.run is None and args.engine is None:
        p.error("give --engine MODEL --good DIR (at the line) or --run RUN (at training time)")
    if args.run is None and args.good is None:
        p.error("--engine needs --good DIR: a folder of good images the model never saw")
    if args.run is not None and (args.good or args.defective):
        p.error("--good/--defective go with --engine alone; with --run, add held-out images with --data")
    if args.update is not None and (args.engine is None or args.run is not None):
        p.error("--update goes with --engine (the engine whose manifest it is), without --run")
    if args.run is None and (args.data or args.int8):
        p.error("--data and --int8 need --run (they read the run's split)")
    # before any work: a count or area below zero is a typo, not a setting
    if args.int8 < 0:
        p.error(f"--int8 {args.int8}: the number of calibration images must be 0 (none) or more")
    if args.min_region_area is not None and args.min_region_area < 1:
        p.error(f"--min-region-area {args.min_region_area}: a region is at least 1 heatmap pixel")


def run_calibration(args: argparse.Namespace) -> dict:
    from calibration.calibrate import calibrate, calibrate_engine
    common = dict(confidence=args.confidence, guarantee=args.guarantee, pixel_far=args.pixel_far,
                  min_region_area=args.min_region_area, camera=args.camera, out=args.out, plots=not args.no_plots)
    if args.run is None:
        from calibration.images import folder_samples
        defective = folder_samples(args.defective, 1) if args.defective else ()
        return calibrate_engine(args.engine, folder_samples(args.good, 0), args.target_far, defective=defective,
                                update=args.update, **common)
    import tempfile

    from trainer.data import load_dataset
    from trainer.runs import check_run_directory
    check_run_directory(args.run)   # before anything is exported or read
    extra = load_dataset(args.data, args.layout).samples if args.data is not None else ()
    if args.engine is not None:
        return calibrate(args.run, args.target_far, extra=extra, engine=args.engine, **common)
    with tempfile.TemporaryDirectory(prefix="edge-calibrate-") as tmp:
        return calibrate(args.run, args.target_far, extra=extra, engine=export_graph(args.run, Path(tmp)), **common)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    from calibration.calibrate import report_lines
    from calibration.thresholds import TooFewImagesError
    from edge.backends import BackendError
    try:
        doc = run_calibration(args)
    except (TooFewImagesError, ValueError, FileNotFoundError, BackendError) as e:   # ManifestError, RulesError too
        print(f"edge-calibrate: error: {e}", file=sys.stderr)
        return 2
    out = args.out or (args.run / "calibration.json" if args.run else
                       args.update if args.update else args.engine.with_name("calibration.json"))
    left_out = doc["cameras"][args.camera]["held_out"].get("extra_left_out_trained")
    if left_out:
        print(f"edge-calibrate: {left_out} image(s) of {args.data} were used in training and are left out",
              file=sys.stderr)
    print("\n".join(report_lines(doc, args.camera)))
    if args.int8:
        info = write_int8_set(args.run, args.int8, out.parent, doc["model"]["preprocess"])
        print(f"INT8 calibration set: {info['count']} good training images -> {info['npz']}"
              + (f" ({info['note']})" if info.get("note") else ""))
    print(f"wrote {out}")
    if args.update:
        print("a running edge-run keeps its rules: restart it to apply these (rules are checked at start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
