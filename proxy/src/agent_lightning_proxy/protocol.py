"""Names the proxy, its upstreams and the adapters agree on (see the token-id protocol)."""

from __future__ import annotations

from typing import Final

ROLLOUT_HEADER: Final = "x-agl-rollout-id"
"""Request header: the rollout a call belongs to (when the URL path does not say)."""
ATTEMPT_HEADER: Final = "x-agl-attempt-id"
"""Request header: the attempt a call belongs to (default: the rollout's latest running attempt)."""
PARENT_SPAN_HEADER: Final = "x-agl-parent-span-id"
"""Request header: the proxy's record becomes a child of this span (16 hex digits)."""
SPAN_ID_HEADER: Final = "x-agl-span-id"
"""Request header: the span id the proxy's record takes (the caller's own span for the call, 16 hex digits).
Response header: the proxy's record(s) of the call, comma-separated when ``n > 1``; it confirms the record,
so the caller emits no span of its own for the call."""
SPAN_ATTRIBUTES_HEADER: Final = "x-agl-span-attributes"
"""Request header: a JSON object of attributes joined onto the proxy's record (agent name, framework run ids,
resources); at most :data:`MAX_SPAN_ATTRIBUTES_BYTES` bytes, ASCII (``json.dumps`` escapes the rest)."""
MAX_SPAN_ATTRIBUTES_BYTES: Final = 16_384
MODEL_VERSION_HEADER: Final = "x-agl-model-version"
"""Upstream response header: the resources id / weights version that generated the answer."""

LLM_WARNING: Final = "agl.llm.warning"
"""Span attribute: why the call cannot be trained on (e.g. the upstream returned no token ids)."""
PROXY_SEQUENCE_BASE: Final = 1_000_000
"""The proxy numbers its spans of an attempt from here, so they never collide with the agent's own."""

NO_TOKEN_IDS_WARNING: Final = (
    "the upstream returned no token ids for this call, so it cannot be trained on; re-tokenizing the text "
    "would not reproduce what was sampled. Use an upstream that returns them (the local policy server, or "
    "vLLM >= 0.10.2 which honours `return_token_ids`)."
)


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict[str, object]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": type_, "code": code}}
