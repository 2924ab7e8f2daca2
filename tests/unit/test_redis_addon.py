"""Redis add-ons: the API, the generated config, the container's argv, the tasks' state machine and
idempotency, the REDIS_URL an app gets and the reconciler's restarts.

The seams are `drivers.podman`'s operations (patched with autospec) and `provisioning.redis_addons.provision`
for the task tests; nothing here runs podman or Redis."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from celery.exceptions import Retry
from django.db import connection
from django.utils import timezone

from conftest import Actor
from core import crypto
from core.faults import PlatformError
from drivers import podman
from drivers import redis
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import RedisAddon
from provisioning import leases as named_lease
from provisioning import redis_addons
from provisioning import tasks
from provisioning.reconciler import planner
from provisioning.reconciler import redis as redis_reconciler
from provisioning.reconciler.state import Desired
from provisioning.reconciler.state import Observed
from provisioning.reconciler.state import OrphanRemove
from provisioning.runtime import resolve_for_runtime
from provisioning.runtime import tenant_network
from tests.unit.fakes import make_live
from tests.unit.fakes import task_queued

ADDON_FIELDS = {
    "id",
    "app_id",
    "kind",
    "state",
    "maxmemory_mb",
    "policy",
    "persistence",
    "error",
    "created_at",
    "updated_at",
}
IMAGE = "localhost/coltsfoot-redis:0123456789ab"


@pytest.fixture
def app(owner: Actor) -> App:
    response = owner.call("POST", "/apps", {"name": "hello"})
    assert response.status_code == 201
    app: App = App.objects.select_related("tenant").get(public_id=response.json()["id"])
    return app


@pytest.fixture
def provision_queued() -> Iterator[mock.MagicMock]:
    with task_queued("redis_provision") as delay:
        yield delay


@pytest.fixture
def deprovision_queued() -> Iterator[mock.MagicMock]:
    with task_queued("redis_deprovision") as delay:
        yield delay


@pytest.fixture
def deploy_queued() -> Iterator[mock.MagicMock]:
    with task_queued("deployment_run") as delay:
        yield delay


@pytest.fixture
def started() -> Iterator[mock.MagicMock]:
    """`provision` stands in for podman: the container "runs" at 10.89.0.7."""
    with mock.patch("provisioning.redis_addons.provision", autospec=True, return_value="10.89.0.7") as provision:
        yield provision


def path(app: App) -> str:
    return f"/apps/{app.public_id}/addons/redis"


def error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"]["code"])


def create(owner: Actor, app: App, capture: Any, body: Any = "") -> dict[str, Any]:
    """POST the add-on; `""` is an empty body, as `curl -X POST` sends: the default plan."""
    with capture(execute=True):
        response = owner.call("POST", path(app), body)
    assert response.status_code == 202, response.content
    return dict(response.json())


def provision_ready(addon_id: str, capture: Any) -> None:
    with capture(execute=True):
        tasks.redis_provision.run(addon_id)


def attempt(task: Any, addon_id: str, *, retries: int) -> None:
    task.push_request(
        id=str(uuid.uuid4()), args=[addon_id], kwargs={}, retries=retries, is_eager=True, called_directly=False
    )
    try:
        task.run(addon_id)
    finally:
        task.pop_request()


# --- the API ------------------------------------------------------------------------------------


def test_create_answers_202_provisioning_with_the_default_plan(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    assert set(body) == ADDON_FIELDS
    assert body["kind"] == "redis"
    assert body["state"] == "provisioning"
    assert (body["maxmemory_mb"], body["policy"], body["persistence"]) == (64, "noeviction", True)
    assert body["app_id"] == str(app.public_id)
    provision_queued.assert_called_once_with(body["id"])
    got = owner.call("GET", path(app))
    assert got.status_code == 200
    assert got.json() == body


def test_create_takes_a_plan(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    plan = {"maxmemory_mb": 128, "policy": "allkeys-lru", "persistence": False}
    body = create(owner, app, django_capture_on_commit_callbacks, plan)
    assert {key: body[key] for key in plan} == plan
    addon = RedisAddon.objects.get(app=app)
    assert (addon.maxmemory_mb, addon.policy, addon.persistence) == (128, "allkeys-lru", False)


def test_second_create_is_409(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    create(owner, app, django_capture_on_commit_callbacks)
    response = owner.call("POST", path(app), "")
    assert response.status_code == 409
    assert error_code(response) == "addon.exists"
    assert provision_queued.call_count == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"maxmemory_mb": 481}, 422, "quota.memory_exceeded"),  # 481 + 32 > the default quota of 512
        ({"maxmemory_mb": 4}, 422, "request.invalid"),
        ({"policy": "evict-everything"}, 422, "request.invalid"),
        ({"persistence": "yes"}, 422, "request.invalid"),
        ({"password": "mine"}, 422, "request.invalid"),
    ],
)
def test_create_refuses_a_bad_plan_with_a_stable_code(
    owner: Actor, app: App, provision_queued: mock.MagicMock, body: dict[str, Any], status: int, code: str
):
    response = owner.call("POST", path(app), body)
    assert response.status_code == status, response.content
    assert error_code(response) == code
    assert not RedisAddon.objects.exists()
    provision_queued.assert_not_called()


def test_the_whole_quota_fits(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = create(owner, app, django_capture_on_commit_callbacks, {"maxmemory_mb": 512 - redis.MEMORY_OVERHEAD_MB})
    assert body["maxmemory_mb"] == 480


def test_create_refused_while_the_app_has_its_own_redis_url(owner: Actor, app: App, provision_queued: mock.MagicMock):
    ConfigVar.objects.create(app=app, key="REDIS_URL", value_encrypted=crypto.encrypt("redis://elsewhere"))
    response = owner.call("POST", path(app), "")
    assert response.status_code == 409
    assert error_code(response) == "config.reserved_key"


def test_redis_url_is_reserved_while_the_app_has_redis(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    create(owner, app, django_capture_on_commit_callbacks)
    response = owner.call("PATCH", f"/apps/{app.public_id}/config", {"vars": {"REDIS_URL": "redis://mine"}})
    assert response.status_code == 422
    assert error_code(response) == "config.reserved_key"


def test_patch_changes_the_plan_and_provisions_again(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("PATCH", path(app), {"maxmemory_mb": 32, "policy": "volatile-ttl"})
    assert response.status_code == 200, response.content
    assert (response.json()["state"], response.json()["maxmemory_mb"], response.json()["policy"]) == (
        "provisioning",
        32,
        "volatile-ttl",
    )
    assert provision_queued.call_count == 2
    refused = owner.call("PATCH", path(app), {"persistence": False})  # not a plan change PATCH makes
    assert refused.status_code == 422
    assert error_code(refused) == "request.invalid"
    # While it is provisioning, a change waits: 409, nothing queued.
    again = owner.call("PATCH", path(app), {"policy": "allkeys-lru"})
    assert again.status_code == 409
    assert error_code(again) == "addon.provisioning"
    assert RedisAddon.objects.get(app=app).policy == "volatile-ttl"


def test_patch_over_the_quota_is_422(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    response = owner.call("PATCH", path(app), {"maxmemory_mb": 1000})
    assert response.status_code == 422
    assert error_code(response) == "quota.memory_exceeded"
    assert response.json()["error"]["details"]["max_memory_mb"] == 512
    assert RedisAddon.objects.get(app=app).maxmemory_mb == 64


def test_delete_answers_202_deprovisioning(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    deleting = owner.call("DELETE", path(app))
    assert deleting.status_code == 409  # still provisioning
    assert error_code(deleting) == "addon.provisioning"
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("DELETE", path(app))
    assert response.status_code == 202
    assert response.json()["state"] == "deprovisioning"
    deprovision_queued.assert_called_once_with(body["id"])
    assert error_code(owner.call("POST", path(app), "")) == "addon.deprovisioning"
    assert error_code(owner.call("PATCH", path(app), {"policy": "allkeys-lru"})) == "addon.deprovisioning"


def test_without_redis_every_read_and_change_is_404(owner: Actor, app: App):
    for method, body in (("GET", None), ("PATCH", {"policy": "allkeys-lru"}), ("DELETE", None)):
        response = owner.call(method, path(app), body)
        assert response.status_code == 404, method
        assert error_code(response) == "not_found"


def test_outsider_gets_404_on_every_endpoint(
    owner: Actor,
    outsider: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    for method, payload in (("POST", ""), ("GET", None), ("PATCH", {"policy": "allkeys-lru"}), ("DELETE", None)):
        response = outsider.call(method, path(app), payload)
        assert response.status_code == 404, method
        assert error_code(response) == "not_found"
    addon = RedisAddon.objects.get(app=app)
    assert (addon.state, addon.policy) == (RedisAddon.State.READY, "noeviction")
    deprovision_queued.assert_not_called()


def test_scopes_read_to_look_write_to_change(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    create(owner, app, django_capture_on_commit_callbacks)
    from tenants.models import ApiToken
    from tenants.services import token_create_initial

    token, plaintext = token_create_initial(tenant=owner.tenant, name="reader")
    ApiToken.objects.filter(pk=token.pk).update(scopes=["apps:read"])
    reader = Actor(tenant=owner.tenant, token=plaintext, client=owner.client)
    assert reader.call("GET", path(app)).status_code == 200
    for method, body in (("POST", ""), ("PATCH", {"policy": "allkeys-lru"}), ("DELETE", None)):
        response = reader.call(method, path(app), body)
        assert response.status_code == 403, method
    assert RedisAddon.objects.get(app=app).state == RedisAddon.State.PROVISIONING


def test_suspended_tenant_gets_403(suspended: Actor, provision_queued: mock.MagicMock):
    from platform_apps.apps.services import app_create

    app = app_create(tenant=suspended.tenant, name="frozen", replicas=1, memory_mb=256, cpus=1, deploy_branch="main")
    for method in ("POST", "GET", "DELETE"):
        assert suspended.call(method, path(app), "" if method == "POST" else None).status_code == 403, method
    assert not RedisAddon.objects.exists()


def test_the_password_is_encrypted_at_rest_and_never_returned(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    addon = RedisAddon.objects.get(app=app)
    password = crypto.decrypt(addon.password_encrypted)
    assert len(password) >= 32
    with connection.cursor() as cursor:
        cursor.execute("SELECT password_encrypted FROM platform_apps_redisaddon")
        (stored,) = cursor.fetchone()
    assert password not in stored
    assert password not in owner.call("GET", path(app)).content.decode()
    assert password not in caplog.text


# --- the generated config -----------------------------------------------------------------------

PASSWORD = "p" * 43


def test_config_sets_password_memory_policy_and_protected_mode():
    config = redis.server_config(password=PASSWORD, maxmemory_mb=16, policy="allkeys-lru", persistence=True)
    lines = config.splitlines()
    assert f"requirepass {PASSWORD}" in lines
    assert "maxmemory 16mb" in lines
    assert "maxmemory-policy allkeys-lru" in lines
    assert "protected-mode yes" in lines
    assert "port 6379" in lines
    assert "appendonly yes" in lines
    assert "dir /data" in lines
    assert 'save ""' in lines


@pytest.mark.parametrize(
    "command", ["CONFIG", "DEBUG", "MODULE", "SHUTDOWN", "REPLICAOF", "SLAVEOF", "SYNC", "PSYNC", "MIGRATE", "ACL"]
)
def test_config_removes_dangerous_commands(command: str):
    config = redis.server_config(password=PASSWORD, maxmemory_mb=16, policy="noeviction", persistence=False)
    assert f'rename-command {command} ""' in config.splitlines()
    assert "enable-debug-command no" in config.splitlines()
    assert "enable-module-command no" in config.splitlines()


def test_config_without_persistence_writes_nothing_durable():
    lines = redis.server_config(password=PASSWORD, maxmemory_mb=16, policy="noeviction", persistence=False)
    assert "appendonly no" in lines.splitlines()
    assert "dir /tmp" in lines.splitlines()
    assert "dir /data" not in lines


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"password": "short"}, "password"),
        ({"password": PASSWORD + "\nrename-command GET x"}, "password"),  # no config injection
        ({"maxmemory_mb": 0}, "maxmemory"),
        ({"policy": "noeviction\nrequirepass x"}, "policy"),
    ],
)
def test_config_refuses_what_would_change_its_meaning(kwargs: dict[str, Any], message: str):
    values: dict[str, Any] = {"password": PASSWORD, "maxmemory_mb": 16, "policy": "noeviction", "persistence": True}
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        redis.server_config(**values)


def test_the_api_and_the_driver_know_the_same_policies():
    assert set(redis.POLICIES) == set(RedisAddon.Policy.values)


def test_names_and_image_are_deterministic():
    addon_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert redis.container_name(addon_id) == "cf-redis-12345678123456781234567812345678"
    assert redis.secret_name(addon_id) == "cf-redis-12345678123456781234567812345678-conf"
    assert redis.image_ref("sha256:" + "ab" * 32) == "localhost/coltsfoot-redis:abababababab"
    assert redis.redis_url(password=PASSWORD, host="10.89.0.7") == f"redis://:{PASSWORD}@10.89.0.7:6379/0"
    assert redis.mac_address(addon_id) == "02:78:12:34:56:78"


# --- the container's argv -----------------------------------------------------------------------


def _addon(app: App, **fields: Any) -> RedisAddon:
    values: dict[str, Any] = {"password_encrypted": crypto.encrypt(PASSWORD), "maxmemory_mb": 16}
    values.update(fields)
    return RedisAddon.objects.create(app=app, **values)


def _argv(addon: RedisAddon, ip: str = "") -> list[str]:
    return podman.run_detached_argv(redis_addons.container_spec(addon, IMAGE, ip=ip))


def test_argv_has_the_replica_hardening_and_no_published_port(app: App):
    addon = _addon(app)
    argv = _argv(addon)
    for flag in (
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--pull=never",
        "--http-proxy=false",
        f"--memory={16 + redis.MEMORY_OVERHEAD_MB}m",
        f"--memory-swap={16 + redis.MEMORY_OVERHEAD_MB}m",
        f"--pids-limit={redis_addons.PIDS_LIMIT}",
        f"--ulimit=nproc={redis_addons.NPROC_LIMIT}:{redis_addons.NPROC_LIMIT}",
    ):
        assert flag in argv, flag
    uid = app.tenant.linux_uid
    assert uid > 0
    assert argv[argv.index("--user") + 1] == f"{uid}:{uid}"
    assert argv[argv.index("--network") + 1] == tenant_network(app.tenant.public_id)
    assert not any(arg in ("-p", "-P") or arg.startswith(("--publish", "-p=")) for arg in argv), argv
    assert argv[argv.index("--tmpfs") + 1].startswith("/tmp:")
    assert "coltsfoot.role=redis" in argv
    assert f"coltsfoot.addon={addon.public_id}" in argv
    assert any(arg.startswith("--cgroup-parent=") for arg in argv)


def test_argv_gets_the_config_as_a_secret_file_never_the_password(app: App):
    addon = _addon(app)
    argv = _argv(addon, ip="10.89.0.7")
    joined = "\n".join(argv)
    assert PASSWORD not in joined
    assert "--env" not in argv
    secret = argv[argv.index("--secret") + 1]
    assert secret.startswith(f"{redis.secret_name(addon.public_id)},type=mount,target=redis.conf,")
    assert "mode=0400" in secret
    assert "--ip=10.89.0.7" in argv
    assert f"--mac-address={redis.mac_address(addon.public_id)}" in argv
    # The command reads its config from that file, and no shell line exports it.
    assert argv[-1].splitlines()[-1] == "exec redis-server /run/secrets/redis.conf"
    assert "export" not in argv[-1]


def test_argv_mounts_the_volume_only_with_persistence(app: App, other_app: App):
    durable = _argv(_addon(app, persistence=True))
    volume = durable[durable.index("--volume") + 1]
    host, target, mode = volume.split(":")
    assert Path(host).parent == Path(redis.data_dir(uuid.uuid4())).parent
    assert (target, mode) == ("/data", "rw")
    assert "--volume" not in _argv(_addon(other_app, persistence=False))


@pytest.fixture
def other_app(owner: Actor) -> App:
    response = owner.call("POST", "/apps", {"name": "other"})
    app: App = App.objects.select_related("tenant").get(public_id=response.json()["id"])
    return app


def test_image_build_uses_the_host_network_and_never_pulls():
    argv = redis_addons.image_build_argv("/tmp/ctx", "/tmp/ctx/Containerfile", IMAGE)
    assert argv[0] == "build"
    assert "--pull=never" in argv
    assert "--network=host" in argv
    assert "--isolation=chroot" in argv
    assert argv[-1] == "/tmp/ctx"


# --- the tasks ----------------------------------------------------------------------------------


def test_provision_makes_it_ready_and_releases_a_live_app_once(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    live = make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    addon = RedisAddon.objects.get(public_id=body["id"])
    assert (addon.state, addon.address) == (RedisAddon.State.READY, "10.89.0.7")
    release = Deployment.objects.get(app=app, number=2)
    assert release.source_kind == Deployment.SourceKind.RELEASE
    assert release.source_deployment_id == live.pk
    deploy_queued.assert_called_once_with(str(release.public_id))
    # Run again (a duplicate message): nothing more happens.
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    assert started.call_count == 1
    assert Deployment.objects.filter(app=app).count() == 2
    tasks.redis_provision.run(str(uuid.uuid4()))  # an add-on that is gone: nothing to do


def test_reprovisioning_on_the_same_address_does_not_release(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.call("PATCH", path(app), {"policy": "allkeys-lfu"}).status_code == 200
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    assert RedisAddon.objects.get(app=app).state == RedisAddon.State.READY
    assert Deployment.objects.filter(app=app).count() == 2  # only the first release
    # Meanwhile (provisioning, same address) the app's environment kept its REDIS_URL.
    assert "REDIS_URL" in resolve_for_runtime(app).secrets


def test_a_second_worker_finds_the_lease_held(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    assert named_lease.lease_acquire(redis_addons.lease_name(uuid.UUID(body["id"])), "someone", 60)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    started.assert_not_called()
    assert RedisAddon.objects.get(app=app).state == RedisAddon.State.PROVISIONING


def test_transient_failure_retries_then_fails(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    busy = PlatformError("addon.redis_unhealthy", "not up", transient=True)
    with (
        mock.patch("provisioning.redis_addons.provision", autospec=True, side_effect=busy),
        mock.patch("drivers.podman.container_remove", autospec=True) as remove,
    ):
        with pytest.raises(Retry):
            attempt(tasks.redis_provision, body["id"], retries=0)
        assert RedisAddon.objects.get(app=app).state == RedisAddon.State.PROVISIONING
        attempt(tasks.redis_provision, body["id"], retries=tasks.MAX_RETRIES)
    addon = RedisAddon.objects.get(app=app)
    assert (addon.state, addon.error_code) == (RedisAddon.State.FAILED, "addon.provision_failed")
    remove.assert_called_once_with(redis.container_name(addon.public_id))
    # A failed one can be asked for again, under the same id and password.
    again = create(owner, app, django_capture_on_commit_callbacks)
    assert again["id"] == body["id"]
    assert RedisAddon.objects.get(app=app).password_encrypted == addon.password_encrypted


def test_permanent_failure_fails_at_once(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    broken = podman.PodmanError("no", argv=[], returncode=125, stderr="Error: invalid", transient=False)
    with (
        mock.patch("provisioning.redis_addons.provision", autospec=True, side_effect=broken),
        mock.patch("drivers.podman.container_remove", autospec=True),
    ):
        attempt(tasks.redis_provision, body["id"], retries=0)
    assert RedisAddon.objects.get(app=app).state == RedisAddon.State.FAILED
    assert owner.call("GET", path(app)).json()["error"]["code"] == "addon.provision_failed"


def test_deprovision_removes_container_secret_and_data_then_releases(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    deploy_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
    tmp_path: Path,
):
    settings.DATA_DIR = tmp_path
    make_live(app)
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    addon_id = uuid.UUID(body["id"])
    volume = redis.data_dir(addon_id)
    volume.mkdir(parents=True)
    (volume / "appendonly.aof").write_text("*1\r\n")
    # The release with REDIS_URL went live.
    with_redis = Deployment.objects.get(app=app, number=2)
    Deployment.objects.filter(pk=with_redis.pk).update(state=Deployment.State.LIVE)
    App.objects.filter(pk=app.pk).update(live_deployment=with_redis)
    with django_capture_on_commit_callbacks(execute=True):
        owner.call("DELETE", path(app))
    with (
        mock.patch("drivers.podman.container_remove", autospec=True) as remove,
        mock.patch("drivers.podman.secret_remove", autospec=True) as secret_remove,
        django_capture_on_commit_callbacks(execute=True),
    ):
        tasks.redis_deprovision.run(body["id"])
        tasks.redis_deprovision.run(body["id"])  # again: the row is gone, nothing to do
    remove.assert_called_once_with(redis.container_name(addon_id))
    secret_remove.assert_called_once_with(redis.secret_name(addon_id))
    assert not volume.exists()
    assert not RedisAddon.objects.filter(app=app).exists()
    # Released again, without it.
    without = Deployment.objects.get(app=app, number=3)
    assert (without.source_kind, without.source_deployment_id) == (Deployment.SourceKind.RELEASE, with_redis.pk)
    assert "REDIS_URL" not in resolve_for_runtime(app).secrets


def test_deprovision_transient_failure_retries_and_keeps_the_row(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    deprovision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    owner.call("DELETE", path(app))
    locked = podman.PodmanError("busy", argv=[], returncode=125, stderr="database is locked", transient=True)
    with mock.patch("drivers.podman.container_remove", autospec=True, side_effect=locked), pytest.raises(Retry):
        attempt(tasks.redis_deprovision, body["id"], retries=0)
    assert RedisAddon.objects.get(app=app).state == RedisAddon.State.DEPROVISIONING


def test_runtime_gets_redis_url_as_a_secret(
    owner: Actor,
    app: App,
    started: mock.MagicMock,
    provision_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    assert "REDIS_URL" not in resolve_for_runtime(app).secrets  # not before it runs
    provision_ready(body["id"], django_capture_on_commit_callbacks)
    runtime = resolve_for_runtime(app)
    password = crypto.decrypt(RedisAddon.objects.get(app=app).password_encrypted)
    assert runtime.secrets["REDIS_URL"] == f"redis://:{password}@10.89.0.7:6379/0"
    assert "REDIS_URL" not in runtime.plain


def test_stalled_work_is_queued_again(
    owner: Actor, app: App, provision_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    body = create(owner, app, django_capture_on_commit_callbacks)
    RedisAddon.objects.filter(app=app).update(updated_at=timezone.now() - timedelta(hours=1))
    with mock.patch("provisioning.addons.addons_repair_auth", autospec=True, return_value=0):
        counts = tasks.requeue_work()
    assert counts["addons"] == 1
    assert provision_queued.call_args_list[-1] == mock.call(body["id"])


# --- the step: provisioning is idempotent ------------------------------------------------------------


def test_provision_leaves_a_running_container_with_the_same_plan_alone(app: App):
    addon = _addon(app, address="10.89.0.7", state=RedisAddon.State.PROVISIONING)
    labels = redis_addons.labels_for(addon)
    with (
        mock.patch("drivers.podman.container_labels", autospec=True, return_value=labels),
        mock.patch("drivers.podman.container_is_running", autospec=True, return_value=True),
        mock.patch("drivers.podman.container_address", autospec=True, return_value="10.89.0.7"),
        mock.patch("provisioning.redis_addons.wait_until_serving", autospec=True, return_value=True),
        mock.patch("provisioning.redis_addons.start", autospec=True) as start,
    ):
        assert redis_addons.provision(addon) == "10.89.0.7"
    start.assert_not_called()


def test_provision_replaces_a_container_with_another_plan(app: App):
    addon = _addon(app, address="10.89.0.7", state=RedisAddon.State.PROVISIONING)
    labels = {**redis_addons.labels_for(addon), redis_addons.PLAN_LABEL: "64mb.noeviction.aof"}
    with (
        mock.patch("drivers.podman.container_labels", autospec=True, return_value=labels),
        mock.patch("drivers.podman.container_is_running", autospec=True, return_value=True),
        mock.patch("provisioning.redis_addons.start", autospec=True, return_value="10.89.0.7") as start,
    ):
        redis_addons.provision(addon)
    start.assert_called_once_with(addon)


def test_start_asks_for_its_old_address_and_writes_the_config_secret(app: App, settings: Any, tmp_path: Path):
    settings.DATA_DIR = tmp_path
    addon = _addon(app, address="10.89.0.7")
    with (
        mock.patch("provisioning.redis_addons.network_ensure", autospec=True, return_value="net"),
        mock.patch("provisioning.redis_addons.image_ensure", autospec=True, return_value=IMAGE),
        mock.patch("drivers.podman.container_remove", autospec=True) as remove,
        mock.patch("drivers.podman.secret_set", autospec=True) as secret_set,
        mock.patch("drivers.podman.container_run_detached", autospec=True) as run,
        mock.patch("drivers.podman.container_address", autospec=True, return_value="10.89.0.7"),
        mock.patch("provisioning.redis_addons.wait_until_serving", autospec=True, return_value=True),
        mock.patch("os.chown", autospec=True),
    ):
        assert redis_addons.start(addon) == "10.89.0.7"
    remove.assert_called_once_with(redis.container_name(addon.public_id))
    name, config = secret_set.call_args.args
    assert name == redis.secret_name(addon.public_id)
    assert f"requirepass {PASSWORD}" in config
    assert run.call_args.args[0].ip == "10.89.0.7"
    assert redis.data_dir(addon.public_id).is_dir()


# --- the reconciler -------------------------------------------------------------------------------


def _observed(name: str, *, state: str, exit_code: int = 0, created_at: float = 1.0, role: str = "redis") -> Any:
    return podman.ObservedContainer(
        name=name,
        labels={"coltsfoot.role": role},
        state=state,
        exit_code=exit_code,
        started_at=1.0,
        exited_at=2.0,
        created_at=created_at,
    )


def test_reconciler_restarts_a_killed_redis_and_keeps_its_address(app: App):
    addon = _addon(app, state=RedisAddon.State.READY, address="10.89.0.7")
    name = redis.container_name(addon.public_id)
    containers = {name: _observed(name, state="exited", exit_code=137)}
    with mock.patch("provisioning.redis_addons.start", autospec=True, return_value="10.89.0.7") as start:
        result = redis_reconciler.reconcile(containers, {}, timezone.now(), "test")
    assert start.call_count == 1
    assert result.actions == {"redis_killed": 1}
    assert result.moved == []
    row = RedisAddon.objects.get(pk=addon.pk)
    assert (row.restarts, row.crash_streak) == (1, 1)
    # Dead again at once: the next restart waits (backoff), and the pass asks to be woken for it.
    with mock.patch("provisioning.redis_addons.start", autospec=True) as start:
        again = redis_reconciler.reconcile(containers, {}, timezone.now(), "test")
    start.assert_not_called()
    assert again.wake_in is not None
    assert again.wake_in > 0


def test_reconciler_restarts_a_vanished_redis_and_reports_a_new_address(app: App):
    addon = _addon(app, state=RedisAddon.State.READY, address="10.89.0.7")
    with mock.patch("provisioning.redis_addons.start", autospec=True, return_value="10.89.0.9"):
        result = redis_reconciler.reconcile({}, {}, timezone.now(), "test")
    assert result.actions == {"redis_vanished": 1}
    assert result.moved == [app.pk]
    assert RedisAddon.objects.get(pk=addon.pk).address == "10.89.0.9"


def test_reconciler_leaves_a_running_redis_and_others_work_alone(app: App, other_app: App):
    ready = _addon(app, state=RedisAddon.State.READY, address="10.89.0.7")
    _addon(other_app, state=RedisAddon.State.PROVISIONING)  # its task owns it
    name = redis.container_name(ready.public_id)
    with mock.patch("provisioning.redis_addons.start", autospec=True) as start:
        result = redis_reconciler.reconcile({name: _observed(name, state="running")}, {}, timezone.now(), "test")
    start.assert_not_called()
    assert result.actions == {}


def test_reconciler_removes_a_redis_container_whose_addon_is_gone(app: App):
    now = timezone.now()
    stray = redis.container_name(uuid.uuid4())
    fresh = redis.container_name(uuid.uuid4())
    containers = {
        stray: _observed(stray, state="running", created_at=now.timestamp() - 3600),
        fresh: _observed(fresh, state="running", created_at=now.timestamp()),
    }
    with mock.patch("drivers.podman.container_remove", autospec=True) as remove:
        result = redis_reconciler.reconcile(containers, {}, now, "test")
    remove.assert_called_once_with(stray)  # the fresh one may be a task's that has not written its row yet
    assert result.actions == {"redis_orphan_removed": 1}


def test_app_teardown_waits_while_the_reconciler_restarts_its_redis(app: App):
    addon = _addon(app, state=RedisAddon.State.READY, address="10.89.0.7")
    App.objects.filter(pk=app.pk).update(state=App.State.DELETING)
    app.refresh_from_db()
    lease = redis_addons.lease_name(addon.public_id)
    assert named_lease.lease_acquire(lease, "reconciler", 60)
    with mock.patch("provisioning.redis_addons.deprovision", autospec=True) as deprovision:
        with pytest.raises(PlatformError) as raised:
            redis_addons.teardown_for_app(app)
        assert raised.value.transient
        deprovision.assert_not_called()
        assert RedisAddon.objects.filter(pk=addon.pk).exists()  # kept for the retried teardown
        named_lease.lease_release(lease, "reconciler")
        redis_addons.teardown_for_app(app)
    assert [call.args[0].public_id for call in deprovision.call_args_list] == [addon.public_id]
    assert not RedisAddon.objects.filter(pk=addon.pk).exists()


def test_reconciler_does_not_restart_the_redis_of_an_app_being_deleted(app: App):
    addon = _addon(app, state=RedisAddon.State.READY, address="10.89.0.7")
    App.objects.filter(pk=app.pk).update(state=App.State.DELETING)
    with mock.patch("provisioning.redis_addons.start", autospec=True) as start:
        result = redis_reconciler.reconcile({}, {}, timezone.now(), "test")
    start.assert_not_called()
    assert result.actions == {}
    assert RedisAddon.objects.get(pk=addon.pk).restarts == 0


def test_the_replica_planner_never_takes_a_redis_container_for_an_orphan():
    now = timezone.now()
    name = redis.container_name(uuid.uuid4())
    observed = Observed(
        containers={name: _observed(name, state="running", created_at=now.timestamp() - 3600)},
        routes={},
        networks=frozenset(),
    )
    actions = planner.plan_replicas(
        Desired(apps=()), observed, now, steady_after=timedelta(seconds=60), orphan_grace=timedelta(seconds=60)
    )
    assert not [action for action in actions if isinstance(action, OrphanRemove)]
