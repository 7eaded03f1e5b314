"""A store that is down or comes back: the agent is never stalled for long, and no span is lost silently.

The outage is real: an HTTP store URL where nothing listens, or a store server that is stopped
(and started again on the same port over the same in-memory store).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import agent_lightning as agl
import pytest
from agent_lightning import semconv
from agent_lightning.instrumentation.emitter import SpanEmitter
from agent_lightning.store.sync import EventLoopThread, SyncStore
from agent_lightning_http import HttpLightningStore, StoreServer
from agent_lightning_testkit.server_faults import free_port


def quick_client(url: str) -> HttpLightningStore:
    """A client that gives up on an unreachable server after about a second (the default is 15 s)."""
    return HttpLightningStore(url, retry_timeout=0.5, connect_timeout=0.5)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def test_store_down_the_agent_runs_promptly_and_undelivered_spans_are_counted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = quick_client(f"http://127.0.0.1:{free_port()}")
    tracer = agl.get_tracer(store)
    began = time.monotonic()
    with caplog.at_level("WARNING"):
        with agl.TrainingContext(task_id="down", store=store, flush_timeout=1.0, instrument=False) as ctx:
            body_started = time.monotonic() - began
            for i in range(10):
                with agl.span(f"step{i}"):
                    pass
            agl.emit_reward(1.0)
            closing = time.monotonic()
        closed_in = time.monotonic() - closing
    assert body_started < 2.0, f"opening stalled the agent for {body_started:.1f}s (default open_timeout is 1s)"
    assert closed_in < 3.0, f"closing took {closed_in:.1f}s with flush_timeout=1"
    assert ctx.attempted is None and ctx.attempt_id.startswith("at-")  # its final id, chosen by the context
    stats = tracer.emitter.stats()
    assert stats.emitted == 12 and stats.held == 12 and stats.pending == 12  # root + 10 steps + reward
    assert stats.delivered == 0 and stats.rejected == 0 and stats.undelivered == 12
    assert any(ctx.rollout_id in r.message and "not fully recorded" in r.message for r in caplog.records)

    caplog.clear()
    with caplog.at_level("WARNING"):
        final = tracer.shutdown(timeout=1.0)  # what the atexit hook does
    assert final.undelivered == 12
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "could not deliver 12 of 12 spans" in messages and "held=12" in messages
    assert f"could not record 1 rollout(s) in {store.url}" in messages and ctx.rollout_id in messages


def test_store_back_after_an_outage_gets_the_rollout_its_spans_and_its_completion() -> None:
    memory = agl.InMemoryLightningStore()
    server = StoreServer(memory).start()
    port = server.port
    server.stop()
    store = quick_client(server.url)
    tracer = agl.get_tracer(store)
    try:
        began = time.monotonic()
        with agl.TrainingContext(task_id="back", store=store, flush_timeout=0.5, instrument=False) as ctx:
            with agl.span("step") as step:
                pass
            agl.emit_reward(1.0, span_id=step.id)
        assert time.monotonic() - began < 4.0
        assert ctx.attempted is None, "the store was down: the rollout cannot exist yet"
        chosen = (ctx.rollout_id, ctx.attempt_id)

        server = StoreServer(memory, port=port).start()
        sync = SyncStore(memory)

        def finished() -> bool:
            rollouts = sync.query_rollouts(rollout_ids=[ctx.rollout_id])
            return bool(rollouts) and rollouts[0].status == "succeeded"

        wait_until(finished, 30, "the rollout's creation and completion after the store came back")
        assert tracer.emitter.flush(timeout=20)
        assert ctx.attempted is not None
        spans = sync.query_spans(ctx.rollout_id)
        assert sorted(s.name for s in spans) == ["back", "reward", "step"]
        assert (ctx.rollout_id, ctx.attempt_id) == chosen, "the ids the context chose are the stored ones"
        assert {s.attempt_id for s in spans} == {ctx.attempt_id}
        root = next(s for s in spans if s.name == "back")
        assert root.attributes[semconv.ATTEMPT_ID] == ctx.attempt_id
        reward = next(s for s in spans if s.kind == "reward")
        assert reward.attributes[semconv.REWARD_TARGET_SPAN_ID] == step.id
        stats = tracer.emitter.stats()
        assert stats.delivered == 3 and stats.undelivered == 0 and stats.held == 0
        # the store marks the attempt succeeded before its answer reaches the rollout's thread, which then untracks
        wait_until(
            lambda: tracer.unfinished() == [], 10, "the rollout's thread to finish once its completion was answered"
        )
    finally:
        tracer.close(timeout=1.0)
        server.stop()


def _span(rollout_id: str, attempt_id: str, i: int) -> agl.Span:
    return agl.Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=i,
        trace_id="1" * 32,
        span_id=f"{i:016x}",
        name=f"s{i}",
    )


def test_a_transient_error_while_isolating_a_rejected_batch_requeues_spans_instead_of_rejecting_them() -> None:
    memory = agl.InMemoryLightningStore()
    server = StoreServer(memory).start()
    port = server.port
    server.stop()
    attempted = SyncStore(memory).start_rollout(agl.RolloutRequest())
    good1, good2 = (_span(attempted.rollout_id, attempted.attempt_id, i) for i in (1, 3))
    # Not JSON: the client refuses the whole batch as invalid (ValueError) before sending anything, so
    # the emitter retries span by span, and the first good span meets the stopped server.
    bad = agl.Span.model_construct(
        **{**dict(_span(attempted.rollout_id, attempted.attempt_id, 2)), "attributes": {"x": object()}}
    )
    loop = EventLoopThread()
    emitter = SpanEmitter(quick_client(server.url), loop, flush_interval=0.01, max_backoff=0.2)
    try:
        for span in (good1, bad, good2):
            assert emitter.emit(span)
        wait_until(lambda: emitter.stats().retries >= 2, 20, "retries against the stopped server")
        stats = emitter.stats()
        assert stats.rejected == 0, "a span that met an unreachable store was counted as rejected"
        assert stats.pending == 3 and stats.delivered == 0

        server = StoreServer(memory, port=port).start()
        assert emitter.flush(timeout=30)
        stats = emitter.stats()
        assert (stats.delivered, stats.rejected, stats.pending) == (2, 1, 0)
        assert [s.name for s in SyncStore(memory).query_spans(attempted.rollout_id)] == ["s1", "s3"]
    finally:
        emitter.close(timeout=1)
        loop.stop()
        server.stop()


def test_a_full_buffer_drops_and_counts_new_spans_while_the_store_is_down(caplog: pytest.LogCaptureFixture) -> None:
    memory = agl.InMemoryLightningStore()
    server = StoreServer(memory).start()
    port = server.port
    server.stop()
    attempted = SyncStore(memory).start_rollout(agl.RolloutRequest())
    loop = EventLoopThread()
    emitter = SpanEmitter(quick_client(server.url), loop, max_buffer=5, flush_interval=0.01, max_backoff=0.2)
    try:
        with caplog.at_level("WARNING"):
            accepted = [emitter.emit(_span(attempted.rollout_id, attempted.attempt_id, i)) for i in range(1, 21)]
        assert accepted.count(True) == 5 and accepted.count(False) == 15
        assert emitter.stats().dropped == 15
        assert any("buffer is full" in r.message for r in caplog.records)
        server = StoreServer(memory, port=port).start()
        stats = emitter.close(timeout=20)
        assert stats.delivered == 5 and stats.dropped == 15 and stats.undelivered == 15
    finally:
        loop.stop()
        server.stop()


def test_interpreter_exit_reports_what_could_not_be_delivered_within_a_bounded_time() -> None:
    script = textwrap.dedent(
        f"""
        import agent_lightning as agl
        from agent_lightning_http import HttpLightningStore

        store = HttpLightningStore("http://127.0.0.1:{free_port()}", retry_timeout=0.3, connect_timeout=0.3)
        with agl.TrainingContext(task_id="exit", store=store, flush_timeout=0.2, instrument=False):
            with agl.span("step"):
                pass
        print("agent done", flush=True)
        """
    )
    env = {**os.environ, "AGL_PLUGINS": "", "AGL_EXIT_TIMEOUT": "1"}
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert "agent done" in result.stdout
    assert "could not deliver 2 of 2 spans" in result.stderr, result.stderr
    assert "could not record 1 rollout(s)" in result.stderr, result.stderr
    assert elapsed < 20, f"exiting took {elapsed:.1f}s with AGL_EXIT_TIMEOUT=1"
