"""Plugin: opens ``redis://`` and ``rediss://`` store URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store import RegisterStore
from agent_lightning.store.base import LightningStore

from agent_lightning_redis.url import SCHEMES


def open_redis_store(url: str, options: Mapping[str, Any], *, create: bool) -> LightningStore:
    """A store under the URL's key prefix (keys are created as written; ``create`` changes nothing)."""
    from agent_lightning_redis.store import RedisLightningStore

    return RedisLightningStore(url, **dict(options))


@hookimpl
def agl_register_stores(register: RegisterStore) -> None:
    register(schemes=SCHEMES, opener=open_redis_store)
