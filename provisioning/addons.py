"""Managed PostgreSQL add-ons: the steps the Celery tasks run, and the app's DATABASE_URL."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core import crypto
from drivers import podman
from drivers import postgres
from platform_apps.models import Addon
from platform_apps.models import App
from provisioning.pipeline import tenant_network

logger = logging.getLogger(__name__)


def log_context(addon: Addon) -> dict[str, str]:
    return {
        "tenant_id": str(addon.app.tenant.public_id),
        "app_id": str(addon.app.public_id),
        "addon_id": str(addon.public_id),
    }


def pgbouncer_host(app: App) -> str:
    """Where the app's containers reach PgBouncer: a configured address, else the gateway of the
    tenant's podman network (the host side of its bridge)."""
    if settings.PGBOUNCER_HOST:
        return str(settings.PGBOUNCER_HOST)
    return podman.network_gateway(tenant_network(app.tenant.public_id))


def credentials(addon: Addon) -> postgres.PgCredentials:
    return postgres.PgCredentials(
        role=addon.role_name,
        database=addon.database_name,
        password=crypto.decrypt(addon.password_encrypted),
        host=pgbouncer_host(addon.app),
        port=int(settings.PGBOUNCER_PORT),
    )


def database_url(addon: Addon) -> str:
    return credentials(addon).database_url()


def provision(addon: Addon) -> None:
    postgres.provision(addon.public_id, crypto.decrypt(addon.password_encrypted))
    logger.info("postgres add-on provisioned", extra=log_context(addon))


def deprovision(addon: Addon) -> None:
    postgres.deprovision(addon.public_id)
    logger.info("postgres add-on deprovisioned", extra=log_context(addon))


def addon_teardown_for_app(app: App) -> None:
    addon: Addon | None = Addon.objects.select_related("app", "app__tenant").filter(app=app).first()
    if addon is None:
        return
    deprovision(addon)
    addon.delete()


def addons_requeue_stalled() -> int:
    from provisioning import tasks

    stale = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS)
    count = 0
    for addon in Addon.objects.filter(updated_at__lt=stale).exclude(state__in=[Addon.State.READY, Addon.State.FAILED]):
        if addon.state == Addon.State.PROVISIONING:
            tasks.addon_provision.delay(str(addon.public_id))
        else:
            tasks.addon_deprovision.delay(str(addon.public_id))
        count += 1
    return count


def addons_repair_auth() -> int:
    """Ready add-ons whose role is missing from PgBouncer's auth_file (it was rewritten or lost)
    are provisioned again, which re-registers them; one read of the file per pass."""
    registered = postgres.pgbouncer_registered_roles()
    if registered is None:
        return 0
    repaired = 0
    for addon in Addon.objects.filter(state=Addon.State.READY).select_related("app", "app__tenant"):
        if addon.role_name in registered:
            continue
        try:
            provision(addon)
        except postgres.PostgresError as exc:
            logger.warning("postgres add-on auth entry could not be restored: %s", exc, extra=log_context(addon))
            continue
        logger.warning("postgres add-on auth entry restored", extra=log_context(addon))
        repaired += 1
    return repaired
