"""SFT and rejection sampling on the tiny test model: what is kept, the masks, the loss, the re-tokenizing path."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer, semconv
from agent_lightning.errors import NoTrainingData
from agent_lightning.store.sync import SyncStore
from agent_lightning.trajectory import build_episode
from agent_lightning.types import RolloutRequest, Span, new_span_id, new_trace_id
from agent_lightning_rl.config import GRPOConfig, LoraSettings, SFTConfig
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from agent_lightning_rl.learner import PolicyLearner
from agent_lightning_rl.policy.chat import render_chat
from agent_lightning_rl.sft import RETOKENIZED_KEY, SupervisedFineTuning
from toy import PROMPTS, FirstTokenAgent, save_tiny_policy, target_ids
from traces import add_rollout
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def _ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _multi_turn(tokenizer: PreTrainedTokenizerFast, question: str) -> list[tuple[list[int], list[int]]]:
    """Two calls whose second prompt extends the first prompt + completion with tool output (merged by
    ``aggregation="trajectory"``, the tool output masked out)."""
    prompt = _ids(tokenizer, f"user {question} assistant")
    first = _ids(tokenizer, ' {"name": "add", "arguments": {"a": 2, "b": 3}}')
    tool = _ids(tokenizer, " <tool_response> 5")
    second = [*_ids(tokenizer, " The answer is 5."), tokenizer.eos_token_id]
    return [(prompt, first), (prompt + first + tool, second)]


def _store_with_rollouts(tokenizer: PreTrainedTokenizerFast) -> tuple[InMemoryLightningStore, list[Any]]:
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    rollouts = []
    for i, question in enumerate(["What is 2+3?", "hello world", "the lazy dog", "the quick brown fox"]):
        for reward in (1.0, 0.0) if i < 3 else (0.1,):
            rollouts.append(add_rollout(sync, {"q": question}, _multi_turn(tokenizer, question), reward))
    return store, rollouts


def test_nll_is_the_mean_over_trainable_tokens_only(
    tokenizer: PreTrainedTokenizerFast, model: Any, forced_logprobs: Any
) -> None:
    prompt, completion = _ids(tokenizer, "What is 2+3?"), _ids(tokenizer, " The answer is 5. hello world")
    mask = [1, 0, 0, 1, 1, 1, 0, 1][: len(completion)] + [1] * max(0, len(completion) - 8)
    from agent_lightning.types import Sample

    sample = Sample(
        rollout_id="r", attempt_id="a", span_ids=[], prompt_token_ids=prompt, completion_token_ids=completion,
        loss_mask=mask, reward=1.0,
    )  # fmt: skip
    expected = forced_logprobs(model, prompt, completion)
    want = -sum(lp for lp, m in zip(expected, mask, strict=True) if m) / sum(mask)
    learner = PolicyLearner(model, SFTConfig(learning_rate=0.0), pad_id=int(tokenizer.pad_token_id))
    metrics = learner.nll_update([sample])
    assert metrics["train/nll"] == pytest.approx(want, rel=1e-4)
    # a changed token under mask 0 at the end changes no trained token's context, so not the loss
    tail = sample.model_copy(update={"completion_token_ids": [*completion, 7], "loss_mask": [*mask, 0]})
    assert learner.nll_update([tail])["train/nll"] == pytest.approx(want, rel=1e-4)


def test_offline_sft_trains_on_successful_rollouts_with_rls_masks(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    store, rollouts = _store_with_rollouts(tokenizer)
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    config = SFTConfig(model=model_dir, learning_rate=1e-2, aggregation="trajectory", mini_batch_size=2)
    algorithm = SupervisedFineTuning(config)
    result = Trainer(algorithm, store=store, run_dir=tmp_path / "run").train(
        num_iterations=6, checkpoint_dir=tmp_path / "ckpt"
    )
    nll = [m["train/nll"] for m in result.metrics]
    assert nll[-1] < 0.5 * nll[0], nll  # the kept samples are learned
    first = result.metrics[0]
    assert first["data/kept_rollouts"] == 3 and first["sft/samples"] == 3  # one merged sample per kept rollout
    assert first["data/rollouts"] == len(rollouts) and first["train/optimizer_steps"] == 2
    # the samples are RL's episodes of the kept rollouts: same ids, same masks (tool output never trained)
    sync = SyncStore(store)
    expected = {}
    for rollout in rollouts:
        episode = build_episode(rollout, sync.query_spans(rollout.rollout_id), aggregation="trajectory")
        if episode.reward == 1.0:
            expected[rollout.rollout_id] = [
                (s.prompt_token_ids, s.completion_token_ids, s.loss_mask) for s in episode.samples
            ]
    assert len(expected) == 3
    tool_len = len(_ids(tokenizer, " <tool_response> 5"))
    for samples in expected.values():
        ((_, _, mask),) = samples
        assert mask.count(0) == tool_len  # the merged tool output carries no loss
    trained = {(tuple(s.prompt_token_ids), tuple(s.completion_token_ids), tuple(s.loss_mask)) for s in algorithm.data}
    assert trained == {(tuple(p), tuple(c), tuple(m)) for v in expected.values() for p, c, m in v}
    # an HF checkpoint
    assert result.checkpoint is not None and result.checkpoint.name == "checkpoint-000006"
    AutoModelForCausalLM.from_pretrained(result.checkpoint)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and "train/nll" in lines[-1]


def test_best_of_group_keeps_one_rollout_per_task(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    for reward in (0.4, 0.9, 0.6):
        add_rollout(sync, {"q": "hello world"}, _multi_turn(tokenizer, "hello world"), reward)
    add_rollout(sync, {"q": "the lazy dog"}, _multi_turn(tokenizer, "the lazy dog"), 0.2)
    algorithm = SupervisedFineTuning(
        SFTConfig(model=save_tiny_policy(tokenizer, tmp_path / "m"), min_reward=0.3, best_of_group=True)
    )
    result = Trainer(algorithm, store=store, run_dir=tmp_path / "run").train(num_iterations=1)
    assert result.metrics[0]["data/kept_rollouts"] == 1
    (kept,) = {s.rollout_id for s in algorithm.data}
    assert [s.reward for s in sync.query_spans(kept) if s.reward is not None] == [0.9]


def test_no_successful_rollout_says_how_to_fix_it(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    for reward in (0.0, 0.1):
        add_rollout(sync, {"q": "x"}, _multi_turn(tokenizer, "hello world"), reward)
    algorithm = SupervisedFineTuning(SFTConfig(model=save_tiny_policy(tokenizer, tmp_path / "m")))
    with pytest.raises(NoTrainingData, match="no successful rollout") as info:
        Trainer(algorithm, store=store, run_dir=tmp_path / "run").train(num_iterations=1)
    message = str(info.value)
    assert "reward >= 1" in message and "0 to 0.1" in message
    assert "min_reward" in message and "dataset" in message


def test_require_tool_call_keeps_only_rollouts_in_which_the_model_called_a_tool(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """A reply that writes the tool's answer as text passes the reward as a real call does; ``require_tool_call``
    keeps only the rollout whose model call returned a structured tool call."""
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    outputs = [[{"role": "assistant", "content": "", "tool_calls": [call]}], [{"role": "assistant", "content": "5"}]]
    called = add_rollout(sync, {"q": "2+3"}, _multi_turn(tokenizer, "What is 2+3?"), 1.0, outputs=outputs)
    add_rollout(sync, {"q": "2+4"}, _multi_turn(tokenizer, "What is 2+4?"), 0.0, outputs=outputs)  # a failed call
    imitation = "<tool_response>\n2 + 3 = 5"
    imitated = add_rollout(
        sync, {"q": "2+3"}, [(_ids(tokenizer, "user What is 2+3? assistant"), _ids(tokenizer, imitation))], 1.0,
        outputs=[[{"role": "assistant", "content": imitation}]],
    )  # fmt: skip
    model_dir = save_tiny_policy(tokenizer, tmp_path / "m")

    def train(store: InMemoryLightningStore, run: str, **options: Any) -> SupervisedFineTuning:
        algorithm = SupervisedFineTuning(SFTConfig(model=model_dir, aggregation="trajectory", **options))
        Trainer(algorithm, store=store, run_dir=tmp_path / run).train(num_iterations=1)
        return algorithm

    strict = train(store, "strict", require_tool_call=True)
    assert {s.rollout_id for s in strict.data} == {called.rollout_id}
    lines = [json.loads(x) for x in (tmp_path / "strict" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["data/kept_rollouts"] == 1 and lines[0]["data/tool_call_rollouts"] == 2
    # without it the imitation is trained on as well
    assert {s.rollout_id for s in train(store, "lenient").data} == {called.rollout_id, imitated.rollout_id}
    # successes, but none with a call: the error says so
    only_imitations = InMemoryLightningStore()
    add_rollout(SyncStore(only_imitations), {"q": "2+3"}, [([1, 2], [3, 4])], 1.0, outputs=[[{"role": "assistant",
                "content": imitation}]])  # fmt: skip
    with pytest.raises(NoTrainingData, match="none of them made a tool call \\(require_tool_call is set\\)"):
        train(only_imitations, "none", require_tool_call=True)


CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
    {"role": "assistant", "content": "The answer is 5."},
]  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def test_chat_dataset_is_retokenized_with_the_chat_template_and_says_so(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": CHAT, "tools": TOOLS}) for _ in range(3)) + "\n")
    model_dir = save_tiny_policy(tokenizer, tmp_path / "m")
    algorithm = SupervisedFineTuning(
        SFTConfig(model=model_dir, dataset=str(data), learning_rate=2e-3, mini_batch_size=None)
    )
    with caplog.at_level(logging.WARNING, logger="agent_lightning_rl.sft"):
        result = Trainer(algorithm, store=InMemoryLightningStore(), run_dir=tmp_path / "run").train(num_iterations=6)
    assert "RE-TOKENIZING 3 conversation(s) from the chat dataset" in caplog.text
    assert "RL never does this" in caplog.text
    nll = [m["train/nll"] for m in result.metrics]
    assert all(b < a for a, b in itertools.pairwise(nll)) and nll[-1] < 0.85 * nll[0], nll
    # two assistant turns per row; each prompt is what the policy server would feed the model (tools included)
    assert len(algorithm.data) == 6
    by_turn = sorted((s for s in algorithm.data if s.rollout_id == "dataset-0"), key=lambda s: s.turn_index)
    assert len(by_turn) == 2
    assert by_turn[0].prompt_token_ids == _ids(tokenizer, render_chat(tokenizer, CHAT[:2], TOOLS))
    assert by_turn[1].prompt_token_ids == _ids(tokenizer, render_chat(tokenizer, CHAT[:4], TOOLS))
    first = tokenizer.decode(by_turn[0].completion_token_ids)
    assert first.startswith("<tool_call>") and first.endswith(tokenizer.eos_token)
    assert tokenizer.decode(by_turn[1].completion_token_ids) == "The answer is 5." + tokenizer.eos_token
    assert all(s.metadata[RETOKENIZED_KEY] and all(s.loss_mask) for s in algorithm.data)


def test_a_dataset_without_assistant_turns_is_a_clear_error(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"messages": CHAT[:2]}) + "\n")
    algorithm = SupervisedFineTuning(SFTConfig(model=save_tiny_policy(tokenizer, tmp_path / "m"), dataset=str(data)))
    with pytest.raises(NoTrainingData, match="no assistant turns") as info:
        Trainer(algorithm, store=InMemoryLightningStore(), run_dir=tmp_path / "run").train(num_iterations=1)
    assert '{"role": "assistant"' in str(info.value)
    data.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ValueError, match='row 0: expected {"messages"'):
        Trainer(
            SupervisedFineTuning(SFTConfig(model=str(tmp_path / "m"), dataset=str(data))),
            store=InMemoryLightningStore(),
            run_dir=tmp_path / "run2",
        ).train(num_iterations=1)


def test_api_model_traces_without_token_ids_are_retokenized(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollout whose model calls were answered by an API model: messages recorded, no token ids."""
    store = InMemoryLightningStore()
    sync = SyncStore(store)
    attempted = sync.start_rollout(RolloutRequest(input={"q": "2+3"}))
    rid, aid, trace = attempted.rollout_id, attempted.attempt_id, new_trace_id()
    spans = []
    for seq, (inputs, output) in enumerate([(CHAT[:2], CHAT[2]), (CHAT[:4], CHAT[4])], start=1):
        spans.append(Span(
            rollout_id=rid, attempt_id=aid, sequence_id=seq, trace_id=trace, span_id=new_span_id(), name="chat gpt",
            kind="llm", start_time=float(seq), end_time=seq + 0.5,
            attributes={semconv.GEN_AI_INPUT_MESSAGES: inputs, semconv.GEN_AI_OUTPUT_MESSAGES: [output],
                        semconv.GEN_AI_TOOL_DEFINITIONS: TOOLS},
        ))  # fmt: skip
    spans.append(Span(
        rollout_id=rid, attempt_id=aid, sequence_id=9, trace_id=trace, span_id=new_span_id(), name="reward",
        kind="reward", start_time=9.0, end_time=9.0, attributes={semconv.REWARD_VALUE: 1.0},
    ))  # fmt: skip
    sync.add_spans(spans)
    sync.complete_attempt(rid, aid, "succeeded")
    algorithm = SupervisedFineTuning(SFTConfig(model=save_tiny_policy(tokenizer, tmp_path / "m")))
    with caplog.at_level(logging.WARNING, logger="agent_lightning_rl.sft"):
        Trainer(algorithm, store=store, run_dir=tmp_path / "run").train(num_iterations=1)
    assert "RE-TOKENIZING 1 conversation(s) from stored rollouts without token ids" in caplog.text
    # the two assistant turns the model produced, not the system prompt or the question
    assert [tokenizer.decode(s.completion_token_ids).startswith("<tool_call>") for s in algorithm.data] == [True, False]
    assert algorithm.data[1].prompt_token_ids == _ids(tokenizer, render_chat(tokenizer, CHAT[:4], TOOLS))


def test_lora_sft_saves_merged_weights_and_the_adapter(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    store, _ = _store_with_rollouts(tokenizer)
    config = SFTConfig(model=save_tiny_policy(tokenizer, tmp_path / "m"), learning_rate=1e-2, lora=LoraSettings(r=4))
    result = Trainer(SupervisedFineTuning(config), store=store, run_dir=tmp_path / "run").train(
        num_iterations=3, checkpoint_dir=tmp_path / "ckpt"
    )
    nll = [m["train/nll"] for m in result.metrics]
    assert nll[-1] < nll[0]
    assert result.checkpoint is not None and (result.checkpoint / "adapter").is_dir()
    AutoModelForCausalLM.from_pretrained(result.checkpoint)


def test_rejection_sampling_then_grpo_from_the_sft_checkpoint(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """The recipe: one store, SFT on the starting policy's own successful rollouts, then GRPO from its checkpoint."""
    model_dir = save_tiny_policy(tokenizer, tmp_path / "model")
    store = InMemoryLightningStore()
    agent = FirstTokenAgent(target_ids(tokenizer))
    tasks = [{"prompt": p} for p in PROMPTS]
    sft = SupervisedFineTuning(
        SFTConfig(model=model_dir, learning_rate=2e-2, group_size=8, max_new_tokens=2, temperature=1.0)
    )
    first = Trainer(sft, store=store, agent=agent, train_dataset=tasks, val_dataset=tasks, n_runners=4,
                    run_dir=tmp_path / "sft").train(num_iterations=4, checkpoint_dir=tmp_path / "ckpt-sft")  # fmt: skip
    collected = first.metrics[0]
    assert collected["collect/rollouts"] == 32 and 0 < collected["collect/kept_rollouts"] < 32
    kept = {s.rollout_id for s in sft.data}
    sync = SyncStore(store)
    for rollout_id in kept:  # only successes are trained: their first sampled token is a target
        spans = sync.query_spans(rollout_id, kinds=["llm"])
        assert any(s.attributes[semconv.COMPLETION_TOKEN_IDS][0] in agent.targets for s in spans)  # type: ignore[index]
    assert first.checkpoint is not None
    grpo = GroupRelativePolicyOptimization(
        GRPOConfig(model=str(first.checkpoint), learning_rate=2e-2, group_size=8, tasks_per_iteration=4,
                   max_new_tokens=2)
    )  # fmt: skip
    second = Trainer(grpo, store=store, agent=agent, train_dataset=tasks, n_runners=4, run_dir=tmp_path / "grpo").train(
        num_iterations=2, checkpoint_dir=tmp_path / "ckpt-grpo"
    )
    assert second.iterations == 2 and second.checkpoint is not None
    # GRPO started from the SFT weights: its first rollouts already succeed more often than the untrained policy's
    sft_rate = collected["collect/reward_mean"]
    assert second.metrics[0]["train/reward_mean"] > sft_rate
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(second.checkpoint)
    assert loaded.config.hidden_size == 64


def test_sft_is_found_through_the_plugin_like_agl_train_finds_it() -> None:
    from agent_lightning.algorithms import SFT, algorithm_entries, get_algorithm

    algorithm = get_algorithm(
        "sft", min_reward=0.5, best_of_group=True
    )  # what `agl train --algorithm sft --set …` does
    assert isinstance(algorithm, SupervisedFineTuning) and SFT is SupervisedFineTuning
    assert algorithm.config.min_reward == 0.5 and algorithm.threshold == 0.5
    assert algorithm_entries()["sft"].package == "agent-lightning-rl"
