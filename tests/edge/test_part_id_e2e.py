"""Part identity end to end (issue 14 item 5): edge-run over an image folder (real processes, the
bundled model) -> every alert names its image as ``part_id`` -> the node's journal and replay ->
edge-alerts (its SQLite store and --json lines) and edge-bridge -> a real MQTT broker (Debian's
mosquitto) with a paho subscriber, an asyncua client on the OPC UA result events, and a pymodbus
PLC reading the part id registers. Loopback only, no mocks."""
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

pytest.importorskip("paho.mqtt", reason="the plc extra is not installed: pip install -e '.[plc]'")
pytest.importorskip("asyncua", reason="the plc extra is not installed: pip install -e '.[plc]'")
pytest.importorskip("pymodbus", reason="the plc extra is not installed: pip install -e '.[plc]'")

from edge.bridge.plc_client import Consumer, PlcClient  # noqa: E402
from edge.sources import list_images  # noqa: E402
from tests.edge.mosquitto import Collector, Mosquitto, find_mosquitto  # noqa: E402
from tests.edge.test_bridge_modbus import ROOT, free_port  # noqa: E402
from tests.edge.test_replay_e2e import IMAGES, N_IMAGES, EdgeRun  # noqa: E402

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(find_mosquitto() is None,
                                 reason="no mosquitto binary (apt-get install mosquitto; .ci/run and `make broker` "
                                        "install it)")]


def wait_for(cond, timeout, what, log=None):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what + ("\n" + log.read_text()[-3000:] if log else "")
        time.sleep(0.05)


def test_every_alert_of_a_folder_source_names_its_image_downstream(tmp_path):
    names = [os.path.basename(p) for p in list_images(str(IMAGES))]
    assert len(names) == N_IMAGES and names[3] == "cell0004.png"
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    node_ports = (free_port(), free_port())
    connect = f"tcp://127.0.0.1:{node_ports[0]},tcp://127.0.0.1:{node_ports[1]}"
    modbus_port, opcua_port = free_port(), free_port()
    url = f"opc.tcp://127.0.0.1:{opcua_port}/edge-inspect/"
    bridge_log = tmp_path / "bridge.log"
    with open(bridge_log, "w") as log:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "edge.bridge.cli", "--insecure", "--connect", connect,
             "--state", str(tmp_path / "bridge.sqlite"), "--since-start", "--camera", "cam0",
             "--modbus-port", str(modbus_port), "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
             "--mqtt-client-id", "part-id-bridge", "--opcua-endpoint", url, "-v"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    mqtt = Collector(broker.port, ["edge-inspect/#"], client_id="part-id-mes")
    db = tmp_path / "mes" / "alerts.sqlite"
    db.parent.mkdir()
    node = alerts = None
    events, opcua_part_ids = [], {}
    try:
        async def scenario():
            nonlocal node, alerts
            from asyncua import Client
            deadline = time.monotonic() + 60
            while True:                    # the bridge starts its OPC UA server after Modbus and MQTT
                assert bridge.poll() is None, bridge_log.read_text()[-3000:]
                try:
                    c = Client(url, timeout=5)
                    await c.connect()
                    break
                except (OSError, asyncio.TimeoutError):
                    assert time.monotonic() < deadline, "no OPC UA server:\n" + bridge_log.read_text()[-3000:]
                    await asyncio.sleep(0.2)
            try:
                idx = await c.get_namespace_index("urn:edge-inspect:bridge")

                class Handler:
                    def event_notification(self, ev):
                        events.append(ev)
                sub = await c.create_subscription(20, Handler())
                etype = await c.nodes.root.get_child(["0:Types", "0:EventTypes", "0:BaseEventType",
                                                      f"{idx}:ResultReadyEventType"])
                await sub.subscribe_events(c.nodes.server, etype)
                # the node starts once the bridge (OPC UA client listening) is up; edge-alerts joins
                # when it likes and takes the journal from its start
                node = EdgeRun(tmp_path, "--source", str(IMAGES), "--no-drop", "--fps", "20", "--publish", "all",
                               "--wait-subscribers", "1", ports=node_ports)
                alerts = subprocess.Popen(
                    [sys.executable, "-m", "edge.alerts_cli", "--insecure", "--connect", node.connect, "--db",
                     str(db), "--json", "--since-start", "--count", str(N_IMAGES), "--timeout", "60"],
                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                deadline = time.monotonic() + 150
                while len(events) < N_IMAGES:
                    assert time.monotonic() < deadline, (f"{len(events)} OPC UA events:\n"
                                                         + node.log.read_text()[-3000:])
                    await asyncio.sleep(0.1)
                cam0 = await c.nodes.objects.get_child([f"{idx}:EdgeInspect", f"{idx}:cam0"])
                for var in ("PartId", "AlertSeq", "FrameSeq"):
                    opcua_part_ids[var] = await (await cam0.get_child(f"{idx}:{var}")).read_value()
            finally:
                await c.disconnect()
        asyncio.run(scenario())
        summary = node.wait()
        out, err = alerts.communicate(timeout=60)
        assert alerts.returncode == 0, err[-3000:]
        wait_for(lambda: len({json.loads(p)["alert_seq"] for t, p, _, _ in mqtt.snapshot() if "/alert/" in t})
                 >= N_IMAGES, 30, "not every alert reached the MQTT subscriber", bridge_log)
        # the PLC: the results wait in the Modbus queue (64) for their acks; it reads the part id block too
        plc = PlcClient(port=modbus_port, part_id=True)
        consumer = Consumer(plc)
        deadline = time.monotonic() + 30
        while len(consumer.results) < N_IMAGES and time.monotonic() < deadline:
            consumer.poll()
        plc.close()
    finally:
        for p in (alerts, node.proc if node else None):
            if p is not None and p.poll() is None:
                p.kill()
        bridge.terminate()
        try:
            bridge.wait(15)
        except subprocess.TimeoutExpired:
            bridge.kill()
        mqtt.close()
        broker.stop()
    assert summary["alerts_published"] == N_IMAGES

    # edge-alerts --json: every line names the image it judged, by frame
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len(lines) == N_IMAGES
    assert {a["frame_seq"]: a["part_id"] for a in lines} == dict(enumerate(names))
    # its store: one row per alert, the same part ids, a part found by its name
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT frame_seq, part_id FROM alerts ORDER BY alert_seq").fetchall()
        assert rows == list(enumerate(names))
        assert con.execute("SELECT frame_seq FROM alerts WHERE part_id = 'cell0004.png'").fetchall() == [(3,)]
    # the node's journal holds the bodies as published: replayed alerts carry the part id too
    with sqlite3.connect(f"file:{node.journal}?mode=ro", uri=True) as con:
        import msgpack
        bodies = [msgpack.unpackb(b, raw=False) for (b,) in con.execute("SELECT body FROM alerts ORDER BY seq")]
    assert [(a["frame_seq"], a["part_id"]) for a in bodies] == list(enumerate(names))
    # MQTT: part_id in each alert message, and in the camera's retained status
    by_seq = {}
    for t, p, retained, _ in mqtt.snapshot():
        if "/alert/" in t:
            a = json.loads(p)
            by_seq[a["alert_seq"]] = a
    assert sorted(by_seq) == list(range(1, N_IMAGES + 1))
    assert {a["frame_seq"]: a["part_id"] for a in by_seq.values()} == dict(enumerate(names))
    status = [json.loads(p) for t, p, _, _ in mqtt.snapshot() if t.endswith("/status/cam0")]
    assert status[-1]["part_id"] == names[status[-1]["frame_seq"]]
    # OPC UA: PartId in each ResultReadyEvent, and the camera's PartId variable holds the last part
    assert sorted(e.AlertSeq for e in events) == list(range(1, N_IMAGES + 1))
    frame_of = {a["alert_seq"]: a["frame_seq"] for a in lines}
    assert all(e.PartId == names[frame_of[e.AlertSeq]] for e in events)
    assert opcua_part_ids["AlertSeq"] == N_IMAGES and opcua_part_ids["PartId"] == names[opcua_part_ids["FrameSeq"]]
    # Modbus: the part id registers of each result (the PLC read 0..53 in one request)
    assert [r["result_counter"] for r in consumer.results] == list(range(1, N_IMAGES + 1))
    assert all(r["part_id"] == names[r["frame_seq"]] and r["part_id_length"] == len(names[r["frame_seq"]])
               for r in consumer.results)


def test_an_unreadable_image_is_a_notdecidable_that_names_it(tmp_path):
    """The part that could not be inspected is the one the line must find: its NotDecidable alert
    names the file, like the judged ones."""
    import shutil
    from tests.edge.test_pipeline import Run
    folder = tmp_path / "parts"
    folder.mkdir()
    shutil.copy(IMAGES / "cell0004.png", folder / "p1.png")
    (folder / "p2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)
    shutil.copy(IMAGES / "cell0004.png", folder / "p3.png")
    run = Run(tmp_path, "--source", f"top={folder}", "--no-drop", "--threshold", "1e9")
    run.finish()
    got = sorted((a["part_id"], a["verdict"], a["frame_seq"]) for a in run.alerts)
    assert got == [("p1.png", "OK", 0), ("p2.png", "NotDecidable", -1), ("p3.png", "OK", 1)], got
    nd = next(a for a in run.alerts if a["verdict"] == "NotDecidable")
    assert "p2.png" in nd["reason"] and nd["camera"] == "top"
