"""Everything the platform DB holds, as text, on SQLite or PostgreSQL: what tests search for a plaintext that
must never reach the database."""

from __future__ import annotations

from django.db import connection


def _text(value: object) -> str:
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def database_dump() -> str:
    """Every row of every table (SQLite's own dump, which is what it writes to disk; on PostgreSQL each
    table's rows, read in full)."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        return "\n".join(connection.connection.iterdump())
    lines: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            lines.append(f"-- {table}")
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 (a table name)
            lines.extend(" | ".join(_text(value) for value in row) for row in cursor.fetchall())
    return "\n".join(lines)
