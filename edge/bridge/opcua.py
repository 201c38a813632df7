"""The OPC UA server of edge-bridge (asyncua): one object per camera with variables named after
OPC 40100-1 Machine Vision ``ResultType`` / OPC 40001-101 Machinery Result, and an event per result.

Address space (namespace ``urn:edge-inspect:bridge``)::

    Objects/EdgeInspect/<camera>/   ResultId, ResultState, ResultEvaluation, ResultEvaluationText,
                                    CreationTime, IsSimulated, PartId, InternalConfigurationId,
                                    Score, Threshold, AlertSeq, FrameSeq, RegionCount, Reason
    event type ResultReadyEventType (a BaseEventType) fired by the Server object per result,
    with the same fields plus Camera.

Security: Basic256Sha256 SignAndEncrypt with the server's certificate, clients identified by
their X.509 certificate (user token), trusted when in ``--opcua-trust DIR``; anonymous access
and unencrypted channels only with ``--insecure`` (logged as a warning).

Delivery: "written is acknowledged" (issue 14): the ``opcua`` cursor moves once an alert's
values are written and its event fired; a restarted bridge writes each camera's last result
back and goes on after the cursor.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from edge.bridge.outbox import Outbox, StateError

log = logging.getLogger("edge.bridge")
CURSOR = "opcua"
NAMESPACE = "urn:edge-inspect:bridge"
EVALUATION = {"OK": 1, "NotOK": 2, "NotDecidable": 3}      # OPC 40001-101 ResultEvaluationEnum


def result_id(alert: dict) -> str:
    if alert.get("journal_id"):
        return f"{alert['node']}/{alert['journal_id']}/{alert['alert_seq']}"
    return f"{alert['node']}/{alert['alert_seq']}/{alert['published_wall']}"


@dataclass
class OpcuaConfig:
    endpoint: str = "opc.tcp://127.0.0.1:4840/edge-inspect/"
    cert: str | None = None
    key: str | None = None
    trust: str | None = None
    insecure: bool = False

    def check(self) -> None:
        if not self.endpoint.startswith("opc.tcp://"):
            raise ValueError(f"--opcua-endpoint {self.endpoint!r}: give opc.tcp://HOST:PORT/PATH")
        # --insecure is the bridge's one switch for plaintext links: it makes OPC UA anonymous only where no
        # certificate is given (so a secure OPC UA server can sit behind a plaintext test node link)
        if self.insecure and not (self.cert or self.key or self.trust):
            return
        self.insecure = False
        missing = [o for o, v in (("--opcua-cert", self.cert), ("--opcua-key", self.key),
                                  ("--opcua-trust", self.trust)) if not v]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}: the OPC UA server runs Basic256Sha256 with certificates "
                             "(the server's certificate and key, a folder of trusted client certificates); "
                             "--insecure for an anonymous test server")
        for opt, path in (("--opcua-cert", self.cert), ("--opcua-key", self.key)):
            if not Path(path).is_file():
                raise ValueError(f"{opt} {path}: no such file")
        if not Path(self.trust).is_dir():
            raise ValueError(f"--opcua-trust {self.trust}: not a folder (put the trusted client certificates in it)")


class OpcuaBridge:
    def __init__(self, outbox: Outbox, config: OpcuaConfig, cameras=()):
        config.check()
        self.outbox, self.config = outbox, config
        self.cameras = list(cameras)
        self.wake = asyncio.Event()
        self.counters = {"written": 0, "events": 0, "state_errors": 0}
        self.latency_ms: list[float] = []
        self._server = None
        self._idx = None
        self._root = None
        self._objects: dict[str, dict] = {}
        self._event_gen = None
        self._task: asyncio.Task | None = None
        if outbox.cursor(CURSOR) is None:
            outbox.set_cursor(CURSOR, outbox.last_id())

    async def start(self) -> None:
        from asyncua import Server, ua
        c = self.config
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)   # it logs a traceback per refused client
        server = Server()
        await server.init()
        server.set_endpoint(c.endpoint)
        server.set_server_name("edge-inspect bridge")
        await server.set_application_uri(NAMESPACE)
        if c.insecure:
            log.warning("INSECURE: the OPC UA server accepts anonymous clients without encryption (--insecure): "
                        "anyone who reaches %s reads every result. Isolated test networks only", c.endpoint)
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        else:
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.X509IdentityToken])     # no anonymous, no passwords
            try:
                await server.load_certificate(c.cert)
                await server.load_private_key(c.key)
            except Exception as e:
                raise ValueError(f"--opcua-cert/--opcua-key: cannot load: {e}") from e
            store = TrustStore([Path(c.trust)], [])
            await store.load()
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store))
        self._idx = await server.register_namespace(NAMESPACE)
        self._root = await server.nodes.objects.add_folder(self._idx, "EdgeInspect")
        props = [("ResultId", ua.VariantType.String), ("ResultEvaluation", ua.VariantType.Int32),
                 ("Camera", ua.VariantType.String), ("AlertSeq", ua.VariantType.UInt32),
                 ("Score", ua.VariantType.Double), ("PartId", ua.VariantType.String),
                 ("IsSimulated", ua.VariantType.Boolean)]
        etype = await server.create_custom_event_type(self._idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType,
                                                      props)
        self._event_gen = await server.get_event_generator(etype, ua.ObjectIds.Server)
        self._server = server
        for cam in self.cameras:
            await self._camera(cam)
        try:
            await server.start()
        except OSError as e:
            raise OSError(f"cannot serve OPC UA on {c.endpoint}: {e.strerror or e} "
                          "(another process on that port? choose another --opcua-endpoint)") from e
        await self._restore()
        self._task = asyncio.create_task(self._run(), name="opcua-write")
        log.info("OPC UA server on %s (%s)", c.endpoint, "anonymous, no security" if c.insecure else
                 "Basic256Sha256 SignAndEncrypt, X.509 users")

    async def _camera(self, name: str) -> dict:
        if name in self._objects:
            return self._objects[name]
        from asyncua import ua
        obj = await self._root.add_object(self._idx, name)
        fields = {"ResultId": ("", ua.VariantType.String), "ResultState": (0, ua.VariantType.Int32),
                  "ResultEvaluation": (0, ua.VariantType.Int32), "ResultEvaluationText": ("", ua.VariantType.String),
                  "CreationTime": (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), ua.VariantType.DateTime),
                  "IsSimulated": (False, ua.VariantType.Boolean), "PartId": ("", ua.VariantType.String),
                  "InternalConfigurationId": ("", ua.VariantType.String), "Score": (math.nan, ua.VariantType.Double),
                  "Threshold": (math.nan, ua.VariantType.Double), "AlertSeq": (0, ua.VariantType.UInt32),
                  "FrameSeq": (0, ua.VariantType.Int64), "RegionCount": (0, ua.VariantType.UInt32),
                  "Reason": ("", ua.VariantType.String)}
        nodes = {}
        for fname, (value, vtype) in fields.items():
            nodes[fname] = await obj.add_variable(self._idx, fname, ua.Variant(value, vtype))
        self._objects[name] = {"object": obj, "nodes": nodes, "types": {k: v[1] for k, v in fields.items()}}
        return self._objects[name]

    def _values(self, alert: dict) -> dict:
        score = alert.get("score")
        verdict = alert["verdict"]
        return {"ResultId": result_id(alert), "ResultState": -1 if verdict == "NotDecidable" else 1,
                "ResultEvaluation": EVALUATION.get(verdict, 0), "ResultEvaluationText": verdict,
                "CreationTime": dt.datetime.fromtimestamp(alert["capture_wall"], dt.timezone.utc),
                "IsSimulated": bool(alert["is_simulated"]), "PartId": alert.get("part_id") or "",
                "InternalConfigurationId": alert["model_version"],
                "Score": math.nan if score is None else float(score), "Threshold": float(alert["threshold"]),
                "AlertSeq": int(alert["alert_seq"]) & 0xFFFFFFFF, "FrameSeq": int(alert["frame_seq"]),
                "RegionCount": len(alert.get("regions") or ()), "Reason": alert.get("reason") or ""}

    async def _write(self, alert: dict, event: bool) -> None:
        from asyncua import ua
        cam = await self._camera(alert["camera"])
        values = self._values(alert)
        for name, value in values.items():
            await cam["nodes"][name].write_value(ua.Variant(value, cam["types"][name]))
        if event:
            ev = self._event_gen.event
            ev.ResultId, ev.ResultEvaluation, ev.Camera = values["ResultId"], values["ResultEvaluation"], alert["camera"]
            ev.AlertSeq, ev.Score, ev.PartId = values["AlertSeq"], values["Score"], values["PartId"]
            ev.IsSimulated = values["IsSimulated"]
            ev.Message = ua.LocalizedText(f"{alert['camera']} {alert['verdict']} frame {alert['frame_seq']}")
            ev.Severity = 100 if alert["verdict"] == "OK" else 700
            await self._event_gen.trigger(time_attr=values["CreationTime"])
            self.counters["events"] += 1

    async def _restore(self) -> None:
        """After a restart: each camera's last result acknowledged, written back (no event)."""
        cursor = self.outbox.cursor(CURSOR) or 0
        rows = self.outbox.execute("SELECT max(id) FROM outbox WHERE id <= ? GROUP BY camera", (cursor,)).fetchall()
        for (oid,) in rows:
            alert = self.outbox.get(oid)
            if alert is not None:
                await self._write(alert, event=False)

    async def _run(self) -> None:
        import time
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                cursor = self.outbox.cursor(CURSOR) or 0
                for oid, alert in self.outbox.after(cursor, 200):
                    t0 = time.monotonic()
                    await self._write(alert, event=True)
                    self.outbox.set_cursor(CURSOR, oid)     # written is acknowledged
                    self.counters["written"] += 1
                    self.latency_ms.append((time.monotonic() - t0) * 1000)
                    del self.latency_ms[:-1000]
            except StateError as e:
                self.counters["state_errors"] += 1
                log.error("%s", e)

    def pending(self) -> int:
        return self.outbox.execute("SELECT count(*) FROM outbox WHERE id > ?",
                                   (self.outbox.cursor(CURSOR) or 0,)).fetchone()[0]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.stop()

    def snapshot(self) -> dict:
        return {**self.counters, "pending": self.pending(), "latency_ms": list(self.latency_ms)}
