"""Each LLM call through the proxy is one span, stored before the call is answered, and credited by time.

Real HTTP throughout: the scripted upstream, the proxy (in this process, or ``agl proxy`` as its own
process on a SQLite store), and agents calling it with plain ``urllib`` or the OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agent_lightning as agl
import pytest
from agent_lightning import semconv
from agent_lightning.store.base import LightningStore
from agent_lightning.store.memory import InMemoryLightningStore
from agent_lightning.types import LLM, Span
from agent_lightning_proxy import LLMProxy
from agent_lightning_testkit.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.timeout(180)
MODEL = "policy-model"


def _ctrl_c_enabled() -> None:
    """In the child, before exec: SIGINT at its default, so Python turns it into KeyboardInterrupt even when the
    tests run from a background job, which starts with SIGINT ignored (and a child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def post_with_id(endpoint: str, question: str) -> tuple[str, str]:
    """One chat completion with the standard library only (no adapter covers this client): answer, record id."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": question}]}).encode()
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = str(json.loads(response.read())["choices"][0]["message"]["content"])
        return answer, str(response.headers["x-agl-span-id"])


def post(endpoint: str, question: str) -> str:
    return post_with_id(endpoint, question)[0]


def spans_of(store: LightningStore, rollout_id: str) -> list[Span]:
    return asyncio.run(store.query_spans(rollout_id))


def episode_of(store: LightningStore, rollout_id: str) -> agl.Episode:
    rollout = asyncio.run(store.get_rollout(rollout_id))
    return agl.build_episode(rollout, spans_of(store, rollout_id))


@contextlib.contextmanager
def proxied_store() -> Iterator[tuple[LightningStore, LLMProxy]]:
    store = InMemoryLightningStore()
    with ScriptedLLM(lambda call: f"echo {call.last_user_text}") as upstream, LLMProxy(store, upstream.url) as proxy:
        asyncio.run(store.add_resources({"policy": LLM(endpoint=proxy.url, model=MODEL)}))
        yield store, proxy


def run_step_agent(store: LightningStore, call: Any) -> agl.TrainingContext:
    """The README's pattern: two calls in a step, the step rewarded; a third call after the step is not."""
    with agl.TrainingContext(task_id="step", store=store) as ctx:
        endpoint = ctx.llm().endpoint
        with agl.span("step") as step:
            assert call(endpoint, "one") == "echo one"
            assert call(endpoint, "two") == "echo two"
        agl.emit_reward(1.0, span_id=step.id)
        assert call(endpoint, "three") == "echo three"
    return ctx


def test_a_step_reward_credits_calls_made_with_plain_urllib() -> None:
    with proxied_store() as (store, _proxy):
        ctx = run_step_agent(store, post)
        episode = episode_of(store, ctx.rollout_id)
    assert episode.reward == 1.0
    assert [s.reward for s in episode.samples] == [1.0, 1.0, 0.0]
    assert not episode.warnings
    assert ctx.calls_without_record == 0


def test_a_step_reward_credits_sdk_calls_with_adapters_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    openai = pytest.importorskip("openai")
    monkeypatch.setenv("AGL_ADAPTERS", "none")

    def call(endpoint: str, question: str) -> str:
        client = openai.OpenAI(base_url=endpoint, api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])
        return str(answer.choices[0].message.content)

    with proxied_store() as (store, _proxy):
        ctx = run_step_agent(store, call)
        episode = episode_of(store, ctx.rollout_id)
    assert [s.reward for s in episode.samples] == [1.0, 1.0, 0.0]
    assert not episode.warnings


def test_join_headers_are_validated_not_refused() -> None:
    """Bad span ids and attributes are ignored with a warning; the call is answered and recorded."""
    with proxied_store() as (store, proxy):
        with agl.TrainingContext(task_id="headers", store=store, instrument=False) as ctx:
            endpoint = ctx.llm().endpoint
            for headers in (
                {"x-agl-span-id": "NOT-HEX", "x-agl-span-attributes": "{not json"},
                {"x-agl-span-id": "00000000000000aa", "x-agl-span-attributes": '["a list"]'},
                {"x-agl-span-id": "00000000000000aa", "x-agl-span-attributes": '{"a": NaN}'},  # reused id, NaN
                {"x-agl-span-attributes": json.dumps({"x": "y" * 20_000})},
                {"x-agl-span-attributes": json.dumps({"agl.llm.completion_token_ids": [1], "team": "blue"})},
            ):
                body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "q"}]}).encode()
                request = urllib.request.Request(
                    endpoint + "/chat/completions", data=body, headers={"content-type": "application/json", **headers}
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status == 200
                    assert response.headers["x-agl-span-id"]
        llms = [s for s in spans_of(store, ctx.rollout_id) if s.kind == "llm"]
    assert len(llms) == 5 and len({s.span_id for s in llms}) == 5
    assert llms[1].span_id == "00000000000000aa"  # a valid id is taken; sent again (a retry), it is not
    assert llms[-1].attributes["team"] == "blue"
    assert llms[-1].attributes[semconv.COMPLETION_TOKEN_IDS] != [1]  # what the proxy measures is its own
    assert proxy.stats().recorded_calls == 5


# ---------------------------------------------------------------------- agl proxy as its own process
@contextlib.contextmanager
def agl_proxy_process(upstream: str, store_url: str) -> Iterator[str]:
    code = "import sys; from agent_lightning.cli import main; sys.exit(main())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "proxy", "--upstream", upstream, "--store", store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AGL_ADAPTERS": "none"},
        preexec_fn=_ctrl_c_enabled,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else "agl proxy exited"
        yield str(json.loads(line)["url"])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        finally:
            process.kill()


def test_out_of_process_proxy_every_call_is_stored_when_the_context_exits(tmp_path: Path) -> None:
    from agent_lightning import cli
    from agent_lightning.store import open_store

    store_url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = open_store(store_url)
    with ScriptedLLM(lambda call: f"echo {call.last_user_text}") as upstream:
        with agl_proxy_process(upstream.url, store_url) as proxy_url:
            asyncio.run(store.add_resources({"policy": LLM(endpoint=proxy_url, model=MODEL)}))

            def post_and_check(endpoint: str, question: str) -> str:
                answer, span_id = post_with_id(endpoint, question)
                ctx = agl.current_context()
                assert ctx is not None
                stored = {s.span_id for s in spans_of(store, ctx.rollout_id)}
                assert span_id in stored, "the proxy answered before its record was stored"
                return answer

            for attempt in range(5):
                ctx = run_step_agent(store, post_and_check)
                episode = episode_of(store, ctx.rollout_id)  # at once: no waiting, no flushing
                assert len(episode.samples) == 3, (attempt, episode.warnings)
                assert [s.reward for s in episode.samples] == [1.0, 1.0, 0.0]
                assert not episode.warnings
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert cli.main(["spans", ctx.rollout_id, "--store", store_url]) == 0
    printed = out.getvalue()
    assert printed.count("completion tokens") == 3 and "NO token ids" not in printed
