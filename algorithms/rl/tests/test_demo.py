"""``agl demo`` shortened: a tiny random policy, a few tasks, one GRPO iteration, through the demo's own code path."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
from pathlib import Path

import pytest
from agent_lightning import semconv
from agent_lightning.cli import build_parser
from agent_lightning.instrumentation.context import TrainingContext
from agent_lightning.store.memory import InMemoryLightningStore
from agent_lightning.store.sync import SyncStore
from agent_lightning_proxy.server import LLMProxy
from agent_lightning_rl.demo import (
    EvalReport,
    PairedComparison,
    add_arguments,
    config_from_args,
    find_examples_dir,
    load_example,
    run_demo,
)
from agent_lightning_testkit.scripted_llm import Reply, ScriptCall, ScriptedLLM, ToolCall
from conftest import build_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "calc_agent"


def save_tiny_policy(folder: Path) -> Path:
    """A 2-layer random Llama with a long enough context for the tool-calling prompt, saved as a checkpoint."""
    tokenizer = build_tokenizer()
    tiny_llama(tokenizer, max_position_embeddings=4096).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_agl_demo_command_is_registered() -> None:
    args = build_parser().parse_args(["demo", "--framework", "openai", "--iterations", "2", "--set", "group_size=2"])
    config = config_from_args(args)
    assert (config.framework, config.iterations, config.algorithm_config) == ("openai", 2, {"group_size": 2})


def test_bad_flags_are_named() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="--set takes KEY=VALUE"):
        config_from_args(parser.parse_args(["--set", "group_size"]))
    with pytest.raises(ValueError, match="--iterations and --runners"):
        config_from_args(parser.parse_args(["--iterations", "0"]))
    with pytest.raises(FileNotFoundError, match="no tasks.py"):
        find_examples_dir(Path(__file__).parent)
    with pytest.raises(ValueError, match="unknown framework"):
        load_example(EXAMPLES, "crewai")


FRAMEWORK_MODULES = {
    "openai": ["openai", "agent_lightning_openai"],
    "langchain": ["langchain.agents", "langchain_openai", "agent_lightning_langchain"],
    "autogen": ["autogen_agentchat", "autogen_ext.models.openai", "agent_lightning_autogen"],
}


def _require_framework(framework: str) -> None:
    """The agent's framework and its adapter; missing ones skip the test on a laptop and fail it under CI."""
    for module in FRAMEWORK_MODULES[framework]:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            message = f"the {framework} calculator agent needs {module} (nox -s \"tests(package='rl')\" installs it)"
            if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
                pytest.fail(f"{message}: {exc}", pytrace=False)
            pytest.skip(message)


@pytest.mark.parametrize("framework", list(FRAMEWORK_MODULES))
def test_shortened_demo_produces_rollouts_spans_checkpoint_metrics_and_plot(
    tmp_path: Path, framework: str, capfd: pytest.CaptureFixture[str]
) -> None:
    _require_framework(framework)
    model = save_tiny_policy(tmp_path / "tiny")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--model", str(model), "--framework", framework, "--iterations", "1", "--runners", "2",
            "--train-size", "2", "--val-size", "2", "--run-dir", str(tmp_path / "run"), "--examples-dir", str(EXAMPLES),
            "--max-tokens", "8", "--set", "group_size=2", "--set", "tasks_per_iteration=2",
            "--set", "max_new_tokens=8", "--no-progress",
        ]
    )  # fmt: skip
    config = config_from_args(args)
    store = InMemoryLightningStore()
    config.store = store  # keep the store open after the demo, to look inside

    result = run_demo(config)

    assert "grpo online" not in capfd.readouterr().err  # --no-progress: the algorithm draws no bar either
    run = tmp_path / "run"
    assert result.iterations == 1
    assert (result.before.tasks, result.before.finished) == (2, 2)
    assert (result.after.tasks, result.after.finished) == (2, 2)
    assert "validation accuracy" in result.table and "tokens/s" in result.table

    async def look() -> tuple[dict[str, int], list[int]]:
        rollouts = await store.query_rollouts(status=["succeeded"])
        modes: dict[str, int] = {}
        completion_lengths = []
        for rollout in rollouts:
            modes[rollout.mode] = modes.get(rollout.mode, 0) + 1
            for span in await store.query_spans(rollout.rollout_id, "latest"):
                ids = span.attributes.get(semconv.COMPLETION_TOKEN_IDS)
                if span.kind == "llm" and isinstance(ids, list):
                    assert span.attributes[semconv.PROMPT_TOKEN_IDS], "a recorded call without prompt ids"
                    completion_lengths.append(len(ids))
        return modes, completion_lengths

    import asyncio

    modes, completion_lengths = asyncio.run(look())
    assert modes == {"val": 4, "train": 4}  # two evaluations of 2 tasks, one iteration of 2 tasks x 2
    assert len(completion_lengths) >= 8 and all(0 < n <= 8 for n in completion_lengths)

    assert result.checkpoint is not None and result.checkpoint.parent == run / "checkpoint"
    trained = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    assert trained.config.num_hidden_layers == 2

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in lines if "phase" in r] == ["baseline", "trained"]
    assert any("train/reward_mean" in r for r in lines)
    assert (run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["checkpoint"] == str(result.checkpoint)
    assert summary["paired"]["fixed"] + summary["paired"]["broken"] <= 2


def test_paired_comparison_counts_flips_and_gives_the_exact_sign_test() -> None:
    def report(solved: list[str]) -> EvalReport:
        return EvalReport("x", 6, 6, len(solved) / 6, 0.0, None, 0.0, 0, 0.0, 1.0, solved=solved)

    paired = PairedComparison.of(report(["a", "b", "c"]), report(["b", "c", "d", "e", "f"]))
    assert (paired.fixed, paired.broken) == (3, 1)
    assert paired.p_value == pytest.approx(5 / 16)  # P(X >= 3), X ~ Binomial(4, 1/2)
    assert PairedComparison.of(report(["a"]), report(["a"])).p_value == 1.0
    assert "3 fixed, 1 broken" in paired.describe(6)


def _conversation(messages: list[dict[str, object]]) -> list[tuple[object, ...]]:
    """What the model sees of each message: role, text, and tool calls as (name, arguments)."""
    seen = []
    for message in messages:
        calls = tuple(
            (call["function"]["name"], json.loads(call["function"]["arguments"]))  # type: ignore[index]
            for call in message.get("tool_calls") or []  # type: ignore[attr-defined]
        )
        seen.append((message["role"], message.get("content") or "", calls))
    return seen


def test_the_three_calculator_agents_send_the_model_the_same_conversation() -> None:
    """Worked examples included: one framework's agent must not train on a different prompt than another's."""

    def script(call: ScriptCall) -> Reply | str:
        if call.messages[-1]["role"] == "tool":
            return f"ANSWER: {call.messages[-1]['content']}"
        return Reply(tool_calls=[ToolCall("calculator", {"expression": "17 * 3"})])

    task = {"question": "What is 17 times 3?", "answer": 51}
    conversations = {}
    for framework in FRAMEWORK_MODULES:
        _require_framework(framework)
        tasks, agent = load_example(EXAMPLES, framework)
        store = InMemoryLightningStore()
        with ScriptedLLM(script) as llm, LLMProxy(store, llm.url) as proxy:
            SyncStore(store).add_resources({"policy": proxy.resource("policy", temperature=0.0)})
            with TrainingContext(task_id=f"calc-{framework}", store=store) as ctx:
                result = agent(task, ctx)
                if result is not None:  # the AutoGen agent is a coroutine function
                    asyncio.run(result)
            proxy.flush()
            rewards = [s.reward for s in SyncStore(store).query_spans(ctx.rollout_id) if s.reward is not None]
        first, second = (call.body["messages"] for call in llm.calls)
        assert _conversation(second)[-2:] == [
            ("assistant", "", (("calculator", {"expression": "17 * 3"}),)),
            ("tool", "51", ()),
        ]
        conversations[framework] = (_conversation(first), _conversation(second))
        assert rewards == [1.0], framework
        labeled = {**task, "expression": "17 * 3"}  # each variant renders labeled tasks alike (demonstration search)
        assert agent.worked_example(labeled) == tasks.labeled_example(labeled) is not None, framework
    openai_first, _ = conversations["openai"]
    shots = [m for m in openai_first if m[0] == "assistant" and m[2]]
    assert len(shots) == len(tasks.EXAMPLES) >= 1  # the worked examples are in the prompt
    assert openai_first[0] == ("system", tasks.SYSTEM_PROMPT, ())
    assert conversations["langchain"] == conversations["openai"]
    assert conversations["autogen"] == conversations["openai"]


def _short_args(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--runners", "2", "--train-size", "3", "--val-size", "2",
        "--run-dir", str(tmp_path / "run"), "--examples-dir", str(EXAMPLES), "--max-tokens", "8", "--no-progress",
        *extra,
    ]  # fmt: skip


def test_shortened_sft_demo_samples_keeps_trains_and_compares(tmp_path: Path) -> None:
    """``agl demo --algorithm sft``: rollouts of the untrained model, the kept ones trained on, the checkpoint
    evaluated (every rollout kept here: a random tiny model never succeeds nor calls a tool, so ``min_reward=0`` and
    no ``require_tool_call``)."""
    _require_framework("openai")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sets = ["min_reward=0", "require_tool_call=false", "collect_tasks=2", "group_size=2", "max_new_tokens=8"]
    extra = ["--algorithm", "sft", *(item for value in sets for item in ("--set", value))]
    args = parser.parse_args(_short_args(tmp_path, save_tiny_policy(tmp_path / "tiny"), *extra))
    config = config_from_args(args)
    assert config.num_iterations == 2  # SFT epochs by default
    store = InMemoryLightningStore()
    config.store = store
    result = run_demo(config)
    assert result.iterations == 2 and result.checkpoint is not None
    AutoModelForCausalLM.from_pretrained(result.checkpoint)
    sync = SyncStore(store)
    modes = [r.mode for r in sync.query_rollouts(limit=100)]
    assert modes.count("train") == 4 and modes.count("val") == 4  # 2 tasks x 2 tries; two evaluations of 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in lines if "phase" in r] == ["baseline", "trained"]
    assert any(r.get("collect/kept_rollouts") == 4 for r in lines) and any("train/nll" in r for r in lines)


def test_shortened_apo_demo_searches_worked_examples_and_evaluates_start_and_best(tmp_path: Path) -> None:
    """``agl demo --algorithm apo``: one server and proxy for the search; the starting candidate (no worked examples)
    and the best one are evaluated on the held-out tasks with their own resources."""
    _require_framework("openai")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # a random tiny model never calls the calculator: keep any rollout, and show 2 of the 3 training tasks labeled
    sets = ["success_threshold=0", "minibatch_size=1", "bootstrap_tasks=3", "require_tool_call=false",
            "max_labeled_demos=2"]  # fmt: skip
    extra = ["--algorithm", "apo", "--iterations", "2", "--selection-size", "2"]
    extra += [item for value in sets for item in ("--set", value)]
    args = parser.parse_args(_short_args(tmp_path, save_tiny_policy(tmp_path / "tiny"), *extra))
    config = config_from_args(args)
    store = InMemoryLightningStore()
    config.store = store
    result = run_demo(config)
    assert result.checkpoint is None and result.iterations >= 1
    apo = result.extra["apo"]
    assert apo["bootstrap_demos"] == 1 and apo["selection_tasks"] == 2 and apo["rollouts_spent"] <= 200
    assert apo["labeled_demos"] == 3  # each training task rendered by the agent's worked_example
    sync = SyncStore(store)
    rollouts = sync.query_rollouts(limit=200)
    evaluations = [r for r in rollouts if "apo.candidate" not in r.metadata]
    assert len(evaluations) == 4 and len(rollouts) - len(evaluations) == apo["rollouts_spent"]
    # the baseline ran with no worked examples, the optimized evaluation with the best candidate's
    by_label = {}
    for rollout in evaluations:
        snapshot = sync.get_resources(rollout.resources_id)
        assert snapshot is not None and "main_llm" in snapshot.resources
        by_label[snapshot.metadata["purpose"]] = snapshot.resources["worked_examples"].config["examples"]  # type: ignore[union-attr]
    assert by_label["evaluation: baseline"] == []
    assert by_label["evaluation: optimized"] == apo["best_examples"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["apo"]["rollouts_spent"] == apo["rollouts_spent"] and "paired" in summary
