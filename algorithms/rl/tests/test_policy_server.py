"""The policy server's OpenAI API, driven by the real ``openai`` SDK over HTTP against a tiny random Llama."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from agent_lightning_rl.policy import VERSION_HEADER, PolicyServer, render_chat
from conftest import MODEL_NAME

QUESTION = [{"role": "user", "content": "What is 2+3?"}]


def client_for(server: PolicyServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def test_chat_returns_the_generated_ids_and_their_logprobs(
    server, tokenizer, reference_model, forced_logprobs, greedy_reference
):
    raw = client_for(server).chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=24
    )
    response = raw.parse()
    prompt_ids = tokenizer(render_chat(tokenizer, QUESTION), add_special_tokens=False)["input_ids"]
    choice = response.choices[0]

    assert response.prompt_token_ids == prompt_ids
    assert choice.token_ids == greedy_reference(reference_model, prompt_ids, 24, tokenizer.eos_token_id)
    assert choice.message.content == tokenizer.decode(choice.token_ids, skip_special_tokens=True)
    logprobs = [entry.logprob for entry in choice.logprobs.content]
    assert len(logprobs) == len(choice.token_ids)
    assert logprobs == pytest.approx(forced_logprobs(reference_model, prompt_ids, choice.token_ids), abs=1e-4)
    assert raw.headers[VERSION_HEADER] == "v0" and response.system_fingerprint == "v0"
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(choice.token_ids)
    assert choice.finish_reason in ("length", "stop")


def test_streamed_ids_text_and_logprobs_concatenate_to_the_non_streamed_answer(server):
    client = client_for(server)
    whole = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=30)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=QUESTION,
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].prompt_token_ids == whole.prompt_token_ids
    ids, text, logprobs, finish = [], "", [], None
    for chunk in chunks:
        assert chunk.system_fingerprint == "v0"
        for choice in chunk.choices:
            ids += choice.token_ids
            text += choice.delta.content or ""
            logprobs += [entry.logprob for entry in (choice.logprobs.content if choice.logprobs else [])]
            finish = choice.finish_reason or finish
    assert ids == whole.choices[0].token_ids
    assert text == whole.choices[0].message.content
    assert logprobs == pytest.approx([e.logprob for e in whole.choices[0].logprobs.content], abs=1e-5)
    assert finish == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(ids)
    assert len(chunks) > 3  # really streamed, not one blob


def test_n_samples_are_seeded_and_each_has_its_own_ids_and_logprobs(
    server, tokenizer, reference_model, forced_logprobs
):
    client = client_for(server)
    kwargs = dict(model=MODEL_NAME, messages=QUESTION, temperature=1.0, top_p=0.95, n=3, seed=7, max_tokens=12)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)

    assert [c.index for c in first.choices] == [0, 1, 2]
    samples = [tuple(c.token_ids) for c in first.choices]
    assert samples == [tuple(c.token_ids) for c in again.choices]  # seeded: reproducible
    assert len(set(samples)) > 1  # but the choices are different samples
    for choice in first.choices:
        logprobs = [e.logprob for e in choice.logprobs.content]
        assert len(logprobs) == len(choice.token_ids) > 0
        # raw model logprobs of exactly these ids (the default logprobs mode)
        assert logprobs == pytest.approx(
            forced_logprobs(reference_model, first.prompt_token_ids, choice.token_ids), abs=1e-4
        )


def test_top_logprobs_list_alternatives_led_by_the_greedy_choice(server):
    response = client_for(server).chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    for entry in response.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_stop_string_cuts_the_text_but_keeps_every_sampled_id(server, tokenizer):
    client = client_for(server)
    plain = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=40)
    text = plain.choices[0].message.content
    start = next(
        i for i in range(4, len(text) - 3) if "\ufffd" not in text[i : i + 3] and text[i : i + 3] not in text[: i + 2]
    )
    stop = text[start : start + 3]

    for stream in (False, True):
        if stream:
            chunks = client.chat.completions.create(
                model=MODEL_NAME,
                messages=QUESTION,
                temperature=0,
                max_tokens=40,
                stop=[stop, "never-there"],
                stream=True,
            )
            ids, content, finish = [], "", None
            for chunk in chunks:
                for choice in chunk.choices:
                    ids += choice.token_ids
                    content += choice.delta.content or ""
                    finish = choice.finish_reason or finish
        else:
            response = client.chat.completions.create(
                model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=40, stop=[stop, "never-there"]
            )
            ids, content, finish = (
                response.choices[0].token_ids,
                response.choices[0].message.content,
                response.choices[0].finish_reason,
            )
        assert finish == "stop"
        assert content == text[: text.find(stop)]
        assert ids == plain.choices[0].token_ids[: len(ids)]
        assert stop in tokenizer.decode(ids) and stop not in tokenizer.decode(ids[:-1])  # last id completed it


def test_max_tokens_and_max_completion_tokens_limit_the_completion(server):
    client = client_for(server)
    for limit in ({"max_tokens": 7}, {"max_completion_tokens": 5}):
        response = client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, temperature=0.8, extra_body={"ignore_eos": True}, **limit
        )
        assert len(response.choices[0].token_ids) == next(iter(limit.values()))
        assert response.choices[0].finish_reason == "length"


def test_completions_take_text_or_token_id_prompts(server, tokenizer, reference_model, forced_logprobs):
    client = client_for(server)
    text_prompt = "The quick brown fox"
    ids_prompt = tokenizer(text_prompt)["input_ids"]
    by_text = client.completions.create(model=MODEL_NAME, prompt=text_prompt, temperature=0, max_tokens=10, logprobs=2)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids_prompt, temperature=0, max_tokens=10)
    assert by_text.choices[0].prompt_token_ids == by_ids.choices[0].prompt_token_ids == ids_prompt
    assert by_text.choices[0].token_ids == by_ids.choices[0].token_ids
    choice = by_text.choices[0]
    assert choice.text == tokenizer.decode(choice.token_ids, skip_special_tokens=True)
    assert len(choice.logprobs.token_logprobs) == len(choice.token_ids) == len(choice.logprobs.top_logprobs)
    assert choice.logprobs.token_logprobs == pytest.approx(
        forced_logprobs(reference_model, ids_prompt, choice.token_ids), abs=1e-4
    )

    several = client.completions.create(
        model=MODEL_NAME, prompt=["Hello world", "What is"], n=2, temperature=0, max_tokens=4
    )
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.choices[0].token_ids == several.choices[1].token_ids  # greedy: same prompt, same answer
    assert several.choices[2].prompt_token_ids == tokenizer("What is")["input_ids"]

    streamed = list(
        client.completions.create(model=MODEL_NAME, prompt=ids_prompt, temperature=0, max_tokens=10, stream=True)
    )
    assert [i for c in streamed if c.choices for i in c.choices[0].token_ids] == by_ids.choices[0].token_ids
    assert "".join(c.choices[0].text for c in streamed if c.choices) == by_ids.choices[0].text


def test_concurrent_clients_are_batched_and_get_their_own_answers(model, tokenizer, reference_model, greedy_reference):
    prompts = ["Hello", "What is 2+3?", "Tell me about Paris", "the lazy dog", "reinforcement learning", "tools"]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts))

    with PolicyServer(model, tokenizer, model_name=MODEL_NAME, max_batch_size=8, batch_wait_s=0.25) as server:
        client = client_for(server)

        def ask(i: int) -> None:
            try:
                barrier.wait()
                response = client.chat.completions.create(
                    model=MODEL_NAME, messages=[{"role": "user", "content": prompts[i]}], temperature=0, max_tokens=16
                )
                results[i] = (response.prompt_token_ids, response.choices[0].token_ids)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stats = server.stats()

    assert not errors and sorted(results) == list(range(len(prompts)))
    for prompt_ids, ids in results.values():  # padding and batching do not change anyone's answer
        assert ids == greedy_reference(reference_model, prompt_ids, 16, tokenizer.eos_token_id)
    assert stats["requests"] == len(prompts)
    assert stats["max_batch_requests"] > 1 and stats["batches"] < len(prompts)


def test_models_status_and_errors_follow_the_openai_shapes(server):
    client = client_for(server)
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert "tiny-llama" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, top_p=0)
    assert "top_p" in bad.value.message
    odd_seed = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, seed=-(2**70), max_tokens=2)
    assert len(odd_seed.choices[0].token_ids) == 2  # any integer seed works (taken mod 2**64)
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    assert "messages" in empty.value.message
    with pytest.raises(openai.BadRequestError) as outside:
        client.completions.create(model=MODEL_NAME, prompt=[1, 2, 10**6])
    assert "vocabulary" in outside.value.message

    status = httpx.get(server.url.removesuffix("/v1") + "/agl/status").json()
    assert status["version"] == "v0" and status["logprobs_mode"] == "raw"
    assert status["stats"]["requests"] == 1  # only the valid one reached the engine


def test_processed_logprobs_mode_reports_the_sampling_distribution(model, tokenizer, reference_model, forced_logprobs):
    with PolicyServer(model, tokenizer, model_name=MODEL_NAME, logprobs_mode="processed") as server:
        client = client_for(server)
        hot = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0.5, seed=1, max_tokens=8)
        nucleus = client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, temperature=1.0, top_p=1e-3, seed=1, max_tokens=8
        )
    ids = hot.choices[0].token_ids
    raw = forced_logprobs(reference_model, hot.prompt_token_ids, ids)
    reported = [e.logprob for e in hot.choices[0].logprobs.content]
    assert reported != pytest.approx(raw, abs=1e-3)  # temperature 0.5 sharpens: not the raw distribution
    # a tiny nucleus keeps only the top token, which then has probability 1
    assert [e.logprob for e in nucleus.choices[0].logprobs.content] == pytest.approx([0.0] * 8, abs=1e-5)


def test_a_client_that_goes_away_stops_its_generation(server):
    client = client_for(server)
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        temperature=0,
        max_tokens=1000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    next(stream), next(stream)
    stream.close()
    after = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=3)
    assert len(after.choices[0].token_ids) == 3  # the server still answers, after the abandoned batch ended
    stats = server.stats()
    assert stats["batches"] == 2
    assert stats["tokens_generated"] - 3 < 900  # the abandoned request did not run to its 1000 tokens
