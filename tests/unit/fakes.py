"""In-memory stand-ins for the pipeline's two seams, shared by test_pipeline and test_tasks.

`drivers.podman` and `caddy.client.CaddyClient` are the seams. Each podman operation the
pipeline and the tasks use is patched with `autospec=True` and a side effect on `FakePodman`,
which keeps containers, images, secrets and networks in memory, so tests assert on the state
that results (which containers exist, which images were built) rather than on call lists. The
fixtures that install them live in tests/unit/conftest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from django.conf import settings
from django.db.models import Max

from caddy import routes as caddy_routes
from core import queue
from drivers import podman
from drivers import upstream_hosts
from drivers.upstream_hosts import UpstreamHosts
from platform_apps.apps.services import app_create
from platform_apps.models import App
from platform_apps.models import Deployment
from provisioning import pipeline
from provisioning import tasks
from tenants.models import Tenant
from tenants.services import tenant_create

BASE_IMAGE_ID = "sha256:" + "b" * 64
MIB = 1024 * 1024
BASE_SIZE = 100 * MIB
DEPS_LAYER = 50 * MIB  # what installing the dependencies adds to the base
APP_LAYER = 1 * MIB  # what copying the source adds to the dependency image
PULLED_SIZE = 80 * MIB
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
    exit_code: int = 0
    oom_killed: bool = False
    created_at: float = 0.0
    exited_at: float = 0.0

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
    """What podman holds, and the operations of `drivers.podman` over it (same signatures)."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.removed: list[FakeContainer] = []
        self.started: list[str] = []  # every container name ever started detached
        self.images: dict[str, str] = {str(settings.BASE_IMAGE): BASE_IMAGE_ID}
        # Per image id, what `podman images` reports: labels, size, creation time.
        self.image_labels: dict[str, dict[str, str]] = {BASE_IMAGE_ID: {}}
        self.image_sizes: dict[str, int] = {BASE_IMAGE_ID: BASE_SIZE}
        self.image_created: dict[str, float] = {BASE_IMAGE_ID: time.time()}
        self.parents: dict[str, str] = {}  # app image -> the image its Containerfile is FROM
        self.builds: list[str] = []  # tags made by `podman build`
        self.oneoffs: list[podman.ContainerSpec] = []
        self.oneoff_results: dict[str, tuple[int, str]] = {}  # by role label: (exit code, output)
        self.secrets: dict[str, str] = {}
        self.networks: dict[str, dict[str, str]] = {}
        self.network_created: dict[str, float] = {}
        self.broken_images: set[str] = set()  # their containers exit at once and never answer
        self.deaf_images: set[str] = set()  # their containers run but never answer HTTP
        self.output: dict[str, str] = {}  # image -> what its containers print
        self._failures: dict[tuple[str, str], list[podman.PodmanError]] = {}
        # Called after a container started: lets a test make the world change mid-pipeline.
        self.on_start: Callable[[podman.ContainerSpec], None] | None = None
        self._addresses = itertools.count(2)
        self.observations = 0  # calls of containers_observe (one per reconcile pass)
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

    def _add_image(self, ref: str, *, labels: dict[str, str], size: int) -> str:
        image_id = self._new_id()
        self.images[ref] = image_id
        self.image_labels[image_id] = labels
        self.image_sizes[image_id] = size
        self.image_created[image_id] = time.time()
        return image_id

    # -- drivers.podman operations ----------------------------------------------------

    def network_ensure(self, name: str, labels: Any = None) -> None:
        if name not in self.networks:
            self.networks[name] = dict(labels or {})
            self.network_created[name] = time.time()

    def network_remove(self, name: str) -> None:
        """`podman network rm --force`: the network and the containers on it."""
        self.networks.pop(name, None)
        self.network_created.pop(name, None)
        for container_name in [n for n, c in self.containers.items() if c.spec.network == name]:
            self.container_remove(container_name)

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
        layers: bool = True,
        timeout: float | None = None,
    ) -> str:
        self._maybe_fail("image_build", tag)
        lines = Path(containerfile).read_text().splitlines()
        parent = next(line.removeprefix("FROM ").strip() for line in lines if line.startswith("FROM "))
        assert parent in self.images, f"build FROM an image that does not exist: {parent}"
        assert Path(context_dir).is_dir()
        self.builds.append(tag)
        self.parents[tag] = parent
        # Like podman: the parent's labels, then the Containerfile's LABEL line over them.
        labels = dict(self.image_labels.get(self.images[parent], {}))
        for line in lines:
            if line.startswith("LABEL "):
                labels.update(dict(pair.split("=", 1) for pair in line.removeprefix("LABEL ").split()))
        self._add_image(tag, labels=labels, size=self.image_sizes[self.images[parent]] + APP_LAYER)
        return f"STEP 1/5: FROM {parent}\nCOMMIT {tag}\n"

    def image_commit(self, container: str, tag: str, *, changes: Any = (), timeout: float | None = None) -> str:
        assert container in self.containers, f"commit of a container that does not exist: {container}"
        spec = self.containers[container].spec
        # A committed container's labels become the image's.
        size = self.image_sizes.get(self.images.get(spec.image, ""), BASE_SIZE) + DEPS_LAYER
        return self._add_image(tag, labels=dict(spec.labels), size=size)

    def image_remove(self, ref: str) -> None:
        # Like `podman rmi` without --force: an image a container still uses cannot go.
        if any(container.spec.image == ref for container in self.containers.values()):
            raise podman.PodmanError(
                "image in use", argv=[], returncode=2, stderr="Error: image is in use by a container", transient=False
            )
        if any(parent == ref and child in self.images for child, parent in self.parents.items()):
            raise podman.PodmanError(
                "image has children",
                argv=[],
                returncode=2,
                stderr="Error: image has dependent child images",
                transient=False,
            )
        self.images.pop(ref, None)

    def image_pull(self, ref: str, tls_verify: bool = True, *, timeout: float | None = None) -> str:
        self._maybe_fail("image_pull", ref)
        if ref not in self.images:
            self._add_image(ref, labels={}, size=PULLED_SIZE)
        return self.images[ref]

    def image_tag(self, ref: str, new_ref: str) -> None:
        self.images[new_ref] = self.images[ref]

    def image_size(self, ref: str) -> int:
        return self.image_sizes.get(self.images.get(ref, ""), 0)

    def images_observe(self, key: str, value: str) -> list[podman.ObservedImage]:
        """`podman images --filter label=...`: one entry per image id, with all its names."""
        names: dict[str, list[str]] = {}
        for ref, image_id in self.images.items():
            names.setdefault(image_id, []).append(ref)
        return [
            podman.ObservedImage(
                id=image_id,
                names=tuple(refs),
                labels=dict(self.image_labels.get(image_id, {})),
                size=self.image_sizes.get(image_id, 0),
                created_at=self.image_created.get(image_id, 0.0),
                containers=sum(1 for c in self.containers.values() if self.images.get(c.spec.image) == image_id),
            )
            for image_id, refs in names.items()
            if self.image_labels.get(image_id, {}).get(key) == value
        ]

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
            created_at=time.time(),
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

    def kill(self, name: str, *, exit_code: int = 137, oom: bool = False) -> None:
        """The container dies as `podman kill` (or the OOM killer) would leave it: exited, still there."""
        container = self.containers[name]
        container.running = False
        container.exit_code = exit_code
        container.oom_killed = oom
        container.exited_at = time.time()

    def containers_observe(self, key: str, value: str) -> list[podman.ObservedContainer]:
        self.observations += 1
        return [
            podman.ObservedContainer(
                name=name,
                labels=container.labels,
                state="running" if container.running else "exited",
                exit_code=0 if container.running else container.exit_code,
                started_at=container.created_at,
                exited_at=container.exited_at,
                created_at=container.created_at,
            )
            for name, container in self.containers.items()
            if container.labels.get(key) == value
        ]

    def networks_with_label(self, key: str, value: str) -> set[str]:
        return set(self.networks_observe(key, value))

    def networks_observe(self, key: str, value: str) -> dict[str, float]:
        return {
            name: self.network_created.get(name, 0.0)
            for name, labels in self.networks.items()
            if labels.get(key) == value
        }

    def container_exit_state(self, name: str) -> podman.ExitState | None:
        container = self.containers.get(name)
        if container is None:
            return None
        return podman.ExitState(
            running=container.running,
            exit_code=None if container.running else container.exit_code,
            oom_killed=container.oom_killed,
        )

    def secret_set(self, name: str, value: str) -> None:
        self.secrets[name] = value

    def secret_remove(self, name: str) -> None:
        self.secrets.pop(name, None)

    def secret_list(self) -> list[str]:
        return list(self.secrets)


PODMAN_OPERATIONS = tuple(
    name for name in vars(FakePodman) if not name.startswith("_") and callable(getattr(podman, name, None))
)


# --- The Caddy route table ------------------------------------------------------------------


class FakeRoutes:
    """Caddy's edge routes, as the client's operations leave them: the raw route JSON by `@id`,
    and `table`, each app's upstreams ([] while it answers the 503 page): for a route that looks
    its replicas up by name, what the name resolves to in the real upstream hosts files (`hosts`),
    as the platform's DNS server would answer the edge."""

    def __init__(self, hosts: UpstreamHosts) -> None:
        self.hosts = hosts
        self.raw: dict[str, dict[str, Any]] = {}
        self.has_edge = True
        self.writes = 0
        self.reads = 0
        self.gets = 0
        self.loads = 0
        self.deletes: list[uuid.UUID] = []
        # Called after each upsert: lets a test make another deployment win the race.
        self.on_upsert: Callable[[uuid.UUID], None] | None = None

    @property
    def table(self) -> dict[uuid.UUID, list[str]]:
        return {uuid.UUID(rid.removeprefix("app-")): self._dials(route) for rid, route in self.raw.items()}

    def _dials(self, route: dict[str, Any]) -> list[str]:
        name = caddy_routes.route_upstream_name(route)
        if name is None:
            return []
        handler = next(h for h in route["handle"] if h.get("handler") == "reverse_proxy")
        app_id = uuid.UUID(name.split(".", 1)[0])
        assert name == upstream_hosts.upstream_name(app_id)
        port = handler["dynamic_upstreams"]["port"]
        return [f"{address}:{port}" for address in self.hosts.read(app_id) or []]

    def route_get(self, app_id: uuid.UUID) -> dict[str, Any] | None:
        self.gets += 1
        return self.raw.get(caddy_routes.route_id(app_id))

    def route_set(self, route: dict[str, Any]) -> None:
        self.writes += 1
        rid = str(route["@id"])
        self.raw[rid] = route
        if self.on_upsert is not None:
            hook, self.on_upsert = self.on_upsert, None
            hook(uuid.UUID(rid.removeprefix("app-")))

    def route_delete(self, app_id: uuid.UUID) -> None:
        self.deletes.append(app_id)
        self.raw.pop(caddy_routes.route_id(app_id), None)

    def route_delete_id(self, rid: str) -> None:
        self.deletes.append(uuid.UUID(rid.removeprefix("app-")))
        self.raw.pop(rid, None)

    def edge_routes(self) -> list[dict[str, Any]] | None:
        self.reads += 1
        if not self.has_edge:
            return None
        return [*self.raw.values(), caddy_routes.catchall_route()]

    def edge_load(self, app_routes: list[dict[str, Any]]) -> None:
        self.loads += 1
        self.has_edge = True
        self.raw = {str(route["@id"]): route for route in app_routes}

    def restart_empty(self) -> None:
        """Caddy restarted without its config."""
        self.has_edge = False
        self.raw = {}


# --- The health check -------------------------------------------------------------------------


# --- Rows -------------------------------------------------------------------------------------


def make_app(slug: str = "acme", name: str = "shop", **sizing: Any) -> App:
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(slug=slug)
    options = {"replicas": 2, "memory_mb": 256, "cpus": 1.0, **sizing}
    return app_create(tenant=tenant, name=name, deploy_branch="main", **options)


def next_number(app: App) -> int:
    return int(Deployment.objects.filter(app=app).aggregate(top=Max("number"))["top"] or 0) + 1


def archive_deployment(app: App, files: dict[str, str] | None = None, **fields: Any) -> Deployment:
    """A queued archive deployment whose source is unpacked in its build dir, as intake leaves it.
    The default source differs from every other upload's (by one comment), so each one is built;
    pass the same `files` twice for a source that did not change (its image is reused)."""
    public_id = uuid.uuid4()
    src = Path(settings.BUILD_ROOT) / str(public_id) / "src"
    src.mkdir(parents=True)
    app_py = f"app = None  # upload {public_id}\n"
    default = {"Procfile": f"web: {WEB}\n", "requirements.txt": REQUIREMENTS, "app.py": app_py}
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


def make_live(app: App) -> Deployment:
    """Give `app` a live deployment of an image (as if a deploy had finished), for release tests."""
    live = Deployment.objects.create(
        app=app,
        number=1,
        state=Deployment.State.LIVE,
        source_kind=Deployment.SourceKind.IMAGE,
        source_url="docker.io/library/python:3.13",
        image_ref="localhost/coltsfoot/app-1:latest",
        image_id="sha256:" + "ab" * 32,
        web_command="gunicorn app:app",
        release_command="python manage.py migrate",
    )
    app.live_deployment = live
    app.save(update_fields=["live_deployment"])
    return live


# --- The broker -------------------------------------------------------------------------------


@contextlib.contextmanager
def task_queued(task: str) -> Iterator[mock.MagicMock]:
    """Stand in for the broker for one task (`tasks.<task>`): whatever queues it, the domain by name
    through `core.queue.send` or the workflow through `.delay`, lands in the mock this yields,
    called with the task's arguments. Other tasks go on to whatever was there before."""
    task_object = getattr(tasks, task)
    with mock.patch.object(task_object, "delay", autospec=True) as delay:
        previous = queue.send

        def send(task_name: str, args: tuple[str, ...]) -> None:
            if task_name == task_object.name:
                delay(*args)
            else:
                previous(task_name, args)

        # Not autospec'd: `previous` may be another task's stand-in; `send` has the real signature.
        with mock.patch.object(queue, "send", side_effect=send):
            yield delay
