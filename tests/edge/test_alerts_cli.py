"""edge-alerts (edge/alerts_cli.py) against real ZeroMQ sockets on loopback and real SQLite.

The test publishers are XPUB sockets: an XPUB is a PUB that also hands us the subscriptions
it receives, so a test waits until the subscriber's filter reached the publisher instead of
sleeping through ZeroMQ's slow-joiner window, and no alert is lost to it.
"""
import json
import logging
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from edge.alerts import MAX_ALERT_BYTES, AlertError, decode_alert, decode_alert_body, encode_alert, make_alert
from edge.alerts_cli import (MAXMSGSIZE, AlertStore, AlertSubscriber, RateLimitedLog, StoreWriteError,
                             alert_to_json,
                             format_alert, main, parse_connect, subscription_prefixes, thumbnail_name)
from edge.journal import AlertJournal
from edge.replay import ReplayServer

pytestmark = pytest.mark.timeout(30)

JPEG = bytes(cv2.imencode(".jpg", np.full((16, 24, 3), 128, np.uint8))[1])


def alert(node="line1", seq=0, camera="cam0", frame=None, verdict="NotOK", score=0.9, thumb=None, **kw):
    if verdict == "NotDecidable":
        score = kw.pop("score_override", None)
    fields = dict(node=node, alert_seq=seq, camera=camera, frame_seq=100 + seq if frame is None else frame,
                  capture_wall=1_700_000_000.25 + seq, published_wall=1_700_000_000.26 + seq, latency_ms=12.5,
                  verdict=verdict, score=score, normalised_score=None if score is None else 0.7, threshold=0.5,
                  model_version="hybrid-abc123", regions=[{"box": [1, 2, 3, 4], "area": 9, "peak": 0.95}],
                  reason="camera blind" if verdict == "NotDecidable" else None, thumbnail_jpeg=thumb)
    fields.update(kw)
    return make_alert(**fields)


class Node:
    """A test edge node: an XPUB bound to a random loopback port."""

    def __init__(self, ctx):
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"

    def wait_subscribed(self, n=1, timeout=5.0) -> list[bytes]:
        """The next ``n`` subscribe messages (b"\\x01" + prefix)."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n:
            assert self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))), f"subscriptions so far: {got}"
            msg = self.sock.recv()
            if msg[:1] == b"\x01":
                got.append(msg[1:])
        return got

    def send(self, a: dict):
        self.sock.send_multipart(encode_alert(a))

    def send_frames(self, frames):
        self.sock.send_multipart(frames)


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def node(ctx):
    return Node(ctx)


def recv_n(sub, n, timeout=5.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        a = sub.recv(timeout=0.2)
        if a is not None:
            got.append(a)
    return got


def publish_when_subscribed(node, items, n_subscriptions=1, delay=0.0):
    """Background publisher for main(): waits for the subscription, then sends ``items``
    (alert dicts, or raw frame lists)."""
    def run():
        node.wait_subscribed(n_subscriptions)
        for item in items:
            if delay:
                time.sleep(delay)
            node.send(item) if isinstance(item, dict) else node.send_frames(item)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# -- AlertSubscriber --------------------------------------------------------------------------
def test_subscriber_receives_alerts_and_counts(node):
    with AlertSubscriber([node.endpoint]) as sub:
        assert node.wait_subscribed() == [b""]
        assert sub.wait_connected(5)
        for i in range(3):
            node.send(alert(seq=i, verdict="OK" if i == 1 else "NotOK", score=0.1 if i == 1 else 0.9))
        got = recv_n(sub, 3)
        assert [a["alert_seq"] for a in got] == [0, 1, 2]
        assert sub.recv(timeout=0.05) is None
        assert sub.counters["received"] == 3 and sub.counters["malformed"] == 0
        assert sub.by_verdict == {"NotOK": 2, "OK": 1} and sub.by_camera == {"cam0": 3}
        assert sub.by_node == {"line1": 3}


def test_filters_become_topic_prefixes_and_the_camera_is_matched_exactly(node):
    assert subscription_prefixes() == [b""]
    assert subscription_prefixes(verdicts=["NotOK"]) == [b"NotOK/"]
    assert sorted(subscription_prefixes(cameras=["cam0"])) == [b"NotDecidable/cam0", b"NotOK/cam0", b"OK/cam0"]
    with pytest.raises(ValueError):
        subscription_prefixes(verdicts=["NG"])
    with AlertSubscriber([node.endpoint], cameras=["cam0"], verdicts=["NotOK", "NotDecidable"]) as sub:
        assert sorted(node.wait_subscribed(2)) == [b"NotDecidable/cam0", b"NotOK/cam0"]
        node.send(alert(seq=0, verdict="OK", score=0.1))          # not sent by the PUB at all
        node.send(alert(seq=1, camera="cam1"))                    # not sent either
        node.send(alert(seq=2, camera="cam01"))                   # prefix matches, camera does not
        node.send(alert(seq=3))
        node.send(alert(seq=4, verdict="NotDecidable"))
        got = recv_n(sub, 2)
        assert [(a["alert_seq"], a["verdict"]) for a in got] == [(3, "NotOK"), (4, "NotDecidable")]
        assert sub.recv(timeout=0.1) is None
        assert sub.counters["filtered"] == 1 and sub.counters["received"] == 2


def test_two_nodes_at_once(ctx):
    a, b = Node(ctx), Node(ctx)
    with AlertSubscriber([a.endpoint, b.endpoint]) as sub:
        a.wait_subscribed()
        b.wait_subscribed()
        assert sub.wait_connected(5) and sub.connected == {a.endpoint, b.endpoint}
        for i in range(3):
            a.send(alert(node="line1", seq=i))
            b.send(alert(node="line2", seq=i, camera="top"))
        got = recv_n(sub, 6)
        assert sorted((x["node"], x["alert_seq"]) for x in got) == \
            [("line1", 0), ("line1", 1), ("line1", 2), ("line2", 0), ("line2", 1), ("line2", 2)]
        assert sub.by_node == {"line1": 3, "line2": 3} and sub.by_camera == {"cam0": 3, "top": 3}


def test_malformed_messages_are_counted_and_the_subscriber_keeps_going(node, caplog):
    good = alert(seq=7)
    topic, body = encode_alert(good)
    wrong_version = msgpack.packb(dict(good, v=2), use_bin_type=True)
    bad = [
        [b"garbage \x00\xff bytes"],                                  # one frame
        [topic, body, b"extra"],                                      # three frames
        [topic, body, b"1", b"2", b"3", b"4"],                        # many frames
        [topic, b"\xc1\xc1 not msgpack"],
        [topic, wrong_version],
        [b"OK/cam0", body],                                           # topic and body disagree
        [topic, msgpack.packb({"schema": "something-else"})],
        [topic, b"\x00" * (MAX_ALERT_BYTES + 10)],                    # oversized, but below MAXMSGSIZE
    ]
    with caplog.at_level(logging.WARNING, logger="edge.alerts"):
        with AlertSubscriber([node.endpoint], log_interval_s=60) as sub:
            node.wait_subscribed()
            for frames in bad:
                node.send_frames(frames)
            node.send(good)
            got = recv_n(sub, 1)
            assert got and got[0]["alert_seq"] == 7
            assert sub.counters["malformed"] == len(bad)
            assert sub.counters["received"] == 1
            assert "version" in sub.last_error or "exceeds" in sub.last_error
    # rate-limited: one log line for eight bad messages within the interval
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


def test_a_frame_above_maxmsgsize_drops_the_connection_and_we_redial(node):
    # verbose: pass on a subscription a second pipe makes, too (the old pipe may still be there)
    node.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    with AlertSubscriber([node.endpoint]) as sub:
        node.wait_subscribed()
        assert sub.wait_connected(5)
        node.send_frames([b"NotOK/cam0", b"\x00" * (MAXMSGSIZE + 1)])
        # libzmq closes the session for good after this protocol error; the subscriber must
        # notice (monitor) and re-dial, which the node sees as a fresh subscription
        deadline = time.monotonic() + 5
        resubscribed = False
        while not resubscribed and time.monotonic() < deadline:
            assert sub.recv(timeout=0.05) is None
            while node.sock.poll(0):
                resubscribed |= node.sock.recv() == b"\x01"
        assert resubscribed
        node.send(alert(seq=1))
        got = recv_n(sub, 1)
        assert got and got[0]["alert_seq"] == 1
        assert sub.counters["disconnected"] >= 1 and sub.counters["redialed"] >= 1


def test_a_restarted_node_is_reconnected(ctx):
    first = Node(ctx)
    with AlertSubscriber([first.endpoint]) as sub:
        first.wait_subscribed()
        first.send(alert(seq=0))
        assert recv_n(sub, 1)
        first.sock.close(linger=0)                      # the edge node goes away...
        deadline = time.monotonic() + 5
        while sub.connected and time.monotonic() < deadline:
            sub.recv(timeout=0.05)
        assert not sub.connected and sub.counters["disconnected"] == 1
        again = ctx.socket(zmq.XPUB)                     # ...and comes back on the same port
        again.setsockopt(zmq.LINGER, 0)
        again.bind(first.endpoint)
        first.sock = again
        deadline = time.monotonic() + 5
        while not again.poll(0) and time.monotonic() < deadline:
            sub.recv(timeout=0.05)
        first.wait_subscribed()
        first.send(alert(seq=0, frame=555))                 # alert_seq restarts with the node
        got = recv_n(sub, 1)
        assert got and got[0]["frame_seq"] == 555 and sub.connected == {first.endpoint}


def test_bad_endpoints_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="tcp://host:5560"):
        AlertSubscriber(["tcp://*:5560"])
    with pytest.raises(ValueError):
        AlertSubscriber([])


def test_rate_limited_log_reports_what_it_suppressed(caplog):
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("edge.alerts.test"), interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="edge.alerts.test"):
        assert rl("bad %d", 1)
        assert not rl("bad %d", 2) and not rl("bad %d", 3)
        now[0] = 11.0
        assert rl("bad %d", 4)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["bad 1", "bad 4 (2 similar suppressed in the last 10 s)"]


# -- store, thumbnails, formatting --------------------------------------------------------------
def test_store_writes_one_row_per_alert_and_ignores_duplicates(tmp_path):
    db = tmp_path / "alerts.sqlite"
    with AlertStore(db) as store:
        assert store.add(alert(seq=0, thumb=JPEG), received_wall=5.0)
        assert store.add(alert(seq=1, verdict="NotDecidable"))
        assert not store.add(alert(seq=0, thumb=JPEG))            # the same message twice: stored once
        assert store.duplicates == 1 and store.rows_written == 2
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute("SELECT * FROM alerts ORDER BY alert_seq").fetchall()
        assert con.execute("PRAGMA user_version").fetchone()[0] == 4
    assert len(rows) == 2
    r0, r1 = dict(rows[0]), dict(rows[1])
    assert r0["thumbnail_jpeg"] == JPEG and r0["frame_seq"] == 100 and r0["received_wall"] == 5.0
    assert r0["verdict"] == "NotOK" and r0["score"] == 0.9 and r0["threshold"] == 0.5
    assert json.loads(r0["regions_json"]) == [{"box": [1, 2, 3, 4], "area": 9, "peak": 0.95}] and r0["n_regions"] == 1
    assert r0["is_simulated"] == 0 and r0["schema_v"] == 1 and r0["model_version"] == "hybrid-abc123"
    assert r0["journal_id"] is None                                # a node without a journal
    assert r1["score"] is None and r1["reason"] == "camera blind" and r1["thumbnail_jpeg"] is None
    with AlertStore(db) as store:                                  # reopened: appends
        assert store.add(alert(seq=2))
        # the node restarted: alert_seq 0 again, a later publication -> a new row, not a duplicate
        assert store.add(alert(seq=0, frame=7, published_wall=1_800_000_000.0))
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM alerts").fetchone()[0] == 4
        assert con.execute("SELECT count(*) FROM alerts WHERE node = 'line1' AND alert_seq = 0").fetchone()[0] == 2
        with pytest.raises(sqlite3.IntegrityError):               # the constraint is in the file
            con.execute("INSERT INTO alerts SELECT * FROM alerts WHERE alert_seq = 2")


def test_store_tells_a_duplicate_from_a_reused_number_and_from_a_failed_write(tmp_path, caplog):
    db = tmp_path / "alerts.sqlite"
    jid = "j" * 32
    with AlertStore(db) as store:
        for i in range(50):                     # NaN is NULL to SQLite: NOT NULL would refuse it, OR IGNORE hid it
            bad = alert(seq=i, journal_id=jid)
            bad["threshold"] = float("nan")         # (decode_alert refuses it; a library caller may not)
            with pytest.raises(StoreWriteError, match="'threshold' is nan"):
                store.add(bad)
        assert store.write_errors == 50 and store.duplicates == 0 and store.rows_written == 0
        with pytest.raises(StoreWriteError, match="lacks|KeyError"):
            store.add({k: v for k, v in alert(seq=60).items() if k != "model_version"})
        assert store.add(alert(seq=1, journal_id=jid))
        assert not store.add(alert(seq=1, journal_id=jid))                 # the same message twice
        with caplog.at_level(logging.ERROR, logger="edge.alerts"):
            assert store.add(alert(seq=1, frame=7, journal_id=jid, published_wall=1.8e9))   # a reused number
        assert "reused the number" in caplog.text
        assert (store.duplicates, store.conflicts, store.rows_written, store.write_errors) == (1, 1, 1, 51)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM alerts").fetchone()[0] == 1
        assert con.execute("SELECT frame_seq FROM conflicts").fetchall() == [(7,)]   # kept, not thrown away


def test_main_counts_and_logs_failed_writes_and_exits_3(node, tmp_path, capsys, caplog):
    db = tmp_path / "a.sqlite"
    AlertStore(db).close()
    with sqlite3.connect(db) as con:   # a rule the MES added to the table: rows of cam9 are refused
        con.execute("CREATE TRIGGER refuse BEFORE INSERT ON alerts WHEN NEW.camera = 'cam9' "
                    "BEGIN SELECT RAISE(ABORT, 'cam9 is not on this line'); END")
    items = [alert(seq=i, camera="cam9", journal_id="j" * 32) for i in range(3)] + [alert(seq=3, journal_id="j" * 32)]
    t = publish_when_subscribed(node, items)
    with caplog.at_level(logging.ERROR, logger="edge.alerts"):
        rc = main(["--insecure", "--no-replay", "--connect", node.endpoint, "--db", str(db), "--count", "4",
                   "--timeout", "10", "--summary", "-q"])
    t.join(1)
    out = capsys.readouterr().out
    assert rc == 3, out
    assert "db failed writes: 3" in out and "db duplicates ignored: 0" in out and "db rows written: 1" in out
    assert sum("NOT stored" in r.getMessage() for r in caplog.records) == 3     # each one, not rate-limited


def test_a_live_copy_with_other_content_is_a_reused_number_not_a_duplicate(node):
    jid = "j" * 32
    with AlertSubscriber([node.endpoint], replay=False) as sub:
        node.wait_subscribed()
        assert sub.wait_connected(5)
        for a in (alert(seq=1, journal_id=jid), alert(seq=2, journal_id=jid),
                  alert(seq=1, frame=7, journal_id=jid, published_wall=1.8e9),   # another part, same number
                  alert(seq=2, journal_id=jid)):                                 # a true duplicate
            node.send(a)
        got = recv_n(sub, 3)
        assert [(a["alert_seq"], a["frame_seq"]) for a in got] == [(1, 101), (2, 102), (1, 7)]
        assert sub.recv(timeout=0.2) is None
        assert sub.counters["seq_conflicts"] == 1 and sub.counters["duplicates"] == 1


def test_thumbnail_names_are_safe():
    assert thumbnail_name(alert(node="line1", camera="cam0", frame=42)) == "line1_cam0_42.jpg"
    assert thumbnail_name(alert(node="../etc", camera="a/b c", frame=1)) == "_._etc_a_b_c_1.jpg"


def test_format_alert_and_json_line():
    line = format_alert(alert(seq=3, frame=1234, score=0.8125))
    for part in ("node=line1", "cam=cam0", "frame=1234", "NotOK", "score=0.8125>0.5", "regions=1", "latency=12.5ms"):
        assert part in line
    assert line.startswith("2023-11-14T")
    assert "score=-/0.5" in format_alert(alert(verdict="NotDecidable"))
    assert "score=0.1<=0.5" in format_alert(alert(verdict="OK", score=0.1))
    d = json.loads(alert_to_json(alert(thumb=JPEG, verdict="NotDecidable", score_override=float("nan"))))
    assert "thumbnail_jpeg" not in d and d["thumbnail_jpeg_bytes"] == len(JPEG) and d["score"] is None
    assert d["part_id"] is None and "part=" not in line


def test_part_id_is_optional_in_schema_version_1_and_shown_where_known():
    a = alert(seq=4, part_id="cell0004.png")
    frames = encode_alert(a)
    assert decode_alert(frames)["part_id"] == "cell0004.png" and a["v"] == 1     # an added field: same version
    assert "frame=104 part='cell0004.png' NotOK" in format_alert(a)
    assert json.loads(alert_to_json(a))["part_id"] == "cell0004.png"
    # an older node's alert has no part_id key at all: still valid, and the JSON line says null
    old = {k: v for k, v in alert(seq=5).items() if k not in ("part_id", "journal_id")}
    assert "part_id" not in decode_alert_body(msgpack.packb(old, use_bin_type=True))
    assert json.loads(alert_to_json(old))["part_id"] is None
    # an older reader (its OPTIONAL knew journal_id only) checks the required keys and ignores the rest
    import edge.alerts as schema
    saved = dict(schema.OPTIONAL)
    try:
        schema.OPTIONAL.pop("part_id")
        assert decode_alert(frames)["verdict"] == "NotOK"
    finally:
        schema.OPTIONAL.clear()
        schema.OPTIONAL.update(saved)
    with pytest.raises(AlertError, match="part_id"):
        decode_alert_body(msgpack.packb({**a, "part_id": 4}, use_bin_type=True))


def test_store_keeps_the_part_id_and_upgrades_a_version_3_file_in_place(tmp_path):
    db = tmp_path / "v3.sqlite"
    jid = "a" * 32
    with AlertStore(db) as store:    # a version 3 file: today's, less the part_id column
        store.add(alert(seq=1, journal_id=jid))
    con = sqlite3.connect(db)
    con.execute("DROP INDEX alerts_part")
    for table in ("alerts", "conflicts"):
        con.execute(f"ALTER TABLE {table} DROP COLUMN part_id")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    with AlertStore(db) as store:
        assert store.add(alert(seq=3, journal_id=jid, part_id="cell0003.png"))
        assert store.add({**alert(seq=3, journal_id=jid, part_id="cell0003.png"), "published_wall": 5.0})  # conflict
        assert store.last_seq("line1", jid) == 3
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 4
        assert con.execute("SELECT alert_seq, part_id FROM alerts ORDER BY alert_seq").fetchall() == [
            (1, None), (3, "cell0003.png")]
        assert con.execute("SELECT part_id FROM conflicts WHERE alert_seq = 3").fetchall() == [("cell0003.png",)]
        # the MES finds a part's verdict by its id (an index serves it)
        assert con.execute("SELECT verdict FROM alerts WHERE part_id = 'cell0003.png'").fetchall() == [("NotOK",)]
        plan = " ".join(r[-1] for r in con.execute("EXPLAIN QUERY PLAN SELECT verdict FROM alerts "
                                                      "WHERE part_id = 'cell0003.png'"))
        assert "alerts_part" in plan, plan


# -- the command line -----------------------------------------------------------------------------
def test_main_prints_lines_and_exits_after_count(node, capsys):
    t = publish_when_subscribed(node, [alert(seq=i) for i in range(3)])
    assert main(["--insecure", "--connect", node.endpoint, "--count", "3", "--timeout", "10", "--summary"]) == 0
    t.join(1)
    out = capsys.readouterr().out.splitlines()
    alerts = [x for x in out if "node=line1" in x]
    assert len(alerts) == 3 and all("cam=cam0" in x and "NotOK" in x for x in alerts)
    assert [x for x in alerts if "frame=101" in x]
    assert any(x.startswith("edge-alerts summary: 3 alerts") for x in out)
    assert any("per verdict: NotOK=3" in x for x in out)


def test_main_json_db_thumbnails_and_filters(node, tmp_path, capsys):
    db, thumbs = tmp_path / "a.sqlite", tmp_path / "thumbs"
    items = [alert(seq=0, thumb=JPEG), alert(seq=1, verdict="OK", score=0.1, thumb=JPEG),
             alert(seq=2, camera="cam1", thumb=JPEG), [b"NotOK/cam0 but garbage"],
             alert(seq=3, verdict="NotDecidable")]
    t = publish_when_subscribed(node, items, n_subscriptions=2)
    rc = main(["--insecure", "--connect", node.endpoint, "--camera", "cam0", "--verdict", "NotOK", "--verdict", "NotDecidable",
               "--json", "--db", str(db), "--thumbnails", str(thumbs), "--count", "2", "--timeout", "10",
               "--summary"])
    t.join(1)
    assert rc == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]          # stdout: JSON lines only
    assert [(x["alert_seq"], x["verdict"]) for x in lines] == [(0, "NotOK"), (3, "NotDecidable")]
    assert lines[0]["thumbnail_jpeg_bytes"] == len(JPEG) and "thumbnail_jpeg" not in lines[0]
    assert lines[0]["thumbnail_path"] == str(thumbs / "line1_cam0_100.jpg")
    assert lines[1]["thumbnail_jpeg_bytes"] is None and "thumbnail_path" not in lines[1]
    assert "edge-alerts summary: 2 alerts" in captured.err and "1 malformed" in captured.err
    assert sorted(p.name for p in thumbs.iterdir()) == ["line1_cam0_100.jpg"]
    img = cv2.imread(str(thumbs / "line1_cam0_100.jpg"))
    assert img is not None and img.shape == (16, 24, 3)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT alert_seq, verdict, length(thumbnail_jpeg) FROM alerts ORDER BY alert_seq").fetchall()
    assert rows == [(0, "NotOK", len(JPEG)), (3, "NotDecidable", None)]


def test_main_timeout_exit_status(node, capsys):
    t0 = time.monotonic()
    assert main(["--insecure", "--connect", node.endpoint, "--timeout", "0.3"]) == 0
    assert main(["--insecure", "--connect", node.endpoint, "--timeout", "0.3", "--count", "1"]) == 1
    assert time.monotonic() - t0 < 3


def test_main_rejects_bad_options(capsys):
    for argv in (["--insecure", "--connect", "tcp://*:5560"], ["--connect", "tcp://127.0.0.1:1", "--count", "0"],
                 ["--connect", "tcp://127.0.0.1:1", "--verdict", "NG"], [],
                 ["--connect", "tcp://127.0.0.1:1"]):          # neither keys nor --insecure
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "connect takes a host name" in err and "--insecure" in err and "missing --curve-secret" in err


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "edge-alerts --connect tcp://" in out and "--db alerts.sqlite" in out


def test_sigterm_exits_cleanly_with_the_summary(node):
    p = subprocess.Popen([sys.executable, "-m", "edge.alerts_cli", "--insecure", "--connect", node.endpoint, "--summary"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        node.wait_subscribed(timeout=10)
        node.send(alert(seq=0))
        node.send_frames([b"junk"])
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "node=line1" in out
    assert "edge-alerts summary: 1 alerts" in out and "1 malformed" in out and "NotOK=1" in out


def test_subscriber_and_metrics_import_without_torch_or_the_training_packages():
    code = ("import sys, edge.alerts_cli, edge.metrics\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer', 'calibration', 'deploy')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- exactly once: journaled nodes, gaps, replay -----------------------------------------------------
class JournaledNode:
    """A test edge node with a journal, as the alert stage has one: an XPUB for the alerts and a
    replay ROUTER (edge.replay.ReplayServer) on a real AlertJournal. A thread owns the sockets
    and the journal (each belongs to one thread); the test talks to it through ``call``."""

    def __init__(self, tmp_path, name="journal.sqlite", node="line1", ports=None, **journal_kw):
        self.cmds: queue.Queue = queue.Queue()
        self.serving = threading.Event()      # cleared: the replay endpoint stops answering
        self.serving.set()
        self.subscriptions = 0
        self._ready = threading.Event()
        self._error = None
        self._args = (tmp_path / name, node, ports, journal_kw)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10) and self._error is None, self._error

    def _run(self):
        path, node, ports, journal_kw = self._args
        ctx = zmq.Context()
        try:
            pub = ctx.socket(zmq.XPUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.XPUB_VERBOSE, 1)        # every subscriber's subscription, not only the first
            if ports:
                pub.bind(f"tcp://127.0.0.1:{ports[0]}")
            else:
                pub.bind("tcp://127.0.0.1:*")
            journal = AlertJournal(path, node, **journal_kw)
            srv = ReplayServer(ctx, f"tcp://127.0.0.1:{ports[1] if ports else '*'}", journal, node)
            self.endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.replay_endpoint = srv.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.ports = (int(self.endpoint.rsplit(":", 1)[1]), int(self.replay_endpoint.rsplit(":", 1)[1]))
            self.connect = f"{self.endpoint},{self.replay_endpoint}"
            self.journal_id, self.node, self.srv = journal.journal_id, node, srv
        except Exception as e:
            self._error = e
            self._ready.set()
            ctx.destroy(linger=0)
            return
        self._ready.set()
        while True:
            while pub.poll(0):
                if pub.recv()[:1] == b"\x01":
                    self.subscriptions += 1
            if self.serving.is_set():
                srv.serve()
            try:
                cmd = self.cmds.get(timeout=0.005)
            except queue.Empty:
                continue
            if cmd is None:
                break
            fn, box, done = cmd
            try:
                box.append(fn(journal, pub))
            except Exception as e:
                box.append(e)
            done.set()
        srv.close()
        journal.close()
        ctx.destroy(linger=0)

    def call(self, fn):
        box, done = [], threading.Event()
        self.cmds.put((fn, box, done))
        assert done.wait(10)
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def publish(self, n=1, send=True, verdict="OK", camera="cam0"):
        """``n`` alerts, journaled; sent only with ``send`` (else: lost on the way)."""
        def run(journal, pub):
            out = []
            for _ in range(n):
                seq = journal.last_seq() + 1
                a = alert(node=self.node, seq=seq, camera=camera, verdict=verdict,
                          score=0.9 if verdict == "NotOK" else 0.1, journal_id=journal.journal_id,
                          published_wall=time.time())   # (the journal's retention goes by age too)
                frames = encode_alert(a)
                journal.append(seq, a["published_wall"], frames[1], camera, verdict)
                if send:
                    pub.send_multipart(frames)
                out.append(seq)
            return out
        return self.call(run)

    def resend(self, seq):
        def run(journal, pub):
            body = journal.since(seq - 1, 1).alerts[0]
            a = msgpack.unpackb(body)
            pub.send_multipart([f"{a['verdict']}/{a['camera']}".encode(), body])
        self.call(run)

    def wait_subscribed(self, n=1, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.subscriptions < n:
            assert time.monotonic() < deadline, f"{self.subscriptions} subscription(s)"
            time.sleep(0.01)

    def stop(self):
        self.cmds.put(None)
        self.thread.join(10)


@pytest.fixture
def jnode(tmp_path):
    n = JournaledNode(tmp_path)
    yield n
    n.stop()


def seqs_of(alerts):
    return [a["alert_seq"] for a in alerts]


def test_parse_connect():
    assert parse_connect("tcp://line1:5560") == ("tcp://line1:5560", "tcp://line1:5561")
    assert parse_connect("tcp://line1:5560,tcp://line1:6000") == ("tcp://line1:5560", "tcp://line1:6000")
    assert parse_connect("tcp://line1:*") == ("tcp://line1:*", None)
    with pytest.raises(ValueError):
        parse_connect(",tcp://x:1")


def test_alerts_lost_on_the_way_are_fetched_and_delivered_in_order(jnode):
    with AlertSubscriber([jnode.connect]) as sub:
        jnode.wait_subscribed()
        assert sub.wait_replay(5)
        jnode.publish(3)                                  # 1..3 arrive
        jnode.publish(3, send=False)                      # 4..6 journaled, lost on the way
        jnode.publish(1)                                  # 7 shows the gap
        got = recv_n(sub, 7)
        assert seqs_of(got) == list(range(1, 8))
        assert all(a["journal_id"] == jnode.journal_id for a in got)
        assert sub.counters["replayed"] >= 3 and sub.counters["received"] == 7
        assert sub.gaps_open == 0 and sub.counters["gaps_lost"] == 0 and sub.counters["gaps_opened"] == 0
        dups = sub.counters["duplicates"]
        jnode.resend(5)                                   # the same alert again: dropped
        jnode.publish(1)
        assert seqs_of(recv_n(sub, 1)) == [8] and sub.recv(timeout=0.1) is None
        assert sub.counters["duplicates"] == dups + 1


def test_a_lost_tail_is_found_by_the_periodic_hello(jnode):
    with AlertSubscriber([jnode.connect], hello_every_s=0.2) as sub:
        jnode.wait_subscribed()
        jnode.publish(1)
        jnode.publish(2, send=False)                      # the last alerts before the line stops
        assert seqs_of(recv_n(sub, 3)) == [1, 2, 3]


def test_where_a_subscriber_starts(jnode):
    jnode.publish(10, send=False)                         # before anyone listens
    with AlertSubscriber([jnode.connect], since_start=True) as sub:
        jnode.wait_subscribed()
        assert seqs_of(recv_n(sub, 10)) == list(range(1, 11)) and sub.counters["replayed"] == 10
        jnode.publish(2)
        assert seqs_of(recv_n(sub, 2)) == [11, 12]
    with AlertSubscriber([jnode.connect]) as sub:        # default: from now on, no history
        jnode.wait_subscribed(2)
        assert sub.wait_replay(5)
        jnode.publish(1)
        assert seqs_of(recv_n(sub, 1)) == [13] and sub.recv(timeout=0.2) is None
    with AlertSubscriber([jnode.connect], replay_from=12) as sub:
        jnode.wait_subscribed(3)
        assert seqs_of(recv_n(sub, 2)) == [12, 13]


def test_what_the_node_has_pruned_is_reported_lost(tmp_path, caplog):
    node = JournaledNode(tmp_path, max_alerts=5, prune_every=1)
    try:
        node.publish(20, send=False)
        with caplog.at_level(logging.WARNING, logger="edge.alerts"):
            with AlertSubscriber([node.connect], replay_from=1) as sub:
                assert seqs_of(recv_n(sub, 5)) == [16, 17, 18, 19, 20]
                assert sub.counters["gaps_lost"] == 15 and sub.gaps_open == 0
        assert any("15 alert(s) of alert_seq 1..15 lost" in r.getMessage() for r in caplog.records)
        with AlertSubscriber([node.connect], since_start=True) as sub:   # "all it still has": nothing lost
            assert seqs_of(recv_n(sub, 5)) == [16, 17, 18, 19, 20] and sub.counters["gaps_lost"] == 0
    finally:
        node.stop()


def test_an_unreachable_replay_opens_a_gap_that_is_filled_later(jnode):
    with AlertSubscriber([jnode.connect], replay_timeout_s=0.3) as sub:
        jnode.wait_subscribed()
        assert sub.wait_replay(5)
        jnode.publish(2)
        assert seqs_of(recv_n(sub, 2)) == [1, 2]
        jnode.serving.clear()                             # the replay endpoint stops answering
        jnode.publish(2, send=False)
        jnode.publish(1)
        t0 = time.monotonic()
        assert seqs_of(recv_n(sub, 1)) == [5]             # the live alert is not held back for long
        assert time.monotonic() - t0 < 2
        assert sub.gaps_open == 2 and sub.counters["gaps_opened"] == 2 and sub.counters["replay_timeouts"] >= 1
        jnode.serving.set()
        assert seqs_of(recv_n(sub, 2, timeout=10)) == [3, 4]   # delivered late, once
        assert sub.gaps_open == 0 and sub.counters["gaps_recovered"] == 2 and sub.counters["gaps_lost"] == 0
        jnode.publish(1)
        assert seqs_of(recv_n(sub, 1)) == [6]


def test_a_node_whose_journal_is_replaced_is_read_from_its_new_start(tmp_path, caplog):
    first = JournaledNode(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edge.alerts"):
        with AlertSubscriber([first.connect], hello_every_s=0.2) as sub:
            first.wait_subscribed()
            first.publish(3)
            assert seqs_of(recv_n(sub, 3)) == [1, 2, 3]
            ports, old_id = first.ports, first.journal_id
            first.stop()
            again = JournaledNode(tmp_path, name="new-journal.sqlite", ports=ports)   # same node, new journal
            try:
                deadline = time.monotonic() + 10                 # the subscriber re-dials (it runs in recv)
                while again.subscriptions < 1 and time.monotonic() < deadline:
                    assert sub.recv(timeout=0.05) is None
                again.publish(2)
                got = recv_n(sub, 2)
                assert seqs_of(got) == [1, 2] and {a["journal_id"] for a in got} == {again.journal_id} != {old_id}
                assert sub.counters["journal_resets"] == 1 and sub.counters["duplicates"] <= 2
                assert sub.recv(timeout=0.3) is None
            finally:
                again.stop()
    assert any("journal" in r.getMessage() and "starts over" in r.getMessage() for r in caplog.records)


def test_a_restarted_subscriber_resumes_from_its_store_exactly_once(jnode, tmp_path):
    db = tmp_path / "alerts.sqlite"
    with AlertStore(db) as store, AlertSubscriber([jnode.connect], resume=store) as sub:
        jnode.wait_subscribed()
        jnode.publish(5)
        for a in recv_n(sub, 5):
            assert store.add(a)
    jnode.publish(5)                                      # nobody listens
    with AlertStore(db) as store, AlertSubscriber([jnode.connect], resume=store) as sub:
        got = recv_n(sub, 5)
        assert seqs_of(got) == [6, 7, 8, 9, 10] and sub.counters["replayed"] == 5
        for a in got:
            assert store.add(a)
        jnode.wait_subscribed(2)
        jnode.publish(1)
        a = recv_n(sub, 1)[0]
        assert a["alert_seq"] == 11 and store.add(a) and sub.recv(timeout=0.2) is None
        assert store.last_seq("line1", jnode.journal_id) == 11
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT alert_seq, journal_id FROM alerts ORDER BY alert_seq").fetchall()
    assert rows == [(i, jnode.journal_id) for i in range(1, 12)]


def test_open_gaps_survive_a_restart_of_the_subscriber(jnode, tmp_path):
    db = tmp_path / "alerts.sqlite"
    with AlertStore(db) as store, AlertSubscriber([jnode.connect], resume=store, replay_timeout_s=0.3) as sub:
        jnode.wait_subscribed()
        assert sub.wait_replay(5)
        jnode.publish(1)
        jnode.serving.clear()
        jnode.publish(2, send=False)
        jnode.publish(1)
        for a in recv_n(sub, 2):                          # 1 and 4; 2..3 missing
            store.add(a)
        assert store.open_gaps("line1", jnode.journal_id) == [(2, 3)]
    jnode.serving.set()
    with AlertStore(db) as store, AlertSubscriber([jnode.connect], resume=store) as sub:
        got = recv_n(sub, 2)
        assert seqs_of(got) == [2, 3] and sub.counters["gaps_recovered"] == 2
        assert store.open_gaps("line1", jnode.journal_id) == [(2, 3)]   # until they are stored
        store.add(got[0])
        assert store.open_gaps("line1", jnode.journal_id) == [(3, 3)]
        store.add(got[1])
        assert store.open_gaps("line1", jnode.journal_id) == []


def test_the_store_keeps_open_gaps_as_ranges(tmp_path):
    jid = "a" * 32
    with AlertStore(tmp_path / "a.sqlite") as store:
        store.add_gap("line1", jid, 5, 9)
        store.add_gap("line1", jid, 10, 12)                            # adjacent: merged
        store.add_gap("line1", jid, 20, 25)
        store.add_gap("line1", "b" * 32, 1, 3)                        # another journal: apart
        assert store.open_gaps("line1", jid) == [(5, 12), (20, 25)]
        assert store.add(alert(seq=7, journal_id=jid))                 # stored: no longer missing
        store.close_gap(jid, 21, 30)                                   # known lost / filtered out
        assert store.open_gaps("line1", jid) == [(5, 6), (8, 12), (20, 20)]
        assert not store.add(alert(seq=7, journal_id=jid))
        assert store.open_gaps("line1", "b" * 32) == [(1, 3)]


def test_with_filters_only_matching_alerts_are_fetched(jnode):
    with AlertSubscriber([jnode.connect], verdicts=["NotOK"]) as sub:
        jnode.wait_subscribed()
        assert sub.wait_replay(5)
        jnode.publish(1, verdict="NotOK")                 # 1
        jnode.publish(2)                                  # 2, 3: OK, not even sent to us
        jnode.publish(1, verdict="NotOK", send=False)     # 4: lost on the way
        jnode.publish(1)                                  # 5
        jnode.publish(1, verdict="NotOK")                 # 6
        assert seqs_of(recv_n(sub, 3)) == [1, 4, 6] and sub.recv(timeout=0.2) is None
        assert sub.counters["gaps_lost"] == 0 and sub.counters["filtered"] == 0


def test_a_garbage_replay_endpoint_is_counted_and_live_alerts_still_flow(node, ctx):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer_garbage():
        while not stop.is_set():
            if router.poll(20):
                ident, _ = router.recv_multipart()
                router.send_multipart([ident, b"\xc1 garbage"])
    t = threading.Thread(target=answer_garbage, daemon=True)
    t.start()
    jid = "f" * 32
    try:
        with AlertSubscriber([f"{node.endpoint},tcp://127.0.0.1:{port}"], replay_timeout_s=0.3) as sub:
            node.wait_subscribed()
            node.send(alert(seq=1, journal_id=jid))
            node.send(alert(seq=3, journal_id=jid))            # 2 is missing; the replay talks nonsense
            assert seqs_of(recv_n(sub, 2)) == [1, 3]
            assert sub.counters["replay_errors"] >= 1 and sub.gaps_open == 1
    finally:
        stop.set()
        t.join(2)


def test_store_version_1_is_upgraded_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE alerts (node TEXT NOT NULL, alert_seq INTEGER NOT NULL, camera TEXT NOT NULL,
            frame_seq INTEGER NOT NULL, capture_wall REAL NOT NULL, published_wall REAL NOT NULL,
            received_wall REAL NOT NULL, latency_ms REAL NOT NULL, verdict TEXT NOT NULL, score REAL,
            normalised_score REAL, threshold REAL NOT NULL, model_version TEXT NOT NULL,
            n_regions INTEGER NOT NULL, regions_json TEXT NOT NULL, reason TEXT, thumbnail_jpeg BLOB,
            is_simulated INTEGER NOT NULL, schema_v INTEGER NOT NULL, UNIQUE (node, alert_seq, published_wall));
        INSERT INTO alerts VALUES ('line1', 1, 'cam0', 1, 1.0, 2.0, 3.0, 1.0, 'OK', 0.1, 0.2, 0.5, 'm', 0, '[]',
            NULL, NULL, 0, 1);
        PRAGMA user_version = 1;""")
    con.close()
    with AlertStore(db) as store:
        assert store.knows_node("line1") and store.last_seq("line1", "j" * 32) is None
        assert store.add(alert(seq=1, journal_id="j" * 32))
        assert not store.add(alert(seq=1, journal_id="j" * 32))
        assert store.last_seq("line1", "j" * 32) == 1
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 4
        assert con.execute("SELECT count(*), count(journal_id) FROM alerts").fetchone() == (2, 1)
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 7")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="version 7"):
        AlertStore(db)


def test_main_replay_options(capsys):
    for argv in (["--connect", "tcp://127.0.0.1:1", "--since-start", "--replay-from", "3"],
                 ["--connect", "tcp://127.0.0.1:1", "--replay-from", "0"],
                 ["--connect", "tcp://127.0.0.1:1", "--no-replay", "--since-start"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_main_db_resumes_after_a_restart(jnode, tmp_path, capsys):
    db = tmp_path / "a.sqlite"
    t = threading.Thread(target=lambda: (jnode.wait_subscribed(), jnode.publish(3)), daemon=True)
    t.start()
    assert main(["--insecure", "--connect", jnode.connect, "--db", str(db), "-q", "--count", "3", "--timeout", "10"]) == 0
    jnode.publish(4)                                      # while edge-alerts is not running
    assert main(["--insecure", "--connect", jnode.connect, "--db", str(db), "-q", "--count", "4", "--timeout", "10",
                 "--summary"]) == 0
    out = capsys.readouterr().out
    assert "edge-alerts summary: 4 alerts" in out and "4 replayed" in out
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT alert_seq FROM alerts ORDER BY alert_seq").fetchall() == [(i,) for i in range(1, 8)]
