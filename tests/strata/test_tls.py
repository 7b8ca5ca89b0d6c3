"""TLS on every listener and every connection between Strata processes
(strata/tls.py): a walservice cluster replicating over TLS peers (gRPC and the
PeerAppend TCP port), a pageserver streaming WAL over TLS, SQLite on Strata
pages through a TLS client, the proxy over HTTPS; and the clear errors."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from compute_shim import Client, connect_sqlite
from strata.tls import CA_KEY_FILE, ServerTls, TlsError, make_local_ca
from tests.env import StrataEnv, wait_until


@pytest.fixture
def local_ca(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_local_ca(tmp_path / "tls")


def _tls_args(ca) -> list[str]:  # type: ignore[no-untyped-def]
    return ["--tls-cert", str(ca.cert), "--tls-key", str(ca.key), "--tls-ca", str(ca.ca)]


def test_local_ca_keys_are_private_and_kept(local_ca) -> None:  # type: ignore[no-untyped-def]
    for key in (local_ca.key, local_ca.ca.parent / CA_KEY_FILE):
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    before = local_ca.cert.read_bytes()
    assert make_local_ca(local_ca.ca.parent).cert.read_bytes() == before, "a restart keeps the certificates"


def test_cluster_pageserver_and_sqlite_over_tls(strata_env: StrataEnv, local_ca) -> None:  # type: ignore[no-untyped-def]
    nodes = strata_env.walservice_cluster(3, *_tls_args(local_ca))
    ps = strata_env.pageserver(nodes, *_tls_args(local_ca))
    for comp in (*nodes, ps):
        assert "tls=True" in comp.log_text()
    walservice = ",".join(n.address for n in nodes)
    with Client(pageserver=ps.address, walservice=walservice, tls_ca=local_ca.ca) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        timeline = client.create_timeline(tenant_id=tenant).timeline_id
        db = connect_sqlite(client, tenant, timeline)
        db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('over tls')")
        db.close()
        # A majority acknowledged it, so the leader's PeerAppend reached a follower over TLS.
        end = client.status(tenant_id=tenant, timeline_id=timeline).commit_lsn
        followers = [n for n in nodes if "event=leader_elected" not in n.log_text()]
        with Client(walservice=followers[0].address, tls_ca=local_ca.ca) as follower:
            wait_until("a follower to hold the commit", lambda: follower.status(tenant_id=tenant, timeline_id=timeline).flush_lsn >= end)
    with Client(pageserver=ps.address, walservice=walservice, tls_ca=local_ca.ca) as fresh:
        assert connect_sqlite(fresh, tenant, timeline).execute("SELECT x FROM t").fetchall() == [("over tls",)]
    # A plaintext client cannot talk to a TLS port.
    with Client(pageserver=ps.address, retries=0, timeout=3) as plain:
        with pytest.raises(grpc.RpcError) as refused:
            plain.list_tenants()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_proxy_serves_https(strata_env: StrataEnv, local_ca) -> None:  # type: ignore[no-untyped-def]
    wal = strata_env.walservice(*_tls_args(local_ca))
    ps = strata_env.pageserver(wal, *_tls_args(local_ca))
    with Client(pageserver=ps.address, walservice=wal.address, tls_ca=local_ca.ca) as client:
        tenant = client.create_tenant(page_size=4096).tenant_id
        client.create_timeline(tenant_id=tenant, name="notes")
    proxy = strata_env.process(
        "proxy",
        [sys.executable, "-m", "proxy", "--pageserver", ps.address, "--walservice", wal.address,
         "--tenant", tenant, *_tls_args(local_ca)],
    )

    async def pipeline(context: ssl.SSLContext | None) -> dict:  # type: ignore[type-arg]
        body = {"requests": [{"type": "execute", "stmt": {"sql": "SELECT 40 + 2"}}, {"type": "close"}]}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"https://{proxy.address}/db/notes/v2/pipeline", json=body, ssl=context) as response:
                assert response.status == 200, await response.text()
                return await response.json()

    answer = asyncio.run(pipeline(ssl.create_default_context(cafile=str(local_ca.ca))))
    assert answer["results"][0]["response"]["result"]["rows"] == [[{"type": "integer", "value": "42"}]]
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        asyncio.run(pipeline(ssl.create_default_context()))  # without the CA: refused, not served


def test_bad_tls_files_are_clear_errors(tmp_path: Path, local_ca) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TlsError, match="--tls-cert and --tls-key go together"):
        ServerTls.load(local_ca.cert, None)
    with pytest.raises(TlsError, match=r"--tls-key .*missing.key: cannot read it"):
        ServerTls.load(local_ca.cert, tmp_path / "missing.key")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsError, match="not a PEM file"):
        ServerTls.load(tmp_path / "junk.pem", local_ca.key)
    run = subprocess.run(
        [sys.executable, "-m", "walservice", "--data-dir", str(tmp_path / "w"), "--listen", "127.0.0.1:0",
         "--tls-cert", str(local_ca.cert), "--tls-key", str(tmp_path / "missing.key")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0 and "--tls-key" in run.stderr and "Traceback" not in run.stderr, run.stderr
