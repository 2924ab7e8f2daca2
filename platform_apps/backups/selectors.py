"""Reads of an app's database backups (the app itself comes from `access.app_for`)."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from core.errors import NotFound
from platform_apps.models import AddonBackup
from platform_apps.models import App


def backup_list(*, app: App) -> QuerySet[AddonBackup]:
    return AddonBackup.objects.select_related("app").filter(app=app).order_by("-created_at", "-pk")


def backup_get(*, app: App, backup_id: uuid.UUID) -> AddonBackup:
    """The app's backup, or the same 404 whether it does not exist or belongs to another app."""
    backup: AddonBackup | None = AddonBackup.objects.select_related("app").filter(app=app, public_id=backup_id).first()
    if backup is None:
        raise NotFound("backup")
    return backup
