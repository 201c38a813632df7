"""CURVE on the wire (edge/security.py, edge-keys) with real pyzmq sockets on tcp://127.0.0.1
and real key files.

Servers and clients live in separate zmq.Contexts, as on separate hosts: ZAP (the allow-list
check) is per context, and a server's context must hold the CurveAuthority. Publishers are
XPUB sockets, so a test waits for the subscription to arrive instead of sleeping through
ZeroMQ's slow-joiner window.
"""
import logging
import os
import stat
import time

import msgpack
import numpy as np
import pytest
import zmq

from edge import wire
from edge.alerts import decode_alert, encode_alert, make_alert
from edge.keys_cli import main as keys_main
from edge.security import (HANDSHAKE_EVENTS, CurveAuthority, CurveConfig, HandshakeWatch, SecurityError,
                           add_curve_arguments, allow_key, client_name, explain_handshake_failure,
                           generate_keypair, insecure_warning, load_public, load_secret, read_allow_list,
                           secure_client, secure_server)

pytestmark = pytest.mark.timeout(20)

QUIET_S = 0.8   # how long a refused client is watched for messages that must not arrive


@pytest.fixture
def keys(tmp_path):
    """Keypairs of a node, an allowed subscriber, an unknown subscriber and an impostor node;
    the node's allow-list holds only the allowed subscriber."""
    d = tmp_path / "keys"
    k = {name: generate_keypair(d, name) for name in ("node", "mes", "stranger", "impostor")}
    allow = tmp_path / "allowed"
    allow_key(k["mes"][0], allow)
    return {name: {"public": pub, "secret": sec} for name, (pub, sec) in k.items()} | {"allow": allow}


@pytest.fixture
def contexts():
    made = []

    def make():
        made.append(zmq.Context())
        return made[-1]
    yield make
    for ctx in made:
        ctx.destroy(linger=0)


@pytest.fixture
def node(keys, contexts, caplog):
    """A CURVE node: context + authority + a helper to bind a secured server socket."""
    caplog.set_level(logging.INFO, logger="edge.security")
    ctx = contexts()
    refusals = []
    authority = CurveAuthority(ctx, keys["allow"], logging.getLogger("edge.security"), on_refused=refusals.append)

    class Node:
        pass
    n = Node()
    n.ctx, n.authority, n.refusals = ctx, authority, refusals

    def bind(kind):
        s = ctx.socket(kind)
        s.linger = 0
        secure_server(s, keys["node"]["secret"], authority=authority)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        return s, f"tcp://127.0.0.1:{port}"
    n.bind = bind
    yield n
    for s in list(authority._sockets):
        s.close(linger=0)
    authority.close()


def client(ctx, kind, keys, who, endpoint, server="node", watch=True):
    s = ctx.socket(kind)
    s.linger = 0
    c = secure_client(s, keys[who]["secret"], keys[server]["public"]) if who else None
    w = HandshakeWatch(s, client=c, role="client", log_interval_s=0) if watch else None
    if kind == zmq.SUB:
        s.subscribe(b"")
    s.connect(endpoint)
    return s, w


def an_alert(seq=1, node="line1"):
    return make_alert(node=node, alert_seq=seq, camera="cam0", frame_seq=100 + seq, capture_wall=1.7e9,
                      published_wall=1.7e9 + 0.01, latency_ms=10.0, verdict="NotOK", score=0.9,
                      normalised_score=0.7, threshold=0.5, model_version="m-abc", regions=[], reason=None,
                      thumbnail_jpeg=None)


def publish_for(pub, seconds):
    frames = encode_alert(an_alert())   # [topic, body]
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        pub.send_multipart(frames)
        n += 1
        time.sleep(0.02)
    return n


def drain(sock, expect=0, timeout=2.0):
    """What the socket holds now; with ``expect``, wait up to ``timeout`` s for that many messages."""
    got = []
    deadline = time.monotonic() + timeout
    while sock.poll(max(0, int((deadline - time.monotonic()) * 1000)) if len(got) < expect else 0):
        got.append(sock.recv_multipart())
    return got


def eventually(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# -- key files ---------------------------------------------------------------------------
def test_generate_and_load_keys(tmp_path):
    pub, sec = generate_keypair(tmp_path / "k", "line1-edge")
    assert (pub.name, sec.name) == ("line1-edge.key", "line1-edge.key_secret")
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    pair = load_secret(sec)
    assert load_public(pub) == pair.public and len(pair.public) == 40
    assert zmq.curve_public(pair.secret) == pair.public
    assert not list((tmp_path / "k").glob(".edge-keys-*")), "temporary directory left behind"
    with pytest.raises(SecurityError, match="never overwritten"):
        generate_keypair(tmp_path / "k", "line1-edge")
    assert load_secret(sec) == pair, "a refused generate must not touch the existing key"
    with pytest.raises(SecurityError, match="key name"):
        generate_keypair(tmp_path / "k", "../evil")


def test_key_file_errors_say_what_to_do(tmp_path):
    pub, sec = generate_keypair(tmp_path, "a")
    os.chmod(sec, 0o640)
    with pytest.raises(SecurityError, match=rf"mode 0640.*chmod 600 {sec}"):
        load_secret(sec)
    os.chmod(sec, 0o600)
    with pytest.raises(SecurityError, match=r"holds a SECRET key: give the public key file .*a\.key"):
        load_public(sec)
    with pytest.raises(SecurityError, match=r"holds only a public key.*a\.key_secret"):
        load_secret(pub)
    with pytest.raises(SecurityError, match="no such key file.*edge-keys generate"):
        load_public(tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(SecurityError, match="not a ZeroMQ CURVE key file"):
        load_public(junk)
    bad = tmp_path / "bad.key"
    bad.write_text('curve\n    public-key = "tooshort"\n')
    with pytest.raises(SecurityError, match="not a 40-character Z85 key"):
        load_public(bad)


# -- alerts channel: XPUB server, SUB clients -------------------------------------------
def test_allowed_subscriber_receives_unknown_one_receives_nothing(keys, node, contexts, caplog):
    xpub, ep = node.bind(zmq.XPUB)
    ok, ok_watch = client(contexts(), zmq.SUB, keys, "mes", ep)
    bad, bad_watch = client(contexts(), zmq.SUB, keys, "stranger", ep)
    assert xpub.poll(3000), "the allowed subscriber's subscription never arrived"
    sub_frame = xpub.recv(copy=False)
    assert sub_frame.bytes == b"\x01" and client_name(sub_frame) == "mes"
    assert ok_watch.wait(2.0)

    sent = publish_for(xpub, QUIET_S)
    got = drain(ok, expect=sent)
    assert len(got) == sent and decode_alert(got[0])["alert_seq"] == 1
    assert drain(bad) == [], "a subscriber without an allowed key received alerts"
    assert not xpub.poll(0), "the refused subscriber's subscription reached the XPUB"

    stranger = load_public(keys["stranger"]["public"]).decode()
    assert eventually(lambda: len(node.refusals) == 1)   # on_refused is the last step of a refusal
    assert node.authority.refused == 1
    assert node.authority.refused_keys == {stranger: 1}
    assert node.authority.allowed == 1
    assert [(r.client_key, r.address) for r in node.refusals] == [(stranger, "127.0.0.1")]
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused CURVE" in r.message]
    assert len(warn) == 1 and stranger in warn[0] and "127.0.0.1" in warn[0]
    assert f"edge-keys allow CLIENT.key --allow-dir {keys['allow']}" in warn[0]

    bad_watch.poll(0.5)
    f = bad_watch.last_failure
    assert f is not None and f.kind == "refused"
    assert f"refused our key {stranger}" in f.message and str(keys["stranger"]["public"]) in f.message
    assert "not receiving from it" in f.message


def test_allow_list_change_takes_effect_without_restart(keys, node, contexts, caplog):
    xpub, ep = node.bind(zmq.XPUB)
    bad, watch = client(contexts(), zmq.SUB, keys, "stranger", ep)
    watch.poll(2.0)
    assert watch.failures["refused"] == 1
    allow_key(keys["stranger"]["public"], keys["allow"])
    # libzmq does not re-dial after a ZAP refusal: the client re-dials (edge-alerts does after 1 s)
    bad.disconnect(ep)
    bad.connect(ep)
    assert watch.wait(2.0), "the newly allowed key was not admitted"
    assert xpub.poll(2000) and xpub.recv() == b"\x01"
    xpub.send_multipart(encode_alert(an_alert()))
    assert bad.poll(2000)
    assert any("2 key(s): mes, stranger" in r.getMessage() for r in caplog.records)


def test_refusal_log_is_rate_limited(keys, contexts, caplog):
    now = [0.0]
    caplog.set_level(logging.WARNING, logger="edge.security")
    with CurveAuthority(contexts(), keys["allow"], clock=lambda: now[0], log_interval_s=30, max_lines=3) as a:
        for _ in range(5):
            a._refuse("KEY-A", "10.0.0.9", "key not in the allow-list")
        for k in ("B", "C", "D", "E"):
            a._refuse(f"KEY-{k}", "10.0.0.9", "key not in the allow-list")
        now[0] = 31.0
        a._refuse("KEY-A", "10.0.0.9", "key not in the allow-list")
    lines = [r.getMessage() for r in caplog.records]
    assert a.refused == 10 and a.refused_keys["KEY-A"] == 6
    assert sum("KEY-A" in m for m in lines) == 2 and "4 more refusal(s) of it" in lines[-1]
    assert not any("KEY-D" in m or "KEY-E" in m for m in lines), "max_lines per interval exceeded"
    assert any("2 further CURVE refusal line(s) suppressed" in m for m in lines)


def test_forged_node_is_not_believed(keys, contexts):
    """An impostor at the address the subscriber trusts, with its own keypair, publishing
    well-formed alerts: the subscriber receives none and says why."""
    ctx = contexts()
    impostor = ctx.socket(zmq.PUB)   # no authority: it would admit anyone; the client must refuse it
    impostor.linger = 0
    forged = load_secret(keys["impostor"]["secret"])
    impostor.curve_server, impostor.curve_secretkey, impostor.curve_publickey = True, forged.secret, forged.public
    ep = f"tcp://127.0.0.1:{impostor.bind_to_random_port('tcp://127.0.0.1')}"
    sub, watch = client(contexts(), zmq.SUB, keys, "mes", ep, server="node")
    publish_for(impostor, QUIET_S)
    assert drain(sub) == [], "a forged alert from an impostor node was received"
    watch.poll(0.2)
    f = watch.last_failure
    expected = load_public(keys["node"]["public"]).decode()
    assert f is not None and f.kind == "wrong_server_key"
    assert f"does not hold the key {expected}" in f.message and "not receiving from it" in f.message


def test_plaintext_subscriber_receives_nothing(keys, node, contexts):
    xpub, ep = node.bind(zmq.XPUB)
    server_watch = HandshakeWatch(xpub, log_interval_s=0)
    assert server_watch.role == "server"
    plain, watch = client(contexts(), zmq.SUB, keys, None, ep)
    publish_for(xpub, QUIET_S / 2)
    assert drain(plain) == [] and not xpub.poll(0)
    watch.poll(0.2)
    server_watch.poll(0.2)
    # Whichever side reads the other's greeting first sees the mechanism mismatch and hangs up;
    # the other side sees only the hang-up (and the client, if it was the one, re-dials).
    assert watch.failures and set(watch.failures) <= {"not_curve", "failed"}
    assert "--curve-secret and --curve-server-key" in watch.last_failure.message
    assert server_watch.failures and set(server_watch.failures) <= {"client_not_curve", "client_dropped"}
    server_watch.close()


def test_curve_subscriber_against_insecure_node_says_so(keys, contexts):
    ctx = contexts()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    ep = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    sub, watch = client(contexts(), zmq.SUB, keys, "mes", ep)
    publish_for(pub, 0.5)
    assert drain(sub) == []
    watch.poll(0.2)
    assert {"not_curve", "wrong_server_key"} & set(watch.failures)


# -- replay channel: ROUTER server, DEALER clients ----------------------------------------
def test_router_dealer_request_reply(keys, node, contexts):
    router, ep = node.bind(zmq.ROUTER)
    ok, ok_watch = client(contexts(), zmq.DEALER, keys, "mes", ep)
    bad, _ = client(contexts(), zmq.DEALER, keys, "stranger", ep)
    ok.send(msgpack.packb({"replay_from": 5}))
    bad.send(msgpack.packb({"replay_from": 0}))
    assert router.poll(3000)
    ident, body = router.recv_multipart(copy=False)
    assert msgpack.unpackb(body.bytes) == {"replay_from": 5} and client_name(body) == "mes"
    router.send_multipart([ident.bytes, b"alerts 5.."])
    assert ok.poll(2000) and ok.recv() == b"alerts 5.."
    assert not router.poll(int(QUIET_S * 500)), "a request from an unknown key reached the ROUTER"
    assert not bad.poll(0)
    assert eventually(lambda: node.authority.refused >= 1)


# -- frame channel between hosts: PULL server, PUSH clients --------------------------------
def test_push_pull_frames_with_curve(keys, node, contexts):
    pull, ep = node.bind(zmq.PULL)
    camera_host, _ = client(contexts(), zmq.PUSH, keys, "mes", ep)
    rogue, _ = client(contexts(), zmq.PUSH, keys, "stranger", ep)
    frame = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    header = {"kind": "frame", "camera": "cam0", "seq": 7}
    camera_host.send_multipart(wire.pack(header, frame), copy=False)
    for _ in range(5):
        try:
            rogue.send_multipart(wire.pack({**header, "seq": 666}, frame), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
    assert pull.poll(3000)
    got_header, (got,) = wire.unpack(pull.recv_multipart())
    assert got_header["seq"] == 7 and np.array_equal(got, frame)
    assert not pull.poll(int(QUIET_S * 500)), "frames from an unknown pusher arrived"
    assert eventually(lambda: node.authority.refused >= 1)


def test_plain_local_sockets_in_the_same_context_are_untouched(node):
    """Local stages talk NULL over ipc/tcp in the node's context: the authority must not see them."""
    pull = node.ctx.socket(zmq.PULL)
    push = node.ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.linger = 0
    push.connect(f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}")
    push.send(b"header")
    assert pull.poll(2000) and pull.recv() == b"header"
    assert node.authority.refused == 0


# -- guards -------------------------------------------------------------------------------
def test_secure_server_refuses_unsafe_wiring(keys, node, contexts, caplog):
    other = contexts().socket(zmq.PUB)
    with pytest.raises(SecurityError, match="another zmq.Context"):
        secure_server(other, keys["node"]["secret"], authority=node.authority)
    bound = node.ctx.socket(zmq.PUB)
    bound.bind_to_random_port("tcp://127.0.0.1")
    with pytest.raises(SecurityError, match="before bind"):
        secure_server(bound, keys["node"]["secret"], authority=node.authority)
    connected = contexts().socket(zmq.SUB)
    connected.connect("tcp://127.0.0.1:1")
    with pytest.raises(SecurityError, match="before connect"):
        secure_client(connected, keys["mes"]["secret"], keys["node"]["public"])
    with pytest.raises(SecurityError, match="ZAP handler"):
        CurveAuthority(node.ctx, keys["allow"])
    for s in (other, bound, connected):
        s.close(linger=0)
    still_open, _ = node.bind(zmq.PUB)
    node.authority.close()
    assert any("would admit any client key" in r.getMessage() for r in caplog.records)


def test_allow_dir_checks(tmp_path, contexts):
    with pytest.raises(SecurityError, match="does not exist.*edge-keys allow"):
        CurveAuthority(contexts(), tmp_path / "nope")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(SecurityError, match="writable by every user.*chmod 755"):
        CurveAuthority(contexts(), open_dir)


def test_explain_covers_every_failure_event():
    assert explain_handshake_failure(zmq.EVENT_CONNECTED, 0, "tcp://x:1", role="client") is None
    assert HANDSHAKE_EVENTS & zmq.EVENT_HANDSHAKE_FAILED_AUTH
    f = explain_handshake_failure(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC,
                                  "tcp://0.0.0.0:5560", role="server")
    assert f.kind == "client_wrong_server_key"


# -- options and --insecure ---------------------------------------------------------------
def test_curve_config_checks(keys, caplog):
    import argparse
    p = argparse.ArgumentParser()
    add_curve_arguments(p, server=True, client=True)
    a = p.parse_args(["--curve-secret", str(keys["node"]["secret"]), "--curve-allow", str(keys["allow"])])
    cfg = CurveConfig.from_args(a)
    assert cfg.check(server=True) is True
    with pytest.raises(SecurityError, match="missing --curve-server-key"):
        cfg.check(server=True, client=True)
    with pytest.raises(SecurityError, match="missing --curve-secret, --curve-allow.*--insecure"):
        CurveConfig().check(server=True)
    with pytest.raises(SecurityError, match="contradict"):
        CurveConfig(secret="x", insecure=True).check(server=True)
    with pytest.raises(SecurityError, match="--curve-allow is not used here"):
        CurveConfig(secret=str(keys["mes"]["secret"]), server_key=str(keys["node"]["public"]),
                    allow_dir="d").check(client=True)
    with pytest.raises(SecurityError, match="holds only a public key"):   # files are loaded by check()
        CurveConfig(secret=str(keys["node"]["public"]), allow_dir=str(keys["allow"])).check(server=True)
    with pytest.raises(SecurityError, match="holds a SECRET key"):
        CurveConfig(secret=str(keys["mes"]["secret"]), server_key=str(keys["node"]["secret"])).check(client=True)
    assert CurveConfig(insecure=True).check(server=True) is False
    msg = insecure_warning(logging.getLogger("edge.security"), "the alert channel tcp://0.0.0.0:5560")
    assert "INSECURE" in msg and "forged" in msg
    assert any(r.levelno == logging.WARNING and "INSECURE" in r.getMessage() for r in caplog.records)


# -- edge-keys ----------------------------------------------------------------------------
def test_edge_keys_cli_end_to_end(tmp_path, capsys):
    d, allow = tmp_path / "keys", tmp_path / "allowed"
    assert keys_main(["generate", "mes-gateway", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    key = load_public(d / "mes-gateway.key").decode()
    assert f"public key: {key}" in out and "edge-keys allow mes-gateway.key --allow-dir" in out
    assert stat.S_IMODE((d / "mes-gateway.key_secret").stat().st_mode) == 0o600

    assert keys_main(["show", str(d / "mes-gateway.key")]) == 0
    assert capsys.readouterr().out.strip() == key
    assert keys_main(["allow", str(d / "mes-gateway.key"), "--allow-dir", str(allow)]) == 0
    assert f"allowed {key}" in capsys.readouterr().out
    assert read_allow_list(allow) == {key.encode(): "mes-gateway"}
    assert keys_main(["allow", str(d / "mes-gateway.key"), "--allow-dir", str(allow), "--name", "again"]) == 0
    assert "already allowed" in capsys.readouterr().out and not (allow / "again.key").exists()
    assert keys_main(["show", str(allow)]) == 0
    assert capsys.readouterr().out == f"mes-gateway\t{key}\n"

    assert keys_main(["allow", str(d / "mes-gateway.key_secret"), "--allow-dir", str(allow)]) == 2
    assert "holds a SECRET key" in capsys.readouterr().err
    assert keys_main(["generate", "mes-gateway", "--dir", str(d)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert keys_main(["allow", str(d / "mes-gateway.key"), "--allow-dir", str(allow), "--name", "../x"]) == 2
    assert "key name '../x'" in capsys.readouterr().err
    other_pub, _ = generate_keypair(tmp_path / "other", "mes-gateway")
    assert keys_main(["allow", str(other_pub), "--allow-dir", str(allow)]) == 2
    assert "already holds another key" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        keys_main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--curve-secret FILE", "--curve-server-key FILE", "--curve-allow DIR", "--insecure"):
        assert flag in help_text
