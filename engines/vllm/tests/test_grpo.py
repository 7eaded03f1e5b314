"""Two GRPO iterations with ``engine="vllm"``: runners → recording proxy → vLLM → spans → update → weight sync."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import agent_lightning as agl
import httpx
import psutil
import pytest
import torch
from agent_lightning import InMemoryLightningStore, Trainer, semconv
from agent_lightning.store.sync import SyncStore
from agent_lightning_proxy.protocol import MODEL_VERSION_HEADER
from agent_lightning_rl.config import GRPOConfig, LoraSettings
from agent_lightning_rl.grpo import GroupRelativePolicyOptimization
from agent_lightning_vllm import EngineError

PROMPTS = ["the quick brown fox", "hello world", "What is 2+3?", "the lazy dog"]


class FirstTokenAgent:
    """Completes a prompt through the proxy; reward 1 when the first sampled token id is even."""

    name = "toy"

    def __call__(self, task: dict[str, Any], ctx: agl.TrainingContext) -> float:
        llm = ctx.llm()
        body = {"model": llm.model, "prompt": task["prompt"], "max_tokens": 3, "temperature": 1.0}
        response = httpx.post(f"{llm.endpoint}/completions", json=body, timeout=300)
        response.raise_for_status()
        ids = response.json()["choices"][0].get("token_ids")  # stripped unless asked; the proxy recorded them
        text = response.json()["choices"][0]["text"]
        return 1.0 if (ids[0] % 2 == 0 if ids else len(text) % 2 == 0) else 0.0


@pytest.mark.parametrize("async_rollouts", [False, True], ids=["sync", "async"])
def test_two_grpo_iterations_through_the_proxy_and_vllm(
    model_folder: str, tmp_path: Path, async_rollouts: bool
) -> None:
    store = InMemoryLightningStore()
    config = GRPOConfig(
        model=model_folder,
        engine="vllm",
        engine_options={"dtype": "float32", "max_model_len": 512},
        learning_rate=1e-4,
        group_size=2,
        tasks_per_iteration=2,
        max_new_tokens=3,
        async_rollouts=async_rollouts,
    )
    trainer = Trainer(
        algorithm=GroupRelativePolicyOptimization(config=config),
        store=store,
        agent=FirstTokenAgent(),
        train_dataset=[{"prompt": p} for p in PROMPTS],
        n_runners=2,
        run_dir=tmp_path / "run",
    )
    result = trainer.train(num_iterations=2, checkpoint_dir=tmp_path / "checkpoints")
    assert result.iterations == 2 and not result.interrupted
    assert [m["train/failed_rollouts"] for m in result.metrics] == [0.0, 0.0]
    assert [m["train/samples"] for m in result.metrics] == [4.0, 4.0]
    assert all(m["time/weight_sync_s"] < 30 for m in result.metrics)
    sync = SyncStore(store)
    rollouts = sync.query_rollouts(mode="train", limit=100)
    assert len(rollouts) == 8
    versions = {}

    def version(resources_id: str) -> int:
        return int(sync.get_resources(resources_id).metadata["agl.policy_version"])

    for rollout in rollouts:
        llm = [s for s in sync.query_spans(rollout.rollout_id) if s.kind == "llm"]
        assert len(llm) == 1 and llm[0].attributes[semconv.COMPLETION_TOKEN_IDS]
        # vLLM's answer names the weights that generated it: synchronously, the snapshot this rollout was started
        # with; asynchronously, that one or the next (new weights reach vLLM between requests)
        served = version(llm[0].attributes[semconv.RESOURCES_ID])
        assert served - version(rollout.resources_id) in ({0, 1} if async_rollouts else {0})
        versions[rollout.resources_id] = version(rollout.resources_id)
    if async_rollouts:  # the second batch may be admitted while version 0 is served (max_staleness=1)
        assert 0 in versions.values() and set(versions.values()) <= {0, 1}
    else:
        assert sorted(versions.values()) == [0, 1]
    assert result.checkpoint == tmp_path / "checkpoints" / "checkpoint-000002"


class EngineKillingAgent:
    """Completes a prompt through the proxy (reward: the completion's token ids summed, modulo 101, over 100: groups
    rarely tie, so every update moves the policy); SIGKILLs the vLLM server before its ``kill_at``-th call."""

    name = "toy"

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.calls = 0
        self.killed: list[psutil.Process] = []
        self._lock = threading.Lock()

    def __call__(self, task: dict[str, Any], ctx: agl.TrainingContext) -> float:
        with self._lock:
            self.calls += 1
            if self.calls == self.kill_at:
                server = _vllm_server()
                self.killed = [server, *server.children(recursive=True)]
                server.send_signal(signal.SIGKILL)
                while server.status() != psutil.STATUS_ZOMBIE:  # dead; the engine reaps it (psutil's wait would)
                    time.sleep(0.05)
        llm = ctx.llm()
        body = {"model": llm.model, "prompt": task["prompt"], "max_tokens": 3, "temperature": 1.0}
        response = httpx.post(f"{llm.endpoint}/completions", json={**body, "return_token_ids": True}, timeout=300)
        response.raise_for_status()
        return sum(response.json()["choices"][0]["token_ids"]) % 101 / 100


def _vllm_server() -> psutil.Process:
    """The vLLM server this test process started (the engine's child process)."""
    servers = [c for c in psutil.Process().children() if "vllm.entrypoints.openai.api_server" in " ".join(c.cmdline())]
    assert len(servers) == 1, servers
    return servers[0]


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class CheckedSync(GroupRelativePolicyOptimization):
    """GRPO that, after each weight sync, asks vLLM for a greedy completion of ``PROBE`` (with its log-probs) and the
    learner for its own greedy completion and its log-probs of vLLM's, and keeps them in ``checks``."""

    PROBE = "The capital of France is"

    def __init__(self, config: GRPOConfig) -> None:
        super().__init__(config=config)
        self.checks: list[dict[str, Any]] = []

    def _sync_engine(self, engine: Any, version: str) -> None:
        super()._sync_engine(engine, version)
        assert self.learner is not None
        prompt = list(self.tokenizer(self.PROBE, add_special_tokens=False)["input_ids"])
        body = {"model": self.config.model, "prompt": prompt, "max_tokens": 8, "temperature": 0.0, "logprobs": 1}
        response = httpx.post(f"{engine.url}/completions", json={**body, "return_token_ids": True}, timeout=300)
        response.raise_for_status()
        choice = response.json()["choices"][0]
        served = list(choice["token_ids"])
        model = self.learner.model
        first = self.checks[0]["served"] if self.checks else served
        with torch.no_grad():
            greedy = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        self.checks.append(
            {
                "dtype": engine.dtype,
                "version": response.headers[MODEL_VERSION_HEADER],
                "synced": version,
                "adapter": engine.stats()["adapter"],
                "served": served,
                "served_logprobs": choice["logprobs"]["token_logprobs"],
                "learner": greedy[0, len(prompt) :].tolist(),
                "learner_logprobs": _forced(model, prompt, served),
                "first_logprobs": _forced(model, prompt, first),  # of this run's first served completion
            }
        )


@torch.no_grad()
def _forced(model: Any, prompt: list[int], completion: list[int]) -> list[float]:
    """The log-probs ``model`` gives each token of ``completion`` after ``prompt``."""
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def _gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _assert_served_the_learner(checks: list[dict[str, Any]]) -> None:
    """After every sync vLLM served the new version, a newly loaded adapter, and generated what the learner does."""
    assert [c["version"] for c in checks] == [c["synced"] for c in checks]
    assert len({c["synced"] for c in checks}) == len(checks)
    for check in checks:
        assert check["served"] == check["learner"], check  # exactly the learner's greedy completion
        assert _gap(check["served_logprobs"], check["learner_logprobs"]) < 0.02, check
    assert len({c["adapter"] for c in checks}) == len(checks) and None not in {c["adapter"] for c in checks}
    # the learner moved, so a stale adapter (or none) could not have given the log-probs above
    assert _gap(checks[0]["first_logprobs"], checks[-1]["first_logprobs"]) > 0.1, checks


def _stored(run: Path) -> dict[str, tuple[str, str | None, list[tuple[str, str, Any]]]]:
    """Each rollout of the run folder's store: status, resources id, and its spans (id, kind, completion ids)."""
    sync = SyncStore(agl.open_store(f"sqlite:///{run / 'store.db'}"))
    return {
        r.rollout_id: (
            r.status,
            r.resources_id,
            sorted(
                (s.span_id, s.kind, s.attributes.get(semconv.COMPLETION_TOKEN_IDS))
                for s in sync.query_spans(r.rollout_id)
            ),
        )
        for r in sync.query_rollouts(limit=100)
    }


def test_lora_grpo_on_vllm_survives_the_engine_being_killed_and_resumes(model_folder: str, tmp_path: Path) -> None:
    """GRPO training a LoRA adapter, served by vLLM, which is SIGKILLed in iteration 2.

    Every sync loads the new adapter at run time and vLLM then generates exactly what the learner does; each rollout
    records the version that answered it. The kill stops the run with EngineError and vLLM's last log lines; every
    stored rollout and span and iteration 1's checkpoint stay; the same run started again resumes there, serves the
    weights it had reached, and finishes."""
    config = GRPOConfig(
        model=model_folder,
        engine="vllm",
        engine_options={"max_model_len": 512},  # no dtype: the engine serves in the learner's, fp32
        lora=LoraSettings(r=8, alpha=16),
        learning_rate=2e-2,
        group_size=2,
        tasks_per_iteration=2,
        max_new_tokens=3,
        async_rollouts=False,  # the kill lands in iteration 2's first rollout, which synchronous collection fixes
    )
    run, checkpoints = tmp_path / "run", tmp_path / "checkpoints"

    def trainer(algorithm: CheckedSync, agent: EngineKillingAgent) -> Trainer:  # default store: the run's SQLite
        return Trainer(
            algorithm=algorithm, agent=agent, train_dataset=[{"prompt": p} for p in PROMPTS], n_runners=2, run_dir=run
        )

    first, killer = CheckedSync(config), EngineKillingAgent(kill_at=5)  # iteration 2's first rollout (4 each)
    with pytest.raises(EngineError, match=r"vLLM died \(exit status -9\):\n    ") as failure:
        trainer(first, killer).train(num_iterations=2, checkpoint_dir=checkpoints)
    assert len(str(failure.value).splitlines()) > 5  # vLLM's last log lines
    assert len(killer.killed) > 1  # the server, and the engine core and worker it started
    # stopping the engine killed what the dead server had started (a killed process takes a moment to exit)
    deadline = time.monotonic() + 30
    while (alive := [p for p in killer.killed if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive
    assert len(first.checks) == 2  # the starting adapter, and iteration 1's
    assert {c["dtype"] for c in first.checks} == {"float32"}
    _assert_served_the_learner(first.checks)
    assert [c.name for c in checkpoints.iterdir()] == ["checkpoint-000001"]
    crashed = _stored(run)
    trained = {k: v for k, v in crashed.items() if v[0] == "succeeded"}
    assert len(trained) == 4 and len(crashed) == 8  # iteration 1's rollouts, and iteration 2's that failed
    for _, resources_id, spans in trained.values():
        assert resources_id == first.checks[0]["synced"]
        assert [kind for _, kind, ids in spans if kind == "llm" and ids] == ["llm"]

    again = CheckedSync(config)
    result = trainer(again, EngineKillingAgent(kill_at=None)).train(num_iterations=2, checkpoint_dir=checkpoints)
    assert result.iterations == 2 and not result.interrupted
    assert [m["step"] for m in result.metrics][-1] == 2.0 and result.metrics[-1]["train/failed_rollouts"] == 0.0
    assert result.checkpoint == checkpoints / "checkpoint-000002"
    assert len(again.checks) == 2
    _assert_served_the_learner(again.checks)
    # it resumed serving the weights the killed run had reached
    assert again.checks[0]["served"] == first.checks[-1]["served"]
    assert _gap(again.checks[0]["served_logprobs"], first.checks[-1]["served_logprobs"]) < 0.02
    resumed = _stored(run)
    assert {k: resumed[k] for k in crashed} == crashed  # nothing the killed run stored was lost or changed
    sync = SyncStore(agl.open_store(f"sqlite:///{run / 'store.db'}"))
    new = [r for r in sync.query_rollouts(limit=100) if r.rollout_id not in crashed]
    assert len(new) == 4 and {r.status for r in new} == {"succeeded"}
    for rollout in new:  # each records the version that answered it: the resumed run's first
        assert rollout.resources_id == again.checks[0]["synced"]
        llm = [s for s in sync.query_spans(rollout.rollout_id) if s.kind == "llm"]
        assert len(llm) == 1 and llm[0].attributes[semconv.RESOURCES_ID] == rollout.resources_id
        assert sync.get_resources(rollout.resources_id).metadata["agl.policy_version"] == 1
