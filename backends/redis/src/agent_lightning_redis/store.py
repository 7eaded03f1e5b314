"""The Redis store: every state change is one atomic Lua script or a compare-and-set on the rollout."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.exceptions as rexc
from agent_lightning import limits
from agent_lightning.errors import DuplicateId, InvalidTransition, NotFound, StoreError, StoreUnavailable
from agent_lightning.limits import MAX_INT
from agent_lightning.store import transitions as tr
from agent_lightning.store.base import LATEST, LightningStore, RolloutQuery, SpanQuery
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
from agent_lightning.types.rollouts import TERMINAL_ROLLOUT_STATUSES, new_id
from pydantic import TypeAdapter

from agent_lightning_redis import codec, scripts
from agent_lightning_redis.url import START_COMMAND, parse_url

P = ParamSpec("P")
T = TypeVar("T")

_RESOURCES = TypeAdapter(dict[str, Resource])
_MODES: tuple[RolloutMode, ...] = ("train", "val", "test")
_CAS_RETRIES = 200
_SCRIPTS = {
    "create": scripts.CREATE,
    "update": scripts.UPDATE,
    "claim": scripts.CLAIM,
    "succeed": scripts.SUCCEED,
    "add_spans": scripts.ADD_SPANS,
    "add_resources": scripts.ADD_RESOURCES,
    "subscribe": scripts.SUBSCRIBE,
    "pull": scripts.PULL,
    "ack": scripts.ACK,
}
_SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SCRIPTS.items()}


def _translate_errors(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn driver connection errors into :class:`StoreUnavailable` naming the store's URL."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            store = args[0]
            assert isinstance(store, RedisLightningStore)
            raise StoreUnavailable(
                f"Redis store at {store.redacted_url} is unreachable ({type(exc).__name__}: {exc}); "
                f"is the server running? Start one with: {START_COMMAND}"
            ) from exc
        except rexc.ResponseError as exc:
            store = args[0]
            assert isinstance(store, RedisLightningStore)
            if _is_db_out_of_range(exc):
                raise store._no_such_db() from None
            raise StoreError(f"Redis store at {store.redacted_url} refused a command: {exc}") from exc

    return wrapper


def _is_db_out_of_range(exc: BaseException) -> bool:
    return "DB index is out of range" in str(exc)


@dataclass
class _Conn:
    """A client and the SHA1s of the scripts, for one event loop."""

    client: Any  # an aioredis.Redis with decode_responses=True: replies are str, which its types cannot say
    shas: dict[str, str]

    async def run(self, name: str, args: Sequence[str | int | float]) -> Any:
        """Run a script by its SHA1 (loading it first if the server does not know it, e.g. after a restart)."""
        try:
            return await self.client.execute_command("EVALSHA", self.shas[name], 0, *args)
        except rexc.NoScriptError:
            await self.client.script_load(_SCRIPTS[name])
            return await self.client.execute_command("EVALSHA", self.shas[name], 0, *args)


@dataclass
class _State:
    """A rollout as loaded for a compare-and-set."""

    rollout: Rollout
    attempts: list[Attempt]
    version: str

    def attempt(self, attempt_id: str) -> Attempt:
        for attempt in self.attempts:
            if attempt.attempt_id == attempt_id:
                return attempt
        raise NotFound(f"rollout {self.rollout.rollout_id!r} has no attempt {attempt_id!r}")


class RedisLightningStore(LightningStore):
    """A :class:`LightningStore` kept in Redis (``redis://host:port/db?prefix=agl:``).

    Safe to share between threads, event loops and processes: each event loop gets
    its own connection pool, and every change is atomic in Redis. Finished rollouts
    are published on Redis Streams (one per task type, plus one for all) and each
    subscription group is a Redis consumer group.

    :param url: ``redis://`` or ``rediss://`` URL; ``?prefix=`` namespaces the keys.
    :param prefix: key prefix (overrides the default ``agl:``; must agree with the URL's).
    :param check: ping the server now and raise :class:`StoreUnavailable` if it does not answer.
    :param connect_timeout: seconds to wait for a connection.
    :param client_options: extra keyword arguments for ``redis.asyncio.Redis`` (``max_connections``, …).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        check: bool = True,
        connect_timeout: float = 5.0,
        **client_options: Any,
    ) -> None:
        parsed = parse_url(url, prefix)
        if prefix is not None and "prefix=" not in urlsplit(url).query:
            parts = urlsplit(url)
            url = urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), ("prefix", prefix)])))
        self.url = url
        self.prefix = parsed.prefix
        self.redacted_url = parsed.redacted
        self._connect_url = parsed.connect_url
        self._options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            **client_options,
            "decode_responses": True,
        }
        self._lock = threading.Lock()
        self._conns: dict[asyncio.AbstractEventLoop, _Conn] = {}
        if check:
            self.check()

    # ------------------------------------------------------------------ connections
    def check(self) -> None:
        """Ping the server (synchronously); raise :class:`StoreUnavailable` naming the URL if it fails."""
        client = redis.Redis.from_url(self._connect_url, **self._options)
        try:
            client.ping()
        except rexc.AuthenticationError as exc:
            raise StoreUnavailable(f"Redis at {self.redacted_url} refused the credentials: {exc}") from None
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {self.redacted_url} ({exc}); start it with: {START_COMMAND}"
            ) from None
        except rexc.ResponseError as exc:
            if _is_db_out_of_range(exc):
                raise self._no_such_db() from None
            raise StoreError(f"Redis at {self.redacted_url} refused a command: {exc}") from None
        finally:
            client.close()

    def _no_such_db(self) -> StoreError:
        """The error for a URL naming a database number the server does not have (its ``databases`` limit)."""
        db = urlsplit(self._connect_url).path.lstrip("/") or "0"
        limit = "its 'databases' setting"
        client = redis.Redis.from_url(urlunsplit(urlsplit(self._connect_url)._replace(path="/0")), **self._options)
        try:
            count = int(client.config_get("databases").get("databases", ""))
            limit = f"it has {count} (databases 0 to {count - 1}, its 'databases' setting)"
        except Exception:  # CONFIG may be disabled or renamed on a managed server
            pass
        finally:
            client.close()
        return StoreError(
            f"Redis at {self.redacted_url} has no database {db}: {limit}; "
            "use a smaller number in the URL, or raise 'databases' in redis.conf"
        )

    def _conn(self) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is not None:
            return conn
        with self._lock:
            for stale in [other for other in self._conns if other.is_closed()]:
                del self._conns[stale]
            conn = self._conns.get(loop)
            if conn is None:
                client = aioredis.Redis.from_url(self._connect_url, **self._options)
                conn = _Conn(client, _SHAS)
                self._conns[loop] = conn
        return conn

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def close(self) -> None:
        """Close the connection pools (this loop's now; other live loops' on their own loop)."""
        with self._lock:
            conns, self._conns = self._conns, {}
        current = asyncio.get_running_loop()
        for loop, conn in conns.items():
            if loop is current:
                await conn.client.aclose()
            elif not loop.is_closed():
                try:
                    asyncio.run_coroutine_threadsafe(conn.client.aclose(), loop)
                except RuntimeError:  # the loop closed meanwhile
                    pass

    @_translate_errors
    async def purge(self) -> int:
        """Delete every key under this store's prefix; returns how many were deleted."""
        client = self._conn().client
        deleted = 0
        batch: list[str] = []
        async for key in client.scan_iter(match=_glob_escape(self.prefix) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
        return deleted

    # ------------------------------------------------------------------ loading and writing
    async def _server_time(self) -> float:
        """The Redis server's clock: leases and reaping never depend on a client's."""
        seconds, micros = await self._conn().client.time()
        return float(f"{seconds}.{micros:06d}")

    async def _load(self, rollout_id: str) -> tuple[_State, float]:
        """The rollout with its attempts, and the server's time when they were read."""
        pipe = self._conn().client.pipeline(transaction=False)
        pipe.hgetall(self._key("ro", rollout_id))
        pipe.hgetall(self._key("at", rollout_id))
        pipe.time()
        fields, attempts, (seconds, micros) = await pipe.execute()
        if not fields:
            raise NotFound(f"no rollout with id {rollout_id!r}")
        rollout = codec.decode_rollout(fields)
        state = _State(rollout, codec.decode_attempts(attempts, codec.lease_seconds(fields["lease"])), fields["ver"])
        return state, float(f"{seconds}.{micros:06d}")

    async def _load_many(self, rollout_ids: Sequence[str]) -> tuple[dict[str, _State], float]:
        """The rollouts that exist among ``rollout_ids`` with their attempts, and the server's time when read."""
        pipe = self._conn().client.pipeline(transaction=False)
        for rollout_id in rollout_ids:
            pipe.hgetall(self._key("ro", rollout_id))
            pipe.hgetall(self._key("at", rollout_id))
        pipe.time()
        *replies, (seconds, micros) = await pipe.execute()
        states: dict[str, _State] = {}
        for rollout_id, fields, attempts in zip(rollout_ids, replies[::2], replies[1::2], strict=True):
            if fields:
                lease = codec.lease_seconds(fields["lease"])
                states[rollout_id] = _State(
                    codec.decode_rollout(fields), codec.decode_attempts(attempts, lease), fields["ver"]
                )
        return states, float(f"{seconds}.{micros:06d}")

    async def _write(self, state: _State, rollout: Rollout, attempt: Attempt | None) -> bool:
        """Compare-and-set: store the new rollout/attempt unless the rollout changed since it was loaded."""
        return await self._write_many([(state, rollout, attempt)])

    async def _write_many(self, changes: Sequence[tuple[_State, Rollout, Attempt | None]]) -> bool:
        """Compare-and-set of several rollouts at once: all are stored, or none if any changed since it was loaded."""
        args: list[str | int | float] = [self.prefix, len(changes)]
        for state, rollout, attempt in changes:
            if attempt is None:
                lease = "keep"
            elif attempt.status == "running":
                lease = codec.lease_deadline(rollout, attempt)
            else:
                lease = "del"
            args += [
                rollout.rollout_id,
                state.version,
                rollout.status,
                rollout.attempt_count,
                codec.num(rollout.started_at),
                codec.num(rollout.ended_at),
                codec.encode_error(rollout.error),
                "" if attempt is None else attempt.attempt_id,
                "" if attempt is None else codec.encode_attempt(attempt),
                lease,
            ]
        result = await self._conn().run("update", args)
        if result[0] == "missing":
            raise NotFound(f"no rollout with id {result[1]!r}")
        return bool(result[0] == "ok")

    async def _expire(self, state: _State, now: float) -> Attempt | None:
        """Reap the rollout's running attempt if it has overrun; returns the reaped attempt (or None)."""
        if not state.attempts:
            return None
        last = state.attempts[-1]
        status = tr.expiry_status(state.rollout, last, now)
        if status is None:
            return None
        rollout, ended = tr.finish_attempt(state.rollout, last, status, tr.expiry_error(status, state.rollout), now)
        return ended if await self._write(state, rollout, ended) else None

    async def _mutate(
        self,
        rollout_id: str,
        change: Callable[[_State, float], tuple[Rollout, Attempt | None, T]],
        *,
        reap_first: bool,
    ) -> T:
        """Load, apply ``change`` (which may raise), and compare-and-set; retry when another writer won."""
        for _ in range(_CAS_RETRIES):
            state, now = await self._load(rollout_id)
            if reap_first and state.attempts and tr.expiry_status(state.rollout, state.attempts[-1], now):
                await self._expire(state, now)
                continue  # reload: the attempt is over, so ``change`` sees it ended
            rollout, attempt, result = change(state, now)
            if await self._write(state, rollout, attempt):
                return result
        raise StoreError(f"rollout {rollout_id!r} kept changing under concurrent writers; gave up after retries")

    # ------------------------------------------------------------------ rollouts
    async def _create(self, items: Sequence[tuple[Rollout, Attempt | None]]) -> None:
        args: list[str | int | float] = [self.prefix, len(items)]
        for rollout, attempt in items:
            args += [
                rollout.rollout_id,
                rollout.task_type,
                rollout.mode,
                rollout.status,
                codec.rollout_body(rollout),
                codec.num(rollout.config.lease_seconds),
                codec.num(rollout.config.timeout_seconds),
                codec.num(rollout.started_at),
                "" if attempt is None else attempt.attempt_id,
                "" if attempt is None else codec.encode_attempt(attempt),
                "" if attempt is None else codec.lease_deadline(rollout, attempt),
            ]
        outcome, duplicates = await self._conn().run("create", args)
        if outcome == "dup":
            raise DuplicateId(f"ids already used: {sorted(duplicates)}")

    @_translate_errors
    async def enqueue_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        now = time.time()
        rollouts = [tr.new_rollout(tr.as_request(r), now) for r in requests]
        ids = [r.rollout_id for r in rollouts]
        twice = {i for i in ids if ids.count(i) > 1} if len(set(ids)) != len(ids) else set()
        if twice:
            raise DuplicateId(f"rollout ids appear more than once in the batch: {sorted(twice)}")
        if rollouts:
            await self._create([(r, None) for r in rollouts])
        return rollouts

    @_translate_errors
    async def start_rollout(
        self, request: RolloutRequest, worker_id: str | None = None, *, attempt_id: str | None = None
    ) -> AttemptedRollout:
        rollout = tr.new_rollout(tr.as_request(request), time.time())
        now = await self._server_time()
        running, attempt = tr.start_attempt(rollout, worker_id, now, attempt_id)
        await self._create([(running, attempt)])
        return AttemptedRollout(rollout=running, attempt=attempt)

    @_translate_errors
    async def _claim_rollout(
        self, worker_id: str, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> AttemptedRollout | None:
        claimed = await self._claim(worker_id, 1, task_types, modes)
        return claimed[0] if claimed else None

    @_translate_errors
    async def _claim_rollouts(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        return await self._claim(worker_id, limit, task_types, modes)

    async def _claim(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        """Up to ``limit`` of the oldest claimable rollouts, in one script call (after reaping, if leases expired)."""
        if (task_types is not None and not task_types) or (modes is not None and not modes):
            return []
        filters: list[str | int] = [-1] if task_types is None else [len(task_types), *task_types]
        filters += [-1] if modes is None else [len(modes), *modes]
        attempt_ids = [new_id("at") for _ in range(limit)]
        conn = self._conn()
        for reap_check in ("1", "0"):
            result = await conn.run(
                "claim", [self.prefix, limit, json.dumps(worker_id), reap_check, *filters, *attempt_ids]
            )
            if result[0] == "reap":
                await self._reap(float(result[1]))
                continue
            claimed: list[AttemptedRollout] = []
            for flat, attempt in result[1]:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                claimed.append(
                    AttemptedRollout(
                        rollout=codec.decode_rollout(fields),
                        attempt=codec.decode_attempt(attempt, codec.lease_seconds(fields["lease"])),
                    )
                )
            return claimed
        return []

    @_translate_errors
    async def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        def change(state: _State, now: float) -> tuple[Rollout, Attempt, Attempt]:
            updated = tr.heartbeat(state.rollout, state.attempt(attempt_id), now)
            return state.rollout, updated, updated

        return await self._mutate(rollout_id, change, reap_first=True)

    @_translate_errors
    async def _complete_attempt(
        self, rollout_id: str, attempt_id: str, status: Literal["succeeded", "failed"], error: str | None
    ) -> Rollout:
        if status == "succeeded":
            limits.check_text(error, "error")
            done = await self._succeed(
                [AttemptCompletion(rollout_id=rollout_id, attempt_id=attempt_id, status=status, error=error)]
            )
            if done is not None:
                return done[0]

        def change(state: _State, now: float) -> tuple[Rollout, Attempt, Rollout]:
            rollout, ended = tr.finish_attempt(state.rollout, state.attempt(attempt_id), status, error, now)
            return rollout, ended, rollout

        return await self._mutate(rollout_id, change, reap_first=True)

    async def _succeed(self, completions: Sequence[AttemptCompletion]) -> list[Rollout] | None:
        """Finish attempts as succeeded in one script call if each is the usual case; else ``None``, nothing done."""
        args: list[str | int | float] = [self.prefix, len(completions)]
        for item in completions:
            args += [item.rollout_id, item.attempt_id, json.dumps(item.error)]
        result = await self._conn().run("succeed", args)
        if result[0] != "ok":
            return None
        return [codec.decode_rollout(dict(zip(flat[::2], flat[1::2], strict=True))) for flat in result[1]]

    @_translate_errors
    async def _complete_attempts(self, completions: list[AttemptCompletion]) -> list[Rollout]:
        if all(c.status == "succeeded" for c in completions):
            done = await self._succeed(completions)
            if done is not None:
                return done
        rollout_ids = list(dict.fromkeys(c.rollout_id for c in completions))
        for _ in range(_CAS_RETRIES):
            states, now = await self._load_many(rollout_ids)
            lapsed = [
                state
                for state in states.values()
                if state.attempts and tr.expiry_status(state.rollout, state.attempts[-1], now)
            ]
            if lapsed:  # reap them, as complete_attempt does, and look again: their attempts are over
                for state in lapsed:
                    await self._expire(state, now)
                continue
            changes: list[tuple[_State, Rollout, Attempt | None]] = []
            for item in completions:  # every item is checked before any is written
                state = states.get(item.rollout_id)
                if state is None:
                    raise NotFound(f"no rollout with id {item.rollout_id!r}")
                attempt = state.attempt(item.attempt_id)
                rollout, ended = tr.finish_attempt(state.rollout, attempt, item.status, item.error, now)
                changes.append((state, rollout, ended))
            if await self._write_many(changes):
                return [rollout for _, rollout, _ in changes]
        raise StoreError(f"rollouts {rollout_ids[:3]} kept changing under concurrent writers; gave up after retries")

    @_translate_errors
    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        def change(state: _State, now: float) -> tuple[Rollout, Attempt | None, Rollout]:
            cancelled, ended = tr.cancel(state.rollout, state.attempts[-1] if state.attempts else None, now)
            return cancelled, ended, cancelled

        return await self._mutate(rollout_id, change, reap_first=False)

    async def _reap(self, now: float) -> list[Attempt]:
        client = self._conn().client
        candidates: list[str] = await client.zrangebyscore(self._key("leases"), "-inf", f"({codec.num(now)}")
        reaped: list[Attempt] = []
        for rollout_id in candidates:
            for _ in range(_CAS_RETRIES):
                try:
                    state, _ = await self._load(rollout_id)
                except NotFound:
                    break
                last = state.attempts[-1] if state.attempts else None
                if last is None or last.status != "running":
                    break
                if tr.expiry_status(state.rollout, last, now) is None:
                    # The index was a little early (it rounds); store the exact deadline so no one loops.
                    await client.zadd(
                        self._key("leases"), {rollout_id: float(codec.lease_deadline(state.rollout, last))}, xx=True
                    )
                    break
                ended = await self._expire(state, now)
                if ended is not None:
                    reaped.append(ended)
                    break
        return reaped

    @_translate_errors
    async def reap_expired(self, now: float | None = None) -> list[Attempt]:
        tr.check_now(now)
        return await self._reap(await self._server_time() if now is None else now)

    @_translate_errors
    async def get_rollout(self, rollout_id: str) -> Rollout:
        fields = await self._conn().client.hgetall(self._key("ro", rollout_id))
        if not fields:
            raise NotFound(f"no rollout with id {rollout_id!r}")
        return codec.decode_rollout(fields)

    async def _rollouts(self, ids: Sequence[str]) -> list[Rollout | None]:
        if not ids:
            return []
        pipe = self._conn().client.pipeline(transaction=False)
        for rollout_id in ids:
            pipe.hgetall(self._key("ro", rollout_id))
        return [codec.decode_rollout(f) if f else None for f in await pipe.execute()]

    @_translate_errors
    async def _query_rollouts(self, query: RolloutQuery) -> list[Rollout]:
        limit, offset = query.limit, query.offset
        if limit == 0:
            return []
        client = self._conn().client
        if query.rollout_ids is not None:
            unique = list(dict.fromkeys(query.rollout_ids))
            scores = await client.zmscore(self._key("rollouts"), unique) if unique else []
            ids = [r for _, r in sorted((s, r) for r, s in zip(unique, scores, strict=True) if s is not None)]
        elif query.status is not None:
            pipe = client.pipeline(transaction=False)
            for name in dict.fromkeys(query.status):
                pipe.zrange(self._key("st", name), 0, -1, withscores=True)
            merged = [pair for found in await pipe.execute() for pair in found]
            ids = [r for r, _ in sorted(merged, key=lambda pair: pair[1])]
        elif query.task_types is None and query.mode is None:
            ids = await client.zrange(self._key("rollouts"), offset, min(offset + limit - 1, MAX_INT))
            return [r for r in await self._rollouts(ids) if r is not None]
        else:
            ids = await client.zrange(self._key("rollouts"), 0, -1)
        found: list[Rollout] = []
        skipped = 0
        for start in range(0, len(ids), 500):
            for rollout in await self._rollouts(ids[start : start + 500]):
                if rollout is None or not query.matches(rollout):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                found.append(rollout)
                if len(found) >= limit:
                    return found
        return found

    @_translate_errors
    async def _count_rollouts(self, query: RolloutQuery) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for key, value in (await self._conn().client.hgetall(self._key("n"))).items():
            state, rollout_mode, task_type = key.split("|", 2)
            n = int(value)
            if (
                n > 0
                and (query.status is None or state in query.status)
                and (query.task_types is None or task_type in query.task_types)
                and (query.mode is None or rollout_mode == query.mode)
            ):
                per_status = counts.setdefault(task_type, {})
                per_status[state] = per_status.get(state, 0) + n
        return counts

    @_translate_errors
    async def get_attempts(self, rollout_id: str) -> list[Attempt]:
        return (await self._load(rollout_id))[0].attempts

    @_translate_errors
    async def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None = None, poll_interval: float = 0.05
    ) -> list[Rollout]:
        tr.check_timeout("timeout", timeout)
        ids = list(dict.fromkeys(rollout_ids))
        deadline = None if timeout is None else time.monotonic() + timeout
        client = self._conn().client
        while True:
            await self._reap(await self._server_time())
            pipe = client.pipeline(transaction=False)
            for rollout_id in ids:
                pipe.hget(self._key("ro", rollout_id), "status")
            statuses: list[str | None] = await pipe.execute()
            missing = [r for r, s in zip(ids, statuses, strict=True) if s is None]
            if missing:
                raise NotFound(f"no rollout with id {missing[0]!r}")
            remaining = None if deadline is None else deadline - time.monotonic()
            if all(s in TERMINAL_ROLLOUT_STATUSES for s in statuses) or (remaining is not None and remaining <= 0):
                done = [r for r, s in zip(ids, statuses, strict=True) if s in TERMINAL_ROLLOUT_STATUSES]
                return [r for r in await self._rollouts(done) if r is not None]
            await asyncio.sleep(poll_interval if remaining is None else max(0.0, min(poll_interval, remaining)))

    # ------------------------------------------------------------------ spans
    @_translate_errors
    async def add_spans(self, spans: Sequence[Span]) -> int:
        checked = tr.check_spans_batch(spans)
        if not checked:
            return 0
        pairs = {pair: n for n, pair in enumerate(dict.fromkeys((s.rollout_id, s.attempt_id) for s in checked), 1)}
        args: list[str | int | float] = [self.prefix, len(pairs)]
        for rollout_id, attempt_id in pairs:
            args += [rollout_id, attempt_id]
        for span in checked:
            args += [
                pairs[(span.rollout_id, span.attempt_id)],
                f"{span.attempt_id}:{span.span_id}",
                codec.encode_span(span),
                int(span.kind == "reward"),
            ]
        result = await self._conn().run("add_spans", args)
        if result[0] == "refused":
            stored = result[2] == "1"
            refusal = tr.finished_span_refusal(checked[int(result[1])], stored or None, False)
            assert refusal is not None
            raise refusal
        if result[0] == "missing":
            _, rollout_id, attempt_id, exists = result
            if not int(exists):
                raise NotFound(f"a span names rollout {rollout_id!r}, which does not exist; no span was stored")
            raise NotFound(f"rollout {rollout_id!r} has no attempt {attempt_id!r}; no span was stored")
        return len(spans)

    @_translate_errors
    async def _query_spans(self, query: SpanQuery) -> list[Span]:
        rollout_id, attempt_id, cursor = query.rollout_id, query.attempt_id, query.after
        pipe = self._conn().client.pipeline(transaction=False)
        pipe.hget(self._key("ro", rollout_id), "lease")
        pipe.hgetall(self._key("at", rollout_id))
        pipe.hgetall(self._key("sp", rollout_id))
        lease, raw_attempts, raw_spans = await pipe.execute()
        if lease is None:
            raise NotFound(f"no rollout with id {rollout_id!r}")
        attempts = codec.decode_attempts(raw_attempts, codec.lease_seconds(lease))
        if attempt_id == LATEST:
            if not attempts:
                return []
            attempt_id = attempts[-1].attempt_id
        elif attempt_id is not None and attempt_id not in raw_attempts:
            raise NotFound(f"rollout {rollout_id!r} has no attempt {attempt_id!r}")
        order = {a.attempt_id: a.sequence for a in attempts}
        if cursor is not None and cursor.attempt_id not in order:
            raise NotFound(f"rollout {rollout_id!r} has no attempt {cursor.attempt_id!r}")
        wanted = None if attempt_id is None else attempt_id + ":"
        kind_set = None if query.kinds is None else set(query.kinds)
        name_set = None if query.names is None else set(query.names)
        spans = [
            s
            for s in (codec.decode_span(v) for k, v in raw_spans.items() if wanted is None or k.startswith(wanted))
            if (kind_set is None or s.kind in kind_set)
            and (name_set is None or s.name in name_set)
            and (query.after_sequence_id is None or s.sequence_id > query.after_sequence_id)
        ]

        def key(span: Span) -> tuple[int, int, float, str]:
            return (order.get(span.attempt_id, 0), span.sequence_id, span.start_time, span.span_id)

        if cursor is not None:
            start = cursor.key(order[cursor.attempt_id])
            spans = [s for s in spans if key(s) > start]
        spans.sort(key=key)
        return spans if query.limit is None else spans[: query.limit]

    # ------------------------------------------------------------------ resources
    @_translate_errors
    async def add_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        validated = _RESOURCES.validate_python(dict(resources))
        tr.check_resources(validated, metadata)
        meta = dict(metadata or {})
        codec.check_json_value(meta, "metadata")
        draft = ResourcesSnapshot(resources_id=new_id("rs"), version=1, resources=validated, metadata=meta)
        body = codec.encode_resources(draft)
        version = await self._conn().run("add_resources", [self.prefix, draft.resources_id, body])
        return codec.decode_resources(body, str(version))

    @_translate_errors
    async def get_resources(self, resources_id: str) -> ResourcesSnapshot:
        version, body = await self._conn().client.hmget(self._key("res", resources_id), ["v", "body"])
        if body is None:
            raise NotFound(f"no resources snapshot with id {resources_id!r}")
        return codec.decode_resources(body, version)

    @_translate_errors
    async def get_latest_resources(self) -> ResourcesSnapshot | None:
        latest = await self._conn().client.get(self._key("res", "latest"))
        return None if latest is None else await self.get_resources(latest)

    # ------------------------------------------------------------------ publish–subscribe
    @_translate_errors
    async def subscribe(
        self, group: str, *, task_types: Sequence[str] | None = None, from_beginning: bool = False
    ) -> None:
        tr.check_subscription(group)
        if task_types is None:
            spec, streams = "*", [self._key("finished")]
        else:
            wanted = sorted(set(task_types))
            spec, streams = json.dumps(wanted), [self._key("finished", t) for t in wanted]
        result = await self._conn().run(
            "subscribe", [self.prefix, group, spec, "0" if from_beginning else "$", *streams]
        )
        if result[0] == "mismatch":
            existing = "every task type" if result[1] == "*" else json.loads(result[1])
            asked = "every task type" if task_types is None else sorted(set(task_types))
            raise InvalidTransition(f"group {group!r} already subscribes to {existing}, not {asked}")

    @_translate_errors
    async def _pull_completed(
        self, group: str, consumer: str, max_count: int, timeout: float, visibility_timeout: float
    ) -> list[Rollout]:
        conn = self._conn()
        give_up = time.monotonic() + timeout
        while True:
            result = await conn.run(
                "pull", [self.prefix, group, consumer, "", codec.num(visibility_timeout), max_count]
            )
            if result[0] == "nogroup":
                raise NotFound(f"no subscription group {group!r}; call subscribe() first")
            _, rollout_ids, next_redelivery, streams, last_ids, now = result
            if rollout_ids:
                return [r for r in await self._rollouts(rollout_ids) if r is not None]
            remaining = give_up - time.monotonic()
            if remaining <= 0 or not streams:
                if remaining > 0:
                    await asyncio.sleep(remaining)
                return []
            wait = min(remaining, 1.0)
            if next_redelivery:
                wait = min(wait, max(0.0, float(next_redelivery) - float(now)))
            if wait >= 0.001:
                # Wake as soon as anything is appended to the group's streams.
                await conn.client.xread(
                    dict(zip(streams, last_ids, strict=True)), count=1, block=max(1, int(wait * 1000))
                )

    @_translate_errors
    async def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        count = int(await self._conn().run("ack", [self.prefix, group, *rollout_ids]))
        if count < 0:
            raise NotFound(f"no subscription group {group!r}; call subscribe() first")
        return count

    @_translate_errors
    async def list_subscriptions(self) -> list[Subscription]:
        client = self._conn().client
        groups = sorted((await client.hgetall(self._key("groups"))).items())
        now = codec.num(time.time())
        pipe = client.pipeline(transaction=False)
        streams: dict[str, list[str]] = {}
        for group, spec in groups:
            types = None if spec == "*" else json.loads(spec)
            streams[group] = [self._key("finished")] if types is None else [self._key("finished", t) for t in types]
            for stream in streams[group]:
                pipe.xinfo_groups(stream)
            pipe.zcount(self._key("vis", group), "-inf", now)
            pipe.zcount(self._key("vis", group), f"({now}", "+inf")
        replies = iter(await pipe.execute())
        listed = []
        for group, spec in groups:
            undelivered = 0
            for stream in streams[group]:
                info = next((g for g in next(replies) if g["name"] == group), None)
                if info is None:
                    continue
                if info.get("lag") is not None:
                    undelivered += int(info["lag"])
                else:  # entries were deleted: count those after the group's last delivery
                    undelivered += len(await client.xrange(stream, "(" + info["last-delivered-id"], "+"))
            expired, in_flight = int(next(replies)), int(next(replies))
            listed.append(
                Subscription(
                    group=group,
                    task_types=None if spec == "*" else json.loads(spec),
                    pending=undelivered + expired,
                    delivered=in_flight,
                )
            )
        return listed


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped (for SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
