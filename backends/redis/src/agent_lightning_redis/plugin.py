"""Plugin: opens ``redis://`` and ``rediss://`` store URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store.base import LightningStore

from agent_lightning_redis.url import SCHEMES


@hookimpl
def agl_store_schemes() -> list[str]:
    return list(SCHEMES)


@hookimpl
def agl_open_store(url: str, options: Mapping[str, Any]) -> LightningStore | None:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        return None
    from agent_lightning_redis.store import RedisLightningStore

    return RedisLightningStore(url, **dict(options))
