"""edge-bridge's own Prometheus metrics (issue 14 item 6) with all three downstreams at once, each
with a real client (a pymodbus PLC, a paho subscriber on Debian's mosquitto, an asyncua client),
and the one-line errors of the options the other bridge tests do not cover (OPC UA, metrics).
Loopback only, no mocks."""
import math
import re
import socket
import time
import urllib.request

import pytest

pytest.importorskip("paho.mqtt", reason="the plc extra is not installed: pip install -e '.[plc]'")
pytest.importorskip("asyncua", reason="the plc extra is not installed: pip install -e '.[plc]'")
pytest.importorskip("pymodbus", reason="the plc extra is not installed: pip install -e '.[plc]'")

from edge.bridge.plc_client import Consumer, PlcClient  # noqa: E402
from tests.edge.bridge_node import SimNode  # noqa: E402
from tests.edge.mosquitto import Collector, Mosquitto, find_mosquitto  # noqa: E402
from tests.edge.test_bridge_modbus import BridgeProc, free_port, run_main  # noqa: E402

pytestmark = pytest.mark.timeout(120)
DOWNSTREAMS = ("modbus", "mqtt", "opcua")


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of every sample on /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def wait_metrics(port: int, cond, timeout: float, what: str) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    m: dict = {}
    while True:
        try:
            m = scrape(port)
        except OSError:      # not serving yet: the metrics come up after every downstream has started
            pass
        else:
            if cond(m):
                return m
        assert time.monotonic() < deadline, f"{what}: {m}"
        time.sleep(0.1)


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.skipif(find_mosquitto() is None, reason="no mosquitto binary (apt-get install mosquitto; `make broker`)")
def test_delivered_pending_ack_latency_overruns_and_reconnects_per_downstream(tmp_path):
    node = SimNode(tmp_path / "node" / "journal.sqlite")
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    metrics_port, opcua_port = free_port(), free_port()
    bridge = BridgeProc(tmp_path, node, "--modbus-queue", "4", "--mqtt-host", "127.0.0.1", "--mqtt-port",
                        str(broker.port), "--mqtt-client-id", "metrics-bridge", "--opcua-endpoint",
                        f"opc.tcp://127.0.0.1:{opcua_port}/edge-inspect/", "--metrics-port", str(metrics_port))
    sub = Collector(broker.port, ["edge-inspect/line1/alert/#"], client_id="metrics-mes", clean=True)
    plc = PlcClient(port=bridge.port)
    try:
        bridge.wait_serving(plc)
        wait_metrics(metrics_port, lambda m: m.get("edge_bridge_node_connected") == 1 and
                     m.get('edge_bridge_broker_connected{downstream="mqtt"}') == 1, 30, "not connected")
        node.publish(4)
        consumer = Consumer(plc)
        deadline = time.monotonic() + 15
        while len(consumer.results) < 4 and time.monotonic() < deadline:
            consumer.poll()
            time.sleep(0.01)
        assert [r["result_counter"] for r in consumer.results] == [1, 2, 3, 4]
        wait_for(lambda: len(sub.snapshot()) >= 4, 15, "MQTT subscriber got fewer than 4 alerts")
        m = wait_metrics(metrics_port, lambda m: all(
            m.get(f'edge_bridge_delivered_total{{downstream="{d}"}}') == 4 for d in DOWNSTREAMS), 15,
            "not every downstream delivered 4")
        for d in DOWNSTREAMS:
            assert m[f'edge_bridge_pending{{downstream="{d}"}}'] == 0, d
            assert m[f'edge_bridge_ack_latency_ms_count{{downstream="{d}"}}'] == 4, d
            for q in ("0.5", "0.99"):
                v = m[f'edge_bridge_ack_latency_ms{{downstream="{d}",quantile="{q}"}}']
                assert math.isfinite(v) and 0 <= v < 10_000, (d, q, v)
        assert m['edge_bridge_overruns_total{downstream="modbus"}'] == 0
        assert m['edge_bridge_reconnects_total{downstream="modbus"}'] >= 1      # the PLC's connection
        assert m['edge_bridge_reconnects_total{downstream="mqtt"}'] == 0
        assert m["edge_bridge_intake_stored_total"] == 4 and m["edge_bridge_intake_gaps_lost_total"] == 0

        # the broker restarts, and the PLC stops acknowledging: 6 new results for a queue of 4
        broker.stop()
        wait_metrics(metrics_port, lambda m: m.get('edge_bridge_broker_connected{downstream="mqtt"}') == 0, 15,
                     "the lost broker is not shown")
        node.publish(6)
        m = wait_metrics(metrics_port, lambda m: m.get('edge_bridge_pending{downstream="mqtt"}') == 6 and
                         m.get('edge_bridge_overruns_total{downstream="modbus"}') == 2, 15,
                         "alerts waiting for the broker / the modbus overruns are not counted")
        assert m['edge_bridge_pending{downstream="modbus"}'] == 4            # the bounded queue
        assert m['edge_bridge_delivered_total{downstream="opcua"}'] == 10   # written is acknowledged
        broker.start()
        m = wait_metrics(metrics_port, lambda m: m.get('edge_bridge_delivered_total{downstream="mqtt"}') == 10,
                         30, "MQTT did not deliver after the broker came back")
        assert m['edge_bridge_reconnects_total{downstream="mqtt"}'] == 1
        assert m['edge_bridge_pending{downstream="mqtt"}'] == 0
        assert m['edge_bridge_ack_latency_ms_count{downstream="mqtt"}'] == 10
    finally:
        rc = bridge.stop()
        plc.close()
        sub.close()
        broker.stop()
        node.close()
    assert rc == 0, bridge.log.read_text()[-3000:]


@pytest.mark.parametrize("args, expected", [
    (["--opcua-endpoint", "http://127.0.0.1:4840/"], "--opcua-endpoint 'http://127.0.0.1:4840/': give opc.tcp://"),
    (["--opcua-cert", "server.der"], "OPC UA options without --opcua-endpoint"),
    (["--opcua-endpoint", "opc.tcp://127.0.0.1:4840/", "--opcua-cert", "server.der"],
     "missing --opcua-key, --opcua-trust"),
    (["--opcua-endpoint", "opc.tcp://127.0.0.1:4840/", "--opcua-cert", "/nonexistent/server.der", "--opcua-key",
      "/nonexistent/key.pem", "--opcua-trust", "/"], "--opcua-cert /nonexistent/server.der: no such file"),
    (["--modbus-port", "5020", "--metrics-port", "70000"], "--metrics-port 70000: give 0..65535"),
])
def test_bad_opcua_and_metrics_options_are_refused_in_one_line(tmp_path, args, expected):
    r = run_main("--insecure", "--connect", "tcp://127.0.0.1:6000", "--state", str(tmp_path / "s.sqlite"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert expected in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.parametrize("which", ["metrics", "opcua"])
def test_a_metrics_or_opcua_port_in_use_is_a_one_line_error(tmp_path, which):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = (["--modbus-port", str(free_port()), "--metrics-port", str(port)] if which == "metrics"
                else ["--opcua-endpoint", f"opc.tcp://127.0.0.1:{port}/edge-inspect/"])
        r = run_main("--insecure", "--connect", "tcp://127.0.0.1:6000", "--state", str(tmp_path / "s.sqlite"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.search(rf"cannot serve {'metrics' if which == 'metrics' else 'OPC UA'} on .*{port}", last), r.stderr
