"""PostgreSQL LightningStore for Agent Lightning: ``agl.open_store("postgresql://user@host/db")``."""

from agent_lightning_postgres.store import PostgresLightningStore, parse_postgres_url

__all__ = ["PostgresLightningStore", "parse_postgres_url"]
