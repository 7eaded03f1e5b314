"""Entry-point plugin: opens ``sqlite://`` store URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store.base import LightningStore

OPTIONS = frozenset({"busy_timeout"})


@hookimpl
def agl_store_schemes() -> list[str]:
    return ["sqlite"]


@hookimpl
def agl_open_store(url: str, options: Mapping[str, Any]) -> LightningStore | None:
    if not url.lower().startswith("sqlite:"):
        return None
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"sqlite:// stores take the options {sorted(OPTIONS)}, not {unknown}")
    from agent_lightning_sqlite.store import SqliteLightningStore

    return SqliteLightningStore(url, **options).open()
