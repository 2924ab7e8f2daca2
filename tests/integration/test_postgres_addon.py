"""The PostgreSQL add-on end to end: a real tenant cluster behind a real PgBouncer, reached from an app running
in gVisor, driven through the API and checked through the edge, as a tenant would see it. Only the checks
that nothing is left behind (roles, databases, the auth_file) look at the cluster directly."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devstack.services import PgBouncerServer
from devstack.services import Platform
from devstack.services import PostgresServer
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import latest_deployment_number
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_for_deployment_after
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

# A tenant app that exercises its database the way real apps (and hostile ones) do. PgBouncer runs in
# transaction mode, so server-side prepared statements are off, and anything that must share a session
# (a SET and the statement it is meant for) shares one transaction instead.
DB_APP = """
from __future__ import annotations

import os
import threading
import time

import psycopg
from flask import Flask
from flask import jsonify
from flask import request

app = Flask(__name__)


def connect(**kwargs):
    return psycopg.connect(os.environ["DATABASE_URL"], prepare_threshold=None, connect_timeout=15, **kwargs)


def failure(exc):
    return {"ok": False, "error": type(exc).__name__, "sqlstate": exc.sqlstate, "message": str(exc)}


def ensure_table(conn):
    conn.execute("CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, value text NOT NULL)")


@app.get("/")
def index():
    return "db app\\n"


@app.get("/db/write")
def db_write():
    with connect() as conn:
        ensure_table(conn)
        conn.execute("INSERT INTO notes (value) VALUES (%s)", (request.args["v"],))
    return jsonify(ok=True)


@app.get("/db/read")
def db_read():
    with connect() as conn:
        ensure_table(conn)
        rows = conn.execute("SELECT value FROM notes ORDER BY id").fetchall()
        who = conn.execute("SELECT current_user, current_database()").fetchone()
    return jsonify(values=[row[0] for row in rows], user=who[0], database=who[1])


@app.get("/db/probe")
def db_probe():
    # The app's own credentials, another database.
    try:
        with connect(dbname=request.args["dbname"], autocommit=True) as conn:
            database = conn.execute("SELECT current_database()").fetchone()[0]
    except psycopg.Error as exc:
        return jsonify(failure(exc))
    return jsonify(ok=True, database=database)


@app.get("/db/attempt")
def db_attempt():
    try:
        with connect(autocommit=True) as conn:
            conn.execute(request.args["sql"])
    except psycopg.Error as exc:
        return jsonify(failure(exc))
    return jsonify(ok=True)


@app.get("/db/sleep")
def db_sleep():
    started = time.monotonic()
    setting = None
    try:
        with connect() as conn:
            # One transaction, so one server session: the SET applies to the sleep.
            conn.execute("SET statement_timeout = 0")
            setting = conn.execute("SHOW statement_timeout").fetchone()[0]
            conn.execute("SELECT pg_sleep(%s)", (float(request.args["s"]),))
    except psycopg.Error as exc:
        return jsonify({**failure(exc), "elapsed": time.monotonic() - started, "statement_timeout": setting})
    return jsonify(ok=True, elapsed=time.monotonic() - started, statement_timeout=setting)


@app.get("/db/conns")
def db_conns():
    n = int(request.args.get("n", "20"))
    hold = float(request.args.get("hold", "1"))
    results = [None] * n
    start = threading.Barrier(n)

    def one(index):
        try:
            start.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        try:
            with connect() as conn:  # a transaction holds its server connection until it ends
                pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                count = "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user"
                before = conn.execute(count).fetchone()[0]
                conn.execute("SELECT 1")
                conn.execute("SELECT pg_sleep(%s)", (hold,))
                after = conn.execute(count).fetchone()[0]
            results[index] = {"ok": True, "pid": pid, "backends": max(before, after)}
        except psycopg.Error as exc:
            results[index] = failure(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return jsonify(results=results, elapsed=time.monotonic() - started)


@app.get("/env/<name>")
def env(name):
    return jsonify(set=name in os.environ, value=os.environ.get(name))
"""

# gthread workers with a long timeout: /db/sleep holds a request for a minute, and the default 30 s worker
# timeout would kill it before PgBouncer does. The release phase prints what a careless app might.
DB_PROCFILE = (
    "web: gunicorn --bind 0.0.0.0:$PORT --workers 2 --threads 8 --timeout 300 app:app\n"
    'release: python -c \'import os; print("release sees API_TOKEN=" + os.environ.get("API_TOKEN", "-"))\'\n'
)
DB_REQUIREMENTS = "flask\ngunicorn\npsycopg[binary]\n"


def db_archive() -> bytes:
    return tar_gz({"app.py": DB_APP, "Procfile": DB_PROCFILE, "requirements.txt": DB_REQUIREMENTS})


def _podman(*args: str) -> str:
    result = subprocess.run(
        ["podman", "--runtime", "/usr/bin/runsc", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return result.stdout


def _app_container_names(app_id: str) -> list[str]:
    out = _podman("ps", "--all", "--filter", f"label=coltsfoot.app={app_id}", "--format", "{{.Names}}")
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def _get_json(platform: Platform, app: dict[str, Any], path: str, *, timeout: float = 60.0) -> dict[str, Any]:
    response = platform.edge_get(app["url"].rstrip("/") + path, timeout=timeout)
    assert response.status_code == 200, f"{path}: HTTP {response.status_code}: {response.text[:500]}"
    return response.json()  # type: ignore[no-any-return]


def _cluster_has(postgres: PostgresServer, *, role: str, database: str) -> tuple[bool, bool]:
    with psycopg.connect(postgres.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        has_role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
        has_db = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
    return has_role, has_db


def _role_backends(postgres: PostgresServer, role: str, *, like: str = "%") -> int:
    with psycopg.connect(postgres.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND query LIKE %s", (role, like)
        ).fetchone()
    return int(row[0]) if row else 0


def _new_tenant(platform: Platform) -> httpx.Client:
    created = platform.create_tenant(f"pg{uuid.uuid4().hex[:8]}")
    return platform.client(created["token"], timeout=60)


def _add_postgres(client: httpx.Client, app_id: str) -> dict[str, Any]:
    """POST the add-on and wait until it is ready; returns the add-on as the API shows it."""
    response = client.post(f"/apps/{app_id}/addons/postgres")
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "provisioning"
    addon: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal addon
        addon = client.get(f"/apps/{app_id}/addons/postgres").json()
        assert addon["state"] != "failed", addon
        return bool(addon["state"] == "ready")

    wait_until(ready, timeout=120, message="the postgres add-on to be ready")
    return addon


def _deployed_with_postgres(platform: Platform, client: httpx.Client, name: str) -> dict[str, Any]:
    """An app running DB_APP with a ready add-on, and the release the add-on triggered live."""
    app = client.post("/apps", json={"name": name}).json()
    first = deploy_archive(client, app["id"], db_archive())
    done = wait_for_deployment(client, first["id"], {"live", "failed"}, timeout=420)
    assert done["state"] == "live", client.get(f"/deployments/{first['id']}/log").text
    # Before the add-on the app has no database at all.
    assert _get_json(platform, app, "/env/DATABASE_URL")["set"] is False
    number = latest_deployment_number(client, app["id"])
    addon = _add_postgres(client, app["id"])
    release = wait_for_deployment_after(client, app["id"], number, {"live", "failed"})
    assert release["state"] == "live", client.get(f"/deployments/{release['id']}/log").text
    assert release["source"]["kind"] == "release"
    return {"app": app, "addon": addon, "release": release}


@pytest.fixture(scope="module")
def tenant_a(platform: Platform) -> httpx.Client:
    return _new_tenant(platform)


@pytest.fixture(scope="module")
def app_a(platform: Platform, tenant_a: httpx.Client) -> dict[str, Any]:
    return _deployed_with_postgres(platform, tenant_a, "dbapp")


@pytest.fixture(scope="module")
def addon_b(platform: Platform) -> dict[str, Any]:
    """Another tenant's add-on (its app need not even be deployed for its database to exist)."""
    client = _new_tenant(platform)
    app = client.post("/apps", json={"name": "other"}).json()
    return _add_postgres(client, app["id"])


def test_app_writes_and_reads_back_through_pgbouncer(platform: Platform, app_a: dict[str, Any]):
    app, addon = app_a["app"], app_a["addon"]
    assert addon["user"].startswith("t_")
    assert addon["database"].startswith("d_")
    assert "password" not in json.dumps(addon).lower()
    marker = f"note-{uuid.uuid4().hex[:8]}"
    assert _get_json(platform, app, f"/db/write?v={marker}")["ok"] is True
    assert _get_json(platform, app, "/db/write?v=second")["ok"] is True
    read = _get_json(platform, app, "/db/read")
    assert read["values"][-2:] == [marker, "second"]
    assert read["user"] == addon["user"]
    assert read["database"] == addon["database"]
    # The URL the app got points at PgBouncer, not at the cluster itself.
    url = _get_json(platform, app, "/env/DATABASE_URL")["value"]
    assert f":{platform.pgbouncer.port}/{addon['database']}" in url
    assert f":{platform.postgres.port}/" not in url


@pytest.mark.parametrize("target", ["other tenant", "postgres", "template1", "template0"])
def test_app_cannot_open_any_database_but_its_own(
    platform: Platform, app_a: dict[str, Any], addon_b: dict[str, Any], target: str
):
    dbname = addon_b["database"] if target == "other tenant" else target
    probe = _get_json(platform, app_a["app"], f"/db/probe?dbname={dbname}")
    assert probe["ok"] is False, f"tenant A opened {dbname}: {probe}"
    # Its own database opens the same way, so the refusals above are about the target only.
    own = _get_json(platform, app_a["app"], f"/db/probe?dbname={app_a['addon']['database']}")
    assert own == {"ok": True, "database": app_a["addon"]["database"]}


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("CREATE ROLE intruder LOGIN PASSWORD 'x'", "permission denied to create role"),
        ("CREATE DATABASE intruder", "permission denied to create database"),
        ("ALTER ROLE current_user WITH CONNECTION LIMIT -1", "permission denied"),
        ("ALTER ROLE current_user WITH SUPERUSER", "must be superuser"),
        ("SET ROLE postgres", "permission denied to set role"),
    ],
)
def test_tenant_role_cannot_escalate(platform: Platform, app_a: dict[str, Any], statement: str, message: str):
    result = _get_json(platform, app_a["app"], "/db/attempt?" + str(httpx.QueryParams({"sql": statement})))
    assert result["ok"] is False, f"{statement!r} succeeded"
    assert result["sqlstate"] == "42501", result
    assert message in result["message"], result


def test_pgbouncer_cuts_off_a_query_whose_tenant_lifted_its_timeout(
    platform: Platform, pgbouncer_server: PgBouncerServer, postgres_server: PostgresServer, app_a: dict[str, Any]
):
    ceiling = pgbouncer_server.query_timeout
    sleep = 3 * ceiling
    started = time.monotonic()
    result = _get_json(platform, app_a["app"], f"/db/sleep?s={sleep}", timeout=sleep + 60)
    waited = time.monotonic() - started
    assert result["statement_timeout"] == "0", result  # the tenant really lifted its own timeout
    assert result["ok"] is False, result
    # PgBouncer's own error (SQLSTATE 08P01, "query timeout"), not Postgres's "canceling statement due to
    # statement timeout" (57014).
    assert "query timeout" in result["message"], result
    assert result["sqlstate"] != "57014", result
    # Cut off by PgBouncer's query_timeout, well before the sleep would have ended, and not by the role's
    # default statement_timeout (which the SET lifted).
    assert ceiling - 5 <= result["elapsed"] <= ceiling + 30, result
    assert waited < sleep - 30
    # The backend does not keep sleeping (and holding a connection slot) once its client is gone.
    wait_until(
        lambda: _role_backends(postgres_server, app_a["addon"]["user"], like="%pg_sleep%") == 0,
        timeout=30,
        message="the cut-off backend to go away",
    )
    # The app's next request gets a healthy connection.
    assert _get_json(platform, app_a["app"], "/db/read")["user"] == app_a["addon"]["user"]


def test_connections_are_capped_at_the_role_limit(
    platform: Platform, postgres_server: PostgresServer, app_a: dict[str, Any]
):
    role = app_a["addon"]["user"]
    with psycopg.connect(postgres_server.admin_dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    assert row is not None
    limit = int(row[0])
    assert 0 < limit < 20
    hold = 2.0
    n = 2 * limit + 4
    result = _get_json(platform, app_a["app"], f"/db/conns?n={n}&hold={hold}", timeout=120)
    outcomes = result["results"]
    succeeded = [r for r in outcomes if r["ok"]]
    failed = [r for r in outcomes if not r["ok"]]
    # PgBouncer queues the clients beyond its pool instead of failing them...
    assert failed == [], failed[:3]
    assert len(succeeded) == n
    # ...so the cluster never sees more server sessions for the role than its limit, and the transactions
    # beyond the limit had to wait for a free one.
    assert len({r["pid"] for r in succeeded}) <= limit
    assert max(r["backends"] for r in succeeded) <= limit
    assert result["elapsed"] >= 2 * hold


def test_secret_reaches_the_app_and_nothing_else(platform: Platform, tenant_a: httpx.Client, app_a: dict[str, Any]):
    client = tenant_a
    app = app_a["app"]
    secret = f"tok-{uuid.uuid4().hex}-sekrit"
    response = client.patch(f"/apps/{app['id']}/config", json={"secrets": {"API_TOKEN": secret}})
    assert response.status_code == 200, response.text
    assert secret not in response.text
    assert response.json()["secrets"] == ["API_TOKEN"]
    release = wait_for_deployment(client, response.json()["deployment_id"], {"live", "failed"})
    assert release["state"] == "live", client.get(f"/deployments/{release['id']}/log").text

    assert _get_json(platform, app, "/env/API_TOKEN") == {"set": True, "value": secret}

    config = client.get(f"/apps/{app['id']}/config")
    assert config.status_code == 200
    assert "API_TOKEN" in config.json()["secrets"]
    assert secret not in config.text

    deployments = client.get(f"/apps/{app['id']}/deployments", params={"limit": 100}).json()["items"]
    assert secret not in json.dumps(deployments)
    log = client.get(f"/deployments/{release['id']}/log").text
    assert "release sees API_TOKEN=" in log  # the release phase ran and printed it...
    for deployment in deployments:
        assert secret not in client.get(f"/deployments/{deployment['id']}/log").text  # ...redacted

    names = _app_container_names(app["id"])
    assert names
    inspected = _podman("inspect", *names)
    assert secret not in inspected
    assert "API_TOKEN" in inspected  # it is mounted as a podman secret, by name only

    sqlite_files = sorted(Path(platform.data_dir).glob("*.sqlite3*"))
    assert any(p.name.endswith(".sqlite3") for p in sqlite_files), sqlite_files
    for path in sqlite_files:
        assert secret.encode() not in path.read_bytes(), path

    for log_file in sorted(Path(platform.log_dir).glob("*.log")):
        assert secret.encode() not in log_file.read_bytes(), log_file


def test_deleting_the_addon_drops_role_database_and_url(
    platform: Platform, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
):
    client = _new_tenant(platform)
    deployed = _deployed_with_postgres(platform, client, "dropdb")
    app, addon = deployed["app"], deployed["addon"]
    role, database = addon["user"], addon["database"]
    assert _get_json(platform, app, "/db/write?v=doomed")["ok"] is True
    assert _cluster_has(postgres_server, role=role, database=database) == (True, True)
    assert role in pgbouncer_server.read_auth_file()

    number = latest_deployment_number(client, app["id"])
    response = client.delete(f"/apps/{app['id']}/addons/postgres")
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "deprovisioning"
    wait_until(
        lambda: client.get(f"/apps/{app['id']}/addons/postgres").status_code == 404,
        timeout=120,
        message="the add-on to be gone",
    )
    assert _cluster_has(postgres_server, role=role, database=database) == (False, False)
    assert role not in pgbouncer_server.read_auth_file()

    release = wait_for_deployment_after(client, app["id"], number, {"live", "failed"})
    assert release["state"] == "live", client.get(f"/deployments/{release['id']}/log").text
    assert _get_json(platform, app, "/env/DATABASE_URL") == {"set": False, "value": None}


def test_deleting_the_app_drops_its_database(
    platform: Platform, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
):
    client = _new_tenant(platform)
    deployed = _deployed_with_postgres(platform, client, "dropapp")
    app, addon = deployed["app"], deployed["addon"]
    role, database = addon["user"], addon["database"]
    assert _get_json(platform, app, "/db/write?v=doomed")["ok"] is True
    assert _cluster_has(postgres_server, role=role, database=database) == (True, True)

    response = client.delete(f"/apps/{app['id']}")
    assert response.status_code == 202, response.text
    wait_until(lambda: client.get(f"/apps/{app['id']}").status_code == 404, timeout=180, message="the app gone")
    assert _cluster_has(postgres_server, role=role, database=database) == (False, False)
    assert role not in pgbouncer_server.read_auth_file()
    assert _app_container_names(app["id"]) == []
    assert platform.edge_get(app["url"]).status_code == 404
