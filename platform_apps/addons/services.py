"""Writes to PostgreSQL add-ons: record the intent, queue the task on commit."""

from __future__ import annotations

import logging
import secrets
import uuid

from django.db import transaction

from audit import actions
from audit.services import ACCEPTED
from audit.services import audit_record
from core import crypto
from core.errors import Conflict
from core.queue import enqueue_on_commit
from drivers import postgres
from platform_apps.addons.selectors import addon_get
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import ConfigVar

logger = logging.getLogger(__name__)


@transaction.atomic
def addon_create(*, app: App) -> Addon:
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
        # The driver owns the naming scheme (a pure function of the add-on's id); the names are
        # stored so the API can show them before the workflow has created anything.
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
    enqueue_on_commit("coltsfoot.addon_provision", str(addon.public_id))
    logger.info("postgres add-on requested", extra={"addon_id": str(addon.public_id)})
    _audit(actions.ADDON_CREATE, app, addon)
    return addon


@transaction.atomic
def addon_delete(*, app: App) -> Addon:
    addon = addon_get(app=app)
    if addon.state == Addon.State.PROVISIONING:
        raise Conflict("addon.provisioning", "The database is still being created; delete it once it is ready.")
    if AddonBackup.objects.filter(app=app, restore_state__in=AddonBackup.ACTIVE_RESTORE_STATES).exists():
        raise Conflict("backup.restore_in_progress", "A backup is being restored into the database; delete it after.")
    Addon.objects.filter(pk=addon.pk).update(state=Addon.State.DEPROVISIONING)
    addon.state = Addon.State.DEPROVISIONING
    enqueue_on_commit("coltsfoot.addon_deprovision", str(addon.public_id))
    logger.info("postgres add-on removal requested", extra={"addon_id": str(addon.public_id)})
    _audit(actions.ADDON_DELETE, app, addon)
    return addon


def _audit(action: str, app: App, addon: Addon) -> None:
    audit_record(
        action=action,
        tenant_id=app.tenant_id,
        object_type="addon",
        object_id=addon.public_id,
        outcome=ACCEPTED,
        app_id=app.public_id,
    )
