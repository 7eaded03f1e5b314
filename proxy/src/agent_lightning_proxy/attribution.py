"""Which rollout and attempt a call belongs to, checked against the store once and cached."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from agent_lightning.errors import NotFound
from agent_lightning.store.base import LightningStore
from agent_lightning.types import Attempt

Runner = Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]


class AttributionError(Exception):
    """A call names a rollout or attempt that cannot take it; answered as an OpenAI-style error."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class Attributor:
    """Resolves ``(rollout_id, attempt_id | None)`` to an existing attempt.

    An explicit attempt that exists is cached for good (attempts never disappear); "the latest
    attempt of a rollout" is cached for ``latest_ttl`` seconds, so a retry's new attempt is picked
    up quickly. Unknown ids are never cached: a rollout created a moment later is found.

    :param run: runs a store coroutine on the store's own event loop and awaits its result.
    """

    def __init__(
        self, store: LightningStore, run: Runner, *, latest_ttl: float = 1.0, max_entries: int = 100_000
    ) -> None:
        self._store = store
        self._run = run
        self._latest_ttl = latest_ttl
        self._max_entries = max_entries
        self._known: set[tuple[str, str]] = set()
        self._latest: dict[str, tuple[str, float]] = {}

    async def resolve(self, rollout_id: str, attempt_id: str | None) -> tuple[str, str]:
        if attempt_id is not None:
            if (rollout_id, attempt_id) in self._known:
                return rollout_id, attempt_id
        else:
            cached = self._latest.get(rollout_id)
            if cached is not None and cached[1] > time.monotonic():
                return rollout_id, cached[0]
        attempts = await self._attempts(rollout_id)
        if len(self._known) >= self._max_entries:
            self._known.clear()
            self._latest.clear()
        for attempt in attempts:
            self._known.add((rollout_id, attempt.attempt_id))
        if attempt_id is not None:
            if (rollout_id, attempt_id) not in self._known:
                have = ", ".join(a.attempt_id for a in attempts) or "none"
                raise AttributionError(
                    404,
                    f"rollout {rollout_id!r} has no attempt {attempt_id!r} (its attempts: {have})",
                    "attempt_not_found",
                )
            return rollout_id, attempt_id
        if not attempts:
            raise AttributionError(
                409,
                f"rollout {rollout_id!r} has no attempt yet (it was never claimed); "
                "name the attempt in the URL (/rollout/ID/attempt/ATTEMPT/v1) or start the rollout first",
                "attempt_not_found",
            )
        running = [a for a in attempts if a.status == "running"]
        chosen = (running or attempts)[-1].attempt_id
        self._latest[rollout_id] = (chosen, time.monotonic() + self._latest_ttl)
        return rollout_id, chosen

    async def _attempts(self, rollout_id: str) -> list[Attempt]:
        try:
            attempts: list[Attempt] = await self._run(self._store.get_attempts(rollout_id))
        except NotFound:
            raise AttributionError(
                404,
                f"unknown rollout {rollout_id!r}: the store {self._store.url or type(self._store).__name__} "
                "has no rollout with this id",
                "rollout_not_found",
            ) from None
        return attempts
