"""Tenant database backups: sealed files, the API (scopes, 404s, 409s), the backup/restore tasks with
`drivers.postgres` patched at its two backup entry points, retention and the pg tool commands."""

from __future__ import annotations

import asyncio
import io
import sys
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from uuid import UUID

import pytest
from celery.exceptions import Retry
from django.utils import timezone

from conftest import Actor
from core import crypto
from core import sealed
from drivers import postgres
from drivers.postgres import PostgresError
from platform_apps.backups import api as backups_api
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import Deployment
from provisioning import backups
from provisioning import tasks
from tenants.models import ApiToken
from tenants.services import token_create_initial
from tests.unit.fakes import make_live
from tests.unit.fakes import task_queued

DUMP = b"PGDMP" + bytes(range(256)) * 9000  # a little over two sealed chunks


# --- sealed files ---------------------------------------------------------------------------------


def _seal(data: bytes, key: str, *, pieces: int = 7) -> bytes:
    buffer = io.BytesIO()
    writer = sealed.SealWriter(buffer, key)
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        writer.write(data[start : start + step])
    writer.close()
    return buffer.getvalue()


@pytest.mark.parametrize("data", [b"", b"x", DUMP, b"y" * sealed.CHUNK_BYTES])
def test_sealed_round_trip(data: bytes) -> None:
    key = sealed.new_data_key()
    blob = _seal(data, key)
    assert b"".join(sealed.unseal(io.BytesIO(blob), key)) == data
    if len(data) >= 16:
        assert data[:64] not in blob


def _frames(blob: bytes) -> list[bytes]:
    body = blob[len(sealed.MAGIC) :]
    frames = []
    while body:
        length = int.from_bytes(body[:4], "big")
        frames.append(body[: 4 + length])
        body = body[4 + length :]
    return frames


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:-10],  # cut short
        lambda blob: sealed.MAGIC + b"".join(_frames(blob)[:-1]),  # last frame dropped
        lambda blob: sealed.MAGIC + b"".join(reversed(_frames(blob))),  # reordered
        lambda blob: blob + b"junk",  # trailing data
        lambda blob: blob[:100] + bytes([blob[100] ^ 1]) + blob[101:],  # one bit flipped
        lambda blob: b"not sealed" + blob,
    ],
)
def test_sealed_refuses_damaged_files(damage: Callable[[bytes], bytes]) -> None:
    key = sealed.new_data_key()
    blob = damage(_seal(DUMP, key))
    with pytest.raises(sealed.SealedStreamError):
        b"".join(sealed.unseal(io.BytesIO(blob), key))


def test_sealed_refuses_another_key() -> None:
    blob = _seal(DUMP, sealed.new_data_key())
    with pytest.raises(sealed.SealedStreamError, match="not its key"):
        b"".join(sealed.unseal(io.BytesIO(blob), sealed.new_data_key()))


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _backup_dir(settings: Any, tmp_path: Path) -> None:
    settings.BACKUP_DIR = str(tmp_path / "backups")
    settings.TENANT_BACKUP_KEEP = 3


@pytest.fixture
def app(owner: Actor) -> App:
    response = owner.call("POST", "/apps", {"name": "hello"})
    assert response.status_code == 201
    app = App.objects.get(public_id=response.json()["id"])
    public_id = uuid.uuid4()
    Addon.objects.create(
        app=app,
        public_id=public_id,
        state=Addon.State.READY,
        role_name=postgres.role_name(public_id),
        database_name=postgres.database_name(public_id),
        password_encrypted=crypto.encrypt("tenant-pw"),
    )
    return app


@pytest.fixture
def backup_queued() -> Iterator[mock.MagicMock]:
    with task_queued("addon_backup_run") as delay:
        yield delay


@pytest.fixture
def restore_queued() -> Iterator[mock.MagicMock]:
    with task_queued("addon_restore_run") as delay:
        yield delay


@pytest.fixture
def deploy_queued() -> Iterator[mock.MagicMock]:
    with task_queued("deployment_run") as delay:
        yield delay


class FakeCluster:
    """The two backup entry points of drivers.postgres, against one in-memory "database" per add-on."""

    def __init__(self) -> None:
        self.data: dict[UUID, bytes] = {}
        self.passwords: list[str] = []
        self.fail: Exception | None = None

    def tenant_dump(self, addon_id: UUID, password: str, sink: Callable[[bytes], None], *, timeout: float) -> int:
        self.passwords.append(password)
        if self.fail is not None:
            raise self.fail
        data = self.data.get(addon_id, DUMP)
        for start in range(0, len(data), 65536):
            sink(data[start : start + 65536])
        return len(data)

    def tenant_restore(self, addon_id: UUID, password: str, chunks: Iterable[bytes], *, timeout: float) -> None:
        self.passwords.append(password)
        if self.fail is not None:
            raise self.fail
        self.data[addon_id] = b"".join(chunks)


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    with (
        mock.patch("drivers.postgres.tenant_dump", autospec=True, side_effect=fake.tenant_dump),
        mock.patch("drivers.postgres.tenant_restore", autospec=True, side_effect=fake.tenant_restore),
    ):
        yield fake


def base(app: App) -> str:
    return f"/apps/{app.public_id}/addons/postgres/backups"


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"]["code"])


def attempt(task: Any, backup_id: str, *, retries: int = 0) -> None:
    task.push_request(
        id=str(uuid.uuid4()), args=[backup_id], kwargs={}, retries=retries, is_eager=True, called_directly=False
    )
    try:
        task.run(backup_id)
    finally:
        task.pop_request()


def take(owner: Actor, app: App, capture: Any) -> dict[str, Any]:
    with capture(execute=True):
        response = owner.call("POST", base(app))
    assert response.status_code == 202, response.content
    body = dict(response.json())
    attempt(tasks.addon_backup_run, body["id"])
    return body


# --- the API ---------------------------------------------------------------------------------------


def test_backup_answers_202_and_the_task_writes_a_sealed_file(
    owner: Actor, app: App, backup_queued: mock.MagicMock, cluster: FakeCluster, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("POST", base(app))
    assert response.status_code == 202
    body = response.json()
    assert set(body) >= {"id", "state", "size", "created_at"}
    assert body["state"] == "queued"
    assert uuid.UUID(body["id"]).version == 4
    backup_queued.assert_called_once_with(body["id"])

    attempt(tasks.addon_backup_run, body["id"])
    backup = AddonBackup.objects.get(public_id=body["id"])
    assert backup.state == AddonBackup.State.SUCCEEDED
    assert backup.size == len(DUMP)
    assert cluster.passwords == ["tenant-pw"]  # the tenant's own role
    stored = backup.path.read_bytes()
    assert stored.startswith(sealed.MAGIC)
    assert DUMP[:200] not in stored
    assert b"tenant-pw" not in stored
    assert backup.path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in backup.path.parent.iterdir()] == [backup.path.name]  # no partial left

    listed = owner.call("GET", base(app)).json()
    assert listed["count"] == 1
    assert listed["items"][0]["state"] == "succeeded"
    assert listed["items"][0]["size"] == len(DUMP)

    download = owner.call("GET", f"{base(app)}/{body['id']}/download")
    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Length"] == str(len(DUMP))
    assert b"".join(download.streaming_content) == DUMP


def test_a_second_run_of_the_task_does_nothing(
    owner: Actor, app: App, backup_queued: mock.MagicMock, cluster: FakeCluster, django_capture_on_commit_callbacks: Any
) -> None:
    body = take(owner, app, django_capture_on_commit_callbacks)
    attempt(tasks.addon_backup_run, body["id"])
    assert len(cluster.passwords) == 1


def test_another_tenant_gets_404_everywhere(
    owner: Actor,
    outsider: Actor,
    app: App,
    backup_queued: mock.MagicMock,
    cluster: FakeCluster,
    django_capture_on_commit_callbacks: Any,
) -> None:
    body = take(owner, app, django_capture_on_commit_callbacks)
    for method, suffix in (
        ("POST", ""),
        ("GET", ""),
        ("GET", f"/{body['id']}"),
        ("POST", f"/{body['id']}/restore"),
        ("GET", f"/{body['id']}/download"),
    ):
        response = outsider.call(method, base(app) + suffix)
        assert response.status_code == 404, (method, suffix)
        assert error_code(response) == "not_found"
    # and the owner's own unknown id is the same 404
    assert owner.call("GET", f"{base(app)}/{uuid.uuid4()}/download").status_code == 404


def test_taking_restoring_and_downloading_need_apps_write(
    app: App, backup_queued: mock.MagicMock, owner: Actor
) -> None:
    # A read-only token of the owner's own tenant.
    token, plaintext = token_create_initial(tenant=owner.tenant, name="reader")
    ApiToken.objects.filter(pk=token.pk).update(scopes=["apps:read"])
    reader = Actor(tenant=owner.tenant, token=plaintext, client=owner.client)
    assert reader.call("POST", base(app)).status_code == 403
    assert reader.call("GET", base(app)).status_code == 200  # the list and states are apps:read
    backup = AddonBackup.objects.create(app=app, state="succeeded", key_encrypted=crypto.encrypt("k"))
    assert reader.call("POST", f"{base(app)}/{backup.public_id}/restore").status_code == 403
    assert reader.call("GET", f"{base(app)}/{backup.public_id}/download").status_code == 403


def test_backup_conflicts(
    owner: Actor, app: App, backup_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.call("POST", base(app)).status_code == 202
    second = owner.call("POST", base(app))
    assert second.status_code == 409
    assert error_code(second) == "backup.in_progress"
    Addon.objects.filter(app=app).update(state=Addon.State.DEPROVISIONING)
    AddonBackup.objects.all().delete()
    refused = owner.call("POST", base(app))
    assert refused.status_code == 409
    assert error_code(refused) == "backup.database_not_ready"
    Addon.objects.filter(app=app).delete()
    assert error_code(owner.call("POST", base(app))) == "backup.no_database"


# --- restore ---------------------------------------------------------------------------------------


def test_restore_replaces_the_data_and_re_releases_the_app(
    owner: Actor,
    app: App,
    backup_queued: mock.MagicMock,
    restore_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    cluster: FakeCluster,
    django_capture_on_commit_callbacks: Any,
) -> None:
    live = make_live(app)
    addon = Addon.objects.get(app=app)
    cluster.data[addon.public_id] = b"PGDMP rows as they were"
    body = take(owner, app, django_capture_on_commit_callbacks)
    cluster.data[addon.public_id] = b"a table dropped by mistake"

    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("POST", f"{base(app)}/{body['id']}/restore")
    assert response.status_code == 202, response.content
    assert response.json()["restore"]["state"] == "queued"
    restore_queued.assert_called_once_with(body["id"])
    with django_capture_on_commit_callbacks(execute=True):
        attempt(tasks.addon_restore_run, body["id"])

    assert cluster.data[addon.public_id] == b"PGDMP rows as they were"
    backup = AddonBackup.objects.get(public_id=body["id"])
    assert backup.restore_state == AddonBackup.RestoreState.SUCCEEDED
    release = Deployment.objects.get(app=app, number=2)
    assert release.source_kind == Deployment.SourceKind.RELEASE
    assert release.source_deployment_id == live.pk
    deploy_queued.assert_called_once_with(str(release.public_id))


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("deploying", "backup.deploy_in_progress"),
        ("deprovisioning", "backup.database_not_ready"),
        ("restoring", "backup.restore_in_progress"),
    ],
)
def test_restore_is_refused_with_a_clear_409_while_the_app_changes(
    owner: Actor,
    app: App,
    backup_queued: mock.MagicMock,
    restore_queued: mock.MagicMock,
    cluster: FakeCluster,
    django_capture_on_commit_callbacks: Any,
    setup: str,
    code: str,
) -> None:
    body = take(owner, app, django_capture_on_commit_callbacks)
    if setup == "deploying":
        Deployment.objects.create(app=app, number=1, state=Deployment.State.BUILDING, source_kind="archive")
    elif setup == "deprovisioning":
        Addon.objects.filter(app=app).update(state=Addon.State.DEPROVISIONING)
    else:
        AddonBackup.objects.filter(public_id=body["id"]).update(restore_state=AddonBackup.RestoreState.RUNNING)
    response = owner.call("POST", f"{base(app)}/{body['id']}/restore")
    assert response.status_code == 409
    assert error_code(response) == code
    restore_queued.assert_not_called()


def test_a_deploy_that_starts_after_the_restore_was_accepted_is_waited_for(
    owner: Actor,
    app: App,
    backup_queued: mock.MagicMock,
    restore_queued: mock.MagicMock,
    cluster: FakeCluster,
    django_capture_on_commit_callbacks: Any,
) -> None:
    body = take(owner, app, django_capture_on_commit_callbacks)
    assert owner.call("POST", f"{base(app)}/{body['id']}/restore").status_code == 202
    Deployment.objects.create(app=app, number=1, state=Deployment.State.STARTING, source_kind="archive")
    with pytest.raises(Retry):
        attempt(tasks.addon_restore_run, body["id"])
    assert AddonBackup.objects.get(public_id=body["id"]).restore_state == AddonBackup.RestoreState.QUEUED
    assert len(cluster.passwords) == 1  # only the backup's dump: pg_restore never ran


def test_a_failed_restore_says_so_and_a_transient_one_retries(
    owner: Actor,
    app: App,
    backup_queued: mock.MagicMock,
    restore_queued: mock.MagicMock,
    cluster: FakeCluster,
    django_capture_on_commit_callbacks: Any,
) -> None:
    body = take(owner, app, django_capture_on_commit_callbacks)
    assert owner.call("POST", f"{base(app)}/{body['id']}/restore").status_code == 202
    cluster.fail = PostgresError("pg_restore failed: the database was not reachable", transient=True)
    with pytest.raises(Retry):
        attempt(tasks.addon_restore_run, body["id"])
    assert AddonBackup.objects.get(public_id=body["id"]).restore_state == AddonBackup.RestoreState.QUEUED
    cluster.fail = PostgresError("pg_restore failed: the tool reported an error", transient=False)
    attempt(tasks.addon_restore_run, body["id"], retries=1)
    got = owner.call("GET", f"{base(app)}/{body['id']}").json()
    assert got["restore"]["state"] == "failed"
    assert got["restore"]["error"]["code"] == "backup.restore_failed"


def test_a_failed_backup_leaves_no_file_and_a_code(
    owner: Actor, app: App, backup_queued: mock.MagicMock, cluster: FakeCluster, django_capture_on_commit_callbacks: Any
) -> None:
    cluster.fail = PostgresError("pg_dump failed: the database refused the add-on's credentials", transient=False)
    body = take(owner, app, django_capture_on_commit_callbacks)
    got = owner.call("GET", f"{base(app)}/{body['id']}").json()
    assert got["state"] == "failed"
    assert got["error"]["code"] == "backup.failed"
    assert not list(Path(backups.backup_dir()).iterdir())
    download = owner.call("GET", f"{base(app)}/{body['id']}/download")
    assert download.status_code == 409
    assert error_code(download) == "backup.not_downloadable"
    restore = owner.call("POST", f"{base(app)}/{body['id']}/restore")
    assert error_code(restore) == "backup.not_restorable"


# --- schedule and retention ------------------------------------------------------------------------


def test_daily_backups_respect_retention(
    owner: Actor, app: App, backup_queued: mock.MagicMock, cluster: FakeCluster, django_capture_on_commit_callbacks: Any
) -> None:
    manual = take(owner, app, django_capture_on_commit_callbacks)
    for day in range(6):
        backup_queued.reset_mock()
        with django_capture_on_commit_callbacks(execute=True):
            counts = tasks.addon_backups_daily.run()
        assert counts["queued"] == 1
        attempt(tasks.addon_backup_run, backup_queued.call_args.args[0])
        scheduled = AddonBackup.objects.filter(app=app, kind=AddonBackup.Kind.SCHEDULED)
        assert scheduled.count() == min(day + 1, 3)
    assert AddonBackup.objects.filter(public_id=manual["id"]).exists()  # manual ones are the tenant's
    files = {p.name for p in Path(backups.backup_dir()).iterdir()}
    assert files == {b.path.name for b in AddonBackup.objects.filter(state="succeeded")}


def test_a_failed_scheduled_backup_costs_no_good_one(
    owner: Actor, app: App, backup_queued: mock.MagicMock, cluster: FakeCluster, django_capture_on_commit_callbacks: Any
) -> None:
    for _ in range(3):
        backup_queued.reset_mock()
        with django_capture_on_commit_callbacks(execute=True):
            tasks.addon_backups_daily.run()
        attempt(tasks.addon_backup_run, backup_queued.call_args.args[0])
    cluster.fail = PostgresError("pg_dump failed: the tool reported an error", transient=False)
    for _ in range(3):  # three bad days
        backup_queued.reset_mock()
        with django_capture_on_commit_callbacks(execute=True):
            tasks.addon_backups_daily.run()
        attempt(tasks.addon_backup_run, backup_queued.call_args.args[0])
    with django_capture_on_commit_callbacks(execute=True):
        tasks.addon_backups_daily.run()  # its prune pass
    assert AddonBackup.objects.filter(app=app, state="succeeded").count() == 3
    assert AddonBackup.objects.filter(app=app, state="failed").count() == 1  # the latest failure says why


# --- the pg tools ----------------------------------------------------------------------------------


def test_pg_tool_commands_run_as_the_tenant_role_without_its_password(settings: Any) -> None:
    settings.TENANT_PG_ADMIN_DSN = "postgresql://postgres:adminpw@127.0.0.1:5433/postgres"
    addon_id = uuid.uuid4()
    role, database = postgres.role_name(addon_id), postgres.database_name(addon_id)
    dump = postgres.tenant_dump_argv(role, database)
    restore = postgres.tenant_restore_argv(role, database)
    assert "--format=custom" in dump
    assert {"--clean", "--if-exists", "--single-transaction", "--no-owner", "--exit-on-error"} <= set(restore)
    for argv in (dump, restore):
        assert argv[argv.index("--username") + 1] == role
        assert argv[argv.index("--dbname") + 1] == database
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert "adminpw" not in " ".join(argv)
        assert "postgres" not in argv[1:]
    with pytest.raises(ValueError, match="role"):
        postgres.tenant_dump_argv("postgres", database)
    assert postgres._tool_env("tenant-pw")["PGPASSWORD"] == "tenant-pw"
    assert "TENANT_PG_ADMIN_DSN" not in postgres._tool_env("x")


# --- the pg tool runners, with stand-in tools ------------------------------------------------------


@pytest.fixture
def tools(settings: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """pg_dump and pg_restore replaced by small scripts (argument lists as the real ones get), the
    cluster and PgBouncer admin sessions by mocks."""
    received = tmp_path / "received.bin"
    dump = tmp_path / "pg_dump"
    dump.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "if os.environ.get('PGPASSWORD') != 'tenant-pw':\n"
        "    sys.stderr.write('password authentication failed'); sys.exit(1)\n"
        "if os.path.exists(sys.argv[0] + '.hang'):\n"
        "    import time; time.sleep(60)\n"
        f"sys.stdout.buffer.write({DUMP[:300000]!r})\n"
    )
    restore = tmp_path / "pg_restore"
    restore.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "data = sys.stdin.buffer.read()\n"
        f"open({str(received)!r}, 'wb').write(data)\n"
        "sys.exit(0 if data.startswith(b'PGDMP') else 1)\n"
    )
    for script in (dump, restore):
        script.chmod(0o755)
    settings.PG_DUMP_BIN = str(dump)
    settings.PG_RESTORE_BIN = str(restore)
    with (
        mock.patch.object(postgres, "_pgbouncer_admin", autospec=True) as admin,
        mock.patch.object(postgres, "_admin_connection", autospec=True) as connection,
    ):
        yield {"admin": admin, "connection": connection, "received": received, "dump": dump}


def test_tenant_dump_streams_the_tool_output_into_the_sink(tools: dict[str, Any]) -> None:
    chunks: list[bytes] = []
    assert postgres.tenant_dump(uuid.uuid4(), "tenant-pw", chunks.append, timeout=30) == 300000
    assert b"".join(chunks) == DUMP[:300000]
    assert len(chunks) > 1


def test_tenant_dump_failures_say_whether_to_retry_without_the_tool_output(
    tools: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(PostgresError, match="refused the add-on's credentials") as refused:
        postgres.tenant_dump(uuid.uuid4(), "changed-by-tenant", lambda chunk: None, timeout=30)
    assert refused.value.transient is False
    assert "changed-by-tenant" not in caplog.text
    Path(str(tools["dump"]) + ".hang").touch()
    with pytest.raises(PostgresError) as killed:
        postgres.tenant_dump(uuid.uuid4(), "tenant-pw", lambda chunk: None, timeout=1)
    assert "exit status -9" in str(killed.value)


def test_tenant_restore_feeds_the_tool_holds_pgbouncer_and_always_resumes(tools: dict[str, Any]) -> None:
    addon_id = uuid.uuid4()
    postgres.tenant_restore(addon_id, "tenant-pw", [b"PGDMP", b" rest"], timeout=30)
    assert tools["received"].read_bytes() == b"PGDMP rest"
    commands = [call.args[0][0].as_string(None) for call in tools["admin"].call_args_list]
    database = postgres.database_name(addon_id)
    assert commands == [f'KILL "{database}"', f'RESUME "{database}"']

    tools["admin"].reset_mock()
    with pytest.raises(PostgresError, match="pg_restore failed"):
        postgres.tenant_restore(addon_id, "tenant-pw", [b"garbage"], timeout=30)
    assert [call.args[0][0].as_string(None) for call in tools["admin"].call_args_list][-1] == f'RESUME "{database}"'


def test_queued_work_whose_message_was_lost_is_queued_again_once(
    owner: Actor, app: App, backup_queued: mock.MagicMock, restore_queued: mock.MagicMock, settings: Any
) -> None:
    old = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS + 5)
    lost = AddonBackup.objects.create(app=app, key_encrypted=crypto.encrypt(sealed.new_data_key()))
    done = AddonBackup.objects.create(
        app=app, state="succeeded", restore_state="queued", key_encrypted=crypto.encrypt("k")
    )
    fresh = AddonBackup.objects.create(app=app, key_encrypted=crypto.encrypt("k"))
    AddonBackup.objects.filter(pk__in=[lost.pk, done.pk]).update(updated_at=old)
    assert tasks.requeue_work()["backups"] == 2
    backup_queued.assert_called_once_with(str(lost.public_id))
    restore_queued.assert_called_once_with(str(done.public_id))
    assert str(fresh.public_id) not in str(backup_queued.call_args_list)
    assert tasks.requeue_work()["backups"] == 0  # touched: the next sweep waits for that message


def test_the_database_cannot_be_removed_while_a_restore_is_queued_or_running(owner: Actor, app: App) -> None:
    AddonBackup.objects.create(app=app, state="succeeded", restore_state="running", key_encrypted=crypto.encrypt("k"))
    response = owner.call("DELETE", f"/apps/{app.public_id}/addons/postgres")
    assert response.status_code == 409
    assert error_code(response) == "backup.restore_in_progress"
    assert Addon.objects.get(app=app).state == Addon.State.READY


def test_the_asgi_download_reads_one_chunk_at_a_time(
    owner: Actor, app: App, backup_queued: mock.MagicMock, cluster: FakeCluster, django_capture_on_commit_callbacks: Any
) -> None:
    body = take(owner, app, django_capture_on_commit_callbacks)
    backup = AddonBackup.objects.get(public_id=body["id"])
    key = crypto.decrypt(backup.key_encrypted)

    async def collect() -> list[bytes]:
        return [chunk async for chunk in backups_api.plaintext_async(backup, key)]

    chunks = asyncio.run(collect())
    assert b"".join(chunks) == DUMP
    assert len(chunks) > 1
