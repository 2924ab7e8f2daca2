"""The host firewall from the workflow's side: what this installation's table should hold, and keeping it so.

`drivers.firewall` renders and installs a table from a `FirewallSpec`; this module fills the spec in from the
settings (egress policy, PgBouncer's port, the index host) and the machine (the host's resolvers, this
instance's tenant bridges from podman, the index host's addresses from DNS), and re-applies it:
- at start (`manage.py firewall_apply`, which `make up` and the test stacks run before the worker starts);
- whenever the pipeline has ensured a tenant network, before any container runs on it (a new network's bridge
  must be in the table first, or its containers would be unfiltered);
- when a reconcile pass recreates a network, before it restarts replicas there, and from reconcile passes every
  COLTSFOOT_FIREWALL_SYNC_SECONDS otherwise (a bridge name freed by a removed network, the index host's
  addresses moving, a table someone deleted); `nft` runs only when the content differs.

Applies are serialised by a lock file in the data dir, so concurrent workers never install a table computed
from an older list of networks after a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from drivers import firewall
from drivers import podman

logger = logging.getLogger(__name__)

INSTANCE_LABEL = "coltsfoot.instance"
# pip's default index and the host its files are served from.
PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")


def enabled() -> bool:
    return bool(settings.FIREWALL)


def index_hosts() -> tuple[str, ...]:
    """The hosts a dependency install talks to: the configured index's (PyPI's two by default) and
    COLTSFOOT_BUILD_EGRESS_HOSTS."""
    hosts: list[str] = []
    if settings.BUILD_PIP_INDEX_URL:
        host = urlsplit(str(settings.BUILD_PIP_INDEX_URL)).hostname
        if host:
            hosts.append(host)
        if host == "pypi.org":
            hosts.append("files.pythonhosted.org")
    else:
        hosts += PYPI_HOSTS
    hosts += [str(host) for host in settings.BUILD_EGRESS_HOSTS]
    return tuple(dict.fromkeys(host.lower() for host in hosts))


# Resolved index addresses are reused this long (per process): the table is re-checked often, and looking
# the hosts up each time would cost more than the rest of the check.
RESOLVE_CACHE_SECONDS = 60.0
_resolved: dict[tuple[str, ...], tuple[float, tuple[firewall.IPAddress, ...]]] = {}


def resolve_cached(hosts: tuple[str, ...]) -> tuple[firewall.IPAddress, ...]:
    cached = _resolved.get(hosts)
    if cached is not None and time.monotonic() - cached[0] < RESOLVE_CACHE_SECONDS:
        return cached[1]
    addresses = resolve(hosts)
    if addresses or not hosts:
        _resolved[hosts] = (time.monotonic(), addresses)
    return addresses


def resolve(hosts: tuple[str, ...]) -> tuple[firewall.IPAddress, ...]:
    """Every address the hosts resolve to now; a host that does not resolve is logged and left out (the next
    reconcile pass tries again)."""
    found: list[firewall.IPAddress] = []
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            logger.warning("firewall: cannot resolve the build egress host %s: %s", host, exc)
            continue
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
    return tuple(found)


def resolvers() -> tuple[firewall.IPAddress, ...]:
    try:
        text = Path(settings.FIREWALL_RESOLV_CONF).read_text()
    except OSError as exc:
        logger.warning("firewall: cannot read %s: %s", settings.FIREWALL_RESOLV_CONF, exc)
        return ()
    return firewall.resolvers_parse(text)


def tenant_bridges() -> tuple[str, ...]:
    """The host bridges of this installation's tenant networks."""
    interfaces = podman.network_interfaces_with_label(INSTANCE_LABEL, str(settings.INSTANCE_ID))
    return tuple(sorted(set(interfaces.values())))


def spec_configured(egress: str | None = None) -> firewall.FirewallSpec:
    """The spec's configuration only (no podman, no DNS): enough for `/ready`'s check."""
    return firewall.FirewallSpec(
        instance_id=str(settings.INSTANCE_ID),
        egress=firewall.egress_parse(settings.TENANT_EGRESS if egress is None else egress),
        pgbouncer_port=int(settings.PGBOUNCER_PORT),
        resolvers=resolvers(),
        index_hosts=index_hosts(),
    )


def spec_current(egress: str | None = None) -> firewall.FirewallSpec:
    """The whole spec as of now: the configuration plus this instance's bridges and the index's addresses."""
    configured = spec_configured(egress)
    return firewall.FirewallSpec(
        instance_id=configured.instance_id,
        egress=configured.egress,
        pgbouncer_port=configured.pgbouncer_port,
        resolvers=configured.resolvers,
        bridges=tenant_bridges(),
        index_hosts=configured.index_hosts,
        index_addresses=resolve_cached(configured.index_hosts),
    )


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    path = Path(settings.DATA_DIR) / "firewall.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def firewall_apply(*, egress: str | None = None, force: bool = False) -> firewall.FirewallSpec:
    """Install this installation's table as of now (unless the installed one is exactly that and not `force`).
    `egress` overrides COLTSFOOT_TENANT_EGRESS for this apply (the next periodic sync restores the setting)."""
    nft = str(settings.NFT_BIN)
    with _lock():
        spec = spec_current(egress)
        if not force and firewall.problem(spec, firewall.installed(spec.table, nft=nft), exact=True) is None:
            return spec
        firewall.apply(spec, nft=nft)
    return spec


# When this process last synced the table from a reconcile pass (monotonic seconds).
_last_sync: list[float] = []


def firewall_sync(*, force: bool = False) -> bool | None:
    """From the reconcile task: `firewall_apply` when the platform manages the firewall, at most every
    FIREWALL_SYNC_SECONDS unless `force` (the pass recreated a network). Failures are logged, never raised (the
    pass goes on, and `/ready` reports the table). True/False: whether the table is current; None: not
    synced now (unmanaged, or synced recently)."""
    if not enabled():
        return None
    now = time.monotonic()
    if not force and _last_sync and now - _last_sync[-1] < float(settings.FIREWALL_SYNC_SECONDS):
        return None
    _last_sync[:] = [now]
    try:
        firewall_apply()
    except (firewall.FirewallError, podman.PodmanError, ValueError) as exc:
        logger.error("firewall: cannot apply the table: %s", exc)
        return False
    return True


def firewall_ensure_for_network() -> None:
    """After a tenant network was ensured, before any container runs on it: its bridge must be filtered.
    Raises FirewallError (not transient) if the table cannot be applied: starting unfiltered is worse."""
    if enabled():
        firewall_apply()


def firewall_check() -> str | None:
    """`/ready`: None when the table is present and current for this configuration, else what is wrong."""
    try:
        spec = spec_configured()
        return firewall.problem(spec, firewall.installed(spec.table, nft=str(settings.NFT_BIN)))
    except (firewall.FirewallError, ValueError) as exc:
        return str(exc)


def firewall_remove() -> None:
    firewall.remove(firewall.table_name(str(settings.INSTANCE_ID)), nft=str(settings.NFT_BIN))
