"""The dialect-neutral SQL store: every LightningStore method as one database transaction.

Each call runs a synchronous SQLAlchemy transaction in a worker thread
(``asyncio.to_thread``), so one store object can be used from any thread and
any event loop. The retry and lease rules come from
:mod:`agent_lightning.store.transitions`; this module only loads rows, applies
those functions and writes the result back, atomically.

Subclasses supply the dialect specifics: how to create the engine, how to start
a write transaction, row locking, the queue counter and change notifications.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, TypeVar, cast

import sqlalchemy as sa
from agent_lightning.errors import DuplicateId, InvalidTransition, NotFound, StoreError, StoreUnavailable
from agent_lightning.retry import Backoff, retrying
from agent_lightning.store import transitions as tr
from agent_lightning.store.base import DELIVERED_STATUSES, LATEST, LightningStore, RolloutQuery, SpanQuery
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
from pydantic import TypeAdapter
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from agent_lightning_sql import codec
from agent_lightning_sql.schema import (
    ATTEMPTS,
    DELIVERIES,
    MIGRATIONS,
    RESOURCES,
    ROLLOUTS,
    SCHEMA_VERSION,
    SPANS,
    SUBSCRIPTIONS,
    TABLES,
    VERSION,
)
from agent_lightning_sql.waker import Waker

T = TypeVar("T")
_RESOURCES = TypeAdapter(dict[str, Resource])
_CHUNK = 500  # ids per IN (...) list
_SPAN_KEY = ("rollout_id", "attempt_id", "span_id")
_SPAN_ORDER = (SPANS.c.attempt_seq, SPANS.c.sequence_id, SPANS.c.start_time, SPANS.c.span_id)


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _filtered(select: Select[Any], query: RolloutQuery) -> Select[Any]:
    """``select`` over the rollouts table, kept to the rollouts that pass the query's filters."""
    if query.status is not None:
        select = select.where(ROLLOUTS.c.status.in_(list(query.status)))
    if query.task_types is not None:
        select = select.where(ROLLOUTS.c.task_type.in_(list(query.task_types)))
    if query.mode is not None:
        select = select.where(ROLLOUTS.c.mode == query.mode)
    return select


_ROLLOUT_FIELDS = ("status", "attempt_count", "started_at", "ended_at", "error")
_ATTEMPT_UPDATE = (
    sa.update(ATTEMPTS)
    .where(ATTEMPTS.c.attempt_id == sa.bindparam("b_attempt_id"))
    .values({c.name: sa.bindparam(f"b_{c.name}") for c in ATTEMPTS.columns if c.name != "attempt_id"})
)


@functools.cache
def _rollout_update(columns: tuple[str, ...]) -> sa.Update:
    """``UPDATE`` of a rollout row by ``b_rollout_id``, setting each other ``b_<column>`` of ``columns``."""
    return (
        sa.update(ROLLOUTS)
        .where(ROLLOUTS.c.rollout_id == sa.bindparam("b_rollout_id"))
        .values({c[2:]: sa.bindparam(c) for c in columns if c != "b_rollout_id"})
    )


class _TryAgain(Exception):
    """A transaction that failed in a way a retry may fix (nothing of it was committed)."""

    def __init__(self, error: sa.exc.DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


class SchemaTooNew(StoreError):
    """The database was written by a newer release whose schema this code cannot read."""


class SqlLightningStore(LightningStore):
    """A :class:`~agent_lightning.store.base.LightningStore` on a SQL database.

    The engine and the schema are set up on first use (or by :meth:`open`);
    an unreachable database raises :class:`~agent_lightning.errors.StoreUnavailable`
    naming the URL.
    """

    backend_name = "SQL"
    """How error messages name the database (``SQLite``, ``PostgreSQL``)."""
    max_wait: float = 1.0
    """Longest sleep between two checks while waiting (for changes nobody signals, e.g. lease expiry)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine_lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = os.getpid()
        self._closed = False
        self._waker = Waker()
        self._span_sql: str | None = None
        self._owner_sql: dict[int, str] = {}

    # ------------------------------------------------------------------ dialect hooks
    def _create_engine(self) -> Engine:
        """A new SQLAlchemy engine for this store's database."""
        raise NotImplementedError

    def _begin(self, conn: Connection, write: bool) -> None:
        """Called right after the transaction began (e.g. SQLite's ``BEGIN IMMEDIATE``)."""

    def _guard(self, write: bool) -> AbstractContextManager[object]:
        """Held around each transaction (e.g. an in-process lock for SQLite writers)."""
        return nullcontext()

    locks_rows = False
    """Whether :meth:`_lock_rows` locks anything (a database with row locks overrides both)."""

    def _lock_rows(self, query: Select[Any], *, skip_locked: bool = False, share: bool = False) -> Select[Any]:
        """``query`` locking the rows it reads until commit (``FOR UPDATE``, or ``FOR SHARE`` with
        ``share``) where the database can."""
        return query

    def _next_queue_seqs(self, conn: Connection, count: int) -> list[int]:
        """``count`` increasing queue positions, each larger than every claimable rollout's."""
        raise NotImplementedError

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT construct, with ``on_conflict_do_update``."""
        raise NotImplementedError

    def _notify(self, conn: Connection) -> None:
        """Tell waiters in other processes that rollouts finished (inside the transaction)."""

    def _prepare_schema(self, conn: Connection) -> None:
        """First statements of the schema set-up transaction (locks, ``CREATE SCHEMA``)."""

    def _create_extras(self, conn: Connection) -> None:
        """Dialect objects beyond the tables (sequences)."""

    def _lock_resources(self, conn: Connection) -> None:
        """Serialize snapshot versioning with other writers."""

    def _classify(self, exc: sa.exc.DBAPIError) -> Literal["unavailable", "retry"] | None:
        """Whether a driver error means the database is unreachable, or the transaction may be retried."""
        return "unavailable" if exc.connection_invalidated else None

    def _unavailable_hint(self) -> str:
        """How to fix an unreachable database (appended to the error)."""
        return "check the URL and that the database is reachable"

    def _redacted_url(self) -> str:
        """The URL with any password hidden, for messages."""
        return self.url

    def _on_close(self) -> None:
        """Release dialect resources (listener threads)."""

    async def _wait_change(self, version: int, timeout: float | None) -> None:
        """Sleep until a change is signalled after ``version`` or ``timeout`` passes."""
        wait = self.max_wait if timeout is None else min(timeout, self.max_wait)
        await self._waker.wait(version, wait)

    # ------------------------------------------------------------------ engine and transactions
    def open(self) -> SqlLightningStore:
        """Connect and create or check the schema now; raises :class:`StoreUnavailable` if unreachable."""
        self._get_engine()
        return self

    def _unavailable(self, reason: object) -> StoreUnavailable:
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
        return StoreUnavailable(
            f"cannot use the {self.backend_name} store at {self._redacted_url()}: {text}. {self._unavailable_hint()}"
        )

    def _get_engine(self) -> Engine:
        if self._closed:
            raise StoreError(f"the store at {self._redacted_url()} is closed")
        engine = self._engine
        if engine is not None and self._pid == os.getpid():
            return engine
        with self._engine_lock:
            if self._engine is not None and self._pid != os.getpid():  # forked: never share the parent's sockets
                self._engine.dispose(close=False)
                self._engine = None
            if self._engine is None:
                self._pid = os.getpid()
                try:
                    created = self._create_engine()
                except (OSError, sa.exc.ArgumentError) as exc:
                    raise self._unavailable(exc) from exc
                try:
                    self._transact_on(created, self._set_up_schema, write=True)
                except BaseException:
                    created.dispose()
                    raise
                self._engine = created
            return self._engine

    def _set_up_schema(self, conn: Connection) -> None:
        self._prepare_schema(conn)
        VERSION.create(conn, checkfirst=True)
        row = conn.execute(sa.select(VERSION.c.version).where(VERSION.c.id == 1)).first()
        if row is None:
            for table in TABLES:
                table.create(conn, checkfirst=True)
            self._create_extras(conn)
            conn.execute(sa.insert(VERSION).values(id=1, version=SCHEMA_VERSION, updated_at=time.time()))
            return
        version = int(row.version)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the {self.backend_name} store at {self._redacted_url()} has schema version {version}, but this "
                f"agent-lightning-sql understands versions up to {SCHEMA_VERSION}; upgrade the package "
                "(pip install -U agent-lightning-sql) or use another database"
            )
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        if version < SCHEMA_VERSION:
            conn.execute(sa.update(VERSION).values(version=SCHEMA_VERSION, updated_at=time.time()))

    def _transact_on(
        self,
        engine: Engine,
        work: Callable[[Connection], T],
        *,
        write: bool,
        autocommit: bool = False,
        idempotent: bool = False,
    ) -> T:
        """Run ``work`` in one transaction (or, with ``autocommit``, each statement committing by itself).

        A connection found dead (the server restarted while it sat in the pool) is replaced and the
        work run again when nothing can have been committed: it failed before the commit was sent,
        or the work is ``idempotent``. So no round trip is spent checking connections before use.
        """
        policy = Backoff(first=0.01, cap=0.05, tries=5)
        try:
            for attempt in retrying(policy, retry_if=lambda exc: isinstance(exc, _TryAgain)):
                with attempt:
                    return self._transact_once(engine, work, write=write, autocommit=autocommit, idempotent=idempotent)
        except _TryAgain as again:
            raise self._translate(again.error) from again.error
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _transact_once(
        self, engine: Engine, work: Callable[[Connection], T], *, write: bool, autocommit: bool, idempotent: bool
    ) -> T:
        committing = autocommit
        try:
            with self._guard(write), engine.connect() as conn:
                if autocommit:
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                    return work(conn)
                with conn.begin():
                    self._begin(conn, write)
                    result = work(conn)
                    committing = True
                return result
        except sa.exc.IntegrityError:
            raise
        except sa.exc.DBAPIError as exc:
            if self._classify(exc) == "retry":  # a serialization failure or deadlock: nothing was committed
                raise _TryAgain(exc) from exc
            if exc.connection_invalidated and (idempotent or not committing):
                raise _TryAgain(exc) from exc  # the pool dropped its stale connections; a fresh one is used
            raise self._translate(exc) from exc

    def _translate(self, exc: sa.exc.DBAPIError) -> Exception:
        """The store error a database error that retrying did not fix stands for."""
        if self._classify(exc) == "unavailable":
            return self._unavailable(exc.orig)
        if isinstance(exc, sa.exc.DataError):
            return ValueError(f"the {self.backend_name} store rejected the data: {exc.orig}")
        return StoreError(f"{self.backend_name} store at {self._redacted_url()}: {exc.orig}")

    def _transact(
        self, work: Callable[[Connection], T], *, write: bool, autocommit: bool = False, idempotent: bool = False
    ) -> T:
        result = self._transact_on(self._get_engine(), work, write=write, autocommit=autocommit, idempotent=idempotent)
        if write:
            self._waker.notify()
        return result

    async def _run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        return await asyncio.to_thread(self._transact, work, write=write)

    async def _wait_until(self, check: Callable[[], Awaitable[T | None]], timeout: float | None) -> T | None:
        """``check()``'s first result that is not ``None``, re-checked on every change; ``None`` at the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            version = self._waker.version
            result = await check()
            if result is not None:
                return result
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            await self._wait_change(version, remaining)

    # ------------------------------------------------------------------ row helpers
    def _rollout(self, conn: Connection, rollout_id: str, *, lock: bool = False) -> Rollout:
        query = sa.select(ROLLOUTS).where(ROLLOUTS.c.rollout_id == rollout_id)
        row = conn.execute(self._lock_rows(query) if lock else query).first()
        if row is None:
            raise NotFound(f"no rollout with id {rollout_id!r}")
        return codec.rollout_from_row(row)

    def _attempt(self, conn: Connection, rollout_id: str, attempt_id: str) -> Attempt:
        row = conn.execute(
            sa.select(ATTEMPTS).where(ATTEMPTS.c.attempt_id == attempt_id, ATTEMPTS.c.rollout_id == rollout_id)
        ).first()
        if row is None:
            raise NotFound(f"rollout {rollout_id!r} has no attempt {attempt_id!r}")
        return codec.attempt_from_row(row)

    def _rollout_exists(self, conn: Connection, rollout_id: str) -> bool:
        return conn.execute(sa.select(ROLLOUTS.c.seq).where(ROLLOUTS.c.rollout_id == rollout_id)).first() is not None

    def _insert_rollouts(self, conn: Connection, rollouts: Sequence[Rollout], rows: list[dict[str, Any]]) -> None:
        ids = [r.rollout_id for r in rollouts]
        taken: list[str] = []
        for chunk in _chunks(ids):
            taken += conn.execute(sa.select(ROLLOUTS.c.rollout_id).where(ROLLOUTS.c.rollout_id.in_(chunk))).scalars()
        if taken:
            raise DuplicateId(f"rollout ids already used: {sorted(taken)}")
        queued = [row for row in rows if row["status"] in CLAIMABLE_ROLLOUT_STATUSES]
        for row, position in zip(queued, self._next_queue_seqs(conn, len(queued)), strict=True):
            row["queue_seq"] = position
        for row in rows:
            row.setdefault("queue_seq", None)
        conn.execute(sa.insert(ROLLOUTS), rows)

    def _save(self, conn: Connection, before: Rollout, after: Rollout, attempt: Attempt | None = None) -> None:
        """Write a transition of ``before`` to ``after`` (and ``attempt``, new or changed)."""
        self._save_many(conn, [(before, after, attempt)])

    def _save_many(self, conn: Connection, changes: Sequence[tuple[Rollout, Rollout, Attempt | None]]) -> None:
        """Write transitions of rollouts, ``(before, after, attempt new or changed)``, a few statements for all."""
        requeued = [
            after.rollout_id
            for before, after, _ in changes
            if after.status in CLAIMABLE_ROLLOUT_STATUSES and before.status not in CLAIMABLE_ROLLOUT_STATUSES
        ]
        positions = dict(zip(requeued, self._next_queue_seqs(conn, len(requeued)), strict=True))  # back of the queue
        rollout_rows: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for _, after, _ in changes:
            row = {"b_rollout_id": after.rollout_id, **{f"b_{f}": getattr(after, f) for f in _ROLLOUT_FIELDS}}
            if after.status not in CLAIMABLE_ROLLOUT_STATUSES:
                row["b_queue_seq"] = None
            elif after.rollout_id in positions:
                row["b_queue_seq"] = positions[after.rollout_id]
            rollout_rows.setdefault(tuple(row), []).append(row)
        for columns, rows in rollout_rows.items():
            conn.execute(_rollout_update(columns), rows)
        new: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        for before, after, attempt in changes:
            if attempt is not None:
                values = codec.attempt_values(attempt, after.config.timeout_seconds)
                if after.attempt_count > before.attempt_count:
                    new.append(values)
                else:
                    changed.append({f"b_{column}": value for column, value in values.items()})
        if new:
            conn.execute(sa.insert(ATTEMPTS), new)
        if changed:
            conn.execute(_ATTEMPT_UPDATE, changed)
        finished = [after for before, after, _ in changes if after.status != before.status]
        delivered = [after for after in finished if after.status in DELIVERED_STATUSES]
        if delivered:
            self._fan_out(conn, delivered)
        if any(after.status != "running" for after in finished):
            self._notify(conn)

    def _save_attempt(self, conn: Connection, attempt: Attempt, timeout_seconds: float | None, *, new: bool) -> None:
        values = codec.attempt_values(attempt, timeout_seconds)
        if new:
            conn.execute(sa.insert(ATTEMPTS).values(values))
        else:
            conn.execute(sa.update(ATTEMPTS).where(ATTEMPTS.c.attempt_id == attempt.attempt_id).values(values))

    def _fan_out(self, conn: Connection, rollouts: Sequence[Rollout]) -> None:
        """Owe newly finished rollouts to every subscription group that wants them."""
        groups = conn.execute(sa.select(SUBSCRIPTIONS.c.group_name, SUBSCRIPTIONS.c.task_types_json)).all()
        rows = [
            {"group_name": group, "rollout_id": rollout.rollout_id, "visible_at": 0.0}
            for rollout in rollouts
            for group, task_types in groups
            if codec.task_types_match(task_types, rollout)
        ]
        if rows:
            conn.execute(sa.insert(DELIVERIES), rows)

    def _expired_query(self, now: float, rollout_ids: Sequence[str] | None) -> Select[Any]:
        query = sa.select(ATTEMPTS.c.rollout_id).where(
            ATTEMPTS.c.status == "running",
            sa.or_(ATTEMPTS.c.lease_expires_at < now, ATTEMPTS.c.deadline_at <= now),
        )
        if rollout_ids is not None:
            query = query.where(ATTEMPTS.c.rollout_id.in_(rollout_ids))
        return query

    def _reap(self, conn: Connection, now: float, rollout_ids: Sequence[str] | None = None) -> list[Attempt]:
        """Mark attempts whose lease or timeout passed as lost/timeout, retrying or failing their rollouts."""
        candidates = list(dict.fromkeys(conn.execute(self._expired_query(now, rollout_ids)).scalars()))
        reaped: list[Attempt] = []
        for chunk in _chunks(candidates):
            # Rows another transaction is changing right now are left to it (or to the next reaper).
            locked = self._lock_rows(sa.select(ROLLOUTS).where(ROLLOUTS.c.rollout_id.in_(chunk)), skip_locked=True)
            for row in conn.execute(locked).all():
                rollout = codec.rollout_from_row(row)
                current = conn.execute(
                    sa.select(ATTEMPTS)
                    .where(ATTEMPTS.c.rollout_id == rollout.rollout_id, ATTEMPTS.c.status == "running")
                    .order_by(ATTEMPTS.c.sequence.desc())
                    .limit(1)
                ).first()
                if current is None:
                    continue
                attempt = codec.attempt_from_row(current)
                status = tr.expiry_status(rollout, attempt, now)
                if status is None or rollout.status != "running":
                    continue
                updated, ended = tr.finish_attempt(rollout, attempt, status, tr.expiry_error(status, rollout), now)
                self._save(conn, rollout, updated, ended)
                reaped.append(ended)
        return reaped

    async def _reap_if_due(self, now: float, rollout_ids: Sequence[str] | None = None) -> list[Attempt]:
        """Reap, taking a write transaction only when a cheap read finds something to reap."""
        query = self._expired_query(now, rollout_ids).limit(1)
        if await self._run(lambda conn: conn.execute(query).first()) is None:
            return []
        return await self._run(lambda conn: self._reap(conn, now, rollout_ids), write=True)

    # ------------------------------------------------------------------ rollouts
    async def enqueue_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        now = time.time()
        rollouts = [tr.new_rollout(tr.as_request(r), now) for r in requests]
        if not rollouts:
            return []
        twice = sorted(i for i, n in Counter(r.rollout_id for r in rollouts).items() if n > 1)
        if twice:
            raise DuplicateId(f"rollout ids appear more than once in the batch: {twice}")
        rows = [codec.rollout_values(r) for r in rollouts]
        await self._run_unique(lambda conn: self._insert_rollouts(conn, rollouts, rows), rollouts)
        return rollouts

    async def _run_unique(
        self, work: Callable[[Connection], T], rollouts: Sequence[Rollout], attempt_id: str | None = None
    ) -> T:
        try:
            return await self._run(work, write=True)
        except sa.exc.IntegrityError:  # a concurrent writer took an id between our check and our insert
            also = f" or attempt id {attempt_id!r}" if attempt_id else ""
            raise DuplicateId(f"rollout ids already used: {sorted(r.rollout_id for r in rollouts)}{also}") from None

    async def start_rollout(
        self, request: RolloutRequest, worker_id: str | None = None, *, attempt_id: str | None = None
    ) -> AttemptedRollout:
        now = time.time()
        rollout = tr.new_rollout(tr.as_request(request), now)
        running, attempt = tr.start_attempt(rollout, worker_id, now, attempt_id)
        row = codec.rollout_values(running)

        def work(conn: Connection) -> None:
            self._insert_rollouts(conn, [running], [row])
            self._save_attempt(conn, attempt, running.config.timeout_seconds, new=True)

        await self._run_unique(work, [running], attempt_id)
        return AttemptedRollout(rollout=running, attempt=attempt)

    def _claim_query(
        self, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> Select[Any]:
        """The oldest ``limit`` claimable rollouts of the filters, locked (skipping rows others hold) where the
        database can."""
        query = sa.select(ROLLOUTS).where(ROLLOUTS.c.queue_seq.is_not(None))
        if task_types is not None:
            query = query.where(ROLLOUTS.c.task_type.in_(list(task_types)))
        if modes is not None:
            query = query.where(ROLLOUTS.c.mode.in_(list(modes)))
        return self._lock_rows(query.order_by(ROLLOUTS.c.queue_seq).limit(limit), skip_locked=True)

    def _claim(self, conn: Connection, worker_id: str, limit: int, query: Select[Any]) -> list[AttemptedRollout]:
        """Claim what ``query`` (:meth:`_claim_query`) finds, in one transaction: a new attempt for each."""
        now = time.time()
        # One statement picks the head of the queue and says whether any lease has expired: the
        # reaping (which sends requeued rollouts to the back of the queue) runs only then.
        expired = sa.exists(self._expired_query(now, None)).label("agl_expired")
        rows = conn.execute(query.add_columns(expired)).all()
        if (not rows or rows[0].agl_expired) and self._reap(conn, now) and len(rows) < limit:
            rows = conn.execute(query.add_columns(expired)).all()
        claimed: list[AttemptedRollout] = []
        for row in rows:
            running, attempt = tr.start_attempt(codec.rollout_from_row(row), worker_id, now)
            claimed.append(AttemptedRollout(rollout=running, attempt=attempt))
        if claimed:
            self._write_claims(conn, claimed)
        return claimed

    def _write_claims(self, conn: Connection, claimed: Sequence[AttemptedRollout]) -> None:
        """Write claimed rollouts (running now) and their new attempts; the default runs a statement per row."""
        if claimed:
            conn.execute(
                sa.update(ROLLOUTS)
                .where(ROLLOUTS.c.rollout_id == sa.bindparam("b_rollout_id"))
                .values(
                    status="running",
                    attempt_count=sa.bindparam("b_attempt_count"),
                    started_at=sa.bindparam("b_started_at"),
                    queue_seq=None,
                ),
                [
                    {
                        "b_rollout_id": c.rollout.rollout_id,
                        "b_attempt_count": c.rollout.attempt_count,
                        "b_started_at": c.rollout.started_at,
                    }
                    for c in claimed
                ],
            )
            conn.execute(
                sa.insert(ATTEMPTS),
                [codec.attempt_values(c.attempt, c.rollout.config.timeout_seconds) for c in claimed],
            )

    async def _claim_rollout(
        self, worker_id: str, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> AttemptedRollout | None:
        query = self._claim_query(1, task_types, modes)
        claimed = await self._run(lambda conn: self._claim(conn, worker_id, 1, query), write=True)
        return claimed[0] if claimed else None

    async def _claim_rollouts(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        query = self._claim_query(limit, task_types, modes)
        return await self._run(lambda conn: self._claim(conn, worker_id, limit, query), write=True)

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        def beat(conn: Connection, rollout: Rollout, attempt: Attempt, now: float) -> Attempt:
            beat = tr.heartbeat(rollout, attempt, now)
            conn.execute(
                sa.update(ATTEMPTS)
                .where(ATTEMPTS.c.attempt_id == attempt_id)
                .values(last_heartbeat_at=beat.last_heartbeat_at, lease_expires_at=beat.lease_expires_at)
            )
            return beat

        return await self._change_live_attempt(rollout_id, attempt_id, beat)

    async def _change_live_attempt(
        self, rollout_id: str, attempt_id: str, change: Callable[[Connection, Rollout, Attempt, float], T]
    ) -> T:
        """``change`` the running attempt in one write transaction; one whose lease ran out is reaped: LeaseLost."""

        def work(conn: Connection) -> tuple[T | None, Attempt | None]:
            now = time.time()
            rollout = self._rollout(conn, rollout_id, lock=True)
            attempt = self._attempt(conn, rollout_id, attempt_id)
            expired = self._expire(conn, rollout, attempt, now)
            return (None, expired) if expired is not None else (change(conn, rollout, attempt, now), None)

        result, expired = await self._run(work, write=True)
        if expired is not None:
            tr.require_running(expired)  # the lease ran out before this call: LeaseLost
        return cast(T, result)

    def _expire(self, conn: Connection, rollout: Rollout, attempt: Attempt, now: float) -> Attempt | None:
        """Reap ``attempt`` if it overran; returns the ended attempt, or ``None`` if it is still fine."""
        status = tr.expiry_status(rollout, attempt, now)
        if status is None or rollout.status != "running":
            return None
        updated, ended = tr.finish_attempt(rollout, attempt, status, tr.expiry_error(status, rollout), now)
        self._save(conn, rollout, updated, ended)
        return ended

    async def _complete_attempt(
        self, rollout_id: str, attempt_id: str, status: Literal["succeeded", "failed"], error: str | None
    ) -> Rollout:
        def finish(conn: Connection, rollout: Rollout, attempt: Attempt, now: float) -> Rollout:
            finished, ended = tr.finish_attempt(rollout, attempt, status, error, now)
            self._save(conn, rollout, finished, ended)
            return finished

        return await self._change_live_attempt(rollout_id, attempt_id, finish)

    async def _complete_attempts(self, completions: list[AttemptCompletion]) -> list[Rollout]:
        def work(conn: Connection) -> tuple[list[Rollout], Attempt | None]:
            now = time.time()
            rollouts: dict[str, Rollout] = {}
            for chunk in _chunks(sorted({c.rollout_id for c in completions})):  # locked in one order: no deadlock
                query = sa.select(ROLLOUTS).where(ROLLOUTS.c.rollout_id.in_(chunk)).order_by(ROLLOUTS.c.rollout_id)
                rollouts.update(
                    (row.rollout_id, codec.rollout_from_row(row)) for row in conn.execute(self._lock_rows(query))
                )
            attempts: dict[str, Attempt] = {}
            for chunk in _chunks([c.attempt_id for c in completions]):
                query = sa.select(ATTEMPTS).where(ATTEMPTS.c.attempt_id.in_(chunk))
                attempts.update((row.attempt_id, codec.attempt_from_row(row)) for row in conn.execute(query))
            finished: list[tuple[Rollout, Rollout, Attempt]] = []
            for item in completions:  # every item is checked before any is written
                rollout = rollouts.get(item.rollout_id)
                if rollout is None:
                    raise NotFound(f"no rollout with id {item.rollout_id!r}")
                attempt = attempts.get(item.attempt_id)
                if attempt is None or attempt.rollout_id != item.rollout_id:
                    raise NotFound(f"rollout {item.rollout_id!r} has no attempt {item.attempt_id!r}")
                expired = self._expire(conn, rollout, attempt, now)
                if expired is not None:  # reaped and committed, as complete_attempt does; the batch is refused
                    return [], expired
                finished.append((rollout, *tr.finish_attempt(rollout, attempt, item.status, item.error, now)))
            self._save_many(conn, finished)
            return [after for _, after, _ in finished], None

        done, expired = await self._run(work, write=True)
        if expired is not None:
            tr.require_running(expired)  # the lease ran out before this call: LeaseLost
        return done

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        def work(conn: Connection) -> Rollout:
            now = time.time()
            rollout = self._rollout(conn, rollout_id, lock=True)
            row = conn.execute(
                sa.select(ATTEMPTS)
                .where(ATTEMPTS.c.rollout_id == rollout_id)
                .order_by(ATTEMPTS.c.sequence.desc())
                .limit(1)
            ).first()
            cancelled, ended = tr.cancel(rollout, None if row is None else codec.attempt_from_row(row), now)
            self._save(conn, rollout, cancelled, ended)
            return cancelled

        return await self._run(work, write=True)

    async def reap_expired(self, now: float | None = None) -> list[Attempt]:
        tr.check_now(now)
        return await self._reap_if_due(time.time() if now is None else now)

    async def get_rollout(self, rollout_id: str) -> Rollout:
        return await self._run(lambda conn: self._rollout(conn, rollout_id))

    async def _query_rollouts(self, query: RolloutQuery) -> list[Rollout]:
        select = _filtered(sa.select(ROLLOUTS), query)
        if query.rollout_ids is not None:
            select = select.where(ROLLOUTS.c.rollout_id.in_(list(dict.fromkeys(query.rollout_ids))))
        select = select.order_by(ROLLOUTS.c.seq).limit(query.limit).offset(query.offset)
        return await self._run(lambda conn: [codec.rollout_from_row(row) for row in conn.execute(select)])

    async def _count_rollouts(self, query: RolloutQuery) -> dict[str, dict[str, int]]:
        select = _filtered(sa.select(ROLLOUTS.c.task_type, ROLLOUTS.c.status, sa.func.count()), query)
        grouped = select.group_by(ROLLOUTS.c.task_type, ROLLOUTS.c.status)
        rows = await self._run(lambda conn: conn.execute(grouped).all())
        counts: dict[str, dict[str, int]] = {}
        for task_type, state, n in rows:
            counts.setdefault(task_type, {})[state] = int(n)
        return counts

    async def get_attempts(self, rollout_id: str) -> list[Attempt]:
        def work(conn: Connection) -> list[Attempt]:
            rows = conn.execute(
                sa.select(ATTEMPTS).where(ATTEMPTS.c.rollout_id == rollout_id).order_by(ATTEMPTS.c.sequence)
            ).all()
            if not rows and not self._rollout_exists(conn, rollout_id):
                raise NotFound(f"no rollout with id {rollout_id!r}")
            return [codec.attempt_from_row(row) for row in rows]

        return await self._run(work)

    async def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None = None, poll_interval: float = 0.05
    ) -> list[Rollout]:
        tr.check_timeout("timeout", timeout)
        ids = list(dict.fromkeys(rollout_ids))

        def read(conn: Connection) -> list[Rollout]:
            found: dict[str, Rollout] = {}
            for chunk in _chunks(ids):
                for row in conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.rollout_id.in_(chunk))):
                    found[row.rollout_id] = codec.rollout_from_row(row)
            missing = [r for r in ids if r not in found]
            if missing:
                raise NotFound(f"no rollout with id {missing[0]!r}")
            return [found[r] for r in ids]

        async def all_done() -> list[Rollout] | None:
            rollouts = await self._run(read)
            if all(r.is_terminal for r in rollouts):
                return rollouts
            running = [r.rollout_id for r in rollouts if r.status == "running"]
            if running and await self._reap_if_due(time.time(), running):
                return await all_done()
            return None

        done = await self._wait_until(all_done, timeout)
        if done is not None:
            return done
        return [r for r in await self._run(read) if r.is_terminal]

    # ------------------------------------------------------------------ spans
    async def add_spans(self, spans: Sequence[Span]) -> int:
        rows = codec.span_batch_rows(spans)
        if not rows:
            return 0
        return await asyncio.to_thread(self._write_spans, rows, list(spans))

    def _span_upsert_sql(self, engine: Engine) -> str:
        """The span upsert (one row of values) in the driver's parameter style."""
        if self._span_sql is None:
            mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
            columns = ", ".join(codec.SPAN_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in codec.SPAN_COLUMNS if c not in _SPAN_KEY)
            self._span_sql = (
                f"INSERT INTO {SPANS.name} ({columns}) VALUES ({', '.join([mark] * len(codec.SPAN_COLUMNS))}) "
                f"ON CONFLICT ({', '.join(_SPAN_KEY)}) DO UPDATE SET {updates}"
            )
        return self._span_sql

    def _write_span_rows(self, conn: Connection, rows: list[list[Any]]) -> None:
        """Upsert span rows (:data:`codec.SPAN_COLUMNS` order, no key twice); the default runs one per row."""
        conn.exec_driver_sql(self._span_upsert_sql(conn.engine), [tuple(row) for row in rows])

    def _write_spans_to_running(self, rows: list[list[Any]]) -> bool:
        """Write every row, in one statement, if every attempt they name exists and runs; else nothing.

        A dialect's fast path for the usual batch (returns whether it wrote); the default declines.
        """
        return False

    def _write_spans(self, rows: list[list[Any]], spans: Sequence[Span]) -> int:
        """Write span rows (:func:`codec.span_batch_rows`) all-or-nothing; durable when it returns.

        One transaction reads (and, where the database can, share-locks) the attempts the spans name,
        so an attempt cannot finish between the check of :func:`tr.finished_span_refusal` and the write.
        """
        if self._write_spans_to_running(rows):
            return len(rows)

        def work(conn: Connection) -> None:
            owners: dict[str, tuple[str, int, str]] = {}
            for chunk in _chunks(list({row[1] for row in rows})):
                for attempt_id, rollout_id, sequence, status in self._span_owners(conn, chunk):
                    owners[attempt_id] = (rollout_id, sequence, status)
            finished: dict[tuple[str, str], list[int]] = {}
            for index, row in enumerate(rows):
                owner = owners.get(row[1])
                if owner is None or owner[0] != row[0]:
                    raise self._unknown_owner(conn, row)  # before anything is written
                row[3] = owner[1]
                if owner[2] in tr.IMMUTABLE_ATTEMPT_STATUSES:
                    finished.setdefault((row[0], row[1]), []).append(index)
            for (rollout_id, attempt_id), indexes in finished.items():
                for chunk in _chunks(indexes):
                    query = sa.select(SPANS).where(
                        SPANS.c.rollout_id == rollout_id,
                        SPANS.c.attempt_id == attempt_id,
                        SPANS.c.span_id.in_([rows[i][2] for i in chunk]),
                    )
                    stored = {row.span_id: codec.span_from_row(row) for row in conn.execute(query)}
                    for i in chunk:
                        old = stored.get(spans[i].span_id)
                        refusal = tr.finished_span_refusal(spans[i], old, old == spans[i])
                        if refusal is not None:
                            raise refusal
            self._write_span_rows(conn, rows)

        self._transact(work, write=True, idempotent=True)
        return len(rows)

    def _span_owners(self, conn: Connection, attempt_ids: Sequence[str]) -> Any:
        """``(attempt_id, rollout_id, sequence, status)`` of the attempts named, share-locked where the database can.

        Plain driver SQL (cached per size) rather than a SQLAlchemy select built and compiled on every batch: this
        runs once per ``add_spans`` call.
        """
        if self.locks_rows:  # the dialect share-locks through its construct
            columns = (ATTEMPTS.c.attempt_id, ATTEMPTS.c.rollout_id, ATTEMPTS.c.sequence, ATTEMPTS.c.status)
            query = sa.select(*columns).where(ATTEMPTS.c.attempt_id.in_(attempt_ids))
            return conn.execute(self._lock_rows(query, share=True))
        mark = "?" if conn.engine.dialect.paramstyle == "qmark" else "%s"
        sql = self._owner_sql.get(len(attempt_ids))
        if sql is None:
            sql = (
                f"SELECT attempt_id, rollout_id, sequence, status FROM {ATTEMPTS.name} "
                f"WHERE attempt_id IN ({', '.join([mark] * len(attempt_ids))})"
            )
            self._owner_sql[len(attempt_ids)] = sql
        return conn.exec_driver_sql(sql, tuple(attempt_ids))

    def _unknown_owner(self, conn: Connection, row: list[Any]) -> NotFound:
        rollout_id, attempt_id, span_id = row[0], row[1], row[2]
        if not self._rollout_exists(conn, rollout_id):
            return NotFound(f"span {span_id}: no rollout with id {rollout_id!r}")
        return NotFound(f"span {span_id}: rollout {rollout_id!r} has no attempt {attempt_id!r}")

    async def _query_spans(self, q: SpanQuery) -> list[Span]:
        rollout_id, attempt_id, cursor = q.rollout_id, q.attempt_id, q.after

        def work(conn: Connection) -> list[Span]:
            if not self._rollout_exists(conn, rollout_id):
                raise NotFound(f"no rollout with id {rollout_id!r}")
            query = sa.select(SPANS).where(SPANS.c.rollout_id == rollout_id)
            if attempt_id == LATEST:
                sequence = conn.execute(
                    sa.select(sa.func.max(ATTEMPTS.c.sequence)).where(ATTEMPTS.c.rollout_id == rollout_id)
                ).scalar()
                if sequence is None:
                    return []
                query = query.where(SPANS.c.attempt_seq == sequence)
            elif attempt_id is not None:
                query = query.where(SPANS.c.attempt_seq == self._attempt(conn, rollout_id, attempt_id).sequence)
            if q.kinds is not None:
                query = query.where(SPANS.c.kind.in_(list(q.kinds)))
            if q.names is not None:
                query = query.where(SPANS.c.name.in_(list(q.names)))
            if q.after_sequence_id is not None:
                query = query.where(SPANS.c.sequence_id > q.after_sequence_id)
            if cursor is not None:
                start = cursor.key(self._attempt(conn, rollout_id, cursor.attempt_id).sequence)
                query = query.where(sa.tuple_(*_SPAN_ORDER) > sa.tuple_(*start))
            query = query.order_by(*_SPAN_ORDER)
            if q.limit is not None:
                query = query.limit(q.limit)
            return [codec.span_from_row(row) for row in conn.execute(query)]

        return await self._run(work)

    # ------------------------------------------------------------------ resources
    async def add_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        validated = _RESOURCES.validate_python(dict(resources))
        tr.check_resources(validated, metadata)
        extra = dict(metadata or {})
        codec.dumps(extra, "resources metadata")

        def work(conn: Connection) -> ResourcesSnapshot:
            self._lock_resources(conn)
            latest = conn.execute(sa.select(sa.func.max(RESOURCES.c.version))).scalar()
            snapshot = ResourcesSnapshot(
                resources_id=new_id("rs"), version=(latest or 0) + 1, resources=validated, metadata=extra
            )
            conn.execute(sa.insert(RESOURCES).values(codec.resources_values(snapshot)))
            return snapshot

        return await self._run(work, write=True)

    async def get_resources(self, resources_id: str) -> ResourcesSnapshot:
        def work(conn: Connection) -> ResourcesSnapshot:
            row = conn.execute(sa.select(RESOURCES).where(RESOURCES.c.resources_id == resources_id)).first()
            if row is None:
                raise NotFound(f"no resources snapshot with id {resources_id!r}")
            return codec.resources_from_row(row)

        return await self._run(work)

    async def get_latest_resources(self) -> ResourcesSnapshot | None:
        query = sa.select(RESOURCES).order_by(RESOURCES.c.version.desc()).limit(1)

        def work(conn: Connection) -> ResourcesSnapshot | None:
            row = conn.execute(query).first()
            return None if row is None else codec.resources_from_row(row)

        return await self._run(work)

    # ------------------------------------------------------------------ publish–subscribe
    async def subscribe(
        self, group: str, *, task_types: Sequence[str] | None = None, from_beginning: bool = False
    ) -> None:
        tr.check_subscription(group)
        wanted = None if task_types is None else sorted(set(task_types))

        def work(conn: Connection) -> None:
            existing = conn.execute(
                sa.select(SUBSCRIPTIONS.c.task_types_json).where(SUBSCRIPTIONS.c.group_name == group)
            ).first()
            if existing is not None:
                have = existing.task_types_json
                if have != wanted:
                    raise InvalidTransition(
                        f"group {group!r} already subscribes to {have or ['*']}, not {wanted or ['*']}"
                    )
                return
            conn.execute(
                sa.insert(SUBSCRIPTIONS).values(
                    group_name=group,
                    task_types_json=None if wanted is None else codec.dumps(wanted, "task_types"),
                    created_at=time.time(),
                )
            )
            if from_beginning:
                query = sa.select(ROLLOUTS.c.rollout_id).where(ROLLOUTS.c.status.in_(sorted(DELIVERED_STATUSES)))
                if wanted is not None:
                    query = query.where(ROLLOUTS.c.task_type.in_(wanted))
                finished = conn.execute(query.order_by(ROLLOUTS.c.ended_at, ROLLOUTS.c.seq)).scalars().all()
                if finished:
                    conn.execute(
                        sa.insert(DELIVERIES),
                        [{"group_name": group, "rollout_id": r, "visible_at": 0.0} for r in finished],
                    )

        try:
            await self._run(work, write=True)
        except sa.exc.IntegrityError:  # another process created the group at the same moment: check it again
            await self._run(work, write=True)

    def _require_group(self, conn: Connection, group: str) -> None:
        if (
            conn.execute(sa.select(SUBSCRIPTIONS.c.group_name).where(SUBSCRIPTIONS.c.group_name == group)).first()
            is None
        ):
            raise NotFound(f"no subscription group {group!r}; call subscribe() first")

    async def _pull_completed(
        self, group: str, consumer: str, max_count: int, timeout: float, visibility_timeout: float
    ) -> list[Rollout]:
        await self._run(lambda conn: self._require_group(conn, group))

        def visible(now: float) -> Select[Any]:
            return sa.select(DELIVERIES.c.id, DELIVERIES.c.rollout_id).where(
                DELIVERIES.c.group_name == group, DELIVERIES.c.visible_at <= now
            )

        def take(conn: Connection) -> list[Rollout]:
            now = time.time()
            query = self._lock_rows(visible(now).order_by(DELIVERIES.c.id).limit(max_count), skip_locked=True)
            rows = conn.execute(query).all()
            if not rows:
                return []
            conn.execute(
                sa.update(DELIVERIES)
                .where(DELIVERIES.c.id.in_([row.id for row in rows]))
                .values(delivered_at=now, visible_at=now + visibility_timeout, consumer=consumer)
            )
            ids = [row.rollout_id for row in rows]
            found = {
                row.rollout_id: codec.rollout_from_row(row)
                for row in conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.rollout_id.in_(ids)))
            }
            return [found[r] for r in ids if r in found]

        async def check() -> list[Rollout] | None:
            probe = visible(time.time()).limit(1)
            if await self._run(lambda conn: conn.execute(probe).first()) is None:
                return None
            return await self._run(take, write=True) or None

        return await self._wait_until(check, timeout) or []

    async def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(rollout_ids))

        def work(conn: Connection) -> int:
            self._require_group(conn, group)
            count = 0
            for chunk in _chunks(ids):
                count += conn.execute(
                    sa.delete(DELIVERIES).where(
                        DELIVERIES.c.group_name == group,
                        DELIVERIES.c.rollout_id.in_(chunk),
                        DELIVERIES.c.delivered_at.is_not(None),
                    )
                ).rowcount
            return count

        return await self._run(work, write=True)

    async def list_subscriptions(self) -> list[Subscription]:
        now = time.time()
        in_flight = sa.and_(DELIVERIES.c.delivered_at.is_not(None), DELIVERIES.c.visible_at > now)
        backlog = (
            sa.select(
                DELIVERIES.c.group_name,
                sa.func.count().label("owed"),
                sa.func.sum(sa.case((in_flight, 1), else_=0)).label("delivered"),
            )
            .group_by(DELIVERIES.c.group_name)
            .subquery()
        )
        query = (
            sa.select(SUBSCRIPTIONS.c.group_name, SUBSCRIPTIONS.c.task_types_json, backlog.c.owed, backlog.c.delivered)
            .select_from(SUBSCRIPTIONS.outerjoin(backlog, backlog.c.group_name == SUBSCRIPTIONS.c.group_name))
            .order_by(SUBSCRIPTIONS.c.group_name)
        )
        rows = await self._run(lambda conn: conn.execute(query).all())
        return [
            Subscription(
                group=group,
                task_types=task_types,
                pending=int(owed or 0) - int(delivered or 0),
                delivered=int(delivered or 0),
            )
            for group, task_types, owed, delivered in rows
        ]

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Stop background work and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._engine_lock:
            engine, self._engine = self._engine, None

        def release() -> None:
            self._on_close()
            if engine is not None:
                engine.dispose()

        await asyncio.to_thread(release)
