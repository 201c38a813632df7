"""``python -m edge.demo_report``: a demo run's verdicts against the sample's own labels.

`make demo` plays an image folder as one camera; a folder source numbers frames 0, 1, ... in
the order of ``edge.sources.list_images`` (natural sort), so frame_seq names the file. This
reads the alerts edge-alerts stored (``--db``), joins them with an ELPV-style ``labels.csv``
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


def report(db: Path, images: Path, labels_csv: Path, camera: str | None = None) -> dict:
    files = [os.path.basename(p) for p in list_images(str(images))]
    labels = read_labels(labels_csv)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT camera, frame_seq, verdict, score, threshold FROM alerts WHERE frame_seq >= 0"
                           + (" AND camera = ?" if camera else ""), (camera,) if camera else ()).fetchall()
    finally:
        con.close()
    verdict = {}
    for cam, seq, v, score, thr in rows:
        if 0 <= seq < len(files):
            verdict[files[seq]] = (v, score, thr)
    caught = [f for f, y in labels.items() if y == 1 and verdict.get(f, ("",))[0] == "NotOK"]
    missed = [f for f, y in labels.items() if y == 1 and verdict.get(f, ("",))[0] == "OK"]
    false_alarms = [f for f, y in labels.items() if y == 0 and verdict.get(f, ("",))[0] == "NotOK"]
    undecided = sorted(f for f in labels if f in files and verdict.get(f, ("",))[0] not in ("OK", "NotOK"))
    return {"defective": sum(labels.values()), "good": sum(1 for y in labels.values() if y == 0),
            "caught": sorted(caught), "missed": sorted(missed), "false_alarms": sorted(false_alarms),
            "not_judged": undecided}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.demo_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, required=True, help="SQLite file written by edge-alerts --db")
    p.add_argument("--images", type=Path, required=True, help="the image folder the demo camera played")
    p.add_argument("--labels", type=Path, required=True, help="labels.csv (path, defect probability, ...)")
    p.add_argument("--camera", default=None, help="only this camera's alerts")
    args = p.parse_args(argv)
    for path in (args.db, args.labels):
        if not path.is_file():
            print(f"demo_report: error: {path} does not exist", file=sys.stderr)
            return 2
    r = report(args.db, args.images, args.labels, args.camera)
    print(f"defects caught: {len(r['caught'])} of {r['defective']} defective cells"
          + (f" (missed: {', '.join(r['missed'])})" if r["missed"] else ""))
    print(f"false alarms:   {len(r['false_alarms'])} of {r['good']} good cells"
          + (f" ({', '.join(r['false_alarms'])})" if r["false_alarms"] else ""))
    if r["not_judged"]:
        print(f"not judged (NotDecidable or no alert): {len(r['not_judged'])}: {', '.join(r['not_judged'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
