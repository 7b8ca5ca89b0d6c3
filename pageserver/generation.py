"""Attach generations of a tenant, kept in remote storage.

Every attachment of a tenant to a pageserver (CreateTenant, AttachTenant, and
every restart of a pageserver that still holds the newest generation) claims
the next generation N by creating the object::

    tenants/<t>/generations/<N as 8 lower-case hex digits>

(strata/remote_storage/layout.py) create-only (S3 `If-None-Match: *`, file:// a hard link), so
of two pageservers claiming the same N exactly one wins; the other gets
`GenerationTaken`. The newest generation is the one with the highest N; older
generation objects stay (they are a few dozen bytes each) and go with the tenant.

A pageserver holding generation G is *fenced* once any generation above G
exists: it checks before and after every index upload, before every deletion
and every `--generation-check-interval` seconds (tenant.py).

# Record format (`GenerationRecord`, format version 1)

A JSON object through strata/checksummed_json.py::

    {"format_version": 1, "checksum": "<xxhash64 of the other fields, 16 hex>",
     "generation": N, "tenant_id": "<t>", "attached_at_us": <unix µs>,
     "attach_id": "<32 random hex digits>"}

`attach_id` makes every claim's bytes unique: a create-only upload of identical
bytes succeeds as a no-op (an idempotent retry), so without it two claims made
in the same microsecond could both "win". A record whose name and `generation`
disagree, with unknown fields, a bad checksum or another version is
CorruptionError.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass

from pageserver.layers.names import MAX_GENERATION
from strata import checksummed_json
from strata.errors import AlreadyExists, CorruptionError
from strata.remote_storage.interface import RemoteObjectExists, RemoteStorage
from strata.remote_storage.layout import generation_key, generations_prefix, parse_generation_name

FORMAT_VERSION = 1


class GenerationTaken(AlreadyExists):
    """Another pageserver claimed this generation first (a racing attach or restart)."""


@dataclass(frozen=True)
class GenerationRecord:
    """One claimed generation (layout in the module doc)."""

    generation: int
    tenant_id: str
    attached_at_us: int
    attach_id: str

    def encode(self) -> bytes:
        return checksummed_json.encode(asdict(self), FORMAT_VERSION)

    @classmethod
    def decode(cls, data: bytes, where: str) -> GenerationRecord:
        body = checksummed_json.decode(data, where, FORMAT_VERSION)
        checksummed_json.check_fields(body, {f for f in cls.__dataclass_fields__}, where)
        return cls(**body)


def list_generations(storage: RemoteStorage, tenant_id: str) -> list[int]:
    """Every claimed generation of the tenant, ascending (from the object names). Blocking."""
    prefix = generations_prefix(tenant_id)
    found = []
    for obj in storage.list(prefix):
        generation = parse_generation_name(obj.key[len(prefix):])
        if generation is None:
            raise CorruptionError(f"remote object {obj.key}: not a generation object (expected 8 lower-case hex digits)")
        found.append(generation)
    return sorted(found)


def read_generation(storage: RemoteStorage, tenant_id: str) -> int:
    """The newest generation claimed remotely (0: none yet), its record verified. Blocking."""
    claimed = list_generations(storage, tenant_id)
    if not claimed:
        return 0
    newest = claimed[-1]
    key = generation_key(tenant_id, newest)
    record = GenerationRecord.decode(storage.download_bytes(key), f"remote {key}")
    if record.generation != newest or record.tenant_id != tenant_id:
        raise CorruptionError(
            f"remote {key} holds generation={record.generation} tenant_id={record.tenant_id}, not its own name"
        )
    return newest


def claim_generation(storage: RemoteStorage, tenant_id: str, generation: int) -> GenerationRecord:
    """Create the object of `generation` (create-only). GenerationTaken if it
    exists already (another claim won). Blocking."""
    if not 1 <= generation <= MAX_GENERATION:
        raise ValueError(f"generation={generation} is invalid: expected 1..{MAX_GENERATION}")
    record = GenerationRecord(generation, tenant_id, time.time_ns() // 1000, secrets.token_hex(16))
    try:
        storage.upload_bytes(record.encode(), generation_key(tenant_id, generation))
    except RemoteObjectExists:
        raise GenerationTaken(
            f"tenant_id={tenant_id} generation={generation} was claimed by another pageserver first"
        ) from None
    return record


def claim_next(storage: RemoteStorage, tenant_id: str, at_least: int = 0) -> GenerationRecord:
    """Claim the generation after the newest one (and after `at_least`). Blocking."""
    return claim_generation(storage, tenant_id, max(read_generation(storage, tenant_id), at_least) + 1)
