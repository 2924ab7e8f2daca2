from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.settings_utils import host_cpu_count
from conftest import Actor
from platform_apps.models import App
from tests.unit.fakes import task_queued


def test_create_get_patch_list(owner: Actor):
    response = owner.call("POST", "/apps", {"name": "hello"})
    assert response.status_code == 201
    app = response.json()
    assert app["hostname"] == "hello-acme.localhost"
    assert app["url"] == "http://hello-acme.localhost:8080/"
    assert app["state"] == "active"
    assert "pk" not in app
    assert not str(app["id"]).isdigit()

    got = owner.call("GET", f"/apps/{app['id']}").json()
    assert got["id"] == app["id"]

    patched = owner.call("PATCH", f"/apps/{app['id']}", {"replicas": 2, "cpus": 0.5})
    assert patched.status_code == 200
    assert patched.json()["replicas"] == 2
    assert patched.json()["cpus"] == 0.5
    assert patched.json()["memory_mb"] == 256  # untouched

    listing = owner.call("GET", "/apps").json()
    assert listing["count"] == 1
    assert [a["id"] for a in listing["items"]] == [app["id"]]


def test_pagination(owner: Actor):
    owner.tenant.max_apps = 10
    owner.tenant.max_cpus = 10
    owner.tenant.save()
    for i in range(5):
        assert owner.call("POST", "/apps", {"name": f"app{i}"}).status_code == 201
    page = owner.call("GET", "/apps?limit=2&offset=1").json()
    assert page["count"] == 5
    assert [a["name"] for a in page["items"]] == ["app1", "app2"]
    # The last page, the page past the end and a page that ends exactly at the last app count the same.
    for query, names in (
        ("limit=2&offset=4", ["app4"]),
        ("limit=2&offset=9", []),
        ("limit=5", [f"app{i}" for i in range(5)]),
    ):
        page = owner.call("GET", f"/apps?{query}").json()
        assert (page["count"], [a["name"] for a in page["items"]]) == (5, names), query
    assert owner.call("GET", "/apps?limit=0").status_code == 422
    assert owner.call("GET", "/apps?limit=101").status_code == 422
    assert owner.call("GET", "/apps?offset=-1").status_code == 422


def test_listing_apps_costs_the_same_few_queries_for_one_app_or_many(owner: Actor):
    owner.tenant.max_apps = 30
    owner.tenant.max_cpus = 30
    owner.tenant.save()
    counts = []
    for total in (1, 25):
        while App.objects.filter(tenant=owner.tenant).count() < total:
            number = App.objects.filter(tenant=owner.tenant).count()
            assert owner.call("POST", "/apps", {"name": f"app{number}"}).status_code == 201
        with CaptureQueriesContext(connection) as queries:
            listing = owner.call("GET", "/apps").json()
        assert listing["count"] == total
        assert len(listing["items"]) == min(total, 20)
        counts.append(len(queries))
        # Of the live deployment only its id is read: never its row, whose build log can be large.
        assert not any('"platform_apps_deployment"."log"' in q["sql"] for q in queries.captured_queries)
    # The token and the page; a page as long as the limit needs a COUNT as well.
    assert counts == [counts[0], counts[0] + 1]


def test_duplicate_name_is_409(owner: Actor):
    assert owner.call("POST", "/apps", {"name": "hello"}).status_code == 201
    response = owner.call("POST", "/apps", {"name": "hello"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "app.name_taken"


def _legacy_actor(slug: str) -> Actor:
    """A tenant from before slugs lost their hyphens (issue 11): made as the old code made it."""
    from django.test import Client

    from tenants.models import Tenant
    from tenants.services import token_create_initial

    tenant = Tenant.objects.create(slug=slug)
    _token, plaintext = token_create_initial(tenant=tenant, name="test")
    return Actor(tenant=tenant, token=plaintext, client=Client())


def test_ambiguous_hostname_across_tenants_is_409(make_actor: Any):
    # "a-b" + tenant "c" and "a" + tenant "b-c" would both be a-b-c.<domain>. Issue 11: new slugs
    # cannot have a hyphen, so "b-c" is a tenant from before that rule.
    first = make_actor("c")
    assert first.call("POST", "/apps", {"name": "a-b"}).status_code == 201
    second = _legacy_actor("b-c")
    response = second.call("POST", "/apps", {"name": "a"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "app.hostname_taken"


def test_quota_apps_exceeded(owner: Actor):
    owner.tenant.max_apps = 2
    owner.tenant.save()
    assert owner.call("POST", "/apps", {"name": "one"}).status_code == 201
    assert owner.call("POST", "/apps", {"name": "two"}).status_code == 201
    response = owner.call("POST", "/apps", {"name": "three"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "quota.apps_exceeded"
    assert App.objects.filter(tenant=owner.tenant).count() == 2


def test_replica_and_memory_quotas(owner: Actor):
    response = owner.call("POST", "/apps", {"name": "big", "replicas": owner.tenant.max_replicas + 1})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "quota.replicas_exceeded"
    response = owner.call("POST", "/apps", {"name": "big", "memory_mb": owner.tenant.max_memory_mb + 1})
    assert response.json()["error"]["code"] == "quota.memory_exceeded"
    assert not App.objects.exists()


# --- The CPU quota: replicas x cpus over the tenant's apps, and a per-replica cap ------------------


@pytest.fixture
def cpu_limits(owner: Actor, settings: Any) -> Actor:
    """4 CPUs for the tenant (the default), 2 per replica (as on a 2-core host)."""
    settings.MAX_CPUS_PER_REPLICA = 2.0
    assert owner.tenant.max_cpus == 4
    return owner


@pytest.mark.parametrize(
    ("existing", "wanted", "status", "code"),
    [
        ([], {"replicas": 4, "cpus": 1.0}, 201, None),  # exactly the quota
        ([], {"replicas": 2, "cpus": 2.0}, 201, None),  # the per-replica cap itself is allowed
        ([], {"replicas": 3, "cpus": 1.5}, 409, "quota.cpus_exceeded"),  # 4.5
        ([(2, 1.0)], {"replicas": 2, "cpus": 1.0}, 201, None),  # 2 + 2
        ([(2, 1.5)], {"replicas": 1, "cpus": 1.01}, 409, "quota.cpus_exceeded"),  # 3 + 1.01
        ([(1, 1.0), (1, 1.0), (1, 1.0)], {"replicas": 1, "cpus": 1.0}, 201, None),  # the fourth default app
        ([(1, 1.0), (1, 1.0), (1, 1.0), (1, 1.0)], {}, 409, "quota.cpus_exceeded"),  # the fifth
        ([(4, 0.25)], {"replicas": 4, "cpus": 0.75}, 201, None),  # 1 + 3
        ([], {"cpus": 2.01}, 422, "quota.cpus_per_replica_exceeded"),
        ([], {"cpus": 16}, 422, "quota.cpus_per_replica_exceeded"),  # the schema's bound is not the host's
    ],
)
def test_create_within_the_cpu_quota(
    cpu_limits: Actor, existing: list[tuple[int, float]], wanted: dict[str, Any], status: int, code: str | None
):
    for i, (replicas, cpus) in enumerate(existing):
        body = {"name": f"e{i}", "replicas": replicas, "cpus": cpus}
        assert cpu_limits.call("POST", "/apps", body).status_code == 201
    response = cpu_limits.call("POST", "/apps", {"name": "new", **wanted})
    assert response.status_code == status, response.json()
    if code is not None:
        assert response.json()["error"]["code"] == code
        assert not App.objects.filter(name="new").exists()


def test_cpu_quota_error_says_what_is_left(cpu_limits: Actor):
    cpu_limits.call("POST", "/apps", {"name": "big", "replicas": 3, "cpus": 1.0})
    error = cpu_limits.call("POST", "/apps", {"name": "more", "replicas": 2, "cpus": 1.0}).json()["error"]
    assert error["details"] == {"max_cpus": 4.0, "used_cpus": 3.0, "requested_cpus": 2.0}
    assert "at most 1.00" in error["message"]
    cap = cpu_limits.call("POST", "/apps", {"name": "huge", "cpus": 3}).json()["error"]
    assert cap["details"] == {"max_cpus_per_replica": 2.0}


@pytest.mark.parametrize(
    ("patch", "status", "code"),
    [
        ({"replicas": 3}, 200, None),  # 3 + 1 = 4
        ({"cpus": 1.5}, 200, None),  # 2 x 1.5 + 1 = 4
        ({"replicas": 4}, 409, "quota.cpus_exceeded"),  # 4 + 1 = 5
        ({"replicas": 2, "cpus": 2.0}, 409, "quota.cpus_exceeded"),  # 4 + 1
        ({"cpus": 2.5}, 422, "quota.cpus_per_replica_exceeded"),
        ({"memory_mb": 384}, 200, None),
    ],
)
def test_patch_within_the_cpu_quota(cpu_limits: Actor, patch: dict[str, Any], status: int, code: str | None):
    app = cpu_limits.call("POST", "/apps", {"name": "a", "replicas": 2, "cpus": 1.0}).json()
    cpu_limits.call("POST", "/apps", {"name": "b", "replicas": 1, "cpus": 1.0})
    response = cpu_limits.call("PATCH", f"/apps/{app['id']}", patch)
    assert response.status_code == status, response.json()
    got = cpu_limits.call("GET", f"/apps/{app['id']}").json()
    if code is not None:
        assert response.json()["error"]["code"] == code
        assert (got["replicas"], got["cpus"]) == (2, 1.0)  # nothing changed
    else:
        assert {key: got[key] for key in patch} == patch


def test_over_quota_tenant_can_still_scale_down_and_change_other_fields(cpu_limits: Actor):
    app = cpu_limits.call("POST", "/apps", {"name": "a", "replicas": 4, "cpus": 1.0}).json()
    cpu_limits.tenant.max_cpus = 1  # an admin lowered the quota below what the tenant uses
    cpu_limits.tenant.save()
    assert cpu_limits.call("PATCH", f"/apps/{app['id']}", {"deploy_branch": "prod"}).status_code == 200
    assert cpu_limits.call("PATCH", f"/apps/{app['id']}", {"replicas": 2}).status_code == 200
    grow = cpu_limits.call("PATCH", f"/apps/{app['id']}", {"cpus": 1.5})
    assert grow.status_code == 409
    assert grow.json()["error"]["code"] == "quota.cpus_exceeded"


def test_cpu_quota_is_per_tenant(cpu_limits: Actor, outsider: Actor):
    assert cpu_limits.call("POST", "/apps", {"name": "a", "replicas": 4, "cpus": 1.0}).status_code == 201
    assert outsider.call("POST", "/apps", {"name": "a", "replicas": 4, "cpus": 1.0}).status_code == 201


def test_per_replica_cap_defaults_to_the_hosts_cores():
    assert float(host_cpu_count()) == settings.MAX_CPUS_PER_REPLICA


def test_delete_marks_deleting_and_queues_teardown(owner: Actor, django_capture_on_commit_callbacks: Any):
    app_id = owner.call("POST", "/apps", {"name": "bye"}).json()["id"]
    with (
        task_queued("app_teardown") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = owner.call("DELETE", f"/apps/{app_id}")
    assert response.status_code == 202
    assert response.json()["state"] == "deleting"
    delay.assert_called_once_with(app_id)
    patch = owner.call("PATCH", f"/apps/{app_id}", {"replicas": 2})
    assert patch.status_code == 409
    assert patch.json()["error"]["code"] == "app.deleting"


@pytest.mark.parametrize("n_apps", [1, 8])
def test_list_runs_constant_queries(owner: Actor, n_apps: int):
    owner.tenant.max_apps = 10
    owner.tenant.max_cpus = 10
    owner.tenant.save()
    for i in range(n_apps):
        owner.call("POST", "/apps", {"name": f"a{i}"})
    with CaptureQueriesContext(connection) as ctx:
        response = owner.call("GET", "/apps?limit=100")
    assert response.json()["count"] == n_apps
    # auth (token + tenant + app), last_used touch is throttled, list, count.
    assert len(ctx.captured_queries) <= 4, [q["sql"] for q in ctx.captured_queries]


def test_list_query_count_does_not_grow(owner: Actor):
    owner.tenant.max_apps = 20
    owner.tenant.max_cpus = 20
    owner.tenant.save()
    owner.call("POST", "/apps", {"name": "first"})
    owner.call("GET", "/apps")
    with CaptureQueriesContext(connection) as one:
        owner.call("GET", "/apps")
    for i in range(12):
        owner.call("POST", "/apps", {"name": f"more{i}"})
    with CaptureQueriesContext(connection) as many:
        assert owner.call("GET", "/apps").json()["count"] == 13
    assert len(many.captured_queries) == len(one.captured_queries)


def test_a_page_that_ends_exactly_at_the_last_app_is_counted_without_a_count_query(owner: Actor):
    owner.tenant.max_apps = 10
    owner.tenant.max_cpus = 10
    owner.tenant.save()
    for i in range(3):
        owner.call("POST", "/apps", {"name": f"app{i}"})
    with CaptureQueriesContext(connection) as full:
        page = owner.call("GET", "/apps?limit=3").json()
    assert (page["count"], len(page["items"])) == (3, 3)
    assert not [q["sql"] for q in full.captured_queries if "COUNT(*)" in q["sql"]]
    with CaptureQueriesContext(connection) as more:
        page = owner.call("GET", "/apps?limit=2").json()
    assert (page["count"], [a["name"] for a in page["items"]]) == (3, ["app0", "app1"])
    assert [q["sql"] for q in more.captured_queries if "COUNT(*)" in q["sql"]]


def test_lists_of_two_tenants_in_turn_each_show_only_their_own_apps(owner: Actor, outsider: Actor):
    # The list's queryset is prepared once per process (`selectors.list_rows`): no scope may stick to it.
    owner.call("POST", "/apps", {"name": "mine"})
    outsider.call("POST", "/apps", {"name": "theirs"})
    for _ in range(2):
        for actor, name in ((owner, "mine"), (outsider, "theirs")):
            listing = actor.call("GET", "/apps").json()
            assert (listing["count"], [a["name"] for a in listing["items"]]) == (1, [name])


def test_health_and_openapi(client: Any):
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    spec = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/apps" in spec["paths"]
    assert client.get("/api/v1/docs").status_code == 200


def test_every_endpoint_that_reads_json_documents_the_400_for_a_body_that_is_not(client: Any, owner: Actor):
    spec = client.get("/api/v1/openapi.json").json()
    reading = [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "application/json" in (operation.get("requestBody") or {}).get("content", {})
    ]
    assert ("POST", "/api/v1/apps/{app_id}/domains") in reading
    undocumented = [
        (method, path) for method, path in reading if "400" not in spec["paths"][path][method.lower()]["responses"]
    ]
    assert undocumented == []
    # And what they document is what they answer.
    app_id = owner.call("POST", "/apps", {"name": "bodies"}).json()["id"]
    for method, path in (("POST", "domains"), ("POST", "addons/redis"), ("PATCH", "addons/redis")):
        response = getattr(owner.client, method.lower())(
            f"/api/v1/apps/{app_id}/{path}",
            data=b"\xfe{not json",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {owner.token}",
        )
        assert response.status_code == 400, (method, path, response.content)
        assert response.json()["error"]["code"] == "request.malformed"


def test_scaling_a_live_app_re_releases_it(owner: Actor, django_capture_on_commit_callbacks: Any):
    from platform_apps.models import Deployment

    app_id = owner.call("POST", "/apps", {"name": "scaled"}).json()["id"]
    app = App.objects.get(public_id=app_id)
    live = Deployment.objects.create(
        app=app, number=1, source_kind="archive", state="live", image_ref="localhost/coltsfoot-app:x", web_command="w"
    )
    App.objects.filter(pk=app.pk).update(live_deployment=live)
    with (
        task_queued("deployment_run") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert owner.call("PATCH", f"/apps/{app_id}", {"replicas": 2}).status_code == 200
        assert owner.call("PATCH", f"/apps/{app_id}", {"deploy_branch": "release"}).status_code == 200
    release = Deployment.objects.get(app=app, number=2)
    assert release.source_kind == "release"
    assert release.image_ref == live.image_ref
    delay.assert_called_once_with(str(release.public_id))
    assert Deployment.objects.filter(app=app).count() == 2  # the branch change released nothing


def test_ready_is_503_and_names_the_dependency_that_is_down(db: None, client: Any):
    with (
        mock.patch("config.api._check_broker", autospec=True, return_value=True),
        mock.patch("caddy.client.CaddyClient.ping", autospec=True, return_value=False),
    ):
        response = client.get("/api/v1/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": True, "broker": True, "caddy": False}}


def test_legacy_tenant_keeps_its_url_shape_and_cannot_read_as_another_tenant(make_actor: Any):
    legacy = _legacy_actor("b-c")
    created = legacy.call("POST", "/apps", {"name": "shop"})
    assert created.status_code == 201
    assert created.json()["url"].startswith("http://shop-b-c.")
    # Once a tenant "c" exists too (both from before the rule), b-c's next app a (a-b-c) would read
    # as c's app a-b, and c's app x-b (x-b-c) as b-c's app x: both are refused.
    other = _legacy_actor("c")
    for actor, name in ((legacy, "a"), (other, "x-b")):
        response = actor.call("POST", "/apps", {"name": name})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "app.hostname_taken"


def test_new_tenant_cannot_squat_a_legacy_tenants_hostnames(make_actor: Any):
    from core.errors import Conflict
    from tenants.services import tenant_create

    legacy = _legacy_actor("b-c")
    assert legacy.call("POST", "/apps", {"name": "x"}).status_code == 201
    # Tenant "c" would own every <app>-c, and x-b-c (the legacy tenant's) reads as its app "x-b".
    with pytest.raises(Conflict) as refused:
        tenant_create(slug="c")
    assert refused.value.code == "tenant.slug_ambiguous"
    # Tenant "b" is fine: x-c-b is not a legacy hostname, and the legacy tenant's all end "-b-c".
    newcomer = make_actor("b")
    assert newcomer.call("POST", "/apps", {"name": "x-c"}).status_code == 201


@pytest.mark.parametrize("slug", ["a-b", "acme-corp", "-a", "Acme", "1abc"])
def test_new_tenant_slugs_have_no_hyphen(db: None, slug: str):
    from django.core.exceptions import ValidationError

    from tenants.services import tenant_create

    with pytest.raises(ValidationError):
        tenant_create(slug=slug)
