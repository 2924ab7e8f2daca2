"""Managed PostgreSQL add-ons: the steps the Celery tasks run (the app's DATABASE_URL is `runtime`'s)."""

from __future__ import annotations

import logging

from core import crypto
from drivers import postgres
from platform_apps.models import Addon
from platform_apps.models import App

logger = logging.getLogger(__name__)


def log_context(addon: Addon) -> dict[str, str]:
    return {
        "tenant_id": str(addon.app.tenant.public_id),
        "app_id": str(addon.app.public_id),
        "addon_id": str(addon.public_id),
    }


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
