"""Demonstration search: worked examples from the agent's own successful traces (DSPy's bootstrapped few-shot with
random search), with no optimizer model.

1. Bootstrap: run the starting candidate on training tasks; each successful rollout (reward at or above
   ``success_threshold``) gives a worked example, its conversation read from the model-call spans: the question,
   the tool calls and results, the final answer.
2. Score the starting candidate on every validation task.
3. For each candidate subset of ``max_demos`` examples (the first ones, then random draws): publish it as a resources
   version, score it on a random minibatch of validation tasks, and only if it beats the best candidate on those same
   tasks, score it on the rest. The best mean validation score wins and is published last.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

from agent_lightning.algorithm import TrainSession
from agent_lightning.errors import NoTrainingData

from agent_lightning_apo.config import APOConfig, DemoSearchConfig
from agent_lightning_apo.search import BudgetExhausted, Candidate, PromptSearch
from agent_lightning_apo.traces import Message, task_conversation


class DemonstrationSearch(PromptSearch):
    """``apo``: bootstrapped worked examples, random subsets, minibatch then full validation (module docstring)."""

    name = "apo"
    config_class: ClassVar[type[APOConfig]] = DemoSearchConfig
    config: DemoSearchConfig

    def __init__(self, config: DemoSearchConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.demos: list[list[Message]] = []

    def search(self, session: TrainSession, seed: Candidate) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        val = session.val_dataset
        self.demos = self.bootstrap(session, seed)
        self.evaluate(session, seed, val, range(len(val)), mode="val", phase="full")
        self.best = seed
        score = seed.mean()
        self.log({"val/reward_mean": score, "apo/candidate_val": score, "apo/best_val": score}, session)
        k = min(cfg.max_demos, len(self.demos))
        tried: set[tuple[int, ...]] = set()
        wanted = cfg.num_candidates or session.num_iterations
        wanted = min(wanted, math.comb(len(self.demos), k))  # distinct subsets only
        attempts = 0
        while len(self.candidates) - 1 < wanted and attempts < wanted * 20:
            attempts += 1
            chosen = list(range(k)) if not tried else sorted(rng.sample(range(len(self.demos)), k))
            if tuple(chosen) in tried:
                continue
            tried.add(tuple(chosen))
            examples = [{"messages": self.demos[i]} for i in chosen]
            if cfg.keep_seed_examples and seed.examples:
                examples = [*seed.examples, *examples]
            self._try(session, seed, examples, rng, note=f"worked examples from bootstrap traces {chosen}")

    def _try(
        self, session: TrainSession, seed: Candidate, examples: list[dict[str, Any]], rng: random.Random, note: str
    ) -> None:
        cfg = self.config
        val = session.val_dataset
        best = self.best or seed
        size = min(cfg.minibatch_size, len(val))
        if size > self.remaining():
            raise BudgetExhausted(f"rollout budget spent ({self.spent} of {cfg.rollout_budget})")
        candidate = self.publish(session, seed.prompt, examples, parent=seed.candidate_id, note=note)
        minibatch = sorted(rng.sample(range(len(val)), size))
        self.evaluate(session, candidate, val, minibatch, mode="val", phase="minibatch")
        metrics = {"apo/candidate_minibatch": candidate.mean(minibatch), "apo/best_minibatch": best.mean(minibatch)}
        if candidate.mean(minibatch) > best.mean(minibatch) or size == len(val):
            rest = [i for i in range(len(val)) if i not in candidate.scores]
            self.evaluate(session, candidate, val, rest, mode="val", phase="full")
            metrics["apo/candidate_val"] = candidate.mean()
            if candidate.mean() > best.mean():
                self.best = candidate
        metrics["apo/best_val"] = (self.best or seed).mean()
        metrics["val/reward_mean"] = metrics["apo/best_val"]
        self.log(metrics, session)

    def bootstrap(self, session: TrainSession, seed: Candidate) -> list[list[Message]]:
        """Worked examples from the starting candidate's successful rollouts on training tasks."""
        cfg = self.config
        train = session.train_dataset
        if not train:
            raise NoTrainingData("demonstration search bootstraps worked examples from train_dataset=…; pass one")
        # leave enough budget to score the starting candidate and at least one candidate's minibatch
        reserve = len(session.val_dataset) + min(cfg.minibatch_size, len(session.val_dataset))
        count = min(cfg.bootstrap_tasks or len(train), len(train), self.remaining() - reserve)
        if count < 1:
            raise BudgetExhausted(f"rollout_budget={cfg.rollout_budget} leaves nothing to bootstrap from")
        outcomes = self.evaluate(session, seed, train, range(count), mode="train", phase="bootstrap", traces=True)
        demos: list[list[Message]] = []
        questions: set[str] = set()
        successes = 0
        for outcome in outcomes:
            if outcome.reward < cfg.success_threshold:
                continue
            successes += 1
            conversation = task_conversation(outcome.spans)
            if conversation is None or conversation[-1]["role"] != "assistant":
                continue
            if cfg.require_tool_call and not any(m.get("tool_calls") for m in conversation):
                continue
            if conversation[0]["content"] in questions:
                continue
            questions.add(conversation[0]["content"])
            demos.append(conversation)
        self.log({"bootstrap/rollouts": float(count), "bootstrap/successes": float(successes),
                  "bootstrap/demos": float(len(demos))}, session)  # fmt: skip
        if not demos:
            why = (
                f"none of {count} bootstrap rollouts reached reward >= success_threshold={cfg.success_threshold}"
                if successes == 0
                else f"{successes} rollouts succeeded, but none left a usable conversation in its model-call spans "
                "(route the agent's calls through ctx.llm().endpoint, the recording proxy"
                + (", and call a tool: require_tool_call is set)" if cfg.require_tool_call else ")")
            )
            raise NoTrainingData(
                f"demonstration search has no successful rollout to bootstrap worked examples from: {why}. Fixes: "
                "lower success_threshold, add or use more training tasks (bootstrap_tasks, rollout_budget), sample "
                "with temperature > 0 for more varied tries, or seed a few hand-written examples (seed_examples, or "
                f"the {cfg.examples_resource!r} resource) so the model succeeds sometimes"
            )
        return demos
