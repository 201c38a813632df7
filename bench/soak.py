"""Soak: edge-run at camera pace under chaos, counted end to end (issue 13; not part of the test run).

    python bench/soak.py --minutes 20            # the full soak (docs/reliability.md)
    python bench/soak.py --minutes 2 --out /tmp/soak.json

Two cameras (the bundled sample, looped) at 10 frames/s each, every verdict published; the
reference subscriber (edge-alerts --db) stores them. Every 30-60 s one of the four stages or the
subscriber is SIGKILLed at random (an OOM kill); once, the journal's disk (a tmpfs of its own,
root only) is filled for about a tenth of the run and freed. The alert stage is not killed while
the disk is full: a start that finds published-but-unjournaled alerts must begin a new journal
epoch, which a full disk cannot hold, and refuses (docs/reliability.md).

Counted at the end: frames captured / judged / not decidable / dropped / lost in restarts (per
camera, edge-run's summary); alerts published (per journal epoch: the highest alert_seq the
journal or the store has; numbering is gap-free), stored (rows of the store), duplicated
(rows beyond one per (node, journal_id, alert_seq), and the store's reused-number conflicts),
lost (published - stored); restarts per stage and of the subscriber.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
IMAGES = ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"
STAGES = ("capture", "preprocess", "score", "alert")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_pids(supervisor: int) -> dict[str, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == supervisor:
                name = (stat.parent / "comm").read_text().strip()
                if name.startswith("edge-"):
                    out[name[5:]] = int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    return out


def mount_tmpfs(where: Path, mib: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def fill(where: Path) -> Path:
    ballast = where / "ballast"
    with open(ballast, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return ballast


def journal_epochs(journal: Path) -> dict[str, int]:
    """journal_id -> highest alert_seq, for the journal and every epoch set aside beside it."""
    out = {}
    for path in sorted(journal.parent.glob(journal.name + "*")):
        if path.name.endswith(("-wal", "-shm", ".unjournaled")):
            continue
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            jid = con.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()[0]
            out[jid] = con.execute("SELECT coalesce(max(seq), 0) FROM alerts").fetchone()[0]
            con.close()
        except sqlite3.Error as e:
            print(f"soak: cannot read {path}: {e}", file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--fps", type=float, default=10.0, help="per camera (default 10)")
    p.add_argument("--kill-every", type=float, nargs=2, default=(30.0, 60.0), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--work", type=Path, default=Path("/tmp/edge-soak"))
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = a.work
    subprocess.run(["umount", "-l", str(work / "disk")], capture_output=True)
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    disk = work / "disk"
    has_tmpfs = mount_tmpfs(disk, 128)
    journal = disk / "journal.sqlite"
    store = work / "mes.sqlite"
    alerts, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    py = sys.executable
    run_log = open(work / "edge-run.log", "w")
    node = subprocess.Popen(
        [py, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--source", f"cam0={IMAGES}",
         "--source", f"cam1={IMAGES}", "--loop", "--fps", str(a.fps), "--publish", "all", "--thumbnails", "all",
         "--threshold", "6.0135", "--journal", str(journal), "--alerts-addr", alerts, "--replay-addr", replay,
         "--max-restarts", "1000", "--print-every", "30", "--wait-subscribers", "1",
         "--summary-json", str(work / "summary.json")],
        cwd=ROOT, stdout=run_log, stderr=subprocess.STDOUT, start_new_session=True)

    def subscriber(i: int) -> subprocess.Popen:
        return subprocess.Popen([py, "-m", "edge.alerts_cli", "--insecure", "--connect", f"{alerts},{replay}",
                                 "--db", str(store), "-q", "--summary"], cwd=ROOT,
                                stdout=open(work / f"edge-alerts-{i}.log", "w"), stderr=subprocess.STDOUT)

    subs = [subscriber(0)]
    kills: dict[str, int] = {}
    t0 = time.monotonic()
    end = t0 + a.minutes * 60
    # SQLite reuses its WAL file's space, so a full disk bites only once the WAL must grow: keep it
    # full until the journal has refused alerts for 30 s (or until 60 % of the run)
    fill_at, free_by = t0 + 0.4 * (end - t0), t0 + 0.6 * (end - t0)
    first_error = None
    ballast, disk_filled = None, False
    next_kill = t0 + rng.uniform(*a.kill_every)
    try:
        while time.monotonic() < end:
            time.sleep(0.5)
            now = time.monotonic()
            if node.poll() is not None:
                print("soak: edge-run ended early", file=sys.stderr)
                break
            if has_tmpfs and ballast is None and fill_at <= now < free_by:
                ballast, disk_filled = fill(disk), True
                print(f"soak: {now - t0:.0f} s: journal disk filled", flush=True)
            if ballast is not None and first_error is None and "cannot journal" in (work / "edge-run.log").read_text():
                first_error = now
                print(f"soak: {now - t0:.0f} s: the journal refuses alerts (published anyway)", flush=True)
            if ballast is not None and (now >= free_by or (first_error is not None and now - first_error >= 30)):
                ballast.unlink()
                ballast, has_tmpfs = None, False     # once
                print(f"soak: {now - t0:.0f} s: journal disk freed", flush=True)
            if now >= next_kill:
                choices = ["subscriber", *STAGES]
                if ballast is not None:
                    choices.remove("alert")         # see the module doc
                victim = rng.choice(choices)
                if victim == "subscriber":
                    subs[-1].kill()
                    subs[-1].wait()
                    subs.append(subscriber(len(subs)))
                else:
                    pid = stage_pids(node.pid).get(victim)
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                kills[victim] = kills.get(victim, 0) + 1
                print(f"soak: {now - t0:.0f} s: killed {victim}", flush=True)
                next_kill = now + rng.uniform(*a.kill_every)
    finally:
        if ballast is not None:
            ballast.unlink()
        if node.poll() is None:
            os.kill(node.pid, signal.SIGTERM)
        try:
            node.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
        time.sleep(5)                                    # the subscriber's last replay pages
        subs[-1].send_signal(signal.SIGTERM)
        subs[-1].wait(30)
    summary = json.loads((work / "summary.json").read_text()) if (work / "summary.json").exists() else {}
    epochs = journal_epochs(journal)
    con = sqlite3.connect(store)
    stored = dict(con.execute("SELECT journal_id, count(*) FROM alerts GROUP BY journal_id"))
    top = dict(con.execute("SELECT journal_id, max(alert_seq) FROM alerts GROUP BY journal_id"))
    distinct = con.execute("SELECT count(*) FROM (SELECT DISTINCT node, journal_id, alert_seq FROM alerts)").fetchone()[0]
    rows = con.execute("SELECT count(*) FROM alerts").fetchone()[0]
    conflicts = con.execute("SELECT count(*) FROM conflicts").fetchone()[0]
    con.close()
    published = {j: max(epochs.get(j, 0), top.get(j) or 0) for j in set(epochs) | set(top)}
    result = {
        "minutes": round((time.monotonic() - t0) / 60, 2), "cameras": 2, "fps_per_camera": a.fps,
        "frames": summary.get("cameras"), "frames_total": {k: summary.get(k) for k in (
            "frames_captured", "frames_judged", "frames_not_decidable", "frames_dropped", "frames_lost_in_restarts")},
        "stage_restarts": summary.get("restarts"), "kills": kills, "subscriber_restarts": len(subs) - 1,
        "journal_epochs": len(published), "disk_filled_once": disk_filled, "journal_refused_alerts": first_error is not None,
        "alerts_published": sum(published.values()), "alerts_stored": sum(stored.values()),
        "alerts_duplicated": rows - distinct + conflicts,
        "alerts_lost": sum(published[j] - stored.get(j, 0) for j in published),
        "per_epoch": {j: {"published": published[j], "stored": stored.get(j, 0)} for j in published},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return 0 if result["alerts_lost"] == 0 and result["alerts_duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
