"""edge-bridge's OPC UA server with a real asyncua client on loopback: secure mode refuses an
anonymous client and an unencrypted one; a client with a trusted certificate subscribes to the
result variables and to the result events and gets every result. No mocks."""
import asyncio
import socket
import time

import pytest

pytest.importorskip("asyncua", reason="the plc extra is not installed: pip install -e '.[plc]'")

from tests.edge.bridge_node import SimNode, verdict_for  # noqa: E402
from tests.edge.test_bridge_modbus import BridgeProc, free_port  # noqa: E402

pytestmark = pytest.mark.timeout(90)
EVAL = {"OK": 1, "NotOK": 2, "NotDecidable": 3}


@pytest.fixture
def node(tmp_path):
    n = SimNode(tmp_path / "node" / "journal.sqlite")
    yield n
    n.close()


def make_certs(folder):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trust").mkdir(exist_ok=True)
    host = socket.gethostname()
    out = {}
    for who, uri, use in (("server", "urn:edge-inspect:bridge", ExtendedKeyUsageOID.SERVER_AUTH),
                          ("client", "urn:edge-inspect:test-client", ExtendedKeyUsageOID.CLIENT_AUTH),
                          ("stranger", "urn:edge-inspect:stranger", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key, cert = folder / f"{who}-key.pem", folder / f"{who}-cert.der"
        asyncio.run(setup_self_signed_certificate(key, cert, uri, host, [use], {"commonName": who}))
        out[who] = (cert, key)
    (folder / "trust" / "client-cert.der").write_bytes(out["client"][0].read_bytes())
    return out, folder / "trust"


async def secure_client(url, cert, key, identity=True):
    from asyncua import Client
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    c = Client(url, timeout=5)
    c.application_uri = "urn:edge-inspect:test-client" if "client" in str(cert) else "urn:edge-inspect:stranger"
    await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key))
    if identity:
        await c.load_client_certificate(str(cert))
        await c.load_private_key(str(key))
    return c


def wait_endpoint(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.log.read_text()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("the OPC UA server did not listen:\n" + proc.log.read_text()[-3000:])


def test_secure_mode_refuses_anonymous_and_serves_a_trusted_client_variables_and_events(tmp_path, node):
    from asyncua import Client, ua
    certs, trust = make_certs(tmp_path / "pki")
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/edge-inspect/"
    # --insecure (the node link is plaintext here) leaves OPC UA secure when certificates are given
    bridge = BridgeProc(tmp_path, node, "--opcua-endpoint", url, "--opcua-cert", str(certs["server"][0]),
                        "--opcua-key", str(certs["server"][1]), "--opcua-trust", str(trust),
                        "--camera", "top", "--camera", "side", modbus=False)
    try:
        wait_endpoint(port, bridge)

        async def scenario():
            # 1. no security at all: refused (the server offers no None endpoint)
            with pytest.raises(Exception):
                anon = Client(url, timeout=3)
                await anon.connect()
            # 2. encrypted channel, anonymous user token: refused
            with pytest.raises(Exception):
                c = await secure_client(url, *certs["client"], identity=False)
                await c.connect()
            # 3. a certificate not in the trust folder: refused
            with pytest.raises(Exception):
                c = await secure_client(url, *certs["stranger"])
                await c.connect()
            # 4. the trusted client: variables and events
            c = await secure_client(url, *certs["client"])
            await c.connect()
            try:
                idx = await c.get_namespace_index("urn:edge-inspect:bridge")
                top = await c.nodes.objects.get_child([f"{idx}:EdgeInspect", f"{idx}:top"])
                rid = await top.get_child(f"{idx}:ResultId")
                changes, events = [], []

                class Handler:
                    def datachange_notification(self, n, val, data):
                        changes.append(val)

                    def event_notification(self, ev):
                        events.append(ev)
                sub = await c.create_subscription(20, Handler())
                await sub.subscribe_data_change(rid)
                etype = await c.nodes.root.get_child(["0:Types", "0:EventTypes", "0:BaseEventType",
                                                      f"{idx}:ResultReadyEventType"])
                await sub.subscribe_events(c.nodes.server, etype)
                await asyncio.sleep(0.5)
                await asyncio.get_running_loop().run_in_executor(None, node.publish, 20)
                deadline = time.monotonic() + 15
                while len(events) < 20 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                seqs = [e.AlertSeq for e in events]
                assert seqs == list(range(1, 21)), seqs
                for e in events:
                    assert e.ResultEvaluation == EVAL[verdict_for(e.AlertSeq)]
                    assert e.ResultId == f"line1/{node.journal_id}/{e.AlertSeq}"
                await asyncio.sleep(0.3)
                # camera top got the even seqs (SimNode: cameras[seq % 2]): its variable holds the last one
                assert changes[-1] == f"line1/{node.journal_id}/20"
                ev = await (await top.get_child(f"{idx}:ResultEvaluation")).read_value()
                assert ev == EVAL[verdict_for(20)]
                assert await (await top.get_child(f"{idx}:AlertSeq")).read_value() == 20
            finally:
                await c.disconnect()
        asyncio.run(scenario())
    finally:
        bridge.stop()
    log = bridge.log.read_text()
    assert "OPC UA server on" in log and "Basic256Sha256" in log
    assert bridge.proc.returncode == 0, log[-3000:]   # the refused clients did not take the bridge down


def test_insecure_serves_anonymous_with_a_warning(tmp_path, node):
    from asyncua import Client
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/edge-inspect/"
    bridge = BridgeProc(tmp_path, node, "--opcua-endpoint", url, modbus=False)
    try:
        wait_endpoint(port, bridge)

        async def scenario():
            c = Client(url, timeout=5)
            await c.connect()
            await c.disconnect()
        asyncio.run(scenario())
    finally:
        bridge.stop()
    assert "INSECURE: the OPC UA server accepts anonymous clients" in bridge.log.read_text()
