"""A span reaches the store shortly after it ends: the emitter sends on a 50 ms timer, not once a second."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import agent_lightning as agl
from agent_lightning.store import open_store
from agent_lightning.store.sync import SyncStore


def test_an_ended_span_is_visible_through_another_store_object_within_tens_of_ms(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'latency.db'}"
    reader = SyncStore(open_store(url))  # a second store object on the same file, as another process would be
    latencies: list[float] = []
    try:
        with agl.TrainingContext(task_id="latency", store=url, instrument=False) as ctx:
            assert ctx.attempted is not None
            for i in range(20):
                with agl.span(f"step-{i}"):
                    pass
                ended = time.monotonic()
                while not reader.query_spans(ctx.rollout_id, names=[f"step-{i}"]):
                    assert time.monotonic() - ended < 5.0, f"span step-{i} not in the store after 5 s"
                    time.sleep(0.002)
                latencies.append(time.monotonic() - ended)
                time.sleep(0.1)  # light load: the emitter is idle again when the next span ends
    finally:
        reader.close()
    p50 = statistics.median(latencies)
    assert p50 < 0.2, f"span end -> stored: median {p50 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
