"""Reflective prompt evolution (GEPA): an optimizer model reads traces and rewards and rewrites the prompt.

Per step: draw a parent from the Pareto front (weighted by the validation tasks it is best on), run it on a
minibatch of training tasks, show the optimizer model its failed and successful conversations with their rewards,
take its edited prompt as a child (a new resources version), run the child on the same minibatch, and only if it
scores higher there, score it on every validation task and add it to the front. The rollout budget counts every
rollout. The candidate with the best mean validation score is published last.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Sequence
from typing import Any, ClassVar

from agent_lightning.algorithm import TrainSession
from agent_lightning.errors import NoTrainingData

from agent_lightning_apo.config import APOConfig, ReflectConfig
from agent_lightning_apo.optimizer import OptimizerModel, extract_prompt
from agent_lightning_apo.pareto import ParetoFront
from agent_lightning_apo.search import BudgetExhausted, Candidate, Outcome, PromptSearch
from agent_lightning_apo.traces import render, task_conversation

logger = logging.getLogger(__name__)

REFLECTION = """I gave an assistant the following instructions for a task:
```
{prompt}
```
Below are some of its runs: the task, its conversation (tool calls included) and the score it got (higher is better; \
{threshold} or more is a success).

{runs}

Write improved instructions for the assistant. Study the failed runs: what went wrong, and what would have avoided \
it? Keep what made the successful runs work, and any domain facts or output format they rely on. Keep every \
{{placeholder}} of the original instructions unchanged. Reply with the new instructions only, inside ``` blocks."""


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


class ReflectiveEvolution(PromptSearch):
    """``gepa`` / ``apo-reflect``: optimizer-model edits, Pareto front, minibatch gating (module docstring)."""

    name = "gepa"
    config_class: ClassVar[type[APOConfig]] = ReflectConfig
    config: ReflectConfig

    def __init__(self, config: ReflectConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.front: ParetoFront | None = None
        self.optimizer: OptimizerModel | None = None
        self.rejected = 0

    def search(self, session: TrainSession, seed: Candidate) -> None:
        cfg = self.config
        if seed.prompt is None:
            raise ValueError(
                "reflective evolution edits a prompt, and none is given: set seed_prompt (the agent's current system "
                f"prompt) or publish it as the {cfg.prompt_resource!r} PromptTemplate resource"
            )
        if not session.train_dataset:
            raise NoTrainingData("reflective evolution reflects on runs of train_dataset=…; pass one")
        self.optimizer = OptimizerModel(
            cfg.optimizer_base_url,
            cfg.optimizer_model,
            api_key_env=cfg.optimizer_api_key_env,
            temperature=cfg.optimizer_temperature,
            max_tokens=cfg.optimizer_max_tokens,
            timeout=cfg.optimizer_timeout,
        )
        try:
            self.optimizer.check()
            self._evolve(session, seed)
        finally:
            self.optimizer.close()

    def _evolve(self, session: TrainSession, seed: Candidate) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        val, train = session.val_dataset, session.train_dataset
        front = self.front = ParetoFront(len(val))
        self.evaluate(session, seed, val, range(len(val)), mode="val", phase="full")
        front.add(seed.candidate_id, [seed.scores[i] for i in range(len(val))])
        self.best = seed
        self.log({"val/reward_mean": seed.mean(), "apo/best_val": seed.mean(), "apo/front_size": 1.0}, session)
        steps = cfg.max_proposals or session.num_iterations
        size = min(cfg.minibatch_size, len(train))
        for _ in range(steps):
            if 2 * size > self.remaining():
                raise BudgetExhausted(f"rollout budget spent ({self.spent} of {cfg.rollout_budget})")
            parent = self.candidates[front.select(rng)]
            minibatch = sorted(rng.sample(range(len(train)), size))
            parent_runs = self.evaluate(session, parent, train, minibatch, mode="train", phase="reflect", traces=True)
            parent_score = sum(o.reward for o in parent_runs)
            metrics: dict[str, float] = {"apo/parent_minibatch": parent_score / size}
            if all(o.reward >= cfg.success_threshold for o in parent_runs):
                metrics["apo/skipped_perfect"] = 1.0  # nothing to learn from this minibatch
                self.log(metrics, session)
                continue
            assert parent.prompt is not None
            proposal = self.propose(parent.prompt, train, parent_runs)
            if proposal is None:
                self.rejected += 1
                metrics["apo/rejected"] = float(self.rejected)
                self.log(metrics, session)
                continue
            child = self.publish(
                session, proposal, parent.examples, parent=parent.candidate_id, note="optimizer model edit"
            )
            child_runs = self.evaluate(session, child, train, minibatch, mode="train", phase="minibatch")
            child_score = sum(o.reward for o in child_runs)
            metrics["apo/candidate_minibatch"] = child_score / size
            if child_score <= parent_score:
                self.rejected += 1
                metrics["apo/rejected"] = float(self.rejected)
                self.log(metrics, session)
                continue
            self.evaluate(session, child, val, range(len(val)), mode="val", phase="full")
            front.add(child.candidate_id, [child.scores[i] for i in range(len(val))])
            if child.mean() > self.best.mean():
                self.best = child
            metrics.update(
                {
                    "apo/candidate_val": child.mean(),
                    "apo/best_val": self.best.mean(),
                    "val/reward_mean": self.best.mean(),
                    "apo/front_size": float(len(front.front())),
                }
            )
            self.log(metrics, session)

    def propose(self, prompt: str, tasks: Sequence[Any], runs: Sequence[Outcome]) -> str | None:
        """The optimizer model's edit of ``prompt`` after reading ``runs``; ``None`` when unusable."""
        assert self.optimizer is not None
        cfg = self.config
        failed = [o for o in runs if o.reward < cfg.success_threshold]
        succeeded = [o for o in runs if o.reward >= cfg.success_threshold]
        shown = (failed + succeeded)[: cfg.max_traces]
        blocks = []
        for number, outcome in enumerate(shown, 1):
            conversation = task_conversation(outcome.spans)
            text = render(conversation) if conversation else "(no model call was recorded)"
            blocks.append(f"### Run {number}\nTask: {tasks[outcome.task_index]}\n{text}\nScore: {outcome.reward:g}")
        request = REFLECTION.format(prompt=prompt, threshold=cfg.success_threshold, runs="\n\n".join(blocks))
        reply = self.optimizer.complete([{"role": "user", "content": request}])
        proposal = extract_prompt(reply)
        if not proposal or proposal == prompt:
            logger.info("the optimizer model proposed no change")
            return None
        try:
            if _fields(proposal) != _fields(prompt):
                logger.warning("proposal dropped: its placeholders differ from %s", sorted(_fields(prompt)))
                return None
        except ValueError as exc:
            logger.warning("proposal dropped: not a valid prompt template (%s)", exc)
            return None
        return proposal
