"""The SQLite store: one database file shared by every process on a machine.

* WAL journal: readers never block the writer, and a crash leaves a consistent file.
* Every read-modify-write transaction starts with ``BEGIN IMMEDIATE``, taking the
  database's write lock up front, so two processes can never claim the same rollout;
  a writer that finds the lock taken waits up to ``busy_timeout`` seconds.
* Writers of one process queue on an in-process lock first, so they never spin on
  SQLite's busy handler against each other.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from agent_lightning.retry import Backoff, retrying
from agent_lightning_sql.schema import ROLLOUTS
from agent_lightning_sql.store import SqlLightningStore
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

SCHEMES = ("sqlite",)
_MEMORY = ":memory:"
_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: str) -> threading.RLock:
    """One lock per database file and process, shared by every store object opened on that file."""
    if path == _MEMORY:
        return threading.RLock()
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path, threading.RLock())


def parse_sqlite_url(url: str) -> str:
    """The database path of a ``sqlite://`` URL (``:memory:`` for an in-memory database).

    ``sqlite:///runs.db`` is relative to the working directory, ``sqlite:////abs/runs.db``
    absolute, ``sqlite:///:memory:`` (or ``sqlite://``) in memory.
    """
    if not isinstance(url, str) or not url.lower().startswith("sqlite://"):
        raise ValueError(f"a SQLite store URL starts with 'sqlite://', got {url!r}")
    rest = url[len("sqlite://") :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"SQLite store URLs take no query string; pass options to open_store instead: {url!r}")
    if rest in ("", "/"):
        return _MEMORY
    if not rest.startswith("/"):
        raise ValueError(
            f"{url!r} names a host; write sqlite:///relative/path.db or sqlite:////absolute/path.db (three or four /)"
        )
    path = rest[1:]
    return _MEMORY if path == _MEMORY else path


class SqliteLightningStore(SqlLightningStore):
    """A LightningStore in a SQLite file (``sqlite:///runs.db``), safe for several processes on one machine.

    :param busy_timeout: seconds a writer waits for another process's write lock before failing.
    """

    backend_name = "SQLite"
    max_wait = 0.05  # other processes cannot signal us: re-check this often while waiting

    def __init__(self, url: str = "sqlite:///runs.db", *, busy_timeout: float = 30.0) -> None:
        super().__init__(url)
        path = parse_sqlite_url(url)
        # Resolved once, so a later chdir cannot point the store at another file.
        self.path = path if path == _MEMORY else os.path.realpath(os.path.expanduser(path))
        if not isinstance(busy_timeout, (int, float)) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be a non-negative number of seconds, got {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        self._write_lock = _writer_lock(self.path)

    @property
    def in_memory(self) -> bool:
        return self.path == _MEMORY

    def _unavailable_hint(self) -> str:
        return "Check that the folder exists and is writable and that the file is a SQLite database."

    def _create_engine(self) -> Engine:
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": self.busy_timeout}
        if self.in_memory:
            engine = sa.create_engine("sqlite://", connect_args=connect_args, poolclass=StaticPool)
        else:
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(f"sqlite:///{path}", connect_args=connect_args, pool_size=8, max_overflow=8)

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (see _begin)
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                if not self.in_memory:
                    self._use_wal(cursor)
                    cursor.execute("PRAGMA synchronous = NORMAL")  # durable in WAL mode up to the last checkpoint
            finally:
                cursor.close()

        return engine

    def _use_wal(self, cursor: Any) -> None:
        """Switch the database to WAL (once per file; the mode is stored in it).

        The switch needs an exclusive lock, and SQLite answers a second connection switching at
        the same moment with "database is locked" at once, without its busy handler: processes
        opening a new file together hit that. So the switch is retried until ``busy_timeout``.
        """
        policy = Backoff(first=0.001, cap=0.05, deadline=self.busy_timeout)
        for attempt in retrying(policy, retry_if=lambda exc: "locked" in str(exc).lower()):
            with attempt:
                cursor.execute("PRAGMA journal_mode = WAL").fetchone()

    def _begin(self, conn: Connection, write: bool) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    def _guard(self, write: bool) -> AbstractContextManager[object]:
        # One in-memory connection is shared by all threads, so everything is serialized there.
        return self._write_lock if write or self.in_memory else nullcontext()

    def _classify(self, exc: sa.exc.DBAPIError) -> Literal["unavailable", "retry"] | None:
        message = str(exc.orig).lower()
        if exc.connection_invalidated or "unable to open" in message or "disk i/o" in message:
            return "unavailable"
        if "not a database" in message or "readonly" in message or "read-only" in message:
            return "unavailable"
        return None

    def _next_queue_seqs(self, conn: Connection, count: int) -> list[int]:
        # Writers hold the database's write lock (BEGIN IMMEDIATE), so MAX + 1 cannot race.
        top = conn.execute(sa.select(sa.func.coalesce(sa.func.max(ROLLOUTS.c.queue_seq), 0))).scalar_one()
        return list(range(top + 1, top + 1 + count))

    def _insert(self, table: sa.Table) -> Any:
        return sqlite_insert(table)

    def _lock_resources(self, conn: Connection) -> None:
        return None  # BEGIN IMMEDIATE already serializes writers
