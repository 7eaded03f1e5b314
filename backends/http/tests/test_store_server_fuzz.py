"""Schemathesis against the store server's OpenAPI schema (in-process ASGI): no 500 on any
generated request, and the store is still consistent afterwards. Example counts are bounded so
the run takes well under two minutes on two cores."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import RolloutConfig, RolloutRequest
from agent_lightning_http import create_app
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.timeout(300)

STORE = InMemoryLightningStore()
asyncio.run(
    STORE.enqueue_rollouts([RolloutRequest(input=i, config=RolloutConfig(lease_seconds=3600)) for i in range(3)])
)
APP = create_app(STORE, max_wait=0.05)  # long polls answer at once
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_gets_a_server_error(case: Any) -> None:
    if case.body is not None and isinstance(case.body, dict) and "timeout" in case.body:
        case.body["timeout"] = 0.0  # keep long polls short; the value range is checked elsewhere
    case.call_and_validate(checks=[not_a_server_error])


def test_the_store_is_consistent_after_fuzzing() -> None:
    """Runs after the fuzzing above (same module, same store): every read still works."""

    async def main() -> None:
        rollouts = await STORE.query_rollouts(limit=10_000)
        assert len(rollouts) >= 3
        for rollout in rollouts:
            attempts = await STORE.get_attempts(rollout.rollout_id)
            assert rollout.attempt_count == len(attempts)
            running = [a for a in attempts if a.status == "running"]
            assert len(running) <= 1
            if rollout.status == "running":
                assert running, f"{rollout.rollout_id} is running without a running attempt"
            await STORE.query_spans(rollout.rollout_id)
        await STORE.get_latest_resources()

    asyncio.run(main())
