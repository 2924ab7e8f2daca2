"""Tenant Redis add-ons: the image, the names and the configuration of one add-on's `redis-server`.

Pure (the domain validates plans with it): the workflow (`provisioning.redis_addons`) builds the image
and starts the container through `drivers.podman`, in the same sandbox as an app replica.

Hardening, in layers:
- the server runs under gVisor as the tenant's non-root uid, read-only root filesystem, no capabilities,
  bounded memory and pids, on the tenant's isolated podman network, nothing published on the host;
- `requirepass` with a generated password; the whole config (password included) reaches the container
  as a podman secret *file* (never an environment entry: podman 4.3 shows those in `podman inspect`);
- commands a tenant could use to reconfigure, stop or replicate the server, or to load code into it, are
  renamed to "" (gone): `CONFIG`, `DEBUG`, `MODULE`, `SHUTDOWN`, `REPLICAOF`/`SLAVEOF`, ... (`DANGEROUS`);
- `maxmemory` with the plan's eviction policy, so a full Redis evicts or refuses writes instead of growing.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from django.conf import settings

PORT = 6379
IMAGE_REPO = "localhost/coltsfoot-redis"
CONFIG_FILE = "redis.conf"
SECRETS_DIR = "/run/secrets"  # where podman mounts secret files (drivers.podman.SECRETS_DIR)
DATA_DIR_IN_CONTAINER = "/data"
# Commands a tenant's app has no business sending to its own Redis: they reconfigure it (CONFIG, ACL),
# stop it (SHUTDOWN, FAILOVER), make it a replica of or copy it to another server (REPLICAOF, SLAVEOF,
# SYNC, PSYNC, MIGRATE), load code (MODULE), crash it on purpose (DEBUG), or write snapshots whose timing
# the platform owns (SAVE, BGSAVE, BGREWRITEAOF). Renamed to the empty string, they do not exist.
DANGEROUS = (
    "ACL",
    "BGREWRITEAOF",
    "BGSAVE",
    "CONFIG",
    "DEBUG",
    "FAILOVER",
    "MIGRATE",
    "MODULE",
    "PSYNC",
    "REPLICAOF",
    "SAVE",
    "SHUTDOWN",
    "SLAVEOF",
    "SYNC",
)
POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)
# Redis needs memory beyond `maxmemory` (its own structures, client buffers, fragmentation) and gVisor's
# Sentry takes some too: the container's limit is maxmemory plus this, so reaching maxmemory evicts or
# refuses writes long before the kernel kills anything.
MEMORY_OVERHEAD_MB = 32
MIN_MAXMEMORY_MB = 8
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
# Built with the base image's own Debian: the server the platform tests against (no registry). The
# policy-rc.d stops the package's maintainer scripts from starting a server inside the build.
CONTAINERFILE = """FROM {base}
RUN printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \\
 && apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
"""


def container_name(addon_id: uuid.UUID) -> str:
    return f"cf-redis-{addon_id.hex}"


def secret_name(addon_id: uuid.UUID) -> str:
    """Not `cf-<hex>-...`: the collector owns the per-deployment secrets of that shape."""
    return f"cf-redis-{addon_id.hex}-conf"


def mac_address(addon_id: uuid.UUID) -> str:
    """A locally administered unicast MAC derived from the add-on's id: a restarted Redis keeps it, so the
    app's containers reach it again without waiting for their ARP caches (same address, same MAC)."""
    octets = [0x02, *addon_id.bytes[-5:]]
    return ":".join(f"{octet:02x}" for octet in octets)


def data_dir(addon_id: uuid.UUID) -> Path:
    """The add-on's own volume: a directory under the platform's data dir, owned by the tenant's uid."""
    return Path(settings.DATA_DIR) / "redis" / addon_id.hex


def container_memory_mb(maxmemory_mb: int) -> int:
    return maxmemory_mb + MEMORY_OVERHEAD_MB


def image_ref(base_image_id: str) -> str:
    """One image per base image: rebuilt when the base image is."""
    digest = base_image_id.removeprefix("sha256:")[:12]
    if not re.fullmatch(r"[0-9a-f]{12}", digest):
        raise ValueError(f"not an image id: {base_image_id!r}")
    return f"{IMAGE_REPO}:{digest}"


def server_config(*, password: str, maxmemory_mb: int, policy: str, persistence: bool) -> str:
    """The complete redis.conf of one add-on."""
    if not _PASSWORD_RE.fullmatch(password):
        raise ValueError("the password must be 16-128 URL-safe characters")
    if maxmemory_mb < MIN_MAXMEMORY_MB:
        raise ValueError(f"maxmemory must be at least {MIN_MAXMEMORY_MB} MiB")
    if policy not in POLICIES:
        raise ValueError(f"unknown eviction policy: {policy!r}")
    lines = [
        # Every interface of its own network namespace: the tenant network is the only one it has.
        "bind 0.0.0.0",
        f"port {PORT}",
        "protected-mode yes",
        f"requirepass {password}",
        "daemonize no",
        'logfile ""',
        f"maxmemory {maxmemory_mb}mb",
        f"maxmemory-policy {policy}",
        "maxclients 1000",
        "timeout 0",
        "tcp-keepalive 60",
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
        # No RDB snapshots: persistence, when on, is the append-only file.
        'save ""',
    ]
    if persistence:
        lines += [f"dir {DATA_DIR_IN_CONTAINER}", "appendonly yes", "appendfsync everysec"]
    else:
        lines += ["dir /tmp", "appendonly no"]
    lines += [f'rename-command {command} ""' for command in DANGEROUS]
    return "\n".join(lines) + "\n"


def redis_url(*, password: str, host: str) -> str:
    return f"redis://:{password}@{host}:{PORT}/0"


def server_command() -> str:
    return f"exec redis-server {SECRETS_DIR}/{CONFIG_FILE}"
