"""`python -m devstack.testdb -- COMMAND ...`: run COMMAND (the unit suite) with DATABASE_URL pointing at a
throwaway PostgreSQL cluster, then stop the cluster and remove it (`make test-unit-pg`).

The cluster is `PostgresServer` in its ephemeral form (free port, private temp dir, no fsync). COMMAND gets a
role of its own that may create databases but is not a superuser, so the suite runs with the rights the
platform has in production; pytest-django creates `test_<name>` (one per xdist worker: `test_<name>_gw0`, ...)
and drops it at the end.

COMMAND talks to PostgreSQL directly, not through PgBouncer: creating and dropping the test databases needs a
session on the `postgres` database, and DROP DATABASE fails while a pooler still holds server connections to
it. Transaction pooling is exercised where it matters, by the integration run on the PostgreSQL platform DB.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.services import PostgresServer

logger = logging.getLogger(__name__)

TEST_ROLE = "coltsfoot_test"
TEST_DATABASE = "coltsfoot"
SUITE_TIMEOUT_SECONDS = 3600


def role_create(postgres: PostgresServer, role: str, password: str) -> None:
    """A login role that may create databases (pytest-django's test databases), nothing more."""
    with psycopg.connect(postgres.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB NOSUPERUSER NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(TEST_DATABASE), sql.Identifier(role)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.testdb", description=__doc__)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    logging.basicConfig(level=logging.WARNING, format="devstack.testdb: %(levelname)s %(message)s", stream=sys.stderr)
    log_dir = Path(tempfile.mkdtemp(prefix="coltsfoot-testdb-logs-"))
    password = secrets.token_urlsafe(24)
    with PostgresServer(log_dir) as postgres:
        role_create(postgres, TEST_ROLE, password)
        env = {**os.environ, "DATABASE_URL": postgres.dsn(TEST_ROLE, password, TEST_DATABASE)}
        sys.stderr.write(f"devstack.testdb: PostgreSQL on 127.0.0.1:{postgres.port}, role {TEST_ROLE}\n")
        # The suite's output goes straight to the terminal (not captured), and its status is ours.
        result = subprocess.run(command, env=env, check=False, timeout=SUITE_TIMEOUT_SECONDS)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
