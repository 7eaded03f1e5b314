"""Rewards: a float or a dict of named floats, attached to a span."""

from __future__ import annotations

import math
from typing import Union

from pydantic import BaseModel, ConfigDict, field_validator

from agent_lightning import semconv
from agent_lightning.types.spans import AttributeValue

RewardValue = Union[float, dict[str, float]]


class Reward(BaseModel):
    """A reward signal.

    A dict reward names its components (``{"correct": 1.0, "format": 0.5}``);
    its scalar :attr:`total` is the sum, unless a component is named ``"total"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: RewardValue
    span_id: str | None = None
    """The span the reward judges; ``None`` means the whole attempt."""

    @field_validator("value", mode="before")
    @classmethod
    def _finite(cls, value: object) -> object:
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError(f"reward must be a finite number, got {value!r}")
            return float(value)
        if isinstance(value, dict):
            if not value:
                raise ValueError("a dict reward needs at least one named component")
            out: dict[str, float] = {}
            for name, component in value.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"reward component names must be non-empty strings, got {name!r}")
                if isinstance(component, bool) or not isinstance(component, (int, float)):
                    raise ValueError(f"reward component {name!r} must be a number, got {component!r}")
                if not math.isfinite(component):
                    raise ValueError(f"reward component {name!r} must be finite, got {component!r}")
                out[name] = float(component)
            return out
        raise ValueError(f"reward must be a number or a dict of numbers, got {type(value).__name__}")

    @property
    def total(self) -> float:
        """The scalar reward used by algorithms."""
        if isinstance(self.value, dict):
            return self.value.get("total", math.fsum(self.value.values()))
        return self.value

    def to_attributes(self) -> dict[str, AttributeValue]:
        """The reward as span attributes (``agl.reward.value`` plus one per component)."""
        attributes: dict[str, AttributeValue] = {semconv.REWARD_VALUE: self.total}
        if isinstance(self.value, dict):
            for name, component in self.value.items():
                attributes[f"{semconv.REWARD_PREFIX}{name}"] = component
        if self.span_id is not None:
            attributes[semconv.REWARD_TARGET_SPAN_ID] = self.span_id
        return attributes
