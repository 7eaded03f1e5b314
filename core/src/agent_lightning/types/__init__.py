"""The data model: rollouts, attempts, spans, rewards, resources and training samples."""

from agent_lightning.types.resources import LLM, PromptTemplate, Resource, ResourcesSnapshot, ToolConfig
from agent_lightning.types.rewards import Reward, RewardValue
from agent_lightning.types.rollouts import (
    Attempt,
    AttemptCompletion,
    AttemptedRollout,
    AttemptStatus,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    RolloutStatus,
    Subscription,
)
from agent_lightning.types.spans import AttributeValue, Span, SpanKind, SpanStatus, new_span_id, new_trace_id
from agent_lightning.types.training import Episode, Sample, Trajectory

__all__ = [
    "LLM",
    "Attempt",
    "AttemptCompletion",
    "AttemptStatus",
    "AttemptedRollout",
    "AttributeValue",
    "Episode",
    "PromptTemplate",
    "Resource",
    "ResourcesSnapshot",
    "Reward",
    "RewardValue",
    "Rollout",
    "RolloutConfig",
    "RolloutMode",
    "RolloutRequest",
    "RolloutStatus",
    "Sample",
    "Span",
    "SpanKind",
    "SpanStatus",
    "Subscription",
    "ToolConfig",
    "Trajectory",
    "new_span_id",
    "new_trace_id",
]
