"""The demo's verdicts-vs-labels report, on a real edge-alerts SQLite store."""
from pathlib import Path

import numpy as np

from edge.alerts import make_alert
from edge.alerts_cli import AlertStore
from edge.demo_report import main, report
from tests.synthetic import write_image


def test_report_joins_frames_to_files_by_natural_order(tmp_path, capsys):
    images = tmp_path / "images"
    names = ["cell2.png", "cell10.png", "cell1.png", "cell3.png"]  # natural order: 1, 2, 3, 10
    for n in names:
        write_image(images / n, np.zeros((8, 8), np.uint8))
    (tmp_path / "labels.csv").write_text("images/cell1.png 1.0 mono\nimages/cell2.png 0.0 mono\n"
                                         "images/cell3.png 1.0 poly\nimages/cell10.png 0.0 poly\n"
                                         "images/cell4.png 0.3333 poly\n")
    verdicts = ["NotOK", "NotOK", "OK", "NotDecidable"]  # frames 0..3 = cell1, cell2, cell3, cell10
    store = AlertStore(tmp_path / "alerts.sqlite")
    for seq, v in enumerate(verdicts):
        store.add(make_alert(node="n", alert_seq=seq + 1, camera="cam0", frame_seq=seq, capture_wall=1.0,
                             published_wall=1.0, latency_ms=1.0, verdict=v, score=None if v == "NotDecidable" else 1.0,
                             normalised_score=None, threshold=0.5, model_version="m", journal_id="j"))
    store.close()
    r = report(tmp_path / "alerts.sqlite", images, tmp_path / "labels.csv")
    assert r["defective"] == 2 and r["good"] == 2
    assert r["caught"] == ["cell1.png"] and r["missed"] == ["cell3.png"]
    assert r["false_alarms"] == ["cell2.png"] and r["not_judged"] == ["cell10.png"]
    assert main(["--db", str(tmp_path / "alerts.sqlite"), "--images", str(images),
                 "--labels", str(tmp_path / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert "defects caught: 1 of 2" in out and "false alarms:   1 of 2" in out and "not judged" in out
    assert main(["--db", str(tmp_path / "missing.sqlite"), "--images", str(images),
                 "--labels", str(tmp_path / "labels.csv")]) == 2
