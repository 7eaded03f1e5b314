"""Faults: the server gone, and the server restarted while a runner writes (no acknowledged span is lost)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from agent_lightning.errors import StoreUnavailable
from agent_lightning.server import HttpLightningStore, StoreServer
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import RolloutConfig, Span, new_span_id, new_trace_id

LONG = RolloutConfig(lease_seconds=3600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------- server gone
@pytest.mark.parametrize("how", ["never started", "stopped"])
def test_an_unreachable_server_raises_store_unavailable_in_bounded_time(how: str) -> None:
    if how == "never started":
        url = f"http://127.0.0.1:{_free_port()}"
    else:
        server = StoreServer(InMemoryLightningStore()).start()
        url = server.url

    async def main() -> tuple[float, StoreUnavailable]:
        client = HttpLightningStore(url, retry_timeout=1.0, connect_timeout=1.0)
        if how == "stopped":
            await client.enqueue_rollout("before the outage")
            await asyncio.to_thread(server.stop)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await client.claim_rollout("w")
        elapsed = time.monotonic() - began
        await client.close()
        return elapsed, info.value

    elapsed, error = asyncio.run(main())
    assert elapsed < 4.0, f"gave up only after {elapsed:.1f}s"
    assert f"store server at {url} is not reachable" in str(error)
    assert "claim_rollout" in str(error) and "tries" in str(error)


# ---------------------------------------------------------------------- a runner writing through restarts
@dataclass
class Progress:
    acked: dict[str, list[str]] = field(default_factory=dict)
    """Span ids whose ``add_spans`` call returned, by rollout."""
    completed: list[str] = field(default_factory=list)
    cycles: int = 0
    error: BaseException | None = None


def _spans(rollout_id: str, attempt_id: str, first: int, count: int) -> list[Span]:
    trace = new_trace_id()
    return [
        Span(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=first + n,
            trace_id=trace,
            span_id=new_span_id(),
            name="llm-call",
            kind="llm",
            attributes={"gen_ai.usage.prompt_tokens": 12, "tokens": list(range(16)), "text": "x" * 100},
            start_time=1_700_000_000.0 + n,
            end_time=1_700_000_000.5 + n,
        )
        for n in range(count)
    ]


async def _runner(url: str, stop: threading.Event, progress: Progress) -> None:
    """Enqueue, claim, write spans in batches and complete, over and over, like a runner does."""
    client = HttpLightningStore(url, retry_timeout=30.0, timeout=10.0)
    try:
        while not stop.is_set():
            await client.enqueue_rollout({"cycle": progress.cycles}, config=LONG)
            item = await client.claim_rollout("writer")
            if item is None:  # the claim's answer was lost in a restart; its attempt is reaped later
                continue
            acked = progress.acked.setdefault(item.rollout_id, [])
            for batch in range(3):
                spans = _spans(item.rollout_id, item.attempt_id, batch * 20, 20)
                assert await client.add_spans(spans) == len(spans)
                acked.extend(s.span_id for s in spans)
            await client.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
            progress.completed.append(item.rollout_id)
            progress.cycles += 1
    except BaseException as exc:
        progress.error = exc
    finally:
        await client.close()


def _wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def _running(url: str) -> Iterator[Progress]:
    progress = Progress()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(_runner(url, stop, progress)), daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the runner did not finish"
    if progress.error is not None:
        raise AssertionError(f"the runner failed: {progress.error!r}") from progress.error


def _restart_while_writing(url: str, restart: Callable[[], None], restarts: int) -> Progress:
    with _running(url) as progress:
        for _ in range(restarts):
            done = progress.cycles
            _wait_for(lambda done=done: progress.error is not None or progress.cycles >= done + 3, 60, "progress")
            time.sleep(0.05)  # land the restart in the middle of a cycle
            restart()
        done = progress.cycles
        _wait_for(lambda: progress.error is not None or progress.cycles >= done + 3, 60, "progress after restarts")
    return progress


async def _check_nothing_acknowledged_was_lost(url: str, progress: Progress) -> None:
    client = HttpLightningStore(url, retry_timeout=10.0)
    try:
        for rollout_id, acked in progress.acked.items():
            stored = [s.span_id for s in await client.query_spans(rollout_id)]
            assert len(stored) == len(set(stored)), f"rollout {rollout_id}: a retried batch was stored twice"
            assert set(acked) <= set(stored), f"rollout {rollout_id}: {len(set(acked) - set(stored))} acked spans lost"
        for rollout_id in progress.completed:
            assert (await client.get_rollout(rollout_id)).status == "succeeded"
    finally:
        await client.close()


def test_restarting_the_http_layer_loses_no_acknowledged_write() -> None:
    """The store object survives; its HTTP server is stopped and started again on the same port, twice."""
    store = InMemoryLightningStore()
    server = StoreServer(store).start()
    port = server.port

    def restart() -> None:
        nonlocal server
        server.stop()
        time.sleep(0.2)
        server = StoreServer(store, port=port).start()

    try:
        progress = _restart_while_writing(server.url, restart, restarts=2)
        assert progress.cycles >= 9 and progress.completed
        asyncio.run(_check_nothing_acknowledged_was_lost(server.url, progress))
    finally:
        server.stop()


def _spawn_server(store_url: str, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning.server", "--store", store_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the store server did not start: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)


def test_a_killed_server_over_sqlite_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """SIGKILL the server process mid-write (twice) and start it again: every acknowledged span is there."""
    pytest.importorskip("agent_lightning_sqlite", reason="the durable backend is agent-lightning-sqlite")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    port = _free_port()
    servers = [_spawn_server(store_url, port)]

    def restart() -> None:
        os.kill(servers[-1].pid, signal.SIGKILL)
        servers[-1].wait(timeout=10)
        time.sleep(0.2)
        servers.append(_spawn_server(store_url, port))

    try:
        progress = _restart_while_writing(f"http://127.0.0.1:{port}", restart, restarts=2)
        assert [s.returncode for s in servers[:-1]] == [-signal.SIGKILL] * 2
        asyncio.run(_check_nothing_acknowledged_was_lost(f"http://127.0.0.1:{port}", progress))
    finally:
        for process in servers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
