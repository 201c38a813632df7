"""edge-bridge's Modbus TCP server with a real pymodbus client as the PLC, on loopback: a
simulated edge node (real journal, XPUB, replay ROUTER) -> edge-bridge (a real process) -> the
PLC polling, acknowledging, and missing acknowledgements on purpose. No mocks."""
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("pymodbus", reason="the plc extra is not installed: pip install -e '.[plc]'")

from edge.bridge.modbus import ERROR_ACK_MISMATCH, decode_registers  # noqa: E402
from edge.bridge.plc_client import Consumer, HeartbeatWatchdog, PlcClient  # noqa: E402
from tests.edge.bridge_node import SimNode, frame_for, score_for, verdict_for  # noqa: E402

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BridgeProc:
    """edge-bridge in a subprocess (its own process group, so SIGKILL takes all of it)."""

    def __init__(self, tmp_path: Path, node: SimNode, *args: str, port: int | None = None, state: Path | None = None,
                 modbus: bool = True):
        self.port = port or free_port()
        self.state = state or tmp_path / "bridge.sqlite"
        self.log = tmp_path / f"bridge-{time.monotonic_ns()}.log"
        self.cmd = [sys.executable, "-m", "edge.bridge.cli", "--insecure", "--connect", node.connect,
                    "--state", str(self.state), *(["--modbus-port", str(self.port)] if modbus else []),
                    "--since-start", "-v", *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_serving(self, plc: PlcClient, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            r = plc.read()
            if r is not None:
                return r
            time.sleep(0.05)
        pytest.fail(f"edge-bridge did not serve Modbus within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@pytest.fixture
def node(tmp_path):
    n = SimNode(tmp_path / "node" / "journal.sqlite")
    yield n
    n.close()


def consume(consumer: Consumer, n: int, timeout: float, poll_s: float = 0.005, stop_after: int | None = None):
    deadline = time.monotonic() + timeout
    while len(consumer.results) < n and time.monotonic() < deadline:
        consumer.poll()
        if stop_after is not None and len(consumer.results) >= stop_after:
            return
        time.sleep(poll_s)


def test_100_results_exactly_once_in_order_across_a_sigkill_of_the_bridge(tmp_path, node):
    # a queue above 100: this test is about the restart, not about overruns (the next test is)
    bridge = BridgeProc(tmp_path, node, "--modbus-queue", "128")
    plc = PlcClient(port=bridge.port)
    try:
        bridge.wait_serving(plc)
        consumer = Consumer(plc)
        node.start_rate(100, 100)          # the node publishes while the PLC consumes
        consume(consumer, 100, 20, stop_after=35)
        assert len(consumer.results) >= 35 and node.busy     # mid-stream
        bridge.kill()                      # mid-stream: the PLC's requests now fail
        assert plc.read() is None
        while node.busy:                   # the rest is published while the bridge is dead
            time.sleep(0.02)
        bridge = BridgeProc(tmp_path, node, "--modbus-queue", "128", port=bridge.port, state=bridge.state)
        bridge.wait_serving(plc)
        consume(consumer, 100, 30)
    finally:
        rc = bridge.stop()
        plc.close()
    seqs = [r["result_counter"] for r in consumer.results]
    assert seqs == list(range(1, 101)), seqs
    for r in consumer.results:
        s = r["result_counter"]
        assert r["verdict"] == verdict_for(s)
        assert r["frame_seq"] == frame_for(s)
        assert r["score_x1000"] == (0 if score_for(s) is None else round(score_for(s) * 1000))
        assert (r["pass"], r["fail"], r["not_decidable"]) == (verdict_for(s) == "OK", verdict_for(s) == "NotOK",
                                                               verdict_for(s) == "NotDecidable")
        assert r["region_count"] == (1 if verdict_for(s) == "NotOK" else 0)
    # a result whose ack did not get through before the kill may be presented again (then acked
    # again, never acted on twice); a result whose ack succeeded never is
    assert consumer.represented <= 1
    assert rc == 0, bridge.log.read_text()[-2000:]
    with sqlite3.connect(bridge.state) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 100
        assert db.execute("SELECT count(*) FROM modbus_queue").fetchone()[0] == 0


def test_an_unacknowledging_plc_fills_the_queue_sets_overrun_and_loses_nothing_queued(tmp_path, node):
    metrics_port = free_port()
    bridge = BridgeProc(tmp_path, node, "--modbus-queue", "5", "--metrics-port", str(metrics_port))
    plc = PlcClient(port=bridge.port)
    try:
        bridge.wait_serving(plc)
        node.publish(12)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = plc.read()
            if r and r["overrun_count"] == 7:
                break
            time.sleep(0.02)
        # the PLC has not acknowledged anything: the first result stays, 5 are queued, 7 overran
        assert r["result_valid"] and r["result_counter"] == 1 and r["queue_depth"] == 5
        assert r["overrun"] and r["overrun_count"] == 7
        bits = plc.status_bits()
        assert bits[2] and bits[7], bits          # discrete inputs mirror Result Valid and Overrun
        time.sleep(0.3)
        assert plc.read()["result_counter"] == 1  # still the same result: nothing moves without an ack
        deadline = time.monotonic() + 5    # the snapshot is refreshed 4 times a second
        while 'edge_bridge_overruns_total{downstream="modbus"} 7' not in (text := urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()):
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        assert 'edge_bridge_pending{downstream="modbus"} 5' in text
        # a wrong ack is refused and flagged
        assert plc.ack(999)
        r = plc.read()
        assert r["result_counter"] == 1 and r["error"] and r["error_code"] == ERROR_ACK_MISMATCH
        consumer = Consumer(plc)
        consume(consumer, 5, 10)
        assert [r["result_counter"] for r in consumer.results] == [1, 2, 3, 4, 5]
        r = plc.read()
        assert not r["result_valid"] and r["queue_depth"] == 0 and r["overrun"]   # latched until cleared
        assert plc.control(clear_overrun=True, clear_error=True)
        r = plc.read()
        assert not r["overrun"] and not r["error"] and r["overrun_count"] == 7
        node.publish(1)                            # room again: the next result is presented
        consume(consumer, 6, 10)
        assert consumer.results[-1]["result_counter"] == 13
    finally:
        bridge.stop()
        plc.close()


def test_the_heartbeat_counts_while_the_bridge_lives_and_stops_when_it_dies(tmp_path, node):
    bridge = BridgeProc(tmp_path, node, "--heartbeat-ms", "50")
    plc = PlcClient(port=bridge.port, timeout=0.2)
    try:
        first = bridge.wait_serving(plc)["heartbeat"]
        time.sleep(0.5)
        assert plc.read()["heartbeat"] - first >= 5    # 50 ms period: about 10 in 0.5 s
        dog = HeartbeatWatchdog(timeout_s=0.25)        # 5 periods
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:
            r = plc.read()
            assert dog.feed(r and r["heartbeat"])
            time.sleep(0.01)
        bridge.kill()
        killed = time.monotonic()
        while dog.feed((r := plc.read()) and r["heartbeat"]):
            assert time.monotonic() - killed < 2
            time.sleep(0.01)
        assert time.monotonic() - killed <= 0.25 + 0.3
        assert plc.read() is None
    finally:
        bridge.stop()
        plc.close()


def test_the_reject_coil_pulses_once_per_notok_result(tmp_path, node):
    bridge = BridgeProc(tmp_path, node, "--reject-pulse-ms", "300", "--camera", "side", "--camera", "top")
    plc = PlcClient(port=bridge.port)
    try:
        bridge.wait_serving(plc)
        node.publish(1)                            # alert_seq 1: NotOK, camera "side" (index 1)
        deadline = time.monotonic() + 10
        while not ((r := plc.read()) and r["result_valid"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r["verdict"] == "NotOK" and r["camera_index"] == 1 and r["reject"]
        assert plc.reject_coil() is True
        time.sleep(0.45)
        assert plc.reject_coil() is False and not plc.read()["reject"]
        assert plc.read()["result_valid"]          # the pulse ends; the result waits for its ack
        assert plc.ack(1)
        node.publish(1)                            # alert_seq 2: OK, camera "top" (index 2): no pulse
        deadline = time.monotonic() + 10
        while not ((r := plc.read()) and r["result_valid"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r["verdict"] == "OK" and r["camera_index"] == 2 and not r["reject"]
    finally:
        bridge.stop()
        plc.close()


def test_writes_outside_the_ack_and_control_registers_are_refused(tmp_path, node):
    bridge = BridgeProc(tmp_path, node)
    plc = PlcClient(port=bridge.port)
    try:
        bridge.wait_serving(plc)
        r = plc.client.write_register(0, 1, device_id=1)
        assert r.isError() and r.exception_code == 2        # Illegal Data Address
        r = plc.client.write_coil(0, True, device_id=1)
        assert r.isError()
        regs = plc.client.read_input_registers(0, count=16, device_id=1).registers   # FC4 mirrors FC3
        assert decode_registers(regs)["online"]
        node.publish(1)
        deadline = time.monotonic() + 10
        while not ((r := plc.read()) and r["result_valid"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        # a PLC with single-register writes only (FC6): the high word, then the low word completes the ack
        assert not plc.client.write_register(16, 0, device_id=1).isError()
        assert plc.read()["result_valid"]
        assert not plc.client.write_register(17, 1, device_id=1).isError()
        r = plc.read()
        assert not r["result_valid"] and r["result_counter"] == 1 and not r["error"]
    finally:
        bridge.stop()
        plc.close()


def run_main(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.bridge.cli", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("args, expected", [
    (["--modbus-port", "70000"], "--modbus-port 70000: give 1..65535"),
    (["--modbus-port", "5020", "--modbus-queue", "0"], "--modbus-queue 0: give 1..65535"),
    (["--modbus-port", "5020", "--reject-on", "NotOK,Broken"], "--reject-on Broken"),
    (["--modbus-port", "5020", "--connect", "tcp://127.0.0.1:7000"], "serves one edge node"),
    ([], "no downstream"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, args, expected):
    r = run_main("--insecure", "--connect", "tcp://127.0.0.1:6000", "--state", str(tmp_path / "s.sqlite"), *args)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert expected in last and "Traceback" not in r.stderr, r.stderr


def test_a_port_in_use_and_a_foreign_state_file_are_one_line_errors(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_main("--insecure", "--connect", "tcp://127.0.0.1:6000", "--state", str(tmp_path / "s.sqlite"),
                     "--modbus-port", str(port))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot serve Modbus TCP on 127.0.0.1:{port}" in r.stderr.strip().splitlines()[-1]
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE parts (id INTEGER)")
    r = run_main("--insecure", "--connect", "tcp://127.0.0.1:6000", "--state", str(foreign),
                 "--modbus-port", str(free_port()))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "is not an edge-bridge state file" in r.stderr.strip().splitlines()[-1]


def test_the_part_id_registers_hold_64_bytes_of_utf8_high_byte_first_and_the_full_length():
    from edge.bridge.modbus import (N_REGISTERS, PART_ID_REGISTERS, REG_PART_ID, REG_PART_ID_COUNTER,
                                    REG_PART_ID_LENGTH, REG_RESULT_COUNTER, REG_STATUS, string_words, u32_words)
    assert (REG_PART_ID_COUNTER, REG_PART_ID_LENGTH, REG_PART_ID, N_REGISTERS) == (19, 21, 22, 54)
    words = string_words("cell0004.png", PART_ID_REGISTERS)
    assert words[:2] == [ord("c") << 8 | ord("e"), ord("l") << 8 | ord("l")] and words[6:] == [0] * 26

    def regs_for(part_id: str, counter: int = 7, id_counter: int = 7) -> list[int]:
        regs = [0] * N_REGISTERS
        regs[REG_STATUS] = 0b101                        # online, result valid
        regs[REG_RESULT_COUNTER:REG_RESULT_COUNTER + 2] = u32_words(counter)
        regs[REG_PART_ID_COUNTER:REG_PART_ID_COUNTER + 2] = u32_words(id_counter)
        regs[REG_PART_ID_LENGTH] = len(part_id.encode())
        regs[REG_PART_ID:] = string_words(part_id, PART_ID_REGISTERS)
        return regs
    assert decode_registers(regs_for("cell0004.png"))["part_id"] == "cell0004.png"
    assert decode_registers(regs_for("zelle-ä.png"))["part_id"] == "zelle-ä.png"        # UTF-8, 12 bytes
    long = "lot42/" + "x" * 100
    r = decode_registers(regs_for(long))
    assert r["part_id"] == long[:64] and r["part_id_length"] == 106      # truncated, and the PLC can tell
    # read apart from 0..15, the block of another result is not taken for this one
    assert decode_registers(regs_for("cell0004.png", counter=8, id_counter=7))["part_id"] is None
    assert decode_registers(regs_for("cell0004.png")[:16])["part_id"] is None   # 0..15 only: no block read


def test_the_bridge_imports_no_torch():
    code = ("import sys, pkgutil, importlib, edge.bridge\n"
            "for m in pkgutil.iter_modules(edge.bridge.__path__, 'edge.bridge.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer', 'calibration', 'deploy')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
