"""vLLM as an Agent Lightning inference engine: ``engine="vllm"`` (see :class:`VLLMEngine`)."""

from .engine import EngineError, VLLMEngine, create

__all__ = ["EngineError", "VLLMEngine", "create"]
