"""Runners execute agents on claimed rollouts; the Trainer hands an algorithm a working session."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import agent_lightning as agl
import pytest
from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession
from agent_lightning.runner import Runner, RunnerPool
from agent_lightning.store.sync import SyncStore


def calc_agent(task: dict[str, Any]) -> float:
    """An ordinary function agent: returns its reward."""
    with agl.tool_call("calculator", {"expression": task["question"]}) as call:
        answer = eval(task["question"], {"__builtins__": {}})
        call.set_attribute("gen_ai.tool.call.result", str(answer))
    return 1.0 if answer == task["answer"] else 0.0


def test_runner_runs_function_agent_and_records_reward() -> None:
    store = agl.InMemoryLightningStore()
    sync = SyncStore(store)
    sync.enqueue_rollouts([agl.RolloutRequest(input={"question": "2+3", "answer": 5}) for _ in range(3)])
    runner = Runner(calc_agent, store, worker_id="w1")
    assert runner.run(max_rollouts=3) == 3
    rollouts = sync.query_rollouts()
    assert [r.status for r in rollouts] == ["succeeded"] * 3
    spans = sync.query_spans(rollouts[0].rollout_id)
    assert [s.kind for s in spans] == ["agent", "tool", "reward"]
    assert spans[-1].reward == 1.0


def test_failing_agent_is_retried_then_failed_with_reason() -> None:
    store = agl.InMemoryLightningStore()
    sync = SyncStore(store)
    calls: list[str] = []

    def flaky(task: Any, ctx: agl.TrainingContext) -> float:
        calls.append(ctx.attempt_id)
        raise RuntimeError("model server exploded")

    sync.enqueue_rollout({"q": 1}, config=agl.RolloutConfig(max_attempts=2))
    runner = Runner(flaky, store)
    runner.run(max_rollouts=5, idle_timeout=0.3)
    (rollout,) = sync.query_rollouts()
    assert rollout.status == "failed" and rollout.attempt_count == 2
    assert "model server exploded" in (rollout.error or "")
    assert len(set(calls)) == 2


class LitCalc(agl.LitAgent):
    name = "calc"

    async def arollout(self, task: Any, ctx: agl.TrainingContext) -> float:
        return {"correct": 1.0, "format": 0.25}  # type: ignore[return-value]


def test_runner_pool_with_lit_agent_processes_everything_once() -> None:
    store = agl.InMemoryLightningStore()
    sync = SyncStore(store)
    rollouts = sync.enqueue_rollouts([agl.RolloutRequest(input=i) for i in range(20)])
    with RunnerPool(LitCalc(), store, n=4):
        done = sync.wait_for_rollouts([r.rollout_id for r in rollouts], timeout=30)
    assert len(done) == 20 and {r.status for r in done} == {"succeeded"}
    attempts = [a for r in rollouts for a in sync.get_attempts(r.rollout_id)]
    assert len(attempts) == 20
    assert len({a.worker_id for a in attempts}) > 1
    root = sync.query_spans(rollouts[0].rollout_id)[0]
    assert root.attributes["gen_ai.agent.name"] == "calc"
    reward = sync.query_spans(rollouts[0].rollout_id)[-1]
    assert reward.reward == 1.25


class CountingStore(agl.InMemoryLightningStore):
    """The in-memory store, noting how runners claim from it."""

    def __init__(self) -> None:
        super().__init__()
        self.single_claims = 0
        self.batch_limits: list[int] = []

    async def _claim_rollout(self, *args: Any) -> agl.AttemptedRollout | None:
        self.single_claims += 1
        return await super()._claim_rollout(*args)

    async def _claim_rollouts(self, worker_id: str, limit: int, *args: Any) -> list[agl.AttemptedRollout]:
        self.batch_limits.append(limit)
        return await super()._claim_rollouts(worker_id, limit, *args)


class TogetherAgent(agl.LitAgent):
    """Succeeds only when ``n`` runners hold a rollout at the same time."""

    name = "together"

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n, timeout=20)

    def rollout(self, task: Any, ctx: agl.TrainingContext) -> float:
        self.barrier.wait()
        return 1.0


def test_runner_pool_claims_for_its_waiting_runners_in_one_call() -> None:
    store = CountingStore()
    sync = SyncStore(store)
    rollouts = sync.enqueue_rollouts([agl.RolloutRequest(input=i) for i in range(12)])
    with RunnerPool(TogetherAgent(4), store, n=4):
        done = sync.wait_for_rollouts([r.rollout_id for r in rollouts], timeout=60)
    assert len(done) == 12 and {r.status for r in done} == {"succeeded"}, "four runners ran at once, three times"
    assert all(len(sync.get_attempts(r.rollout_id)) == 1 for r in rollouts)
    assert store.batch_limits and max(store.batch_limits) > 1, "waiting runners were claimed for in one call"
    assert max(store.batch_limits) <= 4, "a pool claims no more rollouts than it has runners to start them"


def test_a_single_runner_claims_one_rollout_at_a_time() -> None:
    store = CountingStore()
    sync = SyncStore(store)
    sync.enqueue_rollouts([agl.RolloutRequest(input=i) for i in range(3)])
    assert Runner(LitCalc(), store).run(max_rollouts=3) == 3
    with RunnerPool(LitCalc(), store, n=1) as pool:
        sync.enqueue_rollouts([agl.RolloutRequest(input=i) for i in range(3)])
        sync.wait_for_rollouts([r.rollout_id for r in sync.query_rollouts()], timeout=30)
    assert pool.runners[0].completed == 3
    assert store.batch_limits == [] and store.single_claims >= 6


class RecordingAlgorithm(Algorithm):
    """A minimal algorithm: runs rollouts each iteration, logs their mean reward."""

    name = "recording"

    def __init__(self) -> None:
        self.sessions: list[TrainSession] = []

    def run(self, session: TrainSession) -> TrainResult:
        self.sessions.append(session)
        if session.offline:
            finished = session.sync.query_rollouts(status=["succeeded"])
            session.log(0, {"offline/rollouts": len(finished)})
            return TrainResult(iterations=0, metrics=session.metrics.history)
        for iteration in range(session.num_iterations):
            rollouts = session.run_rollouts(session.train_dataset, group_size=2, timeout=30)
            rewards = [e.reward or 0.0 for e in session.episodes(rollouts)]
            session.log(iteration, {"train/reward_mean": sum(rewards) / len(rewards), "train/n": len(rewards)})
            if session.stopping:
                break
        return TrainResult(iterations=session.num_iterations, metrics=session.metrics.history)


def test_trainer_runs_algorithm_with_runners_and_writes_metrics(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "2+2", "answer": 4}\n{"question": "3*3", "answer": 10}\n')
    algorithm = RecordingAlgorithm()
    trainer = agl.Trainer(
        algorithm=algorithm,
        store="memory://trainer-test",
        agent=calc_agent,
        train_dataset=data,
        n_runners=2,
        run_dir=tmp_path / "run",
    )
    result = trainer.train(num_iterations=2)
    assert result.iterations == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"train/reward_mean": 0.5' in lines[0] and '"train/n": 4.0' in lines[0]
    store = algorithm.sessions[0].sync
    assert len(store.query_rollouts(limit=1000)) == 8

    # Offline: a trainer without an agent trains on what the store already holds.
    offline = RecordingAlgorithm()
    agl.Trainer(algorithm=offline, store="memory://trainer-test", run_dir=tmp_path / "run2").train(num_iterations=1)
    assert offline.sessions[0].offline
    assert offline.sessions[0].metrics.history[0]["offline/rollouts"] == 8


def test_trainer_ctrl_c_stops_cleanly_and_keeps_finished_rollouts(tmp_path: Path) -> None:
    class Interrupted(RecordingAlgorithm):
        def run(self, session: TrainSession) -> TrainResult:
            session.run_rollouts([{"question": "1+1", "answer": 2}], timeout=30)
            raise KeyboardInterrupt

    trainer = agl.Trainer(algorithm=Interrupted(), store="memory://ctrl-c", agent=calc_agent, run_dir=tmp_path)
    result = trainer.train(num_iterations=3)
    assert result.interrupted
    kept = SyncStore(agl.open_store("memory://ctrl-c")).query_rollouts(status=["succeeded"])
    assert len(kept) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("agl-runner")]


def test_trainer_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="agent_lightning.Algorithm"):
        agl.Trainer(algorithm=object())  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        agl.Trainer(algorithm=RecordingAlgorithm(), train_dataset=tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ok": 1}\n{not json}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        agl.Trainer(algorithm=RecordingAlgorithm(), train_dataset=bad)


def test_cli_lists_runs_and_prints_span_tree(capsys: pytest.CaptureFixture[str]) -> None:
    from agent_lightning.cli import main

    store = agl.open_store("memory://cli-test")
    sync = SyncStore(store)
    sync.enqueue_rollout({"question": "6*7", "answer": 42}, task_type="math")
    Runner(calc_agent, store).run(max_rollouts=1)
    rollout_id = sync.query_rollouts()[0].rollout_id
    assert main(["runs", "--store", "memory://cli-test"]) == 0
    out = capsys.readouterr().out
    assert rollout_id in out and "succeeded" in out and "1.000" in out
    assert main(["spans", rollout_id, "--store", "memory://cli-test"]) == 0
    tree = capsys.readouterr().out.splitlines()
    assert tree[0].startswith("agent") and tree[1].startswith("  tool") and "reward=1.0" in tree[2]
    assert main(["spans", "ro-missing", "--store", "memory://cli-test"]) == 1
    assert "no rollout with id 'ro-missing'" in capsys.readouterr().err


def test_agl_train_runs_a_registered_algorithm_on_a_module_agent(tmp_path: Path) -> None:
    from agent_lightning import plugins
    from agent_lightning.cli import main
    from agent_lightning.registry import AlgorithmEntry

    class Registration:
        @agl.hookimpl
        def agl_register_algorithms(self, register):  # type: ignore[no-untyped-def]
            register(AlgorithmEntry(name="recording", algorithm=f"{__name__}:RecordingAlgorithm"))

    data = tmp_path / "train.csv"
    data.write_text("question,answer\n2+2,4\n")
    plugins.register(Registration(), name="recording-registration")
    try:
        code = main(
            ["train", f"{__name__}:calc_agent", "--train", str(data), "--algorithm", "recording",
             "--store", "memory://cli-train", "--iterations", "1", "--run-dir", str(tmp_path / "run")]
        )  # fmt: skip
    finally:
        plugins.unregister("recording-registration")
    assert code == 0
    # CSV values are strings: "4" != 4, so the agent's reward is 0 and the metric says so.
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    assert '"train/reward_mean": 0.0' in line and '"train/n": 2.0' in line
    assert main(["train", "x:y", "--train", str(data), "--algorithm", "nope"]) == 1


# ---------------------------------------------------------------------------- Trainer(model=…), agent classes
class ConfiguredAlgorithm(RecordingAlgorithm):
    """An algorithm with a pydantic config that has a ``model`` setting (like PPO/GRPO's)."""

    def __init__(self, **settings: Any) -> None:
        from pydantic import BaseModel

        class Config(BaseModel):
            model: str = "default-model"
            learning_rate: float = 1e-6

        super().__init__()
        self.config = Config(**settings)


def test_trainer_model_sets_the_algorithms_model_setting(tmp_path: Path) -> None:
    algorithm = ConfiguredAlgorithm(learning_rate=3e-5)
    agl.Trainer(algorithm=algorithm, model=tmp_path / "my-policy", store="memory://model-arg", run_dir=tmp_path)
    assert algorithm.config.model == str(tmp_path / "my-policy")
    assert algorithm.config.learning_rate == 3e-5  # the rest of the config is kept

    same = ConfiguredAlgorithm(model="m")
    agl.Trainer(algorithm=same, model="m", store="memory://model-arg", run_dir=tmp_path)
    assert same.config.model == "m"
    with pytest.raises(ValueError, match="model is given twice"):
        agl.Trainer(algorithm=ConfiguredAlgorithm(model="a"), model="b", store="memory://model-arg")
    with pytest.raises(TypeError, match="RecordingAlgorithm has no model setting"):
        agl.Trainer(algorithm=RecordingAlgorithm(), model="some-model")


def test_trainer_instantiates_a_lit_agent_class(tmp_path: Path) -> None:
    algorithm = RecordingAlgorithm()
    trainer = agl.Trainer(
        algorithm=algorithm,
        store="memory://lit-class",
        agent=LitCalc,  # the class itself, not an instance
        train_dataset=[{"question": "1+1", "answer": 2}],
        run_dir=tmp_path,
    )
    assert isinstance(trainer.agent, LitCalc)
    result = trainer.train(num_iterations=1)
    assert result.metrics[0]["train/reward_mean"] == 1.25 and result.metrics[0]["train/n"] == 2

    class NeedsArguments(agl.LitAgent):
        def __init__(self, threshold: float) -> None:
            self.threshold = threshold

    with pytest.raises(TypeError, match=r"could not create NeedsArguments\(\).*pass an instance"):
        agl.Trainer(algorithm=RecordingAlgorithm(), agent=NeedsArguments)
    with pytest.raises(TypeError, match="is a class, not an agent"):
        agl.Trainer(algorithm=RecordingAlgorithm(), agent=dict)  # type: ignore[arg-type]


def test_trainer_default_store_says_which_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_lightning import plugins
    from agent_lightning.errors import PluginError

    monkeypatch.setenv("AGL_PLUGINS", "")  # built-in plugins only: as if no backend package were installed
    plugins.reset()
    try:
        trainer = agl.Trainer(algorithm=RecordingAlgorithm(), run_dir=tmp_path / "run")
        with pytest.raises(PluginError, match=r"default store is sqlite:///.*pip install agent-lightning-sqlite"):
            trainer.train(num_iterations=1)
    finally:
        monkeypatch.delenv("AGL_PLUGINS")
        plugins.reset()


def test_only_rank_0_starts_runners_under_a_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class Probe(Algorithm):
        def run(self, session: TrainSession) -> TrainResult:
            seen.append([t.name for t in threading.enumerate() if t.name.startswith("agl-runner")])
            return TrainResult(iterations=0)

    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        agl.Trainer(algorithm=Probe(), store="memory://ranks", agent=calc_agent, n_runners=2, run_dir=tmp_path).train()
    assert seen[0] == [] and len(seen[1]) == 2
