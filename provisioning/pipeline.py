"""The deploy pipeline's steps: build, release, start, route, retire.

Each step is idempotent and keyed by deterministic names (image `localhost/coltsfoot-app:<uuid>`,
containers `tsl-<deployment uuid>-<n>`, Caddy `@id` `app-<app uuid>`), so a task that dies
anywhere and runs again converges on one set of replicas. No DB transaction is open while
podman or Caddy is called: every state change is a single conditional UPDATE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from celery import current_app
from django.conf import settings
from django.db.models import F
from django.db.models import Q
from django.db.models import Value
from django.db.models.functions import Concat
from django.db.models.functions import Right
from django.utils import timezone

from caddy import routes as caddy_routes
from caddy.client import CaddyClient
from core.faults import DeployError
from core.faults import PlatformError
from core.faults import UserError
from drivers import buildpack
from drivers import cgroups
from drivers import logstore
from drivers import podman
from drivers.upstream_hosts import UpstreamHosts
from drivers.upstream_hosts import upstream_name
from platform_apps.deployments.services import git_validate
from platform_apps.domains.selectors import route_hostnames
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica
from provisioning import hosts
from provisioning.firewall import firewall_ensure_for_network
from provisioning.runtime import resolve_for_runtime
from provisioning.runtime import tenant_network
from tenants.models import Tenant

logger = logging.getLogger(__name__)

APP_PORT = 8000
APP_IMAGE_REPO = "localhost/coltsfoot-app"
DEPS_IMAGE_REPO = "localhost/coltsfoot-deps"
# On a built app image: the dependency image it was built FROM.
DEPS_LABEL = "coltsfoot.deps"
LOG_MAX_CHARS = 512 * 1024
# Processes and threads inside one sandbox (RLIMIT_NPROC, which gVisor enforces on the guest: a fork bomb gets
# EAGAIN there and the sandbox lives on). 256 leaves room for a gunicorn with 40 workers and their threads.
NPROC_LIMIT = 256
# Host pids (threads) of one sandbox, the backstop behind NPROC_LIMIT: reaching it kills the whole sandbox
# (runsc exits 2), so it must stay above what NPROC_LIMIT guest tasks cost. Measured here (runsc 2022-12,
# ptrace platform, `pids.current` of the container's cgroup): an idle sandbox 46; each guest process about
# 5 more while it sleeps (10 → 100, 50 → 299) and 8 while it burns CPU (10 → 127, 64 → 524); a sleeping
# thread almost nothing (127 threads → 49). 46 + 256 x 8 = 2094, plus a tenth for the Go runtime's spare
# threads. (The old 256 let a sandbox die at about 28 guest processes.)
PIDS_LIMIT = 2304
HEALTH_POLL_SECONDS = 0.1
CA_BUNDLE_IN_CONTAINER = "/etc/ssl/certs/ca-certificates.crt"


# --- Names (deterministic) ------------------------------------------------------------------


def replica_name(deployment_id: uuid.UUID, index: int) -> str:
    return f"tsl-{deployment_id}-{index}"


def release_container_name(deployment_id: uuid.UUID) -> str:
    return f"tsl-{deployment_id}-release"


def deps_container_name(deployment_id: uuid.UUID) -> str:
    return f"tsl-{deployment_id}-deps"


def app_image_ref(deployment_id: uuid.UUID) -> str:
    return f"{APP_IMAGE_REPO}:{deployment_id}"


# Names the host whose worker manages a container (README "Several hosts").
HOST_LABEL = "coltsfoot.host"


def labels_for(deployment: Deployment, role: str) -> dict[str, str]:
    app = deployment.app
    return {
        "coltsfoot.instance": str(settings.INSTANCE_ID),
        "coltsfoot.tenant": str(app.tenant.public_id),
        "coltsfoot.app": str(app.public_id),
        "coltsfoot.deployment": str(deployment.public_id),
        "coltsfoot.role": role,
        # The host whose worker runs it: each host manages only the containers that carry its name.
        HOST_LABEL: deployment.host.name if deployment.host_id is not None else hosts.this_host_name(),
    }


def log_context(deployment: Deployment) -> dict[str, str]:
    return {
        "tenant_id": str(deployment.app.tenant.public_id),
        "app_id": str(deployment.app.public_id),
        "deployment_id": str(deployment.public_id),
    }


# --- The deployment's log -------------------------------------------------------------------


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


def log_append(deployment: Deployment, text: str, *, secrets: Iterable[str] = (), source: str | None = "build") -> None:
    """Append to the deployment's log in one UPDATE (no read-modify-write), keeping the tail; and, unless
    `source` is None, the same lines to the app's log stream under that source (`build`, `release`)."""
    if not text:
        return
    if not text.endswith("\n"):
        text += "\n"
    # A NUL would cut the text column short (and some databases refuse it): keep it visible instead.
    chunk = redact(text, secrets).replace("\x00", "\\x00")[-LOG_MAX_CHARS:]
    Deployment.objects.filter(pk=deployment.pk).update(log=Right(Concat(F("log"), Value(chunk)), LOG_MAX_CHARS))
    if source is not None:
        stream_append(deployment, text, source=source, secrets=secrets)


def stream_append(
    deployment: Deployment, text: str, *, source: str, secrets: Iterable[str] = (), end_state: str = ""
) -> None:
    """Lines of output to the app's log stream (`GET /apps/{id}/logs`), tagged with the deployment so its
    build can be followed. Redis being down costs these lines there, never the deployment: the deployment's
    own log above still has them."""
    secrets = tuple(secrets)
    ts = logstore.timestamp()
    max_bytes = int(settings.LOG_MAX_LINE_BYTES)
    lines = [
        logstore.Line(
            ts, source, logstore.normalise(raw, secrets=secrets, max_bytes=max_bytes), str(deployment.public_id)
        )
        for raw in logstore.split_lines(text)
    ]
    if end_state and lines:
        lines[-1] = dataclasses.replace(lines[-1], end_state=end_state)
    try:
        logstore.store().append(str(deployment.app.public_id), lines)
    except logstore.LogStoreError:
        logger.warning("app log stream unavailable; lines kept in the deployment log only", exc_info=True)


def app_event(deployment: Deployment, message: str, *, end_state: str = "") -> None:
    """A platform event about the app (crash, restart, deploy state), source `platform` in its log stream.
    `end_state` marks the event that ends a deployment (live, failed, superseded) for its followers."""
    stream_append(deployment, message, source="platform", end_state=end_state)


def deploy_event(deployment: Deployment, state: str, detail: str = "") -> None:
    """The app-log event of a deployment reaching `state`."""
    number = f"Deploy #{deployment.number}"
    if state == Deployment.State.BUILDING:
        app_event(deployment, f"{number} started ({deployment.source_kind})")
    elif state == Deployment.State.LIVE:
        replicas = deployment.app.replicas
        message = f"{number} is live with {replicas} replica(s)"
        previous = deployment.source_deployment
        if deployment.source_kind == Deployment.SourceKind.RELEASE and previous is not None:
            before = Replica.objects.filter(deployment=previous).count()
            if before and before != replicas:
                message += f"; scaled from {before} to {replicas}"
        app_event(deployment, message, end_state=state)
    elif state in (Deployment.State.FAILED, Deployment.State.SUPERSEDED):
        app_event(deployment, f"{number} {state}{': ' + detail if detail else ''}", end_state=state)


def step(deployment: Deployment, message: str) -> None:
    log_append(deployment, f"-----> {message}")
    logger.info(message, extra=log_context(deployment))


# --- Build ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    image_ref: str
    image_id: str
    web_command: str
    release_command: str


def _sandbox_spec(
    deployment: Deployment,
    *,
    name: str,
    image: str,
    command: str,
    role: str,
    env: dict[str, str] | None = None,
    secret_env: dict[str, str] | None = None,
    mounts: tuple[tuple[str, str, bool], ...] = (),
    read_only: bool = True,
    workdir: str | None = None,
) -> podman.ContainerSpec:
    app = deployment.app
    uid = app.tenant.linux_uid
    # Built images have bash and the app in /app/src; a tenant's own image only promises /bin/sh.
    own_image = deployment.own_image
    return podman.ContainerSpec(
        name=name,
        image=image,
        network=tenant_network(app.tenant.public_id),
        uid=uid,
        gid=uid,
        memory_mb=int(app.memory_mb),
        cpus=float(app.cpus),
        pids_limit=PIDS_LIMIT,
        nproc_limit=NPROC_LIMIT,
        cgroup_parent=cgroups.tenant_cgroup(settings.TENANT_CGROUP_PARENT, app.tenant.public_id.hex),
        env=env or {},
        secret_env=secret_env or {},
        command=command,
        labels=labels_for(deployment, role),
        mounts=mounts,
        read_only=read_only,
        workdir=workdir or ("/" if own_image else "/app/src"),
        shell_path="/bin/sh" if own_image else "/bin/bash",
    )


def network_ensure(deployment: Deployment) -> None:
    tenant = deployment.app.tenant
    podman.network_ensure(
        tenant_network(tenant.public_id),
        {"coltsfoot.instance": str(settings.INSTANCE_ID), "coltsfoot.tenant": str(tenant.public_id)},
    )
    # Before any container runs on it: a new network's bridge is unfiltered until the table lists it.
    firewall_ensure_for_network()


def deps_image_ref(tenant_id: uuid.UUID, base_image_id: str, files: dict[str, bytes]) -> str:
    """The cached dependency layer for these dependency files. Per tenant: installing packages
    runs their code, so one tenant's layer is never handed to another, even for identical files."""
    return buildpack.dependency_image(buildpack.dependency_key(files, f"{base_image_id}:tenant={tenant_id}"))


# Appended to the install script. Whatever the packages' install steps left running is killed
# first (`kill -1` spares only the shell itself, PID 1 of the sandbox), so nothing can change /app
# after the check; then /app/src must not exist yet: the app image copies the source there, and
# a symlink or file in its place would put the source somewhere else, or nowhere.
DEPS_DEFECT_EXIT = 86
_DEPS_GUARD = f"""
kill -9 -1 2>/dev/null || true
if [ -L /app ] || [ ! -d /app ] || [ -e {buildpack.APP_DIR} ] || [ -L {buildpack.APP_DIR} ]; then
  echo "-----> The dependency install created {buildpack.APP_DIR}, where the app's source goes"
  exit {DEPS_DEFECT_EXIT}
fi
"""


def _image_defect() -> UserError:
    return UserError(
        "build.image_defect",
        f"Installing the dependencies left something at {buildpack.APP_DIR} (a symlink or a file where the "
        "app's source goes); check what your packages' install steps write. The deployment log has the output.",
    )


def _install_dependencies(
    deployment: Deployment, spec: buildpack.AppSpec, files: dict[str, bytes], deps_ref: str
) -> None:
    deps_dir = deployment.build_dir / "deps"
    shutil.rmtree(deps_dir, ignore_errors=True)
    deps_dir.mkdir(parents=True)
    for name, content in files.items():
        (deps_dir / name).write_bytes(content)
    deps_dir.chmod(0o755)
    for child in deps_dir.iterdir():
        child.chmod(0o644)
    uv = Path(settings.BUILD_UV)
    if not uv.is_file():
        raise PlatformError(
            "build.uv_missing", "The platform's build tools are not installed; an operator must fix it."
        )
    mounts: tuple[tuple[str, str, bool], ...] = ((str(deps_dir), "/deps", True), (str(uv), buildpack.UV_BINARY, True))
    if settings.BUILD_CA_BUNDLE and Path(settings.BUILD_CA_BUNDLE).is_file():
        mounts += ((str(settings.BUILD_CA_BUNDLE), CA_BUNDLE_IN_CONTAINER, True),)
    cache = uv_cache_dir(deployment.app.tenant)
    if cache is not None:
        mounts += ((str(cache), buildpack.UV_CACHE_MOUNT, False),)
    env = {"HOME": "/tmp"}  # noqa: S108 - the sandbox's own tmpfs
    # The index URL may carry credentials: a secret, since `podman commit` keeps the plain env.
    secret_env: dict[str, str] = {}
    if settings.BUILD_PIP_INDEX_URL:
        secret_env["PIP_INDEX_URL"] = secret_name(deployment.public_id, "PIP_INDEX_URL")
        podman.secret_set(secret_env["PIP_INDEX_URL"], str(settings.BUILD_PIP_INDEX_URL))
    name = deps_container_name(deployment.public_id)
    sandbox = _sandbox_spec(
        deployment,
        name=name,
        image=str(settings.BASE_IMAGE),
        command=buildpack.dependency_install_script(spec, uv_cache=cache is not None) + _DEPS_GUARD,
        role="deps",
        env=env,
        secret_env=secret_env,
        mounts=mounts,
        read_only=False,
        workdir="/app",
    )
    step(deployment, "Installing dependencies in a gVisor sandbox")
    try:
        code, output = podman.oneoff_run(sandbox, timeout=float(settings.BUILD_TIMEOUT_SECONDS), remove=False)
        log_append(deployment, output)
        if code == DEPS_DEFECT_EXIT:
            raise _image_defect()
        if code != 0:
            raise UserError(
                "build.dependencies_failed",
                f"Installing the dependencies failed (exit code {code}); the deployment log has the output.",
            )
        podman.image_commit(name, deps_ref)
    finally:
        podman.container_remove(name)
        for secret in secret_env.values():
            podman.secret_remove(secret)
        shutil.rmtree(deps_dir, ignore_errors=True)
        if cache is not None:
            uv_cache_bound(deployment, cache)


def uv_cache_dir(tenant: Tenant) -> Path | None:
    """The tenant's own uv cache directory (created, owned by the tenant's uid, 0700), or None when the cache
    is off. Never shared: a build runs package code, which can write anything into the cache it is given."""
    if int(settings.BUILD_UV_CACHE_MAX_MB) <= 0:
        return None
    root = Path(settings.BUILD_UV_CACHE_ROOT)
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    path = root / tenant.public_id.hex
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise PlatformError("build.uv_cache_unusable", "The build cache directory is not usable.")
    if os.geteuid() == 0:
        os.chown(path, tenant.linux_uid, tenant.linux_uid, follow_symlinks=False)
    return path


def uv_cache_bound(deployment: Deployment, cache: Path) -> None:
    """Empty the tenant's uv cache when the build left it over its bound (the next build fills it again)."""
    limit = int(settings.BUILD_UV_CACHE_MAX_MB) * 1024 * 1024
    used = tree_size(cache)
    if used <= limit:
        return
    logger.info(
        "uv cache over its bound, emptied",
        extra={**log_context(deployment), "cache_bytes": used, "limit_bytes": limit},
    )
    for child in cache.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path`, not following links."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(root, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


# --- Reusing the image of an unchanged source -----------------------------------------------

# Built deployments only: an image deploy runs the tenant's own image (and rollbacks and releases
# have no digest of their own, their images being some build's).
_REUSABLE_KINDS = (Deployment.SourceKind.ARCHIVE, Deployment.SourceKind.GIT)
# How many earlier deployments with the same digest to try, newest first (distinct images).
_REUSE_CANDIDATES = 5


@dataclass(frozen=True)
class Reuse:
    """An earlier deployment of the same app whose image this one can run as it is."""

    previous: Deployment
    image_ref: str
    image_id: str


def source_digest(src: Path, base_id: str, deps_ref: str) -> str:
    """The digest of the tree and everything else the app image is made of: the base image id and
    the Containerfile, which names the dependency image (itself keyed by the base image, the tenant
    and the dependency recipe). Equal digests, equal images."""
    return buildpack.source_digest(src, f"base={base_id}\n{buildpack.containerfile(deps_ref)}")


def reusable_image(deployment: Deployment, digest: str, *, claim: bool = True) -> Reuse | None:
    """The newest earlier deployment of the same app with the same source digest that went live and
    whose image is still the one it built. Never another app's, so never another tenant's: only this
    app's rows are looked at (and the digest also names the tenant's own dependency image).

    Went live, not merely built: as for rollbacks, only an image that served is proven, and image
    retention keeps the last few of those (a failed deployment's image goes at the next collection).

    With `claim`, the image is written on this deployment's row *before* podman is asked whether it
    still exists: the collector checks the rows again right before it removes an image, so once
    the row names the ref it stays, and an image found here is not removed before the deployment
    records it."""
    candidates = (
        Deployment.objects.filter(
            app_id=deployment.app_id,
            source_digest=digest,
            source_kind__in=_REUSABLE_KINDS,
            own_image=False,
            went_live_at__isnull=False,
        )
        .exclude(pk=deployment.pk)
        .exclude(image_ref="")
        .order_by("-number")
    )
    tried: set[str] = set()
    for previous in candidates[: _REUSE_CANDIDATES * 4]:
        if previous.image_ref in tried:
            continue
        if len(tried) >= _REUSE_CANDIDATES:
            break
        tried.add(previous.image_ref)
        if claim:
            Deployment.objects.filter(pk=deployment.pk).update(image_ref=previous.image_ref)
        try:
            image_id = podman.image_id(previous.image_ref)
        except podman.PodmanNotFound:
            continue
        # The ref still names the image that deployment built (and served), not some later image.
        if image_id == previous.image_id:
            return Reuse(previous=previous, image_ref=previous.image_ref, image_id=image_id)
    if claim and tried:
        Deployment.objects.filter(pk=deployment.pk, image_ref__in=tried).update(image_ref="")
    return None


def reuse_possible(deployment: Deployment) -> bool:
    """Whether building this upload would reuse an earlier image (no install, no `podman build`):
    such a deployment need not wait for a build slot. Uploads only, since a git source is fetched
    while building; claims nothing, and any error means no (the build itself reports it)."""
    src = deployment.build_dir / "src"
    if deployment.source_kind != Deployment.SourceKind.ARCHIVE or not src.is_dir():
        return False
    try:
        spec = buildpack.detect(src)
        base_id = podman.image_id(str(settings.BASE_IMAGE))
        files = buildpack.dependency_files(src, spec)
        digest = source_digest(src, base_id, deps_image_ref(deployment.app.tenant.public_id, base_id, files))
        return reusable_image(deployment, digest, claim=False) is not None
    except (DeployError, podman.PodmanError):
        return False


def _reuse_log(deployment: Deployment, reuse: Reuse) -> None:
    log_append(deployment, f"-----> Source unchanged since deployment {reuse.previous.public_id}: reusing its image")
    logger.info(
        "source unchanged: reusing the image of an earlier deployment",
        extra={
            **log_context(deployment),
            "reused_deployment_id": str(reuse.previous.public_id),
            "image": reuse.image_ref,
        },
    )


def build(deployment: Deployment) -> Built:
    """Build the app image. The tenant's code never runs on the host: dependencies are installed
    inside a runsc sandbox and committed; `podman build` then only copies files. A source whose digest
    matches an earlier deployment of the app that went live reuses that image instead: no install,
    no `podman build`."""
    src = deployment.build_dir / "src"
    if not src.is_dir():
        raise PlatformError("build.source_missing", "The uploaded source is no longer available; deploy again.")
    spec = buildpack.detect(src)
    step(deployment, f"Detected a Python app ({spec.deps_kind}); web: {spec.web_command}")
    image_ref = app_image_ref(deployment.public_id)
    if not podman.image_exists(image_ref):
        if not podman.image_exists(str(settings.BASE_IMAGE)):
            raise PlatformError(
                "build.base_image_missing", "The platform's base image is missing; the operators have been told."
            )
        base_id = podman.image_id(str(settings.BASE_IMAGE))
        files = buildpack.dependency_files(src, spec)
        deps_ref = deps_image_ref(deployment.app.tenant.public_id, base_id, files)
        digest = source_digest(src, base_id, deps_ref)
        Deployment.objects.filter(pk=deployment.pk).update(source_digest=digest)
        reuse = reusable_image(deployment, digest)
        if reuse is not None:
            _reuse_log(deployment, reuse)
            return Built(
                image_ref=reuse.image_ref,
                image_id=reuse.image_id,
                web_command=spec.web_command,
                release_command=spec.release_command or "",
            )
        network_ensure(deployment)
        if podman.image_exists(deps_ref):
            step(deployment, "Dependencies unchanged: reusing the cached dependency layer")
        else:
            _install_dependencies(deployment, spec, files, deps_ref)
        containerfile = deployment.build_dir / "Containerfile"
        # The dependency image it is built FROM, so the collector knows which ones are in use.
        labels = {**labels_for(deployment, "image"), DEPS_LABEL: deps_ref}
        # One LABEL instruction: podman turns each --label flag into a layer of its own.
        label_line = "LABEL " + " ".join(f"{key}={value}" for key, value in sorted(labels.items()))
        containerfile.write_text(buildpack.containerfile(deps_ref) + label_line + "\n")
        step(deployment, "Building the app image")
        output = _image_build(deployment, src, containerfile, image_ref, deps_ref)
        log_append(deployment, output)
    return Built(
        image_ref=image_ref,
        image_id=podman.image_id(image_ref),
        web_command=spec.web_command,
        release_command=spec.release_command or "",
    )


# podman's words for the filesystem it could not copy the source onto (ENOTDIR, EEXIST, ELOOP).
_DEFECT_PATTERNS = ("not a directory", "file exists", "too many levels of symbolic links", "symlink")
_DISK_FULL_PATTERNS = ("no space left on device", "disk quota exceeded")


def _image_build(deployment: Deployment, src: Path, containerfile: Path, image_ref: str, deps_ref: str) -> str:
    """`podman build` of the app image. Our Containerfile only copies the tenant's tree onto the
    tenant's dependency image, so a build that fails for good was made to fail by one of the two:
    e.g. a package whose install planted a symlink (or a file) at /app/src in the dependency image.
    That is the tenant's error, with a code of its own, and the defective dependency image goes so
    the next deploy installs afresh. A full disk is ours (and may clear up): a transient platform error."""
    try:
        return podman.image_build(str(src), str(containerfile), image_ref, layers=False)
    except podman.PodmanError as exc:
        detail = exc.stderr.lower()
        if exc.transient or any(pattern in detail for pattern in _DISK_FULL_PATTERNS):
            raise PlatformError(
                "build.image_failed", "Building the app image failed; retrying.", transient=True
            ) from exc
        if exc.returncode is None:
            raise
        log_append(deployment, exc.stdout + exc.stderr)
        logger.warning("app image build failed", extra={**log_context(deployment), "deps_image": deps_ref})
        try:
            podman.image_remove(deps_ref)
        except podman.PodmanError:  # still the parent of an older app image: it goes with that one
            logger.info("dependency image kept: in use", extra={**log_context(deployment), "deps_image": deps_ref})
        if any(pattern in detail for pattern in _DEFECT_PATTERNS):
            raise _image_defect() from exc
        raise UserError(
            "build.image_failed",
            "Building the app image from your source failed; the deployment log has podman's output.",
        ) from exc


def pull(deployment: Deployment) -> Built:
    """An image deploy: pull (or find) the image and run it with its own command."""
    ref = deployment.source_url
    step(deployment, f"Pulling {ref}")
    try:
        output = podman.image_pull(ref, tls_verify=bool(settings.IMAGE_PULL_TLS_VERIFY))
    except podman.PodmanError as exc:
        if exc.transient:
            raise PlatformError("image.pull_failed", f"The image {ref} could not be pulled.", transient=True) from exc
        raise UserError("image.pull_failed", f"The image {ref} could not be pulled.") from exc
    log_append(deployment, output)
    image_ref = app_image_ref(deployment.public_id)
    podman.image_tag(ref, image_ref)
    command = podman.image_command(image_ref)
    if not command:
        raise UserError("image.no_command", "The image has neither ENTRYPOINT nor CMD; there is nothing to run.")
    # The image's own command, exec'd by /bin/sh (which the image must have) so it gets signals.
    return Built(
        image_ref=image_ref,
        image_id=podman.image_id(image_ref),
        web_command="exec " + shlex.join(command),
        release_command="",
    )


# --- Runtime environment --------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    env: dict[str, str]
    secret_env: dict[str, str]
    secret_values: tuple[str, ...]


def secret_name(deployment_id: uuid.UUID, key: str) -> str:
    return f"cf-{deployment_id.hex}-{key.lower()}"


def runtime_env(deployment: Deployment) -> Runtime:
    """The app's environment: PORT, platform facts, config vars, and secrets as podman secrets
    named per deployment (so they disappear with the deployment that used them)."""
    app = deployment.app
    resolved = resolve_for_runtime(app)
    env = {
        **resolved.plain,
        "PORT": str(APP_PORT),
        "HOME": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "COLTSFOOT_APP_NAME": app.name,
        "COLTSFOOT_DEPLOYMENT_ID": str(deployment.public_id),
    }
    secret_env: dict[str, str] = {}
    for key, value in sorted(resolved.secrets.items()):
        name = secret_name(deployment.public_id, key)
        podman.secret_set(name, value)
        secret_env[key] = name
    return Runtime(env=env, secret_env=secret_env, secret_values=tuple(resolved.secrets.values()))


def resolve_secrets(deployment: Deployment) -> tuple[str, ...]:
    """The secret values the deployment's output must be redacted of (creates nothing)."""
    return tuple(resolve_for_runtime(deployment.app).secrets.values())


def remove_secrets(deployment: Deployment) -> None:
    prefix = f"cf-{deployment.public_id.hex}-"
    for name in podman.secret_list():
        if name.startswith(prefix):
            podman.secret_remove(name)


# --- Release and start ----------------------------------------------------------------------


def release(deployment: Deployment, runtime: Runtime) -> None:
    if not deployment.release_command or deployment.released:
        return
    step(deployment, f"Running release: {deployment.release_command}")
    spec = _sandbox_spec(
        deployment,
        name=release_container_name(deployment.public_id),
        image=deployment.image_ref,
        command=deployment.release_command,
        role="release",
        env=runtime.env,
        secret_env=runtime.secret_env,
    )
    code, output = podman.oneoff_run(spec, timeout=float(settings.RELEASE_TIMEOUT_SECONDS))
    log_append(deployment, output, secrets=runtime.secret_values, source="release")
    if code != 0:
        raise UserError("release.failed", f"The release command exited with code {code}; nothing was switched.")
    Deployment.objects.filter(pk=deployment.pk).update(released=True)


def answers_http(client: httpx.Client, address: str) -> bool:
    """Any HTTP answer counts (even a 404 or 500): the web process is up and serving."""
    try:
        client.get(f"http://{address}:{APP_PORT}/")
    except httpx.HTTPError:
        return False
    return True


def health_client() -> httpx.Client:
    """The client of the health gate: a short connect timeout, since a replica that is not
    listening yet refuses at once and one whose sandbox died never answers."""
    return httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5), trust_env=False)


def wait_until_serving(client: httpx.Client, name: str, address: str, deadline: float) -> bool:
    """Poll until the replica answers HTTP (True), or exits or passes the deadline (False)."""
    while not answers_http(client, address):
        if time.monotonic() > deadline or not podman.container_is_running(name):
            return False
        time.sleep(HEALTH_POLL_SECONDS)
    return True


def replica_spec(deployment: Deployment, index: int, runtime: Runtime) -> podman.ContainerSpec:
    """The container of one web replica; the reconciler starts replacements from the same spec."""
    return _sandbox_spec(
        deployment,
        name=replica_name(deployment.public_id, index),
        image=deployment.image_ref,
        command=deployment.web_command,
        role="web",
        env=runtime.env,
        secret_env=runtime.secret_env,
    )


def launch_replicas(deployment: Deployment, runtime: Runtime) -> list[str]:
    """Start whichever of the deployment's replicas is not running (none receives traffic before the route
    switch); returns their names. Called before `release` so the sandboxes boot while it runs, and again
    after it, which starts again one that exited meanwhile (say, a web process that needs the migration)."""
    names = [replica_name(deployment.public_id, i) for i in range(deployment.app.replicas)]
    missing = [(index, name) for index, name in enumerate(names) if not podman.container_is_running(name)]
    if missing:
        step(deployment, f"Starting {len(missing)} replica(s) under gVisor")
    for index, name in missing:
        podman.container_remove(name)  # a stopped leftover (a dead attempt, an exit during release) holds the name
        podman.container_run_detached(replica_spec(deployment, index, runtime))
        Replica.objects.update_or_create(
            deployment=deployment,
            index=index,
            defaults={
                "name": name,
                "state": Replica.State.STARTING,
                "started_at": timezone.now(),
                "host_id": deployment.host_id,
            },
        )
    return names


def start_replicas(deployment: Deployment, runtime: Runtime) -> list[str]:
    """Start (or find) the deployment's replicas and wait until each answers HTTP; returns their addresses
    (each serves on APP_PORT)."""
    network = tenant_network(deployment.app.tenant.public_id)
    names = launch_replicas(deployment, runtime)
    deadline = time.monotonic() + float(settings.START_DEADLINE_SECONDS)
    upstreams = []
    with health_client() as client:
        for index, name in enumerate(names):
            address = podman.container_address(name, network)
            Replica.objects.filter(deployment=deployment, index=index).update(address=address)
            if not wait_until_serving(client, name, address, deadline):
                output = podman.container_logs(name, tail=200)
                log_append(
                    deployment,
                    f"-----> Replica {index} did not answer HTTP on $PORT:\n{output}",
                    secrets=runtime.secret_values,
                    source=None,  # its output is in the app's log already, as web.N
                )
                app_event(deployment, f"web.{index + 1} did not answer HTTP on $PORT in time")
                raise UserError(
                    "start.unhealthy",
                    f"The web process did not answer HTTP on $PORT within {settings.START_DEADLINE_SECONDS} s; "
                    "its last output is in the deployment log. The previous deployment keeps serving.",
                )
            Replica.objects.filter(deployment=deployment, index=index).exclude(state=Replica.State.RUNNING).update(
                state=Replica.State.RUNNING
            )
            upstreams.append(address)
    step(deployment, "All replicas answer HTTP")
    return upstreams


RETIRE_TASK = "coltsfoot.deployment_retire"


def remove_containers(deployment: Deployment, *, graceful: bool = False) -> None:
    """Remove the deployment's containers (after a graceful stop when it was serving) and secrets, on the host
    they run on: here, or by a task on that host's queue (each host touches only its own containers). A down
    host's containers are gone with it (a host that comes back removes them as orphans): only the rows go."""
    host = deployment.host if deployment.host_id is not None else None
    if host is not None and host.name != hosts.this_host_name():
        if host.state != Host.State.DOWN:
            current_app.send_task(RETIRE_TASK, args=[str(deployment.public_id), graceful], queue=host.queue)
            logger.info("replica removal sent to their host", extra={**log_context(deployment), "host": host.name})
            return
        Replica.objects.filter(deployment=deployment).delete()
        return
    for name in podman.containers_with_label("coltsfoot.deployment", str(deployment.public_id)):
        if graceful:
            podman.container_stop(name)
        podman.container_remove(name)
    remove_secrets(deployment)
    Replica.objects.filter(deployment=deployment).delete()


# --- Route and retire -----------------------------------------------------------------------


def newer_deployment_exists(deployment: Deployment) -> bool:
    """Newest intent wins: a later deployment of the app that has not failed."""
    return (
        Deployment.objects.filter(app_id=deployment.app_id, number__gt=deployment.number)
        .exclude(state=Deployment.State.FAILED)
        .exists()
    )


def addresses_of(deployment: Deployment) -> list[str]:
    """The addresses of the deployment's replicas, but those known to have crashed."""
    replicas = Replica.objects.filter(deployment=deployment).exclude(state=Replica.State.CRASHED).order_by("index")
    return [r.address for r in replicas if r.address]


def edge_https_port() -> int:
    """The port the edge serves HTTPS on (where force_https redirects to)."""
    listen = str(settings.EDGE_TLS_LISTEN)
    return caddy_routes.listen_port(listen) if listen else 443


def upstream_refresh() -> str:
    """How long the edge keeps a lookup of an app's upstream name (a Caddy duration)."""
    return f"{int(settings.UPSTREAM_REFRESH_MS)}ms"


def upstream_lookup(app: App) -> caddy_routes.UpstreamLookup:
    """How the edge finds the app's replicas: its name at the platform's DNS server, each on APP_PORT."""
    return caddy_routes.UpstreamLookup(
        name=upstream_name(app.public_id),
        port=APP_PORT,
        resolver=str(settings.UPSTREAM_DNS),
        refresh=upstream_refresh(),
    )


def app_route_for(app: App, addresses: list[str]) -> caddy_routes.JsonObject:
    """The app's route for its platform hostname and its verified domains: to its replicas (by their upstream
    name) when `addresses` has one, else its 503 page (the suspended page while its tenant is suspended)."""
    hostnames = route_hostnames(app)
    force, port = bool(app.force_https), edge_https_port()
    if app.tenant.status == Tenant.Status.SUSPENDED:
        return caddy_routes.suspended_route(app.public_id, hostnames, force_https=force, https_port=port)
    if addresses:
        return caddy_routes.app_route(
            app.public_id, hostnames, upstream_lookup(app), force_https=force, https_port=port
        )
    return caddy_routes.unavailable_route(app.public_id, hostnames, force_https=force, https_port=port)


def edge_apply(caddy: CaddyClient, app: App, addresses: list[str], *, context: dict[str, str]) -> None:
    """Send the app's traffic to `addresses`: rewrite its upstream hosts file, and its route only if the
    route's shape differs from what Caddy has (a first deploy, a domain, force_https, the 503 page): a read,
    not a config load, when it does not. Addresses go in before a route that looks them up, and out after a
    route that stops looking them up, so the name never lacks an address while a route uses it."""
    route = app_route_for(app, addresses)
    upstreams = UpstreamHosts.from_settings()
    if addresses:
        upstreams.write(app.public_id, addresses, context=context)
    if caddy.route_get(app.public_id) != route:
        caddy.route_set(route)
    if not addresses:
        upstreams.write(app.public_id, [], context=context)


def switch_wait(seconds: float) -> None:
    """Wait for the edge to have looked the app's name up again after a switch (a seam for the tests)."""
    if seconds > 0:
        time.sleep(seconds)


def route_refresh(app: App) -> bool:
    """Rewrite the route of a live app with its current hostnames and settings (a domain verified or
    removed, force_https changed): one request. False when the app has no route to refresh."""
    if app.state != App.State.ACTIVE or app.live_deployment_id is None:
        return False
    if Deployment.objects.filter(app=app, state=Deployment.State.STARTING).exists():
        # A deploy is about to switch the route itself (reading the hostnames then); writing the current
        # live deployment's replicas now could undo its switch. The reconciler repairs anything missed.
        return False
    live = Deployment.objects.filter(pk=App.objects.filter(pk=app.pk).values("live_deployment")[:1]).first()
    if live is None:
        return False
    with CaddyClient.from_settings() as caddy:
        edge_apply(caddy, app, addresses_of(live), context=log_context(live))
    return True


def route_switch(deployment: Deployment, addresses: list[str]) -> bool:
    """Send the app's traffic to the replicas at `addresses` and make this deployment the app's live one.

    The switch is a rewrite of the app's upstream hosts file (and a route change only when the route's shape
    changes, e.g. on the first deploy); it returns once the edge has had time to look the name up again
    (UPSTREAM_SWITCH_WAIT_SECONDS: Caddy's refresh and a margin), so the caller may retire the previous
    replicas. Returns False when a newer deployment won the race; the edge then goes back to whatever is live
    (after the same wait), and the caller retires this deployment.
    """
    app = deployment.app
    context = log_context(deployment)
    with CaddyClient.from_settings() as caddy:
        # The hostnames are read now, at the switch, so a domain verified during the deploy is routed.
        edge_apply(caddy, app, addresses, context=context)
        won = App.objects.filter(
            Q(live_deployment__isnull=True) | Q(live_deployment__number__lte=deployment.number), pk=app.pk
        ).update(live_deployment=deployment)
        if not won:
            live = Deployment.objects.get(pk=App.objects.values_list("live_deployment", flat=True).get(pk=app.pk))
            edge_apply(caddy, app, addresses_of(live), context=context)
    switch_wait(float(settings.UPSTREAM_SWITCH_WAIT_SECONDS))
    return bool(won)


def retire_previous(deployment: Deployment, *, drain_seconds: float = 0.0) -> None:
    """Supersede the app's older live deployment and remove the replicas of every older one that
    still has some. Replica rows go only once their containers are gone, so a run that died
    halfway is finished by the next one (the task's retry, or the reconciler's sweep)."""
    Deployment.objects.filter(
        app_id=deployment.app_id, state=Deployment.State.LIVE, number__lt=deployment.number
    ).update(state=Deployment.State.SUPERSEDED, finished_at=timezone.now())
    leftovers = (
        Deployment.objects.filter(app_id=deployment.app_id, number__lt=deployment.number, replicas__isnull=False)
        .exclude(state__in=Deployment.ACTIVE_STATES)
        .exclude(state=Deployment.State.LIVE)
        .select_related("app", "app__tenant")
        .distinct()
    )
    if drain_seconds and leftovers:
        # Requests Caddy accepted under the previous route may still be on their way to the old
        # replicas; let them arrive before the replicas stop taking connections.
        time.sleep(drain_seconds)
    for old in leftovers:
        remove_containers(old, graceful=True)
        logger.info("retired replicas of a superseded deployment", extra=log_context(old))


def cleanup_build_dir(deployment: Deployment) -> None:
    shutil.rmtree(deployment.build_dir, ignore_errors=True)


# --- Git sources ----------------------------------------------------------------------------


def fetch_git(deployment: Deployment) -> None:
    """Clone the deployment's git source into its build dir. The URL is checked again here, right
    before cloning, so that DNS answers cannot change between the API call and the fetch."""
    from drivers import git as git_source

    url = git_validate(deployment.source_url, deployment.source_ref)
    src = deployment.build_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    deployment.build_dir.mkdir(parents=True, exist_ok=True)
    step(deployment, f"Fetching {deployment.source_ref} from {url}")
    try:
        commit = git_source.clone(
            url,
            deployment.source_ref,
            src,
            timeout=float(settings.BUILD_TIMEOUT_SECONDS),
            allow_local=bool(settings.GIT_ALLOW_LOCAL),
            max_bytes=int(settings.SOURCE_MAX_UNPACKED_BYTES),
            max_files=int(settings.SOURCE_MAX_FILES),
        )
    except git_source.GitCloneError as exc:
        logger.warning("git clone failed", extra={**log_context(deployment), "detail": exc.detail})
        raise UserError(exc.code, exc.message) from exc
    Deployment.objects.filter(pk=deployment.pk).update(source_commit=commit)
    step(deployment, f"Checked out {commit}")
