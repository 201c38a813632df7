"""Smoke test of bench/stage_mode_bench.py: real edge-runs in both stage modes, tiny settings.

Checks that the figures the docs table is made of exist and are plausible (CPU is attributed to
the stages by thread name, the score stage costs something, every paced frame is judged, the
scaling run judges frames of both cameras), not how fast anything is.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stage_mode_bench_measures_both_modes(tmp_path):
    out = tmp_path / "stage_modes.json"
    r = subprocess.run([sys.executable, "bench/stage_mode_bench.py", "--rounds", "1", "--paced-frames", "30",
                        "--paced-fps", "15", "--cameras", "2", "--camera-fps", "5", "--camera-seconds", "3",
                        "--no-docs", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    for mode in ("processes", "threads"):
        (run,) = doc["paced"][mode]
        assert run["ok"], run.get("log_tail")
        assert run["summary"]["stage_mode"] == mode and run["summary"]["frames_judged"] == 30
        cpu = run["cpu_ms_per_frame"]
        assert cpu["score"] > 0 and run["cpu_ms_per_frame_total"] >= cpu["score"], cpu
        assert run["stage_processes"] == (4 if mode == "processes" else 1)
    assert {s["mode"] for s in doc["scaling"]} == {"processes", "threads"}
    for s in doc["scaling"]:
        assert s["ok"] and set(s["per_camera_p99_ms"]) == {"cam0", "cam1"}, s.get("log_tail")
    assert "| threads |" in r.stdout and "| 2 | processes |" in r.stdout
