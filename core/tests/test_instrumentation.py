"""The instrumentation API as the article uses it, against the in-memory store."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import agent_lightning as agl
import pytest
from agent_lightning import semconv
from agent_lightning.store.sync import SyncStore


@pytest.fixture
def store() -> agl.InMemoryLightningStore:
    return agl.InMemoryLightningStore()


def spans_of(store: agl.InMemoryLightningStore, rollout_id: str) -> list[agl.Span]:
    return SyncStore(store).query_spans(rollout_id)


def test_article_snippet_records_rollout_span_tree_and_reward(store: agl.InMemoryLightningStore) -> None:
    def calculator(expression: str) -> str:
        return str(eval(expression, {"__builtins__": {}}))

    with agl.TrainingContext(task_id="math_solver", store=store) as ctx:
        with agl.span("agent_step") as step:
            with agl.tool_call("calculator", {"expression": "25 * 17"}) as call:
                result = calculator("25 * 17")
                call.set_attribute(semconv.GEN_AI_TOOL_CALL_RESULT, result)
        reward = 1.0 if result == "425" else 0.0
        agl.emit_reward(reward, span_id=step.id)

    rollout = SyncStore(store).get_rollout(ctx.rollout_id)
    assert rollout.status == "succeeded"
    assert rollout.task_type == "math_solver"
    spans = spans_of(store, ctx.rollout_id)
    by_name = {s.name: s for s in spans}
    root = by_name["math_solver"]
    assert root.parent_id is None and root.kind == "agent"
    assert by_name["agent_step"].parent_id == root.span_id
    tool = by_name["execute_tool calculator"]
    assert tool.parent_id == step.id and tool.kind == "tool"
    assert tool.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "25 * 17"}
    assert tool.attributes[semconv.GEN_AI_TOOL_CALL_RESULT] == "425"
    reward_span = by_name["reward"]
    assert reward_span.kind == "reward" and reward_span.reward == 1.0
    assert reward_span.attributes[semconv.REWARD_TARGET_SPAN_ID] == step.id
    assert [s.sequence_id for s in spans] == sorted(s.sequence_id for s in spans)
    assert len({s.trace_id for s in spans}) == 1
    assert all(s.end_time is not None and s.status.code == "ok" for s in spans)


def test_exception_fails_attempt_and_is_recorded(store: agl.InMemoryLightningStore) -> None:
    with pytest.raises(ZeroDivisionError):
        with agl.TrainingContext(task_id="boom", store=store, config=agl.RolloutConfig(max_attempts=1)) as ctx:
            with agl.span("step"):
                1 / 0  # noqa: B018
    rollout = SyncStore(store).get_rollout(ctx.rollout_id)
    assert rollout.status == "failed"
    assert "ZeroDivisionError" in (rollout.error or "")
    step = next(s for s in spans_of(store, ctx.rollout_id) if s.name == "step")
    assert step.status.code == "error"
    assert step.attributes[semconv.ERROR_TYPE] == "ZeroDivisionError"


def test_standalone_context_that_raises_leaves_its_rollout_failed(store: agl.InMemoryLightningStore) -> None:
    """No runner would retry a standalone context's rollout: it fails for good, not requeuing."""
    with pytest.raises(ZeroDivisionError):
        with agl.TrainingContext(task_id="alone", store=store) as ctx:
            1 / 0  # noqa: B018
    rollout = SyncStore(store).get_rollout(ctx.rollout_id)
    assert (rollout.status, rollout.config.max_attempts) == ("failed", 1)
    assert "ZeroDivisionError" in (rollout.error or "")
    # A config the user gave is followed: with attempts left, the rollout waits for a runner to retry it.
    with pytest.raises(ZeroDivisionError):
        with agl.TrainingContext(task_id="alone", store=store, config=agl.RolloutConfig(max_attempts=2)) as ctx:
            1 / 0  # noqa: B018
    assert SyncStore(store).get_rollout(ctx.rollout_id).status == "requeuing"


def test_runner_attempt_that_raises_follows_max_attempts(store: agl.InMemoryLightningStore) -> None:
    """A context joining a runner's attempt does not change the rollout's config: a failed attempt requeues."""
    sync = SyncStore(store)
    sync.enqueue_rollout("task", config=agl.RolloutConfig(max_attempts=3))
    claimed = sync.claim_rollout("runner")
    assert claimed is not None
    with pytest.raises(ZeroDivisionError):
        with agl.TrainingContext(store=store, rollout=claimed):
            1 / 0  # noqa: B018
    rollout = sync.get_rollout(claimed.rollout_id)
    assert (rollout.status, rollout.config.max_attempts) == ("requeuing", 3)


def test_spans_carry_the_ids_the_context_chose_before_the_store_answered(store: agl.InMemoryLightningStore) -> None:
    """The context names its rollout and attempt up front: every span, seen by plugins or stored, has those ids."""
    ctx = agl.TrainingContext(task_id="ids", store=store)
    chosen = (ctx.rollout_id, ctx.attempt_id)
    with ctx:
        with agl.span("step"):
            pass
    assert (ctx.rollout_id, ctx.attempt_id) == chosen
    assert ctx.attempted is not None and (ctx.attempted.rollout_id, ctx.attempted.attempt_id) == chosen
    assert {(s.rollout_id, s.attempt_id) for s in spans_of(store, ctx.rollout_id)} == {chosen}


def test_dict_reward_and_default_target_is_current_span(store: agl.InMemoryLightningStore) -> None:
    with agl.TrainingContext(task_id="t", store=store) as ctx:
        with agl.span("answer") as answer:
            agl.emit_reward({"correct": 1.0, "format": 0.5})
        agl.emit_reward(2.0)  # no span open: the whole attempt
    rewards = [s for s in spans_of(store, ctx.rollout_id) if s.kind == "reward"]
    assert rewards[0].attributes[semconv.REWARD_TARGET_SPAN_ID] == answer.id
    assert rewards[0].reward == 1.5
    assert rewards[0].attributes["agl.reward.format"] == 0.5
    assert semconv.REWARD_TARGET_SPAN_ID not in rewards[1].attributes
    assert ctx.final_reward == 2.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", {"a": math.nan}, {}, None])
def test_bad_reward_raises_and_stores_nothing(store: agl.InMemoryLightningStore, bad: object) -> None:
    with agl.TrainingContext(task_id="t", store=store) as ctx:
        with pytest.raises(ValueError, match="reward"):
            agl.emit_reward(bad)  # type: ignore[arg-type]
    assert not [s for s in spans_of(store, ctx.rollout_id) if s.kind == "reward"]


def test_reward_for_a_span_id_not_opened_in_this_context_is_an_error(store: agl.InMemoryLightningStore) -> None:
    with agl.TrainingContext(task_id="other", store=store):
        with agl.span("elsewhere") as elsewhere:
            pass
    unknown = "0123456789abcdef"
    with agl.TrainingContext(task_id="t", store=store) as ctx:
        with agl.span("step") as step:
            pass
        for bad in (unknown, elsewhere.id, "not-a-span-id"):
            with pytest.raises(ValueError, match=f"span_id={bad!r}.*no span with this id was opened in rollout"):
                agl.emit_reward(1.0, span_id=bad)
        agl.emit_reward(0.5, span_id=step.id)  # an ended span of this run is fine
        agl.emit_reward(0.25, span_id=ctx.root_span_id)
    rewards = [s for s in spans_of(store, ctx.rollout_id) if s.kind == "reward"]
    assert [r.reward for r in rewards] == [0.5, 0.25]
    assert ctx.final_reward == 0.25


def test_reward_outside_context_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside agl.TrainingContext"):
        agl.emit_reward(1.0)


def test_non_json_attribute_rejected_with_its_name(store: agl.InMemoryLightningStore) -> None:
    with agl.TrainingContext(task_id="t", store=store):
        with agl.span("s") as s:
            with pytest.raises(ValueError, match="'weird'"):
                s.set_attribute("weird", object())
            with pytest.raises(ValueError, match="'score'"):
                s.set_attribute("score", math.nan)


def test_decorator_opens_a_fresh_context_per_call(store: agl.InMemoryLightningStore) -> None:
    seen: list[str] = []

    @agl.TrainingContext(task_id="decorated", store=store)
    def run(x: int) -> int:
        ctx = agl.current_context()
        assert ctx is not None
        seen.append(ctx.rollout_id)
        agl.emit_reward(float(x))
        return x * 2

    assert run(1) == 2 and run(2) == 4
    assert len(set(seen)) == 2
    assert all(SyncStore(store).get_rollout(r).status == "succeeded" for r in seen)


def test_async_context_and_nested_spans_across_tasks(store: agl.InMemoryLightningStore) -> None:
    async def worker(name: str) -> str:
        with agl.span(name) as s:
            await asyncio.sleep(0.01)
            with agl.span(f"{name}.inner") as inner:
                await asyncio.sleep(0.01)
            return f"{s.id}:{inner.parent_id}"

    async def main() -> tuple[str, list[str]]:
        async with agl.TrainingContext(task_id="async", store=store) as ctx:
            with agl.span("parent") as parent:
                links = await asyncio.gather(worker("a"), worker("b"), worker("c"))
            assert parent.id
        return ctx.rollout_id, links

    rollout_id, links = asyncio.run(main())
    for link in links:
        own, inner_parent = link.split(":")
        assert own == inner_parent
    spans = {s.name: s for s in spans_of(store, rollout_id)}
    for name in "abc":
        assert spans[name].parent_id == spans["parent"].span_id
        assert spans[f"{name}.inner"].parent_id == spans[name].span_id


def test_concurrent_async_contexts_stay_separate(store: agl.InMemoryLightningStore) -> None:
    async def one(i: int) -> str:
        async with agl.TrainingContext(task_id=f"task{i}", store=store) as ctx:
            for step in range(3):
                with agl.span(f"r{i}-s{step}"):
                    await asyncio.sleep(0.001)
            agl.emit_reward(float(i))
        return ctx.rollout_id

    async def main() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(8)))

    for i, rollout_id in enumerate(asyncio.run(main())):
        spans = spans_of(store, rollout_id)
        names = {s.name for s in spans if s.kind == "agent" and s.parent_id is not None}
        assert names == {f"r{i}-s{step}" for step in range(3)}
        assert next(s for s in spans if s.kind == "reward").reward == float(i)


def test_threads_keep_parents_with_propagate_and_single_context_fallback(store: agl.InMemoryLightningStore) -> None:
    results: dict[str, str | None] = {}

    def with_propagation() -> None:
        with agl.span("propagated") as s:
            results["propagated"] = s.parent_id

    def framework_thread() -> None:  # a thread that did not inherit the context
        with agl.span("fallback") as s:
            results["fallback"] = s.parent_id

    with agl.TrainingContext(task_id="threads", store=store) as ctx:
        with agl.span("outer") as outer:
            t1 = threading.Thread(target=agl.propagate(with_propagation))
            t2 = threading.Thread(target=framework_thread)
            t1.start(), t2.start()
            t1.join(), t2.join()
    assert results["propagated"] == outer.id
    assert results["fallback"] == ctx.root_span_id
    names = {s.name for s in spans_of(store, ctx.rollout_id)}
    assert {"propagated", "fallback"} <= names


def test_nested_training_context_joins_outer_attempt(store: agl.InMemoryLightningStore) -> None:
    with agl.TrainingContext(task_id="outer", store=store) as outer:
        with agl.TrainingContext(task_id="router", agent_name="router") as inner:
            agl.emit_reward(1.0)
    assert inner.rollout_id == outer.rollout_id
    spans = spans_of(store, outer.rollout_id)
    router = next(s for s in spans if s.name == "router")
    assert router.parent_id == outer.root_span_id
    assert router.attributes[semconv.AGENT_NAME] == "router"
    assert len(SyncStore(store).query_rollouts()) == 1


def test_span_outside_context_records_nothing_but_works() -> None:
    with agl.span("loose") as s:
        assert s.id and not s.is_recording


def test_llm_resource_is_routed_to_the_attempt(store: agl.InMemoryLightningStore) -> None:
    SyncStore(store).add_resources({"policy": agl.LLM(endpoint="http://127.0.0.1:9/v1", model="m")})
    with agl.TrainingContext(task_id="t", store=store) as ctx:
        llm = ctx.llm()
    assert llm.endpoint == f"http://127.0.0.1:9/rollout/{ctx.rollout_id}/attempt/{ctx.attempt_id}/v1"
    with agl.TrainingContext(task_id="t", store=store) as ctx2:
        with pytest.raises(LookupError, match="no LLM resource named 'other'"):
            ctx2.llm("other")


def test_llm_without_an_llm_resource_says_how_to_register_one(store: agl.InMemoryLightningStore) -> None:
    with agl.TrainingContext(task_id="t", store=store) as ctx:
        with pytest.raises(LookupError, match=r"has no LLM resource.*add_resources.*agl\.LLM\(endpoint=.*agl proxy"):
            ctx.llm()
    SyncStore(store).add_resources({"prompt": agl.PromptTemplate(template="hi")})  # resources, but no LLM
    with agl.TrainingContext(task_id="t", store=store) as ctx:
        with pytest.raises(LookupError, match="has no LLM resource"):
            ctx.llm()


def test_long_run_keeps_its_lease_through_heartbeats(store: agl.InMemoryLightningStore) -> None:
    config = agl.RolloutConfig(lease_seconds=0.6, max_attempts=1)
    with agl.TrainingContext(task_id="slow", store=store, config=config) as ctx:
        time.sleep(2.0)  # over three leases long
    assert SyncStore(store).get_rollout(ctx.rollout_id).status == "succeeded"
    (attempt,) = SyncStore(store).get_attempts(ctx.rollout_id)
    assert attempt.status == "succeeded" and attempt.last_heartbeat_at > attempt.started_at


def test_emit_message_records_a_message_span_under_the_current_span(store: agl.InMemoryLightningStore) -> None:
    with agl.TrainingContext(task_id="chat", store=store) as ctx:
        with agl.span("turn") as turn:
            record = agl.emit_message("user", "What is 25 * 17?", turn_index=0)
    assert record is not None and record.kind == "message" and record.name == "message user"
    stored = next(s for s in spans_of(store, ctx.rollout_id) if s.kind == "message")
    assert stored.parent_id == turn.id
    assert stored.attributes[semconv.MESSAGE_ROLE] == "user"
    assert stored.attributes[semconv.MESSAGE_CONTENT] == "What is 25 * 17?"
    assert stored.attributes["turn_index"] == 0
    assert agl.emit_message("user", "outside") is None  # nothing to record it in


def test_atool_call_records_an_async_tool_invocation(store: agl.InMemoryLightningStore) -> None:
    from agent_lightning.instrumentation.spans import atool_call

    async def main() -> str:
        async with agl.TrainingContext(task_id="tools", store=store) as ctx:
            async with atool_call("calculator", {"expression": "25*17"}, call_id="call-1") as call:
                await asyncio.sleep(0)
                call.set_attribute(semconv.GEN_AI_TOOL_CALL_RESULT, "425")
            with pytest.raises(KeyError):
                async with atool_call("lookup", {"key": "missing"}):
                    raise KeyError("missing")
        return ctx.rollout_id

    spans = {s.name: s for s in spans_of(store, asyncio.run(main()))}
    calc = spans["execute_tool calculator"]
    assert calc.kind == "tool" and calc.status.code == "ok"
    assert calc.attributes[semconv.GEN_AI_TOOL_NAME] == "calculator"
    assert calc.attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] == {"expression": "25*17"}
    assert calc.attributes[semconv.GEN_AI_TOOL_CALL_ID] == "call-1"
    assert calc.attributes[semconv.GEN_AI_TOOL_CALL_RESULT] == "425"
    failed = spans["execute_tool lookup"]
    assert failed.status.code == "error" and failed.attributes[semconv.ERROR_TYPE] == "KeyError"


def test_span_as_a_decorator_on_sync_and_async_functions(store: agl.InMemoryLightningStore) -> None:
    @agl.span("plan", kind="custom", step=1)
    def plan(x: int) -> int:
        with agl.span("inner"):
            return x + 1

    @agl.span("act")
    async def act(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise ValueError("negative")
        return x * 2

    async def main() -> str:
        async with agl.TrainingContext(task_id="decorated-spans", store=store) as ctx:
            assert plan(1) == 2 and plan(2) == 3
            assert await act(3) == 6
            with pytest.raises(ValueError, match="negative"):
                await act(-1)
        return ctx.rollout_id

    spans = spans_of(store, asyncio.run(main()))
    root = next(s for s in spans if s.parent_id is None)
    plans = [s for s in spans if s.name == "plan"]
    assert len(plans) == 2 and len({s.span_id for s in plans}) == 2  # a fresh span per call
    assert all(s.parent_id == root.span_id and s.kind == "custom" and s.attributes["step"] == 1 for s in plans)
    inners = [s for s in spans if s.name == "inner"]
    assert sorted(s.parent_id or "" for s in inners) == sorted(s.span_id for s in plans)
    acts = [s for s in spans if s.name == "act"]
    assert [s.status.code for s in acts] == ["ok", "error"] and all(s.kind == "agent" for s in acts)
    assert acts[1].attributes[semconv.ERROR_TYPE] == "ValueError"


def test_training_context_decorates_an_async_function(store: agl.InMemoryLightningStore) -> None:
    seen: list[str] = []

    @agl.TrainingContext(task_id="async-decorated", store=store, agent_name="solver")
    async def solve(x: int) -> int:
        ctx = agl.current_context()
        assert ctx is not None and ctx.is_open
        seen.append(ctx.rollout_id)
        with agl.span("think"):
            await asyncio.sleep(0)
        if x < 0:
            raise ValueError("cannot solve")
        agl.emit_reward(float(x))
        return x * 2

    async def main() -> list[int]:
        results = list(await asyncio.gather(solve(1), solve(2)))
        with pytest.raises(ValueError, match="cannot solve"):
            await solve(-1)
        return results

    assert asyncio.run(main()) == [2, 4]
    assert len(set(seen)) == 3
    sync = SyncStore(store)
    rollouts = {r.rollout_id: r for r in sync.query_rollouts(rollout_ids=seen)}
    assert [rollouts[r].task_type for r in seen] == ["async-decorated"] * 3
    assert [rollouts[r].status for r in seen[:2]] == ["succeeded", "succeeded"]
    assert rollouts[seen[2]].status in ("requeuing", "failed")
    for rollout_id in seen[:2]:
        names = {s.name for s in spans_of(store, rollout_id)}
        assert names == {"async-decorated", "think", "reward"}
