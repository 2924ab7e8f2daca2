"""The deploy pipeline's steps against an in-memory podman: names, labels, the sandbox spec, the
deployment log, and the dependency layer cache.

`provisioning.podman` and `caddy.client.CaddyClient` are the seams. Each podman operation the
pipeline and the tasks use is patched with `autospec=True` and a side effect on `FakePodman`,
which keeps containers, images, secrets and networks in memory, so tests assert on the state
that results (which containers exist, which images were built) rather than on call lists.
`podman.run` itself is patched to fail: nothing here may reach a real podman. `test_tasks`
imports the fakes and fixtures from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.conf import settings
from django.db.models import Max

from caddy.client import CaddyClient
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.services import app_create
from provisioning import pipeline
from provisioning import podman
from provisioning.errors import UserError
from tenants.models import Tenant
from tenants.services import tenant_create

BASE_IMAGE_ID = "sha256:" + "b" * 64
WEB = "gunicorn --bind 0.0.0.0:$PORT app:app"
REQUIREMENTS = "flask==3.1.0\ngunicorn==23.0.0\n"

# --- The in-memory podman ---------------------------------------------------------------------


@dataclasses.dataclass
class FakeContainer:
    spec: podman.ContainerSpec
    address: str
    running: bool
    answers_http: bool
    output: str
    stopped_gracefully: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.spec.labels)


def podman_failure(operation: str, *, transient: bool) -> podman.PodmanError:
    stderr = "Error: database is locked (internal detail /var/lib/containers)" if transient else "Error: broken"
    return podman.PodmanError(
        f"podman {operation} failed: {stderr}",
        argv=["podman", operation],
        returncode=125,
        stderr=stderr,
        transient=transient,
    )


class FakePodman:
    """What podman holds, and the operations of `provisioning.podman` over it (same signatures)."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[FakeContainer] = []
        self.started: list[str] = []  # every container name ever started detached
        self.images: dict[str, str] = {str(settings.BASE_IMAGE): BASE_IMAGE_ID}
        self.parents: dict[str, str] = {}  # app image -> the image its Containerfile is FROM
        self.builds: list[str] = []  # tags made by `podman build`
        self.oneoffs: list[podman.ContainerSpec] = []
        self.oneoff_results: dict[str, tuple[int, str]] = {}  # by role label: (exit code, output)
        self.secrets: dict[str, str] = {}
        self.networks: dict[str, dict[str, str]] = {}
        self.broken_images: set[str] = set()  # their containers exit at once and never answer
        self.deaf_images: set[str] = set()  # their containers run but never answer HTTP
        self.output: dict[str, str] = {}  # image -> what its containers print
        self._failures: dict[tuple[str, str], list[podman.PodmanError]] = {}
        # Called after a container started: lets a test make the world change mid-pipeline.
        self.on_start: Callable[[podman.ContainerSpec], None] | None = None
        self._addresses = itertools.count(2)
        self._ids = itertools.count(1)

    # -- test controls -------------------------------------------------------------------

    def fail(self, operation: str, key: str, *, times: int = 1, transient: bool = True) -> None:
        """Make `operation` on `key` (a name or ref) raise PodmanError the next `times` calls."""
        errors = [podman_failure(operation, transient=transient) for _ in range(times)]
        self._failures.setdefault((operation, key), []).extend(errors)

    def _maybe_fail(self, operation: str, key: str) -> None:
        pending = self._failures.get((operation, key))
        if pending:
            raise pending.pop()

    def names_of(self, deployment: Deployment) -> list[str]:
        return sorted(self.containers_with_label("coltsfoot.deployment", str(deployment.public_id)))

    def by_address(self, address: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.address == address), None)

    def deps_images(self) -> set[str]:
        return {ref for ref in self.images if ref.startswith(pipeline.DEPS_IMAGE_REPO + ":")}

    def oneoff_roles(self) -> list[str]:
        return [spec.labels["coltsfoot.role"] for spec in self.oneoffs]

    def _new_id(self) -> str:
        return f"sha256:{next(self._ids):064x}"

    # -- provisioning.podman operations ----------------------------------------------------

    def network_ensure(self, name: str, labels: Any = None) -> None:
        self.networks.setdefault(name, dict(labels or {}))

    def image_exists(self, ref: str) -> bool:
        return ref in self.images

    def image_id(self, ref: str) -> str:
        self._maybe_fail("image_id", ref)
        if ref not in self.images:
            raise podman.PodmanNotFound("no such image", argv=[], returncode=125, stderr="", transient=False)
        return self.images[ref]

    def image_build(
        self,
        context_dir: str,
        containerfile: str,
        tag: str,
        *,
        labels: Any = None,
        timeout: float | None = None,
    ) -> str:
        self._maybe_fail("image_build", tag)
        lines = Path(containerfile).read_text().splitlines()
        parent = next(line.removeprefix("FROM ").strip() for line in lines if line.startswith("FROM "))
        assert parent in self.images, f"build FROM an image that does not exist: {parent}"
        assert Path(context_dir).is_dir()
        self.builds.append(tag)
        self.parents[tag] = parent
        self.images[tag] = self._new_id()
        return f"STEP 1/5: FROM {parent}\nCOMMIT {tag}\n"

    def image_commit(self, container: str, tag: str, *, changes: Any = (), timeout: float | None = None) -> str:
        assert container in self.containers, f"commit of a container that does not exist: {container}"
        self.images[tag] = self._new_id()
        return self.images[tag]

    def image_remove(self, ref: str) -> None:
        # Like `podman rmi` without --force: an image a container still uses cannot go.
        if any(container.spec.image == ref for container in self.containers.values()):
            raise podman.PodmanError(
                "image in use", argv=[], returncode=2, stderr="Error: image is in use by a container", transient=False
            )
        self.images.pop(ref, None)

    def image_pull(self, ref: str, tls_verify: bool = True, *, timeout: float | None = None) -> str:
        self._maybe_fail("image_pull", ref)
        self.images.setdefault(ref, self._new_id())
        return self.images[ref]

    def image_tag(self, ref: str, new_ref: str) -> None:
        self.images[new_ref] = self.images[ref]

    def image_command(self, ref: str) -> list[str]:
        return ["python", "-m", "http.server", "8000"]

    def oneoff_run(self, spec: podman.ContainerSpec, *, timeout: float, remove: bool = True) -> tuple[int, str]:
        assert spec.image in self.images, f"one-off from an image that does not exist: {spec.image}"
        self.container_remove(spec.name)
        self.oneoffs.append(spec)
        role = spec.labels["coltsfoot.role"]
        code, output = self.oneoff_results.get(role, (0, f"{role} done\n"))
        if not remove:
            self.containers[spec.name] = FakeContainer(spec, address="", running=False, answers_http=False, output="")
        return code, output

    def container_run_detached(self, spec: podman.ContainerSpec) -> str:
        self._maybe_fail("container_run_detached", spec.name)
        if spec.name in self.containers:
            raise podman.PodmanError(
                "name in use", argv=[], returncode=125, stderr="Error: name is in use", transient=False
            )
        if spec.image not in self.images:
            raise podman.PodmanNotFound("no such image", argv=[], returncode=125, stderr="", transient=False)
        broken = spec.image in self.broken_images
        self.containers[spec.name] = FakeContainer(
            spec,
            address=f"10.89.0.{next(self._addresses)}",
            running=not broken,
            answers_http=not broken and spec.image not in self.deaf_images,
            output=self.output.get(spec.image, "Listening at: http://0.0.0.0:8000\n"),
        )
        self.started.append(spec.name)
        if self.on_start is not None:
            self.on_start(spec)
        return uuid.uuid4().hex

    def container_remove(self, name: str) -> None:
        container = self.containers.pop(name, None)
        if container is not None:
            container.running = False
            self.removed.append(container)

    def container_stop(self, name: str, timeout: int = podman.STOP_TIMEOUT_SECONDS) -> None:
        self._maybe_fail("container_stop", name)
        container = self.containers.get(name)
        if container is not None:
            container.running = False
            container.stopped_gracefully = True

    def container_is_running(self, name: str) -> bool:
        container = self.containers.get(name)
        return container is not None and container.running

    def container_address(self, name: str, network: str) -> str:
        container = self.containers.get(name)
        if container is None:
            raise podman.PodmanNotFound("no such container", argv=[], returncode=125, stderr="", transient=False)
        return container.address if container.spec.network == network else ""

    def container_logs(self, name: str, tail: int = 200) -> str:
        container = self.containers.get(name)
        if container is None:
            raise podman.PodmanNotFound("no such container", argv=[], returncode=125, stderr="", transient=False)
        return "".join(container.output.splitlines(keepends=True)[-tail:])

    def containers_with_label(self, key: str, value: str) -> list[str]:
        return [name for name, container in self.containers.items() if container.labels.get(key) == value]

    def secret_set(self, name: str, value: str) -> None:
        self.secrets[name] = value

    def secret_remove(self, name: str) -> None:
        self.secrets.pop(name, None)

    def secret_list(self) -> list[str]:
        return list(self.secrets)


PODMAN_OPERATIONS = tuple(
    name for name in vars(FakePodman) if not name.startswith("_") and callable(getattr(podman, name, None))
)


@pytest.fixture
def fake_podman() -> Iterator[FakePodman]:
    fake = FakePodman()
    with contextlib.ExitStack() as stack:
        for name in PODMAN_OPERATIONS:
            stack.enter_context(mock.patch.object(podman, name, autospec=True, side_effect=getattr(fake, name)))
        # Anything not faked above would end in `run`: make that loud rather than real.
        stack.enter_context(
            mock.patch.object(podman, "run", autospec=True, side_effect=AssertionError("real podman called"))
        )
        yield fake


# --- The Caddy route table ------------------------------------------------------------------


class FakeRoutes:
    """Caddy's app routes, as `CaddyClient.route_upsert`/`route_delete` leave them."""

    def __init__(self) -> None:
        self.table: dict[uuid.UUID, list[str]] = {}
        self.writes = 0
        self.deletes: list[uuid.UUID] = []
        # Called after each upsert: lets a test make another deployment win the race.
        self.on_upsert: Callable[[uuid.UUID], None] | None = None

    def route_upsert(self, app_id: uuid.UUID, hostnames: list[str], upstreams: list[str]) -> None:
        assert upstreams, "a route without upstreams"
        self.writes += 1
        self.table[app_id] = list(upstreams)
        if self.on_upsert is not None:
            hook, self.on_upsert = self.on_upsert, None
            hook(app_id)

    def route_delete(self, app_id: uuid.UUID) -> None:
        self.deletes.append(app_id)
        self.table.pop(app_id, None)


@pytest.fixture
def routes() -> Iterator[FakeRoutes]:
    fake = FakeRoutes()
    client = mock.create_autospec(CaddyClient, instance=True)
    client.__enter__.return_value = client
    client.route_upsert.side_effect = fake.route_upsert
    client.route_delete.side_effect = fake.route_delete
    with contextlib.ExitStack() as stack:
        for target in ("provisioning.pipeline.CaddyClient", "provisioning.tasks.CaddyClient"):
            cls = stack.enter_context(mock.patch(target, autospec=True))
            cls.from_settings.return_value = client
        yield fake


# --- The health check -------------------------------------------------------------------------


@pytest.fixture
def http(fake_podman: FakePodman) -> Iterator[respx.MockRouter]:
    """`http://<address>:8000/` answers when a running, healthy fake container has that address."""

    def answer(request: httpx.Request) -> httpx.Response:
        container = fake_podman.by_address(request.url.host)
        if container is None or not container.running or not container.answers_http:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, text="hello")

    with respx.mock(assert_all_called=False) as router:
        router.get(port=pipeline.APP_PORT, path="/").mock(side_effect=answer)
        yield router


# --- Rows -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _pipeline_settings(settings: Any, tmp_path: Path) -> None:
    settings.BUILD_ROOT = tmp_path / "builds"
    settings.BUILD_PIP_INDEX_URL = ""
    settings.BUILD_CA_BUNDLE = ""
    settings.START_DEADLINE_SECONDS = 2


def make_app(slug: str = "acme", name: str = "shop", **sizing: Any) -> App:
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(slug=slug)
    options = {"replicas": 2, "memory_mb": 256, "cpus": 1.0, **sizing}
    return app_create(tenant=tenant, name=name, deploy_branch="main", **options)


def next_number(app: App) -> int:
    return int(Deployment.objects.filter(app=app).aggregate(top=Max("number"))["top"] or 0) + 1


def archive_deployment(app: App, files: dict[str, str] | None = None, **fields: Any) -> Deployment:
    """A queued archive deployment whose source is unpacked in its build dir, as intake leaves it."""
    public_id = uuid.uuid4()
    src = Path(settings.BUILD_ROOT) / str(public_id) / "src"
    src.mkdir(parents=True)
    default = {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS, "app.py": "app = None\n"}
    for name, content in (default if files is None else files).items():
        (src / name).write_text(content)
    deployment = Deployment.objects.create(
        app=app, number=next_number(app), public_id=public_id, source_kind=Deployment.SourceKind.ARCHIVE, **fields
    )
    return reload(deployment)


def reload(deployment: Deployment) -> Deployment:
    fresh: Deployment = Deployment.objects.select_related("app", "app__tenant").get(pk=deployment.pk)
    return fresh


MakeApp = Callable[..., App]


# === Names ====================================================================================


def test_names_are_deterministic_and_built_from_uuids():
    deployment_id = uuid.UUID("0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a")
    tenant_id = uuid.UUID("4f2a9c1d-8e7b-4a6c-b5d4-e3f2a1b0c9d8")

    assert pipeline.replica_name(deployment_id, 0) == "tsl-0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a-0"
    assert pipeline.replica_name(deployment_id, 3) == "tsl-0b7c5b0e-5a43-4a8e-9d0c-3f1e2d4c5b6a-3"
    assert pipeline.replica_name(deployment_id, 1) == pipeline.replica_name(uuid.UUID(str(deployment_id)), 1)
    assert pipeline.tenant_network(tenant_id) == "cf-t-4f2a9c1d8e7b4a6cb5d4"
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
    assert spec.network == pipeline.tenant_network(tenant.public_id)
    assert spec.read_only
    assert spec.shell_path == "/bin/bash"
    assert spec.workdir == "/app/src"
    # The UID is in uid/gid only: nothing else the container (or `podman ps`) shows carries it.
    shown = [spec.name, spec.network, spec.image, *spec.labels.values(), *spec.env.values()]
    assert not any(str(tenant.linux_uid) in value for value in shown)


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
    assert "/deps" in [target for _, target, _ in install.mounts]
    assert all(read_only for _, _, read_only in install.mounts)
    assert fake_podman.containers == {}  # the install container was committed, then removed
    assert "Installing dependencies" in reload(deployment).log


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
