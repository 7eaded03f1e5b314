"""SQLite LightningStore for Agent Lightning: ``agl.open_store("sqlite:///runs.db")``.

The store module (and its database driver) loads on first use of these names, so that discovering
the plugin, as every ``TrainingContext`` and ``agl`` command does, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_sqlite.store import SqliteLightningStore, parse_sqlite_url

__all__ = ["SqliteLightningStore", "parse_sqlite_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("agent_lightning_sqlite.store"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
