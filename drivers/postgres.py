"""Tenant PostgreSQL databases behind PgBouncer: the only module that talks to the tenant cluster.

Each Postgres add-on gets one role ``t_<16 hex>`` and one database ``d_<16 hex>``, both derived
from the add-on's UUID, so every operation here is idempotent by name and a retried task
converges instead of duplicating. Tenant apps never see the cluster itself, only PgBouncer.

Isolation, in layers:
- the role is LOGIN and nothing else (NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS NOINHERIT) with a CONNECTION LIMIT it cannot raise itself;
- PUBLIC loses CONNECT/TEMP on every tenant database and, once per cluster (``cluster_harden``),
  on ``postgres`` and ``template1``; so a role can connect to its own database only;
- inside its database the role owns schema ``public`` and PUBLIC has no rights there.

Timeouts set on the role (statement_timeout, idle_in_transaction_session_timeout, lock_timeout,
client_connection_check_interval) are *defaults*: Postgres lets any role SET them for its session,
or even ALTER ROLE its own defaults. The enforced ceiling is PgBouncer's ``query_timeout`` (and
``idle_transaction_timeout``), which must be set *above* TENANT_PG_STATEMENT_TIMEOUT_MS so that
well-behaved queries get a clean "canceling statement due to statement timeout" from Postgres and
only a tenant who lifted its own timeout is cut off by PgBouncer. PgBouncer then closes both the
client and the server connection, but the backend only notices when it next touches the socket:
client_connection_check_interval makes it notice within seconds, and terminate_runaway_queries()
(for the reconciler) terminates whatever a tenant shielded from both. ``temp_file_limit`` is a
superuser-only setting, so the per-role value here is enforced by Postgres itself. A role can also
change its own password; that only breaks its own PgBouncer login until the next provision().

PgBouncer authentication is ``auth_file``: one line per role with the role's SCRAM verifier,
copied from ``pg_authid`` (never the password), rewritten atomically under a file lock
(``drivers.pgbouncer``, the one module that reads and writes PgBouncer's files) and followed by
``RELOAD`` on the admin console. With a SCRAM verifier in ``auth_file`` PgBouncer authenticates
the client and then logs in to Postgres with the client's proof ("SCRAM pass-through"), which
only works when the verifier is byte-identical to the server's: hence copying it from
``pg_authid`` rather than computing a fresh one. ``auth_query`` was not used: PgBouncer 1.18
runs it in the *target* database, so every tenant database would need a lookup function and the
lookup user would need CONNECT on every tenant database, which is exactly the privilege this
module takes away.

The plaintext password never reaches the server: libpq computes the SCRAM verifier client-side
and ``CREATE/ALTER ROLE ... PASSWORD`` is sent the verifier, so statement logging on the cluster
cannot leak it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from urllib.parse import quote
from uuid import UUID

import psycopg
from django.conf import settings
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from core.faults import InfrastructureError

# The auth_file and SCRAM helpers live with PgBouncer's other files; re-exported here because they
# are part of this driver's interface (provisioning and its tests use them through it).
from drivers.pgbouncer import scram_verifier_matches as scram_verifier_matches
from drivers.pgbouncer import userlist_lock as userlist_lock
from drivers.pgbouncer import userlist_read
from drivers.pgbouncer import userlist_remove as userlist_remove
from drivers.pgbouncer import userlist_upsert as userlist_upsert

logger = logging.getLogger(__name__)

ROLE_PREFIX = "t_"
DATABASE_PREFIX = "d_"
_NAME_HEX_CHARS = 16
ROLE_NAME_RE = re.compile(r"^t_[0-9a-f]{16}$")
DATABASE_NAME_RE = re.compile(r"^d_[0-9a-f]{16}$")

# Databases every cluster has that PUBLIC can CONNECT to by default. template0 has
# datallowconn = false already.
PROTECTED_DATABASES = ("postgres", "template1")

# Not (yet) settings: sane ceilings for a small shared cluster.
LOCK_TIMEOUT_MS_MAX = 10_000
TEMP_FILE_LIMIT_KB = 1024 * 1024  # 1 GiB of temp files per session
# When PgBouncer's query_timeout drops a server connection, the backend does not notice until it
# next writes to the socket: a pg_sleep(3600) keeps running (and keeps its connection slot).
# This makes Postgres poll the socket during long queries and cancel them. A default only
# (tenants can SET it); terminate_runaway_queries() is the backstop.
CLIENT_CONNECTION_CHECK_INTERVAL_MS = 2_000

ADMIN_CONNECT_TIMEOUT_SECONDS = 5
# Our own admin session must not hang forever behind a tenant's lock (e.g. DROP DATABASE).
_ADMIN_LOCK_TIMEOUT = "15s"
_ADMIN_STATEMENT_TIMEOUT = "120s"

_SCRAM_PREFIX = "SCRAM-SHA-256$"

# pg_advisory_lock key serialising provisioning DDL across Celery workers ("colt").
_PROVISIONING_LOCK_KEY = 0x636F6C74
ADVISORY_LOCK_SQL = sql.SQL("SELECT pg_catalog.pg_advisory_lock(%s)")
ADVISORY_UNLOCK_SQL = sql.SQL("SELECT pg_catalog.pg_advisory_unlock(%s)")


class PostgresError(InfrastructureError):
    """A provisioning step failed. ``transient`` says whether retrying later can help.

    The message names the step and the SQLSTATE only: server messages can quote statement
    fragments, and those are not for tenants or logs.
    """

    def __init__(self, message: str, *, transient: bool, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class PgCredentials:
    role: str
    database: str
    password: str = field(repr=False)
    host: str
    port: int

    def database_url(self, host: str | None = None) -> str:
        """``postgresql://`` URL for the app, pointing at PgBouncer.

        ``host`` overrides ``self.host``: with PGBOUNCER_HOST empty, the runtime passes the
        gateway address of the tenant's podman network.
        """
        target = host or self.host
        if not target:
            raise ValueError("no PgBouncer host: set COLTSFOOT_PGBOUNCER_HOST or pass the tenant gateway")
        if ":" in target and not target.startswith("["):
            target = f"[{target}]"
        user = quote(self.role, safe="")
        password = quote(self.password, safe="")
        database = quote(self.database, safe="")
        return f"postgresql://{user}:{password}@{target}:{self.port}/{database}"


# --- names -------------------------------------------------------------------------------------


def role_name(addon_id: UUID) -> str:
    return f"{ROLE_PREFIX}{addon_id.hex[:_NAME_HEX_CHARS]}"


def database_name(addon_id: UUID) -> str:
    return f"{DATABASE_PREFIX}{addon_id.hex[:_NAME_HEX_CHARS]}"


def _require_role_name(role: str) -> str:
    if not ROLE_NAME_RE.fullmatch(role):
        raise ValueError("not a tenant role name")
    return role


def _require_database_name(database: str) -> str:
    if not DATABASE_NAME_RE.fullmatch(database):
        raise ValueError("not a tenant database name")
    return database


# --- SQL builders (pure; identifiers via sql.Identifier, values via sql.Literal) ---------------


def create_role_sql(role: str, password: str, *, connection_limit: int) -> sql.Composed:
    """``password`` may be plaintext or (as provision() sends) a SCRAM verifier."""
    return sql.SQL(
        "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT "
        "CONNECTION LIMIT {limit} PASSWORD {password}"
    ).format(role=sql.Identifier(role), limit=sql.Literal(connection_limit), password=sql.Literal(password))


def alter_role_sql(role: str, password: str | None, *, connection_limit: int) -> sql.Composed:
    """Bring an existing role back to exactly the attributes create_role_sql() gives.

    ``password=None`` leaves the password alone.
    """
    statement = sql.SQL(
        "ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT "
        "CONNECTION LIMIT {limit}"
    ).format(role=sql.Identifier(role), limit=sql.Literal(connection_limit))
    if password is None:
        return statement
    return sql.Composed([statement, sql.SQL(" PASSWORD {}").format(sql.Literal(password))])


def role_settings_sql(
    role: str,
    *,
    statement_timeout_ms: int,
    idle_in_transaction_timeout_ms: int,
    lock_timeout_ms: int,
    temp_file_limit_kb: int,
    client_connection_check_interval_ms: int = CLIENT_CONNECTION_CHECK_INTERVAL_MS,
) -> list[sql.Composed]:
    values = (
        ("statement_timeout", statement_timeout_ms),
        ("idle_in_transaction_session_timeout", idle_in_transaction_timeout_ms),
        ("lock_timeout", lock_timeout_ms),
        ("temp_file_limit", temp_file_limit_kb),
        ("client_connection_check_interval", client_connection_check_interval_ms),
    )
    return [
        sql.SQL("ALTER ROLE {role} SET {name} = {value}").format(
            role=sql.Identifier(role), name=sql.Identifier(name), value=sql.Literal(value)
        )
        for name, value in values
    ]


def disable_login_sql(role: str) -> sql.Composed:
    return sql.SQL("ALTER ROLE {role} WITH NOLOGIN").format(role=sql.Identifier(role))


def create_database_sql(database: str, owner: str, *, connection_limit: int) -> sql.Composed:
    # template0: nothing an operator added to template1 leaks into tenant databases, and
    # CREATE DATABASE does not fail when someone happens to be connected to template1.
    return sql.SQL(
        "CREATE DATABASE {database} WITH OWNER {owner} TEMPLATE template0 ENCODING {encoding} CONNECTION LIMIT {limit}"
    ).format(
        database=sql.Identifier(database),
        owner=sql.Identifier(owner),
        encoding=sql.Literal("UTF8"),
        limit=sql.Literal(connection_limit),
    )


def alter_database_sql(database: str, owner: str, *, connection_limit: int) -> list[sql.Composed]:
    """Converge an existing database (a retried provision) to what create_database_sql() gives."""
    return [
        sql.SQL("ALTER DATABASE {database} OWNER TO {owner}").format(
            database=sql.Identifier(database), owner=sql.Identifier(owner)
        ),
        sql.SQL("ALTER DATABASE {database} WITH CONNECTION LIMIT {limit}").format(
            database=sql.Identifier(database), limit=sql.Literal(connection_limit)
        ),
    ]


def database_privileges_sql(database: str, role: str) -> list[sql.Composed]:
    return [
        sql.SQL("REVOKE ALL ON DATABASE {database} FROM PUBLIC").format(database=sql.Identifier(database)),
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}").format(
            database=sql.Identifier(database), role=sql.Identifier(role)
        ),
    ]


def schema_privileges_sql(role: str, schema: str = "public") -> list[sql.Composed]:
    """Run inside the tenant database."""
    return [
        sql.SQL("ALTER SCHEMA {schema} OWNER TO {role}").format(
            schema=sql.Identifier(schema), role=sql.Identifier(role)
        ),
        sql.SQL("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC").format(schema=sql.Identifier(schema)),
        sql.SQL("GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}").format(
            schema=sql.Identifier(schema), role=sql.Identifier(role)
        ),
    ]


def cluster_harden_sql(databases: Sequence[str] = PROTECTED_DATABASES) -> list[sql.Composed]:
    return [
        sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC").format(
            database=sql.Identifier(database)
        )
        for database in databases
    ]


# Parameterised (server-side binding), not composed: the role name is data here.
TERMINATE_ROLE_SESSIONS_SQL = sql.SQL(
    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
    "WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()"
)

DATABASE_EXISTS_SQL = sql.SQL("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s")

ROLE_VERIFIER_SQL = sql.SQL("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s")

# Databases holding privileges or objects that mention the role (a tenant can GRANT on its own
# tables to another tenant's role; that must not make the other tenant's deprovision fail).
ROLE_DEPENDENT_DATABASES_SQL = sql.SQL(
    "SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s "
    "JOIN pg_catalog.pg_database d ON d.oid = s.dbid "
    "JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid "
    "WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND r.rolname = %s AND d.datallowconn"
)


# Backstop for timeouts a tenant switched off for its own session: backends of tenant roles that
# have run one statement, or sat idle inside a transaction, for longer than the given seconds.
TERMINATE_RUNAWAY_SQL = sql.SQL(
    "SELECT usename, pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
    "WHERE usename ~ '^t_[0-9a-f]{16}$' AND backend_type = 'client backend' "
    "AND pid <> pg_catalog.pg_backend_pid() AND ("
    "(state = 'active' AND query_start < pg_catalog.now() - pg_catalog.make_interval(secs => %s)) "
    "OR (state IN ('idle in transaction', 'idle in transaction (aborted)') "
    "AND state_change < pg_catalog.now() - pg_catalog.make_interval(secs => %s)))"
)


def drop_owned_sql(role: str) -> sql.Composed:
    return sql.SQL("DROP OWNED BY {role}").format(role=sql.Identifier(role))


def drop_database_sql(database: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {database} WITH (FORCE)").format(database=sql.Identifier(database))


def drop_role_sql(role: str) -> sql.Composed:
    return sql.SQL("DROP ROLE IF EXISTS {role}").format(role=sql.Identifier(role))


# --- operations ---------------------------------------------------------------------------------


def cluster_harden() -> None:
    """Take CONNECT/TEMP on ``postgres`` and ``template1`` away from PUBLIC. Idempotent.

    Run once at cluster bootstrap; provision() runs it too, so a forgotten bootstrap step does
    not leave tenants able to reach the maintenance database. The superuser keeps access.
    """
    with _translate_errors("cluster harden"), _admin_connection(serialized=True) as conn:
        for statement in cluster_harden_sql():
            conn.execute(statement)


def provision(addon_id: UUID, password: str) -> PgCredentials:
    """Create (or converge) the add-on's role and database and register the role with PgBouncer.

    Safe to retry at any point: an existing role gets its attributes, limits and settings reset
    (and its password, unless the stored verifier already matches), an existing database its
    owner, limit and privileges.
    """
    role = role_name(addon_id)
    database = database_name(addon_id)
    limit = settings.TENANT_PG_CONNECTION_LIMIT
    log_extra = {"addon_id": str(addon_id), "role": role, "database": database}

    with _translate_errors("provision"), _admin_connection(serialized=True) as conn:
        for statement in cluster_harden_sql():
            conn.execute(statement)
        _role_ensure(conn, role, password, connection_limit=limit, log_extra=log_extra)
        for statement in role_settings_sql(
            role,
            statement_timeout_ms=settings.TENANT_PG_STATEMENT_TIMEOUT_MS,
            idle_in_transaction_timeout_ms=settings.TENANT_PG_IDLE_TX_TIMEOUT_MS,
            lock_timeout_ms=_lock_timeout_ms(settings.TENANT_PG_STATEMENT_TIMEOUT_MS),
            temp_file_limit_kb=TEMP_FILE_LIMIT_KB,
        ):
            conn.execute(statement)
        _database_ensure(conn, database, role, connection_limit=limit, log_extra=log_extra)
        for statement in database_privileges_sql(database, role):
            conn.execute(statement)
        # Still under the lock held by `conn`.
        with _admin_connection(dbname=database) as db_conn:
            for statement in schema_privileges_sql(role):
                db_conn.execute(statement)

    pgbouncer_register(role)
    logger.info("tenant postgres provisioned", extra=log_extra)
    return PgCredentials(
        role=role,
        database=database,
        password=password,
        host=settings.PGBOUNCER_HOST,
        port=settings.PGBOUNCER_PORT,
    )


def _role_ensure(
    conn: psycopg.Connection[TupleRow], role: str, password: str, *, connection_limit: int, log_extra: dict[str, str]
) -> None:
    row = conn.execute(ROLE_VERIFIER_SQL, (role,)).fetchone()
    if row is None:
        try:
            conn.execute(
                create_role_sql(role, _scram_verifier(conn, role, password), connection_limit=connection_limit)
            )
            logger.info("tenant postgres role created", extra=log_extra)
            return
        except (pg_errors.DuplicateObject, pg_errors.UniqueViolation):
            # Another worker created it between our look-up and CREATE (UniqueViolation is how
            # that race sometimes surfaces); converge it below like any existing role.
            row = conn.execute(ROLE_VERIFIER_SQL, (role,)).fetchone()
    current = str(row[0]) if row and row[0] else ""
    # Keep the stored verifier when it already matches: a fresh salt would change PgBouncer's
    # auth_file line and its SCRAM pass-through keys for nothing.
    same = scram_verifier_matches(current, password)
    new_verifier = None if same else _scram_verifier(conn, role, password)
    conn.execute(alter_role_sql(role, new_verifier, connection_limit=connection_limit))
    logger.info("tenant postgres role existed; attributes reset", extra={**log_extra, "password_reset": str(not same)})


def _database_ensure(
    conn: psycopg.Connection[TupleRow], database: str, owner: str, *, connection_limit: int, log_extra: dict[str, str]
) -> None:
    exists = conn.execute(DATABASE_EXISTS_SQL, (database,)).fetchone() is not None
    if not exists:
        try:
            conn.execute(create_database_sql(database, owner, connection_limit=connection_limit))
            logger.info("tenant postgres database created", extra=log_extra)
            return
        except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
            pass  # created concurrently by another worker: converge it below
    for statement in alter_database_sql(database, owner, connection_limit=connection_limit):
        conn.execute(statement)
    logger.info("tenant postgres database existed; owner and limit reset", extra=log_extra)


def deprovision(addon_id: UUID) -> None:
    """Remove the add-on's database and role and forget the role in PgBouncer. Idempotent.

    Order matters: first nobody can log in any more (PgBouncer auth line, then NOLOGIN), then
    existing sessions go, then the data, then the role.
    """
    role = role_name(addon_id)
    database = database_name(addon_id)
    log_extra = {"addon_id": str(addon_id), "role": role, "database": database}

    pgbouncer_unregister(role)
    pgbouncer_kill_database(database)

    with _translate_errors("deprovision"), _admin_connection(serialized=True) as conn:
        # UndefinedObject: the role is already gone, an earlier attempt got further than this.
        with contextlib.suppress(pg_errors.UndefinedObject):
            conn.execute(disable_login_sql(role))
        conn.execute(TERMINATE_ROLE_SESSIONS_SQL, (role,))
        conn.execute(drop_database_sql(database))
        dependent = [str(row[0]) for row in conn.execute(ROLE_DEPENDENT_DATABASES_SQL, (role,))]
        for other in dependent:
            with _admin_connection(dbname=other) as other_conn:
                other_conn.execute(drop_owned_sql(role))
        conn.execute(drop_role_sql(role))
    logger.info("tenant postgres deprovisioned", extra=log_extra)


def terminate_runaway_queries(
    *, max_statement_seconds: float | None = None, max_idle_in_transaction_seconds: float | None = None
) -> int:
    """Terminate tenant backends that outlived their limits; returns how many. For the reconciler.

    Defaults: twice the configured statement / idle-in-transaction timeouts, so this only ever
    catches sessions whose tenant lifted its own limits (or whose PgBouncer link already died).
    """
    statement_limit = max_statement_seconds or 2 * max(settings.TENANT_PG_STATEMENT_TIMEOUT_MS, 1000) / 1000
    idle_limit = max_idle_in_transaction_seconds or 2 * max(settings.TENANT_PG_IDLE_TX_TIMEOUT_MS, 1000) / 1000
    with _translate_errors("terminate runaway queries"), _admin_connection() as conn:
        rows = conn.execute(TERMINATE_RUNAWAY_SQL, (statement_limit, idle_limit)).fetchall()
    terminated = sorted({str(row[0]) for row in rows if row[1]})
    if terminated:
        logger.warning("terminated runaway tenant queries", extra={"count": len(rows), "roles": terminated})
    return len(rows)


# --- PgBouncer ---------------------------------------------------------------------------------


def pgbouncer_register(role: str) -> None:
    """Write the role's current SCRAM verifier into PgBouncer's auth_file and RELOAD.

    Always reloads, even when the file did not change: the previous attempt may have died
    between writing and reloading.
    """
    _require_role_name(role)
    with _translate_errors("pgbouncer register"):
        with _admin_connection() as conn:
            row = conn.execute(ROLE_VERIFIER_SQL, (role,)).fetchone()
        verifier = row[0] if row else None
        if not verifier:
            raise PostgresError("pgbouncer register: role has no password in the cluster", transient=False)
        if not str(verifier).startswith(_SCRAM_PREFIX):
            raise PostgresError("pgbouncer register: role password is not a SCRAM-SHA-256 verifier", transient=False)
        path = Path(settings.PGBOUNCER_AUTH_FILE)
        # The lock spans the reload so that every write is followed by a reload before the next
        # write starts (PgBouncer decides whether to re-read the file from its stat()).
        with userlist_lock(path):
            changed = userlist_upsert(path, role, str(verifier))
            _pgbouncer_admin([sql.SQL("RELOAD")])
    logger.info("pgbouncer role registered", extra={"role": role, "auth_file_changed": changed})


def pgbouncer_unregister(role: str) -> None:
    """Drop the role's auth_file line and RELOAD; new logins through PgBouncer then fail."""
    _require_role_name(role)
    with _translate_errors("pgbouncer unregister"):
        path = Path(settings.PGBOUNCER_AUTH_FILE)
        with userlist_lock(path):
            changed = userlist_remove(path, role)
            _pgbouncer_admin([sql.SQL("RELOAD")])
    logger.info("pgbouncer role unregistered", extra={"role": role, "auth_file_changed": changed})


def pgbouncer_kill_database(database: str) -> None:
    """Drop PgBouncer's client and server connections to a tenant database.

    PgBouncer 1.18 can kill per database, not per user; with one database per role that is the
    same thing. KILL leaves the database paused (with a ``*`` fallback entry it even registers an
    unknown name first), so RESUME must follow. "No such database" and "not paused" (a concurrent
    or earlier attempt got there first) count as done.
    """
    _require_database_name(database)
    with _translate_errors("pgbouncer kill"):
        try:
            _pgbouncer_admin(
                [
                    sql.SQL("KILL {}").format(sql.Identifier(database)),
                    sql.SQL("RESUME {}").format(sql.Identifier(database)),
                ]
            )
        except psycopg.Error as exc:
            message = str(exc).lower()
            if "no such database" not in message and "is not paused" not in message:
                raise
            logger.info("pgbouncer kill: nothing to do", extra={"database": database})
    logger.info("pgbouncer connections to database killed", extra={"database": database})


def pgbouncer_reload() -> None:
    with _translate_errors("pgbouncer reload"):
        _pgbouncer_admin([sql.SQL("RELOAD")])


def _pgbouncer_admin(commands: Sequence[sql.SQL | sql.Composed]) -> None:
    # The admin console speaks the simple query protocol only and rejects transactions:
    # autocommit, and no parameters (psycopg then sends a plain Query message).
    with psycopg.connect(
        settings.PGBOUNCER_ADMIN_DSN, autocommit=True, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS
    ) as conn:
        for command in commands:
            conn.execute(command)


# --- plumbing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _admin_connection(dbname: str | None = None, *, serialized: bool = False) -> Iterator[psycopg.Connection[TupleRow]]:
    """A superuser session on the tenant cluster, autocommit (CREATE DATABASE needs it), short-lived.

    ``serialized``: hold the cluster-wide provisioning lock for the session's lifetime. Concurrent
    catalog DDL on the same row (two workers both running REVOKE ... ON DATABASE template1, or
    ALTER ROLE on one role) fails with "tuple concurrently updated" rather than waiting, so all
    provisioning DDL takes turns. Advisory locks are per database: always take it in the DSN's
    maintenance database, and open any per-database session while holding it.
    """
    conninfo = settings.TENANT_PG_ADMIN_DSN
    if dbname:
        conninfo = make_conninfo(conninfo, dbname=dbname)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=ADMIN_CONNECT_TIMEOUT_SECONDS) as conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(_ADMIN_LOCK_TIMEOUT)))
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(_ADMIN_STATEMENT_TIMEOUT)))
        if serialized:
            # Session-level: released explicitly below, or by the server when the session ends.
            conn.execute(ADVISORY_LOCK_SQL, (_PROVISIONING_LOCK_KEY,))
        try:
            yield conn
        finally:
            if serialized and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(ADVISORY_UNLOCK_SQL, (_PROVISIONING_LOCK_KEY,))


def _lock_timeout_ms(statement_timeout_ms: int) -> int:
    # A lock wait is part of a statement, so no point waiting longer than the statement may run;
    # statement_timeout 0 means "no limit", which must not turn into "no lock limit" too.
    if statement_timeout_ms <= 0:
        return LOCK_TIMEOUT_MS_MAX
    return min(LOCK_TIMEOUT_MS_MAX, statement_timeout_ms)


def _scram_verifier(conn: psycopg.Connection[TupleRow], role: str, password: str) -> str:
    """SCRAM-SHA-256 verifier computed by libpq on this side (PQencryptPasswordConn)."""
    return conn.pgconn.encrypt_password(password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256").decode(
        "ascii"
    )


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the step that raised ``exc`` later can succeed."""
    if isinstance(exc, PostgresError):
        return exc.transient
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate or ""
        if sqlstate.startswith("28"):  # invalid authorization: our DSN is wrong, retrying won't fix it
            return False
        # Connection refused/reset, admin shutdown, too many connections, lock/statement timeout,
        # deadlock, object in use; DROP ROLE racing a new GRANT (re-running cleans it up); and
        # XX000, which catalog DDL raises as "tuple concurrently updated" when it races DDL we do
        # not serialise (a tenant's own GRANTs).
        return isinstance(exc, psycopg.OperationalError) or sqlstate in {"2BP01", "XX000"}
    if isinstance(exc, OSError):
        return not isinstance(exc, PermissionError)
    return False


@contextlib.contextmanager
def _translate_errors(step: str) -> Iterator[None]:
    try:
        yield
    except PostgresError:
        raise
    except (psycopg.Error, OSError) as exc:
        sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
        transient = is_transient(exc)
        logger.warning(
            "tenant postgres step failed",
            extra={"step": step, "error_type": type(exc).__name__, "sqlstate": sqlstate, "transient": transient},
        )
        raise PostgresError(
            f"{step} failed ({type(exc).__name__}{f', sqlstate {sqlstate}' if sqlstate else ''})",
            transient=transient,
            sqlstate=sqlstate,
        ) from exc


def pgbouncer_registered_roles() -> set[str] | None:
    """The roles PgBouncer's auth_file lets in, from one read of the file; None when there is no
    auth_file (no PgBouncer on this machine), so that nothing is "missing" from it."""
    path = Path(settings.PGBOUNCER_AUTH_FILE) if settings.PGBOUNCER_AUTH_FILE else None
    if path is None or not path.is_file():
        return None
    return set(userlist_read(path))


# --- backups of tenant databases -------------------------------------------------------------------
#
# pg_dump and pg_restore run as the tenant's own role, connecting to PostgreSQL directly (not through
# PgBouncer, whose transaction pooling breaks their sessions): a dump can only contain what that role can
# read in its own database, never another tenant's data, and a restore can only create objects the role
# may create (a superuser pg_restore would run a hostile dump's SQL as superuser). The password goes in
# PGPASSWORD, never on the command line. Their stderr can quote tenant data (COPY errors show the row),
# so it is never logged: only the step and the exit status.

TOOL_CHUNK_BYTES = 64 * 1024
DUMP_LOCK_WAIT_TIMEOUT_MS = 30_000


def _tenant_conninfo(role: str, database: str) -> list[str]:
    target = conninfo_to_dict(settings.TENANT_PG_ADMIN_DSN)
    args = []
    if target.get("host"):
        args += ["--host", str(target["host"])]
    if target.get("port"):
        args += ["--port", str(target["port"])]
    role, database = _require_role_name(role), _require_database_name(database)
    return [*args, "--username", role, "--no-password", "--dbname", database]


def tenant_dump_argv(role: str, database: str) -> list[str]:
    """pg_dump of one tenant database, custom format (compressed; what `pg_restore` reads), to stdout,
    without owners or grants so that it restores under any role."""
    return [
        settings.PG_DUMP_BIN,
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        f"--lock-wait-timeout={DUMP_LOCK_WAIT_TIMEOUT_MS}",
        *_tenant_conninfo(role, database),
    ]


def tenant_restore_argv(role: str, database: str) -> list[str]:
    """pg_restore of a custom-format dump read from stdin into the tenant database: what the dump has
    replaces what the database has (`--clean --if-exists`), all or nothing (`--single-transaction`)."""
    return [
        settings.PG_RESTORE_BIN,
        "--clean",
        "--if-exists",
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        *_tenant_conninfo(role, database),
    ]


def _tool_env(password: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PGPASSWORD": password,
        "PGCONNECT_TIMEOUT": str(ADMIN_CONNECT_TIMEOUT_SECONDS),
        "PGAPPNAME": "coltsfoot-backup",
    }


def _tool_failure(step: str, returncode: int | None, stderr: str, log_extra: dict[str, str]) -> PostgresError:
    text = stderr.lower()
    if "password authentication failed" in text or "no password supplied" in text:
        # The tenant changed its own role's password: the next provision() resets it.
        transient, reason = False, "the database refused the add-on's credentials"
    elif "could not connect" in text or "connection refused" in text or "timeout" in text or "terminat" in text:
        transient, reason = True, "the database was not reachable"
    else:
        transient, reason = False, "the tool reported an error"
    logger.warning(
        "tenant postgres tool failed",
        extra={**log_extra, "step": step, "returncode": returncode, "transient": transient, "reason": reason},
    )
    return PostgresError(f"{step} failed: {reason} (exit status {returncode})", transient=transient)


def _spawn(argv: list[str], password: str, **kwargs: object) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, env=_tool_env(password), **kwargs)  # type: ignore[call-overload,no-any-return]
    except FileNotFoundError as exc:
        raise PostgresError(f"{argv[0]} is not installed (Debian package postgresql-client)", transient=False) from exc


def _watchdog(process: subprocess.Popen[bytes], timeout: float) -> threading.Timer:
    timer = threading.Timer(timeout, process.kill)
    timer.daemon = True
    timer.start()
    return timer


def tenant_dump(addon_id: UUID, password: str, sink: Callable[[bytes], None], *, timeout: float) -> int:
    """Stream a pg_dump of the add-on's database into `sink`, chunk by chunk; the number of bytes.
    Killed after `timeout` seconds. Raises PostgresError (transient when the cluster was unreachable)."""
    role, database = role_name(addon_id), database_name(addon_id)
    log_extra = {"addon_id": str(addon_id), "database": database}
    with tempfile.TemporaryFile() as stderr:
        process = _spawn(tenant_dump_argv(role, database), password, stdout=subprocess.PIPE, stderr=stderr)
        timer = _watchdog(process, timeout)
        total = 0
        try:
            assert process.stdout is not None  # noqa: S101 - stdout=PIPE
            while chunk := process.stdout.read(TOOL_CHUNK_BYTES):
                sink(chunk)
                total += len(chunk)
            returncode = process.wait(timeout=max(1.0, timeout))
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if returncode != 0:
            stderr.seek(0)
            raise _tool_failure("pg_dump", returncode, stderr.read().decode("utf-8", "replace"), log_extra)
    logger.info("tenant database dumped", extra={**log_extra, "bytes": total})
    return total


def tenant_restore(addon_id: UUID, password: str, chunks: Iterable[bytes], *, timeout: float) -> None:
    """Restore a custom-format dump (given as `chunks`) into the add-on's database, as its role.

    PgBouncer's connections to the database are killed and new ones held (KILL pauses the database)
    until the restore ends, and the role's own sessions are terminated first, so the app's open
    transactions cannot hold the locks `--clean` needs; the app's requests wait instead of failing."""
    role, database = role_name(addon_id), database_name(addon_id)
    log_extra = {"addon_id": str(addon_id), "database": database}
    with _translate_errors("restore pause"):
        try:
            _pgbouncer_admin([sql.SQL("KILL {}").format(sql.Identifier(database))])
        except psycopg.Error as exc:
            if "no such database" not in str(exc).lower():
                raise
            # PgBouncer has no pool for it yet (the app never connected): nothing to hold.
    try:
        with _translate_errors("restore terminate sessions"), _admin_connection() as conn:
            conn.execute(TERMINATE_ROLE_SESSIONS_SQL, (role,))
        _restore_stream(role, database, password, chunks, timeout=timeout, log_extra=log_extra)
    finally:
        _pgbouncer_resume(database, log_extra)
    logger.info("tenant database restored", extra=log_extra)


RESUME_ATTEMPTS = 5


def _pgbouncer_resume(database: str, log_extra: dict[str, str]) -> None:
    """RESUME after a restore, whatever happened to it: a database left paused would hold every
    connection of the app forever. "Not paused" / "no such database" mean there is nothing to do."""
    for attempt in range(RESUME_ATTEMPTS):
        try:
            _pgbouncer_admin([sql.SQL("RESUME {}").format(sql.Identifier(database))])
            return
        except psycopg.Error as exc:
            message = str(exc).lower()
            if "is not paused" in message or "no such database" in message:
                return
        except OSError:
            pass
        time.sleep(0.5 * (attempt + 1))
    logger.error("pgbouncer database left paused after a restore: RESUME it on the admin console", extra=log_extra)


def _restore_stream(
    role: str, database: str, password: str, chunks: Iterable[bytes], *, timeout: float, log_extra: dict[str, str]
) -> None:
    with tempfile.TemporaryFile() as stderr:
        process = _spawn(
            tenant_restore_argv(role, database),
            password,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        timer = _watchdog(process, timeout)
        try:
            assert process.stdin is not None  # noqa: S101 - stdin=PIPE
            try:
                for chunk in chunks:
                    process.stdin.write(chunk)
                process.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit status says why
            returncode = process.wait(timeout=max(1.0, timeout))
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if returncode != 0:
            stderr.seek(0)
            raise _tool_failure("pg_restore", returncode, stderr.read().decode("utf-8", "replace"), log_extra)
