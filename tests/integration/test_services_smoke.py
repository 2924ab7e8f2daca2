"""Smoke tests for the integration fixtures themselves: each service is real, reachable and configured the
way the platform expects."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess

import httpx
import psycopg
import pytest
import redis
from psycopg import sql

from devstack.services import ALL_INTERFACES
from devstack.services import INSTANCE_LABEL
from devstack.services import CaddyServer
from devstack.services import PgBouncerServer
from devstack.services import PostgresServer
from devstack.services import RedisServer

pytestmark = pytest.mark.integration


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        client.set("smoke", "ok")
        assert client.get("smoke") == b"ok"
    finally:
        client.close()


def test_caddy_admin_serves_its_config(caddy_server: CaddyServer) -> None:
    response = httpx.get(f"{caddy_server.admin_url}/config/", timeout=5, trust_env=False)

    assert response.status_code == 200
    config = response.json()
    assert config["admin"]["listen"] == f"127.0.0.1:{caddy_server.admin_port}"
    # The fixture configures only the admin endpoint; the edge server is the platform's to create
    # (other tests of the session may have made it create it by now).
    assert set(config) <= {"admin", "apps"}
    assert caddy_server.edge_port != caddy_server.admin_port


def test_postgres_accepts_the_superuser(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT current_setting('is_superuser'), current_setting('port')::int, "
            "current_setting('listen_addresses'), current_setting('password_encryption')"
        ).fetchone()

    assert row == ("on", postgres_server.port, "127.0.0.1", "scram-sha-256")


def test_pgbouncer_admits_a_new_role_after_reload(
    postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
) -> None:
    role = f"t_{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(18)
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role)))
        found = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert found is not None
    verifier = found[0]
    assert verifier.startswith("SCRAM-SHA-256$")
    dsn = pgbouncer_server.dsn(role, password, role)

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, prepare_threshold=None, connect_timeout=5).close()

    # What the platform does: add the role's SCRAM verifier (as PostgreSQL stores it, so PgBouncer can pass
    # the client's proof through to the server) to the auth_file, then RELOAD on the admin console.
    with pgbouncer_server.auth_file.open("a") as auth_file:
        auth_file.write(f'"{role}" "{verifier}"\n')
    pgbouncer_server.reload()

    with psycopg.connect(dsn, prepare_threshold=None, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, current_database(), %s::int", (7,)).fetchone()
    assert row == (role, role, 7)
    config = {name: value for name, value, *_ in pgbouncer_server.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["listen_addr"] == ALL_INTERFACES


def test_isolated_podman_network_reaches_pgbouncer_but_not_postgres(
    postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer, instance_id: str
) -> None:
    """The path a tenant app's DATABASE_URL takes: from a gVisor container on an isolated bridge to the
    bridge gateway, where PgBouncer (bound to 0.0.0.0) answers and PostgreSQL (127.0.0.1 only) does not."""
    podman = shutil.which("podman")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if podman is None or python is None:
        pytest.fail("podman and /usr/bin/python3 are needed: apt-get install -y podman runsc", pytrace=False)
    network = f"coltsfoot-smoke-{instance_id}"
    subprocess.run(
        [podman, "network", "create", "--opt", "isolate=true", "--label", f"{INSTANCE_LABEL}={instance_id}", network],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        inspected = subprocess.run(
            [podman, "network", "inspect", network], check=True, capture_output=True, text=True, timeout=60
        )
        gateway = json.loads(inspected.stdout)[0]["subnets"][0]["gateway"]
        probe = (
            "import socket, sys\n"
            "for port in sys.argv[2:]:\n"
            "    try:\n"
            "        socket.create_connection((sys.argv[1], int(port)), timeout=3).close()\n"
            "        print(port, 'open')\n"
            "    except OSError:\n"
            "        print(port, 'closed')\n"
        )
        # No registry and no base image needed: the host's root, read-only, inside the gVisor sandbox.
        result = subprocess.run(
            [
                podman,
                "--runtime=/usr/bin/runsc",
                "--runtime-flag=network=host",
                "run",
                "--rm",
                "--network",
                network,
                "--label",
                f"{INSTANCE_LABEL}={instance_id}",
                "--read-only",
                "--cap-drop=all",
                "--security-opt=no-new-privileges",
                "--user",
                "65534:65534",
                "--rootfs",
                "/",
                python,
                "-c",
                probe,
                gateway,
                str(pgbouncer_server.port),
                str(postgres_server.port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(pgbouncer_server.port), "open", str(postgres_server.port), "closed"]
    finally:
        subprocess.run([podman, "network", "rm", "--force", network], capture_output=True, timeout=60, check=False)
