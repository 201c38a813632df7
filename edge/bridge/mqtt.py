"""The MQTT publisher of edge-bridge (paho-mqtt 2.x): every alert as JSON, QoS 1, for MES/SCADA.

Topics (``--mqtt-prefix``, default ``edge-inspect``; docs/plc.md "MQTT"):

- ``<prefix>/<node>/alert/<camera>/<verdict>``: one message per alert, QoS 1, not retained; the
  JSON of docs/alerts.md (what ``edge-alerts --json`` prints, ``part_id`` included) plus ``alert_id`` =
  ``"<node>/<journal_id>/<alert_seq>"``: a consumer de-duplicates redeliveries by it;
- ``<prefix>/<node>/status/<camera>``: retained, the camera's last result (alert_id, verdict,
  alert_seq, capture_wall, frame_seq, part_id): a dashboard that connects sees each camera's state at once;
- ``<prefix>/bridge/<client id>``: retained ``online``; the last will (retained ``offline``) is
  published by the broker when the bridge's connection dies (client id: ``--mqtt-client-id``,
  default ``edge-bridge-<host name>``).

Delivery: the cursor (state file, ``mqtt``) moves over alerts whose PUBACK came, contiguously.
Up to ``window`` alerts are in flight; when the connection drops, what was in flight is sent
again after the reconnect (MQTT duplicates, with the same alert_id); while the broker is down
nothing is lost: the alerts wait in the outbox, counted as pending.

paho runs its network loop in its own thread (``loop_start``); its callbacks only hand events to
the asyncio loop (``call_soon_threadsafe``): the outbox is touched by the loop's thread only.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass

from edge.bridge.outbox import Outbox, StateError
from edge.subscriber.output import alert_to_json

log = logging.getLogger("edge.bridge")
CURSOR = "mqtt"


def alert_id(alert: dict) -> str:
    """The name of one alert (docs/alerts.md): (node, journal_id, alert_seq); a node without a
    journal restarts its numbering, so its alerts are named by the publication time too."""
    if alert.get("journal_id"):
        return f"{alert['node']}/{alert['journal_id']}/{alert['alert_seq']}"
    return f"{alert['node']}/{alert['alert_seq']}/{alert['published_wall']}"


def _topic_part(s: str) -> str:
    # MQTT topic levels must not hold the wildcards or the separator
    return "".join("_" if c in "+#/\0" else c for c in s) or "_"


@dataclass
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge-inspect"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None          # CA file: turns TLS on
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False         # skip the broker's host-name check (test brokers only)
    keepalive_s: int = 10
    window: int = 64                   # alerts in flight (published, PUBACK not yet back)

    def check(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--mqtt-port {self.port}: give 1..65535")
        if not self.prefix or any(c in self.prefix for c in "+#\0") or self.prefix.startswith("/"):
            raise ValueError(f"--mqtt-prefix {self.prefix!r}: a topic prefix without +, # or a leading /")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--mqtt-tls-cert and --mqtt-tls-key go together (the client certificate and its key)")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("--mqtt-tls-cert needs --mqtt-tls-ca (the CA that signed the broker's certificate)")
        if self.password is not None and self.username is None:
            raise ValueError("--mqtt-password-file needs --mqtt-username")
        if not 5 <= self.keepalive_s <= 3600:
            raise ValueError(f"--mqtt-keepalive {self.keepalive_s}: give 5..3600 s")
        for opt, path in (("--mqtt-tls-ca", self.tls_ca), ("--mqtt-tls-cert", self.tls_cert),
                          ("--mqtt-tls-key", self.tls_key)):
            if path is not None:
                try:
                    open(path, "rb").close()
                except OSError as e:
                    raise ValueError(f"{opt} {path}: {e.strerror}") from e


class MqttBridge:
    def __init__(self, outbox: Outbox, config: MqttConfig):
        config.check()
        self.outbox, self.config = outbox, config
        self.client_id = config.client_id or f"edge-bridge-{socket.gethostname()}"
        self.bridge_topic = f"{config.prefix}/bridge/{_topic_part(self.client_id)}"
        self.wake = asyncio.Event()
        self.connected = False
        self.counters = {"published": 0, "delivered": 0, "republished": 0, "reconnects": 0, "disconnects": 0,
                         "state_errors": 0}
        self.ack_latency_ms: list[float] = []
        self._inflight: dict[int, tuple[int, float]] = {}   # mid -> (outbox id, sent at)
        self._acked: set[int] = set()                       # outbox ids acked above the cursor
        if outbox.cursor(CURSOR) is None:
            outbox.set_cursor(CURSOR, outbox.last_id())      # a new downstream: from now on
        self._cursor = outbox.cursor(CURSOR)
        self._sent_upto = self._cursor
        self._ever_connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None
        self._task: asyncio.Task | None = None

    # -- paho callbacks (its network thread): hand over to the loop -------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._loop.call_soon_threadsafe(self._connected, not reason_code.is_failure, str(reason_code))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._loop.call_soon_threadsafe(self._disconnected, str(reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._loop.call_soon_threadsafe(self._puback, mid)

    # -- in the loop -------------------------------------------------------------------------
    def _connected(self, ok: bool, reason: str) -> None:
        if not ok:
            log.error("the MQTT broker %s:%d refused the connection: %s (check --mqtt-username / "
                      "--mqtt-password-file and the broker's ACL)", self.config.host, self.config.port, reason)
            return
        self.connected = True
        if self._ever_connected:
            self.counters["reconnects"] += 1
        self._ever_connected = True
        log.info("connected to the MQTT broker %s:%d", self.config.host, self.config.port)
        self._client.publish(self.bridge_topic, b"online", qos=1, retain=True)
        self.wake.set()

    def _disconnected(self, reason: str) -> None:
        if self.connected:
            self.counters["disconnects"] += 1
            log.warning("lost the MQTT broker %s:%d (%s): %d alert(s) in flight are sent again after the "
                        "reconnect", self.config.host, self.config.port, reason, len(self._inflight))
        self.connected = False
        # what was in flight goes again (a duplicate, same alert_id, if the broker had it already)
        self.counters["republished"] += len(self._inflight)
        self._inflight.clear()
        self._sent_upto = self._cursor

    def _puback(self, mid: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return                      # the status messages, or a message of a previous connection
        oid, sent = entry
        self.ack_latency_ms.append((time.monotonic() - sent) * 1000)
        del self.ack_latency_ms[:-1000]
        self.counters["delivered"] += 1
        self._acked.add(oid)
        advanced = self._cursor
        while self._next_id_after(advanced) in self._acked:
            advanced = self._next_id_after(advanced)
            self._acked.discard(advanced)
        if advanced != self._cursor:
            self._cursor = advanced
            try:
                self.outbox.set_cursor(CURSOR, advanced)
            except StateError as e:     # the cursor stays behind: a restart sends those again (same alert_id)
                self.counters["state_errors"] += 1
                log.error("%s", e)
        self.wake.set()

    def _next_id_after(self, oid: int) -> int | None:
        row = self.outbox.execute("SELECT min(id) FROM outbox WHERE id > ?", (oid,)).fetchone()
        return row[0]

    def pending(self) -> int:
        return self.outbox.execute("SELECT count(*) FROM outbox WHERE id > ?", (self._cursor,)).fetchone()[0]

    def _publish_due(self) -> None:
        if not self.connected:
            return
        room = self.config.window - len(self._inflight)
        if room <= 0:
            return
        for oid, alert in self.outbox.after(self._sent_upto, room):
            if oid in self._acked:
                self._sent_upto = oid
                continue
            aid = alert_id(alert)
            payload = alert_to_json(alert, alert_id=aid, part_id=alert.get("part_id"))
            base = f"{self.config.prefix}/{_topic_part(alert['node'])}"
            cam, verdict = _topic_part(alert["camera"]), _topic_part(alert["verdict"])
            info = self._client.publish(f"{base}/alert/{cam}/{verdict}", payload, qos=1)
            if info.rc != 0:            # not connected after all: wait for on_connect
                return
            self._inflight[info.mid] = (oid, time.monotonic())
            self._sent_upto = oid
            self.counters["published"] += 1
            status = {"alert_id": aid, "alert_seq": alert["alert_seq"], "verdict": alert["verdict"],
                      "capture_wall": alert["capture_wall"], "frame_seq": alert["frame_seq"],
                      "part_id": alert.get("part_id")}
            self._client.publish(f"{base}/status/{cam}", json.dumps(status), qos=1, retain=True)

    async def start(self) -> None:
        import paho.mqtt.client as mqtt
        self._loop = asyncio.get_running_loop()
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.on_connect, client.on_disconnect, client.on_publish = (self._on_connect, self._on_disconnect,
                                                                       self._on_publish)
        client.will_set(self.bridge_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_inflight_messages_set(c.window + 16)     # room for the status messages beside the alerts
        client.max_queued_messages_set(0)
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls_ca is not None:
            try:
                client.tls_set(ca_certs=c.tls_ca, certfile=c.tls_cert, keyfile=c.tls_key,
                               cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as e:
                raise ValueError(f"--mqtt-tls-ca/--mqtt-tls-cert/--mqtt-tls-key: cannot load: {e}") from e
            client.tls_insecure_set(c.tls_insecure)
        self._client = client
        # connect_async + loop_start: paho connects, and re-connects after a broker restart, in its thread;
        # a broker that is down at start is not an error (the alerts wait, counted as pending)
        client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        client.loop_start()
        self._task = asyncio.create_task(self._run(), name="mqtt-publish")
        log.info("MQTT: publishing to %s:%d under %s/, status %s", c.host, c.port, c.prefix, self.bridge_topic)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                self._publish_due()
            except StateError as e:
                self.counters["state_errors"] += 1
                log.error("%s", e)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            if self.connected:
                # a clean stop says so (the last will is for a bridge that dies)
                self._client.publish(self.bridge_topic, b"offline", qos=1, retain=True).wait_for_publish(2)
            self._client.disconnect()
            self._client.loop_stop()

    def snapshot(self) -> dict:
        return {**self.counters, "pending": self.pending(), "connected": int(self.connected),
                "ack_latency_ms": list(self.ack_latency_ms)}
