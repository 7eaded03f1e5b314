"""Scoped credentials, finished attempts, key files, TLS and the proxy's key, over real HTTP."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from agent_lightning import semconv
from agent_lightning.errors import InvalidTransition
from agent_lightning.secrets import mask, read_secret, redact_url, register_secret
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import (
    AttemptCompletion,
    AttemptedRollout,
    RolloutConfig,
    RolloutRequest,
    Span,
)
from agent_lightning_http import HttpLightningStore, StoreAuthError, StoreServer
from agent_lightning_proxy import LLMProxy
from agent_lightning_proxy.tokens import TokenSigner, derive_token_secret
from agent_lightning_testkit.conformance import make_span
from agent_lightning_testkit.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.timeout(120)
ADMIN = "admin-key-for-tests"
LONG = RolloutConfig(lease_seconds=3600)


@pytest.fixture
def server(store: InMemoryLightningStore) -> Iterator[StoreServer]:
    with StoreServer(store, api_key=ADMIN) as running:
        yield running


def span(attempted: AttemptedRollout, sequence_id: int, reward: float | None = None, name: str | None = None) -> Span:
    return make_span(attempted.rollout_id, attempted.attempt_id, sequence_id, name=name, reward=reward)


def claim_two(server: StoreServer) -> tuple[HttpLightningStore, AttemptedRollout, AttemptedRollout]:
    admin = HttpLightningStore(server.url, api_key=ADMIN)

    async def main() -> tuple[AttemptedRollout, AttemptedRollout]:
        await admin.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)])
        first, second = await admin.claim_rollout("w"), await admin.claim_rollout("w")
        assert first is not None and second is not None
        return first, second

    first, second = asyncio.run(main())
    return admin, first, second


# ---------------------------------------------------------------------- attempt tokens
def test_an_attempt_token_writes_spans_to_its_attempt_only(server: StoreServer) -> None:
    admin, mine, other = claim_two(server)
    token = admin.attempt_token(mine.rollout_id, mine.attempt_id)
    assert token is not None, "the client keeps the token the claim answered with"
    agent = HttpLightningStore(server.url, api_key=token)

    async def main() -> None:
        assert await agent.add_spans([span(mine, 1), span(mine, 2, reward=1.0)]) == 2
        assert len(await agent.query_spans(mine.rollout_id)) == 2
        await agent.heartbeat(mine.rollout_id, mine.attempt_id)
        with pytest.raises(StoreAuthError, match="does not belong"):
            await agent.add_spans([span(other, 1, reward=1000.0)])  # a forged reward elsewhere
        with pytest.raises(StoreAuthError, match="only"):
            await agent.query_spans(other.rollout_id)
        with pytest.raises(StoreAuthError, match="may not call"):
            await agent.enqueue_rollouts([RolloutRequest(input=9)])
        with pytest.raises(StoreAuthError, match="may not call"):
            await agent.claim_rollout("w")
        with pytest.raises(StoreAuthError, match="only"):
            await agent.complete_attempt(other.rollout_id, other.attempt_id, "failed")
        assert await admin.query_spans(other.rollout_id) == []
        assert (await admin.get_rollout(other.rollout_id)).status == "running"
        # its own attempt it may complete, once: a finished attempt stays as it is
        await agent.complete_attempt(mine.rollout_id, mine.attempt_id, "succeeded")
        with pytest.raises(InvalidTransition):
            await agent.complete_attempt(mine.rollout_id, mine.attempt_id, "failed")
        with pytest.raises(InvalidTransition, match="reward cannot be changed"):
            await agent.add_spans([span(mine, 3, reward=5.0)])
        assert (await admin.get_attempts(mine.rollout_id))[0].status == "succeeded"

    asyncio.run(main())


def test_a_batch_claim_hands_out_each_attempts_token_and_tokens_may_not_batch(server: StoreServer) -> None:
    admin = HttpLightningStore(server.url, api_key=ADMIN)

    async def main() -> None:
        await admin.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(4)])
        claimed = await admin.claim_rollouts("w", 3)
        assert len(claimed) == 3
        tokens = [admin.attempt_token(c.rollout_id, c.attempt_id) for c in claimed]
        assert all(tokens) and len(set(tokens)) == 3, "one token per claimed attempt"
        signer = TokenSigner.for_admin_key(ADMIN)
        for item, token in zip(claimed, tokens, strict=True):
            assert token is not None
            scope = signer.verify(token)
            assert scope is not None and (scope.rollout_id, scope.attempt_id) == (item.rollout_id, item.attempt_id)
        mine = claimed[0]
        agent = HttpLightningStore(server.url, api_key=tokens[0])
        assert await agent.add_spans([span(mine, 1)]) == 1
        with pytest.raises(StoreAuthError, match="may not call"):
            await agent.claim_rollouts("w", 1)
        with pytest.raises(StoreAuthError, match="may not call"):
            await agent.complete_attempts(
                [AttemptCompletion(rollout_id=mine.rollout_id, attempt_id=mine.attempt_id, status="succeeded")]
            )
        assert [a.status for a in await admin.get_attempts(mine.rollout_id)] == ["running"]
        assert len(await admin.claim_rollouts("w", 3)) == 1, "the agent's refused claim took nothing"
        await admin.close()
        await agent.close()

    asyncio.run(main())


def test_forged_and_expired_tokens_get_401(server: StoreServer) -> None:
    admin, mine, _ = claim_two(server)
    forged = TokenSigner(b"not the server's secret").issue(mine.rollout_id, mine.attempt_id)
    expired = TokenSigner.for_admin_key(ADMIN).issue(mine.rollout_id, mine.attempt_id, ttl=1e-9)
    token = admin.attempt_token(mine.rollout_id, mine.attempt_id)
    assert token is not None
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with httpx.Client(base_url=server.url) as http:
        for bad in (forged, tampered):
            answer = http.post("/v1/get_rollout", json={"rollout_id": mine.rollout_id}, headers={"x-api-key": bad})
            assert answer.status_code == 401
        answer = http.post("/v1/get_rollout", json={"rollout_id": mine.rollout_id}, headers={"x-api-key": expired})
        assert answer.status_code == 401 and "expired" in answer.json()["error"]["message"]


def test_issue_token_needs_the_admin_key_and_an_existing_attempt(server: StoreServer) -> None:
    admin, mine, _ = claim_two(server)
    token = asyncio.run(admin.issue_token(mine.rollout_id, mine.attempt_id, ttl=60))
    scope = TokenSigner.for_admin_key(ADMIN).verify(token)
    assert scope is not None and (scope.rollout_id, scope.attempt_id) == (mine.rollout_id, mine.attempt_id)
    with pytest.raises(StoreAuthError):
        asyncio.run(HttpLightningStore(server.url, api_key=token).issue_token(mine.rollout_id, mine.attempt_id))
    with pytest.raises(Exception, match="no attempt"):
        asyncio.run(admin.issue_token(mine.rollout_id, "at-nope"))


# ---------------------------------------------------------------------- finished attempts
def test_a_finished_attempt_keeps_its_reward_and_spans(server: StoreServer) -> None:
    admin, mine, _ = claim_two(server)
    step, reward = span(mine, 1), span(mine, 2, reward=0.0)

    async def main() -> None:
        await admin.add_spans([step, reward])
        await admin.complete_attempt(mine.rollout_id, mine.attempt_id, "succeeded")
        with pytest.raises(InvalidTransition, match="reward cannot be changed"):
            await admin.add_spans([span(mine, 3, reward=1000.0)])
        with pytest.raises(InvalidTransition, match="cannot be changed"):
            await admin.add_spans(
                [reward.model_copy(update={"attributes": {semconv.REWARD_VALUE: 1000.0}})]
            )  # overwrite by span id
        with pytest.raises(InvalidTransition, match="cannot be changed"):
            await admin.add_spans([step.model_copy(update={"name": "rewritten"})])
        assert await admin.add_spans([step, reward]) == 2, "the same spans sent again are accepted"
        assert await admin.add_spans([span(mine, 4, name="late llm call")]) == 1, "a late span is accepted"
        stored = await admin.query_spans(mine.rollout_id)
        assert [s.reward for s in stored if s.kind == "reward"] == [0.0]
        assert {s.name for s in stored} == {"step-1", "step-2", "late llm call"}

    asyncio.run(main())


# ---------------------------------------------------------------------- keys from files, masking
def test_secrets_are_read_from_files_and_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file-123\n")
    assert read_secret(file=key_file, env="AGL_NOPE") == "from-a-file-123"
    monkeypatch.setenv("AGL_TEST_SECRET", "from-the-env-456")
    assert read_secret(env="AGL_TEST_SECRET") == "from-the-env-456"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_secret(file=tmp_path / "empty")
    register_secret("registered-789")
    text = mask("key from-a-file-123, registered-789, redis://:pw123@h:1/0, postgresql://u:p@h/db")
    assert text == "key ***, ***, redis://:***@h:1/0, postgresql://u:***@h/db"
    assert redact_url("postgresql://u:p@[::1]:5/db") == "postgresql://u:***@[::1]:5/db"


def test_agl_store_serve_takes_its_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("key-from-file-abc\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_lightning_http",
            "--store",
            "memory://",
            "--port",
            "0",
            "--api-key-file",
            key_file,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        with httpx.Client(base_url=url) as http:
            assert http.post("/v1/get_latest_resources").status_code == 401
            ok = http.post("/v1/get_latest_resources", headers={"authorization": "Bearer key-from-file-abc"})
            assert ok.status_code == 200
            assert http.get("/health").json() == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(10)


# ---------------------------------------------------------------------- TLS
def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_the_store_server_serves_https_with_its_own_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    store = InMemoryLightningStore()
    with StoreServer(store, api_key=ADMIN, ssl_certfile=cert, ssl_keyfile=key) as server:
        assert server.url.startswith("https://127.0.0.1:")
        client = HttpLightningStore(server.url, api_key=ADMIN, ca_file=cert)
        rollout = asyncio.run(client.enqueue_rollout(input=1))
        assert asyncio.run(store.get_rollout(rollout.rollout_id)).input == 1
        unverified = HttpLightningStore(server.url, api_key=ADMIN, retry_timeout=0.5)  # the system's CAs
        with pytest.raises(Exception, match="(?i)certificate"):
            asyncio.run(unverified.get_latest_resources())
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.post(server.url.replace("https", "http") + "/v1/get_latest_resources", timeout=2)
        verify = ssl.create_default_context(cafile=cert)
        assert httpx.get(server.url + "/health", verify=verify).json() == {"status": "ok"}


# ---------------------------------------------------------------------- the proxy
@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(lambda call: f"echo: {call.last_user_text}") as llm:
        yield llm


def test_the_proxy_needs_its_key_or_an_attempt_token(server: StoreServer, upstream: ScriptedLLM) -> None:
    admin, mine, other = claim_two(server)
    token = admin.attempt_token(mine.rollout_id, mine.attempt_id)
    assert token is not None
    proxy = LLMProxy(admin, upstream.url, api_key="proxy-key-xyz", token_secret=derive_token_secret(ADMIN))
    with proxy:
        messages: Any = [{"role": "user", "content": "hi"}]
        with httpx.Client() as http:
            assert http.get(proxy.url.removesuffix("/v1") + "/health").json() == {"status": "ok"}
            keyless = http.post(f"{proxy.url}/chat/completions", json={"model": "m", "messages": messages})
            assert keyless.status_code == 401
            forged = http.post(
                proxy.base_url(other.rollout_id) + "/chat/completions",
                json={"model": "m", "messages": messages},
                headers={"x-agl-token": token},
            )
            assert forged.status_code == 403, "a token cannot attribute calls to another rollout"
            wrong = TokenSigner(b"other").issue(other.rollout_id, other.attempt_id)
            assert (
                http.post(
                    proxy.base_url(other.rollout_id, token=wrong) + "/chat/completions",
                    json={"model": "m", "messages": messages},
                ).status_code
                == 401
            )
        # an agent holding only the token (in its base URL, like a pre-signed URL)
        agent = openai.OpenAI(base_url=proxy.base_url(mine.rollout_id, mine.attempt_id, token=token), api_key="x")
        reply = agent.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content == "echo: hi"
        # the trainer, with the proxy's key, may attribute to any rollout
        trainer = openai.OpenAI(base_url=proxy.base_url(other.rollout_id), api_key="proxy-key-xyz")
        trainer.chat.completions.create(model="m", messages=messages)
        assert proxy.flush()
    llm_spans = lambda a: [s for s in asyncio.run(admin.query_spans(a.rollout_id)) if s.kind == "llm"]  # noqa: E731
    assert len(llm_spans(mine)) == 1 and len(llm_spans(other)) == 1
    assert all(s.attempt_id == mine.attempt_id for s in llm_spans(mine))
