"""Managed Redis add-ons: the steps the Celery tasks and the reconciler run.

One add-on is one container `cf-redis-<hex>` under gVisor on the tenant's own network, in the same sandbox
as an app replica (no capabilities, read-only root, non-root tenant uid, bounded memory, cpus and pids, the
tenant's cgroup), with nothing published on the host. Its config (password included) is a podman secret
file; with persistence its append-only file lives in its own directory under the data dir, which outlives
the container, so a restarted Redis has its data back. Every step is idempotent by name; whoever works on
an add-on holds its named lease (`lease_name`), so a task and the reconciler never start the same
container twice. The reconciler's part is `provisioning.reconciler.redis`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from django.conf import settings

from core import crypto
from core.faults import PlatformError
from drivers import cgroups
from drivers import podman
from drivers import redis
from platform_apps.models import App
from platform_apps.models import RedisAddon
from provisioning import leases as named_lease
from provisioning.firewall import firewall_ensure_for_network
from provisioning.models import Lease
from provisioning.runtime import tenant_network

logger = logging.getLogger(__name__)

ROLE = "redis"
ADDON_LABEL = "coltsfoot.addon"
PLAN_LABEL = "coltsfoot.redis-plan"
CPUS = 0.5
# Host pids: gVisor's own threads (about 46 idle) plus Redis's few; far below an app replica's.
PIDS_LIMIT = 512
NPROC_LIMIT = 64
TMPFS_MB = 16
READY_TIMEOUT_SECONDS = 30.0
# Long enough for a first image build plus a start; a holder that dies loses it then.
LEASE_SECONDS = 300.0


def lease_name(addon_id: uuid.UUID) -> str:
    return f"redis-{addon_id.hex}"


def log_context(addon: RedisAddon) -> dict[str, str]:
    return {
        "tenant_id": str(addon.app.tenant.public_id),
        "app_id": str(addon.app.public_id),
        "addon_id": str(addon.public_id),
    }


def plan_label(addon: RedisAddon) -> str:
    """What the running container was started with; a container with another plan is replaced."""
    return f"{addon.maxmemory_mb}mb.{addon.policy}.{'aof' if addon.persistence else 'none'}"


def labels_for(addon: RedisAddon) -> dict[str, str]:
    app = addon.app
    return {
        "coltsfoot.instance": str(settings.INSTANCE_ID),
        "coltsfoot.tenant": str(app.tenant.public_id),
        "coltsfoot.app": str(app.public_id),
        "coltsfoot.role": ROLE,
        ADDON_LABEL: str(addon.public_id),
        PLAN_LABEL: plan_label(addon),
    }


def container_spec(addon: RedisAddon, image: str, *, ip: str = "") -> podman.ContainerSpec:
    """The add-on's container: an app replica's sandbox, running `redis-server` on its secret config."""
    app = addon.app
    uid = app.tenant.linux_uid
    mounts: tuple[tuple[str, str, bool], ...] = ()
    if addon.persistence:
        mounts = ((str(redis.data_dir(addon.public_id)), redis.DATA_DIR_IN_CONTAINER, False),)
    return podman.ContainerSpec(
        name=redis.container_name(addon.public_id),
        image=image,
        network=tenant_network(app.tenant.public_id),
        uid=uid,
        gid=uid,
        memory_mb=redis.container_memory_mb(int(addon.maxmemory_mb)),
        cpus=CPUS,
        pids_limit=PIDS_LIMIT,
        nproc_limit=NPROC_LIMIT,
        cgroup_parent=cgroups.tenant_cgroup(settings.TENANT_CGROUP_PARENT, app.tenant.public_id.hex),
        env={},
        secret_env={},
        secret_files={redis.CONFIG_FILE: redis.secret_name(addon.public_id)},
        command=redis.server_command(),
        labels=labels_for(addon),
        mounts=mounts,
        tmpfs_size_mb=TMPFS_MB,
        workdir="/",
        ip=ip,
        mac=redis.mac_address(addon.public_id),
    )


def server_config(addon: RedisAddon) -> str:
    return redis.server_config(
        password=crypto.decrypt(addon.password_encrypted),
        maxmemory_mb=int(addon.maxmemory_mb),
        policy=addon.policy,
        persistence=addon.persistence,
    )


def redis_url(addon: RedisAddon) -> str:
    return redis.redis_url(password=crypto.decrypt(addon.password_encrypted), host=addon.address)


# --- The image ------------------------------------------------------------------------------------------


def image_build_argv(context_dir: str, containerfile: str, tag: str) -> list[str]:
    """A tenant build's argv plus the host's network: its RUN step installs Debian's package. It runs on the
    host like the base image's debootstrap, from a Containerfile of the platform's, never tenant input."""
    argv = podman.build_argv(context_dir, containerfile, tag)
    return [*argv[:-1], "--network=host", argv[-1]]


def image_ensure() -> str:
    """The Redis image on the current base image, built once; returns its reference."""
    base = str(settings.BASE_IMAGE)
    ref = redis.image_ref(podman.image_id(base))
    if podman.image_exists(ref):
        return ref
    logger.info("building the redis add-on image %s", ref)
    Path(settings.BUILD_ROOT).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="redis-image-", dir=settings.BUILD_ROOT) as context:
        containerfile = Path(context) / "Containerfile"
        containerfile.write_text(redis.CONTAINERFILE.format(base=base))
        podman.run(image_build_argv(context, str(containerfile), ref), timeout=settings.BUILD_TIMEOUT_SECONDS)
    return ref


# --- Steps ----------------------------------------------------------------------------------------------


def _data_dir_ensure(addon: RedisAddon) -> None:
    """The add-on's volume, owned by the tenant's uid (the platform runs as root) and private to it."""
    path = redis.data_dir(addon.public_id)
    path.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o711)
    uid = addon.app.tenant.linux_uid
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    path.chmod(0o700)


def network_ensure(addon: RedisAddon) -> str:
    tenant = addon.app.tenant
    network = tenant_network(tenant.public_id)
    podman.network_ensure(
        network, {"coltsfoot.instance": str(settings.INSTANCE_ID), "coltsfoot.tenant": str(tenant.public_id)}
    )
    firewall_ensure_for_network()  # as for a replica: the bridge is filtered before anything runs on it
    return network


def wait_until_serving(address: str, timeout: float = READY_TIMEOUT_SECONDS) -> bool:
    """Until `redis-server` serves on its port: an unauthenticated PING gets `-NOAUTH` once it does, while
    `-LOADING` means it is still reading its append-only file (every command would fail then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, redis.PORT), timeout=1.0) as conn:
                conn.settimeout(1.0)
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith((b"-NOAUTH", b"+PONG")):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def start(addon: RedisAddon) -> str:
    """(Re)create the container from the add-on's row and wait until it serves; returns its address. It asks
    for the address it had, so REDIS_URL holds; if another container took that one meanwhile, it takes a new
    one (the caller re-releases the app)."""
    network = network_ensure(addon)
    image = image_ensure()
    if addon.persistence:
        _data_dir_ensure(addon)
    name = redis.container_name(addon.public_id)
    podman.container_remove(name)
    podman.secret_set(redis.secret_name(addon.public_id), server_config(addon))
    try:
        podman.container_run_detached(container_spec(addon, image, ip=addon.address))
    except podman.PodmanError as exc:
        if not addon.address or "already" not in exc.stderr.lower():
            raise
        logger.warning("redis add-on address taken, starting it on a new one", extra=log_context(addon))
        podman.container_remove(name)
        podman.container_run_detached(container_spec(addon, image))
    address = podman.container_address(name, network)
    if not address or not wait_until_serving(address):
        output = podman.container_logs(name, tail=30) if podman.container_exit_state(name) else ""
        logger.warning("redis add-on did not come up: %s", output[-2000:], extra=log_context(addon))
        raise PlatformError("addon.redis_unhealthy", "The Redis server did not start.", transient=True)
    return address


def provision(addon: RedisAddon) -> str:
    """Make the add-on's container run with its current plan; returns its address. A container that runs
    with this plan already is left alone (a task run twice starts nothing twice)."""
    name = redis.container_name(addon.public_id)
    labels = podman.container_labels(name)
    if labels is not None and labels.get(PLAN_LABEL) == plan_label(addon) and podman.container_is_running(name):
        address = podman.container_address(name, tenant_network(addon.app.tenant.public_id))
        if address and wait_until_serving(address, timeout=5.0):
            return address
    address = start(addon)
    logger.info("redis add-on provisioned", extra={**log_context(addon), "address": address})
    return address


def deprovision(addon: RedisAddon) -> None:
    """Remove the container, its secret and its data; each already-gone part is success."""
    podman.container_remove(redis.container_name(addon.public_id))
    podman.secret_remove(redis.secret_name(addon.public_id))
    shutil.rmtree(redis.data_dir(addon.public_id), ignore_errors=True)
    Lease.objects.filter(name=lease_name(addon.public_id)).delete()
    logger.info("redis add-on deprovisioned", extra=log_context(addon))


def teardown_for_app(app: App) -> None:
    """Under the add-on's lease, so the reconciler is not starting the container again meanwhile; held
    elsewhere, a transient error and the app's teardown tries again."""
    addon: RedisAddon | None = RedisAddon.objects.select_related("app", "app__tenant").filter(app=app).first()
    if addon is None:
        return
    owner = uuid.uuid4().hex
    name = lease_name(addon.public_id)
    if not named_lease.lease_acquire(name, owner, LEASE_SECONDS):
        raise PlatformError("addon.busy", "Another task is working on this Redis.", transient=True)
    try:
        deprovision(addon)  # drops the lease with the rest
    except Exception:
        named_lease.lease_release(name, owner)
        raise
    addon.delete()
