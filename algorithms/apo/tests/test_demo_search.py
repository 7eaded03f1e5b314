"""Demonstration search on the calculator agent (scripted model behind the proxy), through the Trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import agent_lightning as agl
import pytest
from agent_lightning.errors import NoTrainingData
from agent_lightning_apo import DemonstrationSearch, DemoSearchConfig, ResourceNotUsed
from conftest import split


def _rollouts(store: Any) -> list[agl.Rollout]:
    return agl.SyncStore(store).query_rollouts(limit=1000)


def test_worked_examples_from_successful_traces_lift_validation(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 8, 8)
    store, _ = served(train + val)
    algorithm = DemonstrationSearch(
        DemoSearchConfig(seed_examples=[], max_demos=2, num_candidates=3, minibatch_size=3, rollout_budget=40)
    )
    result = agl.Trainer(
        algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val, n_runners=2,
        run_dir=tmp_path,
    ).train()  # fmt: skip
    sync = agl.SyncStore(store)
    seed, best = algorithm.candidates["c0"], algorithm.best
    assert best is not None and best is not seed
    solved_alone = sum(t["question"].startswith("What is") for t in val) / len(val)
    # no examples: only "What is …" questions are solved (1.0); the rest get 0.1 for a well-formed wrong answer
    assert seed.mean() == pytest.approx(solved_alone + 0.1 * (1 - solved_alone))
    assert best.mean() == 1.0
    # the worked examples are conversations of successful bootstrap rollouts: question, calculator call, answer
    assert best.examples is not None and len(best.examples) == 2
    for example in best.examples:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["user", "assistant", "tool", "assistant"]
        assert example["messages"][0]["content"] in {t["question"] for t in train}
    # the store holds the search: every rollout ran a candidate's resources version and says which
    rollouts = _rollouts(store)
    assert len(rollouts) == algorithm.spent <= 40
    by_candidate = {c.resources_id: c.candidate_id for c in algorithm.candidates.values()}
    for rollout in rollouts:
        assert by_candidate[rollout.resources_id] == rollout.metadata["apo.candidate"]  # type: ignore[index]
    phases = {(r.metadata["apo.candidate"], r.metadata["apo.phase"]) for r in rollouts}
    assert ("c0", "bootstrap") in phases and ("c0", "full") in phases
    # the best is published last, so agents started afterwards use it
    latest = sync.get_latest_resources()
    assert latest is not None and latest.metadata["apo.candidate"] == best.candidate_id
    assert latest.resources["worked_examples"].config["examples"] == best.examples  # type: ignore[union-attr]
    # metrics in the same sinks as RL, and the summary with the paired comparison
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("bootstrap/successes" in line for line in lines)
    assert lines[-1]["apo/best_val"] == 1.0 and lines[-1]["apo/broken"] == 0
    summary = json.loads((tmp_path / "apo_result.json").read_text())
    assert summary["apo/fixed"] == round((1 - solved_alone) * len(val)) and summary["apo/rollouts_spent"] <= 40
    assert result.iterations == len(algorithm.candidates) - 1


def test_minibatch_gating_skips_full_evaluation_of_candidates_that_do_not_beat_the_best(
    calc: Any, served: Any, tmp_path: Path
) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 6, 8)
    store, _ = served(train + val)
    algorithm = DemonstrationSearch(
        DemoSearchConfig(seed_examples=[], max_demos=1, num_candidates=4, minibatch_size=2, rollout_budget=200)
    )
    agl.Trainer(algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val,
                run_dir=tmp_path).train()  # fmt: skip
    full = {r.metadata["apo.candidate"] for r in _rollouts(store) if r.metadata["apo.phase"] == "full"}
    minibatch_only = set(algorithm.candidates) - full
    # c1 reaches 1.0 and becomes best; every later candidate ties it on its minibatch, so never gets a full run
    assert full == {"c0", "c1"} and len(minibatch_only) >= 1
    assert len(algorithm.candidates) - 1 == min(4, len(algorithm.demos))  # one candidate per distinct example
    assert all(len(algorithm.candidates[c].scores) == 2 for c in minibatch_only)


def test_no_successful_rollout_says_how_to_fix_it(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 4, 4)
    train = [t for t in train if not t["question"].startswith("What is")]  # the model fails all of these
    store, _ = served(train + val)
    algorithm = DemonstrationSearch(DemoSearchConfig(seed_examples=[], num_candidates=2))
    trainer = agl.Trainer(
        algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val, run_dir=tmp_path
    )
    with pytest.raises(NoTrainingData, match="no successful rollout") as info:
        trainer.train()
    assert "lower success_threshold" in str(info.value) and "seed_examples" in str(info.value)
    assert len(_rollouts(store)) == len(train)  # it stopped after bootstrapping, before scoring anything


def test_a_resource_the_agent_never_reads_is_detected(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 6, 6)
    store, _ = served(train + val)
    # the agent reads "worked_examples"; this run optimizes a resource named "fewshot" that nothing reads
    algorithm = DemonstrationSearch(
        DemoSearchConfig(examples_resource="fewshot", seed_examples=[], num_candidates=2, minibatch_size=2)
    )
    trainer = agl.Trainer(
        algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val, run_dir=tmp_path
    )
    with pytest.raises(ResourceNotUsed, match="never read resource 'fewshot'") as info:
        trainer.train()
    assert "examples_resource" in str(info.value)
    # found on the first candidate that carries examples, after its minibatch only
    assert algorithm.spent == len(train) + len(val) + 2


def test_no_llm_resource_is_a_clear_error(calc: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 4, 4)
    trainer = agl.Trainer(
        DemonstrationSearch(), store=agl.InMemoryLightningStore(), agent=openai_agent.agent, train_dataset=train,
        val_dataset=val, run_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ValueError, match="no LLM resource"):
        trainer.train()


def test_labeled_examples_teach_a_start_that_never_succeeds(calc: Any, served: Any, tmp_path: Path) -> None:
    """No "What is" question: the start fails every task, so only labeled examples (rendered by the agent's
    ``worked_example``) get bootstrapping going; the teacher's real calculator calls become bootstrapped examples."""
    tasks, openai_agent = calc
    train, val = split(tasks, 10, 8)
    train, val = ([t for t in part if not t["question"].startswith("What is")] for part in (train, val))
    store, _ = served(train + val)
    config = DemoSearchConfig(
        seed_examples=[], max_demos=2, max_labeled_demos=3, require_tool_call=True, num_candidates=4,
        minibatch_size=3, bootstrap_tasks=3, rollout_budget=60,
    )  # fmt: skip
    algorithm = DemonstrationSearch(config)
    agl.Trainer(algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val, n_runners=2,
                run_dir=tmp_path).train()  # fmt: skip
    # one labeled example per training task, as the agent renders it
    assert algorithm.labeled == [openai_agent.agent.worked_example(t) for t in train]
    # the teacher (c1) is the labeled-only candidate: the start's prompt with 3 labeled examples
    teacher = algorithm.candidates["c1"]
    assert teacher.note.startswith("labeled-only") and teacher.examples is not None and len(teacher.examples) == 3
    assert all(e in algorithm.labeled for e in teacher.examples)
    shown = [e["messages"][0]["content"] for e in teacher.examples]
    # it ran the bootstrap, on training tasks it does not show; every one called the calculator and succeeded
    rollouts = _rollouts(store)
    bootstrap = [r for r in rollouts if r.metadata["apo.phase"] == "bootstrap"]
    assert {r.metadata["apo.candidate"] for r in bootstrap} == {"c1"} and len(bootstrap) == 3
    assert not {r.input["question"] for r in bootstrap} & set(shown)  # type: ignore[index]
    assert len(algorithm.demos) == 3
    for demo in algorithm.demos:
        assert [m["role"] for m in demo] == ["user", "assistant", "tool", "assistant"]
        assert demo[2]["content"] == tasks.calculator(labeled_expression(train, demo[0]["content"]))
    # the kinds of candidates, each with max_labeled_demos examples in all, labeled ones filling up
    kinds = [c.note.split(":")[0] for c in algorithm.candidates.values()]
    assert kinds[:3] == ["starting point", "labeled-only", "bootstrapped"] and set(kinds[3:]) == {"random"}
    assert len(algorithm.candidates) - 1 == 4
    for candidate in list(algorithm.candidates.values())[1:]:
        assert candidate.examples is not None and len(candidate.examples) == 3
        questions = [e["messages"][0]["content"] for e in candidate.examples]
        assert len(set(questions)) == 3
    bootstrapped = algorithm.candidates["c2"].examples
    assert bootstrapped is not None and [e["messages"] for e in bootstrapped[:2]] == algorithm.demos[:2]
    # the start scores 0.1 (a well-formed wrong answer) everywhere; examples make the scripted model use the tool
    assert algorithm.candidates["c0"].mean() == pytest.approx(0.1)
    assert algorithm.best is not None and algorithm.best.mean() == 1.0
    assert len(rollouts) == algorithm.spent <= 60


def labeled_expression(train: list[dict[str, Any]], question: str) -> str:
    return next(t["expression"] for t in train if t["question"] == question)


def test_labeled_examples_need_the_agents_worked_example(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 4, 4)
    store, _ = served(train + val)

    def plain(task: dict[str, Any], ctx: agl.TrainingContext) -> None:  # the same agent, without worked_example
        openai_agent.agent(task, ctx)

    algorithm = DemonstrationSearch(DemoSearchConfig(seed_examples=[], max_labeled_demos=2))
    trainer = agl.Trainer(algorithm, store=store, agent=plain, train_dataset=train, val_dataset=val, run_dir=tmp_path)
    with pytest.raises(ValueError, match="has no worked_example\\(task\\) method") as info:
        trainer.train()
    assert "max_labeled_demos=0" in str(info.value)
    assert _rollouts(store) == []  # refused before running anything

    class Broken(agl.LitAgent):
        def rollout(self, task: Any, ctx: agl.TrainingContext) -> None:
            openai_agent.agent(task, ctx)

        def worked_example(self, task: Any) -> dict[str, Any]:
            return {"messages": [{"role": "assistant", "content": "ANSWER: 1"}]}  # no question

    algorithm = DemonstrationSearch(DemoSearchConfig(seed_examples=[], max_labeled_demos=2))
    trainer = agl.Trainer(algorithm, store=store, agent=Broken(), train_dataset=train, val_dataset=val,
                          run_dir=tmp_path)  # fmt: skip
    with pytest.raises(TypeError, match="Broken.worked_example\\(task\\) must return None or"):
        trainer.train()
    assert _rollouts(store) == []
