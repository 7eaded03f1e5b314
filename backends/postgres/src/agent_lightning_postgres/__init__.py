"""PostgreSQL LightningStore for Agent Lightning: ``agl.open_store("postgresql://user@host/db")``.

The store module (and its database driver) loads on first use of these names, so that discovering
the plugin, as every ``TrainingContext`` and ``agl`` command does, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_postgres.store import PostgresLightningStore, parse_postgres_url

__all__ = ["PostgresLightningStore", "parse_postgres_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("agent_lightning_postgres.store"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
