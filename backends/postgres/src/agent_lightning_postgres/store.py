"""The PostgreSQL store: a shared database for runners and trainers on many machines.

* Claims lock the oldest claimable row with ``SELECT … FOR UPDATE SKIP LOCKED``:
  concurrent claimers never wait on each other and never take the same rollout.
  Every other change of a rollout locks its row (``FOR UPDATE``) first.
* Waiters (``wait_for_rollouts``, ``pull_completed``) sleep until a ``NOTIFY``
  on the store's channel, sent in the same transaction that finished a rollout,
  instead of polling; they re-check at least once a second for expired leases.
* The tables are created on first use, in the URL's ``?schema=`` (default: the
  user's ``search_path``), and versioned in ``agl_schema_version``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import sqlalchemy as sa
from agent_lightning import limits
from agent_lightning.types import AttemptCompletion, AttemptedRollout, Rollout
from agent_lightning_sql.codec import SPAN_COLUMNS, attempt_values, rollout_from_row
from agent_lightning_sql.store import SqlLightningStore
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.sql import Select

from agent_lightning_postgres.listener import ChangeListener

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SETUP_LOCK = 0x61676C5F73716C  # pg_advisory_xact_lock key serializing schema set-up ("agl_sql")
_QUEUE_SEQUENCE = "agl_queue_seq"
_SPAN_TYPES = {
    "attempt_seq": "int4",
    "sequence_id": "int8",
    "attributes_json": "text",
    "start_time": "float8",
    "end_time": "float8",
}
_SPAN_UPSERT = (
    f"INSERT INTO agl_spans ({', '.join(SPAN_COLUMNS)}) "
    f"SELECT {', '.join(f'{c}::json' if c == 'attributes_json' else c for c in SPAN_COLUMNS)} FROM unnest("
    + ", ".join(f"%b::{_SPAN_TYPES.get(c, 'text')}[]" for c in SPAN_COLUMNS)
    + f") AS v({', '.join(SPAN_COLUMNS)}) "
    "ON CONFLICT (rollout_id, attempt_id, span_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SPAN_COLUMNS if c not in ("rollout_id", "attempt_id", "span_id"))
)


_VALUE_COLUMNS = [c for c in SPAN_COLUMNS if c != "attempt_seq"]
_SPAN_INSERT_IF_RUNNING = (
    # Every row, or none: only when each (rollout, attempt) pair names a running attempt, share-locked
    # so that it cannot finish before this statement commits (see LightningStore: finished attempts).
    "WITH owners AS (SELECT a.attempt_id, a.sequence FROM agl_attempts a "
    "JOIN unnest(%b::text[], %b::text[]) AS o(rollout_id, attempt_id) "
    "ON a.attempt_id = o.attempt_id AND a.rollout_id = o.rollout_id "
    "WHERE a.status = 'running' FOR SHARE OF a) "
    f"INSERT INTO agl_spans ({', '.join(SPAN_COLUMNS)}) SELECT "
    + ", ".join(
        "owners.sequence" if c == "attempt_seq" else f"v.{c}::json" if c == "attributes_json" else f"v.{c}"
        for c in SPAN_COLUMNS
    )
    + " FROM unnest("
    + ", ".join(f"%b::{_SPAN_TYPES.get(c, 'text')}[]" for c in _VALUE_COLUMNS)
    + f") AS v({', '.join(_VALUE_COLUMNS)}) JOIN owners ON owners.attempt_id = v.attempt_id "
    "WHERE (SELECT count(*) FROM owners) = %s "
    "ON CONFLICT (rollout_id, attempt_id, span_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SPAN_COLUMNS if c not in ("rollout_id", "attempt_id", "span_id"))
)


_ATTEMPT_COLUMNS = {
    "attempt_id": "text",
    "rollout_id": "text",
    "sequence": "int4",
    "worker_id": "text",
    "status": "text",
    "started_at": "float8",
    "ended_at": "float8",
    "last_heartbeat_at": "float8",
    "lease_expires_at": "float8",
    "deadline_at": "float8",
    "error": "text",
}
_WRITE_CLAIMS = (
    # The claimed rollouts run now, and their new attempts are inserted: one statement whatever the number,
    # a column array per parameter (sent in binary).
    "WITH r AS (UPDATE agl_rollouts r SET status = 'running', attempt_count = v.attempt_count, "
    "started_at = v.started_at, queue_seq = NULL "
    "FROM unnest(%b::text[], %b::int4[], %b::float8[]) AS v(rollout_id, attempt_count, started_at) "
    "WHERE r.rollout_id = v.rollout_id) "
    f"INSERT INTO agl_attempts ({', '.join(_ATTEMPT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{kind}[]" for kind in _ATTEMPT_COLUMNS.values())
    + ")"
)

_SUCCEED_ROLLOUTS = (
    # the rollouts of the attempts ``at`` finished succeed, and are owed to the subscription groups that want them
    "r AS (UPDATE agl_rollouts SET status = 'succeeded', ended_at = %(now)s, error = NULL, queue_seq = NULL "
    "WHERE rollout_id IN (SELECT rollout_id FROM at) RETURNING *), "
    "d AS (INSERT INTO agl_deliveries (group_name, rollout_id, visible_at) "
    "SELECT s.group_name, r.rollout_id, 0.0 FROM agl_subscriptions s JOIN r "
    "ON s.task_types_json IS NULL OR s.task_types_json::jsonb ? r.task_type) "
    "SELECT r.* FROM r"
)
_SUCCEED = (
    # complete_attempt(..., "succeeded") in one statement when nothing unusual is going on: the rollout
    # runs (locked first, like every other change), its attempt runs and its lease and deadline have not
    # passed. It finishes both and owes the rollout to the subscription groups that want it; no row
    # back means "not that case", and the general transaction decides what to do.
    "WITH ro AS (SELECT rollout_id FROM agl_rollouts WHERE rollout_id = %(rid)s AND status = 'running' FOR UPDATE), "
    "at AS (UPDATE agl_attempts SET status = 'succeeded', ended_at = %(now)s, error = %(error)s "
    "WHERE attempt_id = %(aid)s AND rollout_id IN (SELECT rollout_id FROM ro) AND status = 'running' "
    "AND lease_expires_at >= %(now)s AND (deadline_at IS NULL OR deadline_at >= %(now)s) RETURNING rollout_id), "
    + _SUCCEED_ROLLOUTS
)
_SUCCEED_MANY = (
    # complete_attempts when every item is that case: the rollouts are locked in one order, and the
    # attempts are finished only if every item qualifies (else no row back, and the general transaction
    # decides). It runs in a transaction: an attempt that changed between the statement's snapshot and
    # its lock leaves fewer rows back than items, and the caller rolls back.
    "WITH i AS (SELECT * FROM unnest(%(rids)s::text[], %(aids)s::text[], %(errors)s::text[]) "
    "AS i(rollout_id, attempt_id, error)), "
    "ro AS (SELECT rollout_id FROM agl_rollouts WHERE rollout_id IN (SELECT rollout_id FROM i) "
    "AND status = 'running' ORDER BY rollout_id FOR UPDATE), "
    "ok AS (SELECT a.attempt_id, i.error FROM agl_attempts a JOIN i "
    "ON a.attempt_id = i.attempt_id AND a.rollout_id = i.rollout_id "
    "WHERE a.rollout_id IN (SELECT rollout_id FROM ro) AND a.status = 'running' "
    "AND a.lease_expires_at >= %(now)s AND (a.deadline_at IS NULL OR a.deadline_at >= %(now)s)), "
    "at AS (UPDATE agl_attempts a SET status = 'succeeded', ended_at = %(now)s, error = ok.error FROM ok "
    "WHERE a.attempt_id = ok.attempt_id AND a.status = 'running' AND (SELECT count(*) FROM ok) = %(n)s "
    "RETURNING a.rollout_id), " + _SUCCEED_ROLLOUTS
)
_NOTIFY_AFTER_COMMIT = (
    # NOTIFY holds a database-wide lock from its commit until the commit is flushed; sent on its own,
    # after the change committed and without waiting for the flush, it no longer serialises commits.
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%(channel)s, '')"
)


class _NotAllAtOnce(Exception):
    """Not every item of a batch could finish in one statement: roll back, take the general path."""


def parse_postgres_url(url: str) -> tuple[URL, str | None]:
    """The SQLAlchemy URL (``postgresql+psycopg``) of a store URL, and its ``?schema=`` if any."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"a PostgreSQL store URL looks like postgresql://user@host:5432/db, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"a PostgreSQL store URL starts with {' or '.join(s + '://' for s in SCHEMES)}, got {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in query if key == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema must be a plain identifier (letters, digits, _), got {schema!r}")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    driver_url = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, rest, parts.fragment))
    try:
        return make_url(driver_url), schema
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"cannot parse the PostgreSQL store URL: {exc}") from None


class PostgresLightningStore(SqlLightningStore):
    """A LightningStore in PostgreSQL (``postgresql://user:password@host:5432/db[?schema=name]``).

    :param schema: schema holding the tables (overrides ``?schema=``); created if missing.
    :param pool_size: connections kept open per process (plus ``max_overflow`` under bursts).
    :param connect_timeout: seconds to wait for the server when connecting.
    """

    backend_name = "PostgreSQL"
    max_wait = 1.0  # NOTIFY wakes waiters; this bounds how late an expired lease is noticed
    poll_without_listener = 0.2

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 5,
        max_overflow: int = 10,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(url)
        self._sa_url, url_schema = parse_postgres_url(url)
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must be a plain identifier (letters, digits, _), got {schema!r}")
        self.schema = schema or url_schema
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.connect_timeout = connect_timeout
        self.channel = f"agl_changes_{self.schema or 'default'}"[:63]
        self._listener = ChangeListener(self._listen_connection, self.channel, self._waker.notify)

    # ------------------------------------------------------------------ connections
    def _redacted_url(self) -> str:
        shown = self._sa_url.set(drivername=urlsplit(self.url).scheme).render_as_string(hide_password=True)
        if self.schema:
            shown += f"{'&' if '?' in shown else '?'}schema={self.schema}"
        return shown

    def _unavailable_hint(self) -> str:
        return (
            "Check that the server is running and accepts TCP connections there, and that the host, port, "
            "database, user and password in the URL are right."
        )

    def _connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"connect_timeout": max(1, round(self.connect_timeout))}
        if self.schema:
            args["options"] = f"-c search_path={self.schema}"
        return args

    def _create_engine(self) -> Engine:
        return sa.create_engine(
            self._sa_url,
            connect_args=self._connect_args(),
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
            # No ping before each use: a connection that died in the pool fails its first statement,
            # the pool drops every older connection, and the transaction runs again (see _transact_on).
            pool_pre_ping=False,
        )

    def _listen_connection(self) -> psycopg.Connection[Any]:
        engine = self._get_engine()
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        return psycopg.connect(*args, **{**kwargs, **self._connect_args(), "autocommit": True})

    def _classify(self, exc: sa.exc.DBAPIError) -> Literal["unavailable", "retry"] | None:
        orig = exc.orig
        if isinstance(orig, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)):
            return "retry"
        if exc.connection_invalidated or isinstance(orig, psycopg.OperationalError):
            return "unavailable"
        return None

    # ------------------------------------------------------------------ dialect specifics
    def _prepare_schema(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SETUP_LOCK})
        if self.schema:
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def _create_extras(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"CREATE SEQUENCE IF NOT EXISTS {_QUEUE_SEQUENCE}")

    locks_rows = True

    def _lock_rows(self, query: Select[Any], *, skip_locked: bool = False, share: bool = False) -> Select[Any]:
        return query.with_for_update(skip_locked=skip_locked, read=share)

    def _next_queue_seqs(self, conn: Connection, count: int) -> list[int]:
        if count == 0:
            return []
        rows = conn.execute(
            sa.text(f"SELECT nextval('{_QUEUE_SEQUENCE}') FROM generate_series(1, :n) AS i ORDER BY i"), {"n": count}
        )
        return [int(value) for value in rows.scalars()]

    def _insert(self, table: sa.Table) -> Any:
        return pg_insert(table)

    def _write_span_rows(self, conn: Connection, rows: list[list[Any]]) -> None:
        # One statement whatever the number of rows: a column array per parameter (sent in binary)
        # keeps the query text, parsed and prepared once per connection, and the parameter count fixed.
        if len(rows) == 1:
            conn.exec_driver_sql(self._span_upsert_sql(conn.engine), tuple(rows[0]))
        else:
            conn.exec_driver_sql(_SPAN_UPSERT, tuple(list(column) for column in zip(*rows, strict=True)))

    def _write_claims(self, conn: Connection, claimed: Sequence[AttemptedRollout]) -> None:
        if not claimed:
            return
        rollouts = [c.rollout for c in claimed]
        rows = [attempt_values(c.attempt, c.rollout.config.timeout_seconds) for c in claimed]
        conn.exec_driver_sql(
            _WRITE_CLAIMS,
            (
                [r.rollout_id for r in rollouts],
                [r.attempt_count for r in rollouts],
                [r.started_at for r in rollouts],
                *([row[column] for row in rows] for column in _ATTEMPT_COLUMNS),
            ),
        )

    def _write_spans_to_running(self, rows: list[list[Any]]) -> bool:
        pairs = list(dict.fromkeys((row[0], row[1]) for row in rows))
        columns = [list(column) for index, column in enumerate(zip(*rows, strict=True)) if index != 3]
        params = ([p[0] for p in pairs], [p[1] for p in pairs], *columns, len(pairs))

        def work(conn: Connection) -> int:
            return int(conn.exec_driver_sql(_SPAN_INSERT_IF_RUNNING, params).rowcount)

        written = self._transact(work, write=True, autocommit=True, idempotent=True)
        return written == len(rows)

    async def _complete_attempt(
        self, rollout_id: str, attempt_id: str, status: Literal["succeeded", "failed"], error: str | None
    ) -> Rollout:
        if status == "succeeded":
            limits.check_text(error, "error")
            params = {"rid": rollout_id, "aid": attempt_id, "error": error, "now": time.time(), "channel": self.channel}

            def work(conn: Connection) -> Rollout | None:
                row = conn.exec_driver_sql(_SUCCEED, params).first()
                if row is None:
                    return None
                conn.exec_driver_sql(_NOTIFY_AFTER_COMMIT, {"channel": self.channel})  # wake waiters
                return rollout_from_row(row)

            done = await asyncio.to_thread(self._transact, work, write=True, autocommit=True)
            if done is not None:
                return done
        return await super()._complete_attempt(rollout_id, attempt_id, status, error)

    async def _complete_attempts(self, completions: list[AttemptCompletion]) -> list[Rollout]:
        if all(c.status == "succeeded" for c in completions):
            params = {
                "rids": [c.rollout_id for c in completions],
                "aids": [c.attempt_id for c in completions],
                "errors": [c.error for c in completions],
                "now": time.time(),
                "n": len(completions),
            }

            def work(conn: Connection) -> dict[str, Rollout]:
                rows = conn.exec_driver_sql(_SUCCEED_MANY, params).all()
                if len(rows) != len(completions):
                    raise _NotAllAtOnce  # rolls the transaction back
                return {row.rollout_id: rollout_from_row(row) for row in rows}

            try:
                done = await self._run(work, write=True)
            except _NotAllAtOnce:
                pass
            else:
                await asyncio.to_thread(self._transact, self._notify_after_commit, write=False, autocommit=True)
                return [done[c.rollout_id] for c in completions]
        return await super()._complete_attempts(completions)

    def _notify_after_commit(self, conn: Connection) -> None:
        conn.exec_driver_sql(_NOTIFY_AFTER_COMMIT, {"channel": self.channel})

    def _notify(self, conn: Connection) -> None:
        conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": self.channel})

    def _lock_resources(self, conn: Connection) -> None:
        conn.exec_driver_sql("LOCK TABLE agl_resources IN SHARE ROW EXCLUSIVE MODE")

    async def _wait_change(self, version: int, timeout: float | None) -> None:
        self._listener.ensure_started()
        longest = self.max_wait if self._listener.healthy else self.poll_without_listener
        await self._waker.wait(version, longest if timeout is None else min(timeout, longest))

    def _on_close(self) -> None:
        self._listener.stop()
