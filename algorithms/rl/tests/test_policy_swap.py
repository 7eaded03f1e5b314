"""Hot weight swaps: in-flight requests finish on their weights, later ones get (and report) the new version."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch
from agent_lightning_rl.policy import VERSION_HEADER, PolicyServer
from conftest import MODEL_NAME

QUESTION = [{"role": "user", "content": "What is 2+3?"}]
NO_EOS = 10**6  # an id never sampled: the reference runs past EOS like ``ignore_eos`` does


def ask(server: PolicyServer, max_tokens: int = 16) -> tuple[str, list[int], list[int]]:
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=max_tokens, extra_body={"ignore_eos": True}
    )
    response = raw.parse()
    assert raw.headers[VERSION_HEADER] == response.system_fingerprint
    return response.system_fingerprint, response.prompt_token_ids, response.choices[0].token_ids


def test_swap_mid_stream_keeps_the_in_flight_request_and_serves_the_new_version_after(
    server, tokenizer, make_model, reference_model, greedy_reference
):
    new_weights = make_model(1)
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    version_before, prompt_ids, ids_before = ask(server)
    assert version_before == "v0"

    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        temperature=0,
        max_tokens=600,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = [next(stream), next(stream)]  # generation is under way
    swap_done = threading.Event()
    swapper = threading.Thread(target=lambda: (server.update_weights(new_weights.state_dict(), "v1"), swap_done.set()))
    swapper.start()
    chunks += list(stream)
    swapper.join(30)
    assert swap_done.is_set()

    streamed_ids = [i for c in chunks if c.choices for i in c.choices[0].token_ids]
    assert len(streamed_ids) == 600  # not dropped, not cut short
    assert {c.system_fingerprint for c in chunks} == {"v0"}
    assert streamed_ids == greedy_reference(reference_model, prompt_ids, 600, NO_EOS)

    version_after, _, ids_after = ask(server)
    assert version_after == "v1" == server.version
    assert ids_after != ids_before  # the weights really changed
    assert ids_after == greedy_reference(new_weights, prompt_ids, 16, NO_EOS)


def test_request_queued_behind_a_pending_swap_gets_the_new_version(server, make_model):
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(stream)
    assert first.system_fingerprint == "v0"
    swapper = threading.Thread(target=server.update_weights, args=(make_model(2), "v2"))
    swapper.start()
    time.sleep(0.05)
    versions: list[str] = []
    later = threading.Thread(target=lambda: versions.append(ask(server)[0]))
    later.start()  # submitted while the swap is still waiting for the in-flight batch
    rest = list(stream)
    later.join(30)
    swapper.join(30)
    assert {c.system_fingerprint for c in rest} == {"v0"}
    assert versions == ["v2"]


def test_weights_endpoint_loads_a_checkpoint_folder(server, tokenizer, make_model, tmp_path):
    _, _, ids_before = ask(server)
    make_model(3).save_pretrained(tmp_path / "ckpt")
    base = server.url.removesuffix("/v1")

    reply = httpx.post(
        f"{base}/agl/weights", json={"path": str(tmp_path / "ckpt"), "version": "resources-7"}, timeout=30
    )
    assert reply.status_code == 200 and reply.json()["version"] == "resources-7"
    assert reply.headers[VERSION_HEADER] == "resources-7"
    version, _, ids_after = ask(server)
    assert version == "resources-7" and ids_after != ids_before

    missing = httpx.post(f"{base}/agl/weights", json={"path": str(tmp_path / "nope"), "version": "x"}, timeout=30)
    assert missing.status_code == 400 and "does not exist" in missing.json()["error"]["message"]
    assert server.version == "resources-7"


def test_weights_that_do_not_fit_are_rejected_and_change_nothing(server, tokenizer, make_model):
    _, _, ids_before = ask(server)
    bad = {k: v for k, v in make_model(4).state_dict().items()}
    bad["model.embed_tokens.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        server.update_weights(bad, "broken")
    with pytest.raises(ValueError, match="lacks"):
        server.update_weights({"not.a.weight": torch.zeros(1)}, "broken")
    version, _, ids_after = ask(server)
    assert version == "v0" and ids_after == ids_before


def test_weights_endpoint_refuses_non_loopback_clients(model, tokenizer, tmp_path):
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outward interface
            address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with PolicyServer(model, tokenizer, model_name=MODEL_NAME, host="0.0.0.0") as server:
        reply = httpx.post(
            f"http://{address}:{server.port}/agl/weights", json={"path": str(tmp_path), "version": "evil"}, timeout=30
        )
        assert reply.status_code == 403
        assert "loopback" in reply.json()["error"]["message"]
        assert server.version == "v0"
