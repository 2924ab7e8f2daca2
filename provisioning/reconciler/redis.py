"""The reconciler's part for Redis add-ons: a ready add-on's container that died is started again, and a
Redis container whose add-on is gone is removed. Works from the pass's one `podman ps`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta

from django.conf import settings
from django.db.models import F

from core.faults import PlatformError
from drivers import firewall
from drivers import podman
from drivers import redis
from platform_apps.models import App
from platform_apps.models import RedisAddon
from provisioning import leases as named_lease
from provisioning import redis_addons
from provisioning.reconciler import planner
from provisioning.runtime import tenant_network

logger = logging.getLogger(__name__)


@dataclass
class RedisPass:
    """What `reconcile` did: action counts for the pass report, and when to look again."""

    actions: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    wake_in: float | None = None
    # Apps whose Redis came back on another address: their REDIS_URL changed, so they are re-released.
    moved: list[int] = field(default_factory=list)

    def count(self, kind: str) -> None:
        self.actions[kind] = self.actions.get(kind, 0) + 1

    def wake(self, seconds: float) -> None:
        self.wake_in = seconds if self.wake_in is None else min(self.wake_in, seconds)


def _detached(container: podman.ObservedContainer, network_created: float) -> bool:
    return bool(network_created and container.created_at and container.created_at + 1.0 <= network_created)


def reconcile(
    containers: dict[str, podman.ObservedContainer],
    network_created: dict[str, float],
    now: datetime,
    owner: str,
) -> RedisPass:
    """Like a replica: a ready add-on whose container exited, vanished or lost its network is started again
    (now the first time, then with the replicas' backoff while it keeps dying), with its data; a Redis
    container whose add-on is gone is removed after the orphan grace. `containers` is the pass's one
    `podman ps`."""
    result = RedisPass()
    ready = list(
        RedisAddon.objects.filter(state=RedisAddon.State.READY, app__state=App.State.ACTIVE).select_related(
            "app", "app__tenant"
        )
    )
    wanted: set[str] = set()
    for addon in ready:
        name = redis.container_name(addon.public_id)
        wanted.add(name)
        container = containers.get(name)
        network = tenant_network(addon.app.tenant.public_id)
        if container is not None and container.running and not _detached(container, network_created.get(network, 0)):
            steady = timedelta(seconds=settings.RESTART_RESET_SECONDS)
            if addon.crash_streak and addon.started_at and now - addon.started_at >= steady:
                RedisAddon.objects.filter(pk=addon.pk).update(crash_streak=0)
            continue
        if addon.next_restart_at is not None and addon.next_restart_at > now:
            result.wake((addon.next_restart_at - now).total_seconds())
            continue
        _restart(addon, container, now, owner, result)
    grace = float(settings.ORPHAN_GRACE_SECONDS)
    known = {
        redis.container_name(public_id)
        for public_id in RedisAddon.objects.exclude(state=RedisAddon.State.FAILED).values_list("public_id", flat=True)
    }
    for name, container in sorted(containers.items()):
        if container.labels.get("coltsfoot.role") != redis_addons.ROLE or name in wanted or name in known:
            continue
        if container.created_at and now.timestamp() - container.created_at < grace:
            continue
        try:
            podman.container_remove(name)
        except podman.PodmanError as exc:
            result.errors += 1
            logger.warning("reconcile: removing redis orphan %s failed: %s", name, exc)
            continue
        logger.info("orphan redis container removed", extra={"container": name})
        result.count("redis_orphan_removed")
    return result


def _restart(
    addon: RedisAddon, container: podman.ObservedContainer | None, now: datetime, owner: str, result: RedisPass
) -> None:
    name = redis_addons.lease_name(addon.public_id)
    if not named_lease.lease_acquire(name, owner, redis_addons.LEASE_SECONDS):
        return  # a task is working on it
    try:
        # Right before acting: a PATCH or DELETE (of it or its app) since the pass read the rows owns it now.
        if not RedisAddon.objects.filter(
            pk=addon.pk, state=RedisAddon.State.READY, app__state=App.State.ACTIVE
        ).exists():
            return
        reason = "vanished" if container is None else planner.exit_reason(container.exit_code, present=True)
        streak = addon.crash_streak + (0 if container is None else 1)
        delay = planner.restart_delay(
            streak + 1, base=settings.RESTART_BACKOFF_BASE_SECONDS, cap=settings.RESTART_BACKOFF_CAP_SECONDS
        )
        logger.warning(
            "redis add-on container %s, restarting it",
            reason,
            extra={**redis_addons.log_context(addon), "exit_code": container.exit_code if container else None},
        )
        try:
            address = redis_addons.start(addon)
        except (podman.PodmanError, PlatformError, firewall.FirewallError, OSError, ValueError) as exc:
            result.errors += 1
            logger.warning(
                "reconcile: restarting the redis add-on failed: %s", exc, extra=redis_addons.log_context(addon)
            )
            RedisAddon.objects.filter(pk=addon.pk).update(
                crash_streak=streak, next_restart_at=now + timedelta(seconds=delay)
            )
            result.wake(delay)
            return
        RedisAddon.objects.filter(pk=addon.pk).update(
            address=address,
            restarts=F("restarts") + 1,
            crash_streak=streak,
            started_at=now,
            next_restart_at=now + timedelta(seconds=delay),
        )
        if address != addon.address:
            result.moved.append(addon.app_id)
        result.count(f"redis_{reason}")
    finally:
        named_lease.lease_release(name, owner)
