"""What a tenant sees of an app's health: `status` on the app and `GET /apps/{id}/replicas`."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conftest import Actor
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Replica


def _app(owner: Actor, name: str) -> App:
    response = owner.call("POST", "/apps", {"name": name})
    assert response.status_code == 201, response.content
    return App.objects.get(public_id=response.json()["id"])


def _live(app: App, *states: str, **replica_fields: Any) -> Deployment:
    deployment = Deployment.objects.create(
        app=app, number=app.deployments.count() + 1, state=Deployment.State.LIVE, source_kind="image"
    )
    for index, state in enumerate(states):
        Replica.objects.create(
            deployment=deployment,
            index=index,
            name=f"tsl-{deployment.public_id}-{index}",
            state=state,
            **replica_fields,
        )
    App.objects.filter(pk=app.pk).update(live_deployment=deployment)
    return deployment


@pytest.mark.parametrize(
    ("states", "in_flight", "expected"),
    [
        pytest.param(None, False, "stopped", id="never deployed"),
        pytest.param(("running", "running"), False, "running", id="every replica serves"),
        pytest.param(("running", "crashed"), False, "degraded", id="one of two crashed"),
        pytest.param(("restarting", "crashed"), False, "crashed", id="none serves"),
        pytest.param(("running",), True, "deploying", id="a deployment is in flight"),
    ],
)
def test_status(owner: Actor, states: tuple[str, ...] | None, in_flight: bool, expected: str):
    app = _app(owner, "shop")
    if states is not None:
        _live(app, *states)
    if in_flight:
        Deployment.objects.create(app=app, number=99, state=Deployment.State.BUILDING, source_kind="image")
    detail = owner.call("GET", f"/apps/{app.public_id}").json()
    assert detail["status"] == expected
    (listed,) = owner.call("GET", "/apps").json()["items"]
    assert listed == detail  # the list's one query reads the same as the detail's
    assert (listed["live_deployment_id"] is None) == (states is None)


def test_the_list_costs_the_same_queries_for_one_app_as_for_many(owner: Actor):
    owner.tenant.max_apps = 10
    owner.tenant.save()
    _live(_app(owner, "one"), "running", "crashed")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert owner.call("GET", "/apps").status_code == 200
        return len(captured)

    single = queries()
    for name in ("two", "three", "four"):
        _live(_app(owner, name), "running")
    assert queries() == single


def test_replicas_say_how_each_one_is_doing(owner: Actor, outsider: Actor):
    app = _app(owner, "shop")
    deployment = _live(app, "running", "crashed")
    Replica.objects.filter(deployment=deployment, index=1).update(
        restarts=3, last_exit_code=137, last_exit_reason="oom_killed"
    )

    response = owner.call("GET", f"/apps/{app.public_id}/replicas")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    first, second = body["items"]
    assert (first["index"], first["name"], first["state"], first["restarts"]) == (1, "web.1", "running", 0)
    assert first["last_exit_reason"] is None
    assert (second["name"], second["state"], second["restarts"]) == ("web.2", "crashed", 3)
    assert (second["last_exit_code"], second["last_exit_reason"]) == (137, "oom_killed")
    assert second["deployment_id"] == str(deployment.public_id)
    assert "pk" not in second
    assert "address" not in second
    assert outsider.call("GET", f"/apps/{app.public_id}/replicas").status_code == 404


def test_an_app_with_nothing_live_has_no_replicas(owner: Actor):
    app = _app(owner, "shop")
    assert owner.call("GET", f"/apps/{app.public_id}/replicas").json() == {"items": [], "count": 0}
