"""Writes to PostgreSQL add-ons: record the intent, queue the task on commit."""

from __future__ import annotations

import logging
import secrets
import uuid

from django.db import transaction

from core import crypto
from core.errors import Conflict
from core.errors import NotFound
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import ConfigVar

logger = logging.getLogger(__name__)


def _context(app: App, addon: Addon) -> dict[str, str]:
    return {"tenant_id": str(app.tenant.public_id), "app_id": str(app.public_id), "addon_id": str(addon.public_id)}


@transaction.atomic
def addon_create(*, app: App) -> Addon:
    from drivers import postgres
    from provisioning import tasks

    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    addon: Addon | None = Addon.objects.filter(app=app).first()
    if addon is not None and addon.state in (Addon.State.PROVISIONING, Addon.State.READY):
        raise Conflict("addon.exists", "This app already has a PostgreSQL database.")
    if addon is not None and addon.state == Addon.State.DEPROVISIONING:
        raise Conflict("addon.deprovisioning", "The app's database is being removed; try again when it is gone.")
    if ConfigVar.objects.filter(app=app, key="DATABASE_URL").exists():
        raise Conflict("config.reserved_key", "Remove the app's own DATABASE_URL config var first.")
    if addon is None:
        public_id = uuid.uuid4()
        addon = Addon.objects.create(
            app=app,
            public_id=public_id,
            role_name=postgres.role_name(public_id),
            database_name=postgres.database_name(public_id),
            password_encrypted=crypto.encrypt(secrets.token_urlsafe(32)),
        )
    else:  # failed before: try again with the same names, so whatever was half-made converges
        addon.state = Addon.State.PROVISIONING
        addon.error_code = addon.error_message = ""
        addon.save(update_fields=["state", "error_code", "error_message", "updated_at"])
    addon_id = str(addon.public_id)
    transaction.on_commit(lambda: tasks.addon_provision.delay(addon_id))
    logger.info("postgres add-on requested", extra=_context(app, addon))
    return addon


def addon_get(*, app: App) -> Addon:
    addon: Addon | None = Addon.objects.select_related("app").filter(app=app).first()
    if addon is None:
        raise NotFound("add-on")
    return addon


@transaction.atomic
def addon_delete(*, app: App) -> Addon:
    from provisioning import tasks

    addon = addon_get(app=app)
    if addon.state == Addon.State.PROVISIONING:
        raise Conflict("addon.provisioning", "The database is still being created; delete it once it is ready.")
    Addon.objects.filter(pk=addon.pk).update(state=Addon.State.DEPROVISIONING)
    addon.state = Addon.State.DEPROVISIONING
    addon_id = str(addon.public_id)
    transaction.on_commit(lambda: tasks.addon_deprovision.delay(addon_id))
    logger.info("postgres add-on removal requested", extra=_context(app, addon))
    return addon
