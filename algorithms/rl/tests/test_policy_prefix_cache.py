"""Prefix caching: a preamble shared by concurrent requests is prefilled once, reused, and dropped on a weight swap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from agent_lightning_rl.policy import PolicyServer, render_chat
from conftest import MODEL_NAME

PREAMBLE = "You are a helpful assistant. Please answer the question about the weather in Paris. " * 4
QUESTIONS = ["What is 2+3?", "What is 7 times 6?", "hello world the quick brown fox", "Lightning trains agents"]


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PREAMBLE}, {"role": "user", "content": question}]


def ask_all(server: PolicyServer, questions: list[str], max_tokens: int = 16) -> list[openai.types.Completion]:
    """Send the questions at once (the engine batches them) and return the responses in order."""
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)

    def ask(question: str):  # type: ignore[no-untyped-def]
        return client.chat.completions.create(
            model=MODEL_NAME, messages=conversation(question), temperature=0, max_tokens=max_tokens, logprobs=True
        )

    with ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(ask, questions))


@pytest.fixture
def batching_server(model, tokenizer):  # type: ignore[no-untyped-def]
    # a long batch window so that the concurrent requests of a test land in one batch
    with PolicyServer(model, tokenizer, model_name=MODEL_NAME, max_batch_size=8, batch_wait_s=0.3) as running:
        yield running


def test_shared_preamble_is_prefilled_once_and_answers_match_a_full_prefill(
    batching_server, tokenizer, reference_model, greedy_reference, forced_logprobs
):
    prompts = [
        tokenizer(render_chat(tokenizer, conversation(q)), add_special_tokens=False)["input_ids"] for q in QUESTIONS
    ]
    responses = ask_all(batching_server, QUESTIONS)
    stats = batching_server.stats()
    assert stats["max_batch_rows"] == len(QUESTIONS)  # one batch: the prefix was shared within it
    assert stats["cached_prefixes"] == 1
    assert stats["prefix_tokens_reused"] >= 3 * 40  # every row but the one that paid for it skipped the preamble
    assert stats["prefill_tokens"] < sum(len(p) for p in prompts) / 2

    for prompt, response in zip(prompts, responses, strict=True):
        assert response.prompt_token_ids == prompt
        ids = response.choices[0].token_ids
        assert ids == greedy_reference(reference_model, prompt, 16, tokenizer.eos_token_id)
        logprobs = [entry.logprob for entry in response.choices[0].logprobs.content]
        assert logprobs == pytest.approx(forced_logprobs(reference_model, prompt, ids), abs=1e-4)


def test_a_later_single_request_reuses_the_cached_prefix(batching_server, tokenizer, reference_model, greedy_reference):
    ask_all(batching_server, QUESTIONS[:2])
    before = batching_server.stats()
    (alone,) = ask_all(batching_server, ["What is 9 plus 4?"])
    after = batching_server.stats()
    prompt = alone.prompt_token_ids
    assert after["prefix_tokens_reused"] - before["prefix_tokens_reused"] > 40
    assert after["prefill_tokens"] - before["prefill_tokens"] < len(prompt) / 2
    assert alone.choices[0].token_ids == greedy_reference(reference_model, prompt, 16, tokenizer.eos_token_id)


def test_a_weight_swap_empties_the_prefix_cache(batching_server, tokenizer, make_model, greedy_reference):
    ask_all(batching_server, QUESTIONS[:2])
    assert batching_server.stats()["cached_prefixes"] == 1
    new_model = make_model(1)
    batching_server.update_weights(new_model.state_dict(), "v1")
    assert batching_server.stats()["cached_prefixes"] == 0

    responses = ask_all(batching_server, QUESTIONS[:2])
    for response in responses:  # the new weights, not keys and values cached from the old ones
        assert response.system_fingerprint == "v1"
        prompt = response.prompt_token_ids
        assert response.choices[0].token_ids == greedy_reference(new_model, prompt, 16, tokenizer.eos_token_id)


def test_prefix_caching_can_be_turned_off(model, tokenizer):
    with PolicyServer(model, tokenizer, model_name=MODEL_NAME, max_batch_size=8, batch_wait_s=0.3) as server:
        server.engine.prefix_cache_size = 0
        ask_all(server, QUESTIONS)
        stats = server.stats()
    assert stats["cached_prefixes"] == 0 and stats["prefix_tokens_reused"] == 0
