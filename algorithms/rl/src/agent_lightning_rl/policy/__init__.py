"""The local policy server: a Hugging Face causal LM behind the OpenAI API, with token ids and hot weight swaps.

from agent_lightning_rl.models import load_policy
from agent_lightning_rl.policy import PolicyServer

model, tokenizer = load_policy()  # the offline default, SmolLM2-135M-Instruct
with PolicyServer(model, tokenizer, model_name="smollm2-135m-instruct") as server:
    ...  # openai.OpenAI(base_url=server.url, api_key="none")
    server.update_weights(new_state_dict, version="resources-2")
"""

from .app import VERSION_HEADER, create_app
from .chat import parse_tool_calls, render_chat
from .engine import GenerationEngine, GenerationRequest
from .sampling import LogprobsMode, SamplingParams
from .server import PolicyServer

__all__ = [
    "VERSION_HEADER",
    "GenerationEngine",
    "GenerationRequest",
    "LogprobsMode",
    "PolicyServer",
    "SamplingParams",
    "create_app",
    "parse_tool_calls",
    "render_chat",
]
