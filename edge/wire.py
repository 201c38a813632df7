"""Messages between pipeline stages: a msgpack header frame, then raw array frames.

    frame   capture -> preprocess   [header]            pixels in shared memory (same host); the header
                                                        names camera, seq, capture times, shape, pixel
                                                        format and part_id (a folder image's file name, or nil)
                                    [header, pixels]    pixels inline (stages on different hosts)
    batch   preprocess -> score     [header, inputs]    inputs: uint8 (B, C, H, W) at the model size
    scored  score -> alert          [header, inputs, score, anomaly_map]
    event   any -> downstream       [header]            camera events ("blind", "reconnected", ...)
    eos     any -> downstream       [header]            end of stream: finish in-flight work, pass it on, exit
    metrics any stage -> supervisor [header]            a StageMetrics snapshot

Every header carries ``v`` (WIRE_VERSION) and ``kind``; arrays travel as separate
frames described by ``shape``/``dtype`` in the header and are sent with
``copy=False`` (pyzmq's zero-copy path; frames under 64 KiB are copied anyway).
Every receive is validated here: a malformed message raises MessageError, which
each stage counts and skips. No pickle anywhere: a socket may face untrusted peers.
"""
from __future__ import annotations

import msgpack
import numpy as np
import zmq

WIRE_VERSION = 1
KINDS = ("frame", "batch", "scored", "event", "eos", "metrics")
MAX_HEADER_BYTES = 64 * 1024
# A 4K RGB frame is 25 MB; bigger messages are refused by ZeroMQ itself (MAXMSGSIZE) before they
# reach Python, so a hostile or broken peer cannot make a stage allocate without bound.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DTYPES = {"uint8": np.uint8, "float32": np.float32}


class MessageError(ValueError):
    """A message that does not follow this wire format (counted and skipped by the stage)."""


def make_socket(ctx: zmq.Context, kind: int, *, hwm: int, max_bytes: int = MAX_MESSAGE_BYTES,
                linger_ms: int = 1000) -> zmq.Socket:
    """A socket with every limit set: bounded queues (HWM), bounded message size, a bounded
    linger so close() never hangs, and ZMTP heartbeats so a dead TCP peer is noticed."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, linger_ms)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
    return s


def pack(header: dict, *arrays: np.ndarray) -> list:
    """Frames for ``send_multipart(..., copy=False)``: header then each array's buffer, no copy."""
    header = {"v": WIRE_VERSION, **header}
    if arrays:
        header["arrays"] = [[list(a.shape), a.dtype.name] for a in arrays]
    return [msgpack.packb(header, use_bin_type=True)] + [memoryview(np.ascontiguousarray(a)) for a in arrays]


def unpack(frames: list) -> tuple[dict, list[np.ndarray]]:
    """Validate a received multipart message; arrays are read-only views on the received buffers."""
    if not frames:
        raise MessageError("empty message")
    raw = frames[0].buffer if isinstance(frames[0], zmq.Frame) else frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for bad input
        raise MessageError(f"header is not msgpack: {e}") from e
    if not isinstance(header, dict):
        raise MessageError(f"header must be a map, got {type(header).__name__}")
    if header.get("v") != WIRE_VERSION:
        raise MessageError(f"wire version {header.get('v')!r}; this stage speaks {WIRE_VERSION}")
    if header.get("kind") not in KINDS:
        raise MessageError(f"unknown message kind {header.get('kind')!r}")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1:
        raise MessageError(f"header announces {len(specs) if isinstance(specs, list) else '?'} array(s), "
                           f"message has {len(frames) - 1}")
    return header, [_array(spec, f) for spec, f in zip(specs, frames[1:])]


def _array(spec, frame) -> np.ndarray:
    try:
        shape, dtype = [int(n) for n in spec[0]], DTYPES[spec[1]]
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise MessageError(f"bad array description {spec!r}") from e
    buf = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
    if any(n < 0 for n in shape) or int(np.prod(shape)) * np.dtype(dtype).itemsize != len(buf):
        raise MessageError(f"array {shape} {spec[1]} does not match its {len(buf)}-byte frame")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def field(header: dict, key: str, kind: type | tuple):
    """A header field of the expected type, or MessageError naming it."""
    value = header.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"header field '{key}' missing or not {getattr(kind, '__name__', kind)}")
    return value


def check_items(items) -> list[dict]:
    """Per-frame records inside batch/scored messages: camera, seq, capture times (mono, wall), and
    the part id where the source has one (str; absent or nil otherwise)."""
    if not isinstance(items, list):
        raise MessageError("items must be a list")
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("camera"), str)
                and isinstance(item.get("seq"), int) and not isinstance(item.get("seq"), bool)
                and all(isinstance(item.get(k), (int, float)) and not isinstance(item.get(k), bool)
                        for k in ("mono", "wall"))
                and isinstance(item.get("part_id"), (str, type(None)))):
            raise MessageError(f"bad frame record {str(item)[:80]}")
    return items
