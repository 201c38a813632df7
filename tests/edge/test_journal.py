"""The alert journal (edge/journal.py) on real SQLite files, and its replay endpoint
(edge/replay.py) on real ZeroMQ sockets over loopback."""
import sqlite3
import time

import msgpack
import pytest
import zmq

from edge.alerts import decode_alert_body, encode_alert, make_alert
from edge.journal import AlertJournal, JournalEntry, JournalError, default_journal_path
from edge.replay import (MAX_LIMIT, MAX_REQUEST_BYTES, ReplayError, ReplayLink, ReplayServer, default_replay_addr,
                         encode_request, parse_reply, parse_request, replay_request)

pytestmark = pytest.mark.timeout(30)


def body(seq, camera="cam0", verdict="OK", journal_id=None, wall=None):
    a = make_alert(node="line1", alert_seq=seq, camera=camera, frame_seq=seq, capture_wall=1.7e9 + seq,
                   published_wall=wall if wall is not None else 1.7e9 + seq, latency_ms=1.0, verdict=verdict,
                   score=0.9 if verdict == "NotOK" else 0.1, normalised_score=0.5, threshold=0.5,
                   model_version="m", journal_id=journal_id)
    return encode_alert(a)[1]


def fill(j: AlertJournal, n, **kw):
    for _ in range(n):
        seq = j.last_seq() + 1
        b = body(seq, journal_id=j.journal_id, **kw)
        j.append(seq, time.time(), b, kw.get("camera", "cam0"), kw.get("verdict", "OK"))


def seqs(bodies):
    return [decode_alert_body(b)["alert_seq"] for b in bodies]


# -- the journal ---------------------------------------------------------------------------------
def test_append_is_gap_free_and_the_file_is_wal_with_full_sync(tmp_path):
    with AlertJournal(tmp_path / "state" / "j.sqlite", "line1") as j:
        assert j.last_seq() == 0 and j.first_seq() is None and len(j.journal_id) == 32
        j.append(1, 10.0, body(1))
        j.append_many([JournalEntry(2, 11.0, "cam0", "OK", body(2)), JournalEntry(3, 12.0, "cam1", "NotOK", body(3))])
        for bad in (3, 5, 0):                                   # a repeat, a jump, a step back
            with pytest.raises(JournalError, match="does not follow"):
                j.append(bad, 13.0, body(bad))
        with pytest.raises(JournalError, match="gap-free"):
            j.append_many([JournalEntry(4, 1.0, "c", "OK", b"x"), JournalEntry(6, 1.0, "c", "OK", b"x")])
        assert (j.first_seq(), j.last_seq(), j.count()) == (1, 3, 3)
        assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
    with sqlite3.connect(tmp_path / "state" / "j.sqlite") as con:      # what was published, byte for byte
        assert con.execute("SELECT body FROM alerts WHERE seq = 2").fetchone()[0] == body(2)


def test_reopen_continues_the_numbering_with_the_same_identity(tmp_path):
    path = tmp_path / "j.sqlite"
    with AlertJournal(path, "line1") as j:
        fill(j, 4)
        jid = j.journal_id
    with AlertJournal(path, "line1") as j:
        assert j.journal_id == jid and j.last_seq() == 4
        fill(j, 1)
        assert j.last_seq() == 5
    with pytest.raises(JournalError, match="belongs to node 'line1'"):
        AlertJournal(path, "line2")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(JournalError, match="not an alert journal"):
        AlertJournal(other, "line1")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "j.sqlite").mkdir()                      # a directory where the file should be
    with pytest.raises(JournalError, match="cannot open"):
        AlertJournal(tmp_path / "ro" / "j.sqlite", "line1")
    with AlertJournal(tmp_path / "new.sqlite", "line1") as j:   # another file: another identity
        assert j.journal_id != jid


def test_since_pages_filters_and_bounds_bytes(tmp_path):
    with AlertJournal(tmp_path / "j.sqlite", "line1") as j:
        for i in range(1, 11):
            j.append(i, float(i), body(i, camera="top" if i % 2 else "side", verdict="NotOK" if i in (3, 8) else "OK"),
                     "top" if i % 2 else "side", "NotOK" if i in (3, 8) else "OK")
        r = j.since(0, 4)
        assert seqs(r.alerts) == [1, 2, 3, 4] and r.upto == 4 and r.missing == [] and (r.first_seq, r.last_seq) == (1, 10)
        r = j.since(4, 100)
        assert seqs(r.alerts) == [5, 6, 7, 8, 9, 10] and r.upto == 10
        r = j.since(10, 5)
        assert r.alerts == [] and r.upto == 10
        r = j.since(0, 100, verdicts=["NotOK"])
        assert seqs(r.alerts) == [3, 8] and r.upto == 10                # covered to the end, filtered
        r = j.since(0, 1, verdicts=["NotOK"])
        assert seqs(r.alerts) == [3] and r.upto == 3
        r = j.since(0, 100, cameras=["side"], verdicts=["OK"])
        assert seqs(r.alerts) == [2, 4, 6, 10]
        one = len(body(1))
        r = j.since(0, 100, max_bytes=int(2.5 * one))
        assert seqs(r.alerts) == [1, 2] and r.upto == 2
        r = j.since(0, 100, max_bytes=1)                               # always at least one
        assert seqs(r.alerts) == [1] and r.upto == 1


def test_retention_by_count_keeps_the_newest_and_reports_the_pruned_as_missing(tmp_path):
    with AlertJournal(tmp_path / "j.sqlite", "line1", max_alerts=5, prune_every=4) as j:
        fill(j, 12)
        assert j.count() <= 5 + 4 and j.last_seq() == 12
        j.prune()
        assert (j.count(), j.first_seq(), j.last_seq()) == (5, 8, 12)
        r = j.since(2, 100)
        assert r.missing == [[3, 7]] and seqs(r.alerts) == [8, 9, 10, 11, 12] and r.upto == 12
    with AlertJournal(tmp_path / "j.sqlite", "line1", max_alerts=2) as j:   # applied at open too
        assert (j.count(), j.first_seq(), j.last_seq()) == (2, 11, 12)


def test_retention_by_age_and_bytes_never_deletes_the_newest(tmp_path):
    now = [1000.0]
    with AlertJournal(tmp_path / "j.sqlite", "line1", max_age_s=100, clock=lambda: now[0]) as j:
        for i in range(1, 6):
            j.append(i, 1000.0 + i, body(i))
        now[0] = 1103.5                                                 # 1..3 are older than 100 s
        assert j.prune() == 3 and j.first_seq() == 4
        now[0] = 10_000.0                                               # all are old: the last one stays
        assert j.prune() == 1 and (j.count(), j.last_seq()) == (1, 5)
        fill(j, 1)
        assert j.last_seq() == 6                                        # the numbering survives retention
    size = len(body(1, journal_id="0" * 32))
    with AlertJournal(tmp_path / "b.sqlite", "line1", max_bytes=3 * size + 10) as j:
        fill(j, 8)
        j.prune()
        assert j.count() == 3 and j.body_bytes() <= 3 * size + 10 and j.last_seq() == 8


def test_alerts_published_but_not_journaled_become_tombstones(tmp_path):
    with AlertJournal(tmp_path / "j.sqlite", "line1") as j:
        fill(j, 2)
        with pytest.raises(JournalError):
            j.append(5, 1.0, body(5))
        j.append_many([JournalEntry(5, 1.0, "cam0", "OK", body(5))], lost_before=True)
        r = j.since(0, 100, verdicts=["NotOK"])                         # reported whatever the filter
        assert r.missing == [[3, 4]] and r.alerts == [] and r.upto == 5
        assert j.last_seq() == 5


def test_default_journal_path_is_per_node_and_port_in_the_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "svc"))
    assert default_journal_path("line1", "tcp://0.0.0.0:5560") == tmp_path / "svc" / "alerts-line1-5560.sqlite"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_journal_path("a/b", "ipc:///tmp/x") == tmp_path / "xdg" / "edge-inspect" / "alerts-a_b-_tmp_x.sqlite"
    assert default_journal_path("line1", "tcp://127.0.0.1:5570") != default_journal_path("line1", "tcp://127.0.0.1:5560")


# -- the replay protocol -------------------------------------------------------------------------
def test_default_replay_addr():
    assert default_replay_addr("tcp://127.0.0.1:5560") == "tcp://127.0.0.1:5561"
    assert default_replay_addr("tcp://*:5560") == "tcp://*:5561"
    assert default_replay_addr("tcp://[::1]:7000") == "tcp://[::1]:7001"
    assert default_replay_addr("ipc:///run/edge/alerts") == "ipc:///run/edge/alerts.replay"
    for bad in ("tcp://host:*", "tcp://host:65535", "nonsense", "udp://x:1"):
        with pytest.raises(ValueError):
            default_replay_addr(bad)


def test_parse_request_refuses_what_is_not_the_protocol():
    assert parse_request(encode_request("since", 7, after=3, limit=10))["after"] == 3
    assert parse_request(encode_request("hello"))["op"] == "hello"
    bad = [b"\xc1 not msgpack", msgpack.packb([1, 2]), msgpack.packb({"v": 2, "op": "hello"}),
           encode_request("drop_table"), encode_request("since", after=-1, limit=1),
           encode_request("since", after=0, limit=MAX_LIMIT + 1), encode_request("since", after="0", limit=1),
           encode_request("since", after=0, limit=True), encode_request("since", after=0, limit=1, cameras="cam0"),
           encode_request("since", after=0, limit=1, verdicts=["NG"]), encode_request("hello", rid=[1]),
           b"\x00" * (MAX_REQUEST_BYTES + 1)]
    for raw in bad:
        with pytest.raises(ReplayError):
            parse_request(raw)
    with pytest.raises(ReplayError):
        parse_reply(msgpack.packb({"v": 1, "ok": True, "node": "x"}))


@pytest.fixture
def server(tmp_path):
    """A journal of 30 alerts (two NotOK) and its replay endpoint, served by a test loop."""
    ctx = zmq.Context()
    j = AlertJournal(tmp_path / "j.sqlite", "line1")
    for i in range(1, 31):
        verdict = "NotOK" if i in (7, 21) else "OK"
        j.append(i, float(i), body(i, verdict=verdict, journal_id=j.journal_id), "cam0", verdict)
    counts = {}
    srv = ReplayServer(ctx, "tcp://127.0.0.1:*", j, "line1",
                       count=lambda name, n=1: counts.__setitem__(name, counts.get(name, 0) + n))
    srv.endpoint = srv.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    srv.counts = counts
    yield srv
    srv.close()
    j.close()
    ctx.destroy(linger=0)


def ask(srv, sock, raw: bytes, frames_before=()):
    sock.send_multipart([*frames_before, raw])
    deadline = time.monotonic() + 5
    while not sock.poll(10):
        srv.serve()
        assert time.monotonic() < deadline, "no reply"
    return parse_reply(sock.recv_multipart()[-1])


def test_replay_server_answers_hello_and_since_in_pages(server):
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(server.endpoint)
    try:
        hello = ask(server, dealer, encode_request("hello", "h1"))
        assert hello["ok"] and hello["id"] == "h1" and hello["node"] == "line1"
        assert (hello["first_seq"], hello["last_seq"]) == (1, 30) and hello["journal_id"] == server.journal.journal_id
        got, after = [], 0
        while True:
            rep = ask(server, dealer, encode_request("since", 1, after=after, limit=8))
            got += seqs(rep["alerts"])
            after = rep["upto"]
            if after >= rep["last_seq"]:
                break
        assert got == list(range(1, 31))
        rep = ask(server, dealer, encode_request("since", 2, after=0, limit=100, verdicts=["NotOK"]))
        assert seqs(rep["alerts"]) == [7, 21] and rep["upto"] == 30
        assert all(decode_alert_body(b)["journal_id"] == server.journal.journal_id for b in rep["alerts"])
        assert server.counts["replay_alerts_sent"] == 32
    finally:
        dealer.close()


def test_the_journal_and_the_replay_keep_the_part_id_as_published(tmp_path):
    ctx = zmq.Context.instance()
    j = AlertJournal(tmp_path / "j.sqlite", "line1")
    for seq, part in ((1, "cell0001.png"), (2, None)):
        a = make_alert(node="line1", alert_seq=seq, camera="cam0", frame_seq=seq - 1, capture_wall=1.7e9,
                       published_wall=1.7e9 + seq, latency_ms=1.0, verdict="OK", score=0.1, normalised_score=0.4,
                       threshold=0.5, model_version="m", journal_id=j.journal_id, part_id=part)
        j.append(seq, a["published_wall"], encode_alert(a)[1], "cam0", "OK")
    srv = ReplayServer(ctx, "tcp://127.0.0.1:*", j, "line1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(srv.sock.getsockopt(zmq.LAST_ENDPOINT).decode())
    try:
        rep = ask(srv, dealer, encode_request("since", 1, after=0, limit=10))
        assert [decode_alert_body(b)["part_id"] for b in rep["alerts"]] == ["cell0001.png", None]
    finally:
        dealer.close()
        srv.close()
        j.close()


def test_malformed_requests_are_answered_counted_and_never_fatal(server):
    ctx = zmq.Context.instance()
    dealer, req = ctx.socket(zmq.DEALER), ctx.socket(zmq.REQ)
    for s in (dealer, req):
        s.setsockopt(zmq.LINGER, 0)
        s.connect(server.endpoint)
    try:
        for raw in (b"garbage", msgpack.packb({"v": 9}), encode_request("since", after=0, limit=0)):
            rep = ask(server, dealer, raw)
            assert rep["ok"] is False and rep["error"]
        assert server.counts["replay_malformed"] == 3
        dealer.send_multipart([b"a", b"b", b"c", b"d"])                 # too many frames: not answered
        deadline = time.monotonic() + 2
        while server.counts["replay_malformed"] < 4 and time.monotonic() < deadline:
            server.serve()
            time.sleep(0.01)
        assert server.counts["replay_malformed"] == 4 and not dealer.poll(100)
        # a REQ client (empty delimiter frame) gets its answer too
        rep = ask(server, req, encode_request("hello"))
        assert rep["ok"] and rep["last_seq"] == 30
        # a request above MAXMSGSIZE: libzmq drops that connection; the server goes on
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(server.endpoint)
        big.send(b"\x00" * (MAX_REQUEST_BYTES * 4))
        for _ in range(20):
            server.serve()
            time.sleep(0.01)
        big.close()
        assert ask(server, dealer, encode_request("hello"))["ok"]
    finally:
        dealer.close()
        req.close()


def test_replay_link_times_out_replaces_its_socket_and_ignores_stale_replies(server):
    ctx = zmq.Context.instance()
    link = ReplayLink(ctx, server.endpoint, timeout_s=0.2)
    try:
        assert link.send("hello", {"purpose": "x"})
        assert not link.send("hello")                                    # one in flight at a time
        time.sleep(0.25)
        assert link.expired(time.monotonic())
        old = link.reset()
        old.close(linger=0)
        server.serve()                                                   # answers the abandoned request: nobody reads it
        assert link.send("since", after=28, limit=5)
        deadline = time.monotonic() + 5
        while True:
            server.serve()
            if link.sock.poll(10):
                got = link.recv()
                if got is not None:
                    break
            assert time.monotonic() < deadline
        request, reply = got
        assert request["op"] == "since" and seqs(reply["alerts"]) == [29, 30]
        with pytest.raises(TimeoutError):                                # nobody serves: a clear timeout
            replay_request("tcp://127.0.0.1:1", timeout_s=0.2, context=ctx)
    finally:
        link.close()


# -- the alert stage and its journal -------------------------------------------------------------
def test_the_alert_stage_journals_before_publishing_and_publishes_even_when_the_journal_fails(tmp_path, monkeypatch):
    import edge.stages.alert as alert_stage
    from edge.config import PipelineConfig
    from pathlib import Path
    engine = Path(__file__).resolve().parents[2] / "edge" / "bundled" / "model.onnx"
    ctx = zmq.Context.instance()
    probe = ctx.socket(zmq.ROUTER)
    ports = [probe.bind_to_random_port("tcp://127.0.0.1") for _ in range(2)]
    probe.close(linger=0)
    cfg = PipelineConfig(engine=str(engine), alerts_addr=f"tcp://127.0.0.1:{ports[0]}",
                         replay_addr=f"tcp://127.0.0.1:{ports[1]}", scored_addr=f"ipc://{tmp_path}/scored",
                         journal_path=str(tmp_path / "j.sqlite"), node_id="line1")
    stage = alert_stage.AlertStage(cfg)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(b"")
    sub.connect(cfg.alerts_addr)
    try:
        deadline = time.monotonic() + 5
        while stage.subscribers < 1:
            assert time.monotonic() < deadline
            stage.poll_subscriptions()
            time.sleep(0.01)

        def one():
            stage.publish("cam0", 0, time.monotonic(), time.time(), "OK", stage.rules_for("cam0"), score=-1e9)
            stage.flush()
            assert sub.poll(2000)
            return decode_alert_body(sub.recv_multipart()[1])

        assert [one()["alert_seq"] for _ in range(2)] == [1, 2]
        assert stage.journal.last_seq() == 2 and one()["journal_id"] == stage.journal.journal_id   # 3

        def broken(*a, **k):
            raise JournalError("disk full (test)")
        monkeypatch.setattr(stage.journal, "append_many", broken)
        assert [one()["alert_seq"] for _ in range(2)] == [4, 5]      # published all the same
        assert stage.metrics.counter("journal_errors") == 2 and stage.journal.last_seq() == 3
        monkeypatch.undo()
        assert one()["alert_seq"] == 6                              # the disk is back: 4, 5 written late
        assert seqs(stage.journal.since(0, 100).alerts) == [1, 2, 3, 4, 5, 6]

        monkeypatch.setattr(alert_stage, "UNJOURNALED_MAX", 2)
        monkeypatch.setattr(stage.journal, "append_many", broken)
        assert [one()["alert_seq"] for _ in range(3)] == [7, 8, 9]   # 7 is dropped from the backlog
        monkeypatch.setattr(stage.journal, "append_many", type(stage.journal).append_many.__get__(stage.journal))
        assert one()["alert_seq"] == 10
        r = stage.journal.since(6, 100)
        assert r.missing == [[7, 7]] and seqs(r.alerts) == [8, 9, 10]  # a tombstone, not a silent hole
    finally:
        sub.close()
        stage.close()
    with AlertJournal(tmp_path / "j.sqlite", "line1") as j:             # the next start continues at 11
        assert j.last_seq() == 10


# -- epochs: a published alert_seq is never reused (issue 13) -------------------------------------
def test_a_marker_of_unjournaled_alerts_makes_the_next_open_a_new_epoch(tmp_path):
    from edge.journal import unjournaled_marker
    path = tmp_path / "j.sqlite"
    with AlertJournal(path, "line1") as j:
        fill(j, 3)
        old = j.journal_id
        assert j.mark_unjournaled(4, 9) and unjournaled_marker(path).exists()
    with AlertJournal(path, "line1") as j:                      # alert_seq 4..9 are out there: new epoch
        assert j.journal_id != old and j.previous_journal_id == old
        assert j.last_seq() == 0 and not unjournaled_marker(path).exists()
        assert j.previous_path == tmp_path / f"j.sqlite.epoch-{old}"
        fill(j, 1)
        new = j.journal_id
    with AlertJournal(tmp_path / f"j.sqlite.epoch-{old}", "line1") as kept:   # the old epoch, intact
        assert kept.journal_id == old and kept.last_seq() == 3
    with AlertJournal(path, "line1") as j:                      # no marker: the same epoch continues
        assert j.journal_id == new and j.previous_journal_id is None and j.last_seq() == 1
    with AlertJournal(path, "line1") as j:                      # a marker cleared in time changes nothing
        assert j.mark_unjournaled(2, 2)
        j.clear_unjournaled()
    with AlertJournal(path, "line1") as j:
        assert j.journal_id == new


def test_a_full_disk_says_full_not_cannot_rollback_and_the_next_start_is_a_new_epoch(tmp_path):
    from tests.edge.tmpfs import fill_disk, small_tmpfs
    from edge.journal import unjournaled_marker
    with small_tmpfs(tmp_path / "disk", 512) as disk:
        path = disk / "j.sqlite"
        with AlertJournal(path, "line1") as j:
            fill(j, 2)
            old = j.journal_id
            ballast = fill_disk(disk)
            with pytest.raises(JournalError) as err:
                for seq in range(3, 200):                       # the WAL grows until the disk refuses
                    j.append(seq, time.time(), body(seq, journal_id=old) + b"\0" * 8192)
            assert "full" in str(err.value) and "cannot rollback" not in str(err.value), err.value
            assert j.mark_unjournaled(seq, seq)                 # an empty file still fits on a full disk
        ballast.unlink()                                        # the disk is freed
        with AlertJournal(path, "line1") as j:
            assert j.journal_id != old and j.last_seq() == 0 and not unjournaled_marker(path).exists()


def test_an_alert_stage_that_stops_with_unjournaled_alerts_makes_the_next_start_a_new_epoch(tmp_path, monkeypatch,
                                                                                             caplog):
    import edge.stages.alert as alert_stage
    from edge.config import PipelineConfig
    from edge.journal import unjournaled_marker
    from pathlib import Path
    engine = Path(__file__).resolve().parents[2] / "edge" / "bundled" / "model.onnx"
    probe = zmq.Context.instance().socket(zmq.ROUTER)
    ports = [probe.bind_to_random_port("tcp://127.0.0.1") for _ in range(2)]
    probe.close(linger=0)
    cfg = PipelineConfig(engine=str(engine), alerts_addr=f"tcp://127.0.0.1:{ports[0]}",
                         replay_addr=f"tcp://127.0.0.1:{ports[1]}", scored_addr=f"ipc://{tmp_path}/scored",
                         journal_path=str(tmp_path / "j.sqlite"), node_id="line1")

    def publish_one(stage):
        stage.publish("cam0", 0, time.monotonic(), time.time(), "OK", stage.rules_for("cam0"), score=-1e9)
        stage.flush()

    def broken(*a, **k):
        raise JournalError("database or disk is full (test)")

    stage = alert_stage.AlertStage(cfg)
    old = stage.journal.journal_id
    try:
        publish_one(stage)                                               # 1: journaled
        monkeypatch.setattr(stage.journal, "append_many", broken)
        publish_one(stage)                                               # 2, 3: published, not journaled
        assert unjournaled_marker(cfg.journal_path).exists()            # on disk before 2 went out
        publish_one(stage)
    finally:
        with caplog.at_level("CRITICAL", logger="edge"):
            stage.close()
    assert "alert_seq 2..3 were published but are not in the journal" in caplog.text
    assert "new journal epoch" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge"):
        stage = alert_stage.AlertStage(cfg)
    try:
        assert stage.journal.journal_id != old and stage.alert_seq == 0   # 2 and 3 are never reused
        assert f"journal_id {old} -> {stage.journal.journal_id}" in caplog.text
        publish_one(stage)
        assert [decode_alert_body(b)["journal_id"] for b in stage.journal.since(0, 10).alerts] == \
            [stage.journal.journal_id]
    finally:
        stage.close()
