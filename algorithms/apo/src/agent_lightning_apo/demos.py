"""Demonstration search: worked examples from the agent's own successful traces and from labeled training tasks
(DSPy's bootstrapped few-shot with random search), with no optimizer model.

1. Labeled examples (``max_labeled_demos > 0``): the agent's ``worked_example(task)`` renders training tasks from their
   labels as worked examples. ``max_labeled_demos`` of them, with the starting prompt, make the teacher: the
   labeled-only candidate, which bootstraps.
2. Bootstrap: run the teacher (without labeled examples: the starting candidate) on training tasks it does not show;
   each successful rollout (reward at or above ``success_threshold``) gives a worked example, its conversation read
   from the model-call spans: the question, the tool calls and results, the final answer.
3. Score the starting candidate on every validation task.
4. Candidates, in DSPy's order: labeled-only (the teacher), bootstrapped (the first ``max_demos`` bootstrapped
   examples), then random draws of 1 to ``max_demos`` bootstrapped examples; each is filled up with labeled examples
   to ``max_labeled_demos`` examples in all. Each is published as a resources version, scored on a random minibatch
   of validation tasks, and only if it beats the best candidate on those same tasks, scored on the rest. The best
   mean validation score wins and is published last.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, ClassVar

from agent_lightning.algorithm import TrainSession
from agent_lightning.errors import NoTrainingData

from agent_lightning_apo.config import APOConfig, DemoSearchConfig
from agent_lightning_apo.search import BudgetExhausted, Candidate, PromptSearch
from agent_lightning_apo.traces import Message, normalize, task_conversation

LABELED_EXAMPLE_METHOD = "worked_example"
"""The agent's optional method that renders a training task as a worked example from its label:
``agent.worked_example(task) -> {"messages": [OpenAI chat messages]} | None`` (``None``: no usable label)."""

Draw = tuple[tuple[int, ...], tuple[int, ...]]
"""A candidate's examples: positions in :attr:`DemonstrationSearch.demos` and in :attr:`DemonstrationSearch.labeled`."""


class DemonstrationSearch(PromptSearch):
    """``apo``: bootstrapped and labeled worked examples, random subsets, minibatch then full validation (module
    docstring)."""

    name = "apo"
    config_class: ClassVar[type[APOConfig]] = DemoSearchConfig
    config: DemoSearchConfig

    def __init__(self, config: DemoSearchConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.demos: list[list[Message]] = []
        """Bootstrapped worked examples: the conversations of successful bootstrap rollouts."""
        self.labeled: list[dict[str, Any]] = []
        """Labeled worked examples, one per training task the agent rendered (distinct questions)."""

    def search(self, session: TrainSession, seed: Candidate) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        val = session.val_dataset
        labeled = self.labeled_examples(session)
        self.labeled = [example for _, example in labeled]
        teacher: Candidate | None = None
        teacher_draw: Draw = ((), ())
        if labeled:
            shown = tuple(sorted(rng.sample(range(len(labeled)), min(cfg.max_labeled_demos, len(labeled)))))
            teacher_draw = ((), shown)
            teacher = self.publish(
                session, seed.prompt, self._examples(seed, teacher_draw), parent=seed.candidate_id,
                note=f"labeled-only: labeled worked examples {list(shown)} (the bootstrap teacher)",
            )  # fmt: skip
            self.demos = self.bootstrap(session, teacher, skip={labeled[i][0] for i in shown})
        else:
            self.demos = self.bootstrap(session, seed)
        self.evaluate(session, seed, val, range(len(val)), mode="val", phase="full")
        self.best = seed
        score = seed.mean()
        self.log({"val/reward_mean": score, "apo/candidate_val": score, "apo/best_val": score}, session)
        wanted = cfg.num_candidates or session.num_iterations
        proposed = 0
        if teacher is not None:
            self._try(session, seed, teacher, rng)
            proposed += 1
        tried = {teacher_draw}
        for kind, draw in self._draws(rng, attempts=wanted * 20):
            if proposed >= wanted:
                break
            if draw in tried:
                continue
            tried.add(draw)
            if min(cfg.minibatch_size, len(val)) > self.remaining():
                raise BudgetExhausted(f"rollout budget spent ({self.spent} of {cfg.rollout_budget})")
            boot, shown = draw
            candidate = self.publish(
                session, seed.prompt, self._examples(seed, draw), parent=seed.candidate_id,
                note=f"{kind}: bootstrapped worked examples {list(boot)}, labeled {list(shown)}",
            )  # fmt: skip
            self._try(session, seed, candidate, rng)
            proposed += 1

    def _draws(self, rng: random.Random, attempts: int) -> Iterator[tuple[str, Draw]]:
        """Candidate example sets: the first bootstrapped examples, then random draws (repeats are the caller's to
        skip); each filled up with labeled examples to ``max_labeled_demos`` in all."""
        k = min(self.config.max_demos, len(self.demos))
        if k:
            yield "bootstrapped", (tuple(range(k)), self._fill(tuple(range(k)), rng))
        for _ in range(attempts):
            boot = tuple(sorted(rng.sample(range(len(self.demos)), rng.randint(1, k)))) if k else ()
            yield "random", (boot, self._fill(boot, rng))

    def _fill(self, boot: tuple[int, ...], rng: random.Random) -> tuple[int, ...]:
        """Labeled examples completing bootstrapped examples ``boot`` to ``max_labeled_demos``, none asking the same
        question."""
        wanted = self.config.max_labeled_demos - len(boot)
        if wanted <= 0 or not self.labeled:
            return ()
        asked = {self.demos[i][0]["content"] for i in boot}
        free = [j for j, example in enumerate(self.labeled) if example["messages"][0]["content"] not in asked]
        return tuple(sorted(rng.sample(free, min(wanted, len(free)))))

    def _examples(self, seed: Candidate, draw: Draw) -> list[dict[str, Any]]:
        boot, shown = draw
        examples = [{"messages": self.demos[i]} for i in boot] + [self.labeled[j] for j in shown]
        if self.config.keep_seed_examples and seed.examples:
            examples = [*seed.examples, *examples]
        return examples

    def _try(self, session: TrainSession, seed: Candidate, candidate: Candidate, rng: random.Random) -> None:
        """Score ``candidate`` on a minibatch of validation tasks, and on the rest if it beats the best there."""
        cfg = self.config
        val = session.val_dataset
        best = self.best or seed
        size = min(cfg.minibatch_size, len(val))
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

    def labeled_examples(self, session: TrainSession) -> list[tuple[int, dict[str, Any]]]:
        """``(training task index, worked example)`` of each training task the agent renders from its label, by its
        ``worked_example(task)``; none when ``max_labeled_demos`` is 0."""
        cfg = self.config
        train = session.train_dataset
        if cfg.max_labeled_demos == 0 or not train:
            return []  # (no training tasks: bootstrap says what to pass)
        agent = session.agent
        who = getattr(agent, "__qualname__", type(agent).__name__)
        render = getattr(agent, LABELED_EXAMPLE_METHOD, None)
        if not callable(render):
            raise ValueError(
                f"max_labeled_demos={cfg.max_labeled_demos} shows training tasks as worked examples rendered from "
                f"their labels by the agent, and the agent {who} has no {LABELED_EXAMPLE_METHOD}(task) method: give "
                f'it one returning {{"messages": [OpenAI chat messages]}} (the question, the tool calls and their '
                f"results, the final answer) or None (examples/calc_agent/tasks.py, labeled_example, attached to a "
                f"function agent as agent.{LABELED_EXAMPLE_METHOD} = …), or set max_labeled_demos=0"
            )
        out: list[tuple[int, dict[str, Any]]] = []
        questions: set[str] = set()
        for index, task in enumerate(train):
            example = render(task)
            if example is None:
                continue
            messages = normalize(example.get("messages")) if isinstance(example, dict) else []
            if not messages or messages[0]["role"] != "user" or messages[-1]["role"] != "assistant":
                raise TypeError(
                    f'{who}.{LABELED_EXAMPLE_METHOD}(task) must return None or {{"messages": [...]}}, OpenAI chat '
                    "messages from the user's question to the assistant's final answer; for training task "
                    f"{index} it returned {str(example)[:300]}"
                )
            if messages[0]["content"] in questions:
                continue
            questions.add(messages[0]["content"])
            out.append((index, {"messages": messages}))
        if not out:
            raise NoTrainingData(
                f"max_labeled_demos={cfg.max_labeled_demos}: {who}.{LABELED_EXAMPLE_METHOD}(task) returned None for "
                f"all {len(train)} training tasks (do they carry the labels it reads?); set max_labeled_demos=0 to "
                "bootstrap from the starting candidate alone"
            )
        return out

    def bootstrap(self, session: TrainSession, teacher: Candidate, skip: set[int] | None = None) -> list[list[Message]]:
        """Worked examples from the teacher's successful rollouts on training tasks (those in ``skip`` left out:
        the teacher shows them)."""
        cfg = self.config
        train = session.train_dataset
        if not train:
            raise NoTrainingData("demonstration search bootstraps worked examples from train_dataset=…; pass one")
        indices = [i for i in range(len(train)) if i not in (skip or set())]
        if not indices and self.labeled:
            self.log({"bootstrap/rollouts": 0.0, "bootstrap/labeled": float(len(self.labeled))}, session)
            return []  # the teacher shows every training task: its labeled examples are all there is
        # leave enough budget to score the starting candidate and at least one candidate's minibatch
        reserve = len(session.val_dataset) + min(cfg.minibatch_size, len(session.val_dataset))
        count = min(cfg.bootstrap_tasks or len(indices), len(indices), self.remaining() - reserve)
        if count < 1:
            raise BudgetExhausted(f"rollout_budget={cfg.rollout_budget} leaves nothing to bootstrap from")
        outcomes = self.evaluate(session, teacher, train, indices[:count], mode="train", phase="bootstrap", traces=True)
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
                  "bootstrap/demos": float(len(demos)), "bootstrap/labeled": float(len(self.labeled))},
                 session)  # fmt: skip
        if not demos and not self.labeled:
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
                "with temperature > 0 for more varied tries, show labeled examples (max_labeled_demos, with the "
                "agent's worked_example(task)), or seed a few hand-written examples (seed_examples, or "
                f"the {cfg.examples_resource!r} resource) so the model succeeds sometimes"
            )
        return demos
