"""The store server's ``Idempotency-Key`` replay cache.

A key is scoped by the client's credential, the endpoint and the request body: the same key from
another client or on another endpoint is another entry, and the same key with a different body is
refused (422) instead of answered with the first call's result.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

Outcome = tuple[int, bytes]


@dataclass(frozen=True)
class ScopedKey:
    """An ``Idempotency-Key`` with what it is scoped to."""

    key: str
    client: str
    """A digest of the credential the client sent (empty without one)."""
    endpoint: str
    body: str
    """A digest of the request body."""

    @classmethod
    def of(cls, key: str, credential: bytes | None, endpoint: str, body: bytes) -> ScopedKey:
        client = hashlib.sha256(credential).hexdigest() if credential else ""
        return cls(key, client, endpoint, hashlib.sha256(body).hexdigest())


def _mismatch(key: str, endpoint: str) -> Outcome:
    message = (
        f"Idempotency-Key {key!r} was used on {endpoint} with another request body; "
        "a retry must repeat the request exactly (use a new key for a new request)"
    )
    return 422, orjson.dumps({"error": {"type": "ValueError", "message": message}})


class ReplayCache:
    """Answers to requests carrying an ``Idempotency-Key``: a retry gets the first answer again.

    Makes non-idempotent calls (``claim_rollout``, ``complete_attempt``…) safe to retry after a
    lost response, for as long as this server process lives (``size`` keys, ``ttl`` seconds).
    Server errors (5xx) are not kept, so their retries run again.
    """

    def __init__(self, size: int = 20_000, ttl: float = 600.0) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, str, asyncio.Future[Outcome]]] = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    async def run(self, scoped: ScopedKey, compute: Callable[[], Awaitable[Outcome]]) -> Outcome:
        now = time.monotonic()
        while self._entries:
            oldest_key, (created, _, _) = next(iter(self._entries.items()))
            if now - created < self.ttl and len(self._entries) < self.size:
                break
            del self._entries[oldest_key]
        slot = (scoped.client, scoped.endpoint, scoped.key)
        entry = self._entries.get(slot)
        if entry is not None:
            if entry[1] != scoped.body:
                return _mismatch(scoped.key, scoped.endpoint)
            return await asyncio.shield(entry[2])
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._entries[slot] = (now, scoped.body, future)
        try:
            outcome = await compute()
        except BaseException:
            self._entries.pop(slot, None)
            future.cancel()
            raise
        if outcome[0] >= 500:
            self._entries.pop(slot, None)
        future.set_result(outcome)
        return outcome
