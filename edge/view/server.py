"""The operator's screen over HTTP (stdlib only): the page, live state by server-sent events, the
JPEGs, and the camera API. Served from a thread pool in the edge-run supervisor (edge/run.py).

    GET  /                     the page (edge/view/page.py: one file, no plug-in, no outside asset)
    GET  /events               server-sent events: the whole state as JSON, newest only, at most
                               MAX_UPDATES_PER_S a second; a ": keep-alive" comment when nothing changes
    GET  /state.json           the same document once
    GET  /frame/<camera>.jpg   the camera's newest frame with its heatmap
    GET  /reject/<n>.jpg       a part in the reject strip (what the model saw, with its heatmap)
    GET  /reject/<n>/full.jpg  the same part's whole camera frame (edge/view/full_frames.py)
    GET|POST /api/v1/cameras, DELETE /api/v1/cameras/<id>    edge/view/cameras.py (token only)

Why server-sent events: one-way (the page changes nothing, so nothing needs to travel back), plain
HTTP that any browser reconnects by itself, and text a person can read with curl. Pictures are
separate URLs the page loads when their version changes (a few per second), not a video stream.

Never in the pipeline's way: every reader gets the newest state when its connection has room for
it, never a queue; a connection that takes no data for SEND_TIMEOUT_S is closed; at most
MAX_CLIENTS live connections. The pipeline's stages never see the view at all (edge/view/preview.py).

Safe by default: without a token the server binds loopback only (edge-run refuses any other
address), checks the Host header (a web page elsewhere cannot reach it through DNS rebinding) and
the camera API is off. With ``--view-token-file`` every request needs the token: the page takes it
once as ``/?token=...`` and keeps it in an HttpOnly, SameSite=Strict cookie; the camera API takes
only ``Authorization: Bearer <token>`` (no cookie: another site's page cannot make the browser send
it). Read-only: GET/HEAD only, apart from the token-guarded camera API.
"""
from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

from edge.view.cameras import CameraApiError, CameraControl
from edge.view.page import PAGE
from edge.view.state import ViewState

log = logging.getLogger("edge.view")

MAX_CLIENTS = 16            # live event streams at once; more are told to come back later (503)
MAX_UPDATES_PER_S = 4.0     # state pushed to one page at most this often
KEEPALIVE_S = 10.0
SEND_TIMEOUT_S = 10.0       # a browser that takes nothing for this long is hung up on
MAX_BODY = 16 << 10
COOKIE = "edge_view_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in a file (not on the command line, where `ps` shows it): its first line, 16+ characters."""
    with open(path, encoding="utf-8") as f:
        token = f.readline().strip()
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,256}", token):
        raise ValueError(f"{path}: the view token must be one line of 16 to 256 letters, digits or ._~+/=- "
                         "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))' > FILE`)")
    return token


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "edge-view/1"
    protocol_version = "HTTP/1.1"
    timeout = 30   # an idle keep-alive connection does not hold a thread forever

    # -- plumbing ------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002
        log.debug("view %s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, code: int, doc: dict, extra: dict | None = None) -> None:
        self._send(code, json.dumps(doc).encode() + b"\n", "application/json", extra)

    def _text(self, code: int, text: str, extra: dict | None = None) -> None:
        self._send(code, text.encode() + b"\n", "text/plain; charset=utf-8", extra)

    def _token_ok(self, allow_cookie: bool) -> bool:
        token = self.server.token
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        if allow_cookie:
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE and hmac.compare_digest(value.encode(), token.encode()):
                    return True
        return False

    def _host_ok(self) -> bool:
        """On loopback, only a loopback Host: a page elsewhere that re-points its own name at 127.0.0.1
        (DNS rebinding) must not read the screen or reach the API through the operator's browser."""
        if not self.server.loopback:
            return True
        host = self.headers.get("Host", "")
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        return name in LOOPBACK_NAMES

    def _gate(self, api: bool) -> bool:
        """True when the request may go on; else the refusal has been sent."""
        if not self._host_ok():
            self._text(403, "refused: this view answers to localhost / 127.0.0.1 only")
            return False
        if api:
            if self.server.token is None:
                self._json(403, {"error": "the camera API is off: start edge-run with --view-token-file FILE and "
                                          "send 'Authorization: Bearer <token>'"})
                return False
            if not self._token_ok(allow_cookie=False):
                self._json(401, {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                           {"WWW-Authenticate": 'Bearer realm="edge-view"'})
                return False
            return True
        if self.server.token is None or self._token_ok(allow_cookie=True):
            return True
        self._text(401, "this view needs its token: open /?token=<the token given to edge-run>",
                   {"WWW-Authenticate": 'Bearer realm="edge-view"'})
        return False

    # -- methods -------------------------------------------------------------------------------------
    def do_HEAD(self):  # noqa: N802
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):  # noqa: N802
        url = urlsplit(self.path)
        path = url.path
        if path == "/" and "token" in parse_qs(url.query):
            # the token arrives once in the URL (a link on the panel); the cookie keeps it, the URL drops it
            given = parse_qs(url.query)["token"][0]
            if not self._host_ok():
                self._text(403, "refused: this view answers to localhost / 127.0.0.1 only")
            elif self.server.token is not None and hmac.compare_digest(given.encode(), self.server.token.encode()):
                self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie":
                           f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"})
            else:
                self._text(401, "wrong token")
            return
        if path.startswith("/api/"):
            if self._gate(api=True):
                self._api("GET", path)
            return
        if not self._gate(api=False):
            return
        state: ViewState = self.server.state
        if path == "/":
            self._send(200, PAGE, "text/html; charset=utf-8", {
                "Content-Security-Policy": "default-src 'none'; img-src 'self'; connect-src 'self'; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"}, head)
        elif path == "/events":
            self._events()
        elif path == "/state.json":
            self._send(200, state.payload()[1], "application/json", head=head)
        elif m := re.fullmatch(r"/frame/([A-Za-z0-9_-]{1,64})\.jpg", path):
            jpeg = state.frame_jpeg(m.group(1))
            self._send(200, jpeg, "image/jpeg", head=head) if jpeg else self._text(404, "no frame yet")
        elif m := re.fullmatch(r"/reject/(\d{1,12})\.jpg", path):
            jpeg = state.reject_jpeg(int(m.group(1)))
            self._send(200, jpeg, "image/jpeg", head=head) if jpeg else self._text(404, "no longer kept")
        elif m := re.fullmatch(r"/reject/(\d{1,12})/full\.jpg", path):
            jpeg = state.reject_full_jpeg(int(m.group(1)))
            self._send(200, jpeg, "image/jpeg", head=head) if jpeg else self._text(404, "no full frame kept")
        else:
            self._text(404, "not found: try /")

    def do_POST(self):  # noqa: N802
        self._write("POST")

    def do_DELETE(self):  # noqa: N802
        self._write("DELETE")

    def do_PUT(self):  # noqa: N802
        self._write("PUT")

    def do_PATCH(self):  # noqa: N802
        self._write("PATCH")

    def _write(self, method: str) -> None:
        path = urlsplit(self.path).path
        if not path.startswith("/api/"):   # the page is read-only: nothing else takes a write
            self._text(405, "read-only: the page changes nothing", {"Allow": "GET, HEAD"})
            return
        if self._gate(api=True):
            self._api(method, path)

    # -- the camera API ------------------------------------------------------------------------------
    def _api(self, method: str, path: str) -> None:
        control: CameraControl | None = self.server.control
        try:
            if control is None:
                raise CameraApiError(503, "no camera control here")
            if path == "/api/v1/cameras" and method == "GET":
                self._json(200, {"cameras": control.cameras()})
            elif path == "/api/v1/cameras" and method == "POST":
                body = self._body()
                unknown = set(body) - {"id", "source", "roi"}
                if unknown:
                    raise CameraApiError(400, f"unknown field(s) {', '.join(sorted(unknown))}: id, source, roi")
                cam = control.add(body.get("id"), body.get("source"), body.get("roi"))
                log.info("view API: camera %s added (%s) from %s", cam["id"], cam["source"], self.client_address[0])
                self._json(201, {"added": cam}, {"Location": f"/api/v1/cameras/{cam['id']}"})
            elif (m := re.fullmatch(r"/api/v1/cameras/([^/]{1,200})", path)) and method == "DELETE":
                out = control.remove(unquote(m.group(1)))
                log.info("view API: camera %s removed from %s", out["removed"], self.client_address[0])
                self._json(200, out)
            elif path.startswith("/api/v1/cameras"):
                self._json(405, {"error": f"{method} {path}: use GET or POST /api/v1/cameras, DELETE "
                                          "/api/v1/cameras/<id>"})
            else:
                self._json(404, {"error": f"{path}: the API is /api/v1/cameras"})
        except CameraApiError as e:
            log.warning("view API: %s %s refused (%d): %s", method, path, e.status, e.reason)
            self._json(e.status, {"error": e.reason})

    def _body(self) -> dict:
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise CameraApiError(400, "bad Content-Length") from None
        if n <= 0 or n > MAX_BODY:
            raise CameraApiError(400 if n <= 0 else 413, f"send a JSON object of at most {MAX_BODY} bytes")
        try:
            doc = json.loads(self.rfile.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise CameraApiError(400, f"the body is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise CameraApiError(400, "send a JSON object: {\"id\": ..., \"source\": ..., \"roi\": [x, y, w, h]}")
        return doc

    # -- server-sent events --------------------------------------------------------------------------
    def _events(self) -> None:
        if not self.server.clients.acquire(blocking=False):
            self._text(503, f"too many open views (at most {MAX_CLIENTS})", {"Retry-After": "5"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")   # the stream's end is the connection's end
            self.end_headers()
            self.close_connection = True
            self.connection.settimeout(SEND_TIMEOUT_S)   # a frozen browser is hung up on, not waited for
            self.wfile.write(b"retry: 1000\n\n")
            version = -1
            while not self.server.closing:
                got = self.server.state.wait_newer(version, KEEPALIVE_S)
                if self.server.closing:
                    break
                if got is None:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    version, payload = got
                    self.wfile.write(b"data: " + payload + b"\n\n")
                self.wfile.flush()
                time.sleep(1.0 / MAX_UPDATES_PER_S)   # newer states meanwhile are skipped, not queued
        except (OSError, socket.timeout):
            pass   # the browser went away or stopped reading
        finally:
            self.server.clients.release()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):   # a browser hanging up is not news
        log.debug("view: connection from %s ended with an error", client_address)


class ViewServer:
    """The page and the camera API on ``host:port`` (port 0: a free one, read ``.port`` after start)."""

    def __init__(self, host: str, port: int, state: ViewState, control: CameraControl | None,
                 token: str | None) -> None:
        if token is None and not is_loopback(host):
            raise ValueError(f"the view binds {host}, which is not loopback: give --view-token-file (every request "
                             "then needs the token), or bind 127.0.0.1")
        self.host, self.port, self.state, self.control, self.token = host, int(port), state, control, token
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            srv = _Server((self.host, self.port), _Handler)
        except OSError as e:
            raise OSError(e.errno, f"cannot serve the view on {self.host}:{self.port}: {e.strerror} (another process "
                                   "on that port? choose another --view-port)") from e
        srv.state, srv.control, srv.token = self.state, self.control, self.token
        srv.loopback, srv.closing = is_loopback(self.host), False
        srv.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._server = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"edge-view-http:{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.closing = True
        self.state.tick()   # wakes the event streams so they end
        srv.shutdown()
        srv.server_close()
        if self._thread is not None:
            self._thread.join(5)
