"""SQLite specifics: URL forms, discovery, WAL, faults (SIGKILL, unreachable file), schema versions, batches."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from agent_lightning.errors import StoreError, StoreUnavailable
from agent_lightning.store import open_store, store_schemes
from agent_lightning.types import RolloutConfig, RolloutRequest, Span, new_span_id, new_trace_id
from agent_lightning_sql import SCHEMA_VERSION, SchemaTooNew
from agent_lightning_sql.testing import sigkill_scenario
from agent_lightning_sqlite import SqliteLightningStore, parse_sqlite_url
from agent_lightning_testkit.server_faults import killed_server_loses_no_acknowledged_write


def test_url_forms() -> None:
    assert parse_sqlite_url("sqlite:///runs.db") == "runs.db"
    assert parse_sqlite_url("sqlite:///runs/store.db") == "runs/store.db"
    assert parse_sqlite_url("sqlite:////abs/path.db") == "/abs/path.db"
    assert parse_sqlite_url("sqlite:///:memory:") == ":memory:"
    assert parse_sqlite_url("sqlite://") == ":memory:"
    with pytest.raises(ValueError, match="three or four"):
        parse_sqlite_url("sqlite://host/runs.db")
    with pytest.raises(ValueError, match="query string"):
        parse_sqlite_url("sqlite:///runs.db?mode=ro")
    with pytest.raises(ValueError, match="sqlite://"):
        parse_sqlite_url("postgresql://x/y")


def test_discovered_by_url_scheme_with_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "sqlite" in store_schemes()
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///nested/runs.db")
    try:
        assert isinstance(store, SqliteLightningStore)
        assert (tmp_path / "nested" / "runs.db").is_file(), "the file is created (with its folder) on open"
        rollout = asyncio.run(store.enqueue_rollout("x"))
    finally:
        asyncio.run(store.close())
    again = open_store(f"sqlite:///{tmp_path}/nested/runs.db")  # absolute: sqlite:////tmp/...
    try:
        assert asyncio.run(again.get_rollout(rollout.rollout_id)) == rollout
    finally:
        asyncio.run(again.close())
    with pytest.raises(ValueError, match="busy_timeout"):
        open_store("sqlite:///x.db", pool=3)


def test_database_is_in_wal_mode_with_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = SqliteLightningStore(f"sqlite:///{path}").open()
    asyncio.run(store.close())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM agl_schema_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"agl_rollouts", "agl_attempts", "agl_spans", "agl_resources", "agl_deliveries"} <= tables


def test_a_version_1_database_gets_the_count_index(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    store = SqliteLightningStore(f"sqlite:///{path}").open()
    asyncio.run(store.enqueue_rollouts([RolloutRequest(input=1, task_type="calc")]))
    asyncio.run(store.close())
    with sqlite3.connect(path) as conn:  # as the first release left it
        conn.execute("DROP INDEX ix_agl_rollouts_counts")
        conn.execute("UPDATE agl_schema_version SET version = 1")
    again = SqliteLightningStore(f"sqlite:///{path}").open()
    try:
        assert asyncio.run(again.count_rollouts()) == {"calc": {"queuing": 1}}
    finally:
        asyncio.run(again.close())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM agl_schema_version").fetchone()[0] == SCHEMA_VERSION == 2
        plan = " ".join(
            str(r)
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT task_type, status, count(*) FROM agl_rollouts GROUP BY task_type, status"
            )
        )
    assert "ix_agl_rollouts_counts" in plan, plan


def test_a_database_from_a_newer_release_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    asyncio.run(SqliteLightningStore(f"sqlite:///{path}").open().close())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE agl_schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade") as info:
        open_store(f"sqlite:///{path}")
    assert str(path) in str(info.value) and isinstance(info.value, StoreError)


def test_unusable_paths_raise_store_unavailable_naming_the_url(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    url = f"sqlite:///{blocker}/runs.db"
    with pytest.raises(StoreUnavailable, match="cannot use the SQLite store at") as info:
        open_store(url)
    assert url in str(info.value) and "writable" in str(info.value)

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        open_store(f"sqlite:///{garbage}")

    lazy = SqliteLightningStore(url)  # not opened: the first call reports it
    with pytest.raises(StoreUnavailable, match="a-file"):
        asyncio.run(lazy.enqueue_rollout("x"))


def test_malformed_payloads_are_rejected_and_nothing_is_stored(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteLightningStore(f"sqlite:///{tmp_path / 'bad.db'}")
        try:
            for bad in ({"x": math.nan}, {"x": object()}, [math.inf]):
                unchecked = RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "input": bad})
                with pytest.raises(ValueError, match=r"input\S* (is|has type)"):
                    await store.enqueue_rollouts([RolloutRequest(input="fine"), unchecked])
            unchecked = RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "metadata": {"when": object()}})
            with pytest.raises(ValueError, match="metadata.when has type object"):
                await store.start_rollout(unchecked, "w")
            with pytest.raises(ValueError, match="metadata.x is nan"):
                await store.add_resources({}, metadata={"x": math.nan})
            assert await store.query_rollouts() == []
            assert await store.get_latest_resources() is None
        finally:
            await store.close()

    asyncio.run(main())


def test_large_span_batches_round_trip_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteLightningStore(f"sqlite:///{tmp_path / 'spans.db'}")
        try:
            item = await store.start_rollout(RolloutRequest(config=RolloutConfig(lease_seconds=3600)), "w")
            trace = new_trace_id()
            spans = [
                Span(
                    rollout_id=item.rollout_id,
                    attempt_id=item.attempt_id,
                    sequence_id=n,
                    trace_id=trace,
                    span_id=new_span_id(),
                    name="llm.call",
                    kind="llm",
                    attributes={"n": n, "tokens": list(range(n % 7))},
                    start_time=1000.0 + n,
                )
                for n in range(3000)
            ]
            assert await store.add_spans(spans[::-1]) == 3000
            assert await store.query_spans(item.rollout_id) == spans
            assert await store.add_spans(spans[:1500]) == 1500  # a retried half-batch replaces, never duplicates
            assert len(await store.query_spans(item.rollout_id)) == 3000
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.slow
def test_sigkilled_runners_lose_their_lease_and_the_rollout_fails_after_max_attempts(tmp_path: Path) -> None:
    sigkill_scenario(f"sqlite:///{tmp_path / 'sigkill.db'}", lease=1.0, max_attempts=2)


def test_a_killed_store_server_over_sqlite_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """`agl store serve` over this database, SIGKILLed twice mid-write and restarted: every acked span is there."""
    progress = killed_server_loses_no_acknowledged_write(f"sqlite:///{tmp_path / 'store.db'}")
    assert progress.cycles >= 9 and progress.completed


def test_concurrent_add_spans_stay_all_or_nothing(tmp_path: Path) -> None:
    from agent_lightning.errors import NotFound

    async def main() -> None:
        store = SqliteLightningStore(f"sqlite:///{tmp_path / 'group.db'}")
        try:
            item = await store.start_rollout(RolloutRequest(config=RolloutConfig(lease_seconds=3600)), "w")
            trace = new_trace_id()

            def batch(caller: int, attempt_id: str) -> list[Span]:
                return [
                    Span(
                        rollout_id=item.rollout_id,
                        attempt_id=attempt_id,
                        sequence_id=caller * 10 + n,
                        trace_id=trace,
                        span_id=new_span_id(),
                        name="op",
                    )
                    for n in range(5)
                ]

            calls = [batch(c, item.attempt_id if c != 7 else "no-such-attempt") for c in range(40)]
            store._write_lock.acquire()  # every writer waits for the lock, then writes its own call
            asyncio.get_running_loop().call_later(0.5, store._write_lock.release)
            outcomes = await asyncio.gather(*(store.add_spans(b) for b in calls), return_exceptions=True)
            assert isinstance(outcomes[7], NotFound)
            assert [o for i, o in enumerate(outcomes) if i != 7] == [5] * 39
            stored = await store.query_spans(item.rollout_id)
            assert [s.sequence_id for s in stored] == [c * 10 + n for c in range(40) if c != 7 for n in range(5)]
        finally:
            await store.close()

    asyncio.run(main())


def _open_new_databases(folder: str, count: int, barrier: Any, results: Any) -> None:
    errors: list[str] = []
    for n in range(count):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            break
        try:
            SqliteLightningStore(f"sqlite:///{folder}/new-{n}.db").open()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    results.put(errors)


def test_processes_creating_one_new_database_together_never_find_it_locked(tmp_path: Path) -> None:
    """Runners started together on a file that does not exist yet (the benchmark does this).

    Switching a new database to WAL needs an exclusive lock, and SQLite answers a second
    connection's switch at the same moment with "database is locked" at once, without waiting
    for its busy timeout: the intermittent failure of the two-runner benchmark.
    """
    context = multiprocessing.get_context("spawn")
    processes, count = 3, 25
    barrier = context.Barrier(processes, timeout=60)
    results = context.Queue()
    workers = [
        context.Process(target=_open_new_databases, args=(str(tmp_path), count, barrier, results), daemon=True)
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        errors = [error for _ in workers for error in results.get(timeout=120)]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    assert not errors, f"{len(errors)} of {processes * count} openings failed, e.g. {errors[0]}"
    for n in range(count):
        with sqlite3.connect(tmp_path / f"new-{n}.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
