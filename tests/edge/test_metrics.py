"""edge/metrics.py: counters, latency windows, rates, Prometheus text, the HTTP endpoint."""
import math
import re
import socket
import threading
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest

from edge.metrics import (CAPTURE_TO_ALERT, PROMETHEUS_CONTENT_TYPE, MetricsServer, StageMetrics,
                          escape_label_value, format_summary, rates, render_prometheus)


# -- a tiny parser of the text exposition format 0.0.4 (no prometheus_client here) ------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(v: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse_prometheus(text: str):
    """-> (types {family: type}, helps {family: text}, samples [(name, {label: value}, float)]);
    asserts the structural rules: one HELP/TYPE per family, before its samples, and every
    sample inside the family most recently declared."""
    assert text.endswith("\n")
    types, helps, samples = {}, {}, []
    current = None
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            fam, _, help_text = line[7:].partition(" ")
            assert fam not in helps, f"second HELP for {fam}"
            helps[fam] = help_text
        elif line.startswith("# TYPE "):
            fam, kind = line[7:].split(" ")
            assert fam not in types, f"second TYPE for {fam}"
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped")
            types[fam] = kind
            current = fam
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, _, label_text, value = m.groups()
            labels, pos = {}, 0
            while label_text and pos < len(label_text):
                lm = _LABEL.match(label_text, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
            assert current is not None and (name == current or
                                            (types[current] == "summary" and name in (current + "_sum", current + "_count"))), \
                f"sample {name} outside its family ({current})"
            samples.append((name, labels, float(value)))
    return types, helps, samples


def sample(samples, name, **labels):
    hits = [v for n, lab, v in samples if n == name and lab == labels]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


# -- StageMetrics ----------------------------------------------------------------------------
def test_counters_per_camera_and_stage_wide():
    m = StageMetrics("capture")
    m.inc("frames_in", "cam0")
    m.inc("frames_in", "cam0", n=4)
    m.inc("frames_in", "cam1")
    m.inc("malformed")
    s = m.snapshot()
    assert s["stage"] == "capture" and isinstance(s["pid"], int) and isinstance(s["time"], float)
    assert s["counters"] == {"frames_in": {"cam0": 5, "cam1": 1}, "malformed": {"": 1}}
    assert m.counter("frames_in", "cam0") == 5 and m.counter("malformed") == 1 and m.counter("nope") == 0
    with pytest.raises(ValueError):
        m.inc("frames_in", "cam0", n=-1)


def test_percentiles_match_numpy_and_snapshot_is_plain_msgpack():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 5.0, size=1000)
    m = StageMetrics("alert")
    for v in values:
        m.observe(CAPTURE_TO_ALERT, v, "cam0")
    m.observe(CAPTURE_TO_ALERT, 3.0)
    s = m.snapshot()
    q = s["latency_ms"][CAPTURE_TO_ALERT]["cam0"]
    assert q["p50"] == pytest.approx(np.percentile(values, 50), rel=1e-12)
    assert q["p99"] == pytest.approx(np.percentile(values, 99), rel=1e-12)
    assert q["max"] == pytest.approx(values.max()) and q["count"] == 1000
    assert q["sum"] == pytest.approx(values.sum())
    assert s["latency_ms"][CAPTURE_TO_ALERT][""] == {"p50": 3.0, "p99": 3.0, "max": 3.0, "count": 1, "sum": 3.0}
    # what the stage sends to the supervisor: survives msgpack unchanged (no numpy scalars)
    assert msgpack.unpackb(msgpack.packb(s), raw=False) == s


def test_latency_window_is_bounded_but_count_is_not():
    m = StageMetrics("score", window=100)
    for v in range(1000):          # an early spike leaves the window once 100 newer samples came
        m.observe("infer", 10_000.0 if v < 5 else float(v))
    q = m.snapshot()["latency_ms"]["infer"][""]
    recent = np.arange(900, 1000, dtype=float)
    assert q["count"] == 1000
    assert q["max"] == 999.0
    assert q["p50"] == pytest.approx(np.percentile(recent, 50))
    assert len(m._samples["infer"][""]) == 100
    with pytest.raises(ValueError):
        StageMetrics("x", window=0)


def test_non_finite_latency_is_counted_not_recorded():
    m = StageMetrics("alert")
    m.observe("e2e", float("nan"), "cam0")
    m.observe("e2e", float("inf"), "cam0")
    m.observe("e2e", 5.0, "cam0")
    s = m.snapshot()
    assert s["latency_ms"]["e2e"]["cam0"]["count"] == 1
    assert s["counters"]["latency_rejected"] == {"cam0": 2}


def test_threads_count_every_increment():
    m = StageMetrics("capture")

    def work():
        for _ in range(5000):
            m.inc("frames_in", "cam0")
            m.observe("read", 1.0, "cam0")
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    s = m.snapshot()
    assert s["counters"]["frames_in"]["cam0"] == 20000
    assert s["latency_ms"]["read"]["cam0"]["count"] == 20000


# -- rates ----------------------------------------------------------------------------------
def _snap(stage="capture", pid=1, t=0.0, **counters):
    return {"stage": stage, "pid": pid, "time": t, "counters": counters, "latency_ms": {}}


def test_rates_between_two_snapshots():
    prev = _snap(t=10.0, frames_in={"cam0": 100, "cam1": 50})
    cur = _snap(t=12.0, frames_in={"cam0": 160, "cam1": 50, "cam2": 10}, dropped={"": 4})
    assert rates(prev, cur) == {"frames_in": {"cam0": 30.0, "cam1": 0.0, "cam2": 5.0}, "dropped": {"": 2.0}}


def test_rates_after_a_restart_or_reset_count_from_zero():
    prev = _snap(pid=1, t=10.0, frames_in={"cam0": 1000})
    assert rates(prev, _snap(pid=2, t=12.0, frames_in={"cam0": 20})) == {"frames_in": {"cam0": 10.0}}
    assert rates(prev, _snap(pid=1, t=12.0, frames_in={"cam0": 20})) == {"frames_in": {"cam0": 10.0}}
    assert rates(None, prev) == {}
    assert rates(prev, _snap(t=10.0, frames_in={"cam0": 1001})) == {}   # no time passed
    with pytest.raises(ValueError):
        rates(prev, _snap(stage="score", t=11.0))


def test_rates_of_real_snapshots():
    m = StageMetrics("capture")
    m.inc("frames_in", "cam0", 10)
    a = m.snapshot()
    m.inc("frames_in", "cam0", 30)
    b = m.snapshot()
    r = rates(a, b)["frames_in"]["cam0"]
    assert r == pytest.approx(30 / (b["time"] - a["time"]))


# -- Prometheus -------------------------------------------------------------------------------
def _two_stages():
    cap = StageMetrics("capture")
    cap.inc("frames_in", "cam0", 7)
    cap.inc("frames_in", "cam1", 3)
    cap.inc("dropped", "cam1", 2)
    alert = StageMetrics("alert")
    alert.inc("frames_in", "cam0", 5)
    alert.inc("malformed")
    samples = [1.0, 2.0, 3.0, 4.0, 100.0]
    for v in samples:
        alert.observe(CAPTURE_TO_ALERT, v, "cam0")
    return {"capture": cap.snapshot(), "alert": alert.snapshot()}, samples


def test_prometheus_text_parses_into_the_expected_samples():
    snaps, values = _two_stages()
    types, helps, samples = parse_prometheus(render_prometheus(snaps))
    assert types == {"edge_frames_in_total": "counter", "edge_dropped_total": "counter",
                     "edge_malformed_total": "counter", "edge_latency_ms": "summary",
                     "edge_latency_ms_max": "gauge"}
    assert set(helps) == set(types) and all(helps.values())
    assert sample(samples, "edge_frames_in_total", stage="capture", camera="cam0") == 7
    assert sample(samples, "edge_frames_in_total", stage="capture", camera="cam1") == 3
    assert sample(samples, "edge_frames_in_total", stage="alert", camera="cam0") == 5
    assert sample(samples, "edge_dropped_total", stage="capture", camera="cam1") == 2
    assert sample(samples, "edge_malformed_total", stage="alert") == 1   # stage-wide: no camera label
    lat = dict(stage="alert", camera="cam0")
    assert sample(samples, "edge_latency_ms", **lat, quantile="0.5") == pytest.approx(np.percentile(values, 50))
    assert sample(samples, "edge_latency_ms", **lat, quantile="0.99") == pytest.approx(np.percentile(values, 99))
    assert sample(samples, "edge_latency_ms_count", **lat) == 5
    assert sample(samples, "edge_latency_ms_sum", **lat) == pytest.approx(110.0)
    assert sample(samples, "edge_latency_ms_max", **lat) == 100.0
    assert len(samples) == 5 + 4 + 1
    assert render_prometheus({}) == ""


def test_latency_names_get_one_ms_suffix():
    m = StageMetrics("score")
    m.observe("infer", 2.0)
    m.observe("preprocess_ms", 1.0, "cam0")
    types, _, samples = parse_prometheus(render_prometheus({"score": m.snapshot()}))
    assert types == {"edge_infer_ms": "summary", "edge_infer_ms_max": "gauge",
                     "edge_preprocess_ms": "summary", "edge_preprocess_ms_max": "gauge"}
    assert sample(samples, "edge_infer_ms", stage="score", quantile="0.99") == 2.0
    assert sample(samples, "edge_preprocess_ms_count", stage="score", camera="cam0") == 1


def test_label_values_and_odd_names_are_escaped():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    m = StageMetrics("x")
    cam = 'dock "B"\\line\n2'
    m.inc("frames in/odd", cam, 3)
    text = render_prometheus({'st"age': m.snapshot()})
    assert "\n" not in text.rstrip("\n").split("edge_frames_in_odd_total{")[1].split("}")[0]
    _, _, samples = parse_prometheus(text)
    assert sample(samples, "edge_frames_in_odd_total", stage='st"age', camera=cam) == 3


def test_non_finite_values_use_the_format_spelling():
    snap = {"stage": "s", "pid": 1, "time": 0.0, "counters": {},
            "latency_ms": {"x": {"": {"p50": float("nan"), "p99": float("inf"), "max": float("-inf"), "count": 0}}}}
    text = render_prometheus({"s": snap})
    assert 'edge_x_ms{stage="s",quantile="0.5"} NaN' in text
    assert 'edge_x_ms{stage="s",quantile="0.99"} +Inf' in text
    assert 'edge_x_ms_max{stage="s"} -Inf' in text
    types, _, samples = parse_prometheus(text)
    assert math.isnan(sample(samples, "edge_x_ms", stage="s", quantile="0.5"))


def test_format_summary_lines():
    snaps, _ = _two_stages()
    first = format_summary(snaps, None)
    assert "capture" in first and "in 10" in first and "dropped 2" in first and "malformed 1" in first
    assert [line.split()[0] for line in first.splitlines()] == ["capture", "alert", "capture->alert"]  # pipeline order
    later = {k: dict(v, time=v["time"] + 2.0, counters={n: {c: x * 3 for c, x in per.items()}
                                                        for n, per in v["counters"].items()})
             for k, v in snaps.items()}
    text = format_summary(later, snaps)
    capture_line = next(line for line in text.splitlines() if line.startswith("capture"))
    assert "in    10.0/s" in capture_line and "dropped 6 (2.0/s)" in capture_line
    e2e = next(line for line in text.splitlines() if line.startswith("capture->alert"))
    assert "cam0" in e2e and "p50     3.0 ms" in e2e and "n=5" in e2e


# -- HTTP ---------------------------------------------------------------------------------------
def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


def test_metrics_server_over_loopback_404_and_close_frees_the_port():
    snaps, _ = _two_stages()
    calls = []

    def get_snapshots():
        calls.append(1)
        return snaps
    server = MetricsServer(0, get_snapshots, host="127.0.0.1")
    server.start()
    port = server.port
    try:
        assert port > 0
        status, ctype, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and ctype == PROMETHEUS_CONTENT_TYPE
        assert body == render_prometheus(snaps) and calls
        _, _, samples = parse_prometheus(body)
        assert sample(samples, "edge_frames_in_total", stage="capture", camera="cam0") == 7
        assert _get(f"http://127.0.0.1:{port}/metrics?x=1")[0] == 200
        for path in ("/", "/metricsx", "/favicon.ico"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(f"http://127.0.0.1:{port}{path}")
            assert e.value.code == 404
    finally:
        server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/metrics")
    # the port is free: a plain socket binds it (SO_REUSEADDR only for connections in TIME_WAIT)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.close()
    with MetricsServer(port, lambda: {}, host="127.0.0.1") as again:
        assert again.port == port
        assert _get(f"http://127.0.0.1:{port}/metrics")[2] == ""


def test_a_failing_snapshot_source_gives_500_not_a_dead_server():
    def boom():
        raise RuntimeError("stage table locked")
    with MetricsServer(0, boom, host="127.0.0.1") as server:
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"http://127.0.0.1:{server.port}/metrics")
        assert e.value.code == 500
        with pytest.raises(urllib.error.HTTPError) as e:   # still serving
            _get(f"http://127.0.0.1:{server.port}/other")
        assert e.value.code == 404


def test_port_in_use_is_a_clear_error():
    with MetricsServer(0, lambda: {}, host="127.0.0.1") as first:
        with pytest.raises(OSError, match="metrics-port"):
            MetricsServer(first.port, lambda: {}, host="127.0.0.1").start()
