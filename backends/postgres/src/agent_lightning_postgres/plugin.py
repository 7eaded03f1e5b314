"""Entry-point plugin: opens ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` store URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store.base import LightningStore

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
OPTIONS = frozenset({"schema", "pool_size", "max_overflow", "connect_timeout"})


@hookimpl
def agl_store_schemes() -> list[str]:
    return list(SCHEMES)


@hookimpl
def agl_open_store(url: str, options: Mapping[str, Any]) -> LightningStore | None:
    if url.split("://", 1)[0].lower() not in SCHEMES:
        return None
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"postgresql:// stores take the options {sorted(OPTIONS)}, not {unknown}")
    from agent_lightning_postgres.store import PostgresLightningStore

    return PostgresLightningStore(url, **options).open()
