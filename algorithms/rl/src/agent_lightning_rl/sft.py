"""Supervised fine-tuning (SFT) and rejection-sampling fine-tuning, with the RL learner's plumbing.

Where the samples come from, in order of preference:

* **Rollouts with token ids** (the usual case): with an agent, the starting policy is served behind the recording
  proxy and runs ``group_size`` rollouts of each training task (``collect_tasks`` of them, at ``temperature``);
  without one, the finished train rollouts already in the store are used. Rollouts whose reward is at least
  ``min_reward`` (default ``success_threshold``) are kept, with ``require_tool_call`` only those in which the model
  made a structured tool call, and with ``best_of_group`` only the best of each group among those. Their samples
  are the episodes RL builds (:func:`agent_lightning.trajectory.build_episode`, the same ``aggregation`` and masks:
  tool output spliced into a merged sequence is never trained), and the loss is the mean negative log-likelihood of
  the trainable tokens.
* **Text without token ids**, re-tokenized with the policy's chat template (the policy server's own rendering,
  tools included): a chat dataset (``dataset=``: JSONL/JSON rows ``{"messages": [...], "tools": [...]}`` or
  ``hf:NAME``), or kept rollouts whose model calls carry messages but no token ids (an API model). Every assistant
  turn the model produced is trained; the prompt, the user and tool turns, and worked examples already in the
  first call's prompt are not. This path logs a loud warning: RL never re-tokenizes.

One iteration is one pass (epoch) over the kept samples, shuffled, an optimizer step per ``mini_batch_size``
samples. Checkpoints, LoRA, metrics sinks, resuming and data-parallel ranks are those of PPO/GRPO. A checkpoint
folder is a starting ``model`` for GRPO (see the package README for the SFT-then-GRPO recipe).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from agent_lightning import semconv
from agent_lightning.algorithm import TrainResult, TrainSession
from agent_lightning.errors import NoTrainingData
from agent_lightning.trajectory import group_key
from agent_lightning.types import Episode, Rollout, Sample, Span

from .advantages import select_samples
from .base import RLAlgorithm, episode_metrics
from .config import RLConfig, SFTConfig
from .distributed import shard_indices
from .learner import PolicyLearner, Scored, merged_weights

logger = logging.getLogger(__name__)

RETOKENIZED_KEY = "sft.retokenized"
"""``Sample.metadata`` key marking a sample whose ids were tokenized from text here, not captured."""


def _retokenize_warning(count: int, source: str) -> str:
    bar = "!" * 100
    return (
        f"\n{bar}\nRE-TOKENIZING {count} conversation(s) from {source}: they carry no token ids, so SFT renders them "
        "with the policy's chat template\nand tokenizes the text again. RL never does this (it trains on the ids the "
        "engine sampled); these ids can differ from what\nthe policy would sample for the same text. Route the model "
        f"calls through the recording proxy to train on captured ids.\n{bar}"
    )


# --------------------------------------------------------------------------- chat text -> samples
def _messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI-format messages out of recorded or dataset messages (role, content, tool_calls, tool_call_id)."""
    out: list[dict[str, Any]] = []
    for message in raw if isinstance(raw, list) else []:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        clean: dict[str, Any] = {"role": message["role"], "content": content if isinstance(content, str) else ""}
        calls: list[dict[str, Any]] = []
        for call in message.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            nested = call.get("function")
            function: dict[str, Any] = nested if isinstance(nested, dict) else call
            arguments = function.get("arguments", function.get("args", {}))
            if not isinstance(function.get("name"), str):
                continue
            calls.append(
                {
                    "id": str(call.get("id") or f"call_{len(calls)}"),
                    "type": "function",
                    "function": {
                        "name": function["name"],
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
        if calls:
            clean["tool_calls"] = calls
        if isinstance(message.get("tool_call_id"), str):
            clean["tool_call_id"] = message["tool_call_id"]
        out.append(clean)
    return out


def chat_samples(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    first_trained: int = 0,
    rollout_id: str = "dataset",
    reward: float = 1.0,
    max_prompt_tokens: int | None = None,
) -> list[Sample]:
    """One sample per assistant turn at index ``>= first_trained``, tokenized as the policy server would.

    The prompt is the conversation before the turn rendered with the generation prompt (what the server feeds the
    model); the completion is the rest of the rendered conversation up to and including the end-of-turn token.
    """
    from .policy.chat import ChatFormatError, render_chat

    clean = _messages(list(messages))
    eos = tokenizer.eos_token
    samples: list[Sample] = []
    for index, message in enumerate(clean):
        if message["role"] != "assistant" or index < first_trained or index == 0:
            continue
        prompt_text = render_chat(tokenizer, clean[:index], tools)
        full_text = render_chat(tokenizer, clean[: index + 1], tools, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise ChatFormatError(
                "the chat template renders a finished assistant turn differently from the prompt that precedes it, "
                "so its completion cannot be cut out of the rendered text; train from rollouts with captured ids"
            )
        completion_text = full_text[len(prompt_text) :]
        if eos and eos in completion_text:
            completion_text = completion_text[: completion_text.index(eos) + len(eos)]
        prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        completion_ids = list(tokenizer(completion_text, add_special_tokens=False)["input_ids"])
        if not completion_ids or (max_prompt_tokens is not None and len(prompt_ids) > max_prompt_tokens):
            continue
        samples.append(
            Sample(
                rollout_id=rollout_id,
                attempt_id="",
                span_ids=[],
                prompt_token_ids=prompt_ids,
                completion_token_ids=completion_ids,
                loss_mask=[1] * len(completion_ids),
                reward=reward,
                group_id=rollout_id,
                turn_index=len(samples),
                metadata={RETOKENIZED_KEY: True},
            )
        )
    return samples


def made_tool_call(spans: Sequence[Span]) -> bool:
    """Whether a recorded model call of the rollout answered with a structured tool call."""
    for span in spans:
        if span.kind != "llm":
            continue
        if any(m.get("tool_calls") for m in _messages(span.attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES))):
            return True
    return False


def span_conversation(spans: Sequence[Span]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, int] | None:
    """The rollout's conversation from its model calls' recorded messages: ``(messages, tools, first_trained)``,
    where messages before ``first_trained`` were the first call's prompt (system prompt, worked examples, question)."""
    calls = []
    for span in sorted(spans, key=lambda s: (s.start_time, s.sequence_id)):
        if span.kind != "llm":
            continue
        inputs = _messages(span.attributes.get(semconv.GEN_AI_INPUT_MESSAGES))
        if inputs:
            calls.append((span, inputs, _messages(span.attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES))))
    if not calls:
        return None
    first = min(calls, key=lambda c: len(c[1]))
    last = max(calls, key=lambda c: len(c[1]))
    conversation = [*last[1], *last[2][:1]]
    tools = last[0].attributes.get(semconv.GEN_AI_TOOL_DEFINITIONS)
    parsed_tools = tools if isinstance(tools, list) else None
    if isinstance(tools, str):
        try:
            parsed_tools = json.loads(tools)
        except json.JSONDecodeError:
            parsed_tools = None
    return conversation, parsed_tools, len(first[1])


# --------------------------------------------------------------------------- the algorithm
class SupervisedFineTuning(RLAlgorithm):
    """``sft``: rejection sampling (keep good rollouts) or a chat dataset, then masked NLL (module docstring).

    >>> SupervisedFineTuning(config=SFTConfig(learning_rate=1e-5, group_size=4, min_reward=1.0))
    """

    name = "sft"
    config_class: ClassVar[type[RLConfig]] = SFTConfig
    config: SFTConfig
    data: list[Sample]
    """The samples trained on (set once the data is loaded)."""

    def prepare(
        self, learner: PolicyLearner, samples: Sequence[Sample], sequence_advantages: list[float] | None
    ) -> tuple[list[torch.Tensor], Scored | None, list[torch.Tensor] | None]:
        raise NotImplementedError("SFT trains with PolicyLearner.nll_update, not with advantages")

    # ------------------------------------------------------------------ data
    @property
    def threshold(self) -> float:
        cfg = self.config
        return cfg.min_reward if cfg.min_reward is not None else cfg.success_threshold

    def _keep(
        self, rollouts: Sequence[Rollout], episodes: Sequence[Episode], tool_calls: Sequence[bool]
    ) -> list[tuple[Rollout, Episode]]:
        """The rollouts SFT trains on: reward >= ``threshold``, a tool call among their model calls with
        ``require_tool_call`` (``tool_calls[i]``: rollout ``i`` made one), and the best of their group with
        ``best_of_group``."""
        pairs = [(r, e) for r, e in zip(rollouts, episodes, strict=True) if e.reward is not None]
        kept = [(r, e) for r, e in pairs if e.reward is not None and e.reward >= self.threshold]
        passed = len(kept)
        if self.config.require_tool_call:
            called = {r.rollout_id for r, made in zip(rollouts, tool_calls, strict=True) if made}
            kept = [(r, e) for r, e in kept if r.rollout_id in called]
        if self.config.best_of_group:
            best: dict[str, tuple[Rollout, Episode]] = {}
            for rollout, episode in kept:
                key = group_key(rollout)
                if key not in best or (episode.reward or 0.0) > (best[key][1].reward or 0.0):
                    best[key] = (rollout, episode)
            kept = list(best.values())
        if not kept and passed:
            raise NoTrainingData(
                f"SFT found no rollout to train on: {passed} of the {len(rollouts)} rollouts reached reward >= "
                f"{self.threshold:g}, but none of them made a tool call (require_tool_call is set). Fixes: sample "
                "more tries per task (group_size, collect_tasks) or with more variety (temperature), start from a "
                "prompt that shows the tool calls (worked examples), or unset require_tool_call"
            )
        if not kept:
            rewards = [e.reward for _, e in pairs if e.reward is not None]
            seen = (
                f"their rewards range from {min(rewards):.3g} to {max(rewards):.3g}"
                if rewards
                else "none of them emitted a reward"
            )
            raise NoTrainingData(
                f"SFT found no successful rollout: it keeps rollouts with reward >= {self.threshold:g}, and none of "
                f"the {len(rollouts)} rollouts reached it ({seen}). Fixes: lower min_reward (--set min_reward=0.5), "
                "sample more tries per task (group_size, collect_tasks) or with more variety (temperature), start "
                "from a model or prompt that succeeds sometimes, or train from a chat dataset (--set "
                "dataset=chat.jsonl)"
            )
        return kept

    def _rollout_samples(self, session: TrainSession, rollouts: Sequence[Rollout], prefix: str) -> tuple[
        list[Sample], dict[str, float]
    ]:  # fmt: skip
        """Samples of the kept rollouts: their captured ids, or (when a rollout has none) its re-tokenized text."""
        cfg = self.config
        spans_of: dict[str, list[Span]] = {}
        episodes = []
        for rollout in rollouts:
            spans = session.sync.query_spans(rollout.rollout_id)
            spans_of[rollout.rollout_id] = spans
            episodes.append(self._episode(rollout, spans))
        metrics = episode_metrics(episodes, prefix, cfg.success_threshold)
        tool_calls = [made_tool_call(spans_of[r.rollout_id]) for r in rollouts]
        kept = self._keep(rollouts, episodes, tool_calls)
        samples: list[Sample] = []
        retokenized = 0
        for rollout, episode in kept:
            if episode.samples:
                samples += [s.model_copy(update={"reward": 1.0}) for s in episode.samples]
                continue
            found = span_conversation(spans_of[rollout.rollout_id])
            if found is None:
                continue
            messages, tools, first = found
            more = chat_samples(
                self.tokenizer,
                messages,
                tools,
                first_trained=first,
                rollout_id=rollout.rollout_id,
                max_prompt_tokens=cfg.max_prompt_tokens,
            )
            retokenized += bool(more)
            samples += more
        if retokenized:
            logger.warning(_retokenize_warning(retokenized, "stored rollouts without token ids (an API model?)"))
        selected = select_samples(samples, cfg.optimize)
        if not selected:
            problems = sorted({w for _, e in kept for w in e.warnings})
            raise NoTrainingData(
                f"the {len(kept)} kept rollout(s) gave no trainable assistant turn"
                + (f" for optimize={cfg.optimize}" if cfg.optimize is not None and samples else "")
                + (f": {'; '.join(problems)}" if problems else "")
            )
        metrics[f"{prefix}/kept_rollouts"] = float(len(kept))
        metrics[f"{prefix}/tool_call_rollouts"] = float(sum(tool_calls))
        metrics["data/retokenized_rollouts"] = float(retokenized)
        return selected, metrics

    def _dataset_samples(self) -> tuple[list[Sample], dict[str, float]]:
        """Samples of the chat dataset ``config.dataset``, re-tokenized with the policy's chat template."""
        from agent_lightning.datasets import load_dataset

        cfg = self.config
        assert cfg.dataset is not None
        rows = load_dataset(cfg.dataset)
        samples: list[Sample] = []
        used = 0
        for number, row in enumerate(rows):
            messages = row if isinstance(row, list) else row.get("messages") if isinstance(row, dict) else None
            tools = row.get("tools") if isinstance(row, dict) and isinstance(row.get("tools"), list) else None
            if not isinstance(messages, list):
                raise ValueError(
                    f'SFT dataset {cfg.dataset}, row {number}: expected {{"messages": [...]}} (OpenAI chat '
                    f"messages) or a list of messages, got {type(row).__name__}"
                )
            more = chat_samples(
                self.tokenizer,
                messages,
                tools,
                rollout_id=f"dataset-{number}",
                max_prompt_tokens=cfg.max_prompt_tokens,
            )
            used += bool(more)
            samples += more
        if not samples:
            raise NoTrainingData(
                f"SFT dataset {cfg.dataset} has no assistant turns to train on ({len(rows)} rows): each row needs "
                '{"messages": [...]} with at least one {"role": "assistant", "content": ...} message after the '
                "prompt (the assistant turns are what SFT trains; system, user and tool turns are context)"
            )
        logger.warning(_retokenize_warning(used, f"the chat dataset {cfg.dataset}"))
        return samples, {"data/rows": float(len(rows)), "data/retokenized_rollouts": float(used)}

    def _stored_rollouts(self, session: TrainSession) -> list[Rollout]:
        advice = (
            ": collect some first, pass agent=… to sample them from the policy (rejection sampling), "
            "or train from a chat dataset (dataset=…)"
        )
        return self._finished_train_rollouts(session, "SFT", advice)

    # ------------------------------------------------------------------ the runs
    def _run_offline(self, session: TrainSession) -> TrainResult:
        def data() -> tuple[list[Sample], dict[str, float]]:
            if self.config.dataset is not None:
                return self._dataset_samples()
            return self._rollout_samples(session, self._stored_rollouts(session), "data")

        return self._fit(session, data, server=None, proxy=None)

    def _run_online(self, session: TrainSession, served: torch.nn.Module | None) -> TrainResult:
        cfg = self.config
        server: Any = None
        proxy: Any = None

        def data() -> tuple[list[Sample], dict[str, float]]:
            nonlocal server, proxy
            if cfg.dataset is not None:
                return self._dataset_samples()
            if not session.train_dataset:
                raise NoTrainingData("rejection sampling runs the agent on training tasks: pass train_dataset=…")
            from agent_lightning_proxy import LLMProxy

            from .policy import PolicyServer

            assert served is not None and self.learner is not None
            served.eval()
            server = PolicyServer(
                served,
                self.tokenizer,
                model_name=cfg.model,
                max_batch_size=cfg.max_batch_size,
                default_max_tokens=cfg.max_new_tokens,
            ).start()
            proxy = LLMProxy(session.store, upstream=server.url).start()
            snapshot = self._publish(session, proxy.url, temperature=cfg.temperature)
            with merged_weights(self.learner.model) as state:
                server.update_weights(state, version=snapshot.resources_id)
            tasks = list(session.train_dataset)
            random.Random(cfg.seed).shuffle(tasks)
            tasks = tasks[: cfg.collect_tasks or len(tasks)]
            started = time.perf_counter()
            rollouts = session.run_rollouts(
                tasks, group_size=cfg.group_size, resources_id=snapshot.resources_id, timeout=cfg.rollout_timeout
            )
            proxy.flush()
            samples, metrics = self._rollout_samples(session, rollouts, "collect")
            metrics["time/collect_s"] = time.perf_counter() - started
            metrics["collect/failed_rollouts"] = float(len(tasks) * cfg.group_size - len(rollouts))
            return samples, metrics

        try:
            return self._fit(session, data, server=lambda: server, proxy=lambda: proxy)
        finally:
            if proxy is not None:
                proxy.stop()
            if server is not None:
                server.stop()

    def _fit(self, session: TrainSession, data: Any, *, server: Any, proxy: Any) -> TrainResult:
        """Load the data on rank 0, share it, and train ``num_iterations`` epochs on every rank."""
        shared, metrics = self._load_on_rank0(data, "the SFT data")
        self.data = shared
        metrics["sft/samples"] = float(len(shared))
        metrics["sft/trainable_tokens"] = float(sum(s.num_trainable_tokens for s in shared))

        def step() -> dict[str, float]:
            nonlocal metrics
            order = list(range(len(shared)))
            random.Random(self.config.seed + self.iteration).shuffle(order)
            update = self._nll_on([shared[i] for i in order])
            self.iteration += 1
            if self._dist.is_main:
                update.update(metrics)
                metrics = {}
                running = server() if server is not None else None
                if running is not None and session.eval_interval and self.iteration % session.eval_interval == 0:
                    update.update(self._evaluate_now(session, running, proxy()))
            return update

        result = self._update_loop(session, step, ("nll", "train/nll"))
        return dataclasses.replace(result, interrupted=result.interrupted or session.stopping)

    def _evaluate_now(self, session: TrainSession, server: Any, proxy: Any) -> dict[str, float]:
        """Serve the current weights and run the validation tasks (greedy)."""
        assert self.learner is not None
        snapshot = self._publish(session, proxy.url, temperature=self.config.temperature)
        with merged_weights(self.learner.model) as state:
            server.update_weights(state, version=snapshot.resources_id)
        return self._evaluate(session, proxy.url)

    def _nll_on(self, samples: list[Sample]) -> dict[str, float]:
        """This rank's shard of one epoch (equal shards: padding copies carry no loss)."""
        assert self.learner is not None
        local, padding = shard_indices(len(samples), self._dist)
        mine = [samples[i] for i in local]
        for j in range(len(mine) - padding, len(mine)):
            mine[j] = mine[j].model_copy(update={"loss_mask": [0] * len(mine[j].loss_mask)})
        metrics = self.learner.nll_update(mine)
        metrics["train/samples"] = float(len(samples))
        metrics["train/trainable_tokens"] = float(sum(s.num_trainable_tokens for s in samples))
        return metrics


SFT = SupervisedFineTuning
