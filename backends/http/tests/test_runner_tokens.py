"""Runner tokens: a runner claims, reads resources and works on its own attempts without the admin key."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from agent_lightning.errors import InvalidTransition
from agent_lightning.instrumentation.context import ATTEMPT_TOKEN_ENV
from agent_lightning.retry import is_permanent
from agent_lightning.runner import Runner
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import (
    LLM,
    AttemptCompletion,
    AttemptedRollout,
    PromptTemplate,
    RolloutConfig,
    RolloutRequest,
    Span,
)
from agent_lightning_http import HttpLightningStore, StoreAuthError, StoreServer
from agent_lightning_http.auth import RUNNER_ENDPOINTS, TokenSigner
from agent_lightning_http.protocol import ATTEMPT_TOKEN_ENV as HTTP_ATTEMPT_TOKEN_ENV
from agent_lightning_proxy import LLMProxy
from agent_lightning_proxy.tokens import derive_token_secret
from agent_lightning_testkit.conformance import make_span
from agent_lightning_testkit.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.timeout(120)
ADMIN = "admin-key-for-runner-tests"
LONG = RolloutConfig(lease_seconds=3600)


@pytest.fixture
def server(store: InMemoryLightningStore) -> Iterator[StoreServer]:
    with StoreServer(store, api_key=ADMIN) as running:
        yield running


def span(attempted: AttemptedRollout, sequence_id: int, reward: float | None = None, name: str | None = None) -> Span:
    return make_span(attempted.rollout_id, attempted.attempt_id, sequence_id, name=name, reward=reward)


def runner_token(server: StoreServer, **options: Any) -> str:
    token, expires = asyncio.run(HttpLightningStore(server.url, api_key=ADMIN).issue_runner_token(**options))
    assert token.startswith("aglr1.") and expires > 0
    return token


# ---------------------------------------------------------------------- what a runner token may do
def test_a_runner_token_claims_and_works_on_its_own_attempts_only(server: StoreServer) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)
    runner = HttpLightningStore(server.url, api_key=runner_token(server, name="box-1", ttl=600))

    async def main() -> None:
        snapshot = await admin.add_resources({"prompt": PromptTemplate(template="{x}")})
        await admin.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)])
        mine = await runner.claim_rollout("runner-1")
        other = await admin.claim_rollout("someone-else")
        assert mine is not None and other is not None
        assert (await runner.get_latest_resources()) == snapshot
        assert (await runner.get_resources(snapshot.resources_id)) == snapshot
        # the calls about its attempt go with the attempt token the claim answered with
        await runner.heartbeat(mine.rollout_id, mine.attempt_id)
        assert await runner.add_spans([span(mine, 1), span(mine, 2, reward=1.0)]) == 2
        assert len(await runner.query_spans(mine.rollout_id)) == 2
        assert (await runner.get_rollout(mine.rollout_id)).status == "running"
        assert [a.attempt_id for a in await runner.get_attempts(mine.rollout_id)] == [mine.attempt_id]
        # another worker's attempt: no reward, no completion, no reads
        with pytest.raises(StoreAuthError, match="may not call add_spans") as refused:
            await runner.add_spans([span(mine, 3), span(other, 1, reward=1000.0)])
        assert is_permanent(refused.value), "the span emitter sets refused spans aside rather than retrying them"
        with pytest.raises(StoreAuthError):
            await runner.complete_attempt(other.rollout_id, other.attempt_id, "failed")
        with pytest.raises(StoreAuthError):
            await runner.heartbeat(other.rollout_id, other.attempt_id)
        with pytest.raises(StoreAuthError):
            await runner.get_rollout(other.rollout_id)
        assert await admin.query_spans(other.rollout_id) == []
        assert (await admin.get_attempts(other.rollout_id))[0].status == "running"
        # its own attempt it completes, once
        assert (await runner.complete_attempt(mine.rollout_id, mine.attempt_id, "succeeded")).status == "succeeded"
        with pytest.raises(InvalidTransition):
            await runner.complete_attempt(mine.rollout_id, mine.attempt_id, "failed")
        with pytest.raises(InvalidTransition, match="reward cannot be changed"):
            await runner.add_spans([span(mine, 4, reward=1000.0)])
        rewards = [s.reward for s in await admin.query_spans(mine.rollout_id) if s.kind == "reward"]
        assert rewards == [1.0]

    asyncio.run(main())


def test_a_runner_token_claims_and_completes_a_batch_with_each_attempts_own_token(server: StoreServer) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)
    runner = HttpLightningStore(server.url, api_key=runner_token(server, name="box-2", ttl=600))

    async def main() -> None:
        await admin.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(4)])
        other = await admin.claim_rollout("someone-else")
        mine = await runner.claim_rollouts("runner-2", 5)
        assert other is not None and len(mine) == 3
        for attempted in mine:  # the batch answer carried one token per attempt
            assert runner.attempt_token(attempted.rollout_id, attempted.attempt_id) is not None
            assert await runner.add_spans([span(attempted, 1, reward=0.5)]) == 1
        done = await runner.complete_attempts(
            [AttemptCompletion(rollout_id=a.rollout_id, attempt_id=a.attempt_id, status="succeeded") for a in mine]
        )
        assert [r.status for r in done] == ["succeeded"] * 3
        with pytest.raises(StoreAuthError):  # another worker's attempt, in a batch or not
            await runner.complete_attempts(
                [AttemptCompletion(rollout_id=other.rollout_id, attempt_id=other.attempt_id, status="failed")]
            )
        assert (await admin.get_attempts(other.rollout_id))[0].status == "running"

    asyncio.run(main())


def test_a_runner_token_gets_403_for_everything_else(server: StoreServer) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)
    runner = HttpLightningStore(server.url, api_key=runner_token(server))

    async def main() -> None:
        rollout = await admin.enqueue_rollout(input=1)
        forbidden: dict[str, Any] = {
            "enqueue_rollouts": runner.enqueue_rollouts([RolloutRequest(input=2)]),
            "start_rollout": runner.start_rollout(RolloutRequest(input=3)),
            "add_resources": runner.add_resources({"p": PromptTemplate(template="x")}),
            "query_rollouts": runner.query_rollouts(),
            "count_rollouts": runner.count_rollouts(),
            "cancel_rollout": runner.cancel_rollout(rollout.rollout_id),
            "reap_expired": runner.reap_expired(),
            "wait_for_rollouts": runner.wait_for_rollouts([rollout.rollout_id], timeout=0),
            "subscribe": runner.subscribe("group"),
            "list_subscriptions": runner.list_subscriptions(),
            "issue_token": runner.issue_token(rollout.rollout_id, "at-x"),
            "issue_runner_token": runner.issue_runner_token(),
        }
        for method, call in forbidden.items():
            with pytest.raises(StoreAuthError, match=f"a runner token may not call {method}: it may call") as caught:
                await call
            assert all(allowed in str(caught.value) for allowed in RUNNER_ENDPOINTS)
        assert (await admin.get_rollout(rollout.rollout_id)).status == "queuing"
        assert await admin.count_rollouts() == {"default": {"queuing": 1}}
        assert await admin.get_latest_resources() is None

    asyncio.run(main())


def test_the_runner_token_itself_does_not_reach_an_attempt(server: StoreServer) -> None:
    token = runner_token(server)
    runner = HttpLightningStore(server.url, api_key=token)
    asyncio.run(HttpLightningStore(server.url, api_key=ADMIN).enqueue_rollout(input=1, config=LONG))
    mine = asyncio.run(runner.claim_rollout("r"))
    assert mine is not None
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"}) as http:
        answer = http.post("/v1/heartbeat", json={"rollout_id": mine.rollout_id, "attempt_id": mine.attempt_id})
        assert answer.status_code == 403
        assert "x-agl-attempt-token" in answer.json()["error"]["message"]


def test_expired_tampered_and_forged_runner_tokens_get_401(server: StoreServer) -> None:
    token = runner_token(server)
    signer = TokenSigner.for_admin_key(ADMIN)
    expired = signer.issue_runner("old", ttl=1e-9)
    forged = TokenSigner(b"not the server's secret").issue_runner("box")
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    attempt = signer.issue("ro-1", "at-1")
    relabelled = "aglr1." + attempt.split(".", 1)[1]  # an attempt token's signature does not make a runner token
    with httpx.Client(base_url=server.url) as http:
        for bad in (expired, forged, tampered, relabelled):
            answer = http.post("/v1/claim_rollout", json={"worker_id": "w"}, headers={"x-api-key": bad})
            assert answer.status_code == 401, bad
            assert "invalid or expired runner token" in answer.json()["error"]["message"]
        assert http.post("/v1/claim_rollout", json={"worker_id": "w"}, headers={"x-api-key": token}).json() is None
    with pytest.raises(StoreAuthError, match="invalid or expired runner token"):
        asyncio.run(HttpLightningStore(server.url, api_key=expired).claim_rollout("w"))


def test_a_runner_token_for_some_task_types_claims_only_those(server: StoreServer) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)
    runner = HttpLightningStore(server.url, api_key=runner_token(server, task_types=["math"]))

    async def main() -> None:
        code = await admin.enqueue_rollout(input=1, task_type="code")
        math = await admin.enqueue_rollout(input=2, task_type="math")
        claimed = await runner.claim_rollout("r")
        assert claimed is not None and claimed.rollout_id == math.rollout_id
        assert await runner.claim_rollout("r") is None, "the code rollout is not this token's to claim"
        with pytest.raises(StoreAuthError, match=r"task types \['math'\] only, not \['code'\]"):
            await runner.claim_rollout("r", task_types=["code", "math"])
        taken = await admin.claim_rollout("w")
        assert taken is not None and taken.rollout_id == code.rollout_id

    asyncio.run(main())


def test_issuing_a_runner_token_needs_the_admin_key(server: StoreServer) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)
    token, expires = asyncio.run(admin.issue_runner_token("box-2", ttl=120, task_types=["a", "b"]))
    scope = TokenSigner.for_admin_key(ADMIN).verify_runner(token)
    assert scope is not None and scope.name == "box-2" and scope.task_types == ("a", "b")
    assert scope.expires == expires
    with pytest.raises(ValueError):
        asyncio.run(admin.issue_runner_token(ttl=0))
    with pytest.raises(ValueError):
        asyncio.run(admin.issue_runner_token(task_types=[]))
    asyncio.run(admin.enqueue_rollout(input=1, config=LONG))
    claimed = asyncio.run(admin.claim_rollout("w"))
    assert claimed is not None
    attempt = admin.attempt_token(claimed.rollout_id, claimed.attempt_id)
    with pytest.raises(StoreAuthError, match="may not call issue_runner_token"):
        asyncio.run(HttpLightningStore(server.url, api_key=attempt).issue_runner_token())
    assert HTTP_ATTEMPT_TOKEN_ENV == ATTEMPT_TOKEN_ENV


# ---------------------------------------------------------------------- the proxy, with a runner's attempt token
@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(lambda call: f"echo: {call.last_user_text}") as llm:
        yield llm


def test_an_agent_of_a_runner_with_a_runner_token_calls_through_the_proxy(
    server: StoreServer, upstream: ScriptedLLM
) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)
    token = runner_token(server, name="box-3")
    store = HttpLightningStore(server.url, api_key=token)
    proxy = LLMProxy(admin, upstream.url, api_key="proxy-key-xyz", token_secret=derive_token_secret(ADMIN))
    endpoints: list[str] = []

    def agent(task: str, ctx: Any) -> float:
        endpoint = ctx.llm().endpoint
        endpoints.append(endpoint)
        client = openai.OpenAI(base_url=endpoint, api_key="unused")
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": task}])
        return 1.0 if reply.choices[0].message.content == f"echo: {task}" else 0.0

    with proxy:
        # the runner token is no credential of the proxy
        refused = httpx.post(
            f"{proxy.url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {token}"},
        )
        assert refused.status_code == 401
        asyncio.run(admin.add_resources({"main": LLM(endpoint=proxy.url, model="m")}))
        rollout = asyncio.run(admin.enqueue_rollout(input="hello", config=LONG))
        runner = Runner(agent, store, worker_id="runner-proxy")
        assert runner.run(max_rollouts=1, idle_timeout=30) == 1
        assert runner.completed == 1, runner.claim_error
        assert proxy.flush()
    done = asyncio.run(admin.wait_for_rollouts([rollout.rollout_id], timeout=20))
    assert [r.status for r in done] == ["succeeded"]
    (attempt,) = asyncio.run(admin.get_attempts(rollout.rollout_id))
    assert attempt.status == "succeeded" and attempt.worker_id == "runner-proxy"
    assert "/token/aglt1." in endpoints[0], "the agent's base URL carries its attempt's token"
    spans = asyncio.run(admin.query_spans(rollout.rollout_id))
    assert [s.attempt_id for s in spans if s.kind == "llm"] == [attempt.attempt_id]
    assert [s.reward for s in spans if s.kind == "reward"] == [1.0]


# ---------------------------------------------------------------------- agl store serve + agl runner, for real
def _agl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_lightning.cli", *args], capture_output=True, text=True, timeout=90, env=env
    )


@pytest.mark.slow
def test_agl_runner_with_only_a_runner_token(tmp_path: Path) -> None:
    admin_key = tmp_path / "admin.key"
    admin_key.write_text("admin-key-for-agl-runner\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning_http", "--store", "memory://", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**env, "AGL_STORE_API_KEY": "admin-key-for-agl-runner"},
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" at ")[1].split()[0]
        token_file = tmp_path / "runner.token"
        issued = _agl(
            *("store", "token", "--runner", "--store", url, "--api-key-file", str(admin_key)),
            *("--name", "box-4", "--ttl", "1h", "--output", str(token_file)),
            env=env,
        )
        assert issued.returncode == 0, issued.stderr
        assert "wrote a runner token" in issued.stderr and issued.stdout == ""
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().startswith("aglr1.")

        admin = HttpLightningStore(url, api_key="admin-key-for-agl-runner")
        first, second = asyncio.run(admin.enqueue_rollouts([RolloutRequest(input=3), RolloutRequest(input=4)]))
        (tmp_path / "scoring.py").write_text(
            "import agent_lightning as agl\n\ndef agent(task):\n    agl.emit_reward(task / 10)\n"
        )
        (tmp_path / "script.py").write_text(
            "import json, os\n"
            "import agent_lightning as agl\n\n"
            "with agl.TrainingContext():\n"
            "    agl.emit_reward(json.loads(os.environ['AGL_TASK_INPUT']) / 10)\n"
        )
        runner_env = {**env, "AGL_STORE_API_KEY_FILE": str(token_file), "PYTHONPATH": str(tmp_path)}
        for agent in ("scoring:agent", str(tmp_path / "script.py")):  # in process, then as a child process
            ran = _agl("runner", agent, "--store", url, "--max-rollouts", "1", "--idle-timeout", "20", env=runner_env)
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert "(1 succeeded, 0 failed)" in ran.stdout, ran.stdout + ran.stderr
        done = asyncio.run(admin.wait_for_rollouts([first.rollout_id, second.rollout_id], timeout=20))
        assert [r.status for r in done] == ["succeeded", "succeeded"]
        for rollout, reward in ((first, 0.3), (second, 0.4)):
            (attempt,) = asyncio.run(admin.get_attempts(rollout.rollout_id))
            assert attempt.status == "succeeded"
            spans = asyncio.run(admin.query_spans(rollout.rollout_id))
            assert [s.reward for s in spans if s.kind == "reward"] == [reward]

        listed = _agl("runs", "--store", url, env=runner_env)  # reading every rollout needs the admin key
        assert listed.returncode == 1 and "may not call query_rollouts" in listed.stderr, listed.stderr

        (attempt,) = asyncio.run(admin.get_attempts(first.rollout_id))
        ask = ("store", "token", "--store", url, "--attempt", first.rollout_id, attempt.attempt_id, "--ttl", "90m")
        printed = _agl(*ask, env={**env, "AGL_STORE_API_KEY": "admin-key-for-agl-runner"})
        assert printed.returncode == 0, printed.stderr
        scope = TokenSigner.for_admin_key("admin-key-for-agl-runner").verify(printed.stdout.strip())
        assert scope is not None and (scope.rollout_id, scope.attempt_id) == (first.rollout_id, attempt.attempt_id)
        refused = _agl(*ask, env=runner_env)
        assert refused.returncode == 1 and "may not call issue_token" in refused.stderr, refused.stderr
        misused = _agl(*ask, "--name", "x", env=runner_env)
        assert misused.returncode == 1 and "--name and --task-type go with --runner" in misused.stderr
    finally:
        server.terminate()
        server.wait(10)
