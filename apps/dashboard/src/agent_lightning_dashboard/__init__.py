"""``agl dashboard``: an offline trace viewer for any Agent Lightning store.

:func:`create_app` returns the ASGI app (Starlette) the command serves, to mount elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_dashboard.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from agent_lightning_dashboard.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
