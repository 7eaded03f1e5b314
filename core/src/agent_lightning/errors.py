"""Exceptions raised by Agent Lightning. Each names what was wrong."""

from __future__ import annotations


class AgentLightningError(Exception):
    """Base class of every error raised by Agent Lightning."""


class StoreError(AgentLightningError):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, server gone, …)."""


class NotFound(StoreError, KeyError):
    """An id (rollout, attempt, resources, span) is unknown to the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class DuplicateId(StoreError, ValueError):
    """An object with this id already exists."""


class InvalidTransition(StoreError, ValueError):
    """A status change that the rollout/attempt state machine forbids."""


class LeaseLost(InvalidTransition):
    """The worker no longer owns the attempt (its lease expired or it finished)."""


class PluginError(AgentLightningError):
    """A plugin is missing, broken, or no plugin handles the request."""


class NoTrainingData(AgentLightningError):
    """A rollout or a run produced nothing an algorithm can train on."""
