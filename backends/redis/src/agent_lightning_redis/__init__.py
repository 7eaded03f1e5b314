"""Redis backend of the LightningStore: ``open_store("redis://127.0.0.1:6379/0?prefix=agl:")``.

The store module (and its database driver) loads on first use of these names, so that discovering
the plugin, as every ``TrainingContext`` and ``agl`` command does, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_redis.store import RedisLightningStore

__all__ = ["RedisLightningStore"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("agent_lightning_redis.store"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
