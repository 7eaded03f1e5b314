"""The in-memory store: the default for single-process experiments and tests."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError, from_json, to_json

from agent_lightning.errors import DuplicateId, InvalidTransition, NotFound
from agent_lightning.store import transitions as tr
from agent_lightning.store.base import DELIVERED_STATUSES, LATEST, LightningStore, RolloutQuery, SpanQuery
from agent_lightning.store.notify import ChangeNotifier
from agent_lightning.types import (
    Attempt,
    AttemptCompletion,
    AttemptedRollout,
    Resource,
    ResourcesSnapshot,
    Rollout,
    RolloutMode,
    RolloutRequest,
    Span,
    Subscription,
)
from agent_lightning.types.rollouts import CLAIMABLE_ROLLOUT_STATUSES, new_id
from agent_lightning.types.spans import copy_span, span_fields_json, trusted_span

_RESOURCES = TypeAdapter(dict[str, Resource])
_M = TypeVar("_M", bound=BaseModel)


def _copy(model: _M) -> _M:
    """A deep copy: what callers get or give never aliases what the store holds."""
    return model.model_copy(deep=True)


_Record = tuple[str, int, float, str, str, str, Any]
"""A stored span: attempt id, sequence id, start time, span id, kind, name (what queries filter and sort
on), then the span as JSON bytes. Bytes are invisible to the garbage collector, which otherwise walks
every span object a long-lived store holds, and reading them back is as cheap as a deep copy."""


def _freeze(span: Span) -> tuple[str, _Record]:
    try:
        body: bytes | Span = to_json(span_fields_json(span))
    except PydanticSerializationError:  # a string JSON cannot hold (a lone surrogate): keep a copy
        body = copy_span(span)
    return span.rollout_id, (
        span.attempt_id,
        span.sequence_id,
        span.start_time,
        span.span_id,
        span.kind,
        span.name,
        body,
    )


def _thaw(record: _Record) -> Span:
    body = record[6]
    return trusted_span(from_json(body)) if type(body) is bytes else copy_span(body)


@dataclass
class _Group:
    task_types: frozenset[str] | None
    pending: deque[str] = field(default_factory=deque)
    inflight: dict[str, float] = field(default_factory=dict)  # rollout id -> redelivery deadline

    def wants(self, rollout: Rollout) -> bool:
        return self.task_types is None or rollout.task_type in self.task_types


class InMemoryLightningStore(LightningStore):
    """A thread-safe store kept in this process's memory (``memory://``).

    Every method holds one lock while it reads and writes, so calls from
    several threads or event loops are atomic. Objects go in and come out as
    deep copies, so mutating them never changes the store.
    """

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.RLock()
        self._changed = ChangeNotifier()
        self._rollouts: dict[str, Rollout] = {}
        self._queue: deque[str] = deque()  # claimable rollout ids, oldest first
        self._attempts: dict[str, list[Attempt]] = {}
        self._attempt_ids: set[str] = set()  # every attempt id, for client-chosen ids' uniqueness
        self._running: dict[str, None] = {}  # rollouts whose newest attempt runs (an ordered set): what reaping checks
        self._spans: dict[str, dict[tuple[str, str], _Record]] = {}  # rollout -> (attempt, span id) -> span
        self._resources: dict[str, ResourcesSnapshot] = {}
        self._latest_resources: str | None = None
        self._groups: dict[str, _Group] = {}
        self._order = itertools.count()
        self._created_order: dict[str, int] = {}

    # ------------------------------------------------------------------ helpers
    def _rollout(self, rollout_id: str) -> Rollout:
        try:
            return self._rollouts[rollout_id]
        except KeyError:
            raise NotFound(f"no rollout with id {rollout_id!r}") from None

    def _attempt(self, rollout_id: str, attempt_id: str) -> tuple[int, Attempt]:
        for index, attempt in enumerate(self._attempts.get(self._rollout(rollout_id).rollout_id, [])):
            if attempt.attempt_id == attempt_id:
                return index, attempt
        raise NotFound(f"rollout {rollout_id!r} has no attempt {attempt_id!r}")

    def _save(self, rollout: Rollout, attempt: Attempt | None = None) -> None:
        previous = self._rollouts.get(rollout.rollout_id)
        self._rollouts[rollout.rollout_id] = rollout
        if attempt is not None:
            attempts = self._attempts.setdefault(rollout.rollout_id, [])
            for index, existing in enumerate(attempts):
                if existing.attempt_id == attempt.attempt_id:
                    attempts[index] = attempt
                    break
            else:
                attempts.append(attempt)
                self._attempt_ids.add(attempt.attempt_id)
            if attempts[-1].status == "running":
                self._running[rollout.rollout_id] = None
            else:
                self._running.pop(rollout.rollout_id, None)
        if rollout.status == "requeuing" and (previous is None or previous.status != "requeuing"):
            self._queue.append(rollout.rollout_id)
        if rollout.status in DELIVERED_STATUSES and (previous is None or previous.status != rollout.status):
            for group in self._groups.values():
                if group.wants(rollout):
                    group.pending.append(rollout.rollout_id)

    def _reap(self, now: float) -> list[Attempt]:
        reaped: list[Attempt] = []
        for rollout_id in list(self._running):
            attempts = self._attempts[rollout_id]
            if attempts[-1].status != "running":
                continue
            rollout = self._rollouts[rollout_id]
            status = tr.expiry_status(rollout, attempts[-1], now)
            if status is not None:
                updated, ended = tr.finish_attempt(rollout, attempts[-1], status, tr.expiry_error(status, rollout), now)
                self._save(updated, ended)
                reaped.append(ended)
        return reaped

    # ------------------------------------------------------------------ rollouts
    async def enqueue_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        now = time.time()
        with self._lock:
            rollouts = [_copy(tr.new_rollout(tr.as_request(r), now)) for r in requests]
            ids = [r.rollout_id for r in rollouts]
            duplicates = {i for i in ids if i in self._rollouts} | {i for i, n in Counter(ids).items() if n > 1}
            if duplicates:
                raise DuplicateId(f"rollout ids already used: {sorted(duplicates)}")
            for rollout in rollouts:
                self._created_order[rollout.rollout_id] = next(self._order)
                self._rollouts[rollout.rollout_id] = rollout
                self._queue.append(rollout.rollout_id)
        self._changed.notify_all()
        return [_copy(r) for r in rollouts]

    async def start_rollout(
        self, request: RolloutRequest, worker_id: str | None = None, *, attempt_id: str | None = None
    ) -> AttemptedRollout:
        now = time.time()
        with self._lock:
            rollout = _copy(tr.new_rollout(tr.as_request(request), now))
            if rollout.rollout_id in self._rollouts:
                raise DuplicateId(f"rollout id already used: {rollout.rollout_id!r}")
            running, attempt = tr.start_attempt(rollout, worker_id, now, attempt_id)
            if attempt_id is not None and attempt_id in self._attempt_ids:
                raise DuplicateId(f"attempt id already used: {attempt_id!r}")
            self._created_order[rollout.rollout_id] = next(self._order)
            self._save(running, attempt)
        self._changed.notify_all()
        return AttemptedRollout(rollout=_copy(running), attempt=_copy(attempt))

    async def _claim_rollout(
        self, worker_id: str, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> AttemptedRollout | None:
        claimed = self._claim(worker_id, 1, task_types, modes)
        return claimed[0] if claimed else None

    async def _claim_rollouts(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        return self._claim(worker_id, limit, task_types, modes)

    def _claim(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        now = time.time()
        claimed: list[AttemptedRollout] = []
        with self._lock:
            self._reap(now)
            for rollout_id in list(self._queue):
                rollout = self._rollouts[rollout_id]
                if rollout.status not in CLAIMABLE_ROLLOUT_STATUSES:
                    self._queue.remove(rollout_id)  # cancelled while queued
                    continue
                if task_types is not None and rollout.task_type not in task_types:
                    continue
                if modes is not None and rollout.mode not in modes:
                    continue
                self._queue.remove(rollout_id)
                running, attempt = tr.start_attempt(rollout, worker_id, now)
                self._save(running, attempt)
                claimed.append(AttemptedRollout(rollout=_copy(running), attempt=_copy(attempt)))
                if len(claimed) == limit:
                    break
        if claimed:
            self._changed.notify_all()
        return claimed

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        now = time.time()
        with self._lock:
            self._reap(now)
            _, attempt = self._attempt(rollout_id, attempt_id)
            updated = tr.heartbeat(self._rollout(rollout_id), attempt, now)
            self._save(self._rollout(rollout_id), updated)
        return _copy(updated)

    async def _complete_attempt(
        self, rollout_id: str, attempt_id: str, status: Literal["succeeded", "failed"], error: str | None
    ) -> Rollout:
        now = time.time()
        with self._lock:
            self._reap(now)
            _, attempt = self._attempt(rollout_id, attempt_id)
            rollout, ended = tr.finish_attempt(self._rollout(rollout_id), attempt, status, error, now)
            self._save(rollout, ended)
        self._changed.notify_all()
        return _copy(rollout)

    async def _complete_attempts(self, completions: list[AttemptCompletion]) -> list[Rollout]:
        now = time.time()
        with self._lock:
            self._reap(now)
            finished: list[tuple[Rollout, Attempt]] = []
            for item in completions:  # every item is checked before any is saved
                _, attempt = self._attempt(item.rollout_id, item.attempt_id)
                rollout = self._rollout(item.rollout_id)
                finished.append(tr.finish_attempt(rollout, attempt, item.status, item.error, now))
            for rollout, ended in finished:
                self._save(rollout, ended)
        self._changed.notify_all()
        return [_copy(rollout) for rollout, _ in finished]

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        now = time.time()
        with self._lock:
            rollout = self._rollout(rollout_id)
            attempts = self._attempts.get(rollout_id, [])
            cancelled, ended = tr.cancel(rollout, attempts[-1] if attempts else None, now)
            self._save(cancelled, ended)
        self._changed.notify_all()
        return _copy(cancelled)

    async def reap_expired(self, now: float | None = None) -> list[Attempt]:
        tr.check_now(now)
        with self._lock:
            reaped = self._reap(time.time() if now is None else now)
        if reaped:
            self._changed.notify_all()
        return [_copy(a) for a in reaped]

    async def get_rollout(self, rollout_id: str) -> Rollout:
        with self._lock:
            return _copy(self._rollout(rollout_id))

    async def _query_rollouts(self, query: RolloutQuery) -> list[Rollout]:
        with self._lock:
            candidates = (
                [self._rollouts[r] for r in dict.fromkeys(query.rollout_ids) if r in self._rollouts]
                if query.rollout_ids is not None
                else list(self._rollouts.values())
            )
            matches = [r for r in candidates if query.matches(r)]
            matches.sort(key=lambda r: self._created_order[r.rollout_id])
            return [_copy(r) for r in matches[query.offset : query.offset + query.limit]]

    async def _count_rollouts(self, query: RolloutQuery) -> dict[str, dict[str, int]]:
        with self._lock:
            found = Counter((r.task_type, r.status) for r in self._rollouts.values() if query.matches(r))
        counts: dict[str, dict[str, int]] = {}
        for (task_type, state), n in found.items():
            counts.setdefault(task_type, {})[state] = n
        return counts

    async def get_attempts(self, rollout_id: str) -> list[Attempt]:
        with self._lock:
            self._rollout(rollout_id)
            return [_copy(a) for a in self._attempts.get(rollout_id, [])]

    async def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None = None, poll_interval: float = 0.05
    ) -> list[Rollout]:
        tr.check_timeout("timeout", timeout)
        ids = list(dict.fromkeys(rollout_ids))
        with self._lock:
            for rollout_id in ids:
                self._rollout(rollout_id)

        def all_done() -> list[Rollout] | None:
            with self._lock:
                self._reap(time.time())
                rollouts = [self._rollouts[r] for r in ids]
            return rollouts if all(r.is_terminal for r in rollouts) else None

        await self._changed.wait_for(all_done, timeout)
        with self._lock:
            return [_copy(self._rollouts[r]) for r in ids if self._rollouts[r].is_terminal]

    # ------------------------------------------------------------------ spans
    async def add_spans(self, spans: Sequence[Span]) -> int:
        checked = tr.check_spans_batch(spans)
        stored = [_freeze(span) for span in checked]
        with self._lock:
            finished: dict[tuple[str, str], bool] = {}
            for rollout_id, record in stored:
                owner = (rollout_id, record[0])
                if owner not in finished:  # raises NotFound before anything is stored
                    finished[owner] = self._attempt(*owner)[1].status in tr.IMMUTABLE_ATTEMPT_STATUSES
            for span, (rollout_id, record) in zip(checked, stored, strict=True):
                if finished[(rollout_id, record[0])]:
                    old = self._spans.get(rollout_id, {}).get((record[0], record[3]))
                    refusal = tr.finished_span_refusal(span, old, old == record)
                    if refusal is not None:
                        raise refusal
            for rollout_id, record in stored:
                self._spans.setdefault(rollout_id, {})[(record[0], record[3])] = record
        self._changed.notify_all()
        return len(stored)

    async def _query_spans(self, query: SpanQuery) -> list[Span]:
        rollout_id, attempt_id, cursor = query.rollout_id, query.attempt_id, query.after
        with self._lock:
            self._rollout(rollout_id)
            attempts = self._attempts.get(rollout_id, [])
            if attempt_id == LATEST:
                if not attempts:
                    return []
                attempt_id = attempts[-1].attempt_id
            elif attempt_id is not None:
                self._attempt(rollout_id, attempt_id)
            order = {a.attempt_id: a.sequence for a in attempts}
            if cursor is not None:
                start = cursor.key(self._attempt(rollout_id, cursor.attempt_id)[1].sequence)
            records = [
                r
                for r in self._spans.get(rollout_id, {}).values()
                if (attempt_id is None or r[0] == attempt_id)
                and (query.kinds is None or r[4] in query.kinds)
                and (query.names is None or r[5] in query.names)
                and (query.after_sequence_id is None or r[1] > query.after_sequence_id)
            ]

        def key(record: _Record) -> tuple[int, int, float, str]:
            return (order.get(record[0], 0), record[1], record[2], record[3])

        if cursor is not None:
            records = [r for r in records if key(r) > start]
        records.sort(key=key)
        return [_thaw(r) for r in (records if query.limit is None else records[: query.limit])]

    # ------------------------------------------------------------------ resources
    async def add_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        validated = _RESOURCES.validate_python(dict(resources))
        tr.check_resources(validated, metadata)
        with self._lock:
            snapshot = _copy(
                ResourcesSnapshot(
                    resources_id=new_id("rs"),
                    version=len(self._resources) + 1,
                    resources=validated,
                    metadata=dict(metadata or {}),
                )
            )
            self._resources[snapshot.resources_id] = snapshot
            self._latest_resources = snapshot.resources_id
        self._changed.notify_all()
        return _copy(snapshot)

    async def get_resources(self, resources_id: str) -> ResourcesSnapshot:
        with self._lock:
            try:
                return _copy(self._resources[resources_id])
            except KeyError:
                raise NotFound(f"no resources snapshot with id {resources_id!r}") from None

    async def get_latest_resources(self) -> ResourcesSnapshot | None:
        with self._lock:
            return None if self._latest_resources is None else _copy(self._resources[self._latest_resources])

    # ------------------------------------------------------------------ publish–subscribe
    async def subscribe(
        self, group: str, *, task_types: Sequence[str] | None = None, from_beginning: bool = False
    ) -> None:
        tr.check_subscription(group)
        wanted = None if task_types is None else frozenset(task_types)
        with self._lock:
            existing = self._groups.get(group)
            if existing is not None:
                if existing.task_types != wanted:
                    raise InvalidTransition(
                        f"group {group!r} already subscribes to {sorted(existing.task_types or ['*'])}, "
                        f"not {sorted(wanted or ['*'])}"
                    )
                return
            created = _Group(task_types=wanted)
            if from_beginning:
                finished = [r for r in self._rollouts.values() if r.status in DELIVERED_STATUSES and created.wants(r)]
                finished.sort(key=lambda r: (r.ended_at or 0.0, self._created_order[r.rollout_id]))
                created.pending.extend(r.rollout_id for r in finished)
            self._groups[group] = created

    def _group(self, group: str) -> _Group:
        try:
            return self._groups[group]
        except KeyError:
            raise NotFound(f"no subscription group {group!r}; call subscribe() first") from None

    async def _pull_completed(
        self, group: str, consumer: str, max_count: int, timeout: float, visibility_timeout: float
    ) -> list[Rollout]:
        with self._lock:
            self._group(group)

        def take() -> list[Rollout] | None:
            now = time.time()
            with self._lock:
                state = self._group(group)
                expired = [r for r, deadline in state.inflight.items() if deadline <= now]
                for rollout_id in expired:  # never acknowledged: deliver again, first in line, in order
                    del state.inflight[rollout_id]
                state.pending.extendleft(reversed(expired))
                taken: list[Rollout] = []
                while state.pending and len(taken) < max_count:
                    rollout_id = state.pending.popleft()
                    state.inflight[rollout_id] = now + visibility_timeout
                    taken.append(_copy(self._rollouts[rollout_id]))
            return taken or None

        return await self._changed.wait_for(take, timeout) or []

    async def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        with self._lock:
            state = self._group(group)
            return sum(state.inflight.pop(r, None) is not None for r in rollout_ids)

    async def list_subscriptions(self) -> list[Subscription]:
        now = time.time()
        with self._lock:
            return [
                Subscription(
                    group=name,
                    task_types=None if g.task_types is None else sorted(g.task_types),
                    pending=len(g.pending) + sum(d <= now for d in g.inflight.values()),
                    delivered=sum(d > now for d in g.inflight.values()),
                )
                for name, g in sorted(self._groups.items())
            ]
