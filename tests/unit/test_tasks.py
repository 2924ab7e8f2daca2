"""The deployment state machine and its Celery tasks, against in-memory podman and Caddy.

The seams (every `drivers.podman` operation, `CaddyClient`, the HTTP health check) are
faked in `test_pipeline`; here every test runs with all three, so nothing reaches a real
podman, Caddy or network. Tests look at what results: rows, containers, images, the route.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import timedelta
from typing import Any
from typing import cast
from unittest import mock

import pytest
from celery.exceptions import Retry
from django.conf import settings
from django.utils import timezone

from caddy import routes as caddy_routes
from core import crypto
from drivers import podman
from platform_apps.deployments.services import deployment_create_rollback
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import Replica
from provisioning import pipeline
from provisioning import tasks
from tests.unit.fakes import WEB
from tests.unit.fakes import FakeContainer
from tests.unit.fakes import FakePodman
from tests.unit.fakes import FakeRoutes
from tests.unit.fakes import archive_deployment
from tests.unit.fakes import make_app
from tests.unit.fakes import reload

State = Deployment.State
GENERIC_MESSAGE = "The platform failed to deploy this; the operators have the details."


@pytest.fixture(autouse=True)
def _seams(db: None, pipeline_settings: None, fake_podman: FakePodman, routes: FakeRoutes, http: Any) -> None:
    """Every test here runs against the fakes, whether it looks at them or not."""


@pytest.fixture
def app() -> App:
    return make_app(replicas=2)


def attempt(deployment: Deployment, *, retries: int = 0, task_id: str | None = None) -> None:
    """One delivery of `deployment_run` as a worker runs it on its `retries`-th retry. The request
    is eager, so `self.retry` raises `Retry` instead of sending a message."""
    task: Any = tasks.deployment_run
    task.push_request(
        id=task_id or str(uuid.uuid4()),
        args=[str(deployment.public_id)],
        kwargs={},
        retries=retries,
        is_eager=True,
        called_directly=False,
    )
    try:
        task.run(str(deployment.public_id))
    finally:
        task.pop_request()


def go_live(app: App, **files: str) -> Deployment:
    deployment = archive_deployment(app, files or None)
    tasks.drive(deployment.public_id)
    deployment = reload(deployment)
    assert deployment.state == State.LIVE, deployment.log
    return deployment


def upstreams(fake: FakePodman, deployment: Deployment) -> list[str]:
    return [f"{fake.containers[name].address}:{pipeline.APP_PORT}" for name in fake.names_of(deployment)]


def replica_names(deployment: Deployment, count: int) -> list[str]:
    return [f"tsl-{deployment.public_id}-{index}" for index in range(count)]


def live_deployment_of(app: App) -> Deployment | None:
    live: Deployment | None = App.objects.get(pk=app.pk).live_deployment
    return live


# === The state machine ========================================================================


def test_a_queued_archive_deployment_goes_live(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
    caplog: pytest.LogCaptureFixture,
):
    deployment = archive_deployment(app)
    caplog.set_level(logging.INFO, logger="provisioning.tasks")

    tasks.drive(deployment.public_id)

    deployment = reload(deployment)
    transitions = [
        record.getMessage()
        for record in caplog.records
        if record.name == "provisioning.tasks" and getattr(record, "deployment_id", "") == str(deployment.public_id)
    ]
    assert transitions == [
        "deployment queued -> building",
        "deployment building -> starting",
        "deployment starting -> live",
    ]
    assert deployment.state == State.LIVE
    assert deployment.started_at is not None
    assert deployment.finished_at is not None
    assert deployment.image_ref == pipeline.app_image_ref(deployment.public_id)
    assert deployment.web_command == WEB
    assert live_deployment_of(app) == deployment
    assert fake_podman.names_of(deployment) == replica_names(deployment, 2)
    assert all(fake_podman.containers[name].running for name in fake_podman.names_of(deployment))
    assert routes.table == {app.public_id: upstreams(fake_podman, deployment)}
    assert sorted(Replica.objects.filter(deployment=deployment).values_list("name", flat=True)) == replica_names(
        deployment, 2
    )
    assert f"Live at {app.url}" in deployment.log
    assert not deployment.build_dir.exists()


def test_the_next_deployment_supersedes_the_live_one_after_a_graceful_stop(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    first = go_live(app)
    first_names = fake_podman.names_of(first)

    second = go_live(app)

    first = reload(first)
    assert first.state == State.SUPERSEDED
    assert first.finished_at is not None
    assert live_deployment_of(app) == second
    assert fake_podman.names_of(first) == []
    assert fake_podman.names_of(second) == replica_names(second, 2)
    retired = [container for container in fake_podman.removed if container.name in first_names]
    assert sorted(container.name for container in retired) == first_names
    assert all(container.stopped_gracefully for container in retired)  # stopped before removed
    assert routes.table == {app.public_id: upstreams(fake_podman, second)}
    assert not Replica.objects.filter(deployment=first).exists()
    # The old image stays: it is what a rollback reuses.
    assert first.image_ref in fake_podman.images


def test_a_switch_rewrites_the_hosts_file_and_waits_for_the_edge_before_the_old_replicas_retire(
    app: App, fake_podman: FakePodman, routes: FakeRoutes, settings: Any
):
    first = go_live(app)
    first_names = fake_podman.names_of(first)
    route_before, writes = routes.raw[caddy_routes.route_id(app.public_id)], routes.writes
    settings.UPSTREAM_REFRESH_MS = 1000
    settings.UPSTREAM_SWITCH_WAIT_SECONDS = 1.5
    seen: list[tuple[float, list[str], list[bool]]] = []

    def wait(seconds: float) -> None:
        # What the edge and the old replicas look like while the switch waits for Caddy's lookups.
        running = [fake_podman.containers[name].running for name in first_names if name in fake_podman.containers]
        seen.append((seconds, list(routes.table[app.public_id]), running))

    with mock.patch.object(pipeline, "switch_wait", autospec=True, side_effect=wait):
        second = go_live(app)

    [(waited, table, old_running)] = seen
    assert waited >= settings.UPSTREAM_REFRESH_MS / 1000  # at least one refresh of Caddy's lookup
    assert table == upstreams(fake_podman, second)  # the name already resolves to the new replicas
    assert old_running == [True, True]  # and the old ones still serve meanwhile
    assert fake_podman.names_of(first) == []  # retired after the wait
    # The switch changed no route: same shape, so no Caddy config load.
    assert (routes.raw[caddy_routes.route_id(app.public_id)], routes.writes) == (route_before, writes)


def test_superseding_removes_the_old_deployments_podman_secrets(
    app: App,
    fake_podman: FakePodman,
):
    ConfigVar.objects.create(app=app, key="API_TOKEN", value_encrypted=crypto.encrypt("tok-0123456789"), secret=True)
    first = go_live(app)
    assert pipeline.secret_name(first.public_id, "API_TOKEN") in fake_podman.secrets

    second = go_live(app)

    assert set(fake_podman.secrets) == {pipeline.secret_name(second.public_id, "API_TOKEN")}


def test_a_crash_while_retiring_the_previous_deployment_is_finished_on_retry(
    app: App,
    fake_podman: FakePodman,
):
    """The new deployment goes live before the previous one is retired. If stopping the old
    replicas fails with a transient error, the task's retry (which finds its deployment live)
    finishes the retirement instead of returning at once."""
    first = go_live(app)
    second = archive_deployment(app)
    fake_podman.fail("container_stop", pipeline.replica_name(first.public_id, 0), transient=True)
    task_id = str(uuid.uuid4())

    with pytest.raises(Retry):
        attempt(second, task_id=task_id)
    assert reload(second).state == State.LIVE
    attempt(second, retries=1, task_id=task_id)

    assert reload(first).state == State.SUPERSEDED
    assert fake_podman.names_of(second) == replica_names(second, 2)
    assert fake_podman.names_of(first) == [], "the previous deployment's replicas were never removed"


# === Idempotency ==============================================================================


def test_driving_a_live_deployment_again_changes_nothing(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    deployment = go_live(app)
    before = (list(fake_podman.started), list(fake_podman.builds), len(fake_podman.oneoffs), routes.writes)

    tasks.drive(deployment.public_id)

    after = (list(fake_podman.started), list(fake_podman.builds), len(fake_podman.oneoffs), routes.writes)
    assert after == before
    assert fake_podman.names_of(deployment) == replica_names(deployment, 2)
    assert reload(deployment).state == State.LIVE


def test_a_crash_while_starting_replica_1_resumes_to_exactly_the_replicas(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    deployment = archive_deployment(app)
    fake_podman.fail("container_run_detached", pipeline.replica_name(deployment.public_id, 1))

    with pytest.raises(podman.PodmanError):
        tasks.drive(deployment.public_id)

    assert reload(deployment).state == State.STARTING
    assert fake_podman.names_of(deployment) == replica_names(deployment, 1)
    assert routes.table == {}

    tasks.drive(deployment.public_id)

    deployment = reload(deployment)
    assert deployment.state == State.LIVE
    assert fake_podman.names_of(deployment) == replica_names(deployment, app.replicas)
    assert fake_podman.started == replica_names(deployment, app.replicas)  # replica 0 was kept, not restarted
    assert Deployment.objects.filter(app=app, state=State.LIVE).count() == 1
    assert fake_podman.builds == [deployment.image_ref]
    assert routes.table == {app.public_id: upstreams(fake_podman, deployment)}


def test_a_crash_after_the_image_was_built_does_not_build_it_again(
    app: App,
    fake_podman: FakePodman,
):
    deployment = archive_deployment(app)
    image = pipeline.app_image_ref(deployment.public_id)
    fake_podman.fail("image_id", image)

    with pytest.raises(podman.PodmanError):
        tasks.drive(deployment.public_id)
    assert reload(deployment).state == State.BUILDING
    assert fake_podman.builds == [image]

    tasks.drive(deployment.public_id)

    assert reload(deployment).state == State.LIVE
    assert fake_podman.builds == [image]
    assert fake_podman.oneoff_roles() == ["deps"]


# === deployment_run: user errors, retries, platform errors ====================================


def test_a_user_error_fails_at_once_without_retry(
    app: App,
    fake_podman: FakePodman,
):
    deployment = archive_deployment(app, {"requirements.txt": "flask\n", "app.py": "app = None\n"})

    result = tasks.deployment_run.apply(args=(str(deployment.public_id),))

    assert result.state == "SUCCESS"  # failed the deployment; nothing to retry
    deployment = reload(deployment)
    assert deployment.state == State.FAILED
    assert deployment.error_code == "build.no_web_process"
    assert "Procfile" in deployment.error_message
    assert deployment.attempts == 1
    assert deployment.lease_owner == ""
    assert deployment.heartbeat_at is None
    assert "-----> Failed: build.no_web_process" in deployment.log
    assert fake_podman.containers == {}
    assert fake_podman.builds == []
    assert not deployment.build_dir.exists()


def test_a_transient_podman_error_retries_and_keeps_the_lease(
    app: App,
    fake_podman: FakePodman,
):
    deployment = archive_deployment(app)
    fake_podman.fail("container_run_detached", pipeline.replica_name(deployment.public_id, 1), transient=True)
    task_id = str(uuid.uuid4())

    with pytest.raises(Retry) as caught:
        attempt(deployment, task_id=task_id)

    countdown = caught.value.when
    assert isinstance(countdown, int | float)
    assert countdown > 0
    held = reload(deployment)
    assert held.state == State.STARTING
    assert held.lease_owner == task_id
    assert held.heartbeat_at is not None
    assert held.heartbeat_at >= timezone.now() + timedelta(seconds=countdown)

    # Another worker (a duplicate message, the reconciler) finds the lease held and does nothing.
    started = list(fake_podman.started)
    attempt(deployment)
    assert fake_podman.started == started
    assert reload(deployment).attempts == held.attempts

    # The retry (same task id) picks the lease up again and finishes.
    attempt(deployment, retries=1, task_id=task_id)

    deployment = reload(deployment)
    assert deployment.state == State.LIVE
    assert deployment.attempts == 2
    assert deployment.lease_owner == ""
    assert deployment.heartbeat_at is None
    assert fake_podman.names_of(deployment) == replica_names(deployment, 2)


def test_a_transient_error_after_the_last_retry_fails_with_a_generic_platform_error(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    deployment = archive_deployment(app)
    fake_podman.fail("container_run_detached", pipeline.replica_name(deployment.public_id, 1), times=99)

    attempt(deployment, retries=tasks.MAX_RETRIES)  # no Retry raised

    deployment = reload(deployment)
    assert deployment.state == State.FAILED
    assert deployment.error_code == "platform.error"
    assert deployment.error_message == GENERIC_MESSAGE
    for detail in ("database is locked", "/var/lib/containers", "podman", "container_run_detached"):
        assert detail not in deployment.error_message
        assert detail not in deployment.log
    assert fake_podman.names_of(deployment) == []  # replica 0 was cleaned up
    assert deployment.lease_owner == ""
    assert routes.table == {}


def test_a_permanent_podman_error_fails_at_once(
    app: App,
    fake_podman: FakePodman,
):
    deployment = archive_deployment(app)
    fake_podman.fail("container_run_detached", pipeline.replica_name(deployment.public_id, 0), transient=False)

    attempt(deployment)  # no Retry raised

    deployment = reload(deployment)
    assert deployment.state == State.FAILED
    assert deployment.error_code == "platform.error"
    assert fake_podman.names_of(deployment) == []


def test_an_image_deploy_goes_live_with_the_images_own_command(
    app: App,
    fake_podman: FakePodman,
):
    deployment = Deployment.objects.create(
        app=app,
        number=1,
        source_kind=Deployment.SourceKind.IMAGE,
        source_url="docker.io/library/python:3.13",
        own_image=True,
    )

    attempt(deployment)

    deployment = reload(deployment)
    assert deployment.state == State.LIVE
    assert fake_podman.builds == []
    assert fake_podman.oneoffs == []
    for name in fake_podman.names_of(deployment):
        spec = fake_podman.containers[name].spec
        assert spec.image == pipeline.app_image_ref(deployment.public_id)
        assert spec.command == "exec python -m http.server 8000"
        assert spec.shell_path == "/bin/sh"


def test_a_pull_that_keeps_failing_does_not_promise_a_retry(
    app: App,
    fake_podman: FakePodman,
):
    """After the last retry the failed deployment's message must not promise another retry."""
    ref = "docker.io/library/python:3.13"
    fake_podman.fail("image_pull", ref, times=99)
    deployment = Deployment.objects.create(
        app=app, number=1, source_kind=Deployment.SourceKind.IMAGE, source_url=ref, own_image=True
    )

    attempt(deployment, retries=tasks.MAX_RETRIES)

    deployment = reload(deployment)
    assert deployment.state == State.FAILED
    assert deployment.error_code == "image.pull_failed"
    assert "retrying" not in deployment.error_message.lower()


# === Leases ===================================================================================


def test_a_fresh_lease_held_elsewhere_means_nothing_is_done(
    app: App,
    fake_podman: FakePodman,
):
    deployment = archive_deployment(app)
    now = timezone.now()
    Deployment.objects.filter(pk=deployment.pk).update(heartbeat_at=now, lease_owner="other-worker")

    attempt(deployment)

    deployment = reload(deployment)
    assert deployment.state == State.QUEUED
    assert deployment.attempts == 0
    assert deployment.lease_owner == "other-worker"
    assert deployment.heartbeat_at == now
    assert fake_podman.builds == []
    assert fake_podman.containers == {}


def test_a_stale_lease_is_taken_over(
    app: App,
    settings: Any,
    fake_podman: FakePodman,
):
    deployment = archive_deployment(app)
    stale = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS + 5)
    Deployment.objects.filter(pk=deployment.pk).update(
        state=State.BUILDING, heartbeat_at=stale, lease_owner="dead-worker"
    )

    attempt(deployment)

    deployment = reload(deployment)
    assert deployment.state == State.LIVE
    assert deployment.attempts == 1
    assert deployment.lease_owner == ""
    assert fake_podman.names_of(deployment) == replica_names(deployment, 2)


# === Newest intent wins, rollback =============================================================


def test_an_older_queued_deployment_is_superseded_without_starting_anything(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    first = archive_deployment(app)
    second = archive_deployment(app)

    tasks.drive(first.public_id)

    first = reload(first)
    assert first.state == State.SUPERSEDED
    assert "Superseded" in first.log
    assert fake_podman.started == []
    assert fake_podman.builds == []
    assert routes.writes == 0
    assert not first.build_dir.exists()

    tasks.drive(second.public_id)

    assert reload(second).state == State.LIVE
    assert live_deployment_of(app) == second
    assert fake_podman.started == replica_names(second, 2)


def test_a_deployment_overtaken_while_starting_is_superseded_and_never_routed(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    first = archive_deployment(app)
    newer: list[Deployment] = []

    def deploy_again(spec: podman.ContainerSpec) -> None:
        if not newer:
            newer.append(archive_deployment(app))

    fake_podman.on_start = deploy_again

    tasks.drive(first.public_id)

    assert reload(first).state == State.SUPERSEDED
    assert fake_podman.names_of(first) == []
    assert routes.writes == 0
    assert live_deployment_of(app) is None
    fake_podman.on_start = None

    tasks.drive(newer[0].public_id)

    assert live_deployment_of(app) == newer[0]
    assert routes.table == {app.public_id: upstreams(fake_podman, newer[0])}


def test_losing_the_route_race_points_the_route_back_at_the_winner(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    first = archive_deployment(app)
    winner: list[Deployment] = []

    def newer_goes_live_meanwhile(app_id: uuid.UUID) -> None:
        deployment = Deployment.objects.create(
            app=app, number=2, source_kind=Deployment.SourceKind.ARCHIVE, state=State.LIVE
        )
        Replica.objects.create(deployment=deployment, index=0, name="tsl-winner-0", address="10.89.0.200")
        App.objects.filter(pk=app.pk).update(live_deployment=deployment)
        winner.append(deployment)

    routes.on_upsert = newer_goes_live_meanwhile

    tasks.drive(first.public_id)

    assert reload(first).state == State.SUPERSEDED
    assert fake_podman.names_of(first) == []
    assert live_deployment_of(app) == winner[0]
    assert routes.table == {app.public_id: [f"10.89.0.200:{pipeline.APP_PORT}"]}


def test_a_rollback_reuses_the_earlier_image_and_builds_nothing(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    first = go_live(app)
    second = go_live(app, **{"Procfile": f"web: {WEB} --workers 3\n", "requirements.txt": "flask\n"})
    builds, oneoffs = list(fake_podman.builds), list(fake_podman.oneoffs)

    rollback = deployment_create_rollback(app=app, target=first)
    tasks.drive(rollback.public_id)

    rollback = reload(rollback)
    assert rollback.state == State.LIVE
    assert live_deployment_of(app) == rollback
    assert reload(second).state == State.SUPERSEDED
    assert fake_podman.builds == builds
    assert fake_podman.oneoffs == oneoffs
    names = fake_podman.names_of(rollback)
    assert names == replica_names(rollback, 2)
    assert {fake_podman.containers[name].spec.image for name in names} == {first.image_ref}
    assert {fake_podman.containers[name].spec.command for name in names} == {WEB}
    assert fake_podman.names_of(second) == []
    assert routes.table == {app.public_id: upstreams(fake_podman, rollback)}


def test_a_rollback_to_an_image_that_is_gone_fails_with_its_code(
    app: App,
    fake_podman: FakePodman,
):
    first = go_live(app)
    go_live(app)
    fake_podman.image_remove(first.image_ref)

    rollback = deployment_create_rollback(app=app, target=first)
    attempt(rollback)

    rollback = reload(rollback)
    assert rollback.state == State.FAILED
    assert rollback.error_code == "rollback.image_missing"
    assert fake_podman.names_of(rollback) == []


# === Unhealthy start, failed release ==========================================================


@pytest.mark.parametrize("failure", ["exits", "never_answers"])
def test_an_unhealthy_start_fails_and_leaves_the_live_deployment_serving(
    app: App,
    settings: Any,
    failure: str,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    settings.START_DEADLINE_SECONDS = 0
    live = go_live(app)
    live_names, route_before, writes = fake_podman.names_of(live), dict(routes.table), routes.writes
    broken = archive_deployment(app)
    image = pipeline.app_image_ref(broken.public_id)
    (fake_podman.broken_images if failure == "exits" else fake_podman.deaf_images).add(image)
    fake_podman.output[image] = "Booting\nModuleNotFoundError: No module named 'flsk'\n"

    attempt(broken)

    broken = reload(broken)
    assert broken.state == State.FAILED
    assert broken.error_code == "start.unhealthy"
    assert "The previous deployment keeps serving" in broken.error_message
    assert "ModuleNotFoundError: No module named 'flsk'" in broken.log
    assert fake_podman.names_of(broken) == []
    # The live deployment is untouched: still live, same containers, route never switched.
    assert reload(live).state == State.LIVE
    assert live_deployment_of(app) == live
    assert fake_podman.names_of(live) == live_names
    assert all(fake_podman.containers[name].running for name in live_names)
    assert routes.table == route_before
    assert routes.writes == writes


def test_a_failing_release_command_switches_nothing(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    files = {"Procfile": f"web: {WEB}\nrelease: python manage.py migrate\n", "requirements.txt": "django\n"}
    live = go_live(app, **files)
    route_before, writes = dict(routes.table), routes.writes
    fake_podman.oneoff_results["release"] = (1, "migration failed")
    release_failing = archive_deployment(app, files)

    attempt(release_failing)

    release_failing = reload(release_failing)
    assert release_failing.state == State.FAILED
    assert release_failing.error_code == "release.failed"
    assert "migration failed" in release_failing.log
    assert not release_failing.released
    # Its replicas booted while the release ran; the failure removed them before any traffic reached them.
    assert any(str(release_failing.public_id) in name for name in fake_podman.started)
    assert fake_podman.names_of(release_failing) == []
    assert live_deployment_of(app) == live
    assert routes.table == route_before
    assert routes.writes == writes


def _during_release(fake_podman: FakePodman, action: Any) -> list[list[str]]:
    """Run `action(fake_podman)` while each release one-off runs; returns the running replicas seen then."""
    seen: list[list[str]] = []
    real = fake_podman.oneoff_run

    def oneoff_run(spec: podman.ContainerSpec, *, timeout: float, remove: bool = True) -> tuple[int, str]:
        if spec.labels["coltsfoot.role"] == "release":
            seen.append(sorted(name for name, c in fake_podman.containers.items() if c.running))
            action(fake_podman)
        return real(spec, timeout=timeout, remove=remove)

    cast(mock.Mock, podman.oneoff_run).side_effect = oneoff_run
    return seen


def test_the_new_replicas_boot_while_the_release_runs(app: App, fake_podman: FakePodman):
    files = {"Procfile": f"web: {WEB}\nrelease: python manage.py migrate\n", "requirements.txt": "django\n"}
    deployment = archive_deployment(app, files)
    seen = _during_release(fake_podman, lambda fake: None)

    tasks.drive(deployment.public_id)

    assert reload(deployment).state == State.LIVE
    assert seen == [[pipeline.replica_name(deployment.public_id, i) for i in range(app.replicas)]]


def test_a_replica_that_exits_during_the_release_is_started_again_after_it(app: App, fake_podman: FakePodman):
    files = {"Procfile": f"web: {WEB}\nrelease: python manage.py migrate\n", "requirements.txt": "django\n"}
    deployment = archive_deployment(app, files)
    first = pipeline.replica_name(deployment.public_id, 0)

    def exit_first(fake: FakePodman) -> None:
        fake.containers[first].running = False

    _during_release(fake_podman, exit_first)

    tasks.drive(deployment.public_id)

    assert reload(deployment).state == State.LIVE
    assert fake_podman.started.count(first) == 2
    assert fake_podman.containers[first].running


def test_a_release_that_succeeded_is_not_run_again_on_resume(app: App, fake_podman: FakePodman):
    files = {"Procfile": f"web: {WEB}\nrelease: python manage.py migrate\n", "requirements.txt": "django\n"}
    deployment = archive_deployment(app, files)
    first = pipeline.replica_name(deployment.public_id, 0)

    def exit_first_and_fail_its_restart(fake: FakePodman) -> None:
        fake.containers[first].running = False
        fake.fail("container_run_detached", first)

    _during_release(fake_podman, exit_first_and_fail_its_restart)

    with pytest.raises(podman.PodmanError):
        tasks.drive(deployment.public_id)  # the release ran, then starting a replica again failed
    tasks.drive(deployment.public_id)

    assert reload(deployment).state == State.LIVE
    assert fake_podman.oneoff_roles() == ["deps", "release"]


# === Secrets ==================================================================================

SECRET = "tok-9f8e7d6c5b4a"


@pytest.fixture
def app_with_secret(app: App) -> App:
    ConfigVar.objects.create(app=app, key="API_TOKEN", value_encrypted=crypto.encrypt(SECRET), secret=True)
    ConfigVar.objects.create(app=app, key="GREETING", value_encrypted=crypto.encrypt("hello"), secret=False)
    return app


def test_a_secret_reaches_containers_only_as_a_podman_secret(
    app_with_secret: App,
    fake_podman: FakePodman,
):
    files = {"Procfile": f"web: {WEB}\nrelease: python manage.py migrate\n", "requirements.txt": "django\n"}
    deployment = go_live(app_with_secret, **files)

    secret = pipeline.secret_name(deployment.public_id, "API_TOKEN")
    assert fake_podman.secrets[secret] == SECRET
    release = next(spec for spec in fake_podman.oneoffs if spec.labels["coltsfoot.role"] == "release")
    web = [fake_podman.containers[name].spec for name in fake_podman.names_of(deployment)]
    for spec in [release, *web]:
        assert spec.secret_env == {"API_TOKEN": secret}
        assert spec.env["GREETING"] == "hello"
        assert "API_TOKEN" not in spec.env
        shown = [spec.name, spec.command, *spec.env.values(), *spec.labels.values(), *spec.secret_env.values()]
        assert not any(SECRET in value for value in shown)
        assert SECRET not in " ".join(podman.run_detached_argv(spec))


def test_a_secret_the_app_prints_is_redacted_from_the_log(
    app_with_secret: App,
    settings: Any,
    fake_podman: FakePodman,
):
    settings.START_DEADLINE_SECONDS = 0
    live = go_live(app_with_secret)
    broken = archive_deployment(app_with_secret)
    image = pipeline.app_image_ref(broken.public_id)
    fake_podman.broken_images.add(image)
    fake_podman.output[image] = f"config: API_TOKEN={SECRET}\nKeyError: 'SECRET_KEY'\n"

    attempt(broken)

    broken = reload(broken)
    assert broken.error_code == "start.unhealthy"
    assert "KeyError: 'SECRET_KEY'" in broken.log
    assert "API_TOKEN=[redacted]" in broken.log
    assert SECRET not in broken.log
    # The failed deployment's podman secrets are gone; the live one's are not.
    assert not any(name.startswith(f"cf-{broken.public_id.hex}-") for name in fake_podman.secrets)
    assert fake_podman.secrets[pipeline.secret_name(live.public_id, "API_TOKEN")] == SECRET


# === App teardown =============================================================================


def test_app_teardown_removes_route_containers_images_and_the_row(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    other = go_live(make_app(slug="globex", name="shop", replicas=1))
    first = go_live(app)
    second = go_live(app)
    # A leftover only labelled with the app (a dependency install whose deployment row is gone).
    stray_spec = dataclasses.replace(
        fake_podman.containers[pipeline.replica_name(second.public_id, 0)].spec,
        name="tsl-leftover-deps",
        image=str(settings.BASE_IMAGE),
        labels={"coltsfoot.app": str(app.public_id), "coltsfoot.role": "deps"},
    )
    fake_podman.containers[stray_spec.name] = FakeContainer(
        stray_spec, address="10.89.0.250", running=True, answers_http=True, output=""
    )
    App.objects.filter(pk=app.pk).update(state=App.State.DELETING)

    tasks.app_teardown.run(str(app.public_id))

    assert routes.deletes == [app.public_id]
    assert app.public_id not in routes.table
    assert routes.hosts.read(app.public_id) is None  # its upstream name resolves no more
    assert routes.hosts.read(other.app.public_id) == [
        fake_podman.containers[n].address for n in fake_podman.names_of(other)
    ]
    assert fake_podman.containers_with_label("coltsfoot.app", str(app.public_id)) == []
    assert first.image_ref not in fake_podman.images
    assert second.image_ref not in fake_podman.images
    assert not App.objects.filter(pk=app.pk).exists()
    assert not Deployment.objects.filter(pk__in=[first.pk, second.pk]).exists()
    # Another app (another tenant's) is untouched.
    assert fake_podman.names_of(other) == replica_names(other, 1)
    assert other.image_ref in fake_podman.images
    assert routes.table == {other.app.public_id: upstreams(fake_podman, other)}

    tasks.app_teardown.run(str(app.public_id))  # again: harmless

    assert routes.deletes == [app.public_id]
    assert fake_podman.names_of(other) == replica_names(other, 1)


def test_app_teardown_of_an_active_app_does_nothing(
    app: App,
    fake_podman: FakePodman,
    routes: FakeRoutes,
):
    live = go_live(app)

    tasks.app_teardown.run(str(app.public_id))

    assert App.objects.filter(pk=app.pk).exists()
    assert routes.deletes == []
    assert fake_podman.names_of(live) == replica_names(live, 2)


# === Reconcile ================================================================================


def test_reconcile_requeues_only_deployments_whose_lease_is_stale(app: App, settings: Any):
    now = timezone.now()
    old = now - timedelta(seconds=settings.LEASE_SECONDS + 30)
    recent = now - timedelta(seconds=settings.LEASE_SECONDS // 2)

    def row(state: str, heartbeat_at: Any, created_at: Any = None) -> Deployment:
        return Deployment.objects.create(
            app=app,
            number=Deployment.objects.filter(app=app).count() + 1,
            source_kind=Deployment.SourceKind.ARCHIVE,
            state=state,
            heartbeat_at=heartbeat_at,
            lease_owner="worker" if heartbeat_at else "",
            created_at=created_at or now,
        )

    dead_builder = row(State.BUILDING, old, old)
    dead_starter = row(State.STARTING, old, old)
    lost_message = row(State.QUEUED, None, old)  # never picked up at all
    row(State.BUILDING, recent, old)  # working
    row(State.STARTING, now + timedelta(seconds=30), old)  # held for a pending retry
    row(State.QUEUED, None, now)  # just queued
    row(State.FAILED, old, old)
    row(State.SUPERSEDED, old, old)
    row(State.LIVE, old, old)

    with (
        mock.patch.object(tasks.deployment_run, "delay", autospec=True) as deployment_delay,
        mock.patch.object(tasks.app_teardown, "delay", autospec=True) as teardown_delay,
    ):
        counts = tasks.reconcile()

    requeued = sorted(call.args[0] for call in deployment_delay.call_args_list)
    expected = sorted(str(d.public_id) for d in (dead_builder, dead_starter, lost_message))
    assert requeued == expected
    assert counts["deployments"] == 3
    assert counts["apps"] == 0
    teardown_delay.assert_not_called()


def test_reconcile_queues_a_stalled_deployment_once_and_any_worker_can_take_it(app: App, settings: Any):
    old = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS + 30)
    stalled = archive_deployment(app)
    Deployment.objects.filter(pk=stalled.pk).update(
        state=State.BUILDING, heartbeat_at=old, lease_owner="dead-worker", created_at=old
    )
    with mock.patch.object(tasks.deployment_run, "delay", autospec=True) as delay:
        tasks.reconcile()
        tasks.reconcile()  # the next sweep, before a worker got to it
    delay.assert_called_once_with(str(stalled.public_id))
    # The requeued task (a new task id) claims the lease the reconciler left and finishes.
    attempt(stalled, task_id=str(uuid.uuid4()))
    assert reload(stalled).state == State.LIVE


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for retries in range(10):
        step = min(tasks.BACKOFF_CAP_SECONDS, tasks.BACKOFF_BASE_SECONDS * 2**retries)
        samples = [tasks.backoff_seconds(retries) for _ in range(50)]
        assert all(0.5 * step <= s <= 1.5 * step for s in samples)
        assert len(set(samples)) > 1  # jittered, so retries of many tasks do not line up
    assert max(tasks.backoff_seconds(30) for _ in range(50)) <= 1.5 * tasks.BACKOFF_CAP_SECONDS
