"""The host a worker runs on: registered when the worker is ready, heartbeated while it runs, marked down by the
reconciler when the heartbeats stop (README "Several hosts").

Each worker consumes the shared queue and its host's own queue, `host.<name>`, so work for the containers of
one host can be sent to that host alone. The heartbeat is written by a thread of the worker's main process
straight to the platform DB, not by a task: a worker whose pool is busy with two long builds is alive, and must
not look dead for it (a worker that is alive but no longer receives is the watchdog's business:
provisioning/watchdog.py restarts it).

A down host comes back as `active` at its next heartbeat; a draining one stays draining until an operator
undrains it (`manage.py host undrain`).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from typing import Any

from celery.signals import celeryd_after_setup
from celery.signals import worker_ready
from celery.signals import worker_shutting_down
from django.conf import settings
from django.db import DatabaseError
from django.db import IntegrityError
from django.db import close_old_connections
from django.db import transaction
from django.db.models import Exists
from django.db.models import F
from django.db.models import OuterRef
from django.utils import timezone

from core.errors import ApiError
from core.faults import PlatformError
from platform_apps.deployments.services import release_current
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Host
from platform_apps.models import Replica
from platform_apps.models import host_queue
from provisioning import placement

logger = logging.getLogger(__name__)

# How long after a failed release off a draining host the next one is asked for.
DRAIN_RETRY = timedelta(minutes=5)


def this_host_name() -> str:
    return str(settings.HOST_NAME)


def register(now: datetime | None = None) -> Host:
    """Create or update this host's row from the settings, with a fresh heartbeat; a down host is active again."""
    now = now or timezone.now()
    capacity = {
        "address": str(settings.HOST_ADDRESS),
        "memory_mb": int(settings.HOST_MEMORY_MB),
        "cpus": Decimal(str(round(float(settings.HOST_CPUS), 2))),
        "can_build": bool(settings.HOST_CAN_BUILD),
    }
    name = this_host_name()
    try:
        with transaction.atomic():
            host, created = Host.objects.get_or_create(
                name=name, defaults={**capacity, "state": Host.State.ACTIVE, "last_heartbeat": now}
            )
    except IntegrityError:  # registered by a concurrent start of the same host: update that row below
        host, created = Host.objects.get(name=name), False
    if not created:
        Host.objects.filter(pk=host.pk).update(**capacity, last_heartbeat=now)
        if Host.objects.filter(pk=host.pk, state=Host.State.DOWN).update(state=Host.State.ACTIVE):
            logger.warning("host is back", extra=_context(host))
        host.refresh_from_db()
    logger.info("host registered", extra={**_context(host), "memory_mb": host.memory_mb, "first_registration": created})
    return host


def heartbeat(now: datetime | None = None) -> bool:
    """Refresh this host's heartbeat (and bring it back from down); False when its row is gone."""
    now = now or timezone.now()
    name = this_host_name()
    if not Host.objects.filter(name=name).update(last_heartbeat=now):
        return False
    if Host.objects.filter(name=name, state=Host.State.DOWN).update(state=Host.State.ACTIVE):
        logger.warning("host is back", extra={"host": name})
    return True


def mark_dead(now: datetime | None = None) -> list[str]:
    """Hosts whose last heartbeat is older than HOST_DEAD_SECONDS become down; their names, each logged. One
    conditional UPDATE per host, so a heartbeat that lands meanwhile wins. Never this host: the worker asking is
    alive (after a long stop its first pass may come before its heartbeat thread has written)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=int(settings.HOST_DEAD_SECONDS))
    stale = Host.objects.filter(state__in=[Host.State.ACTIVE, Host.State.DRAINING], last_heartbeat__lt=cutoff).exclude(
        name=this_host_name()
    )
    down = []
    for host in stale.only("pk", "public_id", "name", "last_heartbeat"):
        if Host.objects.filter(pk=host.pk, last_heartbeat__lt=cutoff).update(state=Host.State.DOWN):
            seconds = (now - host.last_heartbeat).total_seconds() if host.last_heartbeat else None
            logger.error("host is down: no heartbeat", extra={**_context(host), "silent_seconds": seconds})
            down.append(host.name)
    return down


def live_host_names(*, exclude: str = "") -> list[str]:
    """The hosts whose workers should be running (active or draining), by name."""
    rows = Host.objects.filter(state__in=[Host.State.ACTIVE, Host.State.DRAINING]).exclude(name=exclude)
    return list(rows.values_list("name", flat=True))


def place_deployment(deployment: Deployment) -> Host:
    """The host a deployment is built and run on: an active host that can build with room for all of its
    replicas (its worker starts them), the one with the most free memory (this host on a tie, which saves a
    hop). When no host has registered yet (the first deploy before the heartbeat thread ran), this host
    registers now. No room anywhere: `deploy.no_capacity`, transient (a host may come back, an app shrink)."""
    app = deployment.app
    need = int(app.replicas) * int(app.memory_mb)
    rooms = placement.host_rooms()
    if not rooms:
        return register()
    candidates = [room for room in rooms if room.active and room.can_build]
    fitting = [room for room in candidates if room.free_mb >= need]
    if not fitting:
        largest = max((room.free_mb for room in candidates), default=0)
        raise placement.NoCapacity(
            message=(
                f"No host has room for {app.replicas} replica(s) of {app.memory_mb} MB (the most free on one host "
                f"is {max(0, largest)} MB); the platform tries again shortly."
            ),
            transient=True,
            needed_mb=need,
            largest_free_mb=max(0, largest),
        )
    here = this_host_name()
    best = max(fitting, key=lambda room: (room.free_mb, room.name == here))
    chosen: Host = Host.objects.get(pk=best.pk)
    return chosen


def deployment_host(deployment: Deployment) -> Host:
    """Where the deployment runs: where it was placed, unless that host is down (then, not being live, it is
    placed again); placed now if it was not. A concurrent placement of the same deployment wins once."""
    if deployment.host_id is not None:
        placed: Host | None = Host.objects.filter(pk=deployment.host_id).first()
        if placed is not None and placed.state != Host.State.DOWN:
            return placed
    chosen = place_deployment(deployment)
    Deployment.objects.filter(pk=deployment.pk, host=deployment.host_id).update(host=chosen)
    deployment.refresh_from_db(fields=["host"])
    host = Host.objects.get(deployments=deployment.pk)
    logger.info("deployment placed", extra={**_context(host), "deployment_id": str(deployment.public_id)})
    return host


def fail_over(now: datetime | None = None) -> dict[str, int]:
    """Move work off hosts that are not active, once a pass (the reconciler's, on the shared queue):

    - the live deployments of a down host are placed again, rows and all: their replicas are started on the new
      host by the reconciler's restart of a vanished replica, and the routes follow its addresses;
    - each app live on a draining host gets a release (its image again, no build), which the pipeline places on
      an active host and switches to with zero downtime, as any deploy; the old replicas retire after it.

    A deployment that cannot be placed anywhere stays where it is and is tried again next pass."""
    counts = {"hosts_down": len(mark_dead(now)), "replaced": 0, "drained": 0}
    _adopt_unplaced()
    stranded = Deployment.objects.filter(host__state=Host.State.DOWN, app__live_deployment=F("pk")).select_related(
        "app", "app__tenant", "host"
    )
    for deployment in stranded:
        dead = deployment.host
        try:
            chosen = place_deployment(deployment)
        except PlatformError as exc:
            logger.error(
                "no host can take the replicas of a down host", extra={**_ids(deployment), "error": exc.message}
            )
            continue
        with transaction.atomic():
            moved = Deployment.objects.filter(pk=deployment.pk, host=dead).update(host=chosen)
            Replica.objects.filter(deployment=deployment, host=dead).update(host=chosen)
        if moved:
            counts["replaced"] += 1
            logger.warning(
                "replicas placed again off a down host",
                extra={**_ids(deployment), "from": dead.name, "to": chosen.name},
            )
    # A release that failed lately (no room elsewhere, say) is not asked for again every pass: once per
    # DRAIN_RETRY, so a host that cannot be emptied does not fill the app's history with failed releases.
    failed_lately = Deployment.objects.filter(
        app=OuterRef("app"),
        source_kind=Deployment.SourceKind.RELEASE,
        state=Deployment.State.FAILED,
        created_at__gte=(now or timezone.now()) - DRAIN_RETRY,
    )
    draining = (
        Deployment.objects.filter(
            host__state=Host.State.DRAINING, app__live_deployment=F("pk"), app__state=App.State.ACTIVE
        )
        .exclude(app__deployments__state__in=Deployment.ACTIVE_STATES)
        .exclude(Exists(failed_lately))
    )
    for deployment in draining.select_related("app", "app__tenant", "host").distinct():
        try:
            release = release_current(deployment.app)
        except ApiError as exc:  # the app is being deleted meanwhile: nothing to move
            logger.info("app not moved off a draining host: %s", exc.code, extra=_ids(deployment))
            continue
        if release is not None:
            counts["drained"] += 1
            logger.info(
                "moving an app off a draining host", extra={**_ids(deployment), "release_id": str(release.public_id)}
            )
    return counts


def _adopt_unplaced() -> None:
    """Live deployments from before hosts existed name none: on a platform with one host they run there."""
    unplaced = Deployment.objects.filter(host__isnull=True, app__live_deployment=F("pk"))
    if not unplaced.exists():
        return
    only = list(Host.objects.all()[:2])
    if len(only) != 1:
        logger.error("live deployments placed on no host, and several hosts: place them by hand")
        return
    count = unplaced.update(host=only[0])
    Replica.objects.filter(host__isnull=True, deployment__host=only[0]).update(host=only[0])
    logger.warning("live deployments placed on the only host", extra={**_context(only[0]), "deployments": count})


def run_here(deployment: Deployment) -> None:
    """The deployment runs on this host from now on if it was not placed (a run that did not come through
    `deployment_run`'s placement): its containers and rows must name a host."""
    if deployment.host_id is not None:
        return
    here = Host.objects.filter(name=this_host_name()).first() or register()
    Deployment.objects.filter(pk=deployment.pk, host__isnull=True).update(host=here)
    deployment.refresh_from_db(fields=["host"])


def _ids(deployment: Deployment) -> dict[str, str]:
    return {
        "tenant_id": str(deployment.app.tenant.public_id),
        "app_id": str(deployment.app.public_id),
        "deployment_id": str(deployment.public_id),
    }


def _context(host: Host) -> dict[str, str]:
    return {"host": host.name, "host_id": str(host.public_id)}


class Heartbeat:
    """The worker's heartbeat thread: register once, then a heartbeat every HOST_HEARTBEAT_SECONDS."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="coltsfoot-host-heartbeat", daemon=True)

    def run(self) -> None:
        period = float(settings.HOST_HEARTBEAT_SECONDS)
        registered = False
        while not self.stopped.is_set():
            try:
                if not registered:
                    register()
                    registered = True
                elif not heartbeat():
                    registered = False  # the row was removed: register again on the next beat
            except DatabaseError:
                logger.warning("host heartbeat failed; trying again", exc_info=True)
            finally:
                close_old_connections()
            self.stopped.wait(period)


_heartbeat: list[Heartbeat] = []


@celeryd_after_setup.connect
def _consume_host_queue(sender: str, instance: Any, **_: Any) -> None:
    """Every worker consumes its host's queue besides the ones it was started with."""
    queue = host_queue(this_host_name())
    instance.app.amqp.queues.select_add(queue)
    logger.info("worker consumes its host queue", extra={"host": this_host_name(), "queue": queue})


@worker_ready.connect
def _start(**_: Any) -> None:
    if _heartbeat:
        return
    try:
        register()  # before the first task: placement and the reconciler see this host at once
    except DatabaseError:
        logger.warning("host registration failed; the heartbeat thread tries again", exc_info=True)
    finally:
        close_old_connections()
    beat = Heartbeat()
    _heartbeat.append(beat)
    beat.thread.start()


@worker_shutting_down.connect
def _stop(**_: Any) -> None:
    for beat in _heartbeat:
        beat.stopped.set()
