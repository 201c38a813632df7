"""bench/bridge_latency.py runs end to end on a few alerts (the full run is minutes: docs/benchmarks.md)."""
import json

import pytest

pytest.importorskip("paho.mqtt", reason="the plc extra is not installed: pip install -e '.[plc]'")
pytest.importorskip("asyncua", reason="the plc extra is not installed: pip install -e '.[plc]'")
pytest.importorskip("pymodbus", reason="the plc extra is not installed: pip install -e '.[plc]'")

from bench import bridge_latency  # noqa: E402
from tests.edge.mosquitto import find_mosquitto  # noqa: E402


@pytest.mark.timeout(180)
@pytest.mark.skipif(find_mosquitto() is None, reason="no mosquitto binary (apt-get install mosquitto; `make broker`)")
def test_every_row_sees_every_alert(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bridge_latency.main(["--n10", "5", "--n100", "10", "--no-fast-scan", "--no-write", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["downstream"], r["rate"]) for r in rows] == [(k, rate) for k in ("modbus", "opcua", "mqtt")
                                                           for rate in (10, 100)]
    for r in rows:
        assert r["visible"] == r["alerts"] and 0 < r["p50"] <= r["p99"] <= r["max"], r
        assert r["bridge_ack_p50"] is not None, r
    text = capsys.readouterr().out
    assert "| modbus |" in text and "load 1 min before -> after" in text
