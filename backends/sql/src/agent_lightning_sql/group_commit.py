"""Group commit: concurrent ``add_spans`` calls of one process share one transaction.

Each caller still returns only once a transaction holding its spans has committed, and each
caller's spans stay all-or-nothing. A caller alone is written at once, with no added delay;
callers arriving while a transaction is in flight are written together in the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent_lightning.errors import StoreUnavailable


class Pending:
    """One caller's rows, and what became of them."""

    __slots__ = ("done", "error", "rows")

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True


Flush = Callable[[list[Pending]], None]
"""Write the rows of every pending call in one transaction. A call refused on its own (an unknown
attempt) is ``fail``-ed without failing the others; raising fails the whole transaction."""


class GroupCommit:
    """Serializes writers of one store object and hands each the calls that queued behind it."""

    def __init__(self, flush: Flush) -> None:
        self._flush = flush
        self._writer = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[Pending] = []
        self.transactions = 0
        """Transactions run (for statistics and tests)."""

    def submit(self, rows: list[list[Any]]) -> int:
        """Write ``rows`` (blocking); returns how many once they are committed, or raises their error."""
        mine = Pending(rows)
        with self._queue_lock:
            self._queue.append(mine)
        with self._writer:
            if not mine.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit(group)
        if mine.error is not None:
            raise mine.error
        return len(rows)

    def _commit(self, group: list[Pending]) -> None:
        try:
            self._run(group)
        except BaseException as exc:
            if len(group) == 1 or isinstance(exc, (StoreUnavailable, KeyboardInterrupt, SystemExit)):
                for pending in group:
                    if not pending.done:
                        pending.fail(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            # The combined transaction stored nothing: give each call its own, and its own outcome.
            for pending in group:
                try:
                    self._run([pending])
                except Exception as own:
                    pending.fail(own)

    def _run(self, group: list[Pending]) -> None:
        for pending in group:
            pending.done, pending.error = False, None
        self.transactions += 1
        self._flush(group)
        for pending in group:
            pending.done = True
