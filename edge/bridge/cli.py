"""`edge-bridge`: an edge node's alerts for the line's PLC, MES and SCADA (docs/plc.md).

One process: the intake thread (edge.bridge.intake: the gap-filling, resuming subscriber,
storing each alert once in the state file) and an asyncio loop serving the downstreams the
options name: Modbus TCP (edge.bridge.modbus), MQTT (edge.bridge.mqtt), OPC UA
(edge.bridge.opcua). Each downstream keeps its own cursor in the state file, so a restarted
bridge hands each one what it had not acknowledged.

A separate command rather than more options of edge-alerts: edge-alerts is the MES's store and
printer and exits when asked; a bridge is a service beside the PLC with its own state, servers,
heartbeat and metrics, and a different life (systemd, Restart=always).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from edge.alerts import VERDICTS
from edge.bridge.intake import Intake
from edge.bridge.metrics import BridgeMetricsServer
from edge.bridge.modbus import ModbusBridge, ModbusConfig
from edge.bridge.mqtt import MqttBridge, MqttConfig
from edge.bridge.opcua import OpcuaBridge, OpcuaConfig
from edge.bridge.outbox import Outbox, StateError
from edge.security import CurveConfig, SecurityError, add_curve_arguments, insecure_warning
from edge.subscriber.client import parse_connect

log = logging.getLogger("edge.bridge")

EPILOG = """\
examples:
  # a PLC polls Modbus TCP on port 5020 (results of camera top = index 1, side = 2)
  edge-bridge --connect tcp://line1-edge:5560 --state /var/lib/edge-bridge/line1.sqlite \\
      --camera top --camera side --modbus-port 5020 --reject-pulse-ms 200 \\
      --curve-secret keys/plc-bridge.key_secret --curve-server-key keys/node.key

  # the demo node on this machine, plaintext (make demo-plc)
  edge-bridge --insecure --connect tcp://127.0.0.1:5560 --state runs/demo/bridge.sqlite --modbus-port 5020

The register map, the handshake and what a PLC program must do: docs/plc.md.
Every alert reaches each downstream once (Modbus: a result acknowledged is never presented
again), also across restarts of the bridge: the state file (--state) holds the alerts received
and each downstream's cursor. Exit status: 0 on SIGINT/SIGTERM, 1 when the intake or a server
fails while running, 2 for a bad configuration (one line saying which option and what to do).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-bridge", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EPILOG, description="Serve an edge node's alerts to a PLC (Modbus TCP), "
                                "an MES/SCADA (MQTT, OPC UA): every verdict exactly once.")
    p.add_argument("--connect", action="append", required=True, metavar="ALERTS[,REPLAY]",
                   help="the edge node's alert endpoint, e.g. tcp://line1-edge:5560 (and its replay endpoint "
                        "after a comma when it is not the alert port + 1)")
    p.add_argument("--state", required=True, metavar="FILE",
                   help="the bridge's state file (SQLite: alerts received, each downstream's cursor); keep it "
                        "across restarts, one per bridge")
    p.add_argument("--camera", action="append", default=[], metavar="ID",
                   help="bridge only this camera (repeatable); the order gives the Modbus camera index 1, 2, ...; "
                        "without --camera every camera is bridged with camera index 0")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since-start", action="store_true",
                       help="at the first start, take every alert the node still has (default: from now on)")
    start.add_argument("--replay-from", type=int, metavar="SEQ",
                       help="at the first start, take the node's alerts from alert_seq SEQ on")
    m = p.add_argument_group("Modbus TCP server (docs/plc.md)")
    m.add_argument("--modbus-port", type=int, metavar="PORT",
                   help="serve the results on this TCP port (502 is Modbus's own, needs root): turns Modbus on")
    m.add_argument("--modbus-host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for the PLC network)")
    m.add_argument("--modbus-unit", type=int, default=0, metavar="ID",
                   help="answer only this unit id (1..247); default 0: any unit id")
    m.add_argument("--modbus-queue", type=int, default=64, metavar="N",
                   help="results waiting for the PLC's ack, the one presented included (default 64); beyond it "
                        "the Results Buffer Overrun bit latches and the result is not queued")
    m.add_argument("--heartbeat-ms", type=int, default=100, metavar="MS",
                   help="the heartbeat register counts up every MS ms (default 100); fault the station when it "
                        "stops for 3-5 periods")
    m.add_argument("--reject-pulse-ms", type=int, default=0, metavar="MS",
                   help="pulse the reject coil (coil 0) for MS ms when a result of --reject-on is presented "
                        "(default 0: no reject output)")
    m.add_argument("--reject-on", default="NotOK,NotDecidable", metavar="VERDICTS",
                   help="comma-separated verdicts that pulse the reject coil (default NotOK,NotDecidable: a part "
                        "not inspected is rejected, the fail-safe reading)")
    q = p.add_argument_group("MQTT publisher (docs/plc.md, MQTT)")
    q.add_argument("--mqtt-host", metavar="HOST", help="publish every alert to this MQTT broker: turns MQTT on")
    q.add_argument("--mqtt-port", type=int, metavar="PORT", help="default 1883, or 8883 with --mqtt-tls-ca")
    q.add_argument("--mqtt-prefix", default="edge-inspect", metavar="TOPIC",
                   help="topic prefix (default edge-inspect): <prefix>/<node>/alert/<camera>/<verdict>")
    q.add_argument("--mqtt-client-id", default="", metavar="ID", help="default edge-bridge-<host name>")
    q.add_argument("--mqtt-username", metavar="USER")
    q.add_argument("--mqtt-password-file", metavar="FILE",
                   help="a file holding the password (not the password itself: command lines are visible to all)")
    q.add_argument("--mqtt-tls-ca", metavar="FILE", help="TLS: the CA certificate that signed the broker's")
    q.add_argument("--mqtt-tls-cert", metavar="FILE", help="TLS client certificate (with --mqtt-tls-key)")
    q.add_argument("--mqtt-tls-key", metavar="FILE", help="its private key")
    q.add_argument("--mqtt-keepalive", type=int, default=10, metavar="S",
                   help="MQTT keep-alive (default 10 s): the broker publishes the last will within 1.5 x S")
    u = p.add_argument_group("OPC UA server (docs/plc.md, OPC UA)")
    u.add_argument("--opcua-endpoint", metavar="URL",
                   help="serve results on this endpoint, e.g. opc.tcp://0.0.0.0:4840/edge-inspect/: turns OPC UA on")
    u.add_argument("--opcua-cert", metavar="FILE", help="the server's certificate (DER or PEM)")
    u.add_argument("--opcua-key", metavar="FILE", help="its private key (PEM)")
    u.add_argument("--opcua-trust", metavar="DIR", help="folder of trusted client certificates (X.509 users)")
    o = p.add_argument_group("metrics")
    o.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port")
    o.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR", help="default 127.0.0.1")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections and progress")
    add_curve_arguments(p, server=False, client=True)
    return p


class ConfigError(ValueError):
    """A bad option: one line, the option and what to do."""


def check_args(args: argparse.Namespace) -> None:
    """Raise ConfigError for each bad combination (argparse has checked the types)."""
    for c in args.connect:
        try:
            parse_connect(c)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if args.mqtt_host is None and any(getattr(args, a) is not None for a in (
            "mqtt_port", "mqtt_username", "mqtt_password_file", "mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key")):
        raise ConfigError("MQTT options without --mqtt-host: give the broker's --mqtt-host")
    if args.opcua_endpoint is None and any((args.opcua_cert, args.opcua_key, args.opcua_trust)):
        raise ConfigError("OPC UA options without --opcua-endpoint: give the endpoint to serve")
    if args.modbus_port is None and args.mqtt_host is None and args.opcua_endpoint is None:
        raise ConfigError("no downstream: give --modbus-port PORT (a PLC polls it), --mqtt-host HOST and/or "
                          "--opcua-endpoint URL")
    if args.modbus_port is not None:
        if not 1 <= args.modbus_port <= 65535:
            raise ConfigError(f"--modbus-port {args.modbus_port}: give 1..65535")
        if len(args.connect) > 1:
            raise ConfigError("--modbus-port serves one edge node (its result counter is that node's alert_seq): "
                              "give one --connect, and run one edge-bridge per node on its own --modbus-port")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port {args.metrics_port}: give 0..65535")
    if len(set(args.camera)) != len(args.camera):
        raise ConfigError(f"--camera given twice: {sorted(c for c in set(args.camera) if args.camera.count(c) > 1)}")
    if args.replay_from is not None and args.replay_from < 1:
        raise ConfigError("--replay-from is an alert_seq: 1 or more")


def modbus_config(args) -> ModbusConfig:
    reject_on = tuple(v.strip() for v in args.reject_on.split(",") if v.strip())
    cfg = ModbusConfig(host=args.modbus_host, port=args.modbus_port, queue_size=args.modbus_queue,
                       heartbeat_ms=args.heartbeat_ms, reject_pulse_ms=args.reject_pulse_ms, reject_on=reject_on,
                       cameras=tuple(args.camera), device_id=args.modbus_unit)
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


def mqtt_config(args) -> MqttConfig:
    password = None
    if args.mqtt_password_file is not None:
        try:
            with open(args.mqtt_password_file) as f:
                password = f.read().strip("\r\n")
        except OSError as e:
            raise ConfigError(f"--mqtt-password-file {args.mqtt_password_file}: {e.strerror}") from e
    port = args.mqtt_port if args.mqtt_port is not None else (8883 if args.mqtt_tls_ca else 1883)
    cfg = MqttConfig(host=args.mqtt_host, port=port, prefix=args.mqtt_prefix, client_id=args.mqtt_client_id,
                     username=args.mqtt_username, password=password, tls_ca=args.mqtt_tls_ca,
                     tls_cert=args.mqtt_tls_cert, tls_key=args.mqtt_tls_key, keepalive_s=args.mqtt_keepalive)
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


def opcua_config(args) -> OpcuaConfig:
    cfg = OpcuaConfig(endpoint=args.opcua_endpoint, cert=args.opcua_cert, key=args.opcua_key, trust=args.opcua_trust,
                      insecure=args.insecure)
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


class Bridge:
    """The running bridge: intake thread + downstreams in one asyncio loop."""

    def __init__(self, args: argparse.Namespace, curve):
        self.args, self.curve = args, curve
        self.intake: Intake | None = None
        self.outbox: Outbox | None = None
        self.modbus: ModbusBridge | None = None
        self.mqtt: MqttBridge | None = None
        self.opcua: OpcuaBridge | None = None
        self.metrics: BridgeMetricsServer | None = None
        self._snapshot: dict = {}
        self.stop_event = asyncio.Event()
        self.failure: str | None = None

    def _wake_all(self) -> None:
        for d in (self.modbus, self.mqtt, self.opcua):
            if d is not None:
                d.wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        args = self.args
        # the loop's own connection: acknowledgements are fsynced (FULL), see edge.bridge.outbox
        self.outbox = Outbox(args.state, synchronous="FULL")
        self.intake = Intake(args.state, args.connect, cameras=args.camera,
                             on_new=lambda: loop.call_soon_threadsafe(self._wake_all),
                             since_start=args.since_start, replay_from=args.replay_from, curve=self.curve)
        try:
            if args.modbus_port is not None:
                self.modbus = ModbusBridge(self.outbox, modbus_config(args), ready=lambda: self.intake.connected,
                                           alerts_lost=lambda: self.intake.sub_summary.get("gaps_lost", 0))
                await self.modbus.start()
            if args.mqtt_host is not None:
                self.mqtt = MqttBridge(self.outbox, mqtt_config(args))
                await self.mqtt.start()
            if args.opcua_endpoint is not None:
                self.opcua = OpcuaBridge(self.outbox, opcua_config(args), cameras=args.camera)
                try:
                    await self.opcua.start()
                except ValueError as e:
                    raise ConfigError(str(e)) from e
            self.intake.start()
            await loop.run_in_executor(None, self.intake.started.wait, 30)
            if self.intake.error:
                raise ConfigError(self.intake.error)
            self._refresh_snapshot()
            if args.metrics_port is not None:
                self.metrics = BridgeMetricsServer(args.metrics_host, args.metrics_port, lambda: self._snapshot)
                log.info("metrics on http://%s:%d/metrics", args.metrics_host, self.metrics.port)
            log.warning("edge-bridge running: state %s, node %s%s%s", args.state, ", ".join(args.connect),
                        f", Modbus TCP {args.modbus_host}:{args.modbus_port}" if self.modbus else "",
                        f", MQTT {args.mqtt_host}" if self.mqtt else "")
            while not self.stop_event.is_set():
                try:
                    await asyncio.wait_for(self.stop_event.wait(), 0.25)
                except asyncio.TimeoutError:
                    pass
                self._refresh_snapshot()
                if not self.intake.is_alive() and not self.stop_event.is_set():
                    self.failure = f"the intake stopped: {self.intake.error}"
                    break
        finally:
            await self._close()
        if self.failure:
            log.error("%s", self.failure)
            return 1
        return 0

    def _refresh_snapshot(self) -> None:
        counters, gauges, latency = {}, {}, {}
        ic = self.intake.counters if self.intake else {}
        for name in ("received", "stored", "duplicates"):
            counters[f"intake_{name}"] = {(): ic.get(name, 0)}
        summ = self.intake.sub_summary if self.intake else {}
        for name in ("gaps_lost", "replayed", "disconnected"):
            counters[f"intake_{name}"] = {(): summ.get(name, 0)}
        gauges["node_connected"] = {(): int(bool(self.intake and self.intake.connected))}
        if self.modbus is not None:
            s = self.modbus.snapshot()
            lab = (("downstream", "modbus"),)
            counters["delivered"] = {lab: s["acked"]}
            counters["overruns"] = {lab: s["overruns_total"]}
            counters["reconnects"] = {lab: s["plc_connects"]}
            counters["ack_mismatches"] = {lab: s["ack_mismatches"]}
            counters["rejects_pulsed"] = {lab: s["rejects_pulsed"]}
            counters["state_errors"] = {lab: s["state_errors"]}
            gauges["pending"] = {lab: s["pending"]}
            latency["ack_latency"] = {lab: s["ack_latency_ms"]}
        if self.mqtt is not None:
            s = self.mqtt.snapshot()
            lab = (("downstream", "mqtt"),)
            for name, key in (("delivered", "delivered"), ("reconnects", "reconnects"),
                              ("republished", "republished"), ("state_errors", "state_errors")):
                counters.setdefault(name, {})[lab] = s[key]
            gauges.setdefault("pending", {})[lab] = s["pending"]
            gauges["broker_connected"] = {lab: s["connected"]}
            latency.setdefault("ack_latency", {})[lab] = s["ack_latency_ms"]
        if self.opcua is not None:
            s = self.opcua.snapshot()
            lab = (("downstream", "opcua"),)
            counters.setdefault("delivered", {})[lab] = s["written"]
            counters.setdefault("state_errors", {})[lab] = s["state_errors"]
            gauges.setdefault("pending", {})[lab] = s["pending"]
            latency.setdefault("ack_latency", {})[lab] = s["latency_ms"]
        self._snapshot = {"counters": counters, "gauges": gauges, "latency_ms": latency,
                          "help": {"delivered": "alerts acknowledged by the downstream (PLC ack, PUBACK, written)",
                                   "pending": "alerts received and not yet acknowledged by the downstream",
                                   "overruns": "alerts not queued for the downstream because its queue was full",
                                   "reconnects": "connections of the downstream (PLC connects, broker reconnects)",
                                   "ack_latency": "presented -> acknowledged by the downstream"}}

    async def _close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.modbus is not None:
            await self.modbus.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.opcua is not None:
            await self.opcua.stop()
        if self.intake is not None and self.intake.is_alive():
            self.intake.stop()
            self.intake.join(5)
        if self.outbox is not None:
            self.outbox.close()


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s edge-bridge %(levelname)s %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # it logs every refused request as an error
    try:
        check_args(args)
        if args.modbus_port is not None:
            modbus_config(args)
        if args.mqtt_host is not None:
            mqtt_config(args)
        if args.opcua_endpoint is not None:
            opcua_config(args)
        curve_config = CurveConfig.from_args(args)
        curve = (curve_config.secret, curve_config.server_key) if curve_config.check(client=True) else None
    except (ConfigError, SecurityError) as e:
        p.error(str(e))
    if curve is None:
        insecure_warning(log, "the alert and replay connections run")

    async def amain() -> int:
        bridge = Bridge(args, curve)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop_event.set)
        return await bridge.run()

    try:
        return asyncio.run(amain())
    except (ConfigError, StateError, OSError) as e:
        print(f"edge-bridge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
