"""Writes to apps. Views call these; the teardown is queued on commit for the workflow."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.db import transaction

from audit import actions
from audit.services import ACCEPTED
from audit.services import audit_record
from core.errors import Conflict
from core.errors import Unprocessable
from core.locks import row_lock
from core.queue import enqueue_on_commit
from platform_apps.deployments.services import release_current
from platform_apps.models import App
from tenants.models import Tenant

logger = logging.getLogger(__name__)

CPU_STEP = Decimal("0.01")  # App.cpus has two decimal places


def _check_sizing(tenant: Tenant, *, replicas: int | None, memory_mb: int | None, cpus: Decimal | None) -> None:
    if replicas is not None and replicas > tenant.max_replicas:
        raise Unprocessable(
            "quota.replicas_exceeded",
            f"This tenant may run at most {tenant.max_replicas} replicas per app.",
            details={"max_replicas": tenant.max_replicas},
        )
    if memory_mb is not None and memory_mb > tenant.max_memory_mb:
        raise Unprocessable(
            "quota.memory_exceeded",
            f"This tenant may give each replica at most {tenant.max_memory_mb} MiB.",
            details={"max_memory_mb": tenant.max_memory_mb},
        )
    cap = max_cpus_per_replica()
    if cpus is not None and cpus > cap:
        # More than the host has cannot be used by one replica anyway; it would only let the replica's
        # cfs quota exceed the machine and hide how much of it the tenant's quota really buys.
        raise Unprocessable(
            "quota.cpus_per_replica_exceeded",
            f"A replica may have at most {cap} CPUs on this platform.",
            details={"max_cpus_per_replica": float(cap)},
        )


def max_cpus_per_replica() -> Decimal:
    """The per-replica CPU cap: `COLTSFOOT_MAX_CPUS_PER_REPLICA`, by default the host's cores."""
    return Decimal(str(settings.MAX_CPUS_PER_REPLICA)).quantize(CPU_STEP)


def _cpus(value: float) -> Decimal:
    return Decimal(str(value)).quantize(CPU_STEP)


def _check_cpu_quota(tenant: Tenant, *, app: App | None, replicas: int, cpus: Decimal) -> None:
    """The tenant's CPU quota: replicas x cpus summed over its apps (those being deleted included, as their
    containers still run until the teardown) stays within `max_cpus`. A change that does not raise the
    tenant's use is always allowed, so an admin lowering the quota never blocks scaling down."""
    others = App.objects.filter(tenant=tenant)
    if app is not None:
        others = others.exclude(pk=app.pk)
    # At most max_apps rows: summed here, in exact decimals (SQLite would multiply in floats).
    used = sum((int(r) * Decimal(c) for r, c in others.values_list("replicas", "cpus")), Decimal(0))
    current = used + (int(app.replicas) * Decimal(app.cpus) if app is not None else Decimal(0))
    wanted = used + replicas * cpus
    limit = Decimal(tenant.max_cpus)
    if wanted > limit and wanted > current:
        raise Conflict(
            "quota.cpus_exceeded",
            f"This tenant's apps may use at most {limit} CPUs in all (replicas x cpus); "
            f"the others already use {used}, so this app can have at most {max(limit - used, Decimal(0))}.",
            details={"max_cpus": float(limit), "used_cpus": float(used), "requested_cpus": float(replicas * cpus)},
        )


def _reads_as_another_tenant(tenant: Tenant, name: str) -> bool:
    """Whether `<name>-<slug>` could also be read as another tenant's hostname: some other tenant's
    slug is what follows one of its hyphens (`a-b-c` is tenant `c`'s app `a-b`, and tenant `b-c`'s
    app `a`). New slugs have no hyphen, so this concerns only tenants from before that rule."""
    label = f"{name}-{tenant.slug}"
    tails = [label[index + 1 :] for index, char in enumerate(label) if char == "-"]
    return Tenant.objects.filter(slug__in=tails).exclude(pk=tenant.pk).exists()


@transaction.atomic
def app_create(*, tenant: Tenant, name: str, replicas: int, memory_mb: int, cpus: float, deploy_branch: str) -> App:
    size = _cpus(cpus)
    _check_sizing(tenant, replicas=replicas, memory_mb=memory_mb, cpus=size)
    # Count-then-insert: serialised per tenant (IMMEDIATE on SQLite, the tenant's row lock on PostgreSQL).
    row_lock(Tenant, tenant.pk)
    if App.objects.filter(tenant=tenant).count() >= tenant.max_apps:
        raise Conflict(
            "quota.apps_exceeded",
            f"This tenant already has its maximum of {tenant.max_apps} apps.",
            details={"max_apps": tenant.max_apps},
        )
    if App.objects.filter(tenant=tenant, name=name).exists():
        raise Conflict("app.name_taken", f"An app named {name!r} already exists.")
    _check_cpu_quota(tenant, app=None, replicas=replicas, cpus=size)
    hostname = App.hostname_for(name, tenant.slug)
    if App.objects.filter(hostname=hostname).exists() or _reads_as_another_tenant(tenant, name):
        raise Conflict("app.hostname_taken", f"The hostname {hostname} is already taken; choose another name.")
    try:
        with transaction.atomic():
            app = App.objects.create(
                tenant=tenant,
                name=name,
                hostname=hostname,
                replicas=replicas,
                memory_mb=memory_mb,
                cpus=size,
                deploy_branch=deploy_branch,
            )
    except IntegrityError as exc:  # another tenant's app took the hostname in the meantime
        raise Conflict("app.name_taken", f"An app named {name!r} already exists.") from exc
    logger.info("app created", extra={"app_id": str(app.public_id)})
    audit_record(
        action=actions.APP_CREATE,
        tenant_id=tenant.pk,
        object_type="app",
        object_id=app.public_id,
        app_id=app.public_id,
        details={"name": name},
    )
    return app


@transaction.atomic
def app_update(*, app: App, changes: dict[str, Any]) -> App:
    if app.state == App.State.DELETING:
        raise Conflict("app.deleting", "This app is being deleted.")
    cpus = _cpus(changes["cpus"]) if changes.get("cpus") is not None else None
    row_lock(Tenant, app.tenant_id)  # the CPU quota sums the tenant's other apps: see app_create
    _check_sizing(app.tenant, replicas=changes.get("replicas"), memory_mb=changes.get("memory_mb"), cpus=cpus)
    if changes.get("replicas") is not None or cpus is not None:
        _check_cpu_quota(
            app.tenant,
            app=app,
            replicas=int(changes.get("replicas") or app.replicas),
            cpus=cpus if cpus is not None else Decimal(app.cpus),
        )
    fields = []
    for field in ("replicas", "memory_mb", "deploy_branch"):
        if changes.get(field) is not None:
            setattr(app, field, changes[field])
            fields.append(field)
    if cpus is not None:
        app.cpus = cpus
        fields.append("cpus")
    if changes.get("force_https") is not None and bool(changes["force_https"]) != app.force_https:
        app.force_https = bool(changes["force_https"])
        fields.append("force_https")
    if fields:
        app.save(update_fields=[*fields, "updated_at"])
        logger.info("app updated", extra={"fields": fields})
    if "force_https" in fields:
        # The route's redirect changes now, without a release.
        enqueue_on_commit("coltsfoot.app_route_refresh", str(app.public_id))
    release = None
    if {"replicas", "memory_mb", "cpus"} & set(fields):
        # Scaling takes effect now: the live image is released again with the new size.
        release = release_current(app)
    audit_record(
        action=actions.APP_UPDATE,
        tenant_id=app.tenant_id,
        object_type="app",
        object_id=app.public_id,
        app_id=app.public_id,
        details={"fields": fields, "deployment_id": str(release.public_id) if release else None},
    )
    return app


@transaction.atomic
def app_delete(*, app: App) -> App:
    """Mark the app for deletion and queue the teardown of its containers, route and add-ons."""
    updated = App.objects.filter(pk=app.pk, state=App.State.ACTIVE).update(state=App.State.DELETING)
    app.state = App.State.DELETING
    if updated:
        logger.info("app deletion requested")
    # Re-enqueue even when already deleting: the teardown is idempotent, and a lost task must
    # not leave the app stuck in "deleting" forever.
    enqueue_on_commit("coltsfoot.app_teardown", str(app.public_id))
    audit_record(
        action=actions.APP_DELETE,
        tenant_id=app.tenant_id,
        object_type="app",
        object_id=app.public_id,
        outcome=ACCEPTED,
        app_id=app.public_id,
        details={"already_deleting": not updated},
    )
    return app
