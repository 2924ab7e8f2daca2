from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Query
from ninja import Router
from ninja import Status

from platform_apps import selectors
from platform_apps import services
from platform_apps.models import App
from platform_apps.schemas import AppCreateIn
from platform_apps.schemas import AppListOut
from platform_apps.schemas import AppOut
from platform_apps.schemas import AppPatchIn
from platform_apps.schemas import ErrorOut
from tenants.api import Page
from tenants.auth import request_token
from tenants.auth import require_scope
from tenants.auth import require_unrestricted

router = Router(tags=["apps"])

ERRORS: dict[int, type[ErrorOut]] = dict.fromkeys((401, 403, 404, 409, 413, 422), ErrorOut)


@router.post("/apps", response={201: AppOut, **ERRORS}, summary="Create an app")
def app_create(request: HttpRequest, payload: AppCreateIn) -> Status[App]:
    token = request_token(request)
    require_scope(token, "apps:write")
    require_unrestricted(token)
    app = services.app_create(tenant=token.tenant, **payload.model_dump())
    return Status(201, selectors.app_get(token=token, app_id=app.public_id))


@router.get("/apps", response={200: AppListOut, **ERRORS}, summary="List apps")
def app_list(request: HttpRequest, page: Query[Page]) -> dict[str, object]:
    token = request_token(request)
    require_scope(token, "apps:read")
    items, count = selectors.app_list(token=token, limit=page.limit, offset=page.offset)
    return {"items": items, "count": count}


@router.get("/apps/{app_id}", response={200: AppOut, **ERRORS}, summary="Get an app")
def app_get(request: HttpRequest, app_id: uuid.UUID) -> App:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:read")
    return app


@router.patch("/apps/{app_id}", response={200: AppOut, **ERRORS}, summary="Change an app's settings")
def app_patch(request: HttpRequest, app_id: uuid.UUID, payload: AppPatchIn) -> App:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:write")
    return services.app_update(app=app, changes=payload.model_dump(exclude_unset=True))


@router.delete("/apps/{app_id}", response={202: AppOut, **ERRORS}, summary="Delete an app and tear it down")
def app_delete(request: HttpRequest, app_id: uuid.UUID) -> Status[App]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:write")
    return Status(202, services.app_delete(app=app))
