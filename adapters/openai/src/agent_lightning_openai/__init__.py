"""Agent Lightning adapter for the OpenAI Python SDK.

Installed, it is found through the ``agent_lightning`` entry point and switched on
when a :class:`agent_lightning.TrainingContext` opens; ``agl.instrument("openai")`` /
``agl.uninstrument("openai")`` switch it explicitly.
"""

from agent_lightning_openai.adapter import OpenAIAdapter

__all__ = ["OpenAIAdapter"]
__version__ = "0.1.0"
