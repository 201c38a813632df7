"""ZeroMQ CURVE on the channels that leave a host: encryption, server authentication, and an
allow-list of client keys. docs/security.md is the operator's guide; ``edge-keys`` makes keys.

Who is the server: the side that **binds** (the node's alert XPUB and replay ROUTER, the
frame PULL of a stage fed from another host). It holds a secret key and an allow-list
directory of client public keys. The side that **connects** (edge-alerts' SUB/DEALER, a
capture stage's PUSH on another host) holds its own secret key and the server's public key,
so it talks only to the node that holds the matching secret (no impostor node).

Keys are ZeroMQ certificate files (``zmq.auth`` format, as czmq and pyzmq write them):
``NAME.key`` holds the public key (share it), ``NAME.key_secret`` both keys (mode 0600,
never leaves its machine). An allow-list is a directory of ``*.key`` files.

Wiring, per stage process (each has its own zmq.Context; ZAP is per context)::

    authority = CurveAuthority(ctx, cfg.curve_allow, log)       # before any CURVE socket binds
    secure_server(xpub, cfg.curve_secret, authority=authority)  # before bind()
    xpub.bind(addr)
    ...
    xpub.close(); authority.close()                             # sockets first, then the authority

    client = secure_client(sub, args.curve_secret, args.curve_server_key)   # before connect()

ZeroMQ quirks this module exists for (libzmq 4.3.5, pyzmq 27, checked in tests/edge/test_security.py):

- A CURVE server consults ZAP (RFC 27) only if a handler is bound in *its context*; without one
  it accepts ANY client key. ZMQ_ZAP_ENFORCE_DOMAIN, which would refuse instead, is draft API
  and has no effect in the released libzmq. Hence ``secure_server`` demands a running authority
  of the socket's own context.
- A NULL (plaintext) socket without ZAP_DOMAIN never reaches ZAP, so local ipc:// stages in the
  same context are untouched by the authority.
- After a refusal (ZAP 400) or a mechanism mismatch libzmq does NOT re-dial that endpoint by
  itself; after a wrong server key it re-dials forever (every RECONNECT_IVL).
- The server sees a client's key only through ZAP; the client learns of a refusal only through
  its socket monitor (EVENT_HANDSHAKE_FAILED_*). Both are turned into plain-words log lines here.
"""
from __future__ import annotations

import argparse
import collections
import errno
import logging
import os
import stat
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("edge.security")

ZAP_DOMAIN = "edge-inspect"
PUBLIC_SUFFIX = ".key"            # zmq.auth / czmq convention; load_certificates globs "*.key"
SECRET_SUFFIX = ".key_secret"
ZAP_VERSION = b"1.0"
KEY_Z85_LEN = 40                  # a 32-byte Curve25519 key in Z85


class SecurityError(ValueError):
    """A key file, allow-list or option combination that cannot be used; the message says what to do."""


class KeyPair(NamedTuple):
    public: bytes   # Z85, 40 bytes
    secret: bytes   # Z85, 40 bytes


# -- key files ---------------------------------------------------------------------------
def read_key_file(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a ZeroMQ certificate file, both Z85; SecurityError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise SecurityError(f"{path}: no such key file (make a keypair with: edge-keys generate NAME --dir DIR)")
    if not path.is_file():
        raise SecurityError(f"{path} is not a file: give a key file (NAME.key or NAME.key_secret)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except PermissionError as e:
        raise SecurityError(f"cannot read {path}: {e.strerror} (run as the user that owns the key)") from e
    except (ValueError, OSError) as e:
        raise SecurityError(f"{path} is not a ZeroMQ CURVE key file ({e}); make one with edge-keys generate") from e
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _valid_z85_key(key):
            raise SecurityError(f"{path}: its {what} key is not a 40-character Z85 key (file damaged or edited?)")
    return public, secret


def _valid_z85_key(key: bytes) -> bool:
    if len(key) != KEY_Z85_LEN:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def check_private(path: str | os.PathLike) -> None:
    """Refuse a secret key file that other users can read or write (ssh does the same)."""
    path = Path(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecurityError(f"{path} has mode {mode:04o}: other users can read or replace this secret key. "
                            f"Fix: chmod 600 {path}")


def load_secret(path: str | os.PathLike) -> KeyPair:
    """Own keypair from a ``NAME.key_secret`` file (mode 0600 required)."""
    path = Path(path)
    public, secret = read_key_file(path)
    if secret is None:
        raise SecurityError(f"{path} holds only a public key; give the secret file that edge-keys generate "
                            f"wrote beside it ({_secret_name(path)})")
    check_private(path)
    if zmq.curve_public(secret) != public:
        raise SecurityError(f"{path}: its public key does not belong to its secret key (file damaged or edited?)")
    return KeyPair(public, secret)


def load_public(path: str | os.PathLike) -> bytes:
    """A peer's public key (Z85) from a ``NAME.key`` file; refuses a secret key file."""
    path = Path(path)
    public, secret = read_key_file(path)
    if secret is not None:
        raise SecurityError(f"{path} holds a SECRET key: give the public key file ({_public_name(path)}) instead. "
                            "A secret key file never leaves the machine it was made on")
    return public


def _public_name(path: Path) -> Path:
    return path.with_name(path.name[:-len(SECRET_SUFFIX)] + PUBLIC_SUFFIX) if path.name.endswith(SECRET_SUFFIX) \
        else path


def _secret_name(path: Path) -> Path:
    return path.with_name(path.name + "_secret") if path.name.endswith(PUBLIC_SUFFIX) else path


def generate_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret`` (0600); never overwrites.

    The files are made in a private temporary directory and linked into place, so the secret
    is never readable by others, not even for a moment, and an existing key is never replaced."""
    _check_name(name)
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_file, secret_file = directory / (name + PUBLIC_SUFFIX), directory / (name + SECRET_SUFFIX)
    for f in (public_file, secret_file):
        if f.exists():
            raise SecurityError(f"{f} already exists: a key is never overwritten (remove it first, or choose "
                                "another name; see key rotation in docs/security.md)")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".edge-keys-") as tmp:   # mode 0700
        pub_tmp, sec_tmp = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
        os.chmod(sec_tmp, 0o600)
        os.chmod(pub_tmp, 0o644)
        linked = []
        try:
            for src, dst in ((pub_tmp, public_file), (sec_tmp, secret_file)):
                os.link(src, dst)        # fails if dst exists: no race with a concurrent generate
                linked.append(dst)
        except FileExistsError as e:
            for f in linked:
                f.unlink()
            raise SecurityError(f"{e.filename2 or e.filename} appeared while writing: not overwritten") from e
    return public_file, secret_file


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or any(c not in _NAME_CHARS for c in name):
        raise SecurityError(f"key name {name!r}: use letters, digits, '.', '_' and '-' (e.g. line1-edge)")


def allow_key(public_file: str | os.PathLike, allow_dir: str | os.PathLike, name: str | None = None) -> Path:
    """Copy a client's public key file into a node's allow-list directory as ``NAME.key``.

    Refuses secret key files and a different key already under that name; a key already
    allowed (under any name) is left as it is. Running nodes see the change at the next
    connection (CurveAuthority re-reads the directory when it changes)."""
    src = Path(public_file)
    key = load_public(src)
    allow_dir = Path(allow_dir)
    name = name or (src.name[:-len(PUBLIC_SUFFIX)] if src.name.endswith(PUBLIC_SUFFIX) else src.name)
    _check_name(name)
    allow_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    dst = allow_dir / (name + PUBLIC_SUFFIX)
    allowed = read_allow_list(allow_dir)
    if key in allowed:
        return allow_dir / (allowed[key] + PUBLIC_SUFFIX)
    if dst.exists():
        raise SecurityError(f"{dst} already holds another key: choose another name (--name) or remove it first")
    data = src.read_bytes()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return dst


def read_allow_list(allow_dir: str | os.PathLike, logger: logging.Logger | None = None) -> dict[bytes, str]:
    """Public key (Z85) -> name (file name without .key) of every ``*.key`` file in ``allow_dir``.

    A file that is not a key file is skipped with a warning; one that holds a secret key is
    used for its public key, with a warning (a secret key does not belong in an allow-list)."""
    allow_dir = Path(allow_dir)
    keys: dict[bytes, str] = {}
    for f in sorted(allow_dir.glob("*" + PUBLIC_SUFFIX)):
        try:
            public, secret = read_key_file(f)
        except SecurityError as e:
            (logger or log).warning("allow-list: skipped %s", e)
            continue
        if secret is not None:
            (logger or log).warning("allow-list: %s holds a SECRET key; only public keys belong in an allow-list "
                                    "(its public key is used; move the file away and rotate that key)", f)
        keys.setdefault(public, f.name[:-len(PUBLIC_SUFFIX)])
    return keys


def check_allow_dir(allow_dir: str | os.PathLike) -> Path:
    """An allow-list directory that exists and that not every user may write to."""
    allow_dir = Path(allow_dir)
    if not allow_dir.is_dir():
        raise SecurityError(f"allow-list directory {allow_dir} does not exist: create it and add the clients' "
                            f"public keys with: edge-keys allow CLIENT.key --allow-dir {allow_dir}")
    mode = stat.S_IMODE(allow_dir.stat().st_mode)
    if mode & 0o002:
        raise SecurityError(f"allow-list directory {allow_dir} is writable by every user (mode {mode:04o}): "
                            f"anyone on this host could allow their own key. Fix: chmod 755 {allow_dir}")
    return allow_dir


# -- server side: the ZAP handler -----------------------------------------------------------
class Refusal(NamedTuple):
    client_key: str   # Z85 of the client's public key; "" when the client offered none (not CURVE)
    address: str      # the client's IP address as ZAP reports it
    reason: str


class CurveAuthority(ThreadAuthenticator):
    """The ZAP handler of one zmq.Context: admits a CURVE client only if its public key is in
    ``allow_dir`` (a directory of ``*.key`` files), refuses everything else, and says so.

    - Every refusal is counted (``refused``, ``refused_keys``), passed to ``on_refused`` (called
      in the authenticator thread; keep it short, e.g. ``lambda r: metrics.inc("curve_refused")``)
      and logged as a WARNING that names the key, the address and how to allow it: at once for a
      key not seen lately, then at most once per ``log_interval_s`` per key, and at most
      ``max_lines`` lines per interval in all (a flood of fresh keys cannot flood the log).
    - The directory is re-read whenever its content changes (checked at each handshake: a few
      stat calls), so ``edge-keys allow`` takes effect at the next connection without restart;
      ``reload()`` forces it (e.g. from a SIGHUP handler). A removed key only stops *new*
      connections: restart the node to cut sessions already admitted.
    - The User-Id of an admitted client is its key file's name: ``frame.get("User-Id")`` on a
      received message (see :func:`client_name`) says who sent it.

    Start it before any CURVE socket of the context binds, close it after they are closed:
    libzmq admits every client key while no handler is bound.
    """

    def __init__(self, ctx: zmq.Context, allow_dir: str | os.PathLike, log: logging.Logger | None = None, *,
                 on_refused: Callable[[Refusal], None] | None = None, log_interval_s: float = 30.0,
                 max_lines: int = 10, clock: Callable[[], float] = time.monotonic):
        super().__init__(context=ctx, log=logging.getLogger("edge.security.zap"))
        self.report = log or logging.getLogger("edge.security")
        self.allow_dir = check_allow_dir(allow_dir)
        self.on_refused = on_refused
        self.log_interval_s, self.max_lines, self.clock = float(log_interval_s), int(max_lines), clock
        self.refused = 0
        self.allowed = 0
        self.refused_keys: collections.Counter = collections.Counter()   # at most MAX_TRACKED_KEYS keys
        self._lock = threading.RLock()
        self._keys: dict[bytes, str] = {}
        self._signature: tuple | None = None
        self._last_logged: dict[str, tuple[float, int]] = {}   # key -> (when logged, refusals since)
        self._window_start, self._window_lines, self._window_suppressed = clock(), 0, 0
        self._sockets: weakref.WeakSet = weakref.WeakSet()
        self.reload()
        try:
            self.start()
        except zmq.ZMQError as e:
            self.stop()
            raise SecurityError(f"cannot start the CURVE authority: {e} (one CurveAuthority per zmq.Context; "
                                "this context already has a ZAP handler)") from e

    MAX_TRACKED_KEYS = 1000

    # allow-list ---------------------------------------------------------------------
    def _dir_signature(self) -> tuple | None:
        try:
            files = []
            for e in os.scandir(self.allow_dir):
                if e.name.endswith(PUBLIC_SUFFIX):
                    st = e.stat()
                    files.append((e.name, st.st_mtime_ns, st.st_size))
            return self.allow_dir.stat().st_mtime_ns, tuple(sorted(files))
        except OSError:
            return None

    def reload(self) -> int:
        """Re-read the allow-list now; returns the number of keys. A directory that has gone
        away or cannot be read allows nobody (fail closed) until it is back."""
        with self._lock:
            sig = self._dir_signature()
            if sig is None:
                if self._signature is not None:
                    self.report.error("CURVE allow-list %s cannot be read: refusing every client until it can",
                                      self.allow_dir)
                self._keys, self._signature = {}, None
                return 0
            keys = read_allow_list(self.allow_dir, self.report)
            if keys != self._keys or self._signature is None:
                names = ", ".join(sorted(keys.values())) or "none"
                if keys:
                    self.report.info("CURVE allow-list %s: %d key(s): %s", self.allow_dir, len(keys), names)
                else:
                    self.report.warning("CURVE allow-list %s is empty: every client will be refused (add one with "
                                        "edge-keys allow CLIENT.key --allow-dir %s)", self.allow_dir, self.allow_dir)
            self._keys, self._signature = keys, sig
            return len(keys)

    def allowed_keys(self) -> dict[bytes, str]:
        with self._lock:
            if self._dir_signature() != self._signature:
                self.reload()
            return dict(self._keys)

    # ZAP ----------------------------------------------------------------------------
    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """One ZAP request (RFC 27): version, request id, domain, address, routing id, mechanism,
        credentials. Called in the authenticator thread by pyzmq's AuthenticationThread."""
        if len(msg) < 6 or msg[0] != ZAP_VERSION:
            await super().handle_zap_message(msg)   # pyzmq answers malformed requests with 400
            return
        try:
            self._authenticate(msg[1], msg[3], msg[5], msg[6:])
        except Exception:
            # An exception here would end pyzmq's authenticator thread, and with it every future
            # handshake would hang. Refuse this one (fail closed) and carry on.
            self.report.exception("CURVE authority: error while checking a client; refused it")
            try:
                self._reply(msg[1], b"500", b"Internal error")
            except zmq.ZMQError:
                pass

    def _authenticate(self, request_id: bytes, address: bytes, mechanism: bytes, credentials: list[bytes]) -> None:
        addr = address.decode("utf-8", "replace")
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            mech = mechanism.decode("ascii", "replace")
            self._refuse("", addr, f"mechanism {mech} is not accepted here (CURVE only)")
            self._reply(request_id, b"400", b"CURVE only")
            return
        key = z85.encode(credentials[0])
        name = self.allowed_keys().get(key)
        if name is None:
            self._refuse(key.decode("ascii"), addr, "key not in the allow-list")
            self._reply(request_id, b"400", b"Unknown key")
            return
        with self._lock:
            self.allowed += 1
        self.report.debug("admitted CURVE client %s (%s) from %s", name, key.decode("ascii"), addr)
        self._reply(request_id, b"200", b"OK", name.encode("utf-8"))

    def _reply(self, request_id: bytes, code: bytes, text: bytes, user_id: bytes = b"") -> None:
        self.zap_socket.send_multipart([ZAP_VERSION, request_id, code, text, user_id, b""])

    def _refuse(self, key: str, address: str, reason: str) -> None:
        with self._lock:
            self.refused += 1
            if key in self.refused_keys or len(self.refused_keys) < self.MAX_TRACKED_KEYS:
                self.refused_keys[key] += 1
            line = self._should_log(key)
        if line is not None:
            suppressed = f" ({line} more refusal(s) of it since the last report)" if line else ""
            if key:
                self.report.warning(
                    "refused CURVE client %s from %s: %s %s%s. To allow it, copy its public key file into the "
                    "allow-list: edge-keys allow CLIENT.key --allow-dir %s", key, address, reason,
                    self.allow_dir, suppressed, self.allow_dir)
            else:
                self.report.warning("refused a client from %s: %s%s", address, reason, suppressed)
        if self.on_refused is not None:
            try:
                self.on_refused(Refusal(key, address, reason))
            except Exception:   # a counter callback must never stop authentication
                self.report.exception("on_refused callback failed")

    def _should_log(self, key: str) -> int | None:
        """None: stay quiet; else the number of this key's refusals not logged since its last line."""
        now = self.clock()
        if now - self._window_start >= self.log_interval_s:
            if self._window_suppressed:
                self.report.warning("%d further CURVE refusal line(s) suppressed in the last %g s",
                                    self._window_suppressed, self.log_interval_s)
            self._window_start, self._window_lines, self._window_suppressed = now, 0, 0
        last = self._last_logged.get(key)
        if last is not None and now - last[0] < self.log_interval_s:
            self._last_logged[key] = (last[0], last[1] + 1)
            return None
        if self._window_lines >= self.max_lines:
            self._window_suppressed += 1
            return None
        self._window_lines += 1
        if len(self._last_logged) >= self.MAX_TRACKED_KEYS:
            self._last_logged.pop(next(iter(self._last_logged)))
        self._last_logged.pop(key, None)
        self._last_logged[key] = (now, 0)
        return last[1] if last is not None else 0

    # lifecycle ----------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"allowed": self.allowed, "refused": self.refused, "allow_list_keys": len(self._keys),
                    "refused_keys": dict(self.refused_keys)}

    def _register(self, sock: zmq.Socket) -> None:
        self._sockets.add(sock)

    def close(self) -> None:
        """Stop the handler. Close this context's CURVE server sockets first: with no handler
        bound, libzmq would admit any client key to a socket still open."""
        still_open = [s for s in list(self._sockets) if not s.closed]
        if still_open:
            self.report.warning("closing the CURVE authority while %d CURVE server socket(s) are open: they "
                                "would admit any client key; close the sockets first", len(still_open))
        self.stop()

    def stop(self) -> None:
        if self.pipe is not None and not self.is_alive():
            # pyzmq's stop() would block for ever sending TERMINATE to a thread that has ended
            self.pipe.close(linger=0)
            self.pipe = None
        super().stop()

    def __enter__(self) -> "CurveAuthority":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def client_name(frame: zmq.Frame) -> str | None:
    """The allow-list name of the CURVE client that sent ``frame`` (received with copy=False),
    e.g. who asked for a replay; None on a socket without CURVE."""
    try:
        return frame.get("User-Id") or None
    except (zmq.ZMQError, KeyError):
        return None


def _not_yet_used(sock: zmq.Socket, call: str, before: str) -> None:
    if not zmq.has("curve"):
        raise SecurityError("this libzmq has no CURVE support (built without libsodium): install pyzmq's own "
                            "wheel, whose bundled libzmq has it")
    if sock.getsockopt(zmq.LAST_ENDPOINT):
        raise SecurityError(f"{call} must be called before {before}(): libzmq applies CURVE options only to "
                            "connections made after they are set")


def secure_server(sock: zmq.Socket, server_secret: str | os.PathLike, *, authority: CurveAuthority) -> KeyPair:
    """Make ``sock`` (not yet bound) a CURVE server with the node's secret key; clients are
    admitted by ``authority`` (a running CurveAuthority of the socket's own context)."""
    _not_yet_used(sock, "secure_server", "bind")
    if not authority.is_alive():
        raise SecurityError("the CURVE authority is not running: without it libzmq admits any client key")
    if sock.context.underlying != authority.context.underlying:
        raise SecurityError("the CURVE authority belongs to another zmq.Context: ZAP is per context, so this "
                            "socket would admit any client key. Create the authority on the socket's context")
    keys = load_secret(server_secret)
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()
    authority._register(sock)
    return keys


@dataclass(frozen=True)
class CurveClient:
    """What a CURVE client socket was given; used to explain handshake failures."""
    public: str            # own public key, Z85
    secret_file: Path
    public_file: Path      # NAME.key beside NAME.key_secret (what the node's operator must allow)
    server_key: str        # the server's public key we trust, Z85
    server_key_file: Path


def secure_client(sock: zmq.Socket, client_secret: str | os.PathLike,
                  server_public: str | os.PathLike) -> CurveClient:
    """Make ``sock`` (not yet connected) a CURVE client: our keypair from ``client_secret``,
    and we talk only to a server holding the secret of ``server_public``."""
    _not_yet_used(sock, "secure_client", "connect")
    keys = load_secret(client_secret)
    server = load_public(server_public)
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server
    secret_file = Path(client_secret)
    return CurveClient(public=keys.public.decode("ascii"), secret_file=secret_file,
                       public_file=_public_name(secret_file), server_key=server.decode("ascii"),
                       server_key_file=Path(server_public))


# -- handshake failures, in words ---------------------------------------------------------
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class HandshakeFailure(NamedTuple):
    kind: str      # client side: refused | wrong_server_key | not_curve | protocol | failed
                   # server side: refused | client_not_curve | client_wrong_server_key | client_dropped | failed
    endpoint: str
    message: str


def explain_handshake_failure(event: int, value: int, endpoint: str, *, role: str,
                              client: CurveClient | None = None) -> HandshakeFailure | None:
    """A socket-monitor event in words, or None if it is not a handshake failure.

    ``role``: "client" (connecting side; ``client`` from secure_client, None for a plaintext
    client) or "server" (binding side). For a socket that already has a monitor (one per
    socket in libzmq), add HANDSHAKE_EVENTS to its event mask and call this on each event."""
    if event not in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                     zmq.EVENT_HANDSHAKE_FAILED_AUTH):
        return None
    mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    crypto = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
    if role == "server":
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return HandshakeFailure("refused", endpoint, f"{endpoint}: refused a client whose key is not in the "
                                    "allow-list (the CURVE authority logs its key)")
        if mismatch:
            return HandshakeFailure("client_not_curve", endpoint, f"{endpoint}: refused a client that does not use "
                                    "CURVE (plaintext, or started with --insecure)")
        if crypto:
            return HandshakeFailure("client_wrong_server_key", endpoint, f"{endpoint}: refused a client that "
                                    "expects another server key (its --curve-server-key is not this node's public key)")
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            return HandshakeFailure("client_dropped", endpoint, f"{endpoint}: a client closed the connection during "
                                    "the handshake (a client without CURVE, e.g. started with --insecure, or a network "
                                    f"problem; {_detail(event, value)})")
        return HandshakeFailure("failed", endpoint,
                                f"{endpoint}: a client's handshake failed ({_detail(event, value)})")
    if client is None:   # a plaintext client
        if mismatch:
            return HandshakeFailure("not_curve", endpoint, f"the server at {endpoint} requires CURVE: pass "
                                    "--curve-secret and --curve-server-key, not --insecure; not receiving from it")
        return HandshakeFailure("failed", endpoint, f"handshake with {endpoint} failed ({_detail(event, value)}); "
                                "if that node uses CURVE, pass --curve-secret and --curve-server-key")
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400:
            return HandshakeFailure("refused", endpoint, f"node {endpoint} refused our key {client.public}: ask its "
                                    f"operator to add {client.public_file} to the node's allow-list (edge-keys allow "
                                    f"{client.public_file.name} --allow-dir DIR); not receiving from it")
        return HandshakeFailure("refused", endpoint, f"node {endpoint} could not check our key {client.public} (ZAP "
                                f"status {value}: its allow-list is unreadable or its authority failed)")
    if mismatch:
        return HandshakeFailure("not_curve", endpoint, f"the server at {endpoint} does not use CURVE (a node started "
                                "with --insecure?); not receiving from it")
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL or crypto:
        return HandshakeFailure("wrong_server_key", endpoint, f"the server at {endpoint} does not hold the key "
                                f"{client.server_key} ({client.server_key_file}): it broke off the CURVE handshake "
                                "(an impostor, a node whose key changed, or one running --insecure); "
                                "not receiving from it")
    return HandshakeFailure("protocol", endpoint, f"CURVE handshake with {endpoint} failed ({_detail(event, value)})")


def _detail(event: int, value: int) -> str:
    names = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "connection closed during the handshake",
             zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "ZAP status"}
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"{names[event]} {value:#x}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return f"{names[event]}: {errno.errorcode.get(value, value)}"
    return f"{names.get(event, event)} {value}"


class HandshakeWatch:
    """A socket monitor that explains handshake failures of one socket (logged as WARNINGs,
    at most one line per endpoint and kind per ``log_interval_s``) and tracks live sessions.

    Create it before bind()/connect(). Not for a socket that already has a monitor (libzmq
    allows one): call explain_handshake_failure from that monitor instead. Same thread as the
    socket; call :meth:`poll` from the socket's loop."""

    def __init__(self, sock: zmq.Socket, *, client: CurveClient | None = None, role: str | None = None,
                 logger: logging.Logger | None = None, log_interval_s: float = 30.0):
        self.role = role or ("server" if sock.getsockopt(zmq.CURVE_SERVER) else "client")
        self.client, self.log, self.log_interval_s = client, logger or log, float(log_interval_s)
        self._sock = sock
        self._monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self.failures: collections.Counter = collections.Counter()   # kind -> n
        self.last_failure: HandshakeFailure | None = None
        self.succeeded = 0
        self._logged: dict[tuple[str, str], float] = {}

    def poll(self, timeout: float = 0.0) -> list[HandshakeFailure]:
        """Handle the events that arrived (waiting up to ``timeout`` s for the first); returns the failures."""
        out = []
        if not self._monitor.poll(int(timeout * 1000)):
            return out
        while True:
            try:
                ev = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return out
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded += 1
                continue
            f = explain_handshake_failure(ev["event"], ev["value"], ev["endpoint"].decode(errors="replace"),
                                          role=self.role, client=self.client)
            if f is None:
                continue
            out.append(f)
            self.failures[f.kind] += 1
            self.last_failure = f
            now = time.monotonic()
            if now - self._logged.get((f.kind, f.endpoint), -1e9) >= self.log_interval_s:
                self._logged[(f.kind, f.endpoint)] = now
                self.log.warning("%s", f.message)

    def wait(self, timeout: float) -> bool:
        """Poll until a handshake succeeds (True) or fails / ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        start_ok, start_failed = self.succeeded, sum(self.failures.values())
        while time.monotonic() < deadline:
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
            if self.succeeded > start_ok:
                return True
            if sum(self.failures.values()) > start_failed:
                return False
        return False

    def close(self) -> None:
        if self._monitor.closed:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)


# -- command line ----------------------------------------------------------------------
def insecure_warning(logger: logging.Logger, what: str) -> str:
    """The one loud WARNING for --insecure; returns the line (e.g. to print it in a summary too)."""
    msg = (f"INSECURE: {what} without CURVE (--insecure): anyone who can reach it can read everything on it, "
           "connect without a key, and impersonate this side or the other one (forged alerts are accepted). "
           "Use only on an isolated test network; see docs/security.md for --curve-secret, "
           "--curve-server-key and --curve-allow")
    logger.warning("%s", msg)
    return msg


@dataclass(frozen=True)
class CurveConfig:
    """The four CURVE options as plain values (fits in a stage's config dict for spawn)."""
    secret: str | None = None       # --curve-secret: own NAME.key_secret
    server_key: str | None = None   # --curve-server-key: the node's NAME.key (connecting side)
    allow_dir: str | None = None    # --curve-allow: directory of client public keys (binding side)
    insecure: bool = False          # --insecure

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CurveConfig":
        def s(v):
            return None if v is None else str(v)
        return cls(s(getattr(args, "curve_secret", None)), s(getattr(args, "curve_server_key", None)),
                   s(getattr(args, "curve_allow", None)), bool(getattr(args, "insecure", False)))

    def check(self, *, server: bool = False, client: bool = False) -> bool:
        """True: use CURVE; False: --insecure. Raises SecurityError naming the missing flag or the
        bad file (key files and the allow-list are checked here, before any stage starts).
        ``server``: this process binds sockets that leave the host; ``client``: it connects to such sockets."""
        given = [f for f, v in (("--curve-secret", self.secret), ("--curve-server-key", self.server_key),
                                ("--curve-allow", self.allow_dir)) if v]
        if self.insecure:
            if given:
                raise SecurityError(f"--insecure and {', '.join(given)} contradict each other: give the keys, "
                                    "or --insecure alone")
            return False
        need = (["--curve-secret"] if server or client else []) + (["--curve-allow"] if server else []) \
            + (["--curve-server-key"] if client else [])
        missing = [f for f in need if f not in given]
        if missing:
            raise SecurityError(f"missing {', '.join(missing)}: this channel is encrypted and authenticated with "
                                "CURVE (make keys with edge-keys generate; see edge-keys --help), or pass "
                                "--insecure to run without it on an isolated network")
        unused = [f for f in given if f not in need]
        if unused:
            raise SecurityError(f"{', '.join(unused)} is not used here ("
                                + ("this process only connects" if client and not server else
                                   "this process only binds" if server and not client else "no network channel")
                                + "): leave it out")
        # load everything now, so that a bad file stops the command before any stage starts
        load_secret(self.secret)
        if client:
            load_public(self.server_key)
        if server:
            check_allow_dir(self.allow_dir)
        return True


def add_curve_arguments(parser: argparse.ArgumentParser, *, server: bool, client: bool) -> None:
    """The CURVE flags, with the same names and help in every command."""
    g = parser.add_argument_group("security (CURVE; docs/security.md)")
    g.add_argument("--curve-secret", metavar="FILE",
                   help="this side's secret key file NAME.key_secret (edge-keys generate NAME)")
    if client:
        g.add_argument("--curve-server-key", metavar="FILE",
                       help="the node's public key file NODE.key: only a server holding its secret is trusted")
    if server:
        g.add_argument("--curve-allow", metavar="DIR",
                       help="allow-list: directory of client public keys (*.key) admitted to this node's "
                            "sockets (edge-keys allow CLIENT.key --allow-dir DIR); re-read when it changes")
    g.add_argument("--insecure", action="store_true",
                   help="no encryption, no authentication: anyone on the network can read and forge. "
                        "Isolated test networks only; logged as a warning")
