"""Reads of an app's add-on (the app itself comes from `access.app_for`)."""

from __future__ import annotations

from core.errors import NotFound
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import RedisAddon


def addon_get(*, app: App) -> Addon:
    addon: Addon | None = Addon.objects.select_related("app").filter(app=app).first()
    if addon is None:
        raise NotFound("add-on")
    return addon


def redis_addon_get(*, app: App) -> RedisAddon:
    addon: RedisAddon | None = RedisAddon.objects.select_related("app").filter(app=app).first()
    if addon is None:
        raise NotFound("add-on")
    return addon
