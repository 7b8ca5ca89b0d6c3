"""Tokens: EdDSA (Ed25519) JWTs that say who may call what (DESIGN.md, "Tokens").

Made and checked with PyJWT over `cryptography` (never hand-rolled). Claims:

| claim | meaning |
| --- | --- |
| `scope` | `tenant` (one tenant's data), `admin` (anything), or an internal scope: `walservicedata` (what the pageserver and walservice peers present to the walservice), `pageserverapi` (what the proxy and the walservice present to the pageserver) |
| `tenant_id` | with `tenant`: the tenant it covers (required) |
| `db` | optional, with `tenant`: the one database (name) it covers |
| `access` | optional, with `tenant`: `rw` (default) or `ro` (reads only) |
| `exp` | expiry, seconds since the epoch (optional; PyJWT checks it) |

`KeyRing` holds the public keys a service accepts: one PEM file, or every
`*.pem` in a directory, so keys can be rotated (add the new key, hand out new
tokens, remove the old); `reload()` (on SIGHUP) reads them again. A verified
token's claims are cached (bounded; until its `exp`, and until the next
reload) so a stream does not re-verify a signature per message.

`Grant.check(call)` says whether the claims cover a call (`Call`: which tenant,
which database if known, whether it writes, and which scopes besides `admin`
may make it): `Unauthenticated` for a missing, expired or forged token,
`PermissionDenied` naming what was missing ("token for tenant X, call on
tenant Y"); a message never holds the token.

Concurrency: `KeyRing._lock` guards `_keys` and `_cache` (a service checks
tokens from its event loop and from gRPC's threads).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from strata.errors import InvalidArgument, StrataError
from strata.ids import DatabaseName, TenantId, database_name, tenant_id

ALGORITHM = "EdDSA"
CACHE_ENTRIES = 4096  # verified tokens remembered per KeyRing
PRIVATE_KEY_FILE = "auth_private_key.pem"
PUBLIC_KEY_FILE = "auth_public_key.pem"


class Unauthenticated(StrataError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(StrataError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Scope(str, Enum):
    TENANT = "tenant"
    ADMIN = "admin"
    PAGESERVERAPI = "pageserverapi"
    WALSERVICEDATA = "walservicedata"


class Access(str, Enum):
    READ_WRITE = "rw"
    READ_ONLY = "ro"


@dataclass(frozen=True)
class Grant:
    """What a verified token's claims allow."""

    scope: Scope
    tenant_id: TenantId | None = None
    db: DatabaseName | None = None
    access: Access = Access.READ_WRITE
    expires_at: int | None = None  # `exp`, seconds since the epoch

    @classmethod
    def from_claims(cls, claims: dict[str, object]) -> Grant:
        """The grant of decoded claims; Unauthenticated when they are not a Strata token's."""
        try:
            scope = Scope(claims.get("scope"))
            access = Access(claims.get("access", Access.READ_WRITE.value))
            tenant = tenant_id(str(claims["tenant_id"])) if "tenant_id" in claims else None
            db = database_name(str(claims["db"]), "db") if "db" in claims else None
        except (ValueError, InvalidArgument) as exc:
            raise Unauthenticated(f"the token's claims are not a Strata token's: {exc}") from None
        if scope is Scope.TENANT and tenant is None:
            raise Unauthenticated("the token's scope is tenant but it names no tenant_id")
        exp = claims.get("exp")
        return cls(scope, tenant, db, access, int(exp) if isinstance(exp, (int, float)) else None)

    def claims(self) -> dict[str, object]:
        out: dict[str, object] = {"scope": self.scope.value}
        if self.tenant_id is not None:
            out["tenant_id"] = self.tenant_id
        if self.db is not None:
            out["db"] = self.db
        if self.access is not Access.READ_WRITE:
            out["access"] = self.access.value
        if self.expires_at is not None:
            out["exp"] = self.expires_at
        return out

    def check(self, call: Call) -> None:
        """PermissionDenied unless this grant covers `call` (module docstring)."""
        if self.scope is Scope.ADMIN or self.scope in call.internal:
            return
        if self.scope is not Scope.TENANT:
            raise PermissionDenied(f"{call.name} needs an admin token or {_scopes(call.internal)}; this one is {self.scope.value}")
        if not call.tenant_scoped:
            raise PermissionDenied(f"{call.name} needs an admin token or {_scopes(call.internal)}; a tenant token cannot make it")
        if call.tenant_id != self.tenant_id:
            raise PermissionDenied(f"token for tenant {self.tenant_id}, call {call.name} on tenant {call.tenant_id or '(none)'}")
        if self.db is not None and call.db != self.db:
            raise PermissionDenied(f"token for database {self.db!r}, call {call.name} on {_database(call.db)}")
        if call.writes and self.access is Access.READ_ONLY:
            raise PermissionDenied(f"a read-only token cannot make {call.name} (it writes)")


@dataclass(frozen=True)
class Call:
    """What a call touches, for `Grant.check`."""

    name: str  # the RPC or request, for messages
    tenant_id: str | None = None  # None: not one tenant's (tenant create, peer RPCs)
    db: str | None = None  # the database name, where the call names one
    writes: bool = False
    internal: frozenset[Scope] = frozenset()  # scopes besides admin that may make it
    tenant_scoped: bool = True  # False: only admin or `internal` (e.g. CreateTenant)


def _scopes(scopes: frozenset[Scope]) -> str:
    return " or ".join(sorted(s.value for s in scopes)) or "no internal scope"


def _database(db: str | None) -> str:
    return repr(db) if db else "a timeline by id (no database name)"


# --- keys -------------------------------------------------------------------------------


def generate_key_pair(directory: Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair in `directory`: the private key readable by its owner
    only (0600, created so: never briefly world-readable), the public key 0644."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = directory / PRIVATE_KEY_FILE
    public = directory / PUBLIC_KEY_FILE
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path}: not an Ed25519 private key")
    return key


def make_token(key: Ed25519PrivateKey, grant: Grant) -> str:
    return jwt.encode(grant.claims(), key, algorithm=ALGORITHM)


def token_for(
    key: Ed25519PrivateKey, scope: Scope, *, tenant: str | None = None, db: str | None = None,
    read_only: bool = False, expires_in: float | None = None, now: float | None = None,
) -> str:
    """A signed token (what `strata token create` prints)."""
    expires = None if expires_in is None else int((time.time() if now is None else now) + expires_in)
    grant = Grant(
        scope,
        tenant_id(tenant) if tenant else None,
        database_name(db, "db") if db else None,
        Access.READ_ONLY if read_only else Access.READ_WRITE,
        expires,
    )
    if scope is Scope.TENANT and grant.tenant_id is None:
        raise InvalidArgument("a tenant token names its tenant")
    if scope is not Scope.TENANT and (db or read_only):
        raise InvalidArgument("--db and --read-only narrow a tenant token")
    return make_token(key, grant)


class KeyRing:
    """The public keys a service accepts (module docstring), and verified tokens."""

    def __init__(self, path: Path, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()  # guards _keys and _cache
        self._keys: list[Ed25519PublicKey] = []
        self._cache: OrderedDict[str, Grant] = OrderedDict()
        self.reload()

    def reload(self) -> int:
        """Read the keys again (SIGHUP); returns how many there are. A directory's
        unreadable or non-Ed25519 file is an error naming it: a rotation that
        silently dropped a key would lock callers out."""
        files = sorted(self.path.glob("*.pem")) if self.path.is_dir() else [self.path]
        keys = []
        for file in files:
            try:
                key = serialization.load_pem_public_key(file.read_bytes())
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"{file}: not a PEM public key: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise InvalidArgument(f"{file}: not an Ed25519 public key")
            keys.append(key)
        if not keys:
            raise InvalidArgument(f"{self.path}: no public keys (*.pem) to check tokens with")
        with self._lock:
            self._keys = keys
            self._cache.clear()
        return len(keys)

    def verify(self, token: str | None) -> Grant:
        """The grant of a valid token; Unauthenticated (never naming the token) if
        it is missing, malformed, expired, or signed by no key of the ring."""
        if not token:
            raise Unauthenticated("no token: send `authorization: Bearer <token>`")
        now = self._clock()
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None:
                if cached.expires_at is None or cached.expires_at > now:
                    self._cache.move_to_end(token)
                    return cached
                del self._cache[token]
            keys = list(self._keys)
        for key in keys:
            try:
                # `exp` is checked below against the ring's clock (one clock for cache and check).
                claims = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["scope"], "verify_exp": False})
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(f"the token is malformed: {type(exc).__name__}") from None
            grant = Grant.from_claims(claims)
            if grant.expires_at is not None and grant.expires_at <= now:
                raise Unauthenticated("the token has expired")
            with self._lock:
                self._cache[token] = grant
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
            return grant
        raise Unauthenticated("the token's signature matches no key this service accepts")


def bearer(value: str | None) -> str | None:
    """The token of an `authorization` value (`Bearer <token>`), else None."""
    if not value:
        return None
    kind, _, token = value.partition(" ")
    return token.strip() or None if kind.lower() == "bearer" else None
