"""The deploy pipeline's steps against an in-memory podman (tests/unit/fakes.py): names, labels,
the sandbox spec, the deployment log, and the dependency layer cache."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings

from core.faults import PlatformError
from core.faults import UserError
from drivers import podman
from platform_apps.models import App
from platform_apps.models import Deployment
from provisioning import pipeline
from provisioning import runtime
from tenants.services import tenant_create
from tests.unit.fakes import REQUIREMENTS
from tests.unit.fakes import WEB
from tests.unit.fakes import FakePodman
from tests.unit.fakes import archive_deployment
from tests.unit.fakes import make_app
from tests.unit.fakes import reload

pytestmark = pytest.mark.usefixtures("pipeline_settings")


# === Names ====================================================================================


def test_names_are_deterministic_and_built_from_uuids():
    deployment_id = uuid.UUID("0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a")
    tenant_id = uuid.UUID("4f2a9c1d-8e7b-4a6c-b5d4-e3f2a1b0c9d8")

    assert pipeline.replica_name(deployment_id, 0) == "tsl-0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a-0"
    assert pipeline.replica_name(deployment_id, 3) == "tsl-0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a-3"
    assert pipeline.replica_name(deployment_id, 1) == pipeline.replica_name(uuid.UUID(str(deployment_id)), 1)
    assert runtime.tenant_network(tenant_id) == "cf-t-4f2a9c1d8e7b4a6cb5d4"
    assert pipeline.app_image_ref(deployment_id) == "localhost/coltsfoot-app:0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a"
    assert pipeline.release_container_name(deployment_id) != pipeline.deps_container_name(deployment_id)


def test_names_of_different_deployments_never_collide():
    first, second = uuid.uuid4(), uuid.uuid4()
    assert pipeline.replica_name(first, 0) != pipeline.replica_name(second, 0)
    assert pipeline.app_image_ref(first) != pipeline.app_image_ref(second)
    assert pipeline.secret_name(first, "API_TOKEN") != pipeline.secret_name(second, "API_TOKEN")


# === Labels and the sandbox spec ==============================================================


@pytest.fixture
def deployment(db: None) -> Deployment:
    # A few tenants first, so that pks and UIDs are not all 1 (and could not pass for each other).
    for slug in ("first", "second", "third"):
        tenant_create(slug=slug)
    app = make_app(replicas=1, memory_mb=384, cpus=0.5)
    return archive_deployment(app)


def test_labels_carry_public_uuids_only(deployment: Deployment):
    labels = pipeline.labels_for(deployment, "web")

    app, tenant = deployment.app, deployment.app.tenant
    assert labels["coltsfoot.tenant"] == str(tenant.public_id)
    assert labels["coltsfoot.app"] == str(app.public_id)
    assert labels["coltsfoot.deployment"] == str(deployment.public_id)
    assert labels["coltsfoot.role"] == "web"
    internal = {str(tenant.pk), str(app.pk), str(deployment.pk), str(tenant.linux_uid), str(deployment.number)}
    for value in labels.values():
        assert value not in internal
        assert str(tenant.linux_uid) not in value


def test_sandbox_spec_runs_as_the_tenants_uid_with_the_apps_limits(deployment: Deployment):
    spec = pipeline._sandbox_spec(
        deployment,
        name=pipeline.replica_name(deployment.public_id, 0),
        image=pipeline.app_image_ref(deployment.public_id),
        command=WEB,
        role="web",
        env={"PORT": "8000"},
    )

    tenant = deployment.app.tenant
    assert spec.uid == spec.gid == tenant.linux_uid
    assert spec.uid > 0
    assert spec.memory_mb == 384
    assert spec.cpus == 0.5
    assert spec.network == runtime.tenant_network(tenant.public_id)
    assert spec.read_only
    assert spec.shell_path == "/bin/bash"
    assert spec.workdir == "/app/src"
    # The UID is in uid/gid only: nothing else the container (or `podman ps`) shows carries it.
    shown = [spec.name, spec.network, spec.image, *spec.labels.values(), *spec.env.values()]
    assert not any(str(tenant.linux_uid) in value for value in shown)


def test_sandbox_spec_has_the_gvisor_sized_process_limits_and_the_tenants_cgroup(deployment: Deployment, settings: Any):
    def spec_of(target: Deployment) -> podman.ContainerSpec:
        image = pipeline.app_image_ref(target.public_id)
        return pipeline._sandbox_spec(target, name="tsl-x-0", image=image, command=WEB, role="web")

    settings.TENANT_CGROUP_PARENT = "/coltsfoot-tenants"
    spec = spec_of(deployment)
    tenant = deployment.app.tenant
    # Guest tasks are limited inside gVisor; the host pids limit sits above what that many cost.
    assert spec.nproc_limit == 256
    assert spec.pids_limit >= 46 + 256 * 8
    assert spec.cgroup_parent == f"/coltsfoot-tenants/t-{tenant.public_id.hex}"
    assert spec_of(archive_deployment(make_app(slug="other", name="shop"))).cgroup_parent != spec.cgroup_parent

    settings.TENANT_CGROUP_PARENT = ""
    assert spec_of(deployment).cgroup_parent == ""


def test_sandbox_spec_of_a_tenant_image_uses_sh(db: None):
    app = make_app(replicas=1)
    image = Deployment.objects.create(
        app=app,
        number=1,
        source_kind=Deployment.SourceKind.IMAGE,
        source_url="docker.io/library/nginx:1",
        own_image=True,  # as deployments.deployment_create_from_payload sets it
    )
    spec = pipeline._sandbox_spec(
        reload(image), name="tsl-x-0", image="docker.io/library/nginx:1", command="x", role="web"
    )
    assert spec.shell_path == "/bin/sh"
    assert spec.workdir == "/"


def test_sandbox_spec_of_a_rerelease_of_a_tenant_image_still_uses_sh(db: None):
    """A release of a release of an image deploy still runs the tenant's image with /bin/sh from
    /: the `own_image` flag travels with every reuse of the image, however many hops back."""
    app = make_app(replicas=1)
    image = Deployment.objects.create(
        app=app,
        number=1,
        source_kind=Deployment.SourceKind.IMAGE,
        source_url="docker.io/library/nginx:1",
        image_ref=pipeline.app_image_ref(uuid.uuid4()),
        own_image=True,
        state=Deployment.State.LIVE,
    )
    first = Deployment.objects.create(
        app=app,
        number=2,
        source_kind=Deployment.SourceKind.RELEASE,
        source_deployment=image,
        image_ref=image.image_ref,
        own_image=True,
        state=Deployment.State.LIVE,
    )
    second = Deployment.objects.create(
        app=app,
        number=3,
        source_kind=Deployment.SourceKind.RELEASE,
        source_deployment=first,
        image_ref=image.image_ref,
        own_image=True,
    )

    for deployment in (first, second):
        spec = pipeline._sandbox_spec(
            reload(deployment), name="tsl-x-0", image=image.image_ref, command="exec nginx", role="web"
        )
        assert (spec.shell_path, spec.workdir) == ("/bin/sh", "/"), f"deployment #{deployment.number}"


# === The log ==================================================================================


def test_redact_replaces_longer_secrets_first():
    text = "token=abcdef12 prefix=abcd"
    assert pipeline.redact(text, ["abcd", "abcdef12"]) == "token=[redacted] prefix=[redacted]"
    # Were the shorter one replaced first, the longer one would leak its tail ("ef12").
    assert "ef12" not in pipeline.redact(text, ["abcd", "abcdef12"])


def test_redact_ignores_very_short_secrets():
    text = "a=1 bb=22 ccc=333 dddd=4444"
    assert pipeline.redact(text, ["1", "22", "333", ""]) == text
    assert pipeline.redact(text, ["4444"]) == "a=1 bb=22 ccc=333 dddd=[redacted]"


def test_redact_replaces_every_occurrence():
    assert pipeline.redact("s3cret s3cret\ns3cret", ["s3cret"]) == "[redacted] [redacted]\n[redacted]"


def test_log_append_keeps_the_tail(deployment: Deployment, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pipeline, "LOG_MAX_CHARS", 40)

    pipeline.log_append(deployment, "A" * 30)
    pipeline.log_append(deployment, "B" * 25)

    log = reload(deployment).log
    assert len(log) == 40
    assert log == "A" * 13 + "\n" + "B" * 25 + "\n"


def test_log_append_keeps_the_tail_of_one_huge_chunk(deployment: Deployment, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pipeline, "LOG_MAX_CHARS", 10)

    pipeline.log_append(deployment, "0123456789abcdefghij")

    assert reload(deployment).log == "bcdefghij\n"


def test_log_append_redacts_and_adds_a_newline(deployment: Deployment):
    pipeline.log_append(deployment, "DATABASE_URL=postgres://u:hunter22@db/x", secrets=["postgres://u:hunter22@db/x"])
    pipeline.log_append(deployment, "")
    pipeline.step(deployment, "Building")

    assert reload(deployment).log == "DATABASE_URL=[redacted]\n-----> Building\n"


# === Build: the dependency layer ==============================================================


@pytest.fixture
def app(db: None) -> App:
    return make_app(replicas=1)


def test_build_installs_dependencies_in_a_sandbox_and_builds_from_them(app: App, fake_podman: FakePodman):
    deployment = archive_deployment(app)

    built = pipeline.build(deployment)

    image = pipeline.app_image_ref(deployment.public_id)
    assert built == pipeline.Built(
        image_ref=image, image_id=fake_podman.images[image], web_command=WEB, release_command=""
    )
    assert fake_podman.builds == [image]
    (deps_image,) = fake_podman.deps_images()
    assert fake_podman.parents[image] == deps_image
    (install,) = fake_podman.oneoffs
    assert install.labels["coltsfoot.role"] == "deps"
    assert install.image == settings.BASE_IMAGE
    assert install.uid == app.tenant.linux_uid
    mounts = {target: (source, read_only) for source, target, read_only in install.mounts}
    assert mounts["/deps"][1] is True
    assert mounts["/opt/coltsfoot/bin/uv"] == (settings.BUILD_UV, True)
    # Writable: only the tenant's own uv cache.
    cache = settings.BUILD_UV_CACHE_ROOT / app.tenant.public_id.hex
    assert [target for target, (_, read_only) in mounts.items() if not read_only] == ["/opt/coltsfoot/uv-cache"]
    assert mounts["/opt/coltsfoot/uv-cache"][0] == str(cache)
    assert cache.is_dir()
    assert cache.stat().st_mode & 0o777 == 0o700
    assert "UV_CACHE_DIR=/opt/coltsfoot/uv-cache" in install.command
    assert fake_podman.containers == {}  # the install container was committed, then removed
    assert "Installing dependencies" in reload(deployment).log


def test_a_build_that_leaves_the_uv_cache_over_its_bound_empties_it(app: App, fake_podman: FakePodman):
    cache = settings.BUILD_UV_CACHE_ROOT / app.tenant.public_id.hex
    cache.mkdir(parents=True)
    (cache / "wheels").mkdir()
    (cache / "wheels" / "big.whl").write_bytes(b"x" * (settings.BUILD_UV_CACHE_MAX_MB * 1024 * 1024 + 1))

    pipeline.build(archive_deployment(app))

    assert cache.is_dir()
    assert list(cache.iterdir()) == []


def test_a_build_without_the_platforms_uv_is_a_platform_error(app: App, fake_podman: FakePodman, settings: Any):
    settings.BUILD_UV = str(settings.BUILD_UV_CACHE_ROOT / "no-such-uv")

    with pytest.raises(PlatformError) as error:
        pipeline.build(archive_deployment(app))

    assert error.value.code == "build.uv_missing"
    assert fake_podman.oneoffs == []


def test_unchanged_dependencies_reuse_the_dependency_layer(app: App, fake_podman: FakePodman):
    first = archive_deployment(app, {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS, "app.py": "1"})
    second = archive_deployment(app, {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS, "app.py": "2"})

    pipeline.build(first)
    pipeline.build(second)

    assert fake_podman.oneoff_roles() == ["deps"]
    (deps_image,) = fake_podman.deps_images()
    assert fake_podman.builds == [pipeline.app_image_ref(first.public_id), pipeline.app_image_ref(second.public_id)]
    assert fake_podman.parents[pipeline.app_image_ref(second.public_id)] == deps_image
    assert "reusing the cached dependency layer" in reload(second).log


def test_changed_requirements_rebuild_the_dependency_layer(app: App, fake_podman: FakePodman):
    first = archive_deployment(app, {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS})
    second = archive_deployment(app, {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS + "httpx\n"})

    pipeline.build(first)
    pipeline.build(second)

    assert fake_podman.oneoff_roles() == ["deps", "deps"]
    assert len(fake_podman.deps_images()) == 2
    first_parent = fake_podman.parents[pipeline.app_image_ref(first.public_id)]
    second_parent = fake_podman.parents[pipeline.app_image_ref(second.public_id)]
    assert first_parent != second_parent


def test_an_existing_app_image_is_not_built_again(app: App, fake_podman: FakePodman):
    deployment = archive_deployment(app)
    first = pipeline.build(deployment)

    again = pipeline.build(deployment)

    assert again == first
    assert fake_podman.builds == [pipeline.app_image_ref(deployment.public_id)]
    assert fake_podman.oneoff_roles() == ["deps"]


def test_failed_dependency_install_is_a_user_error_and_leaves_nothing(app: App, fake_podman: FakePodman):
    fake_podman.oneoff_results["deps"] = (1, "ERROR: No matching distribution found for flask==99\n")
    deployment = archive_deployment(app)

    with pytest.raises(UserError) as caught:
        pipeline.build(deployment)

    assert caught.value.code == "build.dependencies_failed"
    assert fake_podman.containers == {}
    assert fake_podman.deps_images() == set()
    assert fake_podman.builds == []
    assert "No matching distribution found for flask==99" in reload(deployment).log


def test_build_without_a_procfile_is_a_user_error(app: App, fake_podman: FakePodman):
    deployment = archive_deployment(app, {"requirements.txt": REQUIREMENTS})

    with pytest.raises(UserError) as caught:
        pipeline.build(deployment)

    assert caught.value.code == "build.no_web_process"
    assert fake_podman.oneoffs == []
    assert fake_podman.builds == []
