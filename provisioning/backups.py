"""Tenant database backups: the steps the Celery tasks run.

A backup streams `pg_dump` (as the tenant's own role: `drivers.postgres.tenant_dump`) through a sealed
writer (`core.sealed`, under the backup's own data key) into `<BACKUP_DIR>/.<id>.partial`, fsyncs it and
renames it to `<id>.dump.sealed`: a file under the final name is always complete. Nothing of the dump is
ever on disk in plaintext. A restore streams the file back through `unseal` into `pg_restore`.

Retention: the newest TENANT_BACKUP_KEEP scheduled backups of each app are kept (manual ones are the
tenant's to keep); a backup whose restore is queued or running is never removed; files without a row
(their app was deleted) are removed once a day has passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import crypto
from core import sealed
from core.errors import Conflict
from drivers import postgres
from platform_apps.backups.services import backup_create
from platform_apps.backups.services import log_context
from platform_apps.models import Addon
from platform_apps.models import AddonBackup

logger = logging.getLogger(__name__)

SUFFIX = ".dump.sealed"
ORPHAN_GRACE = timedelta(days=1)


def backup_dir() -> Path:
    directory = Path(settings.BACKUP_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        directory.chmod(0o700)
    return directory


def backup_take(backup: AddonBackup, addon: Addon) -> int:
    """Dump the add-on's database into the backup's sealed file; the dump's size in bytes."""
    key = crypto.decrypt(backup.key_encrypted)
    password = crypto.decrypt(addon.password_encrypted)
    final = backup_dir() / f"{backup.public_id}{SUFFIX}"
    partial = final.with_name(f".{backup.public_id}.{uuid.uuid4().hex}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            writer = sealed.SealWriter(handle, key)
            size = postgres.tenant_dump(
                addon.public_id, password, writer.write, timeout=float(settings.TENANT_BACKUP_TIMEOUT)
            )
            writer.close()
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("database backup written", extra={**log_context(backup), "bytes": size})
    return size


def backup_restore_into(backup: AddonBackup, addon: Addon) -> None:
    """Replace the add-on's database's contents with the backup's."""
    key = crypto.decrypt(backup.key_encrypted)
    password = crypto.decrypt(addon.password_encrypted)
    with backup.path.open("rb") as handle:
        postgres.tenant_restore(
            addon.public_id, password, sealed.unseal(handle, key), timeout=float(settings.TENANT_BACKUP_TIMEOUT)
        )
    logger.info("database restored from backup", extra={**log_context(backup), "addon_id": str(addon.public_id)})


def backup_remove(backup: AddonBackup) -> None:
    backup.path.unlink(missing_ok=True)
    AddonBackup.objects.filter(pk=backup.pk).delete()
    logger.info("database backup removed", extra=log_context(backup))


def backups_schedule() -> int:
    """A scheduled backup of every ready add-on (beat, daily); how many were queued."""
    queued = 0
    for addon in Addon.objects.filter(state=Addon.State.READY).select_related("app", "app__tenant"):
        try:
            backup_create(app=addon.app, kind=AddonBackup.Kind.SCHEDULED)
        except Conflict as exc:  # a backup is running, or the app is going away: the next day's then
            logger.info("scheduled backup skipped: %s", exc.code, extra={"app_id": str(addon.app.public_id)})
            continue
        queued += 1
    return queued


def backups_prune(keep: int | None = None) -> int:
    """Retention of scheduled backups, app by app; returns how many were removed."""
    app_ids = AddonBackup.objects.filter(kind=AddonBackup.Kind.SCHEDULED).values_list("app_id", flat=True).distinct()
    return sum(app_backups_prune(app_id, keep=keep) for app_id in list(app_ids))


def app_backups_prune(app_id: int, *, keep: int | None = None) -> int:
    """All but the newest `keep` (TENANT_BACKUP_KEEP) good scheduled backups of one app removed, file and
    row, and all but the newest failed one (which says what went wrong). Failures never count towards
    `keep`, so a run of failed days costs no good backup. Also run when a scheduled backup succeeds."""
    keep = settings.TENANT_BACKUP_KEEP if keep is None else keep
    if keep < 1:
        return 0
    removed = 0
    for state, kept in ((AddonBackup.State.SUCCEEDED, keep), (AddonBackup.State.FAILED, 1)):
        rows = (
            AddonBackup.objects.filter(app_id=app_id, kind=AddonBackup.Kind.SCHEDULED, state=state)
            .order_by("-created_at", "-pk")
            .select_related("app", "app__tenant")
        )
        for backup in rows[kept:]:
            if backup.restore_state in AddonBackup.ACTIVE_RESTORE_STATES:
                continue
            backup_remove(backup)
            removed += 1
    return removed


def backups_fail_stale() -> int:
    """Backups left `running` by a worker that died: failed, so the next one can start."""
    stale = timezone.now() - timedelta(seconds=2 * settings.TENANT_BACKUP_TIMEOUT)
    with transaction.atomic():
        count = AddonBackup.objects.filter(state=AddonBackup.State.RUNNING, started_at__lt=stale).update(
            state=AddonBackup.State.FAILED,
            error_code="backup.interrupted",
            error_message="The backup was interrupted; take another one.",
            finished_at=timezone.now(),
        )
        count += AddonBackup.objects.filter(
            restore_state=AddonBackup.RestoreState.RUNNING, restore_requested_at__lt=stale
        ).update(
            restore_state=AddonBackup.RestoreState.FAILED,
            restore_error_code="backup.restore_interrupted",
            restore_error_message="The restore was interrupted; the database is as before it. Try again.",
        )
    return count


def orphan_files_remove() -> int:
    """Sealed files and partial files no backup row owns, older than a day (their app was deleted)."""
    directory = Path(settings.BACKUP_DIR)
    if not directory.is_dir():
        return 0
    known = {str(public_id) for public_id in AddonBackup.objects.values_list("public_id", flat=True)}
    cutoff = time.time() - ORPHAN_GRACE.total_seconds()
    removed = 0
    for entry in directory.iterdir():
        name = entry.name
        if name.endswith(SUFFIX):
            owner = name.removesuffix(SUFFIX)
        elif name.startswith(".") and name.endswith(".partial"):
            owner = ""
        else:
            continue
        if owner in known:
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
    return removed
