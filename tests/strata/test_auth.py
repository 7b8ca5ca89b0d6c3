"""strata/auth.py: Ed25519 JWTs, what each scope covers, key rotation, the verified-token cache."""

from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strata.auth import (
    Call, KeyRing, PermissionDenied, Scope, Unauthenticated, bearer, generate_key_pair, load_private_key, token_for,
)
from strata.errors import InvalidArgument

T1, T2 = "1" * 32, "2" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path):  # type: ignore[no-untyped-def]
    private, public = generate_key_pair(tmp_path / "keys")
    return load_private_key(private), public


def test_key_pair_files(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes() and b"PRIVATE KEY" in private.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_pair(tmp_path)  # never overwrites a key


def test_a_tenant_token_covers_its_tenant_only(keys) -> None:  # type: ignore[no-untyped-def]
    key, public = keys
    ring = KeyRing(public)
    grant = ring.verify(token_for(key, Scope.TENANT, tenant=T1))
    grant.check(Call("GetPage", tenant_id=T1))
    grant.check(Call("Append", tenant_id=T1, writes=True))
    with pytest.raises(PermissionDenied, match=f"token for tenant {T1}, call Append on tenant {T2}"):
        grant.check(Call("Append", tenant_id=T2, writes=True))
    with pytest.raises(PermissionDenied, match="admin"):
        grant.check(Call("CreateTenant", tenant_scoped=False, writes=True))
    with pytest.raises(PermissionDenied, match="walservicedata"):
        grant.check(Call("RequestVote", tenant_scoped=False, internal=frozenset({Scope.WALSERVICEDATA})))


def test_read_only_and_database_tokens(keys) -> None:  # type: ignore[no-untyped-def]
    key, public = keys
    ring = KeyRing(public)
    ro = ring.verify(token_for(key, Scope.TENANT, tenant=T1, read_only=True))
    ro.check(Call("GetPage", tenant_id=T1))
    with pytest.raises(PermissionDenied, match="read-only"):
        ro.check(Call("Append", tenant_id=T1, writes=True))
    one_db = ring.verify(token_for(key, Scope.TENANT, tenant=T1, db="notes"))
    one_db.check(Call("execute", tenant_id=T1, db="notes", writes=True))
    with pytest.raises(PermissionDenied, match="token for database 'notes'"):
        one_db.check(Call("execute", tenant_id=T1, db="other"))
    with pytest.raises(PermissionDenied, match="by id"):
        one_db.check(Call("GetPage", tenant_id=T1))


def test_admin_and_internal_scopes(keys) -> None:  # type: ignore[no-untyped-def]
    key, public = keys
    ring = KeyRing(public)
    admin = ring.verify(token_for(key, Scope.ADMIN))
    admin.check(Call("DeleteTenant", tenant_id=T2, tenant_scoped=False, writes=True))
    internal = ring.verify(token_for(key, Scope.WALSERVICEDATA))
    internal.check(Call("Stream", tenant_id=T1, internal=frozenset({Scope.WALSERVICEDATA})))
    with pytest.raises(PermissionDenied, match="this one is walservicedata"):
        internal.check(Call("CreateTimeline", tenant_id=T1, internal=frozenset({Scope.PAGESERVERAPI})))
    with pytest.raises(InvalidArgument):
        token_for(key, Scope.ADMIN, read_only=True)
    with pytest.raises(InvalidArgument):
        token_for(key, Scope.TENANT)


def test_missing_expired_forged_and_foreign_tokens_are_unauthenticated(keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, public = keys
    clock = Clock()
    ring = KeyRing(public, clock=clock)
    with pytest.raises(Unauthenticated, match="no token"):
        ring.verify(None)
    short = token_for(key, Scope.TENANT, tenant=T1, expires_in=60, now=clock.now)
    ring.verify(short)  # cached now
    clock.now += 61
    with pytest.raises(Unauthenticated, match="expired") as info:
        ring.verify(short)
    assert short not in str(info.value), "an error never carries the token"
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated, match="matches no key"):
        ring.verify(token_for(stranger, Scope.ADMIN))
    with pytest.raises(Unauthenticated, match="malformed"):
        ring.verify("not.a.jwt")
    hs = jwt.encode({"scope": "admin"}, "a shared secret of at least 32 bytes!", algorithm="HS256")
    with pytest.raises(Unauthenticated):
        ring.verify(hs)  # another algorithm is never accepted
    with pytest.raises(Unauthenticated, match="not a Strata token"):
        ring.verify(jwt.encode({"scope": "root"}, key, algorithm="EdDSA"))


def test_rotation_through_a_key_directory(tmp_path: Path) -> None:
    old_private, old_public = generate_key_pair(tmp_path / "old")
    new_private, new_public = generate_key_pair(tmp_path / "new")
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    (ring_dir / "old.pem").write_bytes(old_public.read_bytes())
    ring = KeyRing(ring_dir)
    old_token = token_for(load_private_key(old_private), Scope.ADMIN)
    new_token = token_for(load_private_key(new_private), Scope.ADMIN)
    ring.verify(old_token)
    with pytest.raises(Unauthenticated):
        ring.verify(new_token)
    (ring_dir / "new.pem").write_bytes(new_public.read_bytes())
    assert ring.reload() == 2
    ring.verify(old_token) and ring.verify(new_token)
    (ring_dir / "old.pem").unlink()
    assert ring.reload() == 1
    ring.verify(new_token)
    with pytest.raises(Unauthenticated):
        ring.verify(old_token)  # the cache was dropped with the key
    (ring_dir / "new.pem").unlink()
    with pytest.raises(InvalidArgument, match="no public keys"):
        ring.reload()


def test_bearer() -> None:
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("") is None and bearer(None) is None and bearer("Bearer ") is None
