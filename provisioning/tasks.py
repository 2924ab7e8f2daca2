"""Celery tasks. Each takes UUIDs as strings, re-reads its rows, claims work with conditional
UPDATEs and is safe to run twice. Only transient errors are retried, with capped exponential
backoff and jitter; tenant errors fail at once with their code."""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any

import kombu.exceptions
from celery import Task
from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import close_old_connections
from django.db import connection
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from caddy.client import CaddyClient
from core.faults import DeployError
from core.faults import PlatformError
from core.faults import is_transient
from core.locks import row_lock
from core.logging import bind
from core.logging import request_id_var
from core.logging import unbind
from drivers import logstore
from drivers import podman
from drivers import redis
from drivers.upstream_hosts import UpstreamHosts
from platform_apps.backups.services import log_context as backup_log_context
from platform_apps.deployments.services import release_current
from platform_apps.idempotency import purge_expired
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import RedisAddon
from platform_apps.models import host_queue
from provisioning import addons
from provisioning import backups
from provisioning import domains
from provisioning import hosts
from provisioning import leases as named_lease
from provisioning import pipeline
from provisioning import platform_backup
from provisioning import redis_addons
from provisioning import watchdog  # noqa: F401 - the worker's watchdog: its signal handlers and probe task
from provisioning.firewall import firewall_sync
from provisioning.reconciler import collector
from provisioning.reconciler.runner import reconcile_pass
from tenants.models import Tenant

logger = logging.getLogger(__name__)

MAX_RETRIES = 5
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 60.0

State = Deployment.State
# The lease owner the reconciler leaves on a deployment it queued again: any task may claim it.
REQUEUED = "requeued"
# The broker being unreachable: what sending a task raises then.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, kombu.exceptions.OperationalError)


def backoff_seconds(retries: int) -> float:
    """Exponential, capped, with full jitter between half and one and a half of the step."""
    step = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2**retries))
    return float(step * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not cryptography


if TYPE_CHECKING:
    _TaskBase = Task[Any, Any]
else:
    _TaskBase = Task


class PlatformTask(_TaskBase):
    """The one lifecycle of every Coltsfoot task: a failure is retried only when it is transient
    (the `InfrastructureError.transient` of podman, Caddy, PostgreSQL and platform errors), with
    capped exponential backoff and jitter, at most `max_retries` times; anything else fails at
    once and the task decides what failing means for its row."""

    max_retries = MAX_RETRIES

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Each task binds the ids it works on once it has loaded its row (see `_load`), so its log
        # lines carry them; nothing bound by the previous task in this process may leak into it.
        unbind()
        request_id_var.set(f"task-{task_id}")

    def after_return(self, *args: Any, **kwargs: Any) -> None:
        unbind()

    def retry_delay(self, exc: BaseException) -> float | None:
        """The countdown of the retry `exc` deserves, or None when it should fail for good."""
        if is_transient(exc) and self.request.retries < (self.max_retries or 0):
            return backoff_seconds(min(self.request.retries, 6))
        return None

    def retry_if_transient(self, exc: Exception) -> None:
        """Raise Celery's Retry for a transient error that has retries left; return otherwise."""
        delay = self.retry_delay(exc)
        if delay is not None:
            raise self.retry(exc=exc, countdown=delay) from exc


# --- Leases ---------------------------------------------------------------------------------


def lease_claim(deployment_pk: int, owner: str) -> bool:
    now = timezone.now()
    stale = now - timedelta(seconds=settings.LEASE_SECONDS)
    return bool(
        Deployment.objects.filter(pk=deployment_pk, state__in=Deployment.ACTIVE_STATES)
        .filter(
            Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale) | Q(lease_owner=owner) | Q(lease_owner=REQUEUED)
        )
        .update(heartbeat_at=now, lease_owner=owner)
    )


def lease_release(deployment_pk: int, owner: str, *, hold_until: float | None = None) -> None:
    """Give the lease up; `hold_until` (seconds from now) keeps it while a retry is pending."""
    heartbeat = timezone.now() + timedelta(seconds=hold_until) if hold_until else None
    Deployment.objects.filter(pk=deployment_pk, lease_owner=owner).update(
        heartbeat_at=heartbeat, lease_owner=owner if hold_until else ""
    )


@contextlib.contextmanager
def heartbeat(deployment_pk: int, owner: str) -> Iterator[None]:
    """Refresh the lease from a thread while the (blocking) pipeline step runs."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(settings.HEARTBEAT_SECONDS):
                Deployment.objects.filter(pk=deployment_pk, lease_owner=owner).update(heartbeat_at=timezone.now())
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"lease-{deployment_pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# --- State changes --------------------------------------------------------------------------


def _transition(deployment: Deployment, old: str, new: str, **fields: Any) -> bool:
    updated = Deployment.objects.filter(pk=deployment.pk, state=old).update(state=new, **fields)
    if updated:
        deployment.state = new
        for key, value in fields.items():
            setattr(deployment, key, value)
        logger.info(f"deployment {old} -> {new}", extra=pipeline.log_context(deployment))
        pipeline.deploy_event(deployment, new)
    return bool(updated)


def deployment_fail(deployment: Deployment, code: str, message: str) -> None:
    updated = Deployment.objects.filter(pk=deployment.pk, state__in=Deployment.ACTIVE_STATES).update(
        state=State.FAILED, error_code=code, error_message=message, finished_at=timezone.now()
    )
    if not updated:
        return
    pipeline.log_append(deployment, f"-----> Failed: {code}: {message}", source=None)
    pipeline.deploy_event(deployment, State.FAILED, f"{code}: {message}")
    logger.warning("deployment failed", extra={**pipeline.log_context(deployment), "code": code})
    pipeline.remove_containers(deployment)
    pipeline.cleanup_build_dir(deployment)


def deployment_supersede(deployment: Deployment) -> None:
    updated = Deployment.objects.filter(pk=deployment.pk, state__in=Deployment.ACTIVE_STATES).update(
        state=State.SUPERSEDED, finished_at=timezone.now()
    )
    if updated:
        pipeline.log_append(deployment, "-----> Superseded by a newer deployment before it went live", source=None)
        pipeline.deploy_event(deployment, State.SUPERSEDED, "a newer deployment replaced it before it went live")
        logger.info("deployment superseded before going live", extra=pipeline.log_context(deployment))
        pipeline.remove_containers(deployment)
        pipeline.cleanup_build_dir(deployment)


# Deployments that build (and so hold a build slot of their tenant); rollbacks and releases reuse
# an image and pass through `building` in an instant.
BUILD_KINDS = (Deployment.SourceKind.ARCHIVE, Deployment.SourceKind.GIT, Deployment.SourceKind.IMAGE)
BUILD_WAIT_MESSAGE = "Waiting for one of this tenant's other builds to finish"


def build_slot_claim(deployment: Deployment) -> bool:
    """queued -> building, if the tenant has fewer than MAX_CONCURRENT_BUILDS builds running, or
    if it is an upload whose image already exists (it builds nothing, see `pipeline.build`).
    Count and claim share one transaction (IMMEDIATE on SQLite, the tenant's row lock on PostgreSQL,
    so two workers cannot both take the last slot); a build that waits stays queued rather than
    failing, since a busy tenant deserves a slower deploy, not a lost one."""
    if deployment.source_kind not in BUILD_KINDS:
        return _transition(deployment, State.QUEUED, State.BUILDING, started_at=timezone.now())
    if _build_slot_take(deployment):
        return True
    # Every slot is taken. Asked only now, outside the transaction (it hashes the tree and asks
    # podman), and it claims nothing: should the image go in the instant before the build looks
    # again, this one build runs beyond the tenant's limit rather than waiting after all.
    if deployment.state == State.QUEUED and pipeline.reuse_possible(deployment):
        return _transition(deployment, State.QUEUED, State.BUILDING, started_at=timezone.now())
    return False


def _build_slot_take(deployment: Deployment) -> bool:
    with transaction.atomic():
        row_lock(Tenant, deployment.app.tenant_id)
        building = (
            Deployment.objects.filter(
                app__tenant_id=deployment.app.tenant_id, state=State.BUILDING, source_kind__in=BUILD_KINDS
            )
            .exclude(pk=deployment.pk)
            .count()
        )
        if building >= int(settings.MAX_CONCURRENT_BUILDS):
            return False
        return _transition(deployment, State.QUEUED, State.BUILDING, started_at=timezone.now())


def _load(deployment_id: uuid.UUID) -> Deployment | None:
    deployment: Deployment | None = (
        Deployment.objects.select_related("app", "app__tenant").filter(public_id=deployment_id).first()
    )
    if deployment is not None:
        bind(tenant_id=deployment.app.tenant.public_id, app_id=deployment.app.public_id, deployment_id=deployment_id)
    return deployment


def _built_from_source(deployment: Deployment) -> pipeline.Built:
    kind = deployment.source_kind
    if kind == Deployment.SourceKind.ARCHIVE:
        return pipeline.build(deployment)
    if kind == Deployment.SourceKind.GIT:
        pipeline.fetch_git(deployment)
        return pipeline.build(deployment)
    if kind == Deployment.SourceKind.IMAGE:
        return pipeline.pull(deployment)
    # Rollback or config release: the image exists already.
    if not podman.image_exists(deployment.image_ref):
        raise PlatformError("rollback.image_missing", "The image of that deployment is no longer on the platform.")
    return pipeline.Built(
        image_ref=deployment.image_ref,
        image_id=deployment.image_id,
        web_command=deployment.web_command,
        release_command=deployment.release_command,
    )


def drive(deployment_id: uuid.UUID) -> None:
    """Move one deployment as far as it goes. Each phase starts from the state the row is in,
    so a rerun after a crash resumes where the last run stopped."""
    deployment = _load(deployment_id)
    if deployment is None or deployment.state in Deployment.FINAL_STATES:
        return
    if deployment.app.state != App.State.ACTIVE:
        deployment_fail(deployment, "app.deleting", "The app is being deleted.")
        return
    if pipeline.newer_deployment_exists(deployment):
        deployment_supersede(deployment)
        return
    hosts.run_here(deployment)

    if deployment.state == State.QUEUED and not build_slot_claim(deployment):
        # The tenant's other builds hold every slot: stay queued. The lease is released when this
        # returns, and the reconciler queues an unclaimed deployment again on its next pass.
        if BUILD_WAIT_MESSAGE not in deployment.log:
            pipeline.step(deployment, BUILD_WAIT_MESSAGE)
        return
    if deployment.state == State.BUILDING:
        built = _built_from_source(deployment)
        _transition(
            deployment,
            State.BUILDING,
            State.STARTING,
            image_ref=built.image_ref,
            image_id=built.image_id,
            web_command=built.web_command,
            release_command=built.release_command,
        )
    if deployment.state != State.STARTING:
        return

    deployment.refresh_from_db()
    if pipeline.newer_deployment_exists(deployment):
        deployment_supersede(deployment)
        return
    pipeline.network_ensure(deployment)
    runtime = pipeline.runtime_env(deployment)
    if deployment.release_command and not deployment.released:
        # The new sandboxes boot while `release:` runs; traffic moves only once both succeeded (a failed
        # release fails the deployment, which removes its replicas: nothing switches).
        pipeline.launch_replicas(deployment, runtime)
    pipeline.release(deployment, runtime)
    addresses = pipeline.start_replicas(deployment, runtime)
    if pipeline.newer_deployment_exists(deployment):
        deployment_supersede(deployment)
        return
    pipeline.step(deployment, "Switching the route")
    if not pipeline.route_switch(deployment, addresses):
        deployment_supersede(deployment)
        return
    _transition(deployment, State.STARTING, State.LIVE, finished_at=timezone.now(), went_live_at=timezone.now())
    pipeline.step(deployment, f"Live at {deployment.app.url}")
    pipeline.cleanup_build_dir(deployment)
    pipeline.retire_previous(deployment, drain_seconds=float(settings.RETIRE_DRAIN_SECONDS))


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.deployment_run")
def deployment_run(self: PlatformTask, deployment_id: str) -> None:
    did = uuid.UUID(deployment_id)
    deployment = _load(did)
    if deployment is not None and deployment.state == State.LIVE:
        # Going live happened; retiring the previous deployment may not have finished.
        try:
            pipeline.retire_previous(deployment)
        except Exception as exc:
            self.retry_if_transient(exc)
            raise
        return
    if deployment is None or deployment.state in Deployment.FINAL_STATES:
        return
    owner = str(self.request.id or uuid.uuid4())
    if not lease_claim(deployment.pk, owner):
        logger.info("deployment is being worked on elsewhere", extra=pipeline.log_context(deployment))
        return
    hold: float | None = None
    forwarded = False
    try:
        target = hosts.deployment_host(deployment)
        if target.name != hosts.this_host_name():
            # Placed on another host: its worker does the work. The lease is left as the reconciler leaves a
            # requeued one (fresh, claimable by any task), so the sweep does not queue it again meanwhile.
            Deployment.objects.filter(pk=deployment.pk, lease_owner=owner).update(
                lease_owner=REQUEUED, heartbeat_at=timezone.now()
            )
            forwarded = True
            context = {**pipeline.log_context(deployment), "host": target.name}
            try:
                deployment_run.apply_async((deployment_id,), queue=target.queue)
            except BROKER_ERRORS:
                logger.warning(
                    "deployment not sent to its host (broker down); the reconciler queues it again", extra=context
                )
                return
            logger.info("deployment sent to its host", extra=context)
            return
        Deployment.objects.filter(pk=deployment.pk).update(attempts=deployment.attempts + 1)
        with heartbeat(deployment.pk, owner):
            drive(did)
    except Exception as exc:
        hold = self.retry_delay(exc)
        if hold is not None:
            code = exc.code if isinstance(exc, DeployError) else type(exc).__name__
            logger.warning("transient failure, retrying", extra={**pipeline.log_context(deployment), "code": code})
            raise self.retry(exc=exc, countdown=hold) from exc
        if isinstance(exc, DeployError):
            deployment_fail(deployment, exc.code, exc.message)
        else:
            logger.error("deployment crashed", exc_info=exc, extra=pipeline.log_context(deployment))
            deployment_fail(
                deployment, "platform.error", "The platform failed to deploy this; the operators have the details."
            )
    finally:
        # While a retry is pending the lease is kept, so the reconciler does not queue it twice.
        if not forwarded:
            lease_release(deployment.pk, owner, hold_until=hold + settings.LEASE_SECONDS if hold else None)


@shared_task(bind=True, base=PlatformTask, name=pipeline.RETIRE_TASK)
def deployment_retire(self: PlatformTask, deployment_id: str, graceful: bool = False) -> None:
    """On the deployment's host: remove its containers and rows (sent by whichever host retired it). Idempotent;
    a message that reaches another host (the deployment was placed again meanwhile) is passed on."""
    deployment = _load(uuid.UUID(deployment_id))
    if deployment is None:
        return
    try:
        pipeline.remove_containers(deployment, graceful=graceful)
    except Exception as exc:
        self.retry_if_transient(exc)
        raise


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.app_teardown", max_retries=MAX_RETRIES * 4)
def app_teardown(self: PlatformTask, app_id: str) -> None:
    """Remove everything an app had: route, containers, secrets, images, add-on, build dirs, row."""
    app: App | None = App.objects.select_related("tenant").filter(public_id=uuid.UUID(app_id)).first()
    if app is None or app.state != App.State.DELETING:
        return
    bind(tenant_id=app.tenant.public_id, app_id=app.public_id)
    context = {"tenant_id": str(app.tenant.public_id), "app_id": app_id}
    fresh = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS)
    busy = Deployment.objects.filter(app=app, state__in=Deployment.ACTIVE_STATES, heartbeat_at__gte=fresh)
    try:
        if busy.exists():
            # A deployment task is mid-step; it will see the app is deleting and stop.
            raise PlatformError("app.teardown_busy", "A deployment is still running.", transient=True)
        with CaddyClient.from_settings() as caddy:
            caddy.route_delete(app.public_id)
        # After the route: nothing looks the name up any more.
        UpstreamHosts.from_settings().remove(app.public_id, context=context)
        for deployment in Deployment.objects.filter(app=app).select_related("app", "app__tenant"):
            if deployment.state in Deployment.ACTIVE_STATES:
                deployment_fail(deployment, "app.deleting", "The app was deleted.")
            pipeline.remove_containers(deployment)
            podman.image_remove(pipeline.app_image_ref(deployment.public_id))
            shutil.rmtree(deployment.build_dir, ignore_errors=True)
        for name in podman.containers_with_label("coltsfoot.app", app_id):
            podman.container_remove(name)
        addons.addon_teardown_for_app(app)
        redis_addons.teardown_for_app(app)
        logstore.store().delete(app_id)
    except Exception as exc:
        self.retry_if_transient(exc)
        logger.error("app teardown failed", exc_info=exc, extra=context)
        raise
    App.objects.filter(pk=app.pk, state=App.State.DELETING).delete()
    logger.info("app deleted", extra=context)


RECONCILE_LEASE = "reconcile"
# The collector's schedule is a lease that is never released: whoever takes it runs the collector,
# and nobody can take it again until it expires COLLECT_SECONDS later.
COLLECT_LEASE = "collect"


def collect_if_due(owner: str) -> dict[str, int] | None:
    """Run the image/secret/build-dir collector if COLLECT_SECONDS have passed since the last run.
    Its failure is logged, not raised: the reconcile pass it rides on has already done its job."""
    if not named_lease.lease_acquire(COLLECT_LEASE, owner, settings.COLLECT_SECONDS):
        return None
    try:
        return collector.collect()
    except Exception as exc:
        if not is_transient(exc):
            logger.error("collector run failed", exc_info=exc)
        else:
            logger.warning("collector run failed, next time then: %s", type(exc).__name__)
        return None


def _addons_requeue_stalled(stale: datetime) -> int:
    """Add-ons whose task has not touched them for a lease: queue that task again."""
    count = 0
    for addon in Addon.objects.filter(updated_at__lt=stale).exclude(state__in=[Addon.State.READY, Addon.State.FAILED]):
        task = addon_provision if addon.state == Addon.State.PROVISIONING else addon_deprovision
        task.delay(str(addon.public_id))
        count += 1
    return count


def _redis_requeue_stalled(stale: datetime) -> int:
    """Redis add-ons whose task has not touched them for a lease: queue that task again (a duplicate finds
    the add-on's lease held, or its work done, and stops)."""
    count = 0
    waiting = RedisAddon.objects.filter(
        updated_at__lt=stale, state__in=[RedisAddon.State.PROVISIONING, RedisAddon.State.DEPROVISIONING]
    )
    for addon in waiting:
        task = redis_provision if addon.state == RedisAddon.State.PROVISIONING else redis_deprovision
        task.delay(str(addon.public_id))
        count += 1
    return count


def requeue_work(now: datetime | None = None) -> dict[str, int]:
    """Queue again whatever work has no live task: deployments whose worker died (stale lease)
    or whose message never reached a worker (queued and unclaimed for OUTBOX_SECONDS, e.g. the
    broker was down when the API enqueued it), app deletions, stalled add-ons; finish
    interrupted retirements. Leases make a duplicate harmless: the second task finds the lease
    held and stops."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.LEASE_SECONDS)
    unclaimed = now - timedelta(seconds=settings.OUTBOX_SECONDS)
    stuck = Deployment.objects.filter(state__in=Deployment.ACTIVE_STATES).filter(
        Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, created_at__lt=unclaimed)
    )
    with transaction.atomic():
        # On PostgreSQL the rows a worker is claiming at this instant are locked by its UPDATE: skip them
        # (its claim wins and the deployment is not stalled) rather than wait and queue it needlessly. The
        # ids are exactly the rows marked below, so a row is requeued only if this sweep marked it.
        locked = stuck.select_for_update(skip_locked=True).values_list("public_id", flat=True)
        deployments = [str(pid) for pid in locked]
        # Mark them requeued (a fresh heartbeat any task may claim), so the next sweep does not
        # queue them again while the first requeued task is still waiting for a worker.
        Deployment.objects.filter(public_id__in=deployments).update(heartbeat_at=now, lease_owner=REQUEUED)
    for deployment_id in deployments:
        logger.info("requeueing stalled deployment", extra={"deployment_id": deployment_id})
        deployment_run.delay(deployment_id)
    deleting = [str(pid) for pid in App.objects.filter(state=App.State.DELETING).values_list("public_id", flat=True)]
    for app_id in deleting:
        app_teardown.delay(app_id)
    # Replicas of finished deployments whose removal was interrupted (the sweep is idempotent).
    # Only those finished a lease ago: a fresh one may still be being retired by its own task.
    leftovers = (
        Deployment.objects.filter(
            state__in=[State.SUPERSEDED, State.FAILED], replicas__isnull=False, finished_at__lt=stale
        )
        .select_related("app", "app__tenant")
        .distinct()
    )
    for deployment in leftovers:
        pipeline.remove_containers(deployment, graceful=deployment.state == State.SUPERSEDED)
    addon_count = _addons_requeue_stalled(stale) + _redis_requeue_stalled(stale)
    auth_repaired = addons.addons_repair_auth()
    backup_count = _backups_requeue_stalled(stale, now)
    purged = purge_expired()
    return {
        "deployments": len(deployments),
        "apps": len(deleting),
        "addons": addon_count + auth_repaired,
        "backups": backup_count,
        "idempotency": purged,
    }


def _backups_requeue_stalled(stale: datetime, now: datetime) -> int:
    """Backups and restores still queued that no task has touched for a lease (their message was
    lost): queued again, and touched, so the next sweep waits for that message first. A task that
    schedules a retry touches its row to the retry's time, so a pending retry is not lost work. A
    duplicate is harmless: each task claims its row with a conditional update."""
    count = 0
    backups_stalled = AddonBackup.objects.filter(state=AddonBackup.State.QUEUED, updated_at__lt=stale)
    restores_stalled = AddonBackup.objects.filter(restore_state=AddonBackup.RestoreState.QUEUED, updated_at__lt=stale)
    for queryset, task in ((backups_stalled, addon_backup_run), (restores_stalled, addon_restore_run)):
        ids = [str(public_id) for public_id in queryset.values_list("public_id", flat=True)]
        queryset.filter(public_id__in=ids).update(updated_at=now)
        for backup_id in ids:
            logger.info("requeueing stalled backup work", extra={"backup_id": backup_id, "task": task.name})
            task.delay(backup_id)
        count += len(ids)
    return count


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.reconcile")
def reconcile(self: PlatformTask, host: str = "") -> dict[str, object]:
    """Every COLTSFOOT_RECONCILE_SECONDS (beat), at worker start, and at a crashed replica's restart time:
    queue lost work again, then compare what runs with what should run and repair the difference.

    Beat sends it without a host to the shared queue. The worker that receives it runs the control part under
    the one control lease (lost work, the hosts' heartbeats and failover, the Redis add-ons, the collector),
    then its own host's pass, and sends the pass to every other live host's queue (`host` set): each host
    repairs only the replicas placed on it, from the containers labelled with its name. Passes of one host
    never overlap, nor do control parts: each holds a lease that expires if its worker dies."""
    me = hosts.this_host_name()
    if host and host != me:
        with contextlib.suppress(*BROKER_ERRORS):
            reconcile.apply_async(kwargs={"host": host}, queue=host_queue(host))
        return {"forwarded": host}
    owner = str(self.request.id or uuid.uuid4())
    control = not host and named_lease.lease_acquire(RECONCILE_LEASE, owner, settings.RECONCILE_LEASE_SECONDS)
    counts: dict[str, object] = {}
    report = None
    try:
        if control:
            counts.update(requeue_work())
            counts["hosts"] = hosts.fail_over()
        host_lease = f"{RECONCILE_LEASE}-{me}"
        if named_lease.lease_acquire(host_lease, owner, settings.RECONCILE_LEASE_SECONDS):
            try:
                report = reconcile_pass(host=me, redis=bool(control))
            finally:
                named_lease.lease_release(host_lease, owner)
        if control:
            counts["collected"] = collect_if_due(owner)
    finally:
        if control:
            named_lease.lease_release(RECONCILE_LEASE, owner)
    if control:
        for name in hosts.live_host_names(exclude=me):
            with contextlib.suppress(*BROKER_ERRORS):
                reconcile.apply_async(kwargs={"host": name}, queue=host_queue(name))
    if report is None:
        logger.debug("a reconcile pass of this host is already running")
        return {**counts, "skipped": True}
    counts["pass"] = report.as_dict()
    if report.wake_in is not None and report.wake_in < settings.CELERY_BEAT_RECONCILE_SECONDS:
        # A crashed replica's backoff ends before the next periodic pass: come back for it then, on this host.
        with contextlib.suppress(*BROKER_ERRORS):
            reconcile.apply_async(kwargs={"host": me}, queue=host_queue(me), countdown=max(0.5, report.wake_in))
    # A network removed since, the index's addresses moving, a table someone deleted (every
    # FIREWALL_SYNC_SECONDS; a network the pass recreated was filtered by the pass itself, before its
    # replicas started). Last, so it never delays a restart the pass scheduled.
    counts["firewall"] = firewall_sync()
    return counts


@worker_ready.connect
def _reconcile_on_start(**_: Any) -> None:
    close_old_connections()
    reconcile.delay()


# --- PostgreSQL add-ons ---------------------------------------------------------------------


def _load_addon(addon_id: str) -> Addon | None:
    addon: Addon | None = Addon.objects.select_related("app", "app__tenant").filter(public_id=addon_id).first()
    if addon is not None:
        bind(tenant_id=addon.app.tenant.public_id, app_id=addon.app.public_id)
    return addon


def _rerelease(app_pk: int) -> None:
    app = App.objects.select_related("tenant", "live_deployment").get(pk=app_pk)
    if app.state == App.State.ACTIVE:
        release_current(app)


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.addon_provision")
def addon_provision(self: PlatformTask, addon_id: str) -> None:
    addon = _load_addon(addon_id)
    if addon is None or addon.state != Addon.State.PROVISIONING:
        return
    try:
        addons.provision(addon)
    except Exception as exc:
        Addon.objects.filter(pk=addon.pk).update(updated_at=timezone.now())  # not stalled: the reconciler waits
        self.retry_if_transient(exc)
        logger.error("postgres add-on provisioning failed", exc_info=exc, extra=addons.log_context(addon))
        # Leave nothing half-made behind; if the cluster is down this fails too, and a later
        # POST (or DELETE) converges, since every step is idempotent by name.
        with contextlib.suppress(Exception):
            addons.deprovision(addon)
        Addon.objects.filter(pk=addon.pk, state=Addon.State.PROVISIONING).update(
            state=Addon.State.FAILED,
            error_code="addon.provision_failed",
            error_message="The database could not be created; try again later.",
        )
        return
    with transaction.atomic():
        if Addon.objects.filter(pk=addon.pk, state=Addon.State.PROVISIONING).update(
            state=Addon.State.READY, error_code="", error_message=""
        ):
            transaction.on_commit(lambda: _rerelease(addon.app_id))


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.addon_deprovision")
def addon_deprovision(self: PlatformTask, addon_id: str) -> None:
    addon = _load_addon(addon_id)
    if addon is None or addon.state != Addon.State.DEPROVISIONING:
        return
    try:
        addons.deprovision_exclusive(addon)
    except Exception as exc:
        Addon.objects.filter(pk=addon.pk).update(updated_at=timezone.now())  # not stalled: the reconciler waits
        self.retry_if_transient(exc)
        logger.error("postgres add-on deprovisioning failed", exc_info=exc, extra=addons.log_context(addon))
        raise
    app_pk = addon.app_id
    Addon.objects.filter(pk=addon.pk, state=Addon.State.DEPROVISIONING).delete()
    _rerelease(app_pk)


# --- Redis add-ons --------------------------------------------------------------------------


def _load_redis(addon_id: str) -> RedisAddon | None:
    addon: RedisAddon | None = (
        RedisAddon.objects.select_related("app", "app__tenant").filter(public_id=uuid.UUID(addon_id)).first()
    )
    if addon is not None:
        bind(tenant_id=addon.app.tenant.public_id, app_id=addon.app.public_id)
    return addon


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.redis_provision")
def redis_provision(self: PlatformTask, addon_id: str) -> None:
    """provisioning -> ready: the container runs with the add-on's plan. The app is re-released when its
    REDIS_URL changed (the first time, or the Redis came back on another address)."""
    addon = _load_redis(addon_id)
    if addon is None or addon.state != RedisAddon.State.PROVISIONING:
        return
    owner = str(self.request.id or uuid.uuid4())
    lease = redis_addons.lease_name(addon.public_id)
    if not named_lease.lease_acquire(lease, owner, redis_addons.LEASE_SECONDS):
        logger.info("redis add-on is being worked on elsewhere", extra=redis_addons.log_context(addon))
        return
    try:
        try:
            address = redis_addons.provision(addon)
        except Exception as exc:
            RedisAddon.objects.filter(pk=addon.pk).update(updated_at=timezone.now())  # not stalled
            self.retry_if_transient(exc)
            logger.error("redis add-on provisioning failed", exc_info=exc, extra=redis_addons.log_context(addon))
            # Nothing half-made stays running; the data dir stays (a later POST finds its data again).
            with contextlib.suppress(Exception):
                podman.container_remove(redis.container_name(addon.public_id))
            RedisAddon.objects.filter(pk=addon.pk, state=RedisAddon.State.PROVISIONING).update(
                state=RedisAddon.State.FAILED,
                error_code="addon.provision_failed",
                error_message="The Redis could not be started; try again later.",
            )
            return
        moved = address != addon.address
        with transaction.atomic():
            if RedisAddon.objects.filter(pk=addon.pk, state=RedisAddon.State.PROVISIONING).update(
                state=RedisAddon.State.READY,
                address=address,
                error_code="",
                error_message="",
                started_at=timezone.now(),
                crash_streak=0,
                next_restart_at=None,
            ):
                logger.info("redis add-on ready", extra=redis_addons.log_context(addon))
                if moved:
                    transaction.on_commit(lambda: _rerelease(addon.app_id))
    finally:
        named_lease.lease_release(lease, owner)


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.redis_deprovision")
def redis_deprovision(self: PlatformTask, addon_id: str) -> None:
    """deprovisioning -> gone: container, secret and data removed, the row deleted, the app re-released
    without REDIS_URL."""
    addon = _load_redis(addon_id)
    if addon is None or addon.state != RedisAddon.State.DEPROVISIONING:
        return
    owner = str(self.request.id or uuid.uuid4())
    lease = redis_addons.lease_name(addon.public_id)
    if not named_lease.lease_acquire(lease, owner, redis_addons.LEASE_SECONDS):
        logger.info("redis add-on is being worked on elsewhere", extra=redis_addons.log_context(addon))
        return
    try:
        redis_addons.deprovision(addon)
    except Exception as exc:
        RedisAddon.objects.filter(pk=addon.pk).update(updated_at=timezone.now())  # not stalled
        named_lease.lease_release(lease, owner)
        self.retry_if_transient(exc)
        logger.error("redis add-on deprovisioning failed", exc_info=exc, extra=redis_addons.log_context(addon))
        raise
    app_pk = addon.app_id
    RedisAddon.objects.filter(pk=addon.pk, state=RedisAddon.State.DEPROVISIONING).delete()
    _rerelease(app_pk)


# --- Backups -----------------------------------------------------------------------------------

PLATFORM_BACKUP_LEASE = "platform-backup"


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.platform_backup")
def platform_backup_run(self: PlatformTask) -> dict[str, object]:
    """Every COLTSFOOT_PLATFORM_BACKUP_SECONDS (beat): an online backup of the platform DB into the
    backup directory, then retention. One at a time (a lease); a failed copy leaves no file behind."""
    owner = str(self.request.id or uuid.uuid4())
    if not named_lease.lease_acquire(PLATFORM_BACKUP_LEASE, owner, settings.CELERY_TASK_TIME_LIMIT):
        return {"skipped": True}
    try:
        info = platform_backup.platform_backup()
        removed = platform_backup.backups_prune()
    except platform_backup.PlatformBackupError as exc:
        self.retry_if_transient(exc)
        logger.error("platform DB backup failed: %s", exc)
        raise
    finally:
        named_lease.lease_release(PLATFORM_BACKUP_LEASE, owner)
    return {**info.as_dict(), "pruned": len(removed)}


def _load_backup(backup_id: str) -> AddonBackup | None:
    backup: AddonBackup | None = (
        AddonBackup.objects.select_related("app", "app__tenant").filter(public_id=backup_id).first()
    )
    if backup is not None:
        bind(tenant_id=backup.app.tenant.public_id, app_id=backup.app.public_id)
    return backup


def _ready_addon_of(backup: AddonBackup) -> Addon | None:
    addon: Addon | None = Addon.objects.filter(app_id=backup.app_id, state=Addon.State.READY).first()
    return addon


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.addon_backup_run")
def addon_backup_run(self: PlatformTask, backup_id: str) -> None:
    """Take a queued backup. Claimed queued -> running; a transient failure puts it back to queued
    and retries with backoff; anything else fails it with a code (no file is left behind)."""
    backup = _load_backup(backup_id)
    if backup is None:
        return
    if not AddonBackup.objects.filter(pk=backup.pk, state=AddonBackup.State.QUEUED).update(
        state=AddonBackup.State.RUNNING, started_at=timezone.now(), updated_at=timezone.now()
    ):
        return  # taken by another delivery of this task, or finished
    addon = _ready_addon_of(backup)
    if addon is None:
        AddonBackup.objects.filter(pk=backup.pk, state=AddonBackup.State.RUNNING).update(
            state=AddonBackup.State.FAILED,
            error_code="backup.database_not_ready",
            error_message="The app's database was being created or removed.",
            finished_at=timezone.now(),
        )
        return
    try:
        size = backups.backup_take(backup, addon)
    except Exception as exc:
        delay = self.retry_delay(exc)
        if delay is not None:
            AddonBackup.objects.filter(pk=backup.pk, state=AddonBackup.State.RUNNING).update(
                state=AddonBackup.State.QUEUED, updated_at=timezone.now() + timedelta(seconds=delay)
            )
            raise self.retry(exc=exc, countdown=delay) from exc
        logger.error("database backup failed", exc_info=exc, extra=backup_log_context(backup))
        AddonBackup.objects.filter(pk=backup.pk, state=AddonBackup.State.RUNNING).update(
            state=AddonBackup.State.FAILED,
            error_code="backup.failed",
            error_message="The database could not be backed up; try again later.",
            finished_at=timezone.now(),
        )
        return
    if (
        AddonBackup.objects.filter(pk=backup.pk, state=AddonBackup.State.RUNNING).update(
            state=AddonBackup.State.SUCCEEDED,
            size=size,
            finished_at=timezone.now(),
            updated_at=timezone.now(),
            error_code="",
            error_message="",
        )
        and backup.kind == AddonBackup.Kind.SCHEDULED
    ):
        backups.app_backups_prune(backup.app_id)


# How long a restore waits for a deploy that started after it was accepted (the API refuses one asked
# for during a deploy): RESTORE_WAIT_RETRIES times RESTORE_WAIT_SECONDS, with jitter.
RESTORE_WAIT_RETRIES = 40
RESTORE_WAIT_SECONDS = 15.0


def _restore_fail(backup: AddonBackup, code: str, message: str) -> None:
    AddonBackup.objects.filter(pk=backup.pk, restore_state__in=AddonBackup.ACTIVE_RESTORE_STATES).update(
        restore_state=AddonBackup.RestoreState.FAILED,
        restore_error_code=code,
        restore_error_message=message,
        restored_at=timezone.now(),
    )
    logger.warning("database restore failed", extra={**backup_log_context(backup), "code": code})


@shared_task(
    bind=True, base=PlatformTask, name="coltsfoot.addon_restore_run", max_retries=RESTORE_WAIT_RETRIES + MAX_RETRIES
)
def addon_restore_run(self: PlatformTask, backup_id: str) -> None:
    """Restore a backup into the app's database, then re-release the app (its processes reconnect to
    restored data, and a `release:` migration runs against it). Never while the app deploys: a deploy
    that started in between is waited for; an add-on that is no longer ready fails the restore."""
    backup = _load_backup(backup_id)
    if backup is None or backup.restore_state != AddonBackup.RestoreState.QUEUED:
        return
    addon = _ready_addon_of(backup)
    if addon is None:
        _restore_fail(backup, "backup.database_not_ready", "The app's database was being created or removed.")
        return
    if Deployment.objects.filter(app_id=backup.app_id, state__in=Deployment.ACTIVE_STATES).exists():
        if self.request.retries >= RESTORE_WAIT_RETRIES:
            _restore_fail(backup, "backup.deploy_in_progress", "The app kept deploying; restore once it is idle.")
            return
        logger.info("restore waits for a deployment", extra=backup_log_context(backup))
        wait = RESTORE_WAIT_SECONDS * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
        AddonBackup.objects.filter(pk=backup.pk).update(updated_at=timezone.now() + timedelta(seconds=wait))
        raise self.retry(countdown=wait)
    if not AddonBackup.objects.filter(pk=backup.pk, restore_state=AddonBackup.RestoreState.QUEUED).update(
        restore_state=AddonBackup.RestoreState.RUNNING, updated_at=timezone.now()
    ):
        return
    try:
        backups.backup_restore_into(backup, addon)
    except Exception as exc:
        delay = self.retry_delay(exc)
        if delay is not None:
            AddonBackup.objects.filter(pk=backup.pk, restore_state=AddonBackup.RestoreState.RUNNING).update(
                restore_state=AddonBackup.RestoreState.QUEUED, updated_at=timezone.now() + timedelta(seconds=delay)
            )
            raise self.retry(exc=exc, countdown=delay) from exc
        logger.error("database restore failed", exc_info=exc, extra=backup_log_context(backup))
        # pg_restore ran in one transaction: the database is as it was before.
        _restore_fail(backup, "backup.restore_failed", "The backup could not be restored; the database is unchanged.")
        return
    with transaction.atomic():
        if AddonBackup.objects.filter(pk=backup.pk, restore_state=AddonBackup.RestoreState.RUNNING).update(
            restore_state=AddonBackup.RestoreState.SUCCEEDED, restored_at=timezone.now()
        ):
            transaction.on_commit(lambda: _rerelease(backup.app_id))


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.addon_backups_daily")
def addon_backups_daily(self: PlatformTask) -> dict[str, int]:
    """Every COLTSFOOT_TENANT_BACKUP_SECONDS (beat): one scheduled backup per ready add-on, then
    retention, stale runs failed and orphaned files removed."""
    return {
        "interrupted": backups.backups_fail_stale(),
        "queued": backups.backups_schedule(),
        "pruned": backups.backups_prune(),
        "orphans": backups.orphan_files_remove(),
    }


# --- Custom domains -------------------------------------------------------------------------


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.domain_verify")
def domain_verify(self: PlatformTask, domain_id: str) -> str:
    """Check a pending domain's TXT record now (asked for by the API, or due by its backoff)."""
    return domains.domain_check(uuid.UUID(domain_id))


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.domain_certificate_check")
def domain_certificate_check(self: PlatformTask, domain_id: str) -> bool:
    """Have the edge present the verified domain's certificate and record its expiry; retried with
    backoff while there is none yet (beat looks again after that)."""
    try:
        return domains.certificate_check(uuid.UUID(domain_id))
    except Exception as exc:
        self.retry_if_transient(exc)
        logger.warning("custom domain certificate not seen", extra={"domain_id": domain_id, "error": str(exc)})
        return False


# How often a route refresh waits for another refresh of the same app before it gives up (the reconciler
# then brings the route in line anyway).
ROUTE_REFRESH_WAITS = 60


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.app_route_refresh", max_retries=ROUTE_REFRESH_WAITS)
def app_route_refresh(self: PlatformTask, app_id: str) -> bool:
    """Rewrite a live app's route with its current hostnames (a domain verified or removed) and
    force_https. Idempotent: it writes what the DB says now, whenever it runs."""
    app: App | None = App.objects.select_related("tenant").filter(public_id=uuid.UUID(app_id)).first()
    if app is None:
        return False
    bind(tenant_id=app.tenant.public_id, app_id=app.public_id)
    # One refresh of an app at a time: two running side by side could each read the hostnames before the
    # other's change and the older read could be written last. The next one waits its turn instead.
    lease, owner = named_lease.route_lease(app_id), str(self.request.id or uuid.uuid4())
    if not named_lease.lease_acquire(lease, owner, float(settings.CADDY_TIMEOUT_SECONDS) * 6):
        raise self.retry(countdown=0.5 + random.random(), max_retries=ROUTE_REFRESH_WAITS)  # noqa: S311
    try:
        refreshed = pipeline.route_refresh(app)
    except Exception as exc:
        self.retry_if_transient(exc)
        raise
    finally:
        named_lease.lease_release(lease, owner)
    if refreshed:
        logger.info("app route refreshed")
    return refreshed


@shared_task(bind=True, base=PlatformTask, name="coltsfoot.domains_check")
def domains_check(self: PlatformTask) -> dict[str, int]:
    """Beat: queue the ownership checks and certificate looks that are due."""
    pending, certificates = domains.due()
    for domain_id in pending:
        domain_verify.delay(domain_id)
    for domain_id in certificates:
        domain_certificate_check.delay(domain_id)
    return {"verify": len(pending), "certificates": len(certificates)}
