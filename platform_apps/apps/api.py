"""Apps: create, list, get, change, delete."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Router
from ninja import Status

from core.errors import error_responses
from core.pagination import paginated
from platform_apps.access import app_for
from platform_apps.access import visible_apps
from platform_apps.apps import selectors
from platform_apps.apps import services
from platform_apps.apps.schemas import AppCreateIn
from platform_apps.apps.schemas import AppOut
from platform_apps.apps.schemas import AppPatchIn
from platform_apps.apps.schemas import ReplicaOut
from platform_apps.models import App
from platform_apps.models import Replica
from tenants.auth import caller

router = Router(tags=["apps"])

ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422)


@router.post(
    "/apps", response={201: AppOut, **ERRORS}, summary="Create an app", operation_id="platform_apps_api_app_create"
)
def app_create(request: HttpRequest, payload: AppCreateIn) -> Status[App]:
    token = caller(request, scope="apps:write", unrestricted=True)
    app = services.app_create(tenant=token.tenant, **payload.model_dump())
    return Status(201, selectors.app_detail(app=app))


@router.get(
    "/apps", response={200: list[AppOut], **ERRORS}, summary="List apps", operation_id="platform_apps_api_app_list"
)
@paginated
def app_list(request: HttpRequest) -> QuerySet[App]:
    return visible_apps(token=caller(request, scope="apps:read"), apps=selectors.list_rows())


@router.get(
    "/apps/{app_id}", response={200: AppOut, **ERRORS}, summary="Get an app", operation_id="platform_apps_api_app_get"
)
def app_get(request: HttpRequest, app_id: uuid.UUID) -> App:
    return app_for(request, app_id, scope="apps:read")


@router.patch(
    "/apps/{app_id}",
    response={200: AppOut, **ERRORS},
    summary="Change an app's settings",
    operation_id="platform_apps_api_app_patch",
)
def app_patch(request: HttpRequest, app_id: uuid.UUID, payload: AppPatchIn) -> App:
    app = app_for(request, app_id, scope="apps:write")
    return services.app_update(app=app, changes=payload.model_dump(exclude_unset=True))


@router.delete(
    "/apps/{app_id}",
    response={202: AppOut, **ERRORS},
    summary="Delete an app and tear it down",
    operation_id="platform_apps_api_app_delete",
)
def app_delete(request: HttpRequest, app_id: uuid.UUID) -> Status[App]:
    app = app_for(request, app_id, scope="apps:write")
    return Status(202, services.app_delete(app=app))


@router.get(
    "/apps/{app_id}/replicas",
    response={200: list[ReplicaOut], **ERRORS},
    summary="List the replicas of the app's live deployment",
    operation_id="platform_apps_api_replica_list",
)
@paginated
def replica_list(request: HttpRequest, app_id: uuid.UUID) -> QuerySet[Replica]:
    """Each replica's state as the reconciler last observed it: `running`, `starting`, `crashed`
    (waiting out its restart backoff) or `restarting`, with its restarts and why it last exited."""
    return selectors.replica_list(app=app_for(request, app_id, scope="apps:read"))
