"""The Celery application. Worker: `celery -A config worker`; beat: `celery -A config beat`."""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings

from config.settings_utils import require_secret_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
require_secret_key()

app = Celery("coltsfoot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.conf.beat_schedule = {
    "reconcile": {"task": "coltsfoot.reconcile", "schedule": float(settings.CELERY_BEAT_RECONCILE_SECONDS)},
    # Pending custom domains whose next ownership check is due, and certificates to look at again.
    "domains-check": {"task": "coltsfoot.domains_check", "schedule": float(settings.DOMAIN_CHECK_SECONDS)},
}
if settings.PLATFORM_BACKUP_SECONDS > 0:
    app.conf.beat_schedule["platform-backup"] = {
        "task": "coltsfoot.platform_backup",
        "schedule": float(settings.PLATFORM_BACKUP_SECONDS),
    }
if settings.TENANT_BACKUP_SECONDS > 0:
    app.conf.beat_schedule["tenant-backups"] = {
        "task": "coltsfoot.addon_backups_daily",
        "schedule": float(settings.TENANT_BACKUP_SECONDS),
    }
