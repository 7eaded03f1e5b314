"""The calculator agent reads its system prompt and worked examples from the rollout's resources."""

from __future__ import annotations

from typing import Any

import agent_lightning as agl
from agent_lightning import semconv
from agent_lightning.runner import Runner


def test_each_rollout_records_the_resources_version_it_ran(calc: Any, served: Any) -> None:
    tasks, openai_agent = calc
    task = {"question": "A shelf holds 20 books. 7 books are taken away. How many books are left?", "answer": 13,
            "expression": "20 - 7"}  # fmt: skip
    store, proxy = served([task])
    sync = agl.SyncStore(store)
    llm = sync.get_latest_resources().resources["main_llm"]  # type: ignore[union-attr]
    shot = {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]}
    first = sync.add_resources({"main_llm": llm, "system_prompt": agl.PromptTemplate(template="Prompt one.")})
    second = sync.add_resources(
        {
            "main_llm": llm,
            "system_prompt": agl.PromptTemplate(template="Prompt two. ALWAYS call the calculator."),
            "worked_examples": agl.ToolConfig(config={"examples": [shot]}),
        }
    )
    ids = [
        sync.enqueue_rollout(task, resources_id=snapshot.resources_id).rollout_id  # type: ignore[call-arg]
        for snapshot in (first, second)
    ]
    Runner(openai_agent.agent, store).run(max_rollouts=2)
    proxy.flush()
    seen = {}
    for rollout_id, snapshot in zip(ids, (first, second), strict=True):
        rollout = sync.get_rollout(rollout_id)
        assert rollout.status == "succeeded" and rollout.resources_id == snapshot.resources_id
        spans = sync.query_spans(rollout_id)
        roots = [s for s in spans if s.attributes.get(semconv.GEN_AI_OPERATION_NAME) == "invoke_agent"]
        assert [s.attributes.get(semconv.RESOURCES_ID) for s in roots] == [snapshot.resources_id]
        prompts = [s.attributes[semconv.GEN_AI_INPUT_MESSAGES] for s in spans if s.kind == "llm"]
        seen[snapshot.version] = (prompts[0], [s.reward for s in spans if s.reward is not None])
    (prompt_one, reward_one), (prompt_two, reward_two) = seen[first.version], seen[second.version]
    assert prompt_one[0] == {"role": "system", "content": "Prompt one."}
    assert len(prompt_one) == 2 + 4 * len(tasks.EXAMPLES)  # no examples resource: the default worked examples
    assert prompt_two[0]["content"].startswith("Prompt two.")
    assert [m["role"] for m in prompt_two] == ["system", "user", "assistant", "user"]  # the one resource example
    assert prompt_two[1]["content"] == "What is 2 plus 2?"
    assert reward_one == reward_two == [1.0]


def test_shots_from_trace_conversations(calc: Any) -> None:
    tasks, _ = calc
    call = {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6 * 7"}'}}
    conversation = [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "42"},
        {"role": "assistant", "content": "ANSWER: 42"},
    ]

    class Ctx:
        resources = agl.ResourcesSnapshot(
            resources_id="r",
            version=1,
            resources={"worked_examples": agl.ToolConfig(config={"examples": [{"messages": conversation}]})},
        )

    assert tasks.worked_examples(Ctx()) == [("What is 6 times 7?", "6 * 7", "42", "ANSWER: 42")]
    assert tasks.system_prompt(Ctx()) == tasks.SYSTEM_PROMPT
    assert len(tasks.worked_examples(None)) == len(tasks.EXAMPLES)


def test_a_labeled_task_as_a_worked_example(calc: Any) -> None:
    tasks, openai_agent = calc
    task = {"question": "There are 7 boxes with 12 pens in each box. How many pens are there?", "answer": 84,
            "expression": "7 * 12"}  # fmt: skip
    example = openai_agent.agent.worked_example(task)
    assert example == tasks.labeled_example(task)
    call = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "7 * 12"}'},
    }
    assert example["messages"] == [
        {"role": "user", "content": task["question"]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": "84"},  # the real calculator's result
        {"role": "assistant", "content": "ANSWER: 84"},
    ]

    class Ctx:
        resources = agl.ResourcesSnapshot(
            resources_id="r", version=1, resources={"worked_examples": agl.ToolConfig(config={"examples": [example]})}
        )

    # the agents read it back as one calculator-using shot
    assert tasks.worked_examples(Ctx()) == [(task["question"], "7 * 12", "84", "ANSWER: 84")]
    # no label to render from, or one the calculator contradicts: none
    assert tasks.labeled_example({"question": "What is 2 plus 2?", "answer": 4}) is None
    assert tasks.labeled_example({**task, "answer": 85}) is None


def test_a_tool_call_whose_arguments_are_not_an_object_is_answered_not_fatal(calc: Any) -> None:
    """A sampled call may carry any JSON (``["2+2"]``, ``7``): the agent answers it with the calculator's error and
    the rollout goes on to its reward, instead of failing."""
    import agent_lightning as agl
    from agent_lightning_proxy import LLMProxy
    from agent_lightning_testkit.scripted_llm import Reply, ScriptCall, ScriptedLLM, ToolCall

    _, openai_agent = calc
    task = {"question": "What is 2 plus 2?", "answer": 4, "expression": "2 + 2"}

    def script(call: ScriptCall) -> Reply | str:
        if call.messages[-1]["role"] == "tool":
            return "ANSWER: 4"
        return Reply(tool_calls=[ToolCall("calculator", '["2 + 2"]')])

    store = agl.InMemoryLightningStore()
    with ScriptedLLM(script) as llm, LLMProxy(store, llm.url) as proxy:
        sync = agl.SyncStore(store)
        sync.add_resources({"main_llm": proxy.resource("scripted", temperature=0.0)})
        rollout_id = sync.enqueue_rollout(task).rollout_id
        Runner(openai_agent.agent, store).run(max_rollouts=1)
        rollout = sync.get_rollout(rollout_id)
        assert rollout.status == "succeeded"
        tool_turns = [
            m
            for s in sync.query_spans(rollout_id)
            if s.kind == "llm"
            for m in s.attributes[semconv.GEN_AI_INPUT_MESSAGES]
            if m["role"] == "tool"
        ]
        assert tool_turns and "error" in str(tool_turns[-1]["content"]).lower()
        assert [s.reward for s in sync.query_spans(rollout_id) if s.reward is not None] == [1.0]
