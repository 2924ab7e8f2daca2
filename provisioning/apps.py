from __future__ import annotations

from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    name = "provisioning"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Load the Celery app in every process (API server included), so `task.delay()` sends to
        # the configured Redis broker rather than Celery's default app.
        import config.celery  # noqa: F401
