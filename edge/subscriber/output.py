"""What ``edge-alerts`` prints and saves: human lines, JSON lines, thumbnails, the summary."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.subscriber.client import AlertSubscriber

JPEG_MAGIC = b"\xff\xd8\xff"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_name(s: str) -> str:
    s = _UNSAFE.sub("_", s)
    return "_" + s[1:] if s.startswith(".") else (s or "_")


def thumbnail_name(alert: dict) -> str:
    """``<node>_<camera>_<frame_seq>.jpg``, characters outside [A-Za-z0-9._-] replaced by '_'."""
    return f"{_safe_name(alert['node'])}_{_safe_name(alert['camera'])}_{alert['frame_seq']}.jpg"


def save_thumbnail(alert: dict, directory: str | os.PathLike) -> Path | None:
    """Write the alert's JPEG thumbnail into ``directory`` (atomically: tmp file + rename);
    None when the alert has none. ValueError for bytes that are not a JPEG."""
    data = alert.get("thumbnail_jpeg")
    if not data:
        return None
    if not data.startswith(JPEG_MAGIC):
        raise ValueError(f"thumbnail of {alert['node']}/{alert['camera']} frame {alert['frame_seq']} "
                         "is not a JPEG (no FF D8 FF start marker)")
    path = Path(directory) / thumbnail_name(alert)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def json_default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return len(o)  # any bytes nested in a future field: its length, like thumbnail_jpeg
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _json_clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None  # JSON has no NaN / Infinity
    if isinstance(o, dict):
        return {k: _json_clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_clean(v) for v in o]
    return o


def alert_to_json(alert: dict, **extra) -> str:
    """One JSON line: the alert's fields, except ``thumbnail_jpeg`` (bytes) which becomes
    ``thumbnail_jpeg_bytes`` (its length, or null); non-finite numbers become null; ``part_id``
    is always there (null from a source without part ids, and from older nodes that lack the
    key); ``extra`` (e.g. ``thumbnail_path``, ``received_wall``) is appended."""
    d = {k: v for k, v in alert.items() if k != "thumbnail_jpeg"}
    d.setdefault("part_id", None)
    thumb = alert.get("thumbnail_jpeg")
    d["thumbnail_jpeg_bytes"] = None if thumb is None else len(thumb)
    d.update(extra)
    return json.dumps(_json_clean(d), default=json_default, allow_nan=False, separators=(",", ":"))


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def format_alert(alert: dict) -> str:
    """One human line: capture time, node, camera, frame (and part, where known), verdict, score vs
    threshold, regions, latency."""
    score = alert["score"]
    if score is None or not math.isfinite(score):
        cmp = f"score=-/{alert['threshold']:.4g}"
    else:  # flagged when strictly above the threshold (edge/verdict.py)
        cmp = f"score={score:.4g}{'>' if score > alert['threshold'] else '<='}{alert['threshold']:.4g}"
    part = f" part={alert['part_id']!r}" if alert.get("part_id") is not None else ""
    line = (f"{_iso(alert['capture_wall'])} node={alert['node']} cam={alert['camera']} "
            f"frame={alert['frame_seq']}{part} {alert['verdict']:<12} {cmp} regions={len(alert['regions'])} "
            f"latency={alert['latency_ms']:.1f}ms")
    if alert["reason"]:
        line += f" reason={alert['reason']!r}"
    if alert["is_simulated"]:
        line += " SIMULATED"
    return line


def format_summary(sub: AlertSubscriber, elapsed_s: float, extra: dict | None = None) -> str:
    s = sub.summary()
    lines = [f"edge-alerts summary: {s['received']} alerts in {elapsed_s:.1f} s, {s['malformed']} malformed, "
             f"{s['filtered']} filtered, {s['disconnected']} disconnects",
             f"  delivery: {s['replayed']} replayed, {s['duplicates']} duplicates dropped; missed alerts: "
             f"{s['gaps_opened']} waited for, {s['gaps_recovered']} recovered late, {s['gaps_open']} still missing, "
             f"{s['gaps_lost']} lost; {s['journal_resets']} journal resets (new epochs), "
             f"{s.get('seq_conflicts', 0)} reused alert_seq delivered as new"]
    for title, counts in (("verdict", s["by_verdict"]), ("camera", s["by_camera"]), ("node", s["by_node"])):
        if counts:
            lines.append(f"  per {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for k, v in (extra or {}).items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)
