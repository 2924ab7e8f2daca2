"""Tenant-scoped reads. Every lookup of a tenant-owned object goes through here, so that a
missing object and another tenant's object are the same 404."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from core.errors import NotFound
from platform_apps.models import App
from platform_apps.models import Deployment
from tenants.models import ApiToken


def app_queryset(*, token: ApiToken) -> QuerySet[App]:
    qs = App.objects.filter(tenant_id=token.tenant_id).select_related("tenant", "live_deployment")
    if token.app_id is not None:
        qs = qs.filter(pk=token.app_id)
    return qs


def app_list(*, token: ApiToken, limit: int, offset: int) -> tuple[list[App], int]:
    qs = app_queryset(token=token)
    return list(qs[offset : offset + limit]), qs.count()


def app_get(*, token: ApiToken, app_id: uuid.UUID) -> App:
    app = app_queryset(token=token).filter(public_id=app_id).first()
    if app is None:
        raise NotFound("app")
    return app


def deployment_queryset(*, token: ApiToken) -> QuerySet[Deployment]:
    qs = Deployment.objects.filter(app__tenant_id=token.tenant_id).select_related(
        "app", "app__tenant", "source_deployment"
    )
    if token.app_id is not None:
        qs = qs.filter(app_id=token.app_id)
    return qs


def deployment_list(*, token: ApiToken, app: App, limit: int, offset: int) -> tuple[list[Deployment], int]:
    qs = deployment_queryset(token=token).filter(app=app)
    return list(qs[offset : offset + limit]), qs.count()


def deployment_get(*, token: ApiToken, deployment_id: uuid.UUID) -> Deployment:
    deployment = deployment_queryset(token=token).filter(public_id=deployment_id).first()
    if deployment is None:
        raise NotFound("deployment")
    return deployment
