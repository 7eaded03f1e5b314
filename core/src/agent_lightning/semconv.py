"""Span attribute names.

Standard names follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.*``); what they lack — token ids, rewards, rollout ids — lives under
the single ``agl.`` namespace.
"""

from __future__ import annotations

from typing import Final

# --- OpenTelemetry GenAI semantic conventions -------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
"""``chat``, ``text_completion``, ``execute_tool``, ``invoke_agent``, …"""
GEN_AI_SYSTEM: Final = "gen_ai.system"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_TOOL_DEFINITIONS: Final = "gen_ai.tool.definitions"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
ERROR_TYPE: Final = "error.type"

# --- Agent Lightning's own namespace ----------------------------------------------------------
PROMPT_TOKEN_IDS: Final = "agl.llm.prompt_token_ids"
COMPLETION_TOKEN_IDS: Final = "agl.llm.completion_token_ids"
COMPLETION_LOGPROBS: Final = "agl.llm.completion_logprobs"
TOKEN_IDS_AVAILABLE: Final = "agl.llm.token_ids_available"
"""``False`` when the upstream returned no token ids: the call cannot be trained on."""
CHOICE_INDEX: Final = "agl.llm.choice_index"
LATENCY_MS: Final = "agl.llm.latency_ms"
RECORDED_BY: Final = "agl.llm.recorded_by"
"""``"proxy"`` on the proxy's record of a call; an adapter's own ``llm`` span (a call the proxy did not answer)
has none."""
REWARD_VALUE: Final = "agl.reward.value"
REWARD_PREFIX: Final = "agl.reward."
"""Named reward components are stored as ``agl.reward.<name>``."""
REWARD_TARGET_SPAN_ID: Final = "agl.reward.span_id"
ROLLOUT_ID: Final = "agl.rollout.id"
ATTEMPT_ID: Final = "agl.attempt.id"
RESOURCES_ID: Final = "agl.resources.id"
RESOURCES_VERSION: Final = "agl.resources.version"
"""The version of the resources snapshot named by ``agl.resources.id``."""
RESOURCE_NAMES: Final = "agl.resources.names"
"""The resources (prompt templates, policies) a span used: the basis of selective optimization."""
AGENT_NAME: Final = GEN_AI_AGENT_NAME
ADAPTER: Final = "agl.adapter"
MESSAGE_ROLE: Final = "agl.message.role"
MESSAGE_CONTENT: Final = "agl.message.content"
