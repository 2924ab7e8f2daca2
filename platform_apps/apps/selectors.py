"""Reads of apps. Which apps a token may see at all is `platform_apps.access`'s rule."""

from __future__ import annotations

from platform_apps.models import App


def app_detail(*, app: App) -> App:
    """The app re-read with what its API representation needs, after a write."""
    fresh: App = App.objects.select_related("tenant", "live_deployment").get(pk=app.pk)
    return fresh
