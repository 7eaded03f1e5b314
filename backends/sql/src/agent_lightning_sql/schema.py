"""The tables every SQL backend shares, declared with SQLModel, and the schema version.

Nested values (rollout input, config and metadata, span attributes, resources)
are JSON documents: PostgreSQL's ``json`` type, ``TEXT`` elsewhere. The store
serializes them itself, so a value that is not JSON is rejected with a message
naming the field before anything is written.

:data:`SCHEMA_VERSION` is recorded in ``agl_schema_version``. A later release
that changes the tables bumps it and adds a step to :data:`MIGRATIONS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine, UserDefinedType
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 2
"""Version of the tables this release reads and writes."""


class _PostgresJson(UserDefinedType[Any]):
    """PostgreSQL ``json`` without SQLAlchemy's own (de)serialization: values are already JSON text."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSON"


class JsonText(TypeDecorator[Any]):
    """A JSON document: bind the JSON text (see :func:`agent_lightning_sql.codec.dumps`), read back Python values."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PostgresJson())
        return dialect.type_descriptor(sa.Text())

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":  # psycopg already decoded the document
            return value
        return json.loads(value)


def _big_id() -> Any:
    """A 64-bit integer primary key that autoincrements (SQLite needs exactly INTEGER for that)."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class SchemaVersionRow(SQLModel, table=True):
    """The single row saying which schema version the database has."""

    __tablename__ = "agl_schema_version"

    id: int = Field(default=1, primary_key=True)
    version: int
    updated_at: float


class RolloutRow(SQLModel, table=True):
    """A rollout. ``seq`` orders rollouts by creation; ``queue_seq`` is set only while it is claimable."""

    __tablename__ = "agl_rollouts"
    __table_args__ = (
        sa.Index("ix_agl_rollouts_status_seq", "status", "seq"),
        sa.Index("ix_agl_rollouts_counts", "status", "task_type", "mode"),  # count_rollouts reads only this
    )

    seq: int | None = Field(default=None, primary_key=True, sa_type=_big_id())
    rollout_id: str = Field(unique=True)
    task_type: str
    mode: str
    status: str
    queue_seq: int | None = Field(default=None, index=True, sa_type=sa.BigInteger())
    resources_id: str | None = None
    config_json: Any = Field(sa_type=JsonText())
    attempt_count: int = 0
    created_at: float = Field(sa_type=sa.Double())
    started_at: float | None = Field(default=None, sa_type=sa.Double())
    ended_at: float | None = Field(default=None, sa_type=sa.Double())
    error: str | None = Field(default=None, sa_type=sa.Text())
    input_json: Any = Field(default=None, nullable=True, sa_type=JsonText())
    metadata_json: Any = Field(default=None, sa_type=JsonText())


class AttemptRow(SQLModel, table=True):
    """An attempt. ``deadline_at`` is ``started_at + timeout_seconds`` (``NULL`` without a timeout)."""

    __tablename__ = "agl_attempts"
    __table_args__ = (
        sa.UniqueConstraint("rollout_id", "sequence", name="uq_agl_attempts_rollout_sequence"),
        sa.Index("ix_agl_attempts_status_lease", "status", "lease_expires_at"),
    )

    attempt_id: str = Field(primary_key=True)
    rollout_id: str
    sequence: int
    worker_id: str | None = None
    status: str
    started_at: float = Field(sa_type=sa.Double())
    ended_at: float | None = Field(default=None, sa_type=sa.Double())
    last_heartbeat_at: float = Field(sa_type=sa.Double())
    lease_expires_at: float = Field(sa_type=sa.Double())
    deadline_at: float | None = Field(default=None, sa_type=sa.Double())
    error: str | None = Field(default=None, sa_type=sa.Text())


class SpanRow(SQLModel, table=True):
    """A span, keyed like ``add_spans``' idempotency rule; ``attempt_seq`` orders spans across attempts."""

    __tablename__ = "agl_spans"
    __table_args__ = (sa.Index("ix_agl_spans_order", "rollout_id", "attempt_seq", "sequence_id"),)

    rollout_id: str = Field(primary_key=True)
    attempt_id: str = Field(primary_key=True)
    span_id: str = Field(primary_key=True)
    attempt_seq: int
    sequence_id: int = Field(sa_type=sa.BigInteger())
    trace_id: str
    parent_id: str | None = None
    name: str = Field(sa_type=sa.Text())
    kind: str
    attributes_json: Any = Field(default=None, sa_type=JsonText())
    start_time: float = Field(sa_type=sa.Double())
    end_time: float | None = Field(default=None, sa_type=sa.Double())
    status_code: str
    status_message: str | None = Field(default=None, sa_type=sa.Text())


class ResourcesRow(SQLModel, table=True):
    """An immutable resources snapshot."""

    __tablename__ = "agl_resources"

    resources_id: str = Field(primary_key=True)
    version: int = Field(unique=True)
    resources_json: Any = Field(sa_type=JsonText())
    metadata_json: Any = Field(default=None, sa_type=JsonText())
    created_at: float = Field(sa_type=sa.Double())


class SubscriptionRow(SQLModel, table=True):
    """A subscription group; ``task_types_json`` is a sorted list, or ``NULL`` for every task type."""

    __tablename__ = "agl_subscriptions"

    group_name: str = Field(primary_key=True)
    task_types_json: Any = Field(default=None, nullable=True, sa_type=JsonText())
    created_at: float = Field(sa_type=sa.Double())


class DeliveryRow(SQLModel, table=True):
    """A finished rollout owed to a group: pending (``delivered_at`` NULL) or in flight until ``visible_at``."""

    __tablename__ = "agl_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("group_name", "rollout_id", name="uq_agl_deliveries_group_rollout"),
        sa.Index("ix_agl_deliveries_visible", "group_name", "visible_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=_big_id())
    group_name: str
    rollout_id: str
    consumer: str | None = None
    delivered_at: float | None = Field(default=None, sa_type=sa.Double())
    visible_at: float = Field(default=0.0, sa_type=sa.Double())


def _table(model: type[SQLModel]) -> sa.Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, sa.Table)
    return table


VERSION = _table(SchemaVersionRow)
ROLLOUTS = _table(RolloutRow)
ATTEMPTS = _table(AttemptRow)
SPANS = _table(SpanRow)
RESOURCES = _table(ResourcesRow)
SUBSCRIPTIONS = _table(SubscriptionRow)
DELIVERIES = _table(DeliveryRow)

TABLES: list[sa.Table] = [VERSION, ROLLOUTS, ATTEMPTS, SPANS, RESOURCES, SUBSCRIPTIONS, DELIVERIES]
"""Every table of the schema, in creation order."""


def _add_count_index(conn: Connection) -> None:
    next(i for i in ROLLOUTS.indexes if i.name == "ix_agl_rollouts_counts").create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _add_count_index}
"""``MIGRATIONS[n]`` upgrades a database from schema version ``n`` to ``n + 1`` (inside one transaction)."""
