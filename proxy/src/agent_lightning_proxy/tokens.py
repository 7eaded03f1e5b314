"""Attempt tokens: signed (HMAC-SHA256, like pre-signed URLs) credentials for one rollout attempt.

A token ``aglt1.<payload>.<signature>`` names a rollout, an attempt and an expiry. The store server
issues them and checks them (:mod:`agent_lightning_http.auth` says what one may do there); the
LLM proxy checks them to attribute a call. Both derive the signing secret from the store's admin
key unless one is given (``$AGL_TOKEN_SECRET``). Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass

TOKEN_PREFIX = "aglt1"
TOKEN_HEADER = "x-agl-attempt-token"
"""Response header of ``claim_rollout``/``start_rollout`` with the new attempt's token."""
TOKEN_SECRET_ENV = "AGL_TOKEN_SECRET"
DEFAULT_TOKEN_TTL = 7 * 24 * 3600.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_token_secret(admin_key: str) -> bytes:
    """The token signing secret that goes with an admin key."""
    return hmac.new(admin_key.encode(), b"agent-lightning attempt tokens v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class AttemptScope:
    """What an attempt token allows: one rollout attempt, until ``expires`` (Unix time)."""

    rollout_id: str
    attempt_id: str
    expires: float


class TokenSigner:
    """Issues and checks attempt tokens (``aglt1.<payload>.<signature>``)."""

    def __init__(self, secret: bytes | str) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        if not self._secret:
            raise ValueError("the token secret must not be empty")

    @classmethod
    def for_admin_key(cls, admin_key: str) -> TokenSigner:
        return cls(derive_token_secret(admin_key))

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{TOKEN_PREFIX}.{payload}".encode(), hashlib.sha256).digest())

    def issue(self, rollout_id: str, attempt_id: str, ttl: float = DEFAULT_TOKEN_TTL) -> str:
        """A token for one attempt, valid ``ttl`` seconds."""
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        expires = math.floor(time.time() + ttl)  # rounded down: a token never outlives its ttl
        payload = _b64(json.dumps([rollout_id, attempt_id, expires], separators=(",", ":")).encode())
        return f"{TOKEN_PREFIX}.{payload}.{self._sign(payload)}"

    def verify(self, token: str | bytes) -> AttemptScope | None:
        """The scope of a well-signed, unexpired token; ``None`` otherwise (compared in constant time)."""
        text = token.decode(errors="replace") if isinstance(token, bytes) else token
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return None
        if not hmac.compare_digest(self._sign(parts[1]).encode(), parts[2].encode()):
            return None
        try:
            rollout_id, attempt_id, expires = json.loads(_unb64(parts[1]))
        except (ValueError, TypeError, binascii.Error):
            return None
        if not (isinstance(rollout_id, str) and isinstance(attempt_id, str) and isinstance(expires, int)):
            return None
        if expires <= time.time():
            return None
        return AttemptScope(rollout_id, attempt_id, float(expires))


def is_token(value: str | bytes) -> bool:
    """Whether ``value`` looks like an attempt token (not whether it is valid)."""
    prefix = TOKEN_PREFIX + "."
    return value.startswith(prefix.encode() if isinstance(value, bytes) else prefix)  # type: ignore[arg-type]


__all__ = [
    "DEFAULT_TOKEN_TTL",
    "TOKEN_HEADER",
    "TOKEN_PREFIX",
    "TOKEN_SECRET_ENV",
    "AttemptScope",
    "TokenSigner",
    "derive_token_secret",
    "is_token",
]
