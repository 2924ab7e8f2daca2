from __future__ import annotations

import fcntl
import os
import stat
import threading
import uuid
from unittest import mock

import psycopg
import pytest
from django.test import override_settings
from psycopg import errors as pg_errors
from psycopg.sql import SQL
from psycopg.sql import Composable

from drivers import postgres as pg

HOSTILE = 'a"; DROP ROLE x; --'
HOSTILE_PASSWORD = "x'; DROP ROLE postgres; --"
ADDON = uuid.UUID("0f1e2d3c-4b5a-4697-8877-665544332211")

# Made by libpq (PQencryptPasswordConn) for role t_0123456789abcdef, password "correct horse battery".
KNOWN_VERIFIER = (
    "SCRAM-SHA-256$4096:ymgpSr/qcx6x2R91kXxTZA==$kkSnkJLSdabNHnFJVhY0N4Yo7xFlStJgh4xOTIzXqIE="
    ":MKGZ2Vzg1Trps42RnQbI8OEs7sKxcSQ171H3gXKzUgA="
)


def render(statement: Composable) -> str:
    return statement.as_string(None)


def outside_quotes(text: str) -> str:
    """The SQL text with every '...' literal and "..." identifier (with doubled quotes) removed."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in "'\"":
            index += 1
            while index < len(text):
                if text[index] == char:
                    if text[index + 1 : index + 2] == char:
                        index += 2
                        continue
                    break
                index += 1
            index += 1
            out.append(" ")
            continue
        out.append(char)
        index += 1
    return "".join(out)


# --- names ---------------------------------------------------------------------------------------


def test_names_are_derived_from_the_uuid_only():
    assert pg.role_name(ADDON) == "t_0f1e2d3c4b5a4697"
    assert pg.database_name(ADDON) == "d_0f1e2d3c4b5a4697"
    assert pg.role_name(ADDON) == pg.role_name(uuid.UUID(str(ADDON)))
    assert pg.ROLE_NAME_RE.fullmatch(pg.role_name(uuid.uuid4()))
    assert pg.DATABASE_NAME_RE.fullmatch(pg.database_name(uuid.uuid4()))


# --- role ----------------------------------------------------------------------------------------


def test_create_role_has_every_restriction_and_quoted_identifier():
    text = render(pg.create_role_sql("t_0123456789abcdef", "pw", connection_limit=7))
    assert text.startswith('CREATE ROLE "t_0123456789abcdef" WITH ')
    for attribute in (
        "LOGIN",
        "NOSUPERUSER",
        "NOCREATEDB",
        "NOCREATEROLE",
        "NOREPLICATION",
        "NOBYPASSRLS",
        "NOINHERIT",
    ):
        assert f" {attribute} " in text
    assert "CONNECTION LIMIT 7 " in text
    assert text.endswith("PASSWORD 'pw'")


def test_password_appears_only_as_a_literal():
    text = render(pg.create_role_sql("t_0123456789abcdef", HOSTILE_PASSWORD, connection_limit=3))
    assert text.count("'x''; DROP ROLE postgres; --'") == 1
    assert "DROP" not in outside_quotes(text)
    assert ";" not in outside_quotes(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda name: pg.create_role_sql(name, "pw", connection_limit=3),
        lambda name: pg.alter_role_sql(name, "pw", connection_limit=3),
        lambda name: pg.alter_role_sql(name, None, connection_limit=3),
        lambda name: pg.disable_login_sql(name),
        lambda name: pg.create_database_sql(name, name, connection_limit=3),
        lambda name: pg.drop_owned_sql(name),
        lambda name: pg.drop_database_sql(name),
        lambda name: pg.drop_role_sql(name),
        *[lambda name, i=i: pg.alter_database_sql(name, name, connection_limit=3)[i] for i in range(2)],
        *[lambda name, i=i: pg.database_privileges_sql(name, name)[i] for i in range(2)],
        *[lambda name, i=i: pg.schema_privileges_sql(name, schema=name)[i] for i in range(3)],
        *[
            lambda name, i=i: pg.role_settings_sql(
                name, statement_timeout_ms=1, idle_in_transaction_timeout_ms=1, lock_timeout_ms=1, temp_file_limit_kb=1
            )[i]
            for i in range(5)
        ],
        lambda name: pg.cluster_harden_sql([name])[0],
    ],
)
def test_hostile_name_cannot_inject(build):
    text = render(build(HOSTILE))
    assert '"a""; DROP ROLE x; --"' in text
    remainder = outside_quotes(text)
    assert ";" not in remainder
    assert "DROP ROLE x" not in remainder
    assert "--" not in remainder


def test_alter_role_without_password_leaves_it_alone():
    text = render(pg.alter_role_sql("t_0123456789abcdef", None, connection_limit=4))
    assert "PASSWORD" not in text
    assert "NOSUPERUSER" in text
    assert "CONNECTION LIMIT 4" in text
    with_password = render(pg.alter_role_sql("t_0123456789abcdef", "pw", connection_limit=4))
    assert with_password.endswith("CONNECTION LIMIT 4 PASSWORD 'pw'")


def test_role_settings():
    texts = [
        render(s)
        for s in pg.role_settings_sql(
            "t_0123456789abcdef",
            statement_timeout_ms=30000,
            idle_in_transaction_timeout_ms=60000,
            lock_timeout_ms=10000,
            temp_file_limit_kb=1048576,
        )
    ]
    assert texts == [
        'ALTER ROLE "t_0123456789abcdef" SET "statement_timeout" = 30000',
        'ALTER ROLE "t_0123456789abcdef" SET "idle_in_transaction_session_timeout" = 60000',
        'ALTER ROLE "t_0123456789abcdef" SET "lock_timeout" = 10000',
        'ALTER ROLE "t_0123456789abcdef" SET "temp_file_limit" = 1048576',
        'ALTER ROLE "t_0123456789abcdef" SET "client_connection_check_interval" = 2000',
    ]


@pytest.mark.parametrize(("statement_timeout", "expected"), [(30000, 10000), (3000, 3000), (0, pg.LOCK_TIMEOUT_MS_MAX)])
def test_lock_timeout_never_unbounded(statement_timeout, expected):
    assert pg._lock_timeout_ms(statement_timeout) == expected


# --- database ------------------------------------------------------------------------------------


def test_create_database():
    text = render(pg.create_database_sql("d_0123456789abcdef", "t_0123456789abcdef", connection_limit=5))
    assert text == (
        'CREATE DATABASE "d_0123456789abcdef" WITH OWNER "t_0123456789abcdef" TEMPLATE template0 '
        "ENCODING 'UTF8' CONNECTION LIMIT 5"
    )


def test_database_privileges_revoke_public_and_grant_connect():
    texts = [render(s) for s in pg.database_privileges_sql("d_0123456789abcdef", "t_0123456789abcdef")]
    assert texts == [
        'REVOKE ALL ON DATABASE "d_0123456789abcdef" FROM PUBLIC',
        'GRANT CONNECT, TEMPORARY ON DATABASE "d_0123456789abcdef" TO "t_0123456789abcdef"',
    ]


def test_schema_privileges():
    texts = [render(s) for s in pg.schema_privileges_sql("t_0123456789abcdef")]
    assert texts == [
        'ALTER SCHEMA "public" OWNER TO "t_0123456789abcdef"',
        'REVOKE ALL ON SCHEMA "public" FROM PUBLIC',
        'GRANT USAGE, CREATE ON SCHEMA "public" TO "t_0123456789abcdef"',
    ]


def test_cluster_harden_covers_maintenance_databases():
    texts = [render(s) for s in pg.cluster_harden_sql()]
    assert texts == [
        'REVOKE CONNECT, TEMPORARY ON DATABASE "postgres" FROM PUBLIC',
        'REVOKE CONNECT, TEMPORARY ON DATABASE "template1" FROM PUBLIC',
    ]


def test_deprovision_statements():
    assert (
        render(pg.drop_database_sql("d_0123456789abcdef"))
        == 'DROP DATABASE IF EXISTS "d_0123456789abcdef" WITH (FORCE)'
    )
    assert render(pg.drop_role_sql("t_0123456789abcdef")) == 'DROP ROLE IF EXISTS "t_0123456789abcdef"'
    assert render(pg.disable_login_sql("t_0123456789abcdef")) == 'ALTER ROLE "t_0123456789abcdef" WITH NOLOGIN'


@pytest.mark.parametrize(
    "query",
    [pg.TERMINATE_ROLE_SESSIONS_SQL, pg.ROLE_VERIFIER_SQL, pg.ROLE_DEPENDENT_DATABASES_SQL, pg.DATABASE_EXISTS_SQL],
)
def test_lookups_by_role_are_parameterised(query):
    # A constant statement with a placeholder: the role name travels as a bound parameter.
    assert isinstance(query, SQL)
    assert render(query).count("%s") == 1


def test_terminate_sessions_spares_own_backend():
    assert "pid <> pg_catalog.pg_backend_pid()" in render(pg.TERMINATE_ROLE_SESSIONS_SQL)


def test_runaway_reaper_only_touches_tenant_roles():
    text = render(pg.TERMINATE_RUNAWAY_SQL)
    assert "usename ~ '^t_[0-9a-f]{16}$'" in text
    assert text.count("%s") == 2


# --- credentials ---------------------------------------------------------------------------------


def test_database_url_quotes_password_and_hides_it_in_repr():
    creds = pg.PgCredentials(
        role="t_0123456789abcdef", database="d_0123456789abcdef", password="p@ss:/w?#%", host="10.88.0.1", port=6433
    )
    assert (
        creds.database_url()
        == "postgresql://t_0123456789abcdef:p%40ss%3A%2Fw%3F%23%25@10.88.0.1:6433/d_0123456789abcdef"
    )
    assert "p@ss" not in repr(creds)
    assert creds.database_url(host="10.89.0.1").startswith("postgresql://t_0123456789abcdef:p%40ss")
    assert "@10.89.0.1:6433/" in creds.database_url(host="10.89.0.1")


def test_database_url_ipv6_and_missing_host():
    creds = pg.PgCredentials(role="t_0123456789abcdef", database="d_0123456789abcdef", password="pw", host="", port=1)
    assert "@[fd00::1]:1/" in creds.database_url(host="fd00::1")
    with pytest.raises(ValueError, match="PgBouncer host"):
        creds.database_url()


# --- SCRAM ---------------------------------------------------------------------------------------


def test_scram_verifier_matches_libpq_output():
    assert pg.scram_verifier_matches(KNOWN_VERIFIER, "correct horse battery")
    assert not pg.scram_verifier_matches(KNOWN_VERIFIER, "correct horse battery!")
    assert not pg.scram_verifier_matches("md5" + "0" * 32, "correct horse battery")
    assert not pg.scram_verifier_matches("", "x")
    assert not pg.scram_verifier_matches(KNOWN_VERIFIER.replace("4096", "99999999"), "correct horse battery")


# --- auth_file -----------------------------------------------------------------------------------


def test_userlist_upsert_creates_file_with_private_mode(tmp_path):
    path = tmp_path / "pgbouncer" / "userlist.txt"
    path.parent.mkdir()
    with pg.userlist_lock(path):
        assert pg.userlist_upsert(path, "t_0123456789abcdef", KNOWN_VERIFIER)
    assert path.read_text() == f'"t_0123456789abcdef" "{KNOWN_VERIFIER}"\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_userlist_upsert_is_idempotent(tmp_path):
    path = tmp_path / "userlist.txt"
    assert pg.userlist_upsert(path, "t_0123456789abcdef", "SCRAM-SHA-256$a")
    before = path.stat()
    content = path.read_text()
    assert not pg.userlist_upsert(path, "t_0123456789abcdef", "SCRAM-SHA-256$a")
    after = path.stat()
    assert path.read_text() == content
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_userlist_keeps_foreign_lines_and_replaces_in_place(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_text('; managed by make up\n"pgbouncer" "admin-secret"\n"t_aaaaaaaaaaaaaaaa" "old"\n"other" "x"\n')
    path.chmod(0o640)
    assert pg.userlist_upsert(path, "t_aaaaaaaaaaaaaaaa", "new")
    assert pg.userlist_upsert(path, "t_bbbbbbbbbbbbbbbb", "b")
    assert path.read_text().splitlines() == [
        "; managed by make up",
        '"pgbouncer" "admin-secret"',
        '"t_aaaaaaaaaaaaaaaa" "new"',
        '"other" "x"',
        '"t_bbbbbbbbbbbbbbbb" "b"',
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_userlist_upsert_collapses_duplicates(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_text('"t_aaaaaaaaaaaaaaaa" "one"\n"x" "y"\n"t_aaaaaaaaaaaaaaaa" "two"\n')
    assert pg.userlist_upsert(path, "t_aaaaaaaaaaaaaaaa", "three")
    assert path.read_text() == '"t_aaaaaaaaaaaaaaaa" "three"\n"x" "y"\n'


def test_userlist_remove_is_idempotent(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_text('"pgbouncer" "p"\n"t_aaaaaaaaaaaaaaaa" "a"\n')
    assert pg.userlist_remove(path, "t_aaaaaaaaaaaaaaaa")
    assert path.read_text() == '"pgbouncer" "p"\n'
    assert not pg.userlist_remove(path, "t_aaaaaaaaaaaaaaaa")
    assert not pg.userlist_remove(tmp_path / "missing.txt", "t_aaaaaaaaaaaaaaaa")
    assert not (tmp_path / "missing.txt").exists()


def test_userlist_quotes_double_quotes_and_rejects_line_breaks(tmp_path):
    path = tmp_path / "userlist.txt"
    pg.userlist_upsert(path, 'we"ird', 'p"w')
    assert path.read_text() == '"we""ird" "p""w"\n'
    assert not pg.userlist_upsert(path, 'we"ird', 'p"w')
    with pytest.raises(ValueError, match="line breaks"):
        pg.userlist_upsert(path, "t_aaaaaaaaaaaaaaaa", "a\nb")


def test_userlist_write_is_atomic(tmp_path):
    path = tmp_path / "userlist.txt"
    pg.userlist_upsert(path, "t_aaaaaaaaaaaaaaaa", "a")
    old_inode = path.stat().st_ino
    with open(path) as reader:  # a reader of the old file sees the old, complete content
        pg.userlist_upsert(path, "t_bbbbbbbbbbbbbbbb", "b")
        assert reader.read() == '"t_aaaaaaaaaaaaaaaa" "a"\n'
    assert path.stat().st_ino != old_inode  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userlist.txt"]


def test_userlist_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "userlist.txt"
    pg.userlist_upsert(path, "t_aaaaaaaaaaaaaaaa", "a")
    with (
        mock.patch("drivers.pgbouncer.os.replace", autospec=True, side_effect=OSError("disk full")),
        pytest.raises(OSError, match="disk full"),
    ):
        pg.userlist_upsert(path, "t_bbbbbbbbbbbbbbbb", "b")
    assert path.read_text() == '"t_aaaaaaaaaaaaaaaa" "a"\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userlist.txt"]


def test_userlist_lock_is_exclusive(tmp_path):
    path = tmp_path / "userlist.txt"
    acquired = threading.Event()
    with pg.userlist_lock(path):
        fd = os.open(str(path) + ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

        def contender():
            with pg.userlist_lock(path):
                acquired.set()

        thread = threading.Thread(target=contender)
        thread.start()
        assert not acquired.wait(0.2)
    thread.join(5)
    assert acquired.is_set()


@pytest.mark.parametrize("role", [HOSTILE, "postgres", "t_0123", "t_0123456789ABCDEF", "pgbouncer"])
def test_pgbouncer_calls_refuse_non_tenant_roles(role, tmp_path):
    with override_settings(PGBOUNCER_AUTH_FILE=str(tmp_path / "userlist.txt")):
        with pytest.raises(ValueError, match="tenant role"):
            pg.pgbouncer_register(role)
        with pytest.raises(ValueError, match="tenant role"):
            pg.pgbouncer_unregister(role)
    assert not (tmp_path / "userlist.txt").exists()


def test_pgbouncer_kill_refuses_non_tenant_database():
    with pytest.raises(ValueError, match="tenant database"):
        pg.pgbouncer_kill_database("postgres")


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (pg_errors.AdminShutdown("x"), True),
        (pg_errors.ObjectInUse("x"), True),
        (pg_errors.LockNotAvailable("x"), True),
        (pg_errors.TooManyConnections("x"), True),
        (pg_errors.InternalError_("tuple concurrently updated"), True),
        (pg_errors.DependentObjectsStillExist("x"), True),
        (pg_errors.InsufficientPrivilege("x"), False),
        (pg_errors.SyntaxError("x"), False),
        (pg_errors.InvalidPassword("x"), False),
        (ConnectionRefusedError(), True),
        (PermissionError(), False),
        (ValueError(), False),
        (pg.PostgresError("x", transient=True), True),
    ],
)
def test_is_transient(exc, transient):
    assert pg.is_transient(exc) is transient


def test_provision_maps_connection_failure_to_transient_error_without_secrets():
    with (
        mock.patch(
            "drivers.postgres.psycopg.connect",
            autospec=True,
            side_effect=psycopg.OperationalError("connection refused"),
        ),
        pytest.raises(pg.PostgresError) as info,
    ):
        pg.provision(ADDON, "sup3r-s3cret")
    assert info.value.transient is True
    assert "sup3r-s3cret" not in str(info.value)
    assert str(info.value) == "provision failed (OperationalError)"


def test_permission_error_is_permanent_and_carries_sqlstate():
    with (
        mock.patch(
            "drivers.postgres.psycopg.connect",
            autospec=True,
            side_effect=pg_errors.InsufficientPrivilege("must be superuser"),
        ),
        pytest.raises(pg.PostgresError) as info,
    ):
        pg.cluster_harden()
    assert info.value.transient is False
    assert info.value.sqlstate == "42501"
    assert "must be superuser" not in str(info.value)
