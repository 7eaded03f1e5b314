"""What the pages show, computed through the public :class:`~agent_lightning.store.LightningStore` contract only.

Counts (by task type and status) come from ``count_rollouts``, cached for :data:`COUNT_TTL` seconds;
subscription groups and their backlog from ``list_subscriptions``. The contract cannot filter by
resources, so resources versions and GRPO groups come from :class:`RolloutIndex`, which reads the
rollouts in creation order a page at a time within a time budget per request and keeps what it has
read of the finished ones (a finished rollout never changes again).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_lightning import semconv
from agent_lightning.errors import NotFound
from agent_lightning.store import LATEST, LightningStore
from agent_lightning.trajectory import build_episode, group_key
from agent_lightning.types import Attempt, ResourcesSnapshot, Rollout, Span

COUNT_TTL = 2.0
"""Seconds a count is reused (the list's page count, the queue depths)."""
STATUSES = ("queuing", "running", "requeuing", "succeeded", "failed", "cancelled")
MODES = ("train", "val", "test")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
MAX_GROUP = 64
"""The most rollouts of a GRPO group the training view reads to compute advantages."""
_EPS = 1e-6  # agent_lightning_rl.losses.EPS: the GRPO advantage's denominator guard


def _filters(status: Sequence[str] | None, task_types: Sequence[str] | None, mode: str | None) -> dict[str, Any]:
    return {"status": status or None, "task_types": task_types or None, "mode": mode or None}


class Counter:
    """``store.count_rollouts`` with a short cache per filter."""

    def __init__(self, store: LightningStore, ttl: float | None = None) -> None:
        self.store = store
        self.ttl = COUNT_TTL if ttl is None else ttl
        self._cache: dict[str, tuple[float, dict[str, dict[str, int]]]] = {}

    async def counts(self, **filters: Any) -> dict[str, dict[str, int]]:
        """Matching rollouts by task type, then status."""
        key = repr(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in filters.items()))
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = await self.store.count_rollouts(**filters)
        self._cache[key] = (time.monotonic(), value)
        return value

    async def count(self, **filters: Any) -> int:
        """How many rollouts match."""
        return sum(n for per_status in (await self.counts(**filters)).values() for n in per_status.values())


class Resources:
    """Resources snapshots by id (they are immutable, so cached forever)."""

    def __init__(self, store: LightningStore) -> None:
        self.store = store
        self._by_id: dict[str, ResourcesSnapshot | None] = {}

    async def get(self, resources_id: str | None) -> ResourcesSnapshot | None:
        if not resources_id:
            return None
        if resources_id not in self._by_id:
            try:
                self._by_id[resources_id] = await self.store.get_resources(resources_id)
            except NotFound:
                self._by_id[resources_id] = None
        return self._by_id[resources_id]

    async def all(self) -> list[ResourcesSnapshot]:
        """Every snapshot: the latest, then its predecessors by the ids rollouts name (see :class:`RolloutIndex`)."""
        latest = await self.store.get_latest_resources()
        if latest is not None:
            self._by_id[latest.resources_id] = latest
        return sorted((s for s in self._by_id.values() if s is not None), key=lambda s: s.version)


# --------------------------------------------------------------------------- the rollouts list
def _reward_of(spans: Sequence[Span]) -> float | None:
    values = [s.reward for s in spans if s.kind == "reward" and s.reward is not None]
    return math.fsum(v for v in values if v is not None) if values else None


def _resources_id_of(rollout: Rollout, spans: Sequence[Span]) -> str | None:
    if rollout.resources_id:
        return rollout.resources_id
    for span in spans:
        value = span.attributes.get(semconv.RESOURCES_ID)
        if isinstance(value, str) and value:
            return value
    return None


async def rollout_row(store: LightningStore, resources: Resources, rollout: Rollout) -> dict[str, Any]:
    """One line of the rollouts list: the rollout, its latest attempt's worker and reward, its resources version."""
    attempts: list[Attempt] = []
    spans: list[Span] = []
    if rollout.attempt_count:
        attempts, spans = await asyncio.gather(
            store.get_attempts(rollout.rollout_id),
            store.query_spans(rollout.rollout_id, LATEST, kinds=["reward", "agent"]),
        )
    resources_id = _resources_id_of(rollout, spans)
    snapshot = await resources.get(resources_id)
    end = rollout.ended_at if rollout.ended_at is not None else (time.time() if rollout.started_at else None)
    return {
        "rollout_id": rollout.rollout_id,
        "status": rollout.status,
        "task_type": rollout.task_type,
        "mode": rollout.mode,
        "attempts": rollout.attempt_count,
        "max_attempts": rollout.config.max_attempts,
        "reward": _reward_of(spans),
        "created_at": rollout.created_at,
        "duration": (end - rollout.started_at) if rollout.started_at is not None and end is not None else None,
        "resources_id": resources_id,
        "resources_version": snapshot.version if snapshot is not None else None,
        "worker": attempts[-1].worker_id if attempts else None,
        "error": rollout.error,
    }


async def rollouts_page(
    store: LightningStore,
    counter: Counter,
    resources: Resources,
    *,
    status: Sequence[str] | None = None,
    task_types: Sequence[str] | None = None,
    mode: str | None = None,
    page: int = 0,
    size: int = 50,
    newest_first: bool = True,
) -> dict[str, Any]:
    """A page of the rollouts list, newest first by default (the store returns oldest first)."""
    if not 1 <= size <= 500:
        raise ValueError(f"page size must be between 1 and 500, got {size}")
    if page < 0:
        raise ValueError(f"page must be 0 or more, got {page}")
    filters = _filters(status, task_types, mode)
    total = await counter.count(**filters)
    pages = max(1, math.ceil(total / size))
    if newest_first:
        end = total - page * size
        offset, limit = max(0, end - size), max(0, min(size, end))
    else:
        offset, limit = page * size, size
    rollouts = await store.query_rollouts(limit=limit, offset=offset, **filters) if limit else []
    if newest_first:
        rollouts.reverse()
    rows = await asyncio.gather(*(rollout_row(store, resources, r) for r in rollouts))
    return {"items": list(rows), "page": page, "size": size, "total": total, "pages": pages}


# --------------------------------------------------------------------------- the index of finished rollouts
@dataclass
class RolloutIndex:
    """What the contract cannot filter by, for finished rollouts: task types, resources ids, GRPO groups.

    :meth:`advance` reads on from where it stopped, in creation order (offsets never move: rollouts are
    only added), for at most ``budget`` seconds. Finished rollouts never change, so each is indexed once;
    once a pass reaches the end, the next one starts again at the oldest rollout not finished yet.
    """

    store: LightningStore
    page_size: int = 1000
    cursor: int = 0
    """Every rollout before this offset is finished and indexed."""
    by_resources: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    complete: bool = False
    """Whether one pass has reached the newest rollout."""
    rescan_after: float = 10.0
    """Seconds after a pass reached the newest rollout before the next pass starts."""
    _pass_ended: float = -math.inf
    _scan: int = 0
    _seen: set[str] = field(default_factory=set)

    @property
    def indexed(self) -> int:
        """How many finished rollouts are indexed."""
        return len(self._seen)

    async def advance(self, budget: float = 0.25) -> None:
        if self._scan == self.cursor and time.monotonic() - self._pass_ended < self.rescan_after:
            return
        deadline = time.monotonic() + budget
        while True:
            rollouts = await self.store.query_rollouts(limit=self.page_size, offset=self._scan)
            for position, rollout in enumerate(rollouts, start=self._scan):
                finished = rollout.status in FINISHED
                if finished and rollout.rollout_id not in self._seen:
                    self._seen.add(rollout.rollout_id)
                    statuses = self.by_resources.setdefault(rollout.resources_id or "", {})
                    statuses[rollout.status] = statuses.get(rollout.status, 0) + 1
                    self.groups.setdefault(group_key(rollout), []).append(rollout.rollout_id)
                if finished and position == self.cursor:
                    self.cursor += 1
            self._scan += len(rollouts)
            if len(rollouts) < self.page_size:
                self.complete = True
                self._scan = self.cursor
                self._pass_ended = time.monotonic()
                return
            if time.monotonic() >= deadline:
                return


# --------------------------------------------------------------------------- one rollout
def _short(value: Any) -> Any:
    """Attribute values as the page shows them: long id lists replaced by their length."""
    if isinstance(value, list) and len(value) > 16 and all(isinstance(v, (int, float)) for v in value[:16]):
        return {"omitted": f"{len(value)} values"}
    return value


def span_view(span: Span, origin: float) -> dict[str, Any]:
    attributes = span.attributes
    return {
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "attempt_id": span.attempt_id,
        "sequence_id": span.sequence_id,
        "name": span.name,
        "kind": span.kind,
        "start": span.start_time - origin,
        "duration": span.duration,
        "status": span.status.code,
        "status_message": span.status.message,
        "reward": span.reward if span.kind == "reward" else None,
        "reward_target": attributes.get(semconv.REWARD_TARGET_SPAN_ID) if span.kind == "reward" else None,
        "input_messages": attributes.get(semconv.GEN_AI_INPUT_MESSAGES),
        "output_messages": attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES),
        "input_tokens": attributes.get(semconv.GEN_AI_USAGE_INPUT_TOKENS),
        "output_tokens": attributes.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
        "latency_ms": attributes.get(semconv.LATENCY_MS),
        "token_ids": isinstance(attributes.get(semconv.COMPLETION_TOKEN_IDS), list),
        "model": attributes.get(semconv.GEN_AI_RESPONSE_MODEL) or attributes.get(semconv.GEN_AI_REQUEST_MODEL),
        "tool_name": attributes.get(semconv.GEN_AI_TOOL_NAME),
        "tool_arguments": attributes.get(semconv.GEN_AI_TOOL_CALL_ARGUMENTS),
        "tool_result": attributes.get(semconv.GEN_AI_TOOL_CALL_RESULT),
        "attributes": {k: _short(v) for k, v in attributes.items()},
    }


def span_tree(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Spans in tree order (depth-first, children by start time), each with its ``depth`` and rewards."""
    if not spans:
        return []
    origin = min(s.start_time for s in spans)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    rewards: dict[str, list[float]] = {}
    for span in spans:
        target = span.attributes.get(semconv.REWARD_TARGET_SPAN_ID)
        if span.kind == "reward" and span.reward is not None and isinstance(target, str):
            rewards.setdefault(target, []).append(span.reward)
    out: list[dict[str, Any]] = []
    stack = [(s, 0) for s in sorted(children.get(None, []), key=lambda s: (s.start_time, s.sequence_id), reverse=True)]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        view = span_view(span, origin)
        view["depth"] = depth
        view["rewards"] = rewards.get(span.span_id, [])
        out.append(view)
        kids = sorted(children.get(span.span_id, []), key=lambda s: (s.start_time, s.sequence_id), reverse=True)
        stack.extend((kid, depth + 1) for kid in kids)
    return out


async def rollout_detail(
    store: LightningStore, resources: Resources, rollout_id: str, attempt_id: str | None = None
) -> dict[str, Any]:
    """A rollout, its attempts, and the span tree of one attempt (the latest by default)."""
    rollout = await store.get_rollout(rollout_id)
    attempts = await store.get_attempts(rollout_id)
    chosen = attempt_id or (attempts[-1].attempt_id if attempts else None)
    spans = await store.query_spans(rollout_id, chosen) if chosen else []
    resources_id = _resources_id_of(rollout, spans)
    snapshot = await resources.get(resources_id)
    return {
        "rollout": rollout.model_dump(mode="json"),
        "attempts": [a.model_dump(mode="json") for a in attempts],
        "attempt_id": chosen,
        "resources_id": resources_id,
        "resources_version": snapshot.version if snapshot is not None else None,
        "reward": _reward_of(spans),
        "spans": span_tree(spans),
    }


# --------------------------------------------------------------------------- the training view
def grpo_advantages(scores: dict[str, float]) -> dict[str, float]:
    """GRPO's advantage of each rollout's score against its group: ``(r - mean) / (std + eps)``; 0 alone."""
    if len(scores) < 2:
        return {rollout_id: 0.0 for rollout_id in scores}
    values = list(scores.values())
    mean = statistics.fmean(values)
    std = statistics.stdev(values)
    return {rollout_id: (score - mean) / (std + _EPS) for rollout_id, score in scores.items()}


async def training_view(
    store: LightningStore,
    index: RolloutIndex,
    decode: Any,
    rollout_id: str,
    *,
    aggregation: str = "transition",
) -> dict[str, Any]:
    """The episode ``build_episode`` makes of the rollout (what the trainer trains on), token by token.

    ``decode(ids)`` returns one string per id (or ``None`` without a tokenizer). Advantages are GRPO's
    against the finished rollouts of the same group (``group_key``) that the index has read.
    """
    from agent_lightning.errors import NoTrainingData
    from agent_lightning.trajectory import ensure_training_data

    rollout = await store.get_rollout(rollout_id)
    spans = await store.query_spans(rollout_id)
    episode = build_episode(rollout, spans, aggregation="trajectory" if aggregation == "trajectory" else "transition")
    error = None
    try:
        ensure_training_data([episode])
    except NoTrainingData as exc:
        error = str(exc)
    scores = {rollout_id: _score(episode.samples)} if episode.samples else {}
    group = group_key(rollout)
    if episode.samples:
        await index.advance(budget=0.1)
        for sibling_id in index.groups.get(group, [])[:MAX_GROUP]:
            if sibling_id == rollout_id:
                continue
            sibling = await store.get_rollout(sibling_id)
            sibling_episode = build_episode(sibling, await store.query_spans(sibling_id))
            if sibling_episode.samples:
                scores[sibling_id] = _score(sibling_episode.samples)
    advantages = grpo_advantages(scores)
    mine = advantages.get(rollout_id)
    samples = []
    for sample in episode.samples:
        ids = sample.completion_token_ids
        texts = decode(ids)
        prompt_texts = decode(sample.prompt_token_ids)
        logprobs = sample.completion_logprobs
        samples.append(
            {
                "span_ids": sample.span_ids,
                "turn_index": sample.turn_index,
                "reward": sample.reward,
                "advantage": None if mine is None else (mine if len(scores) > 1 else 0.0),
                "agent_name": sample.agent_name,
                "resources_id": sample.resources_id,
                "trainable_tokens": sample.num_trainable_tokens,
                "prompt": [
                    {"id": i, "text": None if prompt_texts is None else prompt_texts[n]}
                    for n, i in enumerate(sample.prompt_token_ids)
                ],
                "completion": [
                    {
                        "id": token,
                        "text": None if texts is None else texts[n],
                        "trained": bool(sample.loss_mask[n]),
                        "logprob": None if logprobs is None else logprobs[n],
                    }
                    for n, token in enumerate(ids)
                ],
            }
        )
    return {
        "rollout_id": rollout_id,
        "attempt_id": episode.attempt_id,
        "task_type": rollout.task_type,
        "aggregation": aggregation,
        "reward": episode.reward,
        "warnings": episode.warnings,
        "no_training_data": error,
        "step_rewards": episode.step_rewards,
        "group": {"key": group, "rollouts": len(scores), "scores": scores, "indexed_all": index.complete},
        "samples": samples,
    }


def _score(samples: Sequence[Any]) -> float:
    """A rollout's score as GRPO takes it: the return of its last turn."""
    return float(max(samples, key=lambda s: s.turn_index).reward)


# --------------------------------------------------------------------------- queues
async def queues(store: LightningStore, counter: Counter) -> dict[str, Any]:
    """Rollouts waiting, retrying and running per task type (and for all), and the subscription groups."""
    live = ("queuing", "requeuing", "running")
    counts, groups = await asyncio.gather(counter.counts(), store.list_subscriptions())
    totals = {s: sum(per.get(s, 0) for per in counts.values()) for s in STATUSES}
    rows: list[dict[str, Any]] = [{"task_type": None, **{s: totals[s] for s in live}}]
    rows += [{"task_type": t, **{s: counts[t].get(s, 0) for s in live}} for t in sorted(counts)]
    for row in rows:
        row["depth"] = row["queuing"] + row["requeuing"]
    return {
        "rows": rows,
        "totals": totals,
        "subscription_groups": [g.model_dump(mode="json") for g in groups],
    }
