"""Queue a Celery task once the current transaction commits, by the task's name.

The domain records an intent (a row with a state) and calls `enqueue_on_commit`; it never imports
the tasks themselves, so it stays below the workflow that defines them. If the broker cannot take
the message the request still succeeds: the intent is committed, and the reconciler re-queues
whatever has stalled, so an outage delays work but never loses it or answers 500.
"""

from __future__ import annotations

import functools
import logging

import redis.exceptions
from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

# What a publish raises when Redis is down or unreachable (kombu wraps most of it, not all).
BROKER_ERRORS: tuple[type[Exception], ...] = (OperationalError, OSError, redis.exceptions.RedisError)


def send(task_name: str, args: tuple[str, ...]) -> None:
    """Publish now. A broker outage is logged, not raised (see the module docstring)."""
    try:
        current_app.send_task(task_name, args=list(args))
    except BROKER_ERRORS:
        logger.warning(
            "task not queued: the broker is unreachable; the reconciler will pick the intent up",
            exc_info=True,
            extra={"task": task_name, "task_args": list(args)},
        )


def enqueue_on_commit(task_name: str, *args: str) -> None:
    """Publish `task_name(*args)` after the surrounding transaction commits (at once outside one).
    Arguments are ids as strings: a task re-reads its rows, it never trusts a pickled object."""
    transaction.on_commit(functools.partial(send, task_name, args))
