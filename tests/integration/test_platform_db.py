"""The platform DB on the stack's own PostgreSQL (`COLTSFOOT_PLATFORM_DB=postgres make up`): a database and a
role of its own behind PgBouncer, which no tenant role can enter and which can do nothing beyond its database."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from psycopg import sql

from devstack.services import PgBouncerServer
from devstack.services import PlatformDatabase
from devstack.services import PostgresServer
from drivers import pgbouncer as pgbouncer_files

pytestmark = pytest.mark.integration


@pytest.fixture
def database(postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer) -> PlatformDatabase:
    name = f"platform_{secrets.token_hex(4)}"
    database = PlatformDatabase(postgres_server, pgbouncer_server, secrets.token_urlsafe(24), role=name, name=name)
    database.ensure()
    return database


def test_the_platform_reaches_its_own_database_through_pgbouncer_as_an_ordinary_role(database: PlatformDatabase):
    with psycopg.connect(database.url, autocommit=True, connect_timeout=5) as conn:
        user, dbname, timezone, port = conn.execute(
            "SELECT current_user, current_database(), current_setting('TimeZone'), %s", (conn.info.port,)
        ).fetchone() or ("", "", "", 0)
        flags = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        conn.execute("CREATE TABLE platform_probe (id int)")  # it owns its database's schema
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{database.name}_more")))
    assert (user, dbname, timezone) == (database.role, database.name, "UTC")
    assert port == database.pgbouncer.port
    assert flags == (False, False, False, False, False)


def test_ensuring_it_again_changes_nothing(database: PlatformDatabase):
    before = database.pgbouncer.auth_file.read_text()

    database.ensure()

    assert database.pgbouncer.auth_file.read_text() == before
    with psycopg.connect(database.url, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_tenant_role_cannot_enter_the_platform_db(database: PlatformDatabase):
    postgres, pgbouncer = database.postgres, database.pgbouncer
    tenant_role, password = f"t_{secrets.token_hex(8)}", secrets.token_urlsafe(16)
    with psycopg.connect(postgres.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(tenant_role), sql.Literal(pgbouncer_files.scram_verifier(password))
            )
        )
        verifier = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (tenant_role,)).fetchone()
    assert verifier is not None
    with pgbouncer_files.userlist_lock(pgbouncer.auth_file):
        pgbouncer_files.userlist_upsert(pgbouncer.auth_file, tenant_role, str(verifier[0]))
        pgbouncer.reload()

    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(pgbouncer.dsn(tenant_role, password, database.name), connect_timeout=5).close()
