"""Frame transport alone: 1920x1080x3 uint8 frames between two processes on this host.

Four ways to move a full-size camera frame, measured in the same run, interleaved:

* ``imagezmq``  imagezmq (pip) ImageSender -> ImageHub, its default REQ/REP pattern (the sender waits
                for the hub's reply to every frame), over tcp://127.0.0.1.
* ``inline``    the project's wire for stages on different hosts (``edge-run --frames-inline``):
                ``edge.wire.pack(header, frame)`` sent with ``copy=False`` on a PUSH socket, received
                on a PULL socket with ``copy=False`` and validated by ``edge.wire.unpack``, over
                tcp://127.0.0.1, with the capture -> preprocess socket settings for inline frames
                (edge.wire.make_socket, capture's INLINE_SEND_HWM, preprocess's INLINE_RECV_HWM).
* ``ring``      the project's same-host path (what capture -> preprocess does): the writer copies the
                frame into an ``edge.frame_ring.FrameRing`` slot (8 slots, no-drop: it waits for a
                free slot), sends only the msgpack header over ipc:// PUSH/PULL; the reader unpacks
                it, takes the slot's view, checks the seqlock (``still_valid``) and releases the slot.
                Two readers: ``ring-view`` reads the pixels in place, as the preprocess stage does
                (the resize reads them straight from shared memory); ``ring-copy`` copies the frame
                out into private memory before releasing it (a full crossing, comparable to a socket
                that hands over a private buffer).
* ``inproc``    the same-host hop of ``edge-run --stage-mode threads``: capture and preprocess are threads
                of one process, the frame message (``edge.wire.pack(header, frame)``) goes over
                inproc:// PUSH/PULL with ``copy=False`` (the stages' inline HWMs) and the reader
                validates it (``edge.wire.unpack``) and reads its stamp: the frame is handed over by
                reference, never copied, so this row is the hop's own cost, not a copy's.
* ``memcpy``    one process copying the frame into a preallocated array (``np.copyto``): the ceiling.

Sender and receiver are separate processes (spawned), as in production. Each frame carries its
sequence number in its first 8 bytes and the receiver checks it, so a transport that delivered
the wrong or a half-written frame would fail loudly. The receiver times ``frames`` deliveries
after ``warmup`` untimed ones: frames/s = frames / (arrival of the last - arrival of the last
warm-up frame). The sender cycles through a pool of distinct frames (never modified while a
zero-copy send may still reference them).

  python bench/transport_bench.py [--rounds 5] [--frames 600]   (prints; bench/pipeline_bench.py
                                                                  runs it and writes the docs)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = (1080, 1920, 3)
FRAME_BYTES = int(np.prod(SHAPE))
POOL = 24            # distinct frames the sender cycles through (> send HWM + frames in flight)
RING_SLOTS = 8       # edge.config.PipelineConfig.ring_slots default
MODES = ("imagezmq", "inline", "ring-view", "ring-copy", "inproc", "memcpy", "memcpy-cold")
MODE_LABELS = {
    "imagezmq": "imagezmq ImageSender/ImageHub, REQ/REP, tcp://127.0.0.1",
    "inline": "edge.wire.pack + PUSH/PULL copy=False, tcp://127.0.0.1 (--frames-inline)",
    "ring-view": "FrameRing write + header over ipc:// PUSH/PULL, reader view + release (capture -> preprocess)",
    "ring-copy": "FrameRing write + header over ipc:// PUSH/PULL, reader copies the frame out + release",
    "inproc": "edge.wire.pack + PUSH/PULL copy=False over inproc://, two threads of one process "
              "(--stage-mode threads: the frame is handed over, not copied)",
    "memcpy": "np.copyto of the frame, one process, 4 source frames into 1 buffer (mostly in the 32 MB L3 cache)",
    "memcpy-cold": f"np.copyto, one process, the senders' {POOL} source frames into {RING_SLOTS} buffers (the ring's "
                   "memory traffic: the ceiling for one copy per frame)",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_pool(n: int = POOL) -> list[np.ndarray]:
    base = np.random.default_rng(0).integers(0, 256, size=SHAPE, dtype=np.uint8)
    pool = []
    for i in range(n):
        f = base.copy()
        f.reshape(-1)[:8].view(np.int64)[0] = i
        pool.append(f)
    return pool


def stamp(frame: np.ndarray) -> int:
    return int(np.asarray(frame).reshape(-1)[:8].view(np.int64)[0])


# -- the two ends of each transport --------------------------------------------------------------
def _sender(mode: str, addr: str, total: int, ready, result) -> None:
    import zmq

    from edge.buffers import keep_freed_buffers
    from edge.frame_ring import FrameRing
    from edge.stages.capture import INLINE_SEND_HWM, SEND_HWM
    from edge.wire import make_socket, pack
    if mode != "imagezmq":
        keep_freed_buffers()   # as every edge-run stage process does (edge/run.py)
    pool = frame_pool()
    ready.wait(30)
    t0 = time.perf_counter()
    if mode == "imagezmq":
        import imagezmq
        sender = imagezmq.ImageSender(connect_to=addr)  # REQ/REP, imagezmq's default
        for i in range(total):
            sender.send_image(f"cam0 {i}", pool[i % POOL])
        sender.close()
    elif mode == "inline":
        ctx = zmq.Context()
        out = make_socket(ctx, zmq.PUSH, hwm=INLINE_SEND_HWM)   # capture's, for inline frames
        out.connect(addr)
        for i in range(total):
            header = {"kind": "frame", "camera": "cam0", "seq": i, "mono": time.monotonic(), "wall": time.time(),
                      "shape": list(SHAPE), "pixel_format": "BGR8"}
            out.send_multipart(pack(header, pool[i % POOL]), copy=False)
        out.close(linger=60_000)
        ctx.term()
    else:  # ring-view / ring-copy: the writer's side is the same
        ctx = zmq.Context()
        out = make_socket(ctx, zmq.PUSH, hwm=SEND_HWM)          # capture's, for ring headers
        out.connect(addr)
        ring = FrameRing.create("bench", RING_SLOTS, FRAME_BYTES)
        for i in range(total):
            slot, gen, _ = ring.write(pool[i % POOL], wait_free=True)
            header = {"kind": "frame", "camera": "cam0", "seq": i, "mono": time.monotonic(), "wall": time.time(),
                      "shape": list(SHAPE), "pixel_format": "BGR8", "ring": str(ring.path), "slot": slot, "gen": gen}
            out.send_multipart(pack(header), copy=False)
        # keep the ring until the reader released every slot (as capture's wait_for_readers)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (ring.released >= ring.gen).all():
            time.sleep(0.001)
        out.close(linger=10_000)
        ctx.term()
        ring.close()
    result.put(("sender", time.perf_counter() - t0))


def _receiver(mode: str, addr: str, warmup: int, frames: int, ready, result) -> None:
    import zmq

    import resource

    from edge.buffers import keep_freed_buffers
    from edge.frame_ring import FrameRing
    from edge.stages.preprocess import INLINE_RECV_HWM, RECV_HWM
    from edge.wire import make_socket, unpack
    if mode != "imagezmq":
        keep_freed_buffers()   # as every edge-run stage process does (edge/run.py)
    total = warmup + frames
    arrivals = np.empty(total)
    faults = [0, 0]   # minor page faults of this process at the end of warm-up and at the end
    bad = 0
    if mode == "imagezmq":
        import imagezmq
        hub = imagezmq.ImageHub(open_port=addr)
        ready.set()
        for i in range(total):
            _, image = hub.recv_image()
            arrivals[i] = time.perf_counter()
            bad += stamp(image) != i % POOL or image.shape != SHAPE
            if i == warmup - 1:
                faults[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            hub.send_reply(b"OK")
        hub.close()
    else:
        ctx = zmq.Context()
        inp = make_socket(ctx, zmq.PULL, hwm=INLINE_RECV_HWM if mode == "inline" else RECV_HWM)   # preprocess's
        inp.bind(addr)
        ready.set()
        ring = None
        private = np.empty(SHAPE, np.uint8)
        for i in range(total):
            header, arrays = unpack(inp.recv_multipart(copy=False))
            if mode == "inline":
                frame = arrays[0].reshape(SHAPE) if arrays else None
                ok = frame is not None and stamp(frame) == i % POOL
            else:
                if ring is None:
                    ring = FrameRing.attach(header["ring"])
                slot, gen = header["slot"], header["gen"]
                view = ring.view(slot, gen, tuple(header["shape"]))
                if view is not None and mode == "ring-copy":
                    np.copyto(private, view)
                    seen = stamp(private)
                else:
                    seen = None if view is None else stamp(view)
                ok = view is not None and ring.still_valid(slot, gen) and seen == i % POOL
                ring.release(slot, gen)
                del view
            arrivals[i] = time.perf_counter()
            bad += not ok
            if i == warmup - 1:
                faults[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if ring is not None:
            ring.close()
        inp.close(linger=0)
        ctx.term()
    faults[1] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    elapsed = arrivals[-1] - arrivals[warmup - 1]
    result.put(("receiver", {"frames": frames, "elapsed_s": float(elapsed), "bad_frames": int(bad),
                             "receiver_page_faults_per_frame": (faults[1] - faults[0]) / frames}))


def measure_memcpy(frames: int, warmup: int, sources: int = 4, targets: int = 1) -> dict:
    pool = frame_pool(sources)
    dst = [np.empty(SHAPE, np.uint8) for _ in range(targets)]
    for i in range(warmup):
        np.copyto(dst[i % targets], pool[i % sources])
    t0 = time.perf_counter()
    for i in range(frames):
        np.copyto(dst[i % targets], pool[i % sources])
    elapsed = time.perf_counter() - t0
    return {"frames": frames, "elapsed_s": elapsed,
            "bad_frames": int(stamp(dst[(frames - 1) % targets]) != (frames - 1) % sources)}


def measure_inproc(frames: int, warmup: int) -> dict:
    """Sender and receiver as two threads of this process over inproc:// (threads mode's frames hop)."""
    import threading

    import zmq

    from edge.stages.capture import INLINE_SEND_HWM
    from edge.stages.preprocess import INLINE_RECV_HWM
    from edge.wire import make_socket, pack, unpack
    ctx = zmq.Context()
    inp = make_socket(ctx, zmq.PULL, hwm=INLINE_RECV_HWM)
    inp.bind("inproc://bench-frames")
    pool, total = frame_pool(), warmup + frames

    def send():
        out = make_socket(ctx, zmq.PUSH, hwm=INLINE_SEND_HWM)
        out.connect("inproc://bench-frames")
        for i in range(total):
            header = {"kind": "frame", "camera": "cam0", "seq": i, "mono": time.monotonic(), "wall": time.time(),
                      "shape": list(SHAPE), "pixel_format": "BGR8"}
            out.send_multipart(pack(header, pool[i % POOL]), copy=False)
        out.close(linger=10_000)
    tx = threading.Thread(target=send)
    tx.start()
    arrivals, bad = np.empty(total), 0
    for i in range(total):
        header, arrays = unpack(inp.recv_multipart(copy=False))
        bad += not (arrays and stamp(arrays[0]) == i % POOL)
        arrivals[i] = time.perf_counter()
    tx.join()
    inp.close(linger=0)
    ctx.term()
    return {"frames": frames, "elapsed_s": float(arrivals[-1] - arrivals[warmup - 1]), "bad_frames": int(bad)}


def measure_once(mode: str, frames: int, warmup: int) -> dict:
    """One timed transfer of ``frames`` frames (after ``warmup``), sender and receiver in two processes."""
    if mode == "memcpy":
        r = measure_memcpy(frames * 4, warmup)   # cheap: more frames for a stable figure
    elif mode == "inproc":
        r = measure_inproc(frames * 4, warmup)   # cheap: more frames for a stable figure
    elif mode == "memcpy-cold":
        r = measure_memcpy(frames * 4, warmup, sources=POOL, targets=RING_SLOTS)
    else:
        tmp = None
        if mode.startswith("ring"):
            tmp = tempfile.mkdtemp(prefix="edge-transport-")
            addr = f"ipc://{os.path.join(tmp, 'frames')}"
        else:
            addr = f"tcp://127.0.0.1:{free_port()}"
        ctx = mp.get_context("spawn")
        ready, result = ctx.Event(), ctx.Queue()
        rx = ctx.Process(target=_receiver, args=(mode, addr, warmup, frames, ready, result), name=f"rx-{mode}")
        tx = ctx.Process(target=_sender, args=(mode, addr, warmup + frames, ready, result), name=f"tx-{mode}")
        rx.start()
        tx.start()
        got = {}
        try:
            for _ in range(2):
                who, value = result.get(timeout=300)
                got[who] = value
        finally:
            for p in (tx, rx):
                p.join(30)
                if p.is_alive():
                    p.kill()
            if tmp:
                for f in Path(tmp).glob("*"):
                    f.unlink(missing_ok=True)
                os.rmdir(tmp)
        r = got["receiver"]
    r["frames_per_s"] = r["frames"] / r["elapsed_s"]
    r["mb_per_s"] = r["frames_per_s"] * FRAME_BYTES / 1e6
    return r


def run_transport(rounds: int, frames: int, warmup: int, modes=MODES, log=print) -> dict:
    """Rounds of every mode, the order rotated each round; medians per mode."""
    per_mode: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(rounds):
        k = r % len(modes)
        order = list(modes[k:]) + list(modes[:k])
        if r % 2:
            order.reverse()
        for mode in order:
            res = measure_once(mode, frames, warmup)
            res["round"] = r
            res["loadavg_1min"] = os.getloadavg()[0]
            per_mode[mode].append(res)
            log(f"[transport round {r + 1}/{rounds}] {mode:<9} {res['frames_per_s']:8.1f} frames/s "
                f"{res['mb_per_s']:8.0f} MB/s" + (f"  BAD FRAMES {res['bad_frames']}" if res["bad_frames"] else ""))
    rows = []
    for mode in modes:
        fps = [x["frames_per_s"] for x in per_mode[mode]]
        rows.append({"mode": mode, "what": MODE_LABELS[mode], "frames_per_round": per_mode[mode][0]["frames"],
                     "frames_per_s_median": statistics.median(fps), "frames_per_s_min": min(fps),
                     "frames_per_s_max": max(fps),
                     "mb_per_s_median": statistics.median(fps) * FRAME_BYTES / 1e6,
                     "bad_frames": sum(x["bad_frames"] for x in per_mode[mode]), "rounds": per_mode[mode]})
    return {"frame_shape": list(SHAPE), "frame_bytes": FRAME_BYTES, "dtype": "uint8", "rounds": rounds,
            "warmup_frames": warmup, "ring_slots": RING_SLOTS, "sender_pool": POOL, "rows": rows}


def table(result: dict) -> list[str]:
    memcpy = next((r for r in result["rows"] if r["mode"] == "memcpy"), None)
    cold = next((r for r in result["rows"] if r["mode"] == "memcpy-cold"), None)
    izmq = next((r for r in result["rows"] if r["mode"] == "imagezmq"), None)
    lines = ["| transport | frames/s (median) | min-max over rounds | MB/s (median) | vs. imagezmq (median of "
             "per-round ratios) | vs. memcpy | vs. memcpy-cold | receiver page faults per frame (median) | "
             "load average (1 min, median) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rel = f"{r['frames_per_s_median'] / memcpy['frames_per_s_median']:.1%}" if memcpy else ""
        relc = f"{r['frames_per_s_median'] / cold['frames_per_s_median']:.1%}" if cold else ""
        per_round = [x["frames_per_s"] / z["frames_per_s"] for x in r["rounds"] for z in (izmq or {}).get("rounds", [])
                     if z["round"] == x["round"]]
        vs_z = f"{statistics.median(per_round):.2f}x" if per_round else ""
        pf = [x["receiver_page_faults_per_frame"] for x in r["rounds"] if "receiver_page_faults_per_frame" in x]
        lines.append(f"| `{r['mode']}`: {r['what']} | {r['frames_per_s_median']:.0f} | {r['frames_per_s_min']:.0f}-"
                     f"{r['frames_per_s_max']:.0f} | {r['mb_per_s_median']:.0f} | {vs_z} | {rel} | {relc} "
                     f"| {statistics.median(pf):.0f} | {statistics.median(x['loadavg_1min'] for x in r['rounds']):.1f} |"
                     if pf else
                     f"| `{r['mode']}`: {r['what']} | {r['frames_per_s_median']:.0f} | {r['frames_per_s_min']:.0f}-"
                     f"{r['frames_per_s_max']:.0f} | {r['mb_per_s_median']:.0f} | {vs_z} | {rel} | {relc} | "
                     f"| {statistics.median(x['loadavg_1min'] for x in r['rounds']):.1f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", type=int, default=600, help="timed frames per mode and round")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = p.parse_args()
    result = run_transport(args.rounds, args.frames, args.warmup, tuple(args.modes))
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
