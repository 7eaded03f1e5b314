"""A background thread that LISTENs on a PostgreSQL channel and wakes the store's waiters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql


class ChangeListener:
    """Keeps one autocommit connection LISTENing on ``channel``; calls ``on_change`` per notification.

    When the connection drops it reconnects after a second; :attr:`healthy` says
    whether notifications are arriving, so waiters can fall back to polling meanwhile.
    """

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], channel: str, on_change: Callable[[], None]
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.healthy = False

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._main, name=f"agl-listen-{self._channel}", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self.healthy = True
                    self._on_change()  # anything that happened while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._on_change()
            except Exception:
                pass
            finally:
                self.healthy = False
            self._stop.wait(1.0)
