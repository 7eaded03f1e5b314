"""Fault scenario for store servers: a runner keeps writing while the server is restarted.

Used by agent-lightning-http (the HTTP layer restarted over one in-memory store) and by the durable backends
(the ``agl store serve`` process SIGKILLed and started again over the same database), so each
shows the same guarantee: every span whose ``add_spans`` call was acknowledged is stored exactly
once, and every completion that was acknowledged stands. Needs ``agent-lightning-http``.
"""

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

from agent_lightning.types import RolloutConfig, Span, new_span_id, new_trace_id

__all__ = [
    "WriteProgress",
    "check_nothing_acknowledged_was_lost",
    "free_port",
    "killed_server_loses_no_acknowledged_write",
    "restart_while_writing",
    "spawn_store_server",
]

_LONG = RolloutConfig(lease_seconds=3600)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WriteProgress:
    """What the writing runner had acknowledged by the server."""

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
            attributes={"gen_ai.usage.input_tokens": 12, "tokens": list(range(16)), "text": "x" * 100},
            start_time=1_700_000_000.0 + n,
            end_time=1_700_000_000.5 + n,
        )
        for n in range(count)
    ]


async def _runner(url: str, stop: threading.Event, progress: WriteProgress) -> None:
    """Enqueue, claim, write spans in batches and complete, over and over, like a runner does."""
    from agent_lightning_http import HttpLightningStore

    client = HttpLightningStore(url, retry_timeout=30.0, timeout=10.0)
    try:
        while not stop.is_set():
            await client.enqueue_rollout({"cycle": progress.cycles}, config=_LONG)
            item = await client.claim_rollout("writer")
            if item is None:  # the claim's answer was lost in a restart; its attempt is reaped later
                continue
            acked = progress.acked.setdefault(item.rollout_id, [])
            for batch in range(3):
                spans = _spans(item.rollout_id, item.attempt_id, batch * 20, 20)
                stored = await client.add_spans(spans)
                if stored != len(spans):
                    raise AssertionError(f"add_spans stored {stored} of {len(spans)} spans")
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
def _running(url: str) -> Iterator[WriteProgress]:
    progress = WriteProgress()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(_runner(url, stop, progress)), daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join(timeout=60)
    if thread.is_alive():
        raise AssertionError("the runner did not finish")
    if progress.error is not None:
        raise AssertionError(f"the runner failed: {progress.error!r}") from progress.error


def restart_while_writing(url: str, restart: Callable[[], None], restarts: int) -> WriteProgress:
    """Run a writer against ``url``, call ``restart()`` ``restarts`` times mid-cycle, return what was acked."""
    with _running(url) as progress:

        def three_more_cycles(what: str) -> None:
            done = progress.cycles
            _wait_for(lambda: progress.error is not None or progress.cycles >= done + 3, 60, what)

        for _ in range(restarts):
            three_more_cycles("progress")
            time.sleep(0.05)  # land the restart in the middle of a cycle
            restart()
        three_more_cycles("progress after restarts")
    return progress


async def check_nothing_acknowledged_was_lost(url: str, progress: WriteProgress) -> None:
    """Every acknowledged span is stored once; every acknowledged completion stands."""
    from agent_lightning_http import HttpLightningStore

    client = HttpLightningStore(url, retry_timeout=10.0)
    try:
        for rollout_id, acked in progress.acked.items():
            stored = [s.span_id for s in await client.query_spans(rollout_id)]
            if len(stored) != len(set(stored)):
                raise AssertionError(f"rollout {rollout_id}: a retried batch was stored twice")
            lost = set(acked) - set(stored)
            if lost:
                raise AssertionError(f"rollout {rollout_id}: {len(lost)} acknowledged spans lost")
        for rollout_id in progress.completed:
            status = (await client.get_rollout(rollout_id)).status
            if status != "succeeded":
                raise AssertionError(f"rollout {rollout_id} was acknowledged as succeeded but is {status}")
    finally:
        await client.close()


def spawn_store_server(store_url: str, port: int, within: float = 60.0) -> subprocess.Popen[str]:
    """Start ``python -m agent_lightning_http --store URL --port N`` and wait until it answers."""
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning_http", "--store", store_url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            error = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"the store server over {store_url} did not start: {error}")
        time.sleep(0.05)


def killed_server_loses_no_acknowledged_write(store_url: str, restarts: int = 2) -> WriteProgress:
    """SIGKILL the server process over ``store_url`` mid-write ``restarts`` times; check nothing acked is lost."""
    port = free_port()
    servers = [spawn_store_server(store_url, port)]

    def restart() -> None:
        os.kill(servers[-1].pid, signal.SIGKILL)
        servers[-1].wait(timeout=10)
        time.sleep(0.2)
        servers.append(spawn_store_server(store_url, port))

    try:
        progress = restart_while_writing(f"http://127.0.0.1:{port}", restart, restarts=restarts)
        codes = [s.returncode for s in servers[:-1]]
        if codes != [-signal.SIGKILL] * restarts:
            raise AssertionError(f"the server processes were not SIGKILLed: exit codes {codes}")
        asyncio.run(check_nothing_acknowledged_was_lost(f"http://127.0.0.1:{port}", progress))
        return progress
    finally:
        for process in servers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
