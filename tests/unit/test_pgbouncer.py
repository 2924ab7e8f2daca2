"""drivers.pgbouncer: the one pgbouncer.ini writer and the admin user's auth_file line."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from drivers import pgbouncer

# Made by libpq (PQencryptPasswordConn) for password "correct horse battery" (the same as test_postgres_sql).
KNOWN_VERIFIER = (
    "SCRAM-SHA-256$4096:ymgpSr/qcx6x2R91kXxTZA==$kkSnkJLSdabNHnFJVhY0N4Yo7xFlStJgh4xOTIzXqIE="
    ":MKGZ2Vzg1Trps42RnQbI8OEs7sKxcSQ171H3gXKzUgA="
)


def config(tmp_path: Path, *, statement_timeout_ms: int = 30_000, idle_tx_timeout_ms: int = 60_000):
    return pgbouncer.PgBouncerConfig(
        listen_addr="0.0.0.0",  # noqa: S104
        listen_port=6433,
        server_host="127.0.0.1",
        server_port=5433,
        auth_file=tmp_path / "userlist.txt",
        statement_timeout_ms=statement_timeout_ms,
        idle_tx_timeout_ms=idle_tx_timeout_ms,
    )


def test_scram_verifier_is_the_one_libpq_computes_for_the_same_salt():
    salt = base64.b64decode("ymgpSr/qcx6x2R91kXxTZA==")
    assert pgbouncer.scram_verifier("correct horse battery", salt=salt) == KNOWN_VERIFIER
    fresh = pgbouncer.scram_verifier("correct horse battery")
    assert fresh != KNOWN_VERIFIER
    assert pgbouncer.scram_verifier_matches(fresh, "correct horse battery")


def test_config_puts_the_ceilings_above_the_tenant_timeouts(tmp_path):
    text = pgbouncer.config_text(config(tmp_path, statement_timeout_ms=45_000, idle_tx_timeout_ms=120_000))
    settings = dict(
        line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith(("*", ";"))
    )
    assert settings["query_timeout"] == "75"
    assert settings["idle_transaction_timeout"] == "150"
    assert settings["server_login_retry"] == "1"
    assert settings["pool_mode"] == "transaction"
    assert settings["auth_file"] == str(tmp_path / "userlist.txt")
    assert "* = host=127.0.0.1 port=5433" in text.splitlines()


def test_config_write_is_private_and_idempotent(tmp_path):
    path = tmp_path / "pgbouncer.ini"
    assert pgbouncer.config_write(path, config(tmp_path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    assert not pgbouncer.config_write(path, config(tmp_path))
    assert path.stat().st_ino == inode
    assert pgbouncer.config_write(path, config(tmp_path, statement_timeout_ms=1000))


def test_admin_user_line_is_a_verifier_kept_while_the_password_is_the_same(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_text('"t_aaaaaaaaaaaaaaaa" "SCRAM-SHA-256$tenant"\n')

    assert pgbouncer.admin_user_ensure(path, "pgbouncer", "s3cret")
    first = pgbouncer.userlist_read(path)
    assert first["t_aaaaaaaaaaaaaaaa"] == "SCRAM-SHA-256$tenant"
    assert "s3cret" not in path.read_text()
    assert pgbouncer.scram_verifier_matches(first["pgbouncer"], "s3cret")

    assert not pgbouncer.admin_user_ensure(path, "pgbouncer", "s3cret")
    assert pgbouncer.userlist_read(path) == first

    assert pgbouncer.admin_user_ensure(path, "pgbouncer", "rotated")
    assert pgbouncer.scram_verifier_matches(pgbouncer.userlist_read(path)["pgbouncer"], "rotated")


def test_userlist_read_skips_comments_and_garbage(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_text('; comment\n"a" "x"\nnot a line\n"b""q" "y""z"\n"broken\n')
    assert pgbouncer.userlist_read(path) == {"a": "x", 'b"q': 'y"z'}
    assert pgbouncer.userlist_read(tmp_path / "missing") == {}
