"""Retokenization drift: decode → re-encode changes sampled sequences, so the server returns the sampled ids themselves.

A trainer that re-tokenized the text would train on a sequence the policy never produced (different ids, different
logprobs). These tests find such sequences in real generations and check the server's ids are exactly the sampled
ones: equal to transformers' own greedy ``generate``, and with logprobs equal to a forward pass over those ids.
"""

from __future__ import annotations

import openai
import pytest
from agent_lightning_rl.policy import PolicyServer
from conftest import MODEL_NAME, build_model

PROMPTS = ["What is 2+3?", "Tell me about Paris.", "Hello world", "the lazy dog", "Lightning trains agents"]


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def find_drift(server: PolicyServer, tokenizer, temperature: float) -> list[tuple[list[int], list[int], list[float]]]:
    """Generate for each prompt; keep (prompt_ids, ids, logprobs) whose decode→encode round trip changes the ids."""
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    drifted = []
    for i, prompt in enumerate(PROMPTS):
        response = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": prompt}],
            temperature=temperature,
            seed=i,
            max_tokens=24,
            extra_body={"ignore_eos": True},
        )
        ids = response.choices[0].token_ids
        text = tokenizer.decode(ids)
        assert response.choices[0].message.content == tokenizer.decode(ids, skip_special_tokens=True)
        if tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
            drifted.append((response.prompt_token_ids, ids, [e.logprob for e in response.choices[0].logprobs.content]))
    return drifted


def check_exact(model, tokenizer, drifted, greedy: bool, forced_logprobs, greedy_reference) -> None:
    assert drifted, "expected at least one generation whose decode→encode round trip changes the token ids"
    for prompt_ids, ids, logprobs in drifted:
        reencoded = tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"]
        at = first_difference(ids, reencoded)
        assert reencoded != ids, f"sampled {ids[at : at + 3]} re-encode as {reencoded[at : at + 3]}"
        if greedy:
            assert ids == greedy_reference(model, prompt_ids, len(ids), 10**6)
        assert logprobs == pytest.approx(forced_logprobs(model, prompt_ids, ids), abs=1e-4)
        # what a re-tokenizing trainer would have scored instead: a different sequence with other logprobs
        assert forced_logprobs(model, prompt_ids, reencoded) != pytest.approx(logprobs, abs=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_server_returns_sampled_ids_even_when_retokenization_drifts(
    server, tokenizer, reference_model, forced_logprobs, greedy_reference, temperature
):
    drifted = find_drift(server, tokenizer, temperature)
    check_exact(reference_model, tokenizer, drifted, temperature == 0.0, forced_logprobs, greedy_reference)


def test_drift_with_the_real_smollm2_tokenizer(smollm2_tokenizer, forced_logprobs, greedy_reference):
    model = build_model(smollm2_tokenizer, seed=5)  # random weights over SmolLM2's 49k vocabulary
    reference = build_model(smollm2_tokenizer, seed=5)
    with PolicyServer(model, smollm2_tokenizer, model_name=MODEL_NAME) as server:
        clean = []
        for temperature in (0.0, 1.0):
            drifted = find_drift(server, smollm2_tokenizer, temperature)
            check_exact(reference, smollm2_tokenizer, drifted, temperature == 0.0, forced_logprobs, greedy_reference)
            clean += [ids for _, ids, _ in drifted if "\ufffd" not in smollm2_tokenizer.decode(ids)]
        # not only invalid UTF-8 byte pieces: whole words re-split, e.g. sampled " pinn"+"añ" re-encodes " pin"+"na"…
        assert clean, "expected a drift on valid text (a word whose sampled split is not the canonical one)"

        # a prompt given as non-canonical ids (" hel" + "lo" style) is used and echoed as given, never re-encoded
        word = " reinforcement"
        canonical = smollm2_tokenizer(word, add_special_tokens=False)["input_ids"]
        split = next(
            ids
            for cut in range(2, len(word) - 1)
            if (
                ids := smollm2_tokenizer(word[:cut], add_special_tokens=False)["input_ids"]
                + smollm2_tokenizer(word[cut:], add_special_tokens=False)["input_ids"]
            )
            != canonical
        )
        assert smollm2_tokenizer.decode(split) == smollm2_tokenizer.decode(canonical) == word
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        answers = [
            client.completions.create(model=MODEL_NAME, prompt=ids, temperature=0, max_tokens=8).choices[0]
            for ids in (split, canonical)
        ]
        assert [a.prompt_token_ids for a in answers] == [split, canonical]
        assert answers[0].logprobs.token_logprobs == pytest.approx(
            forced_logprobs(reference, split, answers[0].token_ids), abs=1e-4
        )
