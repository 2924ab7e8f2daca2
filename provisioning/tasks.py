"""Celery tasks (filled in by the deploy pipeline)."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="coltsfoot.app_teardown")
def app_teardown(app_id: str) -> None:
    logger.info("app teardown", extra={"app_id": app_id})
