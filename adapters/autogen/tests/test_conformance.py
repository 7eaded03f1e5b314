"""The AutoGen adapter against the test kit's adapter conformance suite: an AgentChat ``AssistantAgent``."""

from __future__ import annotations

import agent_lightning as agl
from agent_lightning_testkit import AdapterConformanceSuite
from autogen_agentchat.agents import AssistantAgent
from autogen_core.models import ModelInfo
from autogen_ext.models.openai import OpenAIChatCompletionClient

MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False
)


async def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 25 * 17."""
    return str(eval(expression))


def model_client(ctx: agl.TrainingContext) -> OpenAIChatCompletionClient:
    llm = ctx.llm()
    return OpenAIChatCompletionClient(
        model=llm.model, base_url=llm.endpoint, api_key="unused", model_info=MODEL_INFO, max_retries=0
    )


class TestAutoGenConformance(AdapterConformanceSuite):
    adapter_name = "autogen"

    async def run_agent(self, ctx: agl.TrainingContext, question: str) -> str:  # type: ignore[override]
        agent = AssistantAgent("solver", model_client=model_client(ctx), tools=[calculator], reflect_on_tool_use=True)
        result = await agent.run(task=question)
        return str(result.messages[-1].content)

    async def stream_reply(self, ctx: agl.TrainingContext, prompt: str) -> str:  # type: ignore[override]
        agent = AssistantAgent("solver", model_client=model_client(ctx), model_client_stream=True)
        chunks: list[str] = []
        async for item in agent.run_stream(task=prompt):
            if type(item).__name__ == "ModelClientStreamingChunkEvent":
                chunks.append(item.content)  # type: ignore[union-attr]
        assert len(chunks) > 1, "not streamed in several chunks"
        return "".join(chunks)
