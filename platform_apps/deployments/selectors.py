"""Reads of deployments. Which deployments a token may see at all is `platform_apps.access`'s rule."""

from __future__ import annotations

from django.db.models import QuerySet

from platform_apps.models import App
from platform_apps.models import Deployment


def deployment_list(*, app: App) -> QuerySet[Deployment]:
    """An app's deployments; the caller has already been given the app by `access.app_for`."""
    return Deployment.objects.filter(app=app).select_related("app", "app__tenant", "source_deployment")


def deployment_detail(*, deployment: Deployment) -> Deployment:
    """The deployment re-read with what its API representation needs, after a write."""
    fresh: Deployment = Deployment.objects.select_related("app", "app__tenant", "source_deployment").get(
        pk=deployment.pk
    )
    return fresh
