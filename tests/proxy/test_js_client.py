"""The official npm `@libsql/client` against `strata proxy`, where node and npm can run it
(skipped, saying why, where node is missing or npm cannot install the client)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.proxy.conftest import ProxyStack

SCRIPT = """
const { createClient } = require("@libsql/client");
(async () => {
  const db = createClient({ url: process.argv[2] });
  await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, b BLOB)");
  await db.execute({ sql: "INSERT INTO t (s, b) VALUES (?, ?)", args: ["js", new Uint8Array([1, 2, 3])] });
  await db.batch(["INSERT INTO t (s) VALUES ('b1')", "INSERT INTO t (s) VALUES ('b2')"], "write");
  const tx = await db.transaction("write");
  await tx.execute("INSERT INTO t (s) VALUES ('rolled back')");
  await tx.rollback();
  const rs = await db.execute("SELECT s, length(b) AS n FROM t ORDER BY id");
  console.log(JSON.stringify(rs.rows.map((r) => [r.s, r.n])));
  db.close();
})().catch((e) => { console.error(e); process.exit(1); });
"""


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node or npm is not on this machine")
    home = tmp_path_factory.mktemp("js")
    try:
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "@libsql/client"], cwd=home,
                              capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("npm could not install @libsql/client within 180 s")
    if done.returncode != 0:
        pytest.skip(f"npm could not install @libsql/client: {done.stderr[-500:]}")
    (home / "client.js").write_text(SCRIPT)
    return home


def test_the_js_client_works_unmodified(stack: ProxyStack, node_client: Path) -> None:
    stack.create_db("app")
    proxy = stack.proxy()
    run = subprocess.run(["node", "client.js", f"http://{proxy.address}/db/app/"], cwd=node_client,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [["js", 3], ["b1", None], ["b2", None]]
