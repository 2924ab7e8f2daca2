"""Issue 11's limits as a tenant meets them through the API: the deploy rate, the storage quota,
the API rate limit, malformed bodies, short image names and rollbacks to what never went live."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import redis
from django.core.cache import cache
from django.core.cache import caches
from django.test import Client
from django.utils import timezone

from conftest import Actor
from platform_apps.models import Deployment
from platform_apps.models import StorageUsage

IMAGE = "docker.io/library/python:3.13"
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _isolated(settings: Any, tmp_path: Any) -> Any:
    settings.BUILD_ROOT = tmp_path / "builds"
    cache.clear()  # the rate-limit counters live in the LocMem cache
    yield
    cache.clear()


@pytest.fixture
def app(owner: Actor) -> dict[str, Any]:
    response = owner.call("POST", "/apps", {"name": "shop"})
    assert response.status_code == 201
    return dict(response.json())


def deploy(owner: Actor, app: dict[str, Any], image: str = IMAGE) -> Any:
    return owner.call("POST", f"/apps/{app['id']}/deployments", {"image": image})


# --- deploy rate ---------------------------------------------------------------------------------


def test_deploy_rate_per_tenant_is_429_with_retry_after(owner: Actor, app: dict[str, Any], settings: Any):
    settings.DEPLOY_RATE_PER_HOUR = 2
    assert deploy(owner, app).status_code == 202
    assert deploy(owner, app).status_code == 202
    limited = deploy(owner, app)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 3500 <= int(limited["Retry-After"]) <= 3600
    assert Deployment.objects.count() == 2

    # Per tenant, not per app: another app of the tenant is limited too.
    other = owner.call("POST", "/apps", {"name": "other"}).json()
    assert deploy(owner, other).status_code == 429

    # An hour later the window has room again.
    Deployment.objects.update(created_at=timezone.now() - timedelta(hours=1, seconds=1))
    assert deploy(owner, app).status_code == 202


def test_deploy_rate_retry_after_counts_from_the_oldest_of_the_last_limit_deploys(
    owner: Actor, app: dict[str, Any], settings: Any
):
    settings.DEPLOY_RATE_PER_HOUR = 3
    assert [deploy(owner, app).status_code for _ in range(4)] == [202, 202, 202, 429]
    now = timezone.now()
    for deployment, minutes in zip(Deployment.objects.order_by("number"), (55, 50, 20), strict=True):
        Deployment.objects.filter(pk=deployment.pk).update(created_at=now - timedelta(minutes=minutes))
    # Three deploys in the last hour (55, 50 and 20 minutes ago): the one 55 minutes ago leaves first.
    limited = deploy(owner, app)
    assert limited.status_code == 429
    assert 250 <= int(limited["Retry-After"]) <= 300


def test_deploy_rate_of_zero_turns_deploys_off(owner: Actor, app: dict[str, Any], settings: Any):
    settings.DEPLOY_RATE_PER_HOUR = 0
    limited = deploy(owner, app)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert Deployment.objects.count() == 0


def test_deploy_rate_ignores_the_platforms_own_releases(owner: Actor, app: dict[str, Any], settings: Any):
    settings.DEPLOY_RATE_PER_HOUR = 1
    first = deploy(owner, app).json()
    Deployment.objects.filter(public_id=first["id"]).update(created_at=timezone.now() - timedelta(hours=2))
    app_pk = Deployment.objects.get().app_id
    for number in range(2, 6):  # config changes re-released the image four times
        Deployment.objects.create(app_id=app_pk, number=number, source_kind="release")
    assert deploy(owner, app).status_code == 202


def test_deploy_rate_is_per_tenant(owner: Actor, outsider: Actor, app: dict[str, Any], settings: Any):
    settings.DEPLOY_RATE_PER_HOUR = 1
    assert deploy(owner, app).status_code == 202
    theirs = outsider.call("POST", "/apps", {"name": "shop"}).json()
    assert deploy(outsider, theirs).status_code == 202


# --- storage quota -------------------------------------------------------------------------------


def test_storage_over_quota_refuses_deploys_with_409(owner: Actor, app: dict[str, Any], settings: Any):
    settings.TENANT_STORAGE_MB = 100
    StorageUsage.objects.create(tenant=owner.tenant, image_bytes=90 * MIB, build_bytes=5 * MIB)
    assert deploy(owner, app).status_code == 202  # 95 of 100 MiB: still under

    StorageUsage.objects.filter(tenant=owner.tenant).update(image_bytes=96 * MIB)
    refused = deploy(owner, app, "docker.io/library/python:3.12")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "quota.storage_exceeded"
    assert error["details"]["used_mb"] == 101
    assert error["details"]["limit_mb"] == 100
    # An archive upload is refused before a byte is unpacked.
    upload = owner.client.post(
        f"/api/v1/apps/{app['id']}/deployments",
        {"source": _archive()},
        HTTP_AUTHORIZATION=f"Bearer {owner.token}",
    )
    assert upload.status_code == 409
    assert upload.json()["error"]["code"] == "quota.storage_exceeded"
    assert Deployment.objects.count() == 1


def test_storage_quota_is_the_tenants_own(owner: Actor, outsider: Actor, app: dict[str, Any], settings: Any):
    settings.TENANT_STORAGE_MB = 100
    StorageUsage.objects.create(tenant=outsider.tenant, image_bytes=500 * MIB)
    assert deploy(owner, app).status_code == 202


def _archive() -> Any:
    import io
    import tarfile

    from django.core.files.uploadedfile import SimpleUploadedFile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"web: python -m http.server $PORT\n"
        info = tarfile.TarInfo("Procfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return SimpleUploadedFile("app.tar.gz", buffer.getvalue(), content_type="application/gzip")


# --- API rate limit ------------------------------------------------------------------------------


def test_api_rate_limit_per_token(owner: Actor, outsider: Actor, settings: Any):
    settings.API_RATE_LIMIT_PER_TOKEN = 3
    frozen = (int(time.time()) // 60) * 60 + 30
    with mock.patch("core.ratelimit.time", autospec=True) as clock:
        clock.time.return_value = frozen
        answers = [owner.call("GET", "/apps") for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert answers[-1].json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answers[-1]["Retry-After"]) <= 60
        # Another token has its own budget, and the probes are never limited.
        assert outsider.call("GET", "/apps").status_code == 200
        assert Client().get("/api/v1/health").status_code == 200
        clock.time.return_value = frozen + 60
        assert owner.call("GET", "/apps").status_code == 200


def test_api_rate_limit_on_redis_counts_in_one_window_that_expires(
    owner: Actor, log_redis: Any, settings: Any, request: pytest.FixtureRequest
):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": log_redis.url,
            "KEY_PREFIX": f"ratelimit-test-{request.node.name}",
            "OPTIONS": {"pool_class": "core.redispool.SharedConnectionPool"},
        }
    }
    settings.API_RATE_LIMIT_PER_TOKEN = 3
    frozen = (int(time.time()) // 60) * 60 + 30
    with mock.patch("core.ratelimit.time", autospec=True) as clock:
        clock.time.return_value = frozen
        answers = [owner.call("GET", "/apps").status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        clock.time.return_value = frozen + 60
        assert owner.call("GET", "/apps").status_code == 200
    # Each window's counter expires by itself (a little after its minute), so Redis never keeps them.
    server = redis.Redis.from_url(log_redis.url)
    keys = server.keys(f"ratelimit-test-{request.node.name}:*")
    assert len(keys) == 2
    assert all(0 < server.ttl(key) <= 65 for key in keys)
    server.delete(*keys)


def test_every_cache_backend_of_a_process_shares_one_redis_pool(log_redis: Any, settings: Any):
    # Under ASGI Django makes a cache backend per request; each used to open a connection of its own.
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": log_redis.url,
            "OPTIONS": {"socket_timeout": 2, "pool_class": "core.redispool.SharedConnectionPool"},
        }
    }
    first, second = caches.create_connection("default"), caches.create_connection("default")
    assert first is not second
    pools = {id(backend._cache._get_connection_pool(True)) for backend in (first, second)}  # type: ignore[attr-defined]
    assert len(pools) == 1
    before = redis.Redis.from_url(log_redis.url).info("clients")["connected_clients"]
    for _ in range(20):
        backend = caches.create_connection("default")
        backend.set("pooled", 1)
        assert backend.get("pooled") == 1
    assert redis.Redis.from_url(log_redis.url).info("clients")["connected_clients"] <= before + 1


def test_api_rate_limit_per_address_without_a_token(db: None, settings: Any):
    settings.API_RATE_LIMIT_PER_ADDRESS = 2
    frozen = (int(time.time()) // 60) * 60 + 30
    with mock.patch("core.ratelimit.time", autospec=True) as clock:
        clock.time.return_value = frozen
        client = Client()
        answers = [client.get("/api/v1/openapi.json").status_code for _ in range(3)]
        assert answers == [200, 200, 429]
        assert client.get("/api/v1/openapi.json", REMOTE_ADDR="10.1.2.3").status_code == 200
        for _ in range(5):
            assert client.get("/api/v1/health").status_code == 200


# --- malformed bodies ----------------------------------------------------------------------------


NESTED = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_is_400_not_500(owner: Actor, app: dict[str, Any]):
    response = owner.call("POST", f"/apps/{app['id']}/deployments", NESTED)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request.malformed"
    assert Deployment.objects.count() == 0


def test_deeply_nested_json_to_a_schema_parsed_route_is_400(owner: Actor, app: dict[str, Any]):
    # Ninja parses this body itself (the rollback schema), not the view.
    response = owner.call("POST", f"/apps/{app['id']}/rollback", b'{"deployment_id": ' + NESTED + b"}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request.malformed"


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"image": "' + b"\x00" * 3 + b'"'])
def test_unparseable_json_is_400(owner: Actor, app: dict[str, Any], body: bytes):
    response = owner.call("POST", f"/apps/{app['id']}/deployments", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request.malformed"


# --- image references ----------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["fedora", "python:3.13", "library/python:3.13", "you/app"])
def test_short_image_names_are_refused(owner: Actor, app: dict[str, Any], image: str):
    response = deploy(owner, app, image)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "source.image_not_qualified"
    assert "docker.io" in error["details"]["allowed_registries"]
    assert Deployment.objects.count() == 0


def test_qualified_image_of_an_unlisted_registry_is_still_refused(owner: Actor, app: dict[str, Any]):
    response = deploy(owner, app, "registry.example.com/you/app:1")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "source.registry_not_allowed"


# --- rollback ------------------------------------------------------------------------------------


def _superseded(owner: Actor, app: dict[str, Any], *, went_live: bool) -> str:
    deployment_id = str(deploy(owner, app).json()["id"])
    Deployment.objects.filter(public_id=deployment_id).update(
        state=Deployment.State.SUPERSEDED,
        image_ref=f"localhost/coltsfoot-app:{deployment_id}",
        went_live_at=timezone.now() if went_live else None,
    )
    return deployment_id


def test_rollback_to_a_deployment_that_never_went_live_is_refused(owner: Actor, app: dict[str, Any]):
    never = _superseded(owner, app, went_live=False)  # superseded while it was still starting
    response = owner.call("POST", f"/apps/{app['id']}/rollback", {"deployment_id": never})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "rollback.not_deployable"

    served = _superseded(owner, app, went_live=True)
    assert owner.call("POST", f"/apps/{app['id']}/rollback", {"deployment_id": served}).status_code == 202


def test_rollback_to_a_collected_image_is_refused(owner: Actor, app: dict[str, Any]):
    served = _superseded(owner, app, went_live=True)
    Deployment.objects.filter(public_id=served).update(image_ref="")  # retention removed its image
    response = owner.call("POST", f"/apps/{app['id']}/rollback", {"deployment_id": served})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "rollback.not_deployable"
