"""What every action an operator takes in the admin (the console) has in common: it is logged with the admin
user and the public ids of the objects it acted on, and recorded in the object's admin history.

`console_action_logged` is the one place admin actions are recorded, so the audit trail can be attached here
once it exists."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

logger = logging.getLogger("coltsfoot.console")


def admin_username(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    return str(user.get_username()) if user is not None and user.is_authenticated else ""


def console_action_logged(
    model_admin: admin.ModelAdmin[Any],
    request: HttpRequest,
    action: str,
    objects: Iterable[Model],
    **extra: object,
) -> None:
    """Log `action` by the request's admin user on `objects` (by public id), and add it to each one's admin
    history. `extra` must hold no secret: it goes to the log as it is."""
    items = list(objects)
    ids = [str(getattr(obj, "public_id", obj.pk)) for obj in items]
    logger.info(
        "admin action %s",
        action,
        extra={"admin_user": admin_username(request), "action": action, "object_ids": ids, **extra},
    )
    for obj in items:
        model_admin.log_change(request, obj, f"{action} (admin console)")
