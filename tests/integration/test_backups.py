"""Tenant database backups end to end: rows written through an app running in gVisor, a backup taken
through the API, a table dropped through the app, the backup restored, the rows read back through the
app; the download restored with `pg_restore` into a scratch database; what the backup holds (only this
tenant's data, no password); a restore asked for during a deploy refused with a clear 409; daily backups
kept to COLTSFOOT_TENANT_BACKUP_KEEP (2 in these tests)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from celery import Celery
from psycopg.conninfo import make_conninfo

from devstack.services import Platform
from devstack.services import PostgresServer
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import latest_deployment_number
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_for_deployment_after
from tests.integration.helpers import wait_until
from tests.integration.test_postgres_addon import _add_postgres
from tests.integration.test_postgres_addon import _deployed_with_postgres
from tests.integration.test_postgres_addon import _get_json
from tests.integration.test_postgres_addon import db_archive

pytestmark = pytest.mark.integration

OTHER_TENANT_MARKER = "row-of-another-tenant-7f3a"
PG_RESTORE = shutil.which("pg_restore") or "/usr/bin/pg_restore"


def _wait_backup(client: httpx.Client, url: str, *, restore: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def done() -> bool:
        nonlocal result
        result = client.get(url).json()
        state = (result.get("restore") or {}).get("state") if restore else result["state"]
        assert state != "failed", result
        return state == "succeeded"

    wait_until(done, timeout=180, message="the backup" + (" restore" if restore else ""))
    return result


def test_backup_restore_and_download_of_a_tenant_database(
    platform: Platform, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    created = platform.create_tenant(f"bk{uuid.uuid4().hex[:8]}")
    with platform.client(created["token"], timeout=60) as client:
        deployed = _deployed_with_postgres(platform, client, "notes")
        app, addon = deployed["app"], deployed["addon"]
        for value in ("alpha", "beta"):
            assert _get_json(platform, app, f"/db/write?v={value}")["ok"] is True
        assert _get_json(platform, app, "/db/read")["values"] == ["alpha", "beta"]
        url = _get_json(platform, app, "/env/DATABASE_URL")["value"]
        password = unquote(urlsplit(url).password or "")
        assert password

        # Another tenant's database, with a row of its own.
        other_created = platform.create_tenant(f"bo{uuid.uuid4().hex[:8]}")
        with platform.client(other_created["token"], timeout=60) as other:
            other_app = other.post("/apps", json={"name": "other"}).json()
            other_addon = _add_postgres(other, other_app["id"])
        with psycopg.connect(
            make_conninfo(postgres_server.admin_dsn, dbname=other_addon["database"]), autocommit=True
        ) as conn:
            conn.execute("CREATE TABLE secrets (value text)")
            conn.execute("INSERT INTO secrets VALUES (%s)", (OTHER_TENANT_MARKER,))

        base = f"/apps/{app['id']}/addons/postgres/backups"
        response = client.post(base)
        assert response.status_code == 202, response.text
        backup = response.json()
        assert backup["state"] in {"queued", "running", "succeeded"}
        backup = _wait_backup(client, f"{base}/{backup['id']}")
        assert backup["size"] > 0
        assert client.get(base).json()["count"] == 1

        # The stored file is sealed: neither the data nor the password is in it.
        stored = platform.data_dir / "backups" / "tenants" / f"{backup['id']}.dump.sealed"
        raw = stored.read_bytes()
        for needle in (b"alpha", password.encode(), OTHER_TENANT_MARKER.encode(), b"PGDMP"):
            assert needle not in raw

        # The download is pg_dump's own file: this tenant's rows, nobody else's, no password.
        download = client.get(f"{base}/{backup['id']}/download")
        assert download.status_code == 200, download.text
        dump = download.content
        assert dump.startswith(b"PGDMP")
        assert len(dump) == backup["size"]
        assert OTHER_TENANT_MARKER.encode() not in dump
        assert password.encode() not in dump
        dump_path = tmp_path / "notes.dump"
        dump_path.write_bytes(dump)
        listing = subprocess.run(
            [PG_RESTORE, "--list", str(dump_path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "notes" in listing
        assert "secrets" not in listing

        # A mistake: the table is dropped through the app.
        assert _get_json(platform, app, "/db/attempt?sql=DROP TABLE notes")["ok"] is True
        assert _get_json(platform, app, "/db/read")["values"] == []

        number = latest_deployment_number(client, app["id"])
        restore = client.post(f"{base}/{backup['id']}/restore")
        assert restore.status_code == 202, restore.text
        _wait_backup(client, f"{base}/{backup['id']}", restore=True)
        release = wait_for_deployment_after(client, app["id"], number, {"live", "failed"})
        assert release["state"] == "live", client.get(f"/deployments/{release['id']}/log").text
        assert _get_json(platform, app, "/db/read")["values"] == ["alpha", "beta"]

        # The download restores elsewhere with plain pg_restore.
        scratch = f"scratch_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{scratch}"')
        try:
            scratch_dsn = make_conninfo(postgres_server.admin_dsn, dbname=scratch)
            subprocess.run(
                [PG_RESTORE, "--no-owner", "--no-privileges", "--dbname", scratch_dsn,
                 str(dump_path)],
                check=True, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            with psycopg.connect(scratch_dsn) as conn:
                rows = [row[0] for row in conn.execute("SELECT value FROM notes ORDER BY id")]
            assert rows == ["alpha", "beta"]
        finally:
            with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')

        # A restore asked for while the app deploys is refused, and says why.
        deploying = deploy_archive(client, app["id"], db_archive())
        refused = client.post(f"{base}/{backup['id']}/restore")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "backup.deploy_in_progress"
        wait_for_deployment(client, deploying["id"], {"live", "failed"}, timeout=420)

        # Daily backups (what beat sends once a day), three days in a row: the newest two are kept.
        control = Celery(broker=platform.redis.url)
        try:
            seen: set[str] = set()
            for _ in range(3):
                control.send_task("coltsfoot.addon_backups_daily")

                def day_done() -> bool:
                    items = client.get(base).json()["items"]
                    new = {item["id"] for item in items if item["kind"] == "scheduled"} - seen
                    finished = all(item["state"] in {"succeeded", "failed"} for item in items)
                    if new and finished:
                        seen.update(new)
                        return True
                    return False

                wait_until(day_done, timeout=120, message="the daily backup to finish")
        finally:
            control.close()
        items = client.get(base).json()["items"]
        scheduled = [item for item in items if item["kind"] == "scheduled"]
        assert [item["state"] for item in scheduled] == ["succeeded", "succeeded"]
        assert any(item["id"] == backup["id"] for item in items)  # the one asked for is kept
        on_disk = {path.name for path in stored.parent.iterdir()}
        for item in scheduled:
            assert f"{item['id']}.dump.sealed" in on_disk

        # Another tenant sees none of it.
        with platform.client(other_created["token"]) as other:
            assert other.get(base).status_code == 404
            assert other.get(f"{base}/{backup['id']}/download").status_code == 404
        assert addon["state"] == "ready"
