"""Reflective evolution with the scripted upstream as the optimizer model (deterministic edits)."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import agent_lightning as agl
import pytest
from agent_lightning_apo import ReflectConfig, ReflectiveEvolution
from agent_lightning_apo.optimizer import OptimizerUnavailable, extract_prompt
from conftest import ScriptCall, ScriptedLLM, split

SEED = "Solve the math problem and reply 'ANSWER: <number>'."
WORSE = SEED + " Never use tools."
BETTER = SEED + " ALWAYS call the calculator."


def test_edits_are_gated_on_the_minibatch_and_kept_on_the_pareto_front(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 6, 6)
    store, _ = served(train + val)
    edits = itertools.chain([WORSE, BETTER], itertools.repeat(BETTER + " Be brief."))
    requests: list[str] = []

    def optimizer(call: ScriptCall) -> str:
        requests.append(str(call.messages[-1]["content"]))
        return f"Here is the new prompt:\n```\n{next(edits)}\n```"

    with ScriptedLLM(optimizer) as reflector:
        config = ReflectConfig(
            seed_prompt=SEED, seed_examples=[], optimizer_base_url=reflector.url, optimizer_model="scripted",
            optimizer_api_key_env=None, minibatch_size=4, max_proposals=5, rollout_budget=40,
        )  # fmt: skip
        algorithm = ReflectiveEvolution(config)
        agl.Trainer(algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val,
                    run_dir=tmp_path).train()  # fmt: skip
    prompts = {c.candidate_id: c.prompt for c in algorithm.candidates.values()}
    assert prompts["c0"] == SEED and prompts["c1"] == WORSE and prompts["c2"] == BETTER
    # the optimizer read the parent's traces: failed runs first, with the tool calls and the scores
    assert SEED in requests[0] and "Score: 0.1" in requests[0] and "Score: 1" in requests[0]
    assert "[calls calculator(" in requests[0] and train[0]["question"][:20] in "".join(requests)
    rollouts = agl.SyncStore(store).query_rollouts(limit=1000)
    full = {r.metadata["apo.candidate"] for r in rollouts if r.metadata["apo.phase"] == "full"}
    assert "c1" not in full and "c2" in full  # the worse edit lost on its minibatch and never ran on validation
    front = algorithm.front
    assert front is not None and front.front() == ["c2"]  # c2 solves everything: it dominates the seed
    assert set(front.scores) == {"c0", "c2"} and front.scores["c2"] == [1.0] * len(val)
    assert algorithm.best is not None and algorithm.best.candidate_id == "c2"
    # once only c2 is on the front its minibatches are perfect: nothing to reflect on, no further edits spent
    assert algorithm.optimizer is not None and algorithm.optimizer.calls == 2
    assert len(rollouts) == algorithm.spent <= 40
    latest = agl.SyncStore(store).get_latest_resources()
    assert latest is not None and latest.resources["system_prompt"].template == BETTER  # type: ignore[union-attr]


def test_the_budget_stops_the_search_before_it_is_exceeded(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 6, 6)
    store, _ = served(train + val)
    with ScriptedLLM(lambda call: f"```\n{WORSE} v{call.call_index}\n```") as reflector:
        algorithm = ReflectiveEvolution(
            seed_prompt=SEED, seed_examples=[], optimizer_base_url=reflector.url, optimizer_api_key_env=None,
            minibatch_size=3, max_proposals=50, rollout_budget=6 + 3 * 2 * 2 + 5,
        )  # fmt: skip
        agl.Trainer(algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val,
                    run_dir=tmp_path).train()  # fmt: skip
    # seed on validation (6), then two rejected steps of 3 + 3; 5 left is not enough for another step of 6
    assert algorithm.spent == 18 == len(agl.SyncStore(store).query_rollouts(limit=1000))
    assert algorithm.rejected == 2 and algorithm.best is not None and algorithm.best.candidate_id == "c0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_optimizer_endpoint_that_is_down_fails_before_any_rollout(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 4, 4)
    store, _ = served(train + val)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    algorithm = ReflectiveEvolution(seed_prompt=SEED, optimizer_base_url=url)
    trainer = agl.Trainer(
        algorithm, store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val, run_dir=tmp_path
    )
    with pytest.raises(OptimizerUnavailable, match="unreachable") as info:
        trainer.train()
    assert url in str(info.value) and "optimizer_base_url" in str(info.value)
    assert agl.SyncStore(store).query_rollouts() == []


def test_reflection_needs_a_prompt_to_edit(calc: Any, served: Any, tmp_path: Path) -> None:
    tasks, openai_agent = calc
    train, val = split(tasks, 4, 4)
    store, _ = served(train + val)
    trainer = agl.Trainer(
        ReflectiveEvolution(), store=store, agent=openai_agent.agent, train_dataset=train, val_dataset=val,
        run_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ValueError, match="set seed_prompt"):
        trainer.train()


def test_extract_prompt() -> None:
    assert extract_prompt("sure:\n```text\nA {x}\n```") == "A {x}"
    assert extract_prompt("<prompt> B </prompt> and ```C```") == "B"
    assert extract_prompt("  plain  ") == "plain"


def test_plugins_register_the_algorithms_and_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from agent_lightning.algorithms import algorithm_entries, get_algorithm\n"
        "entries = algorithm_entries()\n"
        "assert {'apo', 'gepa', 'apo-reflect'} <= set(entries), sorted(entries)\n"
        "assert entries['apo'].package == 'agent-lightning-apo'\n"
        "get_algorithm('apo', max_demos=2); get_algorithm('gepa', optimizer_model='m')\n"
        "import agent_lightning_apo, agent_lightning_apo.demos, agent_lightning_apo.reflect\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
