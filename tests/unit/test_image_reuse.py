"""Do no work twice (issue 12): a deployment whose source tree has the digest of one that went live
for the same app runs that deployment's image, with no dependency install and no `podman build`;
against the in-memory podman, with the collector keeping a reused image while it is referenced."""

from __future__ import annotations

import logging
import time
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.utils import timezone

from drivers import podman
from platform_apps.models import App
from platform_apps.models import Deployment
from provisioning import pipeline
from provisioning import tasks
from provisioning.reconciler import collector
from tests.unit.fakes import BASE_IMAGE_ID
from tests.unit.fakes import REQUIREMENTS
from tests.unit.fakes import WEB
from tests.unit.fakes import FakePodman
from tests.unit.fakes import FakeRoutes
from tests.unit.fakes import archive_deployment
from tests.unit.fakes import make_app
from tests.unit.fakes import reload

State = Deployment.State
LATER = time.time() + 10 * 24 * 3600  # past every grace period
SOURCE = {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS, "app.py": "app = None\n"}


@pytest.fixture(autouse=True)
def _seams(db: None, pipeline_settings: None, fake_podman: FakePodman, routes: FakeRoutes, http: Any) -> None:
    """Every test here runs against the fakes."""


@pytest.fixture
def app(db: None) -> App:
    return make_app(replicas=1)


def go_live(app: App, files: dict[str, str] | None = None) -> Deployment:
    deployment = archive_deployment(app, SOURCE if files is None else files)
    tasks.drive(deployment.public_id)
    deployment = reload(deployment)
    assert deployment.state == State.LIVE, deployment.log
    return deployment


def reused_message(previous: Deployment) -> str:
    return f"Source unchanged since deployment {previous.public_id}: reusing its image"


# --- reuse ----------------------------------------------------------------------------------------


def test_an_unchanged_source_reuses_the_image_without_installing_or_building(
    app: App, fake_podman: FakePodman, caplog: pytest.LogCaptureFixture
):
    first = go_live(app)
    caplog.set_level(logging.INFO, logger="provisioning.pipeline")

    second = go_live(app)

    assert fake_podman.builds == [pipeline.app_image_ref(first.public_id)]
    assert fake_podman.oneoff_roles() == ["deps"]  # the first deployment's install, and nothing since
    assert (second.image_ref, second.image_id) == (first.image_ref, first.image_id)
    assert second.source_digest == first.source_digest
    assert second.source_digest is not None
    assert (second.web_command, second.release_command) == (WEB, "")
    assert reused_message(first) in second.log
    assert "Installing dependencies" not in second.log
    assert "Building the app image" not in second.log
    # Its replicas run the first deployment's image; the first one's replicas were retired.
    (replica,) = fake_podman.names_of(second)
    assert fake_podman.containers[replica].spec.image == first.image_ref
    assert fake_podman.names_of(first) == []
    assert reload(first).state == State.SUPERSEDED
    (record,) = [r for r in caplog.records if r.getMessage().startswith("source unchanged")]
    assert record.__dict__["tenant_id"] == str(app.tenant.public_id)
    assert record.__dict__["app_id"] == str(app.public_id)
    assert record.__dict__["deployment_id"] == str(second.public_id)
    assert record.__dict__["reused_deployment_id"] == str(first.public_id)


def test_a_third_upload_of_the_same_source_reuses_the_same_image(app: App, fake_podman: FakePodman):
    first = go_live(app)
    go_live(app)
    third = go_live(app)

    assert third.image_ref == first.image_ref
    assert len(fake_podman.builds) == 1
    assert reused_message(first) not in third.log  # the newest one with the digest: the second
    assert "Source unchanged since deployment" in third.log


@pytest.mark.parametrize(
    ("change", "installs"),
    [
        ({"app.py": "app = 1\n"}, ["deps"]),
        ({"requirements.txt": REQUIREMENTS + "httpx\n"}, ["deps", "deps"]),
        ({"Procfile": "web: gunicorn -w 2 --bind 0.0.0.0:$PORT app:app\n"}, ["deps"]),
        ({"style.css": ""}, ["deps"]),
    ],
    ids=["code", "requirements", "procfile", "new-file"],
)
def test_a_changed_source_is_built(app: App, fake_podman: FakePodman, change: dict[str, str], installs: list[str]):
    first = go_live(app)

    second = go_live(app, {**SOURCE, **change})

    assert fake_podman.builds == [pipeline.app_image_ref(first.public_id), pipeline.app_image_ref(second.public_id)]
    assert fake_podman.oneoff_roles() == installs
    assert second.image_ref == pipeline.app_image_ref(second.public_id)
    assert second.source_digest != first.source_digest
    assert "Source unchanged" not in second.log


def test_an_executable_bit_changes_the_source(app: App, fake_podman: FakePodman):
    go_live(app)
    deployment = archive_deployment(app, SOURCE)
    (deployment.build_dir / "src" / "app.py").chmod(0o755)

    pipeline.build(deployment)

    assert len(fake_podman.builds) == 2


def test_reuse_is_skipped_when_the_image_is_gone(app: App, fake_podman: FakePodman):
    first = go_live(app)
    del fake_podman.images[first.image_ref]  # as if retention (or an operator) had removed it

    second = go_live(app)

    assert second.image_ref == pipeline.app_image_ref(second.public_id)
    assert fake_podman.builds[-1] == second.image_ref
    assert "Source unchanged" not in second.log


def test_reuse_is_skipped_when_the_ref_names_another_image_now(app: App, fake_podman: FakePodman):
    first = go_live(app)
    fake_podman.image_tag(str(settings.BASE_IMAGE), first.image_ref)  # the ref was re-pointed

    second = go_live(app)

    assert second.image_ref == pipeline.app_image_ref(second.public_id)
    assert len(fake_podman.builds) == 2


def test_a_rebuilt_base_image_builds_again(app: App, fake_podman: FakePodman):
    first = go_live(app)
    new_base = "sha256:" + "c" * 64
    fake_podman.images[str(settings.BASE_IMAGE)] = new_base
    fake_podman.image_labels[new_base] = {}
    fake_podman.image_sizes[new_base] = fake_podman.image_sizes[BASE_IMAGE_ID]

    second = go_live(app)

    assert second.source_digest != first.source_digest
    assert fake_podman.oneoff_roles() == ["deps", "deps"]  # a new dependency image on the new base
    assert len(fake_podman.builds) == 2


def test_a_deployment_that_never_went_live_is_not_reused(app: App, fake_podman: FakePodman):
    """Built, but its start failed (or it was superseded before serving): its image was never proven,
    and retention removes it; a new deployment of the same source builds afresh."""
    failed = archive_deployment(app, SOURCE)
    built = pipeline.build(failed)
    Deployment.objects.filter(pk=failed.pk).update(
        state=State.FAILED, error_code="start.unhealthy", image_ref=built.image_ref, image_id=built.image_id
    )

    second = go_live(app)

    assert second.source_digest == reload(failed).source_digest
    assert second.image_ref == pipeline.app_image_ref(second.public_id)
    assert len(fake_podman.builds) == 2


def test_another_apps_or_tenants_identical_source_is_built(app: App, fake_podman: FakePodman):
    """A tenant never gets another's image, and an app never another app's, identical sources or not."""
    mine = go_live(app)
    sibling = go_live(make_app(name="sibling", replicas=1))
    stranger = go_live(make_app(slug="globex", name="shop", replicas=1))

    images = [mine.image_ref, sibling.image_ref, stranger.image_ref]
    assert images == [pipeline.app_image_ref(d.public_id) for d in (mine, sibling, stranger)]
    assert fake_podman.builds == images
    assert all("Source unchanged" not in d.log for d in (sibling, stranger))
    # The other tenant's digest differs too (its dependency image is its own); the sibling's does not,
    # which is why the lookup is by app.
    assert stranger.source_digest != mine.source_digest
    assert sibling.source_digest == mine.source_digest
    labels = fake_podman.image_labels[fake_podman.images[stranger.image_ref]]
    assert labels["coltsfoot.tenant"] == str(stranger.app.tenant.public_id)


def test_a_rollback_is_not_a_reuse_candidate_but_its_target_is(app: App, fake_podman: FakePodman):
    from platform_apps.deployments.services import deployment_create_rollback

    first = go_live(app)
    go_live(app, {**SOURCE, "app.py": "app = 2\n"})
    rollback = deployment_create_rollback(app=app, target=first)
    tasks.drive(rollback.public_id)
    assert reload(rollback).source_digest is None

    again = go_live(app)

    assert again.image_ref == first.image_ref
    assert reused_message(first) in again.log


# --- the collector ------------------------------------------------------------------------------


def test_the_collector_keeps_a_reused_image_while_a_deployment_references_it(
    app: App, fake_podman: FakePodman, settings: Any
):
    settings.KEEP_RELEASES = 1
    first = go_live(app)
    other = go_live(app, {**SOURCE, "app.py": "app = 2\n"})
    reuser = go_live(app)  # the first one's source again: its image
    assert reuser.image_ref == first.image_ref

    collector.collect(now=LATER)

    # The first deployment is beyond the last release, but the live one runs its image.
    assert first.image_ref in fake_podman.images
    assert reload(first).image_ref == first.image_ref
    assert other.image_ref not in fake_podman.images

    # Once nothing kept references it, it goes, and neither deployment can be rolled back to.
    go_live(app, {**SOURCE, "app.py": "app = 3\n"})
    collector.collect(now=LATER)

    assert first.image_ref not in fake_podman.images
    assert reload(first).image_ref == reload(reuser).image_ref == ""


def test_an_image_being_reused_survives_a_collection_in_the_middle_of_the_build(
    app: App, fake_podman: FakePodman, settings: Any
):
    """The build names the image on its row before it asks podman about it, so a collector run at
    that moment (which checks the rows again before removing anything) keeps it."""
    settings.KEEP_RELEASES = 1
    first = go_live(app)
    go_live(app, {**SOURCE, "app.py": "app = 2\n"})  # first's image is now beyond retention
    collected: list[dict[str, int]] = []

    def collect_first(ref: str) -> str:
        if ref == first.image_ref and not collected:
            collected.append(collector.collect(now=LATER))
        return fake_podman.image_id(ref)

    # `podman.image_id` is the fake's autospec'd stand-in already: change only what it does.
    with mock.patch.object(podman.image_id, "side_effect", collect_first):
        reuser = go_live(app)

    assert collected == [{"images": 0, "secrets": 0, "build_dirs": 0}]

    assert reuser.image_ref == first.image_ref
    assert first.image_ref in fake_podman.images
    assert len(fake_podman.builds) == 2


# --- build slots --------------------------------------------------------------------------------


def test_a_reusing_upload_does_not_wait_for_a_build_slot(app: App, fake_podman: FakePodman, settings: Any):
    settings.MAX_CONCURRENT_BUILDS = 1
    first = go_live(app)
    busy = make_app(name="busy", replicas=1)
    Deployment.objects.create(
        app=busy, number=50, state=State.BUILDING, source_kind="archive", started_at=timezone.now()
    )

    changed = archive_deployment(app, {**SOURCE, "app.py": "app = 2\n"})
    tasks.drive(changed.public_id)
    assert reload(changed).state == State.QUEUED  # it has work to do: it waits
    Deployment.objects.filter(pk=changed.pk).update(state=State.FAILED)
    unchanged = go_live(app)

    assert tasks.BUILD_WAIT_MESSAGE not in unchanged.log
    assert unchanged.image_ref == first.image_ref
    assert len(fake_podman.builds) == 1
