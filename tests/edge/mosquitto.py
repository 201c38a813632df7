"""A real MQTT broker for the bridge tests and bench: Debian's mosquitto, started as a process on
a loopback port with its own config and persistence folder (installed by .ci/run and
``make broker``: apt-get install mosquitto). Tests skip, saying so, when no binary is found."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    for c in CANDIDATES:
        found = shutil.which(c) or (c if os.path.isfile(c) and os.access(c, os.X_OK) else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """``start()`` / ``stop()`` (SIGTERM: mosquitto saves its persistence file, so sessions and
    queued QoS 1 messages survive a restart on the same port); ``extra`` lines go into the config."""

    def __init__(self, folder: Path, port: int | None = None, extra: str = ""):
        self.binary = find_mosquitto()
        assert self.binary, "mosquitto not found"
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n"
                             "allow_anonymous true\n"
                             "persistence true\n"
                             f"persistence_location {self.folder}/\n"
                             "autosave_interval 1\n"
                             "log_dest stderr\n" +
                             # as root mosquitto drops to user "mosquitto", which cannot read the tests' 0700 folders
                             ("user root\n" if os.geteuid() == 0 else "") + extra)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 10) -> None:
        log = open(self.folder / f"mosquitto-{self.starts}.log", "w")
        self.starts += 1
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / f"mosquitto-{self.starts - 1}.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Collector:
    """A paho subscriber with a persistent session (its QoS 1 messages wait at the broker while
    it is away, and across a broker restart) collecting (topic, payload, retained, time)."""

    def __init__(self, port: int, topics, client_id: str = "test-collector", clean: bool = False):
        import paho.mqtt.client as mqtt
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.topics = list(topics)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "the test subscriber could not connect to the broker"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), time.perf_counter()))

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
