"""Batons: what ties the HTTP requests of one Hrana stream together.

A baton is `STREAM.SEQ.MAC`: the stream's random id (16 hex characters), the
stream's request sequence number, and the first 16 bytes of
HMAC-SHA256(secret, "STREAM.SEQ") in URL-safe base64. The secret is random per
proxy process, so a baton is unforgeable, and a proxy restart invalidates every
baton (its streams, and their computes, ended with it). Each response
carries the next sequence number, so a replayed or out-of-order baton is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass


class BatonError(Exception):
    """A baton that this proxy did not issue, or that was tampered with."""


@dataclass(frozen=True)
class Baton:
    stream_id: str
    seq: int


class BatonSigner:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign(self, baton: Baton) -> str:
        body = f"{baton.stream_id}.{baton.seq}"
        return f"{body}.{self._mac(body)}"

    def verify(self, token: object) -> Baton:
        if not isinstance(token, str) or len(token) > 200:
            raise BatonError("the baton must be a string this proxy issued")
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            raise BatonError("the baton is malformed: it is not one this proxy issued")
        if not hmac.compare_digest(self._mac(f"{parts[0]}.{parts[1]}"), parts[2]):
            raise BatonError("the baton's signature does not match: it was forged, or issued by another (or a restarted) proxy")
        return Baton(parts[0], int(parts[1]))


def new_stream_id() -> str:
    return secrets.token_hex(8)
