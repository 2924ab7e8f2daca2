"""Writes to tenant database backups: record the intent, queue the task on commit.

A restore replaces the app's data, so it is refused (409, each with its own code) while anything else
is changing the app: a deploy in flight, the add-on being created or removed, another restore. The
checks and the write share one transaction, which on SQLite is IMMEDIATE (taken at BEGIN) and on
PostgreSQL first takes the tenant's row lock (core.locks), so two requests cannot both pass them;
the restore task checks again before it starts, and waits for a deploy that began in between."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from audit import actions
from audit.services import ACCEPTED
from audit.services import audit_record
from core import crypto
from core import sealed
from core.errors import Conflict
from core.locks import row_lock
from core.queue import enqueue_on_commit
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import Deployment
from tenants.models import Tenant

logger = logging.getLogger(__name__)


def log_context(backup: AddonBackup) -> dict[str, str]:
    return {
        "tenant_id": str(backup.app.tenant.public_id),
        "app_id": str(backup.app.public_id),
        "backup_id": str(backup.public_id),
    }


def _ready_addon(app: App) -> Addon:
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    addon: Addon | None = Addon.objects.filter(app=app).first()
    if addon is None:
        raise Conflict("backup.no_database", "This app has no PostgreSQL database.")
    if addon.state != Addon.State.READY:
        raise Conflict(
            "backup.database_not_ready",
            f"The app's database is {addon.state}; backups and restores need it ready.",
        )
    return addon


@transaction.atomic
def backup_create(*, app: App, kind: str = AddonBackup.Kind.MANUAL) -> AddonBackup:
    row_lock(Tenant, app.tenant_id)
    addon = _ready_addon(app)
    if AddonBackup.objects.filter(app=app, state__in=(AddonBackup.State.QUEUED, AddonBackup.State.RUNNING)).exists():
        raise Conflict("backup.in_progress", "A backup of this database is already being taken.")
    backup = AddonBackup.objects.create(
        app=app, addon=addon, kind=kind, key_encrypted=crypto.encrypt(sealed.new_data_key())
    )
    enqueue_on_commit("coltsfoot.addon_backup_run", str(backup.public_id))
    logger.info("database backup requested", extra={**log_context(backup), "kind": kind})
    _audit(actions.BACKUP_CREATE, app, backup)
    return backup


@transaction.atomic
def backup_restore(*, app: App, backup: AddonBackup) -> AddonBackup:
    row_lock(Tenant, app.tenant_id)
    if backup.state != AddonBackup.State.SUCCEEDED:
        raise Conflict("backup.not_restorable", f"This backup is {backup.state}; only a finished one can be restored.")
    _ready_addon(app)
    if Deployment.objects.filter(app=app, state__in=Deployment.ACTIVE_STATES).exists():
        raise Conflict(
            "backup.deploy_in_progress", "The app is being deployed; restore once the deployment has finished."
        )
    if AddonBackup.objects.filter(app=app, restore_state__in=AddonBackup.ACTIVE_RESTORE_STATES).exists():
        raise Conflict("backup.restore_in_progress", "A restore into this database is already running.")
    now = timezone.now()
    AddonBackup.objects.filter(pk=backup.pk).update(
        restore_state=AddonBackup.RestoreState.QUEUED,
        restore_requested_at=now,
        updated_at=now,
        restored_at=None,
        restore_error_code="",
        restore_error_message="",
    )
    backup.refresh_from_db()
    enqueue_on_commit("coltsfoot.addon_restore_run", str(backup.public_id))
    logger.info("database restore requested", extra=log_context(backup))
    _audit(actions.BACKUP_RESTORE, app, backup)
    return backup


def _audit(action: str, app: App, backup: AddonBackup) -> None:
    audit_record(
        action=action,
        tenant_id=app.tenant_id,
        object_type="backup",
        object_id=backup.public_id,
        outcome=ACCEPTED,
        app_id=app.public_id,
    )
