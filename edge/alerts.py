"""The alert: one msgpack map per verdict, published on the alert stage's PUB socket.

Wire message (ZeroMQ multipart, two frames):

    [topic, body]
    topic = b"<verdict>/<camera>"      e.g. b"NotOK/line1-top" (SUB prefix filters by verdict)
    body  = msgpack map, schema "edge-inspect/alert", version ALERT_SCHEMA_VERSION

docs/alerts.md is the integrator's copy of this schema (any language can read it).
Field names follow OPC 40001-101 (Machinery Result Transfer) where they fit:
``verdict`` takes its ResultEvaluation values OK / NotOK / NotDecidable.

NotDecidable is published, never swallowed, when a frame could not be judged
(unreadable frame, non-finite score, camera blind): the line must treat the part
as not inspected, which is the fail-safe reading.
numpy-free on purpose: a subscriber needs only msgpack.
"""
from __future__ import annotations

import math

import msgpack

ALERT_SCHEMA = "edge-inspect/alert"
ALERT_SCHEMA_VERSION = 1
VERDICTS = ("OK", "NotOK", "NotDecidable")
# An alert with a thumbnail stays well below this; subscribers bound their sockets with it.
MAX_ALERT_BYTES = 1 << 20

# Optional for readers (added after version 1 first shipped; absent from older nodes' alerts).
# journal_id: the node's alert journal (edge/journal.py) that numbers alert_seq; a new id means the
# numbering started over (a new or reset journal), so (node, journal_id, alert_seq) names an alert.
# part_id: which part the frame showed, where the source knows it (an image folder: the file name);
# nil for cameras and video files. OPC 40001-101 ResultMetaData PartId; the MES traces a verdict by it.
OPTIONAL = {"journal_id": (str, type(None)), "part_id": (str, type(None))}

REQUIRED = {
    "schema": str, "v": int, "node": str, "alert_seq": int, "camera": str, "frame_seq": int,
    "capture_wall": float, "published_wall": float, "latency_ms": float, "verdict": str,
    "score": (float, type(None)), "normalised_score": (float, type(None)), "threshold": float,
    "model_version": str, "regions": list, "reason": (str, type(None)),
    "thumbnail_jpeg": (bytes, type(None)), "is_simulated": bool,
}


class AlertError(ValueError):
    """A message that is not a valid alert of a version this code reads."""


def make_alert(*, node: str, alert_seq: int, camera: str, frame_seq: int, capture_wall: float,
               published_wall: float, latency_ms: float, verdict: str, score: float | None,
               normalised_score: float | None, threshold: float, model_version: str,
               regions: list[dict] | None = None, reason: str | None = None,
               thumbnail_jpeg: bytes | None = None, is_simulated: bool = False,
               journal_id: str | None = None, part_id: str | None = None) -> dict:
    """An alert map with every field of the schema (see module doc and docs/alerts.md)."""
    if verdict not in VERDICTS:
        raise AlertError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    alert = {
        "schema": ALERT_SCHEMA, "v": ALERT_SCHEMA_VERSION, "node": node, "alert_seq": int(alert_seq),
        "camera": camera, "frame_seq": int(frame_seq), "capture_wall": float(capture_wall),
        "published_wall": float(published_wall), "latency_ms": float(latency_ms), "verdict": verdict,
        "score": None if score is None else float(score),
        "normalised_score": None if normalised_score is None else float(normalised_score),
        "threshold": float(threshold), "model_version": model_version, "regions": list(regions or []),
        "reason": reason, "thumbnail_jpeg": thumbnail_jpeg, "is_simulated": bool(is_simulated),
        "journal_id": journal_id, "part_id": part_id,
    }
    validate_alert(alert)
    return alert


def alert_topic(alert: dict) -> bytes:
    return f"{alert['verdict']}/{alert['camera']}".encode()


def encode_alert(alert: dict) -> list[bytes]:
    """The two frames to send: [topic, msgpack body]."""
    return [alert_topic(alert), msgpack.packb(alert, use_bin_type=True)]


def decode_alert(frames: list[bytes]) -> dict:
    """Parse and validate ``[topic, body]``; AlertError names what is wrong."""
    if len(frames) != 2:
        raise AlertError(f"an alert has 2 frames [topic, body], got {len(frames)}")
    alert = decode_alert_body(frames[1])
    if bytes(frames[0]) != alert_topic(alert):
        raise AlertError(f"topic {bytes(frames[0])!r} does not match the body ({alert_topic(alert)!r})")
    return alert


def decode_alert_body(body: bytes) -> dict:
    """Parse and validate the body frame alone (e.g. an alert replayed from a node's journal)."""
    body = bytes(body)
    if len(body) > MAX_ALERT_BYTES:
        raise AlertError(f"alert body of {len(body)} bytes exceeds {MAX_ALERT_BYTES}")
    try:
        alert = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types (ExtraData, FormatError, ValueError...)
        raise AlertError(f"alert body is not msgpack: {e}") from e
    validate_alert(alert)
    return alert


def validate_alert(alert) -> None:
    if not isinstance(alert, dict):
        raise AlertError(f"alert must be a map, got {type(alert).__name__}")
    if alert.get("schema") != ALERT_SCHEMA:
        raise AlertError(f"not an edge-inspect alert (schema {alert.get('schema')!r})")
    if alert.get("v") != ALERT_SCHEMA_VERSION:
        raise AlertError(f"alert schema version {alert.get('v')!r}; this code reads {ALERT_SCHEMA_VERSION}")
    for key, kind in REQUIRED.items():
        if key not in alert:
            raise AlertError(f"alert lacks '{key}'")
        value = alert[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue  # msgpack keeps 3.0 a float, but another language's writer may send an integer
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise AlertError(f"alert field '{key}' has type {type(value).__name__}")
    for key, kind in OPTIONAL.items():
        if not isinstance(alert.get(key), kind):
            raise AlertError(f"alert field '{key}' has type {type(alert[key]).__name__}")
    if alert["verdict"] not in VERDICTS:
        raise AlertError(f"unknown verdict {alert['verdict']!r}")
    if not math.isfinite(alert["threshold"]):   # NaN: "score > threshold" is never true, every part OK
        raise AlertError(f"alert threshold must be finite, got {alert['threshold']}")
    if alert["verdict"] != "NotDecidable" and (alert["score"] is None or not math.isfinite(alert["score"])):
        raise AlertError(f"a {alert['verdict']} alert needs a finite score")
