"""``python -m edge.demo_report``: a demo run's verdicts against the sample's own labels.

`make demo` plays image folders as cameras; a folder source numbers frames 0, 1, ... in
the order of ``edge.sources.list_images`` (natural sort), so a camera's frame_seq names the file
of the folder it played (``--source CAMERA=FOLDER``, one per camera, or ``--images`` for a single
camera). This reads the alerts edge-alerts stored (``--db``), joins them with an ELPV-style ``labels.csv``
(path, defect probability, ...) and prints what the line would have done: defects caught of
the defective cells, false alarms of the good ones, and every frame that could not be judged.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from edge.sources import list_images


def read_labels(labels_csv: Path) -> dict[str, int]:
    """File name -> 1 (defective, probability 1), 0 (good, 0); other grades are left out."""
    out = {}
    for line in Path(labels_csv).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("0.0", "0", "1.0", "1"):
            out[os.path.basename(parts[0])] = int(float(parts[1]))
    return out


def verdicts(db: Path, sources: dict[str | None, Path]) -> dict[str, tuple]:
    """File name -> (verdict, score, threshold) of each camera's frames; camera None = any camera."""
    files = {cam: [os.path.basename(p) for p in list_images(str(folder))] for cam, folder in sources.items()}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT camera, frame_seq, verdict, score, threshold FROM alerts WHERE frame_seq >= 0").fetchall()
    finally:
        con.close()
    out = {}
    for cam, seq, v, score, thr in rows:
        names = files.get(cam, files.get(None))
        if names is not None and 0 <= seq < len(names):
            out[names[seq]] = (v, score, thr)
    return out


def report(db: Path, sources: dict[str | None, Path], labels_csv: Path) -> dict:
    """The verdicts of the cameras in ``sources`` (camera -> the image folder it played) against labels.csv."""
    played = {os.path.basename(p) for folder in sources.values() for p in list_images(str(folder))}
    labels = {f: y for f, y in read_labels(labels_csv).items() if f in played}
    verdict = verdicts(db, sources)
    caught = [f for f, y in labels.items() if y == 1 and verdict.get(f, ("",))[0] == "NotOK"]
    missed = [f for f, y in labels.items() if y == 1 and verdict.get(f, ("",))[0] == "OK"]
    false_alarms = [f for f, y in labels.items() if y == 0 and verdict.get(f, ("",))[0] == "NotOK"]
    undecided = sorted(f for f in labels if verdict.get(f, ("",))[0] not in ("OK", "NotOK"))
    return {"defective": sum(labels.values()), "good": sum(1 for y in labels.values() if y == 0),
            "caught": sorted(caught), "missed": sorted(missed), "false_alarms": sorted(false_alarms),
            "not_judged": undecided}


def print_report(r: dict, indent: str = "") -> None:
    print(f"{indent}defects caught: {len(r['caught'])} of {r['defective']} defective cells"
          + (f" (missed: {', '.join(r['missed'])})" if r["missed"] else ""))
    print(f"{indent}false alarms:   {len(r['false_alarms'])} of {r['good']} good cells"
          + (f" ({', '.join(r['false_alarms'])})" if r["false_alarms"] else ""))
    if r["not_judged"]:
        print(f"{indent}not judged (NotDecidable or no alert): {len(r['not_judged'])}: {', '.join(r['not_judged'])}")


def parse_source(text: str) -> tuple[str, Path]:
    camera, sep, folder = text.partition("=")
    if not sep or not camera or not folder:
        raise argparse.ArgumentTypeError(f"--source wants CAMERA=FOLDER, got {text!r}")
    return camera, Path(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.demo_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, required=True, help="SQLite file written by edge-alerts --db")
    p.add_argument("--images", type=Path, help="the image folder the demo's one camera played")
    p.add_argument("--source", type=parse_source, action="append", default=[], metavar="CAMERA=FOLDER",
                   help="a camera and the image folder it played, as given to edge-run (repeatable)")
    p.add_argument("--labels", type=Path, required=True, help="labels.csv (path, defect probability, ...)")
    args = p.parse_args(argv)
    for path in (args.db, args.labels):
        if not path.is_file():
            print(f"demo_report: error: {path} does not exist", file=sys.stderr)
            return 2
    if bool(args.images) == bool(args.source):
        p.error("give either --images (one camera) or --source CAMERA=FOLDER (one per camera)")
    sources = dict(args.source) if args.source else {None: args.images}
    for cam, folder in sources.items():
        if not folder.is_dir():
            print(f"demo_report: error: {folder} is not a folder", file=sys.stderr)
            return 2
    if len(sources) > 1:
        for cam, folder in sources.items():
            print(f"camera {cam} ({folder}):")
            print_report(report(args.db, {cam: folder}, args.labels), indent="  ")
        print("all cameras:")
    print_report(report(args.db, sources, args.labels), indent="  " if len(sources) > 1 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
