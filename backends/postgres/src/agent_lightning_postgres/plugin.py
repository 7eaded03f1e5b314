"""Entry-point plugin: opens ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` store URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store import RegisterStore
from agent_lightning.store.base import LightningStore

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
OPTIONS = frozenset({"schema", "pool_size", "max_overflow", "connect_timeout"})


def open_postgres_store(url: str, options: Mapping[str, Any], *, create: bool) -> LightningStore:
    """Connect to the database (it must exist; ``create`` concerns the store's tables, created when missing)."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"postgresql:// stores take the options {sorted(OPTIONS)}, not {unknown}")
    from agent_lightning_postgres.store import PostgresLightningStore

    return PostgresLightningStore(url, **options).open()


@hookimpl
def agl_register_stores(register: RegisterStore) -> None:
    register(schemes=SCHEMES, opener=open_postgres_store)
