"""edge-bridge's MQTT publisher against a real broker (Debian's mosquitto, a process on a loopback
port) and a real paho subscriber: every alert arrives, duplicates only with the same alert_id,
across a SIGKILL of the bridge and a restart of the broker. No mocks."""
import json
import time

import pytest

pytest.importorskip("paho.mqtt", reason="the plc extra is not installed: pip install -e '.[plc]'")

from tests.edge.bridge_node import SimNode, frame_for, verdict_for  # noqa: E402
from tests.edge.mosquitto import Collector, Mosquitto, find_mosquitto  # noqa: E402
from tests.edge.test_bridge_modbus import BridgeProc, run_main  # noqa: E402

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(find_mosquitto() is None,
                                 reason="no mosquitto binary (apt-get install mosquitto; .ci/run and `make broker` "
                                        "install it)")]


@pytest.fixture
def node(tmp_path):
    n = SimNode(tmp_path / "node" / "journal.sqlite")
    yield n
    n.close()


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def mqtt_bridge(tmp_path, node, broker, *extra, state=None):
    return BridgeProc(tmp_path, node, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                      "--mqtt-client-id", "bridge-under-test", "--mqtt-keepalive", "5", *extra,
                      state=state, modbus=False)


def alerts_of(messages):
    return [(t, json.loads(p)) for t, p, _, _ in messages if "/alert/" in t]


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_100_alerts_survive_a_sigkill_of_the_bridge_and_a_broker_restart(tmp_path, node, broker):
    sub = Collector(broker.port, ["edge-inspect/#"])
    bridge = mqtt_bridge(tmp_path, node, broker)
    try:
        wait_for(lambda: any(t.endswith("/bridge/bridge-under-test") and p == b"online"
                             for t, p, _, _ in sub.snapshot()), 20, "the bridge never said online")
        node.start_rate(100, 50)
        wait_for(lambda: len(alerts_of(sub.snapshot())) >= 25, 20, "fewer than 25 alerts arrived")
        bridge.kill()
        # the broker publishes the last will of a connection that died
        wait_for(lambda: any(t.endswith("/bridge/bridge-under-test") and p == b"offline"
                             for t, p, _, _ in sub.snapshot()), 15, "no last will after the SIGKILL")
        bridge = mqtt_bridge(tmp_path, node, broker, state=bridge.state)
        wait_for(lambda: len({a["alert_seq"] for _, a in alerts_of(sub.snapshot())}) >= 50, 20,
                 "the restarted bridge did not go on")
        node.start_rate(40, 50)
        time.sleep(0.2)
        broker.stop()                      # a broker restart while alerts flow
        time.sleep(0.5)
        assert node.busy                   # alerts keep coming while the broker is away
        broker.start()
        wait_for(lambda: len({a["alert_seq"] for _, a in alerts_of(sub.snapshot())}) >= 100, 40,
                 "not every alert arrived after the broker restart")
    finally:
        rc = bridge.stop()
        sub.close()
    got = alerts_of(sub.snapshot())
    by_seq = {}
    for topic, a in got:
        s = a["alert_seq"]
        assert a["alert_id"] == f"line1/{node.journal_id}/{s}"
        assert topic == f"edge-inspect/line1/alert/{a['camera']}/{a['verdict']}"
        assert a["verdict"] == verdict_for(s) and a["frame_seq"] == frame_for(s)
        if s in by_seq:                    # a redelivery: the same alert, the same id
            assert by_seq[s] == a
        by_seq[s] = a
    assert sorted(by_seq) == list(range(1, 101))
    assert rc == 0
    # a dashboard connecting now sees each camera's last result at once (retained)
    late = Collector(broker.port, ["edge-inspect/line1/status/+"], client_id="late-dashboard", clean=True)
    try:
        wait_for(lambda: len(late.snapshot()) >= 2, 10, "no retained camera status")
        status = {t.rsplit("/", 1)[1]: json.loads(p) for t, p, retained, _ in late.snapshot() if retained}
        assert {status["top"]["alert_seq"], status["side"]["alert_seq"]} == {99, 100}
    finally:
        late.close()


def test_a_broker_that_is_down_costs_no_alert(tmp_path, node, broker):
    broker.stop()
    bridge = mqtt_bridge(tmp_path, node, broker)
    try:
        time.sleep(1.0)
        node.publish(10)                   # published while the broker is away: they wait, counted
        time.sleep(1.0)
        assert bridge.proc.poll() is None
        broker.start()
        sub = Collector(broker.port, ["edge-inspect/line1/alert/#"], client_id="after", clean=True)
        try:
            wait_for(lambda: len({a["alert_seq"] for _, a in alerts_of(sub.snapshot())}) >= 10, 20,
                     "the alerts published while the broker was down did not arrive")
        finally:
            sub.close()
    finally:
        bridge.stop()


@pytest.mark.parametrize("args, expected", [
    (["--mqtt-port", "1883"], "MQTT options without --mqtt-host"),
    (["--mqtt-host", "127.0.0.1", "--mqtt-tls-cert", "c.pem"], "--mqtt-tls-cert and --mqtt-tls-key go together"),
    (["--mqtt-host", "127.0.0.1", "--mqtt-tls-ca", "/nonexistent/ca.pem"], "--mqtt-tls-ca /nonexistent/ca.pem"),
    (["--mqtt-host", "127.0.0.1", "--mqtt-password-file", "/nonexistent/pw"], "--mqtt-password-file"),
    (["--mqtt-host", "127.0.0.1", "--mqtt-prefix", "a/#"], "--mqtt-prefix"),
])
def test_bad_mqtt_options_are_refused_in_one_line(tmp_path, args, expected):
    r = run_main("--insecure", "--connect", "tcp://127.0.0.1:6000", "--state", str(tmp_path / "s.sqlite"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert expected in r.stderr.strip().splitlines()[-1]


def _tls_files(folder):
    """A CA and a broker certificate for 127.0.0.1, made here (cryptography comes with asyncua)."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / f"{n}.pem" for n in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def test_tls_and_username_password(tmp_path, node):
    import shutil
    import subprocess
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("no mosquitto_passwd (Debian's mosquitto package has it)")
    tls = _tls_files(tmp_path / "tls")
    pwfile = tmp_path / "broker-passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), "bridge", "s3cret"], check=True, capture_output=True)
    # a TLS listener with passwords for the bridge, a plaintext one (same password file) for the test's subscriber
    from tests.edge.mosquitto import free_port
    tls_port, plain = free_port(), free_port()
    broker = Mosquitto(tmp_path / "tls-broker", port=plain,
                       extra=f"listener {tls_port} 127.0.0.1\ncafile {tls['ca']}\ncertfile {tls['cert']}\n"
                             f"keyfile {tls['key']}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "per_listener_settings false\n"
                           f"allow_anonymous false\npassword_file {pwfile}"))
    broker.start()
    good_pw, bad_pw = tmp_path / "pw", tmp_path / "bad-pw"
    good_pw.write_text("s3cret\n")
    bad_pw.write_text("wrong\n")
    try:
        import paho.mqtt.client as mqtt
        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-sub")
        sub.username_pw_set("bridge", "s3cret")
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("edge-inspect/line1/alert/#", qos=1)
        sub.connect("127.0.0.1", plain)
        sub.loop_start()
        common = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(tls_port), "--mqtt-tls-ca", str(tls["ca"]),
                  "--mqtt-username", "bridge"]
        wrong = BridgeProc(tmp_path, node, *common, "--mqtt-password-file", str(bad_pw), "--mqtt-client-id", "w",
                           state=tmp_path / "wrong.sqlite", modbus=False)
        right = BridgeProc(tmp_path, node, *common, "--mqtt-password-file", str(good_pw), "--mqtt-client-id", "r",
                           modbus=False)
        time.sleep(2.0)
        node.publish(3)
        wait_for(lambda: len({a["alert_seq"] for a in got}) >= 3, 15, "no alert over TLS with a password")
        wait_for(lambda: "refused the connection" in wrong.log.read_text(), 10,
                 "a wrong password was not reported")
        assert "s3cret" not in " ".join(right.cmd)     # the password never on the command line
        wrong.stop()
        right.stop()
        sub.loop_stop()
    finally:
        broker.stop()
