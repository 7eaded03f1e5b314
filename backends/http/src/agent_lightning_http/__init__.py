"""The store server (``agl store serve``) and its client (``http://`` store URLs).

Importing this package is light; the web stack loads when one of these names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_http.app import create_app
    from agent_lightning_http.client import HttpLightningStore, StoreAuthError, StoreForbidden
    from agent_lightning_http.serve import StoreServer, serve

__all__ = ["HttpLightningStore", "StoreAuthError", "StoreForbidden", "StoreServer", "create_app", "serve"]
_WHERE = {
    "create_app": "agent_lightning_http.app",
    "HttpLightningStore": "agent_lightning_http.client",
    "StoreAuthError": "agent_lightning_http.client",
    "StoreForbidden": "agent_lightning_http.client",
    "StoreServer": "agent_lightning_http.serve",
    "serve": "agent_lightning_http.serve",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'agent_lightning_http' has no attribute {name!r}")
