"""`manage.py collect_logs`: the log collector process (see provisioning/logcollector.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from provisioning import logcollector


class Command(BaseCommand):
    help = "Copy the output of this installation's app replicas into their apps' log streams, until SIGTERM."

    def handle(self, *args: Any, **options: Any) -> None:
        logcollector.run_forever(
            logcollector.collector_from_settings(),
            discover_seconds=float(settings.LOG_DISCOVER_SECONDS),
            poll_seconds=float(settings.LOG_POLL_SECONDS),
        )
