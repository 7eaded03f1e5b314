"""SQLite LightningStore for Agent Lightning: ``agl.open_store("sqlite:///runs.db")``."""

from agent_lightning_sqlite.store import SqliteLightningStore, parse_sqlite_url

__all__ = ["SqliteLightningStore", "parse_sqlite_url"]
