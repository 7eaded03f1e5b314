"""Signed tokens (HMAC-SHA256, like pre-signed URLs): attempt tokens and runner tokens.

* An **attempt token** ``aglt1.<payload>.<signature>`` names a rollout, an attempt and an expiry.
  The store server issues and checks them; the LLM proxy checks them to attribute a call.
* A **runner token** ``aglr1.<payload>.<signature>`` names an expiry, an optional label and
  optionally the task types it may claim. Only the store server issues and checks them.

:mod:`agent_lightning_http.auth` says what each may do there. The prefix is part of what is signed,
so one kind of token never verifies as the other. The signing secret is derived from the store's
admin key unless one is given (``$AGL_TOKEN_SECRET``). Stdlib only.
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
RUNNER_TOKEN_PREFIX = "aglr1"
TOKEN_HEADER = "x-agl-attempt-token"
"""Response header of ``claim_rollout``/``start_rollout`` with the new attempt's token."""
TOKEN_SECRET_ENV = "AGL_TOKEN_SECRET"
DEFAULT_TOKEN_TTL = 7 * 24 * 3600.0
DEFAULT_RUNNER_TOKEN_TTL = 30 * 24 * 3600.0


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


@dataclass(frozen=True)
class RunnerScope:
    """What a runner token allows: claiming rollouts (of ``task_types`` only, unless ``None``) and reading
    resources, until ``expires`` (Unix time). ``name`` is the label it was issued with."""

    name: str | None
    expires: float
    task_types: tuple[str, ...] | None


def _expiry(ttl: float) -> int:
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    return math.floor(time.time() + ttl)  # rounded down: a token never outlives its ttl


class TokenSigner:
    """Issues and checks attempt tokens (``aglt1.…``) and runner tokens (``aglr1.…``)."""

    def __init__(self, secret: bytes | str) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        if not self._secret:
            raise ValueError("the token secret must not be empty")

    @classmethod
    def for_admin_key(cls, admin_key: str) -> TokenSigner:
        return cls(derive_token_secret(admin_key))

    def _sign(self, payload: str, prefix: str = TOKEN_PREFIX) -> str:
        return _b64(hmac.new(self._secret, f"{prefix}.{payload}".encode(), hashlib.sha256).digest())

    def _token(self, prefix: str, fields: list[object]) -> str:
        payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return f"{prefix}.{payload}.{self._sign(payload, prefix)}"

    def _fields(self, token: str | bytes, prefix: str) -> list[object] | None:
        """The signed fields of a token of this kind; ``None`` if it is not one (compared in constant time)."""
        text = token.decode(errors="replace") if isinstance(token, bytes) else token
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != prefix:
            return None
        if not hmac.compare_digest(self._sign(parts[1], prefix).encode(), parts[2].encode()):
            return None
        try:
            fields = json.loads(_unb64(parts[1]))
        except (ValueError, TypeError, binascii.Error):
            return None
        return fields if isinstance(fields, list) else None

    def issue(self, rollout_id: str, attempt_id: str, ttl: float = DEFAULT_TOKEN_TTL) -> str:
        """A token for one attempt, valid ``ttl`` seconds."""
        return self._token(TOKEN_PREFIX, [rollout_id, attempt_id, _expiry(ttl)])

    def verify(self, token: str | bytes) -> AttemptScope | None:
        """The scope of a well-signed, unexpired attempt token; ``None`` otherwise."""
        fields = self._fields(token, TOKEN_PREFIX)
        if fields is None or len(fields) != 3:
            return None
        rollout_id, attempt_id, expires = fields
        if not (isinstance(rollout_id, str) and isinstance(attempt_id, str) and isinstance(expires, int)):
            return None
        if expires <= time.time():
            return None
        return AttemptScope(rollout_id, attempt_id, float(expires))

    def issue_runner(
        self, name: str | None = None, ttl: float = DEFAULT_RUNNER_TOKEN_TTL, task_types: list[str] | None = None
    ) -> str:
        """A runner token valid ``ttl`` seconds, labelled ``name``, claiming only ``task_types`` if given."""
        if task_types is not None and (not task_types or not all(isinstance(t, str) for t in task_types)):
            raise ValueError(f"task_types must be a non-empty list of strings or None, got {task_types!r}")
        return self._token(RUNNER_TOKEN_PREFIX, [name, _expiry(ttl), task_types])

    def verify_runner(self, token: str | bytes) -> RunnerScope | None:
        """The scope of a well-signed, unexpired runner token; ``None`` otherwise."""
        fields = self._fields(token, RUNNER_TOKEN_PREFIX)
        if fields is None or len(fields) != 3:
            return None
        name, expires, task_types = fields
        if not (name is None or isinstance(name, str)) or not isinstance(expires, int):
            return None
        if task_types is not None and not (
            isinstance(task_types, list) and all(isinstance(t, str) for t in task_types)
        ):
            return None
        if expires <= time.time():
            return None
        return RunnerScope(name, float(expires), None if task_types is None else tuple(task_types))


def is_token(value: str | bytes) -> bool:
    """Whether ``value`` looks like an attempt token (not whether it is valid)."""
    prefix = TOKEN_PREFIX + "."
    return value.startswith(prefix.encode() if isinstance(value, bytes) else prefix)  # type: ignore[arg-type]


def is_runner_token(value: str | bytes) -> bool:
    """Whether ``value`` looks like a runner token (not whether it is valid)."""
    prefix = RUNNER_TOKEN_PREFIX + "."
    return value.startswith(prefix.encode() if isinstance(value, bytes) else prefix)  # type: ignore[arg-type]


def token_attempt(token: str) -> tuple[str, str] | None:
    """The ``(rollout_id, attempt_id)`` an attempt token names, read without checking its signature."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    try:
        fields = json.loads(_unb64(parts[1]))
    except (ValueError, TypeError, binascii.Error):
        return None
    if isinstance(fields, list) and len(fields) == 3 and isinstance(fields[0], str) and isinstance(fields[1], str):
        return fields[0], fields[1]
    return None


__all__ = [
    "DEFAULT_RUNNER_TOKEN_TTL",
    "DEFAULT_TOKEN_TTL",
    "RUNNER_TOKEN_PREFIX",
    "TOKEN_HEADER",
    "TOKEN_PREFIX",
    "TOKEN_SECRET_ENV",
    "AttemptScope",
    "RunnerScope",
    "TokenSigner",
    "derive_token_secret",
    "is_runner_token",
    "is_token",
    "token_attempt",
]
