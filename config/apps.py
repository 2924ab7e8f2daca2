from __future__ import annotations

from django.apps import AppConfig


class ConfigConfig(AppConfig):
    """The project package as a Django app, only so that its Celery app loads in every process."""

    name = "config"

    def ready(self) -> None:
        # The API server included: `core.queue` sends through Celery's current app, which must be
        # this one (with the configured Redis broker), not Celery's default.
        import config.celery  # noqa: F401
