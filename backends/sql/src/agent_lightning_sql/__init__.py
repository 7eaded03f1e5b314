"""Shared SQL schema and store implementation for Agent Lightning's SQLite and PostgreSQL backends.

Install ``agent-lightning-sqlite`` or ``agent-lightning-postgres``; this package
holds what they have in common (:class:`SqlLightningStore` and the tables).
"""

from agent_lightning_sql.schema import MIGRATIONS, SCHEMA_VERSION, TABLES
from agent_lightning_sql.store import SchemaTooNew, SqlLightningStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "TABLES", "SchemaTooNew", "SqlLightningStore"]
