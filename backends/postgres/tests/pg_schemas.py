"""Fresh PostgreSQL schemas for tests (``?schema=agl_test_…``), dropped afterwards."""

from __future__ import annotations

import uuid

import psycopg


def drop_schemas(base_url: str, schemas: list[str]) -> None:
    if not schemas:
        return
    with psycopg.connect(base_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class SchemaFactory:
    """Hands out URLs of fresh schemas in the test database and remembers them for clean-up."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.schemas: list[str] = []

    def url(self) -> str:
        schema = f"agl_test_{uuid.uuid4().hex[:16]}"
        self.schemas.append(schema)
        return f"{self.base_url}{'&' if '?' in self.base_url else '?'}schema={schema}"
