"""Fuzz every stage socket of a running edge-run with >= 10,000 bad messages: no crash, each counted.

Real processes and sockets on loopback. The pipeline is held (--wait-subscribers) while the
fuzz runs, then released: every real frame must still get its verdict. Both stage modes
(processes, and threads of one process: there the fuzzed hops are the tcp:// ones given).
"""
import time

import msgpack
import numpy as np
import pytest
import zmq

from edge.alerts_cli import AlertSubscriber
from edge.wire import MAX_MESSAGE_BYTES, WIRE_VERSION, pack
from tests.edge.test_pipeline import IMAGES, Run, free_port, stage_mode  # noqa: F401 (fixture)

N_PER_SOCKET = 3400          # x 3 sockets > 10,000


def bad_messages(rng: np.random.Generator, n: int, stage: str) -> list[list[bytes]]:
    """Malformed messages of every kind the wire format can get wrong."""
    valid_frame = msgpack.packb({"v": WIRE_VERSION, "kind": "frame", "camera": "c", "seq": 1, "mono": 1.0,
                                 "wall": 1.0, "shape": [4, 4], "pixel_format": "Mono8"})
    item = {"camera": "c", "seq": 1, "mono": 1.0, "wall": 1.0}
    makers = [
        lambda: [rng.bytes(int(rng.integers(1, 2000)))],                                      # noise
        lambda: [valid_frame[:int(rng.integers(1, len(valid_frame)))]],                        # truncated
        lambda: [msgpack.packb({"v": int(rng.integers(2, 1 << 30)), "kind": "frame"})],        # future version
        lambda: [msgpack.packb({"v": WIRE_VERSION, "kind": rng.bytes(4).hex()})],              # unknown kind
        lambda: [msgpack.packb(list(range(5)))],                                              # not a map
        lambda: [msgpack.packb({"v": WIRE_VERSION, "kind": "frame", "camera": 7, "seq": "x"})],  # wrong types
        lambda: [valid_frame] + [b"x"] * int(rng.integers(2, 40)),                             # stray frames
        lambda: pack({"kind": "batch", "items": [item], "rejects": []},                       # shape lies
                     np.zeros((1, 1, 3, 3), np.uint8)),
        lambda: pack({"kind": "batch", "items": "nope", "rejects": None}, np.zeros((0,), np.uint8)),
        lambda: pack({"kind": "scored", "items": [item, item], "rejects": []},                 # arrays short
                     np.zeros((1, 1, 4, 4), np.uint8)),
        lambda: [msgpack.packb({"v": WIRE_VERSION, "kind": "batch", "arrays": [[[1 << 40], "uint8"]]}), b""],
        lambda: [b"\xde\xff\xff" + rng.bytes(10)],                                            # huge map claim
    ]
    if stage == "preprocess":   # a well-formed frame whose pixels are not ours: judged NotDecidable
        makers.append(lambda: [msgpack.packb({"v": WIRE_VERSION, "kind": "frame", "camera": "x", "seq": 1,
                                              "mono": 1.0, "wall": 1.0, "shape": [4, 4], "pixel_format": "Mono8",
                                              "ring": "/etc/passwd", "slot": 0, "gen": 2})])
    return [makers[i % len(makers)]() for i in range(n)]


def test_ten_thousand_bad_messages_crash_nothing_and_are_all_counted(tmp_path, stage_mode):
    ports = {hop: free_port() for hop in ("frames", "batches", "scored")}
    # held until a subscriber joins (at most 10 s): the fuzz runs while every stage is up and idle
    run = Run(tmp_path, "--source", str(IMAGES), "--no-drop", "--threshold", "1e9", "--wait-subscribers", "1",
              *[f"--{hop}-addr=tcp://127.0.0.1:{p}" for hop, p in ports.items()], subscribe=False, mode=stage_mode)
    ctx = zmq.Context()
    rng = np.random.default_rng(7)
    sent = {}
    rejects_expected = 0
    try:
        for (hop, port), stage in zip(ports.items(), ("preprocess", "score", "alert")):
            msgs = bad_messages(rng, N_PER_SOCKET, stage)
            rejects_expected += sum(1 for m in msgs if b"/etc/passwd" in m[0])
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 5000)
            s.setsockopt(zmq.SNDTIMEO, 20000)
            s.connect(f"tcp://127.0.0.1:{port}")
            for m in msgs:
                s.send_multipart(m)
            sent[stage] = len(msgs) - (rejects_expected if stage == "preprocess" else 0)
            # oversized: ZeroMQ refuses it before the stage sees it and drops the connection
            big = ctx.socket(zmq.PUSH)
            big.connect(f"tcp://127.0.0.1:{port}")
            big.send_multipart([b"x" * (MAX_MESSAGE_BYTES + 1)])
        time.sleep(1.0)
        assert run.proc.poll() is None, f"edge-run died under fuzzing:\n{run.tail()}"
        run.sub = AlertSubscriber([run.alerts_addr])   # the subscriber releases the frames
        summary = run.finish(timeout=120)
    finally:
        ctx.destroy(linger=0)
    assert sum(sent.values()) + rejects_expected >= 10_000
    for stage, n in sent.items():   # every malformed message that reached a stage was counted, once
        assert summary["malformed"].get(stage, 0) == n, (stage, summary["malformed"])
    assert summary["frames_judged"] >= summary["frames_captured"] == 50
    not_ours = [a for a in run.alerts if a["camera"] == "x"]
    assert len(not_ours) == rejects_expected and all(a["verdict"] == "NotDecidable" for a in not_ours)
    assert sum(1 for a in run.alerts if a["camera"] == "cam0") == 50


@pytest.mark.parametrize("garbage,mode", [(b"", "processes"), (b"\x02junk", "processes"),
                                          (b"\x01" + b"s" * 5000, "processes"), (b"\x02junk", "threads")])
def test_alert_socket_survives_bad_subscription_frames(tmp_path, garbage, mode):
    run = Run(tmp_path, "--source", str(IMAGES), "--no-drop", "--threshold", "1e9", "--wait-subscribers", "1",
              subscribe=False, mode=mode)
    ctx = zmq.Context()
    try:
        x = ctx.socket(zmq.XSUB)
        x.connect(run.alerts_addr)
        for _ in range(200):
            x.send(garbage)
        run.sub = AlertSubscriber([run.alerts_addr])
        summary = run.finish(timeout=90)
    finally:
        ctx.destroy(linger=0)
    assert summary["frames_judged"] == 50
