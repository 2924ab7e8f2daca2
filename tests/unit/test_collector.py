"""Image retention and the other limits of the workflow (issue 11): the collector's decisions as
a table, a run against the in-memory podman, build slots per tenant, the went-live marker, the
dependency install that plants something at /app/src, and NUL bytes in the deployment log."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.conf import settings

from core.faults import UserError
from drivers import podman
from platform_apps.deployments.services import deployment_create_rollback
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import StorageUsage
from provisioning import pipeline
from provisioning import tasks
from provisioning.reconciler import collector
from provisioning.reconciler.collector import BuildDir
from provisioning.reconciler.collector import DeploymentRow
from tests.unit.fakes import APP_LAYER
from tests.unit.fakes import DEPS_LAYER
from tests.unit.fakes import FakePodman
from tests.unit.fakes import FakeRoutes
from tests.unit.fakes import archive_deployment
from tests.unit.fakes import make_app
from tests.unit.fakes import reload

State = Deployment.State
LATER = time.time() + 10 * 24 * 3600  # past every grace period


@pytest.fixture(autouse=True)
def _seams(db: None, pipeline_settings: None, fake_podman: FakePodman, routes: FakeRoutes, http: Any) -> None:
    """Every test here runs against the fakes."""


# --- the decision, as a table -----------------------------------------------------------------

TENANT = str(uuid.uuid4())
APP = str(uuid.uuid4())


def row(number: int, state: str, *, live: bool = False, app_active: bool = True, image: bool = True) -> DeploymentRow:
    deployment_id = str(uuid.UUID(int=number))
    return DeploymentRow(
        id=deployment_id,
        app_id=APP,
        tenant_id=TENANT,
        app_active=app_active,
        number=number,
        state=state,
        image_ref=f"{collector.APP_IMAGE_PREFIX}{deployment_id}" if image else "",
        went_live_at=float(number) if live else None,
    )


def ref(number: int) -> str:
    return f"{collector.APP_IMAGE_PREFIX}{uuid.UUID(int=number)}"


def image(name: str, *, role: str, created: float = 0.0, labels: dict[str, str] | None = None) -> podman.ObservedImage:
    return podman.ObservedImage(
        id=f"sha256:{abs(hash(name)):064x}"[:71],
        names=(name,),
        labels={"coltsfoot.instance": "test", "coltsfoot.role": role, "coltsfoot.tenant": TENANT, **(labels or {})},
        size=150,
        created_at=created,
        containers=0,
    )


def decide(rows: list[DeploymentRow], images: list[podman.ObservedImage] = (), **kwargs: Any) -> collector.Plan:  # type: ignore[assignment]
    options: dict[str, Any] = {
        "secrets": [],
        "busy_deployments": set(),
        "build_dirs": [],
        "base_size": 100,
        "now": 10_000.0,
        "keep_releases": 2,
        "grace_seconds": 600.0,
        **kwargs,
    }
    return collector.decide(rows=rows, images=list(images), **options)


HISTORY = [
    row(1, State.SUPERSEDED, live=True),
    row(2, State.SUPERSEDED, live=True),
    row(3, State.FAILED),  # its replicas never answered
    row(4, State.SUPERSEDED),  # superseded while starting: never live
    row(5, State.SUPERSEDED, live=True),
    row(6, State.LIVE, live=True),
    row(7, State.BUILDING, image=False),
]


@pytest.mark.parametrize(
    ("number", "removed"),
    [
        (1, True),  # went live, but beyond the last KEEP_RELEASES (2: #6 and #5)
        (2, True),
        (3, True),  # a failed deployment's image
        (4, True),  # never went live
        (5, False),  # a rollback target
        (6, False),  # live
    ],
)
def test_retention_table(number: int, removed: bool):
    plan = decide(HISTORY)
    assert (ref(number) in plan.remove_images) is removed


def test_an_image_a_rollback_or_release_uses_stays():
    # #8, a rollback to #1 in flight, and #9, a release of #2 that is live: both images stay.
    rollback = DeploymentRow(**{**row(8, State.STARTING).__dict__, "image_ref": ref(1)})
    release = DeploymentRow(**{**row(9, State.LIVE, live=True).__dict__, "image_ref": ref(2)})
    plan = decide([*HISTORY, rollback, release])
    assert ref(1) not in plan.remove_images
    assert ref(2) not in plan.remove_images


def test_an_app_being_deleted_is_left_to_its_teardown():
    plan = decide([DeploymentRow(**{**r.__dict__, "app_active": False}) for r in HISTORY])
    assert plan.remove_images == ()


def test_images_and_dependency_images_of_deleted_apps_go():
    gone = str(uuid.uuid4())  # a deployment the DB no longer has (its app was deleted)
    deps = image("localhost/coltsfoot-deps:abc", role="deps")
    app_image = image(
        f"{collector.APP_IMAGE_PREFIX}{gone}",
        role="image",
        labels={"coltsfoot.deployment": gone, "coltsfoot.deps": deps.ref},
    )
    plan = decide([], [app_image, deps])
    assert plan.remove_images == (app_image.ref, deps.ref)  # the child first, then its parent


def test_dependency_images_in_use_or_young_or_during_a_build_stay():
    used = image("localhost/coltsfoot-deps:used", role="deps")
    young = image("localhost/coltsfoot-deps:young", role="deps", created=9_900.0)
    unused = image("localhost/coltsfoot-deps:unused", role="deps")
    live = image(
        ref(6), role="image", labels={"coltsfoot.deployment": str(uuid.UUID(int=6)), "coltsfoot.deps": used.ref}
    )
    plan = decide(HISTORY[:6], [live, used, young, unused])
    assert unused.ref in plan.remove_images
    assert used.ref not in plan.remove_images
    assert young.ref not in plan.remove_images
    # While the tenant builds, its dependency images may be about to be used.
    assert unused.ref not in decide(HISTORY, [live, used, young, unused]).remove_images


def test_secrets_of_finished_deployments_without_containers_go():
    def secret(number: int) -> str:
        return f"cf-{uuid.UUID(int=number).hex}-api_key"

    others = f"cf-{uuid.uuid4().hex}-api_key"  # not this DB's: maybe another installation's
    plan = decide(
        HISTORY,
        secrets=[secret(1), secret(2), secret(6), secret(7), others],
        busy_deployments={str(uuid.UUID(int=2))},
    )
    assert plan.remove_secrets == (secret(1),)


def test_build_dirs_of_finished_or_unknown_deployments_go_and_the_rest_count():
    dirs = [
        BuildDir(name=str(uuid.UUID(int=3)), size=10, modified_at=0.0),  # failed
        BuildDir(name=str(uuid.UUID(int=7)), size=20, modified_at=0.0),  # building
        BuildDir(name="stale-intake", size=30, modified_at=0.0),
        BuildDir(name="fresh-intake", size=40, modified_at=9_999.0),  # its row is being inserted
    ]
    plan = decide(HISTORY, build_dirs=dirs)
    assert set(plan.remove_build_dirs) == {str(uuid.UUID(int=3)), "stale-intake"}
    assert plan.build_bytes == {TENANT: 20}


def test_usage_counts_each_layer_once():
    deps = podman.ObservedImage(
        id="sha256:d",
        names=("localhost/coltsfoot-deps:x",),
        labels={"coltsfoot.tenant": TENANT, "coltsfoot.role": "deps"},
        size=150,
        created_at=0.0,
        containers=0,
    )
    apps = [
        podman.ObservedImage(
            id=f"sha256:{n}",
            names=(ref(n),),
            size=151,
            created_at=0.0,
            containers=1,
            labels={"coltsfoot.tenant": TENANT, "coltsfoot.role": "image", "coltsfoot.deps": deps.ref},
        )
        for n in (5, 6)
    ]
    plan = decide(HISTORY[:6], [*apps, deps])
    assert plan.image_bytes == {TENANT: (150 - 100) + 2 * (151 - 150)}


# --- a run against the in-memory podman --------------------------------------------------------


def go_live(app: App) -> Deployment:
    deployment = archive_deployment(app)
    tasks.drive(deployment.public_id)
    deployment = reload(deployment)
    assert deployment.state == State.LIVE, deployment.log
    return deployment


def test_a_run_keeps_the_last_releases_and_removes_the_rest(fake_podman: FakePodman, settings: Any):
    settings.KEEP_RELEASES = 5
    app = make_app(replicas=1)
    deployments = [go_live(app) for _ in range(7)]
    assert all(reload(d).went_live_at is not None for d in deployments)
    [deps_ref] = fake_podman.deps_images()
    secret = pipeline.secret_name(deployments[0].public_id, "API_KEY")
    fake_podman.secrets[secret] = "s3cr3t"

    counts = collector.collect(now=LATER)

    assert counts["images"] == 2
    for old in deployments[:2]:
        assert pipeline.app_image_ref(old.public_id) not in fake_podman.images
        assert reload(old).image_ref == ""  # so a rollback to it is refused up front
    for kept in deployments[2:]:
        assert pipeline.app_image_ref(kept.public_id) in fake_podman.images
    assert deps_ref in fake_podman.images  # the kept images are built FROM it
    assert secret not in fake_podman.secrets
    usage = StorageUsage.objects.get(tenant=app.tenant)
    assert usage.image_bytes == DEPS_LAYER + 5 * APP_LAYER
    # The oldest kept one can still be rolled back to; a removed one cannot.
    assert deployment_create_rollback(app=app, target=reload(deployments[2])).image_ref


def test_a_deleted_apps_images_and_dependency_images_go(fake_podman: FakePodman):
    app = make_app(replicas=1)
    go_live(app)
    go_live(app)
    assert len(fake_podman.builds) == 2
    assert fake_podman.deps_images()
    tenant = app.tenant
    # As if the app's teardown had finished with podman unreachable for its images.
    for name in list(fake_podman.containers):
        fake_podman.container_remove(name)
    App.objects.filter(pk=app.pk).delete()

    collector.collect(now=LATER)

    assert fake_podman.deps_images() == set()
    assert not any(ref.startswith(collector.APP_IMAGE_PREFIX) for ref in fake_podman.images)
    assert str(settings.BASE_IMAGE) in fake_podman.images
    assert StorageUsage.objects.get(tenant=tenant).total_bytes == 0


def test_the_collector_runs_at_most_every_collect_seconds(fake_podman: FakePodman, settings: Any):
    settings.COLLECT_SECONDS = 300
    assert tasks.collect_if_due("first pass") is not None
    assert tasks.collect_if_due("second pass") is None


# --- build slots ----------------------------------------------------------------------------------


def test_a_tenants_third_build_waits_queued(fake_podman: FakePodman, settings: Any):
    settings.MAX_CONCURRENT_BUILDS = 2
    app = make_app(replicas=1)
    other = make_app(name="other", replicas=1)
    for target in (app, other):
        Deployment.objects.create(app=target, number=50, state=State.BUILDING, source_kind="archive")
    waiting = archive_deployment(app)

    tasks.drive(waiting.public_id)

    waiting = reload(waiting)
    assert waiting.state == State.QUEUED
    assert tasks.BUILD_WAIT_MESSAGE in waiting.log
    assert fake_podman.builds == []
    # Another tenant's builds are not held up.
    stranger = make_app(slug="globex", replicas=1)
    assert go_live(stranger).state == State.LIVE
    # Once a slot frees up, the next attempt (the reconciler queues it again) builds it.
    Deployment.objects.filter(app=other, number=50).update(state=State.FAILED)
    tasks.drive(waiting.public_id)
    assert reload(waiting).state == State.LIVE
    assert reload(waiting).log.count(tasks.BUILD_WAIT_MESSAGE) == 1


# --- what a tenant's build can do to itself ----------------------------------------------------


def test_a_dependency_install_that_plants_app_src_is_a_tenant_error(fake_podman: FakePodman):
    fake_podman.oneoff_results["deps"] = (pipeline.DEPS_DEFECT_EXIT, "-----> The dependency install created /app/src\n")
    deployment = archive_deployment(make_app(replicas=1))

    with pytest.raises(UserError) as raised:
        tasks.drive(deployment.public_id)

    assert raised.value.code == "build.image_defect"
    assert fake_podman.deps_images() == set()  # never committed, so never reused
    install = fake_podman.oneoffs[-1]
    assert "kill -9 -1" in install.command
    assert "/app/src" in install.command


def test_an_app_image_that_cannot_take_the_source_is_a_tenant_error(fake_podman: FakePodman):
    app = make_app(replicas=1)
    deployment = archive_deployment(app)
    failure = podman.PodmanError(
        "podman build failed",
        argv=["podman", "build"],
        returncode=125,
        stderr='Error: building at STEP "COPY --chown=0:0 . /app/src": destination /app/src already exists but '
        "is not a directory",
        transient=False,
    )
    fake_podman._failures[("image_build", pipeline.app_image_ref(deployment.public_id))] = [failure]

    with pytest.raises(UserError) as raised:
        tasks.drive(deployment.public_id)

    assert raised.value.code == "build.image_defect"
    assert fake_podman.deps_images() == set()  # the defective dependency image is not reused
    assert "not a directory" in reload(deployment).log


def test_nul_bytes_are_escaped_in_the_deployment_log():
    deployment = archive_deployment(make_app(replicas=1))
    pipeline.log_append(deployment, "before\x00after\n")
    pipeline.log_append(deployment, "next line")
    assert reload(deployment).log == "before\\x00after\nnext line\n"
