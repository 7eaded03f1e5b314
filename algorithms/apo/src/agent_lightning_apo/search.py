"""What both optimizers share: candidates as resources versions, evaluation through the runners, the budget."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession
from agent_lightning.types import LLM, PromptTemplate, Resource, Rollout, RolloutMode, RolloutRequest, Span, ToolConfig

from agent_lightning_apo.config import APOConfig
from agent_lightning_apo.traces import final_reward, llm_calls, resource_seen

logger = logging.getLogger(__name__)

CANDIDATE_KEY = "apo.candidate"
"""Metadata key naming the candidate, on its resources snapshot and on every rollout that evaluated it."""


class BudgetExhausted(Exception):
    """The next phase would run more rollouts than ``rollout_budget`` leaves (ends the search, not an error)."""


class ResourceNotUsed(ValueError):
    """The agent never read an optimized resource: no rollout's model calls show it."""


@dataclass
class Candidate:
    """One version of the optimized resources, published as a resources snapshot."""

    candidate_id: str
    resources_id: str
    prompt: str | None
    examples: list[dict[str, Any]] | None
    parent: str | None = None
    note: str = ""
    """What the candidate is (``apo.note`` on its resources snapshot)."""
    scores: dict[int, float] = field(default_factory=dict)
    """Validation scores by task index (filled as the candidate is evaluated)."""

    def mean(self, indices: Sequence[int] | None = None) -> float:
        keys = list(self.scores) if indices is None else list(indices)
        return float(sum(self.scores[i] for i in keys) / len(keys)) if keys else math.nan


@dataclass
class Outcome:
    """One rollout of a candidate on one task."""

    task_index: int
    reward: float
    rollout: Rollout | None
    spans: list[Span]


def sign_test(fixed: int, broken: int) -> float:
    """One-sided exact sign test: P(at least ``fixed`` of ``fixed + broken`` fair coin flips come up fixed)."""
    n = fixed + broken
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(fixed, n + 1)) / (1 << n)


class PromptSearch(Algorithm):
    """Base of the prompt optimizers: publishes candidates, evaluates them through the runners, keeps the budget."""

    config_class: ClassVar[type[APOConfig]] = APOConfig

    def __init__(self, config: APOConfig | None = None, **overrides: Any) -> None:
        self.config = self._configure(self.config_class, config, overrides)
        self.candidates: dict[str, Candidate] = {}
        self.spent = 0
        self.step = 0
        self.best: Candidate | None = None
        self._base: dict[str, Resource] = {}
        self._checked: set[str] = set()

    # ------------------------------------------------------------------ what subclasses define
    def search(self, session: TrainSession, seed: Candidate) -> None:
        """Propose and evaluate candidates, setting :attr:`best`; may end with :class:`BudgetExhausted`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the run
    def run(self, session: TrainSession) -> TrainResult:
        if session.offline:
            raise ValueError(
                f"{self.name} evaluates candidates by running the agent: pass agent=… (and datasets) to the Trainer"
            )
        if not session.val_dataset:
            raise ValueError(f"{self.name} scores candidates on validation tasks: pass val_dataset=… to the Trainer")
        started = time.perf_counter()
        self._base, prompt, examples = self._starting_point(session)
        seed = self.publish(session, prompt, examples, parent=None, note="starting point")
        interrupted = False
        try:
            self.search(session, seed)
        except BudgetExhausted as exc:
            logger.info("%s: %s", self.name, exc)
        except KeyboardInterrupt:
            interrupted = True
            session.stop_event.set()
        best = self.best or seed
        final = session.publish_resources(
            self._resources(best.prompt, best.examples),
            {CANDIDATE_KEY: best.candidate_id, "apo.algorithm": self.name, "apo.final": True},
        )
        summary = self._summary(seed, best, final.resources_id, time.perf_counter() - started)
        session.log(self.step + 1, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        session.run_dir.mkdir(parents=True, exist_ok=True)
        (session.run_dir / "apo_result.json").write_text(json.dumps(summary, indent=2, default=str))
        return TrainResult(
            iterations=len(self.candidates) - 1,
            metrics=session.metrics.history,
            interrupted=interrupted or session.stopping,
        )

    def _summary(self, seed: Candidate, best: Candidate, final_id: str, wall: float) -> dict[str, Any]:
        common = sorted(set(seed.scores) & set(best.scores))
        threshold = self.config.success_threshold
        fixed = sum(seed.scores[i] < threshold <= best.scores[i] for i in common)
        broken = sum(best.scores[i] < threshold <= seed.scores[i] for i in common)
        return {
            "apo/rollouts_spent": self.spent,
            "apo/candidates": len(self.candidates),
            "apo/seed_val": seed.mean(common) if common else math.nan,
            "apo/best_val": best.mean(common) if common else math.nan,
            "apo/seed_success_rate": _rate(seed, common, threshold),
            "apo/best_success_rate": _rate(best, common, threshold),
            "apo/fixed": fixed,
            "apo/broken": broken,
            "apo/sign_test_p": sign_test(fixed, broken),
            "apo/wall_s": wall,
            "best_candidate": best.candidate_id,
            "best_resources_id": final_id,
            "best_prompt": best.prompt,
            "best_examples": best.examples,
            "candidates": {
                c.candidate_id: {
                    "resources_id": c.resources_id,
                    "parent": c.parent,
                    "note": c.note,
                    "val_mean": c.mean() if c.scores else None,
                    "val_tasks_scored": len(c.scores),
                }
                for c in self.candidates.values()
            },
        }

    # ------------------------------------------------------------------ resources
    def _starting_point(
        self, session: TrainSession
    ) -> tuple[dict[str, Resource], str | None, list[dict[str, Any]] | None]:
        """The resources every candidate keeps (the agent's LLM), the starting prompt and examples."""
        cfg = self.config
        latest = session.sync.get_latest_resources()
        base: dict[str, Resource] = dict(latest.resources) if latest is not None else {}
        prompt = cfg.seed_prompt
        current_prompt = base.pop(cfg.prompt_resource, None)
        if prompt is None and isinstance(current_prompt, PromptTemplate):
            prompt = current_prompt.template
        examples = cfg.seed_examples
        current_examples = base.pop(cfg.examples_resource, None)
        if examples is None and isinstance(current_examples, ToolConfig):
            found = current_examples.config.get("examples")
            examples = list(found) if isinstance(found, list) else None
        if cfg.model is not None or cfg.llm_endpoint is not None:
            if cfg.model is None or cfg.llm_endpoint is None:
                raise ValueError("set both model and llm_endpoint (the agent's model and its OpenAI-compatible URL)")
            key = os.environ.get(cfg.llm_api_key_env) if cfg.llm_api_key_env else None
            base[cfg.llm_resource] = LLM(
                endpoint=cfg.llm_endpoint, model=cfg.model, api_key=key, sampling_parameters=cfg.sampling_parameters
            )
        if not any(isinstance(r, LLM) for r in base.values()):
            raise ValueError(
                f"{self.name} optimizes what the agent reads, not the model, and found no LLM resource for the agent: "
                "publish one first (session.publish_resources / store.add_resources, e.g. the proxy's resource) or "
                "set model= and llm_endpoint= in the algorithm's config"
            )
        return base, prompt, examples

    def _resources(self, prompt: str | None, examples: list[dict[str, Any]] | None) -> dict[str, Resource]:
        resources = dict(self._base)
        if prompt is not None:
            resources[self.config.prompt_resource] = PromptTemplate(template=prompt)
        if examples is not None:
            resources[self.config.examples_resource] = ToolConfig(config={"examples": examples})
        return resources

    def publish(
        self,
        session: TrainSession,
        prompt: str | None,
        examples: list[dict[str, Any]] | None,
        *,
        parent: str | None,
        note: str,
    ) -> Candidate:
        """Store the candidate as a new resources version."""
        candidate_id = f"c{len(self.candidates)}"
        snapshot = session.publish_resources(
            self._resources(prompt, examples),
            {CANDIDATE_KEY: candidate_id, "apo.algorithm": self.name, "apo.parent": parent, "apo.note": note},
        )
        candidate = Candidate(candidate_id, snapshot.resources_id, prompt, examples, parent, note)
        self.candidates[candidate_id] = candidate
        return candidate

    # ------------------------------------------------------------------ evaluation
    def remaining(self) -> int:
        return self.config.rollout_budget - self.spent

    def evaluate(
        self,
        session: TrainSession,
        candidate: Candidate,
        tasks: Sequence[Any],
        indices: Sequence[int],
        *,
        mode: RolloutMode,
        phase: str,
        traces: bool = False,
    ) -> list[Outcome]:
        """Run ``candidate`` once on each ``tasks[i]``; a rollout that did not finish scores 0.

        Raises :class:`BudgetExhausted` (running nothing) when the budget cannot cover all of them.
        """
        if not indices:
            return []
        if session.stopping:
            raise KeyboardInterrupt
        if len(indices) > self.remaining():
            raise BudgetExhausted(
                f"rollout budget spent ({self.spent} of {self.config.rollout_budget}); {phase} of "
                f"{candidate.candidate_id} needs {len(indices)} more"
            )
        self.spent += len(indices)
        requests = [
            RolloutRequest(
                input=tasks[i],
                task_type=session.task_type,
                mode=mode,
                resources_id=candidate.resources_id,
                config=session.rollout_config,
                metadata={CANDIDATE_KEY: candidate.candidate_id, "apo.task_index": i, "apo.phase": phase},
            )
            for i in indices
        ]
        rollouts = session.sync.enqueue_rollouts(requests)
        ids = [r.rollout_id for r in rollouts]
        finished = {r.rollout_id: r for r in session.sync.wait_for_rollouts(ids, timeout=self.config.rollout_timeout)}
        outcomes = []
        for index, rollout_id in zip(indices, ids, strict=True):
            rollout = finished.get(rollout_id)
            if rollout is None:
                try:
                    session.sync.cancel_rollout(rollout_id)
                except Exception:
                    pass
                outcomes.append(Outcome(index, 0.0, None, []))
                continue
            spans = self._spans(session, rollout_id, need_llm=traces)
            reward = final_reward(spans) if rollout.status == "succeeded" else None
            outcomes.append(Outcome(index, reward if reward is not None else 0.0, rollout, spans))
        if mode == "val":
            candidate.scores.update((o.task_index, o.reward) for o in outcomes)
        self._check_used(candidate, outcomes)
        return outcomes

    def _spans(self, session: TrainSession, rollout_id: str, *, need_llm: bool, wait: float = 3.0) -> list[Span]:
        """The rollout's spans; with ``need_llm``, waits briefly for model-call records a proxy writes after the
        agent finished."""
        deadline = time.monotonic() + wait
        while True:
            spans = session.sync.query_spans(rollout_id, "latest")
            if not need_llm or llm_calls(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def _check_used(self, candidate: Candidate, outcomes: Sequence[Outcome]) -> None:
        """Raise :class:`ResourceNotUsed` the first time a candidate carrying a resource ran without any rollout
        showing it."""
        if not self.config.check_resource_use:
            return
        cfg = self.config
        resources = self._resources(candidate.prompt, candidate.examples)
        for name in (cfg.prompt_resource, cfg.examples_resource):
            resource = resources.get(name)
            if name in self._checked or resource is None:
                continue
            if isinstance(resource, ToolConfig) and not resource.config.get("examples"):
                continue  # an empty example list shows nowhere
            ran = [o for o in outcomes if o.rollout is not None]
            if not ran:
                continue
            if not any(resource_seen(name, resource, o.spans) for o in ran):
                recorded = sum(bool(llm_calls(o.spans)) for o in ran)
                raise ResourceNotUsed(
                    f"the agent never read resource {name!r}: none of {len(ran)} rollouts of candidate "
                    f"{candidate.candidate_id} (resources {candidate.resources_id}) shows it in a model call "
                    f"({recorded} recorded model calls with messages). Make the agent read "
                    f"ctx.resources.resources[{name!r}] (see examples/calc_agent/tasks.py), or set "
                    f"{'prompt_resource' if name == cfg.prompt_resource else 'examples_resource'} to the name it "
                    "reads. If the agent does read it, route its model calls through ctx.llm().endpoint (the proxy) "
                    "or install its framework's adapter so the calls are recorded"
                )
            self._checked.add(name)

    def log(self, metrics: Mapping[str, float], session: TrainSession) -> None:
        self.step += 1
        session.log(self.step, {**metrics, "apo/rollouts_spent": float(self.spent)})


def _rate(candidate: Candidate, indices: Sequence[int], threshold: float) -> float:
    if not indices:
        return math.nan
    return sum(candidate.scores[i] >= threshold for i in indices) / len(indices)
