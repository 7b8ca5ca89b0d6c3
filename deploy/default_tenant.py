"""The local stack's default tenant: made by the first `strata up`, used by the
`strata db` commands (and the proxy `up` starts) unless `--tenant T` is given.

Recorded in `<data dir>/default_tenant.json`, which outlives `down` (stack.json
does not; `up` copies the id into stack.json as `default_tenant` too):

    {"format_version": 1, "tenant_id": "<32 hex>", "checksum": "<xxhash64 of the rest>"}

(strata/checksummed_json.py: a bad checksum, another version or a malformed id
is an error naming the file, never a silently new tenant.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from compute_shim import Client
from strata import checksummed_json
from strata.durable_file import write_durably
from strata.errors import CorruptionError, InvalidArgument
from strata.ids import TenantId, tenant_id

FILE_NAME = "default_tenant.json"
FORMAT_VERSION = 1


def read(data_dir: Path) -> TenantId | None:
    """The recorded default tenant, or None before the first `up` made one."""
    path = data_dir / FILE_NAME
    if not path.exists():
        return None
    body = checksummed_json.decode(path.read_bytes(), str(path), FORMAT_VERSION)
    checksummed_json.check_fields(body, {"tenant_id"}, str(path), {"tenant_id"})
    try:
        return tenant_id(body["tenant_id"])
    except InvalidArgument as exc:
        raise CorruptionError(f"{path}: {exc}") from None


def write(data_dir: Path, tenant: TenantId) -> None:
    write_durably(data_dir / FILE_NAME, checksummed_json.encode({"tenant_id": tenant}, FORMAT_VERSION))


def ensure(data_dir: Path, pageserver: str, walservice: str) -> TenantId:
    """The default tenant, made on the pageserver (and recorded) on the first
    start; on later starts the recorded one, made again under the same id (and
    said on stderr) if the pageserver no longer has it."""
    recorded = read(data_dir)
    with Client(pageserver=pageserver, walservice=walservice, timeout=10.0) as client:
        if recorded is None:
            tenant = TenantId(client.create_tenant().tenant_id)
            write(data_dir, tenant)
            return tenant
        if recorded not in {t.tenant_id for t in client.list_tenants().tenants}:
            print(
                f"note: the default tenant {recorded} (recorded in {data_dir / FILE_NAME}) is not on the pageserver: "
                "made it again, empty",
                file=sys.stderr,
            )
            client.create_tenant(tenant_id=recorded)
        return recorded
