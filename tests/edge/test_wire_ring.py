"""The stage wire format and the shared-memory frame ring, on real sockets and real /dev/shm files."""
import multiprocessing as mp

import msgpack
import numpy as np
import pytest
import zmq

from edge.frame_ring import SHM_DIR, FrameRing, RingError
from edge.preprocess import frame_to_model_pixels, to_model_input
from edge.wire import WIRE_VERSION, MessageError, check_items, make_socket, pack, unpack


@pytest.fixture
def pair():
    ctx = zmq.Context()
    pull = make_socket(ctx, zmq.PULL, hwm=10, max_bytes=1 << 20)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = make_socket(ctx, zmq.PUSH, hwm=10)
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull
    ctx.destroy(linger=0)


def test_header_and_arrays_round_trip_over_tcp(pair):
    push, pull = pair
    a = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
    b = np.linspace(0, 1, 5, dtype=np.float32)
    push.send_multipart(pack({"kind": "scored", "items": []}, a, b), copy=False)
    header, arrays = unpack(pull.recv_multipart(copy=False))
    assert header["v"] == WIRE_VERSION and header["kind"] == "scored"
    np.testing.assert_array_equal(arrays[0], a)
    np.testing.assert_array_equal(arrays[1], b)


@pytest.mark.parametrize("frames, reason", [
    ([], "empty"),
    ([b"\xc1garbage"], "not msgpack"),
    ([msgpack.packb([1, 2])], "must be a map"),
    ([msgpack.packb({"v": 99, "kind": "frame"})], "wire version"),
    ([msgpack.packb({"v": WIRE_VERSION, "kind": "nonsense"})], "unknown message kind"),
    ([msgpack.packb({"v": WIRE_VERSION, "kind": "batch", "arrays": [[[2, 2], "uint8"]]})], "announces 1"),
    ([msgpack.packb({"v": WIRE_VERSION, "kind": "batch", "arrays": [[[2, 2], "uint8"]]}), b"abc"], "does not match"),
    ([msgpack.packb({"v": WIRE_VERSION, "kind": "batch", "arrays": [[[4], "float64"]]}), b"x" * 32], "bad array"),
    ([b"\x81" + msgpack.packb("k") + b"\xc6" + (1 << 20).to_bytes(4, "big")], "not msgpack"),
])
def test_malformed_messages_are_refused_with_a_reason(frames, reason):
    with pytest.raises(MessageError, match=reason):
        unpack(frames)


def test_oversized_messages_never_reach_the_receiver(pair):
    push, pull = pair
    push.send_multipart([b"x" * (2 << 20)])            # above the 1 MiB MAXMSGSIZE: ZeroMQ drops the peer
    assert pull.poll(300) == 0


def test_frame_records_are_checked():
    good = {"camera": "c", "seq": 1, "mono": 1.0, "wall": 2}
    assert check_items([good]) == [good]
    for bad in ([{"camera": 1, "seq": 1, "mono": 1.0, "wall": 2.0}], [{**good, "seq": True}],
                [{**good, "mono": "x"}], "notalist", [None]):
        with pytest.raises(MessageError):
            check_items(bad)


# -- frame ring ------------------------------------------------------------------------------------

def _reader(path, slot, gen, shape, q):
    ring = FrameRing.attach(path)
    view = ring.view(slot, gen, shape)
    q.put(None if view is None else view.copy())
    ring.release(slot, gen)
    ring.close()


def test_ring_passes_a_frame_to_another_process():
    ring = FrameRing.create("cam/0", slots=2, slot_bytes=64 * 48 * 3)
    try:
        frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        slot, gen, unread = ring.write(frame, wait_free=True)
        assert not unread
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_reader, args=(str(ring.path), slot, gen, frame.shape, q))
        p.start()
        np.testing.assert_array_equal(q.get(timeout=20), frame)
        p.join(10)
        assert ring.released[slot] == gen          # the other process freed the slot
    finally:
        ring.close()
    assert not ring.path.exists()                   # the owner removes the file


def test_ring_overwrites_the_oldest_and_readers_see_it():
    ring = FrameRing.create("cam0", slots=2, slot_bytes=16)
    try:
        first = ring.write(np.full(16, 1, np.uint8), wait_free=False)
        ring.write(np.full(16, 2, np.uint8), wait_free=False)
        third = ring.write(np.full(16, 3, np.uint8), wait_free=False)   # slot 0 again, frame 1 never read
        assert third[0] == first[0] and third[2] is True
        assert ring.view(first[0], first[1], (16,)) is None               # the stale header finds nothing
        view = ring.view(third[0], third[1], (16,))
        assert (view == 3).all() and not view.flags.writeable
        ring.write(np.full(16, 4, np.uint8), wait_free=False)
        ring.write(np.full(16, 5, np.uint8), wait_free=False)              # overwrites slot 0 while "read"
        assert not ring.still_valid(third[0], third[1])                    # the seqlock check catches it
    finally:
        ring.close()


def test_ring_in_no_drop_mode_waits_for_the_reader():
    ring = FrameRing.create("cam0", slots=1, slot_bytes=4)
    try:
        slot, gen, _ = ring.write(np.zeros(4, np.uint8), wait_free=True)
        calls = []
        assert ring.write(np.ones(4, np.uint8), wait_free=True, should_stop=lambda: calls.append(1) or len(calls) > 3) \
            is None                                                        # unreleased: it waited, then was told to stop
        ring.release(slot, gen)
        assert ring.write(np.ones(4, np.uint8), wait_free=True)[2] is False
    finally:
        ring.close()


def test_ring_refuses_foreign_or_broken_files(tmp_path):
    with pytest.raises(RingError, match="not an edge-inspect frame ring"):
        FrameRing.attach(tmp_path / "x")
    with pytest.raises(RingError, match="cannot be opened"):
        FrameRing.attach(SHM_DIR / "edge-inspect-0-gone")
    bad = SHM_DIR / "edge-inspect-0-test-broken"
    bad.write_bytes(b"\x01" * 40)
    try:
        with pytest.raises(RingError, match="inconsistent|truncated"):
            FrameRing.attach(bad)
    finally:
        bad.unlink()
    ring = FrameRing.create("cam0", slots=1, slot_bytes=4)
    try:
        with pytest.raises(RingError, match="does not fit"):
            ring.write(np.zeros(5, np.uint8), wait_free=False)
        with pytest.raises(RingError):
            ring.view(3, 2, (4,))
    finally:
        ring.close()


# -- the pipeline's preprocessing is the training preprocessing -------------------------------------

@pytest.mark.parametrize("pixel_format, order", [("Mono8", "GRAY"), ("BGR8", "RGB")])
def test_pipeline_pixels_equal_training_input(pixel_format, order):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (90, 120) if pixel_format == "Mono8" else (90, 120, 3), dtype=np.uint8)
    pixels = frame_to_model_pixels(frame, pixel_format, 32, order, roi=(10, 5, 100, 80))
    crop = frame[5:85, 10:110]
    train_view = crop if pixel_format == "Mono8" else crop[:, :, ::-1]   # training reads RGB
    expected = to_model_input(np.ascontiguousarray(train_view), 32, 1 if order == "GRAY" else 3)
    np.testing.assert_array_equal(pixels.astype(np.float32) / np.float32(255), expected)


def test_roi_outside_the_frame_is_an_error():
    from edge.preprocess import PreprocessError
    with pytest.raises(PreprocessError, match="outside"):
        frame_to_model_pixels(np.zeros((10, 10), np.uint8), "Mono8", 4, "GRAY", roi=(5, 5, 10, 10))
