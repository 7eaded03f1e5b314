"""Entry-point plugin: opens ``sqlite://`` store URLs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store import RegisterStore
from agent_lightning.store.base import LightningStore

OPTIONS = frozenset({"busy_timeout"})


def open_sqlite_store(url: str, options: Mapping[str, Any], *, create: bool) -> LightningStore:
    """Open (and create unless ``create=False``) the database file a ``sqlite:///path`` URL names."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"sqlite:// stores take the options {sorted(OPTIONS)}, not {unknown}")
    from agent_lightning_sqlite.store import SqliteLightningStore, parse_sqlite_url

    path = parse_sqlite_url(url)
    if not create and (path == ":memory:" or not os.path.isfile(os.path.expanduser(path))):
        what = "an in-memory database is always new and empty" if path == ":memory:" else f"no such file: {path}"
        raise FileNotFoundError(f"no SQLite store at {url} ({what})")
    return SqliteLightningStore(url, **options).open()


@hookimpl
def agl_register_stores(register: RegisterStore) -> None:
    register(schemes=["sqlite"], opener=open_sqlite_store)
